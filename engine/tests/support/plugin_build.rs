//! Builds the plugins the tests and benchmarks load.
//!
//! The example plugins are `cdylib` workspace members, but `cargo test` does not produce
//! their shared libraries (it builds their unit tests only), and `cargo test -p
//! turnstile-engine` does not build them at all. So this helper runs `cargo build -p ...`
//! for them once per test process, in the same target directory and profile as the
//! running test (found from the test executable's path). Cargo releases its build lock
//! before it runs tests, so the nested build does not deadlock; it reuses what is already
//! compiled. C plugins are compiled with `cc`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The Rust plugin packages and their library names.
pub const RUST_PLUGINS: &[(&str, &str)] = &[
    ("turnstile-example-greet", "greet"),
    ("turnstile-example-calculate", "calculate"),
    ("turnstile-example-http-request", "http_request"),
    ("turnstile-test-faulty", "faulty"),
];

/// The workspace root: the nearest folder up from the crate holding `Cargo.lock` (this
/// file serves the engine's tests and the top-level ones).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|p| p.join("Cargo.lock").is_file())
        .expect("the crate is inside the workspace")
        .to_path_buf()
}

/// `(target dir, profile dir)` of the running test or bench executable
/// (`<target>/<profile>/deps/<exe>`).
fn target_and_profile() -> (PathBuf, PathBuf) {
    let exe = std::env::current_exe().expect("current_exe");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in <target>/<profile>/deps")
        .to_path_buf();
    let target = profile.parent().expect("a target dir").to_path_buf();
    (target, profile)
}

/// Builds every Rust plugin once per process; returns the directory holding the libraries.
pub fn build_rust_plugins() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let (target, profile) = target_and_profile();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace())
            .arg("build")
            .arg("--quiet")
            .arg("--target-dir")
            .arg(&target);
        if profile.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        for (pkg, _) in RUST_PLUGINS {
            cmd.args(["-p", pkg]);
        }
        let out = cmd.output().expect("cannot run cargo to build the plugins");
        assert!(
            out.status.success(),
            "building the plugins failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        profile
    })
}

/// The file name of library `name` on this platform (`libgreet.so`).
pub fn lib_file(name: &str) -> String {
    format!(
        "{}{name}.{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_EXTENSION
    )
}

/// The built library of a Rust plugin (`greet`, `calculate`, `http_request`, `faulty`).
pub fn rust_plugin(name: &str) -> PathBuf {
    let p = build_rust_plugins().join(lib_file(name));
    assert!(p.is_file(), "{} was not built", p.display());
    p
}

/// Compiles a C plugin with `cc` into `out`, with extra flags such as `-DABI=99`.
pub fn compile_c(source: &Path, out: &Path, flags: &[&str]) {
    let include = workspace().join("plugins/sdk/include");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-Wall"])
        .arg("-I")
        .arg(&include)
        .args(flags)
        .arg("-o")
        .arg(out)
        .arg(source)
        .status()
        .expect("cannot run `cc` (a C compiler is needed for the C plugin tests)");
    assert!(status.success(), "cc failed for {}", source.display());
}

/// A directory holding copies of the given Rust plugins only.
pub fn plugin_dir(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for n in names {
        std::fs::copy(rust_plugin(n), dir.path().join(lib_file(n))).expect("copy plugin");
    }
    dir
}

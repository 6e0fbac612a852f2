//! `--plugins` on the command line: `validate` knows plugin action types, `run` runs them,
//! and a broken plugin path is a clear error.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod kit;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use kit::{field, text, Proc};

/// statemachine-engine's `custom_actions` example, which needs the greet and calculate plugins.
fn compat() -> String {
    kit::upstream::example_arg("custom_actions/config/worker.yaml")
}

fn turnstile(args: &[&str]) -> Output {
    Command::new(kit::bin())
        .args(args)
        .env_remove("RUST_LOG")
        // Tests run in parallel: each sidecar on a port of its own.
        .env("TURNSTILE_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .output()
        .expect("run turnstile")
}

#[test]
fn validate_knows_the_action_types_of_plugins() {
    let dir = kit::plugins::plugin_dir(&["greet", "calculate"]);
    let d = dir.path().to_str().unwrap();
    let out = turnstile(&["validate", "--plugins", d, &compat()]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("0 error(s)"),
        "{}",
        text(&out.stdout)
    );

    let out = turnstile(&["validate", &compat()]);
    assert_eq!(out.status.code(), Some(2));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("error[unknown-action]: unknown action type `greet`"),
        "{stdout}"
    );
}

#[test]
fn a_broken_plugin_path_is_a_clear_error() {
    let out = turnstile(&["validate", "--plugins", "/nonexistent/plugins", &compat()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("error: plugin /nonexistent/plugins: no such file or directory"),
        "{stderr}"
    );
}

#[test]
fn run_runs_plugin_actions() {
    let dir = kit::plugins::plugin_dir(&["greet"]);
    let cfg = dir.path().join("hello.yaml");
    std::fs::write(
        &cfg,
        "metadata: {machine_name: hello}\ninitial_state: greeting\ntransitions:\n  - {from: greeting, to: done, event: greeted}\nactions:\n  greeting:\n    - {type: greet, name: CLI, success: greeted}\n",
    )
    .unwrap();
    let out = turnstile(&[
        "run",
        "--plugins",
        dir.path().to_str().unwrap(),
        cfg.to_str().unwrap(),
    ]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Hello, CLI! 👋"), "{stderr}");
}

#[test]
fn a_hung_plugin_call_does_not_keep_the_process_alive() {
    let dir = kit::plugins::plugin_dir(&["faulty"]);
    let cfg = dir.path().join("hang.yaml");
    std::fs::write(
        &cfg,
        "metadata: {machine_name: hang}\ninitial_state: calling\ntransitions:\n  - {from: calling, to: done, event: too_slow}\nactions:\n  calling:\n    - {type: block, ms: 60000, timeout: 0.2, timeout_event: too_slow}\n",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = turnstile(&[
        "run",
        "--plugins",
        dir.path().to_str().unwrap(),
        cfg.to_str().unwrap(),
    ]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("did not return within 0.2 s"), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "exited after {:?}, not after the 60 s call",
        started.elapsed()
    );
}

/// The plugin copy directories left in `tmp`.
fn copy_dirs(tmp: &Path) -> Vec<String> {
    std::fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("turnstile-plugins-"))
        .collect()
}

#[test]
fn a_truncated_plugin_is_a_clear_error_not_a_crash() {
    let dir = kit::plugins::plugin_dir(&["greet"]);
    let full = std::fs::read(dir.path().join(kit::plugins::lib_file("greet"))).unwrap();
    let cfg = dir.path().join("x.yaml");
    std::fs::write(
        &cfg,
        "initial_state: a\nactions:\n  a:\n    - {type: log, message: hi}\n",
    )
    .unwrap();
    let trunc = dir.path().join("libtrunc.so");
    for len in [4096, full.len() / 2, full.len() - 1] {
        std::fs::write(&trunc, &full[..len]).unwrap();
        let out = turnstile(&[
            "validate",
            "--plugins",
            trunc.to_str().unwrap(),
            cfg.to_str().unwrap(),
        ]);
        let stderr = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{len} bytes: {:?} {stderr}",
            out.status
        );
        assert!(
            stderr.contains(&format!(
                "error: plugin {}: not a loadable shared library: the file is truncated",
                trunc.display()
            )),
            "{stderr}"
        );
    }
}

#[test]
fn plugin_copies_are_private_and_gone_when_run_exits() {
    let dir = kit::plugins::plugin_dir(&["greet"]);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hello.yaml");
    std::fs::write(
        &cfg,
        "metadata: {machine_name: hello}\ninitial_state: greeting\ntransitions:\n  - {from: greeting, to: done, event: greeted}\nactions:\n  greeting:\n    - {type: greet, name: CLI, success: greeted}\n",
    )
    .unwrap();
    let out = Command::new(kit::bin())
        .args(["run", "--no-sidecar", "--plugins"])
        .arg(dir.path())
        .arg(&cfg)
        .env_remove("RUST_LOG")
        .env_remove("TURNSTILE_PLUGIN_COPY_DIR")
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Hello, CLI!"), "{stderr}");
    assert_eq!(copy_dirs(tmp.path()), Vec::<String>::new());
}

#[test]
fn a_truncated_new_version_is_refused_while_run_serves() {
    let dir = kit::plugins::plugin_dir(&["greet"]);
    let lib = dir.path().join(kit::plugins::lib_file("greet"));
    let full = std::fs::read(&lib).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("loop.yaml");
    std::fs::write(
        &cfg,
        "metadata: {machine_name: looping}\ninitial_state: greeting\ntransitions:\n  - {from: greeting, to: resting, event: greeted}\n  - {from: resting, to: greeting, event: timeout(0.05)}\nactions:\n  greeting:\n    - {type: greet, name: CLI, success: greeted}\n",
    )
    .unwrap();
    let mut cmd = kit::turnstile(&[
        "run",
        "--no-sidecar",
        "--plugins",
        dir.path().to_str().unwrap(),
        cfg.to_str().unwrap(),
    ]);
    cmd.env("TMPDIR", tmp.path())
        .env_remove("TURNSTILE_PLUGIN_COPY_DIR");
    let mut p = Proc::spawn(cmd);
    let limit = Duration::from_secs(60);
    let greeted = |j: &serde_json::Value| {
        field(j, "target") == "turnstile::plugin" && field(j, "message").contains("Hello, CLI!")
    };
    p.wait_for("a first greeting", limit, greeted);
    // Nothing is left in the temporary directory once the plugin is loaded.
    assert_eq!(copy_dirs(tmp.path()), Vec::<String>::new());

    // A new version cut short (a copy still being written) replaces the file.
    std::fs::write(&lib, &full[..4096]).unwrap();
    let refused = p.wait_for("the refusal", limit, |j| {
        let m = field(j, "message");
        m.contains("truncated") && m.contains("keeps serving")
    });
    assert_eq!(field(&refused, "level"), "WARN", "{refused}");
    // The old version keeps serving.
    p.wait_for("a greeting after the refusal", limit, greeted);
    p.wait_for("another greeting", limit, greeted);
    p.signal("TERM");
    let (status, _) = p.finish(limit);
    assert!(status.success(), "{status:?}\n{}", p.log());
    assert_eq!(copy_dirs(tmp.path()), Vec::<String>::new());
}

//! statemachine-engine 1.0.91's example configs, the compatibility tests' fixtures.
//!
//! `.ci/install.sh` downloads that release's source distribution from PyPI, checks its
//! sha256 and extracts its `examples/` folder into `.upstream/statemachine-engine/examples/`
//! at the top of the repository (git-ignored), keeping upstream's layout:
//! `examples/<name>/config/<file>.yaml`. `TURNSTILE_UPSTREAM_EXAMPLES` points elsewhere.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::PathBuf;

/// The folder holding upstream's `examples/<name>/config/*.yaml`.
pub fn examples_dir() -> PathBuf {
    match std::env::var_os("TURNSTILE_UPSTREAM_EXAMPLES") {
        Some(dir) => PathBuf::from(dir),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .find(|p| p.join("Cargo.lock").is_file())
            .expect("the crate is inside the workspace")
            .join(".upstream/statemachine-engine/examples"),
    }
}

/// One upstream config, by its path under `examples/` (`"simple_worker/config/worker.yaml"`).
/// Panics with what to do when it is missing.
pub fn example(rel: &str) -> PathBuf {
    let path = examples_dir().join(rel);
    assert!(
        path.is_file(),
        "{} not found: `bash .ci/install.sh` fetches statemachine-engine 1.0.91's examples \
         (or set TURNSTILE_UPSTREAM_EXAMPLES to its examples/ folder)",
        path.display()
    );
    path
}

/// [`example`] as a string, for command lines.
pub fn example_arg(rel: &str) -> String {
    example(rel).display().to_string()
}

/// Every upstream config, as paths under `examples/` (`"<name>/config/<file>.yaml"`).
pub fn all_configs() -> BTreeSet<String> {
    let dir = examples_dir();
    let mut all = BTreeSet::new();
    let examples = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: `bash .ci/install.sh` fetches statemachine-engine 1.0.91's examples",
            dir.display()
        )
    });
    for example in examples {
        let example = example.expect("read the examples folder").path();
        let Ok(configs) = std::fs::read_dir(example.join("config")) else {
            continue;
        };
        for config in configs {
            let config = config.expect("read a config folder").path();
            if config.extension().is_some_and(|e| e == "yaml") {
                let rel = config
                    .strip_prefix(&dir)
                    .expect("under the examples folder");
                all.insert(rel.display().to_string());
            }
        }
    }
    all
}

/// statemachine-engine's own CLI, `statemachine-db` (1.0.91), on the `PATH`; panics with
/// how to install it when it is not. It always writes `./data/pipeline.db`.
#[allow(dead_code)] // not every test binary uses it
pub fn statemachine_db() -> std::path::PathBuf {
    let out = std::process::Command::new("sh")
        .args(["-c", "command -v statemachine-db"])
        .output()
        .expect("sh runs");
    let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() && !p.is_empty(),
        "statemachine-db (statemachine-engine 1.0.91) is not installed: .ci/install.sh \
         installs it (pip install statemachine-engine==1.0.91)"
    );
    std::path::PathBuf::from(p)
}

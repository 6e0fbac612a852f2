//! `--plugins` on the command line: `validate` knows plugin action types, `run` runs them,
//! and a broken plugin path is a clear error.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

#[path = "../../engine/tests/support/plugin_build.rs"]
mod plugin_build;

use std::process::{Command, Output, Stdio};

#[path = "../../engine/tests/support/upstream.rs"]
mod upstream;

/// statemachine-engine's `custom_actions` example, which needs the greet and calculate plugins.
fn compat() -> String {
    upstream::example_arg("custom_actions/config/worker.yaml")
}

fn turnstile(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_turnstile"))
        .args(args)
        .env_remove("RUST_LOG")
        // Tests run in parallel: each sidecar on a port of its own.
        .env("TURNSTILE_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .output()
        .expect("run turnstile")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn validate_knows_the_action_types_of_plugins() {
    let dir = plugin_build::plugin_dir(&["greet", "calculate"]);
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
    let dir = plugin_build::plugin_dir(&["greet"]);
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
    let dir = plugin_build::plugin_dir(&["faulty"]);
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

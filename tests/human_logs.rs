//! Human log lines cannot be forged: control characters in interpolated values are
//! written escaped. The real binary, `--log-format human`.

#![allow(clippy::unwrap_used)]

mod kit;

use std::process::Command;

use kit::{Proc, RUN_LIMIT};

#[test]
fn an_interpolated_newline_or_nul_cannot_forge_a_human_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("logger.yaml");
    // `v` holds a newline followed by a whole fake log line, a carriage return, a NUL, a
    // terminal escape and a C1 control; `w` (no NUL: it goes to a command) an escape.
    std::fs::write(
        &config,
        r#"metadata: {machine_name: logger}
initial_state: start
context:
  v: "x\n1999-01-01T00:00:00.000000Z  INFO forged: fake line\r\0\e[31mred\x85"
  w: "y\e[32mgreen"
transitions:
  - {from: start, to: done, event: finish}
actions:
  start:
    - {type: log, message: "got {v}"}
    - {type: bash, command: "printf 'out %s' {w}", success: finish}
final_states: [done]
"#,
    )
    .unwrap();
    let mut cmd = Command::new(kit::bin());
    cmd.args(["--log-format", "human", "--log-level", "info", "run"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .env("TURNSTILE_LISTEN", "127.0.0.1:0")
        .stdin(std::process::Stdio::null());
    let mut p = Proc::spawn(cmd);
    let (status, _) = p.finish(RUN_LIMIT);
    let stderr = p.stderr.join("\n");
    assert!(status.success(), "{stderr}");
    for bad in ['\0', '\r', '\u{1b}', '\u{85}'] {
        assert!(!stderr.contains(bad), "raw {bad:?} in:\n{stderr}");
    }
    let forged: Vec<&String> = p
        .stderr
        .iter()
        .filter(|l| l.starts_with("1999-01-01") || l.contains("red") && !l.contains("got x"))
        .collect();
    assert!(forged.is_empty(), "forged lines {forged:?} in:\n{stderr}");
    let escaped =
        r"got x\n1999-01-01T00:00:00.000000Z  INFO forged: fake line\r\0\u{1b}[31mred\u{85}";
    assert!(
        p.stderr
            .iter()
            .any(|l| l.contains(" INFO ") && l.contains(escaped)),
        "no escaped `log` line in:\n{stderr}"
    );
    // A command's output, logged line by line, is escaped too.
    assert!(
        p.stderr.iter().any(|l| l.contains(r"out y\u{1b}[32mgreen")),
        "no escaped command output in:\n{stderr}"
    );
}

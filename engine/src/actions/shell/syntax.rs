//! Whether bash itself parses a command (`bash -n`), for commands with placeholders.
//!
//! The checks of [`super::rules`] follow bash's grammar through a small lexer. Where a
//! command has a syntax error, bash reports it and goes on with the next line, parsing
//! that as it finds it, while the lexer has read the broken construct on (`a=(; echo`
//! followed by `sh -c {x}` on the next line: the lexer sees array elements, bash runs
//! `sh -c` with the value as its script). Rather than copy bash's error recovery, a
//! command with placeholders must parse: bash is asked, once, when the command is
//! compiled. Where bash cannot be started the check is left out (the `bash` action could
//! not run such a command either), and the lexer's checks still apply.

use std::io::ErrorKind;
use std::process::{Command, Stdio};

/// bash's first complaint about `script`, or `None` when it parses (or bash is missing).
pub(super) fn bash_error(script: &str) -> Option<String> {
    let out = match Command::new("bash")
        .arg("--norc")
        .arg("-n")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => return None,
        Err(e) => return Some(format!("bash could not be started to check it: {e}")),
    };
    if out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let first = text
        .lines()
        .find(|l| !l.contains("warning:"))
        .unwrap_or("syntax error");
    Some(first.strip_prefix("bash: -c: ").unwrap_or(first).to_owned())
}

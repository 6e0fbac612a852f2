//! The quoting-context analysis of `bash` commands, with real bash as the oracle: random
//! bash-like command templates (quotes, expansions, here-documents, `eval`, `sh -c`,
//! arithmetic, `declare`, traps, wrappers, pipes into shells, ...) with a `{x}` placeholder
//! somewhere, and hostile values for it that would run `touch MARKER` if pasted into the
//! script. For every pair, either the template is refused (a config error, or the action's
//! integer check at run time), or bash runs the rendered command, as the `bash` action
//! does, and the marker file is never created.
//!
//! The templates never read back a variable (`$v`): what a script does with a value it
//! copied into a variable (`v={x}; eval "$v"`) is its own code, as the module docs of
//! `actions/shell` say; the checks are about where each placeholder itself stands.
//! `PROPTEST_CASES=N` runs more templates (the default keeps this test to seconds).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Map, Value as Json};
use turnstile_engine::actions::shell::ShellTemplate;

use support::fuzzing::{cases, seeds};

/// Pieces of bash syntax the templates are made of. None reads a variable back, none
/// writes a file by redirection (a value naming the marker would then create it without
/// running anything), none loops or sleeps.
const SYNTAX: &[&str] = &[
    "echo",
    "printf '%s\\n'",
    "printf -v v",
    "cat",
    "true",
    ":",
    "eval",
    "source",
    ".",
    "sh -c",
    "bash -c",
    "bash",
    "sh -s",
    "bash /dev/stdin",
    "source /dev/stdin",
    "trap",
    "trap -- ",
    "EXIT",
    "let",
    "let n=",
    "declare -i n;",
    "n=",
    "declare",
    "declare -a",
    "declare -n r=",
    "local",
    "typeset",
    "export",
    "export v=",
    "readonly",
    "read",
    "read -r v",
    "mapfile -C",
    "readarray",
    "unset",
    "unset -v",
    "test -v",
    "[ -v",
    "[[",
    "]]",
    "[[ -v",
    "-eq",
    "-lt",
    "-gt",
    "==",
    "=~",
    "((",
    "))",
    "$((",
    "$[",
    "]",
    "a[",
    "a=(",
    ")",
    "a[0]=",
    "${!",
    "${#",
    "${x:",
    "${x/",
    "${x@P}",
    "}",
    "PS4=",
    "PS1=",
    "BASH_ENV=",
    "ENV=",
    "PROMPT_COMMAND=",
    "set -x;",
    "set -v;",
    "x=",
    "v=",
    "env",
    "env -i",
    "sudo",
    "command",
    "builtin",
    "exec",
    "time",
    "nice",
    "nohup",
    "timeout 2",
    "xargs",
    "xargs -0 bash -c",
    "| bash",
    "| sh",
    "| xargs",
    "| xargs -I% sh -c",
    "find / -maxdepth 0 -exec sh -c",
    "\\;",
    "ssh",
    "awk",
    "alias",
    "coproc",
    "function f",
    "f()",
    "{ ",
    " }",
    "(",
    ")",
    "'",
    "\"",
    "$'",
    "`",
    "$(",
    "<(",
    "< <(",
    "<<EOF\n",
    "\nEOF\n",
    "<<'EOF'\n",
    "<<-EOF\n",
    "<<<",
    "<",
    "|",
    ";",
    "&&",
    "||",
    "\n",
    "#",
    "\\",
    "=",
    "--",
    "-c",
    "if",
    "then",
    "else",
    "fi",
    "for i in",
    "do",
    "done",
    "case",
    "in",
    "esac",
    "*)",
    ";;",
    "select",
    "[",
    "!",
    "&",
    "-",
    "%s",
    "1",
    "0",
    "_",
];

/// Where the placeholder goes, and with which filters.
const PLACEHOLDERS: &[&str] = &["{x}", "{x}", "{x}", "{x|int}", "{x|upper}", "{x.y}"];

/// Hostile values (`@F` is the marker's absolute path).
const VALUES: &[&str] = &[
    "x'; touch @F; echo '",
    "\"; touch @F; echo \"",
    "$(touch @F)",
    "`touch @F`",
    "a\ntouch @F",
    ";touch @F",
    "| touch @F",
    "&& touch @F",
    "${IFS}touch${IFS}@F",
    "'$(touch @F)'",
    "\\\"$(touch @F)\\\"",
    "$'\\x27'; touch @F",
    "a[$(touch @F)]",
    "x[$(touch @F)]",
    "$(touch @F)[0]",
    "}; touch @F; {",
    "EOF\ntouch @F\nEOF",
    "touch @F",
    "1+a[$(touch @F)]",
    "-v a[$(touch @F)]",
    "\\u0022 $(touch @F)",
    "\\$(touch @F)",
    "@F",
    "-c touch @F",
];

/// Pieces hostile values are made of when not taken whole.
const VALUE_BITS: &[&str] = &[
    "$(touch @F)",
    "`touch @F`",
    "touch @F",
    "'",
    "\"",
    ";",
    "\n",
    " ",
    "a[",
    "]",
    "$((",
    "))",
    "x",
    "1",
    "-",
    "}",
    "{",
    "EOF",
    "\\",
    "$'",
    "|",
    "&",
    "#",
    "*",
    "=",
];

fn template() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => proptest::sample::select(SYNTAX).prop_map(str::to_owned),
        1 => proptest::sample::select(PLACEHOLDERS).prop_map(str::to_owned),
    ];
    let sep = proptest::sample::select(&[" ", " ", " ", "", "; ", "\n"][..]);
    proptest::collection::vec((piece, sep), 1..8).prop_map(|parts| {
        let mut t = String::new();
        for (p, s) in parts {
            t.push_str(&p);
            t.push_str(s);
        }
        if !t.contains("{x") {
            t.push_str(" {x}");
        }
        t
    })
}

fn value(marker: &str) -> impl Strategy<Value = String> {
    let m = marker.to_owned();
    let m2 = marker.to_owned();
    prop_oneof![
        proptest::sample::select(VALUES).prop_map(move |v| v.replace("@F", &m)),
        proptest::collection::vec(proptest::sample::select(VALUE_BITS), 1..8)
            .prop_map(move |bits| bits.concat().replace("@F", &m2)),
    ]
}

/// Runs `script` with `env` as the `bash` action does (`bash -c`, standard input closed, a
/// process group of its own, killed at the end with anything it left running).
fn run_bash(script: &str, env: &[(String, String)], dir: &Path) {
    use std::os::unix::process::CommandExt as _;
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(script)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    let deadline = Instant::now() + Duration::from_secs(3);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
}

/// What happened to one template and value.
#[derive(Debug, PartialEq)]
enum Fate {
    Refused,
    Ran,
}

fn check(template: &str, value: &str, dir: &Path, marker: &Path) -> Result<Fate, TestCaseError> {
    let Ok(t) = ShellTemplate::compile(template) else {
        return Ok(Fate::Refused);
    };
    let mut scope: Map<String, Json> = Map::new();
    scope.insert("x".into(), json!(value));
    let Ok(env) = t.env(&scope) else {
        // The integer check of a placeholder in a numeric place.
        return Ok(Fate::Refused);
    };
    if env.iter().any(|(_, v)| v.contains('\0')) {
        return Ok(Fate::Refused);
    }
    run_bash(t.script(), &env, dir);
    if marker.exists() {
        let _ = std::fs::remove_file(marker);
        return Err(TestCaseError::fail(format!(
            "the value ran as code\ntemplate: {template:?}\nvalue: {value:?}\nscript: {:?}",
            t.script()
        )));
    }
    Ok(Fate::Ran)
}

#[test]
fn the_marker_is_a_working_oracle() {
    // Pasted into the script, a hostile value runs: the oracle can see an injection.
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let f = marker.display().to_string();
    run_bash(
        &format!("echo {}", "$(touch @F)".replace("@F", &f)),
        &[],
        dir.path(),
    );
    assert!(marker.exists());
}

#[test]
fn seed_templates_never_run_values() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let f = marker.display().to_string();
    let mut ran = 0;
    for seed in seeds("shell") {
        let text = String::from_utf8(seed).unwrap();
        for line in text.lines().chain([text.as_str()]) {
            for v in VALUES {
                match check(line, &v.replace("@F", &f), dir.path(), &marker) {
                    Ok(Fate::Ran) => ran += 1,
                    Ok(Fate::Refused) => {}
                    Err(e) => panic!("{e}"),
                }
            }
        }
    }
    assert!(ran > 0, "no seed template ran");
}

#[test]
fn random_templates_refuse_or_never_run_values() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let f = marker.display().to_string();
    let mut runner = TestRunner::new(Config {
        cases: cases(3000),
        failure_persistence: None,
        ..Config::default()
    });
    let ran = std::cell::Cell::new(0u32);
    let refused = std::cell::Cell::new(0u32);
    let result = runner.run(&(template(), value(&f)), |(t, v)| {
        match check(&t, &v, dir.path(), &marker)? {
            Fate::Ran => ran.set(ran.get() + 1),
            Fate::Refused => refused.set(refused.get() + 1),
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Both outcomes are common: the property is tested on both sides. (Most random
    // templates do not parse, and a command with placeholders must: about one in ten runs.)
    let (ran, refused) = (ran.get(), refused.get());
    assert!(
        ran * 20 >= ran + refused && refused * 20 >= ran + refused,
        "ran {ran}, refused {refused}"
    );
}

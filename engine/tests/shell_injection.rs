//! Values interpolated into `bash` commands never run as shell code, whatever quoting
//! context the placeholder stands in; a command's timeout, an interrupting event and a
//! shutdown kill its whole process group. Real machines, real `bash`.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use turnstile_engine::{config, ActionRegistry, Engine, Event, MachineDef};

const WAIT: Duration = Duration::from_secs(10);

mod support;

use support::machine::def_without_warnings as def;
use support::wait::wait_for_state;

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A machine `name` that takes `value` from the payload of `go` into its context, runs
/// `command` in state `run` and ends in `done` (exit 0) or `failed`.
fn machine(name: &str, command: &str) -> Arc<MachineDef> {
    def(&format!(
        "metadata:
  machine_name: {name}
initial_state: idle
states: [idle, run, done, failed]
events:
  go:
    context_map:
      value: payload.value
transitions:
  - {{from: idle, to: run, event: go}}
  - {{from: run, to: done, event: ran}}
  - {{from: run, to: failed, event: broke}}
actions:
  run:
    - type: bash
      command: {}
      timeout: 20
      success: ran
      error: broke
",
        yaml_str(command)
    ))
}

/// Waits until `name` is in one of `states`; returns that state.
async fn wait_any(engine: &Engine, name: &str, states: &[&str]) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(m) = engine.machine(name) {
            if states.contains(&&*m.state) {
                return m.state.to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "`{name}` never reached {states:?}: {:?}",
            engine.machine(name).map(|m| m.state)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn files_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Hostile values; `@F` stands for the absolute path of the file an injection would create.
fn corpus(f: &str) -> Vec<String> {
    // 100 KB (a single value must stay under Linux's 128 KiB limit per environment string).
    let unit = "'$(touch @F)\"`touch @F`;|&<>*?[]{}\\ \n".replace("@F", f);
    let long: String = unit.repeat(100 * 1024 / unit.len() + 1)[..100 * 1024].to_owned();
    let mut v: Vec<String> = [
        "x'; touch @F; echo '",
        "\"; touch @F; echo \"",
        "$(touch @F)",
        "`touch @F`",
        "a\ntouch @F",
        "\ntouch @F\n",
        ";touch @F",
        "| touch @F",
        "&& touch @F",
        "${IFS}touch${IFS}@F",
        "'$(touch @F)'",
        "\\\"$(touch @F)\\\"",
        "$'\\x27'; touch @F",
        "'\"$(touch @F)\"'",
        ")$(touch @F)(",
        "`\"'$(touch @F)'\"`",
        "\"$(touch @F)\"",
        "$((1))$[2]${HOME}$HOME",
        "a[$(touch @F)]",
        "}; touch @F; {",
        "{value}",
        "EOF\ntouch @F\nEOF",
        "*",
        "/*",
        "a  b\tc",
        "~",
        "ends in a backslash\\",
        "\\",
        "'",
        "\"",
        "`",
        "",
    ]
    .iter()
    .map(|s| s.replace("@F", f))
    .collect();
    v.push(long);
    v
}

/// A value short enough for a failure message.
fn shorten(s: &str) -> String {
    if s.len() <= 100 {
        return s.to_owned();
    }
    let mut end = 80;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

/// One quoting context: the command (with `@DIR` for the case's directory) and the output
/// expected in `out` for a value, when it is checked verbatim.
struct Context {
    name: &'static str,
    command: &'static str,
    expect: Option<fn(&str) -> String>,
}

fn same(v: &str) -> String {
    v.to_owned()
}

/// Command substitution drops trailing newlines.
fn substituted(v: &str) -> String {
    v.trim_end_matches('\n').to_owned()
}

const CONTEXTS: &[Context] = &[
    Context {
        name: "unquoted",
        command: "cd '@DIR' && printf '%s' {value} > out",
        expect: Some(same),
    },
    Context {
        name: "double",
        command: "cd '@DIR' && printf '%s' \"{value}\" > out",
        expect: Some(same),
    },
    Context {
        name: "double_with_text",
        command: "cd '@DIR' && printf '%s' \"<{value}> and $((1 + 1))\" > out",
        expect: Some(|v| format!("<{v}> and 2")),
    },
    Context {
        name: "single",
        command: "cd '@DIR' && printf '%s' '{value}' > out",
        expect: Some(same),
    },
    Context {
        name: "single_with_text",
        command: "cd '@DIR' && printf '%s' 'a \"{value}\" $b' > out",
        expect: Some(|v| format!("a \"{v}\" $b")),
    },
    Context {
        name: "ansi_c",
        command: "cd '@DIR' && printf '%s' $'\\t{value}\\x41' > out",
        expect: Some(|v| format!("\t{v}A")),
    },
    Context {
        name: "command_substitution",
        command: "cd '@DIR' && printf '%s' \"$(printf '%s' {value})\" > out",
        expect: Some(substituted),
    },
    Context {
        name: "nested_command_substitution",
        command: "cd '@DIR' && printf '%s' \"$(printf '%s' \"$(printf '%s' \"{value}\")\")\" > out",
        expect: Some(substituted),
    },
    Context {
        name: "unquoted_command_substitution",
        // The command's own unquoted `$(...)` splits and globs its output: only safety counts.
        command: "cd '@DIR' && printf '%s' $(printf '%s' {value}) > out",
        expect: None,
    },
    Context {
        name: "backticks",
        command: "cd '@DIR' && printf '%s' \"`printf '%s' {value}`\" > out",
        expect: Some(substituted),
    },
    Context {
        name: "adjacent_text",
        command: "cd '@DIR' && printf '%s' pre{value}post > out",
        expect: Some(|v| format!("pre{v}post")),
    },
    Context {
        name: "echo_piped_into_a_file",
        command: "cd '@DIR' && echo {value} | cat > out",
        expect: Some(|v| format!("{v}\n")),
    },
    Context {
        name: "after_a_comment_with_quotes",
        command: "cd '@DIR' # it's \"here\"\nprintf '%s' {value} > out",
        expect: Some(same),
    },
    Context {
        name: "heredoc",
        command: "cd '@DIR' && cat > out <<EOF\nit's \"{value}\"\nEOF\n",
        expect: Some(|v| format!("it's \"{v}\"\n")),
    },
    Context {
        name: "bash_c_positional",
        command: "cd '@DIR' && bash -c 'printf \"%s\" \"$1\"' _ {value} > out",
        expect: Some(same),
    },
    Context {
        name: "parameter_default",
        command: "cd '@DIR' && printf '%s' \"${no_such_var:-{value}}\" > out",
        expect: Some(same),
    },
    Context {
        name: "string_comparison_and_export",
        command: "cd '@DIR' && export v={value} && [[ {value} == \"$v\" && ( -n $v || -z $v ) ]] && printf '%s' \"$v\" > out",
        expect: Some(same),
    },
    Context {
        name: "after_a_substitution_and_hash",
        command: "cd '@DIR' && id=$(echo x)#{value}; printf '%s' \"${id#x#}\" > out",
        expect: Some(same),
    },
    Context {
        name: "heredoc_then_more",
        command:
            "cd '@DIR' && cat > out <<-EOF\n\tit's {value}\n\tEOF\nprintf '%s' {value} >> out\n",
        expect: Some(|v| format!("it's {v}\n{v}")),
    },
];

/// Runs every value of the corpus through `ctx`, each in a fresh machine and directory.
async fn check_context(ctx: &Context) {
    let engine = Engine::builder().build();
    let values = {
        // The corpus depends on the directory; build it per case below.
        corpus("/F").len()
    };
    for i in 0..values {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap().to_owned();
        assert!(
            !path.contains(['\'', '{', '}']),
            "unexpected temp path {path}"
        );
        let f = format!("{path}/F");
        let value = corpus(&f).swap_remove(i);
        let name = format!("{}_{i}", ctx.name);
        let command = ctx.command.replace("@DIR", &path);
        engine.spawn(machine(&name, &command)).unwrap();
        engine
            .send(
                &name,
                Event::new("go").with_payload(json!({ "value": value })),
            )
            .await
            .unwrap();
        let end = wait_any(&engine, &name, &["done", "failed"]).await;
        let shown = shorten(&value);
        assert!(
            !Path::new(&f).exists(),
            "{}: value {shown:?} ran `touch`",
            ctx.name
        );
        assert_eq!(
            files_in(dir.path()),
            BTreeSet::from(["out".to_owned()]),
            "{}: value {shown:?} created files",
            ctx.name
        );
        assert_eq!(
            end, "done",
            "{}: value {shown:?} made the command fail",
            ctx.name
        );
        if let Some(expect) = ctx.expect {
            let out = std::fs::read_to_string(dir.path().join("out")).unwrap();
            assert!(
                out == expect(&value),
                "{}: value {shown:?} was not printed verbatim: {:?}",
                ctx.name,
                shorten(&out)
            );
        }
        dir.close().unwrap();
    }
    engine.shutdown();
    engine.join().await;
}

macro_rules! context_tests {
    ($($test:ident => $name:literal,)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            let ctx = CONTEXTS.iter().find(|c| c.name == $name).expect("a context");
            check_context(ctx).await;
        }
    )*};
}

context_tests! {
    unquoted => "unquoted",
    double_quotes => "double",
    double_quotes_with_text => "double_with_text",
    single_quotes => "single",
    single_quotes_with_text => "single_with_text",
    ansi_c_quotes => "ansi_c",
    command_substitution => "command_substitution",
    nested_command_substitution => "nested_command_substitution",
    unquoted_command_substitution => "unquoted_command_substitution",
    backticks => "backticks",
    adjacent_text => "adjacent_text",
    echo_piped_into_a_file => "echo_piped_into_a_file",
    after_a_comment_with_quotes => "after_a_comment_with_quotes",
    heredoc => "heredoc",
    heredoc_with_tabs_then_more => "heredoc_then_more",
    bash_c_positional_argument => "bash_c_positional",
    parameter_default => "parameter_default",
    string_comparison_and_export => "string_comparison_and_export",
    after_a_substitution_and_hash => "after_a_substitution_and_hash",
}

#[test]
fn every_context_is_tested() {
    let src = include_str!("shell_injection.rs");
    for c in CONTEXTS {
        assert!(src.contains(&format!("=> \"{}\",", c.name)), "{}", c.name);
    }
}

/// Other ways a value reaches a command: straight from the event payload, and copied by
/// `set_context` in an earlier state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_and_set_context_values_are_safe_too() {
    let engine = Engine::builder().build();
    for i in 0..corpus("/F").len() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap().to_owned();
        let f = format!("{path}/F");
        let value = corpus(&f).swap_remove(i);
        let name = format!("indirect_{i}");
        let cmd = format!(
            "cd '{path}' && printf '%s' {{payload.value}} > a && printf '%s' \"{{copy}}\" > b && printf '%s' '{{event_data.payload.value}}' > c"
        );
        let yaml = format!(
            "metadata:
  machine_name: {name}
initial_state: idle
states: [idle, copying, run, done, failed]
transitions:
  - {{from: idle, to: copying, event: go}}
  - {{from: copying, to: run, event: copied}}
  - {{from: run, to: done, event: ran}}
  - {{from: run, to: failed, event: broke}}
actions:
  copying:
    - type: set_context
      key: copy
      value: \"{{payload.value}}\"
      success: copied
  run:
    - type: bash
      command: {}
      success: ran
      error: broke
",
            yaml_str(&cmd)
        );
        engine.spawn(def(&yaml)).unwrap();
        engine
            .send(
                &name,
                Event::new("go").with_payload(json!({ "value": value })),
            )
            .await
            .unwrap();
        let end = wait_any(&engine, &name, &["done", "failed"]).await;
        let value_shown = shorten(&value);
        assert!(!Path::new(&f).exists(), "value {value_shown:?} ran `touch`");
        assert_eq!(end, "done", "value {value_shown:?}");
        let files = files_in(dir.path());
        assert_eq!(files, BTreeSet::from(["a", "b", "c"].map(String::from)));
        for file in ["a", "b", "c"] {
            let out = std::fs::read_to_string(dir.path().join(file)).unwrap();
            assert!(
                out == value,
                "{file}: value {value_shown:?} printed as {:?}",
                shorten(&out)
            );
        }
        dir.close().unwrap();
    }
    engine.shutdown();
    engine.join().await;
}

/// Bash evaluates text in arithmetic (`$((...))`, `((...))`, `$[...]`) as code: a value
/// such as `a[$(touch F)]` runs `touch` there even from a quoted variable. Placeholders in
/// arithmetic therefore only take integers; anything else fails the action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arithmetic_takes_only_integers() {
    let engine = Engine::builder().build();
    let commands = [
        "cd '@DIR' && echo $(( {value|int} + 1 )) > out",
        "cd '@DIR' && echo \"$(( \"{value|int}\" + 1 ))\" > out",
        "cd '@DIR' && (( x = {value|int} + 1 )); echo $x > out",
        "cd '@DIR' && echo $[ {value|int} + 1 ] > out",
        "cd '@DIR' && echo $(( $(echo {value|int}) + 1 )) > out",
        "cd '@DIR' && id=$(echo x)#$(( {value|int} + 1 )); echo ${id#x#} > out",
        "cd '@DIR' && [[ {value|int} -gt -100 ]] && let y={value|int}+1 && echo $y > out",
        "cd '@DIR' && declare -i z={value|int}; a=(5 6); echo $(( z + 1 + ${a[{value|int} - {value|int}]} - 5 )) > out",
    ];
    for (c, command) in commands.iter().enumerate() {
        let cases: Vec<(String, Option<&str>)> = vec![
            ("41".into(), Some("42\n")),
            ("-3".into(), Some("-2\n")),
            ("a[$(touch @F)]".into(), None),
            ("x[`touch @F`]".into(), None),
            ("1 + a[$(touch @F)]".into(), None),
            ("".into(), None),
            ("1.5".into(), None),
        ];
        for (i, (value, expect)) in cases.into_iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().to_str().unwrap().to_owned();
            let f = format!("{path}/F");
            let value = value.replace("@F", &f);
            let name = format!("arith_{c}_{i}");
            engine
                .spawn(machine(&name, &command.replace("@DIR", &path)))
                .unwrap();
            engine
                .send(
                    &name,
                    Event::new("go").with_payload(json!({ "value": value })),
                )
                .await
                .unwrap();
            let end = wait_any(&engine, &name, &["done", "failed"]).await;
            assert!(!Path::new(&f).exists(), "{command}: {value:?} ran `touch`");
            match expect {
                Some(out) => {
                    assert_eq!(end, "done", "{command}: {value:?}");
                    let got = std::fs::read_to_string(dir.path().join("out")).unwrap();
                    assert_eq!(got, out, "{command}: {value:?}");
                }
                None => {
                    assert_eq!(end, "failed", "{command}: {value:?} was accepted");
                    let snap = engine.snapshot(&name).await.expect("a snapshot");
                    let err = snap.context["last_error"].as_str().unwrap_or_default();
                    assert!(err.contains("integer"), "{command}: {err}");
                    // The message names the placeholder, never the value.
                    assert!(!err.contains("touch"), "{command}: {err}");
                }
            }
            dir.close().unwrap();
        }
    }
    engine.shutdown();
    engine.join().await;
}

#[test]
fn a_placeholder_in_a_quoted_heredoc_is_a_config_error() {
    let yaml = "initial_state: a
states: [a, b]
transitions:
  - {from: a, to: b, event: job_done}
actions:
  a:
    - type: bash
      command: \"cat <<'EOF'\\n{value}\\nEOF\"
";
    let loaded = config::load_str(yaml, None, &ActionRegistry::with_builtins());
    let d: Vec<_> = loaded.diagnostics.iter().collect();
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(
        (d[0].code, d[0].loc.line, d[0].loc.column),
        ("bad-parameter", 8, 16)
    );
    assert!(d[0].message.contains("here-document"), "{}", d[0]);
    assert!(d[0].hint.is_some());
}

/// Every place where bash evaluates text as code is refused by `validate`, with the
/// placeholder's line and column and a hint; numeric places accept `|int`.
#[test]
fn placeholders_where_bash_evaluates_code_are_config_errors() {
    let shapes = [
        ("id=$(hostname)#$(( {payload.n} + 1 )); echo $id", true),
        ("echo $(( {payload.n} + 1 ))", true),
        ("(( n = {payload.n} ))", true),
        ("let n={payload.n}", true),
        ("declare -i n={payload.n}", true),
        ("typeset -i n={payload.n}", true),
        ("[[ {payload.n} -eq 1 ]] && echo one", true),
        ("a=(x y); echo ${a[{payload.n}]}", true),
        ("s=abcdef; echo ${s:{payload.n}}", true),
        ("s=abcdef; echo ${s:1:{payload.n}}", true),
        ("a=(x y); unset 'a[{payload.n}]'", true),
        ("echo ${!{payload.n}}", false),
        ("eval \"echo {payload.n}\"", false),
        ("eval 'echo {payload.n}'", false),
        ("source {payload.n}", false),
        (". {payload.n}", false),
        ("printf -v {payload.n} %s x", false),
        ("sh -c 'echo {payload.n}'", false),
        ("bash -c \"echo {payload.n}\"", false),
        ("echo {payload.n} | bash", false),
        ("unset {payload.n}", false),
        ("{payload.n} --version", false),
    ];
    for (cmd, numeric) in shapes {
        let yaml = format!(
            "initial_state: a
states: [a, b]
transitions:
  - {{from: a, to: b, event: job_done}}
actions:
  a:
    - type: bash
      command: {}
",
            yaml_str(&format!("echo ok; {cmd}"))
        );
        let loaded = config::load_str(&yaml, None, &ActionRegistry::with_builtins());
        let d: Vec<_> = loaded.diagnostics.iter().collect();
        assert_eq!(d.len(), 1, "{cmd}: {d:#?}");
        let line8 = yaml.lines().nth(7).unwrap();
        let column = line8[..line8.find("{payload.n}").unwrap()].chars().count() + 1;
        assert_eq!(
            (d[0].code, d[0].loc.line, d[0].loc.column),
            ("unsafe-placeholder", 8, u32::try_from(column).unwrap()),
            "{cmd}: {}",
            d[0]
        );
        assert!(
            d[0].message.contains("evaluates its value as code"),
            "{}",
            d[0]
        );
        let hint = d[0].hint.as_deref().unwrap_or_default();
        assert_eq!(hint.contains("|int}"), numeric, "{cmd}: {hint}");
        assert!(loaded.def.is_none(), "{cmd}");
        let with_int = cmd.replace("{payload.n}", "{payload.n|int}");
        let loaded = config::load_str(
            &yaml.replace("{payload.n}", "{payload.n|int}"),
            None,
            &ActionRegistry::with_builtins(),
        );
        assert_eq!(
            loaded.diagnostics.is_empty(),
            numeric,
            "{with_int}: {:#?}",
            loaded.diagnostics
        );
    }
}

/// Commands `validate` accepts run every hostile value of the corpus through the numeric
/// places with `|int` without running it: the action fails, no file is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn int_places_refuse_hostile_values_at_run_time() {
    let engine = Engine::builder().build();
    let command = "cd '@DIR' && id=$(echo x)#$(( {value|int} + 1 )); [[ {value|int} -eq 1 ]]; let n={value|int}; a=(1 2); echo ${a[{value|int}]} ${id:{value|int}} > out; unset 'a[{value|int}]'";
    for i in 0..corpus("/F").len() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap().to_owned();
        let f = format!("{path}/F");
        let value = corpus(&f).swap_remove(i);
        let name = format!("int_{i}");
        engine
            .spawn(machine(&name, &command.replace("@DIR", &path)))
            .unwrap();
        engine
            .send(
                &name,
                Event::new("go").with_payload(json!({ "value": value })),
            )
            .await
            .unwrap();
        let end = wait_any(&engine, &name, &["done", "failed"]).await;
        let shown = shorten(&value);
        assert!(!Path::new(&f).exists(), "value {shown:?} ran `touch`");
        assert_eq!(end, "failed", "value {shown:?} was accepted");
        assert!(files_in(dir.path()).is_empty(), "value {shown:?}");
        dir.close().unwrap();
    }
    engine.shutdown();
    engine.join().await;
}

/// The script each context gives bash: the value is never in it, only a variable.
#[test]
fn scripts_reference_variables_in_every_context() {
    use turnstile_engine::actions::shell::ShellTemplate;
    let cases = [
        ("echo {a}", "echo \"${TURNSTILE_ARG_0}\""),
        ("echo $(( {a|int} + 1 ))", "echo $(( \"${TURNSTILE_ARG_0}\" + 1 ))"),
        ("(( x = {a|int} ))", "(( x = \"${TURNSTILE_ARG_0}\" ))"),
        ("echo $[{a|int}]", "echo $[\"${TURNSTILE_ARG_0}\"]"),
        (
            "cat <<EOF\nit's {a}\nEOF\necho {b}",
            "cat <<EOF\nit's ${TURNSTILE_ARG_0}\nEOF\necho \"${TURNSTILE_ARG_1}\"",
        ),
        (
            "cat <<< {a} # don't {b}\necho '{c}'",
            "cat <<< \"${TURNSTILE_ARG_0}\" # don't \"${TURNSTILE_ARG_1}\"\necho ''\"${TURNSTILE_ARG_2}\"''",
        ),
        ("echo ${#} $# a#{a}", "echo ${#} $# a#\"${TURNSTILE_ARG_0}\""),
    ];
    for (cmd, script) in cases {
        let t = ShellTemplate::compile(cmd).unwrap();
        let (prelude, body) = t.script().split_once("; ").unwrap();
        assert!(prelude.starts_with("export -n TURNSTILE_ARG_0"), "{cmd}");
        assert_eq!(body, script, "{cmd}");
    }
    assert!(ShellTemplate::compile("cat <<'EOF'\n{a}\nEOF").is_err());
    assert!(ShellTemplate::compile("cat <<\"EOF\"\n{a}\nEOF").is_err());
    assert!(ShellTemplate::compile("cat <<\\EOF\n{a}\nEOF").is_err());
}

// --- process groups -------------------------------------------------------------------------

/// Live (not zombie) processes whose process group is `pgid`.
fn live_in_group(pgid: i32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let comm = stat[stat.find('(').map_or(0, |i| i + 1)..close].to_owned();
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let (Some(state), Some(pgrp)) = (rest.first(), rest.get(2)) else {
            continue;
        };
        if pgrp.parse::<i32>() == Ok(pgid) && *state != "Z" && *state != "X" {
            out.push((pid, comm));
        }
    }
    out
}

/// Waits (up to [`WAIT`]) until the group has no live process.
async fn assert_group_gone(pgid: i32) {
    let deadline = Instant::now() + WAIT;
    loop {
        let live = live_in_group(pgid);
        if live.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process group {pgid} still has {live:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads a pid the command wrote, waiting for the file to be complete.
async fn read_pid(path: &PathBuf) -> i32 {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if let Some(line) = s.strip_suffix('\n') {
                return line.trim().parse().expect("a pid");
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never written",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A machine whose state `run` starts `sleep 30` twice (one in the background), writing
/// the shell's pid (its process group) and the background child's pid first.
fn sleeper(name: &str, dir: &str, timeout: &str) -> Arc<MachineDef> {
    let cmd = format!(
        "echo $$ > '{dir}/pgid.tmp' && mv '{dir}/pgid.tmp' '{dir}/pgid'; sleep 30 & echo $! > '{dir}/child'; sleep 30; wait"
    );
    def(&format!(
        "metadata:
  machine_name: {name}
initial_state: idle
states: [idle, run, finished, timed_out, failed, interrupted]
transitions:
  - {{from: idle, to: run, event: go}}
  - {{from: run, to: finished, event: job_done}}
  - {{from: run, to: timed_out, event: too_slow}}
  - {{from: run, to: failed, event: error}}
  - {{from: run, to: interrupted, event: stop}}
actions:
  run:
    - type: bash
      command: {}
      timeout: {timeout}
      timeout_event: too_slow
",
        yaml_str(&cmd)
    ))
}

fn is_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let state = s
            .rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next().map(str::to_owned));
        !matches!(state.as_deref(), Some("Z" | "X") | None)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_owned();
    let engine = Engine::builder().build();
    engine.spawn(sleeper("slow", &path, "0.5")).unwrap();
    let started = Instant::now();
    engine.send("slow", Event::new("go")).await.unwrap();
    // No timeout event: the panic names the state the machine is in.
    wait_for_state(&engine, "slow", "timed_out", WAIT).await;
    let took = started.elapsed();
    // The bound is the point here: 0.5 s of timeout, then the kill.
    assert!(
        took < Duration::from_millis(2500),
        "timeout event after {took:?}"
    );
    let pgid = read_pid(&dir.path().join("pgid")).await;
    let child = read_pid(&dir.path().join("child")).await;
    assert_group_gone(pgid).await;
    assert!(!is_alive(child), "background sleep {child} survived");
    let snap = engine.snapshot("slow").await.expect("a snapshot");
    let err = snap.context["last_error"].as_str().unwrap_or_default();
    assert!(err.contains("timed out"), "{err}");
    engine.shutdown();
    engine.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_leaves_the_state_kills_the_running_command() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_owned();
    let engine = Engine::builder().build();
    engine.spawn(sleeper("busy", &path, "60")).unwrap();
    engine.send("busy", Event::new("go")).await.unwrap();
    // The command is running once it wrote its pids.
    let pgid = read_pid(&dir.path().join("pgid")).await;
    let child = read_pid(&dir.path().join("child")).await;
    assert!(is_alive(child));
    engine.send("busy", Event::new("stop")).await.unwrap();
    wait_for_state(&engine, "busy", "interrupted", WAIT).await;
    assert_group_gone(pgid).await;
    assert!(!is_alive(child), "background sleep {child} survived");
    engine.shutdown();
    engine.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_kills_the_running_command() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_owned();
    let engine = Engine::builder().build();
    engine.spawn(sleeper("stopping", &path, "60")).unwrap();
    engine.send("stopping", Event::new("go")).await.unwrap();
    let pgid = read_pid(&dir.path().join("pgid")).await;
    engine.shutdown();
    tokio::time::timeout(WAIT, engine.join())
        .await
        .expect("shutdown finishes");
    assert_group_gone(pgid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_with_a_nul_byte_fails_the_action_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_owned();
    let engine = Engine::builder().build();
    let cmd = format!("cd '{path}' && printf '%s' {{value}} > out");
    engine.spawn(machine("nul", &cmd)).unwrap();
    let value = Json::String("a\0b".into());
    engine
        .send(
            "nul",
            Event::new("go").with_payload(json!({ "value": value })),
        )
        .await
        .unwrap();
    assert_eq!(
        wait_any(&engine, "nul", &["done", "failed"]).await,
        "failed"
    );
    assert!(files_in(dir.path()).is_empty());
    engine.shutdown();
    engine.join().await;
}

//! End to end: `turnstile ctl` as a subprocess against the real binary's sidecar: pause,
//! step (refused with nothing queued, then one event), resume, context read and patched
//! (`--set`, `--file`), breakpoints added, listed and removed, the diagram, restart and
//! stop, each checked through `GET /machines/{name}`; instances started (`start`, with a
//! name and context, or a generated name), a name taken and an unknown definition; a
//! refused or missing token, an unreachable sidecar and usage errors, with their messages
//! and exit codes.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod kit;

use std::process::Output;
use std::time::{Duration, Instant};

use kit::http::{get_json, post_json};
use kit::sidecar::{client, Sidecar};
use kit::text;
use serde_json::{json, Value as Json};

const TOKEN: &str = "ctl-t0ken";

const WORKER: &str = r#"
metadata: {machine_name: worker}
initial_state: idle
context: {attempts: 0, note: first}
transitions:
  - {from: idle, to: busy, event: go}
  - {from: busy, to: idle, event: done}
"#;

/// `turnstile ctl ARGS --url URL` with the token.
fn ctl(s: &Sidecar, args: &[&str]) -> Output {
    ctl_with(s, args, Some(TOKEN))
}

fn ctl_with(s: &Sidecar, args: &[&str], token: Option<&str>) -> Output {
    let url = s.url();
    let mut all = vec!["ctl"];
    all.extend_from_slice(args);
    all.extend(["--url", url.as_str()]);
    client(&all, token)
}

/// The command succeeded; its stdout.
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{:?}: {}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The command exited `code` with nothing on stdout; its stderr.
fn failed(out: &Output, code: i32) -> String {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "");
    text(&out.stderr)
}

fn machine(s: &Sidecar) -> Json {
    get_json(s.addr, "/machines/worker")
}

/// Waits until the machine's view satisfies `f`.
fn until(s: &Sidecar, what: &str, f: impl Fn(&Json) -> bool) -> Json {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = machine(s);
        if f(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "{what}: {m}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ctl_pauses_steps_patches_breaks_draws_restarts_and_stops_a_machine() {
    let s = Sidecar::start(&[WORKER], &["--token", TOKEN, "--keep-serving"]);

    // Pause: the answer says so, and so does the machine.
    let said = ok(&ctl(&s, &["pause", "worker"]));
    assert_eq!(said.trim(), "worker: paused in state `idle`, 0 queued");
    assert_eq!(machine(&s)["paused"], json!(true));

    // Step with nothing held or queued: the sidecar's 409, on one line, exit 1.
    let err = failed(&ctl(&s, &["step", "worker"]), 1);
    assert_eq!(
        err,
        "turnstile: ctl step worker: 409 machine `worker` has no event to step: none is held or queued\n"
    );

    // An event waits while paused; one step processes it and the machine stays paused.
    let r = post_json(
        s.addr,
        "/machines/worker/events",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        &json!({"type": "go"}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    until(&s, "the event queued", |m| m["queue_depth"] == json!(1));
    let v: Json =
        serde_json::from_str(&ok(&ctl(&s, &["step", "worker", "--format", "json"]))).unwrap();
    assert_eq!((&v["state"], &v["paused"]), (&json!("busy"), &json!(true)));
    let m = machine(&s);
    assert_eq!(
        (&m["state"], &m["paused"], &m["transitions"]),
        (&json!("busy"), &json!(true), &json!(1))
    );

    // Resume.
    let said = ok(&ctl(&s, &["resume", "worker"]));
    assert_eq!(said.trim(), "worker: running in state `busy`, 0 queued");
    assert_eq!(machine(&s)["paused"], json!(false));

    // The context: read, patched with --set, then with --file (null removes a key).
    let ctx: Json = serde_json::from_str(&ok(&ctl(&s, &["context", "worker"]))).unwrap();
    assert_eq!(ctx, json!({"attempts": 0, "note": "first"}));
    let ctx: Json = serde_json::from_str(&ok(&ctl(
        &s,
        &["context", "worker", "--set", r#"{"attempts": 3}"#],
    )))
    .unwrap();
    assert_eq!(ctx, json!({"attempts": 3, "note": "first"}));
    let dir = tempfile::tempdir().unwrap();
    let patch = dir.path().join("patch.json");
    std::fs::write(&patch, r#"{"note": null, "extra": [1, 2]}"#).unwrap();
    let v: Json = serde_json::from_str(&ok(&ctl(
        &s,
        &[
            "context",
            "worker",
            "--file",
            patch.to_str().unwrap(),
            "--format",
            "json",
        ],
    )))
    .unwrap();
    assert_eq!(v["context"], json!({"attempts": 3, "extra": [1, 2]}));
    assert_eq!(
        machine(&s)["context"],
        json!({"attempts": 3, "extra": [1, 2]})
    );
    // A patch that is not an object: the sidecar's 400.
    let err = failed(&ctl(&s, &["context", "worker", "--set", "[1]"]), 1);
    assert!(
        err.starts_with("turnstile: ctl context worker: 400 the body must be a JSON object"),
        "{err}"
    );

    // Breakpoints: add, list, remove; a second removal is the sidecar's 404.
    let said = ok(&ctl(
        &s,
        &[
            "break",
            "add",
            "worker",
            "--on",
            "enter",
            "--state",
            "idle",
            "--when",
            "attempts > 2",
        ],
    ));
    assert_eq!(
        said.trim(),
        "breakpoint 1: on enter state=idle when=attempts > 2 (hits 0)"
    );
    let list: Json = serde_json::from_str(&ok(&ctl(
        &s,
        &["break", "list", "worker", "--format", "json"],
    )))
    .unwrap();
    assert_eq!(
        list,
        json!([{"id": 1, "on": "enter", "state": "idle", "event": null,
                "when": "attempts > 2", "hits": 0}])
    );
    let table = ok(&ctl(&s, &["break", "list", "worker"]));
    assert!(
        table
            .lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            == ["1", "enter", "idle", "-", "0", "attempts", ">", "2"],
        "{table}"
    );
    // The breakpoint works: `done` enters `idle` with attempts 3, and the machine holds.
    let r = post_json(
        s.addr,
        "/machines/worker/events",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        &json!({"type": "done"}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    until(&s, "the breakpoint hit", |m| m["paused"] == json!(true));
    assert_eq!(machine(&s)["state"], json!("busy"));
    let said = ok(&ctl(&s, &["break", "rm", "worker", "1"]));
    assert_eq!(
        said.trim(),
        "removed breakpoint 1: on enter state=idle when=attempts > 2 (hits 1)"
    );
    assert_eq!(
        ok(&ctl(&s, &["break", "list", "worker"])).trim(),
        "no breakpoints"
    );
    let err = failed(&ctl(&s, &["break", "rm", "worker", "1"]), 1);
    assert_eq!(
        err,
        "turnstile: ctl break rm worker 1: 404 machine `worker` has no breakpoint 1\n"
    );
    ok(&ctl(&s, &["resume", "worker"]));
    until(&s, "idle after resume", |m| m["state"] == json!("idle"));

    // The diagram, with the current state marked.
    let diagram = ok(&ctl(&s, &["diagram", "worker"]));
    assert!(diagram.starts_with("stateDiagram-v2\n"), "{diagram}");
    assert!(diagram.contains("idle --> busy : go"), "{diagram}");
    assert!(diagram.contains("class idle current"), "{diagram}");

    // Restart: the initial context again.
    ok(&ctl(&s, &["restart", "worker"]));
    let m = until(&s, "restarted", |m| m["context"]["note"] == json!("first"));
    assert_eq!(m["context"], json!({"attempts": 0, "note": "first"}));

    // Writes without the token, or with a wrong one, are refused with a hint.
    let err = failed(&ctl_with(&s, &["pause", "worker"], None), 1);
    assert!(
        err.starts_with("turnstile: ctl pause worker: 401 the sidecar needs a token for writes: set TURNSTILE_TOKEN"),
        "{err}"
    );
    let err = failed(&ctl_with(&s, &["pause", "worker"], Some("wrong")), 1);
    assert!(
        err.starts_with("turnstile: ctl pause worker: 401 the sidecar refused the token"),
        "{err}"
    );
    assert_eq!(machine(&s)["paused"], json!(false));

    // `start`: an instance of the worker's definition, with its own context.
    let said = ok(&ctl(
        &s,
        &[
            "start",
            "worker",
            "--name",
            "w2",
            "--context",
            r#"{"note":"second"}"#,
        ],
    ));
    assert_eq!(said.trim(), "w2");
    let w2 = get_json(s.addr, "/machines/w2");
    assert_eq!(w2["instance"], json!(true), "{w2}");
    assert_eq!(w2["definition"], json!("worker"), "{w2}");
    assert_eq!(w2["context"]["note"], json!("second"), "{w2}");
    assert_eq!(w2["context"]["attempts"], json!(0), "{w2}");
    let out = ctl(&s, &["start", "worker", "--format", "json"]);
    let started: Json = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(started["definition"], json!("worker"), "{started}");
    let name = started["name"].as_str().unwrap().to_owned();
    assert_eq!(
        get_json(s.addr, &format!("/machines/{name}"))["state"],
        json!("idle")
    );
    // The same name again, an unknown definition: the sidecar's answers, exit 1.
    let err = failed(&ctl(&s, &["start", "worker", "--name", "w2"]), 1);
    assert!(
        err.starts_with("turnstile: ctl start worker: 409 "),
        "{err}"
    );
    let err = failed(&ctl(&s, &["start", "nosuch"]), 1);
    assert!(
        err.starts_with("turnstile: ctl start nosuch: 404 "),
        "{err}"
    );

    // An unknown machine.
    let err = failed(&ctl(&s, &["pause", "nope"]), 1);
    assert_eq!(
        err,
        "turnstile: ctl pause nope: 404 no machine named `nope`\n"
    );

    // Stop: the machine ends; a second stop is refused.
    let said = ok(&ctl(&s, &["stop", "worker"]));
    assert!(
        said.starts_with("worker: stopped in state `idle`"),
        "{said}"
    );
    until(&s, "stopped", |m| m["running"] == json!(false));
    let err = failed(&ctl(&s, &["stop", "worker"]), 1);
    assert!(err.starts_with("turnstile: ctl stop worker: 409 "), "{err}");
}

#[test]
fn ctl_reports_an_unreachable_sidecar_and_usage_errors() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let out = client(&["ctl", "pause", "worker", "--url", &url], None);
    let err = failed(&out, 1);
    assert!(
        err.starts_with(&format!(
            "turnstile: ctl pause worker: cannot reach the sidecar at {url}: "
        )),
        "{err}"
    );
    // TURNSTILE_URL is read as --url's default.
    let mut cmd = std::process::Command::new(kit::bin());
    let out = cmd
        .args(["ctl", "diagram", "worker"])
        .env("TURNSTILE_URL", &url)
        .env_remove("TURNSTILE_TOKEN")
        .output()
        .unwrap();
    assert!(
        failed(&out, 1).contains(&format!("cannot reach the sidecar at {url}")),
        "{}",
        text(&out.stderr)
    );
    // Usage errors exit 2 before any request.
    for (args, wanted) in [
        (
            vec![
                "ctl", "break", "add", "worker", "--on", "later", "--url", &url,
            ],
            "unknown breakpoint kind `later` (one of enter, event, transition, error)",
        ),
        (
            vec!["ctl", "context", "worker", "--set", "{", "--url", &url],
            "--set is not JSON",
        ),
        (
            vec!["ctl", "start", "d", "--context", "nope", "--url", &url],
            "--context is not JSON",
        ),
        (
            vec!["ctl", "pause", "worker", "--url", "ftp://x"],
            "expected http://HOST:PORT",
        ),
        (vec!["ctl", "pause"], "MACHINE"),
        (
            vec![
                "ctl", "context", "w", "--set", "{}", "--file", "f", "--url", &url,
            ],
            "cannot be used with",
        ),
    ] {
        let err = failed(&client(&args, None), 2);
        assert!(err.contains(wanted), "{args:?}: {err}");
    }
}

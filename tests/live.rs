//! End to end: live operations on the real `turnstile` binary's sidecar, with a raw
//! HTTP/1.1 client: pause, step, breakpoints, context patches, resume, restart, stop and
//! the diagram, on a machine driven by events and one driven by a timer; and a thousand
//! pause-resume cycles while events pour in, every event processed exactly once.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod kit;

use std::time::{Duration, Instant};

use kit::field;
use kit::http::{get, get_json, metric, post_json, request, Resp};
use kit::sidecar::Sidecar as Server;
use serde_json::{json, Value as Json};

const LIMIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "live-t0ken";
const AUTH: (&str, &str) = ("Authorization", "Bearer live-t0ken");

/// Driven by events: `go` starts a short sleep whose `wake_up` brings it back.
const ORDERS: &str = r#"
metadata: {machine_name: orders}
initial_state: idle
context: {attempts: 0, card: {number: "4111", password: hunter2}}
transitions:
  - {from: idle, to: working, event: go}
  - {from: working, to: idle, event: wake_up}
  - {from: "*", to: halted, event: halt}
actions:
  working:
    - {type: sleep, duration: 0.3}
final_states: [halted]
"#;

/// Driven by a timer: `timeout(2)` in `waiting`.
const TICKER: &str = r#"
metadata: {machine_name: ticker}
initial_state: waiting
transitions:
  - {from: waiting, to: rang, event: timeout(2)}
  - {from: rang, to: waiting, event: again}
"#;

/// Counts: every `tick` is a transition.
const COUNTER: &str = r#"
metadata: {machine_name: counter}
initial_state: a
transitions:
  - {from: a, to: a, event: tick}
"#;

impl Server {
    /// A write with the token: POST (no body), PATCH or POST with a JSON body, DELETE.
    fn write(&self, method: &str, path: &str, body: Option<&Json>) -> Resp {
        let body = body.map(Json::to_string).unwrap_or_default();
        let mut headers = vec![AUTH];
        if !body.is_empty() {
            headers.push(("Content-Type", "application/json"));
        }
        request(self.addr, method, path, &headers, body.as_bytes())
    }

    fn ok(&self, method: &str, path: &str, body: Option<&Json>) -> Json {
        let r = self.write(method, path, body);
        assert!(r.status < 300, "{method} {path}: {} {}", r.status, r.text());
        r.json()
    }

    fn machine(&self, name: &str) -> Json {
        get_json(self.addr, &format!("/machines/{name}"))
    }

    fn until(&self, what: &str, f: impl Fn(&Json) -> bool, name: &str) -> Json {
        let deadline = Instant::now() + LIMIT;
        loop {
            let m = self.machine(name);
            if f(&m) {
                return m;
            }
            assert!(Instant::now() < deadline, "{what}: {m}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A 4xx JSON error, and the machine as it was.
#[track_caller]
fn refused(r: &Resp, status: u16) -> Json {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["status"], status, "{v}");
    v
}

#[test]
fn pause_step_breakpoint_patch_resume_on_events_and_timers() {
    let s = Server::start(&[ORDERS, TICKER], &["--token", TOKEN]);
    let a = s.addr;
    // The timer machine: paused half-way through its two seconds.
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    s.ok("POST", "/machines/ticker/pause", None);
    let paused_after = t0.elapsed();

    // Writes need the token.
    refused(&request(a, "POST", "/machines/orders/pause", &[], b""), 401);
    refused(&s.write("POST", "/machines/nope/pause", None), 404);
    let v = s.ok("POST", "/machines/orders/pause", None);
    assert_eq!(
        (v["paused"].clone(), v["state"].clone()),
        (json!(true), json!("idle"))
    );
    assert_eq!(
        metric(a, "turnstile_machine_paused{machine=\"orders\"}"),
        Some(1.0)
    );
    let d = get(a, "/machines/orders/diagram");
    assert_eq!(d.status, 200);
    let text = d.text();
    assert!(text.starts_with("stateDiagram-v2"), "{text}");
    assert!(text.contains("class idle paused") && text.contains("note right of idle : paused"));

    // Events queue while paused; a step processes one, up to the action that waits.
    let r = post_json(
        a,
        "/machines/orders/events",
        &[AUTH],
        &json!({"type": "go"}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let m = s.until("the event queued", |m| m["queue_depth"] == 1, "orders");
    assert_eq!(
        (m["state"].clone(), m["paused"].clone()),
        (json!("idle"), json!(true))
    );
    let v = s.ok("POST", "/machines/orders/step", None);
    assert_eq!(v["state"], "working", "{v}");
    assert_eq!(v["action_running"], true, "{v}");
    // The running action cannot have its context patched.
    let e = refused(
        &s.write(
            "PATCH",
            "/machines/orders/context",
            Some(&json!({"attempts": 1})),
        ),
        409,
    );
    assert!(
        e["error"]["message"].as_str().unwrap().contains("action"),
        "{e}"
    );
    // The sleep ends; its `wake_up` is held. Then nothing is left to step.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(s.machine("orders")["state"], "working");
    let v = s.ok("POST", "/machines/orders/step", None);
    assert_eq!(
        (v["state"].clone(), v["held_event"].clone()),
        (json!("idle"), Json::Null)
    );
    refused(&s.write("POST", "/machines/orders/step", None), 409);
    assert_eq!(s.machine("orders")["transitions"], 2);

    // Context patches: a merge patch while paused; bad patches change nothing.
    let v = s.ok(
        "PATCH",
        "/machines/orders/context",
        Some(&json!({"attempts": 4, "card": {"number": null}})),
    );
    assert_eq!(v["context"]["attempts"], 4, "{v}");
    assert_eq!(
        v["context"]["card"],
        json!({"password": "[redacted]"}),
        "{v}"
    );
    refused(
        &s.write("PATCH", "/machines/orders/context", Some(&json!([1]))),
        400,
    );
    let bad = request(
        a,
        "PATCH",
        "/machines/orders/context",
        &[AUTH, ("Content-Type", "application/json")],
        b"{\"attempts\": ",
    );
    refused(&bad, 400);
    refused(
        &request(a, "PUT", "/machines/orders/context", &[AUTH], b"{}"),
        405,
    );
    assert_eq!(s.machine("orders")["context"]["attempts"], 4);

    // Breakpoints: bad ones are refused with the reason, a good one is listed.
    let e = refused(
        &s.write(
            "POST",
            "/machines/orders/breakpoints",
            Some(&json!({"on": "later"})),
        ),
        400,
    );
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("enter, event, transition, error"));
    let e = refused(
        &s.write(
            "POST",
            "/machines/orders/breakpoints",
            Some(&json!({"on": "event", "when": "attempts >> 3"})),
        ),
        400,
    );
    assert_eq!(e["error"]["column"], 11, "{e}");
    let b = s.ok(
        "POST",
        "/machines/orders/breakpoints",
        Some(&json!({"on": "enter", "state": "working", "when": "attempts > 3 && exists(card)"})),
    );
    let id = b["id"].as_u64().unwrap();
    let list = get_json(a, "/machines/orders/breakpoints");
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["hits"], 0);

    // Resume; the next `go` is held before `working` is entered.
    let v = s.ok("POST", "/machines/orders/resume", None);
    assert_eq!(v["paused"], false);
    assert_eq!(
        metric(a, "turnstile_machine_paused{machine=\"orders\"}"),
        Some(0.0)
    );
    post_json(
        a,
        "/machines/orders/events",
        &[AUTH],
        &json!({"type": "go"}),
    );
    let m = s.until("the breakpoint hit", |m| m["paused"] == true, "orders");
    assert_eq!(m["state"], "idle", "{m}");
    assert_eq!(get_json(a, "/machines/orders/breakpoints")[0]["hits"], 1);
    s.ok("POST", "/machines/orders/resume", None);
    s.until("working", |m| m["state"] == "working", "orders");
    s.until("back to idle", |m| m["state"] == "idle", "orders");
    let gone = format!("/machines/orders/breakpoints/{id}");
    s.ok("DELETE", &gone, None);
    refused(&s.write("DELETE", &gone, None), 404);
    refused(
        &s.write("DELETE", "/machines/orders/breakpoints/x", None),
        400,
    );

    // Restart: the initial state and context again.
    let v = s.ok("POST", "/machines/orders/restart", None);
    assert_eq!(v["state"], "idle");
    assert_eq!(s.machine("orders")["context"]["attempts"], 0);

    // The timer kept the time it had left while paused.
    assert_eq!(s.machine("ticker")["state"], "waiting");
    let left = Duration::from_secs(2).saturating_sub(paused_after);
    let resumed = Instant::now();
    s.ok("POST", "/machines/ticker/resume", None);
    s.until("the timer fired", |m| m["state"] == "rang", "ticker");
    let took = resumed.elapsed();
    assert!(
        took + Duration::from_millis(200) >= left && took < left + Duration::from_secs(2),
        "{took:?} after the resume, {left:?} were left"
    );

    // Stop: as if a final state was reached.
    let v = s.ok("POST", "/machines/orders/stop", None);
    assert_eq!(v["stop_reason"], "stopped by request", "{v}");
    let m = s.machine("orders");
    assert_eq!(
        (m["running"].clone(), m["stop_reason"].clone()),
        (json!(false), json!("Requested"))
    );
    refused(&s.write("POST", "/machines/orders/pause", None), 409);
    // Every operation is logged, the stop last.
    let mut s = s;
    s.proc.wait_for("the stop logged", LIMIT, |j| {
        field(j, "message") == "live operation"
            && field(j, "action") == "stop"
            && field(j, "machine") == "orders"
    });
    let logged: Vec<String> = s
        .proc
        .records()
        .iter()
        .filter(|j| field(j, "message") == "live operation" && field(j, "machine") == "orders")
        .map(|j| field(j, "action").to_owned())
        .collect();
    for action in [
        "pause",
        "step",
        "context_patch",
        "breakpoint_set",
        "breakpoint_hit",
        "resume",
        "breakpoint_removed",
        "restart",
        "stop",
    ] {
        assert!(
            logged.iter().any(|a| a == action),
            "{action} not logged: {logged:?}"
        );
    }
}

#[test]
fn read_only_mode_refuses_every_live_operation() {
    let s = Server::start(&[ORDERS], &["--read-only"]);
    for (method, path) in [
        ("POST", "/machines/orders/pause"),
        ("POST", "/machines/orders/stop"),
        ("PATCH", "/machines/orders/context"),
        ("POST", "/machines/orders/breakpoints"),
        ("DELETE", "/machines/orders/breakpoints/1"),
    ] {
        refused(&request(s.addr, method, path, &[], b"{}"), 403);
    }
    assert_eq!(s.machine("orders")["paused"], false);
    assert_eq!(get(s.addr, "/machines/orders/breakpoints").status, 200);
}

#[test]
fn a_thousand_pause_resume_cycles_under_load_process_every_event_once() {
    let s = Server::start(&[COUNTER], &[]);
    let a = s.addr;
    const N: u64 = 3000;
    let sender = std::thread::spawn(move || {
        for _ in 0..N {
            let r = post_json(a, "/machines/counter/events", &[], &json!({"type": "tick"}));
            assert_eq!(r.status, 202, "{}", r.text());
        }
    });
    for i in 0..1000 {
        s.ok("POST", "/machines/counter/pause", None);
        if i % 10 == 0 {
            let r = s.write("POST", "/machines/counter/step", None);
            assert!(r.status == 200 || r.status == 409, "{}", r.text());
        }
        s.ok("POST", "/machines/counter/resume", None);
    }
    sender.join().unwrap();
    let m = s.until("every tick", |m| m["transitions"] == N, "counter");
    std::thread::sleep(Duration::from_millis(200));
    let m2 = s.machine("counter");
    assert_eq!(
        (m2["transitions"].clone(), m2["events"].clone()),
        (json!(N), json!(N)),
        "{m}"
    );
    assert_eq!(m2["paused"], false);
}

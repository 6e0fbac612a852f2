//! End to end: `GET /healthz/machines?stale_after=...` on the real binary's sidecar. A
//! machine that does nothing goes stale and is listed (503), a paused one with
//! `paused: true`, while one driven by a timer stays fresh; an event makes a stale machine
//! fresh again (200); a bad `stale_after` is a 400 that names the parameter.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod kit;

use std::time::{Duration, Instant};

use kit::http::{get, post_json};
use kit::sidecar::Sidecar;
use serde_json::{json, Value as Json};

const SLEEPY: &str = r#"
metadata: {machine_name: sleepy}
initial_state: idle
transitions:
  - {from: idle, to: idle, event: poke}
"#;

const HELD: &str = r#"
metadata: {machine_name: held}
initial_state: idle
transitions:
  - {from: idle, to: idle, event: poke}
"#;

/// Active every 0.2 s by itself.
const TICKER: &str = r#"
metadata: {machine_name: ticker}
initial_state: a
transitions:
  - {from: a, to: b, event: timeout(0.2)}
  - {from: b, to: a, event: timeout(0.2)}
"#;

fn health(s: &Sidecar, query: &str) -> (u16, Json) {
    let r = get(s.addr, &format!("/healthz/machines{query}"));
    (r.status, r.json())
}

fn stale_names(v: &Json) -> Vec<String> {
    let mut names: Vec<String> = v["stale"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["name"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn poke(s: &Sidecar, machine: &str) {
    let r = post_json(
        s.addr,
        &format!("/machines/{machine}/events"),
        &[],
        &json!({"type": "poke"}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
}

#[test]
fn machines_idle_past_stale_after_are_listed_and_fresh_ones_pass() {
    let s = Sidecar::start(&[SLEEPY, HELD, TICKER], &[]);
    // Just started: fresh by the default limit (60 s).
    let (code, v) = health(&s, "");
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        v,
        json!({"status": "ok", "stale_after_s": 60.0, "machines": 3})
    );

    let r = kit::http::request(s.addr, "POST", "/machines/held/pause", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());

    // sleepy and held do nothing; the ticker keeps going.
    let deadline = Instant::now() + Duration::from_secs(30);
    let v = loop {
        let (code, v) = health(&s, "?stale_after=1s");
        if code == 503 && stale_names(&v) == ["held", "sleepy"] {
            break v;
        }
        assert!(Instant::now() < deadline, "{code} {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(v["status"], json!("stale"));
    assert_eq!((&v["machines"], &v["stale_count"]), (&json!(3), &json!(2)));
    for e in v["stale"].as_array().unwrap() {
        assert_eq!(e["state"], json!("idle"), "{e}");
        assert!(e["seconds_since"].as_f64().unwrap() > 1.0, "{e}");
        assert!(e["last_activity"].as_str().unwrap().ends_with('Z'), "{e}");
        let paused = e["name"] == json!("held");
        assert_eq!(e["paused"], json!(paused), "{e}");
    }
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("2 of 3 running machines have had no activity for more than 1s: "),
        "{message}"
    );

    // An event is activity: sleepy is fresh again at once. held takes its event when it
    // resumes.
    poke(&s, "sleepy");
    poke(&s, "held");
    let r = kit::http::request(s.addr, "POST", "/machines/held/resume", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, v) = health(&s, "?stale_after=3s");
        if code == 200 {
            assert_eq!(v["machines"], json!(3));
            break;
        }
        assert!(Instant::now() < deadline, "{code} {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = kit::http::get_json(s.addr, "/machines/held");
    assert_eq!((&m["events"], &m["paused"]), (&json!(1), &json!(false)));

    // A bad duration names the parameter.
    for q in ["?stale_after=soon", "?stale_after=60", "?stale_after=0s"] {
        let (code, v) = health(&s, q);
        assert_eq!(code, 400, "{q}: {v}");
        assert_eq!(v["error"]["parameter"], json!("stale_after"), "{q}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("`stale_after` must be"),
            "{q}: {v}"
        );
    }
    let (code, v) = health(&s, "?limit=3");
    assert_eq!(code, 400, "{v}");
}

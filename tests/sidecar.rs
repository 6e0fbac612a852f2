//! End to end: the HTTP sidecar of the real `turnstile` binary, spoken to in raw HTTP/1.1
//! over `std::net::TcpStream` (so malformed and oversized requests can be sent as they
//! are). Every test starts its own process on a port the OS picks (`--listen
//! 127.0.0.1:0`) and reads the bound address from the JSON logs; processes are killed
//! when a test ends, however it ends.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod kit;

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use kit::http::{connect, get, get_json, parse, post_json, request, Resp, IO_LIMIT};
use kit::sidecar::{configs, run_command, stop_cleanly, Sidecar as Server};
use kit::{eventually, field, turnstile, Proc};
use serde_json::{json, Value as Json};

/// Generous: the machine may share its two cores with builds and other tests.
const LIMIT: Duration = Duration::from_secs(60);

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// A machine that waits for events: `go` runs a log action, `done` goes back, `stop` ends.
const IDLE: &str = r#"
metadata: {machine_name: idle}
initial_state: waiting
states: [waiting, working, stopped]
transitions:
  - {from: waiting, to: working, event: go}
  - {from: working, to: waiting, event: done}
  - {from: "*", to: stopped, event: stop}
actions:
  working:
    - {type: log, message: "working"}
final_states: [stopped]
"#;

/// A machine that stops at once.
const QUICK: &str = r#"
metadata: {machine_name: quick}
initial_state: starting
transitions:
  - {from: starting, to: finished, event: ready}
actions:
  starting:
    - {type: set_context, key: started, value: true, success: ready}
final_states: [finished]
"#;

/// Checks a JSON error response: status, content type and `{"error": {status, message}}`.
#[track_caller]
fn assert_error(r: &Resp, status: u16) -> Json {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["error"]["status"], json!(status), "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or("");
    assert!(!msg.is_empty(), "no message: {v}");
    v
}

// --- tests ----------------------------------------------------------------------------

#[test]
fn read_endpoints_answer_with_their_documented_shapes() {
    let s = Server::start(&[IDLE], &[]);
    let a = s.addr;

    let r = get(a, "/");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    for link in [
        "/metrics",
        "/stats",
        "/trace",
        "/errors",
        "/healthz",
        "/readyz",
        "/machines",
    ] {
        assert!(r.text().contains(&format!("href=\"{link}\"")), "{link}");
    }

    let r = get(a, "/healthz");
    assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})));
    let r = get(a, "/readyz");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "ready");
    // No job store, nothing said about one.
    assert!(r.json().get("job_store").is_none(), "{}", r.text());

    let r = get(a, "/machines");
    assert_eq!(r.status, 200);
    let list = r.json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let m = &list[0];
    for k in [
        "name",
        "state",
        "since",
        "transitions",
        "errors",
        "queue_depth",
        "running",
        "paused",
    ] {
        assert!(m.get(k).is_some(), "no `{k}` in {m}");
    }
    assert_eq!(m["name"], "idle");
    assert_eq!(m["state"], "waiting");
    assert_eq!(m["running"], true);

    let r = get(a, "/stats");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let st = r.json();
    for k in [
        "processed_events",
        "average_processing_time_ms",
        "active_workers",
        "uptime_seconds",
        "version",
        "listen",
        "machines",
    ] {
        assert!(st.get(k).is_some(), "no `{k}` in {st}");
    }
    assert!(st["processed_events"].is_u64(), "{st}");
    assert!(st["average_processing_time_ms"].is_number(), "{st}");
    assert_eq!(st["active_workers"], 1);
    assert_eq!(st["listen"], a.to_string());
    for k in ["state", "since", "transitions", "errors", "queue_depth"] {
        assert!(st["machines"]["idle"].get(k).is_some(), "no `{k}` in {st}");
    }

    // HEAD: the headers of GET, no body.
    let r = request(a, "HEAD", "/stats", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());

    for path in ["/trace", "/errors"] {
        let r = get(a, path);
        assert_eq!(r.status, 200);
        assert!(r.json().is_array(), "{path}: {}", r.text());
    }

    // An event with a traceparent: accepted, processed, and found by its trace id.
    let r = post_json(
        a,
        "/machines/idle/events",
        &[("traceparent", TRACEPARENT)],
        &json!({"type": "go", "payload": {"n": 1}, "job_id": 42}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let v = r.json();
    assert_eq!(v["accepted"], true);
    assert_eq!(v["job_id"], "42");
    assert_eq!(v["trace_id"], TRACE_ID);
    let records = eventually("the event in /trace", || {
        let r = get(a, &format!("/trace?trace_id={TRACE_ID}"));
        assert_eq!(r.status, 200);
        let v = r.json();
        (!v.as_array().unwrap().is_empty()).then_some(v)
    });
    let rec = &records[0];
    assert_eq!(rec["event"], "go", "{rec}");
    assert!(rec["timestamp"].is_string(), "{rec}");
    let d = &rec["data"];
    assert_eq!(d["machine"], "idle", "{rec}");
    assert_eq!(d["from"], "waiting", "{rec}");
    assert_eq!(d["to"], "working", "{rec}");
    assert_eq!(d["trace_id"], TRACE_ID, "{rec}");
    assert_eq!(d["job_id"], "42", "{rec}");
    assert_eq!(d["outcome"], "transitioned", "{rec}");
    assert!(d["actions"].is_array(), "{rec}");

    // Another event; newest first, limit and machine filters.
    let r = post_json(a, "/machines/idle/events", &[], &json!({"type": "done"}));
    assert_eq!(r.status, 202, "{}", r.text());
    let list = eventually("two records", || {
        let v = get(a, "/trace?machine=idle").json();
        (v.as_array().unwrap().len() >= 2).then_some(v)
    });
    assert_eq!(list[0]["event"], "done", "newest first: {list}");
    assert_eq!(get(a, "/trace?limit=1").json().as_array().unwrap().len(), 1);
    assert_eq!(get(a, "/trace?machine=other").json(), json!([]));
    let other_trace = "0af7651916cd43dd8448eb211c80319c";
    assert_eq!(
        get(a, &format!("/trace?trace_id={other_trace}")).json(),
        json!([])
    );

    let st = get(a, "/stats").json();
    assert!(st["processed_events"].as_u64().unwrap() >= 2, "{st}");

    let r = get(a, "/machines/idle");
    assert_eq!(r.status, 200);
    let m = r.json();
    assert_eq!(m["name"], "idle");
    assert_eq!(m["state"], "waiting", "{m}");
    assert!(m["context"].is_object(), "{m}");
    assert_eq!(m["states"], json!(["waiting", "working", "stopped"]));
    assert_eq!(m["final_states"], json!(["stopped"]));
    assert_eq!(m["initial_state"], "waiting");
    let events = m["declared_events"].as_array().unwrap();
    for e in ["go", "done", "stop"] {
        assert!(events.contains(&json!(e)), "{m}");
    }
    assert!(m["transitions"].as_u64().unwrap() >= 2, "{m}");

    s.stop();
}

/// Every family and label of a `/metrics` page is in the catalogue (which docs/metrics.md
/// is checked against).
fn assert_catalogued(page: &str) {
    let problems = turnstile_exporter::telemetry::catalogue::uncatalogued(page);
    assert!(problems.is_empty(), "not in the catalogue: {problems:#?}");
}

#[test]
fn metrics_come_in_both_formats_with_exemplars_only_in_openmetrics_with_spans() {
    const OM: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    const PROM: &str = "text/plain; version=0.0.4; charset=utf-8";
    const EXEMPLAR: &str = " # {trace_id=\"";
    let om_accept = [(
        "Accept",
        "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    )];
    // A dead collector: spans are made (and exemplars with them) but cannot be delivered.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let endpoint = format!("http://{dead}");
    let plain = Server::start(&[IDLE], &[]);
    let spans = Server::start(&[IDLE], &["--otlp-endpoint", &endpoint]);

    for s in [&plain, &spans] {
        let r = post_json(
            s.addr,
            "/machines/idle/events",
            &[("traceparent", TRACEPARENT)],
            &json!({"type": "go"}),
        );
        assert_eq!(r.status, 202, "{}", r.text());
        eventually("the event processed", || {
            let v = get(s.addr, "/stats").json();
            (v["processed_events"].as_u64() >= Some(1)).then_some(())
        });
    }

    // Without spans: no exemplars in either format.
    assert_eq!(get(plain.addr, "/stats").json()["spans"], false);
    let r = get(plain.addr, "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some(PROM));
    let text = r.text();
    assert!(text.contains("turnstile_build_info"), "{text}");
    assert!(text.contains("turnstile_transitions_total{"), "{text}");
    assert!(!text.contains(" # {"), "{text}");
    assert!(!text.contains("# EOF"), "{text}");
    assert_catalogued(&text);
    let r = request(plain.addr, "GET", "/metrics", &om_accept, b"");
    assert_eq!(r.header("content-type"), Some(OM));
    let text = r.text();
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    assert_catalogued(&text);
    assert!(!text.contains(EXEMPLAR), "{text}");

    // With spans: exemplars in OpenMetrics only.
    assert_eq!(get(spans.addr, "/stats").json()["spans"], true);
    let text = eventually("an exemplar", || {
        let r = request(spans.addr, "GET", "/metrics", &om_accept, b"");
        assert_eq!(r.header("content-type"), Some(OM));
        let t = r.text();
        t.contains(EXEMPLAR).then_some(t)
    });
    assert_catalogued(&text);
    let line = text.lines().find(|l| l.contains(EXEMPLAR)).unwrap();
    assert!(line.starts_with("turnstile_"), "{line}");
    assert!(
        line.contains(TRACE_ID),
        "the trace continues the traceparent: {line}"
    );
    let r = get(spans.addr, "/metrics");
    assert_eq!(r.header("content-type"), Some(PROM));
    assert!(!r.text().contains(" # {"), "{}", r.text());

    plain.stop();
    spans.stop();
}

#[test]
fn writes_need_the_token_and_read_only_mode_refuses_them() {
    let secured = Server::start_with(&[IDLE], &[], |c| {
        c.env("TURNSTILE_TOKEN", "s3cret-token");
    });
    // Read-only wins over a token: no write gets through.
    let ro = Server::start(&[IDLE], &["--read-only", "--token", "t0ken"]);
    let ev = json!({"type": "go"});
    let path = "/machines/idle/events";

    let a = secured.addr;
    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong")],
        vec![("Authorization", "Bearer s3cret-toke")],
        vec![("Authorization", "Bearer s3cret-token-and-more")],
        vec![("Authorization", "Basic czNjcmV0LXRva2Vu")],
        vec![("Authorization", "s3cret-token")],
    ] {
        let r = post_json(a, path, &headers, &ev);
        assert_error(&r, 401);
        assert!(
            r.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer")),
            "{:?}",
            r.headers
        );
    }
    assert_error(&request(a, "POST", "/jobs", &[], b"{}"), 401);
    assert_error(&request(a, "POST", "/jobs/j1/retry", &[], b""), 401);
    assert_error(&request(a, "DELETE", "/jobs/j1", &[], b""), 401);
    let bearer = [("Authorization", "Bearer s3cret-token")];
    for (method, job_path) in [("POST", "/jobs/j1/retry"), ("DELETE", "/jobs/j1")] {
        let v = assert_error(&request(a, method, job_path, &bearer, b""), 501);
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("job store"));
    }
    assert_error(&get(a, "/jobs"), 501);
    let r = post_json(a, path, &[("Authorization", "Bearer s3cret-token")], &ev);
    assert_eq!(r.status, 202, "{}", r.text());
    let r = post_json(a, path, &[("authorization", "bearer s3cret-token")], &ev);
    assert_eq!(
        r.status,
        202,
        "the scheme is case-insensitive: {}",
        r.text()
    );
    // The durable job store comes later: the route is there, and says so.
    let r = post_json(a, "/jobs", &[("Authorization", "Bearer s3cret-token")], &ev);
    let v = assert_error(&r, 501);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("job store"),
        "{v}"
    );
    // Reads stay open.
    assert_eq!(get(a, "/stats").status, 200);
    assert_eq!(get(a, "/machines/idle").status, 200);
    let errs = get(a, "/errors?kind=bad_message").json();
    assert!(
        errs.as_array()
            .unwrap()
            .iter()
            .any(|e| e["message"].as_str().unwrap().contains("401")),
        "refused writes show in /errors: {errs}"
    );

    let a = ro.addr;
    assert_error(
        &post_json(a, path, &[("Authorization", "Bearer t0ken")], &ev),
        403,
    );
    let v = assert_error(&post_json(a, path, &[], &ev), 403);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("read-only"),
        "{v}"
    );
    assert_error(&post_json(a, "/jobs", &[], &ev), 403);
    let bearer = [("Authorization", "Bearer t0ken")];
    assert_error(&request(a, "POST", "/jobs/j1/retry", &bearer, b""), 403);
    assert_error(&request(a, "DELETE", "/jobs/j1", &bearer, b""), 403);
    assert_eq!(get(a, "/stats").status, 200);
    assert_eq!(get(a, "/machines").status, 200);
    assert!(get(a, "/").text().contains("read-only"));

    secured.stop();
    ro.stop();
}

#[test]
fn bad_requests_get_json_errors_and_show_in_errors() {
    let s = Server::start(&[IDLE], &["--keep-serving"]);
    let a = s.addr;
    let ev = "/machines/idle/events";

    // Paths and methods.
    let v = assert_error(&get(a, "/nope"), 404);
    assert!(v["error"]["message"].as_str().unwrap().contains("/nope"));
    assert_error(&get(a, "/machines/nope"), 404);
    assert_error(&get(a, "/machines/idle/other"), 404);
    assert_error(
        &post_json(a, "/machines/nope/events", &[], &json!({"type": "go"})),
        404,
    );
    let r = request(a, "DELETE", "/stats", &[], b"");
    assert_error(&r, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    let r = get(a, ev);
    assert_error(&r, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = request(a, "PUT", "/jobs", &[], b"");
    assert_error(&r, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD, POST"));
    let r = get(a, "/jobs/j1/retry");
    assert_error(&r, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    assert_error(&get(a, "/machines/%ff"), 400);

    // Bodies.
    let json_ct = [("Content-Type", "application/json")];
    let r = request(a, "POST", ev, &json_ct, b"{\"type\": \"go\",\n oops}");
    let v = assert_error(&r, 400);
    assert_eq!(v["error"]["line"], 2, "{v}");
    assert_eq!(v["error"]["column"], 2, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 2 column 2"),
        "{v}"
    );
    let v = assert_error(&request(a, "POST", ev, &json_ct, b"{\"payload\": 1}"), 400);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("type"),
        "{v}"
    );
    assert_error(&request(a, "POST", ev, &json_ct, b""), 400);
    assert_error(&request(a, "POST", ev, &json_ct, b"[\"go\"]"), 400);
    assert_error(&request(a, "POST", ev, &json_ct, b"{\"type\": 5}"), 400);
    assert_error(
        &request(
            a,
            "POST",
            ev,
            &json_ct,
            b"{\"type\": \"go\", \"job_id\": []}",
        ),
        400,
    );
    assert_error(&request(a, "POST", ev, &json_ct, b"\xff\xfe\x00"), 400);
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let r = request(
            a,
            "POST",
            ev,
            &[("Content-Type", ct)],
            b"{\"type\": \"go\"}",
        );
        assert_error(&r, 415);
    }
    for tp in [
        "nope",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "",
    ] {
        let r = post_json(a, ev, &[("traceparent", tp)], &json!({"type": "go"}));
        let v = assert_error(&r, 400);
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("traceparent"),
            "{v}"
        );
    }
    let r = request(
        a,
        "POST",
        ev,
        &[
            ("Content-Type", "application/json"),
            ("Content-Length", "2097152"),
        ],
        b"",
    );
    let v = assert_error(&r, 413);
    assert_eq!(v["error"]["limit"], 1_048_576, "{v}");

    // Queries.
    for q in [
        "/trace?limit=abc",
        "/trace?limit=-1",
        "/errors?limit=1e3",
        "/trace?foo=1",
        "/trace?machine=%zz",
        "/trace?trace_id=xyz",
        "/errors?kind=nope",
        "/errors?limit=1&limit=2",
    ] {
        assert_error(&get(a, q), 400);
    }
    assert_eq!(
        get(a, "/trace?limit=5000").status,
        200,
        "a large limit is cut"
    );

    // All of that is in /errors (newest first) and in the error counter.
    let errs = get(a, "/errors?kind=bad_message&limit=1000").json();
    let list = errs.as_array().unwrap();
    assert!(list.len() >= 25, "{} records: {errs}", list.len());
    for e in list {
        for k in [
            "timestamp",
            "error_type",
            "message",
            "machine",
            "state",
            "event",
            "trace_id",
        ] {
            assert!(e.get(k).is_some(), "no `{k}` in {e}");
        }
        assert_eq!(e["error_type"], "bad_message");
    }
    let stamps: Vec<&str> = list
        .iter()
        .map(|e| e["timestamp"].as_str().unwrap())
        .collect();
    let mut sorted = stamps.clone();
    sorted.sort_unstable_by(|x, y| y.cmp(x));
    assert_eq!(stamps, sorted, "newest first");
    assert!(
        list[0]["message"].as_str().unwrap().contains("/errors"),
        "{}",
        list[0]
    );
    assert_eq!(
        get(a, "/errors?kind=bad_message&limit=2")
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let for_idle = get(a, "/errors?machine=idle").json();
    assert!(
        !for_idle.as_array().unwrap().is_empty()
            && for_idle
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["machine"] == "idle"),
        "{for_idle}"
    );
    let metrics = get(a, "/metrics").text();
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("turnstile_errors_total{") && l.contains("kind=\"bad_message\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(counted >= 25.0, "bad_message count {counted}:\n{metrics}");

    // A stopped machine takes no events (409); with --keep-serving the sidecar stays up.
    let r = post_json(a, ev, &[], &json!({"type": "stop"}));
    assert_eq!(r.status, 202, "{}", r.text());
    eventually("the machine stopped", || {
        (get(a, "/machines/idle").json()["running"] == false).then_some(())
    });
    assert_error(&post_json(a, ev, &[], &json!({"type": "go"})), 409);
    let r = get(a, "/readyz");
    let v = assert_error(&r, 503);
    assert_eq!(v["status"], "not ready", "{v}");
    assert!(v["reasons"][0].as_str().unwrap().contains("idle"), "{v}");
    let m = get(a, "/machines/idle").json();
    assert_eq!(m["state"], "stopped", "{m}");
    assert!(
        m["context"].is_object(),
        "the last context stays readable: {m}"
    );
    assert_eq!(get(a, "/healthz").status, 200);

    s.stop();
}

#[test]
fn a_huge_body_is_refused_without_being_read() {
    let s = Server::start(&[IDLE], &[]);
    let a = s.addr;
    const TEN_MB: usize = 10 * 1024 * 1024;

    // Declared: 413 before a single body byte is sent.
    let mut c = connect(a);
    write!(
        c,
        "POST /machines/idle/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {TEN_MB}\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    let r = parse(&raw);
    assert_error(&r, 413);

    // Streamed (chunked, no length): cut off at the limit while the client still writes.
    let mut c = connect(a);
    let mut w = c.try_clone().unwrap();
    let (tx, rx) = mpsc::channel();
    let writer = thread::spawn(move || {
        let res = (|| -> std::io::Result<usize> {
            w.write_all(
                b"POST /machines/idle/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            )?;
            let chunk = vec![b' '; 64 * 1024];
            let mut sent = 0;
            while sent < TEN_MB {
                w.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
                w.write_all(&chunk)?;
                w.write_all(b"\r\n")?;
                sent += chunk.len();
            }
            w.write_all(b"0\r\n\r\n")?;
            Ok(sent)
        })();
        let _ = tx.send(());
        res
    });
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until the server closes (or resets) the connection.
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let r = parse(&raw);
    assert_error(&r, 413);
    let _ = c.shutdown(Shutdown::Both);
    let _ = rx.recv_timeout(LIMIT);
    let sent = writer.join().unwrap();
    assert!(
        sent.is_err(),
        "the server read all 10 MB instead of stopping at the limit"
    );

    assert_eq!(get(a, "/healthz").status, 200);
    s.stop();
}

#[test]
fn a_body_within_the_byte_limit_that_parses_huge_is_refused() {
    let s = Server::start(&[IDLE], &[]);
    let a = s.addr;
    let ev = "/machines/idle/events";
    // Just under 1 MiB of `{}`: about 30 MB once parsed, and copied again into the
    // machine's context.
    let mut body = br#"{"type": "go", "payload": ["#.to_vec();
    while body.len() < 1024 * 1024 - 16 {
        body.extend_from_slice(b"{},");
    }
    body.extend_from_slice(b"{}]}");
    let r = request(
        a,
        "POST",
        ev,
        &[("Content-Type", "application/json")],
        &body,
    );
    let v = assert_error(&r, 413);
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("bytes of memory once parsed"), "{v}");
    // The type rules are the engine's (the sockets apply the same).
    for t in [r"go\u0000", r"go\nX", r"\u001b[2Jgo"] {
        let r = request(
            a,
            "POST",
            ev,
            &[("Content-Type", "application/json")],
            format!(r#"{{"type": "{t}"}}"#).as_bytes(),
        );
        let v = assert_error(&r, 400);
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("control characters"),
            "{v}"
        );
    }
    let errors = get(a, "/errors?kind=bad_message").json();
    let errors = errors.as_array().unwrap();
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert!(errors.iter().all(|e| e["machine"] == "idle"), "{errors:#?}");
    // Nothing reached the machine, which still takes a good event.
    let r = post_json(a, ev, &[], &json!({"type": "go", "payload": [{}, {}]}));
    assert_eq!(r.status, 202, "{}", r.text());
    s.stop();
}

/// One `/healthz` probe on a fresh connection, as a liveness probe makes it: the status
/// and how long the answer took, or why there was none within `limit`.
fn probe(addr: SocketAddr, limit: Duration) -> Result<(u16, Duration), String> {
    let started = Instant::now();
    let mut c = TcpStream::connect_timeout(&addr, limit).map_err(|e| format!("connect: {e}"))?;
    c.set_read_timeout(Some(limit)).unwrap();
    c.set_write_timeout(Some(limit)).unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    c.read_to_end(&mut raw)
        .map_err(|e| format!("no answer after {:?}: {e}", started.elapsed()))?;
    let took = started.elapsed();
    if took > limit {
        return Err(format!("answered after {took:?}"));
    }
    Ok((parse(&raw).status, took))
}

/// `n` connections that keep doing `act` every `every` (reconnecting, `greet` first, when
/// the server has closed one), until `stop` is set.
fn crowd(
    addr: SocketAddr,
    n: usize,
    every: Duration,
    greet: &'static [u8],
    act: &'static [u8],
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<thread::JoinHandle<usize>> {
    use std::sync::atomic::Ordering;
    let per_thread = 25;
    (0..n.div_ceil(per_thread))
        .map(|i| {
            let stop = stop.clone();
            let count = per_thread.min(n - i * per_thread);
            thread::spawn(move || {
                let open = || {
                    let c = TcpStream::connect_timeout(&addr, IO_LIMIT).ok()?;
                    c.set_write_timeout(Some(Duration::from_millis(200))).ok()?;
                    (&c).write_all(greet).ok()?;
                    Some(c)
                };
                let mut conns: Vec<Option<TcpStream>> = (0..count).map(|_| open()).collect();
                let mut reconnects = 0;
                while !stop.load(Ordering::Relaxed) {
                    thread::sleep(every);
                    for c in &mut conns {
                        let alive = c.as_ref().is_some_and(|s| match (&*s).write(act) {
                            Ok(_) => true,
                            Err(e) => {
                                e.kind() == std::io::ErrorKind::WouldBlock
                                    || e.kind() == std::io::ErrorKind::TimedOut
                            }
                        });
                        if !alive {
                            *c = open();
                            reconnects += 1;
                        }
                    }
                }
                reconnects
            })
        })
        .collect()
}

/// Percentile of sorted durations.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[test]
fn health_probes_are_answered_under_300_slow_readers_and_300_slowloris_clients() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let s = Server::start(&[IDLE], &[]);
    let a = s.addr;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    // Slow readers: pipeline /metrics requests and never read an answer.
    const METRICS: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut pipelined: Vec<u8> = Vec::new();
    for _ in 0..64 {
        pipelined.extend_from_slice(METRICS);
    }
    let pipelined: &'static [u8] = Box::leak(pipelined.into_boxed_slice());
    let readers = crowd(
        a,
        300,
        Duration::from_millis(500),
        pipelined,
        METRICS,
        &stop,
    );
    // Slowloris: headers that never end, a line every second.
    let loris = crowd(
        a,
        300,
        Duration::from_secs(1),
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
        b"X-Slow: 1\r\n",
        &stop,
    );
    // Let the crowds take every slot (and the slow readers' answers fill the buffers).
    thread::sleep(Duration::from_secs(3));
    let limit = Duration::from_secs(5);
    let mut took = Vec::new();
    let mut failures = Vec::new();
    for _ in 0..60 {
        match probe(a, limit) {
            Ok((200, t)) => took.push(t),
            Ok((status, _)) => failures.push(format!("status {status}")),
            Err(e) => failures.push(e),
        }
        thread::sleep(Duration::from_millis(150));
    }
    // The server is still there for a scrape too.
    let metrics_ok = probe(a, limit).is_ok() && get(a, "/metrics").status == 200;
    let rss = std::fs::read_to_string(format!("/proc/{}/status", s.proc.pid()))
        .ok()
        .and_then(|st| {
            st.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_owned)
        });
    stop.store(true, Ordering::Relaxed);
    let reconnects: usize = readers
        .into_iter()
        .chain(loris)
        .map(|t| t.join().unwrap())
        .sum();
    assert!(
        failures.is_empty(),
        "{} of 60 probes failed: {failures:?}",
        failures.len()
    );
    took.sort();
    println!(
        "/healthz under 300 slow readers + 300 slowloris: {} probes, p50 {:?}, p99 {:?}, max {:?}; \
         crowd reconnects {reconnects}; sidecar {}",
        took.len(),
        pct(&took, 0.5),
        pct(&took, 0.99),
        took[took.len() - 1],
        rss.unwrap_or_default()
    );
    assert!(metrics_ok);
    assert!(
        reconnects > 0,
        "the crowds were never shed: no pressure was made"
    );
    s.stop();
}

/// xorshift64*: reproducible garbage without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next().to_le_bytes()[0]).collect()
    }
}

#[test]
fn garbage_requests_do_not_hurt_the_server() {
    let s = Server::start(&[IDLE], &[]);
    let a = s.addr;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let fixed: Vec<Vec<u8>> = vec![
        b"GET /stats HTTP/1.1\r\nHost: x".to_vec(),
        b"GET /stats HTTP/1.1\r\nHost".to_vec(),
        b"GET /\xff\xfe\xfd HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GET /machines/\xc3\x28 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GET /machines/%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"POST /machines/idle/events HTTP/1.1\r\nContent-Length: 5\r\n\r\n{\"ty".to_vec(),
        b"POST /machines/idle/events HTTP/1.1\r\nContent-Length: -1\r\n\r\n".to_vec(),
        b"POST /machines/idle/events HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"
            .to_vec(),
        b"POST /machines/idle/events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        b"GET /trace?limit=%ff HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        b"\r\n\r\n\r\n".to_vec(),
        b"GET / HTTP/9.9\r\n\r\n".to_vec(),
        format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(70_000)).into_bytes(),
        format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "b".repeat(500_000)).into_bytes(),
    ];
    let mut inputs = fixed;
    while inputs.len() < 200 {
        let n = usize::try_from(rng.next() % 2048).unwrap() + 1;
        let mut b = rng.bytes(n);
        // Some start like a request, so the parser gets further in.
        if rng.next().is_multiple_of(2) {
            let mut head = b"POST /machines/idle/events HTTP/1.1\r\n".to_vec();
            head.append(&mut b);
            b = head;
        }
        inputs.push(b);
    }
    let workers: Vec<_> = inputs
        .chunks(25)
        .map(<[Vec<u8>]>::to_vec)
        .map(|batch| {
            thread::spawn(move || {
                for input in batch {
                    let Ok(mut c) = TcpStream::connect_timeout(&a, IO_LIMIT) else {
                        continue;
                    };
                    c.set_read_timeout(Some(IO_LIMIT)).unwrap();
                    c.set_write_timeout(Some(IO_LIMIT)).unwrap();
                    let _ = c.write_all(&input);
                    let _ = c.shutdown(Shutdown::Write);
                    let mut out = Vec::new();
                    let _ = c.read_to_end(&mut out);
                    // Whatever came back is an HTTP response, not a crash.
                    if !out.is_empty() {
                        assert!(
                            out.starts_with(b"HTTP/1."),
                            "{:?}",
                            String::from_utf8_lossy(&out)
                        );
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(get(a, "/healthz").json(), json!({"status": "ok"}));
    let r = post_json(a, "/machines/idle/events", &[], &json!({"type": "go"}));
    assert_eq!(r.status, 202, "{}", r.text());
    s.stop();
}

/// A port `p` with `p` and `p + 1` both free (as far as a quick check can tell).
fn free_pair() -> u16 {
    for _ in 0..50 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no two free neighbouring ports");
}

#[test]
fn a_taken_port_falls_back_to_the_next_unless_strict() {
    let (_dir, paths) = configs(&[IDLE]);
    let (_qdir, quick) = configs(&[QUICK]);

    // Taken: serves on the next port.
    let p = free_pair();
    let _taken = TcpListener::bind(("127.0.0.1", p)).unwrap();
    let listen = format!("127.0.0.1:{p}");
    let mut proc = Proc::spawn(run_command(&paths, &["--listen", &listen]));
    let addr = proc.sidecar_addr(LIMIT);
    assert_eq!(addr.port(), p + 1, "{}", proc.log());
    assert!(
        proc.stderr.iter().any(|l| l.contains("falls back")),
        "the fallback is logged: {}",
        proc.log()
    );
    assert_eq!(get(addr, "/healthz").status, 200);
    assert_eq!(get(addr, "/stats").json()["listen"], addr.to_string());
    stop_cleanly(&mut proc);

    // Strict: a clear error, exit code 1, no machine started.
    let mut proc = Proc::spawn(run_command(&paths, &["--listen", &listen, "--strict-port"]));
    let (st, _) = proc.finish(LIMIT);
    assert_eq!(st.code(), Some(1), "{}", proc.log());
    let log = proc.log();
    assert!(log.contains(&format!("cannot listen on {listen}")), "{log}");
    assert!(log.contains("--strict-port"), "{log}");
    assert!(!log.contains("machine started"), "{log}");

    // Both taken: a clear error too.
    let q = free_pair();
    let _t1 = TcpListener::bind(("127.0.0.1", q)).unwrap();
    let _t2 = TcpListener::bind(("127.0.0.1", q + 1)).unwrap();
    let listen = format!("127.0.0.1:{q}");
    let mut proc = Proc::spawn(run_command(&paths, &["--listen", &listen]));
    let (st, _) = proc.finish(LIMIT);
    assert_eq!(st.code(), Some(1), "{}", proc.log());
    let log = proc.log();
    assert!(log.contains(&format!("cannot listen on {listen}")), "{log}");
    assert!(log.contains(&format!("127.0.0.1:{}", q + 1)), "{log}");

    // --no-sidecar binds nothing, and a run that ends by itself still exits 0.
    let mut proc = Proc::spawn(run_command(&quick, &["--listen", &listen, "--no-sidecar"]));
    let (st, _) = proc.finish(LIMIT);
    assert_eq!(st.code(), Some(0), "{}", proc.log());
    assert!(!proc.log().contains("turnstile::sidecar"), "{}", proc.log());

    // A bad address is a usage error.
    let mut proc = Proc::spawn(run_command(&quick, &["--listen", "nowhere"]));
    let (st, _) = proc.finish(LIMIT);
    assert_eq!(st.code(), Some(2), "{}", proc.log());
}

#[test]
fn a_run_that_ends_by_itself_exits_zero_with_the_sidecar_on() {
    let (_dir, quick) = configs(&[QUICK]);
    let mut proc = Proc::spawn(run_command(&quick, &["--listen", "127.0.0.1:0"]));
    let (st, _) = proc.finish(LIMIT);
    assert_eq!(st.code(), Some(0), "{}", proc.log());
    let records = proc.records();
    assert!(records
        .iter()
        .any(|j| field(j, "message") == "every machine reached a final state"));
    assert!(records
        .iter()
        .any(|j| field(j, "message") == "sidecar stopped"));
}

/// Both write endpoints go through the same checks (one extractor): content type (415), a
/// malformed `traceparent` (400), a declared body past the limit (413); and the index page
/// lists both.
#[test]
fn every_write_endpoint_checks_content_type_traceparent_and_size_alike() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jobs.db");
    let s = Server::start(&[IDLE], &["--db", db.to_str().unwrap()]);
    let a = s.addr;
    let index = get(a, "/").text();
    for path in ["/machines/idle/events", "/jobs"] {
        let body = br#"{"type": "go", "job_type": "task"}"#;
        let r = request(a, "POST", path, &[("Content-Type", "text/plain")], body);
        assert_error(&r, 415);
        let headers = [
            ("Content-Type", "application/json"),
            ("traceparent", "00-nothex-00f067aa0ba902b7-01"),
        ];
        assert_error(&request(a, "POST", path, &headers, body), 400);
        let headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", "2000000"),
        ];
        assert_error(&request(a, "POST", path, &headers, b""), 413);
        let shown = path.replace("idle", "{name}");
        assert!(
            index.contains(&format!("POST {shown}")),
            "the index page does not list POST {shown}: {index}"
        );
    }
    // And both accept a good request with a traceparent.
    let headers = [("traceparent", TRACEPARENT)];
    let r = post_json(a, "/jobs", &headers, &json!({"job_type": "task"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let r = post_json(a, "/machines/idle/events", &headers, &json!({"type": "go"}));
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["trace_id"], TRACE_ID);
    s.stop();
}

/// A sidecar often starts before its database. While `run` waits for a job store it
/// cannot reach (`--db-wait`), the port answers: alive (`/healthz` 200), not ready
/// (`/readyz` 503, saying it waits for the job store and why), anything else 503; after
/// the wait the process exits 1. (The wait is long enough for every request to be
/// answered before the process ends, with both cores busy.)
#[test]
fn the_port_answers_not_ready_while_the_job_store_is_awaited() {
    // A port where nothing listens: the store is refused until the wait ends.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://turnstile:pw@127.0.0.1:{closed}/jobs");
    let config = kit::path("examples/controller_worker/worker.yaml");
    let t0 = Instant::now();
    let mut p = Proc::start(&["run", &config, "--db", &url, "--db-wait", "8"]);
    let addr = p.sidecar_addr(Duration::from_secs(30));
    let health = get(addr, "/healthz");
    assert_eq!(health.status, 200, "{}", health.text());
    let ready = eventually("/readyz saying it waits for the job store", || {
        let r = get(addr, "/readyz");
        (r.status == 503 && r.text().contains("waiting for the job store")).then_some(r)
    });
    let body = ready.json();
    assert_eq!(body["status"], "not ready", "{body}");
    let reason = body["reasons"][0].as_str().unwrap_or_default().to_owned();
    assert!(
        reason.contains("starting: waiting for the job store"),
        "{reason}"
    );
    assert!(!reason.contains(":pw@"), "the password shows: {reason}");
    let other = get(addr, "/machines");
    assert_eq!(other.status, 503, "{}", other.text());
    let (status, _) = p.finish(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{}", p.log());
    assert!(
        t0.elapsed() >= Duration::from_secs(8),
        "exited before --db-wait ran out: {:?}",
        t0.elapsed()
    );
    assert!(p.log().contains("cannot open the job store"), "{}", p.log());
}

/// `POST /jobs`: delays, unique keys and batches; each refusal a 400/409/413 with a JSON
/// error that says what was wrong, and a refused batch adds nothing.
#[test]
fn post_jobs_takes_delays_unique_keys_and_arrays() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jobs.db");
    let s = Server::start(&[IDLE], &["--db", db.to_str().unwrap()]);
    let a = s.addr;
    let post = |body: Json| post_json(a, "/jobs", &[], &body);
    // Delays: a time or seconds, not both.
    let r = post(json!({"job_type": "t", "job_id": "later", "delay_seconds": 3600}));
    assert_eq!(r.status, 201, "{}", r.text());
    let r = post(json!({"job_type": "t", "run_after": "2030-01-01T02:00:00+02:00"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let both = json!({"job_type": "t", "run_after": "2030-01-01T00:00:00Z", "delay_seconds": 1});
    let e = assert_error(&post(both), 400);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("not both"),
        "{e}"
    );
    for bad in [
        json!({"job_type": "t", "run_after": "2030-01-01 00:00:00"}),
        json!({"job_type": "t", "delay_seconds": -5}),
        json!({"job_type": "t", "unique_key": 7}),
    ] {
        assert_error(&post(bad), 400);
    }
    // Unique keys: the second is a 409 naming the existing job.
    let r = post(json!({"job_type": "t", "job_id": "k1", "unique_key": "nightly"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let e = assert_error(
        &post(json!({"job_type": "t", "unique_key": "nightly"})),
        409,
    );
    assert_eq!(e["error"]["job_id"], "k1", "{e}");
    assert_eq!(e["error"]["unique_key"], "nightly", "{e}");
    // A duplicate id is still a 409 without a job_id field.
    let e = assert_error(&post(json!({"job_type": "t", "job_id": "k1"})), 409);
    assert_eq!(e["error"].get("job_id"), None, "{e}");
    // Arrays: per-job results, in order.
    let r = post(json!([
        {"job_type": "t", "job_id": "b1"},
        {"job_type": "t", "job_id": "b2", "unique_key": "nightly"},
        {"job_type": "t", "job_id": "b3", "unique_key": "fresh"},
        {"job_type": "t", "job_id": "b4", "unique_key": "fresh"},
    ]));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"jobs": [
            {"result": "added", "job_id": "b1"},
            {"result": "existing", "job_id": "k1"},
            {"result": "added", "job_id": "b3"},
            {"result": "existing", "job_id": "b3"},
        ]})
    );
    // A bad element: 400 naming its index, nothing added.
    let e = assert_error(
        &post(json!([{"job_type": "t", "job_id": "c1"}, {"job_id": "c2"}])),
        400,
    );
    assert_eq!(e["error"]["index"], 1, "{e}");
    // A duplicate id in a batch: 409, nothing added.
    assert_error(
        &post(json!([{"job_type": "t", "job_id": "c1"}, {"job_type": "t", "job_id": "b1"}])),
        409,
    );
    // Too many jobs: 413.
    let many: Vec<Json> = (0..10_001).map(|_| json!({"type": "t"})).collect();
    assert_error(&post(Json::Array(many)), 413);
    assert_error(&post(json!("task")), 400);
    let listed = turnstile(&[
        "jobs",
        "list",
        "--format",
        "json",
        "--db",
        db.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    let jobs: Json = serde_json::from_slice(&listed.stdout).unwrap();
    let ids: Vec<&str> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert!(!ids.contains(&"c1"), "a refused batch added a job: {ids:?}");
    let later = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_id"] == "later")
        .unwrap();
    assert!(later["next_attempt_at"].is_string(), "{later}");
    s.stop();
}

/// SIGHUP while `run` still waits for its job store does not end the process (its
/// default action): there is nothing to reload yet, and the wait goes on.
#[test]
fn sighup_while_the_job_store_is_awaited_does_not_end_the_process() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://turnstile:pw@127.0.0.1:{closed}/jobs");
    let config = kit::path("examples/controller_worker/worker.yaml");
    let mut p = Proc::start(&["run", &config, "--db", &url, "--db-wait", "5"]);
    let addr = p.sidecar_addr(Duration::from_secs(30));
    eventually("/readyz saying it waits for the job store", || {
        let r = get(addr, "/readyz");
        (r.status == 503 && r.text().contains("waiting for the job store")).then_some(())
    });
    p.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    let health = get(addr, "/healthz");
    assert_eq!(health.status, 200, "{}", health.text());
    let (status, _) = p.finish(Duration::from_secs(60));
    // Ended by the store wait (exit 1), not by the signal.
    assert_eq!(status.code(), Some(1), "{status:?}: {}", p.log());
}

/// `/openapi.json` describes every endpoint the index page lists (the index is made from
/// the endpoint table, as the document is), and is a valid OpenAPI 3.1 document for
/// openapi-spec-validator.
#[test]
fn the_api_description_lists_every_endpoint_and_is_valid_openapi() {
    let s = Server::start(&[IDLE], &[]);
    let doc = get_json(s.addr, "/openapi.json");
    assert_eq!(doc["openapi"], "3.1.0");
    let index = get(s.addr, "/").text();
    let mut listed = Vec::new();
    for line in index.lines().filter(|l| l.starts_with("<li>")) {
        let (method, path) = if let Some(rest) = line.strip_prefix("<li><a href=\"") {
            ("get", rest.split('"').next().unwrap())
        } else {
            let code = line
                .strip_prefix("<li><code>")
                .and_then(|r| r.split("</code>").next())
                .unwrap();
            let (m, p) = code.split_once(' ').unwrap();
            let m = match m {
                "GET" => "get",
                "POST" => "post",
                "PATCH" => "patch",
                "DELETE" => "delete",
                other => panic!("the index shows a method {other}"),
            };
            (m, p)
        };
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is not in /openapi.json"
        );
        listed.push((method, path));
    }
    let described: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    assert_eq!(described, listed.len(), "{listed:?}");
    for (method, path) in [
        ("get", "/jobs"),
        ("post", "/jobs"),
        ("get", "/jobs/{id}"),
        ("post", "/jobs/{id}/retry"),
        ("delete", "/jobs/{id}"),
        ("get", "/openapi.json"),
    ] {
        assert!(listed.contains(&(method, path)), "{method} {path}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let out = std::process::Command::new("openapi-spec-validator")
        .arg(&file)
        .output()
        .expect("openapi-spec-validator (pip install openapi-spec-validator; .ci/install.sh does)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    s.stop();
}

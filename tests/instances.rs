//! Instances of a definition, end to end with the real binary: a controller whose state
//! runs `start_fsm`, and `POST /machines` starting many instances, each driven to its final
//! state and retired, checked through `GET /machines` pages, `/stats` and `/metrics`; and
//! every bad input (404, 409, 400, a bad `start_fsm`) refused with a clear answer while the
//! process goes on.

#![allow(clippy::unwrap_used)]

mod kit;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

use kit::http::{enc, get, get_json, post_json, request};
use kit::{turnstile, wait_until, Proc};

/// Generous: both cores may be busy with other builds.
const LIMIT: Duration = Duration::from_secs(60);

/// Instances `POST /machines` starts in the big test.
const MANY: usize = 10_000;

const CONTROLLER: &str = r#"
metadata: {machine_name: controller}
initial_state: idle
states: [idle, spawning]
events: [spawn, started, spawn_failed]
transitions:
  - {from: idle, to: spawning, event: spawn}
  - {from: spawning, to: idle, event: started}
  - {from: spawning, to: idle, event: spawn_failed}
actions:
  spawning:
    - type: start_fsm
      yaml_path: job.yaml
      machine_name: "ctl-{payload.n}"
      context_vars:
        - payload.n as n
        - payload.who.name as who
      success: started
      error: spawn_failed
      store_pid: true
"#;

const JOB: &str = r#"
metadata: {machine_name: job}
initial_state: waiting
context: {n: 0}
states: [waiting, done]
events: [finish]
transitions:
  - {from: waiting, to: done, event: finish}
"#;

struct Run {
    proc: Proc,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// `turnstile run controller.yaml` in a temp dir holding `job.yaml`; the machines' and
/// transitions' own log lines are left out (thousands of instances).
fn start() -> Run {
    start_with(&[])
}

/// [`start`] with more arguments for `run`.
fn start_with(more: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("controller.yaml"), CONTROLLER).unwrap();
    std::fs::write(dir.path().join("job.yaml"), JOB).unwrap();
    let config = dir.path().join("controller.yaml").display().to_string();
    let mut args = vec!["run", &config, "--listen", "127.0.0.1:0"];
    args.extend_from_slice(more);
    let mut cmd = turnstile(&args);
    cmd.env(
        "RUST_LOG",
        "info,turnstile::machine=warn,turnstile::transition=warn,turnstile::sidecar=info",
    )
    .env_remove("TURNSTILE_TOKEN")
    .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    let mut proc = Proc::spawn(cmd);
    let addr = proc.sidecar_addr(LIMIT);
    Run {
        proc,
        addr,
        _dir: dir,
    }
}

fn post(addr: SocketAddr, path: &str, body: &Json) -> (u16, Json) {
    let r = post_json(addr, path, &[], body);
    let j = serde_json::from_str(&r.text()).unwrap_or(Json::Null);
    (r.status, j)
}

/// The value of one series of `/metrics` (0 when absent).
fn sample(addr: SocketAddr, series: &str) -> f64 {
    let page = get(addr, "/metrics").text();
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Every page of `GET /machines?QUERY&limit=LIMIT`: the entries, in order.
fn all_pages(addr: SocketAddr, query: &str, limit: usize) -> Vec<Json> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/machines?{query}&limit={limit}");
        if let Some(a) = &after {
            path.push_str(&format!("&after={}", enc(a)));
        }
        let page = get_json(addr, &path);
        let entries = page["machines"].as_array().expect("a list").clone();
        assert!(entries.len() <= limit, "{path}: {} entries", entries.len());
        out.extend(entries);
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => return out,
        }
    }
}

/// Sends `f(i)` for every `i` in `0..n` from 4 threads; panics on an answer other than
/// `want`.
fn in_parallel(n: usize, want: u16, f: impl Fn(usize) -> (u16, Json) + Sync) {
    std::thread::scope(|s| {
        for t in 0..4 {
            let f = &f;
            s.spawn(move || {
                for i in (t..n).step_by(4) {
                    let (status, body) = f(i);
                    assert_eq!(status, want, "request {i}: {body}");
                }
            });
        }
    });
}

#[test]
fn many_instances_start_run_to_their_end_and_are_listed_a_page_at_a_time() {
    let mut run = start();
    let addr = run.addr;
    // The controller's start_fsm starts one, with the values context_vars copies.
    let (status, body) = post(
        addr,
        "/machines/controller/events",
        &json!({"type": "spawn", "payload": {"n": 7, "who": {"name": "Ada"}}}),
    );
    assert_eq!(status, 202, "{body}");
    wait_until("ctl-7 to start", LIMIT, || {
        get(addr, "/machines/ctl-7").status == 200
    });
    let m = get_json(addr, "/machines/ctl-7");
    assert_eq!(m["definition"], "job");
    assert_eq!(m["instance"], true);
    assert_eq!(m["context"], json!({"n": 7, "who": "Ada"}));

    let t0 = Instant::now();
    in_parallel(MANY, 201, |i| {
        let name = format!("job-{i:05}");
        let (status, body) = post(
            addr,
            "/machines",
            &json!({"definition": "job", "name": name, "context": {"n": i}}),
        );
        if status == 201 {
            assert_eq!(body, json!({"name": name, "definition": "job"}));
        }
        (status, body)
    });
    let started_in = t0.elapsed();

    // Every instance, once, in name order, a page at a time; the config machine too.
    let listed = all_pages(addr, "definition=job", 300);
    let names: Vec<&str> = listed.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), MANY + 1);
    assert!(names.windows(2).all(|w| w[0] < w[1]), "not in name order");
    assert!(listed
        .iter()
        .all(|m| m["instance"] == true && m["state"] == "waiting"));
    let everything = all_pages(addr, "state=idle", 1000);
    assert_eq!(everything.len(), 1, "{everything:?}");
    assert_eq!(everything[0]["name"], "controller");
    assert_eq!(everything[0]["instance"], false);
    // Without a query: the list it always was (the config machine only).
    let plain = get_json(addr, "/machines");
    assert_eq!(plain.as_array().map(Vec::len), Some(1), "{plain}");

    let waiting = "turnstile_machine_instances{machine=\"job\",state=\"waiting\"}";
    assert_eq!(sample(addr, waiting), (MANY + 1) as f64);
    let stats = get_json(addr, "/stats");
    assert_eq!(stats["instances"]["job"]["running"], MANY + 1);
    assert_eq!(stats["instances"]["job"]["states"]["waiting"], MANY + 1);
    assert_eq!(stats["machines"].as_object().map(|o| o.len()), Some(1));
    // Instances do not count for readiness.
    assert_eq!(get(addr, "/readyz").status, 200);

    // Each one to its final state: retired.
    let t1 = Instant::now();
    in_parallel(MANY, 202, |i| {
        post(
            addr,
            &format!("/machines/job-{i:05}/events"),
            &json!({"type": "finish"}),
        )
    });
    let (s, _) = post(addr, "/machines/ctl-7/events", &json!({"type": "finish"}));
    assert_eq!(s, 202);
    wait_until("every instance to retire", LIMIT, || {
        get_json(addr, "/stats")["instances"]["job"]["retired"] == MANY + 1
    });
    let finished_in = t1.elapsed();
    let stats = get_json(addr, "/stats");
    assert_eq!(stats["instances"]["job"]["running"], 0, "{stats}");
    assert_eq!(stats["instances"]["job"]["started"], MANY + 1);
    // The gauge's series stay, at zero.
    let page = get(addr, "/metrics").text();
    assert!(page.lines().any(|l| l == format!("{waiting} 0")), "{page}");
    assert_eq!(
        sample(addr, "turnstile_transitions_total{machine=\"job\"}"),
        (MANY + 1) as f64
    );
    // Retired ones are kept, at most the last 1,000.
    let done = all_pages(addr, "definition=job&state=done", 1000);
    assert_eq!(done.len(), MANY.min(1000));
    assert!(done.iter().all(|m| m["running"] == false));
    // A retired name is free again.
    let (s, body) = post(
        addr,
        "/machines",
        &json!({"definition": "job", "name": "job-00000"}),
    );
    assert_eq!(s, 201, "{body}");
    // Their records name the instance; the label is the definition's.
    let trace = get_json(addr, "/trace?machine=job&limit=5");
    let rec = &trace[0]["data"];
    assert_eq!(rec["machine"], "job", "{trace}");
    assert!(rec["instance"]
        .as_str()
        .is_some_and(|i| i.starts_with("job-") || i == "ctl-7"));
    let page = get(addr, "/metrics").text();
    assert!(
        !page.contains("machine=\"job-0"),
        "an instance name became a label value"
    );
    assert_eq!(get(addr, "/readyz").status, 200);

    run.proc.signal("TERM");
    let (st, _) = run.proc.finish(LIMIT);
    assert!(st.success(), "{}", run.proc.log());
    eprintln!(
        "{MANY} instances: started through POST /machines in {started_in:?}, driven to their end in {finished_in:?}"
    );
}

#[test]
fn bad_starts_are_refused_and_the_process_goes_on() {
    let mut run = start();
    let addr = run.addr;
    let (s, body) = post(addr, "/machines", &json!({"definition": "nope"}));
    assert_eq!(s, 404, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no definition named `nope`"));
    let (s, body) = post(
        addr,
        "/machines",
        &json!({"definition": "job", "name": "controller"}),
    );
    assert_eq!(s, 409, "{body}");
    let (s, _) = post(
        addr,
        "/machines",
        &json!({"definition": "job", "name": "a"}),
    );
    assert_eq!(s, 201);
    let (s, body) = post(
        addr,
        "/machines",
        &json!({"definition": "job", "name": "a"}),
    );
    assert_eq!(s, 409, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`a` is already running"));
    // A generated name.
    let (s, body) = post(addr, "/machines", &json!({"definition": "job"}));
    assert_eq!(s, 201, "{body}");
    assert!(body["name"].as_str().unwrap().starts_with("job-"));
    for bad in [
        json!([1]),
        json!({}),
        json!({"definition": 1}),
        json!({"definition": "job", "name": ""}),
        json!({"definition": "job", "name": "a\u{1}b"}),
        json!({"definition": "job", "name": 3}),
        json!({"definition": "job", "context": "x"}),
        json!({"definition": "job", "colour": "red"}),
    ] {
        let (s, body) = post(addr, "/machines", &bad);
        assert_eq!(s, 400, "{bad}: {body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    let r = request(
        addr,
        "POST",
        "/machines",
        &[("Content-Type", "application/json")],
        b"{\"definition\":\n  oops}",
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["line"], 2, "{}", r.text());
    for q in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "colour=red",
        "after=a&after=b",
    ] {
        let r = get(addr, &format!("/machines?{q}"));
        assert_eq!(r.status, 400, "{q}: {}", r.text());
    }
    // start_fsm at run time: a name taken is its error event, with the reason kept.
    let (s, _) = post(
        addr,
        "/machines",
        &json!({"definition": "job", "name": "ctl-1"}),
    );
    assert_eq!(s, 201);
    let (s, _) = post(
        addr,
        "/machines/controller/events",
        &json!({"type": "spawn", "payload": {"n": 1}}),
    );
    assert_eq!(s, 202);
    wait_until("the controller's error event", LIMIT, || {
        get_json(addr, "/machines/controller")["context"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("`ctl-1` is already running"))
    });
    let m = get_json(addr, "/machines/controller");
    assert_eq!(m["state"], "idle");
    assert_eq!(m["context"]["last_error_action"], "start_fsm");
    assert_eq!(get(addr, "/readyz").status, 200);
    // Still serving: one more start works.
    let (s, _) = post(
        addr,
        "/machines",
        &json!({"definition": "job", "name": "b"}),
    );
    assert_eq!(s, 201);
    run.proc.signal("TERM");
    let (st, _) = run.proc.finish(LIMIT);
    assert!(st.success(), "{}", run.proc.log());
}

/// A `start_fsm` whose parameters are wrong is a config error, with the line and column.
#[test]
fn bad_start_fsm_parameters_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("controller.yaml");
    std::fs::write(
        &config,
        CONTROLLER
            .replace("- payload.n as n", "- payload.n as")
            .replace("yaml_path: job.yaml", "yaml_path: missing.yaml"),
    )
    .unwrap();
    let config = config.display().to_string();
    let out = turnstile(&["validate", &config]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "{config}:13:18: error[bad-parameter]: `start_fsm` action: no file `missing.yaml`"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{config}:16:11: error[bad-parameter]: `start_fsm` action: `context_vars` entry `payload.n as`")),
        "{stdout}"
    );
    let names: BTreeSet<&str> = stdout
        .lines()
        .filter(|l| l.contains("error["))
        .map(|l| l.split("error[").nth(1).unwrap_or(""))
        .collect();
    assert_eq!(names.len(), 2, "{stdout}");
}

/// An instance's spans carry its definition as `turnstile.machine` (and in the span name)
/// and its own name as `turnstile.instance`; a config machine's have no `turnstile.instance`;
/// `POST /machines` is a span of its own.
#[test]
fn spans_name_the_instance() {
    let otlp = kit::otlp::Receiver::start();
    let endpoint = otlp.endpoint();
    let mut run = start_with(&["--otlp-endpoint", &endpoint]);
    let addr = run.addr;
    let (s, _) = post(
        addr,
        "/machines",
        &json!({"definition": "job", "name": "span-me"}),
    );
    assert_eq!(s, 201);
    let (s, _) = post(addr, "/machines/span-me/events", &json!({"type": "finish"}));
    assert_eq!(s, 202);
    let (s, _) = post(
        addr,
        "/machines/controller/events",
        &json!({"type": "spawn", "payload": {"n": 3}}),
    );
    assert_eq!(s, 202);
    let (s, _) = post(addr, "/machines", &json!({"definition": "nope"}));
    assert_eq!(s, 404);
    let spans = otlp.wait_for(LIMIT, |spans| {
        spans.iter().any(|s| s.name == "job finish")
            && spans.iter().any(|s| s.name == "controller spawn")
            && spans.iter().filter(|s| s.name == "POST /machines").count() == 2
    });
    // The write itself is a span: the definition and the instance it started, or why not.
    let writes: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "POST /machines")
        .collect();
    let ok = writes
        .iter()
        .find(|s| s.attr("turnstile.instance").is_some())
        .unwrap();
    assert_eq!(ok.attr("turnstile.instance"), Some("span-me"));
    assert_eq!(ok.attr("turnstile.machine"), Some("job"));
    let refused = writes
        .iter()
        .find(|s| s.attr("turnstile.instance").is_none())
        .unwrap();
    assert_eq!(refused.attr("turnstile.machine"), Some("nope"));
    assert_eq!(refused.status, "STATUS_CODE_ERROR");
    let job = spans.iter().find(|s| s.name == "job finish").unwrap();
    assert_eq!(job.attr("turnstile.machine"), Some("job"));
    assert_eq!(job.attr("turnstile.instance"), Some("span-me"));
    let ctl = spans.iter().find(|s| s.name == "controller spawn").unwrap();
    assert_eq!(ctl.attr("turnstile.machine"), Some("controller"));
    assert_eq!(ctl.attr("turnstile.instance"), None);
    run.proc.signal("TERM");
    let (st, _) = run.proc.finish(LIMIT);
    assert!(st.success(), "{}", run.proc.log());
}

/// A definition with a state between its initial and its final one, and an action that
/// writes the context.
const WORK: &str = r#"
metadata: {machine_name: work}
initial_state: waiting
context: {n: 0}
states: [waiting, working, done]
events: [go, finish]
transitions:
  - {from: waiting, to: working, event: go}
  - {from: working, to: done, event: finish}
actions:
  working:
    - type: set_context
      key: visited_working
      value: true
"#;

/// `turnstile run CONFIG --db DB --persist`, its sidecar's address.
fn persisted(config: &std::path::Path, db: &std::path::Path) -> (Proc, SocketAddr) {
    let (config, db) = (config.display().to_string(), db.display().to_string());
    let mut p = Proc::start(&[
        "run",
        &config,
        "--db",
        &db,
        "--persist",
        "--listen",
        "127.0.0.1:0",
    ]);
    let addr = p.sidecar_addr(LIMIT);
    (p, addr)
}

fn stop(mut p: Proc) {
    p.signal("TERM");
    let (st, _) = p.finish(LIMIT);
    assert!(st.success(), "{}", p.log());
}

/// `GET /machines/NAME`: (status, body).
fn machine(addr: SocketAddr, name: &str) -> (u16, Json) {
    let r = get(addr, &format!("/machines/{}", enc(name)));
    let j = serde_json::from_str(&r.text()).unwrap_or(Json::Null);
    (r.status, j)
}

/// The store's rows (`turnstile machine-state --format json`), by name.
fn saved(db: &std::path::Path) -> std::collections::BTreeMap<String, Json> {
    let db = db.display().to_string();
    let args = ["machine-state", "--db", &db, "--format", "json"];
    let out = kit::run_ok("turnstile machine-state", &mut turnstile(&args));
    let rows: Json = serde_json::from_slice(&out.stdout).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| (r["machine_name"].as_str().unwrap().to_owned(), r.clone()))
        .collect()
}

#[test]
fn persisted_instances_are_back_in_their_states_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let config = dir.path().join("work.yaml");
    std::fs::write(&config, WORK).unwrap();

    let (p, addr) = persisted(&config, &db);
    for (name, n) in [("a", 1), ("b", 2), ("c", 3)] {
        let (status, body) = post(
            addr,
            "/machines",
            &json!({"definition": "work", "name": name, "context": {"n": n}}),
        );
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = post(addr, "/machines", &json!({"definition": "work"}));
    assert_eq!(status, 201, "{body}");
    let generated = body["name"].as_str().unwrap().to_owned();
    // b and the generated one to `working`; c to its final state (retired).
    for (name, ev) in [
        ("b", "go"),
        (&*generated, "go"),
        ("c", "go"),
        ("c", "finish"),
    ] {
        let (status, body) = post(
            addr,
            &format!("/machines/{}/events", enc(name)),
            &json!({"type": ev}),
        );
        assert_eq!(status, 202, "{name} {ev}: {body}");
    }
    wait_until("b and the generated one working, c retired", LIMIT, || {
        machine(addr, "b").1["state"] == "working"
            && machine(addr, &generated).1["state"] == "working"
            && machine(addr, "c").1["state"] == "done"
    });
    stop(p);
    // Every instance's row names its definition; only c is retired.
    let rows = saved(&db);
    for name in ["a", "b", "c", &generated] {
        assert_eq!(rows[name]["definition"], "work", "{name}: {rows:#?}");
        assert_eq!(rows[name]["retired"], name == "c", "{name}: {rows:#?}");
    }
    assert_eq!(rows["work"]["definition"], Json::Null, "{rows:#?}");

    // Restarted: a, b and the generated one are back in their states with their
    // contexts; c is not started again.
    let (p, addr) = persisted(&config, &db);
    let expect = [
        ("a", "waiting", json!({"n": 1})),
        ("b", "working", json!({"n": 2, "visited_working": true})),
        (
            &*generated,
            "working",
            json!({"n": 0, "visited_working": true}),
        ),
    ];
    for (name, state, context) in &expect {
        let (status, m) = machine(addr, name);
        assert_eq!(status, 200, "{name}: {m}");
        assert_eq!(m["state"], *state, "{name}: {m:#}");
        assert_eq!(m["context"], *context, "{name}: {m:#}");
        assert_eq!(m["running"], true, "{name}: {m:#}");
    }
    assert_eq!(machine(addr, "c").0, 404);
    let stats = get_json(addr, "/stats");
    assert_eq!(stats["instances"]["work"]["running"], 3, "{stats:#}");
    // They go on from there: b to its end (retired in the store too).
    let (status, _) = post(addr, "/machines/b/events", &json!({"type": "finish"}));
    assert_eq!(status, 202);
    wait_until("b done", LIMIT, || machine(addr, "b").1["state"] == "done");
    stop(p);
    let rows = saved(&db);
    assert_eq!(rows["b"]["retired"], true, "{rows:#?}");
    assert_eq!(rows["a"]["retired"], false, "{rows:#?}");

    // Restarted without the definition: a clear warning, the records kept, the process
    // runs; with it again, the live ones are back.
    let other = dir.path().join("other.yaml");
    std::fs::write(&other, JOB).unwrap();
    let (mut p, addr) = persisted(&other, &db);
    let warned = |j: &Json| j.to_string().contains("definition is not loaded");
    if !p.records().iter().any(warned) {
        p.wait_for("the warning about a's definition", LIMIT, warned);
    }
    assert_eq!(machine(addr, "a").0, 404);
    assert_eq!(get(addr, "/readyz").status, 200);
    stop(p);
    assert_eq!(saved(&db)["a"]["retired"], false);
    let (p, addr) = persisted(&config, &db);
    assert_eq!(machine(addr, "a").1["state"], "waiting");
    assert_eq!(machine(addr, "b").0, 404);
    stop(p);
}

//! End to end with real tools: Debian's Prometheus scrapes the running `turnstile` binary
//! and an OTLP receiver built from the official protobuf definitions (`opentelemetry-proto`,
//! `exporter/tests/support/otlp.rs`) receives its spans.
//!
//! A controller and a worker machine exchange events for ever through `send_event`: the
//! controller waits 0.2 s (`timeout(0.2)`, which starts a new trace), sends `task` to the
//! worker, which sleeps 0.1 s, runs a `bash` check (every other round fails with exit 3)
//! and answers `task_completed` or `task_failed`. One round is also started over HTTP with
//! a `traceparent` header, so one trace can be followed across both machines.
//!
//! Checked: Prometheus's query API shows `up` = 1, the transition counters rising and the
//! action errors; the exemplars Prometheus stored (OpenMetrics scrape with
//! `--enable-feature=exemplar-storage`) name spans the receiver got; the received spans
//! have the design's names, attributes and parent links, and the POSTed trace crosses
//! both machines. Both processes are killed when the test ends, however it ends.
//!
//! A second test runs the same machines with Prometheus in native-histogram mode: it scrapes
//! the protobuf exposition, and `histogram_quantile` over the native series (no `_bucket`)
//! gives the worker's event time, while the text exposition keeps the classic buckets.
//!
//! Needs `prometheus` on `PATH` (`.ci/install.sh` installs Debian's package).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod kit;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kit::http::{enc, get_json, post_json, request};
use kit::otlp::{Receiver, RecvSpan};
use kit::prometheus::Prometheus;
use kit::{eventually_or, field, turnstile, Proc};
use serde_json::json;

/// Generous: Prometheus's first scrape takes several seconds, and the machine may share
/// its two cores with builds and other tests.
const LIMIT: Duration = Duration::from_secs(60);

/// The trace the test starts over HTTP (the parent span id changes per attempt).
const TRACE_ID: &str = "5d1e7c0ffee0ba5eba11c0de00000001";

const CONTROLLER: &str = r#"
metadata: {machine_name: controller}
initial_state: parked
states: [parked, idle, dispatching, waiting, idle_bad, dispatching_bad, waiting_bad]
transitions:
  # The first round is started over HTTP, with a traceparent.
  - {from: parked, to: dispatching, event: start}
  # Then a timer starts each round; a timer event carries no trace context, so every
  # round is a trace of its own.
  - {from: idle, to: dispatching, event: "timeout(0.2)"}
  - {from: dispatching, to: waiting, event: event_sent}
  - {from: waiting, to: idle_bad, event: task_completed}
  - {from: waiting, to: idle_bad, event: task_failed}
  - {from: idle_bad, to: dispatching_bad, event: "timeout(0.2)"}
  - {from: dispatching_bad, to: waiting_bad, event: event_sent}
  - {from: waiting_bad, to: idle, event: task_completed}
  - {from: waiting_bad, to: idle, event: task_failed}
actions:
  dispatching:
    - {type: send_event, target_machine: worker, event_type: task, payload: {kind: good}}
  dispatching_bad:
    - {type: send_event, target_machine: worker, event_type: task, payload: {kind: bad}}
"#;

const WORKER: &str = r#"
metadata: {machine_name: worker}
initial_state: idle
states: [idle, working, checking, reporting, failed]
transitions:
  - {from: idle, to: working, event: task}
  - {from: working, to: checking, event: wake_up}
  - {from: checking, to: reporting, event: job_done}
  - {from: checking, to: failed, event: error}
  - {from: [reporting, failed], to: idle, event: event_sent}
actions:
  working:
    - {type: sleep, duration: 0.1}
  checking:
    - type: bash
      command: "echo checking {payload.kind}; test {payload.kind} != bad || (echo broken >&2; exit 3)"
  reporting:
    - {type: send_event, target_machine: controller, event_type: task_completed}
  failed:
    - {type: send_event, target_machine: controller, event_type: task_failed}
"#;

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

// --- Prometheus -----------------------------------------------------------------------

// --- the machines ---------------------------------------------------------------------

/// `turnstile run` on the two configs, its sidecar on a free port, spans to `otlp`.
fn start_turnstile(dir: &Path, otlp: &Receiver) -> (Proc, SocketAddr) {
    let mut paths = Vec::new();
    for (name, yaml) in [("controller.yaml", CONTROLLER), ("worker.yaml", WORKER)] {
        let p = dir.join(name);
        std::fs::write(&p, yaml).unwrap();
        paths.push(p.display().to_string());
    }
    // Without a path the endpoint gets `/v1/traces` appended.
    let endpoint = format!("http://127.0.0.1:{}", otlp.port);
    let mut args = vec!["run", paths[0].as_str(), paths[1].as_str()];
    args.extend([
        "--listen",
        "127.0.0.1:0",
        "--otlp-endpoint",
        endpoint.as_str(),
    ]);
    let mut cmd = turnstile(&args);
    for k in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_SDK_DISABLED",
        "OTEL_SERVICE_NAME",
        "TURNSTILE_TOKEN",
    ] {
        cmd.env_remove(k);
    }
    let mut proc = Proc::spawn(cmd);
    let addr: SocketAddr = proc.sidecar_addr(LIMIT);
    proc.wait_started(2, LIMIT);
    (proc, addr)
}

/// The parent span id of the `traceparent` the test sends.
const PARENT_SPAN: &str = "00000000a11ce001";

/// POSTs `start` with a `traceparent` of [`TRACE_ID`]: the parked controller starts the
/// first round, and the event is in `/trace` with that trace id.
fn start_traced_round(sidecar: SocketAddr) {
    let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN}-01");
    let r = post_json(
        sidecar,
        "/machines/controller/events",
        &[("traceparent", &traceparent)],
        &json!({"type": "start", "job_id": "traced-1"}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let v = r.json();
    assert_eq!(v["trace_id"], TRACE_ID, "{v}");
    let target = format!("/trace?machine=controller&trace_id={TRACE_ID}");
    let rec = eventually_or(
        "the POSTed `start` in /trace",
        || {
            let recs = get_json(sidecar, &target);
            recs.as_array()
                .unwrap()
                .iter()
                .find(|r| r["event"] == "start")
                .cloned()
        },
        || format!("{}", get_json(sidecar, "/trace?machine=controller")),
    );
    assert_eq!(rec["data"]["outcome"], "transitioned", "{rec}");
    assert_eq!(rec["data"]["from"], "parked", "{rec}");
    assert_eq!(rec["data"]["to"], "dispatching", "{rec}");
    assert_eq!(rec["data"]["job_id"], "traced-1", "{rec}");
}

// --- span checks ----------------------------------------------------------------------

fn by_id(spans: &[RecvSpan]) -> HashMap<&str, &RecvSpan> {
    spans.iter().map(|s| (s.span_id.as_str(), s)).collect()
}

fn is_action(s: &RecvSpan) -> bool {
    s.name.starts_with("action ")
}

/// Names and attributes of every span, the parent of every action span, and the links
/// between the machines, for spans in `early` whose relatives must be in `all` (a
/// snapshot taken later: an action's event span ends just after the action does and may
/// come in the next export batch).
fn check_spans(early: &[RecvSpan], all: &[RecvSpan]) {
    let index = by_id(all);
    for s in early {
        assert!(
            s.resource
                .iter()
                .any(|(k, v)| k == "service.name" && v == "turnstile"),
            "{s:#?}"
        );
        if is_action(s) {
            let kind = s.attr("turnstile.action.type").unwrap_or_default();
            assert_eq!(s.name, format!("action {kind}"), "{s:#?}");
            let parent = index
                .get(s.parent_span_id.as_str())
                .unwrap_or_else(|| panic!("the parent of {s:#?} was not received"));
            assert!(
                !is_action(parent),
                "an action's parent is its event: {parent:#?}"
            );
            assert_eq!(parent.trace_id, s.trace_id);
            continue;
        }
        let machine = s.attr("turnstile.machine").unwrap_or_default();
        let event = s.attr("turnstile.event").unwrap_or_default();
        assert!(machine == "controller" || machine == "worker", "{s:#?}");
        assert_eq!(s.name, format!("{machine} {event}"), "{s:#?}");
        for key in [
            "turnstile.state.from",
            "turnstile.state.to",
            "turnstile.outcome",
        ] {
            assert!(
                s.attr(key).is_some_and(|v| !v.is_empty()),
                "no {key} in {s:#?}"
            );
        }
        // Events sent by the other machine are children of its `send_event` action.
        let sent_by_other = matches!(
            (machine, event),
            ("worker", "task") | ("controller", "task_completed" | "task_failed")
        );
        if sent_by_other && s.attr("turnstile.outcome") == Some("transitioned") {
            let parent = index
                .get(s.parent_span_id.as_str())
                .unwrap_or_else(|| panic!("the parent of {s:#?} was not received"));
            assert_eq!(
                parent.name, "action send_event",
                "{s:#?}\nparent {parent:#?}"
            );
            let sender = index
                .get(parent.parent_span_id.as_str())
                .and_then(|p| p.attr("turnstile.machine"));
            assert_ne!(sender, Some(machine), "{s:#?} sent by itself?");
            assert_eq!(parent.trace_id, s.trace_id);
        }
        // A round started by the controller's timer is the root of its trace.
        if machine == "controller" && event == "timeout(0.2)" {
            assert!(s.parent_span_id.is_empty(), "{s:#?}");
        }
    }
}

/// The spans of the POSTed trace: the controller's `start`, its `send_event`, the worker's
/// `task` under it and everything after, back to the controller, in one trace.
fn check_traced_round(all: &[RecvSpan]) {
    let trace: Vec<&RecvSpan> = all.iter().filter(|s| s.trace_id == TRACE_ID).collect();
    let names = || trace.iter().map(|s| s.name.as_str()).collect::<Vec<_>>();
    let start = trace
        .iter()
        .find(|s| {
            s.name == "controller start" && s.attr("turnstile.outcome") == Some("transitioned")
        })
        .unwrap_or_else(|| panic!("no transitioned `controller start` in {:?}", names()));
    assert_eq!(
        start.parent_span_id, PARENT_SPAN,
        "`controller start` continues the POSTed traceparent: {start:#?}"
    );
    assert_eq!(start.attr("turnstile.state.from"), Some("parked"));
    assert_eq!(start.attr("turnstile.state.to"), Some("dispatching"));
    assert_eq!(start.attr("turnstile.job.id"), Some("traced-1"));
    let send = trace
        .iter()
        .find(|s| s.name == "action send_event" && s.parent_span_id == start.span_id)
        .unwrap_or_else(|| panic!("no send_event under `controller start`: {:?}", names()));
    let task = trace
        .iter()
        .find(|s| s.name == "worker task")
        .unwrap_or_else(|| panic!("the worker's `task` is not in the trace: {:?}", names()));
    assert_eq!(task.parent_span_id, send.span_id, "{task:#?}");
    assert_eq!(task.attr("turnstile.machine"), Some("worker"));
    assert_eq!(task.attr("turnstile.state.from"), Some("idle"));
    assert_eq!(task.attr("turnstile.state.to"), Some("working"));
    let wake = trace
        .iter()
        .find(|s| s.name == "worker wake_up")
        .unwrap_or_else(|| panic!("no `worker wake_up` in {:?}", names()));
    assert_eq!(
        wake.parent_span_id, task.span_id,
        "a returned event is a child"
    );
    assert!(trace
        .iter()
        .any(|s| s.name == "action bash" && s.parent_span_id == wake.span_id));
    let answer = trace
        .iter()
        .find(|s| s.name == "controller task_completed" || s.name == "controller task_failed")
        .unwrap_or_else(|| panic!("the answer to the controller is not in {:?}", names()));
    let answer_parent = trace
        .iter()
        .find(|s| s.span_id == answer.parent_span_id)
        .unwrap_or_else(|| panic!("the answer's parent is not in the trace: {answer:#?}"));
    assert_eq!(answer_parent.name, "action send_event");
    let machines: BTreeSet<&str> = trace
        .iter()
        .filter_map(|s| s.attr("turnstile.machine"))
        .collect();
    assert_eq!(machines, BTreeSet::from(["controller", "worker"]));
}

/// A failing `bash` span with error status and its event span marked failed.
fn check_errors(all: &[RecvSpan]) {
    let index = by_id(all);
    let bash = all
        .iter()
        .find(|s| s.name == "action bash" && s.status == "STATUS_CODE_ERROR")
        .expect("a failed bash action span");
    assert_eq!(bash.attr("error.type"), Some("error"), "{bash:#?}");
    assert!(
        bash.events.iter().any(|(name, attrs)| name == "exception"
            && attrs
                .iter()
                .any(|(k, v)| k == "exception.message" && v.contains("broken"))),
        "{bash:#?}"
    );
    let event = index
        .get(bash.parent_span_id.as_str())
        .expect("the failed action's event span");
    assert_eq!(event.name, "worker wake_up");
    assert_eq!(event.status, "STATUS_CODE_ERROR", "{event:#?}");
    assert_eq!(event.attr("error.type"), Some("action"));
    assert_eq!(event.attr("turnstile.state.to"), Some("checking"));
}

// --- the test -------------------------------------------------------------------------

#[test]
fn prometheus_scrapes_the_binary_and_exemplars_match_the_spans_received_over_otlp() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let (mut turnstile, sidecar) = start_turnstile(dir.path(), &receiver);
    let since = unix_now();
    let prom = Prometheus::start(sidecar);
    start_traced_round(sidecar);

    // Prometheus scrapes the sidecar (OpenMetrics; the first scrape takes a few seconds).
    let up = r#"up{job="turnstile"}"#;
    eventually_or(
        "up = 1 in Prometheus",
        || (prom.scalar(up)? == 1.0).then_some(()),
        || {
            format!(
                "targets: {}\nlog:\n{}",
                prom.api("/api/v1/targets"),
                prom.log_text()
            )
        },
    );
    // The transition counters rise between two scrapes a few seconds apart.
    let total = r#"sum(turnstile_transitions_total{job="turnstile"})"#;
    let first = eventually_or("a transition count", || prom.scalar(total), String::new);
    let t0 = Instant::now();
    let later = eventually_or(
        "the transition count to rise",
        || {
            let v = prom.scalar(total)?;
            (t0.elapsed() >= Duration::from_secs(3) && v > first).then_some(v)
        },
        || format!("first {first}, now {:?}", prom.scalar(total)),
    );
    assert!(later > first);
    // Every other round fails in `bash`: Prometheus sees the errors too.
    let errors = r#"sum(turnstile_errors_total{job="turnstile",machine="worker",kind="action"})"#;
    eventually_or(
        "action errors in Prometheus",
        || (prom.scalar(errors)? >= 1.0).then_some(()),
        || format!("{:?}", prom.scalar(errors)),
    );
    // Both machines are in some state: exactly one state series at 1 per machine.
    let in_state = r#"sum by (machine) (turnstile_machine_state{job="turnstile"})"#;
    let data = prom.api(&format!("/api/v1/query?query={}", enc(in_state)));
    let per_machine: Vec<(String, String)> = data["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["metric"]["machine"].as_str().unwrap().to_owned(),
                r["value"][1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        per_machine
            .iter()
            .map(|(m, _)| m.as_str())
            .collect::<BTreeSet<_>>(),
        BTreeSet::from(["controller", "worker"]),
        "{data}"
    );
    assert!(per_machine.iter().all(|(_, v)| v == "1"), "{data}");

    // Exemplars stored by Prometheus, for event and action durations.
    let mut exemplars: Vec<(String, String, String)> = Vec::new();
    for family in [
        "turnstile_event_duration_seconds_bucket",
        "turnstile_action_duration_seconds_bucket",
    ] {
        let target = |end: f64| {
            format!(
                "/api/v1/query_exemplars?query={}&start={:.3}&end={:.3}",
                enc(&format!(r#"{family}{{job="turnstile"}}"#)),
                since - 60.0,
                end
            )
        };
        let found = eventually_or(
            &format!("exemplars of {family}"),
            || {
                let data = prom.api(&target(unix_now() + 60.0));
                let mut out = Vec::new();
                for series in data.as_array().unwrap() {
                    for e in series["exemplars"].as_array().unwrap() {
                        out.push((
                            family.to_owned(),
                            e["labels"]["trace_id"].as_str().unwrap_or("").to_owned(),
                            e["labels"]["span_id"].as_str().unwrap_or("").to_owned(),
                        ));
                    }
                }
                (!out.is_empty()).then_some(out)
            },
            || format!("{}", prom.api(&target(unix_now() + 60.0))),
        );
        exemplars.extend(found);
    }
    for (family, trace_id, span_id) in &exemplars {
        assert_eq!(trace_id.len(), 32, "{family}: {trace_id}");
        assert_eq!(span_id.len(), 16, "{family}: {span_id}");
    }

    // Every exemplar names a span the receiver got (spans go out in batches every second).
    let spans = receiver.wait_for(LIMIT, |spans| {
        let ids: BTreeSet<(&str, &str)> = spans
            .iter()
            .map(|s| (s.trace_id.as_str(), s.span_id.as_str()))
            .collect();
        exemplars
            .iter()
            .all(|(_, t, s)| ids.contains(&(t.as_str(), s.as_str())))
            && spans.iter().any(|s| {
                s.trace_id == TRACE_ID
                    && (s.name == "controller task_completed" || s.name == "controller task_failed")
            })
    });
    let exemplar_spans: Vec<&RecvSpan> = exemplars
        .iter()
        .map(|(_, t, s)| {
            spans
                .iter()
                .find(|x| &x.trace_id == t && &x.span_id == s)
                .unwrap()
        })
        .collect();
    // Event exemplars point at event spans, action exemplars at action spans.
    for ((family, _, _), span) in exemplars.iter().zip(&exemplar_spans) {
        assert_eq!(
            family.starts_with("turnstile_action"),
            is_action(span),
            "{family} exemplar -> {span:#?}"
        );
    }

    // Parent links need the spans exported after the ones checked: wait a few batches.
    let seen = spans.len();
    receiver.wait_for(LIMIT, |s| s.len() >= seen + 20);
    thread::sleep(Duration::from_millis(1500));
    let later_all = receiver.spans();
    check_spans(&spans, &later_all);
    check_traced_round(&later_all);
    check_errors(&later_all);
    let traces: BTreeSet<&str> = spans.iter().map(|s| s.trace_id.as_str()).collect();
    assert!(traces.len() >= 3, "a trace per round: {traces:?}");
    eprintln!(
        "transitions {first} -> {later}; {} exemplars, all among {} spans received in {} traces",
        exemplars.len(),
        spans.len(),
        traces.len()
    );

    // SIGTERM: a clean stop (machines, then the sidecar, then a last span flush).
    turnstile.signal("TERM");
    let (status, _) = turnstile.finish(LIMIT);
    assert_eq!(status.code(), Some(0), "{}", turnstile.log());
    drop(prom);
}

/// A machine whose `go` runs a 1 s `sleep`: an event arriving meanwhile that no transition
/// takes is ignored while `go` is still in progress.
const SLEEPER: &str = r#"
metadata: {machine_name: sleeper}
initial_state: waiting
states: [waiting, working]
transitions:
  - {from: waiting, to: working, event: go}
  - {from: working, to: waiting, event: wake_up}
actions:
  working:
    - {type: sleep, duration: 1}
"#;

/// An ignored event must not take the place of the event in progress: the span and the
/// `/trace` record of `go` keep their own trace, outcome and actions, and the ignored
/// event has one span of its own with outcome `ignored`.
///
/// Found by the test above while it retried a `start` the controller was too busy to
/// take: the engine used to report an unrouted event with `event_started` too, and the
/// telemetry stored it in the machine's live-event slot, replacing the running event.
#[test]
fn an_ignored_event_leaves_the_span_of_the_event_in_progress_alone() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let path = dir.path().join("sleeper.yaml");
    std::fs::write(&path, SLEEPER).unwrap();
    let endpoint = format!("http://127.0.0.1:{}", receiver.port);
    let path = path.display().to_string();
    let mut cmd = turnstile(&[
        "run",
        &path,
        "--listen",
        "127.0.0.1:0",
        "--otlp-endpoint",
        &endpoint,
    ]);
    for k in [
        "OTEL_TRACES_SAMPLER",
        "OTEL_SDK_DISABLED",
        "TURNSTILE_TOKEN",
    ] {
        cmd.env_remove(k);
    }
    let mut proc = Proc::spawn(cmd);
    let sidecar: SocketAddr = proc.sidecar_addr(LIMIT);
    proc.wait_started(1, LIMIT);
    let post = |event: &str, trace: &str, parent: &str| {
        let tp = format!("00-{trace}-{parent}-01");
        let r = post_json(
            sidecar,
            "/machines/sleeper/events",
            &[("traceparent", &tp)],
            &json!({ "type": event }),
        );
        assert_eq!(r.status, 202, "{}", r.text());
    };
    let go_trace = "11111111111111111111111111111111";
    let bogus_trace = "22222222222222222222222222222222";
    post("go", go_trace, "1111111111111111");
    thread::sleep(Duration::from_millis(300));
    post("bogus", bogus_trace, "2222222222222222");
    // `go` ends when `wake_up` is processed (after the 1 s sleep).
    proc.wait_for("wake_up", LIMIT, |j| field(j, "event") == "wake_up");
    receiver.wait_for(LIMIT, |s| s.iter().any(|s| s.name == "sleeper go"));
    thread::sleep(Duration::from_millis(1500));
    let spans = receiver.spans();
    let go: Vec<&RecvSpan> = spans.iter().filter(|s| s.name == "sleeper go").collect();
    assert_eq!(go.len(), 1, "{go:#?}");
    assert_eq!(go[0].trace_id, go_trace);
    assert_eq!(go[0].parent_span_id, "1111111111111111");
    assert_eq!(
        go[0].attr("turnstile.outcome"),
        Some("transitioned"),
        "{:#?}",
        go[0]
    );
    assert_eq!(go[0].attr("turnstile.state.to"), Some("working"));
    let bogus: Vec<&RecvSpan> = spans.iter().filter(|s| s.name == "sleeper bogus").collect();
    assert_eq!(bogus.len(), 1, "one span for the ignored event: {bogus:#?}");
    assert_eq!(bogus[0].trace_id, bogus_trace);
    assert_eq!(bogus[0].attr("turnstile.outcome"), Some("ignored"));
    let recs = get_json(sidecar, "/trace?machine=sleeper");
    let go_rec = recs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["event"] == "go")
        .unwrap_or_else(|| panic!("{recs}"));
    assert_eq!(go_rec["data"]["trace_id"], go_trace, "{go_rec}");
    assert_eq!(go_rec["data"]["actions"][0]["type"], "sleep", "{go_rec}");
    proc.signal("TERM");
    let (status, _) = proc.finish(LIMIT);
    assert_eq!(status.code(), Some(0), "{}", proc.log());
}

/// Prometheus with `--enable-feature=native-histograms` asks for protobuf first: the
/// duration histograms arrive as native histograms (one series each, no `_bucket`), with
/// the exemplars of their spans, and `histogram_quantile` reads them. The text exposition
/// still has the classic buckets.
#[test]
fn prometheus_in_native_histogram_mode_reads_quantiles_from_the_native_series() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let (mut turnstile, sidecar) = start_turnstile(dir.path(), &receiver);
    let since = unix_now();
    let prom = Prometheus::start_native(sidecar);
    start_traced_round(sidecar);
    let up = r#"up{job="turnstile"}"#;
    eventually_or(
        "up = 1 in Prometheus",
        || (prom.scalar(up)? == 1.0).then_some(()),
        || {
            format!(
                "targets: {}\nlog:\n{}",
                prom.api("/api/v1/targets"),
                prom.log_text()
            )
        },
    );
    // The worker's `task` takes its 0.1 s sleep; its three other events take a few
    // milliseconds at most. So the 0.9 quantile of its event time is in the native bucket
    // of 0.1 s, (2^(-27/8), 2^(-26/8)] = (0.0971, 0.1051] (or the next one up on a busy
    // machine).
    let p90 = r#"histogram_quantile(0.9, rate(turnstile_event_duration_seconds{job="turnstile",machine="worker"}[1m]))"#;
    let v = eventually_or(
        "a 0.9 quantile of the native series",
        || prom.scalar(p90).filter(|v| v.is_finite()),
        || format!("{p90}: {:?}\nlog:\n{}", prom.scalar(p90), prom.log_text()),
    );
    assert!((0.09..0.12).contains(&v), "{p90} = {v}");
    // Summed over the machines, as the dashboards do.
    let sum = r#"histogram_quantile(0.9, sum(rate(turnstile_action_duration_seconds{job="turnstile"}[1m])))"#;
    eventually_or(
        "a quantile of the summed native action series",
        || prom.scalar(sum).filter(|v| v.is_finite() && *v > 0.0),
        || format!("{sum}: {:?}", prom.scalar(sum)),
    );
    let count =
        r#"sum(histogram_count(rate(turnstile_state_duration_seconds{job="turnstile"}[1m])))"#;
    eventually_or(
        "the native state durations counted",
        || prom.scalar(count).filter(|v| *v > 0.0),
        || format!("{count}: {:?}", prom.scalar(count)),
    );
    // Native only: the scrape was protobuf, Prometheus made no classic series of them.
    for classic in [
        "turnstile_event_duration_seconds_bucket",
        "turnstile_state_duration_seconds_count",
    ] {
        let q = format!(r#"count({classic}{{job="turnstile"}})"#);
        assert_eq!(prom.scalar(&q), None, "{q}");
    }
    // The other families came in the same protobuf scrape.
    let total = r#"sum(turnstile_transitions_total{job="turnstile"})"#;
    assert!(prom.scalar(total).is_some_and(|v| v > 0.0), "{total}");
    // Exemplars of the native series name spans the receiver got.
    let target = format!(
        "/api/v1/query_exemplars?query={}&start={:.3}&end={:.3}",
        enc(r#"turnstile_event_duration_seconds{job="turnstile"}"#),
        since - 60.0,
        unix_now() + 60.0
    );
    let trace_ids: Vec<String> = eventually_or(
        "exemplars of the native event durations",
        || {
            let ids: Vec<String> = prom
                .api(&target)
                .as_array()?
                .iter()
                .flat_map(|s| s["exemplars"].as_array().cloned().unwrap_or_default())
                .filter_map(|e| e["labels"]["trace_id"].as_str().map(str::to_owned))
                .collect();
            (!ids.is_empty()).then_some(ids)
        },
        || format!("{}", prom.api(&target)),
    );
    receiver.wait_for(LIMIT, |spans| {
        spans.iter().any(|s| trace_ids.contains(&s.trace_id))
    });

    // The text exposition keeps the classic buckets; protobuf is served when asked for.
    let text = request(sidecar, "GET", "/metrics", &[("Accept", "text/plain")], b"");
    assert!(
        text.text()
            .contains("turnstile_event_duration_seconds_bucket{"),
        "{}",
        text.text()
    );
    let accept = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";
    let pb = request(sidecar, "GET", "/metrics", &[("Accept", accept)], b"");
    assert_eq!(pb.status, 200);
    assert_eq!(
        pb.header("content-type"),
        Some("application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited")
    );
    assert!(!pb.body.is_empty() && !pb.text().contains("# TYPE"));
    turnstile.signal("TERM");
    let (status, _) = turnstile.finish(LIMIT);
    assert_eq!(status.code(), Some(0), "{}", turnstile.log());
}

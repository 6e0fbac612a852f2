//! The telemetry observer in-process: metrics (checked by Debian's `promtool`), spans
//! (received by an OTLP receiver built from the official protobuf definitions), exemplars
//! linking the two, and the `/trace` and `/errors` records.

#![allow(clippy::unwrap_used)]

mod kit;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use kit::config::def;
use kit::engine_wait::wait_for_state;
use kit::otlp::Receiver;
use turnstile_engine::{ActionRegistry, Engine, Event, MetricsDetail, TraceContext};
use turnstile_exporter::telemetry::spans::SpanSettings;
use turnstile_exporter::telemetry::{Telemetry, TelemetryConfig};

const WAIT: Duration = Duration::from_secs(15);

const CONTROLLER: &str = r#"
metadata: {machine_name: controller}
initial_state: idle
transitions:
  - {from: idle, to: dispatching, event: start}
  - {from: dispatching, to: waiting, event: event_sent}
  - {from: waiting, to: done, event: task_completed}
actions:
  dispatching:
    - type: send_event
      target_machine: worker
      event_type: task
      payload: {n: 1}
final_states: [done]
"#;

const WORKER: &str = r#"
metadata: {machine_name: worker}
initial_state: idle
transitions:
  - {from: idle, to: working, event: task}
  - {from: working, to: failing, event: job_done}
  - {from: failing, to: reporting, event: error}
  - {from: reporting, to: finished, event: event_sent}
actions:
  working:
    - {type: bash, command: "echo working on {payload.n}"}
  failing:
    - {type: bash, command: "echo broken >&2; exit 3"}
  reporting:
    - {type: send_event, target_machine: controller, event_type: task_completed}
final_states: [finished]
"#;

fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (.ci/install.sh installs Debian's prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {report}"
    );
}

/// Every family and label of `text` is in the catalogue (which docs/metrics.md is
/// checked against).
fn assert_catalogued(text: &str) {
    let problems = turnstile_exporter::telemetry::catalogue::uncatalogued(text);
    assert!(problems.is_empty(), "not in the catalogue: {problems:#?}");
}

fn series<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_the_design_table_and_pass_promtool() {
    // Every detail level, for the per-rule, per-state and per-action series.
    let telemetry = Telemetry::new(TelemetryConfig {
        metrics_detail: MetricsDetail::ALL,
        ..TelemetryConfig::default()
    })
    .unwrap();
    let engine = telemetry.install(Engine::builder(), &ActionRegistry::with_builtins());
    telemetry.set_plugins(&[("greet".into(), "1.2.3".into())]);
    engine
        .spawn_all(vec![def(CONTROLLER), def(WORKER)])
        .unwrap();
    engine
        .send("controller", Event::new("start"))
        .await
        .unwrap();
    engine.send("worker", Event::new("nonsense")).await.unwrap();
    tokio::time::timeout(WAIT, engine.join())
        .await
        .expect("both stop");

    let text = telemetry.render_metrics(false);
    promtool_check(&text);
    assert_catalogued(&text);
    assert_catalogued(&telemetry.render_metrics(true));
    for name in [
        "turnstile_build_info",
        "turnstile_transitions_total",
        "turnstile_events_total",
        "turnstile_event_duration_seconds_bucket",
        "turnstile_action_duration_seconds_bucket",
        "turnstile_errors_total",
        "turnstile_machine_state",
        "turnstile_state_duration_seconds_bucket",
        "turnstile_event_queue_depth",
        "turnstile_state_entered_timestamp_seconds",
        "turnstile_config_reloads_total",
        "turnstile_plugin_info",
        "turnstile_spans_dropped_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(!series(&text, name).is_empty(), "no {name} in\n{text}");
    }
    // `turnstile_jobs` has series once a job store reports; an empty family is not shown.
    let has = |line: &str| {
        assert!(
            text.lines().any(|l| l == line),
            "missing line `{line}` in\n{text}"
        )
    };
    has(r#"turnstile_transitions_total{machine="worker",from="idle",to="working",event="task"} 1"#);
    has(
        r#"turnstile_transitions_total{machine="worker",from="failing",to="reporting",event="error"} 1"#,
    );
    has(
        r#"turnstile_transitions_total{machine="controller",from="waiting",to="done",event="task_completed"} 1"#,
    );
    // Rules never taken are there from the start, at 0.
    has(r#"turnstile_machine_state{machine="worker",state="finished"} 1"#);
    has(r#"turnstile_machine_state{machine="worker",state="idle"} 0"#);
    has(r#"turnstile_events_total{machine="worker",event="_other",outcome="ignored"} 1"#);
    has(r#"turnstile_errors_total{machine="worker",kind="action"} 1"#);
    has(
        r#"turnstile_action_duration_seconds_count{machine="worker",action="bash",outcome="error"} 1"#,
    );
    has(
        r#"turnstile_action_duration_seconds_count{machine="worker",action="bash",outcome="ok"} 1"#,
    );
    has(r#"turnstile_plugin_info{plugin="greet",version="1.2.3"} 1"#);
    has(r#"turnstile_config_reloads_total{result="failure"} 0"#);
    has(&format!(
        r#"turnstile_build_info{{version="{}"}} 1"#,
        env!("CARGO_PKG_VERSION")
    ));
    // A label for every event the config knows: bounded, never the raw unknown name.
    assert!(!text.contains("nonsense"), "{text}");

    // OpenMetrics: the same families, with `# EOF`; no spans, so no exemplars.
    let om = telemetry.render_metrics(true);
    assert!(om.trim_end().ends_with("# EOF"));
    assert!(om.contains("# TYPE turnstile_transitions counter"));
    assert!(!om.contains(" # {"), "exemplars without spans:\n{om}");

    // Records.
    let traces = telemetry.traces(100, Some("worker"), None);
    // `nonsense` races with `task` (two senders), so it is checked on its own.
    let (ignored, traces): (Vec<_>, Vec<_>) =
        traces.into_iter().partition(|t| t["event"] == "nonsense");
    assert_eq!(ignored.len(), 1);
    assert_eq!(ignored[0]["data"]["outcome"], "ignored");
    let names: Vec<&str> = traces
        .iter()
        .map(|t| t["event"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["event_sent", "error", "job_done", "task"]);
    let failing = &traces[1];
    assert_eq!(failing["data"]["from"], "failing");
    assert_eq!(failing["data"]["to"], "reporting");
    let job_done = &traces[2];
    let actions = job_done["data"]["actions"].as_array().unwrap();
    assert_eq!(actions[0]["type"], "bash");
    assert_eq!(actions[0]["outcome"], "error");
    assert!(actions[0]["error"].as_str().unwrap().contains("broken"));
    let errors = telemetry.errors(10, None, None);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].error_type, "action");
    assert_eq!(errors[0].machine.as_deref(), Some("worker"));
    assert_eq!(errors[0].state.as_deref(), Some("failing"));
    let stats = telemetry.stats(None);
    // controller: start, event_sent, task_completed; worker: task, job_done, error,
    // event_sent, nonsense.
    assert_eq!(stats["processed_events"], 8);
    assert_eq!(stats["active_workers"], 0);
    assert!(stats["average_processing_time_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(stats["machines"]["worker"]["state"], "finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_follow_one_trace_across_machines_with_parents_attributes_and_errors() {
    let receiver = Receiver::start();
    let telemetry = Telemetry::new(TelemetryConfig {
        spans: Some(SpanSettings {
            endpoint: Some(receiver.endpoint()),
            scheduled_delay: Duration::from_millis(100),
            ..SpanSettings::default()
        }),
        ..TelemetryConfig::default()
    })
    .unwrap();
    let engine = telemetry.install(Engine::builder(), &ActionRegistry::with_builtins());
    engine
        .spawn_all(vec![def(CONTROLLER), def(WORKER)])
        .unwrap();
    let incoming =
        TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
    engine
        .send(
            "controller",
            Event::new("start")
                .with_traceparent(incoming)
                .with_job_id("job-7"),
        )
        .await
        .unwrap();
    tokio::time::timeout(WAIT, engine.join())
        .await
        .expect("both stop");
    let om = telemetry.render_metrics(true);
    let t2 = telemetry.clone();
    tokio::task::spawn_blocking(move || t2.shutdown())
        .await
        .unwrap();

    let spans = receiver.wait_for(WAIT, |s| {
        s.iter().filter(|s| !s.name.starts_with("action")).count() >= 7
    });
    let by_name = |n: &str| {
        spans
            .iter()
            .find(|s| s.name == n)
            .unwrap_or_else(|| panic!("no span {n}: {spans:#?}"))
    };
    // One trace: the incoming one, through controller -> worker -> controller.
    for s in &spans {
        assert_eq!(s.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "{s:#?}");
    }
    let start = by_name("controller start");
    assert_eq!(start.parent_span_id, "00f067aa0ba902b7");
    assert_eq!(start.attr("turnstile.machine"), Some("controller"));
    assert_eq!(start.attr("turnstile.event"), Some("start"));
    assert_eq!(start.attr("turnstile.state.from"), Some("idle"));
    assert_eq!(start.attr("turnstile.state.to"), Some("dispatching"));
    assert_eq!(start.attr("turnstile.outcome"), Some("transitioned"));
    assert_eq!(start.attr("turnstile.job.id"), Some("job-7"));
    // The send_event action is a child of the event span, and the worker's event is a
    // child of that action.
    let send = spans
        .iter()
        .find(|s| s.name == "action send_event" && s.parent_span_id == start.span_id)
        .expect("send_event action span under `controller start`");
    assert_eq!(send.attr("turnstile.action.type"), Some("send_event"));
    let task = by_name("worker task");
    assert_eq!(task.parent_span_id, send.span_id);
    // An event returned by an action is a child of the event that ran the action.
    let sent = by_name("controller event_sent");
    assert_eq!(sent.parent_span_id, start.span_id);
    // The failing command: error status, error.type and an exception event.
    let job_done = by_name("worker job_done");
    let bash = spans
        .iter()
        .find(|s| s.name == "action bash" && s.parent_span_id == job_done.span_id)
        .expect("bash span under job_done");
    assert_eq!(bash.status, "STATUS_CODE_ERROR");
    assert_eq!(bash.attr("error.type"), Some("error"));
    let (ev, attrs) = &bash.events[0];
    assert_eq!(ev, "exception");
    assert!(attrs
        .iter()
        .any(|(k, v)| k == "exception.message" && v.contains("broken")));
    assert_eq!(job_done.status, "STATUS_CODE_ERROR");
    assert_eq!(job_done.attr("error.type"), Some("action"));
    // Back in the controller, still the same trace.
    let done = by_name("controller task_completed");
    assert_eq!(done.attr("turnstile.state.to"), Some("done"));
    // Resource.
    assert!(start
        .resource
        .iter()
        .any(|(k, v)| k == "service.name" && v == "turnstile"));
    assert!(start
        .resource
        .iter()
        .any(|(k, _)| k == "service.instance.id"));
    // Exemplars in OpenMetrics point at received spans.
    let exemplar_ids: Vec<&str> = om
        .lines()
        .filter(|l| l.starts_with("turnstile_event_duration_seconds_bucket"))
        .filter_map(|l| l.split("trace_id=\"").nth(1))
        .map(|rest| &rest[..32])
        .collect();
    assert!(!exemplar_ids.is_empty(), "no exemplars in\n{om}");
    for id in exemplar_ids {
        assert!(
            spans.iter().any(|s| s.trace_id == id),
            "exemplar {id} has no span"
        );
    }
    // `/trace` shows the span ids.
    let traces = telemetry.traces(
        100,
        Some("worker"),
        Some("4bf92f3577b34da6a3ce929d0e0e4736"),
    );
    assert!(!traces.is_empty());
    assert_eq!(
        traces.last().unwrap()["data"]["span_id"],
        task.span_id.as_str()
    );
}

const PING_PONG: &str = r#"
metadata: {machine_name: pp}
initial_state: ping
transitions:
  - {from: ping, to: pong, event: go}
  - {from: pong, to: ping, event: go}
  - {from: ping, to: busy, event: work}
  - {from: busy, to: ping, event: go}
actions:
  busy:
    - {type: log, message: busy}
"#;

/// Runs `events` through the ping-pong machine; returns the telemetry and its engine.
async fn ping_pong(config: TelemetryConfig, events: &[&str]) -> (Arc<Telemetry>, Engine) {
    let telemetry = Telemetry::new(config).unwrap();
    let engine = telemetry.install(Engine::builder(), &ActionRegistry::with_builtins());
    engine.spawn(def(PING_PONG)).unwrap();
    send_all(&engine, events).await;
    (telemetry, engine)
}

async fn send_all(engine: &Engine, events: &[&str]) {
    let before = engine.machine("pp").unwrap().events;
    for e in events {
        engine.send("pp", Event::new(*e)).await.unwrap();
    }
    let n = before + events.len() as u64;
    tokio::time::timeout(WAIT, async {
        while engine.machine("pp").unwrap().events < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("every event processed");
}

/// The lines of the series metrics only and metrics with records must agree on (not the
/// duration buckets and sums: those are timings).
fn counts(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| {
            l.starts_with("turnstile_transitions_total{")
                || l.starts_with("turnstile_events_total{")
                || l.contains("_duration_seconds_count{")
        })
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// Metrics only (the runtime hands action-less events straight to the machine's slot)
/// counts what the full observer counts, keeps counting across a reload, and feeds
/// `/stats` (every event timed, every detail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_only_counts_what_the_full_observer_counts() {
    let mut events = vec!["go"; 10];
    events.extend(["work", "nonsense", "go", "go"]);
    let all = TelemetryConfig {
        metrics_detail: MetricsDetail::ALL,
        ..TelemetryConfig::default()
    };
    let only = TelemetryConfig {
        trace_buffer: 0,
        timing_sample: 1,
        ..all.clone()
    };
    let (quick, quick_engine) = ping_pong(only, &events).await;
    let (full, full_engine) = ping_pong(all, &events).await;
    let text = quick.render_metrics(false);
    assert_eq!(counts(&text), counts(&full.render_metrics(false)));
    let has = |text: &str, line: &str| {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    };
    has(
        &text,
        r#"turnstile_transitions_total{machine="pp",from="ping",to="pong",event="go"} 6"#,
    );
    has(
        &text,
        r#"turnstile_state_duration_seconds_count{machine="pp",state="ping"} 7"#,
    );
    has(
        &text,
        r#"turnstile_event_duration_seconds_count{machine="pp"} 13"#,
    );
    assert_eq!(quick.stats(None)["processed_events"], 14);
    assert_eq!(full.stats(None)["processed_events"], 14);

    // A reload that renumbers the states: the same series go on counting.
    let renumbered = PING_PONG.replace(
        "initial_state: ping",
        "initial_state: ping\nstates: [idle, busy, pong, ping]",
    );
    quick_engine.reload(def(&renumbered)).await.unwrap();
    send_all(&quick_engine, &["go", "go"]).await;
    let text = quick.render_metrics(false);
    has(
        &text,
        r#"turnstile_transitions_total{machine="pp",from="ping",to="pong",event="go"} 7"#,
    );
    has(
        &text,
        r#"turnstile_transitions_total{machine="pp",from="pong",to="ping",event="go"} 6"#,
    );
    has(
        &text,
        r#"turnstile_event_duration_seconds_count{machine="pp"} 15"#,
    );
    assert_eq!(quick.stats(None)["processed_events"], 16);
    for engine in [quick_engine, full_engine] {
        engine.shutdown();
        engine.join().await;
    }
}

/// Metrics only with sampled durations (the default): counts are exact at every level
/// (the engine's own at the default level, every event reported with the `transitions`
/// detail), one action-less event in N is timed, and events with actions always are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_durations_keep_exact_counts() {
    let mut events = vec!["go"; 12];
    events.extend(["work", "go"]);
    for detail in [MetricsDetail::NONE, MetricsDetail::ALL] {
        let config = TelemetryConfig {
            trace_buffer: 0,
            timing_sample: 4,
            metrics_detail: detail,
            ..TelemetryConfig::default()
        };
        let (t, engine) = ping_pong(config, &events).await;
        let text = t.render_metrics(false);
        let has = |line: &str| {
            assert!(
                text.lines().any(|l| l == line),
                "no `{line}` in
{text}"
            );
        };
        if detail.transitions {
            has(r#"turnstile_transitions_total{machine="pp",from="ping",to="pong",event="go"} 6"#);
            has(r#"turnstile_events_total{machine="pp",event="go",outcome="transitioned"} 13"#);
        } else {
            has(r#"turnstile_transitions_total{machine="pp"} 14"#);
            has(r#"turnstile_events_total{machine="pp",outcome="transitioned"} 14"#);
        }
        // 12 action-less `go`: 1, 5, 9 timed; `work` (actions) timed; the `go` leaving
        // `busy` is action-less again and the count goes on (13: timed).
        has(r#"turnstile_event_duration_seconds_count{machine="pp"} 5"#);
        assert_eq!(t.stats(None)["processed_events"], 14);
        assert!(
            t.stats(None)["average_processing_time_ms"]
                .as_f64()
                .unwrap()
                > 0.0
        );
        engine.shutdown();
        engine.join().await;
    }
}

/// A failing `bash` command whose placeholders carry a secret: messages (`last_error`,
/// `/errors`, `/trace`) and `last_error_command` show the command as written; the value is
/// only in the context's `last_error_values`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_records_show_the_command_as_written_not_its_values() {
    const SECRET: &str = "s3cr3t-T0KEN-4242";
    let telemetry = Telemetry::new(TelemetryConfig::default()).unwrap();
    let engine = telemetry.install(Engine::builder(), &ActionRegistry::with_builtins());
    let command = "test -z {payload.token} || exit 3";
    engine
        .spawn(def(&format!(
            r#"
metadata: {{machine_name: leaky}}
initial_state: idle
transitions:
  - {{from: idle, to: run, event: go}}
  - {{from: run, to: failed, event: error}}
actions:
  run:
    - {{type: bash, command: "{command}"}}
final_states: [failed]
"#
        )))
        .unwrap();
    engine
        .send(
            "leaky",
            Event::new("go").with_payload(serde_json::json!({ "token": SECRET })),
        )
        .await
        .unwrap();
    wait_for_state(&engine, "leaky", "failed", WAIT).await;
    let snap = engine.snapshot("leaky").await.expect("a snapshot");
    let last_error = snap.context["last_error"].as_str().unwrap();
    assert!(last_error.contains("exit 3"), "{last_error}");
    assert!(last_error.contains(command), "{last_error}");
    assert!(!last_error.contains(SECRET), "{last_error}");
    assert_eq!(snap.context["last_error_command"], command);
    assert_eq!(
        snap.context["last_error_values"],
        serde_json::json!({ "{payload.token}": SECRET })
    );
    let errors = telemetry.errors(10, None, None);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let shown = serde_json::to_string(&errors).unwrap();
    assert!(
        shown.contains("exit 3") && !shown.contains(SECRET),
        "{shown}"
    );
    let traces = serde_json::to_string(&telemetry.traces(10, Some("leaky"), None)).unwrap();
    assert!(
        traces.contains("exit 3") && !traces.contains(SECRET),
        "{traces}"
    );
    engine.shutdown();
    engine.join().await;
}

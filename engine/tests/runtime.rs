//! Runtime semantics, end to end through the public API: real configs, real machines.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use turnstile_engine::observe::{
    ActionOutcome, ErrorKind, EventOutcome, EventReport, MachineRef, Observer, QuickObserver,
    QuickTiming, StopReason, TransitionReport,
};
use turnstile_engine::{Engine, Event, SendError, TraceContext};

mod support;

use support::machine::def;
use support::recorder::Recorder;
use support::wait::{wait_for_state, wait_transitions};

const WAIT: Duration = Duration::from_secs(10);

fn engine_with(rec: &Arc<Recorder>) -> Engine {
    Engine::builder().observer(rec.clone()).build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transition_actions_run_before_entry_actions_and_in_order() {
    let rec = Arc::new(Recorder::default());
    let engine = engine_with(&rec);
    engine
        .spawn(def(r#"
metadata: {machine_name: m}
initial_state: a
transitions:
  - from: a
    to: b
    event: go
    actions:
      - {type: set_context, key: t1, value: 1}
      - {type: set_context, key: t2, value: 2}
  - {from: b, to: done, event: finish}
actions:
  b:
    - {type: set_context, key: e1, value: 3}
    - {type: log, message: "entered b"}
final_states: [done]
"#))
        .unwrap();
    engine.send("m", Event::new("go")).await.unwrap();
    wait_for_state(&engine, "m", "b", WAIT).await;
    engine.send("m", Event::new("finish")).await.unwrap();
    engine.join().await;
    let actions = rec.matching("action m");
    assert_eq!(
        actions,
        [
            "action m b set_context#0",
            "action m b set_context#1",
            "action m b set_context#2",
            "action m b log#3",
        ]
    );
    let st = engine.machine("m").unwrap();
    assert!(!st.running);
    assert_eq!(st.stop_reason, Some(StopReason::FinalState));
    assert_eq!(&*st.state, "done");
    assert_eq!(st.transitions, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_change_skips_the_rest_and_an_ignored_event_does_not() {
    let rec = Arc::new(Recorder::default());
    let engine = engine_with(&rec);
    engine
        .spawn(def(r#"
metadata: {machine_name: m}
initial_state: a
transitions:
  - {from: a, to: b, event: go}
  - {from: b, to: c, event: next}
actions:
  a:
    - {type: set_context, key: first, value: done, success: nobody_listens}
    - {type: set_context, key: second, value: done, success: go}
    - {type: set_context, key: skipped, value: done}
  b:
    - {type: set_context, key: in_b, value: done, success: next}
    - {type: set_context, key: skipped_b, value: done}
"#))
        .unwrap();
    wait_for_state(&engine, "m", "c", WAIT).await;
    let snap = engine.snapshot("m").await.unwrap();
    assert_eq!(&*snap.state, "c");
    assert_eq!(snap.context.get("first"), Some(&json!("done")));
    assert_eq!(snap.context.get("second"), Some(&json!("done")));
    assert_eq!(snap.context.get("in_b"), Some(&json!("done")));
    assert!(!snap.context.contains_key("skipped"), "{snap:?}");
    assert!(!snap.context.contains_key("skipped_b"), "{snap:?}");
    // The ignored event is reported as such, nested in the running event.
    assert!(rec
        .lines()
        .contains(&"finished m nobody_listens ignored a->a".to_string()));
    engine.shutdown();
    engine.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn star_rules_apply_everywhere_but_the_first_matching_rule_wins() {
    let engine = Engine::builder().build();
    engine
        .spawn(def(r#"
metadata: {machine_name: m}
initial_state: a
states: [a, b, special, stopped]
transitions:
  - {from: a, to: b, event: go}
  - {from: b, to: special, event: stop}
  - {from: "*", to: stopped, event: stop}
  - {from: special, to: a, event: back}
final_states: [stopped]
"#))
        .unwrap();
    engine.send("m", Event::new("go")).await.unwrap();
    engine.send("m", Event::new("stop")).await.unwrap();
    wait_for_state(&engine, "m", "special", WAIT).await;
    engine.send("m", Event::new("stop")).await.unwrap();
    wait_for_state(&engine, "m", "stopped", WAIT).await;
    engine.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_fire_after_entering_and_another_transition_cancels_them() {
    let rec = Arc::new(Recorder::default());
    let engine = engine_with(&rec);
    engine
        .spawn(def(r#"
metadata: {machine_name: m}
initial_state: waiting
transitions:
  - {from: waiting, to: timed_out, event: timeout(0.3)}
  - {from: waiting, to: working, event: start}
  - {from: working, to: timed_out, event: timeout(0.3)}
  - {from: working, to: waiting, event: again}
  - {from: timed_out, to: waiting, event: retry}
"#))
        .unwrap();
    let t0 = Instant::now();
    wait_for_state(&engine, "m", "timed_out", WAIT).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    // Back to waiting, then leave it before its timer fires: the timer must not fire.
    engine.send("m", Event::new("retry")).await.unwrap();
    engine.send("m", Event::new("start")).await.unwrap();
    wait_for_state(&engine, "m", "working", WAIT).await;
    // A transition into `waiting` re-arms; keep bouncing faster than the timeout.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        engine.send("m", Event::new("again")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        engine.send("m", Event::new("start")).await.unwrap();
    }
    wait_for_state(&engine, "m", "timed_out", WAIT).await;
    let timeouts: Vec<String> = rec
        .matching("transition m")
        .into_iter()
        .filter(|l| l.ends_with("timeout(0.3)"))
        .collect();
    assert_eq!(
        timeouts,
        [
            "transition m waiting->timed_out on timeout(0.3)",
            "transition m working->timed_out on timeout(0.3)"
        ],
        "{:#?}",
        rec.lines()
    );
    engine.shutdown();
    engine.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interpolation_keeps_types_and_leaves_unknown_placeholders() {
    let engine = Engine::builder().build();
    engine
        .spawn(def(r#"
metadata: {machine_name: m}
initial_state: idle
events:
  job:
    context_map:
      job_id: payload.id
      size: payload.meta.size
transitions:
  - {from: idle, to: copied, event: job}
actions:
  copied:
    - {type: set_context, key: n, value: "{payload.n}"}
    - {type: set_context, key: list, value: "{payload.items}"}
    - {type: set_context, key: text, value: "n={payload.n} and {unknown.thing}"}
    - {type: set_context, key: "dyn_{job_id}", value: "{size}"}
    - {type: set_context, key: length, value: "{payload.items|length}"}
    - {type: set_context, key: whole, value: "{event_data.payload.n}"}
"#))
        .unwrap();
    engine
        .send(
            "m",
            Event::new("job").with_payload(
                json!({"n": 5, "items": [1, "two"], "id": "j7", "meta": {"size": 2.5}}),
            ),
        )
        .await
        .unwrap();
    wait_for_state(&engine, "m", "copied", WAIT).await;
    // The state is entered before its actions finish: read after they ran.
    let mut snap = engine.snapshot("m").await.unwrap();
    for _ in 0..200 {
        if snap.context.contains_key("whole") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        snap = engine.snapshot("m").await.unwrap();
    }
    let c = &snap.context;
    assert!(c.contains_key("whole"), "{c:#?}");
    assert_eq!(c["n"], json!(5));
    assert_eq!(c["list"], json!([1, "two"]));
    assert_eq!(c["text"], json!("n=5 and {unknown.thing}"));
    assert_eq!(c["job_id"], json!("j7"));
    assert_eq!(c["dyn_j7"], json!(2.5));
    assert_eq!(c["length"], json!(2));
    assert_eq!(c["whole"], json!(5));
    engine.shutdown();
    engine.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transition_interrupts_a_waiting_action_and_an_ignored_event_does_not() {
    let rec = Arc::new(Recorder::default());
    let engine = engine_with(&rec);
    engine
        .spawn(def(r#"
metadata: {machine_name: m}
initial_state: napping
transitions:
  - {from: napping, to: awake, event: wake_up}
  - {from: napping, to: poked, event: poke}
  - {from: awake, to: napping, event: nap}
actions:
  napping:
    - {type: sleep, duration: 0.4}
"#))
        .unwrap();
    // Ignored while sleeping: the sleep goes on and ends with `wake_up`.
    engine.send("m", Event::new("nothing")).await.unwrap();
    wait_for_state(&engine, "m", "awake", WAIT).await;
    // A long sleep is cut short by an event that transitions.
    engine.send("m", Event::new("nap")).await.unwrap();
    wait_for_state(&engine, "m", "napping", WAIT).await;
    let t0 = Instant::now();
    engine.send("m", Event::new("poke")).await.unwrap();
    wait_for_state(&engine, "m", "poked", WAIT).await;
    assert!(
        t0.elapsed() < Duration::from_millis(350),
        "{:?}",
        t0.elapsed()
    );
    let done = rec.matching("done m sleep");
    assert_eq!(
        done,
        [
            "done m sleep#0 ok Some(\"wake_up\")",
            "done m sleep#0 interrupted None"
        ]
    );
    engine.shutdown();
    engine.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_livelock_guard_stops_a_state_that_re_enters_itself_for_ever() {
    let rec = Arc::new(Recorder::default());
    let engine = Engine::builder()
        .observer(rec.clone())
        .livelock_limit(1000)
        .build();
    engine
        .spawn(def(r#"
metadata: {machine_name: m}
initial_state: spin
transitions:
  - {from: spin, to: spin, event: again}
  - {from: spin, to: out, event: leave}
actions:
  spin:
    - {type: set_context, key: x, value: 1, success: again}
"#))
        .unwrap();
    let t0 = Instant::now();
    loop {
        if rec
            .lines()
            .iter()
            .any(|l| l.starts_with("error m livelock"))
        {
            break;
        }
        assert!(t0.elapsed() < WAIT, "no livelock error");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The machine is idle, not spinning, and still answers events.
    let before = engine.machine("m").unwrap().transitions;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(engine.machine("m").unwrap().transitions, before);
    engine.send("m", Event::new("leave")).await.unwrap();
    wait_for_state(&engine, "m", "out", WAIT).await;
    assert_eq!(engine.machine("m").unwrap().errors, 1);
    assert!(rec
        .lines()
        .iter()
        .any(|l| l == "finished m again rejected spin->spin"));
    engine.shutdown();
    engine.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_talk_with_send_event_and_final_states_stop_them() {
    let rec = Arc::new(Recorder::default());
    let engine = engine_with(&rec);
    let controller = def(r#"
metadata: {machine_name: controller}
initial_state: start
context: {job: 42}
transitions:
  - {from: start, to: waiting, event: event_sent}
  - {from: waiting, to: done, event: finished}
actions:
  start:
    - type: send_event
      target_machine: worker
      event_type: work
      payload: {job: "{job}", note: "job {job}"}
final_states: [done]
"#);
    let worker = def(r#"
metadata: {machine_name: worker}
initial_state: idle
transitions:
  - {from: idle, to: working, event: work}
  - {from: working, to: gone, event: event_sent}
actions:
  working:
    - {type: set_context, key: got, value: "{payload.job}"}
    # `target`, as statemachine-engine's README writes it: an alias of `target_machine`.
    - {type: send_event, target: controller, event_type: finished}
"#);
    engine.spawn_all(vec![controller, worker]).unwrap();
    tokio::time::timeout(WAIT, engine.join())
        .await
        .expect("both stop");
    let w = engine.machine("worker").unwrap();
    assert_eq!(w.stop_reason, Some(StopReason::FinalState));
    assert_eq!(&*w.state, "gone");
    let c = engine.machine("controller").unwrap();
    assert_eq!(&*c.state, "done");
    // A stopped machine refuses events.
    assert!(matches!(
        engine.send("worker", Event::new("work")).await,
        Err(SendError::Stopped(_))
    ));
    assert!(matches!(
        engine.send("nobody", Event::new("work")).await,
        Err(SendError::UnknownMachine(_))
    ));
    assert!(rec
        .lines()
        .contains(&"transition worker idle->working on work".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_event_to_an_unknown_machine_is_an_error_event() {
    let rec = Arc::new(Recorder::default());
    let engine = engine_with(&rec);
    engine
        .spawn(def(r#"
metadata: {machine_name: m}
initial_state: a
transitions:
  - {from: a, to: failed, event: error}
actions:
  a:
    - {type: send_event, target_machine: ghost, event_type: hello}
"#))
        .unwrap();
    wait_for_state(&engine, "m", "failed", WAIT).await;
    let errors = rec.matching("error m");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with(&format!("error m {}", ErrorKind::UnknownTarget.as_str())));
    assert!(errors[0].contains("ghost"));
    let snap = engine.snapshot("m").await.unwrap();
    assert_eq!(snap.context["last_error_action"], json!("send_event"));
    engine.shutdown();
    engine.join().await;
}

#[test]
fn a_full_queue_applies_backpressure_and_loses_nothing() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let engine = Engine::builder().queue_capacity(4).build();
        engine
            .spawn(def(r#"
metadata: {machine_name: m}
initial_state: ping
transitions:
  - {from: ping, to: pong, event: go}
  - {from: pong, to: ping, event: go}
"#))
            .unwrap();
        // On a current-thread runtime the machine cannot run until we yield: the queue
        // fills and try_send says so instead of dropping.
        let mut accepted = 0;
        let mut full = 0;
        for _ in 0..10 {
            match engine.try_send("m", Event::new("go")) {
                Ok(()) => accepted += 1,
                Err(SendError::QueueFull(_)) => full += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!((accepted, full), (4, 6));
        assert_eq!(engine.machine("m").unwrap().queue_depth, 4);
        // send() waits for room: every one of these arrives.
        for _ in 0..1000 {
            engine.send("m", Event::new("go")).await.unwrap();
        }
        let t0 = Instant::now();
        while engine.machine("m").unwrap().transitions < 1004 {
            assert!(t0.elapsed() < WAIT);
            tokio::task::yield_now().await;
        }
        assert_eq!(engine.machine("m").unwrap().transitions, 1004);
        engine.shutdown();
        engine.join().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_interrupts_waiting_actions_promptly() {
    let rec = Arc::new(Recorder::default());
    let engine = engine_with(&rec);
    engine
        .spawn(def(r#"
metadata: {machine_name: m}
initial_state: a
transitions:
  - {from: a, to: b, event: wake_up}
  - {from: a, to: b, event: job_done}
actions:
  a:
    - {type: bash, command: "sleep 30", timeout: 60}
"#))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    engine.shutdown();
    tokio::time::timeout(Duration::from_secs(5), engine.join())
        .await
        .expect("stops");
    assert!(t0.elapsed() < Duration::from_secs(2));
    let st = engine.machine("m").unwrap();
    assert_eq!(st.stop_reason, Some(StopReason::Shutdown));
    assert!(rec
        .lines()
        .contains(&"done m bash#0 interrupted None".to_string()));
    assert_eq!(rec.lines().last().unwrap(), "stopped m a Shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bash_maps_exit_codes_captures_output_and_reports_errors() {
    let rec = Arc::new(Recorder::default());
    let engine = engine_with(&rec);
    engine
        .spawn(def(r#"
metadata: {machine_name: m}
initial_state: run
transitions:
  - {from: run, to: missing, event: not_found}
  - {from: missing, to: fails, event: next}
  - {from: fails, to: end, event: error}
actions:
  run:
    - type: bash
      command: "echo out; echo err >&2; exit 3"
      error_mappings: {"3": not_found}
  missing:
    - {type: set_context, key: x, value: 1, success: next}
  fails:
    - {type: bash, command: "exit 7"}
final_states: [end]
"#))
        .unwrap();
    tokio::time::timeout(WAIT, engine.join())
        .await
        .expect("ends");
    assert_eq!(&*engine.machine("m").unwrap().state, "end");
    let done = rec.matching("done m bash");
    assert_eq!(
        done,
        [
            "done m bash#0 error Some(\"not_found\")",
            "done m bash#0 error Some(\"error\")"
        ]
    );
    let errors = rec.matching("error m action");
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].contains("exit 3") && errors[0].contains("err"),
        "{}",
        errors[0]
    );
    assert_eq!(engine.machine("m").unwrap().errors, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observer_sees_the_whole_life_of_an_event() {
    let rec = Arc::new(Recorder::default());
    let engine = engine_with(&rec);
    engine
        .spawn(def(r#"
metadata: {machine_name: m}
initial_state: a
transitions:
  - {from: a, to: b, event: go}
actions:
  b:
    - {type: log, message: hi}
final_states: [b]
"#))
        .unwrap();
    engine.send("m", Event::new("go")).await.unwrap();
    engine.join().await;
    assert_eq!(
        rec.lines(),
        [
            "started m a",
            "event m go",
            "transition m a->b on go",
            "action m b log#0",
            "done m log#0 ok None",
            "finished m go transitioned a->b",
            "stopped m b FinalState",
        ]
    );
    let _ = EventOutcome::Ignored;
    let _ = ActionOutcome::Ok;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_without_final_states_stop_where_only_star_rules_lead_out() {
    // Like statemachine-engine's examples: `completed` is left only by `from: "*"`, so it
    // is final; `waiting` -> `completed` -> (continue_work) shows a named state is not.
    let engine = Engine::builder().build();
    engine
        .spawn(def(r#"
metadata: {machine_name: m}
initial_state: waiting
transitions:
  - {from: waiting, to: completed, event: done}
  - {from: completed, to: waiting, event: continue_work}
  - {from: "*", to: stopped, event: stop}
actions:
  completed:
    - {type: set_context, key: x, value: 1, success: continue_work}
"#))
        .unwrap();
    engine.send("m", Event::new("done")).await.unwrap();
    engine.send("m", Event::new("done")).await.unwrap();
    engine.send("m", Event::new("stop")).await.unwrap();
    tokio::time::timeout(WAIT, engine.join())
        .await
        .expect("stops");
    let st = engine.machine("m").unwrap();
    assert_eq!(&*st.state, "stopped");
    assert_eq!(st.stop_reason, Some(StopReason::FinalState));
    assert_eq!(st.transitions, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_follows_events_across_machines_and_chains() {
    // With no observer opening spans, an incoming traceparent is passed on as is: to the
    // events actions return and to events sent to other machines.
    let tp =
        TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
    #[derive(Default)]
    struct Seen(Mutex<Vec<(String, Option<TraceContext>)>>);
    impl Observer for Seen {
        fn event_started(&self, m: MachineRef<'_>, e: &Event, _: usize) -> Option<TraceContext> {
            self.0
                .lock()
                .unwrap()
                .push((format!("{} {}", m.name, e.name), e.traceparent));
            None
        }
    }
    let seen = Arc::new(Seen::default());
    let engine = Engine::builder().observer(seen.clone()).build();
    let a = def(r#"
metadata: {machine_name: a}
initial_state: idle
transitions:
  - {from: idle, to: busy, event: go}
  - {from: busy, to: sent, event: event_sent}
actions:
  busy:
    - {type: send_event, target_machine: b, event_type: hello}
"#);
    let b = def(r#"
metadata: {machine_name: b}
initial_state: idle
transitions:
  - {from: idle, to: greeted, event: hello}
"#);
    engine.spawn_all(vec![a, b]).unwrap();
    engine
        .send("a", Event::new("go").with_traceparent(tp))
        .await
        .unwrap();
    tokio::time::timeout(WAIT, engine.join())
        .await
        .expect("both stop");
    // Machines run concurrently: compare without their interleaving.
    let mut seen = seen.0.lock().unwrap().clone();
    seen.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        seen,
        [
            ("a event_sent".to_string(), Some(tp)),
            ("a go".to_string(), Some(tp)),
            ("b hello".to_string(), Some(tp)),
        ]
    );
}

/// One quick call: (which receiver, from, to, event_id, time_in_from_ns, duration_ns).
type QuickCall = (usize, usize, usize, usize, u64, u64);

/// What an observer with a [`QuickObserver`] was told.
#[derive(Default)]
struct QuickLog {
    /// Quick calls.
    calls: Mutex<Vec<QuickCall>>,
    /// Calls of the observer's own transition methods.
    reports: Mutex<Vec<String>>,
    /// Receivers handed out.
    asked: AtomicUsize,
    /// What the receivers answer to `timing` (the default when `None`).
    timing: Option<QuickTiming>,
    /// Untimed quick calls: (from, to, event_id).
    untimed: Mutex<Vec<(usize, usize, usize)>>,
}

struct QuickSink {
    log: Arc<QuickLog>,
    receiver: usize,
}

impl QuickObserver for QuickSink {
    fn transition_finished(&self, from: usize, to: usize, event_id: usize, t: u64, d: u64) {
        let call = (self.receiver, from, to, event_id, t, d);
        self.log.calls.lock().unwrap().push(call);
    }
    fn timing(&self) -> QuickTiming {
        self.log.timing.clone().unwrap_or_default()
    }
    fn transition_untimed(&self, from: usize, to: usize, event_id: usize) {
        self.log.untimed.lock().unwrap().push((from, to, event_id));
    }
}

struct WithQuick(Arc<QuickLog>);

impl Observer for WithQuick {
    fn observes_starts(&self) -> bool {
        false
    }
    fn quick_observer(&self, _m: MachineRef<'_>) -> Option<Box<dyn QuickObserver>> {
        let receiver = self.0.asked.fetch_add(1, Ordering::Relaxed);
        Some(Box::new(QuickSink {
            log: self.0.clone(),
            receiver,
        }))
    }
    fn transition(&self, r: &TransitionReport<'_>) {
        let line = format!("transition {}->{}", r.from.name, r.to.name);
        self.0.reports.lock().unwrap().push(line);
        if r.time_in_from == turnstile_engine::observe::NOT_TIMED {
            let line = format!("not timed in {}", r.from.name);
            self.0.reports.lock().unwrap().push(line);
        }
    }
    fn transition_finished(&self, r: &TransitionReport<'_>, _d: Duration) {
        let line = format!("transition_finished {}", r.event.name);
        self.0.reports.lock().unwrap().push(line);
    }
    fn event_finished(&self, r: &EventReport<'_>) {
        let line = format!("finished {} {}", r.event.name, r.outcome.as_str());
        self.0.reports.lock().unwrap().push(line);
    }
}

/// Action-less events go to the quick observer (by index, in nanoseconds), the others to
/// the observer's own methods. A busy machine times an event from the end of the previous
/// one, but never across a wait: the durations stay the real ones.
#[tokio::test(flavor = "current_thread")]
async fn a_quick_observer_gets_action_less_events_with_real_durations() {
    const PAUSE: Duration = Duration::from_millis(50);
    let log = Arc::new(QuickLog::default());
    let engine = Engine::builder()
        .observer(Arc::new(WithQuick(log.clone())))
        .build();
    let yaml = r#"
metadata: {machine_name: m}
initial_state: a
transitions:
  - {from: a, to: b, event: go}
  - {from: b, to: a, event: back}
  - {from: a, to: c, event: work}
  - {from: c, to: a, event: back}
actions:
  c:
    - {type: log, message: hi}
"#;
    let d = def(yaml);
    let (a, b) = (d.state_index("a").unwrap(), d.state_index("b").unwrap());
    let (go, back) = (d.event_index("go").unwrap(), d.event_index("back").unwrap());
    engine.spawn(d).unwrap();
    engine.send("m", Event::new("go")).await.unwrap();
    wait_transitions(&engine, "m", 1).await;
    tokio::time::sleep(PAUSE).await;
    // Queued together (this task does not yield between them): the machine takes the
    // last three without waiting.
    let t0 = Instant::now();
    for e in ["back", "go", "nothing", "back"] {
        engine.send("m", Event::new(e)).await.unwrap();
    }
    wait_transitions(&engine, "m", 4).await;
    let burst = t0.elapsed();
    let calls = log.calls.lock().unwrap().clone();
    let routes: Vec<_> = calls.iter().map(|c| (c.0, c.1, c.2, c.3)).collect();
    assert_eq!(
        routes,
        [
            (0, a, b, go),
            (0, b, a, back),
            (0, a, b, go),
            (0, b, a, back)
        ]
    );
    // In `b` since the first transition, across the pause: measured from the clock, and
    // the event's own duration does not reach back before the pause.
    assert!(calls[1].4 >= PAUSE.as_nanos() as u64, "{calls:?}");
    assert!(calls[1].5 < PAUSE.as_nanos() as u64, "{calls:?}");
    for c in &calls[2..] {
        assert!(c.4 <= burst.as_nanos() as u64, "{calls:?}");
        assert!(c.5 <= burst.as_nanos() as u64, "{calls:?}");
    }
    // `go` was taken right after `back` ended: its transition is timed at that end, so
    // the time in `a` is the duration of `back`. The ignored event in between breaks
    // that for the last `back`: the time in `b` is longer than the duration of `go`.
    assert_eq!(calls[2].4, calls[1].5, "{calls:?}");
    assert!(calls[3].4 > calls[2].5, "{calls:?}");
    // An event with actions goes through the observer's own methods, and the action-less
    // event that leaves `c` to the quick observer again.
    engine.send("m", Event::new("work")).await.unwrap();
    wait_transitions(&engine, "m", 5).await;
    engine.send("m", Event::new("back")).await.unwrap();
    wait_transitions(&engine, "m", 6).await;
    assert_eq!(
        *log.reports.lock().unwrap(),
        [
            "finished nothing ignored",
            "transition a->c",
            "finished work transitioned"
        ]
    );
    assert_eq!(log.calls.lock().unwrap().len(), 5);
    // A reload hands out a new receiver, with the new definition's indexes.
    let d2 = def(&yaml.replace("initial_state: a", "initial_state: z\nstates: [z, a, b, c]"));
    let (a2, b2) = (d2.state_index("a").unwrap(), d2.state_index("b").unwrap());
    assert_ne!(a2, a);
    let go2 = d2.event_index("go").unwrap();
    engine.reload(d2).await.unwrap();
    engine.send("m", Event::new("go")).await.unwrap();
    wait_transitions(&engine, "m", 7).await;
    assert_eq!(log.asked.load(Ordering::Relaxed), 2);
    let last = *log.calls.lock().unwrap().last().unwrap();
    assert_eq!((last.0, last.1, last.2, last.3), (1, a2, b2, go2));
    assert!(!log
        .reports
        .lock()
        .unwrap()
        .iter()
        .any(|r| r.starts_with("transition_finished")));
    engine.shutdown();
    engine.join().await;
}

/// `QuickTiming::report_untimed_while`: the events not timed are reported only while the
/// count is above zero (a stream followed), read at each event.
#[tokio::test(flavor = "current_thread")]
async fn untimed_events_are_reported_while_a_count_is_above_zero() {
    let followers = Arc::new(AtomicUsize::new(0));
    let log = Arc::new(QuickLog {
        timing: Some(QuickTiming {
            every: 1000,
            report_untimed: false,
            report_untimed_while: Some(followers.clone()),
        }),
        ..QuickLog::default()
    });
    let engine = Engine::builder()
        .observer(Arc::new(WithQuick(log.clone())))
        .build();
    let yaml = r#"
metadata: {machine_name: m}
initial_state: a
transitions:
  - {from: a, to: b, event: go}
  - {from: b, to: a, event: back}
"#;
    let d = def(yaml);
    let (a, b) = (d.state_index("a").unwrap(), d.state_index("b").unwrap());
    let back = d.event_index("back").unwrap();
    engine.spawn(d).unwrap();
    // Event 1 is timed; 2 and 3 are not, with nobody following: not reported.
    for (i, e) in ["go", "back", "go"].iter().enumerate() {
        engine.send("m", Event::new(*e)).await.unwrap();
        wait_transitions(&engine, "m", i as u64 + 1).await;
    }
    assert!(log.untimed.lock().unwrap().is_empty());
    followers.store(1, Ordering::Relaxed);
    engine.send("m", Event::new("back")).await.unwrap();
    wait_transitions(&engine, "m", 4).await;
    followers.store(0, Ordering::Relaxed);
    engine.send("m", Event::new("go")).await.unwrap();
    wait_transitions(&engine, "m", 5).await;
    assert_eq!(*log.untimed.lock().unwrap(), [(b, a, back)]);
    assert_eq!(log.calls.lock().unwrap().len(), 1);
    engine.shutdown();
    engine.join().await;
}

/// With `QuickTiming { every: 3 }` one action-less event in three is timed (its time in
/// the state it leaves is exact: the one before it notes when that state was entered),
/// the others are reported without durations when asked for; a state entered by an
/// untimed event and left by one with actions has no time in it (`NOT_TIMED`).
#[tokio::test(flavor = "current_thread")]
async fn a_quick_observer_may_time_one_event_in_n() {
    let log = Arc::new(QuickLog {
        timing: Some(QuickTiming {
            every: 3,
            report_untimed: true,
            report_untimed_while: None,
        }),
        ..QuickLog::default()
    });
    let engine = Engine::builder()
        .observer(Arc::new(WithQuick(log.clone())))
        .build();
    let yaml = r#"
metadata: {machine_name: m}
initial_state: a
transitions:
  - {from: a, to: b, event: go}
  - {from: b, to: a, event: back}
  - {from: a, to: c, event: work}
  - {from: c, to: a, event: back}
actions:
  c:
    - {type: log, message: hi}
"#;
    let d = def(yaml);
    let (a, b) = (d.state_index("a").unwrap(), d.state_index("b").unwrap());
    let (go, back) = (d.event_index("go").unwrap(), d.event_index("back").unwrap());
    engine.spawn(d).unwrap();
    for (i, e) in ["go", "back", "go", "back", "go", "back", "go"]
        .iter()
        .enumerate()
    {
        engine.send("m", Event::new(*e)).await.unwrap();
        wait_transitions(&engine, "m", i as u64 + 1).await;
    }
    let calls = log.calls.lock().unwrap().clone();
    let timed: Vec<_> = calls.iter().map(|c| (c.1, c.2, c.3)).collect();
    // Events 1, 4 and 7 timed; 2, 3, 5 and 6 not.
    assert_eq!(timed, [(a, b, go), (b, a, back), (a, b, go)]);
    assert!(calls.iter().all(|c| c.4 != u64::MAX), "{calls:?}");
    assert_eq!(
        *log.untimed.lock().unwrap(),
        [(b, a, back), (a, b, go), (a, b, go), (b, a, back)]
    );
    // Event 8 (untimed) enters `a`; `work` leaves it with actions: no time in `a`.
    engine.send("m", Event::new("back")).await.unwrap();
    wait_transitions(&engine, "m", 8).await;
    engine.send("m", Event::new("work")).await.unwrap();
    wait_transitions(&engine, "m", 9).await;
    let reports = log.reports.lock().unwrap().clone();
    assert_eq!(
        reports[..2],
        ["transition a->c", "not timed in a"],
        "{reports:?}"
    );
    assert_eq!(engine.machine("m").unwrap().transitions, 9);
    engine.shutdown();
    engine.join().await;
}

/// `MachineStatus::last_active`: the start, then each event processed and each action
/// finished (stamped when the machine waits again); reading the machine is not activity,
/// nor is waiting in an action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_activity_follows_events_and_finished_actions_not_reads_or_waiting() {
    use std::time::{SystemTime, UNIX_EPOCH};
    let engine = Engine::builder().build();
    engine
        .spawn(def(r#"
metadata: {machine_name: m}
initial_state: a
transitions:
  - {from: a, to: b, event: go}
  - {from: b, to: a, event: back}
actions:
  b:
    - {type: sleep, duration: 0.6}
"#))
        .unwrap();
    let active = || engine.machine("m").unwrap().last_active;
    let until_after = |t: SystemTime, what: &'static str| {
        let active = &active;
        async move {
            let deadline = Instant::now() + WAIT;
            while active() <= t {
                assert!(Instant::now() < deadline, "{what}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            active()
        }
    };
    let started = until_after(UNIX_EPOCH, "the start").await;
    // The coarse clock ticks every few milliseconds: let it move on.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(engine.snapshot("m").await.is_some());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(active(), started, "a read is not activity");

    engine.send("m", Event::new("nothing")).await.unwrap();
    let ignored = until_after(started, "an ignored event").await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    engine.send("m", Event::new("go")).await.unwrap();
    let entered = until_after(ignored, "the transition").await;
    assert_eq!(&*engine.machine("m").unwrap().state, "b");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(active(), entered, "waiting in the sleep is not activity");

    let done = until_after(entered, "the sleep finished").await;
    let waited = done.duration_since(entered).unwrap();
    assert!(waited >= Duration::from_millis(450), "{waited:?}");
}

//! Live operations through the engine's API: pause, step, resume, stop, restart, context
//! patches and breakpoints, on machines driven by events, actions that wait, and timers.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use turnstile_engine::breakpoint::{BreakpointSpec, Condition, On};
use turnstile_engine::observe::StopReason;
use turnstile_engine::runtime::live::{LiveAnswer, LiveError, LiveOp, LiveState};
use turnstile_engine::{Engine, Event};

mod support;

use support::machine::def;
use support::recorder::Recorder;
use support::wait::{eventually, wait_for_state, WAIT};

const WORKER: &str = r#"
metadata: {machine_name: m}
initial_state: idle
context: {x: 1}
transitions:
  - {from: idle, to: working, event: go}
  - {from: working, to: idle, event: wake_up}
  - {from: idle, to: failing, event: fail}
  - {from: failing, to: idle, event: error}
  - {from: idle, to: done, event: finish}
actions:
  working:
    - {type: sleep, duration: 0.3}
  failing:
    - {type: bash, command: "exit 3"}
final_states: [done]
"#;

async fn op(engine: &Engine, o: LiveOp) -> Result<LiveAnswer, LiveError> {
    engine.control("m", o).await
}

async fn done(engine: &Engine, o: LiveOp) -> LiveState {
    match op(engine, o).await.unwrap() {
        LiveAnswer::Done(s) => s,
        other => panic!("{other:?}"),
    }
}

fn started(yaml: &str) -> (Engine, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let engine = Engine::builder().observer(rec.clone()).build();
    engine.spawn(def(yaml)).unwrap();
    (engine, rec)
}

fn bp(on: On, state: Option<&str>, event: Option<&str>, when: Option<&str>) -> LiveOp {
    LiveOp::AddBreakpoint(BreakpointSpec {
        on,
        state: state.map(str::to_owned),
        event: event.map(str::to_owned),
        when: when.map(|w| Condition::parse(w).unwrap()),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_step_patch_breakpoint_resume_and_stop() {
    let (engine, rec) = started(WORKER);
    wait_for_state(&engine, "m", "idle", WAIT).await;
    // Step needs a pause first.
    assert!(matches!(
        op(&engine, LiveOp::Step).await,
        Err(LiveError::Conflict(_))
    ));
    let s = done(&engine, LiveOp::Pause).await;
    assert!(s.paused && &*s.state == "idle", "{s:?}");
    assert!(engine.machine("m").unwrap().paused);
    // Events queue while paused.
    engine.send("m", Event::new("go")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = engine.machine("m").unwrap();
    assert_eq!((&*m.state, m.queue_depth, m.transitions), ("idle", 1, 0));
    // One step: the transition and its entry action, which waits; answered then.
    let s = done(&engine, LiveOp::Step).await;
    assert_eq!(&*s.state, "working");
    assert!(s.action_running && s.paused && s.held.is_none(), "{s:?}");
    // A context patch is refused while the action runs.
    assert!(matches!(
        op(&engine, LiveOp::PatchContext(json!({"x": 5}))).await,
        Err(LiveError::Conflict(_))
    ));
    // The sleep ends; the event it returns is held, not processed.
    eventually("the returned event held", || {
        rec.lines()
            .iter()
            .any(|l| l.starts_with("done m sleep#0 ok"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(&*engine.machine("m").unwrap().state, "working");
    let s = done(&engine, LiveOp::Step).await;
    assert_eq!((&*s.state, s.paused, s.held.clone()), ("idle", true, None));
    // Nothing queued: 409, nothing changes.
    assert!(matches!(
        op(&engine, LiveOp::Step).await,
        Err(LiveError::Conflict(_))
    ));
    // Paused and idle: the context can be patched.
    match op(
        &engine,
        LiveOp::PatchContext(json!({"x": 5, "y": {"z": 1}})),
    )
    .await
    .unwrap()
    {
        LiveAnswer::Context(_, c) => assert_eq!(c["x"], 5),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        op(&engine, LiveOp::PatchContext(json!([1]))).await,
        Err(LiveError::Invalid(_))
    ));
    // A breakpoint on entering `working` when x > 3.
    let LiveAnswer::Breakpoint(b) =
        op(&engine, bp(On::Enter, Some("working"), None, Some("x > 3")))
            .await
            .unwrap()
    else {
        panic!()
    };
    let s = done(&engine, LiveOp::Resume).await;
    assert!(!s.paused);
    assert!(!engine.machine("m").unwrap().paused);
    engine.send("m", Event::new("go")).await.unwrap();
    eventually("the breakpoint hit", || engine.machine("m").unwrap().paused).await;
    assert_eq!(&*engine.machine("m").unwrap().state, "idle");
    let LiveAnswer::Breakpoints(list) = op(&engine, LiveOp::Breakpoints).await.unwrap() else {
        panic!()
    };
    assert_eq!((list.len(), list[0].id, list[0].hits), (1, b.id, 1));
    assert!(rec
        .lines()
        .contains(&"control m breakpoint_hit idle paused=true event=go".to_owned()));
    // Resume: the held event goes on without hitting the breakpoint again.
    done(&engine, LiveOp::Resume).await;
    wait_for_state(&engine, "m", "working", WAIT).await;
    wait_for_state(&engine, "m", "idle", WAIT).await;
    assert!(matches!(
        op(&engine, LiveOp::RemoveBreakpoint(b.id + 7)).await,
        Err(LiveError::NoBreakpoint(..))
    ));
    op(&engine, LiveOp::RemoveBreakpoint(b.id)).await.unwrap();
    // Stop: as if a final state was reached.
    let s = done(&engine, LiveOp::Stop).await;
    assert!(s.stopped);
    engine.join().await;
    let m = engine.machine("m").unwrap();
    assert_eq!(m.stop_reason, Some(StopReason::Requested));
    assert!(matches!(
        op(&engine, LiveOp::Pause).await,
        Err(LiveError::Stopped(_))
    ));
    assert!(matches!(
        engine.control("nope", LiveOp::Pause).await,
        Err(LiveError::UnknownMachine(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_lets_a_waiting_action_finish_and_holds_its_event() {
    let (engine, _rec) = started(WORKER);
    engine.send("m", Event::new("go")).await.unwrap();
    wait_for_state(&engine, "m", "working", WAIT).await;
    let s = done(&engine, LiveOp::Pause).await;
    assert!(s.action_running, "{s:?}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let m = engine.machine("m").unwrap();
    assert_eq!((&*m.state, m.paused), ("working", true));
    let s = done(&engine, LiveOp::Resume).await;
    assert!(!s.paused);
    wait_for_state(&engine, "m", "idle", WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_stop_while_paused_and_resume_with_the_time_left() {
    let (engine, _rec) = started(
        r#"
metadata: {machine_name: m}
initial_state: waiting
transitions:
  - {from: waiting, to: late, event: timeout(1)}
final_states: [late]
"#,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    done(&engine, LiveOp::Pause).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(&*engine.machine("m").unwrap().state, "waiting");
    let resumed = Instant::now();
    done(&engine, LiveOp::Resume).await;
    wait_for_state(&engine, "m", "late", WAIT).await;
    let took = resumed.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1000),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breakpoints_on_events_transitions_and_errors() {
    let (engine, rec) = started(WORKER);
    wait_for_state(&engine, "m", "idle", WAIT).await;
    // An `event` breakpoint for an event no rule takes, and a `transition` one that never
    // matches (its condition is false).
    op(&engine, bp(On::Event, None, Some("nobody"), None))
        .await
        .unwrap();
    op(
        &engine,
        bp(
            On::Transition,
            Some("idle"),
            None,
            Some("missing == 1 || x < 0"),
        ),
    )
    .await
    .unwrap();
    op(&engine, bp(On::Error, Some("failing"), None, None))
        .await
        .unwrap();
    engine.send("m", Event::new("nobody")).await.unwrap();
    eventually("the event breakpoint", || {
        engine.machine("m").unwrap().paused
    })
    .await;
    assert_eq!(engine.machine("m").unwrap().events, 0);
    done(&engine, LiveOp::Resume).await;
    // The error breakpoint: after the error is recorded, before its `error` event.
    engine.send("m", Event::new("fail")).await.unwrap();
    eventually("the error breakpoint", || {
        engine.machine("m").unwrap().paused
    })
    .await;
    let m = engine.machine("m").unwrap();
    assert_eq!((&*m.state, m.errors), ("failing", 1));
    assert!(rec
        .lines()
        .contains(&"control m breakpoint_hit failing paused=true event=error".to_owned()));
    let s = done(&engine, LiveOp::Step).await;
    assert_eq!(&*s.state, "idle");
    done(&engine, LiveOp::Resume).await;
    engine.send("m", Event::new("finish")).await.unwrap();
    engine.join().await;
    assert_eq!(
        engine.machine("m").unwrap().stop_reason,
        Some(StopReason::FinalState)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_goes_back_to_the_initial_state_and_context_with_the_queue_cleared() {
    let (engine, _rec) = started(
        r#"
metadata: {machine_name: m}
initial_state: a
context: {n: 0}
transitions:
  - {from: a, to: b, event: go}
  - {from: b, to: a, event: back}
actions:
  a:
    - {type: set_context, key: entered, value: true}
"#,
    );
    engine.send("m", Event::new("go")).await.unwrap();
    wait_for_state(&engine, "m", "b", WAIT).await;
    done(&engine, LiveOp::Pause).await;
    op(
        &engine,
        LiveOp::PatchContext(json!({"n": 9, "entered": null})),
    )
    .await
    .unwrap();
    for _ in 0..5 {
        engine.send("m", Event::new("back")).await.unwrap();
    }
    let s = done(&engine, LiveOp::Restart).await;
    assert_eq!((&*s.state, s.queue_depth), ("a", 0));
    done(&engine, LiveOp::Resume).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let c = engine.snapshot("m").await.unwrap().context;
        if c.get("entered") == Some(&json!(true)) {
            assert_eq!(c["n"], 0, "{c:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the entry action did not run: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(engine.machine("m").unwrap().transitions, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_pause_resume_cycles_under_load_process_every_event_once() {
    let (engine, _rec) = started(
        r#"
metadata: {machine_name: m}
initial_state: a
transitions:
  - {from: a, to: a, event: tick}
"#,
    );
    const N: u64 = 20_000;
    let sender = {
        let engine = engine.clone();
        tokio::spawn(async move {
            for _ in 0..N {
                engine.send("m", Event::new("tick")).await.unwrap();
            }
        })
    };
    for i in 0..1000 {
        done(&engine, LiveOp::Pause).await;
        if i % 10 == 0 {
            // A step now and then, when something is there to step.
            let _ = op(&engine, LiveOp::Step).await;
        }
        done(&engine, LiveOp::Resume).await;
    }
    sender.await.unwrap();
    eventually("every tick processed", || {
        engine.machine("m").unwrap().transitions >= N
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = engine.machine("m").unwrap();
    assert_eq!((m.transitions, m.events, m.paused), (N, N, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_reload_and_a_stop_work_while_paused() {
    let (engine, _rec) = started(WORKER);
    wait_for_state(&engine, "m", "idle", WAIT).await;
    done(&engine, LiveOp::Pause).await;
    engine.send("m", Event::new("go")).await.unwrap();
    eventually("the event queued", || {
        engine.machine("m").unwrap().queue_depth == 1
    })
    .await;
    // The new definition sends `go` elsewhere; the queued event is routed by it.
    let reloaded = WORKER
        .replace("to: working, event: go", "to: elsewhere, event: go")
        .replace("final_states: [done]", "final_states: [done, elsewhere]");
    engine.reload(def(&reloaded)).await.unwrap();
    let m = engine.machine("m").unwrap();
    assert_eq!((&*m.state, m.paused), ("idle", true));
    done(&engine, LiveOp::Resume).await;
    engine.join().await;
    assert_eq!(&*engine.machine("m").unwrap().state, "elsewhere");

    // A stop of a paused machine, an event held at a breakpoint.
    let (engine, _rec) = started(WORKER);
    op(&engine, bp(On::Event, None, Some("go"), None))
        .await
        .unwrap();
    engine.send("m", Event::new("go")).await.unwrap();
    eventually("the event held", || engine.machine("m").unwrap().paused).await;
    assert_eq!(engine.machine("m").unwrap().queue_depth, 0);
    let s = done(&engine, LiveOp::Stop).await;
    assert!(s.stopped);
    engine.join().await;
    let m = engine.machine("m").unwrap();
    assert_eq!(
        (&*m.state, m.stop_reason),
        ("idle", Some(StopReason::Requested))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transition_and_enter_breakpoints_hold_only_the_events_they_name() {
    let (engine, rec) = started(WORKER);
    wait_for_state(&engine, "m", "idle", WAIT).await;
    // Never: no rule takes `nobody` in `idle`; `working` is never left by `go`.
    op(
        &engine,
        bp(On::Transition, Some("idle"), Some("nobody"), None),
    )
    .await
    .unwrap();
    op(
        &engine,
        bp(On::Transition, Some("working"), Some("go"), None),
    )
    .await
    .unwrap();
    // Holds `wake_up` (the transition out of `working`) and then `fail` (entering `failing`).
    op(&engine, bp(On::Transition, Some("working"), None, None))
        .await
        .unwrap();
    op(&engine, bp(On::Enter, Some("failing"), None, None))
        .await
        .unwrap();
    engine.send("m", Event::new("nobody")).await.unwrap();
    engine.send("m", Event::new("go")).await.unwrap();
    eventually("held before leaving working", || {
        engine.machine("m").unwrap().paused
    })
    .await;
    assert_eq!(&*engine.machine("m").unwrap().state, "working");
    assert!(rec
        .lines()
        .contains(&"control m breakpoint_hit working paused=true event=wake_up".to_owned()));
    done(&engine, LiveOp::Resume).await;
    wait_for_state(&engine, "m", "idle", WAIT).await;
    engine.send("m", Event::new("fail")).await.unwrap();
    eventually("held before entering failing", || {
        engine.machine("m").unwrap().paused
    })
    .await;
    assert_eq!(&*engine.machine("m").unwrap().state, "idle");
    let LiveAnswer::Breakpoints(list) = op(&engine, LiveOp::Breakpoints).await.unwrap() else {
        panic!()
    };
    let hits: Vec<u64> = list.iter().map(|b| b.hits).collect();
    assert_eq!(hits, [0, 0, 1, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_breakpoint_holds_only_its_event_among_names_alike() {
    let (engine, _rec) = started(WORKER);
    wait_for_state(&engine, "m", "idle", WAIT).await;
    // `ping` and `pong` share their length and first byte (and the gate's quick look at
    // names cannot tell them apart): only `pong` is held, after the exact comparison.
    op(&engine, bp(On::Event, Some("idle"), Some("pong"), None))
        .await
        .unwrap();
    engine.send("m", Event::new("ping")).await.unwrap();
    engine.send("m", Event::new("pong")).await.unwrap();
    eventually("held at pong", || engine.machine("m").unwrap().paused).await;
    let m = engine.machine("m").unwrap();
    assert_eq!((&*m.state, m.events), ("idle", 1));
    // Removed, the breakpoint holds nothing more: the held event and the next ones go on.
    let LiveAnswer::Breakpoints(list) = op(&engine, LiveOp::Breakpoints).await.unwrap() else {
        panic!()
    };
    assert_eq!(list.len(), 1);
    op(&engine, LiveOp::RemoveBreakpoint(list[0].id))
        .await
        .unwrap();
    done(&engine, LiveOp::Resume).await;
    engine.send("m", Event::new("pong")).await.unwrap();
    engine.send("m", Event::new("go")).await.unwrap();
    wait_for_state(&engine, "m", "working", WAIT).await;
    let m = engine.machine("m").unwrap();
    assert_eq!((m.events, m.paused), (4, false));
}

#![allow(clippy::unwrap_used)]
//! Machine state and context saved after each transition and restored on restart.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use turnstile_engine::store::{Persister, SqliteStore, StateStore};
use turnstile_engine::{config, ActionRegistry, Engine, Event};

mod support;

use support::machine::def;
use support::wait::wait_for_state;

const WAIT: Duration = Duration::from_secs(10);

const STEPS: &str = r#"
initial_state: one
metadata:
  machine_name: steps
events:
  go:
    context_map:
      n: payload.n
transitions:
  - {from: one, to: two, event: go}
  - {from: two, to: three, event: go}
  - {from: three, to: done, event: go}
actions:
  two:
    - type: set_context
      key: entered_two
      value: "{n}"
final_states: [done]
"#;

async fn go(engine: &Engine, n: i64) {
    engine
        .send(
            "steps",
            Event::new("go")
                .with_payload(json!({"n": n}))
                .with_job_id(format!("job-{n}")),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_context_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("s.db")).unwrap());

    let p = Persister::new(store.clone());
    let engine = Engine::builder().persist(p.clone()).build();
    engine.spawn(def(STEPS)).unwrap();
    go(&engine, 1).await;
    go(&engine, 2).await;
    wait_for_state(&engine, "steps", "three", WAIT).await;
    engine.shutdown();
    engine.join().await;
    assert!(p.flush(WAIT));
    let rec = store.load_state("steps").unwrap().unwrap();
    assert_eq!(rec.current_state.as_deref(), Some("three"));
    let ctx = rec.context.unwrap();
    assert_eq!(ctx["n"], json!(2));
    assert_eq!(ctx["entered_two"], json!(1));
    let t = store.transitions(Some("steps"), 10).unwrap();
    let seen: Vec<(&str, &str, &str, Option<&str>)> = t
        .iter()
        .rev()
        .map(|r| {
            (
                r.from_state.as_str(),
                r.to_state.as_str(),
                r.event.as_str(),
                r.job_id.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("one", "two", "go", Some("job-1")),
            ("two", "three", "go", Some("job-2"))
        ]
    );

    // A new engine (a restarted process) starts the machine where it was.
    let p = Persister::new(store.clone());
    let engine = Engine::builder().persist(p.clone()).build();
    engine.spawn(def(STEPS)).unwrap();
    assert_eq!(engine.machine("steps").unwrap().state.as_ref(), "three");
    let snap = engine.snapshot("steps").await.unwrap();
    assert_eq!(snap.context["entered_two"], json!(1));
    go(&engine, 3).await;
    tokio::time::timeout(WAIT, engine.join()).await.unwrap();
    assert!(p.flush(WAIT));
    assert_eq!(
        store
            .load_state("steps")
            .unwrap()
            .unwrap()
            .current_state
            .as_deref(),
        Some("done")
    );

    // A machine saved in a final state starts over.
    let engine = Engine::builder()
        .persist(Persister::new(store.clone()))
        .build();
    engine.spawn(def(STEPS)).unwrap();
    assert_eq!(engine.machine("steps").unwrap().state.as_ref(), "one");
    engine.shutdown();
    engine.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_state_that_no_longer_exists_starts_from_the_initial_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("s.db")).unwrap());
    store
        .save_state("steps", "removed_state", &serde_json::Map::new())
        .unwrap();
    let engine = Engine::builder()
        .persist(Persister::new(store.clone()))
        .build();
    engine.spawn(def(STEPS)).unwrap();
    assert_eq!(engine.machine("steps").unwrap().state.as_ref(), "one");
    engine.shutdown();
    engine.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_fast_transitions_are_coalesced_not_blocking() {
    let yaml = r#"
initial_state: a
metadata: {machine_name: pingpong}
transitions:
  - {from: a, to: b, event: x}
  - {from: b, to: a, event: x}
"#;
    let def = config::load_str(yaml, None, &ActionRegistry::with_builtins())
        .def
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("s.db")).unwrap());
    let p = Persister::new(store.clone());
    let engine = Engine::builder().persist(p.clone()).build();
    engine.spawn(def).unwrap();
    let n = 20_000;
    let t0 = std::time::Instant::now();
    for _ in 0..n {
        engine.send("pingpong", Event::new("x")).await.unwrap();
    }
    let sent = t0.elapsed();
    engine.shutdown();
    engine.join().await;
    let m = engine.machine("pingpong").unwrap();
    assert!(p.flush(WAIT));
    let written = store.transitions(Some("pingpong"), n + 10).unwrap().len() as u64;
    assert_eq!(written + p.dropped(), m.transitions);
    assert_eq!(
        store
            .load_state("pingpong")
            .unwrap()
            .unwrap()
            .current_state
            .as_deref(),
        Some(m.state.as_ref())
    );
    eprintln!("{n} persisted transitions in {sent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_machine_is_still_paused_after_a_restart() {
    use turnstile_engine::runtime::live::LiveOp;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("s.db")).unwrap());
    let p = Persister::new(store.clone());
    let engine = Engine::builder().persist(p.clone()).build();
    engine.spawn(def(STEPS)).unwrap();
    go(&engine, 1).await;
    wait_for_state(&engine, "steps", "two", WAIT).await;
    engine.control("steps", LiveOp::Pause).await.unwrap();
    engine.shutdown();
    engine.join().await;
    assert!(p.flush(WAIT));
    assert!(store.load_state("steps").unwrap().unwrap().paused);

    // Restarted: in `two`, paused; an event waits until the resume.
    let p = Persister::new(store.clone());
    let engine = Engine::builder().persist(p.clone()).build();
    engine.spawn(def(STEPS)).unwrap();
    let m = engine.machine("steps").unwrap();
    assert_eq!((m.state.as_ref(), m.paused), ("two", true));
    go(&engine, 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(engine.machine("steps").unwrap().state.as_ref(), "two");
    engine.control("steps", LiveOp::Resume).await.unwrap();
    wait_for_state(&engine, "steps", "three", WAIT).await;
    engine.shutdown();
    engine.join().await;
    assert!(p.flush(WAIT));
    assert!(!store.load_state("steps").unwrap().unwrap().paused);
}

/// `STEPS` under another name, for a definition that is not loaded after the restart.
const OTHER: &str = r#"
initial_state: one
metadata:
  machine_name: other
transitions:
  - {from: one, to: two, event: go}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_instances_are_started_again_and_retired_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("s.db")).unwrap());
    let ctx = |v: serde_json::Value| v.as_object().unwrap().clone();

    let p = Persister::new(store.clone());
    let engine = Engine::builder().persist(p.clone()).build();
    engine.spawn(def(STEPS)).unwrap();
    engine.spawn(def(OTHER)).unwrap();
    engine
        .start_instance("steps", Some("a"), ctx(json!({"k": "a"})))
        .unwrap();
    engine
        .start_instance("steps", Some("b"), ctx(json!({"k": "b"})))
        .unwrap();
    engine
        .start_instance("other", Some("o"), ctx(json!({})))
        .unwrap();
    engine
        .send("a", Event::new("go").with_payload(json!({"n": 5})))
        .await
        .unwrap();
    for _ in 0..3 {
        engine.send("b", Event::new("go")).await.unwrap();
    }
    wait_for_state(&engine, "a", "two", WAIT).await;
    support::wait::eventually("b retired", || {
        engine.machine("b").is_some_and(|m| !m.running)
    })
    .await;
    engine.shutdown();
    engine.join().await;
    assert!(p.flush(WAIT));
    drop(engine);

    // Restarted with `steps` only: `a` is back in `two` with its context; `b` reached its
    // final state (retired) and `o`'s definition is not loaded: neither starts, both
    // records are kept.
    let p = Persister::new(store.clone());
    let engine = Engine::builder().persist(p.clone()).build();
    engine.spawn(def(STEPS)).unwrap();
    assert_eq!(engine.restore_instances(), vec![Arc::<str>::from("a")]);
    let m = engine.machine("a").unwrap();
    assert!(m.instance && m.running);
    assert_eq!(&*m.state, "two");
    let snap = engine.snapshot("a").await.unwrap();
    // The saved context, `event_data` of the event that led to `two` included.
    assert_eq!(snap.context["k"], json!("a"));
    assert_eq!(snap.context["n"], json!(5));
    assert_eq!(snap.context["entered_two"], json!(5));
    assert_eq!(snap.context["event_data"]["payload"], json!({"n": 5}));
    assert!(engine.machine("b").is_none());
    assert!(engine.machine("o").is_none());
    let live: Vec<String> = store
        .live_instances()
        .unwrap()
        .into_iter()
        .map(|r| r.machine_name)
        .collect();
    assert_eq!(live, ["a", "o"]);
    assert!(store.load_state("b").unwrap().unwrap().retired);
    // It goes on from there.
    engine.send("a", Event::new("go")).await.unwrap();
    wait_for_state(&engine, "a", "three", WAIT).await;
    engine.shutdown();
    engine.join().await;
}

/// `Persister::flush` returns once everything handed over is written, also when the
/// writer has already taken it and is still writing (a clean exit flushes and then ends the
/// process: a write in flight must not be lost). Another connection holds SQLite's write
/// lock, so the writer's batch waits in the busy handler until it is let go.
#[test]
fn flush_waits_for_the_batch_being_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let store = Arc::new(SqliteStore::open(&path).unwrap());
    let p = Persister::new(store.clone());

    let holder = rusqlite::Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let name: Arc<str> = "m".into();
    let state: Arc<str> = "s".into();
    p.entered(&name, &state, &serde_json::Map::new(), None, None, false);
    // The writer takes the batch (nothing is pending any more) and waits for the lock.
    std::thread::sleep(Duration::from_millis(100));
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        holder.execute_batch("COMMIT").unwrap();
    });
    assert!(p.flush(WAIT), "flushed within {WAIT:?}");
    // Read on a connection of its own (the store's is the writer's until it is done).
    let saved = SqliteStore::open(&path).unwrap().load_state("m").unwrap();
    assert_eq!(saved.and_then(|r| r.current_state).as_deref(), Some("s"));
    release.join().unwrap();
}

/// Steps that only the events `e1`..`e4`, in this order, take (an event out of order has no
/// rule in the state it finds).
const CHAIN: &str = r#"
initial_state: s0
metadata:
  machine_name: chain
transitions:
  - {from: s0, to: s1, event: e1}
  - {from: s1, to: s2, event: e2}
  - {from: s2, to: s3, event: e3}
  - {from: s3, to: s4, event: e4}
"#;

/// Events another process writes into the store for the instances this process owns reach
/// each instance in order, though its queue holds one event (the instances' task queues
/// without waiting and takes an instance's later events again after the ones queued), and
/// are all marked processed. One instance is paused meanwhile, its one-slot queue held
/// full: the others' events go on past its refused ones, and once resumed it takes its
/// own in order. (That an instance's later events are not queued ahead of a refused one
/// when its queue frees up during a look is the bridge's unit test `queue_pass`: the
/// moment cannot be forced from here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_s_events_reach_each_instance_in_order_through_a_full_queue() {
    use turnstile_engine::runtime::bridge::EventBridge;
    use turnstile_engine::runtime::live::LiveOp;
    use turnstile_engine::store::{EventStore, InstanceStore, JobStore, NewEvent, StoreOptions};
    const N: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let open = |id: &str| {
        let o = StoreOptions {
            instance_id: Some(id.into()),
            ..StoreOptions::default()
        };
        Arc::new(SqliteStore::open_with(&path, o).unwrap())
    };
    let (mine, other) = (open("ea"), open("eb"));
    let stale = Duration::from_secs(30);
    mine.register_instance("ea", "1-a", stale).unwrap();
    other.register_instance("eb", "1-b", stale).unwrap();
    let p = Persister::new(mine.clone());
    let engine = Engine::builder()
        .persist(p.clone())
        .queue_capacity(1)
        .build();
    engine.spawn(def(CHAIN)).unwrap();
    let bridge = EventBridge::start(
        mine.clone(),
        &engine,
        ("ea", "1-a"),
        (vec!["chain".into()], vec![]),
        Duration::from_secs(3),
        Some(p.clone()),
    )
    .unwrap();
    for i in 0..N {
        engine
            .start_instance("chain", Some(&format!("i{i}")), serde_json::Map::new())
            .unwrap();
    }
    engine.control("i0", LiveOp::Pause).await.unwrap();
    assert!(p.flush(WAIT));
    let owner = other.instance_owner("i3", stale).unwrap().unwrap();
    assert_eq!(
        (owner.instance_id.as_deref(), owner.live),
        (Some("ea"), true)
    );
    // Interleaved: e1 of every instance, then e2 of every instance, ...
    for e in 1..=4 {
        for i in 0..N {
            other
                .send_event(&NewEvent {
                    target: format!("i{i}"),
                    event_type: format!("e{e}"),
                    ..NewEvent::default()
                })
                .unwrap();
        }
    }
    for i in 1..N {
        wait_for_state(&engine, &format!("i{i}"), "s4", WAIT).await;
    }
    // The paused one: still in its first state, its four events pending (one queued).
    assert_eq!(&*engine.machine("i0").unwrap().state, "s0");
    support::wait::eventually("only i0's four events pending", || {
        mine.queue_health().unwrap().events_pending == 4
    })
    .await;
    assert_eq!(&*engine.machine("i0").unwrap().state, "s0");
    engine.control("i0", LiveOp::Resume).await.unwrap();
    wait_for_state(&engine, "i0", "s4", WAIT).await;
    support::wait::eventually("every event marked", || {
        mine.queue_health().unwrap().events_pending == 0
    })
    .await;
    for i in 0..N {
        let t = mine.transitions(Some(&format!("i{i}")), 10).unwrap();
        assert_eq!(t.len(), 4, "i{i}: each event once: {t:?}");
    }
    tokio::task::spawn_blocking(move || bridge.stop())
        .await
        .unwrap();
    engine.shutdown();
    engine.join().await;
}

//! Instances of a definition started at run time (`Engine::start_instance`): they share
//! the compiled definition, have their own name, context and queue, are retired when they
//! reach a final state, do not count among the engine's machines (readiness), take a
//! reload of their definition, and a refused start changes nothing.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use serde_json::{json, Map, Value as Json};
use turnstile_engine::{Engine, Event, StartError};

mod support;

use support::machine::def;
use support::wait::{eventually, wait_for_state, WAIT};

const WORKER: &str = r#"
metadata: {machine_name: worker}
initial_state: waiting
context: {greeting: hello, n: 0}
states: [waiting, working, done]
events: [go, finish]
transitions:
  - {from: waiting, to: working, event: go}
  - {from: working, to: done, event: finish}
"#;

/// [`WORKER`] with a state `paused` reachable from `working`.
const WORKER_V2: &str = r#"
metadata: {machine_name: worker}
initial_state: waiting
context: {greeting: hello, n: 0}
states: [waiting, working, paused, done]
events: [go, finish, hold]
transitions:
  - {from: waiting, to: working, event: go}
  - {from: working, to: paused, event: hold}
  - {from: working, to: done, event: finish}
"#;

fn ctx(v: Json) -> Map<String, Json> {
    match v {
        Json::Object(m) => m,
        _ => unreachable!("an object"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_the_definition_and_keep_their_own_name_and_context() {
    let engine = Engine::builder().build();
    let d = def(WORKER);
    engine.spawn(d.clone()).unwrap();
    assert_eq!(&*engine.definitions()[0], "worker");

    let a = engine
        .start_instance("worker", Some("job-a"), ctx(json!({"n": 7, "extra": true})))
        .unwrap();
    let b = engine.start_instance("worker", None, Map::new()).unwrap();
    let c = engine.start_instance("worker", None, Map::new()).unwrap();
    assert_eq!(&*a, "job-a");
    assert!(b.starts_with("worker-") && c.starts_with("worker-") && b != c);

    for n in [&a, &b, &c] {
        let m = engine.machine(n).unwrap();
        assert!(m.instance && m.running);
        assert_eq!(&*m.state, "waiting");
        // One compiled definition for the machine and its instances.
        assert!(Arc::ptr_eq(&m.def, &d), "instance {n} runs a copy");
        assert_eq!(&*m.def.name, "worker");
    }
    // The context given is merged over the definition's.
    let snap = engine.snapshot("job-a").await.unwrap();
    assert_eq!(
        Json::Object(snap.context),
        json!({"greeting": "hello", "n": 7, "extra": true})
    );
    let snap = engine.snapshot(&b).await.unwrap();
    assert_eq!(
        Json::Object(snap.context),
        json!({"greeting": "hello", "n": 0})
    );

    // Instances are not among the engine's machines (readiness counts those).
    let status = engine.status();
    assert_eq!(status.len(), 1);
    assert_eq!(&*status[0].name, "worker");
    assert!(!status[0].instance);

    // Each has its own queue: an event for one moves only that one.
    engine.send("job-a", Event::new("go")).await.unwrap();
    wait_for_state(&engine, "job-a", "working", WAIT).await;
    assert_eq!(&*engine.machine("worker").unwrap().state, "waiting");
    assert_eq!(&*engine.machine(&b).unwrap().state, "waiting");

    let (page, more) = engine.status_handle().instances_page(None, 10, None, None);
    assert!(!more);
    let names: Vec<&str> = page.iter().map(|m| &*m.name).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "pages are in name order");
    assert_eq!(names.len(), 3);
    let (page, _) =
        engine
            .status_handle()
            .instances_page(None, 10, Some("working"), Some("worker"));
    assert_eq!(page.len(), 1);
    assert_eq!(&*page[0].name, "job-a");
    engine.shutdown();
    engine.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_in_a_final_state_is_retired_and_the_engine_goes_on() {
    let engine = Engine::builder().build();
    engine.spawn(def(WORKER)).unwrap();
    let name = engine
        .start_instance("worker", Some("one"), Map::new())
        .unwrap();
    engine.send("one", Event::new("go")).await.unwrap();
    engine.send("one", Event::new("finish")).await.unwrap();
    eventually("the instance retires", || {
        engine.status_handle().instance_counts()[0].counts.retired == 1
    })
    .await;
    let m = engine.machine(&name).unwrap();
    assert!(!m.running && m.instance);
    assert_eq!(&*m.state, "done");
    let counts = &engine.status_handle().instance_counts()[0];
    assert_eq!(counts.running, 0);
    assert_eq!((counts.counts.started, counts.transitions), (1, 2));
    // Kept for /machines, its name free again.
    let (page, _) = engine.status_handle().instances_page(None, 10, None, None);
    assert_eq!(page.len(), 1);
    assert!(!page[0].running);
    let again = engine.start_instance("worker", Some("one"), Map::new());
    assert_eq!(again.unwrap().as_ref(), "one");
    assert!(engine.machine("one").unwrap().running);
    // The engine and its own machine go on.
    assert_eq!(engine.running(), 1);
    engine.send("worker", Event::new("go")).await.unwrap();
    wait_for_state(&engine, "worker", "working", WAIT).await;
    engine.shutdown();
    engine.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_starts_say_why_and_change_nothing() {
    let engine = Engine::builder().build();
    engine.spawn(def(WORKER)).unwrap();
    assert_eq!(
        engine.start_instance("nope", None, Map::new()),
        Err(StartError::UnknownDefinition("nope".into()))
    );
    // The config machine's name, and a running instance's.
    assert_eq!(
        engine.start_instance("worker", Some("worker"), Map::new()),
        Err(StartError::NameTaken("worker".into()))
    );
    engine
        .start_instance("worker", Some("x"), Map::new())
        .unwrap();
    assert_eq!(
        engine.start_instance("worker", Some("x"), Map::new()),
        Err(StartError::NameTaken("x".into()))
    );
    for bad in ["", "a\nb", &"n".repeat(201)] {
        assert!(
            matches!(
                engine.start_instance("worker", Some(bad), Map::new()),
                Err(StartError::BadName(_))
            ),
            "{bad:?} accepted"
        );
    }
    let (page, _) = engine.status_handle().instances_page(None, 10, None, None);
    assert_eq!(page.len(), 1);
    assert_eq!(
        engine.status_handle().instance_counts()[0].counts.started,
        1
    );
    engine.shutdown();
    engine.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_of_the_definition_applies_to_every_instance() {
    let engine = Engine::builder().build();
    engine.spawn(def(WORKER)).unwrap();
    let names: Vec<Arc<str>> = (0..20)
        .map(|_| engine.start_instance("worker", None, Map::new()).unwrap())
        .collect();
    engine.send(&names[0], Event::new("go")).await.unwrap();
    wait_for_state(&engine, &names[0], "working", WAIT).await;

    let v2 = def(WORKER_V2);
    engine.reload(v2.clone()).await.unwrap();
    assert!(Arc::ptr_eq(&engine.definition("worker").unwrap(), &v2));
    for n in &names {
        assert!(
            Arc::ptr_eq(&engine.machine(n).unwrap().def, &v2),
            "{n} kept the old definition"
        );
    }
    assert!(Arc::ptr_eq(&engine.machine("worker").unwrap().def, &v2));
    // The new rule works on the instance that was in `working`; new instances run v2.
    engine.send(&names[0], Event::new("hold")).await.unwrap();
    wait_for_state(&engine, &names[0], "paused", WAIT).await;
    let later = engine.start_instance("worker", None, Map::new()).unwrap();
    assert!(Arc::ptr_eq(&engine.machine(&later).unwrap().def, &v2));
    engine.shutdown();
    engine.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_walks_every_instance_once() {
    let engine = Engine::builder().build();
    engine.spawn(def(WORKER)).unwrap();
    for i in 0..250 {
        engine
            .start_instance("worker", Some(&format!("w{i:04}")), Map::new())
            .unwrap();
    }
    let status = engine.status_handle();
    let mut seen = Vec::new();
    let mut after: Option<Arc<str>> = None;
    loop {
        let (page, more) = status.instances_page(after.as_deref(), 100, None, None);
        assert!(page.len() <= 100);
        seen.extend(page.iter().map(|m| m.name.clone()));
        after = page.last().map(|m| m.name.clone());
        if !more {
            break;
        }
    }
    assert_eq!(seen.len(), 250);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    engine.shutdown();
    engine.join().await;
}

//! Instances of a definition started at run time (`Engine::start_instance`): they share
//! the compiled definition, have their own name, context and queue, are retired when they
//! reach a final state, do not count among the engine's machines (readiness), take a
//! reload of their definition, and a refused start changes nothing.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use serde_json::{json, Map, Value as Json};
use turnstile_engine::{config, ActionRegistry, Engine, Event, StartError};

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
    // With none running, every state is still listed, at zero.
    let states: Vec<(&str, u64)> = counts.states.iter().map(|(s, n)| (&**s, *n)).collect();
    assert_eq!(states, [("waiting", 0), ("working", 0), ("done", 0)]);
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

// --- start_fsm --------------------------------------------------------------------------

/// A controller that starts one `job` instance per `spawn` event, named from the payload,
/// with two context values copied, and records the outcome in its own state.
const CONTROLLER: &str = r#"
metadata: {machine_name: controller}
initial_state: idle
context: {order: {id: 42, customer: {name: Ada}}}
states: [idle, spawning, spawned, failed]
events: [spawn, started, spawn_failed, again]
transitions:
  - {from: [idle, spawned, failed], to: spawning, event: spawn}
  - {from: spawning, to: spawned, event: started}
  - {from: spawning, to: failed, event: spawn_failed}
actions:
  spawning:
    - type: start_fsm
      yaml_path: job.yaml
      machine_name: "job_{payload.n}"
      context_vars:
        - order.id as order_id
        - order.customer.name as customer
        - payload.n as n
        - order
      success: started
      error: spawn_failed
      store_pid: true
"#;

const JOB: &str = r#"
metadata: {machine_name: job}
initial_state: working
context: {order_id: 0}
states: [working, done]
events: [finish]
transitions:
  - {from: working, to: done, event: finish}
"#;

fn load(dir: &std::path::Path, file: &str, text: &str) -> config::Loaded {
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    config::load_path(&path, &ActionRegistry::with_builtins())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_fsm_starts_instances_of_the_file_beside_the_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("job.yaml"), JOB).unwrap();
    let loaded = load(dir.path(), "controller.yaml", CONTROLLER);
    let errors: Vec<String> = loaded.errors().map(ToString::to_string).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let engine = Engine::builder().build();
    engine.spawn(loaded.def.unwrap()).unwrap();
    // The definition `start_fsm` names is known from the start (`POST /machines` can start it).
    let names: Vec<String> = engine.definitions().iter().map(|d| d.to_string()).collect();
    assert_eq!(names, ["controller", "job"]);
    let early = engine
        .start_instance("job", Some("early"), Map::new())
        .unwrap();
    assert_eq!(&*early, "early");

    let spawn = |n: i64| Event::new("spawn").with_payload(json!({"n": n}));
    engine.send("controller", spawn(1)).await.unwrap();
    wait_for_state(&engine, "controller", "spawned", WAIT).await;
    let job = engine.machine("job_1").expect("job_1 started");
    assert!(job.instance && job.running);
    assert_eq!(&*job.def.name, "job");
    let snap = engine.snapshot("job_1").await.unwrap();
    assert_eq!(
        Json::Object(snap.context),
        json!({"order_id": 42, "customer": "Ada", "n": 1, "order": {"id": 42, "customer": {"name": "Ada"}}})
    );
    // The definition is the engine's from the first start on: the second instance shares it.
    engine.send("controller", spawn(2)).await.unwrap();
    eventually("job_2 starts", || engine.machine("job_2").is_some()).await;
    assert!(Arc::ptr_eq(
        &engine.machine("job_1").unwrap().def,
        &engine.machine("job_2").unwrap().def
    ));
    assert!(Arc::ptr_eq(
        &engine.machine("job_2").unwrap().def,
        &engine.definition("job").unwrap()
    ));
    assert!(Arc::ptr_eq(
        &engine.machine("early").unwrap().def,
        &engine.definition("job").unwrap()
    ));

    // A name taken: the error event, the reason in the context, the engine goes on.
    engine.send("controller", spawn(1)).await.unwrap();
    wait_for_state(&engine, "controller", "failed", WAIT).await;
    let snap = engine.snapshot("controller").await.unwrap();
    let why = snap.context["last_error"].as_str().unwrap();
    assert!(why.contains("`job_1` is already running"), "{why}");
    assert_eq!(snap.context["last_error_action"], "start_fsm");
    assert!(engine.machine("job_1").unwrap().running);

    // Instances retire on their own; the controller starts more afterwards.
    engine.send("job_1", Event::new("finish")).await.unwrap();
    eventually("job_1 retires", || {
        !engine.machine("job_1").unwrap().running
    })
    .await;
    engine.send("controller", spawn(1)).await.unwrap();
    wait_for_state(&engine, "controller", "spawned", WAIT).await;
    assert!(engine.machine("job_1").unwrap().running);

    // The file changes and the controller's config is reloaded: its `start_fsm` compiles
    // the file again, and the running instances take the new definition.
    std::fs::write(
        dir.path().join("job.yaml"),
        JOB.replace("states: [working, done]", "states: [working, done, spare]")
            .replace("events: [finish]", "events: [finish, park]")
            .replace(
                "  - {from: working, to: done, event: finish}",
                "  - {from: working, to: done, event: finish}\n  - {from: working, to: spare, event: park}\n  - {from: spare, to: working, event: finish}",
            ),
    )
    .unwrap();
    let again = config::load_path(
        &dir.path().join("controller.yaml"),
        &ActionRegistry::with_builtins(),
    );
    engine.reload(again.def.unwrap()).await.unwrap();
    let job = engine.definition("job").unwrap();
    assert!(job.state_index("spare").is_some());
    for n in ["job_1", "job_2", "early"] {
        assert!(Arc::ptr_eq(&engine.machine(n).unwrap().def, &job), "{n}");
    }
    engine.shutdown();
    engine.join().await;
}

#[test]
fn start_fsm_parameters_are_checked_with_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let diag = |loaded: &config::Loaded| -> Vec<String> {
        loaded.errors().map(ToString::to_string).collect()
    };
    // No such file: named, with the line and column of `yaml_path`.
    let l = load(dir.path(), "c1.yaml", CONTROLLER);
    let e = diag(&l);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(e[0].contains(":14:18: error[bad-parameter]"), "{e:#?}");
    assert!(e[0].contains("no file `job.yaml`"), "{e:#?}");

    // A file that does not validate: its first error is quoted.
    std::fs::write(
        dir.path().join("job.yaml"),
        "initial_state: nowhere\nstates: [a]\n",
    )
    .unwrap();
    let e = diag(&load(dir.path(), "c2.yaml", CONTROLLER));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(e[0].contains("does not validate (1 error"), "{e:#?}");
    assert!(e[0].contains("nowhere"), "{e:#?}");

    // A placeholder in yaml_path, bad context_vars entries, a file that starts itself.
    std::fs::write(dir.path().join("job.yaml"), JOB).unwrap();
    let bad = CONTROLLER
        .replace("yaml_path: job.yaml", "yaml_path: \"{which}.yaml\"")
        .replace("- order.id as order_id", "- order..id as order_id")
        .replace("- order.customer.name as customer", "- order as a b");
    let e = diag(&load(dir.path(), "c3.yaml", &bad));
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(e[0].contains("holds a placeholder"), "{e:#?}");
    assert!(
        e[1].contains(":17:11: error[bad-parameter]") && e[1].contains("empty segment"),
        "{e:#?}"
    );
    assert!(e[2].contains("`order as a b`"), "{e:#?}");
    let own = CONTROLLER.replace("yaml_path: job.yaml", "yaml_path: self.yaml");
    let e = diag(&load(dir.path(), "self.yaml", &own));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(e[0].contains("starts itself"), "{e:#?}");
    let e = diag(&load(
        dir.path(),
        "c4.yaml",
        &CONTROLLER.replace(
            "      context_vars:\n",
            "      context_vars: oops\n      unused:\n",
        ),
    ));
    assert!(
        e.iter()
            .any(|x| x.contains("`context_vars` must be a list")),
        "{e:#?}"
    );
}

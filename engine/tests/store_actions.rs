#![allow(clippy::unwrap_used)]
//! The job actions in running machines: a worker waits for jobs without polling through
//! its machine, is woken by a job added later, goes back to waiting, and an event
//! interrupts the wait.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use turnstile_engine::store::{JobStore, ListJobs, NewJob, SqliteStore, StateStore};
use turnstile_engine::{config, ActionRegistry, Engine, Event, MachineDef};

mod support;

use support::machine::def_with;
use support::wait::wait_for_state;

const WAIT: Duration = Duration::from_secs(10);

const WORKER: &str = r#"
initial_state: waiting
metadata:
  machine_name: worker
transitions:
  - {from: waiting, to: processing, event: new_job}
  - {from: processing, to: done, event: success}
  - {from: done, to: waiting, event: next}
  - {from: "*", to: stopped, event: stop}
actions:
  waiting:
    - type: check_database_queue
      job_type: task
      machine_type: worker
  processing:
    - type: complete_job
      job_id: "{id}"
      result: {by: worker, x: "{x}"}
  done:
    - type: set_context
      key: "seen_{id}"
      value: "{x}"
      success: next
final_states: [stopped]
"#;

fn setup(
    yaml: &str,
) -> (
    ActionRegistry,
    Arc<MachineDef>,
    Arc<SqliteStore>,
    tempfile::TempDir,
) {
    let registry = ActionRegistry::with_builtins();
    let def = def_with(yaml, &registry);
    assert!(registry.jobs().used());
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("w.db")).unwrap());
    registry.jobs().set(store.clone());
    (registry, def, store, dir)
}

fn add(store: &SqliteStore, id: &str, x: i64) {
    store
        .add_job(NewJob {
            job_id: Some(id.into()),
            job_type: "task".into(),
            machine_type: Some("worker".into()),
            data: Some(json!({"x": x})),
            ..NewJob::default()
        })
        .unwrap();
}

async fn wait_completed(store: &SqliteStore, n: usize) {
    let t0 = Instant::now();
    loop {
        let done = store
            .list_jobs(&ListJobs {
                status: Some("completed".into()),
                ..ListJobs::default()
            })
            .unwrap()
            .len();
        if done >= n {
            return;
        }
        assert!(t0.elapsed() < WAIT, "{done} of {n} jobs completed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_processes_every_job_and_waits_for_more() {
    let (_r, def, store, _dir) = setup(WORKER);
    for i in 0..5 {
        add(&store, &format!("a{i}"), i);
    }
    let engine = Engine::builder().build();
    engine.spawn(def).unwrap();
    wait_completed(&store, 5).await;
    wait_for_state(&engine, "worker", "waiting", WAIT).await;
    let snap = engine.snapshot("worker").await.unwrap();
    assert_eq!(snap.context["seen_a3"], json!(3));
    assert_eq!(snap.context["current_job"]["data"], json!({"x": 4}));

    // Idle: the machine sits in `waiting` and takes no transitions.
    let before = engine.machine("worker").unwrap().transitions;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(engine.machine("worker").unwrap().transitions, before);

    // A job added long after start wakes it at once (in-process notification).
    let t0 = Instant::now();
    add(&store, "late", 42);
    wait_completed(&store, 6).await;
    let latency = t0.elapsed();
    assert!(latency < Duration::from_millis(200), "{latency:?}");
    let late = store.get_job("late").unwrap().unwrap();
    assert_eq!(late.result, Some(json!({"by": "worker", "x": 42})));
    wait_for_state(&engine, "worker", "waiting", WAIT).await;

    // A job written by another connection (another process) is noticed by polling.
    let other = SqliteStore::open(store.path()).unwrap();
    add(&other, "foreign", 7);
    wait_completed(&store, 7).await;

    // `stop` interrupts the wait at once.
    let t0 = Instant::now();
    engine.send("worker", Event::new("stop")).await.unwrap();
    tokio::time::timeout(WAIT, engine.join()).await.unwrap();
    assert!(t0.elapsed() < Duration::from_millis(500));
    assert_eq!(engine.machine("worker").unwrap().state.as_ref(), "stopped");
    // Nothing is left claimed.
    assert!(store
        .list_jobs(&ListJobs {
            status: Some("processing".into()),
            ..ListJobs::default()
        })
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_in_one_process_share_the_queue() {
    let yaml2 = WORKER.replace("machine_name: worker", "machine_name: worker2");
    let (registry, def1, store, _dir) = setup(WORKER);
    let def2 = config::load_str(&yaml2, None, &registry).def.unwrap();
    let engine = Engine::builder().build();
    engine.spawn_all(vec![def1, def2]).unwrap();
    for i in 0..200 {
        add(&store, &format!("j{i}"), i);
    }
    wait_completed(&store, 200).await;
    engine.shutdown();
    engine.join().await;
}

const FAILING: &str = r#"
initial_state: waiting
transitions:
  - {from: waiting, to: working, event: new_job}
  - {from: working, to: waiting, event: job_failed}
actions:
  waiting:
    - type: check_database_queue
  working:
    - type: fail_job
      error_message: "broken {id}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_jobs_are_retried_then_dead_lettered() {
    let registry = ActionRegistry::with_builtins();
    let def = config::load_str(FAILING, None, &registry).def.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open_with(
            &dir.path().join("f.db"),
            turnstile_engine::store::StoreOptions {
                backoff_base: Duration::from_millis(50),
                ..Default::default()
            },
        )
        .unwrap(),
    );
    registry.jobs().set(store.clone());
    store
        .add_job(NewJob {
            job_id: Some("bad".into()),
            job_type: "x".into(),
            ..NewJob::default()
        })
        .unwrap();
    let jobs = Arc::new(JobHooks::default());
    let engine = Engine::builder().observer(jobs.clone()).build();
    engine.spawn(def).unwrap();
    let t0 = Instant::now();
    loop {
        let j = store.get_job("bad").unwrap().unwrap();
        if j.status == "dead" {
            assert_eq!(j.attempts, 3);
            assert_eq!(j.error_message.as_deref(), Some("broken bad"));
            break;
        }
        assert!(t0.elapsed() < WAIT, "{j:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Backoff 50 ms then 100 ms: woken by the due time, not by a poll tick.
    assert!(t0.elapsed() >= Duration::from_millis(150));
    // The last failure is committed before the machine reports it to the observer.
    while jobs.0.lock().unwrap().len() < 6 && t0.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    engine.shutdown();
    engine.join().await;
    // The observer heard of every claim and failure, with the job's type.
    let claimed = "claimed x bad".to_owned();
    let failed = "failed x bad broken bad".to_owned();
    assert_eq!(
        *jobs.0.lock().unwrap(),
        [
            claimed.clone(),
            failed.clone(),
            claimed.clone(),
            failed.clone(),
            claimed,
            failed
        ]
    );
}

/// Records the observer's job hooks as "change type id [message]".
#[derive(Default)]
struct JobHooks(std::sync::Mutex<Vec<String>>);

impl turnstile_engine::Observer for JobHooks {
    fn job_claimed(&self, _m: turnstile_engine::observe::MachineRef<'_>, t: &str, id: &str) {
        self.0.lock().unwrap().push(format!("claimed {t} {id}"));
    }
    fn job_completed(&self, _m: turnstile_engine::observe::MachineRef<'_>, t: &str, id: &str) {
        self.0.lock().unwrap().push(format!("completed {t} {id}"));
    }
    fn job_failed(
        &self,
        _m: turnstile_engine::observe::MachineRef<'_>,
        t: &str,
        id: &str,
        msg: &str,
    ) {
        self.0
            .lock()
            .unwrap()
            .push(format!("failed {t} {id} {msg}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_jobs_machine_state_and_clear_events() {
    let yaml = r#"
initial_state: a
transitions:
  - {from: a, to: b, event: jobs_found}
  - {from: b, to: c, event: claimed}
  - {from: c, to: d, event: unexpected_state}
  - {from: d, to: e, event: events_cleared}
actions:
  a:
    - type: get_pending_jobs
      job_type: task
      store_as: pending
  b:
    - type: claim_job
      job_id: "{pending.0.job_id}"
  c:
    - type: check_machine_state
      target_machine: other
      expected_states: [idle]
  d:
    - type: clear_events
      target_machine: other
      event_types: [go]
final_states: [e]
"#;
    let (_r, def, store, _dir) = setup(yaml);
    add(&store, "p1", 1);
    let mut ctx = serde_json::Map::new();
    ctx.insert("k".into(), json!(1));
    store.save_state("other", "busy", &ctx).unwrap();
    store.record_event(None, "other", "go", None, None).unwrap();
    let engine = Engine::builder().build();
    engine.spawn(def.clone()).unwrap();
    tokio::time::timeout(WAIT, engine.join()).await.unwrap();
    let snap = engine.snapshot(&def.name).await.unwrap();
    assert_eq!(snap.state.as_ref(), "e");
    assert_eq!(snap.context["pending"][0]["job_id"], json!("p1"));
    assert_eq!(snap.context["unexpected_machine_state"], json!("busy"));
    assert_eq!(store.get_job("p1").unwrap().unwrap().status, "processing");
    assert_eq!(
        store.events(Some("other"), 5).unwrap()[0].status,
        "processed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_store_job_actions_fail_clearly() {
    let yaml = "initial_state: a\ntransitions:\n  - {from: a, to: b, event: error}\nactions:\n  a:\n    - type: check_database_queue\nfinal_states: [b]\n";
    let registry = ActionRegistry::with_builtins();
    let def = config::load_str(yaml, None, &registry).def.unwrap();
    let engine = Engine::builder().build();
    engine.spawn(def.clone()).unwrap();
    tokio::time::timeout(WAIT, engine.join()).await.unwrap();
    let snap = engine.snapshot(&def.name).await.unwrap();
    assert!(snap.context["last_error"]
        .as_str()
        .unwrap()
        .contains("--db"));
}

/// (event, job id, trace id) of a transition.
type SeenEvent = (String, Option<String>, Option<String>);

/// Records the job id and trace id of every transition's event, and the job hooks.
#[derive(Default)]
struct Seen(
    std::sync::Mutex<Vec<SeenEvent>>,
    std::sync::Mutex<Vec<String>>,
);

impl turnstile_engine::Observer for Seen {
    fn job_claimed(&self, _m: turnstile_engine::observe::MachineRef<'_>, t: &str, id: &str) {
        self.1.lock().unwrap().push(format!("claimed {t} {id}"));
    }
    fn job_completed(&self, _m: turnstile_engine::observe::MachineRef<'_>, t: &str, id: &str) {
        self.1.lock().unwrap().push(format!("completed {t} {id}"));
    }
    fn transition(&self, r: &turnstile_engine::observe::TransitionReport<'_>) {
        self.0.lock().unwrap().push((
            r.event.name.to_string(),
            r.event.job_id.clone(),
            r.event.traceparent.map(|t| t.trace_id_hex()),
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_job_continues_its_enqueuers_trace() {
    let (_r, def, store, _dir) = setup(WORKER);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    store
        .add_job(NewJob {
            job_id: Some("traced".into()),
            job_type: "task".into(),
            machine_type: Some("worker".into()),
            data: Some(json!({"x": 1})),
            traceparent: Some(format!("00-{trace}-00f067aa0ba902b7-01")),
            ..NewJob::default()
        })
        .unwrap();
    let seen = Arc::new(Seen::default());
    let engine = Engine::builder().observer(seen.clone()).build();
    engine.spawn(def).unwrap();
    wait_completed(&store, 1).await;
    engine.shutdown();
    engine.join().await;
    assert_eq!(
        *seen.1.lock().unwrap(),
        ["claimed task traced", "completed task traced"]
    );
    let v = seen.0.lock().unwrap().clone();
    let new_job = v.iter().find(|(e, _, _)| e == "new_job").unwrap();
    assert_eq!(new_job.1.as_deref(), Some("traced"));
    assert_eq!(new_job.2.as_deref(), Some(trace));
    // The completion that follows stays in that trace.
    let done = v.iter().find(|(e, _, _)| e == "success").unwrap();
    assert_eq!(done.2.as_deref(), Some(trace), "{v:?}");
}

const WAITER: &str = r#"
initial_state: start
transitions:
  - {from: start, to: waiting, event: tracked}
  - {from: waiting, to: done, event: all_jobs_complete}
  - {from: waiting, to: late, event: too_slow}
actions:
  start:
    - type: set_context
      key: spawned_jobs
      value: [w1, w2]
      success: tracked
  waiting:
    - type: wait_for_jobs
      timeout: 5
      timeout_event: too_slow
final_states: [done, late]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_jobs_wakes_when_the_last_tracked_job_finishes() {
    let (_r, def, store, _dir) = setup(WAITER);
    for id in ["w1", "w2"] {
        store
            .add_job(NewJob {
                job_id: Some(id.into()),
                job_type: "t".into(),
                max_attempts: Some(1),
                ..NewJob::default()
            })
            .unwrap();
    }
    let engine = Engine::builder().build();
    engine.spawn(def.clone()).unwrap();
    wait_for_state(&engine, &def.name, "waiting", WAIT).await;
    assert!(store.complete_job("w1", None).unwrap());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(engine.machine(&def.name).unwrap().state.as_ref(), "waiting");
    let t0 = Instant::now();
    assert_eq!(
        store.fail_job("w2", "broken").unwrap(),
        turnstile_engine::store::Failed::Dead
    );
    tokio::time::timeout(WAIT, engine.join()).await.unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(200),
        "{:?}",
        t0.elapsed()
    );
    let snap = engine.snapshot(&def.name).await.unwrap();
    assert_eq!(snap.state.as_ref(), "done");
    assert_eq!(snap.context["completed_jobs"], json!(["w1"]));
    assert_eq!(snap.context["failed_jobs"], json!(["w2"]));
    assert_eq!(snap.context["pending_jobs"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_jobs_times_out() {
    let (_r, def, _store, _dir) = setup(&WAITER.replace("timeout: 5", "timeout: 0.3"));
    let engine = Engine::builder().build();
    engine.spawn(def.clone()).unwrap();
    tokio::time::timeout(WAIT, engine.join()).await.unwrap();
    let snap = engine.snapshot(&def.name).await.unwrap();
    assert_eq!(snap.state.as_ref(), "late");
    assert_eq!(snap.context["pending_jobs"], json!(["w1", "w2"]));
}

/// A worker whose processing fails and goes back to waiting without `fail_job`.
const ABANDONING: &str = r#"
initial_state: waiting
metadata:
  machine_name: careless
transitions:
  - {from: waiting, to: processing, event: new_job}
  - {from: processing, to: waiting, event: error}
  - {from: "*", to: stopped, event: stop}
actions:
  waiting:
    - type: check_database_queue
      job_type: task
  processing:
    - type: complete_job
      job_id: "elsewhere-{id}"
final_states: [stopped]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_its_machine_abandons_is_marked_failed() {
    let registry = ActionRegistry::with_builtins();
    let def = config::load_str(ABANDONING, None, &registry).def.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("a.db")).unwrap());
    registry.jobs().set(store.clone());
    add_task(&store, "dropped");
    add_task(&store, "dropped-too");
    let engine = Engine::builder().build();
    engine.spawn(def).unwrap();
    let t0 = Instant::now();
    // Back in `waiting` without completing or failing its job, the machine has abandoned
    // it: the job is marked failed, and not run again. The second job is abandoned when
    // the machine waits once more, with nothing left to claim.
    for id in ["dropped", "dropped-too"] {
        loop {
            let j = store.get_job(id).unwrap().unwrap();
            if j.status == "failed" {
                assert_eq!(j.attempts, 1);
                assert!(j.lease_owner.is_none());
                let msg = j.error_message.unwrap_or_default();
                assert!(
                    msg.contains("abandoned") && msg.contains("careless"),
                    "{msg}"
                );
                break;
            }
            assert!(t0.elapsed() < WAIT, "still {j:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    wait_for_state(&engine, "careless", "waiting", WAIT).await;
    engine.shutdown();
    engine.join().await;
}

fn add_task(store: &SqliteStore, id: &str) {
    store
        .add_job(NewJob {
            job_id: Some(id.into()),
            job_type: "task".into(),
            ..NewJob::default()
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_of_a_stopped_machine_s_job_runs_out() {
    let yaml = r#"
initial_state: waiting
metadata:
  machine_name: quitter
transitions:
  - {from: waiting, to: gone, event: new_job}
actions:
  waiting:
    - type: check_database_queue
      job_type: task
final_states: [gone]
"#;
    let registry = ActionRegistry::with_builtins();
    let def = config::load_str(yaml, None, &registry).def.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let lease = Duration::from_millis(300);
    let store = Arc::new(
        SqliteStore::open_with(
            &path,
            turnstile_engine::store::StoreOptions {
                lease,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    registry.jobs().set(store.clone());
    add_task(&store, "orphan");
    // A job claimed through the store API, held by no machine: renewed until completed.
    add_task(&store, "api");
    assert!(store.claim_job("api", store.owner()).unwrap());
    let engine = Engine::builder().build();
    engine.spawn(def).unwrap();
    tokio::time::timeout(WAIT, engine.join()).await.unwrap();
    assert_eq!(engine.machine("quitter").unwrap().state.as_ref(), "gone");
    // Several renewal periods (lease / 3) later, the stopped machine's job is no longer
    // leased: another process's claim takes it back.
    tokio::time::sleep(lease * 3).await;
    let other = SqliteStore::open_with(
        &path,
        turnstile_engine::store::StoreOptions {
            renew: false,
            ..Default::default()
        },
    )
    .unwrap();
    match other
        .claim_next(
            &turnstile_engine::store::JobFilter::default(),
            other.owner(),
        )
        .unwrap()
    {
        turnstile_engine::store::Claim::Job(j) => {
            assert_eq!(j.job_id, "orphan");
            assert_eq!(j.attempts, 2);
        }
        c => panic!("the stopped machine's job is still leased: {c:?}"),
    }
    let api = other.get_job("api").unwrap().unwrap();
    assert_eq!(api.status, "processing", "{api:?}");
    assert!(api.lease_until.unwrap() > turnstile_engine::store::Timestamp::now());
}

// --- a lost claim cancels the action waiting on it ---------------------------------------

/// A machine that "claims" job J9 through a test action handing out `loss` (as the job
/// actions hand out a store's claim signal), then runs a long command in `processing`.
const LOST_CLAIM: &str = r#"
initial_state: waiting
metadata:
  machine_name: lossy
transitions:
  - {from: waiting, to: processing, event: new_job}
  - {from: processing, to: done, event: ran}
  - {from: processing, to: cancelled, event: gave_up}
  - {from: cancelled, to: processing, event: again}
actions:
  waiting:
    - type: test_claim
  processing:
    - type: bash
      command: "sleep 3; touch {marker}"
      timeout: 60
      success: ran
      error: gave_up
final_states: [done]
"#;

/// Records action ends and errors.
#[derive(Default)]
struct Ends(std::sync::Mutex<Vec<String>>);

impl turnstile_engine::Observer for Ends {
    fn action_finished(
        &self,
        r: &turnstile_engine::observe::ActionReport<'_>,
        end: &turnstile_engine::observe::ActionEnd<'_>,
    ) {
        self.0.lock().unwrap().push(format!(
            "{} {} {:?}",
            r.kind,
            end.outcome.as_str(),
            end.event
        ));
    }
    fn error(&self, r: &turnstile_engine::observe::ErrorReport<'_>) {
        self.0
            .lock()
            .unwrap()
            .push(format!("error {} {}", r.kind.as_str(), r.message));
    }
}

fn lost_claim_machine(
    loss: &turnstile_engine::store::ClaimLoss,
    marker: &std::path::Path,
) -> Arc<MachineDef> {
    use turnstile_engine::actions::{Action, ActionCx, Built, JobChange, Outcome, Step};
    struct TestClaim(turnstile_engine::store::ClaimLoss);
    impl Action for TestClaim {
        fn run(&self, _cx: &mut ActionCx<'_>) -> Step {
            Step::Done(
                Outcome::ok(Some("new_job".into()))
                    .with_job(JobChange::Claimed, "task".into(), "J9".into())
                    .with_claim_loss(Some(self.0.clone())),
            )
        }
    }
    let mut registry = ActionRegistry::with_builtins();
    let loss = loss.clone();
    registry.register(
        "test_claim",
        "test",
        Arc::new(move |_: &mut turnstile_engine::actions::Params<'_>| {
            Some(Built {
                action: Arc::new(TestClaim(loss.clone())),
                emits: vec!["new_job".into()],
                waits: false,
            })
        }),
    );
    let yaml = LOST_CLAIM.replace("{marker}", &marker.display().to_string());
    let loaded = config::load_str(&yaml, None, &registry);
    let errors: Vec<String> = loaded.errors().map(ToString::to_string).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    loaded.def.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_claim_cancels_the_waiting_action_as_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let loss = turnstile_engine::store::ClaimLoss::new();
    let ends = Arc::new(Ends::default());
    let engine = Engine::builder().observer(ends.clone()).build();
    engine.spawn(lost_claim_machine(&loss, &marker)).unwrap();
    wait_for_state(&engine, "lossy", "processing", WAIT).await;
    // The command is running when the claim is lost.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    loss.lose("database or disk is full");
    wait_for_state(&engine, "lossy", "cancelled", WAIT).await;
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    let want = "error action `bash` action failed: job J9: its claim did not commit (database or disk is full); the action was cancelled";
    {
        let seen = ends.0.lock().unwrap();
        assert!(seen.iter().any(|s| s == want), "{seen:#?}");
        assert!(
            seen.iter().any(|s| s == "bash error Some(\"gave_up\")"),
            "{seen:#?}"
        );
    }
    // The command was killed: it never gets to its end.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!marker.exists(), "the cancelled command ran to its end");
    // The signal is spent: the same job's next command is not cancelled.
    engine.try_send("lossy", Event::new("again")).unwrap();
    wait_for_state(&engine, "lossy", "done", WAIT).await;
    assert!(marker.exists());
    engine.shutdown();
    engine.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_lost_before_the_action_waits_cancels_it_when_it_does() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let loss = turnstile_engine::store::ClaimLoss::new();
    // Lost before the machine even takes the claim (a commit that fails at once).
    loss.lose("disk I/O error");
    let ends = Arc::new(Ends::default());
    let engine = Engine::builder().observer(ends.clone()).build();
    engine.spawn(lost_claim_machine(&loss, &marker)).unwrap();
    wait_for_state(&engine, "lossy", "cancelled", WAIT).await;
    let seen = ends.0.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|s| s.contains("job J9: its claim did not commit (disk I/O error)")),
        "{seen:#?}"
    );
    engine.shutdown();
    engine.join().await;
    assert!(!marker.exists());
}

/// A claim that stays durable (its signal never fires) changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_commits_leaves_its_action_alone() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let loss = turnstile_engine::store::ClaimLoss::new();
    let engine = Engine::builder().build();
    engine.spawn(lost_claim_machine(&loss, &marker)).unwrap();
    wait_for_state(&engine, "lossy", "done", WAIT).await;
    assert!(marker.exists());
    engine.join().await;
}

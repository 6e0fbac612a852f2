#![allow(clippy::unwrap_used)]
//! The job and state store contract, run against every backend: SQLite (a temp file) and
//! PostgreSQL (a real server this test starts, one database per test). Each test opens
//! the store as often as it needs (several store objects on one database stand for
//! several processes) through [`Backend::open`].

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, SystemTime};

use serde_json::json;
use support::postgres::Server;
use turnstile_engine::store::{
    Added, Claim, Failed, Heartbeat, JobChange, JobFilter, ListJobs, NewEvent, NewJob, PgStore,
    SqliteStore, Store, StoreError, StoreOptions, Timestamp, CANCELLED, COMPLETED, DEAD, FAILED,
    PENDING, PROCESSING,
};

/// Opens stores on one database of one backend.
#[derive(Clone)]
struct Backend {
    open: Arc<dyn Fn(StoreOptions) -> Arc<dyn Store> + Send + Sync>,
    /// Keeps the database alive (the SQLite file's temp dir).
    _keep: Arc<dyn std::any::Any + Send + Sync>,
}

impl Backend {
    fn open(&self, opts: StoreOptions) -> Arc<dyn Store> {
        (self.open)(opts)
    }

    fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        Backend {
            open: Arc::new(move |o| Arc::new(SqliteStore::open_with(&path, o).unwrap())),
            _keep: Arc::new(dir),
        }
    }

    fn postgres() -> Self {
        // One server for the whole test binary; it stops when the process ends.
        static SERVER: OnceLock<Server> = OnceLock::new();
        let url = SERVER.get_or_init(Server::start).database();
        Backend {
            open: Arc::new(move |o| Arc::new(PgStore::open(&url, o).unwrap())),
            _keep: Arc::new(()),
        }
    }
}

/// Runs each contract test against each backend: `sqlite::NAME`, `postgres::NAME`.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $name() { super::$name(&super::Backend::sqlite()) } )*
        }
        mod postgres {
            $( #[test] fn $name() { super::$name(&super::Backend::postgres()) } )*
        }
    };
}

contract!(
    the_machine_registry_tells_live_stale_and_unregistered_apart,
    events_are_taken_in_order_by_one_consumer_until_marked,
    an_event_sent_by_another_store_object_wakes_the_consumer,
    concurrent_claimers_never_double_claim,
    claims_follow_priority_then_age_and_filters,
    an_expired_lease_returns_the_job_to_pending,
    a_live_process_keeps_its_lease,
    failures_retry_with_exponential_backoff_then_dead_letter,
    a_job_that_keeps_killing_its_workers_is_dead_lettered,
    machine_state_and_events,
    times_are_the_stores_clock_and_print_as_rfc3339,
    a_write_by_another_store_object_wakes_a_waiter,
    transitions_and_states_are_saved_in_one_batch,
    abandoned_jobs_fail_and_released_ones_are_pending_again,
    queue_health_reports_the_oldest_pending_job_and_pending_events,
    a_delayed_job_is_claimable_from_its_run_after,
    a_unique_key_holds_while_its_job_is_pending_or_processing,
    concurrent_adds_of_one_unique_key_add_one_job,
    bulk_adds_are_atomic_and_report_each_job,
    an_instance_id_is_held_by_one_live_process,
    concurrent_registrations_of_one_instance_id_admit_one,
    the_renewal_thread_heartbeats_a_registered_instance,
    saved_states_name_the_instance_that_saved_them,
    instances_are_marked_live_then_retired_apart_from_their_state,
    instances_are_claimed_by_their_owner_and_taken_over_only_from_a_dead_one,
    instance_names_are_held_across_processes_and_released_at_a_clean_exit,
    a_machine_lease_is_taken_renewed_taken_over_and_fences_stale_writes,
    batch_claims_take_each_job_once_across_racing_stores,
    buffered_jobs_are_held_renewed_and_given_back_by_release_held,
    buffered_jobs_of_a_dead_process_are_claimable_after_their_lease,
    buffered_jobs_no_machine_took_go_back_to_the_queue,
    batched_claims_keep_backoff_and_dead_letters,
    completions_of_held_jobs_are_queued_and_written_before_release_held_returns,
    jobs_are_listed_by_pages_and_filters,
    a_pending_job_is_cancelled_and_a_claimed_one_refused,
    dead_and_cancelled_jobs_are_retried_and_others_refused,
    finished_jobs_older_than_the_retention_are_purged,
);

fn job(t: &str) -> NewJob {
    NewJob {
        job_type: t.into(),
        ..NewJob::default()
    }
}

fn any() -> JobFilter {
    JobFilter::default()
}

fn claimed(c: Claim) -> Box<turnstile_engine::store::Job> {
    match c {
        Claim::Job(j) => j,
        Claim::Empty { .. } => panic!("expected a job"),
    }
}

fn no_renew(lease_ms: u64) -> StoreOptions {
    StoreOptions {
        lease: Duration::from_millis(lease_ms),
        renew: false,
        ..StoreOptions::default()
    }
}

/// Three processes `pa`, `pb`, `pc` (incarnations `1-a`, `1-b`, `1-c`) on one store
/// (leases of `lease_ms`, not renewed), each registered live (a heartbeat is stale after
/// `stale`).
fn three_processes(b: &Backend, lease_ms: u64, stale: Duration) -> [Arc<dyn Store>; 3] {
    [("pa", "1-a"), ("pb", "1-b"), ("pc", "1-c")].map(|(id, incarnation)| {
        let s = b.open(StoreOptions {
            instance_id: Some(id.into()),
            ..no_renew(lease_ms)
        });
        s.register_instance(id, incarnation, stale).unwrap();
        s
    })
}

/// An instance of `definition` named `machine`, started or retired.
fn mark(machine: &str, definition: &str, retired: bool) -> turnstile_engine::store::InstanceMark {
    turnstile_engine::store::InstanceMark {
        machine: Arc::from(machine),
        definition: Arc::from(definition),
        retired,
    }
}

fn concurrent_claimers_never_double_claim(b: &Backend) {
    let n = 2000;
    {
        let s = b.open(StoreOptions::default());
        for i in 0..n {
            s.add_job(NewJob {
                job_id: Some(format!("j{i}")),
                ..job("task")
            })
            .unwrap();
        }
    }
    let threads = 6;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let b = b.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                // Each thread has its own connection, as separate processes would.
                let s = b.open(StoreOptions::default());
                barrier.wait();
                let mut got = Vec::new();
                loop {
                    match s.claim_next(&any(), s.owner()).unwrap() {
                        Claim::Job(j) => {
                            // A job takes a moment; without it, one thread claiming in a
                            // tight loop keeps SQLite's lock while the others' busy
                            // handlers sleep (1 ms, 2 ms, 5 ms, ...), and takes every job.
                            std::thread::sleep(Duration::from_micros(300));
                            assert!(s.complete_job(&j.job_id, None).unwrap());
                            got.push(j.job_id);
                        }
                        Claim::Empty { .. } => return got,
                    }
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut per_thread = Vec::new();
    for h in handles {
        let got = h.join().unwrap();
        per_thread.push(got.len());
        all.extend(got);
    }
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), n, "per thread: {per_thread:?}");
    assert_eq!(unique.len(), n);
    let s = b.open(StoreOptions::default());
    assert_eq!(
        s.counts().unwrap(),
        vec![("task".into(), "completed".into(), n as u64)]
    );
    // More than one thread got work (the claims really were concurrent).
    assert!(
        per_thread.iter().filter(|&&c| c > 0).count() > 1,
        "{per_thread:?}"
    );
}

fn claims_follow_priority_then_age_and_filters(b: &Backend) {
    let s = b.open(StoreOptions::default());
    let add = |id: &str, t: &str, m: Option<&str>, p: i64| {
        s.add_job(NewJob {
            job_id: Some(id.into()),
            machine_type: m.map(Into::into),
            priority: Some(p),
            data: Some(json!({"n": id})),
            ..job(t)
        })
        .unwrap();
    };
    add("a", "task", Some("w"), 5);
    add("b", "task", Some("w"), 1);
    add("c", "other", None, 1);
    add("d", "task", Some("x"), 5);
    let f = JobFilter {
        job_type: Some("task".into()),
        machine_type: Some("w".into()),
    };
    let o = s.owner().to_owned();
    assert_eq!(claimed(s.claim_next(&f, &o).unwrap()).job_id, "b");
    let a = claimed(s.claim_next(&f, &o).unwrap());
    assert_eq!(a.job_id, "a");
    assert_eq!(a.data, json!({"n": "a"}));
    assert_eq!(a.status, PROCESSING);
    assert_eq!(a.attempts, 1);
    assert_eq!(a.lease_owner.as_deref(), Some(o.as_str()));
    assert!(matches!(
        s.claim_next(&f, &o).unwrap(),
        Claim::Empty { next_due: Some(_) }
    ));
    // No machine type filter: any machine's job of that type.
    let any_task = JobFilter {
        job_type: Some("task".into()),
        machine_type: None,
    };
    assert_eq!(claimed(s.claim_next(&any_task, &o).unwrap()).job_id, "d");
    assert_eq!(
        s.pending_jobs(&any(), None).unwrap()[0].job_id,
        "c",
        "pending_jobs does not claim"
    );
    assert!(s.claim_job("c", &o).unwrap());
    assert!(!s.claim_job("c", &o).unwrap(), "a second claim by id fails");
    assert!(s.release_job("c", &o).unwrap());
    let c = s.get_job("c").unwrap().unwrap();
    assert_eq!((c.status.as_str(), c.attempts), (PENDING, 0));
    assert_eq!(
        s.list_jobs(&ListJobs {
            status: Some(PROCESSING.into()),
            ..ListJobs::default()
        })
        .unwrap()
        .len(),
        3
    );
    assert!(s
        .add_job(NewJob {
            job_id: Some("a".into()),
            ..job("task")
        })
        .is_err());
}

fn an_expired_lease_returns_the_job_to_pending(b: &Backend) {
    // Lease 400 ms, and the other store's first statement (which may connect) before the
    // claim: the check that the job is held runs inside the lease on a busy machine too.
    let dead_worker = b.open(no_renew(400));
    let other = b.open(no_renew(400));
    assert!(matches!(
        other.claim_next(&any(), "other").unwrap(),
        Claim::Empty { .. }
    ));
    dead_worker.add_job(job("t")).unwrap();
    let j = claimed(dead_worker.claim_next(&any(), "dead").unwrap());
    match other.claim_next(&any(), "other").unwrap() {
        Claim::Empty { next_due } => {
            let due = next_due.expect("the lease expiry is the next due time");
            assert!(due > SystemTime::now());
        }
        Claim::Job(j) => panic!("claimed a leased job {j:?}"),
    }
    std::thread::sleep(Duration::from_millis(600));
    let again = claimed(other.claim_next(&any(), "other").unwrap());
    assert_eq!(again.job_id, j.job_id);
    assert_eq!(again.attempts, 2);
    assert_eq!(again.lease_owner.as_deref(), Some("other"));
}

fn a_live_process_keeps_its_lease(b: &Backend) {
    let live = b.open(StoreOptions {
        lease: Duration::from_millis(300),
        ..StoreOptions::default()
    });
    let other = b.open(no_renew(300));
    live.add_job(job("t")).unwrap();
    let j = claimed(live.claim_next(&any(), live.owner()).unwrap());
    std::thread::sleep(Duration::from_millis(1200));
    assert!(matches!(
        other.claim_next(&any(), "other").unwrap(),
        Claim::Empty { .. }
    ));
    assert!(live
        .complete_job(&j.job_id, Some(&json!({"ok": true})))
        .unwrap());
    let done = other.get_job(&j.job_id).unwrap().unwrap();
    assert_eq!(done.status, "completed");
    assert_eq!(done.result, Some(json!({"ok": true})));
    assert!(
        !live.complete_job(&j.job_id, None).unwrap(),
        "completed once"
    );
}

fn failures_retry_with_exponential_backoff_then_dead_letter(b: &Backend) {
    let s = b.open(StoreOptions {
        backoff_base: Duration::from_millis(100),
        max_attempts: 3,
        ..StoreOptions::default()
    });
    let o = s.owner().to_owned();
    let id = s.add_job(job("t")).unwrap();
    let mut delays = Vec::new();
    for attempt in 1..=3 {
        let j = loop {
            match s.claim_next(&any(), &o).unwrap() {
                Claim::Job(j) => break j,
                Claim::Empty { next_due } => {
                    let due = next_due.expect("a retry is due");
                    let wait = due
                        .duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO);
                    std::thread::sleep(wait + Duration::from_millis(5));
                }
            }
        };
        assert_eq!(j.attempts, attempt);
        // The retry time is counted from when the failure is written, which is within
        // the call (after any commit still running when it is queued).
        let t0 = SystemTime::now();
        let failed = s.fail_job(&id, &format!("boom {attempt}")).unwrap();
        let t1 = SystemTime::now();
        match failed {
            Failed::Retry { at, attempts } => {
                assert_eq!(attempts, attempt);
                delays.push((
                    at.duration_since(t0).unwrap_or_default(),
                    at.duration_since(t1).unwrap_or_default(),
                ));
            }
            Failed::Dead => {
                assert_eq!(attempt, 3);
            }
            Failed::NotFound => panic!("not found"),
        }
    }
    assert_eq!(delays.len(), 2, "{delays:?}");
    // Backoff 100 ms, then 200 ms: at least that from the call's start (less the clock's
    // rounding to ms), at most that plus 30 ms from its end.
    for (&(from_start, from_end), backoff) in delays.iter().zip([100, 200]) {
        assert!(from_start.as_millis() >= backoff - 20, "{delays:?}");
        assert!(from_end.as_millis() <= backoff + 30, "{delays:?}");
    }
    let dead = s.get_job(&id).unwrap().unwrap();
    assert_eq!(dead.status, DEAD);
    assert_eq!(dead.error_message.as_deref(), Some("boom 3"));
    assert!(matches!(
        s.claim_next(&any(), &o).unwrap(),
        Claim::Empty { next_due: None }
    ));
    assert_eq!(s.fail_job(&id, "again").unwrap(), Failed::NotFound);
}

fn a_job_that_keeps_killing_its_workers_is_dead_lettered(b: &Backend) {
    let s = b.open(no_renew(50));
    let id = s
        .add_job(NewJob {
            max_attempts: Some(2),
            ..job("t")
        })
        .unwrap();
    for _ in 0..2 {
        claimed(s.claim_next(&any(), "w").unwrap());
        std::thread::sleep(Duration::from_millis(80));
    }
    assert!(matches!(
        s.claim_next(&any(), "w").unwrap(),
        Claim::Empty { .. }
    ));
    assert_eq!(s.get_job(&id).unwrap().unwrap().status, DEAD);
}

fn machine_state_and_events(b: &Backend) {
    let s = b.open(StoreOptions::default());
    let mut ctx = serde_json::Map::new();
    ctx.insert("n".into(), json!(1));
    s.save_state("w", "waiting", &ctx).unwrap();
    s.save_state("w", "processing", &ctx).unwrap();
    let r = s.load_state("w").unwrap().unwrap();
    assert_eq!(r.current_state.as_deref(), Some("processing"));
    assert_eq!(r.context, Some(json!({"n": 1})));
    assert_eq!(s.machines().unwrap().len(), 1);
    s.record_event(Some("c"), "w", "go", Some("j1"), Some(&json!({"a": 1})))
        .unwrap();
    s.record_event(None, "w", "stop", None, None).unwrap();
    assert_eq!(s.clear_events("w", &["go".into()]).unwrap(), 1);
    let ev = s.events(Some("w"), 10).unwrap();
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[1].status, "processed");
    assert_eq!(ev[0].status, "pending");
}

fn times_are_the_stores_clock_and_print_as_rfc3339(b: &Backend) {
    let s = b.open(StoreOptions::default());
    let before = SystemTime::now() - Duration::from_secs(2);
    let id = s.add_job(job("t")).unwrap();
    claimed(s.claim_next(&any(), s.owner()).unwrap());
    assert!(s.complete_job(&id, None).unwrap());
    let j = s.get_job(&id).unwrap().unwrap();
    let after = SystemTime::now() + Duration::from_secs(2);
    for (what, t) in [
        ("created_at", j.created_at),
        ("started_at", j.started_at),
        ("completed_at", j.completed_at),
    ] {
        let t = t.unwrap_or_else(|| panic!("{what} is not set: {j:?}"));
        assert!(
            (before..after).contains(&t.system_time()),
            "{what} {t} is not now"
        );
    }
    let v = serde_json::to_value(&j).unwrap();
    let text = v["created_at"].as_str().unwrap();
    assert!(
        text.len() == 24 && text.ends_with('Z') && &text[10..11] == "T",
        "{text}"
    );
}

fn a_write_by_another_store_object_wakes_a_waiter(b: &Backend) {
    let waiter = b.open(StoreOptions::default());
    let other = b.open(StoreOptions::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let notify = waiter.notify().clone();
    // Let the backend's watch start (SQLite's first reading, PostgreSQL's LISTEN).
    std::thread::sleep(Duration::from_millis(500));
    for round in 0..3 {
        let woken = rt.block_on(async {
            let n = notify.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            let t0 = std::time::Instant::now();
            let adder = std::thread::spawn({
                let other = other.clone();
                move || other.add_job(job("t")).unwrap()
            });
            let woke = tokio::time::timeout(Duration::from_secs(5), n)
                .await
                .is_ok();
            adder.join().unwrap();
            woke.then(|| t0.elapsed())
        });
        let waited = woken.unwrap_or_else(|| panic!("round {round}: a job added by another store object did not wake the waiter within 5 s"));
        assert!(waited < Duration::from_secs(2), "round {round}: {waited:?}");
    }
    assert_eq!(waiter.pending_jobs(&any(), None).unwrap().len(), 3);
}

fn transitions_and_states_are_saved_in_one_batch(b: &Backend) {
    use turnstile_engine::store::{SavedStates, TransitionRecord};
    let s = b.open(StoreOptions::default());
    let rec = |m: &str, from: &str, to: &str| TransitionRecord {
        id: 0,
        machine_name: m.into(),
        from_state: from.into(),
        to_state: to.into(),
        event: "go".into(),
        job_id: Some("j1".into()),
        created_at: None,
    };
    let mut states = SavedStates::new();
    let mut ctx = serde_json::Map::new();
    ctx.insert("k".into(), json!("v"));
    states.insert(Arc::from("m1"), (Arc::from("b"), ctx, true));
    s.persist_batch(&states, &[rec("m1", "a", "b"), rec("m2", "x", "y")])
        .unwrap();
    let all = s.transitions(None, 10).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(
        (all[0].machine_name.as_str(), all[1].machine_name.as_str()),
        ("m2", "m1"),
        "newest first"
    );
    assert!(all.iter().all(|t| t.created_at.is_some() && t.id > 0));
    assert_eq!(s.transitions(Some("m1"), 10).unwrap().len(), 1);
    let m1 = s.load_state("m1").unwrap().unwrap();
    assert_eq!(m1.current_state.as_deref(), Some("b"));
    assert_eq!(m1.context, Some(json!({"k": "v"})));
    assert!(m1.last_activity.is_some());
    // Saved paused; a plain save is not.
    assert!(m1.paused);
    s.save_state("m1", "c", &serde_json::Map::new()).unwrap();
    assert!(!s.load_state("m1").unwrap().unwrap().paused);
    assert_eq!(s.load_state("nope").unwrap(), None);
}

fn abandoned_jobs_fail_and_released_ones_are_pending_again(b: &Backend) {
    let s = b.open(StoreOptions::default());
    let o = s.owner().to_owned();
    let a = s.add_job(job("t")).unwrap();
    let j = claimed(s.claim_next(&any(), &o).unwrap());
    assert_eq!(j.job_id, a);
    assert!(s.abandon_job(&a, "went back to waiting").unwrap());
    let failed = s.get_job(&a).unwrap().unwrap();
    assert_eq!(failed.status, "failed");
    assert_eq!(
        failed.error_message.as_deref(),
        Some("went back to waiting")
    );
    assert!(
        !s.abandon_job(&a, "again").unwrap(),
        "only a processing job"
    );
    let r = s.add_job(job("t")).unwrap();
    claimed(s.claim_next(&any(), &o).unwrap());
    assert!(
        !s.release_job(&r, "someone else").unwrap(),
        "only the owner's"
    );
    assert!(s.release_job(&r, &o).unwrap());
    let back = s.get_job(&r).unwrap().unwrap();
    assert_eq!((back.status.as_str(), back.attempts), (PENDING, 0));
    assert_eq!(back.lease_owner, None);
    assert_eq!(
        s.counts().unwrap(),
        vec![
            ("t".into(), "failed".into(), 1),
            ("t".into(), "pending".into(), 1)
        ]
    );
}

fn a_delayed_job_is_claimable_from_its_run_after(b: &Backend) {
    let s = b.open(StoreOptions::default());
    let o = s.owner().to_owned();
    let at = SystemTime::now() + Duration::from_millis(600);
    let id = s
        .add_job(NewJob {
            run_after: Some(Timestamp::from(at)),
            ..job("t")
        })
        .unwrap();
    let stored = s.get_job(&id).unwrap().unwrap();
    assert_eq!(stored.status, PENDING);
    let next = stored.next_attempt_at.expect("run_after is stored");
    assert!(
        next.as_ms().abs_diff(Timestamp::from(at).as_ms()) <= 1,
        "{next} vs {}",
        Timestamp::from(at)
    );
    // Not claimable early, by either claim; the claimer learns when it is due.
    match s.claim_next(&any(), &o).unwrap() {
        Claim::Empty { next_due } => {
            let due = next_due.expect("the delayed job is due at its run_after");
            let off = due.duration_since(at).unwrap_or_else(|e| e.duration());
            assert!(
                off <= Duration::from_millis(1),
                "next_due {due:?}, run_after {at:?}"
            );
        }
        Claim::Job(j) => panic!("claimed a job before its run_after: {j:?}"),
    }
    // A job without a delay, added later, goes first.
    let now = s.add_job(job("t")).unwrap();
    assert_eq!(claimed(s.claim_next(&any(), &o).unwrap()).job_id, now);
    std::thread::sleep(
        at.duration_since(SystemTime::now()).unwrap_or_default() + Duration::from_millis(20),
    );
    let j = claimed(s.claim_next(&any(), &o).unwrap());
    assert_eq!((j.job_id.as_str(), j.attempts), (id.as_str(), 1));
    // A run_after in the past is no delay.
    let past = s
        .add_job(NewJob {
            run_after: Some(Timestamp::from(SystemTime::now() - Duration::from_secs(60))),
            ..job("t")
        })
        .unwrap();
    assert_eq!(claimed(s.claim_next(&any(), &o).unwrap()).job_id, past);
}

fn a_unique_key_holds_while_its_job_is_pending_or_processing(b: &Backend) {
    let s = b.open(StoreOptions {
        max_attempts: 2,
        backoff_base: Duration::from_millis(1),
        ..StoreOptions::default()
    });
    let o = s.owner().to_owned();
    let keyed = |k: &str| NewJob {
        unique_key: Some(k.into()),
        ..job("t")
    };
    let duplicate_of = |r: Result<String, StoreError>| match r {
        Err(StoreError::Duplicate { job_id, unique_key }) => (job_id, unique_key),
        other => panic!("expected a duplicate, got {other:?}"),
    };
    let first = s.add_job(keyed("k")).unwrap();
    assert_eq!(
        s.get_job(&first).unwrap().unwrap().unique_key.as_deref(),
        Some("k")
    );
    // Pending: refused, naming the existing job.
    assert_eq!(
        duplicate_of(s.add_job(keyed("k"))),
        (first.clone(), "k".into())
    );
    // Other keys and jobs without a key are not affected.
    s.add_job(keyed("other")).unwrap();
    s.add_job(job("t")).unwrap();
    s.add_job(job("t")).unwrap();
    // A duplicate job id is still an error of its own.
    assert!(matches!(
        s.add_job(NewJob {
            job_id: Some(first.clone()),
            ..keyed("fresh")
        }),
        Err(StoreError::Invalid(_))
    ));
    // Processing, and pending again after a failed attempt: still refused.
    assert!(s.claim_job(&first, &o).unwrap());
    assert_eq!(duplicate_of(s.add_job(keyed("k"))).0, first);
    assert!(matches!(
        s.fail_job(&first, "x").unwrap(),
        Failed::Retry { .. }
    ));
    assert_eq!(duplicate_of(s.add_job(keyed("k"))).0, first);
    // Completed: the key is free.
    assert!(s.complete_job(&first, None).unwrap());
    let second = s.add_job(keyed("k")).unwrap();
    assert_ne!(second, first);
    assert_eq!(s.get_job(&first).unwrap().unwrap().status, COMPLETED);
    // Dead: free too.
    assert!(s.claim_job(&second, &o).unwrap());
    assert!(matches!(
        s.fail_job(&second, "x").unwrap(),
        Failed::Retry { .. }
    ));
    std::thread::sleep(Duration::from_millis(20));
    assert!(s.claim_job(&second, &o).unwrap());
    assert_eq!(s.fail_job(&second, "y").unwrap(), Failed::Dead);
    let third = s.add_job(keyed("k")).unwrap();
    // Failed (abandoned): free too.
    assert!(s.claim_job(&third, &o).unwrap());
    assert!(s.abandon_job(&third, "gone").unwrap());
    s.add_job(keyed("k")).unwrap();
    let with_k = s
        .list_jobs(&ListJobs::default())
        .unwrap()
        .into_iter()
        .filter(|j| j.unique_key.as_deref() == Some("k"))
        .map(|j| j.status)
        .collect::<Vec<_>>();
    assert_eq!(with_k, vec!["pending", "failed", "dead", "completed"]);
}

fn concurrent_adds_of_one_unique_key_add_one_job(b: &Backend) {
    let threads = 8;
    for round in 0..3 {
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let b = b.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    // A store object per thread, as separate processes would have.
                    let s = b.open(StoreOptions::default());
                    barrier.wait();
                    s.add_job(NewJob {
                        job_id: Some(format!("r{round}-t{t}")),
                        unique_key: Some(format!("key-{round}")),
                        ..job("t")
                    })
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let added: Vec<&String> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(added.len(), 1, "round {round}: {results:?}");
        for r in &results {
            match r {
                Ok(_) => {}
                Err(StoreError::Duplicate { job_id, .. }) => assert_eq!(job_id, added[0]),
                Err(e) => panic!("round {round}: {e}"),
            }
        }
    }
    let s = b.open(StoreOptions::default());
    assert_eq!(s.pending_jobs(&any(), None).unwrap().len(), 3);
}

fn bulk_adds_are_atomic_and_report_each_job(b: &Backend) {
    let s = b.open(StoreOptions::default());
    assert_eq!(s.add_jobs(Vec::new()).unwrap(), Vec::new());
    let held = s
        .add_job(NewJob {
            unique_key: Some("held".into()),
            ..job("t")
        })
        .unwrap();
    let with = |id: &str, key: Option<&str>| NewJob {
        job_id: Some(id.into()),
        unique_key: key.map(Into::into),
        priority: Some(3),
        data: Some(json!({"id": id})),
        ..job("bulk")
    };
    let out = s
        .add_jobs(vec![
            with("a", None),
            with("b", Some("k")),
            with("c", Some("k")),
            with("d", Some("held")),
            NewJob {
                job_id: None,
                run_after: Some(Timestamp::from(SystemTime::now() + Duration::from_secs(60))),
                ..job("bulk")
            },
        ])
        .unwrap();
    assert_eq!(out.len(), 5);
    let added = |id: &str| Added::Added { job_id: id.into() };
    let existing = |id: &str| Added::Existing { job_id: id.into() };
    assert_eq!(
        out[..4],
        [added("a"), added("b"), existing("b"), existing(&held)]
    );
    assert!(matches!(&out[4], Added::Added { job_id } if !job_id.is_empty()));
    let e = s.get_job(out[4].job_id()).unwrap().unwrap();
    assert!(e.next_attempt_at.is_some());
    let a = s.get_job("a").unwrap().unwrap();
    assert_eq!((a.priority, a.data.clone()), (3, json!({"id": "a"})));
    assert!(s.get_job("c").unwrap().is_none());
    assert!(s.get_job("d").unwrap().is_none());
    // A duplicate id anywhere: an error, and nothing of the batch is added.
    for ids in [["x", "y", "a"], ["x", "y", "y"]] {
        let r = s.add_jobs(ids.iter().map(|id| with(id, Some(id))).collect());
        assert!(matches!(r, Err(StoreError::Invalid(_))), "{ids:?}: {r:?}");
        assert!(s.get_job("x").unwrap().is_none(), "{ids:?}");
    }
    // A larger batch.
    let many: Vec<NewJob> = (0..2000).map(|i| with(&format!("m{i}"), None)).collect();
    let out = s.add_jobs(many).unwrap();
    assert!(out.iter().all(|a| matches!(a, Added::Added { .. })));
    assert_eq!(out[1999].job_id(), "m1999");
    let bulk = JobFilter {
        job_type: Some("bulk".into()),
        machine_type: None,
    };
    assert_eq!(s.pending_jobs(&bulk, None).unwrap().len(), 2000 + 3);
}

fn queue_health_reports_the_oldest_pending_job_and_pending_events(b: &Backend) {
    let s = b.open(StoreOptions::default());
    let empty = s.queue_health().unwrap();
    assert!(empty.oldest_pending.is_empty(), "{empty:?}");
    assert_eq!(empty.events_pending, 0);
    let before = SystemTime::now() - Duration::from_secs(2);
    s.add_job(job("a")).unwrap();
    s.add_job(job("a")).unwrap();
    s.add_job(job("b")).unwrap();
    let taken = claimed(
        s.claim_next(
            &JobFilter {
                job_type: Some("b".into()),
                machine_type: None,
            },
            s.owner(),
        )
        .unwrap(),
    );
    assert_eq!(taken.job_type, "b");
    s.record_event(None, "m", "go", None, None).unwrap();
    s.record_event(None, "m", "stop", None, None).unwrap();
    s.clear_events("m", &["stop".into()]).unwrap();
    let h = s.queue_health().unwrap();
    let types: Vec<&str> = h.oldest_pending.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, ["a"], "only types with pending jobs: {h:?}");
    assert!(h.oldest_pending[0].1.system_time() > before, "{h:?}");
    assert_eq!(h.events_pending, 1);
    if let Some((open, busy)) = h.connections {
        assert!(open >= 1 && busy <= open, "{h:?}");
    }
}

fn an_instance_id_is_held_by_one_live_process(b: &Backend) {
    let stale = Duration::from_millis(1500);
    let (a, other) = (b.open(no_renew(1500)), b.open(no_renew(1500)));
    // Fresh: registered, with this process's pid and host.
    a.register_instance("w1", "1-a", stale).unwrap();
    let rows = a.instances().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].incarnation, "1-a");
    assert_eq!(rows[0].pid, i64::from(std::process::id()));
    assert!(!rows[0].host.is_empty() && rows[0].heartbeat_at.is_some());
    // Registering again as the same incarnation is fine; another one is refused, named.
    a.register_instance("w1", "1-a", stale).unwrap();
    match other.register_instance("w1", "2-b", stale) {
        Err(StoreError::InstanceInUse(h)) => {
            assert_eq!(h.instance_id, "w1");
            assert_eq!(h.incarnation, "1-a");
            assert!(h.age < stale, "{h:?}");
            let msg = StoreError::InstanceInUse(h).to_string();
            assert!(
                msg.starts_with("instance id `w1` is in use by a live process (pid "),
                "{msg}"
            );
        }
        r => panic!("a live holder's id was given away: {r:?}"),
    }
    // Another id is free.
    other.register_instance("w2", "2-b", stale).unwrap();
    // A heartbeat keeps it live past the stale limit.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(a.heartbeat_instance("w1", "1-a").unwrap(), Heartbeat::Ours);
    std::thread::sleep(Duration::from_millis(800));
    assert!(matches!(
        other.register_instance("w1", "2-b", stale),
        Err(StoreError::InstanceInUse(_))
    ));
    // Without heartbeats for the stale limit, it is dead: taken over.
    std::thread::sleep(Duration::from_millis(1600));
    other.register_instance("w1", "2-b", stale).unwrap();
    // The old incarnation's heartbeat finds it taken; its unregister does nothing.
    match a.heartbeat_instance("w1", "1-a").unwrap() {
        Heartbeat::Taken(h) => assert_eq!(h.incarnation, "2-b"),
        Heartbeat::Ours => panic!("a taken-over id heartbeats as the old incarnation's"),
    }
    assert!(!a.unregister_instance("w1", "1-a").unwrap());
    // The holder's unregister frees the id at once.
    assert!(other.unregister_instance("w1", "2-b").unwrap());
    a.register_instance("w1", "3-c", stale).unwrap();
    let ids: Vec<_> = a
        .instances()
        .unwrap()
        .into_iter()
        .map(|i| (i.instance_id, i.incarnation))
        .collect();
    assert_eq!(
        ids,
        [("w1".into(), "3-c".into()), ("w2".into(), "2-b".into())]
    );
}

fn concurrent_registrations_of_one_instance_id_admit_one(b: &Backend) {
    const N: usize = 8;
    let stores: Vec<_> = (0..N).map(|_| b.open(no_renew(30_000))).collect();
    let barrier = Arc::new(Barrier::new(N));
    let threads: Vec<_> = stores
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                match s.register_instance("shared", &format!("{i}-x"), Duration::from_secs(30)) {
                    Ok(()) => true,
                    Err(StoreError::InstanceInUse(_)) => false,
                    Err(e) => panic!("registration failed: {e}"),
                }
            })
        })
        .collect();
    let won = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|w| *w)
        .count();
    assert_eq!(won, 1, "{won} registrations of one id succeeded");
}

fn the_renewal_thread_heartbeats_a_registered_instance(b: &Backend) {
    // Lease 600 ms: renewed (and heartbeaten) every 200 ms, with no job held.
    let opts = StoreOptions {
        lease: Duration::from_millis(600),
        ..StoreOptions::default()
    };
    let s = b.open(opts);
    s.register_instance("beats", "1-a", Duration::from_millis(600))
        .unwrap();
    let other = b.open(no_renew(600));
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            matches!(
                other.register_instance("beats", "2-b", Duration::from_millis(600)),
                Err(StoreError::InstanceInUse(_))
            ),
            "a heartbeaten id went stale"
        );
    }
    // Unregistered: the heartbeats stop and the row is gone.
    assert!(s.unregister_instance("beats", "1-a").unwrap());
    std::thread::sleep(Duration::from_millis(450));
    assert!(s.instances().unwrap().is_empty());
}

fn instances_are_marked_live_then_retired_apart_from_their_state(b: &Backend) {
    use turnstile_engine::store::SavedStates;
    let s = b.open(StoreOptions::default());
    // A config machine's row has no definition: never listed.
    s.save_state("config", "a", &serde_json::Map::new())
        .unwrap();
    // Marked before any state is saved (the row is created), then saved.
    s.mark_instances(&[mark("i1", "job", false), mark("i2", "job", false)])
        .unwrap();
    let mut states = SavedStates::new();
    let ctx = |v: serde_json::Value| v.as_object().unwrap().clone();
    states.insert(
        Arc::from("i1"),
        (Arc::from("working"), ctx(json!({"n": 1})), false),
    );
    states.insert(
        Arc::from("i2"),
        (Arc::from("waiting"), ctx(json!({"n": 2})), true),
    );
    s.persist_batch(&states, &[]).unwrap();
    // Saved first, marked after: the state is kept.
    s.save_state("i3", "waiting", &ctx(json!({"n": 3})))
        .unwrap();
    s.mark_instances(&[mark("i3", "other", false)]).unwrap();
    let live = s.live_instances().unwrap();
    let names: Vec<_> = live.iter().map(|r| r.machine_name.as_str()).collect();
    assert_eq!(names, ["i1", "i2", "i3"]);
    assert_eq!(live[0].definition.as_deref(), Some("job"));
    assert_eq!(live[0].current_state.as_deref(), Some("working"));
    assert_eq!(live[0].context, Some(json!({"n": 1})));
    assert!(!live[0].paused && live[1].paused && !live[0].retired);
    assert_eq!(live[2].definition.as_deref(), Some("other"));
    assert_eq!(live[2].current_state.as_deref(), Some("waiting"));
    // A state save leaves the marks alone.
    s.save_state("i1", "done", &ctx(json!({"n": 9}))).unwrap();
    assert_eq!(s.live_instances().unwrap().len(), 3);
    // Retired (in order: the later mark of a name wins): kept, not live.
    s.mark_instances(&[
        mark("i1", "job", true),
        mark("i2", "job", true),
        mark("i2", "job", false),
        mark("i3", "other", false),
        mark("i3", "other", true),
    ])
    .unwrap();
    let live = s.live_instances().unwrap();
    assert_eq!(
        live.iter()
            .map(|r| r.machine_name.as_str())
            .collect::<Vec<_>>(),
        ["i2"]
    );
    let i1 = s.load_state("i1").unwrap().unwrap();
    assert!(i1.retired);
    assert_eq!(i1.definition.as_deref(), Some("job"));
    assert_eq!(i1.current_state.as_deref(), Some("done"));
    assert_eq!(i1.context, Some(json!({"n": 9})));
    let config = s.load_state("config").unwrap().unwrap();
    assert_eq!((config.definition, config.retired), (None, false));
    assert_eq!(s.machines().unwrap().len(), 4);
    // Nothing to mark: nothing written.
    s.mark_instances(&[]).unwrap();
}

fn saved_states_name_the_instance_that_saved_them(b: &Backend) {
    use turnstile_engine::store::SavedStates;
    let s = b.open(StoreOptions {
        instance_id: Some("pod-7".into()),
        ..StoreOptions::default()
    });
    let ctx = serde_json::Map::new();
    s.save_state("one", "a", &ctx).unwrap();
    let mut states = SavedStates::new();
    states.insert(Arc::from("two"), (Arc::from("b"), ctx.clone(), false));
    s.persist_batch(&states, &[]).unwrap();
    for m in s.machines().unwrap() {
        assert_eq!(m.instance_id.as_deref(), Some("pod-7"), "{m:?}");
    }
    assert_eq!(s.machines().unwrap().len(), 2);
    // A store opened without one writes none.
    b.open(StoreOptions::default())
        .save_state("one", "c", &ctx)
        .unwrap();
    assert_eq!(s.load_state("one").unwrap().unwrap().instance_id, None);
}

fn a_machine_lease_is_taken_renewed_taken_over_and_fences_stale_writes(b: &Backend) {
    use turnstile_engine::store::Acquired;
    let lease = Duration::from_millis(300);
    let (a, c) = (b.open(no_renew(300)), b.open(no_renew(300)));
    // Acquire: free, epoch 1; the other holder is refused while it lasts.
    assert_eq!(
        a.acquire_lease("m", "A", lease).unwrap(),
        Acquired::Held { epoch: 1 }
    );
    match c.acquire_lease("m", "C", lease).unwrap() {
        Acquired::Taken {
            holder,
            epoch,
            expires_in,
        } => {
            assert_eq!((holder.as_str(), epoch), ("A", 1));
            assert!(expires_in <= lease, "{expires_in:?}");
        }
        other => panic!("taken by A, got {other:?}"),
    }
    // Renew: only the holder under its epoch.
    assert!(a.renew_lease("m", "A", 1, lease).unwrap());
    assert!(!c.renew_lease("m", "C", 1, lease).unwrap());
    assert!(!a.renew_lease("m", "A", 2, lease).unwrap());
    // Fenced writes pass while the epoch holds.
    a.fence("m", 1);
    let ctx = serde_json::Map::new();
    a.save_state("m", "s1", &ctx).unwrap();
    // Takeover after expiry moves the epoch on.
    std::thread::sleep(lease + Duration::from_millis(100));
    assert_eq!(
        c.acquire_lease("m", "C", lease).unwrap(),
        Acquired::Held { epoch: 2 }
    );
    c.fence("m", 2);
    c.save_state("m", "s2", &ctx).unwrap();
    // The stale holder: renewal refused, its writes refused (state and batch), nothing
    // of it written; its release refused.
    assert!(!a.renew_lease("m", "A", 1, lease).unwrap());
    let refused = a.save_state("m", "stale", &ctx).unwrap_err();
    assert!(
        matches!(&refused, StoreError::Fenced { machine, epoch: 1 } if machine == "m"),
        "{refused}"
    );
    let mut states = turnstile_engine::store::SavedStates::new();
    states.insert("m".into(), ("stale".into(), ctx.clone(), false));
    states.insert("other".into(), ("free".into(), ctx.clone(), false));
    let err = a.persist_batch(&states, &[]).unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    assert_eq!(
        a.load_state("m").unwrap().unwrap().current_state.as_deref(),
        Some("s2")
    );
    // An unfenced machine of the same batch was written.
    assert_eq!(
        a.load_state("other")
            .unwrap()
            .unwrap()
            .current_state
            .as_deref(),
        Some("free")
    );
    assert!(!a.release_lease("m", "A", 1).unwrap());
    // Release by the holder frees it at once: taken again with the next epoch.
    assert!(c.release_lease("m", "C", 2).unwrap());
    assert_eq!(
        a.acquire_lease("m", "A", lease).unwrap(),
        Acquired::Held { epoch: 3 }
    );
    let leases = a.leases().unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(
        (leases[0].holder.as_deref(), leases[0].epoch),
        (Some("A"), 3)
    );
}

fn batched(n: usize, lease_ms: u64) -> StoreOptions {
    StoreOptions {
        lease: Duration::from_millis(lease_ms),
        claim_batch: n,
        ..StoreOptions::default()
    }
}

/// Jobs by status and lease owner, read by `s`.
fn by_status(s: &Arc<dyn Store>, status: &str) -> Vec<turnstile_engine::store::Job> {
    s.list_jobs(&ListJobs {
        status: Some(status.into()),
        ..ListJobs::default()
    })
    .unwrap()
}

fn batch_claims_take_each_job_once_across_racing_stores(b: &Backend) {
    let n = 2000;
    {
        let s = b.open(StoreOptions::default());
        let jobs = (0..n)
            .map(|i| NewJob {
                job_id: Some(format!("j{i}")),
                ..job("task")
            })
            .collect();
        s.add_jobs(jobs).unwrap();
    }
    // Two store objects (two processes), three claimers (machines) each.
    let stores = [b.open(batched(8, 30_000)), b.open(batched(8, 30_000))];
    let barrier = Arc::new(Barrier::new(6));
    let handles: Vec<_> = (0..6)
        .map(|t| {
            let s = stores[t % 2].clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let mut got = Vec::new();
                loop {
                    match s.claim_next(&any(), s.owner()).unwrap() {
                        Claim::Job(j) => {
                            assert_eq!(j.status, PROCESSING);
                            assert_eq!(j.lease_owner.as_deref(), Some(s.owner()));
                            std::thread::sleep(Duration::from_micros(500));
                            assert!(s.complete_job(&j.job_id, None).unwrap());
                            got.push(j.job_id.clone());
                        }
                        Claim::Empty { .. } => return got,
                    }
                }
            })
        })
        .collect();
    let per_thread: Vec<Vec<String>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    drop(stores);
    let all: Vec<&String> = per_thread.iter().flatten().collect();
    let unique: HashSet<&&String> = all.iter().collect();
    assert_eq!(all.len(), n);
    assert_eq!(unique.len(), n);
    let per_store = [
        per_thread[0].len() + per_thread[2].len() + per_thread[4].len(),
        per_thread[1].len() + per_thread[3].len() + per_thread[5].len(),
    ];
    assert!(per_store.iter().all(|&c| c > 0), "{per_store:?}");
    let s = b.open(StoreOptions::default());
    assert_eq!(
        s.counts().unwrap(),
        vec![("task".into(), COMPLETED.into(), n as u64)]
    );
}

fn buffered_jobs_are_held_renewed_and_given_back_by_release_held(b: &Backend) {
    let s = b.open(batched(5, 300));
    let other = b.open(no_renew(300));
    for i in 0..5 {
        s.add_job(NewJob {
            job_id: Some(format!("j{i}")),
            ..job("t")
        })
        .unwrap();
    }
    let first = claimed(s.claim_next(&any(), s.owner()).unwrap());
    // One claim took all five: held by this owner, one handed out.
    let held = by_status(&other, PROCESSING);
    assert_eq!(held.len(), 5);
    assert!(held
        .iter()
        .all(|j| j.lease_owner.as_deref() == Some(s.owner())));
    // Past the first lease: the buffered jobs were renewed, nobody else can take them.
    std::thread::sleep(Duration::from_millis(700));
    assert!(matches!(
        other.claim_next(&any(), "other").unwrap(),
        Claim::Empty { .. }
    ));
    let now = Timestamp::from(SystemTime::now());
    assert!(by_status(&other, PROCESSING)
        .iter()
        .all(|j| j.lease_until.is_some_and(|t| t > now)));
    // The next asker is served from the buffer, in claim order.
    let second = claimed(s.claim_next(&any(), s.owner()).unwrap());
    assert_ne!(second.job_id, first.job_id);
    assert_eq!(by_status(&other, PROCESSING).len(), 5);
    // Stopping: every held job goes back at once, attempts not counted.
    assert_eq!(s.release_held().unwrap(), 5);
    let pending = by_status(&other, PENDING);
    assert_eq!(pending.len(), 5);
    assert!(pending
        .iter()
        .all(|j| j.attempts == 0 && j.lease_owner.is_none()));
    // The buffer is empty: the next claim reads the queue again.
    let again = claimed(s.claim_next(&any(), s.owner()).unwrap());
    assert_eq!(again.attempts, 1);
}

fn buffered_jobs_of_a_dead_process_are_claimable_after_their_lease(b: &Backend) {
    // Lease 400 ms: the check that the buffered jobs are held must run inside it, on a
    // busy machine too (each store's first statement, which may connect, comes first).
    let dead = b.open(StoreOptions {
        renew: false,
        ..batched(4, 400)
    });
    let other = b.open(no_renew(400));
    assert!(matches!(
        other.claim_next(&any(), "other").unwrap(),
        Claim::Empty { .. }
    ));
    for _ in 0..4 {
        dead.add_job(job("t")).unwrap();
    }
    let _first = claimed(dead.claim_next(&any(), dead.owner()).unwrap());
    assert!(matches!(
        other.claim_next(&any(), "other").unwrap(),
        Claim::Empty { next_due: Some(_) }
    ));
    std::thread::sleep(Duration::from_millis(600));
    for _ in 0..4 {
        let j = claimed(other.claim_next(&any(), "other").unwrap());
        assert_eq!(j.attempts, 2);
    }
    // The dead process's buffer is stale: none of its jobs is handed out again.
    assert!(matches!(
        dead.claim_next(&any(), dead.owner()).unwrap(),
        Claim::Empty { .. }
    ));
}

fn buffered_jobs_no_machine_took_go_back_to_the_queue(b: &Backend) {
    // Lease 300 ms: buffered jobs wait at most a second (the prefetch hold) for a machine.
    let s = b.open(batched(3, 300));
    let other = b.open(no_renew(300));
    for _ in 0..3 {
        s.add_job(job("t")).unwrap();
    }
    let _first = claimed(s.claim_next(&any(), s.owner()).unwrap());
    assert!(matches!(
        other.claim_next(&any(), "other").unwrap(),
        Claim::Empty { .. }
    ));
    std::thread::sleep(Duration::from_millis(1600));
    let a = claimed(other.claim_next(&any(), "other").unwrap());
    let c = claimed(other.claim_next(&any(), "other").unwrap());
    // Given back without counting the attempt.
    assert_eq!((a.attempts, c.attempts), (1, 1));
}

fn completions_of_held_jobs_are_queued_and_written_before_release_held_returns(b: &Backend) {
    let s = b.open(batched(4, 30_000));
    let other = b.open(StoreOptions::default());
    for i in 0..4 {
        s.add_job(NewJob {
            job_id: Some(format!("j{i}")),
            ..job("t")
        })
        .unwrap();
    }
    let first = claimed(s.claim_next(&any(), s.owner()).unwrap());
    assert_eq!(first.job_id, "j0");
    // Not queued: a job not held here, or by a store without batched claims.
    assert!(!s.complete_held("absent", None));
    assert!(!other.complete_held(&first.job_id, None));
    assert!(other.claim_buffered(&any()).is_none());
    assert!(s.complete_held(&first.job_id, Some(&json!({"ok": 1}))));
    // No longer held: a second completion is not queued.
    assert!(!s.complete_held(&first.job_id, None));
    // The other three were claimed with the first: handed out in claim order, no claim.
    let rest: Vec<String> = std::iter::from_fn(|| s.claim_buffered(&any()))
        .map(|j| j.job_id)
        .collect();
    assert_eq!(rest, ["j1", "j2", "j3"]);
    assert!(s.claim_buffered(&any()).is_none());
    for id in &rest {
        assert!(s.complete_held(id, None));
    }
    // Stopping: the queued completions are written before release_held returns, and
    // nothing is left to give back.
    assert_eq!(s.release_held().unwrap(), 0);
    assert_eq!(by_status(&other, COMPLETED).len(), 4);
    assert_eq!(
        other.get_job("j0").unwrap().unwrap().result,
        Some(json!({"ok": 1}))
    );
}

fn batched_claims_keep_backoff_and_dead_letters(b: &Backend) {
    let s = b.open(StoreOptions {
        backoff_base: Duration::from_millis(100),
        max_attempts: 2,
        ..batched(8, 30_000)
    });
    let o = s.owner().to_owned();
    let id = s.add_job(job("t")).unwrap();
    let j = claimed(s.claim_next(&any(), &o).unwrap());
    assert_eq!(j.attempts, 1);
    let Failed::Retry { at, attempts: 1 } = s.fail_job(&id, "boom 1").unwrap() else {
        panic!("expected a retry");
    };
    // In its backoff: not claimable, and the backoff's end is the next due time.
    match s.claim_next(&any(), &o).unwrap() {
        Claim::Empty { next_due } => {
            let due = Timestamp::from(next_due.expect("the backoff's end is due")).as_ms();
            assert!(
                (due - Timestamp::from(at).as_ms()).abs() <= 5,
                "{due} vs {at:?}"
            );
        }
        Claim::Job(j) => panic!("claimed during its backoff: {j:?}"),
    }
    std::thread::sleep(
        at.duration_since(SystemTime::now()).unwrap_or_default() + Duration::from_millis(10),
    );
    let j = claimed(s.claim_next(&any(), &o).unwrap());
    assert_eq!(j.attempts, 2);
    assert_eq!(s.fail_job(&id, "boom 2").unwrap(), Failed::Dead);
    assert_eq!(s.get_job(&id).unwrap().unwrap().status, DEAD);
}

fn ev(target: &str, ty: &str, job: &str) -> NewEvent {
    NewEvent {
        source: Some("sender".into()),
        target: target.into(),
        event_type: ty.into(),
        job_id: Some(job.into()),
        payload: Some(json!({"job": job})),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
    }
}

fn the_machine_registry_tells_live_stale_and_unregistered_apart(b: &Backend) {
    let s = b.open(no_renew(60_000));
    let names = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    s.register_machines("inst-a", "inc-a", &names(&["m1", "m2"]))
        .unwrap();
    s.register_machines("inst-b", "inc-b", &names(&["m1"]))
        .unwrap();
    let hosts = s.machine_hosts("m1", Duration::from_secs(60)).unwrap();
    let mut incs: Vec<_> = hosts.iter().map(|h| h.incarnation.as_str()).collect();
    incs.sort_unstable();
    assert_eq!(incs, ["inc-a", "inc-b"]);
    let a = hosts.iter().find(|h| h.incarnation == "inc-a").unwrap();
    assert_eq!(a.instance_id, "inst-a");
    assert_eq!(a.pid, i64::from(std::process::id()));
    assert!(a.heartbeat_at.is_some());
    assert!(s
        .machine_hosts("nobody", Duration::from_secs(60))
        .unwrap()
        .is_empty());
    // A registration older than `stale_after` is not live.
    std::thread::sleep(Duration::from_millis(300));
    assert!(s
        .machine_hosts("m2", Duration::from_millis(100))
        .unwrap()
        .is_empty());
    // The heartbeat writes it again; names left out are deleted.
    s.register_machines("inst-a", "inc-a", &names(&["m2"]))
        .unwrap();
    assert_eq!(
        s.machine_hosts("m2", Duration::from_millis(100))
            .unwrap()
            .len(),
        1
    );
    let m1 = s.machine_hosts("m1", Duration::from_secs(60)).unwrap();
    assert_eq!(m1.len(), 1, "{m1:?}");
    assert_eq!(m1[0].incarnation, "inc-b");
    // A clean exit deletes them.
    s.unregister_machines("inc-b").unwrap();
    assert!(s
        .machine_hosts("m1", Duration::from_secs(60))
        .unwrap()
        .is_empty());
    assert_eq!(
        s.machine_hosts("m2", Duration::from_secs(60))
            .unwrap()
            .len(),
        1
    );
}

fn events_are_taken_in_order_by_one_consumer_until_marked(b: &Backend) {
    let s = b.open(no_renew(60_000));
    let other = b.open(no_renew(60_000));
    let ids: Vec<i64> = (0..5)
        .map(|i| s.send_event(&ev("m", "go", &i.to_string())).unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    s.send_event(&ev("elsewhere", "go", "x")).unwrap();
    let lease = Duration::from_millis(400);
    // The first consumer takes the lease; the events come in id order, with what was sent.
    let got = s.take_events("m", "c1", lease, 3).unwrap().unwrap();
    assert_eq!(got.iter().map(|e| e.id).collect::<Vec<_>>(), ids[..3]);
    assert_eq!(got[0].event_type, "go");
    assert_eq!(got[0].target, "m");
    assert_eq!(got[0].source.as_deref(), Some("sender"));
    assert_eq!(got[0].job_id.as_deref(), Some("0"));
    assert_eq!(got[0].payload, Some(json!({"job": "0"})));
    assert_eq!(
        got[0].traceparent.as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    // Another consumer gets nothing while the lease holds.
    assert_eq!(other.take_events("m", "c2", lease, 10).unwrap(), None);
    // Unmarked events are handed over again (a redelivery has the same id).
    let again = s.take_events("m", "c1", lease, 10).unwrap().unwrap();
    assert_eq!(again.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    // Marked ones are not; marking twice counts once.
    assert_eq!(s.mark_processed(&ids[..2]).unwrap(), 2);
    assert_eq!(s.mark_processed(&ids[..2]).unwrap(), 0);
    let rest = s.take_events("m", "c1", lease, 10).unwrap().unwrap();
    assert_eq!(rest.iter().map(|e| e.id).collect::<Vec<_>>(), ids[2..]);
    // After the lease expires, another consumer continues from the first unmarked event.
    std::thread::sleep(lease + Duration::from_millis(200));
    let taken = other.take_events("m", "c2", lease, 10).unwrap().unwrap();
    assert_eq!(taken.iter().map(|e| e.id).collect::<Vec<_>>(), ids[2..]);
    assert_eq!(s.take_events("m", "c1", lease, 10).unwrap(), None);
    // A registration without `m` drops c2's consumer lease at once (a singleton given up).
    other.register_machines("i", "c2", &[]).unwrap();
    assert!(s.take_events("m", "c1", lease, 10).unwrap().is_some());
    assert_eq!(s.queue_health().unwrap().events_pending, 4);
}

fn an_event_sent_by_another_store_object_wakes_the_consumer(b: &Backend) {
    let consumer = b.open(StoreOptions::default());
    let sender = b.open(StoreOptions::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let notify = consumer.event_notify().clone();
    // Let the backend's watch start (SQLite's first reading, PostgreSQL's LISTEN).
    std::thread::sleep(Duration::from_millis(500));
    for round in 0..3 {
        let woke = rt.block_on(async {
            let n = notify.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            let t0 = std::time::Instant::now();
            let s = sender.clone();
            let t = std::thread::spawn(move || s.send_event(&ev("m", "go", "1")).unwrap());
            let woke = tokio::time::timeout(Duration::from_secs(5), n)
                .await
                .is_ok();
            t.join().unwrap();
            woke.then(|| t0.elapsed())
        });
        let waited = woke.unwrap_or_else(|| {
            panic!("round {round}: an event sent by another store object did not wake the consumer within 5 s")
        });
        assert!(waited < Duration::from_secs(2), "round {round}: {waited:?}");
    }
    let got = consumer
        .take_events("m", "c", Duration::from_secs(5), 10)
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 3);
}

/// A store holding one job of each status an operator meets: `pending`, `claimed`
/// (processing, with a traceparent), `completed`, `cancelled`, `dead` (with its error), and
/// `failed` (abandoned).
fn every_status(b: &Backend) -> Arc<dyn Store> {
    let s = b.open(StoreOptions {
        max_attempts: 1,
        ..StoreOptions::default()
    });
    let o = s.owner().to_owned();
    for id in [
        "pending",
        "claimed",
        "completed",
        "cancelled",
        "dead",
        "failed",
    ] {
        s.add_job(NewJob {
            job_id: Some(id.into()),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            data: Some(json!({"password": "hunter2", "n": id})),
            ..job(if id == "pending" { "other" } else { "task" })
        })
        .unwrap();
    }
    for id in ["claimed", "completed", "dead", "failed"] {
        assert!(s.claim_job(id, &o).unwrap(), "{id}");
    }
    assert!(s
        .complete_job("completed", Some(&json!({"ok": true})))
        .unwrap());
    assert_eq!(s.fail_job("dead", "boom").unwrap(), Failed::Dead);
    assert!(s.abandon_job("failed", "given up").unwrap());
    assert!(matches!(
        s.cancel_job("cancelled").unwrap(),
        JobChange::Changed(_)
    ));
    s
}

fn status_of(s: &Arc<dyn Store>, id: &str) -> String {
    s.get_job(id).unwrap().unwrap().status
}

fn jobs_are_listed_by_pages_and_filters(b: &Backend) {
    let s = every_status(b);
    let ids = |q: ListJobs| -> Vec<String> {
        s.list_jobs(&q)
            .unwrap()
            .into_iter()
            .map(|j| j.job_id)
            .collect()
    };
    let newest_first = [
        "failed",
        "dead",
        "cancelled",
        "completed",
        "claimed",
        "pending",
    ];
    assert_eq!(ids(ListJobs::default()), newest_first);
    // Pages of two, each after the last row id of the one before, cover every job once.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s
            .list_jobs(&ListJobs {
                limit: Some(2),
                after,
                ..ListJobs::default()
            })
            .unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        seen.extend(page.into_iter().map(|j| j.job_id));
    }
    assert_eq!(seen, newest_first);
    for status in [PENDING, PROCESSING, COMPLETED, CANCELLED, DEAD, FAILED] {
        let listed = s
            .list_jobs(&ListJobs {
                status: Some(status.into()),
                ..ListJobs::default()
            })
            .unwrap();
        assert_eq!(listed.len(), 1, "{status}");
        assert_eq!(listed[0].status, status);
    }
    assert_eq!(
        ids(ListJobs {
            job_type: Some("other".into()),
            ..ListJobs::default()
        }),
        ["pending"]
    );
    let claimed = s.get_job("claimed").unwrap().unwrap();
    assert_eq!(claimed.attempts, 1);
    assert_eq!(claimed.lease_owner.as_deref(), Some(s.owner()));
    assert!(claimed.traceparent.is_some());
    let dead = s.get_job("dead").unwrap().unwrap();
    assert_eq!(dead.error_message.as_deref(), Some("boom"));
    assert!(dead.lease_owner.is_none());
    assert!(s.get_job("nope").unwrap().is_none());
}

fn a_pending_job_is_cancelled_and_a_claimed_one_refused(b: &Backend) {
    let s = every_status(b);
    let o = s.owner().to_owned();
    let cancelled = s.get_job("cancelled").unwrap().unwrap();
    assert_eq!(cancelled.status, CANCELLED);
    assert!(cancelled.completed_at.is_some());
    // Kept, listed, never claimed.
    assert_eq!(claimed(s.claim_next(&any(), &o).unwrap()).job_id, "pending");
    assert!(matches!(
        s.claim_next(&any(), &o).unwrap(),
        Claim::Empty { .. }
    ));
    assert!(!s.claim_job("cancelled", &o).unwrap());
    // Only a pending job is cancelled; nothing else changes.
    for (id, status) in [
        ("claimed", PROCESSING),
        ("pending", PROCESSING),
        ("completed", COMPLETED),
        ("dead", DEAD),
        ("failed", FAILED),
        ("cancelled", CANCELLED),
    ] {
        assert_eq!(
            s.cancel_job(id).unwrap(),
            JobChange::Refused {
                status: status.into()
            },
            "{id}"
        );
        assert_eq!(status_of(&s, id), status, "{id}");
    }
    assert_eq!(s.cancel_job("nope").unwrap(), JobChange::NotFound);
    // A cancelled job frees its unique key.
    let first = s
        .add_job(NewJob {
            unique_key: Some("k".into()),
            ..job("task")
        })
        .unwrap();
    assert!(matches!(
        s.cancel_job(&first).unwrap(),
        JobChange::Changed(_)
    ));
    let second = s
        .add_job(NewJob {
            unique_key: Some("k".into()),
            ..job("task")
        })
        .unwrap();
    assert_ne!(first, second);
    // ... and its retry is refused while another job holds the key.
    assert_eq!(
        s.retry_job(&first).unwrap(),
        JobChange::KeyHeld {
            job_id: second.clone(),
            unique_key: "k".into()
        }
    );
    assert_eq!(status_of(&s, &first), CANCELLED);
}

fn dead_and_cancelled_jobs_are_retried_and_others_refused(b: &Backend) {
    let s = every_status(b);
    let o = s.owner().to_owned();
    for (id, status) in [
        ("pending", PENDING),
        ("claimed", PROCESSING),
        ("completed", COMPLETED),
        ("failed", FAILED),
    ] {
        assert_eq!(
            s.retry_job(id).unwrap(),
            JobChange::Refused {
                status: status.into()
            },
            "{id}"
        );
        assert_eq!(status_of(&s, id), status, "{id}");
    }
    assert_eq!(s.retry_job("nope").unwrap(), JobChange::NotFound);
    for id in ["dead", "cancelled"] {
        let JobChange::Changed(j) = s.retry_job(id).unwrap() else {
            panic!("{id} was not retried");
        };
        assert_eq!(j.status, PENDING, "{id}");
        assert_eq!(j.attempts, 0, "{id}");
        assert!(
            j.completed_at.is_none() && j.next_attempt_at.is_none(),
            "{j:?}"
        );
        assert_eq!(*j, s.get_job(id).unwrap().unwrap());
    }
    // The last error is kept.
    assert_eq!(
        s.get_job("dead").unwrap().unwrap().error_message.as_deref(),
        Some("boom")
    );
    // Claimable at once, with a fresh budget of attempts.
    let mut got: Vec<String> = (0..3)
        .map(|_| claimed(s.claim_next(&any(), &o).unwrap()))
        .map(|j| {
            assert_eq!(j.attempts, 1);
            j.job_id
        })
        .collect();
    got.sort();
    assert_eq!(got, ["cancelled", "dead", "pending"]);
}

fn finished_jobs_older_than_the_retention_are_purged(b: &Backend) {
    let s = every_status(b);
    assert_eq!(s.purge_jobs(Duration::from_secs(3600)).unwrap(), 0);
    assert_eq!(s.list_jobs(&ListJobs::default()).unwrap().len(), 6);
    // SQLite's `CURRENT_TIMESTAMP` has whole seconds.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(s.purge_jobs(Duration::from_millis(500)).unwrap(), 3);
    let mut left: Vec<String> = s
        .list_jobs(&ListJobs::default())
        .unwrap()
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    left.sort();
    assert_eq!(left, ["claimed", "failed", "pending"]);
    for gone in turnstile_engine::store::admin::PURGEABLE {
        assert!(by_status(&s, gone).is_empty(), "{gone}");
    }
    assert_eq!(s.purge_jobs(Duration::ZERO).unwrap(), 0);
}

fn instances_are_claimed_by_their_owner_and_taken_over_only_from_a_dead_one(b: &Backend) {
    use turnstile_engine::store::SavedStates;
    let stale = Duration::from_millis(1000);
    let [a, bb, c] = three_processes(b, 60_000, stale);
    // A's instances: i1, i2 of `job`, i3 of `other`, all saved; i4 marked, never saved.
    a.mark_instances(&[
        mark("i1", "job", false),
        mark("i2", "job", false),
        mark("i3", "other", false),
        mark("i4", "job", false),
    ])
    .unwrap();
    let mut states = SavedStates::new();
    let ctx = |v: serde_json::Value| v.as_object().unwrap().clone();
    for (m, n) in [("i1", 1), ("i2", 2), ("i3", 3)] {
        states.insert(
            Arc::from(m),
            (Arc::from("s"), ctx(json!({ "n": n })), m == "i2"),
        );
    }
    a.persist_batch(&states, &[]).unwrap();
    let names = |v: &[turnstile_engine::store::MachineRecord]| {
        v.iter().map(|r| r.machine_name.clone()).collect::<Vec<_>>()
    };
    let defs = ["job".to_owned(), "other".to_owned()];
    // Another live process's instances are neither restored nor taken over elsewhere.
    assert!(bb.claim_instances(&defs, None).unwrap().is_empty());
    assert!(bb.claim_instances(&defs, Some(stale)).unwrap().is_empty());
    // Its owner restores its own, of the definitions asked for, with a state saved.
    let own = a.claim_instances(&["job".to_owned()], None).unwrap();
    assert_eq!(names(&own), ["i1", "i2"]);
    assert_eq!(own[1].context, Some(json!({"n": 2})));
    assert!(own[1].paused && !own[0].paused);
    // Who runs an instance: the owner, live, with a saved state; unknown names and
    // config machines are no instances.
    let o = bb.instance_owner("i1", stale).unwrap().unwrap();
    assert_eq!(
        (o.instance_id.as_deref(), o.live, o.saved),
        (Some("pa"), true, true)
    );
    let o = bb.instance_owner("i4", stale).unwrap().unwrap();
    assert!(!o.saved);
    a.save_state("config", "x", &serde_json::Map::new())
        .unwrap();
    assert_eq!(bb.instance_owner("config", stale).unwrap(), None);
    assert_eq!(bb.instance_owner("nope", stale).unwrap(), None);
    // Pending events of all of an owner's instances, in id order, in one read.
    let e1 = bb.send_event(&ev("i1", "go", "")).unwrap();
    let ex = bb.send_event(&ev("config", "go", "")).unwrap();
    let e2 = bb.send_event(&ev("i2", "go", "")).unwrap();
    let e3 = bb.send_event(&ev("i1", "more", "")).unwrap();
    let ids =
        |v: Vec<turnstile_engine::store::StoredEvent>| v.iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(a.take_instance_events("pa", 10).unwrap()), [e1, e2, e3]);
    assert_eq!(ids(a.take_instance_events("pa", 2).unwrap()), [e1, e2]);
    assert!(bb.take_instance_events("pb", 10).unwrap().is_empty());
    assert!(!ids(a.take_instance_events("pa", 10).unwrap()).contains(&ex));
    a.mark_processed(&[e1]).unwrap();
    assert_eq!(ids(a.take_instance_events("pa", 10).unwrap()), [e2, e3]);

    // A dies (no heartbeat for longer than the stale limit); B and C stay live.
    std::thread::sleep(stale + Duration::from_millis(300));
    assert_eq!(bb.heartbeat_instance("pb", "1-b").unwrap(), Heartbeat::Ours);
    assert_eq!(c.heartbeat_instance("pc", "1-c").unwrap(), Heartbeat::Ours);
    let o = bb.instance_owner("i1", stale).unwrap().unwrap();
    assert_eq!((o.live, o.saved), (false, true));
    // B and C take over at once: each instance goes to one of them.
    let barrier = Arc::new(Barrier::new(2));
    let takers: Vec<_> = [bb.clone(), c.clone()]
        .into_iter()
        .map(|s| {
            let (barrier, defs) = (barrier.clone(), defs.to_vec());
            std::thread::spawn(move || {
                barrier.wait();
                s.claim_instances(&defs, Some(Duration::from_millis(1000)))
                    .unwrap()
            })
        })
        .collect();
    let taken: Vec<Vec<_>> = takers.into_iter().map(|t| t.join().unwrap()).collect();
    let mut all: Vec<String> = taken.iter().flat_map(|v| names(v)).collect();
    all.sort();
    assert_eq!(all, ["i1", "i2", "i3"], "{taken:?}");
    // Nothing more to take; the new owner takes the pending events from the first
    // unmarked one.
    assert!(bb.claim_instances(&defs, Some(stale)).unwrap().is_empty());
    assert!(c.claim_instances(&defs, Some(stale)).unwrap().is_empty());
    let i1_owner = if names(&taken[0]).contains(&"i1".to_owned()) {
        ("pb", &bb)
    } else {
        ("pc", &c)
    };
    let theirs = ids(i1_owner.1.take_instance_events(i1_owner.0, 10).unwrap());
    assert!(theirs.contains(&e3) && !theirs.contains(&e1), "{theirs:?}");
    assert!(a.take_instance_events("pa", 10).unwrap().is_empty());
    // The old owner, come back, restores none of them, and its writes to them are not
    // written: a state save, a retirement.
    assert!(a.claim_instances(&defs, None).unwrap().is_empty());
    a.save_state("i1", "stale", &serde_json::Map::new())
        .unwrap();
    a.mark_instances(&[mark("i1", "job", true)]).unwrap();
    let i1 = a.load_state("i1").unwrap().unwrap();
    assert_eq!(i1.current_state.as_deref(), Some("s"));
    assert_eq!(i1.instance_id.as_deref(), Some(i1_owner.0));
    assert!(!i1.retired);
    // Its owner's own writes are.
    i1_owner
        .1
        .mark_instances(&[mark("i1", "job", true)])
        .unwrap();
    assert!(a.load_state("i1").unwrap().unwrap().retired);
}

fn instance_names_are_held_across_processes_and_released_at_a_clean_exit(b: &Backend) {
    use turnstile_engine::store::SavedStates;
    let stale = Duration::from_millis(1000);
    let [a, bb, c] = three_processes(b, 1000, stale);
    // A free name is taken; its owner takes it again (a restart), another live process not
    // (started, no state saved yet: its owner is live).
    assert!(a.claim_instance_name("n1", "job").unwrap());
    assert!(a.claim_instance_name("n1", "job").unwrap());
    assert!(!bb.claim_instance_name("n1", "job").unwrap());
    let n1 = a.load_state("n1").unwrap().unwrap();
    assert_eq!(
        (
            n1.instance_id.as_deref(),
            n1.definition.as_deref(),
            n1.retired
        ),
        (Some("pa"), Some("job"), false)
    );
    // A config machine's state row (no definition) and a retired instance are free.
    a.save_state("cfg", "x", &serde_json::Map::new()).unwrap();
    assert!(bb.claim_instance_name("cfg", "job").unwrap());
    a.mark_instances(&[mark("n1", "job", true)]).unwrap();
    assert!(bb.claim_instance_name("n1", "job").unwrap());
    assert_eq!(
        a.load_state("n1").unwrap().unwrap().instance_id.as_deref(),
        Some("pb")
    );
    // Two processes taking one name at once: one wins.
    for round in 0..5 {
        let name = format!("race-{round}");
        let barrier = Arc::new(Barrier::new(2));
        let racers: Vec<_> = [bb.clone(), c.clone()]
            .into_iter()
            .map(|s| {
                let (barrier, name) = (barrier.clone(), name.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    s.claim_instance_name(&name, "job").unwrap()
                })
            })
            .collect();
        let won: Vec<bool> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "{name}: {won:?}");
    }
    // A's saved instance i1 and never-saved i2; a clean exit releases the live ones only
    // (not B's, not a retired one).
    assert!(a.claim_instance_name("i1", "job").unwrap());
    assert!(a.claim_instance_name("i2", "job").unwrap());
    assert!(a.claim_instance_name("i3", "job").unwrap());
    let mut states = SavedStates::new();
    for m in ["i1", "i3"] {
        states.insert(
            Arc::from(m),
            (Arc::from("s"), serde_json::Map::new(), false),
        );
    }
    a.persist_batch(&states, &[]).unwrap();
    a.mark_instances(&[mark("i3", "job", true)]).unwrap();
    assert_eq!(a.release_instances().unwrap(), 2);
    assert_eq!(a.load_state("i1").unwrap().unwrap().instance_id, None);
    assert_eq!(
        a.load_state("i3").unwrap().unwrap().instance_id.as_deref(),
        Some("pa")
    );
    a.unregister_instance("pa", "1-a").unwrap();
    // A released instance with a state holds its name (it waits for a taker); one never
    // saved does not (nothing would run it).
    assert!(!c.claim_instance_name("i1", "job").unwrap());
    assert!(c.claim_instance_name("i2", "job").unwrap());
    // A live process with the definition takes the released one over at its next look
    // (no owner to judge dead); one of two at once; then nothing is left to take.
    let defs = ["job".to_owned()];
    let barrier = Arc::new(Barrier::new(2));
    let takers: Vec<_> = [bb.clone(), c.clone()]
        .into_iter()
        .map(|s| {
            let (barrier, defs) = (barrier.clone(), defs.to_vec());
            std::thread::spawn(move || {
                barrier.wait();
                s.claim_instances(&defs, Some(Duration::from_secs(3600)))
                    .unwrap()
            })
        })
        .collect();
    let taken: Vec<String> = takers
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .map(|r| r.machine_name)
        .collect();
    assert_eq!(taken, ["i1"]);
    assert!(bb.claim_instances(&defs, Some(stale)).unwrap().is_empty());
    // With no live process left, the next one to start restores released instances.
    let d = b.open(StoreOptions {
        instance_id: Some("pd".into()),
        ..no_renew(1000)
    });
    assert!(d.claim_instances(&defs, None).unwrap().is_empty());
    let owner = a.load_state("i1").unwrap().unwrap().instance_id.unwrap();
    let holder = if owner == "pb" { &bb } else { &c };
    assert!(holder.release_instances().unwrap() >= 1);
    let restored = d.claim_instances(&defs, None).unwrap();
    assert!(
        restored.iter().any(|r| r.machine_name == "i1"),
        "{restored:?}"
    );
    // A dead owner's never-saved instance frees its name; a saved one's holds it.
    assert!(bb.claim_instance_name("dead-a", "job").unwrap());
    std::thread::sleep(stale + Duration::from_millis(300));
    assert_eq!(c.heartbeat_instance("pc", "1-c").unwrap(), Heartbeat::Ours);
    assert!(c.claim_instance_name("dead-a", "job").unwrap());
}

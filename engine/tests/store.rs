#![allow(clippy::unwrap_used)]
//! The SQLite job store: atomic claims across connections, leases, retries, dead letters,
//! and a schema statemachine-engine's own code reads and writes.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime};

use serde_json::json;
use turnstile_engine::store::{
    Claim, Failed, JobFilter, JobStore, ListJobs, NewJob, SqliteStore, StateStore, StoreOptions,
    DEAD, PENDING, PROCESSING,
};

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

#[test]
fn concurrent_claimers_on_one_file_never_double_claim() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let n = 2000;
    {
        let s = SqliteStore::open(&path).unwrap();
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
            let path = path.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                // Each thread has its own connection, as separate processes would.
                let s = SqliteStore::open(&path).unwrap();
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
    let s = SqliteStore::open(&path).unwrap();
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

#[test]
fn claims_follow_priority_then_age_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("q.db")).unwrap();
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

#[test]
fn an_expired_lease_returns_the_job_to_pending() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lease.db");
    let dead_worker = SqliteStore::open_with(&path, no_renew(150)).unwrap();
    let other = SqliteStore::open_with(&path, no_renew(150)).unwrap();
    dead_worker.add_job(job("t")).unwrap();
    let j = claimed(dead_worker.claim_next(&any(), "dead").unwrap());
    match other.claim_next(&any(), "other").unwrap() {
        Claim::Empty { next_due } => {
            let due = next_due.expect("the lease expiry is the next due time");
            assert!(due > SystemTime::now());
        }
        Claim::Job(j) => panic!("claimed a leased job {j:?}"),
    }
    std::thread::sleep(Duration::from_millis(250));
    let again = claimed(other.claim_next(&any(), "other").unwrap());
    assert_eq!(again.job_id, j.job_id);
    assert_eq!(again.attempts, 2);
    assert_eq!(again.lease_owner.as_deref(), Some("other"));
}

#[test]
fn a_live_process_keeps_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("renew.db");
    let live = SqliteStore::open_with(
        &path,
        StoreOptions {
            lease: Duration::from_millis(300),
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let other = SqliteStore::open_with(&path, no_renew(300)).unwrap();
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

#[test]
fn failures_retry_with_exponential_backoff_then_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open_with(
        &dir.path().join("retry.db"),
        StoreOptions {
            backoff_base: Duration::from_millis(100),
            max_attempts: 3,
            ..StoreOptions::default()
        },
    )
    .unwrap();
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

#[test]
fn a_job_that_keeps_killing_its_workers_is_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open_with(&dir.path().join("poison.db"), no_renew(50)).unwrap();
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

#[test]
fn machine_state_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("state.db")).unwrap();
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

// --- compatibility with statemachine-engine's own code ---------------------------------------

fn python_has_sme() -> bool {
    Command::new("python3")
        .args(["-c", "import statemachine_engine.database.models"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn python(script: &str, db: &Path) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn columns(db: &Path, table: &str) -> Vec<(String, String)> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut st = c
        .prepare(&format!(
            "SELECT name, type FROM pragma_table_info('{table}') ORDER BY cid"
        ))
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

const SME_JOB_COLUMNS: &[(&str, &str)] = &[
    ("id", "INTEGER"),
    ("job_id", "TEXT"),
    ("job_type", "TEXT"),
    ("machine_type", "TEXT"),
    ("source_job_id", "TEXT"),
    ("data", "TEXT"),
    ("result", "TEXT"),
    ("priority", "INTEGER"),
    ("status", "TEXT"),
    ("created_at", "TIMESTAMP"),
    ("started_at", "TIMESTAMP"),
    ("completed_at", "TIMESTAMP"),
    ("error_message", "TEXT"),
    ("metadata", "TEXT"),
];

#[test]
fn a_fresh_database_has_statemachine_engines_columns_first() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fresh.db");
    drop(SqliteStore::open(&db).unwrap());
    let cols = columns(&db, "jobs");
    let want: Vec<(String, String)> = SME_JOB_COLUMNS
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    assert_eq!(cols[..want.len()], want[..]);
    let extra: Vec<&str> = cols[want.len()..].iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        extra,
        [
            "lease_owner",
            "lease_until",
            "attempts",
            "max_attempts",
            "next_attempt_at",
            "traceparent"
        ]
    );
}

/// A database created by statemachine-engine 1.0.91's code gets Turnstile's columns added
/// in place; jobs written by either side are read and claimed by the other.
#[test]
fn statemachine_engine_and_turnstile_share_one_file() {
    assert!(
        python_has_sme(),
        "statemachine-engine 1.0.91 is not installed for python3: .ci/install.sh installs it \
         (pip install statemachine-engine==1.0.91)"
    );
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pipeline.db");
    // Its own schema and its own insert.
    python(
        "import sys\nfrom statemachine_engine.database.models.base import Database\n\
         from statemachine_engine.database.models.job import JobModel\n\
         m = JobModel(Database(sys.argv[1]))\n\
         m.create_job('py-1', 'task', machine_type='w', data={'x': 1, 'path': '/a b'})\n",
        &db,
    );
    let before: Vec<(String, String)> = columns(&db, "jobs");
    assert_eq!(before.len(), SME_JOB_COLUMNS.len());
    let s = SqliteStore::open(&db).unwrap();
    let after = columns(&db, "jobs");
    assert_eq!(after[..before.len()], before[..]);
    let j = claimed(
        s.claim_next(
            &JobFilter {
                job_type: Some("task".into()),
                machine_type: Some("w".into()),
            },
            s.owner(),
        )
        .unwrap(),
    );
    assert_eq!(j.job_id, "py-1");
    assert_eq!(j.data, json!({"x": 1, "path": "/a b"}));
    assert_eq!(j.max_attempts, 3, "NULL max_attempts means the default");
    assert!(s.complete_job("py-1", None).unwrap());

    // Turnstile's insert, read and claimed by its code (the table has more columns now).
    s.add_job(NewJob {
        job_id: Some("rs-1".into()),
        machine_type: Some("w".into()),
        data: Some(json!({"y": [1, 2]})),
        ..job("task")
    })
    .unwrap();
    let out = python(
        "import sys, json\nfrom statemachine_engine.database.models.base import Database\n\
         from statemachine_engine.database.models.job import JobModel\n\
         m = JobModel(Database(sys.argv[1]))\n\
         j = m.get_next_job('task', 'w')\n\
         print(json.dumps([j['job_id'], j['data'], m.get_job('py-1')['status']]))\n\
         m.complete_job(j['job_id'])\n",
        &db,
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v, json!(["rs-1", {"y": [1, 2]}, "completed"]));
    assert_eq!(s.get_job("rs-1").unwrap().unwrap().status, "completed");
}

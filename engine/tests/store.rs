#![allow(clippy::unwrap_used)]
//! What only the SQLite store does: a schema statemachine-engine's own code reads and
//! writes. What every backend does (claims, leases, retries, dead letters, state) is
//! `store_contract.rs`.

use std::path::Path;
use std::process::Command;

use serde_json::json;
use turnstile_engine::store::{Claim, JobFilter, JobStore, NewJob, SqliteStore};

fn job(t: &str) -> NewJob {
    NewJob {
        job_type: t.into(),
        ..NewJob::default()
    }
}

fn claimed(c: Claim) -> Box<turnstile_engine::store::Job> {
    match c {
        Claim::Job(j) => j,
        Claim::Empty { .. } => panic!("expected a job"),
    }
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
            "traceparent",
            "unique_key"
        ]
    );
}

/// The unique-key rule is the database's, not only the store's: a writer that does not
/// look first (another tool, plain SQL) is refused too, and only while the holder is
/// pending or processing.
#[test]
fn the_database_refuses_a_second_live_job_with_one_unique_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let s = SqliteStore::open(&db).unwrap();
    s.add_job(NewJob {
        job_id: Some("a".into()),
        unique_key: Some("k".into()),
        ..job("t")
    })
    .unwrap();
    let c = rusqlite::Connection::open(&db).unwrap();
    let insert = |id: &str| {
        c.execute(
            "INSERT INTO jobs (job_id, job_type, status, unique_key) VALUES (?1, 't', 'pending', 'k')",
            [id],
        )
    };
    let e = insert("b").unwrap_err().to_string();
    assert!(
        e.contains("UNIQUE constraint failed: jobs.unique_key"),
        "{e}"
    );
    c.execute(
        "UPDATE jobs SET status = 'completed' WHERE job_id = 'a'",
        [],
    )
    .unwrap();
    insert("b").unwrap();
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

/// Processes that open one new file at once all open it: the switch to WAL and the
/// migration wait for each other instead of failing with "database is locked" (8 openers,
/// 20 fresh files; 6 of 320 opens failed before).
#[test]
fn stores_opening_one_new_file_at_once_all_open() {
    use std::sync::{Arc, Barrier};
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        let barrier = Arc::new(Barrier::new(8));
        let openers: Vec<_> = (0..8)
            .map(|_| {
                let (path, barrier) = (path.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    SqliteStore::open(&path).map(|_| ())
                })
            })
            .collect();
        for o in openers {
            if let Err(e) = o.join().unwrap() {
                panic!("round {round}: {e}");
            }
        }
    }
}

#![allow(clippy::unwrap_used)]
//! What only the PostgreSQL store does: its versioned schema. Replicas that start at once
//! migrate a fresh database once; a database at an older version is brought up to date
//! with its rows kept; a database at a newer version than this binary is refused.

mod support;

use std::sync::{Arc, Barrier};

use support::postgres::Server;
use turnstile_engine::store::postgres::schema::{MIGRATIONS, VERSION};
use turnstile_engine::store::{JobStore, NewJob, PgStore, StoreError, StoreOptions};

fn db_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

#[test]
fn the_schema_is_migrated_once_by_replicas_starting_together_and_old_versions_catch_up() {
    let server = Server::start();

    // Three replicas on a fresh database at once.
    let url = server.database();
    let barrier = Arc::new(Barrier::new(3));
    let opened: Vec<_> = (0..3)
        .map(|_| {
            let (url, barrier) = (url.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                PgStore::open(&url, StoreOptions::default()).map(|_| ())
            })
        })
        .collect();
    for t in opened {
        t.join().unwrap().unwrap();
    }
    let versions = server
        .psql(
            db_name(&url),
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM turnstile_schema",
        )
        .unwrap();
    let want: Vec<String> = (1..=VERSION).map(|v| v.to_string()).collect();
    assert_eq!(versions, want.join(","), "each migration once");

    // A database left at version 1 (an older Turnstile) with a job in it.
    let old = server.database();
    let db = db_name(&old);
    server
        .psql(
            db,
            "CREATE TABLE turnstile_schema (version INTEGER PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())",
        )
        .unwrap();
    server.psql(db, MIGRATIONS[0]).unwrap();
    server
        .psql(db, "INSERT INTO turnstile_schema (version) VALUES (1)")
        .unwrap();
    server
        .psql(
            db,
            "INSERT INTO jobs (job_id, job_type, data) VALUES ('old-1', 'task', '{\"n\": 1}')",
        )
        .unwrap();
    let s = PgStore::open(&old, StoreOptions::default()).unwrap();
    let j = s.get_job("old-1").unwrap().unwrap();
    assert_eq!(
        (j.job_type.as_str(), j.status.as_str()),
        ("task", "pending")
    );
    assert_eq!(j.data, serde_json::json!({"n": 1}));
    s.add_job(NewJob {
        job_type: "task".into(),
        ..NewJob::default()
    })
    .unwrap();
    assert_eq!(
        server
            .psql(db, "SELECT max(version) FROM turnstile_schema")
            .unwrap(),
        VERSION.to_string()
    );

    // A newer schema than this binary knows: refused, as a settings error (exit 2).
    server
        .psql(
            db,
            &format!(
                "INSERT INTO turnstile_schema (version) VALUES ({})",
                VERSION + 1
            ),
        )
        .unwrap();
    match PgStore::open(&old, StoreOptions::default()) {
        Err(StoreError::Config(why)) => {
            assert!(why.contains("newer than this Turnstile"), "{why}");
        }
        other => panic!("a newer schema was not refused: {other:?}"),
    }
}

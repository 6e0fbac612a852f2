//! `job_store`: the SQLite job queue's own cost, without the engine around it.
//!
//! * `add`: one `add_job` (one durable write transaction);
//! * `claim_complete`: `claim_next` then `complete_job` of the job it got, 5,000 jobs
//!   pending (the queue a worker drains);
//! * `cycle`: `add_job`, `claim_next`, `complete_job`: one job end to end.
//!
//! Run: `cargo bench -p turnstile-engine --bench job_store -- --noplot`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use turnstile_engine::store::{Claim, JobFilter, JobStore, NewJob, SqliteStore};

fn job(i: u64) -> NewJob {
    NewJob {
        job_id: Some(format!("bench-{i}")),
        job_type: "task".into(),
        data: Some(serde_json::json!({ "i": i })),
        ..NewJob::default()
    }
}

fn open() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("jobs.db")).expect("store opens");
    (dir, store)
}

fn claim_complete(store: &SqliteStore, filter: &JobFilter) {
    match store.claim_next(filter, "bench").expect("claim") {
        Claim::Job(j) => {
            assert!(store.complete_job(&j.job_id, None).expect("complete"));
        }
        Claim::Empty { .. } => panic!("the queue ran dry"),
    }
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("job_store");
    g.throughput(Throughput::Elements(1));
    let filter = JobFilter {
        job_type: Some("task".into()),
        machine_type: None,
    };

    let (_d, store) = open();
    let mut n = 0u64;
    g.bench_function("add", |b| {
        b.iter(|| {
            n += 1;
            store.add_job(job(n)).expect("add");
        })
    });

    let (_d, store) = open();
    let mut n = 0u64;
    for _ in 0..5_000 {
        n += 1;
        store.add_job(job(n)).expect("add");
    }
    g.bench_function("claim_complete", |b| {
        b.iter(|| {
            // Keep about 5,000 pending: one in, one out.
            n += 1;
            store.add_job(job(n)).expect("add");
            claim_complete(&store, &filter);
        })
    });

    let (_d, store) = open();
    let mut n = 0u64;
    g.bench_function("cycle", |b| {
        b.iter(|| {
            n += 1;
            store.add_job(job(n)).expect("add");
            claim_complete(&store, &filter);
        })
    });
    g.finish();
}

criterion_group! {
    name = job_store;
    config = Criterion::default().sample_size(20);
    targets = benches
}
criterion_main!(job_store);

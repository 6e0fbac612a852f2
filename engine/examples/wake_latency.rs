//! How long a waiter takes to hear of a job that another store object (another process,
//! as far as the database can tell: its own connection) adds: the time from the start of
//! `add_job` on the adder to the wake-up of [`JobStore::notify`] on the waiter, over
//! `ROUNDS` adds at random moments. Prints min, median, p99 and max, and the same for the
//! `add_job` calls alone.
//!
//! ```text
//! cargo run --release -p turnstile-engine --example wake_latency -- /tmp/wake.db 200
//! cargo run --release -p turnstile-engine --example wake_latency -- postgres://u:pw@127.0.0.1:5432/db 200
//! ```

use std::time::{Duration, Instant};

#[cfg(doc)]
use turnstile_engine::store::JobStore;
use turnstile_engine::store::{open, Location, NewJob, StoreOptions};

fn summary(what: &str, mut v: Vec<Duration>) {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    println!(
        "{what:<28} min {:>8.2?}  median {:>8.2?}  p99 {:>8.2?}  max {:>8.2?}  ({} rounds)",
        v[0],
        at(0.5),
        at(0.99),
        v[v.len() - 1],
        v.len()
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let location: Location = args
        .next()
        .unwrap_or_else(|| "/tmp/turnstile-wake.db".into())
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let rounds: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(100);
    let opts = StoreOptions {
        renew: false,
        ..StoreOptions::default()
    };
    let waiter = open(&location, opts.clone()).expect("the store opens");
    let adder = open(&location, opts).expect("the store opens");
    let notify = waiter.notify().clone();
    // Let the waiter's watch settle (SQLite's first reading, PostgreSQL's LISTEN).
    std::thread::sleep(Duration::from_millis(500));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<(Instant, Duration)>();
    std::thread::spawn(move || {
        let mut seq = 0u64;
        while go_rx.recv().is_ok() {
            // A random moment: the waiter is waiting, not just starting to.
            let jitter = Duration::from_micros(1000 + (seq * 7919 % 20_000));
            std::thread::sleep(jitter);
            let t0 = Instant::now();
            adder
                .add_job(NewJob {
                    job_type: "wake".into(),
                    ..NewJob::default()
                })
                .expect("the job is added");
            let _ = done_tx.send((t0, t0.elapsed()));
            seq += 1;
        }
    });
    let (mut wakes, mut adds) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let woke = rt.block_on(async {
            let n = notify.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            go_tx.send(()).expect("the adder runs");
            tokio::time::timeout(Duration::from_secs(10), n)
                .await
                .is_ok()
                .then(Instant::now)
        });
        let (t0, add) = done_rx.recv().expect("the adder answers");
        let woke = woke.expect("woken within 10 s");
        wakes.push(woke.saturating_duration_since(t0));
        adds.push(add);
        // Let a late wake-up of this round pass before the next round waits.
        std::thread::sleep(Duration::from_millis(300));
    }
    println!("{location}");
    summary("add_job", adds);
    summary("add_job start to wake-up", wakes);
}

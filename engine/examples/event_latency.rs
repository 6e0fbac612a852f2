//! Cross-process event latency through the store: the time from the start of a send to a
//! machine of "another process" (`send_event`'s path: [`Remote::forward`], a row in the
//! event table) to that machine's transition on it. Two engines stand for the two
//! processes, each with its own store object (its own connection, or its own SQLite
//! connection and WAL watch) and its own [`EventBridge`] (registry rows, consumer lease,
//! wake-ups, marks), so the database sees what two processes would make it do. Events are
//! offered at RATE per second for SECS seconds (paced by the clock, not by the answers),
//! each carrying its send instant; prints min, p50, p99, max, and the same for the send
//! alone (the sender's write, until `forward` returns).
//!
//! ```text
//! cargo run --release -p turnstile-engine --example event_latency -- /tmp/ev.db 1000 5
//! cargo run --release -p turnstile-engine --example event_latency -- postgres://u@127.0.0.1:5432/db 1000 5
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use turnstile_engine::observe::{Observer, TransitionReport};
use turnstile_engine::runtime::bridge::EventBridge;
use turnstile_engine::runtime::event::Event;
#[cfg(doc)]
use turnstile_engine::runtime::router::Remote;
use turnstile_engine::store::{open, Location, StoreOptions};
use turnstile_engine::{config, ActionRegistry, Engine};

const SINK: &str = "
initial_state: idle
metadata:
  machine_name: sink
transitions:
  - {from: [idle, got], to: got, event: poke}
";

/// Records, per transition, the time since the send instant carried in the job id (µs
/// since `base`).
struct Latencies {
    base: Instant,
    seen: Mutex<Vec<Duration>>,
}

impl Observer for Latencies {
    fn transition(&self, report: &TransitionReport<'_>) {
        if let Some(sent) = report.event.job_id.as_deref().and_then(|j| j.parse().ok()) {
            let now = self.base.elapsed();
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.push(now.saturating_sub(Duration::from_micros(sent)));
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let location: Location = args
        .next()
        .unwrap_or_else(|| "/tmp/turnstile-events.db".into())
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let rate: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let opts = StoreOptions {
        renew: false,
        ..StoreOptions::default()
    };
    let sender_store = open(&location, opts.clone()).expect("the store opens");
    let receiver_store = open(&location, opts).expect("the store opens");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let _in = rt.enter();
    let lat = Arc::new(Latencies {
        base: Instant::now(),
        seen: Mutex::new(Vec::new()),
    });
    let loaded = config::load_str(SINK, None, &ActionRegistry::with_builtins());
    let def = loaded.def.expect("the sink config loads");
    let receiver = Engine::builder().observer(lat.clone()).build();
    let sender = Engine::builder().build();
    let lease = Duration::from_secs(30);
    let rb = EventBridge::start(
        receiver_store,
        &receiver,
        ("bench", "receiver"),
        (vec!["sink".into()], vec![]),
        lease,
        None,
    )
    .expect("the receiver's bridge starts");
    receiver.spawn(def).expect("the sink starts");
    let sb = EventBridge::start(
        sender_store,
        &sender,
        ("bench", "sender"),
        (vec![], vec![]),
        lease,
        None,
    )
    .expect("the sender's bridge starts");
    let remote = sender.remote().expect("the sender is bridged");
    // Let the watches settle (SQLite's first reading, PostgreSQL's LISTEN).
    std::thread::sleep(Duration::from_millis(500));
    let n = rate * secs;
    let every = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let t0 = Instant::now();
    let mut late = Duration::ZERO;
    let mut sends = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for i in 0..n {
        let due = t0 + every * u32::try_from(i).unwrap_or(u32::MAX);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else {
            late = late.max(now - due);
        }
        let mut ev = Event::new("poke");
        let start = lat.base.elapsed();
        ev.job_id = Some(start.as_micros().to_string());
        remote
            .forward(Some("bench"), "sink", &ev)
            .unwrap_or_else(|e| panic!("send {i}: {e}"));
        sends.push(lat.base.elapsed() - start);
    }
    let offered = t0.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    while lat.seen.lock().map(|s| s.len()).unwrap_or(0) < n as usize {
        assert!(
            Instant::now() < deadline,
            "not every event arrived within 30 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut v = std::mem::take(&mut *lat.seen.lock().unwrap_or_else(|e| e.into_inner()));
    v.sort();
    sends.sort();
    let at = |v: &[Duration], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    println!(
        "{n} events offered at {rate}/s over {offered:.2?} (sender at most {late:.2?} behind): \
         min {:.2?}  p50 {:.2?}  p99 {:.2?}  max {:.2?}; the send alone: p50 {:.2?}  p99 {:.2?}  \
         max {:.2?}",
        v[0],
        at(&v, 0.5),
        at(&v, 0.99),
        v[v.len() - 1],
        at(&sends, 0.5),
        at(&sends, 0.99),
        sends[sends.len() - 1],
    );
    sb.stop();
    rb.stop();
}

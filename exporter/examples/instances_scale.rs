//! Instances at scale through the in-process API: how fast `Engine::start_instance` starts
//! N instances of a two-state definition (`a` and `b`, the event `flip` going back and
//! forth), then how fast events sent with `Engine::send` to instances picked at random
//! among the N idle ones are handled (from the first send to the last transition, read
//! from the instance counts). With `none` the engine runs without an observer; with
//! `telemetry` it runs with the exporter's `Telemetry` observer (metrics and the `/trace`
//! ring, defaults), as `turnstile run` does. A multi-threaded Tokio runtime with as many
//! workers as cores; `SENDERS` tasks of that runtime (default 2) send, each its share.
//!
//! ```text
//! cargo build --release -p turnstile-exporter --example instances_scale
//! target/release/examples/instances_scale none 100000 2000000
//! target/release/examples/instances_scale telemetry 100000 2000000
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Map;
use turnstile_engine::{config, ActionRegistry, Engine, Event, Observer};
use turnstile_exporter::telemetry::{Telemetry, TelemetryConfig};

const FLIP: &str = "
metadata: {machine_name: flip}
initial_state: a
states: [a, b]
events: [flip]
transitions:
  - {from: a, to: b, event: flip}
  - {from: b, to: a, event: flip}
";

/// Transitions taken by the instances of `flip` so far.
fn transitions(engine: &Engine) -> u64 {
    engine
        .status_handle()
        .instance_counts()
        .iter()
        .find(|d| &*d.definition == "flip")
        .map_or(0, |d| d.transitions)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let variant = args.next().unwrap_or_else(|| "none".to_owned());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let events: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    let observer: Option<Arc<dyn Observer>> = match variant.as_str() {
        "none" => None,
        "telemetry" => Some(Telemetry::new(TelemetryConfig::default()).expect("telemetry")),
        other => panic!("unknown variant {other}: none or telemetry"),
    };
    let def = config::load_str(FLIP, None, &ActionRegistry::with_builtins())
        .def
        .expect("the flip definition loads");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mut b = Engine::builder();
        if let Some(o) = observer {
            b = b.observer(o);
        }
        let engine = b.build();
        engine.spawn(def).expect("spawn");
        let names: Vec<String> = (0..n).map(|i| format!("i{i:06}")).collect();

        let t0 = Instant::now();
        for name in &names {
            engine
                .start_instance("flip", Some(name), Map::new())
                .expect("start");
        }
        let took = t0.elapsed();
        println!(
            "{variant}: started {n} instances in {:.3} s: {:.0}/s",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        );
        // Let every task run once (its start) before the events.
        tokio::time::sleep(Duration::from_millis(500)).await;

        let senders: u64 = std::env::var("SENDERS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2);
        let names = Arc::new(names);
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for k in 0..senders {
            let (engine, names) = (engine.clone(), names.clone());
            let share = events / senders + u64::from(k < events % senders);
            tasks.push(tokio::spawn(async move {
                let flip: Arc<str> = Arc::from("flip");
                let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (k + 1);
                for _ in 0..share {
                    // xorshift64
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let name = &names[(x % names.len() as u64) as usize];
                    engine
                        .send(name, Event::new(flip.clone()))
                        .await
                        .expect("send");
                }
            }));
        }
        for t in tasks {
            t.await.expect("a sender");
        }
        let sent = t0.elapsed();
        // Read every 50 ms: a reading walks all N instances (a few ms for 100,000), which
        // would take a share of the cores the machines run on if done more often.
        while transitions(&engine) < events {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took = t0.elapsed();
        println!(
            "{variant}: {events} events to random instances among {n}: sent in {:.3} s, handled in {:.3} s: {:.0}/s",
            sent.as_secs_f64(),
            took.as_secs_f64(),
            events as f64 / took.as_secs_f64()
        );
    });
}

//! The `telemetry_overhead` benchmark's loop without Criterion, for instruction counts:
//! `N` `go` events through the ping-pong machine on a current-thread runtime, with no
//! observer (`none`), an observer that does nothing (`null`: what the runtime's side of
//! observing costs, its clock readings and the report and call of `transition_finished`),
//! one that does nothing in a quick observer (`null_quick`: the same for the path metrics
//! only take, `QuickObserver`), metrics only (`metrics`) or metrics and `/trace` records
//! (`metrics_records`). Run it twice under callgrind with two values of `N`: the
//! difference of the totals divided by the difference of `N` is the cost per event, with
//! the start-up cost taken out.
//!
//! ```text
//! cargo build --profile bench -p turnstile-exporter --example telemetry_cost
//! valgrind --tool=callgrind --toggle-collect=telemetry_cost::measured \
//!     target/release/examples/telemetry_cost metrics 100000
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use turnstile_engine::observe::{MachineRef, QuickObserver};
use turnstile_engine::{config, ActionRegistry, Engine, Event, Observer};
use turnstile_exporter::telemetry::{Telemetry, TelemetryConfig};

/// Receives every call and does nothing with it.
struct Null;

impl Observer for Null {
    fn observes_starts(&self) -> bool {
        false
    }
}

/// Hands the runtime a quick observer that does nothing.
struct NullQuick;

impl Observer for NullQuick {
    fn observes_starts(&self) -> bool {
        false
    }
    fn quick_observer(&self, _m: MachineRef<'_>) -> Option<Box<dyn QuickObserver>> {
        Some(Box::new(NullQuick))
    }
}

impl QuickObserver for NullQuick {
    fn transition_finished(&self, _: usize, _: usize, _: usize, _: u64, _: u64) {}
}

fn main() {
    let mut args = std::env::args().skip(1);
    let variant = args.next().unwrap_or_else(|| "none".to_owned());
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let observer: Option<Arc<dyn Observer>> = match variant.as_str() {
        "none" => None,
        "null" => Some(Arc::new(Null)),
        "null_quick" => Some(Arc::new(NullQuick)),
        "metrics" => Some(
            Telemetry::new(TelemetryConfig {
                trace_buffer: 0,
                ..TelemetryConfig::default()
            })
            .expect("telemetry"),
        ),
        "metrics_records" => Some(Telemetry::new(TelemetryConfig::default()).expect("telemetry")),
        other => {
            panic!("unknown variant {other}: none, null, null_quick, metrics or metrics_records")
        }
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/pingpong_external.yaml");
    let def = config::load_path(&path, &ActionRegistry::with_builtins())
        .def
        .expect("the ping-pong machine loads");
    let name = def.name.clone();
    let go: Arc<str> = Arc::from("go");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut b = Engine::builder();
    if let Some(o) = observer {
        b = b.observer(o);
    }
    let engine = b.build();
    rt.block_on(async { engine.spawn(def) }).expect("spawn");
    // Warm-up: the first clock reading calibrates the TSC for a time that varies from run
    // to run; it must not be counted.
    run(&rt, &engine, &name, &go, 1_000);
    let t0 = std::time::Instant::now();
    measured(&rt, &engine, &name, &go, n);
    let ns = t0.elapsed().as_nanos() as f64 / n as f64;
    engine.shutdown();
    rt.block_on(engine.join());
    println!("{variant}: {n} events, {ns:.1} ns/event");
}

/// The part to count: `valgrind --tool=callgrind --toggle-collect=telemetry_cost::measured`.
#[inline(never)]
fn measured(rt: &tokio::runtime::Runtime, engine: &Engine, name: &str, go: &Arc<str>, n: u64) {
    run(rt, engine, name, go, n);
}

fn run(rt: &tokio::runtime::Runtime, engine: &Engine, name: &str, go: &Arc<str>, n: u64) {
    rt.block_on(async {
        let base = engine.machine(name).expect("machine").transitions;
        for _ in 0..n {
            engine
                .send(name, Event::new(go.clone()))
                .await
                .expect("the machine accepts events");
        }
        while engine.machine(name).expect("machine").transitions < base + n {
            tokio::task::yield_now().await;
        }
    });
}

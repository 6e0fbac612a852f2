//! `telemetry_overhead`: what observing costs. The ping-pong machine of
//! `engine_throughput/external` (one transition per external event, one thread), run
//! with:
//!
//! * `none`: no observer;
//! * `metrics`: the Prometheus metrics only (no `/trace` records, no spans), one
//!   action-less event in 32 timed (`--metrics-timing-sample`'s default);
//! * `metrics_every_event_timed`: the same with every event timed
//!   (`--metrics-timing-sample 1`);
//! * `metrics_records`: metrics and the `/trace` ring buffer (what `turnstile run` does
//!   without an OTLP endpoint);
//! * `metrics_spans`: metrics, records and a span per event at 100% sampling, exported
//!   over OTLP/HTTP to a receiver in this process (it decodes every request with
//!   `opentelemetry-proto`, so the export does real work on the same two cores).
//!
//! Run: `cargo bench -p turnstile-exporter --bench telemetry_overhead -- --noplot`.
//!
//! Instructions per event (repeatable on a busy machine): with `OVERHEAD_EVENTS=N` and
//! `OVERHEAD_VARIANT=none|metrics` set (and `OVERHEAD_TIMING_SAMPLE`, 16 by default), the binary sends N events through that variant
//! once (after a warm-up), without criterion, and exits; run it under
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect=*overhead_measured*`
//! for two values of N and divide the difference of the instruction counts by the
//! difference of the Ns. `bench/callgrind_overhead.sh` does that.

#[path = "../tests/support/otlp.rs"]
mod otlp;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use turnstile_engine::{config, ActionRegistry, Engine, Event, MachineDef, Observer};
use turnstile_exporter::telemetry::spans::SpanSettings;
use turnstile_exporter::telemetry::{Telemetry, TelemetryConfig, DEFAULT_TIMING_SAMPLE};

fn load(file: &str) -> Arc<MachineDef> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../bench")
        .join(file);
    let loaded = config::load_path(&path, &ActionRegistry::with_builtins());
    match loaded.def {
        Some(def) => def,
        None => panic!("{} does not load: {:?}", path.display(), loaded.diagnostics),
    }
}

fn transitions(engine: &Engine, name: &str) -> u64 {
    engine.machine(name).expect("machine").transitions
}

async fn produce(engine: Engine, name: Arc<str>, go: Arc<str>, n: u64, base: u64) {
    for _ in 0..n {
        engine
            .send(&name, Event::new(go.clone()))
            .await
            .expect("the machine accepts events");
    }
    while transitions(&engine, &name) < base + n {
        tokio::task::yield_now().await;
    }
}

/// `OVERHEAD_EVENTS` events through one variant, once (for callgrind).
fn fixed_count(events: u64, label: &str) {
    let observer: Option<Arc<dyn Observer>> = match label {
        "none" => None,
        "metrics" => Some(
            Telemetry::new(TelemetryConfig {
                trace_buffer: 0,
                timing_sample: std::env::var("OVERHEAD_TIMING_SAMPLE")
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(DEFAULT_TIMING_SAMPLE),
                ..TelemetryConfig::default()
            })
            .expect("telemetry"),
        ),
        other => panic!("OVERHEAD_VARIANT: `{other}` is not none or metrics"),
    };
    let def = load("pingpong_external.yaml");
    let name = def.name.clone();
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
    // The machine's start (and the clock's calibration, whose instruction count varies
    // from run to run) before what is measured.
    const WARM_UP: u64 = 1000;
    rt.block_on(produce(
        engine.clone(),
        name.clone(),
        Arc::from("go"),
        WARM_UP,
        0,
    ));
    overhead_measured(&rt, &engine, name, events, WARM_UP);
    engine.shutdown();
    rt.block_on(engine.join());
}

/// What callgrind counts (`--toggle-collect=*overhead_measured*`): `events` events sent
/// and processed (the runtime runs the machine's task inside `block_on`, on this thread).
#[inline(never)]
fn overhead_measured(
    rt: &tokio::runtime::Runtime,
    engine: &Engine,
    name: Arc<str>,
    events: u64,
    base: u64,
) {
    rt.block_on(produce(engine.clone(), name, Arc::from("go"), events, base));
}

fn variant(c: &mut Criterion, label: &str, observer: Option<Arc<dyn Observer>>) {
    let def = load("pingpong_external.yaml");
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
    let mut g = c.benchmark_group("telemetry_overhead");
    g.throughput(Throughput::Elements(1));
    g.bench_function(label, |bch| {
        bch.iter_custom(|iters| {
            rt.block_on(async {
                let base = transitions(&engine, &name);
                let t0 = Instant::now();
                tokio::spawn(produce(
                    engine.clone(),
                    name.clone(),
                    go.clone(),
                    iters,
                    base,
                ))
                .await
                .expect("producer");
                t0.elapsed()
            })
        });
    });
    g.finish();
    engine.shutdown();
    rt.block_on(engine.join());
}

fn all(c: &mut Criterion) {
    variant(c, "none", None);
    let metrics = Telemetry::new(TelemetryConfig {
        trace_buffer: 0,
        ..TelemetryConfig::default()
    })
    .expect("telemetry");
    variant(c, "metrics", Some(metrics));
    let every_event = Telemetry::new(TelemetryConfig {
        trace_buffer: 0,
        timing_sample: 1,
        ..TelemetryConfig::default()
    })
    .expect("telemetry");
    variant(c, "metrics_every_event_timed", Some(every_event));
    let records = Telemetry::new(TelemetryConfig::default()).expect("telemetry");
    variant(c, "metrics_records", Some(records));
    let receiver = otlp::Receiver::start();
    let spans = Telemetry::new(TelemetryConfig {
        spans: Some(SpanSettings {
            endpoint: Some(receiver.endpoint()),
            scheduled_delay: Duration::from_millis(200),
            max_queue_size: 65_536,
            ..SpanSettings::default()
        }),
        ..TelemetryConfig::default()
    })
    .expect("telemetry");
    variant(c, "metrics_spans", Some(spans.clone()));
    spans.shutdown();
    let rendered = spans.render_metrics(false);
    let get = |name: &str| {
        rendered
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or("?")
            .to_owned()
    };
    eprintln!(
        "metrics_spans: spans exported {}, dropped {}, received {}",
        get("turnstile_spans_exported_total"),
        get("turnstile_spans_dropped_total"),
        receiver.spans().len()
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5))
        .sample_size(30);
    targets = all
}
fn main() {
    if let Ok(n) = std::env::var("OVERHEAD_EVENTS") {
        let n: u64 = n.parse().expect("OVERHEAD_EVENTS: a number");
        let v = std::env::var("OVERHEAD_VARIANT").unwrap_or_else(|_| "metrics".to_owned());
        fixed_count(n, &v);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

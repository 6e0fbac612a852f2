//! The highest sustained event rate at which every span reaches the OTLP receiver: for
//! each offered rate, `go` events are sent to the ping-pong machine at that rate for
//! `SECS` seconds (a span per event at 100 % sampling, the default span settings
//! `turnstile run` uses: a queue of 16,384, batches of 512, every second), then the
//! telemetry is shut down (which flushes the queue) and the spans created, exported,
//! dropped and received are compared. The receiver (`exporter/tests/support/otlp.rs`)
//! decodes every request with `opentelemetry-proto` in this process, on the same cores.
//!
//! ```text
//! cargo build --release -p turnstile-exporter --example span_delivery
//! target/release/examples/span_delivery 60 1000,2000,5000,10000,20000
//! ```
//!
//! The standard `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` and
//! `OTEL_BSP_SCHEDULE_DELAY` variables change the settings, as for `turnstile run`.
//!
//! Prints one line per rate: events sent, spans exported, dropped and received, and
//! whether every span arrived; then the CPU time of the engine's worker, of the export
//! thread with its HTTP client, and of the receiver, as a share of one core over the run
//! (Linux `schedstat`), so that a receiver that cannot keep up shows.

#[path = "../tests/support/otlp.rs"]
mod otlp;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use turnstile_engine::{config, ActionRegistry, Engine, Event};
use turnstile_exporter::telemetry::spans::SpanSettings;
use turnstile_exporter::telemetry::{Telemetry, TelemetryConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(60);
    let rates: Vec<u64> = args
        .next()
        .unwrap_or_else(|| "1000,2000,5000,10000,20000".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let d = SpanSettings::default();
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    println!(
        "{secs} s per rate; span settings: queue {}, batch {}, every {} ms (OTEL_BSP_* set: {})",
        env("OTEL_BSP_MAX_QUEUE_SIZE").unwrap_or_else(|| d.max_queue_size.to_string()),
        env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")
            .unwrap_or_else(|| d.max_export_batch_size.to_string()),
        env("OTEL_BSP_SCHEDULE_DELAY").unwrap_or_else(|| d.scheduled_delay.as_millis().to_string()),
        [
            "OTEL_BSP_MAX_QUEUE_SIZE",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
            "OTEL_BSP_SCHEDULE_DELAY"
        ]
        .iter()
        .any(|k| env(k).is_some()),
    );
    for rate in rates {
        run(rate, Duration::from_secs(secs));
    }
}

fn run(rate: u64, secs: Duration) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/pingpong_external.yaml");
    let def = config::load_path(&path, &ActionRegistry::with_builtins())
        .def
        .expect("bench/pingpong_external.yaml loads");
    let name = def.name.clone();
    let receiver = otlp::Receiver::start_counting();
    let telemetry = Telemetry::new(TelemetryConfig {
        spans: Some(SpanSettings {
            endpoint: Some(receiver.endpoint()),
            ..SpanSettings::default()
        }),
        ..TelemetryConfig::default()
    })
    .expect("telemetry");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let engine = Engine::builder().observer(telemetry.clone()).build();
    rt.block_on(async { engine.spawn(def) }).expect("spawn");
    let go: std::sync::Arc<str> = "go".into();
    let sent = rt.block_on(async {
        // Events go out every millisecond, as many as the rate asks for by then.
        let t0 = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let mut sent = 0u64;
        while t0.elapsed() < secs {
            tick.tick().await;
            let due = (t0.elapsed().as_secs_f64() * rate as f64) as u64;
            while sent < due {
                engine
                    .send(&name, Event::new(go.clone()))
                    .await
                    .expect("send");
                sent += 1;
            }
        }
        sent
    });
    // Every event processed (a span each) before the engine stops: a stop leaves what is
    // still queued unprocessed.
    let t0 = Instant::now();
    while engine.machine(&name).map_or(0, |m| m.transitions) < sent
        && t0.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let processed = engine.machine(&name).map_or(0, |m| m.transitions);
    // CPU of the threads that share the cores, before the export thread ends.
    let wall = secs.as_secs_f64();
    let share = |d: Duration| 100.0 * d.as_secs_f64() / wall;
    let (engine_cpu, export_cpu) = (
        share(threads_cpu("tokio-rt-worker")),
        share(threads_cpu("OpenTelemetry") + threads_cpu("reqwest")),
    );
    engine.shutdown();
    rt.block_on(engine.join());
    telemetry.shutdown();
    let rendered = telemetry.render_metrics(false);
    let get = |metric: &str| -> u64 {
        rendered
            .lines()
            .find(|l| l.starts_with(metric))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    let (exported, dropped) = (
        get("turnstile_spans_exported_total"),
        get("turnstile_spans_dropped_total"),
    );
    // The receiver may still be decoding the last request.
    let t0 = Instant::now();
    while (receiver.count() as u64) < exported && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let received = receiver.count() as u64;
    let all = dropped == 0 && processed == sent && received == sent;
    println!(
        "rate {rate}/s: events {sent} (processed {processed}), spans exported {exported}, dropped {dropped}, received {received}: {}",
        if all { "every span delivered" } else { "spans lost" }
    );
    println!(
        "  CPU (% of one core over the run): engine {engine_cpu:.0}, export thread + HTTP client {export_cpu:.0}, receiver {:.0} ({} requests)",
        share(receiver.cpu_time()),
        receiver.requests(),
    );
}

/// CPU time so far of this process's threads whose name starts with `prefix` (Linux
/// `schedstat`; zero elsewhere).
fn threads_cpu(prefix: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let mut ns = 0u64;
    for task in tasks.flatten() {
        let p = task.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        ns += std::fs::read_to_string(p.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Duration::from_nanos(ns)
}

//! `plugin_invoke`: the cost of calling a plugin action through the C ABI.
//!
//! * `plugin_invoke/call` — one synchronous call of the example `calculate` plugin
//!   (release build) through [`PluginHost::call`]: the parameters and a context with an
//!   event payload serialised to JSON, `turnstile_plugin_invoke`, the plugin parsing them,
//!   computing and serialising its result, the host parsing that and freeing the string.
//!   This is "one plugin invocation, JSON in and out".
//! * `plugin_invoke/machine_event` — what a machine pays per plugin action in the running
//!   engine: one `calculate` event sent to statemachine-engine's `custom_actions/config/worker.yaml`
//!   machine, whose `calculating` state runs `log` and the `calculate` plugin action (on
//!   a blocking thread, with its timeout) and returns to `waiting`. One iteration is one
//!   such event, two transitions, on a two-worker runtime.
//!
//! The plugins are built by the benchmark itself (`cargo build --release -p ...`, see
//! `tests/support/plugin_build.rs`).
//!
//! Run: `cargo bench -p turnstile-engine --bench plugin_invoke -- --noplot`; the median is
//! in `target/criterion/plugin_invoke/*/new/estimates.json`.

#[path = "../tests/support/plugin_build.rs"]
mod plugin_build;

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use turnstile_engine::{config, ActionRegistry, Engine, Event};

#[path = "../tests/support/upstream.rs"]
mod upstream;

fn registry(dir: &Path) -> ActionRegistry {
    let mut r = ActionRegistry::with_builtins();
    for res in r.load_plugins(dir) {
        if let Err(e) = res {
            panic!("{e}");
        }
    }
    r
}

fn bench(c: &mut Criterion) {
    let dir = plugin_build::plugin_dir(&["greet", "calculate"]);
    let registry = registry(dir.path());
    let host = registry.plugin_host().clone();
    let params = json!({"operation": "add", "success": "calculated"});
    let context = json!({
        "event_data": {"type": "calculate", "payload": {"a": 5, "b": 3}},
        "greeting": "Hello, Alice!",
    });
    let mut g = c.benchmark_group("plugin_invoke");
    g.bench_function("call", |b| {
        b.iter(|| {
            let r = host
                .call("calculate", &params, &context)
                .expect("calculate answers");
            std::hint::black_box(r)
        });
    });

    let def = config::load_path(
        &upstream::example("custom_actions/config/worker.yaml"),
        &registry,
    )
    .def
    .expect("compat config loads");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let engine = rt.block_on(async {
        let e = Engine::builder().build();
        e.spawn(def).expect("spawn");
        e
    });
    let name = "custom_worker";
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("machine_event", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let before = engine.machine(name).map_or(0, |m| m.transitions);
                    engine
                        .send(
                            name,
                            Event::new("calculate").with_payload(json!({"a": 5, "b": 3})),
                        )
                        .await
                        .expect("send");
                    while engine.machine(name).map_or(0, |m| m.transitions) < before + 2 {
                        tokio::task::yield_now().await;
                    }
                }
                start.elapsed()
            })
        });
    });
    g.finish();
    engine.shutdown();
}

criterion_group!(benches, bench);
criterion_main!(benches);

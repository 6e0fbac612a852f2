//! `engine_throughput`: transitions per second of a two-state ping-pong machine.
//!
//! The YAML files are the ones `bench/python_baseline.py` runs in statemachine-engine,
//! so `bench/compare.sh` can put both engines side by side.
//!
//! * `engine_throughput/external` — `bench/pingpong_external.yaml`, no actions. A producer
//!   task sends `go` events with `Engine::send` (waiting on the bounded queue when it is
//!   full, i.e. with backpressure) and the machine does one transition per event. One
//!   iteration is one event delivered and processed; the time ends when the machine's
//!   transition counter has advanced by the number of events sent.
//! * `engine_throughput/action` — `bench/pingpong_action.yaml`: every state's
//!   `set_context` entry action returns `go`, so the machine drives itself forever once
//!   started. One iteration is one transition (with its entry action).
//! * `engine_throughput/external_16x2t` — (a) with 16 machines (one producer each) on a
//!   two-worker multi-thread runtime. One iteration is one transition of any machine.
//! * `engine_throughput/external_10bp`, `engine_throughput/action_10bp` — (a) and (b) with
//!   ten breakpoints set that never match ([`ten_breakpoints`]): the cost of the gate
//!   when breakpoints are set (without any, it is one relaxed load per event).
//!
//! (a) and (b) run on a `current_thread` runtime, i.e. on one thread: the machine and the
//! producer share it, as they would share a core. Nothing else (no observer, no polling
//! thread) runs while they are measured. Setup (config load, runtime, engine, spawn) is
//! outside the timing (`iter_custom`).
//!
//! Run: `cargo bench -p turnstile-engine --bench engine_throughput -- --noplot`, or
//! `bench/compare.sh` for the comparison with the Python engine.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio::runtime::Runtime;
use turnstile_engine::breakpoint::{BreakpointSpec, Condition, On};
use turnstile_engine::runtime::live::LiveOp;
use turnstile_engine::{config, ActionRegistry, Engine, Event, MachineDef};

/// Queue capacity of each machine (the engine's default).
const QUEUE: usize = turnstile_engine::runtime::engine::DEFAULT_QUEUE_CAPACITY;
/// Machines of the multi-machine variant.
const MACHINES: usize = 16;
/// How often the self-driving benchmark looks at the transition counter. The look is a
/// timer on the same thread, so the machine runs undisturbed in between.
const POLL: Duration = Duration::from_millis(1);

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

fn one_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn transitions(engine: &Engine, name: &str) -> u64 {
    engine
        .machine(name)
        .expect("the benchmarked machine exists")
        .transitions
}

/// Sends `n` `go` events to `name` (waiting while its queue is full), then waits until
/// the machine has taken `n` more transitions than `base`.
async fn produce(engine: Engine, name: Arc<str>, go: Arc<str>, n: u64, base: u64) {
    for _ in 0..n {
        engine
            .send(&name, Event::new(go.clone()))
            .await
            .expect("the machine accepts events");
    }
    // Every event is queued; the machine needs at most one queue's worth of work more.
    // Each look yields to it, and it drains its queue before this task runs again.
    while transitions(&engine, &name) < base + n {
        tokio::task::yield_now().await;
    }
}

/// Ten breakpoints on the ping-pong machines (states `ping` and `pong`, event `go`) that
/// never match, of every kind: four `event` ones whose event filter is compared with
/// each event in their state, and six that the per-state index leaves out (events no
/// rule takes, an `error` breakpoint). None sees `go`, so no `when` is evaluated (that
/// costs a context lookup per path and event: `engine/examples/action_cost.rs bpwhen`).
fn ten_breakpoints() -> Vec<LiveOp> {
    let spec = |on, state: Option<&str>, event: Option<&str>, when: Option<&str>| {
        LiveOp::AddBreakpoint(BreakpointSpec {
            on,
            state: state.map(str::to_owned),
            event: event.map(str::to_owned),
            when: when.map(|w| Condition::parse(w).expect("a valid condition")),
        })
    };
    vec![
        spec(On::Event, Some("pong"), Some("halt"), None),
        spec(On::Event, Some("pong"), Some("reset"), None),
        spec(On::Event, Some("pong"), Some("stop"), None),
        spec(On::Event, Some("ping"), Some("halt"), Some("attempts > 3")),
        spec(
            On::Transition,
            None,
            Some("reset"),
            Some("exists(order.id)"),
        ),
        spec(On::Transition, Some("ping"), Some("reset"), None),
        spec(On::Transition, None, Some("halt"), None),
        spec(On::Enter, Some("pong"), Some("reset"), None),
        spec(On::Enter, None, Some("stop"), None),
        spec(On::Error, None, None, None),
    ]
}

/// Sets `breakpoints` on machine `name`.
fn set_breakpoints(rt: &Runtime, engine: &Engine, name: &str, breakpoints: Vec<LiveOp>) {
    rt.block_on(async {
        for b in breakpoints {
            engine
                .control(name, b)
                .await
                .expect("the breakpoint is set");
        }
    });
}

/// (a) external events, one machine, one thread.
fn external(c: &mut Criterion) {
    external_with(c, "external", Vec::new());
    external_with(c, "external_10bp", ten_breakpoints());
}

fn external_with(c: &mut Criterion, label: &str, breakpoints: Vec<LiveOp>) {
    let def = load("pingpong_external.yaml");
    let name = def.name.clone();
    let go: Arc<str> = Arc::from("go");
    let rt = one_thread();
    let engine = Engine::builder().queue_capacity(QUEUE).build();
    rt.block_on(async { engine.spawn(def) })
        .expect("spawn the machine");
    set_breakpoints(&rt, &engine, &name, breakpoints);

    let mut g = c.benchmark_group("engine_throughput");
    g.throughput(Throughput::Elements(1));
    g.bench_function(label, |b| {
        b.iter_custom(|iters| {
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

/// (b) a machine driven by its own `set_context` actions, one thread.
///
/// The machine never stops by itself, but a `current_thread` runtime only runs while
/// `block_on` is running: between iterations (and while Criterion analyses) it is frozen.
/// Inside an iteration the only other future is this one, woken by a 1 ms timer to read
/// the counter. It stops at the first look that sees at least `iters` transitions and
/// returns the time measured up to that look scaled to exactly `iters` transitions
/// (elapsed × iters / seen): the machine ran at a steady rate over the whole window, so
/// the overshoot of the last look does not bias the result.
fn action(c: &mut Criterion) {
    action_with(c, "action", Vec::new());
    action_with(c, "action_10bp", ten_breakpoints());
}

fn action_with(c: &mut Criterion, label: &str, breakpoints: Vec<LiveOp>) {
    let def = load("pingpong_action.yaml");
    let name = def.name.clone();
    let rt = one_thread();
    let engine = Engine::builder().queue_capacity(QUEUE).build();
    rt.block_on(async { engine.spawn(def) })
        .expect("spawn the machine");
    set_breakpoints(&rt, &engine, &name, breakpoints);

    let mut g = c.benchmark_group("engine_throughput");
    g.throughput(Throughput::Elements(1));
    g.bench_function(label, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let base = transitions(&engine, &name);
                let t0 = Instant::now();
                loop {
                    tokio::time::sleep(POLL).await;
                    let seen = transitions(&engine, &name) - base;
                    let dt = t0.elapsed();
                    if seen >= iters {
                        #[allow(clippy::cast_precision_loss)]
                        return dt.mul_f64(iters as f64 / seen as f64);
                    }
                }
            })
        });
    });
    g.finish();
    engine.shutdown();
    rt.block_on(engine.join());
}

/// (c) (a) with 16 machines, each with its own producer, on a two-worker runtime.
fn external_many(c: &mut Criterion) {
    let base_def = load("pingpong_external.yaml");
    let go: Arc<str> = Arc::from("go");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let engine = Engine::builder().queue_capacity(QUEUE).build();
    let names: Vec<Arc<str>> = (0..MACHINES)
        .map(|i| Arc::from(format!("pingpong_external_{i}")))
        .collect();
    rt.block_on(async {
        for n in &names {
            engine
                .spawn(Arc::new(base_def.renamed(n)))
                .expect("spawn a machine");
        }
    });

    let mut g = c.benchmark_group("engine_throughput");
    g.throughput(Throughput::Elements(1));
    g.bench_function("external_16x2t", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let per = iters / MACHINES as u64;
                let extra = iters % MACHINES as u64;
                let bases: Vec<u64> = names.iter().map(|n| transitions(&engine, n)).collect();
                let t0 = Instant::now();
                let producers: Vec<_> = names
                    .iter()
                    .zip(bases)
                    .enumerate()
                    .map(|(i, (n, base))| {
                        let k = per + u64::from((i as u64) < extra);
                        tokio::spawn(produce(engine.clone(), n.clone(), go.clone(), k, base))
                    })
                    .collect();
                for p in producers {
                    p.await.expect("producer");
                }
                t0.elapsed()
            })
        });
    });
    g.finish();
    engine.shutdown();
    rt.block_on(engine.join());
}

fn criterion_config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = criterion_config();
    targets = external, action, external_many
}
criterion_main!(benches);

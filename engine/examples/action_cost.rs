//! The `engine_throughput/action` machine without Criterion, for instruction counts: the
//! self-driving ping-pong machine (`bench/pingpong_action.yaml`: each state's
//! `set_context` entry action returns `go`) on a current-thread runtime, until it has
//! made at least `N` transitions (looked at every millisecond); prints how many it made.
//! Run it under callgrind with two values of `N`: the difference of the totals divided by
//! the difference of the printed counts is the cost per transition, start-up taken out.
//!
//! ```text
//! cargo build --profile bench -p turnstile-engine --example action_cost
//! valgrind --tool=callgrind target/release/examples/action_cost 200000   # and 100000
//! ```

use std::path::PathBuf;
use std::time::Duration;

use turnstile_engine::{config, ActionRegistry, Engine};

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/pingpong_action.yaml");
    let def = config::load_path(&path, &ActionRegistry::with_builtins())
        .def
        .expect("the ping-pong machine loads");
    let name = def.name.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let engine = Engine::builder().build();
    rt.block_on(async { engine.spawn(def) })
        .expect("the machine starts");
    let seen = rt.block_on(async {
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let t = engine.machine(&name).expect("the machine runs").transitions;
            if t >= n {
                return t;
            }
        }
    });
    engine.shutdown();
    rt.block_on(engine.join());
    println!("{seen}");
}

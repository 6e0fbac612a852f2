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
//!
//! `action_cost N bp` sets the ten breakpoints of `engine_throughput/action_10bp` first
//! (none matches; their state and event filters leave every event out): the cost of the
//! gate with breakpoints set. `action_cost N bpwhen` sets two more that see every event
//! and evaluate a `when` that is false (`attempts > 3` in `ping`, `exists(order.id)` on
//! every transition): what a condition evaluated per event costs.

use std::path::PathBuf;
use std::time::Duration;

use turnstile_engine::breakpoint::{BreakpointSpec, Condition, On};
use turnstile_engine::runtime::live::LiveOp;
use turnstile_engine::{config, ActionRegistry, Engine};

/// The breakpoints of `engine/benches/engine_throughput.rs` (`ten_breakpoints`).
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
    let extra = |on, state: Option<&str>, when: &str| {
        LiveOp::AddBreakpoint(BreakpointSpec {
            on,
            state: state.map(str::to_owned),
            event: None,
            when: Some(Condition::parse(when).expect("a valid condition")),
        })
    };
    let breakpoints = match std::env::args().nth(2).as_deref() {
        Some("bp") => ten_breakpoints(),
        Some("bpwhen") => {
            let mut b = ten_breakpoints();
            b.push(extra(On::Event, Some("ping"), "attempts > 3"));
            b.push(extra(On::Transition, None, "exists(order.id)"));
            b
        }
        _ => Vec::new(),
    };
    if !breakpoints.is_empty() {
        rt.block_on(async {
            for b in breakpoints {
                engine
                    .control(&name, b)
                    .await
                    .expect("the breakpoint is set");
            }
        });
    }
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

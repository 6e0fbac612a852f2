//! Waiting, in async tests, for what the engine does on its own tasks.

use std::time::{Duration, Instant};

use turnstile_engine::Engine;

/// The limit of a wait: generous, both cores may be busy with other builds.
pub const WAIT: Duration = Duration::from_secs(20);

/// Polls `f` until it holds or [`WAIT`] passes (then panics naming `what`).
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until machine `name` has taken at least `n` transitions in all.
pub async fn wait_transitions(engine: &Engine, name: &str, n: u64) {
    let start = Instant::now();
    loop {
        let m = engine.machine(name).expect("machine exists");
        if m.transitions >= n {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "machine `{name}` stuck in `{}` after {} transitions (waiting for {n})",
            m.state,
            m.transitions
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

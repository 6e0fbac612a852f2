//! Waiting, in async tests, for what the engine does on its own tasks, through the
//! engine's public API only. Also the end-to-end tests' `kit::engine_wait` (included by
//! `#[path]`), for the tests that run an engine in-process.

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

/// Waits until machine `name` is in `state` (read from [`Engine::machine`], the newest
/// machine of that name, running or stopped), polling every 5 ms for up to `limit`; then
/// panics naming the machine, the state wanted and the last state seen.
pub async fn wait_for_state(engine: &Engine, name: &str, state: &str, limit: Duration) {
    // tokio's clock: a test that pauses time measures `limit` in that time.
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let seen = engine.machine(name).map(|m| m.state);
        if seen.as_deref() == Some(state) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "machine `{name}` not in state `{state}` after {limit:?}; last seen: {}",
            seen.map_or_else(
                || "no machine of that name".to_owned(),
                |s| format!("`{s}`")
            )
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
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

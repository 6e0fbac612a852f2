//! Waiting for what happens in another process: poll until it holds or a limit passes.

use std::thread;
use std::time::{Duration, Instant};

/// The default limit: generous, the machine may share its two cores with builds and other
/// tests.
pub const LIMIT: Duration = Duration::from_secs(60);

/// Polls `f` until it returns `Some` or [`LIMIT`] passes (then panics naming `what`).
#[track_caller]
pub fn eventually<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    eventually_or(what, f, String::new)
}

/// [`eventually`], with `last` (called on timeout) telling what was seen last.
#[track_caller]
pub fn eventually_or<T>(
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    last: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + LIMIT;
    let mut pause = Duration::from_millis(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {LIMIT:?} waiting for {what}; {}",
            last()
        );
        thread::sleep(pause);
        // Quick for what comes at once, gentle on a server polled for long.
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Polls `f` until it holds or `limit` passes (then panics naming `what`); returns how
/// long it took.
#[track_caller]
pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "{what} not within {limit:?}");
        thread::sleep(Duration::from_millis(20));
    }
    t0.elapsed()
}

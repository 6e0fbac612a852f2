//! Cheap wall-clock readings for timestamps that need milliseconds, not nanoseconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix milliseconds from the coarse real-time clock: a few nanoseconds per reading
/// (no full clock read), with the kernel tick's resolution (a few ms). Used on every
/// transition for "in this state since".
pub fn coarse_unix_ms() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    match clock_gettime(ClockId::CLOCK_REALTIME_COARSE) {
        Ok(ts) => u64::try_from(ts.tv_sec() * 1000 + ts.tv_nsec() / 1_000_000).unwrap_or(0),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    }
}

/// [`coarse_unix_ms`] as a `SystemTime`.
pub fn coarse_now() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(coarse_unix_ms())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_is_close_to_the_precise_one() {
        let precise = SystemTime::now();
        let coarse = coarse_now();
        let diff = match precise.duration_since(coarse) {
            Ok(d) => d,
            Err(e) => e.duration(),
        };
        assert!(diff < Duration::from_millis(100), "{diff:?}");
    }
}

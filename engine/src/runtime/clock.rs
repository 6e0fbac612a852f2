//! Cheap clock readings: wall-clock timestamps that need milliseconds, not nanoseconds, and
//! the TSC ticks event, state and action durations are measured with.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Durations measured from the TSC: a reading is the raw counter scaled once to
/// nanoseconds since the process's first reading, so the durations between readings are
/// plain subtractions. Held by each machine that has an observer, so the hot path reads
/// the clock without a global lookup.
#[derive(Clone, Debug)]
pub(crate) struct Ticks {
    clock: quanta::Clock,
    origin: u64,
}

impl Ticks {
    /// A copy of the process's clock: the TSC is calibrated once (by the first call, which
    /// can take up to 200 ms), not once per machine.
    pub(crate) fn new() -> Self {
        static TICKS: OnceLock<Ticks> = OnceLock::new();
        TICKS
            .get_or_init(|| {
                let clock = quanta::Clock::new();
                let origin = clock.raw();
                Ticks { clock, origin }
            })
            .clone()
    }

    /// Nanoseconds since the process's first reading: only meaningful as an end or start
    /// for [`Ticks::nanos`].
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.clock.delta_as_nanos(self.origin, self.clock.raw())
    }

    /// Nanoseconds from `start` to `end` (0 when `end` is not after `start`).
    #[inline]
    pub(crate) fn nanos(start: u64, end: u64) -> u64 {
        end.saturating_sub(start)
    }

    /// The time from `start` to now.
    pub(crate) fn since(&self, start: u64) -> Duration {
        Duration::from_nanos(Self::nanos(start, self.now()))
    }
}

/// Unix milliseconds for [`Ticks`] readings: an observed machine already reads the TSC at
/// each transition, so its "in this state since" comes from that reading instead of a
/// second clock call. Anchored on the coarse real-time clock, and anchored again once a
/// second of ticks has passed (the TSC and the real-time clock drift apart, and the
/// real-time clock may be stepped), so it stays within the coarse clock's resolution.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WallAnchor {
    at: u64,
    unix_ms: u64,
}

impl WallAnchor {
    /// Re-anchor after this many nanoseconds of ticks.
    const SPAN_NS: u64 = 1_000_000_000;

    /// Not anchored yet: the first [`WallAnchor::unix_ms`] anchors it.
    pub(crate) const UNSET: Self = Self {
        at: u64::MAX,
        unix_ms: 0,
    };

    /// Anchored at the [`Ticks`] reading `at`, taken now.
    pub(crate) fn new(at: u64) -> Self {
        Self {
            at,
            unix_ms: coarse_unix_ms(),
        }
    }

    /// Unix milliseconds at the [`Ticks`] reading `at` (taken just now).
    #[inline]
    pub(crate) fn unix_ms(&mut self, at: u64) -> u64 {
        match at.checked_sub(self.at) {
            Some(d) if d < Self::SPAN_NS => self.unix_ms + d / 1_000_000,
            _ => {
                *self = Self::new(at);
                self.unix_ms
            }
        }
    }
}

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
    fn ticks_measure_nanoseconds() {
        let t = Ticks::new();
        let start = t.now();
        std::thread::sleep(Duration::from_millis(20));
        let end = t.now();
        let ns = Ticks::nanos(start, end);
        assert!((15_000_000..2_000_000_000).contains(&ns), "{ns}");
        assert_eq!(Ticks::nanos(end, start), 0);
        assert!(t.since(start) >= Duration::from_nanos(ns));
    }

    #[test]
    fn the_wall_anchor_follows_the_real_time_clock() {
        let t = Ticks::new();
        let mut w = WallAnchor::new(t.now());
        for pause in [0, 5, 30, 1100, 10] {
            std::thread::sleep(Duration::from_millis(pause));
            let ms = w.unix_ms(t.now());
            let real = coarse_unix_ms();
            // Within the coarse clock's resolution (a few ms), allowing for scheduling.
            assert!(ms.abs_diff(real) < 50, "after {pause} ms: {ms} vs {real}");
        }
        // A reading before the anchor (it cannot happen, but) re-anchors.
        let before = w.at - 1;
        assert!(w.unix_ms(before).abs_diff(coarse_unix_ms()) < 50);
        // Not anchored yet: the first reading anchors it.
        let mut unset = WallAnchor::UNSET;
        assert!(unset.unix_ms(t.now()).abs_diff(coarse_unix_ms()) < 50);
        assert_ne!(unset.at, u64::MAX);
    }

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

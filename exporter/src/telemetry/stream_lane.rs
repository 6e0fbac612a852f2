//! A machine's own buffer in front of the live record stream's ring
//! ([`super::stream`]): one writer (the machine's task, on the metrics-only path), one
//! reader at a time (whoever holds the ring's lock), no lock and no locked instruction on
//! the writer's side.
//!
//! Its own file because it is the one piece of the stream built on atomics alone: the ring
//! is a `Mutex`, and at several million records a second its lock and unlock (two locked
//! instructions per record, on a line the readers take too) were most of what a follower
//! cost the machine. Here a record is two words written with plain stores and the
//! writer's position published with a release store; readers move what is there to the
//! ring when they look (every millisecond or so while records come), so a record reaches
//! them as promptly as before, without a hook from the engine for "the machine is idle".
//! A lane that fills up (no reader looked for [`LANE_SLOTS`] records) is emptied by its
//! writer into the ring under the lock: a machine never waits for a client.

use std::sync::atomic::{AtomicU64, Ordering};

/// Records a lane holds: at 7 million records a second, 2.3 ms of them, more than a
/// busy reader leaves between two looks.
pub(super) const LANE_SLOTS: usize = 16_384;

/// A value on a cache line of its own (the writer's position is read by the readers, the
/// readers' by the writer: neither should move the other's line with every record).
#[repr(align(64))]
#[derive(Default)]
pub(super) struct Line<T>(pub(super) T);

/// The buffer: `LANE_SLOTS` records of two words each.
pub(super) struct Lane {
    words: Box<[AtomicU64]>,
    /// Records written so far (the writer's; published with `Release`).
    head: Line<AtomicU64>,
    /// Records taken so far (the reader's; published with `Release`).
    tail: Line<AtomicU64>,
}

impl Lane {
    pub(super) fn new() -> Self {
        Self {
            words: (0..2 * LANE_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            head: Line::default(),
            tail: Line::default(),
        }
    }

    /// Hands every record written and not yet taken to `f`, oldest first. Only one reader
    /// may call this at a time (the stream calls it holding its ring's lock).
    pub(super) fn drain(&self, mut f: impl FnMut(u64, u64)) {
        let tail = self.tail.0.load(Ordering::Relaxed);
        // Acquire: the words written before `head` was published are seen.
        let head = self.head.0.load(Ordering::Acquire);
        for n in tail..head {
            let i = Self::at(n);
            f(
                self.words[i].load(Ordering::Relaxed),
                self.words[i + 1].load(Ordering::Relaxed),
            );
        }
        if head != tail {
            // Release: the words read above are read before the writer may write them again.
            self.tail.0.store(head, Ordering::Release);
        }
    }

    /// Whether a record is waiting to be taken.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.head.0.load(Ordering::Acquire) == self.tail.0.load(Ordering::Relaxed)
    }

    /// Where record `n`'s first word is.
    fn at(n: u64) -> usize {
        // LANE_SLOTS is a power of two: the mask is the remainder.
        2 * (n as usize & (LANE_SLOTS - 1))
    }
}

/// The writer's end of a [`Lane`]: kept by the one task that writes it.
pub(super) struct Writer {
    /// Records written (a copy of the lane's `head` that only this writer touches).
    head: AtomicU64,
    /// Records that may be written before the lane's `tail` must be read again.
    limit: AtomicU64,
}

impl Writer {
    pub(super) fn new() -> Self {
        Self {
            head: AtomicU64::new(0),
            limit: AtomicU64::new(LANE_SLOTS as u64),
        }
    }

    /// Writes a record of two words into `lane` (whose only writer this is); false when
    /// the lane is full (nothing written).
    #[inline]
    pub(super) fn push(&self, lane: &Lane, a: u64, b: u64) -> bool {
        // Relaxed loads and stores of the writer's own values: plain moves.
        let head = self.head.load(Ordering::Relaxed);
        if head >= self.limit.load(Ordering::Relaxed) {
            // Acquire: the reader is done with the words it released.
            let limit = lane.tail.0.load(Ordering::Acquire) + LANE_SLOTS as u64;
            self.limit.store(limit, Ordering::Relaxed);
            if head >= limit {
                return false;
            }
        }
        let i = Lane::at(head);
        lane.words[i].store(a, Ordering::Relaxed);
        lane.words[i + 1].store(b, Ordering::Relaxed);
        self.head.store(head + 1, Ordering::Relaxed);
        // Release: a reader that sees the new head sees the words.
        lane.head.0.store(head + 1, Ordering::Release);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_out_in_order_and_a_full_lane_refuses() {
        let lane = Lane::new();
        let w = Writer::new();
        let mut got = Vec::new();
        for round in 0..3u64 {
            for n in 0..LANE_SLOTS as u64 {
                assert!(w.push(&lane, round, n));
            }
            assert!(!w.push(&lane, 9, 9), "a full lane takes nothing");
            assert!(!lane.is_empty());
            got.clear();
            lane.drain(|a, b| got.push((a, b)));
            assert!(lane.is_empty());
            assert_eq!(got.len(), LANE_SLOTS);
            assert!(got.iter().enumerate().all(|(n, &r)| r == (round, n as u64)));
        }
        assert!(w.push(&lane, 7, 8));
        got.clear();
        lane.drain(|a, b| got.push((a, b)));
        assert_eq!(got, vec![(7, 8)]);
    }

    /// A writer and a reader on two threads: every record, in order, none twice.
    #[test]
    fn a_reader_on_another_thread_sees_every_record_once() {
        let lane = std::sync::Arc::new(Lane::new());
        let n = 200_000u64;
        let writer = {
            let lane = lane.clone();
            std::thread::spawn(move || {
                let w = Writer::new();
                let mut k = 0;
                while k < n {
                    if w.push(&lane, k, !k) {
                        k += 1;
                    } else {
                        std::thread::yield_now();
                    }
                }
            })
        };
        let mut next = 0u64;
        while next < n {
            lane.drain(|a, b| {
                assert_eq!((a, b), (next, !next));
                next += 1;
            });
        }
        writer.join().expect("writer");
        assert!(lane.is_empty());
    }
}

//! One tenure of a singleton's lease ([`super::singleton`]), shared by the machine's task
//! (which checks it before each action and wakes when it ends) and the renewal task (which
//! extends it). A file of its own so that the machine's task and the supervisor both use
//! it without importing each other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// One tenure of a lease, shared by the machine's task and the renewal task.
pub(crate) struct Tenure {
    epoch: i64,
    base: Instant,
    /// Microseconds after `base` at which the tenure ends unless renewed.
    deadline_us: AtomicU64,
    lease: Duration,
    lost: CancellationToken,
}

impl Tenure {
    pub(crate) fn new(epoch: i64, sent: Instant, lease: Duration) -> Self {
        let t = Self {
            epoch,
            base: sent,
            deadline_us: AtomicU64::new(0),
            lease,
            lost: CancellationToken::new(),
        };
        t.renewed(sent);
        t
    }

    /// A renewal sent at `sent` succeeded: the deadline moves to `sent` plus nine tenths
    /// of the lease (never later than the store's expiry, which counts from when the
    /// store received it). No effect once the tenure ended.
    pub(crate) fn renewed(&self, sent: Instant) {
        if self.lost.is_cancelled() {
            return;
        }
        let end = sent.saturating_duration_since(self.base) + self.lease.mul_f64(0.9);
        let us = u64::try_from(end.as_micros()).unwrap_or(u64::MAX);
        self.deadline_us.fetch_max(us, Ordering::AcqRel);
    }

    fn deadline(&self) -> Instant {
        self.base + Duration::from_micros(self.deadline_us.load(Ordering::Acquire))
    }

    /// Whether the tenure still holds now (checked before each action).
    pub(crate) fn holds(&self) -> bool {
        !self.lost.is_cancelled() && Instant::now() < self.deadline()
    }

    /// Ends the tenure (the deadline passed, a renewal was refused, a write was fenced).
    pub(crate) fn lose(&self) {
        self.lost.cancel();
    }

    /// Completes when the tenure has ended: lost, or its deadline passed unrenewed.
    pub(crate) async fn ended(&self) {
        loop {
            let deadline = tokio::time::Instant::from_std(self.deadline());
            tokio::select! {
                () = self.lost.cancelled() => return,
                () = tokio::time::sleep_until(deadline) => {
                    if !self.holds() {
                        return;
                    }
                }
            }
        }
    }

    /// The epoch.
    pub(crate) fn epoch(&self) -> i64 {
        self.epoch
    }
    /// Completes once the tenure was lost ([`Self::lose`]).
    pub(crate) async fn lost(&self) {
        self.lost.cancelled().await;
    }
}

//! How a store behaves, whatever its backend: leases, attempts, retry backoff, durability.
//! One set of options so that `--job-lease`, `--job-max-attempts` and `--db-sync` mean
//! the same thing on every backend.

use std::time::{Duration, SystemTime};

/// Tuning of a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How long a claim lasts without renewal (renewed every third of it while the process
    /// lives). Default 30 s.
    pub lease: Duration,
    /// Attempts of a job that does not say (`max_attempts` NULL). Default 3.
    pub max_attempts: u32,
    /// First retry delay; doubled per attempt. Default 1 s.
    pub backoff_base: Duration,
    /// Longest retry delay. Default 5 min.
    pub backoff_max: Duration,
    /// How long a writer waits for another process's lock. Default 10 s.
    pub busy_timeout: Duration,
    /// When a commit reaches the disk.
    pub sync: SyncMode,
    /// Renew leases from a background thread (default true; tests of lease expiry turn it
    /// off to play a dead worker).
    pub renew: bool,
    /// The lease owner this store object writes (`--instance-id` and the process's
    /// incarnation: [`crate::instance::Instance::owner`]); `None`: [`owner_id`].
    pub owner: Option<String>,
    /// The instance id written with every saved machine state (`machine_state.instance_id`;
    /// [`crate::instance::Instance::id`]); `None`: none written.
    pub instance_id: Option<String>,
    /// PostgreSQL: connections each of the store's two pools (claims, everything else)
    /// opens at most. Default [`DEFAULT_POOL_SIZE`]. SQLite ignores it.
    pub pool_size: usize,
    /// Jobs one claim of `claim_next` may take at once (`turnstile run --claim-batch`):
    /// above 1, a claim that finds this store object's buffer empty takes up to this many
    /// more than the machines waiting, hands one out and keeps the rest for the next
    /// claims of the same filter (see [`crate::store::prefetch`]). Default 1: one job
    /// per claim.
    pub claim_batch: usize,
}

/// [`StoreOptions::pool_size`] by default.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// When a commit reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Every commit is on disk before it is answered: a committed job survives a power
    /// loss or a kernel crash (SQLite: `synchronous=FULL`, the WAL fsynced per commit).
    /// Group commit shares one fsync among the writes that wait together.
    #[default]
    Full,
    /// Commits reach the disk later (SQLite: `synchronous=NORMAL`, fsync at checkpoints):
    /// a commit survives the process being killed, but the last commits can be lost with
    /// the machine.
    Normal,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            max_attempts: 3,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            busy_timeout: Duration::from_secs(10),
            sync: SyncMode::default(),
            renew: true,
            owner: None,
            instance_id: None,
            pool_size: DEFAULT_POOL_SIZE,
            claim_batch: 1,
        }
    }
}

impl StoreOptions {
    /// The retry delay after `attempts` attempts: `backoff_base`, doubled per attempt, at
    /// most `backoff_max`.
    pub fn backoff(&self, attempts: i64) -> Duration {
        let exp = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        self.backoff_base
            .saturating_mul(1u32 << exp)
            .min(self.backoff_max)
    }

    /// The lease in milliseconds.
    pub fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX / 4)
    }
}

/// The lease owner id of a store object: `turnstile:PID:NONCE`.
pub fn owner_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("turnstile:{}:{nanos:08x}", std::process::id())
}

/// A fresh job id: `job-<seconds><micros>-<pid>-<sequence>`, unique across processes.
pub fn new_job_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "job-{}{:06}-{}-{n}",
        t.as_secs(),
        t.subsec_micros(),
        std::process::id()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_maximum() {
        let o = StoreOptions {
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(5),
            ..StoreOptions::default()
        };
        let got: Vec<u64> = (0..6).map(|a| o.backoff(a).as_secs()).collect();
        assert_eq!(got, [1, 1, 2, 4, 5, 5]);
    }
}

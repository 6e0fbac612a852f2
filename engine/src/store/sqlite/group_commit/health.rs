//! Whether the store's writes commit, and the claims whose commit failed: what the writer
//! learns and the store reads (readiness, claim backoff, refused completions).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// First and longest claim backoff while writes fail.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// True for SQLite errors that say the database cannot be written now (space, I/O,
/// permissions, a vanished or damaged file), as opposed to an operation's own failure
/// (a constraint, a bad value, a busy lock). SQLite's messages for these codes.
pub(crate) fn storage_failure(msg: &str) -> bool {
    const MARKS: &[&str] = &[
        "database or disk is full",
        "disk I/O error",
        "readonly database",
        "unable to open database file",
        "database disk image is malformed",
        "file is not a database",
        "was deleted",
        "was replaced",
        "is read-only",
    ];
    MARKS.iter().any(|m| msg.contains(m))
}

/// Whether the store's writes commit (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// Why writes fail, since the last transaction that wrote something and committed.
    pub(crate) failing: Option<String>,
    /// Transactions failed in a row.
    pub(crate) failures: u32,
    /// When the last one failed.
    pub(crate) last_failure: Option<Instant>,
    /// When a transaction that wrote something last committed.
    pub(crate) last_commit: Option<Instant>,
}

impl Health {
    /// How long a claimer should wait before its next claim: `None` while writes commit,
    /// else 100 ms after the first failure, doubled per failure, at most 2 s, counted from
    /// the last failure.
    pub(crate) fn backoff(&self) -> Option<Duration> {
        self.failing.as_ref()?;
        let exp = self.failures.saturating_sub(1).min(16);
        let full = BACKOFF_FIRST.saturating_mul(1 << exp).min(BACKOFF_MAX);
        let since = self.last_failure.map_or(Duration::ZERO, |t| t.elapsed());
        Some(full.saturating_sub(since).max(Duration::from_millis(10)))
    }

    pub(super) fn failed(&mut self, why: &str) {
        if self.failing.is_none() {
            tracing::warn!(target: "turnstile::store", "the job store cannot write: {why}; claims wait for their commit and back off, the store reports not ready until a write commits");
        }
        self.failing = Some(why.to_owned());
        self.failures = self.failures.saturating_add(1);
        self.last_failure = Some(Instant::now());
    }

    /// True when writes failed until now.
    pub(super) fn committed(&mut self) -> bool {
        let was = self.failing.take();
        if let Some(why) = &was {
            tracing::warn!(target: "turnstile::store", "the job store writes again (it failed {} time(s): {why})", self.failures);
        }
        self.failures = 0;
        self.last_commit = Some(Instant::now());
        was.is_some()
    }
}

/// Claims answered early whose transaction did not commit (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct Lost {
    /// Attempts not yet written, by job id.
    pub(crate) pending: HashMap<String, u32>,
    /// Jobs whose claim was lost, with why: this process may not complete them.
    pub(crate) refused: HashMap<String, String>,
}

impl Lost {
    /// Takes back the refusal of `job_id`: the reason, if it was refused.
    pub(crate) fn take_refusal(&mut self, job_id: &str) -> Option<String> {
        self.refused.remove(job_id)
    }
}

/// State the writer shares with the store.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    health: Mutex<Health>,
    lost: Mutex<Lost>,
}

impl Shared {
    pub(crate) fn health(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn lost(&self) -> MutexGuard<'_, Lost> {
        self.lost.lock().unwrap_or_else(|e| e.into_inner())
    }
}

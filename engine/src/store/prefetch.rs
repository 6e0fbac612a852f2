//! Batched claims: a store object that claims with [`StoreOptions::claim_batch`] above 1
//! takes several jobs of one filter in one claim (one statement or transaction) when a
//! machine asks and nothing is buffered, hands one to the asker and keeps the rest here
//! for the next askers of the same filter. Any backend keeps the buffer the same way; the
//! backend only supplies the batch claim.
//!
//! - A batch is at most `claim_batch - 1` jobs more than the machines of this process
//!   waiting on that filter at that moment (each waiting machine gets one, the rest is
//!   prefetched), and at most [`MAX_CLAIM_BATCH`]. Claims of one filter are serialised
//!   within the process: an asker that finds the buffer empty while another claims waits
//!   for that claim and is served from what it brought.
//! - Buffered jobs are held like any claimed job (in [`Holds`], no holder): leased to this
//!   process, renewed by its lease thread, given back by `release_held`.
//! - A buffered job is handed out only while its lease is known to be good for a third of
//!   the lease more (its claim or last renewal, see [`Prefetch::renewed`]); one whose
//!   renewal did not find it under this owner (its lease was lost) is dropped at once, and
//!   one whose renewals failed waits (held) for the next renewal that answers.
//! - Fairness: a buffered job no machine of this process took within [`Prefetch::hold`] (a
//!   third of the lease, at least 1 s) is given back to the queue at the next renewal, so
//!   that jobs prefetched behind busy machines go to other processes.
//!
//! [`StoreOptions::claim_batch`]: super::StoreOptions::claim_batch

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use super::holds::Holds;
use super::{Claim, Job, JobFilter, StoreError};

/// The most jobs one batch claim takes.
pub const MAX_CLAIM_BATCH: usize = 1000;

/// What a backend's batch claim found: the jobs it leased (in claim order), or, when none,
/// when something may become claimable ([`Claim::Empty`]'s `next_due`).
pub(crate) type Batch = (Vec<Job>, Option<SystemTime>);

struct Buffered {
    job: Job,
    /// Handed out only before this (its lease is good for a third of a lease more).
    good_until: Instant,
    /// When it was claimed.
    since: Instant,
}

#[derive(Default)]
struct Slot {
    jobs: VecDeque<Buffered>,
    /// Claim calls for this filter in progress (waiting machines).
    asking: usize,
    /// Serialises this filter's batch claims.
    claiming: Arc<Mutex<()>>,
}

/// The claim-ahead buffer of one store object, per filter.
#[derive(Default)]
pub(crate) struct Prefetch {
    batch: usize,
    lease: Duration,
    slots: Mutex<HashMap<JobFilter, Slot>>,
    /// Stale jobs whose giving back failed (the database did not answer): still held,
    /// given back at the next renewal.
    retry: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Prefetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefetch")
            .field("batch", &self.batch)
            .field("buffered", &self.buffered())
            .finish()
    }
}

/// Decrements the filter's `asking` count when a claim call ends.
struct Asking<'a>(&'a Prefetch, &'a JobFilter);

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.0.slots().get_mut(self.1) {
            s.asking = s.asking.saturating_sub(1);
        }
    }
}

impl Prefetch {
    /// A buffer for batches of `batch` (1: no batching) under leases of `lease`.
    pub(crate) fn new(batch: usize, lease: Duration) -> Self {
        Self {
            batch: batch.clamp(1, MAX_CLAIM_BATCH),
            lease,
            slots: Mutex::default(),
            retry: Mutex::default(),
        }
    }

    /// True when claims are batched.
    pub(crate) fn on(&self) -> bool {
        self.batch > 1
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<JobFilter, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long a buffered job waits for a machine of this process before it is given back.
    pub(crate) fn hold(&self) -> Duration {
        (self.lease / 3).max(Duration::from_secs(1))
    }

    fn good_for(&self) -> Duration {
        self.lease.saturating_sub(self.lease / 3)
    }

    /// Jobs buffered now, all filters.
    pub(crate) fn buffered(&self) -> usize {
        self.slots().values().map(|s| s.jobs.len()).sum()
    }

    /// The first buffered job whose lease is known to be good. One whose lease is not
    /// (its renewals failed: the database did not answer) stays buffered and held until a
    /// renewal finds it still this process's ([`Self::renewed`]) or not.
    fn take(&self, filter: &JobFilter) -> Option<Job> {
        let now = Instant::now();
        let mut slots = self.slots();
        let slot = slots.get_mut(filter)?;
        let i = slot.jobs.iter().position(|b| b.good_until > now)?;
        slot.jobs.remove(i).map(|b| b.job)
    }

    /// A buffered job for `filter` that may be handed out now, when writes succeed
    /// (`writable`); the caller's [`Self::claim`] asks the database otherwise.
    pub(crate) fn take_ready(&self, filter: &JobFilter, writable: bool) -> Option<Job> {
        if !writable || !self.on() {
            return None;
        }
        self.take(filter)
    }

    /// Claims for `filter`: from the buffer when it holds a job, else by `claim` (called
    /// with how many to take) whose first job goes to the caller and the rest to the
    /// buffer. Every job `claim` returns must already be in `holds`. `writable`: false
    /// while the store's writes fail, when nothing is handed out of the buffer (the
    /// machine could not complete it either) and the claim goes to the database.
    pub(crate) fn claim(
        &self,
        filter: &JobFilter,
        writable: bool,
        claim: impl FnOnce(usize) -> Result<Batch, StoreError>,
    ) -> Result<Claim, StoreError> {
        let claiming = {
            let mut slots = self.slots();
            let slot = slots.entry(filter.clone()).or_default();
            slot.asking += 1;
            slot.claiming.clone()
        };
        let _asking = Asking(self, filter);
        if let Some(j) = writable.then(|| self.take(filter)).flatten() {
            return Ok(Claim::Job(Box::new(j)));
        }
        let _one = claiming.lock().unwrap_or_else(|e| e.into_inner());
        // Another asker's batch may have filled the buffer meanwhile.
        if let Some(j) = writable.then(|| self.take(filter)).flatten() {
            return Ok(Claim::Job(Box::new(j)));
        }
        let asking = self.slots().get(filter).map_or(1, |s| s.asking.max(1));
        let n = (asking + self.batch - 1).min(MAX_CLAIM_BATCH);
        let started = Instant::now();
        let (jobs, next_due) = claim(n)?;
        let mut jobs = jobs.into_iter();
        let Some(first) = jobs.next() else {
            return Ok(Claim::Empty { next_due });
        };
        let good_until = started + self.good_for();
        let mut slots = self.slots();
        let slot = slots.entry(filter.clone()).or_default();
        slot.jobs.extend(jobs.map(|job| Buffered {
            job,
            good_until,
            since: started,
        }));
        Ok(Claim::Job(Box::new(first)))
    }

    /// A stale job could not be given back: it stays held (renewed) and is given back at
    /// the next renewal ([`Self::take_stale`]).
    pub(crate) fn give_back_later(&self, job_id: String, holds: &Holds) {
        holds.claimed(&job_id);
        self.retry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(job_id);
    }

    /// Takes out the buffered jobs no machine took within [`Self::hold`] (and those whose
    /// giving back failed before), to give back.
    pub(crate) fn take_stale(&self) -> Vec<String> {
        let mut out = std::mem::take(&mut *self.retry.lock().unwrap_or_else(|e| e.into_inner()));
        let Some(cutoff) = Instant::now().checked_sub(self.hold()) else {
            return out;
        };
        for slot in self.slots().values_mut() {
            slot.jobs.retain(|b| {
                let stale = b.since <= cutoff;
                if stale {
                    out.push(b.job.job_id.clone());
                }
                !stale
            });
        }
        out
    }

    /// Takes out every buffered job (the process stops: they are given back).
    pub(crate) fn drain(&self) -> Vec<String> {
        let mut out = Vec::new();
        for slot in self.slots().values_mut() {
            out.extend(slot.jobs.drain(..).map(|b| b.job.job_id));
        }
        out
    }

    /// A renewal that started at `started` asked for `asked` and extended `renewed`: the
    /// buffered jobs renewed are good for longer; those asked for and not renewed are no
    /// longer this process's (their lease was lost): dropped, and no longer held.
    pub(crate) fn renewed(
        &self,
        started: Instant,
        asked: &[String],
        renewed: &HashSet<String>,
        holds: &Holds,
    ) {
        let asked: HashSet<&str> = asked.iter().map(String::as_str).collect();
        let good_until = started + self.good_for();
        for slot in self.slots().values_mut() {
            slot.jobs.retain_mut(|b| {
                let id = b.job.job_id.as_str();
                if renewed.contains(id) {
                    b.good_until = b.good_until.max(good_until);
                    true
                } else if asked.contains(id) {
                    tracing::warn!(target: "turnstile::store", job = %id, "a prefetched job's lease was lost: not handed out");
                    holds.release(id);
                    false
                } else {
                    true
                }
            });
        }
    }
}

//! The job queue on SQLite: every write goes through the group commit writer
//! ([`super::group_commit`]); a claim reaps expired leases, picks the next job through a
//! partial index and leases it, in one `BEGIN IMMEDIATE` transaction.

use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value as Json;

use super::rows::{holder_of, job_from_row, time_col, Cached, JOB_BY_ROWID, JOB_COLUMNS};
use super::SqliteStore;
use crate::store::prefetch::Batch;
use crate::store::{
    from_ms, now_ms, with_ids, Added, Claim, ClaimLoss, Failed, Holder, Job, JobChange, JobFilter,
    JobStore, ListJobs, NewJob, QueueHealth, StoreError, Timestamp,
};

/// Writes the attempts of claims that were answered but not committed (see
/// [`super::group_commit`]): each counts as an attempt; a pending job out of attempts is
/// dead-lettered.
pub(super) fn count_lost(
    tx: &Connection,
    lost: &[(String, u32)],
    default_max: i64,
) -> Result<(), StoreError> {
    for (job_id, n) in lost {
        tx.exec_cached(
            "UPDATE jobs SET attempts = COALESCE(attempts, 0) + ?2,
                error_message = 'a claim was lost: its transaction did not commit'
             WHERE job_id = ?1 AND status IN ('pending', 'processing')",
            params![job_id, n],
        )?;
        tx.exec_cached(
            "UPDATE jobs SET status = 'dead', completed_at = CURRENT_TIMESTAMP,
                lease_owner = NULL, lease_until = NULL, next_attempt_at = NULL,
                error_message = 'its last attempt was lost: the claim did not commit'
             WHERE job_id = ?1 AND status = 'pending' AND attempts >= COALESCE(max_attempts, ?2)",
            params![job_id, default_max],
        )?;
    }
    Ok(())
}

/// Adds one job in the writer's transaction, unless a pending or processing job holds
/// its unique key. The transaction holds SQLite's write lock, so no other process adds
/// between the look-up and the insert; the partial unique index `idx_jobs_unique_key`
/// enforces the rule for any other writer.
fn insert_job(tx: &Connection, id: String, job: NewJob) -> Result<Added, StoreError> {
    if let Some(key) = &job.unique_key {
        if let Some(job_id) = holder_of(tx, key)? {
            return Ok(Added::Existing { job_id });
        }
    }
    let enc = |v: &Option<Json>| v.as_ref().map(Json::to_string);
    tx.exec_cached(
        "INSERT INTO jobs (job_id, job_type, machine_type, source_job_id, priority,
            data, metadata, status, max_attempts, traceparent, next_attempt_at, unique_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?8, ?9, ?10, ?11)",
        params![
            id,
            job.job_type,
            job.machine_type,
            job.source_job_id,
            job.priority.unwrap_or(5),
            enc(&job.data),
            enc(&job.metadata),
            job.max_attempts,
            job.traceparent,
            job.run_after.map(Timestamp::as_ms),
            job.unique_key,
        ],
    )
    .map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, msg)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            if msg.as_deref().is_some_and(|m| m.contains("unique_key")) {
                StoreError::Db(format!(
                    "job `{id}`: its unique key is taken by a job this store did not see: {}",
                    msg.unwrap_or_default()
                ))
            } else {
                StoreError::Invalid(format!("a job with id `{id}` already exists"))
            }
        }
        e => e.into(),
    })?;
    Ok(Added::Added { job_id: id })
}

/// The statement that picks the next job for `filter`. Only the filters given appear in
/// the SQL (not `?x IS NULL OR ...`), so SQLite walks the partial index `idx_jobs_pending_type`
/// or `idx_jobs_pending` in claim order and stops at the first match instead of sorting
/// every pending row (the plan is checked by a test).
fn pick_sql(filter: &JobFilter) -> &'static str {
    // `INDEXED BY`: without statistics SQLite may prefer statemachine-engine's
    // `idx_jobs_status` and sort every pending row.
    match (filter.job_type.is_some(), filter.machine_type.is_some()) {
        (true, true) => {
            "SELECT id FROM jobs INDEXED BY idx_jobs_pending_type
             WHERE status = 'pending' AND job_type = ?2 AND machine_type = ?3
               AND (next_attempt_at IS NULL OR next_attempt_at <= ?1)
             ORDER BY priority ASC, created_at ASC, id ASC LIMIT 1"
        }
        (true, false) => {
            "SELECT id FROM jobs INDEXED BY idx_jobs_pending_type
             WHERE status = 'pending' AND job_type = ?2 AND ?3 IS NULL
               AND (next_attempt_at IS NULL OR next_attempt_at <= ?1)
             ORDER BY priority ASC, created_at ASC, id ASC LIMIT 1"
        }
        (false, true) => {
            "SELECT id FROM jobs INDEXED BY idx_jobs_pending_machine
             WHERE status = 'pending' AND ?2 IS NULL AND machine_type = ?3
               AND (next_attempt_at IS NULL OR next_attempt_at <= ?1)
             ORDER BY priority ASC, created_at ASC, id ASC LIMIT 1"
        }
        (false, false) => {
            "SELECT id FROM jobs INDEXED BY idx_jobs_pending
             WHERE status = 'pending' AND ?2 IS NULL AND ?3 IS NULL
               AND (next_attempt_at IS NULL OR next_attempt_at <= ?1)
             ORDER BY priority ASC, created_at ASC, id ASC LIMIT 1"
        }
    }
}

/// Returns jobs whose lease expired to pending, or to `dead` when they are out of
/// attempts. Part of every claim's transaction.
fn reap_expired(tx: &Connection, now: i64, default_max: i64) -> rusqlite::Result<usize> {
    let dead = tx.exec_cached(
        "UPDATE jobs INDEXED BY idx_jobs_leased SET status = 'dead', lease_owner = NULL, lease_until = NULL,
            completed_at = CURRENT_TIMESTAMP,
            error_message = 'lease expired after the last attempt (worker died?)'
         WHERE status = 'processing' AND lease_until IS NOT NULL AND lease_until < ?1
           AND attempts >= COALESCE(max_attempts, ?2)",
        params![now, default_max],
    )?;
    let back = tx.exec_cached(
        "UPDATE jobs INDEXED BY idx_jobs_leased SET status = 'pending', lease_owner = NULL, lease_until = NULL,
            started_at = NULL, error_message = 'lease expired (worker died?)'
         WHERE status = 'processing' AND lease_until IS NOT NULL AND lease_until < ?1",
        params![now],
    )?;
    Ok(dead + back)
}

/// Marks job `?1` completed with result `?2` (kept when `NULL`), when it is still
/// pending or processing: 0 rows when it was finished elsewhere.
const COMPLETE: &str = "UPDATE jobs SET status = 'completed', completed_at = CURRENT_TIMESTAMP,
        lease_owner = NULL, lease_until = NULL, result = COALESCE(?2, result)
     WHERE job_id = ?1 AND status IN ('pending', 'processing')";

impl SqliteStore {
    /// Claims up to `n` jobs for `owner` in one transaction through the writer, answered
    /// after its commit; they are held by this store object. Jobs in claim order.
    fn claim_up_to(&self, filter: &JobFilter, owner: &str, n: usize) -> Result<Batch, StoreError> {
        let default_max = i64::from(self.inner.opts.max_attempts);
        let lease_ms = self.lease_ms();
        let (filter, owner) = (filter.clone(), owner.to_owned());
        let shared = self.inner.group.shared().clone();
        let limit = i64::try_from(n).unwrap_or(1);
        let batch = self.write(move |tx| {
            let now = now_ms();
            reap_expired(tx, now, default_max)?;
            let pick = pick_sql(&filter).replace("LIMIT 1", "LIMIT ?4");
            let ids: Vec<i64> = {
                let mut st = tx.prepare_cached(&pick)?;
                let rows = st.query_map(
                    params![now, filter.job_type, filter.machine_type, limit],
                    |r| r.get(0),
                )?;
                rows.collect::<Result<_, _>>()?
            };
            let mut jobs = Vec::with_capacity(ids.len());
            for id in ids {
                tx.exec_cached(
                    "UPDATE jobs SET status = 'processing', started_at = CURRENT_TIMESTAMP,
                        lease_owner = ?2, lease_until = ?3, attempts = COALESCE(attempts, 0) + 1,
                        next_attempt_at = NULL
                     WHERE id = ?1",
                    params![id, owner, now + lease_ms],
                )?;
                let job = tx.row_cached(JOB_BY_ROWID, [id], |r| job_from_row(r, default_max))?;
                shared.lost().take_refusal(&job.job_id);
                jobs.push(job);
            }
            if !jobs.is_empty() {
                return Ok((jobs, None));
            }
            Ok((Vec::new(), next_due(tx, &filter)?))
        })?;
        for j in &batch.0 {
            self.inner.holds.claimed(&j.job_id);
        }
        Ok(batch)
    }
}

/// When something for `filter` may become claimable without anyone adding a job.
fn next_due(
    tx: &Connection,
    filter: &JobFilter,
) -> rusqlite::Result<Option<std::time::SystemTime>> {
    let due: Option<i64> = tx.row_cached(
        "SELECT MIN(t) FROM (
        SELECT MIN(next_attempt_at) AS t FROM jobs
         WHERE status = 'pending' AND next_attempt_at IS NOT NULL
           AND (?1 IS NULL OR job_type = ?1)
           AND (?2 IS NULL OR machine_type = ?2)
        UNION ALL
        SELECT MIN(lease_until) FROM jobs
         WHERE status = 'processing' AND lease_until IS NOT NULL
           AND (?1 IS NULL OR job_type = ?1)
           AND (?2 IS NULL OR machine_type = ?2))",
        params![filter.job_type, filter.machine_type],
        |r| r.get(0),
    )?;
    Ok(due.map(from_ms))
}

impl SqliteStore {
    /// Queues the completion of a job whose hold was taken, without waiting (see
    /// [`JobStore::complete_held`]); false (held again) when the writer is gone.
    pub(super) fn queue_behind(&self, job_id: String, result: Option<Json>) -> bool {
        let shared = self.inner.group.shared().clone();
        let (id, text) = (job_id.clone(), result.as_ref().map(Json::to_string));
        let complete = move |tx: &Connection| {
            // In the writer: a claim of this job whose commit failed is known by now.
            if let Some(why) = shared.lost().take_refusal(&id) {
                tracing::warn!(target: "turnstile::store", job = %id, "a completion answered before its write is dropped: the job's claim did not commit ({why}), so the job went back to the queue");
                return Ok(true);
            }
            let n = tx.exec_cached(COMPLETE, params![id, text])?;
            Ok(n > 0)
        };
        let inner = Arc::downgrade(&self.inner);
        let id = job_id.clone();
        let keep = result.clone();
        let done = move |r: Result<bool, StoreError>| {
            let Some(inner) = inner.upgrade() else { return };
            if crate::store::behind_failed(&id, &r) {
                inner.holds.unwritten(id, keep);
            } else if matches!(r, Ok(true)) {
                // `wait_for_jobs` waiters.
                inner.notify.notify_waiters();
            }
        };
        match self.inner.group.write_behind(complete, done) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(target: "turnstile::store", job = %job_id, "completion not queued ({e})");
                self.inner.holds.claimed(&job_id);
                false
            }
        }
    }
}

impl JobStore for SqliteStore {
    fn add_jobs(&self, jobs: Vec<NewJob>) -> Result<Vec<Added>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let jobs = with_ids(jobs)?;
        let out = self.write(move |tx| {
            jobs.into_iter()
                .map(|(id, job)| insert_job(tx, id, job))
                .collect::<Result<Vec<_>, _>>()
        })?;
        if out.iter().any(|a| matches!(a, Added::Added { .. })) {
            self.inner.notify.notify_waiters();
        }
        Ok(out)
    }

    fn claim_next(&self, filter: &JobFilter, owner: &str) -> Result<Claim, StoreError> {
        self.claim_next_watched(filter, owner).map(|(c, _)| c)
    }

    fn claim_next_watched(
        &self,
        filter: &JobFilter,
        owner: &str,
    ) -> Result<(Claim, Option<ClaimLoss>), StoreError> {
        if self.inner.prefetch.on() && owner == self.inner.owner {
            // Batches are answered after their commit: no claim of theirs can be lost.
            let claim = self
                .inner
                .prefetch
                .claim(filter, self.claim_backoff().is_none(), |n| {
                    self.claim_up_to(filter, owner, n)
                })?;
            return Ok((claim, None));
        }
        let default_max = i64::from(self.inner.opts.max_attempts);
        let lease_ms = self.lease_ms();
        let (filter, owner) = (filter.clone(), owner.to_owned());
        let shared = self.inner.group.shared().clone();
        let (claim, loss) = self.claim_write(
            move |tx| {
                // Read the clock in the transaction: a batch may start later than the call.
                let now = now_ms();
                reap_expired(tx, now, default_max)?;
                // Pick, lease, read back: three cached statements in the one immediate
                // transaction (an `UPDATE ... RETURNING` was re-prepared by SQLite on every
                // call).
                let picked: Option<i64> = tx
                    .row_cached(
                        pick_sql(&filter),
                        params![now, filter.job_type, filter.machine_type],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(id) = picked {
                    tx.exec_cached(
                        "UPDATE jobs SET status = 'processing', started_at = CURRENT_TIMESTAMP,
                        lease_owner = ?2, lease_until = ?3, attempts = COALESCE(attempts, 0) + 1,
                        next_attempt_at = NULL
                     WHERE id = ?1",
                        params![id, owner, now + lease_ms],
                    )?;
                    let job =
                        tx.row_cached(JOB_BY_ROWID, [id], |r| job_from_row(r, default_max))?;
                    // Claimed again: an earlier lost claim's refusal no longer applies. In
                    // the writer, so that this claim's own loss (recorded after its batch)
                    // is not taken back by its caller.
                    shared.lost().take_refusal(&job.job_id);
                    return Ok(Claim::Job(Box::new(job)));
                }
                Ok(Claim::Empty {
                    next_due: next_due(tx, &filter)?,
                })
            },
            |c| match c {
                Claim::Job(j) => Some(j.job_id.clone()),
                Claim::Empty { .. } => None,
            },
        )?;
        match &claim {
            Claim::Job(j) => {
                self.inner.holds.claimed(&j.job_id);
                Ok((claim, loss))
            }
            Claim::Empty { .. } => Ok((claim, None)),
        }
    }

    fn claim_job(&self, job_id: &str, owner: &str) -> Result<bool, StoreError> {
        self.claim_job_watched(job_id, owner).map(|(c, _)| c)
    }

    fn claim_job_watched(
        &self,
        job_id: &str,
        owner: &str,
    ) -> Result<(bool, Option<ClaimLoss>), StoreError> {
        let default_max = i64::from(self.inner.opts.max_attempts);
        let lease_ms = self.lease_ms();
        let (id, owner) = (job_id.to_owned(), owner.to_owned());
        let shared = self.inner.group.shared().clone();
        let (claimed, loss) = self.claim_write(
            move |tx| {
                let now = now_ms();
                reap_expired(tx, now, default_max)?;
                let n = tx.exec_cached(
                    "UPDATE jobs SET status = 'processing', started_at = CURRENT_TIMESTAMP,
                    lease_owner = ?2, lease_until = ?3, attempts = COALESCE(attempts, 0) + 1,
                    next_attempt_at = NULL
                 WHERE job_id = ?1 AND status = 'pending'",
                    params![id, owner, now + lease_ms],
                )?;
                if n > 0 {
                    // As in `claim_next_watched`: in the writer.
                    shared.lost().take_refusal(&id);
                }
                Ok(n > 0)
            },
            {
                let id = job_id.to_owned();
                move |claimed: &bool| claimed.then(|| id.clone())
            },
        )?;
        if claimed {
            self.inner.holds.claimed(job_id);
            return Ok((true, loss));
        }
        Ok((false, None))
    }

    fn release_job(&self, job_id: &str, owner: &str) -> Result<bool, StoreError> {
        self.inner.holds.release(job_id);
        let (job_id, owner) = (job_id.to_owned(), owner.to_owned());
        let released = self.write(move |tx| {
            let n = tx.exec_cached(
                "UPDATE jobs SET status = 'pending', lease_owner = NULL, lease_until = NULL,
                    started_at = NULL, attempts = MAX(COALESCE(attempts, 1) - 1, 0)
                 WHERE job_id = ?1 AND status = 'processing' AND lease_owner = ?2",
                params![job_id, owner],
            )?;
            Ok(n > 0)
        })?;
        if released {
            self.inner.notify.notify_waiters();
        }
        Ok(released)
    }

    fn complete_job(&self, job_id: &str, result: Option<&Json>) -> Result<bool, StoreError> {
        self.inner.holds.release(job_id);
        let job_id = job_id.to_owned();
        let result = result.map(Json::to_string);
        let shared = self.inner.group.shared().clone();
        let done = self.finish_write(move |tx| {
            // In the writer: a claim of this job whose commit failed is known by now.
            if let Some(why) = shared.lost().take_refusal(&job_id) {
                return Err(StoreError::Db(format!(
                    "job `{job_id}` is not this worker's: its claim did not commit ({why}), so the job went back to the queue; this completion is refused"
                )));
            }
            let n = tx.exec_cached(
                COMPLETE,
                params![job_id, result],
            )?;
            Ok(n > 0)
        })?;
        if done {
            // `wait_for_jobs` waiters.
            self.inner.notify.notify_waiters();
        }
        Ok(done)
    }

    fn complete_held(&self, job_id: &str, result: Option<&Json>) -> bool {
        if !self.inner.prefetch.on()
            || self.claim_backoff().is_some()
            || !self.inner.holds.take(job_id)
        {
            return false;
        }
        self.queue_behind(job_id.to_owned(), result.cloned())
    }

    fn claim_buffered(&self, filter: &JobFilter) -> Option<Job> {
        self.inner
            .prefetch
            .take_ready(filter, self.claim_backoff().is_none())
    }

    fn fail_job(&self, job_id: &str, error: &str) -> Result<Failed, StoreError> {
        self.inner.holds.release(job_id);
        let default_max = i64::from(self.inner.opts.max_attempts);
        let (job_id, error) = (job_id.to_owned(), error.to_owned());
        let opts = self.inner.opts.clone();
        let shared = self.inner.group.shared().clone();
        let out = self.finish_write(move |tx| {
            // A lost claim's attempt is counted in front of this transaction already.
            shared.lost().take_refusal(&job_id);
            let row: Option<(i64, Option<i64>)> = tx
                .row_cached(
                    "SELECT COALESCE(attempts, 0), max_attempts FROM jobs
                     WHERE job_id = ?1 AND status IN ('processing', 'pending')",
                    [&job_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((attempts, max)) = row else {
                return Ok(Failed::NotFound);
            };
            // A job failed without ever being claimed counts as one attempt.
            let attempts = attempts.max(1);
            if attempts >= max.unwrap_or(default_max) {
                tx.exec_cached(
                    "UPDATE jobs SET status = 'dead', error_message = ?2, attempts = ?3,
                        completed_at = CURRENT_TIMESTAMP, lease_owner = NULL, lease_until = NULL
                     WHERE job_id = ?1",
                    params![job_id, error, attempts],
                )?;
                return Ok(Failed::Dead);
            }
            let at = now_ms()
                + i64::try_from(opts.backoff(attempts).as_millis()).unwrap_or(i64::MAX / 4);
            tx.exec_cached(
                "UPDATE jobs SET status = 'pending', error_message = ?2, attempts = ?3,
                    next_attempt_at = ?4, started_at = NULL, lease_owner = NULL,
                    lease_until = NULL
                 WHERE job_id = ?1",
                params![job_id, error, attempts, at],
            )?;
            Ok(Failed::Retry {
                at: from_ms(at),
                attempts,
            })
        })?;
        if !matches!(out, Failed::NotFound) {
            self.inner.notify.notify_waiters();
        }
        Ok(out)
    }

    fn renew_leases(&self, owner: &str) -> Result<usize, StoreError> {
        let owner = owner.to_owned();
        let lease_ms = self.lease_ms();
        self.write(move |tx| {
            Ok(tx.exec_cached(
                "UPDATE jobs SET lease_until = ?2 WHERE status = 'processing' AND lease_owner = ?1",
                params![owner, now_ms() + lease_ms],
            )?)
        })
    }

    fn abandon_job(&self, job_id: &str, why: &str) -> Result<bool, StoreError> {
        self.inner.holds.release(job_id);
        let (job_id, why, owner) = (job_id.to_owned(), why.to_owned(), self.inner.owner.clone());
        let done = self.write(move |tx| {
            let n = tx.exec_cached(
                "UPDATE jobs SET status = 'failed', error_message = ?3,
                    completed_at = CURRENT_TIMESTAMP, lease_owner = NULL, lease_until = NULL
                 WHERE job_id = ?1 AND status = 'processing' AND lease_owner = ?2",
                params![job_id, owner, why],
            )?;
            Ok(n > 0)
        })?;
        if done {
            self.inner.notify.notify_waiters();
        }
        Ok(done)
    }

    fn release_held(&self) -> Result<usize, StoreError> {
        // Prefetched jobs first, so that no machine takes one meanwhile.
        self.inner.prefetch.drain();
        // Completions answered before their write (`complete_held`) are committed first
        // (the writer runs writes in order), those whose write failed tried once more.
        self.inner
            .holds
            .write_again(|id, result| self.queue_behind(id, result));
        let _ = self.write(|_| Ok(()));
        let mut n = 0;
        for id in self.inner.holds.all() {
            if self.release_job(&id, &self.inner.owner)? {
                n += 1;
            }
        }
        Ok(n)
    }

    fn set_holder(&self, job_id: &str, holder: Holder) {
        self.inner.holds.set_holder(job_id, holder);
    }

    fn queue_job_of(&self, machine: &str) -> Option<String> {
        self.inner.holds.queue_job_of(machine)
    }

    fn get_job(&self, job_id: &str) -> Result<Option<Job>, StoreError> {
        let default_max = i64::from(self.inner.opts.max_attempts);
        Ok(self
            .conn()
            .row_cached(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?1"),
                [job_id],
                |r| job_from_row(r, default_max),
            )
            .optional()?)
    }

    fn list_jobs(&self, q: &ListJobs) -> Result<Vec<Job>, StoreError> {
        let default_max = i64::from(self.inner.opts.max_attempts);
        let conn = self.conn();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR job_type = ?2)
               AND (?3 IS NULL OR machine_type = ?3) AND (?5 IS NULL OR id < ?5)
             ORDER BY id DESC LIMIT ?4"
        ))?;
        let limit = q.limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let rows = st.query_map(
            params![q.status, q.job_type, q.machine_type, limit, q.after],
            |r| job_from_row(r, default_max),
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn retry_job(&self, job_id: &str) -> Result<JobChange, StoreError> {
        let change = super::admin::retry(self, job_id)?;
        if matches!(change, JobChange::Changed(_)) {
            self.inner.notify.notify_waiters();
        }
        Ok(change)
    }

    fn cancel_job(&self, job_id: &str) -> Result<JobChange, StoreError> {
        // `wait_for_jobs` waiters: a cancelled job counts as failed.
        let change = super::admin::cancel(self, job_id)?;
        if matches!(change, JobChange::Changed(_)) {
            self.inner.notify.notify_waiters();
        }
        Ok(change)
    }

    fn purge_jobs(&self, age: Duration) -> Result<u64, StoreError> {
        super::admin::purge(self, age)
    }

    fn pending_jobs(
        &self,
        filter: &JobFilter,
        limit: Option<usize>,
    ) -> Result<Vec<Job>, StoreError> {
        let default_max = i64::from(self.inner.opts.max_attempts);
        let conn = self.conn();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE status = 'pending' AND (?1 IS NULL OR job_type = ?1)
               AND (?2 IS NULL OR machine_type = ?2)
             ORDER BY priority ASC, created_at ASC, id ASC LIMIT ?3"
        ))?;
        let limit = limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let rows = st.query_map(params![filter.job_type, filter.machine_type, limit], |r| {
            job_from_row(r, default_max)
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn counts(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT job_type, COALESCE(status, 'pending'), COUNT(*) FROM jobs
             GROUP BY 1, 2 ORDER BY 1, 2",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn queue_health(&self) -> Result<QueueHealth, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT job_type, MIN(created_at) FROM jobs WHERE status = 'pending'
             GROUP BY job_type ORDER BY job_type",
        )?;
        let oldest = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, time_col(r, 1)?)))?
            .filter_map(|r| match r {
                Ok((t, Some(at))) => Some(Ok((t, at))),
                Ok((_, None)) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let events: i64 = conn.row_cached(
            "SELECT COUNT(*) FROM machine_events WHERE status = 'pending'",
            [],
            |r| r.get(0),
        )?;
        Ok(QueueHealth {
            oldest_pending: oldest,
            events_pending: u64::try_from(events).unwrap_or(0),
            connections: None,
        })
    }

    fn claim_backoff(&self) -> Option<Duration> {
        self.inner.group.shared().health().backoff()
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.check_writes()?;
        // Reads the jobs table's first page: an unreadable file fails here.
        let _: Option<i64> = self
            .conn()
            .row_cached("SELECT 1 FROM jobs LIMIT 1", [], |r| r.get(0))
            .optional()?;
        Ok(())
    }

    fn notify(&self) -> &Arc<tokio::sync::Notify> {
        self.watch_foreign_writes();
        &self.inner.notify
    }

    fn owner(&self) -> &str {
        &self.inner.owner
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn plan(conn: &Connection, sql: &str, n: usize) -> String {
        let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let params: Vec<Option<String>> = vec![Some("x".into()); n];
        let rows = st
            .query_map(rusqlite::params_from_iter(params), |r| {
                r.get::<_, String>(3)
            })
            .unwrap();
        rows.collect::<Result<Vec<_>, _>>().unwrap().join("; ")
    }

    #[test]
    fn claims_walk_a_partial_index_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("q.db")).unwrap();
        let conn = store.conn();
        for (jt, mt) in [(true, true), (true, false), (false, true), (false, false)] {
            let filter = JobFilter {
                job_type: jt.then(|| "t".into()),
                machine_type: mt.then(|| "m".into()),
            };
            let p = plan(&conn, pick_sql(&filter), 3);
            assert!(p.contains("idx_jobs_pending"), "{filter:?}: {p}");
            assert!(!p.contains("TEMP B-TREE"), "{filter:?} sorts: {p}");
        }
        let p = plan(
            &conn,
            "UPDATE jobs INDEXED BY idx_jobs_leased SET status = 'pending'
             WHERE status = 'processing' AND lease_until IS NOT NULL AND lease_until < ?1",
            1,
        );
        assert!(p.contains("idx_jobs_leased"), "{p}");
    }
}

//! The job queue on PostgreSQL. Each operation is one statement on a pooled connection
//! (a claim may reap expired leases first, in a statement of its own; adding jobs is one
//! transaction: a multi-row insert that skips jobs whose unique key is held, then the
//! look-up of the holders); a change that can make a job claimable or finished sends
//! `NOTIFY turnstile_jobs` in its transaction, so it is delivered when, and only if, the
//! change commits.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;

use super::add;
use super::error::{pg_error, pool_error};
use super::rows::{job, JOB_COLUMNS};
use super::PgStore;
use crate::store::prefetch::Batch;
use crate::store::{
    Added, Claim, Failed, Holder, Job, JobChange, JobFilter, JobStore, ListJobs, NewJob,
    QueueHealth, StoreError, Timestamp,
};

/// Expired leases back to pending, or to `dead` after the last attempt. `$1`: the
/// default attempts.
const REAP: &str = "
    WITH expired AS (
        SELECT id FROM jobs
         WHERE status = 'processing' AND lease_until < clock_timestamp()
         FOR UPDATE SKIP LOCKED)
    UPDATE jobs j SET
        status = CASE WHEN j.attempts >= COALESCE(j.max_attempts, $1) THEN 'dead' ELSE 'pending' END,
        completed_at = CASE WHEN j.attempts >= COALESCE(j.max_attempts, $1)
            THEN clock_timestamp() ELSE j.completed_at END,
        started_at = CASE WHEN j.attempts >= COALESCE(j.max_attempts, $1)
            THEN j.started_at ELSE NULL END,
        error_message = CASE WHEN j.attempts >= COALESCE(j.max_attempts, $1)
            THEN 'lease expired after the last attempt (worker died?)'
            ELSE 'lease expired (worker died?)' END,
        lease_owner = NULL, lease_until = NULL
      FROM expired WHERE j.id = expired.id";

/// The claim for a filter: only the filters given appear, so the planner can walk the
/// matching partial index in claim order. `$1` owner, `$2` lease in ms, `$3` job type,
/// `$4` machine type; `batched`: up to `$5` jobs, else one.
fn claim_sql(filter: &JobFilter, batched: bool) -> String {
    let by_type = if filter.job_type.is_some() {
        "job_type = $3"
    } else {
        "$3::text IS NULL"
    };
    let by_machine = if filter.machine_type.is_some() {
        "machine_type = $4"
    } else {
        "$4::text IS NULL"
    };
    // A batch: `id = ANY(ARRAY(...))`, which walks the primary key (`id IN (...)` was
    // planned as a hash join over every row of the table).
    let (pick, limit, close) = if batched {
        ("= ANY(ARRAY", "$5", ")")
    } else {
        ("=", "1", "")
    };
    format!(
        "UPDATE jobs SET status = 'processing', started_at = clock_timestamp(),
            lease_owner = $1, lease_until = clock_timestamp() + $2 * interval '1 millisecond',
            attempts = attempts + 1, next_attempt_at = NULL
         WHERE id {pick} (
            SELECT id FROM jobs
             WHERE status = 'pending' AND {by_type} AND {by_machine}
               AND (next_attempt_at IS NULL OR next_attempt_at <= clock_timestamp())
             ORDER BY priority, created_at, id
             LIMIT {limit} FOR UPDATE SKIP LOCKED){close}
         RETURNING {JOB_COLUMNS}"
    )
}

/// When something for the filter may become claimable without anyone adding a job, and
/// whether a lease of its jobs has expired (by the database's clock).
const NEXT_DUE: &str = "
    SELECT LEAST(d.retry, d.lease), COALESCE(d.lease < clock_timestamp(), false) FROM (SELECT
        (SELECT MIN(next_attempt_at) FROM jobs
          WHERE status = 'pending' AND next_attempt_at IS NOT NULL
            AND ($1::text IS NULL OR job_type = $1) AND ($2::text IS NULL OR machine_type = $2))
          AS retry,
        (SELECT MIN(lease_until) FROM jobs
          WHERE status = 'processing' AND lease_until IS NOT NULL
            AND ($1::text IS NULL OR job_type = $1) AND ($2::text IS NULL OR machine_type = $2))
          AS lease) d";

/// A failure: dead after the last attempt, else pending again after the backoff
/// (`$4` base and `$5` longest delay in ms, doubled per attempt as
/// [`crate::store::StoreOptions::backoff`]).
const FAIL: &str = "
    WITH j AS (
        SELECT id, GREATEST(attempts, 1) AS a, COALESCE(max_attempts, $3) AS m FROM jobs
         WHERE job_id = $1 AND status IN ('processing', 'pending') FOR UPDATE),
    u AS (
        UPDATE jobs SET
            status = CASE WHEN j.a >= j.m THEN 'dead' ELSE 'pending' END,
            error_message = $2, attempts = j.a,
            completed_at = CASE WHEN j.a >= j.m THEN clock_timestamp() ELSE jobs.completed_at END,
            next_attempt_at = CASE WHEN j.a >= j.m THEN NULL ELSE clock_timestamp()
                + LEAST($4 * power(2, LEAST(j.a - 1, 30)), $5) * interval '1 millisecond' END,
            started_at = CASE WHEN j.a >= j.m THEN jobs.started_at ELSE NULL END,
            lease_owner = NULL, lease_until = NULL
          FROM j WHERE jobs.id = j.id
          RETURNING jobs.status, jobs.next_attempt_at, jobs.attempts, jobs.job_id)
    SELECT status, next_attempt_at, attempts, pg_notify('turnstile_jobs', job_id) FROM u";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl PgStore {
    /// Runs one statement that returns `pg_notify` rows and says how many rows changed.
    fn changed(
        &self,
        sql: &'static str,
        params: Vec<Box<dyn tokio_postgres::types::ToSql + Send + Sync>>,
    ) -> Result<bool, StoreError> {
        let pool = self.inner.pool.clone();
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c.prepare_cached(sql).await.map_err(pg_error)?;
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                .iter()
                .map(|p| &**p as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            let rows = c.query(&st, &refs).await.map_err(pg_error)?;
            Ok(!rows.is_empty())
        })
    }

    fn default_max(&self) -> i64 {
        i64::from(self.inner.opts.max_attempts)
    }

    /// Claims up to `n` jobs for `owner` in one statement (one: the single-job statement);
    /// they are held by this store object. Jobs in claim order.
    fn claim_up_to(&self, filter: &JobFilter, owner: &str, n: usize) -> Result<Batch, StoreError> {
        let (pool, default_max, lease) = (
            self.inner.claims.clone(),
            self.default_max(),
            self.inner.opts.lease_ms() as f64,
        );
        let (filter, owner) = (filter.clone(), owner.to_owned());
        let reap_first = self.reap_due();
        let claim = self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let reap = c.prepare_cached(REAP).await.map_err(pg_error)?;
            if reap_first {
                c.execute(&reap, &[&default_max]).await.map_err(pg_error)?;
            }
            let st = c
                .prepare_cached(&claim_sql(&filter, n > 1))
                .await
                .map_err(pg_error)?;
            let limit = i64::try_from(n).unwrap_or(1);
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
                &owner,
                &lease,
                &filter.job_type,
                &filter.machine_type,
                &limit,
            ];
            let params = if n > 1 { &params[..] } else { &params[..4] };
            let next_due = c.prepare_cached(NEXT_DUE).await.map_err(pg_error)?;
            let due = || async {
                let r = c
                    .query_one(&next_due, &[&filter.job_type, &filter.machine_type])
                    .await
                    .map_err(pg_error)?;
                let at: Option<std::time::SystemTime> = r.try_get(0).map_err(pg_error)?;
                let expired: bool = r.try_get(1).map_err(pg_error)?;
                Ok::<_, StoreError>((at, expired))
            };
            let mut rows = c.query(&st, params).await.map_err(pg_error)?;
            let mut empty_due = None;
            // Nothing claimable: an expired lease of this queue may be why. Claimers of
            // every process wake when a job is added and all but one find nothing: they
            // reap only when a lease of the queue has expired.
            if rows.is_empty() && !reap_first {
                let (at, expired) = due().await?;
                empty_due = Some(at);
                if expired && c.execute(&reap, &[&default_max]).await.map_err(pg_error)? > 0 {
                    rows = c.query(&st, params).await.map_err(pg_error)?;
                    empty_due = None;
                }
            }
            if !rows.is_empty() {
                let mut jobs = rows
                    .iter()
                    .map(|r| job(r, default_max))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(pg_error)?;
                // `RETURNING` keeps no order.
                jobs.sort_by_key(|j| (j.priority, j.created_at, j.id));
                return Ok((jobs, None));
            }
            match empty_due {
                Some(at) => Ok((Vec::new(), at)),
                None => Ok((Vec::new(), due().await?.0)),
            }
        })?;
        for j in &claim.0 {
            self.inner.holds.claimed(&j.job_id);
        }
        Ok(claim)
    }
}

impl PgStore {
    /// The queue of this store object's completion batcher (started at the first use).
    fn completions(&self) -> super::finish::Queue {
        self.inner
            .completions
            .get_or_init(|| {
                // With batched claims on, completions are answered before their WAL flush
                // (see [`super::finish`]).
                let pool = if self.inner.prefetch.on() {
                    &self.inner.claims
                } else {
                    &self.inner.pool
                };
                super::finish::start(&self.inner.handle, pool.clone())
            })
            .clone()
    }
}

impl PgStore {
    /// Queues the completion of a job whose hold was taken, without waiting (see
    /// [`JobStore::complete_held`]); false (held again) when the batcher is gone.
    pub(super) fn queue_behind(&self, job_id: String, result: Option<Json>) -> bool {
        let store = Arc::downgrade(&self.inner);
        let (id, keep) = (job_id.clone(), result.clone());
        let reply: super::finish::Reply = Box::new(move |r| {
            let Some(inner) = store.upgrade() else { return };
            let store = PgStore { inner };
            // Keeps the claimers' backoff current: nothing is handed out of the buffer
            // while completions cannot be written.
            store.note(&r);
            if crate::store::behind_failed(&id, &r) {
                store.inner.holds.unwritten(id, keep);
            } else if matches!(r, Ok(true)) {
                store.inner.finished.notify_waiters();
            }
        });
        let req = super::finish::Req {
            job_id: job_id.clone(),
            result,
            reply,
        };
        if self
            .completions()
            .send(super::finish::Msg::Complete(req))
            .is_err()
        {
            self.inner.holds.claimed(&job_id);
            return false;
        }
        true
    }

    /// Writes the completions answered before a write that failed again.
    pub(super) fn rewrite_unwritten(&self) {
        self.inner
            .holds
            .write_again(|id, result| self.queue_behind(id, result));
    }
}

impl JobStore for PgStore {
    fn add_jobs(&self, jobs: Vec<NewJob>) -> Result<Vec<Added>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let pool = self.inner.pool.clone();
        let out = self.call(async move {
            let mut c = pool.get().await.map_err(pool_error)?;
            let tx = c.transaction().await.map_err(pg_error)?;
            let out = add::insert_jobs(&tx, jobs).await?;
            tx.commit().await.map_err(pg_error)?;
            Ok(out)
        })?;
        if out.iter().any(|a| matches!(a, Added::Added { .. })) {
            self.inner.notify.notify_waiters();
        }
        Ok(out)
    }

    fn claim_next(&self, filter: &JobFilter, owner: &str) -> Result<Claim, StoreError> {
        if self.inner.prefetch.on() && owner == self.inner.owner {
            return self
                .inner
                .prefetch
                .claim(filter, self.backoff().is_none(), |n| {
                    self.claim_up_to(filter, owner, n)
                });
        }
        let (jobs, next_due) = self.claim_up_to(filter, owner, 1)?;
        Ok(match jobs.into_iter().next() {
            Some(j) => Claim::Job(Box::new(j)),
            None => Claim::Empty { next_due },
        })
    }

    fn claim_job(&self, job_id: &str, owner: &str) -> Result<bool, StoreError> {
        let (pool, default_max, lease) = (
            self.inner.claims.clone(),
            self.default_max(),
            self.inner.opts.lease_ms() as f64,
        );
        let (id, owner) = (job_id.to_owned(), owner.to_owned());
        let claimed = self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let reap = c.prepare_cached(REAP).await.map_err(pg_error)?;
            c.execute(&reap, &[&default_max]).await.map_err(pg_error)?;
            let st = c
                .prepare_cached(
                    "UPDATE jobs SET status = 'processing', started_at = clock_timestamp(),
                        lease_owner = $2,
                        lease_until = clock_timestamp() + $3 * interval '1 millisecond',
                        attempts = attempts + 1, next_attempt_at = NULL
                     WHERE job_id = $1 AND status = 'pending'",
                )
                .await
                .map_err(pg_error)?;
            Ok(c.execute(&st, &[&id, &owner, &lease])
                .await
                .map_err(pg_error)?
                > 0)
        })?;
        if claimed {
            self.inner.holds.claimed(job_id);
        }
        Ok(claimed)
    }

    fn release_job(&self, job_id: &str, owner: &str) -> Result<bool, StoreError> {
        self.inner.holds.release(job_id);
        let released = self.changed(
            "WITH r AS (
                UPDATE jobs SET status = 'pending', lease_owner = NULL, lease_until = NULL,
                    started_at = NULL, attempts = GREATEST(attempts - 1, 0)
                 WHERE job_id = $1 AND status = 'processing' AND lease_owner = $2
                 RETURNING job_id)
             SELECT pg_notify('turnstile_jobs', job_id) FROM r",
            vec![Box::new(job_id.to_owned()), Box::new(owner.to_owned())],
        )?;
        if released {
            self.inner.notify.notify_waiters();
        }
        Ok(released)
    }

    fn complete_job(&self, job_id: &str, result: Option<&Json>) -> Result<bool, StoreError> {
        self.inner.holds.release(job_id);
        // Group-committed with the process's other completions (see [`super::finish`]),
        // answered after the commit.
        let queue = self.completions();
        let (job_id, result) = (job_id.to_owned(), result.cloned());
        let done = self.call(async move {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let reply: super::finish::Reply = Box::new(move |r| {
                let _ = reply.send(r);
            });
            queue
                .send(super::finish::Msg::Complete(super::finish::Req {
                    job_id,
                    result,
                    reply,
                }))
                .map_err(|_| StoreError::Db("the completion batcher stopped".into()))?;
            answer
                .await
                .unwrap_or_else(|_| Err(StoreError::Db("the completion batcher stopped".into())))
        })?;
        if done {
            // Nothing became claimable: claimers need not look.
            self.inner.finished.notify_waiters();
        }
        Ok(done)
    }

    fn complete_held(&self, job_id: &str, result: Option<&Json>) -> bool {
        if !self.inner.prefetch.on() || self.backoff().is_some() || !self.inner.holds.take(job_id) {
            return false;
        }
        self.queue_behind(job_id.to_owned(), result.cloned())
    }

    fn claim_buffered(&self, filter: &JobFilter) -> Option<Job> {
        self.inner
            .prefetch
            .take_ready(filter, self.backoff().is_none())
    }

    fn fail_job(&self, job_id: &str, error: &str) -> Result<Failed, StoreError> {
        self.inner.holds.release(job_id);
        let pool = self.inner.pool.clone();
        let (id, error) = (job_id.to_owned(), error.to_owned());
        let (default_max, base, max) = (
            self.default_max(),
            ms(self.inner.opts.backoff_base),
            ms(self.inner.opts.backoff_max),
        );
        let out = self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c.prepare_cached(FAIL).await.map_err(pg_error)?;
            let Some(row) = c
                .query_opt(&st, &[&id, &error, &default_max, &base, &max])
                .await
                .map_err(pg_error)?
            else {
                return Ok(Failed::NotFound);
            };
            let status: String = row.try_get(0).map_err(pg_error)?;
            if status == crate::store::DEAD {
                return Ok(Failed::Dead);
            }
            let at: Option<std::time::SystemTime> = row.try_get(1).map_err(pg_error)?;
            Ok(Failed::Retry {
                at: at.unwrap_or_else(std::time::SystemTime::now),
                attempts: row.try_get(2).map_err(pg_error)?,
            })
        })?;
        if !matches!(out, Failed::NotFound) {
            self.inner.notify.notify_waiters();
        }
        Ok(out)
    }

    fn renew_leases(&self, owner: &str) -> Result<usize, StoreError> {
        let (pool, owner, lease) = (
            self.inner.pool.clone(),
            owner.to_owned(),
            self.inner.opts.lease_ms() as f64,
        );
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c
                .prepare_cached(
                    "UPDATE jobs SET lease_until = clock_timestamp() + $2 * interval '1 millisecond'
                     WHERE status = 'processing' AND lease_owner = $1",
                )
                .await
                .map_err(pg_error)?;
            Ok(c.execute(&st, &[&owner, &lease]).await.map_err(pg_error)? as usize)
        })
    }

    fn abandon_job(&self, job_id: &str, why: &str) -> Result<bool, StoreError> {
        self.inner.holds.release(job_id);
        let done = self.changed(
            "WITH r AS (
                UPDATE jobs SET status = 'failed', error_message = $3,
                    completed_at = clock_timestamp(), lease_owner = NULL, lease_until = NULL
                 WHERE job_id = $1 AND status = 'processing' AND lease_owner = $2
                 RETURNING job_id)
             SELECT pg_notify('turnstile_jobs', job_id) FROM r",
            vec![
                Box::new(job_id.to_owned()),
                Box::new(self.inner.owner.clone()),
                Box::new(why.to_owned()),
            ],
        )?;
        if done {
            self.inner.notify.notify_waiters();
        }
        Ok(done)
    }

    fn release_held(&self) -> Result<usize, StoreError> {
        // Prefetched jobs first, so that no machine takes one meanwhile.
        self.inner.prefetch.drain();
        // Completions answered before their write (`complete_held`) are written first,
        // those whose write failed tried once more.
        self.rewrite_unwritten();
        if let Some(queue) = self.inner.completions.get().cloned() {
            self.call(async move {
                let (tx, rx) = tokio::sync::oneshot::channel();
                if queue.send(super::finish::Msg::Flush(tx)).is_ok() {
                    let _ = rx.await;
                }
                Ok(())
            })?;
        }
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

    fn queue_health(&self) -> Result<QueueHealth, StoreError> {
        let pool = self.inner.pool.clone();
        let mut health = self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c
                .prepare_cached(
                    "SELECT job_type, MIN(created_at) FROM jobs WHERE status = 'pending'
                     GROUP BY job_type ORDER BY job_type",
                )
                .await
                .map_err(pg_error)?;
            let oldest = c
                .query(&st, &[])
                .await
                .map_err(pg_error)?
                .iter()
                .map(|r| {
                    let at: std::time::SystemTime = r.try_get(1)?;
                    Ok((r.try_get(0)?, Timestamp::from(at)))
                })
                .collect::<Result<Vec<_>, tokio_postgres::Error>>()
                .map_err(pg_error)?;
            let st = c
                .prepare_cached("SELECT COUNT(*) FROM machine_events WHERE status = 'pending'")
                .await
                .map_err(pg_error)?;
            let events: i64 = c
                .query_one(&st, &[])
                .await
                .map_err(pg_error)?
                .try_get(0)
                .map_err(pg_error)?;
            Ok(QueueHealth {
                oldest_pending: oldest,
                events_pending: u64::try_from(events).unwrap_or(0),
                connections: None,
            })
        })?;
        let (open, busy) = self.pool_status();
        health.connections = Some((open as u64, busy as u64));
        Ok(health)
    }

    fn claim_backoff(&self) -> Option<Duration> {
        self.backoff()
    }

    fn get_job(&self, job_id: &str) -> Result<Option<Job>, StoreError> {
        let (pool, id, default_max) = (
            self.inner.pool.clone(),
            job_id.to_owned(),
            self.default_max(),
        );
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c
                .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = $1"))
                .await
                .map_err(pg_error)?;
            match c.query_opt(&st, &[&id]).await.map_err(pg_error)? {
                Some(r) => Ok(Some(job(&r, default_max).map_err(pg_error)?)),
                None => Ok(None),
            }
        })
    }

    fn list_jobs(&self, q: &ListJobs) -> Result<Vec<Job>, StoreError> {
        let (pool, q, default_max) = (self.inner.pool.clone(), q.clone(), self.default_max());
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c
                .prepare_cached(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs
                     WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR job_type = $2)
                       AND ($3::text IS NULL OR machine_type = $3)
                       AND ($5::bigint IS NULL OR id < $5)
                     ORDER BY id DESC LIMIT $4"
                ))
                .await
                .map_err(pg_error)?;
            let limit = q.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
            let rows = c
                .query(
                    &st,
                    &[&q.status, &q.job_type, &q.machine_type, &limit, &q.after],
                )
                .await
                .map_err(pg_error)?;
            rows.iter()
                .map(|r| job(r, default_max).map_err(pg_error))
                .collect()
        })
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
        let (pool, f, default_max) = (self.inner.pool.clone(), filter.clone(), self.default_max());
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c
                .prepare_cached(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs
                     WHERE status = 'pending' AND ($1::text IS NULL OR job_type = $1)
                       AND ($2::text IS NULL OR machine_type = $2)
                     ORDER BY priority, created_at, id LIMIT $3"
                ))
                .await
                .map_err(pg_error)?;
            let limit = limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
            let rows = c
                .query(&st, &[&f.job_type, &f.machine_type, &limit])
                .await
                .map_err(pg_error)?;
            rows.iter()
                .map(|r| job(r, default_max).map_err(pg_error))
                .collect()
        })
    }

    fn counts(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        let pool = self.inner.pool.clone();
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            let st = c
                .prepare_cached(
                    "SELECT job_type, status, COUNT(*) FROM jobs GROUP BY 1, 2 ORDER BY 1, 2",
                )
                .await
                .map_err(pg_error)?;
            let rows = c.query(&st, &[]).await.map_err(pg_error)?;
            rows.iter()
                .map(|r| {
                    Ok((
                        r.try_get(0).map_err(pg_error)?,
                        r.try_get(1).map_err(pg_error)?,
                        u64::try_from(r.try_get::<_, i64>(2).map_err(pg_error)?).unwrap_or(0),
                    ))
                })
                .collect()
        })
    }

    fn ping(&self) -> Result<(), StoreError> {
        let pool = self.inner.pool.clone();
        self.call(async move {
            let c = pool.get().await.map_err(pool_error)?;
            c.simple_query("SELECT 1").await.map_err(pg_error)?;
            Ok(())
        })
    }

    fn notify(&self) -> &Arc<tokio::sync::Notify> {
        self.listen();
        &self.inner.notify
    }

    fn finish_notify(&self) -> &Arc<tokio::sync::Notify> {
        self.listen();
        &self.inner.finished
    }

    fn owner(&self) -> &str {
        &self.inner.owner
    }
}

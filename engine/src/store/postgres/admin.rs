//! Operators' changes to jobs on PostgreSQL ([`crate::store::admin`]): a retry or a cancel
//! is one transaction that locks the job's row (`FOR UPDATE`), so the status it checks is
//! the status it changes, even against a claimer in another process; both send
//! `NOTIFY turnstile_jobs` in it (claimers and `wait_for_jobs` look again). A purge deletes in chunks of [`PURGE_CHUNK`] rows, one
//! statement each.

use std::time::Duration;

use super::error::{pg_error, pool_error};
use super::rows::{job, JOB_COLUMNS};
use super::PgStore;
use crate::store::admin::{CANCELLABLE, PURGE_CHUNK, RETRYABLE};
use crate::store::{JobChange, StoreError};

/// What an operator does to one job.
#[derive(Clone, Copy)]
enum Op {
    Retry,
    Cancel,
}

/// The locked row's check, then the change.
fn change(store: &PgStore, job_id: &str, op: Op) -> Result<JobChange, StoreError> {
    let (pool, id) = (store.inner.pool.clone(), job_id.to_owned());
    let default_max = i64::from(store.inner.opts.max_attempts);
    store.call(async move {
        let mut c = pool.get().await.map_err(pool_error)?;
        let tx = c.transaction().await.map_err(pg_error)?;
        let row = tx
            .query_opt(
                "SELECT status, unique_key FROM jobs WHERE job_id = $1 FOR UPDATE",
                &[&id],
            )
            .await
            .map_err(pg_error)?;
        let Some(row) = row else {
            return Ok(JobChange::NotFound);
        };
        let status: String = row.try_get(0).map_err(pg_error)?;
        let key: Option<String> = row.try_get(1).map_err(pg_error)?;
        let sql = match op {
            Op::Retry => {
                if !RETRYABLE.contains(&status.as_str()) {
                    return Ok(JobChange::Refused { status });
                }
                if let Some(key) = key {
                    let holder = tx
                        .query_opt(
                            "SELECT job_id FROM jobs
                              WHERE unique_key = $1 AND status IN ('pending', 'processing')",
                            &[&key],
                        )
                        .await
                        .map_err(pg_error)?;
                    if let Some(h) = holder {
                        return Ok(JobChange::KeyHeld {
                            job_id: h.try_get(0).map_err(pg_error)?,
                            unique_key: key,
                        });
                    }
                }
                format!(
                    "WITH r AS (
                        UPDATE jobs SET status = 'pending', attempts = 0, next_attempt_at = NULL,
                            started_at = NULL, completed_at = NULL, lease_owner = NULL,
                            lease_until = NULL
                         WHERE job_id = $1 RETURNING {JOB_COLUMNS})
                     SELECT r.*, pg_notify('turnstile_jobs', r.job_id) FROM r"
                )
            }
            Op::Cancel => {
                if status != CANCELLABLE {
                    return Ok(JobChange::Refused { status });
                }
                format!(
                    "WITH r AS (
                        UPDATE jobs SET status = 'cancelled', completed_at = clock_timestamp(),
                            next_attempt_at = NULL
                         WHERE job_id = $1 RETURNING {JOB_COLUMNS})
                     SELECT r.*, pg_notify('turnstile_jobs', r.job_id) FROM r"
                )
            }
        };
        let row = tx.query_one(&sql, &[&id]).await.map_err(pg_error)?;
        let changed = job(&row, default_max).map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(JobChange::Changed(Box::new(changed)))
    })
}

/// [`crate::store::JobStore::retry_job`].
pub(super) fn retry(store: &PgStore, job_id: &str) -> Result<JobChange, StoreError> {
    change(store, job_id, Op::Retry)
}

/// [`crate::store::JobStore::cancel_job`].
pub(super) fn cancel(store: &PgStore, job_id: &str) -> Result<JobChange, StoreError> {
    change(store, job_id, Op::Cancel)
}

/// [`crate::store::JobStore::purge_jobs`].
pub(super) fn purge(store: &PgStore, age: Duration) -> Result<u64, StoreError> {
    let pool = store.inner.pool.clone();
    let ms = age.as_secs_f64() * 1000.0;
    let chunk = PURGE_CHUNK as i64;
    store.call(async move {
        let c = pool.get().await.map_err(pool_error)?;
        let st = c
            .prepare_cached(
                "DELETE FROM jobs WHERE id = ANY(ARRAY(
                    SELECT id FROM jobs
                     WHERE status IN ('completed', 'cancelled', 'dead')
                       AND completed_at < clock_timestamp() - $1 * interval '1 millisecond'
                     LIMIT $2))",
            )
            .await
            .map_err(pg_error)?;
        let mut total = 0u64;
        loop {
            let n = c.execute(&st, &[&ms, &chunk]).await.map_err(pg_error)?;
            total += n;
            if n < PURGE_CHUNK as u64 {
                return Ok(total);
            }
        }
    })
}

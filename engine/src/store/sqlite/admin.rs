//! Operators' changes to jobs on SQLite ([`crate::store::admin`]): a retry or a cancel is
//! one write through the group-commit writer, so the status it checks is the status it
//! changes; a purge deletes in chunks of [`PURGE_CHUNK`] rows, one write each.

use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::rows::{holder_of, job_from_row, Cached, JOB_COLUMNS};
use super::SqliteStore;
use crate::store::admin::{CANCELLABLE, PURGE_CHUNK, RETRYABLE};
use crate::store::{JobChange, StoreError, PENDING};

/// A job's status (`NULL`, as statemachine-engine may leave it, is pending) and unique key.
fn status_of(tx: &Connection, job_id: &str) -> rusqlite::Result<Option<(String, Option<String>)>> {
    tx.row_cached(
        "SELECT COALESCE(status, 'pending'), unique_key FROM jobs WHERE job_id = ?1",
        [job_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

fn changed(tx: &Connection, job_id: &str, default_max: i64) -> Result<JobChange, StoreError> {
    let job = tx.row_cached(
        &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?1"),
        [job_id],
        |r| job_from_row(r, default_max),
    )?;
    Ok(JobChange::Changed(Box::new(job)))
}

/// [`crate::store::JobStore::retry_job`].
pub(super) fn retry(store: &SqliteStore, job_id: &str) -> Result<JobChange, StoreError> {
    let default_max = i64::from(store.inner.opts.max_attempts);
    let job_id = job_id.to_owned();
    store.write(move |tx| {
        let Some((status, key)) = status_of(tx, &job_id)? else {
            return Ok(JobChange::NotFound);
        };
        if !RETRYABLE.contains(&status.as_str()) {
            return Ok(JobChange::Refused { status });
        }
        if let Some(key) = key {
            if let Some(holder) = holder_of(tx, &key)? {
                return Ok(JobChange::KeyHeld {
                    job_id: holder,
                    unique_key: key,
                });
            }
        }
        tx.exec_cached(
            "UPDATE jobs SET status = 'pending', attempts = 0, next_attempt_at = NULL,
                started_at = NULL, completed_at = NULL, lease_owner = NULL, lease_until = NULL
             WHERE job_id = ?1",
            [&job_id],
        )?;
        changed(tx, &job_id, default_max)
    })
}

/// [`crate::store::JobStore::cancel_job`].
pub(super) fn cancel(store: &SqliteStore, job_id: &str) -> Result<JobChange, StoreError> {
    let default_max = i64::from(store.inner.opts.max_attempts);
    let job_id = job_id.to_owned();
    store.write(move |tx| {
        let Some((status, _)) = status_of(tx, &job_id)? else {
            return Ok(JobChange::NotFound);
        };
        if status != CANCELLABLE {
            return Ok(JobChange::Refused { status });
        }
        tx.exec_cached(
            "UPDATE jobs SET status = 'cancelled', completed_at = CURRENT_TIMESTAMP,
                next_attempt_at = NULL
             WHERE job_id = ?1 AND COALESCE(status, ?2) = ?2",
            params![job_id, PENDING],
        )?;
        changed(tx, &job_id, default_max)
    })
}

/// [`crate::store::JobStore::purge_jobs`]. `completed_at` is SQL time text (written by
/// SQLite's `CURRENT_TIMESTAMP` or statemachine-engine) or, in rows written by other
/// tools, Unix seconds.
pub(super) fn purge(store: &SqliteStore, age: Duration) -> Result<u64, StoreError> {
    let secs = age.as_secs_f64();
    let mut total = 0u64;
    loop {
        let n = store.write(move |tx| {
            Ok(tx.exec_cached(
                "DELETE FROM jobs WHERE id IN (
                    SELECT id FROM jobs
                     WHERE status IN ('completed', 'cancelled', 'dead')
                       AND completed_at IS NOT NULL
                       AND CASE WHEN typeof(completed_at) IN ('integer', 'real')
                           THEN completed_at < CAST(strftime('%s', 'now') AS REAL) - ?1
                           ELSE julianday(completed_at) < julianday('now') - ?1 / 86400.0 END
                     LIMIT ?2)",
                params![secs, PURGE_CHUNK as i64],
            )?)
        })?;
        total += n as u64;
        if n < PURGE_CHUNK {
            return Ok(total);
        }
    }
}

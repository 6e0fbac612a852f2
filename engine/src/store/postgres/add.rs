//! Adding jobs on PostgreSQL: one multi-row insert per batch that skips jobs whose unique
//! key a pending or processing job holds (the partial unique index decides, race-free
//! across processes), then the look-up of who holds the skipped keys.

use std::time::SystemTime;

use serde_json::Value as Json;

use super::error::pg_error;
#[cfg(doc)]
use crate::store::JobStore;
use crate::store::{with_ids, Added, NewJob, StoreError, Timestamp};

/// Inserts jobs given as arrays, in order, skipping those whose unique key a pending or
/// processing job holds (one inserted earlier by the same statement included); returns
/// the ids inserted. A concurrent insert of the same key waits for the other transaction
/// and then skips, so the partial unique index `jobs_unique_key` decides who adds.
const INSERT_JOBS: &str = "
    INSERT INTO jobs (job_id, job_type, machine_type, source_job_id, priority, data, metadata,
        max_attempts, traceparent, next_attempt_at, unique_key)
    SELECT job_id, job_type, machine_type, source_job_id, priority, data, metadata,
        max_attempts, traceparent, next_attempt_at, unique_key
      FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::jsonb[],
            $7::jsonb[], $8::bigint[], $9::text[], $10::timestamptz[], $11::text[])
           WITH ORDINALITY AS t(job_id, job_type, machine_type, source_job_id, priority, data,
            metadata, max_attempts, traceparent, next_attempt_at, unique_key, ord)
     ORDER BY ord
    ON CONFLICT (unique_key) WHERE status IN ('pending', 'processing') AND unique_key IS NOT NULL
    DO NOTHING
    RETURNING job_id";

/// The pending or processing jobs that hold these keys: (key, job id).
const HOLDERS: &str = "
    SELECT unique_key, job_id FROM jobs
     WHERE unique_key = ANY($1) AND status IN ('pending', 'processing')";

/// Adds `jobs` in the transaction `tx` ([`JobStore::add_jobs`]).
pub(super) async fn insert_jobs(
    tx: &deadpool_postgres::Transaction<'_>,
    jobs: Vec<NewJob>,
) -> Result<Vec<Added>, StoreError> {
    use std::collections::{HashMap, HashSet};
    let jobs = with_ids(jobs)?;
    let insert = tx.prepare_cached(INSERT_JOBS).await.map_err(pg_error)?;
    let holders = tx.prepare_cached(HOLDERS).await.map_err(pg_error)?;
    let mut out: Vec<Option<Added>> = vec![None; jobs.len()];
    // Jobs not added whose key's holder finished before it was looked up go round again
    // (the key is free now); a few rounds at most.
    let mut todo: Vec<usize> = (0..jobs.len()).collect();
    for _ in 0..8 {
        let pick = |f: &dyn Fn(&NewJob) -> Option<String>| -> Vec<Option<String>> {
            todo.iter().map(|&i| f(&jobs[i].1)).collect()
        };
        let ids: Vec<&str> = todo.iter().map(|&i| jobs[i].0.as_str()).collect();
        let types: Vec<&str> = todo.iter().map(|&i| jobs[i].1.job_type.as_str()).collect();
        let priorities: Vec<i64> = todo
            .iter()
            .map(|&i| jobs[i].1.priority.unwrap_or(5))
            .collect();
        let data: Vec<Option<&Json>> = todo.iter().map(|&i| jobs[i].1.data.as_ref()).collect();
        let meta: Vec<Option<&Json>> = todo.iter().map(|&i| jobs[i].1.metadata.as_ref()).collect();
        let max: Vec<Option<i64>> = todo
            .iter()
            .map(|&i| jobs[i].1.max_attempts.map(i64::from))
            .collect();
        let after: Vec<Option<SystemTime>> = todo
            .iter()
            .map(|&i| jobs[i].1.run_after.map(Timestamp::system_time))
            .collect();
        let keys = pick(&|j| j.unique_key.clone());
        let rows = tx
            .query(
                &insert,
                &[
                    &ids,
                    &types,
                    &pick(&|j| j.machine_type.clone()),
                    &pick(&|j| j.source_job_id.clone()),
                    &priorities,
                    &data,
                    &meta,
                    &max,
                    &pick(&|j| j.traceparent.clone()),
                    &after,
                    &keys,
                ],
            )
            .await
            .map_err(|e| duplicate_id(e, &ids))?;
        let added: HashSet<String> = rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(pg_error)?;
        let skipped: Vec<usize> = todo
            .iter()
            .copied()
            .filter(|&i| !added.contains(&jobs[i].0))
            .collect();
        for &i in &todo {
            if added.contains(&jobs[i].0) {
                out[i] = Some(Added::Added {
                    job_id: jobs[i].0.clone(),
                });
            }
        }
        if skipped.is_empty() {
            break;
        }
        let wanted: Vec<Option<String>> = skipped
            .iter()
            .map(|&i| jobs[i].1.unique_key.clone())
            .collect();
        let held: HashMap<String, String> = tx
            .query(&holders, &[&wanted])
            .await
            .map_err(pg_error)?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(pg_error)?;
        todo.clear();
        for i in skipped {
            match jobs[i].1.unique_key.as_ref().and_then(|k| held.get(k)) {
                Some(holder) => {
                    out[i] = Some(Added::Existing {
                        job_id: holder.clone(),
                    })
                }
                None => todo.push(i),
            }
        }
        if todo.is_empty() {
            break;
        }
    }
    if out.iter().any(|a| matches!(a, Some(Added::Added { .. }))) {
        tx.execute("SELECT pg_notify('turnstile_jobs', '')", &[])
            .await
            .map_err(pg_error)?;
    }
    out.into_iter()
        .map(|a| {
            a.ok_or_else(|| {
                StoreError::Db("a unique key kept changing hands while the jobs were added".into())
            })
        })
        .collect()
}

/// An insert's error; a job id that exists already is [`StoreError::Invalid`] naming it
/// (`ids`: the ids the insert was given).
fn duplicate_id(e: tokio_postgres::Error, ids: &[&str]) -> StoreError {
    match e.as_db_error() {
        Some(d) if *d.code() == tokio_postgres::error::SqlState::UNIQUE_VIOLATION => {
            StoreError::Invalid(match (ids, d.detail()) {
                ([id], _) => format!("a job with id `{id}` already exists"),
                // "Key (job_id)=(a) already exists."
                (_, Some(detail)) => format!("a job with this id already exists: {detail}"),
                (_, None) => "a job with this id already exists".into(),
            })
        }
        _ => pg_error(e),
    }
}

//! Rows to records: the SQLite side of the store's types (JSON text columns, SQL time
//! text and millisecond columns to [`Timestamp`]s, `rusqlite` errors to [`StoreError`]),
//! and the statement cache every query goes through.

use rusqlite::{Connection, OptionalExtension, Row};
use serde_json::Value as Json;

use crate::store::{Job, MachineRecord, StoreError, Timestamp, PENDING};

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

/// A time column: SQL text (`CURRENT_TIMESTAMP`, written by SQLite or by
/// statemachine-engine), or a number (Unix seconds; Turnstile's own millisecond columns
/// are read with [`ms_col`]).
pub(super) fn time_col(row: &Row<'_>, i: usize) -> rusqlite::Result<Option<Timestamp>> {
    use rusqlite::types::ValueRef;
    Ok(match row.get_ref(i)? {
        ValueRef::Text(t) => std::str::from_utf8(t).ok().and_then(Timestamp::parse_sql),
        ValueRef::Integer(secs) => Some(Timestamp::from_ms(secs.saturating_mul(1000))),
        ValueRef::Real(secs) => Some(Timestamp::from_ms((secs * 1000.0) as i64)),
        ValueRef::Null | ValueRef::Blob(_) => None,
    })
}

/// A millisecond column (`lease_until`, `next_attempt_at`).
pub(super) fn ms_col(row: &Row<'_>, i: usize) -> rusqlite::Result<Option<Timestamp>> {
    Ok(row.get::<_, Option<i64>>(i)?.map(Timestamp::from_ms))
}

/// The columns of [`job_from_row`], in order.
macro_rules! job_columns {
    () => {
        "id, job_id, job_type, machine_type, source_job_id, data, result, \
         priority, status, created_at, started_at, completed_at, error_message, metadata, \
         lease_owner, lease_until, attempts, max_attempts, next_attempt_at, traceparent, unique_key"
    };
}
pub(super) const JOB_COLUMNS: &str = job_columns!();

pub(super) fn json_col(row: &Row<'_>, i: usize) -> rusqlite::Result<Option<Json>> {
    let s: Option<String> = row.get(i)?;
    Ok(s.map(|s| serde_json::from_str(&s).unwrap_or(Json::String(s))))
}

pub(super) fn job_from_row(row: &Row<'_>, default_max: i64) -> rusqlite::Result<Job> {
    Ok(Job {
        id: row.get(0)?,
        job_id: row.get(1)?,
        job_type: row.get(2)?,
        machine_type: row.get(3)?,
        source_job_id: row.get(4)?,
        data: json_col(row, 5)?.unwrap_or(Json::Null),
        result: json_col(row, 6)?,
        priority: row.get::<_, Option<i64>>(7)?.unwrap_or(5),
        status: row
            .get::<_, Option<String>>(8)?
            .unwrap_or_else(|| PENDING.into()),
        created_at: time_col(row, 9)?,
        started_at: time_col(row, 10)?,
        completed_at: time_col(row, 11)?,
        error_message: row.get(12)?,
        metadata: json_col(row, 13)?,
        lease_owner: row.get(14)?,
        lease_until: ms_col(row, 15)?,
        attempts: row.get::<_, Option<i64>>(16)?.unwrap_or(0),
        max_attempts: row.get::<_, Option<i64>>(17)?.unwrap_or(default_max),
        next_attempt_at: ms_col(row, 18)?,
        traceparent: row.get(19)?,
        unique_key: row.get(20)?,
    })
}

/// One job by row id.
pub(super) const JOB_BY_ROWID: &str =
    concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = ?1");

/// Statements run through the connection's statement cache: the job paths run the same
/// few statements thousands of times a second, and parsing them was a fifth of the cost.
pub(super) trait Cached {
    fn exec_cached<P: rusqlite::Params>(&self, sql: &str, p: P) -> rusqlite::Result<usize>;
    fn row_cached<T, P: rusqlite::Params, F: FnOnce(&Row<'_>) -> rusqlite::Result<T>>(
        &self,
        sql: &str,
        p: P,
        f: F,
    ) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn exec_cached<P: rusqlite::Params>(&self, sql: &str, p: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(p)
    }
    fn row_cached<T, P: rusqlite::Params, F: FnOnce(&Row<'_>) -> rusqlite::Result<T>>(
        &self,
        sql: &str,
        p: P,
        f: F,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(p, f)
    }
}

/// The pending or processing job that holds `key` (adding a job, retrying one).
pub(super) fn holder_of(tx: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    tx.row_cached(
        "SELECT job_id FROM jobs INDEXED BY idx_jobs_unique_key
         WHERE unique_key = ?1 AND status IN ('pending', 'processing')
           AND unique_key IS NOT NULL",
        [key],
        |r| r.get(0),
    )
    .optional()
}

/// The columns of [`machine_from_row`], in order.
pub(super) const MACHINE_COLUMNS: &str =
    "machine_name, current_state, last_activity, pid, context, instance_id, paused, definition,
    retired";

pub(super) fn machine_from_row(r: &Row<'_>) -> rusqlite::Result<MachineRecord> {
    Ok(MachineRecord {
        machine_name: r.get(0)?,
        current_state: r.get(1)?,
        last_activity: time_col(r, 2)?,
        pid: r.get(3)?,
        context: json_col(r, 4)?,
        instance_id: r.get(5)?,
        paused: r.get::<_, Option<i64>>(6)?.unwrap_or(0) != 0,
        definition: r.get(7)?,
        retired: r.get::<_, Option<i64>>(8)?.unwrap_or(0) != 0,
    })
}

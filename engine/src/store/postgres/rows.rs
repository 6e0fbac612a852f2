//! Rows to records on PostgreSQL: `jsonb` columns are JSON values, `timestamptz` columns
//! are [`Timestamp`]s.

use std::time::SystemTime;

use tokio_postgres::{Error, Row};

use crate::store::{Job, MachineRecord, Timestamp};

/// The columns [`job`] reads, in order.
pub(super) const JOB_COLUMNS: &str = "id, job_id, job_type, machine_type, source_job_id, data, \
     result, priority, status, created_at, started_at, completed_at, error_message, metadata, \
     lease_owner, lease_until, attempts, max_attempts, next_attempt_at, traceparent, unique_key";

fn time(row: &Row, i: usize) -> Result<Option<Timestamp>, Error> {
    Ok(row
        .try_get::<_, Option<SystemTime>>(i)?
        .map(Timestamp::from))
}

/// A job from a row of [`JOB_COLUMNS`].
pub(super) fn job(row: &Row, default_max: i64) -> Result<Job, Error> {
    Ok(Job {
        id: row.try_get(0)?,
        job_id: row.try_get(1)?,
        job_type: row.try_get(2)?,
        machine_type: row.try_get(3)?,
        source_job_id: row.try_get(4)?,
        data: row
            .try_get::<_, Option<serde_json::Value>>(5)?
            .unwrap_or(serde_json::Value::Null),
        result: row.try_get(6)?,
        priority: row.try_get(7)?,
        status: row.try_get(8)?,
        created_at: time(row, 9)?,
        started_at: time(row, 10)?,
        completed_at: time(row, 11)?,
        error_message: row.try_get(12)?,
        metadata: row.try_get(13)?,
        lease_owner: row.try_get(14)?,
        lease_until: time(row, 15)?,
        attempts: row.try_get(16)?,
        max_attempts: row.try_get::<_, Option<i64>>(17)?.unwrap_or(default_max),
        next_attempt_at: time(row, 18)?,
        traceparent: row.try_get(19)?,
        unique_key: row.try_get(20)?,
    })
}

/// The columns [`machine`] reads, in order.
pub(super) const MACHINE_COLUMNS: &str =
    "machine_name, current_state, last_activity, pid, context, instance_id, paused, definition,
    retired";

/// A machine record from a row of [`MACHINE_COLUMNS`].
pub(super) fn machine(row: &Row) -> Result<MachineRecord, Error> {
    Ok(MachineRecord {
        machine_name: row.try_get(0)?,
        current_state: row.try_get(1)?,
        last_activity: time(row, 2)?,
        pid: row.try_get(3)?,
        context: row.try_get(4)?,
        instance_id: row.try_get(5)?,
        paused: row.try_get(6)?,
        definition: row.try_get(7)?,
        retired: row.try_get(8)?,
    })
}

/// A time column, for other files.
pub(super) fn time_col(row: &Row, i: usize) -> Result<Option<Timestamp>, Error> {
    time(row, i)
}

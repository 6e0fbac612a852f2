//! What an operator does to jobs by hand (`GET/DELETE /jobs/{id}`, `POST /jobs/{id}/retry`,
//! `turnstile jobs list|show|retry|cancel`, `run --job-retention`): the outcome of a retry
//! or a cancel ([`JobChange`]) and the statuses each one accepts, and a job as operators
//! see it ([`shown`]). The backends implement [`super::JobStore::retry_job`],
//! [`super::JobStore::cancel_job`] and [`super::JobStore::purge_jobs`] with these rules;
//! kept here so that both say the same, as the sidecar and the CLI show the same.

use serde_json::Value as Json;

use super::{Job, CANCELLED, COMPLETED, DEAD, PENDING, PROCESSING};
use crate::runtime::trace::TraceContext;

/// Statuses [`super::JobStore::retry_job`] takes back to pending.
pub const RETRYABLE: &[&str] = &[DEAD, CANCELLED];

/// The only status [`super::JobStore::cancel_job`] cancels.
pub const CANCELLABLE: &str = PENDING;

/// Statuses [`super::JobStore::purge_jobs`] deletes once they are old enough.
pub const PURGEABLE: &[&str] = &[COMPLETED, CANCELLED, DEAD];

/// Rows one purge statement deletes at most (a purge runs several, so that other writers
/// are never held up by one long delete).
pub const PURGE_CHUNK: usize = 1000;

/// What a retry or a cancel did.
#[derive(Debug, Clone, PartialEq)]
pub enum JobChange {
    /// Done: the job as it is now.
    Changed(Box<Job>),
    /// No job has this id.
    NotFound,
    /// The job's status does not allow it (a claimed job is not cancelled; only dead and
    /// cancelled jobs are retried): nothing changed.
    Refused {
        /// The job's status.
        status: String,
    },
    /// A retry of a job whose unique key another job, pending or processing, holds now:
    /// nothing changed.
    KeyHeld {
        /// The holder's id.
        job_id: String,
        /// The key.
        unique_key: String,
    },
}

/// What an operator asks of one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// [`super::JobStore::retry_job`].
    Retry,
    /// [`super::JobStore::cancel_job`].
    Cancel,
}

impl JobChange {
    /// Why `op` changed nothing, in the words the sidecar and the CLI use (`job_id` as it
    /// should be shown); `None` when it was done.
    pub fn refusal(&self, op: Op, job_id: &str) -> Option<String> {
        Some(match (self, op) {
            (JobChange::Changed(_), _) => return None,
            (JobChange::NotFound, _) => format!("no job with id `{job_id}`"),
            (JobChange::Refused { status }, Op::Retry) => format!(
                "job `{job_id}` is {status}: only a dead-lettered or cancelled job is retried"
            ),
            (JobChange::Refused { status }, Op::Cancel) if status == PROCESSING => format!(
                "job `{job_id}` is claimed (processing): only a pending job is cancelled"
            ),
            (JobChange::Refused { status }, Op::Cancel) => {
                format!("job `{job_id}` is {status}: only a pending job is cancelled")
            }
            (
                JobChange::KeyHeld {
                    job_id: holder,
                    unique_key,
                },
                _,
            ) => format!(
                "job `{job_id}` is not retried: job `{holder}` holds its unique key `{unique_key}` (pending or processing)"
            ),
        })
    }
}

/// A job as the sidecar and the CLI show it: its fields (`error_message` is its last
/// error, `lease_owner` the process holding it), the values of sensitive fields of its
/// data, result and metadata shown as `"[redacted]"` by the process's redactor (the store
/// keeps the real values), and `trace_id`, the trace its enqueuer started (from its
/// `traceparent`; `null` when it has none).
pub fn shown(mut job: Job) -> Json {
    let redactor = crate::redact::global();
    redactor.redact_owned(&mut job.data);
    for v in [job.result.as_mut(), job.metadata.as_mut()]
        .into_iter()
        .flatten()
    {
        redactor.redact_owned(v);
    }
    let trace_id = job
        .traceparent
        .as_deref()
        .and_then(|tp| TraceContext::parse(tp).ok())
        .map(|t| t.trace_id_hex());
    let mut v = serde_json::to_value(&job).unwrap_or(Json::Null);
    if let Json::Object(o) = &mut v {
        o.insert("trace_id".into(), trace_id.map_or(Json::Null, Json::String));
    }
    v
}

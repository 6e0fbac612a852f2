//! What an operator does to jobs by hand (`GET/DELETE /jobs/{id}`, `POST /jobs/{id}/retry`,
//! `turnstile jobs retry|cancel`, `run --job-retention`): the outcome of a retry or a
//! cancel ([`JobChange`]) and the statuses each one accepts. The backends implement
//! [`super::JobStore::retry_job`], [`super::JobStore::cancel_job`] and
//! [`super::JobStore::purge_jobs`] with these rules; kept here so that both say the same.

use super::{Job, CANCELLED, COMPLETED, DEAD, PENDING};

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

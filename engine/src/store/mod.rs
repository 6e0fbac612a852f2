//! Durable state: the job queue ([`JobStore`]) and persisted machine state and events
//! ([`StateStore`]); a backend serves both ([`Store`]). [`open`] opens one from what
//! `--db` names ([`Location`]: a file path or a URL); the backends are SQLite
//! ([`sqlite::SqliteStore`]) and PostgreSQL ([`postgres::PgStore`], for Turnstile
//! processes on several hosts).
//!
//! The traits carry nothing of a backend: errors are [`StoreError`], times are
//! [`Timestamp`]s, and "another process changed something" is the backend's business: it
//! wakes [`JobStore::notify`] (SQLite by watching `data_version`, PostgreSQL by
//! `LISTEN`). The built-in job actions, the CLI and the sidecar use only the traits, so
//! every backend serves them unchanged.
//!
//! Semantics (any backend):
//!
//! - A claim is atomic: one job goes to one claimer. It takes a *lease* (owner, expiry)
//!   that the owning process renews while one of its machines holds the job; a process that
//!   dies, or a machine that stops, stops renewing, the lease expires and the job is
//!   pending again (at-least-once delivery).
//! - Every claim counts an attempt. A failed job is retried after an exponential backoff
//!   until `max_attempts` attempts were made; then it is dead-lettered (status `dead`).
//!   A job whose lease expired after its last attempt is dead-lettered too (a job that
//!   kills its workers does not kill them forever).
//! - Job statuses: `pending`, `processing`, `completed`, `failed` (written by
//!   statemachine-engine's own tools), `dead`, `cancelled` (a pending job an operator
//!   cancelled: kept, never claimed; [`JobStore::retry_job`] makes a dead or cancelled job
//!   pending again, [`JobStore::purge_jobs`] deletes old finished ones; see [`admin`]).
//! - A job added with [`NewJob::run_after`] is not claimable before that time (the same
//!   column as a retry's backoff, `next_attempt_at`, so [`Claim::Empty`]'s `next_due`
//!   counts it).
//! - A job added with a [`NewJob::unique_key`] is not added while another job with that
//!   key is `pending` or `processing`: the database's partial unique index decides, so two
//!   processes adding the same key at once add one job. The adder learns the existing
//!   job's id ([`Added::Existing`], [`StoreError::Duplicate`]). Once that job is
//!   completed, failed, dead or cancelled the key is free again.

pub mod admin;
pub mod claim_loss;
pub mod events;
mod holds;
pub mod instances;
mod job_json;
pub mod leases;
mod location;
mod options;
pub mod persist;
pub mod postgres;
pub mod prefetch;
pub mod sqlite;
mod time;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Map, Value as Json};

pub use admin::JobChange;
pub use claim_loss::ClaimLoss;
pub use events::{EventStore, InstanceOwner, MachineHost, NewEvent, StoredEvent};
pub use instances::{Heartbeat, InstanceStore, LiveInstance};
pub use job_json::{new_job_from_json, MAX_BATCH};
pub use leases::{Acquired, LeaseRecord, LeaseStore};
pub use location::{open, Location};
pub use options::{new_job_id, owner_id, StoreOptions, SyncMode, DEFAULT_POOL_SIZE};
pub use persist::{Persister, Restored};
pub use postgres::PgStore;
pub use prefetch::MAX_CLAIM_BATCH;
pub use sqlite::SqliteStore;
pub use time::Timestamp;

/// Status of a job waiting to be claimed.
pub const PENDING: &str = "pending";
/// Status of a claimed job.
pub const PROCESSING: &str = "processing";
/// Status of a finished job.
pub const COMPLETED: &str = "completed";
/// Status written by statemachine-engine's `fail_job` (no retries there).
pub const FAILED: &str = "failed";
/// Dead letter: a job that failed `max_attempts` times.
pub const DEAD: &str = "dead";
/// A pending job an operator cancelled ([`JobStore::cancel_job`]).
pub const CANCELLED: &str = "cancelled";

/// Every job status, in lifecycle order (for listings and metrics).
pub const STATUSES: &[&str] = &[PENDING, PROCESSING, COMPLETED, FAILED, DEAD, CANCELLED];

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("job store: {0}")]
    Db(String),
    /// A value did not fit (bad JSON, a duplicate job id, ...).
    #[error("job store: {0}")]
    Invalid(String),
    /// The database cannot be reached now (refused connections, a server restarting, a
    /// connection lost): trying again later may work.
    #[error("job store unreachable: {0}")]
    Unavailable(String),
    /// The database refuses this process's settings (a malformed URL, a wrong password,
    /// no such database, a schema newer than this binary): trying again will not help.
    #[error("job store: {0}")]
    Config(String),
    /// [`JobStore::add_job`] of a job whose unique key belongs to a job that is still
    /// pending or processing: nothing was added.
    #[error(
        "job store: job `{job_id}` with unique key `{unique_key}` is already pending or processing"
    )]
    Duplicate {
        /// The existing job's id.
        job_id: String,
        /// The key.
        unique_key: String,
    },
    /// [`InstanceStore::register_instance`] of an id a live process holds: nothing was
    /// registered.
    #[error(
        "instance id `{}` is in use by a live process (pid {} on host {}, last seen {} s ago)",
        .0.instance_id, .0.pid, .0.host, .0.age.as_secs()
    )]
    InstanceInUse(Box<LiveInstance>),
    /// A state write of a singleton machine under an epoch its lease has moved on from
    /// (another process took the machine over): nothing of that machine was written.
    #[error(
        "job store: write of machine `{machine}` refused: its lease moved on from epoch {epoch} (another process runs it now)"
    )]
    Fenced {
        /// The machine.
        machine: String,
        /// The epoch the write carried.
        epoch: i64,
    },
}

/// What adding one job did ([`JobStore::add_jobs`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Added {
    /// The job was added with this id.
    Added {
        /// Its id.
        job_id: String,
    },
    /// Its unique key belongs to this job, pending or processing: nothing was added.
    Existing {
        /// The existing job's id.
        job_id: String,
    },
}

impl Added {
    /// The id of the job added, or of the existing one.
    pub fn job_id(&self) -> &str {
        match self {
            Added::Added { job_id } | Added::Existing { job_id } => job_id,
        }
    }
}

/// A job to add.
#[derive(Debug, Clone, Default)]
pub struct NewJob {
    /// Its id; a fresh one is made when `None`.
    pub job_id: Option<String>,
    /// Its type (`check_database_queue`'s `job_type`).
    pub job_type: String,
    /// The machine type it is meant for (`None`: any).
    pub machine_type: Option<String>,
    /// The job it was spawned from.
    pub source_job_id: Option<String>,
    /// Its parameters (a JSON object, usually).
    pub data: Option<Json>,
    /// Free-form metadata.
    pub metadata: Option<Json>,
    /// 1 = highest, 10 = lowest; statemachine-engine's default is 5.
    pub priority: Option<i64>,
    /// Attempts before the job is dead-lettered (the store's default when `None`).
    pub max_attempts: Option<u32>,
    /// W3C `traceparent` of whoever enqueued it: the worker continues that trace.
    pub traceparent: Option<String>,
    /// Not claimable before this time (claimable at once when `None` or past).
    pub run_after: Option<Timestamp>,
    /// At most one job with this key is pending or processing at a time (see
    /// [`JobStore::add_jobs`]).
    pub unique_key: Option<String>,
}

/// A job as stored.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Job {
    /// Row id.
    pub id: i64,
    /// Job id.
    pub job_id: String,
    /// Job type.
    pub job_type: String,
    /// Target machine type.
    pub machine_type: Option<String>,
    /// Parent job.
    pub source_job_id: Option<String>,
    /// Parameters (`null` when none).
    pub data: Json,
    /// Result written on completion.
    pub result: Option<Json>,
    /// Priority (1 = highest).
    pub priority: i64,
    /// Status (see [`STATUSES`]).
    pub status: String,
    /// When it was added.
    pub created_at: Option<Timestamp>,
    /// When it was last claimed.
    pub started_at: Option<Timestamp>,
    /// When it was completed, failed or dead-lettered.
    pub completed_at: Option<Timestamp>,
    /// The last failure.
    pub error_message: Option<String>,
    /// Metadata.
    pub metadata: Option<Json>,
    /// Who holds the lease.
    pub lease_owner: Option<String>,
    /// When the lease expires.
    pub lease_until: Option<Timestamp>,
    /// Claims so far.
    pub attempts: i64,
    /// Attempts allowed.
    pub max_attempts: i64,
    /// Not claimable before this time: its `run_after`, or a retry's backoff.
    pub next_attempt_at: Option<Timestamp>,
    /// Trace context of the enqueuer.
    pub traceparent: Option<String>,
    /// Its unique key.
    pub unique_key: Option<String>,
}

/// Which jobs a claim may take.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct JobFilter {
    /// Only this type (any when `None`).
    pub job_type: Option<String>,
    /// Only jobs for this machine type (any when `None`).
    pub machine_type: Option<String>,
}

/// What a claim found.
#[derive(Debug, Clone)]
pub enum Claim {
    /// A job, now leased to the claimer.
    Job(Box<Job>),
    /// Nothing claimable now. `next_due` is when something may become claimable without
    /// anyone adding a job: a delayed job's `run_after` or a retry's backoff ends, or a
    /// lease expires.
    Empty {
        /// The earliest such time, if any.
        next_due: Option<SystemTime>,
    },
}

/// What [`JobStore::fail_job`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failed {
    /// Back to pending, claimable again at this time.
    Retry {
        /// The end of the backoff.
        at: SystemTime,
        /// Attempts made so far.
        attempts: i64,
    },
    /// Out of attempts: status `dead`.
    Dead,
    /// No such job (or it was not running).
    NotFound,
}

/// Filters for [`JobStore::list_jobs`].
#[derive(Debug, Clone, Default)]
pub struct ListJobs {
    /// Only this status.
    pub status: Option<String>,
    /// Only this type.
    pub job_type: Option<String>,
    /// Only this machine type.
    pub machine_type: Option<String>,
    /// At most this many (newest first).
    pub limit: Option<usize>,
    /// Only jobs older than this one: row ids below it (the `id` of the last job of the
    /// previous page), for keyset pagination.
    pub after: Option<i64>,
}

/// A machine of this process that holds a claimed job (see [`JobStore::set_holder`]).
#[derive(Clone)]
pub struct Holder {
    /// The machine's name.
    pub machine: Arc<str>,
    /// True while the machine runs (its event queue is open).
    pub alive: Arc<dyn Fn() -> bool + Send + Sync>,
    /// Taken with `check_database_queue`: the machine gives the job up when it waits for
    /// another one with `check_database_queue` (it holds one such job at a time).
    pub from_queue: bool,
}

impl std::fmt::Debug for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Holder")
            .field("machine", &self.machine)
            .field("from_queue", &self.from_queue)
            .finish_non_exhaustive()
    }
}

/// The durable job queue.
pub trait JobStore: Send + Sync + std::fmt::Debug + 'static {
    /// Adds a pending job; returns its id. Wakes in-process waiters at once. A duplicate
    /// job id is [`StoreError::Invalid`]; a unique key that a pending or processing job
    /// holds is [`StoreError::Duplicate`] (nothing added).
    fn add_job(&self, job: NewJob) -> Result<String, StoreError> {
        let key = job.unique_key.clone();
        match self.add_jobs(vec![job])?.pop() {
            Some(Added::Added { job_id }) => Ok(job_id),
            Some(Added::Existing { job_id }) => Err(StoreError::Duplicate {
                job_id,
                unique_key: key.unwrap_or_default(),
            }),
            None => Err(StoreError::Db("adding a job reported nothing".into())),
        }
    }
    /// Adds jobs in one transaction: all of them or, on an error, none. Answers one
    /// [`Added`] per job, in order: a job whose unique key a pending or processing job
    /// holds (one added earlier in the same call included) is not added and reports that
    /// job. A duplicate job id is an error ([`StoreError::Invalid`]). Wakes in-process
    /// waiters at once.
    fn add_jobs(&self, jobs: Vec<NewJob>) -> Result<Vec<Added>, StoreError>;
    /// Claims the next claimable job (priority, then age) for `owner`, atomically.
    fn claim_next(&self, filter: &JobFilter, owner: &str) -> Result<Claim, StoreError>;
    /// Claims one pending job by id; false when it is not pending (taken, finished, absent).
    fn claim_job(&self, job_id: &str, owner: &str) -> Result<bool, StoreError>;
    /// [`Self::claim_next`], with the signal that fires if the claim, answered before its
    /// commit, does not commit ([`ClaimLoss`]). `None` when the claim was durable when it
    /// was answered (or nothing was claimed): the default, for backends that answer a claim
    /// after its commit.
    fn claim_next_watched(
        &self,
        filter: &JobFilter,
        owner: &str,
    ) -> Result<(Claim, Option<ClaimLoss>), StoreError> {
        self.claim_next(filter, owner).map(|c| (c, None))
    }
    /// [`Self::claim_job`], with the signal of [`Self::claim_next_watched`].
    fn claim_job_watched(
        &self,
        job_id: &str,
        owner: &str,
    ) -> Result<(bool, Option<ClaimLoss>), StoreError> {
        self.claim_job(job_id, owner).map(|c| (c, None))
    }
    /// Gives a claimed job back without counting the attempt (an interrupted claim).
    fn release_job(&self, job_id: &str, owner: &str) -> Result<bool, StoreError>;
    /// Marks a job completed (with an optional result); false when it was not pending or
    /// processing.
    fn complete_job(&self, job_id: &str, result: Option<&Json>) -> Result<bool, StoreError>;
    /// Completes a job this store object claimed and still holds without waiting for the
    /// write: with batched claims on ([`StoreOptions::claim_batch`] above 1) and while
    /// writes succeed, the completion is queued to be written with this process's next
    /// batch of writes and `true` is returned at once. It commits a moment later (until
    /// then readers see the job `processing`). When its write fails, that is logged, the
    /// job is held again (its lease renewed) and the completion written again at each
    /// lease renewal until it is written; `release_held` writes what is queued first.
    /// When the job is no longer pending or processing by then (its lease was lost and
    /// another process finished it), that is logged. A process that dies first leaves
    /// the job to run again once its lease expires (at-least-once). False when nothing
    /// was queued (batching off, the job not held here, writes failing): call
    /// [`Self::complete_job`] instead. The default queues nothing.
    fn complete_held(&self, _job_id: &str, _result: Option<&Json>) -> bool {
        false
    }
    /// A job from this store object's claim-ahead buffer for `filter` (batched claims,
    /// [`StoreOptions::claim_batch`]), taken without asking the database; `None` when the
    /// buffer holds none that may be handed out, or while writes fail (then
    /// [`Self::claim_next`] decides). The default has no buffer.
    fn claim_buffered(&self, _filter: &JobFilter) -> Option<Job> {
        None
    }
    /// Records a failure: retry with backoff, or dead letter after the last attempt.
    fn fail_job(&self, job_id: &str, error: &str) -> Result<Failed, StoreError>;
    /// Extends every lease `owner` holds; returns how many.
    fn renew_leases(&self, owner: &str) -> Result<usize, StoreError>;
    /// Ends a job this process claimed and its machine abandoned (it went back to claiming
    /// without completing or failing it): status `failed` with `why`, not retried. False
    /// when the job was not processing under this process's lease.
    fn abandon_job(&self, job_id: &str, why: &str) -> Result<bool, StoreError> {
        self.fail_job(job_id, why)
            .map(|f| !matches!(f, Failed::NotFound))
    }
    /// Gives back every job this store object claimed and still holds (a process that
    /// stops: its machines have stopped, what they did not finish goes back to the queue
    /// now instead of when its lease expires). Attempts are not counted, as for
    /// [`Self::release_job`]. Returns how many went back.
    fn release_held(&self) -> Result<usize, StoreError> {
        Ok(0)
    }
    /// Says which machine holds a job this process claimed. The store's lease renewal
    /// then extends the job's lease only while that machine runs; a job claimed through
    /// the store with no holder set is renewed until it is completed, failed or released.
    fn set_holder(&self, _job_id: &str, _holder: Holder) {}
    /// The job `machine` took with `check_database_queue` and still holds, if any.
    fn queue_job_of(&self, _machine: &str) -> Option<String> {
        None
    }
    /// While the store's last writes failed (a full disk, a read-only or deleted file):
    /// how long a claimer should wait before it tries again. `None` when writes succeed.
    fn claim_backoff(&self) -> Option<Duration> {
        None
    }
    /// One job.
    fn get_job(&self, job_id: &str) -> Result<Option<Job>, StoreError>;
    /// Jobs, newest first (row id descending).
    fn list_jobs(&self, q: &ListJobs) -> Result<Vec<Job>, StoreError>;
    /// Makes a dead-lettered or cancelled job pending again, claimable at once, with its
    /// attempts counted from 0 (its last error is kept). Refused for any other status, and
    /// while another pending or processing job holds its unique key.
    fn retry_job(&self, job_id: &str) -> Result<JobChange, StoreError>;
    /// Cancels a pending job: status `cancelled`, kept (and listed) until purged, never
    /// claimed. A job in any other status (a claimed one included) is refused.
    fn cancel_job(&self, job_id: &str) -> Result<JobChange, StoreError>;
    /// Deletes completed, cancelled and dead-lettered jobs that finished more than `age`
    /// ago; returns how many.
    fn purge_jobs(&self, age: Duration) -> Result<u64, StoreError>;
    /// Pending jobs in claim order (priority, then age), not claimed.
    fn pending_jobs(
        &self,
        filter: &JobFilter,
        limit: Option<usize>,
    ) -> Result<Vec<Job>, StoreError>;
    /// Job counts by (job_type, status).
    fn counts(&self) -> Result<Vec<(String, String, u64)>, StoreError>;
    /// How the queue is doing: its oldest pending job per type, the events not yet
    /// processed, the backend's connections.
    fn queue_health(&self) -> Result<QueueHealth, StoreError>;
    /// Checks the database for readiness probes: an error (or no answer) means jobs
    /// cannot be claimed or added now.
    fn ping(&self) -> Result<(), StoreError>;
    /// Notified when jobs may have changed: at once when a job is added, given back,
    /// completed or failed through this store object, and soon after another process
    /// (or another store object) writes to the database ([`FOREIGN_CHANGES`] at most on
    /// SQLite). Waiting claimers and `wait_for_jobs` wake up and look again; a wake-up
    /// may find nothing new. A backend may tell completions only to
    /// [`Self::finish_notify`] (PostgreSQL does: a completion makes nothing claimable).
    fn notify(&self) -> &Arc<tokio::sync::Notify>;
    /// Notified when a job may have been completed (here or in another process, as
    /// [`Self::notify`]). Whoever waits for jobs to finish waits on both. The default:
    /// [`Self::notify`], which is then told completions too.
    fn finish_notify(&self) -> &Arc<tokio::sync::Notify> {
        self.notify()
    }
    /// The lease owner id of this process.
    fn owner(&self) -> &str;
}

/// What became of a completion queued by [`JobStore::complete_held`] (its caller heard
/// `true` already): logged unless it was written; true when it failed and is to be
/// written again.
pub(crate) fn behind_failed(job_id: &str, r: &Result<bool, StoreError>) -> bool {
    match r {
        Ok(true) => false,
        Ok(false) => {
            tracing::warn!(
                target: "turnstile::store",
                job = %job_id,
                "a completion answered before its write found the job no longer pending or processing (its lease was lost and another process finished it, or an operator did): not completed here"
            );
            false
        }
        Err(e) => {
            tracing::warn!(
                target: "turnstile::store",
                job = %job_id,
                "a completion answered before its write could not be written ({e}): the job stays held here and the completion is written again at the next lease renewal"
            );
            true
        }
    }
}

/// A machine's persisted state.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MachineRecord {
    /// Machine name.
    pub machine_name: String,
    /// Its state.
    pub current_state: Option<String>,
    /// The last save.
    pub last_activity: Option<Timestamp>,
    /// The process that saved it.
    pub pid: Option<i64>,
    /// The instance id of that process (`--instance-id`; `None` for a row written by
    /// statemachine-engine or an older Turnstile, or by a store opened without one).
    pub instance_id: Option<String>,
    /// Its context (Turnstile writes it; statemachine-engine leaves it empty).
    pub context: Option<Json>,
    /// It was paused (`POST /machines/{name}/pause`, a breakpoint) when saved: it starts
    /// paused again.
    pub paused: bool,
    /// For an instance started at run time: the definition it runs (`None` for a machine
    /// the process was started with, and for rows statemachine-engine wrote).
    pub definition: Option<String>,
    /// An instance that reached a final state or was stopped: its record is kept, it is
    /// not started again after a restart.
    pub retired: bool,
}

/// What the store records of an instance besides its state: its definition, and whether it
/// is retired ([`StateStore::mark_instances`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceMark {
    /// The instance's name (its `machine_state` row).
    pub machine: Arc<str>,
    /// The definition it runs.
    pub definition: Arc<str>,
    /// `false` when it starts, `true` when it is retired.
    pub retired: bool,
}

/// An event kept for audit or for a machine that reads events from the store.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventRecord {
    /// Row id.
    pub id: i64,
    /// Sender.
    pub source_machine: Option<String>,
    /// Receiver.
    pub target_machine: String,
    /// Event name.
    pub event_type: String,
    /// Job id carried.
    pub job_id: Option<String>,
    /// Payload.
    pub payload: Option<Json>,
    /// `pending` or `processed`.
    pub status: String,
    /// The sender's trace context (events sent through [`EventStore::send_event`]).
    pub traceparent: Option<String>,
    /// When it was recorded.
    pub created_at: Option<Timestamp>,
}

/// Machine name -> (state, context, paused): the latest state of each machine to save.
pub type SavedStates = std::collections::HashMap<Arc<str>, (Arc<str>, Map<String, Json>, bool)>;

/// One transition, as kept in the audit table (`transitions`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TransitionRecord {
    /// Row id (0 before it is written).
    pub id: i64,
    /// The machine.
    pub machine_name: String,
    /// State left.
    pub from_state: String,
    /// State entered.
    pub to_state: String,
    /// The event.
    pub event: String,
    /// The event's job id.
    pub job_id: Option<String>,
    /// When it was written.
    pub created_at: Option<Timestamp>,
}

/// Persisted machine state and events (statemachine-engine's `machine_state` and
/// `machine_events` tables, and Turnstile's `transitions` audit table).
pub trait StateStore: Send + Sync + std::fmt::Debug + 'static {
    /// Saves a machine's state and context.
    fn save_state(
        &self,
        machine: &str,
        state: &str,
        context: &Map<String, Json>,
    ) -> Result<(), StoreError>;
    /// One machine's saved state.
    fn load_state(&self, machine: &str) -> Result<Option<MachineRecord>, StoreError>;
    /// Every saved machine.
    fn machines(&self) -> Result<Vec<MachineRecord>, StoreError>;
    /// Records an event (status `pending`).
    fn record_event(
        &self,
        source: Option<&str>,
        target: &str,
        event_type: &str,
        job_id: Option<&str>,
        payload: Option<&Json>,
    ) -> Result<i64, StoreError>;
    /// Events, newest first.
    fn events(&self, target: Option<&str>, limit: usize) -> Result<Vec<EventRecord>, StoreError>;
    /// Marks `target`'s pending events of these types processed; returns how many.
    fn clear_events(&self, target: &str, types: &[String]) -> Result<usize, StoreError>;
    /// Saves machine states and appends transition records, in one transaction.
    fn persist_batch(
        &self,
        states: &SavedStates,
        audit: &[TransitionRecord],
    ) -> Result<(), StoreError> {
        self.persist_processed(states, audit, &[])
    }
    /// [`Self::persist_batch`], and marks these events of the event table processed in
    /// the same transaction (the machines handled them; see [`events`]).
    fn persist_processed(
        &self,
        states: &SavedStates,
        audit: &[TransitionRecord],
        processed: &[i64],
    ) -> Result<(), StoreError>;
    /// Transition records, newest first.
    fn transitions(
        &self,
        machine: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TransitionRecord>, StoreError>;
    /// Records, in this order, the definition of instances and whether they are retired,
    /// in one transaction: the row of each is created (with no state yet) when missing,
    /// and only these two columns are written (a state save leaves them alone).
    fn mark_instances(&self, marks: &[InstanceMark]) -> Result<(), StoreError>;
    /// The instances recorded as live (a definition, not retired), by name.
    fn live_instances(&self) -> Result<Vec<MachineRecord>, StoreError>;
    /// Takes instances for this store's instance id ([`StoreOptions::instance_id`]) and
    /// returns their records, by name: live ones (not retired, a state saved) of these
    /// `definitions`. `dead_after` `None`: the ones it owns already, and those with no
    /// owner recorded (a restart; released ones). `Some(lease)`: those with no owner
    /// (released at a clean exit: [`Self::release_instances`]) and another process's
    /// whose `turnstile_instances` heartbeat is older than `lease` (a takeover; an owner
    /// with no row keeps its instances). One conditional `UPDATE`: among
    /// processes claiming at once, each instance goes to one of them.
    fn claim_instances(
        &self,
        definitions: &[String],
        dead_after: Option<Duration>,
    ) -> Result<Vec<MachineRecord>, StoreError>;
    /// Takes the name `machine` for a new instance of `definition` owned by this store's
    /// instance id, before it starts (with `--persist`, names are unique across the
    /// processes sharing the store). One conditional insert: true when the row was free
    /// (none, a machine's state with no definition, a retired instance, this process's
    /// own, or an instance with no saved state and no owner or a dead one: nothing would
    /// run it again); false when another process's instance holds it (a state is saved:
    /// its owner runs it, or a survivor will take it over; or its owner is not known dead,
    /// a `turnstile_instances` heartbeat older than [`StoreOptions::lease`]). Among
    /// processes taking one name at once, one wins. A store without instances takes
    /// every name.
    fn claim_instance_name(&self, machine: &str, definition: &str) -> Result<bool, StoreError> {
        let _ = (machine, definition);
        Ok(true)
    }
    /// At a clean exit, once this process's instances stopped and their states were
    /// saved: gives up its live instances (their owner cleared) so that another process
    /// with their definition takes them over ([`Self::claim_instances`]), or the next one
    /// that starts. Returns how many.
    fn release_instances(&self) -> Result<usize, StoreError> {
        Ok(0)
    }
    /// The instance id written with saved states ([`StoreOptions::instance_id`]).
    fn saver_id(&self) -> Option<&str> {
        None
    }
}

/// What [`JobStore::queue_health`] reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueHealth {
    /// Per job type with pending jobs: when the oldest of them was added.
    pub oldest_pending: Vec<(String, Timestamp)>,
    /// Events recorded for machines (`machine_events`) and not processed yet.
    pub events_pending: u64,
    /// The backend's connections, open and in use; `None` for a backend without a pool.
    pub connections: Option<(u64, u64)>,
}

/// Both halves of a store, its live instances, its machine leases and its event delivery,
/// as one backend serves them.
pub trait Store: JobStore + StateStore + InstanceStore + LeaseStore + EventStore {
    /// Where the store is, for logs (a URL's password left out).
    fn describe(&self) -> String;
    /// Writes so far and the transactions they took (with group commit, fewer
    /// transactions than writes when writes overlap).
    fn write_counts(&self) -> (u64, u64) {
        (0, 0)
    }
}

/// The longest a waiter takes to notice a write by another process (see
/// [`JobStore::notify`]).
pub const FOREIGN_CHANGES: Duration = Duration::from_millis(250);

/// Gives each job of a batch its id (a fresh one where none is given) and refuses a batch
/// that gives one id twice, for the backends' [`JobStore::add_jobs`].
pub(crate) fn with_ids(jobs: Vec<NewJob>) -> Result<Vec<(String, NewJob)>, StoreError> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(jobs.len());
    for j in jobs {
        let id = j.job_id.clone().unwrap_or_else(new_job_id);
        if !seen.insert(id.clone()) {
            return Err(StoreError::Invalid(format!(
                "a job with id `{id}` already exists (the id is given twice)"
            )));
        }
        out.push((id, j));
    }
    Ok(out)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch as a time.
pub fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Runs a blocking store call from a task (a machine's, an HTTP handler's): on a
/// multi-threaded runtime the thread's other tasks move elsewhere meanwhile
/// ([`tokio::task::block_in_place`]); elsewhere (a current-thread runtime, a plain thread)
/// it is simply called.
pub(crate) fn in_place<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

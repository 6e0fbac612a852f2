//! Events across processes: the machine registry (`turnstile_machines`: which process runs
//! which machine) and delivery through the event table (`machine_events`).
//!
//! A trait of its own ([`EventStore`], required by [`super::Store`]), beside
//! [`super::StateStore`]'s audit-style `record_event`/`events`/`clear_events`, because it
//! carries a delivery protocol:
//!
//! - [`EventStore::register_machines`] records that an incarnation runs these machines
//!   (written again every third of the lease as a heartbeat); a registration older than
//!   the lease is stale (its process died); [`EventStore::unregister_machines`] deletes
//!   them at a clean exit. [`EventStore::machine_hosts`] answers the live ones: "runs
//!   elsewhere" is told apart from "does not exist".
//! - [`EventStore::send_event`] appends a `pending` row (with the sender's
//!   `traceparent`) and wakes the consumers at once ([`EventStore::event_notify`];
//!   PostgreSQL: `NOTIFY turnstile_jobs` with payload `event:NAME`; SQLite: the WAL watch
//!   of the consumer's store).
//! - [`EventStore::take_events`] hands `target`'s pending rows in id order to the one
//!   consumer that holds `target`'s consumer lease (`turnstile_event_consumers`; taken
//!   when free, expired or already the caller's, renewed by every call): when several
//!   processes run a machine of one name, one of them at a time receives its events, so
//!   they keep their order. [`EventStore::mark_processed`] marks rows `processed` once
//!   the receiving machine has handled them; [`super::StateStore::persist_processed`]
//!   does it in the transaction that saves the state they led to (`--persist`), so a
//!   process killed in between redelivers exactly the events whose effect was not saved.
//! - Instances started at run time are not in `turnstile_machines` (there may be 100,000
//!   of them: one row each, written every third of the lease, would be 100,000 writes per
//!   heartbeat). With `--persist`, their `machine_state` row is their registration: the
//!   persister writes it, in its batches, with the owning process's instance id
//!   (`instance_id`) when the instance starts and marks it retired when it retires
//!   ([`super::StateStore::mark_instances`]); the owner is live while its own
//!   `turnstile_instances` row has a heartbeat younger than the lease (one heartbeat per
//!   process). [`EventStore::instance_owner`] answers who runs an instance;
//!   [`EventStore::take_instance_events`] hands one process the pending events of every
//!   instance it owns, in id order, with no consumer lease (an instance has one owner);
//!   [`super::StateStore::claim_instances`] moves instances to a process: its own and
//!   released ones at start, released ones and a dead owner's by a survivor (a conditional
//!   `UPDATE`: exactly one taker); [`super::StateStore::release_instances`] clears the
//!   owner at a clean exit; [`super::StateStore::claim_instance_name`] keeps a name unique
//!   across processes.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value as Json;

use super::{StoreError, Timestamp};

/// An event to send through the store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewEvent {
    /// The sending machine (`None`: the CLI, an HTTP client).
    pub source: Option<String>,
    /// The receiving machine.
    pub target: String,
    /// The event name.
    pub event_type: String,
    /// A job id carried with it.
    pub job_id: Option<String>,
    /// Its payload.
    pub payload: Option<Json>,
    /// The sender's W3C trace context: the receiver's span continues that trace.
    pub traceparent: Option<String>,
}

/// A pending event as [`EventStore::take_events`] hands it over.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Its id: increasing in insertion order; a redelivery has the same id.
    pub id: i64,
    /// The sender.
    pub source: Option<String>,
    /// The receiver.
    pub target: String,
    /// The event name.
    pub event_type: String,
    /// A job id carried with it.
    pub job_id: Option<String>,
    /// Its payload (a payload that is not JSON, as statemachine-engine's CLI may write,
    /// is a JSON string).
    pub payload: Option<Json>,
    /// The sender's trace context.
    pub traceparent: Option<String>,
}

/// A live registration of a machine ([`EventStore::machine_hosts`]).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MachineHost {
    /// The machine.
    pub machine_name: String,
    /// The instance id of the process running it.
    pub instance_id: String,
    /// That process's incarnation.
    pub incarnation: String,
    /// Its host.
    pub host: String,
    /// Its pid.
    pub pid: i64,
    /// Its last heartbeat.
    pub heartbeat_at: Option<Timestamp>,
}

/// Who runs an instance started at run time, as its `machine_state` row says
/// ([`EventStore::instance_owner`]).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InstanceOwner {
    /// The instance id of the process that owns it (`None`: a row written without one).
    pub instance_id: Option<String>,
    /// That process's `turnstile_instances` heartbeat is younger than the stale limit.
    pub live: bool,
    /// A state was saved for it (a survivor can take it over when its owner dies).
    pub saved: bool,
}

/// The machine registry and the event table's delivery.
pub trait EventStore: Send + Sync + std::fmt::Debug + 'static {
    /// Records that `incarnation` (of instance `instance_id`, this process) runs
    /// `machines`, now: rows of this incarnation for other names are deleted, and so are
    /// its consumer leases of other names (a singleton this process no longer holds: its
    /// next holder consumes at once). Called again as the heartbeat.
    fn register_machines(
        &self,
        instance_id: &str,
        incarnation: &str,
        machines: &[String],
    ) -> Result<(), StoreError>;
    /// Deletes `incarnation`'s registrations and gives up its consumer leases (a clean
    /// exit).
    fn unregister_machines(&self, incarnation: &str) -> Result<(), StoreError>;
    /// The registrations of `machine` whose heartbeat is younger than `stale_after`.
    fn machine_hosts(
        &self,
        machine: &str,
        stale_after: Duration,
    ) -> Result<Vec<MachineHost>, StoreError>;
    /// Appends a pending event; returns its id. Wakes the target's consumer at once.
    fn send_event(&self, ev: &NewEvent) -> Result<i64, StoreError>;
    /// With `target`'s consumer lease (taken or renewed for `lease` when free, expired or
    /// `consumer`'s): up to `limit` of its pending events in id order. `None` when
    /// another consumer holds the lease.
    fn take_events(
        &self,
        target: &str,
        consumer: &str,
        lease: Duration,
        limit: usize,
    ) -> Result<Option<Vec<StoredEvent>>, StoreError>;
    /// The owner of the instance `machine` (a `machine_state` row with a definition, not
    /// retired), its liveness judged by its `turnstile_instances` heartbeat against
    /// `stale_after`; `None` when no such instance is recorded.
    fn instance_owner(
        &self,
        machine: &str,
        stale_after: Duration,
    ) -> Result<Option<InstanceOwner>, StoreError>;
    /// Up to `limit` pending events, in id order, of every instance (not retired) that
    /// `owner` (an instance id) owns: one read for all of a process's instances.
    fn take_instance_events(
        &self,
        owner: &str,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;
    /// Marks these events processed; returns how many were pending.
    fn mark_processed(&self, ids: &[i64]) -> Result<usize, StoreError>;
    /// Notified when an event may have been sent to a machine: at once for a send
    /// through this store object, soon after one by another process. Consumers wait on
    /// it; a wake-up may find nothing new.
    fn event_notify(&self) -> &std::sync::Arc<tokio::sync::Notify>;
}

/// A `payload` column's text as JSON: JSON when it parses, else the text as a string
/// (statemachine-engine's CLI stores `--payload` as given).
pub(crate) fn payload_from_text(text: Option<String>) -> Option<Json> {
    text.map(|t| serde_json::from_str(&t).unwrap_or(Json::String(t)))
}

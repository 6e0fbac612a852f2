//! Live instances: the `turnstile_instances` table, one row per instance id that a running
//! process claimed, so that a second live process started with the same `--instance-id`
//! is refused instead of sharing the id (and its lease owner prefix, its logs and its
//! spans) with the first.
//!
//! A trait of its own ([`InstanceStore`], required by [`super::Store`]) rather than more
//! methods on [`super::StateStore`]: instances are not machine state, and the persister
//! and other users of [`super::StateStore`] need nothing of them.
//!
//! - [`InstanceStore::register_instance`] claims an id atomically: it succeeds when no row
//!   holds the id, or when the row's last heartbeat is older than `stale_after` (its
//!   process is dead), or when the row is this incarnation's; otherwise it fails with
//!   [`StoreError::InstanceInUse`], naming the live holder. The stale limit a caller
//!   passes is the lease time: a process that did not heartbeat for a whole lease also
//!   lost its job leases, so it counts as dead.
//! - While an id is registered through a store object, that store's lease renewal thread
//!   heartbeats it every third of the lease, whether or not a job is held
//!   ([`Registration::beat`]); a heartbeat that finds the row taken by another incarnation
//!   logs an error (two processes now run under one id).
//! - [`InstanceStore::unregister_instance`] deletes the row at a clean exit, so the id is
//!   free at once; a process that dies leaves its row, free once it is stale.
//!
//! Times are the database's clock on PostgreSQL, and the writer's clock on SQLite (one
//! host shares the file).

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use super::{StoreError, Timestamp};

/// A registered instance, as its row says.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LiveInstance {
    /// The instance id.
    pub instance_id: String,
    /// The incarnation (`PID-NONCE`) of the process that holds it.
    pub incarnation: String,
    /// That process's host.
    pub host: String,
    /// That process's pid.
    pub pid: i64,
    /// When it registered.
    pub started_at: Option<Timestamp>,
    /// Its last heartbeat.
    pub heartbeat_at: Option<Timestamp>,
    /// How long ago its last heartbeat was, by the store's clock.
    pub age: Duration,
}

/// What [`InstanceStore::heartbeat_instance`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Heartbeat {
    /// The row is this incarnation's (written again if it was gone): heartbeat recorded.
    Ours,
    /// Another incarnation holds the id now (it found this one stale and took it over).
    Taken(Box<LiveInstance>),
}

/// The live instances sharing a store.
pub trait InstanceStore: Send + Sync + std::fmt::Debug + 'static {
    /// Claims `id` for `incarnation` (this process: its host and pid are recorded), when
    /// no row holds it, its row's heartbeat is older than `stale_after`, or the row is
    /// already `incarnation`'s; atomically, across processes. Otherwise
    /// [`StoreError::InstanceInUse`]. Once registered, this store object's lease renewal
    /// thread heartbeats the id.
    fn register_instance(
        &self,
        id: &str,
        incarnation: &str,
        stale_after: Duration,
    ) -> Result<(), StoreError>;
    /// Records a heartbeat of `id` for `incarnation` (writing the row again if it is
    /// gone); [`Heartbeat::Taken`] when another incarnation holds it.
    fn heartbeat_instance(&self, id: &str, incarnation: &str) -> Result<Heartbeat, StoreError>;
    /// Deletes `id`'s row if `incarnation` holds it (a clean exit); false when it does
    /// not. Heartbeats from this store object stop.
    fn unregister_instance(&self, id: &str, incarnation: &str) -> Result<bool, StoreError>;
    /// Every registered instance (stale ones included), by id.
    fn instances(&self) -> Result<Vec<LiveInstance>, StoreError>;
}

/// The instance a store object registered, which its lease renewal thread heartbeats.
#[derive(Debug, Default)]
pub(crate) struct Registration(Mutex<Option<(String, String)>>);

impl Registration {
    /// `id` is registered for `incarnation`: heartbeat it from now on.
    pub(crate) fn set(&self, id: &str, incarnation: &str) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((id.to_owned(), incarnation.to_owned()));
    }

    /// `id` is no longer registered by this store object.
    pub(crate) fn clear(&self, id: &str, incarnation: &str) {
        let mut r = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if r.as_ref().is_some_and(|(i, n)| i == id && n == incarnation) {
            *r = None;
        }
    }

    /// Heartbeats the registered instance, if any, through `store` (from the lease
    /// renewal thread); logs what goes wrong. The registration stays locked meanwhile, so
    /// an unregistration ([`Self::clear`] first, then the delete) waits for a heartbeat in
    /// flight, which would otherwise write the deleted row again.
    pub(crate) fn beat(&self, store: &dyn InstanceStore) {
        let registered = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some((id, incarnation)) = registered.as_ref() else {
            return;
        };
        match store.heartbeat_instance(id, incarnation) {
            Ok(Heartbeat::Ours) => {}
            Ok(Heartbeat::Taken(other)) => tracing::error!(
                target: "turnstile::store",
                instance = %id,
                incarnation = %incarnation,
                "instance id `{id}` was taken over by another process (pid {} on host {}, incarnation {}) after this one missed its heartbeats for a whole lease: two processes now run as `{id}`; stop one of them",
                other.pid,
                other.host,
                other.incarnation
            ),
            Err(e) => {
                tracing::warn!(target: "turnstile::store", instance = %id, "instance heartbeat failed: {e}")
            }
        }
    }
}

/// Milliseconds of `d`, for SQL parameters.
pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

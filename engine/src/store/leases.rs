//! Machine leases: the `turnstile_leases` table, one row per singleton machine (see
//! [`crate::runtime::singleton`]), saying which process runs it, under which *epoch*, and
//! until when.
//!
//! - [`LeaseStore::acquire_lease`] takes a lease that is free (no row, or released) or
//!   expired, atomically across processes, and increments its epoch: every tenure has an
//!   epoch no earlier tenure had.
//! - [`LeaseStore::renew_lease`] extends it while the holder and epoch are still the
//!   row's (an expired lease nobody took is renewed too: nobody else ran the machine,
//!   since taking it would have moved the epoch on).
//! - [`LeaseStore::release_lease`] frees it at once (a clean stop or a lost tenure), so a
//!   standby takes over without waiting for the expiry. The row stays, so that epochs
//!   only grow.
//! - Fencing: once [`LeaseStore::fence`] named a machine's epoch to a store object, every
//!   state write of that machine through it (`save_state`, `persist_batch`: its state and
//!   its transition records) is made in SQL only while the row's epoch is still that
//!   one, in the same statement (PostgreSQL locks the row `FOR SHARE`, so a takeover
//!   that commits meanwhile waits or is seen) or the same `BEGIN IMMEDIATE` transaction
//!   (SQLite). A refused write is [`StoreError::Fenced`]: the stale holder's copy stops.
//!
//! Times are the database's clock on PostgreSQL, and the writer's clock on SQLite (one
//! host shares the file), as for the instances.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use serde::Serialize;

use super::StoreError;

/// What [`LeaseStore::acquire_lease`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// The caller holds the lease now, under this epoch.
    Held {
        /// The new epoch.
        epoch: i64,
    },
    /// Another holder has it: try again after `expires_in` (or when notified).
    Taken {
        /// Who holds it.
        holder: String,
        /// Its epoch.
        epoch: i64,
        /// How long until it expires, by the store's clock.
        expires_in: Duration,
    },
}

/// A lease as its row says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseRecord {
    /// The machine's name.
    pub name: String,
    /// Who holds it (`None`: released).
    pub holder: Option<String>,
    /// Its epoch (the number of tenures so far).
    pub epoch: i64,
    /// How long until it expires (`None`: expired or released), by the store's clock.
    #[serde(skip)]
    pub expires_in: Option<Duration>,
}

/// Leases on singleton machines, shared by the processes of one store.
pub trait LeaseStore: Send + Sync + std::fmt::Debug + 'static {
    /// Takes `name`'s lease for `holder` for `lease` when it is free or expired; the epoch
    /// moves on by one.
    fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        lease: Duration,
    ) -> Result<Acquired, StoreError>;
    /// Extends the lease by `lease` from now if `holder` still holds it under `epoch`;
    /// false when not (another process took it over, or it was released).
    fn renew_lease(
        &self,
        name: &str,
        holder: &str,
        epoch: i64,
        lease: Duration,
    ) -> Result<bool, StoreError>;
    /// Frees the lease at once if `holder` holds it under `epoch`; false when not.
    fn release_lease(&self, name: &str, holder: &str, epoch: i64) -> Result<bool, StoreError>;
    /// Every lease, by name.
    fn leases(&self) -> Result<Vec<LeaseRecord>, StoreError>;
    /// From now on, state writes of `machine` through this store object are made only
    /// while its lease's epoch is `epoch` (see the module docs).
    fn fence(&self, machine: &str, epoch: i64);
}

/// The epochs writes of fenced machines carry, per store object.
#[derive(Debug, Default)]
pub(crate) struct Fences(RwLock<HashMap<String, i64>>);

impl Fences {
    /// Writes of `machine` carry `epoch` from now on.
    pub(crate) fn set(&self, machine: &str, epoch: i64) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(machine.to_owned(), epoch);
    }

    /// The epoch writes of `machine` carry (`None`: not a fenced machine).
    pub(crate) fn of(&self, machine: &str) -> Option<i64> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(machine)
            .copied()
    }
}

/// The error of a write refused for `machine`, fenced at `epoch`.
pub(crate) fn fenced(machine: &str, epoch: i64) -> StoreError {
    StoreError::Fenced {
        machine: machine.to_owned(),
        epoch,
    }
}

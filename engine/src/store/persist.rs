//! Persisting machine state: after each transition the machine hands its new state and
//! context to a [`Persister`], which writes them from its own thread (the machine never
//! waits for the disk). States are coalesced (only the latest state of each machine is
//! written); the transition audit rows are kept up to [`AUDIT_BACKLOG`] unwritten rows,
//! beyond which new rows are dropped and counted.
//!
//! An instance started at run time is also marked in the store with its definition when it
//! starts and as retired when it reaches a final state or is stopped
//! ([`Persister::instance_started`], [`Persister::instance_retired`]), in the same
//! background writes, so that the engine can start the live ones again after a restart
//! ([`Persister::live_instances`]). The store writes the start mark with its instance id
//! (`machine_state.instance_id`): the instance's owner, which processes sharing the store
//! read to send it events and to take it over when the owner dies
//! ([`crate::store::events`]); these batched marks are the instance's whole registration.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::{Map, Value as Json};

use super::{InstanceMark, MachineRecord, SavedStates, StateStore, TransitionRecord};
use crate::runtime::def::MachineDef;

/// Audit rows kept in memory while the writer is behind.
pub const AUDIT_BACKLOG: usize = 100_000;

#[derive(Default)]
struct Pending {
    states: SavedStates,
    audit: Vec<TransitionRecord>,
    /// Events of the store's event table the machines handled: marked processed in the
    /// transaction that saves the states they led to.
    processed: Vec<i64>,
    /// Instances started and retired, in order.
    marks: Vec<InstanceMark>,
    /// The writer took a batch and has not written it yet: not settled, though nothing
    /// is pending ([`Persister::flush`] waits for it too).
    writing: bool,
    closed: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.states.is_empty()
            && self.audit.is_empty()
            && self.processed.is_empty()
            && self.marks.is_empty()
    }
}

struct Inner {
    pending: Mutex<Pending>,
    wake: Condvar,
    dropped: AtomicU64,
    written: AtomicU64,
    idle: Condvar,
}

/// Ends the writer (after it wrote what is pending) when the last handle goes.
struct Closer(Arc<Inner>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed = true;
        self.0.wake.notify_all();
    }
}

/// A machine's saved state, as it starts from it ([`Persister::restored`]).
#[derive(Debug, Clone)]
pub struct Restored {
    /// The state's index in the definition.
    pub state: usize,
    /// The context.
    pub context: Map<String, Json>,
    /// It was paused: it starts paused (its queued events wait for a resume).
    pub paused: bool,
}

/// Writes machine states and transition records to a [`StateStore`] in the background.
#[derive(Clone)]
pub struct Persister {
    inner: Arc<Inner>,
    store: Arc<dyn StateStore>,
    _closer: Arc<Closer>,
}

impl std::fmt::Debug for Persister {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persister")
            .field("written", &self.inner.written.load(Ordering::Relaxed))
            .field("dropped", &self.inner.dropped.load(Ordering::Relaxed))
            .finish()
    }
}

impl Persister {
    /// Starts the writer thread.
    pub fn new(store: Arc<dyn StateStore>) -> Self {
        let inner = Arc::new(Inner {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
            idle: Condvar::new(),
        });
        let (i, s) = (inner.clone(), store.clone());
        let spawned = std::thread::Builder::new()
            .name("turnstile-persist".into())
            .spawn(move || writer(&i, &*s));
        if let Err(e) = spawned {
            tracing::error!(target: "turnstile::store", "cannot start the state writer: {e}");
        }
        Self {
            _closer: Arc::new(Closer(inner.clone())),
            inner,
            store,
        }
    }

    /// The store written to.
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    /// Records that `machine` entered `state` with `context` (through `event` from
    /// `from`; `None` for the machine's start, a pause, a resume, a context patch), and
    /// whether it is paused.
    ///
    /// `processed`: the id of the store event (the event table's) that led there: it is
    /// marked processed in the transaction that writes this transition's audit row, so a
    /// process killed before that transaction handles it again and one killed after does
    /// not (handing it over separately, [`Self::processed`], could split the two).
    pub fn entered(
        &self,
        machine: &Arc<str>,
        state: &Arc<str>,
        context: &Map<String, Json>,
        from: Option<(&str, &str, Option<&str>)>,
        processed: Option<i64>,
        paused: bool,
    ) {
        let mut p = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = processed {
            p.processed.push(id);
        }
        p.states
            .insert(machine.clone(), (state.clone(), context.clone(), paused));
        if let Some((from, event, job_id)) = from {
            if p.audit.len() < AUDIT_BACKLOG {
                p.audit.push(TransitionRecord {
                    id: 0,
                    machine_name: machine.to_string(),
                    from_state: from.to_owned(),
                    to_state: state.to_string(),
                    event: event.to_owned(),
                    job_id: job_id.map(str::to_owned),
                    created_at: None,
                });
            } else {
                self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(p);
        self.inner.wake.notify_one();
    }

    /// Records that a machine handled event `id` of the store's event table, after it
    /// handed over the state the event led to ([`Self::entered`]): the event is marked
    /// processed in the transaction that saves that state (or a later one), so a process
    /// that dies before the save redelivers it and one that dies after does not.
    pub fn processed(&self, id: i64) {
        let mut p = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.processed.push(id);
        drop(p);
        self.inner.wake.notify_one();
    }

    /// Waits (up to `limit`) until everything handed over so far is written.
    pub fn flush(&self, limit: Duration) -> bool {
        let p = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        let (p, t) = self
            .inner
            .idle
            .wait_timeout_while(p, limit, |p| !p.is_empty() || p.writing)
            .unwrap_or_else(|e| e.into_inner());
        drop(p);
        !t.timed_out()
    }

    /// The saved state (index), context and pause of `def`'s machine, when there is one,
    /// its state still exists and is not final.
    pub fn restored(&self, def: &MachineDef) -> Option<Restored> {
        let rec = match self.store.load_state(&def.name) {
            Ok(r) => r?,
            Err(e) => {
                tracing::warn!(target: "turnstile::store", machine = %def.name, "cannot read the saved state: {e}");
                return None;
            }
        };
        Self::restored_from(def, rec)
    }

    /// What a machine running `def` starts from, given its record `rec` (its name is the
    /// record's): `None` when no state was saved, the state no longer exists in `def`
    /// (with a warning) or is final.
    pub fn restored_from(def: &MachineDef, rec: MachineRecord) -> Option<Restored> {
        let machine = rec.machine_name;
        let name = rec.current_state?;
        let Some(ix) = def.states.iter().position(|s| *s.name == *name) else {
            tracing::warn!(target: "turnstile::store", %machine, definition = %def.name, state = %name, "the saved state no longer exists: starting from the initial state");
            return None;
        };
        if def.states[ix].is_final {
            return None;
        }
        let context = match rec.context {
            Some(Json::Object(m)) => m,
            _ => def.context.clone(),
        };
        tracing::info!(target: "turnstile::store", %machine, state = %name, paused = rec.paused, "restored the saved state");
        Some(Restored {
            state: ix,
            context,
            paused: rec.paused,
        })
    }

    /// Records that the instance `machine` of `definition` started (it is live: started
    /// again after a restart while it is not retired).
    pub fn instance_started(&self, machine: &Arc<str>, definition: &Arc<str>) {
        self.mark(machine, definition, false);
    }

    /// Records that the instance `machine` of `definition` is retired (a final state, or
    /// stopped): its record is kept, it is not started again after a restart.
    pub fn instance_retired(&self, machine: &Arc<str>, definition: &Arc<str>) {
        self.mark(machine, definition, true);
    }

    fn mark(&self, machine: &Arc<str>, definition: &Arc<str>, retired: bool) {
        let mut p = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.marks.push(InstanceMark {
            machine: machine.clone(),
            definition: definition.clone(),
            retired,
        });
        drop(p);
        self.inner.wake.notify_one();
    }

    /// The instances the store records as live (a definition, not retired), by name.
    pub fn live_instances(&self) -> Result<Vec<MachineRecord>, super::StoreError> {
        self.store.live_instances()
    }

    /// Audit rows dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }
}

fn writer(inner: &Inner, store: &dyn StateStore) {
    loop {
        let batch = {
            let mut p = inner.pending.lock().unwrap_or_else(|e| e.into_inner());
            while p.is_empty() && !p.closed {
                p = inner.wake.wait(p).unwrap_or_else(|e| e.into_inner());
            }
            if p.closed && p.is_empty() {
                return;
            }
            p.writing = true;
            (
                std::mem::take(&mut p.states),
                std::mem::take(&mut p.audit),
                std::mem::take(&mut p.processed),
                std::mem::take(&mut p.marks),
            )
        };
        let (states, audit, processed, marks) = batch;
        // Only the definition and retirement columns: independent of the state writes,
        // in either order.
        if !marks.is_empty() {
            if let Err(e) = store.mark_instances(&marks) {
                tracing::warn!(target: "turnstile::store", "cannot record instances: {e}");
            }
        }
        let n = states.len() + audit.len();
        if n > 0 || !processed.is_empty() {
            if let Err(e) = store.persist_processed(&states, &audit, &processed) {
                tracing::warn!(target: "turnstile::store", "cannot save machine state: {e}");
            }
            inner.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        let mut p = inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.writing = false;
        if p.is_empty() {
            inner.idle.notify_all();
        }
    }
}

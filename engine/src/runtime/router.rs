//! Delivery of events to machines by name, in one process; and, when a [`Remote`] is
//! attached (a store shared with other processes, [`crate::runtime::bridge::EventBridge`]), to
//! machines of other processes through it. The remote is consulted only for a name no
//! machine of this process has, so local delivery stays a map lookup.

use std::sync::{Arc, OnceLock, RwLock};

use rustc_hash::FxHashMap;
use tokio::sync::Notify;

use super::event::Event;
pub use super::mailbox::TrySendError;
use super::start::Starter;

/// A machine's event queue as senders see it (the machine's mailbox, `runtime/mailbox.rs`).
pub trait EventQueue: Send + Sync {
    /// Queues `ev` if there is room (waking the machine).
    fn try_send(&self, ev: Event) -> Result<(), TrySendError>;
    /// Notified when room is made in the full queue, and when the machine stops.
    fn space(&self) -> &Notify;
    /// The machine has stopped.
    fn is_closed(&self) -> bool;
}

/// A machine's event queue, shared.
pub type Queue = Arc<dyn EventQueue>;

impl std::fmt::Debug for dyn EventQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventQueue")
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Queues `ev`, waiting while the queue is full (backpressure); the event is handed back
/// when the machine has stopped.
pub async fn send_waiting(q: &dyn EventQueue, mut ev: Event) -> Result<(), Event> {
    loop {
        let room = q.space().notified();
        tokio::pin!(room);
        // Enabled before the attempt: room made after a failed attempt is not missed.
        room.as_mut().enable();
        match q.try_send(ev) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Closed(e)) => return Err(e),
            Err(TrySendError::Full(e)) => ev = e,
        }
        room.await;
    }
}

/// The same queue (the address of the mailbox, not of the vtable).
fn same_queue(a: &Queue, b: &Queue) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

/// Why an event could not be delivered at once.
#[derive(Debug)]
pub enum DeliverError {
    /// The target's queue is full: the event and a sender to wait on are handed back, so
    /// the caller can wait (backpressure) instead of dropping it.
    Full(Event, Queue),
    /// The target has stopped.
    Closed,
    /// No machine has that name: the event is handed back (another process may run a
    /// machine of that name, see [`Router::remote`]).
    Unknown(Event),
}

/// Why [`Remote::forward`] did not send an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// No live process runs a machine of that name.
    #[error("no machine named `{0}` runs in this process or any other sharing the store")]
    Unknown(String),
    /// The store failed.
    #[error("cannot send to `{0}` through the store: {1}")]
    Store(String, String),
}

/// Machines of other processes, reached through a shared store.
pub trait Remote: Send + Sync {
    /// Sends `ev` from `source` to `target`, a machine another process runs; returns the
    /// event's id. Blocking (a store round trip): call it off the async threads.
    fn forward(&self, source: Option<&str>, target: &str, ev: &Event) -> Result<i64, ForwardError>;
    /// Whether a live process runs a machine named `target`. Blocking.
    fn runs_elsewhere(&self, target: &str) -> Result<bool, ForwardError>;
    /// `machine` handled (transitioned on, or ignored) event `id` it received through the
    /// store. Called on the machine's task: must not block.
    fn handled(&self, machine: &Arc<str>, id: i64);
    /// This process now runs singleton `machine` (it took the lease): other processes'
    /// events for it come here. Blocking.
    fn hold(&self, _machine: &str) {}
    /// This process no longer runs singleton `machine` (its tenure ended). Blocking.
    fn release(&self, _machine: &str) {}
}

/// Machine name -> queue. Read on every cross-machine send; written when machines start.
#[derive(Default)]
pub struct Router {
    routes: RwLock<FxHashMap<Arc<str>, Queue>>,
    remote: OnceLock<Arc<dyn Remote>>,
    /// How actions start instances (`start_fsm`): a link to the engine, which it holds weakly.
    starter: OnceLock<Arc<dyn Starter>>,
}

impl Router {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a machine whose queue `make` builds (under the lock: the name is its own from
    /// then on) unless the name is taken by a running machine; returns the queue's owner.
    pub(crate) fn insert_with<T: EventQueue + 'static>(
        &self,
        name: Arc<str>,
        make: impl FnOnce(Arc<str>) -> Arc<T>,
    ) -> Option<Arc<T>> {
        let mut map = self.routes.write().unwrap_or_else(|e| e.into_inner());
        if map.get(&name).is_some_and(|t| !t.is_closed()) {
            return None;
        }
        let owner = make(name.clone());
        map.insert(name, owner.clone());
        Some(owner)
    }

    /// Attaches the way to other processes' machines (once; false when one was attached).
    pub fn set_remote(&self, remote: Arc<dyn Remote>) -> bool {
        self.remote.set(remote).is_ok()
    }

    /// The way to other processes' machines, if one is attached.
    pub fn remote(&self) -> Option<&Arc<dyn Remote>> {
        self.remote.get()
    }

    /// Installs the way actions start instances (once; the engine does it when built).
    pub(crate) fn set_starter(&self, starter: Arc<dyn Starter>) {
        let _ = self.starter.set(starter);
    }

    /// The way to start instances (it fails once the engine that installed it is gone).
    pub fn starter(&self) -> Option<&Arc<dyn Starter>> {
        self.starter.get()
    }

    /// Removes `name` if its queue is `tx`'s (an instance retired; a newer machine of that
    /// name keeps its route).
    pub(crate) fn remove_if_same(&self, name: &str, tx: &Queue) {
        let mut map = self.routes.write().unwrap_or_else(|e| e.into_inner());
        if map.get(name).is_some_and(|t| same_queue(t, tx)) {
            map.remove(name);
        }
    }

    /// Reports that `machine` handled event `id` of the store (see [`Remote::handled`]).
    pub(crate) fn handled(&self, machine: &Arc<str>, id: i64) {
        if let Some(r) = self.remote.get() {
            r.handled(machine, id);
        }
    }

    /// Removes a machine.
    pub fn remove(&self, name: &str) {
        self.routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// The sender of a machine's queue.
    pub fn sender(&self, name: &str) -> Option<Queue> {
        self.routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Tries to deliver without waiting.
    pub fn try_deliver(&self, target: &str, ev: Event) -> Result<(), DeliverError> {
        let map = self.routes.read().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = map.get(target) else {
            return Err(DeliverError::Unknown(ev));
        };
        match tx.try_send(ev) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(ev)) => Err(DeliverError::Full(ev, tx.clone())),
            Err(TrySendError::Closed(_)) => Err(DeliverError::Closed),
        }
    }

    /// Delivers, waiting for room in the target's queue (backpressure).
    pub async fn deliver(&self, target: &str, ev: Event) -> Result<(), DeliverError> {
        match self.try_deliver(target, ev) {
            Err(DeliverError::Full(ev, tx)) => send_waiting(&*tx, ev)
                .await
                .map_err(|_| DeliverError::Closed),
            other => other,
        }
    }
}

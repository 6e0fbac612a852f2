//! Delivery of events to machines by name, in one process.

use std::sync::{Arc, RwLock};

use rustc_hash::FxHashMap;
use tokio::sync::mpsc;

use super::event::Event;

/// Why an event could not be delivered at once.
#[derive(Debug)]
pub enum DeliverError {
    /// The target's queue is full: the event and a sender to wait on are handed back, so
    /// the caller can wait (backpressure) instead of dropping it.
    Full(Event, mpsc::Sender<Event>),
    /// The target has stopped.
    Closed,
    /// No machine has that name.
    Unknown,
}

/// Machine name -> queue. Read on every cross-machine send; written when machines start.
#[derive(Default)]
pub struct Router {
    routes: RwLock<FxHashMap<Arc<str>, mpsc::Sender<Event>>>,
}

impl Router {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a machine; returns false when the name is taken by a running machine.
    pub fn insert(&self, name: Arc<str>, tx: mpsc::Sender<Event>) -> bool {
        let mut map = self.routes.write().unwrap_or_else(|e| e.into_inner());
        if map.get(&name).is_some_and(|t| !t.is_closed()) {
            return false;
        }
        map.insert(name, tx);
        true
    }

    /// Removes a machine.
    pub fn remove(&self, name: &str) {
        self.routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// The sender of a machine's queue.
    pub fn sender(&self, name: &str) -> Option<mpsc::Sender<Event>> {
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
            return Err(DeliverError::Unknown);
        };
        match tx.try_send(ev) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(ev)) => Err(DeliverError::Full(ev, tx.clone())),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(DeliverError::Closed),
        }
    }

    /// Delivers, waiting for room in the target's queue (backpressure).
    pub async fn deliver(&self, target: &str, ev: Event) -> Result<(), DeliverError> {
        match self.try_deliver(target, ev) {
            Err(DeliverError::Full(ev, tx)) => tx.send(ev).await.map_err(|_| DeliverError::Closed),
            other => other,
        }
    }
}

//! Noticing writes by other processes. SQLite tells no one when another connection
//! commits; `PRAGMA data_version` on this store's connection changes when one did (a read
//! of one in-memory value that touches no table). A thread reads it every
//! [`FOREIGN_CHANGES`] and wakes [`JobStore::notify`]'s waiters when it moved, so waiting
//! claimers stay backend-neutral: they wait on one notification, whoever wrote.
//!
//! The thread starts when someone first asks for the notification (a one-shot
//! `turnstile jobs add` never does) and ends with the store.

use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use super::rows::Cached;
use super::Inner;
#[cfg(doc)]
use crate::store::JobStore;
use crate::store::FOREIGN_CHANGES;

fn data_version(conn: &Mutex<Connection>) -> Option<i64> {
    conn.lock()
        .unwrap_or_else(|e| e.into_inner())
        .row_cached("PRAGMA data_version", [], |r| r.get(0))
        .ok()
}

/// Starts the watch over the store behind `inner`. The first reading is taken here,
/// before the caller waits: a write committed after this call always wakes it.
pub(super) fn start(inner: &Arc<Inner>) {
    let mut seen = data_version(&inner.conn);
    let inner = Arc::downgrade(inner);
    let spawned = std::thread::Builder::new()
        .name("turnstile-watch".into())
        .spawn(move || loop {
            std::thread::sleep(FOREIGN_CHANGES);
            let Some(inner) = inner.upgrade() else { return };
            let now = data_version(&inner.conn);
            if now.is_some() && now != seen {
                seen = now;
                inner.notify.notify_waiters();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(target: "turnstile::store", "cannot start the thread that notices other processes' writes ({e}): jobs they add wait for a local change");
    }
}

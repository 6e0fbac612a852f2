//! Noticing writes by other processes. SQLite tells no one when another connection
//! commits; `PRAGMA data_version` on this store's connection changes when one did (a read
//! of one in-memory value that touches no table). A thread reads it and wakes
//! [`JobStore::notify`]'s waiters when it moved, so waiting claimers stay
//! backend-neutral: they wait on one notification, whoever wrote.
//!
//! When to read it: every commit in WAL mode writes to the `-wal` file beside the
//! database, so the thread watches that folder (inotify through the `notify` crate) and
//! reads `data_version` as soon as the WAL or the database file changes: a job another
//! process adds wakes a waiting worker within milliseconds. The WAL is written before
//! the commit is visible (its fsync, then the shared-memory index, which changes through
//! `mmap` and makes no event), so after an event that shows no new commit yet the thread
//! reads again after [`FIRST_PAUSE`], then twice as long each time up to [`FOLLOW_UP`];
//! a further change event (another commit on its way) during a pause ends it and starts
//! the pauses over, so a commit is not left unseen for the rest of a long pause. It also
//! reads it every [`FOREIGN_CHANGES`] whatever the watch says (a file system without
//! change events, a watch that could not start), which bounds the wake-up time
//! everywhere. Bursts of
//! change events (this process's own commits make them too) are read at most once per
//! [`MIN_GAP`], so a busy writer does not make the thread compete for the connection.
//!
//! The pauses are short because a commit is usually visible well within a millisecond of
//! its event (an fsync of the WAL), and the time between the commit and the read is
//! latency added to every event another process sends (`event_latency` in
//! BENCHMARKS.md): with pauses of 1, 2, 4 ms and a gap of 2 ms, a send was noticed about
//! 2 ms after its commit.
//!
//! The thread starts when someone first asks for the notification (a one-shot
//! `turnstile jobs add` never does) and ends with the store.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use rusqlite::Connection;

use super::rows::Cached;
use super::Inner;
#[cfg(doc)]
use crate::store::JobStore;
use crate::store::FOREIGN_CHANGES;

/// The shortest time between two reads of `data_version` prompted by change events.
pub const MIN_GAP: Duration = Duration::from_micros(500);

/// The first pause after a change event that showed no new commit yet.
pub const FIRST_PAUSE: Duration = Duration::from_micros(250);

/// How long after a change event the thread keeps looking for the commit it announced.
pub const FOLLOW_UP: Duration = Duration::from_millis(64);

fn data_version(conn: &Mutex<Connection>) -> Option<i64> {
    conn.lock()
        .unwrap_or_else(|e| e.into_inner())
        .row_cached("PRAGMA data_version", [], |r| r.get(0))
        .ok()
}

/// The file names whose changes mean a commit: the database and its `-wal`.
fn watched_names(db: &Path) -> Vec<OsString> {
    let Some(name) = db.file_name() else {
        return Vec::new();
    };
    let mut wal = name.to_os_string();
    wal.push("-wal");
    vec![name.to_os_string(), wal]
}

/// Watches `db`'s folder; sends on `tx` when the database or its WAL changes. `None`
/// (and a debug log) when the watch cannot start: the periodic read remains.
fn watch_files(db: &Path, tx: mpsc::SyncSender<()>) -> Option<notify::RecommendedWatcher> {
    let dir: PathBuf = match db.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let names = watched_names(db);
    let handler = move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        if !matches!(
            ev.kind,
            notify::EventKind::Modify(_) | notify::EventKind::Create(_)
        ) {
            return;
        }
        let ours = ev.paths.iter().any(|p| {
            p.file_name()
                .is_some_and(|n| names.iter().any(|w| w.as_os_str() == n))
        });
        if ours {
            // Full: a read is already due; the event adds nothing.
            let _ = tx.try_send(());
        }
    };
    let started = notify::recommended_watcher(handler)
        .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w));
    match started {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::debug!(target: "turnstile::store", dir = %dir.display(), "cannot watch the database's folder ({e}): other processes' writes are noticed within {FOREIGN_CHANGES:?}");
            None
        }
    }
}

/// Starts the watch over the store behind `inner`. The first reading is taken here,
/// before the caller waits: a write committed after this call always wakes it.
pub(super) fn start(inner: &Arc<Inner>) {
    let mut seen = data_version(&inner.conn);
    let (tx, rx) = mpsc::sync_channel::<()>(1);
    let watcher = watch_files(&inner.path, tx);
    let inner = Arc::downgrade(inner);
    let spawned = std::thread::Builder::new()
        .name("turnstile-watch".into())
        .spawn(move || {
            // Lives as long as the thread: dropping it ends the watch.
            let _watcher = watcher;
            loop {
                let event = match rx.recv_timeout(FOREIGN_CHANGES) {
                    Ok(()) => true,
                    Err(RecvTimeoutError::Timeout) => false,
                    // No watch (it could not start): the periodic read alone.
                    Err(RecvTimeoutError::Disconnected) => {
                        std::thread::sleep(FOREIGN_CHANGES);
                        false
                    }
                };
                // After an event, look again with a growing pause until the commit shows,
                // and soon after a newer event.
                let mut pause = FIRST_PAUSE;
                loop {
                    let Some(inner) = inner.upgrade() else { return };
                    let now = data_version(&inner.conn);
                    if now.is_some() && now != seen {
                        seen = now;
                        inner.notify.notify_waiters();
                        break;
                    }
                    drop(inner);
                    if !event || pause > FOLLOW_UP {
                        break;
                    }
                    match rx.recv_timeout(pause) {
                        // Another commit on its way: look once it may show (at most one
                        // read per first pause while events keep coming).
                        Ok(()) => {
                            std::thread::sleep(FIRST_PAUSE);
                            pause = FIRST_PAUSE * 2;
                        }
                        Err(RecvTimeoutError::Timeout) => pause *= 2,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                std::thread::sleep(MIN_GAP);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(target: "turnstile::store", "cannot start the thread that notices other processes' writes ({e}): jobs they add wait for a local change");
    }
}

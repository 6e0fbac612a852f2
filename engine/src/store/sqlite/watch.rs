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
//! reads again after [`FIRST_PAUSE`], then twice as long each time up to [`FOLLOW_UP`].
//! It also reads it every [`FOREIGN_CHANGES`] whatever the watch says (a file system
//! without change events, a watch that could not start), which bounds the wake-up time
//! everywhere. Bursts of change events (this process's own commits make them too) are
//! read at most once per [`MIN_GAP`], so a busy writer does not make the thread compete
//! for the connection.
//!
//! The pauses are short because a commit is usually visible well within a millisecond of
//! its event (an fsync of the WAL), and the time between the commit and the read is
//! latency added to every event another process sends (`event_latency` in
//! BENCHMARKS.md): with pauses of 1, 2, 4 ms and a gap of 2 ms, a send was noticed about
//! 2 ms after its commit.
//!
//! On Linux the thread reads the inotify descriptor itself (`nix`), and only when it is
//! ready for the next reading: the change events of a burst of commits queue up (and
//! merge) in the kernel meanwhile, and a commit wakes no one. Through the `notify`
//! crate's own thread, which reads every event as it comes, four processes sharing a
//! file spent about a third of their CPU in that thread and a sixth in the writers'
//! `pwrite` waking it (the WAL is written one `pwrite` per page, each an event). Other
//! systems use the `notify` crate.
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

/// What the thread waits on for change events.
enum Changes {
    /// Linux: the inotify descriptor, read by the thread itself.
    #[cfg(target_os = "linux")]
    Inotify(linux::Files),
    /// Elsewhere: events sent by the `notify` crate's thread (kept alive here).
    #[cfg_attr(target_os = "linux", allow(dead_code))]
    Channel(mpsc::Receiver<()>, notify::RecommendedWatcher),
    /// No watch could start: the periodic read alone.
    None,
}

impl Changes {
    #[cfg(target_os = "linux")]
    fn start(db: &Path) -> Self {
        match linux::Files::start(db) {
            Ok(f) => Self::Inotify(f),
            Err(e) => {
                tracing::debug!(target: "turnstile::store", db = %db.display(), "cannot watch the database's folder ({e}): other processes' writes are noticed within {FOREIGN_CHANGES:?}");
                Self::None
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn start(db: &Path) -> Self {
        let (tx, rx) = mpsc::sync_channel::<()>(1);
        match watch_files(db, tx) {
            Some(w) => Self::Channel(rx, w),
            None => Self::None,
        }
    }

    /// Waits up to `timeout` for a change of the database or its WAL; true on one.
    fn wait(&self, timeout: Duration) -> bool {
        match self {
            #[cfg(target_os = "linux")]
            Self::Inotify(f) => f.wait(timeout),
            Self::Channel(rx, _) => match rx.recv_timeout(timeout) {
                Ok(()) => true,
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(timeout);
                    false
                }
            },
            Self::None => {
                std::thread::sleep(timeout);
                false
            }
        }
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::ffi::OsString;
    use std::os::fd::AsFd;
    use std::path::Path;
    use std::time::{Duration, Instant};

    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

    /// An inotify watch of the database's folder, read only in [`Files::wait`].
    pub(super) struct Files {
        fd: Inotify,
        names: Vec<OsString>,
    }

    impl Files {
        pub(super) fn start(db: &Path) -> nix::Result<Self> {
            let dir = match db.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            let fd = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
            fd.add_watch(
                dir,
                AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO,
            )?;
            Ok(Self {
                fd,
                names: super::watched_names(db),
            })
        }

        /// Events queued since the last call: true when one names a watched file.
        fn drain(&self) -> bool {
            let mut ours = false;
            // Non-blocking: an error is EAGAIN (nothing queued) or a read that failed,
            // after which the next poll tells again.
            while let Ok(events) = self.fd.read_events() {
                if events.is_empty() {
                    break;
                }
                ours |= events
                    .iter()
                    .any(|e| e.name.as_ref().is_some_and(|n| self.names.contains(n)));
            }
            ours
        }

        pub(super) fn wait(&self, timeout: Duration) -> bool {
            let until = Instant::now() + timeout;
            loop {
                if self.drain() {
                    return true;
                }
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return false;
                }
                let ms = PollTimeout::try_from(left.as_millis().max(1)).unwrap_or(PollTimeout::MAX);
                let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
                if poll(&mut fds, ms).is_err() {
                    // Interrupted or failing: wait out the time as without a watch.
                    std::thread::sleep(left.min(Duration::from_millis(10)));
                }
            }
        }
    }
}

/// Watches `db`'s folder; sends on `tx` when the database or its WAL changes. `None`
/// (and a debug log) when the watch cannot start: the periodic read remains.
#[cfg_attr(target_os = "linux", allow(dead_code))]
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
    let changes = Changes::start(&inner.path);
    let inner = Arc::downgrade(inner);
    let spawned = std::thread::Builder::new()
        .name("turnstile-watch".into())
        // `changes` lives as long as the thread: dropping it ends the watch.
        .spawn(move || {
            loop {
                let event = changes.wait(FOREIGN_CHANGES);
                // After an event, look again with a growing pause until the commit shows.
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
                    std::thread::sleep(pause);
                    pause *= 2;
                }
                std::thread::sleep(MIN_GAP);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(target: "turnstile::store", "cannot start the thread that notices other processes' writes ({e}): jobs they add wait for a local change");
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::io::Write as _;
    use std::time::{Duration, Instant};

    use super::linux::Files;

    fn append(path: &std::path::Path) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(b"x").unwrap();
    }

    /// The inotify watch read by the thread itself: a write to the WAL (or the database)
    /// ends a wait at once; a write to another file of the folder does not, and the wait
    /// lasts its time.
    #[test]
    fn a_write_to_the_wal_ends_a_wait_and_other_files_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.db");
        let files = Files::start(&db).unwrap();
        append(&dir.path().join("other.txt"));
        let t0 = Instant::now();
        assert!(
            !files.wait(Duration::from_millis(200)),
            "another file woke it"
        );
        assert!(t0.elapsed() >= Duration::from_millis(200));
        for name in ["q.db-wal", "q.db"] {
            let writer = {
                let path = dir.path().join(name);
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(50));
                    append(&path);
                })
            };
            let t0 = Instant::now();
            assert!(
                files.wait(Duration::from_secs(10)),
                "{name}: no change seen"
            );
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "{name}: {:?}",
                t0.elapsed()
            );
            writer.join().unwrap();
        }
        // Changes that came while nobody waited are seen by the next wait.
        append(&dir.path().join("q.db-wal"));
        assert!(files.wait(Duration::from_millis(1)));
    }
}

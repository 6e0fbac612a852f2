//! The SQLite store: one file shared by every process that uses it (Turnstile workers,
//! the CLI, statemachine-engine's own tools).
//!
//! - WAL journal, `synchronous=FULL` by default ([`crate::store::SyncMode`]), a busy
//!   timeout; one connection per store object, behind a mutex, written by one writer
//!   thread (one writer per process; SQLite serialises writers across processes), and a
//!   second one, opened when first needed, for the event consumers' reads (a take does
//!   not wait for the writer's commit).
//! - Every write runs in a `BEGIN IMMEDIATE` transaction, shared with the process's other
//!   waiting writes (group commit, [`group_commit`]), so a claim (reap expired leases,
//!   pick one job, lease it) cannot interleave with another process's claim. Claims are
//!   answered once run, before their commit; every other write after it.
//! - The schema ([`schema`]) keeps every column of statemachine-engine's tables and adds
//!   Turnstile's own.
//! - A thread renews, every third of the lease time, the leases of the jobs this store
//!   object claimed and that are still held: by a machine that runs, or by a caller of the
//!   store API until it completes, fails or releases them ([`JobStore::set_holder`]). It
//!   ends with the store.
//! - Writes by other processes are noticed by a thread that reads `PRAGMA data_version`
//!   ([`watch`]), started when someone first waits on [`JobStore::notify`].
//!
//! Files: [`jobs`] (the queue), [`admin`] (operators' retries, cancels and purges), [`state`] (machine state, events, audit), [`instances`]
//! (live instances), [`leases`] (singleton machines' leases), [`rows`] (rows to records), [`file`] (the file is still the one
//! opened).

mod admin;
mod events;
mod file;
mod group_commit;
mod instances;
mod jobs;
mod leases;
mod rows;
pub mod schema;
mod state;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, Once, OnceLock};
use std::time::Duration;

use rusqlite::{params, Connection};

use crate::store::holds::{spawn_renewal, Holds};
use crate::store::instances::Registration;
use crate::store::leases::Fences;
use crate::store::prefetch::Prefetch;
#[cfg(doc)]
use crate::store::JobStore;
use crate::store::{now_ms, ClaimLoss, Store, StoreError, StoreOptions};
use file::{check_file, file_id, FileId};
use group_commit::{Ack, GroupCommit, Hooks};
use rows::Cached;
use schema::connect;

/// How long a store may go without a committed write before a readiness check writes to
/// find out whether it still can.
const IDLE_PROBE: Duration = Duration::from_secs(5);

struct Inner {
    conn: Arc<Mutex<Connection>>,
    group: GroupCommit,
    opts: StoreOptions,
    owner: String,
    notify: Arc<tokio::sync::Notify>,
    path: PathBuf,
    /// The file it opened (device, inode).
    file: FileId,
    /// Jobs this store object claimed and has not completed, failed or released, with the
    /// machine that holds each (`None`: whoever called the store). Only these leases are
    /// renewed, and a machine's only while it runs.
    holds: Holds,
    /// Jobs claimed ahead for this process's machines (`claim_batch` above 1).
    prefetch: Prefetch,
    /// The instance registered through this store object, heartbeaten by the lease
    /// renewal thread.
    registration: Registration,
    /// The epochs state writes of singleton machines carry ([`crate::store::leases`]).
    fences: Fences,
    /// Dropping it stops the lease renewal thread.
    stop_renewal: OnceLock<mpsc::Sender<()>>,
    /// Starts the foreign-write watch ([`watch`]) once.
    watching: Once,
    /// A connection of its own for the event consumers' reads, opened at the first
    /// ([`SqliteStore::event_reads`]); `None` when it could not open.
    event_reader: OnceLock<Option<Mutex<Connection>>>,
}

/// A SQLite job and state store. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .field("owner", &self.inner.owner)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating when needed) the database file with default options.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, StoreOptions::default())
    }

    /// Opens (creating when needed) the database file.
    pub fn open_with(path: &Path, opts: StoreOptions) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Db(format!("cannot create {}: {e}", dir.display())))?;
        }
        let conn = connect(path, &opts, true)?;
        let file = file_id(path)
            .map_err(|e| StoreError::Db(format!("cannot read {}: {e}", path.display())))?;
        let renew = opts.renew;
        let conn = Arc::new(Mutex::new(conn));
        let notify = Arc::new(tokio::sync::Notify::new());
        let hooks = {
            let (p1, p2, o) = (path.to_owned(), path.to_owned(), opts.clone());
            let n = notify.clone();
            let default_max = i64::from(opts.max_attempts);
            Hooks {
                count_lost: Box::new(move |tx, lost| jobs::count_lost(tx, lost, default_max)),
                check_file: Box::new(move || check_file(&p1, file)),
                reopen: Box::new(move || connect(&p2, &o, false)),
                recovered: Box::new(move || n.notify_waiters()),
            }
        };
        let store = SqliteStore {
            inner: Arc::new(Inner {
                group: GroupCommit::start(conn.clone(), hooks)?,
                conn,
                owner: opts.owner.clone().unwrap_or_else(crate::store::owner_id),
                notify,
                path: path.to_owned(),
                file,
                holds: Holds::default(),
                prefetch: Prefetch::new(opts.claim_batch, opts.lease),
                registration: Registration::default(),
                fences: Fences::default(),
                stop_renewal: OnceLock::new(),
                watching: Once::new(),
                event_reader: OnceLock::new(),
                opts,
            }),
        };
        if renew {
            let stop = spawn_renewal(
                Arc::downgrade(&store.inner),
                store.inner.opts.lease,
                |inner| {
                    let store = SqliteStore { inner };
                    store.inner.registration.beat(&store);
                    store.renew_held()
                },
            )?;
            let _ = store.inner.stop_renewal.set(stop);
        }
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The options it was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.inner.opts
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.inner.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection for the event consumers' reads (taking events, finding a machine's
    /// hosts): one of its own, so that a take never waits for this store's writer, whose
    /// commit (its fsync) or wait for another process's write lock holds the store's
    /// connection; that connection when the second one cannot open.
    fn event_reads(&self) -> MutexGuard<'_, Connection> {
        let reader = self.inner.event_reader.get_or_init(|| {
            match schema::connect_reader(&self.inner.path, &self.inner.opts) {
                Ok(c) => Some(Mutex::new(c)),
                Err(e) => {
                    tracing::debug!(target: "turnstile::store", "cannot open a connection for event reads ({e}): they share the store's");
                    None
                }
            }
        });
        match reader {
            Some(r) => r.lock().unwrap_or_else(|e| e.into_inner()),
            None => self.conn(),
        }
    }

    /// Runs `f` in a committed write transaction shared with this process's other waiting
    /// writes (see [`super::group_commit`]).
    fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.group.write(Ack::Committed, f)
    }

    /// [`Self::write`] for completions and failures. With batched claims on
    /// ([`StoreOptions::claim_batch`] above 1) and while writes commit, answered once `f`
    /// has run in the open transaction, before the commit: the caller knows whether the
    /// job was completed (or failed), and a commit that then fails leaves the job
    /// processing until its lease expires and it runs again (at-least-once). Else after
    /// the commit.
    fn finish_write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let early =
            self.inner.prefetch.on() && self.inner.group.shared().health().failing.is_none();
        let ack = if early { Ack::Executed } else { Ack::Committed };
        self.inner.group.write(ack, f)
    }

    /// [`Self::write`] for claims: returns once `f` has run in the open transaction,
    /// before the commit (a claim lost with an uncommitted transaction leaves its job
    /// pending; see [`Ack::Executed`]). Answered early, it comes with the signal fired if
    /// its commit fails.
    fn claim_write<T, F>(
        &self,
        f: F,
        job_of: impl Fn(&T) -> Option<String> + Send + 'static,
    ) -> Result<(T, Option<ClaimLoss>), StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.group.claim(f, job_of)
    }

    /// Whether the store can write now, for readiness: the file is the one opened, the
    /// last write that changed something committed, and, when none committed for a while
    /// (or the last one failed), a small write commits now.
    fn check_writes(&self) -> Result<(), StoreError> {
        check_file(&self.inner.path, self.inner.file).map_err(StoreError::Db)?;
        let (failing, idle) = {
            let h = self.inner.group.shared().health();
            (
                h.failing.clone(),
                h.last_commit.is_none_or(|t| t.elapsed() >= IDLE_PROBE),
            )
        };
        if failing.is_some() || idle {
            let probe = self.write(|tx| {
                tx.exec_cached(
                    "INSERT OR REPLACE INTO turnstile_health (id, checked_at, pad)
                     VALUES (1, ?1, zeroblob(8192))",
                    [now_ms()],
                )?;
                Ok(())
            });
            if let Err(e) = probe {
                return Err(StoreError::Db(format!("cannot write: {e}")));
            }
        }
        Ok(())
    }

    /// Extends the leases of the jobs held in this process (see [`Holds`]): a job a
    /// machine holds only while that machine runs; prefetched jobs no machine took within
    /// the prefetch hold go back to the queue instead (see [`crate::store::prefetch`]).
    /// Returns how many were extended.
    pub fn renew_held(&self) -> Result<usize, StoreError> {
        // Completions answered before a write that failed: written again.
        self.inner
            .holds
            .write_again(|id, result| self.queue_behind(id, result));
        for id in self.inner.prefetch.take_stale() {
            if let Err(e) = crate::store::JobStore::release_job(self, &id, &self.inner.owner) {
                tracing::warn!(target: "turnstile::store", job = %id, "could not give back a prefetched job no machine took ({e}): trying again at the next renewal");
                self.inner.prefetch.give_back_later(id, &self.inner.holds);
            }
        }
        let ids = self.inner.holds.renewable();
        if ids.is_empty() {
            return Ok(0);
        }
        let owner = self.inner.owner.clone();
        let lease_ms = self.lease_ms();
        let started = std::time::Instant::now();
        let asked = ids.clone();
        let renewed: std::collections::HashSet<String> = self.write(move |tx| {
            let until = now_ms() + lease_ms;
            let mut renewed = std::collections::HashSet::new();
            for id in ids {
                if tx.exec_cached(
                    "UPDATE jobs SET lease_until = ?3
                     WHERE job_id = ?1 AND status = 'processing' AND lease_owner = ?2",
                    params![id, owner, until],
                )? > 0
                {
                    renewed.insert(id);
                }
            }
            Ok(renewed)
        })?;
        self.inner
            .prefetch
            .renewed(started, &asked, &renewed, &self.inner.holds);
        Ok(renewed.len())
    }

    fn lease_ms(&self) -> i64 {
        self.inner.opts.lease_ms()
    }

    /// Starts the thread that notices other processes' writes, once.
    fn watch_foreign_writes(&self) {
        self.inner.watching.call_once(|| watch::start(&self.inner));
    }
}

impl Store for SqliteStore {
    fn describe(&self) -> String {
        format!("sqlite://{}", self.inner.path.display())
    }

    fn write_counts(&self) -> (u64, u64) {
        self.inner.group.counts()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::{JobStore, ListJobs, NewJob, SyncMode};

    #[test]
    fn the_sync_mode_is_the_connection_s() {
        let dir = tempfile::tempdir().unwrap();
        for (mode, want) in [(SyncMode::Full, 2), (SyncMode::Normal, 1)] {
            let store = SqliteStore::open_with(
                &dir.path().join("q.db"),
                StoreOptions {
                    sync: mode,
                    renew: false,
                    ..StoreOptions::default()
                },
            )
            .unwrap();
            let got: i64 = store
                .conn()
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap();
            assert_eq!(got, want, "{mode:?}");
        }
        assert_eq!(StoreOptions::default().sync, SyncMode::Full);
    }

    #[test]
    fn concurrent_writers_share_commits_and_keep_their_own_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("q.db")).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let s = store.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let job = NewJob {
                            job_id: Some(format!("t{t}-{i}")),
                            job_type: "task".into(),
                            ..NewJob::default()
                        };
                        s.add_job(job).unwrap();
                        // A duplicate fails alone; the batch it shares still commits.
                        let dup = NewJob {
                            job_id: Some(format!("t{t}-{i}")),
                            job_type: "task".into(),
                            ..NewJob::default()
                        };
                        assert!(matches!(s.add_job(dup), Err(StoreError::Invalid(_))));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let all = store
            .list_jobs(&ListJobs {
                limit: None,
                ..ListJobs::default()
            })
            .unwrap();
        assert_eq!(all.len(), 1600);
        let (ops, batches) = store.inner.group.counts();
        assert_eq!(ops, 3200);
        assert!(
            batches < ops,
            "no two writes shared a commit ({ops} in {batches})"
        );
    }
}

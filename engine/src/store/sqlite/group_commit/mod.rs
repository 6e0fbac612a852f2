//! Group commit: write operations of one process that arrive while another batch is
//! committing share the next transaction, so N machines writing at once pay one commit
//! (and, with `synchronous=FULL`, one fsync) instead of N.
//!
//! One writer thread per store owns the writing: a caller queues its operation and waits
//! for the result. The thread takes everything queued (up to [`MAX_BATCH`]), runs every
//! operation inside one `BEGIN IMMEDIATE` transaction, each in its own savepoint (an
//! operation that fails is rolled back alone), commits, and hands out the results. A
//! writer alone runs its operation at once, as a plain transaction would.
//!
//! When a caller hears back ([`Ack`]):
//! - [`Ack::Committed`] (adds, completions, failures, releases, lease renewals): after
//!   the commit, so a caller never acts on a write that is not committed (and, with
//!   `synchronous=FULL`, on disk), and any connection, in any process, reads it.
//! - [`Ack::Executed`] (claims): as soon as the operation has run inside the open
//!   transaction, before its commit. The caller starts on the job while the commit (its
//!   fsync) goes on, and its next write lands in the next batch instead of missing it.
//!   No one else can take the job in between: the transaction holds SQLite's write lock
//!   until it commits.
//!
//! When the commit fails, every [`Ack::Committed`] operation of the batch gets the error,
//! and each claim answered early is *lost*: its job is pending again, but its caller has
//! started on it. The writer then
//! - notes the attempt (in memory, [`Lost::pending`]) and writes it in front of the next
//!   transaction, again until one commits, so that a job whose claims keep being lost is
//!   dead-lettered like one whose runs keep failing;
//! - remembers the job ([`Lost::refused`]) so that the store refuses the completion the
//!   caller will try;
//! - fires the claim's [`ClaimLoss`], which the claimer got with its answer, so that it can
//!   stop what it started on the job (a machine cancels the action waiting on it). A claim
//!   whose commit succeeds drops the writer's copy: that signal never fires;
//! - records the failure ([`Health`]): while writes fail, claims are answered after their
//!   commit (a claim that does not commit starts nothing), claimers back off
//!   ([`Health::backoff`]), and the store reports itself not ready. The next transaction
//!   that writes something and commits clears it.
//!
//! Before a batch the writer also checks that the database file is still the one it
//! opened (one `stat`) and replaces a read-only connection by a fresh
//! one once the file is writable again (see [`Hooks`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, sync_channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::Connection;

use crate::store::{ClaimLoss, StoreError};

mod health;
mod op;
mod writer;

pub(crate) use health::Shared;
use op::{JobOf, Op, Reply, WriteOp};
use writer::Writer;

/// When a write's caller gets its result (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ack {
    /// After the transaction is committed.
    Committed,
    /// Once the operation has run in the open transaction, before the commit.
    Executed,
}

/// Writes lost claims' attempts (job id, how many) in the open transaction.
pub(crate) type CountLost = dyn Fn(&Connection, &[(String, u32)]) -> Result<(), StoreError> + Send;

/// What the writer needs from the store it writes for.
pub(crate) struct Hooks {
    /// Writes lost claims' attempts (job id, how many) in the open transaction.
    pub(crate) count_lost: Box<CountLost>,
    /// `Err(why)` when the database file is no longer the one the store opened.
    pub(crate) check_file: Box<dyn Fn() -> Result<(), String> + Send>,
    /// A fresh connection to the same file (to replace one that cannot write).
    pub(crate) reopen: Box<dyn Fn() -> Result<Connection, StoreError> + Send>,
    /// Called when writes commit again after failing (wakes claimers backing off).
    pub(crate) recovered: Box<dyn Fn() + Send>,
}

#[derive(Default)]
struct Counts {
    ops: AtomicU64,
    batches: AtomicU64,
}

/// The writer thread of one store and the queue to it.
pub(crate) struct GroupCommit {
    queue: Option<Sender<Box<dyn WriteOp>>>,
    counts: Arc<Counts>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl GroupCommit {
    /// Starts the writer thread on `conn` (which readers lock too).
    pub(crate) fn start(conn: Arc<Mutex<Connection>>, hooks: Hooks) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel();
        let counts = Arc::new(Counts::default());
        let shared = Arc::new(Shared::default());
        let (c, sh) = (counts.clone(), shared.clone());
        let thread = std::thread::Builder::new()
            .name("turnstile-sqlite-writer".into())
            .spawn(move || {
                Writer {
                    conn: &conn,
                    queue: &rx,
                    counts: &c,
                    shared: &sh,
                    hooks: &hooks,
                    reopened: None,
                }
                .run();
            })
            .map_err(|e| StoreError::Db(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            queue: Some(tx),
            counts,
            shared,
            thread: Some(thread),
        })
    }

    /// (operations, transactions) so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.counts.ops.load(Ordering::Relaxed),
            self.counts.batches.load(Ordering::Relaxed),
        )
    }

    /// The health and lost claims the writer keeps.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Runs `f` in a write transaction shared with whatever other writes of this process
    /// are waiting; returns when `ack` says.
    pub(crate) fn write<T, F>(&self, ack: Ack, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(ack, f, None, None)
    }

    /// A claim: answered once run ([`Ack::Executed`]) while writes commit, after its
    /// commit while they fail. `job_of` names the job a result took. Answered early, it
    /// comes with the signal fired if its commit fails (`None`: answered after its commit).
    pub(crate) fn claim<T, F>(
        &self,
        f: F,
        job_of: impl Fn(&T) -> Option<String> + Send + 'static,
    ) -> Result<(T, Option<ClaimLoss>), StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let loss = if self.shared.health().failing.is_some() {
            None
        } else {
            Some(ClaimLoss::new())
        };
        let ack = if loss.is_some() {
            Ack::Executed
        } else {
            Ack::Committed
        };
        let t = self.submit(ack, f, Some(Box::new(job_of)), loss.clone())?;
        Ok((t, loss))
    }

    fn submit<T, F>(
        &self,
        ack: Ack,
        f: F,
        job_of: Option<JobOf<T>>,
        loss: Option<ClaimLoss>,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = sync_channel(1);
        let reply: Reply<T> = Box::new(move |r| {
            // The caller may have given up (it cannot: it blocks until this arrives).
            let _ = tx.send(r);
        });
        self.queue_op(ack, f, job_of, loss, reply)?;
        rx.recv().unwrap_or_else(|_| Err(gone()))
    }

    /// Queues `f` to run in the next transaction without waiting for it: `done` gets its
    /// result on the writer thread, after the commit (or the error that undid it).
    pub(crate) fn write_behind<T, F>(
        &self,
        f: F,
        done: impl FnOnce(Result<T, StoreError>) + Send + 'static,
    ) -> Result<(), StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.queue_op(Ack::Committed, f, None, None, Box::new(done))
    }

    fn queue_op<T, F>(
        &self,
        ack: Ack,
        f: F,
        job_of: Option<JobOf<T>>,
        loss: Option<ClaimLoss>,
        reply: Reply<T>,
    ) -> Result<(), StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let op = Box::new(Op {
            f: Some(f),
            ack,
            job_of,
            loss,
            result: None,
            reply,
        });
        self.queue
            .as_ref()
            .ok_or_else(gone)?
            .send(op)
            .map_err(|_| gone())
    }
}

fn gone() -> StoreError {
    StoreError::Db("the store's writer thread is gone".into())
}

impl Drop for GroupCommit {
    /// Lets the writer finish what is queued (every caller gets its answer and every
    /// claim is committed) before the connection closes.
    fn drop(&mut self) {
        self.queue = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::channel;
    use std::time::{Duration, Instant};

    use super::*;

    fn open(path: &std::path::Path) -> Connection {
        let c = Connection::open(path).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.pragma_update(None, "foreign_keys", "ON").unwrap();
        c.execute_batch(
            "CREATE TABLE IF NOT EXISTS parent (id INTEGER PRIMARY KEY);
             CREATE TABLE IF NOT EXISTS t (v TEXT,
                 p INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);",
        )
        .unwrap();
        c
    }

    fn no_hooks() -> Hooks {
        Hooks {
            count_lost: Box::new(|_, _| Ok(())),
            check_file: Box::new(|| Ok(())),
            reopen: Box::new(|| Err(StoreError::Db("no reopening in this test".into()))),
            recovered: Box::new(|| {}),
        }
    }

    /// A fresh database in a temporary directory and a writer on it.
    fn started() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        Arc<Mutex<Connection>>,
        Arc<GroupCommit>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        let conn = Arc::new(Mutex::new(open(&path)));
        let group = Arc::new(GroupCommit::start(conn.clone(), no_hooks()).unwrap());
        (dir, path, conn, group)
    }

    /// Inserts a row `v` in its own committed write.
    fn insert(group: &GroupCommit, v: &'static str) {
        group
            .write(Ack::Committed, move |c| {
                c.execute("INSERT INTO t (v) VALUES (?1)", [v])?;
                Ok(())
            })
            .unwrap();
    }

    fn count(path: &std::path::Path, v: &str) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM t WHERE v = ?1", [v], |r| r.get(0))
            .unwrap()
    }

    /// Queues `ops` (each `(ack, value, sleep in its run, parent)`) while the connection is
    /// held, so they share one batch in this order; returns when each caller got its
    /// answer, and the answers.
    fn one_batch(
        group: &Arc<GroupCommit>,
        conn: &Arc<Mutex<Connection>>,
        ops: &[(Ack, &'static str, u64, Option<i64>)],
    ) -> Vec<(Instant, Result<(), StoreError>)> {
        let held = conn.lock().unwrap();
        let (tx, rx) = channel();
        for (i, &(ack, v, sleep, parent)) in ops.iter().enumerate() {
            let (g, tx) = (group.clone(), tx.clone());
            std::thread::spawn(move || {
                let r = g.write(ack, move |c| {
                    std::thread::sleep(Duration::from_millis(sleep));
                    c.execute(
                        "INSERT INTO t (v, p) VALUES (?1, ?2)",
                        rusqlite::params![v, parent],
                    )?;
                    Ok(())
                });
                tx.send((i, Instant::now(), r)).unwrap();
            });
            // Queued in order: the writer takes them in the order they were sent.
            std::thread::sleep(Duration::from_millis(30));
        }
        drop(held);
        let mut out: Vec<_> = (0..ops.len()).map(|_| rx.recv().unwrap()).collect();
        out.sort_by_key(|(i, _, _)| *i);
        out.into_iter().map(|(_, t, r)| (t, r)).collect()
    }

    #[test]
    fn an_executed_write_is_answered_before_its_batch_commits() {
        let (_dir, path, conn, group) = started();
        let got = one_batch(
            &group,
            &conn,
            &[
                (Ack::Executed, "claim", 0, None),
                (Ack::Committed, "slow add", 1000, None),
            ],
        );
        assert!(got.iter().all(|(_, r)| r.is_ok()), "{got:?}");
        // The claim's caller heard back while the add was still running, before the commit.
        assert!(
            got[1].0.duration_since(got[0].0) >= Duration::from_millis(500),
            "the executed write waited for the commit"
        );
        // Committed together: both visible to another connection now.
        assert_eq!(count(&path, "claim"), 1);
        assert_eq!(count(&path, "slow add"), 1);
        assert_eq!(group.counts(), (2, 1));
    }

    #[test]
    fn a_failed_commit_fails_the_committed_writes_and_undoes_the_executed_ones() {
        let (_dir, path, conn, group) = started();
        // The second write breaks a deferred foreign key: the COMMIT fails.
        let got = one_batch(
            &group,
            &conn,
            &[
                (Ack::Executed, "claim", 0, None),
                (Ack::Committed, "orphan", 0, Some(42)),
                (Ack::Committed, "add", 0, None),
            ],
        );
        assert!(got[0].1.is_ok(), "answered before the commit: {got:?}");
        for (_, r) in &got[1..] {
            let e = r.as_ref().unwrap_err().to_string();
            assert!(e.contains("FOREIGN KEY"), "{e}");
        }
        for v in ["claim", "orphan", "add"] {
            assert_eq!(count(&path, v), 0, "{v} was kept");
        }
        // The writer goes on.
        insert(&group, "after");
        assert_eq!(count(&path, "after"), 1);
    }

    #[test]
    fn a_lost_claim_fires_its_signal_and_a_committed_one_never_does() {
        let (_dir, _path, conn, group) = started();
        let held = conn.lock().unwrap();
        let g = group.clone();
        let claim = std::thread::spawn(move || {
            g.claim(
                |c| {
                    c.execute("INSERT INTO t (v) VALUES ('claim')", [])?;
                    Ok(())
                },
                |()| Some("J".to_owned()),
            )
        });
        std::thread::sleep(Duration::from_millis(30));
        // In the same batch, a write that breaks a deferred foreign key: COMMIT fails.
        let g = group.clone();
        let orphan = std::thread::spawn(move || {
            g.write(Ack::Committed, |c| {
                c.execute("INSERT INTO t (v, p) VALUES ('orphan', 42)", [])?;
                Ok(())
            })
        });
        std::thread::sleep(Duration::from_millis(30));
        drop(held);
        let ((), loss) = claim.join().unwrap().unwrap();
        let loss = loss.expect("an early claim comes with its signal");
        assert!(orphan.join().unwrap().is_err());
        let why = wait_fired(&loss);
        assert!(why.contains("FOREIGN KEY"), "{why}");
        // The refusal is recorded before the signal fires.
        assert!(group.shared().lost().refused.contains_key("J"));
        // A claim that commits: its signal never fires.
        let ((), loss) = group.claim(|_| Ok(()), |()| Some("K".to_owned())).unwrap();
        let loss = loss.unwrap();
        insert(&group, "after");
        assert_eq!(loss.why(), None);
    }

    /// Waits (up to 10 s) for `loss` to fire; returns why.
    fn wait_fired(loss: &ClaimLoss) -> String {
        let t0 = Instant::now();
        loop {
            if let Some(why) = loss.why() {
                return why.to_owned();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the signal did not fire"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_failing_or_panicking_write_fails_alone() {
        let (_dir, path, _conn, group) = started();
        let group = Arc::into_inner(group).unwrap();
        let r: Result<(), _> = group.write(Ack::Committed, |_| panic!("deliberate"));
        assert!(r.unwrap_err().to_string().contains("panicked"));
        let r: Result<(), _> = group.write(Ack::Executed, |c| {
            c.execute("INSERT INTO nowhere VALUES (1)", [])?;
            Ok(())
        });
        assert!(r.unwrap_err().to_string().contains("nowhere"));
        insert(&group, "ok");
        // Dropping the group waits for the writer: everything is committed.
        drop(group);
        assert_eq!(count(&path, "ok"), 1);
    }
}

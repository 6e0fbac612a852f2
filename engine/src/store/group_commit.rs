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
//!   Losing such a claim (the process dies before the commit, or the commit fails) only
//!   leaves the job pending, to be claimed again: jobs stay at-least-once and none is
//!   lost. No one else can take the job in between: the transaction holds SQLite's
//!   write lock until it commits.
//!
//! When the commit fails, every [`Ack::Committed`] operation of the batch gets the error.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::Connection;

use super::StoreError;

/// Most operations one transaction carries.
const MAX_BATCH: usize = 256;

/// When a write's caller gets its result (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ack {
    /// After the transaction is committed.
    Committed,
    /// Once the operation has run in the open transaction, before the commit.
    Executed,
}

/// One queued write.
trait WriteOp: Send {
    /// Runs the operation; false when it failed (its savepoint is rolled back).
    fn run(&mut self, conn: &Connection) -> bool;
    /// When its caller hears back.
    fn ack(&self) -> Ack;
    /// Delivers the result, or `failed` when the transaction did not commit.
    fn finish(self: Box<Self>, failed: Option<&str>);
}

struct Op<T, F> {
    f: Option<F>,
    ack: Ack,
    result: Option<Result<T, StoreError>>,
    reply: SyncSender<Result<T, StoreError>>,
}

impl<T, F> WriteOp for Op<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let r = match self.f.take() {
            // A panicking operation fails alone instead of taking the writer thread down.
            Some(f) => std::panic::catch_unwind(AssertUnwindSafe(|| f(conn)))
                .unwrap_or_else(|_| Err(StoreError::Db("a write operation panicked".into()))),
            None => Err(StoreError::Db("a write operation ran twice".into())),
        };
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn ack(&self) -> Ack {
        self.ack
    }

    fn finish(self: Box<Self>, failed: Option<&str>) {
        let r = match (failed, self.result) {
            // An operation that failed on its own keeps its own error.
            (_, Some(Err(e))) => Err(e),
            (Some(why), _) => Err(StoreError::Db(why.to_owned())),
            (None, Some(ok)) => ok,
            (None, None) => Err(StoreError::Db("a write operation did not run".into())),
        };
        // The caller may have given up (it cannot: it blocks until this arrives).
        let _ = self.reply.send(r);
    }
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
    thread: Option<JoinHandle<()>>,
}

impl GroupCommit {
    /// Starts the writer thread on `conn` (which readers lock too).
    pub(crate) fn start(conn: Arc<Mutex<Connection>>) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel();
        let counts = Arc::new(Counts::default());
        let c = counts.clone();
        let thread = std::thread::Builder::new()
            .name("turnstile-sqlite-writer".into())
            .spawn(move || writer(&conn, &rx, &c))
            .map_err(|e| StoreError::Db(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            queue: Some(tx),
            counts,
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

    /// Runs `f` in a write transaction shared with whatever other writes of this process
    /// are waiting; returns when `ack` says.
    pub(crate) fn write<T, F>(&self, ack: Ack, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = sync_channel(1);
        let op = Box::new(Op {
            f: Some(f),
            ack,
            result: None,
            reply: tx,
        });
        let gone = || StoreError::Db("the store's writer thread is gone".into());
        self.queue
            .as_ref()
            .ok_or_else(gone)?
            .send(op)
            .map_err(|_| gone())?;
        rx.recv().unwrap_or_else(|_| Err(gone()))
    }
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

/// The writer thread: one transaction per batch of whatever is queued.
fn writer(conn: &Mutex<Connection>, queue: &Receiver<Box<dyn WriteOp>>, counts: &Counts) {
    let more = |batch: &mut Vec<Box<dyn WriteOp>>| {
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
    };
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        more(&mut batch);
        let guard = conn.lock().unwrap_or_else(|e| e.into_inner());
        // Writes that arrived while a reader held the connection join too.
        more(&mut batch);
        counts.ops.fetch_add(batch.len() as u64, Ordering::Relaxed);
        counts.batches.fetch_add(1, Ordering::Relaxed);
        run_batch(&guard, batch);
    }
}

fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Gives every operation of `batch` the transaction's failure; says how many executed
/// writes were acknowledged before it and are now undone.
fn fail_all(batch: Vec<Box<dyn WriteOp>>, e: &rusqlite::Error, early: usize) {
    let why = e.to_string();
    for op in batch {
        op.finish(Some(&why));
    }
    if early > 0 {
        tracing::warn!(
            target: "turnstile::store",
            "a transaction failed ({why}): {early} claim(s) acknowledged before its commit are undone; those jobs are pending again"
        );
    }
}

/// One transaction for `batch`; every operation gets its result.
fn run_batch(conn: &Connection, batch: Vec<Box<dyn WriteOp>>) {
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        return fail_all(batch, &e, 0);
    }
    // A batch of one needs no savepoint: the transaction is the operation's.
    let alone = batch.len() == 1;
    let mut failed_alone = false;
    // Operations whose callers wait for the commit.
    let mut after_commit = Vec::with_capacity(batch.len());
    let mut early = 0;
    let mut ops = batch.into_iter();
    while let Some(mut op) = ops.next() {
        let ok = if alone {
            failed_alone = !op.run(conn);
            !failed_alone
        } else {
            let ran = exec(conn, "SAVEPOINT op").and_then(|()| {
                if op.run(conn) {
                    exec(conn, "RELEASE op").map(|()| true)
                } else {
                    exec(conn, "ROLLBACK TO op")
                        .and_then(|()| exec(conn, "RELEASE op"))
                        .map(|()| false)
                }
            });
            match ran {
                Ok(ok) => ok,
                Err(e) => {
                    let _ = exec(conn, "ROLLBACK");
                    after_commit.push(op);
                    after_commit.extend(ops);
                    return fail_all(after_commit, &e, early);
                }
            }
        };
        // A failed operation's answer (its own error) does not depend on the commit.
        if !ok || op.ack() == Ack::Executed {
            early += usize::from(ok);
            op.finish(None);
        } else {
            after_commit.push(op);
        }
    }
    // One operation alone that failed: nothing of it may be kept.
    let end = exec(conn, if failed_alone { "ROLLBACK" } else { "COMMIT" });
    match end {
        Ok(()) => {
            for op in after_commit {
                op.finish(None);
            }
        }
        Err(e) => {
            let _ = exec(conn, "ROLLBACK");
            fail_all(after_commit, &e, early);
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
        let group = Arc::new(GroupCommit::start(conn.clone()).unwrap());
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

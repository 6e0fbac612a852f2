//! Group commit: write operations of one process that arrive while another is committing
//! share the next transaction, so N machines writing at once pay one commit (and, with
//! `synchronous=FULL`, one fsync) instead of N.
//!
//! Leader/follower, no extra thread: a writer queues its operation, then takes the
//! connection. If the previous holder already ran and committed its operation, it has its
//! result and returns. Otherwise it becomes the leader: it drains the queue (its own
//! operation is there), runs every operation inside one `BEGIN IMMEDIATE` transaction,
//! each in its own savepoint (an operation that fails is rolled back alone), commits, and
//! hands every writer its result, all before it lets the connection go. A writer alone
//! runs its operation at once, as a plain transaction would.
//!
//! A result is handed out only after the commit succeeded: a caller never acts on a write
//! that is not committed (and, with `synchronous=FULL`, on disk). When the commit fails, every operation of the batch gets the
//! error.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;

use super::StoreError;

/// Most operations one transaction carries.
const MAX_BATCH: usize = 256;

/// One queued write.
trait WriteOp: Send {
    /// Runs the operation; false when it failed (the leader rolls its savepoint back).
    fn run(&mut self, conn: &Connection) -> bool;
    /// Delivers the result, or `failed` when the transaction did not commit.
    fn finish(self: Box<Self>, failed: Option<&str>);
}

struct Op<T, F> {
    f: Option<F>,
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
            Some(f) => f(conn),
            None => Err(StoreError::Db("a write operation ran twice".into())),
        };
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn finish(self: Box<Self>, failed: Option<&str>) {
        let r = match (failed, self.result) {
            // An operation that failed on its own keeps its own error.
            (_, Some(Err(e))) => Err(e),
            (Some(why), _) => Err(StoreError::Db(why.to_owned())),
            (None, Some(ok)) => ok,
            (None, None) => Err(StoreError::Db("a write operation did not run".into())),
        };
        // The writer is blocked on the other end until it gets this.
        let _ = self.reply.send(r);
    }
}

/// The queue of writes waiting for the connection.
#[derive(Default)]
pub(crate) struct GroupCommit {
    queue: Mutex<Vec<Box<dyn WriteOp>>>,
    /// Operations run and transactions they took, for tests and benchmarks.
    ops: AtomicU64,
    batches: AtomicU64,
}

impl GroupCommit {
    /// (operations, transactions) so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.ops.load(Ordering::Relaxed),
            self.batches.load(Ordering::Relaxed),
        )
    }

    fn take(&self, max: usize) -> Vec<Box<dyn WriteOp>> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() <= max {
            std::mem::take(&mut *q)
        } else {
            q.drain(..max).collect()
        }
    }

    /// Runs `f` in a committed write transaction, sharing it with whatever other writes
    /// of this process are waiting. `conn` takes the connection's lock.
    pub(crate) fn write<'a, T, F>(
        &self,
        conn: impl FnOnce() -> MutexGuard<'a, Connection>,
        f: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = sync_channel(1);
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(Op {
                f: Some(f),
                result: None,
                reply: tx,
            }));
        let guard = conn();
        // A leader that held the connection before us may have run ours already; results
        // are handed out before the connection is let go, so it is there now if so.
        if let Ok(r) = rx.try_recv() {
            return r;
        }
        // Ours is still queued: lead batches until it has run.
        loop {
            let batch = self.take(MAX_BATCH);
            if batch.is_empty() {
                break;
            }
            self.ops.fetch_add(batch.len() as u64, Ordering::Relaxed);
            self.batches.fetch_add(1, Ordering::Relaxed);
            run_batch(&guard, batch);
            if let Ok(r) = rx.try_recv() {
                return r;
            }
        }
        drop(guard);
        rx.recv()
            .unwrap_or_else(|_| Err(StoreError::Db("a write operation was lost".into())))
    }
}

fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Gives every operation of `batch` the transaction's failure.
fn fail_all(batch: Vec<Box<dyn WriteOp>>, e: &rusqlite::Error) {
    let why = e.to_string();
    for op in batch {
        op.finish(Some(&why));
    }
}

/// One transaction for `batch`; every operation gets its result.
fn run_batch(conn: &Connection, mut batch: Vec<Box<dyn WriteOp>>) {
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        return fail_all(batch, &e);
    }
    // A batch of one needs no savepoint: the transaction is the operation's.
    let alone = batch.len() == 1;
    let mut failed_alone = false;
    for op in &mut batch {
        if alone {
            failed_alone = !op.run(conn);
            continue;
        }
        let ran = exec(conn, "SAVEPOINT op").and_then(|()| {
            if op.run(conn) {
                exec(conn, "RELEASE op")
            } else {
                exec(conn, "ROLLBACK TO op").and_then(|()| exec(conn, "RELEASE op"))
            }
        });
        if let Err(e) = ran {
            let _ = exec(conn, "ROLLBACK");
            return fail_all(batch, &e);
        }
    }
    // One operation alone that failed: nothing of it may be kept.
    let end = exec(conn, if failed_alone { "ROLLBACK" } else { "COMMIT" });
    match end {
        Ok(()) => {
            for op in batch {
                op.finish(None);
            }
        }
        Err(e) => {
            let _ = exec(conn, "ROLLBACK");
            fail_all(batch, &e);
        }
    }
}

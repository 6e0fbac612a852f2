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

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::store::{ClaimLoss, StoreError};

/// Most operations one transaction carries.
const MAX_BATCH: usize = 256;

/// How often (at most) the writer tries to replace a connection that cannot write.
const REOPEN_EVERY: Duration = Duration::from_millis(250);

/// First and longest claim backoff while writes fail.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Most jobs remembered as lost (their completion refused); older ones are forgotten.
const MAX_REFUSED: usize = 10_000;

/// When a write's caller gets its result (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ack {
    /// After the transaction is committed.
    Committed,
    /// Once the operation has run in the open transaction, before the commit.
    Executed,
}

/// True for SQLite errors that say the database cannot be written now (space, I/O,
/// permissions, a vanished or damaged file), as opposed to an operation's own failure
/// (a constraint, a bad value, a busy lock). SQLite's messages for these codes.
pub(crate) fn storage_failure(msg: &str) -> bool {
    const MARKS: &[&str] = &[
        "database or disk is full",
        "disk I/O error",
        "readonly database",
        "unable to open database file",
        "database disk image is malformed",
        "file is not a database",
        "was deleted",
        "was replaced",
        "is read-only",
    ];
    MARKS.iter().any(|m| msg.contains(m))
}

/// Whether the store's writes commit (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// Why writes fail, since the last transaction that wrote something and committed.
    pub(crate) failing: Option<String>,
    /// Transactions failed in a row.
    pub(crate) failures: u32,
    /// When the last one failed.
    pub(crate) last_failure: Option<Instant>,
    /// When a transaction that wrote something last committed.
    pub(crate) last_commit: Option<Instant>,
}

impl Health {
    /// How long a claimer should wait before its next claim: `None` while writes commit,
    /// else 100 ms after the first failure, doubled per failure, at most 2 s, counted from
    /// the last failure.
    pub(crate) fn backoff(&self) -> Option<Duration> {
        self.failing.as_ref()?;
        let exp = self.failures.saturating_sub(1).min(16);
        let full = BACKOFF_FIRST.saturating_mul(1 << exp).min(BACKOFF_MAX);
        let since = self.last_failure.map_or(Duration::ZERO, |t| t.elapsed());
        Some(full.saturating_sub(since).max(Duration::from_millis(10)))
    }

    fn failed(&mut self, why: &str) {
        if self.failing.is_none() {
            tracing::warn!(target: "turnstile::store", "the job store cannot write: {why}; claims wait for their commit and back off, the store reports not ready until a write commits");
        }
        self.failing = Some(why.to_owned());
        self.failures = self.failures.saturating_add(1);
        self.last_failure = Some(Instant::now());
    }

    /// True when writes failed until now.
    fn committed(&mut self) -> bool {
        let was = self.failing.take();
        if let Some(why) = &was {
            tracing::warn!(target: "turnstile::store", "the job store writes again (it failed {} time(s): {why})", self.failures);
        }
        self.failures = 0;
        self.last_commit = Some(Instant::now());
        was.is_some()
    }
}

/// Claims answered early whose transaction did not commit (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct Lost {
    /// Attempts not yet written, by job id.
    pub(crate) pending: HashMap<String, u32>,
    /// Jobs whose claim was lost, with why: this process may not complete them.
    pub(crate) refused: HashMap<String, String>,
}

impl Lost {
    /// Takes back the refusal of `job_id`: the reason, if it was refused.
    pub(crate) fn take_refusal(&mut self, job_id: &str) -> Option<String> {
        self.refused.remove(job_id)
    }
}

/// State the writer shares with the store.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    health: Mutex<Health>,
    lost: Mutex<Lost>,
}

impl Shared {
    pub(crate) fn health(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn lost(&self) -> MutexGuard<'_, Lost> {
        self.lost.lock().unwrap_or_else(|e| e.into_inner())
    }
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

/// One queued write.
trait WriteOp: Send {
    /// Runs the operation; false when it failed (its savepoint is rolled back).
    fn run(&mut self, conn: &Connection) -> bool;
    /// When its caller hears back.
    fn ack(&self) -> Ack;
    /// The job an executed claim took and its loss signal (fired if the commit fails).
    fn claimed(&self) -> Option<(String, ClaimLoss)>;
    /// Its own error, when it failed.
    fn error(&self) -> Option<String>;
    /// Delivers the result, or `failed` when the transaction did not commit.
    fn finish(self: Box<Self>, failed: Option<&str>);
}

/// Says which job a claim's result took.
type JobOf<T> = Box<dyn Fn(&T) -> Option<String> + Send>;

struct Op<T, F> {
    f: Option<F>,
    ack: Ack,
    job_of: Option<JobOf<T>>,
    /// A claim answered early: fired if its commit fails.
    loss: Option<ClaimLoss>,
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

    fn claimed(&self) -> Option<(String, ClaimLoss)> {
        match (&self.job_of, &self.result, &self.loss) {
            (Some(f), Some(Ok(t)), Some(loss)) => f(t).map(|j| (j, loss.clone())),
            _ => None,
        }
    }

    fn error(&self) -> Option<String> {
        match &self.result {
            Some(Err(e)) => Some(e.to_string()),
            _ => None,
        }
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
        let op = Box::new(Op {
            f: Some(f),
            ack,
            job_of,
            loss,
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

/// How one transaction ended.
#[derive(Default)]
struct BatchEnd {
    /// The transaction failed (not committed), and why.
    failed: Option<String>,
    /// An operation failed because the database cannot be written.
    storage: Option<String>,
    /// It committed and changed rows.
    wrote: bool,
    /// Jobs claimed and answered before the commit, with their loss signals.
    early: Vec<(String, ClaimLoss)>,
    /// Lost attempts written in it.
    counted: Vec<(String, u32)>,
}

struct Writer<'a> {
    conn: &'a Mutex<Connection>,
    queue: &'a Receiver<Box<dyn WriteOp>>,
    counts: &'a Counts,
    shared: &'a Shared,
    hooks: &'a Hooks,
    reopened: Option<Instant>,
}

impl Writer<'_> {
    /// One transaction per batch of whatever is queued.
    fn run(&mut self) {
        let more = |batch: &mut Vec<Box<dyn WriteOp>>| {
            while batch.len() < MAX_BATCH {
                match self.queue.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
        };
        while let Ok(first) = self.queue.recv() {
            let mut batch = vec![first];
            more(&mut batch);
            let mut guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
            // Writes that arrived while a reader held the connection join too.
            more(&mut batch);
            self.counts
                .ops
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            self.counts.batches.fetch_add(1, Ordering::Relaxed);
            if let Err(why) = self.ready(&mut guard) {
                for op in batch {
                    op.finish(Some(&why));
                }
                self.shared.health().failed(&why);
                continue;
            }
            let lost: Vec<(String, u32)> = {
                let l = self.shared.lost();
                l.pending.iter().map(|(k, v)| (k.clone(), *v)).collect()
            };
            let end = run_batch(&guard, batch, &lost, self.hooks);
            drop(guard);
            self.ended(end);
        }
    }

    /// Checks, before a batch, that the file is the one opened and the connection can
    /// write (replacing a read-only one); `Err(why)` fails the batch.
    fn ready(&mut self, conn: &mut Connection) -> Result<(), String> {
        // One `stat` per transaction: a write to a deleted file would be acknowledged
        // and lost.
        (self.hooks.check_file)()?;
        let read_only = conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false);
        // A full disk is not mended by a new connection; a read-only file or an I/O
        // error (a file system remounted read-only) may be.
        let broken = read_only
            || self
                .shared
                .health()
                .failing
                .as_deref()
                .is_some_and(|why| !why.contains("full"));
        if broken && self.reopened.is_none_or(|t| t.elapsed() >= REOPEN_EVERY) {
            self.reopened = Some(Instant::now());
            match (self.hooks.reopen)() {
                Ok(fresh) if !fresh.is_readonly(rusqlite::MAIN_DB).unwrap_or(true) => {
                    tracing::info!(target: "turnstile::store", "the database connection was opened again");
                    *conn = fresh;
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(target: "turnstile::store", "opening the database again failed: {e}")
                }
            }
        }
        if read_only {
            return Err(
                "the database file is read-only: attempt to write a readonly database".into(),
            );
        }
        Ok(())
    }

    /// Records how a transaction ended: health, lost claims.
    fn ended(&self, end: BatchEnd) {
        if let Some(why) = &end.failed {
            if !end.early.is_empty() {
                let mut lost = self.shared.lost();
                if lost.refused.len() + end.early.len() > MAX_REFUSED {
                    lost.refused.clear();
                }
                for (j, _) in &end.early {
                    *lost.pending.entry(j.clone()).or_default() += 1;
                    lost.refused.insert(j.clone(), why.clone());
                }
                drop(lost);
                // After the refusals: whoever reacts to the signal finds the job refused.
                for (_, loss) in &end.early {
                    loss.lose(why);
                }
                tracing::warn!(
                    target: "turnstile::store",
                    "a transaction failed ({why}): {} claim(s) acknowledged before its commit are undone; those jobs are pending again, what their claimers started is cancelled, their completions here are refused and their attempts counted once a write commits",
                    end.early.len()
                );
            }
            if storage_failure(why) {
                self.shared.health().failed(why);
            }
            return;
        }
        if !end.counted.is_empty() {
            let mut lost = self.shared.lost();
            for (j, n) in &end.counted {
                if let Some(left) = lost.pending.get_mut(j) {
                    *left = left.saturating_sub(*n);
                    if *left == 0 {
                        lost.pending.remove(j);
                    }
                }
            }
        }
        if let Some(why) = &end.storage {
            self.shared.health().failed(why);
        } else if end.wrote && self.shared.health().committed() {
            (self.hooks.recovered)();
        }
    }
}

fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Gives every operation of `batch` the transaction's failure.
fn fail_all(batch: Vec<Box<dyn WriteOp>>, e: &str, mut end: BatchEnd) -> BatchEnd {
    for op in batch {
        op.finish(Some(e));
    }
    end.failed = Some(e.to_owned());
    end.counted.clear();
    end
}

/// One transaction for `batch`, after writing the `lost` claims' attempts; every
/// operation gets its result.
fn run_batch(
    conn: &Connection,
    batch: Vec<Box<dyn WriteOp>>,
    lost: &[(String, u32)],
    hooks: &Hooks,
) -> BatchEnd {
    let mut end = BatchEnd::default();
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        return fail_all(batch, &e.to_string(), end);
    }
    let before = conn.total_changes();
    if !lost.is_empty() {
        let counted =
            exec(conn, "SAVEPOINT lost").and_then(|()| match (hooks.count_lost)(conn, lost) {
                Ok(()) => exec(conn, "RELEASE lost").map(|()| true),
                Err(e) => {
                    tracing::debug!(target: "turnstile::store", "counting lost claims failed: {e}");
                    exec(conn, "ROLLBACK TO lost")
                        .and_then(|()| exec(conn, "RELEASE lost"))
                        .map(|()| false)
                }
            });
        match counted {
            Ok(true) => end.counted = lost.to_vec(),
            Ok(false) => {}
            Err(e) => {
                let _ = exec(conn, "ROLLBACK");
                return fail_all(batch, &e.to_string(), end);
            }
        }
    }
    // A batch of one needs no savepoint: the transaction is the operation's.
    let alone = batch.len() == 1 && end.counted.is_empty();
    let mut failed_alone = false;
    // Operations whose callers wait for the commit.
    let mut after_commit = Vec::with_capacity(batch.len());
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
                    return fail_all(after_commit, &e.to_string(), end);
                }
            }
        };
        if !ok {
            if let Some(e) = op.error().filter(|e| storage_failure(e)) {
                end.storage = Some(e);
            }
        }
        // A failed operation's answer (its own error) does not depend on the commit.
        if !ok || op.ack() == Ack::Executed {
            if ok {
                end.early.extend(op.claimed());
            }
            op.finish(None);
        } else {
            after_commit.push(op);
        }
    }
    let wrote = conn.total_changes() != before;
    // One operation alone that failed: nothing of it may be kept.
    match exec(conn, if failed_alone { "ROLLBACK" } else { "COMMIT" }) {
        Ok(()) => {
            for op in after_commit {
                op.finish(None);
            }
            end.wrote = wrote && !failed_alone;
            if failed_alone {
                end.counted.clear();
            }
            end
        }
        Err(e) => {
            let _ = exec(conn, "ROLLBACK");
            fail_all(after_commit, &e.to_string(), end)
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

//! The writer thread's loop: take what is queued, run it in one transaction (each
//! operation in its own savepoint), commit, answer; and what happens when the commit
//! fails (see the module documentation of [`super`]).

use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::health::{storage_failure, Shared};
use super::op::WriteOp;
use super::{Ack, Counts, Hooks};
use crate::store::ClaimLoss;

/// Most operations one transaction carries.
const MAX_BATCH: usize = 256;

/// How often (at most) the writer tries to replace a connection that cannot write.
const REOPEN_EVERY: Duration = Duration::from_millis(250);

/// Most jobs remembered as lost (their completion refused); older ones are forgotten.
const MAX_REFUSED: usize = 10_000;

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

pub(super) struct Writer<'a> {
    pub(super) conn: &'a Mutex<Connection>,
    pub(super) queue: &'a Receiver<Box<dyn WriteOp>>,
    pub(super) counts: &'a Counts,
    pub(super) shared: &'a Shared,
    pub(super) hooks: &'a Hooks,
    pub(super) reopened: Option<Instant>,
}

impl Writer<'_> {
    /// One transaction per batch of whatever is queued.
    pub(super) fn run(&mut self) {
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

//! Group-committed completions on PostgreSQL: `complete_job` calls of one store object
//! that arrive while a batch is committing share the next statement, one `UPDATE` of the
//! jobs listed in `UNNEST(...)` (one commit, one WAL flush) for all of them instead of
//! one each.
//!
//! A task on the store's runtime takes everything queued (up to [`MAX_BATCH`] jobs, each
//! job once per statement: a second completion of the same job waits for the next one),
//! runs the statement on the durable pool and answers every caller after its commit:
//! `true` when its job was pending or processing and is now completed, `false` when not,
//! or the statement's error for all of them (none completed). One batch is in flight at
//! a time; the next forms while it commits. A completion queued by
//! [`crate::store::JobStore::complete_held`] has no caller waiting: its answer is logged
//! when it is not `true` ([`crate::store::behind_completed`]). A [`Msg::Flush`] is
//! answered once every completion queued before it has run (a process giving its jobs
//! back at exit waits for it).
//!
//! Other processes learn of completions (their `wait_for_jobs`) by `NOTIFY`, sent by a
//! batch's statement at most every [`NOTIFY_EVERY`]: completions that commit sooner after
//! the last one are told by the next batch's statement or, when none comes within that
//! time, by a `NOTIFY` of its own then. A notification wakes the listening connection of
//! every process (and the server's backend behind it); one per completion was the largest
//! cost of a completion after the statement itself.

use std::collections::HashSet;
use std::time::Duration;

use deadpool_postgres::Pool;
use serde_json::Value as Json;
use tokio::sync::{mpsc, oneshot};

use super::error::{pg_error, pool_error};
use crate::store::StoreError;

/// The most completions one statement carries.
const MAX_BATCH: usize = 1000;

/// The longest a completion waits to be told to other processes, and the shortest time
/// between two notifications of a process's completions.
pub(super) const NOTIFY_EVERY: Duration = Duration::from_millis(50);

/// Tells other processes that jobs were completed.
const NOTIFY: &str = "SELECT pg_notify('turnstile_jobs', 'completed')";

/// Completes every listed job that is pending or processing; `$1` job ids, `$2` results
/// (NULL: keep the stored one), `$3` whether to notify (once, when a job was completed).
///
/// Each job is found by its id alone, one look-up of the unique index per job (the
/// lateral subquery, locked and checked for its status there), and updated by primary
/// key. A join of the ids with `jobs` on `job_id` and `status IN (...)` was planned, with
/// the statistics of a queue that had few unfinished jobs, as a scan of every pending and
/// processing job (the `jobs_status` index) per statement: 2 ms a completion with 1,000
/// jobs queued, growing with the queue.
const COMPLETE: &str = "
    WITH u AS (SELECT * FROM UNNEST($1::text[], $2::jsonb[]) AS u(job_id, result)),
    t AS MATERIALIZED (
        SELECT x.id, u.result FROM u CROSS JOIN LATERAL (
            SELECT id FROM jobs
             WHERE jobs.job_id = u.job_id AND status IN ('pending', 'processing')
             FOR UPDATE) x),
    r AS (
        UPDATE jobs j SET status = 'completed', completed_at = clock_timestamp(),
            lease_owner = NULL, lease_until = NULL, result = COALESCE(t.result, j.result)
          FROM t WHERE j.id = t.id
        RETURNING j.job_id)
    SELECT r.job_id, (SELECT pg_notify('turnstile_jobs', 'completed') WHERE $3) FROM r";

/// Receives a completion's answer.
pub(super) type Reply = Box<dyn FnOnce(Result<bool, StoreError>) + Send>;

/// One completion waiting for its batch.
pub(super) struct Req {
    pub(super) job_id: String,
    pub(super) result: Option<Json>,
    pub(super) reply: Reply,
}

/// What the batcher is sent.
pub(super) enum Msg {
    /// A completion.
    Complete(Req),
    /// Answered once every completion queued before it has run.
    Flush(oneshot::Sender<()>),
}

/// Where completions are queued.
pub(super) type Queue = mpsc::UnboundedSender<Msg>;

/// Starts the batcher on `handle`; it ends when the queue's senders are gone.
pub(super) fn start(handle: &tokio::runtime::Handle, pool: Pool) -> Queue {
    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
    handle.spawn(async move {
        let mut queued: Vec<Req> = Vec::new();
        // Flushes answered once `queued` is empty.
        let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
        // When other processes were last told, and whether completions committed since.
        let mut told: Option<tokio::time::Instant> = None;
        let mut owed = false;
        loop {
            if queued.is_empty() {
                let next = match (owed, told) {
                    (true, Some(t)) => {
                        tokio::select! {
                            r = rx.recv() => r,
                            () = tokio::time::sleep_until(t + NOTIFY_EVERY) => {
                                if tell(&pool).await {
                                    (told, owed) = (Some(tokio::time::Instant::now()), false);
                                } else {
                                    told = Some(tokio::time::Instant::now());
                                }
                                continue;
                            }
                        }
                    }
                    _ => rx.recv().await,
                };
                match next {
                    Some(Msg::Complete(r)) => queued.push(r),
                    Some(Msg::Flush(f)) => {
                        let _ = f.send(());
                        continue;
                    }
                    None => {
                        if owed {
                            tell(&pool).await;
                        }
                        return;
                    }
                }
            }
            while queued.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Msg::Complete(r)) => queued.push(r),
                    Ok(Msg::Flush(f)) => flushes.push(f),
                    Err(_) => break,
                }
            }
            let mut seen = HashSet::new();
            let (round, later): (Vec<Req>, Vec<Req>) = queued
                .drain(..)
                .partition(|r| seen.insert(r.job_id.clone()));
            queued = later;
            let notify = told.is_none_or(|t| t.elapsed() >= NOTIFY_EVERY);
            if run(&pool, round, notify).await {
                if notify {
                    (told, owed) = (Some(tokio::time::Instant::now()), false);
                } else {
                    owed = true;
                }
            }
            if queued.is_empty() {
                for f in flushes.drain(..) {
                    let _ = f.send(());
                }
            }
        }
    });
    tx
}

/// Sends the notification of completions on its own; false when it failed (it is tried
/// again after [`NOTIFY_EVERY`]).
async fn tell(pool: &Pool) -> bool {
    let out = async {
        let c = pool.get().await.map_err(pool_error)?;
        let st = c.prepare_cached(NOTIFY).await.map_err(pg_error)?;
        c.execute(&st, &[]).await.map_err(pg_error)
    }
    .await;
    if let Err(e) = &out {
        tracing::debug!(target: "turnstile::store", "cannot tell other processes of completions ({e}): trying again");
    }
    out.is_ok()
}

/// Runs one batch and answers its callers; true when a job was completed.
async fn run(pool: &Pool, mut round: Vec<Req>, notify: bool) -> bool {
    // In id order: concurrent batches of several processes lock their rows in one order.
    round.sort_by(|a, b| a.job_id.cmp(&b.job_id));
    let ids: Vec<&str> = round.iter().map(|r| r.job_id.as_str()).collect();
    let results: Vec<Option<&Json>> = round.iter().map(|r| r.result.as_ref()).collect();
    let out: Result<HashSet<String>, StoreError> = async {
        let c = pool.get().await.map_err(pool_error)?;
        let st = c.prepare_cached(COMPLETE).await.map_err(pg_error)?;
        let rows = c
            .query(&st, &[&ids, &results, &notify])
            .await
            .map_err(pg_error)?;
        rows.iter()
            .map(|r| r.try_get::<_, String>(0))
            .collect::<Result<_, _>>()
            .map_err(pg_error)
    }
    .await;
    let completed = out.as_ref().is_ok_and(|done| !done.is_empty());
    for r in round {
        let answer = match &out {
            Ok(done) => Ok(done.contains(&r.job_id)),
            Err(e) => Err(copy(e)),
        };
        (r.reply)(answer);
    }
    completed
}

/// The same error for another caller of the batch.
fn copy(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(s) => StoreError::Unavailable(s.clone()),
        StoreError::Config(s) => StoreError::Config(s.clone()),
        StoreError::Invalid(s) => StoreError::Invalid(s.clone()),
        StoreError::Db(s) => StoreError::Db(s.clone()),
        other => StoreError::Db(other.to_string()),
    }
}

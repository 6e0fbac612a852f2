//! One queued write: the caller's closure, when its caller hears back, and what receives
//! the result (the waiting caller's channel, or, for a write nobody waits for, a callback
//! run by the writer). Type-erased ([`WriteOp`]) so that one queue carries writes of any
//! result type.

use std::panic::AssertUnwindSafe;

use rusqlite::Connection;

use super::Ack;
use crate::store::{ClaimLoss, StoreError};

/// One queued write.
pub(super) trait WriteOp: Send {
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
pub(super) type JobOf<T> = Box<dyn Fn(&T) -> Option<String> + Send>;

/// Receives an operation's result (on the writer thread).
pub(super) type Reply<T> = Box<dyn FnOnce(Result<T, StoreError>) + Send>;

pub(super) struct Op<T, F> {
    pub(super) f: Option<F>,
    pub(super) ack: Ack,
    pub(super) job_of: Option<JobOf<T>>,
    /// A claim answered early: fired if its commit fails.
    pub(super) loss: Option<ClaimLoss>,
    pub(super) result: Option<Result<T, StoreError>>,
    pub(super) reply: Reply<T>,
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
        (self.reply)(r);
    }
}

//! The signal that a claim answered before it was durable did not become durable. A file
//! of its own, depending on nothing else in the crate: actions hand it to the machine, and
//! the store's other modules depend on the runtime's types.

use std::sync::{Arc, OnceLock};

/// Says that a claim answered before it was durable did not become durable: its commit
/// failed, the job is pending again, and whatever the claimer started on it should stop.
///
/// A backend that answers a claim early ([`JobStore::claim_next_watched`](super::JobStore::claim_next_watched),
/// [`JobStore::claim_job_watched`](super::JobStore::claim_job_watched)) hands one out with the claim; it fires it (once, with
/// the reason) when the claim's commit fails, and drops its own copy when the commit
/// succeeds, after which the signal never fires. Clones share one signal.
#[derive(Clone, Default)]
pub struct ClaimLoss(Arc<LossInner>);

#[derive(Default)]
struct LossInner {
    token: tokio_util::sync::CancellationToken,
    why: OnceLock<String>,
}

impl ClaimLoss {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the signal with `why` (a second call changes nothing).
    pub fn lose(&self, why: &str) {
        let _ = self.0.why.set(why.to_owned());
        self.0.token.cancel();
    }

    /// Why the claim was lost, once it was.
    pub fn why(&self) -> Option<&str> {
        if self.0.token.is_cancelled() {
            self.0.why.get().map(String::as_str)
        } else {
            None
        }
    }

    /// Waits until the claim is lost (forever when its commit succeeded); returns why.
    pub async fn lost(&self) -> &str {
        self.0.token.cancelled().await;
        self.0.why.get().map_or("its commit failed", String::as_str)
    }
}

impl std::fmt::Debug for ClaimLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimLoss")
            .field("lost", &self.why())
            .finish()
    }
}

impl PartialEq for ClaimLoss {
    /// The same signal.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ClaimLoss {}

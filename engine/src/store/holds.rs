//! The jobs a store object claimed and has not finished, with the machine that holds
//! each, and the thread that renews their leases. Any backend keeps these the same way:
//! a lease is renewed only while its job is held, and a machine's jobs only while the
//! machine runs, so a stopped machine's job returns to the queue when its lease expires.

use std::collections::HashMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use serde_json::Value as Json;

use super::{Holder, StoreError};

/// Jobs claimed through one store object, by id, with their holder (`None`: whoever
/// called the store, until it completes, fails or releases the job).
#[derive(Debug, Default)]
pub(crate) struct Holds {
    held: Mutex<HashMap<String, Option<Holder>>>,
    /// Completions answered before their write ([`super::JobStore::complete_held`]) whose
    /// write failed, with their results: held again (renewed) and written again at the
    /// next renewal.
    unwritten: Mutex<Vec<(String, Option<Json>)>>,
}

impl Holds {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Option<Holder>>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A completion answered before its write could not be written: the job is held
    /// again, and its completion kept for [`Self::write_again`].
    pub(crate) fn unwritten(&self, job_id: String, result: Option<Json>) {
        self.claimed(&job_id);
        self.unwritten
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((job_id, result));
    }

    /// Hands each completion whose write failed to `queue` again, its hold taken (the
    /// backend's `queue_behind`, which holds the job again if it cannot queue it).
    pub(crate) fn write_again(&self, mut queue: impl FnMut(String, Option<Json>) -> bool) {
        let unwritten =
            std::mem::take(&mut *self.unwritten.lock().unwrap_or_else(|e| e.into_inner()));
        for (id, result) in unwritten {
            self.release(&id);
            queue(id, result);
        }
    }

    /// A job was claimed.
    pub(crate) fn claimed(&self, job_id: &str) {
        self.map().insert(job_id.to_owned(), None);
    }

    /// Says which machine holds a claimed job.
    pub(crate) fn set_holder(&self, job_id: &str, holder: Holder) {
        if let Some(h) = self.map().get_mut(job_id) {
            *h = Some(holder);
        }
    }

    /// The job is finished or given back: no more renewal.
    pub(crate) fn release(&self, job_id: &str) {
        self.map().remove(job_id);
    }

    /// [`Self::release`]; true when the job was held.
    pub(crate) fn take(&self, job_id: &str) -> bool {
        self.map().remove(job_id).is_some()
    }

    /// The job `machine` took with `check_database_queue` and still holds.
    pub(crate) fn queue_job_of(&self, machine: &str) -> Option<String> {
        self.map()
            .iter()
            .find(|(_, h)| {
                h.as_ref()
                    .is_some_and(|h| h.from_queue && *h.machine == *machine)
            })
            .map(|(id, _)| id.clone())
    }

    /// Every held job.
    pub(crate) fn all(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }

    /// The jobs whose leases to renew now; the jobs of machines that stopped are dropped
    /// (their leases then expire and the jobs return to the queue).
    pub(crate) fn renewable(&self) -> Vec<String> {
        let mut holds = self.map();
        holds.retain(|job, h| match h {
            Some(h) if !(h.alive)() => {
                tracing::warn!(
                    target: "turnstile::store",
                    job = %job,
                    machine = %h.machine,
                    "the machine holding this job stopped: its lease is no longer renewed, the job returns to the queue when it expires"
                );
                false
            }
            _ => true,
        });
        holds.keys().cloned().collect()
    }
}

/// Starts a thread that calls `renew` every third of `lease` (at least every 50 ms) while
/// `target` lives; dropping the returned sender stops it.
pub(crate) fn spawn_renewal<T: Send + Sync + 'static>(
    target: Weak<T>,
    lease: Duration,
    renew: impl Fn(Arc<T>) -> Result<usize, StoreError> + Send + 'static,
) -> Result<mpsc::Sender<()>, StoreError> {
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let every = (lease / 3).max(Duration::from_millis(50));
    std::thread::Builder::new()
        .name("turnstile-lease".into())
        .spawn(move || loop {
            match stop_rx.recv_timeout(every) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            let Some(target) = target.upgrade() else {
                return;
            };
            if let Err(e) = renew(target) {
                tracing::warn!(target: "turnstile::store", "lease renewal failed: {e}");
            }
        })
        .map_err(|e| StoreError::Db(format!("cannot start the lease thread: {e}")))?;
    Ok(stop_tx)
}

//! Wake-ups from other processes: a connection of the store's own runs
//! `LISTEN turnstile_jobs` and wakes the waiters a notification concerns, by its payload
//! ([`Wakes::wake`]): a completion (`completed`) wakes those waiting for finished jobs
//! ([`crate::store::JobStore::finish_notify`]), an event sent to a machine (`event:NAME`)
//! the event consumers ([`crate::store::EventStore::event_notify`]), anything else (a job
//! added, given back or failed, a lease given up) [`crate::store::JobStore::notify`]'s
//! waiters. Waking every waiter on every notification made each completion wake every
//! claimer and every event consumer of every process: each consumer renewed its consumer
//! lease (a durable write) and looked for events, once per completion.
//!
//! When the connection breaks (a server restart) it reconnects with a backoff, and wakes
//! every waiter once it listens again: a job added while nobody listened is then found by
//! the claim they retry.

use std::sync::Weak;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};

/// The store's waiters, by what they wait for.
#[derive(Clone)]
pub(super) struct Wakes {
    /// Claimers and everything else ([`crate::store::JobStore::notify`]).
    pub(super) jobs: Weak<Notify>,
    /// Waiters for finished jobs.
    pub(super) finished: Weak<Notify>,
    /// Event consumers.
    pub(super) events: Weak<Notify>,
}

impl Wakes {
    /// Wakes the waiters a notification with `payload` concerns; false when the store is
    /// gone.
    fn wake(&self, payload: &str) -> bool {
        let which = if payload == "completed" {
            &self.finished
        } else if payload.starts_with("event:") {
            &self.events
        } else {
            &self.jobs
        };
        match which.upgrade() {
            Some(n) => {
                n.notify_waiters();
                true
            }
            None => false,
        }
    }

    /// Wakes every waiter.
    fn wake_all(&self) {
        for n in [&self.jobs, &self.finished, &self.events] {
            if let Some(n) = n.upgrade() {
                n.notify_waiters();
            }
        }
    }

    fn gone(&self) -> bool {
        self.jobs.strong_count() == 0
    }
}

/// Starts the listener on `handle`; it ends when the store's `notify` is gone.
pub(super) fn start(
    handle: &tokio::runtime::Handle,
    config: tokio_postgres::Config,
    notify: Wakes,
) {
    handle.spawn(async move {
        let mut delay = Duration::from_millis(100);
        loop {
            if notify.gone() {
                return;
            }
            match listen_once(&config, &notify).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::debug!(target: "turnstile::store", "LISTEN connection: {e}; reconnecting in {delay:?}");
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    });
}

/// Listens until the connection ends (`Err`: reconnect) or the store is gone (`Ok`).
async fn listen_once(config: &tokio_postgres::Config, notify: &Wakes) -> Result<(), String> {
    let (client, mut connection) = config.connect(NoTls).await.map_err(|e| e.to_string())?;
    let waiters = notify.clone();
    // The connection delivers notifications as it is polled: poll it on its own task.
    let driver = tokio::spawn(async move {
        loop {
            let msg = std::future::poll_fn(|cx| connection.poll_message(cx)).await;
            match msg {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if !waiters.wake(n.payload()) {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("the connection closed".to_owned()),
            }
        }
    });
    client
        .batch_execute("LISTEN turnstile_jobs")
        .await
        .map_err(|e| e.to_string())?;
    notify.wake_all();
    // The client must live as long as the connection: dropping it closes the connection.
    let ended = driver.await;
    drop(client);
    ended.unwrap_or_else(|e| Err(e.to_string()))
}

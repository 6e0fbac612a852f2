//! Wake-ups from other processes: a connection of the store's own runs
//! `LISTEN turnstile_jobs` and wakes [`crate::store::JobStore::notify`]'s waiters on every
//! notification. When the connection breaks (a server restart) it reconnects with a
//! backoff, and wakes the waiters once it listens again: a job added while nobody
//! listened is then found by the claim they retry.

use std::sync::Weak;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};

/// Starts the listener on `handle`; it ends when the store's `notify` is gone.
pub(super) fn start(
    handle: &tokio::runtime::Handle,
    config: tokio_postgres::Config,
    notify: Weak<Notify>,
) {
    handle.spawn(async move {
        let mut delay = Duration::from_millis(100);
        loop {
            if notify.strong_count() == 0 {
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
async fn listen_once(config: &tokio_postgres::Config, notify: &Weak<Notify>) -> Result<(), String> {
    let (client, mut connection) = config.connect(NoTls).await.map_err(|e| e.to_string())?;
    let waiters = notify.clone();
    // The connection delivers notifications as it is polled: poll it on its own task.
    let driver = tokio::spawn(async move {
        loop {
            let msg = std::future::poll_fn(|cx| connection.poll_message(cx)).await;
            match msg {
                Some(Ok(AsyncMessage::Notification(_))) => match waiters.upgrade() {
                    Some(n) => n.notify_waiters(),
                    None => return Ok(()),
                },
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
    if let Some(n) = notify.upgrade() {
        n.notify_waiters();
    }
    // The client must live as long as the connection: dropping it closes the connection.
    let ended = driver.await;
    drop(client);
    ended.unwrap_or_else(|e| Err(e.to_string()))
}

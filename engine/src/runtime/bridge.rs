//! [`EventBridge`]: an engine's machines and the machines of other processes sharing a
//! store, through the store's machine registry and event table ([`crate::store::events`]).
//!
//! - Sending: attached to the engine as its [`Remote`], so `send_event` (and the
//!   sidecar's `POST /machines/{name}/events`) to a name this engine does not run asks the
//!   registry: a machine another live process runs gets a row in the event table (with the
//!   sender's `traceparent`); a name no live process runs is unknown, as before. A
//!   positive answer is remembered for a third of the lease.
//! - Receiving: one task per local machine takes the machine's pending events in id
//!   order (with the machine's consumer lease: one process at a time, when several run a
//!   machine of that name) and queues them into the machine with their id
//!   ([`Event::store_id`]), waiting for room (backpressure). It wakes on the store's
//!   notification (PostgreSQL `LISTEN`, the SQLite WAL watch), and looks again every
//!   third of the lease (the lease renewal; a lost notification costs that much at most).
//! - Marking: the machine reports each event handled ([`Remote::handled`]); with a
//!   [`Persister`] the mark goes in the transaction that saves the state the event led
//!   to, else a task marks handled events in batches. Until marked, an event stays
//!   pending; the task remembers the ids it queued and does not queue them again
//!   (a redelivery within the process is recognised by id). A process that dies redelivers
//!   what was not marked to the next consumer: with `--persist` exactly the events whose
//!   effect was not saved; without, also events handled after the last mark (at least
//!   once).
//! - The registry rows are written at start and every third of the lease (the
//!   heartbeat), and deleted by [`EventBridge::stop`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::runtime::engine::Engine;
use crate::runtime::event::Event;
use crate::runtime::router::{ForwardError, Remote};
use crate::runtime::trace::TraceContext;
use crate::store::{NewEvent, Persister, Store, StoreError, StoredEvent};

/// Events a machine's task queues into it before they are marked (and per take).
pub const WINDOW: usize = 512;

struct Inner {
    store: Arc<dyn Store>,
    engine: Engine,
    instance_id: String,
    incarnation: String,
    lease: Duration,
    persist: Option<Persister>,
    /// Handled events not yet marked (without a persister).
    handled: Mutex<Vec<i64>>,
    handled_wake: Notify,
    /// Remote targets known to run elsewhere, and since when.
    elsewhere: Mutex<FxHashMap<String, Instant>>,
    cancel: CancellationToken,
}

/// The bridge of one engine to the store's other processes (see the module docs).
#[derive(Clone)]
pub struct EventBridge {
    inner: Arc<Inner>,
    machines: Vec<String>,
}

impl std::fmt::Debug for EventBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBridge")
            .field("machines", &self.machines)
            .finish_non_exhaustive()
    }
}

struct AsRemote(Arc<Inner>);

impl EventBridge {
    /// Registers `machines` (the engine's) for `incarnation` of `instance_id`, attaches
    /// the bridge to `engine` and starts its tasks on the current Tokio runtime. `lease`
    /// is the store's lease time: registrations and consumer leases older than that are
    /// stale. `persist`: the engine's persister, when states are saved.
    pub fn start(
        store: Arc<dyn Store>,
        engine: &Engine,
        (instance_id, incarnation): (&str, &str),
        machines: Vec<String>,
        lease: Duration,
        persist: Option<Persister>,
    ) -> Result<Self, StoreError> {
        store.register_machines(instance_id, incarnation, &machines)?;
        let inner = Arc::new(Inner {
            store,
            engine: engine.clone(),
            instance_id: instance_id.to_owned(),
            incarnation: incarnation.to_owned(),
            lease,
            persist,
            handled: Mutex::new(Vec::new()),
            handled_wake: Notify::new(),
            elsewhere: Mutex::new(FxHashMap::default()),
            cancel: CancellationToken::new(),
        });
        if !engine.set_remote(Arc::new(AsRemote(inner.clone()))) {
            return Err(StoreError::Invalid(
                "the engine is already bridged to other processes".into(),
            ));
        }
        tokio::spawn(heartbeat(inner.clone(), machines.clone()));
        if inner.persist.is_none() {
            tokio::spawn(mark_handled(inner.clone()));
        }
        for m in &machines {
            tokio::spawn(consume(inner.clone(), Arc::from(m.as_str())));
        }
        Ok(Self { inner, machines })
    }

    /// Stops the tasks and deletes the registrations (a clean exit): other processes find
    /// these machines gone at once. Handled events not marked yet are marked first.
    /// Blocking.
    pub fn stop(&self) {
        self.inner.cancel.cancel();
        let ids = std::mem::take(&mut *lock(&self.inner.handled));
        if !ids.is_empty() {
            if let Err(e) = self.inner.store.mark_processed(&ids) {
                tracing::warn!(target: "turnstile::events", "cannot mark {} handled events ({e}): they are delivered again", ids.len());
            }
        }
        if let Err(e) = self
            .inner
            .store
            .unregister_machines(&self.inner.incarnation)
        {
            tracing::warn!(target: "turnstile::events", "cannot unregister the machines ({e}): their registrations expire after a lease");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    /// Whether another live process runs `target` (remembered for a third of the lease).
    fn elsewhere(&self, target: &str) -> Result<bool, ForwardError> {
        let fresh = self.lease / 3;
        if lock(&self.elsewhere)
            .get(target)
            .is_some_and(|t| t.elapsed() < fresh)
        {
            return Ok(true);
        }
        let hosts = self
            .store
            .machine_hosts(target, self.lease)
            .map_err(|e| ForwardError::Store(target.to_owned(), e.to_string()))?;
        let found = hosts.iter().any(|h| h.incarnation != self.incarnation);
        let mut known = lock(&self.elsewhere);
        if found {
            known.insert(target.to_owned(), Instant::now());
        } else {
            known.remove(target);
        }
        Ok(found)
    }
}

impl Remote for AsRemote {
    fn forward(&self, source: Option<&str>, target: &str, ev: &Event) -> Result<i64, ForwardError> {
        if !self.0.elsewhere(target)? {
            return Err(ForwardError::Unknown(target.to_owned()));
        }
        let new = NewEvent {
            source: source.map(str::to_owned),
            target: target.to_owned(),
            event_type: ev.name.to_string(),
            job_id: ev.job_id.clone(),
            payload: ev.payload.as_deref().cloned(),
            traceparent: ev.traceparent.map(|t| t.to_string()),
        };
        self.0
            .store
            .send_event(&new)
            .map_err(|e| ForwardError::Store(target.to_owned(), e.to_string()))
    }

    fn runs_elsewhere(&self, target: &str) -> Result<bool, ForwardError> {
        self.0.elsewhere(target)
    }

    fn handled(&self, _machine: &Arc<str>, id: i64) {
        match &self.0.persist {
            Some(p) => p.processed(id),
            None => {
                lock(&self.0.handled).push(id);
                self.0.handled_wake.notify_one();
            }
        }
    }
}

/// Runs a blocking store call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StoreError::Db(format!("store call panicked: {e}"))))
}

/// Writes the registrations again every third of the lease.
async fn heartbeat(inner: Arc<Inner>, machines: Vec<String>) {
    loop {
        tokio::select! {
            () = inner.cancel.cancelled() => return,
            () = tokio::time::sleep(inner.lease / 3) => {}
        }
        let (s, id, inc, m) = (
            inner.store.clone(),
            inner.instance_id.clone(),
            inner.incarnation.clone(),
            machines.clone(),
        );
        if let Err(e) = blocking(move || s.register_machines(&id, &inc, &m)).await {
            tracing::warn!(target: "turnstile::events", "machine registry heartbeat failed: {e}");
        }
    }
}

/// Marks handled events processed, in batches (without a persister).
async fn mark_handled(inner: Arc<Inner>) {
    loop {
        tokio::select! {
            () = inner.cancel.cancelled() => return,
            () = inner.handled_wake.notified() => {}
        }
        let ids = std::mem::take(&mut *lock(&inner.handled));
        if ids.is_empty() {
            continue;
        }
        let (s, batch) = (inner.store.clone(), ids.clone());
        if let Err(e) = blocking(move || s.mark_processed(&batch)).await {
            tracing::warn!(target: "turnstile::events", "cannot mark handled events processed ({e}); trying again");
            lock(&inner.handled).extend(ids);
            tokio::time::sleep(Duration::from_millis(200)).await;
            inner.handled_wake.notify_one();
        }
    }
}

/// The engine event for a stored one.
fn to_event(e: StoredEvent) -> Event {
    let mut ev = Event::new(e.event_type);
    ev.payload = e.payload.map(Arc::new);
    ev.job_id = e.job_id;
    ev.traceparent = e
        .traceparent
        .as_deref()
        .and_then(|t| TraceContext::parse(t).ok());
    ev.store_id = Some(e.id);
    ev
}

/// Takes `machine`'s pending events and queues them into it, in id order, for as long
/// as the bridge runs (see the module docs).
async fn consume(inner: Arc<Inner>, machine: Arc<str>) {
    let notify = inner.store.notify().clone();
    // Queued into the machine, not seen marked yet.
    let mut queued: HashSet<i64> = HashSet::new();
    loop {
        let idle_wait: Duration;
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let limit = WINDOW + queued.len();
        let (s, m, c, lease) = (
            inner.store.clone(),
            machine.clone(),
            inner.incarnation.clone(),
            inner.lease,
        );
        let mut again = false;
        match blocking(move || s.take_events(&m, &c, lease, limit)).await {
            Ok(None) => idle_wait = inner.lease / 3,
            Ok(Some(events)) => {
                // Forget queued ids the store no longer lists as pending (marked).
                let complete = events.len() < limit;
                let last = events.last().map_or(i64::MIN, |e| e.id);
                let listed: HashSet<i64> = events.iter().map(|e| e.id).collect();
                queued.retain(|id| listed.contains(id) || (!complete && *id > last));
                for e in events {
                    if queued.contains(&e.id) {
                        continue;
                    }
                    if queued.len() >= WINDOW {
                        again = true;
                        break;
                    }
                    let id = e.id;
                    if inner.engine.send(&machine, to_event(e)).await.is_err() {
                        // Stopped: the events stay pending for the next consumer.
                        tracing::debug!(target: "turnstile::events", machine = %machine, "machine stopped: its store events are left pending");
                        return;
                    }
                    queued.insert(id);
                }
                // With queued events outstanding, look again soon for their marks (a
                // mark by this process wakes no one).
                idle_wait = if queued.is_empty() {
                    inner.lease / 3
                } else {
                    Duration::from_millis(20)
                };
            }
            Err(e) => {
                tracing::warn!(target: "turnstile::events", machine = %machine, "cannot take events from the store: {e}");
                idle_wait = Duration::from_secs(1).min(inner.lease / 3);
            }
        }
        if again {
            tokio::select! {
                () = inner.cancel.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
            continue;
        }
        tokio::select! {
            () = inner.cancel.cancelled() => return,
            () = &mut notified => {}
            () = tokio::time::sleep(idle_wait) => {}
        }
    }
}

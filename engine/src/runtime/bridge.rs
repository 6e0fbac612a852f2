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
//!   to, else a task marks handled events in batches (those handled within
//!   [`MARK_GATHER`] of the first share one write). Until marked, an event stays
//!   pending; the task remembers the ids it queued and does not queue them again
//!   (a redelivery within the process is recognised by id). A process that dies redelivers
//!   what was not marked to the next consumer: with `--persist` exactly the events whose
//!   effect was not saved; without, also events handled after the last mark (at least
//!   once).
//! - The registry rows are written at start and every third of the lease (the
//!   heartbeat), and deleted by [`EventBridge::stop`].
//! - Singletons ([`crate::runtime::singleton`]): a singleton is registered, and its events
//!   consumed, only by the process that holds its lease: the supervisor calls
//!   [`Remote::hold`] when it takes the lease and [`Remote::release`] when the tenure
//!   ends (the registration and the consumer lease go at once, so the next holder
//!   consumes from the first event not marked). In a process where a configured
//!   singleton stands by, an event for it always goes to the event table (it waits there
//!   for the holder, also while the lease passes from a dead holder to a survivor).
//! - The bridge is attached before the machines start (a machine's first actions may send
//!   to other processes); a consumer that finds its machine not started yet looks again.
//! - Instances started at run time (with a [`Persister`] only: their `machine_state` row is
//!   their registration, see [`crate::store::events`]): a send to an instance another
//!   process owns, live or dead with a saved state (waiting there for a takeover), goes to
//!   the event table. One task takes the pending events of all the instances this process
//!   owns ([`crate::store::EventStore::take_instance_events`]), in id order, and queues
//!   each into its instance without waiting: an instance whose queue is full, or that is
//!   not started yet, has its events taken again at the next look, after the ones queued
//!   (its order kept), while the other instances' events go on. Marked as above.
//! - Takeover ([`EventBridge::adopt_instances`], for a process with a persister): every
//!   third of the lease the same task claims the instances, of the definitions loaded
//!   here, that a process released at its clean exit (no owner) and, with a registered
//!   `--instance-id`, those whose owner's `turnstile_instances` heartbeat is older than
//!   the lease ([`Engine::adopt_instances`]: one conditional `UPDATE`, one taker per
//!   instance), and starts them from their saved state; their pending events are then
//!   this process's to take. A process releases its instances
//!   ([`crate::store::StateStore::release_instances`]) only after they stopped and their
//!   states were saved: never two runners at once.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::runtime::engine::{Engine, SendError};
use crate::runtime::event::Event;
use crate::runtime::router::{ForwardError, Remote};
use crate::runtime::trace::TraceContext;
use crate::store::{NewEvent, Persister, Store, StoreError, StoredEvent};

/// Events a machine's task queues into it before they are marked (and per take).
pub const WINDOW: usize = 512;

/// How long handled events wait for others to share their mark (without a persister). A
/// mark is a write: on SQLite each takes the file's one write lock, with its fsync, from
/// the senders; marked as soon as the previous mark committed, a receiver of 1,000
/// events/s wrote a few hundred marks a second. Short, because until marked an event is
/// read again by every take (its id skipped), and a process that dies redelivers what it
/// handled in this time (at least once, as before).
pub const MARK_GATHER: Duration = Duration::from_millis(10);

/// Handled events marked at once, without waiting for the rest of [`MARK_GATHER`]: well
/// under [`WINDOW`], so a fast stream of events never waits for its marks.
pub const MARK_BATCH: usize = 256;

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
    adopt_wake: Notify,
    /// Remote targets known to run elsewhere, and since when.
    elsewhere: Mutex<FxHashMap<String, Instant>>,
    /// The machines registered for this process (singletons while held), and the
    /// cancellation of each one's consumer task.
    local: Mutex<FxHashMap<String, CancellationToken>>,
    /// Singletons configured here: events for them go through the store when this
    /// process does not run them.
    singletons: HashSet<String>,
    /// Take over released instances ([`EventBridge::adopt_instances`]).
    adopt: std::sync::atomic::AtomicBool,
    /// ... and dead processes' instances.
    adopt_dead: std::sync::atomic::AtomicBool,
    runtime: tokio::runtime::Handle,
    cancel: CancellationToken,
}

/// The bridge of one engine to the store's other processes (see the module docs).
#[derive(Clone)]
pub struct EventBridge {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EventBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBridge")
            .field("machines", &self.inner.registered())
            .finish_non_exhaustive()
    }
}

struct AsRemote(Arc<Inner>);

impl EventBridge {
    /// Registers `machines` (the engine's, singletons left out) for `incarnation` of
    /// `instance_id`, attaches the bridge to `engine` and starts its tasks on the current
    /// Tokio runtime. `singletons`: the singletons configured here (registered while
    /// held, see the module docs). `lease` is the store's lease time: registrations and
    /// consumer leases older than that are stale. `persist`: the engine's persister, when
    /// states are saved.
    pub fn start(
        store: Arc<dyn Store>,
        engine: &Engine,
        (instance_id, incarnation): (&str, &str),
        (machines, singletons): (Vec<String>, Vec<String>),
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
            adopt_wake: Notify::new(),
            elsewhere: Mutex::new(FxHashMap::default()),
            local: Mutex::new(FxHashMap::default()),
            singletons: singletons.into_iter().collect(),
            adopt: std::sync::atomic::AtomicBool::new(false),
            adopt_dead: std::sync::atomic::AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
            cancel: CancellationToken::new(),
        });
        if !engine.set_remote(Arc::new(AsRemote(inner.clone()))) {
            return Err(StoreError::Invalid(
                "the engine is already bridged to other processes".into(),
            ));
        }
        tokio::spawn(heartbeat(inner.clone()));
        if inner.persist.is_none() {
            tokio::spawn(mark_handled(inner.clone()));
        } else {
            tokio::spawn(instances(inner.clone()));
        }
        for m in machines {
            inner.start_consumer(m);
        }
        Ok(Self { inner })
    }

    /// From now on, takes over every third of the lease the instances other processes
    /// released at a clean exit and, with `dead`, those of dead processes (see the module
    /// docs). `dead` only for a process whose instance id is registered in the store (its
    /// own heartbeat is what keeps them its own). Needs a persister (nothing to start
    /// them from otherwise: without one, this does nothing).
    pub fn adopt_instances(&self, dead: bool) {
        self.inner
            .adopt_dead
            .store(dead, std::sync::atomic::Ordering::Relaxed);
        self.inner
            .adopt
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.inner.adopt_wake.notify_one();
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
    /// The machines registered for this process, sorted.
    fn registered(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.local).keys().cloned().collect();
        v.sort();
        v
    }

    /// Starts (or restarts) `machine`'s consumer task; it ends when the bridge stops or
    /// [`Self::stop_consumer`] is called.
    fn start_consumer(self: &Arc<Self>, machine: String) {
        let token = self.cancel.child_token();
        if let Some(old) = lock(&self.local).insert(machine.clone(), token.clone()) {
            old.cancel();
        }
        self.runtime
            .spawn(consume(self.clone(), Arc::from(machine.as_str()), token));
    }

    /// Stops `machine`'s consumer task; true when there was one.
    fn stop_consumer(&self, machine: &str) -> bool {
        match lock(&self.local).remove(machine) {
            Some(t) => {
                t.cancel();
                true
            }
            None => false,
        }
    }

    /// Writes the registrations (and drops the consumer leases of machines no longer
    /// registered). Blocking.
    fn register(&self) -> Result<(), StoreError> {
        self.store
            .register_machines(&self.instance_id, &self.incarnation, &self.registered())
    }

    /// Whether another live process runs `target` (remembered for a third of the lease);
    /// always for a singleton configured here (it is not running here when this is asked).
    fn elsewhere(&self, target: &str) -> Result<bool, ForwardError> {
        if self.singletons.contains(target) {
            return Ok(true);
        }
        let fresh = self.lease / 3;
        if lock(&self.elsewhere)
            .get(target)
            .is_some_and(|t| t.elapsed() < fresh)
        {
            return Ok(true);
        }
        let err = |e: StoreError| ForwardError::Store(target.to_owned(), e.to_string());
        let hosts = self.store.machine_hosts(target, self.lease).map_err(err)?;
        let mut found = hosts.iter().any(|h| h.incarnation != self.incarnation);
        if !found {
            // An instance another process owns: live, or dead with a saved state (its
            // events wait for the survivor that takes it over).
            found = self
                .store
                .instance_owner(target, self.lease)
                .map_err(err)?
                .is_some_and(|o| {
                    o.instance_id.as_deref() != Some(self.instance_id.as_str())
                        && (o.live || o.saved)
                });
        }
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

    fn hold(&self, machine: &str) {
        if self.0.cancel.is_cancelled() {
            return;
        }
        self.0.start_consumer(machine.to_owned());
        if let Err(e) = self.0.register() {
            tracing::warn!(target: "turnstile::events", machine, "cannot register the singleton this process took over ({e}): the next heartbeat tries again");
        }
    }

    fn release(&self, machine: &str) {
        if self.0.stop_consumer(machine) && !self.0.cancel.is_cancelled() {
            if let Err(e) = self.0.register() {
                tracing::warn!(target: "turnstile::events", machine, "cannot unregister the singleton this process gave up ({e}): its registration and consumer lease expire after a lease");
            }
        }
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
async fn heartbeat(inner: Arc<Inner>) {
    loop {
        tokio::select! {
            () = inner.cancel.cancelled() => return,
            () = tokio::time::sleep(inner.lease / 3) => {}
        }
        let i = inner.clone();
        if let Err(e) = blocking(move || i.register()).await {
            tracing::warn!(target: "turnstile::events", "machine registry heartbeat failed: {e}");
        }
    }
}

/// Marks handled events processed, in batches (without a persister): after the first
/// handled event, those handled within [`MARK_GATHER`] (or until [`MARK_BATCH`]) share
/// one write.
async fn mark_handled(inner: Arc<Inner>) {
    loop {
        tokio::select! {
            () = inner.cancel.cancelled() => return,
            () = inner.handled_wake.notified() => {}
        }
        let until = tokio::time::Instant::now() + MARK_GATHER;
        while lock(&inner.handled).len() < MARK_BATCH {
            tokio::select! {
                () = inner.cancel.cancelled() => return,
                () = tokio::time::sleep_until(until) => break,
                () = inner.handled_wake.notified() => {}
            }
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
async fn consume(inner: Arc<Inner>, machine: Arc<str>, cancel: CancellationToken) {
    let notify = inner.store.event_notify().clone();
    // Queued into the machine, not seen marked yet.
    let mut queued: HashSet<i64> = HashSet::new();
    let mut consuming = false;
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
        let mut not_started = false;
        match blocking(move || s.take_events(&m, &c, lease, limit)).await {
            Ok(None) => idle_wait = inner.lease / 3,
            Ok(Some(events)) => {
                if !consuming {
                    consuming = true;
                    tracing::debug!(target: "turnstile::events", machine = %machine, "consuming the machine's store events");
                }
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
                    match inner.engine.send(&machine, to_event(e)).await {
                        Ok(()) => {}
                        Err(SendError::UnknownMachine(_)) => {
                            // Not started yet (the bridge is attached first): this event
                            // and the rest are taken again.
                            not_started = true;
                            break;
                        }
                        Err(_) => {
                            // Stopped: the events stay pending for the next consumer.
                            tracing::debug!(target: "turnstile::events", machine = %machine, "machine stopped: its store events are left pending");
                            return;
                        }
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
        if again || not_started {
            let pause = Duration::from_millis(if again { 5 } else { 20 });
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
            continue;
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = &mut notified => {}
            () = tokio::time::sleep(idle_wait) => {}
        }
    }
}

/// One look of the instances' task: queues `events` (one read of this process's
/// instances' pending events, in id order) through `send` (the engine's `try_send`),
/// skipping those `queued` already holds (queued and not marked yet) and updating it. An
/// instance whose event is refused (queue full, not started yet, retired) has its later
/// events in this look left for the next one, after that one: its order is kept even when
/// its queue frees up during the look. True when the task should look again soon
/// (something queued and not marked yet, or left behind).
fn queue_pass(
    events: Vec<StoredEvent>,
    queued: &mut HashSet<i64>,
    mut send: impl FnMut(&str, StoredEvent) -> Result<(), SendError>,
) -> bool {
    let complete = events.len() < WINDOW;
    let last = events.last().map_or(i64::MIN, |e| e.id);
    let listed: HashSet<i64> = events.iter().map(|e| e.id).collect();
    queued.retain(|id| listed.contains(id) || (!complete && *id > last));
    // Instances with an event left behind in this look: their later events wait for the
    // next one (their order kept).
    let mut behind: HashSet<String> = HashSet::new();
    for e in events {
        if queued.contains(&e.id) || behind.contains(&e.target) {
            continue;
        }
        if queued.len() >= WINDOW {
            behind.insert(e.target.clone());
            break;
        }
        let (id, target) = (e.id, e.target.clone());
        match send(&target, e) {
            Ok(()) => {
                queued.insert(id);
            }
            // Queue full or not started yet; or retired (its mark not written yet): left
            // pending.
            Err(SendError::QueueFull(_) | SendError::UnknownMachine(_) | SendError::Stopped(_)) => {
                behind.insert(target);
            }
        }
    }
    !queued.is_empty() || !behind.is_empty()
}

/// The instances' task (with a persister): takes the pending events of every instance this
/// process owns and queues them, and takes over dead processes' instances when asked
/// (see the module docs).
async fn instances(inner: Arc<Inner>) {
    let notify = inner.store.event_notify().clone();
    let mut queued: HashSet<i64> = HashSet::new();
    let mut next_adopt = tokio::time::Instant::now();
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if inner.adopt.load(std::sync::atomic::Ordering::Relaxed)
            && tokio::time::Instant::now() >= next_adopt
        {
            next_adopt = tokio::time::Instant::now() + inner.lease / 3;
            // Without `dead`: an owner is never judged dead (no heartbeat is a century old),
            // only released instances are taken.
            let lease = if inner.adopt_dead.load(std::sync::atomic::Ordering::Relaxed) {
                inner.lease
            } else {
                Duration::from_secs(100 * 365 * 24 * 3600)
            };
            let engine = inner.engine.clone();
            // Launching needs the runtime: off the async threads, with its handle.
            let handle = inner.runtime.clone();
            // The engine logs what it took.
            let _ = tokio::task::spawn_blocking(move || {
                let _g = handle.enter();
                engine.adopt_instances(lease)
            })
            .await;
        }
        let (s, owner) = (inner.store.clone(), inner.instance_id.clone());
        let mut wait = inner.lease / 3;
        match blocking(move || s.take_instance_events(&owner, WINDOW)).await {
            Ok(events) => {
                let busy = queue_pass(events, &mut queued, |target, e| {
                    inner.engine.try_send(target, to_event(e))
                });
                if busy {
                    wait = Duration::from_millis(20);
                }
            }
            Err(e) => {
                tracing::warn!(target: "turnstile::events", "cannot take the instances' events from the store: {e}");
                wait = Duration::from_secs(1).min(inner.lease / 3);
            }
        }
        if inner.adopt.load(std::sync::atomic::Ordering::Relaxed) {
            wait = wait.min(next_adopt.saturating_duration_since(tokio::time::Instant::now()));
        }
        tokio::select! {
            () = inner.cancel.cancelled() => return,
            () = &mut notified => {}
            () = inner.adopt_wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ev(id: i64, target: &str) -> StoredEvent {
        StoredEvent {
            id,
            source: None,
            target: target.into(),
            event_type: format!("e{id}"),
            job_id: None,
            payload: None,
            traceparent: None,
        }
    }

    /// An instance whose queue is full at its first event of a look and has room again by
    /// its next one (its task took an event meanwhile): that next event is not queued ahead
    /// of the refused one; the other instances' events go on; the next look queues the
    /// refused one first.
    #[test]
    fn a_refused_event_holds_back_its_instance_s_later_events_in_the_look() {
        let events = || vec![ev(1, "a"), ev(2, "b"), ev(3, "a"), ev(4, "b"), ev(5, "a")];
        let mut queued = HashSet::new();
        let mut sent: Vec<i64> = Vec::new();
        // `a`'s queue is full for its first try only.
        let mut a_full = true;
        let busy = queue_pass(events(), &mut queued, |target, e| {
            if target == "a" && std::mem::take(&mut a_full) {
                return Err(SendError::QueueFull(target.into()));
            }
            sent.push(e.id);
            Ok(())
        });
        assert!(busy);
        assert_eq!(sent, [2, 4], "a's events 3 and 5 wait behind 1");
        // The next look: a's events in order; b's (queued, not marked) not again.
        sent.clear();
        queue_pass(events(), &mut queued, |_, e| {
            sent.push(e.id);
            Ok(())
        });
        assert_eq!(sent, [1, 3, 5]);
        // Marked ones drop out of `queued`; nothing left: not busy once all are marked.
        assert!(!queue_pass(Vec::new(), &mut queued, |_, _| Ok(())));
        assert!(queued.is_empty());
    }

    /// Not started yet or retired: held back the same way.
    #[test]
    fn an_unknown_or_stopped_instance_holds_back_its_later_events() {
        let refusals: [fn() -> SendError; 2] = [
            || SendError::UnknownMachine("a".into()),
            || SendError::Stopped("a".into()),
        ];
        for refusal in refusals {
            let refusal = refusal();
            let label = refusal.to_string();
            let mut queued = HashSet::new();
            let mut sent = Vec::new();
            let mut first = Some(refusal);
            queue_pass(
                vec![ev(1, "a"), ev(2, "a"), ev(3, "b")],
                &mut queued,
                |_, e| {
                    if let Some(r) = first.take() {
                        return Err(r);
                    }
                    sent.push(e.id);
                    Ok(())
                },
            );
            assert_eq!(sent, [3], "{label}");
        }
    }
}

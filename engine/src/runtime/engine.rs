//! The engine: hosts many machines in one process, routes events between them and
//! reports through one [`Observer`].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value as Json};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::def::MachineDef;
use super::event::Event;
use super::instances::Instances;
pub use super::instances::{InstanceCounts, RETIRED_FOR, RETIRED_KEEP};
use super::launch::{Retire, RunningGuard, Task};
use super::live::{LiveAnswer, LiveError, LiveOp};
use super::machine::{Control, LiveRequest, Machine, Reloaded, Shared, REQUEST};
use super::mailbox::Mailbox;
use super::router::{DeliverError, Router};
use super::singleton::{self, Role, SingletonStatus, Singletons, Slot};
pub use super::start::StartError;
use super::start::Starter;
use super::tenure::Tenure;
use crate::observe::{Observer, StopReason};

/// Default capacity of each machine's event queue.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;

/// Default for [`EngineBuilder::livelock_limit`]: high enough for a state that works through
/// a long list one item per re-entry, low enough that a runaway loop ends in milliseconds.
pub const DEFAULT_LIVELOCK_LIMIT: u32 = 100_000;

/// Why a machine could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Another running machine has that name.
    #[error("a machine named `{0}` is already running")]
    DuplicateName(String),
    /// `spawn` was called outside a Tokio runtime.
    #[error("the engine must run inside a Tokio runtime")]
    NoRuntime,
    /// The machine stopped while it was being reloaded.
    #[error("machine `{0}` stopped during the reload")]
    Stopped(String),
    /// A singleton machine, but the engine has no store for its lease
    /// ([`EngineBuilder::singletons`]).
    #[error("machine `{0}` is a singleton: it needs a store for its lease (--db)")]
    NoLeaseStore(String),
}

/// What [`Engine::reload`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The running machine took the new definition and stayed in its state.
    Updated {
        /// Its id.
        id: usize,
        /// The state it stayed in.
        state: Arc<str>,
    },
    /// The running machine took the new definition, which no longer has the machine's
    /// state: it went to the initial state (and an error was reported).
    StateRemoved {
        /// Its id.
        id: usize,
        /// The state it was in.
        removed: Arc<str>,
        /// The state it is in now (the initial state).
        state: Arc<str>,
    },
    /// No running machine had that name: a new one started.
    Started {
        /// Its id.
        id: usize,
    },
    /// A singleton on standby in this process: it runs the new definition when it takes
    /// over.
    Standby {
        /// Its id.
        id: usize,
    },
}

/// Why an event could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No machine has that name.
    #[error("no machine named `{0}`")]
    UnknownMachine(String),
    /// The machine has stopped (final state or shutdown).
    #[error("machine `{0}` has stopped")]
    Stopped(String),
    /// The machine's queue is full (only from [`Engine::try_send`]).
    #[error("the event queue of machine `{0}` is full")]
    QueueFull(String),
}

/// Builds an [`Engine`].
pub struct EngineBuilder {
    observer: Option<Arc<dyn Observer>>,
    persist: Option<crate::store::Persister>,
    singletons: Option<Singletons>,
    queue_capacity: usize,
    livelock_limit: u32,
}

impl EngineBuilder {
    /// Runs singleton machines (`metadata.singleton: true`, or named in
    /// [`Singletons::names`]) under a lease in `s.store`: one process of those sharing the
    /// store runs each (see [`super::singleton`]).
    #[must_use]
    pub fn singletons(mut self, s: Singletons) -> Self {
        self.singletons = Some(s);
        self
    }

    /// Attaches the observer that receives every report (one per engine).
    #[must_use]
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Sets the capacity of each machine's queue (at least 1).
    #[must_use]
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n.max(1);
        self
    }

    /// Sets how many times in a row a state may re-enter itself through its own actions'
    /// events, with nothing waiting in between, before the next one is refused.
    #[must_use]
    pub fn livelock_limit(mut self, n: u32) -> Self {
        self.livelock_limit = n.max(1);
        self
    }

    /// Saves every machine's state and context after each transition (and a transition
    /// record) through `p`, and starts a machine in its saved state with its saved context
    /// when the store has one (unless that state is gone or final).
    #[must_use]
    pub fn persist(mut self, p: crate::store::Persister) -> Self {
        self.persist = Some(p);
        self
    }

    /// Builds the engine; machines are added with [`Engine::spawn`].
    pub fn build(self) -> Engine {
        let router = Arc::new(Router::new());
        let inner = Arc::new_cyclic(|weak: &std::sync::Weak<Inner>| {
            router.set_starter(Arc::new(Link(weak.clone())));
            Inner {
                router: router.clone(),
                machines: Arc::new(RwLock::new(Vec::new())),
                observer: self.observer,
                cancel: CancellationToken::new(),
                running: watch::Sender::new(0),
                queue_capacity: self.queue_capacity,
                livelock_limit: self.livelock_limit,
                persist: self.persist,
                singletons: self.singletons.map(Arc::new),
                slots: Arc::new(RwLock::new(Vec::new())),
                next_id: AtomicUsize::new(0),
                definitions: RwLock::new(rustc_hash::FxHashMap::default()),
                instances: Arc::new(RwLock::new(Instances::default())),
                next_instance: AtomicU64::new(1),
            }
        });
        Engine { inner }
    }
}

struct Inner {
    router: Arc<Router>,
    /// Shared with every [`EngineStatus`] handed out.
    machines: Arc<RwLock<Vec<Arc<Shared>>>>,
    observer: Option<Arc<dyn Observer>>,
    cancel: CancellationToken,
    /// Number of machine tasks that have not ended yet.
    running: watch::Sender<usize>,
    queue_capacity: usize,
    livelock_limit: u32,
    persist: Option<crate::store::Persister>,
    singletons: Option<Arc<Singletons>>,
    /// The singletons' supervisors (shared with every [`EngineStatus`]).
    slots: Arc<RwLock<Vec<Arc<Slot>>>>,
    /// The next machine id.
    next_id: AtomicUsize,
    /// The definitions instances can be started from, by name: those of the machines the
    /// engine was started with (and their reloads), and those `start_fsm` brought in.
    definitions: RwLock<rustc_hash::FxHashMap<Arc<str>, Defined>>,
    /// The instances started at run time (shared with every [`EngineStatus`]).
    instances: Arc<RwLock<Instances>>,
    /// The number in the next generated instance name.
    next_instance: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A parked instance is held by its own status (in its mailbox): taken out, so
        // that an engine dropped without a shutdown frees it.
        let instances = self.instances.read().unwrap_or_else(|e| e.into_inner());
        let parked: Vec<_> = instances
            .all_live()
            .filter_map(|s| s.mailbox.take_parked())
            .collect();
        drop(instances);
        drop(parked);
    }
}

/// A definition the engine can start instances of.
struct Defined {
    def: Arc<MachineDef>,
    /// A machine the engine was started with runs it (else a `start_fsm` brought it in).
    config: bool,
}

/// The engine as the router hands it to actions ([`Starter`]): held weakly, so that the
/// router (which the engine owns) makes no ownership cycle.
struct Link(std::sync::Weak<Inner>);

impl Starter for Link {
    fn start(
        &self,
        seed: &(dyn std::any::Any + Send + Sync),
        name: Option<&str>,
        context: Map<String, Json>,
    ) -> Result<Arc<str>, StartError> {
        let def = seed
            .downcast_ref::<Arc<MachineDef>>()
            .ok_or(StartError::NotADefinition)?;
        let engine = Engine {
            inner: self.0.upgrade().ok_or(StartError::NotRunning)?,
        };
        engine.adopt_definition(def)?;
        engine.start_instance(&def.name, name, context)
    }
}

/// A running set of machines. Cheap to clone; all clones drive the same machines.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("machines", &self.status().len())
            .field("running", &self.running())
            .finish()
    }
}

/// A read-only view of an engine's machines ([`Engine::status_handle`]): their status and
/// how many still run, read when asked. It can neither send events nor stop machines.
#[derive(Clone)]
pub struct EngineStatus {
    machines: Arc<RwLock<Vec<Arc<Shared>>>>,
    slots: Arc<RwLock<Vec<Arc<Slot>>>>,
    instances: Arc<RwLock<Instances>>,
}

impl std::fmt::Debug for EngineStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineStatus")
            .field("running", &self.running())
            .finish_non_exhaustive()
    }
}

impl EngineStatus {
    /// The status of every machine, in start order ([`Engine::status`]).
    pub fn machines(&self) -> Vec<MachineStatus> {
        self.machines
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|s| status_of(s))
            .collect()
    }

    /// The singleton machines and their role in this process, in start order.
    pub fn singletons(&self) -> Vec<SingletonStatus> {
        self.slots
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|s| s.status())
            .collect()
    }

    /// Instances started at run time (not in [`Self::machines`]), after `after` in name
    /// order (running ones, and the retired ones still kept: [`RETIRED_KEEP`],
    /// [`RETIRED_FOR`]), in state `state` and of definition `definition` when given, at
    /// most `limit`; and whether more follow.
    pub fn instances_page(
        &self,
        after: Option<&str>,
        limit: usize,
        state: Option<&str>,
        definition: Option<&str>,
    ) -> (Vec<MachineStatus>, bool) {
        let instances = self.instances.read().unwrap_or_else(|e| e.into_inner());
        let (page, more) = instances.page(after, limit, |s| {
            if state.is_none() && definition.is_none() {
                return true;
            }
            let def = s.def.read().unwrap_or_else(|e| e.into_inner());
            definition.is_none_or(|d| &*def.name == d)
                && state.is_none_or(|st| {
                    def.states
                        .get(s.state.load(Ordering::Relaxed))
                        .is_some_and(|x| &*x.name == st)
                })
        });
        drop(instances);
        (page.iter().map(|s| status_of(s)).collect(), more)
    }

    /// Per definition with instances: what its instances did so far
    /// ([`InstanceCounts`]), and how many of the running ones are in each state (every
    /// state of the definition, zeros included), in the order of its states.
    pub fn instance_counts(&self) -> Vec<DefinitionInstances> {
        let instances = self.instances.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<DefinitionInstances> = Vec::new();
        let mut at: rustc_hash::FxHashMap<Arc<str>, usize> = rustc_hash::FxHashMap::default();
        for s in instances.all_live() {
            let def = s.def.read().unwrap_or_else(|e| e.into_inner());
            let i = *at.entry(def.name.clone()).or_insert_with(|| {
                out.push(DefinitionInstances {
                    definition: def.name.clone(),
                    states: def.states.iter().map(|x| (x.name.clone(), 0)).collect(),
                    running: 0,
                    transitions: 0,
                    events: 0,
                    errors: 0,
                    counts: InstanceCounts::default(),
                    detail: Some(def.metrics_detail),
                });
                out.len() - 1
            });
            let d = &mut out[i];
            d.running += 1;
            d.transitions += s.transitions.load(Ordering::Relaxed);
            d.events += s.events.load(Ordering::Relaxed);
            d.errors += s.errors.load(Ordering::Relaxed);
            if let Some(st) = def.states.get(s.state.load(Ordering::Relaxed)) {
                match d.states.iter_mut().find(|(n, _)| *n == st.name) {
                    Some((_, n)) => *n += 1,
                    None => d.states.push((st.name.clone(), 1)),
                }
            }
        }
        for (name, c) in instances.counts() {
            let i = *at.entry(name.clone()).or_insert_with(|| {
                // None runs: its states (at zero) as the last one retired knew them.
                let states = instances.last_def(name).map_or_else(Vec::new, |d| {
                    d.states.iter().map(|x| (x.name.clone(), 0)).collect()
                });
                out.push(DefinitionInstances {
                    definition: name.clone(),
                    states,
                    running: 0,
                    transitions: 0,
                    events: 0,
                    errors: 0,
                    counts: InstanceCounts::default(),
                    detail: None,
                });
                out.len() - 1
            });
            let d = &mut out[i];
            d.transitions += c.retired_transitions;
            d.events += c.retired_events;
            d.errors += c.retired_errors;
            d.counts = c.clone();
        }
        out.sort_by(|a, b| a.definition.cmp(&b.definition));
        out
    }

    /// Number of machines still running ([`Engine::running`]).
    pub fn running(&self) -> usize {
        self.machines
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|s| s.running.load(Ordering::Acquire))
            .count()
    }
}

/// The instances of one definition, as [`EngineStatus::instance_counts`] reports them.
#[derive(Debug, Clone)]
pub struct DefinitionInstances {
    /// The definition's name.
    pub definition: Arc<str>,
    /// Running instances per state.
    pub states: Vec<(Arc<str>, u64)>,
    /// Running instances.
    pub running: u64,
    /// Transitions taken by its instances, running and retired (never goes down).
    pub transitions: u64,
    /// Events processed by its instances, running and retired.
    pub events: u64,
    /// Errors of its instances, running and retired.
    pub errors: u64,
    /// Started and retired so far.
    pub counts: InstanceCounts,
    /// The metric detail of the definition its running instances run (`None` when none
    /// runs).
    pub detail: Option<crate::MetricsDetail>,
}

/// What is known about a machine at a moment.
#[derive(Debug, Clone)]
pub struct MachineStatus {
    /// Engine-wide machine id.
    pub id: usize,
    /// The machine's name.
    pub name: Arc<str>,
    /// Its current state.
    pub state: Arc<str>,
    /// When it entered that state.
    pub since: SystemTime,
    /// Its last activity: when it last stopped to wait (for its queue, a timer, an
    /// action, a resume) after processing an event or finishing an action; its start
    /// until then. Within a few milliseconds (the coarse clock).
    pub last_active: SystemTime,
    /// Transitions taken so far.
    pub transitions: u64,
    /// Events processed so far (including ignored ones).
    pub events: u64,
    /// Errors so far.
    pub errors: u64,
    /// Events waiting in its queue.
    pub queue_depth: usize,
    /// False once it stopped.
    pub running: bool,
    /// Paused (by request or a breakpoint).
    pub paused: bool,
    /// Why it stopped, once it has.
    pub stop_reason: Option<StopReason>,
    /// The definition it runs (`def.name` is the definition's name).
    pub def: Arc<MachineDef>,
    /// An instance started at run time ([`Engine::start_instance`]), not one the engine
    /// was started with.
    pub instance: bool,
}

/// A machine's state and context, read from its own task.
#[derive(Debug, Clone)]
pub struct MachineSnapshot {
    /// Current state.
    pub state: Arc<str>,
    /// The whole context.
    pub context: Map<String, Json>,
}

impl Engine {
    /// A builder with no observer and the default queue capacity.
    pub fn builder() -> EngineBuilder {
        EngineBuilder {
            observer: None,
            persist: None,
            singletons: None,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            livelock_limit: DEFAULT_LIVELOCK_LIMIT,
        }
    }

    /// Starts a machine on the current Tokio runtime; returns its engine-wide id.
    pub fn spawn(&self, def: Arc<MachineDef>) -> Result<usize, EngineError> {
        let ids = self.spawn_all(vec![def])?;
        Ok(ids[0])
    }

    /// Starts several machines that may talk to each other: every one is reachable by name
    /// before any of them runs its first action. Returns their ids; on an error none starts.
    /// Singletons ([`EngineBuilder::singletons`]) are not started but supervised: each
    /// runs once this process takes its lease; their ids are the supervisors'.
    pub fn spawn_all(&self, defs: Vec<Arc<MachineDef>>) -> Result<Vec<usize>, EngineError> {
        // What the configs add to the sensitive names is shown redacted from now on.
        crate::redact::extend_global(defs.iter().flat_map(|d| d.redact.iter()));
        let handle = tokio::runtime::Handle::try_current().map_err(|_| EngineError::NoRuntime)?;
        let defined = defs.clone();
        let (singles, defs): (Vec<_>, Vec<_>) =
            defs.into_iter().partition(|d| self.is_singleton(d));
        if let Some(d) = singles.iter().find(|_| self.inner.singletons.is_none()) {
            return Err(EngineError::NoLeaseStore(d.name.to_string()));
        }
        for (i, d) in singles.iter().enumerate() {
            let clash = self
                .inner
                .router
                .sender(&d.name)
                .is_some_and(|t| !t.is_closed())
                || self.supervised(&d.name).is_some()
                || singles[..i].iter().any(|o| o.name == d.name)
                || defs.iter().any(|o| o.name == d.name);
            if clash {
                return Err(EngineError::DuplicateName(d.name.to_string()));
            }
        }
        let mut ids = self.spawn_plain(&handle, defs)?;
        for def in singles {
            ids.push(self.supervise(&handle, def));
        }
        let _ = self.define(&defined);
        Ok(ids)
    }

    fn is_singleton(&self, def: &MachineDef) -> bool {
        def.singleton
            || self
                .inner
                .singletons
                .as_ref()
                .is_some_and(|s| s.covers(def))
    }

    /// The supervisor of the singleton `name`, while it competes for the lease.
    fn supervised(&self, name: &str) -> Option<Arc<Slot>> {
        self.inner
            .slots
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|s| &*s.name == name && s.role() != Role::Ended)
            .cloned()
    }

    /// Starts the supervisor of a singleton; returns its id.
    fn supervise(&self, handle: &tokio::runtime::Handle, def: Arc<MachineDef>) -> usize {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot::new(id, def));
        self.inner
            .slots
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(slot.clone());
        if let Some(cfg) = self.inner.singletons.clone() {
            self.inner.running.send_modify(|n| *n += 1);
            let guard = RunningGuard(self.inner.running.clone());
            let engine = self.clone();
            handle.spawn(async move {
                let _guard = guard;
                singleton::supervise(engine, cfg, slot).await;
            });
        }
        id
    }

    /// A machine's shared half, as it starts: a fresh id, the initial state, no counts,
    /// an empty mailbox.
    fn new_shared(&self, def: Arc<MachineDef>, name: Arc<str>, instance: bool) -> Arc<Shared> {
        Arc::new(Shared {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            state: def.initial.into(),
            instance,
            name,
            def: RwLock::new(def),
            since_ms: 0.into(),
            active_ms: 0.into(),
            transitions: 0.into(),
            events: 0.into(),
            errors: 0.into(),
            running: true.into(),
            mailbox: Mailbox::new(self.inner.queue_capacity),
            gate: 0.into(),
            paused: false.into(),
            stop_reason: Mutex::new(None),
            last_context: Mutex::new(None),
            #[cfg(test)]
            compact: false.into(),
        })
    }

    /// Makes a machine named `name` (a config machine's is its definition's) reachable by
    /// that name; `None` when a running machine has it.
    fn route(&self, def: &Arc<MachineDef>, name: Arc<str>, instance: bool) -> Option<Arc<Shared>> {
        self.inner
            .router
            .insert_with(name, |name| self.new_shared(def.clone(), name, instance))
    }

    /// The machine of `shared` (routed), not running yet; with `--persist`, saved from its
    /// start (config machines start from their saved state here; instances from
    /// `restored`).
    fn new_machine(&self, shared: Arc<Shared>) -> Machine {
        Machine::new(
            shared,
            self.inner.router.clone(),
            self.inner.observer.clone(),
            // Machines only watch the engine's token (a clone shares it: no node per
            // machine, as a child token would allocate).
            self.inner.cancel.clone(),
            self.inner.livelock_limit,
        )
    }

    /// Runs `machine` on a task ([`Task`]); an instance (`retire`) may park without one.
    fn launch(&self, handle: &tokio::runtime::Handle, machine: Machine, retire: Option<Retire>) {
        self.inner.running.send_modify(|n| *n += 1);
        let running = RunningGuard(self.inner.running.clone());
        Task::new(machine, handle.clone(), running, retire).start();
    }

    /// Registers one machine: reachable by name, in the status list; not running yet.
    fn register(
        &self,
        machines: &mut Vec<Arc<Shared>>,
        def: Arc<MachineDef>,
    ) -> Result<Machine, EngineError> {
        let shared = self
            .route(&def, def.name.clone(), false)
            .ok_or_else(|| EngineError::DuplicateName(def.name.to_string()))?;
        machines.push(shared.clone());
        Ok(self.new_machine(shared))
    }

    /// Starts machines that are not singletons (see [`Self::spawn_all`]).
    fn spawn_plain(
        &self,
        handle: &tokio::runtime::Handle,
        defs: Vec<Arc<MachineDef>>,
    ) -> Result<Vec<usize>, EngineError> {
        let mut machines = self
            .inner
            .machines
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let mut pending: Vec<Arc<Shared>> = Vec::with_capacity(defs.len());
        for def in defs {
            let Some(shared) = self.route(&def, def.name.clone(), false) else {
                for shared in &pending {
                    self.inner.router.remove(&shared.name);
                }
                return Err(EngineError::DuplicateName(def.name.to_string()));
            };
            pending.push(shared);
        }
        let mut ids = Vec::with_capacity(pending.len());
        for shared in pending {
            machines.push(shared.clone());
            ids.push(shared.id);
            let machine = self.new_machine(shared);
            let machine = match &self.inner.persist {
                Some(p) => {
                    let def = machine.def().clone();
                    machine.persisted(p.clone(), p.restored(&def))
                }
                None => machine,
            };
            self.launch(handle, machine, None);
        }
        Ok(ids)
    }

    /// Attaches the way to machines of other processes (see
    /// [`crate::runtime::router::Remote`]): `send_event` to a machine this engine does not
    /// run goes there. Once per engine; false when one was attached.
    pub fn set_remote(&self, remote: Arc<dyn crate::runtime::router::Remote>) -> bool {
        self.inner.router.set_remote(remote)
    }

    /// The way to machines of other processes, if one is attached.
    pub fn remote(&self) -> Option<Arc<dyn crate::runtime::router::Remote>> {
        self.inner.router.remote().cloned()
    }

    /// Delivers an event, waiting while the machine's queue is full (backpressure).
    pub async fn send(&self, target: &str, ev: Event) -> Result<(), SendError> {
        self.inner
            .router
            .deliver(target, ev)
            .await
            .map_err(|e| map_deliver(target, e))
    }

    /// Delivers an event if there is room now.
    pub fn try_send(&self, target: &str, ev: Event) -> Result<(), SendError> {
        self.inner
            .router
            .try_deliver(target, ev)
            .map_err(|e| map_deliver(target, e))
    }

    /// The status of every machine, in start order.
    pub fn status(&self) -> Vec<MachineStatus> {
        self.status_handle().machines()
    }

    /// A read-only view of the machines' status, for whoever reports on the engine (an
    /// observer's scrape-time gauges, `/stats`). It does not keep the engine alive: an
    /// observer that holds it makes no ownership cycle with the engine that holds the
    /// observer.
    pub fn status_handle(&self) -> EngineStatus {
        EngineStatus {
            machines: self.inner.machines.clone(),
            slots: self.inner.slots.clone(),
            instances: self.inner.instances.clone(),
        }
    }

    /// The status of one machine (the most recent one of that name).
    pub fn machine(&self, name: &str) -> Option<MachineStatus> {
        self.find(name).map(|s| status_of(&s))
    }

    /// The machine of that name: a running one (started with the engine, else an
    /// instance), else a stopped one (started with the engine, else a retired instance).
    fn find(&self, name: &str) -> Option<Arc<Shared>> {
        let config = self
            .inner
            .machines
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .rev()
            .find(|s| &*s.name == name)
            .cloned();
        if config
            .as_ref()
            .is_some_and(|s| s.running.load(Ordering::Acquire))
        {
            return config;
        }
        let instance = self
            .inner
            .instances
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .find(name)
            .cloned();
        match (config, instance) {
            (_, Some(i)) if i.running.load(Ordering::Acquire) => Some(i),
            (Some(c), _) => Some(c),
            (None, i) => i,
        }
    }

    /// The state and context of a machine: read on its own task while it runs, or as it
    /// was when it stopped.
    pub async fn snapshot(&self, name: &str) -> Option<MachineSnapshot> {
        let shared = self.find(name)?;
        let (tx, rx) = oneshot::channel();
        let live = match shared.mailbox.control(Control::Snapshot(tx)) {
            Ok(()) => rx.await.ok(),
            Err(_) => None,
        };
        // A stopped machine left its last state and context behind.
        let (state, context) = match live {
            Some(l) => l,
            None => *shared
                .last_context
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()?,
        };
        Some(MachineSnapshot { state, context })
    }

    /// The observer attached to the engine, if any.
    pub fn observer(&self) -> Option<&Arc<dyn Observer>> {
        self.inner.observer.as_ref()
    }

    /// The running machine of that name, if any.
    fn running_machine(&self, name: &str) -> Option<Arc<Shared>> {
        self.find(name)
            .filter(|s| s.running.load(Ordering::Acquire))
    }

    /// The running machine of that name the engine was started with (not an instance).
    fn running_config_machine(&self, name: &str) -> Option<Arc<Shared>> {
        self.inner
            .machines
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .rev()
            .find(|s| &*s.name == name && s.running.load(Ordering::Acquire))
            .cloned()
    }

    /// Keeps `defs` as the definitions of those names (instances start from them), and
    /// the definitions their `start_fsm` actions start (recursively) where the engine has
    /// none of that name, or one that a `start_fsm` brought in and that changed since.
    /// Returns the latter (their instances are to take them).
    fn define(&self, defs: &[Arc<MachineDef>]) -> Vec<Arc<MachineDef>> {
        let mut m = self
            .inner
            .definitions
            .write()
            .unwrap_or_else(|e| e.into_inner());
        for d in defs {
            m.insert(
                d.name.clone(),
                Defined {
                    def: d.clone(),
                    config: true,
                },
            );
        }
        let mut changed = Vec::new();
        let mut todo: Vec<Arc<MachineDef>> = defs.iter().flat_map(|d| seeds(d)).collect();
        let mut seen = 0;
        while let Some(seed) = todo.pop() {
            // Cycles are refused when configs compile; this bounds a pathological chain.
            seen += 1;
            if seen > 10_000 {
                break;
            }
            let replace = match m.get(&seed.name) {
                None => true,
                Some(have) => {
                    !have.config
                        && have.def.content_hash != seed.content_hash
                        && have.def.source == seed.source
                }
            };
            if !replace {
                continue;
            }
            crate::redact::extend_global(&seed.redact);
            todo.extend(seeds(&seed));
            if m.contains_key(&seed.name) {
                changed.push(seed.clone());
            }
            m.insert(
                seed.name.clone(),
                Defined {
                    def: seed,
                    config: false,
                },
            );
        }
        changed
    }

    /// Adds `def` as a definition unless the engine has one of that name (a `start_fsm`'s
    /// `yaml_path`, compiled with its config): the engine's own is the one that runs (a
    /// config machine's, or the first start's, with its reloads). One of that name from
    /// another file is refused.
    fn adopt_definition(&self, def: &Arc<MachineDef>) -> Result<(), StartError> {
        let mut m = self
            .inner
            .definitions
            .write()
            .unwrap_or_else(|e| e.into_inner());
        match m.get(&def.name).map(|d| &d.def) {
            Some(have) => match (&have.source, &def.source) {
                (Some(a), Some(b)) if a != b && !same_file(a, b) => {
                    Err(StartError::DefinitionClash {
                        name: def.name.to_string(),
                        existing: a.display().to_string(),
                        wanted: b.display().to_string(),
                    })
                }
                _ => Ok(()),
            },
            None => {
                crate::redact::extend_global(&def.redact);
                m.insert(
                    def.name.clone(),
                    Defined {
                        def: def.clone(),
                        config: false,
                    },
                );
                Ok(())
            }
        }
    }

    /// The definition of that name, if the engine has one.
    pub fn definition(&self, name: &str) -> Option<Arc<MachineDef>> {
        self.inner
            .definitions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(|d| d.def.clone())
    }

    /// The names of the definitions instances can be started from, sorted.
    pub fn definitions(&self) -> Vec<Arc<str>> {
        let mut v: Vec<Arc<str>> = self
            .inner
            .definitions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// Starts an instance of the definition `definition` named `name` (else a generated
    /// name, `DEFINITION-N`), with `context` merged over the definition's initial context
    /// (top-level keys replace the definition's). The instance shares the compiled
    /// definition (and its reloads) with the machine of that name and every other
    /// instance; it has its own name, queue, context and state, and is reachable by name
    /// like any machine. With a persister the name is first taken in the store, where it is
    /// unique across the processes sharing it (refused with [`StartError::NameTaken`] when
    /// another process's instance holds it: [`crate::store::StateStore::claim_instance_name`]),
    /// and its state is saved under its name after each
    /// transition (it starts from the initial state: a saved state of that name is not
    /// restored), and the store records it as a live instance of its definition until it
    /// is retired ([`Self::restore_instances`] starts the live ones after a restart). When
    /// it reaches a final state (or is stopped) it is retired ([`RETIRED_KEEP`],
    /// [`RETIRED_FOR`]). It does not count for [`Self::status`] (nor so for readiness).
    pub fn start_instance(
        &self,
        definition: &str,
        name: Option<&str>,
        context: Map<String, Json>,
    ) -> Result<Arc<str>, StartError> {
        self.launch_instance(definition, name, context, None)
    }

    /// With a persister: starts again every instance the store records as live (started,
    /// not retired) and as this process's (the store's instance id, or no owner recorded:
    /// [`crate::store::StateStore::claim_instances`]), by name, each with its definition,
    /// saved state, context and pause, as [`Self::start_instance`] would have left it.
    /// Instances another process owns are left to it (taken over only when it is dead:
    /// [`Self::adopt_instances`]). Called once at start, after the machines of the config
    /// files started (their definitions are the ones loaded; an instance of another
    /// definition is not claimed). An instance whose name is taken, or whose saved state is
    /// final or no longer in its definition is left in the store as it is, with a warning
    /// (a final one: started again it would retire at once). Returns the names started.
    pub fn restore_instances(&self) -> Vec<Arc<str>> {
        self.claim_saved(None)
    }

    /// With a persister: takes over the live instances of the loaded definitions whose
    /// owning process's heartbeat is older than `dead_after` (a process that died), and
    /// starts them as [`Self::restore_instances`] does. Among processes doing this at once,
    /// each instance goes to one. Returns the names started.
    pub fn adopt_instances(&self, dead_after: Duration) -> Vec<Arc<str>> {
        self.claim_saved(Some(dead_after))
    }

    fn claim_saved(&self, dead_after: Option<Duration>) -> Vec<Arc<str>> {
        let Some(p) = &self.inner.persist else {
            return Vec::new();
        };
        let definitions: Vec<String> = self.definitions().iter().map(|d| d.to_string()).collect();
        if dead_after.is_none() {
            // This process's instances of definitions not loaded here: not claimed, said.
            let me = p.store().saver_id();
            for rec in p.live_instances().unwrap_or_default() {
                let ours = rec.instance_id.is_none() || rec.instance_id.as_deref() == me;
                if let Some(d) = rec
                    .definition
                    .as_ref()
                    .filter(|d| ours && !definitions.contains(d))
                {
                    tracing::warn!(target: "turnstile::store", machine = %rec.machine_name, definition = %d, "a saved instance's definition is not loaded: not started (its record is kept)");
                }
            }
        }
        if definitions.is_empty() {
            return Vec::new();
        }
        let records = match p.store().claim_instances(&definitions, dead_after) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(target: "turnstile::store", "cannot read the saved instances: {e}");
                return Vec::new();
            }
        };
        let mut started = Vec::new();
        for rec in records {
            let Some(definition) = rec.definition.clone() else {
                continue;
            };
            let name = rec.machine_name.clone();
            let Some(def) = self.definition(&definition) else {
                tracing::warn!(target: "turnstile::store", machine = %name, %definition, "a saved instance's definition is not loaded: not started (its record is kept)");
                continue;
            };
            let Some(restored) = crate::store::Persister::restored_from(&def, rec) else {
                tracing::warn!(target: "turnstile::store", machine = %name, %definition, "a saved instance has no state to start from (none saved, final, or no longer in the definition): not started (its record is kept)");
                continue;
            };
            match self.launch_instance(&definition, Some(&name), Map::new(), Some(restored)) {
                Ok(n) => started.push(n),
                Err(e) => {
                    tracing::warn!(target: "turnstile::store", machine = %name, %definition, "a saved instance could not be started again: {e} (its record is kept)");
                }
            }
        }
        if !started.is_empty() {
            if dead_after.is_some() {
                tracing::info!(target: "turnstile::store", count = started.len(), "instances released at a clean exit or of a dead process taken over");
            } else {
                tracing::info!(target: "turnstile::store", count = started.len(), "saved instances started again");
            }
        }
        started
    }

    /// [`Self::start_instance`], from `restored` when given (then `context` is not used:
    /// the saved context is the instance's).
    fn launch_instance(
        &self,
        definition: &str,
        name: Option<&str>,
        context: Map<String, Json>,
        restored: Option<crate::store::Restored>,
    ) -> Result<Arc<str>, StartError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| StartError::NotRunning)?;
        if self.inner.cancel.is_cancelled() {
            return Err(StartError::NotRunning);
        }
        let def = self
            .definition(definition)
            .ok_or_else(|| StartError::UnknownDefinition(definition.to_owned()))?;
        if self.is_singleton(&def) {
            return Err(StartError::Singleton(definition.to_owned()));
        }
        // A restored instance's name was claimed with it (claim_instances).
        let claim = restored.is_none();
        let shared = match name {
            Some(n) => {
                StartError::check_name(n)?;
                let n: Arc<str> = Arc::from(n);
                let taken = || StartError::NameTaken(n.to_string());
                if self.supervised(&n).is_some()
                    || (claim && self.running_machine(&n).is_some())
                    || (claim && !self.claim_name(&n, &def.name)?)
                {
                    return Err(taken());
                }
                self.route(&def, n.clone(), true).ok_or_else(taken)?
            }
            None => self.generated(&def)?,
        };
        let name = shared.name.clone();
        let def_name = def.name.clone();
        self.inner
            .instances
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .add(&def_name, shared.clone());
        let machine = self.new_machine(shared).with_context(context);
        let persist = self.inner.persist.clone();
        let machine = match &persist {
            Some(p) => {
                p.instance_started(&name, &def_name);
                machine.persisted(p.clone(), restored)
            }
            None => machine,
        };
        let retire = Retire {
            instances: self.inner.instances.clone(),
            persist,
        };
        self.launch(&handle, machine, Some(retire));
        Ok(name)
    }

    /// With a persister: takes `name` for an instance of `definition` in the store (one
    /// conditional write: false when another process's instance holds it,
    /// [`crate::store::StateStore::claim_instance_name`]). Without one, every name is free.
    fn claim_name(&self, name: &str, definition: &str) -> Result<bool, StartError> {
        let Some(p) = &self.inner.persist else {
            return Ok(true);
        };
        // A round trip to the store (longer while it is slow): `POST /machines` and
        // `start_fsm` call this from tasks.
        crate::store::in_place(|| p.store().claim_instance_name(name, definition))
            .map_err(|e| StartError::Store(name.to_owned(), e.to_string()))
    }

    /// An instance of `def` under a free generated name (`definition-N`), routed. With a
    /// persister a name another process's instance holds in the store is skipped, the
    /// counter jumping ahead by doubling steps (another process's run of generated names
    /// costs a few store writes to pass, not one per name).
    fn generated(&self, def: &Arc<MachineDef>) -> Result<Arc<Shared>, StartError> {
        let mut skip: u64 = 1;
        loop {
            let n = self.inner.next_instance.fetch_add(1, Ordering::Relaxed);
            let name: Arc<str> = Arc::from(format!("{}-{n}", def.name));
            if self.supervised(&name).is_some() || self.running_machine(&name).is_some() {
                continue;
            }
            if !self.claim_name(&name, &def.name)? {
                self.inner
                    .next_instance
                    .fetch_max(n.saturating_add(skip), Ordering::Relaxed);
                skip = skip.saturating_mul(2);
                continue;
            }
            if let Some(shared) = self.route(def, name, true) {
                return Ok(shared);
            }
        }
    }

    /// A live operation on the running machine `name` ([`LiveOp`]: pause, resume, step,
    /// stop, restart, a context patch, breakpoints), served by its task between two
    /// events; the answer says where the machine is afterwards. A refused operation
    /// changes nothing.
    pub async fn control(&self, name: &str, op: LiveOp) -> Result<LiveAnswer, LiveError> {
        let Some(shared) = self.running_machine(name) else {
            return Err(match self.machine(name) {
                Some(_) => LiveError::Stopped(name.to_owned()),
                None => LiveError::UnknownMachine(name.to_owned()),
            });
        };
        let (reply, answer) = oneshot::channel();
        if shared.mailbox.live(LiveRequest { op, reply }).is_err() {
            return Err(LiveError::Stopped(name.to_owned()));
        }
        // After the send: the task clears the flag before it reads the channel, so it
        // either sees this request now or finds the flag set at its next event.
        shared.gate.fetch_or(REQUEST, Ordering::Release);
        answer
            .await
            .unwrap_or_else(|_| Err(LiveError::Stopped(name.to_owned())))
    }

    /// Runs `def` from now on: the running machine of that name swaps its definition
    /// between two events (keeping its state when the new definition still has it, and
    /// its context); when no machine of that name runs, a new one starts.
    ///
    /// The definition of that name becomes `def` for the instances started from now on,
    /// and every running instance of it swaps its definition likewise (each between two
    /// of its events).
    ///
    /// A definition the reloaded config's `start_fsm` actions start (their `yaml_path`,
    /// compiled again with the config) is reloaded likewise when it changed, unless a
    /// machine the engine was started with runs it (its own file's reload does).
    pub async fn reload(&self, def: Arc<MachineDef>) -> Result<ReloadOutcome, EngineError> {
        crate::redact::extend_global(&def.redact);
        let changed = self.define(std::slice::from_ref(&def));
        self.reload_instances(&def).await;
        for seed in changed {
            self.reload_instances(&seed).await;
        }
        self.reload_machine(def).await
    }

    /// Every running instance of `def.name` takes `def` (all asked at once, then waited
    /// for); returns how many did.
    async fn reload_instances(&self, def: &Arc<MachineDef>) -> usize {
        let running = self
            .inner
            .instances
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .of(&def.name);
        let mut answers = Vec::with_capacity(running.len());
        for shared in running {
            let (tx, rx) = oneshot::channel();
            if shared
                .mailbox
                .control(Control::Reload(def.clone(), tx))
                .is_ok()
            {
                answers.push(rx);
            }
        }
        let mut n = 0;
        for rx in answers {
            n += usize::from(rx.await.is_ok());
        }
        if n > 0 {
            tracing::info!(target: "turnstile::reload", definition = %def.name, instances = n, "running instances took the new definition");
        }
        n
    }

    /// [`Self::reload`] for the machine the engine was started with.
    async fn reload_machine(&self, def: Arc<MachineDef>) -> Result<ReloadOutcome, EngineError> {
        let name = def.name.to_string();
        let slot = self.supervised(&name);
        if let Some(slot) = &slot {
            // The next tenure runs it; the copy running now (if any) reloads below.
            *slot.def.write().unwrap_or_else(|e| e.into_inner()) = def.clone();
        }
        if let Some(shared) = self.running_config_machine(&name) {
            let (tx, rx) = oneshot::channel();
            if shared
                .mailbox
                .control(Control::Reload(def.clone(), tx))
                .is_ok()
            {
                return match rx.await {
                    Ok(Reloaded {
                        state,
                        removed: None,
                    }) => Ok(ReloadOutcome::Updated {
                        id: shared.id,
                        state,
                    }),
                    Ok(Reloaded {
                        state,
                        removed: Some(removed),
                    }) => Ok(ReloadOutcome::StateRemoved {
                        id: shared.id,
                        removed,
                        state,
                    }),
                    Err(_) => Err(EngineError::Stopped(name)),
                };
            }
            // It stopped in the meantime: start the new definition instead.
        }
        if let Some(slot) = slot {
            return Ok(ReloadOutcome::Standby { id: slot.id });
        }
        let id = self.spawn(def)?;
        Ok(ReloadOutcome::Started { id })
    }

    /// Stops the running machine of that name (a config reload removed it): a waiting
    /// action is interrupted, the observer is told (`StopReason::Removed`) and the name is
    /// free again. Returns false when no machine of that name was running.
    pub async fn stop_machine(&self, name: &str) -> bool {
        if let Some(slot) = self.supervised(name) {
            // Its supervisor ends (after the running copy, if any, stops below).
            slot.removed.cancel();
        }
        let Some(shared) = self.running_machine(name) else {
            return false;
        };
        let (tx, rx) = oneshot::channel();
        if shared
            .mailbox
            .control(Control::Stop(StopReason::Removed, tx))
            .is_err()
        {
            return false;
        }
        rx.await.is_ok()
    }

    /// Number of machines still running.
    pub fn running(&self) -> usize {
        self.status_handle().running()
    }

    /// Asks every machine to stop: waiting actions are cancelled (commands killed).
    pub fn shutdown(&self) {
        self.inner.cancel.cancel();
        // Parked instances are resumed to see it (none parks from now on: see
        // `runtime/launch.rs`).
        let live: Vec<Arc<Shared>> = self
            .inner
            .instances
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .all_live()
            .cloned()
            .collect();
        for s in live {
            s.mailbox.unpark();
        }
    }

    /// Waits until every machine has stopped (final states or [`Engine::shutdown`]).
    /// Cancel-safe: dropping the future and calling it again is fine.
    pub async fn join(&self) {
        let mut rx = self.inner.running.subscribe();
        // The sender lives in `self`, so this only ends when the count reaches zero.
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// The running instance `name` is parked without a task (for the engine's own tests).
    #[cfg(test)]
    pub(crate) fn parked(&self, name: &str) -> bool {
        self.running_machine(name)
            .is_some_and(|s| s.mailbox.is_parked())
    }

    /// The running instance `name` is parked in compact form (for the engine's own tests).
    #[cfg(test)]
    pub(crate) fn parked_compact(&self, name: &str) -> bool {
        self.running_machine(name)
            .is_some_and(|s| s.mailbox.is_parked() && s.compact.load(Ordering::Relaxed))
    }

    /// Waits until `name` is in `state`, up to `timeout`. For the engine's own unit tests;
    /// integration tests have `wait_for_state` in `engine/tests/support/wait.rs`, built on
    /// [`Engine::machine`].
    #[cfg(test)]
    pub(crate) async fn wait_for_state(&self, name: &str, state: &str, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.machine(name).is_some_and(|m| &*m.state == state) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl singleton::Host for Engine {
    fn cancel_token(&self) -> CancellationToken {
        self.inner.cancel.clone()
    }

    fn start_tenure(
        &self,
        def: Arc<MachineDef>,
        tenure: Arc<Tenure>,
        persister: crate::store::Persister,
        restored: Option<crate::store::Restored>,
    ) -> Result<singleton::Run, String> {
        let machine = {
            let mut machines = self
                .inner
                .machines
                .write()
                .unwrap_or_else(|e| e.into_inner());
            self.register(&mut machines, def)
                .map_err(|e| e.to_string())?
        };
        let machine = machine.persisted(persister, restored).tenured(tenure);
        Ok(Box::pin(machine.run()))
    }

    fn remote(&self) -> Option<Arc<dyn crate::runtime::router::Remote>> {
        Engine::remote(self)
    }

    fn forget_stopped(&self, name: &str) {
        self.inner
            .machines
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| &*s.name != name || s.running.load(Ordering::Acquire));
    }
}

fn status_of(s: &Shared) -> MachineStatus {
    // The definition and the state index are replaced together under this lock.
    let def = s.def.read().unwrap_or_else(|e| e.into_inner());
    let state = s.state.load(Ordering::Relaxed);
    MachineStatus {
        id: s.id,
        name: s.name.clone(),
        state: def
            .states
            .get(state)
            .map_or_else(|| Arc::from(""), |st| st.name.clone()),
        since: UNIX_EPOCH + Duration::from_millis(s.since_ms.load(Ordering::Relaxed)),
        last_active: UNIX_EPOCH + Duration::from_millis(s.active_ms.load(Ordering::Relaxed)),
        transitions: s.transitions.load(Ordering::Relaxed),
        events: s.events.load(Ordering::Relaxed),
        errors: s.errors.load(Ordering::Relaxed),
        queue_depth: s.mailbox.len(),
        running: s.running.load(Ordering::Acquire),
        paused: s.paused.load(Ordering::Relaxed),
        stop_reason: *s.stop_reason.lock().unwrap_or_else(|e| e.into_inner()),
        def: def.clone(),
        instance: s.instance,
    }
}

/// The definitions `def`'s `start_fsm` actions start.
fn seeds(def: &MachineDef) -> Vec<Arc<MachineDef>> {
    def.states
        .iter()
        .flat_map(|s| s.entry.iter())
        .chain(def.rules.iter().flat_map(|r| r.actions.iter()))
        .filter_map(|a| {
            a.action
                .starts()?
                .downcast_ref::<Arc<MachineDef>>()
                .cloned()
        })
        .collect()
}

/// True when both paths name one file (a config named on the command line and the same
/// file reached through a `start_fsm`'s `yaml_path`, written another way).
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn map_deliver(target: &str, e: DeliverError) -> SendError {
    match e {
        DeliverError::Unknown(_) => SendError::UnknownMachine(target.to_owned()),
        DeliverError::Closed => SendError::Stopped(target.to_owned()),
        DeliverError::Full(..) => SendError::QueueFull(target.to_owned()),
    }
}

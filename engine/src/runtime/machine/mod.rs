//! One machine's task: its queue, its current state and context, the actions it is running.
//!
//! Everything a machine does happens on its own task, one event at a time (run to
//! completion). The task is written as the machine it runs: a loop over [`Phase`]s, one
//! function per phase, each returning the phase that comes next.
//!
//! ```text
//!          start: the initial state's entry actions are to run
//!            |
//!            v
//!  +--> [ Running ] -+  one step (the event an action returned, or the next action),
//!  |      | | | |  <-+  then Running again
//!  |      | | | |
//!  |      | | | +--> [ Stopped ]  nothing left to run in a final state
//!  |      | | +----> [ Idle ]     nothing left to run (settled: reported, saved): a     |
//!  |      | |                     queued event at once, or select as in Waiting --------+
//!  |      | +------> [ Waiting ]  the action started waits: select on it, the queue,    |
//!  |      |                       requests, the timer, the loss of the job claim held:  |
//!  |      |                       whatever comes first ---------------------------------+
//!  |      +--------> [ Yield ]    the 64th returned event in a row: yield, let one      |
//!  |                              queued event in, then the chain goes on --------------+
//!  +------------------------------------------------------------------------------------+
//!
//!  Idle --> [ Park ]: an instance with nothing queued, no timer armed, no action
//!  waiting, not paused: the loop returns ([`Outcome::Park`]) and the machine parks in
//!  its mailbox without a task; the next event or request resumes it in Idle
//!  (`runtime/launch.rs`). Parked at rest, it keeps only a compact form of itself
//!  ([`parked`]).
//!  Idle, Waiting, Yield --> [ Stopped ]: shutdown, Control::Stop, the queue closed.
//!  Running, Idle, Waiting --> [ Stopped ]: a singleton's lease tenure ended (checked
//!  before each action; Idle and Waiting wake at its deadline).
//!  Every event goes through the gate ([`gate`]) on its way into Running: paused, or a
//!  breakpoint matching it --> [ Paused ]  hold it; wait for requests (resume, step,
//!  stop, ...) and the action still waiting; then Running again.
//! ```
//!
//! Rules the phases keep (docs/config.md "Events and the order of things"):
//! - An event an action returns is processed at once, in [`Phase::Running`], before the
//!   task looks at its queue; if it changes state the old state's remaining actions are
//!   skipped (a new [`Entry`] starts).
//! - Quick actions run inline, one per [`Phase::Running`] step; an action that waits is a
//!   future polled in [`Phase::Waiting`] together with the queue, requests and the
//!   `timeout(N)` timer, so an event that triggers a transition interrupts it. An idle
//!   machine waits in `select!` (it uses no CPU), or, an instance, parks without a task.
//! - Its events and requests come through one mailbox (`runtime/mailbox.rs`).
//! - Queued events get in only in [`Phase::Idle`] (between chains of returned events),
//!   or every [`phases::FAIRNESS`] steps of a chain, in [`Phase::Yield`]. A busy machine
//!   takes queued events without `select!` ([`phases::FAST_BUDGET`] in a row).
//!
//! Pause, step and breakpoints are a gate in front of every event, not a flag inside the
//! phases ([`gate`]): each door an event comes in by (the queue, an action's returned
//! event, a timer) calls [`Machine::admit`](gate), which costs one relaxed load and one
//! branch while nothing is paused and no breakpoint is set. A held event parks the task
//! in [`Phase::Paused`], which waits only for requests ([`Control`] and the live
//! operations) and shutdown, and for the action still waiting: pause never interrupts an
//! action, and an action cancelled from outside is one more way out of
//! [`Phase::Waiting`]: one such is the loss of the job claim the machine holds (its
//! commit failed), which ends the waiting action as an error ([`actions`]).
//!
//! The parts: [`phases`] (the loop's phases), [`events`] (an event: its rule, the
//! transition, the livelock guard), [`actions`] (running and waiting for actions),
//! [`measure`] (clock readings for the observer), [`timers`] (`timeout(N)`), [`control`]
//! (requests: snapshot, reload, stop), [`gate`] (pause, step, breakpoints and the live
//! operations), [`parked`] (the compact form of an instance parked at rest).

mod actions;
mod control;
mod events;
mod gate;
mod measure;
mod parked;
mod phases;
mod timers;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::{Map, Value as Json};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

pub(crate) use control::{Control, Reloaded};
pub(crate) use gate::{LiveRequest, REQUEST};
pub(crate) use parked::Parkable;

use super::def::MachineDef;
use super::event::Event;
use super::mailbox::{Mailbox, TrySendError};
pub(crate) type Msg = super::mailbox::Msg<Control, LiveRequest>;
use super::router::{EventQueue, Router};
use crate::observe::{
    ErrorKind, ErrorReport, MachineRef, Observer, ObserverSlot, StateRef, StopReason,
};
use actions::Waiting;
use events::{Entry, Livelock};
use gate::Gate;
use measure::Measure;
use phases::{Chain, Phase};
use timers::Timers;

/// What the engine can read about a machine without asking its task.
pub(crate) struct Shared {
    pub id: usize,
    /// The machine's name (never changes: a config that renames a machine starts another).
    /// For a config machine, its definition's name; for an instance started at run time,
    /// its own (the definition's name stays `def.name`, shared by all its instances).
    pub name: Arc<str>,
    /// Started at run time as an instance of its definition ([`crate::runtime::engine::Engine::start_instance`]).
    pub instance: bool,
    /// The definition it runs; replaced by a reload, together with `state`, under the lock.
    pub def: RwLock<Arc<MachineDef>>,
    pub state: AtomicUsize,
    pub since_ms: AtomicU64,
    /// Unix milliseconds of the machine's last activity ([`Machine::note_activity`]):
    /// written by its task when it stops to wait after having done something, so at
    /// most once per wait, not once per event.
    pub active_ms: AtomicU64,
    pub transitions: AtomicU64,
    pub events: AtomicU64,
    pub errors: AtomicU64,
    pub running: AtomicBool,
    /// Its events, engine requests ([`Control`]) and live operations ([`LiveRequest`]:
    /// served at the gate, or wherever the task waits); the machine itself while it is
    /// parked without a task.
    pub mailbox: Mailbox<Control, LiveRequest>,
    /// The gate's flags: [`gate::REQUEST`] after a live request is sent, [`gate::ARMED`]
    /// while the machine is paused, [`gate::BREAKPOINTS`] while it has breakpoints; one
    /// relaxed load per event when clear ([`gate`]).
    pub gate: AtomicU8,
    /// Paused (by request or a breakpoint).
    pub paused: AtomicBool,
    pub stop_reason: Mutex<Option<StopReason>>,
    /// State and context at the moment the machine stopped (boxed: unset while it runs,
    /// and inline it would take 80 bytes more of every idle instance).
    pub last_context: Mutex<Option<Box<StateAndContext>>>,
    /// Parked in compact form ([`Parkable`]; for the engine's own tests).
    #[cfg(test)]
    pub compact: AtomicBool,
}

impl EventQueue for Shared {
    fn try_send(&self, ev: Event) -> Result<(), TrySendError> {
        self.mailbox.try_send(ev)
    }

    fn space(&self) -> &tokio::sync::Notify {
        self.mailbox.space()
    }

    fn is_closed(&self) -> bool {
        self.mailbox.is_closed()
    }
}

/// What the loop over the phases waits for next, or how it ends.
enum Wait {
    /// [`Machine::wait`]'s `select!` (Idle, Waiting).
    Select,
    Yield,
    Paused,
    Stop(Outcome),
}

/// How a machine's phases ended ([`Machine::phases`]).
pub(crate) enum Outcome {
    /// It stopped; [`Machine::finish`] is to be called.
    Stopped(StopReason),
    /// Nothing to do, nothing queued, no timer armed, no action running, not paused: it
    /// may park without a task until its next event or request (only when
    /// [`Machine::parkable`]).
    Park,
}

/// A state's name and a context.
pub(crate) type StateAndContext = (Arc<str>, Map<String, Json>);

/// Saves the state and context after each transition (`--persist`).
struct Persist {
    to: Option<crate::store::Persister>,
    /// A transition happened since the state was last saved with its context as the
    /// entry actions left it.
    dirty: bool,
    /// The store event (of the event table) being handled: its mark goes with the save
    /// of the transition it causes ([`crate::store::Persister::entered`]).
    handling: Option<i64>,
}

impl Persist {
    /// Not persisted.
    fn none() -> Self {
        Self {
            to: None,
            dirty: false,
            handling: None,
        }
    }
}

pub(crate) struct Machine {
    shared: Arc<Shared>,
    def: Arc<MachineDef>,
    /// The observer's per-machine storage, filled in `machine_started` (a fresh one after
    /// each reload). Owned by the task: reading it takes no lock.
    slot: ObserverSlot,
    observer: Option<Arc<dyn Observer>>,
    router: Arc<Router>,
    state: usize,
    context: Map<String, Json>,
    /// Pause, the held event, breakpoints.
    gate: Gate,
    cancel: CancellationToken,
    /// Who asked the machine to stop ([`Control::Stop`]), told once it has.
    stop_reply: Option<oneshot::Sender<()>>,
    /// The current state entry: what caused it, how far its actions have run.
    entry: Entry,
    /// The action being waited for ([`Phase::Waiting`]).
    waiting: Option<Waiting>,
    /// The job this machine claimed, while its claim may still be lost (answered before
    /// its commit): a waiting action is cancelled if it is ([`actions::HeldClaim`]).
    claim: Option<actions::HeldClaim>,
    /// The event an action returned, to process next, and the fairness counts.
    chain: Chain,
    timers: Timers,
    livelock: Livelock,
    measure: Measure,
    persist: Persist,
    /// The lease tenure of a singleton machine ([`crate::runtime::singleton`]): checked
    /// before each action, and waited on while the machine parks; when it ends the
    /// machine stops ([`StopReason::LeaseLost`]).
    tenure: Option<Arc<crate::runtime::tenure::Tenure>>,
    /// Actions finished so far (quick or waiting), for [`Machine::note_activity`].
    actions_finished: u64,
    /// Events processed plus actions finished when the activity was last noted.
    activity_seen: u64,
    /// May park without a task when idle ([`Outcome::Park`]): run by `runtime/launch.rs`.
    parkable: bool,
}

impl Machine {
    pub(crate) fn new(
        shared: Arc<Shared>,
        router: Arc<Router>,
        observer: Option<Arc<dyn Observer>>,
        cancel: CancellationToken,
        livelock_limit: u32,
    ) -> Self {
        let def = shared.def.read().unwrap_or_else(|e| e.into_inner()).clone();
        Self {
            state: def.initial,
            context: def.context.clone(),
            def,
            slot: ObserverSlot::new(),
            stop_reply: None,
            shared,
            gate: Gate::default(),
            router,
            measure: Measure::new(observer.as_ref().is_some_and(|o| o.observes_starts())),
            observer,
            cancel,
            entry: Entry::start(),
            waiting: None,
            claim: None,
            chain: Chain::new(),
            timers: Timers::new(),
            livelock: Livelock::new(livelock_limit),
            persist: Persist::none(),
            tenure: None,
            actions_finished: 0,
            activity_seen: 0,
            parkable: false,
        }
    }

    /// Starts with `context` merged over the definition's (an instance's initial context:
    /// its top-level keys replace the definition's).
    pub(crate) fn with_context(mut self, context: Map<String, Json>) -> Self {
        self.context.extend(context);
        self
    }

    /// Runs only while `tenure` holds (a singleton machine).
    pub(crate) fn tenured(mut self, tenure: Arc<crate::runtime::tenure::Tenure>) -> Self {
        self.tenure = Some(tenure);
        self
    }

    /// The definition it runs.
    pub(crate) fn def(&self) -> &Arc<MachineDef> {
        &self.def
    }

    /// The router it sends through.
    pub(crate) fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Its shared status (and mailbox).
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// May park without a task when it has nothing to do ([`Outcome::Park`]).
    pub(crate) fn parkable(mut self) -> Self {
        self.parkable = true;
        self
    }

    /// The engine is shutting down.
    pub(crate) fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Persists this machine's state after each transition, starting from `restored`
    /// (a saved state index, context and pause) when given.
    pub(crate) fn persisted(
        mut self,
        p: crate::store::Persister,
        restored: Option<crate::store::Restored>,
    ) -> Self {
        if let Some(r) = restored {
            self.state = r.state;
            self.context = r.context;
            self.shared.state.store(r.state, Ordering::Relaxed);
            if r.paused {
                self.start_paused();
            }
        }
        self.persist.to = Some(p);
        self
    }

    /// Runs the machine until it reaches a final state or the engine shuts down; returns
    /// why it stopped.
    pub(crate) async fn run(mut self) -> StopReason {
        self.parkable = false;
        self.started();
        let Outcome::Stopped(reason) = self.phases(Phase::Running).await else {
            unreachable!("a machine that may not park parked")
        };
        self.finish(reason);
        reason
    }

    /// Starts a parkable machine: announced, saved, its timers armed, its initial state's
    /// entry actions run; then its phases, until it stops or parks.
    pub(crate) async fn begin(&mut self) -> Outcome {
        self.started();
        self.phases_boxed(Phase::Running).await
    }

    /// Resumes a parked machine: its phases from [`Phase::Idle`] (the event or request
    /// that resumed it is in its mailbox).
    pub(crate) async fn resume(&mut self) -> Outcome {
        self.phases_boxed(Phase::Idle).await
    }

    /// The loop over the phases, from `phase`, until the machine stops or parks.
    ///
    /// A parkable machine (an instance, whose task is spawned again each time it is
    /// resumed) runs [`Self::phases_boxed`] instead ([`Self::begin`], [`Self::resume`]).
    async fn phases(&mut self, mut phase: Phase) -> Outcome {
        loop {
            phase = match self.next_sync(phase) {
                Ok(next) => next,
                Err(Wait::Stop(outcome)) => return outcome,
                Err(Wait::Select) => self.wait().await,
                Err(Wait::Yield) => self.yield_to_queue().await,
                Err(Wait::Paused) => self.paused_phase().await,
            };
        }
    }

    /// [`Self::phases`] with each wait boxed: the future of a parkable machine's task is
    /// then a few words, not the kilobyte or so of the `select!`s, which it would allocate
    /// each time it is resumed; it allocates only when it really waits.
    async fn phases_boxed(&mut self, mut phase: Phase) -> Outcome {
        loop {
            phase = match self.next_sync(phase) {
                Ok(next) => next,
                Err(Wait::Stop(outcome)) => return outcome,
                Err(Wait::Select) => Box::pin(self.wait()).await,
                Err(Wait::Yield) => Box::pin(self.yield_to_queue()).await,
                Err(Wait::Paused) => Box::pin(self.paused_phase()).await,
            };
        }
    }

    /// One step of the loop that needs no waiting, else what to wait for.
    #[inline]
    fn next_sync(&mut self, phase: Phase) -> Result<Phase, Wait> {
        match phase {
            Phase::Running => Ok(self.running()),
            Phase::Idle => match self.take_queued() {
                Some(next) => Ok(next),
                None => self.before_wait().ok_or(Wait::Select),
            },
            Phase::Waiting => self.before_wait().ok_or(Wait::Select),
            Phase::Yield => Err(Wait::Yield),
            Phase::Paused => {
                self.note_activity();
                Err(Wait::Paused)
            }
            Phase::Park => Err(Wait::Stop(Outcome::Park)),
            Phase::Stopped(reason) => Err(Wait::Stop(Outcome::Stopped(reason))),
        }
    }

    /// The machine stopped (`reason`): reported, its last state kept, its mailbox closed,
    /// whoever asked it to stop told.
    pub(crate) fn finish(&mut self, reason: StopReason) {
        self.stop(reason);
        if let Some(reply) = self.stop_reply.take() {
            let _ = reply.send(());
        }
        self.answer_stop();
    }

    /// The machine is about to wait (parked, paused, or yielding in a long chain): when it
    /// processed an event or finished an action since the last time, now is its last
    /// activity (`Shared::active_ms`, `/healthz/machines`). One comparison while nothing
    /// happened; one coarse clock reading and one relaxed store otherwise, so a busy
    /// machine pays it once per wait (at most every [`phases::FAST_BUDGET`] events), not
    /// per event.
    fn note_activity(&mut self) {
        let done = self
            .shared
            .events
            .load(Ordering::Relaxed)
            .wrapping_add(self.actions_finished);
        if done != self.activity_seen {
            self.activity_seen = done;
            self.shared
                .active_ms
                .store(crate::runtime::clock::coarse_unix_ms(), Ordering::Relaxed);
        }
    }

    /// Saves the state again once its entry actions have run (their context changes).
    fn save_settled(&mut self) {
        self.persist.dirty = false;
        // The save is not part of the next event: it starts with a clock reading.
        self.measure.forget_end();
        self.save(None);
    }

    /// Saves the current state and context, with the transition that led there (and the
    /// mark of the store event that caused it).
    fn save(&mut self, from: Option<(&str, &str, Option<&str>)>) {
        let processed = if from.is_some() {
            self.persist.handling.take()
        } else {
            None
        };
        if let Some(p) = &self.persist.to {
            p.entered(
                &self.shared.name,
                &self.def.states[self.state].name,
                &self.context,
                from,
                processed,
                self.gate.paused,
            );
        }
    }

    fn mref(&self) -> MachineRef<'_> {
        MachineRef {
            id: self.shared.id,
            name: &self.shared.name,
            def: &self.def,
            slot: &self.slot,
            instance: self.shared.instance,
        }
    }

    fn sref(&self, s: usize) -> StateRef<'_> {
        StateRef {
            id: s,
            name: &self.def.states[s].name,
        }
    }

    fn queue_depth(&self) -> usize {
        self.shared.mailbox.len()
    }

    fn report_error(&self, kind: ErrorKind, event: Option<&Event>, message: &str) {
        self.shared.errors.fetch_add(1, Ordering::Relaxed);
        self.error_breakpoint(event);
        let state = &*self.def.states[self.state].name;
        if let Some(o) = &self.observer {
            o.error(&ErrorReport {
                kind,
                machine: Some(self.mref()),
                state: Some(state),
                event,
                message,
            });
        }
        tracing::warn!(
            target: "turnstile::error",
            machine = %self.shared.name,
            state,
            kind = kind.as_str(),
            "{message}"
        );
    }
}

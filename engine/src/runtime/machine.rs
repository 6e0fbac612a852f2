//! One machine's task: its queue, its current state and context, the actions it is running.
//!
//! Everything a machine does happens on its own task, one event at a time (run to
//! completion). Quick actions run inline; an action that waits is a future polled
//! together with the queue and the `timeout(N)` timer, so an event that triggers a
//! transition interrupts it. An idle machine is parked in `select!`: it uses no CPU.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::{Map, Value as Json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::clock::{Ticks, WallAnchor};
use super::def::{ActionDef, MachineDef};
use super::event::{Event, Origin};
use super::router::Router;
use super::trace::TraceContext;
use crate::actions::{ActionCx, ActionFuture, JobChange, Outcome, Status, Step};
use crate::observe::{
    ActionEnd, ActionOutcome, ActionReport, ErrorKind, ErrorReport, EventOutcome, EventReport,
    MachineRef, Observer, ObserverSlot, QuickObserver, StateRef, StopReason, TransitionReport,
};

/// Action-driven events processed back to back before the task yields and lets one
/// queued external event in.
const FAIRNESS: u32 = 64;
/// Queued events taken without going through `select!` before checking the rest.
const FAST_BUDGET: u32 = 256;

/// What the engine can read about a machine without asking its task.
pub(crate) struct Shared {
    pub id: usize,
    /// The machine's name (never changes: a config that renames a machine starts another).
    pub name: Arc<str>,
    /// The definition it runs; replaced by a reload, together with `state`, under the lock.
    pub def: RwLock<Arc<MachineDef>>,
    pub state: AtomicUsize,
    pub since_ms: AtomicU64,
    pub transitions: AtomicU64,
    pub events: AtomicU64,
    pub errors: AtomicU64,
    pub running: AtomicBool,
    pub tx: mpsc::Sender<Event>,
    pub ctl: mpsc::UnboundedSender<Control>,
    pub stop_reason: Mutex<Option<StopReason>>,
    /// State and context at the moment the machine stopped.
    pub last_context: Mutex<Option<StateAndContext>>,
}

/// A state's name and a context.
pub(crate) type StateAndContext = (Arc<str>, Map<String, Json>);

/// Requests to a machine's task.
pub(crate) enum Control {
    /// Reply with the current state and context.
    Snapshot(oneshot::Sender<StateAndContext>),
    /// Run this definition from now on (between two events); reply with the state the
    /// machine is in afterwards and, when its state no longer exists, the removed one.
    Reload(Arc<MachineDef>, oneshot::Sender<Reloaded>),
    /// Stop (interrupting a waiting action); reply once stopped.
    Stop(StopReason, oneshot::Sender<()>),
}

/// What a reload did to a running machine.
pub(crate) struct Reloaded {
    /// The state it is in now.
    pub state: Arc<str>,
    /// The state it was in, when the new definition no longer has it.
    pub removed: Option<Arc<str>>,
}

struct Waiting {
    fut: ActionFuture,
    action: ActionDef,
    index: usize,
    /// A [`Ticks`] reading, taken only when an observer is attached.
    started: Option<u64>,
}

/// The event whose transition started the actions now running.
struct Active {
    from: usize,
    to: usize,
    event_id: usize,
    /// When the transition happened (a [`Ticks`] reading, with an observer).
    started: Option<u64>,
}

pub(crate) struct Machine {
    shared: Arc<Shared>,
    def: Arc<MachineDef>,
    /// The observer's per-machine storage, filled in `machine_started` (a fresh one after
    /// each reload). Owned by the task: reading it takes no lock.
    slot: ObserverSlot,
    /// Who asked the machine to stop ([`Control::Stop`]), told once it has.
    stop_reply: Option<oneshot::Sender<()>>,
    state: usize,
    context: Map<String, Json>,
    rx: mpsc::Receiver<Event>,
    ctl: mpsc::UnboundedReceiver<Control>,
    router: Arc<Router>,
    observer: Option<Arc<dyn Observer>>,
    /// The clock durations are measured with; present when an observer is attached (set
    /// when the task starts: the process's first one calibrates the TSC, which takes a
    /// while, and `Machine::new` runs under the engine's lock).
    ticks: Option<Ticks>,
    /// What the observer handed back for action-less events ([`Observer::quick_observer`]),
    /// asked again after each reload.
    quick: Option<Box<dyn QuickObserver>>,
    /// When the last event ended, if it triggered no action and nothing has happened since
    /// but taking the next one from the queue: the next transition is then timed at that
    /// instant, without another clock reading (see [`Machine::handle`]). Cleared when
    /// anything else comes first: the task may wait (`select!`, a yield), an event is
    /// ignored or refused, the state is saved.
    last_end: Option<u64>,
    /// Turns a transition's TSC reading into the machine's "in this state since" (used
    /// with `ticks`): no second clock call per transition.
    wall: WallAnchor,
    /// The observer wants `event_started` and `action_started` ([`Observer::observes_starts`]).
    starts: bool,
    cancel: CancellationToken,
    /// The rule whose transition actions run before the entry actions, if any.
    rule: Option<usize>,
    /// Next action to run: an index into the rule's actions followed by the entry actions.
    pos: usize,
    /// The event that caused the current state entry: actions see its payload.
    cause: Event,
    /// The trace context of the event now running (its span, or what it carried in):
    /// events its actions return or send continue it.
    trace: Option<TraceContext>,
    active: Option<Active>,
    chain: Option<Event>,
    chained: u32,
    waiting: Option<Waiting>,
    timer_base: tokio::time::Instant,
    timer_next: usize,
    self_loops: u32,
    /// When the current state was entered (a [`Ticks`] reading, with an observer).
    entered: Option<u64>,
    /// Consecutive re-entries of a state by its own actions' events, with nothing waiting
    /// in between, after which the next one is refused (`ErrorKind::Livelock`).
    livelock_limit: u32,
    /// Saves the state and context after each transition (`--persist`).
    persist: Option<crate::store::Persister>,
    /// A transition happened since the state was last saved with its context as the
    /// entry actions left it.
    persist_dirty: bool,
}

impl Machine {
    pub(crate) fn new(
        shared: Arc<Shared>,
        rx: mpsc::Receiver<Event>,
        ctl: mpsc::UnboundedReceiver<Control>,
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
            rx,
            ctl,
            router,
            starts: observer.as_ref().is_some_and(|o| o.observes_starts()),
            ticks: None,
            quick: None,
            last_end: None,
            wall: WallAnchor::UNSET,
            observer,
            cancel,
            rule: None,
            pos: 0,
            cause: Event::new("start").with_origin(Origin::Start),
            trace: None,
            active: None,
            chain: None,
            chained: 0,
            waiting: None,
            timer_base: tokio::time::Instant::now(),
            timer_next: usize::MAX,
            self_loops: 0,
            entered: None,
            livelock_limit,
            persist: None,
            persist_dirty: false,
        }
    }

    /// Saves the state again once its entry actions have run (their context changes).
    fn save_settled(&mut self) {
        self.persist_dirty = false;
        // The save is not part of the next event: it starts with a clock reading.
        self.last_end = None;
        if let Some(p) = &self.persist {
            p.entered(
                &self.def.name,
                &self.def.states[self.state].name,
                &self.context,
                None,
            );
        }
    }

    /// The definition it runs.
    pub(crate) fn def(&self) -> &Arc<MachineDef> {
        &self.def
    }

    /// Persists this machine's state after each transition, starting from `restored`
    /// (a saved state index and context) when given.
    pub(crate) fn persisted(
        mut self,
        p: crate::store::Persister,
        restored: Option<(usize, Map<String, Json>)>,
    ) -> Self {
        if let Some((state, context)) = restored {
            self.state = state;
            self.context = context;
            self.shared.state.store(state, Ordering::Relaxed);
        }
        self.persist = Some(p);
        self
    }

    fn mref(&self) -> MachineRef<'_> {
        MachineRef {
            id: self.shared.id,
            name: &self.def.name,
            def: &self.def,
            slot: &self.slot,
        }
    }

    fn sref(&self, s: usize) -> StateRef<'_> {
        StateRef {
            id: s,
            name: &self.def.states[s].name,
        }
    }

    /// Runs the machine until it reaches a final state or the engine shuts down.
    pub(crate) async fn run(mut self) {
        self.shared
            .since_ms
            .store(super::clock::coarse_unix_ms(), Ordering::Relaxed);
        if let Some(o) = &self.observer {
            self.ticks = Some(Ticks::new());
            self.entered = self.tick();
            o.machine_started(self.mref(), self.sref(self.state));
            self.quick = o.quick_observer(self.mref());
        }
        tracing::info!(
            target: "turnstile::machine",
            machine = %self.def.name,
            state = %self.def.states[self.state].name,
            "machine started"
        );
        if let Some(p) = &self.persist {
            p.entered(
                &self.def.name,
                &self.def.states[self.state].name,
                &self.context,
                None,
            );
        }
        self.arm_timers();
        let mut fast = FAST_BUDGET;
        let reason = loop {
            if let Some(ev) = self.chain.take() {
                self.chained += 1;
                if self.chained >= FAIRNESS {
                    self.chained = 0;
                    self.last_end = None;
                    tokio::task::yield_now().await;
                    if self.cancel.is_cancelled() {
                        break StopReason::Shutdown;
                    }
                    if let Ok(ext) = self.rx.try_recv() {
                        if self.handle(ext) {
                            // The state the chained event belonged to was left.
                            continue;
                        }
                    }
                }
                self.handle(ev);
                continue;
            }
            if self.waiting.is_none() {
                if self.has_next_action() {
                    self.step();
                    continue;
                }
                self.finish_active();
                if self.persist_dirty {
                    self.save_settled();
                }
                if self.def.states[self.state].is_final {
                    break StopReason::FinalState;
                }
                if self.timer_next == usize::MAX && fast > 0 {
                    match self.rx.try_recv() {
                        Ok(ev) => {
                            fast -= 1;
                            // A new chain may start from this event: the fairness count
                            // is per chain, so a short chain is never cut into.
                            self.chained = 0;
                            // Taken without waiting: after an action-less event, its
                            // transition is timed at that event's end (`last_end`).
                            self.handle(ev);
                            continue;
                        }
                        Err(mpsc::error::TryRecvError::Empty) => {}
                        Err(mpsc::error::TryRecvError::Disconnected) => break StopReason::Shutdown,
                    }
                }
            }
            // `select!` below is where the task parks (or runs out of coop budget):
            // the count of events chained without a yield starts again.
            self.chained = 0;
            fast = FAST_BUDGET;
            // The task may wait here: the next event's start is read from the clock.
            self.last_end = None;
            let deadline = self.deadline();
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => break StopReason::Shutdown,
                Some(c) = self.ctl.recv() => if let Some(r) = self.control(c) {
                    break r;
                },
                ev = self.rx.recv() => match ev {
                    Some(ev) => { self.handle(ev); }
                    None => break StopReason::Shutdown,
                },
                out = wait_action(&mut self.waiting), if self.waiting.is_some() => {
                    self.finish_waiting(out);
                }
                () = sleep_opt(deadline), if deadline.is_some() => self.fire_timer(),
            }
        };
        self.stop(reason);
        if let Some(reply) = self.stop_reply.take() {
            let _ = reply.send(());
        }
    }

    fn stop(&mut self, reason: StopReason) {
        self.interrupt_waiting();
        self.finish_active();
        if let Ok(mut r) = self.shared.stop_reason.lock() {
            *r = Some(reason);
        }
        if let Ok(mut c) = self.shared.last_context.lock() {
            *c = Some((
                self.def.states[self.state].name.clone(),
                std::mem::take(&mut self.context),
            ));
        }
        self.rx.close();
        // Snapshot requests already queued are answered from `last_context` by the engine.
        self.ctl.close();
        self.shared.running.store(false, Ordering::Release);
        if let Some(o) = &self.observer {
            o.machine_stopped(self.mref(), self.sref(self.state), reason);
        }
        tracing::info!(
            target: "turnstile::machine",
            machine = %self.def.name,
            state = %self.def.states[self.state].name,
            reason = ?reason,
            "machine stopped"
        );
    }

    /// Handles a request; returns a reason when the machine must stop.
    fn control(&mut self, c: Control) -> Option<StopReason> {
        match c {
            Control::Snapshot(reply) => {
                let _ = reply.send((
                    self.def.states[self.state].name.clone(),
                    self.context.clone(),
                ));
            }
            Control::Reload(def, reply) => {
                let r = self.reload(def);
                let _ = reply.send(r);
            }
            Control::Stop(reason, reply) => {
                self.stop_reply = Some(reply);
                return Some(reason);
            }
        }
        None
    }

    /// Swaps in a new definition. This runs on the machine's task between two events, so
    /// no event ever sees half of one definition and half of the other.
    ///
    /// - The current state is looked up by name. When it still exists the machine stays in
    ///   it: no entry actions run again, a waiting action keeps running (its result event
    ///   is routed by the new rules) and the actions after it are the new definition's
    ///   entry actions from the same position on; the state's `timeout(N)` timers keep
    ///   their deadlines unless the new definition changed them (then they start again).
    /// - When it is gone, a waiting action is interrupted, the machine goes to the new
    ///   initial state, runs its entry actions, and an error (`state_removed`) says why.
    /// - The context is kept either way; keys of the new initial context that it lacks
    ///   are added.
    fn reload(&mut self, new: Arc<MachineDef>) -> Reloaded {
        let old_state = self.state;
        let old_name = self.def.states[old_state].name.clone();
        let mapped = new.state_index(&old_name);
        // The event whose actions ran so far ends here, reported against the old definition.
        self.finish_active();
        if mapped.is_none() {
            self.interrupt_waiting();
        }
        let old_def = std::mem::replace(&mut self.def, new.clone());
        let old_slot = std::mem::take(&mut self.slot);
        let old_ra = self.rule.map_or(0, |r| old_def.rules[r].actions.len());
        self.rule = None;
        let state = match mapped {
            Some(s) => {
                let entry = new.states[s].entry.len();
                self.pos = match &self.waiting {
                    // Nothing left to run: the new entry actions are not run again.
                    None => entry,
                    // Waiting in a transition action: the new entry actions follow it.
                    Some(_) if self.pos <= old_ra => 0,
                    Some(_) => (self.pos - old_ra).min(entry),
                };
                if old_def.states[old_state].timers != new.states[s].timers {
                    self.state = s;
                    self.arm_timers();
                }
                s
            }
            None => {
                self.pos = 0;
                self.chain = None;
                self.self_loops = 0;
                self.trace = None;
                self.cause = Event::new("reload").with_origin(Origin::Start);
                self.entered = self.tick();
                new.initial
            }
        };
        self.state = state;
        for (k, v) in &new.context {
            if !self.context.contains_key(k) {
                self.context.insert(k.clone(), v.clone());
            }
        }
        {
            // Readers take this lock to read the definition and the state together.
            let mut d = self.shared.def.write().unwrap_or_else(|e| e.into_inner());
            *d = new.clone();
            self.shared.state.store(state, Ordering::Relaxed);
        }
        if mapped.is_none() {
            self.shared
                .since_ms
                .store(super::clock::coarse_unix_ms(), Ordering::Relaxed);
            self.arm_timers();
        }
        if let Some(o) = &self.observer {
            let previous = MachineRef {
                id: self.shared.id,
                name: &old_def.name,
                def: &old_def,
                slot: &old_slot,
            };
            o.machine_reloaded(self.mref(), previous, self.sref(state));
            // Indexes of the new definition, a new slot: ask again.
            self.quick = o.quick_observer(self.mref());
        }
        let removed = mapped.is_none().then_some(old_name);
        match &removed {
            Some(gone) => {
                let msg = format!(
                    "config reload removed state `{gone}`, the machine's current state; it went to the initial state `{}` (its context is kept)",
                    new.states[state].name
                );
                self.report_error(ErrorKind::StateRemoved, None, &msg);
            }
            None => tracing::info!(
                target: "turnstile::machine",
                machine = %new.name,
                state = %new.states[state].name,
                "machine reloaded: the new definition runs from its current state"
            ),
        }
        Reloaded {
            state: new.states[state].name.clone(),
            removed,
        }
    }

    // --- events ----------------------------------------------------------------------

    /// Processes one event. Returns true when it caused a transition.
    ///
    /// With an observer, the durations reported are measured from one instant per event:
    /// the moment of its transition, read from the clock, or, when the previous event
    /// triggered no action and the machine took this one from its queue right after it
    /// without waiting (the queue already held it), that event's end (`last_end`), so
    /// that a busy machine reads the clock once per event instead of twice. The time in
    /// a state runs from one such instant to the next, and an event's duration from its
    /// instant to the end of its actions; under load both then include the few nanoseconds
    /// of taking the event from the queue and finding its rule. Timers do not use these
    /// readings.
    fn handle(&mut self, ev: Event) -> bool {
        self.shared.events.fetch_add(1, Ordering::Relaxed);
        let from = self.state;
        let def = self.def.clone();
        if ev.origin == Origin::External && (ev.payload.is_some() || ev.job_id.is_some()) {
            self.absorb(&def, &ev);
        }
        let Some(rule_ix) = def.route_index(from, &ev.name) else {
            // The next event does not start where the last transitioned one ended.
            self.last_end = None;
            self.unrouted(&ev, EventOutcome::Ignored);
            tracing::debug!(
                target: "turnstile::event",
                machine = %def.name,
                state = %def.states[from].name,
                event = %ev.name,
                "event ignored: no transition for it in this state"
            );
            return false;
        };
        let rule = &def.rules[rule_ix];
        if ev.origin == Origin::Action && rule.to == from {
            self.self_loops += 1;
            if self.self_loops > self.livelock_limit {
                self.self_loops = 0;
                let msg = format!(
                    "state `{}` re-entered itself {} times in a row through `{}` returned by its own actions, with nothing waiting in between; refused to go on (send an event to continue)",
                    def.states[from].name, self.livelock_limit, ev.name
                );
                self.report_error(ErrorKind::Livelock, Some(&ev), &msg);
                self.last_end = None;
                self.unrouted(&ev, EventOutcome::Rejected);
                return false;
            }
        } else if ev.origin != Origin::Action {
            self.self_loops = 0;
        }
        // The event that started the running actions ends here (cut short, or done).
        self.finish_active();
        self.interrupt_waiting();
        self.chain = None;
        self.trace = match &self.observer {
            Some(o) if self.starts => o
                .event_started(self.mref(), &ev, self.queue_depth())
                .or(ev.traceparent),
            _ => ev.traceparent,
        };
        let to = rule.to;
        self.state = to;
        self.shared.state.store(to, Ordering::Relaxed);
        self.shared.transitions.fetch_add(1, Ordering::Relaxed);
        // An event that triggers no action ends here: reported once, further down.
        let quick =
            self.observer.is_some() && rule.actions.is_empty() && def.states[to].entry.is_empty();
        let mut at = 0;
        let mut time_in_from = 0;
        if let (Some(o), Some(t)) = (&self.observer, &self.ticks) {
            at = self.last_end.take().unwrap_or_else(|| t.now());
            self.shared
                .since_ms
                .store(self.wall.unix_ms(at), Ordering::Relaxed);
            time_in_from = self.entered.map_or(0, |e| Ticks::nanos(e, at));
            self.entered = Some(at);
            if !quick {
                o.transition(&TransitionReport {
                    machine: self.mref(),
                    from: self.sref(from),
                    to: self.sref(to),
                    event: &ev,
                    event_id: rule.event_id,
                    time_in_from: Duration::from_nanos(time_in_from),
                });
            }
        } else {
            self.shared
                .since_ms
                .store(super::clock::coarse_unix_ms(), Ordering::Relaxed);
        }
        tracing::info!(
            target: "turnstile::transition",
            machine = %def.name,
            from = %def.states[from].name,
            to = %def.states[to].name,
            event = %ev.name,
            "transition"
        );
        if let Some(p) = &self.persist {
            p.entered(
                &def.name,
                &def.states[to].name,
                &self.context,
                Some((&def.states[from].name, &ev.name, ev.job_id.as_deref())),
            );
            self.persist_dirty = true;
        }
        match (&self.observer, &self.ticks, quick) {
            (Some(o), Some(t), true) => {
                let end = t.now();
                let duration = Ticks::nanos(at, end);
                // A next event already queued starts here (the loop clears this when the
                // task does anything else first).
                self.last_end = Some(end);
                match &self.quick {
                    Some(q) => {
                        q.transition_finished(from, to, rule.event_id, time_in_from, duration);
                    }
                    None => o.transition_finished(
                        &TransitionReport {
                            machine: self.mref(),
                            from: self.sref(from),
                            to: self.sref(to),
                            event: &ev,
                            event_id: rule.event_id,
                            time_in_from: Duration::from_nanos(time_in_from),
                        },
                        Duration::from_nanos(duration),
                    ),
                }
            }
            _ => {
                self.active = Some(Active {
                    from,
                    to,
                    event_id: rule.event_id,
                    started: self.entered,
                });
            }
        }
        self.cause = ev;
        self.rule = (!rule.actions.is_empty()).then_some(rule_ix);
        self.pos = 0;
        self.arm_timers();
        true
    }

    /// An external message arrived: as statemachine-engine, the whole message is kept in
    /// the context as `event_data` and the event's `context_map` copies fields out of it.
    fn absorb(&mut self, def: &MachineDef, ev: &Event) {
        let mut msg = Map::new();
        msg.insert("type".into(), Json::String(ev.name.to_string()));
        msg.insert(
            "payload".into(),
            ev.payload
                .as_deref()
                .cloned()
                .unwrap_or_else(|| Json::Object(Map::new())),
        );
        if let Some(j) = &ev.job_id {
            msg.insert("job_id".into(), Json::String(j.clone()));
        }
        let msg = Json::Object(msg);
        if let Some(cm) = def.context_maps.get(&*ev.name) {
            for (key, path) in &cm.entries {
                if let Some(v) = super::template::lookup_path(&msg, path) {
                    self.context.insert(key.clone(), v.clone());
                }
            }
        }
        self.context.insert("event_data".into(), msg);
    }

    /// Reports an event that caused no transition (ignored or refused).
    /// Only `event_finished` is called: such an event never becomes the running one, so an
    /// observer keeping state for the running event must not see it start (it may arrive
    /// while another event's actions are still running).
    fn unrouted(&self, ev: &Event, outcome: EventOutcome) {
        if let Some(o) = &self.observer {
            o.event_finished(&EventReport {
                machine: self.mref(),
                event: ev,
                event_id: self.def.event_index(&ev.name),
                outcome,
                from: self.sref(self.state),
                to: self.sref(self.state),
                duration: Duration::ZERO,
            });
        }
    }

    fn finish_active(&mut self) {
        let Some(a) = self.active.take() else {
            return;
        };
        if let Some(o) = &self.observer {
            o.event_finished(&EventReport {
                machine: self.mref(),
                event: &self.cause,
                event_id: Some(a.event_id),
                outcome: EventOutcome::Transitioned,
                from: self.sref(a.from),
                to: self.sref(a.to),
                duration: self.since(a.started),
            });
        }
    }

    /// A [`Ticks`] reading, when an observer is attached.
    fn tick(&self) -> Option<u64> {
        self.ticks.as_ref().map(Ticks::now)
    }

    /// The time since a [`Machine::tick`] reading.
    fn since(&self, start: Option<u64>) -> Duration {
        match (&self.ticks, start) {
            (Some(t), Some(s)) => t.since(s),
            _ => Duration::ZERO,
        }
    }

    fn queue_depth(&self) -> usize {
        self.rx.len()
    }

    // --- actions ---------------------------------------------------------------------

    fn rule_actions(&self) -> &[ActionDef] {
        match self.rule {
            Some(r) => &self.def.rules[r].actions,
            None => &[],
        }
    }

    fn has_next_action(&self) -> bool {
        self.pos < self.rule_actions().len() + self.def.states[self.state].entry.len()
    }

    fn step(&mut self) {
        let def = self.def.clone();
        let idx = self.pos;
        let ra = self.rule_actions().len();
        let action = if idx < ra {
            match self.rule {
                Some(r) => &def.rules[r].actions[idx],
                None => return,
            }
        } else {
            &def.states[self.state].entry[idx - ra]
        };
        self.pos += 1;
        let trace = match &self.observer {
            Some(o) if self.starts => o
                .action_started(&ActionReport {
                    machine: self.mref(),
                    state: self.sref(self.state),
                    kind: &action.kind,
                    index: idx,
                })
                .or(self.trace),
            _ => self.trace,
        };
        let started = self.tick();
        let mut cx = ActionCx {
            machine: &def.name,
            state: &def.states[self.state].name,
            context: &mut self.context,
            event: &self.cause,
            router: &self.router,
            trace,
        };
        match action.action.run(&mut cx) {
            Step::Done(out) => self.finish_action(action, idx, out, started),
            Step::Wait(fut) => {
                self.self_loops = 0;
                self.waiting = Some(Waiting {
                    fut,
                    action: action.clone(),
                    index: idx,
                    started,
                });
            }
        }
    }

    fn finish_waiting(&mut self, out: Outcome) {
        if let Some(w) = self.waiting.take() {
            self.finish_action(&w.action, w.index, out, w.started);
        }
    }

    fn finish_action(
        &mut self,
        action: &ActionDef,
        index: usize,
        out: Outcome,
        started: Option<u64>,
    ) {
        let Outcome {
            status,
            event,
            context,
            output,
            error_kind,
            job_id,
            traceparent,
            job,
        } = out;
        if let (Some(o), Some(j)) = (&self.observer, &job) {
            let m = self.mref();
            match &j.change {
                JobChange::Claimed => o.job_claimed(m, &j.job_type, &j.job_id),
                JobChange::Completed => o.job_completed(m, &j.job_type, &j.job_id),
                JobChange::Failed(msg) => o.job_failed(m, &j.job_type, &j.job_id, msg),
            }
        }
        for (k, v) in context {
            self.context.insert(k, v);
        }
        let (outcome, error) = match &status {
            Status::Ok => (ActionOutcome::Ok, None),
            Status::Error(m) => (ActionOutcome::Error, Some(m.as_str())),
            Status::Timeout(m) => (ActionOutcome::Timeout, Some(m.as_str())),
        };
        if let Some(o) = &self.observer {
            o.action_finished(
                &ActionReport {
                    machine: self.mref(),
                    state: self.sref(self.state),
                    kind: &action.kind,
                    index,
                },
                &ActionEnd {
                    outcome,
                    duration: self.since(started),
                    event: event.as_deref(),
                    output: output.as_deref(),
                    error,
                },
            );
        }
        if let Some(msg) = error {
            let kind = error_kind.unwrap_or(if outcome == ActionOutcome::Timeout {
                ErrorKind::ActionTimeout
            } else {
                ErrorKind::Action
            });
            let msg = format!("`{}` action failed: {msg}", action.kind);
            let cause = std::mem::replace(&mut self.cause, Event::new(""));
            self.report_error(kind, Some(&cause), &msg);
            self.cause = cause;
        }
        if let Some(name) = event {
            if self.def.states[self.state].is_final {
                tracing::debug!(
                    target: "turnstile::event",
                    machine = %self.def.name,
                    event = %name,
                    "final state: the event returned by its action is not processed"
                );
            } else {
                self.chain = Some(Event {
                    name,
                    payload: self.cause.payload.clone(),
                    job_id: job_id.or_else(|| self.cause.job_id.clone()),
                    traceparent: traceparent.or(self.trace),
                    origin: Origin::Action,
                });
            }
        }
    }

    fn interrupt_waiting(&mut self) {
        let Some(w) = self.waiting.take() else {
            return;
        };
        drop(w.fut);
        if let Some(o) = &self.observer {
            o.action_finished(
                &ActionReport {
                    machine: self.mref(),
                    state: self.sref(self.state),
                    kind: &w.action.kind,
                    index: w.index,
                },
                &ActionEnd {
                    outcome: ActionOutcome::Interrupted,
                    duration: self.since(w.started),
                    event: None,
                    output: None,
                    error: None,
                },
            );
        }
        tracing::debug!(
            target: "turnstile::action",
            machine = %self.def.name,
            action = %w.action.kind,
            "waiting action interrupted by a transition"
        );
    }

    fn report_error(&self, kind: ErrorKind, event: Option<&Event>, message: &str) {
        self.shared.errors.fetch_add(1, Ordering::Relaxed);
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
            machine = %self.def.name,
            state,
            kind = kind.as_str(),
            "{message}"
        );
    }

    // --- timers ------------------------------------------------------------------------

    fn arm_timers(&mut self) {
        if self.def.states[self.state].timers.is_empty() {
            self.timer_next = usize::MAX;
        } else {
            self.timer_base = tokio::time::Instant::now();
            self.timer_next = 0;
        }
    }

    fn deadline(&self) -> Option<tokio::time::Instant> {
        let t = self.def.states[self.state].timers.get(self.timer_next)?;
        Some(self.timer_base + t.0)
    }

    fn fire_timer(&mut self) {
        let Some((_, name)) = self.def.states[self.state]
            .timers
            .get(self.timer_next)
            .cloned()
        else {
            return;
        };
        self.timer_next += 1;
        if self.timer_next >= self.def.states[self.state].timers.len() {
            self.timer_next = usize::MAX;
        }
        self.handle(Event::new(name).with_origin(Origin::Timer));
    }
}

async fn wait_action(w: &mut Option<Waiting>) -> Outcome {
    match w {
        Some(w) => w.fut.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

//! The gate: pause, step, breakpoints, and the live requests that drive them ([`LiveOp`]:
//! pause, resume, step, stop, restart, a context patch, breakpoints).
//!
//! Every event a machine processes comes through one of a few doors (its queue, a
//! returned event, a timer), and each door goes through [`Machine::admit`]. When nothing
//! is paused, no breakpoint is set and no request waits, `admit` costs one relaxed load
//! of [`Shared::gate`](super::Shared) and one branch. Its flags: [`REQUEST`] (set by the
//! engine after it sends a live request) makes the slow path ([`Machine::at_gate`]) serve
//! the requests waiting in the machine's channel; [`ARMED`] (set by the task while it is
//! paused or an `error` breakpoint matched) makes it hold the event; [`BREAKPOINTS`] (set
//! by the task while it has breakpoints) makes it check the event against them.
//! Breakpoints are indexed by state (those that can match an event in that state), and
//! each state's entry has a 64-bit mask of the event names its breakpoints filter on
//! ([`name_bit`]): with breakpoints alone, an event whose bit is clear (most events, when
//! the breakpoints name other events or states) goes on after a look at that mask, inline,
//! and only the others take the out-of-line path that compares names and evaluates `when`
//! conditions. A held event parks the task in [`Phase::Paused`], which waits for
//! requests (and the action still waiting, if any) only: no queued event is taken and no
//! `timeout(N)` timer fires there.
//!
//! Semantics (docs/operations.md, "Live operations"):
//! - Pause does not interrupt an action: a running or waiting action goes on; the machine
//!   holds as soon as it reaches its next event, and the event the action returns is
//!   held, not processed. Actions are not gated, events are.
//! - While paused, events queue (bounded, with backpressure) and `timeout(N)` timers
//!   stop: they resume with the time they had left.
//! - Step processes one event (the held one, else the next queued one) directly: its
//!   transition and the actions it triggers, up to the next event, held in turn. Its
//!   answer comes when the machine holds again (or waits, or has nothing to run).
//! - Resume processes the held event first, without checking breakpoints on it again.
//! - A breakpoint on `enter`, `event` or `transition` holds the event it matches, before
//!   it is processed; one on `error` matches when an error is recorded and holds the next
//!   event (the action's `error` event, when it returned one).
//! - While an event is held, a waiting action's end is not looked at (the held event, had
//!   it been processed, might have interrupted it): it is, once the machine goes on.
//!
//! [`REQUEST`] is cleared by the task before it drains the channel and set by the engine
//! after it sends a request, so a request is never left unseen at the gate.

use std::cell::Cell;
use std::sync::atomic::Ordering;

use serde_json::{Map, Value as Json};
use tokio::sync::oneshot;

use super::actions::{claim_lost, wait_action};
use super::events::Entry;
use super::phases::{tenure_ended, Phase};
use super::{Machine, Msg};
use crate::breakpoint::{BreakpointInfo, BreakpointSpec, On};
use crate::observe::{ControlAction, ControlReport, StopReason};
use crate::runtime::event::{Event, Origin};
use crate::runtime::live::{LiveAnswer, LiveError, LiveOp, LiveState};

/// Breakpoints one machine may have at once.
pub(crate) const MAX_BREAKPOINTS: usize = 100;

/// [`Shared::gate`](super::Shared) flag: a live request waits in the channel.
pub(crate) const REQUEST: u8 = 1;
/// [`Shared::gate`](super::Shared) flag: paused, or an `error` hit to act on.
pub(crate) const ARMED: u8 = 2;
/// [`Shared::gate`](super::Shared) flag: breakpoints are set.
pub(crate) const BREAKPOINTS: u8 = 4;

/// Where the answer to a live request goes.
pub(crate) type LiveReply = oneshot::Sender<Result<LiveAnswer, LiveError>>;

/// A live request, as the engine sends it to a machine's task.
pub(crate) struct LiveRequest {
    pub op: LiveOp,
    pub reply: LiveReply,
}

struct Breakpoint {
    id: u64,
    spec: BreakpointSpec,
    hits: u64,
}

impl Breakpoint {
    fn info(&self) -> BreakpointInfo {
        BreakpointInfo {
            id: self.id,
            on: self.spec.on,
            state: self.spec.state.clone(),
            event: self.spec.event.clone(),
            when: self.spec.when.as_ref().map(|c| c.source().to_owned()),
            hits: self.hits,
        }
    }
}

/// The task's own half of pause and breakpoints.
#[derive(Default)]
pub(super) struct Gate {
    pub(super) paused: bool,
    /// The event held at the gate; only while in [`Phase::Paused`].
    held: Option<Event>,
    breakpoints: Vec<Breakpoint>,
    /// Per state of the definition: the breakpoints that can match an event arriving in
    /// it ([`Machine::index_breakpoints`]).
    by_state: Vec<StateBreakpoints>,
    next_id: u64,
    /// A step's answer, given when the machine holds again.
    step_reply: Option<LiveReply>,
    /// A stop request's answer, given once stopped.
    pub(super) stop_reply: Option<LiveReply>,
    /// An `error` breakpoint matched (its id): the machine pauses at its next event.
    /// Set where errors are reported, which only reads the machine.
    error_hit: Cell<Option<u64>>,
}

/// The breakpoints that can match an event in one state.
#[derive(Default, Clone)]
struct StateBreakpoints {
    /// The [`name_bit`]s of their event filters; every bit when one has none. An event
    /// whose bit is clear meets none of them.
    names: u64,
    /// Their indexes in [`Gate::breakpoints`], in the order they were set.
    list: Vec<usize>,
}

/// An event name's bit in [`StateBreakpoints::names`]: from its length and its first and
/// last bytes, which is cheap and tells most names apart (a collision only costs the
/// exact comparison).
#[inline(always)]
fn name_bit(name: &str) -> u64 {
    let b = name.as_bytes();
    let first = b.first().copied().unwrap_or(0) as u32;
    let last = b.last().copied().unwrap_or(0) as u32;
    let h = (b.len() as u32).wrapping_mul(17) ^ first ^ last.rotate_left(3);
    1u64 << (h & 63)
}

impl Gate {
    /// Holds nothing a fresh gate would not: not paused, nothing held, no breakpoint (nor
    /// one ever set), no answer owed. A parked instance then keeps none ([`super::parked`]).
    pub(super) fn is_clear(&self) -> bool {
        !self.paused
            && self.held.is_none()
            && self.breakpoints.is_empty()
            && self.by_state.iter().all(|s| s.list.is_empty())
            && self.next_id == 0
            && self.step_reply.is_none()
            && self.stop_reply.is_none()
            && self.error_hit.get().is_none()
    }

    /// Whether a breakpoint may match an event named `name` in state `state`: `false`
    /// means surely not.
    #[inline(always)]
    fn may_match(&self, state: usize, name: &str) -> bool {
        self.by_state
            .get(state)
            .is_some_and(|s| s.names & name_bit(name) != 0)
    }
}

/// What the gate does with an event.
enum Admit {
    Go(Event),
    Hold,
    Stop(StopReason),
    /// A restart cleared it with the queue.
    Dropped,
}

/// What serving the waiting requests asks of the task.
enum Served {
    Nothing,
    /// Process this event now, past the gate (a step, or the held event on resume).
    Go(Event),
    /// Run: the machine resumed or restarted.
    Run,
    Stop(StopReason),
}

impl Machine {
    /// The gate's flags: a request, a pause or a breakpoint may concern the next event.
    #[inline]
    pub(super) fn gated(&self) -> bool {
        self.shared.gate.load(Ordering::Relaxed) != 0
    }

    /// Processes `ev` unless the gate holds it. Inlined into each door, as `handle` was
    /// before the gate: a call here costs the hot path more than the check itself. With
    /// breakpoints alone, an event that none of the current state's can match (its name's
    /// bit is clear) is let through here, without the call.
    #[inline(always)]
    pub(super) fn admit(&mut self, ev: Event) -> Phase {
        let flags = self.shared.gate.load(Ordering::Relaxed);
        if flags == 0 || (flags == BREAKPOINTS && !self.gate.may_match(self.state, &ev.name)) {
            self.handle(ev);
            return Phase::Running;
        }
        self.admit_flagged(ev, flags)
    }

    /// [`Self::admit`] with a flag set. Breakpoints alone (the common case while any is
    /// set) take the short way: the breakpoints of the current state, then the event.
    #[inline(never)]
    fn admit_flagged(&mut self, ev: Event, flags: u8) -> Phase {
        if flags & REQUEST == 0 && !self.gate.paused && self.gate.error_hit.get().is_none() {
            if let Some(id) = self.breakpoint_for(&ev) {
                self.hold(ev);
                self.breakpoint_hit(id);
                return Phase::Paused;
            }
            self.handle(ev);
            return Phase::Running;
        }
        match self.at_gate(ev) {
            Admit::Go(ev) => {
                self.handle(ev);
                Phase::Running
            }
            Admit::Hold => Phase::Paused,
            Admit::Stop(r) => Phase::Stopped(r),
            Admit::Dropped => Phase::Running,
        }
    }

    #[cold]
    #[inline(never)]
    fn at_gate(&mut self, ev: Event) -> Admit {
        let mut in_hand = Some(ev);
        match self.drain(&mut in_hand) {
            Served::Go(ev) => return Admit::Go(ev),
            Served::Stop(r) => return Admit::Stop(r),
            Served::Nothing | Served::Run => {}
        }
        let Some(ev) = in_hand else {
            return Admit::Dropped;
        };
        if let Some(id) = self.gate.error_hit.take() {
            self.hold(ev);
            self.breakpoint_hit(id);
            return Admit::Hold;
        }
        if self.gate.paused {
            self.hold(ev);
            return Admit::Hold;
        }
        if let Some(id) = self.breakpoint_for(&ev) {
            self.hold(ev);
            self.breakpoint_hit(id);
            return Admit::Hold;
        }
        Admit::Go(ev)
    }

    /// At the top of [`Phase::Idle`] and [`Phase::Waiting`]'s wait: the waiting requests,
    /// an `error` breakpoint hit, a pause. `None`: wait as usual.
    #[cold]
    #[inline(never)]
    pub(super) fn gate_parked(&mut self) -> Option<Phase> {
        let mut none = None;
        match self.drain(&mut none) {
            Served::Go(ev) => {
                self.handle(ev);
                return Some(Phase::Running);
            }
            Served::Run => return Some(Phase::Running),
            Served::Stop(r) => return Some(Phase::Stopped(r)),
            Served::Nothing => {}
        }
        if let Some(id) = self.gate.error_hit.take() {
            self.breakpoint_hit(id);
        }
        self.gate.paused.then_some(Phase::Paused)
    }

    /// Not paused, no `error` hit to act on, no live request waiting: nothing at the gate
    /// would keep the machine from parking.
    pub(super) fn gate_open(&self) -> bool {
        !self.gate.paused && self.shared.gate.load(Ordering::Acquire) & (ARMED | REQUEST) == 0
    }

    /// A live request that arrived while the task waited (in `select!`).
    pub(super) fn serve_one(&mut self, req: LiveRequest) -> Phase {
        let mut none = None;
        match self.serve(req, &mut none) {
            Served::Go(ev) => {
                self.handle(ev);
                Phase::Running
            }
            Served::Run => Phase::Running,
            Served::Stop(r) => Phase::Stopped(r),
            Served::Nothing if self.gate.paused => Phase::Paused,
            Served::Nothing => Phase::Running,
        }
    }

    /// Serves every waiting request, unless one asks to process an event or to stop.
    fn drain(&mut self, in_hand: &mut Option<Event>) -> Served {
        // Cleared before the channel is read: a request sent after this sets it again.
        self.shared.gate.fetch_and(!REQUEST, Ordering::AcqRel);
        while let Some(req) = self.shared.mailbox.try_recv_live() {
            match self.serve(req, in_hand) {
                Served::Nothing | Served::Run => {}
                other => {
                    // Requests may be left in the channel: look again at the next event.
                    self.shared.gate.fetch_or(REQUEST, Ordering::Relaxed);
                    return other;
                }
            }
        }
        Served::Nothing
    }

    /// [`ARMED`] set exactly while the machine is paused or an `error` hit waits,
    /// [`BREAKPOINTS`] while it has breakpoints.
    fn rearm_gate(&self) {
        let flag = |on: bool, flag: u8| {
            if on {
                self.shared.gate.fetch_or(flag, Ordering::Relaxed);
            } else {
                self.shared.gate.fetch_and(!flag, Ordering::Relaxed);
            }
        };
        flag(
            self.gate.paused || self.gate.error_hit.get().is_some(),
            ARMED,
        );
        flag(!self.gate.breakpoints.is_empty(), BREAKPOINTS);
    }

    /// Rebuilds [`Gate::by_state`] (breakpoints changed, or the definition did): for each
    /// state, the breakpoints that can match an event there. `event` and `transition`
    /// ones in their state (or every state); `enter` ones in the states with a rule into
    /// theirs; those with an event filter (but `event` ones, which also see events no
    /// rule takes) only where a rule takes that event. `error` ones are matched where
    /// errors are reported. Each state's mask gets the [`name_bit`] of the event filter of
    /// each of its breakpoints, or every bit for one without.
    pub(super) fn index_breakpoints(&mut self) {
        let def = &self.def;
        let mut by_state = vec![StateBreakpoints::default(); def.states.len()];
        for (i, b) in self.gate.breakpoints.iter().enumerate() {
            let s = &b.spec;
            for (si, st) in def.states.iter().enumerate() {
                let named =
                    |want: &Option<String>, name: &str| want.as_deref().is_none_or(|w| w == name);
                let routes = || {
                    def.routes_from(si)
                        .filter(|(_, e)| named(&s.event, e))
                        .map(|(r, _)| r)
                };
                let fits = match s.on {
                    On::Event => named(&s.state, &st.name),
                    On::Transition => named(&s.state, &st.name) && routes().next().is_some(),
                    On::Enter => {
                        routes().any(|r| named(&s.state, &def.states[def.rules[r].to].name))
                    }
                    On::Error => false,
                };
                if fits {
                    let here = &mut by_state[si];
                    here.list.push(i);
                    here.names |= s.event.as_deref().map_or(u64::MAX, name_bit);
                }
            }
        }
        self.gate.by_state = by_state;
    }

    /// [`Phase::Paused`]: waits for a request, shutdown, the end of the singleton's
    /// tenure, or the action still waiting (while no event is held).
    pub(super) async fn paused_phase(&mut self) -> Phase {
        if let Some(r) = self.gate.step_reply.take() {
            let _ = r.send(Ok(LiveAnswer::Done(self.live_state())));
        }
        self.chain.parked();
        self.measure.forget_end();
        let poll_action = self.waiting.is_some() && self.gate.held.is_none();
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Phase::Stopped(StopReason::Shutdown),
            () = tenure_ended(&self.tenure), if self.tenure.is_some() => self.lease_lost(),
            msg = self.shared.mailbox.recv(false) => match msg {
                Msg::Control(c) => match self.control(c) {
                    Some(reason) => Phase::Stopped(reason),
                    None => Phase::Paused,
                },
                Msg::Live(req) => self.serve_one(req),
                // Not asked for: events wait in the queue while paused.
                Msg::Event(ev) => self.admit(ev),
            },
            out = wait_action(&mut self.waiting), if poll_action => {
                self.finish_waiting(out);
                Phase::Running
            }
            why = claim_lost(&self.claim), if poll_action && self.claim.is_some() => {
                self.cancel_for_lost_claim(why);
                Phase::Running
            }
        }
    }

    /// Saved paused (`--persist`): the machine starts paused. As on any restore, its
    /// state's entry actions run; the events they return, and its queued ones, wait.
    pub(super) fn start_paused(&mut self) {
        self.pause_now();
    }

    fn hold(&mut self, ev: Event) {
        self.pause_now();
        self.gate.held = Some(ev);
        self.measure.forget_end();
    }

    fn pause_now(&mut self) {
        self.shared.gate.fetch_or(ARMED, Ordering::Relaxed);
        if !self.gate.paused {
            self.gate.paused = true;
            self.shared.paused.store(true, Ordering::Relaxed);
            self.timers.pause(tokio::time::Instant::now());
            // With `--persist`, a paused machine starts paused again.
            if self.persist.to.is_some() {
                self.save(None);
            }
        }
    }

    /// Where the machine is.
    pub(super) fn live_state(&self) -> LiveState {
        LiveState {
            state: self.def.states[self.state].name.clone(),
            paused: self.gate.paused,
            held: self.gate.held.as_ref().map(|e| e.name.clone()),
            action_running: self.waiting.is_some(),
            queue_depth: self.shared.mailbox.len(),
            stopped: false,
        }
    }

    /// Answers the stop request once the machine has stopped.
    pub(super) fn answer_stop(&mut self) {
        if let Some(r) = self.gate.stop_reply.take() {
            let mut s = self.live_state();
            s.stopped = true;
            let _ = r.send(Ok(LiveAnswer::Done(s)));
        }
    }

    fn serve(&mut self, req: LiveRequest, in_hand: &mut Option<Event>) -> Served {
        let served = self.serve_op(req, in_hand);
        self.rearm_gate();
        served
    }

    fn serve_op(&mut self, req: LiveRequest, in_hand: &mut Option<Event>) -> Served {
        let LiveRequest { op, reply } = req;
        match op {
            LiveOp::Pause => {
                self.pause_now();
                self.report_control(ControlAction::Pause, None);
                send(reply, Ok(LiveAnswer::Done(self.live_state())));
                Served::Nothing
            }
            LiveOp::Resume => {
                if !self.gate.paused {
                    send(reply, Ok(LiveAnswer::Done(self.live_state())));
                    return Served::Nothing;
                }
                self.gate.paused = false;
                self.shared.paused.store(false, Ordering::Relaxed);
                self.timers.resume(tokio::time::Instant::now());
                if self.persist.to.is_some() {
                    self.save(None);
                }
                let held = self.gate.held.take();
                self.report_control(ControlAction::Resume, held.as_ref());
                send(reply, Ok(LiveAnswer::Done(self.live_state())));
                match held {
                    Some(ev) => Served::Go(ev),
                    None => Served::Run,
                }
            }
            LiveOp::Step => {
                if !self.gate.paused {
                    send(
                        reply,
                        Err(LiveError::Conflict(format!(
                            "machine `{}` is not paused: pause it before stepping",
                            self.shared.name
                        ))),
                    );
                    return Served::Nothing;
                }
                let next = in_hand
                    .take()
                    .or_else(|| self.gate.held.take())
                    .or_else(|| self.shared.mailbox.try_recv());
                match next {
                    Some(ev) => {
                        self.report_control(ControlAction::Step, Some(&ev));
                        self.gate.step_reply = Some(reply);
                        Served::Go(ev)
                    }
                    None => {
                        send(
                            reply,
                            Err(LiveError::Conflict(format!(
                                "machine `{}` has no event to step: none is held or queued",
                                self.shared.name
                            ))),
                        );
                        Served::Nothing
                    }
                }
            }
            LiveOp::Stop => {
                self.report_control(ControlAction::Stop, None);
                self.gate.stop_reply = Some(reply);
                Served::Stop(StopReason::Requested)
            }
            LiveOp::Restart => {
                if let Some(ev) = in_hand.take() {
                    self.discard(ev);
                }
                self.restart();
                send(reply, Ok(LiveAnswer::Done(self.live_state())));
                Served::Run
            }
            LiveOp::PatchContext(patch) => {
                send(reply, self.patch_context(&patch));
                Served::Nothing
            }
            LiveOp::AddBreakpoint(spec) => {
                if self.gate.breakpoints.len() >= MAX_BREAKPOINTS {
                    send(
                        reply,
                        Err(LiveError::Conflict(format!(
                            "machine `{}` has {MAX_BREAKPOINTS} breakpoints, the most it may have",
                            self.shared.name
                        ))),
                    );
                    return Served::Nothing;
                }
                self.gate.next_id += 1;
                let bp = Breakpoint {
                    id: self.gate.next_id,
                    spec,
                    hits: 0,
                };
                let info = bp.info();
                self.gate.breakpoints.push(bp);
                self.index_breakpoints();
                self.report_control(ControlAction::BreakpointSet(info.id), None);
                send(reply, Ok(LiveAnswer::Breakpoint(info)));
                Served::Nothing
            }
            LiveOp::RemoveBreakpoint(id) => {
                match self.gate.breakpoints.iter().position(|b| b.id == id) {
                    Some(i) => {
                        let bp = self.gate.breakpoints.remove(i);
                        self.index_breakpoints();
                        self.report_control(ControlAction::BreakpointRemoved(id), None);
                        send(reply, Ok(LiveAnswer::Breakpoint(bp.info())));
                    }
                    None => send(
                        reply,
                        Err(LiveError::NoBreakpoint(self.shared.name.to_string(), id)),
                    ),
                }
                Served::Nothing
            }
            LiveOp::Breakpoints => {
                let list = self.gate.breakpoints.iter().map(Breakpoint::info).collect();
                send(reply, Ok(LiveAnswer::Breakpoints(list)));
                Served::Nothing
            }
        }
    }

    /// A JSON merge patch (RFC 7396) of the context: an object; refused while an action
    /// runs (it may be writing the context).
    fn patch_context(&mut self, patch: &Json) -> Result<LiveAnswer, LiveError> {
        if self.waiting.is_some() {
            return Err(LiveError::Conflict(format!(
                "machine `{}` is running an action: patch its context while it is paused or idle",
                self.shared.name
            )));
        }
        let Json::Object(p) = patch else {
            return Err(LiveError::Invalid(
                "the context patch must be a JSON object (a JSON merge patch, RFC 7396)".into(),
            ));
        };
        merge_patch(&mut self.context, p);
        self.save(None);
        self.report_control(ControlAction::ContextPatch, None);
        Ok(LiveAnswer::Context(self.live_state(), self.context.clone()))
    }

    /// Back to the initial state with the initial context: the waiting action is
    /// interrupted, the held, chained and queued events are dropped (those of the store's
    /// event table marked handled), and the initial state's entry actions run next.
    fn restart(&mut self) {
        self.interrupt_waiting();
        self.finish_active();
        self.chain.next = None;
        if let Some(ev) = self.gate.held.take() {
            self.discard(ev);
        }
        while let Some(ev) = self.shared.mailbox.try_recv() {
            self.discard(ev);
        }
        self.claim = None;
        self.livelock.count = 0;
        self.state = self.def.initial;
        self.context = self.def.context.clone();
        self.shared.state.store(self.state, Ordering::Relaxed);
        self.shared
            .since_ms
            .store(crate::runtime::clock::coarse_unix_ms(), Ordering::Relaxed);
        self.entry = Entry::start();
        self.entry.cause = Event::new("restart").with_origin(Origin::Start);
        self.measure.reenter();
        self.arm_timers();
        self.save(None);
        self.persist.dirty = true;
        self.report_control(ControlAction::Restart, None);
    }

    /// An event dropped on purpose: one of the store's event table is marked handled.
    fn discard(&self, ev: Event) {
        if let Some(id) = ev.store_id {
            self.router.handled(&self.shared.name, id);
        }
    }

    /// The first breakpoint on `enter`, `event` or `transition` that `ev` meets here.
    #[inline]
    fn breakpoint_for(&self, ev: &Event) -> Option<u64> {
        let here = self.gate.by_state.get(self.state)?;
        if here.names & name_bit(&ev.name) == 0 {
            return None;
        }
        self.first_match(&here.list, ev)
    }

    /// Of `candidates` (indexed for the current state: their state filters hold), the
    /// first that `ev` matches.
    #[inline(never)]
    fn first_match(&self, candidates: &[usize], ev: &Event) -> Option<u64> {
        let is = |want: &Option<String>, name: &str| want.as_deref().is_none_or(|w| w == name);
        let mut rule = None;
        candidates
            .iter()
            .filter_map(|&i| self.gate.breakpoints.get(i))
            .find(|b| {
                let s = &b.spec;
                if !is(&s.event, &ev.name) {
                    return false;
                }
                let place = match s.on {
                    On::Event => true,
                    On::Transition | On::Enter => {
                        let r = *rule.get_or_insert_with(|| self.rule_for(&ev.name));
                        match (s.on, r) {
                            (On::Enter, Some(r)) => {
                                is(&s.state, &self.def.states[self.def.rules[r].to].name)
                            }
                            (_, r) => r.is_some(),
                        }
                    }
                    On::Error => false,
                };
                place && s.when.as_ref().is_none_or(|c| c.eval(&self.context))
            })
            .map(|b| b.id)
    }

    /// The rule `event` takes here: what `MachineDef::route_index` finds, looked up apart
    /// from it, so that the one the event's handling calls stays small enough to inline.
    fn rule_for(&self, event: &str) -> Option<usize> {
        let own = &self.def.states.get(self.state)?.routes;
        own.get_key_value(event)
            .or_else(|| self.def.wildcard.get_key_value(event))
            .map(|(_, &r)| r)
    }

    /// Where an error is reported: an `error` breakpoint that matches pauses the machine
    /// at its next event.
    pub(super) fn error_breakpoint(&self, event: Option<&Event>) {
        if self.gate.breakpoints.is_empty() || self.gate.error_hit.get().is_some() {
            return;
        }
        let here = &*self.def.states[self.state].name;
        let is = |want: &Option<String>, name: Option<&str>| {
            want.as_deref().is_none_or(|w| Some(w) == name)
        };
        let hit = self.gate.breakpoints.iter().find(|b| {
            let s = &b.spec;
            s.on == On::Error
                && is(&s.state, Some(here))
                && is(&s.event, event.map(|e| &*e.name))
                && s.when.as_ref().is_none_or(|c| c.eval(&self.context))
        });
        if let Some(b) = hit {
            self.gate.error_hit.set(Some(b.id));
            self.shared.gate.fetch_or(ARMED, Ordering::Relaxed);
        }
    }

    /// Breakpoint `id` paused the machine (the event it holds, if any, is held already).
    fn breakpoint_hit(&mut self, id: u64) {
        self.pause_now();
        let Some(bp) = self.gate.breakpoints.iter_mut().find(|b| b.id == id) else {
            return;
        };
        bp.hits += 1;
        let on = bp.spec.on;
        self.report_control(
            ControlAction::BreakpointHit(id, on),
            self.gate.held.as_ref(),
        );
    }

    /// Tells the observer and the log.
    fn report_control(&self, action: ControlAction, event: Option<&Event>) {
        let state = &*self.def.states[self.state].name;
        if let Some(o) = &self.observer {
            o.control(&ControlReport {
                machine: self.mref(),
                action,
                state: self.sref(self.state),
                context: &self.context,
                paused: self.gate.paused,
                event,
            });
        }
        let breakpoint = match action {
            ControlAction::BreakpointSet(id)
            | ControlAction::BreakpointRemoved(id)
            | ControlAction::BreakpointHit(id, _) => Some(id),
            _ => None,
        };
        tracing::info!(
            target: "turnstile::control",
            machine = %self.shared.name,
            state,
            action = action.as_str(),
            paused = self.gate.paused,
            event = event.map(|e| &*e.name),
            breakpoint,
            "live operation"
        );
    }
}

fn send(reply: LiveReply, r: Result<LiveAnswer, LiveError>) {
    // The asker may have gone (a request that timed out): nothing to tell then.
    let _ = reply.send(r);
}

/// RFC 7396 on an object: `null` removes a key, an object merges, anything else replaces.
fn merge_patch(target: &mut Map<String, Json>, patch: &Map<String, Json>) {
    for (k, v) in patch {
        match v {
            Json::Null => {
                target.remove(k);
            }
            Json::Object(p) => {
                let t = target
                    .entry(k.clone())
                    .or_insert_with(|| Json::Object(Map::new()));
                if !t.is_object() {
                    *t = Json::Object(Map::new());
                }
                if let Json::Object(t) = t {
                    merge_patch(t, p);
                }
            }
            v => {
                target.insert(k.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn names_alike_share_a_bit_and_others_do_not() {
        // engine/tests/live.rs relies on `ping` and `pong` sharing one (the exact
        // comparison then tells them apart); the benchmark's names have bits of their own.
        assert_eq!(name_bit("ping"), name_bit("pong"));
        for other in ["halt", "reset", "stop"] {
            assert_ne!(name_bit("go"), name_bit(other), "{other}");
        }
        assert_eq!(name_bit("").count_ones(), 1);
    }

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let Json::Object(mut t) = json!({"a": "b", "c": {"d": "e", "f": "g"}, "n": 1}) else {
            panic!()
        };
        let Json::Object(p) = json!({"a": "z", "c": {"f": null, "x": [1]}, "n": {"m": 2}}) else {
            panic!()
        };
        merge_patch(&mut t, &p);
        assert_eq!(
            Json::Object(t),
            json!({"a": "z", "c": {"d": "e", "x": [1]}, "n": {"m": 2}})
        );
    }
}

//! The Observer hook: everything the runtime tells the outside world.
//!
//! The engine knows nothing of metrics, spans or HTTP. It calls these methods at each step
//! and an exporter turns them into whatever it likes. Calls happen on the machine's own
//! task, in order, so an observer can keep per-machine state in a slot indexed by
//! [`MachineRef::id`] without locks shared across machines. With no observer attached the
//! runtime pays one branch per call site. Implementations must not block.

use std::any::Any;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::runtime::def::MachineDef;
use crate::runtime::event::Event;
use crate::runtime::trace::TraceContext;

pub use crate::error_kind::ErrorKind;

/// Per-machine storage an observer may fill once (in `machine_started`, and again in the
/// fresh slot `machine_reloaded` hands it) and read on every later call for that machine,
/// so it needs no lookup shared across machines.
pub type ObserverSlot = OnceLock<Box<dyn Any + Send + Sync>>;

/// Which machine a report is about. `id` is dense (0, 1, 2, ...) for the engine's lifetime.
#[derive(Clone, Copy)]
pub struct MachineRef<'a> {
    /// Engine-wide index of the machine, stable while the engine runs.
    pub id: usize,
    /// The machine's name.
    pub name: &'a str,
    /// The definition it runs (states, events and rules by index).
    pub def: &'a Arc<MachineDef>,
    /// The observer's own per-machine storage. Empty in an [`ErrorReport`] made off the
    /// machine's task (a bad message on the machine's socket): find the machine by name.
    pub slot: &'a ObserverSlot,
    /// An instance started at run time (`start_fsm`, `POST /machines`): `name` is its
    /// own, `def.name` its definition's, under which it counts in metrics (label values
    /// stay bounded by the configs).
    pub instance: bool,
}

impl std::fmt::Debug for MachineRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MachineRef")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish()
    }
}

/// A state, by index in its machine definition and by name.
#[derive(Debug, Clone, Copy)]
pub struct StateRef<'a> {
    /// Index in [`crate::MachineDef::states`].
    pub id: usize,
    /// The state's name.
    pub name: &'a str,
}

/// What became of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// A rule matched and the machine transitioned (possibly to the same state).
    Transitioned,
    /// No rule for this event in the current state.
    Ignored,
    /// The event was refused (e.g. the livelock guard, or the machine has stopped).
    Rejected,
}

impl EventOutcome {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            EventOutcome::Transitioned => "transitioned",
            EventOutcome::Ignored => "ignored",
            EventOutcome::Rejected => "rejected",
        }
    }
}

/// How an action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionOutcome {
    /// It finished normally (whatever event it returned).
    Ok,
    /// It failed.
    Error,
    /// It ran past its time limit and was stopped.
    Timeout,
    /// An event interrupted it (its state was left); not a failure.
    Interrupted,
}

impl ActionOutcome {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionOutcome::Ok => "ok",
            ActionOutcome::Error => "error",
            ActionOutcome::Timeout => "timeout",
            ActionOutcome::Interrupted => "interrupted",
        }
    }
}

/// A completed transition.
#[derive(Debug)]
pub struct TransitionReport<'a> {
    /// The machine.
    pub machine: MachineRef<'a>,
    /// State before.
    pub from: StateRef<'a>,
    /// State after.
    pub to: StateRef<'a>,
    /// The event that caused it.
    pub event: &'a Event,
    /// Index of the event in the definition's event table.
    pub event_id: usize,
    /// How long the machine was in `from` (since it last entered it): from the instant of
    /// the transition into `from` to this one's. A transition's instant is read from the
    /// clock, or, for an event taken from the queue without waiting right after an
    /// action-less one, is that event's end (one clock reading per event under load).
    /// [`NOT_TIMED`] when `from` was entered by an action-less event that was not timed
    /// ([`QuickTiming::every`]).
    pub time_in_from: Duration,
}

impl<'a> TransitionReport<'a> {
    /// The end of the event that caused the transition, `duration` after it.
    pub fn finished(&self, duration: Duration) -> EventReport<'a> {
        EventReport {
            machine: self.machine,
            event: self.event,
            event_id: Some(self.event_id),
            outcome: EventOutcome::Transitioned,
            from: self.from,
            to: self.to,
            duration,
        }
    }
}

/// An action about to run or just finished.
#[derive(Debug)]
pub struct ActionReport<'a> {
    /// The machine.
    pub machine: MachineRef<'a>,
    /// The state whose entry (or the transition whose) actions these are.
    pub state: StateRef<'a>,
    /// The action type, e.g. `bash`.
    pub kind: &'a str,
    /// Position of the action in its list.
    pub index: usize,
}

/// The end of an action.
#[derive(Debug)]
pub struct ActionEnd<'a> {
    /// How it ended.
    pub outcome: ActionOutcome,
    /// Wall time it took.
    pub duration: Duration,
    /// The event it returned, if any.
    pub event: Option<&'a str>,
    /// Captured output (e.g. a command's stdout/stderr), truncated.
    pub output: Option<&'a str>,
    /// Error message, when it failed.
    pub error: Option<&'a str>,
}

/// An error somewhere in the runtime.
#[derive(Debug)]
pub struct ErrorReport<'a> {
    /// What kind of error.
    pub kind: ErrorKind,
    /// Which machine, if any.
    pub machine: Option<MachineRef<'a>>,
    /// The machine's state at the time, if any.
    pub state: Option<&'a str>,
    /// The event being processed, if any.
    pub event: Option<&'a Event>,
    /// Human-readable message.
    pub message: &'a str,
}

/// The end of processing one event (all its transition and entry actions ran, or were cut
/// short by the next event).
#[derive(Debug)]
pub struct EventReport<'a> {
    /// The machine.
    pub machine: MachineRef<'a>,
    /// The event.
    pub event: &'a Event,
    /// Index of the event in the definition's event table (`None` for names the config
    /// never mentions: exporters should not turn those into label values).
    pub event_id: Option<usize>,
    /// What became of it.
    pub outcome: EventOutcome,
    /// State when it arrived.
    pub from: StateRef<'a>,
    /// State after processing.
    pub to: StateRef<'a>,
    /// Time from the start of processing (the instant of its transition, as for
    /// [`TransitionReport::time_in_from`]) to the end; zero for events that caused none.
    pub duration: Duration,
}

/// Why a machine stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// It entered a final state.
    FinalState,
    /// The engine was shut down.
    Shutdown,
    /// A config reload removed it.
    Removed,
    /// A singleton's lease tenure ended (its deadline passed unrenewed, or another
    /// process took the lease over): this copy stopped, the process stands by.
    LeaseLost,
    /// Stopped by request (`POST /machines/{name}/stop`), as if it had reached a final
    /// state.
    Requested,
}

impl StopReason {
    /// Why, in words.
    pub fn describe(self) -> &'static str {
        match self {
            StopReason::FinalState => "reached a final state",
            StopReason::Shutdown => "the engine shut down",
            StopReason::Removed => "a config reload removed it",
            StopReason::LeaseLost => "the singleton lease was lost",
            StopReason::Requested => "stopped by request",
        }
    }
}

/// A live operation on a machine, or a breakpoint that paused it ([`Observer::control`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlAction {
    /// Pause asked for: the machine holds at its next event.
    Pause,
    /// The machine resumed (the held event, if any, is processed now).
    Resume,
    /// One event processed while paused (reported as it starts).
    Step,
    /// Stopped by request (reported before `machine_stopped`).
    Stop,
    /// Back to the initial state and context, its queue cleared.
    Restart,
    /// Its context changed by a merge patch.
    ContextPatch,
    /// A breakpoint was set (its id).
    BreakpointSet(u64),
    /// A breakpoint was removed (its id).
    BreakpointRemoved(u64),
    /// A breakpoint paused the machine (its id and kind); `event` is the event held.
    BreakpointHit(u64, crate::breakpoint::On),
}

impl ControlAction {
    /// A short name (`pause`, `breakpoint_hit`, ...), for logs, spans and the stream.
    pub fn as_str(self) -> &'static str {
        match self {
            ControlAction::Pause => "pause",
            ControlAction::Resume => "resume",
            ControlAction::Step => "step",
            ControlAction::Stop => "stop",
            ControlAction::Restart => "restart",
            ControlAction::ContextPatch => "context_patch",
            ControlAction::BreakpointSet(_) => "breakpoint_set",
            ControlAction::BreakpointRemoved(_) => "breakpoint_removed",
            ControlAction::BreakpointHit(..) => "breakpoint_hit",
        }
    }
}

/// What [`Observer::control`] is told: the action and the machine as it is then.
#[derive(Debug)]
pub struct ControlReport<'a> {
    /// The machine.
    pub machine: MachineRef<'a>,
    /// What happened.
    pub action: ControlAction,
    /// Its state now.
    pub state: StateRef<'a>,
    /// Its context now (the real values: redact before showing it).
    pub context: &'a serde_json::Map<String, serde_json::Value>,
    /// Paused after this.
    pub paused: bool,
    /// The event concerned: the one held (a breakpoint hit), the one stepped.
    pub event: Option<&'a Event>,
}

/// Receives everything the runtime does. Every method has an empty default.
#[allow(unused_variables)]
pub trait Observer: Send + Sync + 'static {
    /// A machine's task started (before its initial entry actions run).
    fn machine_started(&self, machine: MachineRef<'_>, state: StateRef<'_>) {}
    /// A running machine switched to a new definition (a config reload), between two
    /// events. `machine` carries the new definition and a fresh, empty slot; `previous`
    /// the old definition and the slot filled until now; `state` is the state it is in
    /// now (state and event indexes of the new definition differ from the old ones).
    /// The default treats it as a start: `machine_started` fills the fresh slot.
    fn machine_reloaded(
        &self,
        machine: MachineRef<'_>,
        previous: MachineRef<'_>,
        state: StateRef<'_>,
    ) {
        let _ = previous;
        self.machine_started(machine, state);
    }
    /// A machine's task ended.
    fn machine_stopped(&self, machine: MachineRef<'_>, state: StateRef<'_>, reason: StopReason) {}
    /// Whether the runtime calls `event_started` and `action_started`. Asked once per
    /// machine, when its task starts: an observer that does nothing in them (and returns
    /// no trace context) answers `false` and is spared a call per event and per action.
    fn observes_starts(&self) -> bool {
        true
    }
    /// Processing of an event that triggers a transition begins (it becomes the machine's
    /// running event until `event_finished`). Events that trigger nothing (ignored or
    /// refused) are reported by `event_finished` alone. `queue_depth` is what is still
    /// waiting behind it.
    /// An observer that opens a span returns its context: events the machine's actions
    /// send or return carry it, so they continue the same trace.
    fn event_started(
        &self,
        machine: MachineRef<'_>,
        event: &Event,
        queue_depth: usize,
    ) -> Option<TraceContext> {
        None
    }
    /// Processing of an event ended.
    fn event_finished(&self, report: &EventReport<'_>) {}
    /// A transition happened (called before the target's entry actions run).
    fn transition(&self, report: &TransitionReport<'_>) {}
    /// A transition whose event triggers no action (the rule has none, nor has the target
    /// state entry actions): its processing ends with it, so the runtime reports both at
    /// once, after the transition is saved and logged. `duration` is the event's
    /// processing time, measured from the transition (as `EventReport::duration`). The
    /// default is `transition` followed by `event_finished`, as for any other event.
    fn transition_finished(&self, report: &TransitionReport<'_>, duration: Duration) {
        self.transition(report);
        self.event_finished(&report.finished(duration));
    }
    /// A machine's own receiver for [`Observer::transition_finished`], asked for right after
    /// `machine_started` and after each `machine_reloaded` (its slot is filled by then). When
    /// there is one, the runtime calls it instead of `transition_finished`, with indexes and
    /// nanoseconds: no report is built and no slot is looked up, on the call most events
    /// make. Meant for observers that need nothing more there (metrics); the default is
    /// none.
    fn quick_observer(&self, machine: MachineRef<'_>) -> Option<Box<dyn QuickObserver>> {
        None
    }
    /// An action starts. As with `event_started`, a returned context (the action's span)
    /// is what events sent by the action carry.
    fn action_started(&self, report: &ActionReport<'_>) -> Option<TraceContext> {
        None
    }
    /// An action ended.
    fn action_finished(&self, report: &ActionReport<'_>, end: &ActionEnd<'_>) {}
    /// Something went wrong.
    fn error(&self, report: &ErrorReport<'_>) {}
    /// A live operation changed a machine (pause, resume, step, stop, restart, a context
    /// patch, a breakpoint set or removed), or a breakpoint paused it. Called on the
    /// machine's task, after the change.
    fn control(&self, report: &ControlReport<'_>) {}
    /// A config was reloaded (`machines` names the machines it defines).
    fn config_reloaded(&self, path: &std::path::Path, machines: &[&str]) {}
    /// A config change was refused; the old config keeps running.
    fn config_rejected(&self, path: &std::path::Path, message: &str) {}
    /// A reload ended (a pass of `--watch` that found a change, or a reload of every config
    /// on `SIGHUP` or `POST /-/reload`), after its `config_reloaded` and `config_rejected`
    /// calls. `success`: every config's latest content is the one running (none refused).
    fn config_reload_finished(&self, success: bool) {}
    /// A plugin library changed on disk and its new version now serves (`previous` is the
    /// version it replaced).
    fn plugin_swapped(&self, name: &str, version: &str, previous: &str) {}
    /// A job was claimed by a machine.
    fn job_claimed(&self, machine: MachineRef<'_>, job_type: &str, job_id: &str) {}
    /// A job was completed.
    fn job_completed(&self, machine: MachineRef<'_>, job_type: &str, job_id: &str) {}
    /// A job failed (it may be retried).
    fn job_failed(&self, machine: MachineRef<'_>, job_type: &str, job_id: &str, message: &str) {}
}

/// [`TransitionReport::time_in_from`] of a state whose entry was not timed.
pub const NOT_TIMED: Duration = Duration::MAX;

/// How the runtime reports a machine's action-less events to its [`QuickObserver`]
/// ([`QuickObserver::timing`]).
#[derive(Debug, Clone)]
pub struct QuickTiming {
    /// One action-less event in `every` is timed and reported with
    /// [`QuickObserver::transition_finished`]; for the others no clock is read (1: every
    /// one is timed). To time one, the runtime also reads the clock at the transition
    /// before it, so its time in the state it leaves is exact.
    pub every: u32,
    /// The events not timed are reported with [`QuickObserver::transition_untimed`]
    /// (`false`: not at all; the engine's own counts, [`MachineStatus::transitions`] and
    /// [`MachineStatus::events`], still count them).
    ///
    /// [`MachineStatus::transitions`]: crate::runtime::engine::MachineStatus::transitions
    /// [`MachineStatus::events`]: crate::runtime::engine::MachineStatus::events
    pub report_untimed: bool,
    /// Besides, while this count is above zero (for example, clients following a live
    /// stream), the events not timed are reported too: one relaxed load per such event
    /// instead of a call that does nothing when nobody follows.
    pub report_untimed_while: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
}

impl QuickTiming {
    /// Whether an event not timed is to be reported now.
    #[inline]
    pub fn wants_untimed(&self) -> bool {
        self.report_untimed
            || self
                .report_untimed_while
                .as_ref()
                .is_some_and(|n| n.load(std::sync::atomic::Ordering::Relaxed) > 0)
    }
}

impl Default for QuickTiming {
    /// Every action-less event timed and reported.
    fn default() -> Self {
        QuickTiming {
            every: 1,
            report_untimed: false,
            report_untimed_while: None,
        }
    }
}

/// One machine's receiver for the events that trigger no action, handed to the runtime by
/// [`Observer::quick_observer`]: it replaces [`Observer::transition_finished`] for that
/// machine so the call carries only what metrics use. Called from the machine's own task
/// only, one event at a time; it must not block.
pub trait QuickObserver: Send + Sync + 'static {
    /// The machine left state `from` for `to` on event `event_id` (indexes into the
    /// definition it had when this receiver was handed over), after `time_in_from_ns`
    /// nanoseconds in `from` (`TransitionReport::time_in_from`; `u64::MAX` when `from`'s
    /// entry was not timed); the event's processing took `duration_ns`
    /// (`EventReport::duration`) and ended with the transition.
    fn transition_finished(
        &self,
        from: usize,
        to: usize,
        event_id: usize,
        time_in_from_ns: u64,
        duration_ns: u64,
    );
    /// How the runtime times and reports this machine's action-less events; asked once,
    /// when the receiver is handed over. The default times and reports every one.
    fn timing(&self) -> QuickTiming {
        QuickTiming::default()
    }
    /// An action-less event that was not timed ([`QuickTiming::every`]), when
    /// [`QuickTiming::report_untimed`] asks for them.
    fn transition_untimed(&self, from: usize, to: usize, event_id: usize) {
        let _ = (from, to, event_id);
    }
}

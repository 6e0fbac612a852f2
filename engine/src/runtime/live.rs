//! Live operations on a running machine, as [`Engine::control`](super::engine::Engine::control)
//! takes and answers them: pause, resume, step, stop, restart, a context patch, and
//! breakpoints. The machine's task serves them (`machine/gate.rs`); what they mean is
//! documented there and in docs/operations.md ("Live operations").

use std::sync::Arc;

use serde_json::{Map, Value as Json};

use crate::breakpoint::{BreakpointInfo, BreakpointSpec};

/// One live operation.
#[derive(Debug, Clone)]
pub enum LiveOp {
    /// Hold at the next event (a running or waiting action goes on).
    Pause,
    /// Go on: the held event, if any, is processed first.
    Resume,
    /// While paused: process exactly one event (the held one, else the next queued one).
    Step,
    /// Stop as if a final state was reached.
    Stop,
    /// Back to the initial state and context, the queue cleared, the entry actions run.
    Restart,
    /// Apply a JSON merge patch (RFC 7396, an object) to the context; refused while an
    /// action runs.
    PatchContext(Json),
    /// Set a breakpoint.
    AddBreakpoint(BreakpointSpec),
    /// Remove a breakpoint by id.
    RemoveBreakpoint(u64),
    /// List the breakpoints.
    Breakpoints,
}

impl LiveOp {
    /// A short name for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            LiveOp::Pause => "pause",
            LiveOp::Resume => "resume",
            LiveOp::Step => "step",
            LiveOp::Stop => "stop",
            LiveOp::Restart => "restart",
            LiveOp::PatchContext(_) => "context_patch",
            LiveOp::AddBreakpoint(_) => "breakpoint_set",
            LiveOp::RemoveBreakpoint(_) => "breakpoint_removed",
            LiveOp::Breakpoints => "breakpoints",
        }
    }
}

/// Where a machine is, as a live operation left it.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveState {
    /// Its state.
    pub state: Arc<str>,
    /// Paused.
    pub paused: bool,
    /// The event held at the pause, if any (processed on resume or step).
    pub held: Option<Arc<str>>,
    /// An action is running (waiting).
    pub action_running: bool,
    /// Events in its queue.
    pub queue_depth: usize,
    /// Stopped (by this operation).
    pub stopped: bool,
}

/// The answer to a [`LiveOp`].
#[derive(Debug, Clone)]
pub enum LiveAnswer {
    /// Done; where the machine is now.
    Done(LiveState),
    /// The context after a patch.
    Context(LiveState, Map<String, Json>),
    /// The breakpoint set or removed.
    Breakpoint(BreakpointInfo),
    /// Every breakpoint, with hit counts.
    Breakpoints(Vec<BreakpointInfo>),
}

/// Why a live operation was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LiveError {
    /// No machine of that name.
    #[error("no machine named `{0}`")]
    UnknownMachine(String),
    /// The machine has stopped.
    #[error("machine `{0}` has stopped")]
    Stopped(String),
    /// Not now (a step with nothing queued, a patch while an action runs, ...).
    #[error("{0}")]
    Conflict(String),
    /// Bad input (a patch that is not an object).
    #[error("{0}")]
    Invalid(String),
    /// No breakpoint with that id.
    #[error("machine `{0}` has no breakpoint {1}")]
    NoBreakpoint(String, u64),
}

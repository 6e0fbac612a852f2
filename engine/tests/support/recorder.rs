//! An observer that records what it is told, for assertions.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use turnstile_engine::observe::{
    ActionEnd, ActionReport, ErrorKind, ErrorReport, EventReport, MachineRef, Observer, StateRef,
    StopReason, TransitionReport,
};
use turnstile_engine::{Event, TraceContext};

/// Records every observer call as a line of text, in order (`started m a`, `event m go`,
/// `transition m a->b on go`, `action m b log#0`, `done m log#0 ok None`,
/// `finished m go transitioned a->b`, `error m action …`, `reloaded m b`,
/// `config_reloaded m`, `stopped m b FinalState`,
/// `control m pause b paused=true event=-`), and keeps errors, action outputs,
/// plugin swaps, config reloads and rejections apart as well.
#[derive(Default)]
pub struct Recorder {
    lines: Mutex<Vec<String>>,
    /// `(kind, message)` of each error.
    pub errors: Mutex<Vec<(ErrorKind, String)>>,
    outputs: Mutex<Vec<String>>,
    /// `name previous -> version` of each plugin swap.
    pub swaps: Mutex<Vec<String>>,
    /// When each config reload was reported.
    pub reloads: Mutex<Vec<Instant>>,
    rejects: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Recorder {
    fn push(&self, s: String) {
        lock(&self.lines).push(s);
    }
    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        lock(&self.lines).clone()
    }
    /// The lines that start with `prefix`.
    pub fn matching(&self, prefix: &str) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.starts_with(prefix))
            .collect()
    }
    /// `(kind, message)` of every error so far.
    pub fn errors(&self) -> Vec<(ErrorKind, String)> {
        lock(&self.errors).clone()
    }
    /// The outputs of the actions that gave one.
    pub fn outputs(&self) -> Vec<String> {
        lock(&self.outputs).clone()
    }
    /// How many config reloads were reported.
    pub fn reloads(&self) -> usize {
        lock(&self.reloads).len()
    }
    /// The messages of the rejected configs.
    pub fn rejects(&self) -> Vec<String> {
        lock(&self.rejects).clone()
    }
}

impl Observer for Recorder {
    fn machine_started(&self, m: MachineRef<'_>, s: StateRef<'_>) {
        self.push(format!("started {} {}", m.name, s.name));
    }
    fn machine_reloaded(&self, m: MachineRef<'_>, _prev: MachineRef<'_>, s: StateRef<'_>) {
        self.push(format!("reloaded {} {}", m.name, s.name));
    }
    fn machine_stopped(&self, m: MachineRef<'_>, s: StateRef<'_>, r: StopReason) {
        self.push(format!("stopped {} {} {r:?}", m.name, s.name));
    }
    fn event_started(&self, m: MachineRef<'_>, e: &Event, _depth: usize) -> Option<TraceContext> {
        self.push(format!("event {} {}", m.name, e.name));
        None
    }
    fn event_finished(&self, r: &EventReport<'_>) {
        self.push(format!(
            "finished {} {} {} {}->{}",
            r.machine.name,
            r.event.name,
            r.outcome.as_str(),
            r.from.name,
            r.to.name
        ));
    }
    fn transition(&self, r: &TransitionReport<'_>) {
        self.push(format!(
            "transition {} {}->{} on {}",
            r.machine.name, r.from.name, r.to.name, r.event.name
        ));
    }
    fn action_started(&self, r: &ActionReport<'_>) -> Option<TraceContext> {
        self.push(format!(
            "action {} {} {}#{}",
            r.machine.name, r.state.name, r.kind, r.index
        ));
        None
    }
    fn action_finished(&self, r: &ActionReport<'_>, end: &ActionEnd<'_>) {
        self.push(format!(
            "done {} {}#{} {} {:?}",
            r.machine.name,
            r.kind,
            r.index,
            end.outcome.as_str(),
            end.event
        ));
        if let Some(o) = end.output {
            lock(&self.outputs).push(o.to_owned());
        }
    }
    fn error(&self, r: &ErrorReport<'_>) {
        self.push(format!(
            "error {} {} {}",
            r.machine.map_or("-", |m| m.name),
            r.kind.as_str(),
            r.message
        ));
        lock(&self.errors).push((r.kind, r.message.to_owned()));
    }
    fn control(&self, r: &turnstile_engine::observe::ControlReport<'_>) {
        self.push(format!(
            "control {} {} {} paused={} event={}",
            r.machine.name,
            r.action.as_str(),
            r.state.name,
            r.paused,
            r.event.map_or("-", |e| &*e.name)
        ));
    }
    fn plugin_swapped(&self, name: &str, version: &str, previous: &str) {
        lock(&self.swaps).push(format!("{name} {previous} -> {version}"));
    }
    fn config_reloaded(&self, _path: &Path, machines: &[&str]) {
        lock(&self.reloads).push(Instant::now());
        self.push(format!("config_reloaded {}", machines.join(",")));
    }
    fn config_rejected(&self, _path: &Path, message: &str) {
        lock(&self.rejects).push(message.to_owned());
    }
}

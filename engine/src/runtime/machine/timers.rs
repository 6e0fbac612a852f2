//! `timeout(N)` timers: the events that fire N seconds after a state was entered, unless
//! a transition comes first.
//!
//! A state's timers are its `timeout(N)` rules, shortest first
//! ([`StateDef::timers`](crate::runtime::def::StateDef)); entering the state (again)
//! starts them from that instant. Only the next one is armed: its deadline is one more
//! branch of the task's `select!`, so waiting for it costs no polling.

use super::Machine;
use crate::runtime::event::{Event, Origin};

pub(super) struct Timers {
    /// When the current state's timers started.
    base: tokio::time::Instant,
    /// Index of the next timer to fire in the state's list; `usize::MAX` when none is left.
    next: usize,
    /// Since when the machine is paused: timers stop, and resume with the time they had
    /// left (`base` moves on by the pause).
    paused_at: Option<tokio::time::Instant>,
}

impl Timers {
    pub(super) fn new() -> Self {
        Self {
            base: tokio::time::Instant::now(),
            next: usize::MAX,
            paused_at: None,
        }
    }

    /// The machine paused at `now`.
    pub(super) fn pause(&mut self, now: tokio::time::Instant) {
        if self.paused_at.is_none() {
            self.paused_at = Some(now);
        }
    }

    /// The machine resumed at `now`: the timers go on with the time they had left.
    pub(super) fn resume(&mut self, now: tokio::time::Instant) {
        if let Some(p) = self.paused_at.take() {
            self.base += now.saturating_duration_since(p);
        }
    }

    /// No timer is armed.
    #[inline]
    pub(super) fn idle(&self) -> bool {
        self.next == usize::MAX
    }

    /// No timer armed and not paused: nothing a fresh [`Timers::new`] would not hold
    /// (`base` is read only once a timer is armed, which sets it).
    pub(super) fn at_rest(&self) -> bool {
        self.idle() && self.paused_at.is_none()
    }
}

impl Machine {
    /// Starts the current state's timers from now (none when it has no `timeout(N)` rule).
    pub(super) fn arm_timers(&mut self) {
        if self.def.states[self.state].timers.is_empty() {
            self.timers.next = usize::MAX;
        } else {
            let now = tokio::time::Instant::now();
            self.timers.base = now;
            self.timers.next = 0;
            if self.timers.paused_at.is_some() {
                // Entered while paused (a step, a restart): its time runs from the resume.
                self.timers.paused_at = Some(now);
            }
        }
    }

    /// When the next timer fires, if one is armed.
    pub(super) fn deadline(&self) -> Option<tokio::time::Instant> {
        let t = self.def.states[self.state].timers.get(self.timers.next)?;
        Some(self.timers.base + t.0)
    }

    /// The armed timer's deadline passed: its event (to process next), the next one armed.
    pub(super) fn fire_timer(&mut self) -> Option<Event> {
        let timers = &self.def.states[self.state].timers;
        let (_, name) = timers.get(self.timers.next).cloned()?;
        self.timers.next += 1;
        if self.timers.next >= timers.len() {
            self.timers.next = usize::MAX;
        }
        Some(Event::new(name).with_origin(Origin::Timer))
    }
}

/// Sleeps until `deadline`, or forever without one.
pub(super) async fn sleep_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

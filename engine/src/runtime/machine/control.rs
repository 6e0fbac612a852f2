//! Requests to a machine's task ([`Control`]) and how it stops.
//!
//! Requests are served in the phases that wait (idle, waiting), between two events, so
//! none sees half an event: a snapshot is a consistent state and context, a reload never
//! mixes two definitions in one event.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::{Machine, StateAndContext};
use crate::observe::{ErrorKind, MachineRef, StopReason};
use crate::runtime::def::MachineDef;
use crate::runtime::event::{Event, Origin};

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

impl Machine {
    /// Handles a request; returns a reason when the machine must stop.
    pub(super) fn control(&mut self, c: Control) -> Option<StopReason> {
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
        let old_ra = self
            .entry
            .rule
            .map_or(0, |r| old_def.rules[r].actions.len());
        self.entry.rule = None;
        let state = match mapped {
            Some(s) => {
                let entry = new.states[s].entry.len();
                self.entry.pos = match &self.waiting {
                    // Nothing left to run: the new entry actions are not run again.
                    None => entry,
                    // Waiting in a transition action: the new entry actions follow it.
                    Some(_) if self.entry.pos <= old_ra => 0,
                    Some(_) => (self.entry.pos - old_ra).min(entry),
                };
                if old_def.states[old_state].timers != new.states[s].timers {
                    self.state = s;
                    self.arm_timers();
                }
                s
            }
            None => {
                self.entry.pos = 0;
                self.chain.next = None;
                self.livelock.count = 0;
                self.entry.trace = None;
                self.entry.cause = Event::new("reload").with_origin(Origin::Start);
                self.measure.reenter();
                new.initial
            }
        };
        self.state = state;
        // Breakpoints name states: found again in the new definition.
        self.index_breakpoints();
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
                .store(crate::runtime::clock::coarse_unix_ms(), Ordering::Relaxed);
            self.arm_timers();
        }
        if let Some(o) = &self.observer {
            let previous = MachineRef {
                id: self.shared.id,
                name: &self.shared.name,
                def: &old_def,
                slot: &old_slot,
                instance: self.shared.instance,
            };
            o.machine_reloaded(self.mref(), previous, self.sref(state));
            // Indexes of the new definition, a new slot: ask again.
            self.measure.set_quick(o.quick_observer(self.mref()));
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

    /// [`Phase::Stopped`](super::phases::Phase): the waiting action is interrupted, the
    /// running event reported, the last state and context kept for the engine, the queue
    /// closed.
    pub(super) fn stop(&mut self, reason: StopReason) {
        self.interrupt_waiting();
        self.finish_active();
        if let Ok(mut r) = self.shared.stop_reason.lock() {
            *r = Some(reason);
        }
        if let Ok(mut c) = self.shared.last_context.lock() {
            *c = Some(Box::new((
                self.def.states[self.state].name.clone(),
                std::mem::take(&mut self.context),
            )));
        }
        // Requests already queued are dropped: snapshots are answered from `last_context`
        // by the engine.
        self.shared.mailbox.close();
        self.shared.running.store(false, Ordering::Release);
        if let Some(o) = &self.observer {
            o.machine_stopped(self.mref(), self.sref(self.state), reason);
        }
        tracing::info!(
            target: "turnstile::machine",
            machine = %self.shared.name,
            state = %self.def.states[self.state].name,
            reason = ?reason,
            "machine stopped"
        );
    }
}

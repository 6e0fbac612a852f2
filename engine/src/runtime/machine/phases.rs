//! The phases of a machine's task, one function each; each returns the phase that comes
//! next (the diagram is in the [module above](super)).
//!
//! The hot path of a busy machine is [`Phase::Idle`] taking a queued event without
//! `select!` ([`Machine::take_queued`]), then one [`Phase::Running`] step that finds
//! nothing to run and settles: no future is built and no clock is read on the way.

use std::sync::atomic::Ordering;

use super::actions::{claim_lost, wait_action};
use super::timers::sleep_opt;
use super::{Machine, Msg};
use crate::observe::StopReason;
use crate::runtime::event::Event;
use crate::runtime::tenure::Tenure;

/// Action-driven events processed back to back before the task yields and lets one
/// queued external event in.
pub(super) const FAIRNESS: u32 = 64;
/// Queued events taken without going through `select!` before checking the rest.
pub(super) const FAST_BUDGET: u32 = 256;

/// Where the machine's task is.
pub(super) enum Phase {
    /// Something to run: an event an action returned, or the next action of the current
    /// state entry. One step, then `Running` again, until nothing is left (then the entry
    /// settles: [`Phase::Idle`], or [`Phase::Stopped`] in a final state).
    Running,
    /// Nothing to run: take a queued event, or wait for an event, a timer or a request.
    Idle,
    /// An action is waiting: wait for it, an event, a timer or a request.
    Waiting,
    /// A chain of returned events ran [`FAIRNESS`] steps: yield to the scheduler and let
    /// one queued event in before the chain goes on.
    Yield,
    /// Paused (by request or a breakpoint), an event held or none: wait for requests
    /// only, and for the action still waiting (see [`super::gate`]).
    Paused,
    /// Nothing to do and nothing queued: the machine parks without a task
    /// ([`super::Outcome::Park`]; only a parkable one, see [`Machine::may_park`]).
    Park,
    /// Done; [`Machine::stop`] reports why.
    Stopped(StopReason),
}

/// The event an action returned (processed next, before anything queued) and the counts
/// that keep queued events from waiting forever behind such chains.
pub(super) struct Chain {
    pub(super) next: Option<Event>,
    /// Returned events processed since the task last parked or let a queued event in.
    count: u32,
    /// Queued events still to take without `select!`.
    fast: u32,
}

impl Chain {
    pub(super) fn new() -> Self {
        Self {
            next: None,
            count: 0,
            fast: FAST_BUDGET,
        }
    }

    /// The task waits: the counts start again.
    pub(super) fn parked(&mut self) {
        self.count = 0;
        self.fast = FAST_BUDGET;
    }
}

impl Machine {
    /// Before the first phase: the machine is announced and saved, its timers armed.
    pub(super) fn started(&mut self) {
        let now = crate::runtime::clock::coarse_unix_ms();
        self.shared.since_ms.store(now, Ordering::Relaxed);
        // Starting counts as activity: a machine that never does anything is as old as
        // its start.
        self.shared.active_ms.store(now, Ordering::Relaxed);
        if let Some(o) = &self.observer {
            self.measure.start();
            o.machine_started(self.mref(), self.sref(self.state));
            self.measure.set_quick(o.quick_observer(self.mref()));
        }
        tracing::info!(
            target: "turnstile::machine",
            machine = %self.shared.name,
            state = %self.def.states[self.state].name,
            "machine started"
        );
        self.save(None);
        self.arm_timers();
    }

    /// [`Phase::Running`]: one step of run to completion.
    #[inline]
    pub(super) fn running(&mut self) -> Phase {
        if self.chain.next.is_some() {
            self.chain.count += 1;
            if self.chain.count >= FAIRNESS {
                return Phase::Yield;
            }
            if let Some(ev) = self.chain.next.take() {
                return self.admit(ev);
            }
            return Phase::Running;
        }
        if self.waiting.is_some() {
            return Phase::Waiting;
        }
        if self.has_next_action() {
            if let Some(t) = &self.tenure {
                if !t.holds() {
                    return self.lease_lost();
                }
            }
            self.step();
            return Phase::Running;
        }
        self.settle()
    }

    /// The current entry's actions are done: its event is reported, the state saved as
    /// they left it. A final state stops the machine.
    #[inline]
    fn settle(&mut self) -> Phase {
        self.finish_active();
        if self.persist.dirty {
            self.save_settled();
        }
        if self.def.states[self.state].is_final {
            return Phase::Stopped(StopReason::FinalState);
        }
        Phase::Idle
    }

    /// [`Phase::Idle`], the fast way: an event already queued is taken without
    /// `select!` (while the budget lasts and no timer is armed). `None`: park.
    #[inline]
    pub(super) fn take_queued(&mut self) -> Option<Phase> {
        if !self.timers.idle() || self.chain.fast == 0 {
            return None;
        }
        let ev = self.shared.mailbox.try_recv()?;
        self.chain.fast -= 1;
        // A new chain may start from this event: the fairness count is per chain, so a
        // short chain is never cut into.
        self.chain.count = 0;
        // Taken without waiting: after an action-less event, its transition is timed at
        // that event's end (`last_end`).
        Some(self.admit(ev))
    }

    /// Nothing would wake the machine but its mailbox: no action waits (nor a job claim
    /// with it), no timer is armed, no event is chained or held, it is not paused and no
    /// live request waits, it has no lease tenure to watch, the engine is not shutting
    /// down, and nothing is queued. Only a parkable machine ([`Machine::parkable`]).
    fn may_park(&self) -> bool {
        self.parkable
            && self.waiting.is_none()
            && self.claim.is_none()
            && self.timers.idle()
            && self.chain.next.is_none()
            && self.tenure.is_none()
            && self.gate_open()
            && !self.cancel.is_cancelled()
            && self.shared.mailbox.is_idle()
    }

    /// [`Phase::Idle`] and [`Phase::Waiting`]: wait for whatever comes first (shutdown, a
    /// request, an event, the waiting action, the loss of the job claim the machine holds
    /// (only while an action waits; see [`super::actions`]), a timer), in that order of
    /// priority.
    ///
    /// Split in two: [`Machine::before_wait`], what is done before waiting (and may find
    /// the machine is to park without a task instead), and [`Machine::wait`], the wait.
    pub(super) fn before_wait(&mut self) -> Option<Phase> {
        if self.gated() {
            if let Some(p) = self.gate_parked() {
                return Some(p);
            }
        }
        self.note_activity();
        // This is where the task parks (or runs out of coop budget): the count of events
        // chained without a yield starts again.
        self.chain.count = 0;
        self.chain.fast = FAST_BUDGET;
        // The task may wait here: the next event's start is read from the clock.
        self.measure.forget_end();
        if self.may_park() {
            return Some(Phase::Park);
        }
        None
    }

    /// The wait of [`Phase::Idle`] and [`Phase::Waiting`], after [`Machine::before_wait`].
    pub(super) async fn wait(&mut self) -> Phase {
        let deadline = self.deadline();
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Phase::Stopped(StopReason::Shutdown),
            () = tenure_ended(&self.tenure), if self.tenure.is_some() => self.lease_lost(),
            msg = self.shared.mailbox.recv(true) => match msg {
                Msg::Control(c) => match self.control(c) {
                    Some(reason) => Phase::Stopped(reason),
                    None => Phase::Running,
                },
                Msg::Live(req) => self.serve_one(req),
                Msg::Event(ev) => self.admit(ev),
            },
            out = wait_action(&mut self.waiting), if self.waiting.is_some() => {
                self.finish_waiting(out);
                Phase::Running
            }
            why = claim_lost(&self.claim), if self.claim.is_some() && self.waiting.is_some() => {
                self.cancel_for_lost_claim(why);
                Phase::Running
            }
            () = sleep_opt(deadline), if deadline.is_some() => match self.fire_timer() {
                Some(ev) => self.admit(ev),
                None => Phase::Running,
            },
        }
    }

    /// A singleton's tenure ended: the machine stops (a waiting action is interrupted by
    /// the stop: a command's process group is killed).
    #[cold]
    pub(super) fn lease_lost(&mut self) -> Phase {
        if let Some(t) = &self.tenure {
            t.lose();
            tracing::error!(
                target: "turnstile::singleton",
                machine = %self.shared.name,
                epoch = t.epoch(),
                "lease tenure ended (deadline passed or lease taken over): stopping this copy"
            );
        }
        Phase::Stopped(StopReason::LeaseLost)
    }

    /// [`Phase::Yield`]: let other tasks run, then one queued event in. When it changes
    /// state, the chained event (of the state left) is dropped; otherwise it goes next.
    pub(super) async fn yield_to_queue(&mut self) -> Phase {
        self.note_activity();
        self.chain.count = 0;
        self.measure.forget_end();
        let chained = self.chain.next.take();
        tokio::task::yield_now().await;
        if self.cancel.is_cancelled() {
            return Phase::Stopped(StopReason::Shutdown);
        }
        if let Some(ext) = self.shared.mailbox.try_recv() {
            if self.gated() {
                // The chained event goes next, through the gate in turn (a transition
                // drops it).
                self.chain.next = chained;
                return self.admit(ext);
            }
            if self.handle(ext) {
                // The state the chained event belonged to was left.
                return Phase::Running;
            }
        }
        match chained {
            Some(ev) => self.admit(ev),
            None => Phase::Running,
        }
    }
}

/// Completes when the tenure ends; never when there is none.
pub(super) async fn tenure_ended(t: &Option<std::sync::Arc<Tenure>>) {
    match t {
        Some(t) => t.ended().await,
        None => std::future::pending().await,
    }
}

//! Running the actions of a state entry, one per [`Phase::Running`](super::phases::Phase)
//! step: the transition's actions, then the target's entry actions.
//!
//! An action either finishes at once ([`Step::Done`]) or hands back a future
//! ([`Step::Wait`]) that the task polls in the waiting phase. A waiting action ends in one
//! of two ways: it finishes ([`Machine::finish_waiting`]) or it is interrupted
//! ([`Machine::interrupt_waiting`]: a transition, a reload that removed its state, the
//! machine stopping). Any other reason to cancel it from outside is one more interrupt.
//!
//! One such reason: the claim of the job the machine holds is lost. A job action that
//! claims a job before its claim is durable hands the machine the claim's
//! [`ClaimLoss`](crate::store::ClaimLoss) ([`HeldClaim`]). The machine keeps it until the
//! next claim replaces it, a job action (`check_database_queue`, `claim_job`,
//! `complete_job`, `fail_job`) starts, or the machine stops. While it holds one, the
//! waiting phase also waits on it: when it fires (now, or before an action waits), the
//! waiting action is dropped, as an interrupt drops it (a command is killed), and
//! finished as an error of the action ([`Machine::cancel_for_lost_claim`]), its `error`
//! event returned. A quick action is never cancelled: the store refuses the completion
//! of a lost claim anyway.

use super::Machine;
use crate::actions::{ActionCx, ActionFuture, JobChange, JobNote, Outcome, Status, Step};
use crate::observe::{ActionEnd, ActionOutcome, ActionReport, ErrorKind};
use crate::runtime::def::ActionDef;
use crate::runtime::event::{Event, Origin};
use crate::store::ClaimLoss;

/// The job the machine claimed, while its claim may still be lost.
pub(super) struct HeldClaim {
    job_id: String,
    loss: ClaimLoss,
}

/// Why the held claim was lost, once it is; never when there is none.
pub(super) async fn claim_lost(c: &Option<HeldClaim>) -> String {
    match c {
        Some(c) => c.loss.lost().await.to_owned(),
        None => std::future::pending().await,
    }
}

/// An action that is waiting for something.
pub(super) struct Waiting {
    fut: ActionFuture,
    action: ActionDef,
    index: usize,
    /// A reading, taken only when an observer is attached.
    started: Option<u64>,
}

/// The waiting action's outcome, or never when there is none.
pub(super) async fn wait_action(w: &mut Option<Waiting>) -> Outcome {
    match w {
        Some(w) => w.fut.as_mut().await,
        None => std::future::pending().await,
    }
}

impl Machine {
    fn rule_actions(&self) -> &[ActionDef] {
        match self.entry.rule {
            Some(r) => &self.def.rules[r].actions,
            None => &[],
        }
    }

    /// Actions of the current entry are left to run.
    #[inline]
    pub(super) fn has_next_action(&self) -> bool {
        self.entry.pos < self.rule_actions().len() + self.def.states[self.state].entry.len()
    }

    /// Starts the next action: finished at once, or now waited for.
    pub(super) fn step(&mut self) {
        let def = self.def.clone();
        let idx = self.entry.pos;
        let ra = self.rule_actions().len();
        let action = if idx < ra {
            match self.entry.rule {
                Some(r) => &def.rules[r].actions[idx],
                None => return,
            }
        } else {
            &def.states[self.state].entry[idx - ra]
        };
        self.entry.pos += 1;
        if self.claim.is_some() && action.action.settles_jobs() {
            // The store answers for the held job from here on.
            self.claim = None;
        }
        let trace = match &self.observer {
            Some(o) if self.measure.starts => o
                .action_started(&ActionReport {
                    machine: self.mref(),
                    state: self.sref(self.state),
                    kind: &action.kind,
                    index: idx,
                })
                .or(self.entry.trace),
            _ => self.entry.trace,
        };
        let started = self.measure.tick();
        let mut cx = ActionCx {
            machine: &self.shared.name,
            state: &def.states[self.state].name,
            context: &mut self.context,
            event: &self.entry.cause,
            router: &self.router,
            trace,
        };
        match action.action.run(&mut cx) {
            Step::Done(out) => self.finish_action(action, idx, out, started),
            Step::Wait(fut) => {
                // Something is waited for: the re-entries are not back to back.
                self.livelock.count = 0;
                self.waiting = Some(Waiting {
                    fut,
                    action: action.clone(),
                    index: idx,
                    started,
                });
            }
        }
    }

    /// The waiting action finished.
    pub(super) fn finish_waiting(&mut self, out: Outcome) {
        if let Some(w) = self.waiting.take() {
            self.finish_action(&w.action, w.index, out, w.started);
        }
    }

    /// An action's outcome: its context changes, its reports, and the event it returned
    /// (processed next, unless the state is final).
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
        self.actions_finished += 1;
        if let Some(j) = job {
            if let Some(o) = &self.observer {
                let m = self.mref();
                match &j.change {
                    JobChange::Claimed => o.job_claimed(m, &j.job_type, &j.job_id),
                    JobChange::Completed => o.job_completed(m, &j.job_type, &j.job_id),
                    JobChange::Failed(msg) => o.job_failed(m, &j.job_type, &j.job_id, msg),
                }
            }
            let JobNote {
                change,
                job_id,
                loss,
                ..
            } = *j;
            // A claim replaces the job held (watched only while it may be lost); a
            // completion or failure ends it.
            self.claim = match change {
                JobChange::Claimed => loss.map(|loss| HeldClaim { job_id, loss }),
                JobChange::Completed | JobChange::Failed(_) => None,
            };
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
                    duration: self.measure.since(started),
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
            self.report_error(kind, Some(&self.entry.cause), &msg);
        }
        let Some(name) = event else {
            return;
        };
        if self.def.states[self.state].is_final {
            tracing::debug!(
                target: "turnstile::event",
                machine = %self.shared.name,
                event = %name,
                "final state: the event returned by its action is not processed"
            );
            return;
        }
        let cause = &self.entry.cause;
        self.chain.next = Some(Event {
            name,
            payload: cause.payload.clone(),
            job_id: job_id.or_else(|| cause.job_id.clone()),
            traceparent: traceparent.or(self.entry.trace),
            origin: Origin::Action,
            store_id: None,
        });
    }

    /// The held claim was lost: the waiting action is dropped (its command killed) and
    /// finished as an error of the action, which returns its `error` event.
    #[inline(never)]
    pub(super) fn cancel_for_lost_claim(&mut self, why: String) {
        let (Some(held), Some(w)) = (self.claim.take(), self.waiting.take()) else {
            return;
        };
        drop(w.fut);
        let msg = format!(
            "job {}: its claim did not commit ({why}); the action was cancelled",
            held.job_id
        );
        let out = Outcome::error(&w.action.kind, msg, Some(w.action.error_event.clone()))
            .with_kind(ErrorKind::Action);
        self.finish_action(&w.action, w.index, out, w.started);
    }

    /// Drops the waiting action, if any, and reports it interrupted.
    #[inline]
    pub(super) fn interrupt_waiting(&mut self) {
        if let Some(w) = self.waiting.take() {
            self.interrupted(w);
        }
    }

    #[inline(never)]
    fn interrupted(&self, w: Waiting) {
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
                    duration: self.measure.since(w.started),
                    event: None,
                    output: None,
                    error: None,
                },
            );
        }
        tracing::debug!(
            target: "turnstile::action",
            machine = %self.shared.name,
            action = %w.action.kind,
            "waiting action interrupted by a transition"
        );
    }
}

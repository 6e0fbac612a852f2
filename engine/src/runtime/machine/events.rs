//! One event: its rule, the livelock guard, the transition it makes.
//!
//! [`Machine::handle`] is the hot path (every event of a busy machine goes through it):
//! one route lookup, then either the few lines of an ignored event or a transition, with
//! at most one clock reading ([`Measure`](super::measure::Measure) says when none is
//! needed).

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Map, Value as Json};

use super::Machine;
use crate::observe::{ErrorKind, EventOutcome, EventReport, TransitionReport};
use crate::runtime::def::MachineDef;
use crate::runtime::event::{Event, Origin};
use crate::runtime::trace::TraceContext;

/// The current state entry: what caused it and how far its actions have run.
pub(super) struct Entry {
    /// The event that caused it: actions see its payload.
    pub(super) cause: Event,
    /// The trace context of the event now running (its span, or what it carried in):
    /// events its actions return or send continue it.
    pub(super) trace: Option<TraceContext>,
    /// The event to report as finished once the actions are done (or cut short).
    pub(super) active: Option<Active>,
    /// The rule whose transition actions run before the entry actions, if any.
    pub(super) rule: Option<usize>,
    /// Next action to run: an index into the rule's actions followed by the entry actions.
    pub(super) pos: usize,
}

impl Entry {
    /// The initial state's entry when the machine starts: its entry actions all to run.
    pub(super) fn start() -> Self {
        Self {
            cause: Event::new("start").with_origin(Origin::Start),
            trace: None,
            active: None,
            rule: None,
            pos: 0,
        }
    }
}

/// The event whose transition started the actions now running.
pub(super) struct Active {
    from: usize,
    to: usize,
    event_id: usize,
    /// When the transition happened (a [`Ticks`](crate::runtime::clock::Ticks) reading,
    /// with an observer).
    started: Option<u64>,
}

/// Consecutive re-entries of a state by its own actions' events, with nothing waiting in
/// between; past `limit` the next one is refused (`ErrorKind::Livelock`).
pub(super) struct Livelock {
    limit: u32,
    pub(super) count: u32,
}

impl Livelock {
    pub(super) fn new(limit: u32) -> Self {
        Self { limit, count: 0 }
    }
}

impl Machine {
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
    pub(super) fn handle(&mut self, ev: Event) -> bool {
        match ev.store_id {
            None => self.handle_event(ev),
            Some(id) => {
                // With a persister, the transition's save carries the mark; otherwise
                // (no transition, or no persister) it is handed over here.
                if self.persist.to.is_some() {
                    self.persist.handling = Some(id);
                }
                let took = self.handle_event(ev);
                if self.persist.to.is_none() || self.persist.handling.take().is_some() {
                    self.router.handled(&self.shared.name, id);
                }
                took
            }
        }
    }

    /// [`Self::handle`] of any event.
    #[inline]
    fn handle_event(&mut self, ev: Event) -> bool {
        self.shared.events.fetch_add(1, Ordering::Relaxed);
        let from = self.state;
        let def = self.def.clone();
        if ev.origin == Origin::External && (ev.payload.is_some() || ev.job_id.is_some()) {
            self.absorb(&def, &ev);
        }
        let Some(rule_ix) = def.route_index(from, &ev.name) else {
            self.ignored(&ev);
            return false;
        };
        if self.livelocked(&def, rule_ix, &ev) {
            return false;
        }
        self.transition(&def, rule_ix, ev);
        true
    }

    /// No rule takes the event in this state.
    #[cold]
    #[inline(never)]
    fn ignored(&mut self, ev: &Event) {
        // The next event does not start where the last transitioned one ended.
        self.measure.forget_end();
        self.unrouted(ev, EventOutcome::Ignored);
        tracing::debug!(
            target: "turnstile::event",
            machine = %self.shared.name,
            state = %self.def.states[self.state].name,
            event = %ev.name,
            "event ignored: no transition for it in this state"
        );
    }

    /// The livelock guard: counts re-entries of a state by its own actions' events (any
    /// other event starts the count again) and refuses the one past the limit.
    #[inline]
    fn livelocked(&mut self, def: &MachineDef, rule_ix: usize, ev: &Event) -> bool {
        let from = self.state;
        if ev.origin == Origin::Action && def.rules[rule_ix].to == from {
            self.livelock.count += 1;
            if self.livelock.count > self.livelock.limit {
                self.refuse_livelock(def, ev);
                return true;
            }
        } else if ev.origin != Origin::Action {
            self.livelock.count = 0;
        }
        false
    }

    #[cold]
    #[inline(never)]
    fn refuse_livelock(&mut self, def: &MachineDef, ev: &Event) {
        self.livelock.count = 0;
        let msg = format!(
            "state `{}` re-entered itself {} times in a row through `{}` returned by its own actions, with nothing waiting in between; refused to go on (send an event to continue)",
            def.states[self.state].name, self.livelock.limit, ev.name
        );
        self.report_error(ErrorKind::Livelock, Some(ev), &msg);
        self.measure.forget_end();
        self.unrouted(ev, EventOutcome::Rejected);
    }

    /// Leaves the current state by rule `rule_ix`: the old entry ends (its waiting action
    /// interrupted, its chained event dropped), the new one starts with the rule's actions.
    fn transition(&mut self, def: &MachineDef, rule_ix: usize, ev: Event) {
        let rule = &def.rules[rule_ix];
        let from = self.state;
        // The event that started the running actions ends here (cut short, or done).
        self.finish_active();
        self.interrupt_waiting();
        self.chain.next = None;
        self.entry.trace = match &self.observer {
            Some(o) if self.measure.starts => o
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
        let mark = self.measure.transition(quick);
        match &mark {
            Some(m) => {
                self.shared.since_ms.store(m.unix_ms, Ordering::Relaxed);
                if let (Some(o), false) = (&self.observer, quick) {
                    o.transition(&self.transition_report(
                        from,
                        to,
                        &ev,
                        rule.event_id,
                        m.time_in_from,
                    ));
                }
            }
            None => self
                .shared
                .since_ms
                .store(crate::runtime::clock::coarse_unix_ms(), Ordering::Relaxed),
        }
        tracing::info!(
            target: "turnstile::transition",
            machine = %self.shared.name,
            from = %def.states[from].name,
            to = %def.states[to].name,
            event = %ev.name,
            "transition"
        );
        if self.persist.to.is_some() {
            self.save(Some((
                &def.states[from].name,
                &ev.name,
                ev.job_id.as_deref(),
            )));
            self.persist.dirty = true;
        }
        match (&self.observer, mark, quick) {
            // An action-less event not timed: counted by the engine alone, or reported
            // without durations.
            (Some(_), None, true) => {
                if let Some(q) = &self.measure.quick {
                    if self.measure.timing.wants_untimed() {
                        q.transition_untimed(from, to, rule.event_id);
                    }
                }
            }
            (Some(o), Some(m), true) => {
                let duration = self.measure.quick_end(m.at);
                match &self.measure.quick {
                    Some(q) => {
                        let t = m.time_in_from.unwrap_or(u64::MAX);
                        q.transition_finished(from, to, rule.event_id, t, duration);
                    }
                    None => o.transition_finished(
                        &self.transition_report(from, to, &ev, rule.event_id, m.time_in_from),
                        Duration::from_nanos(duration),
                    ),
                }
            }
            _ => {
                self.entry.active = Some(Active {
                    from,
                    to,
                    event_id: rule.event_id,
                    started: self.measure.entered(),
                });
            }
        }
        self.entry.cause = ev;
        self.entry.rule = (!rule.actions.is_empty()).then_some(rule_ix);
        self.entry.pos = 0;
        self.arm_timers();
    }

    fn transition_report<'a>(
        &'a self,
        from: usize,
        to: usize,
        event: &'a Event,
        event_id: usize,
        time_in_from: Option<u64>,
    ) -> TransitionReport<'a> {
        TransitionReport {
            machine: self.mref(),
            from: self.sref(from),
            to: self.sref(to),
            event,
            event_id,
            time_in_from: time_in_from.map_or(crate::observe::NOT_TIMED, Duration::from_nanos),
        }
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
                if let Some(v) = crate::runtime::template::lookup_path(&msg, path) {
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

    /// Reports the event whose actions ran as finished, if not yet.
    #[inline]
    pub(super) fn finish_active(&mut self) {
        if let Some(a) = self.entry.active.take() {
            self.report_finished(a);
        }
    }

    #[inline(never)]
    fn report_finished(&self, a: Active) {
        if let Some(o) = &self.observer {
            o.event_finished(&EventReport {
                machine: self.mref(),
                event: &self.entry.cause,
                event_id: Some(a.event_id),
                outcome: EventOutcome::Transitioned,
                from: self.sref(a.from),
                to: self.sref(a.to),
                duration: self.measure.since(a.started),
            });
        }
    }
}

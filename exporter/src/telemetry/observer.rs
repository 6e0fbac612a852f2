//! The [`Observer`] implementation: each report of the engine goes to the machine's slot
//! ([`super::slot`]), the metrics, the spans and the `/trace` and `/errors` records, and,
//! while someone follows it, the live record stream (`stream_feed.rs`).
//!
//! Its own file because this is the write side, called from the machines' tasks (and from
//! the engine for reloads, plugins and jobs), apart from [`super::Telemetry`]'s own methods:
//! building it, wiring it to an engine and what the sidecar reads. The end of an event, the
//! hot path, is in [`super::event`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use opentelemetry::KeyValue;
use turnstile_engine::observe::{
    ActionEnd, ActionOutcome, ActionReport, ControlAction, ControlReport, ErrorKind, ErrorReport,
    EventReport, MachineRef, Observer, QuickObserver, StateRef, StopReason, TransitionReport,
};
use turnstile_engine::{Event, TraceContext};

use super::event::{nanos, timed};
use super::metrics::{self, ReloadResult};
use super::records::{self, ActionRecord, ErrorRecord, Ring};
use super::slot::{Live, LiveAction, LiveEvent, QuickSlot, Recipe, Slot, SlotMetrics};
use super::spans::LiveSpan;
use super::stream::{LaneCell, Names, QuickFeed};
use super::Telemetry;

impl Telemetry {
    /// The `/trace` ring of a config machine's slot (an instance's records go to its
    /// definition's rings, [`Self::instance_rings`]).
    fn trace_ring(&self, m: &MachineRef<'_>) -> Option<Arc<Ring<records::TraceRecord>>> {
        (!m.instance).then(|| Arc::new(Ring::new(self.config.trace_buffer)))
    }

    /// The `/trace` rings of a definition's instances (one per thread; the same after a
    /// reload).
    fn instance_rings(&self, def: &Arc<str>) -> Arc<records::ThreadRings> {
        self.instance_traces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(def.clone())
            .or_insert_with(|| Arc::new(records::ThreadRings::new(self.config.trace_buffer)))
            .clone()
    }

    /// The names and metric writers of a new slot: a config machine's own (its writers
    /// made now); an instance's shared with the other instances of its definition (their
    /// writers, one set per thread, made when a thread first reports for them).
    fn slot_parts(
        &self,
        m: &MachineRef<'_>,
        detail: turnstile_engine::MetricsDetail,
    ) -> (Arc<Names>, SlotMetrics) {
        if !m.instance {
            let metrics = SlotMetrics::Now(Box::new(self.metrics.machine(m.def, detail)));
            return (Names::new(m.def, None), metrics);
        }
        let mut recipes = self.recipes.lock().unwrap_or_else(|e| e.into_inner());
        let recipe = match recipes.get(&m.def.name) {
            Some(r) if Arc::ptr_eq(&r.def, m.def) && r.detail == detail => r.clone(),
            _ => {
                let r = Arc::new(Recipe::new(
                    self.metrics.clone(),
                    m.def.clone(),
                    detail,
                    Names::new(m.def, None),
                    self.instance_rings(&m.def.name),
                ));
                recipes.insert(m.def.name.clone(), r.clone());
                r
            }
        };
        drop(recipes);
        (recipe.names.clone(), SlotMetrics::Shared(recipe))
    }

    fn slot<'a>(&self, m: &MachineRef<'a>) -> Option<&'a Slot> {
        m.slot
            .get()
            .and_then(|b| b.downcast_ref::<Arc<Slot>>())
            .map(|a| &**a)
    }

    /// `turnstile_job_changes_total{machine, job_type, change}` (a few per job: the family's
    /// lock is fine here).
    fn job_change(&self, m: MachineRef<'_>, job_type: &str, change: &'static str) {
        self.metrics
            .job_changes
            .get_or_create(&metrics::JobChangeL {
                machine: m.def.name.clone(),
                job_type: job_type.to_owned(),
                change,
            })
            .inc();
    }
}

pub(super) fn truncate(s: &str, limit: usize) -> String {
    if s.len() <= limit {
        return s.to_owned();
    }
    let mut end = limit;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn action_outcome_index(o: ActionOutcome) -> usize {
    match o {
        ActionOutcome::Ok => 0,
        ActionOutcome::Error => 1,
        ActionOutcome::Timeout => 2,
        ActionOutcome::Interrupted => 3,
    }
}

impl Observer for Telemetry {
    fn machine_started(&self, m: MachineRef<'_>, s: StateRef<'_>) {
        let (names, metrics) = self.slot_parts(&m, self.detail(m.def));
        let slot = Arc::new(Slot {
            name: m.def.name.clone(),
            instance: m.instance.then(|| Arc::from(m.name)),
            names,
            metrics,
            instance_names: OnceLock::new(),
            lane: LaneCell::default(),
            processed: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            timing: self.quick_timing(m.def),
            live: Mutex::new(Live {
                state: s.id,
                ..Live::default()
            }),
            trace: self.trace_ring(&m),
        });
        if !m.instance {
            self.machines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(slot.clone());
        }
        let _ = m.slot.set(Box::new(slot));
    }

    /// A reload changed the state and event indexes: a new slot with handles built from
    /// the new definition (the same label sets give the same series) takes the old one's
    /// place, keeping its counts and its `/trace` records.
    fn machine_reloaded(&self, m: MachineRef<'_>, previous: MachineRef<'_>, s: StateRef<'_>) {
        let old = self.slot(&previous);
        // An action still waiting goes on under the new definition: its span (if any)
        // moves along, so that its end is recorded.
        let action = old.and_then(|o| {
            o.live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .action
                .take()
        });
        let detail = self.detail(m.def);
        if let Some(o) = old {
            if o.metrics.detail() != detail {
                self.metrics
                    .forget_level(previous.def, o.metrics.detail(), detail);
            }
        }
        let (names, metrics) = self.slot_parts(&m, detail);
        let slot = Arc::new(Slot {
            name: m.def.name.clone(),
            instance: m.instance.then(|| Arc::from(m.name)),
            names,
            metrics,
            instance_names: OnceLock::new(),
            lane: LaneCell::default(),
            processed: AtomicU64::new(old.map_or(0, |o| o.processed.load(Ordering::Relaxed))),
            busy_ns: AtomicU64::new(old.map_or(0, |o| o.busy_ns.load(Ordering::Relaxed))),
            timing: self.quick_timing(m.def),
            live: Mutex::new(Live {
                state: s.id,
                event: None,
                action,
            }),
            trace: match old {
                Some(o) if !m.instance => o.trace.clone(),
                _ => self.trace_ring(&m),
            },
        });
        if !m.instance {
            let mut machines = self.machines.lock().unwrap_or_else(|e| e.into_inner());
            let at = old.and_then(|o| machines.iter().position(|x| std::ptr::eq(&**x, o)));
            match at {
                Some(i) => machines[i] = slot.clone(),
                None => machines.push(slot.clone()),
            }
        }
        let _ = m.slot.set(Box::new(slot));
    }

    fn machine_stopped(&self, _m: MachineRef<'_>, _s: StateRef<'_>, _r: StopReason) {}

    /// Metrics only: the machine's slot receives its action-less events directly.
    fn quick_observer(&self, m: MachineRef<'_>) -> Option<Box<dyn QuickObserver>> {
        if !self.metrics_only() {
            return None;
        }
        let slot = m.slot.get()?.downcast_ref::<Arc<Slot>>()?;
        Some(Box::new(QuickSlot(
            slot.clone(),
            QuickFeed::new(&self.stream),
        )))
    }

    /// Event and action starts only matter to `/trace` records and spans.
    fn observes_starts(&self) -> bool {
        !self.metrics_only()
    }

    fn event_started(
        &self,
        m: MachineRef<'_>,
        event: &Event,
        _depth: usize,
    ) -> Option<TraceContext> {
        let slot = self.slot(&m)?;
        let want_record = self.config.trace_buffer > 0;
        if !want_record && self.spans.is_none() {
            return None;
        }
        // Records alone need only a millisecond timestamp; spans a precise one.
        let at = if self.spans.is_some() {
            SystemTime::now()
        } else {
            records::coarse_now()
        };
        let mut live = slot.live.lock().unwrap_or_else(|e| e.into_inner());
        let span = self.spans.as_ref().and_then(|sp| {
            let from = slot
                .states()
                .get(live.state)
                .cloned()
                .unwrap_or_else(|| Arc::from(""));
            let mut attrs = vec![
                KeyValue::new("turnstile.machine", slot.name.to_string()),
                KeyValue::new("turnstile.event", event.name.to_string()),
                KeyValue::new("turnstile.state.from", from.to_string()),
            ];
            if let Some(i) = &slot.instance {
                attrs.push(KeyValue::new("turnstile.instance", i.to_string()));
            }
            if let Some(j) = &event.job_id {
                attrs.push(KeyValue::new("turnstile.job.id", j.clone()));
            }
            sp.start_event(
                format!("{} {}", slot.name, event.name),
                event.traceparent,
                attrs,
                at,
            )
        });
        let trace = span.as_ref().map(LiveSpan::context).or(event.traceparent);
        live.event = Some(Box::new(LiveEvent {
            at,
            span,
            trace,
            actions: Vec::new(),
            failed: None,
        }));
        trace
    }

    fn transition(&self, r: &TransitionReport<'_>) {
        if let Some(slot) = self.slot(&r.machine) {
            self.transitioned(slot, r);
        }
    }

    /// One slot lookup for both.
    fn transition_finished(&self, r: &TransitionReport<'_>, duration: std::time::Duration) {
        let Some(slot) = self.slot(&r.machine) else {
            return;
        };
        if self.metrics_only() {
            if self.stream.active() {
                self.stream_transition(slot, r);
            }
            // Metrics only: what `transitioned` and `finished` do, without the report.
            QuickObserver::transition_finished(
                slot,
                r.from.id,
                r.to.id,
                r.event_id,
                timed(r.time_in_from).unwrap_or(u64::MAX),
                nanos(duration),
            );
            return;
        }
        self.transitioned(slot, r);
        self.finished(slot, &r.finished(duration));
    }

    fn action_started(&self, r: &ActionReport<'_>) -> Option<TraceContext> {
        let slot = self.slot(&r.machine)?;
        if self.metrics_only() {
            return None;
        }
        let at = SystemTime::now();
        let mut live = slot.live.lock().unwrap_or_else(|e| e.into_inner());
        let span = match (
            &self.spans,
            live.event.as_ref().and_then(|e| e.span.as_ref()),
        ) {
            (Some(sp), Some(parent)) => Some(sp.start_child(
                parent,
                format!("action {}", r.kind),
                vec![
                    KeyValue::new("turnstile.action.type", r.kind.to_owned()),
                    KeyValue::new(
                        "turnstile.action.index",
                        i64::try_from(r.index).unwrap_or(-1),
                    ),
                ],
                at,
            )),
            _ => None,
        };
        let trace = span.as_ref().map(LiveSpan::context);
        live.action = Some(Box::new(LiveAction { span }));
        trace
    }

    fn action_finished(&self, r: &ActionReport<'_>, end: &ActionEnd<'_>) {
        let Some(slot) = self.slot(&r.machine) else {
            return;
        };
        if self.stream.active() {
            self.stream_action(slot, r, end);
        }
        let outcome = action_outcome_index(end.outcome);
        let secs = end.duration.as_secs_f64();
        if self.metrics_only() {
            slot.metrics.action(r.kind, outcome, secs, None);
            return;
        }
        let now = SystemTime::now();
        let mut live = slot.live.lock().unwrap_or_else(|e| e.into_inner());
        let action = live.action.take();
        let exemplar = action
            .as_ref()
            .and_then(|a| a.span.as_ref())
            .map(LiveSpan::context);
        slot.metrics
            .action(r.kind, outcome, secs, Self::exemplar(exemplar.as_ref()));
        if let Some(a) = action {
            if let Some(span) = a.span {
                span.set(KeyValue::new(
                    "turnstile.action.outcome",
                    end.outcome.as_str(),
                ));
                if let Some(err) = end.error {
                    span.fail(end.outcome.as_str(), err, now);
                }
                span.end(now);
            }
        }
        if let Some(ev) = live.event.as_mut() {
            if let Some(err) = end.error {
                ev.failed = Some((
                    if end.outcome == ActionOutcome::Timeout {
                        "action_timeout"
                    } else {
                        "action"
                    },
                    err.to_owned(),
                ));
            }
            if self.config.trace_buffer > 0 {
                let limit = self.config.output_limit;
                ev.actions.push(ActionRecord {
                    kind: Arc::from(r.kind),
                    outcome: end.outcome.as_str(),
                    duration_ms: secs * 1e3,
                    event: end.event.map(Arc::from),
                    output: end.output.map(|o| truncate(o, limit)),
                    error: end.error.map(|e| truncate(e, limit)),
                });
            }
        }
    }

    fn event_finished(&self, r: &EventReport<'_>) {
        if let Some(slot) = self.slot(&r.machine) {
            self.finished(slot, r);
        }
    }

    fn error(&self, r: &ErrorReport<'_>) {
        let slot = r.machine.as_ref().and_then(|m| self.slot(m));
        match (slot, r.machine) {
            (Some(s), _) => s.metrics.error(r.kind),
            // Reported off the machine's task (a bad socket message), with an empty slot:
            // counted for the machine of that name.
            (None, Some(m)) => match self.slots().into_iter().rev().find(|s| *s.name == *m.name) {
                Some(s) => s.metrics.error(r.kind),
                None => self.metrics.global_error(r.kind),
            },
            (None, None) => self.metrics.global_error(r.kind),
        }
        let trace_id = slot.and_then(|s| {
            let live = s.live.lock().unwrap_or_else(|e| e.into_inner());
            live.event
                .as_ref()
                .and_then(|e| e.trace)
                .map(|t| t.trace_id_hex())
        });
        let record = ErrorRecord {
            timestamp: records::timestamp(SystemTime::now()),
            error_type: r.kind.as_str(),
            message: r.message.to_owned(),
            machine: r.machine.map(|m| m.def.name.to_string()),
            instance: r.machine.filter(|m| m.instance).map(|m| m.name.to_owned()),
            state: r.state.map(str::to_owned),
            event: r.event.map(|e| e.name.to_string()),
            trace_id: trace_id.or_else(|| {
                r.event
                    .and_then(|e| e.traceparent)
                    .map(|t| t.trace_id_hex())
            }),
        };
        if self.stream.active() {
            self.stream_error(&record);
        }
        self.errors.push(record);
    }

    /// A live operation or a breakpoint hit: a span of its own (no duration: the machine
    /// did it between two events), and the slot follows a restart's jump to the initial
    /// state. The log line is the engine's.
    fn control(&self, r: &ControlReport<'_>) {
        if let Some(slot) = self.slot(&r.machine) {
            slot.live.lock().unwrap_or_else(|e| e.into_inner()).state = r.state.id;
        }
        if self.stream.active() {
            self.stream_control(r);
        }
        let Some(sp) = &self.spans else {
            return;
        };
        let at = SystemTime::now();
        let mut attrs = vec![
            KeyValue::new("turnstile.machine", r.machine.name.to_owned()),
            KeyValue::new("turnstile.control", r.action.as_str()),
            KeyValue::new("turnstile.state", r.state.name.to_owned()),
            KeyValue::new("turnstile.paused", r.paused),
        ];
        if let Some(e) = r.event {
            attrs.push(KeyValue::new("turnstile.event", e.name.to_string()));
        }
        match r.action {
            ControlAction::BreakpointSet(id)
            | ControlAction::BreakpointRemoved(id)
            | ControlAction::BreakpointHit(id, _) => {
                attrs.push(KeyValue::new(
                    "turnstile.breakpoint.id",
                    i64::try_from(id).unwrap_or(i64::MAX),
                ));
            }
            _ => {}
        }
        let parent = r.event.and_then(|e| e.traceparent);
        let name = format!("{} {}", r.machine.name, r.action.as_str());
        if let Some(span) = sp.start_event(name, parent, attrs, at) {
            span.end(at);
        }
    }

    fn plugin_swapped(&self, name: &str, version: &str, previous: &str) {
        // The old version's series goes: `turnstile_plugin_info` shows what serves now.
        self.metrics.plugin_info.remove(&metrics::PluginL {
            plugin: name.to_owned(),
            version: previous.to_owned(),
        });
        self.set_plugins(&[(name.to_owned(), version.to_owned())]);
    }

    fn job_claimed(&self, m: MachineRef<'_>, job_type: &str, job_id: &str) {
        self.job_change(m, job_type, "claimed");
        self.stream_job(m, "claimed", job_type, job_id, None);
    }

    fn job_completed(&self, m: MachineRef<'_>, job_type: &str, job_id: &str) {
        self.job_change(m, job_type, "completed");
        self.stream_job(m, "completed", job_type, job_id, None);
    }

    fn job_failed(&self, m: MachineRef<'_>, job_type: &str, job_id: &str, message: &str) {
        self.job_change(m, job_type, "failed");
        self.stream_job(m, "failed", job_type, job_id, Some(message));
    }

    fn config_reloaded(&self, _path: &std::path::Path, _machines: &[&str]) {
        self.metrics.config_reload(ReloadResult::success);
    }

    fn config_reload_finished(&self, success: bool) {
        self.metrics.config_reload_finished(success);
    }

    fn config_rejected(&self, path: &std::path::Path, message: &str) {
        self.metrics.config_reload(ReloadResult::failure);
        self.report_error(
            ErrorKind::Config,
            None,
            &format!("{}: {message}", path.display()),
        );
    }
}

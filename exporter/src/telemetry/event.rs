//! What a transition and the end of an event record: the transition's metrics, the
//! event's metrics and `/stats` counts, the end of its span and its `/trace` record.
//!
//! Its own file because this is the hot path: the
//! [`Observer`](turnstile_engine::observe::Observer) calls in [`super::observer`]
//! (`transition`, `transition_finished`, `event_finished`) share it, and the metrics-only
//! shortcut sits here beside the slower traced path it splits off.

use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::KeyValue;
use turnstile_engine::observe::{EventOutcome, EventReport, TransitionReport};
use turnstile_engine::TraceContext;

use super::metrics::TraceExemplar;
use super::records::TraceRecord;
use super::slot::Slot;
use super::Telemetry;

/// A duration in whole nanoseconds (saturating: 584 years).
#[inline]
pub(super) fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// [`nanos`] of a time in a state, `None` when it was not measured
/// ([`NOT_TIMED`](turnstile_engine::observe::NOT_TIMED)).
#[inline]
pub(super) fn timed(d: std::time::Duration) -> Option<u64> {
    (d != turnstile_engine::observe::NOT_TIMED).then(|| nanos(d))
}

impl Telemetry {
    /// The transition's metrics (and, with spans, the running span's target state).
    #[inline]
    pub(super) fn transitioned(&self, slot: &Slot, r: &TransitionReport<'_>) {
        slot.metrics
            .transition(r.from.id, r.event_id, timed(r.time_in_from));
        if self.stream.active() {
            self.stream_transition(slot, r);
        }
        // The current state is only needed for the next span's `turnstile.state.from`.
        if self.spans.is_none() {
            return;
        }
        let mut live = slot.live.lock().unwrap_or_else(|e| e.into_inner());
        live.state = r.to.id;
        if let Some(span) = live.event.as_ref().and_then(|e| e.span.as_ref()) {
            span.set(KeyValue::new("turnstile.state.to", r.to.name.to_owned()));
        }
    }

    /// The end of an event: its metrics, `/stats` counts, span and `/trace` record.
    #[inline]
    pub(super) fn finished(&self, slot: &Slot, r: &EventReport<'_>) {
        let ns = nanos(r.duration);
        slot.count(ns, 1);
        let outcome = event_outcome_index(r.outcome);
        let transitioned = r.outcome == EventOutcome::Transitioned;
        let ns = transitioned.then_some(ns);
        if self.metrics_only() {
            slot.metrics.event(r.event_id, outcome, ns, None);
            return;
        }
        self.finished_traced(slot, r, outcome, ns);
    }

    /// [`Self::finished`] with `/trace` records or spans.
    #[inline(never)]
    fn finished_traced(&self, slot: &Slot, r: &EventReport<'_>, outcome: usize, ns: Option<u64>) {
        let transitioned = r.outcome == EventOutcome::Transitioned;
        let now = SystemTime::now();
        let live_event = if transitioned {
            slot.live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .event
                .take()
        } else {
            None
        };
        let (at, span, trace, actions, failed) = match live_event {
            Some(e) => {
                let e = *e;
                (e.at, e.span, e.trace, e.actions, e.failed)
            }
            None => (now, None, r.event.traceparent, Vec::new(), None),
        };
        slot.metrics.event(
            r.event_id,
            outcome,
            ns,
            span.as_ref().and_then(|_| Self::exemplar(trace.as_ref())),
        );
        if let Some(span) = span {
            span.set(KeyValue::new("turnstile.outcome", r.outcome.as_str()));
            if let Some((kind, msg)) = &failed {
                span.fail(kind, msg, now);
            }
            span.end(now);
        } else if !transitioned {
            // Ignored and refused events get a short span of their own.
            if let Some(sp) = &self.spans {
                let attrs = vec![
                    KeyValue::new("turnstile.machine", slot.name.to_string()),
                    KeyValue::new("turnstile.event", r.event.name.to_string()),
                    KeyValue::new("turnstile.state.from", r.from.name.to_owned()),
                    KeyValue::new("turnstile.state.to", r.to.name.to_owned()),
                    KeyValue::new("turnstile.outcome", r.outcome.as_str()),
                ];
                if let Some(s) = sp.start_event(
                    format!("{} {}", slot.name, r.event.name),
                    r.event.traceparent,
                    attrs,
                    now,
                ) {
                    s.end(now);
                }
            }
        }
        if self.config.trace_buffer == 0 {
            return;
        }
        if let Some(t) = slot.trace_target() {
            t.ring.push(TraceRecord {
                at,
                event: r.event.name.clone(),
                machine: t.machine.clone(),
                instance: slot.instance.clone(),
                from: t
                    .states
                    .get(r.from.id)
                    .cloned()
                    .unwrap_or_else(|| Arc::from(r.from.name)),
                to: t
                    .states
                    .get(r.to.id)
                    .cloned()
                    .unwrap_or_else(|| Arc::from(r.to.name)),
                duration_ms: r.duration.as_secs_f64() * 1e3,
                outcome: r.outcome.as_str(),
                trace_id: trace.map(|t| t.trace_id_hex()),
                span_id: trace.map(|t| t.span_id_hex()),
                job_id: r.event.job_id.clone(),
                actions,
            });
        }
    }

    pub(super) fn exemplar(trace: Option<&TraceContext>) -> Option<TraceExemplar> {
        trace.map(|t| TraceExemplar {
            trace_id: t.trace_id_hex(),
            span_id: t.span_id_hex(),
        })
    }
}

fn event_outcome_index(o: EventOutcome) -> usize {
    match o {
        EventOutcome::Transitioned => 0,
        EventOutcome::Ignored => 1,
        EventOutcome::Rejected => 2,
    }
}

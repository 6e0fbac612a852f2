//! What the observer puts on the live record stream ([`super::stream`]): a record per
//! transition, action result, error and job change, built only while someone follows
//! the stream (each call site checks [`Stream::active`] first).
//!
//! Apart from `stream.rs`, which is the ring and its readers and knows nothing of the
//! observer, so that the per-machine slot can hold a stream feed without a cycle between
//! the files; and apart from `observer.rs` and `event.rs`, which stay the hot path with a
//! line per hook.

use std::sync::Arc;

use serde_json::{json, Map};
use turnstile_engine::observe::{
    ActionEnd, ActionReport, ControlAction, ControlReport, MachineRef, TransitionReport,
};

use super::observer::truncate;
use super::records;
use super::slot::Slot;
use super::stream::{Fields, Kind, Stream};
use super::Telemetry;

/// The observer's records (called from `observer.rs` and `event.rs`, each behind
/// [`Stream::active`]).
impl Telemetry {
    /// The live record stream (`GET /events`).
    pub fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }

    #[inline(never)]
    pub(super) fn stream_transition(&self, slot: &Slot, r: &TransitionReport<'_>) {
        let state = |i: usize, n: &str| slot.states.get(i).cloned().unwrap_or_else(|| Arc::from(n));
        self.stream.push(
            Kind::Transition,
            Some(slot.name.clone()),
            Fields::Transition {
                event: r.event.name.clone(),
                from: state(r.from.id, r.from.name),
                to: state(r.to.id, r.to.name),
                payload: r.event.payload.clone(),
                job_id: r.event.job_id.clone(),
            },
        );
    }

    #[inline(never)]
    pub(super) fn stream_action(&self, slot: &Slot, r: &ActionReport<'_>, end: &ActionEnd<'_>) {
        let limit = self.config.output_limit;
        let mut m = Map::new();
        m.insert("state".into(), json!(r.state.name));
        m.insert("action".into(), json!(r.kind));
        m.insert("index".into(), json!(r.index));
        m.insert("outcome".into(), json!(end.outcome.as_str()));
        m.insert(
            "duration_ms".into(),
            json!(end.duration.as_secs_f64() * 1e3),
        );
        if let Some(e) = end.event {
            m.insert("event".into(), json!(e));
        }
        if let Some(e) = end.error {
            m.insert("error".into(), json!(truncate(e, limit)));
        }
        self.stream
            .push(Kind::Action, Some(slot.name.clone()), Fields::Json(m));
    }

    #[inline(never)]
    pub(super) fn stream_error(&self, r: &records::ErrorRecord) {
        let mut m = Map::new();
        m.insert("error_type".into(), json!(r.error_type));
        m.insert("message".into(), json!(r.message));
        if let Some(s) = &r.state {
            m.insert("state".into(), json!(s));
        }
        if let Some(e) = &r.event {
            m.insert("event".into(), json!(e));
        }
        if let Some(t) = &r.trace_id {
            m.insert("trace_id".into(), json!(t));
        }
        self.stream.push(
            Kind::Error,
            r.machine.as_deref().map(Arc::from),
            Fields::Json(m),
        );
    }

    /// A job change seen by a machine (`claimed`, `completed`, `failed`).
    #[inline(never)]
    pub(super) fn stream_job(
        &self,
        m: MachineRef<'_>,
        change: &str,
        job_type: &str,
        job_id: &str,
        message: Option<&str>,
    ) {
        self.stream.publish(Kind::Job, Some(m.name), || {
            let mut v = json!({"change": change, "job_type": job_type, "job_id": job_id});
            if let (Some(msg), Some(o)) = (message, v.as_object_mut()) {
                o.insert("message".into(), json!(msg));
            }
            v
        });
    }

    /// A live operation on a machine (`control`) or a breakpoint hit (`breakpoint`), with
    /// the machine's state and context after it (redacted when shown).
    #[inline(never)]
    pub(super) fn stream_control(&self, r: &ControlReport<'_>) {
        let kind = match r.action {
            ControlAction::BreakpointHit(..) => Kind::Breakpoint,
            _ => Kind::Control,
        };
        self.stream.publish(kind, Some(r.machine.name), || {
            let mut m = Map::new();
            m.insert("action".into(), json!(r.action.as_str()));
            m.insert("state".into(), json!(r.state.name));
            m.insert("paused".into(), json!(r.paused));
            m.insert(
                "context".into(),
                serde_json::Value::Object(r.context.clone()),
            );
            match r.action {
                ControlAction::BreakpointSet(id) | ControlAction::BreakpointRemoved(id) => {
                    m.insert("breakpoint".into(), json!(id));
                }
                ControlAction::BreakpointHit(id, on) => {
                    m.insert("breakpoint".into(), json!(id));
                    m.insert("on".into(), json!(on.as_str()));
                }
                _ => {}
            }
            if let Some(e) = r.event {
                m.insert("event".into(), json!(&*e.name));
                if let Some(p) = &e.payload {
                    m.insert("payload".into(), (**p).clone());
                }
            }
            serde_json::Value::Object(m)
        });
    }
}

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
        self.stream.push_transition_in(
            &slot.lane,
            slot.stream_names(),
            [r.from.id, r.to.id, r.event_id],
            r.event.payload.clone(),
            r.event.job_id.clone(),
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
        self.stream.push(
            Kind::Action,
            Some(slot.name.clone()),
            slot.instance.clone(),
            Fields::Json(Arc::new(m)),
        );
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
            r.instance.as_deref().map(Arc::from),
            Fields::Json(Arc::new(m)),
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
        let instance = m.instance.then_some(m.name);
        self.stream
            .publish(Kind::Job, Some((&m.def.name, instance)), || {
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
        let m = &r.machine;
        let instance = m.instance.then_some(m.name);
        self.stream
            .publish(kind, Some((&m.def.name, instance)), || {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use turnstile_engine::{ActionRegistry, Engine, Event};

    use super::super::stream::{Batch, Fields};
    use super::super::TelemetryConfig;
    use super::*;

    /// Every transition is on the stream, in order and named, on the metrics-only path
    /// (whose untimed transitions the metrics do not see one by one) and with `/trace`
    /// records; a payload and a job id come along on the second.
    #[tokio::test]
    async fn a_follower_gets_every_transition_on_either_path() {
        for trace_buffer in [0, 100] {
            let t = Telemetry::new(TelemetryConfig {
                trace_buffer,
                ..TelemetryConfig::default()
            })
            .unwrap();
            let plugins = ActionRegistry::with_builtins();
            let engine = t.install(Engine::builder(), &plugins);
            let yaml = "metadata: {machine_name: m}\ninitial_state: a\nstates: [a, b]\n\
                        transitions:\n  - {from: a, to: b, event: go}\n  - {from: b, to: a, event: back}\n";
            let def = turnstile_engine::config::load_str(yaml, None, &plugins)
                .def
                .unwrap();
            engine.spawn(def).unwrap();
            let mut sub = t.stream().subscribe(None).unwrap();
            let n = 200u64;
            for i in 0..n {
                let ev = if i % 2 == 0 {
                    Event::new("go").with_payload(json!({"i": i}))
                } else {
                    Event::new("back")
                };
                engine.send("m", ev).await.unwrap();
            }
            let mut got = Vec::new();
            while (got.len() as u64) < n {
                match tokio::time::timeout(std::time::Duration::from_secs(10), sub.next(64))
                    .await
                    .unwrap()
                {
                    Batch::Records(r) => got.extend(r),
                    other => panic!("{other:?}"),
                }
            }
            for (i, r) in got.iter().enumerate() {
                assert_eq!(r.id, i as u64 + 1);
                assert_eq!(r.machine.as_deref(), Some("m"));
                let Fields::Transition {
                    event,
                    from,
                    to,
                    payload,
                    ..
                } = &r.fields
                else {
                    panic!("{r:?}")
                };
                let want = if i % 2 == 0 {
                    ("go", "a", "b")
                } else {
                    ("back", "b", "a")
                };
                assert_eq!((&**event, &**from, &**to), want, "record {i}");
                if trace_buffer > 0 && i % 2 == 0 {
                    assert_eq!(payload.as_deref(), Some(&json!({"i": i})));
                }
            }
            engine.shutdown();
            engine.join().await;
        }
    }
}

//! Events: what machines react to.

use std::sync::Arc;

use serde_json::Value as Json;

use super::trace::TraceContext;

/// Where an event came from; used for tracing and the livelock guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Sent from outside the machine (API, socket, another machine, the CLI).
    External,
    /// Returned by one of the machine's own actions.
    Action,
    /// A `timeout(N)` timer fired.
    Timer,
    /// The synthetic start of a machine.
    Start,
}

/// An event with its optional payload, job id and W3C trace context.
#[derive(Debug, Clone)]
pub struct Event {
    /// The event type, e.g. `new_job` or `timeout(5)`.
    pub name: Arc<str>,
    /// JSON payload (`{"payload": ...}` of a statemachine-engine message). Shared, so the
    /// events an action returns carry it on without copying.
    pub payload: Option<Arc<Json>>,
    /// The job this event is about, if any.
    pub job_id: Option<String>,
    /// The W3C trace context to continue (the sender's span), if any.
    pub traceparent: Option<TraceContext>,
    /// Where it came from.
    pub origin: Origin,
    /// Its id in the store's event table, when it came through it (another process sent
    /// it): the machine reports it handled ([`super::router::Remote::handled`]).
    pub store_id: Option<i64>,
}

impl Event {
    /// An external event with no payload.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self {
            name: name.into(),
            payload: None,
            job_id: None,
            traceparent: None,
            origin: Origin::External,
            store_id: None,
        }
    }

    /// Adds a payload.
    #[must_use]
    pub fn with_payload(mut self, payload: Json) -> Self {
        self.payload = Some(Arc::new(payload));
        self
    }

    /// Adds a job id.
    #[must_use]
    pub fn with_job_id(mut self, job_id: impl Into<String>) -> Self {
        self.job_id = Some(job_id.into());
        self
    }

    /// Adds a W3C trace context.
    #[must_use]
    pub fn with_traceparent(mut self, tp: TraceContext) -> Self {
        self.traceparent = Some(tp);
        self
    }

    /// Sets the origin.
    #[must_use]
    pub fn with_origin(mut self, origin: Origin) -> Self {
        self.origin = origin;
        self
    }
}

//! Spans of operators' writes through the sidecar (retrying or cancelling a job, starting
//! an instance): what the design asks of every write besides events, which have spans of
//! their own. One span per write, named as OpenTelemetry's HTTP conventions name a server span
//! (`"{method} {route}"`), a child of the request's `traceparent` when it has one; a
//! refused or failed write is marked failed with the answer's status. No spans when span
//! export is off.

use std::time::SystemTime;

use opentelemetry::KeyValue;
use turnstile_engine::TraceContext;

use super::Telemetry;

/// One write, as its span records it.
#[derive(Debug)]
pub struct Operation<'a> {
    /// `POST`, `DELETE`, ...
    pub method: &'a str,
    /// The endpoint's path pattern (`/jobs/{id}/retry`).
    pub route: &'a str,
    /// The request's `traceparent`.
    pub parent: Option<TraceContext>,
    /// When the request arrived.
    pub start: SystemTime,
    /// The answer's status code.
    pub status: u16,
    /// The answer's message when it is an error.
    pub error: Option<&'a str>,
    /// More attributes (`turnstile.job.id`).
    pub attributes: Vec<(&'static str, String)>,
}

impl Telemetry {
    /// Records `op` as a span (nothing when span export is off or the sampler says no).
    pub fn record_operation(&self, op: Operation<'_>) {
        let Some(spans) = &self.spans else {
            return;
        };
        let mut attrs = vec![
            KeyValue::new("http.request.method", op.method.to_owned()),
            KeyValue::new("http.route", op.route.to_owned()),
            KeyValue::new("http.response.status_code", i64::from(op.status)),
        ];
        attrs.extend(op.attributes.into_iter().map(|(k, v)| KeyValue::new(k, v)));
        let name = format!("{} {}", op.method, op.route);
        let Some(span) = spans.start_event(name, op.parent, attrs, op.start) else {
            return;
        };
        let end = SystemTime::now();
        if let Some(message) = op.error {
            span.fail(&op.status.to_string(), message, end);
        }
        span.end(end);
    }
}

//! Turnstile's observability side: Prometheus metrics, OpenTelemetry spans and the
//! ring buffers behind the HTTP sidecar, all fed by the engine's [`Observer`] hook.
//!
//! A host application that embeds the engine attaches [`telemetry::Telemetry`] as the
//! engine's observer and, if it wants the sidecar, serves it with [`server`].
//!
//! [`Observer`]: turnstile_engine::Observer

pub mod server;
pub mod telemetry;

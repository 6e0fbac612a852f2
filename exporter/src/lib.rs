//! Turnstile's observability side: Prometheus metrics, OpenTelemetry spans and the
//! ring buffers behind the HTTP sidecar, all fed by the engine's [`Observer`] hook.
//!
//! A host application that embeds the engine builds its engine through
//! [`telemetry::Telemetry::install`] (which makes the telemetry the observer of the engine
//! and of the registry's plugin host) and, if it wants the sidecar, serves it with
//! [`server`]. Every metric family is declared in [`telemetry::catalogue`].
//!
//! [`Observer`]: turnstile_engine::Observer

// Module docs are written for contributors too: they link to the private items they
// explain (rendered with `cargo doc --document-private-items`).
#![allow(rustdoc::private_intra_doc_links)]

pub mod server;
pub mod telemetry;

//! [`State`], what every request handler of the sidecar shares.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use turnstile_engine::{ingress, Engine};

use crate::telemetry::Telemetry;

/// What every request handler shares.
pub struct State {
    /// The engine whose machines are served.
    pub engine: Engine,
    /// Its telemetry.
    pub telemetry: Arc<Telemetry>,
    /// The bound address, for `/stats`.
    pub addr: SocketAddr,
    /// The bearer token writes need, if any.
    pub token: Option<String>,
    /// Writes refused.
    pub read_only: bool,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// The job store behind `POST /jobs`.
    pub jobs: Option<Arc<dyn turnstile_engine::store::JobStore>>,
    /// The configs behind `POST /-/reload`.
    pub reloader: Option<turnstile_engine::reload::ConfigReloader>,
    /// A `/readyz` read of the job store is still running (one at a time, however often
    /// the probe comes).
    pub store_probe: Arc<AtomicBool>,
}

impl State {
    /// The bounds of a JSON body: [`State::max_body_bytes`] bytes, and the engine's
    /// default bound on its parsed size.
    pub fn ingress_limits(&self) -> ingress::Limits {
        ingress::Limits {
            max_bytes: self.max_body_bytes,
            max_parsed_bytes: ingress::DEFAULT_MAX_PARSED_BYTES,
        }
    }
}

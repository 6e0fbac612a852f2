//! Turnstile's engine: YAML state machines, their actions and the runtime that runs them.
//!
//! The engine knows nothing of metrics, spans or HTTP: it reports what happens through
//! [`observe::Observer`], and an exporter turns those reports into whatever it likes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use turnstile_engine::{config, ActionRegistry, Engine, Event};
//! let registry = ActionRegistry::with_builtins();
//! let loaded = config::load_path("examples/timeout_demo.yaml".as_ref(), &registry);
//! let def = loaded.def.ok_or("config has errors")?;
//! let engine = Engine::builder().build();
//! engine.spawn(def)?;
//! // An event from outside, with a payload (ignored if no transition takes it).
//! engine
//!     .send("timeout_demo", Event::new("hello").with_payload(serde_json::json!({"n": 1})))
//!     .await?;
//! // Runs until the machine reaches its final state (`engine.shutdown()` stops it early).
//! engine.join().await;
//! # Ok(()) }
//! ```

// Module docs are written for contributors too: they link to the private items they
// explain (rendered with `cargo doc --document-private-items`).
#![allow(rustdoc::private_intra_doc_links)]

pub mod actions;
pub mod breakpoint;
pub mod config;
pub mod diagram;
pub mod error_kind;
pub mod ingress;
pub mod instance;
pub mod metrics_detail;
pub mod observe;
pub mod redact;
pub mod reload;
pub mod runtime;
pub mod sockets;
pub mod store;

pub use actions::ActionRegistry;
pub use metrics_detail::MetricsDetail;
pub use observe::Observer;
pub use runtime::def::MachineDef;
pub use runtime::engine::{
    DefinitionInstances, Engine, EngineBuilder, EngineError, EngineStatus, InstanceCounts,
    MachineStatus, ReloadOutcome, SendError, StartError,
};
pub use runtime::event::{Event, Origin};
pub use runtime::trace::TraceContext;

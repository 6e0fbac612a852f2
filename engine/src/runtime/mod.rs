//! The machine runtime: compiled definitions, events, the per-machine task, routing
//! between machines, and the [`engine::Engine`] that hosts them.

pub mod bridge;
pub mod clock;
pub mod def;
pub mod engine;
pub mod event;
mod instances;
mod launch;
pub mod live;
mod machine;
pub(crate) mod mailbox;
pub mod router;
pub mod singleton;
pub mod start;
pub mod template;
mod tenure;
pub mod trace;

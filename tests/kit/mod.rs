//! The test kit of the end-to-end tests in `tests/`: every test file includes it with
//! `mod kit;` and takes what it needs.
//!
//! * [`process`]: the `turnstile` command and a running process ([`Proc`]) whose JSON
//!   log lines are read as they come;
//! * [`logs`]: fields, transitions and stops in those log records;
//! * [`http`]: a tiny HTTP/1.1 client (the sidecar, Prometheus);
//! * [`sidecar`]: `turnstile run` with its sidecar on a free port (its configs and command
//!   line, a clean stop), and a client command of it (`turnstile ctl`);
//! * [`wait`]: polling until something holds ([`eventually`], [`wait_until`]);
//! * [`config`]: machine definitions for the tests that run the engine in-process;
//! * [`engine_wait`]: waiting for an in-process engine's machine to reach a state
//!   ([`engine_wait::wait_for_state`]);
//! * [`prometheus`]: Debian's Prometheus scraping a target;
//! * [`otlp`]: an OTLP/HTTP trace receiver;
//! * [`plugins`]: building the example plugins;
//! * [`upstream`]: statemachine-engine's example configs;
//! * [`postgres`]: a real PostgreSQL server (one per test process, a database per test).
//!
//! Five modules are files of lower crates, included by `#[path]`, because those crates'
//! own tests and benchmarks use them too and cannot depend on this package (it depends on
//! them): `plugins`, `upstream`, `engine_wait` and `postgres` are
//! `engine/tests/support/{plugin_build,upstream,wait,postgres}.rs` (the engine's tests, and
//! `engine/benches/plugin_invoke.rs` for the first two), `otlp` is
//! `exporter/tests/support/otlp.rs` (`exporter/benches/telemetry_overhead.rs`). They are
//! kept in one place only; every other helper lives here once.

#![allow(dead_code, unused_imports)]

pub mod config;
#[path = "../../engine/tests/support/wait.rs"]
pub mod engine_wait;
pub mod http;
pub mod logs;
#[path = "../../exporter/tests/support/otlp.rs"]
pub mod otlp;
#[path = "../../engine/tests/support/plugin_build.rs"]
pub mod plugins;
#[path = "../../engine/tests/support/postgres.rs"]
pub mod postgres;
pub mod process;
pub mod prometheus;
pub mod sidecar;
#[path = "../../engine/tests/support/upstream.rs"]
pub mod upstream;
pub mod wait;

pub use logs::*;
pub use process::*;
pub use wait::{eventually, eventually_or, wait_until};

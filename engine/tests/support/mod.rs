//! The kit of the engine's integration tests (`mod support;` in each test file).
//!
//! `plugin_build` and `upstream` also serve `engine/benches/plugin_invoke.rs` (same
//! crate), and they and `wait` the end-to-end tests' kit, `tests/kit/` of package
//! `turnstile`, which includes them by `#[path]`: this crate cannot depend on that
//! package (it depends on this one), so the files live here, with their lowest user.

#![allow(dead_code)]

pub mod fuzzing;
pub mod http;
pub mod machine;
pub mod plugin_build;
pub mod postgres;
pub mod recorder;
pub mod upstream;
pub mod wait;

//! Helpers shared by the plugin tests.

pub mod http;
pub mod plugin_build;
pub mod upstream;

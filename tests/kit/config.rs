//! Machine definitions for the tests that run the engine in-process.

use std::sync::Arc;

use turnstile_engine::{config, ActionRegistry, MachineDef};

/// Loads `yaml` with the built-in actions; panics with the errors if it does not load.
pub fn def(yaml: &str) -> Arc<MachineDef> {
    let loaded = config::load_str(yaml, None, &ActionRegistry::with_builtins());
    let errors: Vec<String> = loaded.errors().map(ToString::to_string).collect();
    assert!(errors.is_empty(), "config errors: {errors:#?}");
    loaded.def.expect("a definition")
}

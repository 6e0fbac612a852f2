//! Machine definitions from YAML text, checked.

use std::sync::Arc;

use turnstile_engine::{config, ActionRegistry, MachineDef};

/// Loads `yaml` with the built-in actions; panics with the errors if it does not load.
pub fn def(yaml: &str) -> Arc<MachineDef> {
    def_with(yaml, &ActionRegistry::with_builtins())
}

/// Loads `yaml` with the actions of `registry`; panics with the errors if it does not load.
pub fn def_with(yaml: &str, registry: &ActionRegistry) -> Arc<MachineDef> {
    checked(yaml, registry, false)
}

/// [`def`] for configs that must load without a warning either.
pub fn def_without_warnings(yaml: &str) -> Arc<MachineDef> {
    checked(yaml, &ActionRegistry::with_builtins(), true)
}

fn checked(yaml: &str, registry: &ActionRegistry, warnings_too: bool) -> Arc<MachineDef> {
    let loaded = config::load_str(yaml, None, registry);
    let problems: Vec<String> = if warnings_too {
        loaded.diagnostics.iter().map(ToString::to_string).collect()
    } else {
        loaded.errors().map(ToString::to_string).collect()
    };
    assert!(
        problems.is_empty(),
        "config problems: {problems:#?}\n{yaml}"
    );
    loaded.def.expect("a definition")
}

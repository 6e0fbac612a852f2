//! The config loader on any text: no panic; a machine exactly when there is no error;
//! every diagnostic on a line of the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use turnstile_engine::config::{self, Severity};
use turnstile_engine::ActionRegistry;

fuzz_target!(|data: &[u8]| {
    static REGISTRY: OnceLock<ActionRegistry> = OnceLock::new();
    let registry = REGISTRY.get_or_init(ActionRegistry::with_builtins);
    let text = String::from_utf8_lossy(data);
    let loaded = config::load_str(&text, None, registry);
    let errors = loaded
        .diagnostics
        .iter()
        .any(|d| d.severity == Severity::Error);
    assert_eq!(loaded.def.is_some(), !errors);
    let lines = text.split('\n').count();
    for d in &loaded.diagnostics {
        let line = d.loc.line as usize;
        assert!(line >= 1 && line <= lines && d.loc.column >= 1, "{d}");
    }
});

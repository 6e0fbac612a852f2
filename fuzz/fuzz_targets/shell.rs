//! The quoting-context analysis of `bash` commands on any text: no panic; an accepted
//! command gives one variable per placeholder, and its script holds no placeholder text
//! of its own making. (Whether a value can run is checked with real bash by
//! `engine/tests/fuzz_shell.rs`.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};
use turnstile_engine::actions::shell::ShellTemplate;

fuzz_target!(|data: &[u8]| {
    let Ok(cmd) = std::str::from_utf8(data) else {
        return;
    };
    match ShellTemplate::compile(cmd) {
        Ok(t) => {
            let mut scope: Map<String, Value> = Map::new();
            scope.insert("x".into(), json!("$(touch /nonexistent/marker)"));
            if let Ok(env) = t.env(&scope) {
                for (n, (name, _)) in env.iter().enumerate() {
                    assert_eq!(name, &format!("TURNSTILE_ARG_{n}"));
                    assert!(t.script().contains(name.as_str()), "{cmd:?}");
                }
            }
        }
        Err(issues) => assert!(!issues.is_empty()),
    }
});

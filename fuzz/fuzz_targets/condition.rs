//! The breakpoint condition parser (`when` of `POST /machines/{name}/breakpoints`) on any
//! text: no panic; an error names a column within the text (or just past its end); a
//! condition that parses evaluates on a context without panic, and `!(c)` is its negation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use turnstile_engine::breakpoint::Condition;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Condition::parse(text) {
        Ok(c) => {
            let serde_json::Value::Object(cx) = json!({
                "attempts": 4, "order": {"status": "paid", "items": [{"sku": "x-1"}]},
                "a": null, "b": [1, 2], "c": {"k": true}, "retries": 1.5
            }) else {
                return;
            };
            let holds = c.eval(&cx);
            if let Ok(not) = Condition::parse(&format!("!({text})")) {
                assert_eq!(not.eval(&cx), !holds);
            }
        }
        Err(e) => assert!(e.column >= 1 && e.column <= text.chars().count() + 1),
    }
});

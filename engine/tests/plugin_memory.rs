//! Memory over many plugin calls: 100,000 invocations of the `calculate` plugin (JSON in
//! and out) must not grow the resident set. A test binary of its own, so that no other
//! test allocates in the same process meanwhile.

mod support;

use std::path::Path;

use serde_json::json;
use support::plugin_build::plugin_dir;
use turnstile_engine::ActionRegistry;

/// statm's second field: resident pages.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn a_hundred_thousand_calls_do_not_grow_memory() {
    if !Path::new("/proc/self/statm").exists() {
        return;
    }
    let dir = plugin_dir(&["calculate"]);
    let mut r = ActionRegistry::with_builtins();
    assert!(r.load_plugins(dir.path()).iter().all(Result::is_ok));
    let host = r.plugin_host();
    let params = json!({"operation": "add", "success": "calculated"});
    let context = json!({"event_data": {"type": "calculate", "payload": {"a": 5, "b": 3}}});
    for _ in 0..2_000 {
        host.call("calculate", &params, &context).unwrap();
    }
    let before = rss_bytes();
    for _ in 0..100_000 {
        let reply = host.call("calculate", &params, &context).unwrap();
        assert_eq!(reply.context["calculation_result"], 8);
    }
    let after = rss_bytes();
    let growth = after.saturating_sub(before);
    eprintln!("RSS before {before} B, after {after} B, growth {growth} B over 100000 calls");
    assert!(growth < 4 * 1024 * 1024, "RSS grew by {growth} bytes");
}

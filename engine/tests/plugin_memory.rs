//! Memory over many plugin calls: 100,000 invocations of the `calculate` plugin (JSON in
//! and out) must not grow the resident set. A test binary of its own, so that no other
//! test allocates in the same process meanwhile. The second test does the same through a
//! running machine (statemachine-engine's `custom_actions/config/worker.yaml`), blocking threads included.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use std::path::Path;

use serde_json::json;
use support::plugin_build::plugin_dir;
use turnstile_engine::ActionRegistry;

/// The tests measure the whole process: they must not run at the same time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// statm's second field: resident pages.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn a_hundred_thousand_calls_do_not_grow_memory() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
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

#[test]
fn plugin_actions_in_a_running_machine_do_not_grow_memory() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !Path::new("/proc/self/statm").exists() {
        return;
    }
    let dir = plugin_dir(&["greet", "calculate"]);
    let mut r = ActionRegistry::with_builtins();
    assert!(r.load_plugins(dir.path()).iter().all(Result::is_ok));
    let compat = support::upstream::example("custom_actions/config/worker.yaml");
    let def = turnstile_engine::config::load_path(&compat, &r)
        .def
        .expect("compat config loads");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let engine = turnstile_engine::Engine::builder().build();
        engine.spawn(def).unwrap();
        let name = "custom_worker";
        let rounds = |n: u64| {
            let engine = engine.clone();
            async move {
                for _ in 0..n {
                    let before = engine.machine(name).unwrap().transitions;
                    let ev = turnstile_engine::Event::new("calculate")
                        .with_payload(json!({"a": 5, "b": 3}));
                    engine.send(name, ev).await.unwrap();
                    while engine.machine(name).unwrap().transitions < before + 2 {
                        tokio::task::yield_now().await;
                    }
                }
            }
        };
        rounds(1_000).await;
        let before = rss_bytes();
        rounds(20_000).await;
        let after = rss_bytes();
        let growth = after.saturating_sub(before);
        eprintln!("engine: RSS before {before} B, after {after} B, growth {growth} B over 20000 plugin actions");
        assert!(growth < 4 * 1024 * 1024, "RSS grew by {growth} bytes");
        assert_eq!(engine.machine(name).unwrap().errors, 0);
        engine.shutdown();
    });
}

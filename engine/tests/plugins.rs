//! Plugin actions through the C ABI: the example plugins, the compat config that uses
//! them, every failure mode, the hot swap, and memory over many calls.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use support::machine::def_with;
use support::plugin_build::{compile_c, lib_file, plugin_dir, rust_plugin, workspace};
use support::recorder::Recorder;
use support::wait::wait_transitions;
use turnstile_engine::actions::plugin::{CallError, LoadError};
use turnstile_engine::observe::ErrorKind;
use turnstile_engine::{config, ActionRegistry, Engine, Event};

const WAIT: Duration = Duration::from_secs(20);

/// statemachine-engine's `custom_actions` example, which needs the greet and calculate plugins.
const COMPAT: &str = "custom_actions/config/worker.yaml";

fn registry_with(dir: &Path) -> ActionRegistry {
    let mut r = ActionRegistry::with_builtins();
    for res in r.load_plugins(dir) {
        res.expect("plugin loads");
    }
    r
}

async fn context(engine: &Engine, name: &str) -> serde_json::Map<String, Json> {
    engine.snapshot(name).await.expect("snapshot").context
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_custom_actions_worker_runs_unchanged_with_the_example_plugins() {
    let dir = plugin_dir(&["greet", "calculate"]);
    let registry = registry_with(dir.path());
    let loaded = config::load_path(&support::upstream::example(COMPAT), &registry);
    let errors: Vec<String> = loaded.errors().map(ToString::to_string).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let def = loaded.def.expect("compat config compiles");
    assert_eq!(&*def.name, "custom_worker");

    let rec = Arc::new(Recorder::default());
    let engine = Engine::builder().observer(rec.clone()).build();
    engine.spawn(def).unwrap();
    let name = "custom_worker";

    // greet: waiting -> greeting -> (greeted) -> waiting
    engine
        .send(
            name,
            Event::new("greet").with_payload(json!({"name": "Alice"})),
        )
        .await
        .unwrap();
    wait_transitions(&engine, name, 2).await;
    assert_eq!(&*engine.machine(name).unwrap().state, "waiting");
    assert_eq!(context(&engine, name).await["greeting"], "Hello, Alice!");
    assert!(
        rec.outputs().iter().any(|o| o == "Hello, Alice! 👋"),
        "{:?}",
        rec.outputs()
    );

    // calculate with the payloads of the example's README and with `operation` overrides.
    let cases = [
        (json!({"a": 5, "b": 3}), json!(8), "Calculation: 5 + 3 = 8"),
        (
            json!({"a": 5, "b": 3, "operation": "multiply"}),
            json!(15),
            "Calculation: 5 * 3 = 15",
        ),
        (
            json!({"a": 10, "b": 4, "operation": "subtract"}),
            json!(6),
            "Calculation: 10 - 4 = 6",
        ),
        (
            json!({"a": 7, "b": 2, "operation": "divide"}),
            json!(3.5),
            "Calculation: 7 / 2 = 3.5",
        ),
        (
            json!({"a": 1, "b": 0, "operation": "divide"}),
            json!("undefined"),
            "Calculation: 1 / 0 = undefined",
        ),
    ];
    let mut transitions = 2;
    for (payload, expected, line) in cases {
        engine
            .send(name, Event::new("calculate").with_payload(payload.clone()))
            .await
            .unwrap();
        transitions += 2;
        wait_transitions(&engine, name, transitions).await;
        assert_eq!(&*engine.machine(name).unwrap().state, "waiting");
        let ctx = context(&engine, name).await;
        assert_eq!(ctx["calculation_result"], expected, "payload {payload}");
        assert!(
            rec.outputs().iter().any(|o| o == line),
            "{line} not in {:?}",
            rec.outputs()
        );
    }
    assert!(rec.errors().is_empty(), "{:?}", rec.errors());
    assert_eq!(engine.machine(name).unwrap().errors, 0);

    engine.send(name, Event::new("stop")).await.unwrap();
    tokio::time::timeout(WAIT, engine.join())
        .await
        .expect("the worker stops in `completed`");
    assert_eq!(&*engine.machine(name).unwrap().state, "completed");
}

#[test]
fn the_compat_config_needs_the_plugins() {
    let loaded = config::load_path(
        &support::upstream::example(COMPAT),
        &ActionRegistry::with_builtins(),
    );
    let codes: Vec<&str> = loaded.errors().map(|d| d.code).collect();
    assert_eq!(codes, ["unknown-action", "unknown-action"]);
}

#[test]
fn plugins_are_listed_with_name_version_path_and_actions() {
    let dir = plugin_dir(&["greet", "calculate"]);
    let registry = registry_with(dir.path());
    let mut infos = registry.plugins();
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<(&str, &[String])> = infos
        .iter()
        .map(|i| (i.name.as_str(), i.actions.as_slice()))
        .collect();
    assert_eq!(
        names,
        [
            ("calculate", &["calculate".to_owned()][..]),
            ("greet", &["greet".to_owned()][..])
        ]
    );
    for i in &infos {
        assert_eq!(i.version, env!("CARGO_PKG_VERSION"));
        assert!(i.path.starts_with(dir.path().canonicalize().unwrap()));
        assert_ne!(i.loaded_from, i.path, "loaded from a private copy");
        // The copy and its private directory are removed once loaded (the library stays
        // mapped): nothing is left in the temporary directory.
        assert!(!i.loaded_from.exists(), "{}", i.loaded_from.display());
        assert!(!i.loaded_from.parent().unwrap().exists());
    }
    assert_eq!(registry.get("greet").unwrap().provider.as_ref(), "greet");
}

#[test]
fn a_config_loads_the_plugins_it_names() {
    let dir = plugin_dir(&["greet"]);
    let cfg = dir.path().join("m.yaml");
    std::fs::write(
        &cfg,
        "plugins: [greet]\ninitial_state: a\ntransitions:\n  - {from: a, to: b, event: success}\nactions:\n  a:\n    - type: greet\n      nmae: x\n",
    )
    .unwrap();
    let registry = ActionRegistry::with_builtins();
    let loaded = config::load_path(&cfg, &registry);
    assert_eq!(loaded.errors().count(), 0, "{:#?}", loaded.diagnostics);
    let w: Vec<String> = loaded.warnings().map(ToString::to_string).collect();
    assert!(
        w.iter()
            .any(|w| w.contains("unknown parameter `nmae`") && w.contains("did you mean `name`")),
        "{w:#?}"
    );
    // The registry given to the loader is not changed: the plugin is the config's own.
    assert!(registry.get("greet").is_none());

    std::fs::write(
        &cfg,
        "plugins:\n  - ./nothing/here.so\ninitial_state: a\nactions:\n  a:\n    - type: greet\n",
    )
    .unwrap();
    let loaded = config::load_path(&cfg, &registry);
    let errs: Vec<_> = loaded.errors().collect();
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_eq!(errs[0].code, "plugin");
    assert_eq!((errs[0].loc.line, errs[0].loc.column), (2, 5));
    assert!(
        errs[0].message.contains("no such file"),
        "{}",
        errs[0].message
    );
    assert_eq!(errs[1].code, "unknown-action");
}

fn expect_load_error(path: &Path) -> LoadError {
    let mut r = ActionRegistry::with_builtins();
    let rec = Arc::new(Recorder::default());
    r.plugin_host().set_observer(rec.clone());
    let mut results = r.load_plugins(path);
    assert_eq!(results.len(), 1);
    let e = results.remove(0).expect_err("the load fails");
    let errs = rec.errors();
    assert_eq!(errs.len(), 1, "one errors_total sample");
    assert_eq!(errs[0].0, ErrorKind::Plugin);
    assert_eq!(errs[0].1, e.to_string());
    // The registry still works.
    assert!(r.get("log").is_some());
    e
}

#[test]
fn load_failures_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();

    let e = expect_load_error(&t.join("libmissing.so"));
    assert!(matches!(e, LoadError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("no such file or directory"));

    let text = t.join("libtext.so");
    std::fs::write(&text, "not a library\n").unwrap();
    let e = expect_load_error(&text);
    assert!(matches!(e, LoadError::NotALibrary { .. }), "{e}");
    assert!(
        e.to_string().contains("not a loadable shared library"),
        "{e}"
    );

    let src = workspace().join("plugins/testing/faulty_c/faulty.c");
    let nofree = t.join("libnofree.so");
    compile_c(&src, &nofree, &["-DOMIT_FREE"]);
    let e = expect_load_error(&nofree);
    assert!(
        matches!(&e, LoadError::MissingSymbol { symbol, .. } if symbol == "turnstile_plugin_free"),
        "{e}"
    );

    let abi = t.join("libabi.so");
    compile_c(&src, &abi, &["-DABI=99"]);
    let e = expect_load_error(&abi);
    assert!(
        matches!(
            e,
            LoadError::AbiMismatch {
                found: 99,
                expected: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("rebuild the plugin"), "{e}");

    for (flag, text) in [
        ("-DBAD_MANIFEST", "not JSON"),
        ("-DNULL_MANIFEST", "null pointer"),
    ] {
        let f = t.join(format!("lib{}.so", &flag[2..]));
        compile_c(&src, &f, &[flag]);
        let e = expect_load_error(&f);
        assert!(matches!(e, LoadError::BadManifest { .. }), "{e}");
        assert!(e.to_string().contains(text), "{e}");
    }

    let claims_log = t.join("libclaimslog.so");
    compile_c(&src, &claims_log, &["-DCLAIM_LOG"]);
    let e = expect_load_error(&claims_log);
    assert!(matches!(e, LoadError::Conflict { .. }), "{e}");
    assert!(e.to_string().contains("built-in"), "{e}");

    let empty = t.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = expect_load_error(&empty);
    assert!(matches!(e, LoadError::Empty { .. }), "{e}");
}

/// `bytes` written to `name` in a fresh directory.
fn write_lib(name: &str, bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    (dir, p)
}

#[test]
fn a_truncated_or_foreign_library_is_refused_before_it_is_mapped() {
    // Mapping a truncated library and touching a segment past its end is SIGBUS: this
    // test process would die before any assertion.
    let full = std::fs::read(rust_plugin("greet")).unwrap();
    let n = full.len();
    for len in [0, 3, 40, 4096, n / 2, n - 1] {
        let (_d, p) = write_lib("libtrunc.so", &full[..len]);
        let e = expect_load_error(&p);
        assert!(matches!(e, LoadError::NotALibrary { .. }), "{len}: {e}");
        let msg = e.to_string();
        let why = if len < 4 {
            "not an ELF file"
        } else {
            "truncated"
        };
        assert!(msg.contains(why), "{len} bytes: {msg}");
        assert!(msg.contains(&format!("{len} bytes")), "{msg}");
    }

    // Another class, another architecture, not a shared object.
    let patched = |at: usize, value: &[u8]| {
        let mut b = full.clone();
        b[at..at + value.len()].copy_from_slice(value);
        let (_d, p) = write_lib("libforeign.so", &b);
        expect_load_error(&p).to_string()
    };
    let e = patched(4, &[1]); // EI_CLASS = ELFCLASS32
    assert!(
        e.contains("32-bit ELF file, but this Turnstile is 64-bit"),
        "{e}"
    );
    let other_arch: u16 = if cfg!(target_arch = "aarch64") {
        62
    } else {
        183
    };
    let e = patched(18, &other_arch.to_le_bytes()); // e_machine
    assert!(e.contains("another architecture"), "{e}");
    let e = patched(16, &2u16.to_le_bytes()); // e_type = ET_EXEC
    assert!(e.contains("not a shared object"), "{e}");
}

#[test]
fn a_truncated_new_version_is_refused_and_the_old_one_keeps_serving() {
    let src = workspace().join("plugins/examples/c_hello/c_hello.c");
    let build = tempfile::tempdir().unwrap();
    let v2 = build.path().join("v2.so");
    compile_c(&src, &build.path().join("v1.so"), &[]);
    compile_c(&src, &v2, &["-DC_HELLO_VERSION=\"2.0.0\""]);
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("libc_hello.so");
    std::fs::copy(build.path().join("v1.so"), &lib).unwrap();

    let r = registry_with(dir.path());
    let host = r.plugin_host();
    let rec = Arc::new(Recorder::default());
    host.set_observer(rec.clone());
    host.set_check_interval(Duration::ZERO);
    let hello = || {
        host.call("c_hello", &json!({}), &json!({}))
            .unwrap()
            .context["c_hello"]
            .clone()
    };
    assert_eq!(hello(), "Hello from C 1.0.0");

    // A copy still being written: its first part only.
    let full = std::fs::read(&v2).unwrap();
    let mut expected_errors = 0;
    for len in [4096, full.len() / 2, full.len() - 1] {
        std::fs::write(&lib, &full[..len]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            hello(),
            "Hello from C 1.0.0",
            "the old version keeps serving"
        );
        expected_errors += 1;
        let errors = rec.errors();
        assert_eq!(errors.len(), expected_errors, "{errors:?}");
        let last = &errors[expected_errors - 1].1;
        assert!(
            last.contains("truncated") && last.contains("keeps serving"),
            "{last}"
        );
    }
    // Once complete, it is swapped in.
    std::fs::write(&lib, &full).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(hello(), "Hello from C 2.0.0");
    assert_eq!(rec.errors().len(), expected_errors);
    assert_eq!(*rec.swaps.lock().unwrap(), ["c_hello 1.0.0 -> 2.0.0"]);
}

#[test]
fn two_plugins_cannot_provide_the_same_action_type() {
    let a = plugin_dir(&["greet"]);
    let b = plugin_dir(&["greet"]);
    let mut r = ActionRegistry::with_builtins();
    assert!(r.load_plugins(a.path())[0].is_ok());
    // The same file again is the same plugin, not a conflict.
    assert!(r.load_plugins(&a.path().join(lib_file("greet")))[0].is_ok());
    let e = r.load_plugins(b.path()).remove(0).unwrap_err();
    assert!(matches!(e, LoadError::Conflict { .. }), "{e}");
    assert!(e.to_string().contains("plugin `greet`"), "{e}");
}

/// A config with one state per failure mode; each failure returns `error`, which leads
/// to `failed`; `reset` goes back to `idle`.
const FAULTS: &str = r#"
metadata: {machine_name: faults}
initial_state: idle
transitions:
  - {from: idle, to: null_result, event: null_result}
  - {from: idle, to: bad_json, event: bad_json}
  - {from: idle, to: bad_utf8, event: bad_utf8}
  - {from: idle, to: bad_shape, event: bad_shape}
  - {from: idle, to: panicking, event: panicking}
  - {from: idle, to: hanging, event: hanging}
  - {from: idle, to: failing, event: failing}
  - {from: idle, to: echoing, event: echoing}
  - {from: "*", to: failed, event: error}
  - {from: "*", to: slow, event: too_slow}
  - {from: "*", to: idle, event: reset}
  - {from: "*", to: idle, event: success}
  - {from: "*", to: done, event: stop}
actions:
  null_result: [{type: c_null}]
  bad_json: [{type: c_bad_json}]
  bad_utf8: [{type: c_bad_utf8}]
  bad_shape: [{type: c_bad_shape}]
  panicking: [{type: panic}]
  hanging: [{type: block, ms: 3000, timeout: 0.3, timeout_event: too_slow}]
  failing: [{type: fail, kind: not_found}]
  echoing:
    - type: echo
      value: "{payload.x}"
      text: "x is {payload.x}"
      success: echoed
final_states: [done]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_time_failures_are_errors_and_the_engine_keeps_running() {
    let dir = plugin_dir(&["faulty"]);
    compile_c(
        &workspace().join("plugins/testing/faulty_c/faulty.c"),
        &dir.path().join("libfaulty_c.so"),
        &[],
    );
    let registry = registry_with(dir.path());
    let yaml = FAULTS.replace("success: echoed", "success: reset");
    let def = def_with(&yaml, &registry);
    let rec = Arc::new(Recorder::default());
    let engine = Engine::builder().observer(rec.clone()).build();
    engine.spawn(def).unwrap();
    let m = "faults";

    let cases: &[(&str, ErrorKind, &str, &str)] = &[
        (
            "null_result",
            ErrorKind::Plugin,
            "returned a null pointer",
            "failed",
        ),
        ("bad_json", ErrorKind::Plugin, "not JSON", "failed"),
        ("bad_utf8", ErrorKind::Plugin, "not UTF-8", "failed"),
        (
            "bad_shape",
            ErrorKind::Plugin,
            "`event` must be a string",
            "failed",
        ),
        ("panicking", ErrorKind::Plugin, "deliberate panic", "failed"),
        (
            "hanging",
            ErrorKind::ActionTimeout,
            "did not return within 0.3 s",
            "slow",
        ),
        (
            "failing",
            ErrorKind::Action,
            "not_found: asked to fail",
            "failed",
        ),
    ];
    let mut transitions = 0;
    for (i, (event, kind, text, state)) in cases.iter().enumerate() {
        let started = Instant::now();
        engine.send(m, Event::new(*event)).await.unwrap();
        transitions += 2;
        wait_transitions(&engine, m, transitions).await;
        let st = engine.machine(m).unwrap();
        assert_eq!(&*st.state, *state, "{event}");
        assert!(st.running);
        assert_eq!(st.errors, i as u64 + 1, "{event}: one error each");
        let errors = rec.errors();
        let (k, msg) = errors.last().unwrap();
        assert_eq!(k, kind, "{event}: {msg}");
        assert!(msg.contains(text), "{event}: {msg}");
        let ctx = context(&engine, m).await;
        assert!(
            ctx["last_error"].as_str().unwrap().contains(text),
            "{ctx:?}"
        );
        if *event == "hanging" {
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "the timeout cut it short"
            );
        }
        if *event == "failing" {
            assert_eq!(
                ctx["failed_once"], true,
                "context of an error result is applied"
            );
        }
        engine.send(m, Event::new("reset")).await.unwrap();
        transitions += 1;
        wait_transitions(&engine, m, transitions).await;
    }

    // Parameters arrive rendered, with types kept, and the context is passed.
    engine
        .send(m, Event::new("echoing").with_payload(json!({"x": [1, 2]})))
        .await
        .unwrap();
    transitions += 2;
    wait_transitions(&engine, m, transitions).await;
    let ctx = context(&engine, m).await;
    assert_eq!(ctx["echo_params"]["value"], json!([1, 2]));
    assert_eq!(ctx["echo_params"]["text"], "x is [1,2]");
    assert!(ctx["echo_context_keys"]
        .as_array()
        .unwrap()
        .contains(&json!("event_data")));
    assert_eq!(&*engine.machine(m).unwrap().state, "idle");

    engine.send(m, Event::new("stop")).await.unwrap();
    tokio::time::timeout(WAIT, engine.join())
        .await
        .expect("stops");
}

#[test]
fn synchronous_calls_report_protocol_errors() {
    let dir = tempfile::tempdir().unwrap();
    compile_c(
        &workspace().join("plugins/testing/faulty_c/faulty.c"),
        &dir.path().join("libfaulty_c.so"),
        &[],
    );
    let r = registry_with(dir.path());
    let host = r.plugin_host();
    let call = |k: &str| host.call(k, &json!({}), &json!({}));
    assert_eq!(call("c_null"), Err(CallError::Null));
    assert!(matches!(call("c_bad_json"), Err(CallError::NotJson(_))));
    assert!(matches!(call("c_bad_utf8"), Err(CallError::NotUtf8(_))));
    assert!(matches!(call("c_bad_shape"), Err(CallError::BadShape(_))));
    assert_eq!(call("c_ok").unwrap().event.as_deref(), Some("success"));
    assert_eq!(call("nope"), Err(CallError::UnknownAction("nope".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_written_in_c_runs() {
    let dir = tempfile::tempdir().unwrap();
    compile_c(
        &workspace().join("plugins/examples/c_hello/c_hello.c"),
        &dir.path().join("libc_hello.so"),
        &[],
    );
    let registry = registry_with(dir.path());
    let def = def_with(
        "metadata: {machine_name: c}\ninitial_state: start\ntransitions:\n  - {from: start, to: done, event: said}\nactions:\n  start:\n    - {type: c_hello, success: said}\n",
        &registry,
    );
    let engine = Engine::builder().build();
    engine.spawn(def).unwrap();
    tokio::time::timeout(WAIT, engine.join())
        .await
        .expect("reaches done");
    let ctx = engine.snapshot("c").await;
    // A stopped machine keeps its last snapshot.
    let ctx = ctx.expect("snapshot of a stopped machine").context;
    assert_eq!(ctx["c_hello"], "Hello from C 1.0.0");
    assert!(ctx["c_params_bytes"].as_u64().unwrap() > 10);
}

#[test]
fn a_changed_library_is_loaded_from_a_fresh_copy_and_swapped_in() {
    let src = workspace().join("plugins/examples/c_hello/c_hello.c");
    let build = tempfile::tempdir().unwrap();
    let v1 = build.path().join("v1.so");
    let v2 = build.path().join("v2.so");
    compile_c(&src, &v1, &[]);
    compile_c(&src, &v2, &["-DC_HELLO_VERSION=\"2.0.0\""]);
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("libc_hello.so");
    std::fs::copy(&v1, &lib).unwrap();

    let r = registry_with(dir.path());
    let host = r.plugin_host();
    let rec = Arc::new(Recorder::default());
    host.set_observer(rec.clone());
    host.set_check_interval(Duration::ZERO);
    let hello = || {
        host.call("c_hello", &json!({}), &json!({}))
            .unwrap()
            .context["c_hello"]
            .clone()
    };
    assert_eq!(hello(), "Hello from C 1.0.0");
    let first_copy = r.plugins()[0].loaded_from.clone();

    // Overwrite the file in place (what `cp` does): safe, the engine runs a copy.
    std::fs::copy(&v2, &lib).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(hello(), "Hello from C 2.0.0");
    let info = &r.plugins()[0];
    assert_eq!(info.version, "2.0.0");
    assert_ne!(info.loaded_from, first_copy, "a fresh copy");
    assert!(rec.errors().is_empty());
    assert_eq!(*rec.swaps.lock().unwrap(), ["c_hello 1.0.0 -> 2.0.0"]);

    // A broken new version is refused; the loaded one keeps serving.
    std::fs::write(&lib, "garbage").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(hello(), "Hello from C 2.0.0");
    let errors = rec.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, ErrorKind::Plugin);
    assert!(errors[0].1.contains("keeps serving"), "{}", errors[0].1);
    // Refused once, not on every call.
    assert_eq!(hello(), "Hello from C 2.0.0");
    assert_eq!(rec.errors().len(), 1);

    // Another plugin under the same file name is refused too.
    std::fs::copy(rust_plugin("greet"), &lib).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let results = host.reload_changed();
    assert_eq!(results.len(), 1);
    assert!(results[0]
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("not `c_hello`"));
    assert_eq!(hello(), "Hello from C 2.0.0");
    // Refused versions are not swaps.
    assert_eq!(rec.swaps.lock().unwrap().len(), 1);
}

#[test]
fn the_http_request_plugin_talks_http() {
    let server = support::http::Server::start();
    let dir = plugin_dir(&["http_request"]);
    let r = registry_with(dir.path());
    let host = r.plugin_host();
    let call = |params: Json| host.call("http_request", &params, &json!({}));
    let url = |p: &str| format!("http://{}{p}", server.addr);

    let ok = call(json!({"url": url("/json"), "success": "fetched"})).unwrap();
    assert_eq!(ok.event.as_deref(), Some("fetched"));
    assert_eq!(ok.context["http_response"]["status"], 200);
    assert_eq!(
        ok.context["http_response"]["body"],
        json!({"hello": "world"})
    );
    assert!(ok.log.unwrap().contains("-> 200"));

    let echo = call(json!({
        "url": url("/echo"), "method": "post",
        "headers": {"X-Token": "abc"}, "body": {"id": 7},
        "response_key": "reply",
    }))
    .unwrap();
    assert_eq!(echo.event.as_deref(), Some("success"));
    let body = echo.context["reply"]["body"].as_str().unwrap().to_owned();
    assert!(body.starts_with("POST /echo"), "{body}");
    assert!(body.to_ascii_lowercase().contains("x-token: abc"), "{body}");
    assert!(
        body.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{body}"
    );
    assert!(body.ends_with(r#"{"id":7}"#), "{body}");

    let mapping = json!({"404": "not_found", "5xx": "server_error"});
    let nf = call(json!({"url": url("/status/404"), "status_events": mapping})).unwrap();
    assert_eq!(nf.event.as_deref(), Some("not_found"));
    assert!(nf.error.is_none());
    let se = call(json!({"url": url("/status/503"), "status_events": mapping})).unwrap();
    assert_eq!(se.event.as_deref(), Some("server_error"));

    let unmapped = call(json!({"url": url("/status/500")})).unwrap();
    let (kind, msg) = unmapped.error.unwrap();
    assert_eq!(kind, "http_status");
    assert!(msg.contains("HTTP 500"), "{msg}");
    assert_eq!(unmapped.context["http_response"]["status"], 500);

    let slow =
        call(json!({"url": url("/slow"), "timeout": 0.3, "timeout_event": "too_slow"})).unwrap();
    assert_eq!(slow.error.unwrap().0, "timeout");
    assert_eq!(slow.event.as_deref(), Some("too_slow"));

    let refused = call(json!({"url": format!("http://{}/", server.closed_addr)})).unwrap();
    assert_eq!(refused.error.unwrap().0, "connect");

    let bad = call(json!({"url": "ftp://example.invalid/"})).unwrap();
    assert_eq!(bad.error.unwrap().0, "bad_input");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_with_too_many_stuck_calls_is_refused_new_ones() {
    let dir = plugin_dir(&["faulty"]);
    let registry = registry_with(dir.path());
    // Every call blocks for 1.5 s but may take 0.02 s: each timeout leaves a call running,
    // and the state is entered again at once.
    let def = def_with(
        "metadata: {machine_name: stuck}\ninitial_state: calling\ntransitions:\n  - {from: calling, to: calling, event: again}\n  - {from: calling, to: refused, event: error}\nactions:\n  calling:\n    - {type: block, ms: 1500, timeout: 0.02, timeout_event: again}\n",
        &registry,
    );
    let rec = Arc::new(Recorder::default());
    let engine = Engine::builder().observer(rec.clone()).build();
    engine.spawn(def).unwrap();
    tokio::time::timeout(WAIT, engine.join())
        .await
        .expect("reaches `refused`");
    let errors = rec.errors();
    let limit = turnstile_engine::actions::plugin::MAX_STUCK_CALLS;
    assert_eq!(errors.len(), limit + 1, "{errors:#?}");
    assert!(errors[..limit]
        .iter()
        .all(|(k, _)| *k == ErrorKind::ActionTimeout));
    let (kind, msg) = &errors[limit];
    assert_eq!(*kind, ErrorKind::Plugin);
    assert!(msg.contains("still running past their timeout"), "{msg}");
}

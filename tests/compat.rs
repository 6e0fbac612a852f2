//! statemachine-engine compatibility, end to end: its example configs, unchanged, with the
//! real `turnstile` binary. The fixtures are statemachine-engine 1.0.91's own examples,
//! fetched by `.ci/install.sh` (see `engine/tests/support/upstream.rs`).

mod kit;

use std::collections::BTreeSet;
use std::time::Duration;

use kit::{field, parse_rfc3339_utc, seq, stopped, timestamp, transitions, turnstile, Proc};

use kit::upstream::example_arg as fixture;

#[test]
fn timestamps_parse() {
    assert_eq!(parse_rfc3339_utc("1970-01-02T00:00:01.5Z"), Some(86_401.5));
    let a = parse_rfc3339_utc("2026-02-28T23:59:59.000000Z").expect("parses");
    let b = parse_rfc3339_utc("2026-03-01T00:00:01.250000Z").expect("parses");
    assert!((b - a - 2.25).abs() < 1e-6);
    assert_eq!(parse_rfc3339_utc("2026-03-01 00:00:01"), None);
}

/// timeout_demo/timeout_worker.yaml: initializing -> waiting, `timeout(5)` fires about 5 s
/// later (waiting -> timed_out), its `sleep 3` command returns `retry` about 3 s after that
/// (timed_out -> waiting); SIGTERM then stops it with exit status 0.
#[test]
fn timeout_worker_times_out_and_retries() {
    let cfg = fixture("timeout_demo/config/timeout_worker.yaml");
    let m = "timeout_worker";
    let mut p = Proc::start(&["run", &cfg]);
    let limit = Duration::from_secs(60);
    let is = |from: &'static str, to: &'static str| {
        move |j: &serde_json::Value| {
            kit::is_transition(j, m) && field(j, "from") == from && field(j, "to") == to
        }
    };
    let t0 = timestamp(&p.wait_for(
        "initializing -> waiting",
        limit,
        is("initializing", "waiting"),
    ));
    let t1 = timestamp(&p.wait_for("waiting -> timed_out", limit, is("waiting", "timed_out")));
    let t2 = timestamp(&p.wait_for("timed_out -> waiting", limit, is("timed_out", "waiting")));
    p.signal("TERM");
    let (status, _) = p.finish(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "stderr:\n{}", p.log());

    let records = p.records();
    assert_eq!(
        transitions(&records, m),
        seq(&[
            ("initializing", "waiting", "initialized"),
            ("waiting", "timed_out", "timeout(5)"),
            ("timed_out", "waiting", "retry"),
        ]),
        "{}",
        p.log()
    );
    let timed_out_after = t1 - t0;
    assert!(
        (4.5..=8.0).contains(&timed_out_after),
        "timeout(5) fired after {timed_out_after:.3} s:\n{}",
        p.log()
    );
    let retried_after = t2 - t1;
    assert!(
        (2.5..=6.0).contains(&retried_after),
        "`sleep 3 && echo` returned retry after {retried_after:.3} s:\n{}",
        p.log()
    );
    // The config's own log and bash output made it to the log.
    let says = |text: &str| {
        records
            .iter()
            .any(|j| field(j, "machine") == m && field(j, "message").contains(text))
    };
    for text in [
        "Timeout demo initializing",
        "Initialization complete",
        "TIMEOUT! Operation took too long",
        "Retrying...",
    ] {
        assert!(says(text), "no `{text}` in the log:\n{}", p.log());
    }
    assert_eq!(
        stopped(&records, m),
        Some(("waiting".into(), "Shutdown".into())),
        "{}",
        p.log()
    );
}

/// The action types `validate` says are unknown in a file, from `--format json`.
fn missing_actions(file: &str) -> (Option<i32>, BTreeSet<String>, serde_json::Value) {
    let out = turnstile(&["validate", "--format", "json", file])
        .output()
        .expect("run validate");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "validate --format json printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let missing = j["files"][0]["diagnostics"]
        .as_array()
        .expect("diagnostics")
        .iter()
        .filter(|d| d["code"] == "unknown-action")
        .map(|d| {
            let msg = d["message"].as_str().unwrap_or_default();
            msg.split('`').nth(1).unwrap_or(msg).to_owned()
        })
        .collect();
    (out.status.code(), missing, j)
}

/// The other fixtures need actions this build does not have (plugins, an action
/// statemachine-engine does not have either): `validate` exits 2 and names exactly those
/// action types, nothing else as an error. Update the lists when these actions arrive.
#[test]
fn validate_names_exactly_the_missing_action_types() {
    let cases: &[(&str, &[&str])] = &[
        (
            "controller_worker/config/controller.yaml",
            &["check_events"],
        ),
        ("custom_actions/config/worker.yaml", &["calculate", "greet"]),
    ];
    // These load with no error (the job actions are built in).
    let clean = [
        "controller_worker/config/worker.yaml",
        "patient_records/config/patient-records.yaml",
        "simple_worker/config/worker.yaml",
        "timeout_demo/config/timeout_worker.yaml",
    ];
    let mut all: BTreeSet<String> = kit::upstream::all_configs();
    for file in clean {
        assert!(all.remove(file), "{file}");
        let (code, missing, j) = missing_actions(&fixture(file));
        assert_eq!(code, Some(0), "{file}: {j:#}");
        assert!(missing.is_empty(), "{file}: {j:#}");
    }
    // Its `start_fsm`'s `yaml_path` is relative to upstream's repository root (where its
    // demo runs): checked from there in `concurrent_controller_validates_from_upstreams_root`.
    assert!(all.remove("patient_records/config/concurrent-controller.yaml"));
    let covered: BTreeSet<String> = cases.iter().map(|(f, _)| (*f).to_owned()).collect();
    assert_eq!(all, covered, "a compat fixture is not covered");

    for (file, want) in cases {
        let (code, missing, j) = missing_actions(&fixture(file));
        assert_eq!(code, Some(2), "{file}: {j:#}");
        let want: BTreeSet<String> = want.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(missing, want, "{file}: {j:#}");
        // Nothing else is an error: once these actions exist, the file loads.
        let other_errors: Vec<&serde_json::Value> = j["files"][0]["diagnostics"]
            .as_array()
            .expect("diagnostics")
            .iter()
            .filter(|d| d["severity"] == "error" && d["code"] != "unknown-action")
            .collect();
        assert!(other_errors.is_empty(), "{file}: {other_errors:#?}");
        assert_eq!(j["errors"], want.len(), "{file}: {j:#}");
    }

    // The text output names the file, line and column of each, with a hint.
    let file = fixture("controller_worker/config/controller.yaml");
    let out = turnstile(&["validate", &file])
        .output()
        .expect("run validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "{file}:66:13: error[unknown-action]: unknown action type `check_events`"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("hint:"), "{stdout}");
}

/// `start_fsm` is built in: the concurrent controller validates where its `yaml_path`
/// resolves (upstream's repository root, its demo's working directory), and elsewhere
/// the file not found is an error at the line and column of `yaml_path`, with a hint.
#[test]
fn concurrent_controller_validates_from_upstreams_root() {
    let file = fixture("patient_records/config/concurrent-controller.yaml");
    let root = kit::upstream::examples_dir()
        .parent()
        .expect("examples/ has a parent")
        .to_path_buf();
    let out = turnstile(&["validate", &file])
        .current_dir(&root)
        .output()
        .expect("run validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");

    let (code, missing, j) = missing_actions(&file);
    assert_eq!(code, Some(2), "{j:#}");
    assert!(missing.is_empty(), "{j:#}");
    let out = turnstile(&["validate", &file])
        .output()
        .expect("run validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "{file}:140:18: error[bad-parameter]: `start_fsm` action: no file `examples/patient_records/config/patient-records.yaml`"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("relative to the working directory"),
        "{stdout}"
    );
}

/// The list actions used by the concurrent controller are built in: they are not among
/// the missing types, and the events they return are checked like any other.
#[test]
fn list_actions_are_built_in() {
    let (_, missing, j) = missing_actions(&fixture(
        "patient_records/config/concurrent-controller.yaml",
    ));
    assert!(!missing.contains("pop_from_list"), "{j:#}");
    assert!(!missing.contains("add_to_list"), "{j:#}");
}

/// Upstream's `patient_records` concurrent controller, unchanged, run from upstream's root
/// (its `start_fsm`'s `yaml_path` is relative to it) on the job store `db`, with its
/// sidecar's address.
fn patient_records_controller(db: &str) -> (Proc, std::net::SocketAddr) {
    let root = kit::upstream::examples_dir()
        .parent()
        .expect("examples/ has a parent")
        .to_path_buf();
    let mut cmd = turnstile(&[
        "run",
        "examples/patient_records/config/concurrent-controller.yaml",
        "--db",
        db,
        "--listen",
        "127.0.0.1:0",
    ]);
    cmd.current_dir(&root);
    let mut p = Proc::spawn(cmd);
    let addr = p.sidecar_addr(Duration::from_secs(30));
    (p, addr)
}

/// statemachine-engine's `patient_records` demo, unchanged, from upstream's root: the
/// concurrent controller takes the pending jobs and its `start_fsm` starts one
/// patient-records instance per job in this process, named from the job and with the
/// job's values in its context.
#[test]
fn concurrent_controller_starts_a_patient_record_per_job() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("jobs.db");
    for i in 1..=2 {
        let data = format!(
            r#"{{"report_id": "r{i}", "report_title": "Report {i}", "summary_text": "text {i}"}}"#
        );
        kit::jobs_add(
            &db,
            &[
                "--type",
                "patient_records",
                "--machine-type",
                "patient_records",
                "--job-id",
                &format!("rep{i}"),
                "--data",
                &data,
            ],
        );
    }
    let dbs = db.display().to_string();
    let (mut p, addr) = patient_records_controller(&dbs);
    for i in 1..=2 {
        let name = format!("patient_record_rep{i}");
        let m = kit::eventually(&format!("{name} to start"), || {
            let r = kit::http::get(addr, &format!("/machines/{name}"));
            (r.status == 200).then(|| r.json())
        });
        assert_eq!(m["definition"], "patient-records", "{m}");
        assert_eq!(m["instance"], true, "{m}");
        assert_eq!(m["state"], "summarizing", "{m}");
        assert_eq!(
            m["context"],
            serde_json::json!({"job_id": format!("rep{i}"), "report_id": format!("r{i}"),
                               "report_title": format!("Report {i}"), "summary_text": format!("text {i}")}),
        );
    }
    let page = kit::http::get_json(addr, "/machines?definition=patient-records");
    assert_eq!(page["machines"].as_array().map(Vec::len), Some(2), "{page}");
    p.signal("TERM");
    let (st, _) = p.finish(Duration::from_secs(30));
    assert!(st.success(), "{}", p.log());
}

/// Issue 14's run of the `patient_records` demo, unchanged: jobs added with
/// statemachine-engine's own `statemachine-db add-job` (as its `run-demo.sh` does), the
/// concurrent controller starting one patient-record instance per job, and every instance
/// going to its final state (`shutdown`): driven past its two 30 s timeouts by the events
/// its config documents (`summary_complete`, `validation_passed`), then by its own
/// actions (`complete_job`, a `bash` that returns `stop`). Every job ends completed.
#[test]
fn patient_records_jobs_from_statemachine_db_end_in_final_states() {
    let sme = kit::upstream::statemachine_db();
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = ["job_001", "job_002", "job_003"];
    for (i, id) in ids.iter().enumerate() {
        let payload = format!(
            r#"{{"report_id":"report_{i}","report_title":"Patient Report {i}","summary_text":"Processing report {i}"}}"#
        );
        // Its CLI always writes ./data/pipeline.db.
        kit::run_ok(
            "statemachine-db add-job",
            std::process::Command::new(&sme)
                .current_dir(dir.path())
                .args([
                    "add-job",
                    id,
                    "--type",
                    "patient_records",
                    "--payload",
                    &payload,
                ]),
        );
    }
    let db = dir.path().join("data/pipeline.db");
    let dbs = db.display().to_string();
    let (mut p, addr) = patient_records_controller(&dbs);
    for id in ids {
        let name = format!("patient_record_{id}");
        kit::eventually(&format!("{name} to start"), || {
            let r = kit::http::get(addr, &format!("/machines/{name}"));
            (r.status == 200 && r.json()["state"] == "summarizing").then_some(())
        });
        for ev in ["summary_complete", "validation_passed"] {
            let r = kit::http::post_json(
                addr,
                &format!("/machines/{name}/events"),
                &[],
                &serde_json::json!({ "type": ev }),
            );
            assert_eq!(r.status, 202, "{name} {ev}: {}", r.text());
        }
    }
    let page = kit::eventually("every instance retired in `shutdown`", || {
        let page = kit::http::get_json(addr, "/machines?definition=patient-records");
        let ms = page["machines"].as_array()?.clone();
        (ms.len() == ids.len()
            && ms
                .iter()
                .all(|m| m["state"] == "shutdown" && m["running"] == false))
        .then_some(page)
    });
    for m in page["machines"].as_array().expect("a page") {
        assert_eq!(m["instance"], true, "{m}");
        assert_eq!(m["stop_reason"], "FinalState", "{m}");
    }
    p.signal("TERM");
    let (st, _) = p.finish(Duration::from_secs(30));
    assert!(st.success(), "{}", p.log());
    let out = kit::run_ok(
        "turnstile jobs list",
        &mut turnstile(&["jobs", "list", "--db", &dbs, "--format", "json"]),
    );
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let done: BTreeSet<&str> = jobs
        .as_array()
        .expect("an array")
        .iter()
        .filter(|j| j["status"] == "completed")
        .filter_map(|j| j["job_id"].as_str())
        .collect();
    assert_eq!(done, ids.into_iter().collect(), "{jobs:#}");
}

//! End to end: the real `turnstile` binary on every example in `examples/`, and the CLI's
//! exit codes, diagnostics, diagram and signal handling.
//!
//! Each example is run with `--log-format json`; stderr is parsed line by line and the
//! documented outcome is checked: the exact transitions of each machine, the final states,
//! and exit status 0, within a generous time limit (the child is killed on timeout).

mod kit;

use std::collections::BTreeSet;
use std::time::Duration;

use kit::{
    field, messages, path, process_gone, run_to_end, seq, stopped, timestamp, transitions,
    turnstile, wait_for_pid_file, Proc,
};

/// Every example config, relative to the workspace root.
const EXAMPLES: &[&str] = &[
    "examples/worker.yaml",
    "examples/timeout_demo.yaml",
    "examples/pingpong/ping.yaml",
    "examples/pingpong/pong.yaml",
    "examples/controller_worker/controller.yaml",
    "examples/controller_worker/worker.yaml",
];

fn assert_final_message(p: &Proc) {
    let records = p.records();
    assert!(
        records.iter().any(|j| field(j, "target") == "turnstile"
            && field(j, "message") == "every machine reached a final state"),
        "no `every machine reached a final state` line:\n{}",
        p.log()
    );
}

#[test]
fn worker_example_processes_every_item_then_stops() {
    let (p, status) = run_to_end(&["run", &path("examples/worker.yaml")]);
    assert_eq!(status.code(), Some(0), "stderr:\n{}", p.log());
    let records = p.records();
    let round = [
        ("picking", "processing", "item_popped"),
        ("processing", "picking", "processed"),
    ];
    let mut want = Vec::new();
    for _ in 0..3 {
        want.extend(round);
    }
    want.push(("picking", "done", "list_empty"));
    assert_eq!(transitions(&records, "worker"), seq(&want), "{}", p.log());
    assert_eq!(
        messages(&records, "turnstile::bash", "worker"),
        [
            "processed alpha.txt (9 characters)",
            "processed bravo.txt (9 characters)",
            "processed charlie.txt (11 characters)",
        ]
    );
    assert_eq!(
        messages(&records, "turnstile::log", "worker"),
        [
            "processing alpha.txt",
            "processing bravo.txt",
            "processing charlie.txt",
            "the list is empty: every item is processed",
        ]
    );
    assert_eq!(
        stopped(&records, "worker"),
        Some(("done".into(), "FinalState".into()))
    );
    assert_final_message(&p);
}

#[test]
fn pingpong_example_plays_three_rounds_then_both_stop() {
    let (p, status) = run_to_end(&[
        "run",
        &path("examples/pingpong/ping.yaml"),
        &path("examples/pingpong/pong.yaml"),
    ]);
    assert_eq!(status.code(), Some(0), "stderr:\n{}", p.log());
    let records = p.records();

    let mut ping = Vec::new();
    let mut pong = Vec::new();
    for _ in 0..3 {
        ping.extend([
            ("serving", "hitting", "serve"),
            ("hitting", "waiting", "ball_sent"),
            ("waiting", "resting", "ball"),
            ("resting", "serving", "rested"),
        ]);
        pong.extend([
            ("waiting", "hitting", "ball"),
            ("hitting", "waiting", "ball_sent"),
        ]);
    }
    ping.extend([
        ("serving", "finishing", "no_rounds_left"),
        ("finishing", "finished", "told_pong"),
    ]);
    pong.push(("waiting", "finished", "game_over"));
    assert_eq!(transitions(&records, "ping"), seq(&ping), "{}", p.log());
    assert_eq!(transitions(&records, "pong"), seq(&pong), "{}", p.log());

    assert_eq!(
        messages(&records, "turnstile::log", "ping"),
        [
            "round 1: ping ->",
            "round 2: ping ->",
            "round 3: ping ->",
            "ping: game over after 3 rounds",
        ]
    );
    // The round number reached pong through the event payload (`context_map`).
    assert_eq!(
        messages(&records, "turnstile::log", "pong"),
        [
            "round 1: <- pong",
            "round 2: <- pong",
            "round 3: <- pong",
            "pong: game over",
        ]
    );
    for m in ["ping", "pong"] {
        assert_eq!(
            stopped(&records, m),
            Some(("finished".into(), "FinalState".into())),
            "{m}"
        );
    }
    assert_final_message(&p);
}

#[test]
fn controller_worker_example_hands_out_every_job_then_stops_the_worker() {
    let (p, status) = run_to_end(&[
        "run",
        &path("examples/controller_worker/controller.yaml"),
        &path("examples/controller_worker/worker.yaml"),
    ]);
    assert_eq!(status.code(), Some(0), "stderr:\n{}", p.log());
    let records = p.records();

    let mut controller = Vec::new();
    for _ in 0..3 {
        controller.extend([
            ("dispatching", "assigning", "job_ready"),
            ("assigning", "waiting_for_report", "job_sent"),
            ("waiting_for_report", "recording", "job_report"),
            ("recording", "dispatching", "recorded"),
        ]);
    }
    controller.extend([
        ("dispatching", "stopping_worker", "all_jobs_dispatched"),
        ("stopping_worker", "done", "worker_told"),
    ]);
    let mut worker = Vec::new();
    for ok in [true, true, false] {
        worker.push(("idle", "working", "job"));
        if ok {
            worker.extend([
                ("working", "reporting", "job_done"),
                ("reporting", "idle", "reported"),
            ]);
        } else {
            worker.extend([
                ("working", "reporting_failure", "job_failed"),
                ("reporting_failure", "idle", "reported"),
            ]);
        }
    }
    worker.push(("idle", "stopped", "stop"));
    assert_eq!(
        transitions(&records, "controller"),
        seq(&controller),
        "{}",
        p.log()
    );
    assert_eq!(transitions(&records, "worker"), seq(&worker), "{}", p.log());

    assert_eq!(
        messages(&records, "turnstile::log", "controller"),
        [
            "assigning job-1 (orders.csv)",
            "job-1 finished: ok",
            "assigning job-2 (customers.csv)",
            "job-2 finished: ok",
            "assigning job-3 (orders-empty.csv)",
            "job-3 finished: failed",
            r#"all jobs handled: ["job-1","job-2","job-3"]"#,
        ]
    );
    // The job's fields reached the worker's command through the payload.
    assert_eq!(
        messages(&records, "turnstile::bash", "worker"),
        [
            "job-1: 120 rows of orders.csv checked",
            "job-2: 45 rows of customers.csv checked",
        ]
    );
    let errors = messages(&records, "turnstile::error", "worker");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("job-3: orders-empty.csv has no rows"),
        "{errors:?}"
    );
    assert_eq!(
        stopped(&records, "controller"),
        Some(("done".into(), "FinalState".into()))
    );
    assert_eq!(
        stopped(&records, "worker"),
        Some(("stopped".into(), "FinalState".into()))
    );
    assert_final_message(&p);
}

#[test]
fn timeout_demo_example_times_out_retries_then_gives_up() {
    let (p, status) = run_to_end(&["run", &path("examples/timeout_demo.yaml")]);
    assert_eq!(status.code(), Some(0), "stderr:\n{}", p.log());
    let records = p.records();
    let m = "timeout_demo";
    let want = seq(&[
        ("waiting", "timed_out", "timeout(1)"),
        ("timed_out", "waiting", "retry"),
        ("waiting", "timed_out", "timeout(1)"),
        ("timed_out", "waiting", "retry"),
        ("waiting", "timed_out", "timeout(1)"),
        ("timed_out", "gave_up", "no_retries_left"),
    ]);
    assert_eq!(transitions(&records, m), want, "{}", p.log());
    assert_eq!(
        messages(&records, "turnstile::log", m),
        [
            "attempt 1: waiting for work (times out after 1 s)",
            "attempt 1 timed out",
            "attempt 2: waiting for work (times out after 1 s)",
            "attempt 2 timed out",
            "attempt 3: waiting for work (times out after 1 s)",
            "attempt 3 timed out",
            "gave up after 3 attempts",
        ]
    );
    // Each timeout fires no earlier than 1 s after `waiting` was entered.
    let mut entered = None;
    for j in &records {
        if field(j, "machine") != m {
            continue;
        }
        let started = field(j, "message") == "machine started";
        if started || (kit::is_transition(j, m) && field(j, "to") == "waiting") {
            entered = Some(timestamp(j));
        } else if kit::is_transition(j, m) && field(j, "event") == "timeout(1)" {
            let waited = timestamp(j) - entered.expect("waiting entered before it timed out");
            assert!(
                waited >= 0.99,
                "timed out after {waited:.3} s:\n{}",
                p.log()
            );
        }
    }
    assert_eq!(
        stopped(&records, m),
        Some(("gave_up".into(), "FinalState".into()))
    );
    assert_final_message(&p);
}

#[test]
fn every_example_passes_validate_strict() {
    // Every YAML file under examples/ is listed above (so each one has a run test).
    let mut found = BTreeSet::new();
    let mut dirs = vec![kit::root().join("examples")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read examples/") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                let rel = p.strip_prefix(kit::root()).expect("under the root");
                found.insert(rel.display().to_string());
            }
        }
    }
    let listed: BTreeSet<String> = EXAMPLES.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(found, listed, "examples/ and the EXAMPLES list differ");

    for ex in EXAMPLES {
        let out = turnstile(&["validate", "--strict", &path(ex)])
            .output()
            .expect("run validate");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{ex}:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("1 file(s), 0 error(s), 0 warning(s)"),
            "{ex}: {stdout}"
        );
    }
    // And all at once, as JSON.
    let mut args = vec!["validate".to_owned(), "--strict".into(), "--format".into()];
    args.push("json".into());
    args.extend(EXAMPLES.iter().map(|e| path(e)));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = turnstile(&args).output().expect("run validate");
    assert_eq!(out.status.code(), Some(0));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(j["errors"], 0);
    assert_eq!(j["warnings"], 0);
    assert_eq!(j["files"].as_array().map(Vec::len), Some(EXAMPLES.len()));
}

#[test]
fn validate_reports_file_line_and_column_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("broken.yaml");
    std::fs::write(
        &file,
        "initial_state: waiting\n\
         states: [waiting, working]\n\
         transitions:\n\
         \x20 - from: waiting\n\
         \x20   to: wroking\n\
         \x20   event: go\n",
    )
    .expect("write config");
    let f = file.display().to_string();
    let out = turnstile(&["validate", &f]).output().expect("run validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains(&format!("{f}:5:9: error[unknown-state]")),
        "{stdout}"
    );
    assert!(stdout.contains("did you mean `working`?"), "{stdout}");

    // `run` refuses it too, with the same diagnostic, before starting anything.
    let out = turnstile(&["run", &f]).output().expect("run run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("{f}:5:9")), "{stderr}");
    assert!(!stderr.contains("machine started"), "{stderr}");
}

#[test]
fn run_on_a_missing_file_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.yaml").display().to_string();
    let out = turnstile(&["run", &missing]).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&missing), "{stderr}");
    assert!(stderr.contains("cannot read"), "{stderr}");
}

#[test]
fn machine_name_with_two_configs_exits_2() {
    let out = turnstile(&[
        "run",
        "--machine-name",
        "x",
        &path("examples/pingpong/ping.yaml"),
        &path("examples/pingpong/pong.yaml"),
    ])
    .output()
    .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--machine-name"), "{stderr}");
    assert!(!stderr.contains("machine started"), "{stderr}");
}

#[test]
fn machine_name_renames_the_machine() {
    let (p, status) = run_to_end(&[
        "run",
        "--machine-name",
        "renamed",
        &path("examples/timeout_demo.yaml"),
    ]);
    assert_eq!(status.code(), Some(0), "stderr:\n{}", p.log());
    let records = p.records();
    assert!(transitions(&records, "timeout_demo").is_empty());
    assert_eq!(transitions(&records, "renamed").len(), 6, "{}", p.log());
}

#[test]
fn diagram_prints_a_mermaid_state_diagram() {
    let out = turnstile(&["diagram", &path("examples/worker.yaml")])
        .output()
        .expect("run diagram");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let lines: Vec<&str> = stdout.lines().map(str::trim).collect();
    assert_eq!(lines.first(), Some(&"stateDiagram-v2"), "{stdout}");
    for want in [
        "[*] --> picking",
        "picking --> processing : item_popped",
        "picking --> done : list_empty",
        "processing --> picking : processed",
        "done --> [*]",
    ] {
        assert!(lines.contains(&want), "missing `{want}` in:\n{stdout}");
    }
}

/// Writes a one-machine config into `dir` and returns its path.
fn write_config(dir: &std::path::Path, name: &str, yaml: &str) -> String {
    let f = dir.join(name);
    std::fs::write(&f, yaml).expect("write config");
    f.display().to_string()
}

fn stop_a_sleeping_machine_with(sig: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(
        dir.path(),
        "sleeper.yaml",
        "metadata: {machine_name: sleeper}\n\
         initial_state: napping\n\
         transitions:\n\
         \x20 - {from: napping, to: awake, event: wake_up}\n\
         actions:\n\
         \x20 napping:\n\
         \x20   - {type: log, message: napping}\n\
         \x20   - {type: sleep, duration: 60}\n",
    );
    let mut p = Proc::start(&["run", &cfg]);
    p.wait_for("the machine napping", kit::RUN_LIMIT, |j| {
        field(j, "message") == "napping"
    });
    let sent = std::time::Instant::now();
    p.signal(sig);
    let (status, _) = p.finish(Duration::from_secs(30));
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", p.log());
    assert!(took < Duration::from_secs(5), "took {took:?} to stop");
    let records = p.records();
    assert_eq!(
        stopped(&records, "sleeper"),
        Some(("napping".into(), "Shutdown".into())),
        "{}",
        p.log()
    );
    assert!(transitions(&records, "sleeper").is_empty());
    assert!(
        records
            .iter()
            .any(|j| field(j, "message") == format!("SIG{sig}: stopping")),
        "{}",
        p.log()
    );
}

#[test]
fn sigterm_stops_a_sleeping_machine_and_exits_0() {
    stop_a_sleeping_machine_with("TERM");
}

#[test]
fn sigint_stops_a_sleeping_machine_and_exits_0() {
    stop_a_sleeping_machine_with("INT");
}

#[test]
fn sigterm_kills_a_running_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shell_pid = dir.path().join("bash.pid");
    let sleep_pid = dir.path().join("sleep.pid");
    let cfg = write_config(
        dir.path(),
        "busy.yaml",
        &format!(
            "metadata: {{machine_name: busy}}\n\
             initial_state: working\n\
             transitions:\n\
             \x20 - {{from: working, to: done, event: job_done}}\n\
             actions:\n\
             \x20 working:\n\
             \x20   - type: bash\n\
             \x20     timeout: 300\n\
             \x20     command: 'echo $$ > {b}.tmp && mv {b}.tmp {b}; sleep 60 & echo $! > {s}.tmp && mv {s}.tmp {s}; wait'\n",
            b = shell_pid.display(),
            s = sleep_pid.display(),
        ),
    );
    let mut p = Proc::start(&["run", &cfg]);
    let limit = Duration::from_secs(60);
    let bash = wait_for_pid_file(&shell_pid, limit).expect("the command wrote its pid");
    let sleep = wait_for_pid_file(&sleep_pid, limit).expect("the command started `sleep`");
    assert!(!process_gone(bash) && !process_gone(sleep), "already gone");
    let sent = std::time::Instant::now();
    p.signal("TERM");
    let (status, _) = p.finish(Duration::from_secs(30));
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", p.log());
    assert!(took < Duration::from_secs(5), "took {took:?} to stop");
    // The command's whole process group is killed, not left running.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !(process_gone(bash) && process_gone(sleep)) {
        assert!(
            std::time::Instant::now() < deadline,
            "still running after the exit: bash {bash} gone={}, sleep {sleep} gone={}",
            process_gone(bash),
            process_gone(sleep)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let records = p.records();
    assert!(transitions(&records, "busy").is_empty(), "{}", p.log());
    assert_eq!(
        stopped(&records, "busy"),
        Some(("working".into(), "Shutdown".into())),
        "{}",
        p.log()
    );
}

#![allow(clippy::unwrap_used)]
//! The durable job queue with the real binary: statemachine-engine's simple worker
//! processes every job (including jobs added long after it started, by another process,
//! over HTTP and by statemachine-engine's own CLI), several worker processes share one
//! queue and complete each job exactly once, and workers killed with SIGKILL mid-job lose
//! no job; operators list, show, retry and cancel jobs over HTTP and with the CLI (on the
//! store and through the sidecar), and `--job-retention` purges old finished jobs.

mod kit;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kit::http::http;
use kit::{field, jobs_add, turnstile, Proc};
use serde_json::{json, Value as Json};
use turnstile_engine::store::{JobStore, ListJobs, NewJob, SqliteStore, StoreOptions};

const LIMIT: Duration = Duration::from_secs(90);

use kit::upstream::example_arg as fixture;

/// Waits for the `n`th log line of `simple_worker` saying it processes a job; returns
/// the job id it names.
fn next_processed(p: &mut Proc) -> String {
    let rec = p.wait_for("a job processed", LIMIT, |j| {
        field(j, "target") == "turnstile::log"
            && field(j, "machine") == "simple_worker"
            && field(j, "message").starts_with("🔄 Processing job ")
    });
    field(&rec, "message")
        .trim_start_matches("🔄 Processing job ")
        .to_owned()
}

fn back_to_waiting(p: &mut Proc) {
    p.wait_for("back to waiting", LIMIT, |j| {
        kit::is_transition(j, "simple_worker")
            && field(j, "from") == "completed"
            && field(j, "to") == "waiting"
    });
}

#[test]
fn simple_worker_processes_every_job_including_late_ones() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    let early: Vec<String> = (0..2)
        .map(|i| {
            jobs_add(
                &db,
                &[
                    "--type",
                    "task",
                    "--machine-type",
                    "simple_worker",
                    "--job-id",
                    &format!("early-{i}"),
                ],
            )
        })
        .collect();
    assert_eq!(early, ["early-0", "early-1"]);
    let dbs = db.display().to_string();
    let mut p = Proc::start(&[
        "run",
        &fixture("simple_worker/config/worker.yaml"),
        "--db",
        &dbs,
    ]);
    let addr = p.sidecar_addr(LIMIT);
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(next_processed(&mut p));
        back_to_waiting(&mut p);
    }
    assert_eq!(seen, early);

    // Long after start: a job from another process (the CLI), noticed by the file poll.
    std::thread::sleep(Duration::from_secs(1));
    let t0 = Instant::now();
    jobs_add(
        &db,
        &[
            "--type",
            "task",
            "--machine-type",
            "simple_worker",
            "--job-id",
            "late-cli",
        ],
    );
    assert_eq!(next_processed(&mut p), "late-cli");
    let cli_latency = t0.elapsed();
    back_to_waiting(&mut p);

    // Over HTTP: the same process's store wakes the waiting worker at once.
    let t0 = Instant::now();
    let (status, body) = http(
        addr,
        "POST",
        "/jobs",
        &json!({"job_type": "task", "machine_type": "simple_worker", "job_id": "late-http", "data": {"k": "v"}}).to_string(),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        serde_json::from_str::<Json>(&body).unwrap(),
        json!({"job_id": "late-http"})
    );
    assert_eq!(next_processed(&mut p), "late-http");
    let http_latency = t0.elapsed();
    back_to_waiting(&mut p);
    let (status, body) = http(
        addr,
        "POST",
        "/jobs",
        &json!({"job_type": "task", "job_id": "late-http"}).to_string(),
    );
    assert_eq!(status, 409, "{body}");
    let (status, body) = http(addr, "POST", "/jobs", "{\"data\": 1}");
    assert_eq!(status, 400, "{body}");

    // A job for another machine type is left alone.
    jobs_add(&db, &["--type", "task", "--machine-type", "someone_else"]);

    // The jobs gauge shows them (refreshed soon after a local add, and every 5 s).
    let deadline = Instant::now() + LIMIT;
    loop {
        let (_, m) = http(addr, "GET", "/metrics", "");
        if m.contains("turnstile_jobs{job_type=\"task\",status=\"pending\"} 1")
            && m.contains(
                "turnstile_job_changes_total{machine=\"simple_worker\",job_type=\"task\",change=\"claimed\"} 4",
            )
            // The pending job's age (it was added above) and no pending events.
            && m.lines()
                .find_map(|l| {
                    l.strip_prefix("turnstile_jobs_oldest_pending_age_seconds{job_type=\"task\"} ")
                })
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|age| age > 0.0 && age < 600.0)
            && m.contains("turnstile_store_events_pending 0")
        {
            // `turnstile_jobs` and the job and queue families are catalogued (and so
            // documented).
            let problems = turnstile_exporter::telemetry::catalogue::uncatalogued(&m);
            assert!(problems.is_empty(), "not in the catalogue: {problems:#?}");
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("latency: CLI job {cli_latency:?}, HTTP job {http_latency:?}");
    // The bash step sleeps 2 s; the rest is the wake-up.
    assert!(
        http_latency < Duration::from_millis(2600),
        "{http_latency:?}"
    );

    p.signal("TERM");
    let (st, _) = p.finish(LIMIT);
    assert!(st.success(), "{}", p.log());

    let out = turnstile(&["jobs", "list", "--db", &dbs, "--format", "json"])
        .output()
        .unwrap();
    let list: Json = serde_json::from_slice(&out.stdout).unwrap();
    let by_status: BTreeMap<String, String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["job_id"].as_str().unwrap().to_owned(),
                j["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for id in ["early-0", "early-1", "late-cli"] {
        // simple_worker never calls complete_job: back in `waiting`, it has abandoned its
        // job, which is marked failed (not run again).
        assert_eq!(by_status[id], "failed", "{list:#}");
    }
    // The last one was still being processed, or abandoned, when the worker stopped.
    assert!(
        ["processing", "failed"].contains(&by_status["late-http"].as_str()),
        "{list:#}"
    );
    assert_eq!(by_status.values().filter(|s| *s == "pending").count(), 1);
}

/// The test's own view of the workers' database (no lease renewal: it claims nothing).
fn open_store(db: &Path) -> SqliteStore {
    SqliteStore::open_with(
        db,
        StoreOptions {
            renew: false,
            ..StoreOptions::default()
        },
    )
    .unwrap()
}

fn seed(db: &Path, n: usize, prefix: &str) {
    let s = open_store(db);
    for i in 0..n {
        s.add_job(NewJob {
            job_id: Some(format!("{prefix}{i}")),
            job_type: "task".into(),
            data: Some(json!({"i": i})),
            ..NewJob::default()
        })
        .unwrap();
    }
}

fn count(db: &Path, status: &str) -> usize {
    let s = open_store(db);
    s.list_jobs(&ListJobs {
        status: Some(status.into()),
        ..ListJobs::default()
    })
    .unwrap()
    .len()
}

fn worker(config: &Path, db: &Path, extra: &[&str]) -> Proc {
    let (c, d) = (config.display().to_string(), db.display().to_string());
    let mut args = vec!["run", c.as_str(), "--db", d.as_str(), "--no-sidecar"];
    args.extend_from_slice(extra);
    let mut cmd = Command::new(kit::bin());
    // Transition and action logs off: only the job records are counted.
    cmd.current_dir(kit::root())
        .args([
            "--log-format",
            "json",
            "--log-level",
            "warn,turnstile::jobs=info",
        ])
        .args(&args)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null());
    Proc::spawn(cmd)
}

/// `job claimed` / `job completed` records of one process.
fn job_records(p: &Proc, message: &str) -> Vec<String> {
    p.records()
        .iter()
        .filter(|j| field(j, "target") == "turnstile::jobs" && field(j, "message") == message)
        .map(|j| field(j, "job").to_owned())
        .collect()
}

/// Waits until `n` jobs are completed; fails early with the logs when a worker exits.
fn wait_all_completed(db: &Path, n: usize, what: &str, workers: &mut [Proc]) -> Duration {
    let t0 = Instant::now();
    loop {
        let done = count(db, "completed");
        if done == n {
            return t0.elapsed();
        }
        if let Some(w) = workers.iter_mut().find(|w| kit::process_gone(w.pid())) {
            let _ = w.finish(LIMIT);
            panic!("{what}: a worker exited early:\n{}", w.log());
        }
        assert!(t0.elapsed() < LIMIT * 2, "{what}: {done} of {n} completed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn four_worker_processes_complete_each_of_5000_jobs_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let config = dir.path().join("worker.yaml");
    std::fs::write(&config, kit::config::JOB_WORKER).unwrap();
    let n = 5000;
    seed(&db, n, "j");
    let mut workers: Vec<Proc> = (0..4).map(|_| worker(&config, &db, &[])).collect();
    let took = wait_all_completed(&db, n, "4 workers", &mut workers);
    for w in &mut workers {
        w.signal("TERM");
    }
    let mut claimed = Vec::new();
    let mut completed = Vec::new();
    let mut per_worker = Vec::new();
    for w in &mut workers {
        let (st, _) = w.finish(LIMIT);
        assert!(st.success(), "{}", w.log());
        let c = job_records(w, "job completed");
        per_worker.push(c.len());
        completed.extend(c);
        claimed.extend(job_records(w, "job claimed"));
    }
    let unique: BTreeSet<&String> = completed.iter().collect();
    assert_eq!(completed.len(), n, "completions: {per_worker:?}");
    assert_eq!(unique.len(), n);
    assert_eq!(claimed.len(), n, "no job was claimed twice");
    assert!(per_worker.iter().all(|&c| c > 0), "{per_worker:?}");
    #[allow(clippy::cast_precision_loss)]
    let rate = n as f64 / took.as_secs_f64();
    eprintln!("4 workers: {n} jobs in {took:?} ({rate:.0} jobs/s), per worker {per_worker:?}");
}

fn leased_pids(db: &Path) -> Vec<u32> {
    let s = open_store(db);
    s.list_jobs(&ListJobs {
        status: Some("processing".into()),
        ..ListJobs::default()
    })
    .unwrap()
    .iter()
    .filter_map(|j| kit::lease_pid(j.lease_owner.as_deref()?))
    .collect()
}

#[test]
fn workers_killed_mid_job_20_times_lose_no_job() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chaos.db");
    let config = dir.path().join("slow.yaml");
    std::fs::write(&config, kit::config::slow_job_worker(0.15)).unwrap();
    let n = 150;
    seed(&db, n, "c");
    let extra = ["--job-lease", "1", "--job-max-attempts", "100"];
    let mut workers: Vec<Proc> = (0..3).map(|_| worker(&config, &db, &extra)).collect();
    let mut kills = 0;
    let t0 = Instant::now();
    while kills < 20 {
        assert!(t0.elapsed() < LIMIT * 2, "only {kills} kills");
        let busy = leased_pids(&db);
        let Some(i) = workers.iter().position(|w| busy.contains(&w.pid())) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let victim = workers.swap_remove(i);
        victim.signal("KILL");
        drop(victim);
        kills += 1;
        workers.push(worker(&config, &db, &extra));
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = wait_all_completed(&db, n, "after 20 kills", &mut workers);
    let s = SqliteStore::open(&db).unwrap();
    let jobs = s.list_jobs(&ListJobs::default()).unwrap();
    let retried = jobs.iter().filter(|j| j.attempts > 1).count();
    assert!(jobs.iter().all(|j| j.status == "completed"));
    assert!(retried >= 1, "no job was claimed again after a kill");
    eprintln!("20 SIGKILLs: all {n} jobs completed, {retried} after a lost lease; {took:?} after the last kill");
    for w in &mut workers {
        w.signal("TERM");
        let _ = w.finish(LIMIT);
    }
}

#[test]
fn jobs_added_by_statemachine_engines_own_cli_are_processed() {
    let sme = kit::upstream::statemachine_db();
    let dir = tempfile::tempdir().unwrap();
    // Its CLI always writes ./data/pipeline.db.
    let add = |id: &str| {
        kit::run_ok(
            "statemachine-db add-job",
            Command::new(&sme)
                .current_dir(dir.path())
                .args(["add-job", id, "--type", "task", "--machine-type", "worker"])
                .args(["--payload", r#"{"who": "python"}"#]),
        );
    };
    add("sme-1");
    let db = dir.path().join("data/pipeline.db");
    let config = dir.path().join("worker.yaml");
    std::fs::write(&config, kit::config::JOB_WORKER).unwrap();
    let mut w = worker(&config, &db, &[]);
    wait_all_completed(&db, 1, "first python job", std::slice::from_mut(&mut w));
    // While Turnstile waits, statemachine-engine adds another to the same file.
    add("sme-2");
    wait_all_completed(&db, 2, "second python job", std::slice::from_mut(&mut w));
    w.signal("TERM");
    let (st, _) = w.finish(LIMIT);
    assert!(st.success(), "{}", w.log());
    let mut done = job_records(&w, "job completed");
    done.sort();
    assert_eq!(done, ["sme-1", "sme-2"]);
    let s = SqliteStore::open(&db).unwrap();
    let j = s.get_job("sme-2").unwrap().unwrap();
    assert_eq!(j.data["who"], json!("python"));
}

const STEPS: &str = r#"
initial_state: one
metadata:
  machine_name: steps
transitions:
  - {from: one, to: two, event: go}
  - {from: two, to: three, event: go}
actions:
  two:
    - type: set_context
      key: visited_two
      value: true
"#;

fn cli_json(args: &[&str]) -> Json {
    let out = kit::run_ok(&format!("turnstile {args:?}"), &mut turnstile(args));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn run_persist_restores_state_and_context_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let dbs = db.display().to_string();
    let config = dir.path().join("steps.yaml");
    std::fs::write(&config, STEPS).unwrap();
    let cfg = config.display().to_string();

    let mut p = Proc::start(&["run", &cfg, "--db", &dbs, "--persist"]);
    let addr = p.sidecar_addr(LIMIT);
    // Ready: the machine runs and the job store answers a read.
    let (status, body) = http(addr, "GET", "/readyz", "");
    assert_eq!(status, 200, "{body}");
    let ready: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["job_store"], "ok", "{ready:#}");
    let (status, body) = http(
        addr,
        "POST",
        "/machines/steps/events",
        r#"{"type": "go", "job_id": "j-1"}"#,
    );
    assert_eq!(status, 202, "{body}");
    p.wait_for("one -> two", LIMIT, |j| {
        kit::is_transition(j, "steps") && field(j, "to") == "two"
    });
    p.signal("TERM");
    let (st, _) = p.finish(LIMIT);
    assert!(st.success(), "{}", p.log());

    let states = cli_json(&["machine-state", "--db", &dbs, "--format", "json"]);
    assert_eq!(states[0]["machine_name"], "steps", "{states:#}");
    assert_eq!(states[0]["current_state"], "two", "{states:#}");
    assert_eq!(states[0]["context"]["visited_two"], true, "{states:#}");
    let events = cli_json(&["events", "list", "--db", &dbs, "--format", "json"]);
    assert_eq!(events[0]["event"], "go", "{events:#}");
    assert_eq!(events[0]["from_state"], "one");
    assert_eq!(events[0]["to_state"], "two");
    assert_eq!(events[0]["job_id"], "j-1");

    // Restarted: the machine is in `two` again and goes on from there.
    let mut p = Proc::start(&["run", &cfg, "--db", &dbs, "--persist"]);
    let addr = p.sidecar_addr(LIMIT);
    let (status, body) = http(addr, "GET", "/machines/steps", "");
    assert_eq!(status, 200, "{body}");
    let m: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(m["state"], "two", "{m:#}");
    let (status, _) = http(addr, "POST", "/machines/steps/events", r#"{"type": "go"}"#);
    assert_eq!(status, 202);
    p.wait_for("two -> three", LIMIT, |j| {
        kit::is_transition(j, "steps") && field(j, "from") == "two" && field(j, "to") == "three"
    });
    p.signal("TERM");
    let (st, _) = p.finish(LIMIT);
    assert!(st.success(), "{}", p.log());
    let states = cli_json(&["machine-state", "--db", &dbs, "--format", "json"]);
    assert_eq!(states[0]["current_state"], "three", "{states:#}");
}

/// Waits until `p` says it registered its instance id.
fn registered(p: &mut Proc) {
    p.wait_for("instance registered", LIMIT, |j| {
        field(j, "target") == "turnstile::jobs" && field(j, "message") == "instance registered"
    });
}

#[test]
fn a_second_live_process_with_the_same_instance_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let dbs = db.display().to_string();
    let config = dir.path().join("steps.yaml");
    std::fs::write(&config, STEPS).unwrap();
    let cfg = config.display().to_string();
    let args = [
        "run",
        &cfg,
        "--db",
        &dbs,
        "--persist",
        "--instance-id",
        "same",
    ];

    let mut first = Proc::start(&args);
    // The sidecar binds before the store opens; the instance registers right after.
    let addr = first.sidecar_addr(LIMIT);
    registered(&mut first);
    let (second, st) = kit::run_to_end(&args);
    assert_eq!(st.code(), Some(2), "{}", second.log());
    let pid = first.pid();
    let log = second.log();
    assert!(
        log.contains(&format!(
            "instance id `same` is in use by a live process (pid {pid} on host "
        )) && log.contains("s ago): give this process another --instance-id, or stop that one"),
        "{log}"
    );
    // The first goes on untouched, and the saved state names its instance.
    let (status, body) = http(addr, "POST", "/machines/steps/events", r#"{"type": "go"}"#);
    assert_eq!(status, 202, "{body}");
    first.wait_for("one -> two", LIMIT, |j| {
        kit::is_transition(j, "steps") && field(j, "to") == "two"
    });
    // Processes without --instance-id share the host name and are not refused.
    let mut plain = Proc::start(&["run", &cfg, "--db", &dbs]);
    plain.sidecar_addr(LIMIT);
    first.signal("TERM");
    let (st, _) = first.finish(LIMIT);
    assert!(st.success(), "{}", first.log());
    let states = cli_json(&["machine-state", "--db", &dbs, "--format", "json"]);
    assert_eq!(states[0]["instance_id"], "same", "{states:#}");

    // Stopped cleanly, it freed the id: a new process takes it at once.
    let mut third = Proc::start(&args);
    let addr = third.sidecar_addr(LIMIT);
    registered(&mut third);
    let (status, body) = http(addr, "POST", "/machines/steps/events", r#"{"type": "go"}"#);
    assert_eq!(status, 202, "{body}");
    third.wait_for("two -> three", LIMIT, |j| {
        kit::is_transition(j, "steps") && field(j, "to") == "three"
    });
    third.signal("TERM");
    let (st, _) = third.finish(LIMIT);
    assert!(st.success(), "{}", third.log());
    plain.signal("TERM");
    let (st, _) = plain.finish(LIMIT);
    assert!(st.success(), "{}", plain.log());
}

#[test]
fn machines_take_events_from_their_unix_sockets() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let socks = dir.path().join("socks");
    let s = socks.display().to_string();
    let config = dir.path().join("steps.yaml");
    std::fs::write(&config, STEPS).unwrap();
    let cfg = config.display().to_string();
    let mut p = Proc::start(&["run", &cfg, "--socket-dir", &s]);
    p.wait_for("the socket", LIMIT, |j| {
        field(j, "target") == "turnstile::socket" && field(j, "message") == "listening for events"
    });
    let sock = socks.join("steps.sock");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&socks), 0o700);
    assert_eq!(mode(&sock), 0o600);

    // Malformed and oversized datagrams are rejected and reported.
    let raw = std::os::unix::net::UnixDatagram::unbound().unwrap();
    raw.send_to(b"{not json", &sock).unwrap();
    p.wait_for("a malformed message reported", LIMIT, |j| {
        field(j, "target") == "turnstile::socket" && field(j, "message").contains("invalid JSON")
    });
    let big = format!(
        r#"{{"type": "go", "payload": "{}"}}"#,
        "x".repeat(70 * 1024)
    );
    raw.send_to(big.as_bytes(), &sock).unwrap();
    p.wait_for("an oversized message reported", LIMIT, |j| {
        field(j, "target") == "turnstile::socket" && field(j, "message").contains("bytes dropped")
    });

    // statemachine-engine's message format, sent the way its tools send it (Python).
    let py = format!(
        "import socket, json\ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         s.sendto(json.dumps({{'type': 'go', 'payload': {{'n': 1}}, 'job_id': 'j-9'}}).encode(), {:?})\n",
        sock.display().to_string()
    );
    match Command::new("python3").args(["-c", &py]).status() {
        Ok(st) => assert!(st.success()),
        // No Python here: the same datagram from Rust.
        Err(_) => {
            let m = json!({"type": "go", "payload": {"n": 1}, "job_id": "j-9"}).to_string();
            raw.send_to(m.as_bytes(), &sock).unwrap();
        }
    }
    p.wait_for("one -> two", LIMIT, |j| {
        kit::is_transition(j, "steps") && field(j, "to") == "two"
    });
    // And with turnstile send-event.
    kit::run_ok(
        "turnstile send-event",
        &mut turnstile(&[
            "send-event",
            "--target",
            "steps",
            "--type",
            "go",
            "--socket-dir",
            &s,
        ]),
    );
    p.wait_for("two -> three", LIMIT, |j| {
        kit::is_transition(j, "steps") && field(j, "to") == "three"
    });
    p.signal("TERM");
    let (st, _) = p.finish(LIMIT);
    assert!(st.success(), "{}", p.log());
    assert!(!sock.exists(), "the socket file is removed on exit");
}

#[test]
fn socket_files_stay_inside_the_socket_dir_and_only_sockets_are_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socks = dir.path().join("socks");
    std::fs::create_dir(&socks).unwrap();
    // A file outside the socket directory that `../victim` would name.
    let victim = dir.path().join("victim.sock");
    std::fs::write(&victim, "precious").unwrap();
    // A regular file where a machine's socket would go.
    let blocked = socks.join("blocked.sock");
    std::fs::write(&blocked, "not a socket").unwrap();
    let idle = "initial_state: idle\ntransitions:\n  - {from: idle, to: done, event: go}\n";
    let mut args = vec!["run".to_owned()];
    for (file, name) in [
        ("a.yaml", "../victim"),
        ("b.yaml", "blocked"),
        ("c.yaml", "fine"),
    ] {
        let p = dir.path().join(file);
        std::fs::write(&p, format!("metadata: {{machine_name: {name:?}}}\n{idle}")).unwrap();
        args.push(p.display().to_string());
    }
    args.extend(["--socket-dir".to_owned(), socks.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = Proc::start(&args);
    let refused = p.wait_for("the unsafe name refused", LIMIT, |j| {
        field(j, "target") == "turnstile::socket"
            && field(j, "message").contains("not a safe socket file name")
    });
    assert!(
        field(&refused, "message").contains("\"../victim\""),
        "{refused}"
    );
    p.wait_for("the regular file left alone", LIMIT, |j| {
        field(j, "target") == "turnstile::socket"
            && field(j, "message").contains("not a socket is in the way")
    });
    p.wait_for("the good machine's socket", LIMIT, |j| {
        field(j, "target") == "turnstile::socket"
            && field(j, "message") == "listening for events"
            && field(j, "machine") == "fine"
    });
    p.signal("TERM");
    let (st, _) = p.finish(LIMIT);
    assert!(st.success(), "{}", p.log());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert_eq!(std::fs::read_to_string(&blocked).unwrap(), "not a socket");
    assert!(!socks.join("fine.sock").exists());

    // send-event refuses the name too, instead of sending outside the directory.
    let out = turnstile(&[
        "send-event",
        "--target",
        "../victim",
        "--type",
        "go",
        "--socket-dir",
        &socks.display().to_string(),
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a safe socket file name"), "{stderr}");
}

#[test]
fn bad_socket_messages_are_refused_like_http_and_name_the_machine() {
    let dir = tempfile::tempdir().unwrap();
    let socks = dir.path().join("socks");
    let s = socks.display().to_string();
    let config = dir.path().join("steps.yaml");
    std::fs::write(&config, STEPS).unwrap();
    let cfg = config.display().to_string();
    let mut p = Proc::start(&["run", &cfg, "--socket-dir", &s]);
    let addr = p.sidecar_addr(LIMIT);
    p.wait_for("the socket", LIMIT, |j| {
        field(j, "target") == "turnstile::socket" && field(j, "message") == "listening for events"
    });
    // Started, so its metrics exist to count the errors in.
    p.wait_started(1, LIMIT);
    let sock = socks.join("steps.sock");
    let raw = std::os::unix::net::UnixDatagram::unbound().unwrap();
    let long = format!(r#"{{"type": "{}"}}"#, "x".repeat(65 * 1000));
    let bad: [&[u8]; 5] = [
        br#"{"type": "go\u0000"}"#,
        br#"{"type": "go\nINFO forged log line"}"#,
        br#"{"type": "\u001b[2Jgo"}"#,
        long.as_bytes(),
        br#"{"type": "go", "job_id": {"no": 1}}"#,
    ];
    for b in bad {
        raw.send_to(b, &sock).unwrap();
    }
    raw.send_to(br#"{"type": "go"}"#, &sock).unwrap();
    p.wait_for("one -> two", LIMIT, |j| {
        kit::is_transition(j, "steps") && field(j, "to") == "two"
    });

    // Every bad datagram is in /errors, named after the socket's machine ...
    let (status, body) = http(addr, "GET", "/errors?kind=bad_message", "");
    assert_eq!(status, 200, "{body}");
    let errors: Vec<Json> = serde_json::from_str(&body).unwrap();
    assert_eq!(errors.len(), bad.len(), "{errors:#?}");
    for e in &errors {
        assert_eq!(e["machine"], "steps", "{e}");
        let m = e["message"].as_str().unwrap();
        assert!(m.starts_with("socket message for `steps` rejected"), "{m}");
        assert!(m.len() < 300, "the refused type is not echoed: {m}");
    }
    let messages: Vec<&str> = errors
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert_eq!(
        messages
            .iter()
            .filter(|m| m.contains("control characters"))
            .count(),
        3,
        "{messages:#?}"
    );
    assert!(messages.iter().any(|m| m.contains("longer than 256 bytes")));
    assert!(messages.iter().any(|m| m.contains("`job_id` must be")));
    // ... counted for it ...
    let (_, metrics) = http(addr, "GET", "/metrics", "");
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("turnstile_errors_total{")
                && l.contains(r#"machine="steps""#)
                && l.contains(r#"kind="bad_message""#)
        })
        .unwrap_or_else(|| panic!("no bad_message count for steps:\n{metrics}"));
    assert!(line.ends_with(&format!(" {}", bad.len())), "{line}");
    // ... and only the good message reached the machine.
    // (The event's record is written when it has finished, just after the log line.)
    let deadline = Instant::now() + LIMIT;
    let trace = loop {
        let (_, trace) = http(addr, "GET", "/trace?limit=1000", "");
        let trace: Vec<Json> = serde_json::from_str(&trace).unwrap();
        if trace.iter().any(|t| t["event"] == "go") || Instant::now() > deadline {
            break trace;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let events: Vec<&str> = trace.iter().filter_map(|t| t["event"].as_str()).collect();
    assert_eq!(
        events.iter().filter(|e| e.starts_with("go")).count(),
        1,
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .all(|e| e.len() <= 256 && !e.contains(char::is_control)),
        "{events:?}"
    );

    // send-event makes the same checks before sending.
    let out = turnstile(&[
        "send-event",
        "--target",
        "steps",
        "--type",
        "go\u{1b}",
        "--socket-dir",
        &s,
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("control characters"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    p.signal("TERM");
    let (st, _) = p.finish(LIMIT);
    assert!(st.success(), "{}", p.log());
}

/// `--db` with a URL this build has no backend for (or a malformed or unusable PostgreSQL
/// one) exits 2 with a clear error, before anything runs, and never becomes a file path
/// (`postgres://...` used to create a directory `postgres:`).
#[test]
fn a_store_url_this_build_does_not_serve_is_refused_not_taken_for_a_path() {
    let dir = tempfile::tempdir().unwrap();
    let config = kit::path("examples/controller_worker/worker.yaml");
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "run",
                "--db",
                "mysql://turnstile:hunter2@db:3306/jobs",
                &config,
            ],
            "MySQL",
        ),
        (
            &[
                "jobs",
                "list",
                "--db",
                "postgresql://db/jobs?sslmode=require",
            ],
            "without TLS",
        ),
        (
            &["machine-state", "--db", "s3://bucket/x.db"],
            "unknown store scheme `s3:`",
        ),
        (
            &["events", "list", "--db", "redis://turnstile:hunter2@db/x"],
            "Redis",
        ),
    ];
    for (args, says) in cases {
        let out = Command::new(kit::bin())
            .current_dir(dir.path())
            .args(args)
            .env_remove("TURNSTILE_DB")
            .output()
            .unwrap();
        let err = kit::text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(
            !err.contains("hunter2"),
            "{args:?}: the password shows: {err}"
        );
    }
    // The same through the environment.
    let out = Command::new(kit::bin())
        .current_dir(dir.path())
        .args(["jobs", "list"])
        .env("TURNSTILE_DB", "mysql://db/jobs")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", kit::text(&out.stderr));
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "files were created: {left:?}");
    // A sqlite:// URL is a file.
    let out = Command::new(kit::bin())
        .current_dir(dir.path())
        .args(["jobs", "add", "--type", "task", "--db", "sqlite://q.db"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", kit::text(&out.stderr));
    assert!(dir.path().join("q.db").exists());
}

/// A worker that stops (SIGTERM) gives back the job it was still processing at once,
/// instead of leaving it leased until the lease expires; its leases name its instance
/// id (`--instance-id`) and this start of the process.
#[test]
fn a_stopping_worker_gives_its_unfinished_job_back_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("drain.db");
    let config = dir.path().join("slow.yaml");
    std::fs::write(
        &config,
        kit::config::JOB_WORKER.replace(
            "    - type: complete_job",
            "    - type: bash\n      command: sleep 60\n      success: job_completed\n    - type: complete_job",
        ),
    )
    .unwrap();
    seed(&db, 1, "slow-");
    let mut w = worker(
        &config,
        &db,
        &[
            "--instance-id",
            "pod-7",
            "--job-lease",
            "60",
            "--stop-timeout",
            "1",
        ],
    );
    let owner = kit::eventually("the job leased by pod-7", || {
        let j = open_store(&db).get_job("slow-0").unwrap()?;
        (j.status == "processing").then_some(j.lease_owner?)
    });
    assert!(owner.starts_with("pod-7/"), "{owner}");
    let t0 = Instant::now();
    w.signal("TERM");
    let (status, _) = w.finish(LIMIT);
    assert!(
        status.success() || status.code() == Some(130),
        "{status:?}: {}",
        w.log()
    );
    let j = open_store(&db).get_job("slow-0").unwrap().unwrap();
    assert_eq!(
        (j.status.as_str(), j.attempts, j.lease_owner.as_deref()),
        ("pending", 0, None),
        "given back in {:?}: {j:?}",
        t0.elapsed()
    );
    assert!(
        w.log().contains("unfinished jobs given back"),
        "{}",
        w.log()
    );
    // Every JSON log line names the instance.
    let records = w.records();
    assert!(!records.is_empty());
    for r in &records {
        assert_eq!(r["instance"], "pod-7", "{r}");
    }
}

/// `turnstile jobs add`: `--from-file` (a JSON array, JSON lines, stdin) adds all jobs or
/// none and prints each one's outcome; `--unique-key` prints the existing job;
/// `--delay` / `--run-after` delay the job.
#[test]
fn jobs_add_from_file_unique_keys_and_delays() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    let dbs = db.to_str().unwrap();
    let add = |args: &[&str], stdin: Option<&str>| {
        let mut a = vec!["jobs", "add", "--db", dbs];
        a.extend_from_slice(args);
        let mut cmd = turnstile(&a);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        {
            use std::io::Write as _;
            let mut input = child.stdin.take().unwrap();
            input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            kit::text(&out.stdout),
            kit::text(&out.stderr),
        )
    };
    let first = jobs_add(&db, &["--type", "t", "--unique-key", "k", "--job-id", "k1"]);
    assert_eq!(first, "k1");
    // The key is held: exit 0, the existing id on stdout, a note on stderr.
    let (code, out, err) = add(&["--type", "t", "--unique-key", "k"], None);
    assert_eq!((code, out.trim()), (Some(0), "k1"), "{err}");
    assert!(err.contains("already pending or processing"), "{err}");

    let array = dir.path().join("jobs.json");
    std::fs::write(
        &array,
        r#"[{"type": "t", "job_id": "a1"}, {"type": "t", "unique_key": "k"},
            {"type": "t", "job_id": "a3", "delay_seconds": 3600}]"#,
    )
    .unwrap();
    let (code, out, err) = add(&["--from-file", array.to_str().unwrap()], None);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "added a1\nexisting k1\nadded a3\n");
    // JSON lines on stdin.
    let lines = "{\"type\": \"t\", \"job_id\": \"l1\"}\n\n{\"type\": \"t\", \"job_id\": \"l2\"}\n";
    let (code, out, err) = add(&["--from-file", "-"], Some(lines));
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "added l1\nadded l2\n"),
        "{err}"
    );
    // A bad job: exit 2 naming it, nothing added.
    let bad = "{\"type\": \"t\", \"job_id\": \"x1\"}\n{\"job_id\": \"x2\"}\n";
    let (code, out, err) = add(&["--from-file", "-"], Some(bad));
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("line 2") && err.contains("job_type"), "{err}");
    // A duplicate id: an error, nothing added.
    let dup = "{\"type\": \"t\", \"job_id\": \"x1\"}\n{\"type\": \"t\", \"job_id\": \"a1\"}\n";
    let (code, _, err) = add(&["--from-file", "-"], Some(dup));
    assert_eq!(code, Some(1), "{err}");
    // Delays.
    jobs_add(&db, &["--type", "t", "--job-id", "d1", "--delay", "60"]);
    jobs_add(
        &db,
        &[
            "--type",
            "t",
            "--job-id",
            "d2",
            "--run-after",
            "2030-01-01T00:00:00Z",
        ],
    );
    let (code, _, err) = add(&["--type", "t", "--run-after", "tomorrow"], None);
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = add(
        &[
            "--type",
            "t",
            "--delay",
            "1",
            "--run-after",
            "2030-01-01T00:00:00Z",
        ],
        None,
    );
    assert_eq!(code, Some(2), "{err}");
    let s = open_store(&db);
    assert!(s.get_job("x1").unwrap().is_none());
    let d2 = s.get_job("d2").unwrap().unwrap();
    assert_eq!(
        d2.next_attempt_at.map(|t| t.to_string()).as_deref(),
        Some("2030-01-01T00:00:00.000Z")
    );
    assert!(s.get_job("d1").unwrap().unwrap().next_attempt_at.is_some());
    assert!(s.get_job("a3").unwrap().unwrap().next_attempt_at.is_some());
    let all = s
        .list_jobs(&ListJobs {
            limit: None,
            ..ListJobs::default()
        })
        .unwrap();
    assert_eq!(all.len(), 7, "{all:?}");
}

/// A machine that waits for ever (the sidecar of a process with a store and no job actions:
/// nothing claims the test's jobs).
const WAITER: &str = r#"
metadata: {machine_name: waiter}
initial_state: waiting
states: [waiting, done]
transitions:
  - {from: waiting, to: done, event: stop}
final_states: [done]
"#;

const OPS_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const OPS_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// A store with one job of each status an operator meets: `pending`, `claimed` (held by
/// another process, with a trace), `completed`, `cancelled`, `dead` (with its error).
fn seed_every_status(db: &Path) {
    let s = SqliteStore::open_with(
        db,
        StoreOptions {
            renew: false,
            lease: Duration::from_secs(600),
            max_attempts: 1,
            owner: Some("other-host:1".into()),
            ..StoreOptions::default()
        },
    )
    .unwrap();
    for id in ["pending", "claimed", "completed", "cancelled", "dead"] {
        s.add_job(NewJob {
            job_id: Some(id.into()),
            job_type: if id == "pending" { "other" } else { "task" }.into(),
            data: Some(json!({"password": "hunter2", "n": id})),
            traceparent: (id == "claimed").then(|| OPS_TRACEPARENT.into()),
            ..NewJob::default()
        })
        .unwrap();
    }
    for id in ["claimed", "completed", "dead"] {
        assert!(s.claim_job(id, "other-host:1").unwrap());
    }
    assert!(s.complete_job("completed", None).unwrap());
    s.fail_job("dead", "boom").unwrap();
    assert!(matches!(
        s.cancel_job("cancelled").unwrap(),
        turnstile_engine::store::JobChange::Changed(_)
    ));
}

fn status_in(db: &Path, id: &str) -> String {
    open_store(db).get_job(id).unwrap().unwrap().status
}

/// `turnstile jobs ARGS` with `env`; its exit code, stdout and stderr.
fn jobs_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut a = vec!["jobs"];
    a.extend_from_slice(args);
    let mut cmd = turnstile(&a);
    cmd.env_remove("TURNSTILE_TOKEN").env_remove("TURNSTILE_DB");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        kit::text(&out.stdout),
        kit::text(&out.stderr),
    )
}

#[test]
fn operators_list_show_retry_and_cancel_jobs_over_http_and_the_cli() {
    use kit::http::{get, get_json, request};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ops.db");
    let dbs = db.display().to_string();
    let config = dir.path().join("waiter.yaml");
    std::fs::write(&config, WAITER).unwrap();
    let cfg = config.display().to_string();
    seed_every_status(&db);
    let receiver = kit::otlp::Receiver::start();
    let endpoint = receiver.endpoint();
    let mut p = Proc::start(&[
        "run",
        &cfg,
        "--db",
        &dbs,
        "--token",
        "s3cret",
        "--otlp-endpoint",
        &endpoint,
    ]);
    let addr = p.sidecar_addr(LIMIT);
    let auth = [("Authorization", "Bearer s3cret")];

    // Listing: newest first, redacted, with trace ids; pages by `after`.
    let all = get_json(addr, "/jobs");
    let ids: Vec<&str> = all["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["dead", "cancelled", "completed", "claimed", "pending"]
    );
    assert_eq!(all["next"], Json::Null);
    for j in all["jobs"].as_array().unwrap() {
        assert_eq!(j["data"]["password"], "[redacted]", "{j}");
        assert_eq!(
            j["status"],
            j["job_id"]
                .as_str()
                .unwrap()
                .replace("claimed", "processing")
        );
    }
    let mut paged = Vec::new();
    let mut next = String::new();
    loop {
        let page = get_json(addr, &format!("/jobs?limit=2{next}"));
        paged.extend(
            page["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["job_id"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_i64() {
            Some(n) => next = format!("&after={n}"),
            None => break,
        }
    }
    assert_eq!(paged, ids);
    let dead = get_json(addr, "/jobs?status=dead&type=task");
    assert_eq!(dead["jobs"][0]["job_id"], "dead");
    assert_eq!(dead["jobs"].as_array().unwrap().len(), 1);
    let r = get(addr, "/jobs?status=nope");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("cancelled"));

    // One job: attempts, last error, lease holder, trace id.
    let claimed = get_json(addr, "/jobs/claimed");
    assert_eq!(claimed["attempts"], 1);
    assert_eq!(claimed["lease_owner"], "other-host:1");
    assert_eq!(claimed["trace_id"], OPS_TRACE_ID);
    assert_eq!(claimed["data"]["password"], "[redacted]");
    let d = get_json(addr, "/jobs/dead");
    assert_eq!(
        (d["status"].as_str(), d["error_message"].as_str()),
        (Some("dead"), Some("boom"))
    );
    assert_eq!(get(addr, "/jobs/nope").status, 404);

    // Cancel: the token first; a claimed job is refused and nothing changes.
    let r = request(addr, "DELETE", "/jobs/pending", &[], b"");
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(status_in(&db, "pending"), "pending");
    let r = request(addr, "DELETE", "/jobs/claimed", &auth, b"");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["error"]["status"], 409);
    assert_eq!(r.json()["error"]["job_status"], "processing");
    assert!(r.text().contains("claimed (processing)"), "{}", r.text());
    assert_eq!(status_in(&db, "claimed"), "processing");
    assert_eq!(
        request(addr, "DELETE", "/jobs/nope", &auth, b"").status,
        404
    );
    let r = request(addr, "DELETE", "/jobs/pending", &auth, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "cancelled");
    assert_eq!(status_in(&db, "pending"), "cancelled");

    // Retry: dead and cancelled jobs back to pending, with a trace; others refused.
    let mut h = auth.to_vec();
    h.push(("traceparent", OPS_TRACEPARENT));
    let r = request(addr, "POST", "/jobs/dead/retry", &h, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let retried = r.json();
    assert_eq!(
        (retried["status"].as_str(), retried["attempts"].as_i64()),
        (Some("pending"), Some(0))
    );
    assert_eq!(retried["error_message"], "boom", "the last error is kept");
    let r = request(addr, "POST", "/jobs/completed/retry", &auth, b"");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["error"]["status"], 409);
    assert_eq!(status_in(&db, "completed"), "completed");
    let r = request(
        addr,
        "POST",
        "/jobs/dead/retry",
        &[("traceparent", "junk")],
        b"",
    );
    assert_eq!(r.status, 401, "the token is checked first: {}", r.text());

    // Each write is logged and recorded as a span, a child of its traceparent.
    p.wait_for("the cancel logged", LIMIT, |j| {
        field(j, "target") == "turnstile::sidecar"
            && field(j, "message") == "job cancelled"
            && field(j, "job_id") == "pending"
    });
    let spans = receiver.wait_for(LIMIT, |s| {
        s.iter()
            .any(|s| s.name == "POST /jobs/{id}/retry" && s.trace_id == OPS_TRACE_ID)
            && s.iter()
                .any(|s| s.name == "DELETE /jobs/{id}" && s.status == "STATUS_CODE_ERROR")
    });
    let retry = spans
        .iter()
        .find(|s| s.name == "POST /jobs/{id}/retry" && s.trace_id == OPS_TRACE_ID)
        .unwrap();
    assert_eq!(retry.attr("turnstile.job.id"), Some("dead"));
    assert_eq!(retry.attr("http.response.status_code"), Some("200"));
    assert_eq!(retry.parent_span_id, "00f067aa0ba902b7");

    // The same through the CLI: through the sidecar ...
    let url = format!("http://{addr}");
    let (code, out, err) = jobs_cli(&["list", "--url", &url, "--format", "json"], &[]);
    assert_eq!(code, 0, "{err}");
    let listed: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 5);
    assert!(!out.contains("hunter2"), "{out}");
    let (code, out, err) = jobs_cli(&["list", "--url", &url, "--limit", "2"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("dead") && out.contains("cancelled") && !out.contains("claimed"),
        "{out}"
    );
    assert!(err.contains("--after "), "{err}");
    let (code, out, err) = jobs_cli(&["show", "claimed", "--url", &url], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("other-host:1") && out.contains(OPS_TRACE_ID),
        "{out}"
    );
    assert!(
        out.contains("[redacted]") && !out.contains("hunter2"),
        "{out}"
    );
    let (code, _, err) = jobs_cli(&["show", "nope", "--url", &url], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("no job with id `nope`"), "{err}");
    let (code, _, err) = jobs_cli(&["retry", "cancelled", "--url", &url], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("needs a token") && err.contains("TURNSTILE_TOKEN"),
        "{err}"
    );
    let (code, _, err) = jobs_cli(
        &["retry", "cancelled", "--url", &url],
        &[("TURNSTILE_TOKEN", "wrong")],
    );
    assert_eq!(code, 1);
    assert!(err.contains("refused the token"), "{err}");
    assert_eq!(status_in(&db, "cancelled"), "cancelled");
    let (code, _, err) = jobs_cli(
        &["cancel", "claimed", "--url", &url],
        &[("TURNSTILE_TOKEN", "s3cret")],
    );
    assert_eq!(code, 1);
    assert!(err.contains("claimed (processing)"), "{err}");
    let (code, out, err) = jobs_cli(
        &["retry", "cancelled", "--url", &url, "--format", "json"],
        &[("TURNSTILE_TOKEN", "s3cret")],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Json>(&out).unwrap()["status"],
        "pending"
    );
    assert_eq!(status_in(&db, "cancelled"), "pending");

    // ... and on the store, with the same words.
    let (code, _, err) = jobs_cli(&["cancel", "claimed", "--db", &dbs], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("claimed (processing)"), "{err}");
    let (code, _, err) = jobs_cli(&["retry", "nope", "--db", &dbs], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("no job with id `nope`"), "{err}");
    let (code, out, err) = jobs_cli(&["cancel", "cancelled", "--db", &dbs], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cancelled"), "{out}");
    let (code, out, err) = jobs_cli(&["show", "dead", "--db", &dbs, "--format", "json"], &[]);
    assert_eq!(code, 0, "{err}");
    let shown: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["data"]["password"], "[redacted]");
    assert_eq!(shown["status"], "pending");
    let (code, _, err) = jobs_cli(&["list", "--db", &dbs, "--status", "nope"], &[]);
    assert_eq!(code, 2, "{err}");

    // A read-only sidecar refuses every change, and the CLI says so.
    let mut ro = Proc::start(&["run", &cfg, "--db", &dbs, "--read-only"]);
    let ro_addr = ro.sidecar_addr(LIMIT);
    assert_eq!(get(ro_addr, "/jobs/claimed").status, 200);
    let r = request(ro_addr, "DELETE", "/jobs/cancelled", &[], b"");
    assert_eq!(r.status, 403, "{}", r.text());
    let (code, _, err) = jobs_cli(
        &["cancel", "cancelled", "--url", &format!("http://{ro_addr}")],
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.contains("read-only"), "{err}");
    assert_eq!(status_in(&db, "cancelled"), "cancelled");
}

#[test]
fn job_retention_purges_finished_jobs_and_keeps_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    let dbs = db.display().to_string();
    let config = dir.path().join("waiter.yaml");
    std::fs::write(&config, WAITER).unwrap();
    let cfg = config.display().to_string();
    seed_every_status(&db);
    for bad in ["0s", "soon"] {
        let out = turnstile(&["run", &cfg, "--db", &dbs, "--job-retention", bad])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{bad}: {}",
            kit::text(&out.stderr)
        );
        assert!(kit::text(&out.stderr).contains("--job-retention"));
    }
    // Finished jobs are at most a second old: a retention of an hour keeps them.
    let mut keep = Proc::start(&["run", &cfg, "--db", &dbs, "--job-retention", "1h"]);
    keep.wait_started(1, LIMIT);
    keep.signal("TERM");
    assert!(keep.finish(LIMIT).0.success(), "{}", keep.log());
    assert_eq!(
        open_store(&db)
            .list_jobs(&ListJobs::default())
            .unwrap()
            .len(),
        5
    );
    // SQLite's completion times have whole seconds.
    std::thread::sleep(Duration::from_millis(1100));
    let mut p = Proc::start(&["run", &cfg, "--db", &dbs, "--job-retention", "1s"]);
    let rec = p.wait_for("the purge", LIMIT, |j| {
        field(j, "target") == "turnstile::jobs" && j.get("purged").is_some()
    });
    assert_eq!(rec["purged"], 3, "{rec}");
    let mut left: Vec<(String, String)> = open_store(&db)
        .list_jobs(&ListJobs::default())
        .unwrap()
        .into_iter()
        .map(|j| (j.job_id, j.status))
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            ("claimed".to_owned(), "processing".to_owned()),
            ("pending".to_owned(), "pending".to_owned())
        ]
    );
    p.signal("TERM");
    assert!(p.finish(LIMIT).0.success(), "{}", p.log());
}

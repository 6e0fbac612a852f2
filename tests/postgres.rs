#![allow(clippy::unwrap_used)]
//! The job queue on PostgreSQL with the real binary and a real server
//! ([`kit::postgres`]): several worker processes complete each of 5,000 jobs exactly once;
//! workers killed with SIGKILL lose no job; a server restart loses no job, the workers
//! carry on by themselves and their `/readyz` says not ready while the server is down;
//! bad `--db` settings exit with clear errors (2 for what no retry mends, 1 after
//! `--db-wait` for a server that is not there), and a password is never printed; a second
//! live process with one `--instance-id` exits 2 and a clean exit frees the id; operators
//! list, retry and cancel jobs through the sidecar and with `jobs ... --db URL`.
//!
//! One server serves every test but the restart's, which has its own; each test has a
//! fresh database. The counts are read with SQL ([`kit::postgres::Server::psql`]).

mod kit;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kit::http::http;
use kit::postgres::Server;
use kit::{field, turnstile, Proc};
use serde_json::{json, Value as Json};
use turnstile_engine::store::{JobStore, NewJob, PgStore, StoreOptions};

/// Generous: the machine may share its two cores with builds and other tests.
const LIMIT: Duration = Duration::from_secs(120);

/// The server of every test but the restart's (stopped when the test process ends).
fn shared() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(Server::start)
}

/// The database name of a URL from [`Server::database`].
fn db_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

/// One number from SQL.
fn num(server: &Server, url: &str, sql: &str) -> i64 {
    let out = server
        .psql(db_name(url), sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    out.parse()
        .unwrap_or_else(|e| panic!("{sql}: not a number ({e}): {out}"))
}

/// `turnstile run CONFIG --db URL EXTRA` with its sidecar on a free port; job records at
/// info, the rest at warn.
fn worker(config: &Path, url: &str, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(kit::bin());
    cmd.current_dir(kit::root())
        .args([
            "--log-format",
            "json",
            "--log-level",
            "warn,turnstile::jobs=info,turnstile::sidecar=info",
            "run",
        ])
        .arg(config)
        .args(["--db", url])
        .args(extra)
        .env_remove("RUST_LOG")
        .env_remove("TURNSTILE_DB")
        .env("TURNSTILE_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null());
    Proc::spawn(cmd)
}

/// `job claimed` / `job completed` records of one finished process.
fn job_records(p: &Proc, message: &str) -> Vec<String> {
    p.records()
        .iter()
        .filter(|j| field(j, "target") == "turnstile::jobs" && field(j, "message") == message)
        .map(|j| field(j, "job").to_owned())
        .collect()
}

/// The test's own store on `url`: it migrates the schema and adds jobs, claims nothing.
fn open_store(url: &str) -> PgStore {
    PgStore::open(
        url,
        StoreOptions {
            renew: false,
            ..StoreOptions::default()
        },
    )
    .unwrap()
}

/// Adds `ids` from `threads` threads through the store API.
fn add_jobs(url: &str, ids: Vec<String>, threads: usize) {
    let store = open_store(url);
    let chunk = ids.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for part in ids.chunks(chunk) {
            let store = store.clone();
            s.spawn(move || {
                for id in part {
                    store
                        .add_job(NewJob {
                            job_id: Some(id.clone()),
                            job_type: "task".into(),
                            data: Some(json!({"id": id})),
                            ..NewJob::default()
                        })
                        .unwrap();
                }
            });
        }
    });
}

/// Waits until `n` jobs are completed; fails early with the log of a worker that exits.
fn wait_all_completed(server: &Server, url: &str, n: i64, workers: &mut [Proc]) -> Duration {
    let t0 = Instant::now();
    loop {
        let done = num(
            server,
            url,
            "SELECT count(*) FROM jobs WHERE status = 'completed'",
        );
        if done == n {
            return t0.elapsed();
        }
        if let Some(w) = workers.iter_mut().find(|w| kit::process_gone(w.pid())) {
            let _ = w.finish(LIMIT);
            panic!("a worker exited early:\n{}", w.log());
        }
        assert!(
            t0.elapsed() < LIMIT * 2,
            "{done} of {n} completed; statuses: {:?}",
            server.psql(db_name(url), "SELECT status, count(*) FROM jobs GROUP BY 1")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn stop_all(workers: &mut [Proc]) {
    for w in workers.iter() {
        w.signal("TERM");
    }
    for w in workers.iter_mut() {
        let (st, _) = w.finish(LIMIT);
        assert!(st.success(), "{}", w.log());
    }
}

#[test]
fn four_worker_processes_complete_each_of_5000_jobs_exactly_once() {
    let server = shared();
    let url = server.database();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("worker.yaml");
    std::fs::write(&config, kit::config::JOB_WORKER).unwrap();
    let mut workers: Vec<Proc> = (0..4).map(|_| worker(&config, &url, &[])).collect();
    let addrs: Vec<SocketAddr> = workers.iter_mut().map(|w| w.sidecar_addr(LIMIT)).collect();
    let t0 = Instant::now();
    // While they wait: 20 jobs over HTTP (to each sidecar in turn), 10 from the CLI, the
    // rest through the store API from four threads.
    for i in 0..20 {
        let (status, body) = http(
            addrs[i % addrs.len()],
            "POST",
            "/jobs",
            &json!({"job_type": "task", "job_id": format!("http-{i}")}).to_string(),
        );
        assert_eq!(status, 201, "{body}");
    }
    for i in 0..10 {
        let id = format!("cli-{i}");
        let out = kit::run_ok(
            "turnstile jobs add",
            &mut turnstile(&[
                "jobs", "add", "--type", "task", "--job-id", &id, "--db", &url,
            ]),
        );
        assert_eq!(kit::text(&out.stdout).trim(), id);
    }
    let n = 5000;
    add_jobs(&url, (0..n - 30).map(|i| format!("j{i}")).collect(), 4);
    let took = wait_all_completed(server, &url, n, &mut workers);
    let total_time = t0.elapsed();

    // In the database: each job once, completed after one attempt.
    assert_eq!(
        num(server, &url, "SELECT count(DISTINCT job_id) FROM jobs"),
        n
    );
    assert_eq!(
        num(
            server,
            &url,
            "SELECT count(*) FROM jobs WHERE attempts <> 1"
        ),
        0,
        "no worker died, so no job was claimed twice"
    );
    assert_eq!(
        num(
            server,
            &url,
            "SELECT count(*) FROM jobs WHERE lease_owner IS NOT NULL OR completed_at IS NULL"
        ),
        0
    );

    // In the workers' logs: each job claimed and completed by one worker, once.
    stop_all(&mut workers);
    let (mut claimed, mut completed, mut per_worker) = (Vec::new(), Vec::new(), Vec::new());
    for w in &workers {
        let c = job_records(w, "job completed");
        per_worker.push(c.len());
        completed.extend(c);
        claimed.extend(job_records(w, "job claimed"));
    }
    let unique: BTreeSet<&String> = completed.iter().collect();
    assert_eq!(completed.len(), n as usize, "completions: {per_worker:?}");
    assert_eq!(unique.len(), n as usize);
    assert_eq!(claimed.len(), n as usize, "no job was claimed twice");
    assert!(per_worker.iter().all(|&c| c > 0), "{per_worker:?}");
    eprintln!(
        "4 workers on PostgreSQL: {n} jobs in {total_time:?} ({took:?} after the last add), \
         per worker {per_worker:?}"
    );
}

/// The pids that hold a lease now (owners are `ID/PID-NONCE`).
fn leased_pids(server: &Server, url: &str) -> Vec<u32> {
    server
        .psql(
            db_name(url),
            "SELECT lease_owner FROM jobs WHERE status = 'processing'",
        )
        .unwrap()
        .lines()
        .filter_map(kit::lease_pid)
        .collect()
}

#[test]
fn workers_killed_mid_job_20_times_lose_no_job() {
    let server = shared();
    let url = server.database();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("slow.yaml");
    std::fs::write(&config, kit::config::slow_job_worker(0.1)).unwrap();
    let n = 400;
    add_jobs(&url, (0..n).map(|i| format!("c{i}")).collect(), 1);
    // Short enough to finish soon after the last kill, long enough (renewed every
    // third of it) that a live worker keeps its job on a busy machine.
    // Batches of 4: a killed worker held its machine's job and up to 3 prefetched ones.
    let batch = 4;
    let extra = [
        "--job-lease",
        "2",
        "--job-max-attempts",
        "100",
        "--claim-batch",
        "4",
    ];
    let mut workers: Vec<Proc> = (0..3).map(|_| worker(&config, &url, &extra)).collect();
    let mut kills = 0;
    let t0 = Instant::now();
    while kills < 20 {
        assert!(
            t0.elapsed() < LIMIT * 2,
            "only {kills} kills: the jobs ran out"
        );
        let busy = leased_pids(server, &url);
        let Some(i) = workers.iter().position(|w| busy.contains(&w.pid())) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let victim = workers.swap_remove(i);
        victim.signal("KILL");
        drop(victim);
        kills += 1;
        workers.push(worker(&config, &url, &extra));
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = wait_all_completed(server, &url, n, &mut workers);
    // A killed worker held `batch` jobs at most (its machine's and the prefetched ones):
    // each kill cost that many extra attempts at most, and the victims were chosen among
    // workers holding a lease.
    let extra_attempts = num(server, &url, "SELECT sum(attempts - 1) FROM jobs");
    let retried = num(server, &url, "SELECT count(*) FROM jobs WHERE attempts > 1");
    assert!(
        (1..=kills * batch).contains(&extra_attempts),
        "{extra_attempts} extra attempts after {kills} kills"
    );
    assert_eq!(num(server, &url, "SELECT count(*) FROM jobs"), n);
    eprintln!(
        "20 SIGKILLs: all {n} jobs completed, {retried} after a lost lease; {took:?} after the last kill"
    );
    stop_all(&mut workers);
}

/// `/readyz`'s status.
fn readyz(addr: SocketAddr) -> (u16, String) {
    http(addr, "GET", "/readyz", "")
}

#[test]
fn a_server_restart_loses_no_job_and_the_workers_carry_on_by_themselves() {
    let mut server = Server::start();
    let url = server.database();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("slow.yaml");
    std::fs::write(&config, kit::config::slow_job_worker(0.1)).unwrap();
    let n = 200;
    add_jobs(&url, (0..n).map(|i| format!("r{i}")).collect(), 1);
    let lease = 5;
    let extra = ["--job-lease", "5", "--job-max-attempts", "100"];
    let mut workers: Vec<Proc> = (0..2).map(|_| worker(&config, &url, &extra)).collect();
    let addrs: Vec<SocketAddr> = workers.iter_mut().map(|w| w.sidecar_addr(LIMIT)).collect();
    let pids: Vec<u32> = workers.iter().map(Proc::pid).collect();
    kit::eventually("20 jobs completed", || {
        (num(
            &server,
            &url,
            "SELECT count(*) FROM jobs WHERE status = 'completed'",
        ) >= 20)
            .then_some(())
    });
    for &addr in &addrs {
        let (status, body) = readyz(addr);
        assert_eq!(status, 200, "{body}");
    }

    server.stop();
    let down = Instant::now();
    // Each worker notices (its next probe fails) and keeps saying so while the server is
    // down: polled for a second.
    for &addr in &addrs {
        let (status, body) = kit::eventually("/readyz not ready while the server is down", || {
            let (s, b) = readyz(addr);
            (s != 200).then_some((s, b))
        });
        assert_eq!(status, 503, "{body}");
        let body: Json = serde_json::from_str(&body).unwrap();
        let why = body["job_store"].as_str().unwrap_or_default();
        assert!(
            why.contains("not usable") || why.contains("did not answer"),
            "{body:#}"
        );
    }
    while down.elapsed() < Duration::from_secs(1) {
        for &addr in &addrs {
            let (status, body) = readyz(addr);
            assert_ne!(status, 200, "ready while the server is down: {body}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    server.restart();
    let outage = down.elapsed();
    for &addr in &addrs {
        kit::eventually("/readyz ready again after the restart", || {
            (readyz(addr).0 == 200).then_some(())
        });
    }
    let took = wait_all_completed(&server, &url, n, &mut workers);
    assert_eq!(
        workers.iter().map(Proc::pid).collect::<Vec<_>>(),
        pids,
        "the same workers"
    );
    assert_eq!(num(&server, &url, "SELECT count(*) FROM jobs"), n);
    // A job whose completion (or claim) failed when the server went away is claimed again
    // once its lease expires; each worker held one job at most then. When the outage was
    // shorter than two thirds of a lease (renewals come every third), no live worker's
    // lease expired meanwhile, so that is all.
    let extra_attempts = num(&server, &url, "SELECT sum(attempts - 1) FROM jobs");
    if outage < Duration::from_secs(lease) * 2 / 3 {
        assert!(
            extra_attempts <= workers.len() as i64,
            "{extra_attempts} extra attempts: {:?}",
            server.psql(
                db_name(&url),
                "SELECT job_id, attempts, error_message FROM jobs WHERE attempts > 1"
            )
        );
    }
    stop_all(&mut workers);
    let warned = workers.iter().any(|w| {
        w.records().iter().any(|j| {
            field(j, "target") == "turnstile::store"
                && field(j, "message").starts_with("PostgreSQL answers again")
        })
    });
    assert!(warned, "the recovery is logged");
    eprintln!(
        "restart: server down for {outage:?}; all {n} jobs completed {took:?} after it was back, {extra_attempts} extra attempt(s)"
    );
}

/// `turnstile ARGS` to the end: exit code, stderr, time taken.
fn run(args: &[&str]) -> (Option<i32>, String, Duration) {
    let t0 = Instant::now();
    let out = Command::new(kit::bin())
        .current_dir(kit::root())
        .args(args)
        .env_remove("TURNSTILE_DB")
        .env_remove("RUST_LOG")
        .env("TURNSTILE_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out.status.code(), kit::text(&out.stderr), t0.elapsed())
}

#[test]
fn bad_settings_at_start_exit_with_clear_errors_and_no_password() {
    let server = shared();
    let url = server.database();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("worker.yaml");
    std::fs::write(&config, kit::config::JOB_WORKER).unwrap();
    let cfg = config.display().to_string();
    let port = server.port();
    let secret = "wrong-pw-7f3a9";
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    // What no retry mends exits 2 at once (a short --db-wait, so a misclassified error
    // fails quickly as exit 1 instead).
    let refused = [
        (
            format!("postgres://turnstile:{secret}@127.0.0.1:notaport/x"),
            "malformed PostgreSQL URL",
        ),
        (
            format!(
                "postgres://turnstile:{secret}@127.0.0.1:{port}/{}",
                db_name(&url)
            ),
            "password authentication failed",
        ),
        (server.url("no_such_db"), "does not exist"),
        (format!("{url}?sslmode=require"), "TLS"),
        (format!("postgres://turnstile:{secret}@/x"), "names no host"),
    ];
    for (db, says) in &refused {
        let (code, err, _) = run(&["run", &cfg, "--db", db, "--db-wait", "5"]);
        assert_eq!(code, Some(2), "{db}: {err}");
        assert!(err.contains(says), "{db}: {err}");
        assert!(
            err.contains("cannot open the job store") || err.contains("--db"),
            "{err}"
        );
        assert!(!err.contains(secret), "{db}: the password shows: {err}");
        assert!(
            !err.contains(kit::postgres::PASSWORD),
            "{db}: the password shows: {err}"
        );
    }

    // Nothing listens: tried for --db-wait, then exit 1.
    let nobody = format!("postgres://turnstile:{secret}@127.0.0.1:{free}/x");
    let (code, err, took) = run(&["run", &cfg, "--db", &nobody, "--db-wait", "1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(took >= Duration::from_secs(1), "gave up after {took:?}");
    assert!(took < Duration::from_secs(30), "gave up after {took:?}");
    assert!(err.contains("cannot be reached"), "{err}");
    assert!(err.contains("--db-wait"), "{err}");
    assert!(err.contains("Connection refused"), "{err}");
    assert!(!err.contains(secret), "the password shows: {err}");

    // `jobs add` and `jobs list` on the server.
    for id in ["cli-a", "cli-b"] {
        let out = kit::run_ok(
            "turnstile jobs add",
            &mut turnstile(&[
                "jobs", "add", "--type", "task", "--job-id", id, "--db", &url,
            ]),
        );
        assert_eq!(kit::text(&out.stdout).trim(), id);
    }
    let out = kit::run_ok(
        "turnstile jobs list",
        &mut turnstile(&["jobs", "list", "--db", &url, "--format", "json"]),
    );
    let list: Json = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["cli-b", "cli-a"], "{list:#}");
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .all(|j| j["status"] == "pending"));
    // The same job id again is refused.
    let (code, err, _) = run(&[
        "jobs", "add", "--type", "task", "--job-id", "cli-a", "--db", &url,
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("already exists"), "{err}");
    // And a server that is not there fails at once (no --db-wait for these commands).
    let (code, err, took) = run(&["jobs", "list", "--db", &nobody]);
    assert_eq!(code, Some(1), "{err}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert!(err.contains("Connection refused"), "{err}");
    assert!(!err.contains(secret), "the password shows: {err}");
}

#[test]
fn a_second_live_process_with_the_same_instance_id_is_refused() {
    let server = shared();
    let url = server.database();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("worker.yaml");
    std::fs::write(&config, kit::config::JOB_WORKER).unwrap();
    let cfg = config.display().to_string();

    let mut first = worker(&config, &url, &["--instance-id", "pg-same"]);
    let addr = first.sidecar_addr(LIMIT);
    first.wait_for("instance registered", LIMIT, |j| {
        field(j, "target") == "turnstile::jobs" && field(j, "message") == "instance registered"
    });
    kit::wait_until("ready", LIMIT, || readyz(addr).0 == 200);
    let (code, err, _) = run(&["run", &cfg, "--db", &url, "--instance-id", "pg-same"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "instance id `pg-same` is in use by a live process (pid {} on host ",
            first.pid()
        )),
        "{err}"
    );
    let rows = "SELECT count(*) FROM turnstile_instances WHERE instance_id = 'pg-same'";
    assert_eq!(num(server, &url, rows), 1);
    // A clean exit frees the id.
    first.signal("TERM");
    let (st, _) = first.finish(LIMIT);
    assert!(st.success(), "{}", first.log());
    assert_eq!(num(server, &url, rows), 0);
}

/// The most connections named `app` that the server holds while `busy` runs (sampled
/// every 10 ms).
fn most_connections(server: &Server, url: &str, app: &str, busy: impl FnOnce()) -> i64 {
    let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}'");
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let counter = s.spawn(|| {
            let mut most = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(num(server, url, &sql));
                std::thread::sleep(Duration::from_millis(10));
            }
            most.max(num(server, url, &sql))
        });
        busy();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        counter.join().unwrap()
    })
}

#[test]
fn db_pool_bounds_the_connections_of_a_process() {
    let server = shared();
    let url = server.database();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("worker.yaml");
    std::fs::write(&config, kit::config::JOB_WORKER).unwrap();
    // The process names its connections, so that they can be counted.
    let named = |app: &str| format!("{url}?application_name={app}");
    // 16 clients adding jobs over HTTP at once, 25 each.
    let load = |addr: SocketAddr, tag: &str| {
        std::thread::scope(|s| {
            for c in 0..16 {
                s.spawn(move || {
                    for i in 0..25 {
                        let body = json!({"job_type": "task", "job_id": format!("{tag}-{c}-{i}")});
                        let (status, answer) = http(addr, "POST", "/jobs", &body.to_string());
                        assert_eq!(status, 201, "{answer}");
                    }
                });
            }
        });
    };
    let mut seen = Vec::new();
    for (app, pool) in [("pool-two", Some("2")), ("pool-default", None)] {
        let extra: Vec<&str> = pool.map(|n| vec!["--db-pool", n]).unwrap_or_default();
        let mut w = worker(&config, &named(app), &extra);
        let addr = w.sidecar_addr(LIMIT);
        kit::wait_until("ready", LIMIT, || readyz(addr).0 == 200);
        seen.push(most_connections(server, &url, app, || load(addr, app)));
        w.signal("TERM");
        let (st, _) = w.finish(LIMIT);
        assert!(st.success(), "{}", w.log());
    }
    // Two per pool and the listener; without the flag the adds open more than that.
    eprintln!("connections at most, --db-pool 2 and the default: {seen:?}");
    assert!((1..=5).contains(&seen[0]), "--db-pool 2: {seen:?}");
    assert!(
        seen[1] > 5,
        "the default pool ({seen:?}) should have opened more"
    );
    assert_eq!(num(server, &url, "SELECT count(*) FROM jobs"), 800);
}

/// A machine that only waits: its process serves the store's jobs and claims none.
const WAITER: &str = r#"
metadata: {machine_name: waiter}
initial_state: waiting
states: [waiting, done]
transitions:
  - {from: waiting, to: done, event: stop}
final_states: [done]
"#;

#[test]
fn operators_list_retry_and_cancel_jobs_on_postgresql_over_http_and_the_cli() {
    let server = shared();
    let url = server.database();
    let s = PgStore::open(
        &url,
        StoreOptions {
            renew: false,
            max_attempts: 1,
            lease: Duration::from_secs(600),
            ..StoreOptions::default()
        },
    )
    .unwrap();
    for id in ["pending", "claimed", "completed", "dead"] {
        s.add_job(NewJob {
            job_id: Some(id.into()),
            job_type: "task".into(),
            data: Some(json!({"api_key": "k-123"})),
            ..NewJob::default()
        })
        .unwrap();
    }
    for id in ["claimed", "completed", "dead"] {
        assert!(s.claim_job(id, "elsewhere:1").unwrap());
    }
    assert!(s.complete_job("completed", None).unwrap());
    s.fail_job("dead", "boom").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("waiter.yaml");
    std::fs::write(&config, WAITER).unwrap();
    let mut p = worker(&config, &url, &[]);
    let addr = p.sidecar_addr(LIMIT);

    let (status, body) = http(addr, "GET", "/jobs?limit=3", "");
    assert_eq!(status, 200, "{body}");
    let page: Json = serde_json::from_str(&body).unwrap();
    let ids: Vec<&str> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["dead", "completed", "claimed"]);
    assert!(!body.contains("k-123"), "{body}");
    let (status, body) = http(
        addr,
        "GET",
        &format!("/jobs?limit=3&after={}", page["next"]),
        "",
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"pending\"") && body.contains("\"next\":null"),
        "{body}"
    );
    let (status, body) = http(addr, "GET", "/jobs/claimed", "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"lease_owner\":\"elsewhere:1\""), "{body}");

    let (status, body) = http(addr, "DELETE", "/jobs/claimed", "");
    assert_eq!(status, 409, "{body}");
    let (status, body) = http(addr, "DELETE", "/jobs/pending", "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"status\":\"cancelled\""), "{body}");
    let (status, body) = http(addr, "POST", "/jobs/dead/retry", "");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"status\":\"pending\"") && body.contains("\"attempts\":0"),
        "{body}"
    );
    let statuses = "SELECT string_agg(job_id || '=' || status, ',' ORDER BY job_id) FROM jobs";
    let out = server.psql(db_name(&url), statuses).unwrap();
    assert_eq!(
        out,
        "claimed=processing,completed=completed,dead=pending,pending=cancelled"
    );

    // The CLI on the database, with the sidecar's words.
    let cli = |args: &[&str]| {
        let mut a = vec!["jobs"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--db", &url]);
        let out = turnstile(&a).env_remove("TURNSTILE_DB").output().unwrap();
        (
            out.status.code(),
            kit::text(&out.stdout),
            kit::text(&out.stderr),
        )
    };
    let (code, _, err) = cli(&["cancel", "claimed"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("claimed (processing)"), "{err}");
    let (code, out, err) = cli(&["retry", "pending", "--format", "json"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"status\": \"pending\""), "{out}");
    let (code, out, err) = cli(&["show", "dead"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("boom") && out.contains("[redacted]"), "{out}");
    p.signal("TERM");
    assert!(p.finish(LIMIT).0.success(), "{}", p.log());
}

/// A definition whose instances go through four states on events `a`, `b`, `c`, in that
/// order only (an event out of order is refused by the state, so the end state says the
/// order was kept).
const STEPS: &str = r#"
metadata: {machine_name: steps}
initial_state: s0
context: {n: 0}
states: [s0, s1, s2, s3, done]
events: [a, b, c, finish]
transitions:
  - {from: s0, to: s1, event: a}
  - {from: s1, to: s2, event: b}
  - {from: s2, to: s3, event: c}
  - {from: s3, to: done, event: finish}
actions:
  s1:
    - type: set_context
      key: visited_s1
      value: true
"#;

/// `machine`'s three events (`s0` → `s1` → `s2` → `s3`) were each handled once, in order:
/// one audit row per transition once `s3` is saved, none pending in the event table.
fn handled_once_in_order(server: &Server, url: &str, machine: &str) {
    let audit = |from: &str, to: &str| {
        num(
            server,
            url,
            &format!(
                "SELECT count(*) FROM transitions WHERE machine_name = '{machine}'
                    AND from_state = '{from}' AND to_state = '{to}'"
            ),
        )
    };
    kit::wait_until("s3 saved", LIMIT, || audit("s2", "s3") == 1);
    assert_eq!(
        (audit("s0", "s1"), audit("s1", "s2"), audit("s2", "s3")),
        (1, 1, 1),
        "{machine}"
    );
    let pending = format!(
        "SELECT count(*) FROM machine_events WHERE target_machine = '{machine}'
            AND status = 'pending'"
    );
    assert_eq!(num(server, url, &pending), 0, "{machine}");
}

/// `GET /machines/NAME`: (status, body).
fn machine_at(addr: SocketAddr, name: &str) -> (u16, Json) {
    let r = kit::http::get(addr, &format!("/machines/{name}"));
    (
        r.status,
        serde_json::from_str(&r.text()).unwrap_or(Json::Null),
    )
}

fn post_at(addr: SocketAddr, path: &str, body: &Json) -> (u16, Json) {
    let r = kit::http::post_json(addr, path, &[], body);
    (
        r.status,
        serde_json::from_str(&r.text()).unwrap_or(Json::Null),
    )
}

/// An instance started in A with `POST /machines` is registered in the store: B's
/// `POST /machines/{name}/events` reaches it in A. Killed with SIGKILL, A's instance is
/// taken over by B within the lease plus 1 s, in its saved state with its context, and the
/// events sent while A was dead are processed there once each, in order. A restarted does
/// not start B's instances again. An event to an instance no process has is a 404.
#[test]
fn instances_are_reached_from_any_process_and_taken_over_after_sigkill() {
    const LEASE: f64 = 2.0;
    let server = shared();
    let url = server.database();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("steps.yaml");
    std::fs::write(&config, STEPS).unwrap();
    let lease = LEASE.to_string();
    let opts = |id: &'static str| -> Vec<String> {
        ["--persist", "--instance-id", id, "--job-lease", &lease]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let start = |id: &'static str| {
        let o = opts(id);
        let o: Vec<&str> = o.iter().map(String::as_str).collect();
        let mut p = worker(&config, &url, &o);
        let addr = p.sidecar_addr(LIMIT);
        kit::wait_until("ready", LIMIT, || readyz(addr).0 == 200);
        (p, addr)
    };
    let (mut a, a_addr) = start("pg-a");
    let (b, b_addr) = start("pg-b");

    let (st, body) = post_at(
        a_addr,
        "/machines",
        &json!({"definition": "steps", "name": "order-1", "context": {"n": 7}}),
    );
    assert_eq!(st, 201, "{body}");
    let owned = "SELECT count(*) FROM machine_state WHERE machine_name = 'order-1'
        AND instance_id = 'pg-a' AND current_state = 's0' AND NOT retired";
    kit::wait_until("order-1 registered as pg-a's", LIMIT, || {
        num(server, &url, owned) == 1
    });
    // Through B, to A.
    let (st, body) = post_at(b_addr, "/machines/order-1/events", &json!({"type": "a"}));
    assert_eq!(st, 202, "{body}");
    kit::wait_until("order-1 in s1 in A", LIMIT, || {
        machine_at(a_addr, "order-1").1["state"] == "s1"
    });
    assert_eq!(machine_at(b_addr, "order-1").0, 404, "B does not run it");
    let saved = "SELECT count(*) FROM machine_state WHERE machine_name = 'order-1'
        AND current_state = 's1'";
    kit::wait_until("s1 saved", LIMIT, || num(server, &url, saved) == 1);
    // An event to an instance no process has: the 404 JSON, as for any unknown machine.
    let (st, body) = post_at(b_addr, "/machines/nobody/events", &json!({"type": "a"}));
    assert_eq!(st, 404, "{body}");
    assert_eq!(
        body["error"]["message"], "no machine named `nobody`",
        "{body}"
    );

    a.signal("KILL");
    let killed = Instant::now();
    let _ = a.finish(LIMIT);
    // While A is dead: its instance still takes events (they wait in the store), through
    // B's sidecar and through `send-event --db`.
    let (st, body) = post_at(b_addr, "/machines/order-1/events", &json!({"type": "b"}));
    assert_eq!(st, 202, "{body}");
    let out = kit::run_ok(
        "send-event --db",
        &mut turnstile(&[
            "send-event",
            "--db",
            &url,
            "--target",
            "order-1",
            "--type",
            "c",
        ]),
    );
    let sent: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sent["instance_id"], "pg-a", "{sent}");
    kit::wait_until("B took order-1 over", LIMIT, || {
        machine_at(b_addr, "order-1").0 == 200
    });
    let took = killed.elapsed();
    eprintln!("instance taken over after SIGKILL: {took:?} (lease {LEASE} s)");
    assert!(
        took <= Duration::from_secs_f64(LEASE + 1.0),
        "taken over after {took:?}, more than the lease plus 1 s"
    );
    kit::wait_until("order-1 in s3 in B", LIMIT, || {
        machine_at(b_addr, "order-1").1["state"] == "s3"
    });
    let (_, m) = machine_at(b_addr, "order-1");
    assert_eq!(m["context"], json!({"n": 7, "visited_s1": true}), "{m:#}");
    // Each event once, in order: one transition each, nothing pending.
    handled_once_in_order(server, &url, "order-1");
    let owner = "SELECT count(*) FROM machine_state WHERE machine_name = 'order-1'
        AND instance_id = 'pg-b'";
    assert_eq!(num(server, &url, owner), 1);

    // A again: it does not start B's instance; an event through A reaches it in B.
    let (a, a_addr) = start("pg-a");
    assert_eq!(machine_at(a_addr, "order-1").0, 404);
    let (st, body) = post_at(
        a_addr,
        "/machines/order-1/events",
        &json!({"type": "finish"}),
    );
    assert_eq!(st, 202, "{body}");
    kit::wait_until("order-1 done in B", LIMIT, || {
        machine_at(b_addr, "order-1").1["state"] == "done"
    });
    let retired = "SELECT count(*) FROM machine_state WHERE machine_name = 'order-1'
        AND retired";
    kit::wait_until("order-1 retired in the store", LIMIT, || {
        num(server, &url, retired) == 1
    });
    assert_eq!(machine_at(a_addr, "order-1").0, 404);
    stop_all(&mut [a, b]);
}

/// Instance names are one store's, not one process's: a name another live process's
/// instance has is refused (409, as a local clash), generated names skip the names other
/// processes took. A clean exit (SIGTERM) releases the process's instances: the other
/// process takes them over within a lease, in their saved state, and the events sent
/// meanwhile are processed there once each, in order.
#[test]
fn instance_names_are_unique_across_processes_and_a_clean_exit_hands_instances_over() {
    const LEASE: f64 = 2.0;
    let server = shared();
    let url = server.database();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("steps.yaml");
    std::fs::write(&config, STEPS).unwrap();
    let lease = LEASE.to_string();
    let start = |id: &'static str| {
        let o = ["--persist", "--instance-id", id, "--job-lease", &lease];
        let mut p = worker(&config, &url, &o);
        let addr = p.sidecar_addr(LIMIT);
        kit::wait_until("ready", LIMIT, || readyz(addr).0 == 200);
        (p, addr)
    };
    let (mut a, a_addr) = start("pgn-a");
    let (b, b_addr) = start("pgn-b");

    let (st, body) = post_at(
        a_addr,
        "/machines",
        &json!({"definition": "steps", "name": "order-9", "context": {"n": 9}}),
    );
    assert_eq!(st, 201, "{body}");
    // The same name in B: refused as a local clash is, nothing started there.
    let (st, body) = post_at(
        b_addr,
        "/machines",
        &json!({"definition": "steps", "name": "order-9"}),
    );
    assert_eq!(st, 409, "{body}");
    assert_eq!(
        body["error"]["message"], "a machine named `order-9` is already running",
        "{body}"
    );
    assert_eq!(machine_at(b_addr, "order-9").0, 404);
    // Generated names: each process counts from 1, none is given twice.
    let mut names = BTreeSet::new();
    for addr in [a_addr, a_addr, b_addr, b_addr, a_addr] {
        let (st, body) = post_at(addr, "/machines", &json!({"definition": "steps"}));
        assert_eq!(st, 201, "{body}");
        let name = body["name"].as_str().unwrap().to_owned();
        assert!(names.insert(name.clone()), "{name} given twice: {names:?}");
    }
    let owners = "SELECT count(DISTINCT instance_id) FROM machine_state
        WHERE machine_name LIKE 'steps-%' AND NOT retired";
    kit::wait_until("generated instances owned by both", LIMIT, || {
        num(server, &url, owners) == 2
    });
    let a_generated: Vec<String> = names
        .iter()
        .filter(|n| machine_at(a_addr, n).0 == 200)
        .cloned()
        .collect();
    assert_eq!(a_generated.len(), 3, "{names:?}");
    // Through B, to A; saved.
    let (st, body) = post_at(b_addr, "/machines/order-9/events", &json!({"type": "a"}));
    assert_eq!(st, 202, "{body}");
    let saved = "SELECT count(*) FROM machine_state WHERE machine_name = 'order-9'
        AND current_state = 's1' AND instance_id = 'pgn-a'";
    kit::wait_until("s1 saved by A", LIMIT, || num(server, &url, saved) == 1);

    a.signal("TERM");
    let stopped = Instant::now();
    let (st, _) = a.finish(LIMIT);
    assert!(st.success(), "{}", a.log());
    // Meanwhile: events for it wait in the store.
    for ev in ["b", "c"] {
        let (st, body) = post_at(b_addr, "/machines/order-9/events", &json!({"type": ev}));
        assert_eq!(st, 202, "{ev}: {body}");
    }
    kit::wait_until("B took order-9 over", LIMIT, || {
        machine_at(b_addr, "order-9").0 == 200
    });
    let took = stopped.elapsed();
    eprintln!("instance taken over after a clean exit: {took:?} (lease {LEASE} s)");
    assert!(
        took <= Duration::from_secs_f64(LEASE),
        "taken over after {took:?}, more than a lease"
    );
    kit::wait_until("order-9 in s3 in B", LIMIT, || {
        machine_at(b_addr, "order-9").1["state"] == "s3"
    });
    let (_, m) = machine_at(b_addr, "order-9");
    assert_eq!(m["context"], json!({"n": 9, "visited_s1": true}), "{m:#}");
    for n in &a_generated {
        kit::wait_until("A's generated instances in B", LIMIT, || {
            machine_at(b_addr, n).0 == 200
        });
    }
    handled_once_in_order(server, &url, "order-9");
    let mine = "SELECT count(*) FROM machine_state WHERE definition = 'steps'
        AND NOT retired AND instance_id = 'pgn-b'";
    assert_eq!(num(server, &url, mine), 6);
    stop_all(&mut [b]);
}

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Singleton machines with the real binary: several `turnstile run` processes share one
//! store (PostgreSQL started by the test, or one SQLite file) and one config whose machine
//! is a singleton. Its bash action appends `start PID` / `end PID` lines to a file (PID:
//! the turnstile process that runs it, bash's `$PPID`), and it counts its cycles in its
//! context (`ticks`, a list that grows by one per cycle). The tests check that exactly one
//! process runs it, that runs never overlap (every `start` is followed by the `end` of
//! the same process before the next `start`), that a survivor takes over after SIGKILL
//! within the lease plus one second from the same context, that a holder frozen past its
//! lease (SIGSTOP) stops its copy when it resumes and its writes are refused, and that
//! SIGTERM hands over at once.

mod kit;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kit::postgres::Server;
use kit::{field, Proc};

/// The lease (`--job-lease`), seconds.
const LEASE: f64 = 2.0;

fn shared() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(Server::start)
}

fn config(dir: &Path, log: &Path) -> std::path::PathBuf {
    let path = dir.join("counter.yaml");
    std::fs::write(
        &path,
        format!(
            r#"metadata:
  machine_name: counter
  singleton: true
initial_state: work
context:
  ticks: []
transitions:
  - {{from: work, to: count, event: done}}
  - {{from: count, to: work, event: again}}
actions:
  work:
    - type: bash
      command: "echo start $PPID >> {log}; sleep 0.2; echo end $PPID >> {log}"
      success: done
  count:
    - type: add_to_list
      list_key: ticks
      value: x
      success: again
"#,
            log = log.display()
        ),
    )
    .unwrap();
    path
}

fn start(config: &Path, db: &str) -> Proc {
    let mut cmd = Command::new(kit::bin());
    cmd.current_dir(kit::root())
        .args([
            "--log-format",
            "json",
            "--log-level",
            "warn,turnstile::singleton=info",
            "run",
        ])
        .arg(config)
        .args(["--db", db, "--job-lease", &LEASE.to_string()])
        .env_remove("RUST_LOG")
        .env_remove("TURNSTILE_DB")
        .env("TURNSTILE_LISTEN", "127.0.0.1:0")
        .stdin(std::process::Stdio::null());
    Proc::spawn(cmd)
}

/// The `(start|end, pid)` lines so far.
fn runs(log: &Path) -> Vec<(String, u32)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, p) = l.split_once(' ')?;
            Some((k.to_owned(), p.trim().parse().ok()?))
        })
        .collect()
}

/// Every `start` is followed by the `end` of the same process before the next `start`,
/// except the run of `stopped`, a process stopped by SIGTERM: its command was killed (its
/// process group, before the lease was released), so it has no `end`.
fn assert_no_overlap(log: &Path, stopped: Option<u32>) {
    let lines = runs(log);
    let mut open: Option<u32> = None;
    for (i, (k, pid)) in lines.iter().enumerate() {
        match (k.as_str(), open) {
            ("start", None) => open = Some(*pid),
            ("start", Some(p)) if Some(p) == stopped && *pid != p => open = Some(*pid),
            ("end", Some(p)) if p == *pid => open = None,
            _ => panic!("line {i} `{k} {pid}` overlaps (running: {open:?}): {lines:?}"),
        }
    }
}

/// The process that started the last run.
fn runner(log: &Path) -> Option<u32> {
    runs(log)
        .iter()
        .rev()
        .find(|(k, _)| k == "start")
        .map(|(_, p)| *p)
}

/// Waits until a process other than `not` starts a run; returns it and the time taken.
fn wait_runner_other_than(log: &Path, not: Option<u32>, limit: Duration) -> (u32, Duration) {
    let t0 = Instant::now();
    loop {
        if let Some(p) = runner(log).filter(|p| Some(*p) != not) {
            return (p, t0.elapsed());
        }
        assert!(
            t0.elapsed() < limit,
            "no other runner within {limit:?}: {:?}",
            runs(log)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ticks_pg(server: &Server, url: &str) -> i64 {
    let db = url.rsplit('/').next().unwrap();
    server
        .psql(
            db,
            "SELECT COALESCE(jsonb_array_length(context->'ticks'), 0) FROM machine_state WHERE machine_name = 'counter'",
        )
        .unwrap()
        .trim()
        .parse()
        .unwrap_or(0)
}

fn sigkill_failover(db: &str, ticks: &dyn Fn() -> i64) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("runs.log");
    let cfg = config(dir.path(), &log);
    let mut procs: Vec<Proc> = (0..3).map(|_| start(&cfg, db)).collect();
    let (holder, _) = wait_runner_other_than(&log, None, Duration::from_secs(20));
    kit::wait::wait_until("a few cycles", Duration::from_secs(20), || ticks() >= 3);
    // Exactly one process ran it so far.
    let pids: std::collections::BTreeSet<u32> = runs(&log).iter().map(|(_, p)| *p).collect();
    assert_eq!(pids.len(), 1, "one runner: {:?}", runs(&log));
    let h = procs
        .iter()
        .position(|p| p.pid() == holder)
        .expect("the holder is ours");
    procs[h].signal("KILL");
    let killed = Instant::now();
    let before = ticks();
    let (survivor, _) = wait_runner_other_than(&log, Some(holder), Duration::from_secs(10));
    let took = killed.elapsed();
    eprintln!("failover after SIGKILL: {took:?} (lease {LEASE} s)");
    assert!(
        took <= Duration::from_secs_f64(LEASE + 1.0),
        "took over after {took:?}, more than the lease plus 1 s"
    );
    // The survivor continues from the same context: the count goes on from where it was.
    kit::wait::wait_until("the survivor counts on", Duration::from_secs(10), || {
        ticks() >= before + 2
    });
    assert_no_overlap(&log, None);
    // SIGTERM of the new holder hands over at once (the lease is released).
    let s = procs.iter().position(|p| p.pid() == survivor).unwrap();
    procs[s].signal("TERM");
    let termed = Instant::now();
    let (_, _) = wait_runner_other_than(&log, Some(survivor), Duration::from_secs(10));
    let handover = termed.elapsed();
    eprintln!("failover after SIGTERM: {handover:?}");
    assert!(
        handover < Duration::from_secs_f64(LEASE),
        "SIGTERM handed over after {handover:?}, not before the lease"
    );
    let (st, _) = procs[s].finish(Duration::from_secs(10));
    assert!(st.success(), "SIGTERM exits 0: {}", procs[s].log());
    assert_no_overlap(&log, Some(survivor));
    for (i, p) in procs.iter_mut().enumerate() {
        if i != h && i != s {
            p.signal("TERM");
            p.finish(Duration::from_secs(10));
        }
    }
}

#[test]
fn postgres_singleton_fails_over_after_sigkill_and_at_once_after_sigterm() {
    let server = shared();
    let url = server.database();
    sigkill_failover(&url, &|| ticks_pg(server, &url));
}

#[test]
fn sqlite_singleton_fails_over_after_sigkill_and_at_once_after_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let db_s = db.display().to_string();
    let ticks = || {
        let opts = turnstile_engine::store::StoreOptions {
            renew: false,
            ..Default::default()
        };
        let Ok(s) = turnstile_engine::store::SqliteStore::open_with(&db, opts) else {
            return 0;
        };
        use turnstile_engine::store::StateStore as _;
        s.load_state("counter")
            .ok()
            .flatten()
            .and_then(|r| r.context)
            .and_then(|c| {
                c.get("ticks")
                    .and_then(|t| t.as_array())
                    .map(|a| a.len() as i64)
            })
            .unwrap_or(0)
    };
    sigkill_failover(&db_s, &ticks);
}

#[test]
fn a_holder_frozen_past_its_lease_stops_its_copy_and_its_writes_are_refused() {
    let server = shared();
    let url = server.database();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("runs.log");
    let cfg = config(dir.path(), &log);
    let mut procs: Vec<Proc> = (0..2).map(|_| start(&cfg, &url)).collect();
    let (holder, _) = wait_runner_other_than(&log, None, Duration::from_secs(20));
    kit::wait::wait_until("a few cycles", Duration::from_secs(20), || {
        ticks_pg(server, &url) >= 2
    });
    let h = procs.iter().position(|p| p.pid() == holder).unwrap();
    procs[h].signal("STOP");
    let (survivor, _) = wait_runner_other_than(&log, Some(holder), Duration::from_secs(10));
    // Let the survivor run a while, then wake the stale holder up.
    std::thread::sleep(Duration::from_millis(800));
    procs[h].signal("CONT");
    procs[h].wait_for("the stale copy stops", Duration::from_secs(10), |j| {
        field(j, "message").starts_with("lease tenure ended")
            || field(j, "message").starts_with("lease lost")
    });
    procs[h].wait_for("its write refused", Duration::from_secs(10), |j| {
        field(j, "message").starts_with("the store refused this copy's write")
    });
    std::thread::sleep(Duration::from_millis(1000));
    assert_no_overlap(&log, None);
    // Only the survivor ran since it took over, and the saved state is its own.
    let lines = runs(&log);
    let from = lines
        .iter()
        .position(|(k, p)| k == "start" && *p == survivor)
        .unwrap();
    assert!(
        lines[from..].iter().all(|(_, p)| *p == survivor),
        "the stale holder ran again: {lines:?}"
    );
    let db = url.rsplit('/').next().unwrap();
    let pid = server
        .psql(
            db,
            "SELECT pid FROM machine_state WHERE machine_name = 'counter'",
        )
        .unwrap();
    assert_eq!(
        pid.trim(),
        survivor.to_string(),
        "the saved state is the survivor's"
    );
    for p in &mut procs {
        p.signal("TERM");
        p.finish(Duration::from_secs(10));
    }
}

#[test]
fn singleton_of_an_unknown_machine_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &dir.path().join("runs.log"));
    let db = dir.path().join("store.db");
    let out = kit::turnstile(&["run"])
        .arg(&cfg)
        .args(["--db", &db.display().to_string(), "--singleton", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = kit::text(&out.stderr);
    assert!(
        err.contains("--singleton nope: no machine of that name"),
        "{err}"
    );
}

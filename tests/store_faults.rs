#![allow(clippy::unwrap_used)]
//! The job store when the disk fills up, the database file is read-only, or it is deleted
//! while the worker runs: the real binary, in a private mount namespace (`unshare -m`,
//! which needs root) so that a small tmpfs or a read-only bind mount can be set up.
//!
//! The test process reaches the worker's files through `/proc/PID/root`.

mod kit;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kit::http::http;
use kit::{bin, field, jobs_add, wait_until, Proc};
use serde_json::Value as Json;

const LIMIT: Duration = Duration::from_secs(90);

/// True when this process may create mount namespaces (root); otherwise the test says why
/// it is skipped.
fn can_unshare(test: &str) -> bool {
    let ok = Command::new("unshare")
        .args(["-m", "true"])
        .status()
        .is_ok_and(|s| s.success());
    // CI runs as root with util-linux installed by .ci/install.sh: there a skip would hide
    // a missing install step, so it fails instead.
    assert!(
        ok || std::env::var_os("CI").is_none(),
        "{test}: `unshare -m` failed under CI (root and util-linux expected)"
    );
    if !ok {
        eprintln!("SKIPPED {test}: `unshare -m` is not permitted here (needs root or CAP_SYS_ADMIN); CI runs it as root");
    }
    ok
}

/// Starts `turnstile run CONFIG --db DB --claim-batch 1` after `setup` (shell commands)
/// in a new mount namespace; returns it and its sidecar's address. One job per claim: these
/// tests are about claims answered before their commit, which is how single claims are
/// answered (batched claims are answered after their commit, so none is ever lost).
fn start_in_namespace(setup: &str, config: &Path, db: &Path) -> (Proc, SocketAddr) {
    let script = format!(
        "set -e; {setup}; exec \"{bin}\" --log-format json --log-level info,turnstile::events=debug run \"{cfg}\" --db \"{db}\" --claim-batch 1",
        bin = bin(),
        cfg = config.display(),
        db = db.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "sh", "-c", &script])
        .env_remove("RUST_LOG")
        .env("TURNSTILE_LISTEN", "127.0.0.1:0")
        .stdin(std::process::Stdio::null());
    let mut p = Proc::spawn(cmd);
    let addr = p.sidecar_addr(LIMIT);
    (p, addr)
}

/// Waits until the worker consumes its store events: the start's own writes (the
/// machine's registration and the consumer lease of its store events) are done, so a disk
/// filled from here on fails the claim's commit first, not one of the start's (which would
/// make the store wait for commits before answering claims, and no claim would be lost).
fn consuming_store_events(p: &mut Proc) {
    p.wait_for("the machine consuming its store events", LIMIT, |j| {
        field(j, "message") == "consuming the machine's store events"
    });
}

/// Writes `filler` until the 2 MB tmpfs it is on is full. Bounded: past 8 MB the file is
/// not on the tmpfs (the mount failed?), and filling the real disk is the last thing a test
/// may do.
fn fill(filler: &Path) {
    let mut f = std::fs::File::create(filler).unwrap();
    let block = vec![0u8; 4096];
    let mut written = 0;
    while written < 8 << 20 && f.write_all(&block).is_ok() {
        written += block.len();
    }
    if written >= 8 << 20 {
        drop(f);
        let _ = std::fs::remove_file(filler);
        panic!(
            "wrote 8 MB to {} without filling the 2 MB tmpfs: it is not mounted there",
            filler.display()
        );
    }
}

/// `path` as the process `pid` sees it (in its mount namespace).
fn inside(pid: u32, path: &Path) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root{}", path.display()))
}

/// (status, attempts) of a job, read with `turnstile jobs list` in the mount namespace of
/// process `pid` (SQLite resolves `/proc/PID/root` to `/`: it cannot open the file through
/// it).
fn job_in(pid: u32, db: &Path, id: &str) -> Option<(String, i64)> {
    let out = kit::run_ok(
        "turnstile jobs list",
        Command::new("nsenter")
            .args([
                "-t",
                &pid.to_string(),
                "-m",
                bin(),
                "jobs",
                "list",
                "--format",
                "json",
                "--db",
            ])
            .arg(db),
    );
    let list: Json = serde_json::from_slice(&out.stdout).unwrap();
    list.as_array()?
        .iter()
        .find(|j| j["job_id"] == id)
        .map(|j| {
            (
                j["status"].as_str().unwrap_or_default().to_owned(),
                j["attempts"].as_i64().unwrap_or(-1),
            )
        })
}

fn completed(pid: u32, db: &Path, id: &str) -> bool {
    job_in(pid, db, id).is_some_and(|(s, _)| s == "completed")
}

/// A worker that waits for the file GO, then runs each job (`first`, then appending its
/// id to RUNS: `first` makes it a long command) and completes it. A failure of either (a
/// lost claim cancels the command, or its completion is refused) goes back to waiting.
fn worker_config(dir: &Path, first: &str) -> PathBuf {
    let cfg = dir.join("worker.yaml");
    let yaml = format!(
        r#"
initial_state: hold
metadata:
  machine_name: worker
transitions:
  - {{from: hold, to: waiting, event: go}}
  - {{from: waiting, to: processing, event: new_job}}
  - {{from: processing, to: finishing, event: ran}}
  - {{from: processing, to: waiting, event: error}}
  - {{from: finishing, to: waiting, event: job_completed}}
  - {{from: finishing, to: waiting, event: error}}
actions:
  hold:
    - type: bash
      command: "while [ ! -e {go} ]; do sleep 0.05; done"
      timeout: 600
      success: go
  waiting:
    - type: check_database_queue
      job_type: task
  processing:
    - type: bash
      command: "{first}echo {{id}} >> {runs}"
      timeout: 60
      success: ran
  finishing:
    - type: complete_job
      job_id: "{{id}}"
      success: job_completed
"#,
        go = dir.join("GO").display(),
        runs = dir.join("runs.log").display()
    );
    std::fs::write(&cfg, yaml).unwrap();
    cfg
}

fn runs(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("runs.log"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[test]
fn a_full_disk_stops_claims_and_loses_nothing() {
    if !can_unshare("a_full_disk_stops_claims_and_loses_nothing") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let db = mnt.join("jobs.db");
    let cfg = worker_config(dir.path(), "");
    let setup = format!(
        "mount -t tmpfs -o size=2M tmpfs \"{mnt}\" && \"{bin}\" jobs add --db \"{db}\" --type task --job-id J1 >/dev/null",
        mnt = mnt.display(),
        bin = bin(),
        db = db.display()
    );
    let (mut p, addr) = start_in_namespace(&setup, &cfg, &db);
    let pid = p.pid();
    consuming_store_events(&mut p);
    assert_eq!(http(addr, "GET", "/readyz", "").0, 200);
    // Fill the tmpfs, then let the worker claim J1.
    let filler = inside(pid, &mnt.join("filler"));
    fill(&filler);
    std::fs::write(dir.path().join("GO"), "").unwrap();
    let full = Duration::from_secs(3);
    std::thread::sleep(full);
    let runs_full = runs(dir.path());
    let (code, body) = http(addr, "GET", "/readyz", "");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("full"), "{body}");
    let (code, body) = http(addr, "POST", "/jobs", r#"{"job_type": "task"}"#);
    assert_eq!(code, 503, "{body}");
    // The claim answered before its failed commit ran the job once at most (its command
    // is cancelled when the loss is known before it ends); no more runs while the disk
    // stays full.
    assert!(
        runs_full <= 1,
        "the job ran {runs_full} times in {full:?} on a full disk"
    );
    std::fs::remove_file(&filler).unwrap();
    let recover = wait_until("J1 completed", LIMIT, || completed(pid, &db, "J1"));
    // The lost claim counted: one lost attempt and the one that completed.
    assert_eq!(job_in(pid, &db, "J1"), Some(("completed".into(), 2)));
    assert_eq!(runs(dir.path()), runs_full + 1);
    let ready = wait_until("ready again", LIMIT, || {
        http(addr, "GET", "/readyz", "").0 == 200
    });
    // Jobs are accepted again and nothing acknowledged was lost.
    let (code, body) = http(
        addr,
        "POST",
        "/jobs",
        r#"{"job_type": "task", "job_id": "J2"}"#,
    );
    assert_eq!(code, 201, "{body}");
    wait_until("J2 completed", LIMIT, || completed(pid, &db, "J2"));
    eprintln!(
        "full disk: the job ran {runs_full} time(s) in {full:?} while full; completed {recover:?} after space returned (ready after {ready:?})"
    );
    p.signal("TERM");
    p.finish(LIMIT);
}

#[test]
fn a_read_only_database_is_not_ready_and_recovers_when_writable() {
    if !can_unshare("a_read_only_database_is_not_ready_and_recovers_when_writable") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ro.db");
    jobs_add(&db, &["--type", "task", "--job-id", "R1"]);
    let cfg = worker_config(dir.path(), "");
    std::fs::write(dir.path().join("GO"), "").unwrap();
    let setup = format!(
        "mount --bind \"{db}\" \"{db}\"; mount -o remount,ro,bind \"{db}\"",
        db = db.display()
    );
    let (mut p, addr) = start_in_namespace(&setup, &cfg, &db);
    let (code, body) = http(addr, "GET", "/readyz", "");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("read-only"), "{body}");
    assert_eq!(
        http(addr, "POST", "/jobs", r#"{"job_type": "task"}"#).0,
        503
    );
    assert_eq!(runs(dir.path()), 0);
    // Writable again: no restart needed.
    let st = Command::new("nsenter")
        .args(["-t", &p.pid().to_string(), "-m", "umount", "-l"])
        .arg(&db)
        .status()
        .unwrap();
    assert!(st.success());
    wait_until("ready again", LIMIT, || {
        http(addr, "GET", "/readyz", "").0 == 200
    });
    let (code, body) = http(
        addr,
        "POST",
        "/jobs",
        r#"{"job_type": "task", "job_id": "R2"}"#,
    );
    assert_eq!(code, 201, "{body}");
    let pid = p.pid();
    wait_until("R1 and R2 completed", LIMIT, || {
        completed(pid, &db, "R1") && completed(pid, &db, "R2")
    });
    p.signal("TERM");
    p.finish(LIMIT);
}

#[test]
fn a_deleted_database_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gone.db");
    let cfg = worker_config(dir.path(), "");
    let mut p = Proc::start(&[
        "run",
        &cfg.display().to_string(),
        "--db",
        &db.display().to_string(),
    ]);
    let addr: SocketAddr = p.sidecar_addr(LIMIT);
    assert_eq!(http(addr, "GET", "/readyz", "").0, 200);
    std::fs::remove_file(&db).unwrap();
    let (code, body) = http(addr, "GET", "/readyz", "");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("deleted"), "{body}");
    // A job that would go to the deleted file is refused, not acknowledged and lost.
    let (code, body) = http(addr, "POST", "/jobs", r#"{"job_type": "task"}"#);
    assert_eq!(code, 503, "{body}");
    p.signal("TERM");
    p.finish(LIMIT);
}

#[test]
fn a_lost_claim_cancels_the_command_it_started() {
    if !can_unshare("a_lost_claim_cancels_the_command_it_started") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let db = mnt.join("jobs.db");
    let cfg = worker_config(dir.path(), "sleep 3; ");
    let setup = format!(
        "mount -t tmpfs -o size=2M tmpfs \"{mnt}\" && \"{bin}\" jobs add --db \"{db}\" --type task --job-id L1 >/dev/null",
        mnt = mnt.display(),
        bin = bin(),
        db = db.display()
    );
    let (mut p, _addr) = start_in_namespace(&setup, &cfg, &db);
    let pid = p.pid();
    consuming_store_events(&mut p);
    // Fill the tmpfs, then let the worker claim L1: the claim is answered before its
    // commit, which fails.
    let filler = inside(pid, &mnt.join("filler"));
    fill(&filler);
    std::fs::write(dir.path().join("GO"), "").unwrap();
    // The command started on the lost claim is cancelled, as an error of the action.
    let t0 = Instant::now();
    let rec = p.wait_for(
        "the cancelled action's error",
        Duration::from_secs(30),
        |j| {
            let s = j.to_string();
            s.contains("job L1: its claim did not commit") && s.contains("the action was cancelled")
        },
    );
    assert_eq!(field(&rec, "target"), "turnstile::error", "{rec}");
    assert!(rec.to_string().contains("full"), "{rec}");
    // Longer than the command would have taken: it did not run to its end.
    std::thread::sleep(
        Duration::from_secs(4).saturating_sub(t0.elapsed()) + Duration::from_secs(1),
    );
    assert_eq!(runs(dir.path()), 0, "the command of the lost claim ran");
    // Space returns: the lost attempt is counted and the job runs once and completes.
    std::fs::remove_file(&filler).unwrap();
    wait_until("L1 completed", LIMIT, || completed(pid, &db, "L1"));
    assert_eq!(job_in(pid, &db, "L1"), Some(("completed".into(), 2)));
    assert_eq!(runs(dir.path()), 1);
    p.signal("TERM");
    p.finish(LIMIT);
}

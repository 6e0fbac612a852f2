//! The real `turnstile` binary: its command, a running process whose JSON log lines are
//! read on a thread ([`Proc`]), and the pids of what it starts.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use super::logs::field;

/// Generous limit for a whole example run: the machine may share two cores with builds.
pub const RUN_LIMIT: Duration = Duration::from_secs(90);

/// The `turnstile` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_turnstile")
}

/// The workspace root (where `examples/` lives): these tests belong to its package.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A path under the workspace root, as a string for command lines.
pub fn path(rel: &str) -> String {
    root().join(rel).display().to_string()
}

/// A `turnstile` command with JSON logs at info level, run from the workspace root.
pub fn turnstile(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.current_dir(root())
        .args(["--log-format", "json", "--log-level", "info"])
        .args(args)
        .env_remove("RUST_LOG")
        // Tests run in parallel: each sidecar on a port of its own.
        .env("TURNSTILE_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null());
    c
}

/// A running `turnstile` process whose stderr is read line by line on a thread.
pub struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every stderr line seen so far.
    pub stderr: Vec<String>,
    /// Stdout, once the process has ended.
    pub stdout: String,
    started: Instant,
}

impl Proc {
    /// Starts `turnstile` with JSON logs and `args`.
    pub fn start(args: &[&str]) -> Self {
        Self::spawn(turnstile(args))
    }

    /// Starts a command made by [`turnstile`] (with more settings, e.g. environment).
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the turnstile binary");
        let err = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines: rx,
            stderr: Vec::new(),
            stdout: String::new(),
            started: Instant::now(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything logged so far, for failure messages.
    pub fn log(&self) -> String {
        self.stderr.join("\n")
    }

    /// Waits (up to `limit`) for a stderr line that parses as JSON and satisfies `pred`;
    /// returns it. Kills the process and panics with the log on timeout or early exit.
    pub fn wait_for(&mut self, what: &str, limit: Duration, pred: impl Fn(&Json) -> bool) -> Json {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stderr.push(line.clone());
                    if let Ok(j) = serde_json::from_str::<Json>(&line) {
                        if pred(&j) {
                            return j;
                        }
                    }
                }
                Err(e) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "no log line for {what} within {limit:?} ({e}); stderr so far:\n{}",
                        self.log()
                    );
                }
            }
        }
    }

    /// Waits until `n` machines have logged `machine started`, counting the lines already
    /// read (a machine's task may log it before or after the sidecar's `listening` line).
    pub fn wait_started(&mut self, n: usize, limit: Duration) {
        let seen = self
            .stderr
            .iter()
            .filter_map(|l| serde_json::from_str::<Json>(l).ok())
            .filter(|j| j.get("message").and_then(Json::as_str) == Some("machine started"))
            .count();
        let started = std::cell::Cell::new(seen);
        if seen >= n {
            return;
        }
        self.wait_for("the machines started", limit, |j| {
            if j.get("message").and_then(Json::as_str) == Some("machine started") {
                started.set(started.get() + 1);
            }
            started.get() >= n
        });
    }

    /// Sends a signal by name (`TERM`, `INT`) with `kill(1)`.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} failed");
    }

    /// Waits for the process to exit within `limit` (killing it and panicking otherwise),
    /// collects the rest of stderr and stdout, and returns the exit status and the time
    /// since start.
    pub fn finish(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                break st;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.stderr.push(l);
                }
                panic!(
                    "turnstile did not exit within {limit:?}; killed it. stderr:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        let took = self.started.elapsed();
        // The reader thread ends at EOF, which follows the exit.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.stderr.push(l);
        }
        if let Some(mut out) = self.child.stdout.take() {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut out, &mut s);
            self.stdout = s;
        }
        (status, took)
    }

    /// Waits for the sidecar's `listening` record and returns its address.
    pub fn sidecar_addr(&mut self, limit: Duration) -> SocketAddr {
        let rec = self.wait_for("the sidecar listening", limit, |j| {
            field(j, "target") == "turnstile::sidecar" && j.get("addr").is_some()
        });
        field(&rec, "addr")
            .parse()
            .unwrap_or_else(|e| panic!("bad sidecar address in {rec} ({e})"))
    }

    /// Every stderr line parsed as JSON; panics on a line that is not JSON.
    pub fn records(&self) -> Vec<Json> {
        self.stderr
            .iter()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!(
                        "stderr line is not JSON ({e}): {l}\nstderr:\n{}",
                        self.log()
                    )
                })
            })
            .collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `turnstile run ARGS` to the end and returns the process (status checked by the
/// caller through the returned status).
pub fn run_to_end(args: &[&str]) -> (Proc, ExitStatus) {
    let mut p = Proc::start(args);
    let (st, _) = p.finish(RUN_LIMIT);
    (p, st)
}

/// Runs `turnstile jobs add --db DB ARGS`, which must succeed; returns the job id it
/// prints.
pub fn jobs_add(db: &Path, args: &[&str]) -> String {
    let dbs = db.display().to_string();
    let mut a = vec!["jobs", "add", "--db", dbs.as_str()];
    a.extend_from_slice(args);
    let out = run_ok("turnstile jobs add", &mut turnstile(&a));
    text(&out.stdout).trim().to_owned()
}

/// Runs `cmd` (stdin closed) to the end; panics with its output unless it succeeds.
pub fn run_ok(what: &str, cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// Command output as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// True when process `pid` no longer runs (gone, or a zombie waiting to be reaped).
/// The process id in a lease owner (`ID/PID-NONCE`: `--instance-id` and the start).
pub fn lease_pid(owner: &str) -> Option<u32> {
    owner.rsplit_once('/')?.1.split('-').next()?.parse().ok()
}

pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// Waits up to `limit` for `file` to hold a pid (written by a test command).
pub fn wait_for_pid_file(file: &Path, limit: Duration) -> Option<u32> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(s) = std::fs::read_to_string(file) {
            if let Ok(pid) = s.trim().parse() {
                return Some(pid);
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}

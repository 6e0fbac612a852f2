//! Helpers for tests that start the real `turnstile` binary and read its JSON logs.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

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

/// One transition as logged: `(from, to, event)`.
pub type Transition = (String, String, String);

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

/// A string field of a log record.
pub fn field<'a>(j: &'a Json, key: &str) -> &'a str {
    j.get(key).and_then(Json::as_str).unwrap_or("")
}

/// True for a transition record of `machine`.
pub fn is_transition(j: &Json, machine: &str) -> bool {
    field(j, "target") == "turnstile::transition" && field(j, "machine") == machine
}

/// The transitions `machine` logged, in order.
pub fn transitions(records: &[Json], machine: &str) -> Vec<Transition> {
    records
        .iter()
        .filter(|j| is_transition(j, machine))
        .map(|j| {
            (
                field(j, "from").to_owned(),
                field(j, "to").to_owned(),
                field(j, "event").to_owned(),
            )
        })
        .collect()
}

/// Builds an expected transition list from `(from, to, event)` triples.
pub fn seq(items: &[(&str, &str, &str)]) -> Vec<Transition> {
    items
        .iter()
        .map(|(f, t, e)| ((*f).to_owned(), (*t).to_owned(), (*e).to_owned()))
        .collect()
}

/// The messages of records with `target`, for `machine`.
pub fn messages(records: &[Json], target: &str, machine: &str) -> Vec<String> {
    records
        .iter()
        .filter(|j| field(j, "target") == target && field(j, "machine") == machine)
        .map(|j| field(j, "message").to_owned())
        .collect()
}

/// The state `machine` stopped in and why (`FinalState`, `Shutdown`), from its
/// `machine stopped` record.
pub fn stopped(records: &[Json], machine: &str) -> Option<(String, String)> {
    records
        .iter()
        .find(|j| {
            field(j, "target") == "turnstile::machine"
                && field(j, "machine") == machine
                && field(j, "message") == "machine stopped"
        })
        .map(|j| (field(j, "state").to_owned(), field(j, "reason").to_owned()))
}

/// Seconds since the Unix epoch of a log record's RFC 3339 UTC `timestamp`
/// (`2026-11-26T14:27:53.091875Z`).
pub fn timestamp(j: &Json) -> f64 {
    let ts = field(j, "timestamp");
    parse_rfc3339_utc(ts).unwrap_or_else(|| panic!("bad timestamp `{ts}` in {j}"))
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac]Z` into seconds since the Unix epoch.
pub fn parse_rfc3339_utc(ts: &str) -> Option<f64> {
    let ts = ts.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.splitn(3, '-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.splitn(3, ':');
    let h: i64 = t.next()?.parse().ok()?;
    let min: i64 = t.next()?.parse().ok()?;
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    #[allow(clippy::cast_precision_loss)]
    let whole = (days * 86_400 + h * 3600 + min * 60) as f64;
    Some(whole + sec)
}

/// True when process `pid` no longer runs (gone, or a zombie waiting to be reaped).
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

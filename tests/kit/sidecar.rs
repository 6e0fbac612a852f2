//! `turnstile run` with configs written to a temporary directory and its sidecar on a
//! free port ([`Sidecar`]), and the command line of a client of it (`turnstile ctl`).

use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::process::{turnstile, Proc};

/// How long the process may take to start its sidecar and machines.
const START_LIMIT: Duration = Duration::from_secs(60);

/// A running `turnstile run` with its sidecar.
pub struct Sidecar {
    pub proc: Proc,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Writes `yamls` (one machine each, `m0.yaml`, `m1.yaml`, ...) into a new temporary
/// directory; returns it (the files go with it) and their paths.
pub fn configs(yamls: &[&str]) -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let paths = yamls
        .iter()
        .enumerate()
        .map(|(i, y)| {
            let p = dir.path().join(format!("m{i}.yaml"));
            std::fs::write(&p, y).expect("writing a config");
            p.display().to_string()
        })
        .collect();
    (dir, paths)
}

/// The `turnstile run` command for the configs at `paths` with `args`, without the
/// environment's token and span exporter.
pub fn run_command(paths: &[String], args: &[&str]) -> Command {
    let mut all: Vec<&str> = vec!["run"];
    all.extend(paths.iter().map(String::as_str));
    all.extend_from_slice(args);
    let mut cmd = turnstile(&all);
    for k in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "TURNSTILE_TOKEN",
    ] {
        cmd.env_remove(k);
    }
    cmd
}

impl Sidecar {
    /// Writes `yamls` (one machine each) and runs them with `args` on a free port, without
    /// the environment's token and span exporter; returns once every machine started.
    pub fn start(yamls: &[&str], args: &[&str]) -> Self {
        Self::start_with(yamls, args, |_| {})
    }

    /// [`Self::start`], with `env` changing the command first (its environment).
    pub fn start_with(yamls: &[&str], args: &[&str], env: impl FnOnce(&mut Command)) -> Self {
        let (dir, paths) = configs(yamls);
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let mut cmd = run_command(&paths, &all);
        env(&mut cmd);
        let mut proc = Proc::spawn(cmd);
        let addr = proc.sidecar_addr(START_LIMIT);
        // The machines' tasks log their start before or after the sidecar's line.
        proc.wait_started(yamls.len(), START_LIMIT);
        Self {
            proc,
            addr,
            _dir: dir,
        }
    }

    /// SIGTERM; asserts that the process exits with 0 after logging "sidecar stopped".
    pub fn stop(mut self) {
        stop_cleanly(&mut self.proc);
    }

    /// Its URL, for `--url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// SIGTERM to a `turnstile run` with its sidecar; asserts that it exits with 0 after
/// logging "sidecar stopped".
pub fn stop_cleanly(proc: &mut Proc) {
    proc.signal("TERM");
    let (st, _) = proc.finish(START_LIMIT);
    assert_eq!(st.code(), Some(0), "{}", proc.log());
    assert!(
        proc.records()
            .iter()
            .any(|j| super::logs::field(j, "message") == "sidecar stopped"),
        "{}",
        proc.log()
    );
}

/// Runs a client command of a sidecar, `turnstile ARGS` (no log flags, stdin closed, no
/// `TURNSTILE_URL` or `TURNSTILE_TOKEN` from the environment unless `token` gives one),
/// to its end.
pub fn client(args: &[&str], token: Option<&str>) -> Output {
    let mut cmd = Command::new(super::process::bin());
    cmd.args(args)
        .env_remove("TURNSTILE_URL")
        .env_remove("TURNSTILE_TOKEN")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    if let Some(t) = token {
        cmd.env("TURNSTILE_TOKEN", t);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run turnstile {args:?}: {e}"))
}

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

impl Sidecar {
    /// Writes `yamls` (one machine each) and runs them with `args` on a free port, without
    /// the environment's token and span exporter; returns once every machine started.
    pub fn start(yamls: &[&str], args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut all: Vec<String> = vec!["run".into()];
        for (i, y) in yamls.iter().enumerate() {
            let p = dir.path().join(format!("m{i}.yaml"));
            std::fs::write(&p, y).expect("writing a config");
            all.push(p.display().to_string());
        }
        all.extend(["--listen", "127.0.0.1:0"].map(String::from));
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut cmd = turnstile(&all);
        for k in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "TURNSTILE_TOKEN",
        ] {
            cmd.env_remove(k);
        }
        let mut proc = Proc::spawn(cmd);
        let addr = proc.sidecar_addr(START_LIMIT);
        proc.wait_started(yamls.len(), START_LIMIT);
        Self {
            proc,
            addr,
            _dir: dir,
        }
    }

    /// Its URL, for `--url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
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

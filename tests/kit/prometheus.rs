//! Debian's Prometheus, started for a test: it scrapes one target every second, keeps
//! exemplars, and is killed when dropped (also when the test panics). With native
//! histograms on ([`Prometheus::start_native`]) it asks for the protobuf exposition first.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use super::http::{enc, get, get_json, request};
use super::wait::LIMIT;

/// A running Prometheus with its storage and log in a temp dir of its own.
pub struct Prometheus {
    child: Child,
    /// Where its HTTP API listens.
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second and waits until it is ready. A
    /// port taken between choosing it and binding it is retried with another.
    pub fn start(target: SocketAddr) -> Self {
        Self::start_with(target, "")
    }

    /// [`Prometheus::start`] with more keys in the scrape config (`scheme`, `tls_config`,
    /// `basic_auth`, ...; YAML at the job's indentation, four spaces, each line ending
    /// with a newline).
    pub fn start_with(target: SocketAddr, scrape: &str) -> Self {
        Self::launch(target, scrape, "exemplar-storage")
    }

    /// [`Prometheus::start`] with `--enable-feature=native-histograms`: it scrapes in the
    /// protobuf format and keeps a histogram that has native buckets as one native series
    /// (no `_bucket`, `_sum`, `_count`).
    pub fn start_native(target: SocketAddr) -> Self {
        Self::launch(target, "", "exemplar-storage,native-histograms")
    }

    fn launch(target: SocketAddr, scrape: &str, features: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir for prometheus");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: turnstile\n{scrape}    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        for attempt in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let log = dir.path().join(format!("prometheus-{attempt}.log"));
            let out = std::fs::File::create(&log).expect("create the prometheus log");
            let mut child = Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg(format!("--enable-feature={features}"))
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("clone the log file"))
                .stderr(out)
                .spawn()
                .expect(
                    "prometheus is installed (.ci/install.sh installs Debian's prometheus package)",
                );
            if wait_ready(&mut child, addr, &log) {
                return Prometheus {
                    child,
                    addr,
                    log,
                    _dir: dir,
                };
            }
            let _ = child.wait();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(
                text.contains("address already in use"),
                "prometheus did not start:\n{text}"
            );
        }
        panic!("prometheus found no free port in 3 attempts");
    }

    /// What Prometheus logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `data` of a GET of the API, after checking `status` is `success`.
    pub fn api(&self, target: &str) -> Json {
        let v = get_json(self.addr, target);
        assert_eq!(v["status"], "success", "{target}: {v}");
        v["data"].clone()
    }

    /// An API call as a POSTed form: the `data` of a success, or the error text.
    pub fn post_api(&self, path: &str, params: &[(&str, &str)]) -> Result<Json, String> {
        let body = params
            .iter()
            .map(|(k, v)| format!("{k}={}", enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        let r = request(
            self.addr,
            "POST",
            path,
            &[("Content-Type", "application/x-www-form-urlencoded")],
            body.as_bytes(),
        );
        let (status, body) = (r.status, r.text());
        let j: Json = serde_json::from_str(&body)
            .map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
        if j["status"] != "success" {
            return Err(format!("HTTP {status}: {body}"));
        }
        Ok(j["data"].clone())
    }

    /// The value of an instant query's only sample, if there is one.
    pub fn scalar(&self, promql: &str) -> Option<f64> {
        let data = self.api(&format!("/api/v1/query?query={}", enc(promql)));
        let result = data["result"].as_array()?;
        assert!(result.len() <= 1, "{promql}: more than one series: {data}");
        result.first()?["value"][1].as_str()?.parse().ok()
    }
}

/// Waits for `/-/ready`; false when the process exited first. Kills it and panics with
/// its log when it is not ready within [`LIMIT`].
fn wait_ready(child: &mut Child, addr: SocketAddr, log: &Path) -> bool {
    let deadline = Instant::now() + LIMIT;
    while Instant::now() < deadline {
        if child.try_wait().expect("try_wait").is_some() {
            return false;
        }
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
            && get(addr, "/-/ready").status == 200
        {
            return true;
        }
        thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "prometheus not ready within {LIMIT:?}:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! A real PostgreSQL server for tests: `initdb` in a temp dir, `postgres` on a free port
//! on 127.0.0.1 with password authentication, one database per test.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the server's files
//! belong to `nobody` and its processes run as that user. The server is started through a
//! small shell guard that holds a pipe from the test process: when the test process ends,
//! however it ends, the pipe closes and the guard stops the server (fast shutdown), so no
//! server outlives its tests.
//!
//! The binaries are taken from `TURNSTILE_PG_BIN`, else the newest
//! `/usr/lib/postgresql/*/bin` (Debian's `postgresql` package, installed by
//! `.ci/install.sh`). A missing server is a test failure, not a skip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The superuser of test servers and its password.
pub const USER: &str = "turnstile";
/// Its password.
pub const PASSWORD: &str = "turnstile-test-pw";

/// The directory of `initdb`, `postgres` and `psql`.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TURNSTILE_PG_BIN") {
        return PathBuf::from(d);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("postgres").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().expect(
        "no PostgreSQL server: install Debian's `postgresql` (bash .ci/install.sh) or set TURNSTILE_PG_BIN",
    )
}

/// True when the tests run as root (`/proc/self` belongs to the process's user).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The user the server runs as when the tests run as root.
const NOBODY: u32 = 65534;

fn as_server_user(cmd: &mut Command) -> &mut Command {
    if is_root() {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    cmd
}

fn chown_to_server_user(path: &Path) {
    if is_root() {
        std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
    }
}

fn free_port() -> u16 {
    TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running server. Dropping it stops the server and removes its files.
pub struct Server {
    dir: tempfile::TempDir,
    port: u16,
    guard: Option<(Child, ChildStdin)>,
    databases: AtomicU32,
}

impl Server {
    /// `initdb` and start a server on a free port.
    pub fn start() -> Self {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("turnstile-pg-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        std::fs::create_dir(dir.path().join("sock")).unwrap();
        for p in [
            dir.path().to_owned(),
            pwfile.clone(),
            dir.path().join("sock"),
        ] {
            chown_to_server_user(&p);
        }
        let out = as_server_user(Command::new(bin.join("initdb")).args([
            "-D",
            data.to_str().unwrap(),
            "-U",
            USER,
            "--pwfile",
            pwfile.to_str().unwrap(),
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "-E",
            "UTF8",
            "--no-instructions",
        ]))
        .current_dir(dir.path())
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut server = Server {
            port: free_port(),
            dir,
            guard: None,
            databases: AtomicU32::new(0),
        };
        server.launch();
        server
    }

    /// Starts the postmaster behind its guard and waits until it accepts connections.
    fn launch(&mut self) {
        let bin = bin_dir();
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("server.log");
        let script = format!(
            "{postgres} -D {data} -p {port} -k {sock} -c listen_addresses=127.0.0.1 \
             -c fsync=on -c synchronous_commit=on -c max_connections=200 \
             -c shared_buffers=32MB >> {log} 2>&1 & pid=$!; \
             read cmd; kill -INT $pid; wait $pid; [ \"$cmd\" = keep ] || rm -rf {dir}",
            postgres = bin.join("postgres").display(),
            data = data.display(),
            port = self.port,
            sock = self.dir.path().join("sock").display(),
            log = log.display(),
            dir = self.dir.path().display(),
        );
        let mut child = as_server_user(Command::new("sh").args(["-c", &script]))
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        self.guard = Some((child, stdin));
        let t0 = Instant::now();
        while !self.accepts() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "PostgreSQL did not start within 30 s: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// True when the server answers `SELECT 1`.
    fn accepts(&self) -> bool {
        if TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            return false;
        }
        self.psql("postgres", "SELECT 1").is_ok()
    }

    /// Runs `sql` with psql in database `db`: its output, or its error text.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(bin_dir().join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                "-d",
                db,
                "-c",
                sql,
            ])
            .env("PGPASSWORD", PASSWORD)
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A fresh, empty database; returns its URL.
    pub fn database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("t{}_{n}", std::process::id());
        self.psql("postgres", &format!("CREATE DATABASE {name}"))
            .unwrap();
        self.url(&name)
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{name}",
            self.port
        )
    }

    /// Stops the server (fast shutdown: connections are closed) and waits until it is gone.
    pub fn stop(&mut self) {
        self.shut_down(true);
    }

    /// Stops the server; `keep`: keep its files for a restart.
    fn shut_down(&mut self, keep: bool) {
        if let Some((mut child, mut stdin)) = self.guard.take() {
            let _ = stdin.write_all(if keep { b"keep\n" } else { b"\n" });
            drop(stdin);
            let _ = child.wait();
        }
    }

    /// Starts the stopped server again, on the same port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shut_down(false);
    }
}

//! One Unix datagram socket per machine, for events from other processes, in
//! statemachine-engine's message format: one JSON datagram
//! `{"type": "...", "payload": {...}, "job_id": "..."}`, plus an optional `"traceparent"`.
//!
//! Sockets live in a private directory (created with mode 0700; an existing one must
//! belong to this user and is made 0700), each socket is made 0600 as soon as it is bound,
//! so only this user can send. A socket file left by a dead process is replaced; one that
//! a live process still serves, or a file that is not a socket, is left alone and that
//! machine gets no socket, as does a machine whose name is not a safe file name
//! ([`check_name`]: `../x` would lead out of the directory). Oversized
//! (more than [`MAX_DATAGRAM`] bytes) and malformed datagrams are dropped, logged and
//! reported to the observer as `bad_message` errors of the socket's machine. A datagram is
//! parsed and checked by [`crate::ingress`], the parser `POST /machines/{name}/events`
//! uses too. Socket files are removed when the server is shut down or dropped.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value as Json;
use tokio::net::UnixDatagram;
use tokio::task::JoinHandle;

use crate::ingress::{self, Limits};
use crate::observe::{ErrorKind, ErrorReport, MachineRef, Observer, ObserverSlot};
use crate::runtime::engine::Engine;

/// Largest datagram accepted (statemachine-engine silently cut messages at 4 KB).
pub const MAX_DATAGRAM: usize = Limits::SOCKET.max_bytes;

/// Why sockets could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// The directory could not be made private.
    #[error("socket directory {0}: {1}")]
    Dir(PathBuf, String),
    /// A socket could not be bound.
    #[error("socket {0}: {1}")]
    Bind(PathBuf, String),
    /// A machine's name cannot name a socket file.
    #[error("socket for machine {0:?}: {1}")]
    Name(String, String),
}

/// The socket directory used when none is given: `$XDG_RUNTIME_DIR/turnstile`, else
/// `/tmp/turnstile-UID` (private either way).
pub fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => Path::new(&d).join("turnstile"),
        _ => PathBuf::from(format!("/tmp/turnstile-{}", current_uid())),
    }
}

fn current_uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}

/// The socket path of `machine` in `dir`. Check the name with [`check_name`] first: a
/// name with a `/` would lead out of `dir`.
pub fn socket_path(dir: &Path, machine: &str) -> PathBuf {
    dir.join(format!("{machine}.sock"))
}

/// Checks that `machine` makes a safe socket file name in the socket directory: not
/// empty, no `/` (which would lead out of the directory, e.g. `../victim`) and no NUL.
pub fn check_name(machine: &str) -> Result<(), String> {
    let bad = if machine.is_empty() {
        "it is empty"
    } else if machine.contains('/') {
        "it contains `/`, which would put the socket outside the socket directory"
    } else if machine.contains('\0') {
        "it contains a NUL character"
    } else {
        return Ok(());
    };
    Err(format!(
        "machine name {machine:?} is not a safe socket file name: {bad}; rename the machine (`metadata.machine_name` or `--machine-name`)"
    ))
}

/// Creates `dir` with mode 0700, or checks that an existing one is ours and makes it 0700.
pub fn private_dir(dir: &Path) -> Result<(), SocketError> {
    let err = |e: String| SocketError::Dir(dir.to_owned(), e);
    match std::fs::symlink_metadata(dir) {
        Err(_) => {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| err(e.to_string()))?;
        }
        Ok(m) if !m.is_dir() => return Err(err("exists and is not a directory".into())),
        Ok(m) if m.uid() != current_uid() => {
            return Err(err(format!(
                "belongs to uid {}, not to this user: choose another directory",
                m.uid()
            )))
        }
        Ok(_) => {}
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| err(e.to_string()))
}

/// Sends one message to `machine`'s socket in `dir` (what `turnstile send-event` does).
pub fn send(dir: &Path, machine: &str, msg: &Json) -> std::io::Result<()> {
    check_name(machine).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let path = socket_path(dir, machine);
    let s = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = serde_json::to_vec(msg)?;
    s.send_to(&bytes, &path)?;
    Ok(())
}

/// The sockets of an engine's machines.
#[derive(Debug)]
pub struct SocketServer {
    tasks: Vec<JoinHandle<()>>,
    paths: Vec<PathBuf>,
}

impl SocketServer {
    /// Binds a socket for each named machine in `dir` and delivers what arrives to
    /// `engine`. A machine whose socket cannot be bound is reported and skipped.
    pub fn start(
        engine: &Engine,
        dir: &Path,
        machines: &[Arc<str>],
        observer: Option<Arc<dyn Observer>>,
    ) -> Result<(Self, Vec<SocketError>), SocketError> {
        private_dir(dir)?;
        let mut server = SocketServer {
            tasks: Vec::new(),
            paths: Vec::new(),
        };
        let mut failed = Vec::new();
        for m in machines {
            if let Err(e) = check_name(m) {
                let e = SocketError::Name(m.to_string(), e);
                tracing::warn!(target: "turnstile::socket", machine = %m, "{e}");
                failed.push(e);
                continue;
            }
            let path = socket_path(dir, m);
            match bind(&path) {
                Ok(sock) => {
                    tracing::info!(target: "turnstile::socket", machine = %m, path = %path.display(), "listening for events");
                    server.paths.push(path.clone());
                    server.tasks.push(tokio::spawn(serve(
                        sock,
                        engine.clone(),
                        m.clone(),
                        observer.clone(),
                    )));
                }
                Err(e) => {
                    tracing::warn!(target: "turnstile::socket", machine = %m, "{e}");
                    failed.push(e);
                }
            }
        }
        Ok((server, failed))
    }

    /// The socket files served.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Stops serving and removes the socket files.
    pub fn shutdown(mut self) {
        self.close();
    }

    fn close(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        for p in self.paths.drain(..) {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for SocketServer {
    fn drop(&mut self) {
        self.close();
    }
}

fn bind(path: &Path) -> Result<UnixDatagram, SocketError> {
    let err = |e: String| SocketError::Bind(path.to_owned(), e);
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt as _;
        // Only a socket is ever replaced: any other file there is not ours to remove.
        if !meta.file_type().is_socket() {
            return Err(err(
                "a file that is not a socket is in the way; it is left alone: remove it or choose another --socket-dir".into(),
            ));
        }
        // A live process answers a connect; a stale file refuses it.
        let probe = std::os::unix::net::UnixDatagram::unbound().map_err(|e| err(e.to_string()))?;
        if probe.connect(path).is_ok() {
            return Err(err(
                "another process serves this socket (the same machine running twice?)".into(),
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| err(format!("cannot replace a stale socket: {e}")))?;
    }
    let sock = UnixDatagram::bind(path).map_err(|e| err(e.to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| err(e.to_string()))?;
    Ok(sock)
}

async fn serve(
    sock: UnixDatagram,
    engine: Engine,
    machine: Arc<str>,
    observer: Option<Arc<dyn Observer>>,
) {
    // One byte more than the limit: a datagram that fills it was too big (and truncated).
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let n = match sock.recv(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(target: "turnstile::socket", machine = %machine, "receive failed: {e}");
                continue;
            }
        };
        let ev = match ingress::parse(&buf[..n], &Limits::SOCKET) {
            Ok(m) => m.into_event(),
            Err(e) => {
                let e = match e {
                    ingress::IngressError::TooLarge { .. } => {
                        format!("message of more than {MAX_DATAGRAM} bytes dropped")
                    }
                    e => e.to_string(),
                };
                let message = format!("socket message for `{machine}` rejected: {e}");
                tracing::warn!(target: "turnstile::socket", machine = %machine, "{message}");
                if let Some(o) = &observer {
                    // The report names the machine the socket belongs to; it is made off
                    // the machine's task, so its observer slot is a fresh, empty one.
                    let status = engine.machine(&machine);
                    let empty = ObserverSlot::new();
                    o.error(&ErrorReport {
                        kind: ErrorKind::BadMessage,
                        machine: status.as_ref().map(|s| MachineRef {
                            id: s.id,
                            name: &machine,
                            def: &s.def,
                            slot: &empty,
                            instance: s.instance,
                        }),
                        state: None,
                        event: None,
                        message: &message,
                    });
                }
                continue;
            }
        };
        // Waits while the queue is full (backpressure: the sender's datagrams queue up in
        // the socket buffer meanwhile).
        if let Err(e) = engine.send(&machine, ev).await {
            tracing::warn!(target: "turnstile::socket", machine = %machine, "event not delivered: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::observe::ErrorKind;
    use std::sync::Mutex;

    /// Keeps `(kind, machine, message)` of every error report.
    #[derive(Default)]
    struct Errors(Mutex<Vec<(ErrorKind, Option<String>, String)>>);

    impl Observer for Errors {
        fn error(&self, r: &ErrorReport<'_>) {
            self.0.lock().unwrap().push((
                r.kind,
                r.machine.map(|m| m.name.to_owned()),
                r.message.to_owned(),
            ));
        }
    }

    const IDLE: &str = "metadata: {machine_name: sock}\ninitial_state: a\nstates: [a, b]\ntransitions:\n  - {from: a, to: b, event: go}\n";

    #[tokio::test]
    async fn bad_datagrams_are_refused_and_reported_with_the_machine() {
        let dir = tempfile::tempdir().unwrap();
        let errors = Arc::new(Errors::default());
        let engine = Engine::builder().observer(errors.clone()).build();
        let registry = crate::ActionRegistry::with_builtins();
        let def = crate::config::load_str(IDLE, None, &registry).def.unwrap();
        engine.spawn(def).unwrap();
        let socks = dir.path().join("s");
        let (server, failed) =
            SocketServer::start(&engine, &socks, &[Arc::from("sock")], Some(errors.clone()))
                .unwrap();
        assert!(failed.is_empty());
        let path = socket_path(&socks, "sock");
        let out = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let long = format!(r#"{{"type": "{}"}}"#, "x".repeat(65 * 1000));
        let bad: Vec<(Vec<u8>, &str)> = vec![
            (br#"{"type": "a\u0000b"}"#.to_vec(), "control characters"),
            (br#"{"type": "a\nb"}"#.to_vec(), "control characters"),
            (br#"{"type": "\u001b[2J"}"#.to_vec(), "control characters"),
            (long.into_bytes(), "longer than 256 bytes"),
            (br#"{"type": 7}"#.to_vec(), "must be a string"),
            (br#"{"payload": {}}"#.to_vec(), "missing `type`"),
            (b"{not json".to_vec(), "invalid JSON"),
            (vec![b' '; MAX_DATAGRAM + 1], "bytes dropped"),
        ];
        for (b, _) in &bad {
            out.send_to(b, &path).unwrap();
        }
        // A good one after them: once it has moved the machine, every bad one was read.
        out.send_to(br#"{"type": "go"}"#, &path).unwrap();
        assert!(
            engine
                .wait_for_state("sock", "b", std::time::Duration::from_secs(30))
                .await
        );
        let seen = errors.0.lock().unwrap().clone();
        assert_eq!(seen.len(), bad.len(), "{seen:#?}");
        for ((kind, machine, message), (_, want)) in seen.iter().zip(&bad) {
            assert_eq!(*kind, ErrorKind::BadMessage);
            assert_eq!(machine.as_deref(), Some("sock"), "{message}");
            assert!(message.contains(want), "{message} (want {want})");
            assert!(message.starts_with("socket message for `sock` rejected"));
        }
        let status = engine.machine("sock").unwrap();
        assert_eq!(status.events, 1, "only the good message became an event");
        server.shutdown();
        engine.shutdown();
    }
}

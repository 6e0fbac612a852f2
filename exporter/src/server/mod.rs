//! The HTTP sidecar: `/metrics`, `/stats`, `/trace`, `/errors`, `/events`, health probes,
//! machine inspection, `POST /machines/{name}/events`, live operations on a machine
//! (`live.rs`: pause, step, breakpoints, ...), the job store's jobs (`/jobs`),
//! `POST /-/reload` and `/openapi.json`, served with hyper on the engine's Tokio runtime.
//!
//! ```no_run
//! # async fn demo(engine: turnstile_engine::Engine,
//! #     telemetry: std::sync::Arc<turnstile_exporter::telemetry::Telemetry>) -> std::io::Result<()> {
//! use turnstile_exporter::server::{serve, SidecarConfig};
//! let sidecar = serve(SidecarConfig::default(), engine, telemetry).await?;
//! println!("serving on http://{}", sidecar.addr());
//! // ... later, on the way out:
//! sidecar.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Every failure is a JSON body `{"error": {"status", "message"}}`; bad requests are also
//! reported to the telemetry (`/errors`, `turnstile_errors_total{kind="bad_message"}`).
//! Nothing a client sends can panic the server: bodies are bounded in bytes and in parsed
//! size, and every state of a connection has a time limit.
//!
//! # Slow and stuck clients
//!
//! Health probes and scrapes must stay answerable however many clients hold connections
//! without finishing their requests or without reading their answers (all of them may
//! come from one address, as the probes do: a cap per address would lock the probe out
//! too). So:
//!
//! - **Every connection is accepted at once**, and at most [`MAX_CONNECTIONS`] are held.
//!   When all slots are taken, the new connection closes the connection that has gone
//!   longest without moving a byte in either direction (reading a request or writing an
//!   answer). A probe connects, asks and reads at once, so it is never the one shed;
//!   slow readers and slowloris clients, which move nothing or a byte now and then, are.
//! - **Timeouts**: a request's headers (and the wait for the next request on a keep-alive
//!   connection) [`HEADER_READ_TIMEOUT`]; a body 30 s; an answer
//!   the client does not read [`WRITE_TIMEOUT`] without progress.
//! - **Pipelining**: hyper answers a connection's requests one at a time and writes the
//!   next answer only once the previous one is handed to the socket, and it reads at most
//!   its buffer (~400 KB) ahead: a client that pipelines requests and reads nothing holds
//!   at most about two answers until [`WRITE_TIMEOUT`] closes it.
//!
//! `GET /events`, a long-lived stream, holds a slot like any connection but is never the
//! one shed (it may write nothing but a heartbeat for 15 s); at most
//! [`crate::telemetry::stream::MAX_CLIENTS`] are served at once, more get 503. The header
//! timeout applies only between requests, so it does not end a stream; the write timeout
//! does close a stream whose client reads nothing (see `events.rs`).

mod conn;
mod endpoints;
mod events;
mod instances;
mod job_admin;
mod jobs;
mod live;
mod openapi;
mod reload;
pub mod request;
pub mod response;
mod routes;
mod stale;
mod starting;
mod state;
pub mod web;
mod write;

use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use turnstile_engine::Engine;

use crate::telemetry::Telemetry;

/// The default listen address.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8000);
/// The default request body limit (1 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Connections held at once; when all are taken, a new connection closes the one that has
/// gone longest without moving a byte (see the module docs).
pub const MAX_CONNECTIONS: usize = 256;
/// How long a client may take to send a request's headers (also closes idle keep-alive
/// connections).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long writing an answer may go without the client reading a byte of it before
/// the connection is closed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Sidecar::shutdown`] lets requests in flight finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// How the sidecar listens and what it allows.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// Where to listen (port 0: any free port). Default `127.0.0.1:8000`.
    pub listen: SocketAddr,
    /// Fail when the port is taken instead of trying the next one.
    pub strict_port: bool,
    /// Bearer token that writes (`POST`) need; `None`: writes are open.
    pub token: Option<String>,
    /// Refuse every write with 403.
    pub read_only: bool,
    /// Largest request body accepted (413 beyond it).
    pub max_body_bytes: usize,
    /// The job store `POST /jobs` adds to (501 without one).
    pub jobs: Option<std::sync::Arc<dyn turnstile_engine::store::JobStore>>,
    /// What `POST /-/reload` reloads (501 without it).
    pub reloader: Option<turnstile_engine::reload::ConfigReloader>,
    /// TLS, basic auth and response headers (`--web-config`); `None`: plain HTTP, open
    /// reads.
    pub web: Option<Arc<web::WebConfig>>,
    /// With basic auth configured, the health endpoints need credentials too.
    pub health_needs_auth: bool,
}

impl Default for SidecarConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            strict_port: false,
            token: None,
            read_only: false,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            jobs: None,
            reloader: None,
            web: None,
            health_needs_auth: false,
        }
    }
}

/// A running sidecar. Dropping it stops accepting connections (without waiting);
/// [`Sidecar::shutdown`] also lets requests in flight finish.
#[derive(Debug)]
#[must_use = "dropping the handle stops the server"]
pub struct Sidecar {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Sidecar {
    /// The address it is bound to (the real port when 0 or the fallback was used).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections, lets requests in flight finish (up to
    /// [`SHUTDOWN_GRACE`]) and closes the rest.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        tracing::info!(target: "turnstile::sidecar", addr = %self.addr, "sidecar stopped");
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Binds `config.listen`; when the port is taken (and not `strict_port`), the next port.
async fn bind(config: &SidecarConfig) -> io::Result<TcpListener> {
    let addr = config.listen;
    let first = match TcpListener::bind(addr).await {
        Ok(l) => return Ok(l),
        Err(e) => e,
    };
    let in_use = first.kind() == io::ErrorKind::AddrInUse;
    if !in_use || config.strict_port || addr.port() == 0 {
        let hint = if in_use {
            " (the port is taken and --strict-port forbids a fallback; stop the other process or choose another address with --listen)"
        } else {
            ""
        };
        return Err(io::Error::new(
            first.kind(),
            format!("cannot listen on {addr}: {first}{hint}"),
        ));
    }
    let Some(next_port) = addr.port().checked_add(1) else {
        return Err(io::Error::new(
            first.kind(),
            format!("cannot listen on {addr}: {first} (no port after it to fall back to)"),
        ));
    };
    let next = SocketAddr::new(addr.ip(), next_port);
    match TcpListener::bind(next).await {
        Ok(l) => {
            tracing::warn!(
                target: "turnstile::sidecar",
                wanted = %addr,
                addr = %next,
                "port {} is taken; the sidecar falls back to port {next_port} (--strict-port disables this)",
                addr.port()
            );
            Ok(l)
        }
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!(
                "cannot listen on {addr}: {first}; the fallback {next} failed too: {e}. Stop the other process or choose another address with --listen"
            ),
        )),
    }
}

/// Binds and starts the sidecar on the current Tokio runtime. The bound address is logged
/// (target `turnstile::sidecar`, field `addr`) and shown in `/stats`.
pub async fn serve(
    config: SidecarConfig,
    engine: Engine,
    telemetry: Arc<Telemetry>,
) -> io::Result<Sidecar> {
    Ok(Bound::bind(config).await?.serve(engine, telemetry))
}

/// A sidecar whose port is taken but which accepts nothing yet: a host binds first (a
/// taken port fails before any machine runs), starts its machines, then serves, so no
/// request ever sees a configured machine missing. Connections made in between wait in
/// the listen backlog.
///
/// While the host gets ready (a job store it waits for), [`Bound::starting`] answers the
/// health probes on the port: alive, not ready, and why.
#[derive(Debug)]
pub struct Bound {
    listener: Arc<TcpListener>,
    config: SidecarConfig,
    addr: SocketAddr,
    gate: Option<Arc<web::Gate>>,
}

impl Bound {
    /// Binds `config.listen` (or the fallback port, see [`SidecarConfig::strict_port`]) and
    /// logs the address (target `turnstile::sidecar`, field `addr`).
    pub async fn bind(config: SidecarConfig) -> io::Result<Self> {
        let listener = bind(&config).await?;
        let addr = listener.local_addr()?;
        let gate = config.web.clone().map(|w| {
            Arc::new(web::Gate::new(
                w,
                config.token.is_some(),
                config.health_needs_auth,
            ))
        });
        let scheme = match &gate {
            Some(g) if g.web.current().tls.is_some() => "https",
            _ => "http",
        };
        // Logged now: the port takes connections from here on (they wait in the backlog
        // until `serve`), and the line comes before anything the machines log.
        tracing::info!(
            target: "turnstile::sidecar",
            addr = %addr,
            read_only = config.read_only,
            token = config.token.is_some(),
            "sidecar listening on {scheme}://{addr}"
        );
        let basic_auth = gate
            .as_ref()
            .is_some_and(|g| !g.web.current().users.is_empty());
        if !addr.ip().is_loopback() && config.token.is_none() && !config.read_only && !basic_auth {
            tracing::warn!(
                target: "turnstile::sidecar",
                addr = %addr,
                "anyone who can reach {addr} can send events: set a token (--token or TURNSTILE_TOKEN) or use --read-only"
            );
        }
        Ok(Self {
            listener: Arc::new(listener),
            config,
            addr,
            gate,
        })
    }

    /// Answers on the port until [`Starting::finish`]: `/healthz` 200,
    /// `/readyz` 503 with `why()`, anything else 503 (see
    /// [`starting`]). For a host that waits for something before its
    /// machines can start (a job store that is not reachable yet).
    pub fn starting(&self, why: impl Fn() -> String + Send + Sync + 'static) -> Starting {
        let why: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(why);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(
            self.listener.clone(),
            move |req| {
                let why = why.clone();
                async move { starting::handle(&req, &*why) }
            },
            stop_rx,
            self.gate.clone(),
        ));
        Starting { stop, task }
    }

    /// The address it is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The job store `POST /jobs` adds to, when it opens after the bind.
    pub fn set_jobs(&mut self, jobs: Option<Arc<dyn turnstile_engine::store::JobStore>>) {
        self.config.jobs = jobs;
    }

    /// The configs `POST /-/reload` reloads (they need the engine, made after the bind).
    pub fn set_reloader(&mut self, reloader: Option<turnstile_engine::reload::ConfigReloader>) {
        self.config.reloader = reloader;
    }

    /// Starts accepting connections.
    pub fn serve(self, engine: Engine, telemetry: Arc<Telemetry>) -> Sidecar {
        let Self {
            listener,
            config,
            addr,
            gate,
        } = self;
        let state = Arc::new(state::State {
            engine,
            telemetry,
            addr,
            token: config.token,
            read_only: config.read_only,
            max_body_bytes: config.max_body_bytes,
            jobs: config.jobs,
            reloader: config.reloader,
            store_probe: Arc::default(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(
            listener,
            move |req| routes::handle(state.clone(), req),
            stop_rx,
            gate,
        ));
        Sidecar {
            addr,
            stop,
            task: Some(task),
        }
    }
}

/// The port answering while its host starts ([`Bound::starting`]).
#[derive(Debug)]
#[must_use = "finish it before serving"]
pub struct Starting {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Starting {
    /// Stops answering (requests in flight finish); connections made from now on wait in
    /// the backlog for [`Bound::serve`].
    pub async fn finish(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

/// Resolves once a stop is asked for (or the handle is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Accepts connections on `listener` and answers each request with `handle` until a stop
/// is asked for; then lets requests in flight finish (up to [`SHUTDOWN_GRACE`]). With a
/// `gate`, a connection speaks TLS when the web config says so, and each request passes
/// the gate first.
async fn accept_loop<H, F>(
    listener: Arc<TcpListener>,
    handle: H,
    mut stop: watch::Receiver<bool>,
    gate: Option<Arc<web::Gate>>,
) where
    H: Fn(hyper::Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = hyper::Response<response::Body>> + Send + 'static,
{
    let budget = conn::Budget::new(MAX_CONNECTIONS);
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            () = stopped(&mut stop) => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, keep serving.
                    tracing::warn!(target: "turnstile::sidecar", "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        let stop = stop.clone();
        let gate = gate.clone();
        budget.admit(|slot| {
            conns.spawn(async move {
                let progress = slot.progress();
                let io = conn::Tracked::new(stream, progress.clone(), WRITE_TIMEOUT);
                let _slot = slot;
                let tls = gate.as_ref().and_then(|g| g.web.current().tls.clone());
                let result = match tls {
                    None => connection(io, handle, stop, gate, progress).await,
                    Some(tls) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                        match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(io)).await {
                            Ok(Ok(mut io)) => {
                                web::tune_connection(io.get_mut().1);
                                connection(io, handle, stop, gate, progress).await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(target: "turnstile::sidecar", peer = %peer, "TLS handshake failed: {e}");
                                return;
                            }
                            Err(_) => return,
                        }
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(target: "turnstile::sidecar", peer = %peer, "connection ended: {e}");
                }
            })
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            target: "turnstile::sidecar",
            open = conns.len(),
            "requests still running after {SHUTDOWN_GRACE:?}; closing them"
        );
        conns.abort_all();
    }
}

/// Serves one connection's requests (plain or TLS) until it ends or a stop is asked for.
async fn connection<IO, H, F>(
    io: IO,
    handle: H,
    mut stop: watch::Receiver<bool>,
    gate: Option<Arc<web::Gate>>,
    progress: Arc<conn::Progress>,
) -> Result<(), hyper::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(hyper::Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = hyper::Response<response::Body>> + Send + 'static,
{
    let info = events::ConnInfo {
        progress,
        stop: stop.clone(),
    };
    let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        // What a stream needs of its connection (`GET /events`).
        req.extensions_mut().insert(info.clone());
        let handle = handle.clone();
        let gate = gate.clone();
        async move {
            let Some(gate) = gate else {
                return Ok::<_, Infallible>(handle(req).await);
            };
            let settings = gate.web.current();
            let mut answer = match gate.admit(&settings, &req).await {
                Ok(()) => handle(req).await,
                Err(refused) => refused,
            };
            for (name, value) in &settings.headers {
                answer.headers_mut().insert(name.clone(), value.clone());
            }
            Ok(answer)
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

//! `--web-config FILE`: TLS, basic auth and response headers from a web configuration file
//! in exporter-toolkit's format ([`file`]), and who may do what ([`Gate`]).
//!
//! **Re-reading.** The file and the certificate files it names are checked (their size,
//! modification time and inode, a few `stat` calls) at every new connection and every
//! request; when one changed, the file is read again. So a rotated certificate (cert-manager
//! swapping a Secret's files) is used from the next connection on, and a changed password
//! from the next request, without a restart. A reading that fails keeps the last good
//! settings and is logged at error once per change of the files (and counted in
//! [`WebConfig::failed_readings`]); the same error is not read again until a file changes.
//! A broken file at start is a usage error for the caller (exit 2).
//!
//! **Who may do what** ([`Gate::admit`]), once `basic_auth_users` is set: every request
//! needs valid basic credentials, except the health endpoints (`/healthz`, `/readyz`,
//! `/-/healthy`, `/-/ready`, `/healthz/machines`), which stay open for probes unless the
//! gate is told to close them; and writes (any method but `GET`/`HEAD`) need the bearer token instead when one
//! is set (the routes check it), since one `Authorization` header cannot carry both.

mod basic;
mod file;
mod tls;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use hyper::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};

pub use basic::{credentials, BasicAuth};
pub use file::{Settings, MAX_BCRYPT_COST};
pub use tls::{tune_connection, SEND_BUFFER};

use super::response::{ApiError, Body};

/// A bcrypt hash of `password` at `cost` (what `basic_auth_users` takes).
pub fn hash_password(password: &str, cost: u32) -> Result<String, String> {
    bcrypt::hash(password, cost).map_err(|e| e.to_string())
}

/// What identifies a version of a file.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// A web configuration file and its last good reading.
#[derive(Debug)]
pub struct WebConfig {
    path: PathBuf,
    state: Mutex<Loaded>,
    failed: AtomicU64,
}

#[derive(Debug)]
struct Loaded {
    settings: Arc<Settings>,
    stamps: Vec<Stamp>,
    /// The stamps of a reading that failed (not tried again until they change).
    refused: Option<Vec<Stamp>>,
}

impl WebConfig {
    /// Reads `path`; its error says what is wrong and where.
    pub fn load(path: &Path) -> Result<Arc<Self>, String> {
        let settings = file::read(path)?;
        let stamps = settings.files.iter().map(|f| stamp(f)).collect();
        Ok(Arc::new(Self {
            path: path.to_path_buf(),
            state: Mutex::new(Loaded {
                settings: Arc::new(settings),
                stamps,
                refused: None,
            }),
            failed: AtomicU64::new(0),
        }))
    }

    /// The settings now: read again when a file changed; the last good ones when the new
    /// reading fails.
    pub fn current(&self) -> Arc<Settings> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now: Vec<Stamp> = state.settings.files.iter().map(|f| stamp(f)).collect();
        if now == state.stamps {
            return state.settings.clone();
        }
        // The web config file itself may now name other certificate files: those are
        // stamped after the reading.
        match file::read(&self.path) {
            Ok(settings) => {
                state.stamps = settings.files.iter().map(|f| stamp(f)).collect();
                state.settings = Arc::new(settings);
                state.refused = None;
                tracing::info!(target: "turnstile::sidecar", file = %self.path.display(), "web config read again");
            }
            Err(e) => {
                if state.refused.as_ref() != Some(&now) {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(target: "turnstile::sidecar", file = %self.path.display(), "web config refused, the last good one stays: {e}");
                    state.refused = Some(now.clone());
                }
                // Until a file changes again, the failed reading is not repeated.
                state.stamps = now;
            }
        }
        state.settings.clone()
    }

    /// Readings refused since start.
    pub fn failed_readings(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// The endpoints probes use, open without credentials unless closed.
const HEALTH: [&str; 5] = [
    "/healthz",
    "/readyz",
    "/-/healthy",
    "/-/ready",
    "/healthz/machines",
];

/// Decides whether a request may go on, by the web config's users and the token.
#[derive(Debug)]
pub struct Gate {
    /// The web config.
    pub web: Arc<WebConfig>,
    /// A bearer token is configured (writes then need it instead of basic credentials).
    pub token_set: bool,
    /// The health endpoints need credentials too.
    pub close_health: bool,
    basic: BasicAuth,
}

impl Gate {
    /// A gate on `web`.
    pub fn new(web: Arc<WebConfig>, token_set: bool, close_health: bool) -> Self {
        Self {
            web,
            token_set,
            close_health,
            basic: BasicAuth::default(),
        }
    }

    /// `Ok` when the request may go on; otherwise the 401 to answer.
    pub async fn admit<B>(
        &self,
        settings: &Settings,
        req: &Request<B>,
    ) -> Result<(), Response<Body>> {
        if settings.users.is_empty() {
            return Ok(());
        }
        let path = req.uri().path();
        if !self.close_health && HEALTH.contains(&path) {
            return Ok(());
        }
        let write = !matches!(*req.method(), Method::GET | Method::HEAD);
        if write && self.token_set {
            return Ok(());
        }
        let header = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
        let message = match credentials(header) {
            Some((user, password)) => {
                if self.basic.check(&settings.users, &user, &password).await {
                    return Ok(());
                }
                "wrong user name or password"
            }
            None => "this server needs basic auth (`Authorization: Basic ...`)",
        };
        Err(ApiError::new(StatusCode::UNAUTHORIZED, message)
            .header(
                WWW_AUTHENTICATE,
                "Basic realm=\"turnstile\", charset=\"UTF-8\"",
            )
            .into_response())
    }
}

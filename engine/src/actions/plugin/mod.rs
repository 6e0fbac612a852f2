//! The plugin host: action types from shared libraries with a C ABI.
//!
//! A plugin exports four C functions (see `plugins/sdk/include/turnstile_plugin.h` and
//! `docs/plugins.md`). Loading one ([`PluginHost::load`], usually through
//! [`ActionRegistry::load_plugins`](crate::ActionRegistry::load_plugins)):
//!
//! 1. the file is read once and checked (`check.rs`: a complete ELF shared object for this
//!    machine, unchanged while it was read), so that a file cut short is refused instead of
//!    being mapped (which would be `SIGBUS`);
//! 2. what was checked is written to a private copy (a fresh 0700 directory) and the copy
//!    is opened, so that the original can be rebuilt or replaced while the engine runs; the
//!    copy and its directory are removed at once (the library stays mapped);
//! 3. `turnstile_plugin_abi_version()` is checked before anything else is called;
//! 4. the manifest is read and validated, and its action types are registered, so that
//!    configs using them validate.
//!
//! Each call runs on a blocking thread with the action's `timeout` (default 30 s). A call
//! that runs past it is reported as a timeout and its thread is left to finish (threads
//! cannot be stopped); a plugin with too many such calls still running is refused new
//! ones until they return. Every failure (a bad result, a panic, a hang) becomes an error
//! outcome: logged, counted (`errors_total`) and turned into the action's error event; the
//! engine keeps running.
//!
//! A library whose file changes is loaded again from a fresh copy and swapped in (checked
//! at most once per [`PluginHost::set_check_interval`], on the next call, or explicitly
//! with [`PluginHost::reload_changed`]). A new version that fails to load, or that drops
//! an action type the old one had, is refused and the old one keeps serving. Libraries are
//! never unloaded.

mod check;
mod library;

use std::collections::HashMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value as Json};

use crate::actions::{Action, ActionCx, ActionFactory, Built, Outcome, Params, Status, Step};
use crate::observe::{ErrorKind, ErrorReport, Observer};
use crate::runtime::template::JsonTemplate;

use library::Library;
pub use library::ABI_VERSION;

/// Parameters the host itself reads from every plugin action (they are passed on too).
pub const HOST_PARAMS: &[&str] = &["timeout", "success", "error", "timeout_event"];

/// Default time limit of one call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How many calls of one plugin may still be running past their timeout before new calls
/// are refused.
pub const MAX_STUCK_CALLS: usize = 8;

/// A changed file is swapped in only once it has not been modified for this long, so a
/// library still being written is not loaded.
const SETTLE: Duration = Duration::from_millis(200);

/// File name extension of shared libraries on this platform.
pub const LIBRARY_EXTENSION: &str = std::env::consts::DLL_EXTENSION;

/// Why a plugin could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// The path does not exist.
    #[error("plugin {}: no such file or directory", .path.display())]
    NotFound {
        /// The path.
        path: PathBuf,
    },
    /// Reading a directory or copying a file failed.
    #[error("plugin {}: {message}", .path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The file changed while it was being read (a copy or a build still writing it).
    #[error("plugin {}: the file changed while it was being read (still being written?); load it once it is complete", .path.display())]
    Changing {
        /// The file.
        path: PathBuf,
    },
    /// A directory holds no shared library.
    #[error("plugin directory {} holds no shared library (*.{LIBRARY_EXTENSION})", .path.display())]
    Empty {
        /// The directory.
        path: PathBuf,
    },
    /// The file is not a loadable shared library.
    #[error("plugin {}: not a loadable shared library: {message}", .path.display())]
    NotALibrary {
        /// The file.
        path: PathBuf,
        /// The loader's message.
        message: String,
    },
    /// A required function is not exported.
    #[error("plugin {}: missing symbol `{symbol}` (a Turnstile plugin exports turnstile_plugin_abi_version, _manifest, _invoke and _free; see docs/plugins.md): {message}", .path.display())]
    MissingSymbol {
        /// The file.
        path: PathBuf,
        /// The symbol.
        symbol: String,
        /// The loader's message.
        message: String,
    },
    /// The library speaks another ABI version.
    #[error("plugin {}: ABI version {found}, but this Turnstile speaks version {expected}: rebuild the plugin against a matching turnstile-plugin / turnstile_plugin.h", .path.display())]
    AbiMismatch {
        /// The file.
        path: PathBuf,
        /// What the library returned.
        found: u32,
        /// What the host speaks.
        expected: u32,
    },
    /// The manifest is unusable.
    #[error("plugin {}: bad manifest: {message}", .path.display())]
    BadManifest {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An action type is already provided by a built-in or another plugin.
    #[error("plugin {}: action type `{action}` is already provided by {other}; rename it in the plugin", .path.display())]
    Conflict {
        /// The file.
        path: PathBuf,
        /// The action type.
        action: String,
        /// Who provides it (`the built-in actions`, `plugin X (path)`).
        other: String,
    },
}

impl LoadError {
    /// The file or directory the error is about.
    pub fn path(&self) -> &Path {
        match self {
            LoadError::NotFound { path }
            | LoadError::Io { path, .. }
            | LoadError::Changing { path }
            | LoadError::Empty { path }
            | LoadError::NotALibrary { path, .. }
            | LoadError::MissingSymbol { path, .. }
            | LoadError::AbiMismatch { path, .. }
            | LoadError::BadManifest { path, .. }
            | LoadError::Conflict { path, .. } => path,
        }
    }
}

/// Why a call returned nothing usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No loaded plugin provides the action type.
    #[error("no loaded plugin provides action type `{0}`")]
    UnknownAction(String),
    /// `turnstile_plugin_invoke` returned a null pointer.
    #[error("returned a null pointer instead of a JSON result")]
    Null,
    /// The result is not UTF-8.
    #[error("returned text that is not UTF-8: {0}")]
    NotUtf8(String),
    /// The result is not JSON.
    #[error("returned text that is not JSON: {0}")]
    NotJson(String),
    /// The result is JSON of the wrong shape.
    #[error("returned JSON of the wrong shape: {0}")]
    BadShape(String),
    /// A parameter or context value could not be passed.
    #[error("cannot pass the call to the plugin: {0}")]
    BadInput(String),
    /// Too many calls are still running past their timeout.
    #[error(
        "{0} calls are still running past their timeout; new calls are refused until they return"
    )]
    Stuck(usize),
    /// The host thread running the call failed.
    #[error("the call's thread failed: {0}")]
    Thread(String),
}

/// What a loaded plugin is, for listings and the `turnstile_plugin_info` metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// The manifest's name.
    pub name: String,
    /// The manifest's version (of the copy currently serving calls).
    pub version: String,
    /// The library file as named (canonical path).
    pub path: PathBuf,
    /// The private copy the current version was loaded from (removed once loaded: the
    /// library stays mapped).
    pub loaded_from: PathBuf,
    /// The action types it provides.
    pub actions: Vec<String>,
}

/// A parsed, well-formed result of one call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PluginReply {
    /// The event to process next.
    pub event: Option<String>,
    /// Context updates.
    pub context: Map<String, Json>,
    /// A log line from the plugin.
    pub log: Option<String>,
    /// The error the plugin reported: `(type, message)`.
    pub error: Option<(String, String)>,
}

impl PluginReply {
    /// Reads `{"event", "context", "log"}` or `{"error": {"type", "message"}, ...}`.
    pub fn from_json(v: Json) -> Result<Self, CallError> {
        let Json::Object(mut m) = v else {
            return Err(CallError::BadShape(
                "expected a JSON object {\"event\", \"context\"} or {\"error\"}".into(),
            ));
        };
        let event = match m.remove("event") {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) if s.is_empty() => None,
            Some(Json::String(s)) => Some(s),
            Some(other) => {
                return Err(CallError::BadShape(format!(
                    "`event` must be a string or null, found {other}"
                )))
            }
        };
        let context = match m.remove("context") {
            None | Some(Json::Null) => Map::new(),
            Some(Json::Object(c)) => c,
            Some(_) => return Err(CallError::BadShape("`context` must be an object".into())),
        };
        let log = match m.remove("log") {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(s),
            Some(_) => return Err(CallError::BadShape("`log` must be a string".into())),
        };
        let error = match m.remove("error") {
            None | Some(Json::Null) => None,
            Some(Json::Object(e)) => {
                let kind = match e.get("type") {
                    Some(Json::String(s)) if !s.is_empty() => s.clone(),
                    _ => "error".to_owned(),
                };
                let message = match e.get("message") {
                    Some(Json::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                Some((kind, message))
            }
            Some(Json::String(s)) => Some(("error".to_owned(), s)),
            Some(_) => {
                return Err(CallError::BadShape(
                    "`error` must be an object {\"type\", \"message\"}".into(),
                ))
            }
        };
        Ok(Self {
            event,
            context,
            log,
            error,
        })
    }
}

/// Size, modification time and inode of a file: how a change is noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
    ino: u64,
}

fn fingerprint(path: &Path) -> std::io::Result<Fingerprint> {
    let m = std::fs::metadata(path)?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Ok(Fingerprint {
        len: m.len(),
        modified: m.modified().ok(),
        ino,
    })
}

/// What the host shares with every plugin it loaded.
struct Shared {
    counter: AtomicU64,
    observer: RwLock<Option<Arc<dyn Observer>>>,
    check_interval_ms: AtomicU64,
    epoch: Instant,
}

/// Largest library file loaded: far more than any plugin, and a bound on what a load reads
/// into memory.
pub const MAX_LIBRARY_BYTES: u64 = 1 << 30;

/// A private copy of a library file, checked before it is loaded. Its directory (mode 0700)
/// and the copy are removed when it is dropped, right after the copy is loaded: the loaded
/// library stays mapped, so nothing is left in the temporary directory, even after a crash.
struct PrivateCopy {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

/// Creates a private directory (mode 0700) for one copy, under `parent` or `$TMPDIR`.
fn private_dir(parent: Option<&Path>) -> std::io::Result<tempfile::TempDir> {
    let mut b = tempfile::Builder::new();
    b.prefix("turnstile-plugins-");
    #[cfg(unix)]
    b.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700));
    match parent {
        Some(parent) => b.tempdir_in(parent),
        None => b.tempdir(),
    }
}

impl Shared {
    /// Copies `original` to a fresh, unique path in a private directory, checks that it did
    /// not change while it was copied and that the copy is a complete shared library for
    /// this machine. Returns the copy and the file's fingerprint.
    fn copy_of(&self, original: &Path) -> Result<(PrivateCopy, Fingerprint), LoadError> {
        use std::io::Read as _;
        let io = |message: String| LoadError::Io {
            path: original.to_path_buf(),
            message,
        };
        let meta = std::fs::metadata(original).map_err(|e| io(e.to_string()))?;
        if !meta.is_file() {
            return Err(LoadError::NotALibrary {
                path: original.to_path_buf(),
                message: "not a regular file".into(),
            });
        }
        let before = fingerprint(original).map_err(|e| io(e.to_string()))?;
        if before.len > MAX_LIBRARY_BYTES {
            return Err(LoadError::NotALibrary {
                path: original.to_path_buf(),
                message: format!(
                    "the file has {} bytes, more than the {MAX_LIBRARY_BYTES} a plugin library may have",
                    before.len
                ),
            });
        }
        let parent = std::env::var_os("TURNSTILE_PLUGIN_COPY_DIR");
        let dir = private_dir(parent.as_deref().map(Path::new)).map_err(|e| {
            io(format!("cannot create a private directory for plugin copies: {e} (set TURNSTILE_PLUGIN_COPY_DIR to a writable directory)"))
        })?;
        // A path never used before in this process: the dynamic loader returns the library
        // already loaded from a path instead of opening the file again.
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let file = original
            .file_name()
            .map_or_else(|| "plugin".into(), |f| f.to_string_lossy().into_owned());
        let path = dir.path().join(format!("{n}-{file}"));
        let mut out = std::fs::OpenOptions::new();
        out.read(true).write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut out, 0o700);
        let copy = PrivateCopy { path, _dir: dir };
        let mut out = out
            .open(&copy.path)
            .map_err(|e| io(format!("cannot copy it to {}: {e}", copy.path.display())))?;
        let copied = std::fs::File::open(original)
            .and_then(|f| std::io::copy(&mut f.take(before.len + 1), &mut out))
            .map_err(|e| io(format!("cannot copy it to {}: {e}", copy.path.display())))?;
        let after = fingerprint(original).map_err(|e| io(e.to_string()))?;
        if before != after || copied != after.len {
            return Err(LoadError::Changing {
                path: original.to_path_buf(),
            });
        }
        // The copy is what gets loaded, and nobody else can write it (a new file in a
        // private directory): checked, it stays as checked.
        check::check_file(&out).map_err(|message| LoadError::NotALibrary {
            path: original.to_path_buf(),
            message,
        })?;
        Ok((copy, after))
    }

    /// Logs a failure and reports it to the observer.
    fn report(&self, message: &str) {
        tracing::warn!(target: "turnstile::plugin", "{message}");
        self.notify(message);
    }

    /// Reports a failure to the observer only.
    fn notify(&self, message: &str) {
        let obs = self
            .observer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(o) = obs {
            o.error(&ErrorReport {
                kind: ErrorKind::Plugin,
                machine: None,
                state: None,
                event: None,
                message,
            });
        }
    }
}

/// State of the change check of one library.
struct Watch {
    /// The file as it was when the serving copy was made.
    loaded: Fingerprint,
    /// A version that was refused (not tried again until the file changes again).
    rejected: Option<Fingerprint>,
}

/// One plugin library: the copy serving calls now, and how to notice a new version.
pub(crate) struct Slot {
    path: PathBuf,
    shared: Arc<Shared>,
    current: RwLock<Arc<Library>>,
    watch: Mutex<Watch>,
    next_check_ms: AtomicU64,
    stuck: AtomicUsize,
}

impl Slot {
    fn current(&self) -> Arc<Library> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn info(&self) -> PluginInfo {
        let lib = self.current();
        PluginInfo {
            name: lib.manifest.name.clone(),
            version: lib.manifest.version.clone(),
            path: self.path.clone(),
            loaded_from: lib.copy.clone(),
            actions: lib
                .manifest
                .actions
                .iter()
                .map(|a| a.name.clone())
                .collect(),
        }
    }

    /// Checks for a new version when the check interval has passed (cheap otherwise).
    fn maybe_reload(&self) {
        let now = u64::try_from(self.shared.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_check_ms.load(Ordering::Relaxed);
        if now < next {
            return;
        }
        let interval = self.shared.check_interval_ms.load(Ordering::Relaxed);
        if self
            .next_check_ms
            .compare_exchange(
                next,
                now.saturating_add(interval),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            self.reload_if_changed();
        }
    }

    /// Loads a changed file from a fresh copy and swaps it in. `None` when nothing changed
    /// (or the file is still being written).
    fn reload_if_changed(&self) -> Option<Result<PluginInfo, LoadError>> {
        let mut w = self.watch.lock().unwrap_or_else(PoisonError::into_inner);
        // A missing file (being replaced, or deleted) keeps the loaded version.
        let fp = fingerprint(&self.path).ok()?;
        if fp == w.loaded || Some(fp) == w.rejected {
            return None;
        }
        let settled = fp
            .modified
            .and_then(|m| m.elapsed().ok())
            .is_none_or(|age| age >= SETTLE);
        if !settled {
            return None;
        }
        let old = self.current();
        let mut read = fp;
        let result = self
            .shared
            .copy_of(&self.path)
            .and_then(|(copy, fp)| {
                read = fp;
                // The copy is removed once loaded (or refused): the library stays mapped.
                Library::load(&self.path, &copy.path)
            })
            .and_then(|lib| {
                let missing: Vec<&str> = old
                    .manifest
                    .actions
                    .iter()
                    .filter(|a| !lib.manifest.actions.iter().any(|b| b.name == a.name))
                    .map(|a| a.name.as_str())
                    .collect();
                if lib.manifest.name != old.manifest.name {
                    Err(LoadError::BadManifest {
                        path: self.path.clone(),
                        message: format!(
                            "the new version is plugin `{}`, not `{}`; restart to load another plugin",
                            lib.manifest.name, old.manifest.name
                        ),
                    })
                } else if !missing.is_empty() {
                    Err(LoadError::BadManifest {
                        path: self.path.clone(),
                        message: format!(
                            "the new version drops action type(s) {} that loaded configs may use",
                            missing.join(", ")
                        ),
                    })
                } else {
                    Ok(lib)
                }
            });
        match result {
            // Still being written: tried again on a later check, once it is complete.
            Err(LoadError::Changing { .. }) => None,
            Ok(lib) => {
                let lib = Arc::new(lib);
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = lib.clone();
                w.loaded = read;
                w.rejected = None;
                tracing::info!(
                    target: "turnstile::plugin",
                    plugin = %lib.manifest.name,
                    version = %lib.manifest.version,
                    path = %self.path.display(),
                    "plugin changed on disk: new version loaded from a fresh copy and swapped in"
                );
                drop(w);
                let obs = self
                    .shared
                    .observer
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                if let Some(o) = obs {
                    o.plugin_swapped(
                        &lib.manifest.name,
                        &lib.manifest.version,
                        &old.manifest.version,
                    );
                }
                Some(Ok(self.info()))
            }
            Err(e) => {
                w.rejected = Some(read);
                drop(w);
                self.shared.report(&format!(
                    "{e}; the loaded version {} keeps serving",
                    old.manifest.version
                ));
                Some(Err(e))
            }
        }
    }

    /// Runs one call on the current thread.
    fn call(
        &self,
        action: &CString,
        params: &CString,
        context: &CString,
    ) -> Result<PluginReply, CallError> {
        self.maybe_reload();
        let lib = self.current();
        let v = lib.call(action, params, context)?;
        PluginReply::from_json(v)
    }
}

/// Loads plugin libraries and keeps them; shared by every clone of an
/// [`ActionRegistry`](crate::ActionRegistry).
#[derive(Clone)]
pub struct PluginHost {
    shared: Arc<Shared>,
    state: Arc<Mutex<HostState>>,
}

#[derive(Default)]
struct HostState {
    /// Loaded libraries by canonical path.
    slots: Vec<Arc<Slot>>,
    /// Action type -> the library providing it.
    kinds: HashMap<String, Arc<Slot>>,
    /// Directories given with `--plugins`, where bare names in `plugins:` are looked up.
    dirs: Vec<PathBuf>,
}

impl Default for PluginHost {
    fn default() -> Self {
        Self {
            shared: Arc::new(Shared {
                counter: AtomicU64::new(0),
                observer: RwLock::new(None),
                check_interval_ms: AtomicU64::new(1000),
                epoch: Instant::now(),
            }),
            state: Arc::new(Mutex::new(HostState::default())),
        }
    }
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("plugins", &self.plugins())
            .finish()
    }
}

impl PluginHost {
    fn lock(&self) -> std::sync::MutexGuard<'_, HostState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends plugin failures that belong to no machine (a refused new version) to
    /// `observer` as [`ErrorKind::Plugin`] errors. Load failures are returned to the
    /// caller instead, who may pass them to [`PluginHost::report`].
    pub fn set_observer(&self, observer: Arc<dyn Observer>) {
        *self
            .shared
            .observer
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(observer);
    }

    /// Reports a load failure to the observer, if any (an `errors_total` sample). It is
    /// not logged: whoever loads plugins gets the error back and shows it.
    pub fn report(&self, error: &LoadError) {
        self.shared.notify(&error.to_string());
    }

    /// How often a library file is checked for a new version (default 1 s; checks happen
    /// on calls, so an idle plugin costs nothing).
    pub fn set_check_interval(&self, every: Duration) {
        let ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
        self.shared.check_interval_ms.store(ms, Ordering::Relaxed);
        for s in &self.lock().slots {
            s.next_check_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Every loaded plugin.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        self.lock().slots.iter().map(|s| s.info()).collect()
    }

    /// Checks every library file now and swaps in those that changed; returns what was
    /// swapped in or refused.
    pub fn reload_changed(&self) -> Vec<Result<PluginInfo, LoadError>> {
        let slots = self.lock().slots.clone();
        slots.iter().filter_map(|s| s.reload_if_changed()).collect()
    }

    /// The shared libraries a path names: the file itself, or every `*.so` (`.dylib`,
    /// `.dll`) of a directory, sorted.
    pub fn libraries(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => LoadError::NotFound {
                path: path.to_path_buf(),
            },
            _ => LoadError::Io {
                path: path.to_path_buf(),
                message: e.to_string(),
            },
        })?;
        if !meta.is_dir() {
            return Ok(vec![path.to_path_buf()]);
        }
        let io = |e: std::io::Error| LoadError::Io {
            path: path.to_path_buf(),
            message: format!("cannot read the directory: {e}"),
        };
        let mut libs = Vec::new();
        for entry in std::fs::read_dir(path).map_err(io)? {
            let p = entry.map_err(io)?.path();
            if p.extension().is_some_and(|e| e == LIBRARY_EXTENSION) && p.is_file() {
                libs.push(p);
            }
        }
        libs.sort();
        if libs.is_empty() {
            return Err(LoadError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(libs)
    }

    /// Remembers a `--plugins` directory: bare names in a config's `plugins:` are looked
    /// up there.
    pub fn add_search_dir(&self, dir: &Path) {
        let mut st = self.lock();
        if !st.dirs.iter().any(|d| d == dir) {
            st.dirs.push(dir.to_path_buf());
        }
    }

    /// Resolves an entry of a config's `plugins:` list: a path (relative to the config's
    /// directory), or a bare name such as `greet` looked up as `libgreet.so` / `greet.so`
    /// beside the config and in the `--plugins` directories.
    pub fn resolve(&self, entry: &str, config_dir: Option<&Path>) -> PathBuf {
        let given = Path::new(entry);
        let base = config_dir.unwrap_or(Path::new("."));
        let direct = if given.is_absolute() {
            given.to_path_buf()
        } else {
            base.join(given)
        };
        if direct.exists() || entry.contains(['/', '\\']) || given.extension().is_some() {
            return direct;
        }
        let mut dirs = vec![base.to_path_buf()];
        dirs.extend(self.lock().dirs.iter().cloned());
        for d in &dirs {
            for file in [
                format!(
                    "{}{entry}.{LIBRARY_EXTENSION}",
                    std::env::consts::DLL_PREFIX
                ),
                format!("{entry}.{LIBRARY_EXTENSION}"),
            ] {
                let p = d.join(file);
                if p.is_file() {
                    return p;
                }
            }
        }
        direct
    }

    /// Loads one library file (once: loading the same file again returns the same
    /// plugin) and claims its action types. `builtin` says which types are taken by
    /// built-in actions.
    pub(crate) fn load(
        &self,
        file: &Path,
        builtin: &dyn Fn(&str) -> bool,
    ) -> Result<(Arc<Slot>, PluginInfo), LoadError> {
        if !file.exists() {
            return Err(LoadError::NotFound {
                path: file.to_path_buf(),
            });
        }
        let path = file.canonicalize().map_err(|e| LoadError::Io {
            path: file.to_path_buf(),
            message: e.to_string(),
        })?;
        if let Some(s) = self.lock().slots.iter().find(|s| s.path == path) {
            return Ok((s.clone(), s.info()));
        }
        let (copy, fp) = self.shared.copy_of(&path)?;
        // The copy is removed once loaded (or refused): the library stays mapped.
        let lib = Library::load(&path, &copy.path)?;
        drop(copy);
        let mut st = self.lock();
        // Another thread may have loaded it meanwhile.
        if let Some(s) = st.slots.iter().find(|s| s.path == path) {
            return Ok((s.clone(), s.info()));
        }
        for a in &lib.manifest.actions {
            let other = if builtin(&a.name) {
                Some("the built-in actions".to_owned())
            } else {
                st.kinds.get(&a.name).map(|s| {
                    format!(
                        "plugin `{}` ({})",
                        s.current().manifest.name,
                        s.path.display()
                    )
                })
            };
            if let Some(other) = other {
                return Err(LoadError::Conflict {
                    path,
                    action: a.name.clone(),
                    other,
                });
            }
        }
        let slot = Arc::new(Slot {
            path,
            shared: self.shared.clone(),
            current: RwLock::new(Arc::new(lib)),
            watch: Mutex::new(Watch {
                loaded: fp,
                rejected: None,
            }),
            next_check_ms: AtomicU64::new(0),
            stuck: AtomicUsize::new(0),
        });
        for a in &slot.current().manifest.actions {
            st.kinds.insert(a.name.clone(), slot.clone());
        }
        st.slots.push(slot.clone());
        let info = slot.info();
        tracing::info!(
            target: "turnstile::plugin",
            plugin = %info.name,
            version = %info.version,
            path = %info.path.display(),
            actions = %info.actions.join(", "),
            "plugin loaded"
        );
        Ok((slot, info))
    }

    /// Calls a plugin action synchronously on this thread, with no time limit: for tests,
    /// benchmarks and embedders. Machines call through their actions instead (on blocking
    /// threads, with a timeout).
    pub fn call(
        &self,
        kind: &str,
        params: &Json,
        context: &Json,
    ) -> Result<PluginReply, CallError> {
        let slot = self
            .lock()
            .kinds
            .get(kind)
            .cloned()
            .ok_or_else(|| CallError::UnknownAction(kind.to_owned()))?;
        let c = |s: String| CString::new(s).map_err(|e| CallError::BadInput(e.to_string()));
        let action = c(kind.to_owned())?;
        let params = c(params.to_string())?;
        let context = c(context.to_string())?;
        slot.call(&action, &params, &context)
    }
}

/// Builds actions of one plugin action type.
pub(crate) struct PluginFactory {
    pub slot: Arc<Slot>,
    pub kind: String,
    /// Parameters the manifest declares, if it does.
    pub params: Option<Vec<String>>,
}

impl ActionFactory for PluginFactory {
    fn build(&self, p: &mut Params<'_>) -> Option<Built> {
        let timeout = p.seconds("timeout", Some(DEFAULT_TIMEOUT.as_secs_f64()));
        let success = p.event("success", None);
        let error = p.event("error", Some("error"))?;
        let timeout_event = p
            .event("timeout_event", None)
            .unwrap_or_else(|| error.clone());
        let all = p.take_all();
        if let Some(known) = &self.params {
            let mut unknown: Vec<&String> = all
                .keys()
                .filter(|k| {
                    !known.contains(k)
                        && !HOST_PARAMS.contains(&k.as_str())
                        && !super::params::COMMON.contains(&k.as_str())
                })
                .collect();
            unknown.sort();
            for k in unknown {
                let candidates = known
                    .iter()
                    .map(String::as_str)
                    .chain(HOST_PARAMS.iter().copied());
                let hint = match crate::config::diag::did_you_mean(k, candidates) {
                    Some(c) => format!("did you mean `{c}`?"),
                    None => {
                        let mut all: Vec<&str> = known.iter().map(String::as_str).collect();
                        all.extend(HOST_PARAMS);
                        format!("`{}` accepts: {}", self.kind, all.join(", "))
                    }
                };
                p.warn(k, format!("unknown parameter `{k}` is ignored"), Some(hint));
            }
        }
        let template = match JsonTemplate::compile(&Json::Object(all.clone())) {
            Ok(t) => t,
            Err(e) => {
                p.error("params", e, None);
                return None;
            }
        };
        let timeout = timeout?;
        let kind_c = match CString::new(self.kind.clone()) {
            Ok(c) => c,
            Err(e) => {
                p.error("type", e.to_string(), None);
                return None;
            }
        };
        let mut emits = vec![
            success.as_deref().unwrap_or("success").to_owned(),
            error.to_string(),
            timeout_event.to_string(),
        ];
        emits.sort();
        emits.dedup();
        Some(Built {
            emits,
            action: Arc::new(PluginAction {
                slot: self.slot.clone(),
                kind: self.kind.clone().into(),
                kind_c: Arc::new(kind_c),
                params: template,
                timeout,
                error,
                timeout_event,
            }),
            waits: false,
        })
    }
}

/// One plugin action of a config.
struct PluginAction {
    slot: Arc<Slot>,
    kind: Arc<str>,
    kind_c: Arc<CString>,
    params: JsonTemplate,
    timeout: Duration,
    error: Arc<str>,
    timeout_event: Arc<str>,
}

/// A call's progress, shared by the waiting machine and the blocking thread.
const RUNNING: u8 = 0;
const FINISHED: u8 = 1;
const ABANDONED: u8 = 2;

impl Action for PluginAction {
    fn run(&self, cx: &mut ActionCx<'_>) -> Step {
        let scope = cx.scope();
        let params = self.params.render(&scope).to_string();
        let context = serde_json::to_string(&*cx.context).unwrap_or_else(|_| "{}".to_owned());
        let plugin = self.slot.current().manifest.name.clone();
        let fail = |kind: ErrorKind, msg: String, event: Arc<str>| {
            Outcome::error(&self.kind, format!("plugin `{plugin}`: {msg}"), Some(event))
                .with_kind(kind)
        };
        let (params, context) = match (CString::new(params), CString::new(context)) {
            (Ok(p), Ok(c)) => (p, c),
            (Err(e), _) | (_, Err(e)) => {
                return Step::Done(fail(
                    ErrorKind::Plugin,
                    CallError::BadInput(e.to_string()).to_string(),
                    self.error.clone(),
                ))
            }
        };
        let stuck = self.slot.stuck.load(Ordering::Relaxed);
        if stuck >= MAX_STUCK_CALLS {
            return Step::Done(fail(
                ErrorKind::Plugin,
                CallError::Stuck(stuck).to_string(),
                self.error.clone(),
            ));
        }
        let slot = self.slot.clone();
        let kind = self.kind.clone();
        let kind_c = self.kind_c.clone();
        let timeout = self.timeout;
        let (error, timeout_event) = (self.error.clone(), self.timeout_event.clone());
        let machine = cx.machine.to_owned();
        Step::Wait(Box::pin(async move {
            let progress = Arc::new(AtomicU8::new(RUNNING));
            let on_thread = (slot.clone(), progress.clone());
            let handle = tokio::task::spawn_blocking(move || {
                let (slot, progress) = on_thread;
                let r = slot.call(&kind_c, &params, &context);
                if progress.swap(FINISHED, Ordering::AcqRel) == ABANDONED {
                    slot.stuck.fetch_sub(1, Ordering::Relaxed);
                }
                r
            });
            let fail = |kind_: ErrorKind, msg: String, event: Arc<str>| {
                Outcome::error(&kind, format!("plugin `{plugin}`: {msg}"), Some(event))
                    .with_kind(kind_)
            };
            let result = match tokio::time::timeout(timeout, handle).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(CallError::Thread(e.to_string())),
                Err(_) => {
                    if progress.swap(ABANDONED, Ordering::AcqRel) == RUNNING {
                        slot.stuck.fetch_add(1, Ordering::Relaxed);
                    }
                    let msg = format!(
                        "action `{kind}` did not return within {} s (the call is left to finish on its thread and its result will be dropped)",
                        timeout.as_secs_f64()
                    );
                    let mut o = fail(ErrorKind::ActionTimeout, msg, timeout_event);
                    if let Status::Error(m) = &o.status {
                        o.status = Status::Timeout(m.clone());
                    }
                    return o;
                }
            };
            match result {
                Err(e) => fail(ErrorKind::Plugin, format!("action `{kind}` {e}"), error),
                Ok(reply) => {
                    if let Some(line) = &reply.log {
                        tracing::info!(target: "turnstile::plugin", machine = %machine, plugin = %plugin, action = %kind, "{line}");
                    }
                    let PluginReply {
                        event,
                        context,
                        log,
                        error: failure,
                    } = reply;
                    let mut o = match failure {
                        None => Outcome::ok(event.map(Arc::from)),
                        Some((etype, message)) => {
                            let ek = if etype == "panic" {
                                ErrorKind::Plugin
                            } else {
                                ErrorKind::Action
                            };
                            fail(
                                ek,
                                format!("{etype}: {message}"),
                                event.map_or(error, Arc::from),
                            )
                        }
                    };
                    o.context.extend(context);
                    o.output = log;
                    o
                }
            }
        }))
    }
}

/// The action types of a library, with their declared parameters.
pub(crate) fn slot_actions(slot: &Slot) -> Vec<(String, Option<Vec<String>>)> {
    slot.current()
        .manifest
        .actions
        .iter()
        .map(|a| (a.name.clone(), a.params.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    #[cfg(unix)]
    #[test]
    fn copies_go_to_a_private_directory() {
        use std::os::unix::fs::PermissionsExt as _;
        let parent = tempfile::tempdir().expect("tempdir");
        let dir = super::private_dir(Some(parent.path())).expect("private dir");
        let mode = std::fs::metadata(dir.path())
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(!path.exists());
    }
}

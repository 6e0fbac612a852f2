//! Config hot reload (`turnstile run --watch`).
//!
//! Each config's parent directory is watched (non-recursively) through `notify`, with
//! `notify-debouncer-full` merging the bursts of events one save makes. Watching the
//! directory, not the file, is what catches every real writer: an editor that writes a
//! temporary file and renames it over the config (the watched inode is gone), a plain
//! truncate-and-write, and the kubelet updating a ConfigMap volume (it writes a new
//! timestamped directory, points a `..data_tmp` symlink at it, renames that onto `..data`
//! and removes the old directory; the config path is a symlink through `..data`, which
//! reading the path follows).
//!
//! Any event in a watched directory, and a periodic re-hash that backs up missed
//! notifications, leads to the same check for every config: read the file once, compare
//! the hash of its bytes with the last one seen, and only when it differs parse and
//! validate it with the same action registry (plugins included) the run started with.
//!
//! - A valid config is handed to [`Engine::reload`]: the running machine swaps its
//!   definition between two events (see there for what happens to its state, context,
//!   timers and a waiting action); a machine whose `metadata.machine_name` changed is a
//!   new machine: it starts, and the one of the old name stops ([`StopReason::Removed`]).
//!   The observer hears `config_reloaded`; an info line is logged.
//! - An invalid config never replaces a good one: the old definition keeps running, the
//!   observer hears `config_rejected` with every error (line and column), and the same goes
//!   to the log as a warning. The same bad content is reported once, not at every re-hash.
//! - A file that disappears stops nothing: the kubelet and some editors remove a file for a
//!   moment; the machine keeps running and the next content that appears is checked.
//!
//!
//! The same check also runs on demand, for every config at once and whether or not their
//! content changed: [`ConfigReloader::reload_all`] is what `SIGHUP` and the sidecar's
//! `POST /-/reload` call (with or without `--watch`). It answers a [`ReloadReport`], one
//! entry per config: reloaded, unchanged (the content running already), or refused with its
//! diagnostics. The watcher and these calls share one [`ConfigReloader`] (behind a lock),
//! so they never check the same file at the same time.
//!
//! Every reload (a watcher pass that found a change, or a `reload_all`) ends with the
//! observer's `config_reload_finished`: successful when every config's latest content is
//! the one running (a file refused earlier and not fixed since still counts as a failure).
//!
//! [`StopReason::Removed`]: crate::observe::StopReason::Removed

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use tokio::sync::mpsc;

use crate::actions::ActionRegistry;
use crate::config::{self, Diagnostic, Severity};
use crate::runtime::def::MachineDef;
use crate::runtime::engine::{Engine, ReloadOutcome};

/// Default time the debouncer waits for a burst of events to end.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);
/// Default period of the re-hash that backs up missed notifications.
pub const DEFAULT_RESCAN: Duration = Duration::from_secs(2);

/// How the watcher behaves.
#[derive(Debug, Clone, Copy)]
pub struct WatchOptions {
    /// Events closer together than this are handled once.
    pub debounce: Duration,
    /// Every config is re-hashed this often even without notifications.
    pub rescan: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            debounce: DEFAULT_DEBOUNCE,
            rescan: DEFAULT_RESCAN,
        }
    }
}

/// A config file whose machine runs, to be watched.
#[derive(Debug, Clone)]
pub struct WatchedConfig {
    /// The file, as given on the command line.
    pub path: PathBuf,
    /// A name that overrides `metadata.machine_name` (`--machine-name`).
    pub rename: Option<String>,
    /// The definition running now (its hash and machine name are the starting point).
    pub def: Arc<MachineDef>,
}

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The file watcher could not be created or a directory could not be watched.
    #[error("cannot watch {}: {source}", dir.display())]
    Watch {
        /// The directory.
        dir: PathBuf,
        /// What `notify` said.
        source: notify::Error,
    },
    /// Called outside a Tokio runtime.
    #[error("the config watcher must start inside a Tokio runtime")]
    NoRuntime,
}

/// A running watcher; dropping it stops watching.
pub struct ConfigWatcher {
    task: tokio::task::JoinHandle<()>,
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
}

impl std::fmt::Debug for ConfigWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigWatcher").finish_non_exhaustive()
    }
}

impl Drop for ConfigWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The directory to watch for a config path (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The hash the watcher compares: the same as [`MachineDef::content_hash`] for UTF-8 text.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    match std::str::from_utf8(bytes) {
        Ok(t) => config::content_hash(t),
        Err(_) => config::content_hash(&String::from_utf8_lossy(bytes)) ^ 1,
    }
}

/// Starts watching `configs` and reloading their machines in `engine`. Configs are checked
/// with `registry`, the one the run loaded them with.
pub fn watch(
    engine: Engine,
    registry: ActionRegistry,
    configs: Vec<WatchedConfig>,
    options: WatchOptions,
) -> Result<ConfigWatcher, WatchError> {
    ConfigReloader::new(engine, registry, configs).watch(options)
}

/// The configs a run loaded, ready to be reloaded: by the watcher ([`ConfigReloader::watch`])
/// and on demand ([`ConfigReloader::reload_all`]). Cloning it gives another handle to the
/// same configs.
#[derive(Clone)]
pub struct ConfigReloader {
    inner: Arc<tokio::sync::Mutex<Reloader>>,
}

impl std::fmt::Debug for ConfigReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigReloader").finish_non_exhaustive()
    }
}

/// What one [`ConfigReloader::reload_all`] did, one entry per config in command-line order.
#[derive(Debug, Clone)]
pub struct ReloadReport {
    /// Each config and what became of it.
    pub configs: Vec<ConfigReload>,
}

impl ReloadReport {
    /// True when no config was refused.
    pub fn is_success(&self) -> bool {
        !self
            .configs
            .iter()
            .any(|c| matches!(c.outcome, ReloadResult::Rejected { .. }))
    }
}

/// One config of a [`ReloadReport`].
#[derive(Debug, Clone)]
pub struct ConfigReload {
    /// The file, as given on the command line.
    pub path: PathBuf,
    /// The machine the file runs after the reload (the old one when it was refused).
    pub machine: Arc<str>,
    /// What happened.
    pub outcome: ReloadResult,
}

/// What became of one config in a reload.
#[derive(Debug, Clone)]
pub enum ReloadResult {
    /// The new content runs; the text says what happened to the machine (as logged).
    Reloaded(String),
    /// The content is the one running already: nothing was swapped.
    Unchanged,
    /// Refused; the previous config keeps running. `diagnostics` are the errors with their
    /// line and column, when the config was read and checked; `message` says it all in one
    /// text (also what the log and the observer get).
    Rejected {
        /// Every error, one per line.
        message: String,
        /// The errors found in the config (empty when it was not the content that failed,
        /// e.g. a machine name already in use).
        diagnostics: Vec<Diagnostic>,
    },
}

impl ConfigReloader {
    /// The configs `configs` whose machines run in `engine`, checked with `registry` (the
    /// one the run loaded them with). Nothing is read until a reload.
    pub fn new(engine: Engine, registry: ActionRegistry, configs: Vec<WatchedConfig>) -> Self {
        let files = configs
            .into_iter()
            .map(|c| File {
                hash: Some(c.def.content_hash),
                running: c.def.content_hash,
                rejected: false,
                machine: c.def.name.clone(),
                path: c.path,
                rename: c.rename,
            })
            .collect();
        Self {
            inner: Arc::new(tokio::sync::Mutex::new(Reloader {
                engine,
                registry: Arc::new(registry),
                files,
            })),
        }
    }

    /// Reads and checks every config now, changed or not, and swaps in each valid one whose
    /// content is not the one running; a refused one leaves its machine as it is. Waits for
    /// a watcher pass in progress to end first.
    pub async fn reload_all(&self) -> ReloadReport {
        let mut r = self.inner.lock().await;
        let mut configs = Vec::with_capacity(r.files.len());
        for i in 0..r.files.len() {
            if let Some(c) = r.check(i, true).await {
                configs.push(c);
            }
        }
        r.finished();
        ReloadReport { configs }
    }

    /// Starts watching the configs' directories, reloading what changes.
    pub fn watch(&self, options: WatchOptions) -> Result<ConfigWatcher, WatchError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| WatchError::NoRuntime)?;
        let (tx, rx) = mpsc::unbounded_channel::<()>();
        let mut debouncer = new_debouncer(
            options.debounce,
            None,
            move |res: DebounceEventResult| match res {
                Ok(events) => {
                    if !events.is_empty() {
                        let _ = tx.send(());
                    }
                }
                Err(errors) => {
                    for e in errors {
                        tracing::warn!(target: "turnstile::reload", "file watcher: {e}");
                    }
                    // Something may have been missed: check now rather than at the next re-hash.
                    let _ = tx.send(());
                }
            },
        )
        .map_err(|source| WatchError::Watch {
            dir: PathBuf::from("."),
            source,
        })?;
        let dirs: BTreeSet<PathBuf> = match self.inner.try_lock() {
            Ok(r) => r.files.iter().map(|f| parent_dir(&f.path)).collect(),
            // Only a reload in progress holds the lock; watching starts before any.
            Err(_) => BTreeSet::new(),
        };
        for dir in dirs {
            debouncer
                .watch(&dir, RecursiveMode::NonRecursive)
                .map_err(|source| WatchError::Watch {
                    dir: dir.clone(),
                    source,
                })?;
            tracing::info!(
                target: "turnstile::reload",
                dir = %dir.display(),
                "watching for config changes"
            );
        }
        let task = handle.spawn(watch_loop(self.inner.clone(), rx, options.rescan));
        Ok(ConfigWatcher {
            task,
            _debouncer: debouncer,
        })
    }
}

async fn watch_loop(
    reloader: Arc<tokio::sync::Mutex<Reloader>>,
    mut rx: mpsc::UnboundedReceiver<()>,
    rescan: Duration,
) {
    let mut tick = tokio::time::interval(rescan.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            m = rx.recv() => {
                if m.is_none() {
                    return;
                }
                // One check covers every notification queued so far.
                while rx.try_recv().is_ok() {}
            }
            // The first tick is at once: a change made between loading and watching
            // is caught too.
            _ = tick.tick() => {}
        }
        let mut r = reloader.lock().await;
        let mut changed = false;
        for i in 0..r.files.len() {
            changed |= r.check(i, false).await.is_some();
        }
        if changed {
            r.finished();
        }
    }
}

struct File {
    path: PathBuf,
    rename: Option<String>,
    /// Hash of the last content seen (accepted or rejected); `None`: check it next time.
    hash: Option<u64>,
    /// Hash of the content running.
    running: u64,
    /// The last content seen was refused.
    rejected: bool,
    /// The machine this file runs now.
    machine: Arc<str>,
}

struct Reloader {
    engine: Engine,
    registry: Arc<ActionRegistry>,
    files: Vec<File>,
}

impl Reloader {
    /// Tells the observer a reload ended: successful when no config's latest content was
    /// refused.
    fn finished(&self) {
        if let Some(o) = self.engine.observer() {
            o.config_reload_finished(!self.files.iter().any(|f| f.rejected));
        }
    }

    /// Checks config `i`. Without `force` (the watcher), only content that differs from
    /// the last seen is checked and a file that is gone is skipped (`None`: nothing
    /// happened). With `force` (an explicit reload), every file is read and checked: one
    /// whose content runs already is [`ReloadResult::Unchanged`], a missing one is refused.
    async fn check(&mut self, i: usize, force: bool) -> Option<ConfigReload> {
        let path = self.files[i].path.clone();
        let bytes = match config::read_config(&path) {
            Ok(b) => b,
            Err(e) if e.kind == std::io::ErrorKind::NotFound && !force => {
                tracing::debug!(
                    target: "turnstile::reload",
                    path = %path.display(),
                    "config file is gone for now; its machine keeps running"
                );
                return None;
            }
            Err(e) => {
                let loaded = e.into_loaded(&path);
                let diagnostics: Vec<Diagnostic> = loaded.errors().cloned().collect();
                let msg = join(&diagnostics);
                let hash = config::content_hash(&msg);
                if force {
                    // Checked again next time, whatever the file then holds.
                    self.files[i].hash = None;
                } else if self.files[i].hash == Some(hash) {
                    return None;
                } else {
                    self.files[i].hash = Some(hash);
                }
                return Some(self.reject(i, msg, diagnostics));
            }
        };
        let hash = hash_bytes(&bytes);
        if self.files[i].hash == Some(hash) && !force {
            return None;
        }
        self.files[i].hash = Some(hash);
        if force && hash == self.files[i].running {
            self.files[i].rejected = false;
            return Some(ConfigReload {
                path,
                machine: self.files[i].machine.clone(),
                outcome: ReloadResult::Unchanged,
            });
        }
        let registry = self.registry.clone();
        let p = path.clone();
        let loaded =
            match tokio::task::spawn_blocking(move || config::load_bytes(bytes, &p, &registry))
                .await
            {
                Ok(l) => l,
                Err(e) => {
                    return Some(self.reject(
                        i,
                        format!("loading the config failed: {e}"),
                        Vec::new(),
                    ));
                }
            };
        let Some(def) = loaded.def.clone() else {
            let diagnostics: Vec<Diagnostic> = loaded.errors().cloned().collect();
            let text = join(&diagnostics);
            return Some(self.reject(i, text, diagnostics));
        };
        for w in loaded.warnings() {
            tracing::warn!(target: "turnstile::reload", "{w}");
        }
        let def = match &self.files[i].rename {
            Some(n) => Arc::new(def.renamed(n)),
            None => def,
        };
        let old = self.files[i].machine.clone();
        if def.name != old {
            if let Some(other) = self
                .files
                .iter()
                .find(|f| f.machine == def.name && f.path != path)
            {
                let msg = format!(
                    "machine name `{}` is already used by {}; choose another `metadata.machine_name`",
                    def.name,
                    other.path.display()
                );
                return Some(self.reject(i, msg, Vec::new()));
            }
        }
        let outcome = match self.engine.reload(def.clone()).await {
            Ok(o) => o,
            Err(e) => {
                return Some(self.reject(i, format!("cannot run the new config: {e}"), Vec::new()));
            }
        };
        if def.name != old && self.engine.stop_machine(&old).await {
            tracing::info!(
                target: "turnstile::reload",
                machine = %old,
                path = %path.display(),
                "machine stopped: its config now names machine `{}`",
                def.name
            );
        }
        let file = &mut self.files[i];
        file.machine = def.name.clone();
        file.running = hash;
        file.rejected = false;
        if let Some(o) = self.engine.observer() {
            o.config_reloaded(&path, &[&def.name]);
        }
        let what = match &outcome {
            ReloadOutcome::Updated { state, .. } => format!("stays in state `{state}`"),
            ReloadOutcome::StateRemoved { removed, state, .. } => {
                format!("its state `{removed}` was removed: now in `{state}`")
            }
            ReloadOutcome::Started { .. } => "started".to_owned(),
            ReloadOutcome::Standby { .. } => {
                "a singleton on standby here: runs it when it takes over".to_owned()
            }
        };
        tracing::info!(
            target: "turnstile::reload",
            path = %path.display(),
            machine = %def.name,
            hash = format_args!("{:016x}", def.content_hash),
            "config reloaded: machine {what}"
        );
        Some(ConfigReload {
            path,
            machine: def.name.clone(),
            outcome: ReloadResult::Reloaded(format!("machine {what}")),
        })
    }

    /// Refuses config `i`'s new content: logged, told to the observer, marked refused.
    fn reject(&mut self, i: usize, message: String, diagnostics: Vec<Diagnostic>) -> ConfigReload {
        let file = &mut self.files[i];
        file.rejected = true;
        let path = file.path.clone();
        tracing::warn!(
            target: "turnstile::reload",
            path = %path.display(),
            "config change rejected, the previous config keeps running:\n{message}"
        );
        if let Some(o) = self.engine.observer() {
            o.config_rejected(&path, &message);
        }
        ConfigReload {
            path,
            machine: file.machine.clone(),
            outcome: ReloadResult::Rejected {
                message,
                diagnostics,
            },
        }
    }
}

/// Every diagnostic as [`short_diagnostic`], one per line.
fn join(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(short_diagnostic)
        .collect::<Vec<_>>()
        .join("\n")
}

/// `LINE:COLUMN: error[code]: message (hint: ...)`: the file's path is said once, by
/// whoever shows the message.
fn short_diagnostic(d: &Diagnostic) -> String {
    let sev = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let mut s = format!("{}: {sev}[{}]: {}", d.loc, d.code, d.message);
    if let Some(h) = &d.hint {
        s.push_str(" (hint: ");
        s.push_str(h);
        s.push(')');
    }
    s
}

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
    let handle = tokio::runtime::Handle::try_current().map_err(|_| WatchError::NoRuntime)?;
    let (tx, rx) = mpsc::unbounded_channel::<()>();
    let mut debouncer =
        new_debouncer(
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
    let dirs: BTreeSet<PathBuf> = configs.iter().map(|c| parent_dir(&c.path)).collect();
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
    let files = configs
        .into_iter()
        .map(|c| File {
            hash: c.def.content_hash,
            machine: c.def.name.clone(),
            path: c.path,
            rename: c.rename,
        })
        .collect();
    let task = handle.spawn(
        Reloader {
            engine,
            registry: Arc::new(registry),
            files,
        }
        .run(rx, options.rescan),
    );
    Ok(ConfigWatcher {
        task,
        _debouncer: debouncer,
    })
}

struct File {
    path: PathBuf,
    rename: Option<String>,
    /// Hash of the last content seen (accepted or rejected).
    hash: u64,
    /// The machine this file runs now.
    machine: Arc<str>,
}

struct Reloader {
    engine: Engine,
    registry: Arc<ActionRegistry>,
    files: Vec<File>,
}

impl Reloader {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<()>, rescan: Duration) {
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
            for i in 0..self.files.len() {
                self.check(i).await;
            }
        }
    }

    async fn check(&mut self, i: usize) {
        let path = self.files[i].path.clone();
        let bytes = match config::read_config(&path) {
            Ok(b) => b,
            Err(e) if e.kind == std::io::ErrorKind::NotFound => {
                tracing::debug!(
                    target: "turnstile::reload",
                    path = %path.display(),
                    "config file is gone for now; its machine keeps running"
                );
                return;
            }
            Err(e) => {
                let msg = e
                    .into_loaded(&path)
                    .errors()
                    .map(short_diagnostic)
                    .collect::<Vec<_>>()
                    .join("\n");
                let hash = config::content_hash(&msg);
                if self.files[i].hash != hash {
                    self.files[i].hash = hash;
                    self.reject(&path, &msg);
                }
                return;
            }
        };
        let hash = hash_bytes(&bytes);
        if hash == self.files[i].hash {
            return;
        }
        self.files[i].hash = hash;
        let registry = self.registry.clone();
        let p = path.clone();
        let loaded =
            match tokio::task::spawn_blocking(move || config::load_bytes(bytes, &p, &registry))
                .await
            {
                Ok(l) => l,
                Err(e) => {
                    self.reject(&path, &format!("loading the config failed: {e}"));
                    return;
                }
            };
        let Some(def) = loaded.def.clone() else {
            let text = loaded
                .errors()
                .map(short_diagnostic)
                .collect::<Vec<_>>()
                .join("\n");
            self.reject(&path, &text);
            return;
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
                self.reject(&path, &msg);
                return;
            }
        }
        let outcome = match self.engine.reload(def.clone()).await {
            Ok(o) => o,
            Err(e) => {
                self.reject(&path, &format!("cannot run the new config: {e}"));
                return;
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
        self.files[i].machine = def.name.clone();
        if let Some(o) = self.engine.observer() {
            o.config_reloaded(&path, &[&def.name]);
        }
        let what = match &outcome {
            ReloadOutcome::Updated { state, .. } => format!("stays in state `{state}`"),
            ReloadOutcome::StateRemoved { removed, state, .. } => {
                format!("its state `{removed}` was removed: now in `{state}`")
            }
            ReloadOutcome::Started { .. } => "started".to_owned(),
        };
        tracing::info!(
            target: "turnstile::reload",
            path = %path.display(),
            machine = %def.name,
            hash = format_args!("{:016x}", def.content_hash),
            "config reloaded: machine {what}"
        );
    }

    fn reject(&self, path: &Path, message: &str) {
        tracing::warn!(
            target: "turnstile::reload",
            path = %path.display(),
            "config change rejected, the previous config keeps running:\n{message}"
        );
        if let Some(o) = self.engine.observer() {
            o.config_rejected(path, message);
        }
    }
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

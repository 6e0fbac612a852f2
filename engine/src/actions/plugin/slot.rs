//! One plugin library (a [`Slot`]): the copy serving calls now, the change check and the hot
//! swap.
//!
//! A slot is checked for a new version at most once per check interval, on a call (or
//! explicitly through the host). A changed file that has settled is loaded from a fresh
//! private copy (`copy.rs`) and swapped in; one that fails to load, names another plugin
//! or drops an action type is refused, and the old version keeps serving. What the slots
//! of one host share (the copy counter, the observer, the check interval) is [`Shared`].
//! The host (`host.rs`) and the actions (`action.rs`, `call.rs`) hold slots; this file
//! knows nothing of them.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::observe::{ErrorKind, ErrorReport, Observer};

use super::copy::{self, fingerprint, Fingerprint, PrivateCopy};
use super::library::Library;
use super::{CallError, LoadError, PluginInfo, PluginReply};

/// A changed file is swapped in only once it has not been modified for this long, so a
/// library still being written is not loaded.
const SETTLE: Duration = Duration::from_millis(200);

/// What the host shares with every plugin it loaded.
pub(super) struct Shared {
    pub(super) counter: AtomicU64,
    pub(super) observer: RwLock<Option<Arc<dyn Observer>>>,
    pub(super) check_interval_ms: AtomicU64,
    pub(super) epoch: Instant,
}

impl Shared {
    /// A private, checked copy of `original` (see `copy.rs`), numbered by this host.
    pub(super) fn copy_of(&self, original: &Path) -> Result<(PrivateCopy, Fingerprint), LoadError> {
        copy::copy_of(&self.counter, original)
    }

    /// Logs a failure and reports it to the observer.
    pub(super) fn report(&self, message: &str) {
        tracing::warn!(target: "turnstile::plugin", "{message}");
        self.notify(message);
    }

    /// Reports a failure to the observer only.
    pub(super) fn notify(&self, message: &str) {
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
pub(super) struct Watch {
    /// The file as it was when the serving copy was made.
    pub(super) loaded: Fingerprint,
    /// A version that was refused (not tried again until the file changes again).
    pub(super) rejected: Option<Fingerprint>,
}

/// One plugin library: the copy serving calls now, and how to notice a new version.
pub(crate) struct Slot {
    pub(super) path: PathBuf,
    pub(super) shared: Arc<Shared>,
    pub(super) current: RwLock<Arc<Library>>,
    pub(super) watch: Mutex<Watch>,
    pub(super) next_check_ms: AtomicU64,
    pub(super) stuck: AtomicUsize,
}

impl Slot {
    pub(super) fn current(&self) -> Arc<Library> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn info(&self) -> PluginInfo {
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
    pub(super) fn reload_if_changed(&self) -> Option<Result<PluginInfo, LoadError>> {
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
    pub(super) fn call(
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

/// The action types of a library, with their declared parameters.
pub(crate) fn slot_actions(slot: &Slot) -> Vec<(String, Option<Vec<String>>)> {
    slot.current()
        .manifest
        .actions
        .iter()
        .map(|a| (a.name.clone(), a.params.clone()))
        .collect()
}

//! The plugin host ([`PluginHost`]): which libraries are loaded, which action types they
//! provide, and where bare plugin names are looked up.
//!
//! The host is the registry of slots (`slot.rs`), shared by every clone of an
//! [`ActionRegistry`](crate::ActionRegistry): loading a file twice returns the same slot,
//! and an action type is claimed by one library only.

use std::collections::HashMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::observe::Observer;

use super::library::Library;
use super::slot::{Shared, Slot, Watch};
use super::{CallError, LoadError, PluginInfo, PluginReply, LIBRARY_EXTENSION};

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
    /// `observer` as [`crate::error_kind::ErrorKind::Plugin`] errors. Load failures are returned to the
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

//! Actions: what a machine does when it enters a state or takes a transition.
//!
//! An action is built once from its YAML parameters (so bad parameters are config errors,
//! not run-time surprises) and run many times. Quick actions finish inside [`Action::run`];
//! actions that wait (a command, a sleep, a delivery to a full queue) return a future the
//! machine polls alongside its event queue, so an incoming event can interrupt them.

mod action;
pub mod builtin;
pub mod params;
pub mod plugin;
pub mod shell;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::config::model::ActionSpec;

pub use action::{
    Action, ActionCx, ActionFuture, ActionScope, JobChange, JobNote, Outcome, Status, Step,
};
pub use params::{ParamIssue, Params};

/// An action built from its parameters, with what the validator needs to know about it.
pub struct Built {
    /// The runnable action.
    pub action: Arc<dyn Action>,
    /// Events it may return (for the "no transition accepts this event" lint).
    pub emits: Vec<String>,
    /// True when it waits for something outside (sleep, a job): not a livelock.
    pub waits: bool,
}

/// Builds actions of one type.
pub trait ActionFactory: Send + Sync + 'static {
    /// Builds an action from its parameters, reporting every problem in `p`.
    /// Returns `None` when the parameters are unusable.
    fn build(&self, p: &mut Params<'_>) -> Option<Built>;
}

impl<F> ActionFactory for F
where
    F: Fn(&mut Params<'_>) -> Option<Built> + Send + Sync + 'static,
{
    fn build(&self, p: &mut Params<'_>) -> Option<Built> {
        self(p)
    }
}

/// A registered action type.
#[derive(Clone)]
pub struct Registered {
    /// The factory.
    pub factory: Arc<dyn ActionFactory>,
    /// Where it comes from: `builtin` or a plugin name.
    pub provider: Arc<str>,
}

/// All action types known to an engine.
#[derive(Clone, Default)]
pub struct ActionRegistry {
    types: HashMap<String, Registered>,
    /// Types known to exist in Turnstile but not available in this build or setup, with a
    /// hint saying what provides them.
    unavailable: HashMap<String, String>,
    /// The plugin libraries loaded so far (shared by every clone of the registry).
    plugins: plugin::PluginHost,
    /// Where the job actions find the durable store (shared by every clone).
    jobs: builtin::jobs::JobsSlot,
}

impl ActionRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in actions.
    pub fn with_builtins() -> Self {
        let mut r = Self::new();
        builtin::register(&mut r);
        r
    }

    /// Registers (or replaces) an action type.
    pub fn register(&mut self, kind: &str, provider: &str, factory: Arc<dyn ActionFactory>) {
        self.unavailable.remove(kind);
        self.types.insert(
            kind.to_owned(),
            Registered {
                factory,
                provider: provider.into(),
            },
        );
    }

    /// Marks a type as known but unavailable, so validation can say what is missing.
    pub fn mark_unavailable(&mut self, kind: &str, hint: &str) {
        if !self.types.contains_key(kind) {
            self.unavailable.insert(kind.to_owned(), hint.to_owned());
        }
    }

    /// Looks a type up.
    pub fn get(&self, kind: &str) -> Option<&Registered> {
        self.types.get(kind)
    }

    /// Why a type is unavailable, if it is a known one.
    pub fn unavailable_hint(&self, kind: &str) -> Option<&str> {
        self.unavailable.get(kind).map(String::as_str)
    }

    /// All registered type names, sorted.
    pub fn kinds(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.types.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Where the job actions (`check_database_queue`, ...) find the store: put one in with
    /// [`builtin::jobs::JobsSlot::set`] before machines run; [`builtin::jobs::JobsSlot::used`]
    /// says whether a loaded config uses them.
    pub fn jobs(&self) -> &builtin::jobs::JobsSlot {
        &self.jobs
    }

    /// The plugin host: loaded plugins, reload checks, an observer for plugin failures.
    pub fn plugin_host(&self) -> &plugin::PluginHost {
        &self.plugins
    }

    /// Every loaded plugin (name, version, path, action types): what the
    /// `turnstile_plugin_info` metric shows.
    pub fn plugins(&self) -> Vec<plugin::PluginInfo> {
        self.plugins.plugins()
    }

    /// Loads the plugin library at `path`, or every library in the directory `path`
    /// (`--plugins DIR`), and registers their action types. One result per library; a
    /// failure leaves the others loaded. Errors are also reported to the host's observer.
    pub fn load_plugins(
        &mut self,
        path: &Path,
    ) -> Vec<Result<plugin::PluginInfo, plugin::LoadError>> {
        if path.is_dir() {
            self.plugins.add_search_dir(path);
        }
        let files = match plugin::PluginHost::libraries(path) {
            Ok(f) => f,
            Err(e) => {
                self.plugins.report(&e);
                return vec![Err(e)];
            }
        };
        files
            .iter()
            .map(|f| {
                let r = self.load_plugin_file(f);
                if let Err(e) = &r {
                    self.plugins.report(e);
                }
                r
            })
            .collect()
    }

    fn load_plugin_file(&mut self, file: &Path) -> Result<plugin::PluginInfo, plugin::LoadError> {
        let builtin = |k: &str| self.types.get(k).is_some_and(|r| &*r.provider == "builtin");
        let (slot, info) = self.plugins.load(file, &builtin)?;
        let lib_actions = plugin::slot_actions(&slot);
        for (kind, params) in lib_actions {
            let factory = plugin::PluginFactory {
                slot: slot.clone(),
                kind: kind.clone(),
                params,
            };
            self.register(&kind, &info.name, Arc::new(factory));
        }
        Ok(info)
    }

    /// A copy of this registry with the plugins a config's `plugins:` key names loaded too;
    /// failures become `plugin` diagnostics at the entry.
    pub(crate) fn with_config_plugins(
        &self,
        entries: &[crate::config::model::Located<String>],
        config: Option<&Path>,
        d: &mut crate::config::diag::Diagnostics,
    ) -> ActionRegistry {
        let mut r = self.clone();
        let dir = config.and_then(Path::parent);
        for e in entries {
            let path = self.plugins.resolve(&e.value, dir);
            for res in r.load_plugins(&path) {
                if let Err(err) = res {
                    d.error(
                        "plugin",
                        e.loc,
                        err.to_string(),
                        Some(format!(
                            "`plugins:` entries are library files or directories relative to the config (`{}`), or bare names found as lib<name>.{} beside it or in a --plugins directory",
                            e.value,
                            plugin::LIBRARY_EXTENSION
                        )),
                    );
                }
            }
        }
        r
    }

    /// Builds one action spec; problems go to `issues`, and the events written in the
    /// config (`success:`, `error:`, ...) to `written_events`. `None` when the type is
    /// unknown or the parameters are unusable.
    /// `config` is the file the spec is in (actions that load files name them relative
    /// to it: `start_fsm`), `loader` how such an action compiles a config file.
    pub fn build(
        &self,
        spec: &ActionSpec,
        config: Option<&Path>,
        loader: params::Loader<'_>,
        issues: &mut Vec<ParamIssue>,
        written_events: &mut Vec<(String, crate::config::yaml::Loc)>,
    ) -> Option<Built> {
        let reg = self.get(&spec.kind.value)?;
        let mut p = Params::new(spec).in_config(config, loader);
        let built = reg.factory.build(&mut p);
        let (i, w) = p.finish();
        issues.extend(i);
        written_events.extend(w);
        built
    }
}

//! Actions: what a machine does when it enters a state or takes a transition.
//!
//! An action is built once from its YAML parameters (so bad parameters are config errors,
//! not run-time surprises) and run many times. Quick actions finish inside [`Action::run`];
//! actions that wait (a command, a sleep, a delivery to a full queue) return a future the
//! machine polls alongside its event queue, so an incoming event can interrupt them.

pub mod builtin;
pub mod params;
pub mod plugin;
pub mod shell;

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{Map, Value as Json};

use crate::config::model::ActionSpec;
use crate::observe::ErrorKind;
use crate::runtime::event::Event;
use crate::runtime::router::Router;
use crate::runtime::template::Scope;
use crate::runtime::trace::TraceContext;

pub use params::{ParamIssue, Params};

/// What an action needs while it runs.
pub struct ActionCx<'a> {
    /// The machine's name.
    pub machine: &'a str,
    /// The state being entered (or left, for transition actions).
    pub state: &'a str,
    /// The machine's context; quick actions may change it directly.
    pub context: &'a mut Map<String, Json>,
    /// The event that caused this state entry.
    pub event: &'a Event,
    /// Delivery to other machines.
    pub router: &'a Router,
    /// The trace context events sent by this action should continue (the action's or the
    /// event's span, or the incoming `traceparent` when no observer opens spans).
    pub trace: Option<TraceContext>,
}

impl ActionCx<'_> {
    /// The scope placeholders are resolved in: the context, then `payload` (the current
    /// event's payload) and `event_type`.
    pub fn scope(&self) -> ActionScope<'_> {
        ActionScope {
            context: self.context,
            event: self.event,
        }
    }
}

/// Placeholder scope of a running action.
pub struct ActionScope<'a> {
    /// The machine context.
    pub context: &'a Map<String, Json>,
    /// The current event.
    pub event: &'a Event,
}

impl Scope for ActionScope<'_> {
    fn root(&self, name: &str) -> Option<&Json> {
        match self.context.get(name) {
            Some(v) => Some(v),
            None if name == "payload" => self.event.payload.as_deref(),
            None => None,
        }
    }
}

/// How an action ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Normal completion.
    Ok,
    /// Failure, with a message.
    Error(String),
    /// Ran out of time.
    Timeout(String),
}

/// The result of an action.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// How it ended.
    pub status: Status,
    /// The event to process next, if any.
    pub event: Option<Arc<str>>,
    /// Context changes to apply (for actions that ran as futures).
    pub context: Vec<(String, Json)>,
    /// Captured output for logs and traces (already truncated).
    pub output: Option<String>,
    /// The error kind to report for a failure (default: [`ErrorKind::Action`]).
    pub error_kind: Option<ErrorKind>,
    /// The job id the returned event carries (default: the current event's): a claimed
    /// job's id.
    pub job_id: Option<String>,
    /// The trace the returned event continues (default: the current one): the trace of
    /// whoever enqueued a claimed job.
    pub traceparent: Option<TraceContext>,
    /// A change of a job's status that the action made, reported to the observer
    /// (`job_claimed`, `job_completed`, `job_failed`).
    pub job: Option<Box<JobNote>>,
}

/// A job status change made by an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobNote {
    /// What happened.
    pub change: JobChange,
    /// The job's type (empty when the action does not know it).
    pub job_type: String,
    /// The job's id.
    pub job_id: String,
    /// For a claim answered before it was durable: fires if it does not commit. The
    /// machine keeps it while it holds the job and cancels the action waiting then (see
    /// [`Outcome::with_claim_loss`]).
    pub loss: Option<crate::store::ClaimLoss>,
}

/// What happened to a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobChange {
    /// Claimed by the machine.
    Claimed,
    /// Marked completed.
    Completed,
    /// Marked failed (retried later, or dead-lettered), with the message.
    Failed(String),
}

impl Outcome {
    /// Success, optionally returning an event.
    pub fn ok(event: Option<Arc<str>>) -> Self {
        Self {
            status: Status::Ok,
            event,
            context: Vec::new(),
            output: None,
            error_kind: None,
            job_id: None,
            traceparent: None,
            job: None,
        }
    }

    /// Failure: sets `last_error` and `last_error_action` in the context (as
    /// statemachine-engine does) and returns `event`.
    pub fn error(kind: &str, message: String, event: Option<Arc<str>>) -> Self {
        Self {
            context: vec![
                ("last_error".into(), Json::String(message.clone())),
                ("last_error_action".into(), Json::String(kind.to_owned())),
            ],
            status: Status::Error(message),
            event,
            output: None,
            error_kind: None,
            job_id: None,
            traceparent: None,
            job: None,
        }
    }

    /// Notes a job status change for the observer.
    #[must_use]
    pub fn with_job(mut self, change: JobChange, job_type: String, job_id: String) -> Self {
        self.job = Some(Box::new(JobNote {
            change,
            job_type,
            job_id,
            loss: None,
        }));
        self
    }

    /// Hands the machine the loss signal of the claim noted with [`Self::with_job`]: while
    /// the machine holds that job, the signal firing cancels its waiting action (finished as
    /// an error, its `error` event returned).
    #[must_use]
    pub fn with_claim_loss(mut self, loss: Option<crate::store::ClaimLoss>) -> Self {
        if let Some(j) = &mut self.job {
            j.loss = loss;
        }
        self
    }

    /// Sets the error kind reported for this failure.
    #[must_use]
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.error_kind = Some(kind);
        self
    }
}

/// A pending action.
pub type ActionFuture = Pin<Box<dyn Future<Output = Outcome> + Send + 'static>>;

/// What [`Action::run`] returns.
pub enum Step {
    /// Finished already.
    Done(Outcome),
    /// Finishes when the future does; dropped (cancelled) if an event interrupts it.
    Wait(ActionFuture),
}

/// An action instance, built from one YAML entry.
pub trait Action: Send + Sync + 'static {
    /// Runs the action once.
    fn run(&self, cx: &mut ActionCx<'_>) -> Step;

    /// True for the job actions that claim, complete or fail a job (`check_database_queue`,
    /// `claim_job`, `complete_job`, `fail_job`): starting one, the machine stops watching
    /// the claim of the job it held (the store answers for that job from then on: it
    /// refuses the completion of a lost claim, and a new claim replaces the old one).
    fn settles_jobs(&self) -> bool {
        false
    }
}

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
    pub fn build(
        &self,
        spec: &ActionSpec,
        issues: &mut Vec<ParamIssue>,
        written_events: &mut Vec<(String, crate::config::yaml::Loc)>,
    ) -> Option<Built> {
        let reg = self.get(&spec.kind.value)?;
        let mut p = Params::new(spec);
        let built = reg.factory.build(&mut p);
        let (i, w) = p.finish();
        issues.extend(i);
        written_events.extend(w);
        built
    }
}

//! The job actions, backed by the durable store ([`crate::store`]):
//! `check_database_queue`, `claim_job`, `complete_job`, `fail_job`, `get_pending_jobs`,
//! `check_machine_state`, `wait_for_jobs`, `clear_events`.
//!
//! They are always registered (so configs validate without a database) and reach the
//! store through a [`JobsSlot`] shared by every clone of the registry; whoever runs the
//! machines (`turnstile run --db PATH`, or a host application) puts a store in the slot
//! before the machines start. Without one, a job action fails with a clear error.
//!
//! This file holds the slot, the helpers the actions share (the no-store and store
//! errors, `blocking` store calls off the async threads, the `holder` of a claim, job ids
//! from templates, string lists) and `register`, which walks the one table `ACTIONS`.
//! Each action is in its own file: `queue.rs` (`check_database_queue`), `claim.rs`
//! (`claim_job`), `finish.rs` (`complete_job`, `fail_job`), `pending.rs`
//! (`get_pending_jobs`), `machine_state.rs` (`check_machine_state`), `wait.rs`
//! (`wait_for_jobs`), `events.rs` (`clear_events`). The files use this one, never each
//! other.

mod claim;
mod events;
mod finish;
mod machine_state;
mod pending;
mod queue;
mod wait;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use serde_json::Value as Json;

use crate::actions::{ActionCx, Built, Outcome, Params, Step};
use crate::error_kind::ErrorKind;
use crate::runtime::template::Template;
use crate::store::{Holder, JobStore, StateStore, Store, StoreError};

#[derive(Default)]
struct SlotInner {
    jobs: RwLock<Option<Arc<dyn JobStore>>>,
    state: RwLock<Option<Arc<dyn StateStore>>>,
    used: AtomicBool,
}

/// Where the job actions find the store. Shared by every clone of a registry.
#[derive(Clone, Default)]
pub struct JobsSlot(Arc<SlotInner>);

impl std::fmt::Debug for JobsSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobsSlot")
            .field("has_store", &self.jobs().is_some())
            .field("used", &self.used())
            .finish()
    }
}

impl JobsSlot {
    /// Puts a store in the slot (replacing any previous one).
    pub fn set(&self, store: Arc<dyn Store>) {
        *self.0.jobs.write().unwrap_or_else(|e| e.into_inner()) =
            Some(store.clone() as Arc<dyn JobStore>);
        *self.0.state.write().unwrap_or_else(|e| e.into_inner()) =
            Some(store as Arc<dyn StateStore>);
    }

    /// The job store, if one was set.
    pub fn jobs(&self) -> Option<Arc<dyn JobStore>> {
        self.0
            .jobs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The state store, if one was set.
    pub fn state(&self) -> Option<Arc<dyn StateStore>> {
        self.0
            .state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// True once a config using a job action was built with this registry: the caller
    /// should then open a store.
    pub fn used(&self) -> bool {
        self.0.used.load(Ordering::Relaxed)
    }

    fn mark_used(&self) {
        self.0.used.store(true, Ordering::Relaxed);
    }
}

const NO_STORE: &str =
    "no job store is open: run with `turnstile run --db PATH` (or give the engine's registry a store)";

fn no_store(kind: &str, ev: &Arc<str>) -> Step {
    Step::Done(Outcome::error(kind, NO_STORE.into(), Some(ev.clone())).with_kind(ErrorKind::Action))
}

fn store_error(kind: &str, e: &StoreError, ev: &Arc<str>) -> Outcome {
    Outcome::error(kind, e.to_string(), Some(ev.clone()))
}

/// Runs a blocking store call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StoreError::Db(format!("store call panicked: {e}"))))
}

/// The running machine as the holder of a job it claims: alive while its event queue is
/// open (it closes when the machine stops).
fn holder(cx: &ActionCx<'_>, from_queue: bool) -> Holder {
    let queue = cx.router.sender(cx.machine);
    Holder {
        machine: Arc::from(cx.machine),
        alive: Arc::new(move || queue.as_ref().is_none_or(|q| !q.is_closed())),
        from_queue,
    }
}

/// Renders an optional string template; `None` when it is empty or still has an unresolved
/// placeholder.
fn render_id(t: &Template, cx: &ActionCx<'_>) -> Option<String> {
    let s = t.render_string(&cx.scope()).into_owned();
    let unresolved = s.contains('{') && s.contains('}');
    (!s.is_empty() && !unresolved).then_some(s)
}

/// The type of job `id` when the context holds it (the machine claimed it), else empty.
fn known_job_type(cx: &ActionCx<'_>, id: &str) -> String {
    let ctx = &*cx.context;
    let same = ctx.get("job_id").and_then(Json::as_str) == Some(id)
        || ctx
            .get("current_job")
            .and_then(|c| c.get("job_id"))
            .and_then(Json::as_str)
            == Some(id);
    if !same {
        return String::new();
    }
    ctx.get("job_type")
        .and_then(Json::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn opt_string(p: &mut Params<'_>, key: &'static str) -> Option<String> {
    p.string(key).filter(|s| !s.is_empty())
}

/// A list of names: one string, or a list (null items left out, other values as JSON
/// text); anything else is a parameter error.
fn string_list(p: &mut Params<'_>, key: &'static str) -> Vec<String> {
    match p.raw(key) {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::String(s)) => vec![s.clone()],
        Some(Json::Array(a)) => a
            .iter()
            .filter_map(|v| match v {
                Json::String(s) => Some(s.clone()),
                Json::Null => None,
                other => Some(other.to_string()),
            })
            .collect(),
        Some(_) => {
            p.error(
                key,
                format!("`{key}` must be a list of names"),
                Some(format!("write `{key}: [a, b]`")),
            );
            Vec::new()
        }
    }
}

/// Builds one job action from its parameters, with the slot it will find the store in (the
/// builder marks the slot used). A plain function, so that one table holds every action.
type Build = fn(&JobsSlot, &mut Params<'_>) -> Option<Built>;

/// Every job action: its type name and its builder.
const ACTIONS: &[(&str, Build)] = &[
    ("check_database_queue", queue::build),
    ("claim_job", claim::build),
    ("complete_job", finish::build_complete),
    ("fail_job", finish::build_fail),
    ("get_pending_jobs", pending::build),
    ("check_machine_state", machine_state::build),
    ("wait_for_jobs", wait::build),
    ("clear_events", events::build),
];

/// Registers the job actions with a handle to `slot`.
pub(crate) fn register(r: &mut crate::actions::ActionRegistry, slot: &JobsSlot) {
    for &(kind, build) in ACTIONS {
        let slot = slot.clone();
        r.register(
            kind,
            "builtin",
            Arc::new(move |p: &mut Params<'_>| build(&slot, p)),
        );
    }
}

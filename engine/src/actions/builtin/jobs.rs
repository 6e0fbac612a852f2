//! The job actions, backed by the durable store ([`crate::store`]):
//! `check_database_queue`, `claim_job`, `complete_job`, `fail_job`, `get_pending_jobs`,
//! `check_machine_state`, `clear_events`.
//!
//! They are always registered (so configs validate without a database) and reach the
//! store through a [`JobsSlot`] shared by every clone of the registry; whoever runs the
//! machines (`turnstile run --db PATH`, or a host application) puts a store in the slot
//! before the machines start. Without one, a job action fails with a clear error.
//!
//! `check_database_queue` never polls in a loop through the machine: when no job is
//! pending it *waits* (a [`Step::Wait`] future) and returns `new_job` when one is claimed.
//! It is woken at once by jobs added through the same store object (in this process: the
//! sidecar's `POST /jobs`, another machine), and by jobs added by other processes
//! (`turnstile jobs add`, statemachine-engine's tools) as soon as the store notices them
//! ([`crate::store::FOREIGN_CHANGES`]): both come through [`JobStore::notify`].
//! It also wakes when a retry's backoff ends or a lease expires. An event that triggers a
//! transition (e.g. `stop`) drops the wait at once; a claim in flight at that moment is
//! given back to the queue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value as Json};

use crate::actions::{Action, ActionCx, Built, JobChange, Outcome, Params, Step};
use crate::error_kind::ErrorKind;
use crate::runtime::template::{JsonTemplate, Template};
use crate::store::{
    Claim, ClaimLoss, Failed, Holder, Job, JobFilter, JobStore, StateStore, Store, StoreError,
};

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

// --- check_database_queue --------------------------------------------------------------------

struct CheckQueue {
    slot: JobsSlot,
    filter: JobFilter,
    wait: bool,
    new_job: Arc<str>,
    no_jobs: Arc<str>,
    error: Arc<str>,
}

/// What a claimed job puts in the context (as statemachine-engine does): `current_job`,
/// then `id`, `job_id`, `job_type`, `source_job_id` and every non-null `data` field.
fn job_context(j: &Job) -> Vec<(String, Json)> {
    let mut current = Map::new();
    current.insert("id".into(), Json::String(j.job_id.clone()));
    current.insert("job_id".into(), Json::String(j.job_id.clone()));
    current.insert(
        "source_job_id".into(),
        j.source_job_id.clone().map_or(Json::Null, Json::String),
    );
    current.insert("job_type".into(), Json::String(j.job_type.clone()));
    current.insert("data".into(), j.data.clone());
    current.insert("attempts".into(), Json::from(j.attempts));
    let mut out = vec![
        ("current_job".to_owned(), Json::Object(current)),
        ("id".to_owned(), Json::String(j.job_id.clone())),
        ("job_id".to_owned(), Json::String(j.job_id.clone())),
        ("job_type".to_owned(), Json::String(j.job_type.clone())),
    ];
    if let Some(s) = &j.source_job_id {
        out.push(("source_job_id".into(), Json::String(s.clone())));
    }
    if let Json::Object(data) = &j.data {
        for (k, v) in data {
            if !v.is_null() {
                out.push((k.clone(), v.clone()));
            }
        }
    }
    out
}

/// Claims on a blocking thread; a job claimed after the waiter went away (an event
/// interrupted it) is given back at once.
async fn claim(
    store: Arc<dyn JobStore>,
    filter: JobFilter,
) -> Result<(Claim, Option<ClaimLoss>), StoreError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let r = store.claim_next_watched(&filter, store.owner());
        if let Err(Ok((Claim::Job(j), _))) = tx.send(r) {
            if let Err(e) = store.release_job(&j.job_id, store.owner()) {
                tracing::warn!(target: "turnstile::jobs", job = %j.job_id, "could not give back an interrupted claim: {e}");
            }
        }
    });
    rx.await
        .unwrap_or_else(|_| Err(StoreError::Db("the claim thread ended".into())))
}

fn build_check_queue(slot: JobsSlot) -> impl Fn(&mut Params<'_>) -> Option<Built> {
    move |p| {
        slot.mark_used();
        let job_type = opt_string(p, "job_type");
        let machine_type = opt_string(p, "machine_type");
        let wait = p.flag("wait", true);
        let new_job = p.event("success", Some("new_job"))?;
        let no_jobs = p.event("empty", Some("no_jobs"))?;
        let error = p.event("error", Some("error"))?;
        let mut emits = vec![new_job.to_string()];
        if !wait {
            emits.push(no_jobs.to_string());
        }
        Some(Built {
            emits,
            action: Arc::new(CheckQueue {
                slot: slot.clone(),
                filter: JobFilter {
                    job_type,
                    machine_type,
                },
                wait,
                new_job,
                no_jobs,
                error,
            }),
            waits: wait,
        })
    }
}

impl Action for CheckQueue {
    fn settles_jobs(&self) -> bool {
        true
    }

    fn run(&self, cx: &mut ActionCx<'_>) -> Step {
        let Some(store) = self.slot.jobs() else {
            return no_store("check_database_queue", &self.error);
        };
        // A machine holds one job from the queue at a time: back here without having
        // completed or failed the last one, it has given that one up.
        let abandoned = store.queue_job_of(cx.machine);
        let machine = cx.machine.to_owned();
        let holder = holder(cx, true);
        let filter = self.filter.clone();
        let (wait, new_job, no_jobs, error) = (
            self.wait,
            self.new_job.clone(),
            self.no_jobs.clone(),
            self.error.clone(),
        );
        Step::Wait(Box::pin(async move {
            if let Some(id) = abandoned {
                let s = store.clone();
                let why = format!(
                    "abandoned: machine `{machine}` went back to check_database_queue without complete_job or fail_job"
                );
                let (id2, why2) = (id.clone(), why.clone());
                match blocking(move || s.abandon_job(&id2, &why2)).await {
                    Ok(true) => {
                        tracing::warn!(target: "turnstile::jobs", job = %id, machine = %machine, "{why}: the job is marked failed");
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(target: "turnstile::jobs", job = %id, machine = %machine, "{why}; recording it failed ({e}): the job returns to the queue when its lease expires");
                    }
                }
            }
            let notify = store.notify().clone();
            let mut warned = false;
            loop {
                // While the store's writes fail, claims back off instead of spinning (woken
                // early when a write commits again).
                if let Some(d) = store.claim_backoff() {
                    let recovered = notify.notified();
                    tokio::select! {
                        () = tokio::time::sleep(d) => {}
                        () = recovered => {}
                    }
                }
                let notified = notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let next_due = match claim(store.clone(), filter.clone()).await {
                    Err(e) if wait && store.claim_backoff().is_some() => {
                        if !std::mem::replace(&mut warned, true) {
                            tracing::warn!(target: "turnstile::jobs", "claim failed ({e}): the store cannot write; trying again with a backoff");
                        }
                        continue;
                    }
                    Err(e) => return store_error("check_database_queue", &e, &error),
                    Ok((Claim::Job(j), loss)) => {
                        store.set_holder(&j.job_id, holder);
                        tracing::info!(target: "turnstile::jobs", job = %j.job_id, job_type = %j.job_type, attempt = j.attempts, "job claimed");
                        let mut o = Outcome::ok(Some(new_job))
                            .with_job(JobChange::Claimed, j.job_type.clone(), j.job_id.clone())
                            .with_claim_loss(loss);
                        o.context = job_context(&j);
                        o.job_id = Some(j.job_id.clone());
                        // The worker's processing continues the enqueuer's trace.
                        o.traceparent = j
                            .traceparent
                            .as_deref()
                            .and_then(|t| crate::runtime::trace::TraceContext::parse(t).ok());
                        return o;
                    }
                    Ok((Claim::Empty { next_due }, _)) => next_due,
                };
                if !wait {
                    return Outcome::ok(Some(no_jobs));
                }
                // Wait for a change (here or, noticed by the store, in another process)
                // or the next due time.
                let until_due =
                    next_due.map(|d| d.duration_since(SystemTime::now()).unwrap_or_default());
                match until_due {
                    Some(Duration::ZERO) => {}
                    Some(d) => {
                        tokio::select! {
                            () = &mut notified => {}
                            () = tokio::time::sleep(d) => {}
                        }
                    }
                    None => notified.as_mut().await,
                }
            }
        }))
    }
}

// --- claim_job ------------------------------------------------------------------------------

struct ClaimJob {
    slot: JobsSlot,
    job_id: Template,
    success: Arc<str>,
    taken: Arc<str>,
    error: Arc<str>,
}

fn build_claim_job(slot: JobsSlot) -> impl Fn(&mut Params<'_>) -> Option<Built> {
    move |p| {
        slot.mark_used();
        let job_id = p.template("job_id");
        if job_id.is_none() && !p.spec().params.contains_key("job_id") {
            p.error(
                "job_id",
                "missing parameter `job_id`".into(),
                Some("add `job_id: \"{current_job.job_id}\"`".into()),
            );
        }
        let success = p.event("success", Some("claimed"))?;
        let taken = p.event("already_claimed", Some("already_claimed"))?;
        let error = p.event("error", Some("error"))?;
        Some(Built {
            emits: vec![success.to_string(), taken.to_string()],
            action: Arc::new(ClaimJob {
                slot: slot.clone(),
                job_id: job_id?,
                success,
                taken,
                error,
            }),
            waits: false,
        })
    }
}

impl Action for ClaimJob {
    fn settles_jobs(&self) -> bool {
        true
    }

    fn run(&self, cx: &mut ActionCx<'_>) -> Step {
        let Some(store) = self.slot.jobs() else {
            return no_store("claim_job", &self.error);
        };
        let Some(id) = render_id(&self.job_id, cx) else {
            return Step::Done(Outcome::error(
                "claim_job",
                "job_id is empty or has an unresolved placeholder".into(),
                Some(self.error.clone()),
            ));
        };
        let (success, taken, error) =
            (self.success.clone(), self.taken.clone(), self.error.clone());
        let job_type = known_job_type(cx, &id);
        let holder = holder(cx, false);
        Step::Wait(Box::pin(async move {
            let s = store.clone();
            let id2 = id.clone();
            match blocking(move || s.claim_job_watched(&id2, s.owner())).await {
                Ok((true, loss)) => {
                    store.set_holder(&id, holder);
                    Outcome::ok(Some(success))
                        .with_job(JobChange::Claimed, job_type, id)
                        .with_claim_loss(loss)
                }
                Ok((false, _)) => Outcome::ok(Some(taken)),
                Err(e) => store_error("claim_job", &e, &error),
            }
        }))
    }
}

// --- complete_job / fail_job ----------------------------------------------------------------

struct CompleteJob {
    slot: JobsSlot,
    job_id: Template,
    result: Option<JsonTemplate>,
    success: Arc<str>,
    error: Arc<str>,
}

fn job_id_param(p: &mut Params<'_>) -> Template {
    p.template("job_id")
        .unwrap_or_else(|| Template::parse("{job_id}").unwrap_or_else(|_| Template::literal("")))
}

fn build_complete_job(slot: JobsSlot) -> impl Fn(&mut Params<'_>) -> Option<Built> {
    move |p| {
        slot.mark_used();
        let job_id = job_id_param(p);
        let result = p.json_template("result");
        let success = p.event("success", Some("success"))?;
        let error = p.event("error", Some("error"))?;
        Some(Built {
            emits: vec![success.to_string()],
            action: Arc::new(CompleteJob {
                slot: slot.clone(),
                job_id,
                result,
                success,
                error,
            }),
            waits: false,
        })
    }
}

impl Action for CompleteJob {
    fn settles_jobs(&self) -> bool {
        true
    }

    fn run(&self, cx: &mut ActionCx<'_>) -> Step {
        let Some(store) = self.slot.jobs() else {
            return no_store("complete_job", &self.error);
        };
        let Some(id) = render_id(&self.job_id, cx) else {
            return Step::Done(Outcome::error(
                "complete_job",
                "job_id is empty or has an unresolved placeholder".into(),
                Some(self.error.clone()),
            ));
        };
        let result = self.result.as_ref().map(|t| t.render(&cx.scope()));
        let (success, error) = (self.success.clone(), self.error.clone());
        let job_type = known_job_type(cx, &id);
        Step::Wait(Box::pin(async move {
            let id2 = id.clone();
            match blocking(move || store.complete_job(&id2, result.as_ref())).await {
                Ok(true) => {
                    tracing::info!(target: "turnstile::jobs", job = %id, "job completed");
                    Outcome::ok(Some(success)).with_job(JobChange::Completed, job_type, id)
                }
                Ok(false) => Outcome::error(
                    "complete_job",
                    format!(
                        "job `{id}` is not pending or processing (unknown, or finished already)"
                    ),
                    Some(error),
                ),
                Err(e) => store_error("complete_job", &e, &error),
            }
        }))
    }
}

struct FailJob {
    slot: JobsSlot,
    job_id: Template,
    message: Template,
    retry: Arc<str>,
    dead: Arc<str>,
    error: Arc<str>,
}

fn build_fail_job(slot: JobsSlot) -> impl Fn(&mut Params<'_>) -> Option<Built> {
    move |p| {
        slot.mark_used();
        let job_id = job_id_param(p);
        let message = p.template("error_message").unwrap_or_else(|| {
            Template::parse("{last_error|default:failed}")
                .unwrap_or_else(|_| Template::literal("failed"))
        });
        let retry = p.event("success", Some("job_failed"))?;
        let dead = p.event("dead", None).unwrap_or_else(|| retry.clone());
        let error = p.event("error", Some("error"))?;
        Some(Built {
            emits: vec![retry.to_string(), dead.to_string()],
            action: Arc::new(FailJob {
                slot: slot.clone(),
                job_id,
                message,
                retry,
                dead,
                error,
            }),
            waits: false,
        })
    }
}

impl Action for FailJob {
    fn settles_jobs(&self) -> bool {
        true
    }

    fn run(&self, cx: &mut ActionCx<'_>) -> Step {
        let Some(store) = self.slot.jobs() else {
            return no_store("fail_job", &self.error);
        };
        let Some(id) = render_id(&self.job_id, cx) else {
            return Step::Done(Outcome::error(
                "fail_job",
                "job_id is empty or has an unresolved placeholder".into(),
                Some(self.error.clone()),
            ));
        };
        let message = self.message.render_string(&cx.scope()).into_owned();
        let (retry, dead, error) = (self.retry.clone(), self.dead.clone(), self.error.clone());
        let job_type = known_job_type(cx, &id);
        Step::Wait(Box::pin(async move {
            let id2 = id.clone();
            let msg = message.clone();
            match blocking(move || store.fail_job(&id2, &msg)).await {
                Ok(Failed::Retry { attempts, .. }) => {
                    tracing::info!(target: "turnstile::jobs", job = %id, attempts, "job failed, will retry");
                    let mut o =
                        Outcome::ok(Some(retry)).with_job(JobChange::Failed(message), job_type, id);
                    o.context = vec![("job_status".into(), Json::from("pending"))];
                    o
                }
                Ok(Failed::Dead) => {
                    tracing::warn!(target: "turnstile::jobs", job = %id, "job failed its last attempt: dead letter");
                    let mut o =
                        Outcome::ok(Some(dead)).with_job(JobChange::Failed(message), job_type, id);
                    o.context = vec![("job_status".into(), Json::from("dead"))];
                    o
                }
                Ok(Failed::NotFound) => Outcome::error(
                    "fail_job",
                    format!("job `{id}` is not pending or processing"),
                    Some(error),
                ),
                Err(e) => store_error("fail_job", &e, &error),
            }
        }))
    }
}

// --- get_pending_jobs ------------------------------------------------------------------------

struct PendingJobs {
    slot: JobsSlot,
    filter: JobFilter,
    limit: Option<usize>,
    store_as: String,
    found: Arc<str>,
    empty: Arc<str>,
    error: Arc<str>,
}

fn build_pending_jobs(slot: JobsSlot) -> impl Fn(&mut Params<'_>) -> Option<Built> {
    move |p| {
        slot.mark_used();
        let job_type = opt_string(p, "job_type");
        let machine_type = opt_string(p, "machine_type");
        let limit = match p.raw("limit") {
            None | Some(Json::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) => usize::try_from(n).ok(),
                None => {
                    p.error(
                        "limit",
                        "`limit` must be a whole number".into(),
                        Some("write e.g. `limit: 10`".into()),
                    );
                    return None;
                }
            },
        };
        let store_as = opt_string(p, "store_as").unwrap_or_else(|| "pending_jobs".into());
        let found = p.event("success", Some("jobs_found"))?;
        let empty = p.event("empty", Some("no_jobs"))?;
        let error = p.event("error", Some("error"))?;
        Some(Built {
            emits: vec![found.to_string(), empty.to_string()],
            action: Arc::new(PendingJobs {
                slot: slot.clone(),
                filter: JobFilter {
                    job_type,
                    machine_type,
                },
                limit,
                store_as,
                found,
                empty,
                error,
            }),
            waits: false,
        })
    }
}

impl Action for PendingJobs {
    fn run(&self, _cx: &mut ActionCx<'_>) -> Step {
        let Some(store) = self.slot.jobs() else {
            return no_store("get_pending_jobs", &self.error);
        };
        let (filter, limit, key) = (self.filter.clone(), self.limit, self.store_as.clone());
        let (found, empty, error) = (self.found.clone(), self.empty.clone(), self.error.clone());
        Step::Wait(Box::pin(async move {
            match blocking(move || store.pending_jobs(&filter, limit)).await {
                Ok(jobs) => {
                    let ev = if jobs.is_empty() { empty } else { found };
                    let list: Vec<Json> = jobs
                        .iter()
                        .map(|j| serde_json::to_value(j).unwrap_or(Json::Null))
                        .collect();
                    let mut o = Outcome::ok(Some(ev));
                    o.context = vec![(key, Json::Array(list))];
                    o
                }
                Err(e) => {
                    let mut o = store_error("get_pending_jobs", &e, &error);
                    o.context.push((key, Json::Array(Vec::new())));
                    o
                }
            }
        }))
    }
}

// --- check_machine_state / clear_events ------------------------------------------------------

struct CheckMachineState {
    slot: JobsSlot,
    target: Template,
    expected: Vec<String>,
    max_age: Duration,
    error: Arc<str>,
}

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

fn build_check_machine_state(slot: JobsSlot) -> impl Fn(&mut Params<'_>) -> Option<Built> {
    move |p| {
        slot.mark_used();
        let target = p.template("target_machine").unwrap_or_else(|| {
            p.error(
                "target_machine",
                "missing parameter `target_machine`".into(),
                Some("add `target_machine: worker`".into()),
            );
            Template::literal("")
        });
        let expected = string_list(p, "expected_states");
        let max_age = p.seconds("timeout_seconds", Some(60.0))?;
        let error = p.event("error", Some("error"))?;
        Some(Built {
            emits: vec![
                "in_expected_state".into(),
                "unexpected_state".into(),
                "not_running".into(),
            ],
            action: Arc::new(CheckMachineState {
                slot: slot.clone(),
                target,
                expected,
                max_age,
                error,
            }),
            waits: false,
        })
    }
}

impl Action for CheckMachineState {
    fn run(&self, cx: &mut ActionCx<'_>) -> Step {
        let Some(store) = self.slot.state() else {
            return no_store("check_machine_state", &self.error);
        };
        let target = self.target.render_string(&cx.scope()).into_owned();
        let expected = self.expected.clone();
        let max_age = i64::try_from(self.max_age.as_secs()).unwrap_or(i64::MAX);
        let error = self.error.clone();
        Step::Wait(Box::pin(async move {
            match blocking(move || store.load_state(&target)).await {
                Err(e) => store_error("check_machine_state", &e, &error),
                Ok(rec) => {
                    let now = crate::store::now_ms() / 1000;
                    // Running: its process is alive (an idle machine saves nothing for
                    // hours), or, without a pid, it saved its state recently.
                    let fresh = |r: &crate::store::MachineRecord| match r.pid {
                        Some(pid) if pid > 0 => {
                            std::path::Path::new(&format!("/proc/{pid}")).exists()
                        }
                        _ => r
                            .last_activity
                            .is_some_and(|t| now - t.as_ms() / 1000 <= max_age),
                    };
                    match rec {
                        Some(r) if r.current_state.is_some() && fresh(&r) => {
                            let state = r.current_state.unwrap_or_default();
                            if expected.contains(&state) {
                                Outcome::ok(Some("in_expected_state".into()))
                            } else {
                                let mut o = Outcome::ok(Some("unexpected_state".into()));
                                o.context =
                                    vec![("unexpected_machine_state".into(), Json::String(state))];
                                o
                            }
                        }
                        _ => Outcome::ok(Some("not_running".into())),
                    }
                }
            }
        }))
    }
}

struct ClearEvents {
    slot: JobsSlot,
    target: Option<Template>,
    types: Vec<String>,
    cleared: Arc<str>,
    none: Arc<str>,
    error: Arc<str>,
}

fn build_clear_events(slot: JobsSlot) -> impl Fn(&mut Params<'_>) -> Option<Built> {
    move |p| {
        slot.mark_used();
        let types = string_list(p, "event_types");
        let target = p.template("target_machine");
        // statemachine-engine returns `success:` for both outcomes when it is set.
        let success = p.event("success", None);
        let cleared = success.clone().unwrap_or_else(|| "events_cleared".into());
        let none = success.unwrap_or_else(|| "no_events_to_clear".into());
        let error = p.event("error", Some("error"))?;
        Some(Built {
            emits: vec![cleared.to_string(), none.to_string()],
            action: Arc::new(ClearEvents {
                slot: slot.clone(),
                target,
                types,
                cleared,
                none,
                error,
            }),
            waits: false,
        })
    }
}

impl Action for ClearEvents {
    fn run(&self, cx: &mut ActionCx<'_>) -> Step {
        let Some(store) = self.slot.state() else {
            return no_store("clear_events", &self.error);
        };
        let target = match &self.target {
            Some(t) => t.render_string(&cx.scope()).into_owned(),
            None => String::new(),
        };
        if target.is_empty() || self.types.is_empty() {
            return Step::Done(Outcome::ok(Some(self.none.clone())));
        }
        let types = self.types.clone();
        let (cleared, none, error) = (self.cleared.clone(), self.none.clone(), self.error.clone());
        Step::Wait(Box::pin(async move {
            match blocking(move || store.clear_events(&target, &types)).await {
                Ok(0) => Outcome::ok(Some(none)),
                Ok(_) => Outcome::ok(Some(cleared)),
                Err(e) => store_error("clear_events", &e, &error),
            }
        }))
    }
}

// --- wait_for_jobs --------------------------------------------------------------------------

struct WaitForJobs {
    slot: JobsSlot,
    key: String,
    timeout: Duration,
    success: Arc<str>,
    timeout_event: Option<Arc<str>>,
    none: Arc<str>,
    error: Arc<str>,
}

fn build_wait_for_jobs(slot: JobsSlot) -> impl Fn(&mut Params<'_>) -> Option<Built> {
    move |p| {
        slot.mark_used();
        let key = opt_string(p, "tracked_jobs_key").unwrap_or_else(|| "spawned_jobs".into());
        // statemachine-engine re-checks every `poll_interval` seconds through the machine;
        // Turnstile waits instead and is woken by completions.
        let _ = p.raw("poll_interval");
        let _ = p.raw("pending");
        let timeout = p.seconds("timeout", Some(300.0))?;
        let success = p.event("success", Some("all_jobs_complete"))?;
        let timeout_event = p.event("timeout_event", None);
        let none = p.event("no_jobs", Some("no_jobs_tracked"))?;
        let error = p.event("error", Some("error"))?;
        let mut emits = vec![success.to_string(), none.to_string()];
        emits.extend(timeout_event.iter().map(ToString::to_string));
        Some(Built {
            emits,
            action: Arc::new(WaitForJobs {
                slot: slot.clone(),
                key,
                timeout,
                success,
                timeout_event,
                none,
                error,
            }),
            waits: true,
        })
    }
}

impl Action for WaitForJobs {
    fn run(&self, cx: &mut ActionCx<'_>) -> Step {
        let Some(store) = self.slot.jobs() else {
            return no_store("wait_for_jobs", &self.error);
        };
        let ids: Vec<String> = match cx.context.get(&self.key) {
            Some(Json::Array(a)) => a
                .iter()
                .filter_map(|v| match v {
                    Json::String(s) => Some(s.clone()),
                    Json::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        if ids.is_empty() {
            return Step::Done(Outcome::ok(Some(self.none.clone())));
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let (success, timeout_event, error) = (
            self.success.clone(),
            self.timeout_event.clone(),
            self.error.clone(),
        );
        Step::Wait(Box::pin(async move {
            let notify = store.notify().clone();
            loop {
                let notified = notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let s = store.clone();
                let ids2 = ids.clone();
                let statuses = blocking(move || {
                    ids2.iter()
                        .map(|id| Ok(s.get_job(id)?.map(|j| j.status)))
                        .collect::<Result<Vec<_>, StoreError>>()
                })
                .await;
                let statuses = match statuses {
                    Ok(v) => v,
                    Err(e) => return store_error("wait_for_jobs", &e, &error),
                };
                let (mut done, mut failed, mut pending) = (Vec::new(), Vec::new(), Vec::new());
                for (id, st) in ids.iter().zip(statuses) {
                    let id = Json::String(id.clone());
                    match st.as_deref() {
                        Some("completed") => done.push(id),
                        Some("failed" | "dead") => failed.push(id),
                        _ => pending.push(id),
                    }
                }
                let finished = pending.is_empty();
                let context = vec![
                    ("completed_jobs".to_owned(), Json::Array(done)),
                    ("failed_jobs".to_owned(), Json::Array(failed)),
                    ("pending_jobs".to_owned(), Json::Array(pending)),
                ];
                if finished {
                    let mut o = Outcome::ok(Some(success));
                    o.context = context;
                    return o;
                }
                if tokio::time::Instant::now() >= deadline {
                    if let Some(ev) = timeout_event {
                        let mut o = Outcome::ok(Some(ev));
                        o.context = context;
                        return o;
                    }
                }
                // Wait for a change (here or, noticed by the store, in another process),
                // or for the deadline when there is a timeout event.
                if timeout_event.is_some() {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(deadline) => {}
                    }
                } else {
                    notified.as_mut().await;
                }
            }
        }))
    }
}

/// Registers the job actions with a handle to `slot`.
pub(crate) fn register(r: &mut crate::actions::ActionRegistry, slot: &JobsSlot) {
    r.register(
        "check_database_queue",
        "builtin",
        Arc::new(build_check_queue(slot.clone())),
    );
    r.register(
        "claim_job",
        "builtin",
        Arc::new(build_claim_job(slot.clone())),
    );
    r.register(
        "complete_job",
        "builtin",
        Arc::new(build_complete_job(slot.clone())),
    );
    r.register(
        "fail_job",
        "builtin",
        Arc::new(build_fail_job(slot.clone())),
    );
    r.register(
        "get_pending_jobs",
        "builtin",
        Arc::new(build_pending_jobs(slot.clone())),
    );
    r.register(
        "check_machine_state",
        "builtin",
        Arc::new(build_check_machine_state(slot.clone())),
    );
    r.register(
        "wait_for_jobs",
        "builtin",
        Arc::new(build_wait_for_jobs(slot.clone())),
    );
    r.register(
        "clear_events",
        "builtin",
        Arc::new(build_clear_events(slot.clone())),
    );
}

//! `check_database_queue`: claims the next pending job (of one `job_type` or
//! `machine_type` when given) and returns `new_job` with the job in the context
//! (`current_job`, `job_id`, its `data` fields...); with `wait: false`, `no_jobs` when
//! none is pending.
//!
//! It never polls in a loop through the machine: when no job is pending it *waits* (a
//! [`Step::Wait`] future) and returns `new_job` when one is claimed.
//! It is woken at once by jobs added through the same store object (in this process: the
//! sidecar's `POST /jobs`, another machine), and by jobs added by other processes
//! (`turnstile jobs add`, statemachine-engine's tools) as soon as the store notices them
//! ([`crate::store::FOREIGN_CHANGES`]): both come through [`JobStore::notify`].
//! It also wakes when a retry's backoff ends or a lease expires. An event that triggers a
//! transition (e.g. `stop`) drops the wait at once; a claim in flight at that moment is
//! given back to the queue (see [`claim`]).
//!
//! A machine holds one job from the queue at a time: coming back here without
//! `complete_job` or `fail_job`, it has abandoned the last one, which the store marks
//! failed.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value as Json};

use super::{blocking, holder, no_store, opt_string, store_error, JobsSlot};
use crate::actions::{Action, ActionCx, Built, JobChange, Outcome, Params, Step};
use crate::store::{Claim, ClaimLoss, Holder, Job, JobFilter, JobStore, StoreError};

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

/// The outcome of a claimed job: `holder` holds it, `new_job` with the job in the context.
fn claimed(
    store: &dyn JobStore,
    j: &Job,
    holder: Holder,
    loss: Option<ClaimLoss>,
    new_job: &Arc<str>,
) -> Outcome {
    store.set_holder(&j.job_id, holder);
    tracing::info!(target: "turnstile::jobs", job = %j.job_id, job_type = %j.job_type, attempt = j.attempts, "job claimed");
    let mut o = Outcome::ok(Some(new_job.clone()))
        .with_job(JobChange::Claimed, j.job_type.clone(), j.job_id.clone())
        .with_claim_loss(loss);
    o.context = job_context(j);
    o.job_id = Some(j.job_id.clone());
    // The worker's processing continues the enqueuer's trace.
    o.traceparent = j
        .traceparent
        .as_deref()
        .and_then(|t| crate::runtime::trace::TraceContext::parse(t).ok());
    o
}

pub(super) fn build(slot: &JobsSlot, p: &mut Params<'_>) -> Option<Built> {
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
        let holder = holder(cx, true);
        // A job this process claimed ahead for this queue: taken at once, no thread hop.
        if abandoned.is_none() {
            if let Some(j) = store.claim_buffered(&self.filter) {
                return Step::Done(claimed(&*store, &j, holder, None, &self.new_job));
            }
        }
        let machine = cx.machine.to_owned();
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
                        return claimed(&*store, &j, holder, loss, &new_job);
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

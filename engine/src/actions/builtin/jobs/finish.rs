//! `complete_job` and `fail_job`: the two ways a machine ends the job it holds.
//!
//! Both take `job_id` (default `{job_id}`, which `check_database_queue` puts in the
//! context) and refuse an id that renders empty or with an unresolved placeholder.
//! `complete_job` stores an optional `result` and returns `success`; a job that is not
//! pending or processing is an error. `fail_job` records `error_message` (default: the
//! last error; placeholders reading sensitive fields show `[redacted]` in it) and returns `success` (`job_failed`) when the job will be retried, `dead`
//! (default: the same event) when that was its last attempt, with `job_status` in the
//! context. They share one file and the `job_id` parameter (`job_id_param`).

use std::sync::Arc;

use serde_json::Value as Json;

use super::{blocking, known_job_type, no_store, render_id, store_error, JobsSlot};
use crate::actions::{Action, ActionCx, Built, JobChange, Outcome, Params, Step};
use crate::runtime::template::{JsonTemplate, Template};
use crate::store::Failed;

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

pub(super) fn build_complete(slot: &JobsSlot, p: &mut Params<'_>) -> Option<Built> {
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
        // A job this process holds, with batched claims: queued behind the process's
        // other writes and answered at once (see `JobStore::complete_held`).
        if store.complete_held(&id, result.as_ref()) {
            tracing::info!(target: "turnstile::jobs", job = %id, "job completed");
            return Step::Done(Outcome::ok(Some(success)).with_job(
                JobChange::Completed,
                job_type,
                id,
            ));
        }
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

pub(super) fn build_fail(slot: &JobsSlot, p: &mut Params<'_>) -> Option<Built> {
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
        // A message the store records and `jobs list` shows: values read from sensitive
        // fields are redacted in it ([`crate::redact`]).
        let message = self
            .message
            .render_shown(&cx.scope(), &crate::redact::global())
            .into_owned();
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

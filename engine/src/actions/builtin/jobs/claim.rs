//! `claim_job`: claims one job by its id (`job_id`, a template such as
//! `{current_job.job_id}`) and returns `claimed`, or `already_claimed` when the job is not
//! pending (taken, finished, absent).
//!
//! `job_id` is required: a missing one is a config error, and an id that renders empty or
//! with an unresolved placeholder is refused at run time rather than sent to the store.
//! The machine becomes the job's [`holder`] (not one from the queue, so
//! `check_database_queue` does not abandon it).

use std::sync::Arc;

use super::{blocking, holder, known_job_type, no_store, render_id, store_error, JobsSlot};
use crate::actions::{Action, ActionCx, Built, JobChange, Outcome, Params, Step};
use crate::runtime::template::Template;

struct ClaimJob {
    slot: JobsSlot,
    job_id: Template,
    success: Arc<str>,
    taken: Arc<str>,
    error: Arc<str>,
}

pub(super) fn build(slot: &JobsSlot, p: &mut Params<'_>) -> Option<Built> {
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

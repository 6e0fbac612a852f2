//! `get_pending_jobs`: lists the pending jobs (of one `job_type` or `machine_type` when
//! given, at most `limit`) into the context under `store_as` (default `pending_jobs`) and
//! returns `jobs_found` or `no_jobs`. It only reads: nothing is claimed. On a store error
//! it returns `error` and sets the list empty.

use std::sync::Arc;

use serde_json::Value as Json;

use super::{blocking, no_store, opt_string, store_error, JobsSlot};
use crate::actions::{Action, ActionCx, Built, Outcome, Params, Step};
use crate::store::JobFilter;

struct PendingJobs {
    slot: JobsSlot,
    filter: JobFilter,
    limit: Option<usize>,
    store_as: String,
    found: Arc<str>,
    empty: Arc<str>,
    error: Arc<str>,
}

pub(super) fn build(slot: &JobsSlot, p: &mut Params<'_>) -> Option<Built> {
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

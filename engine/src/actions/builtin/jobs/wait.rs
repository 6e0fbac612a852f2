//! `wait_for_jobs`: waits until every job listed in the context under `tracked_jobs_key`
//! (default `spawned_jobs`) is completed, failed, dead or cancelled (counted as failed), and returns `all_jobs_complete`
//! with `completed_jobs`, `failed_jobs` and `pending_jobs` in the context; `no_jobs_tracked`
//! when the list is empty. With a `timeout_event`, it returns that event with the same
//! lists once `timeout` (default 300 s) has passed.
//!
//! statemachine-engine re-checks every `poll_interval` seconds through the machine;
//! Turnstile waits instead (a [`Step::Wait`] future) and is woken by the store's
//! [`notify`](crate::store::JobStore::notify) or
//! [`finish_notify`](crate::store::JobStore::finish_notify) when jobs change, here or,
//! noticed by the store, in another process.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;

use super::{blocking, no_store, opt_string, store_error, JobsSlot};
use crate::actions::{Action, ActionCx, Built, Outcome, Params, Step};
use crate::store::StoreError;

struct WaitForJobs {
    slot: JobsSlot,
    key: String,
    timeout: Duration,
    success: Arc<str>,
    timeout_event: Option<Arc<str>>,
    none: Arc<str>,
    error: Arc<str>,
}

pub(super) fn build(slot: &JobsSlot, p: &mut Params<'_>) -> Option<Built> {
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
            // Completions may wake only the second (see `JobStore::finish_notify`).
            let (notify, finished) = (store.notify().clone(), store.finish_notify().clone());
            loop {
                let changed = notify.notified();
                let finishing = finished.notified();
                tokio::pin!(changed, finishing);
                changed.as_mut().enable();
                finishing.as_mut().enable();
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
                        Some("failed" | "dead" | "cancelled") => failed.push(id),
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
                        () = &mut changed => {}
                        () = &mut finishing => {}
                        () = tokio::time::sleep_until(deadline) => {}
                    }
                } else {
                    tokio::select! {
                        () = &mut changed => {}
                        () = &mut finishing => {}
                    }
                }
            }
        }))
    }
}

//! The job store's jobs for operators: `GET /jobs?status=&type=&limit=&after=`,
//! `GET /jobs/{id}`, `POST /jobs/{id}/retry` and `DELETE /jobs/{id}` (`POST /jobs`, which
//! adds jobs, is `jobs.rs`).
//!
//! Jobs are shown as [`admin::shown`] makes them: sensitive fields of their data, result
//! and metadata redacted, with their `trace_id`. A listing is newest first and pages by row
//! id: `{"jobs": [...], "next": ID}`, where `next` (`null` on the last page) is the `after`
//! of the next page. A retry (a dead or cancelled job back to pending) and a cancel (a
//! pending job to `cancelled`) are writes: the token and read-only checks of
//! [`write::bodiless`], then one store call; each answers 200 with the job as it is now,
//! 404 for an unknown job and 409 with the job's status (`job_status`) when it does not allow
//! it (or, for a retry, with the `job_id` of the job holding its unique key). Each write is
//! logged (target `turnstile::sidecar`) and recorded as a span ([`Operation`]), refused or
//! not; a refused one changes nothing.

use std::sync::Arc;
use std::time::SystemTime;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value as Json};
use turnstile_engine::store::{admin, JobChange, JobStore, ListJobs, StoreError, STATUSES};
use turnstile_engine::TraceContext;

use super::request::{self, cut};
use super::response::{self, ApiError, Body};
use super::state::State;
use super::write;
use crate::telemetry::operations::Operation;
use crate::telemetry::stream::Kind;

/// Jobs a page holds when the request does not say.
pub const DEFAULT_PAGE: usize = 100;
/// The most jobs a page holds.
pub const MAX_PAGE: usize = 1000;

fn no_store() -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "no job store is configured: start turnstile run with --db PATH (or a config that uses job actions)",
    )
}

fn store_of(state: &State) -> Result<Arc<dyn JobStore>, ApiError> {
    state.jobs.clone().ok_or_else(no_store)
}

/// Runs a store call on a blocking thread; a store failure is a 503.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
}

fn unknown_job(id: &str) -> ApiError {
    let why = JobChange::NotFound.refusal(admin::Op::Retry, &cut(id, 100));
    ApiError::not_found(why.unwrap_or_default())
}

/// The parameters of `GET /jobs`; any other, a repeated one or a bad value is an error.
fn list_query(query: Option<&str>) -> Result<ListJobs, String> {
    let mut q = ListJobs {
        limit: Some(DEFAULT_PAGE),
        ..ListJobs::default()
    };
    let mut seen: Vec<String> = Vec::new();
    for (k, v) in request::parse_query(query)? {
        if seen.contains(&k) {
            return Err(format!("parameter `{}` is given twice", cut(&k, 40)));
        }
        match k.as_str() {
            "status" => {
                if !STATUSES.contains(&v.as_str()) {
                    return Err(format!(
                        "unknown status `{}` (one of {})",
                        cut(&v, 40),
                        STATUSES.join(", ")
                    ));
                }
                q.status = Some(v);
            }
            "type" => q.job_type = Some(v),
            "limit" => {
                q.limit = Some(request::page_limit(&v, MAX_PAGE)?);
            }
            "after" => {
                let id = v
                    .trim()
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        format!(
                            "`after` must be the `next` of a previous page (a positive whole number), not `{}`",
                            cut(&v, 40)
                        )
                    })?;
                q.after = Some(id);
            }
            other => {
                return Err(format!(
                    "unknown parameter `{}` (expected status, type, limit or after)",
                    cut(other, 40)
                ))
            }
        }
        seen.push(k);
    }
    Ok(q)
}

/// `GET /jobs`.
pub(super) async fn list(
    state: &State,
    req: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let mut q = list_query(req.uri().query()).map_err(ApiError::bad_request)?;
    let store = store_of(state)?;
    let page = q.limit.unwrap_or(DEFAULT_PAGE);
    // One more than the page: whether there is a next page.
    q.limit = Some(page + 1);
    let mut jobs = blocking(move || store.list_jobs(&q)).await?;
    let next = if jobs.len() > page {
        jobs.truncate(page);
        jobs.last().map(|j| j.id)
    } else {
        None
    };
    let jobs: Vec<Json> = jobs.into_iter().map(admin::shown).collect();
    Ok(response::json(
        StatusCode::OK,
        &json!({"jobs": jobs, "next": next}),
    ))
}

/// `GET /jobs/{id}`.
pub(super) async fn show(state: &State, id: &str) -> Result<Response<Body>, ApiError> {
    let store = store_of(state)?;
    let key = id.to_owned();
    match blocking(move || store.get_job(&key)).await? {
        Some(job) => Ok(response::json(StatusCode::OK, &admin::shown(job))),
        None => Err(unknown_job(id)),
    }
}

/// What a write does to a job.
#[derive(Clone, Copy)]
enum Write {
    Retry,
    Cancel,
}

impl Write {
    fn route(self) -> (&'static str, &'static str) {
        match self {
            Write::Retry => ("POST", "/jobs/{id}/retry"),
            Write::Cancel => ("DELETE", "/jobs/{id}"),
        }
    }

    fn op(self) -> admin::Op {
        match self {
            Write::Retry => admin::Op::Retry,
            Write::Cancel => admin::Op::Cancel,
        }
    }

    /// The `change` of its stream record.
    fn change(self) -> &'static str {
        match self {
            Write::Retry => "retried",
            Write::Cancel => "cancelled",
        }
    }

    fn done(self) -> &'static str {
        match self {
            Write::Retry => "job retried",
            Write::Cancel => "job cancelled",
        }
    }
}

/// `POST /jobs/{id}/retry`.
pub(super) async fn retry(
    state: &State,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    write_job(state, id, &req, Write::Retry).await
}

/// `DELETE /jobs/{id}`.
pub(super) async fn cancel(
    state: &State,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    write_job(state, id, &req, Write::Cancel).await
}

async fn write_job(
    state: &State,
    id: &str,
    req: &Request<Incoming>,
    what: Write,
) -> Result<Response<Body>, ApiError> {
    let start = SystemTime::now();
    let (method, route) = what.route();
    // A malformed traceparent is refused (400) before anything changes, and its span has
    // no parent.
    let parent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| TraceContext::parse(s).ok());
    let result = change(state, id, req, what).await;
    let (status, error) = match &result {
        Ok(r) => (r.status().as_u16(), None),
        Err(e) => (e.status.as_u16(), Some(e.message.as_str())),
    };
    match error {
        None => tracing::info!(
            target: "turnstile::sidecar",
            method, route, job_id = %cut(id, 100), status,
            "{}", what.done()
        ),
        Some(why) => tracing::info!(
            target: "turnstile::sidecar",
            method, route, job_id = %cut(id, 100), status,
            "{method} {route} refused: {why}"
        ),
    }
    state.telemetry.record_operation(Operation {
        method,
        route,
        parent,
        start,
        status,
        error,
        attributes: vec![("turnstile.job.id", id.to_owned())],
    });
    result
}

async fn change(
    state: &State,
    id: &str,
    req: &Request<Incoming>,
    what: Write,
) -> Result<Response<Body>, ApiError> {
    write::bodiless(state, req)?;
    let store = store_of(state)?;
    let key = id.to_owned();
    let changed = blocking(move || match what {
        Write::Retry => store.retry_job(&key),
        Write::Cancel => store.cancel_job(&key),
    })
    .await?;
    let why = changed.refusal(what.op(), &cut(id, 100));
    match (changed, why) {
        (JobChange::Changed(job), _) => {
            let shown = admin::shown(*job);
            state.telemetry.stream().publish(Kind::Job, None, || {
                json!({
                    "change": what.change(),
                    "job_id": id,
                    "job_type": shown.get("job_type"),
                    "status": shown.get("status"),
                    "by": "operator",
                })
            });
            Ok(response::json(StatusCode::OK, &shown))
        }
        (JobChange::NotFound, _) => Err(unknown_job(id)),
        (JobChange::Refused { status }, why) => {
            Err(ApiError::new(StatusCode::CONFLICT, why.unwrap_or_default())
                .field("job_status", json!(status)))
        }
        (JobChange::KeyHeld { job_id, unique_key }, why) => {
            Err(ApiError::new(StatusCode::CONFLICT, why.unwrap_or_default())
                .field("job_id", json!(job_id))
                .field("unique_key", json!(unique_key)))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn list_parameters_are_checked() {
        let q = list_query(Some("status=dead&type=a%20b&limit=5&after=42")).unwrap();
        assert_eq!(q.status.as_deref(), Some("dead"));
        assert_eq!(q.job_type.as_deref(), Some("a b"));
        assert_eq!((q.limit, q.after), (Some(5), Some(42)));
        assert_eq!(list_query(None).unwrap().limit, Some(DEFAULT_PAGE));
        for (bad, says) in [
            ("status=nope", "unknown status"),
            ("limit=0", "`limit`"),
            ("limit=1001", "`limit`"),
            ("limit=x", "`limit`"),
            ("after=-1", "`after`"),
            ("after=x", "`after`"),
            ("status=dead&status=pending", "twice"),
            ("sort=id", "unknown parameter"),
        ] {
            let e = list_query(Some(bad)).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}

//! `POST /jobs`: adds a job, or a batch of jobs, to the store the sidecar was given.
//!
//! Body: `{"job_type": "task", "machine_type": "worker", "data": {...}, "priority": 5,
//! "job_id": "...", "metadata": {...}, "max_attempts": 3, "unique_key": "...",
//! "run_after": "2026-12-04T10:00:00Z" | "delay_seconds": 30}` (`type` is accepted for
//! `job_type`; the fields are read by [`new_job_from_json`], as `turnstile jobs add
//! --from-file` reads them). A `traceparent` header (or field) is stored with the job so
//! the worker continues that trace. Answers 201 `{"job_id": ...}`; 409 for a duplicate id,
//! and 409 with the existing job's `job_id` when a pending or processing job holds the
//! unique key. A JSON array of such objects (at most [`MAX_BATCH`]) is added in one
//! transaction: 201 `{"jobs": [{"result": "added"|"existing", "job_id": ...}, ...]}`, or
//! nothing added and 400 naming the first bad element's `index`. The body is parsed with
//! the engine's bounded JSON parser (`write::json_value`, as every write's JSON body): 413
//! when it would take more than the parsed-size limit.

use std::time::SystemTime;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value as Json};
use turnstile_engine::store::{new_job_from_json, NewJob, StoreError, MAX_BATCH};

use super::response::{self, ApiError, Body};
use super::state::State;
use super::write::JsonPost;

/// A store error as an answer: 409 for a duplicate id or a held unique key (with the
/// existing job's id), 503 for anything else.
fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Invalid(m) => ApiError::new(StatusCode::CONFLICT, m),
        StoreError::Duplicate { job_id, unique_key } => ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "job `{job_id}` with unique key `{unique_key}` is already pending or processing"
            ),
        )
        .field("job_id", json!(job_id))
        .field("unique_key", json!(unique_key)),
        e => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

pub(super) async fn post_job(
    state: &State,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (store, post) = JsonPost::extract(state, req, None, || {
        state.jobs.clone().ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "no job store is configured: start turnstile run with --db PATH (or a config that uses job actions); or send an event with a job_id to POST /machines/{name}/events",
            )
        })
    })
    .await?;
    let (header_tp, body) = (post.traceparent_header, post.body);
    let v = super::write::json_value(&body, state)?;
    let now = SystemTime::now();
    match v {
        Json::Array(items) => {
            if items.len() > MAX_BATCH {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "{} jobs in one request; at most {MAX_BATCH} (send several requests)",
                        items.len()
                    ),
                ));
            }
            let jobs = items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    new_job_from_json(item, now, header_tp.clone()).map_err(|m| {
                        ApiError::bad_request(format!("job {i}: {m}; nothing was added"))
                            .field("index", json!(i))
                    })
                })
                .collect::<Result<Vec<NewJob>, _>>()?;
            let added = tokio::task::spawn_blocking(move || store.add_jobs(jobs))
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .map_err(store_error)?;
            Ok(response::json(StatusCode::CREATED, &json!({"jobs": added})))
        }
        v @ Json::Object(_) => {
            let job = new_job_from_json(&v, now, header_tp).map_err(ApiError::bad_request)?;
            let added = tokio::task::spawn_blocking(move || store.add_job(job))
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .map_err(store_error)?;
            Ok(response::json(StatusCode::CREATED, &json!({"job_id": added})))
        }
        _ => Err(ApiError::bad_request(
            "the body must be a JSON object like {\"job_type\": \"task\", \"data\": {...}}, or an array of them",
        )),
    }
}

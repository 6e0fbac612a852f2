//! `POST /jobs`: adds a job to the store the sidecar was given.
//!
//! Body: `{"job_type": "task", "machine_type": "worker", "data": {...}, "priority": 5,
//! "job_id": "...", "metadata": {...}, "max_attempts": 3}` (`type` is accepted for
//! `job_type`). A `traceparent` header (or field) is stored with the job so the worker
//! continues that trace. Answers 201 `{"job_id": ...}`; 409 for a duplicate id. The body
//! is parsed with the engine's bounded JSON parser ([`ingress::parse_json`]): 413 when it
//! would take more than the parsed-size limit.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value as Json};
use turnstile_engine::ingress;
use turnstile_engine::store::{NewJob, StoreError};
use turnstile_engine::TraceContext;

use super::response::{self, ApiError, Body};
use super::state::State;
use super::write::JsonPost;

fn field_str(obj: &serde_json::Map<String, Json>, key: &str) -> Result<Option<String>, ApiError> {
    match obj.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_request(format!(
            "`{key}` must be a non-empty string"
        ))),
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
    let v = ingress::parse_json(&body, &state.ingress_limits()).map_err(|e| {
        if e.is_too_large() {
            return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string());
        }
        let err = ApiError::bad_request(format!("the body is not JSON: {e}"));
        match e.position() {
            Some((line, column)) => err
                .field("line", json!(line))
                .field("column", json!(column)),
            None => err,
        }
    })?;
    let Json::Object(obj) = v else {
        return Err(ApiError::bad_request(
            "the body must be a JSON object like {\"job_type\": \"task\", \"data\": {...}}",
        ));
    };
    let job_type = match field_str(&obj, "job_type")? {
        Some(t) => t,
        None => field_str(&obj, "type")?.ok_or_else(|| {
            ApiError::bad_request("`job_type` is missing: {\"job_type\": \"task\", ...}")
        })?,
    };
    let priority = match obj.get("priority") {
        None | Some(Json::Null) => None,
        Some(p) => Some(p.as_i64().ok_or_else(|| {
            ApiError::bad_request("`priority` must be a whole number (1 = highest)")
        })?),
    };
    let max_attempts = match obj.get("max_attempts") {
        None | Some(Json::Null) => None,
        Some(p) => Some(
            p.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| ApiError::bad_request("`max_attempts` must be a positive number"))?,
        ),
    };
    let traceparent = match (header_tp, field_str(&obj, "traceparent")?) {
        (Some(t), _) => Some(t),
        (None, Some(t)) => {
            TraceContext::parse(&t).map_err(|e| ApiError::bad_request(e.to_string()))?;
            Some(t)
        }
        (None, None) => None,
    };
    let job = NewJob {
        job_id: field_str(&obj, "job_id")?,
        job_type,
        machine_type: field_str(&obj, "machine_type")?,
        source_job_id: field_str(&obj, "source_job_id")?,
        data: obj.get("data").filter(|d| !d.is_null()).cloned(),
        metadata: obj.get("metadata").filter(|d| !d.is_null()).cloned(),
        priority,
        max_attempts,
        traceparent,
    };
    let added = tokio::task::spawn_blocking(move || store.add_job(job))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match added {
        Ok(id) => Ok(response::json(StatusCode::CREATED, &json!({"job_id": id}))),
        Err(StoreError::Invalid(m)) => Err(ApiError::new(StatusCode::CONFLICT, m)),
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
    }
}

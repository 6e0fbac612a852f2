//! What every write (every endpoint but the GET ones) goes through before its handler
//! looks at the body: [`JsonPost::extract`] checks the token and read-only mode, the body
//! size, the content type and the `traceparent` header, then reads the body;
//! [`bodiless`], for writes that take no body (a job's retry or cancel), checks the token,
//! read-only mode and the `traceparent` header.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Request, StatusCode};
use serde_json::json;
use turnstile_engine::TraceContext;

use super::request::{self, cut};
use super::response::ApiError;
use super::state::State;

/// How long reading a request body may take.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A write request that passed the common checks, with its whole body.
pub struct JsonPost {
    /// The body, at most [`State::max_body_bytes`] bytes (not parsed yet).
    pub body: Bytes,
    /// The `traceparent` header, parsed.
    pub traceparent: Option<TraceContext>,
    /// The `traceparent` header as it was sent.
    pub traceparent_header: Option<String>,
}

impl JsonPost {
    /// Checks, in this order: writes allowed and the bearer token (403, 401); the declared
    /// body size (413); `target`, the handler's own check of what the request is for (a
    /// machine that exists, a configured job store); the content type (415); the
    /// `traceparent` header (400); then reads the body (413 past the limit, 408 when it is
    /// slow). Errors other than 401 and 403 carry `machine` when given (a machine that
    /// exists).
    pub async fn extract<T>(
        state: &State,
        req: Request<Incoming>,
        machine: Option<&str>,
        target: impl FnOnce() -> Result<T, ApiError>,
    ) -> Result<(T, JsonPost), ApiError> {
        let label = |e: ApiError| match machine {
            Some(name) => e.machine(name),
            None => e,
        };
        authorize(state, &req)?;
        if declared_too_large(req.body(), state.max_body_bytes) {
            return Err(label(too_large(state.max_body_bytes)));
        }
        let target = target()?;
        let ct = req
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("?"));
        if !request::is_json_content_type(ct) {
            return Err(label(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "the body must be JSON (Content-Type: application/json), not `{}`",
                    cut(ct.unwrap_or(""), 80)
                ),
            )));
        }
        let (traceparent, traceparent_header) = traceparent_of(&req).map_err(label)?;
        let body = read_body(req.into_body(), state.max_body_bytes)
            .await
            .map_err(label)?;
        Ok((
            target,
            JsonPost {
                body,
                traceparent,
                traceparent_header,
            },
        ))
    }
}

/// The `traceparent` header, parsed and as sent (400 when it is malformed).
fn traceparent_of(
    req: &Request<Incoming>,
) -> Result<(Option<TraceContext>, Option<String>), ApiError> {
    match req.headers().get("traceparent") {
        None => Ok((None, None)),
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| ApiError::bad_request("invalid traceparent: not ASCII"))?;
            let t = TraceContext::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?;
            Ok((Some(t), Some(s.to_owned())))
        }
    }
}

/// A write without a body: writes allowed and the bearer token (403, 401), then the
/// `traceparent` header (400); its parsed value. A body, if one is sent, is not read.
pub fn bodiless(state: &State, req: &Request<Incoming>) -> Result<Option<TraceContext>, ApiError> {
    authorize(state, req)?;
    Ok(traceparent_of(req)?.0)
}

/// Writes are off in read-only mode (403 for everyone), and need the token when one is
/// configured (401).
pub(super) fn authorize(state: &State, req: &Request<Incoming>) -> Result<(), ApiError> {
    if state.read_only {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the sidecar runs in read-only mode (--read-only): writes are off",
        ));
    }
    if let Some(expected) = &state.token {
        let presented =
            request::bearer_token(req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes));
        let ok = presented.is_some_and(|p| request::token_matches(p, expected.as_bytes()));
        if !ok {
            let msg = if presented.is_some() {
                "the bearer token is wrong"
            } else {
                "this server needs `Authorization: Bearer <token>` for writes"
            };
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, msg)
                .header(WWW_AUTHENTICATE, "Bearer realm=\"turnstile\""));
        }
    }
    Ok(())
}

/// True when the request says (`Content-Length`) that its body is larger than `max`.
fn declared_too_large(body: &Incoming, max: usize) -> bool {
    let max = u64::try_from(max).unwrap_or(u64::MAX);
    let hint = body.size_hint();
    hint.lower() > max || hint.upper().is_some_and(|n| n > max)
}

pub(super) fn too_large(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is larger than the limit of {max} bytes"),
    )
    .field("limit", json!(max))
}

/// Reads a whole body of at most `max` bytes: the declared length is checked first, the
/// bytes actually received while reading.
async fn read_body(body: Incoming, max: usize) -> Result<Bytes, ApiError> {
    if declared_too_large(&body, max) {
        return Err(too_large(max));
    }
    let read = tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, max).collect()).await;
    match read {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("the body did not arrive within {BODY_READ_TIMEOUT:?}"),
        )),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(max)),
        Ok(Err(e)) => Err(ApiError::bad_request(format!(
            "the body could not be read: {e}"
        ))),
    }
}

/// A write's body as JSON, parsed by the engine's bounded parser
/// ([`turnstile_engine::ingress::parse_json`]): 413 when it would take more than the
/// limits, else 400 with the line and column of the fault.
pub(super) fn json_value(body: &Bytes, state: &State) -> Result<serde_json::Value, ApiError> {
    turnstile_engine::ingress::parse_json(body, &state.ingress_limits()).map_err(|e| {
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
    })
}

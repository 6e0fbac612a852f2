//! The endpoints: routing by path and method, and one handler each.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::header::{HeaderName, WWW_AUTHENTICATE};
use hyper::header::{HeaderValue, ACCEPT, ALLOW, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value as Json};
use turnstile_engine::ingress;
use turnstile_engine::observe::ErrorKind;
use turnstile_engine::{Engine, Event, MachineStatus, SendError, TraceContext};

use super::request::{self, cut};
use super::response::{self, ApiError, Body};
use crate::telemetry::records::timestamp;
use crate::telemetry::Telemetry;

/// How long a `POST .../events` waits for room in a full queue before answering 503.
pub const QUEUE_WAIT: Duration = Duration::from_secs(2);
/// How long reading a request body may take.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long reading a machine's context may take (it is read on the machine's own task).
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `/readyz` waits for the job store to answer a read.
pub const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What every request handler shares.
pub struct State {
    /// The engine whose machines are served.
    pub engine: Engine,
    /// Its telemetry.
    pub telemetry: Arc<Telemetry>,
    /// The bound address, for `/stats`.
    pub addr: SocketAddr,
    /// The bearer token writes need, if any.
    pub token: Option<String>,
    /// Writes refused.
    pub read_only: bool,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// The job store behind `POST /jobs`.
    pub jobs: Option<Arc<dyn turnstile_engine::store::JobStore>>,
    /// A `/readyz` read of the job store is still running (one at a time, however often
    /// the probe comes).
    pub store_probe: Arc<AtomicBool>,
}

impl State {
    /// The bounds of a JSON body: [`State::max_body_bytes`] bytes, and the engine's
    /// default bound on its parsed size.
    pub fn ingress_limits(&self) -> ingress::Limits {
        ingress::Limits {
            max_bytes: self.max_body_bytes,
            max_parsed_bytes: ingress::DEFAULT_MAX_PARSED_BYTES,
        }
    }
}

/// Which methods a path takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Allowed {
    Get,
    Post,
}

impl Allowed {
    fn header(self) -> &'static str {
        match self {
            Allowed::Get => "GET, HEAD",
            Allowed::Post => "POST",
        }
    }

    fn accepts(self, m: &Method) -> bool {
        match self {
            Allowed::Get => m == Method::GET || m == Method::HEAD,
            Allowed::Post => m == Method::POST,
        }
    }
}

/// A resolved path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Index,
    Favicon,
    Metrics,
    Stats,
    Trace,
    Errors,
    Healthz,
    Readyz,
    Machines,
    Machine(String),
    MachineEvents(String),
    Jobs,
}

impl Route {
    fn allowed(&self) -> Allowed {
        match self {
            Route::MachineEvents(_) | Route::Jobs => Allowed::Post,
            _ => Allowed::Get,
        }
    }
}

/// Resolves a path (`None`: no such endpoint). Machine names are percent-decoded.
fn route(path: &str) -> Result<Option<Route>, ApiError> {
    Ok(Some(match path {
        "/" => Route::Index,
        "/favicon.ico" => Route::Favicon,
        "/metrics" => Route::Metrics,
        "/stats" => Route::Stats,
        "/trace" => Route::Trace,
        "/errors" => Route::Errors,
        "/healthz" => Route::Healthz,
        "/readyz" => Route::Readyz,
        "/machines" => Route::Machines,
        "/jobs" => Route::Jobs,
        _ => {
            let Some(rest) = path.strip_prefix("/machines/") else {
                return Ok(None);
            };
            let (name, tail) = match rest.split_once('/') {
                Some((n, t)) => (n, Some(t)),
                None => (rest, None),
            };
            if name.is_empty() {
                return Ok(None);
            }
            let name = request::percent_decode(name, false)
                .map_err(|e| ApiError::bad_request(format!("bad machine name in the path: {e}")))?;
            match tail {
                None => Route::Machine(name),
                Some("events") => Route::MachineEvents(name),
                Some(_) => return Ok(None),
            }
        }
    }))
}

/// Handles one request; never fails (errors become JSON error responses).
pub async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let result = dispatch(&state, req).await;
    let response = match result {
        Ok(r) => r,
        Err(e) => {
            report(&state, &method, &path, &e);
            e.into_response()
        }
    };
    tracing::debug!(
        target: "turnstile::sidecar",
        method = %method,
        path = %cut(&path, 200),
        status = response.status().as_u16(),
        "request"
    );
    response
}

/// Bad requests and refused writes show up in `/errors` and `turnstile_errors_total`.
fn report(state: &State, method: &Method, path: &str, e: &ApiError) {
    let kind = if e.status == StatusCode::SERVICE_UNAVAILABLE && e.machine.is_some() {
        ErrorKind::QueueFull
    } else if e.status.is_client_error() {
        ErrorKind::BadMessage
    } else {
        return;
    };
    let msg = format!(
        "HTTP {method} {}: {} {}",
        cut(path, 200),
        e.status.as_u16(),
        e.message
    );
    state
        .telemetry
        .report_error(kind, e.machine.as_deref(), &msg);
}

async fn dispatch(state: &State, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let Some(route) = route(req.uri().path())? else {
        return Err(ApiError::not_found(format!(
            "no endpoint `{}`; see / for the list",
            cut(req.uri().path(), 200)
        )));
    };
    let allowed = route.allowed();
    if !allowed.accepts(req.method()) {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "{} is not allowed on {}; use {}",
                cut(req.method().as_str(), 20),
                cut(req.uri().path(), 200),
                allowed.header()
            ),
        )
        .header(ALLOW, allowed.header()));
    }
    match route {
        Route::Index => Ok(response::index_page(
            env!("CARGO_PKG_VERSION"),
            state.read_only,
            state.token.is_some(),
        )),
        Route::Favicon => {
            let mut r = response::with_body(StatusCode::NO_CONTENT, "image/x-icon", Bytes::new());
            r.headers_mut().remove(CONTENT_TYPE);
            Ok(r)
        }
        Route::Metrics => Ok(metrics(state, &req).await),
        Route::Stats => Ok(response::json(
            StatusCode::OK,
            &state.telemetry.stats(Some(&state.addr.to_string())),
        )),
        Route::Trace => trace(state, &req),
        Route::Errors => errors(state, &req),
        Route::Healthz => Ok(response::json(StatusCode::OK, &json!({"status": "ok"}))),
        Route::Readyz => Ok(readyz(state).await),
        Route::Machines => Ok(response::json(
            StatusCode::OK,
            &Json::Array(state.engine.status().iter().map(machine_json).collect()),
        )),
        Route::Machine(name) => machine(state, &name).await,
        Route::MachineEvents(name) => post_event(state, &name, req).await,
        Route::Jobs => {
            authorize(state, &req)?;
            match &state.jobs {
                Some(store) => crate::server::jobs::post_job(state, store.clone(), req).await,
                None => Err(ApiError::new(
                    StatusCode::NOT_IMPLEMENTED,
                    "no job store is configured: start turnstile run with --db PATH (or a config that uses job actions); or send an event with a job_id to POST /machines/{name}/events",
                )),
            }
        }
    }
}

fn header_str(req: &Request<Incoming>, name: HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn metrics(state: &State, req: &Request<Incoming>) -> Response<Body> {
    let om = request::wants_openmetrics(header_str(req, ACCEPT));
    let text = state.telemetry.metrics_page(om).await;
    let ct = if om {
        response::OPENMETRICS
    } else {
        response::PROMETHEUS_TEXT
    };
    response::with_body(StatusCode::OK, ct, text)
}

fn trace(state: &State, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let p = request::list_params(req.uri().query(), "trace_id").map_err(ApiError::bad_request)?;
    let trace_id = p
        .filter
        .as_deref()
        .map(request::trace_id_filter)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let list = state
        .telemetry
        .traces(p.limit, p.machine.as_deref(), trace_id.as_deref());
    Ok(response::json(StatusCode::OK, &Json::Array(list)))
}

fn errors(state: &State, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let p = request::list_params(req.uri().query(), "kind").map_err(ApiError::bad_request)?;
    if let Some(k) = &p.filter {
        if !ErrorKind::ALL.iter().any(|e| e.as_str() == k) {
            let kinds: Vec<&str> = ErrorKind::ALL.iter().map(|e| e.as_str()).collect();
            return Err(ApiError::bad_request(format!(
                "unknown error kind `{}` (one of {})",
                cut(k, 40),
                kinds.join(", ")
            )));
        }
    }
    let list = state
        .telemetry
        .errors(p.limit, p.machine.as_deref(), p.filter.as_deref());
    let v = serde_json::to_value(list).unwrap_or_else(|_| Json::Array(Vec::new()));
    Ok(response::json(StatusCode::OK, &v))
}

/// Runs `read` (a read of the job store) on a blocking thread, at most one at a time
/// (`busy`), waiting up to `limit`: the reason the store is not ready, if it is not.
async fn probe_store(
    busy: &Arc<AtomicBool>,
    limit: Duration,
    read: impl FnOnce() -> Result<(), turnstile_engine::store::StoreError> + Send + 'static,
) -> Result<(), String> {
    if busy.swap(true, Ordering::AcqRel) {
        return Err("the job store has not answered an earlier check yet".to_owned());
    }
    let done = busy.clone();
    let task = tokio::task::spawn_blocking(move || {
        let r = read();
        done.store(false, Ordering::Release);
        r
    });
    match tokio::time::timeout(limit, task).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(format!("the job store is not usable: {e}")),
        Ok(Err(e)) => {
            busy.store(false, Ordering::Release);
            Err(format!("the job store check failed: {e}"))
        }
        Err(_) => Err(format!(
            "the job store did not answer within {} s",
            limit.as_secs_f64()
        )),
    }
}

async fn readyz(state: &State) -> Response<Body> {
    let status = state.engine.status();
    let mut reasons: Vec<String> = Vec::new();
    if status.is_empty() {
        reasons.push("no machine has been started".to_owned());
    }
    for m in status.iter().filter(|m| !m.running) {
        let why = match m.stop_reason {
            Some(r) => format!(" ({r:?})"),
            None => String::new(),
        };
        reasons.push(format!(
            "machine `{}` has stopped in state `{}`{why}",
            m.name, m.state
        ));
    }
    let store = match &state.jobs {
        Some(s) => {
            let s = s.clone();
            let r = probe_store(&state.store_probe, STORE_PROBE_TIMEOUT, move || s.ping()).await;
            match r {
                Ok(()) => Some(json!("ok")),
                Err(why) => {
                    reasons.push(why.clone());
                    Some(json!(why))
                }
            }
        }
        None => None,
    };
    let machines: serde_json::Map<String, Json> = status
        .iter()
        .map(|m| (m.name.to_string(), json!(m.running)))
        .collect();
    let mut body = if reasons.is_empty() {
        json!({"status": "ready", "machines": machines})
    } else {
        let message = reasons.join("; ");
        json!({
            "status": "not ready",
            "reasons": reasons,
            "machines": machines,
            "error": {"status": 503, "message": message},
        })
    };
    if let (Some(store), Some(o)) = (store, body.as_object_mut()) {
        o.insert("job_store".to_owned(), store);
    }
    let code = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    response::json(code, &body)
}

fn machine_json(m: &MachineStatus) -> Json {
    json!({
        "name": &*m.name,
        "state": &*m.state,
        "since": timestamp(m.since),
        "transitions": m.transitions,
        "events": m.events,
        "errors": m.errors,
        "queue_depth": m.queue_depth,
        "running": m.running,
        "stop_reason": m.stop_reason.map(|r| format!("{r:?}")),
    })
}

fn unknown_machine(name: &str) -> ApiError {
    ApiError::not_found(format!("no machine named `{}`", cut(name, 100)))
}

async fn machine(state: &State, name: &str) -> Result<Response<Body>, ApiError> {
    let Some(m) = state.engine.machine(name) else {
        return Err(unknown_machine(name));
    };
    let mut v = machine_json(&m);
    let snap = tokio::time::timeout(SNAPSHOT_TIMEOUT, state.engine.snapshot(name)).await;
    let def = &m.def;
    if let Json::Object(o) = &mut v {
        match snap {
            Ok(Some(s)) => {
                o.insert("state".into(), json!(&*s.state));
                o.insert("context".into(), Json::Object(s.context));
            }
            Ok(None) => {
                o.insert("context".into(), Json::Null);
            }
            Err(_) => {
                o.insert("context".into(), Json::Null);
                o.insert(
                    "context_error".into(),
                    json!(format!(
                        "the machine did not answer within {SNAPSHOT_TIMEOUT:?}"
                    )),
                );
            }
        }
        o.insert("title".into(), json!(def.title));
        o.insert("description".into(), json!(def.description));
        o.insert(
            "initial_state".into(),
            json!(def.states.get(def.initial).map(|s| &*s.name)),
        );
        o.insert(
            "states".into(),
            Json::Array(def.state_names().map(|s| json!(s)).collect()),
        );
        o.insert(
            "final_states".into(),
            Json::Array(
                def.states
                    .iter()
                    .filter(|s| s.is_final)
                    .map(|s| json!(&*s.name))
                    .collect(),
            ),
        );
        o.insert(
            "declared_events".into(),
            Json::Array(def.events.iter().map(|e| json!(&**e)).collect()),
        );
    }
    Ok(response::json(StatusCode::OK, &v))
}

/// Writes are off in read-only mode (403 for everyone), and need the token when one is
/// configured (401).
fn authorize(state: &State, req: &Request<Incoming>) -> Result<(), ApiError> {
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
pub(super) fn declared_too_large(body: &Incoming, max: usize) -> bool {
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
pub(super) async fn read_body(body: Incoming, max: usize) -> Result<Bytes, ApiError> {
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

async fn post_event(
    state: &State,
    name: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    authorize(state, &req)?;
    if declared_too_large(req.body(), state.max_body_bytes) {
        let e = too_large(state.max_body_bytes);
        return Err(match state.engine.machine(name) {
            Some(_) => e.machine(name),
            None => e,
        });
    }
    if state.engine.machine(name).is_none() {
        return Err(unknown_machine(name));
    }
    let ct = req
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("?"));
    if !request::is_json_content_type(ct) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "the body must be JSON (Content-Type: application/json), not `{}`",
                cut(ct.unwrap_or(""), 80)
            ),
        )
        .machine(name));
    }
    let header_tp = match req.headers().get("traceparent") {
        None => None,
        Some(v) => {
            let s = v.to_str().map_err(|_| {
                ApiError::bad_request("invalid traceparent: not ASCII").machine(name)
            })?;
            Some(
                TraceContext::parse(s)
                    .map_err(|e| ApiError::bad_request(e.to_string()).machine(name))?,
            )
        }
    };
    let body = read_body(req.into_body(), state.max_body_bytes)
        .await
        .map_err(|e| e.machine(name))?;
    let msg = ingress::parse(&body, &state.ingress_limits()).map_err(|e| {
        let status = if e.is_too_large() {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        let mut err = ApiError::new(status, e.to_string()).machine(name);
        if let Some((line, column)) = e.position() {
            err = err
                .field("line", json!(line))
                .field("column", json!(column));
        }
        err
    })?;
    // The header wins over the message's field.
    let traceparent = header_tp.or(msg.traceparent);
    let kind = msg.event.clone();
    let job_id = msg.job_id.clone();
    let mut ev = msg.into_event();
    ev.traceparent = traceparent;
    deliver(&state.engine, name, ev).await?;
    Ok(response::json(
        StatusCode::ACCEPTED,
        &json!({
            "accepted": true,
            "machine": name,
            "type": kind,
            "job_id": job_id,
            "trace_id": traceparent.map(|t| t.trace_id_hex()),
        }),
    ))
}

/// Queues the event, waiting up to [`QUEUE_WAIT`] for room.
async fn deliver(engine: &Engine, name: &str, ev: Event) -> Result<(), ApiError> {
    if engine.machine(name).is_some_and(|m| !m.running) {
        return Err(stopped(name));
    }
    match tokio::time::timeout(QUEUE_WAIT, engine.send(name, ev)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(send_error(name, &e)),
        Err(_) => Err(send_error(name, &SendError::QueueFull(name.to_owned()))),
    }
}

fn stopped(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        format!("machine `{name}` has stopped and takes no more events"),
    )
    .machine(name)
}

fn send_error(name: &str, e: &SendError) -> ApiError {
    match e {
        SendError::UnknownMachine(_) => unknown_machine(name),
        SendError::Stopped(_) => stopped(name),
        SendError::QueueFull(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the event queue of machine `{name}` stayed full for {QUEUE_WAIT:?}; retry later"
            ),
        )
        .header(RETRY_AFTER, "1")
        .machine(name),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn the_store_probe_reports_errors_and_silence_and_runs_one_at_a_time() {
        use turnstile_engine::store::StoreError;
        let busy = Arc::new(AtomicBool::new(false));
        let limit = Duration::from_millis(200);
        assert_eq!(probe_store(&busy, limit, || Ok(())).await, Ok(()));
        let e = probe_store(&busy, limit, || {
            Err(StoreError::Db("disk I/O error".into()))
        })
        .await
        .unwrap_err();
        assert!(
            e.contains("not usable") && e.contains("disk I/O error"),
            "{e}"
        );
        // A read that hangs: no answer within the limit ...
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let e = probe_store(&busy, limit, move || {
            let _ = rx.recv();
            Ok(())
        })
        .await
        .unwrap_err();
        assert!(e.contains("did not answer within 0.2 s"), "{e}");
        // ... and no second read is started while it hangs.
        let e = probe_store(&busy, limit, || panic!("a second read started"))
            .await
            .unwrap_err();
        assert!(e.contains("earlier check"), "{e}");
        // Once it answers, probes run again.
        tx.send(()).unwrap();
        for _ in 0..100 {
            if !busy.load(Ordering::Acquire) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(probe_store(&busy, limit, || Ok(())).await, Ok(()));
    }

    #[test]
    fn routes() {
        assert_eq!(route("/").unwrap(), Some(Route::Index));
        assert_eq!(route("/metrics").unwrap(), Some(Route::Metrics));
        assert_eq!(
            route("/machines/a%20b").unwrap(),
            Some(Route::Machine("a b".into()))
        );
        assert_eq!(
            route("/machines/w/events").unwrap(),
            Some(Route::MachineEvents("w".into()))
        );
        assert_eq!(route("/machines/").unwrap(), None);
        assert_eq!(route("/machines/w/other").unwrap(), None);
        assert_eq!(route("/machines/w/events/x").unwrap(), None);
        assert_eq!(route("/nope").unwrap(), None);
        assert_eq!(route("/metrics/").unwrap(), None);
        assert!(route("/machines/%ff").is_err());
        assert_eq!(
            route("/jobs").unwrap().map(|r| r.allowed()),
            Some(Allowed::Post)
        );
        assert_eq!(
            route("/stats").unwrap().map(|r| r.allowed()),
            Some(Allowed::Get)
        );
    }

    #[test]
    fn methods() {
        assert!(Allowed::Get.accepts(&Method::HEAD));
        assert!(!Allowed::Get.accepts(&Method::POST));
        assert!(Allowed::Post.accepts(&Method::POST));
        assert!(!Allowed::Post.accepts(&Method::GET));
    }

    #[test]
    fn send_errors_map_to_statuses() {
        assert_eq!(
            send_error("m", &SendError::UnknownMachine("m".into())).status,
            404
        );
        assert_eq!(send_error("m", &SendError::Stopped("m".into())).status, 409);
        let full = send_error("m", &SendError::QueueFull("m".into()));
        assert_eq!(full.status, 503);
        assert!(full
            .headers
            .iter()
            .any(|(k, v)| k == RETRY_AFTER && v == "1"));
    }
}

//! The handlers, one per endpoint of [`super::endpoints::ENDPOINTS`], and the dispatch
//! from a request to its handler.
//!
//! Data shown here goes through the process's redactor (`turnstile_engine::redact`): a
//! machine's context shows the values of sensitive fields as `"[redacted]"`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::header::{ACCEPT, ALLOW, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value as Json};
use turnstile_engine::ingress;
use turnstile_engine::observe::ErrorKind;
use turnstile_engine::runtime::live::LiveOp;
use turnstile_engine::{Engine, Event, MachineStatus, SendError};

use super::endpoints::{self, route, Handler, Route};
use super::events;
use super::instances;
use super::job_admin;
use super::jobs;
use super::live;
use super::openapi;
use super::reload;
use super::request::{self, cut};
use super::response::{self, ApiError, Body};
use super::stale;
use super::state::State;
use super::write::JsonPost;
use crate::telemetry::records::timestamp;
use crate::telemetry::Exposition;

/// How long a `POST .../events` waits for room in a full queue before answering 503.
pub const QUEUE_WAIT: Duration = Duration::from_secs(2);
/// How long reading a machine's context may take (it is read on the machine's own task).
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `/readyz` waits for the job store to answer a read.
pub const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

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
    if e.status == StatusCode::UNPROCESSABLE_ENTITY && e.message == reload::REFUSED {
        // Counted as a `config` error, with its diagnostics, by the reload itself.
        return;
    }
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
    let (endpoint, name) = match route(req.method(), req.uri().path())? {
        Route::Found(e, name) => (e, name),
        Route::NotFound => {
            return Err(ApiError::not_found(format!(
                "no endpoint `{}`; see / for the list",
                cut(req.uri().path(), 200)
            )))
        }
        Route::WrongMethod(allow) => {
            let header = HeaderValue::from_str(&allow).unwrap_or(HeaderValue::from_static(""));
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!(
                    "{} is not allowed on {}; use {allow}",
                    cut(req.method().as_str(), 20),
                    cut(req.uri().path(), 200),
                ),
            )
            .header_value(ALLOW, header));
        }
    };
    // `route` gives a value exactly for the endpoints whose path has a `{...}` segment: a
    // machine's name or a job's id.
    let name = name.unwrap_or_default();
    match endpoint.handler {
        Handler::Index => Ok(endpoints::index_page(
            env!("CARGO_PKG_VERSION"),
            state.read_only,
            state.token.is_some(),
        )),
        Handler::Favicon => {
            let mut r = response::with_body(StatusCode::NO_CONTENT, "image/x-icon", Bytes::new());
            r.headers_mut().remove(CONTENT_TYPE);
            Ok(r)
        }
        Handler::Metrics => Ok(metrics(state, &req).await),
        Handler::Stats => Ok(response::json(
            StatusCode::OK,
            &state.telemetry.stats(Some(&state.addr.to_string())),
        )),
        Handler::Trace => trace(state, &req),
        Handler::Errors => errors(state, &req),
        Handler::Events => events::events(state, &req),
        Handler::Healthz => Ok(response::json(StatusCode::OK, &json!({"status": "ok"}))),
        Handler::Readyz => Ok(readyz(state).await),
        Handler::HealthzMachines => stale::healthz_machines(state, &req),
        Handler::Machines => match instances::page_query(req.uri().query()) {
            Ok(None) => Ok(response::json(StatusCode::OK, &machines_json(state))),
            Ok(Some(q)) => Ok(response::json(
                StatusCode::OK,
                &instances::page(state, &q, machine_json),
            )),
            Err(e) => Err(ApiError::bad_request(e)),
        },
        Handler::MachineStart => instances::post_machine(state, req).await,
        Handler::Machine => machine(state, &name).await,
        Handler::MachineEvents => post_event(state, &name, req).await,
        Handler::MachinePause => live::post_control(state, &name, req, LiveOp::Pause).await,
        Handler::MachineResume => live::post_control(state, &name, req, LiveOp::Resume).await,
        Handler::MachineStep => live::post_control(state, &name, req, LiveOp::Step).await,
        Handler::MachineStop => live::post_control(state, &name, req, LiveOp::Stop).await,
        Handler::MachineRestart => live::post_control(state, &name, req, LiveOp::Restart).await,
        Handler::MachineContext => live::patch_context(state, &name, req).await,
        Handler::MachineBreakpoints => live::list_breakpoints(state, &name).await,
        Handler::MachineBreakpointAdd => live::add_breakpoint(state, &name, req).await,
        Handler::MachineBreakpointDelete => live::delete_breakpoint(state, &name, req).await,
        Handler::MachineDiagram => live::diagram(state, &name),
        Handler::Jobs => jobs::post_job(state, req).await,
        Handler::JobList => job_admin::list(state, &req).await,
        Handler::Job => job_admin::show(state, &name).await,
        Handler::JobRetry => job_admin::retry(state, &name, req).await,
        Handler::JobCancel => job_admin::cancel(state, &name, req).await,
        Handler::OpenApi => Ok(response::json(StatusCode::OK, &openapi::document())),
        Handler::Reload => reload::post_reload(state, req).await,
    }
}

fn header_str(req: &Request<Incoming>, name: HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn metrics(state: &State, req: &Request<Incoming>) -> Response<Body> {
    let format = request::metrics_format(header_str(req, ACCEPT));
    let page = state.telemetry.metrics_page(format).await;
    let ct = match format {
        Exposition::Text => response::PROMETHEUS_TEXT,
        Exposition::OpenMetrics => response::OPENMETRICS,
        Exposition::Protobuf => response::PROMETHEUS_PROTOBUF,
    };
    response::with_body(StatusCode::OK, ct, page)
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
    // A singleton on standby is not a machine that failed: it waits to take over.
    if status.is_empty() && state.engine.status_handle().singletons().is_empty() {
        reasons.push("no machine has been started".to_owned());
    }
    let lost = Some(turnstile_engine::observe::StopReason::LeaseLost);
    for m in status
        .iter()
        .filter(|m| !m.running && m.stop_reason != lost)
    {
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

/// `/machines`: every machine of the engine; a singleton's entry says its role here
/// (`holder`), and a singleton this process stands by for is listed too (`standby`, not
/// running).
fn machines_json(state: &State) -> Json {
    let singletons = state.engine.status_handle().singletons();
    let mut list: Vec<Json> = state
        .engine
        .status()
        .iter()
        .map(|m| {
            let mut v = machine_json(m);
            if let (Some(s), Json::Object(o)) =
                (singletons.iter().find(|s| s.name == m.name), &mut v)
            {
                let role = if m.running {
                    s.role.as_str()
                } else {
                    "standby"
                };
                o.insert("singleton".into(), json!({"role": role, "epoch": s.epoch}));
            }
            v
        })
        .collect();
    let listed = |name: &str| {
        list.iter()
            .any(|v| v.get("name").and_then(Json::as_str) == Some(name))
    };
    let standby: Vec<Json> = singletons
        .iter()
        .filter(|s| !listed(&s.name))
        .map(|s| {
            json!({
                "name": &*s.name,
                "running": false,
                "singleton": {"role": s.role.as_str(), "epoch": s.epoch},
            })
        })
        .collect();
    list.extend(standby);
    Json::Array(list)
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
        "paused": m.paused,
        "stop_reason": m.stop_reason.map(|r| format!("{r:?}")),
        "definition": &*m.def.name,
        "instance": m.instance,
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
                // Shown redacted; the machine keeps the real values.
                let mut context = Json::Object(s.context);
                turnstile_engine::redact::global().redact_owned(&mut context);
                o.insert("context".into(), context);
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

async fn post_event(
    state: &State,
    name: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let known = state.engine.machine(name).is_some();
    // A machine of another process sharing the store is asked for once the request is
    // authorized and read (a name nobody runs is a 404 then).
    let remote = if known { None } else { state.engine.remote() };
    let ((), post) = JsonPost::extract(state, req, known.then_some(name), || {
        if known || remote.is_some() {
            Ok(())
        } else {
            Err(unknown_machine(name))
        }
    })
    .await?;
    let (header_tp, body) = (post.traceparent, post.body);
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
    if let Some(remote) = remote {
        return forward(remote, name, ev).await;
    }
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

/// Sends the event through the store to the machine another process runs: 202 with the
/// event's id; 404 when no live process runs it; 503 when the store fails.
async fn forward(
    remote: Arc<dyn turnstile_engine::runtime::router::Remote>,
    name: &str,
    ev: Event,
) -> Result<Response<Body>, ApiError> {
    use turnstile_engine::runtime::router::ForwardError;
    let (kind, job_id, tp) = (ev.name.clone(), ev.job_id.clone(), ev.traceparent);
    let target = name.to_owned();
    let sent = tokio::task::spawn_blocking(move || remote.forward(None, &target, &ev))
        .await
        .unwrap_or_else(|e| {
            Err(ForwardError::Store(
                String::new(),
                format!("the send panicked: {e}"),
            ))
        });
    match sent {
        Ok(id) => Ok(response::json(
            StatusCode::ACCEPTED,
            &json!({
                "accepted": true,
                "machine": name,
                "type": &*kind,
                "job_id": job_id,
                "trace_id": tp.map(|t| t.trace_id_hex()),
                "event_id": id,
                "elsewhere": true,
            }),
        )),
        Err(ForwardError::Unknown(_)) => Err(unknown_machine(name)),
        Err(e) => Err(
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).header(RETRY_AFTER, "1"),
        ),
    }
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
        use super::endpoints::resolve;
        let route = |p: &str| resolve(p).map(|r| r.map(|(e, name)| (e.handler, name)));
        assert_eq!(route("/").unwrap(), Some((Handler::Index, None)));
        assert_eq!(route("/metrics").unwrap(), Some((Handler::Metrics, None)));
        assert_eq!(
            route("/machines/a%20b").unwrap(),
            Some((Handler::Machine, Some("a b".into())))
        );
        assert_eq!(
            route("/machines/w/events").unwrap(),
            Some((Handler::MachineEvents, Some("w".into())))
        );
        assert_eq!(route("/machines/").unwrap(), None);
        assert_eq!(route("/machines/w/other").unwrap(), None);
        assert_eq!(route("/machines/w/events/x").unwrap(), None);
        assert_eq!(route("/nope").unwrap(), None);
        assert_eq!(route("/metrics/").unwrap(), None);
        assert!(route("/machines/%ff").is_err());
    }

    #[test]
    fn methods() {
        use super::endpoints::resolve;
        let get = resolve("/stats").unwrap().unwrap().0;
        let post = resolve("/machines/m/events").unwrap().unwrap().0;
        assert!(get.accepts(&Method::HEAD));
        assert!(!get.accepts(&Method::POST));
        assert!(post.accepts(&Method::POST));
        assert!(!post.accepts(&Method::GET));
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

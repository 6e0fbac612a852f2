//! Live operations on one machine: `POST /machines/{name}/pause`, `/resume`, `/step`,
//! `/stop`, `/restart`; `PATCH /machines/{name}/context` (a JSON merge patch);
//! `GET`/`POST /machines/{name}/breakpoints`, `DELETE .../breakpoints/{id}`; and
//! `GET /machines/{name}/diagram`.
//!
//! The machine's task does the work ([`Engine::control`](turnstile_engine::Engine::control));
//! these handlers check the request (the write checks of [`super::write`] first), ask, and
//! turn the answer into JSON. The engine logs each operation and reports it to the
//! telemetry (a span; the stream, once there is one). A refused operation changes
//! nothing: 404 for an unknown machine or breakpoint, 409 for a stopped machine or an
//! operation that cannot be done now (a step with nothing queued, a patch while an action
//! runs), 400 for bad input (a patch that is not an object, an unknown breakpoint kind, a
//! condition that does not parse: its `column` named).

use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Map, Value as Json};
use turnstile_engine::breakpoint::{BreakpointInfo, BreakpointSpec, Condition, On};
use turnstile_engine::runtime::live::{LiveAnswer, LiveError, LiveOp, LiveState};

use super::request::cut;
use super::response::{self, ApiError, Body};
use super::state::State;
use super::write::{self, JsonPost};

/// How long a live operation waits for the machine's answer (it is served between two
/// events, so only a machine busy with a long quick action is slower).
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

fn unknown_machine(name: &str) -> ApiError {
    ApiError::not_found(format!("no machine named `{}`", cut(name, 100)))
}

fn live_error(name: &str, e: LiveError) -> ApiError {
    let status = match &e {
        LiveError::UnknownMachine(_) => return unknown_machine(name),
        LiveError::NoBreakpoint(..) => StatusCode::NOT_FOUND,
        LiveError::Stopped(_) | LiveError::Conflict(_) => StatusCode::CONFLICT,
        LiveError::Invalid(_) => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, e.to_string()).machine(name)
}

/// Asks the machine, within [`CONTROL_TIMEOUT`].
async fn ask(state: &State, name: &str, op: LiveOp) -> Result<LiveAnswer, ApiError> {
    match tokio::time::timeout(CONTROL_TIMEOUT, state.engine.control(name, op)).await {
        Ok(r) => r.map_err(|e| live_error(name, e)),
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "machine `{name}` did not answer within {CONTROL_TIMEOUT:?} (busy in an action); the operation may still take effect"
            ),
        )
        .machine(name)),
    }
}

fn state_json(name: &str, s: &LiveState) -> Json {
    json!({
        "machine": name,
        "state": &*s.state,
        "paused": s.paused,
        "held_event": s.held.as_deref(),
        "action_running": s.action_running,
        "queue_depth": s.queue_depth,
        "running": !s.stopped,
    })
}

fn breakpoint_json(b: &BreakpointInfo) -> Json {
    json!({
        "id": b.id,
        "on": b.on.as_str(),
        "state": b.state,
        "event": b.event,
        "when": b.when,
        "hits": b.hits,
    })
}

/// Pause, resume, step, stop, restart: a write without a body.
pub(super) async fn post_control(
    state: &State,
    name: &str,
    req: Request<Incoming>,
    op: LiveOp,
) -> Result<Response<Body>, ApiError> {
    write::authorize(state, &req)?;
    if state.engine.machine(name).is_none() {
        return Err(unknown_machine(name));
    }
    let stop = matches!(op, LiveOp::Stop);
    match ask(state, name, op).await? {
        LiveAnswer::Done(s) => {
            let mut v = state_json(name, &s);
            if let (true, Some(o)) = (stop, v.as_object_mut()) {
                o.insert(
                    "stop_reason".into(),
                    json!(turnstile_engine::observe::StopReason::Requested.describe()),
                );
            }
            Ok(response::json(StatusCode::OK, &v))
        }
        other => Err(unexpected(name, &other)),
    }
}

fn unexpected(name: &str, a: &LiveAnswer) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("machine `{name}` gave an unexpected answer: {a:?}"),
    )
}

/// Reads a JSON body of a write to an existing machine (the checks of [`JsonPost`]).
async fn json_body(state: &State, name: &str, req: Request<Incoming>) -> Result<Json, ApiError> {
    let known = state.engine.machine(name).is_some();
    let ((), post) = JsonPost::extract(state, req, known.then_some(name), || {
        if known {
            Ok(())
        } else {
            Err(unknown_machine(name))
        }
    })
    .await?;
    write::json_value(&post.body, state).map_err(|e| e.machine(name))
}

/// `PATCH /machines/{name}/context`.
pub(super) async fn patch_context(
    state: &State,
    name: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let patch = json_body(state, name, req).await?;
    if !patch.is_object() {
        return Err(ApiError::bad_request(
            "the body must be a JSON object: a JSON merge patch (RFC 7396) of the context",
        )
        .machine(name));
    }
    match ask(state, name, LiveOp::PatchContext(patch)).await? {
        LiveAnswer::Context(s, context) => {
            let mut v = state_json(name, &s);
            // Shown redacted; the machine keeps the real values.
            let mut context = Json::Object(context);
            turnstile_engine::redact::global().redact_owned(&mut context);
            if let Some(o) = v.as_object_mut() {
                o.insert("context".into(), context);
            }
            Ok(response::json(StatusCode::OK, &v))
        }
        other => Err(unexpected(name, &other)),
    }
}

/// `GET /machines/{name}/breakpoints`.
pub(super) async fn list_breakpoints(
    state: &State,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    if state.engine.machine(name).is_none() {
        return Err(unknown_machine(name));
    }
    match ask(state, name, LiveOp::Breakpoints).await? {
        LiveAnswer::Breakpoints(list) => Ok(response::json(
            StatusCode::OK,
            &Json::Array(list.iter().map(breakpoint_json).collect()),
        )),
        other => Err(unexpected(name, &other)),
    }
}

/// `POST /machines/{name}/breakpoints`: 201 with the breakpoint.
pub(super) async fn add_breakpoint(
    state: &State,
    name: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let body = json_body(state, name, req).await?;
    let states: Vec<String> = state
        .engine
        .machine(name)
        .map(|m| m.def.state_names().map(str::to_owned).collect())
        .unwrap_or_default();
    let spec = breakpoint_spec(&body, &states).map_err(|e| e.machine(name))?;
    match ask(state, name, LiveOp::AddBreakpoint(spec)).await? {
        LiveAnswer::Breakpoint(b) => Ok(response::json(StatusCode::CREATED, &breakpoint_json(&b))),
        other => Err(unexpected(name, &other)),
    }
}

/// Reads `{on, state?, event?, when?}`; `states` are the machine's states.
fn breakpoint_spec(body: &Json, states: &[String]) -> Result<BreakpointSpec, ApiError> {
    let Json::Object(o) = body else {
        return Err(ApiError::bad_request(
            "the body must be a JSON object like {\"on\": \"enter\", \"state\": \"...\"}",
        ));
    };
    if let Some(k) = o
        .keys()
        .find(|k| !matches!(k.as_str(), "on" | "state" | "event" | "when"))
    {
        return Err(ApiError::bad_request(format!(
            "unknown field `{}` (the fields are on, state, event, when)",
            cut(k, 40)
        )));
    }
    let kinds = || {
        On::ALL
            .iter()
            .map(|o| o.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let on = match o.get("on") {
        Some(Json::String(s)) => On::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown breakpoint kind `{}` (one of {})",
                cut(s, 40),
                kinds()
            ))
        })?,
        Some(_) => return Err(ApiError::bad_request("`on` must be a string")),
        None => {
            return Err(ApiError::bad_request(format!(
                "`on` is required (one of {})",
                kinds()
            )))
        }
    };
    let text = |key: &str, o: &Map<String, Json>| -> Result<Option<String>, ApiError> {
        match o.get(key) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::bad_request(format!("`{key}` must be a string"))),
        }
    };
    let st = text("state", o)?;
    if let Some(s) = &st {
        if !states.iter().any(|n| n == s) {
            return Err(ApiError::bad_request(format!(
                "the machine has no state `{}`",
                cut(s, 100)
            )));
        }
    }
    let when = match text("when", o)? {
        Some(w) => Some(Condition::parse(&w).map_err(|e| {
            ApiError::bad_request(format!("the condition does not parse {e}"))
                .field("column", json!(e.column))
        })?),
        None => None,
    };
    Ok(BreakpointSpec {
        on,
        state: st,
        event: text("event", o)?,
        when,
    })
}

/// `DELETE /machines/{name}/breakpoints/{id}`: 200 with the breakpoint removed.
pub(super) async fn delete_breakpoint(
    state: &State,
    name: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    write::authorize(state, &req)?;
    if state.engine.machine(name).is_none() {
        return Err(unknown_machine(name));
    }
    let last = req.uri().path().rsplit('/').next().unwrap_or("");
    let id: u64 = last.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "`{}` is not a breakpoint id (a whole number)",
            cut(last, 40)
        ))
        .machine(name)
    })?;
    match ask(state, name, LiveOp::RemoveBreakpoint(id)).await? {
        LiveAnswer::Breakpoint(b) => Ok(response::json(StatusCode::OK, &breakpoint_json(&b))),
        other => Err(unexpected(name, &other)),
    }
}

/// `GET /machines/{name}/diagram`: Mermaid text, the current state marked.
pub(super) fn diagram(state: &State, name: &str) -> Result<Response<Body>, ApiError> {
    let Some(m) = state.engine.machine(name) else {
        return Err(unknown_machine(name));
    };
    let current = m.def.state_index(&m.state).unwrap_or(m.def.initial);
    let text = turnstile_engine::diagram::mermaid_marked(&m.def, current, m.paused && m.running);
    Ok(response::with_body(
        StatusCode::OK,
        "text/plain; charset=utf-8",
        Bytes::from(text),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn breakpoint_bodies_are_checked() {
        let states = vec!["idle".to_owned(), "busy".to_owned()];
        let ok = breakpoint_spec(
            &json!({"on": "enter", "state": "busy", "when": "attempts > 3 && exists(order.id)"}),
            &states,
        )
        .unwrap();
        assert_eq!(ok.on, On::Enter);
        for (body, wanted) in [
            (json!({"on": "later"}), "unknown breakpoint kind"),
            (json!({}), "`on` is required"),
            (json!({"on": "enter", "state": "nope"}), "no state `nope`"),
            (json!({"on": "event", "colour": 1}), "unknown field"),
            (json!({"on": "event", "event": 3}), "must be a string"),
            (json!({"on": "event", "when": "a >"}), "at column 4"),
            (json!([1]), "JSON object"),
        ] {
            let e = breakpoint_spec(&body, &states).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.contains(wanted), "{body}: {}", e.message);
        }
    }
}

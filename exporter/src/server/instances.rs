//! Instances of a definition over HTTP: `POST /machines` starts one, and `GET /machines`
//! with a query lists every machine a page at a time.
//!
//! `POST /machines` takes `{"definition": "worker", "name": "w-1", "context": {...}}`
//! (`name` and `context` optional; no other key) through the write checks of
//! [`write`], and answers 201 `{"name": ..., "definition": ...}`; 404 for an unknown
//! definition, 409 for a name a running machine has (or a singleton definition), 400 for a
//! bad body (with its line and column when it is not JSON) or name. Each is logged and
//! recorded as a span (`POST /machines`, with `turnstile.machine` and `turnstile.instance`).
//!
//! `GET /machines` without a query is the list it always was (the machines the process
//! was started with, which are few). With any of `limit`, `after`, `state`, `definition`
//! it is a page of every machine, instances included, in name order:
//! `{"machines": [...], "next": NAME}`, where `next` (`null` on the last page) is the
//! `after` of the next page. Instances may be 100,000: a page is a range of the engine's
//! sorted map, never the whole set.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Map, Value as Json};
use turnstile_engine::{MachineStatus, StartError, TraceContext};

use super::request::{self, cut};
use super::response::{self, ApiError, Body};
use super::state::State;
use super::write::{self, JsonPost};
use crate::telemetry::operations::Operation;

/// Machines a page holds when the request does not say.
pub const DEFAULT_PAGE: usize = 100;
/// The most machines a page holds.
pub const MAX_PAGE: usize = 1000;

/// The parameters of a paged `GET /machines`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct PageQuery {
    limit: Option<usize>,
    after: Option<String>,
    state: Option<String>,
    definition: Option<String>,
}

/// `None` without a query (the list of the machines the process started with).
pub(super) fn page_query(query: Option<&str>) -> Result<Option<PageQuery>, String> {
    let params = request::parse_query(query)?;
    if params.is_empty() {
        return Ok(None);
    }
    let mut q = PageQuery::default();
    let mut seen: Vec<String> = Vec::new();
    for (k, v) in params {
        if seen.contains(&k) {
            return Err(format!("parameter `{}` is given twice", cut(&k, 40)));
        }
        match k.as_str() {
            "limit" => {
                q.limit = Some(request::page_limit(&v, MAX_PAGE)?);
            }
            "after" => q.after = Some(v),
            "state" => q.state = Some(v),
            "definition" => q.definition = Some(v),
            other => {
                return Err(format!(
                    "unknown parameter `{}` (expected limit, after, state or definition)",
                    cut(other, 40)
                ))
            }
        }
        seen.push(k);
    }
    Ok(Some(q))
}

/// A page of `GET /machines`: the machines the process started with and the instances,
/// merged in name order (for a name both have, the running one), each shown by `show`.
pub(super) fn page(state: &State, q: &PageQuery, show: fn(&MachineStatus) -> Json) -> Json {
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    let after = q.after.as_deref();
    let keep = |m: &MachineStatus| {
        after.is_none_or(|a| &*m.name > a)
            && q.state.as_deref().is_none_or(|s| &*m.state == s)
            && q.definition.as_deref().is_none_or(|d| &*m.def.name == d)
    };
    let mut config: Vec<MachineStatus> = state.engine.status().into_iter().filter(keep).collect();
    config.sort_by(|a, b| a.name.cmp(&b.name));
    config.dedup_by(|later, first| {
        // Two of one name (one stopped, one started since): the running one.
        if later.name == first.name {
            if later.running {
                std::mem::swap(later, first);
            }
            true
        } else {
            false
        }
    });
    let (instances, more) = state.engine.status_handle().instances_page(
        after,
        limit,
        q.state.as_deref(),
        q.definition.as_deref(),
    );
    let mut merged: Vec<MachineStatus> =
        Vec::with_capacity(limit.min(config.len() + instances.len()));
    let (mut c, mut i) = (
        config.into_iter().peekable(),
        instances.into_iter().peekable(),
    );
    loop {
        let next = match (c.peek(), i.peek()) {
            (None, None) => break,
            (Some(_), None) => c.next(),
            (None, Some(_)) => i.next(),
            (Some(a), Some(b)) => match a.name.cmp(&b.name) {
                std::cmp::Ordering::Less => c.next(),
                std::cmp::Ordering::Greater => i.next(),
                std::cmp::Ordering::Equal => {
                    let instance_runs = b.running && !a.running;
                    let (a, b) = (c.next(), i.next());
                    if instance_runs {
                        b
                    } else {
                        a
                    }
                }
            },
        };
        match next {
            Some(m) => merged.push(m),
            None => break,
        }
    }
    let next = if merged.len() > limit || more {
        merged.truncate(limit);
        merged.last().map(|m| m.name.to_string())
    } else {
        None
    };
    let machines: Vec<Json> = merged.iter().map(show).collect();
    json!({"machines": machines, "next": next})
}

/// What `POST /machines` asks for.
struct StartRequest {
    definition: String,
    name: Option<String>,
    context: Map<String, Json>,
}

fn start_request(body: Json) -> Result<StartRequest, ApiError> {
    let Json::Object(mut o) = body else {
        return Err(ApiError::bad_request(
            "the body must be a JSON object: {\"definition\": \"...\", \"name\": \"...\", \"context\": {...}}",
        ));
    };
    if let Some(k) = o
        .keys()
        .find(|k| !matches!(k.as_str(), "definition" | "name" | "context"))
    {
        return Err(ApiError::bad_request(format!(
            "unknown key `{}` (expected definition, name, context)",
            cut(k, 40)
        )));
    }
    let definition = match o.remove("definition") {
        Some(Json::String(s)) if !s.is_empty() => s,
        Some(_) => {
            return Err(ApiError::bad_request(
                "`definition` must be a definition's name (a non-empty string)",
            ))
        }
        None => {
            return Err(ApiError::bad_request(
                "`definition` is required: the name of the definition to start",
            ))
        }
    };
    let name = match o.remove("name") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => Some(s),
        Some(_) => return Err(ApiError::bad_request("`name` must be a string")),
    };
    let context = match o.remove("context") {
        None | Some(Json::Null) => Map::new(),
        Some(Json::Object(m)) => m,
        Some(_) => {
            return Err(ApiError::bad_request(
                "`context` must be a JSON object (merged over the definition's context)",
            ))
        }
    };
    Ok(StartRequest {
        definition,
        name,
        context,
    })
}

fn start_error(e: &StartError) -> ApiError {
    let status = match e {
        StartError::UnknownDefinition(_) => StatusCode::NOT_FOUND,
        StartError::NameTaken(_)
        | StartError::Singleton(_)
        | StartError::DefinitionClash { .. } => StatusCode::CONFLICT,
        StartError::BadName(_) | StartError::NotADefinition => StatusCode::BAD_REQUEST,
        StartError::NotRunning | StartError::Store(..) => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::new(status, e.to_string())
}

/// `POST /machines`: logged, and recorded as a span (an operator's write, as the job
/// endpoints' are: [`Operation`]).
pub(super) async fn post_machine(
    state: &State,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let start = std::time::SystemTime::now();
    // As `write` reads it; a malformed header is refused there (the span then has no
    // parent).
    let parent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| TraceContext::parse(s).ok());
    let mut asked: Option<String> = None;
    let result = start_one(state, req, &mut asked).await;
    let definition = asked.as_deref().map(|d| cut(d, 100));
    let (status, error, started) = match &result {
        Ok((_, name)) => (StatusCode::CREATED.as_u16(), None, Some(name.clone())),
        Err(e) => (e.status.as_u16(), Some(e.message.as_str()), None),
    };
    match (&started, error) {
        (Some(name), _) => tracing::info!(
            target: "turnstile::sidecar",
            machine = %name,
            definition = definition.as_deref().unwrap_or(""),
            "POST /machines: instance started"
        ),
        (None, why) => tracing::info!(
            target: "turnstile::sidecar",
            definition = definition.as_deref().unwrap_or(""),
            status,
            "POST /machines refused: {}",
            why.unwrap_or("")
        ),
    }
    let mut attributes = Vec::new();
    if let Some(d) = &definition {
        attributes.push(("turnstile.machine", d.clone()));
    }
    if let Some(n) = &started {
        attributes.push(("turnstile.instance", n.to_string()));
    }
    state.telemetry.record_operation(Operation {
        method: "POST",
        route: "/machines",
        parent,
        start,
        status,
        error,
        attributes,
    });
    result.map(|(r, _)| r)
}

/// Checks the request and starts the instance; `asked` gets the definition asked for.
async fn start_one(
    state: &State,
    req: Request<Incoming>,
    asked: &mut Option<String>,
) -> Result<(Response<Body>, std::sync::Arc<str>), ApiError> {
    let ((), post) = JsonPost::extract(state, req, None, || Ok(())).await?;
    let r = start_request(write::json_value(&post.body, state)?)?;
    *asked = Some(r.definition.clone());
    let name = state
        .engine
        .start_instance(&r.definition, r.name.as_deref(), r.context)
        .map_err(|e| start_error(&e))?;
    let answer = response::json(
        StatusCode::CREATED,
        &json!({"name": &*name, "definition": r.definition}),
    );
    Ok((answer, name))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn page_queries_parse_and_bad_ones_are_named() {
        assert_eq!(page_query(None).unwrap(), None);
        let q = page_query(Some("limit=5&after=w%2D1&state=done&definition=worker"))
            .unwrap()
            .unwrap();
        assert_eq!(q.limit, Some(5));
        assert_eq!(q.after.as_deref(), Some("w-1"));
        assert_eq!(q.state.as_deref(), Some("done"));
        assert_eq!(q.definition.as_deref(), Some("worker"));
        for (bad, names) in [
            ("limit=0", "`limit`"),
            ("limit=1001", "`limit`"),
            ("limit=x", "`limit`"),
            ("limit=1&limit=2", "twice"),
            ("kind=x", "unknown parameter `kind`"),
        ] {
            let e = page_query(Some(bad)).unwrap_err();
            assert!(e.contains(names), "{bad}: {e}");
        }
    }

    #[test]
    fn start_bodies_are_checked() {
        let r =
            start_request(json!({"definition": "w", "name": "a", "context": {"x": 1}})).unwrap();
        assert_eq!((r.definition.as_str(), r.name.as_deref()), ("w", Some("a")));
        assert_eq!(r.context["x"], 1);
        let r = start_request(json!({"definition": "w", "name": null})).unwrap();
        assert!(r.name.is_none() && r.context.is_empty());
        for bad in [
            json!([]),
            json!({}),
            json!({"definition": ""}),
            json!({"definition": 3}),
            json!({"definition": "w", "name": 1}),
            json!({"definition": "w", "context": [1]}),
            json!({"definition": "w", "extra": 1}),
        ] {
            let e = start_request(bad.clone()).err().unwrap();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}

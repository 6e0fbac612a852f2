//! The sidecar's endpoints, declared once: method (every method but GET writes), path,
//! query parameters, the handler that serves it and what the index page says of it.
//! Routing ([`route`]: one path may have several methods), the `/` index page and
//! `/openapi.json` (`openapi.rs`) are all made from [`ENDPOINTS`], so an endpoint cannot
//! be served and left off either.

use bytes::Bytes;
use hyper::{Method, Response, StatusCode};

use super::request;
use super::response::{self, ApiError, Body};

/// Which handler serves an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    Index,
    Favicon,
    Metrics,
    Stats,
    Trace,
    Errors,
    Events,
    Healthz,
    Readyz,
    HealthzMachines,
    Machines,
    MachineStart,
    Machine,
    MachineEvents,
    MachinePause,
    MachineResume,
    MachineStep,
    MachineStop,
    MachineRestart,
    MachineContext,
    MachineBreakpoints,
    MachineBreakpointAdd,
    MachineBreakpointDelete,
    MachineDiagram,
    Jobs,
    JobList,
    Job,
    JobRetry,
    JobCancel,
    OpenApi,
    Reload,
}

/// The method an endpoint takes (GET endpoints take HEAD too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Post,
    Patch,
    Delete,
}

impl Verb {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
            Verb::Patch => "PATCH",
            Verb::Delete => "DELETE",
        }
    }

    /// True when a request's method `m` is served by an endpoint of this verb.
    pub fn accepts(self, m: &Method) -> bool {
        match self {
            Verb::Get => m == Method::GET || m == Method::HEAD,
            Verb::Post => m == Method::POST,
            Verb::Patch => m == Method::PATCH,
            Verb::Delete => m == Method::DELETE,
        }
    }
}

/// One endpoint.
#[derive(Debug)]
pub struct Endpoint {
    /// Its method. Every method but GET writes: the token, read-only mode and the other
    /// checks of `server/write.rs` apply.
    pub method: Verb,
    /// The path; a `{name}` segment matches one percent-encoded machine name, an `{id}`
    /// segment one percent-encoded job id.
    pub path: &'static str,
    /// The query parameters it reads (any other is refused).
    pub query: &'static [&'static str],
    pub handler: Handler,
    /// What the index page and `/openapi.json` say of it (HTML).
    pub doc: &'static str,
}

impl Endpoint {
    /// True for a write (any method but GET).
    pub fn writes(&self) -> bool {
        self.method != Verb::Get
    }

    /// True when `m` is a method this endpoint takes.
    pub fn accepts(&self, m: &Method) -> bool {
        self.method.accepts(m)
    }

    /// The method shown on the index page.
    pub fn method(&self) -> &'static str {
        self.method.as_str()
    }

    /// The first path parameter's name (`name`, `id`), if the path has one.
    /// The first one is the value routing gives the handler (`{name}` for a machine's
    /// paths, `{id}` for a job's); a handler reads any later one (a breakpoint's `{id}`)
    /// from the path itself.
    pub fn param(&self) -> Option<&'static str> {
        self.params().next()
    }

    /// Every path parameter's name, in path order.
    pub fn params(&self) -> impl Iterator<Item = &'static str> {
        self.path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
    }
}

/// Every endpoint the sidecar serves, in the order of the index page.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: Verb::Get,
        path: "/",
        query: &[],
        handler: Handler::Index,
        doc: "this page",
    },
    Endpoint {
        method: Verb::Get,
        path: "/metrics",
        query: &[],
        handler: Handler::Metrics,
        doc: "Prometheus text; OpenMetrics with exemplars on request",
    },
    Endpoint {
        method: Verb::Get,
        path: "/stats",
        query: &[],
        handler: Handler::Stats,
        doc: "processed events, timings, machines",
    },
    Endpoint {
        method: Verb::Get,
        path: "/trace",
        query: &["limit", "machine", "trace_id"],
        handler: Handler::Trace,
        doc: "recent events, newest first",
    },
    Endpoint {
        method: Verb::Get,
        path: "/errors",
        query: &["limit", "machine", "kind"],
        handler: Handler::Errors,
        doc: "recent errors, newest first",
    },
    Endpoint {
        method: Verb::Get,
        path: "/events",
        query: &["machine", "kind"],
        handler: Handler::Events,
        doc: "live records (transitions, actions, errors, jobs, control, breakpoints) as server-sent events; <code>Last-Event-ID</code> resumes",
    },
    Endpoint {
        method: Verb::Get,
        path: "/healthz",
        query: &[],
        handler: Handler::Healthz,
        doc: "liveness",
    },
    Endpoint {
        method: Verb::Get,
        path: "/readyz",
        query: &[],
        handler: Handler::Readyz,
        doc: "readiness",
    },
    Endpoint {
        method: Verb::Get,
        path: "/healthz/machines",
        query: &["stale_after"],
        handler: Handler::HealthzMachines,
        doc: "503 listing the running machines with no activity for longer than <code>stale_after</code> (a duration: <code>60s</code>, <code>5m</code>, <code>1h30m</code>; default 60s), 200 otherwise",
    },
    Endpoint {
        method: Verb::Get,
        path: "/-/healthy",
        query: &[],
        handler: Handler::Healthz,
        doc: "liveness, as <code>/healthz</code> (Prometheus's name)",
    },
    Endpoint {
        method: Verb::Get,
        path: "/-/ready",
        query: &[],
        handler: Handler::Readyz,
        doc: "readiness, as <code>/readyz</code> (Prometheus's name)",
    },
    Endpoint {
        method: Verb::Get,
        path: "/machines",
        query: &["limit", "after", "state", "definition"],
        handler: Handler::Machines,
        doc: "the machines the process started with; with any parameter, a page of every machine, instances included, in name order: <code>{\"machines\": [...], \"next\": NAME}</code>",
    },
    Endpoint {
        method: Verb::Post,
        path: "/machines",
        query: &[],
        handler: Handler::MachineStart,
        doc: "start an instance of a definition: <code>{\"definition\": \"...\", \"name\": \"...\", \"context\": {...}}</code> → 201 <code>{\"name\": ...}</code>",
    },
    Endpoint {
        method: Verb::Get,
        path: "/machines/{name}",
        query: &[],
        handler: Handler::Machine,
        doc: "one machine, with its context",
    },
    Endpoint {
        method: Verb::Post,
        path: "/machines/{name}/events",
        query: &[],
        handler: Handler::MachineEvents,
        doc:
            "send an event: <code>{\"type\": \"...\", \"payload\": ..., \"job_id\": \"...\"}</code>",
    },
    // Live operations (exporter/src/server/live.rs).
    Endpoint {
        method: Verb::Post,
        path: "/machines/{name}/pause",
        query: &[],
        handler: Handler::MachinePause,
        doc: "pause: the machine holds at its next event (a running action goes on); no body",
    },
    Endpoint {
        method: Verb::Post,
        path: "/machines/{name}/resume",
        query: &[],
        handler: Handler::MachineResume,
        doc: "resume a paused machine (the held event first); no body",
    },
    Endpoint {
        method: Verb::Post,
        path: "/machines/{name}/step",
        query: &[],
        handler: Handler::MachineStep,
        doc: "while paused, process exactly one event (409 when none is held or queued); no body",
    },
    Endpoint {
        method: Verb::Post,
        path: "/machines/{name}/stop",
        query: &[],
        handler: Handler::MachineStop,
        doc: "stop the machine as if it reached a final state; no body",
    },
    Endpoint {
        method: Verb::Post,
        path: "/machines/{name}/restart",
        query: &[],
        handler: Handler::MachineRestart,
        doc: "back to the initial state and context, queue cleared, entry actions run; no body",
    },
    Endpoint {
        method: Verb::Patch,
        path: "/machines/{name}/context",
        query: &[],
        handler: Handler::MachineContext,
        doc: "a JSON merge patch of the context (while paused or idle; 409 while an action runs)",
    },
    Endpoint {
        method: Verb::Get,
        path: "/machines/{name}/breakpoints",
        query: &[],
        handler: Handler::MachineBreakpoints,
        doc: "the machine's breakpoints, with hit counts",
    },
    Endpoint {
        method: Verb::Post,
        path: "/machines/{name}/breakpoints",
        query: &[],
        handler: Handler::MachineBreakpointAdd,
        doc: "set a breakpoint: <code>{\"on\": \"enter\"|\"event\"|\"transition\"|\"error\", \"state\": ..., \"event\": ..., \"when\": \"attempts &gt; 3\"}</code>",
    },
    Endpoint {
        method: Verb::Delete,
        path: "/machines/{name}/breakpoints/{id}",
        query: &[],
        handler: Handler::MachineBreakpointDelete,
        doc: "remove a breakpoint",
    },
    Endpoint {
        method: Verb::Get,
        path: "/machines/{name}/diagram",
        query: &[],
        handler: Handler::MachineDiagram,
        doc: "Mermaid <code>stateDiagram-v2</code> with the current state marked (and paused shown)",
    },
    Endpoint {
        method: Verb::Post,
        path: "/jobs",
        query: &[],
        handler: Handler::Jobs,
        doc: "add a job to the job store: <code>{\"job_type\": \"task\", \"data\": {...}}</code>",
    },
    // The job store's jobs, for operators.
    Endpoint {
        method: Verb::Get,
        path: "/jobs",
        query: &["status", "type", "limit", "after"],
        handler: Handler::JobList,
        doc: "jobs of the job store, newest first; <code>after</code>: the <code>next</code> of the previous page",
    },
    Endpoint {
        method: Verb::Get,
        path: "/jobs/{id}",
        query: &[],
        handler: Handler::Job,
        doc: "one job: status, attempts, last error, lease holder, trace id",
    },
    Endpoint {
        method: Verb::Post,
        path: "/jobs/{id}/retry",
        query: &[],
        handler: Handler::JobRetry,
        doc: "a dead-lettered or cancelled job back to pending; no body",
    },
    Endpoint {
        method: Verb::Delete,
        path: "/jobs/{id}",
        query: &[],
        handler: Handler::JobCancel,
        doc: "cancel a pending job (status <code>cancelled</code>, kept); a claimed one is refused (409)",
    },
    Endpoint {
        method: Verb::Get,
        path: "/openapi.json",
        query: &[],
        handler: Handler::OpenApi,
        doc: "this API as an OpenAPI 3.1 document",
    },
    // End of the job endpoints.
    Endpoint {
        method: Verb::Post,
        path: "/-/reload",
        query: &[],
        handler: Handler::Reload,
        doc: "reload every config now (as <code>SIGHUP</code>); no body",
    },
    Endpoint {
        method: Verb::Get,
        path: "/favicon.ico",
        query: &[],
        handler: Handler::Favicon,
        doc: "an empty icon",
    },
];

/// Where a request's path and method lead.
#[derive(Debug)]
pub enum Route {
    /// The endpoint, and the percent-decoded value of its path parameter, if it has one.
    Found(&'static Endpoint, Option<String>),
    /// The path exists, not with this method: the `Allow` header's value.
    WrongMethod(String),
    /// No endpoint has this path.
    NotFound,
}

/// The endpoints whose path matches `path`, each with the raw value of its `{...}`
/// segment.
fn matching(path: &str) -> impl Iterator<Item = (&'static Endpoint, Option<&str>)> {
    let given: Vec<&str> = path.split('/').collect();
    ENDPOINTS.iter().filter_map(move |e| {
        let pattern = e.path.split('/');
        if pattern.clone().count() != given.len() {
            return None;
        }
        let mut value = None;
        for (p, g) in pattern.zip(&given) {
            if p.starts_with('{') {
                if g.is_empty() {
                    return None;
                }
                // The first parameter: see `Endpoint::param`.
                value = value.or(Some(*g));
            } else if p != *g {
                return None;
            }
        }
        Some((e, value))
    })
}

/// Decodes a path parameter's value.
fn decode(e: &Endpoint, raw: Option<&str>) -> Result<Option<String>, ApiError> {
    let what = match e.param() {
        Some("name") => "machine name",
        _ => "job id",
    };
    raw.map(|v| {
        request::percent_decode(v, false)
            .map_err(|err| ApiError::bad_request(format!("bad {what} in the path: {err}")))
    })
    .transpose()
}

/// Resolves a request's method and path to its endpoint. A path parameter that does not
/// decode is a 400.
pub fn route(method: &Method, path: &str) -> Result<Route, ApiError> {
    let mut allow: Vec<&str> = Vec::new();
    for (e, raw) in matching(path) {
        if e.accepts(method) {
            return Ok(Route::Found(e, decode(e, raw)?));
        }
        match e.method {
            Verb::Get => allow.extend(["GET", "HEAD"]),
            v => allow.push(v.as_str()),
        }
    }
    if allow.is_empty() {
        return Ok(Route::NotFound);
    }
    allow.sort_unstable();
    allow.dedup();
    Ok(Route::WrongMethod(allow.join(", ")))
}

/// Resolves a path to its first endpoint (in table order) and the decoded value of its
/// path parameter (`None`: no such endpoint), whatever the method.
pub fn resolve(path: &str) -> Result<Option<(&'static Endpoint, Option<String>)>, ApiError> {
    match matching(path).next() {
        Some((e, raw)) => Ok(Some((e, decode(e, raw)?))),
        None => Ok(None),
    }
}

/// `?a=&b=` for the index page.
fn query_hint(e: &Endpoint) -> String {
    if e.query.is_empty() {
        return String::new();
    }
    let q: Vec<String> = e.query.iter().map(|k| format!("{k}=")).collect();
    format!(" (<code>?{}</code>)", q.join("&amp;"))
}

/// The `/` page: every endpoint of [`ENDPOINTS`], GET paths without a name as links.
pub fn index_page(version: &str, read_only: bool, token: bool) -> Response<Body> {
    let writes = if read_only {
        "off (read-only mode)"
    } else if token {
        "on, with a bearer token"
    } else {
        "on, without a token"
    };
    let mut items = String::new();
    for e in ENDPOINTS {
        let line = if !e.writes() && !e.path.contains('{') {
            format!(
                "<li><a href=\"{p}\">{p}</a>: {doc}{q}</li>\n",
                p = e.path,
                doc = e.doc,
                q = query_hint(e)
            )
        } else {
            format!(
                "<li><code>{} {}</code>: {}{}</li>\n",
                e.method(),
                e.path,
                e.doc,
                query_hint(e)
            )
        };
        items.push_str(&line);
    }
    let html = format!(
        r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Turnstile</title></head>
<body>
<h1>Turnstile {version}</h1>
<p>The sidecar of a Turnstile engine. Writes: {writes}.</p>
<ul>
{items}</ul>
</body>
</html>
"#
    );
    response::with_body(
        StatusCode::OK,
        "text/html; charset=utf-8",
        Bytes::from(html),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use http_body_util::BodyExt as _;

    async fn page() -> String {
        let r = index_page("0", false, false);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_index_lists_every_endpoint_of_the_table() {
        let page = page().await;
        for e in ENDPOINTS {
            let shown = if !e.writes() && !e.path.contains('{') {
                format!("<a href=\"{}\">", e.path)
            } else {
                format!("<code>{} {}</code>", e.method(), e.path)
            };
            assert!(page.contains(&shown), "{shown} is not on the index page");
        }
        assert!(page.contains("<code>POST /jobs</code>"), "{page}");
        assert!(page.contains("<code>POST /-/reload</code>"), "{page}");
        assert!(page.contains("<a href=\"/-/healthy\">"), "{page}");
        assert!(page.contains("<a href=\"/-/ready\">"), "{page}");
        assert!(page.contains("<code>POST /machines/{name}/events</code>"));
    }

    #[test]
    fn every_endpoint_routes_to_itself_and_only_get_reads() {
        for e in ENDPOINTS {
            let path = e.path.replace("{name}", "a%20b").replace("{id}", "a%20b");
            let method = Method::from_bytes(e.method().as_bytes()).unwrap();
            let Route::Found(found, value) = route(&method, &path).unwrap() else {
                panic!("{} {path} does not route", e.method());
            };
            assert_eq!(found.handler, e.handler, "{path}");
            assert_eq!(value.as_deref(), e.param().map(|_| "a b"), "{path}");
            assert_eq!(e.writes(), !e.accepts(&Method::GET), "{path}");
        }
        // One path, several methods: each goes to its own handler; others get the list.
        let to = |m: Method, p: &str| match route(&m, p).unwrap() {
            Route::Found(e, _) => Some(e.handler),
            _ => None,
        };
        assert_eq!(to(Method::GET, "/jobs"), Some(Handler::JobList));
        assert_eq!(to(Method::POST, "/jobs"), Some(Handler::Jobs));
        assert_eq!(to(Method::DELETE, "/jobs/j1"), Some(Handler::JobCancel));
        assert_eq!(to(Method::HEAD, "/jobs/j1"), Some(Handler::Job));
        assert!(matches!(
            route(&Method::PUT, "/jobs").unwrap(),
            Route::WrongMethod(a) if a == "GET, HEAD, POST"
        ));
        assert!(matches!(
            route(&Method::GET, "/jobs/j1/retry").unwrap(),
            Route::WrongMethod(a) if a == "POST"
        ));
        assert!(matches!(
            route(&Method::GET, "/jobs/").unwrap(),
            Route::NotFound
        ));
        assert!(route(&Method::GET, "/jobs/%ff").is_err());
        assert_eq!(
            resolve("/machines/a%20b").unwrap().unwrap().1.unwrap(),
            "a b"
        );
        for missing in [
            "/machines/",
            "/machines//events",
            "/machines/a/b",
            "/nope",
            "",
        ] {
            assert!(resolve(missing).unwrap().is_none(), "{missing}");
        }
    }
}

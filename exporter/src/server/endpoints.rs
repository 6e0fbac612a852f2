//! The sidecar's endpoints, declared once: method, path, whether it writes, the handler
//! that serves it and what the index page says of it. Path resolution and the `/` index
//! page are both made from [`ENDPOINTS`], so an endpoint cannot be served and left off the
//! page.

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
    Healthz,
    Readyz,
    Machines,
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
    Reload,
}

impl Handler {
    /// The method of a write that is not a POST.
    fn write_method(self) -> Option<&'static str> {
        match self {
            Handler::MachineContext => Some("PATCH"),
            Handler::MachineBreakpointDelete => Some("DELETE"),
            _ => None,
        }
    }
}

/// One endpoint.
#[derive(Debug)]
pub struct Endpoint {
    /// The path; a `{name}` segment matches one percent-encoded machine name, an `{id}`
    /// segment any one segment (the handler reads it).
    pub path: &'static str,
    /// Writes (token, read-only mode, JSON body) take POST, or the method their handler
    /// names (PATCH, DELETE); the others take GET and HEAD.
    pub writes: bool,
    pub handler: Handler,
    /// What the index page says of it (HTML).
    pub doc: &'static str,
}

impl Endpoint {
    /// The value of an `Allow` header for this endpoint.
    pub fn allow(&self) -> &'static str {
        if self.writes {
            self.method()
        } else {
            "GET, HEAD"
        }
    }

    /// True when `m` is a method this endpoint takes.
    pub fn accepts(&self, m: &Method) -> bool {
        if self.writes {
            m.as_str() == self.method()
        } else {
            m == Method::GET || m == Method::HEAD
        }
    }

    /// The method shown on the index page.
    pub fn method(&self) -> &'static str {
        match (self.writes, self.handler.write_method()) {
            (true, Some(m)) => m,
            (true, None) => "POST",
            (false, _) => "GET",
        }
    }
}

/// Every endpoint the sidecar serves, in the order of the index page.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        path: "/",
        writes: false,
        handler: Handler::Index,
        doc: "this page",
    },
    Endpoint {
        path: "/metrics",
        writes: false,
        handler: Handler::Metrics,
        doc: "Prometheus text; OpenMetrics with exemplars on request",
    },
    Endpoint {
        path: "/stats",
        writes: false,
        handler: Handler::Stats,
        doc: "processed events, timings, machines",
    },
    Endpoint {
        path: "/trace",
        writes: false,
        handler: Handler::Trace,
        doc: "recent events, newest first (<code>?limit=&amp;machine=&amp;trace_id=</code>)",
    },
    Endpoint {
        path: "/errors",
        writes: false,
        handler: Handler::Errors,
        doc: "recent errors, newest first (<code>?limit=&amp;machine=&amp;kind=</code>)",
    },
    Endpoint {
        path: "/healthz",
        writes: false,
        handler: Handler::Healthz,
        doc: "liveness",
    },
    Endpoint {
        path: "/readyz",
        writes: false,
        handler: Handler::Readyz,
        doc: "readiness",
    },
    Endpoint {
        path: "/-/healthy",
        writes: false,
        handler: Handler::Healthz,
        doc: "liveness, as <code>/healthz</code> (Prometheus's name)",
    },
    Endpoint {
        path: "/-/ready",
        writes: false,
        handler: Handler::Readyz,
        doc: "readiness, as <code>/readyz</code> (Prometheus's name)",
    },
    Endpoint {
        path: "/machines",
        writes: false,
        handler: Handler::Machines,
        doc: "every machine",
    },
    Endpoint {
        path: "/machines/{name}",
        writes: false,
        handler: Handler::Machine,
        doc: "one machine, with its context",
    },
    Endpoint {
        path: "/machines/{name}/events",
        writes: true,
        handler: Handler::MachineEvents,
        doc:
            "send an event: <code>{\"type\": \"...\", \"payload\": ..., \"job_id\": \"...\"}</code>",
    },
    // Live operations (exporter/src/server/live.rs).
    Endpoint {
        path: "/machines/{name}/pause",
        writes: true,
        handler: Handler::MachinePause,
        doc: "pause: the machine holds at its next event (a running action goes on); no body",
    },
    Endpoint {
        path: "/machines/{name}/resume",
        writes: true,
        handler: Handler::MachineResume,
        doc: "resume a paused machine (the held event first); no body",
    },
    Endpoint {
        path: "/machines/{name}/step",
        writes: true,
        handler: Handler::MachineStep,
        doc: "while paused, process exactly one event (409 when none is held or queued); no body",
    },
    Endpoint {
        path: "/machines/{name}/stop",
        writes: true,
        handler: Handler::MachineStop,
        doc: "stop the machine as if it reached a final state; no body",
    },
    Endpoint {
        path: "/machines/{name}/restart",
        writes: true,
        handler: Handler::MachineRestart,
        doc: "back to the initial state and context, queue cleared, entry actions run; no body",
    },
    Endpoint {
        path: "/machines/{name}/context",
        writes: true,
        handler: Handler::MachineContext,
        doc: "a JSON merge patch of the context (while paused or idle; 409 while an action runs)",
    },
    Endpoint {
        path: "/machines/{name}/breakpoints",
        writes: false,
        handler: Handler::MachineBreakpoints,
        doc: "the machine's breakpoints, with hit counts",
    },
    Endpoint {
        path: "/machines/{name}/breakpoints",
        writes: true,
        handler: Handler::MachineBreakpointAdd,
        doc: "set a breakpoint: <code>{\"on\": \"enter\"|\"event\"|\"transition\"|\"error\", \"state\": ..., \"event\": ..., \"when\": \"attempts &gt; 3\"}</code>",
    },
    Endpoint {
        path: "/machines/{name}/breakpoints/{id}",
        writes: true,
        handler: Handler::MachineBreakpointDelete,
        doc: "remove a breakpoint",
    },
    Endpoint {
        path: "/machines/{name}/diagram",
        writes: false,
        handler: Handler::MachineDiagram,
        doc: "Mermaid <code>stateDiagram-v2</code> with the current state marked (and paused shown)",
    },
    Endpoint {
        path: "/jobs",
        writes: true,
        handler: Handler::Jobs,
        doc: "add a job to the job store: <code>{\"job_type\": \"task\", \"data\": {...}}</code>",
    },
    Endpoint {
        path: "/-/reload",
        writes: true,
        handler: Handler::Reload,
        doc: "reload every config now (as <code>SIGHUP</code>); no body",
    },
    Endpoint {
        path: "/favicon.ico",
        writes: false,
        handler: Handler::Favicon,
        doc: "an empty icon",
    },
];

/// Resolves a path to its endpoint and, for `{name}` paths, the percent-decoded machine
/// name (`None`: no such endpoint). Of the endpoints of one path, the first one.
pub fn resolve(path: &str) -> Result<Option<(&'static Endpoint, Option<String>)>, ApiError> {
    resolve_method(None, path)
}

/// [`resolve`], preferring, of the endpoints of one path, the one that takes `method`.
pub fn resolve_method(
    method: Option<&Method>,
    path: &str,
) -> Result<Option<(&'static Endpoint, Option<String>)>, ApiError> {
    let mut first = None;
    for (e, name) in matching(path) {
        if method.is_none_or(|m| e.accepts(m)) {
            return Ok(Some((e, decode_name(name)?)));
        }
        first.get_or_insert((e, name));
    }
    match first {
        Some((e, name)) => Ok(Some((e, decode_name(name)?))),
        None => Ok(None),
    }
}

/// Every method the endpoints of `e`'s path take, for an `Allow` header.
pub fn allow_all(e: &Endpoint) -> String {
    let mut methods: Vec<&str> = Vec::new();
    for other in ENDPOINTS.iter().filter(|o| o.path == e.path) {
        if !methods.contains(&other.allow()) {
            methods.push(other.allow());
        }
    }
    methods.join(", ")
}

fn decode_name(name: Option<&str>) -> Result<Option<String>, ApiError> {
    name.map(|n| {
        request::percent_decode(n, false)
            .map_err(|e| ApiError::bad_request(format!("bad machine name in the path: {e}")))
    })
    .transpose()
}

/// The endpoints whose path matches, with the raw `{name}` segment.
fn matching(path: &str) -> impl Iterator<Item = (&'static Endpoint, Option<&str>)> {
    let given: Vec<&str> = path.split('/').collect();
    ENDPOINTS.iter().filter_map(move |e| {
        let pattern: Vec<&str> = e.path.split('/').collect();
        if pattern.len() != given.len() {
            return None;
        }
        let mut name = None;
        for (p, g) in pattern.iter().zip(&given) {
            if *p == "{name}" || *p == "{id}" {
                if g.is_empty() {
                    return None;
                }
                if *p == "{name}" {
                    name = Some(*g);
                }
            } else if p != g {
                return None;
            }
        }
        Some((e, name))
    })
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
        let line = if !e.writes && !e.path.contains('{') {
            format!(
                "<li><a href=\"{p}\">{p}</a>: {doc}</li>\n",
                p = e.path,
                doc = e.doc
            )
        } else {
            format!(
                "<li><code>{} {}</code>: {}</li>\n",
                e.method(),
                e.path,
                e.doc
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
            let shown = if !e.writes && !e.path.contains('{') {
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
    fn every_endpoint_resolves_to_itself_and_writes_take_post() {
        for e in ENDPOINTS {
            let path = e.path.replace("{name}", "a%20b").replace("{id}", "7");
            let method = Method::from_bytes(e.method().as_bytes()).unwrap();
            let (found, name) = resolve_method(Some(&method), &path).unwrap().unwrap();
            assert_eq!(found.handler, e.handler, "{path}");
            assert_eq!(name.is_some(), e.path.contains("{name}"));
            assert_eq!(e.accepts(&Method::GET), !e.writes);
            assert_eq!(
                e.accepts(&Method::POST),
                e.writes && e.handler.write_method().is_none()
            );
        }
        let bp = "/machines/m/breakpoints";
        let get = resolve_method(Some(&Method::GET), bp).unwrap().unwrap().0;
        let post = resolve_method(Some(&Method::POST), bp).unwrap().unwrap().0;
        assert_eq!(
            (get.handler, post.handler),
            (Handler::MachineBreakpoints, Handler::MachineBreakpointAdd)
        );
        assert_eq!(allow_all(get), "GET, HEAD, POST");
        let put = resolve_method(Some(&Method::PUT), bp).unwrap().unwrap().0;
        assert!(!put.accepts(&Method::PUT));
        let patch = resolve_method(Some(&Method::PATCH), "/machines/m/context");
        assert_eq!(patch.unwrap().unwrap().0.allow(), "PATCH");
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

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
    Jobs,
    Reload,
}

/// One endpoint.
#[derive(Debug)]
pub struct Endpoint {
    /// The path; a `{name}` segment matches one percent-encoded machine name.
    pub path: &'static str,
    /// POST endpoints write (token, read-only mode, JSON body); the others take GET and
    /// HEAD.
    pub writes: bool,
    pub handler: Handler,
    /// What the index page says of it (HTML).
    pub doc: &'static str,
}

impl Endpoint {
    /// The value of an `Allow` header for this endpoint.
    pub fn allow(&self) -> &'static str {
        if self.writes {
            "POST"
        } else {
            "GET, HEAD"
        }
    }

    /// True when `m` is a method this endpoint takes.
    pub fn accepts(&self, m: &Method) -> bool {
        if self.writes {
            m == Method::POST
        } else {
            m == Method::GET || m == Method::HEAD
        }
    }

    /// The method shown on the index page.
    pub fn method(&self) -> &'static str {
        if self.writes {
            "POST"
        } else {
            "GET"
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
/// name (`None`: no such endpoint).
pub fn resolve(path: &str) -> Result<Option<(&'static Endpoint, Option<String>)>, ApiError> {
    let given: Vec<&str> = path.split('/').collect();
    for e in ENDPOINTS {
        let pattern: Vec<&str> = e.path.split('/').collect();
        if pattern.len() != given.len() {
            continue;
        }
        let mut name = None;
        let mut matched = true;
        for (p, g) in pattern.iter().zip(&given) {
            if *p == "{name}" {
                if g.is_empty() {
                    matched = false;
                    break;
                }
                name = Some(*g);
            } else if p != g {
                matched = false;
                break;
            }
        }
        if !matched {
            continue;
        }
        let name = match name {
            None => None,
            Some(n) => Some(request::percent_decode(n, false).map_err(|e| {
                ApiError::bad_request(format!("bad machine name in the path: {e}"))
            })?),
        };
        return Ok(Some((e, name)));
    }
    Ok(None)
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
            let path = e.path.replace("{name}", "a%20b");
            let (found, name) = resolve(&path).unwrap().unwrap();
            assert_eq!(found.handler, e.handler, "{path}");
            assert_eq!(name.is_some(), e.path.contains("{name}"));
            assert_eq!(e.accepts(&Method::POST), e.writes);
        }
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

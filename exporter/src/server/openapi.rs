//! `GET /openapi.json`: the sidecar's API as an OpenAPI 3.1 document, made from the one
//! endpoint table ([`ENDPOINTS`]), so an endpoint cannot be served and left out of it.
//! Each entry gives an operation: its method and path, its path parameter (`{name}`: a
//! machine, `{id}`: a job), its query parameters, its summary (the index page's text without
//! HTML), and for writes the bearer token (when the sidecar has one) and the answers every
//! write may get (401, 403). Every error answer has the one error shape (`Error`).

use serde_json::{json, Map, Value as Json};

use super::endpoints::{Endpoint, Handler, Verb, ENDPOINTS};

/// Query parameters whose values are whole numbers.
const INTEGER_PARAMS: &[&str] = &["limit", "after"];

/// The index page's HTML as plain text: tags dropped, the few entities it uses decoded.
fn plain(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
}

/// A unique operation id: the method and the path's words (`get_jobs_id`).
pub fn operation_id(e: &Endpoint) -> String {
    let words: Vec<String> = e
        .path
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    let path = if words.is_empty() {
        "root".to_owned()
    } else {
        words.join("_")
    };
    format!("{}_{path}", e.method().to_ascii_lowercase())
}

/// Handlers whose write reads a JSON body.
fn takes_json(h: Handler) -> bool {
    matches!(
        h,
        Handler::MachineEvents
            | Handler::MachineStart
            | Handler::Jobs
            | Handler::MachineContext
            | Handler::MachineBreakpointAdd
    )
}

fn error_answer(what: &str) -> Json {
    json!({
        "description": what,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    })
}

fn operation(e: &Endpoint) -> Json {
    let mut params = Vec::new();
    for p in e.params() {
        let what = match p {
            "name" => "the machine's name",
            _ if e.path.starts_with("/machines/") => "the breakpoint's id",
            _ => "the job's id",
        };
        params.push(json!({
            "name": p, "in": "path", "required": true, "description": what,
            "schema": {"type": "string"},
        }));
    }
    for q in e.query {
        let ty = if INTEGER_PARAMS.contains(q) {
            "integer"
        } else {
            "string"
        };
        params.push(json!({"name": q, "in": "query", "required": false, "schema": {"type": ty}}));
    }
    if e.handler == Handler::Events {
        params.push(json!({
            "name": "Last-Event-ID", "in": "header", "required": false,
            "description": "resume after this record id",
            "schema": {"type": "integer"},
        }));
    }
    let mut responses = Map::new();
    let ok = if e.writes() {
        "done (201 for a job added, 202 for an event accepted)"
    } else {
        "OK"
    };
    responses.insert("2XX".into(), json!({"description": ok}));
    if e.writes() {
        responses.insert(
            "401".into(),
            error_answer("the sidecar has a token and the request did not bring it"),
        );
        responses.insert(
            "403".into(),
            error_answer("the sidecar is read-only (--read-only)"),
        );
    }
    responses.insert("4XX".into(), error_answer("a bad request: nothing changed"));
    responses.insert("5XX".into(), error_answer("the sidecar could not serve it"));
    let mut op = json!({
        "operationId": operation_id(e),
        "summary": plain(e.doc),
        "parameters": params,
        "responses": responses,
    });
    if let Json::Object(o) = &mut op {
        if e.writes() {
            // The token is needed only when the sidecar was given one.
            o.insert("security".into(), json!([{"bearer": []}, {}]));
        }
        if takes_json(e.handler) {
            o.insert(
                "requestBody".into(),
                json!({"required": true, "content": {"application/json": {"schema": {}}}}),
            );
        }
    }
    op
}

/// The document.
pub fn document() -> Json {
    let mut paths: Map<String, Json> = Map::new();
    for e in ENDPOINTS {
        let item = paths
            .entry(e.path.to_owned())
            .or_insert_with(|| Json::Object(Map::new()));
        let method = match e.method {
            Verb::Get => "get",
            Verb::Post => "post",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
        };
        if let Json::Object(o) = item {
            o.insert(method.into(), operation(e));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Turnstile sidecar",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The HTTP sidecar of a Turnstile engine: metrics, records, machines and the job store. GET endpoints also take HEAD.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {
                        "type": "object",
                        "required": ["status", "message"],
                        "properties": {
                            "status": {"type": "integer"},
                            "message": {"type": "string"},
                        },
                    }},
                },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_endpoint_of_the_table_is_described_once() {
        let doc = document();
        let mut ids = std::collections::HashSet::new();
        for e in ENDPOINTS {
            let op = &doc["paths"][e.path][e.method().to_ascii_lowercase()];
            assert!(op.is_object(), "{} {} is missing", e.method(), e.path);
            assert!(ids.insert(operation_id(e)), "{} twice", operation_id(e));
            assert_eq!(op["summary"], plain(e.doc));
            let params = op["parameters"].as_array().unwrap();
            assert_eq!(
                params.len(),
                e.query.len() + e.params().count() + usize::from(e.handler == Handler::Events)
            );
            assert_eq!(op.get("security").is_some(), e.writes(), "{}", e.path);
            assert!(!op["summary"].as_str().unwrap().contains('<'), "{}", e.path);
        }
        let described: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|item| item.as_object().unwrap().len())
            .sum();
        assert_eq!(described, ENDPOINTS.len(), "operations not in the table");
        assert_eq!(operation_id(&ENDPOINTS[0]), "get_root");
        assert_eq!(
            doc["paths"]["/jobs/{id}/retry"]["post"]["parameters"][0]["in"],
            "path"
        );
        assert_eq!(
            plain("a <code>{\"x\": 1}</code> &amp; b"),
            "a {\"x\": 1} & b"
        );
    }
}

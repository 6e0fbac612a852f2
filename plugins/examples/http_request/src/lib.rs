//! Turnstile plugin: `http_request`, an HTTP(S) call whose response status picks the
//! machine's next event.
//!
//! ```yaml
//! - type: http_request
//!   url: "https://api.example.com/jobs/{job_id}"   # required; http or https
//!   method: POST                                    # default GET
//!   headers:                                        # optional
//!     Authorization: "Bearer {api_token}"
//!   body: {id: "{job_id}", state: done}             # a mapping/list is sent as JSON
//!   timeout: 10                                     # seconds for the whole call (default 30)
//!   status_events:                                  # status (or class) -> event
//!     "404": not_found
//!     "409": conflict
//!     5xx: server_error
//!   success: reported                               # any other 2xx (default `success`)
//!   error: report_failed                            # anything else (default `error`)
//!   timeout_event: report_timeout                   # the call ran out of time
//!   response_key: report                            # context key of the response
//! ```
//!
//! The response is stored in the context under `response_key` (default `http_response`)
//! as `{status, headers, body}`; `body` is parsed JSON when the response is JSON, else
//! text (at most `max_response_bytes`, default 1 MiB). A status that `status_events`
//! maps returns that event (exact code first, then the class such as `4xx`, then
//! `default`); an unmapped 2xx returns `success`; any other status, a connection failure
//! or a timeout is an error (type `http_status`, `connect`, `timeout`, ...) and the
//! machine gets the `error` event (`timeout_event` for a timeout).

use std::io::Read;
use std::sync::OnceLock;
use std::time::Duration;

use turnstile_plugin::serde_json::{Map, Value as Json};
use turnstile_plugin::{export_plugin, number, Call, Manifest, Plugin, PluginError, Reply};
use ureq::http;

const DEFAULT_TIMEOUT_SECS: f64 = 30.0;
const DEFAULT_MAX_RESPONSE: u64 = 1024 * 1024;

/// The plugin: one HTTP agent (connection pool) shared by every call.
#[derive(Default)]
pub struct HttpRequest {
    agent: OnceLock<ureq::Agent>,
}

impl Plugin for HttpRequest {
    fn manifest(&self) -> Manifest {
        Manifest::new("http_request", env!("CARGO_PKG_VERSION")).action_with_params(
            "http_request",
            &[
                "url",
                "method",
                "headers",
                "body",
                "status_events",
                "response_key",
                "max_response_bytes",
                "follow_redirects",
            ],
        )
    }

    fn invoke(&self, action: &str, call: &Call) -> Result<Reply, PluginError> {
        if action != "http_request" {
            return Err(PluginError::new(
                "unknown_action",
                format!("the http_request plugin has no action `{action}`"),
            ));
        }
        let agent = self.agent.get_or_init(|| {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .user_agent(concat!(
                    "turnstile-http_request/",
                    env!("CARGO_PKG_VERSION")
                ))
                .build()
                .into()
        });
        run(agent, call)
    }
}

fn bad_input(message: String) -> PluginError {
    PluginError::new("bad_input", message)
}

fn run(agent: &ureq::Agent, call: &Call) -> Result<Reply, PluginError> {
    let url = call
        .param_str("url")
        .ok_or_else(|| bad_input("missing parameter `url`".into()))?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(bad_input(format!(
            "`url` must start with http:// or https://, found `{url}`"
        )));
    }
    let method = call
        .param_str("method")
        .unwrap_or("GET")
        .to_ascii_uppercase();
    let method = http::Method::from_bytes(method.as_bytes())
        .map_err(|_| bad_input(format!("`method` `{method}` is not an HTTP method")))?;
    let timeout = call.param_f64("timeout").unwrap_or(DEFAULT_TIMEOUT_SECS);
    let timeout = Duration::try_from_secs_f64(timeout).map_err(|_| {
        bad_input(format!(
            "`timeout` must be a positive number, found {timeout}"
        ))
    })?;
    let max_response = call
        .param_f64("max_response_bytes")
        .map_or(DEFAULT_MAX_RESPONSE, |n| n.max(0.0) as u64);
    let follow = !matches!(call.param("follow_redirects"), Some(Json::Bool(false)));

    let mut builder = http::Request::builder().method(method.clone()).uri(url);
    let mut has_content_type = false;
    match call.param("headers") {
        None => {}
        Some(Json::Object(h)) => {
            for (name, value) in h {
                let value = match value {
                    Json::String(s) => s.clone(),
                    Json::Number(_) | Json::Bool(_) => value.to_string(),
                    _ => return Err(bad_input(format!("header `{name}` must be text"))),
                };
                has_content_type |= name.eq_ignore_ascii_case("content-type");
                builder = builder.header(name.as_str(), value);
            }
        }
        Some(_) => return Err(bad_input("`headers` must be a mapping".into())),
    }
    let body: Option<Vec<u8>> = match call.param("body") {
        None => None,
        Some(Json::String(s)) => Some(s.clone().into_bytes()),
        Some(v @ (Json::Object(_) | Json::Array(_))) => {
            if !has_content_type {
                builder = builder.header("content-type", "application/json");
            }
            Some(v.to_string().into_bytes())
        }
        Some(v) => Some(v.to_string().into_bytes()),
    };
    let shown = format!("{method} {url}");
    let result = match body {
        Some(b) => send(agent, builder.body(b), timeout, follow),
        None => send(agent, builder.body(()), timeout, follow),
    };
    let mut response = result.map_err(|e| classify(&e, &shown, call))?;

    let status = response.status().as_u16();
    let mut headers = Map::new();
    for (name, value) in response.headers() {
        headers.insert(
            name.as_str().to_owned(),
            Json::String(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        );
    }
    let is_json = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    let mut bytes = Vec::new();
    response
        .body_mut()
        .as_reader()
        .take(max_response)
        .read_to_end(&mut bytes)
        .map_err(|e| {
            PluginError::new("read", format!("{shown}: reading the response failed: {e}"))
        })?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = if is_json {
        turnstile_plugin::serde_json::from_str(&text).unwrap_or(Json::String(text))
    } else {
        Json::String(text)
    };
    let key = call.param_str("response_key").unwrap_or("http_response");
    let record = turnstile_plugin::serde_json::json!({
        "status": status, "headers": headers, "body": body,
    });
    let line = format!("{shown} -> {status}");
    match mapped_event(call, status)? {
        Some(event) => Ok(Reply::event(event).set(key, record).log(line)),
        None if (200..300).contains(&status) => {
            Ok(Reply::event(call.success()).set(key, record).log(line))
        }
        None => Err(
            PluginError::new("http_status", format!("{shown} returned HTTP {status}"))
                .set(key, record),
        ),
    }
}

fn send<B: ureq::AsSendBody>(
    agent: &ureq::Agent,
    request: Result<http::Request<B>, http::Error>,
    timeout: Duration,
    follow: bool,
) -> Result<http::Response<ureq::Body>, ureq::Error> {
    let request = agent
        .configure_request(request?)
        .timeout_global(Some(timeout))
        .max_redirects(if follow { 10 } else { 0 })
        .build();
    agent.run(request)
}

/// The event `status_events` gives for `status`: the exact code, then its class (`4xx`),
/// then `default`.
fn mapped_event(call: &Call, status: u16) -> Result<Option<String>, PluginError> {
    let map = match call.param("status_events") {
        None => return Ok(None),
        Some(Json::Object(m)) => m,
        Some(_) => {
            return Err(bad_input(
                "`status_events` must be a mapping of status code to event".into(),
            ))
        }
    };
    let exact = status.to_string();
    let class = format!("{}xx", status / 100);
    for key in [exact.as_str(), class.as_str(), "default"] {
        let hit = map
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v);
        match hit {
            Some(Json::String(ev)) => return Ok(Some(ev.clone())),
            Some(v) if number(v).is_some() => return Ok(Some(v.to_string())),
            Some(_) => {
                return Err(bad_input(format!(
                    "`status_events.{key}` must be an event name"
                )))
            }
            None => {}
        }
    }
    Ok(None)
}

fn classify(e: &ureq::Error, shown: &str, call: &Call) -> PluginError {
    let (kind, event) = match e {
        ureq::Error::Timeout(_) => ("timeout", call.param_str("timeout_event")),
        ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
            ("connect", None)
        }
        ureq::Error::BadUri(_) | ureq::Error::Http(_) => ("bad_input", None),
        ureq::Error::Tls(_) => ("tls", None),
        _ => ("http", None),
    };
    let err = PluginError::new(kind, format!("{shown}: {e}"));
    match event {
        Some(ev) => err.with_event(ev),
        None => err,
    }
}

export_plugin!(HttpRequest);

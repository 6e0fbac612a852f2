//! A client of a running sidecar for `turnstile jobs ... --url`, `turnstile ctl` and
//! `turnstile tail`: one HTTP/1.1 request per call (hyper's client over a Tokio TCP
//! connection, on a runtime of its own), the answer read whole and parsed as JSON (or
//! taken as text: [`Sidecar::get_text`]). The sidecar's error answers (`{"error":
//! {"status", "message"}}`) become [`Refused`] errors that say what to do: a token
//! refused (401, with or without `TURNSTILE_TOKEN`), read-only mode (403), anything else
//! with the sidecar's message; a sidecar that cannot be reached is an [`Unreachable`].
//! Plain `http://` only: a sidecar behind TLS (`--web-config`) is reached through
//! something that terminates it (a port-forward, a proxy).

use std::time::Duration;

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value as Json;

/// How long connecting, sending and reading an answer may take in all.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// A sidecar, by its base URL.
#[derive(Debug, Clone)]
pub struct Sidecar {
    /// `host:port`.
    authority: String,
    /// The path the sidecar's paths are under (`""` or `/prefix`).
    base: String,
    /// The URL as given, for messages.
    shown: String,
    token: Option<String>,
    /// Said after a 403 (read-only mode): what to do instead.
    read_only_hint: Option<&'static str>,
}

/// A sidecar's answer that is not a success: its status and message.
#[derive(Debug)]
pub struct Refused {
    pub status: StatusCode,
    pub message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status.as_u16())
    }
}

impl std::error::Error for Refused {}

/// The sidecar could not be reached, or did not answer in time: the request
/// (`METHOD URL`) and why.
#[derive(Debug)]
pub struct Unreachable {
    pub request: String,
    pub why: String,
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: cannot reach the sidecar: {}",
            self.request, self.why
        )
    }
}

impl std::error::Error for Unreachable {}

impl Sidecar {
    /// Reads `http://HOST:PORT[/PATH]`; `token`: the bearer token writes send.
    pub fn new(url: &str, token: Option<String>) -> Result<Self, crate::UsageError> {
        let bad = |why: &str| crate::UsageError(format!("--url `{url}`: {why}"));
        let rest = if let Some(rest) = url.strip_prefix("http://") {
            rest
        } else if url.starts_with("https://") {
            return Err(bad(
                "https is not supported here; reach the sidecar over http (a port-forward, or a proxy that terminates TLS)",
            ));
        } else {
            return Err(bad("expected http://HOST:PORT"));
        };
        let (authority, base) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(bad(
                "expected http://HOST:PORT (no user name or password in the URL; the token comes from TURNSTILE_TOKEN)",
            ));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.contains(']'))
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Sidecar {
            authority,
            base: base.to_owned(),
            shown: url.to_owned(),
            token: token.filter(|t| !t.is_empty()),
            read_only_hint: None,
        })
    }

    /// What a 403 (read-only mode) message goes on to advise.
    pub fn read_only_hint(mut self, hint: &'static str) -> Self {
        self.read_only_hint = Some(hint);
        self
    }

    /// `GET path` (with its query); the answer's JSON.
    pub fn get(&self, path_and_query: &str) -> anyhow::Result<Json> {
        self.call(Method::GET, path_and_query, None)
    }

    /// A write without a body (`POST`, `DELETE`), with the token when there is one.
    pub fn write(&self, method: Method, path: &str) -> anyhow::Result<Json> {
        self.call(method, path, None)
    }

    /// A write with a JSON body (`POST`, `PATCH`), with the token when there is one.
    pub fn write_json(&self, method: Method, path: &str, body: &Json) -> anyhow::Result<Json> {
        self.call(method, path, Some(body))
    }

    /// `GET path` whose answer is text (`/machines/{name}/diagram`).
    pub fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let body = self.exchange(Method::GET, path, None)?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    fn call(&self, method: Method, path: &str, body: Option<&Json>) -> anyhow::Result<Json> {
        let what = format!("{method} {}{path}", self.shown.trim_end_matches('/'));
        let body = self.exchange(method, path, body)?;
        serde_json::from_slice(&body).map_err(|_| anyhow!("{what}: the answer is not JSON"))
    }

    /// One request; a success's body, or the error ([`Refused`], [`Unreachable`]).
    fn exchange(&self, method: Method, path: &str, body: Option<&Json>) -> anyhow::Result<Bytes> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the HTTP client's runtime")?;
        let body = match body {
            Some(b) => Some(Bytes::from(serde_json::to_vec(b)?)),
            None => None,
        };
        let request = format!("{method} {}{path}", self.shown.trim_end_matches('/'));
        let answer = rt.block_on(async {
            tokio::time::timeout(TIMEOUT, self.send(method.clone(), path, body))
                .await
                .map_err(|_| anyhow!("no answer within {} s", TIMEOUT.as_secs()))?
        });
        let (status, body) = answer.map_err(|e| Unreachable {
            request,
            why: format!("{e:#}"),
        })?;
        if status.is_success() {
            return Ok(body);
        }
        let json: Option<Json> = serde_json::from_slice(&body).ok();
        let message = json
            .as_ref()
            .and_then(|j| j["error"]["message"].as_str())
            .map_or_else(
                || String::from_utf8_lossy(&body).trim().to_owned(),
                str::to_owned,
            );
        let message = match status {
            StatusCode::UNAUTHORIZED if self.token.is_none() => format!(
                "the sidecar needs a token for writes: set TURNSTILE_TOKEN (or --token) to its token ({message})"
            ),
            StatusCode::UNAUTHORIZED => format!(
                "the sidecar refused the token (TURNSTILE_TOKEN or --token): {message}"
            ),
            StatusCode::FORBIDDEN => match self.read_only_hint {
                Some(hint) => format!(
                    "the sidecar runs read-only (--read-only) and refuses every change ({message}); {hint}"
                ),
                None => format!(
                    "the sidecar runs read-only (--read-only) and refuses every change ({message})"
                ),
            },
            _ => message,
        };
        Err(Refused { status, message }.into())
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let tcp = tokio::net::TcpStream::connect(&self.authority).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        let driver = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base))
            .header(HOST, &self.authority);
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        let mut req = req.body(Full::new(body.unwrap_or_default()))?;
        if method != Method::GET {
            if let Some(t) = &self.token {
                let v = HeaderValue::from_str(&format!("Bearer {t}"))
                    .map_err(|_| anyhow!("the token holds characters a header cannot carry"))?;
                req.headers_mut().insert(AUTHORIZATION, v);
            }
        }
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        driver.abort();
        Ok((status, body))
    }
}

impl Sidecar {
    /// The URL as given, for messages.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// `GET path` whose answer is read as it comes (`turnstile tail`): its head, its body,
    /// and the task driving the connection (abort it when done with the body). `headers`
    /// are added to the request.
    pub async fn open(
        &self,
        path: &str,
        headers: &[(&'static str, String)],
    ) -> anyhow::Result<(
        hyper::Response<hyper::body::Incoming>,
        tokio::task::JoinHandle<()>,
    )> {
        let tcp = tokio::net::TcpStream::connect(&self.authority).await?;
        let _ = tcp.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(format!("{}{path}", self.base))
            .header(HOST, &self.authority)
            .body(Full::new(Bytes::new()))?;
        for (name, value) in headers {
            let v = HeaderValue::from_str(value)
                .map_err(|_| anyhow!("`{value}` cannot be sent in a header"))?;
            req.headers_mut().insert(*name, v);
        }
        match sender.send_request(req).await {
            Ok(resp) => Ok((resp, driver)),
            Err(e) => {
                driver.abort();
                Err(e.into())
            }
        }
    }
}

/// Percent-encodes a path segment or a query value (all but `A-Z a-z 0-9 - _ . ~`).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A query string of the given pairs (values percent-encoded), `""` when none.
pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", segment(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn urls_and_segments() {
        let s = Sidecar::new("http://127.0.0.1:8000/", None).unwrap();
        assert_eq!(
            (s.authority.as_str(), s.base.as_str()),
            ("127.0.0.1:8000", "")
        );
        let s = Sidecar::new("http://example.com/t", Some(String::new())).unwrap();
        assert_eq!(
            (s.authority.as_str(), s.base.as_str()),
            ("example.com:80", "/t")
        );
        assert!(s.token.is_none());
        assert!(Sidecar::new("https://h:1", None).is_err());
        assert!(Sidecar::new("h:1", None).is_err());
        assert!(Sidecar::new("http://u:p@h:1", None).is_err());
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
        assert_eq!(
            query(&[
                ("status", Some("dead".into())),
                ("type", None),
                ("limit", Some("5".into()))
            ]),
            "?status=dead&limit=5"
        );
        assert_eq!(query(&[("type", None)]), "");
    }
}

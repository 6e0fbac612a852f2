//! Responses: JSON bodies, the error shape every failure uses, and a few fixed pages.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::{json, Value as Json};

/// The body type of every response: a whole body, or the stream of `GET /events`.
pub type Body = http_body_util::Either<Full<Bytes>, EventBody>;

/// The body of a `GET /events` answer: the chunks its task sends, until the task ends.
pub struct EventBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
}

impl EventBody {
    /// The body of the chunks `rx` receives; it ends when their sender is gone.
    pub fn new(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Self {
        Self { rx }
    }
}

impl std::fmt::Debug for EventBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBody").finish_non_exhaustive()
    }
}

impl hyper::body::Body for EventBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|c| c.map(|b| Ok(hyper::body::Frame::data(b))))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::default()
    }
}

/// Content type of JSON responses.
pub const JSON: &str = "application/json";
/// Content type of the OpenMetrics exposition.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text exposition.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of the Prometheus protobuf exposition (with native histograms).
pub const PROMETHEUS_PROTOBUF: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// A response with a body and a content type; never cached.
pub fn with_body(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(http_body_util::Either::Left(Full::new(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// A JSON response (one line, newline-terminated).
pub fn json(status: StatusCode, value: &Json) -> Response<Body> {
    let mut body = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
    body.push(b'\n');
    with_body(status, JSON, Bytes::from(body))
}

/// An error as the API reports it: a status, a message for people, and optionally more
/// fields inside `error` and response headers.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status (4xx or 5xx).
    pub status: StatusCode,
    /// What went wrong and, where possible, how to fix it.
    pub message: String,
    /// Extra members of the `error` object (e.g. `line`, `column`).
    pub extra: Option<Box<serde_json::Map<String, Json>>>,
    /// Extra response headers (`Allow`, `WWW-Authenticate`, `Retry-After`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The machine the request was about, when it exists (for `/errors`).
    pub machine: Option<String>,
}

impl ApiError {
    /// An error with a status and a message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            extra: None,
            headers: Vec::new(),
            machine: None,
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404 Not Found.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// Adds a response header.
    #[must_use]
    pub fn header(mut self, name: HeaderName, value: &'static str) -> Self {
        self.headers.push((name, HeaderValue::from_static(value)));
        self
    }

    /// Adds a response header whose value is made at run time.
    #[must_use]
    pub fn header_value(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Adds a member to the `error` object.
    #[must_use]
    pub fn field(mut self, key: &str, value: Json) -> Self {
        self.extra
            .get_or_insert_with(Box::default)
            .insert(key.to_owned(), value);
        self
    }

    /// Names the (existing) machine the request was about.
    #[must_use]
    pub fn machine(mut self, name: &str) -> Self {
        self.machine = Some(name.to_owned());
        self
    }

    /// The response: `{"error": {"status": N, "message": "...", ...}}`.
    pub fn into_response(self) -> Response<Body> {
        let mut error = serde_json::Map::new();
        error.insert("status".into(), json!(self.status.as_u16()));
        error.insert("message".into(), json!(self.message));
        if let Some(extra) = self.extra {
            error.extend(*extra);
        }
        let mut r = json(self.status, &json!({ "error": error }));
        for (k, v) in self.headers {
            r.headers_mut().append(k, v);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use http_body_util::BodyExt as _;
    use hyper::header::ALLOW;

    #[tokio::test]
    async fn errors_have_the_common_shape() {
        let r = ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "use GET")
            .header(ALLOW, "GET, HEAD")
            .field("line", json!(2))
            .into_response();
        assert_eq!(r.status(), 405);
        assert_eq!(r.headers()[ALLOW], "GET, HEAD");
        assert_eq!(r.headers()[CONTENT_TYPE], JSON);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let v: Json = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({"error": {"status": 405, "message": "use GET", "line": 2}})
        );
    }
}

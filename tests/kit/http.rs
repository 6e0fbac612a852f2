//! A tiny HTTP/1.1 client for the sidecar and Prometheus: one request a connection
//! (`Connection: close`), the whole response read, a chunked body decoded.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value as Json;

/// How long connecting, writing and reading may each take (both cores may be busy).
pub const IO_LIMIT: Duration = Duration::from_secs(30);

/// A whole response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    /// Names in lower case, values trimmed.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the status and body when it is not.
    pub fn json(&self) -> Json {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text()))
    }
}

/// A connection to `addr` with [`IO_LIMIT`] timeouts.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_LIMIT)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(IO_LIMIT)).expect("read timeout");
    s.set_write_timeout(Some(IO_LIMIT)).expect("write timeout");
    s
}

/// Parses a whole response (the server closed the connection after it).
pub fn parse(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line `{status_line}`"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body,
    }
}

/// Decodes a chunked body (extensions ignored, trailers dropped).
pub fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let field = String::from_utf8_lossy(&b[..eol]).into_owned();
        let size_text = field.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .unwrap_or_else(|e| panic!("bad chunk size `{size_text}` ({e})"));
        if size == 0 {
            return out;
        }
        let start = eol + 2;
        out.extend_from_slice(&b[start..start + size]);
        b = &b[start + size + 2..];
    }
}

/// Sends one request (`Connection: close`, plus `headers`; a `Content-Length` for a POST
/// or a body unless `headers` has one) and reads the whole response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    let has_length = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    if !has_length && (method == "POST" || !body.is_empty()) {
        raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    raw.push_str("\r\n");
    let mut bytes = raw.into_bytes();
    bytes.extend_from_slice(body);
    let mut s = connect(addr);
    s.write_all(&bytes)
        .unwrap_or_else(|e| panic!("sending {method} {path} to {addr}: {e}"));
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .unwrap_or_else(|e| panic!("reading the answer to {method} {path} from {addr}: {e}"));
    parse(&resp)
}

/// A request with a JSON `body` (`Content-Type: application/json`); the status and the
/// body as text.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let r = request(
        addr,
        method,
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    (r.status, r.text())
}

/// A GET.
pub fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[], b"")
}

/// A GET whose answer must be 200 with a JSON body.
pub fn get_json(addr: SocketAddr, path: &str) -> Json {
    let r = get(addr, path);
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.json()
}

/// A POST of `body` as JSON, with more `headers`.
pub fn post_json(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &Json) -> Resp {
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    request(addr, "POST", path, &h, body.to_string().as_bytes())
}

/// Percent-encodes a query parameter or form value (all but `A-Z a-z 0-9 - _ . ~`).
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The value of the first sample of `series` (a metric name with its labels, as written)
/// in `/metrics`, if there is one.
pub fn metric(addr: SocketAddr, series: &str) -> Option<f64> {
    let (_, body) = http(addr, "GET", "/metrics", "");
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

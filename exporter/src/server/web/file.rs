//! The web configuration file, in the format of Prometheus's exporter-toolkit
//! (<https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md>),
//! read into [`Settings`]: what the sidecar's connections and requests use.
//!
//! Every key the format defines is known here. Those rustls cannot honour are refused with
//! a message that says why, rather than ignored: a scraper configured for a client
//! certificate check that silently does not happen is worse than a sidecar that does not
//! start. Unknown keys are refused too (a typo must not turn TLS or auth off).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::tls::{self, RawTls};

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    tls_server_config: Option<RawTls>,
    http_server_config: Option<RawHttp>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

/// `http_server_config`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    http2: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// Response headers exporter-toolkit lets a web config set; any other is refused (they
/// are security headers; content headers belong to the endpoints).
const ALLOWED_HEADERS: [&str; 5] = [
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
    "Content-Security-Policy",
];

/// What one reading of the file says.
#[derive(Debug, Default)]
pub struct Settings {
    /// TLS for every new connection; `None`: plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// User name → bcrypt hash; empty: no basic auth.
    pub users: BTreeMap<String, String>,
    /// Added to every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The files the settings were read from (the web config and the certificate files
    /// it names), whose changes trigger a new reading.
    pub files: Vec<PathBuf>,
}

/// Reads and checks `path`. The error names the file, and the line and column when the
/// YAML says where.
pub fn read(path: &Path) -> Result<Settings, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    options.with_snippet = false;
    let raw: Option<Raw> = serde_saphyr::from_str_with_options(&text, options).map_err(|e| {
        let first = e.to_string();
        let first = first.lines().next().unwrap_or("invalid YAML").to_owned();
        match e.location() {
            Some(l) => format!("{shown}:{}:{}: {first}", l.line(), l.column()),
            None => format!("{shown}: {first}"),
        }
    })?;
    let raw = raw.unwrap_or_default();
    let base = path.parent().unwrap_or(Path::new("."));
    let mut files = vec![path.to_path_buf()];
    let tls = match raw.tls_server_config {
        Some(t) => Some(
            tls::build(&t, base, &mut files)
                .map_err(|e| format!("{shown}: tls_server_config: {e}"))?,
        ),
        None => None,
    };
    let mut users = BTreeMap::new();
    for (user, hash) in raw.basic_auth_users {
        check_hash(&hash).map_err(|e| format!("{shown}: basic_auth_users: {user}: {e}"))?;
        users.insert(user, hash);
    }
    let mut headers = Vec::new();
    if let Some(http) = raw.http_server_config {
        // HTTP/2 is not served (Prometheus scrapes over HTTP/1.1); `http2: true`, the
        // format's default, is accepted and means nothing here.
        let _ = http.http2;
        for (name, value) in http.headers {
            let Some(allowed) = ALLOWED_HEADERS
                .iter()
                .find(|a| a.eq_ignore_ascii_case(&name))
            else {
                return Err(format!(
                    "{shown}: http_server_config.headers: `{name}` cannot be set here (allowed: {})",
                    ALLOWED_HEADERS.join(", ")
                ));
            };
            let value = HeaderValue::from_str(&value).map_err(|_| {
                format!("{shown}: http_server_config.headers: {allowed}: not a valid header value")
            })?;
            headers.push((HeaderName::from_static_lower(allowed), value));
        }
    }
    Ok(Settings {
        tls,
        users,
        headers,
        files,
    })
}

/// Highest bcrypt cost accepted: each check of a password against a hash of cost c costs
/// 2^c rounds (cost 10 is about 50 ms on one core here); a hash of cost 20 would take about a
/// minute per request, so it is refused as a mistake rather than served.
pub const MAX_BCRYPT_COST: u32 = 14;

/// A bcrypt hash (`$2a$`, `$2b$`, `$2y$`) with a cost of at most [`MAX_BCRYPT_COST`].
fn check_hash(hash: &str) -> Result<(), String> {
    let parts: Vec<&str> = hash.split('$').collect();
    let ok_shape = parts.len() == 4
        && parts[0].is_empty()
        && matches!(parts[1], "2a" | "2b" | "2y" | "2x")
        && parts[3].len() == 53;
    let cost: Option<u32> = parts.get(2).and_then(|c| c.parse().ok());
    match (ok_shape, cost) {
        (true, Some(c)) if (4..=MAX_BCRYPT_COST).contains(&c) => Ok(()),
        (true, Some(c)) => Err(format!(
            "bcrypt cost {c} is outside 4..={MAX_BCRYPT_COST} (each request would pay it)"
        )),
        _ => Err("not a bcrypt hash (`$2y$10$...`, e.g. from `htpasswd -nBC 10 USER`)".into()),
    }
}

/// [`HeaderName::from_static`] needs lower case.
trait FromStaticLower {
    fn from_static_lower(s: &'static str) -> HeaderName;
}

impl FromStaticLower for HeaderName {
    fn from_static_lower(s: &'static str) -> HeaderName {
        HeaderName::from_bytes(s.to_ascii_lowercase().as_bytes())
            .unwrap_or_else(|_| HeaderName::from_static("x-invalid"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn read_text(text: &str) -> Result<Settings, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.yml");
        std::fs::write(&path, text).unwrap();
        read(&path).map_err(|e| e.replace(&path.display().to_string(), "web.yml"))
    }

    #[test]
    fn users_and_headers() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let s = read_text(&format!(
            "basic_auth_users:\n  alice: '{hash}'\nhttp_server_config:\n  headers:\n    x-frame-options: deny\n"
        ))
        .unwrap();
        assert_eq!(s.users.get("alice"), Some(&hash));
        assert_eq!(s.headers[0].0.as_str(), "x-frame-options");
        assert!(s.tls.is_none());
        assert!(read_text("").unwrap().users.is_empty());
    }

    #[test]
    fn bad_files_say_where_and_why() {
        let e = read_text("basic_auth_users:\n  alice: nothash\n").unwrap_err();
        assert!(
            e.contains("web.yml: basic_auth_users: alice: not a bcrypt hash"),
            "{e}"
        );
        let e = read_text("basic_auth_user:\n  alice: x\n").unwrap_err();
        assert!(
            e.starts_with("web.yml:1:1: unknown field `basic_auth_user`"),
            "{e}"
        );
        let e = read_text("http_server_config:\n  headers:\n    Content-Type: x\n").unwrap_err();
        assert!(e.contains("`Content-Type` cannot be set here"), "{e}");
        let costly = "$2b$20$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234";
        let e = read_text(&format!("basic_auth_users:\n  bob: '{costly}'\n")).unwrap_err();
        assert!(e.contains("bcrypt cost 20 is outside"), "{e}");
        let e = read_text("tls_server_config:\n  cert_file: a\n").unwrap_err();
        assert!(e.contains("tls_server_config"), "{e}");
    }
}

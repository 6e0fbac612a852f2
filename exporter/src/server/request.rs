//! The pure parts of request handling: query strings, content negotiation and bearer
//! tokens. No I/O here, so every rule is unit-tested beside it. The event message body is
//! parsed and checked by the engine's [`turnstile_engine::ingress`], the same parser the
//! Unix sockets use.

/// Default number of records `/trace` and `/errors` return.
pub const DEFAULT_LIMIT: usize = 100;
/// Most records `/trace` and `/errors` return (a larger `limit` is cut to this).
pub const MAX_LIMIT: usize = 1000;
pub use turnstile_engine::ingress::{MAX_EVENT_TYPE_LEN, MAX_JOB_ID_LEN};

use crate::telemetry::Exposition;

/// Decodes `%XX` escapes (and `+` as a space when `plus_as_space`); the result must be
/// UTF-8.
pub fn percent_decode(s: &str, plus_as_space: bool) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (b.get(i + 1).copied(), b.get(i + 2).copied()) {
                    (Some(h), Some(l)) => match (hex(h), hex(l)) {
                        (Some(h), Some(l)) => {
                            // Two hex digits are at most 0xff.
                            out.push(u8::try_from(h * 16 + l).unwrap_or(0));
                            i += 3;
                        }
                        _ => return Err(format!("bad percent escape in `{}`", cut(s, 80))),
                    },
                    _ => return Err(format!("bad percent escape in `{}`", cut(s, 80))),
                }
            }
            b'+' if plus_as_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{}` does not decode to UTF-8", cut(s, 80)))
}

/// Splits a query string into decoded `(key, value)` pairs, in order. Empty pieces
/// (`a=1&&b=2`) are skipped; a key without `=` has an empty value.
pub fn parse_query(query: Option<&str>) -> Result<Vec<(String, String)>, String> {
    let Some(q) = query else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for piece in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
        let k = percent_decode(k, true)?;
        let v = percent_decode(v, true)?;
        if k.is_empty() {
            return Err(format!("empty parameter name in `{}`", cut(piece, 80)));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// The parameters of `/trace` and `/errors`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListParams {
    /// How many records (at most [`MAX_LIMIT`]).
    pub limit: usize,
    /// Only records of this machine.
    pub machine: Option<String>,
    /// The endpoint's own filter (`trace_id` or `kind`).
    pub filter: Option<String>,
}

/// Parses `limit`, `machine` and the endpoint's own `filter_key`; any other parameter, a
/// repeated one or a `limit` that is not a whole number is an error.
pub fn list_params(query: Option<&str>, filter_key: &str) -> Result<ListParams, String> {
    let mut p = ListParams {
        limit: DEFAULT_LIMIT,
        machine: None,
        filter: None,
    };
    let mut seen: Vec<String> = Vec::new();
    for (k, v) in parse_query(query)? {
        if seen.contains(&k) {
            return Err(format!("parameter `{}` is given twice", cut(&k, 40)));
        }
        match k.as_str() {
            "limit" => {
                let n: u64 = v.trim().parse().map_err(|_| {
                    format!(
                        "`limit` must be a whole number from 0 to {MAX_LIMIT}, not `{}`",
                        cut(&v, 40)
                    )
                })?;
                p.limit = usize::try_from(n).unwrap_or(MAX_LIMIT).min(MAX_LIMIT);
            }
            "machine" => p.machine = Some(v),
            k if k == filter_key => p.filter = Some(v),
            other => {
                return Err(format!(
                    "unknown parameter `{}` (expected limit, machine or {filter_key})",
                    cut(other, 40)
                ))
            }
        }
        seen.push(k);
    }
    Ok(p)
}

/// A page's `limit` query parameter: a whole number from 1 to `max`, or the message
/// that says so.
pub fn page_limit(v: &str, max: usize) -> Result<usize, String> {
    v.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            format!(
                "`limit` must be a whole number from 1 to {max}, not `{}`",
                cut(v, 40)
            )
        })
}

/// Checks a `trace_id` filter: 32 hex digits, returned in lowercase as records hold it.
pub fn trace_id_filter(v: &str) -> Result<String, String> {
    let t = v.trim().to_ascii_lowercase();
    if t.len() == 32 && t.bytes().all(|c| c.is_ascii_hexdigit()) {
        Ok(t)
    } else {
        Err(format!(
            "`trace_id` must be 32 hex digits, not `{}`",
            cut(v, 40)
        ))
    }
}

/// One media range of an `Accept` or `Content-Type` header: the lowercase type and its
/// `q` (1 when absent).
fn media_ranges(header: &str) -> impl Iterator<Item = (String, f32)> + '_ {
    header.split(',').filter_map(|item| {
        let mut parts = item.split(';');
        let ty = parts.next()?.trim().to_ascii_lowercase();
        if ty.is_empty() {
            return None;
        }
        let mut q = 1.0f32;
        for param in parts {
            if let Some((k, v)) = param.split_once('=') {
                if k.trim().eq_ignore_ascii_case("q") {
                    q = v.trim().parse().unwrap_or(0.0);
                }
            }
        }
        Some((ty, q))
    })
}

/// True when the scraper asks for OpenMetrics: an `Accept` entry
/// `application/openmetrics-text` with a non-zero `q` that is not ranked below an
/// explicit `text/plain`.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    let mut om = None::<f32>;
    let mut text = None::<f32>;
    for (ty, q) in media_ranges(accept) {
        let slot = match ty.as_str() {
            "application/openmetrics-text" => &mut om,
            "text/plain" => &mut text,
            _ => continue,
        };
        *slot = Some(slot.map_or(q, |old: f32| old.max(q)));
    }
    match (om, text) {
        (Some(o), Some(t)) => o > 0.0 && o >= t,
        (Some(o), None) => o > 0.0,
        _ => false,
    }
}

/// The `q` of the best `Accept` entry for the Prometheus protobuf exposition:
/// `application/vnd.google.protobuf` with `proto=io.prometheus.client.MetricFamily` and
/// `encoding=delimited` (what Prometheus puts first when native histograms are on).
fn protobuf_q(accept: &str) -> Option<f32> {
    let mut best = None::<f32>;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        if !parts.next().is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/vnd.google.protobuf")
        }) {
            continue;
        }
        let (mut proto, mut delimited, mut q) = (false, false, 1.0f32);
        for param in parts {
            let Some((k, v)) = param.split_once('=') else {
                continue;
            };
            let (k, v) = (k.trim(), v.trim().trim_matches('"'));
            if k.eq_ignore_ascii_case("proto") {
                proto = v == "io.prometheus.client.MetricFamily";
            } else if k.eq_ignore_ascii_case("encoding") {
                delimited = v.eq_ignore_ascii_case("delimited");
            } else if k.eq_ignore_ascii_case("q") {
                q = v.parse().unwrap_or(0.0);
            }
        }
        if proto && delimited {
            best = Some(best.map_or(q, |b| b.max(q)));
        }
    }
    best
}

/// The format of a `/metrics` answer: protobuf when the scraper asks for it (above) with a
/// non-zero `q` not ranked below a text format it also accepts, else OpenMetrics or text as
/// [`wants_openmetrics`] says.
pub fn metrics_format(accept: Option<&str>) -> Exposition {
    if let Some(pq) = accept.and_then(protobuf_q).filter(|q| *q > 0.0) {
        let text_q = accept
            .map(|a| {
                media_ranges(a)
                    .filter(|(ty, _)| ty == "application/openmetrics-text" || ty == "text/plain")
                    .fold(0.0f32, |m, (_, q)| m.max(q))
            })
            .unwrap_or(0.0);
        if pq >= text_q {
            return Exposition::Protobuf;
        }
    }
    if wants_openmetrics(accept) {
        Exposition::OpenMetrics
    } else {
        Exposition::Text
    }
}

/// True when a request body's `Content-Type` is JSON: `application/json`, any
/// `application/*+json`, or no header at all (curl without `-H`, many scripts).
pub fn is_json_content_type(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else {
        return true;
    };
    let ty = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    ty == "application/json" || (ty.starts_with("application/") && ty.ends_with("+json"))
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
pub fn bearer_token(header: Option<&[u8]>) -> Option<&[u8]> {
    let h = header?;
    let h = h.trim_ascii();
    let (scheme, rest) = h.split_at(h.iter().position(|c| *c == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Compares a presented token with the configured one in time that depends only on the
/// configured token's length, never on where they differ.
pub fn token_matches(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(presented.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        let p = presented.get(i).copied().unwrap_or(!*e);
        diff |= p ^ e;
    }
    std::hint::black_box(diff) == 0
}

/// At most `max` characters of `s` (for echoing client input in messages).
pub fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c", true).unwrap(), "a b c");
        assert_eq!(percent_decode("a+b", false).unwrap(), "a+b");
        assert_eq!(percent_decode("%C3%A9", false).unwrap(), "é");
        assert!(percent_decode("%zz", false).is_err());
        assert!(percent_decode("%4", false).is_err());
        assert!(percent_decode("%", false).is_err());
        assert!(percent_decode("%ff", false).is_err(), "not UTF-8");
    }

    #[test]
    fn list_parameters() {
        assert_eq!(
            list_params(None, "kind").unwrap(),
            ListParams {
                limit: DEFAULT_LIMIT,
                machine: None,
                filter: None
            }
        );
        let p = list_params(Some("limit=5&machine=w%201&kind=action"), "kind").unwrap();
        assert_eq!(p.limit, 5);
        assert_eq!(p.machine.as_deref(), Some("w 1"));
        assert_eq!(p.filter.as_deref(), Some("action"));
        assert_eq!(list_params(Some("limit=0"), "kind").unwrap().limit, 0);
        assert_eq!(
            list_params(Some("limit=99999999999999999999"), "kind").ok(),
            None,
            "does not fit u64"
        );
        assert_eq!(
            list_params(Some("limit=5000"), "kind").unwrap().limit,
            MAX_LIMIT
        );
        assert_eq!(
            list_params(Some("&&limit=3&"), "kind").unwrap().limit,
            3,
            "empty pieces are skipped"
        );
        for bad in [
            "limit=abc",
            "limit=-1",
            "limit=",
            "limit=1.5",
            "limit=1&limit=2",
            "trace_id=x",
            "=x",
            "machine=%zz",
        ] {
            let e = list_params(Some(bad), "kind").unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
        assert!(list_params(Some("trace_id=ab"), "trace_id").is_ok());
    }

    #[test]
    fn trace_id_filters() {
        let id = "4BF92F3577B34DA6A3CE929D0E0E4736";
        assert_eq!(trace_id_filter(id).unwrap(), id.to_ascii_lowercase());
        assert!(trace_id_filter("4bf92f").is_err());
        assert!(trace_id_filter("zzf92f3577b34da6a3ce929d0e0e4736").is_err());
    }

    #[test]
    fn openmetrics_negotiation() {
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain; version=0.0.4")));
        assert!(wants_openmetrics(Some("application/openmetrics-text")));
        assert!(wants_openmetrics(Some(
            "Application/OpenMetrics-Text; version=1.0.0; charset=utf-8"
        )));
        // What Prometheus sends by default.
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
        )));
        assert!(!wants_openmetrics(Some("application/openmetrics-text;q=0")));
        assert!(!wants_openmetrics(Some(
            "application/openmetrics-text;q=0.2, text/plain;q=0.9"
        )));
        assert!(!wants_openmetrics(Some(",;,;q")));
    }

    #[test]
    fn metrics_formats() {
        use Exposition::*;
        assert_eq!(metrics_format(None), Text);
        assert_eq!(metrics_format(Some("*/*")), Text);
        // What Prometheus 2.42 sends with `--enable-feature=native-histograms`.
        assert_eq!(
            metrics_format(Some(
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            )),
            Protobuf
        );
        // ... and without it.
        assert_eq!(
            metrics_format(Some(
                "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
            )),
            OpenMetrics
        );
        assert_eq!(
            metrics_format(Some(
                "Application/Vnd.Google.Protobuf; proto=\"io.prometheus.client.MetricFamily\"; encoding=delimited"
            )),
            Protobuf
        );
        // Not the delimited MetricFamily stream: not ours to give.
        for other in [
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text",
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily",
            "application/vnd.google.protobuf;encoding=delimited",
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0",
        ] {
            assert_eq!(metrics_format(Some(other)), Text, "{other}");
        }
        // Ranked below a text format.
        assert_eq!(
            metrics_format(Some(
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.3,text/plain;q=0.9"
            )),
            Text
        );
    }

    #[test]
    fn json_content_types() {
        assert!(is_json_content_type(None));
        assert!(is_json_content_type(Some("application/json")));
        assert!(is_json_content_type(Some(
            "Application/JSON; charset=utf-8"
        )));
        assert!(is_json_content_type(Some("application/cloudevents+json")));
        assert!(!is_json_content_type(Some("text/plain")));
        assert!(!is_json_content_type(Some(
            "application/x-www-form-urlencoded"
        )));
        assert!(!is_json_content_type(Some(
            "multipart/form-data; boundary=x"
        )));
        assert!(!is_json_content_type(Some("")));
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer_token(Some(b"Bearer abc")), Some(&b"abc"[..]));
        assert_eq!(bearer_token(Some(b"bearer   abc  ")), Some(&b"abc"[..]));
        assert_eq!(bearer_token(Some(b"Basic abc")), None);
        assert_eq!(bearer_token(Some(b"Bearer")), None);
        assert_eq!(bearer_token(Some(b"Bearer ")), None);
        assert_eq!(bearer_token(Some(b"")), None);
        assert_eq!(bearer_token(None), None);
        assert!(token_matches(b"secret", b"secret"));
        assert!(!token_matches(b"secreT", b"secret"));
        assert!(!token_matches(b"secret2", b"secret"));
        assert!(!token_matches(b"secre", b"secret"));
        assert!(!token_matches(b"", b"secret"));
    }

    #[test]
    fn cutting_is_char_safe() {
        assert_eq!(cut("héllo", 2), "hé…");
        assert_eq!(cut("hé", 2), "hé");
    }
}

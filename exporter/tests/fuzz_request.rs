//! Property tests of the sidecar's request parsing (query strings and the request-head
//! values it reads: `Accept`, `Content-Type`, `Authorization`) and of the web
//! configuration file (`--web-config`). Inputs are random text and mutations of the seeds
//! in `fuzz/corpus/request/` and `fuzz/corpus/web_config/`. Properties: no panic; an error
//! is a message that echoes a bounded part of the input; encoded values decode back to
//! themselves; a web config's error names the file and a line of it.
//!
//! `PROPTEST_CASES=N` raises the number of cases; the coverage-guided fuzzer of the same
//! functions is the `fuzz/` package (see `fuzz/README.md`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

#[path = "../../engine/tests/support/fuzzing.rs"]
mod fuzzing;

use base64::Engine as _;
use proptest::prelude::*;
use turnstile_exporter::server::request::{
    bearer_token, cut, is_json_content_type, list_params, parse_query, percent_decode,
    token_matches, trace_id_filter, wants_openmetrics, MAX_LIMIT,
};
use turnstile_exporter::server::web::{credentials, WebConfig};

use fuzzing::{cases, line_exists, mutated, seeds};

const REQUEST_BITS: &[&[u8]] = &[
    b"%",
    b"%2",
    b"%zz",
    b"%C3%BC",
    b"%FF",
    b"%00",
    b"+",
    b"&",
    b"=",
    b"&&",
    b"limit=",
    b"machine=",
    b"trace_id=",
    b"kind=",
    b";q=",
    b",",
    b"*/*",
    b"Bearer ",
    b"Basic ",
    b" ",
    b"\t",
    b"\xc3\xbc",
    b"\xff",
];

/// An error message echoes at most a few dozen characters of the input.
fn bounded(e: &str) {
    assert!(!e.is_empty());
    assert!(e.chars().count() < 300, "{} chars: {e}", e.chars().count());
}

/// Every request function on one input: no panic, and what each result must be.
fn check_request_text(s: &str) {
    match percent_decode(s, true) {
        Ok(d) => assert!(d.len() <= s.len()),
        Err(e) => bounded(&e),
    }
    match parse_query(Some(s)) {
        Ok(pairs) => assert!(pairs.iter().all(|(k, _)| !k.is_empty())),
        Err(e) => bounded(&e),
    }
    for filter in ["trace_id", "kind"] {
        match list_params(Some(s), filter) {
            Ok(p) => assert!(p.limit <= MAX_LIMIT),
            Err(e) => bounded(&e),
        }
    }
    match trace_id_filter(s) {
        Ok(t) => {
            assert!(t.len() == 32 && t.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
        }
        Err(e) => bounded(&e),
    }
    let _ = wants_openmetrics(Some(s));
    let _ = is_json_content_type(Some(s));
    if let Some(t) = bearer_token(Some(s.as_bytes())) {
        assert!(!t.is_empty() && s.as_bytes().windows(t.len()).any(|w| w == t));
    }
    let _ = credentials(Some(s.as_bytes()));
    let c = cut(s, 10);
    assert!(c.chars().count() <= 11);
}

/// `%XX` for every byte but unreserved ones (and `+` for a space when `plus`).
fn encode(s: &str, plus: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b' ' if plus => out.push('+'),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b));
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[test]
fn request_seeds_are_understood() {
    let seeds = seeds("request");
    for s in &seeds {
        check_request_text(&String::from_utf8_lossy(s));
    }
    let text = |name: &str| {
        std::fs::read_to_string(fuzzing::root().join("fuzz/corpus/request").join(name)).unwrap()
    };
    assert_eq!(
        list_params(Some(&text("query.txt")), "trace_id")
            .unwrap()
            .limit,
        10
    );
    assert!(wants_openmetrics(Some(&text("accept.txt"))));
    assert!(credentials(Some(text("basic.txt").as_bytes())).is_some());
    assert_eq!(
        bearer_token(Some(text("bearer.txt").as_bytes())),
        Some(&b"s3cr%t"[..])
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(512)))]

    #[test]
    fn request_text_never_panics(s in "\\PC{0,64}") {
        check_request_text(&s);
    }

    #[test]
    fn request_mutations_fail_cleanly(bytes in mutated(seeds("request"), REQUEST_BITS, 8)) {
        check_request_text(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn percent_encoding_round_trips(s in any::<String>(), plus in any::<bool>()) {
        prop_assert_eq!(percent_decode(&encode(&s, plus), plus), Ok(s));
    }

    #[test]
    fn queries_round_trip(pairs in proptest::collection::vec((".{1,12}", ".{0,12}"), 0..6)) {
        let q = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k, true), encode(v, true)))
            .collect::<Vec<_>>()
            .join("&");
        prop_assert_eq!(parse_query(Some(&q)), Ok(pairs));
    }

    #[test]
    fn limits_are_capped(n in any::<u64>(), machine in ".{0,12}") {
        let q = format!("limit={n}&machine={}", encode(&machine, true));
        let p = list_params(Some(&q), "kind").unwrap();
        prop_assert_eq!(p.limit, usize::try_from(n).unwrap_or(MAX_LIMIT).min(MAX_LIMIT));
        prop_assert_eq!(p.machine, Some(machine));
    }

    #[test]
    fn credentials_and_tokens_round_trip(
        user in "[^:]{0,16}",
        password in ".{0,16}",
        token in "[!-~]{1,40}",
        other in "[!-~]{0,40}",
    ) {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        prop_assert_eq!(
            credentials(Some(format!("Basic {b64}").as_bytes())),
            Some((user, password))
        );
        let header = format!("bearer {token} ");
        prop_assert_eq!(bearer_token(Some(header.as_bytes())), Some(token.as_bytes()));
        prop_assert_eq!(token_matches(other.as_bytes(), token.as_bytes()), other == token);
    }
}

const YAML_BITS: &[&[u8]] = &[
    b"\n",
    b"  ",
    b": ",
    b"- ",
    b"[",
    b"]",
    b"{",
    b"}",
    b"'",
    b"\"",
    b"&a ",
    b"*a",
    b"~",
    b"\t",
    b"tls_server_config:\n",
    b"basic_auth_users:\n",
    b"http_server_config:\n",
    b"headers:\n",
    b"cert_file: ",
    b"client_auth_type: ",
    b"$2y$04$",
    b"$2y$99$",
    b"X-Frame-Options: ",
    b"\r\n",
    b"\x00",
];

/// Reads `text` as a web config file: no panic; an error names the file, and the line it
/// gives is a line of the text.
fn check_web_config(text: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("web.yml");
    std::fs::write(&path, text).unwrap();
    if let Err(e) = WebConfig::load(&path) {
        let shown = path.display().to_string();
        let rest = e.strip_prefix(&shown).unwrap_or_else(|| panic!("{e}"));
        let mut parts = rest.splitn(4, ':');
        parts.next();
        if let (Some(line), Some(col)) = (parts.next(), parts.next()) {
            if let (Ok(line), Ok(_)) = (line.parse::<usize>(), col.parse::<usize>()) {
                let text = String::from_utf8_lossy(text);
                assert!(line_exists(&text, line), "{e}");
            }
        }
    }
}

#[test]
fn web_config_seeds_load_or_fail_cleanly() {
    let seeds = seeds("web_config");
    let ok = seeds
        .iter()
        .filter(|s| {
            check_web_config(s);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("web.yml");
            std::fs::write(&path, s).unwrap();
            WebConfig::load(&path).is_ok()
        })
        .count();
    assert!(
        ok >= 1 && ok < seeds.len(),
        "{ok} of {} seeds load",
        seeds.len()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(256)))]

    #[test]
    fn web_config_mutations_fail_cleanly(bytes in mutated(seeds("web_config"), YAML_BITS, 6)) {
        check_web_config(&bytes);
    }
}

//! The sidecar's query string and request-head parsing: no panic; bounded error messages;
//! results within their rules.
#![no_main]

use libfuzzer_sys::fuzz_target;
use turnstile_exporter::server::request::{
    bearer_token, cut, is_json_content_type, list_params, parse_query, percent_decode,
    trace_id_filter, wants_openmetrics, MAX_LIMIT,
};
use turnstile_exporter::server::web::credentials;

fn bounded(e: &str) {
    assert!(!e.is_empty() && e.chars().count() < 300, "{e}");
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    for plus in [false, true] {
        if let Err(e) = percent_decode(&s, plus) {
            bounded(&e);
        }
    }
    match parse_query(Some(&s)) {
        Ok(pairs) => assert!(pairs.iter().all(|(k, _)| !k.is_empty())),
        Err(e) => bounded(&e),
    }
    match list_params(Some(&s), "trace_id") {
        Ok(p) => assert!(p.limit <= MAX_LIMIT),
        Err(e) => bounded(&e),
    }
    match trace_id_filter(&s) {
        Ok(t) => assert_eq!(t.len(), 32),
        Err(e) => bounded(&e),
    }
    let _ = wants_openmetrics(Some(&s));
    let _ = is_json_content_type(Some(&s));
    let _ = bearer_token(Some(data));
    let _ = credentials(Some(data));
    assert!(cut(&s, 10).chars().count() <= 11);
});

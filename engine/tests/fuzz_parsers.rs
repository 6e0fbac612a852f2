//! Property tests of the engine's parsers of outside input: the config loader, the event
//! message parser (the sidecar's HTTP body and the Unix socket datagram share it) and a
//! plugin's reply. Inputs are random bytes and mutations of the checked-in seeds in
//! `fuzz/corpus/<target>/` (and, for configs, every example config of the repository and
//! upstream's when `.ci/install.sh` fetched them). Properties: no panic, errors of the
//! clear kind (a config diagnostic points at a line of the text; a message error is a
//! value, within the size limits), and what is valid survives a round trip.
//!
//! `PROPTEST_CASES=N` raises the number of cases for a long run; the coverage-guided
//! fuzzer of the same parsers is the `fuzz/` package (see `fuzz/README.md`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use proptest::prelude::*;
use serde_json::{json, Map, Value as Json};
use turnstile_engine::actions::plugin::PluginReply;
use turnstile_engine::config::{self, Severity};
use turnstile_engine::ingress::{self, IngressError, Limits, MAX_EVENT_TYPE_LEN};
use turnstile_engine::{ActionRegistry, TraceContext};

use support::fuzzing::{cases, files_under, line_exists, mutated, root, seeds};

// ---------------------------------------------------------------------------------------
// Config loader
// ---------------------------------------------------------------------------------------

const YAML_BITS: &[&[u8]] = &[
    b"\n",
    b"  ",
    b": ",
    b"- ",
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b"'",
    b"\"",
    b"&a ",
    b"*a",
    b"<<: *a",
    b"!!str ",
    b"!tag ",
    b"|\n",
    b">-\n",
    b"#",
    b"---\n",
    b"...\n",
    b"? ",
    b"~",
    b"\t",
    b"\\u0000",
    b"{x}",
    b"{x|int}",
    b"$(",
    b"states:",
    b"transitions:",
    b"actions:",
    b"events:",
    b"type: bash\n",
    b"command: ",
    b"initial_state: ",
    b"final_states: [",
    b"from: ",
    b"to: ",
    b"event: ",
    b"context_map:",
];

/// The config seeds: `fuzz/corpus/config/`, the repository's example configs, and
/// upstream's example configs when present.
fn config_seeds() -> Vec<Vec<u8>> {
    let mut s = seeds("config");
    let r = root();
    for dir in [r.join("examples"), r.join(".upstream")] {
        for p in files_under(&dir, &["yaml", "yml"]) {
            s.push(std::fs::read(p).unwrap());
        }
    }
    s
}

/// Loads `text` and checks what any config text must give.
fn check_config(text: &str, registry: &ActionRegistry) {
    let loaded = config::load_str(text, None, registry);
    let has_errors = loaded.errors().next().is_some();
    assert_eq!(
        loaded.def.is_some(),
        !has_errors,
        "a machine comes out exactly when there is no error: {:?}",
        loaded.diagnostics
    );
    for d in &loaded.diagnostics {
        assert!(!d.message.is_empty() && !d.code.is_empty(), "{d:?}");
        // Every diagnostic points into the text, line 1 column 1 for an empty one.
        assert!(
            line_exists(text, d.loc.line as usize) && d.loc.column >= 1,
            "{d} points outside the text of {} lines",
            text.split('\n').count()
        );
        if d.severity == Severity::Error {
            assert!(loaded.def.is_none());
        }
    }
}

#[test]
fn config_seeds_load_without_panic() {
    let registry = ActionRegistry::with_builtins();
    let seeds = config_seeds();
    assert!(seeds.len() >= 3 + 6, "examples and seeds: {}", seeds.len());
    let mut good = 0;
    for s in &seeds {
        let text = String::from_utf8_lossy(s);
        check_config(&text, &registry);
        good += usize::from(config::load_str(&text, None, &registry).def.is_some());
    }
    // The repository's own examples are valid; the property above sees both kinds.
    assert!(good >= 6, "only {good} seeds load");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(256)))]

    #[test]
    fn config_mutations_get_located_diagnostics(
        bytes in mutated(config_seeds(), YAML_BITS, 6)
    ) {
        let registry = ActionRegistry::with_builtins();
        check_config(&String::from_utf8_lossy(&bytes), &registry);
    }

    #[test]
    fn config_random_text_gets_located_diagnostics(text in "(\\PC|[\n\t:{}\\[\\]&*!|>#'\"-]){0,200}") {
        let registry = ActionRegistry::with_builtins();
        check_config(&text, &registry);
    }
}

// ---------------------------------------------------------------------------------------
// Event messages (HTTP body and Unix socket datagram)
// ---------------------------------------------------------------------------------------

const JSON_BITS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\"",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"null",
    b"true",
    b"1e999",
    b"-0",
    b"1.5",
    b"18446744073709551616",
    b"\"type\":",
    b"\"go\"",
    b"\"job_id\":",
    b"\"payload\":",
    b"\"traceparent\":",
    b"[[[[[[[[",
    b"\xff",
    b"\xc3\xbc",
];

/// The sidecar's default body limit.
const HTTP: Limits = Limits {
    max_bytes: 1024 * 1024,
    max_parsed_bytes: ingress::DEFAULT_MAX_PARSED_BYTES,
};

/// Parses `bytes` under `limits` and checks what any result must be.
fn check_message(bytes: &[u8], limits: &Limits) -> Result<ingress::Message, IngressError> {
    let r = ingress::parse(bytes, limits);
    match &r {
        Ok(m) => {
            assert!(bytes.len() <= limits.max_bytes);
            assert!(ingress::check_event_type(&m.event).is_ok(), "{:?}", m.event);
            assert!(m.event.len() <= MAX_EVENT_TYPE_LEN);
            if let Some(j) = &m.job_id {
                assert!(ingress::check_job_id(j).is_ok());
            }
            assert!(m.payload.as_ref().is_none_or(|p| !p.is_null()));
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            if bytes.len() > limits.max_bytes {
                assert_eq!(
                    *e,
                    IngressError::TooLarge {
                        limit: limits.max_bytes
                    }
                );
            }
            if let Some((line, column)) = e.position() {
                let text = String::from_utf8_lossy(bytes);
                assert!(
                    line_exists(&text, line) || (line == 0 && column == 0),
                    "{e}"
                );
            }
        }
    }
    r
}

/// A JSON value without floats (which serde_json may read back one ulp off).
fn json_value() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        "\\PC{0,12}".prop_map(Json::String),
        any::<String>().prop_map(Json::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            proptest::collection::btree_map("\\PC{0,8}", inner, 0..6)
                .prop_map(|m| Json::Object(m.into_iter().collect())),
        ]
    })
}

fn traceparent() -> impl Strategy<Value = TraceContext> {
    (any::<[u8; 16]>(), any::<[u8; 8]>(), any::<u8>()).prop_filter_map(
        "all-zero ids are invalid",
        |(t, s, f)| {
            let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
            TraceContext::parse(&format!("00-{}-{}-{f:02x}", hex(&t), hex(&s))).ok()
        },
    )
}

/// A valid message: an event type, maybe a payload, a job id and a trace context.
fn message() -> impl Strategy<Value = ingress::Message> {
    (
        "[^\\p{Cc}\\p{Zl}\\p{Zp}]{0,40}[a-z.]",
        proptest::option::of(json_value().prop_filter("null is none", |v| !v.is_null())),
        proptest::option::of("\\PC{0,40}"),
        proptest::option::of(traceparent()),
    )
        .prop_filter_map("a valid type", |(event, payload, job_id, traceparent)| {
            let m = ingress::Message {
                event,
                payload,
                job_id,
                traceparent,
            };
            ingress::check_event_type(&m.event).is_ok().then_some(m)
        })
}

/// `m` as a sender writes it, with `extra` fields (which the parser ignores).
fn to_wire(m: &ingress::Message, extra: &Map<String, Json>) -> Vec<u8> {
    let mut o = extra.clone();
    o.insert("type".into(), json!(m.event));
    if let Some(p) = &m.payload {
        o.insert("payload".into(), p.clone());
    }
    match m.job_id.as_deref().map(|j| (j, j.parse::<u64>())) {
        // A number is taken as its decimal text: send some ids as numbers.
        Some((j, Ok(n))) if n.to_string() == j => o.insert("job_id".into(), json!(n)),
        Some((j, _)) => o.insert("job_id".into(), json!(j)),
        None => None,
    };
    if let Some(t) = &m.traceparent {
        o.insert("traceparent".into(), json!(t.to_string()));
    }
    serde_json::to_vec(&Json::Object(o)).unwrap()
}

#[test]
fn message_seeds_parse_or_fail_cleanly() {
    let seeds = seeds("ingress");
    let ok = seeds
        .iter()
        .filter(|s| check_message(s, &Limits::SOCKET).is_ok())
        .count();
    assert!(
        ok >= 2 && ok < seeds.len(),
        "{ok} of {} seeds parse",
        seeds.len()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(512)))]

    #[test]
    fn message_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        check_message(&bytes, &Limits::SOCKET).ok();
    }

    #[test]
    fn message_mutations_fail_cleanly(bytes in mutated(seeds("ingress"), JSON_BITS, 8)) {
        let socket = check_message(&bytes, &Limits::SOCKET);
        // The datagram and the HTTP body are one parser: below both limits, one answer.
        prop_assert_eq!(socket, check_message(&bytes, &HTTP));
    }

    #[test]
    fn message_limits_are_respected(
        bytes in mutated(seeds("ingress"), JSON_BITS, 4),
        max_bytes in 0usize..600,
        max_parsed_bytes in 0usize..4000,
    ) {
        let limits = Limits { max_bytes, max_parsed_bytes };
        if let Err(e) = check_message(&bytes, &limits) {
            if bytes.len() <= max_bytes && e.is_too_large() {
                prop_assert_eq!(e, IngressError::ParsedTooLarge { limit: max_parsed_bytes });
            }
        }
    }

    #[test]
    fn valid_messages_round_trip(
        m in message(),
        extra in proptest::collection::btree_map("[a-z_]{1,8}", json_value(), 0..3),
    ) {
        let extra: Map<String, Json> = extra
            .into_iter()
            .filter(|(k, _)| !["type", "payload", "job_id", "traceparent"].contains(&k.as_str()))
            .collect();
        let wire = to_wire(&m, &extra);
        prop_assume!(wire.len() <= Limits::SOCKET.max_bytes);
        let back = check_message(&wire, &Limits::SOCKET);
        prop_assert_eq!(back, Ok(m));
    }
}

// ---------------------------------------------------------------------------------------
// Plugin replies
// ---------------------------------------------------------------------------------------

fn check_reply(bytes: &[u8]) -> Option<PluginReply> {
    match PluginReply::from_bytes(bytes) {
        Ok(r) => {
            assert!(r.event.as_deref() != Some(""), "an empty event is no event");
            Some(r)
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            None
        }
    }
}

#[test]
fn reply_seeds_parse() {
    for s in seeds("plugin_reply") {
        assert!(check_reply(&s).is_some(), "{}", String::from_utf8_lossy(&s));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(512)))]

    #[test]
    fn reply_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        check_reply(&bytes);
    }

    #[test]
    fn reply_mutations_fail_cleanly(bytes in mutated(seeds("plugin_reply"), JSON_BITS, 8)) {
        check_reply(&bytes);
    }

    #[test]
    fn valid_replies_round_trip(
        event in proptest::option::of("\\PC{1,20}"),
        context in proptest::collection::btree_map("\\PC{0,8}", json_value(), 0..4),
        log in proptest::option::of("\\PC{0,20}"),
        error in proptest::option::of(("\\PC{1,12}", "\\PC{0,20}")),
    ) {
        let context: Map<String, Json> = context.into_iter().collect();
        let mut o = json!({"event": event, "context": context, "log": log});
        if let Some((t, m)) = &error {
            o["error"] = json!({"type": t, "message": m});
        }
        let back = check_reply(&serde_json::to_vec(&o).unwrap());
        prop_assert_eq!(back, Some(PluginReply { event, context, log, error }));
    }
}

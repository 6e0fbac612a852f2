//! The one parser and validator of the event message, shared by every way an event
//! enters from outside: the Unix sockets ([`crate::sockets`]), the sidecar's
//! `POST /machines/{name}/events` and `turnstile send-event`.
//!
//! The message is statemachine-engine's `{"type": "...", "payload": ..., "job_id": "..."}`
//! plus an optional `"traceparent"`; other fields are ignored. The rules:
//!
//! - at most [`Limits::max_bytes`] bytes of JSON, which must be an object;
//! - parsed, the JSON may take at most [`Limits::max_parsed_bytes`] bytes of memory
//!   (an estimate, see [`parse_json`]): a body of a million `{}` is refused even though
//!   its bytes are within the limit;
//! - `type` is a string, not blank, of at most [`MAX_EVENT_TYPE_LEN`] bytes, without
//!   control characters (NUL, newline, ESC, ...);
//! - `job_id` is a string or a number (taken as its decimal text) of at most
//!   [`MAX_JOB_ID_LEN`] bytes; `null` counts as none;
//! - `payload` is any JSON; `null` counts as none;
//! - `traceparent` is a string holding a valid W3C trace context.
//!
//! ```
//! use turnstile_engine::ingress::{self, Limits};
//! let msg = ingress::parse(br#"{"type": "go", "payload": {"n": 1}, "job_id": 7}"#,
//!     &Limits::SOCKET).unwrap();
//! assert_eq!(msg.event, "go");
//! assert_eq!(msg.job_id.as_deref(), Some("7"));
//! let ev = msg.into_event();
//! assert_eq!(&*ev.name, "go");
//! assert!(ingress::parse(b"{\"type\": \"a\\u0000b\"}", &Limits::SOCKET).is_err());
//! ```

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value as Json};

use crate::runtime::event::Event;
use crate::runtime::trace::TraceContext;

/// Longest event type accepted from outside, in bytes.
pub const MAX_EVENT_TYPE_LEN: usize = 256;
/// Longest job id accepted from outside, in bytes.
pub const MAX_JOB_ID_LEN: usize = 256;
/// The default bound on a message's parsed size (8 MiB, estimated as [`parse_json`]
/// says).
pub const DEFAULT_MAX_PARSED_BYTES: usize = 8 * 1024 * 1024;

/// How large a message may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of JSON.
    pub max_bytes: usize,
    /// Most bytes the parsed JSON may take in memory (estimated).
    pub max_parsed_bytes: usize,
}

impl Limits {
    /// A Unix socket datagram: at most 64 KiB.
    pub const SOCKET: Limits = Limits {
        max_bytes: 64 * 1024,
        max_parsed_bytes: DEFAULT_MAX_PARSED_BYTES,
    };
}

/// Why a message was refused. The `Display` text is meant for the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngressError {
    /// Nothing but white space.
    #[error("the message is empty: expected a JSON object like {{\"type\": \"start\"}}")]
    Empty,
    /// More bytes than [`Limits::max_bytes`].
    #[error("the message is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The parsed JSON would take more than [`Limits::max_parsed_bytes`].
    #[error(
        "the JSON would take more than {limit} bytes of memory once parsed (too many values, e.g. a long array of small objects)"
    )]
    ParsedTooLarge {
        /// The limit.
        limit: usize,
    },
    /// Not JSON.
    #[error("invalid JSON at line {line} column {column}: {message}")]
    Syntax {
        /// serde_json's explanation.
        message: String,
        /// Where (1-based).
        line: usize,
        /// Where (1-based).
        column: usize,
    },
    /// JSON, but not an object.
    #[error("expected a JSON object like {{\"type\": \"start\"}}, got {0}")]
    NotObject(&'static str),
    /// No `type` (or `null`).
    #[error("missing `type`: the event type, e.g. {{\"type\": \"start\"}}")]
    MissingType,
    /// `type` is not a string.
    #[error("`type` must be a string, got {0}")]
    TypeNotString(&'static str),
    /// `type` is blank.
    #[error("`type` is empty")]
    EmptyType,
    /// `type` is too long.
    #[error("`type` is longer than {MAX_EVENT_TYPE_LEN} bytes ({0} bytes)")]
    TypeTooLong(usize),
    /// `type` holds a control character.
    #[error("`type` contains control characters (such as NUL, newline or ESC)")]
    TypeControl,
    /// `job_id` is neither a string nor a number.
    #[error("`job_id` must be a string or a number, got {0}")]
    JobIdKind(&'static str),
    /// `job_id` is too long.
    #[error("`job_id` is longer than {MAX_JOB_ID_LEN} bytes ({0} bytes)")]
    JobIdTooLong(usize),
    /// `traceparent` is not a string.
    #[error("`traceparent` must be a string, got {0}")]
    TraceparentKind(&'static str),
    /// `traceparent` is not a valid trace context.
    #[error("invalid `traceparent`: {0}")]
    Traceparent(String),
}

impl IngressError {
    /// True for the size limits (HTTP answers 413 to these, 400 to the rest).
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            IngressError::TooLarge { .. } | IngressError::ParsedTooLarge { .. }
        )
    }

    /// Where a JSON syntax error is: `(line, column)`, 1-based.
    pub fn position(&self) -> Option<(usize, usize)> {
        match self {
            IngressError::Syntax { line, column, .. } => Some((*line, *column)),
            _ => None,
        }
    }
}

/// A message that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The event type.
    pub event: String,
    /// The payload (`null` counts as none).
    pub payload: Option<Json>,
    /// The job id; a number is taken as its decimal text.
    pub job_id: Option<String>,
    /// The trace context given in the message.
    pub traceparent: Option<TraceContext>,
}

impl Message {
    /// The engine's event for this message (origin external).
    pub fn into_event(self) -> Event {
        let mut ev = Event::new(self.event);
        if let Some(p) = self.payload {
            ev = ev.with_payload(p);
        }
        if let Some(j) = self.job_id {
            ev = ev.with_job_id(j);
        }
        if let Some(t) = self.traceparent {
            ev = ev.with_traceparent(t);
        }
        ev
    }
}

/// Checks an event type given from outside (the rules of the module docs).
pub fn check_event_type(kind: &str) -> Result<(), IngressError> {
    if kind.trim().is_empty() {
        return Err(IngressError::EmptyType);
    }
    if kind.len() > MAX_EVENT_TYPE_LEN {
        return Err(IngressError::TypeTooLong(kind.len()));
    }
    if kind.chars().any(char::is_control) {
        return Err(IngressError::TypeControl);
    }
    Ok(())
}

/// Checks a job id given from outside.
pub fn check_job_id(job_id: &str) -> Result<(), IngressError> {
    if job_id.len() > MAX_JOB_ID_LEN {
        return Err(IngressError::JobIdTooLong(job_id.len()));
    }
    Ok(())
}

/// Parses and checks one event message.
pub fn parse(bytes: &[u8], limits: &Limits) -> Result<Message, IngressError> {
    let v = parse_json(bytes, limits)?;
    let Json::Object(mut obj) = v else {
        return Err(IngressError::NotObject(json_kind(&v)));
    };
    let event = match obj.remove("type") {
        None | Some(Json::Null) => return Err(IngressError::MissingType),
        Some(Json::String(s)) => s,
        Some(other) => return Err(IngressError::TypeNotString(json_kind(&other))),
    };
    check_event_type(&event)?;
    let job_id = match obj.remove("job_id") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => Some(s),
        Some(Json::Number(n)) => Some(n.to_string()),
        Some(other) => return Err(IngressError::JobIdKind(json_kind(&other))),
    };
    if let Some(j) = &job_id {
        check_job_id(j)?;
    }
    let traceparent = match obj.remove("traceparent") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => {
            Some(TraceContext::parse(&s).map_err(|e| IngressError::Traceparent(e.to_string()))?)
        }
        Some(other) => return Err(IngressError::TraceparentKind(json_kind(&other))),
    };
    let payload = obj.remove("payload").filter(|p| !p.is_null());
    Ok(Message {
        event,
        payload,
        job_id,
        traceparent,
    })
}

/// Parses JSON of at most `limits.max_bytes` bytes whose parsed form takes at most
/// `limits.max_parsed_bytes` (estimated while parsing, so a document over the limit is
/// refused before it is built).
///
/// The estimate counts what the values hold on the heap: every value the size of a
/// `serde_json::Value`, every string its length, every object entry its key, a `String`
/// and an index (the growth slack of arrays and maps is not counted, so the real figure
/// may be up to about twice the estimate). Nesting is limited to 128 levels (serde_json's
/// own limit).
pub fn parse_json(bytes: &[u8], limits: &Limits) -> Result<Json, IngressError> {
    if bytes.len() > limits.max_bytes {
        return Err(IngressError::TooLarge {
            limit: limits.max_bytes,
        });
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(IngressError::Empty);
    }
    let budget = Budget {
        left: Cell::new(limits.max_parsed_bytes),
        exceeded: Cell::new(false),
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = Budgeted(&budget)
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    parsed.map_err(|e| {
        if budget.exceeded.get() {
            IngressError::ParsedTooLarge {
                limit: limits.max_parsed_bytes,
            }
        } else {
            // serde_json's text ends with " at line L column C": said once, by us.
            let text = e.to_string();
            let message = match text.rfind(" at line ") {
                Some(i) => text[..i].to_owned(),
                None => text,
            };
            IngressError::Syntax {
                message,
                line: e.line(),
                column: e.column(),
            }
        }
    })
}

/// What a value costs: the `Value` itself (in its array slot, map entry or box).
const VALUE_COST: usize = std::mem::size_of::<Json>();
/// What an object entry costs beyond its value and key bytes: the key's `String` and the
/// map's hash and index.
const ENTRY_COST: usize = std::mem::size_of::<String>() + 2 * std::mem::size_of::<usize>();

/// The parsed-size budget left.
struct Budget {
    left: Cell<usize>,
    exceeded: Cell<bool>,
}

impl Budget {
    fn charge<E: de::Error>(&self, n: usize) -> Result<(), E> {
        match self.left.get().checked_sub(n) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => {
                self.exceeded.set(true);
                Err(E::custom("the parsed size limit is reached"))
            }
        }
    }
}

/// Builds a `serde_json::Value` while charging the budget.
#[derive(Clone, Copy)]
struct Budgeted<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for Budgeted<'_> {
    type Value = Json;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Budgeted<'_> {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Json, E> {
        self.0.charge(VALUE_COST)?;
        Ok(Json::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Json, E> {
        self.0.charge(VALUE_COST)?;
        Ok(Json::from(n))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Json, E> {
        self.0.charge(VALUE_COST)?;
        Ok(Json::from(n))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Json, E> {
        self.0.charge(VALUE_COST)?;
        Ok(serde_json::Number::from_f64(n).map_or(Json::Null, Json::Number))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Json, E> {
        self.0.charge(VALUE_COST.saturating_add(s.len()))?;
        Ok(Json::String(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Json, E> {
        self.0.charge(VALUE_COST.saturating_add(s.len()))?;
        Ok(Json::String(s))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        self.0.charge(VALUE_COST)?;
        Ok(Json::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Json, E> {
        self.visit_unit()
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        self.0.charge(VALUE_COST)?;
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            items.push(v);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        self.0.charge(VALUE_COST)?;
        let mut obj = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            self.0.charge(ENTRY_COST.saturating_add(key.len()))?;
            let v = map.next_value_seed(self)?;
            obj.insert(key, v);
        }
        Ok(Json::Object(obj))
    }
}

/// `a string`, `an object`, ... for messages.
pub fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    const L: Limits = Limits::SOCKET;

    #[test]
    fn good_messages() {
        let m = parse(br#"{"type":"go"}"#, &L).unwrap();
        assert_eq!(m.event, "go");
        assert_eq!((m.payload, m.job_id, m.traceparent), (None, None, None));
        let m = parse(
            br#"{"type":"go","payload":{"n":1},"job_id":42,"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","extra":true}"#,
            &L,
        )
        .unwrap();
        assert_eq!(m.payload, Some(json!({"n": 1})));
        assert_eq!(m.job_id.as_deref(), Some("42"));
        assert_eq!(
            m.traceparent.map(|t| t.trace_id_hex()).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let m = parse(br#"{"type":"go","payload":null,"job_id":"j-1"}"#, &L).unwrap();
        assert_eq!(m.payload, None);
        assert_eq!(m.job_id.as_deref(), Some("j-1"));
        // Non-ASCII is fine; only control characters are not.
        assert_eq!(
            parse("{\"type\":\"grüß\"}".as_bytes(), &L).unwrap().event,
            "grüß"
        );
        let ev = parse(br#"{"type":"go","payload":[1],"job_id":"j"}"#, &L)
            .unwrap()
            .into_event();
        assert_eq!(&*ev.name, "go");
        assert_eq!(ev.payload.as_deref(), Some(&json!([1])));
        assert_eq!(ev.job_id.as_deref(), Some("j"));
    }

    #[test]
    fn bad_types_are_refused() {
        let long = format!(r#"{{"type":"{}"}}"#, "x".repeat(65 * 1000));
        let just_long = format!(r#"{{"type":"{}"}}"#, "x".repeat(MAX_EVENT_TYPE_LEN + 1));
        let longest = format!(r#"{{"type":"{}"}}"#, "x".repeat(MAX_EVENT_TYPE_LEN));
        assert!(parse(longest.as_bytes(), &L).is_ok());
        let big = Limits {
            max_bytes: 1 << 20,
            ..L
        };
        for (body, want) in [
            (&br#"{"type":"a\u0000b"}"#[..], IngressError::TypeControl),
            (br#"{"type":"a\nb"}"#, IngressError::TypeControl),
            (br#"{"type":"a\rb"}"#, IngressError::TypeControl),
            (br#"{"type":"\u001b[31mred"}"#, IngressError::TypeControl),
            (br#"{"type":"a\u007fb"}"#, IngressError::TypeControl),
            (br#"{"type":"a\u0085b"}"#, IngressError::TypeControl),
            (br#"{"type":1}"#, IngressError::TypeNotString("a number")),
            (
                br#"{"type":["go"]}"#,
                IngressError::TypeNotString("an array"),
            ),
            (br#"{"type":{}}"#, IngressError::TypeNotString("an object")),
            (
                br#"{"type":true}"#,
                IngressError::TypeNotString("a boolean"),
            ),
            (br#"{"type":null}"#, IngressError::MissingType),
            (br#"{"payload":{}}"#, IngressError::MissingType),
            (br#"{"type":""}"#, IngressError::EmptyType),
            (br#"{"type":"  "}"#, IngressError::EmptyType),
            (
                just_long.as_bytes(),
                IngressError::TypeTooLong(MAX_EVENT_TYPE_LEN + 1),
            ),
            (long.as_bytes(), IngressError::TypeTooLong(65_000)),
        ] {
            assert_eq!(
                parse(body, &big).unwrap_err(),
                want,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // The control characters are refused however they are written.
        let e = parse(b"{\"type\":\"a\x1bb\"}", &L).unwrap_err();
        assert!(
            e.position().is_some(),
            "raw control characters are not even JSON: {e}"
        );
    }

    #[test]
    fn other_fields_are_checked() {
        let long_job = format!(
            r#"{{"type":"go","job_id":"{}"}}"#,
            "j".repeat(MAX_JOB_ID_LEN + 1)
        );
        for (body, want) in [
            (&b""[..], "empty"),
            (b"  \n", "empty"),
            (b"[1]", "got an array"),
            (b"\"go\"", "got a string"),
            (br#"{"type":"go","job_id":{}}"#, "string or a number"),
            (br#"{"type":"go","job_id":true}"#, "string or a number"),
            (long_job.as_bytes(), "`job_id` is longer than 256"),
            (br#"{"type":"go","traceparent":1}"#, "`traceparent` must be"),
            (
                br#"{"type":"go","traceparent":"bad"}"#,
                "invalid `traceparent`",
            ),
            (b"\xff\xfe", "invalid JSON"),
            (b"{not json", "invalid JSON at line 1 column 2"),
            (br#"{"type":"go"} x"#, "trailing characters"),
        ] {
            let e = parse(body, &L).unwrap_err();
            assert!(!e.is_too_large());
            assert!(
                e.to_string().contains(want),
                "{}: {e}",
                String::from_utf8_lossy(body)
            );
        }
        let e = parse(b"{\"type\": \"go\",\n  oops}", &L).unwrap_err();
        assert_eq!(e.position(), Some((2, 3)));
        assert_eq!(
            e.to_string(),
            "invalid JSON at line 2 column 3: key must be a string"
        );
    }

    #[test]
    fn byte_and_parsed_sizes_are_bounded() {
        let e = parse(&vec![b' '; L.max_bytes + 1], &L).unwrap_err();
        assert_eq!(e, IngressError::TooLarge { limit: L.max_bytes });
        assert!(e.is_too_large());
        let big_payload = format!(r#"{{"type":"go","payload":"{}"}}"#, "x".repeat(L.max_bytes));
        assert!(parse(big_payload.as_bytes(), &L)
            .unwrap_err()
            .is_too_large());

        // A 1 MiB body of `{}`s is within the byte limit of HTTP but would be ~25 MB
        // parsed (and more where it is copied): refused while parsing.
        let http = Limits {
            max_bytes: 1024 * 1024,
            max_parsed_bytes: DEFAULT_MAX_PARSED_BYTES,
        };
        let mut body = br#"{"type":"go","payload":["#.to_vec();
        while body.len() < http.max_bytes - 8 {
            body.extend_from_slice(b"{},");
        }
        body.extend_from_slice(b"{}]}");
        let e = parse(&body, &http).unwrap_err();
        assert_eq!(
            e,
            IngressError::ParsedTooLarge {
                limit: DEFAULT_MAX_PARSED_BYTES
            }
        );
        assert!(e.is_too_large());
        // Many keys, and deep nesting, too.
        let mut keys = br#"{"type":"go","payload":{"#.to_vec();
        let mut i = 0;
        while keys.len() < http.max_bytes - 32 {
            keys.extend_from_slice(format!("\"{i:x}\":0,").as_bytes());
            i += 1;
        }
        keys.extend_from_slice(b"\"end\":0}}");
        assert!(parse(&keys, &http).unwrap_err().is_too_large());
        let deep = format!(
            r#"{{"type":"go","payload":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(parse(deep.as_bytes(), &http)
            .unwrap_err()
            .to_string()
            .contains("recursion limit"));

        // An ordinary payload of the same byte size passes: strings cost their length.
        let text = format!(
            r#"{{"type":"go","payload":{{"text":"{}"}}}}"#,
            "x".repeat(http.max_bytes - 64)
        );
        assert!(parse(text.as_bytes(), &http).is_ok());
        // And one of many small records (8 fields each) up to the limit.
        let rec = r#"{"id":123456,"name":"a name of some length","ok":true,"score":1.5,"tags":["a","b"],"when":"2024-01-01T00:00:00Z","n":null,"k":"v"},"#;
        let mut records = br#"{"type":"go","payload":["#.to_vec();
        for _ in 0..(256 * 1024 / rec.len()) {
            records.extend_from_slice(rec.as_bytes());
        }
        records.extend_from_slice(b"null]}");
        assert!(parse(&records, &http).is_ok(), "256 KiB of records");
    }

    #[test]
    fn the_estimate_is_exact_for_flat_values() {
        let budget_for = |json: &[u8]| {
            let mut n = 0;
            while parse_json(
                json,
                &Limits {
                    max_bytes: usize::MAX,
                    max_parsed_bytes: n,
                },
            )
            .is_err()
            {
                n += 1;
            }
            n
        };
        assert_eq!(budget_for(b"1"), VALUE_COST);
        assert_eq!(budget_for(br#""abc""#), VALUE_COST + 3);
        assert_eq!(budget_for(b"[1,2]"), 3 * VALUE_COST);
        assert_eq!(
            budget_for(br#"{"ab":null}"#),
            2 * VALUE_COST + ENTRY_COST + 2
        );
    }
}

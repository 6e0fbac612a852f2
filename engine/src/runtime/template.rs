//! `{a.b}` placeholders: parsed once when a config is compiled, rendered per action run.
//!
//! Syntax: `{path}` or `{path|filter|filter:arg}` where `path` is dotted names (and list
//! indexes). Filters: `length`, `default:VALUE` (VALUE may be quoted), `upper`, `lower`,
//! `trim`, `json`, `int`. A string that is exactly one placeholder keeps the value's JSON type;
//! an unknown placeholder stays as written. Text such as `{"a": 1}` that is not a valid
//! placeholder is left alone.
//!
//! Text that is shown rather than used (a logged message) is rendered a second way,
//! [`Template::render_shown`], which puts `[redacted]` where a value comes from a
//! sensitive field ([`crate::redact`]).

use std::borrow::Cow;
use std::fmt::Write as _;

use serde_json::Value as Json;

use crate::redact::{Redactor, REDACTED};

/// A filter applied to a placeholder's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Number of items (list, mapping) or characters (string); 0 for null.
    Length,
    /// The value when the path is missing or null.
    Default(Json),
    /// Upper-cases a string.
    Upper,
    /// Lower-cases a string.
    Lower,
    /// Trims whitespace.
    Trim,
    /// Renders the value as JSON text.
    Json,
    /// The value as an integer: a JSON integer, or a string of decimal digits with an
    /// optional sign (surrounding whitespace ignored), rendered in canonical decimal form.
    /// Anything else is an error ([`resolve_checked`]); [`resolve`] leaves the placeholder
    /// as written then.
    Int,
}

/// One `{...}` placeholder.
#[derive(Debug, Clone, PartialEq)]
pub struct Placeholder {
    /// Dotted path, split.
    pub path: Vec<String>,
    /// Filters in order.
    pub filters: Vec<Filter>,
    /// The placeholder as written, braces included (kept when it does not resolve).
    pub raw: String,
}

impl Placeholder {
    /// True when the last filter is `int`: a resolved value is then always an integer.
    pub fn ends_with_int(&self) -> bool {
        matches!(self.filters.last(), Some(Filter::Int))
    }
}

/// A piece of a template.
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    /// Literal text.
    Lit(String),
    /// A placeholder.
    Var(Placeholder),
}

/// A parsed template string.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    segments: Vec<Segment>,
}

/// Where placeholder roots are looked up.
pub trait Scope {
    /// The value of a top-level name, if known.
    fn root(&self, name: &str) -> Option<&Json>;
}

impl Scope for serde_json::Map<String, Json> {
    fn root(&self, name: &str) -> Option<&Json> {
        self.get(name)
    }
}

fn parse_filter(text: &str) -> Result<Filter, String> {
    let (name, arg) = match text.split_once(':') {
        Some((n, a)) => (n.trim(), Some(a.trim())),
        None => (text.trim(), None),
    };
    match (name, arg) {
        ("length", None) => Ok(Filter::Length),
        ("upper", None) => Ok(Filter::Upper),
        ("lower", None) => Ok(Filter::Lower),
        ("trim", None) => Ok(Filter::Trim),
        ("json", None) => Ok(Filter::Json),
        ("int", None) => Ok(Filter::Int),
        ("default", Some(a)) => Ok(Filter::Default(parse_literal(a))),
        ("default", None) => Err("`default` needs a value, e.g. `{x|default:0}`".into()),
        _ => Err(format!(
            "unknown filter `{name}`; known: length, default:VALUE, upper, lower, trim, json, int"
        )),
    }
}

fn parse_literal(a: &str) -> Json {
    let unq = |q: char| a.len() >= 2 && a.starts_with(q) && a.ends_with(q);
    if unq('\'') || unq('"') {
        return Json::String(a[1..a.len() - 1].to_owned());
    }
    serde_json::from_str(a).unwrap_or_else(|_| Json::String(a.to_owned()))
}

fn is_path_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// Tries to read a placeholder starting at `s` (which begins with `{`); returns it and its
/// byte length, or `Ok(None)` when the text is not placeholder syntax at all.
fn parse_placeholder(s: &str) -> Result<Option<(Placeholder, usize)>, String> {
    let Some(end) = s.find('}') else {
        return Ok(None);
    };
    let inner = &s[1..end];
    let (path_part, filters_part) = match inner.split_once('|') {
        Some((p, f)) => (p, Some(f)),
        None => (inner, None),
    };
    let path_part = path_part.trim();
    if path_part.is_empty()
        || !path_part.chars().all(is_path_char)
        || path_part.starts_with('.')
        || path_part.ends_with('.')
        || path_part.contains("..")
    {
        return Ok(None);
    }
    if inner.contains('{') {
        return Ok(None);
    }
    let mut filters = Vec::new();
    if let Some(fp) = filters_part {
        for f in fp.split('|') {
            filters.push(parse_filter(f)?);
        }
    }
    let ph = Placeholder {
        path: path_part.split('.').map(str::to_owned).collect(),
        filters,
        raw: s[..=end].to_owned(),
    };
    Ok(Some((ph, end + 1)))
}

impl Template {
    /// A template that is plain text (no placeholders).
    pub fn literal(text: &str) -> Self {
        Self {
            segments: if text.is_empty() {
                Vec::new()
            } else {
                vec![Segment::Lit(text.to_owned())]
            },
        }
    }

    /// Parses `text`. Errors only for a well-formed placeholder with a bad filter.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::parse_with(text, |_| true)
    }

    /// Parses `text`, accepting a placeholder at byte offset `i` only when `accept(i)`.
    pub fn parse_with(text: &str, accept: impl Fn(usize) -> bool) -> Result<Self, String> {
        let mut segments = Vec::new();
        let mut lit = String::new();
        let mut i = 0;
        while i < text.len() {
            let rest = &text[i..];
            if rest.starts_with('{') && accept(i) {
                if let Some((ph, len)) = parse_placeholder(rest)? {
                    if !lit.is_empty() {
                        segments.push(Segment::Lit(std::mem::take(&mut lit)));
                    }
                    segments.push(Segment::Var(ph));
                    i += len;
                    continue;
                }
            }
            let Some(c) = rest.chars().next() else { break };
            lit.push(c);
            i += c.len_utf8();
        }
        if !lit.is_empty() {
            segments.push(Segment::Lit(lit));
        }
        Ok(Self { segments })
    }

    /// The parsed pieces.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// True when there is no placeholder: rendering returns the text unchanged.
    pub fn is_literal(&self) -> bool {
        self.segments.iter().all(|s| matches!(s, Segment::Lit(_)))
    }

    /// Renders to JSON: one bare placeholder keeps its type; otherwise a string.
    pub fn render_value(&self, scope: &dyn Scope) -> Json {
        if let [Segment::Var(ph)] = self.segments.as_slice() {
            return match resolve(ph, scope) {
                Some(v) => v.into_owned(),
                None => Json::String(ph.raw.clone()),
            };
        }
        Json::String(self.render_string(scope).into_owned())
    }

    /// Renders to text.
    pub fn render_string(&self, scope: &dyn Scope) -> Cow<'_, str> {
        match self.segments.as_slice() {
            [] => Cow::Borrowed(""),
            [Segment::Lit(s)] => Cow::Borrowed(s),
            segs => {
                let mut out = String::new();
                for s in segs {
                    match s {
                        Segment::Lit(l) => out.push_str(l),
                        Segment::Var(ph) => push_value(&mut out, ph, scope),
                    }
                }
                Cow::Owned(out)
            }
        }
    }

    /// Renders to text as logs and records show it (a `log` message, a job's error
    /// message): the same text as [`Template::render_string`], except that values read
    /// from sensitive fields show as `[redacted]` ([`push_shown`]). The action itself uses
    /// the real rendering.
    pub fn render_shown(&self, scope: &dyn Scope, redactor: &Redactor) -> Cow<'_, str> {
        if self.is_literal() {
            return self.render_string(scope);
        }
        let mut out = String::new();
        for s in &self.segments {
            match s {
                Segment::Lit(l) => out.push_str(l),
                Segment::Var(ph) => push_shown(&mut out, ph, scope, redactor),
            }
        }
        Cow::Owned(out)
    }
}

/// Appends a placeholder's text as it is shown in logs and records: `[redacted]` when
/// its path goes through a sensitive field (see [`crate::redact`]), else its value with
/// the sensitive fields inside it redacted before the filters apply (or the raw
/// placeholder when it does not resolve).
pub fn push_shown(out: &mut String, ph: &Placeholder, scope: &dyn Scope, redactor: &Redactor) {
    if redactor.path_is_sensitive(&ph.path) {
        out.push_str(REDACTED);
        return;
    }
    let found = find(ph, scope).map(|v| redactor.redact_json(v));
    match apply_filters(ph, found).ok().flatten() {
        Some(v) => push_text(out, &v),
        None => out.push_str(&ph.raw),
    }
}

/// Appends a placeholder's text (or the raw placeholder when it does not resolve).
pub fn push_value(out: &mut String, ph: &Placeholder, scope: &dyn Scope) {
    match resolve(ph, scope) {
        Some(v) => push_text(out, &v),
        None => out.push_str(&ph.raw),
    }
}

/// Appends a JSON value as text: strings as they are, everything else as JSON.
pub fn push_text(out: &mut String, v: &Json) {
    match v {
        Json::String(s) => out.push_str(s),
        Json::Null => {}
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

/// Follows a dotted path from a root value.
pub fn lookup_path<'a>(root: &'a Json, rest: &[String]) -> Option<&'a Json> {
    let mut cur = root;
    for seg in rest {
        cur = match cur {
            Json::Object(m) => m.get(seg.as_str())?,
            Json::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Resolves a placeholder, applying its filters. `None` means "leave it as written" (also
/// when a filter fails: see [`resolve_checked`]).
pub fn resolve<'a>(ph: &Placeholder, scope: &'a dyn Scope) -> Option<Cow<'a, Json>> {
    resolve_checked(ph, scope).ok().flatten()
}

/// The value as an integer, when it is one (see [`Filter::Int`]).
pub fn as_integer(v: &Json) -> Option<i64> {
    match v {
        Json::Number(n) => n.as_i64(),
        Json::String(s) => {
            let t = s.trim();
            let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
            if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            t.parse().ok()
        }
        _ => None,
    }
}

/// What kind of value `v` is, without showing it (messages must not carry values).
fn describe(v: &Json) -> String {
    match v {
        Json::String(s) => format!("a string of {} characters", s.chars().count()),
        Json::Number(n) if n.is_f64() => "a number with a fraction or exponent".into(),
        Json::Number(_) => "an integer out of the 64-bit range".into(),
        Json::Bool(_) => "a boolean".into(),
        Json::Array(_) => "a list".into(),
        Json::Object(_) => "a mapping".into(),
        Json::Null => "null".into(),
    }
}

/// Resolves a placeholder, applying its filters: `Ok(None)` when the path does not resolve,
/// an error when a filter cannot apply (`int` on a value that is not an integer). The error
/// names the placeholder and the kind of value, never the value itself.
pub fn resolve_checked<'a>(
    ph: &Placeholder,
    scope: &'a dyn Scope,
) -> Result<Option<Cow<'a, Json>>, String> {
    apply_filters(ph, find(ph, scope).map(Cow::Borrowed))
}

/// The value a placeholder's path reaches, before filters (null counts as not set).
fn find<'a>(ph: &Placeholder, scope: &'a dyn Scope) -> Option<&'a Json> {
    let found = ph
        .path
        .split_first()
        .and_then(|(first, rest)| scope.root(first).and_then(|r| lookup_path(r, rest)));
    // As in statemachine-engine, null counts as "not set": the placeholder stays.
    found.filter(|v| !v.is_null())
}

/// Applies a placeholder's filters to the value its path reached (see [`resolve_checked`]).
fn apply_filters<'a>(
    ph: &Placeholder,
    found: Option<Cow<'a, Json>>,
) -> Result<Option<Cow<'a, Json>>, String> {
    if ph.filters.is_empty() {
        return Ok(found);
    }
    let mut cur: Option<Json> = found.map(Cow::into_owned);
    for f in &ph.filters {
        cur = match (f, cur) {
            (Filter::Default(d), None) => Some(d.clone()),
            (Filter::Default(_), v) => v,
            (_, None) => None,
            (Filter::Length, Some(v)) => Some(Json::from(match &v {
                Json::Array(a) => a.len(),
                Json::Object(m) => m.len(),
                Json::String(s) => s.chars().count(),
                _ => 0,
            })),
            (Filter::Upper, Some(Json::String(s))) => Some(Json::String(s.to_uppercase())),
            (Filter::Lower, Some(Json::String(s))) => Some(Json::String(s.to_lowercase())),
            (Filter::Trim, Some(Json::String(s))) => Some(Json::String(s.trim().to_owned())),
            (Filter::Json, Some(v)) => Some(Json::String(v.to_string())),
            (Filter::Int, Some(v)) => match as_integer(&v) {
                Some(i) => Some(Json::from(i)),
                None => {
                    return Err(format!(
                        "`{}`: the value is {}, not an integer (`int` takes a JSON integer or a string of decimal digits with an optional sign)",
                        ph.raw,
                        describe(&v)
                    ))
                }
            },
            (_, v) => v,
        };
    }
    Ok(cur.map(Cow::Owned))
}

/// A JSON structure whose strings may hold placeholders (e.g. a `payload:` parameter).
#[derive(Debug, Clone, PartialEq)]
pub enum JsonTemplate {
    /// A string template.
    Str(Template),
    /// A list.
    Array(Vec<JsonTemplate>),
    /// A mapping.
    Object(Vec<(String, JsonTemplate)>),
    /// Any other value, as is.
    Plain(Json),
}

impl JsonTemplate {
    /// Compiles a JSON value.
    pub fn compile(v: &Json) -> Result<Self, String> {
        Ok(match v {
            Json::String(s) => JsonTemplate::Str(Template::parse(s)?),
            Json::Array(a) => {
                JsonTemplate::Array(a.iter().map(Self::compile).collect::<Result<_, _>>()?)
            }
            Json::Object(m) => JsonTemplate::Object(
                m.iter()
                    .map(|(k, v)| Ok((k.clone(), Self::compile(v)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => JsonTemplate::Plain(other.clone()),
        })
    }

    /// Renders the structure.
    pub fn render(&self, scope: &dyn Scope) -> Json {
        match self {
            JsonTemplate::Str(t) => t.render_value(scope),
            JsonTemplate::Array(a) => Json::Array(a.iter().map(|t| t.render(scope)).collect()),
            JsonTemplate::Object(m) => Json::Object(
                m.iter()
                    .map(|(k, t)| (k.clone(), t.render(scope)))
                    .collect(),
            ),
            JsonTemplate::Plain(v) => v.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> serde_json::Map<String, Json> {
        json!({"id": 42, "job": {"name": "x", "tags": ["a", "b"]}, "s": "Hi", "none": null})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn single_placeholder_keeps_type() {
        let c = ctx();
        assert_eq!(Template::parse("{id}").unwrap().render_value(&c), json!(42));
        assert_eq!(
            Template::parse("{job.tags}").unwrap().render_value(&c),
            json!(["a", "b"])
        );
        assert_eq!(
            Template::parse("id={id}").unwrap().render_value(&c),
            json!("id=42")
        );
    }

    #[test]
    fn unknown_placeholder_stays() {
        let c = ctx();
        let t = Template::parse("a {missing.x} b {id}").unwrap();
        assert_eq!(t.render_string(&c), "a {missing.x} b 42");
    }

    #[test]
    fn non_placeholders_are_text() {
        let c = ctx();
        let t = Template::parse(r#"{"a": 1} { } {a b}"#).unwrap();
        assert!(t.is_literal());
        assert_eq!(t.render_string(&c), r#"{"a": 1} { } {a b}"#);
    }

    #[test]
    fn filters() {
        let c = ctx();
        let r = |s: &str| Template::parse(s).unwrap().render_value(&c);
        assert_eq!(r("{job.tags|length}"), json!(2));
        assert_eq!(r("{nothing|length|default:0}"), json!(0));
        assert_eq!(r("{nothing|default:'none'}"), json!("none"));
        assert_eq!(r("{none|default:7}"), json!(7));
        assert_eq!(r("{s|upper}"), json!("HI"));
        assert_eq!(r("{job.tags.1}"), json!("b"));
        assert_eq!(r("{job|json}"), json!(r#"{"name":"x","tags":["a","b"]}"#));
        assert!(Template::parse("{x|frobnicate}").is_err());
    }

    #[test]
    fn int_filter() {
        let c = json!({"n": " -42 ", "p": "+7", "i": 5, "f": 1.5, "s": "a[$(id)]", "o": "010"})
            .as_object()
            .unwrap()
            .clone();
        let r = |s: &str| {
            let t = Template::parse(s).unwrap();
            let Segment::Var(ph) = &t.segments()[0] else {
                panic!("{s}")
            };
            resolve_checked(ph, &c).map(|v| v.map(Cow::into_owned))
        };
        assert_eq!(r("{n|int}"), Ok(Some(json!(-42))));
        assert_eq!(r("{p|int}"), Ok(Some(json!(7))));
        assert_eq!(r("{i|int}"), Ok(Some(json!(5))));
        assert_eq!(r("{o|int}"), Ok(Some(json!(10))));
        assert_eq!(r("{missing|int}"), Ok(None));
        assert_eq!(r("{missing|default:3|int}"), Ok(Some(json!(3))));
        for bad in ["{f|int}", "{s|int}"] {
            let e = r(bad).unwrap_err();
            assert!(e.contains("not an integer") && !e.contains("$(id)"), "{e}");
        }
        // Rendering outside `bash` leaves a failing placeholder as written.
        assert_eq!(
            Template::parse("n={s|int}").unwrap().render_string(&c),
            "n={s|int}"
        );
    }

    #[test]
    fn shown_rendering_redacts_sensitive_paths_and_values() {
        let c = json!({
            "payload": {"api_token": "T0K", "user": "ann", "nested": {"password": "pw", "n": 1}},
            "db_password": "S3", "id": 7,
        })
        .as_object()
        .unwrap()
        .clone();
        let r = Redactor::default();
        let t = Template::parse(
            "u={payload.user} t={payload.api_token} p={db_password|upper} n={payload.nested} j={payload.nested|json} l={db_password|length} m={missing} i={id}",
        )
        .unwrap();
        assert_eq!(
            t.render_string(&c),
            r#"u=ann t=T0K p=S3 n={"password":"pw","n":1} j={"password":"pw","n":1} l=2 m={missing} i=7"#
        );
        assert_eq!(
            t.render_shown(&c, &r),
            r#"u=ann t=[redacted] p=[redacted] n={"password":"[redacted]","n":1} j={"password":"[redacted]","n":1} l=[redacted] m={missing} i=7"#
        );
        let lit = Template::parse("no placeholder").unwrap();
        assert!(matches!(
            lit.render_shown(&c, &r),
            Cow::Borrowed("no placeholder")
        ));
    }

    #[test]
    fn json_template() {
        let c = ctx();
        let t = JsonTemplate::compile(&json!({"job_id": "{id}", "m": "w-{s}", "n": [1, "{id}"]}))
            .unwrap();
        assert_eq!(
            t.render(&c),
            json!({"job_id": 42, "m": "w-Hi", "n": [1, 42]})
        );
    }
}

//! A YAML document as a tree of nodes that remember where they came from.
//!
//! serde-saphyr gives each node its line and column through `Spanned`; the config loader
//! walks this tree by hand so that it can report every problem of a file at once (serde
//! derive stops at the first one) and point at the exact key or value.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A position in a config file, 1-based; line 0 means "unknown".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, PartialOrd, Ord)]
pub struct Loc {
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One YAML node with its location.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub value: Value,
    /// Where the node starts.
    pub loc: Loc,
}

/// The value of a YAML node.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null` or an empty value.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer that fits in i64.
    Int(i64),
    /// Any other number.
    Float(f64),
    /// A string scalar.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in file order, duplicates kept (the loader reports them).
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// A short name of the value's type for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl Node {
    /// The string value when this node is a string scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A scalar rendered as text (strings, numbers, booleans), as YAML users expect for
    /// names such as events written `200` or `true`.
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// Converts the node to JSON (maps with non-string keys use the key's text).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(pairs) => {
                let mut m = serde_json::Map::new();
                for (k, v) in pairs {
                    let key = k.scalar_text().unwrap_or_default();
                    m.insert(key, v.to_json());
                }
                J::Object(m)
            }
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Spanned::<Value>::deserialize(d)?;
        let line = u32::try_from(s.referenced.line()).unwrap_or(u32::MAX);
        let column = u32::try_from(s.referenced.column()).unwrap_or(u32::MAX);
        Ok(Node {
            value: s.value,
            loc: Loc { line, column },
        })
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(n) = seq.next_element::<Node>()? {
            items.push(n);
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut pairs = Vec::new();
        while let Some(k) = map.next_key::<Node>()? {
            let v = map.next_value::<Node>()?;
            pairs.push((k, v));
        }
        Ok(Value::Map(pairs))
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

/// Largest config file accepted, in bytes: a machine definition is a few KB; anything
/// this big is a mistake (or an attack) and is refused before parsing.
pub const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;

/// A YAML syntax problem (or a resource limit) found while parsing.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    /// The diagnostic code: `yaml-syntax`, or `too-large` for a resource limit.
    pub code: &'static str,
    /// Where, when the parser knows.
    pub loc: Loc,
    /// The parser's message, first line only.
    pub message: String,
    /// How to fix it.
    pub hint: String,
}

const SYNTAX_HINT: &str = "fix the YAML syntax here (indentation, quotes, brackets)";
const ALIAS_HINT: &str = "a machine config needs no large alias expansion (an alias bomb?): write the values out or use fewer `*alias` references";

fn budget() -> serde_saphyr::Budget {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_events = 200_000;
    budget.max_aliases = 1_000;
    budget.max_depth = 64;
    // Copies made while expanding anchors: a real config needs a few hundred; an alias
    // bomb ("billion laughs") needs millions and is refused after a few milliseconds.
    budget.max_recorded_anchor_events = 20_000;
    budget
}

/// Stack for the parser. Its recursive descent takes tens of KB per nesting level in debug
/// builds: at the depth limit that is more than a 2 MiB thread stack (a test thread, a
/// Tokio worker) holds, so parsing runs on a thread of its own with room to spare.
const PARSE_STACK_BYTES: usize = 16 * 1024 * 1024;

fn raw_parse(text: &str) -> Result<Option<Node>, serde_saphyr::Error> {
    std::thread::scope(|s| {
        match std::thread::Builder::new()
            .name("turnstile-yaml".into())
            .stack_size(PARSE_STACK_BYTES)
            .spawn_scoped(s, || raw_parse_here(text))
        {
            Ok(h) => h.join().unwrap_or_else(|_| {
                Err(de::Error::custom(
                    "the YAML parser failed on this input (a bug: please report it)",
                ))
            }),
            Err(_) => raw_parse_here(text),
        }
    })
}

fn raw_parse_here(text: &str) -> Result<Option<Node>, serde_saphyr::Error> {
    let mut options = serde_saphyr::Options::default();
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::PassThrough;
    options.with_snippet = false;
    // YAML 1.2 booleans: only true/false. YAML 1.1 also reads y/n/yes/no/on/off as
    // booleans (the "Norway problem"), which would turn `key: n` or a state named `on`
    // into `false`/`true`.
    options.strict_booleans = true;
    options.budget = Some(budget());
    // Events copied out of anchors by aliases, in all: the bound on an alias bomb's work.
    options.alias_limits.max_total_replayed_events = 20_000;
    serde_saphyr::from_str_with_options::<Option<Node>>(text, options)
}

fn syntax_error(e: &serde_saphyr::Error) -> SyntaxError {
    let loc = e.location().map_or(Loc { line: 1, column: 1 }, |l| Loc {
        line: u32::try_from(l.line()).unwrap_or(u32::MAX).max(1),
        column: u32::try_from(l.column()).unwrap_or(u32::MAX).max(1),
    });
    let full = e.to_string();
    let first = full.lines().next().unwrap_or("invalid YAML").trim();
    // The position is reported separately: do not repeat it in the message.
    let suffix = format!(" at line {}, column {}", loc.line, loc.column);
    let message = first.strip_suffix(suffix.as_str()).unwrap_or(first);
    // Alias replays wrap the error that stopped them.
    let mut inner = e;
    while let serde_saphyr::Error::AliasError { error, .. } = inner {
        inner = error;
    }
    let limit = match inner {
        serde_saphyr::Error::Budget {
            breach: serde_saphyr::budget::BudgetBreach::Depth { .. },
            ..
        } => Some((
            "the YAML is nested too deeply (more than 64 levels)".to_owned(),
            "a machine config needs a few levels of nesting: flatten this structure",
        )),
        serde_saphyr::Error::Budget { breach, .. } => Some((
            format!("the YAML is too large once its anchors and aliases are expanded ({breach:?})"),
            ALIAS_HINT,
        )),
        serde_saphyr::Error::AliasReplayLimitExceeded { .. }
        | serde_saphyr::Error::AliasExpansionLimitExceeded { .. }
        | serde_saphyr::Error::AliasReplayStackDepthExceeded { .. } => Some((
            format!(
                "the YAML is too large once its anchors and aliases are expanded ({})",
                inner.to_string().lines().next().unwrap_or_default()
            ),
            ALIAS_HINT,
        )),
        _ => None,
    };
    if let Some((message, hint)) = limit {
        return SyntaxError {
            code: "too-large",
            loc,
            message,
            hint: hint.into(),
        };
    }
    if message.contains("recursion limit") {
        return SyntaxError {
            code: "too-large",
            loc,
            message: "the YAML is nested too deeply (brackets inside brackets)".into(),
            hint: "a machine config needs a few levels of nesting: flatten this structure".into(),
        };
    }
    SyntaxError {
        code: "yaml-syntax",
        loc,
        message: message.to_owned(),
        hint: SYNTAX_HINT.into(),
    }
}

/// Indentation (leading spaces and tabs) of 1-based line `line` of `text`.
fn indent_of(text: &str, line: u32) -> Option<usize> {
    let l = text
        .lines()
        .nth(usize::try_from(line).ok()?.checked_sub(1)?)?;
    Some(l.len() - l.trim_start_matches([' ', '\t']).len())
}

/// 1-based column of the first tab in the indentation of 1-based line `line` of `text`.
fn first_tab_column(text: &str, line: u32) -> Option<u32> {
    let l = text
        .lines()
        .nth(usize::try_from(line).ok()?.checked_sub(1)?)?;
    let lead = l.len() - l.trim_start_matches([' ', '\t']).len();
    let i = l[..lead].find('\t')?;
    u32::try_from(i + 1).ok()
}

/// A `[` or `{` left open makes the parser stumble on a later line with an unrelated
/// message ("illegal placement of ':' indicator"). When the text before the line of the
/// error already ends inside an open bracket, and the error's line is no more indented
/// than the bracket's, report the bracket instead.
fn unclosed_bracket(text: &str, err: &SyntaxError) -> Option<SyntaxError> {
    let start_of_line = text
        .match_indices('\n')
        .nth(usize::try_from(err.loc.line).ok()?.checked_sub(2)?)?
        .0
        + 1;
    let e = raw_parse(&text[..start_of_line]).err()?;
    let open = syntax_error(&e);
    if !open.message.starts_with("unclosed bracket")
        || indent_of(text, err.loc.line)? > indent_of(text, open.loc.line)?
    {
        return None;
    }
    Some(SyntaxError {
        message: format!(
            "{} (still open at line {}: {})",
            open.message, err.loc.line, err.message
        ),
        hint: "close the bracket at the end of its value, or write the list as `- item` lines"
            .into(),
        ..open
    })
}

/// Parses YAML text into a located tree, with limits against alias bombs and deep nesting.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(SyntaxError {
            code: "too-large",
            loc: Loc { line: 1, column: 1 },
            message: format!(
                "file is {} bytes; the limit for a machine config is {} bytes",
                text.len(),
                MAX_CONFIG_BYTES
            ),
            hint: "a machine config is a few kilobytes: is this the right file?".into(),
        });
    }
    match raw_parse(text) {
        Ok(Some(node)) => Ok(node),
        Ok(None) => Ok(Node {
            value: Value::Null,
            loc: Loc { line: 1, column: 1 },
        }),
        Err(e) => {
            let mut err = syntax_error(&e);
            if err.code != "yaml-syntax" {
                return Err(err);
            }
            if err.message.starts_with("tabs disallowed") {
                // The parser points past the tab: point at the tab itself.
                if let Some(col) = first_tab_column(text, err.loc.line) {
                    err.loc.column = col;
                }
                err.hint = "indent with spaces: YAML does not allow tabs for indentation".into();
            }
            Err(unclosed_bracket(text, &err).unwrap_or(err))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_of_keys_and_values() {
        let n = parse("a: 1\nb:\n  - x\n  - {c: d}\n").unwrap();
        let Value::Map(pairs) = &n.value else {
            panic!("not a map")
        };
        assert_eq!(pairs[0].0.loc, Loc { line: 1, column: 1 });
        assert_eq!(pairs[0].1.value, Value::Int(1));
        assert_eq!(pairs[1].0.loc.line, 2);
        let Value::Seq(items) = &pairs[1].1.value else {
            panic!("not a seq")
        };
        assert_eq!(items[0].loc, Loc { line: 3, column: 5 });
        assert_eq!(items[1].loc.line, 4);
    }

    #[test]
    fn duplicate_keys_are_kept_for_the_loader() {
        let n = parse("a: 1\na: 2\n").unwrap();
        let Value::Map(pairs) = &n.value else {
            panic!("not a map")
        };
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[1].0.loc.line, 2);
    }

    #[test]
    fn syntax_errors_have_a_location() {
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.loc.line >= 1);
        assert!(!e.message.is_empty());
    }

    #[test]
    fn alias_bomb_is_refused() {
        let mut y = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..12 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("l{}", i - 1)
            };
            y.push_str(&format!(
                "l{i}: &l{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        assert!(parse(&y).is_err());
    }

    #[test]
    fn only_true_and_false_are_booleans() {
        let n = parse("a: n\nb: yes\nc: on\nd: true\ne: False\n").unwrap();
        let Value::Map(pairs) = &n.value else {
            panic!("not a map")
        };
        let vals: Vec<&Value> = pairs.iter().map(|(_, v)| &v.value).collect();
        assert_eq!(
            vals,
            [
                &Value::Str("n".into()),
                &Value::Str("yes".into()),
                &Value::Str("on".into()),
                &Value::Bool(true),
                &Value::Bool(false)
            ]
        );
    }

    #[test]
    fn huge_input_is_refused_before_parsing() {
        let y = "a: b\n".repeat(MAX_CONFIG_BYTES / 4);
        let e = parse(&y).unwrap_err();
        assert!(e.message.contains("limit"));
    }
}

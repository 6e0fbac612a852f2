//! Breakpoints: what a breakpoint is set on ([`On`], [`BreakpointSpec`]) and its `when`
//! condition, a small expression on a machine's context ([`Condition`]).
//!
//! A condition comes from outside (`POST /machines/{name}/breakpoints`), so its parser is
//! hand-written, bounded (length, nesting) and never panics; an error names the column
//! where it went wrong. Grammar:
//!
//! ```text
//! expr       := and ( "||" and )*
//! and        := unary ( "&&" unary )*
//! unary      := "!" unary | "(" expr ")" | "exists" "(" path ")" | path op literal
//! op         := "==" | "!=" | "<" | "<=" | ">" | ">="
//! path       := segment ( "." segment )*      segment: letters, digits, `_`, `-`
//! literal    := a JSON value (`3`, `"paid"`, `true`, `null`, `[1, 2]`, ...)
//! ```
//!
//! Evaluation never fails: a path that is missing makes its comparison false, and so does
//! comparing values of different types (`!=` included); numbers compare as numbers, strings
//! by their bytes, and only `==` and `!=` apply to the other types. A segment that is a
//! number indexes an array.

use std::fmt;

use serde_json::{Map, Value as Json};

/// The longest condition accepted, in bytes.
pub const MAX_CONDITION_LEN: usize = 4096;
/// The deepest nesting of `!` and parentheses accepted.
pub const MAX_DEPTH: usize = 64;

/// Where a breakpoint stops the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    /// Before an event's transition enters a state (`state`: the state entered).
    Enter,
    /// Before an event is processed, whatever becomes of it (`state`: the current state).
    Event,
    /// Before an event that a rule takes makes its transition (`state`: the state left).
    Transition,
    /// After an error is recorded, before the machine processes its next event (the
    /// action's `error` event, when it returned one).
    Error,
}

impl On {
    /// Every kind, in the order the API documents them.
    pub const ALL: [On; 4] = [On::Enter, On::Event, On::Transition, On::Error];

    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            On::Enter => "enter",
            On::Event => "event",
            On::Transition => "transition",
            On::Error => "error",
        }
    }

    /// The kind named `s`.
    pub fn parse(s: &str) -> Option<On> {
        On::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// A breakpoint as it is asked for.
#[derive(Debug, Clone)]
pub struct BreakpointSpec {
    /// Where it stops.
    pub on: On,
    /// Only in (or into, for [`On::Enter`]) this state.
    pub state: Option<String>,
    /// Only for this event (for [`On::Error`]: the event being processed when the error
    /// happened).
    pub event: Option<String>,
    /// Only when this holds on the context.
    pub when: Option<Condition>,
}

/// A set breakpoint, as listed.
#[derive(Debug, Clone)]
pub struct BreakpointInfo {
    /// Its id, unique per machine.
    pub id: u64,
    /// What it was set on.
    pub on: On,
    /// Its state filter.
    pub state: Option<String>,
    /// Its event filter.
    pub event: Option<String>,
    /// Its condition, as written.
    pub when: Option<String>,
    /// How many times it paused the machine.
    pub hits: u64,
}

/// A condition that did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionError {
    /// 1-based column (in characters) where the problem is.
    pub column: usize,
    /// What is wrong there.
    pub message: String,
}

impl fmt::Display for ConditionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for ConditionError {}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `a || b`
    Or(Box<Expr>, Box<Expr>),
    /// `a && b`
    And(Box<Expr>, Box<Expr>),
    /// `!a`
    Not(Box<Expr>),
    /// `exists(path)`
    Exists(Vec<String>),
    /// `path op literal`
    Compare(Vec<String>, Op, Json),
}

/// A parsed `when` condition with its source text.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    source: String,
    expr: Expr,
}

impl Condition {
    /// Parses a condition.
    pub fn parse(src: &str) -> Result<Condition, ConditionError> {
        if src.len() > MAX_CONDITION_LEN {
            return Err(ConditionError {
                column: 1,
                message: format!(
                    "the condition is {} bytes long; at most {MAX_CONDITION_LEN}",
                    src.len()
                ),
            });
        }
        let mut p = Parser { src, pos: 0 };
        let expr = p.or(0)?;
        p.skip_ws();
        if p.pos < src.len() {
            return Err(p.error("unexpected text after the condition (missing `&&` or `||`?)"));
        }
        Ok(Condition {
            source: src.to_owned(),
            expr,
        })
    }

    /// The condition as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The expression.
    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// Whether it holds on `context`.
    pub fn eval(&self, context: &Map<String, Json>) -> bool {
        eval(&self.expr, context)
    }
}

fn lookup<'a>(context: &'a Map<String, Json>, path: &[String]) -> Option<&'a Json> {
    let (first, rest) = path.split_first()?;
    crate::runtime::template::lookup_path(context.get(first.as_str())?, rest)
}

fn eval(e: &Expr, cx: &Map<String, Json>) -> bool {
    match e {
        Expr::Or(a, b) => eval(a, cx) || eval(b, cx),
        Expr::And(a, b) => eval(a, cx) && eval(b, cx),
        Expr::Not(a) => !eval(a, cx),
        Expr::Exists(p) => lookup(cx, p).is_some(),
        Expr::Compare(p, op, lit) => lookup(cx, p).is_some_and(|v| compare(v, *op, lit)),
    }
}

/// `v op lit`; false for values of different types.
fn compare(v: &Json, op: Op, lit: &Json) -> bool {
    use std::cmp::Ordering;
    let ord = match (v, lit) {
        (Json::Number(a), Json::Number(b)) => match (a.as_i64(), b.as_i64()) {
            (Some(a), Some(b)) => Some(a.cmp(&b)),
            _ => match (a.as_f64(), b.as_f64()) {
                (Some(a), Some(b)) => a.partial_cmp(&b),
                _ => None,
            },
        },
        (Json::String(a), Json::String(b)) => Some(a.cmp(b)),
        (Json::Bool(_), Json::Bool(_))
        | (Json::Null, Json::Null)
        | (Json::Array(_), Json::Array(_))
        | (Json::Object(_), Json::Object(_)) => {
            return match op {
                Op::Eq => v == lit,
                Op::Ne => v != lit,
                _ => false,
            };
        }
        _ => return false,
    };
    let Some(ord) = ord else {
        return false;
    };
    match op {
        Op::Eq => ord == Ordering::Equal,
        Op::Ne => ord != Ordering::Equal,
        Op::Lt => ord == Ordering::Less,
        Op::Le => ord != Ordering::Greater,
        Op::Gt => ord == Ordering::Greater,
        Op::Ge => ord != Ordering::Less,
    }
}

struct Parser<'a> {
    src: &'a str,
    /// Byte offset of the next character.
    pos: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.src[self.pos..]
    }

    fn error(&self, message: impl Into<String>) -> ConditionError {
        self.error_at(self.pos, message)
    }

    fn error_at(&self, at: usize, message: impl Into<String>) -> ConditionError {
        let mut at = at.min(self.src.len());
        while !self.src.is_char_boundary(at) {
            at -= 1;
        }
        let column = self.src[..at].chars().count() + 1;
        ConditionError {
            column,
            message: message.into(),
        }
    }

    fn skip_ws(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    /// Consumes `tok` (after white space) when it comes next.
    fn eat(&mut self, tok: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }

    fn nested(&self, depth: usize) -> Result<usize, ConditionError> {
        if depth >= MAX_DEPTH {
            return Err(self.error(format!("nested more than {MAX_DEPTH} deep")));
        }
        Ok(depth + 1)
    }

    fn or(&mut self, depth: usize) -> Result<Expr, ConditionError> {
        let mut left = self.and(depth)?;
        while self.eat("||") {
            let right = self.and(depth)?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Expr, ConditionError> {
        let mut left = self.unary(depth)?;
        while self.eat("&&") {
            let right = self.unary(depth)?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, ConditionError> {
        self.skip_ws();
        if self.rest().starts_with('!') && !self.rest().starts_with("!=") {
            let depth = self.nested(depth)?;
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.unary(depth)?)));
        }
        if self.eat("(") {
            let depth = self.nested(depth)?;
            let e = self.or(depth)?;
            if !self.eat(")") {
                return Err(self.error("expected `)`"));
            }
            return Ok(e);
        }
        let start = self.pos;
        let path = self.path()?;
        if path.len() == 1 && path[0] == "exists" && self.eat("(") {
            let p = self.path()?;
            if !self.eat(")") {
                return Err(self.error("expected `)` after the path of `exists(`"));
            }
            return Ok(Expr::Exists(p));
        }
        self.skip_ws();
        let op = self.op().ok_or_else(|| {
            self.error(format!(
                "expected a comparison (`==`, `!=`, `<`, `<=`, `>`, `>=`) after `{}`",
                &self.src[start..self.pos].trim_end()
            ))
        })?;
        let lit = self.literal()?;
        Ok(Expr::Compare(path, op, lit))
    }

    fn op(&mut self) -> Option<Op> {
        for (tok, op) in [
            ("==", Op::Eq),
            ("!=", Op::Ne),
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("<", Op::Lt),
            (">", Op::Gt),
        ] {
            if self.rest().starts_with(tok) {
                self.pos += tok.len();
                return Some(op);
            }
        }
        None
    }

    fn path(&mut self) -> Result<Vec<String>, ConditionError> {
        self.skip_ws();
        let mut segments = Vec::new();
        loop {
            let seg: String = {
                let rest = self.rest();
                let n = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                    .unwrap_or(rest.len());
                rest[..n].to_owned()
            };
            if seg.is_empty() {
                let what = if segments.is_empty() {
                    "expected a context path (like `order.status`), `exists(...)`, `!` or `(`"
                } else {
                    "expected a path segment after `.`"
                };
                return Err(self.error(what));
            }
            self.pos += seg.len();
            segments.push(seg);
            if self.rest().starts_with('.') {
                self.pos += 1;
            } else {
                return Ok(segments);
            }
        }
    }

    fn literal(&mut self) -> Result<Json, ConditionError> {
        self.skip_ws();
        let start = self.pos;
        if self.rest().is_empty() {
            return Err(self.error("expected a JSON value after the comparison"));
        }
        let rest = self.rest();
        // A number or a word ends at the first character that cannot be part of it (the
        // stream parser wants a JSON delimiter after a number, and `)` is not one).
        let structured = rest.starts_with(['"', '[', '{']);
        let parsed = if structured {
            let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Json>();
            stream.next().map(|r| r.map(|v| (v, stream.byte_offset())))
        } else {
            let n = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-')))
                .unwrap_or(rest.len());
            Some(serde_json::from_str::<Json>(&rest[..n]).map(|v| (v, n)))
        };
        match parsed {
            Some(Ok((v, n))) => {
                self.pos += n;
                Ok(v)
            }
            Some(Err(e)) => {
                // Columns count bytes on the line; a condition is one line. A bad word
                // or number is pointed at from its start.
                let at = if structured && e.line() <= 1 {
                    start + e.column().saturating_sub(1)
                } else {
                    start
                };
                Err(self.error_at(
                    at,
                    format!("expected a JSON value (a number, \"string\", true, false, null): {e}"),
                ))
            }
            None => Err(self.error("expected a JSON value after the comparison")),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn holds(src: &str, cx: Json) -> bool {
        let Json::Object(m) = cx else { panic!() };
        Condition::parse(src).unwrap().eval(&m)
    }

    #[test]
    fn comparisons_paths_and_logic() {
        let cx = json!({"order": {"status": "paid", "items": [1, 2]}, "attempts": 4, "ok": true});
        assert!(holds("order.status == \"paid\"", cx.clone()));
        assert!(holds("attempts > 3 && exists(order.status)", cx.clone()));
        assert!(holds(
            "attempts >= 4 && attempts <= 4 && attempts < 4.5",
            cx.clone()
        ));
        assert!(holds("!(attempts < 3) || nope == 1", cx.clone()));
        assert!(holds("order.items.1 == 2", cx.clone()));
        assert!(holds("ok == true && ok != false", cx.clone()));
        assert!(holds("order.items == [1, 2]", cx.clone()));
        assert!(holds("attempts == 4.0", cx.clone()));
        assert!(!holds("exists(order.missing)", cx.clone()));
        // A missing path, different types: false, whatever the operator.
        assert!(!holds("missing != 1", cx.clone()));
        assert!(!holds("attempts != \"4\"", cx.clone()));
        assert!(!holds("attempts == \"4\"", cx.clone()));
        assert!(!holds("ok < true", cx.clone()));
        assert!(holds("order.status > \"a\"", cx.clone()));
        // && binds tighter than ||.
        assert!(holds("attempts == 1 && ok == false || ok == true", cx));
    }

    #[test]
    fn errors_name_the_column() {
        for (src, column) in [
            ("", 1),
            ("attempts >", 11),
            ("attempts ~ 3", 10),
            ("attempts > 3 &&", 16),
            ("(attempts > 3", 14),
            ("attempts > 3 attempts", 14),
            ("exists(order.)", 14),
            ("attempts == \"x", 14),
            ("attempts == tru", 13),
            ("é == 1", 1),
        ] {
            let e = Condition::parse(src).unwrap_err();
            assert_eq!(e.column, column, "{src}: {e}");
        }
        let deep = "(".repeat(100) + "a == 1" + &")".repeat(100);
        assert!(Condition::parse(&deep)
            .unwrap_err()
            .message
            .contains("nested"));
        let long = "a == 1 || ".repeat(500) + "a == 1";
        assert!(Condition::parse(&long).is_err());
    }
}

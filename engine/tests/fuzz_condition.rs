//! Property tests of the breakpoint condition parser (`when` of `POST
//! /machines/{name}/breakpoints`): random text and mutations of the seeds in
//! `fuzz/corpus/condition/` never panic and an error names a column inside the text;
//! conditions built from the grammar print and parse back to the same expression; and
//! evaluation keeps its rules on random contexts (`!` negates, a missing path or values of
//! different types make a comparison false, `==` and `!=` never both hold).
//!
//! `PROPTEST_CASES=N` raises the number of cases; the coverage-guided fuzzer is the
//! `condition` target of the `fuzz/` package (see `fuzz/README.md`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use proptest::prelude::*;
use serde_json::{Map, Value as Json};
use turnstile_engine::breakpoint::{Condition, Expr, Op};

use support::fuzzing::{cases, mutated, seeds};

const BITS: &[&[u8]] = &[
    b"&&",
    b"||",
    b"!",
    b"(",
    b")",
    b"==",
    b"!=",
    b"<=",
    b">=",
    b"<",
    b">",
    b".",
    b"exists(",
    b"\"",
    b"null",
    b"true",
    b"[",
    b"]",
    b"{",
    b"}",
    b"1e9",
    b"-0.5",
    b" ",
    b"\xc3\xa9",
];

fn check(text: &str) -> Option<Condition> {
    match Condition::parse(text) {
        Ok(c) => Some(c),
        Err(e) => {
            assert!(
                e.column >= 1 && e.column <= text.chars().count() + 1,
                "{text:?}: {e}"
            );
            assert!(!e.message.is_empty());
            None
        }
    }
}

#[test]
fn condition_seeds_parse_or_fail_cleanly() {
    let seeds = seeds("condition");
    let ok = seeds
        .iter()
        .filter(|s| check(std::str::from_utf8(s).unwrap()).is_some())
        .count();
    assert!(
        ok >= 3 && ok < seeds.len(),
        "{ok} of {} seeds parse",
        seeds.len()
    );
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z_][a-z0-9_-]{0,5}", "[0-9]{1,2}"]
}

fn path() -> impl Strategy<Value = Vec<String>> {
    (
        "[a-z_][a-z0-9_]{0,5}",
        proptest::collection::vec(segment(), 0..3),
    )
        .prop_map(|(h, t)| {
            let mut p = vec![h];
            p.extend(t);
            p
        })
}

fn literal() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(Json::from),
        "[ -~é]{0,8}".prop_map(Json::String),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Json::Array),
            proptest::collection::btree_map("[a-z]{1,4}", inner, 0..3)
                .prop_map(|m| Json::Object(m.into_iter().collect())),
        ]
    })
}

fn op() -> impl Strategy<Value = Op> {
    proptest::sample::select(vec![Op::Eq, Op::Ne, Op::Lt, Op::Le, Op::Gt, Op::Ge])
}

fn expr() -> impl Strategy<Value = Expr> {
    let leaf = prop_oneof![
        path().prop_map(Expr::Exists),
        (path(), op(), literal()).prop_map(|(p, o, l)| Expr::Compare(p, o, l)),
    ];
    leaf.prop_recursive(4, 24, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Expr::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Expr::Or(Box::new(a), Box::new(b))),
            inner.prop_map(|a| Expr::Not(Box::new(a))),
        ]
    })
}

/// Prints an expression with every compound part in parentheses.
fn print(e: &Expr) -> String {
    let op = |o: &Op| match o {
        Op::Eq => "==",
        Op::Ne => "!=",
        Op::Lt => "<",
        Op::Le => "<=",
        Op::Gt => ">",
        Op::Ge => ">=",
    };
    match e {
        Expr::Or(a, b) => format!("({}) || ({})", print(a), print(b)),
        Expr::And(a, b) => format!("({}) && ({})", print(a), print(b)),
        Expr::Not(a) => format!("!({})", print(a)),
        Expr::Exists(p) => format!("exists( {} )", p.join(".")),
        Expr::Compare(p, o, l) => format!("{} {} {l}", p.join("."), op(o)),
    }
}

fn context() -> impl Strategy<Value = Map<String, Json>> {
    proptest::collection::btree_map("[a-z_][a-z0-9_]{0,5}", literal(), 0..4)
        .prop_map(|m| m.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(512)))]

    #[test]
    fn random_text_never_panics(text in "(\\PC|[&|!()=<>.\"\\[\\]{}0-9 ]){0,60}") {
        check(&text);
    }

    #[test]
    fn mutated_seeds_fail_cleanly_or_evaluate(bytes in mutated(seeds("condition"), BITS, 6), cx in context()) {
        let text = String::from_utf8_lossy(&bytes);
        if let Some(c) = check(&text) {
            let holds = c.eval(&cx);
            if let Ok(not) = Condition::parse(&format!("!({text})")) {
                prop_assert_eq!(not.eval(&cx), !holds);
            }
        }
    }

    #[test]
    fn printed_expressions_parse_back(e in expr()) {
        let text = print(&e);
        let c = Condition::parse(&text).unwrap();
        prop_assert_eq!(c.expr(), &e);
        prop_assert_eq!(c.source(), text.as_str());
    }

    #[test]
    fn comparisons_keep_their_rules(p in "[a-z]{1,3}", lit in literal(), cx in context()) {
        let cond = |o: &str| Condition::parse(&format!("{p} {o} {lit}")).unwrap().eval(&cx);
        let (eq, ne) = (cond("=="), cond("!="));
        prop_assert!(!(eq && ne));
        match cx.get(&p) {
            None => prop_assert!(!eq && !ne && !cond("<") && !cond(">=")),
            Some(v) => {
                let same_type = std::mem::discriminant(v) == std::mem::discriminant(&lit);
                if !same_type {
                    prop_assert!(!eq && !ne && !cond("<=") && !cond(">"));
                } else {
                    prop_assert_eq!(eq || ne, true);
                    prop_assert_eq!(eq, v == &lit);
                }
                let exists = Condition::parse(&format!("exists({p})")).unwrap();
                prop_assert!(exists.eval(&cx));
            }
        }
    }
}

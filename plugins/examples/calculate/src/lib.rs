//! Example Turnstile plugin: `calculate`, the custom action of statemachine-engine's
//! `custom_actions` example, ported to Rust.
//!
//! ```yaml
//! - type: calculate
//!   params:
//!     operation: add       # add, subtract, multiply, divide; the payload's `operation` wins
//!     success: calculated  # event to return (default `success`)
//! ```
//!
//! The operands are the parameters `a` and `b` when given, else the event payload's `a`
//! and `b`, else 0. Numbers and numeric strings are accepted. The result goes to the
//! context as `calculation_result`: an integer when both operands are integers (and it
//! fits), a float for `divide` (as Python's `/`), `"undefined"` for a division by zero and
//! `"unknown operation"` for another operation, as the original does. Operands that are
//! not numbers are an error (`bad_input`).

use turnstile_plugin::serde_json::{Number, Value as Json};
use turnstile_plugin::{export_plugin, number, Call, Manifest, Plugin, PluginError, Reply};

/// The plugin: no state.
#[derive(Default)]
pub struct Calculate;

impl Plugin for Calculate {
    fn manifest(&self) -> Manifest {
        Manifest::new("calculate", env!("CARGO_PKG_VERSION"))
            .action_with_params("calculate", &["operation", "a", "b"])
    }

    fn invoke(&self, action: &str, call: &Call) -> Result<Reply, PluginError> {
        if action != "calculate" {
            return Err(PluginError::new(
                "unknown_action",
                format!("the calculate plugin has no action `{action}`"),
            ));
        }
        let a = operand(call, "a")?;
        let b = operand(call, "b")?;
        let operation = call
            .payload_str("operation")
            .or_else(|| call.param_str("operation"))
            .unwrap_or("add");
        let (result, symbol) = match operation {
            "add" => (arith(&a, &b, i64::checked_add, |x, y| x + y), "+"),
            "subtract" => (arith(&a, &b, i64::checked_sub, |x, y| x - y), "-"),
            "multiply" => (arith(&a, &b, i64::checked_mul, |x, y| x * y), "*"),
            "divide" => (
                match (number(&a), number(&b)) {
                    (_, Some(0.0)) => Json::String("undefined".into()),
                    (Some(x), Some(y)) => float(x / y),
                    _ => Json::Null,
                },
                "/",
            ),
            _ => (Json::String("unknown operation".into()), "?"),
        };
        Ok(Reply::event(call.success())
            .log(format!("Calculation: {a} {symbol} {b} = {}", text(&result)))
            .set("calculation_result", result))
    }
}

/// Parameter `key`, else the payload's `key`, else 0; always a JSON number.
fn operand(call: &Call, key: &str) -> Result<Json, PluginError> {
    let Some(v) = call.param(key).or_else(|| call.payload_value(key)) else {
        return Ok(Json::from(0));
    };
    match v {
        Json::Number(_) => Ok(v.clone()),
        Json::String(s) => {
            let s = s.trim();
            if let Ok(i) = s.parse::<i64>() {
                Ok(Json::from(i))
            } else if let Ok(f) = s.parse::<f64>() {
                Ok(float(f))
            } else {
                Err(bad(key, v))
            }
        }
        _ => Err(bad(key, v)),
    }
}

fn bad(key: &str, v: &Json) -> PluginError {
    PluginError::new(
        "bad_input",
        format!("operand `{key}` must be a number, found {v}"),
    )
}

fn arith(a: &Json, b: &Json, int: fn(i64, i64) -> Option<i64>, fl: fn(f64, f64) -> f64) -> Json {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        if let Some(r) = int(x, y) {
            return Json::from(r);
        }
    }
    match (number(a), number(b)) {
        (Some(x), Some(y)) => float(fl(x, y)),
        _ => Json::Null,
    }
}

/// A float as JSON (non-finite values, which JSON cannot hold, become null).
fn float(f: f64) -> Json {
    Number::from_f64(f).map_or(Json::Null, Json::Number)
}

fn text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

export_plugin!(Calculate);

#[cfg(test)]
mod tests {
    use super::*;
    use turnstile_plugin::serde_json::json;

    fn run(params: Json, payload: Json) -> Json {
        let call = Call {
            params: params.as_object().cloned().unwrap_or_default(),
            context: json!({"event_data": {"payload": payload}})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        };
        Calculate.invoke("calculate", &call).unwrap().to_json()
    }

    #[test]
    fn the_documented_results() {
        let p = json!({"operation": "add", "success": "calculated"});
        let r = run(p.clone(), json!({"a": 5, "b": 3}));
        assert_eq!(r["event"], "calculated");
        assert_eq!(r["context"]["calculation_result"], 8);
        assert_eq!(r["log"], "Calculation: 5 + 3 = 8");
        let r = run(p.clone(), json!({"a": 5, "b": 3, "operation": "multiply"}));
        assert_eq!(r["context"]["calculation_result"], 15);
        let r = run(p.clone(), json!({"a": 10, "b": 4, "operation": "subtract"}));
        assert_eq!(r["context"]["calculation_result"], 6);
        let r = run(p.clone(), json!({"a": 7, "b": 2, "operation": "divide"}));
        assert_eq!(r["context"]["calculation_result"], 3.5);
        let r = run(p.clone(), json!({"a": 6, "b": 3, "operation": "divide"}));
        assert_eq!(r["context"]["calculation_result"], 2.0);
        let r = run(p.clone(), json!({"a": 1, "b": 0, "operation": "divide"}));
        assert_eq!(r["context"]["calculation_result"], "undefined");
        let r = run(p.clone(), json!({"a": 1, "b": 2, "operation": "pow"}));
        assert_eq!(r["context"]["calculation_result"], "unknown operation");
        let r = run(p.clone(), json!({"a": "1.5", "b": 2}));
        assert_eq!(r["context"]["calculation_result"], 3.5);
        let r = run(p, json!({}));
        assert_eq!(r["context"]["calculation_result"], 0);
        let r = run(json!({}), json!({"a": i64::MAX, "b": 1}));
        assert_eq!(r["event"], "success");
        assert!(r["context"]["calculation_result"].is_f64());
    }

    #[test]
    fn operands_that_are_not_numbers_are_errors() {
        let call = Call {
            params: json!({"a": "x"}).as_object().cloned().unwrap_or_default(),
            ..Call::default()
        };
        let e = Calculate.invoke("calculate", &call).unwrap_err();
        assert_eq!(e.kind(), "bad_input");
    }
}

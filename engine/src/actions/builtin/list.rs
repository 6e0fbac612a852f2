//! `add_to_list` and `pop_from_list`: a list in the machine context used as a work queue
//! (as statemachine-engine 1.0.91 does).
//!
//! - `add_to_list` appends `value` (placeholders allowed; a value that is exactly one
//!   placeholder keeps its JSON type) to the list at `list_key` (default `items`), creating
//!   the list when the key is missing or null, and returns `success` (default `success`).
//! - `pop_from_list` removes the first item of the list at `list_key` (default `items`),
//!   stores it under `store_as` when given, and returns `success` (default
//!   `item_popped`); a missing, null or empty list returns `empty` (default `list_empty`).
//!
//! When `list_key` holds something that is not a list, both fail with a message naming the
//! key and what it holds (`last_error` is set, the error is reported). `add_to_list` then
//! returns `error` (default `error`, as statemachine-engine); `pop_from_list` returns
//! `error` when it is given, else `empty` (statemachine-engine returns `empty` there, so
//! its configs keep their flow).

use std::sync::Arc;

use serde_json::Value as Json;

use crate::actions::{Action, ActionCx, Built, Outcome, Params, Step};
use crate::config::diag::json_type_name;
use crate::runtime::template::JsonTemplate;

/// The list key when none is given (statemachine-engine's default).
const DEFAULT_LIST_KEY: &str = "items";

/// Reads a context key parameter: a non-empty string, or `default` when it is not given.
/// `None` (with the error recorded) when it is given but unusable.
fn key_param(p: &mut Params<'_>, key: &'static str, default: Option<&str>) -> Option<String> {
    let given = p.spec().params.get(key).is_some_and(|v| !v.is_null());
    match p.string(key) {
        Some(k) if !k.trim().is_empty() => Some(k),
        Some(_) => {
            p.error(
                key,
                format!("`{key}` must not be empty"),
                Some(format!("name a context key, e.g. `{key}: pending_jobs`")),
            );
            None
        }
        None if given => None,
        None => default.map(str::to_owned),
    }
}

fn not_a_list(kind: &str, key: &str, found: &Json) -> String {
    format!(
        "`{kind}`: context key `{key}` holds {}, not a list",
        json_type_name(found)
    )
}

// --- add_to_list ---------------------------------------------------------------------

struct AddToList {
    list_key: String,
    value: JsonTemplate,
    success: Arc<str>,
    error: Arc<str>,
}

pub(super) fn build_add(p: &mut Params<'_>) -> Option<Built> {
    let list_key = key_param(p, "list_key", Some(DEFAULT_LIST_KEY));
    let has_value = p.spec().params.contains_key("value");
    let value = p.json_template("value");
    if !has_value {
        p.error(
            "value",
            "missing parameter `value`".into(),
            Some("add `value: \"{current_job.id}\"` (the item to append)".into()),
        );
    }
    let success = p.event("success", Some("success"))?;
    let error = p.event("error", Some("error"))?;
    let (list_key, value) = (list_key?, value?);
    Some(Built {
        emits: vec![success.to_string(), error.to_string()],
        action: Arc::new(AddToList {
            list_key,
            value,
            success,
            error,
        }),
        waits: false,
    })
}

impl Action for AddToList {
    fn run(&self, cx: &mut ActionCx<'_>) -> Step {
        let value = self.value.render(&cx.scope());
        let slot = cx
            .context
            .entry(self.list_key.clone())
            .or_insert(Json::Null);
        if slot.is_null() {
            *slot = Json::Array(Vec::new());
        }
        let Json::Array(list) = slot else {
            let msg = not_a_list("add_to_list", &self.list_key, slot);
            return Step::Done(Outcome::error("add_to_list", msg, Some(self.error.clone())));
        };
        list.push(value);
        tracing::debug!(
            target: "turnstile::action",
            machine = cx.machine,
            list = %self.list_key,
            len = list.len(),
            "added an item to the list"
        );
        Step::Done(Outcome::ok(Some(self.success.clone())))
    }
}

// --- pop_from_list -------------------------------------------------------------------

struct PopFromList {
    list_key: String,
    store_as: Option<String>,
    success: Arc<str>,
    empty: Arc<str>,
    /// Returned when `list_key` is not a list; `empty` when not given.
    error: Arc<str>,
}

pub(super) fn build_pop(p: &mut Params<'_>) -> Option<Built> {
    let list_key = key_param(p, "list_key", Some(DEFAULT_LIST_KEY));
    let store_as = if p.spec().params.contains_key("store_as") {
        Some(key_param(p, "store_as", None)?)
    } else {
        p.raw("store_as");
        None
    };
    let success = p.event("success", Some("item_popped"))?;
    let empty = p.event("empty", Some("list_empty"))?;
    let error = p.event("error", None);
    let mut emits = vec![success.to_string(), empty.to_string()];
    if let Some(e) = &error {
        emits.push(e.to_string());
    }
    emits.dedup();
    Some(Built {
        emits,
        action: Arc::new(PopFromList {
            list_key: list_key?,
            store_as,
            error: error.unwrap_or_else(|| empty.clone()),
            success,
            empty,
        }),
        waits: false,
    })
}

impl Action for PopFromList {
    fn run(&self, cx: &mut ActionCx<'_>) -> Step {
        let item = match cx.context.get_mut(&self.list_key) {
            None | Some(Json::Null) => None,
            Some(Json::Array(list)) if list.is_empty() => None,
            Some(Json::Array(list)) => Some((list.remove(0), list.len())),
            Some(other) => {
                let msg = not_a_list("pop_from_list", &self.list_key, other);
                return Step::Done(Outcome::error(
                    "pop_from_list",
                    msg,
                    Some(self.error.clone()),
                ));
            }
        };
        let Some((item, remaining)) = item else {
            tracing::debug!(
                target: "turnstile::action",
                machine = cx.machine,
                list = %self.list_key,
                "the list is empty"
            );
            return Step::Done(Outcome::ok(Some(self.empty.clone())));
        };
        tracing::debug!(
            target: "turnstile::action",
            machine = cx.machine,
            list = %self.list_key,
            remaining,
            "popped an item from the list"
        );
        if let Some(k) = &self.store_as {
            cx.context.insert(k.clone(), item);
        }
        Step::Done(Outcome::ok(Some(self.success.clone())))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;

    use serde_json::{json, Map};

    use super::*;
    use crate::actions::{ActionRegistry, Status};
    use crate::config::model::{ActionSpec, Located};
    use crate::config::{self, yaml::Loc};
    use crate::runtime::event::Event;
    use crate::runtime::router::Router;

    fn spec(kind: &str, params: Json) -> ActionSpec {
        let Json::Object(params) = params else {
            panic!("params must be a mapping")
        };
        ActionSpec {
            kind: Located {
                value: kind.to_owned(),
                loc: Loc::default(),
            },
            params,
            param_locs: HashMap::new(),
            description: None,
            loc: Loc::default(),
        }
    }

    /// Builds an action; returns it with the error and warning messages.
    fn build(kind: &str, params: Json) -> (Option<Built>, Vec<String>, Vec<String>) {
        let s = spec(kind, params);
        let mut p = Params::new(&s);
        let built = match kind {
            "add_to_list" => build_add(&mut p),
            _ => build_pop(&mut p),
        };
        let (issues, _) = p.finish();
        let (errors, warnings): (Vec<_>, Vec<_>) = issues.into_iter().partition(|i| i.is_error);
        (
            built,
            errors.into_iter().map(|i| i.message).collect(),
            warnings
                .into_iter()
                .map(|i| format!("{} ({})", i.message, i.hint.unwrap_or_default()))
                .collect(),
        )
    }

    fn ok(kind: &str, params: Json) -> Built {
        let (b, errors, warnings) = build(kind, params);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(warnings.is_empty(), "{warnings:?}");
        b.unwrap()
    }

    /// Runs a quick action against `ctx`.
    fn run(b: &Built, ctx: &mut Map<String, Json>) -> Outcome {
        run_with(b, ctx, &Event::new("start"))
    }

    fn run_with(b: &Built, ctx: &mut Map<String, Json>, ev: &Event) -> Outcome {
        let router = Router::new();
        let mut cx = ActionCx {
            machine: "m",
            state: "s",
            context: ctx,
            event: ev,
            router: &router,
            trace: None,
        };
        match b.action.run(&mut cx) {
            Step::Done(o) => o,
            Step::Wait(_) => panic!("list actions never wait"),
        }
    }

    fn ctx(v: Json) -> Map<String, Json> {
        match v {
            Json::Object(m) => m,
            _ => panic!("context must be a mapping"),
        }
    }

    fn event(o: &Outcome) -> &str {
        o.event.as_deref().unwrap()
    }

    #[test]
    fn add_creates_the_list_then_appends() {
        let b = ok("add_to_list", json!({"list_key": "done", "value": "a"}));
        let mut c = Map::new();
        let o = run(&b, &mut c);
        assert_eq!(o.status, Status::Ok);
        assert_eq!(event(&o), "success");
        run(&b, &mut c);
        assert_eq!(c["done"], json!(["a", "a"]));
        assert!(!b.waits);
        assert_eq!(b.emits, ["success", "error"]);
    }

    #[test]
    fn add_defaults_to_items_and_treats_null_as_missing() {
        let b = ok("add_to_list", json!({"value": 1, "success": "added"}));
        let mut c = ctx(json!({"items": null}));
        let o = run(&b, &mut c);
        assert_eq!(event(&o), "added");
        assert_eq!(c["items"], json!([1]));
    }

    #[test]
    fn add_interpolates_and_keeps_the_type_of_a_single_placeholder() {
        let b = ok("add_to_list", json!({"list_key": "seen", "value": "{job}"}));
        let text = ok(
            "add_to_list",
            json!({"list_key": "seen", "value": "job {job.id} of {payload.who}"}),
        );
        let nested = ok(
            "add_to_list",
            json!({"list_key": "seen", "value": {"id": "{job.id}", "n": 2}}),
        );
        let mut c = ctx(json!({"job": {"id": 7}, "seen": ["x"]}));
        run(&b, &mut c);
        let ev = Event::new("go").with_payload(json!({"who": "bob"}));
        run_with(&text, &mut c, &ev);
        run(&nested, &mut c);
        assert_eq!(
            c["seen"],
            json!(["x", {"id": 7}, "job 7 of bob", {"id": 7, "n": 2}])
        );
    }

    #[test]
    fn add_keeps_unknown_placeholders_as_written() {
        let b = ok("add_to_list", json!({"value": "{nope}"}));
        let mut c = Map::new();
        run(&b, &mut c);
        assert_eq!(c["items"], json!(["{nope}"]));
    }

    #[test]
    fn add_to_a_non_list_is_an_error_not_a_panic() {
        let b = ok("add_to_list", json!({"list_key": "n", "value": 1}));
        for bad in [json!(3), json!("abc"), json!({"a": 1}), json!(true)] {
            let mut c = ctx(json!({"n": bad.clone()}));
            let o = run(&b, &mut c);
            let Status::Error(msg) = &o.status else {
                panic!("expected an error, got {:?}", o.status)
            };
            assert!(msg.contains("`n`") && msg.contains("not a list"), "{msg}");
            assert_eq!(event(&o), "error");
            assert_eq!(c["n"], bad, "the value is left alone");
            assert!(o
                .context
                .iter()
                .any(|(k, v)| k == "last_error" && v.as_str() == Some(msg.as_str())));
        }
        let b = ok(
            "add_to_list",
            json!({"list_key": "n", "value": 1, "error": "oops"}),
        );
        let o = run(&b, &mut ctx(json!({"n": 1})));
        assert_eq!(event(&o), "oops");
    }

    #[test]
    fn add_parameter_errors() {
        let (b, errors, _) = build("add_to_list", json!({"list_key": "x"}));
        assert!(b.is_none());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("missing parameter `value`"));

        let (b, errors, _) = build("add_to_list", json!({"list_key": "", "value": 1}));
        assert!(b.is_none());
        assert!(errors[0].contains("must not be empty"), "{errors:?}");

        let (b, errors, _) = build("add_to_list", json!({"list_key": [1], "value": 1}));
        assert!(b.is_none());
        assert!(errors[0].contains("must be a string"), "{errors:?}");

        let (b, _, warnings) = build("add_to_list", json!({"value": 1, "list": "x"}));
        assert!(b.is_some());
        assert!(
            warnings[0].contains("unknown parameter `list`"),
            "{warnings:?}"
        );

        // `value: null` is a value.
        let b = ok("add_to_list", json!({"value": null}));
        let mut c = Map::new();
        run(&b, &mut c);
        assert_eq!(c["items"], json!([null]));
    }

    #[test]
    fn pop_takes_items_in_order_then_reports_empty() {
        let b = ok(
            "pop_from_list",
            json!({"list_key": "q", "store_as": "cur", "success": "has_job", "empty": "done"}),
        );
        assert_eq!(b.emits, ["has_job", "done"]);
        let mut c = ctx(json!({"q": [1, {"id": "b"}]}));
        let o = run(&b, &mut c);
        assert_eq!((o.status.clone(), event(&o)), (Status::Ok, "has_job"));
        assert_eq!(c["cur"], json!(1));
        assert_eq!(c["q"], json!([{"id": "b"}]));
        run(&b, &mut c);
        assert_eq!(c["cur"], json!({"id": "b"}));
        assert_eq!(c["q"], json!([]));
        let o = run(&b, &mut c);
        assert_eq!((o.status.clone(), event(&o)), (Status::Ok, "done"));
        assert_eq!(c["cur"], json!({"id": "b"}), "store_as is left as it was");
    }

    #[test]
    fn pop_defaults() {
        let b = ok("pop_from_list", json!({}));
        assert_eq!(b.emits, ["item_popped", "list_empty"]);
        let mut c = ctx(json!({"items": ["a"]}));
        assert_eq!(event(&run(&b, &mut c)), "item_popped");
        assert_eq!(
            c,
            ctx(json!({"items": []})),
            "nothing stored without store_as"
        );
        assert_eq!(event(&run(&b, &mut c)), "list_empty");
        // Missing and null lists are empty.
        assert_eq!(event(&run(&b, &mut Map::new())), "list_empty");
        assert_eq!(
            event(&run(&b, &mut ctx(json!({"items": null})))),
            "list_empty"
        );
    }

    #[test]
    fn pop_from_a_non_list_is_an_error_not_a_panic() {
        let b = ok("pop_from_list", json!({"list_key": "q", "empty": "none"}));
        for bad in [json!("abc"), json!(5), json!({"a": [1]}), json!(false)] {
            let mut c = ctx(json!({"q": bad.clone()}));
            let o = run(&b, &mut c);
            let Status::Error(msg) = &o.status else {
                panic!("expected an error, got {:?}", o.status)
            };
            assert!(msg.contains("`q`") && msg.contains("not a list"), "{msg}");
            // As statemachine-engine: the empty event, unless `error` is given.
            assert_eq!(event(&o), "none");
            assert_eq!(c["q"], bad);
        }
        let b = ok("pop_from_list", json!({"list_key": "q", "error": "broken"}));
        assert_eq!(b.emits, ["item_popped", "list_empty", "broken"]);
        let o = run(&b, &mut ctx(json!({"q": "x"})));
        assert!(matches!(o.status, Status::Error(_)));
        assert_eq!(event(&o), "broken");
    }

    #[test]
    fn pop_parameter_errors() {
        let (b, errors, _) = build("pop_from_list", json!({"store_as": ""}));
        assert!(b.is_none());
        assert!(
            errors[0].contains("`store_as` must not be empty"),
            "{errors:?}"
        );
        let (b, errors, _) = build("pop_from_list", json!({"list_key": {"a": 1}}));
        assert!(b.is_none());
        assert!(errors[0].contains("must be a string"), "{errors:?}");
        let (_, _, warnings) = build("pop_from_list", json!({"store": "x"}));
        assert!(
            warnings[0].contains("did you mean `store_as`"),
            "{warnings:?}"
        );
    }

    #[test]
    fn registered_and_validated_in_a_config() {
        let yaml = r#"
initial_state: start
metadata: {machine_name: lists}
context:
  todo: [a, b]
transitions:
  - {from: start, to: next, event: added}
  - {from: next, to: next, event: timeout(1)}
  - {from: next, to: work, event: got}
  - {from: work, to: next, event: again}
  - {from: next, to: end, event: none}
actions:
  start:
    - type: add_to_list
      list_key: todo
      value: "{machine_name}"
      success: added
  next:
    - type: pop_from_list
      list_key: todo
      store_as: item
      success: got
      empty: none
  work:
    - {type: sleep, duration: 0.01, success: again}
"#;
        let loaded = config::load_str(yaml, None, &ActionRegistry::with_builtins());
        assert!(loaded.diagnostics.is_empty(), "{:#?}", loaded.diagnostics);
        assert!(loaded.def.is_some());

        // An event the action returns that no transition accepts is reported where written.
        let bad = yaml.replace("empty: none", "empty: nothing_left");
        let loaded = config::load_str(&bad, None, &ActionRegistry::with_builtins());
        let d: Vec<_> = loaded.warnings().collect();
        assert_eq!(d.len(), 1, "{d:#?}");
        assert_eq!(d[0].code, "unhandled-event");
        assert!(d[0].message.contains("nothing_left"));
    }

    #[tokio::test]
    async fn a_machine_drains_its_list() {
        let yaml = r#"
initial_state: next
metadata: {machine_name: drain}
context:
  todo: [1, 2, 3]
transitions:
  - {from: next, to: work, event: got}
  - {from: work, to: next, event: added}
  - {from: next, to: end, event: none}
  - {from: end, to: next, event: again}
actions:
  next:
    - {type: pop_from_list, list_key: todo, store_as: item, success: got, empty: none}
  work:
    - {type: add_to_list, list_key: done, value: "{item}", success: added}
"#;
        let loaded = config::load_str(yaml, None, &ActionRegistry::with_builtins());
        assert!(loaded.diagnostics.is_empty(), "{:#?}", loaded.diagnostics);
        let engine = crate::Engine::builder().build();
        engine.spawn(loaded.def.unwrap()).unwrap();
        assert!(
            engine
                .wait_for_state("drain", "end", std::time::Duration::from_secs(10))
                .await
        );
        let snap = engine.snapshot("drain").await.unwrap();
        assert_eq!(snap.context["done"], json!([1, 2, 3]));
        assert_eq!(snap.context["todo"], json!([]));
        assert_eq!(snap.context["item"], json!(3));
        engine.shutdown();
        engine.join().await;
    }
}

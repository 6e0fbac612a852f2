//! `set_context`: stores a value in the machine context and returns `success`.

use std::sync::Arc;

use crate::actions::{Action, ActionCx, Built, Outcome, Params, Step};
use crate::runtime::template::{JsonTemplate, Template};

struct SetContext {
    key: Template,
    value: JsonTemplate,
    success: Arc<str>,
}

pub(super) fn build(p: &mut Params<'_>) -> Option<Built> {
    let key = p.required_string("key", "my_key");
    let has_value = p.spec().params.contains_key("value");
    let value = p.json_template("value");
    if !has_value {
        p.error(
            "value",
            "missing parameter `value`".into(),
            Some("add `value: ...` (null is allowed)".into()),
        );
    }
    let success = p.event("success", Some("success"))?;
    let key = match Template::parse(&key?) {
        Ok(t) => t,
        Err(e) => {
            p.error("key", e, None);
            return None;
        }
    };
    Some(Built {
        emits: vec![success.to_string()],
        action: Arc::new(SetContext {
            key,
            value: value.unwrap_or(JsonTemplate::Plain(serde_json::Value::Null)),
            success,
        }),
        waits: false,
    })
}

impl Action for SetContext {
    fn run(&self, cx: &mut ActionCx<'_>) -> Step {
        let scope = cx.scope();
        let value = self.value.render(&scope);
        let key = self.key.render_string(&scope).into_owned();
        cx.context.insert(key, value);
        Step::Done(Outcome::ok(Some(self.success.clone())))
    }
}

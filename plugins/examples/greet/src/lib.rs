//! Example Turnstile plugin: `greet`, the custom action of statemachine-engine's
//! `custom_actions` example, ported to Rust.
//!
//! ```yaml
//! - type: greet
//!   params:
//!     success: greeted     # event to return (default `success`)
//!     name: "{user}"       # optional; default: the event payload's `name`, else `World`
//! ```
//!
//! Logs `Hello, NAME! 👋`, sets `greeting` in the context and returns `success`.

use turnstile_plugin::{export_plugin, Call, Manifest, Plugin, PluginError, Reply};

/// The plugin: no state.
#[derive(Default)]
pub struct Greet;

impl Plugin for Greet {
    fn manifest(&self) -> Manifest {
        Manifest::new("greet", env!("CARGO_PKG_VERSION")).action_with_params("greet", &["name"])
    }

    fn invoke(&self, action: &str, call: &Call) -> Result<Reply, PluginError> {
        if action != "greet" {
            return Err(PluginError::new(
                "unknown_action",
                format!("the greet plugin has no action `{action}`"),
            ));
        }
        let name = call
            .param_str("name")
            .or_else(|| call.payload_str("name"))
            .unwrap_or("World");
        Ok(Reply::event(call.success())
            .set("greeting", format!("Hello, {name}!"))
            .log(format!("Hello, {name}! 👋")))
    }
}

export_plugin!(Greet);

#[cfg(test)]
mod tests {
    use super::*;
    use turnstile_plugin::serde_json::{json, Value as Json};

    fn call(params: Json, payload: Json) -> Call {
        Call {
            params: params.as_object().cloned().unwrap_or_default(),
            context: json!({"event_data": {"payload": payload}})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        }
    }

    #[test]
    fn greets_the_payload_name_or_the_world() {
        let r = Greet
            .invoke(
                "greet",
                &call(json!({"success": "greeted"}), json!({"name": "Alice"})),
            )
            .unwrap();
        assert_eq!(
            r.to_json(),
            json!({"event": "greeted", "context": {"greeting": "Hello, Alice!"}, "log": "Hello, Alice! 👋"})
        );
        let r = Greet.invoke("greet", &call(json!({}), json!({}))).unwrap();
        assert_eq!(r.to_json()["event"], "success");
        assert_eq!(r.to_json()["context"]["greeting"], "Hello, World!");
    }
}

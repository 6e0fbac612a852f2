//! A Turnstile plugin that misbehaves on purpose, for the host's tests: `panic` panics,
//! `block` blocks for `ms` milliseconds, `echo` returns its parameters and context, and
//! `fail` returns an error result. Not an example to follow.

use std::time::Duration;

use turnstile_plugin::serde_json::Value as Json;
use turnstile_plugin::{export_plugin, Call, Manifest, Plugin, PluginError, Reply};

/// The plugin.
#[derive(Default)]
pub struct Faulty;

impl Plugin for Faulty {
    fn manifest(&self) -> Manifest {
        Manifest::new("faulty", env!("CARGO_PKG_VERSION"))
            .action("panic")
            .action_with_params("block", &["ms"])
            .action("echo")
            .action_with_params("fail", &["kind", "event"])
    }

    fn invoke(&self, action: &str, call: &Call) -> Result<Reply, PluginError> {
        match action {
            "panic" => panic!("deliberate panic in the faulty plugin"),
            "block" => {
                let ms = call.param_f64("ms").unwrap_or(1000.0).max(0.0);
                std::thread::sleep(Duration::from_secs_f64(ms / 1000.0));
                Ok(Reply::event(call.success()).set("slept_ms", ms))
            }
            "echo" => Ok(Reply::event(call.success())
                .set("echo_params", Json::Object(call.params.clone()))
                .set(
                    "echo_context_keys",
                    call.context.keys().cloned().collect::<Vec<_>>(),
                )),
            "fail" => {
                let e =
                    PluginError::new(call.param_str("kind").unwrap_or("failed"), "asked to fail")
                        .set("failed_once", true);
                Err(match call.param_str("event") {
                    Some(ev) => e.with_event(ev),
                    None => e,
                })
            }
            other => Err(PluginError::new("unknown_action", other)),
        }
    }
}

export_plugin!(Faulty);

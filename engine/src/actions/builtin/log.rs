//! `log`: writes a message to the log.
//!
//! The message is written as logs show data: a placeholder that reads a sensitive field
//! (`{payload.api_token}`) shows `[redacted]` ([`crate::redact`]).

use std::sync::Arc;

use crate::actions::{Action, ActionCx, Built, Outcome, Params, Step};
use crate::runtime::template::Template;

#[derive(Debug, Clone, Copy)]
enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

struct Log {
    message: Template,
    level: Level,
}

pub(super) fn build(p: &mut Params<'_>) -> Option<Built> {
    let message = p.template("message").unwrap_or_else(|| {
        if !p.spec().params.contains_key("message") {
            p.error(
                "message",
                "missing parameter `message`".into(),
                Some("add `message: \"...\"`".into()),
            );
        }
        Template::literal("")
    });
    let level = match p.string("level").as_deref().map(str::to_ascii_lowercase) {
        None => Level::Info,
        Some(l) => match l.as_str() {
            "debug" | "trace" => Level::Debug,
            "info" | "success" | "notice" => Level::Info,
            "warning" | "warn" => Level::Warn,
            "error" | "critical" | "fatal" | "exception" => Level::Error,
            other => {
                p.warn(
                    "level",
                    format!("unknown level `{other}`, using info"),
                    Some("use debug, info, warning or error".into()),
                );
                Level::Info
            }
        },
    };
    Some(Built {
        action: Arc::new(Log { message, level }),
        emits: Vec::new(),
        waits: false,
    })
}

impl Action for Log {
    fn run(&self, cx: &mut ActionCx<'_>) -> Step {
        let scope = cx.scope();
        let msg = self.message.render_shown(&scope, &crate::redact::global());
        let (machine, state) = (cx.machine, cx.state);
        match self.level {
            Level::Debug => tracing::debug!(target: "turnstile::log", machine, state, "{msg}"),
            Level::Info => tracing::info!(target: "turnstile::log", machine, state, "{msg}"),
            Level::Warn => tracing::warn!(target: "turnstile::log", machine, state, "{msg}"),
            Level::Error => tracing::error!(target: "turnstile::log", machine, state, "{msg}"),
        }
        Step::Done(Outcome::ok(None))
    }
}

//! `send_event`: delivers an event to another machine: of this engine, or, when the engine
//! is bridged to a shared store ([`crate::runtime::bridge::EventBridge`]), of another process that
//! runs it (through the store's event table; the success event once the row is written,
//! before the machine takes its next event, so sends to one target keep their order).
//! A name no live process runs is the error event (`UnknownTarget`).

use std::sync::Arc;

use serde_json::Value as Json;

use crate::actions::{Action, ActionCx, Built, Outcome, Params, Step};
use crate::error_kind::ErrorKind;
use crate::runtime::event::Event;
use crate::runtime::router::{DeliverError, ForwardError};
use crate::runtime::template::{lookup_path, JsonTemplate, Template};

struct SendEvent {
    target: Template,
    event_type: Template,
    payload: Option<JsonTemplate>,
    job_id: Option<Template>,
    success: Option<Arc<str>>,
    error: Arc<str>,
}

pub(super) fn build(p: &mut Params<'_>) -> Option<Built> {
    let target = target(p);
    let event_type = p.template("event_type");
    if event_type.is_none() && !p.spec().params.contains_key("event_type") {
        p.error(
            "event_type",
            "missing parameter `event_type`".into(),
            Some("add `event_type: <event name>`".into()),
        );
    }
    let payload = p.json_template("payload");
    let job_id = p.template("job_id");
    let fire_and_forget = p.flag("fire_and_forget", false);
    let success = p.event("success", Some("event_sent"));
    let error = p.event("error", Some("error"))?;
    let success = if fire_and_forget { None } else { success };
    Some(Built {
        emits: success
            .iter()
            .map(|s| s.to_string())
            .chain([error.to_string()])
            .collect(),
        action: Arc::new(SendEvent {
            target: target?,
            event_type: event_type?,
            payload,
            job_id,
            success,
            error,
        }),
        waits: false,
    })
}

/// `target_machine`, or `target` as statemachine-engine's README writes it (an alias:
/// one of the two, not both).
fn target(p: &mut Params<'_>) -> Option<Template> {
    let has = |k: &str| p.spec().params.contains_key(k);
    match (has("target_machine"), has("target")) {
        (true, true) => {
            p.raw("target");
            p.raw("target_machine");
            p.error(
                "target",
                "both `target_machine` and `target` are given".into(),
                Some("`target` is another name for `target_machine`: keep one".into()),
            );
            None
        }
        (false, true) => p.template("target"),
        (true, false) => p.template("target_machine"),
        (false, false) => {
            p.error(
                "target_machine",
                "missing parameter `target_machine`".into(),
                Some("add `target_machine: <machine name>` (or its alias `target:`)".into()),
            );
            None
        }
    }
}

impl Action for SendEvent {
    fn run(&self, cx: &mut ActionCx<'_>) -> Step {
        let scope = cx.scope();
        let target = self.target.render_string(&scope).into_owned();
        let name = self.event_type.render_string(&scope).into_owned();
        let mut ev = Event::new(name);
        if let Some(p) = &self.payload {
            ev.payload = Some(Arc::new(p.render(&scope)));
        }
        // As statemachine-engine: the job id is the current job's, unless given.
        ev.job_id = match &self.job_id {
            Some(t) => Some(t.render_string(&scope).into_owned()),
            None => cx
                .context
                .get("current_job")
                .and_then(|j| lookup_path(j, &["id".to_owned()]))
                .or_else(|| cx.context.get("id"))
                .and_then(|v| match v {
                    Json::String(s) => Some(s.clone()),
                    Json::Number(n) => Some(n.to_string()),
                    _ => None,
                }),
        };
        ev.traceparent = cx.trace;
        let fail =
            |msg: String, error: &Arc<str>| Outcome::error("send_event", msg, Some(error.clone()));
        match cx.router.try_deliver(&target, ev) {
            Ok(()) => Step::Done(Outcome::ok(self.success.clone())),
            Err(DeliverError::Full(ev, sender)) => {
                let (success, error) = (self.success.clone(), self.error.clone());
                Step::Wait(Box::pin(async move {
                    match crate::runtime::router::send_waiting(&*sender, ev).await {
                        Ok(()) => Outcome::ok(success),
                        Err(_) => fail(format!("machine `{target}` has stopped"), &error),
                    }
                }))
            }
            Err(DeliverError::Closed) => {
                Step::Done(fail(format!("machine `{target}` has stopped"), &self.error))
            }
            Err(DeliverError::Unknown(ev)) => match cx.router.remote() {
                // Maybe another process sharing the store runs it. The send completes
                // before the machine takes its next event, as a local one does: a
                // machine's sends to one target keep their order.
                Some(remote) => {
                    let sent =
                        crate::store::in_place(|| remote.forward(Some(cx.machine), &target, &ev));
                    match sent {
                        Ok(_) => Step::Done(Outcome::ok(self.success.clone())),
                        Err(e @ ForwardError::Unknown(_)) => Step::Done(
                            fail(e.to_string(), &self.error).with_kind(ErrorKind::UnknownTarget),
                        ),
                        Err(e) => Step::Done(fail(e.to_string(), &self.error)),
                    }
                }
                None => Step::Done(
                    fail(format!("no machine named `{target}`"), &self.error)
                        .with_kind(ErrorKind::UnknownTarget),
                ),
            },
        }
    }
}

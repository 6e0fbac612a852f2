//! `clear_events`: marks the pending events of `event_types` for `target_machine` processed
//! in the state store and returns `events_cleared`, or `no_events_to_clear` when there were
//! none (or no target or types were given: then the store is not asked). As in
//! statemachine-engine, a `success:` event, when set, is returned for both outcomes.

use std::sync::Arc;

use super::{blocking, no_store, store_error, string_list, JobsSlot};
use crate::actions::{Action, ActionCx, Built, Outcome, Params, Step};
use crate::runtime::template::Template;

struct ClearEvents {
    slot: JobsSlot,
    target: Option<Template>,
    types: Vec<String>,
    cleared: Arc<str>,
    none: Arc<str>,
    error: Arc<str>,
}

pub(super) fn build(slot: &JobsSlot, p: &mut Params<'_>) -> Option<Built> {
    slot.mark_used();
    let types = string_list(p, "event_types");
    let target = p.template("target_machine");
    // statemachine-engine returns `success:` for both outcomes when it is set.
    let success = p.event("success", None);
    let cleared = success.clone().unwrap_or_else(|| "events_cleared".into());
    let none = success.unwrap_or_else(|| "no_events_to_clear".into());
    let error = p.event("error", Some("error"))?;
    Some(Built {
        emits: vec![cleared.to_string(), none.to_string()],
        action: Arc::new(ClearEvents {
            slot: slot.clone(),
            target,
            types,
            cleared,
            none,
            error,
        }),
        waits: false,
    })
}

impl Action for ClearEvents {
    fn run(&self, cx: &mut ActionCx<'_>) -> Step {
        let Some(store) = self.slot.state() else {
            return no_store("clear_events", &self.error);
        };
        let target = match &self.target {
            Some(t) => t.render_string(&cx.scope()).into_owned(),
            None => String::new(),
        };
        if target.is_empty() || self.types.is_empty() {
            return Step::Done(Outcome::ok(Some(self.none.clone())));
        }
        let types = self.types.clone();
        let (cleared, none, error) = (self.cleared.clone(), self.none.clone(), self.error.clone());
        Step::Wait(Box::pin(async move {
            match blocking(move || store.clear_events(&target, &types)).await {
                Ok(0) => Outcome::ok(Some(none)),
                Ok(_) => Outcome::ok(Some(cleared)),
                Err(e) => store_error("clear_events", &e, &error),
            }
        }))
    }
}

//! `check_machine_state`: reads the saved state of `target_machine` from the state store
//! and returns `in_expected_state` when it is one of `expected_states`,
//! `unexpected_state` (with `unexpected_machine_state` in the context) when it is another,
//! and `not_running` when the machine has no saved state or does not run.
//!
//! A machine counts as running when its process is alive: an idle machine saves nothing
//! for hours, so the age of its last save says nothing. Only a record without a pid falls
//! back to that age (at most `timeout_seconds`, default 60).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;

use super::{blocking, no_store, store_error, string_list, JobsSlot};
use crate::actions::{Action, ActionCx, Built, Outcome, Params, Step};
use crate::runtime::template::Template;

struct CheckMachineState {
    slot: JobsSlot,
    target: Template,
    expected: Vec<String>,
    max_age: Duration,
    error: Arc<str>,
}

pub(super) fn build(slot: &JobsSlot, p: &mut Params<'_>) -> Option<Built> {
    slot.mark_used();
    let target = p.template("target_machine").unwrap_or_else(|| {
        p.error(
            "target_machine",
            "missing parameter `target_machine`".into(),
            Some("add `target_machine: worker`".into()),
        );
        Template::literal("")
    });
    let expected = string_list(p, "expected_states");
    let max_age = p.seconds("timeout_seconds", Some(60.0))?;
    let error = p.event("error", Some("error"))?;
    Some(Built {
        emits: vec![
            "in_expected_state".into(),
            "unexpected_state".into(),
            "not_running".into(),
        ],
        action: Arc::new(CheckMachineState {
            slot: slot.clone(),
            target,
            expected,
            max_age,
            error,
        }),
        waits: false,
    })
}

impl Action for CheckMachineState {
    fn run(&self, cx: &mut ActionCx<'_>) -> Step {
        let Some(store) = self.slot.state() else {
            return no_store("check_machine_state", &self.error);
        };
        let target = self.target.render_string(&cx.scope()).into_owned();
        let expected = self.expected.clone();
        let max_age = i64::try_from(self.max_age.as_secs()).unwrap_or(i64::MAX);
        let error = self.error.clone();
        Step::Wait(Box::pin(async move {
            match blocking(move || store.load_state(&target)).await {
                Err(e) => store_error("check_machine_state", &e, &error),
                Ok(rec) => {
                    let now = crate::store::now_ms() / 1000;
                    // Running: its process is alive (an idle machine saves nothing for
                    // hours), or, without a pid, it saved its state recently.
                    let fresh = |r: &crate::store::MachineRecord| match r.pid {
                        Some(pid) if pid > 0 => {
                            std::path::Path::new(&format!("/proc/{pid}")).exists()
                        }
                        _ => r
                            .last_activity
                            .is_some_and(|t| now - t.as_ms() / 1000 <= max_age),
                    };
                    match rec {
                        Some(r) if r.current_state.is_some() && fresh(&r) => {
                            let state = r.current_state.unwrap_or_default();
                            if expected.contains(&state) {
                                Outcome::ok(Some("in_expected_state".into()))
                            } else {
                                let mut o = Outcome::ok(Some("unexpected_state".into()));
                                o.context =
                                    vec![("unexpected_machine_state".into(), Json::String(state))];
                                o
                            }
                        }
                        _ => Outcome::ok(Some("not_running".into())),
                    }
                }
            }
        }))
    }
}

//! The built-in actions.

mod bash;
pub mod jobs;
mod list;
mod log;
mod send_event;
mod set_context;
mod sleep;
mod start_fsm;

use std::sync::Arc;

use super::ActionRegistry;

/// Action types that statemachine-engine configs use and that other parts of Turnstile
/// provide (jobs, plugins); validation names them precisely when they are missing.
const ELSEWHERE: &[(&str, &str)] = &[(
    "check_events",
    "statemachine-engine has no such action either: remove it, events arrive by themselves",
)];

/// Registers every built-in action.
pub fn register(r: &mut ActionRegistry) {
    r.register("log", "builtin", Arc::new(log::build));
    r.register("bash", "builtin", Arc::new(bash::build));
    r.register("sleep", "builtin", Arc::new(sleep::build));
    r.register("set_context", "builtin", Arc::new(set_context::build));
    r.register("send_event", "builtin", Arc::new(send_event::build));
    r.register("start_fsm", "builtin", Arc::new(start_fsm::build));
    r.register("add_to_list", "builtin", Arc::new(list::build_add));
    r.register("pop_from_list", "builtin", Arc::new(list::build_pop));
    let slot = r.jobs().clone();
    jobs::register(r, &slot);
    for (kind, what) in ELSEWHERE {
        r.mark_unavailable(kind, what);
    }
}

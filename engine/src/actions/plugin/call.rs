//! Running a plugin action: each call on a blocking thread, with the action's timeout, and
//! the cap on calls still running past it.
//!
//! A thread cannot be stopped, so a call that runs past its timeout is reported as a
//! timeout and left to finish; its result is dropped. A plugin with
//! [`MAX_STUCK_CALLS`] such calls still running is refused new ones until they return, so
//! a hanging plugin cannot use up the blocking threads. Every failure becomes an error
//! outcome, never a panic of the engine.

use std::ffi::CString;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use crate::actions::{Action, ActionCx, Outcome, Status, Step};
use crate::observe::ErrorKind;

use super::action::PluginAction;
use super::{CallError, PluginReply, MAX_STUCK_CALLS};

/// A call's progress, shared by the waiting machine and the blocking thread.
const RUNNING: u8 = 0;
const FINISHED: u8 = 1;
const ABANDONED: u8 = 2;

impl Action for PluginAction {
    fn run(&self, cx: &mut ActionCx<'_>) -> Step {
        let scope = cx.scope();
        let params = self.params.render(&scope).to_string();
        let context = serde_json::to_string(&*cx.context).unwrap_or_else(|_| "{}".to_owned());
        let plugin = self.slot.current().manifest.name.clone();
        let fail = |kind: ErrorKind, msg: String, event: Arc<str>| {
            Outcome::error(&self.kind, format!("plugin `{plugin}`: {msg}"), Some(event))
                .with_kind(kind)
        };
        let (params, context) = match (CString::new(params), CString::new(context)) {
            (Ok(p), Ok(c)) => (p, c),
            (Err(e), _) | (_, Err(e)) => {
                return Step::Done(fail(
                    ErrorKind::Plugin,
                    CallError::BadInput(e.to_string()).to_string(),
                    self.error.clone(),
                ))
            }
        };
        let stuck = self.slot.stuck.load(Ordering::Relaxed);
        if stuck >= MAX_STUCK_CALLS {
            return Step::Done(fail(
                ErrorKind::Plugin,
                CallError::Stuck(stuck).to_string(),
                self.error.clone(),
            ));
        }
        let slot = self.slot.clone();
        let kind = self.kind.clone();
        let kind_c = self.kind_c.clone();
        let timeout = self.timeout;
        let (error, timeout_event) = (self.error.clone(), self.timeout_event.clone());
        let machine = cx.machine.to_owned();
        Step::Wait(Box::pin(async move {
            let progress = Arc::new(AtomicU8::new(RUNNING));
            let on_thread = (slot.clone(), progress.clone());
            let handle = tokio::task::spawn_blocking(move || {
                let (slot, progress) = on_thread;
                let r = slot.call(&kind_c, &params, &context);
                if progress.swap(FINISHED, Ordering::AcqRel) == ABANDONED {
                    slot.stuck.fetch_sub(1, Ordering::Relaxed);
                }
                r
            });
            let fail = |kind_: ErrorKind, msg: String, event: Arc<str>| {
                Outcome::error(&kind, format!("plugin `{plugin}`: {msg}"), Some(event))
                    .with_kind(kind_)
            };
            let result = match tokio::time::timeout(timeout, handle).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(CallError::Thread(e.to_string())),
                Err(_) => {
                    if progress.swap(ABANDONED, Ordering::AcqRel) == RUNNING {
                        slot.stuck.fetch_add(1, Ordering::Relaxed);
                    }
                    let msg = format!(
                        "action `{kind}` did not return within {} s (the call is left to finish on its thread and its result will be dropped)",
                        timeout.as_secs_f64()
                    );
                    let mut o = fail(ErrorKind::ActionTimeout, msg, timeout_event);
                    if let Status::Error(m) = &o.status {
                        o.status = Status::Timeout(m.clone());
                    }
                    return o;
                }
            };
            match result {
                Err(e) => fail(ErrorKind::Plugin, format!("action `{kind}` {e}"), error),
                Ok(reply) => {
                    if let Some(line) = &reply.log {
                        tracing::info!(target: "turnstile::plugin", machine = %machine, plugin = %plugin, action = %kind, "{line}");
                    }
                    let PluginReply {
                        event,
                        context,
                        log,
                        error: failure,
                    } = reply;
                    let mut o = match failure {
                        None => Outcome::ok(event.map(Arc::from)),
                        Some((etype, message)) => {
                            let ek = if etype == "panic" {
                                ErrorKind::Plugin
                            } else {
                                ErrorKind::Action
                            };
                            fail(
                                ek,
                                format!("{etype}: {message}"),
                                event.map_or(error, Arc::from),
                            )
                        }
                    };
                    o.context.extend(context);
                    o.output = log;
                    o
                }
            }
        }))
    }
}

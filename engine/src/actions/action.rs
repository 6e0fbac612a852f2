//! The action interface: what the runtime runs ([`Action`]), what it hands an action
//! ([`ActionCx`]) and what an action gives back ([`Step`], [`Outcome`]).
//!
//! Machine definitions hold actions, so this module depends on no part of the registry,
//! the built-in actions or the plugin host; [`super`] re-exports all of it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{Map, Value as Json};

use crate::error_kind::ErrorKind;
use crate::runtime::event::Event;
use crate::runtime::router::Router;
use crate::runtime::template::Scope;
use crate::runtime::trace::TraceContext;

/// What an action needs while it runs.
pub struct ActionCx<'a> {
    /// The machine's name.
    pub machine: &'a str,
    /// The state being entered (or left, for transition actions).
    pub state: &'a str,
    /// The machine's context; quick actions may change it directly.
    pub context: &'a mut Map<String, Json>,
    /// The event that caused this state entry.
    pub event: &'a Event,
    /// Delivery to other machines.
    pub router: &'a Router,
    /// The trace context events sent by this action should continue (the action's or the
    /// event's span, or the incoming `traceparent` when no observer opens spans).
    pub trace: Option<TraceContext>,
}

impl ActionCx<'_> {
    /// The scope placeholders are resolved in: the context, then `payload` (the current
    /// event's payload) and `event_type`.
    pub fn scope(&self) -> ActionScope<'_> {
        ActionScope {
            context: self.context,
            event: self.event,
        }
    }
}

/// Placeholder scope of a running action.
pub struct ActionScope<'a> {
    /// The machine context.
    pub context: &'a Map<String, Json>,
    /// The current event.
    pub event: &'a Event,
}

impl Scope for ActionScope<'_> {
    fn root(&self, name: &str) -> Option<&Json> {
        match self.context.get(name) {
            Some(v) => Some(v),
            None if name == "payload" => self.event.payload.as_deref(),
            None => None,
        }
    }
}

/// How an action ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Normal completion.
    Ok,
    /// Failure, with a message.
    Error(String),
    /// Ran out of time.
    Timeout(String),
}

/// The result of an action.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// How it ended.
    pub status: Status,
    /// The event to process next, if any.
    pub event: Option<Arc<str>>,
    /// Context changes to apply (for actions that ran as futures).
    pub context: Vec<(String, Json)>,
    /// Captured output for logs and traces (already truncated).
    pub output: Option<String>,
    /// The error kind to report for a failure (default: [`ErrorKind::Action`]).
    pub error_kind: Option<ErrorKind>,
    /// The job id the returned event carries (default: the current event's): a claimed
    /// job's id.
    pub job_id: Option<String>,
    /// The trace the returned event continues (default: the current one): the trace of
    /// whoever enqueued a claimed job.
    pub traceparent: Option<TraceContext>,
    /// A change of a job's status that the action made, reported to the observer
    /// (`job_claimed`, `job_completed`, `job_failed`).
    pub job: Option<Box<JobNote>>,
}

/// A job status change made by an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobNote {
    /// What happened.
    pub change: JobChange,
    /// The job's type (empty when the action does not know it).
    pub job_type: String,
    /// The job's id.
    pub job_id: String,
    /// For a claim answered before it was durable: fires if it does not commit. The
    /// machine keeps it while it holds the job and cancels the action waiting then (see
    /// [`Outcome::with_claim_loss`]).
    pub loss: Option<crate::store::claim_loss::ClaimLoss>,
}

/// What happened to a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobChange {
    /// Claimed by the machine.
    Claimed,
    /// Marked completed.
    Completed,
    /// Marked failed (retried later, or dead-lettered), with the message.
    Failed(String),
}

impl Outcome {
    /// Success, optionally returning an event.
    pub fn ok(event: Option<Arc<str>>) -> Self {
        Self {
            status: Status::Ok,
            event,
            context: Vec::new(),
            output: None,
            error_kind: None,
            job_id: None,
            traceparent: None,
            job: None,
        }
    }

    /// Failure: sets `last_error` and `last_error_action` in the context (as
    /// statemachine-engine does) and returns `event`.
    pub fn error(kind: &str, message: String, event: Option<Arc<str>>) -> Self {
        Self {
            context: vec![
                ("last_error".into(), Json::String(message.clone())),
                ("last_error_action".into(), Json::String(kind.to_owned())),
            ],
            status: Status::Error(message),
            event,
            output: None,
            error_kind: None,
            job_id: None,
            traceparent: None,
            job: None,
        }
    }

    /// Notes a job status change for the observer.
    #[must_use]
    pub fn with_job(mut self, change: JobChange, job_type: String, job_id: String) -> Self {
        self.job = Some(Box::new(JobNote {
            change,
            job_type,
            job_id,
            loss: None,
        }));
        self
    }

    /// Hands the machine the loss signal of the claim noted with [`Self::with_job`]: while
    /// the machine holds that job, the signal firing cancels its waiting action (finished as
    /// an error, its `error` event returned).
    #[must_use]
    pub fn with_claim_loss(mut self, loss: Option<crate::store::claim_loss::ClaimLoss>) -> Self {
        if let Some(j) = &mut self.job {
            j.loss = loss;
        }
        self
    }

    /// Sets the error kind reported for this failure.
    #[must_use]
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.error_kind = Some(kind);
        self
    }
}

/// A pending action.
pub type ActionFuture = Pin<Box<dyn Future<Output = Outcome> + Send + 'static>>;

/// What [`Action::run`] returns.
pub enum Step {
    /// Finished already.
    Done(Outcome),
    /// Finishes when the future does; dropped (cancelled) if an event interrupts it.
    Wait(ActionFuture),
}

/// An action instance, built from one YAML entry.
pub trait Action: Send + Sync + 'static {
    /// Runs the action once.
    fn run(&self, cx: &mut ActionCx<'_>) -> Step;

    /// True for the job actions that claim, complete or fail a job (`check_database_queue`,
    /// `claim_job`, `complete_job`, `fail_job`): starting one, the machine stops watching
    /// the claim of the job it held (the store answers for that job from then on: it
    /// refuses the completion of a lost claim, and a new claim replaces the old one).
    fn settles_jobs(&self) -> bool {
        false
    }

    /// The definition this action starts instances of (`start_fsm`), compiled with its
    /// config: an `Arc<MachineDef>`, typed as `Any` because this file cannot name
    /// `MachineDef` without an import cycle. The engine adds it to its definitions when it
    /// runs the config, so that `POST /machines` can start it before the action ran.
    fn starts(&self) -> Option<&(dyn std::any::Any + Send + Sync)> {
        None
    }
}

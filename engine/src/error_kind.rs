//! [`ErrorKind`], the closed set of error kinds the engine reports.
//!
//! Actions, stores and the runtime all name an error kind, and observers turn it into a
//! metric label. It lives apart from [`crate::observe`] so that naming a kind does not pull
//! in the observer's view of machines: this module depends on nothing else of the crate.

/// The closed set of error kinds: they become metric labels, so the set is fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// An action returned an error (non-zero exit, bad parameter at run time, ...).
    Action,
    /// An action ran past its time limit.
    ActionTimeout,
    /// A `{placeholder}` could not be used (e.g. a value cannot be passed to a command).
    Interpolation,
    /// `send_event` named a machine that does not exist.
    UnknownTarget,
    /// A machine's queue was full and an event could not be delivered.
    QueueFull,
    /// A state re-entered itself through its own entry actions too many times in a row.
    Livelock,
    /// A machine's current state was removed by a config reload.
    StateRemoved,
    /// A config file was rejected.
    Config,
    /// A plugin failed (load, ABI, bad result, panic, hang).
    Plugin,
    /// The job or state store failed.
    Store,
    /// A message from outside (socket, HTTP) could not be used.
    BadMessage,
}

impl ErrorKind {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Action => "action",
            ErrorKind::ActionTimeout => "action_timeout",
            ErrorKind::Interpolation => "interpolation",
            ErrorKind::UnknownTarget => "unknown_target",
            ErrorKind::QueueFull => "queue_full",
            ErrorKind::Livelock => "livelock",
            ErrorKind::StateRemoved => "state_removed",
            ErrorKind::Config => "config",
            ErrorKind::Plugin => "plugin",
            ErrorKind::Store => "store",
            ErrorKind::BadMessage => "bad_message",
        }
    }

    /// Every kind, for pre-registering metric series.
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::Action,
        ErrorKind::ActionTimeout,
        ErrorKind::Interpolation,
        ErrorKind::UnknownTarget,
        ErrorKind::QueueFull,
        ErrorKind::Livelock,
        ErrorKind::StateRemoved,
        ErrorKind::Config,
        ErrorKind::Plugin,
        ErrorKind::Store,
        ErrorKind::BadMessage,
    ];
}

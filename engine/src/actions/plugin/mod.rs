//! The plugin host: action types from shared libraries with a C ABI.
//!
//! A plugin exports four C functions (see `plugins/sdk/include/turnstile_plugin.h` and
//! `docs/plugins.md`). Loading one ([`PluginHost::load`], usually through
//! [`ActionRegistry::load_plugins`](crate::ActionRegistry::load_plugins)):
//!
//! 1. the file is read once and checked (`check.rs`: a complete ELF shared object for this
//!    machine, unchanged while it was read), so that a file cut short is refused instead of
//!    being mapped (which would be `SIGBUS`);
//! 2. what was checked is written to a private copy (a fresh 0700 directory) and the copy
//!    is opened, so that the original can be rebuilt or replaced while the engine runs; the
//!    copy and its directory are removed at once (the library stays mapped);
//! 3. `turnstile_plugin_abi_version()` is checked before anything else is called;
//! 4. the manifest is read and validated, and its action types are registered, so that
//!    configs using them validate.
//!
//! Each call runs on a blocking thread with the action's `timeout` (default 30 s). A call
//! that runs past it is reported as a timeout and its thread is left to finish (threads
//! cannot be stopped); a plugin with too many such calls still running is refused new
//! ones until they return. Every failure (a bad result, a panic, a hang) becomes an error
//! outcome: logged, counted (`errors_total`) and turned into the action's error event; the
//! engine keeps running.
//!
//! A library whose file changes is loaded again from a fresh copy and swapped in (checked
//! at most once per [`PluginHost::set_check_interval`], on the next call, or explicitly
//! with [`PluginHost::reload_changed`]). A new version that fails to load, or that drops
//! an action type the old one had, is refused and the old one keeps serving. Libraries are
//! never unloaded.
//!
//! The code is split by job, each file with its own module doc: `error.rs` (the errors),
//! `check.rs` (the check of a file before it is mapped), `copy.rs` (private copies and file
//! fingerprints), `library.rs` (one loaded copy: the FFI boundary and the only unsafe
//! code), `reply.rs` (reading a call's result), `slot.rs` (one library: the serving copy,
//! the change check and the hot swap), `host.rs` (the host and its registry of slots),
//! `action.rs` (the action factory and action) and `call.rs` (calls with timeouts and the
//! stuck-call cap). This file holds the public constants and types and re-exports the rest,
//! so paths such as `crate::actions::plugin::PluginHost` stay as they were.

mod action;
mod call;
mod check;
mod copy;
mod error;
mod host;
mod library;
mod reply;
mod slot;

use std::path::PathBuf;
use std::time::Duration;

pub(crate) use action::PluginFactory;
pub use error::{CallError, LoadError};
pub use host::PluginHost;
pub use library::ABI_VERSION;
pub use reply::PluginReply;
pub(crate) use slot::slot_actions;

/// Parameters the host itself reads from every plugin action (they are passed on too).
pub const HOST_PARAMS: &[&str] = &["timeout", "success", "error", "timeout_event"];

/// Default time limit of one call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How many calls of one plugin may still be running past their timeout before new calls
/// are refused.
pub const MAX_STUCK_CALLS: usize = 8;

/// File name extension of shared libraries on this platform.
pub const LIBRARY_EXTENSION: &str = std::env::consts::DLL_EXTENSION;

/// Largest library file loaded: far more than any plugin, and a bound on what a load reads
/// into memory.
pub const MAX_LIBRARY_BYTES: u64 = 1 << 30;

/// What a loaded plugin is, for listings and the `turnstile_plugin_info` metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// The manifest's name.
    pub name: String,
    /// The manifest's version (of the copy currently serving calls).
    pub version: String,
    /// The library file as named (canonical path).
    pub path: PathBuf,
    /// The private copy the current version was loaded from (removed once loaded: the
    /// library stays mapped).
    pub loaded_from: PathBuf,
    /// The action types it provides.
    pub actions: Vec<String>,
}

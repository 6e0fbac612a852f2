//! Why a plugin could not be loaded ([`LoadError`]) and why a call returned nothing usable
//! ([`CallError`]).
//!
//! Kept apart from the code that raises them: loading, copying, swapping, the FFI boundary
//! (`library.rs`) and the calls all return these, so they sit below all of those files.

use std::path::{Path, PathBuf};

use super::LIBRARY_EXTENSION;

/// Why a plugin could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// The path does not exist.
    #[error("plugin {}: no such file or directory", .path.display())]
    NotFound {
        /// The path.
        path: PathBuf,
    },
    /// Reading a directory or copying a file failed.
    #[error("plugin {}: {message}", .path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The file changed while it was being read (a copy or a build still writing it).
    #[error("plugin {}: the file changed while it was being read (still being written?); load it once it is complete", .path.display())]
    Changing {
        /// The file.
        path: PathBuf,
    },
    /// A directory holds no shared library.
    #[error("plugin directory {} holds no shared library (*.{LIBRARY_EXTENSION})", .path.display())]
    Empty {
        /// The directory.
        path: PathBuf,
    },
    /// The file is not a loadable shared library.
    #[error("plugin {}: not a loadable shared library: {message}", .path.display())]
    NotALibrary {
        /// The file.
        path: PathBuf,
        /// The loader's message.
        message: String,
    },
    /// A required function is not exported.
    #[error("plugin {}: missing symbol `{symbol}` (a Turnstile plugin exports turnstile_plugin_abi_version, _manifest, _invoke and _free; see docs/plugins.md): {message}", .path.display())]
    MissingSymbol {
        /// The file.
        path: PathBuf,
        /// The symbol.
        symbol: String,
        /// The loader's message.
        message: String,
    },
    /// The library speaks another ABI version.
    #[error("plugin {}: ABI version {found}, but this Turnstile speaks version {expected}: rebuild the plugin against a matching turnstile-plugin / turnstile_plugin.h", .path.display())]
    AbiMismatch {
        /// The file.
        path: PathBuf,
        /// What the library returned.
        found: u32,
        /// What the host speaks.
        expected: u32,
    },
    /// The manifest is unusable.
    #[error("plugin {}: bad manifest: {message}", .path.display())]
    BadManifest {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An action type is already provided by a built-in or another plugin.
    #[error("plugin {}: action type `{action}` is already provided by {other}; rename it in the plugin", .path.display())]
    Conflict {
        /// The file.
        path: PathBuf,
        /// The action type.
        action: String,
        /// Who provides it (`the built-in actions`, `plugin X (path)`).
        other: String,
    },
}

impl LoadError {
    /// The file or directory the error is about.
    pub fn path(&self) -> &Path {
        match self {
            LoadError::NotFound { path }
            | LoadError::Io { path, .. }
            | LoadError::Changing { path }
            | LoadError::Empty { path }
            | LoadError::NotALibrary { path, .. }
            | LoadError::MissingSymbol { path, .. }
            | LoadError::AbiMismatch { path, .. }
            | LoadError::BadManifest { path, .. }
            | LoadError::Conflict { path, .. } => path,
        }
    }
}

/// Why a call returned nothing usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No loaded plugin provides the action type.
    #[error("no loaded plugin provides action type `{0}`")]
    UnknownAction(String),
    /// `turnstile_plugin_invoke` returned a null pointer.
    #[error("returned a null pointer instead of a JSON result")]
    Null,
    /// The result is not UTF-8.
    #[error("returned text that is not UTF-8: {0}")]
    NotUtf8(String),
    /// The result is not JSON.
    #[error("returned text that is not JSON: {0}")]
    NotJson(String),
    /// The result is JSON of the wrong shape.
    #[error("returned JSON of the wrong shape: {0}")]
    BadShape(String),
    /// A parameter or context value could not be passed.
    #[error("cannot pass the call to the plugin: {0}")]
    BadInput(String),
    /// Too many calls are still running past their timeout.
    #[error(
        "{0} calls are still running past their timeout; new calls are refused until they return"
    )]
    Stuck(usize),
    /// The host thread running the call failed.
    #[error("the call's thread failed: {0}")]
    Thread(String),
}

//! Starting instances of a definition at run time: why a start is refused
//! ([`StartError`]) and the hook through which an action reaches the engine to start one
//! ([`Starter`], held by the [`Router`](super::router::Router) every action already sees).
//!
//! Its own file, apart from the engine and the instance registry, so that the router (which
//! the machines and actions import) can hold the hook without importing the engine.

use std::any::Any;
use std::sync::Arc;

use serde_json::{Map, Value as Json};

/// The longest instance name accepted (it appears in URLs, logs and span attributes).
pub const MAX_NAME_LEN: usize = 200;

/// Why an instance could not be started. Nothing changed: the engine goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// The engine has no definition of that name.
    #[error("no definition named `{0}`")]
    UnknownDefinition(String),
    /// A running machine (or a singleton's supervisor) has that name.
    #[error("a machine named `{0}` is already running")]
    NameTaken(String),
    /// The name is empty, too long or holds control characters.
    #[error(
        "`{0}` is not a usable machine name: 1 to {MAX_NAME_LEN} bytes, no control characters"
    )]
    BadName(String),
    /// The definition is a singleton: one process runs one copy of it, never instances.
    #[error("definition `{0}` is a singleton (`metadata.singleton: true`): it has no instances")]
    Singleton(String),
    /// Another file's definition already has that name in this engine.
    #[error("definition `{name}` is already loaded from {existing}, not from {wanted}")]
    DefinitionClash {
        /// The definition's name.
        name: String,
        /// The file the engine's definition came from.
        existing: String,
        /// The file asked for.
        wanted: String,
    },
    /// What was asked to start is not a definition (a bug of the caller).
    #[error("not a machine definition")]
    NotADefinition,
    /// The engine has stopped (or runs outside a Tokio runtime).
    #[error("the engine is not running")]
    NotRunning,
    /// With `--persist`: the store, where the name is taken across processes, failed.
    #[error("cannot take the name `{0}` in the store: {1}")]
    Store(String, String),
}

impl StartError {
    /// A refused name, checked before anything is registered.
    pub fn check_name(name: &str) -> Result<(), StartError> {
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
            return Err(StartError::BadName(
                name.chars().take(MAX_NAME_LEN).collect(),
            ));
        }
        Ok(())
    }
}

/// The engine as an action sees it to start instances (`start_fsm`). The engine installs
/// one in its router, holding the engine weakly (no ownership cycle).
pub trait Starter: Send + Sync {
    /// Starts an instance of the definition `seed` (an `Arc<MachineDef>`: typed as `Any`
    /// because this file, imported by the router and so by what definitions are made of,
    /// cannot name `MachineDef` without an import cycle) named `name` (a generated one
    /// when `None`) with `context` merged over the definition's. The engine runs the
    /// definition of that name it already has (a config machine's, or one an earlier start
    /// registered: the latest reload of it), else registers `seed` as a new definition.
    fn start(
        &self,
        seed: &(dyn Any + Send + Sync),
        name: Option<&str>,
        context: Map<String, Json>,
    ) -> Result<Arc<str>, StartError>;
}

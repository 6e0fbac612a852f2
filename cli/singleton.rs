//! `run`'s singleton machines (`--singleton NAME`, `metadata.singleton: true`): the names
//! are checked against the loaded machines before anything starts, a store is opened for
//! their leases, and the engine gets what it needs to supervise them
//! ([`turnstile_engine::runtime::singleton`]). Kept apart from `run.rs`, which only calls
//! these three functions.

use std::sync::Arc;
use std::time::Duration;

use turnstile_engine::runtime::singleton::Singletons;
use turnstile_engine::store::{Persister, StateStore, Store};
use turnstile_engine::MachineDef;

use crate::args::RunArgs;

/// Checks `--singleton`: every name must be a loaded machine (else a usage error, exit 2).
/// With any singleton, the store is opened (the default file when `--db` is not given, as
/// for the job actions). Returns whether there is one.
pub fn check(args: &mut RunArgs, defs: &[Arc<MachineDef>]) -> Result<bool, crate::UsageError> {
    for name in &args.singletons {
        if !defs.iter().any(|d| *d.name == **name) {
            let known: Vec<&str> = defs.iter().map(|d| &*d.name).collect();
            return Err(crate::UsageError(format!(
                "--singleton {name}: no machine of that name is loaded (machines: {})",
                known.join(", ")
            )));
        }
    }
    let any = !args.singletons.is_empty() || defs.iter().any(|d| d.singleton);
    if any && args.store.db.db.is_none() {
        args.store.db.db = Some(crate::db::DEFAULT_DB.to_owned());
    }
    Ok(any)
}

/// What the engine needs to run the singletons: the store, the persister of their states
/// (`--persist`'s when given: a singleton's state is always saved), the lease
/// (`--job-lease`).
pub fn config(
    args: &RunArgs,
    store: &Arc<dyn Store>,
    persist: Option<&Persister>,
) -> anyhow::Result<Singletons> {
    let lease = Duration::try_from_secs_f64(args.store.job_lease)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            crate::UsageError("--job-lease must be a positive number of seconds".into())
        })?;
    let persister = match persist {
        Some(p) => p.clone(),
        None => Persister::new(store.clone() as Arc<dyn StateStore>),
    };
    Ok(Singletons {
        store: store.clone(),
        persister,
        lease,
        names: args.singletons.clone(),
    })
}

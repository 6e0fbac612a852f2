//! Events across processes for `run` and `send-event --db`: the [`EventBridge`] that
//! `run` starts when a store is open (its machines registered, their events taken from
//! the store's event table, `send_event` to another process's machine written there),
//! and `send-event --db`, which writes one event into the table. Kept out of `run.rs` and
//! `jobs_cli.rs` so that each stays about its own command.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use turnstile_engine::instance::Instance;
use turnstile_engine::runtime::bridge::EventBridge;
use turnstile_engine::store::{NewEvent, Persister, Store};
use turnstile_engine::Engine;

use crate::db::DbArg;

/// How `run` bridges its machines to the store: the store, this process, the lease.
pub struct BridgeSetup {
    pub store: Arc<dyn Store>,
    pub instance: Instance,
    pub lease: Duration,
}

/// Starts the bridge for `machines` of `engine` (on the current runtime), before they
/// start; `singletons` are registered by the process that holds them, when it takes the
/// lease. A failure is logged and the machines run without it (events to and from other
/// processes fail).
pub fn start(
    setup: Option<BridgeSetup>,
    engine: &Engine,
    (machines, singletons): (&[Arc<str>], &[Arc<str>]),
    persist: Option<&Persister>,
) -> Option<EventBridge> {
    let s = setup?;
    let names = |v: &[Arc<str>]| v.iter().map(|m| m.to_string()).collect::<Vec<_>>();
    match EventBridge::start(
        s.store,
        engine,
        (s.instance.id(), s.instance.incarnation()),
        (names(machines), names(singletons)),
        s.lease,
        persist.cloned(),
    ) {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::error!(target: "turnstile::events", "cannot register the machines in the store ({e}): events from other processes do not reach them");
            None
        }
    }
}

/// With `--persist`: takes over from now on the instances other processes released at a
/// clean exit and, with a registered `--instance-id` (`chosen`: its heartbeat is what
/// keeps this process's instances its own), those of dead processes.
pub fn adopt(bridge: Option<&EventBridge>, persist: bool, chosen: bool) {
    if let Some(b) = bridge.filter(|_| persist) {
        b.adopt_instances(chosen);
    }
}

/// At a clean exit with `--persist`, once the machines stopped (`done`: all of them, and
/// their states saved): gives up this process's live instances, which another process
/// with their definition takes over (or the next one to start). Not done, they stay this
/// process's (they run again when it starts again with this id): never two runners.
/// Blocking.
pub fn release_instances(persist: &Persister, done: bool) {
    if !done {
        tracing::warn!(target: "turnstile::store", "machines still running or states not saved at exit: this process's instances are not released (they run again when it starts again with this instance id)");
        return;
    }
    match persist.store().release_instances() {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(target: "turnstile::store", instances = n, "instances released for another process to take over")
        }
        Err(e) => {
            tracing::warn!(target: "turnstile::store", "cannot release this process's instances ({e}): they run again when it starts again with this instance id")
        }
    }
}

/// Stops the bridge: the machines' registrations are deleted (other processes see them
/// gone at once).
pub async fn stop(bridge: Option<EventBridge>) {
    if let Some(b) = bridge {
        let _ = tokio::task::spawn_blocking(move || b.stop()).await;
    }
}

/// `turnstile send-event --db`: writes the event into the store's event table for the
/// process that runs `--target`. Exit 2 for bad input, 1 when no live process runs the
/// machine or the store fails.
pub fn send_through_store(
    args: crate::jobs_cli::SendEventArgs,
    db: String,
) -> anyhow::Result<ExitCode> {
    let payload = match args.payload.as_deref().map(serde_json::from_str) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(e)) => {
            eprintln!("error: --payload is not JSON: {e}");
            return Ok(ExitCode::from(crate::EXIT_INVALID));
        }
    };
    if let Err(e) = turnstile_engine::ingress::check_event_type(&args.event) {
        eprintln!("error: --type: {e}");
        return Ok(ExitCode::from(crate::EXIT_INVALID));
    }
    if let Some(t) = &args.traceparent {
        if let Err(e) = turnstile_engine::runtime::trace::TraceContext::parse(t) {
            eprintln!("error: --traceparent: {e}");
            return Ok(ExitCode::from(crate::EXIT_INVALID));
        }
    }
    let store = crate::db::open_existing(&DbArg {
        db: Some(db),
        db_sync: crate::db::DbSync::Full,
    })?;
    let stale = Duration::try_from_secs_f64(args.stale_after).map_err(|_| {
        crate::UsageError("--stale-after must be a positive number of seconds".into())
    })?;
    let hosts = store.machine_hosts(&args.target, stale)?;
    // An instance started at run time (with `--persist`): its owner, live or dead with a
    // saved state (the event waits for the process that takes it over).
    let owner = match hosts.first() {
        Some(h) => Some((h.instance_id.clone(), Some(h.host.clone()))),
        None => store
            .instance_owner(&args.target, stale)?
            .filter(|o| o.live || o.saved)
            .map(|o| (o.instance_id.unwrap_or_default(), None)),
    };
    let Some((instance_id, host)) = owner else {
        eprintln!(
            "error: no live process runs a machine named `{}` (none registered in the store with a heartbeat in the last {} s)",
            args.target,
            stale.as_secs_f64()
        );
        return Ok(ExitCode::from(1));
    };
    let id = store.send_event(&NewEvent {
        source: None,
        target: args.target.clone(),
        event_type: args.event,
        job_id: args.job_id,
        payload,
        traceparent: args.traceparent,
    })?;
    println!(
        "{}",
        serde_json::json!({
            "event_id": id,
            "target": args.target,
            "instance_id": instance_id,
            "host": host,
        })
    );
    Ok(ExitCode::SUCCESS)
}

//! Singleton machines: several processes run the same config, and exactly one of them
//! runs each singleton machine, holding its lease in the store
//! ([`crate::store::leases`]); the others stand by and take over from the persisted state
//! and context when the holder dies, freezes past its lease, or stops.
//!
//! Each singleton of an engine has a supervisor task ([`supervise`]) that loops:
//!
//! 1. **Standby.** Try to take the lease; while another process holds it, wait until it
//!    expires (by the store's clock) or the store says something changed
//!    ([`crate::store::JobStore::notify`]: a release wakes it at once).
//! 2. **Holder.** Fence the store's writes of the machine to the new epoch, restore the
//!    saved state and context, and run the machine on this task with a [`Tenure`]; a
//!    renewal task extends the lease every third of it.
//! 3. The machine stops: for a lost lease, back to 1; for a shutdown, a final state or a
//!    reload that removed it, the supervisor ends. Either way the saved state is flushed
//!    and the lease released (if still ours), so a standby takes over at once.
//!
//! Never two runners: the holder keeps a deadline on the monotonic clock, the instant
//! its last successful renewal (or the acquisition) was *sent* plus nine tenths of the
//! lease, which is never later than the store's expiry. Before each action the machine
//! checks it ([`Tenure::holds`]), and a machine waiting in an action or idle wakes at it
//! ([`Tenure::ended`]): a waiting action is interrupted (a command's process group is
//! killed) and the machine stops. A process frozen past its lease (SIGSTOP) finds the
//! deadline past when it resumes and stops before its next action; a renewal that finds
//! the epoch moved on ends the tenure too. What the stale copy still writes is refused by
//! the store (fencing).

use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::def::MachineDef;
use super::router::Remote;
use super::tenure::Tenure;
use crate::observe::StopReason;
use crate::store::{Acquired, Persister, Store};

/// A machine's task, ready to run: its stop reason when it ends.
pub(crate) type Run = std::pin::Pin<Box<dyn std::future::Future<Output = StopReason> + Send>>;

/// What the supervisor needs of the engine that hosts it (the engine implements it; a
/// trait, so that this file and the engine's do not import each other).
pub(crate) trait Host: Send + Sync + 'static {
    /// Cancelled when the engine shuts down.
    fn cancel_token(&self) -> CancellationToken;
    /// Registers a copy of `def` that runs while `tenure` holds (from `restored`, when
    /// given); its task is returned, not spawned.
    fn start_tenure(
        &self,
        def: Arc<MachineDef>,
        tenure: Arc<Tenure>,
        persister: Persister,
        restored: Option<crate::store::Restored>,
    ) -> Result<Run, String>;
    /// Removes the stopped copies of `name` from the engine's status (a copy that lost its
    /// lease: the process stands by).
    fn forget_stopped(&self, name: &str);
    /// The way to other processes (the event bridge), when one is attached: told when a
    /// tenure starts and ends, so that the holder receives the singleton's events.
    fn remote(&self) -> Option<Arc<dyn Remote>>;
}

/// What an engine needs to run singleton machines: the store holding the leases and the
/// saved states, and the lease time.
#[derive(Clone)]
pub struct Singletons {
    /// The store of the leases and states.
    pub store: Arc<dyn Store>,
    /// Saves the singletons' states (a singleton's state is always persisted: the process
    /// that takes over continues from it).
    pub persister: Persister,
    /// How long a lease lasts without renewal (renewed every third of it).
    pub lease: Duration,
    /// Machines run as singletons besides those whose config says `metadata.singleton:
    /// true` (`--singleton NAME`).
    pub names: Vec<String>,
}

impl std::fmt::Debug for Singletons {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Singletons")
            .field("lease", &self.lease)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl Singletons {
    /// Whether `def` runs as a singleton.
    pub fn covers(&self, def: &MachineDef) -> bool {
        def.singleton || self.names.iter().any(|n| **n == *def.name)
    }

    /// The lease holder name this process writes (the store's owner id).
    fn holder(&self) -> &str {
        self.store.owner()
    }
}

/// A singleton's role in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Another process (or none yet) runs it; this one waits to take over.
    Standby,
    /// This process runs it.
    Holder,
    /// This process no longer competes for it (shut down, final state, removed).
    Ended,
}

impl Role {
    /// `standby`, `holder`, `ended`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Standby => "standby",
            Role::Holder => "holder",
            Role::Ended => "ended",
        }
    }
}

/// A singleton of an engine as the engine's status shows it.
#[derive(Debug, Clone)]
pub struct SingletonStatus {
    /// The machine's name.
    pub name: Arc<str>,
    /// Its role here.
    pub role: Role,
    /// The epoch of this process's current or last tenure (0: never held here).
    pub epoch: i64,
    /// The definition it runs (or will run when it takes over).
    pub def: Arc<MachineDef>,
}

/// What the engine keeps of a supervised singleton.
pub(crate) struct Slot {
    pub(crate) name: Arc<str>,
    pub(crate) id: usize,
    role: AtomicU8,
    epoch: AtomicI64,
    /// The definition the next tenure runs (a reload on standby replaces it).
    pub(crate) def: std::sync::RwLock<Arc<MachineDef>>,
    /// Cancelled by a reload that removes the machine: the supervisor ends.
    pub(crate) removed: CancellationToken,
}

impl Slot {
    pub(crate) fn new(id: usize, def: Arc<MachineDef>) -> Self {
        Self {
            name: def.name.clone(),
            id,
            role: AtomicU8::new(Role::Standby as u8),
            epoch: AtomicI64::new(0),
            def: std::sync::RwLock::new(def),
            removed: CancellationToken::new(),
        }
    }

    fn set(&self, role: Role, epoch: i64) {
        self.role.store(role as u8, Ordering::Release);
        self.epoch.store(epoch, Ordering::Release);
    }

    pub(crate) fn role(&self) -> Role {
        match self.role.load(Ordering::Acquire) {
            x if x == Role::Holder as u8 => Role::Holder,
            x if x == Role::Ended as u8 => Role::Ended,
            _ => Role::Standby,
        }
    }

    pub(crate) fn status(&self) -> SingletonStatus {
        SingletonStatus {
            name: self.name.clone(),
            role: self.role(),
            epoch: self.epoch.load(Ordering::Acquire),
            def: self.current_def(),
        }
    }

    pub(crate) fn current_def(&self) -> Arc<MachineDef> {
        self.def.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Runs a blocking store call off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

/// Waits for the lease of `name` and takes it: the epoch and when the acquisition was
/// sent. `None` when the engine shuts down or the machine is removed first.
async fn standby(
    cfg: &Singletons,
    slot: &Slot,
    cancel: &CancellationToken,
) -> Option<(i64, Instant)> {
    let notify = cfg.store.notify().clone();
    let mut logged = false;
    loop {
        // Registered before the attempt: a release between the attempt and the wait wakes it.
        let changed = notify.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let sent = Instant::now();
        let (store, name, holder, lease) = (
            cfg.store.clone(),
            slot.name.to_string(),
            cfg.holder().to_owned(),
            cfg.lease,
        );
        let got = blocking(move || store.acquire_lease(&name, &holder, lease)).await;
        let wait = match got {
            Some(Ok(Acquired::Held { epoch })) => return Some((epoch, sent)),
            Some(Ok(Acquired::Taken {
                holder,
                epoch,
                expires_in,
            })) => {
                if !logged {
                    tracing::info!(target: "turnstile::singleton", machine = %slot.name, holder = %holder, epoch, "standby: another process runs this singleton");
                    logged = true;
                }
                // Just past its expiry, or a third of a lease at most (a clock step).
                (expires_in + Duration::from_millis(5)).min(cfg.lease / 3)
            }
            Some(Err(e)) => {
                tracing::warn!(target: "turnstile::singleton", machine = %slot.name, "cannot take the lease: {e}");
                cfg.lease / 3
            }
            None => cfg.lease / 3,
        };
        tokio::select! {
            () = cancel.cancelled() => return None,
            () = slot.removed.cancelled() => return None,
            () = &mut changed => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Renews the tenure's lease every third of the lease until the tenure ends.
async fn renew(cfg: Singletons, name: Arc<str>, tenure: Arc<Tenure>) {
    let every = (cfg.lease / 3).max(Duration::from_millis(50));
    loop {
        tokio::select! {
            () = tenure.lost() => return,
            () = tokio::time::sleep(every) => {}
        }
        let sent = Instant::now();
        let (store, n, holder, epoch, lease) = (
            cfg.store.clone(),
            name.to_string(),
            cfg.holder().to_owned(),
            tenure.epoch(),
            cfg.lease,
        );
        match blocking(move || store.renew_lease(&n, &holder, epoch, lease)).await {
            Some(Ok(true)) => tenure.renewed(sent),
            Some(Ok(false)) => {
                tracing::error!(target: "turnstile::singleton", machine = %name, epoch, "lease lost: another process took this singleton over (renewal refused): stopping this copy");
                tenure.lose();
                return;
            }
            Some(Err(e)) => {
                tracing::warn!(target: "turnstile::singleton", machine = %name, epoch, "lease renewal failed ({e}): this copy stops at its deadline unless a renewal succeeds first");
            }
            None => {}
        }
    }
}

/// The supervisor of one singleton (see the module docs). Ends when the engine shuts
/// down, the machine reaches a final state, or a reload removes it.
pub(crate) async fn supervise(engine: impl Host, cfg: Arc<Singletons>, slot: Arc<Slot>) {
    let cancel = engine.cancel_token();
    // Until this process holds it, no write of the machine through this store passes.
    cfg.store.fence(&slot.name, 0);
    loop {
        slot.set(Role::Standby, slot.epoch.load(Ordering::Acquire));
        let Some((epoch, sent)) = standby(&cfg, &slot, &cancel).await else {
            break;
        };
        cfg.store.fence(&slot.name, epoch);
        let tenure = Arc::new(Tenure::new(epoch, sent, cfg.lease));
        slot.set(Role::Holder, epoch);
        tracing::info!(target: "turnstile::singleton", machine = %slot.name, epoch, "took the lease: this process runs the singleton now");
        let renewal = tokio::spawn(renew((*cfg).clone(), slot.name.clone(), tenure.clone()));
        let def = slot.current_def();
        let (p, d) = (cfg.persister.clone(), def.clone());
        let restored = blocking(move || p.restored(&d)).await.flatten();
        let remote = engine.remote();
        let reason = match engine.start_tenure(def, tenure.clone(), cfg.persister.clone(), restored)
        {
            Ok(run) => {
                // Once the copy is routable: the events of other processes come here now.
                if let Some(r) = remote.clone() {
                    let name = slot.name.clone();
                    blocking(move || r.hold(&name)).await;
                }
                run.await
            }
            Err(e) => {
                tracing::error!(target: "turnstile::singleton", machine = %slot.name, "cannot start the singleton: {e}");
                StopReason::Shutdown
            }
        };
        tenure.lose();
        renewal.abort();
        if let Some(r) = remote {
            let name = slot.name.clone();
            blocking(move || r.release(&name)).await;
        }
        // What the copy saved reaches the store before the lease is given up, so the
        // successor restores it (a stale copy's writes are refused anyway).
        let p = cfg.persister.clone();
        let _ = blocking(move || p.flush(Duration::from_secs(5))).await;
        let (store, name, holder) = (
            cfg.store.clone(),
            slot.name.to_string(),
            cfg.holder().to_owned(),
        );
        let released = blocking(move || store.release_lease(&name, &holder, epoch)).await;
        if let Some(Ok(false)) = released {
            tracing::warn!(target: "turnstile::singleton", machine = %slot.name, epoch, "the store refused this copy's write under epoch {epoch}: the lease moved on (another process holds it)");
        }
        if let Some(Err(e)) = released {
            tracing::warn!(target: "turnstile::singleton", machine = %slot.name, epoch, "cannot release the lease ({e}): another process takes over when it expires");
        }
        if reason != StopReason::LeaseLost {
            tracing::info!(target: "turnstile::singleton", machine = %slot.name, epoch, reason = ?reason, "lease released");
            break;
        }
        engine.forget_stopped(&slot.name);
        tracing::warn!(target: "turnstile::singleton", machine = %slot.name, epoch, "this copy stopped (lease lost): standing by");
    }
    slot.set(Role::Ended, slot.epoch.load(Ordering::Acquire));
}

//! How a machine's task is run, and how an idle instance does without one.
//!
//! Every machine the engine starts (one it was started with, or an instance) runs as a
//! [`Task`]: the machine, the count of running machines it holds a place in, and for an
//! instance what its retirement updates. An instance with nothing to do (nothing queued,
//! no `timeout(N)` timer armed, no action running, not paused: `Machine::may_park`)
//! parks in its own mailbox without a task; the next event or request for it resumes it
//! on a new task ([`Resume`]). 100,000 idle instances then hold no task and no future
//! (about 3 KB each with one), only their machine. Machines the engine was started with
//! keep their task (a busy single machine does not pay a task spawn per event).
//!
//! While the engine shuts down, parked instances are resumed to see it and stop
//! ([`Engine::shutdown`](super::engine::Engine::shutdown)); a machine never parks once
//! the shutdown began (checked under its mailbox's lock, which the shutdown takes too).

use std::sync::{Arc, RwLock};

use tokio::runtime::Handle;
use tokio::sync::watch;

use super::instances::Instances;
use super::machine::{Machine, Outcome};
use super::mailbox::Resume;
use super::router::Queue;
use crate::observe::StopReason;

/// Counts a machine task as running until it ends, however it ends (a panic included).
pub(crate) struct RunningGuard(pub(crate) watch::Sender<usize>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// What an instance's end updates: it is retired from the registry, its name freed, and
/// with `--persist` marked retired in the store (unless the engine shuts down: it stays
/// live there, to be restored).
pub(crate) struct Retire {
    pub(crate) instances: Arc<RwLock<Instances>>,
    pub(crate) persist: Option<crate::store::Persister>,
}

/// A machine and what runs it.
pub(crate) struct Task {
    machine: Machine,
    handle: Handle,
    _running: RunningGuard,
    /// An instance: retired when it stops.
    retire: Option<Retire>,
}

impl Task {
    /// A task for `machine` on `handle`; an instance (`retire`) may park.
    pub(crate) fn new(
        machine: Machine,
        handle: Handle,
        running: RunningGuard,
        retire: Option<Retire>,
    ) -> Box<Self> {
        let machine = if retire.is_some() {
            machine.parkable()
        } else {
            machine
        };
        Box::new(Self {
            machine,
            handle,
            _running: running,
            retire,
        })
    }

    /// Starts the machine on a task of its own.
    pub(crate) fn start(self: Box<Self>) {
        let handle = self.handle.clone();
        handle.spawn(self.drive(true));
    }

    async fn drive(mut self: Box<Self>, first: bool) {
        let mut outcome = if first {
            self.machine.begin().await
        } else {
            self.machine.resume().await
        };
        loop {
            match outcome {
                Outcome::Stopped(reason) => {
                    self.machine.finish(reason);
                    self.retire(reason);
                    return;
                }
                Outcome::Park => {
                    let shared = self.machine.shared().clone();
                    match shared.mailbox.park(self, |t| !t.machine.cancelled()) {
                        Ok(()) => return,
                        // Something came in meanwhile (or the engine shuts down): go on.
                        Err(back) => self = back,
                    }
                    outcome = self.machine.resume().await;
                }
            }
        }
    }

    /// An instance stopped: retired; the name and the queue are free, the status kept for
    /// a while.
    fn retire(&self, reason: StopReason) {
        let Some(r) = &self.retire else { return };
        let shared = self.machine.shared();
        let def_name = shared
            .def
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .name
            .clone();
        // An engine that shuts down leaves its instances live in the store.
        if let Some(p) = &r.persist {
            if reason != StopReason::Shutdown {
                p.instance_retired(&shared.name, &def_name);
            }
        }
        let queue: Queue = shared.clone();
        self.machine.router().remove_if_same(&shared.name, &queue);
        r.instances
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retire(shared);
    }
}

impl Resume for Task {
    fn resume(self: Box<Self>) {
        let handle = self.handle.clone();
        handle.spawn(self.drive(false));
    }
}

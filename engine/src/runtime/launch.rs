//! How a machine's task is run, and how an idle instance does without one.
//!
//! Every machine the engine starts (one it was started with, or an instance) runs as a
//! [`Task`]: the machine, the count of running machines it holds a place in, and for an
//! instance what its retirement updates. An instance with nothing to do (nothing queued,
//! no `timeout(N)` timer armed, no action running, not paused: `Machine::may_park`)
//! parks in its own mailbox without a task; the next event or request for it resumes it
//! on a new task ([`Resume`]). 100,000 idle instances then hold no task and no future
//! (about 3 KB each with one), only their machine, in compact form when it is at rest
//! (`runtime/machine/parked.rs`). Machines the engine was started with keep their task
//! (a busy single machine does not pay a task spawn per event).
//!
//! While the engine shuts down, parked instances are resumed to see it and stop
//! ([`Engine::shutdown`](super::engine::Engine::shutdown)); a machine never parks once
//! the shutdown began (checked under its mailbox's lock, which the shutdown takes too).

use std::sync::{Arc, RwLock};

use tokio::runtime::Handle;
use tokio::sync::watch;

use super::instances::Instances;
use super::machine::{Machine, Outcome, Parkable};
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
    /// Compact while parked at rest (`runtime/machine/parked.rs`).
    machine: Parkable,
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
            machine: Parkable::new(machine),
            handle,
            _running: running,
            retire,
        })
    }

    /// Starts the machine on a task of its own: a config machine keeps it until it stops;
    /// an instance parks when it has nothing to do.
    pub(crate) fn start(self: Box<Self>) {
        let handle = self.handle.clone();
        if self.retire.is_none() {
            let Task {
                machine, _running, ..
            } = *self;
            handle.spawn(async move {
                let _running = _running;
                machine.run().await;
            });
            return;
        }
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

/// Test helpers shared with the compact form's tests (`machine/parked.rs`).
#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use serde_json::{json, Map};

    use crate::runtime::engine::Engine;
    use crate::runtime::event::Event;
    use crate::runtime::live::{LiveAnswer, LiveOp};
    use crate::{config, ActionRegistry};

    pub(crate) const WAIT: Duration = Duration::from_secs(10);

    pub(crate) fn def(yaml: &str) -> std::sync::Arc<crate::MachineDef> {
        let loaded = config::load_str(yaml, None, &ActionRegistry::with_builtins());
        let errors: Vec<String> = loaded.errors().map(ToString::to_string).collect();
        assert!(errors.is_empty(), "{errors:#?}");
        loaded.def.unwrap()
    }

    /// `a` to `b` on `flip`, back on `flop` (in any other order some are ignored); `go` from `a` to `timed`, which goes on to `a` after 0.3 s;
    /// `end` to the final state `done`. Entering `b` sets `seen`.
    pub(crate) const FLIP: &str = r#"
metadata: {machine_name: flip}
initial_state: a
context: {n: 0}
states: [a, b, timed, done]
events: [flip, flop, go, end, "timeout(0.3)"]
transitions:
  - {from: a, to: b, event: flip}
  - {from: b, to: a, event: flop}
  - {from: a, to: timed, event: go}
  - {from: timed, to: a, event: "timeout(0.3)"}
  - {from: "*", to: done, event: end}
actions:
  b:
    - {type: set_context, key: seen, value: true}
"#;

    pub(crate) async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !f() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not in time: {what}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn started(engine: &Engine, name: &str) {
        engine.spawn(def(FLIP)).unwrap();
        engine
            .start_instance("flip", Some(name), Map::new())
            .unwrap();
        until("the instance parks", || engine.parked(name)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_parked_instance_is_resumed_by_events_in_order_and_parks_again() {
        // A queue of 2: the senders wait for room (backpressure) while it drains.
        let engine = Engine::builder().queue_capacity(2).build();
        started(&engine, "i").await;
        for i in 0..101 {
            let name = if i % 2 == 0 { "flip" } else { "flop" };
            engine.send("i", Event::new(name)).await.unwrap();
        }
        // Alternating: one taken out of order would be ignored (no transition).
        until("101 transitions", || {
            engine.machine("i").is_some_and(|m| m.transitions == 101)
        })
        .await;
        until("parked again", || engine.parked("i")).await;
        let m = engine.machine("i").unwrap();
        assert_eq!(&*m.state, "b");
        assert_eq!(m.queue_depth, 0);
        // A snapshot (an engine request) resumes it too, and it parks again.
        let snap = engine.snapshot("i").await.unwrap();
        assert_eq!(&*snap.state, "b");
        assert_eq!(snap.context["seen"], json!(true));
        until("parked after the snapshot", || engine.parked("i")).await;
        engine.shutdown();
        tokio::time::timeout(WAIT, engine.join()).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_paused_instance_holds_its_events_with_its_task_and_parks_once_resumed() {
        let engine = Engine::builder().build();
        started(&engine, "p").await;
        let LiveAnswer::Done(s) = engine.control("p", LiveOp::Pause).await.unwrap() else {
            panic!("pause answered otherwise")
        };
        assert!(s.paused);
        engine.send("p", Event::new("flip")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let m = engine.machine("p").unwrap();
        assert!(m.paused);
        assert_eq!((&*m.state, m.transitions), ("a", 0), "held while paused");
        assert!(!engine.parked("p"), "a paused instance keeps its task");
        engine.control("p", LiveOp::Resume).await.unwrap();
        until("the held event processed", || {
            engine.machine("p").is_some_and(|m| &*m.state == "b")
        })
        .await;
        until("parked once resumed", || engine.parked("p")).await;
        // A context patch (a live request) on the parked instance.
        let LiveAnswer::Context(_, ctx) = engine
            .control("p", LiveOp::PatchContext(json!({"x": 1})))
            .await
            .unwrap()
        else {
            panic!("patch answered otherwise")
        };
        assert_eq!(ctx["x"], json!(1));
        until("parked after the patch", || engine.parked("p")).await;
        engine.shutdown();
        tokio::time::timeout(WAIT, engine.join()).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_instance_with_a_timer_armed_keeps_its_task_until_the_timer_fires() {
        let engine = Engine::builder().build();
        started(&engine, "t").await;
        engine.send("t", Event::new("go")).await.unwrap();
        until("in the timed state", || {
            engine.machine("t").is_some_and(|m| &*m.state == "timed")
        })
        .await;
        assert!(!engine.parked("t"), "its timer is armed");
        until("the timer fired", || {
            engine.machine("t").is_some_and(|m| &*m.state == "a")
        })
        .await;
        until("parked after the timer", || engine.parked("t")).await;
        engine.shutdown();
        tokio::time::timeout(WAIT, engine.join()).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parked_instances_stop_at_shutdown_and_retire_at_a_final_state() {
        let engine = Engine::builder().build();
        started(&engine, "x").await;
        engine
            .start_instance("flip", Some("y"), Map::new())
            .unwrap();
        until("y parks", || engine.parked("y")).await;
        engine.send("x", Event::new("end")).await.unwrap();
        until("x retired", || {
            engine.machine("x").is_some_and(|m| !m.running)
        })
        .await;
        assert_eq!(
            engine.machine("x").unwrap().stop_reason,
            Some(crate::observe::StopReason::FinalState)
        );
        assert!(engine.try_send("x", Event::new("flip")).is_err());
        engine.shutdown();
        tokio::time::timeout(WAIT, engine.join()).await.unwrap();
        let y = engine.machine("y").unwrap();
        assert!(!y.running);
        assert_eq!(y.stop_reason, Some(crate::observe::StopReason::Shutdown));
    }
}

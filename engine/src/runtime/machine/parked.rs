//! An idle instance's machine in compact form: only what it needs until its next event or
//! request.
//!
//! 100,000 idle instances each hold their machine while they are parked without a task
//! (`runtime/launch.rs`), and a [`Machine`] is about 1.1 KB: its current entry with the
//! event that caused it, the chained event, the gate, the waiting action, the timers, the
//! fairness counts. A machine at rest (everything settled, as [`Machine::may_park`]
//! requires, and nothing a fresh one would not hold: no breakpoint, no answer owed) needs
//! none of that: a parked instance keeps its [`Compact`] form (its definition, state,
//! context, observer slot, clock bookkeeping and counts: about a third of the size) and
//! the rest is made again when it is resumed. A machine not at rest when it parks (a
//! breakpoint set, say) stays whole.
//!
//! What is made again is what a machine at rest would hold anyway, except the event that
//! caused its current state, which nothing reads once that state's actions have run
//! (actions read it; a transition replaces it, a reload or a restart too), so it is not
//! kept.

#[cfg(test)]
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value as Json};
use tokio_util::sync::CancellationToken;

use super::events::{Entry, Livelock};
use super::gate::Gate;
use super::measure::Measure;
use super::phases::Chain;
use super::timers::Timers;
use super::{Machine, Outcome, Persist, Shared};
use crate::observe::{Observer, ObserverSlot, StopReason};
use crate::runtime::def::MachineDef;
use crate::runtime::event::{Event, Origin};
use crate::runtime::router::Router;

/// A machine run by a task that may park it: whole while it runs, [`Compact`] while it is
/// parked at rest.
pub(crate) struct Parkable(Body);

// The compact form inline on purpose: it is what a parked instance holds, in its task's
// box; boxed again it would cost one more allocation and pointer each.
#[allow(clippy::large_enum_variant)]
enum Body {
    Whole(Box<Machine>),
    Compact(Compact),
    /// Only while one form is turned into the other.
    Moving,
}

/// What a machine at rest keeps (see the module's doc).
pub(super) struct Compact {
    shared: Arc<Shared>,
    def: Arc<MachineDef>,
    slot: ObserverSlot,
    observer: Option<Arc<dyn Observer>>,
    router: Arc<Router>,
    state: usize,
    context: Map<String, Json>,
    cancel: CancellationToken,
    livelock: Livelock,
    measure: Measure,
    /// With `--persist` only.
    persist: Option<Box<Persist>>,
    actions_finished: u64,
    activity_seen: u64,
}

/// The name of the event a resumed machine's entry holds as its cause (never read: see
/// the module's doc); one for all, so that a resume allocates none.
fn rest_cause() -> Event {
    static NAME: OnceLock<Arc<str>> = OnceLock::new();
    Event::new(NAME.get_or_init(|| Arc::from("parked")).clone()).with_origin(Origin::Start)
}

impl Machine {
    /// Nothing but what [`Compact`] keeps differs from a fresh machine's (once its actions
    /// have run): then it may be parked compact.
    fn at_rest(&self) -> bool {
        self.parkable
            && self.waiting.is_none()
            && self.claim.is_none()
            && self.stop_reply.is_none()
            && self.tenure.is_none()
            && self.chain.next.is_none()
            && self.entry.active.is_none()
            && !self.has_next_action()
            && self.timers.at_rest()
            && self.gate.is_clear()
            && !self.persist.dirty
            && self.persist.handling.is_none()
    }

    /// The compact form of a machine [`Self::at_rest`].
    fn compact(self) -> Compact {
        let persist = self.persist.to.is_some().then(|| Box::new(self.persist));
        Compact {
            shared: self.shared,
            def: self.def,
            slot: self.slot,
            observer: self.observer,
            router: self.router,
            state: self.state,
            context: self.context,
            cancel: self.cancel,
            livelock: self.livelock,
            measure: self.measure,
            persist,
            actions_finished: self.actions_finished,
            activity_seen: self.activity_seen,
        }
    }
}

impl Compact {
    /// The machine again, as it was parked.
    fn whole(self) -> Box<Machine> {
        let entry = Entry {
            cause: rest_cause(),
            trace: None,
            active: None,
            rule: None,
            // Every entry action has run.
            pos: self.def.states[self.state].entry.len(),
        };
        Box::new(Machine {
            shared: self.shared,
            def: self.def,
            slot: self.slot,
            observer: self.observer,
            router: self.router,
            state: self.state,
            context: self.context,
            gate: Gate::default(),
            cancel: self.cancel,
            stop_reply: None,
            entry,
            waiting: None,
            claim: None,
            chain: Chain::new(),
            timers: Timers::new(),
            livelock: self.livelock,
            measure: self.measure,
            persist: match self.persist {
                Some(p) => *p,
                None => Persist::none(),
            },
            tenure: None,
            actions_finished: self.actions_finished,
            activity_seen: self.activity_seen,
            parkable: true,
        })
    }
}

impl Parkable {
    /// `machine`, not started yet.
    pub(crate) fn new(machine: Machine) -> Self {
        Self(Body::Whole(Box::new(machine)))
    }

    fn whole(&mut self) -> &mut Machine {
        if matches!(self.0, Body::Compact(_)) {
            let Body::Compact(c) = std::mem::replace(&mut self.0, Body::Moving) else {
                unreachable!("matched above")
            };
            #[cfg(test)]
            c.shared.compact.store(false, Ordering::Relaxed);
            self.0 = Body::Whole(c.whole());
        }
        match &mut self.0 {
            Body::Whole(m) => m,
            Body::Compact(_) | Body::Moving => unreachable!("made whole above"),
        }
    }

    /// Turns a machine that is to park into its compact form, when it is at rest.
    fn parks(&mut self, outcome: Outcome) -> Outcome {
        if matches!(outcome, Outcome::Park) && matches!(&self.0, Body::Whole(m) if m.at_rest()) {
            let Body::Whole(m) = std::mem::replace(&mut self.0, Body::Moving) else {
                unreachable!("matched above")
            };
            #[cfg(test)]
            m.shared.compact.store(true, Ordering::Relaxed);
            self.0 = Body::Compact(m.compact());
        }
        outcome
    }

    /// Runs a machine that does not park until it stops ([`Machine::run`]).
    pub(crate) async fn run(self) -> StopReason {
        match self.0 {
            Body::Whole(m) => (*m).run().await,
            Body::Compact(c) => (*c.whole()).run().await,
            Body::Moving => unreachable!("never left moving"),
        }
    }

    /// [`Machine::begin`], then compact if it parks.
    pub(crate) async fn begin(&mut self) -> Outcome {
        let outcome = self.whole().begin().await;
        self.parks(outcome)
    }

    /// [`Machine::resume`] (made whole first), then compact if it parks again.
    pub(crate) async fn resume(&mut self) -> Outcome {
        let outcome = self.whole().resume().await;
        self.parks(outcome)
    }

    /// [`Machine::finish`].
    pub(crate) fn finish(&mut self, reason: StopReason) {
        self.whole().finish(reason);
    }

    /// Its shared status (and mailbox).
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        match &self.0 {
            Body::Whole(m) => m.shared(),
            Body::Compact(c) => &c.shared,
            Body::Moving => unreachable!("never left moving"),
        }
    }

    /// The router it sends through.
    pub(crate) fn router(&self) -> &Arc<Router> {
        match &self.0 {
            Body::Whole(m) => m.router(),
            Body::Compact(c) => &c.router,
            Body::Moving => unreachable!("never left moving"),
        }
    }

    /// The engine is shutting down.
    pub(crate) fn cancelled(&self) -> bool {
        match &self.0 {
            Body::Whole(m) => m.cancelled(),
            Body::Compact(c) => c.cancel.is_cancelled(),
            Body::Moving => unreachable!("never left moving"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::{json, Map};

    use super::*;
    use crate::breakpoint::{BreakpointSpec, On};
    use crate::runtime::engine::Engine;
    use crate::runtime::launch::tests::{def, until, FLIP, WAIT};
    use crate::runtime::live::{LiveAnswer, LiveOp};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_instance_parks_compact_and_resumes_whole() {
        let engine = Engine::builder().build();
        engine.spawn(def(FLIP)).unwrap();
        let mut ctx = Map::new();
        ctx.insert("k".into(), json!("v"));
        engine.start_instance("flip", Some("i"), ctx).unwrap();
        until("parked compact after its start", || {
            engine.parked_compact("i")
        })
        .await;
        for i in 0..10 {
            let name = if i % 2 == 0 { "flip" } else { "flop" };
            engine.send("i", crate::Event::new(name)).await.unwrap();
        }
        until("10 transitions", || {
            engine.machine("i").is_some_and(|m| m.transitions == 10)
        })
        .await;
        until("parked compact again", || engine.parked_compact("i")).await;
        // What it kept: its state and context (a snapshot resumes it, and it parks again).
        let snap = engine.snapshot("i").await.unwrap();
        assert_eq!(&*snap.state, "a");
        assert_eq!(snap.context["k"], json!("v"));
        assert_eq!(snap.context["seen"], json!(true));
        until("parked compact after the snapshot", || {
            engine.parked_compact("i")
        })
        .await;
        // A breakpoint set: it parks, whole (the gate holds it).
        let spec = BreakpointSpec {
            on: On::Event,
            state: Some("b".into()),
            event: None,
            when: None,
        };
        let LiveAnswer::Breakpoint(_) = engine
            .control("i", LiveOp::AddBreakpoint(spec))
            .await
            .unwrap()
        else {
            panic!("the breakpoint was not set")
        };
        until("parked", || engine.parked("i")).await;
        assert!(!engine.parked_compact("i"), "a breakpoint keeps it whole");
        engine.send("i", crate::Event::new("flip")).await.unwrap();
        until("in b", || {
            engine.machine("i").is_some_and(|m| &*m.state == "b")
        })
        .await;
        engine.shutdown();
        tokio::time::timeout(WAIT, engine.join()).await.unwrap();
    }

    /// The point of the compact form: a parked instance's task box (this, the task's
    /// handle, its running guard and what retires it; `runtime/launch.rs`) stays well below
    /// the whole machine. A field added to [`Compact`] that pushes it past this bound
    /// should rather be made again on resume, or boxed.
    #[test]
    fn the_compact_form_is_small() {
        let compact = std::mem::size_of::<Compact>();
        let whole = std::mem::size_of::<Machine>();
        assert!(compact <= 320, "Compact is {compact} bytes");
        assert!(std::mem::size_of::<Parkable>() <= 320);
        assert!(whole >= 3 * compact, "Machine {whole}, Compact {compact}");
        // And the shared status every instance has (its mailbox included).
        let shared = std::mem::size_of::<Shared>();
        assert!(shared <= 320, "Shared is {shared} bytes");
    }
}

//! Clock readings for the observer, and the bookkeeping that keeps them to one per event.
//!
//! Measuring is on the hot path of an observed machine, so it reads the TSC
//! ([`Ticks`]), and only when an observer is attached. A busy machine reads it once per
//! action-less event: the end of one such event is the start of the next when the task
//! took it from its queue right away ([`Measure::forget_end`] is called whenever the task
//! does anything else first). The "in this state since" wall time comes from the same
//! reading ([`WallAnchor`]). An observer may ask for one action-less event in N to be
//! timed ([`QuickTiming`]): the others read no clock at all.

use std::time::Duration;

use crate::observe::{QuickObserver, QuickTiming};
use crate::runtime::clock::{Ticks, WallAnchor};

pub(super) struct Measure {
    /// The clock durations are measured with; present when an observer is attached (set
    /// when the task starts: the process's first one calibrates the TSC, which takes a
    /// while, and `Machine::new` runs under the engine's lock).
    ticks: Option<Ticks>,
    /// When the last event ended, if it triggered no action and nothing has happened since
    /// but taking the next one from the queue: the next transition is then timed at that
    /// instant, without another clock reading. Cleared when anything else comes first:
    /// the task may wait (`select!`, a yield), an event is ignored or refused, the state
    /// is saved.
    last_end: Option<u64>,
    /// Turns a transition's reading into the machine's "in this state since": no second
    /// clock call per transition.
    wall: WallAnchor,
    /// When the current state was entered (a reading, with an observer).
    entered: Option<u64>,
    /// The observer wants `event_started` and `action_started`
    /// ([`Observer::observes_starts`](crate::observe::Observer::observes_starts)).
    pub(super) starts: bool,
    /// What the observer handed back for action-less events
    /// ([`Observer::quick_observer`](crate::observe::Observer::quick_observer)), asked
    /// again after each reload ([`Measure::set_quick`]).
    pub(super) quick: Option<Box<dyn QuickObserver>>,
    /// Its [`QuickTiming`].
    pub(super) timing: QuickTiming,
    /// Action-less events to go before the next timed one (0: this one is timed).
    countdown: u32,
}

/// The instant of a transition, with what follows from it.
#[derive(Clone, Copy)]
pub(super) struct Mark {
    /// The reading (or the previous event's end).
    pub(super) at: u64,
    /// Nanoseconds spent in the state left (`None`: its entry was not timed).
    pub(super) time_in_from: Option<u64>,
    /// Unix milliseconds at `at`.
    pub(super) unix_ms: u64,
}

impl Measure {
    pub(super) fn new(starts: bool) -> Self {
        Self {
            ticks: None,
            last_end: None,
            wall: WallAnchor::UNSET,
            entered: None,
            starts,
            quick: None,
            timing: QuickTiming::default(),
            countdown: 0,
        }
    }

    /// The receiver for action-less events (and its timing), after a start or a reload.
    pub(super) fn set_quick(&mut self, quick: Option<Box<dyn QuickObserver>>) {
        self.timing = quick.as_ref().map(|q| q.timing()).unwrap_or_default();
        self.timing.every = self.timing.every.max(1);
        self.countdown = 0;
        self.quick = quick;
    }

    /// The task started with an observer: from now on durations are measured.
    pub(super) fn start(&mut self) {
        let t = Ticks::new();
        self.entered = Some(t.now());
        self.ticks = Some(t);
    }

    /// A reading, when measuring.
    #[inline]
    pub(super) fn tick(&self) -> Option<u64> {
        self.ticks.as_ref().map(Ticks::now)
    }

    /// The time since a [`Measure::tick`] reading.
    pub(super) fn since(&self, start: Option<u64>) -> Duration {
        match (&self.ticks, start) {
            (Some(t), Some(s)) => t.since(s),
            _ => Duration::ZERO,
        }
    }

    /// Something other than taking the next queued event happens: that event's start is
    /// read from the clock.
    #[inline]
    pub(super) fn forget_end(&mut self) {
        self.last_end = None;
    }

    /// A transition happens now: its instant (the previous event's end when that is still
    /// valid, else a reading), which becomes the state's entry time. `None` when not
    /// measuring, and for an action-less event (`quick`) that is not timed
    /// ([`QuickTiming::every`]): no clock is read then, except at the one before a timed
    /// one, which notes the instant its state is entered.
    #[inline]
    pub(super) fn transition(&mut self, quick: bool) -> Option<Mark> {
        let t = self.ticks.as_ref()?;
        if quick && self.timing.every > 1 {
            if self.countdown > 0 {
                self.countdown -= 1;
                self.entered = if self.countdown == 0 {
                    Some(self.last_end.take().unwrap_or_else(|| t.now()))
                } else {
                    self.last_end = None;
                    None
                };
                return None;
            }
            self.countdown = self.timing.every - 1;
        }
        let at = self.last_end.take().unwrap_or_else(|| t.now());
        let unix_ms = self.wall.unix_ms(at);
        let time_in_from = self.entered.map(|e| Ticks::nanos(e, at));
        self.entered = Some(at);
        Some(Mark {
            at,
            time_in_from,
            unix_ms,
        })
    }

    /// An action-less event, transitioned at `at`, ends now: returns its duration in
    /// nanoseconds. A next event already queued starts at this instant (the task calls
    /// [`Measure::forget_end`] when it does anything else first).
    #[inline]
    pub(super) fn quick_end(&mut self, at: u64) -> u64 {
        let Some(t) = &self.ticks else {
            return 0;
        };
        let end = t.now();
        self.last_end = Some(end);
        Ticks::nanos(at, end)
    }

    /// When the current state was entered.
    pub(super) fn entered(&self) -> Option<u64> {
        self.entered
    }

    /// The state is entered again without a transition (a reload to the initial state).
    pub(super) fn reenter(&mut self) {
        self.entered = self.tick();
    }
}

//! One machine's telemetry: what the observer keeps per machine, in the engine's
//! per-machine `ObserverSlot`.
//!
//! Its own file because the slot is the state every observer call for a machine works on
//! (metric handles, the event being processed, the `/trace` ring), while
//! [`super::Telemetry`] is what all machines share; with the types here, the observer
//! ([`super::observer`]) and the end of an event ([`super::event`]) both use them without
//! using each other.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use thread_local::ThreadLocal;
use turnstile_engine::observe::{QuickObserver, QuickTiming};
use turnstile_engine::{MachineDef, MetricsDetail, TraceContext};

use super::metrics::{MachineMetrics, Metrics};
use super::records::{ActionRecord, Ring, ThreadRings, TraceRecord};
use super::spans::LiveSpan;
use super::stream::{LaneCell, Names, QuickFeed};

/// One machine's telemetry.
pub(super) struct Slot {
    /// The machine's definition's name (its `machine` label; a config machine's own name).
    pub(super) name: Arc<str>,
    /// An instance started at run time: its own name (records and spans name it; metrics
    /// count it under `name`).
    pub(super) instance: Option<Arc<str>>,
    /// Its definition's names (its states' among them, [`Slot::states`]) as its stream
    /// records give them by index (shared by the instances of one definition;
    /// see [`Slot::stream_names`]).
    pub(super) names: Arc<Names>,
    /// An instance's own names, made from `names` when it first publishes to the stream
    /// (an idle instance has none).
    pub(super) instance_names: OnceLock<Arc<Names>>,
    /// Its lane in front of the stream's ring (its transitions go there while someone
    /// follows the stream).
    pub(super) lane: LaneCell,
    pub(super) metrics: SlotMetrics,
    /// Events timed (all outcomes; an action-less one timed for every
    /// [`QuickTiming::every`] counts that many) and their total processing time (likewise
    /// weighted), for the average of `/stats`.
    pub(super) processed: AtomicU64,
    pub(super) busy_ns: AtomicU64,
    /// How the machine's action-less events are timed and reported.
    pub(super) timing: QuickTiming,
    pub(super) live: Mutex<Live>,
    /// A config machine's `/trace` ring, shared with the slot that replaces this one after
    /// a config reload. None for an instance: its records go to its definition's ring of
    /// the reporting thread ([`Recipe::trace`]).
    pub(super) trace: Option<Arc<Ring<TraceRecord>>>,
}

impl Slot {
    /// Its definition's state names, by index.
    pub(super) fn states(&self) -> &[Arc<str>] {
        self.names.states()
    }

    /// The names its stream records give: its definition's for a config machine, its own
    /// for an instance started at run time.
    pub(super) fn stream_names(&self) -> &Arc<Names> {
        match &self.instance {
            None => &self.names,
            Some(i) => self
                .instance_names
                .get_or_init(|| self.names.for_instance(i.clone())),
        }
    }

    /// Where its `/trace` records go, and the names they carry (the machine's, its states'
    /// by index): a config machine's own ring and names; an instance's, the calling
    /// thread's ring of its definition and that thread's copies of the names.
    #[inline]
    pub(super) fn trace_target(&self) -> Option<TraceTarget<'_>> {
        match (&self.trace, &self.metrics) {
            (Some(ring), _) => Some(TraceTarget {
                ring,
                machine: &self.name,
                states: self.states(),
            }),
            (None, SlotMetrics::Shared(recipe)) => {
                let t = recipe.trace();
                Some(TraceTarget {
                    ring: &t.ring,
                    machine: &t.machine,
                    states: &t.states,
                })
            }
            (None, SlotMetrics::Now(_)) => None,
        }
    }

    /// `weight` more events processed in `ns` nanoseconds each (for `/stats`).
    #[inline]
    pub(super) fn count(&self, ns: u64, weight: u32) {
        // Only this machine's task writes these: a plain load and store, no locked add.
        let w = u64::from(weight);
        self.processed.store(
            self.processed.load(Ordering::Relaxed) + w,
            Ordering::Relaxed,
        );
        self.busy_ns.store(
            self.busy_ns
                .load(Ordering::Relaxed)
                .saturating_add(ns.saturating_mul(w)),
            Ordering::Relaxed,
        );
    }
}

/// A machine's metric writers. A config machine's are its own, made when it starts (its
/// series show from then on). An instance's are its definition's: the instances of one
/// definition count under its name (the `machine` label) anyway, so they share the
/// writers of their [`Recipe`], one set per thread that reports for them, made when that
/// thread first does. An instance then holds no writers (they were about 1.5 KB each, made
/// at its first event and cold in the cache at each later one), and its events go to a
/// few writers that stay in the cache. A writer is written by one thread only, as the
/// writers require (`local.rs`): the thread's own. A config machine's boxed: inline, its
/// writers' table would make every slot, an idle instance's too, 300 bytes larger.
pub(super) enum SlotMetrics {
    Now(Box<MachineMetrics>),
    Shared(Arc<Recipe>),
}

impl SlotMetrics {
    /// The level they are made at.
    pub(super) fn detail(&self) -> MetricsDetail {
        match self {
            SlotMetrics::Now(m) => m.detail,
            SlotMetrics::Shared(r) => r.detail,
        }
    }
}

impl Deref for SlotMetrics {
    type Target = MachineMetrics;

    #[inline]
    fn deref(&self) -> &MachineMetrics {
        match self {
            SlotMetrics::Now(m) => m,
            SlotMetrics::Shared(r) => r.writers(),
        }
    }
}

/// What the instances of one definition share in their slots: their metric writers (per
/// thread, see [`SlotMetrics`]), how they are made, their names.
pub(super) struct Recipe {
    pub(super) families: Arc<Metrics>,
    pub(super) def: Arc<MachineDef>,
    pub(super) detail: MetricsDetail,
    pub(super) names: Arc<Names>,
    /// The writers of each thread that reported for these instances. Dropped with the
    /// recipe (a reload with new indexes, a new level): their counts stay in the series.
    writers: ThreadLocal<MachineMetrics>,
    /// The definition's `/trace` rings, one per thread (kept by the telemetry across
    /// reloads), and each thread's ring with its copies of the names.
    rings: Arc<ThreadRings>,
    traces: ThreadLocal<ThreadTrace>,
}

/// Where a slot's `/trace` record goes ([`Slot::trace_target`]).
pub(super) struct TraceTarget<'a> {
    pub(super) ring: &'a Ring<TraceRecord>,
    pub(super) machine: &'a Arc<str>,
    pub(super) states: &'a [Arc<str>],
}

/// A thread's `/trace` ring for a definition's instances, and the names its records
/// carry: copies of the definition's, whose reference counts only this thread moves (see
/// [`ThreadRings`]).
pub(super) struct ThreadTrace {
    ring: Arc<Ring<TraceRecord>>,
    machine: Arc<str>,
    states: Box<[Arc<str>]>,
}

impl Recipe {
    pub(super) fn new(
        families: Arc<Metrics>,
        def: Arc<MachineDef>,
        detail: MetricsDetail,
        names: Arc<Names>,
        rings: Arc<ThreadRings>,
    ) -> Self {
        Self {
            families,
            def,
            detail,
            names,
            writers: ThreadLocal::new(),
            rings,
            traces: ThreadLocal::new(),
        }
    }

    /// The calling thread's `/trace` ring and names (made at its first record).
    #[inline]
    fn trace(&self) -> &ThreadTrace {
        self.traces.get_or(|| ThreadTrace {
            ring: self.rings.this_thread(),
            machine: Arc::from(&*self.def.name),
            states: self
                .names
                .states()
                .iter()
                .map(|s| Arc::from(&**s))
                .collect(),
        })
    }

    /// The calling thread's writers (made on its first report).
    #[inline]
    fn writers(&self) -> &MachineMetrics {
        self.writers
            .get_or(|| self.families.machine(&self.def, self.detail))
    }
}

/// Metrics only (no `/trace` records, no spans): what [`Observer::transition_finished`]
/// does, called by the runtime without a report or a slot lookup.
///
/// [`Observer::transition_finished`]: turnstile_engine::Observer::transition_finished
impl QuickObserver for Slot {
    #[inline]
    fn transition_finished(
        &self,
        from: usize,
        _to: usize,
        event_id: usize,
        time_in_from_ns: u64,
        duration_ns: u64,
    ) {
        self.count(duration_ns, self.timing.every);
        let timed = (time_in_from_ns != u64::MAX).then_some(time_in_from_ns);
        self.metrics
            .transition_finished(from, event_id, timed, Some(duration_ns));
    }

    fn timing(&self) -> QuickTiming {
        self.timing.clone()
    }

    #[inline]
    fn transition_untimed(&self, from: usize, _to: usize, event_id: usize) {
        self.metrics.transition_finished(from, event_id, None, None);
    }
}

/// A machine's slot as its [`QuickObserver`] (boxed by the runtime: a trait object of
/// this, not of `Arc<Slot>`, keeps the call's `self` at a fixed offset).
pub(super) struct QuickSlot(pub(super) Arc<Slot>, pub(super) QuickFeed);

impl QuickObserver for QuickSlot {
    #[inline]
    fn transition_finished(
        &self,
        from: usize,
        to: usize,
        event_id: usize,
        time_in_from_ns: u64,
        duration_ns: u64,
    ) {
        self.0
            .transition_finished(from, to, event_id, time_in_from_ns, duration_ns);
        self.1
            .transition(&self.0.lane, || self.0.stream_names(), from, to, event_id);
    }

    /// The untimed transitions are reported too while someone follows the stream (each
    /// goes on it), whatever the metrics need.
    fn timing(&self) -> QuickTiming {
        QuickTiming {
            report_untimed_while: Some(self.1.followers()),
            ..self.0.timing.clone()
        }
    }

    #[inline]
    fn transition_untimed(&self, from: usize, to: usize, event_id: usize) {
        if self.0.timing.report_untimed {
            self.0.transition_untimed(from, to, event_id);
        }
        self.1
            .transition(&self.0.lane, || self.0.stream_names(), from, to, event_id);
    }
}

/// The event a machine is processing. Each boxed while there is one: an idle machine
/// (100,000 idle instances, say) holds neither, and this stays a few words.
#[derive(Default)]
pub(super) struct Live {
    pub(super) state: usize,
    pub(super) event: Option<Box<LiveEvent>>,
    pub(super) action: Option<Box<LiveAction>>,
}

pub(super) struct LiveEvent {
    pub(super) at: SystemTime,
    pub(super) span: Option<LiveSpan>,
    pub(super) trace: Option<TraceContext>,
    pub(super) actions: Vec<ActionRecord>,
    pub(super) failed: Option<(&'static str, String)>,
}

pub(super) struct LiveAction {
    pub(super) span: Option<LiveSpan>,
}

//! The machines started at run time (instances of a definition: `start_fsm`,
//! `POST /machines`), apart from the machines the engine was started with.
//!
//! Kept apart because there may be 100,000 of them: they are indexed by name (a page of
//! `/machines` is a range of a sorted map, never the whole set), they do not count for
//! readiness, their series are their definition's, and one that reaches a final state is
//! retired: its task ends, its name and queue are freed, and its status is kept for
//! [`RETIRED_FOR`], at most the last [`RETIRED_KEEP`] of them, for `/machines`.
//! Counts per definition (started, retired, and what retired instances did) outlive them,
//! so that totals read at scrape time never go down.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use super::def::MachineDef;
use super::machine::Shared;

/// How many retired instances `/machines` keeps at most (the most recently retired).
pub const RETIRED_KEEP: usize = 1000;
/// How long `/machines` keeps a retired instance.
pub const RETIRED_FOR: Duration = Duration::from_secs(600);

/// What happened to a definition's instances so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceCounts {
    /// Instances started.
    pub started: u64,
    /// Instances retired (reached a final state, or stopped).
    pub retired: u64,
    /// Transitions taken by the retired ones (the running ones' are read from them).
    pub retired_transitions: u64,
    /// Events processed by the retired ones.
    pub retired_events: u64,
    /// Errors of the retired ones.
    pub retired_errors: u64,
}

struct Retired {
    shared: Arc<Shared>,
    at: Instant,
}

/// The instances of every definition: running ones by name, the recently retired ones,
/// counts per definition.
#[derive(Default)]
pub(crate) struct Instances {
    live: BTreeMap<Arc<str>, Arc<Shared>>,
    retired: BTreeMap<Arc<str>, Retired>,
    /// Retirement order, to drop the oldest (an entry whose time differs from the map's
    /// was replaced by a later retirement of the same name).
    order: VecDeque<(Arc<str>, Instant)>,
    counts: FxHashMap<Arc<str>, InstanceCounts>,
    /// The definition the last retired instance of each ran (its states are listed, at
    /// zero, once none runs).
    last_def: FxHashMap<Arc<str>, Arc<MachineDef>>,
}

impl Instances {
    /// A new running instance of `definition`.
    pub(crate) fn add(&mut self, definition: &Arc<str>, shared: Arc<Shared>) {
        self.counts.entry(definition.clone()).or_default().started += 1;
        self.live.insert(shared.name.clone(), shared);
    }

    /// The instance's task ended: it leaves the running ones and is kept as retired.
    pub(crate) fn retire(&mut self, shared: &Arc<Shared>) {
        let is_it = self
            .live
            .get(&shared.name)
            .is_some_and(|s| Arc::ptr_eq(s, shared));
        if !is_it {
            return;
        }
        self.live.remove(&shared.name);
        let def = shared.def.read().unwrap_or_else(|e| e.into_inner()).clone();
        let c = self.counts.entry(def.name.clone()).or_default();
        c.retired += 1;
        c.retired_transitions += shared.transitions.load(Ordering::Relaxed);
        c.retired_events += shared.events.load(Ordering::Relaxed);
        c.retired_errors += shared.errors.load(Ordering::Relaxed);
        self.last_def.insert(def.name.clone(), def);
        let now = Instant::now();
        self.order.push_back((shared.name.clone(), now));
        self.retired.insert(
            shared.name.clone(),
            Retired {
                shared: shared.clone(),
                at: now,
            },
        );
        self.prune(now);
    }

    /// Drops retired instances beyond [`RETIRED_KEEP`] or older than [`RETIRED_FOR`].
    pub(crate) fn prune(&mut self, now: Instant) {
        while let Some((name, at)) = self.order.front() {
            let old = now.duration_since(*at) >= RETIRED_FOR;
            if !old && self.retired.len() <= RETIRED_KEEP {
                break;
            }
            if self.retired.get(name).is_some_and(|r| r.at == *at) {
                self.retired.remove(name);
            }
            self.order.pop_front();
        }
    }

    /// The running instance of that name, else the retired one.
    pub(crate) fn find(&self, name: &str) -> Option<&Arc<Shared>> {
        self.live
            .get(name)
            .or_else(|| self.retired.get(name).map(|r| &r.shared))
    }

    /// The running instances of `definition`.
    pub(crate) fn of(&self, definition: &str) -> Vec<Arc<Shared>> {
        self.live
            .values()
            .filter(|s| &*s.def.read().unwrap_or_else(|e| e.into_inner()).name == definition)
            .cloned()
            .collect()
    }

    /// Every running instance.
    pub(crate) fn all_live(&self) -> impl Iterator<Item = &Arc<Shared>> {
        self.live.values()
    }

    /// Counts per definition.
    pub(crate) fn counts(&self) -> &FxHashMap<Arc<str>, InstanceCounts> {
        &self.counts
    }

    /// The definition the last retired instance of `definition` ran.
    pub(crate) fn last_def(&self, definition: &str) -> Option<&Arc<MachineDef>> {
        self.last_def.get(definition)
    }

    /// Instances after `after` in name order (running, else retired, one per name) that
    /// `keep` accepts, at most `limit`; and whether more follow.
    pub(crate) fn page(
        &self,
        after: Option<&str>,
        limit: usize,
        keep: impl Fn(&Shared) -> bool,
    ) -> (Vec<Arc<Shared>>, bool) {
        let lower = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        let mut live = self
            .live
            .range::<str, _>((lower, Bound::Unbounded))
            .map(|(_, s)| s)
            .peekable();
        let mut retired = self
            .retired
            .range::<str, _>((lower, Bound::Unbounded))
            .map(|(_, r)| &r.shared)
            .peekable();
        let mut out = Vec::new();
        loop {
            // Merge the two sorted sequences; a name in both is the running one.
            let next = match (live.peek(), retired.peek()) {
                (None, None) => break,
                (Some(_), None) => live.next(),
                (None, Some(_)) => retired.next(),
                (Some(l), Some(r)) => match l.name.cmp(&r.name) {
                    std::cmp::Ordering::Less => live.next(),
                    std::cmp::Ordering::Greater => retired.next(),
                    std::cmp::Ordering::Equal => {
                        retired.next();
                        live.next()
                    }
                },
            };
            let Some(s) = next else { break };
            if !keep(s) {
                continue;
            }
            if out.len() == limit {
                return (out, true);
            }
            out.push(s.clone());
        }
        (out, false)
    }
}

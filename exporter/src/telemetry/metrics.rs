//! The Prometheus metrics of docs/metrics.md, with prometheus-client; their names, help and
//! labels are [`super::catalogue`]'s.
//!
//! Every series a machine can produce is created when the machine starts (its states,
//! events and rules are known then), and its handles are kept in the machine's slot,
//! indexed by state, event and rule: no label hashing on the hot path. The series only a
//! machine's own task writes (transitions, events, and the duration histograms when no
//! exemplars are kept) are [`super::local`] ones: a plain load and store per update, no
//! locked instruction, no lock. Errors (also counted from outside the machine's task) and
//! histograms with exemplars (spans on) are prometheus-client's own; the choice between
//! the two kinds of duration histogram is `metrics/durations.rs`.

mod durations;

use std::sync::Arc;

use prometheus_client::encoding::{
    EncodeLabel as _, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use turnstile_engine::observe::ErrorKind;
use turnstile_engine::{MachineDef, MetricsDetail};

use super::catalogue;
use super::local::{CounterWriter, HistogramWriter, LocalCounter, LocalHistogram};
use durations::{state_histogram, DurationFamily, DurationSeries};

/// Buckets for event and action durations, in seconds: 50 µs to 60 s.
pub const FAST_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Buckets for time spent in a state, in seconds: 10 ms to 1 h. Coarser than the event
/// buckets on purpose: this family has one histogram per (machine, state), the largest
/// part of a scrape.
pub const STATE_BUCKETS: &[f64] = &[0.01, 0.1, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0];

/// Event outcomes, as label values.
pub const EVENT_OUTCOMES: [&str; 3] = ["transitioned", "ignored", "rejected"];
/// Action outcomes, as label values (`interrupted`: cut short by a transition).
pub const ACTION_OUTCOMES: [&str; 4] = ["ok", "error", "timeout", "interrupted"];
/// Label value for event names the config never mentions (bounded cardinality).
pub const OTHER_EVENT: &str = "_other";
/// `from` label of the transitions of a `from: "*"` rule (one series per rule).
pub const WILDCARD_FROM: &str = "*";

/// Exemplar labels: the sampled span an observation belongs to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceExemplar {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MachineL {
    machine: Arc<str>,
}
/// Writes `(name, value)` labels, skipping the `None` ones: a family whose series have
/// fewer labels at the default level than with detail (docs/metrics.md).
fn encode_labels(
    encoder: &mut LabelSetEncoder,
    labels: &[(&'static str, Option<&str>)],
) -> Result<(), std::fmt::Error> {
    for (name, value) in labels {
        if let Some(v) = value {
            (*name, *v).encode(encoder.encode_label())?;
        }
    }
    Ok(())
}

/// `turnstile_transitions_total`: by machine, and by rule with the `transitions` detail.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(super) struct TransitionL {
    machine: Arc<str>,
    /// (from, to, event).
    rule: Option<(Arc<str>, Arc<str>, Arc<str>)>,
}
impl EncodeLabelSet for TransitionL {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let r = self.rule.as_ref();
        encode_labels(
            encoder,
            &[
                ("machine", Some(&*self.machine)),
                ("from", r.map(|r| &*r.0)),
                ("to", r.map(|r| &*r.1)),
                ("event", r.map(|r| &*r.2)),
            ],
        )
    }
}
/// `turnstile_events_total`: by machine and outcome, and by event with the `transitions`
/// detail.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(super) struct EventL {
    machine: Arc<str>,
    event: Option<Arc<str>>,
    outcome: &'static str,
}
impl EncodeLabelSet for EventL {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        encode_labels(
            encoder,
            &[
                ("machine", Some(&*self.machine)),
                ("event", self.event.as_deref()),
                ("outcome", Some(self.outcome)),
            ],
        )
    }
}
/// `turnstile_action_duration_seconds`: by machine, and by action type and outcome with
/// the `actions` detail.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct ActionL {
    machine: Arc<str>,
    /// (action type, outcome).
    action: Option<(Arc<str>, &'static str)>,
}
impl EncodeLabelSet for ActionL {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let a = self.action.as_ref();
        encode_labels(
            encoder,
            &[
                ("machine", Some(&*self.machine)),
                ("action", a.map(|a| &*a.0)),
                ("outcome", a.map(|a| a.1)),
            ],
        )
    }
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorL {
    machine: Arc<str>,
    kind: &'static str,
}
/// `turnstile_state_duration_seconds`: by machine, and by state with the `states` detail.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct StateL {
    machine: Arc<str>,
    state: Option<Arc<str>>,
}
impl EncodeLabelSet for StateL {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        encode_labels(
            encoder,
            &[
                ("machine", Some(&*self.machine)),
                ("state", self.state.as_deref()),
            ],
        )
    }
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultL {
    result: ReloadResult,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionL {
    version: &'static str,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PluginL {
    pub plugin: String,
    pub version: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct JobsL {
    pub job_type: String,
    pub status: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct JobTypeL {
    pub job_type: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ConnStateL {
    pub state: &'static str,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct JobChangeL {
    pub machine: Arc<str>,
    pub job_type: String,
    pub change: &'static str,
}

/// `result` label of config reloads.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ReloadResult {
    /// The new config was swapped in.
    success,
    /// The new config was refused.
    failure,
}

/// Every metric family, registered once.
pub struct Metrics {
    pub(super) transitions: Family<TransitionL, LocalCounter>,
    pub(super) events: Family<EventL, LocalCounter>,
    event_duration: DurationFamily<MachineL>,
    action_duration: DurationFamily<ActionL>,
    errors: Family<ErrorL, Counter>,
    state_duration: Family<StateL, LocalHistogram, fn() -> LocalHistogram>,
    config_reloads: Family<ResultL, Counter>,
    /// 1 when the last reload succeeded, 0 when it refused a config.
    last_reload_successful: Gauge,
    /// Unix time of the last successful reload (the start before any).
    last_reload_success: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub(crate) plugin_info: Family<PluginL, Gauge>,
    pub(crate) jobs: Family<JobsL, Gauge>,
    pub(crate) oldest_pending: Family<JobTypeL, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub(crate) events_pending: Gauge,
    pub(crate) store_connections: Family<ConnStateL, Gauge>,
    pub(crate) job_changes: Family<JobChangeL, Counter>,
    /// Spans dropped because the export queue was full or the export failed.
    pub(crate) spans_dropped: Counter,
    /// Spans handed to the collector.
    pub(crate) spans_exported: Counter,
    /// Errors reported without a machine (config reloads, plugin loading, bad requests).
    global_errors: Vec<Counter>,
}

impl Metrics {
    /// Creates the families and registers them in `registry` (the `turnstile_` one).
    /// `exemplars`: the event and action duration histograms keep exemplars (the trace id
    /// of a sampled span; only when spans are exported).
    pub fn new(
        registry: &mut Registry,
        spans_exported: Counter,
        spans_dropped: Counter,
        exemplars: bool,
    ) -> Self {
        let m = Metrics {
            transitions: Family::default(),
            events: Family::default(),
            event_duration: DurationFamily::new(exemplars),
            action_duration: DurationFamily::new(exemplars),
            errors: Family::default(),
            state_duration: Family::new_with_constructor(state_histogram),
            config_reloads: Family::default(),
            last_reload_successful: Gauge::default(),
            last_reload_success: Gauge::default(),
            plugin_info: Family::default(),
            jobs: Family::default(),
            oldest_pending: Family::default(),
            events_pending: Gauge::default(),
            store_connections: Family::default(),
            job_changes: Family::default(),
            spans_dropped,
            spans_exported,
            global_errors: Vec::new(),
        };
        let build_info: Family<VersionL, Gauge> = Family::default();
        build_info
            .get_or_create(&VersionL {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        let r = registry;
        catalogue::BUILD_INFO.register(r, build_info);
        // `transitions` and `events` are written by the scrape-time collector
        // (`queue_depth.rs`), which adds the engine's own counts for the default level.
        m.event_duration.register(r, &catalogue::EVENT_DURATION);
        m.action_duration.register(r, &catalogue::ACTION_DURATION);
        catalogue::ERRORS.register(r, m.errors.clone());
        catalogue::STATE_DURATION.register(r, m.state_duration.clone());
        catalogue::CONFIG_RELOADS.register(r, m.config_reloads.clone());
        catalogue::CONFIG_LAST_RELOAD_SUCCESSFUL.register(r, m.last_reload_successful.clone());
        catalogue::CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP.register(r, m.last_reload_success.clone());
        // As Prometheus does: loading the configs at the start counts as a successful reload
        // (a process only starts with valid configs).
        m.config_reload_finished(true);
        catalogue::PLUGIN_INFO.register(r, m.plugin_info.clone());
        catalogue::JOBS.register(r, m.jobs.clone());
        catalogue::JOBS_OLDEST_PENDING_AGE.register(r, m.oldest_pending.clone());
        catalogue::STORE_EVENTS_PENDING.register(r, m.events_pending.clone());
        catalogue::STORE_CONNECTIONS.register(r, m.store_connections.clone());
        catalogue::JOB_CHANGES.register(r, m.job_changes.clone());
        catalogue::SPANS_DROPPED.register(r, m.spans_dropped.clone());
        catalogue::SPANS_EXPORTED.register(r, m.spans_exported.clone());
        for result in [ReloadResult::success, ReloadResult::failure] {
            let _ = m.config_reloads.get_or_create(&ResultL { result });
        }
        let global: Arc<str> = Arc::from("");
        let global_errors = ErrorKind::ALL
            .iter()
            .map(|k| {
                m.errors
                    .get_or_create(&ErrorL {
                        machine: global.clone(),
                        kind: k.as_str(),
                    })
                    .clone()
            })
            .collect();
        Metrics { global_errors, ..m }
    }

    /// Creates every series of a machine at the level `detail` and returns their handles.
    pub fn machine(&self, def: &MachineDef, detail: MetricsDetail) -> MachineMetrics {
        let machine: Arc<str> = def.name.clone();
        let n_events = def.events.len();
        let mut transitions: Vec<Option<u32>> = vec![None; def.states.len() * n_events];
        let mut transition_counters: Vec<CounterWriter> = Vec::new();
        // Without the detail, the engine's own count of the machine's transitions is the
        // series (read at scrape time): nothing to count here.
        if detail.transitions {
            self.rule_counters(def, &mut transitions, &mut transition_counters);
        }
        let events = event_labels(def, detail.transitions)
            .into_iter()
            .map(|event| {
                EVENT_OUTCOMES.map(|outcome| {
                    // Without the detail, transitioned events are the engine's count.
                    (event.is_some() || outcome != EVENT_OUTCOMES[0]).then(|| {
                        self.events
                            .get_or_create(&EventL {
                                machine: machine.clone(),
                                event: event.clone(),
                                outcome,
                            })
                            .writer()
                    })
                })
            })
            .collect();
        let mut kinds: Vec<Arc<str>> = def
            .states
            .iter()
            .flat_map(|s| s.entry.iter())
            .chain(def.rules.iter().flat_map(|r| r.actions.iter()))
            .map(|a| a.kind.clone())
            .collect();
        kinds.sort();
        kinds.dedup();
        let actions = if detail.actions {
            Actions::ByKind(
                kinds
                    .iter()
                    .map(|kind| {
                        ACTION_OUTCOMES.map(|outcome| {
                            self.action_duration.series(&ActionL {
                                machine: machine.clone(),
                                action: Some((kind.clone(), outcome)),
                            })
                        })
                    })
                    .collect(),
                kinds,
            )
        } else {
            Actions::All(self.action_duration.series(&ActionL {
                machine: machine.clone(),
                action: None,
            }))
        };
        let errors = ErrorKind::ALL.map(|k| {
            self.errors
                .get_or_create(&ErrorL {
                    machine: machine.clone(),
                    kind: k.as_str(),
                })
                .clone()
        });
        let states: Vec<Option<Arc<str>>> = if detail.states {
            def.states.iter().map(|s| Some(s.name.clone())).collect()
        } else {
            vec![None]
        };
        let state_duration = states
            .into_iter()
            .map(|state| {
                self.state_duration
                    .get_or_create(&StateL {
                        machine: machine.clone(),
                        state,
                    })
                    .writer()
            })
            .collect();
        let event_duration = self.event_duration.series(&MachineL {
            machine: machine.clone(),
        });
        MachineMetrics {
            detail,
            n_events,
            transitions,
            transition_counters,
            events,
            event_duration,
            actions,
            errors,
            state_duration,
        }
    }

    /// The `transitions` detail: a series per (state, event) a rule with `from:` states
    /// applies in, and one per `from: "*"` rule, `from="*"`, whatever state it leaves (so
    /// the series stay linear in the config's size: 1,000 states x 1,000 wildcard rules are
    /// 1,000 series, not a million).
    fn rule_counters(
        &self,
        def: &MachineDef,
        transitions: &mut [Option<u32>],
        counters: &mut Vec<CounterWriter>,
    ) {
        let n_events = def.events.len();
        let wildcard: Arc<str> = Arc::from(WILDCARD_FROM);
        // Wildcard rule (by address) -> its counter.
        let mut of_wildcard: std::collections::HashMap<
            *const turnstile_engine::runtime::def::Rule,
            u32,
        > = std::collections::HashMap::new();
        for (si, s) in def.states.iter().enumerate() {
            for e in 0..n_events {
                let Some(rule) = def.route(si, &def.events[e]) else {
                    continue;
                };
                let wild = rule.from.is_none();
                if wild {
                    if let Some(&ix) = of_wildcard.get(&std::ptr::from_ref(rule)) {
                        transitions[si * n_events + e] = Some(ix);
                        continue;
                    }
                }
                let ix = u32::try_from(counters.len()).unwrap_or(u32::MAX);
                counters.push(
                    self.transitions
                        .get_or_create(&TransitionL {
                            machine: def.name.clone(),
                            rule: Some((
                                if wild {
                                    wildcard.clone()
                                } else {
                                    s.name.clone()
                                },
                                def.states[rule.to].name.clone(),
                                def.events[e].clone(),
                            )),
                        })
                        .writer(),
                );
                if wild {
                    of_wildcard.insert(std::ptr::from_ref(rule), ix);
                }
                transitions[si * n_events + e] = Some(ix);
            }
        }
    }

    /// Removes the series a machine had at level `old` that it no longer has at level `new`
    /// (a reload changed its `metrics:` key): a family shows a machine at one level only,
    /// so that sums over it count each event once.
    pub fn forget_level(&self, def: &MachineDef, old: MetricsDetail, new: MetricsDetail) {
        let machine = &def.name;
        if old.transitions != new.transitions {
            let mut t = Vec::new();
            if old.transitions {
                let wildcard: Arc<str> = Arc::from(WILDCARD_FROM);
                for (si, s) in def.states.iter().enumerate() {
                    for e in &def.events {
                        if let Some(rule) = def.route(si, e) {
                            let from = if rule.from.is_none() {
                                wildcard.clone()
                            } else {
                                s.name.clone()
                            };
                            let to = def.states[rule.to].name.clone();
                            t.push(Some((from, to, e.clone())));
                        }
                    }
                }
            }
            for rule in t {
                self.transitions.remove(&TransitionL {
                    machine: machine.clone(),
                    rule,
                });
            }
            for event in event_labels(def, old.transitions) {
                for outcome in EVENT_OUTCOMES {
                    self.events.remove(&EventL {
                        machine: machine.clone(),
                        event: event.clone(),
                        outcome,
                    });
                }
            }
        }
        if old.states != new.states {
            let states: Vec<Option<Arc<str>>> = if old.states {
                def.states.iter().map(|s| Some(s.name.clone())).collect()
            } else {
                vec![None]
            };
            for state in states {
                self.state_duration.remove(&StateL {
                    machine: machine.clone(),
                    state,
                });
            }
        }
        if old.actions != new.actions {
            let mut labels = vec![ActionL {
                machine: machine.clone(),
                action: None,
            }];
            if old.actions {
                labels.clear();
                let kinds = def
                    .states
                    .iter()
                    .flat_map(|s| s.entry.iter())
                    .chain(def.rules.iter().flat_map(|r| r.actions.iter()))
                    .map(|a| a.kind.clone());
                for kind in kinds {
                    for outcome in ACTION_OUTCOMES {
                        labels.push(ActionL {
                            machine: machine.clone(),
                            action: Some((kind.clone(), outcome)),
                        });
                    }
                }
            }
            for l in &labels {
                self.action_duration.remove(l);
            }
        }
    }

    /// Counts a config reload.
    pub fn config_reload(&self, result: ReloadResult) {
        self.config_reloads.get_or_create(&ResultL { result }).inc();
    }

    /// Sets the last-reload gauges: `success`, and its time when it succeeded.
    pub fn config_reload_finished(&self, success: bool) {
        self.last_reload_successful.set(i64::from(success));
        if success {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            self.last_reload_success.set(now);
        }
    }

    /// Counts an error that belongs to no machine.
    pub fn global_error(&self, kind: ErrorKind) {
        if let Some(i) = ErrorKind::ALL.iter().position(|k| *k == kind) {
            self.global_errors[i].inc();
        }
    }
}

/// A machine's action duration series.
enum Actions {
    /// One for every action (the default level).
    All(DurationSeries),
    /// `[kind]` x [`ACTION_OUTCOMES`] (the `actions` detail), and the kinds.
    ByKind(Vec<[DurationSeries; 4]>, Vec<Arc<str>>),
}

/// One machine's series. Everything but the error counters may only be updated from the
/// machine's own task.
pub struct MachineMetrics {
    /// The level they were created at.
    pub(super) detail: MetricsDetail,
    n_events: usize,
    /// `[from * n_events + event_id]`: index in `transition_counters`; `None` where no
    /// rule exists.
    transitions: Vec<Option<u32>>,
    /// One per series: the machine's one (default level), or one per rule (a wildcard
    /// rule's is shared by every state it applies in).
    transition_counters: Vec<CounterWriter>,
    /// `[event_id]` x [`EVENT_OUTCOMES`]: one row at the default level (whose
    /// `transitioned` is the engine's count, read at scrape time: `None`), else one per
    /// event and a last one for [`OTHER_EVENT`].
    events: Vec<[Option<CounterWriter>; 3]>,
    event_duration: DurationSeries,
    actions: Actions,
    errors: [Counter; ErrorKind::ALL.len()],
    /// One (default level), or `[state]`.
    state_duration: Vec<HistogramWriter>,
}

impl MachineMetrics {
    /// The row of `events` for an event id (`None`: a name the config never mentions).
    #[inline]
    fn event_row(&self, event_id: Option<usize>) -> Option<&[Option<CounterWriter>; 3]> {
        let last = self.events.len().checked_sub(1)?;
        let i = event_id.filter(|&i| i < self.n_events).unwrap_or(last);
        self.events.get(i.min(last))
    }

    /// A transition from `from` on `event_id`, after `time_in_from_ns` nanoseconds in
    /// `from` (`None`: not timed).
    #[inline]
    pub fn transition(&self, from: usize, event_id: usize, time_in_from_ns: Option<u64>) {
        if let Some(Some(ix)) = self.transitions.get(from * self.n_events + event_id) {
            if let Some(c) = self.transition_counters.get(*ix as usize) {
                c.inc();
            }
        }
        if let Some(ns) = time_in_from_ns {
            let last = self.state_duration.len().saturating_sub(1);
            if let Some(h) = self.state_duration.get(from.min(last)) {
                h.observe_nanos(ns);
            }
        }
    }

    /// A transition from `from` on `event_id` whose event ended with it (no actions), after
    /// `ns` nanoseconds: [`Self::transition`] and [`Self::event`] (transitioned, no
    /// exemplar).
    #[inline]
    pub fn transition_finished(
        &self,
        from: usize,
        event_id: usize,
        time_in_from_ns: Option<u64>,
        ns: Option<u64>,
    ) {
        self.transition(from, event_id, time_in_from_ns);
        if let Some(Some(c)) = self.event_row(Some(event_id)).map(|r| &r[0]) {
            c.inc();
        }
        if let Some(ns) = ns {
            self.event_duration.observe_nanos_with(ns, None);
        }
    }

    /// An event ended (after `ns` nanoseconds, observed when given).
    #[inline]
    pub fn event(
        &self,
        event_id: Option<usize>,
        outcome: usize,
        ns: Option<u64>,
        exemplar: Option<TraceExemplar>,
    ) {
        if let Some(Some(c)) = self.event_row(event_id).and_then(|o| o.get(outcome)) {
            c.inc();
        }
        if let Some(ns) = ns {
            self.event_duration.observe_nanos_with(ns, exemplar);
        }
    }

    /// An action ended.
    #[inline]
    pub fn action(
        &self,
        kind: &str,
        outcome: usize,
        seconds: f64,
        exemplar: Option<TraceExemplar>,
    ) {
        match &self.actions {
            Actions::All(h) => h.observe(seconds, exemplar),
            Actions::ByKind(series, kinds) => {
                if let Some(k) = kinds.iter().position(|k| &**k == kind) {
                    if let Some(h) = series[k].get(outcome) {
                        h.observe(seconds, exemplar);
                    }
                }
            }
        }
    }

    /// An error.
    #[inline]
    pub fn error(&self, kind: ErrorKind) {
        if let Some(i) = ErrorKind::ALL.iter().position(|k| *k == kind) {
            self.errors[i].inc();
        }
    }
}

/// The `event` label values of a machine's `turnstile_events_total` series: each event
/// name of its config and `_other` with the transitions detail, one series without the
/// label otherwise.
fn event_labels(def: &MachineDef, transitions: bool) -> Vec<Option<Arc<str>>> {
    if transitions {
        def.events
            .iter()
            .cloned()
            .chain([Arc::from(OTHER_EVENT)])
            .map(Some)
            .collect()
    } else {
        vec![None]
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use turnstile_engine::{config, ActionRegistry};

    /// `n` states and `n` `from: "*"` rules (44 KB for 1,000).
    fn wide(n: usize) -> String {
        let mut y = String::from("metadata: {machine_name: wide}\ninitial_state: s0\nstates: [");
        y.push_str(
            &(0..n)
                .map(|i| format!("s{i}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        y.push_str("]\ntransitions:\n");
        for i in 0..n {
            y.push_str(&format!("  - {{from: \"*\", to: s{i}, event: e{i}}}\n"));
        }
        y
    }

    #[test]
    fn a_wildcard_rule_is_one_series_whatever_state_it_leaves() {
        let loaded = config::load_str(&wide(1000), None, &ActionRegistry::with_builtins());
        let def = loaded.def.unwrap();
        let mut registry = Registry::with_prefix("turnstile");
        let m = Metrics::new(&mut registry, Counter::default(), Counter::default(), false);
        let mm = m.machine(&def, MetricsDetail::ALL);
        // e7 from two different states: both counted in the rule's one series.
        let e7 = def.event_index("e7").unwrap();
        mm.transition(3, e7, Some(0));
        mm.transition(500, e7, None);
        catalogue::TRANSITIONS.register(&mut registry, m.transitions.clone());
        let mut page = String::new();
        prometheus_client::encoding::text::encode(&mut page, &registry).unwrap();
        let series: Vec<&str> = page
            .lines()
            .filter(|l| l.starts_with("turnstile_transitions_total{"))
            .collect();
        assert_eq!(series.len(), 1000);
        assert!(
            series.contains(
                &"turnstile_transitions_total{machine=\"wide\",from=\"*\",to=\"s7\",event=\"e7\"} 2"
            ),
            "{:?}",
            &series[..3]
        );
        assert!(page.len() < 2_000_000, "{} bytes", page.len());
    }
}

//! The series read from the engine's status when `/metrics` is rendered rather than fed
//! by the observer: `turnstile_event_queue_depth`, `turnstile_state_entered_timestamp_seconds`
//! `turnstile_machine_state`, `turnstile_machine_paused`, `turnstile_machine_instances` and
//! `turnstile_singleton_holder`, and the default level's counts of transitions and
//! transitioned events (in the families of `turnstile_transitions_total` and
//! `turnstile_events_total`, with the observer's own series of those). Run-time instances
//! count there under their definition's name, added to the machine of that name when the
//! process runs one (one series per label set), never one series per instance.
//!
//! Its own file because this collector reads the engine's [`EngineStatus`], not the
//! machines' slots, and runs only at scrape time, apart from everything the observer does.

use std::sync::{Arc, OnceLock};

use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use turnstile_engine::{EngineStatus, MetricsDetail};

use super::catalogue;
use super::local::LocalCounter;
use super::metrics::{EventL, TransitionL, EVENT_OUTCOMES};

/// `turnstile_event_queue_depth` and `turnstile_machine_state`, read from the engine at
/// scrape time: a machine stuck in a long action still shows its queue growing, and the
/// hot path pays nothing for them. Also `turnstile_transitions_total` and
/// `turnstile_events_total`: at the default level a machine's transitions (and so its
/// transitioned events) are the engine's own count, read here, so that an action-less
/// event costs the observer nothing ([`QuickTiming`]); the series the observer counts
/// (per rule and per event with the `transitions` detail, ignored and rejected events)
/// follow them in the same families.
///
/// [`QuickTiming`]: turnstile_engine::observe::QuickTiming
pub(super) struct QueueDepth {
    pub(super) engine: Arc<OnceLock<EngineStatus>>,
    /// The process's `--metrics-detail`, to which each config's own is added.
    pub(super) detail: MetricsDetail,
    pub(super) transitions: Family<TransitionL, LocalCounter>,
    pub(super) events: Family<EventL, LocalCounter>,
}

impl std::fmt::Debug for QueueDepth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueDepth").finish_non_exhaustive()
    }
}

impl prometheus_client::collector::Collector for QueueDepth {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        let status = self
            .engine
            .get()
            .map(EngineStatus::machines)
            .unwrap_or_default();
        let counted = |m: &&turnstile_engine::MachineStatus| {
            !self.detail.union(m.def.metrics_detail).transitions
        };
        let definitions = self
            .engine
            .get()
            .map(EngineStatus::instance_counts)
            .unwrap_or_default();
        // Per machine label: the machine's transitions plus its definition's instances'
        // (at the default level, where the observer does not count them).
        let mut totals: Vec<(&str, u64)> = status
            .iter()
            .filter(counted)
            .map(|m| (&*m.name, m.transitions))
            .collect();
        for d in &definitions {
            if self.detail.union(d_detail(&status, d)).transitions {
                continue;
            }
            match totals.iter_mut().find(|(n, _)| *n == &*d.definition) {
                Some((_, t)) => *t += d.transitions,
                None => totals.push((&d.definition, d.transitions)),
            }
        }
        let mut me = catalogue::TRANSITIONS.describe(&mut encoder)?;
        for (name, n) in &totals {
            let labels = [("machine", *name)];
            ConstCounter::new(*n).encode(me.encode_family(&labels)?)?;
        }
        self.transitions.encode(me)?;
        let mut me = catalogue::EVENTS.describe(&mut encoder)?;
        for (name, n) in &totals {
            let labels = [("machine", *name), ("outcome", EVENT_OUTCOMES[0])];
            ConstCounter::new(*n).encode(me.encode_family(&labels)?)?;
        }
        self.events.encode(me)?;
        let Some(engine) = self.engine.get() else {
            return Ok(());
        };
        let mut me = catalogue::EVENT_QUEUE_DEPTH.describe(&mut encoder)?;
        for m in &status {
            let g = ConstGauge::new(i64::try_from(m.queue_depth).unwrap_or(i64::MAX));
            let labels = [("machine", &*m.name)];
            g.encode(me.encode_family(&labels)?)?;
        }
        let mut me = catalogue::STATE_ENTERED_TIMESTAMP.describe(&mut encoder)?;
        for m in &status {
            let t = m
                .since
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            let labels = [("machine", &*m.name)];
            ConstGauge::new(t).encode(me.encode_family(&labels)?)?;
        }
        let mut me = catalogue::MACHINE_STATE.describe(&mut encoder)?;
        for m in &status {
            if self.detail.union(m.def.metrics_detail).states {
                for s in &m.def.states {
                    let g = ConstGauge::new(i64::from(s.name == m.state));
                    let labels = [("machine", &*m.name), ("state", &*s.name)];
                    g.encode(me.encode_family(&labels)?)?;
                }
            } else {
                let labels = [("machine", &*m.name), ("state", &*m.state)];
                ConstGauge::new(1).encode(me.encode_family(&labels)?)?;
            }
        }
        let mut me = catalogue::MACHINE_PAUSED.describe(&mut encoder)?;
        for m in &status {
            let labels = [("machine", &*m.name)];
            let paused = m.paused && m.running;
            ConstGauge::new(i64::from(paused)).encode(me.encode_family(&labels)?)?;
        }
        let mut me = catalogue::MACHINE_INSTANCES.describe(&mut encoder)?;
        for d in &definitions {
            for (state, n) in &d.states {
                let labels = [("machine", &*d.definition), ("state", &**state)];
                let g = ConstGauge::new(i64::try_from(*n).unwrap_or(i64::MAX));
                g.encode(me.encode_family(&labels)?)?;
            }
        }
        let mut me = catalogue::SINGLETON_HOLDER.describe(&mut encoder)?;
        for s in engine.singletons() {
            let g = ConstGauge::new(i64::from(
                s.role == turnstile_engine::runtime::singleton::Role::Holder,
            ));
            let labels = [("machine", &*s.name)];
            g.encode(me.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The metric detail of a definition's own config: the running machine's of that name, else
/// the one its instances run (the latest, with its reloads).
fn d_detail(
    status: &[turnstile_engine::MachineStatus],
    d: &turnstile_engine::DefinitionInstances,
) -> MetricsDetail {
    status
        .iter()
        .find(|m| m.name == d.definition)
        .map(|m| m.def.metrics_detail)
        .or(d.detail)
        .unwrap_or(MetricsDetail::NONE)
}

//! The gauges read from the engine's status when `/metrics` is rendered rather than fed
//! by the observer: `turnstile_event_queue_depth`, `turnstile_state_entered_timestamp_seconds`
//! `turnstile_machine_state`, `turnstile_machine_paused` and `turnstile_singleton_holder`.
//!
//! Its own file because this collector reads the engine's [`EngineStatus`], not the
//! machines' slots, and runs only at scrape time, apart from everything the observer does.

use std::sync::{Arc, OnceLock};

use prometheus_client::metrics::gauge::ConstGauge;
use turnstile_engine::EngineStatus;

use super::catalogue;

/// `turnstile_event_queue_depth` and `turnstile_machine_state`, read from the engine at
/// scrape time: a machine stuck in a long action still shows its queue growing, and the
/// hot path pays nothing for them.
#[derive(Debug)]
pub(super) struct QueueDepth(pub(super) Arc<OnceLock<EngineStatus>>);

impl prometheus_client::collector::Collector for QueueDepth {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        let Some(engine) = self.0.get() else {
            return Ok(());
        };
        let mut me = catalogue::EVENT_QUEUE_DEPTH.describe(&mut encoder)?;
        let status = engine.machines();
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
            for s in &m.def.states {
                let g = ConstGauge::new(i64::from(s.name == m.state));
                let labels = [("machine", &*m.name), ("state", &*s.name)];
                g.encode(me.encode_family(&labels)?)?;
            }
        }
        let mut me = catalogue::MACHINE_PAUSED.describe(&mut encoder)?;
        for m in &status {
            let labels = [("machine", &*m.name)];
            let paused = m.paused && m.running;
            ConstGauge::new(i64::from(paused)).encode(me.encode_family(&labels)?)?;
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

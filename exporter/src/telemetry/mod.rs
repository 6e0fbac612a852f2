//! Turns what the engine reports ([`Observer`]) into Prometheus metrics, OpenTelemetry
//! spans and the ring buffers behind `/trace` and `/errors`.
//!
//! Everything about one machine lives in its slot (`slot.rs`; created in `machine_started`,
//! kept in the engine's per-machine [`ObserverSlot`]): metric handles, the span and record
//! of the event it is processing, its `/trace` ring. Calls for a machine come from its own
//! task, so the per-machine locks are never contended; nothing on the hot path is shared
//! across machines.
//!
//! This file holds what all machines share: [`TelemetryConfig`], [`Telemetry`] (building
//! it, wiring it to an engine, rendering `/metrics`) and what the sidecar reads (`/trace`,
//! `/errors`, `/stats`). The [`Observer`] calls are in `observer.rs`, the end of an event
//! (the hot path) in `event.rs`, the gauges read at scrape time in `queue_depth.rs`, the
//! live record stream behind `GET /events` in `stream.rs` (the ring and its readers) and
//! `stream_feed.rs` (the records the observer puts on it) and `stream_lane.rs` (a busy
//! machine's own buffer in front of the ring, written without a lock).
//!
//! [`Observer`]: turnstile_engine::Observer
//! [`ObserverSlot`]: turnstile_engine::observe::ObserverSlot

pub mod catalogue;
mod event;
mod local;
pub mod metrics;
mod native;
mod observer;
pub mod operations;
mod process;
mod queue_depth;
pub mod records;
mod slot;
pub mod spans;
pub mod stream;
mod stream_feed;
mod stream_lane;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use serde_json::{json, Value as Json};
use turnstile_engine::observe::{ErrorKind, QuickTiming};
use turnstile_engine::{
    ActionRegistry, Engine, EngineBuilder, EngineStatus, MachineDef, MetricsDetail,
};

use metrics::Metrics;
use queue_depth::QueueDepth;
use records::{ErrorRecord, Ring, TraceRecord};
use slot::Slot;
use spans::{SpanSettings, Spans};

/// [`TelemetryConfig::timing_sample`] by default.
pub const DEFAULT_TIMING_SAMPLE: u32 = 32;

/// The formats `/metrics` answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposition {
    /// Prometheus text 0.0.4.
    Text = 0,
    /// OpenMetrics 1.0 text, with exemplars.
    OpenMetrics = 1,
    /// Prometheus protobuf (`io.prometheus.client.MetricFamily`, length-delimited), with
    /// native histograms and exemplars.
    Protobuf = 2,
}

/// What to collect.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// Records kept per machine for `/trace` (0: none).
    pub trace_buffer: usize,
    /// Records kept for `/errors`.
    pub error_buffer: usize,
    /// Span export; `None`: no spans.
    pub spans: Option<SpanSettings>,
    /// Output captured from actions kept per `/trace` record, in bytes.
    pub output_limit: usize,
    /// Metric breakdowns shown for every machine beyond the default series
    /// (`--metrics-detail`); a config's own `metrics:` key adds to it for its machine.
    pub metrics_detail: MetricsDetail,
    /// With the metrics only (no records, no spans), one action-less event in this many
    /// is timed (`--metrics-timing-sample`; 1: every one). Counts stay exact; events with
    /// actions are always timed.
    pub timing_sample: u32,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            trace_buffer: 1000,
            error_buffer: 1000,
            spans: None,
            output_limit: 1024,
            metrics_detail: MetricsDetail::NONE,
            timing_sample: DEFAULT_TIMING_SAMPLE,
        }
    }
}

/// The telemetry of one engine: an [`Observer`](turnstile_engine::Observer) plus what the sidecar serves.
pub struct Telemetry {
    config: TelemetryConfig,
    registry: Registry,
    metrics: Arc<Metrics>,
    spans: Option<Spans>,
    machines: Mutex<Vec<Arc<Slot>>>,
    /// The `/trace` records of run-time instances: per definition, one ring per thread,
    /// shared by its instances (their slots are not in `machines`: there may be 100,000).
    instance_traces: Mutex<std::collections::HashMap<Arc<str>, Arc<records::ThreadRings>>>,
    /// What the slots of run-time instances share, per definition (the definition they
    /// run: replaced after a reload).
    recipes: Mutex<std::collections::HashMap<Arc<str>, Arc<slot::Recipe>>>,
    errors: Ring<ErrorRecord>,
    /// The engine's read-only status handle, set by [`Telemetry::install`].
    engine: Arc<OnceLock<EngineStatus>>,
    started: Instant,
    started_at: SystemTime,
    /// The last `/metrics` page per format (indexed by [`Exposition`]) and when it was
    /// finished.
    pages: [tokio::sync::Mutex<Option<(Instant, bytes::Bytes)>>; 3],
    last_page_size: std::sync::atomic::AtomicUsize,
    /// The live record stream (`GET /events`).
    stream: Arc<stream::Stream>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Builds the metrics (and the span pipeline when configured).
    pub fn new(
        config: TelemetryConfig,
    ) -> Result<Arc<Self>, opentelemetry_otlp::ExporterBuildError> {
        let spans_exported = Counter::default();
        let spans_dropped = Counter::default();
        let spans = match &config.spans {
            Some(s) => Some(Spans::new(
                s,
                spans_exported.clone(),
                spans_dropped.clone(),
            )?),
            None => None,
        };
        let engine = Arc::new(OnceLock::new());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(process::ProcessCollector));
        let sub = registry.sub_registry_with_prefix("turnstile");
        let metrics = Metrics::new(sub, spans_exported, spans_dropped, spans.is_some());
        sub.register_collector(Box::new(QueueDepth {
            engine: engine.clone(),
            detail: config.metrics_detail,
            transitions: metrics.transitions.clone(),
            events: metrics.events.clone(),
        }));
        let stream = Arc::new(stream::Stream::default());
        catalogue::STREAM_CLIENTS.register(sub, stream.clients_gauge.clone());
        catalogue::STREAM_DROPPED.register(sub, stream.dropped.clone());
        Ok(Arc::new(Telemetry {
            errors: Ring::new(config.error_buffer),
            config,
            registry,
            metrics: Arc::new(metrics),
            spans,
            machines: Mutex::new(Vec::new()),
            instance_traces: Mutex::default(),
            recipes: Mutex::default(),
            engine,
            started: Instant::now(),
            started_at: SystemTime::now(),
            pages: Default::default(),
            last_page_size: std::sync::atomic::AtomicUsize::new(64 * 1024),
            stream,
        }))
    }

    /// Builds the engine this telemetry observes: the one place where telemetry is wired
    /// to an engine. It becomes the engine's observer (and so the observer of whatever
    /// reports through the engine: config reloads, the machines' sockets), the observer of
    /// `plugins`' host (refused plugin versions, hot swaps), and it keeps the engine's
    /// read-only [`EngineStatus`] for the scrape-time gauges and `/stats`.
    ///
    /// A function taking the builder rather than a method of `EngineBuilder`: the engine
    /// crate knows nothing of telemetry, and the status handle only exists once the
    /// engine is built. The handle, not the engine, is kept: the engine holds its observer,
    /// and an observer holding the engine would keep both alive for ever.
    ///
    /// Telemetry observes one engine: a second call's engine reports to it too, but the
    /// gauges and `/stats` keep showing the first one's machines.
    pub fn install(self: &Arc<Self>, builder: EngineBuilder, plugins: &ActionRegistry) -> Engine {
        plugins.plugin_host().set_observer(self.clone());
        let engine = builder.observer(self.clone()).build();
        let _ = self.engine.set(engine.status_handle());
        engine
    }

    /// Flushes spans; call once on the way out.
    pub fn shutdown(&self) {
        if let Some(s) = &self.spans {
            s.shutdown();
        }
    }

    /// The exposition for `/metrics`, rendered off the async threads. Scrapes that arrive
    /// while a page is being rendered share it (single flight): a page is at most one
    /// render old (a few milliseconds), and a burst of scrapes costs one render instead of
    /// one each, so scraping never starves the machines.
    pub async fn metrics_page(self: &Arc<Self>, format: Exposition) -> bytes::Bytes {
        let arrived = Instant::now();
        let slot = &self.pages[format as usize];
        let mut last = slot.lock().await;
        if let Some((finished, page)) = &*last {
            if *finished >= arrived {
                return page.clone();
            }
        }
        let me = self.clone();
        let render = move || match format {
            Exposition::Text => me.render_metrics(false).into_bytes(),
            Exposition::OpenMetrics => me.render_metrics(true).into_bytes(),
            Exposition::Protobuf => me.render_protobuf(),
        };
        let page = match tokio::task::spawn_blocking(render).await {
            Ok(page) => bytes::Bytes::from(page),
            Err(e) => {
                tracing::error!(target: "turnstile::metrics", "rendering metrics failed: {e}");
                bytes::Bytes::new()
            }
        };
        *last = Some((Instant::now(), page.clone()));
        page
    }

    /// The exposition: OpenMetrics (with exemplars) or Prometheus text 0.0.4.
    pub fn render_metrics(&self, openmetrics: bool) -> String {
        // Start at the last page's size: no repeated doubling of a megabyte buffer.
        let size = self.last_page_size.load(Ordering::Relaxed);
        let mut out = String::with_capacity(size + size / 8 + 4096);
        let r = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        };
        if let Err(e) = r {
            tracing::error!(target: "turnstile::metrics", "encoding metrics failed: {e}");
        }
        self.last_page_size.store(out.len(), Ordering::Relaxed);
        out
    }

    /// The protobuf exposition (length-delimited `io.prometheus.client.MetricFamily`
    /// messages): every family, the duration histograms with their native buckets beside
    /// the classic ones (docs/metrics.md).
    pub fn render_protobuf(&self) -> Vec<u8> {
        let (page, error) = native::encode_protobuf(&self.registry);
        if let Some(e) = error {
            tracing::error!(target: "turnstile::metrics", "{e}");
        }
        page
    }

    /// Shows loaded plugins in `turnstile_plugin_info`.
    pub fn set_plugins(&self, plugins: &[(String, String)]) {
        for (name, version) in plugins {
            self.metrics
                .plugin_info
                .get_or_create(&metrics::PluginL {
                    plugin: name.clone(),
                    version: version.clone(),
                })
                .set(1);
        }
    }

    /// Sets `turnstile_jobs{job_type, status}`.
    pub fn set_jobs(&self, job_type: &str, status: &str, count: i64) {
        self.metrics
            .jobs
            .get_or_create(&metrics::JobsL {
                job_type: job_type.to_owned(),
                status: status.to_owned(),
            })
            .set(count);
    }

    /// Sets the queue health gauges from the store's report: the age of each type's
    /// oldest pending job (0 for `known_types` with none pending), the events not yet
    /// processed, the pool's connections.
    pub fn set_queue_health(
        &self,
        health: &turnstile_engine::store::QueueHealth,
        known_types: &[String],
    ) {
        let now = SystemTime::now();
        for t in known_types {
            let age =
                health
                    .oldest_pending
                    .iter()
                    .find(|(ty, _)| ty == t)
                    .map_or(0.0, |(_, at)| {
                        now.duration_since(at.system_time())
                            .unwrap_or_default()
                            .as_secs_f64()
                    });
            self.metrics
                .oldest_pending
                .get_or_create(&metrics::JobTypeL {
                    job_type: t.clone(),
                })
                .set(age);
        }
        self.metrics
            .events_pending
            .set(i64::try_from(health.events_pending).unwrap_or(i64::MAX));
        if let Some((open, busy)) = health.connections {
            for (state, n) in [("open", open), ("in_use", busy)] {
                self.metrics
                    .store_connections
                    .get_or_create(&metrics::ConnStateL { state })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }

    /// Records an error that belongs to no machine's event (bad requests, reloads, ...).
    pub fn report_error(&self, kind: ErrorKind, machine: Option<&str>, message: &str) {
        let slot = machine.and_then(|m| self.slots().into_iter().rev().find(|s| &*s.name == m));
        match slot {
            Some(s) => s.metrics.error(kind),
            None => self.metrics.global_error(kind),
        }
        let record = ErrorRecord {
            timestamp: records::timestamp(SystemTime::now()),
            error_type: kind.as_str(),
            message: message.to_owned(),
            machine: machine.map(str::to_owned),
            instance: None,
            state: None,
            event: None,
            trace_id: None,
        };
        if self.stream.active() {
            self.stream_error(&record);
        }
        self.errors.push(record);
    }

    /// `/trace`: newest first.
    pub fn traces(&self, limit: usize, machine: Option<&str>, trace_id: Option<&str>) -> Vec<Json> {
        let slots = self.slots();
        let mut all: Vec<TraceRecord> = Vec::new();
        for ring in slots
            .iter()
            .filter(|s| machine.is_none_or(|m| *s.name == *m))
            .filter_map(|s| s.trace.as_ref())
        {
            all.extend(ring.newest(limit, |r| {
                trace_id.is_none_or(|t| r.trace_id.as_deref() == Some(t))
            }));
        }
        // Instances: `machine` is their definition or their own name.
        let rings: Vec<Arc<Ring<TraceRecord>>> = self
            .instance_traces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flat_map(|t| t.all())
            .collect();
        for ring in rings {
            all.extend(ring.newest(limit, |r| {
                machine.is_none_or(|m| *r.machine == *m || r.instance.as_deref() == Some(m))
                    && trace_id.is_none_or(|t| r.trace_id.as_deref() == Some(t))
            }));
        }
        all.sort_by_key(|r| std::cmp::Reverse(r.at));
        all.truncate(limit);
        all.iter().map(TraceRecord::to_json).collect()
    }

    /// `/errors`: newest first.
    pub fn errors(
        &self,
        limit: usize,
        machine: Option<&str>,
        kind: Option<&str>,
    ) -> Vec<ErrorRecord> {
        self.errors.newest(limit, |e| {
            machine
                .is_none_or(|m| e.machine.as_deref() == Some(m) || e.instance.as_deref() == Some(m))
                && kind.is_none_or(|k| e.error_type == k)
        })
    }

    /// `/stats`.
    pub fn stats(&self, listen: Option<&str>) -> Json {
        let slots = self.slots();
        // Timed events (weighted: action-less events may be sampled) give the average;
        // the engine counts every event.
        let timed: u64 = slots
            .iter()
            .map(|s| s.processed.load(Ordering::Relaxed))
            .sum();
        let busy_ns: u64 = slots
            .iter()
            .map(|s| s.busy_ns.load(Ordering::Relaxed))
            .sum();
        let avg_ms = if timed == 0 {
            0.0
        } else {
            busy_ns as f64 / timed as f64 / 1e6
        };
        let definitions = self
            .engine
            .get()
            .map(EngineStatus::instance_counts)
            .unwrap_or_default();
        let processed = self.engine.get().map_or(timed, |e| {
            e.machines().iter().map(|m| m.events).sum::<u64>()
                + definitions.iter().map(|d| d.events).sum::<u64>()
        });
        let machines: serde_json::Map<String, Json> = self
            .engine
            .get()
            .map(|e| {
                e.machines()
                    .into_iter()
                    .map(|m| {
                        (
                            m.name.to_string(),
                            json!({
                                "state": &*m.state,
                                "since": records::timestamp(m.since),
                                "transitions": m.transitions,
                                "events": m.events,
                                "errors": m.errors,
                                "queue_depth": m.queue_depth,
                                "running": m.running,
                            }),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        // Instances started at run time, per definition (never one entry per instance).
        let instances: serde_json::Map<String, Json> = definitions
            .into_iter()
            .map(|d| {
                let states: serde_json::Map<String, Json> = d
                    .states
                    .iter()
                    .map(|(s, n)| (s.to_string(), json!(n)))
                    .collect();
                (
                    d.definition.to_string(),
                    json!({
                        "running": d.running,
                        "started": d.counts.started,
                        "retired": d.counts.retired,
                        "states": states,
                    }),
                )
            })
            .collect();
        json!({
            "processed_events": processed,
            "average_processing_time_ms": avg_ms,
            "active_workers": self.engine.get().map_or(0, EngineStatus::running),
            "uptime_seconds": self.started.elapsed().as_secs_f64(),
            "started_at": records::timestamp(self.started_at),
            "version": env!("CARGO_PKG_VERSION"),
            "listen": listen,
            "spans": self.spans.is_some(),
            "machines": machines,
            "instances": instances,
        })
    }

    fn slots(&self) -> Vec<Arc<Slot>> {
        self.machines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How a machine's action-less events are timed and reported to its slot: sampled
    /// with the metrics only, each one reported when the counts are per rule.
    fn quick_timing(&self, def: &MachineDef) -> QuickTiming {
        QuickTiming {
            every: if self.metrics_only() {
                self.config.timing_sample.max(1)
            } else {
                1
            },
            report_untimed: self.detail(def).transitions,
            report_untimed_while: None,
        }
    }

    /// The level of a machine's metrics: the process's, with its config's own.
    fn detail(&self, def: &MachineDef) -> MetricsDetail {
        self.config.metrics_detail.union(def.metrics_detail)
    }

    /// Neither `/trace` records nor spans: events and actions only update metrics.
    #[inline]
    fn metrics_only(&self) -> bool {
        self.config.trace_buffer == 0 && self.spans.is_none()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use turnstile_engine::{Event, Observer};

    /// The telemetry keeps a status handle, not the engine: dropping the engine (and the
    /// registry whose plugin host it observes) leaves the telemetry with one owner, and the
    /// scrape-time gauges still read the machines.
    #[tokio::test]
    async fn an_installed_telemetry_does_not_keep_its_engine_alive() {
        let t = Telemetry::new(TelemetryConfig::default()).unwrap();
        let plugins = ActionRegistry::with_builtins();
        let engine = t.install(Engine::builder(), &plugins);
        let yaml = "metadata: {machine_name: m}\ninitial_state: a\nstates: [a, b]\n\
                    transitions:\n  - {from: a, to: b, event: go}\n";
        let def = turnstile_engine::config::load_str(yaml, None, &plugins)
            .def
            .unwrap();
        engine.spawn(def).unwrap();
        assert_eq!(t.stats(None)["active_workers"], 1);
        assert!(t
            .render_metrics(false)
            .contains("turnstile_machine_state{machine=\"m\",state=\"a\"} 1"));
        engine.shutdown();
        engine.join().await;
        drop(engine);
        drop(plugins);
        assert_eq!(
            Arc::strong_count(&t),
            1,
            "something still owns the telemetry"
        );
        assert_eq!(t.stats(None)["machines"]["m"]["state"], "a");
    }

    /// The sum of the samples of `family` for machine `m` whose line contains `with`.
    fn sum_of(page: &str, family: &str, m: &str, with: &str) -> f64 {
        let label = format!("machine=\"{m}\"");
        page.lines()
            .filter(|l| l.starts_with(&format!("{family}{{")))
            .filter(|l| l.contains(&label) && l.contains(with))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Instances count under their definition's series through writers shared per thread:
    /// events sent to 300 instances from two tasks on two workers are all counted, with the
    /// config machine's, in the same series; and each has its `/trace` record (the
    /// instances' in the rings of the threads that recorded them), newest first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn instances_on_two_workers_count_every_event_in_their_definitions_series() {
        let t = Telemetry::new(TelemetryConfig {
            metrics_detail: MetricsDetail::ALL,
            trace_buffer: 10_000,
            ..TelemetryConfig::default()
        })
        .unwrap();
        let plugins = ActionRegistry::with_builtins();
        let engine = t.install(Engine::builder(), &plugins);
        let yaml = "metadata: {machine_name: flip}\ninitial_state: a\nstates: [a, b]\n\
                    events: [flip]\ntransitions:\n  - {from: a, to: b, event: flip}\n  \
                    - {from: b, to: a, event: flip}\n";
        let def = turnstile_engine::config::load_str(yaml, None, &plugins)
            .def
            .unwrap();
        engine.spawn(def).unwrap();
        const N: usize = 300;
        for i in 0..N {
            engine
                .start_instance("flip", Some(&format!("i{i}")), serde_json::Map::new())
                .unwrap();
        }
        let mut senders = Vec::new();
        for k in 0..2 {
            let engine = engine.clone();
            senders.push(tokio::spawn(async move {
                for i in (k..N).step_by(2) {
                    for ev in ["flip", "flip", "flip", "nonsense"] {
                        let name = format!("i{i}");
                        engine.send(&name, Event::new(Arc::from(ev))).await.unwrap();
                    }
                }
            }));
        }
        for ev in ["flip", "nonsense"] {
            engine
                .send("flip", Event::new(Arc::from(ev)))
                .await
                .unwrap();
        }
        for s in senders {
            s.await.unwrap();
        }
        let events = || {
            let instances: u64 = engine
                .status_handle()
                .instance_counts()
                .iter()
                .map(|d| d.events)
                .sum();
            instances + engine.machine("flip").map_or(0, |m| m.events)
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while events() < (N * 4 + 2) as u64 {
            assert!(std::time::Instant::now() < deadline, "not all handled");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // Rendered once every machine stopped: an event's count in the engine's status can
        // come before its report to the telemetry is done.
        engine.shutdown();
        engine.join().await;
        let page = t.render_metrics(false);
        let all = t.traces(100_000, Some("flip"), None);
        assert_eq!(all.len(), N * 4 + 2, "every event has its record");
        let at = |r: &Json| r["timestamp"].as_str().unwrap().to_owned();
        assert!(
            all.windows(2).all(|w| at(&w[0]) >= at(&w[1])),
            "newest first"
        );
        let one = t.traces(100, Some("i7"), None);
        assert_eq!(one.len(), 4, "{one:#?}");
        assert!(
            one.iter()
                .all(|r| r["data"]["instance"] == "i7" && r["data"]["machine"] == "flip"),
            "{one:#?}"
        );
        let transitions = (N * 3 + 1) as f64;
        assert_eq!(
            sum_of(&page, "turnstile_transitions_total", "flip", ""),
            transitions,
            "{page}"
        );
        assert_eq!(
            sum_of(
                &page,
                "turnstile_events_total",
                "flip",
                "outcome=\"transitioned\""
            ),
            transitions,
            "{page}"
        );
        assert_eq!(
            sum_of(
                &page,
                "turnstile_events_total",
                "flip",
                "outcome=\"ignored\""
            ),
            (N + 1) as f64,
            "{page}"
        );
        assert_eq!(
            samples_of(&page, "i0"),
            0,
            "an instance name became a label value"
        );
    }

    /// 20 states in a ring on `next`, and one more rule per state on an event of its own
    /// (`reset{i}` back to `s00`): 40 rules, 21 events; entry actions of two types.
    fn budget_config(name: &str, metrics: &str) -> String {
        let mut y = format!(
            "metadata: {{machine_name: {name}}}\ninitial_state: s00\n{metrics}transitions:\n"
        );
        for i in 0..20 {
            y.push_str(&format!(
                "  - {{from: s{i:02}, to: s{:02}, event: next}}\n  - {{from: s{i:02}, to: s00, event: reset{i}}}\n",
                (i + 1) % 20
            ));
        }
        y.push_str("actions:\n  s01:\n    - {type: log, message: hi}\n  s02:\n    - {type: set_context, key: a, value: 1}\n");
        y
    }

    /// The samples of machine `m` in a Prometheus text page.
    fn samples_of(page: &str, m: &str) -> usize {
        let label = format!("machine=\"{m}\"");
        page.lines()
            .filter(|l| !l.starts_with('#') && l.contains(&label))
            .count()
    }

    /// Runs the budget machine at each level (the process's flag, or the config's key)
    /// and returns the pages.
    async fn pages_at_each_level() -> Vec<(&'static str, MetricsDetail, usize, String)> {
        let plugins = ActionRegistry::with_builtins();
        let mut out = Vec::new();
        for (name, flag, key) in [
            ("default", MetricsDetail::NONE, ""),
            ("states", MetricsDetail::parse_list("states").unwrap(), ""),
            (
                "transitions",
                MetricsDetail::NONE,
                "metrics: {detail: transitions}\n",
            ),
            (
                "actions",
                MetricsDetail::NONE,
                "metrics: {detail: [actions]}\n",
            ),
            ("all", MetricsDetail::ALL, ""),
        ] {
            let t = Telemetry::new(TelemetryConfig {
                metrics_detail: flag,
                ..TelemetryConfig::default()
            })
            .unwrap();
            let engine = t.install(Engine::builder(), &plugins);
            let loaded =
                turnstile_engine::config::load_str(&budget_config("m", key), None, &plugins);
            let def = loaded
                .def
                .unwrap_or_else(|| panic!("{:?}", loaded.diagnostics));
            let level = flag.union(def.metrics_detail);
            // The rules' events, and any an action may return.
            let events = def.events.len();
            engine.spawn(def).unwrap();
            for ev in ["next", "next", "reset2", "next", "nonsense"] {
                engine.send("m", Event::new(Arc::from(ev))).await.unwrap();
            }
            while engine.machine("m").map_or(0, |s| s.events) < 5 {
                tokio::task::yield_now().await;
            }
            out.push((name, level, events, t.render_metrics(false)));
            engine.shutdown();
            engine.join().await;
        }
        out
    }

    /// The protobuf page has every family of the text page, and the duration histograms
    /// have native buckets that count what the classic ones count.
    #[tokio::test]
    async fn the_protobuf_page_has_every_family_and_native_histograms() {
        use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model as pb;
        use prost::Message as _;
        let plugins = ActionRegistry::with_builtins();
        let t = Telemetry::new(TelemetryConfig {
            metrics_detail: MetricsDetail::ALL,
            ..TelemetryConfig::default()
        })
        .unwrap();
        let engine = t.install(Engine::builder(), &plugins);
        let loaded = turnstile_engine::config::load_str(&budget_config("m", ""), None, &plugins);
        engine.spawn(loaded.def.unwrap()).unwrap();
        for ev in ["next", "next", "reset2", "next", "nonsense"] {
            engine.send("m", Event::new(Arc::from(ev))).await.unwrap();
        }
        while engine.machine("m").map_or(0, |s| s.events) < 5 {
            tokio::task::yield_now().await;
        }
        let text = t.render_metrics(false);
        let page = t.render_protobuf();
        engine.shutdown();
        engine.join().await;
        let mut buf = &page[..];
        let mut families = Vec::new();
        while !buf.is_empty() {
            families.push(pb::MetricFamily::decode_length_delimited(&mut buf).unwrap());
        }
        let mut in_text: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let mut in_pb: Vec<&str> = families.iter().map(|f| f.name.as_str()).collect();
        in_text.sort_unstable();
        in_pb.sort_unstable();
        assert_eq!(in_pb, in_text);
        // The text `_count` of each duration family, summed, against the native buckets.
        let (mut histograms, mut observed) = (0, 0);
        for f in families
            .iter()
            .filter(|f| f.r#type == pb::MetricType::Histogram as i32)
        {
            let classic: f64 = series_values(&text, &format!("{}_count", f.name));
            let mut native = 0;
            for m in &f.metric {
                let h = m.histogram.as_ref().unwrap();
                assert_eq!(h.schema, 3, "{}", f.name);
                assert!(h.zero_threshold > 0.0);
                let buckets: i64 = h
                    .positive_delta
                    .iter()
                    .scan(0i64, |c, d| {
                        *c += d;
                        Some(*c)
                    })
                    .sum();
                assert_eq!(buckets as u64 + h.zero_count, h.sample_count, "{}", f.name);
                native += h.sample_count;
                histograms += 1;
            }
            assert_eq!(native as f64, classic, "{}", f.name);
            observed += native;
        }
        assert!(observed >= 8, "{observed}");
        // Event, action (by type and outcome), state (by state) durations.
        assert!(histograms > 20, "{histograms}");
    }

    /// The sum of the values of the series `name` in a text page.
    fn series_values(page: &str, name: &str) -> f64 {
        page.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The series budget (docs/metrics.md): at the default level a machine shows 75
    /// samples whatever its size (a 20-state, 40-rule one here), each detail adds what the
    /// docs say it costs, and every level passes `promtool check metrics` when it is
    /// installed.
    #[tokio::test]
    async fn the_series_budget_holds_and_each_level_costs_what_the_docs_say() {
        let (states, rule_series, kinds) = (20, 40, 2);
        for (name, level, events, page) in pages_at_each_level().await {
            assert!(events >= 21, "{events}");
            let mut expected = 75;
            if level.states {
                expected += 13 * states - 13;
            }
            if level.transitions {
                expected += rule_series - 1 + 3 * (events + 1) - 3;
            }
            if level.actions {
                expected += 88 * kinds - 22;
            }
            assert_eq!(samples_of(&page, "m"), expected, "{name}:\n{page}");
            if level == MetricsDetail::NONE {
                assert!(expected <= 100);
                assert!(
                    page.contains("turnstile_transitions_total{machine=\"m\"} 4\n"),
                    "{page}"
                );
                assert!(
                    page.contains(
                        "turnstile_events_total{machine=\"m\",outcome=\"transitioned\"} 4\n"
                    ),
                    "{page}"
                );
                assert!(
                    page.contains("turnstile_machine_state{machine=\"m\",state=\"s01\"} 1\n"),
                    "{page}"
                );
                assert!(
                    page.contains("turnstile_state_duration_seconds_count{machine=\"m\"} 4\n"),
                    "{page}"
                );
            }
            if level.transitions {
                assert!(page.contains("turnstile_transitions_total{machine=\"m\",from=\"s02\",to=\"s00\",event=\"reset2\"} 1\n"), "{page}");
            }
            if level.states {
                assert!(
                    page.contains(
                        "turnstile_state_duration_seconds_count{machine=\"m\",state=\"s00\"} 2\n"
                    ),
                    "{page}"
                );
                assert!(
                    page.contains("turnstile_machine_state{machine=\"m\",state=\"s02\"} 0\n"),
                    "{page}"
                );
            }
            assert_eq!(
                catalogue::uncatalogued(&page),
                Vec::<String>::new(),
                "{name}"
            );
            promtool_check(name, &page);
        }
    }

    /// A reload that changes a config's `metrics:` key: the machine's series of the old
    /// level go, those of the new one come, and the page keeps to the budget of each.
    #[tokio::test]
    async fn a_reload_that_changes_the_level_replaces_the_series() {
        let plugins = ActionRegistry::with_builtins();
        let t = Telemetry::new(TelemetryConfig::default()).unwrap();
        let engine = t.install(Engine::builder(), &plugins);
        let load = |key: &str| {
            turnstile_engine::config::load_str(&budget_config("m", key), None, &plugins)
                .def
                .unwrap()
        };
        engine.spawn(load("")).unwrap();
        engine
            .send("m", Event::new(Arc::from("next")))
            .await
            .unwrap();
        while engine.machine("m").map_or(0, |s| s.transitions) < 1 {
            tokio::task::yield_now().await;
        }
        let before = t.render_metrics(false);
        assert_eq!(samples_of(&before, "m"), 75);
        engine
            .reload(load("metrics: {detail: all}\n"))
            .await
            .unwrap();
        engine
            .send("m", Event::new(Arc::from("next")))
            .await
            .unwrap();
        while engine.machine("m").map_or(0, |s| s.transitions) < 2 {
            tokio::task::yield_now().await;
        }
        let after = t.render_metrics(false);
        assert!(samples_of(&after, "m") > 75 * 4, "{after}");
        for gone in [
            "turnstile_state_duration_seconds_count{machine=\"m\"} ",
            "turnstile_action_duration_seconds_count{machine=\"m\"} ",
            "turnstile_transitions_total{machine=\"m\"} ",
            "turnstile_events_total{machine=\"m\",outcome=\"ignored\"} ",
        ] {
            assert!(!after.contains(gone), "`{gone}` is left:\n{after}");
        }
        assert!(after.contains("turnstile_transitions_total{machine=\"m\",from=\"s01\",to=\"s02\",event=\"next\"} 1\n"), "{after}");
        engine.reload(load("")).await.unwrap();
        let back = t.render_metrics(false);
        assert_eq!(samples_of(&back, "m"), 75, "{back}");
        engine.shutdown();
        engine.join().await;
    }

    /// `promtool check metrics` on a page (skipped, saying so, when promtool is missing;
    /// tests/deploy.rs requires it).
    fn promtool_check(level: &str, page: &str) {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let Ok(mut child) = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        else {
            eprintln!("promtool is not installed: `promtool check metrics` skipped");
            return;
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(page.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics at level {level}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn a_swapped_plugin_shows_only_its_new_version() {
        let t = Telemetry::new(TelemetryConfig::default()).unwrap();
        t.set_plugins(&[
            ("greet".into(), "1.0.0".into()),
            ("calc".into(), "0.1.0".into()),
        ]);
        t.plugin_swapped("greet", "1.1.0", "1.0.0");
        let page = t.render_metrics(false);
        let lines: Vec<&str> = page
            .lines()
            .filter(|l| l.starts_with("turnstile_plugin_info{"))
            .collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines.contains(&"turnstile_plugin_info{plugin=\"greet\",version=\"1.1.0\"} 1"));
        assert!(lines.contains(&"turnstile_plugin_info{plugin=\"calc\",version=\"0.1.0\"} 1"));
    }
}

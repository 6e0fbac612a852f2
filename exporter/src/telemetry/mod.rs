//! Turns what the engine reports ([`Observer`]) into Prometheus metrics, OpenTelemetry
//! spans and the ring buffers behind `/trace` and `/errors`.
//!
//! Everything about one machine lives in its slot (created in `machine_started`, kept in
//! the engine's per-machine [`ObserverSlot`]): metric handles, the span and record of the
//! event it is processing, its `/trace` ring. Calls for a machine come from its own task,
//! so the per-machine locks are never contended; nothing on the hot path is shared across
//! machines.

pub mod catalogue;
mod local;
pub mod metrics;
mod process;
pub mod records;
pub mod spans;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use opentelemetry::KeyValue;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde_json::{json, Value as Json};
use turnstile_engine::observe::{
    ActionEnd, ActionOutcome, ActionReport, ErrorKind, ErrorReport, EventOutcome, EventReport,
    MachineRef, Observer, QuickObserver, StateRef, StopReason, TransitionReport,
};
use turnstile_engine::{ActionRegistry, Engine, EngineBuilder, EngineStatus, Event, TraceContext};

use metrics::{MachineMetrics, Metrics, ReloadResult, TraceExemplar};
use records::{ActionRecord, ErrorRecord, Ring, TraceRecord};
use spans::{LiveSpan, SpanSettings, Spans};

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
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            trace_buffer: 1000,
            error_buffer: 1000,
            spans: None,
            output_limit: 1024,
        }
    }
}

/// The telemetry of one engine: an [`Observer`] plus what the sidecar serves.
pub struct Telemetry {
    config: TelemetryConfig,
    registry: Registry,
    metrics: Metrics,
    spans: Option<Spans>,
    machines: Mutex<Vec<Arc<Slot>>>,
    errors: Ring<ErrorRecord>,
    /// The engine's read-only status handle, set by [`Telemetry::install`].
    engine: Arc<OnceLock<EngineStatus>>,
    started: Instant,
    started_at: SystemTime,
    /// The last `/metrics` page per format (text, OpenMetrics) and when it was finished.
    pages: [tokio::sync::Mutex<Option<(Instant, bytes::Bytes)>>; 2],
    last_page_size: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

/// One machine's telemetry.
struct Slot {
    name: Arc<str>,
    states: Vec<Arc<str>>,
    metrics: MachineMetrics,
    /// Events processed (all outcomes) and their total processing time, for `/stats`.
    processed: AtomicU64,
    busy_ns: AtomicU64,
    live: Mutex<Live>,
    /// Shared with the slot that replaces this one after a config reload.
    trace: Arc<Ring<TraceRecord>>,
}

impl Slot {
    /// One more event processed, in `ns` nanoseconds (for `/stats`).
    #[inline]
    fn count(&self, ns: u64) {
        // Only this machine's task writes these: a plain load and store, no locked add.
        self.processed.store(
            self.processed.load(Ordering::Relaxed) + 1,
            Ordering::Relaxed,
        );
        self.busy_ns.store(
            self.busy_ns.load(Ordering::Relaxed).saturating_add(ns),
            Ordering::Relaxed,
        );
    }
}

/// Metrics only (no `/trace` records, no spans): what [`Observer::transition_finished`]
/// does, called by the runtime without a report or a slot lookup.
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
        self.count(duration_ns);
        self.metrics
            .transition_finished(from, event_id, time_in_from_ns, duration_ns);
    }
}

/// A machine's slot as its [`QuickObserver`] (boxed by the runtime: a trait object of
/// this, not of `Arc<Slot>`, keeps the call's `self` at a fixed offset).
struct QuickSlot(Arc<Slot>);

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
    }
}

/// A duration in whole nanoseconds (saturating: 584 years).
#[inline]
fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The event a machine is processing.
#[derive(Default)]
struct Live {
    state: usize,
    event: Option<LiveEvent>,
    action: Option<LiveAction>,
}

struct LiveEvent {
    at: SystemTime,
    span: Option<LiveSpan>,
    trace: Option<TraceContext>,
    actions: Vec<ActionRecord>,
    failed: Option<(&'static str, String)>,
}

struct LiveAction {
    span: Option<LiveSpan>,
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
        sub.register_collector(Box::new(QueueDepth(engine.clone())));
        Ok(Arc::new(Telemetry {
            errors: Ring::new(config.error_buffer),
            config,
            registry,
            metrics,
            spans,
            machines: Mutex::new(Vec::new()),
            engine,
            started: Instant::now(),
            started_at: SystemTime::now(),
            pages: Default::default(),
            last_page_size: std::sync::atomic::AtomicUsize::new(64 * 1024),
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
    pub async fn metrics_page(self: &Arc<Self>, openmetrics: bool) -> bytes::Bytes {
        let arrived = Instant::now();
        let slot = &self.pages[usize::from(openmetrics)];
        let mut last = slot.lock().await;
        if let Some((finished, page)) = &*last {
            if *finished >= arrived {
                return page.clone();
            }
        }
        let me = self.clone();
        let page = match tokio::task::spawn_blocking(move || me.render_metrics(openmetrics)).await {
            Ok(text) => bytes::Bytes::from(text),
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

    /// `turnstile_job_changes_total{machine, job_type, change}` (a few per job: the family's
    /// lock is fine here).
    fn job_change(&self, m: MachineRef<'_>, job_type: &str, change: &'static str) {
        self.metrics
            .job_changes
            .get_or_create(&metrics::JobChangeL {
                machine: m.def.name.clone(),
                job_type: job_type.to_owned(),
                change,
            })
            .inc();
    }

    /// Records an error that belongs to no machine's event (bad requests, reloads, ...).
    pub fn report_error(&self, kind: ErrorKind, machine: Option<&str>, message: &str) {
        let slot = machine.and_then(|m| self.slots().into_iter().rev().find(|s| &*s.name == m));
        match slot {
            Some(s) => s.metrics.error(kind),
            None => self.metrics.global_error(kind),
        }
        self.errors.push(ErrorRecord {
            timestamp: records::timestamp(SystemTime::now()),
            error_type: kind.as_str(),
            message: message.to_owned(),
            machine: machine.map(str::to_owned),
            state: None,
            event: None,
            trace_id: None,
        });
    }

    /// `/trace`: newest first.
    pub fn traces(&self, limit: usize, machine: Option<&str>, trace_id: Option<&str>) -> Vec<Json> {
        let slots = self.slots();
        let mut all: Vec<TraceRecord> = Vec::new();
        for s in slots
            .iter()
            .filter(|s| machine.is_none_or(|m| *s.name == *m))
        {
            all.extend(s.trace.newest(limit, |r| {
                trace_id.is_none_or(|t| r.trace_id.as_deref() == Some(t))
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
            machine.is_none_or(|m| e.machine.as_deref() == Some(m))
                && kind.is_none_or(|k| e.error_type == k)
        })
    }

    /// `/stats`.
    pub fn stats(&self, listen: Option<&str>) -> Json {
        let slots = self.slots();
        let processed: u64 = slots
            .iter()
            .map(|s| s.processed.load(Ordering::Relaxed))
            .sum();
        let busy_ns: u64 = slots
            .iter()
            .map(|s| s.busy_ns.load(Ordering::Relaxed))
            .sum();
        let avg_ms = if processed == 0 {
            0.0
        } else {
            busy_ns as f64 / processed as f64 / 1e6
        };
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
        })
    }

    fn slots(&self) -> Vec<Arc<Slot>> {
        self.machines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn slot<'a>(&self, m: &MachineRef<'a>) -> Option<&'a Slot> {
        m.slot
            .get()
            .and_then(|b| b.downcast_ref::<Arc<Slot>>())
            .map(|a| &**a)
    }

    /// Neither `/trace` records nor spans: events and actions only update metrics.
    #[inline]
    fn metrics_only(&self) -> bool {
        self.config.trace_buffer == 0 && self.spans.is_none()
    }

    /// The transition's metrics (and, with spans, the running span's target state).
    #[inline]
    fn transitioned(&self, slot: &Slot, r: &TransitionReport<'_>) {
        slot.metrics
            .transition(r.from.id, r.event_id, nanos(r.time_in_from));
        // The current state is only needed for the next span's `turnstile.state.from`.
        if self.spans.is_none() {
            return;
        }
        let mut live = slot.live.lock().unwrap_or_else(|e| e.into_inner());
        live.state = r.to.id;
        if let Some(span) = live.event.as_ref().and_then(|e| e.span.as_ref()) {
            span.set(KeyValue::new("turnstile.state.to", r.to.name.to_owned()));
        }
    }

    /// The end of an event: its metrics, `/stats` counts, span and `/trace` record.
    #[inline]
    fn finished(&self, slot: &Slot, r: &EventReport<'_>) {
        let ns = nanos(r.duration);
        slot.count(ns);
        let outcome = event_outcome_index(r.outcome);
        let transitioned = r.outcome == EventOutcome::Transitioned;
        let ns = transitioned.then_some(ns);
        if self.metrics_only() {
            slot.metrics.event(r.event_id, outcome, ns, None);
            return;
        }
        self.finished_traced(slot, r, outcome, ns);
    }

    /// [`Self::finished`] with `/trace` records or spans.
    #[inline(never)]
    fn finished_traced(&self, slot: &Slot, r: &EventReport<'_>, outcome: usize, ns: Option<u64>) {
        let transitioned = r.outcome == EventOutcome::Transitioned;
        let now = SystemTime::now();
        let live_event = if transitioned {
            slot.live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .event
                .take()
        } else {
            None
        };
        let (at, span, trace, actions, failed) = match live_event {
            Some(e) => (e.at, e.span, e.trace, e.actions, e.failed),
            None => (now, None, r.event.traceparent, Vec::new(), None),
        };
        slot.metrics.event(
            r.event_id,
            outcome,
            ns,
            span.as_ref().and_then(|_| Self::exemplar(trace.as_ref())),
        );
        if let Some(span) = span {
            span.set(KeyValue::new("turnstile.outcome", r.outcome.as_str()));
            if let Some((kind, msg)) = &failed {
                span.fail(kind, msg, now);
            }
            span.end(now);
        } else if !transitioned {
            // Ignored and refused events get a short span of their own.
            if let Some(sp) = &self.spans {
                let attrs = vec![
                    KeyValue::new("turnstile.machine", slot.name.to_string()),
                    KeyValue::new("turnstile.event", r.event.name.to_string()),
                    KeyValue::new("turnstile.state.from", r.from.name.to_owned()),
                    KeyValue::new("turnstile.state.to", r.to.name.to_owned()),
                    KeyValue::new("turnstile.outcome", r.outcome.as_str()),
                ];
                if let Some(s) = sp.start_event(
                    format!("{} {}", slot.name, r.event.name),
                    r.event.traceparent,
                    attrs,
                    now,
                ) {
                    s.end(now);
                }
            }
        }
        if self.config.trace_buffer > 0 {
            slot.trace.push(TraceRecord {
                at,
                event: r.event.name.clone(),
                machine: slot.name.clone(),
                from: slot
                    .states
                    .get(r.from.id)
                    .cloned()
                    .unwrap_or_else(|| Arc::from(r.from.name)),
                to: slot
                    .states
                    .get(r.to.id)
                    .cloned()
                    .unwrap_or_else(|| Arc::from(r.to.name)),
                duration_ms: r.duration.as_secs_f64() * 1e3,
                outcome: r.outcome.as_str(),
                trace_id: trace.map(|t| t.trace_id_hex()),
                span_id: trace.map(|t| t.span_id_hex()),
                job_id: r.event.job_id.clone(),
                actions,
            });
        }
    }

    fn exemplar(trace: Option<&TraceContext>) -> Option<TraceExemplar> {
        trace.map(|t| TraceExemplar {
            trace_id: t.trace_id_hex(),
            span_id: t.span_id_hex(),
        })
    }
}

/// `turnstile_event_queue_depth` and `turnstile_machine_state`, read from the engine at
/// scrape time: a machine stuck in a long action still shows its queue growing, and the
/// hot path pays nothing for them.
#[derive(Debug)]
struct QueueDepth(Arc<OnceLock<EngineStatus>>);

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
        Ok(())
    }
}

fn truncate(s: &str, limit: usize) -> String {
    if s.len() <= limit {
        return s.to_owned();
    }
    let mut end = limit;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn action_outcome_index(o: ActionOutcome) -> usize {
    match o {
        ActionOutcome::Ok => 0,
        ActionOutcome::Error => 1,
        ActionOutcome::Timeout => 2,
        ActionOutcome::Interrupted => 3,
    }
}

fn event_outcome_index(o: EventOutcome) -> usize {
    match o {
        EventOutcome::Transitioned => 0,
        EventOutcome::Ignored => 1,
        EventOutcome::Rejected => 2,
    }
}

impl Observer for Telemetry {
    fn machine_started(&self, m: MachineRef<'_>, s: StateRef<'_>) {
        let slot = Arc::new(Slot {
            name: m.def.name.clone(),
            states: m.def.states.iter().map(|s| s.name.clone()).collect(),
            metrics: self.metrics.machine(m.def),
            processed: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            live: Mutex::new(Live {
                state: s.id,
                ..Live::default()
            }),
            trace: Arc::new(Ring::new(self.config.trace_buffer)),
        });
        self.machines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(slot.clone());
        let _ = m.slot.set(Box::new(slot));
    }

    /// A reload changed the state and event indexes: a new slot with handles built from
    /// the new definition (the same label sets give the same series) takes the old one's
    /// place, keeping its counts and its `/trace` records.
    fn machine_reloaded(&self, m: MachineRef<'_>, previous: MachineRef<'_>, s: StateRef<'_>) {
        let old = self.slot(&previous);
        // An action still waiting goes on under the new definition: its span (if any)
        // moves along, so that its end is recorded.
        let action = old.and_then(|o| {
            o.live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .action
                .take()
        });
        let slot = Arc::new(Slot {
            name: m.def.name.clone(),
            states: m.def.states.iter().map(|s| s.name.clone()).collect(),
            metrics: self.metrics.machine(m.def),
            processed: AtomicU64::new(old.map_or(0, |o| o.processed.load(Ordering::Relaxed))),
            busy_ns: AtomicU64::new(old.map_or(0, |o| o.busy_ns.load(Ordering::Relaxed))),
            live: Mutex::new(Live {
                state: s.id,
                event: None,
                action,
            }),
            trace: old.map_or_else(
                || Arc::new(Ring::new(self.config.trace_buffer)),
                |o| o.trace.clone(),
            ),
        });
        {
            let mut machines = self.machines.lock().unwrap_or_else(|e| e.into_inner());
            let at = old.and_then(|o| machines.iter().position(|x| std::ptr::eq(&**x, o)));
            match at {
                Some(i) => machines[i] = slot.clone(),
                None => machines.push(slot.clone()),
            }
        }
        let _ = m.slot.set(Box::new(slot));
    }

    fn machine_stopped(&self, _m: MachineRef<'_>, _s: StateRef<'_>, _r: StopReason) {}

    /// Metrics only: the machine's slot receives its action-less events directly.
    fn quick_observer(&self, m: MachineRef<'_>) -> Option<Box<dyn QuickObserver>> {
        if !self.metrics_only() {
            return None;
        }
        let slot = m.slot.get()?.downcast_ref::<Arc<Slot>>()?;
        Some(Box::new(QuickSlot(slot.clone())))
    }

    /// Event and action starts only matter to `/trace` records and spans.
    fn observes_starts(&self) -> bool {
        !self.metrics_only()
    }

    fn event_started(
        &self,
        m: MachineRef<'_>,
        event: &Event,
        _depth: usize,
    ) -> Option<TraceContext> {
        let slot = self.slot(&m)?;
        let want_record = self.config.trace_buffer > 0;
        if !want_record && self.spans.is_none() {
            return None;
        }
        // Records alone need only a millisecond timestamp; spans a precise one.
        let at = if self.spans.is_some() {
            SystemTime::now()
        } else {
            records::coarse_now()
        };
        let mut live = slot.live.lock().unwrap_or_else(|e| e.into_inner());
        let span = self.spans.as_ref().and_then(|sp| {
            let from = slot
                .states
                .get(live.state)
                .cloned()
                .unwrap_or_else(|| Arc::from(""));
            let mut attrs = vec![
                KeyValue::new("turnstile.machine", slot.name.to_string()),
                KeyValue::new("turnstile.event", event.name.to_string()),
                KeyValue::new("turnstile.state.from", from.to_string()),
            ];
            if let Some(j) = &event.job_id {
                attrs.push(KeyValue::new("turnstile.job.id", j.clone()));
            }
            sp.start_event(
                format!("{} {}", slot.name, event.name),
                event.traceparent,
                attrs,
                at,
            )
        });
        let trace = span.as_ref().map(LiveSpan::context).or(event.traceparent);
        live.event = Some(LiveEvent {
            at,
            span,
            trace,
            actions: Vec::new(),
            failed: None,
        });
        trace
    }

    fn transition(&self, r: &TransitionReport<'_>) {
        if let Some(slot) = self.slot(&r.machine) {
            self.transitioned(slot, r);
        }
    }

    /// One slot lookup for both.
    fn transition_finished(&self, r: &TransitionReport<'_>, duration: std::time::Duration) {
        let Some(slot) = self.slot(&r.machine) else {
            return;
        };
        if self.metrics_only() {
            // Metrics only: what `transitioned` and `finished` do, without the report.
            QuickObserver::transition_finished(
                slot,
                r.from.id,
                r.to.id,
                r.event_id,
                nanos(r.time_in_from),
                nanos(duration),
            );
            return;
        }
        self.transitioned(slot, r);
        self.finished(slot, &r.finished(duration));
    }

    fn action_started(&self, r: &ActionReport<'_>) -> Option<TraceContext> {
        let slot = self.slot(&r.machine)?;
        if self.metrics_only() {
            return None;
        }
        let at = SystemTime::now();
        let mut live = slot.live.lock().unwrap_or_else(|e| e.into_inner());
        let span = match (
            &self.spans,
            live.event.as_ref().and_then(|e| e.span.as_ref()),
        ) {
            (Some(sp), Some(parent)) => Some(sp.start_child(
                parent,
                format!("action {}", r.kind),
                vec![
                    KeyValue::new("turnstile.action.type", r.kind.to_owned()),
                    KeyValue::new(
                        "turnstile.action.index",
                        i64::try_from(r.index).unwrap_or(-1),
                    ),
                ],
                at,
            )),
            _ => None,
        };
        let trace = span.as_ref().map(LiveSpan::context);
        live.action = Some(LiveAction { span });
        trace
    }

    fn action_finished(&self, r: &ActionReport<'_>, end: &ActionEnd<'_>) {
        let Some(slot) = self.slot(&r.machine) else {
            return;
        };
        let outcome = action_outcome_index(end.outcome);
        let secs = end.duration.as_secs_f64();
        if self.metrics_only() {
            slot.metrics.action(r.kind, outcome, secs, None);
            return;
        }
        let now = SystemTime::now();
        let mut live = slot.live.lock().unwrap_or_else(|e| e.into_inner());
        let action = live.action.take();
        let exemplar = action
            .as_ref()
            .and_then(|a| a.span.as_ref())
            .map(LiveSpan::context);
        slot.metrics
            .action(r.kind, outcome, secs, Self::exemplar(exemplar.as_ref()));
        if let Some(a) = action {
            if let Some(span) = a.span {
                span.set(KeyValue::new(
                    "turnstile.action.outcome",
                    end.outcome.as_str(),
                ));
                if let Some(err) = end.error {
                    span.fail(end.outcome.as_str(), err, now);
                }
                span.end(now);
            }
        }
        if let Some(ev) = live.event.as_mut() {
            if let Some(err) = end.error {
                ev.failed = Some((
                    if end.outcome == ActionOutcome::Timeout {
                        "action_timeout"
                    } else {
                        "action"
                    },
                    err.to_owned(),
                ));
            }
            if self.config.trace_buffer > 0 {
                let limit = self.config.output_limit;
                ev.actions.push(ActionRecord {
                    kind: Arc::from(r.kind),
                    outcome: end.outcome.as_str(),
                    duration_ms: secs * 1e3,
                    event: end.event.map(Arc::from),
                    output: end.output.map(|o| truncate(o, limit)),
                    error: end.error.map(|e| truncate(e, limit)),
                });
            }
        }
    }

    fn event_finished(&self, r: &EventReport<'_>) {
        if let Some(slot) = self.slot(&r.machine) {
            self.finished(slot, r);
        }
    }

    fn error(&self, r: &ErrorReport<'_>) {
        let slot = r.machine.as_ref().and_then(|m| self.slot(m));
        match (slot, r.machine) {
            (Some(s), _) => s.metrics.error(r.kind),
            // Reported off the machine's task (a bad socket message), with an empty slot:
            // counted for the machine of that name.
            (None, Some(m)) => match self.slots().into_iter().rev().find(|s| *s.name == *m.name) {
                Some(s) => s.metrics.error(r.kind),
                None => self.metrics.global_error(r.kind),
            },
            (None, None) => self.metrics.global_error(r.kind),
        }
        let trace_id = slot.and_then(|s| {
            let live = s.live.lock().unwrap_or_else(|e| e.into_inner());
            live.event
                .as_ref()
                .and_then(|e| e.trace)
                .map(|t| t.trace_id_hex())
        });
        self.errors.push(ErrorRecord {
            timestamp: records::timestamp(SystemTime::now()),
            error_type: r.kind.as_str(),
            message: r.message.to_owned(),
            machine: r.machine.map(|m| m.name.to_owned()),
            state: r.state.map(str::to_owned),
            event: r.event.map(|e| e.name.to_string()),
            trace_id: trace_id.or_else(|| {
                r.event
                    .and_then(|e| e.traceparent)
                    .map(|t| t.trace_id_hex())
            }),
        });
    }

    fn plugin_swapped(&self, name: &str, version: &str, previous: &str) {
        // The old version's series goes: `turnstile_plugin_info` shows what serves now.
        self.metrics.plugin_info.remove(&metrics::PluginL {
            plugin: name.to_owned(),
            version: previous.to_owned(),
        });
        self.set_plugins(&[(name.to_owned(), version.to_owned())]);
    }

    fn job_claimed(&self, m: MachineRef<'_>, job_type: &str, _job_id: &str) {
        self.job_change(m, job_type, "claimed");
    }

    fn job_completed(&self, m: MachineRef<'_>, job_type: &str, _job_id: &str) {
        self.job_change(m, job_type, "completed");
    }

    fn job_failed(&self, m: MachineRef<'_>, job_type: &str, _job_id: &str, _message: &str) {
        self.job_change(m, job_type, "failed");
    }

    fn config_reloaded(&self, _path: &std::path::Path, _machines: &[&str]) {
        self.metrics.config_reload(ReloadResult::success);
    }

    fn config_rejected(&self, path: &std::path::Path, message: &str) {
        self.metrics.config_reload(ReloadResult::failure);
        self.report_error(
            ErrorKind::Config,
            None,
            &format!("{}: {message}", path.display()),
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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

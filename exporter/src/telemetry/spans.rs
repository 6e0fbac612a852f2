//! OpenTelemetry spans over OTLP/HTTP (protobuf): one span per processed event, a child
//! per action, W3C trace context continued across machines and processes.
//!
//! The batch span processor runs on its own thread with a blocking HTTP client; in front
//! of it a gate bounds the queue with one atomic and counts every span it drops, so a dead
//! or slow collector never slows the engine and lost spans show up in
//! `turnstile_spans_dropped_total`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::resource::{EnvResourceDetector, TelemetryResourceDetector};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, Span, SpanData,
    SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use prometheus_client::metrics::counter::Counter;
use turnstile_engine::TraceContext;

/// Where spans go and how they are batched.
#[derive(Debug, Clone)]
pub struct SpanSettings {
    /// Full OTLP/HTTP traces URL (with `/v1/traces`). `None`: the standard
    /// `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT` variables decide.
    pub endpoint: Option<String>,
    /// `service.name` unless `OTEL_SERVICE_NAME` says otherwise.
    pub service_name: String,
    /// `service.instance.id` (`--instance-id`); `None`: the pod or host name and the
    /// process id.
    pub instance_id: Option<String>,
    /// Spans kept waiting for export before new ones are dropped (`OTEL_BSP_MAX_QUEUE_SIZE`
    /// wins).
    pub max_queue_size: usize,
    /// Spans per export request.
    pub max_export_batch_size: usize,
    /// How often a batch is sent.
    pub scheduled_delay: Duration,
    /// Time limit of one export (with retries).
    pub export_timeout: Duration,
}

impl Default for SpanSettings {
    fn default() -> Self {
        Self {
            endpoint: None,
            service_name: "turnstile".into(),
            instance_id: None,
            // 2048 (the OTel default, 41 ms at 50,000 spans/s) dropped spans in three of
            // five 60 s runs at 50,000 events/s on a busy two-core machine, when a thread
            // stalled; 16,384 in one of four, beside a build (BENCHMARKS.md, "Every span
            // delivered"). Memory: see docs/metrics.md.
            max_queue_size: 16_384,
            max_export_batch_size: 512,
            scheduled_delay: Duration::from_millis(1000),
            export_timeout: Duration::from_secs(5),
        }
    }
}

fn env_nonempty(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.trim().is_empty())
}

fn env_parse<T: std::str::FromStr>(k: &str) -> Option<T> {
    env_nonempty(k).and_then(|v| v.trim().parse().ok())
}

/// True when the environment asks for span export: an OTLP endpoint is set and neither
/// `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none` turns it off.
pub fn wanted_by_env() -> bool {
    let disabled = env_nonempty("OTEL_SDK_DISABLED")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env_nonempty("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
    let endpoint = env_nonempty("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || env_nonempty("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    endpoint && !disabled
}

/// Export counters, shared between the engine threads and the export thread.
#[derive(Debug, Default)]
struct Gate {
    in_queue: AtomicUsize,
    shut: AtomicBool,
}

/// Counts what reaches the collector (runs on the export thread).
#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    gate: Arc<Gate>,
    exported: Counter,
    dropped: Counter,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        self.gate.in_queue.fetch_sub(n, Ordering::AcqRel);
        let r = self.inner.export(batch).await;
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        match &r {
            Ok(()) => self.exported.inc_by(n),
            Err(_) => self.dropped.inc_by(n),
        };
        r
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Bounds the queue in front of the batch processor and counts what it refuses.
#[derive(Debug)]
struct GatedProcessor<P> {
    inner: P,
    gate: Arc<Gate>,
    cap: usize,
    dropped: Counter,
}

impl<P: SpanProcessor> SpanProcessor for GatedProcessor<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }
    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.gate.shut.load(Ordering::Relaxed) {
            self.dropped.inc();
            return;
        }
        let prev = self.gate.in_queue.fetch_add(1, Ordering::AcqRel);
        if prev >= self.cap {
            self.gate.in_queue.fetch_sub(1, Ordering::AcqRel);
            self.dropped.inc();
            return;
        }
        self.inner.on_end(span);
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.gate.shut.store(true, Ordering::Relaxed);
        self.inner.shutdown_with_timeout(timeout)
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The span pipeline.
pub struct Spans {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl std::fmt::Debug for Spans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Spans")
    }
}

/// A span in progress, with its context for children.
pub struct LiveSpan {
    cx: Context,
}

impl Spans {
    /// Builds the exporter and processor. `exported`/`dropped` are the metric counters.
    pub fn new(
        s: &SpanSettings,
        exported: Counter,
        dropped: Counter,
    ) -> Result<Self, opentelemetry_otlp::ExporterBuildError> {
        let mut eb = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary);
        if env_nonempty("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT").is_none()
            && env_nonempty("OTEL_EXPORTER_OTLP_TIMEOUT").is_none()
        {
            eb = eb.with_timeout(s.export_timeout);
        }
        if let Some(ep) = &s.endpoint {
            eb = eb.with_endpoint(ep.clone());
        }
        let exporter = eb.build()?;
        let gate = Arc::new(Gate::default());
        let exporter = CountingExporter {
            inner: exporter,
            gate: gate.clone(),
            exported,
            dropped: dropped.clone(),
        };
        let queue = env_parse::<usize>("OTEL_BSP_MAX_QUEUE_SIZE")
            .unwrap_or(s.max_queue_size)
            .max(1);
        let batch = env_parse::<usize>("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")
            .unwrap_or(s.max_export_batch_size)
            .clamp(1, queue);
        let delay = env_parse::<u64>("OTEL_BSP_SCHEDULE_DELAY")
            .map_or(s.scheduled_delay, Duration::from_millis);
        let bsp = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(queue)
                    .with_max_export_batch_size(batch)
                    .with_scheduled_delay(delay)
                    .build(),
            )
            .build();
        let gated = GatedProcessor {
            inner: bsp,
            gate,
            cap: queue,
            dropped,
        };
        let mut pb = SdkTracerProvider::builder()
            .with_span_processor(gated)
            .with_resource(resource(&s.service_name, s.instance_id.as_deref()));
        // The SDK reads OTEL_TRACES_SAMPLER(_ARG) itself; a sampler set here would win.
        if env_nonempty("OTEL_TRACES_SAMPLER").is_none() {
            pb = pb.with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
        }
        let provider = pb.build();
        let tracer = provider.tracer("turnstile");
        Ok(Self { provider, tracer })
    }

    /// Opens the span of an event. `None` when the sampler says no.
    pub fn start_event(
        &self,
        name: String,
        parent: Option<TraceContext>,
        attributes: Vec<KeyValue>,
        start: SystemTime,
    ) -> Option<LiveSpan> {
        let parent_cx = match parent {
            Some(tp) => Context::new().with_remote_span_context(span_context(&tp)),
            None => Context::new(),
        };
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent_cx);
        if !span.span_context().is_sampled() {
            return None;
        }
        Some(LiveSpan {
            cx: parent_cx.with_span(span),
        })
    }

    /// Opens a child span (an action).
    pub fn start_child(
        &self,
        parent: &LiveSpan,
        name: String,
        attributes: Vec<KeyValue>,
        start: SystemTime,
    ) -> LiveSpan {
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent.cx);
        LiveSpan {
            cx: parent.cx.with_span(span),
        }
    }

    /// Flushes buffered spans and stops the export thread.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(target: "turnstile::spans", "span export did not finish: {e}");
        }
    }
}

impl LiveSpan {
    /// The span's W3C context, for events it causes.
    pub fn context(&self) -> TraceContext {
        let sc = self.cx.span().span_context().clone();
        TraceContext {
            trace_id: sc.trace_id().to_bytes(),
            span_id: sc.span_id().to_bytes(),
            flags: sc.trace_flags().to_u8() & 1,
        }
    }

    /// Adds an attribute.
    pub fn set(&self, kv: KeyValue) {
        self.cx.span().set_attribute(kv);
    }

    /// Marks the span failed: status Error, `error.type`, and an `exception` event.
    pub fn fail(&self, error_type: &str, message: &str, at: SystemTime) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("error.type", error_type.to_owned()));
        span.add_event_with_timestamp(
            "exception",
            at,
            vec![
                KeyValue::new("exception.type", error_type.to_owned()),
                KeyValue::new("exception.message", message.to_owned()),
            ],
        );
        span.set_status(Status::error(message.to_owned()));
    }

    /// Ends the span.
    pub fn end(self, at: SystemTime) {
        self.cx.span().end_with_timestamp(at);
    }
}

fn span_context(tp: &TraceContext) -> SpanContext {
    SpanContext::new(
        TraceId::from_bytes(tp.trace_id),
        SpanId::from_bytes(tp.span_id),
        TraceFlags::new(tp.flags & 1),
        true,
        TraceState::NONE,
    )
}

/// `service.name`, `service.version`, `service.instance.id`, Kubernetes pod attributes from
/// the environment, then `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_SERVICE_NAME` (env wins).
fn resource(service_name: &str, instance: Option<&str>) -> Resource {
    let instance = instance.map_or_else(instance_id, str::to_owned);
    let mut attrs = vec![
        KeyValue::new("service.name", service_name.to_owned()),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("service.instance.id", instance),
    ];
    for (var, key) in [
        ("POD_NAME", "k8s.pod.name"),
        ("K8S_POD_NAME", "k8s.pod.name"),
        ("POD_NAMESPACE", "k8s.namespace.name"),
        ("K8S_NAMESPACE_NAME", "k8s.namespace.name"),
        ("POD_UID", "k8s.pod.uid"),
        ("K8S_POD_UID", "k8s.pod.uid"),
        ("NODE_NAME", "k8s.node.name"),
        ("K8S_NODE_NAME", "k8s.node.name"),
    ] {
        if let Some(v) = env_nonempty(var) {
            attrs.push(KeyValue::new(key, v));
        }
    }
    let mut b = Resource::builder_empty()
        .with_attributes(attrs)
        .with_detectors(&[
            Box::new(TelemetryResourceDetector),
            Box::new(EnvResourceDetector::new()),
        ]);
    if let Some(name) = env_nonempty("OTEL_SERVICE_NAME") {
        b = b.with_service_name(name);
    }
    b.build()
}

/// The pod name in Kubernetes (unique per replica), else host name and process id.
fn instance_id() -> String {
    if let Some(p) = env_nonempty("POD_NAME").or_else(|| env_nonempty("HOSTNAME")) {
        return format!("{p}-{}", std::process::id());
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

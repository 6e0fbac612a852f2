//! The duration histograms: with exemplars (prometheus-client's locked histogram, when
//! spans are exported and so there are trace ids to attach) or without ([`LocalHistogram`],
//! written by one machine's task with no lock).
//!
//! Both also count each observation in native buckets (`native.rs`), for the protobuf
//! exposition: [`LocalHistogram`] in its writers' cells, [`ExemplarHistogram`] beside
//! prometheus-client's histogram, which has no way to hold both native buckets and
//! exemplars.
//!
//! Its own file because the choice between the two, made once per family when the
//! metrics are built, and the dispatch on it for each observation are one job apart from
//! declaring the families and the per-machine handles ([`super`]).

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use super::super::catalogue;
use super::super::local::{HistogramWriter, LocalHistogram};
use super::super::native;
use super::{TraceExemplar, FAST_BUCKETS, STATE_BUCKETS};

/// prometheus-client's histogram with exemplars, and native buckets beside it.
#[derive(Clone, Debug)]
pub(super) struct ExemplarHistogram {
    classic: HistogramWithExemplars<TraceExemplar>,
    native: Arc<native::Buckets>,
}

impl ExemplarHistogram {
    fn observe(&self, seconds: f64, exemplar: Option<TraceExemplar>) {
        self.classic.observe(seconds, exemplar, None);
        self.native.observe_shared(seconds);
    }
}

impl TypedMetric for ExemplarHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ExemplarHistogram {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.classic.encode(encoder)?;
        native::offer(|| self.native.snapshot());
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

fn fast_histogram() -> ExemplarHistogram {
    ExemplarHistogram {
        classic: HistogramWithExemplars::new(FAST_BUCKETS.iter().copied()),
        native: Arc::default(),
    }
}
fn fast_local_histogram() -> LocalHistogram {
    LocalHistogram::new(FAST_BUCKETS.iter().copied())
}
pub(super) fn state_histogram() -> LocalHistogram {
    LocalHistogram::new(STATE_BUCKETS.iter().copied())
}

/// A duration family: with exemplars (prometheus-client's locked histogram, when spans
/// are exported and so there are trace ids to attach) or without ([`LocalHistogram`]).
#[derive(Clone)]
pub(super) enum DurationFamily<L> {
    Exemplars(Family<L, ExemplarHistogram, fn() -> ExemplarHistogram>),
    Local(Family<L, LocalHistogram, fn() -> LocalHistogram>),
}

impl<L> DurationFamily<L>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    pub(super) fn new(exemplars: bool) -> Self {
        if exemplars {
            DurationFamily::Exemplars(Family::new_with_constructor(fast_histogram))
        } else {
            DurationFamily::Local(Family::new_with_constructor(fast_local_histogram))
        }
    }

    pub(super) fn register(&self, r: &mut Registry, family: &catalogue::Family) {
        match self {
            DurationFamily::Exemplars(f) => family.register(r, f.clone()),
            DurationFamily::Local(f) => family.register(r, f.clone()),
        }
    }

    pub(super) fn remove(&self, labels: &L) {
        match self {
            DurationFamily::Exemplars(f) => {
                f.remove(labels);
            }
            DurationFamily::Local(f) => {
                f.remove(labels);
            }
        }
    }

    pub(super) fn series(&self, labels: &L) -> DurationSeries {
        match self {
            DurationFamily::Exemplars(f) => {
                DurationSeries::Exemplars(f.get_or_create(labels).clone())
            }
            DurationFamily::Local(f) => DurationSeries::Local(f.get_or_create(labels).writer()),
        }
    }
}

/// A machine's handle on one duration series.
pub(super) enum DurationSeries {
    Exemplars(ExemplarHistogram),
    Local(HistogramWriter),
}

impl DurationSeries {
    #[inline]
    pub(super) fn observe(&self, seconds: f64, exemplar: Option<TraceExemplar>) {
        match self {
            DurationSeries::Local(h) => h.observe(seconds),
            DurationSeries::Exemplars(h) => observe_with_exemplar(h, seconds, exemplar),
        }
    }

    /// [`DurationSeries::observe`] of `ns` nanoseconds.
    #[inline]
    pub(super) fn observe_nanos_with(&self, ns: u64, exemplar: Option<TraceExemplar>) {
        match self {
            DurationSeries::Local(h) => h.observe_nanos(ns),
            DurationSeries::Exemplars(h) => observe_with_exemplar(h, ns as f64 / 1e9, exemplar),
        }
    }
}

#[inline(never)]
fn observe_with_exemplar(h: &ExemplarHistogram, seconds: f64, exemplar: Option<TraceExemplar>) {
    h.observe(seconds, exemplar);
}

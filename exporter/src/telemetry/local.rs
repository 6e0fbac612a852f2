//! Counters and histograms written by one machine's task only.
//!
//! prometheus-client's `Counter` adds with a locked instruction and its `Histogram` takes
//! a lock (two, with exemplars) per observation. A machine's series are only ever written
//! by that machine's task, one event at a time, so each writer here owns its own cells and
//! updates them with a plain load and store (no read-modify-write, no lock). The series
//! registered in a `Family` ([`LocalCounter`], [`LocalHistogram`]) sums its writers' cells
//! when scraped, plus what writers that are gone left behind ([`Drop`] folds a writer's
//! values in), so a series keeps counting across config reloads (a new slot, new writers)
//! and never goes down.
//!
//! The exposition is prometheus-client's own (`encode_counter`, `encode_histogram`), with
//! the same buckets (the `+Inf` one added the same way), so the text is the same as with
//! its `Counter` and `Histogram`. A histogram also counts each observation in its native
//! buckets (`native.rs`), read only for the protobuf exposition. A histogram's `_count` is the sum of its buckets, as in
//! prometheus-client. A scrape that runs while an observation is being made may see the
//! observation in the buckets but not yet in `_sum` (or the reverse): at most one
//! observation per writer, gone by the next scrape.
//!
//! A series lists its live cells in a `Vec`, and each cell knows its index in that list
//! (kept under the series' lock), so that dropping a writer removes its cell with a
//! `swap_remove` (the moved cell is told its new index): constant time, however many
//! writers the series has. (Run-time instances share their definition's writers, one set
//! per thread, `slot.rs`; a series once had a writer per instance, 100,000 of them.)

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::{MetricType, TypedMetric};

use super::native;

/// Adds `n` to a cell only this thread writes.
#[inline]
fn bump(cell: &AtomicU64, n: u64) {
    cell.store(
        cell.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A live cell that knows its index in its series' list of live cells. The index is read
/// and written only with the series' lock held.
trait Indexed {
    fn index(&self) -> &AtomicUsize;
}

/// Appends `cell` to `live`, recording its index.
fn push_live<C: Indexed>(live: &mut Vec<Arc<C>>, cell: Arc<C>) {
    cell.index().store(live.len(), Ordering::Relaxed);
    live.push(cell);
}

/// Removes `cell` from `live` in constant time: the last cell takes its place and is told
/// its new index.
fn remove_live<C: Indexed>(live: &mut Vec<Arc<C>>, cell: &Arc<C>) {
    let i = cell.index().load(Ordering::Relaxed);
    if !live.get(i).is_some_and(|c| Arc::ptr_eq(c, cell)) {
        // Not where it says it is (cannot happen: the index is kept under the lock);
        // find it the slow way rather than remove another writer's cell.
        live.retain(|c| !Arc::ptr_eq(c, cell));
        for (j, c) in live.iter().enumerate() {
            c.index().store(j, Ordering::Relaxed);
        }
        return;
    }
    live.swap_remove(i);
    if let Some(moved) = live.get(i) {
        moved.index().store(i, Ordering::Relaxed);
    }
}

// --- counters --------------------------------------------------------------------------

#[derive(Debug, Default)]
struct CounterCell {
    value: AtomicU64,
    /// Its index in [`CounterParts::live`].
    index: AtomicUsize,
}

impl Indexed for CounterCell {
    fn index(&self) -> &AtomicUsize {
        &self.index
    }
}

#[derive(Debug, Default)]
struct CounterParts {
    /// What writers that are gone counted.
    retired: u64,
    live: Vec<Arc<CounterCell>>,
}

/// A counter series whose increments come from [`CounterWriter`]s.
#[derive(Debug, Default, Clone)]
pub struct LocalCounter {
    parts: Arc<Mutex<CounterParts>>,
}

impl LocalCounter {
    /// A new writer (for one machine's task).
    pub fn writer(&self) -> CounterWriter {
        let cell = Arc::new(CounterCell::default());
        push_live(&mut lock(&self.parts).live, cell.clone());
        CounterWriter {
            cell,
            parts: self.parts.clone(),
        }
    }

    /// The total.
    pub fn get(&self) -> u64 {
        let p = lock(&self.parts);
        p.live.iter().fold(p.retired, |t, c| {
            t.wrapping_add(c.value.load(Ordering::Relaxed))
        })
    }
}

impl TypedMetric for LocalCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for LocalCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder
            .encode_counter::<NoLabelSet, _, u64>(&self.get(), None::<&Exemplar<NoLabelSet, u64>>)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// One task's share of a [`LocalCounter`]. Only one thread at a time may call
/// [`CounterWriter::inc`] (the machine's task).
#[derive(Debug)]
pub struct CounterWriter {
    cell: Arc<CounterCell>,
    parts: Arc<Mutex<CounterParts>>,
}

impl CounterWriter {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        bump(&self.cell.value, 1);
    }
}

impl Drop for CounterWriter {
    fn drop(&mut self) {
        let mut p = lock(&self.parts);
        p.retired = p
            .retired
            .wrapping_add(self.cell.value.load(Ordering::Relaxed));
        remove_live(&mut p.live, &self.cell);
    }
}

// --- histograms ------------------------------------------------------------------------

#[derive(Debug)]
struct HistogramCell {
    /// `f64` bits: the sum of [`HistogramWriter::observe`]'s values.
    sum: AtomicU64,
    /// Nanoseconds: the sum of [`HistogramWriter::observe_nanos`]'s durations (an integer
    /// add per observation instead of a conversion and a float add; exact, saturating).
    sum_ns: AtomicU64,
    /// Not cumulative: observations whose first matching bound is this one.
    buckets: Box<[AtomicU64]>,
    /// The same observations in native buckets.
    native: native::Buckets,
    /// Its index in [`HistogramParts::live`].
    index: AtomicUsize,
}

impl Indexed for HistogramCell {
    fn index(&self) -> &AtomicUsize {
        &self.index
    }
}

#[derive(Debug)]
struct HistogramParts {
    /// Upper bounds, the last one `+Inf`.
    bounds: Arc<[f64]>,
    /// The same bounds for durations in whole nanoseconds ([`nanos_limit`]).
    limits: Arc<[u64]>,
    /// What writers that are gone observed.
    retired_sum: f64,
    retired: Vec<u64>,
    retired_native: Vec<u64>,
    live: Vec<Arc<HistogramCell>>,
}

/// A histogram series whose observations come from [`HistogramWriter`]s.
#[derive(Debug, Clone)]
pub struct LocalHistogram {
    parts: Arc<Mutex<HistogramParts>>,
}

impl LocalHistogram {
    /// With these upper bounds (as prometheus-client's `Histogram::new`: non-finite ones
    /// are dropped and `+Inf` is added).
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Arc<[f64]> = bounds
            .into_iter()
            .filter(|b| b.is_finite())
            .chain(std::iter::once(f64::INFINITY))
            .collect();
        LocalHistogram {
            parts: Arc::new(Mutex::new(HistogramParts {
                retired: vec![0; bounds.len()],
                retired_native: vec![0; native::SLOTS],
                retired_sum: 0.0,
                limits: bounds.iter().map(|b| nanos_limit(*b)).collect(),
                bounds,
                live: Vec::new(),
            })),
        }
    }

    /// A new writer (for one machine's task).
    pub fn writer(&self) -> HistogramWriter {
        let mut p = lock(&self.parts);
        let cell = Arc::new(HistogramCell {
            sum: AtomicU64::new(0.0_f64.to_bits()),
            sum_ns: AtomicU64::new(0),
            buckets: p.bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            native: native::Buckets::default(),
            index: AtomicUsize::new(0),
        });
        push_live(&mut p.live, cell.clone());
        HistogramWriter {
            bounds: p.bounds.clone(),
            limits: p.limits.clone(),
            cell,
            parts: self.parts.clone(),
        }
    }

    /// Sum, count and (bound, non-cumulative count) per bucket.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let p = lock(&self.parts);
        let mut sum = p.retired_sum;
        let mut counts = p.retired.clone();
        for c in &p.live {
            sum += c.sum_seconds();
            for (t, b) in counts.iter_mut().zip(c.buckets.iter()) {
                *t = t.wrapping_add(b.load(Ordering::Relaxed));
            }
        }
        let count = counts.iter().fold(0u64, |a, &b| a.wrapping_add(b));
        let buckets = p.bounds.iter().copied().zip(counts).collect();
        (sum, count, buckets)
    }

    /// The native buckets.
    fn native_snapshot(&self) -> native::Snapshot {
        let p = lock(&self.parts);
        let mut counts = p.retired_native.clone();
        for c in &p.live {
            c.native.add_to(&mut counts);
        }
        native::Snapshot { counts }
    }
}

impl TypedMetric for LocalHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LocalHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        native::offer(|| self.native_snapshot());
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

impl HistogramCell {
    /// Everything observed, in seconds.
    fn sum_seconds(&self) -> f64 {
        f64::from_bits(self.sum.load(Ordering::Relaxed))
            + self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
    }
}

/// One task's share of a [`LocalHistogram`]. Only one thread at a time may call
/// [`HistogramWriter::observe`] (the machine's task).
#[derive(Debug)]
pub struct HistogramWriter {
    bounds: Arc<[f64]>,
    limits: Arc<[u64]>,
    cell: Arc<HistogramCell>,
    parts: Arc<Mutex<HistogramParts>>,
}

impl HistogramWriter {
    /// Records `v` in the first bucket whose bound is at least `v` (`NaN`: the last one,
    /// as prometheus-client does).
    #[inline]
    pub fn observe(&self, v: f64) {
        let last = self.bounds.len().saturating_sub(1);
        let i = self.bounds.iter().position(|b| *b >= v).unwrap_or(last);
        if let Some(b) = self.cell.buckets.get(i) {
            bump(b, 1);
        }
        if let Some(b) = self.cell.native.cell(v) {
            bump(b, 1);
        }
        self.add_to_sum(v);
    }

    /// [`HistogramWriter::observe`] of a duration of `ns` nanoseconds, in seconds
    /// (`ns as f64 / 1e9`: the same bucket; the sum is kept in whole nanoseconds and
    /// converted when read), with the bucket found by comparing integers: no float
    /// arithmetic per observation.
    #[inline]
    pub fn observe_nanos(&self, ns: u64) {
        let last = self.limits.len().saturating_sub(1);
        let i = self.limits.iter().position(|l| ns < *l).unwrap_or(last);
        if let Some(b) = self.cell.buckets.get(i) {
            bump(b, 1);
        }
        if let Some(b) = self.cell.native.cell_nanos(ns) {
            bump(b, 1);
        }
        let s = &self.cell.sum_ns;
        s.store(
            s.load(Ordering::Relaxed).saturating_add(ns),
            Ordering::Relaxed,
        );
    }

    #[inline]
    fn add_to_sum(&self, v: f64) {
        let s = &self.cell.sum;
        s.store(
            (f64::from_bits(s.load(Ordering::Relaxed)) + v).to_bits(),
            Ordering::Relaxed,
        );
    }
}

/// The number of whole nanoseconds below which a duration falls in the bucket of upper
/// bound `bound` seconds: the least `n` with `n as f64 / 1e9 > bound` (0 for a negative
/// bound, `u64::MAX` for `+Inf`), so that `ns < nanos_limit(bound)` exactly when
/// `ns as f64 / 1e9 <= bound`. Computed once per histogram, not per observation.
fn nanos_limit(bound: f64) -> u64 {
    let fits = |n: u64| n as f64 / 1e9 <= bound;
    if !fits(0) {
        return 0;
    }
    if bound >= u64::MAX as f64 / 1e9 {
        return u64::MAX;
    }
    // `bound * 1e9` is within a few units of the answer; step to it.
    let mut n = (bound * 1e9) as u64;
    while n > 0 && !fits(n) {
        n -= 1;
    }
    while fits(n) {
        n += 1;
    }
    n
}

impl Drop for HistogramWriter {
    fn drop(&mut self) {
        let mut p = lock(&self.parts);
        p.retired_sum += self.cell.sum_seconds();
        for (t, b) in p.retired.iter_mut().zip(self.cell.buckets.iter()) {
            *t = t.wrapping_add(b.load(Ordering::Relaxed));
        }
        self.cell.native.add_to(&mut p.retired_native);
        remove_live(&mut p.live, &self.cell);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::registry::{Registry, Unit};

    fn render(r: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, r).expect("encode");
        out
    }

    #[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
    struct L {
        machine: String,
    }

    const BOUNDS: [f64; 4] = [0.001, 0.01, 0.1, 1.0];
    const VALUES: [f64; 7] = [0.0005, 0.001, 0.002, 0.5, 3.0, f64::NAN, 0.05];

    #[test]
    fn the_exposition_is_prometheus_clients_own() {
        let mut theirs = Registry::default();
        let c: Family<L, Counter> = Family::default();
        let h: Family<L, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(BOUNDS));
        theirs.register("c", "help", c.clone());
        theirs.register_with_unit("h", "help", Unit::Seconds, h.clone());
        let mut ours = Registry::default();
        let lc: Family<L, LocalCounter> = Family::default();
        let lh: Family<L, LocalHistogram, fn() -> LocalHistogram> =
            Family::new_with_constructor(|| LocalHistogram::new(BOUNDS));
        ours.register("c", "help", lc.clone());
        ours.register_with_unit("h", "help", Unit::Seconds, lh.clone());
        let l = L {
            machine: "m".into(),
        };
        let w = lc.get_or_create(&l).writer();
        let hw = lh.get_or_create(&l).writer();
        for v in VALUES.iter().filter(|v| !v.is_nan()) {
            c.get_or_create(&l).inc();
            w.inc();
            h.get_or_create(&l).observe(*v);
            hw.observe(*v);
        }
        assert_eq!(render(&theirs), render(&ours));
    }

    #[test]
    fn nanoseconds_land_where_their_seconds_would() {
        let bounds = [
            0.00005, 0.0001, 0.00025, 0.001, 0.01, 0.1, 1.0, 2.5, 60.0, 3600.0,
        ];
        let (a, b) = (LocalHistogram::new(bounds), LocalHistogram::new(bounds));
        let (wa, wb) = (a.writer(), b.writer());
        let mut values = vec![0, 1, 999, 1 << 53, (1 << 53) + 1];
        for bound in bounds {
            let n = (bound * 1e9) as u64;
            values.extend([n - 1, n, n + 1]);
        }
        // Last: a bucket of its own; the integer sum saturates (584 years).
        values.push(u64::MAX);
        for ns in values {
            wa.observe(ns as f64 / 1e9);
            wb.observe_nanos(ns);
            let ((sa, ca, ba), (sb, cb, bb)) = (a.snapshot(), b.snapshot());
            assert_eq!((ca, ba), (cb, bb), "{ns} ns");
            if ns == u64::MAX {
                assert_eq!(sb, u64::MAX as f64 / 1e9);
            } else {
                // Summed as floats of seconds or as integer nanoseconds: the same to 1e-12.
                assert!((sa - sb).abs() <= sa.abs() * 1e-12, "{ns} ns: {sa} vs {sb}");
            }
        }
        assert_eq!(nanos_limit(-1.0), 0);
        assert_eq!(nanos_limit(0.0), 1);
        assert_eq!(nanos_limit(0.00005), 50_001);
        assert_eq!(nanos_limit(f64::INFINITY), u64::MAX);
    }

    #[test]
    fn values_outlive_their_writers_and_add_up() {
        let c = LocalCounter::default();
        let h = LocalHistogram::new(BOUNDS);
        let (a, b) = (c.writer(), c.writer());
        let (ha, hb) = (h.writer(), h.writer());
        a.inc();
        b.inc();
        b.inc();
        ha.observe(0.002);
        hb.observe(5.0);
        hb.observe(f64::NAN);
        drop(a);
        drop(ha);
        assert_eq!(c.get(), 3);
        let (sum, count, buckets) = h.snapshot();
        assert!(sum.is_nan());
        assert_eq!(count, 3);
        assert_eq!(
            buckets.iter().map(|b| b.1).collect::<Vec<_>>(),
            [0, 1, 0, 0, 2]
        );
        let native = |h: &LocalHistogram| {
            let n = h.native_snapshot().counts;
            [0, native::slot(0.002), native::slot(5.0)].map(|s| n[s])
        };
        // NaN in the zero bucket.
        assert_eq!(native(&h), [1, 1, 1]);
        drop(b);
        drop(hb);
        assert_eq!(c.get(), 3);
        assert_eq!(h.snapshot().1, 3);
        assert_eq!(native(&h), [1, 1, 1]);
        assert_eq!(h.native_snapshot().counts.iter().sum::<u64>(), 3);
        assert!(c.parts.lock().expect("lock").live.is_empty());
    }

    #[test]
    fn writers_dropped_in_any_order_leave_the_others_counting() {
        let c = LocalCounter::default();
        let h = LocalHistogram::new(BOUNDS);
        let mut ws: Vec<_> = (0..10).map(|_| (c.writer(), h.writer())).collect();
        for (i, (w, hw)) in ws.iter().enumerate() {
            for _ in 0..=i {
                w.inc();
                hw.observe(0.002);
            }
        }
        // 1 + 2 + ... + 10 = 55. Drop the first, a middle one, the last, then the rest.
        let mut total = 55;
        for i in [0, 4, 7, 0, 3, 2, 1, 0, 1, 0] {
            let (w, hw) = ws.remove(i);
            drop((w, hw));
            assert_eq!(c.get(), total);
            assert_eq!(h.snapshot().1, total);
            // The survivors still count where the series reads them.
            for (w, hw) in &ws {
                w.inc();
                hw.observe(0.002);
            }
            total += ws.len() as u64;
            assert_eq!(c.get(), total);
            assert_eq!(h.snapshot().1, total);
            let p = c.parts.lock().expect("lock");
            assert_eq!(p.live.len(), ws.len());
            for (j, cell) in p.live.iter().enumerate() {
                assert_eq!(cell.index.load(Ordering::Relaxed), j);
            }
        }
        assert!(c.parts.lock().expect("lock").live.is_empty());
        assert!(h.parts.lock().expect("lock").live.is_empty());
    }
}

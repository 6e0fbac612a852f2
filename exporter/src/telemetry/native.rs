//! Native histograms: the duration histograms' exponential buckets, kept beside the classic
//! ones at observe time and exposed only in the protobuf exposition (the one format
//! Prometheus reads native histograms from; text and OpenMetrics keep the classic buckets).
//!
//! Buckets follow Prometheus's schema 3: bucket `i` holds the values in
//! `(2^((i-1)/8), 2^(i/8)]`, so each is about 9 % wide whatever the scale, and a quantile
//! read from them is within a few percent from 1 ns to years with no bounds to choose. A
//! value's bucket comes from the bits of its `f64`, no logarithm: the exponent gives the
//! power of two, and the top 8 bits of the mantissa pick a cell of a table that says how
//! many of the seven bounds inside a power of two lie below, up to one more comparison
//! (the observation's cost is measured in BENCHMARKS.md). The buckets are [`SLOTS`]
//! counters per series, in chunks allocated where values fall ([`Buckets`]): slot 0 is the
//! zero bucket (values up to
//! [`ZERO_THRESHOLD`], about 0.93 ns, and the values no duration has, negative and NaN, so
//! that the buckets still add up to the count), the others the buckets from just above
//! 2^-30 s to 2^26 s (776 days), the last one also taking anything longer.
//!
//! prometheus-client (feature `prometheus_protobuf`, built with protox: no `protoc`) turns
//! the registry into the protobuf `MetricFamily` messages, classic buckets and exemplars
//! included, but has no way to give a histogram with exemplars native buckets. So while
//! [`encode_protobuf`] runs, each duration histogram encodes its classic form as in text and
//! hands its native buckets to [`offer`]; [`encode_protobuf`] then adds them to the
//! histogram messages, which come out in the order the histograms were encoded, and copies
//! the classic buckets' exemplars to the native histogram's own list.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use prometheus_client::encoding::prometheus_protobuf::{self, prometheus_data_model as pb};
use prometheus_client::registry::Registry;
use prost::Message as _;

/// Prometheus's schema number: 2^3 = 8 buckets per power of two.
pub const SCHEMA: i32 = 3;
/// Buckets per power of two.
const PER_OCTAVE: i32 = 1 << SCHEMA;
/// The zero bucket's breadth: 2^-30 s (0.93 ns; a duration in whole nanoseconds is either
/// 0 or above it).
pub const ZERO_THRESHOLD: f64 = 1.0 / (1u64 << 30) as f64;
/// The index of the bucket whose upper bound is [`ZERO_THRESHOLD`] (not kept: values up to
/// it are the zero bucket's).
const MIN_INDEX: i32 = -30 * PER_OCTAVE;
/// The last bucket kept, upper bound 2^26 s; longer values are counted in it.
const MAX_INDEX: i32 = 26 * PER_OCTAVE;
/// Counters per series: the zero bucket and the buckets `MIN_INDEX + 1 ..= MAX_INDEX`.
pub const SLOTS: usize = (MAX_INDEX - MIN_INDEX) as usize + 1;

const MANTISSA: u64 = (1 << 52) - 1;
/// The mantissa bits of `2^(k/8)`, `k` in `0..8`: the bounds between the buckets of one
/// power of two (`2^(k/8)` to the nearest `f64`, checked against `exp2` below).
const BOUNDS: [u64; 8] = [
    0,
    1.0905077326652577_f64.to_bits() & MANTISSA,
    1.189207115002721_f64.to_bits() & MANTISSA,
    1.2968395546510096_f64.to_bits() & MANTISSA,
    std::f64::consts::SQRT_2.to_bits() & MANTISSA,
    1.5422108254079407_f64.to_bits() & MANTISSA,
    1.681792830507429_f64.to_bits() & MANTISSA,
    1.8340080864093424_f64.to_bits() & MANTISSA,
];

/// The mantissas are cut in 256 cells by their top 8 bits; the bounds are farther apart
/// than a cell is wide, so a cell holds at most one.
const CELL_SHIFT: u32 = 44;
/// For each cell, how many of [`BOUNDS`] lie below its first mantissa.
const BELOW: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut cell = 0;
    while cell < 256 {
        let start = (cell as u64) << CELL_SHIFT;
        let mut k = 0;
        while k < 8 {
            if BOUNDS[k] < start {
                t[cell] += 1;
            }
            k += 1;
        }
        cell += 1;
    }
    t
};
/// `NEXT[c]`: the bound after the `c` of [`BOUNDS`] below a cell, the only one that may lie
/// in it (none after the last: `u64::MAX`).
const NEXT: [u64; 9] = [
    BOUNDS[0],
    BOUNDS[1],
    BOUNDS[2],
    BOUNDS[3],
    BOUNDS[4],
    BOUNDS[5],
    BOUNDS[6],
    BOUNDS[7],
    u64::MAX,
];

/// How many of [`BOUNDS`] lie below `mantissa`: 0 for an exact power of two (the upper
/// bound of the bucket below), else 1 to 8. A table look-up and one comparison.
#[inline]
fn bounds_below(mantissa: u64) -> i32 {
    let c = BELOW[(mantissa >> CELL_SHIFT) as usize & 0xff];
    let next = NEXT.get(usize::from(c)).copied().unwrap_or(u64::MAX);
    i32::from(c) + i32::from(mantissa > next)
}

/// The counter (0 for the zero bucket, else `index - MIN_INDEX`) of an observation of `v`.
#[inline]
#[allow(clippy::neg_cmp_op_on_partial_ord)] // one comparison, which NaN fails too
pub fn slot(v: f64) -> usize {
    if !(v > ZERO_THRESHOLD) {
        return 0;
    }
    let bits = v.to_bits();
    // `v` is positive and normal (above 2^-30): no sign bit, a biased exponent of at least
    // 993. `+Inf` has 2047, which lands in the last bucket.
    let exp = (bits >> 52) as i32 - 1023;
    let index = (exp * PER_OCTAVE + bounds_below(bits & MANTISSA)).min(MAX_INDEX);
    (index - MIN_INDEX) as usize
}

/// [`slot`] of a duration of `ns` nanoseconds, in seconds (through `i64`, whose conversion
/// to `f64` is one instruction; 2^63 ns, 292 years, is in the last bucket anyway).
#[inline]
pub fn slot_nanos(ns: u64) -> usize {
    let ns = ns.min(i64::MAX as u64) as i64;
    slot(ns as f64 / 1e9)
}

/// Counters per chunk of [`Buckets`].
const CHUNK: usize = 32;

/// Chunks of [`Buckets`].
const CHUNKS: usize = SLOTS.div_ceil(CHUNK);

/// A series' native buckets: one counter per [`SLOTS`], in chunks of [`CHUNK`] allocated
/// when a value first falls in one. The durations of a series usually span a few
/// neighbouring buckets, so a series holds one or two chunks (256 bytes each) rather than
/// all 449 counters (3.6 KB), and one that never observes (an idle run-time instance's)
/// holds none: the empty chunk table is 15 pointers' worth.
#[derive(Debug, Default)]
pub struct Buckets([OnceLock<Box<[AtomicU64; CHUNK]>>; CHUNKS]);

impl Buckets {
    /// The counter of bucket slot `i`, its chunk allocated if it was not.
    #[inline]
    fn at(&self, i: usize) -> Option<&AtomicU64> {
        let chunk = self
            .0
            .get(i / CHUNK)?
            .get_or_init(|| Box::new(std::array::from_fn(|_| AtomicU64::new(0))));
        chunk.get(i % CHUNK)
    }

    /// The counter of an observation of `v`.
    #[inline]
    pub fn cell(&self, v: f64) -> Option<&AtomicU64> {
        self.at(slot(v))
    }

    /// The counter of a duration of `ns` nanoseconds.
    #[inline]
    pub fn cell_nanos(&self, ns: u64) -> Option<&AtomicU64> {
        self.at(slot_nanos(ns))
    }

    /// Adds one for `v`, from any thread.
    #[inline]
    pub fn observe_shared(&self, v: f64) {
        if let Some(c) = self.cell(v) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds the counts to `into` (of [`SLOTS`] counts).
    pub fn add_to(&self, into: &mut [u64]) {
        for (k, chunk) in self.0.iter().enumerate() {
            let Some(chunk) = chunk.get() else { continue };
            let start = (k * CHUNK).min(into.len());
            for (t, c) in into[start..].iter_mut().zip(chunk.iter()) {
                *t = t.wrapping_add(c.load(Ordering::Relaxed));
            }
        }
    }

    /// The counts.
    pub fn snapshot(&self) -> Snapshot {
        let mut counts = vec![0; SLOTS];
        self.add_to(&mut counts);
        Snapshot { counts }
    }
}

/// A series' native buckets at one moment: [`SLOTS`] counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// `[0]` the zero bucket, `[i]` bucket `MIN_INDEX + i`.
    pub counts: Vec<u64>,
}

impl Snapshot {
    /// Fills the native fields of `h`, a histogram message with the classic buckets of the
    /// same series: schema, zero bucket, the positive buckets as spans and deltas (runs of up
    /// to two empty buckets inside a span, as Prometheus's Go client does), the count as the
    /// sum of the native buckets (so that the two agree even when an observation landed
    /// between the reading of the classic and the native counts), and the classic buckets'
    /// exemplars in the native histogram's own list.
    pub fn fill(&self, h: &mut pb::Histogram) {
        h.schema = SCHEMA;
        h.zero_threshold = ZERO_THRESHOLD;
        let zero = self.counts.first().copied().unwrap_or(0);
        h.zero_count = zero;
        let mut total = zero;
        let (mut spans, mut deltas) = (Vec::<pb::BucketSpan>::new(), Vec::<i64>::new());
        let (mut previous, mut next_index) = (0i64, 0i32);
        for (i, &count) in self.counts.iter().enumerate().skip(1) {
            if count == 0 {
                continue;
            }
            total = total.wrapping_add(count);
            let index = MIN_INDEX + i as i32;
            let gap = index - next_index;
            match spans.last_mut() {
                Some(span) if gap <= 2 => {
                    for _ in 0..gap {
                        deltas.push(-previous);
                        previous = 0;
                    }
                    span.length += gap as u32 + 1;
                }
                _ => spans.push(pb::BucketSpan {
                    offset: gap,
                    length: 1,
                }),
            }
            let count = i64::try_from(count).unwrap_or(i64::MAX);
            deltas.push(count - previous);
            previous = count;
            next_index = index + 1;
        }
        h.positive_span = spans;
        h.positive_delta = deltas;
        h.sample_count = total;
        h.exemplars = h.bucket.iter().filter_map(|b| b.exemplar.clone()).collect();
    }
}

thread_local! {
    /// While [`encode_protobuf`] runs on this thread: the native buckets of each histogram
    /// encoded so far, in order.
    static OFFERED: RefCell<Option<Vec<Snapshot>>> = const { RefCell::new(None) };
}

/// Called by a duration histogram right after it encoded its classic form: when the
/// exposition being written is the protobuf one, takes its native buckets (`snapshot` is
/// not called otherwise, so text scrapes never read them).
pub fn offer(snapshot: impl FnOnce() -> Snapshot) {
    OFFERED.with(|o| {
        if let Some(list) = o.borrow_mut().as_mut() {
            list.push(snapshot());
        }
    });
}

/// Turns [`OFFERED`] on for this thread until dropped (also on a panic).
struct Collecting;

impl Collecting {
    fn start() -> Self {
        OFFERED.with(|o| *o.borrow_mut() = Some(Vec::new()));
        Collecting
    }

    fn finish(self) -> Vec<Snapshot> {
        OFFERED.with(|o| o.borrow_mut().take()).unwrap_or_default()
    }
}

impl Drop for Collecting {
    fn drop(&mut self) {
        OFFERED.with(|o| *o.borrow_mut() = None);
    }
}

/// The protobuf exposition of `registry`: length-delimited `io.prometheus.client.MetricFamily`
/// messages, the duration histograms with their native buckets.
///
/// Every histogram in the registry must offer its native buckets (all of Turnstile's are
/// duration histograms that do); if the count of histogram messages and of offers differs,
/// the histograms are served in their classic form only and the error is returned beside
/// the page, never a page with buckets given to the wrong series.
pub fn encode_protobuf(registry: &Registry) -> (Vec<u8>, Option<String>) {
    let collecting = Collecting::start();
    let families = prometheus_protobuf::encode(registry);
    let offered = collecting.finish();
    let mut families = match families {
        Ok(f) => f,
        Err(e) => return (Vec::new(), Some(format!("encoding metrics failed: {e}"))),
    };
    let error = attach(&mut families, offered);
    let mut out = Vec::new();
    for f in &families {
        // Writing to a `Vec` cannot run out of room.
        let _ = f.encode_length_delimited(&mut out);
    }
    (out, error)
}

/// Adds the offered native buckets to the histogram messages of `families`, in order.
fn attach(families: &mut [pb::MetricFamily], offered: Vec<Snapshot>) -> Option<String> {
    let histograms = families
        .iter()
        .flat_map(|f| f.metric.iter())
        .filter(|m| m.histogram.is_some())
        .count();
    if histograms != offered.len() {
        return Some(format!(
            "{histograms} histograms but {} native forms: histograms served classic only",
            offered.len()
        ));
    }
    let messages = families
        .iter_mut()
        .flat_map(|f| f.metric.iter_mut())
        .filter_map(|m| m.histogram.as_mut());
    for (h, s) in messages.zip(offered) {
        s.fill(h);
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The Prometheus bucket index of `v` (above the zero bucket).
    fn index(v: f64) -> i32 {
        MIN_INDEX + slot(v) as i32
    }

    #[test]
    fn chunks_are_allocated_where_values_fall_and_counted_in_place() {
        let b = Buckets::default();
        assert!(
            b.0.iter().all(|c| c.get().is_none()),
            "nothing allocated before a value"
        );
        let mut none = vec![0; SLOTS];
        b.add_to(&mut none);
        assert!(none.iter().all(|&n| n == 0));
        for v in [0.0, 1e-9, 0.003, 0.003, 2.5, 1e12] {
            b.observe_shared(v);
        }
        let allocated = b.0.iter().filter(|c| c.get().is_some()).count();
        assert!(allocated <= 5, "{allocated} chunks");
        let counts = b.snapshot().counts;
        assert_eq!(counts.len(), SLOTS);
        for (v, n) in [(0.0, 1), (1e-9, 1), (0.003, 2), (2.5, 1), (1e12, 1)] {
            assert_eq!(counts[slot(v)], n, "{v}");
        }
        assert_eq!(counts.iter().sum::<u64>(), 6);
        assert_eq!(slot(1e12), SLOTS - 1, "the last slot is in the last chunk");
    }

    #[test]
    fn bucket_indexes_follow_schema_3() {
        assert_eq!(SLOTS, 449);
        // Powers of two are the upper bounds of their bucket.
        assert_eq!(index(1.0), 0);
        assert_eq!(index(2.0), 8);
        assert_eq!(index(0.5), -8);
        assert_eq!(index(f64::from_bits(1.0_f64.to_bits() + 1)), 1);
        assert_eq!(index(1.0905077326652577), 1);
        assert_eq!(
            index(f64::from_bits(1.0905077326652577_f64.to_bits() + 1)),
            2
        );
        assert_eq!(index(1.9), 8);
        assert_eq!(index(3.0), 13); // 2^(12/8) = 2.83 < 3 <= 2^(13/8) = 3.08
                                    // 1 ns: log2(1e-9) * 8 = -239.18.
        assert_eq!(slot_nanos(1), slot(1e-9));
        assert_eq!(index(1e-9), -239);
        assert_eq!(slot_nanos(1), 1);
        // 1 ms, 1 s, 1 h against ceil(8 log2 v).
        for v in [1e-3, 0.0123, 1.5, 3600.0, 86_400.0] {
            assert_eq!(index(v), (v.log2() * 8.0).ceil() as i32, "{v}");
        }
        // The zero bucket: 0, up to the threshold, and what no duration is.
        for v in [0.0, ZERO_THRESHOLD, -1.0, f64::NAN, f64::NEG_INFINITY] {
            assert_eq!(slot(v), 0, "{v}");
        }
        assert_eq!(slot_nanos(0), 0);
        assert_eq!(
            index(f64::from_bits(ZERO_THRESHOLD.to_bits() + 1)),
            MIN_INDEX + 1
        );
        // The top: 2^26 s, then everything longer.
        assert_eq!(index(67_108_864.0), MAX_INDEX);
        assert_eq!(slot(1e12), SLOTS - 1);
        assert_eq!(slot(f64::INFINITY), SLOTS - 1);
        assert_eq!(slot_nanos(u64::MAX), SLOTS - 1);
    }

    #[test]
    fn the_table_counts_the_bounds_as_comparing_them_all_does() {
        let slow = |m: u64| BOUNDS.iter().map(|b| i32::from(m > *b)).sum::<i32>();
        let mut mantissas = vec![0, 1, MANTISSA, MANTISSA - 1];
        for b in BOUNDS {
            mantissas.extend([b.saturating_sub(1), b, b + 1]);
        }
        for cell in 0..256u64 {
            let start = cell << CELL_SHIFT;
            mantissas.extend([start, start + 1, start.wrapping_sub(1) & MANTISSA]);
        }
        // And a spread of others (a fixed LCG).
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..100_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            mantissas.push(x & MANTISSA);
        }
        for m in mantissas {
            assert_eq!(bounds_below(m), slow(m), "{m:#x}");
        }
    }

    #[test]
    fn the_bounds_are_powers_of_the_eighth_root_of_two() {
        for (k, b) in BOUNDS.iter().enumerate().skip(1) {
            let exact = (k as f64 / 8.0).exp2();
            assert_eq!(exact.to_bits() & MANTISSA, *b, "2^({k}/8)");
        }
    }

    fn histogram_of(values: &[f64]) -> pb::Histogram {
        let b = Buckets::default();
        for v in values {
            b.observe_shared(*v);
        }
        let mut h = pb::Histogram {
            sample_count: values.len() as u64,
            ..Default::default()
        };
        b.snapshot().fill(&mut h);
        h
    }

    #[test]
    fn spans_and_deltas() {
        let h = histogram_of(&[1.0, 0.9, 1.05, 1.3, 0.0, 2.0, 2.0, 2.0]);
        assert_eq!(h.schema, 3);
        assert_eq!(h.zero_threshold, ZERO_THRESHOLD);
        assert_eq!(h.zero_count, 1);
        assert_eq!(h.sample_count, 8);
        // 0.9 is bucket -1; 1.0 bucket 0; 1.05 bucket 1; 1.3 bucket 4 (2^(3/8) = 1.297); 2.0
        // bucket 8 (three).
        let spans: Vec<(i32, u32)> = h
            .positive_span
            .iter()
            .map(|s| (s.offset, s.length))
            .collect();
        assert_eq!(spans, [(-1, 6), (3, 1)]);
        // Counts 1, 1, 1, 0, 0, 1 | 3.
        assert_eq!(h.positive_delta, [1, 0, 0, -1, 0, 1, 2]);
        let empty = histogram_of(&[]);
        assert!(empty.positive_span.is_empty());
        // Still a native histogram to Prometheus: the zero threshold is not 0.
        assert!(empty.zero_threshold > 0.0);
    }

    #[test]
    fn encoded_and_decoded() {
        use prometheus_client::metrics::family::Family;
        #[derive(
            Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet,
        )]
        struct L {
            machine: String,
        }
        let mut registry = Registry::with_prefix("t");
        let f: Family<L, crate::telemetry::local::LocalHistogram, fn() -> _> =
            Family::new_with_constructor(|| crate::telemetry::local::LocalHistogram::new([0.1]));
        registry.register_with_unit(
            "d",
            "Durations",
            prometheus_client::registry::Unit::Seconds,
            f.clone(),
        );
        let c: prometheus_client::metrics::counter::Counter = Default::default();
        registry.register("c", "A counter", c.clone());
        c.inc();
        let w = f
            .get_or_create(&L {
                machine: "m".into(),
            })
            .writer();
        w.observe_nanos(1_000_000_000);
        w.observe(0.05);
        let (bytes, error) = encode_protobuf(&registry);
        assert_eq!(error, None);
        let mut buf = &bytes[..];
        let mut families = Vec::new();
        while !buf.is_empty() {
            families.push(pb::MetricFamily::decode_length_delimited(&mut buf).unwrap());
        }
        let names: Vec<&str> = families.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["t_d_seconds", "t_c_total"]);
        let m = &families[0].metric[0];
        assert_eq!(m.label[0].name, "machine");
        let h = m.histogram.as_ref().unwrap();
        assert_eq!(h.sample_count, 2);
        assert!((h.sample_sum - 1.05).abs() < 1e-12);
        assert_eq!(h.bucket.len(), 2);
        assert_eq!(h.bucket[0].cumulative_count, 1);
        assert_eq!(h.schema, 3);
        // 0.05 s: ceil(8 log2 0.05) = -34; 1 s: 0.
        let spans: Vec<(i32, u32)> = h
            .positive_span
            .iter()
            .map(|s| (s.offset, s.length))
            .collect();
        assert_eq!(spans, [(-34, 1), (33, 1)]);
        assert_eq!(h.positive_delta, [1, 0]);
        assert_eq!(families[1].metric[0].counter.as_ref().unwrap().value, 1.0);
        // Outside `encode_protobuf`, nothing is collected.
        offer(|| unreachable!("not asked for"));
    }

    #[test]
    fn a_histogram_that_offers_nothing_leaves_all_of_them_classic() {
        let mut families = vec![pb::MetricFamily {
            metric: vec![pb::Metric {
                histogram: Some(pb::Histogram::default()),
                ..Default::default()
            }],
            ..Default::default()
        }];
        let error = attach(&mut families, Vec::new());
        assert!(error.unwrap().contains("1 histograms but 0"));
        assert_eq!(
            families[0].metric[0].histogram,
            Some(pb::Histogram::default())
        );
        let empty = Snapshot {
            counts: vec![0; SLOTS],
        };
        assert_eq!(attach(&mut families, vec![empty]), None);
        assert_eq!(families[0].metric[0].histogram.as_ref().unwrap().schema, 3);
    }
}

//! A fixed-bucket latency histogram with one writer (see `counter` for the contract).

use std::time::Duration;

use super::counter::Counter;

/// The upper bounds of the finite buckets, in seconds; a last `+Inf` bucket follows.
pub const BUCKETS_SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// [`BUCKETS_SECONDS`] in nanoseconds, what `observe` compares against.
const BUCKETS_NANOS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// The number of buckets, `+Inf` included.
pub const BUCKET_COUNT: usize = BUCKETS_SECONDS.len() + 1;

/// A histogram of durations over [`BUCKETS_SECONDS`].
///
/// Buckets are stored non-cumulative (an observation touches one bucket) and made cumulative
/// when rendered. The count is not stored: it is the sum of the buckets, computed at scrape
/// time, which saves one store per observation and guarantees `_count` equals the `+Inf`
/// bucket even while the shard keeps writing.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [Counter; BUCKET_COUNT],
    sum_nanos: Counter,
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one duration: a search over the 14 bounds and two single-writer adds (the
    /// bucket, the sum in nanoseconds). A duration on a bound counts in that bound's bucket
    /// (`le` is "less than or equal"). Only the owning shard calls this.
    #[inline]
    pub fn observe(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKETS_NANOS.partition_point(|&bound| bound < nanos);
        self.buckets[i].inc();
        self.sum_nanos.add(nanos);
    }

    /// Adds this histogram's current values into `into` (summing shards at scrape time).
    pub fn add_to(&self, into: &mut HistogramSnapshot) {
        for (sum, b) in into.buckets.iter_mut().zip(&self.buckets) {
            *sum = sum.wrapping_add(b.get());
        }
        into.sum_nanos = into.sum_nanos.wrapping_add(self.sum_nanos.get());
    }

    /// A copy of the current values.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut s = HistogramSnapshot::default();
        self.add_to(&mut s);
        s
    }
}

/// Plain values read from one or more [`Histogram`]s.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Observations per bucket, non-cumulative; the last is `+Inf`.
    pub buckets: [u64; BUCKET_COUNT],
    /// The sum of all observations in nanoseconds.
    pub sum_nanos: u64,
}

impl HistogramSnapshot {
    /// The number of observations (the sum of the buckets).
    pub fn count(&self) -> u64 {
        self.buckets.iter().fold(0u64, |a, b| a.wrapping_add(*b))
    }

    /// The buckets made cumulative, as rendered: entry `i` counts observations `<=` bound `i`.
    pub fn cumulative(&self) -> [u64; BUCKET_COUNT] {
        let mut out = [0; BUCKET_COUNT];
        let mut acc = 0u64;
        for (o, b) in out.iter_mut().zip(&self.buckets) {
            acc = acc.wrapping_add(*b);
            *o = acc;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket_of(d: Duration) -> usize {
        let h = Histogram::new();
        h.observe(d);
        let s = h.snapshot();
        assert_eq!(s.count(), 1);
        s.buckets.iter().position(|&b| b == 1).expect("one bucket")
    }

    #[test]
    fn nanosecond_bounds_match_the_seconds() {
        for (s, n) in BUCKETS_SECONDS.iter().zip(BUCKETS_NANOS) {
            assert_eq!((s * 1e9).round() as u64, n);
        }
    }

    #[test]
    fn a_value_on_a_bound_counts_in_that_bucket_and_one_above_in_the_next() {
        assert_eq!(bucket_of(Duration::ZERO), 0);
        for (i, &n) in BUCKETS_NANOS.iter().enumerate() {
            assert_eq!(bucket_of(Duration::from_nanos(n)), i, "on bound {n}");
            assert_eq!(
                bucket_of(Duration::from_nanos(n + 1)),
                i + 1,
                "above bound {n}"
            );
            assert_eq!(bucket_of(Duration::from_nanos(n - 1)), i, "below bound {n}");
        }
        assert_eq!(bucket_of(Duration::from_secs(11)), 14);
        assert_eq!(bucket_of(Duration::MAX), 14);
    }

    #[test]
    fn sum_and_cumulative_buckets() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(300)); // bucket 0
        h.observe(Duration::from_millis(1)); // bucket 1
        h.observe(Duration::from_millis(3)); // bucket 3
        h.observe(Duration::from_secs(20)); // +Inf
        let s = h.snapshot();
        assert_eq!(
            s.sum_nanos,
            300_000 + 1_000_000 + 3_000_000 + 20_000_000_000
        );
        assert_eq!(s.count(), 4);
        assert_eq!(
            s.cumulative(),
            [1, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 4]
        );
    }

    #[test]
    fn snapshots_of_several_histograms_add_up() {
        let (a, b) = (Histogram::new(), Histogram::new());
        a.observe(Duration::from_millis(2));
        b.observe(Duration::from_millis(2));
        b.observe(Duration::from_secs(1));
        let mut s = HistogramSnapshot::default();
        a.add_to(&mut s);
        b.add_to(&mut s);
        assert_eq!(s.buckets[2], 2);
        assert_eq!(s.buckets[10], 1);
        assert_eq!(s.sum_nanos, 1_004_000_000);
    }
}

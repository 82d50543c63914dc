//! A sliding time window of two counters kept in ten buckets, shared by the retry budget
//! (requests, retries) and the circuit breaker's failure-rate trigger (results, failures).
//!
//! Shard-local and `&mut self` (invariant 1). Time is always passed in (`now`), so
//! tests drive it with an injected clock. A bucket is `width` long; the window is the current
//! bucket and the nine before it, so what it counts reaches between `9 × width` and
//! `10 × width` into the past. Recording and summing are O(1) and O(10), and nothing allocates.

use std::time::{Duration, Instant};

/// BUCKETS is how many buckets a [`Window`] spans.
pub(crate) const BUCKETS: usize = 10;

/// Bucket is one `width`-long slice of the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bucket {
    /// Which slice of time (`elapsed / width` since the window's epoch) the counts belong to;
    /// a bucket whose slot is older than the window is stale and reads as zero.
    slot: u64,
    /// The first counter (requests).
    a: u64,
    /// The second counter (retries or failures).
    b: u64,
}

/// Window is a sliding window of two counters over `BUCKETS × width`.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    /// Time zero of the slot numbering.
    epoch: Instant,
    /// Bucket width in nanoseconds (>= 1).
    width_ns: u128,
    /// The newest slot seen, so a `now` slightly older than an earlier one (two tasks that
    /// read the clock out of order) never wipes a newer bucket.
    latest: u64,
    /// The buckets, indexed by `slot % BUCKETS`.
    buckets: [Bucket; BUCKETS],
}

impl Window {
    /// A window of `BUCKETS` buckets of `width` each (at least 1 ns), starting empty at `now`.
    pub(crate) fn new(width: Duration, now: Instant) -> Self {
        Window {
            epoch: now,
            width_ns: width.as_nanos().max(1),
            latest: 0,
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    /// The slot `now` falls in (never older than the newest one seen).
    fn slot(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.epoch).as_nanos() / self.width_ns;
        u64::try_from(elapsed).unwrap_or(u64::MAX).max(self.latest)
    }

    /// Adds `a` and `b` to the counters of the bucket `now` falls in.
    pub(crate) fn add(&mut self, now: Instant, a: u64, b: u64) {
        let slot = self.slot(now);
        self.latest = slot;
        let bucket = &mut self.buckets[(slot % BUCKETS as u64) as usize];
        if bucket.slot != slot {
            *bucket = Bucket { slot, a: 0, b: 0 };
        }
        bucket.a = bucket.a.saturating_add(a);
        bucket.b = bucket.b.saturating_add(b);
    }

    /// The sums of both counters over the window ending at `now`.
    pub(crate) fn sums(&self, now: Instant) -> (u64, u64) {
        let slot = self.slot(now);
        let oldest = slot.saturating_sub(BUCKETS as u64 - 1);
        self.buckets
            .iter()
            .filter(|b| b.slot >= oldest && b.slot <= slot)
            .fold((0u64, 0u64), |(a, b), bucket| {
                (a.saturating_add(bucket.a), b.saturating_add(bucket.b))
            })
    }

    /// Forgets every count.
    pub(crate) fn clear(&mut self) {
        // Zeroed buckets read as zero whatever slot they claim; `latest` stays, so time
        // never runs backwards.
        self.buckets = [Bucket::default(); BUCKETS];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn counts_slide_out_after_ten_buckets() {
        let t0 = Instant::now();
        let mut w = Window::new(S, t0);
        w.add(t0, 1, 0);
        w.add(t0 + Duration::from_millis(999), 1, 1);
        assert_eq!(w.sums(t0), (2, 1));
        w.add(t0 + 5 * S, 10, 2);
        assert_eq!(w.sums(t0 + 5 * S), (12, 3));
        // Bucket 0 is in the window up to slot 9, gone at slot 10.
        assert_eq!(w.sums(t0 + 9 * S + Duration::from_millis(999)), (12, 3));
        assert_eq!(w.sums(t0 + 10 * S), (10, 2));
        assert_eq!(w.sums(t0 + 15 * S), (0, 0));
        // A bucket is reused for its slot ten later.
        w.add(t0 + 20 * S, 3, 3);
        assert_eq!(w.sums(t0 + 20 * S), (3, 3));
    }

    #[test]
    fn an_older_now_never_wipes_a_newer_bucket() {
        let t0 = Instant::now();
        let mut w = Window::new(S, t0);
        w.add(t0 + 12 * S, 5, 0);
        // 2 s is slot 2, which shares bucket 2 with slot 12: it counts as slot 12 instead.
        w.add(t0 + 2 * S, 1, 0);
        assert_eq!(w.sums(t0 + 12 * S), (6, 0));
        assert_eq!(w.sums(t0), (6, 0));
    }

    #[test]
    fn clear_forgets_everything() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_millis(100), t0);
        w.add(t0, 4, 4);
        w.add(t0 + S / 2, 4, 4);
        w.clear();
        assert_eq!(w.sums(t0 + S / 2), (0, 0));
        w.add(t0 + S / 2, 1, 0);
        assert_eq!(w.sums(t0 + S / 2), (1, 0));
    }
}

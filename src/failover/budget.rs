//! The retry budget: a per-shard cap on how much extra load retries may add.
//!
//! Without a budget, a full outage turns every request into `1 + max_retries` tries and
//! multiplies the load on an already failing upstream. The budget (as in Finagle's
//! `RetryBudget` and gRPC's retry throttling) lets retries add at most a percentage of the
//! recent requests, plus a small fixed allowance so that low-traffic upstreams can still retry:
//!
//! ```text
//! allowed retries in the window = floor(requests × budget_percent / 100)
//!                               + min_retries_per_sec × 10
//! ```
//!
//! where `requests` counts the client requests (first tries only, [`RetryBudget::record_request`])
//! and the retries already granted in the same sliding window of the last 10 s (ten 1 s
//! buckets). A retry is granted while the retries in the window are below that allowance.
//!
//! One budget per upstream group per shard (the keys are per upstream), mutated with `&mut self`:
//! no atomics, no cross-shard traffic (invariant 1). Each shard enforces its own
//! share, so across `N` shards the totals obey the same formula with `N × min_retries_per_sec`.

use std::time::{Duration, Instant};

use super::window::{Window, BUCKETS};
use super::RetryPolicy;

/// WINDOW is the span of the budget's sliding window: ten 1 s buckets.
pub const WINDOW: Duration = Duration::from_secs(BUCKETS as u64);

/// RetryBudget is one shard's retry allowance for one upstream group: retries may add at most
/// `budget_percent` % (default 20) of the requests of the last 10 s, plus
/// `min_retries_per_sec` (default 3) per second of the window.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    /// Retries may add this percentage of the requests in the window. Default 20.
    percent: u32,
    /// Retries per second always allowed on top (so idle upstreams can retry). Default 3.
    min_per_sec: u32,
    /// Requests (first counter) and granted retries (second counter) of the last 10 s.
    window: Window,
}

impl RetryBudget {
    /// new is an empty budget starting at `now`.
    pub fn new(percent: u32, min_per_sec: u32, now: Instant) -> Self {
        RetryBudget {
            percent,
            min_per_sec,
            window: Window::new(Duration::from_secs(1), now),
        }
    }

    /// from_policy is an empty budget with an upstream's `budget_percent` and
    /// `min_retries_per_sec`.
    pub fn from_policy(policy: &RetryPolicy, now: Instant) -> Self {
        RetryBudget::new(policy.budget_percent, policy.min_retries_per_sec, now)
    }

    /// record_request counts one client request (its first try, not its retries).
    pub fn record_request(&mut self, now: Instant) {
        self.window.add(now, 1, 0);
    }

    /// try_acquire_retry grants and counts one retry if the window's retries are below the
    /// allowance; `false` means the request must not be retried (give up).
    pub fn try_acquire_retry(&mut self, now: Instant) -> bool {
        if !self.can_retry(now) {
            return false;
        }
        self.window.add(now, 0, 1);
        true
    }

    /// can_retry is whether [`RetryBudget::try_acquire_retry`] would grant a retry now
    /// (without counting one).
    pub fn can_retry(&self, now: Instant) -> bool {
        let (_, retries) = self.window.sums(now);
        retries < self.allowance(now)
    }

    /// allowance is how many retries the window ending at `now` allows in all:
    /// `floor(requests × percent / 100) + min_per_sec × 10`.
    pub fn allowance(&self, now: Instant) -> u64 {
        let (requests, _) = self.window.sums(now);
        let share = requests.saturating_mul(u64::from(self.percent)) / 100;
        share.saturating_add(u64::from(self.min_per_sec) * WINDOW.as_secs())
    }

    /// counts is `(requests, retries)` in the window ending at `now` (for tests).
    #[cfg(test)]
    pub fn counts(&self, now: Instant) -> (u64, u64) {
        self.window.sums(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const S: Duration = Duration::from_secs(1);

    #[test]
    fn allowance_arithmetic() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(20, 3, t0);
        assert_eq!(b.allowance(t0), 30); // 0 × 20% + 3/s × 10 s
        for _ in 0..99 {
            b.record_request(t0);
        }
        assert_eq!(b.allowance(t0), 19 + 30); // floor(99 × 0.2) = 19
        b.record_request(t0);
        assert_eq!(b.allowance(t0), 20 + 30);
        assert_eq!(b.counts(t0), (100, 0));

        let no_min = RetryBudget::new(20, 0, t0);
        assert_eq!(no_min.allowance(t0), 0);
        assert!(!no_min.can_retry(t0));
    }

    #[test]
    fn grants_exactly_the_allowance() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(20, 3, t0);
        for _ in 0..50 {
            b.record_request(t0);
        }
        // floor(50 × 0.2) + 30 = 40 retries, then no more.
        let granted = (0..100).filter(|_| b.try_acquire_retry(t0)).count();
        assert_eq!(granted, 40);
        assert_eq!(b.counts(t0), (50, 40));
        assert!(!b.can_retry(t0 + 9 * S));
        // Each new request adds a fifth of a retry: 5 more requests, 1 more retry.
        for _ in 0..4 {
            b.record_request(t0 + S);
        }
        assert!(!b.try_acquire_retry(t0 + S));
        b.record_request(t0 + S);
        assert!(b.try_acquire_retry(t0 + S));
        assert!(!b.try_acquire_retry(t0 + S));
    }

    #[test]
    fn the_window_slides() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(0, 1, t0);
        // 10 retries per window with no requests.
        assert_eq!((0..20).filter(|_| b.try_acquire_retry(t0)).count(), 10);
        assert!(!b.try_acquire_retry(t0 + 9 * S + 999 * MS));
        // At 10 s the first second's retries have left the window.
        assert!(b.try_acquire_retry(t0 + 10 * S));
        assert_eq!(b.counts(t0 + 10 * S), (0, 1));
    }

    /// During a full outage every request fails and wants `max_retries` = 3 retries; the
    /// budget keeps retries ÷ requests at the configured percentage plus the fixed allowance.
    #[test]
    fn a_full_outage_cannot_multiply_load() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(20, 3, t0);
        let (mut requests, mut retries) = (0u64, 0u64);
        // 1000 requests per second for 60 s, evenly spread.
        for i in 0..60_000u64 {
            let now = t0 + Duration::from_millis(i);
            b.record_request(now);
            requests += 1;
            for _ in 0..3 {
                if b.try_acquire_retry(now) {
                    retries += 1;
                } else {
                    break;
                }
            }
            // At every moment, the window holds at most the allowance.
            let (in_requests, in_retries) = b.counts(now);
            assert!(in_retries <= in_requests / 5 + 30, "at {i} ms");
        }
        // Over the whole run: at most 20 % of requests plus 3/s × 60 s (plus one window's
        // worth of the fixed allowance for the start, when the window was still filling).
        let bound = requests / 5 + 3 * 60 + 30;
        assert!(
            retries <= bound,
            "{retries} retries for {requests} requests"
        );
        // And the budget is used, not starved: close to 20 % + 3/s.
        assert!(
            retries >= requests / 5,
            "{retries} retries for {requests} requests"
        );
        // Without the budget it would have been 3 retries per request.
        assert!(retries * 10 < requests * 3);
    }
}

//! Exponential backoff with full jitter, for retries once every eligible peer was tried.
//!
//! Attempt `k` (0 for the first wait) sleeps a uniformly random time in
//! `[0, min(max, base × 2^k)]` ("full jitter", as in the AWS architecture blog's "Exponential
//! Backoff And Jitter"): spreading waits over the whole interval keeps clients that failed
//! together from retrying together. Randomness comes from a caller-supplied [`fastrand::Rng`]
//! (one per shard), so tests are deterministic with a seeded one.

use std::time::Duration;

/// Backoff is the exponential-backoff schedule of an upstream's retries: `base` doubling per
/// attempt, capped at `max`. Defaults: base 100 ms, max 5000 ms (`backoff_base_ms`,
/// `backoff_max_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first wait. Default 100 ms.
    pub base: Duration,
    /// No wait is longer than this. Default 5000 ms.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(5000),
        }
    }
}

impl Backoff {
    /// ceiling is the longest wait of attempt `attempt` (0-based): `min(max, base × 2^attempt)`,
    /// without overflow for any attempt.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt).unwrap_or(0);
        if factor == 0 {
            return self.max.min(self.base.saturating_mul(u32::MAX));
        }
        self.base.saturating_mul(factor).min(self.max)
    }

    /// delay is the wait before attempt `attempt` (0-based): uniform in `[0, ceiling(attempt)]`
    /// at nanosecond resolution.
    pub fn delay(&self, attempt: u32, rng: &mut fastrand::Rng) -> Duration {
        let ceiling = u64::try_from(self.ceiling(attempt).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.u64(0..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let b = Backoff::default();
        let got: Vec<u128> = (0..9).map(|k| b.ceiling(k).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        // Huge attempts neither overflow nor wrap.
        assert_eq!(b.ceiling(31), 5000 * MS);
        assert_eq!(b.ceiling(32), 5000 * MS);
        assert_eq!(b.ceiling(u32::MAX), 5000 * MS);
        let zero = Backoff {
            base: Duration::ZERO,
            max: 5000 * MS,
        };
        assert_eq!(zero.ceiling(3), Duration::ZERO);
        let big = Backoff {
            base: Duration::from_secs(3600),
            max: Duration::from_secs(7200),
        };
        assert_eq!(big.ceiling(40), Duration::from_secs(7200));
    }

    #[test]
    fn delays_stay_within_the_ceiling_and_fill_it() {
        let b = Backoff::default();
        let mut rng = fastrand::Rng::with_seed(7);
        for k in 0..10 {
            let ceiling = b.ceiling(k);
            let delays: Vec<Duration> = (0..2000).map(|_| b.delay(k, &mut rng)).collect();
            assert!(delays.iter().all(|d| *d <= ceiling), "attempt {k}");
            // Full jitter: both the low and the high quarter of the interval occur.
            assert!(delays.iter().any(|d| *d < ceiling / 4), "attempt {k}");
            assert!(delays.iter().any(|d| *d > ceiling * 3 / 4), "attempt {k}");
            // The mean is about half the ceiling.
            let mean = delays.iter().sum::<Duration>() / 2000;
            assert!(
                mean > ceiling * 45 / 100 && mean < ceiling * 55 / 100,
                "attempt {k}: mean {mean:?} of ceiling {ceiling:?}"
            );
        }
    }

    #[test]
    fn delays_are_deterministic_with_a_seeded_rng() {
        let b = Backoff::default();
        let run = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (0..5).map(|k| b.delay(k, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn zero_ceiling_means_no_wait() {
        let b = Backoff {
            base: Duration::ZERO,
            max: Duration::ZERO,
        };
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(b.delay(0, &mut rng), Duration::ZERO);
        assert_eq!(b.delay(9, &mut rng), Duration::ZERO);
    }
}

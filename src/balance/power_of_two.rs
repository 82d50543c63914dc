//! Power of two choices: draw two distinct candidates at random, take the one with fewer
//! requests in flight per unit of weight.
//!
//! Mitzenmacher's result: comparing just two random candidates brings the maximum load from
//! `O(log n / log log n)` (one random choice) down to `O(log log n)`, at O(1) per pick and
//! without the herding of a global "least loaded" choice (several shards that all see the same
//! idle peer would all pile onto it; two random draws rarely agree). The draws come from a
//! per-selector `fastrand::Rng`, so each shard's replica draws its own sequence.

use super::{active_of, PickRequest, Selector};

/// PowerOfTwo is the two-random-choices selector over the non-drained candidates.
#[derive(Debug, Clone)]
pub struct PowerOfTwo {
    /// Number of candidates.
    len: usize,
    /// Candidates with weight > 0.
    live: Vec<u32>,
    /// Weight of each candidate.
    weights: Vec<u32>,
    /// This replica's random numbers.
    rng: fastrand::Rng,
}

impl PowerOfTwo {
    /// Builds the selector over candidates with these weights, drawing from a generator
    /// seeded with `seed`.
    pub fn new(weights: &[u32], seed: u64) -> Self {
        PowerOfTwo {
            len: weights.len(),
            live: (0..weights.len() as u32)
                .filter(|&c| weights[c as usize] > 0)
                .collect(),
            weights: weights.to_vec(),
            rng: fastrand::Rng::with_seed(seed),
        }
    }
}

/// Draws two distinct indexes below `m` (≥ 2) uniformly.
#[inline]
pub(super) fn two_distinct(rng: &mut fastrand::Rng, m: usize) -> (usize, usize) {
    let i = rng.usize(..m);
    let mut j = rng.usize(..m - 1);
    if j >= i {
        j += 1;
    }
    (i, j)
}

impl Selector for PowerOfTwo {
    #[inline]
    fn pick(&mut self, req: &PickRequest<'_>) -> Option<usize> {
        let m = self.live.len();
        if m < 2 {
            return self.live.first().map(|&c| c as usize);
        }
        let (i, j) = two_distinct(&mut self.rng, m);
        let (a, b) = (self.live[i] as usize, self.live[j] as usize);
        // active_a / w_a ≤ active_b / w_b, exactly.
        let score = |c: usize| u64::from(active_of(req.loads, c));
        let (wa, wb) = (u64::from(self.weights[a]), u64::from(self.weights[b]));
        if score(a) * wb <= score(b) * wa {
            Some(a)
        } else {
            Some(b)
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn name(&self) -> &'static str {
        "power_of_two"
    }
}

#[cfg(test)]
mod tests {
    use super::super::select_eligible;
    use super::super::tests::loads;
    use super::*;

    #[test]
    fn never_picks_the_more_loaded_of_the_two() {
        // Any two distinct draws out of three include an idle candidate.
        let mut s = PowerOfTwo::new(&[1, 1, 1], 42);
        let l = loads(&[10, 0, 0]);
        let mut counts = [0usize; 3];
        for _ in 0..10_000 {
            counts[select_eligible(&mut s, None, &l, |_| true).unwrap()] += 1;
        }
        assert_eq!(counts[0], 0);
        // The idle two share the rest about evenly (each is in 2/3 of the draws).
        assert!(counts[1].abs_diff(counts[2]) < 500, "{counts:?}");
    }

    #[test]
    fn weight_divides_the_load() {
        // 10/10 = 1 < 2/1: candidate 0 wins every draw it is in; 1 and 2 tie-break by draw.
        let mut s = PowerOfTwo::new(&[10, 1, 1], 1);
        let l = loads(&[10, 2, 2]);
        let mut counts = [0usize; 3];
        for _ in 0..30_000 {
            counts[s
                .pick(&PickRequest {
                    hash: None,
                    nth: 0,
                    loads: &l,
                })
                .unwrap()] += 1;
        }
        // P(0 drawn) = 2/3.
        assert!((19_000..21_000).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn spreads_evenly_with_equal_load_and_skips_drained() {
        let mut s = PowerOfTwo::new(&[1, 0, 1, 1], 7);
        let l = loads(&[0, 0, 0, 0]);
        let mut counts = [0usize; 4];
        let n = 90_000;
        for _ in 0..n {
            counts[s
                .pick(&PickRequest {
                    hash: None,
                    nth: 0,
                    loads: &l,
                })
                .unwrap()] += 1;
        }
        assert_eq!(counts[1], 0);
        for c in [0, 2, 3] {
            let share = counts[c] as f64 / n as f64;
            assert!((share - 1.0 / 3.0).abs() < 0.02, "{counts:?}");
        }
        assert_eq!(
            PowerOfTwo::new(&[0, 3], 1).pick(&PickRequest {
                hash: None,
                nth: 0,
                loads: &l
            }),
            Some(1)
        );
        assert_eq!(
            PowerOfTwo::new(&[0, 0], 1).pick(&PickRequest {
                hash: None,
                nth: 0,
                loads: &l
            }),
            None
        );
    }

    #[test]
    fn same_seed_same_sequence() {
        let l = loads(&[0, 0, 0, 0, 0]);
        let seq = |seed| {
            let mut s = PowerOfTwo::new(&[1; 5], seed);
            (0..20)
                .map(|_| {
                    s.pick(&PickRequest {
                        hash: None,
                        nth: 0,
                        loads: &l,
                    })
                    .unwrap()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(seq(3), seq(3));
        assert_ne!(seq(3), seq(4));
    }
}

//! Random: a uniformly random non-drained candidate per pick (weights other than 0 are
//! ignored; `weighted_random` honours them).

use super::{PickRequest, Selector};

/// Random picks uniformly among the candidates with weight > 0, from a per-selector
/// `fastrand::Rng`.
#[derive(Debug, Clone)]
pub struct Random {
    /// Number of candidates.
    len: usize,
    /// Candidates with weight > 0.
    live: Vec<u32>,
    /// This replica's random numbers.
    rng: fastrand::Rng,
}

impl Random {
    /// Builds the selector over candidates with these weights (only `> 0` matters), drawing
    /// from a generator seeded with `seed`.
    pub fn new(weights: &[u32], seed: u64) -> Self {
        Random {
            len: weights.len(),
            live: (0..weights.len() as u32)
                .filter(|&c| weights[c as usize] > 0)
                .collect(),
            rng: fastrand::Rng::with_seed(seed),
        }
    }
}

impl Selector for Random {
    #[inline]
    fn pick(&mut self, _req: &PickRequest<'_>) -> Option<usize> {
        if self.live.is_empty() {
            return None;
        }
        Some(self.live[self.rng.usize(..self.live.len())] as usize)
    }

    fn len(&self) -> usize {
        self.len
    }

    fn name(&self) -> &'static str {
        "random"
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::NO_REQ;
    use super::*;

    #[test]
    fn uniform_over_non_drained() {
        let mut s = Random::new(&[1, 9, 0, 1], 11);
        let mut counts = [0usize; 4];
        let n = 90_000;
        for _ in 0..n {
            counts[s.pick(&NO_REQ).unwrap()] += 1;
        }
        assert_eq!(counts[2], 0);
        for c in [0, 1, 3] {
            let share = counts[c] as f64 / n as f64;
            assert!((share - 1.0 / 3.0).abs() < 0.02, "{counts:?}");
        }
        assert_eq!(Random::new(&[0], 1).pick(&NO_REQ), None);
        assert_eq!(Random::new(&[], 1).pick(&NO_REQ), None);
    }
}

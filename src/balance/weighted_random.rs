//! Weighted random: each pick draws candidate i with probability `weight_i / Σ weight`, in
//! O(1) with Walker's alias method (Vose's construction, in exact integer arithmetic).
//!
//! The table has one bucket per non-drained candidate. Bucket k keeps its own candidate with
//! probability `threshold[k] / W` and hands the rest to `alias[k]`; a pick draws a bucket
//! uniformly and then one integer below `W`, so the probabilities are exactly the weights'
//! (no floating point rounding), whatever the number of candidates.

use super::{PickRequest, Selector};

/// WeightedRandom is random selection proportional to weight (weight 0 = never), from a
/// per-selector `fastrand::Rng`.
#[derive(Debug, Clone)]
pub struct WeightedRandom {
    /// Number of candidates.
    len: usize,
    /// Candidate of each bucket (the candidates with weight > 0).
    live: Vec<u32>,
    /// Bucket k keeps `live[k]` when the second draw is below `threshold[k]`.
    threshold: Vec<u64>,
    /// Bucket k's other candidate, as an index into `live`.
    alias: Vec<u32>,
    /// Sum of the weights: the range of the second draw.
    total: u64,
    /// This replica's random numbers.
    rng: fastrand::Rng,
}

impl WeightedRandom {
    /// Builds the selector over candidates with these weights, drawing from a generator
    /// seeded with `seed`.
    pub fn new(weights: &[u32], seed: u64) -> Self {
        let live: Vec<u32> = (0..weights.len() as u32)
            .filter(|&c| weights[c as usize] > 0)
            .collect();
        let m = live.len() as u64;
        let total: u64 = live.iter().map(|&c| u64::from(weights[c as usize])).sum();
        // Scaled so that a bucket holds exactly `total`: p_k = w_k × m, Σ p_k = m × total.
        let mut p: Vec<u64> = live
            .iter()
            .map(|&c| u64::from(weights[c as usize]) * m)
            .collect();
        let mut threshold = vec![total; live.len()];
        let mut alias: Vec<u32> = (0..live.len() as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..live.len()).partition(|&k| p[k] < total);
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            threshold[s] = p[s];
            alias[s] = l as u32;
            // The large one fills the rest of bucket s.
            p[l] -= total - p[s];
            if p[l] < total {
                large.pop();
                small.push(l);
            }
        }
        // Whatever is left (exactly full buckets) keeps its own candidate: threshold = total.
        WeightedRandom {
            len: weights.len(),
            live,
            threshold,
            alias,
            total,
            rng: fastrand::Rng::with_seed(seed),
        }
    }
}

impl Selector for WeightedRandom {
    #[inline]
    fn pick(&mut self, _req: &PickRequest<'_>) -> Option<usize> {
        if self.live.is_empty() {
            return None;
        }
        let k = self.rng.usize(..self.live.len());
        let bucket = if self.rng.u64(..self.total) < self.threshold[k] {
            k
        } else {
            self.alias[k] as usize
        };
        Some(self.live[bucket] as usize)
    }

    fn len(&self) -> usize {
        self.len
    }

    fn name(&self) -> &'static str {
        "weighted_random"
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::NO_REQ;
    use super::*;

    /// The exact probability of each candidate, from the table.
    fn exact(s: &WeightedRandom) -> Vec<f64> {
        let mut p = vec![0.0; s.len];
        let m = s.live.len() as f64;
        for k in 0..s.live.len() {
            let keep = s.threshold[k] as f64 / s.total as f64;
            p[s.live[k] as usize] += keep / m;
            p[s.live[s.alias[k] as usize] as usize] += (1.0 - keep) / m;
        }
        p
    }

    #[test]
    fn table_is_exact() {
        let weights = [5, 0, 1, 3, 7, 1, 100, 2];
        let s = WeightedRandom::new(&weights, 0);
        let total: u32 = weights.iter().sum();
        for (c, p) in exact(&s).into_iter().enumerate() {
            let want = f64::from(weights[c]) / f64::from(total);
            assert!((p - want).abs() < 1e-12, "{c}: {p} vs {want}");
        }
    }

    #[test]
    fn hundred_thousand_picks_within_2_percent() {
        let weights = [5, 3, 2, 0];
        let mut s = WeightedRandom::new(&weights, 99);
        let mut counts = [0usize; 4];
        let n = 100_000;
        for _ in 0..n {
            counts[s.pick(&NO_REQ).unwrap()] += 1;
        }
        assert_eq!(counts[3], 0);
        for (c, &w) in weights.iter().enumerate() {
            let share = counts[c] as f64 / n as f64;
            let want = f64::from(w) / 10.0;
            assert!((share - want).abs() <= 0.02, "{counts:?}");
        }
    }

    #[test]
    fn all_drained_is_none() {
        assert_eq!(WeightedRandom::new(&[0, 0], 1).pick(&NO_REQ), None);
        assert_eq!(WeightedRandom::new(&[0, 4], 1).pick(&NO_REQ), Some(1));
    }
}

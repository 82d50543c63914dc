//! nginx's smooth weighted round robin (`ngx_http_upstream_get_peer`).
//!
//! Every pick adds each candidate's weight to its running `current`, chooses the candidate with
//! the largest `current` (the first one on ties) and subtracts the total weight from it. Over one
//! cycle of `total` picks every candidate is chosen exactly `weight` times, and heavy candidates
//! are spread out instead of bunched: weights 5,1,1 give `a a b a c a a`.
//!
//! The sequence is periodic: after `total` picks every running score is back at zero. When the
//! cycle is short (`total` <= [`PRECOMPUTE_MAX`]) it is computed once at build time and a pick
//! is an O(1) table step instead of an O(n) scan; longer cycles run nginx's loop. Both give
//! exactly the same sequence.

use super::{PickRequest, Selector};

/// PRECOMPUTE_MAX is the longest cycle (sum of weights) kept as a table (4 bytes a step).
pub const PRECOMPUTE_MAX: i64 = 1 << 16;

/// SmoothWeighted is nginx's smooth weighted round robin over fixed weights.
#[derive(Debug, Clone)]
pub struct SmoothWeighted {
    /// Configured weight of each candidate (0 = never picked).
    weights: Vec<i64>,
    /// Running score of each candidate (used when there is no precomputed cycle).
    current: Vec<i64>,
    /// Sum of all weights.
    total: i64,
    /// One full cycle of picks when `total` <= [`PRECOMPUTE_MAX`]; empty otherwise.
    cycle: Vec<u32>,
    /// Position in `cycle` of the next pick.
    pos: usize,
}

impl SmoothWeighted {
    /// Builds the selector over candidates with these weights.
    pub fn new(weights: &[u32]) -> Self {
        let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w)).collect();
        let total = weights.iter().sum();
        let mut s = SmoothWeighted {
            current: vec![0; weights.len()],
            weights,
            total,
            cycle: Vec::new(),
            pos: 0,
        };
        // Bounded build cost too: a long cycle over many peers runs the loop instead.
        if total > 0 && total <= PRECOMPUTE_MAX && total * (s.weights.len() as i64) <= 1 << 24 {
            let cycle: Vec<u32> = (0..total).map(|_| s.step() as u32).collect();
            s.cycle = cycle;
        }
        s
    }

    /// One step of nginx's algorithm over the running scores.
    fn step(&mut self) -> usize {
        let mut best = 0;
        let mut best_score = i64::MIN;
        for (i, (cur, &w)) in self.current.iter_mut().zip(&self.weights).enumerate() {
            if w == 0 {
                continue;
            }
            *cur += w;
            if *cur > best_score {
                best_score = *cur;
                best = i;
            }
        }
        self.current[best] -= self.total;
        best
    }
}

impl Selector for SmoothWeighted {
    #[inline]
    fn pick(&mut self, _req: &PickRequest<'_>) -> Option<usize> {
        if self.total == 0 {
            return None;
        }
        if let Some(&c) = self.cycle.get(self.pos) {
            self.pos += 1;
            if self.pos == self.cycle.len() {
                self.pos = 0;
            }
            return Some(c as usize);
        }
        Some(self.step())
    }

    fn name(&self) -> &'static str {
        "smooth_weighted"
    }

    fn len(&self) -> usize {
        self.weights.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(weights: &[u32], n: usize) -> Vec<usize> {
        let mut s = SmoothWeighted::new(weights);
        (0..n)
            .map(|_| {
                s.pick(&PickRequest {
                    hash: None,
                    nth: 0,
                    loads: &[],
                })
                .unwrap()
            })
            .collect()
    }

    #[test]
    fn precomputed_cycle_matches_the_loop() {
        let weights = [7u32, 3, 0, 11, 1, 5];
        let mut fast = SmoothWeighted::new(&weights);
        assert_eq!(fast.cycle.len(), 27);
        let mut slow = SmoothWeighted::new(&weights);
        slow.cycle.clear();
        let req = PickRequest {
            hash: None,
            nth: 0,
            loads: &[],
        };
        for _ in 0..27 * 3 + 5 {
            assert_eq!(fast.pick(&req), slow.pick(&req));
        }
        // Above the table limit the loop runs.
        assert!(SmoothWeighted::new(&[1 << 16, 1]).cycle.is_empty());
    }

    #[test]
    fn nginx_sequence_for_5_1_1() {
        assert_eq!(
            seq(&[5, 1, 1], 14),
            vec![0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]
        );
    }

    #[test]
    fn equal_weights_rotate() {
        assert_eq!(seq(&[1, 1, 1], 6), vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn zero_weight_is_never_picked_and_all_zero_yields_none() {
        assert!(!seq(&[2, 0, 1], 30).contains(&1));
        let mut s = SmoothWeighted::new(&[0, 0]);
        assert_eq!(
            s.pick(&PickRequest {
                hash: None,
                nth: 0,
                loads: &[]
            }),
            None
        );
    }

    #[test]
    fn counts_match_weights_over_a_cycle() {
        let got = seq(&[3, 2, 5], 1000);
        let count = |c| got.iter().filter(|&&x| x == c).count();
        assert_eq!((count(0), count(1), count(2)), (300, 200, 500));
    }
}

//! nginx's smooth weighted round robin (`ngx_http_upstream_get_peer`).
//!
//! Every pick adds each candidate's weight to its running `current`, chooses the candidate with
//! the largest `current` (the first one on ties) and subtracts the total weight from it. Over one
//! cycle of `total` picks every candidate is chosen exactly `weight` times, and heavy candidates
//! are spread out instead of bunched: weights 5,1,1 give `a a b a c a a`.

use super::{PickRequest, Selector};

/// SmoothWeighted is nginx's smooth weighted round robin over fixed weights.
#[derive(Debug, Clone)]
pub struct SmoothWeighted {
    /// Configured weight of each candidate (0 = never picked).
    weights: Vec<i64>,
    /// Running score of each candidate.
    current: Vec<i64>,
    /// Sum of all weights.
    total: i64,
}

impl SmoothWeighted {
    /// Builds the selector over candidates with these weights.
    pub fn new(weights: &[u32]) -> Self {
        let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w)).collect();
        let total = weights.iter().sum();
        SmoothWeighted {
            current: vec![0; weights.len()],
            weights,
            total,
        }
    }
}

impl Selector for SmoothWeighted {
    #[inline]
    fn pick(&mut self, _req: &PickRequest<'_>) -> Option<usize> {
        if self.total == 0 {
            return None;
        }
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
        Some(best)
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

//! Least connections: the candidate with the fewest requests in flight per unit of weight.
//!
//! Score = `active ÷ weight`, compared exactly by cross-multiplication (`a₁·w₂ < a₂·w₁`, in
//! u64). When the weights' least common multiple `L` is small (≤ 2²⁰), the score is
//! precomputed as `active × (L ÷ weight)` instead: the same order and the same ties, with one
//! multiply per candidate. Ties are broken the way nginx's `least_conn` breaks them: with equal weights by
//! rotation (the first tied candidate after the previous pick), with unequal weights by
//! smooth weighted round robin among the tied candidates — so an idle or evenly loaded group
//! still gets traffic in proportion to the weights. One pass over the load table per pick
//! (plus one over the tied candidates when weights differ); with equal weights the pass stops
//! at the first idle candidate. The pass asks nothing about eligibility; only when its
//! winner is not eligible is it redone asking for every would-be winner.
//!
//! # Shard-local counts
//!
//! `active` is what *this shard* has in flight to a peer (invariant 1: no
//! cross-shard state on the request path), so each shard balances its own share of the
//! traffic and the global in-flight count of a peer is the sum of N local ones. With
//! SO_REUSEPORT spreading connections uniformly each shard carries about 1/N of the load, so
//! the global count is ≈ N × the local one, and the shards' choices add up to a global
//! least-connections choice as long as their local pictures agree.
//!
//! How far they can disagree: each shard keeps its own peers within about one request of each
//! other (it always adds to the least loaded), so a peer's global count is off the global
//! per-peer mean by at most the sum of the per-shard deviations — ±N in the worst case, when a
//! peer happens to be the "+1" on every shard at once. Example: 8 shards, 4 peers, 400
//! requests in flight → 50 per shard, 12–13 per peer per shard, 100 per peer globally; the
//! worst peer has 8 × 13 = 104 (4 % over the mean), and that error does not grow with load
//! (at 4000 in flight it is 0.4 %). Uneven spreading of *connections* does not add to it: a
//! shard with twice the connections has twice the requests in flight but spreads them just as
//! evenly. What a shard cannot see is another shard's traffic: a peer that slows down because
//! shard A floods it looks idle to shard B until B's own requests to it slow down and pile up
//! too — the correction lags by one round-trip of B's requests to that peer. The relative
//! error is largest when almost nothing is in flight (1–2 requests per shard: every shard may
//! pick the same idle peer at once), which is also when it matters least.

use super::{active_of, PeerLoad, PickRequest, Selector};

/// LeastConnections is the least-active-per-weight selector with rotating (or, with unequal
/// weights, smooth weighted) tie breaks. Weight 0 = never picked.
#[derive(Debug, Clone)]
pub struct LeastConnections {
    /// Configured weight of each candidate.
    weights: Vec<u32>,
    /// Whether every non-drained candidate has the same weight (then scores are plain
    /// active counts and ties rotate).
    uniform: bool,
    /// Whether any candidate has weight > 0.
    any_live: bool,
    /// Whether any candidate has weight 0 (the scan must skip it).
    drained: bool,
    /// Equal weights: where the next scan starts (one past the previous pick).
    next: usize,
    /// Unequal weights: smooth weighted round robin score of each candidate, advanced only
    /// among the tied candidates of a pick.
    current: Vec<i64>,
    /// Unequal weights: the tied candidates of the current pick (scratch, reused).
    ties: Vec<u32>,
    /// Unequal weights whose least common multiple `L` is small: per candidate `L / weight`
    /// (so `active × factor` orders candidates exactly as `active ÷ weight` does, with one
    /// multiply), or `u64::MAX` for a drained candidate. Empty when not applicable.
    factors: Vec<u64>,
}

/// The largest least common multiple of the weights for which scores are scaled.
const MAX_SCALE: u64 = 1 << 20;

/// Greatest common divisor.
fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl LeastConnections {
    /// Builds the selector over candidates with these weights.
    pub fn new(weights: &[u32]) -> Self {
        let mut live = weights.iter().copied().filter(|&w| w > 0);
        let first = live.next();
        let uniform = live.all(|w| Some(w) == first);
        let mut lcm = 1u64;
        for &w in weights.iter().filter(|&&w| w > 0) {
            let w = u64::from(w);
            lcm = lcm / gcd(lcm, w) * w;
            if lcm > MAX_SCALE {
                break;
            }
        }
        let factors = if !uniform && lcm <= MAX_SCALE {
            let factor = |w: u32| if w == 0 { u64::MAX } else { lcm / u64::from(w) };
            weights.iter().map(|&w| factor(w)).collect()
        } else {
            Vec::new()
        };
        LeastConnections {
            weights: weights.to_vec(),
            uniform,
            any_live: first.is_some(),
            drained: weights.contains(&0),
            next: 0,
            current: vec![0; weights.len()],
            ties: Vec::new(),
            factors,
        }
    }

    /// Unequal weights with scaled scores, a full load table, everyone eligible:
    /// [`Self::collect_ties_fast`] with one multiply per candidate and no division or
    /// drained check (a drained candidate scores `u64::MAX`, never below a live one).
    #[inline(always)]
    fn collect_ties_scaled(&mut self, loads: &[PeerLoad]) {
        self.ties.clear();
        let mut best = u64::MAX;
        for (c, (l, &f)) in loads.iter().zip(&self.factors).enumerate() {
            let score = u64::from(l.active.get()).saturating_mul(f);
            if score <= best && f != u64::MAX {
                if score < best {
                    self.ties.clear();
                    best = score;
                }
                self.ties.push(c as u32);
            }
        }
    }

    /// Equal weights: the first candidate from `next` on (wrapping) with the fewest active
    /// among those `eligible` accepts, or `None`. Does not move the rotation.
    #[inline(always)]
    fn least_uniform(
        &self,
        loads: &[PeerLoad],
        mut eligible: impl FnMut(usize) -> bool,
        skip_drained: bool,
    ) -> Option<usize> {
        let n = self.weights.len();
        let start = self.next.min(n);
        let mut best = None;
        let mut best_active = u32::MAX;
        // Two straight ranges instead of a modulo per step.
        'scan: for range in [start..n, 0..start] {
            for c in range {
                if skip_drained && self.weights[c] == 0 {
                    continue;
                }
                let a = active_of(loads, c);
                if a < best_active && eligible(c) {
                    best = Some(c);
                    best_active = a;
                    if a == 0 {
                        // Nothing beats idle, and this is the first idle one in rotation order.
                        break 'scan;
                    }
                }
            }
        }
        best
    }

    /// Equal weights, no drained candidate, a full load table, everyone eligible: the plain
    /// rotating minimum, over the load table without bounds checks.
    #[inline(always)]
    fn least_uniform_fast(&self, loads: &[PeerLoad]) -> usize {
        let start = self.next.min(loads.len());
        let mut best = start;
        let mut best_active = u32::MAX;
        for (c, l) in loads.iter().enumerate().skip(start) {
            let a = l.active.get();
            if a < best_active {
                (best, best_active) = (c, a);
                if a == 0 {
                    return c;
                }
            }
        }
        for (c, l) in loads[..start].iter().enumerate() {
            let a = l.active.get();
            if a < best_active {
                (best, best_active) = (c, a);
                if a == 0 {
                    return c;
                }
            }
        }
        best
    }

    /// Unequal weights, a full load table, everyone eligible: [`Self::collect_ties`] over
    /// zipped slices (no bounds checks).
    #[inline(always)]
    fn collect_ties_fast(&mut self, loads: &[PeerLoad]) {
        self.ties.clear();
        let (mut best_a, mut best_w) = (1u64, 0u64);
        for (c, (l, &w)) in loads.iter().zip(&self.weights).enumerate() {
            if w == 0 {
                continue;
            }
            let (a, w) = (u64::from(l.active.get()), u64::from(w));
            let lhs = a * best_w;
            let rhs = best_a * w;
            if lhs <= rhs {
                if lhs < rhs {
                    self.ties.clear();
                    (best_a, best_w) = (a, w);
                }
                self.ties.push(c as u32);
            }
        }
    }

    /// Unequal weights: collects into `ties` the candidates `eligible` accepts with the least
    /// `active ÷ weight`.
    #[inline(always)]
    fn collect_ties(&mut self, loads: &[PeerLoad], mut eligible: impl FnMut(usize) -> bool) {
        self.ties.clear();
        // Best score so far as the fraction best_a / best_w (1/0 = none yet).
        let (mut best_a, mut best_w) = (1u64, 0u64);
        for (c, &w) in self.weights.iter().enumerate() {
            if w == 0 {
                continue;
            }
            let (a, w) = (u64::from(active_of(loads, c)), u64::from(w));
            // a/w vs best_a/best_w, exactly.
            let lhs = a * best_w;
            let rhs = best_a * w;
            if lhs <= rhs && eligible(c) {
                if lhs < rhs {
                    self.ties.clear();
                    (best_a, best_w) = (a, w);
                }
                self.ties.push(c as u32);
            }
        }
    }

    /// Unequal weights: which of `ties` smooth weighted round robin takes (without moving
    /// its scores yet).
    fn tie_winner(&self) -> Option<usize> {
        match self.ties.as_slice() {
            [] => None,
            [only] => Some(*only as usize),
            ties => {
                let mut best = ties[0] as usize;
                let mut best_score = i64::MIN;
                for &c in ties {
                    let c = c as usize;
                    let score = self.current[c] + i64::from(self.weights[c]);
                    if score > best_score {
                        best_score = score;
                        best = c;
                    }
                }
                Some(best)
            }
        }
    }

    /// Unequal weights: moves the smooth weighted round robin scores of `ties` for a pick
    /// of `winner`.
    fn commit_ties(&mut self, winner: usize) {
        if self.ties.len() < 2 {
            return;
        }
        let mut total = 0;
        for &c in &self.ties {
            let w = i64::from(self.weights[c as usize]);
            self.current[c as usize] += w;
            total += w;
        }
        self.current[winner] -= total;
    }

    /// The pick among the candidates `eligible` accepts; moves the tie-break state.
    ///
    /// Fast path: the choice among all candidates (no calls to `eligible` in the loop), kept
    /// when `eligible` accepts it — the usual case. Otherwise the scan is redone with
    /// `eligible` consulted for every candidate that would win.
    #[inline]
    fn least(
        &mut self,
        loads: &[PeerLoad],
        eligible: &mut dyn FnMut(usize) -> bool,
    ) -> Option<usize> {
        if !self.any_live {
            return None;
        }
        let n = self.weights.len();
        let full = loads.len() >= n;
        if self.uniform {
            let fast = if full && !self.drained {
                Some(self.least_uniform_fast(&loads[..n]))
            } else {
                self.least_uniform(loads, |_| true, self.drained)
            };
            let c = match fast {
                Some(c) if eligible(c) => c,
                _ => self.least_uniform(loads, &mut *eligible, true)?,
            };
            self.next = if c + 1 == n { 0 } else { c + 1 };
            Some(c)
        } else {
            if full && !self.factors.is_empty() {
                self.collect_ties_scaled(&loads[..n]);
            } else if full {
                self.collect_ties_fast(&loads[..n]);
            } else {
                self.collect_ties(loads, |_| true);
            }
            let c = match self.tie_winner() {
                Some(c) if eligible(c) => c,
                _ => {
                    self.collect_ties(loads, &mut *eligible);
                    self.tie_winner()?
                }
            };
            self.commit_ties(c);
            Some(c)
        }
    }
}

impl Selector for LeastConnections {
    /// The least loaded candidate (`req.nth` is ignored: walking on is
    /// [`Selector::pick_eligible`]'s job, done in the same single pass).
    #[inline]
    fn pick(&mut self, req: &PickRequest<'_>) -> Option<usize> {
        self.least(req.loads, &mut |_| true)
    }

    fn pick_eligible(
        &mut self,
        req: &PickRequest<'_>,
        eligible: &mut dyn FnMut(usize) -> bool,
    ) -> Option<usize> {
        // A down peer has nothing in flight, so it would always be the least loaded: the
        // eligibility check must be part of the scan, not a retry after it.
        self.least(req.loads, eligible)
    }

    fn len(&self) -> usize {
        self.weights.len()
    }

    fn name(&self) -> &'static str {
        "least_connections"
    }
}

#[cfg(test)]
mod tests {
    use super::super::select_eligible;
    use super::super::tests::loads;
    use super::*;

    fn pick(s: &mut LeastConnections, l: &[PeerLoad]) -> usize {
        s.pick(&PickRequest {
            hash: None,
            nth: 0,
            loads: l,
        })
        .unwrap()
    }

    #[test]
    fn picks_the_least_loaded() {
        let mut s = LeastConnections::new(&[1, 1, 1, 1]);
        let l = loads(&[3, 2, 5, 2]);
        // Ties (1 and 3, both 2 active) rotate.
        let got: Vec<_> = (0..4).map(|_| pick(&mut s, &l)).collect();
        assert_eq!(got, vec![1, 3, 1, 3]);
        l[3].active.set(1);
        assert_eq!(pick(&mut s, &l), 3);
    }

    #[test]
    fn idle_ties_rotate_in_order() {
        let mut s = LeastConnections::new(&[2, 2, 2]);
        let l = loads(&[0, 0, 0]);
        let got: Vec<_> = (0..7).map(|_| pick(&mut s, &l)).collect();
        assert_eq!(got, vec![0, 1, 2, 0, 1, 2, 0]);
        let l = loads(&[1, 0, 0, 0]);
        let mut s = LeastConnections::new(&[1, 1, 1, 1]);
        let got: Vec<_> = (0..5).map(|_| pick(&mut s, &l)).collect();
        assert_eq!(got, vec![1, 2, 3, 1, 2]);
    }

    #[test]
    fn scaled_scores_find_the_same_ties_as_cross_multiplication() {
        let weights: Vec<u32> = (0..50).map(|i| [0, 1, 2, 3, 4, 6][i % 6]).collect();
        let mut s = LeastConnections::new(&weights);
        assert!(!s.factors.is_empty());
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..500 {
            let l = loads(&(0..50).map(|_| rng.u32(0..12)).collect::<Vec<_>>());
            s.collect_ties_scaled(&l);
            let scaled = s.ties.clone();
            s.collect_ties_fast(&l);
            assert_eq!(scaled, s.ties);
        }
        // Weights whose lcm is too large keep the cross-multiplication path.
        assert!(LeastConnections::new(&[1_000_003, 999_983])
            .factors
            .is_empty());
    }

    #[test]
    fn divides_by_weight() {
        // Scores 4/1, 6/3 = 2, 3/1: candidate 1 despite having the most in flight.
        let mut s = LeastConnections::new(&[1, 3, 1]);
        assert_eq!(pick(&mut s, &loads(&[4, 6, 3])), 1);
        // 2/1 vs 4/2 vs 9/3: 0 and 1 tie at 2 → smooth weighted between weights 1 and 2.
        let mut s = LeastConnections::new(&[1, 2, 3]);
        let l = loads(&[2, 4, 9]);
        let got: Vec<_> = (0..6).map(|_| pick(&mut s, &l)).collect();
        assert_eq!(got, vec![1, 0, 1, 1, 0, 1]);
    }

    #[test]
    fn drained_is_never_picked_and_all_drained_is_none() {
        let mut s = LeastConnections::new(&[0, 1, 1]);
        let l = loads(&[0, 5, 5]);
        assert!((0..10).all(|_| pick(&mut s, &l) != 0));
        let mut s = LeastConnections::new(&[0, 1, 2]);
        assert!((0..10).all(|_| pick(&mut s, &l) != 0));
        let mut s = LeastConnections::new(&[0, 0]);
        assert_eq!(
            s.pick(&PickRequest {
                hash: None,
                nth: 0,
                loads: &l
            }),
            None
        );
    }

    #[test]
    fn ineligible_idle_peer_does_not_shadow_the_rest() {
        // Candidate 0 is down (so idle): the least loaded *eligible* one is 2.
        let mut s = LeastConnections::new(&[1, 1, 1]);
        let l = loads(&[0, 4, 3]);
        for _ in 0..5 {
            assert_eq!(select_eligible(&mut s, None, &l, |c| c != 0), Some(2));
        }
        let mut s = LeastConnections::new(&[1, 2, 1]);
        for _ in 0..5 {
            assert_eq!(select_eligible(&mut s, None, &l, |c| c != 0), Some(1));
        }
        assert_eq!(select_eligible(&mut s, None, &l, |_| false), None);
    }

    #[test]
    fn equal_load_follows_weights_within_2_percent() {
        let weights = [5, 3, 2];
        let mut s = LeastConnections::new(&weights);
        let l = loads(&[0, 0, 0]);
        let mut counts = [0usize; 3];
        let n = 100_000;
        for _ in 0..n {
            let c = select_eligible(&mut s, None, &l, |_| true).unwrap();
            // The request starts and finishes before the next pick.
            l[c].active.set(l[c].active.get() + 1);
            counts[c] += 1;
            l[c].active.set(l[c].active.get() - 1);
        }
        for (c, &w) in weights.iter().enumerate() {
            let share = counts[c] as f64 / n as f64;
            let want = f64::from(w) / 10.0;
            assert!((share - want).abs() <= 0.02, "{c}: {share} vs {want}");
        }
        // Smooth weighted round robin is exact over whole cycles.
        assert_eq!(counts, [50_000, 30_000, 20_000]);
    }
}

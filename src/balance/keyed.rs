//! Machinery shared by the hashing selectors (consistent_hash, maglev): the walk on to the
//! next *distinct* candidate, the bounded-load check, and the rotation used for requests
//! without a key.
//!
//! Both selectors map a key to a position and then have a deterministic probe sequence from
//! it (clockwise around the ring; a key-specific stride through the Maglev table). The probe
//! sequence meets the same candidate many times; [`DistinctWalk`] turns it into the key's
//! order of preference: each candidate once, in the order first met, with candidates over the
//! load bound moved behind all others.

use super::{active_of, PeerLoad};

/// Rotation is round robin over the non-drained candidates: what a hashing selector does for
/// a request whose key is absent.
#[derive(Debug, Clone)]
pub(super) struct Rotation {
    /// Candidates with weight > 0, ascending.
    live: Vec<u32>,
    /// Index into `live` of the next pick.
    next: usize,
}

impl Rotation {
    /// A rotation over the candidates whose weight is > 0.
    pub(super) fn new(weights: &[u32]) -> Self {
        Rotation {
            live: (0..weights.len() as u32)
                .filter(|&c| weights[c as usize] > 0)
                .collect(),
            next: 0,
        }
    }

    /// The next candidate, or `None` when all are drained.
    #[inline]
    pub(super) fn next(&mut self) -> Option<usize> {
        let c = *self.live.get(self.next)?;
        self.next = if self.next + 1 == self.live.len() {
            0
        } else {
            self.next + 1
        };
        Some(c as usize)
    }
}

/// LoadBound is the weighted form of "Consistent Hashing with Bounded Loads" (Mirrokni,
/// Thorup, Zadimoghaddam, 2018): with `factor` c, candidate i may take a new request only
/// while `active_i + 1 ≤ ceil(c × (total_active + 1) × w_i / W)`, so no candidate ever
/// carries more than about c times its fair share of the in-flight requests. With equal
/// weights this is the paper's `ceil(c × (m + 1) / n)`.
#[derive(Debug, Clone)]
pub(super) struct LoadBound {
    /// Per candidate: `c × w_i / W` (0 for drained candidates).
    share: Vec<f64>,
}

impl LoadBound {
    /// The bound with factor `factor` over candidates with these weights.
    pub(super) fn new(factor: f64, weights: &[u32]) -> Self {
        let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        let share = weights
            .iter()
            .map(|&w| {
                if total > 0.0 {
                    factor * f64::from(w) / total
                } else {
                    0.0
                }
            })
            .collect();
        LoadBound { share }
    }

    /// Requests in flight over all candidates (`O(len)`: read once per pick).
    #[inline]
    pub(super) fn total(loads: &[PeerLoad]) -> u64 {
        loads.iter().map(|l| u64::from(l.active.get())).sum()
    }

    /// Whether `candidate` must be passed over, given `total` requests in flight.
    #[inline]
    pub(super) fn overloaded(&self, loads: &[PeerLoad], total: u64, candidate: usize) -> bool {
        let share = self.share.get(candidate).copied().unwrap_or(0.0);
        let limit = (share * (total + 1) as f64).ceil();
        f64::from(active_of(loads, candidate)) + 1.0 > limit
    }
}

/// DistinctWalk turns a probe sequence (candidates, with repeats) into the sequence of
/// distinct candidates, without allocating per walk: a generation stamp per candidate says
/// whether the current walk already met it.
#[derive(Debug, Clone)]
pub(super) struct DistinctWalk {
    /// Per candidate: the generation of the walk that last met it.
    seen: Vec<u32>,
    /// The current walk's generation (`seen[c] == generation` means met).
    generation: u32,
    /// Candidates passed over in the current walk for being over the load bound, in the
    /// order met: they are offered after every other candidate.
    deferred: Vec<usize>,
}

impl DistinctWalk {
    /// A walker over `len` candidates.
    pub(super) fn new(len: usize) -> Self {
        DistinctWalk {
            seen: vec![0; len],
            generation: 0,
            deferred: Vec::new(),
        }
    }

    /// Offers each distinct candidate of `probes` to `accept` in the order first met —
    /// candidates for which `overloaded` holds only after all the others — and returns the
    /// first one accepted. Stops probing once `distinct` candidates were met (the number of
    /// distinct candidates `probes` can yield), so a walk costs one probe per point/slot up
    /// to the last new candidate.
    pub(super) fn first(
        &mut self,
        probes: impl Iterator<Item = usize>,
        distinct: usize,
        mut overloaded: impl FnMut(usize) -> bool,
        mut accept: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.seen.fill(0);
            self.generation = 1;
        }
        self.deferred.clear();
        let mut met = 0;
        for c in probes {
            let Some(stamp) = self.seen.get_mut(c) else {
                continue;
            };
            if *stamp == self.generation {
                continue;
            }
            *stamp = self.generation;
            met += 1;
            if overloaded(c) {
                self.deferred.push(c);
            } else if accept(c) {
                return Some(c);
            }
            if met >= distinct {
                break;
            }
        }
        self.deferred.iter().copied().find(|&c| accept(c))
    }
}

/// Counts down `nth` acceptances: the closure for "the nth candidate of the walk".
pub(super) fn nth_acceptor(nth: usize) -> impl FnMut(usize) -> bool {
    let mut left = nth;
    move |_| {
        if left == 0 {
            true
        } else {
            left -= 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::loads;
    use super::*;

    #[test]
    fn walk_yields_distinct_in_order_with_overloaded_last() {
        let mut w = DistinctWalk::new(5);
        let probes = [3, 3, 1, 3, 4, 1, 0, 2, 4];
        let order = |w: &mut DistinctWalk, over: &[usize]| -> Vec<usize> {
            let mut got = Vec::new();
            w.first(
                probes.iter().copied(),
                5,
                |c| over.contains(&c),
                |c| {
                    got.push(c);
                    false
                },
            );
            got
        };
        assert_eq!(order(&mut w, &[]), vec![3, 1, 4, 0, 2]);
        assert_eq!(order(&mut w, &[1, 0]), vec![3, 4, 2, 1, 0]);
        for nth in 0..5 {
            let got = w.first(probes.iter().copied(), 5, |_| false, nth_acceptor(nth));
            assert_eq!(got, Some([3, 1, 4, 0, 2][nth]));
        }
        assert_eq!(
            w.first(probes.iter().copied(), 5, |_| false, nth_acceptor(5)),
            None
        );
    }

    #[test]
    fn rotation_skips_drained() {
        let mut r = Rotation::new(&[1, 0, 3]);
        let got: Vec<_> = (0..4).map(|_| r.next()).collect();
        assert_eq!(got, vec![Some(0), Some(2), Some(0), Some(2)]);
        assert_eq!(Rotation::new(&[0, 0]).next(), None);
    }

    #[test]
    fn load_bound_is_the_papers_ceiling() {
        // 4 equal candidates, factor 1.25, 7 in flight: limit = ceil(1.25 × 8 / 4) = 3.
        let b = LoadBound::new(1.25, &[1, 1, 1, 1]);
        let l = loads(&[2, 3, 1, 1]);
        let total = LoadBound::total(&l);
        assert_eq!(total, 7);
        assert!(!b.overloaded(&l, total, 0));
        assert!(b.overloaded(&l, total, 1));
        // Weighted: candidate 0 has half the weight: limit = ceil(1.25 × 8 × 3/6) = 5.
        let b = LoadBound::new(1.25, &[3, 1, 1, 1]);
        let l = loads(&[4, 1, 1, 1]);
        assert!(!b.overloaded(&l, 7, 0));
        let l = loads(&[5, 1, 1, 0]);
        assert!(b.overloaded(&l, 7, 0));
    }
}

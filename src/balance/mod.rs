//! Load balancing: the [`Selector`] trait, one file per algorithm, and the eligibility wrapper.
//!
//! A selector is *built* from an immutable list of peer weights and then only *answers*; each
//! shard owns its own replica and mutates it through `&mut self` (no atomics, no locks). It is
//! rebuilt only when membership or weights change, never when health flips (DESIGN.md
//! invariant 4): health is the business of [`select_eligible`], which skips candidates that the
//! caller says are not eligible, within a bounded number of iterations, and then falls back to a
//! linear scan so that an eligible peer is always found when one exists.

mod round_robin;
mod smooth_weighted;

pub use round_robin::RoundRobin;
pub use smooth_weighted::SmoothWeighted;

use std::cell::Cell;
use std::time::Instant;

use crate::config::Algorithm;

/// PeerId is a peer's index within its upstream group (its position in the config's peer list).
pub type PeerId = usize;

/// PeerLoad is the shard-local live load of one candidate: kept by the upstream group (so it
/// survives selector rebuilds), updated by the proxy around each request, read by load-aware
/// selectors through [`PickRequest::loads`].
#[derive(Debug, Default, Clone)]
pub struct PeerLoad {
    /// Requests in flight to this peer from this shard.
    pub active: Cell<u32>,
    /// Peak-EWMA response latency estimate in nanoseconds (0 = no sample yet).
    pub ewma_ns: Cell<f64>,
    /// When `ewma_ns` was last updated.
    pub ewma_at: Cell<Option<Instant>>,
}

/// PickRequest is what a selector is told about the request it picks for.
#[derive(Debug, Clone, Copy)]
pub struct PickRequest<'a> {
    /// The request's hash key, for hashing algorithms (`None` when the group does not hash or
    /// the key is absent from the request).
    pub hash: Option<u64>,
    /// How many candidates were already yielded for this request (0 for the first choice).
    /// Hashing algorithms walk on from the key's position with it; rotating ones ignore it.
    pub nth: u32,
    /// Live load of every candidate, indexed like the candidates (same length as the weights
    /// the selector was built from).
    pub loads: &'a [PeerLoad],
}

/// Selector is a load-balancing algorithm over a fixed set of candidates `0..len()`.
///
/// Candidates are indexes into the slice the selector was built from, not `PeerId`s: the caller
/// keeps the mapping (a group builds one selector over its primaries and one over its backups).
pub trait Selector {
    /// Returns the next candidate in order of preference, or `None` when the set is empty.
    fn pick(&mut self, req: &PickRequest<'_>) -> Option<usize>;
    /// How many candidates the selector was built over.
    fn len(&self) -> usize;
    /// Whether the selector has no candidates.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Builds the selector for `algorithm` over candidates with these weights.
pub fn build_selector(algorithm: Algorithm, weights: &[u32]) -> Box<dyn Selector> {
    match algorithm {
        Algorithm::RoundRobin => Box::new(RoundRobin::new(weights.len())),
        Algorithm::SmoothWeighted => Box::new(SmoothWeighted::new(weights)),
    }
}

/// Picks the first candidate the selector yields for which `eligible` holds.
///
/// Asks the selector at most `2 × len + 2` times (enough for a rotation to pass every
/// candidate twice), then scans linearly from a rotating offset, so the answer is `None` only
/// when no candidate is eligible. The cost is bounded by `O(len)` either way.
pub fn select_eligible(
    selector: &mut dyn Selector,
    hash: Option<u64>,
    loads: &[PeerLoad],
    mut eligible: impl FnMut(usize) -> bool,
) -> Option<usize> {
    let len = selector.len();
    if len == 0 {
        return None;
    }
    let tries = 2 * len + 2;
    let mut last = 0;
    for nth in 0..tries {
        let candidate = selector.pick(&PickRequest {
            hash,
            nth: nth as u32,
            loads,
        })?;
        if candidate < len && eligible(candidate) {
            return Some(candidate);
        }
        last = candidate;
    }
    (1..=len)
        .map(|i| (last + i) % len)
        .find(|&candidate| eligible(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eligible_wrapper_skips_ineligible_and_finds_the_only_eligible() {
        let mut sel = SmoothWeighted::new(&[100, 1, 1]);
        for _ in 0..50 {
            assert_eq!(select_eligible(&mut sel, None, &[], |c| c == 2), Some(2));
        }
        assert_eq!(select_eligible(&mut sel, None, &[], |_| false), None);
    }

    #[test]
    fn eligible_wrapper_keeps_rotation_among_the_rest() {
        let mut sel = RoundRobin::new(3);
        let got: Vec<usize> = (0..6)
            .map(|_| select_eligible(&mut sel, None, &[], |c| c != 1).unwrap())
            .collect();
        assert_eq!(got, vec![0, 2, 0, 2, 0, 2]);
    }

    #[test]
    fn empty_selector_yields_none() {
        let mut sel = RoundRobin::new(0);
        assert_eq!(select_eligible(&mut sel, None, &[], |_| true), None);
    }
}

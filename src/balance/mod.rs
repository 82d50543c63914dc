//! Load balancing: the [`Selector`] trait, one file per algorithm, hash keys, and the
//! eligibility wrapper.
//!
//! A selector is *built* from an immutable list of candidates (address + weight) and then only
//! *answers*; each shard owns its own replica and mutates it through `&mut self` (no atomics,
//! no locks). It is rebuilt only when membership or weights change, never when health flips
//! (invariant 4): health is the business of [`select_eligible`], which skips
//! candidates that the caller says are not eligible, within a bounded number of iterations,
//! and then falls back to a linear scan so that an eligible peer is always found when one
//! exists.
//!
//! Algorithms (`algorithm = …` in the config, built by [`build_selector`]):
//!
//! | name | file | picks |
//! | --- | --- | --- |
//! | `round_robin` | round_robin.rs | strict rotation, weights ignored |
//! | `smooth_weighted` | smooth_weighted.rs | nginx's smooth weighted round robin |
//! | `least_connections` | least_connections.rs | fewest active ÷ weight, ties rotate |
//! | `power_of_two` | power_of_two.rs | fewer active ÷ weight of two random candidates |
//! | `random` | random.rs | uniform over non-drained candidates |
//! | `weighted_random` | weighted_random.rs | random ∝ weight (alias method, O(1)) |
//! | `consistent_hash`, `ip_hash` | consistent_hash.rs | ketama ring, optional bounded load |
//! | `maglev` | maglev.rs | Maglev lookup table |
//! | `peak_ewma` | peak_ewma.rs | two random candidates, lower peak-EWMA latency × (active + 1) |
//!
//! Every algorithm treats weight 0 as drained: it never picks such a candidate (round_robin,
//! which ignores weights, leaves that to the eligibility check of the caller), and the hashing
//! ones leave it off their ring/table. Hash keys (`hash_key = …`) live in `hash_key`; every
//! hash here is [`stable_hash`] (XXH3-64), so the same key maps to the same peer in every
//! shard, process, build and machine.

mod hash_key;
mod keyed;

mod consistent_hash;
mod least_connections;
mod maglev;
mod peak_ewma;
mod power_of_two;
mod random;
mod round_robin;
mod smooth_weighted;
mod weighted_random;

pub use consistent_hash::ConsistentHash;
pub use hash_key::HashKey;
pub use least_connections::LeastConnections;
pub use maglev::Maglev;
pub(crate) use maglev::{is_prime, next_prime};
pub use peak_ewma::{observe_latency, PeakEwma};
pub use power_of_two::PowerOfTwo;
pub use random::Random;
pub use round_robin::RoundRobin;
pub use smooth_weighted::SmoothWeighted;
pub use weighted_random::WeightedRandom;

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Algorithm is the load-balancing algorithm of an upstream group (`algorithm = …`, default
/// `round_robin`); each has its file here ([`build_selector`] builds it). Its one public path
/// is `balance::Algorithm` (`UpstreamConfig::algorithm` names it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Plain rotation over peers, ignoring weights.
    RoundRobin,
    /// nginx's smooth weighted round robin.
    SmoothWeighted,
    /// Fewest requests in flight ÷ weight (shard-local counts).
    LeastConnections,
    /// The less loaded (÷ weight) of two random peers.
    PowerOfTwo,
    /// Uniformly random (weights ignored, except 0 = drained).
    Random,
    /// Random in proportion to weight.
    WeightedRandom,
    /// Ketama-style consistent hashing of `hash_key`.
    ConsistentHash,
    /// Maglev table lookup of `hash_key`.
    Maglev,
    /// Two random peers, lower peak-EWMA latency × (active + 1).
    PeakEwma,
    /// `consistent_hash` keyed by the client IP.
    IpHash,
}

impl Algorithm {
    /// The config-file name of this algorithm.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::SmoothWeighted => "smooth_weighted",
            Algorithm::LeastConnections => "least_connections",
            Algorithm::PowerOfTwo => "power_of_two",
            Algorithm::Random => "random",
            Algorithm::WeightedRandom => "weighted_random",
            Algorithm::ConsistentHash => "consistent_hash",
            Algorithm::Maglev => "maglev",
            Algorithm::PeakEwma => "peak_ewma",
            Algorithm::IpHash => "ip_hash",
        }
    }

    /// Whether the algorithm maps requests by a hash key (`consistent_hash`, `maglev`,
    /// `ip_hash`).
    pub fn is_hashing(self) -> bool {
        matches!(
            self,
            Algorithm::ConsistentHash | Algorithm::Maglev | Algorithm::IpHash
        )
    }
}

/// Defines a newtype over a `usize` index: `new`, `index`, `From<usize>` and `Display` (the
/// plain number, so logs and status output read as before). Ids of different things (a peer,
/// a group, a shard, a selector candidate) then cannot be mixed up.
macro_rules! index_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(usize);

        impl $name {
            #[doc = concat!("The ", stringify!($name), " of index `index`.")]
            #[inline]
            pub const fn new(index: usize) -> Self {
                $name(index)
            }

            /// The index this id stands for.
            #[inline]
            pub const fn index(self) -> usize {
                self.0
            }
        }

        impl From<usize> for $name {
            #[inline]
            fn from(index: usize) -> Self {
                $name(index)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Display::fmt(&self.0, f)
            }
        }
    };
}
pub(crate) use index_newtype;

index_newtype!(
    /// PeerId is a peer's index within its upstream group: its position in the config's peer
    /// list, and the index of the group's `peers` (and of its per-peer pool and breakers).
    PeerId
);

/// PeerLoad is the shard-local live load of one candidate: kept by the upstream group (so it
/// survives selector rebuilds), updated by the proxy around each request, read by load-aware
/// selectors through [`PickRequest::loads`].
#[derive(Debug, Default, Clone)]
pub struct PeerLoad {
    /// Requests in flight to this peer from this shard.
    pub active: Cell<u32>,
    /// Peak-EWMA response latency estimate in nanoseconds (0 = no sample yet); written by
    /// [`observe_latency`].
    pub ewma_ns: Cell<f64>,
    /// When `ewma_ns` was last updated.
    pub ewma_at: Cell<Option<Instant>>,
}

/// PickRequest is what a selector is told about the request it picks for.
#[derive(Debug, Clone, Copy)]
pub struct PickRequest<'a> {
    /// The request's hash key (`upstream::hash_request`), for hashing algorithms (`None` when the
    /// group does not hash or the key is absent from the request: hashing selectors then
    /// rotate over their candidates).
    pub hash: Option<u64>,
    /// How many candidates were already yielded for this request (0 for the first choice).
    /// Hashing algorithms walk on from the key's position with it; rotating ones ignore it.
    pub nth: u32,
    /// Live load of every candidate, indexed like the candidates (same length as the
    /// candidates the selector was built from; a shorter slice reads as no load).
    pub loads: &'a [PeerLoad],
}

/// Candidate is one candidate a selector is built over: its identity and its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// Stable identity: the peer's address as written in the config. Hashing algorithms place
    /// the candidate by hashing this, so the ring/table depends on who the peers are, not on
    /// their order.
    pub address: &'a str,
    /// Relative weight; 0 = drained (never picked).
    pub weight: u32,
}

/// DEFAULT_POINTS is the default `points`: ring points per unit of weight (consistent_hash).
pub(crate) const DEFAULT_POINTS: u32 = 160;
/// DEFAULT_TABLE_SIZE is the default Maglev `table_size` (a prime, as the paper's).
pub(crate) const DEFAULT_TABLE_SIZE: u64 = 65_537;
/// DEFAULT_EWMA_DECAY is the default peak-EWMA time constant (`ewma_decay_ms = 10000`).
pub(crate) const DEFAULT_EWMA_DECAY: Duration = Duration::from_secs(10);

/// BalanceParams is an upstream's tuning of its algorithm (validated in `config/balance.rs`).
///
/// Defaults: `points` 160, `balance_factor` none (unbounded), `table_size` 65537,
/// `ewma_decay` 10 s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BalanceParams {
    /// consistent_hash/ip_hash: ring points per unit of weight. Default 160.
    pub points: u32,
    /// consistent_hash/ip_hash/maglev: bounded-load factor (> 1.0); a candidate with
    /// `active + 1 > ceil(factor × (total_active + 1) × weight / total_weight)` is passed over
    /// for the next distinct one. Default `None` (no bound).
    pub balance_factor: Option<f64>,
    /// maglev: lookup table size, a prime. Default 65537.
    pub table_size: u64,
    /// peak_ewma: time constant of the latency average's decay. Default 10 s.
    pub ewma_decay: Duration,
}

impl Default for BalanceParams {
    fn default() -> Self {
        BalanceParams {
            points: DEFAULT_POINTS,
            balance_factor: None,
            table_size: DEFAULT_TABLE_SIZE,
            ewma_decay: DEFAULT_EWMA_DECAY,
        }
    }
}

/// stable_hash is the one hash function of load balancing: XXH3-64 (seed 0) of `bytes`.
///
/// Why XXH3: its output is fixed by a published specification (frozen since xxHash 0.8.0)
/// and independent of platform, endianness and Rust version — unlike `std`'s `DefaultHasher`,
/// which is randomly keyed and may change between releases — so a key maps to the same peer
/// in every shard, process, build and machine. It is also fast on short keys (a few ns for an
/// IP or a cookie) and mixes well enough that ring points and table offsets are uniform.
#[inline]
pub fn stable_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// stable_hash_seeded is [`stable_hash`] with a seed, for independent hashes of one input
/// (Maglev's offset and skip).
#[inline]
pub(crate) fn stable_hash_seeded(bytes: &[u8], seed: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(bytes, seed)
}

/// Selector is a load-balancing algorithm over a fixed set of candidates `0..len()`.
///
/// Candidates are indexes into the slice the selector was built from, not `PeerId`s: the caller
/// keeps the mapping (a group builds one selector over its primaries and one over its backups).
pub trait Selector {
    /// Returns the next candidate in order of preference, or `None` when the selector has
    /// nothing to offer (no candidates, or all drained).
    fn pick(&mut self, req: &PickRequest<'_>) -> Option<usize>;

    /// Returns the first candidate in order of preference for which `eligible` holds
    /// (`req.nth` is ignored: the walk starts at the first choice).
    ///
    /// The default asks [`Selector::pick`] with `nth = 0, 1, …` at most `2 × len + 2` times,
    /// then scans linearly; selectors whose preference order can be walked more cheaply in
    /// one pass (least_connections, the hashing ones) override it. Either way the answer is
    /// `None` only when no candidate the selector offers is eligible.
    fn pick_eligible(
        &mut self,
        req: &PickRequest<'_>,
        eligible: &mut dyn FnMut(usize) -> bool,
    ) -> Option<usize> {
        pick_eligible_by_asking(self, req, eligible)
    }

    /// How many candidates the selector was built over.
    fn len(&self) -> usize;

    /// Whether the selector has no candidates.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The algorithm's config name (`least_connections`, …), for logs and benchmarks.
    fn name(&self) -> &'static str;
}

/// pick_eligible_by_asking is the default [`Selector::pick_eligible`]: ask `pick` with
/// increasing `nth` at most `2 × len + 2` times (enough for a rotation to pass every
/// candidate twice), then scan linearly from a rotating offset. `O(len)` picks at most.
pub(crate) fn pick_eligible_by_asking<S: Selector + ?Sized>(
    selector: &mut S,
    req: &PickRequest<'_>,
    eligible: &mut dyn FnMut(usize) -> bool,
) -> Option<usize> {
    let len = selector.len();
    if len == 0 {
        return None;
    }
    let tries = 2 * len + 2;
    let mut last = 0;
    for nth in 0..tries {
        let candidate = selector.pick(&PickRequest {
            hash: req.hash,
            nth: nth as u32,
            loads: req.loads,
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

/// Reads a candidate's active count; a candidate beyond the load table has no load.
#[inline]
pub(crate) fn active_of(loads: &[PeerLoad], candidate: usize) -> u32 {
    loads.get(candidate).map_or(0, |l| l.active.get())
}

/// build_selector is the constructor of every algorithm: the selector for `algorithm` over
/// `candidates` (in candidate order), tuned by `params`. `seed` seeds the randomized ones
/// (power_of_two, random, weighted_random, peak_ewma): pass a different one per shard so
/// shards do not draw the same sequence. `ip_hash` builds a consistent_hash ring (the caller
/// keys it by client IP).
pub fn build_selector(
    algorithm: Algorithm,
    params: &BalanceParams,
    candidates: &[Candidate<'_>],
    seed: u64,
) -> Box<dyn Selector> {
    let weights: Vec<u32> = candidates.iter().map(|c| c.weight).collect();
    match algorithm {
        Algorithm::RoundRobin => Box::new(RoundRobin::new(candidates.len())),
        Algorithm::SmoothWeighted => Box::new(SmoothWeighted::new(&weights)),
        Algorithm::LeastConnections => Box::new(LeastConnections::new(&weights)),
        Algorithm::PowerOfTwo => Box::new(PowerOfTwo::new(&weights, seed)),
        Algorithm::Random => Box::new(Random::new(&weights, seed)),
        Algorithm::WeightedRandom => Box::new(WeightedRandom::new(&weights, seed)),
        Algorithm::ConsistentHash | Algorithm::IpHash => Box::new(ConsistentHash::new(
            candidates,
            params.points,
            params.balance_factor,
        )),
        Algorithm::Maglev => Box::new(Maglev::new(
            candidates,
            params.table_size,
            params.balance_factor,
        )),
        Algorithm::PeakEwma => Box::new(PeakEwma::new(&weights, params.ewma_decay, seed)),
    }
}

/// Picks the first candidate the selector yields for which `eligible` holds.
///
/// Walks the selector's order of preference ([`Selector::pick_eligible`]) with a bounded
/// number of iterations and a linear fallback, so the answer is `None` only when no candidate
/// the selector offers is eligible. The cost is bounded by `O(len)` picks either way (for the
/// hashing selectors: one walk over their ring or table).
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
    let req = PickRequest {
        hash,
        nth: 0,
        loads,
    };
    selector
        .pick_eligible(&req, &mut eligible)
        .filter(|&c| c < len)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A request with no hash, no loads.
    pub(crate) const NO_REQ: PickRequest<'static> = PickRequest {
        hash: None,
        nth: 0,
        loads: &[],
    };

    /// A load table with these active counts.
    pub(crate) fn loads(active: &[u32]) -> Vec<PeerLoad> {
        active
            .iter()
            .map(|&a| {
                let l = PeerLoad::default();
                l.active.set(a);
                l
            })
            .collect()
    }

    /// Candidates `10.0.0.1:80`.. with these weights.
    pub(crate) fn addresses(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    /// Borrows `addresses` as candidates of weight 1.
    pub(crate) fn candidates(addresses: &[String]) -> Vec<Candidate<'_>> {
        addresses
            .iter()
            .map(|a| Candidate {
                address: a,
                weight: 1,
            })
            .collect()
    }

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

    #[test]
    fn stable_hash_is_xxh3_64() {
        // The XXH3-64 test vector of the empty input (xxHash's sanity check, seed 0).
        assert_eq!(stable_hash(b""), 0x2D06_8005_38D3_94C2);
        // Pinned values: a change here re-maps every hashed key in every deployment.
        assert_eq!(stable_hash(b"10.0.0.1:80-0"), PINNED_ADDR_0);
        assert_eq!(stable_hash_seeded(b"10.0.0.1:80", 1), PINNED_SEEDED);
    }

    /// `stable_hash(b"10.0.0.1:80-0")`, as the reference C xxHash computes it.
    const PINNED_ADDR_0: u64 = 8_520_510_903_655_117_293;
    /// `stable_hash_seeded(b"10.0.0.1:80", 1)`, as the reference C xxHash computes it.
    const PINNED_SEEDED: u64 = 14_703_326_428_898_591_147;

    #[test]
    fn every_algorithm_builds_and_skips_drained_and_ineligible() {
        let addrs = addresses(4);
        let mut cands = candidates(&addrs);
        cands[1].weight = 0;
        let load = loads(&[0, 0, 0, 0]);
        for algorithm in [
            Algorithm::RoundRobin,
            Algorithm::SmoothWeighted,
            Algorithm::LeastConnections,
            Algorithm::PowerOfTwo,
            Algorithm::Random,
            Algorithm::WeightedRandom,
            Algorithm::ConsistentHash,
            Algorithm::IpHash,
            Algorithm::Maglev,
            Algorithm::PeakEwma,
        ] {
            let mut sel = build_selector(algorithm, &BalanceParams::default(), &cands, 7);
            assert_eq!(sel.len(), 4);
            let expected_name = match algorithm {
                Algorithm::IpHash => "consistent_hash",
                a => a.name(),
            };
            assert_eq!(sel.name(), expected_name);
            for i in 0..200u64 {
                let hash = (i % 2 == 0).then(|| stable_hash(&i.to_le_bytes()));
                // Candidate 1 is drained (the group's eligibility excludes it, as here) and
                // candidate 3 is down.
                let got = select_eligible(sel.as_mut(), hash, &load, |c| c != 1 && c != 3);
                assert!(matches!(got, Some(0 | 2)), "{algorithm:?} gave {got:?}");
                if algorithm != Algorithm::RoundRobin {
                    // Only round_robin ignores weights; everyone else never offers 1.
                    let got = select_eligible(sel.as_mut(), hash, &load, |_| true);
                    assert_ne!(got, Some(1), "{algorithm:?}");
                }
            }
            assert_eq!(
                select_eligible(sel.as_mut(), Some(1), &load, |_| false),
                None
            );
        }
    }
}

//! Maglev hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
//! Balancer", NSDI 2016, §3.4): a lookup table of prime size M (default 65537) in which every
//! non-drained candidate owns a share of the entries proportional to its weight; a key goes to
//! `table[hash mod M]`, one array read per pick.
//!
//! Population as in the paper: candidate i has `offset = h1(address) mod M` and
//! `skip = h2(address) mod (M − 1) + 1` ([`stable_hash_seeded`] with seeds 1 and 2); its
//! preference list is `(offset + j × skip) mod M` for j = 0, 1, … (a permutation of the table,
//! M being prime), and candidates take turns claiming their next still-free preferred entry
//! until the table is full. Weights follow Envoy's weighted extension: candidate i takes a turn
//! in round t only when `t × w_i ≥ (turns taken) × w_max`, i.e. in proportion to its weight.
//! With equal weights every candidate ends up with ⌊M/n⌋ or ⌈M/n⌉ entries (spread within one
//! entry), and removing a candidate moves its own keys plus a small fraction of others (the
//! paper's trade of a little disruption for an even spread).
//!
//! `nth > 0` walks the table from the key's entry with a key-dependent stride
//! (`1 + (hash rotated by 32) mod (M − 1)`, which visits every entry since M is prime) to the
//! nth distinct candidate: retries of different keys fan out over different peers instead of
//! all landing on one neighbour. Bounded load (`balance_factor`) and absent keys behave as in
//! consistent_hash: overloaded candidates are passed over for the next distinct one, and
//! requests without a key rotate over the non-drained candidates.

use super::keyed::{nth_acceptor, DistinctWalk, LoadBound, Rotation};
use super::{
    pick_eligible_by_asking, stable_hash_seeded, Candidate, PeerLoad, PickRequest, Selector,
};

/// Seed of the offset hash h1.
const OFFSET_SEED: u64 = 1;
/// Seed of the skip hash h2.
const SKIP_SEED: u64 = 2;
/// An empty table entry while populating.
const EMPTY: u32 = u32::MAX;

/// Maglev is a Maglev lookup table over the non-drained candidates, with optional bounded
/// loads; requests without a key rotate.
#[derive(Debug, Clone)]
pub struct Maglev {
    /// Number of candidates.
    len: usize,
    /// The candidate of each entry (empty when every candidate is drained).
    table: Vec<u32>,
    /// How many distinct candidates own entries.
    distinct: usize,
    /// The bounded-load check, when `balance_factor` is set.
    bound: Option<LoadBound>,
    /// Scratch state of walks past the first entry.
    walk: DistinctWalk,
    /// Round robin for requests without a key.
    rotation: Rotation,
}

/// Whether `n` is prime (trial division; `n` ≤ a few million here).
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n < 4 {
        return true;
    }
    if n.is_multiple_of(2) {
        return false;
    }
    let mut d = 3;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// The smallest prime ≥ `n`.
pub fn next_prime(n: u64) -> u64 {
    let mut p = n.max(2);
    while !is_prime(p) {
        p += 1;
    }
    p
}

/// One candidate's state while populating the table.
struct Turn {
    /// The candidate.
    candidate: u32,
    /// Its weight.
    weight: u64,
    /// Start of its preference list.
    offset: u64,
    /// Step of its preference list.
    skip: u64,
    /// Position in its preference list.
    next: u64,
    /// `(turns taken) × w_max`: the next turn comes when `round × weight` reaches it.
    target: u64,
}

impl Maglev {
    /// Builds the table: `table_size` entries (default 65537; a non-prime size is rounded up
    /// to the next prime, config validation rejects it), bounded loads when `balance_factor`
    /// is `Some`.
    pub fn new(candidates: &[Candidate<'_>], table_size: u64, balance_factor: Option<f64>) -> Self {
        let weights: Vec<u32> = candidates.iter().map(|c| c.weight).collect();
        let m = next_prime(table_size);
        let mut turns: Vec<Turn> = candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.weight > 0)
            .map(|(i, c)| Turn {
                candidate: i as u32,
                weight: u64::from(c.weight),
                offset: stable_hash_seeded(c.address.as_bytes(), OFFSET_SEED) % m,
                skip: stable_hash_seeded(c.address.as_bytes(), SKIP_SEED) % (m - 1) + 1,
                next: 0,
                target: 0,
            })
            .collect();
        // Turn order decides contested entries: order by address so the table depends on
        // who the candidates are, not on their order in the config.
        turns.sort_by(|a, b| {
            candidates[a.candidate as usize]
                .address
                .cmp(candidates[b.candidate as usize].address)
        });
        let table = if turns.is_empty() {
            Vec::new()
        } else {
            populate(&mut turns, m)
        };
        let mut owns = vec![false; candidates.len()];
        table.iter().for_each(|&c| owns[c as usize] = true);
        Maglev {
            len: candidates.len(),
            distinct: owns.iter().filter(|&&o| o).count(),
            table,
            bound: balance_factor.map(|f| LoadBound::new(f, &weights)),
            walk: DistinctWalk::new(candidates.len()),
            rotation: Rotation::new(&weights),
        }
    }

    /// The table's size M (0 when every candidate is drained).
    pub fn table_size(&self) -> usize {
        self.table.len()
    }

    /// The table entry of `hash` and the key's probe stride.
    #[inline]
    fn slot_and_stride(&self, hash: u64) -> (usize, usize) {
        let m = self.table.len() as u64;
        let stride = 1 + hash.rotate_left(32) % (m - 1).max(1);
        ((hash % m) as usize, stride as usize)
    }

    /// Walks the distinct candidates from the key's entry, overloaded ones last, and returns
    /// the first one `accept` takes.
    fn walk_from(
        &mut self,
        hash: u64,
        loads: &[PeerLoad],
        total: u64,
        accept: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        let (slot, stride) = self.slot_and_stride(hash);
        let Maglev {
            table,
            bound,
            walk,
            distinct,
            ..
        } = self;
        let m = table.len();
        let mut pos = slot;
        let probes = (0..m).map(|_| {
            let c = table[pos] as usize;
            pos += stride;
            if pos >= m {
                pos -= m;
            }
            c
        });
        let overloaded = |c| {
            bound
                .as_ref()
                .is_some_and(|b| b.overloaded(loads, total, c))
        };
        walk.first(probes, *distinct, overloaded, accept)
    }

    /// Requests in flight, when the bound needs it.
    #[inline]
    fn total(&self, loads: &[PeerLoad]) -> u64 {
        if self.bound.is_some() {
            LoadBound::total(loads)
        } else {
            0
        }
    }
}

/// Fills a table of `m` entries (prime) by weighted turns; every candidate's preference list
/// is a permutation of `0..m`, so each turn finds a free entry while one is left.
fn populate(turns: &mut [Turn], m: u64) -> Vec<u32> {
    let max_weight = turns.iter().map(|t| t.weight).max().unwrap_or(1);
    let mut table = vec![EMPTY; m as usize];
    let mut filled = 0u64;
    let mut round = 1u64;
    while filled < m {
        for t in turns.iter_mut() {
            if filled == m {
                break;
            }
            if round * t.weight < t.target {
                continue;
            }
            t.target += max_weight;
            loop {
                let entry = ((t.offset + t.next * t.skip) % m) as usize;
                t.next += 1;
                if table[entry] == EMPTY {
                    table[entry] = t.candidate;
                    filled += 1;
                    break;
                }
            }
        }
        round += 1;
    }
    table
}

impl Selector for Maglev {
    #[inline]
    fn pick(&mut self, req: &PickRequest<'_>) -> Option<usize> {
        let Some(hash) = req.hash else {
            return self.rotation.next();
        };
        if self.table.is_empty() {
            return None;
        }
        if self.bound.is_none() && req.nth == 0 {
            let m = self.table.len() as u64;
            return Some(self.table[(hash % m) as usize] as usize);
        }
        let total = self.total(req.loads);
        let nth = req.nth as usize % self.distinct;
        self.walk_from(hash, req.loads, total, nth_acceptor(nth))
    }

    fn pick_eligible(
        &mut self,
        req: &PickRequest<'_>,
        eligible: &mut dyn FnMut(usize) -> bool,
    ) -> Option<usize> {
        let Some(hash) = req.hash else {
            return pick_eligible_by_asking(self, req, eligible);
        };
        if self.table.is_empty() {
            return None;
        }
        let m = self.table.len() as u64;
        let first = self.table[(hash % m) as usize] as usize;
        let total = self.total(req.loads);
        let over = self
            .bound
            .as_ref()
            .is_some_and(|b| b.overloaded(req.loads, total, first));
        if !over && eligible(first) {
            return Some(first);
        }
        self.walk_from(hash, req.loads, total, eligible)
    }

    fn len(&self) -> usize {
        self.len
    }

    fn name(&self) -> &'static str {
        "maglev"
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{addresses, candidates, loads};
    use super::super::{select_eligible, stable_hash, DEFAULT_TABLE_SIZE};
    use super::*;

    fn key(i: usize) -> u64 {
        stable_hash(format!("key-{i}").as_bytes())
    }

    fn table(addrs: &[String]) -> Maglev {
        Maglev::new(&candidates(addrs), DEFAULT_TABLE_SIZE, None)
    }

    fn owners(addrs: &[String], keys: usize) -> Vec<String> {
        let mut t = table(addrs);
        (0..keys)
            .map(|i| {
                let c = t
                    .pick(&PickRequest {
                        hash: Some(key(i)),
                        nth: 0,
                        loads: &[],
                    })
                    .unwrap();
                addrs[c].clone()
            })
            .collect()
    }

    #[test]
    fn primes() {
        let primes: Vec<u64> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, vec![2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65_537));
        assert!(!is_prime(65_536));
        assert_eq!(next_prime(65_536), 65_537);
        assert_eq!(next_prime(0), 2);
        let t = Maglev::new(&candidates(&addresses(3)), 100, None);
        assert_eq!(t.table_size(), 101);
    }

    #[test]
    fn same_key_same_peer_whatever_the_order() {
        let addrs = addresses(10);
        let mut reversed = addrs.clone();
        reversed.reverse();
        let a = owners(&addrs, 10_000);
        assert_eq!(a, owners(&addrs, 10_000));
        assert_eq!(a, owners(&reversed, 10_000));
    }

    #[test]
    fn equal_weights_spread_within_one_entry() {
        let t = table(&addresses(10));
        let mut counts = [0usize; 10];
        t.table.iter().for_each(|&c| counts[c as usize] += 1);
        let even = 65_537.0 / 10.0;
        for &n in &counts {
            assert!((n as f64 - even).abs() / even < 0.01, "{counts:?}");
            assert!(n == 6553 || n == 6554, "{counts:?}");
        }
    }

    #[test]
    fn weights_are_honoured_and_drained_left_out() {
        let addrs = addresses(5);
        let mut cands = candidates(&addrs);
        for (c, w) in cands.iter_mut().zip([1, 2, 3, 4, 0]) {
            c.weight = w;
        }
        let t = Maglev::new(&cands, DEFAULT_TABLE_SIZE, None);
        let mut counts = [0usize; 5];
        t.table.iter().for_each(|&c| counts[c as usize] += 1);
        assert_eq!(counts[4], 0);
        for c in 0..4 {
            let share = counts[c] as f64 / 65_537.0;
            let want = (c + 1) as f64 / 10.0;
            assert!((share - want).abs() < 0.01, "{counts:?}");
        }
    }

    #[test]
    fn removing_one_of_ten_moves_about_its_share() {
        let addrs = addresses(10);
        let before = owners(&addrs, 100_000);
        let removed = &addrs[3];
        let rest: Vec<String> = addrs.iter().filter(|a| *a != removed).cloned().collect();
        let after = owners(&rest, 100_000);
        let on_removed = before.iter().filter(|b| *b == removed).count();
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        // Every key of the removed peer moves; Maglev may move a few others too.
        let collateral = moved - on_removed;
        assert!(moved <= 100_000 / 10 + 5_000, "{moved}");
        assert!(
            collateral <= 2_000,
            "{collateral} keys moved between surviving peers"
        );
    }

    #[test]
    fn adding_one_moves_at_most_its_share() {
        let addrs = addresses(10);
        let before = owners(&addrs, 100_000);
        let mut more = addrs.clone();
        more.push("10.0.0.99:80".to_string());
        let after = owners(&more, 100_000);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        assert!(moved > 0);
        assert!(moved <= 100_000 / 11 + 5_000, "{moved}");
    }

    #[test]
    fn fixed_keys_map_to_committed_peers() {
        let addrs = addresses(5);
        let mut t = table(&addrs);
        let got: Vec<usize> = (0..20)
            .map(|i| {
                let hash = stable_hash(format!("user-{i}").as_bytes());
                t.pick(&PickRequest {
                    hash: Some(hash),
                    nth: 0,
                    loads: &[],
                })
                .unwrap()
                    + 1
            })
            .collect();
        // Peer numbers: 1 = 10.0.0.1:80, … 5 = 10.0.0.5:80.
        assert_eq!(got, COMMITTED);
    }

    /// Where `user-0` .. `user-19` go on peers 10.0.0.1:80 .. 10.0.0.5:80 (cross-checked
    /// against an independent model of the table built on the reference C xxHash).
    const COMMITTED: [usize; 20] = [1, 4, 5, 1, 5, 5, 5, 4, 3, 4, 3, 5, 1, 5, 1, 4, 2, 1, 1, 4];

    #[test]
    fn nth_walks_distinct_peers_and_wraps() {
        let addrs = addresses(6);
        let mut t = table(&addrs);
        let req = |nth| PickRequest {
            hash: Some(key(7)),
            nth,
            loads: &[],
        };
        let order: Vec<usize> = (0..6).map(|n| t.pick(&req(n)).unwrap()).collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(t.pick(&req(6)), Some(order[0]));
        assert_eq!(t.pick(&req(3)), Some(order[3]));
        assert_eq!(
            select_eligible(&mut t, Some(key(7)), &[], |c| c != order[0]),
            Some(order[1])
        );
    }

    #[test]
    fn absent_key_rotates_and_all_drained_is_none() {
        let addrs = addresses(3);
        let mut t = table(&addrs);
        let got: Vec<_> = (0..4)
            .map(|_| {
                t.pick(&PickRequest {
                    hash: None,
                    nth: 0,
                    loads: &[],
                })
                .unwrap()
            })
            .collect();
        assert_eq!(got, vec![0, 1, 2, 0]);
        let mut cands = candidates(&addrs);
        cands.iter_mut().for_each(|c| c.weight = 0);
        let mut t = Maglev::new(&cands, DEFAULT_TABLE_SIZE, None);
        assert_eq!(t.table_size(), 0);
        assert_eq!(select_eligible(&mut t, Some(3), &[], |_| true), None);
    }

    #[test]
    fn bounded_load_caps_a_hot_key() {
        let addrs = addresses(10);
        let mut t = Maglev::new(&candidates(&addrs), DEFAULT_TABLE_SIZE, Some(1.25));
        let l = loads(&[0; 10]);
        let hot = stable_hash(b"hot");
        let mut rng = fastrand::Rng::with_seed(5);
        for i in 0..10_000 {
            let hash = if rng.u32(..10) < 9 { hot } else { key(i) };
            let c = select_eligible(&mut t, Some(hash), &l, |_| true).unwrap();
            l[c].active.set(l[c].active.get() + 1);
        }
        let max = l.iter().map(|x| x.active.get()).max().unwrap();
        assert!(f64::from(max) <= (1.25f64 * 1000.0).ceil(), "max {max}");
    }
}

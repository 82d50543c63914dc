//! Peak-EWMA: power of two choices on expected latency (Finagle's and linkerd's "peak EWMA"
//! load balancer).
//!
//! Each peer's [`PeerLoad`] carries a latency estimate `ewma_ns`, fed by [`observe_latency`]
//! after every response (the proxy calls it with the request's round-trip time). The estimate
//! is *peak-sensitive*: a sample above the current estimate replaces it at once (a peer that
//! turns slow is avoided immediately), while lower samples only pull it down gradually,
//! weighted by how long ago the last update was: `w = exp(−dt / decay)`,
//! `ewma ← ewma × w + sample × (1 − w)` with `decay` the time constant (`ewma_decay_ms`,
//! default 10 s). Between samples the estimate decays toward 0 by the same `w` (read-only, at
//! pick time), so a peer that was once slow and has not been tried since is eventually tried
//! again and re-measured.
//!
//! A pick draws two distinct non-drained candidates at random and takes the one with the
//! lower cost `estimate × (active + 1) ÷ weight`: the `active + 1` factor makes a peer with
//! requests piling up (slow, or just busy) look proportionally worse even before its slow
//! answers arrive. A peer without a sample yet costs 0 while idle — so it is tried — and a
//! prohibitive penalty (plus its active count) while it has requests in flight, so unmeasured
//! peers are not flooded before their first answer.

use std::time::{Duration, Instant};

use super::power_of_two::two_distinct;
use super::{PeerLoad, PickRequest, Selector};

/// Cost of a peer without a latency sample that has requests in flight (≈ 11.6 days in ns:
/// worse than any measured peer).
const UNMEASURED_BUSY_COST: f64 = 1e15;

/// observe_latency is how the proxy feeds a response's round-trip time `rtt`, measured at
/// `now`, into a peer's peak-EWMA estimate with time constant `decay` (the group's
/// `ewma_decay`, default 10 s).
///
/// The first sample sets the estimate; a sample above the (decayed) estimate replaces it; a
/// lower one blends in with weight `1 − exp(−dt / decay)`, dt being the time since the last
/// update.
pub fn observe_latency(load: &PeerLoad, rtt: Duration, now: Instant, decay: Duration) {
    // ≥ 1 ns: 0 means "no sample".
    let sample = (rtt.as_nanos() as f64).max(1.0);
    let ewma = load.ewma_ns.get();
    let next = match load.ewma_at.get() {
        Some(at) if ewma > 0.0 => {
            let w = decay_weight(now.saturating_duration_since(at), decay);
            if sample > ewma * w {
                sample
            } else {
                ewma * w + sample * (1.0 - w)
            }
        }
        _ => sample,
    };
    load.ewma_ns.set(next);
    load.ewma_at.set(Some(now));
}

/// `exp(−dt / decay)`: how much of an estimate `dt` old is still trusted.
#[inline]
fn decay_weight(dt: Duration, decay: Duration) -> f64 {
    let tau = (decay.as_nanos() as f64).max(1.0);
    (-(dt.as_nanos() as f64) / tau).exp()
}

/// PeakEwma is power of two choices on peak-EWMA latency × (active + 1) ÷ weight, from a
/// per-selector `fastrand::Rng`.
#[derive(Debug, Clone)]
pub struct PeakEwma {
    /// Number of candidates.
    len: usize,
    /// Candidates with weight > 0.
    live: Vec<u32>,
    /// Weight of each candidate.
    weights: Vec<u32>,
    /// The estimates' time constant (default 10 s).
    decay: Duration,
    /// This replica's random numbers.
    rng: fastrand::Rng,
}

impl PeakEwma {
    /// Builds the selector over candidates with these weights; `decay` is the time constant
    /// the estimates decay with between samples (default 10 s).
    pub fn new(weights: &[u32], decay: Duration, seed: u64) -> Self {
        PeakEwma {
            len: weights.len(),
            live: (0..weights.len() as u32)
                .filter(|&c| weights[c as usize] > 0)
                .collect(),
            weights: weights.to_vec(),
            decay,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// What a candidate costs, up to the decay since its last sample.
    #[inline]
    fn cost(&self, loads: &[PeerLoad], candidate: usize) -> Cost {
        let Some(load) = loads.get(candidate) else {
            return Cost::Fixed(0.0);
        };
        let active = f64::from(load.active.get());
        let ewma = load.ewma_ns.get();
        if ewma <= 0.0 {
            return Cost::Fixed(if active == 0.0 {
                0.0
            } else {
                UNMEASURED_BUSY_COST + active
            });
        }
        let weight = f64::from(self.weights[candidate].max(1));
        Cost::Measured(ewma * (active + 1.0) / weight, load.ewma_at.get())
    }

    /// Whether `a` costs no more than `b` now.
    ///
    /// Both estimates decay by the same factor from any common instant on, so the order of
    /// `cost(a) × exp(−(now − t_a)/τ)` and `cost(b) × exp(−(now − t_b)/τ)` does not depend on
    /// `now`: compare `cost(a)` with `cost(b) × exp((t_b − t_a)/τ)` — one `exp` and no clock
    /// read per pick. (An unmeasured candidate's fixed cost is compared with the other's
    /// undecayed cost: exact for the idle case, 0, and immaterial for the penalty.)
    #[inline]
    fn prefer(&self, loads: &[PeerLoad], a: usize, b: usize) -> bool {
        match (self.cost(loads, a), self.cost(loads, b)) {
            (Cost::Fixed(x), Cost::Fixed(y)) => x <= y,
            (Cost::Fixed(x), Cost::Measured(y, _)) => x <= y,
            (Cost::Measured(x, _), Cost::Fixed(y)) => x <= y,
            (Cost::Measured(x, ta), Cost::Measured(y, tb)) => {
                let factor = match (ta, tb) {
                    (Some(ta), Some(tb)) => match tb.checked_duration_since(ta) {
                        Some(later) => decay_weight(later, self.decay).recip(),
                        None => decay_weight(ta.duration_since(tb), self.decay),
                    },
                    _ => 1.0,
                };
                x <= y * factor
            }
        }
    }
}

/// Cost is a candidate's cost as of its last latency sample.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cost {
    /// No sample yet: 0 while idle, a prohibitive penalty while busy.
    Fixed(f64),
    /// `estimate × (active + 1) ÷ weight` as of the sample time (decays from then on).
    Measured(f64, Option<Instant>),
}

impl Selector for PeakEwma {
    #[inline]
    fn pick(&mut self, req: &PickRequest<'_>) -> Option<usize> {
        let m = self.live.len();
        if m < 2 {
            return self.live.first().map(|&c| c as usize);
        }
        let (i, j) = two_distinct(&mut self.rng, m);
        let (a, b) = (self.live[i] as usize, self.live[j] as usize);
        Some(if self.prefer(req.loads, a, b) { a } else { b })
    }

    fn len(&self) -> usize {
        self.len
    }

    fn name(&self) -> &'static str {
        "peak_ewma"
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    use super::super::tests::loads;
    use super::super::DEFAULT_EWMA_DECAY;
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn observe_peaks_up_and_decays_down() {
        let l = PeerLoad::default();
        let t0 = Instant::now();
        let decay = Duration::from_secs(10);
        observe_latency(&l, 2 * MS, t0, decay);
        assert_eq!(l.ewma_ns.get(), 2e6);
        // Higher: jump.
        observe_latency(&l, 5 * MS, t0, decay);
        assert_eq!(l.ewma_ns.get(), 5e6);
        // Lower, 1 s later: w = e^-0.1 → 5 ms × 0.904837 + 1 ms × 0.095163.
        let w = (-0.1f64).exp();
        observe_latency(&l, MS, t0 + Duration::from_secs(1), decay);
        let want = 5e6 * w + 1e6 * (1.0 - w);
        assert!((l.ewma_ns.get() - want).abs() < 1e-3, "{}", l.ewma_ns.get());
        assert!((want - 4_619_349.0).abs() < 1.0, "{want}");
        // Lower, same instant: w = 1, unchanged.
        observe_latency(&l, MS, t0 + Duration::from_secs(1), decay);
        assert!((l.ewma_ns.get() - want).abs() < 1e-3);
        assert_eq!(l.ewma_at.get(), Some(t0 + Duration::from_secs(1)));
    }

    /// The cost of `c` at `now`, computed the long way.
    fn cost_at(s: &PeakEwma, l: &[PeerLoad], c: usize, now: Instant) -> f64 {
        match s.cost(l, c) {
            Cost::Fixed(x) => x,
            Cost::Measured(x, at) => {
                x * at.map_or(1.0, |at| decay_weight(now.duration_since(at), s.decay))
            }
        }
    }

    #[test]
    fn cost_uses_latency_active_weight_and_decay() {
        let s = PeakEwma::new(&[1, 2], DEFAULT_EWMA_DECAY, 1);
        let l = loads(&[0, 0]);
        let t0 = Instant::now();
        // Unmeasured: free while idle, prohibitive while busy.
        assert_eq!(s.cost(&l, 0), Cost::Fixed(0.0));
        l[0].active.set(2);
        assert_eq!(s.cost(&l, 0), Cost::Fixed(1e15 + 2.0));
        observe_latency(&l[0], 3 * MS, t0, DEFAULT_EWMA_DECAY);
        observe_latency(&l[1], 3 * MS, t0, DEFAULT_EWMA_DECAY);
        assert_eq!(s.cost(&l, 0), Cost::Measured(3e6 * 3.0, Some(t0)));
        assert_eq!(s.cost(&l, 1), Cost::Measured(3e6 / 2.0, Some(t0)));
        // 10 s (one time constant) later the estimate is down to 1/e.
        let later = t0 + Duration::from_secs(10);
        let want = 3e6 * (-1.0f64).exp() * 3.0;
        assert!((cost_at(&s, &l, 0, later) - want).abs() < 1e-6);
    }

    #[test]
    fn comparison_without_a_clock_agrees_with_decayed_costs() {
        let s = PeakEwma::new(&[1, 3], Duration::from_secs(2), 1);
        let l = loads(&[0, 0]);
        let t0 = Instant::now();
        let mut rng = fastrand::Rng::with_seed(9);
        let mut checked = 0;
        for _ in 0..10_000 {
            for load in &l {
                load.active.set(rng.u32(0..5));
                load.ewma_ns.set(0.0);
                load.ewma_at.set(None);
                if rng.u8(..10) > 0 {
                    let at = t0 + Duration::from_millis(rng.u64(0..20_000));
                    observe_latency(load, Duration::from_micros(rng.u64(1..50_000)), at, s.decay);
                }
            }
            let now = t0 + Duration::from_millis(rng.u64(20_000..40_000));
            let (x, y) = (cost_at(&s, &l, 0, now), cost_at(&s, &l, 1, now));
            if (x - y).abs() <= 1e-9 * x.max(y) {
                continue;
            }
            // Exact unless an unmeasured busy peer meets a measured one (both then lose to
            // anything sensible).
            if x < 1e15 && y < 1e15 {
                assert_eq!(s.prefer(&l, 0, 1), x <= y, "{x} vs {y}");
                checked += 1;
            }
        }
        assert!(checked > 5_000, "{checked}");
    }

    #[test]
    fn busy_peer_is_avoided_at_equal_latency() {
        let mut s = PeakEwma::new(&[1, 1], DEFAULT_EWMA_DECAY, 3);
        let l = loads(&[5, 0]);
        let t0 = Instant::now();
        for load in &l {
            observe_latency(load, MS, t0, DEFAULT_EWMA_DECAY);
        }
        for _ in 0..100 {
            let req = PickRequest {
                hash: None,
                nth: 0,
                loads: &l,
            };
            assert_eq!(s.pick(&req), Some(1));
        }
    }

    #[test]
    fn ten_times_slower_peer_gets_under_20_percent() {
        // Open-loop simulation in virtual time: a request every 200 µs; peers answer in
        // 1 ms, 1 ms and 10 ms; answers feed the estimates when they arrive.
        let latency = [MS, MS, 10 * MS];
        let mut s = PeakEwma::new(&[1, 1, 1], DEFAULT_EWMA_DECAY, 17);
        let l = loads(&[0, 0, 0]);
        let t0 = Instant::now();
        let mut in_flight: BinaryHeap<Reverse<(Duration, usize)>> = BinaryHeap::new();
        let mut counts = [0usize; 3];
        let n = 20_000;
        for i in 0..n {
            let t = Duration::from_micros(200) * i;
            while let Some(&Reverse((done, c))) = in_flight.peek() {
                if done > t {
                    break;
                }
                in_flight.pop();
                l[c].active.set(l[c].active.get() - 1);
                observe_latency(&l[c], latency[c], t0 + done, DEFAULT_EWMA_DECAY);
            }
            let req = PickRequest {
                hash: None,
                nth: 0,
                loads: &l,
            };
            let c = s.pick(&req).unwrap();
            counts[c] += 1;
            l[c].active.set(l[c].active.get() + 1);
            in_flight.push(Reverse((t + latency[c], c)));
        }
        let slow = counts[2] as f64 / f64::from(n);
        assert!(slow < 0.20, "{counts:?}");
        // The fast two share the rest about evenly.
        assert!(
            counts[0].abs_diff(counts[1]) < n as usize / 20,
            "{counts:?}"
        );
    }

    #[test]
    fn drained_never_and_single_always() {
        let l = loads(&[0, 0, 0]);
        let req = PickRequest {
            hash: None,
            nth: 0,
            loads: &l,
        };
        let mut s = PeakEwma::new(&[0, 1, 0], DEFAULT_EWMA_DECAY, 1);
        assert!((0..20).all(|_| s.pick(&req) == Some(1)));
        let mut s = PeakEwma::new(&[0, 0], DEFAULT_EWMA_DECAY, 1);
        assert_eq!(s.pick(&req), None);
    }
}

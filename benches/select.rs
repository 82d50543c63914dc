//! Micro-benchmarks of peer selection: ns per pick for every algorithm with 3, 100 and 1000
//! peers, through `select_eligible` (every candidate eligible) with a load table present —
//! what the proxy pays per request to choose a peer.
//!
//! Run: `cargo bench --bench select -- --warm-up-time 1 --measurement-time 2`.
//!
//! Loads: every peer has 1–8 requests in flight (so least_connections scans the whole table:
//! no idle peer lets it stop early) and a latency estimate of 1–10 ms (peak_ewma). Hashing
//! algorithms get a different key on each pick, cycling through 4096 keys.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ringlb::balance::Algorithm;
use ringlb::balance::{
    build_selector, observe_latency, select_eligible, stable_hash, BalanceParams, Candidate,
    PeerLoad,
};

/// Group sizes to measure.
const SIZES: [usize; 3] = [3, 100, 1000];

/// One benchmarked configuration.
struct Variant {
    /// Row name.
    name: &'static str,
    /// Algorithm.
    algorithm: Algorithm,
    /// Tuning.
    params: BalanceParams,
    /// Whether weights differ (1–4) instead of all 1.
    weighted: bool,
}

fn variants() -> Vec<Variant> {
    let plain = |name, algorithm| Variant {
        name,
        algorithm,
        params: BalanceParams::default(),
        weighted: false,
    };
    vec![
        plain("round_robin", Algorithm::RoundRobin),
        plain("smooth_weighted", Algorithm::SmoothWeighted),
        plain("least_connections", Algorithm::LeastConnections),
        Variant {
            weighted: true,
            ..plain("least_connections_weighted", Algorithm::LeastConnections)
        },
        plain("power_of_two", Algorithm::PowerOfTwo),
        plain("random", Algorithm::Random),
        Variant {
            weighted: true,
            ..plain("weighted_random", Algorithm::WeightedRandom)
        },
        plain("consistent_hash", Algorithm::ConsistentHash),
        Variant {
            params: BalanceParams {
                balance_factor: Some(1.25),
                ..BalanceParams::default()
            },
            ..plain("consistent_hash_bounded", Algorithm::ConsistentHash)
        },
        plain("maglev", Algorithm::Maglev),
        plain("peak_ewma", Algorithm::PeakEwma),
    ]
}

fn bench_select(c: &mut Criterion) {
    let mut group = c.benchmark_group("select");
    let keys: Vec<u64> = (0..4096u32)
        .map(|i| stable_hash(format!("user-{i}").as_bytes()))
        .collect();
    for v in variants() {
        for &n in &SIZES {
            let addresses: Vec<String> = (0..n)
                .map(|i| format!("10.0.{}.{}:8080", i / 256, i % 256))
                .collect();
            let candidates: Vec<Candidate<'_>> = addresses
                .iter()
                .enumerate()
                .map(|(i, a)| Candidate {
                    address: a,
                    weight: if v.weighted { 1 + (i % 4) as u32 } else { 1 },
                })
                .collect();
            let mut rng = fastrand::Rng::with_seed(n as u64);
            let now = Instant::now();
            let loads: Vec<PeerLoad> = (0..n)
                .map(|_| {
                    let l = PeerLoad::default();
                    l.active.set(rng.u32(1..=8));
                    let rtt = Duration::from_micros(rng.u64(1000..10_000));
                    observe_latency(&l, rtt, now, v.params.ewma_decay);
                    l
                })
                .collect();
            let mut selector = build_selector(v.algorithm, &v.params, &candidates, 1);
            let hashing = v.algorithm.is_hashing();
            let mut k = 0usize;
            group.bench_with_input(BenchmarkId::new(v.name, n), &n, |b, _| {
                b.iter(|| {
                    k = (k + 1) & 4095;
                    let hash = if hashing { Some(keys[k]) } else { None };
                    black_box(select_eligible(
                        selector.as_mut(),
                        black_box(hash),
                        &loads,
                        |_| true,
                    ))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_select);
criterion_main!(benches);

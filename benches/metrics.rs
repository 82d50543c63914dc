//! Micro-benchmark of the metrics core: what the request path pays (a counter increment, a
//! histogram observation) and what a scrape costs (rendering 4 shards × 4 upstreams × 8 peers,
//! summed over shards).
//!
//! Run: `cargo bench --bench metrics -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ringlb::metrics::{render, ControlGauges, Counter, Histogram, Registry};

fn bench_metrics(c: &mut Criterion) {
    let mut g = c.benchmark_group("metrics");

    let counter = Counter::new();
    g.bench_function("counter inc", |b| b.iter(|| black_box(&counter).inc()));

    let histogram = Histogram::new();
    let mut nanos = 0u64;
    g.bench_function("histogram observe", |b| {
        b.iter(|| {
            // Walk over the buckets so the search does not always take one path.
            nanos = (nanos + 7_919_000) % 12_000_000_000;
            black_box(&histogram).observe(Duration::from_nanos(black_box(nanos)))
        })
    });

    let mut registry = Registry::new(4);
    let upstreams: Vec<(String, Vec<String>)> = (0..4)
        .map(|u| {
            let peers = (0..8).map(|p| format!("10.0.{u}.{p}:8080")).collect();
            (format!("upstream-{u}"), peers)
        })
        .collect();
    let handles = registry.reconcile(&upstreams);
    for h in &handles {
        h.shard.requests.add(1000);
        h.shard.count_response(200);
        h.shard.count_response(503);
        h.shard
            .request_duration_seconds
            .observe(Duration::from_millis(3));
        for u in &h.upstreams {
            u.metrics.requests.add(100);
            for p in &u.peers {
                p.requests.add(10);
                p.count_response(200);
                p.response_seconds.observe(Duration::from_millis(2));
                p.ewma_seconds.set(0.002);
            }
        }
    }
    let control = ControlGauges {
        version: "0.1.0".into(),
        ..ControlGauges::default()
    };
    let mut out = String::new();
    render(&registry, &control, &mut out);
    assert!(out.len() > 100_000, "{} bytes", out.len());
    g.bench_function("render 4 shards x 4 upstreams x 8 peers", |b| {
        b.iter(|| {
            out.clear();
            render(black_box(&registry), &control, &mut out);
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench_metrics);
criterion_main!(benches);

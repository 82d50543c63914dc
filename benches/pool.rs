//! Micro-benchmark of what reusing a pooled upstream connection costs: `Pool::take` + `put`
//! with its liveness check (one non-blocking `recv(MSG_PEEK)` on the socket), next to the check
//! alone, on an idle loopback connection.
//!
//! Run: `cargo bench --bench pool -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use ringlb::balance::PeerId;
use ringlb::config::PoolConfig;
use ringlb::upstream::{is_quiet, Pool};

fn bench_pool(c: &mut Criterion) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("runtime");
    let stream = rt.block_on(async {
        monoio::net::TcpStream::connect(addr)
            .await
            .expect("connect")
    });
    let _peer = listener.accept().expect("accept");

    let mut g = c.benchmark_group("pool");
    g.bench_function("is_quiet (one MSG_PEEK)", |b| {
        b.iter(|| black_box(is_quiet(black_box(&stream))))
    });
    let pool = Pool::new(
        1,
        PoolConfig {
            max_idle_per_peer: 8,
            idle_timeout: Duration::from_secs(3600),
            ..PoolConfig::default()
        },
    );
    pool.put(PeerId::new(0), stream, Instant::now());
    g.bench_function("take + put (checked)", |b| {
        b.iter(|| {
            let now = Instant::now();
            let s = pool
                .take(PeerId::new(0), now)
                .expect("the idle connection is quiet");
            pool.put(PeerId::new(0), s, now);
        })
    });
    g.finish();
}

criterion_group!(benches, bench_pool);
criterion_main!(benches);

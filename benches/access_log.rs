//! Micro-benchmark of the access log's request-path cost: `ShardLog::record` of a typical entry
//! (format into the shard buffer, hand-off to the writer every 32 KiB, amortized), combined and
//! JSON, and `flush` with nothing buffered (the shard's 5 ms tick on an idle shard). The writer
//! writes to /dev/null, so the disk is not what is measured; the lines it did not take in time
//! (dropped, which makes `record` cheaper) are printed after each format.
//!
//! Run: `cargo bench --bench access_log -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use ringlb::access_log::{AccessLog, Entry};
use ringlb::config::{AccessFormat, AccessTarget, LogConfig};

fn bench_access_log(c: &mut Criterion) {
    let entry = Entry {
        client: "192.0.2.7:51234".parse().expect("address"),
        method: b"GET",
        target: b"/api/v1/items?page=2&sort=name",
        version: "HTTP/1.1",
        status: 200,
        body_bytes: 1234,
        referer: Some(b"https://example.com/items"),
        user_agent: Some(b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
        upstream: Some("api"),
        peer: Some("10.0.0.1:8080".parse().expect("address")),
        tries: 1,
        upstream_time: Some(Duration::from_micros(2_400)),
        total_time: Duration::from_micros(3_100),
    };
    let mut g = c.benchmark_group("access_log");
    for format in [AccessFormat::Combined, AccessFormat::Json] {
        let config = LogConfig {
            access: AccessTarget::File(PathBuf::from("/dev/null")),
            access_format: format,
            // Room for a whole sample's lines (~1000 buffers of 32 KiB).
            access_queue: 1024,
            ..LogConfig::default()
        };
        let log = AccessLog::start(&config)
            .expect("/dev/null opens")
            .expect("the access log is on");
        let shard = log.shard_log();
        g.bench_function(format!("record ({})", format.name()), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    shard.record(black_box(&entry));
                }
                let spent = start.elapsed();
                // Untimed: hand off the rest and give the writer time to catch up, as it does
                // between bursts in a proxy (on a busy two-core box it may otherwise not run
                // for longer than the queue lasts, and the timed loop would measure drops).
                shard.flush();
                std::thread::sleep(Duration::from_millis(1) + spent / 2);
                spent
            })
        });
        shard.flush();
        g.bench_function(format!("flush, empty ({})", format.name()), |b| {
            b.iter(|| black_box(&shard).flush())
        });
        drop(shard);
        // Lines the writer did not take in time (a writer thread kept off the CPU for longer
        // than the queue lasts) were dropped, as on a slow disk; the figure says how often.
        println!(
            "access_log ({}): {} lines dropped",
            format.name(),
            log.dropped()
        );
        log.shutdown();
    }
    g.finish();
}

criterion_group!(benches, bench_access_log);
criterion_main!(benches);

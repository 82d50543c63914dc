//! Micro-benchmarks of the HTTP/1.1 wire module: head parsing, head rewriting and the chunked
//! decoder — the per-request CPU cost ringlb adds on the hot path.
//!
//! Run: `cargo bench --bench http` (add `-- --quick` for a fast check).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringlb::config::Limits;
use ringlb::http::{
    parse_request, parse_response, rewrite_request, rewrite_response, ChunkedDecoder, ForwardInfo,
    Method, RequestHead, ResponseHead, Version,
};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

/// A typical browser navigation request (~400 bytes, Chrome-like).
const BROWSER_GET: &[u8] = b"GET /api/v1/products/12345?ref=home&sort=price HTTP/1.1\r\n\
Host: shop.example.com\r\n\
Connection: keep-alive\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Cookie: session=8f14e45fceea167a5a36dedd4bea2543; theme=dark\r\n\
Referer: https://shop.example.com/\r\n\
\r\n";

/// What `curl http://host/` sends.
const CURL_GET: &[u8] =
    b"GET / HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n";

/// A typical upstream response head.
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Server: app/1.4\r\n\
Date: Mon, 06 May 2024 12:00:00 GMT\r\n\
Content-Type: application/json; charset=utf-8\r\n\
Content-Length: 1543\r\n\
Cache-Control: private, max-age=0\r\n\
ETag: \"5f2b-1543\"\r\n\
Vary: Accept-Encoding\r\n\
Connection: keep-alive\r\n\
Keep-Alive: timeout=60\r\n\
\r\n";

fn forward_info() -> ForwardInfo {
    ForwardInfo {
        client_ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 42)),
        proto: "http",
    }
}

fn bench_requests(c: &mut Criterion) {
    let limits = Limits::default();
    let fwd = forward_info();
    for (name, raw) in [("browser", BROWSER_GET), ("curl", CURL_GET)] {
        // Baseline: httparse alone, no offsets, no framing decisions.
        c.bench_function(&format!("httparse_baseline/{name}"), |b| {
            b.iter(|| {
                let mut headers = [httparse::EMPTY_HEADER; ringlb::http::MAX_HEADERS];
                let mut req = httparse::Request::new(&mut headers);
                black_box(req.parse(black_box(raw)).is_ok())
            })
        });

        let mut head = RequestHead::default();
        c.bench_function(&format!("parse_request/{name}_{}B", raw.len()), |b| {
            b.iter(|| parse_request(black_box(raw), &limits, &mut head))
        });

        let mut head = RequestHead::default();
        parse_request(raw, &limits, &mut head).expect("benchmark request parses");
        let mut out = Vec::with_capacity(1024);
        c.bench_function(&format!("rewrite_request/{name}"), |b| {
            b.iter(|| {
                out.clear();
                rewrite_request(black_box(raw), &head, &fwd, &mut out);
                black_box(out.len())
            })
        });

        let mut head = RequestHead::default();
        let mut out = Vec::with_capacity(1024);
        c.bench_function(&format!("parse+rewrite_request/{name}"), |b| {
            b.iter(|| {
                out.clear();
                let _ = parse_request(black_box(raw), &limits, &mut head);
                rewrite_request(raw, &head, &fwd, &mut out);
                black_box(out.len())
            })
        });
    }
}

fn bench_response(c: &mut Criterion) {
    let mut head = ResponseHead::default();
    c.bench_function(&format!("parse_response/{}B", RESPONSE.len()), |b| {
        b.iter(|| parse_response(black_box(RESPONSE), Method::Get, &mut head))
    });

    let mut head = ResponseHead::default();
    let mut out = Vec::with_capacity(1024);
    c.bench_function("parse+rewrite_response", |b| {
        b.iter(|| {
            out.clear();
            let _ = parse_response(black_box(RESPONSE), Method::Get, &mut head);
            rewrite_response(RESPONSE, &head, Version::Http11, true, &mut out);
            black_box(out.len())
        })
    });
}

fn bench_chunked(c: &mut Criterion) {
    // 64 KiB of payload in 16 chunks of 4 KiB, then the last chunk.
    let mut body = Vec::new();
    for _ in 0..16 {
        body.extend_from_slice(b"1000\r\n");
        body.extend(std::iter::repeat_n(b'x', 4096));
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");

    let mut group = c.benchmark_group("chunked_decode");
    group.throughput(Throughput::Bytes(body.len() as u64));
    let mut ranges = Vec::with_capacity(32);
    group.bench_function("64KiB_in_4KiB_chunks/whole", |b| {
        b.iter(|| {
            ranges.clear();
            let mut dec = ChunkedDecoder::new();
            let res = dec.decode(black_box(&body), Some(&mut ranges));
            black_box(res)
        })
    });
    group.bench_function("64KiB_in_4KiB_chunks/16KiB_reads", |b| {
        b.iter(|| {
            let mut dec = ChunkedDecoder::new();
            for read in black_box(&body).chunks(16 * 1024) {
                ranges.clear();
                let _ = dec.decode(read, Some(&mut ranges));
            }
            black_box(dec.is_done())
        })
    });
    group.finish();
}

criterion_group!(benches, bench_requests, bench_response, bench_chunked);
criterion_main!(benches);

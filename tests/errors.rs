//! Requests the proxy answers itself: malformed or ambiguous framing (400), slow heads (408),
//! oversized bodies (413), request lines (414) and heads (431), unknown codings (501); and
//! slow clients (stalled uploads, readers that stop reading) cut off at `client_idle_ms`.
//!
//! Every such answer is `text/plain` and the client connection is closed after it: the proxy
//! cannot know where the next request would start.

mod common;

use common::*;
use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};

/// Sends `req` on a fresh connection and asserts the proxy's own error `status`, then close.
fn assert_rejected(proxy: &Proxy, req: &[u8], status: u16) {
    let mut c = proxy.client();
    c.send(req);
    let r = c
        .try_response(false)
        .unwrap_or_else(|e| panic!("request {}: {e}", show(req)));
    assert_eq!(
        r.status,
        status,
        "request {} got {}",
        show(req),
        show(&r.head)
    );
    r.assert_proxy_error(status);
    c.expect_closed();
}

#[test]
fn malformed_requests_get_400() {
    let b = Backend::start("a");
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let cases: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: t\r\nNoColonHere\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : t\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"\x01\x02garbage\r\n\r\n",
    ];
    for req in cases {
        assert_rejected(&proxy, req, 400);
    }
    assert_eq!(b.heads_seen(), 0, "nothing may reach the upstream");
    // The proxy still works.
    assert_eq!(proxy.client().roundtrip(&get("/")).body_str(), "a");
}

#[test]
fn content_length_with_transfer_encoding_gets_400() {
    let b = Backend::start("a");
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    assert_rejected(
        &proxy,
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    );
    assert_rejected(
        &proxy,
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        400,
    );
    assert_eq!(b.heads_seen(), 0);
}

#[test]
fn differing_content_lengths_get_400() {
    let b = Backend::start("a");
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    assert_rejected(
        &proxy,
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    );
    assert_rejected(
        &proxy,
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 6\r\n\r\nhello!",
        400,
    );
    assert_eq!(b.heads_seen(), 0);
}

#[test]
fn unknown_transfer_coding_gets_501() {
    let b = Backend::start("a");
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    assert_rejected(
        &proxy,
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
    );
    assert_rejected(
        &proxy,
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: x-custom\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        501,
    );
    assert_eq!(b.heads_seen(), 0);
}

/// `Transfer-Encoding: gzip` alone does not end in chunked: RFC 9112 §6.3 says the length
/// cannot be determined and the server MUST answer 400 and close; that MUST wins over the
/// 501 for a coding the proxy does not implement (which applies to `gzip, chunked` above).
#[test]
fn transfer_encoding_gzip_alone_gets_400() {
    let b = Backend::start("a");
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    assert_rejected(
        &proxy,
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nxxxx",
        400,
    );
    assert_eq!(b.heads_seen(), 0);
}

#[test]
fn transfer_encoding_not_ending_in_chunked_gets_400() {
    let b = Backend::start("a");
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    assert_rejected(
        &proxy,
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        400,
    );
    assert_eq!(b.heads_seen(), 0);
}

#[test]
fn bad_chunk_size_gets_400() {
    let b = Backend::start("a");
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    assert_rejected(
        &proxy,
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
    );
    assert_rejected(
        &proxy,
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
          fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        400,
    );
    assert_eq!(
        b.request_count(),
        0,
        "no complete request may reach the upstream"
    );
}

#[test]
fn body_over_max_body_bytes_gets_413() {
    let b = Backend::with_handler("a", |r| Reply::ok(format!("{} bytes", r.body_len)));
    let proxy = ProxyConfig::with_backends(&[&b])
        .limit("max_body_bytes", 1000)
        .start();
    // At the limit: fine.
    let mut c = proxy.client();
    let r = c.roundtrip(&post("/ok", &[b'x'; 1000]));
    assert_eq!((r.status, r.body_str().as_str()), (200, "1000 bytes"));
    // Over it, declared by Content-Length.
    assert_rejected(&proxy, &post("/big", &[b'x'; 2000]), 413);
    assert_eq!(b.request_count(), 1);
}

#[test]
fn chunked_body_over_max_body_bytes_gets_413() {
    let b = Backend::with_handler("a", |r| Reply::ok(format!("{} bytes", r.body_len)));
    let proxy = ProxyConfig::with_backends(&[&b])
        .limit("max_body_bytes", 1000)
        .start();
    let mut req = b"POST /big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        req.extend_from_slice(b"1f4\r\n");
        req.extend_from_slice(&[b'y'; 500]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    assert_rejected(&proxy, &req, 413);
    assert_eq!(
        b.request_count(),
        0,
        "the oversized body may not be delivered"
    );
}

#[test]
fn request_line_over_limit_gets_414() {
    let b = Backend::with_handler("a", |r| Reply::ok(format!("{}", r.target.len())));
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    // Under the default 8192-byte limit: forwarded intact.
    let path = format!("/{}", "p".repeat(7999));
    let r = proxy.client().roundtrip(&get(&path));
    assert_eq!((r.status, r.body_str().as_str()), (200, "8000"));
    assert_eq!(b.only_request().target, path);
    // Over it.
    let path = format!("/{}", "q".repeat(9000));
    assert_rejected(&proxy, &get(&path), 414);
    assert_eq!(b.heads_seen(), 1);
}

#[test]
fn head_over_max_header_bytes_gets_431() {
    let b = Backend::start("a");
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let head_with = |n: usize| {
        let mut s = String::from("GET / HTTP/1.1\r\nHost: t\r\n");
        for i in 0..n {
            s.push_str(&format!("X-Fill-{i:02}: {}\r\n", "v".repeat(1000)));
        }
        s.push_str("\r\n");
        s.into_bytes()
    };
    // ~10 KiB: under the default 16 KiB.
    let r = proxy.client().roundtrip(&head_with(10));
    assert_eq!(r.status, 200);
    assert_eq!(
        b.only_request().headers_named("x-fill-09"),
        ["v".repeat(1000)]
    );
    // ~20 KiB: over it.
    assert_rejected(&proxy, &head_with(20), 431);
    assert_eq!(b.heads_seen(), 1);
}

#[test]
fn configured_max_header_bytes_is_enforced() {
    let b = Backend::start("a");
    let proxy = ProxyConfig::with_backends(&[&b])
        .limit("max_header_bytes", 4096)
        .start();
    let head = |fill: usize| {
        format!(
            "GET / HTTP/1.1\r\nHost: t\r\nX-Fill: {}\r\n\r\n",
            "z".repeat(fill)
        )
        .into_bytes()
    };
    assert_eq!(proxy.client().roundtrip(&head(3000)).status, 200);
    assert_rejected(&proxy, &head(5000), 431);
    assert_eq!(b.heads_seen(), 1);
}

#[test]
fn more_than_100_headers_gets_431() {
    let b = Backend::with_handler("a", |r| Reply::ok(format!("{}", r.headers.len())));
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let head_with = |total: usize| {
        let mut s = String::from("GET / HTTP/1.1\r\nHost: t\r\n");
        for i in 1..total {
            s.push_str(&format!("X-H{i}: {i}\r\n"));
        }
        s.push_str("\r\n");
        s.into_bytes()
    };
    // Exactly 100 header fields (Host + 99): accepted and all forwarded.
    let r = proxy.client().roundtrip(&head_with(100));
    assert_eq!(r.status, 200);
    let req = b.only_request();
    assert_eq!(req.headers_named("x-h99"), ["99"]);
    let forwarded = req
        .headers
        .iter()
        .filter(|(n, _)| n.to_ascii_lowercase().starts_with("x-h"))
        .count();
    assert_eq!(forwarded, 99);
    // 101: rejected.
    assert_rejected(&proxy, &head_with(101), 431);
    assert_eq!(b.heads_seen(), 1);
}

#[test]
fn incomplete_head_times_out_with_408() {
    let b = Backend::start("a");
    let proxy = ProxyConfig::with_backends(&[&b])
        .timeout("request_header_ms", 300)
        .start();
    let t = Instant::now();
    let mut c = proxy.client();
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n");
    let r = c.response();
    let took = t.elapsed();
    r.assert_proxy_error(408);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "408 after {took:?} with request_header_ms = 300"
    );
    c.expect_closed();
    assert_eq!(b.heads_seen(), 0);
}

/// Slowloris proper: the head keeps trickling in; the limit is on the whole head, not per read.
#[test]
fn trickling_head_times_out_with_408() {
    let b = Backend::start("a");
    let proxy = ProxyConfig::with_backends(&[&b])
        .timeout("request_header_ms", 300)
        .start();
    let t = Instant::now();
    let mut c = proxy.client();
    let mut w = c.stream().try_clone().expect("clone stream");
    let writer = thread::spawn(move || {
        if w.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n").is_err() {
            return;
        }
        for i in 0..100 {
            thread::sleep(Duration::from_millis(50));
            if w.write_all(format!("X-Drip-{i}: x\r\n").as_bytes())
                .is_err()
            {
                return;
            }
        }
    });
    let r = c.response();
    let took = t.elapsed();
    r.assert_proxy_error(408);
    assert!(
        took < Duration::from_secs(3),
        "408 only after {took:?} although request_header_ms = 300"
    );
    c.expect_closed();
    writer.join().expect("writer thread");
    assert_eq!(b.heads_seen(), 0);
}

// ---------------------------------------------------------------------------------------------
// Slow clients: `client_idle_ms` bounds each read of a request body and each write to the
// client.

/// A request body that stops arriving: the connection is closed at about `client_idle_ms`
/// (300 ms; the bound is 5 ×), whether the body is kept whole before the first try (1000
/// bytes: the backend never sees the request) or streams (200 000 bytes, over
/// `retry_body_bytes`: the backend got the head but never a complete request).
#[test]
fn client_idle_ms_closes_a_stalled_upload() {
    let b = Backend::start("a");
    let proxy = ProxyConfig::with_backends(&[&b])
        .timeout("client_idle_ms", 300)
        .start();
    for (len, sent, heads) in [(1000usize, 10usize, 0usize), (200_000, 100_000, 1)] {
        let mut c = proxy.client();
        let t = Instant::now();
        c.send(
            format!("POST /up HTTP/1.1\r\nHost: test\r\nContent-Length: {len}\r\n\r\n").as_bytes(),
        );
        c.send(&pattern_bytes(sent));
        let got = c.try_response(false);
        let took = t.elapsed();
        match got {
            Err(ReadErr::Eof) => {}
            Err(ReadErr::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("{sent} of {len} bytes: expected the connection closed, got {other:?}"),
        }
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
            "{sent} of {len} bytes: closed after {took:?} (client_idle_ms = 300)"
        );
        assert_eq!(b.heads_seen(), heads, "{sent} of {len} bytes");
    }
    assert_eq!(
        b.request_count(),
        0,
        "an incomplete body reached the backend as a request"
    );
}

/// The TCP state (`/proc/net/tcp` hex code, `01` = established) of the IPv4 socket from
/// `local` to `remote`, if it still exists.
fn tcp_state(local: std::net::SocketAddr, remote: std::net::SocketAddr) -> Option<String> {
    let hex = |a: std::net::SocketAddr| match a {
        std::net::SocketAddr::V4(v4) => {
            format!(
                "{:08X}:{:04X}",
                u32::from_le_bytes(v4.ip().octets()),
                v4.port()
            )
        }
        std::net::SocketAddr::V6(_) => panic!("IPv4 only"),
    };
    let (l, r) = (hex(local), hex(remote));
    let text = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 3 && f[1] == l && f[2] == r).then(|| f[3].to_string())
    })
}

/// A client that does not read a large response: once its buffers are full the proxy's write
/// waits, and at about `client_idle_ms` (300 ms; the bound is 5 ×) the proxy gives up and
/// closes its end. When the client finally reads, the body is cut short.
#[test]
fn client_idle_ms_closes_a_slow_reader() {
    const LEN: u64 = 64 << 20; // far more than the socket buffers on both sides hold
    let big = Backend::with_handler("big", |_| Reply::pattern(LEN, None));
    let proxy = ProxyConfig::with_backends(&[&big])
        .timeout("client_idle_ms", 300)
        .start();
    let mut c = proxy.client();
    let me = c.stream().local_addr().expect("local addr");
    let t = Instant::now();
    c.send(&get("/big"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while tcp_state(proxy.addr, me).as_deref() == Some("01") {
        assert!(
            Instant::now() < deadline,
            "the proxy still writes to a client that reads nothing after 10 s"
        );
        thread::sleep(Duration::from_millis(5));
    }
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "the proxy closed its end after {took:?} (client_idle_ms = 300)"
    );
    let mut n = 0u64;
    match c.response_streamed(false, &mut |d: &[u8]| n += d.len() as u64) {
        Err(ReadErr::Truncated(_)) => {}
        other => panic!("expected a cut-off body, got {other:?} after {n} bytes"),
    }
    assert!(n < LEN, "{n} bytes");
}

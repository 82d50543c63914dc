//! Peer selection and upstream failures: round robin, smooth weighted round robin, backups,
//! refused peers, 502/504, routing.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// Sends `n` GETs on one connection and returns the response bodies (each backend answers
/// with its name).
fn names(proxy: &Proxy, n: usize) -> Vec<String> {
    let mut c = proxy.client();
    (0..n)
        .map(|i| {
            let r = c.roundtrip(&get(&format!("/{i}")));
            assert_eq!(r.status, 200, "request {i}: {}", show(&r.head));
            r.body_str()
        })
        .collect()
}

#[test]
fn round_robin_exact_order_over_three_peers() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let proxy = ProxyConfig::new()
        .upstream(
            "app",
            "round_robin",
            &[peer(a.addr()), peer(b.addr()), peer(c.addr())],
        )
        .start();
    assert_eq!(names(&proxy, 9).concat(), "abcabcabc");
    assert_eq!(
        (a.request_count(), b.request_count(), c.request_count()),
        (3, 3, 3)
    );
}

#[test]
fn round_robin_ignores_weights_and_new_connections_continue_rotation() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let proxy = ProxyConfig::new()
        .upstream(
            "app",
            "round_robin",
            &[peer(a.addr()).weight(5), peer(b.addr())],
        )
        .start();
    // One shard: the rotation is per shard, not per client connection.
    let mut seq = String::new();
    for _ in 0..3 {
        seq.push_str(&names(&proxy, 2).concat());
    }
    assert_eq!(seq, "ababab");
}

#[test]
fn smooth_weighted_exact_order_5_1_1() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let proxy = ProxyConfig::new()
        .upstream(
            "app",
            "smooth_weighted",
            &[
                peer(a.addr()).weight(5),
                peer(b.addr()).weight(1),
                peer(c.addr()).weight(1),
            ],
        )
        .start();
    assert_eq!(names(&proxy, 14).concat(), "aabacaaaabacaa");
    assert_eq!(
        (a.request_count(), b.request_count(), c.request_count()),
        (10, 2, 2)
    );
}

#[test]
fn backup_peer_gets_no_traffic_while_primaries_are_up() {
    let (a, b, spare) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("spare"),
    );
    let proxy = ProxyConfig::new()
        .upstream(
            "app",
            "round_robin",
            &[peer(a.addr()), peer(spare.addr()).backup(), peer(b.addr())],
        )
        .start();
    let got = names(&proxy, 6);
    assert!(got.iter().all(|n| n == "a" || n == "b"), "{got:?}");
    assert_eq!(spare.accepts(), 0);
    assert!(a.request_count() >= 2 && b.request_count() >= 2, "{got:?}");
}

#[test]
fn refusing_peer_is_skipped() {
    let (a, c) = (Backend::start("a"), Backend::start("c"));
    let dead = refusing_addr();
    let proxy = ProxyConfig::new()
        .upstream(
            "app",
            "round_robin",
            &[peer(a.addr()), peer(dead), peer(c.addr())],
        )
        .start();
    let got = names(&proxy, 12);
    assert!(
        got.iter().all(|n| n == "a" || n == "c"),
        "responses came from {got:?}"
    );
    assert_eq!(a.request_count() + c.request_count(), 12);
    assert!(a.request_count() >= 4 && c.request_count() >= 4, "{got:?}");
}

#[test]
fn all_peers_down_gives_502() {
    let proxy = ProxyConfig::new()
        .upstream(
            "app",
            "round_robin",
            &[peer(refusing_addr()), peer(refusing_addr())],
        )
        .start();
    let mut c = proxy.client();
    let r = c.roundtrip(&get("/"));
    r.assert_proxy_error(502);
    // A second request gets the same answer (the proxy did not crash or hang).
    let mut c = proxy.client();
    c.roundtrip(&get("/again")).assert_proxy_error(502);
}

#[test]
fn slow_peer_beyond_upstream_read_timeout_gives_504() {
    let b = Backend::with_handler("slow", |_| Reply::ok("late").delay(Duration::from_secs(2)));
    let proxy = ProxyConfig::with_backends(&[&b])
        .timeout("upstream_read_ms", 300)
        .start();
    let mut c = proxy.client();
    let t = Instant::now();
    let r = c.roundtrip(&get("/"));
    let took = t.elapsed();
    r.assert_proxy_error(504);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1900),
        "504 after {took:?} (upstream_read_ms = 300, peer answers after 2 s)"
    );
}

#[test]
fn garbage_status_line_gives_502() {
    let b = Backend::with_handler("bad", |_| Reply::raw(&b"NONSENSE 42\r\n\r\n"[..]));
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let mut c = proxy.client();
    c.roundtrip(&get("/")).assert_proxy_error(502);
    let mut c = proxy.client();
    c.roundtrip(&post("/p", b"data")).assert_proxy_error(502);
}

#[test]
fn routing_by_host_path_prefix_and_header() {
    let api = Backend::start("api");
    let stat = Backend::start("static");
    let canary = Backend::start("canary");
    let dflt = Backend::start("default");
    let proxy = ProxyConfig::new()
        .upstream("api", "round_robin", &[peer(api.addr())])
        .upstream("static", "round_robin", &[peer(stat.addr())])
        .upstream("canary", "round_robin", &[peer(canary.addr())])
        .upstream("default", "round_robin", &[peer(dflt.addr())])
        .route(&["host = \"api.example.com\""], "api")
        .route(&["path_prefix = \"/static/\""], "static")
        .route(&["header = \"X-Canary: true\""], "canary")
        .route(&[], "default")
        .start();
    let cases: &[(&str, &str)] = &[
        (
            "GET /v1/users HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
            "api",
        ),
        (
            "GET /v1/users HTTP/1.1\r\nHost: API.Example.COM:8080\r\n\r\n",
            "api",
        ),
        // First match wins: the host route comes before the path route.
        (
            "GET /static/app.js HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
            "api",
        ),
        (
            "GET /static/app.js HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
            "static",
        ),
        (
            "GET /staticky HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
            "default",
        ),
        (
            "GET / HTTP/1.1\r\nHost: www.example.com\r\nX-Canary: true\r\n\r\n",
            "canary",
        ),
        (
            "GET / HTTP/1.1\r\nHost: www.example.com\r\nx-canary: true\r\n\r\n",
            "canary",
        ),
        (
            "GET / HTTP/1.1\r\nHost: www.example.com\r\nX-Canary: false\r\n\r\n",
            "default",
        ),
        ("GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n", "default"),
    ];
    let mut c = proxy.client();
    for (req, want) in cases {
        let r = c.roundtrip(req.as_bytes());
        assert_eq!(r.status, 200, "{req:?}");
        assert_eq!(r.body_str(), *want, "routed {req:?}");
    }
    assert_eq!(api.request_count(), 3);
    assert_eq!(stat.request_count(), 1);
    assert_eq!(canary.request_count(), 2);
    assert_eq!(dflt.request_count(), 3);
}

#[test]
fn backup_peer_serves_when_the_only_primary_refuses() {
    let spare = Backend::start("spare");
    let proxy = ProxyConfig::new()
        .upstream(
            "app",
            "round_robin",
            &[peer(refusing_addr()), peer(spare.addr()).backup()],
        )
        .start();
    assert_eq!(names(&proxy, 3).concat(), "sparesparespare");
}

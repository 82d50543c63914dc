//! Forwarding end to end: methods and bodies, keep-alive and pooling, pipelining, bodiless
//! responses, 100-continue, HTTP/1.0, trailers, hop-by-hop headers, X-Forwarded-For.

mod common;

use common::*;
use std::time::Duration;

/// A handler that echoes `METHOD target` and the request body.
fn echo(r: &Request) -> Reply {
    let mut body = format!("{} {}\n", r.method, r.target).into_bytes();
    body.extend_from_slice(&r.body);
    Reply::ok(body)
}

#[test]
fn get_round_trip_forwards_exact_head() {
    let b = Backend::with_handler("a", |_| Reply::ok("hello from a").header("X-Origin", "a"));
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let mut c = proxy.client();
    let r = c.roundtrip(
        b"GET /some/path?x=1&y=2 HTTP/1.1\r\nHost: example.test\r\nUser-Agent: t/1\r\nAccept: */*\r\n\r\n",
    );
    assert_eq!(r.version, "HTTP/1.1");
    assert_eq!(r.status, 200);
    assert_eq!(r.reason, "OK");
    assert_eq!(r.body, b"hello from a");
    assert_eq!(r.framing, Framing::Length);
    assert_eq!(r.header("content-length"), Some("12"));
    assert_eq!(r.header("x-origin"), Some("a"));

    let req = b.only_request();
    assert_eq!(req.method, "GET");
    assert_eq!(req.target, "/some/path?x=1&y=2");
    assert_eq!(req.version, "HTTP/1.1");
    assert!(req.body.is_empty());
    assert_eq!(
        header_set(&req.headers),
        expect_set(&[
            ("host", "example.test"),
            ("user-agent", "t/1"),
            ("accept", "*/*"),
            ("x-forwarded-for", "127.0.0.1"),
            ("x-forwarded-proto", "http"),
            ("via", "1.1 ringlb"),
            ("connection", "keep-alive"),
        ]),
        "upstream head was {}",
        show(&req.head)
    );
    // The client's end-to-end headers keep their relative order.
    let order: Vec<&str> = req
        .headers
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| ["host", "user-agent", "accept"].contains(&n.to_ascii_lowercase().as_str()))
        .collect();
    assert_eq!(order, ["Host", "User-Agent", "Accept"]);
    assert!(b.errors().is_empty(), "{:?}", b.errors());
}

#[test]
fn any_method_is_forwarded_verbatim() {
    let b = Backend::with_handler("a", echo);
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let mut c = proxy.client();
    for m in ["PUT", "DELETE", "OPTIONS", "PATCH", "PURGE"] {
        let r = c.roundtrip(format!("{m} /m HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        assert_eq!(r.status, 200, "{m}");
        assert_eq!(r.body_str(), format!("{m} /m\n"));
    }
    let methods: Vec<String> = b.requests().into_iter().map(|r| r.method).collect();
    assert_eq!(methods, ["PUT", "DELETE", "OPTIONS", "PATCH", "PURGE"]);
}

#[test]
fn post_content_length_round_trip() {
    let b = Backend::with_handler("a", echo);
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let mut c = proxy.client();
    let r = c.roundtrip(
        b"POST /submit HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "POST /submit\nhello world");
    let req = b.only_request();
    assert_eq!(req.body, b"hello world");
    assert!(!req.chunked);
    assert_eq!(req.headers_named("content-length"), ["11"]);
    assert!(req.headers_named("transfer-encoding").is_empty());
    assert_eq!(req.header("content-type"), Some("text/plain"));
}

#[test]
fn post_chunked_round_trip_keeps_trailers() {
    let b = Backend::with_handler("a", echo);
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let mut c = proxy.client();
    let r = c.roundtrip(
        b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "POST /c\nhello world");
    let req = b.only_request();
    assert!(req.chunked, "upstream head: {}", show(&req.head));
    assert_eq!(req.body, b"hello world");
    assert_eq!(req.headers_named("transfer-encoding"), ["chunked"]);
    assert!(req.headers_named("content-length").is_empty());
    assert_eq!(req.trailers, [("X-Trailer".to_string(), "yes".to_string())]);

    // The connection is still usable afterwards.
    let r = c.roundtrip(&get("/after"));
    assert_eq!(r.body_str(), "GET /after\n");
}

#[test]
fn chunk_extensions_are_accepted() {
    let b = Backend::with_handler("a", echo);
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let mut c = proxy.client();
    let r = c.roundtrip(
        b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
          3;name=value\r\nabc\r\n0\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "POST /x\nabc");
}

#[test]
fn ten_mib_response_arrives_intact() {
    let data = pattern_bytes(10 << 20);
    let want = sha256_hex(&data);
    let b = Backend::with_handler("a", move |r| {
        if r.path() == "/chunked" {
            let chunks: Vec<&[u8]> = data.chunks(100_000).collect();
            Reply::chunked(&chunks, &[])
        } else {
            Reply::ok(data.clone())
        }
    });
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let mut c = proxy.client();
    let r = c.roundtrip(&get("/big"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("10485760"));
    assert_eq!(r.body.len(), 10 << 20);
    assert_eq!(sha256_hex(&r.body), want);

    let r = c.roundtrip(&get("/chunked"));
    assert_eq!(r.status, 200);
    assert_eq!(r.framing, Framing::Chunked);
    assert_eq!(r.body.len(), 10 << 20);
    assert_eq!(sha256_hex(&r.body), want);
}

/// A proxy in front of `b` with `[server] splice = <on>` and an admin endpoint.
fn splicing_proxy(b: &Backend, on: bool) -> Proxy {
    let toml = ProxyConfig::with_backends(&[b])
        .toml()
        .replacen("[server]\n", &format!("[server]\nsplice = {on}\n"), 1)
        .replacen("admin = \"\"", "admin = \"127.0.0.1:0\"", 1);
    assert!(toml.contains("splice = "), "{toml}");
    Proxy::start(&toml)
}

/// `ringlb_upstream_spliced_bytes_total` of the only upstream, from the admin endpoint.
fn spliced_bytes(proxy: &Proxy) -> f64 {
    let admin = proxy.server().admin_addr().expect("admin endpoint");
    let labels = [("upstream", "app")];
    metric_sample(
        &scrape_metrics(admin),
        "ringlb_upstream_spliced_bytes_total",
        &labels,
    )
}

#[test]
fn spliced_bodies_arrive_intact_on_a_reused_upstream_connection() {
    let data = pattern_bytes(1 << 20);
    let want = sha256_hex(&data);
    let b = Backend::with_handler("a", move |r| match r.path() {
        "/small" => Reply::ok("tiny"),
        _ => Reply::ok(data.clone()),
    });
    let proxy = splicing_proxy(&b, true);
    let mut c = proxy.client();
    for path in ["/big", "/small", "/big"] {
        let r = c.roundtrip(&get(path));
        assert_eq!(r.status, 200);
        if path == "/small" {
            assert_eq!(r.body, b"tiny");
        } else {
            assert_eq!(r.body.len(), 1 << 20);
            assert_eq!(sha256_hex(&r.body), want);
        }
    }
    // Every response read exactly its body: one upstream connection served them all.
    assert_eq!(b.request_count(), 3);
    assert_eq!(b.accepts(), 1, "the upstream connection was reused");
    // All but what came with each head went through the pipe.
    let spliced = spliced_bytes(&proxy);
    assert!(
        spliced >= (2 * ((1 << 20) - (64 << 10))) as f64 && spliced <= (2 << 20) as f64,
        "{spliced}"
    );
    // Off (the default), nothing is.
    let plain = splicing_proxy(&b, false);
    let r = plain.client().roundtrip(&get("/big"));
    assert_eq!(sha256_hex(&r.body), want);
    assert_eq!(spliced_bytes(&plain), 0.0);
}

#[test]
fn a_spliced_body_the_upstream_cuts_short_ends_the_client_connection() {
    let data = pattern_bytes(1 << 20);
    let mut raw = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 2 << 20).into_bytes();
    raw.extend_from_slice(&data);
    let b = Backend::with_handler("a", move |_| Reply::raw(raw.clone()).close());
    let proxy = splicing_proxy(&b, true);
    let mut c = proxy.client();
    c.send(&get("/cut"));
    let mut got = Vec::new();
    use std::io::Read;
    let end = c.stream().read_to_end(&mut got);
    assert!(end.is_ok(), "{end:?}");
    let start = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got[..start])
    );
    assert_eq!(
        got.len() - start,
        1 << 20,
        "the bytes the upstream sent, then the close"
    );
    assert_eq!(&got[start..], &data[..]);
    assert!(
        spliced_bytes(&proxy) > 0.0,
        "the body went through the pipe"
    );
}

#[test]
fn one_mib_upload_arrives_intact() {
    let data = pattern_bytes(1 << 20);
    let want = sha256_hex(&data);
    let b = Backend::with_handler("a", |r| Reply::ok(sha256_hex(&r.body)));
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let mut c = proxy.client();

    // Content-Length.
    let r = c.roundtrip(&post("/up", &data));
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), want);

    // Chunked, in odd-sized chunks, with a trailer.
    let mut req = b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for piece in data.chunks(65_537) {
        req.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        req.extend_from_slice(piece);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\nX-Sum: done\r\n\r\n");
    let r = c.roundtrip(&req);
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), want);

    let reqs = b.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(sha256_hex(&reqs[0].body), want);
    assert!(!reqs[0].chunked);
    assert_eq!(sha256_hex(&reqs[1].body), want);
    assert!(reqs[1].chunked);
    assert_eq!(
        reqs[1].trailers,
        [("X-Sum".to_string(), "done".to_string())]
    );
}

/// 1000 sequential requests on one client connection, one shard: one upstream connection.
#[test]
fn thousand_requests_reuse_one_upstream_connection() {
    let b = Backend::with_handler("a", |r| Reply::ok(r.target.clone()));
    let proxy = ProxyConfig::with_backends(&[&b]).workers(1).start();
    let mut c = proxy.client();
    for i in 0..1000 {
        let path = format!("/r{i}");
        let r = c.roundtrip(&get(&path));
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.body_str(), path);
    }
    assert_eq!(b.request_count(), 1000);
    assert_eq!(b.accepts(), 1, "upstream connections opened");
}

/// Two shards, four client connections one after another (250 requests each): at most one
/// upstream connection per shard.
#[test]
fn pooled_connections_at_most_one_per_shard_with_two_workers() {
    let b = Backend::with_handler("a", |r| Reply::ok(r.target.clone()));
    let proxy = ProxyConfig::with_backends(&[&b]).workers(2).start();
    for k in 0..4 {
        let mut c = proxy.client();
        for i in 0..250 {
            let path = format!("/c{k}/r{i}");
            let r = c.roundtrip(&get(&path));
            assert_eq!(r.status, 200);
            assert_eq!(r.body_str(), path);
        }
    }
    assert_eq!(b.request_count(), 1000);
    let accepts = b.accepts();
    assert!(
        (1..=2).contains(&accepts),
        "upstream connections opened: {accepts} (2 shards)"
    );
}

#[test]
fn pipelined_requests_answered_in_order() {
    let b = Backend::with_handler("a", |r| {
        // The first one is the slowest, so answering out of order would show.
        let delay = if r.path() == "/one" { 200 } else { 0 };
        Reply::ok(format!("{}:{}", r.path(), r.body_str())).delay(Duration::from_millis(delay))
    });
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let mut c = proxy.client();
    c.send(
        b"GET /one HTTP/1.1\r\nHost: t\r\n\r\n\
          POST /two HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nxyz\
          GET /three HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    let bodies: Vec<String> = (0..3).map(|_| c.response().body_str()).collect();
    assert_eq!(bodies, ["/one:", "/two:xyz", "/three:"]);
    let paths: Vec<String> = b.requests().iter().map(|r| r.path().to_string()).collect();
    assert_eq!(paths, ["/one", "/two", "/three"]);
    // Still open for a fourth.
    assert_eq!(c.roundtrip(&get("/four")).body_str(), "/four:");
}

#[test]
fn head_response_has_no_body_and_connection_continues() {
    let b = Backend::with_handler("a", |r| Reply::ok(format!("body of {}", r.path())));
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let mut c = proxy.client();
    let r = c.roundtrip(b"HEAD /doc HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("12"));
    assert!(r.body.is_empty());
    // If the proxy had sent body bytes after the HEAD response, they would be parsed as the
    // start of this response and fail.
    let r = c.roundtrip(&get("/next"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "body of /next");
    let methods: Vec<String> = b.requests().into_iter().map(|r| r.method).collect();
    assert_eq!(methods, ["HEAD", "GET"]);
}

#[test]
fn no_content_and_not_modified_have_no_body() {
    let b = Backend::with_handler("a", |r| match r.path() {
        "/204" => Reply::no_body(204).header("X-Kind", "204"),
        "/304" => Reply::no_body(304)
            .header("ETag", "\"v1\"")
            .header("Content-Length", "1234"),
        _ => Reply::ok("plain"),
    });
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let mut c = proxy.client();
    let r = c.roundtrip(&get("/204"));
    assert_eq!(r.status, 204);
    assert_eq!(r.header("x-kind"), Some("204"));
    let r = c.roundtrip(&get("/plain"));
    assert_eq!((r.status, r.body_str().as_str()), (200, "plain"));
    let r = c.roundtrip(b"GET /304 HTTP/1.1\r\nHost: t\r\nIf-None-Match: \"v1\"\r\n\r\n");
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag"), Some("\"v1\""));
    let r = c.roundtrip(&get("/plain"));
    assert_eq!((r.status, r.body_str().as_str()), (200, "plain"));
    assert_eq!(b.accepts(), 1);
}

#[test]
fn expect_100_continue_on_a_kept_body_is_answered_by_ringlb() {
    // The body fits `retry_body_bytes`, so ringlb asks for it itself and the upstream gets the
    // whole request without the expectation.
    let b = Backend::with_handler("a", echo);
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let mut c = proxy.client();
    c.send(
        b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n",
    );
    let interim = c.response();
    assert_eq!(interim.version, "HTTP/1.1");
    assert_eq!(interim.status, 100, "head: {}", show(&interim.head));
    c.send(b"hello world");
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "POST /upload\nhello world");
    let req = b.only_request();
    assert_eq!(req.header("expect"), None);
    assert_eq!(req.body, b"hello world");
}

#[test]
fn interim_response_before_final_is_relayed() {
    let b = Backend::with_handler("a", |_| {
        Reply::ok("final").interim(103, &[("Link", "</style.css>; rel=preload")])
    });
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let mut c = proxy.client();
    c.send(&get("/"));
    let early = c.response();
    assert_eq!(early.status, 103);
    assert_eq!(early.header("link"), Some("</style.css>; rel=preload"));
    let r = c.response();
    assert_eq!((r.status, r.body_str().as_str()), (200, "final"));
}

#[test]
fn http10_without_keep_alive_is_closed_after_response() {
    let b = Backend::start("a");
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let mut c = proxy.client();
    let r = c.roundtrip(b"GET /old HTTP/1.0\r\nHost: t\r\n\r\n");
    assert_eq!(r.version, "HTTP/1.1");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "a");
    c.expect_closed();
    // Upstream requests are always HTTP/1.1 keep-alive.
    let req = b.only_request();
    assert_eq!(req.version, "HTTP/1.1");
    assert_eq!(req.headers_named("connection"), ["keep-alive"]);
}

#[test]
fn http10_with_keep_alive_is_kept() {
    let b = Backend::with_handler("a", |r| Reply::ok(r.target.clone()));
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let mut c = proxy.client();
    let req = b"GET /first HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n";
    let r = c.roundtrip(req);
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "/first");
    assert!(
        has_token(&r.headers, "connection", "keep-alive"),
        "an HTTP/1.0 client needs `Connection: keep-alive` to keep the connection: {}",
        show(&r.head)
    );
    let r = c.roundtrip(b"GET /second HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "/second");
    // Without keep-alive this time: closed after.
    let r = c.roundtrip(b"GET /third HTTP/1.0\r\nHost: t\r\n\r\n");
    assert_eq!(r.body_str(), "/third");
    c.expect_closed();
}

/// Beyond the list: an HTTP/1.0 client cannot decode chunked (RFC 9112 §7.1), so a
/// chunked upstream body reaches it unchunked.
#[test]
fn http10_client_gets_chunked_upstream_body_unchunked() {
    let b = Backend::with_handler("a", |_| Reply::chunked(&[b"hello ", b"world"], &[]));
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let mut c = proxy.client();
    let r = c.roundtrip(b"GET / HTTP/1.0\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_ne!(
        r.framing,
        Framing::Chunked,
        "chunked sent to HTTP/1.0: {}",
        show(&r.head)
    );
    assert_eq!(r.body_str(), "hello world");
    c.expect_closed();
}

/// Beyond the list: a proxy must not forward 1xx responses to an HTTP/1.0 client
/// (RFC 9110 §15.2).
#[test]
fn http10_client_gets_no_interim_response() {
    let b = Backend::with_handler("a", |_| Reply::ok("final").interim(103, &[("Link", "<a>")]));
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let mut c = proxy.client();
    let r = c.roundtrip(b"GET / HTTP/1.0\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 200, "first response: {}", show(&r.head));
    assert_eq!(r.body_str(), "final");
    c.expect_closed();
}

#[test]
fn chunked_response_with_trailers_relayed() {
    let b = Backend::with_handler("a", |_| {
        Reply::chunked(
            &[b"hello ", b"chunked ", b"world"],
            &[("X-Checksum", "abc123")],
        )
        .header("Trailer", "X-Checksum")
    });
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let mut c = proxy.client();
    let r = c.roundtrip(b"GET / HTTP/1.1\r\nHost: t\r\nTE: trailers\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.framing, Framing::Chunked);
    assert_eq!(r.headers_named("transfer-encoding"), ["chunked"]);
    assert!(r.headers_named("content-length").is_empty());
    assert_eq!(r.body_str(), "hello chunked world");
    assert_eq!(
        r.trailers,
        [("X-Checksum".to_string(), "abc123".to_string())]
    );
    // Next request on the same connection.
    let r = c.roundtrip(&get("/again"));
    assert_eq!(r.body_str(), "hello chunked world");
}

#[test]
fn hop_by_hop_request_headers_removed_keep_alive_variant() {
    let b = Backend::start("a");
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let mut c = proxy.client();
    let r = c.roundtrip(
        b"GET /hop HTTP/1.1\r\nHost: t\r\nConnection: X-Secret, Keep-Alive\r\nX-Secret: 1\r\n\
          Keep-Alive: timeout=5\r\nUpgrade: foo\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n\
          X-Kept: yes\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let req = b.only_request();
    assert_eq!(
        header_set(&req.headers),
        expect_set(&[
            ("host", "t"),
            ("x-kept", "yes"),
            ("x-forwarded-for", "127.0.0.1"),
            ("x-forwarded-proto", "http"),
            ("via", "1.1 ringlb"),
            ("connection", "keep-alive"),
        ]),
        "upstream head was {}",
        show(&req.head)
    );
    // The client connection stays open.
    assert_eq!(c.roundtrip(&get("/again")).status, 200);
}

#[test]
fn hop_by_hop_request_headers_removed_close_variant() {
    let b = Backend::start("a");
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let mut c = proxy.client();
    let r = c.roundtrip(
        b"GET /hop HTTP/1.1\r\nHost: t\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\n\
          Keep-Alive: 5\r\nUpgrade: foo\r\nX-Kept: yes\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "a");
    c.expect_closed();
    let req = b.only_request();
    assert_eq!(
        header_set(&req.headers),
        expect_set(&[
            ("host", "t"),
            ("x-kept", "yes"),
            ("x-forwarded-for", "127.0.0.1"),
            ("x-forwarded-proto", "http"),
            ("via", "1.1 ringlb"),
            ("connection", "keep-alive"),
        ]),
        "upstream head was {}",
        show(&req.head)
    );
}

#[test]
fn hop_by_hop_response_headers_removed() {
    let b = Backend::with_handler("a", |_| {
        Reply::ok("resp")
            .header("Connection", "X-Backend-Secret")
            .header("X-Backend-Secret", "1")
            .header("Keep-Alive", "timeout=5")
            .header("Proxy-Connection", "keep-alive")
            .header("Upgrade", "foo")
            .header("X-Kept", "yes")
    });
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let mut c = proxy.client();
    let r = c.roundtrip(&get("/"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "resp");
    // The proxy may add its own `Connection: keep-alive` and a Via; nothing else may remain.
    for v in r.headers_named("connection") {
        assert!(v.eq_ignore_ascii_case("keep-alive"), "Connection: {v}");
    }
    let rest: Vec<(String, String)> = header_set(&r.headers)
        .into_iter()
        .filter(|(n, _)| n != "connection" && n != "via")
        .collect();
    assert_eq!(
        rest,
        expect_set(&[("content-length", "4"), ("x-kept", "yes")]),
        "client head was {}",
        show(&r.head)
    );
    // The upstream connection is reused despite its odd Connection header.
    assert_eq!(c.roundtrip(&get("/")).body_str(), "resp");
    assert_eq!(b.accepts(), 1);
}

#[test]
fn x_forwarded_for_is_appended() {
    let b = Backend::start("a");
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let mut c = proxy.client();
    let r = c.roundtrip(b"GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n");
    assert_eq!(r.status, 200);
    let req = b.only_request();
    assert_eq!(
        req.headers_named("x-forwarded-for"),
        ["203.0.113.7, 127.0.0.1"],
        "upstream head was {}",
        show(&req.head)
    );
    assert_eq!(req.headers_named("x-forwarded-proto"), ["http"]);
    assert_eq!(req.headers_named("via"), ["1.1 ringlb"]);
    assert_eq!(req.headers_named("host"), ["t"]);
}

#[test]
fn until_close_response_then_client_connection_closed() {
    let b = Backend::with_handler("a", |_| Reply::until_close("streamed until the end"));
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let mut c = proxy.client();
    let r = c.roundtrip(&get("/"));
    assert_eq!(r.status, 200);
    assert_eq!(r.framing, Framing::UntilClose, "head {}", show(&r.head));
    assert_eq!(r.body_str(), "streamed until the end");
    // `framing == UntilClose` means the read ended with the close.
}

/// Beyond the list: an idle keep-alive client connection is closed (quietly) after
/// `client_idle_ms`.
#[test]
fn idle_client_connection_closed_after_client_idle_ms() {
    let b = Backend::start("a");
    let proxy = ProxyConfig::with_backends(&[&b])
        .timeout("client_idle_ms", 300)
        .start();
    let mut c = proxy.client();
    assert_eq!(c.roundtrip(&get("/")).body_str(), "a");
    let t = std::time::Instant::now();
    assert!(
        c.closes_within(Duration::from_secs(5)),
        "idle connection still open 5 s after the response (client_idle_ms = 300)"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "closed after {:?}",
        t.elapsed()
    );
}

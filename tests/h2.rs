//! HTTP/2 towards clients: prior-knowledge h2c on the cleartext listener, each stream one
//! request through the HTTP/1.1 request path, the translation rules, flow control, GOAWAY,
//! RST_STREAM and the abuse limits. The client is the `h2` crate's (on a tokio runtime in the
//! test thread); the backends are the suite's HTTP/1.1 ones.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use h2::client::SendRequest;
use http::{Request, StatusCode};
use tokio::net::TcpStream;

/// The TOML of `cfg` with `[server] h2 = { <h2> }`.
fn with_h2(cfg: &ProxyConfig, h2: &str) -> String {
    cfg.toml()
        .replacen("[server]\n", &format!("[server]\nh2 = {{ {h2} }}\n"), 1)
}

/// Runs `f` on a fresh current-thread tokio runtime.
fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// An h2c connection with prior knowledge; the connection task runs in the background.
async fn connect(addr: SocketAddr) -> SendRequest<Bytes> {
    connect_with(addr, h2::client::Builder::new()).await
}

async fn connect_with(addr: SocketAddr, builder: h2::client::Builder) -> SendRequest<Bytes> {
    connect_watched(addr, builder).await.0
}

/// An h2c connection whose connection task's end (its error, e.g. a GOAWAY) can be awaited.
async fn connect_watched(
    addr: SocketAddr,
    builder: h2::client::Builder,
) -> (
    SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    let (send, conn) = builder.handshake(tcp).await.expect("h2 handshake");
    (send, tokio::spawn(conn))
}

/// A GET for `path` with `authority` as `:authority`.
fn get(path: &str) -> Request<()> {
    Request::get(format!("http://example.test{path}"))
        .body(())
        .expect("request")
}

/// Sends `req` with `body` (none when empty) and reads the whole response.
async fn roundtrip(
    send: &mut SendRequest<Bytes>,
    req: Request<()>,
    body: &[u8],
) -> (http::response::Parts, Vec<u8>, Option<http::HeaderMap>) {
    let mut send = send.clone().ready().await.expect("ready");
    let (resp, mut stream) = send.send_request(req, body.is_empty()).expect("send");
    if !body.is_empty() {
        stream
            .send_data(Bytes::copy_from_slice(body), true)
            .expect("send body");
    }
    let resp = tokio::time::timeout(IO_TIMEOUT, resp)
        .await
        .expect("response in time")
        .expect("response");
    let (parts, mut recv) = resp.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.expect("body chunk");
        let _ = recv.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = recv.trailers().await.expect("trailers");
    (parts, data, trailers)
}

#[test]
fn h2c_and_http1_share_the_port_and_streams_are_balanced() {
    let a = Backend::with_handler("a", |r| {
        Reply::ok(format!("a {} {}", r.method, r.target)).header("X-Origin", "a")
    });
    let b = Backend::with_handler("b", |r| {
        Reply::ok(format!("b {} {}", r.method, r.target)).header("X-Origin", "b")
    });
    let proxy = ProxyConfig::with_backends(&[&a, &b]).start();
    run(async {
        let mut send = connect(proxy.addr).await;
        let mut origins = Vec::new();
        for i in 0..4 {
            let (parts, body, _) = roundtrip(&mut send, get(&format!("/p/{i}?q=1")), b"").await;
            assert_eq!(parts.status, StatusCode::OK);
            assert_eq!(parts.version, http::Version::HTTP_2);
            let origin = parts.headers["x-origin"].to_str().unwrap().to_string();
            assert_eq!(
                String::from_utf8_lossy(&body),
                format!("{origin} GET /p/{i}?q=1")
            );
            assert!(parts.headers.get("connection").is_none());
            origins.push(origin);
        }
        origins.sort();
        assert_eq!(origins, ["a", "a", "b", "b"], "round robin per stream");
    });
    // HTTP/1.1 on the same port still works.
    let r = proxy
        .client()
        .roundtrip(b"GET /one HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 200);
    // The backends saw HTTP/1.1 requests with the authority as Host.
    let req = a.requests().into_iter().next().expect("a request");
    assert_eq!(req.version, "HTTP/1.1");
    assert_eq!(req.header("host"), Some("example.test"));
}

#[test]
fn more_streams_in_flight_than_the_shard_keeps_warm_are_all_answered() {
    // 2 × 200 streams at once, each waiting on its backend: more awake requests than the
    // shard lets wait warm (256), which must not cost any stream its answer.
    let a = Backend::with_handler("a", |r| {
        Reply::ok(format!("a {}", r.target)).delay(Duration::from_millis(300))
    });
    let proxy = ProxyConfig::with_backends(&[&a]).start();
    run(async {
        let mut all = Vec::new();
        for c in 0..2 {
            let send = connect(proxy.addr).await;
            for i in 0..200 {
                let mut send = send.clone();
                all.push(async move {
                    let path = format!("/s/{c}/{i}");
                    let (parts, body, _) = roundtrip(&mut send, get(&path), b"").await;
                    (parts.status, body, path)
                });
            }
        }
        let answers = futures_util::future::join_all(all).await;
        assert_eq!(answers.len(), 400);
        for (status, body, path) in answers {
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(body, format!("a {path}").into_bytes());
        }
    });
    assert_eq!(a.request_count(), 400);
}

#[test]
fn h2c_can_be_turned_off_and_the_preface_is_then_a_bad_http1_request() {
    let a = Backend::with_handler("a", |_| Reply::ok("a"));
    let proxy = Proxy::start(&with_h2(&ProxyConfig::with_backends(&[&a]), "h2c = false"));
    let mut s = StdTcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 4") || text.starts_with("HTTP/1.1 5"),
        "{text}"
    );
    assert_eq!(a.request_count(), 0);
}

#[test]
fn a_cleartext_listener_with_http1_false_takes_only_the_preface() {
    let a = Backend::with_handler("a", |_| Reply::ok("a"));
    let toml = ProxyConfig::with_backends(&[&a]).toml().replacen(
        "listen = [\"127.0.0.1:0\"]",
        "listen = [{ address = \"127.0.0.1:0\", http1 = false }, \"127.0.0.2:0\"]",
        1,
    );
    assert!(toml.contains("http1 = false"), "{toml}");
    let proxy = Proxy::start(&toml);
    let addrs = proxy.server().listen_addrs();
    let (h2_only, both) = (addrs[0], addrs[1]);
    run(async {
        let mut send = connect(h2_only).await;
        let (parts, body, _) = roundtrip(&mut send, get("/"), b"").await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(body, b"a");
    });
    // HTTP/1.1 there is a connection error: no answer, and a clean close (a FIN after the
    // lingering read, not a reset) however much the client sent.
    let mut s = StdTcpStream::connect(h2_only).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n".to_vec();
    request.resize(request.len() + 200_000, b'x');
    s.write_all(&request).unwrap();
    let mut got = Vec::new();
    let end = s.read_to_end(&mut got);
    assert!(end.is_ok(), "closed with {end:?} after {got:?}");
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert_eq!(
        a.request_count(),
        1,
        "only the HTTP/2 request reached the backend"
    );
    // The other listener still speaks both.
    let mut c = Client::connect(both);
    assert_eq!(
        c.roundtrip(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").status,
        200
    );
    proxy.shutdown();
}

#[test]
fn upgrade_to_h2c_is_refused_and_the_request_answered_as_http1() {
    let a = Backend::with_handler("a", |r| {
        Reply::ok(format!("upgrade={}", r.header("upgrade").unwrap_or("-")))
    });
    let proxy = ProxyConfig::with_backends(&[&a]).start();
    let r = proxy.client().roundtrip(
        b"GET /u HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "upgrade=-");
    let req = a.only_request();
    assert_eq!(req.header("http2-settings"), None);
}

#[test]
fn translation_authority_cookies_te_and_hop_by_hop_fields() {
    let a = Backend::with_handler("a", |_| {
        Reply::ok("fine")
            .header("Connection", "X-Private")
            .header("X-Private", "secret")
            .header("Keep-Alive", "timeout=5")
            .header("X-Kept", "yes")
    });
    let proxy = ProxyConfig::with_backends(&[&a]).start();
    run(async {
        let mut send = connect(proxy.addr).await;
        let req = Request::get("http://app.example:8443/c?x=1")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("te", "trailers")
            .header("x-custom", "v")
            .body(())
            .unwrap();
        let (parts, body, _) = roundtrip(&mut send, req, b"").await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(body, b"fine");
        assert_eq!(parts.headers["x-kept"], "yes");
        for gone in ["connection", "x-private", "keep-alive", "transfer-encoding"] {
            assert!(
                parts.headers.get(gone).is_none(),
                "{gone} must not be relayed"
            );
        }
        assert_eq!(parts.headers["content-length"], "4");
    });
    let req = a.only_request();
    assert_eq!(req.method, "GET");
    assert_eq!(req.target, "/c?x=1");
    assert_eq!(req.header("host"), Some("app.example:8443"));
    assert_eq!(
        req.headers_named("cookie"),
        ["a=1; b=2"],
        "cookies joined (RFC 9113 §8.2.3)"
    );
    assert_eq!(req.header("x-custom"), Some("v"));
    assert_eq!(
        req.header("te"),
        None,
        "te: trailers is not forwarded to HTTP/1.1"
    );
    assert_eq!(req.header("x-forwarded-for"), Some("127.0.0.1"));
}

#[test]
fn response_heads_keep_their_framing_rules_on_a_stream() {
    // What a relayed head becomes on a stream: the length of a body-less answer to HEAD and
    // of a 304 stays, a 204 and a chunked body get none, proxy-hop fields stay behind.
    let a = Backend::with_handler("a", |req| {
        match (req.method.as_str(), req.target.as_str()) {
        ("HEAD", _) => Reply::raw("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Head: 1\r\n\r\n"),
        (_, "/204") => Reply::no_body(204).header("X-Empty", "1"),
        (_, "/304") => Reply::raw(
            "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 7\r\n\r\n",
        ),
        _ => Reply::raw(
            "HTTP/1.1 299 Custom\r\nTransfer-Encoding: chunked\r\nProxy-Authenticate: Basic\r\n\
             Connection: close, X-Hop\r\nX-Hop: 1\r\nX-End: 2\r\n\r\n\
             3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
        ),
    }
    });
    let proxy = ProxyConfig::with_backends(&[&a]).start();
    run(async {
        let mut send = connect(proxy.addr).await;
        let head = Request::head("http://example.test/h").body(()).unwrap();
        let (parts, body, _) = roundtrip(&mut send, head, b"").await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(parts.headers["content-length"], "5");
        assert_eq!(parts.headers["x-head"], "1");
        assert!(body.is_empty());

        let (parts, body, _) = roundtrip(&mut send, get("/204"), b"").await;
        assert_eq!(parts.status, StatusCode::NO_CONTENT);
        assert_eq!(parts.headers["x-empty"], "1");
        assert!(parts.headers.get("content-length").is_none());
        assert!(body.is_empty());

        let (parts, body, _) = roundtrip(&mut send, get("/304"), b"").await;
        assert_eq!(parts.status, StatusCode::NOT_MODIFIED);
        assert_eq!(parts.headers["etag"], "\"v1\"");
        assert_eq!(parts.headers["content-length"], "7");
        assert!(body.is_empty());

        let (parts, body, trailers) = roundtrip(&mut send, get("/chunked"), b"").await;
        assert_eq!(parts.status.as_u16(), 299);
        assert_eq!(body, b"abcdefg");
        assert!(trailers.is_none());
        assert_eq!(parts.headers["x-end"], "2");
        for gone in [
            "content-length",
            "transfer-encoding",
            "proxy-authenticate",
            "connection",
            "x-hop",
        ] {
            assert!(parts.headers.get(gone).is_none(), "{gone}: {parts:?}");
        }
    });
}

#[test]
fn a_te_other_than_trailers_and_connection_fields_are_malformed() {
    // The h2 client refuses to send such fields, so this one is written by hand: HEADERS
    // with `te: gzip` (literal fields, no Huffman).
    let a = Backend::with_handler("a", |_| Reply::ok("a"));
    let proxy = ProxyConfig::with_backends(&[&a]).start();
    let mut c = RawH2::connect(proxy.addr);
    let mut block = vec![0x82, 0x86, 0x84]; // :method GET, :scheme http, :path /
    block.extend(literal(b":authority", b"t"));
    block.extend(literal(b"te", b"gzip"));
    c.frame(0x1, 0x4 | 0x1, 1, &block);
    let (kind, _, payload) = c.until(|k, _| k == 0x3 || k == 0x1 || k == 0x7);
    assert_eq!(kind, 0x3, "RST_STREAM for a malformed request");
    assert_eq!(
        u32::from_be_bytes(payload[..4].try_into().unwrap()),
        1,
        "PROTOCOL_ERROR"
    );
    assert_eq!(a.request_count(), 0);
}

#[test]
fn request_bodies_with_and_without_length_and_their_trailers() {
    let a = Backend::with_handler("a", |r| {
        let trailer = r
            .trailers
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        Reply::ok(format!(
            "{} {} chunked={} len={} trailers={trailer}",
            r.method,
            r.body_len,
            r.chunked,
            r.header("content-length").unwrap_or("-")
        ))
    });
    let proxy = ProxyConfig::with_backends(&[&a]).start();
    run(async {
        let mut send = connect(proxy.addr).await;
        // With a content-length: forwarded with it.
        let body = pattern_bytes(200_000);
        let req = Request::post("http://t/up")
            .header("content-length", body.len().to_string())
            .body(())
            .unwrap();
        let (parts, got, _) = roundtrip(&mut send, req, &body).await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(
            String::from_utf8_lossy(&got),
            "POST 200000 chunked=false len=200000 trailers="
        );
        // Without one: chunked, the client's trailers as the chunked trailer section.
        let mut ready = send.clone().ready().await.unwrap();
        let req = Request::post("http://t/up").body(()).unwrap();
        let (resp, mut stream) = ready.send_request(req, false).unwrap();
        stream
            .send_data(Bytes::from_static(b"hello "), false)
            .unwrap();
        stream
            .send_data(Bytes::from_static(b"world"), false)
            .unwrap();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", "abc".parse().unwrap());
        stream.send_trailers(trailers).unwrap();
        let resp = resp.await.unwrap();
        let (_, mut recv) = resp.into_parts();
        let mut got = Vec::new();
        while let Some(c) = recv.data().await {
            got.extend_from_slice(&c.unwrap());
        }
        assert_eq!(
            String::from_utf8_lossy(&got),
            "POST 11 chunked=true len=- trailers=x-checksum=abc"
        );
    });
}

#[test]
fn response_trailers_are_relayed_as_a_trailing_headers_frame() {
    let a = Backend::with_handler("a", |_| {
        Reply::chunked(
            &[b"part one, ", b"part two"],
            &[("grpc-status", "0"), ("grpc-message", "ok")],
        )
        .header("content-type", "application/grpc")
    });
    let proxy = ProxyConfig::with_backends(&[&a]).start();
    run(async {
        let mut send = connect(proxy.addr).await;
        let (parts, body, trailers) = roundtrip(&mut send, get("/t"), b"").await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(body, b"part one, part two");
        let trailers = trailers.expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["grpc-message"], "ok");
        assert_eq!(parts.headers["content-type"], "application/grpc");
    });
}

#[test]
fn content_length_that_does_not_match_the_data_is_a_stream_error() {
    let a = Backend::with_handler("a", |r| Reply::ok(format!("got {}", r.body_len)));
    let proxy = ProxyConfig::with_backends(&[&a]).start();
    run(async {
        let mut send = connect(proxy.addr).await;
        let mut ready = send.clone().ready().await.unwrap();
        let req = Request::post("http://t/cl")
            .header("content-length", "10")
            .body(())
            .unwrap();
        let (resp, mut stream) = ready.send_request(req, false).unwrap();
        stream
            .send_data(Bytes::from_static(b"12345"), true)
            .unwrap();
        let err = tokio::time::timeout(IO_TIMEOUT, resp)
            .await
            .expect("an answer in time")
            .expect_err("a stream error");
        assert_eq!(err.reason(), Some(h2::Reason::PROTOCOL_ERROR), "{err:?}");
        // The connection is still good for the next stream.
        let (parts, body, _) = roundtrip(&mut send, get("/next"), b"").await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(body, b"got 0");
    });
}

#[test]
fn retries_and_failover_apply_per_stream() {
    let good = Backend::with_handler("good", |_| Reply::ok("good"));
    let dead = refusing_addr();
    let proxy = ProxyConfig::new()
        .upstream("app", "round_robin", &[peer(dead), peer(good.addr())])
        .start();
    run(async {
        let mut send = connect(proxy.addr).await;
        for i in 0..6 {
            let (parts, body, _) = roundtrip(&mut send, get(&format!("/r{i}")), b"").await;
            assert_eq!(parts.status, StatusCode::OK, "stream {i}");
            assert_eq!(body, b"good");
        }
    });
    assert_eq!(good.request_count(), 6);
}

#[test]
fn no_upstream_answer_is_ringlbs_own_error_on_the_stream() {
    let proxy = ProxyConfig::new()
        .upstream("app", "round_robin", &[peer(refusing_addr())])
        .start();
    run(async {
        let mut send = connect(proxy.addr).await;
        let (parts, body, _) = roundtrip(&mut send, get("/x"), b"").await;
        assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
        assert!(!body.is_empty());
    });
}

#[test]
fn an_answer_given_before_the_body_is_the_streams_response() {
    // The peer reads the head, answers 413 and resets the connection with the body unread;
    // the stream gets the 413 (not a 502, not a reset), while its body is still being sent.
    let a = FaultPeer::start(Fault::AnswerBeforeBody(TOO_LARGE.to_vec()));
    let proxy = ProxyConfig::new()
        .upstream("app", "round_robin", &[peer(a.addr())])
        .start();
    run(async {
        let send = connect(proxy.addr).await;
        let mut send = send.ready().await.expect("ready");
        let req = Request::post("http://t/upload")
            .header("content-length", (1u32 << 20).to_string())
            .body(())
            .unwrap();
        let (resp, mut body) = send.send_request(req, false).expect("send");
        body.send_data(Bytes::from(vec![b'x'; 64 * 1024]), false)
            .expect("first part");
        let deadline = Instant::now() + IO_TIMEOUT;
        while a.hits() < 1 {
            assert!(Instant::now() < deadline, "the peer never answered");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The rest goes out as the windows allow; ringlb may end the stream's body early.
        let _ = body.send_data(Bytes::from(vec![b'x'; (1 << 20) - 64 * 1024]), true);
        let resp = tokio::time::timeout(IO_TIMEOUT, resp)
            .await
            .expect("response in time")
            .expect("a response, not a stream error");
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let mut recv = resp.into_body();
        let mut data = Vec::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.expect("body chunk");
            let _ = recv.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        assert_eq!(data, b"too large");
    });
    assert_eq!(
        (a.accepts(), a.hits()),
        (1, 1),
        "answered once, not retried"
    );
}

/// A raw HTTP/1.0 origin (as Python's `http.server` answers) that sends each response, head
/// and `len` bytes of the test pattern, in one write and closes.
fn http10_origin(len: usize) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut wire = Wire::new(s.try_clone().expect("clone"));
                if wire.read_head(1 << 16).is_err() {
                    return;
                }
                let mut response = format!(
                    "HTTP/1.0 200 OK\r\nContent-type: application/octet-stream\r\n\
                     Content-Length: {len}\r\n\r\n"
                )
                .into_bytes();
                response.extend_from_slice(&pattern_bytes(len));
                let _ = s.write_all(&response);
            });
        }
    });
    addr
}

#[test]
fn a_first_read_holding_the_head_and_more_than_64_kib_of_body_is_relayed_whole() {
    // Once a large response grew the shard's spare upstream buffer, the first read of the
    // next response brings its head with ~64 KiB of body, and the request path hands both
    // to the stream in one write: that is a complete head plus body, not a head too large.
    let len = 300_000;
    let proxy = ProxyConfig::new()
        .upstream("app", "round_robin", &[peer(http10_origin(len))])
        .start();
    run(async {
        let mut send = connect(proxy.addr).await;
        for i in 0..10 {
            let (parts, body, _) = roundtrip(&mut send, get("/f"), b"").await;
            assert_eq!(parts.status, StatusCode::OK, "request {i}");
            assert_eq!(body.len(), len, "request {i}");
            assert!(body == pattern_bytes(len), "request {i}: bytes differ");
        }
    });
}

#[test]
fn upstream_failing_mid_response_resets_the_stream() {
    let a = Backend::with_handler("a", |r| {
        if r.path() == "/broken" {
            Reply::raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nonly this".to_vec())
        } else {
            Reply::ok("fine")
        }
    });
    let proxy = ProxyConfig::with_backends(&[&a]).start();
    run(async {
        let mut send = connect(proxy.addr).await;
        let mut ready = send.clone().ready().await.unwrap();
        let (resp, _) = ready.send_request(get("/broken"), true).unwrap();
        let resp = resp.await.expect("the head arrives");
        assert_eq!(resp.status(), StatusCode::OK);
        let mut recv = resp.into_body();
        let mut got = Vec::new();
        let err = loop {
            match tokio::time::timeout(IO_TIMEOUT, recv.data())
                .await
                .expect("in time")
            {
                Some(Ok(c)) => got.extend_from_slice(&c),
                Some(Err(e)) => break e,
                None => panic!("the body must not end cleanly (got {} bytes)", got.len()),
            }
        };
        assert_eq!(err.reason(), Some(h2::Reason::INTERNAL_ERROR), "{err:?}");
        assert_eq!(got, b"only this");
        // Other streams on the connection are unaffected.
        let (parts, body, _) = roundtrip(&mut send, get("/ok"), b"").await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(body, b"fine");
    });
}

#[test]
fn large_bodies_flow_both_ways_under_flow_control() {
    let a = Backend::with_handler("a", |r| {
        if r.method == "POST" {
            Reply::ok(format!("{} {}", r.body_len, r.body_is_pattern))
        } else {
            Reply::pattern(3 << 20, Some(50_000))
        }
    });
    let proxy = Proxy::start(&with_h2(
        &ProxyConfig::with_backends(&[&a]),
        "initial_window = 65535, max_concurrent_streams = 8",
    ));
    run(async {
        let mut send = connect(proxy.addr).await;
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let mut s = send.clone();
            tasks.push(tokio::spawn(async move {
                let (parts, body, _) = roundtrip(&mut s, get("/big"), b"").await;
                assert_eq!(parts.status, StatusCode::OK);
                assert_eq!(body.len(), 3 << 20);
                assert_eq!(body, pattern_bytes(3 << 20));
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let up = pattern_bytes(2 << 20);
        let req = Request::post("http://t/up").body(()).unwrap();
        let (parts, body, _) = roundtrip(&mut send, req, &up).await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(String::from_utf8_lossy(&body), format!("{} true", 2 << 20));
    });
}

#[test]
fn a_zero_window_stall_is_cut_by_the_client_timeout() {
    let a = Backend::with_handler("a", |_| Reply::pattern(1 << 20, None));
    let proxy = Proxy::start(&with_h2(
        &ProxyConfig::with_backends(&[&a]).timeout("client_idle_ms", 500),
        "initial_window = 65535",
    ));
    run(async {
        // The client never gives window back: after its first 64 KiB, nothing can be sent.
        let mut builder = h2::client::Builder::new();
        builder.initial_window_size(16_384);
        let mut send = connect_with(proxy.addr, builder).await;
        let mut ready = send.clone().ready().await.unwrap();
        let (resp, _) = ready.send_request(get("/stall"), true).unwrap();
        let resp = resp.await.expect("the head arrives");
        let mut recv = resp.into_body();
        let started = Instant::now();
        let mut got = 0;
        let err = loop {
            match tokio::time::timeout(IO_TIMEOUT, recv.data())
                .await
                .expect("cut in time")
            {
                Some(Ok(c)) => got += c.len(), // not released
                Some(Err(e)) => break e,
                None => panic!("a stalled body cannot complete"),
            }
        };
        assert!(got <= 65_535, "{got}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(err.reason(), Some(h2::Reason::INTERNAL_ERROR), "{err:?}");
        // The connection itself goes on.
        let _ = &mut send;
    });
}

#[test]
fn graceful_shutdown_sends_goaway_and_in_flight_streams_finish() {
    let a = Backend::with_handler("a", |r| {
        if r.path() == "/slow" {
            Reply::ok("slow done").delay(Duration::from_millis(600))
        } else {
            Reply::ok("fast")
        }
    });
    let proxy = ProxyConfig::with_backends(&[&a]).start();
    let stop = proxy.server().shutdown_handle();
    run(async {
        let (send, conn) = connect_watched(proxy.addr, h2::client::Builder::new()).await;
        let mut ready = send.clone().ready().await.unwrap();
        let (resp, _) = ready.send_request(get("/slow"), true).unwrap();
        while a.heads_seen() < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.shutdown();
        let resp = tokio::time::timeout(IO_TIMEOUT, resp)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut recv = resp.into_body();
        let mut body = Vec::new();
        while let Some(c) = recv.data().await {
            body.extend_from_slice(&c.unwrap());
        }
        assert_eq!(body, b"slow done", "the in-flight stream finished");
        // After the GOAWAY the connection closes; a new stream is refused.
        let ended = tokio::time::timeout(IO_TIMEOUT, conn)
            .await
            .expect("closed");
        assert!(ended.is_ok());
        let refused = match send.ready().await {
            Ok(mut s) => s.send_request(get("/fast"), true).is_err(),
            Err(_) => true,
        };
        assert!(refused, "no new stream after GOAWAY");
    });
    assert_eq!(a.request_count(), 1);
    proxy.shutdown();
}

#[test]
fn a_reload_sends_goaway_and_the_next_connection_runs_on_the_new_config() {
    let a = Backend::with_handler("a", |_| Reply::ok("a"));
    let b = Backend::with_handler("b", |_| Reply::ok("b"));
    let cfg = ProxyConfig::with_backends(&[&a]);
    let proxy = cfg.start();
    run(async {
        let (mut send, conn) = connect_watched(proxy.addr, h2::client::Builder::new()).await;
        let (_, body, _) = roundtrip(&mut send, get("/1"), b"").await;
        assert_eq!(body, b"a");
        let next = config_from(ProxyConfig::with_backends(&[&b]).toml());
        proxy.server().apply(next).expect("reload");
        let ended = tokio::time::timeout(IO_TIMEOUT, conn)
            .await
            .expect("GOAWAY, then closed");
        assert!(ended.is_ok());
        let mut send = connect(proxy.addr).await;
        let (_, body, _) = roundtrip(&mut send, get("/2"), b"").await;
        assert_eq!(body, b"b");
    });
}

#[test]
fn rapid_reset_gets_goaway() {
    let a = Backend::with_handler("a", |_| Reply::ok("a").delay(Duration::from_millis(200)));
    let proxy = Proxy::start(&with_h2(
        &ProxyConfig::with_backends(&[&a]),
        "max_resets_per_sec = 50",
    ));
    run(async {
        let (send, conn) = connect_watched(proxy.addr, h2::client::Builder::new()).await;
        for _ in 0..200 {
            let Ok(mut ready) = send.clone().ready().await else {
                break;
            };
            let Ok((_, mut stream)) = ready.send_request(get("/r"), true) else {
                break;
            };
            stream.send_reset(h2::Reason::CANCEL);
        }
        let ended = tokio::time::timeout(IO_TIMEOUT, conn)
            .await
            .expect("the connection ends")
            .unwrap();
        let err = ended.expect_err("GOAWAY");
        assert!(err.is_go_away(), "{err:?}");
        assert_eq!(err.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{err:?}");
    });
    assert!(a.request_count() < 200);
}

#[test]
fn ping_flood_gets_goaway() {
    let a = Backend::with_handler("a", |_| Reply::ok("a"));
    let proxy = Proxy::start(&with_h2(
        &ProxyConfig::with_backends(&[&a]),
        "max_pings_per_sec = 10",
    ));
    let mut c = RawH2::connect(proxy.addr);
    // The proxy may close before the last ones are written: its GOAWAY is what counts.
    for i in 0..50u8 {
        if !c.try_frame(0x6, 0, 0, &[i; 8]) {
            break;
        }
    }
    let (_, _, payload) = c.until(|k, _| k == 0x7);
    assert_eq!(
        u32::from_be_bytes(payload[4..8].try_into().unwrap()),
        11,
        "ENHANCE_YOUR_CALM"
    );
}

#[test]
fn settings_flood_gets_goaway() {
    let a = Backend::with_handler("a", |_| Reply::ok("a"));
    let proxy = Proxy::start(&with_h2(
        &ProxyConfig::with_backends(&[&a]),
        "max_settings_per_sec = 10",
    ));
    let mut c = RawH2::connect(proxy.addr);
    for _ in 0..50 {
        if !c.try_frame(0x4, 0, 0, &[]) {
            break;
        }
    }
    let (_, _, payload) = c.until(|k, _| k == 0x7);
    assert_eq!(
        u32::from_be_bytes(payload[4..8].try_into().unwrap()),
        11,
        "ENHANCE_YOUR_CALM"
    );
}

#[test]
fn continuation_flood_gets_goaway() {
    let a = Backend::with_handler("a", |_| Reply::ok("a"));
    let proxy = ProxyConfig::with_backends(&[&a]).start();
    let mut c = RawH2::connect(proxy.addr);
    // HEADERS without END_HEADERS, then CONTINUATION frames that never end the block.
    c.frame(0x1, 0x1, 1, &[0x82, 0x86, 0x84]);
    for _ in 0..2000 {
        if !c.try_frame(0x9, 0, 1, &[0x84; 16]) {
            break;
        }
    }
    let (_, _, payload) = c.until(|k, _| k == 0x7);
    let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
    assert!(
        code == 11 || code == 1,
        "GOAWAY ENHANCE_YOUR_CALM or PROTOCOL_ERROR, got {code}"
    );
    assert_eq!(a.request_count(), 0);
}

#[test]
fn header_lists_over_the_limit_get_431_and_hpack_bombs_get_goaway() {
    let a = Backend::with_handler("a", |_| Reply::ok("a"));
    let proxy = Proxy::start(&with_h2(
        &ProxyConfig::with_backends(&[&a]),
        "max_header_list_size = 16384",
    ));
    // A header list somewhat over the limit: 431, and the connection goes on.
    run(async {
        let mut send = connect(proxy.addr).await;
        let mut req = get("/big-headers");
        for i in 0..5 {
            req.headers_mut().insert(
                http::HeaderName::from_bytes(format!("x-big-{i}").as_bytes()).unwrap(),
                "v".repeat(4000).parse().unwrap(),
            );
        }
        let (parts, _, _) = roundtrip(&mut send, req, b"").await;
        assert_eq!(parts.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let (parts, body, _) = roundtrip(&mut send, get("/small"), b"").await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(body, b"a");
    });
    assert_eq!(a.request_count(), 1);
    // A bomb: one 4 KB field added to the dynamic table, then referenced again and again: a
    // few bytes on the wire, far beyond the limit once decoded: GOAWAY.
    let mut c = RawH2::connect(proxy.addr);
    let mut block = vec![0x82, 0x86, 0x84];
    block.extend(literal(b":authority", b"t"));
    block.push(0x40); // literal with incremental indexing, new name
    block.extend(hpack_string(b"x-bomb"));
    block.extend(hpack_string(&[b'b'; 4000]));
    block.extend(std::iter::repeat_n(0x80 | 62, 40)); // index 62: the field just added
    c.frame(0x1, 0x4 | 0x1, 1, &block);
    let (_, _, payload) = c.until(|k, _| k == 0x7);
    assert_eq!(
        u32::from_be_bytes(payload[4..8].try_into().unwrap()),
        11,
        "ENHANCE_YOUR_CALM"
    );
    assert_eq!(a.request_count(), 1);
}

/// An HPACK string literal without Huffman coding (RFC 7541 §5.2).
fn hpack_string(s: &[u8]) -> Vec<u8> {
    let mut out = hpack_int(s.len(), 7, 0);
    out.extend_from_slice(s);
    out
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1), `first` holding the high bits.
fn hpack_int(mut v: usize, n: u32, first: u8) -> Vec<u8> {
    let max = (1usize << n) - 1;
    if v < max {
        return vec![first | v as u8];
    }
    let mut out = vec![first | max as u8];
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
    out
}

/// A literal header field without indexing, new name (RFC 7541 §6.2.2).
fn literal(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00];
    out.extend(hpack_string(name));
    out.extend(hpack_string(value));
    out
}

/// RawH2 writes frames by hand, for what the h2 client will not send.
struct RawH2 {
    s: StdTcpStream,
    buf: Vec<u8>,
}

impl RawH2 {
    /// Connects and sends the preface and an empty SETTINGS.
    fn connect(addr: SocketAddr) -> RawH2 {
        let s = StdTcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut c = RawH2 { s, buf: Vec::new() };
        c.s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
        c.frame(0x4, 0, 0, &[]);
        c
    }

    fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        assert!(
            self.try_frame(kind, flags, stream, payload),
            "write a frame"
        );
    }

    /// Writes a frame; false once the proxy closed the connection.
    fn try_frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> bool {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        self.s.write_all(&f).is_ok()
    }

    /// Reads frames until one for which `want(kind, flags)` holds (SETTINGS are acked).
    fn until(&mut self, want: impl Fn(u8, u8) -> bool) -> (u8, u8, Vec<u8>) {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            assert!(Instant::now() < deadline, "no such frame in time");
            while self.buf.len() >= 9 {
                let len = (self.buf[0] as usize) << 16
                    | (self.buf[1] as usize) << 8
                    | self.buf[2] as usize;
                if self.buf.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (self.buf[3], self.buf[4]);
                let payload = self.buf[9..9 + len].to_vec();
                self.buf.drain(..9 + len);
                if kind == 0x4 && flags & 1 == 0 {
                    let _ = self.try_frame(0x4, 1, 0, &[]);
                }
                if want(kind, flags) {
                    return (kind, flags, payload);
                }
            }
            let mut chunk = [0u8; 16384];
            match self.s.read(&mut chunk) {
                Ok(0) => panic!("connection closed before the frame"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("read: {e}"),
            }
        }
    }
}

/// H2Request is one request as an HTTP/2 backend received it.
#[derive(Debug, Clone)]
struct H2Request {
    method: String,
    /// `:scheme`.
    scheme: String,
    path: String,
    authority: String,
    headers: http::HeaderMap,
    body: Vec<u8>,
    conn: usize,
}

/// H2Answer is what an HTTP/2 backend answers: status, fields, body, trailers; or a reset.
struct H2Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    trailers: Vec<(&'static str, &'static str)>,
    delay: Duration,
    reset: Option<h2::Reason>,
}

impl H2Answer {
    fn ok(body: impl Into<Vec<u8>>) -> H2Answer {
        H2Answer {
            status: 200,
            headers: Vec::new(),
            body: body.into(),
            trailers: Vec::new(),
            delay: Duration::ZERO,
            reset: None,
        }
    }
}

type H2Handler = dyn Fn(&H2Request) -> H2Answer + Send + Sync;

/// H2Backend is an HTTP/2 (h2c, prior knowledge) origin on a thread of its own.
struct H2Backend {
    addr: SocketAddr,
    accepts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    requests: std::sync::Arc<std::sync::Mutex<Vec<H2Request>>>,
}

impl H2Backend {
    /// Starts one; `max_streams` is its SETTINGS_MAX_CONCURRENT_STREAMS, `goaway_after` makes
    /// it send GOAWAY after that many streams on a connection.
    fn start(
        max_streams: u32,
        goaway_after: Option<usize>,
        handler: impl Fn(&H2Request) -> H2Answer + Send + Sync + 'static,
    ) -> H2Backend {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<H2Handler> = Arc::new(handler);
        let (acc, reqs) = (accepts.clone(), requests.clone());
        std::thread::spawn(move || {
            run(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let conn_no = acc.fetch_add(1, Ordering::SeqCst);
                    let (handler, reqs) = (handler.clone(), reqs.clone());
                    tokio::spawn(async move {
                        let mut b = h2::server::Builder::new();
                        b.max_concurrent_streams(max_streams);
                        let Ok(mut conn) = b.handshake::<_, Bytes>(tcp).await else {
                            return;
                        };
                        let mut served = 0;
                        while let Some(Ok((req, mut respond))) = conn.accept().await {
                            served += 1;
                            if Some(served) == goaway_after {
                                conn.graceful_shutdown();
                            }
                            let (handler, reqs) = (handler.clone(), reqs.clone());
                            tokio::spawn(async move {
                                let (parts, mut body) = req.into_parts();
                                let mut data = Vec::new();
                                while let Some(Ok(c)) = body.data().await {
                                    let _ = body.flow_control().release_capacity(c.len());
                                    data.extend_from_slice(&c);
                                }
                                let r = H2Request {
                                    method: parts.method.to_string(),
                                    scheme: parts.uri.scheme_str().unwrap_or_default().to_string(),
                                    path: parts.uri.path().to_string(),
                                    authority: parts
                                        .uri
                                        .authority()
                                        .map(|a| a.to_string())
                                        .unwrap_or_default(),
                                    headers: parts.headers,
                                    body: data,
                                    conn: conn_no,
                                };
                                reqs.lock().unwrap().push(r.clone());
                                let a = handler(&r);
                                tokio::time::sleep(a.delay).await;
                                if let Some(reason) = a.reset {
                                    respond.send_reset(reason);
                                    return;
                                }
                                let mut resp = http::Response::builder().status(a.status);
                                for (n, v) in &a.headers {
                                    resp = resp.header(*n, v);
                                }
                                let end = a.body.is_empty() && a.trailers.is_empty();
                                let Ok(mut s) = respond.send_response(resp.body(()).unwrap(), end)
                                else {
                                    return;
                                };
                                if !a.body.is_empty() {
                                    let _ = s.send_data(Bytes::from(a.body), a.trailers.is_empty());
                                }
                                if !a.trailers.is_empty() {
                                    let mut t = http::HeaderMap::new();
                                    for (n, v) in a.trailers {
                                        t.insert(n, v.parse().unwrap());
                                    }
                                    let _ = s.send_trailers(t);
                                }
                            });
                        }
                    });
                }
            });
        });
        H2Backend {
            addr,
            accepts,
            requests,
        }
    }

    fn accepts(&self) -> usize {
        self.accepts.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<H2Request> {
        self.requests.lock().unwrap().clone()
    }
}

/// A proxy whose upstream `app` speaks h2c to `peers` (resets retried).
fn h2c_upstream(peers: &[SocketAddr]) -> Proxy {
    let list: Vec<Peer> = peers.iter().map(|a| peer(*a)).collect();
    ProxyConfig::new()
        .upstream_with(
            "app",
            "round_robin",
            &[
                "protocol = \"h2c\"",
                "retry = { on = [\"reset\", \"connect_failure\"] }",
            ],
            &list,
        )
        .start()
}

#[test]
fn upstream_h2c_multiplexes_http1_and_h2_clients_onto_one_connection() {
    let b = H2Backend::start(100, None, |r| {
        H2Answer::ok(format!(
            "{} {} {} {}",
            r.method,
            r.path,
            r.authority,
            r.body.len()
        ))
    });
    let proxy = h2c_upstream(&[b.addr]);
    // HTTP/1.1 clients, one after another, on separate connections.
    for i in 0..3 {
        let r = proxy.client().roundtrip(
            format!("POST /h1/{i} HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 5\r\n\r\nhello")
                .as_bytes(),
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.body_str(), format!("POST /h1/{i} svc.test 5"));
    }
    // HTTP/2 clients: concurrent streams.
    run(async {
        let send = connect(proxy.addr).await;
        let mut tasks = Vec::new();
        for i in 0..10 {
            let mut s = send.clone();
            tasks.push(tokio::spawn(async move {
                let (parts, body, _) = roundtrip(&mut s, get(&format!("/h2/{i}")), b"").await;
                assert_eq!(parts.status, StatusCode::OK);
                assert_eq!(
                    String::from_utf8_lossy(&body),
                    format!("GET /h2/{i} example.test 0")
                );
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    assert_eq!(
        b.accepts(),
        1,
        "one multiplexed connection per peer and shard"
    );
    assert_eq!(b.requests().len(), 13);
    assert!(b.requests().iter().all(|r| r.conn == 0));
    // Cleartext h2c: `:scheme http`.
    assert!(b.requests().iter().all(|r| r.scheme == "http"));
}

#[test]
fn upstream_h2c_opens_another_connection_at_the_peers_stream_limit() {
    let b = H2Backend::start(2, None, |_| {
        let mut a = H2Answer::ok("slow");
        a.delay = Duration::from_millis(300);
        a
    });
    let proxy = h2c_upstream(&[b.addr]);
    run(async {
        let send = connect(proxy.addr).await;
        // Let the upstream connection exist first, so its limit is known.
        let (parts, _, _) = roundtrip(&mut send.clone(), get("/first"), b"").await;
        assert_eq!(parts.status, StatusCode::OK);
        let mut tasks = Vec::new();
        for i in 0..6 {
            let mut s = send.clone();
            tasks.push(tokio::spawn(async move {
                let (parts, body, _) = roundtrip(&mut s, get(&format!("/{i}")), b"").await;
                assert_eq!(parts.status, StatusCode::OK);
                assert_eq!(body, b"slow");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    assert!(
        b.accepts() >= 3,
        "6 streams at 2 per connection: {} connections",
        b.accepts()
    );
}

#[test]
fn grpc_passes_through_an_h2c_upstream_with_te_and_trailers() {
    let b = H2Backend::start(100, None, |r| {
        let te = r
            .headers
            .get("te")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let mut a = H2Answer::ok(r.body.clone());
        a.headers = vec![
            ("content-type", "application/grpc".to_string()),
            ("x-te", te),
        ];
        a.trailers = vec![("grpc-status", "0"), ("grpc-message", "fine")];
        a
    });
    let proxy = h2c_upstream(&[b.addr]);
    run(async {
        let mut send = connect(proxy.addr).await;
        let frame = b"\x00\x00\x00\x00\x05hello";
        let req = Request::post("http://grpc.test/pkg.Service/Method")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (parts, body, trailers) = roundtrip(&mut send, req, frame).await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(parts.headers["content-type"], "application/grpc");
        assert_eq!(
            parts.headers["x-te"], "trailers",
            "te: trailers reached the upstream"
        );
        assert_eq!(body, frame);
        let trailers = trailers.expect("trailers relayed");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["grpc-message"], "fine");
    });
    let r = &b.requests()[0];
    assert_eq!(r.path, "/pkg.Service/Method");
    assert_eq!(r.authority, "grpc.test");
}

#[test]
fn upstream_goaway_drains_and_the_next_request_reconnects() {
    let b = H2Backend::start(100, Some(2), |r| H2Answer::ok(r.path.clone()));
    let proxy = h2c_upstream(&[b.addr]);
    for i in 0..5 {
        let r = proxy
            .client()
            .roundtrip(format!("GET /g{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.body_str(), format!("/g{i}"));
    }
    assert!(b.accepts() >= 2, "a new connection after the GOAWAY");
    assert_eq!(b.requests().len(), 5);
}

#[test]
fn an_upstream_stream_reset_is_a_reset_failure_and_retried_on_the_next_peer() {
    let bad = H2Backend::start(100, None, |_| {
        let mut a = H2Answer::ok("never");
        a.reset = Some(h2::Reason::INTERNAL_ERROR);
        a
    });
    let good = H2Backend::start(100, None, |_| H2Answer::ok("good"));
    let proxy = h2c_upstream(&[bad.addr, good.addr]);
    for i in 0..4 {
        let r = proxy
            .client()
            .roundtrip(format!("GET /x{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.body_str(), "good");
    }
    assert!(!bad.requests().is_empty(), "the resetting peer was tried");
    // With no other peer: ringlb's own 502.
    let only_bad = h2c_upstream(&[bad.addr]);
    let r = only_bad
        .client()
        .roundtrip(b"GET /y HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 502);
}

#[test]
fn an_unreachable_h2c_peer_is_a_connect_failure() {
    let good = H2Backend::start(100, None, |_| H2Answer::ok("good"));
    let proxy = h2c_upstream(&[refusing_addr(), good.addr]);
    for _ in 0..4 {
        let r = proxy
            .client()
            .roundtrip(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(r.status, 200);
        assert_eq!(r.body_str(), "good");
    }
}

#[test]
fn a_connection_without_streams_for_client_idle_is_closed_with_goaway() {
    let a = Backend::with_handler("a", |_| Reply::ok("a"));
    let proxy = ProxyConfig::with_backends(&[&a])
        .timeout("client_idle_ms", 300)
        .start();
    run(async {
        let (mut send, conn) = connect_watched(proxy.addr, h2::client::Builder::new()).await;
        // Busy for longer than the idle time: not closed.
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(700) {
            let (parts, _, _) = roundtrip(&mut send, get("/busy"), b"").await;
            assert_eq!(parts.status, StatusCode::OK);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Then idle: GOAWAY and close.
        let ended = tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("closed when idle");
        assert!(ended.is_ok());
    });
}

#[test]
fn an_idle_connection_is_closed_while_other_connections_come_and_go() {
    // Connections opening and closing on the shard must not wake the HTTP/2 connections (a
    // wake restarted their idle wait, so under churn an idle one never closed, and every
    // close cost a wake of every open HTTP/2 connection).
    let a = Backend::with_handler("a", |_| Reply::ok("a"));
    let proxy = ProxyConfig::with_backends(&[&a])
        .timeout("client_idle_ms", 300)
        .start();
    let addr = proxy.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut served = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut c = StdTcpStream::connect(addr).expect("connect");
                c.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
                c.write_all(b"GET /churn HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                    .expect("send");
                let mut resp = Vec::new();
                c.read_to_end(&mut resp).expect("read to the close");
                assert!(resp.starts_with(b"HTTP/1.1 200"), "churn request answered");
                served += 1;
                std::thread::sleep(Duration::from_millis(30));
            }
            served
        })
    };
    run(async {
        let (_send, conn) = connect_watched(addr, h2::client::Builder::new()).await;
        let started = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(3), conn)
            .await
            .expect("the idle connection is closed although other connections come and go");
        assert!(ended.is_ok());
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "closed before client_idle_ms: {:?}",
            started.elapsed()
        );
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served = churn.join().expect("churn thread");
    assert!(
        served >= 5,
        "connections came and went meanwhile ({served})"
    );
}

// --- WebSocket over HTTP/2 (RFC 8441 extended CONNECT) ---

/// Waits until the proxy's SETTINGS allowing extended CONNECT reached the client.
async fn wait_extended_connect(send: &SendRequest<Bytes>) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while !send.is_extended_connect_protocol_enabled() {
        assert!(
            Instant::now() < deadline,
            "SETTINGS_ENABLE_CONNECT_PROTOCOL never came"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An extended CONNECT for `path` with `:protocol` = `protocol`.
fn extended_connect(path: &str, protocol: &str) -> Request<()> {
    Request::builder()
        .method("CONNECT")
        .uri(format!("http://example.test{path}"))
        .header("sec-websocket-version", "13")
        // A key the client has no business sending (RFC 8441 §5): not passed on.
        .header("sec-websocket-key", "Y2xpZW50LWtleS0xMjM0NQ==")
        .extension(h2::ext::Protocol::from(protocol))
        .body(())
        .expect("request")
}

/// Opens an extended CONNECT stream: the response head, the send side, the receive side.
async fn open_ws(
    send: &mut SendRequest<Bytes>,
    path: &str,
) -> (http::response::Parts, h2::SendStream<Bytes>, h2::RecvStream) {
    wait_extended_connect(send).await;
    let mut send = send.clone().ready().await.expect("ready");
    let (resp, stream) = send
        .send_request(extended_connect(path, "websocket"), false)
        .expect("send extended CONNECT");
    let resp = tokio::time::timeout(IO_TIMEOUT, resp)
        .await
        .expect("response in time")
        .expect("response");
    let (parts, recv) = resp.into_parts();
    (parts, stream, recv)
}

/// Reads exactly `n` bytes of DATA from `recv`.
async fn read_n(recv: &mut h2::RecvStream, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        let chunk = tokio::time::timeout(IO_TIMEOUT, recv.data())
            .await
            .expect("data in time")
            .expect("stream ended early")
            .expect("data");
        let _ = recv.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got.len(), n, "no more than asked for");
    got
}

/// Reads DATA until the stream's end.
async fn read_rest(recv: &mut h2::RecvStream) -> Vec<u8> {
    let mut got = Vec::new();
    loop {
        let chunk = tokio::time::timeout(IO_TIMEOUT, recv.data())
            .await
            .expect("data or the end in time");
        let Some(chunk) = chunk else { return got };
        let chunk = chunk.expect("data");
        let _ = recv.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
}

/// Sends all of `data`, waiting for window as needed.
async fn send_all(stream: &mut h2::SendStream<Bytes>, mut data: Bytes) {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let n = std::future::poll_fn(|cx| stream.poll_capacity(cx))
            .await
            .expect("capacity")
            .expect("capacity");
        let chunk = data.split_to(n.min(data.len()));
        stream.send_data(chunk, false).expect("send data");
    }
}

fn ws_proxy(b: &WsEcho) -> ProxyConfig {
    ProxyConfig::new().upstream("app", "least_connections", &[peer(b.addr)])
}

/// Frames both ways byte-exact, then the client's END_STREAM is the half-close: the origin
/// answers it and the stream ends.
async fn ws_echo_session(send: &mut SendRequest<Bytes>) {
    let (parts, mut up, mut down) = open_ws(send, "/chat?room=1").await;
    assert_eq!(parts.status, StatusCode::OK, "101 becomes 200");
    assert_eq!(parts.headers["x-origin"], "ws-echo");
    for f in ["sec-websocket-accept", "upgrade", "connection"] {
        assert!(parts.headers.get(f).is_none(), "{f} in {:?}", parts.headers);
    }
    for (i, n) in [5usize, 125, 126, 4000, 70_000, 200_000]
        .into_iter()
        .enumerate()
    {
        let payload: Vec<u8> = (0..n).map(|j| (j * 31 + i) as u8).collect();
        let frame = ws_client_frame(2, &payload, [1, 2, 3, i as u8]);
        send_all(&mut up, Bytes::from(frame.clone())).await;
        let back = read_n(&mut down, frame.len()).await;
        assert!(back == frame, "frame {i} of {n} bytes echoed byte-exact");
    }
    // Half-close: the origin sees the end, still answers, then ends its side.
    up.send_data(Bytes::new(), true).expect("END_STREAM");
    assert_eq!(read_n(&mut down, 3).await, b"bye");
    assert_eq!(
        read_rest(&mut down).await,
        b"",
        "the stream ends after the origin's close"
    );
}

#[test]
fn websocket_over_h2_extended_connect_is_a_tunnel_to_an_http1_upgrade() {
    let b = WsEcho::start();
    let toml = ws_proxy(&b)
        .toml()
        .replace("admin = \"\"", "admin = \"127.0.0.1:0\"");
    let proxy = Proxy::start(&toml);
    run(async {
        let mut send = connect(proxy.addr).await;
        ws_echo_session(&mut send).await;
        // The connection still carries ordinary streams.
        let (parts, body, _) = roundtrip(&mut send, get("/after"), b"").await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(body, b"plain");
    });
    let head = b.heads()[0].clone();
    assert!(head.starts_with("GET /chat?room=1 HTTP/1.1\r\n"), "{head}");
    assert_eq!(head_field(&head, "upgrade"), Some("websocket"), "{head}");
    assert!(
        head_field(&head, "connection").is_some_and(|c| c.to_ascii_lowercase().contains("upgrade")),
        "{head}"
    );
    assert_eq!(head_field(&head, "sec-websocket-version"), Some("13"));
    let key = head_field(&head, "sec-websocket-key").expect("a key for the HTTP/1.1 side");
    assert_ne!(key, "Y2xpZW50LWtleS0xMjM0NQ==", "the proxy's own key");
    assert_eq!(key.len(), 24, "{key}");
    assert_eq!(
        head.matches("ec-WebSocket-Key").count() + head.matches("ec-websocket-key").count(),
        1,
        "{head}"
    );
    // The tunnel counts as one in the tunnel metrics.
    let admin = proxy.server().admin_addr().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let r = Client::connect(admin).roundtrip(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n");
        let text = r.body_str();
        if text.contains("ringlb_tunnels_active{upstream=\"app\"} 0") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        text.contains("ringlb_tunnels_total{upstream=\"app\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("ringlb_tunnels_active{upstream=\"app\"} 0\n"),
        "{text}"
    );
    let frames: usize = [5usize, 125, 126, 4000, 70_000, 200_000]
        .iter()
        .map(|n| {
            n + 2
                + 4
                + if *n < 126 {
                    0
                } else if *n <= 0xffff {
                    2
                } else {
                    8
                }
        })
        .sum();
    for (dir, n) in [("upstream", frames), ("downstream", frames + 3)] {
        let line =
            format!("ringlb_tunnel_bytes_total{{upstream=\"app\",direction=\"{dir}\"}} {n}\n");
        assert!(text.contains(&line), "{line} in {text}");
    }
}

#[test]
fn websocket_over_h2_refused_by_the_upstream_is_its_normal_response() {
    let b = WsEcho::start();
    let proxy = ws_proxy(&b).start();
    run(async {
        let mut send = connect(proxy.addr).await;
        let (parts, _up, mut down) = open_ws(&mut send, "/refuse").await;
        assert_eq!(parts.status, StatusCode::BAD_REQUEST);
        assert_eq!(read_n(&mut down, 7).await, b"refused");
        assert_eq!(
            read_rest(&mut down).await,
            b"",
            "the response ends the stream"
        );
    });
    // An origin that ignores the upgrade and answers 200: not a tunnel, so not a 2xx.
    let plain = Backend::with_handler("plain", |_| Reply::ok("not a websocket"));
    let proxy = ProxyConfig::with_backends(&[&plain]).start();
    run(async {
        let mut send = connect(proxy.addr).await;
        let (parts, _up, _down) = open_ws(&mut send, "/x").await;
        assert_eq!(
            parts.status,
            StatusCode::BAD_GATEWAY,
            "a 200 without a switch would read as an open tunnel"
        );
    });
}

#[test]
fn websocket_over_h2_honours_the_upgrade_allow_list_and_plain_connect_stays_501() {
    let b = WsEcho::start();
    let proxy = ws_proxy(&b)
        .upstream_line("upgrade = { allow = [\"chat-v2\"] }")
        .start();
    run(async {
        let mut send = connect(proxy.addr).await;
        let (parts, _up, _down) = open_ws(&mut send, "/chat").await;
        assert_eq!(parts.status, StatusCode::NOT_IMPLEMENTED);
        // A protocol on the list goes through as an upgrade (the origin wants websocket's
        // key, so it answers a plain 200, which is not a tunnel).
        wait_extended_connect(&send).await;
        let mut s = send.clone().ready().await.unwrap();
        let (resp, _stream) = s
            .send_request(extended_connect("/chat", "chat-v2"), false)
            .unwrap();
        let resp = tokio::time::timeout(IO_TIMEOUT, resp)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        // CONNECT without :protocol: ringlb is no forward proxy.
        let req = Request::builder()
            .method("CONNECT")
            .uri("example.com:443")
            .body(())
            .unwrap();
        let mut s = send.clone().ready().await.unwrap();
        let (resp, _stream) = s.send_request(req, false).unwrap();
        let resp = tokio::time::timeout(IO_TIMEOUT, resp)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_IMPLEMENTED);
    });
    let heads = b.heads();
    assert_eq!(
        heads.len(),
        1,
        "only the allowed protocol reached the origin: {heads:?}"
    );
    assert_eq!(head_field(&heads[0], "upgrade"), Some("chat-v2"));
    assert!(head_field(&heads[0], "sec-websocket-key").is_none());
}

#[test]
fn an_idle_websocket_over_h2_is_closed_after_tunnel_idle() {
    let b = WsEcho::start();
    let proxy = ws_proxy(&b).timeout("tunnel_idle_ms", 300).start();
    run(async {
        let mut send = connect(proxy.addr).await;
        let (parts, mut up, mut down) = open_ws(&mut send, "/idle").await;
        assert_eq!(parts.status, StatusCode::OK);
        send_all(&mut up, Bytes::from_static(b"ping")).await;
        assert_eq!(read_n(&mut down, 4).await, b"ping");
        let start = Instant::now();
        // The proxy ends the stream (END_STREAM or a reset) once nothing moved for 300 ms.
        let rest = tokio::time::timeout(IO_TIMEOUT, async {
            let mut got = Vec::new();
            while let Some(Ok(chunk)) = down.data().await {
                got.extend_from_slice(&chunk);
            }
            got
        })
        .await
        .expect("the idle tunnel ends");
        let took = start.elapsed();
        assert!(rest.is_empty(), "{rest:?}");
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(3),
            "{took:?}"
        );
    });
}

#[test]
fn interim_responses_are_relayed_as_informational_headers() {
    let a = Backend::with_handler("a", |_| {
        Reply::ok("final")
            .interim(103, &[("link", "</style.css>; rel=preload")])
            .interim(103, &[("link", "</app.js>; rel=preload")])
    });
    let proxy = ProxyConfig::with_backends(&[&a]).start();
    run(async {
        let send = connect(proxy.addr).await;
        let mut send = send.ready().await.expect("ready");
        let (mut resp, _) = send.send_request(get("/hints"), true).expect("send");
        let mut hints = Vec::new();
        loop {
            let next = tokio::time::timeout(
                IO_TIMEOUT,
                std::future::poll_fn(|cx| resp.poll_informational(cx)),
            )
            .await
            .expect("interim or the final head in time");
            match next {
                Some(Ok(r)) => {
                    assert_eq!(r.status(), StatusCode::EARLY_HINTS);
                    hints.push(r.headers()["link"].to_str().unwrap().to_string());
                }
                Some(Err(e)) => panic!("{e}"),
                None => break,
            }
        }
        assert_eq!(
            hints,
            ["</style.css>; rel=preload", "</app.js>; rel=preload"]
        );
        let resp = tokio::time::timeout(IO_TIMEOUT, resp)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        assert_eq!(read_rest(&mut body).await, b"final");
    });
}

#[test]
fn expect_100_continue_gets_an_informational_100_before_the_final_response() {
    let a = Backend::with_handler("a", |r| Reply::ok(format!("got {}", r.body_str())));
    let proxy = ProxyConfig::with_backends(&[&a]).start();
    run(async {
        let send = connect(proxy.addr).await;
        let mut send = send.ready().await.expect("ready");
        let req = Request::post("http://example.test/up")
            .header("expect", "100-continue")
            .header("content-length", "4")
            .body(())
            .unwrap();
        let (mut resp, mut body) = send.send_request(req, false).expect("send");
        let first = tokio::time::timeout(
            IO_TIMEOUT,
            std::future::poll_fn(|cx| resp.poll_informational(cx)),
        )
        .await
        .expect("a 100 before the body was sent");
        assert_eq!(first.unwrap().unwrap().status(), StatusCode::CONTINUE);
        body.send_data(Bytes::from_static(b"data"), true).unwrap();
        let resp = tokio::time::timeout(IO_TIMEOUT, resp)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(read_rest(&mut resp.into_body()).await, b"got data");
    });
}

// --- HTTP/2 over TLS to upstreams (`protocol = "h2"` / `"auto"`) ---

/// TlsFront terminates TLS (a self-signed certificate, the given ALPN list) and relays each
/// connection's plaintext to `target`: in front of an [`H2Backend`] it is an HTTP/2-over-TLS
/// origin, in front of a [`Backend`] an HTTP/1.1-over-TLS one. It records the protocol each
/// handshake chose.
struct TlsFront {
    addr: SocketAddr,
    chosen: std::sync::Arc<std::sync::Mutex<Vec<Option<Vec<u8>>>>>,
}

impl TlsFront {
    fn start(alpn: &[&[u8]], target: SocketAddr) -> TlsFront {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = key.cert.der().clone();
        let pkcs8 = PrivatePkcs8KeyDer::from(key.signing_key.serialize_der());
        let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], PrivateKeyDer::Pkcs8(pkcs8))
        .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let config = std::sync::Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let chosen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = chosen.clone();
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { return };
                let (config, log) = (config.clone(), log.clone());
                std::thread::spawn(move || {
                    let _ = tls_relay(config, tcp, target, &log);
                });
            }
        });
        TlsFront { addr, chosen }
    }

    /// The ALPN choice of each handshake so far.
    fn chosen(&self) -> Vec<Option<Vec<u8>>> {
        self.chosen.lock().unwrap().clone()
    }
}

fn tls_relay(
    config: std::sync::Arc<rustls::ServerConfig>,
    mut tcp: StdTcpStream,
    target: SocketAddr,
    log: &std::sync::Mutex<Vec<Option<Vec<u8>>>>,
) -> std::io::Result<()> {
    let mut conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    log.lock()
        .unwrap()
        .push(conn.alpn_protocol().map(|p| p.to_vec()));
    let mut plain = StdTcpStream::connect(target)?;
    let tick = Some(Duration::from_millis(2));
    tcp.set_read_timeout(tick)?;
    plain.set_read_timeout(tick)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut buf = vec![0u8; 64 * 1024];
    let idle = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    };
    loop {
        match tls.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => plain.write_all(&buf[..n])?,
            Err(e) if idle(&e) => {}
            Err(e) => return Err(e),
        }
        match plain.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                tls.write_all(&buf[..n])?;
                tls.flush()?;
            }
            Err(e) if idle(&e) => {}
            Err(e) => return Err(e),
        }
    }
}

/// A proxy whose upstream `app` has `protocol` over TLS (no verification: the fronts'
/// certificates are self-signed) to `peer`.
fn tls_upstream(protocol: &str, peer: SocketAddr, extra: &str) -> Proxy {
    Proxy::start(
        &ProxyConfig::new()
            .upstream("app", "round_robin", &[common::peer(peer)])
            .upstream_line(&format!("protocol = \"{protocol}\""))
            .upstream_line("tls = { enabled = true, verify = false, sni = \"localhost\" }")
            .upstream_line(extra)
            .toml()
            .replace("admin = \"\"", "admin = \"127.0.0.1:0\""),
    )
}

#[test]
fn upstream_h2_over_tls_multiplexes_requests_on_one_connection() {
    let origin = H2Backend::start(100, None, |r| H2Answer::ok(format!("h2 {}", r.path)));
    let front = TlsFront::start(&[b"h2", b"http/1.1"], origin.addr);
    let proxy = tls_upstream("h2", front.addr, "");
    for i in 0..3 {
        let r = proxy
            .client()
            .roundtrip(format!("GET /n/{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        assert_eq!(r.status, 200, "{}", r.body_str());
        assert_eq!(r.body_str(), format!("h2 /n/{i}"));
    }
    // Reached over TLS: `:scheme https` (RFC 9113 §8.3.1).
    let schemes: Vec<String> = origin.requests().iter().map(|r| r.scheme.clone()).collect();
    assert_eq!(schemes, ["https", "https", "https"]);
    // An HTTP/2 client's streams go the same way.
    run(async {
        let mut send = connect(proxy.addr).await;
        let (parts, body, _) = roundtrip(&mut send, get("/from-h2"), b"").await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(body, b"h2 /from-h2");
    });
    // The origin speaks only HTTP/2: every request arrived over it, on one TLS connection
    // that chose h2 by ALPN.
    assert_eq!(origin.requests().len(), 4);
    assert_eq!(origin.accepts(), 1);
    assert_eq!(front.chosen(), [Some(b"h2".to_vec())]);
}

#[test]
fn upstream_h2_against_an_http1_only_tls_peer_is_a_tls_failure() {
    let origin = Backend::start("h1-only");
    // One peer refuses the ALPN offer (no protocol in common: a TLS alert), the other one
    // completes the handshake without choosing any protocol (no ALPN support).
    for alpn in [&[&b"http/1.1"[..]][..], &[]] {
        let front = TlsFront::start(alpn, origin.addr());
        let proxy = tls_upstream("h2", front.addr, "retry = { max_retries = 0 }");
        let r = proxy
            .client()
            .roundtrip(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(r.status, 502, "{}", r.body_str());
        let admin = proxy.server().admin_addr().unwrap();
        let text = Client::connect(admin)
            .roundtrip(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
            .body_str();
        let line = format!(
            "ringlb_peer_failures_total{{upstream=\"app\",peer=\"{}\",kind=\"tls_failure\"}} 1\n",
            front.addr
        );
        assert!(text.contains(&line), "{alpn:?}: {line} in {text}");
    }
    assert_eq!(origin.request_count(), 0, "nothing went over HTTP/1.1");
}

#[test]
fn upstream_auto_speaks_what_the_peer_chose_by_alpn() {
    // A peer that picks http/1.1: HTTP/1.1 over TLS, pooled.
    let origin = Backend::with_handler("h1", |r| Reply::ok(format!("h1 {}", r.target)));
    let front = TlsFront::start(&[b"http/1.1"], origin.addr());
    let proxy = tls_upstream("auto", front.addr, "");
    for i in 0..3 {
        let r = proxy
            .client()
            .roundtrip(format!("GET /a/{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        assert_eq!(r.status, 200);
        assert_eq!(r.body_str(), format!("h1 /a/{i}"));
    }
    assert!(origin.requests().iter().all(|r| r.version == "HTTP/1.1"));
    assert_eq!(
        front.chosen(),
        [Some(b"http/1.1".to_vec())],
        "one pooled connection"
    );
    drop(proxy);
    // A peer that picks h2: HTTP/2.
    let h2origin = H2Backend::start(100, None, |r| H2Answer::ok(format!("h2 {}", r.path)));
    let h2front = TlsFront::start(&[b"h2", b"http/1.1"], h2origin.addr);
    let proxy = tls_upstream("auto", h2front.addr, "");
    for i in 0..2 {
        let r = proxy
            .client()
            .roundtrip(format!("GET /b/{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        assert_eq!(r.status, 200);
        assert_eq!(r.body_str(), format!("h2 /b/{i}"));
    }
    assert_eq!(h2origin.requests().len(), 2);
    assert_eq!(h2front.chosen(), [Some(b"h2".to_vec())]);
}

#[test]
fn upstream_h2_and_auto_need_tls_and_h2c_refuses_it() {
    let b = Backend::start("b");
    let base = ProxyConfig::with_backends(&[&b]);
    let load = |lines: &[&str]| {
        let mut cfg = base.clone();
        for l in lines {
            cfg = cfg.upstream_line(l);
        }
        ringlb::config::Config::from_toml_str(&cfg.toml(), "t.toml").map_err(|e| e.to_string())
    };
    for p in ["h2", "auto"] {
        let err = load(&[&format!("protocol = \"{p}\"")]).unwrap_err();
        assert!(err.contains("upstream[0].protocol"), "{err}");
        assert!(err.contains("needs TLS"), "{err}");
    }
    let err = load(&["protocol = \"h2c\"", "tls = { enabled = true }"]).unwrap_err();
    assert!(err.contains("\"h2c\" is HTTP/2 without TLS"), "{err}");
    let err = load(&[
        "protocol = \"h2\"",
        "tls = { enabled = true, alpn = [\"http/1.1\"] }",
    ])
    .unwrap_err();
    assert!(err.contains("upstream[0].tls.alpn"), "{err}");
}

#[test]
fn a_cleartext_listener_with_h2_false_takes_no_preface_while_another_one_does() {
    let a = Backend::with_handler("a", |_| Reply::ok("a"));
    let toml = ProxyConfig::with_backends(&[&a]).toml();
    let toml = toml.replacen(
        "listen = [\"127.0.0.1:0\"]",
        "listen = [{ address = \"127.0.0.1:0\", h2 = false }, \"127.0.0.2:0\"]",
        1,
    );
    assert!(toml.contains("h2 = false"), "{toml}");
    let proxy = Proxy::start(&toml);
    let addrs = proxy.server().listen_addrs();
    let (off, on) = (addrs[0], addrs[1]);
    let mut s = StdTcpStream::connect(off).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    // HTTP/1.1 on it works; the other listener still takes h2c.
    let r = Client::connect(off).roundtrip(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 200);
    run(async {
        let mut send = connect(on).await;
        let (parts, body, _) = roundtrip(&mut send, get("/"), b"").await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(body, b"a");
    });
}

#[test]
fn upstream_h2_connections_are_not_shared_between_different_tls_settings() {
    let origin = H2Backend::start(100, None, |r| H2Answer::ok(format!("h2 {}", r.path)));
    let front = TlsFront::start(&[b"h2"], origin.addr);
    let tls = |sni: &str| format!("tls = {{ enabled = true, verify = false, sni = \"{sni}\" }}");
    let proxy = ProxyConfig::new()
        .upstream("a", "round_robin", &[common::peer(front.addr)])
        .upstream_line("protocol = \"h2\"")
        .upstream_line(&tls("a.test"))
        .upstream("b", "round_robin", &[common::peer(front.addr)])
        .upstream_line("protocol = \"h2\"")
        .upstream_line(&tls("b.test"))
        .route(&["path_prefix = \"/b/\""], "b")
        .route(&[], "a")
        .start();
    for path in ["/a/1", "/b/1", "/a/2", "/b/2"] {
        let r = proxy
            .client()
            .roundtrip(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        assert_eq!(r.status, 200);
        assert_eq!(r.body_str(), format!("h2 {path}"));
    }
    // One multiplexed connection per TLS identity, each reused.
    assert_eq!(front.chosen().len(), 2);
    assert_eq!(origin.accepts(), 2);
}

// --- Upgrades toward an HTTP/2 upstream (RFC 8441 extended CONNECT sent by ringlb) ---

/// A CONNECT as an extended-CONNECT backend received it.
#[derive(Debug, Clone)]
struct WsSeen {
    method: String,
    protocol: Option<String>,
    path: String,
    authority: String,
    headers: http::HeaderMap,
}

/// H2WsOrigin is an h2c origin for upgrades: with `enable` it sends
/// SETTINGS_ENABLE_CONNECT_PROTOCOL. An extended CONNECT is answered `200` with
/// `x-origin: ws-echo` and every DATA byte is echoed back; after the client's END_STREAM it
/// sends `bye` and ends its side. `/forbid` is answered `403 forbidden`; any other request
/// `200 plain`. `max_streams` is its SETTINGS_MAX_CONCURRENT_STREAMS.
struct H2WsOrigin {
    addr: SocketAddr,
    accepts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<WsSeen>>>,
    /// Tunnels whose END_STREAM from the proxy arrived.
    ended: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl H2WsOrigin {
    fn start(enable: bool, max_streams: u32) -> H2WsOrigin {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(AtomicUsize::new(0));
        let (acc, seen2, ended2) = (accepts.clone(), seen.clone(), ended.clone());
        std::thread::spawn(move || {
            run(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while let Ok((tcp, _)) = listener.accept().await {
                    acc.fetch_add(1, Ordering::SeqCst);
                    let (seen, ended) = (seen2.clone(), ended2.clone());
                    tokio::spawn(async move {
                        let mut b = h2::server::Builder::new();
                        b.max_concurrent_streams(max_streams);
                        if enable {
                            b.enable_connect_protocol();
                        }
                        let Ok(mut conn) = b.handshake::<_, Bytes>(tcp).await else {
                            return;
                        };
                        while let Some(Ok((req, respond))) = conn.accept().await {
                            let (seen, ended) = (seen.clone(), ended.clone());
                            tokio::spawn(ws_origin_stream(req, respond, seen, ended));
                        }
                    });
                }
            });
        });
        H2WsOrigin {
            addr,
            accepts,
            seen,
            ended,
        }
    }

    fn seen(&self) -> Vec<WsSeen> {
        self.seen.lock().unwrap().clone()
    }

    fn accepts(&self) -> usize {
        self.accepts.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn ended(&self) -> usize {
        self.ended.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// One stream of [`H2WsOrigin`].
async fn ws_origin_stream(
    req: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<WsSeen>>>,
    ended: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let (parts, mut body) = req.into_parts();
    let protocol = parts
        .extensions
        .get::<h2::ext::Protocol>()
        .map(|p| p.as_str().to_string());
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    seen.lock().unwrap().push(WsSeen {
        method: parts.method.to_string(),
        protocol: protocol.clone(),
        path: path.clone(),
        authority: parts
            .uri
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        headers: parts.headers,
    });
    let answer = |status: u16, text: &str| {
        http::Response::builder()
            .status(status)
            .header("content-length", text.len())
            .body(())
            .unwrap()
    };
    if path == "/forbid" {
        if let Ok(mut s) = respond.send_response(answer(403, "forbidden"), false) {
            let _ = s.send_data(Bytes::from_static(b"forbidden"), true);
        }
        return;
    }
    if parts.method != http::Method::CONNECT || protocol.is_none() {
        while let Some(Ok(c)) = body.data().await {
            let _ = body.flow_control().release_capacity(c.len());
        }
        if let Ok(mut s) = respond.send_response(answer(200, "plain"), false) {
            let _ = s.send_data(Bytes::from_static(b"plain"), true);
        }
        return;
    }
    let resp = http::Response::builder()
        .status(200)
        .header("x-origin", "ws-echo")
        .body(())
        .unwrap();
    let Ok(mut out) = respond.send_response(resp, false) else {
        return;
    };
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else { return };
        let _ = body.flow_control().release_capacity(chunk.len());
        send_all(&mut out, chunk).await;
    }
    ended.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    send_all(&mut out, Bytes::from_static(b"bye")).await;
    let _ = out.send_data(Bytes::new(), true);
}

/// A proxy whose upstream `app` speaks h2c to `origin` (with an admin listener).
fn h2c_ws_proxy(origin: &H2WsOrigin) -> Proxy {
    let toml = ProxyConfig::new()
        .upstream_with(
            "app",
            "round_robin",
            &["protocol = \"h2c\""],
            &[peer(origin.addr)],
        )
        .toml()
        .replace("admin = \"\"", "admin = \"127.0.0.1:0\"");
    Proxy::start(&toml)
}

/// An HTTP/1.1 WebSocket handshake for `path` with `key`.
fn ws_handshake(path: &str, key: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: svc.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Reads one response head (through the blank line) byte by byte, so nothing after it is
/// consumed.
fn read_raw_head(s: &mut StdTcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).expect("read head"), 1, "closed in the head");
        head.push(b[0]);
    }
    String::from_utf8(head).expect("ASCII head")
}

/// A connection to the proxy with the suite's timeouts.
fn raw_client(addr: SocketAddr) -> StdTcpStream {
    let s = StdTcpStream::connect(addr).expect("connect to the proxy");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Sends `frame` from a thread of its own (the echo comes back meanwhile) and reads as many
/// bytes back.
fn echo_round(s: &mut StdTcpStream, frame: Vec<u8>) -> Vec<u8> {
    let mut w = s.try_clone().unwrap();
    let n = frame.len();
    let writer = std::thread::spawn(move || w.write_all(&frame).expect("send frame"));
    let mut back = vec![0u8; n];
    s.read_exact(&mut back).expect("echo");
    writer.join().unwrap();
    back
}

/// What every extended CONNECT the proxy sent must look like.
fn assert_extended_connect(seen: &WsSeen, path: &str) {
    assert_eq!(seen.method, "CONNECT", "{seen:?}");
    assert_eq!(seen.protocol.as_deref(), Some("websocket"), "{seen:?}");
    assert_eq!(seen.path, path, "{seen:?}");
    assert_eq!(seen.authority, "svc.test", "{seen:?}");
    assert!(
        seen.headers.get("sec-websocket-key").is_none(),
        "RFC 8441 §5: no key over HTTP/2: {seen:?}"
    );
    for f in ["upgrade", "connection", "host"] {
        assert!(seen.headers.get(f).is_none(), "{f}: {seen:?}");
    }
    assert_eq!(seen.headers["sec-websocket-version"], "13", "{seen:?}");
}

#[test]
fn an_http1_websocket_to_an_h2c_upstream_is_an_extended_connect_tunnel() {
    // One stream per connection at the origin: a plain request while the tunnel is open
    // needs a second connection, which shows the tunnel holds its stream.
    let origin = H2WsOrigin::start(true, 1);
    let proxy = h2c_ws_proxy(&origin);
    let mut s = raw_client(proxy.addr);
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    s.write_all(ws_handshake("/chat?room=1", key).as_bytes())
        .unwrap();
    let head = read_raw_head(&mut s);
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    assert_eq!(
        head_field(&head, "sec-websocket-accept"),
        Some(ws_accept_key(key).as_str()),
        "{head}"
    );
    assert_eq!(
        head_field(&head, "sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "RFC 6455's example"
    );
    assert!(
        head_field(&head, "upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")),
        "{head}"
    );
    assert!(
        head_field(&head, "connection").is_some_and(|c| c.eq_ignore_ascii_case("upgrade")),
        "{head}"
    );
    assert_eq!(head_field(&head, "x-origin"), Some("ws-echo"), "{head}");
    assert!(head_field(&head, "content-length").is_none(), "{head}");
    assert!(head_field(&head, "transfer-encoding").is_none(), "{head}");

    let mut sent = 0usize;
    for i in 0..12u8 {
        let n = match i {
            0 => 0,
            1 => 256 * 1024,
            _ => fastrand::usize(1..=256 * 1024),
        };
        let payload: Vec<u8> = (0..n).map(|_| fastrand::u8(..)).collect();
        let frame = ws_client_frame(2, &payload, fastrand::u32(..).to_be_bytes());
        sent += frame.len();
        let back = echo_round(&mut s, frame.clone());
        assert!(back == frame, "frame {i} of {n} bytes echoed byte-exact");
    }

    // While the tunnel is open its stream is taken: a plain request opens another connection.
    let r = proxy
        .client()
        .roundtrip(b"GET /plain HTTP/1.1\r\nHost: svc.test\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "plain");
    assert_eq!(origin.accepts(), 2, "the tunnel holds its stream");

    let admin = proxy.server().admin_addr().unwrap();
    let metrics = || {
        Client::connect(admin)
            .roundtrip(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
            .body_str()
    };
    let text = metrics();
    assert!(
        text.contains("ringlb_tunnels_active{upstream=\"app\"} 1\n"),
        "{text}"
    );

    // Half-close ends it: the origin answers, then ends its side.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("the rest until the close");
    assert_eq!(rest, b"bye");
    assert_eq!(origin.ended(), 1);

    let seen = origin.seen();
    assert_extended_connect(&seen[0], "/chat?room=1");

    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = metrics();
        if text.contains("ringlb_tunnels_active{upstream=\"app\"} 0\n") || Instant::now() > deadline
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        text.contains("ringlb_tunnels_total{upstream=\"app\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("ringlb_tunnels_active{upstream=\"app\"} 0\n"),
        "{text}"
    );
    for (dir, n) in [("upstream", sent), ("downstream", sent + 3)] {
        let line =
            format!("ringlb_tunnel_bytes_total{{upstream=\"app\",direction=\"{dir}\"}} {n}\n");
        assert!(text.contains(&line), "{line} in {text}");
    }
}

#[test]
fn a_half_closed_tunnel_to_an_h2c_upstream_still_carries_the_origins_bytes() {
    let origin = H2WsOrigin::start(true, 100);
    let proxy = h2c_ws_proxy(&origin);
    let mut s = raw_client(proxy.addr);
    s.write_all(ws_handshake("/half", "x3JJHMbDL1EzLkh9GBhXDw==").as_bytes())
        .unwrap();
    let head = read_raw_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // The client's last bytes and its FIN together: the origin gets the bytes, then
    // END_STREAM, and answers after it.
    let frame = ws_client_frame(1, b"last words", [9, 8, 7, 6]);
    s.write_all(&frame).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).expect("echo, bye, close");
    let mut expected = frame.clone();
    expected.extend_from_slice(b"bye");
    assert_eq!(back, expected);
    assert_eq!(origin.ended(), 1, "the origin saw END_STREAM");
}

#[test]
fn an_h2_client_extended_connect_to_an_h2c_upstream_composes_end_to_end() {
    let origin = H2WsOrigin::start(true, 100);
    let proxy = h2c_ws_proxy(&origin);
    run(async {
        let mut send = connect(proxy.addr).await;
        // 200, frames echoed byte-exact, END_STREAM each way.
        ws_echo_session(&mut send).await;
        let (parts, body, _) = roundtrip(&mut send, get("/after"), b"").await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(body, b"plain");
    });
    assert_eq!(origin.ended(), 1);
    let seen = origin.seen();
    let tunnel = &seen[0];
    assert_eq!(tunnel.method, "CONNECT");
    assert_eq!(tunnel.protocol.as_deref(), Some("websocket"));
    assert_eq!(tunnel.path, "/chat?room=1");
    assert_eq!(tunnel.authority, "example.test");
    assert!(
        tunnel.headers.get("sec-websocket-key").is_none(),
        "{tunnel:?}"
    );
    assert_eq!(seen[1].method, "GET");
}

#[test]
fn an_upgrade_to_an_h2c_upstream_without_extended_connect_is_502() {
    let origin = H2WsOrigin::start(false, 100);
    let proxy = h2c_ws_proxy(&origin);
    // HTTP/1.1: ringlb's own 502, and the connection closes.
    let mut c = proxy.client();
    let r = c.roundtrip(ws_handshake("/chat", "dGhlIHNhbXBsZSBub25jZQ==").as_bytes());
    r.assert_proxy_error(502);
    assert!(
        r.body_str().contains("upgrades over HTTP/2"),
        "{}",
        r.body_str()
    );
    assert_eq!(r.header("connection"), Some("close"));
    c.expect_closed();
    // HTTP/2: a 502 on the stream.
    run(async {
        let mut send = connect(proxy.addr).await;
        let (parts, _up, _down) = open_ws(&mut send, "/chat").await;
        assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
    });
    assert!(
        origin.seen().is_empty(),
        "nothing reached the origin: {:?}",
        origin.seen()
    );
    // The peer is not blamed: plain requests go on to it.
    for _ in 0..3 {
        let r = proxy
            .client()
            .roundtrip(b"GET /plain HTTP/1.1\r\nHost: svc.test\r\n\r\n");
        assert_eq!(r.status, 200);
        assert_eq!(r.body_str(), "plain");
    }
    assert_eq!(origin.seen().len(), 3);
}

#[test]
fn an_h2c_upstream_refusing_the_extended_connect_is_its_response_on_a_kept_connection() {
    let origin = H2WsOrigin::start(true, 100);
    let proxy = h2c_ws_proxy(&origin);
    let mut c = proxy.client();
    let r = c.roundtrip(ws_handshake("/forbid", "dGhlIHNhbXBsZSBub25jZQ==").as_bytes());
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.head));
    assert_eq!(r.body_str(), "forbidden");
    assert!(r.header("sec-websocket-accept").is_none());
    assert!(r.header("upgrade").is_none());
    // The same connection serves the next request.
    let r = c.roundtrip(b"GET /next HTTP/1.1\r\nHost: svc.test\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "plain");
    let seen = origin.seen();
    assert_extended_connect(&seen[0], "/forbid");
    assert_eq!(seen[1].method, "GET");
    assert_eq!(seen[1].path, "/next");
}

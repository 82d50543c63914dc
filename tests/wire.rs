//! Requests are never dropped or misdelivered: pooled connections a backend closed, reset or
//! wrote into unasked; error answers that must survive a client still sending (lingering
//! close); `Expect: 100-continue` with backends that never send 100; HEAD error answers;
//! trailers and chunk framing; interim-response floods; non-chunked transfer codings.
//!
//! Every backend here misbehaves for real on its own socket; every assertion is on bytes the
//! client or the backend received.

mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

// ---------------------------------------------------------------------------------------------
// Raw backends.

/// The Content-Length of a request head (0 without one).
fn content_length(head: &str) -> u64 {
    head.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// IdleEnd is what a [`RawBackend`] does to a connection that stayed idle for its idle time.
#[derive(Clone, Copy, PartialEq, Eq)]
enum IdleEnd {
    /// Close it (FIN), as Node.js does after its keep-alive timeout.
    Close,
    /// Reset it (SO_LINGER 0).
    Reset,
    /// Keep it open.
    Keep,
}

/// RawBackend answers each request with `200` and a body naming the request (its method,
/// target and body), reading Content-Length bodies; its connections end as `idle_end` says
/// after `idle` without a request. `after` bytes, if any, are written on the connection
/// `after_delay` after each response (an unsolicited second response).
struct RawBackend {
    addr: SocketAddr,
    /// Every request as "METHOD TARGET BODY", in arrival order.
    seen: Arc<Mutex<Vec<String>>>,
    accepts: Arc<AtomicUsize>,
    /// Unsolicited responses written so far.
    strays: Arc<AtomicUsize>,
}

impl RawBackend {
    fn start(idle: Duration, idle_end: IdleEnd, after: Option<(&'static [u8], Duration)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let accepts = Arc::new(AtomicUsize::new(0));
        let strays = Arc::new(AtomicUsize::new(0));
        let (s, a, st) = (seen.clone(), accepts.clone(), strays.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                let (s, st) = (s.clone(), st.clone());
                thread::spawn(move || raw_serve(stream, idle, idle_end, after, s, st));
            }
        });
        RawBackend {
            addr,
            seen,
            accepts,
            strays,
        }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn raw_serve(
    stream: TcpStream,
    idle: Duration,
    idle_end: IdleEnd,
    after: Option<(&'static [u8], Duration)>,
    seen: Arc<Mutex<Vec<String>>>,
    strays: Arc<AtomicUsize>,
) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(idle));
    let mut wire = Wire::new(stream);
    loop {
        let head = match wire.read_head(1 << 20) {
            Ok(h) => h,
            Err(ReadErr::Timeout(_)) => {
                match idle_end {
                    IdleEnd::Close => {
                        let _ = wire.stream().shutdown(Shutdown::Both);
                    }
                    IdleEnd::Reset => {
                        let _ = socket2::SockRef::from(&*wire.stream())
                            .set_linger(Some(Duration::ZERO));
                    }
                    IdleEnd::Keep => continue,
                }
                return;
            }
            Err(_) => return,
        };
        let text = String::from_utf8_lossy(&head).to_string();
        let line = text.lines().next().unwrap_or_default().to_string();
        let mut parts = line.split(' ');
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let len = content_length(&text);
        let mut body = Vec::new();
        if wire
            .read_exact_to(len, &mut |d| body.extend_from_slice(d))
            .is_err()
        {
            return;
        }
        let name = format!("{method} {target} {}", String::from_utf8_lossy(&body));
        seen.lock().unwrap().push(name.clone());
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{name}",
            name.len()
        );
        if wire.stream().write_all(reply.as_bytes()).is_err() {
            return;
        }
        if let Some((bytes, delay)) = after {
            thread::sleep(delay);
            if wire.stream().write_all(bytes).is_err() {
                return;
            }
            strays.fetch_add(1, Ordering::SeqCst);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Pooled connections the backend closed or reset while idle.

/// 20 POSTs, 1.5 s apart, on one client connection, to a backend that ends idle connections
/// after 1 s: every one is answered 200 and reaches the backend exactly once.
fn posts_survive_idle_end(idle_end: IdleEnd) {
    let b = RawBackend::start(Duration::from_secs(1), idle_end, None);
    let proxy = ProxyConfig::new()
        .upstream("app", "round_robin", &[peer(b.addr)])
        .start();
    let mut c = proxy.client();
    for i in 0..20 {
        let r = c.roundtrip(&post(&format!("/p{i}"), format!("body-{i}").as_bytes()));
        assert_eq!(r.status, 200, "POST {i}: {}", show(&r.head));
        assert_eq!(r.body_str(), format!("POST /p{i} body-{i}"));
        thread::sleep(Duration::from_millis(1500));
    }
    let want: Vec<String> = (0..20).map(|i| format!("POST /p{i} body-{i}")).collect();
    assert_eq!(b.seen(), want, "each POST exactly once, in order");
    // Each POST found its pooled connection dead and opened a fresh one.
    assert_eq!(b.accepts.load(Ordering::SeqCst), 20);
}

#[test]
fn post_after_backend_closed_idle_pooled_connection() {
    posts_survive_idle_end(IdleEnd::Close);
}

#[test]
fn post_after_backend_reset_idle_pooled_connection() {
    posts_survive_idle_end(IdleEnd::Reset);
}

/// A backend that writes a second, unsolicited response 100 ms after each real one: the
/// stolen bytes, which land on the pooled connection while it is idle, must never reach
/// another request (a cross-user leak); the poisoned connection is closed instead of reused.
#[test]
fn unsolicited_response_on_idle_pooled_connection_is_never_delivered() {
    const STOLEN: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 18\r\n\r\nSTOLEN-0123456789A";
    let b = RawBackend::start(
        Duration::from_secs(30),
        IdleEnd::Keep,
        Some((STOLEN, Duration::from_millis(100))),
    );
    let proxy = ProxyConfig::new()
        .upstream("app", "round_robin", &[peer(b.addr)])
        .start();
    for i in 0..40 {
        // A new client each time: the leak would reach another user.
        let mut c = proxy.client();
        let r = c.roundtrip(&get(&format!("/u{i}")));
        assert_eq!(r.status, 200);
        assert_eq!(r.body_str(), format!("GET /u{i} "), "request {i}");
        // Let the stray response land on the idle pooled connection before the next request.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while b.strays.load(Ordering::SeqCst) < i + 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "stray {i} never written"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
    assert_eq!(b.seen().len(), 40);
    // Every poisoned connection was closed: one connection per request.
    assert_eq!(b.accepts.load(Ordering::SeqCst), 40);
}

// ---------------------------------------------------------------------------------------------
// 2. Error answers reach a client that is still sending (lingering close).

/// Sends `req` the way a client on a real network does, in 8 KiB pieces as the window
/// allows, every one of which must be taken (a reset fails the upload, as it fails curl's),
/// then reads the answer's status line.
fn answer_after_sending(addr: SocketAddr, req: &[u8]) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    for (i, piece) in req.chunks(8192).enumerate() {
        s.write_all(piece)
            .map_err(|e| format!("sending piece {i}: {e}"))?;
        if i < 8 {
            // The first pieces trickle, so the answer comes while the client still sends.
            thread::sleep(Duration::from_millis(1));
        }
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while find(&got, b"\r\n").is_none() {
        match s.read(&mut buf) {
            Ok(0) => return Err(format!("closed after {:?}", show(&got))),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("reading: {e} after {:?}", show(&got))),
        }
    }
    let line = String::from_utf8_lossy(&got);
    Ok(line.lines().next().unwrap_or_default().to_string())
}

#[test]
fn error_answers_survive_a_client_still_sending() {
    let b = Backend::start("a");
    let proxy = ProxyConfig::with_backends(&[&b])
        .limit("max_body_bytes", 1024)
        .start();
    let big_head = {
        let mut r = b"GET / HTTP/1.1\r\nHost: t\r\n".to_vec();
        for i in 0..400 {
            r.extend_from_slice(format!("X-Fill-{i}: {}\r\n", "f".repeat(90)).as_bytes());
        }
        r.extend_from_slice(b"\r\n");
        assert!(r.len() > 40_000);
        r
    };
    let big_body = {
        let mut r = b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n\r\n".to_vec();
        r.resize(r.len() + 10_000_000, b'b');
        r
    };
    let long_url = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "u".repeat(20_000));
    let long_url = long_url.into_bytes();
    for (req, want) in [
        (big_head, "HTTP/1.1 431 Request Header Fields Too Large"),
        (big_body, "HTTP/1.1 413 Content Too Large"),
        (long_url, "HTTP/1.1 414 URI Too Long"),
    ] {
        for i in 0..50 {
            let got = answer_after_sending(proxy.addr, &req);
            assert_eq!(got.as_deref(), Ok(want), "try {i}");
        }
    }
    assert_eq!(b.request_count(), 0);
}

/// A 320 KB pipelined burst with junk near its end: every request before the junk is
/// answered, then the 400, the connection ends in a clean close, and the client's upload of
/// the rest of the burst is taken (discarded), not reset.
#[test]
fn pipelined_burst_ending_in_junk_gets_every_answer() {
    let b = Backend::with_handler("a", |r| Reply::ok(r.target.clone()));
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let pad = "p".repeat(960);
    let request = |n: usize| format!("GET /r{n} HTTP/1.1\r\nHost: t\r\nX-Pad: {pad}\r\n\r\n");
    let mut burst = Vec::new();
    let mut n = 0;
    while burst.len() < 320 * 1024 {
        burst.extend_from_slice(request(n).as_bytes());
        n += 1;
    }
    burst.extend_from_slice(b"JUNK\x01\x02 not http\r\n\r\n");
    // What a client pipelining blindly goes on sending after the junk, as the network lets
    // it: never answered, but it must not reset the connection.
    let after: Vec<Vec<u8>> = (0..100).map(|i| request(n + i).into_bytes()).collect();
    let mut c = proxy.client();
    let s = c.stream().try_clone().unwrap();
    let writer = thread::spawn(move || {
        let mut s = s;
        s.write_all(&burst)?;
        for r in after {
            thread::sleep(Duration::from_millis(5));
            s.write_all(&r)?;
        }
        Ok::<(), io::Error>(())
    });
    for i in 0..n {
        let r = c
            .try_response(false)
            .unwrap_or_else(|e| panic!("response {i} of {n}: {e}"));
        assert_eq!((r.status, r.body_str()), (200, format!("/r{i}")));
    }
    let r = c.try_response(false).expect("the 400 for the junk");
    assert_eq!(r.status, 400);
    c.expect_closed();
    writer.join().unwrap().expect("the whole burst was taken");
    assert_eq!(b.request_count(), n);
}

/// Writes 100 bytes every 50 ms until a write fails (the proxy closed for good, so its
/// kernel answered with a reset); returns how long that took, at most `limit`.
fn write_until_cut(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if s.write_all(&[b'x'; 100]).is_err() {
            return Some(t.elapsed());
        }
        thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Lingering is bounded: a client that keeps sending after its error answer is cut off after
/// `lingering_time_ms`, and one that goes silent after `lingering_timeout_ms`.
#[test]
fn lingering_close_is_bounded() {
    let b = Backend::start("a");
    let proxy = ProxyConfig::with_backends(&[&b])
        .limit("max_body_bytes", 10)
        .limit("lingering_time_ms", 1000)
        .limit("lingering_timeout_ms", 300)
        .start();
    let big_post = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\n";

    // Sending a trickle for ever: read and discarded, then cut off after lingering_time.
    let mut c = proxy.client();
    c.send(big_post);
    assert_eq!(c.response().status, 413);
    let mut s = c.stream().try_clone().unwrap();
    let cut = write_until_cut(&mut s, Duration::from_secs(5)).expect("never cut off");
    assert!(cut >= Duration::from_millis(900), "{cut:?}");

    // Silent for longer than lingering_timeout: closed by then.
    let mut c = proxy.client();
    c.send(big_post);
    assert_eq!(c.response().status, 413);
    thread::sleep(Duration::from_millis(1500));
    let mut s = c.stream().try_clone().unwrap();
    let cut = write_until_cut(&mut s, Duration::from_secs(1)).expect("still lingering");
    assert!(cut < Duration::from_millis(1000), "{cut:?}");
}

// ---------------------------------------------------------------------------------------------
// 3. Expect: 100-continue with backends that never send 100.

/// A backend that reads the head, then (with `early`) answers at once without reading the
/// body, or otherwise reads a Content-Length body and answers 200 with it; it never sends
/// `100 Continue`. Records each head.
fn silent_continue_backend(early: Option<&'static str>) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let h = heads.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let h = h.clone();
            thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                let mut wire = Wire::new(stream);
                while let Ok(head) = wire.read_head(1 << 20) {
                    let text = String::from_utf8_lossy(&head).to_string();
                    h.lock().unwrap().push(text.clone());
                    if let Some(status) = early {
                        let reply = format!(
                            "HTTP/1.1 {status}\r\nContent-Length: 6\r\nConnection: close\r\n\r\nrefuse"
                        );
                        let _ = wire.stream().write_all(reply.as_bytes());
                        let _ = wire.stream().shutdown(Shutdown::Write);
                        thread::sleep(Duration::from_millis(500));
                        return;
                    }
                    let len = content_length(&text);
                    let mut got = 0u64;
                    if wire
                        .read_exact_to(len, &mut |d| got += d.len() as u64)
                        .is_err()
                    {
                        return;
                    }
                    let body = format!("got {got}");
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if wire.stream().write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, heads)
}

fn expect_proxy(addr: SocketAddr, expect_continue_ms: u64) -> Proxy {
    ProxyConfig::new()
        .timeout("expect_continue_ms", expect_continue_ms)
        .upstream("app", "round_robin", &[peer(addr)])
        .upstream_line("retry = { retry_body_bytes = 1024 }")
        .start()
}

/// Sends an `Expect: 100-continue` head for `len` body bytes and returns how long the first
/// answer took, with that answer.
fn expect_head(c: &mut Client, len: usize) -> (Duration, Response) {
    let t = Instant::now();
    c.send(
        format!(
            "POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\nExpect: 100-continue\r\n\r\n"
        )
        .as_bytes(),
    );
    let r = c.response();
    (t.elapsed(), r)
}

#[test]
fn expect_continue_kept_body_is_asked_for_at_once() {
    let (addr, heads) = silent_continue_backend(None);
    // A long wait for the upstream's 100 would only apply to a streamed body.
    let proxy = expect_proxy(addr, 5000);
    let mut c = proxy.client();
    let (took, interim) = expect_head(&mut c, 500);
    assert_eq!(interim.status, 100);
    assert!(
        took < Duration::from_millis(2500),
        "{took:?}: ringlb answers 100 itself, without waiting for the upstream"
    );
    c.send(&[b'k'; 500]);
    let r = c.response();
    assert_eq!((r.status, r.body_str()), (200, "got 500".to_string()));
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1);
    assert!(
        !heads[0].to_ascii_lowercase().contains("expect:"),
        "the upstream gets the whole request without the expectation: {}",
        heads[0]
    );
}

#[test]
fn expect_continue_streamed_body_does_not_stall_on_a_silent_backend() {
    let (addr, heads) = silent_continue_backend(None);
    let proxy = expect_proxy(addr, 100);
    let mut c = proxy.client();
    let (took, interim) = expect_head(&mut c, 200_000);
    assert_eq!(interim.status, 100);
    assert!(
        took >= Duration::from_millis(90),
        "{took:?}: the upstream was given its chance"
    );
    assert!(
        took < Duration::from_millis(900),
        "{took:?}: not the client's own 1 s timeout"
    );
    c.send(&vec![b's'; 200_000]);
    let r = c.response();
    assert_eq!((r.status, r.body_str()), (200, "got 200000".to_string()));
    let heads = heads.lock().unwrap().clone();
    assert!(
        heads[0]
            .to_ascii_lowercase()
            .contains("expect: 100-continue"),
        "a streamed body keeps the expectation: {}",
        heads[0]
    );
}

#[test]
fn expect_continue_streamed_body_refused_early_reaches_the_client() {
    for status in ["417 Expectation Failed", "401 Unauthorized"] {
        let (addr, _) = silent_continue_backend(Some(status));
        let proxy = expect_proxy(addr, 100);
        let mut c = proxy.client();
        let (_, r) = expect_head(&mut c, 200_000);
        assert_eq!(format!("{} {}", r.status, r.reason), status);
        assert_eq!(r.body_str(), "refuse");
        // The body was never read: the connection ends (cleanly) after the answer.
        c.expect_closed();
    }
}

#[test]
fn expect_continue_kept_body_refused_is_relayed() {
    let (addr, _) = silent_continue_backend(Some("401 Unauthorized"));
    let proxy = expect_proxy(addr, 100);
    let mut c = proxy.client();
    let (_, interim) = expect_head(&mut c, 100);
    assert_eq!(interim.status, 100);
    c.send(&[b'x'; 100]);
    let r = c.response();
    assert_eq!((r.status, r.body_str()), (401, "refuse".to_string()));
}

// ---------------------------------------------------------------------------------------------
// 5. Hostile backends and clients.

/// Reads what arrives until the peer closes or `wait` passes.
fn read_all(s: &mut TcpStream, wait: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[test]
fn head_error_answers_carry_no_body() {
    // A bad HEAD request: 400 head only, then close.
    let b = Backend::start("a");
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        .unwrap();
    let got = read_all(&mut s, IO_TIMEOUT);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    assert!(
        text.ends_with("\r\n\r\n"),
        "no body after the head: {text:?}"
    );

    // A HEAD ending in ringlb's 502 on a kept-alive connection: the next response starts
    // right after the head.
    let proxy = ProxyConfig::new()
        .upstream("app", "round_robin", &[peer(refusing_addr())])
        .start();
    let mut c = proxy.client();
    let r = c.roundtrip(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 502);
    assert!(r.header("content-length").is_some());
    let r = c.roundtrip(&get("/next"));
    assert_eq!(r.status, 502);
    assert!(
        r.body_str().starts_with("502 Bad Gateway"),
        "{}",
        r.body_str()
    );
}

#[test]
fn malformed_request_trailers_are_rejected_not_forwarded() {
    let b = Backend::start("a");
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    for trailers in [
        // A request line among the trailers.
        "GET /smug HTTP/1.1\r\nHost: a\r\n\r\n",
        // A folded trailer line.
        "X-A: 1\r\n  folded\r\n\r\n",
        // A colon-less line.
        "NoColonHere\r\n\r\n",
        // A control character in a value.
        "X-A: a\x01b\r\n\r\n",
    ] {
        let mut c = proxy.client();
        let req = format!(
            "POST /t HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n{trailers}"
        );
        let r = c.roundtrip(req.as_bytes());
        assert_eq!(r.status, 400, "trailers {trailers:?}");
    }
    // Nothing of it reached the backend.
    assert_eq!(b.heads_seen(), 0);
}

/// A backend that records the raw bytes of one request (head and chunked body up to the final
/// CRLF) and answers with `response`.
fn raw_recorder(response: &'static [u8]) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let rec = Arc::new(Mutex::new(Vec::new()));
    let r2 = rec.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
            let mut buf = [0u8; 8192];
            let mut got = Vec::new();
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        let head_end = find(&got, b"\r\n\r\n").map_or(usize::MAX, |i| i + 4);
                        let chunked = find(&got, b"chunked").is_some();
                        if head_end <= got.len()
                            && (!chunked || got[head_end..].ends_with(b"\r\n\r\n"))
                        {
                            break;
                        }
                    }
                }
            }
            *r2.lock().unwrap() = got;
            let _ = s.write_all(response);
            let _ = s.shutdown(Shutdown::Write);
            let _ = read_all(&mut s, Duration::from_millis(200));
        }
    });
    (addr, rec)
}

#[test]
fn chunk_framing_is_forwarded_canonically() {
    // Request side: whitespace and extensions after sizes are not copied through.
    let (addr, rec) =
        raw_recorder(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    let proxy = ProxyConfig::new()
        .upstream("app", "round_robin", &[peer(addr)])
        .start();
    let mut c = proxy.client();
    let r = c.roundtrip(
        b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n2;ext=\"v\"\r\nde\r\n0\t\r\nX-Sum: 5\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let got = rec.lock().unwrap().clone();
    let body = &got[find(&got, b"\r\n\r\n").unwrap() + 4..];
    assert_eq!(
        show(body),
        show(b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n")
    );

    // Response side, the same.
    let (addr, _) = raw_recorder(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4 ;a=b\r\nwxyz\r\n0  \r\nX-T: 1\r\n\r\n",
    );
    let proxy = ProxyConfig::new()
        .upstream("app", "round_robin", &[peer(addr)])
        .start();
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let got = read_all(&mut s, IO_TIMEOUT);
    let body = &got[find(&got, b"\r\n\r\n").unwrap() + 4..];
    assert_eq!(show(body), show(b"4\r\nwxyz\r\n0\r\nX-T: 1\r\n\r\n"));
}

#[test]
fn malformed_response_trailers_are_not_relayed() {
    let (addr, _) = raw_recorder(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nHTTP/1.1 200 OK\r\n\r\n",
    );
    let proxy = ProxyConfig::new()
        .upstream("app", "round_robin", &[peer(addr)])
        .start();
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.write_all(&get("/")).unwrap();
    let got = read_all(&mut s, IO_TIMEOUT);
    let text = String::from_utf8_lossy(&got);
    // The whole response arrived at once, so ringlb saw the bad trailer before it sent
    // anything: 502, and nothing of the upstream's bytes.
    assert!(text.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{text}");
    assert_eq!(text.matches("HTTP/1.1").count(), 1, "{text:?}");
    assert!(!text.contains("abc"), "{text:?}");
}

/// Sends a GET to a backend that answers with `interim` repeated `times` times, then a 200;
/// returns how many interim responses reached the client, and the final response.
fn relayed_interims(interim: &[u8], times: usize) -> (usize, Response) {
    let mut flood = interim.repeat(times);
    flood.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let b = Backend::with_handler("a", move |_| Reply::raw(flood.clone()));
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let mut c = proxy.client();
    c.send(&get("/"));
    let mut relayed = 0;
    loop {
        let r = c.response();
        if !(100..200).contains(&r.status) {
            return (relayed, r);
        }
        relayed += 1;
    }
}

#[test]
fn interim_response_flood_is_cut_off() {
    // A 100 after the first says nothing new: only one is relayed, and the flood stops at
    // `max_interim_responses` (16 by default) with a 502.
    let (relayed, last) = relayed_interims(b"HTTP/1.1 100 Continue\r\n\r\n", 40_000);
    assert_eq!(last.status, 502, "{}", show(&last.head));
    assert_eq!(relayed, 1);
    // Distinct interim responses: 16 relayed, then 502.
    let hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n";
    let (relayed, last) = relayed_interims(hints, 1000);
    assert_eq!(last.status, 502, "{}", show(&last.head));
    assert_eq!(relayed, 16);
}

#[test]
fn non_chunked_transfer_coding_keeps_its_header() {
    let payload = b"\x1f\x8b binary gzip-ish bytes 5\r\nhello\r\n0\r\n\r\n";
    let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n".to_vec();
    resp.extend_from_slice(payload);
    let resp: &'static [u8] = resp.leak();
    let (addr, _) = raw_recorder(resp);
    let proxy = ProxyConfig::new()
        .upstream("app", "round_robin", &[peer(addr)])
        .start();
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.write_all(&get("/")).unwrap();
    let got = read_all(&mut s, IO_TIMEOUT);
    let end = find(&got, b"\r\n\r\n").expect("a head") + 4;
    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(
        head.contains("\r\ntransfer-encoding: chunked, gzip\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    assert_eq!(
        &got[end..],
        payload,
        "the payload exactly as sent, delimited by the close"
    );

    // An HTTP/1.0 client cannot be told the codings: 502.
    let (addr, _) = raw_recorder(resp);
    let proxy = ProxyConfig::new()
        .upstream("app", "round_robin", &[peer(addr)])
        .start();
    let mut c = proxy.client();
    let r = c.roundtrip(b"GET / HTTP/1.0\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 502);
}

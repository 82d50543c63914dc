//! Fault injection: peers that refuse, close at once, reset after reading, hang, send garbage,
//! break off a body, or answer 503, and what the client sees through the failover machinery
//! (retry policy, retry budget, circuit breaker, per-try and request deadlines).
//!
//! Every test runs its own peers and an in-process proxy with one worker and round robin over
//! `[faulty, healthy]`, so the order of tries is known: the rotation starts at the faulty peer
//! and a retry goes to the next untried one. Hit counts are exact: a [`FaultPeer`] counts
//! accepted connections and complete requests before it misbehaves, a [`Backend`] counts each
//! request before answering it, so both are final once the client has its response.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The request body every POST here carries.
const BODY: &[u8] = b"payload";

/// `retry.on` with `invalid_response` added to the defaults.
const ON_WITH_INVALID: &str =
    "retry = { on = [\"connect_failure\", \"connect_timeout\", \"reset\", \
                               \"timeout\", \"invalid_response\", \"502\", \"503\", \"504\"] }";

/// A proxy (one worker, round robin) over `faulty` then `healthy`, with these upstream lines
/// (`retry = { … }`, `circuit_breaker = { … }`) and `[timeouts]` keys.
fn proxy_over(
    faulty: SocketAddr,
    healthy: SocketAddr,
    lines: &[&str],
    timeouts: &[(&str, u64)],
) -> Proxy {
    let mut cfg = ProxyConfig::new().upstream("app", "round_robin", &[peer(faulty), peer(healthy)]);
    for l in lines {
        cfg = cfg.upstream_line(l);
    }
    for (k, v) in timeouts {
        cfg = cfg.timeout(k, *v);
    }
    cfg.start()
}

/// A POST of [`BODY`] carrying `Idempotency-Key: key`.
fn post_with_key(path: &str, key: &str) -> Vec<u8> {
    let mut v = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nIdempotency-Key: {key}\r\nContent-Length: {}\r\n\r\n",
        BODY.len()
    )
    .into_bytes();
    v.extend_from_slice(BODY);
    v
}

/// Asserts a 200 whose body is the name of the backend that answered.
#[track_caller]
fn assert_served_by(r: &Response, name: &str) {
    assert_eq!(r.status, 200, "{}", show(&r.head));
    assert_eq!(
        r.body_str(),
        name,
        "served by the wrong peer: {}",
        show(&r.head)
    );
}

/// Whether a peer with this fault reads the requests it gets (all but accept-and-close and
/// stall, which never read).
fn reads_requests(fault: &Fault) -> bool {
    !matches!(fault, Fault::AcceptClose | Fault::Stall)
}

/// The faulty peer saw `n` connections, and read `n` complete requests on them if its fault
/// reads at all (0 if it does not).
#[track_caller]
fn assert_faulty_hits(a: &FaultPeer, n: usize) {
    assert_eq!(a.accepts(), n, "connections to the faulty peer");
    let read = if reads_requests(a.fault()) { n } else { 0 };
    assert_eq!(a.hits(), read, "requests the faulty peer read");
}

// ---------------------------------------------------------------------------------------------
// Scenarios shared by the faults.

/// GETs fail over: each one tries the faulty peer once, then gets its 200 from the healthy one;
/// the client connection stays usable throughout.
fn get_fails_over(fault: Fault, lines: &[&str], timeouts: &[(&str, u64)]) {
    let a = FaultPeer::start(fault);
    let b = Backend::start("b");
    let proxy = proxy_over(a.addr(), b.addr(), lines, timeouts);
    let mut c = proxy.client();
    for i in 1..=3 {
        let r = c.roundtrip(&get(&format!("/r{i}")));
        assert_served_by(&r, "b");
        assert_faulty_hits(&a, i);
        assert_eq!(b.request_count(), i);
        assert_eq!(b.requests()[i - 1].target, format!("/r{i}"));
    }
    assert!(b.errors().is_empty(), "{:?}", b.errors());
}

/// A POST without `Idempotency-Key` that reached the faulty peer is not sent again: the client
/// gets ringlb's `status` and the healthy peer is never contacted; the client connection stays
/// usable.
fn post_is_not_retried(fault: Fault, status: u16, timeouts: &[(&str, u64)]) -> Duration {
    let a = FaultPeer::start(fault);
    let b = Backend::start("b");
    let proxy = proxy_over(a.addr(), b.addr(), &[], timeouts);
    let mut c = proxy.client();
    let t = Instant::now();
    let r = c.roundtrip(&post("/p", BODY));
    let took = t.elapsed();
    r.assert_proxy_error(status);
    assert_faulty_hits(&a, 1);
    assert_eq!(b.accepts(), 0, "the POST must not reach the healthy peer");
    if reads_requests(a.fault()) {
        assert!(
            a.requests()[0].ends_with(BODY),
            "the faulty peer got the whole POST"
        );
    }
    // The error kept the client connection (the request was read completely); the rotation
    // moved on to b.
    assert_served_by(&c.roundtrip(&get("/after")), "b");
    assert_faulty_hits(&a, 1);
    assert_eq!(b.request_count(), 1);
    took
}

/// A POST with `Idempotency-Key` is replayed on the healthy peer, body and key intact.
fn keyed_post_is_retried(fault: Fault, lines: &[&str], timeouts: &[(&str, u64)]) {
    let a = FaultPeer::start(fault);
    let b = Backend::start("b");
    let proxy = proxy_over(a.addr(), b.addr(), lines, timeouts);
    let r = proxy.client().roundtrip(&post_with_key("/p", "k-1"));
    assert_served_by(&r, "b");
    assert_faulty_hits(&a, 1);
    let got = b.only_request();
    assert_eq!(got.method, "POST");
    assert_eq!(got.body, BODY);
    assert_eq!(got.header("idempotency-key"), Some("k-1"));
}

// ---------------------------------------------------------------------------------------------
// The fault peers themselves, without the proxy: a failure elsewhere is then the proxy's.

#[test]
fn fault_peers_misbehave_as_described() {
    use std::io::{ErrorKind, Write};
    let talk = |p: &FaultPeer, req: &[u8]| -> (Vec<u8>, Option<ErrorKind>) {
        let mut s = std::net::TcpStream::connect(p.addr()).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let _ = s.write_all(req);
        let mut got = Vec::new();
        let mut b = [0u8; 1024];
        loop {
            match s.read(&mut b) {
                Ok(0) => return (got, None),
                Ok(n) => got.extend_from_slice(&b[..n]),
                Err(e) => return (got, Some(e.kind())),
            }
        }
    };
    let timed_out =
        |k: Option<ErrorKind>| matches!(k, Some(ErrorKind::WouldBlock | ErrorKind::TimedOut));

    let p = FaultPeer::start(Fault::AcceptClose);
    let (got, err) = talk(&p, b"");
    assert!(got.is_empty() && !timed_out(err), "{err:?}");
    assert_eq!((p.accepts(), p.hits()), (1, 0));

    let p = FaultPeer::start(Fault::ResetAfterRead);
    let (got, err) = talk(&p, &post("/r", BODY));
    assert_eq!((got.len(), err), (0, Some(ErrorKind::ConnectionReset)));
    assert_eq!((p.accepts(), p.hits()), (1, 1));
    assert!(p.requests()[0].starts_with(b"POST /r ") && p.requests()[0].ends_with(BODY));

    let p = FaultPeer::start(Fault::Hang);
    let (got, err) = talk(&p, &get("/h"));
    assert!(got.is_empty() && timed_out(err), "{err:?}");
    assert_eq!(p.hits(), 1);

    let p = FaultPeer::answering(&b"HTTP/1.1 200 OK\r\n\r\n"[..]);
    assert_eq!(
        talk(&p, &get("/a")),
        (b"HTTP/1.1 200 OK\r\n\r\n".to_vec(), None)
    );
    assert_eq!(p.hits(), 1);

    let p = FaultPeer::start(Fault::ResetSecondRequest);
    let two = [get("/1"), get("/2")].concat();
    let (got, err) = talk(&p, &two);
    assert_eq!(got, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    assert_eq!(err, Some(ErrorKind::ConnectionReset));
    assert_eq!(p.hits(), 2);

    let p = FaultPeer::start(Fault::Stall);
    let (got, err) = talk(&p, &get("/s"));
    assert!(got.is_empty() && timed_out(err), "{err:?}");
    assert_eq!((p.accepts(), p.hits()), (1, 0));
}

// ---------------------------------------------------------------------------------------------
// Refuse: nothing listens on the port.

#[test]
fn refused_get_fails_over() {
    let b = Backend::start("b");
    let proxy = proxy_over(refusing_addr(), b.addr(), &[], &[]);
    let mut c = proxy.client();
    for i in 1..=3 {
        assert_served_by(&c.roundtrip(&get("/")), "b");
        assert_eq!(b.request_count(), i);
    }
}

/// A connect failure means the upstream never saw the request: even a POST without a key is
/// sent to another peer.
#[test]
fn refused_post_without_key_is_retried() {
    let b = Backend::start("b");
    let proxy = proxy_over(refusing_addr(), b.addr(), &[], &[]);
    let r = proxy.client().roundtrip(&post("/p", BODY));
    assert_served_by(&r, "b");
    let got = b.only_request();
    assert_eq!((got.method.as_str(), got.body.as_slice()), ("POST", BODY));
}

/// Failing over to an untried peer after a connect failure takes nothing from the retry
/// budget: with a budget of zero it still happens (compare `reset_failover_needs_budget`).
#[test]
fn refused_failover_needs_no_budget() {
    let b = Backend::start("b");
    let proxy = proxy_over(
        refusing_addr(),
        b.addr(),
        &["retry = { budget_percent = 0, min_retries_per_sec = 0 }"],
        &[],
    );
    let mut c = proxy.client();
    for _ in 0..5 {
        assert_served_by(&c.roundtrip(&get("/")), "b");
    }
    assert_served_by(&c.roundtrip(&post("/p", BODY)), "b");
    assert_eq!(b.request_count(), 6);
}

// ---------------------------------------------------------------------------------------------
// Accept, then close at once.

#[test]
fn accept_close_get_fails_over() {
    get_fails_over(Fault::AcceptClose, &[], &[]);
}

#[test]
fn accept_close_post_without_key_is_not_retried() {
    post_is_not_retried(Fault::AcceptClose, 502, &[]);
}

#[test]
fn accept_close_post_with_idempotency_key_is_retried() {
    keyed_post_is_retried(Fault::AcceptClose, &[], &[]);
}

// ---------------------------------------------------------------------------------------------
// Read the request, then reset.

#[test]
fn reset_get_fails_over() {
    get_fails_over(Fault::ResetAfterRead, &[], &[]);
}

#[test]
fn reset_post_without_key_is_not_retried() {
    post_is_not_retried(Fault::ResetAfterRead, 502, &[]);
}

#[test]
fn reset_post_with_idempotency_key_is_retried() {
    keyed_post_is_retried(Fault::ResetAfterRead, &[], &[]);
}

/// `retry_non_idempotent = true` replays a POST without a key too.
#[test]
fn reset_post_is_retried_with_retry_non_idempotent() {
    let a = FaultPeer::start(Fault::ResetAfterRead);
    let b = Backend::start("b");
    let proxy = proxy_over(
        a.addr(),
        b.addr(),
        &["retry = { retry_non_idempotent = true }"],
        &[],
    );
    assert_served_by(&proxy.client().roundtrip(&post("/p", BODY)), "b");
    assert_eq!(a.hits(), 1);
    assert_eq!(b.only_request().body, BODY);
}

/// A retry after a reset (the request was sent) needs the budget: with none, the GET gets 502
/// and the healthy peer is never tried.
#[test]
fn reset_failover_needs_budget() {
    let a = FaultPeer::start(Fault::ResetAfterRead);
    let b = Backend::start("b");
    let proxy = proxy_over(
        a.addr(),
        b.addr(),
        &["retry = { budget_percent = 0, min_retries_per_sec = 0 }"],
        &[],
    );
    proxy.client().roundtrip(&get("/")).assert_proxy_error(502);
    assert_eq!(a.hits(), 1);
    assert_eq!(b.accepts(), 0);
}

// ---------------------------------------------------------------------------------------------
// Read the request, never answer.

#[test]
fn hang_get_fails_over_after_upstream_read_ms() {
    let t = Instant::now();
    get_fails_over(Fault::Hang, &[], &[("upstream_read_ms", 300)]);
    let took = t.elapsed();
    // Three GETs, each waited 300 ms for the hanging peer first.
    assert!(took >= Duration::from_millis(900), "took {took:?}");
}

#[test]
fn hang_post_without_key_gets_504_after_upstream_read_ms() {
    let took = post_is_not_retried(Fault::Hang, 504, &[("upstream_read_ms", 300)]);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "504 after {took:?} (upstream_read_ms = 300)"
    );
}

#[test]
fn hang_post_with_idempotency_key_is_retried() {
    keyed_post_is_retried(Fault::Hang, &[], &[("upstream_read_ms", 300)]);
}

// ---------------------------------------------------------------------------------------------
// A garbage status line.

const GARBAGE: &[u8] = b"HTTP/1.1 2x0 NOPE\r\nContent-Length: 2\r\n\r\nhi";

/// `invalid_response` is not in the default `on` list: the GET gets 502, no retry.
#[test]
fn garbage_status_line_is_not_retried_by_default() {
    let a = FaultPeer::answering(GARBAGE);
    let b = Backend::start("b");
    let proxy = proxy_over(a.addr(), b.addr(), &[], &[]);
    let mut c = proxy.client();
    let r = c.roundtrip(&get("/"));
    r.assert_proxy_error(502);
    assert!(!r.body_str().contains("hi"), "{}", r.body_str());
    assert_eq!(a.hits(), 1);
    assert_eq!(b.accepts(), 0);
}

#[test]
fn garbage_status_line_get_fails_over_when_on_lists_invalid_response() {
    get_fails_over(Fault::Answer(GARBAGE.to_vec()), &[ON_WITH_INVALID], &[]);
}

#[test]
fn garbage_status_line_keyed_post_is_retried_when_on_lists_invalid_response() {
    keyed_post_is_retried(Fault::Answer(GARBAGE.to_vec()), &[ON_WITH_INVALID], &[]);
}

/// Even with `invalid_response` listed, a POST without a key that was sent is not replayed.
#[test]
fn garbage_status_line_post_without_key_is_not_retried() {
    let a = FaultPeer::answering(GARBAGE);
    let b = Backend::start("b");
    let proxy = proxy_over(a.addr(), b.addr(), &[ON_WITH_INVALID], &[]);
    proxy
        .client()
        .roundtrip(&post("/p", BODY))
        .assert_proxy_error(502);
    assert_eq!(a.hits(), 1);
    assert_eq!(b.accepts(), 0);
}

// ---------------------------------------------------------------------------------------------
// 503.

/// A backend that answers every request 503 with its own name in the body and headers.
fn busy(name: &str) -> Backend {
    let n = name.to_string();
    Backend::with_handler(name, move |_| {
        Reply::new(503, format!("{n} is busy"))
            .header("Retry-After", "7")
            .header("X-From", &n)
    })
}

/// Asserts `r` is `name`'s 503 as the backend sent it, not an answer of ringlb's own.
#[track_caller]
fn assert_upstream_503(r: &Response, name: &str) {
    assert_eq!(r.status, 503, "{}", show(&r.head));
    assert_eq!(r.reason, "Service Unavailable");
    assert_eq!(r.body_str(), format!("{name} is busy"));
    assert_eq!(r.header("x-from"), Some(name), "{}", show(&r.head));
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(r.header("content-type"), None, "{}", show(&r.head));
    assert_eq!(r.framing, Framing::Length);
}

#[test]
fn status_503_get_is_retried() {
    let a = busy("a");
    let b = Backend::start("b");
    let proxy = proxy_over(a.addr(), b.addr(), &[], &[]);
    let mut c = proxy.client();
    for i in 1..=3 {
        assert_served_by(&c.roundtrip(&get("/")), "b");
        assert_eq!((a.request_count(), b.request_count()), (i, i));
    }
}

/// A POST without a key that got a 503 is not replayed: the 503 is relayed as it was.
#[test]
fn status_503_post_without_key_relays_the_503() {
    let a = busy("a");
    let b = Backend::start("b");
    let proxy = proxy_over(a.addr(), b.addr(), &[], &[]);
    let mut c = proxy.client();
    assert_upstream_503(&c.roundtrip(&post("/p", BODY)), "a");
    assert_eq!(a.only_request().body, BODY);
    assert_eq!(b.accepts(), 0);
    // The client connection is still in sync.
    assert_served_by(&c.roundtrip(&get("/after")), "b");
}

#[test]
fn status_503_keyed_post_is_retried() {
    let a = busy("a");
    let b = Backend::start("b");
    let proxy = proxy_over(a.addr(), b.addr(), &[], &[]);
    assert_served_by(&proxy.client().roundtrip(&post_with_key("/p", "k-9")), "b");
    assert_eq!(a.only_request().body, BODY);
    assert_eq!(b.only_request().body, BODY);
}

/// When every peer answers 503, the retries (`max_retries = 3`: a, b, then after backoffs a
/// and b again) run out and the client gets the last upstream's 503 as it was.
#[test]
fn every_peer_503_relays_the_last_response_as_it_was() {
    let a = busy("a");
    let b = busy("b");
    let proxy = proxy_over(a.addr(), b.addr(), &[], &[]);
    let mut c = proxy.client();
    assert_upstream_503(&c.roundtrip(&get("/")), "b");
    assert_eq!((a.request_count(), b.request_count()), (2, 2));
    // Same again on the same connection: nothing of the discarded 503s leaked into it.
    assert_upstream_503(&c.roundtrip(&get("/")), "b");
    assert_eq!((a.request_count(), b.request_count()), (4, 4));
}

// ---------------------------------------------------------------------------------------------
// The retry budget.

/// During a full outage (every peer resets after reading), the budget caps retries at
/// `budget_percent` of the requests. From src/failover/budget.rs, the allowance in the 10 s
/// window is `floor(requests × budget_percent / 100) + min_retries_per_sec × 10`; with
/// `min_retries_per_sec = 0` and `budget_percent = 20`, request k may retry only while the
/// retries so far are below `floor(k / 5)`, so 100 requests get at most 20 retries (one at
/// every fifth request; the run lasts well under the 10 s window). Allowance above that: none.
#[test]
fn budget_caps_retries_in_a_full_outage() {
    let a = FaultPeer::start(Fault::ResetAfterRead);
    let b = FaultPeer::start(Fault::ResetAfterRead);
    let proxy = proxy_over(
        a.addr(),
        b.addr(),
        &["retry = { budget_percent = 20, min_retries_per_sec = 0 }"],
        &[],
    );
    const N: usize = 100;
    let mut c = proxy.client();
    let t = Instant::now();
    for _ in 0..N {
        c.roundtrip(&get("/")).assert_proxy_error(502);
    }
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "the run must fit in the budget's 10 s window"
    );
    let hits = a.hits() + b.hits();
    let retries = hits - N;
    assert!(
        retries <= N / 5,
        "{retries} retries for {N} requests (a {}, b {}): more than 20 %",
        a.hits(),
        b.hits()
    );
    // The budget is used, not starved: exactly one retry every fifth request.
    assert_eq!(retries, N / 5, "a {}, b {}", a.hits(), b.hits());
}

// ---------------------------------------------------------------------------------------------
// A response that breaks off.

/// Reads everything until the proxy closes the connection; panics on a reset or a timeout.
fn read_until_eof(c: &mut Client) -> Vec<u8> {
    let mut all = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        match c.stream().read(&mut b) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&b[..n]),
            Err(e) => panic!("after {:?}: {e}", show(&all)),
        }
    }
}

/// Splits a raw response into head (through the blank line) and the rest.
fn split_response(raw: &[u8]) -> (String, &[u8]) {
    let end = find(raw, b"\r\n\r\n").unwrap_or_else(|| panic!("no head in {}", show(raw))) + 4;
    (
        String::from_utf8_lossy(&raw[..end]).into_owned(),
        &raw[end..],
    )
}

/// A backend that dies mid-body (Content-Length 100, 40 bytes, then close): the client gets
/// the head and those 40 bytes, then EOF. Nothing is retried (the response had started) and no
/// bytes of another response follow.
#[test]
fn half_body_then_close_ends_the_client_connection() {
    let partial = vec![b'x'; 40];
    let mut answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nX-From: a\r\n\r\n".to_vec();
    answer.extend_from_slice(&partial);
    let a = FaultPeer::answering(answer);
    let b = Backend::start("b");
    let proxy = proxy_over(a.addr(), b.addr(), &[], &[]);
    let mut c = proxy.client();
    c.send(&get("/"));
    let raw = read_until_eof(&mut c);
    let (head, body) = split_response(&raw);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head:?}");
    assert!(head.contains("Content-Length: 100\r\n"), "{head:?}");
    assert!(head.contains("X-From: a\r\n"), "{head:?}");
    assert_eq!(body, partial.as_slice(), "body bytes after the head");
    assert_eq!(a.hits(), 1);
    assert_eq!(b.accepts(), 0, "no retry once the response started");
}

/// The same with a chunked body cut inside a chunk: the client must not get a last chunk
/// (`0\r\n\r\n`) that would make the truncated body look complete.
#[test]
fn half_chunked_body_then_close_gets_no_last_chunk() {
    let sent_body: &[u8] = b"a\r\n0123456789\r\n14\r\n0123456";
    let mut answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    answer.extend_from_slice(sent_body);
    let a = FaultPeer::answering(answer);
    let b = Backend::start("b");
    let proxy = proxy_over(a.addr(), b.addr(), &[], &[]);
    let mut c = proxy.client();
    c.send(&get("/"));
    let raw = read_until_eof(&mut c);
    let (head, body) = split_response(&raw);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head:?}");
    assert!(head.contains("Transfer-Encoding: chunked\r\n"), "{head:?}");
    assert!(
        body.starts_with(b"a\r\n0123456789\r\n") && sent_body.starts_with(body),
        "the body must be a prefix of what the backend sent, with the first chunk: {}",
        show(body)
    );
    assert_eq!(a.hits(), 1);
    assert_eq!(b.accepts(), 0);
}

// ---------------------------------------------------------------------------------------------
// The circuit breaker.

/// A backend `a` whose `n`-th request (1-based) is answered by `reply(n)`; it records when each
/// request arrived.
fn scripted(
    reply: impl Fn(usize) -> Reply + Send + Sync + 'static,
) -> (Backend, Arc<Mutex<Vec<Instant>>>) {
    let times = Arc::new(Mutex::new(Vec::new()));
    let t = times.clone();
    let b = Backend::with_handler("a", move |_| {
        let n = {
            let mut t = t.lock().unwrap();
            t.push(Instant::now());
            t.len()
        };
        reply(n)
    });
    (b, times)
}

/// One GET; returns which backend answered it (200 required).
fn served_by(c: &mut Client) -> String {
    let r = c.roundtrip(&get("/"));
    assert_eq!(r.status, 200, "{}", show(&r.head));
    r.body_str()
}

/// Sends GETs every 10 ms until peer `a` has seen `n` requests; every answer before that one
/// must come from `b`. Returns the body of the answer to the request that reached `a`.
fn until_a_sees(c: &mut Client, a: &Backend, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = served_by(c);
        if a.request_count() >= n {
            assert_eq!(a.request_count(), n);
            return got;
        }
        assert_eq!(got, "b", "a is open: every request goes to b");
        assert!(
            Instant::now() < deadline,
            "a never got request {n} within 5 s"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// `failures = 3, open_ms = 300, half_open_successes = 2`: three failures open the breaker;
/// no request reaches the peer until 300 ms passed; the failed trial re-opens it for twice as
/// long (600 ms); a successful trial then a second one close it, and it gets its rotation share
/// again.
#[test]
fn breaker_opens_trials_and_closes() {
    let (a, times) = scripted(|n| {
        if n <= 4 {
            Reply::new(503, "a is down")
        } else {
            Reply::ok("a")
        }
    });
    let b = Backend::start("b");
    let proxy = proxy_over(
        a.addr(),
        b.addr(),
        &["circuit_breaker = { failures = 3, open_ms = 300, half_open_successes = 2 }"],
        &[],
    );
    let mut c = proxy.client();
    // Three failures (each 503 retried on b).
    for i in 1..=3 {
        assert_eq!(served_by(&mut c), "b");
        assert_eq!(a.request_count(), i);
    }
    // Open: no request to a until open_ms passed, then one trial (503 again, retried on b).
    assert_eq!(until_a_sees(&mut c, &a, 4), "b");
    // Re-opened for 2 × open_ms: the next trial succeeds.
    assert_eq!(until_a_sees(&mut c, &a, 5), "a");
    let t = times.lock().unwrap().clone();
    let first_open = t[3] - t[2];
    let second_open = t[4] - t[3];
    assert!(
        first_open >= Duration::from_millis(300) && first_open < Duration::from_millis(1500),
        "first trial {first_open:?} after the third failure (open_ms = 300)"
    );
    assert!(
        second_open >= Duration::from_millis(600) && second_open < Duration::from_millis(2000),
        "second trial {second_open:?} after the failed first (2 × open_ms = 600)"
    );
    // Half-open with one success: b's turn, then a's second trial closes the breaker, then
    // plain rotation.
    let got: Vec<String> = (0..6).map(|_| served_by(&mut c)).collect();
    assert_eq!(got, ["b", "a", "b", "a", "b", "a"]);
    assert_eq!(a.request_count(), 8);
}

/// A half-open breaker (`half_open_max = 1`) lets one trial through at a time: while a slow
/// trial is in flight, other requests go to the other peer.
#[test]
fn half_open_breaker_admits_one_trial_at_a_time() {
    let (a, _) = scripted(|n| match n {
        1..=3 => Reply::new(503, "a is down"),
        4 => Reply::ok("a").delay(Duration::from_secs(2)),
        _ => Reply::ok("a"),
    });
    let b = Backend::start("b");
    let proxy = proxy_over(
        a.addr(),
        b.addr(),
        &["circuit_breaker = { failures = 3, open_ms = 200, half_open_successes = 2 }"],
        &[],
    );
    let mut c = proxy.client();
    for _ in 0..3 {
        assert_eq!(served_by(&mut c), "b");
    }
    thread::sleep(Duration::from_millis(250));
    let addr = proxy.addr;
    let trial = thread::spawn(move || served_by(&mut Client::connect(addr)));
    a.wait_heads(4, Duration::from_secs(5));
    let mut other = proxy.client();
    for _ in 0..4 {
        assert_eq!(served_by(&mut other), "b", "the trial slot is taken");
    }
    assert_eq!(a.heads_seen(), 4, "a second trial went to a");
    assert_eq!(trial.join().expect("trial client"), "a");
    // The second trial succeeds and closes the breaker: rotation again.
    let got: Vec<String> = (0..4).map(|_| served_by(&mut other)).collect();
    assert_eq!(got, ["a", "b", "a", "b"]);
}

// ---------------------------------------------------------------------------------------------
// Deadlines.

/// `per_try_timeout_ms` bounds each try even when `upstream_read_ms` is long: two hanging
/// peers, one retry, 504 after about two per-try timeouts.
#[test]
fn per_try_timeout_bounds_each_try() {
    let a = FaultPeer::start(Fault::Hang);
    let b = FaultPeer::start(Fault::Hang);
    let proxy = proxy_over(
        a.addr(),
        b.addr(),
        &["retry = { per_try_timeout_ms = 200, max_retries = 1 }"],
        &[("upstream_read_ms", 10_000)],
    );
    let t = Instant::now();
    proxy.client().roundtrip(&get("/")).assert_proxy_error(504);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(2),
        "504 after {took:?} (2 tries × 200 ms)"
    );
    assert_eq!((a.hits(), b.hits()), (1, 1));
}

/// `request_timeout_ms` bounds a single try too: the deadline passes while the first peer
/// hangs, so the request is not retried on the healthy one.
#[test]
fn request_timeout_bounds_a_single_slow_try() {
    let a = FaultPeer::start(Fault::Hang);
    let b = Backend::start("b");
    let proxy = proxy_over(
        a.addr(),
        b.addr(),
        &["retry = { request_timeout_ms = 400 }"],
        &[("upstream_read_ms", 10_000)],
    );
    let t = Instant::now();
    proxy.client().roundtrip(&get("/")).assert_proxy_error(504);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(2),
        "504 after {took:?} (request_timeout_ms = 400)"
    );
    assert_eq!(a.hits(), 1);
    assert_eq!(b.accepts(), 0, "no retry after the deadline");
}

/// With both: tries of 300 ms each, but all of them (backoffs included) within 700 ms. Without
/// the request deadline, `max_retries = 3` would take four tries, at least 1200 ms.
#[test]
fn request_timeout_bounds_all_tries() {
    let a = FaultPeer::start(Fault::Hang);
    let b = FaultPeer::start(Fault::Hang);
    let proxy = proxy_over(
        a.addr(),
        b.addr(),
        &["retry = { per_try_timeout_ms = 300, request_timeout_ms = 700 }"],
        &[("upstream_read_ms", 10_000)],
    );
    let t = Instant::now();
    proxy.client().roundtrip(&get("/")).assert_proxy_error(504);
    let took = t.elapsed();
    // The try counts below tell the deadline from four full tries; the time only has to be
    // at least two tries and not wildly past the deadline.
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_millis(3500),
        "504 after {took:?} (2 × 300 ms tries, 700 ms deadline)"
    );
    // a, b, then (if the backoff left time) a third try on a cut short by the deadline;
    // without the deadline b would get a second try.
    assert_eq!(b.hits(), 1);
    assert!((1..=2).contains(&a.hits()), "a saw {} tries", a.hits());
}

// ---------------------------------------------------------------------------------------------
// Deadlines around connect and write.

/// `per_try_timeout_ms` bounds the connect of a try too: a peer that does not complete the
/// handshake costs one per-try timeout (300 ms), not the 10 s connect timeout, then the healthy
/// peer answers.
#[test]
fn per_try_timeout_bounds_a_slow_connect() {
    let (_hole, _fill, hole) = blackhole_peer();
    let b = Backend::start("b");
    let proxy = proxy_over(
        hole,
        b.addr(),
        &["retry = { per_try_timeout_ms = 300 }"],
        &[("connect_ms", 10_000)],
    );
    let t = Instant::now();
    assert_served_by(&proxy.client().roundtrip(&get("/")), "b");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "answered after {took:?} (per_try_timeout_ms = 300, connect_ms = 10000)"
    );
}

/// `request_timeout_ms` bounds a connect too: 504 at the deadline (400 ms), not after the 10 s
/// connect timeout.
#[test]
fn request_timeout_bounds_a_slow_connect() {
    let (_hole, _fill, hole) = blackhole_peer();
    let b = Backend::start("b");
    let proxy = proxy_over(
        hole,
        b.addr(),
        &["retry = { request_timeout_ms = 400 }"],
        &[("connect_ms", 10_000)],
    );
    let t = Instant::now();
    proxy.client().roundtrip(&get("/")).assert_proxy_error(504);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(2000),
        "504 after {took:?} (request_timeout_ms = 400, connect_ms = 10000)"
    );
    assert_eq!(b.accepts(), 0);
}

/// A keyed POST whose (kept) body the first peer does not take: the write times out
/// (`upstream_write_ms`), and the retry must send the whole request to the next peer.
#[test]
fn write_timeout_keyed_post_is_replayed_in_full() {
    const LEN: usize = 16 << 20; // more than loopback socket buffers take
    let a = FaultPeer::start(Fault::Stall);
    let b = Backend::with_handler("b", |r| Reply::ok(format!("b got {}", r.body_len)));
    let proxy = proxy_over(
        a.addr(),
        b.addr(),
        &["retry = { retry_body_bytes = 33554432 }"],
        &[("upstream_write_ms", 300), ("upstream_read_ms", 2000)],
    );
    let mut req = format!(
        "POST /big HTTP/1.1\r\nHost: test\r\nIdempotency-Key: k-big\r\nContent-Length: {LEN}\r\n\r\n"
    )
    .into_bytes();
    req.extend_from_slice(&pattern_bytes(LEN));
    let t = Instant::now();
    let r = proxy.client().roundtrip(&req);
    let took = t.elapsed();
    assert_eq!(
        (r.status, r.body_str()),
        (200, format!("b got {LEN}")),
        "after {took:?}: {} (connections: a {}, b {}; request heads b saw: {})",
        show(&r.head),
        a.accepts(),
        b.accepts(),
        b.heads_seen()
    );
    assert_eq!(a.accepts(), 1);
    let got = b.only_request();
    assert!(got.body_is_pattern, "b got a different body");
}

/// `request_timeout_ms` bounds a try stuck writing the request body to a peer that does not
/// read: the client hears back at the deadline, not after `upstream_write_ms`.
#[test]
fn request_timeout_bounds_a_stalled_upload() {
    const LEN: usize = 16 << 20;
    let a = FaultPeer::start(Fault::Stall);
    let b = Backend::start("b");
    let proxy = proxy_over(
        a.addr(),
        b.addr(),
        &["retry = { request_timeout_ms = 400 }"],
        &[("upstream_write_ms", 20_000)],
    );
    let mut c = proxy.client();
    let mut writer = c.stream().try_clone().expect("clone client socket");
    let t = Instant::now();
    let upload = thread::spawn(move || {
        use std::io::Write;
        let head = format!("POST /up HTTP/1.1\r\nHost: test\r\nContent-Length: {LEN}\r\n\r\n");
        let _ = writer.write_all(head.as_bytes());
        let _ = writer.write_all(&pattern_bytes(LEN));
    });
    let answer = c.try_response(false);
    let took = t.elapsed();
    // Past the deadline the answer is 504 (README, `retry.request_timeout_ms`); lingering
    // close keeps the unread upload from resetting it away.
    let r = answer.unwrap_or_else(|e| panic!("no answer after {took:?}: {e}"));
    r.assert_proxy_error(504);
    // Not before the deadline, and long before the write timeout.
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(2000),
        "504 after {took:?}; request_timeout_ms = 400, upstream_write_ms = 20000"
    );
    let _ = c.stream().shutdown(std::net::Shutdown::Both);
    let _ = upload.join();
    assert_eq!(b.accepts(), 0);
}

// ---------------------------------------------------------------------------------------------
// Every breaker open; reused connections.

/// When every peer's breaker opens on the way (`failures = 1`: a answers 503 and opens, b
/// answers 503 and opens), nothing is left to retry on: the client gets the last upstream 503
/// as it was, not an answer of ringlb's own. The next request finds no eligible peer and gets
/// ringlb's 503 with `Retry-After`, without touching a peer.
#[test]
fn every_breaker_open_relays_the_last_503() {
    let a = busy("a");
    let b = busy("b");
    let proxy = proxy_over(
        a.addr(),
        b.addr(),
        &["circuit_breaker = { failures = 1, open_ms = 5000 }"],
        &[],
    );
    let mut c = proxy.client();
    let r = c.roundtrip(&get("/"));
    assert_eq!((a.request_count(), b.request_count()), (1, 1));
    assert_upstream_503(&r, "b");
    let r = c.roundtrip(&get("/"));
    r.assert_proxy_error(503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!((a.request_count(), b.request_count()), (1, 1));
}

/// A POST without a key written on a pooled connection that the peer read and then reset: the
/// peer has the request, so it must not be sent again (RFC 9110 §9.2.2; nginx and Go's
/// transport only replay idempotent or keyed requests on a reused connection). The client gets
/// 502 and the peer saw the POST once.
#[test]
fn post_on_a_reused_connection_is_not_replayed_after_the_peer_read_it() {
    let a = FaultPeer::start(Fault::ResetSecondRequest);
    let proxy = ProxyConfig::new()
        .upstream("app", "round_robin", &[peer(a.addr())])
        .start();
    let mut c = proxy.client();
    // The first request leaves a pooled connection, on which the POST goes next.
    let r = c.roundtrip(&get("/first"));
    assert_eq!((r.status, r.body_str().as_str()), (200, "ok"));
    let r = c.roundtrip(&post("/p", BODY));
    let posts = a
        .requests()
        .iter()
        .filter(|r| r.starts_with(b"POST "))
        .count();
    assert_eq!(
        posts,
        1,
        "the peer got the POST {posts} times (client got {}); connections {}",
        show(&r.head),
        a.accepts()
    );
    r.assert_proxy_error(502);
}

/// A backend that answers `200 <name>` advertising keep-alive, then closes the connection: the
/// proxy pools a connection that is dead by the time it is reused.
fn closes_after_answering(name: &str) -> Backend {
    let n = name.to_string();
    Backend::with_handler(name, move |_| {
        Reply::raw(format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{n}",
            n.len()
        ))
        .close()
    })
}

/// Waits until connecting to `addr` is refused (a dropped backend's listener is closed).
fn wait_refused(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
        assert!(Instant::now() < deadline, "{addr} still accepts");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Every try may replace a dead pooled connection once, not only the first try of a request:
/// a dies (its pooled connection and its port), b's pooled connection is dead but b is up. The
/// GET tries a (dead pooled connection, then refused), then b, whose dead pooled connection
/// must be replaced by a fresh one (b is healthy) rather than count as a failure of b's that
/// needs a retry (the budget is zero here) and a breaker failure (`failures = 1`).
#[test]
fn a_dead_pooled_connection_is_replaced_on_every_peer_tried() {
    let a = Backend::start("a");
    let b = closes_after_answering("b");
    let a_addr = a.addr();
    let proxy = proxy_over(
        a_addr,
        b.addr(),
        &[
            "retry = { budget_percent = 0, min_retries_per_sec = 0 }",
            "circuit_breaker = { failures = 1, open_ms = 5000 }",
        ],
        &[],
    );
    let mut c = proxy.client();
    // One request each: both leave a pooled connection.
    assert_served_by(&c.roundtrip(&get("/1")), "a");
    assert_served_by(&c.roundtrip(&get("/2")), "b");
    drop(a);
    wait_refused(a_addr);
    let r = c.roundtrip(&get("/3"));
    assert_eq!(
        (r.status, r.body_str().as_str()),
        (200, "b"),
        "b is up: {} {}",
        show(&r.head),
        r.body_str()
    );
    assert_eq!(b.request_count(), 2);
}

// ---------------------------------------------------------------------------------------------
// README rows without an end-to-end test before: status retries other than 503, a response
// that stalls after it started, per-upstream timeouts, the breaker's failure rate.

/// `retry.on` takes any status 400–599, as a string or an integer: with `500` listed a GET
/// answered 500 is retried on the next peer; with the defaults (which list 502–504 only) the
/// 500 is relayed as it was.
#[test]
fn retry_on_lists_other_status_codes() {
    for (line, listed) in [
        ("retry = { on = [\"500\", 404] }", true),
        ("retry = { on = [404] }", false),
        ("retry = { max_retries = 3 }", false),
    ] {
        let a = Backend::with_handler("a", |_| Reply::new(500, "a broke"));
        let b = Backend::start("b");
        let proxy = proxy_over(a.addr(), b.addr(), &[line], &[]);
        let r = proxy.client().roundtrip(&get("/"));
        assert_eq!(a.request_count(), 1, "{line}");
        if listed {
            assert_served_by(&r, "b");
            assert_eq!(b.request_count(), 1, "{line}");
        } else {
            assert_eq!((r.status, r.body_str()), (500, "a broke".into()), "{line}");
            assert_eq!(b.accepts(), 0, "{line}: the 500 was retried");
        }
    }
    // 404 listed as an integer is retried as well.
    let a = Backend::with_handler("a", |_| Reply::new(404, "not here"));
    let b = Backend::start("b");
    let proxy = proxy_over(a.addr(), b.addr(), &["retry = { on = [404] }"], &[]);
    assert_served_by(&proxy.client().roundtrip(&get("/")), "b");
    assert_eq!(a.request_count(), 1);
}

/// `upstream_read_ms` after the response started: the status line and part of the body went to
/// the client, then the upstream goes silent. ringlb cannot answer 504 any more; it closes the
/// client connection at about `upstream_read_ms` (the client sees a truncated body), and does not
/// retry.
#[test]
fn upstream_read_timeout_after_the_response_started_closes_the_client() {
    let a = FaultPeer::start(Fault::AnswerThenHang(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst forty bytes of a hundred-byte body"
            .to_vec(),
    ));
    let b = Backend::start("b");
    let proxy = proxy_over(a.addr(), b.addr(), &[], &[("upstream_read_ms", 300)]);
    let mut c = proxy.client();
    let t = Instant::now();
    c.send(&get("/stalls"));
    let got = c.try_response(false);
    let took = t.elapsed();
    match got {
        Err(ReadErr::Truncated(_)) => {}
        other => panic!("after {took:?}: expected a truncated response, got {other:?}"),
    }
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "closed after {took:?} (upstream_read_ms = 300)"
    );
    assert_eq!(a.hits(), 1);
    assert_eq!(b.accepts(), 0, "a response that started is never retried");
}

/// Per-upstream `timeouts = { upstream_read_ms = 300 }` overrides the global 15 s for that
/// upstream only: a backend that answers after 1 s gets a 504 in about 300 ms through the
/// upstream with the override and its 200 through the other.
#[test]
fn per_upstream_timeouts_override_the_global_ones() {
    let slow = Backend::with_handler("slow", |_| Reply::ok("late").delay(Duration::from_secs(1)));
    let proxy = ProxyConfig::new()
        .timeout("upstream_read_ms", 15_000)
        .upstream("strict", "round_robin", &[peer(slow.addr())])
        .upstream_line("timeouts = { upstream_read_ms = 300 }")
        .upstream_line("retry = { max_retries = 0 }")
        .upstream("lenient", "round_robin", &[peer(slow.addr())])
        .route(&["path_prefix = \"/strict\""], "strict")
        .route(&[], "lenient")
        .start();
    let t = Instant::now();
    proxy
        .client()
        .roundtrip(&get("/strict"))
        .assert_proxy_error(504);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1000),
        "504 after {took:?} (upstream_read_ms = 300 for this upstream; the peer answers after 1 s)"
    );
    let t = Instant::now();
    let r = proxy.client().roundtrip(&get("/lenient"));
    assert_eq!(
        (r.status, r.body_str()),
        (200, "late".into()),
        "{}",
        show(&r.head)
    );
    assert!(t.elapsed() >= Duration::from_secs(1));
}

/// `circuit_breaker.failure_rate`: with `failures = 100` no run of consecutive failures opens
/// the breaker, but half of the results failing once `min_requests = 4` were seen does: after
/// a's fourth request (503, 200, 200, 503) it gets nothing more. Without `failure_rate` the
/// same peer keeps its rotation share.
#[test]
fn breaker_opens_on_the_failure_rate() {
    for (line, opens) in [
        (
            "circuit_breaker = { failures = 100, failure_rate = 0.5, min_requests = 4, \
             window_ms = 60000, open_ms = 60000 }",
            true,
        ),
        (
            "circuit_breaker = { failures = 100, open_ms = 60000 }",
            false,
        ),
    ] {
        let (a, _) = scripted(|n| match n {
            1 | 4 | 5 | 8 | 9 => Reply::new(503, "a fails"),
            _ => Reply::ok("a"),
        });
        let b = Backend::start("b");
        let proxy = proxy_over(a.addr(), b.addr(), &[line], &[]);
        let mut c = proxy.client();
        // Every request is answered 200: a's 503s are retried on b.
        for _ in 0..20 {
            served_by(&mut c);
        }
        if opens {
            assert_eq!(a.request_count(), 4, "{line}: a after its breaker opened");
        } else {
            // Each of a's 503s is retried on b, which takes b's turn, so the next request
            // starts at a again: a is picked for 13 of the 20 (failing on its 1st, 4th, 5th,
            // 8th and 9th).
            assert_eq!(a.request_count(), 13, "{line}: a keeps its rotation share");
        }
    }
}

/// Waits until `peer` has answered `n` requests, and a little more for its reset to land.
fn wait_answered(peer: &FaultPeer, n: usize) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while peer.hits() < n {
        assert!(Instant::now() < deadline, "the peer never answered");
        thread::sleep(Duration::from_millis(5));
    }
    thread::sleep(Duration::from_millis(100));
}

#[test]
fn an_answer_given_before_the_body_is_relayed_though_the_peer_then_reset() {
    // The peer reads the head, answers 413 and closes with the body unread, so the kernel
    // resets the connection and ringlb's next write of the body fails. The 413 sits in the
    // socket ahead of the reset: it is the response (RFC 9112 §9.5), not ringlb's 502.
    let a = FaultPeer::start(Fault::AnswerBeforeBody(TOO_LARGE.to_vec()));
    let proxy = ProxyConfig::new()
        .upstream("app", "round_robin", &[peer(a.addr())])
        .start();
    let total = 1 << 20;
    let chunk = vec![b'x'; 64 * 1024];
    let mut c = proxy.client();
    c.send(
        format!("POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: {total}\r\n\r\n")
            .as_bytes(),
    );
    c.send(&chunk);
    wait_answered(&a, 1);
    // The rest of the body: ringlb forwards it to a reset connection, then (having answered)
    // reads and drops it while it lingers. A failed write here would only mean it stopped.
    let mut sent = chunk.len();
    while sent < total {
        match c.stream().write(&chunk[..chunk.len().min(total - sent)]) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    let r = c.response();
    assert_eq!(r.status, 413, "{}", show(&r.head));
    assert_eq!(r.body, b"too large");
    assert_eq!(r.header("connection"), Some("close"));
    let _ = c.stream().shutdown(std::net::Shutdown::Write);
    c.expect_closed();
    assert_eq!(
        (a.accepts(), a.hits()),
        (1, 1),
        "answered once, not retried"
    );
}

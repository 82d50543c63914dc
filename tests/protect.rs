//! Backend protection end to end: `max_conns` with the queue (FIFO, overflow, timeout), `rate`
//! per peer and per client key, slow start, rotation of pooled connections, per-peer timeouts.
//! A real proxy on 127.0.0.1:0 against backends that count what reaches them.

mod common;
use common::*;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A backend that counts requests in flight (and the most ever), holding each for `hold`.
fn counting_backend(name: &str, hold: Duration) -> (Backend, Arc<AtomicUsize>) {
    let now = Arc::new(AtomicUsize::new(0));
    let max = Arc::new(AtomicUsize::new(0));
    let (n, m) = (now.clone(), max.clone());
    let b = Backend::with_handler(name, move |req| {
        let c = n.fetch_add(1, Ordering::SeqCst) + 1;
        m.fetch_max(c, Ordering::SeqCst);
        thread::sleep(hold);
        n.fetch_sub(1, Ordering::SeqCst);
        Reply::ok(req.path().to_string())
    });
    (b, max)
}

/// GET `path` on a fresh connection.
fn get_once(addr: std::net::SocketAddr, path: &str) -> Response {
    Client::connect(addr).roundtrip(&get(path))
}

#[test]
fn max_conns_never_exceeded_across_two_shards_and_everyone_is_served() {
    let (b, max) = counting_backend("slow", Duration::from_millis(150));
    let proxy = ProxyConfig::new()
        .workers(2)
        .upstream_with("app", "round_robin", &["max_conns = 2"], &[peer(b.addr())])
        .start();
    let addr = proxy.addr;
    let clients: Vec<_> = (0..12)
        .map(|i| thread::spawn(move || get_once(addr, &format!("/r{i}")).status))
        .collect();
    let statuses: Vec<u16> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert_eq!(statuses, vec![200; 12], "every request waited for a slot");
    assert_eq!(b.request_count(), 12);
    let most = max.load(Ordering::SeqCst);
    assert!(most <= 2, "the backend saw {most} requests at once");
    assert!(most >= 1);
    proxy.shutdown();
}

#[test]
fn queued_requests_are_served_in_arrival_order() {
    let (b, max) = counting_backend("one", Duration::from_millis(150));
    let proxy = ProxyConfig::new()
        .upstream_with("app", "round_robin", &["max_conns = 1"], &[peer(b.addr())])
        .start();
    let addr = proxy.addr;
    let mut threads = Vec::new();
    for name in ["a", "b", "c", "d", "e"] {
        threads.push(thread::spawn(move || get_once(addr, &format!("/{name}"))));
        thread::sleep(Duration::from_millis(60));
    }
    for t in threads {
        let r = t.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.body_str());
    }
    let order: Vec<String> = b.requests().iter().map(|r| r.path().to_string()).collect();
    assert_eq!(order, ["/a", "/b", "/c", "/d", "/e"]);
    assert_eq!(max.load(Ordering::SeqCst), 1);
    proxy.shutdown();
}

#[test]
fn a_full_queue_and_a_queue_timeout_answer_503_with_retry_after() {
    let (b, _) = counting_backend("busy", Duration::from_millis(1500));
    let proxy = ProxyConfig::new()
        .upstream_with(
            "app",
            "round_robin",
            &[
                "max_conns = 1",
                "queue = { max = 1, timeout_ms = 300, retry_after_s = 7 }",
            ],
            &[peer(b.addr())],
        )
        .start();
    let addr = proxy.addr;
    let first = thread::spawn(move || get_once(addr, "/first"));
    b.wait_heads(1, Duration::from_secs(5));
    // Of the next two, one waits in the queue and times out after 300 ms (the first holds
    // the only slot for 1.5 s), the other finds the queue full.
    let timed = |path: &'static str| {
        thread::spawn(move || {
            let t0 = Instant::now();
            (get_once(addr, path), t0.elapsed())
        })
    };
    let second = timed("/second");
    thread::sleep(Duration::from_millis(100));
    let third = timed("/third");
    let mut answers = [second.join().unwrap(), third.join().unwrap()];
    answers.sort_by_key(|(r, _)| r.body_str().contains("timed out"));
    let [(full, _), (timed_out, waited)] = answers;
    for r in [&full, &timed_out] {
        r.assert_proxy_error(503);
        assert_eq!(r.header("retry-after"), Some("7"));
    }
    assert!(
        full.body_str().contains("queue is full"),
        "{}",
        full.body_str()
    );
    assert!(timed_out
        .body_str()
        .contains("timed out in the upstream queue"));
    assert!(
        waited >= Duration::from_millis(280) && waited < Duration::from_millis(1400),
        "waited {waited:?}"
    );
    assert_eq!(first.join().unwrap().status, 200);
    // Exactly one request reached the backend.
    assert_eq!(b.request_count(), 1);
    proxy.shutdown();
}

#[test]
fn peer_rate_limit_lets_rate_times_seconds_plus_burst_through() {
    let b = Backend::start("b");
    // The peer's own `rate` (the test helper writes peers without one).
    let toml = ProxyConfig::new()
        .workers(2)
        .upstream_with(
            "app",
            "round_robin",
            &["queue = { max = 0 }"],
            &[peer(b.addr())],
        )
        .toml()
        .replace(
            &format!("address = \"{}\", weight = 1", b.addr()),
            &format!(
                "address = \"{}\", weight = 1, rate = {{ requests_per_sec = 10, burst = 6 }}",
                b.addr()
            ),
        );
    let proxy = Proxy::start(&toml);
    let addr = proxy.addr;
    // 30 requests per second (3 × the rate) for 2 s, each on a fresh connection so both
    // shards get their part, from 3 threads.
    let start = Instant::now();
    let ok = Arc::new(AtomicUsize::new(0));
    let limited = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let (ok, limited) = (ok.clone(), limited.clone());
            thread::spawn(move || {
                for i in 0..20u64 {
                    let due = start + Duration::from_millis(i * 100 + t * 33);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        thread::sleep(wait);
                    }
                    let r = get_once(addr, "/x");
                    match r.status {
                        200 => ok.fetch_add(1, Ordering::SeqCst),
                        503 => {
                            assert_eq!(r.header("retry-after"), Some("1"));
                            limited.fetch_add(1, Ordering::SeqCst)
                        }
                        s => panic!("unexpected status {s}"),
                    };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let ok = ok.load(Ordering::SeqCst);
    assert_eq!(ok + limited.load(Ordering::SeqCst), 60);
    assert_eq!(b.request_count(), ok);
    // rate × 2 s + burst = 10 × 2 + 6 = 26, ± one shard's share (3 of the burst).
    assert!((23..=29).contains(&ok), "{ok} requests reached the backend");
    proxy.shutdown();
}

#[test]
fn per_client_rate_answers_429_per_key() {
    let b = Backend::start("b");
    let proxy = ProxyConfig::new()
        .upstream_with(
            "app",
            "round_robin",
            &["rate = { requests_per_sec = 0.5, burst = 2, key = \"header:X-User\" }"],
            &[peer(b.addr())],
        )
        .start();
    let mut c = proxy.client();
    let req = |user: &str| format!("GET / HTTP/1.1\r\nHost: x\r\nX-User: {user}\r\n\r\n");
    assert_eq!(c.roundtrip(req("ann").as_bytes()).status, 200);
    assert_eq!(c.roundtrip(req("ann").as_bytes()).status, 200);
    let r = c.roundtrip(req("ann").as_bytes());
    r.assert_proxy_error(429);
    // The bucket is empty: its next token is 1 / 0.5 s = 2 s away.
    assert_eq!(r.header("retry-after"), Some("2"));
    // Another key has its own bucket; the connection stays usable after a 429.
    assert_eq!(c.roundtrip(req("bob").as_bytes()).status, 200);
    assert_eq!(b.request_count(), 3);
    proxy.shutdown();
}

#[test]
fn slow_start_ramps_a_peer_added_by_reload_linearly() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let base = ProxyConfig::new().upstream_with(
        "app",
        "smooth_weighted",
        &["slow_start_ms = 4000"],
        &[peer(a.addr())],
    );
    let proxy = base.start();
    let both = ProxyConfig::new()
        .upstream_with(
            "app",
            "smooth_weighted",
            &["slow_start_ms = 4000"],
            &[peer(a.addr()), peer(b.addr())],
        )
        .toml();
    proxy
        .server()
        .apply(config_from(&both))
        .expect("reload with b");
    let t0 = Instant::now();
    let mut c = proxy.client();
    // Five buckets of 800 ms: b's share in each.
    let buckets: Vec<Mutex<(u32, u32)>> = (0..5).map(|_| Mutex::new((0, 0))).collect();
    while t0.elapsed() < Duration::from_millis(4000) {
        let at = t0.elapsed();
        let r = c.roundtrip(&get("/"));
        assert_eq!(r.status, 200);
        let i = (at.as_millis() / 800).min(4) as usize;
        let mut bucket = buckets[i].lock().unwrap();
        bucket.1 += 1;
        if r.body_str() == "b" {
            bucket.0 += 1;
        }
    }
    let shares: Vec<f64> = buckets
        .iter()
        .map(|m| {
            let (b, n) = *m.lock().unwrap();
            f64::from(b) / f64::from(n.max(1))
        })
        .collect();
    // Effective weight f = (i + 0.5) / 5 of bucket i; two peers of weight 1 give b the
    // share f / (1 + f): 0.09, 0.23, 0.33, 0.41, 0.47. Each bucket within ±0.12.
    for (i, share) in shares.iter().enumerate() {
        let f = (i as f64 + 0.5) / 5.0;
        let want = f / (1.0 + f);
        assert!(
            (share - want).abs() <= 0.12,
            "bucket {i}: b's share {share:.2}, expected {want:.2} (all: {shares:.2?})"
        );
    }
    // After the ramp both take half.
    let mut b_count = 0;
    for _ in 0..100 {
        if c.roundtrip(&get("/")).body_str() == "b" {
            b_count += 1;
        }
    }
    assert_eq!(b_count, 50, "after slow start the weights are plain again");
    proxy.shutdown();
}

/// Every socket of this process (the in-process proxy's included) with its local and peer
/// address.
fn own_sockets() -> Vec<(
    i32,
    Option<std::net::SocketAddr>,
    Option<std::net::SocketAddr>,
)> {
    use std::os::fd::BorrowedFd;
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // SAFETY: the fd is open in this process for this look (a closed one just errors).
        let b = unsafe { BorrowedFd::borrow_raw(fd) };
        let s = socket2::SockRef::from(&b);
        let local = s.local_addr().ok().and_then(|a| a.as_socket());
        let peer = s.peer_addr().ok().and_then(|a| a.as_socket());
        if local.is_some() {
            out.push((fd, local, peer));
        }
    }
    out
}

fn sock(fd: i32) -> socket2::SockRef<'static> {
    use std::os::fd::BorrowedFd;
    // SAFETY: the socket stays open while the test holds its proxy and connections.
    let b: &'static BorrowedFd<'static> =
        Box::leak(Box::new(unsafe { BorrowedFd::borrow_raw(fd) }));
    socket2::SockRef::from(b)
}

fn getsockopt_int(fd: i32, level: i32, name: i32) -> i32 {
    let mut v: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: `v` and `len` live on this frame; the kernel writes at most `len` bytes.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&mut v as *mut i32).cast(), &mut len) };
    assert_eq!(rc, 0, "getsockopt: {}", std::io::Error::last_os_error());
    v
}

#[test]
fn tcp_options_are_on_the_listener_accepted_and_upstream_sockets() {
    let b = Backend::start("b");
    let toml = ProxyConfig::new()
        .upstream_with(
            "app",
            "round_robin",
            &[
                "tcp = { keepalive = { idle_s = 40, interval_s = 6, count = 3 }, nodelay = true, \
               send_buffer = 131072, user_timeout_ms = 9000 }",
            ],
            &[peer(b.addr())],
        )
        .toml()
        .replacen(
            "[server]\n",
            "[server]\ntcp = { keepalive = { idle_s = 30, interval_s = 5, count = 4 }, \
             recv_buffer = 65536, user_timeout_ms = 7000, defer_accept_s = 2, fastopen = 16 }\n",
            1,
        );
    let proxy = Proxy::start(&toml);
    let mut c = proxy.client();
    assert_eq!(c.roundtrip(&get("/")).status, 200);
    let client_addr = c.stream().local_addr().unwrap();
    let socks = own_sockets();
    let listener = socks
        .iter()
        .find(|(_, l, p)| *l == Some(proxy.addr) && p.is_none())
        .expect("the proxy's listener")
        .0;
    let accepted = socks
        .iter()
        .find(|(_, l, p)| *l == Some(proxy.addr) && *p == Some(client_addr))
        .expect("the accepted client connection")
        .0;
    let upstream = socks
        .iter()
        .find(|(_, l, p)| *p == Some(b.addr()) && *l != Some(b.addr()))
        .expect("the pooled upstream connection")
        .0;
    for fd in [listener, accepted] {
        let s = sock(fd);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(30));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(5));
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 4);
        assert_eq!(
            s.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(7000))
        );
        // Linux doubles SO_RCVBUF for its bookkeeping.
        assert!(s.recv_buffer_size().unwrap() >= 65536);
    }
    assert_ne!(
        getsockopt_int(listener, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT),
        0
    );
    assert_eq!(
        getsockopt_int(listener, libc::IPPROTO_TCP, libc::TCP_FASTOPEN),
        16
    );
    assert!(sock(accepted).tcp_nodelay().unwrap(), "on by default");
    let up = sock(upstream);
    assert!(up.keepalive().unwrap());
    assert_eq!(up.tcp_keepalive_time().unwrap(), Duration::from_secs(40));
    assert_eq!(up.tcp_keepalive_interval().unwrap(), Duration::from_secs(6));
    assert_eq!(up.tcp_keepalive_retries().unwrap(), 3);
    assert_eq!(
        up.tcp_user_timeout().unwrap(),
        Some(Duration::from_millis(9000))
    );
    assert!(up.send_buffer_size().unwrap() >= 131072);
    assert!(up.tcp_nodelay().unwrap());
    proxy.shutdown();
}

#[test]
fn an_option_the_kernel_refuses_is_a_startup_error_naming_the_key() {
    let b = Backend::start("b");
    // TCP_USER_TIMEOUT is an int: the kernel refuses what does not fit (EINVAL).
    let toml = ProxyConfig::new()
        .upstream_with(
            "app",
            "round_robin",
            &["tcp = { user_timeout_ms = 3000000000 }"],
            &[peer(b.addr())],
        )
        .toml();
    let e = ringlb::Server::start(config_from(&toml))
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("key `upstream[0].tcp.user_timeout_ms`"), "{e}");
    assert!(e.contains("nvalid argument"), "{e}");
    let toml = ProxyConfig::with_backends(&[&b]).toml().replacen(
        "[server]\n",
        "[server]\ntcp = { user_timeout_ms = 3000000000 }\n",
        1,
    );
    let e = ringlb::Server::start(config_from(&toml))
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("server.tcp.user_timeout_ms"), "{e}");
}

#[test]
fn pooled_connections_rotate_after_max_requests_per_conn() {
    let b = Backend::start("b");
    let toml = ProxyConfig::with_backends(&[&b]).toml().replace(
        "idle_timeout_ms = 30000 }",
        "idle_timeout_ms = 30000, max_requests_per_conn = 3 }",
    );
    let proxy = Proxy::start(&toml);
    let mut c = proxy.client();
    for _ in 0..9 {
        assert_eq!(c.roundtrip(&get("/")).status, 200);
    }
    assert_eq!(b.request_count(), 9);
    assert_eq!(b.accepts(), 3, "three requests per upstream connection");
    proxy.shutdown();
}

#[test]
fn a_peer_overrides_the_upstream_read_timeout() {
    let slow = Backend::with_handler("slow", |_| {
        Reply::ok("slow").delay(Duration::from_millis(3000))
    });
    let toml = ProxyConfig::new()
        .upstream_with(
            "app",
            "round_robin",
            &["retry = { max_retries = 0 }"],
            &[peer(slow.addr())],
        )
        .toml()
        .replace(
            &format!("address = \"{}\", weight = 1", slow.addr()),
            &format!(
                "address = \"{}\", weight = 1, timeouts = {{ upstream_read_ms = 200 }}",
                slow.addr()
            ),
        );
    let proxy = Proxy::start(&toml);
    // The upstream's read timeout is 15 s and the backend answers after 3 s: a 504 well
    // before that is the peer's 200 ms.
    let t0 = Instant::now();
    let r = proxy.client().roundtrip(&get("/"));
    r.assert_proxy_error(504);
    assert!(
        t0.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t0.elapsed()
    );
    proxy.shutdown();
}

/// GET `path` on the proxy's admin endpoint.
fn admin(proxy: &Proxy, path: &str) -> String {
    let addr = proxy.server().admin_addr().expect("admin is on");
    let r = Client::connect(addr)
        .roundtrip(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
    assert_eq!(r.status, 200);
    r.body_str()
}

#[test]
fn queue_and_limits_show_in_metrics_and_status() {
    let (b, _) = counting_backend("busy", Duration::from_millis(500));
    let toml = ProxyConfig::new()
        .upstream_with(
            "app",
            "round_robin",
            &[
                "max_conns = 1",
                "queue = { max = 1, timeout_ms = 200 }",
                "rate = { requests_per_sec = 1, burst = 1, key = \"client_ip\" }",
            ],
            &[peer(b.addr())],
        )
        .toml()
        .replace("admin = \"\"", "admin = \"127.0.0.1:0\"");
    let proxy = Proxy::start(&toml);
    let addr = proxy.addr;
    // The client rate has one token for 127.0.0.1: the first request takes it, the second
    // gets 429.
    let first = thread::spawn(move || get_once(addr, "/1"));
    b.wait_heads(1, Duration::from_secs(5));
    get_once(addr, "/2").assert_proxy_error(429);
    assert_eq!(first.join().unwrap().status, 200);
    let metrics = admin(&proxy, "/metrics");
    let line = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
            .to_string()
    };
    assert_eq!(
        line("ringlb_upstream_client_rate_limited_total{"),
        "ringlb_upstream_client_rate_limited_total{upstream=\"app\"} 1"
    );
    assert!(line("ringlb_peer_max_conns{").ends_with(" 1"));
    assert!(line("ringlb_upstream_queue_length{").ends_with(" 0"));
    assert!(metrics.contains("ringlb_upstream_queue_wait_seconds_count{upstream=\"app\"}"));
    let status: serde_json::Value = serde_json::from_str(&admin(&proxy, "/status")).unwrap();
    let g = &status["groups"][0];
    assert_eq!(g["client_rate_limited_total"], 1);
    assert_eq!(g["queue"]["max"], 1);
    assert_eq!(g["queue"]["timeout_ms"], 200);
    assert_eq!(g["peers"][0]["max_conns"], 1);
    proxy.shutdown();
}

#[test]
fn queue_overflow_and_timeout_are_counted() {
    let (b, _) = counting_backend("busy", Duration::from_millis(1500));
    let toml = ProxyConfig::new()
        .upstream_with(
            "app",
            "round_robin",
            &["max_conns = 1", "queue = { max = 1, timeout_ms = 200 }"],
            &[peer(b.addr())],
        )
        .toml()
        .replace("admin = \"\"", "admin = \"127.0.0.1:0\"");
    let proxy = Proxy::start(&toml);
    let addr = proxy.addr;
    let first = thread::spawn(move || get_once(addr, "/1"));
    b.wait_heads(1, Duration::from_secs(5));
    let second = thread::spawn(move || get_once(addr, "/2"));
    thread::sleep(Duration::from_millis(80));
    get_once(addr, "/3").assert_proxy_error(503);
    second.join().unwrap().assert_proxy_error(503);
    assert_eq!(first.join().unwrap().status, 200);
    let metrics = admin(&proxy, "/metrics");
    for want in [
        "ringlb_upstream_queue_overflows_total{upstream=\"app\"} 1",
        "ringlb_upstream_queue_timeouts_total{upstream=\"app\"} 1",
        "ringlb_upstream_queue_length{upstream=\"app\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == want),
            "no `{want}` in\n{metrics}"
        );
    }
    let saturated = metrics
        .lines()
        .find(|l| l.starts_with("ringlb_peer_saturated_total{"))
        .expect("saturation counter");
    assert!(!saturated.ends_with(" 0"), "{saturated}");
    let status: serde_json::Value = serde_json::from_str(&admin(&proxy, "/status")).unwrap();
    let q = &status["groups"][0]["queue"];
    assert_eq!(q["overflows_total"], 1);
    assert_eq!(q["timeouts_total"], 1);
    assert_eq!(q["length"], 0);
    proxy.shutdown();
}

#[test]
fn a_reload_with_an_option_the_kernel_refuses_is_refused() {
    let b = Backend::start("b");
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let bad = ProxyConfig::new()
        .upstream_with(
            "app",
            "round_robin",
            &["tcp = { user_timeout_ms = 3000000000 }"],
            &[peer(b.addr())],
        )
        .toml();
    let e = proxy
        .server()
        .apply(config_from(&bad))
        .expect_err("refused");
    assert!(e.contains("key `upstream[0].tcp.user_timeout_ms`"), "{e}");
    // Still serving on the previous configuration.
    assert_eq!(proxy.client().roundtrip(&get("/")).status, 200);
    proxy.shutdown();
}

#[test]
fn an_open_websocket_tunnel_holds_its_max_conns_slot() {
    let b = Backend::with_handler("ws", |req| {
        if req.header("upgrade").is_some() {
            Reply::raw(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            )
        } else {
            Reply::ok("plain")
        }
    });
    let proxy = ProxyConfig::new()
        .upstream_with(
            "app",
            "round_robin",
            &["max_conns = 1", "queue = { max = 0 }"],
            &[peer(b.addr())],
        )
        .start();
    let mut tunnel = proxy.client();
    tunnel.send(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    let r = tunnel.head_response();
    assert_eq!(r.status, 101, "{}", show(&r.head));
    // The tunnel is the peer's one request in flight: a plain request finds it full.
    let busy = get_once(proxy.addr, "/plain");
    busy.assert_proxy_error(503);
    assert!(
        busy.body_str().contains("queue is full"),
        "{}",
        busy.body_str()
    );
    // Once the tunnel is gone the slot is free again.
    drop(tunnel);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = get_once(proxy.addr, "/plain");
        if r.status == 200 {
            assert_eq!(r.body_str(), "plain");
            break;
        }
        assert!(Instant::now() < deadline, "the slot never freed");
        thread::sleep(Duration::from_millis(20));
    }
    proxy.shutdown();
}

#[test]
fn the_upstream_rate_paces_queued_requests_and_sheds_without_a_queue() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    // Without a queue: a burst of 10 gets the 3 tokens of the bucket (a 4th may refill).
    let shed = ProxyConfig::new()
        .upstream_with(
            "app",
            "round_robin",
            &[
                "rate = { requests_per_sec = 5, burst = 3 }",
                "queue = { max = 0 }",
            ],
            &[peer(a.addr()), peer(b.addr())],
        )
        .start();
    let mut c = shed.client();
    let statuses: Vec<u16> = (0..10).map(|_| c.roundtrip(&get("/")).status).collect();
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    assert!((3..=4).contains(&ok), "{statuses:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 503).count(), 10 - ok);
    assert_eq!(a.request_count() + b.request_count(), ok);
    shed.shutdown();

    // With the queue: 7 at once all get through, paced at 5/s after the burst of 3.
    let paced = ProxyConfig::new()
        .upstream_with(
            "app",
            "round_robin",
            &["rate = { requests_per_sec = 5, burst = 3 }"],
            &[peer(a.addr()), peer(b.addr())],
        )
        .start();
    let addr = paced.addr;
    let t0 = Instant::now();
    let clients: Vec<_> = (0..7)
        .map(|i| {
            thread::spawn(move || {
                let r = get_once(addr, &format!("/p{i}"));
                (r.status, t0.elapsed())
            })
        })
        .collect();
    let mut done: Vec<(u16, Duration)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    done.sort_by_key(|d| d.1);
    assert!(done.iter().all(|d| d.0 == 200), "{done:?}");
    // 4 more tokens at 200 ms each: the last one no sooner than ~800 ms.
    let last = done[6].1;
    assert!(last >= Duration::from_millis(700), "{done:?}");
    assert!(last < Duration::from_millis(3000), "{done:?}");
    paced.shutdown();
}

#[test]
fn max_conns_holds_with_one_shard_per_cpu() {
    // `workers = "auto"`: each shard's thread is pinned before it learns its part.
    let (b, max) = counting_backend("slow", Duration::from_millis(150));
    let toml = ProxyConfig::new()
        .upstream_with("app", "round_robin", &["max_conns = 2"], &[peer(b.addr())])
        .toml()
        .replace("workers = 1", "workers = \"auto\"");
    let proxy = Proxy::start(&toml);
    let addr = proxy.addr;
    let clients: Vec<_> = (0..16)
        .map(|i| thread::spawn(move || get_once(addr, &format!("/r{i}")).status))
        .collect();
    let statuses: Vec<u16> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert_eq!(statuses, vec![200; 16]);
    let most = max.load(Ordering::SeqCst);
    assert!(most <= 2, "the backend saw {most} requests at once");
    proxy.shutdown();
}

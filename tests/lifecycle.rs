//! Shards, drivers, limits and the pool's lifecycle (idle expiry, `max_idle_per_peer`, LIFO
//! reuse): what the server does besides forwarding.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn config(server_extra: &str, backend: &Backend, upstream_extra: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\nadmin = \"\"\n{server_extra}\n\
         [[upstream]]\nname = \"app\"\npeers = [{{ address = \"{}\" }}]\n{upstream_extra}\n",
        backend.addr()
    )
}

#[test]
fn max_connections_stops_accepting_until_one_closes() {
    let b = Backend::start("a");
    let proxy = Proxy::start(&config("max_connections = 2", &b, ""));
    let mut c1 = Client::connect(proxy.addr);
    let mut c2 = Client::connect(proxy.addr);
    assert_eq!(c1.roundtrip(&get("/1")).status, 200);
    assert_eq!(c2.roundtrip(&get("/2")).status, 200);

    // The third connection completes in the kernel's backlog but is not accepted: its request
    // gets no answer while two connections are open.
    let mut c3 = TcpStream::connect(proxy.addr).expect("connect");
    c3.write_all(&get("/3")).expect("write");
    c3.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    match c3.read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("third connection was served beyond max_connections: {other:?}"),
    }
    assert_eq!(b.heads_seen(), 2);

    // Closing one lets the shard accept the waiting connection and answer it.
    drop(c1);
    c3.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let mut c3 = Client::from_stream(c3);
    let r = c3.response();
    assert_eq!(r.status, 200);
    assert_eq!(
        b.requests().last().map(|r| r.path().to_string()),
        Some("/3".into())
    );
    assert_eq!(c2.roundtrip(&get("/4")).status, 200);
}

#[test]
fn epoll_driver_serves_requests() {
    let b = Backend::start("a");
    let cfg = ringlb::Config::from_toml_str(&config("driver = \"epoll\"", &b, ""), "<test>")
        .expect("config");
    let server = ringlb::Server::start(cfg).expect("start");
    assert_eq!(server.driver(), "epoll");
    let mut c = Client::connect(server.listen_addrs()[0]);
    for i in 0..20 {
        let r = c.roundtrip(&get(&format!("/{i}")));
        assert_eq!(r.status, 200);
        assert_eq!(r.body_str(), "a");
    }
    assert_eq!(
        b.accepts(),
        1,
        "the epoll driver pools upstream connections too"
    );
    assert!(server.shutdown());
}

#[test]
fn auto_driver_uses_io_uring_when_the_kernel_has_it() {
    let b = Backend::start("a");
    let cfg = ringlb::Config::from_toml_str(&config("", &b, ""), "<test>").expect("config");
    let server = ringlb::Server::start(cfg).expect("start");
    let expected = if monoio::utils::detect_uring() {
        "io_uring"
    } else {
        "epoll"
    };
    assert_eq!(server.driver(), expected);
    let mut c = Client::connect(server.listen_addrs()[0]);
    assert_eq!(c.roundtrip(&get("/")).status, 200);
}

#[test]
fn shards_are_named_threads_pinned_to_their_cpus() {
    let b = Backend::start("a");
    let cpus = ringlb::config::allowed_cpus();
    let list: Vec<String> = cpus.iter().take(2).map(|c| c.to_string()).collect();
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\ncpus = \"{}\"\nadmin = \"\"\n\
         [[upstream]]\nname = \"app\"\npeers = [{{ address = \"{}\" }}]\n",
        list.join(","),
        b.addr()
    );
    let proxy = Proxy::start(&toml);
    let mut found = 0;
    for entry in std::fs::read_dir("/proc/self/task").expect("tasks") {
        let dir = entry.expect("task").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let Some(n) = comm.trim().strip_prefix("ringlb-shard-") else {
            continue;
        };
        let n: usize = n.parse().expect("shard index");
        let status = std::fs::read_to_string(dir.join("status")).expect("status");
        let allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .expect("Cpus_allowed_list")
            .trim()
            .to_string();
        let want = cpus[n % cpus.len().min(2)].to_string();
        assert_eq!(
            allowed, want,
            "shard {n} pinned to {allowed}, wanted {want}"
        );
        found += 1;
    }
    assert!(found >= 2, "expected two shard threads, found {found}");
    let mut c = Client::connect(proxy.addr);
    assert_eq!(c.roundtrip(&get("/")).status, 200);
}

#[test]
fn ipv6_listener_serves_and_without_v6_loopback_the_start_error_names_the_key() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        // No IPv6 loopback here: the serving half is skipped, and what is left to check is
        // that ringlb refuses to start with an error that names the listen key.
        eprintln!("SKIPPED serving over IPv6: no IPv6 loopback; checking the start error");
        let toml = "[server]\nlisten = [\"[::1]:0\"]\nworkers = 1\nadmin = \"\"\n\
                    [[upstream]]\nname = \"app\"\npeers = [{ address = \"127.0.0.1:9\" }]\n";
        let cfg = ringlb::Config::from_toml_str(toml, "<test>").expect("config");
        match ringlb::Server::start(cfg) {
            Ok(_) => panic!("started on [::1] although this host cannot bind it"),
            Err(e) => assert!(
                e.to_string().contains("server.listen[0]"),
                "the error does not name the key: {e}"
            ),
        }
        return;
    }
    let b = Backend::start("a");
    let toml = format!(
        "[server]\nlisten = [\"[::1]:0\", \"127.0.0.1:0\"]\nworkers = 1\nadmin = \"\"\n\
         [[upstream]]\nname = \"app\"\npeers = [{{ address = \"{}\" }}]\n",
        b.addr()
    );
    let cfg = ringlb::Config::from_toml_str(&toml, "<test>").expect("config");
    let server = ringlb::Server::start(cfg).expect("start");
    let addrs = server.listen_addrs().to_vec();
    assert!(addrs[0].is_ipv6() && addrs[0].port() != 0);
    for addr in addrs {
        let mut c = Client::connect(addr);
        let r = c.roundtrip(&get("/"));
        assert_eq!(r.status, 200);
    }
    let xff: Vec<String> = b
        .requests()
        .iter()
        .map(|r| r.header("x-forwarded-for").unwrap_or("").to_string())
        .collect();
    assert_eq!(xff, vec!["::1".to_string(), "127.0.0.1".to_string()]);
}

#[test]
fn idle_pooled_connection_expires_after_idle_timeout() {
    let b = Backend::start("a");
    let proxy = Proxy::start(&config(
        "",
        &b,
        "pool = { max_idle_per_peer = 8, idle_timeout_ms = 200 }",
    ));
    let mut c = Client::connect(proxy.addr);
    assert_eq!(c.roundtrip(&get("/1")).status, 200);
    assert_eq!(c.roundtrip(&get("/2")).status, 200);
    assert_eq!(b.accepts(), 1);
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(c.roundtrip(&get("/3")).status, 200);
    assert_eq!(
        b.accepts(),
        2,
        "an expired idle connection must not be reused"
    );
}

#[test]
fn max_idle_zero_disables_pooling() {
    let b = Backend::start("a");
    let proxy = Proxy::start(&config(
        "",
        &b,
        "pool = { max_idle_per_peer = 0, idle_timeout_ms = 30000 }",
    ));
    let mut c = Client::connect(proxy.addr);
    for i in 0..5 {
        assert_eq!(c.roundtrip(&get(&format!("/{i}"))).status, 200);
    }
    assert_eq!(b.accepts(), 5);
}

#[test]
fn pooled_connection_closed_by_the_peer_is_replaced_transparently() {
    // The backend keeps advertising keep-alive but closes every connection after one
    // response: each pooled connection is dead by the time it is reused.
    let b = Backend::with_handler("a", |r| {
        let body = format!("ok {}", r.path());
        Reply::raw(format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
        .close()
    });
    let proxy = Proxy::start(&config("", &b, ""));
    let mut c = Client::connect(proxy.addr);
    for i in 0..5 {
        let r = c.roundtrip(&get(&format!("/{i}")));
        assert_eq!(r.status, 200, "request {i}: {}", show(&r.head));
        assert_eq!(r.body_str(), format!("ok /{i}"));
    }
    assert_eq!(
        b.heads_seen(),
        5,
        "each request reached the backend exactly once"
    );
    assert_eq!(b.accepts(), 5);
}

#[test]
fn no_matching_route_gets_404_and_keeps_the_connection() {
    let b = Backend::start("a");
    let toml = format!(
        "{}\n[[route]]\nhost = \"a.example\"\nupstream = \"app\"\n",
        config("", &b, "")
    );
    let proxy = Proxy::start(&toml);
    let mut c = Client::connect(proxy.addr);
    let r = c.roundtrip(b"GET / HTTP/1.1\r\nHost: other.example\r\n\r\n");
    r.assert_proxy_error(404);
    let r = c.roundtrip(b"GET / HTTP/1.1\r\nHost: a.example:8080\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(b.heads_seen(), 1);
}

#[test]
fn http10_request_without_host_gets_one_upstream() {
    let b = Backend::start("a");
    let proxy = Proxy::start(&config("", &b, ""));
    let mut c = Client::connect(proxy.addr);
    let r = c.roundtrip(b"GET /old HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(b.only_request().header("host"), Some("app"));
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ringlb")
}

#[test]
fn version_and_help() {
    let out = Command::new(bin()).arg("--version").output().expect("run");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("ringlb {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(bin()).arg("--help").output().expect("run");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["check", "demo", "--config", "--log-level"] {
        assert!(
            help.contains(word),
            "--help does not mention {word}:\n{help}"
        );
    }
}

#[test]
fn demo_starts_three_backends_and_rotates_over_them() {
    let mut child = Command::new(bin())
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--admin",
            "off",
            "--log-level",
            "warn",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn demo");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr: SocketAddr = loop {
        assert!(Instant::now() < deadline, "demo printed no address");
        let line = lines.next().expect("demo output ended").expect("read");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.trim_end_matches('/').parse().expect("address");
        }
    };
    let mut c = Client::connect(addr);
    let bodies: Vec<String> = (0..3).map(|_| c.roundtrip(&get("/")).body_str()).collect();
    let _ = child.kill();
    let _ = child.wait();
    for (i, body) in bodies.iter().enumerate() {
        assert_eq!(body, &format!("hello from demo backend {}: GET /\n", i + 1));
    }
}

#[test]
fn second_signal_exits_at_once() {
    let b = Backend::with_handler("a", |_| Reply::ok("late").delay(Duration::from_secs(20)));
    let mut p = ProxyProcess::spawn_with_log_level(
        &ProxyConfig::with_backends(&[&b])
            .shutdown_timeout_ms(30_000)
            .toml(),
        "info",
    );
    let mut inflight = Client::connect(p.addr);
    inflight.send(&get("/slow"));
    b.wait_heads(1, Duration::from_secs(10));
    p.signal(libc::SIGTERM);
    // The first signal waits for the 20 s request; the second must not. Wait until the first
    // one was acted on (logged), so the second is the second.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.log_text().contains("SIGTERM: shutting down") {
        assert!(
            Instant::now() < deadline,
            "SIGTERM not acted on within 10 s:\n{}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let t = Instant::now();
    p.signal(libc::SIGINT);
    let st = p
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running after the second signal:\n{}", p.log_text()));
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(st.code(), Some(1), "exit status {st}");
}

#[test]
fn connect_timeout_moves_on_to_the_next_peer() {
    let (_hole, _fill, hole_addr) = blackhole_peer();
    let b = Backend::start("b");
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\nadmin = \"\"\n\
         [timeouts]\nconnect_ms = 300\n\
         [[upstream]]\nname = \"app\"\npeers = [{{ address = \"{hole_addr}\" }}, {{ address = \"{}\" }}]\n",
        b.addr()
    );
    let proxy = Proxy::start(&toml);
    let mut c = Client::connect(proxy.addr);
    let t = Instant::now();
    let r = c.roundtrip(&get("/"));
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{}", show(&r.head));
    assert_eq!(r.body_str(), "b");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "first peer should have cost one connect timeout (300 ms), took {took:?}"
    );
}

/// A backend whose `/hold/NAME` requests wait until `NAME` is released (20 s at most) and
/// that answers every request with the accept index of the connection it came on.
fn holding_backend(released: std::sync::Arc<std::sync::Mutex<Vec<String>>>) -> Backend {
    Backend::with_handler("holding", move |r| {
        if let Some(name) = r.path().strip_prefix("/hold/") {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !released.lock().unwrap().iter().any(|n| n == name) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Reply::ok(r.conn.to_string())
    })
}

/// Sends `/hold/a` on `ca` and `/hold/b` on `cb`, waits until both are at the backend (on two
/// upstream connections), releases them and reads both answers.
fn hold_pair(
    b: &Backend,
    released: &std::sync::Mutex<Vec<String>>,
    ca: &mut Client,
    cb: &mut Client,
) {
    let heads = b.heads_seen();
    released.lock().unwrap().clear();
    ca.send(&get("/hold/a"));
    cb.send(&get("/hold/b"));
    b.wait_heads(heads + 2, Duration::from_secs(10));
    released
        .lock()
        .unwrap()
        .extend(["a".to_string(), "b".to_string()]);
    assert_eq!(ca.response().status, 200);
    assert_eq!(cb.response().status, 200);
}

/// `pool.max_idle_per_peer`: two requests in flight at once use two upstream connections; with
/// `max_idle_per_peer = 1` only one of them is kept, so the next pair needs a third connection,
/// while with 2 both are kept and the next pair needs none.
#[test]
fn max_idle_per_peer_caps_the_idle_connections_kept() {
    for (max_idle, want_accepts) in [(1, 3), (2, 2)] {
        let released = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let b = holding_backend(released.clone());
        let proxy = Proxy::start(&config(
            "",
            &b,
            &format!("pool = {{ max_idle_per_peer = {max_idle}, idle_timeout_ms = 30000 }}"),
        ));
        let (mut ca, mut cb) = (Client::connect(proxy.addr), Client::connect(proxy.addr));
        hold_pair(&b, &released, &mut ca, &mut cb);
        assert_eq!(b.accepts(), 2);
        // A request on each client connection: its task returned its upstream connection to
        // the pool (or closed it) before it reads the client's next request. Both reuse.
        assert_eq!(ca.roundtrip(&get("/q")).status, 200);
        assert_eq!(cb.roundtrip(&get("/q")).status, 200);
        assert_eq!(b.accepts(), 2, "max_idle_per_peer = {max_idle}");
        hold_pair(&b, &released, &mut ca, &mut cb);
        assert_eq!(
            b.accepts(),
            want_accepts,
            "max_idle_per_peer = {max_idle}: upstream connections opened"
        );
    }
}

/// The pool is LIFO: the connection returned last is reused first.
#[test]
fn pool_reuses_the_most_recently_returned_connection() {
    let released = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let b = holding_backend(released.clone());
    let proxy = Proxy::start(&config(
        "",
        &b,
        "pool = { max_idle_per_peer = 8, idle_timeout_ms = 30000 }",
    ));
    let (mut ca, mut cb) = (Client::connect(proxy.addr), Client::connect(proxy.addr));
    ca.send(&get("/hold/a"));
    cb.send(&get("/hold/b"));
    b.wait_heads(2, Duration::from_secs(10));
    // a's connection goes back first (and is used once more by a's next request, which can
    // only take it: b's is still busy); then b's goes back.
    released.lock().unwrap().push("a".into());
    let ka = ca.response().body_str();
    assert_eq!(ca.roundtrip(&get("/q")).body_str(), ka);
    released.lock().unwrap().push("b".into());
    let kb = cb.response().body_str();
    assert_ne!(ka, kb);
    // b's task returned kb before it reads this request: kb is the last returned.
    assert_eq!(
        cb.roundtrip(&get("/which")).body_str(),
        kb,
        "not LIFO (a's was {ka})"
    );
    assert_eq!(b.accepts(), 2);
}

/// Client sockets are close-on-exec: a process started while a client is connected does not
/// inherit its socket, so when ringlb closes the connection the client sees the end at once
/// (and not when that process exits).
#[test]
fn a_closed_client_connection_is_not_held_open_by_a_child_process() {
    let b = Backend::start("a");
    let proxy = Proxy::start(&config("", &b, ""));
    let mut c = Client::connect(proxy.addr);
    assert_eq!(c.roundtrip(&get("/1")).status, 200);
    // The child starts while the accepted socket is open in this process (the proxy runs
    // in-process).
    let mut child = Command::new("sleep").arg("5").spawn().expect("spawn sleep");
    let t = Instant::now();
    c.send(b"GET /2 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 200);
    let mut rest = Vec::new();
    c.stream()
        .set_read_timeout(Some(Duration::from_secs(4)))
        .unwrap();
    let end = c.stream().read_to_end(&mut rest);
    let took = t.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    assert!(end.is_ok(), "no end of stream within 4 s: {end:?}");
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
}

//! Health checking end to end, against real backends the tests start, break, kill and restart:
//! HTTP and TCP active checks, passive ejection (with `max_eject_percent`), propagation to every
//! shard under load (measured), backups, regional failover, `when_all_down`, the admin
//! endpoint, drop-on-full of passive reports, `passive.on_5xx`, and the probe's `method`,
//! `host`, `port` and `body_contains`.
//!
//! Intervals are short (probes every 50 ms) so the suite stays fast.

mod common;

use common::*;
use serde_json::Value;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// How long a test waits for a health state at most.
const WAIT: Duration = Duration::from_secs(5);
/// A fast HTTP check of `/health`.
const HTTP_CHECK: &str = "health = { kind = \"http\", path = \"/health\", expect = \"200-399\", \
                          interval_ms = 50, timeout_ms = 200, rise = 2, fall = 3 }";
/// A fast TCP check.
const TCP_CHECK: &str =
    "health = { kind = \"tcp\", interval_ms = 50, timeout_ms = 200, rise = 2, fall = 2 }";
/// Passive ejection off, to see the active check alone.
const NO_PASSIVE: &str = "passive = { consecutive_failures = 0 }";

/// One `peers = [...]` entry.
fn entry(addr: std::net::SocketAddr, extra: &str) -> String {
    format!("{{ address = \"{addr}\"{extra} }}")
}

/// A proxy config: `workers` shards, the admin endpoint on an ephemeral loopback port, one
/// round-robin upstream `name` with these peer entries and extra upstream lines.
fn config(
    workers: usize,
    server_extra: &str,
    name: &str,
    peers: &[String],
    extra: &[&str],
) -> String {
    let mut s = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = {workers}\nadmin = \"127.0.0.1:0\"\n\
         shutdown_timeout_ms = 2000\n{server_extra}\n\
         [timeouts]\nconnect_ms = 500\nupstream_read_ms = 2000\n\n\
         [[upstream]]\nname = \"{name}\"\nalgorithm = \"round_robin\"\npeers = [\n"
    );
    for p in peers {
        let _ = writeln!(s, "  {p},");
    }
    s.push_str("]\n");
    for e in extra {
        s.push_str(e);
        s.push('\n');
    }
    s
}

/// GET `path` on the admin endpoint: (status, body).
fn admin_get(proxy: &Proxy, path: &str) -> (u16, String) {
    let addr = proxy.server().admin_addr().expect("admin is on");
    let mut c = Client::connect(addr);
    let r = c.roundtrip(format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes());
    (r.status, r.body_str())
}

/// The `/status` document.
fn status(proxy: &Proxy) -> Value {
    let (code, body) = admin_get(proxy, "/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"))
}

/// Peer `i` of group 0 in `/status`.
fn peer_status(proxy: &Proxy, i: usize) -> Value {
    status(proxy)["groups"][0]["peers"][i].clone()
}

/// Waits until peer `i` of group 0 has `state`; returns its status entry.
#[track_caller]
fn wait_state(proxy: &Proxy, i: usize, state: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let p = peer_status(proxy, i);
        if p["state"] == state {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "peer {i} did not become {state} within {WAIT:?}: {p:#}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until `cond` holds, for `WAIT` at most.
#[track_caller]
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "no {what} within {WAIT:?}");
        thread::sleep(Duration::from_millis(2));
    }
}

/// Sends `n` GETs (one connection) and returns the bodies of the responses; panics on a
/// non-200.
fn bodies(proxy: &Proxy, n: usize) -> Vec<String> {
    let mut c = proxy.client();
    (0..n)
        .map(|i| {
            let r = c.roundtrip(&get(&format!("/r{i}")));
            assert_eq!(r.status, 200, "request {i}: {}", show(&r.head));
            r.body_str()
        })
        .collect()
}

/// A backend answering `/health` with 200 or 500 as `healthy` says, and everything else 200
/// with its name.
fn switchable(name: &str, healthy: Arc<AtomicBool>) -> Backend {
    let n = name.to_string();
    Backend::with_handler(name, move |req| {
        if req.path() == "/health" {
            if healthy.load(Ordering::SeqCst) {
                Reply::ok("ok")
            } else {
                Reply::new(500, "sick")
            }
        } else {
            Reply::ok(n.clone())
        }
    })
}

/// Log lines captured from this test binary (a global subscriber, installed once).
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    static INIT: OnceLock<()> = OnceLock::new();
    let buf = LOGS.get_or_init(|| Mutex::new(Vec::new()));
    INIT.get_or_init(|| {
        struct W;
        impl std::io::Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                logs().lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(|| W)
            .try_init();
    });
    buf
}

/// Captured log lines containing every one of `needles`.
fn log_lines(needles: &[&str]) -> Vec<String> {
    let text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}

#[test]
fn http_check_takes_a_failing_peer_out_and_brings_it_back() {
    logs();
    let healthy = Arc::new(AtomicBool::new(true));
    let a = switchable("a", Arc::new(AtomicBool::new(true)));
    let b = switchable("b", healthy.clone());
    let proxy = Proxy::start(&config(
        1,
        "",
        "httpcheck",
        &[entry(a.addr(), ""), entry(b.addr(), "")],
        &[HTTP_CHECK, NO_PASSIVE],
    ));
    wait_state(&proxy, 0, "up");
    let p = wait_state(&proxy, 1, "up");
    assert_eq!(p["why"], "2 consecutive probe successes (last: HTTP 200)");
    assert_eq!(p["last_check"]["ok"], true);
    let got = bodies(&proxy, 4);
    assert_eq!(got.iter().filter(|n| *n == "b").count(), 2, "{got:?}");

    // b starts answering 500 on /health: down after exactly `fall` (3) failed probes.
    healthy.store(false, Ordering::SeqCst);
    let p = wait_state(&proxy, 1, "down");
    assert_eq!(p["eligible"], false);
    assert_eq!(
        p["why"],
        "3 consecutive probe failures (last: HTTP 500 (expected 200-399))"
    );
    assert_eq!(p["consecutive_failures"], 3);
    let b_before = b.traffic_count("/health");
    let got = bodies(&proxy, 10);
    assert!(got.iter().all(|n| n == "a"), "{got:?}");
    assert_eq!(
        b.traffic_count("/health"),
        b_before,
        "b got traffic while down"
    );

    // Healthy again: back after `rise` (2) probes, and it gets traffic.
    healthy.store(true, Ordering::SeqCst);
    let p = wait_state(&proxy, 1, "up");
    assert_eq!(p["why"], "2 consecutive probe successes (last: HTTP 200)");
    let got = bodies(&proxy, 4);
    assert_eq!(got.iter().filter(|n| *n == "b").count(), 2, "{got:?}");

    // Each change was logged once, with group, peer, old -> new and why.
    let down = log_lines(&["httpcheck", &b.addr().to_string(), "health: up -> down"]);
    assert_eq!(down.len(), 1, "{down:?}");
    assert!(down[0].contains("3 consecutive probe failures"), "{down:?}");
    let up = log_lines(&["httpcheck", &b.addr().to_string(), "health: down -> up"]);
    assert_eq!(up.len(), 1, "{up:?}");
}

#[test]
fn tcp_check_killed_backend_goes_down_and_restarted_one_comes_back() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let b_addr = b.addr();
    let proxy = Proxy::start(&config(
        1,
        "",
        "tcpcheck",
        &[entry(a.addr(), ""), entry(b_addr, "")],
        &[TCP_CHECK, NO_PASSIVE],
    ));
    wait_state(&proxy, 1, "up");
    b.kill();
    let p = wait_state(&proxy, 1, "down");
    assert!(
        p["why"]
            .as_str()
            .unwrap()
            .starts_with("2 consecutive probe failures (last: connect: "),
        "{p:#}"
    );
    assert!(bodies(&proxy, 6).iter().all(|n| n == "a"));

    let b = Backend::start_on("b2", b_addr);
    wait_state(&proxy, 1, "up");
    let got = bodies(&proxy, 6);
    assert_eq!(got.iter().filter(|n| *n == "b2").count(), 3, "{got:?}");
    assert_eq!(b.request_count(), 3);
}

#[test]
fn passive_ejects_a_resetting_backend_and_returns_it_after_eject_ms() {
    let a = Backend::start("a");
    let r = ResetBackend::start();
    let proxy = Proxy::start(&config(
        1,
        "",
        "passive",
        &[entry(a.addr(), ""), entry(r.addr(), "")],
        &["passive = { consecutive_failures = 3, eject_ms = 1500, max_eject_percent = 50 }"],
    ));
    // Round robin alternates: every second request hits the resetting peer, and the GET is
    // retried on `a` at once, so the client never sees the failure.
    let mut c = proxy.client();
    let mut failed = 0;
    while r.accepts() < 3 {
        let resp = c.roundtrip(&get("/x"));
        if resp.status != 200 {
            failed += 1;
        }
    }
    assert_eq!(failed, 0);
    let p = wait_state(&proxy, 1, "ejected");
    assert_eq!(p["ejections"], 1);
    assert!(
        p["why"]
            .as_str()
            .unwrap()
            .starts_with("3 consecutive failures (last: connection reset): ejected for 1500 ms"),
        "{p:#}"
    );
    // While ejected, everything goes to `a`. The peer is still in its first ejection after
    // the 20 requests, so every one of them was sent while it was out.
    let accepts = r.accepts();
    let got = bodies(&proxy, 20);
    let p = peer_status(&proxy, 1);
    assert!(
        p["state"] == "ejected" && p["ejections"] == 1,
        "the ejection ended before 20 requests were through (the machine is too slow for \
         eject_ms = 1500): {p:#}"
    );
    assert!(got.iter().all(|n| n == "a"), "{got:?}");
    assert_eq!(r.accepts(), accepts);

    // After eject_ms it is eligible again, gets traffic, and is ejected again for twice as long.
    let p = wait_state(&proxy, 1, "up");
    assert_eq!(p["why"], "ejection time over");
    let mut c = proxy.client();
    while r.accepts() < accepts + 3 {
        c.roundtrip(&get("/again"));
    }
    let p = wait_state(&proxy, 1, "ejected");
    assert_eq!(p["ejections"], 2);
    assert!(
        p["why"]
            .as_str()
            .unwrap()
            .contains("ejected for 3000 ms (ejection 2)"),
        "{p:#}"
    );
    let st = status(&proxy);
    assert!(
        st["shards"][0]["sent_observations"].as_u64().unwrap() >= 6,
        "{st:#}"
    );
}

#[test]
fn passive_respects_max_eject_percent() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let (r1, r2) = (ResetBackend::start(), ResetBackend::start());
    let proxy = Proxy::start(&config(
        1,
        "",
        "maxeject",
        &[
            entry(a.addr(), ""),
            entry(r1.addr(), ""),
            entry(b.addr(), ""),
            entry(r2.addr(), ""),
        ],
        // 25% of 4 peers: one ejected at a time.
        &["passive = { consecutive_failures = 2, eject_ms = 5000, max_eject_percent = 25 }"],
    ));
    let mut c = proxy.client();
    for _ in 0..40 {
        c.roundtrip(&get("/x"));
    }
    // Wait until the control thread has seen both resetting peers fail twice in a row: one is
    // ejected, and the other, over the limit, must stay in.
    let deadline = Instant::now() + WAIT;
    let g = loop {
        let g = status(&proxy)["groups"][0].clone();
        let peers = g["peers"].as_array().unwrap();
        let failing_twice = [1, 3]
            .iter()
            .filter(|&&i| {
                peers[i]["ejected"] == true
                    || peers[i]["passive_consecutive_failures"].as_u64() >= Some(2)
            })
            .count();
        if failing_twice == 2 {
            break g;
        }
        assert!(
            Instant::now() < deadline,
            "the resetting peers were not both seen failing within {WAIT:?}: {g:#}"
        );
        thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(g["max_ejected"], 1, "{g:#}");
    assert_eq!(g["ejected"], 1, "{g:#}");
    let peers = g["peers"].as_array().unwrap();
    let ejected: Vec<usize> = (0..4).filter(|&i| peers[i]["ejected"] == true).collect();
    assert_eq!(ejected.len(), 1, "{g:#}");
    let other = if ejected[0] == 1 { 3 } else { 1 };
    assert_eq!(peers[other]["state"], "up", "{g:#}");
    assert_eq!(peers[0]["state"], "up");
    assert_eq!(peers[2]["state"], "up");
}

/// One load client: keep-alive GETs on one connection until `stop`; records the instant and
/// status of every failure.
fn load_client(
    proxy_addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<(Instant, String)>>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut c = Client::connect(proxy_addr);
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            c.send(&get(&format!("/load/{i}")));
            i += 1;
            match c.try_response(false) {
                Ok(r) if r.status == 200 => {
                    ok.fetch_add(1, Ordering::SeqCst);
                }
                Ok(r) => {
                    failures
                        .lock()
                        .unwrap()
                        .push((Instant::now(), format!("status {}", r.status)));
                    if r.header("connection") == Some("close") {
                        c = Client::connect(proxy_addr);
                    }
                }
                Err(e) => {
                    failures
                        .lock()
                        .unwrap()
                        .push((Instant::now(), e.to_string()));
                    c = Client::connect(proxy_addr);
                }
            }
        }
    })
}

#[test]
fn killing_a_backend_under_load_on_two_shards_propagates_within_250ms() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let c_addr = c.addr();
    let proxy = Proxy::start(&config(
        2,
        "",
        "steady",
        &[entry(a.addr(), ""), entry(b.addr(), ""), entry(c_addr, "")],
        &[TCP_CHECK, NO_PASSIVE],
    ));
    assert_eq!(proxy.server().shard_count(), 2);
    wait_state(&proxy, 2, "up");

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..8)
        .map(|_| load_client(proxy.addr, stop.clone(), ok.clone(), failures.clone()))
        .collect();
    // Steady state first: every peer serves.
    wait_for("every peer to serve", || {
        [&a, &b, &c].iter().all(|p| p.request_count() > 0)
    });

    c.kill();
    let killed_at = Instant::now();
    // Wait until the verdict is in and every shard applied it.
    let deadline = Instant::now() + WAIT;
    let (propagated_at, st) = loop {
        let st = status(&proxy);
        let down = st["groups"][0]["peers"][2]["state"] == "down";
        let applied = st["shards"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["health_changes_applied"].as_u64() == Some(1));
        if down && applied {
            break (Instant::now(), st);
        }
        assert!(
            Instant::now() < deadline,
            "no propagation within {WAIT:?}: {st:#}"
        );
        thread::sleep(Duration::from_millis(2));
    };
    // The load goes on without failures on the two peers left.
    let served_before = ok.load(Ordering::SeqCst);
    wait_for("100 more requests served after propagation", || {
        ok.load(Ordering::SeqCst) >= served_before + 100
    });
    stop.store(true, Ordering::SeqCst);
    for t in clients {
        t.join().unwrap();
    }
    let served_after = ok.load(Ordering::SeqCst) - served_before;

    let lags: Vec<u64> = st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["last_apply_lag_us"].as_u64().unwrap())
        .collect();
    let worst = *lags.iter().max().unwrap();
    let failures = failures.lock().unwrap();
    let late: Vec<_> = failures
        .iter()
        .filter(|(t, _)| *t > propagated_at)
        .collect();
    println!(
        "probe verdict -> every shard stopped sending: {:.3} ms (per shard: {:?} us); \
         kill -> propagation observed: {:?}; {} requests served after propagation; \
         {} failed before it, {} after",
        worst as f64 / 1000.0,
        lags,
        propagated_at - killed_at,
        served_after,
        failures.len() - late.len(),
        late.len()
    );
    assert!(
        late.is_empty(),
        "requests failed after propagation: {late:?}"
    );
    assert!(served_after >= 100, "the load stalled: {served_after}");
    // Shards look at their control channel between requests and every 5 ms: 250 ms is 50 of
    // those ticks, room for two shards and the load threads sharing busy cores.
    assert!(
        worst < 250_000,
        "propagation took {worst} us, more than 250 ms"
    );
}

#[test]
fn backups_serve_only_while_every_primary_is_down() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let spare = Backend::start("spare");
    let (a_addr, b_addr) = (a.addr(), b.addr());
    let proxy = Proxy::start(&config(
        1,
        "",
        "backups",
        &[
            entry(a_addr, ""),
            entry(b_addr, ""),
            entry(spare.addr(), ", backup = true"),
        ],
        &[TCP_CHECK, NO_PASSIVE],
    ));
    wait_state(&proxy, 1, "up");
    assert!(bodies(&proxy, 6).iter().all(|n| n == "a" || n == "b"));

    a.kill();
    wait_state(&proxy, 0, "down");
    assert!(
        bodies(&proxy, 4).iter().all(|n| n == "b"),
        "one primary left: no backup"
    );
    assert_eq!(spare.request_count(), 0);

    b.kill();
    wait_state(&proxy, 1, "down");
    assert!(bodies(&proxy, 4).iter().all(|n| n == "spare"));

    // One primary back: the backup loses its traffic at once.
    let a = Backend::start_on("a2", a_addr);
    wait_state(&proxy, 0, "up");
    let spare_before = spare.request_count();
    assert!(bodies(&proxy, 4).iter().all(|n| n == "a2"));
    assert_eq!(spare.request_count(), spare_before);
    assert_eq!(a.request_count(), 4);
}

#[test]
fn regional_failover_and_fail_back_are_logged_once_each() {
    logs();
    let eu = Backend::start("eu");
    let us = Backend::start("us");
    let eu_addr = eu.addr();
    let proxy = Proxy::start(&config(
        1,
        "",
        "geo",
        &[
            entry(eu_addr, ", region = \"eu-1\""),
            entry(us.addr(), ", region = \"us-1\""),
        ],
        &[TCP_CHECK, NO_PASSIVE, "local_region = \"eu-1\""],
    ));
    wait_state(&proxy, 0, "up");
    assert!(
        bodies(&proxy, 4).iter().all(|n| n == "eu"),
        "local region first"
    );
    assert_eq!(us.request_count(), 0);

    eu.kill();
    wait_state(&proxy, 0, "down");
    assert!(bodies(&proxy, 4).iter().all(|n| n == "us"));
    let eu = Backend::start_on("eu2", eu_addr);
    wait_state(&proxy, 0, "up");
    assert!(bodies(&proxy, 4).iter().all(|n| n == "eu2"), "fail-back");
    assert_eq!(eu.request_count(), 4);

    let over = log_lines(&["geo", "regional failover from eu-1 to us-1"]);
    assert_eq!(over.len(), 1, "{over:?}");
    let back = log_lines(&["geo", "regional fail-back from us-1 to eu-1"]);
    assert_eq!(back.len(), 1, "{back:?}");
}

#[test]
fn when_all_down_fail_answers_503_at_once() {
    // The peer's health check fails (its /health answers 500) but it would serve traffic:
    // `fail` must answer 503 without trying it. Traffic that reached it would show in its
    // request log; "at once" is a generous bound far above a local round trip.
    let a = switchable("a", Arc::new(AtomicBool::new(false)));
    let proxy = Proxy::start(&config(
        1,
        "",
        "failfast",
        &[entry(a.addr(), "")],
        &[HTTP_CHECK, NO_PASSIVE, "when_all_down = \"fail\""],
    ));
    wait_state(&proxy, 0, "down");
    let mut c = proxy.client();
    let t = Instant::now();
    let r = c.roundtrip(&get("/"));
    let took = t.elapsed();
    r.assert_proxy_error(503);
    assert!(r.header("retry-after").is_some(), "{}", show(&r.head));
    assert_eq!(a.traffic_count("/health"), 0, "the down peer was tried");
    assert!(took < Duration::from_secs(1), "503 after {took:?}");
}

#[test]
fn when_all_down_try_all_still_tries_the_peers() {
    // Health says down (its /health answers 500) but it serves traffic: `try_all` tries it
    // anyway as the last resort, `fail` answers 503.
    for (mode, want) in [("try_all", 200), ("fail", 503)] {
        let b = switchable("b", Arc::new(AtomicBool::new(false)));
        let proxy = Proxy::start(&config(
            1,
            "",
            "lastresort",
            &[entry(b.addr(), "")],
            &[
                HTTP_CHECK,
                NO_PASSIVE,
                &format!("when_all_down = \"{mode}\""),
            ],
        ));
        wait_state(&proxy, 0, "down");
        let mut c = proxy.client();
        let r = c.roundtrip(&get("/"));
        assert_eq!(r.status, want, "{mode}: {}", show(&r.head));
        if want == 200 {
            assert_eq!(r.body_str(), "b");
        }
    }
}

#[test]
fn passive_reports_are_dropped_and_counted_on_a_full_queue_without_blocking() {
    let dead = refusing_addr();
    let proxy = Proxy::start(&config(
        1,
        "observation_queue = 1",
        "dropper",
        &[entry(dead, "")],
        // One try per request: one report per request.
        &["retry = { max_retries = 0 }"],
    ));
    // The control thread stops draining: the one-slot queue fills with the first report.
    proxy
        .server()
        .pause_health_observations(Duration::from_secs(10));
    thread::sleep(Duration::from_millis(10));
    let mut c = proxy.client();
    let mut slowest = Duration::ZERO;
    let t = Instant::now();
    for i in 0..50 {
        let t1 = Instant::now();
        let r = c.roundtrip(&get(&format!("/{i}")));
        slowest = slowest.max(t1.elapsed());
        r.assert_proxy_error(502);
    }
    let total = t.elapsed();
    let st = status(&proxy);
    let shard = &st["shards"][0];
    println!("50 failing requests in {total:?} (slowest {slowest:?}); shard stats {shard}");
    assert_eq!(shard["dropped_observations"], 49, "{st:#}");
    assert_eq!(shard["sent_observations"], 1, "{st:#}");
    // A send that waited for room would wait out the 10 s pause.
    assert!(
        slowest < Duration::from_secs(2),
        "a request took {slowest:?}: the report was waited for"
    );
}

#[test]
fn admin_endpoint_serves_status_health_and_404() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&config(
        2,
        "",
        "admin",
        &[entry(a.addr(), ", region = \"x\"")],
        &[],
    ));
    assert_eq!(admin_get(&proxy, "/health"), (200, "ok\n".to_string()));
    assert_eq!(admin_get(&proxy, "/nope").0, 404);
    let st = status(&proxy);
    let g = &st["groups"][0];
    assert_eq!(g["name"], "admin");
    assert_eq!(g["active_check"], false);
    assert_eq!(g["when_all_down"], "fail");
    let p = &g["peers"][0];
    assert_eq!(p["state"], "up");
    assert_eq!(p["eligible"], true);
    assert_eq!(p["why"], "no active check");
    assert_eq!(p["region"], "x");
    assert_eq!(p["last_check"], Value::Null);
    assert_eq!(p["ejections"], 0);
    assert_eq!(st["shards"].as_array().unwrap().len(), 2);
    // A POST is refused.
    let addr = proxy.server().admin_addr().unwrap();
    let mut c = Client::connect(addr);
    let r = c.roundtrip(b"POST /status HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(r.status, 405);
}

#[test]
fn start_down_gets_no_traffic_before_rise_probes() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&config(
        1,
        "",
        "startdown",
        &[entry(a.addr(), "")],
        &[
            "health = { kind = \"tcp\", interval_ms = 300, timeout_ms = 200, rise = 2, \
             start = \"down\" }",
            NO_PASSIVE,
        ],
    ));
    // The second probe comes no sooner than ~270 ms after start: until then, down.
    let p = peer_status(&proxy, 0);
    assert_eq!(p["state"], "down", "{p:#}");
    let mut c = proxy.client();
    c.roundtrip(&get("/early")).assert_proxy_error(503);
    assert_eq!(a.request_count(), 0);
    let p = wait_state(&proxy, 0, "up");
    assert_eq!(p["why"], "2 consecutive probe successes (last: connected)");
    assert_eq!(bodies(&proxy, 2), vec!["a", "a"]);
}

/// `passive.on_5xx`: with `on_5xx = true`, 5xx answers count as failures and eject the peer
/// after `consecutive_failures`; with the default `false` they do not. The group also has a
/// resetting peer, ejected in both modes: outcomes travel on one channel in order, so once it
/// is ejected every earlier 500 of the other peer has been counted (or not).
#[test]
fn passive_on_5xx_counts_server_errors_only_when_asked() {
    for on_5xx in [true, false] {
        let p500 = Backend::with_handler("p500", |_| Reply::new(500, "broken"));
        let r = ResetBackend::start();
        let a = Backend::start("a");
        let proxy = Proxy::start(&config(
            1,
            "",
            "on5xx",
            &[
                entry(p500.addr(), ""),
                entry(r.addr(), ""),
                entry(a.addr(), ""),
            ],
            &[&format!(
                "passive = {{ consecutive_failures = 2, eject_ms = 60000, \
                 max_eject_percent = 100, on_5xx = {on_5xx} }}"
            )],
        ));
        let mut c = proxy.client();
        // Round robin: p500 (500, relayed: not in retry.on), the resetting peer (the GET is
        // retried on the next peer), a; until the resetting peer has failed twice.
        while r.accepts() < 2 {
            c.roundtrip(&get("/x"));
        }
        wait_state(&proxy, 1, "ejected");
        assert!(
            p500.request_count() >= 2,
            "p500 got {}",
            p500.request_count()
        );
        let p = peer_status(&proxy, 0);
        if on_5xx {
            let p = wait_state(&proxy, 0, "ejected");
            let why = p["why"].as_str().unwrap();
            assert!(why.starts_with("2 consecutive failures"), "{p:#}");
        } else {
            assert_eq!(p["state"], "up", "on_5xx = false: {p:#}");
            assert_eq!(p["passive_consecutive_failures"], 0, "{p:#}");
        }
    }
}

/// The probe request as configured: `method`, `path`, `host` (the Host header) and `port`
/// (another port on the peer's IP). Probes reach the health port, never the traffic port.
#[test]
fn http_probe_uses_method_path_host_and_port() {
    let traffic = Backend::start("traffic");
    let probes = Backend::with_handler("probes", |_| Reply::no_body(200));
    let proxy = Proxy::start(&config(
        1,
        "",
        "probe",
        &[entry(traffic.addr(), "")],
        &[
            &format!(
                "health = {{ kind = \"http\", method = \"HEAD\", path = \"/hc\", \
                 host = \"probe.example\", port = {}, interval_ms = 50, timeout_ms = 500, \
                 rise = 2, fall = 3, start = \"down\" }}",
                probes.addr().port()
            ),
            NO_PASSIVE,
        ],
    ));
    wait_state(&proxy, 0, "up");
    assert_eq!(bodies(&proxy, 2), ["traffic", "traffic"]);
    let seen = probes.requests();
    assert!(seen.len() >= 2, "{} probes", seen.len());
    for r in &seen {
        assert_eq!(
            (r.method.as_str(), r.path()),
            ("HEAD", "/hc"),
            "{}",
            show(&r.head)
        );
        assert_eq!(r.header("host"), Some("probe.example"), "{}", show(&r.head));
    }
    assert_eq!(traffic.traffic_count("/hc"), 2);
    assert_eq!(
        traffic.request_count(),
        2,
        "a probe went to the traffic port"
    );
}

/// `health.body_contains`: a 200 whose body lacks the text fails the probe; once the body has
/// it, the peer comes up.
#[test]
fn http_probe_body_contains() {
    let ready = Arc::new(AtomicBool::new(false));
    let r2 = ready.clone();
    let b = Backend::with_handler("b", move |req| {
        if req.path() != "/health" {
            Reply::ok("b")
        } else if r2.load(Ordering::SeqCst) {
            Reply::ok("status: READY")
        } else {
            Reply::ok("status: starting")
        }
    });
    let proxy = Proxy::start(&config(
        1,
        "",
        "contains",
        &[entry(b.addr(), "")],
        &[
            "health = { kind = \"http\", path = \"/health\", body_contains = \"READY\", \
             interval_ms = 50, timeout_ms = 500, rise = 2, fall = 2 }",
            NO_PASSIVE,
        ],
    ));
    let p = wait_state(&proxy, 0, "down");
    assert_eq!(
        p["why"], "2 consecutive probe failures (last: HTTP 200, body does not contain \"READY\")",
        "{p:#}"
    );
    ready.store(true, Ordering::SeqCst);
    wait_state(&proxy, 0, "up");
    assert_eq!(bodies(&proxy, 1), ["b"]);
}

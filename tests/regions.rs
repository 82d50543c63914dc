//! Geographic failover per request: `region_from` (a header, or the client address through
//! `region_map`), `region_fallback`, `local_region` for requests without a region, and the
//! "regional failover from A to B" log once per transition. Three regions, real backends,
//! peers killed and restarted, health from a real TCP check.

mod common;
use common::*;

use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// One upstream `geo` over `peers` (address, region), `extra` lines before its peers and
/// `tail` (sub-tables such as `[[upstream.region_map]]`) after them.
fn config(peers: &[(std::net::SocketAddr, &str)], extra: &str, tail: &str) -> String {
    let mut s = String::from(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\nadmin = \"127.0.0.1:0\"\n\
         shutdown_timeout_ms = 2000\n\n[timeouts]\nconnect_ms = 500\nupstream_read_ms = 2000\n\n\
         [[upstream]]\nname = \"geo\"\nalgorithm = \"round_robin\"\n\
         health = { kind = \"tcp\", interval_ms = 50, timeout_ms = 200, rise = 2, fall = 2 }\n\
         passive = { consecutive_failures = 0 }\n",
    );
    s.push_str(extra);
    s.push_str("\npeers = [\n");
    for (addr, region) in peers {
        let _ = writeln!(s, "  {{ address = \"{addr}\", region = \"{region}\" }},");
    }
    s.push_str("]\n");
    s.push_str(tail);
    s
}

/// Waits until peer `i` has `state` in `/status`.
#[track_caller]
fn wait_state(proxy: &Proxy, i: usize, state: &str) {
    let addr = proxy.server().admin_addr().expect("admin is on");
    let deadline = Instant::now() + WAIT;
    loop {
        let r = Client::connect(addr).roundtrip(b"GET /status HTTP/1.1\r\nHost: a\r\n\r\n");
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("status JSON");
        if v["groups"][0]["peers"][i]["state"] == state {
            return;
        }
        assert!(Instant::now() < deadline, "peer {i} not {state}: {v:#}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// The bodies of `n` requests with `X-Region: region` (none without).
fn from_region(proxy: &Proxy, region: Option<&str>, n: usize) -> Vec<String> {
    let mut c = proxy.client();
    let head = match region {
        Some(r) => format!("GET / HTTP/1.1\r\nHost: x\r\nX-Region: {r}\r\n\r\n"),
        None => "GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
    };
    (0..n)
        .map(|_| {
            let r = c.roundtrip(head.as_bytes());
            assert_eq!(r.status, 200, "{}", show(&r.head));
            r.body_str()
        })
        .collect()
}

fn all(v: &[String], name: &str) -> bool {
    !v.is_empty() && v.iter().all(|b| b == name)
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

fn log_count(needle: &str) -> usize {
    let text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| l.contains("geo") && l.contains(needle))
        .count()
}

#[test]
fn each_request_prefers_its_region_then_its_fallbacks() {
    logs();
    let a = Backend::start("a");
    let b = Backend::start("b");
    let c = Backend::start("c");
    let (a_addr, c_addr) = (a.addr(), c.addr());
    let proxy = Proxy::start(&config(
        &[(a_addr, "eu-1"), (b.addr(), "eu-2"), (c_addr, "us-1")],
        "region_from = \"header:X-Region\"\nlocal_region = \"us-1\"\n\
         region_fallback = { \"eu-1\" = [\"eu-2\", \"us-1\"], \"us-1\" = [\"eu-2\"] }",
        "",
    ));
    for i in 0..3 {
        wait_state(&proxy, i, "up");
    }
    assert!(all(&from_region(&proxy, Some("eu-1"), 4), "a"));
    assert!(
        all(&from_region(&proxy, Some("EU-2"), 4), "b"),
        "case-insensitive"
    );
    assert!(all(&from_region(&proxy, Some("us-1"), 4), "c"));
    assert!(
        all(&from_region(&proxy, None, 4), "c"),
        "no region: local_region"
    );
    assert!(
        all(&from_region(&proxy, Some("ap-9"), 4), "c"),
        "unknown: local_region"
    );

    // eu-1's peer dies: its requests go to its first fallback, eu-2; the others stay.
    a.kill();
    wait_state(&proxy, 0, "down");
    assert!(all(&from_region(&proxy, Some("eu-1"), 4), "b"));
    assert!(all(&from_region(&proxy, Some("us-1"), 4), "c"));
    // us-1's dies too: its requests (and those without a region) go to eu-2, not eu-1's
    // default order.
    c.kill();
    wait_state(&proxy, 2, "down");
    assert!(all(&from_region(&proxy, Some("us-1"), 4), "b"));
    assert!(all(&from_region(&proxy, None, 4), "b"));
    assert!(all(&from_region(&proxy, Some("eu-1"), 4), "b"));
    // eu-1 comes back: its requests return home.
    let a2 = Backend::start_on("a2", a_addr);
    wait_state(&proxy, 0, "up");
    assert!(all(&from_region(&proxy, Some("eu-1"), 4), "a2"));
    assert!(
        all(&from_region(&proxy, Some("us-1"), 4), "b"),
        "us-1 still away"
    );
    assert_eq!(a2.request_count(), 4);

    // Each transition logged once (per shard; one shard here).
    assert_eq!(log_count("regional failover from eu-1 to eu-2"), 1);
    assert_eq!(log_count("regional failover from us-1 to eu-2"), 1);
    assert_eq!(log_count("regional fail-back from eu-2 to eu-1"), 1);
    assert_eq!(log_count("regional failover from eu-2"), 0);
    proxy.shutdown();
}

#[test]
fn client_addresses_map_to_regions() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let c = Backend::start("c");
    let proxy = Proxy::start(&config(
        &[(a.addr(), "eu-1"), (b.addr(), "eu-2"), (c.addr(), "us-1")],
        "region_from = \"client_ip\"\nlocal_region = \"eu-1\"",
        "[[upstream.region_map]]\ncidr = \"10.0.0.0/8\"\nregion = \"eu-2\"\n\
         [[upstream.region_map]]\ncidr = \"127.0.0.0/8\"\nregion = \"us-1\"\n",
    ));
    for i in 0..3 {
        wait_state(&proxy, i, "up");
    }
    // The test's client is 127.0.0.1: us-1.
    assert!(all(&from_region(&proxy, None, 4), "c"));
    assert_eq!(a.request_count() + b.request_count(), 0);
    proxy.shutdown();
}

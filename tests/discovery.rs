//! Discovery end to end: a real proxy whose upstream's peers come from a real DNS server
//! running inside the test (`common::dns`: UDP on 127.0.0.1:0, answering real DNS messages
//! built with hickory-proto), real backends, requests on real sockets and the admin endpoint's view;
//! transparent mode's names resolved by the same server.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Backends on several loopback addresses sharing one port (A records carry no port).
fn backends_on_one_port(names: &[&str]) -> (u16, Vec<Backend>) {
    for _ in 0..20 {
        let probe = TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let free = (0..names.len()).all(|i| {
            TcpListener::bind(SocketAddr::from((
                Ipv4Addr::new(127, 0, 0, 2 + i as u8),
                port,
            )))
            .is_ok()
        });
        if !free {
            continue;
        }
        let backends = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                Backend::start_on(
                    n,
                    SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2 + i as u8), port)),
                )
            })
            .collect();
        return (port, backends);
    }
    panic!("no port free on 127.0.0.2..");
}

fn ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, i)
}

/// A config with an admin endpoint and one discovered upstream `api`.
fn config(workers: usize, algorithm: &str, discovery: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = {workers}\nadmin = \"127.0.0.1:0\"\n\n\
         [[upstream]]\nname = \"api\"\nalgorithm = \"{algorithm}\"\n\
         discovery = {{ {discovery} }}\n{extra}\n"
    )
}

fn admin_get(proxy: &Proxy, path: &str) -> String {
    let addr = proxy.server().admin_addr().expect("admin on");
    let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n");
    let r = Client::connect(addr).roundtrip(req.as_bytes());
    assert_eq!(r.status, 200, "{path}: {}", r.body_str());
    r.body_str()
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The upstream's peers as `/upstreams` lists them: (address, weight, backup).
fn peers(proxy: &Proxy) -> Vec<(String, u64, bool)> {
    let v = json(&admin_get(proxy, "/upstreams"));
    let mut out: Vec<(String, u64, bool)> = v["upstreams"][0]["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|p| {
            (
                p["address"].as_str().unwrap_or_default().to_string(),
                p["weight"].as_u64().unwrap_or_default(),
                p["backup"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Waits (up to `within`) until the upstream's peer addresses are `want` (sorted).
fn wait_peers(proxy: &Proxy, want: &[String], within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got: Vec<String> = peers(proxy).into_iter().map(|p| p.0).collect();
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "peers are {got:?}, want {want:?} (waited {within:?})\n{}",
            admin_get(proxy, "/status")
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn addr_list(addrs: &[SocketAddr]) -> Vec<String> {
    let mut v: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    v.sort();
    v
}

/// Who answered each of `n` GETs (status 200 required).
fn answers(proxy: &Proxy, n: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let r = proxy.client().roundtrip(&get("/"));
        assert_eq!(r.status, 200, "{}", show(&r.head));
        *m.entry(r.body_str()).or_insert(0) += 1;
    }
    m
}

/// The discovery part of `/status` for upstream `api`.
fn discovery_status(proxy: &Proxy) -> Value {
    json(&admin_get(proxy, "/status"))["groups"][0]["discovery"].clone()
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn a_records_added_and_removed_follow_the_zone() {
    let dns = DnsServer::start();
    let (port, b) = backends_on_one_port(&["b2", "b3"]);
    dns.set_a("api.test.", 60, &[ip(2)]);
    let proxy = Proxy::start(&config(
        1,
        "round_robin",
        &format!(
            "kind = \"dns\", name = \"api.test.\", type = \"a\", port = {port}, \
             refresh_ms = 100, resolvers = [\"{}\"]",
            dns.addr
        ),
        "",
    ));
    let within = Duration::from_secs(5);
    wait_peers(&proxy, &addr_list(&[b[0].addr()]), within);
    assert_eq!(answers(&proxy, 4), BTreeMap::from([("b2".to_string(), 4)]));

    dns.set_a("api.test.", 60, &[ip(2), ip(3)]);
    wait_peers(&proxy, &addr_list(&[b[0].addr(), b[1].addr()]), within);
    assert_eq!(
        answers(&proxy, 4),
        BTreeMap::from([("b2".to_string(), 2), ("b3".to_string(), 2)])
    );

    dns.set_a("api.test.", 60, &[ip(3)]);
    wait_peers(&proxy, &addr_list(&[b[1].addr()]), within);
    assert_eq!(answers(&proxy, 4), BTreeMap::from([("b3".to_string(), 4)]));

    // What /status and /metrics show of it (after a few more looks that change nothing).
    thread::sleep(Duration::from_millis(350));
    let d = discovery_status(&proxy);
    assert_eq!(d["kind"], "dns");
    assert_eq!(d["name"], "api.test.");
    assert_eq!(d["type"], "a");
    assert_eq!(d["ttl_s"], 60);
    assert_eq!(d["holding"], false);
    assert!(d["last_answer_unix_ms"].as_u64().unwrap_or(0) > 0, "{d}");
    assert!(d["updates"]["changed"].as_u64().unwrap_or(0) >= 3, "{d}");
    assert_eq!(d["peers"][0]["address"], b[1].addr().to_string());
    let record = d["peers"][0]["record"].as_str().unwrap_or_default();
    assert!(record.contains("A 127.0.0.3 ttl 60"), "{record}");
    let metrics = admin_get(&proxy, "/metrics");
    assert!(
        metrics.contains("ringlb_discovery_peers{upstream=\"api\"} 1\n"),
        "{metrics}"
    );
    let changed = metrics
        .lines()
        .find(|l| {
            l.starts_with("ringlb_discovery_updates_total{upstream=\"api\",result=\"changed\"}")
        })
        .unwrap_or_else(|| panic!("no changed counter in\n{metrics}"));
    let n: u64 = changed.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 3, "{changed}");
    assert!(
        metrics.contains("ringlb_discovery_updates_total{upstream=\"api\",result=\"unchanged\"}"),
        "{metrics}"
    );
}

#[test]
fn the_refresh_follows_the_ttl_clamped_by_min_ttl() {
    let dns = DnsServer::start();
    let (port, b) = backends_on_one_port(&["b2", "b3"]);
    dns.set_a("ttl.test.", 1, &[ip(2)]);
    let proxy = Proxy::start(&config(
        1,
        "round_robin",
        &format!(
            "kind = \"dns\", name = \"ttl.test.\", type = \"a\", port = {port}, \
             min_ttl_ms = 300, resolvers = [\"{}\"]",
            dns.addr
        ),
        "",
    ));
    wait_peers(&proxy, &addr_list(&[b[0].addr()]), Duration::from_secs(5));
    // TTL 1 s: the change shows within about a second, not at once and not never.
    let q0 = dns.queries();
    dns.set_a("ttl.test.", 1, &[ip(3)]);
    let took = wait_peers(&proxy, &addr_list(&[b[1].addr()]), Duration::from_secs(4));
    assert!(took <= Duration::from_millis(2500), "took {took:?}");
    thread::sleep(Duration::from_millis(2000));
    let asked = dns.queries() - q0;
    assert!(
        (2..=6).contains(&asked),
        "{asked} queries in ~3 s with TTL 1 s"
    );
    assert_eq!(discovery_status(&proxy)["ttl_s"], 1);

    // TTL 0 is clamped to min_ttl_ms (300 ms): about three looks a second, not a flood.
    dns.set_a("ttl.test.", 0, &[ip(3)]);
    thread::sleep(Duration::from_millis(1200));
    let q1 = dns.queries();
    thread::sleep(Duration::from_millis(1500));
    let asked = dns.queries() - q1;
    assert!(
        (3..=8).contains(&asked),
        "{asked} queries in 1.5 s with TTL 0"
    );
}

#[test]
fn srv_priority_tiers_and_weights() {
    let dns = DnsServer::start();
    let (b1, b2, b3) = (
        Backend::start("b1"),
        Backend::start("b2"),
        Backend::start("b3"),
    );
    let srv = "_http._tcp.api.test.";
    for (n, _) in [("t1.test.", 0), ("t2.test.", 0), ("t3.test.", 0)] {
        dns.set_a(n, 60, &[ip(1)]);
    }
    let records = |w2: u16| {
        vec![
            (10, 3, b1.addr().port(), "t1.test."),
            (10, w2, b2.addr().port(), "t2.test."),
            (20, 1, b3.addr().port(), "t3.test."),
        ]
    };
    dns.set_srv(srv, 60, &records(1));
    let proxy = Proxy::start(&config(
        1,
        "smooth_weighted",
        &format!(
            "kind = \"dns\", name = \"{srv}\", type = \"srv\", refresh_ms = 100, \
             resolvers = [\"{}\"]",
            dns.addr
        ),
        "",
    ));
    let all = addr_list(&[b1.addr(), b2.addr(), b3.addr()]);
    wait_peers(&proxy, &all, Duration::from_secs(5));
    let mut want = vec![
        (b1.addr().to_string(), 3, false),
        (b2.addr().to_string(), 1, false),
        (b3.addr().to_string(), 1, true),
    ];
    want.sort();
    assert_eq!(peers(&proxy), want);
    // Priority 10 is primary (weights 3:1); priority 20 a backup that gets nothing.
    assert_eq!(
        answers(&proxy, 40),
        BTreeMap::from([("b1".to_string(), 30), ("b2".to_string(), 10)])
    );

    // Reweighted in place (the peer stays, its weight changes).
    dns.set_srv(srv, 60, &records(3));
    let start = Instant::now();
    while !peers(&proxy).contains(&(b2.addr().to_string(), 3, false)) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            peers(&proxy)
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        answers(&proxy, 40),
        BTreeMap::from([("b1".to_string(), 20), ("b2".to_string(), 20)])
    );

    // Weight 0 among weighted primaries: a last-resort backup.
    dns.set_srv(
        srv,
        60,
        &[
            (10, 3, b1.addr().port(), "t1.test."),
            (10, 0, b2.addr().port(), "t2.test."),
        ],
    );
    let start = Instant::now();
    while !peers(&proxy).contains(&(b2.addr().to_string(), 1, true)) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            peers(&proxy)
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(answers(&proxy, 6), BTreeMap::from([("b1".to_string(), 6)]));

    // The primary tier gone: the next priority serves. Targets resolved by their own lookup
    // this time (no additional records in the SRV answer).
    dns.zone.lock().unwrap().no_additionals = true;
    dns.set_srv(srv, 60, &[(20, 1, b3.addr().port(), "t3.test.")]);
    wait_peers(&proxy, &addr_list(&[b3.addr()]), Duration::from_secs(5));
    assert_eq!(answers(&proxy, 3), BTreeMap::from([("b3".to_string(), 3)]));
    let d = discovery_status(&proxy);
    let record = d["peers"][0]["record"].as_str().unwrap_or_default();
    assert_eq!(
        record,
        format!("SRV 20 1 {} t3.test. -> 127.0.0.1", b3.addr().port())
    );
}

#[test]
fn aaaa_records_on_loopback() {
    let dns = DnsServer::start();
    let listener = TcpListener::bind("[::1]:0").expect("IPv6 loopback");
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let b = Backend::start_on("v6", addr);
    dns.set_aaaa("v6.test.", 60, &[Ipv6Addr::LOCALHOST]);
    let proxy = Proxy::start(&config(
        1,
        "round_robin",
        &format!(
            "kind = \"dns\", name = \"v6.test.\", type = \"aaaa\", port = {}, \
             refresh_ms = 100, resolvers = [\"{}\"]",
            addr.port(),
            dns.addr
        ),
        "",
    ));
    wait_peers(
        &proxy,
        &[format!("[::1]:{}", addr.port())],
        Duration::from_secs(5),
    );
    assert_eq!(answers(&proxy, 3), BTreeMap::from([("v6".to_string(), 3)]));
    assert_eq!(b.request_count(), 3);
}

#[test]
fn servfail_nxdomain_and_timeout_hold_the_last_good_set() {
    let dns = DnsServer::start();
    let (port, b) = backends_on_one_port(&["b2"]);
    dns.set_a("hold.test.", 60, &[ip(2)]);
    let proxy = Proxy::start(&config(
        1,
        "round_robin",
        &format!(
            "kind = \"dns\", name = \"hold.test.\", type = \"a\", port = {port}, \
             refresh_ms = 100, timeout_ms = 200, hold_ms = 1500, resolvers = [\"{}\"]",
            dns.addr
        ),
        "",
    ));
    let one = addr_list(&[b[0].addr()]);
    wait_peers(&proxy, &one, Duration::from_secs(5));

    for (mode, why) in [
        (Mode::ServFail, "SERVFAIL"),
        (Mode::NxDomain, "NXDOMAIN"),
        (Mode::Silent, "timeout"),
    ] {
        dns.set_mode(mode);
        let failing = Instant::now();
        // Within hold_ms the last good set serves.
        let start = Instant::now();
        loop {
            let d = discovery_status(&proxy);
            if d["holding"] == true {
                let err = d["last_error"].as_str().unwrap_or_default();
                assert!(err.contains(why), "{mode:?}: {d}");
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "{mode:?}: never held: {d}"
            );
            thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(answers(&proxy, 3), BTreeMap::from([("b2".to_string(), 3)]));
        assert_eq!(peers(&proxy).len(), 1);
        // After hold_ms the set empties: no peer, ringlb's own 503.
        let emptied = wait_peers(&proxy, &[], Duration::from_secs(5));
        assert!(
            failing.elapsed() >= Duration::from_millis(1400),
            "{mode:?}: emptied after {:?} ({emptied:?})",
            failing.elapsed()
        );
        let r = proxy.client().roundtrip(&get("/"));
        assert_eq!(r.status, 503, "{}", show(&r.head));
        // Answers again: back.
        dns.set_mode(Mode::Answer);
        wait_peers(&proxy, &one, Duration::from_secs(5));
        assert_eq!(discovery_status(&proxy)["holding"], false);
    }
    let metrics = admin_get(&proxy, "/metrics");
    assert!(
        metrics.contains("ringlb_discovery_updates_total{upstream=\"api\",result=\"error\"}"),
        "{metrics}"
    );
}

#[test]
fn an_empty_answer_empties_the_set_only_after_hold_obsolete() {
    let dns = DnsServer::start();
    let (port, b) = backends_on_one_port(&["b2", "b3"]);
    dns.set_a("gone.test.", 60, &[ip(2), ip(3)]);
    let proxy = Proxy::start(&config(
        1,
        "round_robin",
        &format!(
            "kind = \"dns\", name = \"gone.test.\", type = \"a\", port = {port}, \
             refresh_ms = 100, hold_obsolete_ms = 1000, resolvers = [\"{}\"]",
            dns.addr
        ),
        "",
    ));
    wait_peers(
        &proxy,
        &addr_list(&[b[0].addr(), b[1].addr()]),
        Duration::from_secs(5),
    );
    // One record vanishes: it stays for hold_obsolete_ms, then goes.
    dns.set_a("gone.test.", 60, &[ip(3)]);
    let t0 = Instant::now();
    thread::sleep(Duration::from_millis(500));
    assert_eq!(peers(&proxy).len(), 2);
    wait_peers(&proxy, &addr_list(&[b[1].addr()]), Duration::from_secs(4));
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    // A valid empty answer (NOERROR, no records): the same.
    dns.set_a("gone.test.", 60, &[]);
    let t0 = Instant::now();
    thread::sleep(Duration::from_millis(500));
    assert_eq!(answers(&proxy, 2), BTreeMap::from([("b3".to_string(), 2)]));
    wait_peers(&proxy, &[], Duration::from_secs(4));
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    thread::sleep(Duration::from_millis(300));
    assert_eq!(discovery_status(&proxy)["last_result"], "empty");
    assert_eq!(discovery_status(&proxy)["holding"], false);
}

#[test]
fn a_steady_request_stream_sees_no_failure_across_20_membership_changes() {
    let dns = DnsServer::start();
    let (port, b) = backends_on_one_port(&["b2", "b3", "b4"]);
    dns.set_a("steady.test.", 60, &[ip(2), ip(3)]);
    let proxy = Proxy::start(&config(
        2,
        "least_connections",
        &format!(
            "kind = \"dns\", name = \"steady.test.\", type = \"a\", port = {port}, \
             refresh_ms = 50, resolvers = [\"{}\"]",
            dns.addr
        ),
        "",
    ));
    let addrs: Vec<SocketAddr> = b.iter().map(|b| b.addr()).collect();
    wait_peers(&proxy, &addr_list(&addrs[..2]), Duration::from_secs(5));

    let stop = Arc::new(AtomicBool::new(false));
    let addr = proxy.addr;
    let clients: Vec<_> = (0..3)
        .map(|i| {
            let stop = stop.clone();
            thread::spawn(move || {
                let (mut ok, mut failed) = (0usize, Vec::new());
                let mut client = Client::connect(addr);
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    // A new connection every few requests, so both shards see traffic.
                    n += 1;
                    if n % 7 == 0 {
                        client = Client::connect(addr);
                    }
                    match client.try_roundtrip(&get(&format!("/c{i}/{n}"))) {
                        Ok(r) if r.status == 200 => ok += 1,
                        Ok(r) => failed.push(format!("status {}: {}", r.status, show(&r.head))),
                        Err(e) => {
                            failed.push(format!("{e:?}"));
                            client = Client::connect(addr);
                        }
                    }
                }
                (ok, failed)
            })
        })
        .collect();

    // 20 changes: add b4, drop b2, add b2, drop b4, … always at least one peer.
    let sets: [&[u8]; 4] = [&[2, 3, 4], &[3, 4], &[2, 3, 4], &[2, 3]];
    for change in 0..20 {
        let set = sets[change % sets.len()];
        let ips: Vec<Ipv4Addr> = set.iter().map(|&i| ip(i)).collect();
        dns.set_a("steady.test.", 60, &ips);
        let want: Vec<SocketAddr> = set.iter().map(|&i| addrs[(i - 2) as usize]).collect();
        wait_peers(&proxy, &addr_list(&want), Duration::from_secs(5));
        thread::sleep(Duration::from_millis(60));
    }
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for c in clients {
        let (ok, failed) = c.join().expect("client thread");
        assert!(
            failed.is_empty(),
            "{} failed requests: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
        total += ok;
    }
    assert!(total > 100, "only {total} requests went through");
    // Every backend served some of it.
    for b in &b {
        assert!(b.request_count() > 0, "{} got nothing", b.name());
    }
    let generation = json(&admin_get(&proxy, "/status"))["generation"]
        .as_u64()
        .unwrap();
    assert!(generation >= 20, "generation {generation}");
}

#[test]
fn listed_peers_stay_and_discovered_ones_are_not_admin_editable() {
    let dns = DnsServer::start();
    let (port, b) = backends_on_one_port(&["b2"]);
    let listed = Backend::start("listed");
    dns.set_a("mixed.test.", 60, &[ip(2)]);
    let proxy = Proxy::start(&config(
        1,
        "round_robin",
        &format!(
            "kind = \"dns\", name = \"mixed.test.\", type = \"a\", port = {port}, \
             refresh_ms = 100, resolvers = [\"{}\"]",
            dns.addr
        ),
        &format!("peers = [{{ address = \"{}\" }}]", listed.addr()),
    ));
    wait_peers(
        &proxy,
        &addr_list(&[listed.addr(), b[0].addr()]),
        Duration::from_secs(5),
    );
    assert_eq!(
        answers(&proxy, 4),
        BTreeMap::from([("b2".to_string(), 2), ("listed".to_string(), 2)])
    );
    let admin = proxy.server().admin_addr().unwrap();
    let req = format!(
        "DELETE /upstreams/api/peers/{} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n",
        b[0].addr()
    );
    let r = Client::connect(admin).roundtrip(req.as_bytes());
    assert_eq!(r.status, 409, "{}", r.body_str());
    assert!(
        r.body_str().contains("found by discovery"),
        "{}",
        r.body_str()
    );
    // A reload of the same configuration keeps the discovered peer (it does not wait for the
    // next answer).
    let text = config(
        1,
        "round_robin",
        &format!(
            "kind = \"dns\", name = \"mixed.test.\", type = \"a\", port = {port}, \
             refresh_ms = 100, resolvers = [\"{}\"]",
            dns.addr
        ),
        &format!("peers = [{{ address = \"{}\" }}]", listed.addr()),
    );
    let same = ringlb::Config::from_toml_str(&text, "<string>").expect("valid");
    proxy.server().apply(same).expect("reload");
    assert_eq!(
        peers(&proxy).into_iter().map(|p| p.0).collect::<Vec<_>>(),
        addr_list(&[listed.addr(), b[0].addr()])
    );
    // The DNS goes empty: the listed peer alone serves.
    dns.set_a("mixed.test.", 60, &[]);
    wait_peers(&proxy, &addr_list(&[listed.addr()]), Duration::from_secs(5));
    assert_eq!(
        answers(&proxy, 2),
        BTreeMap::from([("listed".to_string(), 2)])
    );
}

/// Which backend each of `keys` goes to through `proxy` (one keep-alive connection).
fn placement(proxy: &Proxy, keys: usize) -> Vec<String> {
    let mut client = proxy.client();
    (0..keys)
        .map(|k| {
            let req = format!("GET /k HTTP/1.1\r\nHost: test\r\nX-Key: user-{k}\r\n\r\n");
            let r = client.roundtrip(req.as_bytes());
            assert_eq!(r.status, 200, "{}", show(&r.head));
            r.body_str()
        })
        .collect()
}

#[test]
fn two_instances_with_the_same_config_place_10000_keys_alike() {
    let dns = DnsServer::start();
    let backends: Vec<Backend> = (0..5).map(|i| Backend::start(&format!("b{i}"))).collect();
    let srv = "_http._tcp.hash.test.";
    dns.set_a("h.test.", 60, &[ip(1)]);
    let records: Vec<(u16, u16, u16, &str)> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| (10, 1 + (i % 2) as u16, b.addr().port(), "h.test."))
        .collect();
    dns.set_srv(srv, 60, &records);
    let all: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
    for algorithm in ["consistent_hash", "maglev"] {
        let text = config(
            2,
            algorithm,
            &format!(
                "kind = \"dns\", name = \"{srv}\", type = \"srv\", refresh_ms = 200, \
                 resolvers = [\"{}\"]",
                dns.addr
            ),
            "hash_key = \"header:X-Key\"",
        );
        // Two instances of the same configuration, as behind ECMP or DNS round robin.
        let (one, two) = (Proxy::start(&text), Proxy::start(&text));
        wait_peers(&one, &addr_list(&all), Duration::from_secs(5));
        wait_peers(&two, &addr_list(&all), Duration::from_secs(5));
        let (a, b) = (placement(&one, 10_000), placement(&two, 10_000));
        let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert_eq!(
            differ, 0,
            "{algorithm}: {differ} of 10000 keys placed differently"
        );
        // A real spread, weighted 1:2: every backend owns keys.
        let mut owned: BTreeMap<&str, usize> = BTreeMap::new();
        for name in &a {
            *owned.entry(name.as_str()).or_insert(0) += 1;
        }
        assert_eq!(owned.len(), 5, "{algorithm}: {owned:?}");
        assert!(owned.values().all(|&n| n > 800), "{algorithm}: {owned:?}");
    }
}

/// A transparent upstream `fwd` allowing `allow`, names resolved by `dns`.
fn transparent_config(allow: &str, dns: &DnsServer) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\nadmin = \"127.0.0.1:0\"\n\n\
         [[upstream]]\nname = \"fwd\"\nalgorithm = \"transparent\"\nallow = [{allow}]\n\
         resolvers = [\"{}\"]\n",
        dns.addr
    )
}

fn get_host(host: &str) -> Vec<u8> {
    format!("GET /t HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

#[test]
fn transparent_mode_forwards_to_the_host_named_within_allow() {
    let dns = DnsServer::start();
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    dns.set_a("api.internal.", 60, &[ip(1)]);
    dns.set_a("outside.test.", 60, &[Ipv4Addr::new(192, 0, 2, 7)]);
    dns.set_a("inside.test.", 60, &[ip(1)]);
    let proxy = Proxy::start(&transparent_config("\"*.internal\", \"127.0.0.0/8\"", &dns));
    let mut client = proxy.client();
    // An address literal inside a network rule, and a name matching a name rule; each
    // address keeps its own pooled connection (three requests, one connect each).
    for _ in 0..3 {
        let r = client.roundtrip(&get_host(&a.addr().to_string()));
        assert_eq!(
            (r.status, r.body_str().as_str()),
            (200, "a"),
            "{}",
            show(&r.head)
        );
        let r = client.roundtrip(&get_host(&format!("API.internal:{}", b.addr().port())));
        assert_eq!(
            (r.status, r.body_str().as_str()),
            (200, "b"),
            "{}",
            show(&r.head)
        );
    }
    assert_eq!((a.accepts(), b.accepts()), (1, 1));
    // The upstream sees the Host the client sent.
    let hosts: Vec<String> = a
        .requests()
        .iter()
        .map(|r| r.header("host").unwrap_or_default().to_string())
        .collect();
    assert_eq!(hosts, vec![a.addr().to_string(); 3]);
    // The name went to the DNS server once: the shard's cache answered the rest.
    let asked = dns.queries();
    assert!((1..=2).contains(&asked), "{asked} queries");

    // A name outside the name rules resolving inside a network rule: allowed.
    let r = client.roundtrip(&get_host(&format!("inside.test:{}", a.addr().port())));
    assert_eq!(r.status, 200, "{}", show(&r.head));
    // Outside allow: 403, and nothing is connected to.
    for host in ["192.0.2.7:80", "outside.test", "[::1]:80", "example.com"] {
        let r = proxy.client().roundtrip(&get_host(host));
        assert_eq!(r.status, 403, "{host}: {}", show(&r.head));
    }
    // A name that does not resolve: 502.
    let r = proxy.client().roundtrip(&get_host("missing.internal:80"));
    assert_eq!(r.status, 502, "{}", show(&r.head));
    // No usable Host: 400.
    let r = proxy
        .client()
        .roundtrip(b"GET /t HTTP/1.1\r\nHost: a b\r\n\r\n");
    assert_eq!(r.status, 400, "{}", show(&r.head));
}

#[test]
fn transparent_mode_refuses_to_start_without_allow() {
    let text = "[[upstream]]\nname = \"fwd\"\nalgorithm = \"transparent\"\n";
    let e = ringlb::Config::from_toml_str(text, "t.toml").unwrap_err();
    let shown = e.to_string();
    assert!(
        shown.contains("key `upstream[0].allow`") && shown.contains("open forwarder"),
        "{shown}"
    );
}

#[test]
fn a_vanished_record_is_drained_not_cut() {
    let dns = DnsServer::start();
    let (port, fast) = backends_on_one_port(&["fast"]);
    let slow_addr = SocketAddr::from((ip(3), port));
    let slow = Backend::with_handler_on("slow", slow_addr, |_| {
        Reply::ok("slow").delay(Duration::from_millis(1200))
    });
    dns.set_a("drain.test.", 60, &[ip(3)]);
    let proxy = Proxy::start(&config(
        1,
        "round_robin",
        &format!(
            "kind = \"dns\", name = \"drain.test.\", type = \"a\", port = {port}, \
             refresh_ms = 50, resolvers = [\"{}\"]",
            dns.addr
        ),
        "",
    ));
    wait_peers(&proxy, &addr_list(&[slow.addr()]), Duration::from_secs(5));
    let addr = proxy.addr;
    let in_flight = thread::spawn(move || Client::connect(addr).roundtrip(&get("/slow")));
    slow.wait_heads(1, Duration::from_secs(5));
    // The record moves to another address while the request is in flight on the old one.
    dns.set_a("drain.test.", 60, &[ip(2)]);
    wait_peers(
        &proxy,
        &addr_list(&[fast[0].addr()]),
        Duration::from_secs(5),
    );
    assert_eq!(
        answers(&proxy, 2),
        BTreeMap::from([("fast".to_string(), 2)])
    );
    let r = in_flight.join().expect("client");
    assert_eq!(
        (r.status, r.body_str().as_str()),
        (200, "slow"),
        "{}",
        show(&r.head)
    );
    assert_eq!(slow.request_count(), 1);
}

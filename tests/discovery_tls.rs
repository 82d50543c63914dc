//! TLS to the peers the config does not name: discovered ones (their server name from the DNS
//! answer) and transparent ones (from the request's `Host`). A real DNS server in the test
//! answers the proxy's lookups, the backends are rustls origins with `rcgen` certificates that
//! report the SNI they received, and the requests go over real sockets.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A proxy with one upstream `app` (its keys are `upstream`), an admin endpoint, one shard.
fn proxy_toml(upstream: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\nadmin = \"127.0.0.1:0\"\n\
         shutdown_timeout_ms = 2000\n\n[[upstream]]\nname = \"app\"\n{upstream}\n"
    )
}

/// The keys of an upstream discovering `name` (`type`) through `dns`, with `extra` lines.
fn discovered(dns: &DnsServer, name: &str, ty: &str, port: Option<u16>, extra: &str) -> String {
    let port = port.map_or(String::new(), |p| format!(", port = {p}"));
    format!(
        "discovery = {{ kind = \"dns\", name = \"{name}\", type = \"{ty}\"{port}, \
         refresh_ms = 100, resolvers = [\"{}\"] }}\n{extra}",
        dns.addr
    )
}

fn metrics_text(proxy: &Proxy) -> String {
    let admin = proxy.server().admin_addr().expect("admin endpoint");
    Client::connect(admin)
        .roundtrip(b"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n")
        .body_str()
}

/// The value of the sample line starting with `prefix`, if there is one.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(|v| v.trim().parse().unwrap())
}

fn peer_sample(proxy: &Proxy, metric: &str, peer: SocketAddr, extra: &str) -> Option<f64> {
    sample(
        &metrics_text(proxy),
        &format!("{metric}{{upstream=\"app\",peer=\"{peer}\"{extra}}} "),
    )
}

/// Waits (up to 10 s) for `what`.
fn eventually(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn get(path: &str, host: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

#[test]
fn a_records_peers_speak_tls_named_by_the_discovery_name_and_are_probed_so() {
    let ca = Ca::new("upstream ca");
    let ca_file = ca.write();
    let dns = DnsServer::start();
    let good = TlsBackend::start(&ca.leaf(&["api.test"]), None);
    dns.set_a("api.test.", 60, &[LOOPBACK]);
    // The probe speaks TLS with the peer's settings: verified for `api.test` against `ca`
    // (the defaults, the system roots and the name 127.0.0.1, would fail).
    let toml = proxy_toml(&discovered(
        &dns,
        "api.test.",
        "a",
        Some(good.addr.port()),
        &format!(
            "tls = {{ ca = \"{}\" }}\n\
             health = {{ kind = \"https\", path = \"/hc\", interval_ms = 100, timeout_ms = 1000, \
             rise = 1, fall = 1 }}",
            ca_file.display()
        ),
    ));
    let described = ringlb::Config::from_toml_str(&toml, "t.toml")
        .unwrap()
        .describe();
    assert!(
        described.contains("tls        discovered peers: sni=<the discovered name>;verify=true"),
        "{described}"
    );
    let proxy = Proxy::start(&toml);
    eventually("the discovered peer is probed up over TLS", || {
        peer_sample(&proxy, "ringlb_peer_up", good.addr, "") == Some(1.0)
    });
    let mut c = proxy.client();
    for i in 0..3 {
        let r = c.roundtrip(&get(&format!("/r{i}"), "x"));
        assert_eq!(r.status, 200, "{}", r.body_str());
        assert_eq!(
            r.body_str(),
            format!("sni=api.test client_cert=no path=/r{i}")
        );
    }
    proxy.shutdown();

    // A backend whose certificate names another host fails verification: a 502, counted as
    // the peer's TLS failure on every try.
    let bad = TlsBackend::start(&ca.leaf(&["other.test"]), None);
    dns.set_a("bad.test.", 60, &[LOOPBACK]);
    let proxy = Proxy::start(&proxy_toml(&discovered(
        &dns,
        "bad.test.",
        "a",
        Some(bad.addr.port()),
        &format!("tls = {{ ca = \"{}\" }}", ca_file.display()),
    )));
    eventually("the peer is discovered", || {
        peer_sample(&proxy, "ringlb_peer_requests_total", bad.addr, "").is_some()
    });
    let r = proxy.client().roundtrip(&get("/", "x"));
    assert_eq!(r.status, 502, "{}", r.body_str());
    assert!(
        r.body_str().contains("TLS handshake with upstream failed"),
        "{}",
        r.body_str()
    );
    let tries = peer_sample(&proxy, "ringlb_peer_requests_total", bad.addr, "").unwrap();
    assert!(tries >= 1.0);
    let failures = |kind: &str| {
        peer_sample(
            &proxy,
            "ringlb_peer_failures_total",
            bad.addr,
            &format!(",kind=\"{kind}\""),
        )
    };
    assert_eq!(failures("tls_failure"), Some(tries));
    assert_eq!(failures("connect_failure"), Some(0.0));
    proxy.shutdown();
}

#[test]
fn an_srv_peer_is_named_by_the_records_target() {
    let ca = Ca::new("upstream ca");
    let dns = DnsServer::start();
    let backend = TlsBackend::start(&ca.leaf(&["node-1.test"]), None);
    dns.set_a("node-1.test.", 60, &[LOOPBACK]);
    dns.set_srv(
        "_https._tcp.api.test.",
        60,
        &[(10, 1, backend.addr.port(), "node-1.test.")],
    );
    let proxy = Proxy::start(&proxy_toml(&discovered(
        &dns,
        "_https._tcp.api.test.",
        "srv",
        None,
        &format!("tls = {{ ca = \"{}\" }}", ca.write().display()),
    )));
    eventually("the peer is discovered", || {
        peer_sample(&proxy, "ringlb_peer_requests_total", backend.addr, "").is_some()
    });
    let mut c = proxy.client();
    for _ in 0..2 {
        let r = c.roundtrip(&get("/s", "x"));
        assert_eq!(r.status, 200, "{}", r.body_str());
        // The target's name, not the SRV name, was sent and verified.
        assert_eq!(r.body_str(), "sni=node-1.test client_cert=no path=/s");
    }
    assert_eq!(backend.accepts(), 1, "the TLS connection is pooled");
    proxy.shutdown();
}

#[test]
fn transparent_tls_peers_are_named_by_the_host_and_never_share_connections() {
    let ca = Ca::new("upstream ca");
    let ca_file = ca.write();
    let dns = DnsServer::start();
    // One backend for both names; it answers 421 when the Host is not the SNI it received.
    let backend = TlsBackend::start_with(&ca.leaf(&["a.test", "b.test"]), None, true);
    let port = backend.addr.port();
    dns.set_a("a.test.", 60, &[LOOPBACK]);
    dns.set_a("b.test.", 60, &[LOOPBACK]);
    let transparent = |tls: &str| {
        proxy_toml(&format!(
            "algorithm = \"transparent\"\nallow = [\"*.test\", \"127.0.0.0/8\"]\n\
             resolvers = [\"{}\"]\ntls = {{ {tls}ca = \"{}\" }}",
            dns.addr,
            ca_file.display()
        ))
    };
    let proxy = Proxy::start(&transparent(""));
    let mut c = proxy.client();
    for i in 0..6 {
        let name = if i % 2 == 0 { "a.test" } else { "b.test" };
        let r = c.roundtrip(&get(&format!("/t{i}"), &format!("{name}:{port}")));
        assert_eq!(r.status, 200, "{name}: {}", r.body_str());
        assert_eq!(
            r.body_str(),
            format!("sni={name} client_cert=no path=/t{i}")
        );
    }
    // Same address, two names: one pooled connection each, none reused for the other name.
    assert_eq!(backend.accepts(), 2);
    // An address literal is its own server name: the certificate has no IP SAN.
    let r = c.roundtrip(&get("/ip", &format!("127.0.0.1:{port}")));
    assert_eq!(r.status, 502, "{}", r.body_str());
    assert!(
        r.body_str().contains("TLS handshake with upstream failed"),
        "{}",
        r.body_str()
    );
    proxy.shutdown();

    // `tls.sni` names every transparent peer whatever the Host: the backend sees SNI a.test
    // for a request to b.test (and says so with its 421, relayed).
    let proxy = Proxy::start(&transparent("sni = \"a.test\", "));
    let mut c = proxy.client();
    let r = c.roundtrip(&get("/a", &format!("a.test:{port}")));
    assert_eq!(r.status, 200, "{}", r.body_str());
    let r = c.roundtrip(&get("/b", &format!("b.test:{port}")));
    assert_eq!(r.status, 421, "{}", r.body_str());
    assert_eq!(r.body_str(), "sni=a.test client_cert=no path=/b");
    proxy.shutdown();
}

#[test]
fn tls_with_discovery_or_transparent_loads_and_bad_settings_are_named() {
    let ca = Ca::new("upstream ca");
    let ca_file = ca.write();
    let discovery =
        "discovery = { kind = \"dns\", name = \"api.test.\", type = \"a\", port = 443 }";
    let transparent = "algorithm = \"transparent\"\nallow = [\"*.test\"]";
    let load = |keys: &str| ringlb::Config::from_toml_str(&proxy_toml(keys), "t.toml");
    for base in [discovery, transparent] {
        let with = |tls_and_more: &str| format!("{base}\n{tls_and_more}");
        let ok = format!("tls = {{ ca = \"{}\" }}", ca_file.display());
        load(&with(&ok)).unwrap_or_else(|e| panic!("{base}: {e}"));
        // HTTP/2 by ALPN is allowed once the peers get TLS from the template.
        for protocol in ["h2", "auto"] {
            load(&with(&format!("protocol = \"{protocol}\"\n{ok}")))
                .unwrap_or_else(|e| panic!("{base} {protocol}: {e}"));
            let e = load(&with(&format!("protocol = \"{protocol}\""))).unwrap_err();
            assert_eq!(e.key, "upstream[0].protocol", "{e}");
            assert!(e.reason.contains("needs TLS"), "{e}");
        }
        let e = load(&with(&format!("protocol = \"h2c\"\n{ok}"))).unwrap_err();
        assert_eq!(e.key, "upstream[0].protocol", "{e}");
        // The template is checked like a listed peer's table.
        let missing = temp_path("no-such-ca", "pem");
        let e = load(&with(&format!(
            "tls = {{ ca = \"{}\" }}",
            missing.display()
        )))
        .unwrap_err();
        assert_eq!(e.key, "upstream[0].tls.ca", "{e}");
        assert!(e.reason.contains("cannot read"), "{e}");
        let e = load(&with("tls = { sni = \"not a name\" }")).unwrap_err();
        assert_eq!(e.key, "upstream[0].tls.sni", "{e}");
        let e = load(&with(&format!(
            "tls = {{ ca = \"{}\", client_cert = \"c.pem\" }}",
            ca_file.display()
        )))
        .unwrap_err();
        assert_eq!(e.key, "upstream[0].tls.client_key", "{e}");
    }
}

//! `/metrics` end to end: real requests through the proxy, the exposition parsed by a real
//! Prometheus text parser (`prometheus-parse`), counts compared exactly with what was sent.

mod common;

use common::*;
use prometheus_parse::{Scrape, Value};
use std::net::SocketAddr;

fn scrape(admin: SocketAddr) -> Scrape {
    let r = Client::connect(admin).roundtrip(b"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n");
    assert_eq!(r.status, 200, "{}", show(&r.head));
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = r.body_str();
    Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("not Prometheus text ({e}):\n{text}"))
}

fn counter(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    match metric_value(s, metric, labels) {
        Value::Counter(v) | Value::Untyped(v) => v,
        other => panic!("{metric} {labels:?} is not a counter: {other:?}"),
    }
}

fn gauge(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    match metric_value(s, metric, labels) {
        Value::Gauge(v) | Value::Untyped(v) => v,
        other => panic!("{metric} {labels:?} is not a gauge: {other:?}"),
    }
}

/// `base` with one more label.
fn plus<'a>(base: &[(&'a str, &'a str)], k: &'a str, v: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut l = base.to_vec();
    l.push((k, v));
    l
}

/// The `_count` of a histogram.
fn histogram_count(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    match metric_value(s, metric, labels) {
        Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
        other => panic!("{metric} {labels:?} is not a histogram: {other:?}"),
    }
}

#[test]
fn metrics_count_exactly_what_was_sent() {
    let a = Backend::start("a");
    let dead = refusing_addr();
    let e = Backend::with_handler("e", |_| Reply::new(503, "busy"));
    let spare = Backend::start("spare");
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\nadmin = \"127.0.0.1:0\"\n\n\
         [[upstream]]\nname = \"app\"\npeers = [{{ address = \"{dead}\" }}, {{ address = \"{a}\", backup = true }}]\n\
         passive = {{ consecutive_failures = 0 }}\n\n\
         [[upstream]]\nname = \"err\"\npeers = [{{ address = \"{e}\" }}]\n\
         retry = {{ on = [503], max_retries = 1, backoff_base_ms = 1, backoff_max_ms = 1 }}\n\
         passive = {{ consecutive_failures = 0 }}\n\n\
         [[upstream]]\nname = \"none\"\npeers = [{{ address = \"{spare}\", weight = 0 }}]\n\n\
         [[route]]\npath_prefix = \"/err\"\nupstream = \"err\"\n\n\
         [[route]]\npath_prefix = \"/none\"\nupstream = \"none\"\n\n\
         [[route]]\npath_prefix = \"/\"\nupstream = \"app\"\n",
        a = a.addr(),
        e = e.addr(),
        spare = spare.addr(),
    );
    let proxy = Proxy::start(&toml);
    let admin = proxy.server().admin_addr().unwrap();

    // 10 GETs to app: each tries the refusing primary first and fails over to the backup a
    // (a retry each).
    for _ in 0..10 {
        let r = proxy.client().roundtrip(&get("/"));
        assert_eq!((r.status, r.body_str().as_str()), (200, "a"));
    }
    // 3 GETs to err: two tries each (503 retried once), the last 503 relayed.
    for _ in 0..3 {
        assert_eq!(proxy.client().roundtrip(&get("/err")).status, 503);
    }
    // 2 GETs to none: no eligible peer, ringlb's own 503.
    for _ in 0..2 {
        proxy
            .client()
            .roundtrip(&get("/none"))
            .assert_proxy_error(503);
    }

    // A shard finishes its bookkeeping of a request (duration, in-flight count, the pooled
    // connection) just after the client has the last byte: scrape until it has.
    let a_peer = a.addr().to_string();
    let settled = |s: &Scrape| {
        let pa = [("upstream", "app"), ("peer", a_peer.as_str())];
        histogram_count(s, "ringlb_request_duration_seconds", &[]) == 15.0
            && gauge(s, "ringlb_peer_active_requests", &pa) == 0.0
            && gauge(s, "ringlb_peer_pool_idle", &pa) == 1.0
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let s = loop {
        let s = scrape(admin);
        if settled(&s) || std::time::Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let dead_peer = dead.to_string();
    let e_peer = e.addr().to_string();
    let pa = vec![("upstream", "app"), ("peer", a_peer.as_str())];
    let pd = vec![("upstream", "app"), ("peer", dead_peer.as_str())];
    let pe = vec![("upstream", "err"), ("peer", e_peer.as_str())];
    assert_eq!(counter(&s, "ringlb_peer_requests_total", &pa), 10.0);
    assert_eq!(counter(&s, "ringlb_peer_retries_total", &pa), 10.0);
    assert_eq!(
        counter(&s, "ringlb_peer_responses_total", &plus(&pa, "code", "2xx")),
        10.0
    );
    assert_eq!(counter(&s, "ringlb_peer_requests_total", &pd), 10.0);
    assert_eq!(counter(&s, "ringlb_peer_retries_total", &pd), 0.0);
    for kind in [
        "connect_failure",
        "connect_timeout",
        "reset",
        "timeout",
        "invalid_response",
    ] {
        let want = if kind == "connect_failure" { 10.0 } else { 0.0 };
        assert_eq!(
            counter(&s, "ringlb_peer_failures_total", &plus(&pd, "kind", kind)),
            want,
            "{kind}"
        );
        assert_eq!(
            counter(&s, "ringlb_peer_failures_total", &plus(&pa, "kind", kind)),
            0.0
        );
    }
    assert_eq!(counter(&s, "ringlb_peer_requests_total", &pe), 6.0);
    assert_eq!(counter(&s, "ringlb_peer_retries_total", &pe), 3.0);
    assert_eq!(
        counter(&s, "ringlb_peer_responses_total", &plus(&pe, "code", "5xx")),
        6.0
    );
    assert_eq!(
        histogram_count(&s, "ringlb_peer_response_seconds", &pa),
        10.0
    );
    assert_eq!(
        histogram_count(&s, "ringlb_peer_response_seconds", &pe),
        6.0
    );
    // Connections: a's are reused after the first; the refusing peer never got one.
    let new_a = counter(&s, "ringlb_peer_connections_new_total", &pa);
    let reused_a = counter(&s, "ringlb_peer_connections_reused_total", &pa);
    assert_eq!(new_a + reused_a, 10.0);
    assert!(
        new_a >= 1.0 && reused_a >= 1.0,
        "{new_a} new, {reused_a} reused"
    );
    assert_eq!(counter(&s, "ringlb_peer_connections_new_total", &pd), 0.0);
    assert!(counter(&s, "ringlb_peer_bytes_sent_total", &pa) > 0.0);
    assert!(counter(&s, "ringlb_peer_bytes_received_total", &pa) > 0.0);
    assert_eq!(gauge(&s, "ringlb_peer_active_requests", &pa), 0.0);
    assert_eq!(gauge(&s, "ringlb_peer_up", &pa), 1.0);
    assert_eq!(gauge(&s, "ringlb_peer_pool_idle", &pa), 1.0);

    assert_eq!(
        counter(&s, "ringlb_upstream_requests_total", &[("upstream", "app")]),
        10.0
    );
    assert_eq!(
        counter(&s, "ringlb_upstream_requests_total", &[("upstream", "err")]),
        3.0
    );
    assert_eq!(
        counter(&s, "ringlb_upstream_no_peer_total", &[("upstream", "none")]),
        2.0
    );
    assert_eq!(
        counter(&s, "ringlb_upstream_no_peer_total", &[("upstream", "app")]),
        0.0
    );
    assert_eq!(
        counter(&s, "ringlb_downstream_responses_total", &[("code", "200")]),
        10.0
    );
    assert_eq!(
        counter(&s, "ringlb_downstream_responses_total", &[("code", "503")]),
        5.0
    );
    assert_eq!(
        counter(&s, "ringlb_downstream_requests_total", &[("shard", "0")]),
        15.0
    );
    assert_eq!(
        counter(
            &s,
            "ringlb_downstream_connections_accepted_total",
            &[("shard", "0")]
        ),
        15.0
    );
    assert_eq!(
        histogram_count(&s, "ringlb_request_duration_seconds", &[]),
        15.0
    );
    assert_eq!(
        gauge(
            &s,
            "ringlb_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    proxy.shutdown();
}

#[test]
fn metrics_follow_a_reload_and_status_shows_per_peer_stats() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let text = |peers: &[&Backend]| {
        let list: Vec<String> = peers
            .iter()
            .map(|p| format!("{{ address = \"{}\" }}", p.addr()))
            .collect();
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\nadmin = \"127.0.0.1:0\"\n\n\
             [[upstream]]\nname = \"app\"\npeers = [{}]\n",
            list.join(", ")
        )
    };
    let path = write_config(&text(&[&a]));
    let proxy = Proxy::start_file(&path);
    let admin = proxy.server().admin_addr().unwrap();
    for _ in 0..3 {
        assert_eq!(proxy.client().roundtrip(&get("/")).status, 200);
    }
    std::fs::write(&path, text(&[&a, &b])).unwrap();
    proxy.server().reload().expect("reload");
    for _ in 0..4 {
        assert_eq!(proxy.client().roundtrip(&get("/")).status, 200);
    }
    std::fs::write(&path, "[server\n").unwrap();
    assert!(proxy.server().reload().is_err());

    let s = scrape(admin);
    let a_peer = a.addr().to_string();
    let b_peer = b.addr().to_string();
    // a kept its count across the reload: 3 before, 2 of the 4 after.
    assert_eq!(
        counter(
            &s,
            "ringlb_peer_requests_total",
            &[("upstream", "app"), ("peer", &a_peer)]
        ),
        5.0
    );
    assert_eq!(
        counter(
            &s,
            "ringlb_peer_requests_total",
            &[("upstream", "app"), ("peer", &b_peer)]
        ),
        2.0
    );
    assert_eq!(
        counter(&s, "ringlb_config_reloads_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(
        counter(&s, "ringlb_config_reloads_total", &[("result", "error")]),
        1.0
    );
    assert!(
        gauge(
            &s,
            "ringlb_config_last_reload_success_timestamp_seconds",
            &[]
        ) > 1.7e9
    );

    // /status: per peer total, failed, active, average response time.
    // (the in-flight count drops just after the client has its last byte: poll for it)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let v: serde_json::Value = loop {
        let r = Client::connect(admin).roundtrip(b"GET /status HTTP/1.1\r\nHost: a\r\n\r\n");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        if v["groups"][0]["peers"][0]["active_requests"] == 0
            || std::time::Instant::now() > deadline
        {
            break v;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let peer = &v["groups"][0]["peers"][0];
    assert_eq!(peer["address"], a_peer.as_str());
    assert_eq!(peer["requests_total"], 5);
    assert_eq!(peer["failures_total"], 0);
    assert_eq!(peer["active_requests"], 0);
    assert!(
        peer["average_response_ms"].as_f64().unwrap() > 0.0,
        "{peer}"
    );
    proxy.shutdown();
}

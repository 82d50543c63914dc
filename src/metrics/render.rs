//! The Prometheus text exposition format (0.0.4), written directly.
//!
//! Why not the `prometheus-client` crate: its registry owns its metric values (atomics it
//! increments with locked read-modify-writes, or collectors behind a trait object), one value
//! per label set. ringlb's values are per shard and summed at scrape time, the label sets
//! change at config reload, and several series are derived from control-thread state
//! (`ringlb_peer_up`, `ringlb_peer_health_state`, `ringlb_upstream_peers`). Fitting that into
//! its model would mean a custom collector that rebuilds the families on every scrape, which
//! is all this file does anyway. The format itself is small: `# HELP`, `# TYPE`, one line per
//! sample, label values escaped (backslash, double quote, newline), histograms as cumulative
//! `_bucket{le}` lines plus `_sum` and `_count`. Writing it directly costs no dependency and
//! no allocation per sample.
//!
//! Summing over shards: counters and histograms are summed; gauges are summed too (active
//! requests, idle connections, shards with the breaker open) except the EWMA, which is the
//! mean over the shards that have measured the peer (a sum of averages means nothing, and a
//! max would let one shard's outlier stand for all); a peer no shard has measured has no
//! `ringlb_peer_ewma_response_seconds` sample.

use std::collections::HashMap;
use std::fmt::{Display, Write};

use super::histogram::{HistogramSnapshot, BUCKET_COUNT};
use super::{
    ControlGauges, Counter, FailureKind, PeerControl, PeerState, Registry, FIRST_CODE, LAST_CODE,
    RESPONSE_CLASSES,
};

/// The `le` label values, in bucket order (checked against `BUCKETS_SECONDS` by a test).
const LE: [&str; BUCKET_COUNT] = [
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1",
    "2.5", "5", "10", "+Inf",
];

/// The content type of what [`render`] writes, for the HTTP response that carries it.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One peer summed over shards, with its control-thread facts.
struct PeerSum<'a> {
    upstream: &'a str,
    peer: &'a str,
    requests: u64,
    responses: [u64; 5],
    failures: [u64; 6],
    retries: u64,
    active: u64,
    breaker_open: u64,
    ewma: Option<f64>,
    connections_new: u64,
    connections_reused: u64,
    pool_idle: u64,
    bytes_sent: u64,
    bytes_received: u64,
    response_seconds: HistogramSnapshot,
    state: PeerState,
    ejections: u64,
    max_conns: u64,
    saturated: u64,
    rate_limited: u64,
    slow_start_weight: Option<f64>,
}

/// Appends every metric of `registry` (summed over shards) and `control` to `out` in the
/// Prometheus text format 0.0.4 (serve it as [`CONTENT_TYPE`]).
pub fn render(registry: &Registry, control: &ControlGauges, out: &mut String) {
    let facts: HashMap<(&str, &str), &PeerControl> = control
        .peers
        .iter()
        .map(|p| ((p.upstream.as_str(), p.peer.as_str()), p))
        .collect();
    let peers: Vec<PeerSum> = registry
        .upstreams
        .iter()
        .flat_map(|u| u.peers.iter().map(move |p| (u.name.as_str(), p)))
        .map(|(upstream, p)| {
            let fact = facts.get(&(upstream, p.address.as_str()));
            let mut s = PeerSum {
                upstream,
                peer: &p.address,
                requests: 0,
                responses: [0; 5],
                failures: [0; 6],
                retries: 0,
                active: 0,
                breaker_open: 0,
                ewma: None,
                connections_new: 0,
                connections_reused: 0,
                pool_idle: 0,
                bytes_sent: 0,
                bytes_received: 0,
                response_seconds: HistogramSnapshot::default(),
                state: fact.map_or(PeerState::Unknown, |f| f.state),
                ejections: fact.map_or(0, |f| f.ejections),
                max_conns: 0,
                saturated: 0,
                rate_limited: 0,
                slow_start_weight: None,
            };
            let (mut weight_sum, mut weight_n) = (0.0, 0u32);
            let (mut ewma_sum, mut ewma_n) = (0.0, 0u32);
            for m in &p.per_shard {
                s.requests = s.requests.wrapping_add(m.requests.get());
                add_all(&mut s.responses, &m.responses);
                add_all(&mut s.failures, &m.failures);
                s.retries = s.retries.wrapping_add(m.retries.get());
                s.active = s.active.wrapping_add(m.active_requests.get());
                s.breaker_open += u64::from(m.breaker_open.get() != 0);
                if let Some(v) = m.ewma_seconds.get() {
                    ewma_sum += v;
                    ewma_n += 1;
                }
                s.connections_new = s.connections_new.wrapping_add(m.connections_new.get());
                s.connections_reused = s
                    .connections_reused
                    .wrapping_add(m.connections_reused.get());
                s.pool_idle = s.pool_idle.wrapping_add(m.pool_idle.get());
                s.bytes_sent = s.bytes_sent.wrapping_add(m.bytes_sent.get());
                s.bytes_received = s.bytes_received.wrapping_add(m.bytes_received.get());
                m.response_seconds.add_to(&mut s.response_seconds);
                s.max_conns = s.max_conns.wrapping_add(m.max_conns.get());
                s.saturated = s.saturated.wrapping_add(m.saturated.get());
                s.rate_limited = s.rate_limited.wrapping_add(m.rate_limited.get());
                if let Some(w) = m.slow_start_weight.get() {
                    weight_sum += w;
                    weight_n += 1;
                }
            }
            s.slow_start_weight = (weight_n > 0).then(|| weight_sum / f64::from(weight_n));
            s.ewma = (ewma_n > 0).then(|| ewma_sum / f64::from(ewma_n));
            s
        })
        .collect();

    render_peers(&peers, out);
    render_upstreams(registry, &peers, out);
    render_downstream(registry, out);
    render_process(control, out);
}

fn add_all(into: &mut [u64], from: &[Counter]) {
    for (i, c) in into.iter_mut().zip(from) {
        *i = i.wrapping_add(c.get());
    }
}

fn render_peers(peers: &[PeerSum], out: &mut String) {
    type Field = fn(&PeerSum) -> u64;
    let simple: [(&str, &str, &str, Field); 4] = [
        (
            "ringlb_peer_requests_total",
            "Tries sent to the peer (first tries and retries).",
            "counter",
            |p| p.requests,
        ),
        (
            "ringlb_peer_retries_total",
            "Retries sent to the peer (tries that were not the request's first).",
            "counter",
            |p| p.retries,
        ),
        (
            "ringlb_peer_active_requests",
            "Tries in flight at the peer.",
            "gauge",
            |p| p.active,
        ),
        (
            "ringlb_peer_breaker_open",
            "Shards whose circuit breaker for the peer is open.",
            "gauge",
            |p| p.breaker_open,
        ),
    ];
    for (name, help, ty, field) in simple {
        header(out, name, help, ty);
        for p in peers {
            sample(out, name, &peer_labels(p), None, field(p));
        }
    }

    let name = "ringlb_peer_responses_total";
    header(
        out,
        name,
        "Responses received from the peer by status class.",
        "counter",
    );
    for p in peers {
        for (class, n) in RESPONSE_CLASSES.iter().zip(p.responses) {
            sample(out, name, &peer_labels(p), Some(("code", class)), n);
        }
    }

    let name = "ringlb_peer_failures_total";
    header(out, name, "Failed tries at the peer by kind.", "counter");
    for p in peers {
        for (kind, n) in FailureKind::ALL.iter().zip(p.failures) {
            sample(out, name, &peer_labels(p), Some(("kind", kind.label())), n);
        }
    }

    let name = "ringlb_peer_up";
    header(
        out,
        name,
        "1 if the control thread holds the peer up, else 0.",
        "gauge",
    );
    for p in peers {
        sample(
            out,
            name,
            &peer_labels(p),
            None,
            u8::from(p.state == PeerState::Up),
        );
    }

    let name = "ringlb_peer_health_state";
    header(
        out,
        name,
        "The peer's health state: 1 for the current state, 0 for the others.",
        "gauge",
    );
    for p in peers {
        for state in PeerState::ALL {
            let v = u8::from(p.state == state);
            sample(
                out,
                name,
                &peer_labels(p),
                Some(("state", state.label())),
                v,
            );
        }
    }

    let name = "ringlb_peer_ejections_total";
    header(
        out,
        name,
        "Passive-health ejections of the peer.",
        "counter",
    );
    for p in peers {
        sample(out, name, &peer_labels(p), None, p.ejections);
    }

    let name = "ringlb_peer_response_seconds";
    header(
        out,
        name,
        "Time from sending a request to the peer to having its response head.",
        "histogram",
    );
    for p in peers {
        histogram(out, name, &peer_labels(p), &p.response_seconds);
    }

    let name = "ringlb_peer_ewma_response_seconds";
    header(
        out,
        name,
        "The peer's EWMA response time, mean over the shards that measured it.",
        "gauge",
    );
    for p in peers {
        if let Some(v) = p.ewma {
            sample(out, name, &peer_labels(p), None, v);
        }
    }

    let rest: [(&str, &str, &str, Field); 5] = [
        (
            "ringlb_peer_connections_new_total",
            "Connections newly opened to the peer.",
            "counter",
            |p| p.connections_new,
        ),
        (
            "ringlb_peer_connections_reused_total",
            "Tries that reused a pooled connection to the peer.",
            "counter",
            |p| p.connections_reused,
        ),
        (
            "ringlb_peer_pool_idle",
            "Idle pooled connections to the peer.",
            "gauge",
            |p| p.pool_idle,
        ),
        (
            "ringlb_peer_bytes_sent_total",
            "Bytes written to the peer.",
            "counter",
            |p| p.bytes_sent,
        ),
        (
            "ringlb_peer_bytes_received_total",
            "Bytes read from the peer.",
            "counter",
            |p| p.bytes_received,
        ),
    ];
    for (name, help, ty, field) in rest {
        header(out, name, help, ty);
        for p in peers {
            sample(out, name, &peer_labels(p), None, field(p));
        }
    }

    let protect: [(&str, &str, &str, Field); 3] = [
        (
            "ringlb_peer_max_conns",
            "The peer's max_conns (the shards' parts summed; 0 = no limit).",
            "gauge",
            |p| p.max_conns,
        ),
        (
            "ringlb_peer_saturated_total",
            "Selections that passed the peer over because it was at its max_conns.",
            "counter",
            |p| p.saturated,
        ),
        (
            "ringlb_peer_rate_limited_total",
            "Selections that passed the peer over because its rate bucket was empty.",
            "counter",
            |p| p.rate_limited,
        ),
    ];
    for (name, help, ty, field) in protect {
        header(out, name, help, ty);
        for p in peers {
            sample(out, name, &peer_labels(p), None, field(p));
        }
    }
    let name = "ringlb_peer_slow_start_weight";
    header(
        out,
        name,
        "The peer's effective weight (below its weight while slow start ramps it up), mean \
         over shards.",
        "gauge",
    );
    for p in peers {
        if let Some(v) = p.slow_start_weight {
            sample(out, name, &peer_labels(p), None, v);
        }
    }
}

fn peer_labels<'a>(p: &PeerSum<'a>) -> [(&'static str, &'a str); 2] {
    [("upstream", p.upstream), ("peer", p.peer)]
}

fn render_upstreams(registry: &Registry, peers: &[PeerSum], out: &mut String) {
    type Field = fn(&super::UpstreamMetrics) -> u64;
    let families: [(&str, &str, Field); 4] = [
        (
            "ringlb_upstream_requests_total",
            "Requests routed to the upstream.",
            |m| m.requests.get(),
        ),
        (
            "ringlb_upstream_no_peer_total",
            "Requests for which the upstream had no eligible peer.",
            |m| m.no_peer.get(),
        ),
        (
            "ringlb_upstream_retry_budget_exhausted_total",
            "Retries not made because the upstream's retry budget was spent.",
            |m| m.retry_budget_exhausted.get(),
        ),
        (
            "ringlb_tunnels_total",
            "Tunnels (upgraded connections such as WebSocket) opened to the upstream.",
            |m| m.tunnels_total.get(),
        ),
    ];
    for (name, help, field) in families {
        header(out, name, help, "counter");
        for u in &registry.upstreams {
            let v = u
                .per_shard
                .iter()
                .fold(0u64, |a, m| a.wrapping_add(field(m)));
            sample(out, name, &[("upstream", &u.name)], None, v);
        }
    }
    let sum = |u: &super::registry::UpstreamEntry, field: Field| {
        u.per_shard
            .iter()
            .fold(0u64, |a, m| a.wrapping_add(field(m)))
    };
    let protect: [(&str, &str, Field); 4] = [
        (
            "ringlb_upstream_queue_overflows_total",
            "Requests answered 503 because the upstream's queue was full.",
            |m| m.queue_overflows.get(),
        ),
        (
            "ringlb_upstream_queue_timeouts_total",
            "Requests answered 503 after waiting queue.timeout_ms in the upstream's queue.",
            |m| m.queue_timeouts.get(),
        ),
        (
            "ringlb_upstream_rate_limited_total",
            "Selections held back because the upstream's own rate bucket was empty.",
            |m| m.rate_limited.get(),
        ),
        (
            "ringlb_upstream_client_rate_limited_total",
            "Requests answered 429 by the upstream's per-client rate.",
            |m| m.client_rate_limited.get(),
        ),
    ];
    for (name, help, field) in protect {
        header(out, name, help, "counter");
        for u in &registry.upstreams {
            let v = u
                .per_shard
                .iter()
                .fold(0u64, |a, m| a.wrapping_add(field(m)));
            sample(out, name, &[("upstream", &u.name)], None, v);
        }
    }
    let name = "ringlb_upstream_queue_length";
    header(
        out,
        name,
        "Requests waiting in the upstream's queue now.",
        "gauge",
    );
    for u in &registry.upstreams {
        let v = u
            .per_shard
            .iter()
            .fold(0u64, |a, m| a.wrapping_add(m.queue_length.get()));
        sample(out, name, &[("upstream", &u.name)], None, v);
    }
    let name = "ringlb_upstream_queue_wait_seconds";
    header(
        out,
        name,
        "How long requests waited in the upstream's queue before a peer took them.",
        "histogram",
    );
    for u in &registry.upstreams {
        let mut h = HistogramSnapshot::default();
        for m in &u.per_shard {
            m.queue_wait_seconds.add_to(&mut h);
        }
        histogram(out, name, &[("upstream", &u.name)], &h);
    }

    let name = "ringlb_tunnels_active";
    header(out, name, "Tunnels open to the upstream now.", "gauge");
    for u in &registry.upstreams {
        let v = sum(u, |m| m.tunnels_active.get());
        sample(out, name, &[("upstream", &u.name)], None, v);
    }
    let name = "ringlb_tunnel_bytes_total";
    header(
        out,
        name,
        "Bytes copied through tunnels: direction=\"upstream\" from clients to the upstream, \
         \"downstream\" from the upstream to clients.",
        "counter",
    );
    for u in &registry.upstreams {
        let labels = [("upstream", u.name.as_str())];
        let up = sum(u, |m| m.tunnel_bytes_upstream.get());
        sample(out, name, &labels, Some(("direction", "upstream")), up);
        let down = sum(u, |m| m.tunnel_bytes_downstream.get());
        sample(out, name, &labels, Some(("direction", "downstream")), down);
    }

    let name = "ringlb_upstream_spliced_bytes_total";
    header(
        out,
        name,
        "Response body bytes moved from the upstream's peers to clients through a pipe \
         ([server] splice = true), not copied through ringlb.",
        "counter",
    );
    for u in &registry.upstreams {
        let v = sum(u, |m| m.spliced_bytes.get());
        sample(out, name, &[("upstream", &u.name)], None, v);
    }

    let name = "ringlb_upstream_peers";
    header(out, name, "The upstream's peers by health state.", "gauge");
    for u in &registry.upstreams {
        for state in PeerState::ALL {
            let n = peers
                .iter()
                .filter(|p| p.upstream == u.name && p.state == state)
                .count();
            sample(
                out,
                name,
                &[("upstream", &u.name)],
                Some(("state", state.label())),
                n,
            );
        }
    }
}

fn render_downstream(registry: &Registry, out: &mut String) {
    type Field = fn(&super::ShardMetrics) -> u64;
    let families: [(&str, &str, &str, Field); 4] = [
        (
            "ringlb_downstream_connections_accepted_total",
            "Client connections accepted by the shard.",
            "counter",
            |m| m.connections_accepted.get(),
        ),
        (
            "ringlb_downstream_connections_active",
            "Client connections open on the shard.",
            "gauge",
            |m| m.connections_active.get(),
        ),
        (
            "ringlb_downstream_connections_dormant",
            "Client connections of the shard parked with no task and no buffer.",
            "gauge",
            |m| m.connections_dormant.get(),
        ),
        (
            "ringlb_downstream_requests_total",
            "Requests read from clients by the shard.",
            "counter",
            |m| m.requests.get(),
        ),
    ];
    let mut shard = String::new();
    for (name, help, ty, field) in families {
        header(out, name, help, ty);
        for (i, m) in registry.shards.iter().enumerate() {
            shard.clear();
            let _ = write!(shard, "{i}");
            sample(out, name, &[("shard", &shard)], None, field(m));
        }
    }

    let name = "ringlb_downstream_responses_total";
    header(
        out,
        name,
        "Responses sent to clients by status code (codes seen so far).",
        "counter",
    );
    let mut code_label = String::new();
    for code in FIRST_CODE..=LAST_CODE {
        let n = registry
            .shards
            .iter()
            .fold(0u64, |a, m| a.wrapping_add(m.responses(code)));
        if n > 0 {
            code_label.clear();
            let _ = write!(code_label, "{code}");
            sample(out, name, &[("code", &code_label)], None, n);
        }
    }

    let name = "ringlb_tls_handshake_failures_total";
    header(
        out,
        name,
        "TLS handshakes with clients that failed, by reason.",
        "counter",
    );
    for (i, reason) in super::TLS_HANDSHAKE_REASONS.iter().enumerate() {
        let n = registry.shards.iter().fold(0u64, |a, m| {
            a.wrapping_add(m.tls_handshake_failures[i].get())
        });
        sample(out, name, &[("reason", reason)], None, n);
    }

    let name = "ringlb_request_duration_seconds";
    header(
        out,
        name,
        "Time from a request's head being read to its response's last byte being written.",
        "histogram",
    );
    let mut sum = HistogramSnapshot::default();
    for m in &registry.shards {
        m.request_duration_seconds.add_to(&mut sum);
    }
    histogram(out, name, &[], &sum);
}

fn render_process(control: &ControlGauges, out: &mut String) {
    let name = "ringlb_build_info";
    header(
        out,
        name,
        "Always 1; the label carries the version.",
        "gauge",
    );
    sample(out, name, &[("version", &control.version)], None, 1);

    let name = "ringlb_config_reloads_total";
    header(out, name, "Config reloads by result.", "counter");
    sample(out, name, &[("result", "ok")], None, control.reloads_ok);
    sample(
        out,
        name,
        &[("result", "error")],
        None,
        control.reloads_error,
    );

    let name = "ringlb_config_last_reload_success_timestamp_seconds";
    header(
        out,
        name,
        "Unix time of the last successful config (re)load.",
        "gauge",
    );
    if let Some(t) = control.last_reload_success_unix_seconds {
        sample(out, name, &[], None, t);
    }

    let name = "ringlb_observations_dropped_total";
    header(
        out,
        name,
        "Outcome observations shards could not send to the control thread.",
        "counter",
    );
    sample(out, name, &[], None, control.observations_dropped);
    render_discovery(control, out);
}

fn render_discovery(control: &ControlGauges, out: &mut String) {
    if control.discovery.is_empty() {
        return;
    }
    let name = "ringlb_discovery_updates_total";
    header(
        out,
        name,
        "Discovery answers (DNS lookups, Docker listings) by upstream and result.",
        "counter",
    );
    for d in &control.discovery {
        for (result, n) in &d.updates {
            sample(
                out,
                name,
                &[("upstream", &d.upstream), ("result", result)],
                None,
                n,
            );
        }
    }
    let name = "ringlb_discovery_peers";
    header(
        out,
        name,
        "Peers an upstream's discovery provides now.",
        "gauge",
    );
    for d in &control.discovery {
        sample(out, name, &[("upstream", &d.upstream)], None, d.peers);
    }
}

fn header(out: &mut String, name: &str, help: &str, ty: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {ty}");
}

/// One sample line: `name{labels,extra} value`.
fn sample(
    out: &mut String,
    name: &str,
    labels: &[(&str, &str)],
    extra: Option<(&str, &str)>,
    value: impl Display,
) {
    out.push_str(name);
    write_labels(out, labels, extra);
    let _ = writeln!(out, " {value}");
}

/// A histogram's cumulative `_bucket` lines, `_sum` (seconds) and `_count`.
fn histogram(out: &mut String, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
    for (le, n) in LE.iter().zip(h.cumulative()) {
        let _ = write!(out, "{name}_bucket");
        write_labels(out, labels, Some(("le", le)));
        let _ = writeln!(out, " {n}");
    }
    let _ = write!(out, "{name}_sum");
    write_labels(out, labels, None);
    let _ = writeln!(out, " {}", h.sum_nanos as f64 / 1e9);
    let _ = write!(out, "{name}_count");
    write_labels(out, labels, None);
    let _ = writeln!(out, " {}", h.count());
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], extra: Option<(&str, &str)>) {
    let mut all = labels.iter().copied().chain(extra).peekable();
    if all.peek().is_none() {
        return;
    }
    out.push('{');
    for (i, (k, v)) in all.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        escape_label_value(v, out);
        out.push('"');
    }
    out.push('}');
}

/// Appends `v` escaped as a label value of the text format: `\` → `\\`, `"` → `\"`, newline →
/// `\n`.
pub fn escape_label_value(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::super::{ShardHandles, BUCKETS_SECONDS};
    use super::*;

    fn rendered(registry: &Registry, control: &ControlGauges) -> String {
        let mut out = String::new();
        render(registry, control, &mut out);
        out
    }

    fn lines_of<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn le_labels_are_the_bucket_bounds() {
        for (le, bound) in LE.iter().zip(BUCKETS_SECONDS) {
            assert_eq!(*le, bound.to_string());
            assert_eq!(le.parse::<f64>(), Ok(bound));
        }
        assert_eq!(LE[BUCKET_COUNT - 1], "+Inf");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        escape_label_value("a\\b\"c\nd", &mut out);
        assert_eq!(out, r#"a\\b\"c\nd"#);

        let mut r = Registry::new(1);
        let h = r.reconcile(&[("up\"s", vec!["C:\\x\ny"])]);
        h[0].upstreams[0].peers[0].requests.inc();
        let text = rendered(&r, &ControlGauges::default());
        assert!(
            text.contains(r#"ringlb_peer_requests_total{upstream="up\"s",peer="C:\\x\ny"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"ringlb_upstream_requests_total{upstream="up\"s"} 0"#));
    }

    #[test]
    fn histograms_render_cumulative_with_sum_and_count() {
        let mut r = Registry::new(2);
        let h = r.reconcile(&[("a", vec!["p"])]);
        let d = &h[0].shard.request_duration_seconds;
        d.observe(Duration::from_micros(500)); // le 0.0005, on the bound
        d.observe(Duration::from_millis(7)); // le 0.01
        h[1].shard
            .request_duration_seconds
            .observe(Duration::from_secs(30)); // +Inf
        let text = rendered(&r, &ControlGauges::default());
        let want: Vec<String> = LE
            .iter()
            .zip([1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3])
            .map(|(le, n)| format!("ringlb_request_duration_seconds_bucket{{le=\"{le}\"}} {n}"))
            .collect();
        assert_eq!(
            lines_of(&text, "ringlb_request_duration_seconds_bucket"),
            want
        );
        assert_eq!(
            lines_of(&text, "ringlb_request_duration_seconds_sum"),
            ["ringlb_request_duration_seconds_sum 30.0075"]
        );
        assert_eq!(
            lines_of(&text, "ringlb_request_duration_seconds_count"),
            ["ringlb_request_duration_seconds_count 3"]
        );
        // The peer histogram carries its labels before le.
        assert!(text.contains(
            "ringlb_peer_response_seconds_bucket{upstream=\"a\",peer=\"p\",le=\"+Inf\"} 0\n"
        ));
    }

    #[test]
    fn values_are_summed_over_shards() {
        let mut r = Registry::new(3);
        let h = r.reconcile(&[("a", vec!["p", "q"])]);
        for (i, s) in h.iter().enumerate() {
            let n = i as u64 + 1;
            s.upstreams[0].peers[0].requests.add(n);
            s.upstreams[0].peers[0].bytes_sent.add(10 * n);
            s.upstreams[0].peers[0].active_requests.set(n);
            s.upstreams[0].metrics.no_peer.add(n);
            s.shard.count_response(503);
            s.shard.requests.add(n);
        }
        h[0].upstreams[0].peers[0].breaker_open.set(1);
        h[2].upstreams[0].peers[0].breaker_open.set(1);
        let text = rendered(&r, &ControlGauges::default());
        for line in [
            "ringlb_peer_requests_total{upstream=\"a\",peer=\"p\"} 6",
            "ringlb_peer_requests_total{upstream=\"a\",peer=\"q\"} 0",
            "ringlb_peer_bytes_sent_total{upstream=\"a\",peer=\"p\"} 60",
            "ringlb_peer_active_requests{upstream=\"a\",peer=\"p\"} 6",
            "ringlb_peer_breaker_open{upstream=\"a\",peer=\"p\"} 2",
            "ringlb_upstream_no_peer_total{upstream=\"a\"} 6",
            "ringlb_downstream_requests_total{shard=\"1\"} 2",
            "ringlb_downstream_requests_total{shard=\"2\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        // Only codes seen, summed.
        assert_eq!(
            lines_of(&text, "ringlb_downstream_responses_total"),
            ["ringlb_downstream_responses_total{code=\"503\"} 3"]
        );
    }

    #[test]
    fn ewma_is_the_mean_over_shards_that_measured() {
        let mut r = Registry::new(3);
        let h = r.reconcile(&[("a", vec!["p", "never"])]);
        h[0].upstreams[0].peers[0].ewma_seconds.set(0.1);
        h[2].upstreams[0].peers[0].ewma_seconds.set(0.3);
        let text = rendered(&r, &ControlGauges::default());
        let got = lines_of(&text, "ringlb_peer_ewma_response_seconds{");
        assert_eq!(got.len(), 1, "{got:?}");
        let v: f64 = got[0].rsplit(' ').next().unwrap().parse().unwrap();
        assert!((v - 0.2).abs() < 1e-12, "{v}");
    }

    #[test]
    fn health_comes_from_the_control_gauges() {
        let mut r = Registry::new(1);
        r.reconcile(&[("a", vec!["p", "q", "r"])]);
        let control = ControlGauges {
            version: "1.2.3".into(),
            peers: vec![
                PeerControl {
                    upstream: "a".into(),
                    peer: "p".into(),
                    state: PeerState::Up,
                    ejections: 0,
                },
                PeerControl {
                    upstream: "a".into(),
                    peer: "q".into(),
                    state: PeerState::Ejected,
                    ejections: 4,
                },
            ],
            reloads_ok: 2,
            reloads_error: 1,
            last_reload_success_unix_seconds: Some(1700000000.5),
            observations_dropped: 9,
            discovery: vec![crate::metrics::DiscoveryGauges {
                upstream: "a".into(),
                updates: vec![("changed", 3), ("error", 1)],
                peers: 2,
            }],
        };
        let text = rendered(&r, &control);
        assert_eq!(
            lines_of(&text, "ringlb_discovery_"),
            [
                "ringlb_discovery_updates_total{upstream=\"a\",result=\"changed\"} 3",
                "ringlb_discovery_updates_total{upstream=\"a\",result=\"error\"} 1",
                "ringlb_discovery_peers{upstream=\"a\"} 2",
            ]
        );
        assert_eq!(
            lines_of(&text, "ringlb_peer_up{"),
            [
                "ringlb_peer_up{upstream=\"a\",peer=\"p\"} 1",
                "ringlb_peer_up{upstream=\"a\",peer=\"q\"} 0",
                "ringlb_peer_up{upstream=\"a\",peer=\"r\"} 0",
            ]
        );
        let q: Vec<&str> = lines_of(&text, "ringlb_peer_health_state{upstream=\"a\",peer=\"q\"");
        assert_eq!(
            q,
            [
                "ringlb_peer_health_state{upstream=\"a\",peer=\"q\",state=\"up\"} 0",
                "ringlb_peer_health_state{upstream=\"a\",peer=\"q\",state=\"down\"} 0",
                "ringlb_peer_health_state{upstream=\"a\",peer=\"q\",state=\"ejected\"} 1",
                "ringlb_peer_health_state{upstream=\"a\",peer=\"q\",state=\"unknown\"} 0",
            ]
        );
        assert!(text.contains("ringlb_peer_ejections_total{upstream=\"a\",peer=\"q\"} 4\n"));
        assert_eq!(
            lines_of(&text, "ringlb_upstream_peers{"),
            [
                "ringlb_upstream_peers{upstream=\"a\",state=\"up\"} 1",
                "ringlb_upstream_peers{upstream=\"a\",state=\"down\"} 0",
                "ringlb_upstream_peers{upstream=\"a\",state=\"ejected\"} 1",
                "ringlb_upstream_peers{upstream=\"a\",state=\"unknown\"} 1",
            ]
        );
        for line in [
            "ringlb_build_info{version=\"1.2.3\"} 1",
            "ringlb_config_reloads_total{result=\"ok\"} 2",
            "ringlb_config_reloads_total{result=\"error\"} 1",
            "ringlb_config_last_reload_success_timestamp_seconds 1700000000.5",
            "ringlb_observations_dropped_total 9",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }

    #[test]
    fn every_family_has_one_help_and_type_and_contiguous_samples() {
        let mut r = Registry::new(2);
        r.reconcile(&[("a", vec!["p", "q"]), ("b", vec!["r"])]);
        let text = rendered(&r, &ControlGauges::default());
        let mut seen = BTreeSet::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert!(seen.insert(name.clone()), "{name} typed twice");
                current = name;
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| *f == current))
                    .unwrap_or(name);
                assert_eq!(family, current, "sample outside its family: {line}");
            }
        }
        assert_eq!(seen.len(), 45, "{seen:?}");
    }

    /// Two shard threads write a known sequence; the scrape, read back by a real Prometheus
    /// text parser, has exactly the summed values.
    #[test]
    fn a_real_parser_reads_back_the_exact_values() {
        use prometheus_parse::{Scrape, Value};

        let mut r = Registry::new(2);
        let handles = r.reconcile(&[
            ("api", vec!["10.0.0.1:80", "10.0.0.2:80"]),
            ("static", vec!["[::1]:8080"]),
        ]);
        let threads: Vec<_> = handles
            .into_iter()
            .enumerate()
            .map(|(shard, h): (usize, ShardHandles)| {
                std::thread::spawn(move || {
                    let n = shard as u64 + 1; // shard 0 does everything once, shard 1 twice
                    for _ in 0..n {
                        h.shard.connections_accepted.inc();
                        h.shard.requests.inc();
                        h.shard.count_response(200);
                        h.shard.count_response(502);
                        h.shard
                            .request_duration_seconds
                            .observe(Duration::from_millis(3));
                        let api = &h.upstreams[0];
                        api.metrics.requests.inc();
                        api.metrics.retry_budget_exhausted.inc();
                        api.metrics.spliced_bytes.add(4096);
                        let p1 = &api.peers[0];
                        p1.requests.inc();
                        p1.count_response(200);
                        p1.count_response(404);
                        p1.count_failure(FailureKind::Reset);
                        p1.response_seconds.observe(Duration::from_millis(20));
                        p1.bytes_received.add(100);
                        let p2 = &api.peers[1];
                        p2.requests.inc();
                        p2.retries.inc();
                        p2.count_failure(FailureKind::ConnectTimeout);
                        p2.response_seconds.observe(Duration::from_secs(3));
                        h.upstreams[1].peers[0].connections_reused.inc();
                    }
                    h.shard.connections_active.set(n);
                    h.shard.connections_dormant.set(n - 1);
                })
            })
            .collect();
        for t in threads {
            t.join().expect("shard thread");
        }
        let control = ControlGauges {
            version: "0.1.0".into(),
            ..ControlGauges::default()
        };
        let text = rendered(&r, &control);
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses");

        let value = |metric: &str, labels: &[(&str, &str)]| -> Value {
            let found: Vec<&Value> = scrape
                .samples
                .iter()
                .filter(|s| {
                    s.metric == metric
                        && s.labels.len() == labels.len()
                        && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
                })
                .map(|s| &s.value)
                .collect();
            assert_eq!(found.len(), 1, "{metric} {labels:?}: {found:?}");
            found[0].clone()
        };
        let p1 = [("upstream", "api"), ("peer", "10.0.0.1:80")];
        let p2 = [("upstream", "api"), ("peer", "10.0.0.2:80")];
        let with = |base: &[(&'static str, &'static str)], k, v| {
            let mut l = base.to_vec();
            l.push((k, v));
            l
        };

        assert_eq!(
            value("ringlb_peer_requests_total", &p1),
            Value::Counter(3.0)
        );
        assert_eq!(value("ringlb_peer_retries_total", &p1), Value::Counter(0.0));
        assert_eq!(value("ringlb_peer_retries_total", &p2), Value::Counter(3.0));
        for (code, want) in [
            ("1xx", 0.0),
            ("2xx", 3.0),
            ("3xx", 0.0),
            ("4xx", 3.0),
            ("5xx", 0.0),
        ] {
            assert_eq!(
                value("ringlb_peer_responses_total", &with(&p1, "code", code)),
                Value::Counter(want),
                "{code}"
            );
        }
        for kind in FailureKind::ALL {
            let want1 = if kind == FailureKind::Reset { 3.0 } else { 0.0 };
            let want2 = if kind == FailureKind::ConnectTimeout {
                3.0
            } else {
                0.0
            };
            let l1 = with(&p1, "kind", kind.label());
            let l2 = with(&p2, "kind", kind.label());
            assert_eq!(
                value("ringlb_peer_failures_total", &l1),
                Value::Counter(want1)
            );
            assert_eq!(
                value("ringlb_peer_failures_total", &l2),
                Value::Counter(want2)
            );
        }
        assert_eq!(
            value("ringlb_peer_bytes_received_total", &p1),
            Value::Counter(300.0)
        );
        assert_eq!(
            value(
                "ringlb_peer_connections_reused_total",
                &[("upstream", "static"), ("peer", "[::1]:8080")]
            ),
            Value::Counter(3.0)
        );
        assert_eq!(value("ringlb_peer_up", &p1), Value::Gauge(0.0));
        assert_eq!(
            value("ringlb_peer_health_state", &with(&p1, "state", "unknown")),
            Value::Gauge(1.0)
        );

        // Histograms: cumulative buckets, sum and count.
        let Value::Histogram(buckets) = value("ringlb_peer_response_seconds", &p2) else {
            panic!("not a histogram")
        };
        assert_eq!(buckets.len(), BUCKET_COUNT);
        for b in &buckets {
            let want = if b.less_than >= 5.0 { 3.0 } else { 0.0 };
            assert_eq!(b.count, want, "le {}", b.less_than);
        }
        assert!(buckets.last().unwrap().less_than.is_infinite());
        assert_eq!(
            value("ringlb_peer_response_seconds_sum", &p2),
            Value::Untyped(9.0)
        );
        assert_eq!(
            value("ringlb_peer_response_seconds_count", &p2),
            Value::Untyped(3.0)
        );
        let Value::Histogram(buckets) = value("ringlb_request_duration_seconds", &[]) else {
            panic!("not a histogram")
        };
        for b in &buckets {
            let want = if b.less_than >= 0.005 { 3.0 } else { 0.0 };
            assert_eq!(b.count, want, "le {}", b.less_than);
        }

        assert_eq!(
            value("ringlb_upstream_requests_total", &[("upstream", "api")]),
            Value::Counter(3.0)
        );
        assert_eq!(
            value(
                "ringlb_upstream_retry_budget_exhausted_total",
                &[("upstream", "api")]
            ),
            Value::Counter(3.0)
        );
        assert_eq!(
            value(
                "ringlb_upstream_spliced_bytes_total",
                &[("upstream", "api")]
            ),
            Value::Counter(3.0 * 4096.0)
        );
        assert_eq!(
            value(
                "ringlb_upstream_peers",
                &[("upstream", "api"), ("state", "unknown")]
            ),
            Value::Gauge(2.0)
        );
        for (shard, n) in [("0", 1.0), ("1", 2.0)] {
            let l = [("shard", shard)];
            assert_eq!(
                value("ringlb_downstream_connections_accepted_total", &l),
                Value::Counter(n)
            );
            assert_eq!(
                value("ringlb_downstream_connections_active", &l),
                Value::Gauge(n)
            );
            assert_eq!(
                value("ringlb_downstream_connections_dormant", &l),
                Value::Gauge(n - 1.0)
            );
        }
        assert_eq!(
            value("ringlb_downstream_responses_total", &[("code", "200")]),
            Value::Counter(3.0)
        );
        assert_eq!(
            value("ringlb_downstream_responses_total", &[("code", "502")]),
            Value::Counter(3.0)
        );
        let codes = scrape
            .samples
            .iter()
            .filter(|s| s.metric == "ringlb_downstream_responses_total")
            .count();
        assert_eq!(codes, 2);
        assert_eq!(
            value("ringlb_build_info", &[("version", "0.1.0")]),
            Value::Gauge(1.0)
        );
        assert_eq!(
            value("ringlb_config_reloads_total", &[("result", "error")]),
            Value::Counter(0.0)
        );
        // Every family has its HELP text.
        assert_eq!(scrape.docs.len(), 45);
    }
}

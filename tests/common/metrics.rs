//! The admin endpoint's `/metrics`, read with a real Prometheus text parser.

use std::net::SocketAddr;

use prometheus_parse::{Scrape, Value};

use crate::common::Client;

/// GET `/metrics` from the admin endpoint at `admin`, parsed.
pub fn scrape_metrics(admin: SocketAddr) -> Scrape {
    let r = Client::connect(admin).roundtrip(b"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n");
    assert_eq!(r.status, 200);
    let text = r.body_str();
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The one sample of `metric` with exactly `labels` (panics unless there is exactly one).
pub fn metric_value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Value {
    let found: Vec<&Value> = s
        .samples
        .iter()
        .filter(|x| {
            x.metric == metric
                && x.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v))
        })
        .map(|x| &x.value)
        .collect();
    assert_eq!(found.len(), 1, "{metric} {labels:?}: {found:?}");
    found[0].clone()
}

/// The number of the one sample of `metric` with exactly `labels` (a counter, gauge or
/// untyped sample).
pub fn metric_sample(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    match metric_value(s, metric, labels) {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        other => panic!("{metric}: {other:?}"),
    }
}

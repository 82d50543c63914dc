//! Docker discovery (`discovery = { kind = "docker", … }`): the running containers that carry
//! a label, at their address on one network and the port another label names, from the
//! Docker Engine API (version [`API_VERSION`]) over its Unix socket.
//!
//! - `GET /v1.43/containers/json?filters={"label":["<label>"],"status":["running"]}` lists
//!   them; each container's `NetworkSettings.Networks.<network>.IPAddress` (or
//!   `GlobalIPv6Address`) and its `Labels.<port_label>` make one peer. A container without
//!   that network or a valid port label is skipped (logged once per container).
//! - `GET /v1.43/events?filters={"type":["container"],"label":["<label>"]}` streams the
//!   containers' events: every event triggers a new listing at once. While the stream is
//!   unavailable the listing is polled every `refresh_ms` (it is also repeated every
//!   `refresh_ms` with the stream up, as a safety net).
//! - A listing that fails (no socket, an error status, a body that is not the API's JSON)
//!   keeps the last good set for 30 s (the DNS `hold_ms` default), then empties it.
//!
//! The HTTP/1.1 client is the few lines this needs over `tokio::net::UnixStream`: one request
//! per connection (`Connection: close`); heads parsed by [`crate::http::parse_response`],
//! chunked bodies decoded by [`crate::http::ChunkedDecoder`].

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::set::{Answer, Found, PeerSet, Timing};
use super::Sink;
use crate::config::{Discovery, DockerDiscovery};
use crate::http::{parse_response, BodyKind, ChunkedDecoder, Method, ParseStatus, ResponseHead};

/// The Engine API version this client speaks (Docker Engine 24.0 and later).
pub const API_VERSION: &str = "v1.43";
/// How long a failed listing keeps the last good set.
const HOLD: Duration = Duration::from_secs(30);
/// The longest listing body accepted.
const MAX_BODY: usize = 16 << 20;
/// How long one listing may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// One container of `GET /containers/json` (the fields used; the rest is ignored).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Container {
    id: String,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    labels: std::collections::HashMap<String, String>,
    #[serde(default)]
    network_settings: Option<NetworkSettings>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NetworkSettings {
    #[serde(default)]
    networks: std::collections::HashMap<String, Endpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Endpoint {
    #[serde(default, rename = "IPAddress")]
    ip_address: String,
    #[serde(default, rename = "GlobalIPv6Address")]
    global_ipv6_address: String,
}

/// `s` percent-encoded for a query string (RFC 3986 unreserved characters kept).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `filters` query value (JSON, percent-encoded).
fn filters(pairs: &[(&str, &str)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::json!([v])))
        .collect();
    percent_encode(&serde_json::Value::Object(map).to_string())
}

/// The listing path for `d`.
fn list_path(d: &DockerDiscovery) -> String {
    format!(
        "/{API_VERSION}/containers/json?filters={}",
        filters(&[("label", &d.label), ("status", "running")])
    )
}

/// The events path for `d`.
fn events_path(d: &DockerDiscovery) -> String {
    format!(
        "/{API_VERSION}/events?filters={}",
        filters(&[("label", &d.label), ("type", "container")])
    )
}

/// Sends `GET path` on a new connection to `d.socket`; returns the connection and what was
/// read so far with the parsed head.
async fn request(
    d: &DockerDiscovery,
    path: &str,
) -> Result<(UnixStream, Vec<u8>, ResponseHead), String> {
    let mut stream = UnixStream::connect(&d.socket)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", d.socket.display()))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("cannot send to {}: {e}", d.socket.display()))?;
    let mut buf = Vec::with_capacity(8192);
    let mut head = ResponseHead::default();
    loop {
        match parse_response(&buf, Method::Get, &mut head) {
            Ok(ParseStatus::Complete) => break,
            Ok(ParseStatus::Partial) => {}
            Err(e) => return Err(format!("{path}: {e}")),
        }
        let n = read_more(&mut stream, &mut buf).await?;
        if n == 0 {
            return Err(format!("{path}: the connection closed before a response"));
        }
    }
    if head.status != 200 {
        return Err(format!("{path}: HTTP {}", head.status));
    }
    Ok((stream, buf, head))
}

/// Reads more bytes into `buf`; returns how many (0 at the end).
async fn read_more(stream: &mut UnixStream, buf: &mut Vec<u8>) -> Result<usize, String> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream
        .read(&mut chunk)
        .await
        .map_err(|e| format!("read from the Docker socket: {e}"))?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// `GET path` and its whole body.
async fn get(d: &DockerDiscovery, path: &str) -> Result<Vec<u8>, String> {
    let (mut stream, mut buf, head) = request(d, path).await?;
    let mut body = Vec::new();
    let mut at = head.head_len;
    match head.body {
        BodyKind::None => {}
        BodyKind::Length(n) => {
            let end = at.saturating_add(usize::try_from(n).unwrap_or(usize::MAX));
            if n as usize > MAX_BODY {
                return Err(format!("{path}: body of {n} bytes is too large"));
            }
            while buf.len() < end {
                if read_more(&mut stream, &mut buf).await? == 0 {
                    return Err(format!("{path}: the body ended early"));
                }
            }
            body.extend_from_slice(&buf[at..end]);
        }
        BodyKind::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            loop {
                let mut data = Vec::new();
                let (used, done) = decoder
                    .decode(&buf[at..], Some(&mut data))
                    .map_err(|e| format!("{path}: bad chunked body: {e}"))?;
                for r in data {
                    body.extend_from_slice(&buf[at + r.start..at + r.end]);
                }
                at += used;
                if done {
                    break;
                }
                if body.len() > MAX_BODY {
                    return Err(format!("{path}: body too large"));
                }
                buf.drain(..at);
                at = 0;
                if read_more(&mut stream, &mut buf).await? == 0 {
                    return Err(format!("{path}: the body ended early"));
                }
            }
        }
        BodyKind::UntilClose => {
            while read_more(&mut stream, &mut buf).await? > 0 {
                if buf.len() > MAX_BODY {
                    return Err(format!("{path}: body too large"));
                }
            }
            body.extend_from_slice(&buf[at..]);
        }
    }
    Ok(body)
}

/// The peers a listing names. `warned` holds the containers already reported as skipped.
fn peers(
    d: &DockerDiscovery,
    containers: &[Container],
    warned: &mut HashSet<String>,
) -> Vec<Found> {
    let mut out = Vec::new();
    for c in containers {
        if c.state.as_deref().is_some_and(|s| s != "running") {
            continue;
        }
        let short = c.id.get(..12).unwrap_or(&c.id);
        let name = c.names.first().map_or("", |n| n.trim_start_matches('/'));
        let mut skip = |why: String| {
            if warned.insert(c.id.clone()) {
                tracing::warn!("discovery: docker container {short} {name} skipped: {why}");
            }
        };
        let Some(endpoint) = c
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.get(&d.network))
        else {
            skip(format!("not on network `{}`", d.network));
            continue;
        };
        let ip: Option<IpAddr> = endpoint
            .ip_address
            .parse()
            .ok()
            .or_else(|| endpoint.global_ipv6_address.parse().ok());
        let Some(ip) = ip else {
            skip(format!("no address on network `{}`", d.network));
            continue;
        };
        let port = match c.labels.get(&d.port_label).map(|p| p.trim().parse::<u16>()) {
            Some(Ok(p)) if p > 0 => p,
            Some(_) => {
                skip(format!("label `{}` is not a port", d.port_label));
                continue;
            }
            None => {
                skip(format!("no label `{}`", d.port_label));
                continue;
            }
        };
        out.push(Found {
            addr: SocketAddr::new(ip, port),
            weight: 1,
            backup: false,
            record: format!("container {short} {name} on {} {ip}:{port}", d.network),
            name: name.to_string(),
        });
    }
    out
}

/// One listing as an answer.
async fn list(d: &DockerDiscovery, warned: &mut HashSet<String>) -> Answer {
    let body = match tokio::time::timeout(LIST_TIMEOUT, get(d, &list_path(d))).await {
        Ok(Ok(b)) => b,
        Ok(Err(why)) => return Answer::Failed(why),
        Err(_) => return Answer::Failed("listing timed out".to_string()),
    };
    let containers: Vec<Container> = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return Answer::Failed(format!("containers/json: not the API's JSON: {e}")),
    };
    let found = peers(d, &containers, warned);
    if found.is_empty() {
        Answer::Empty
    } else {
        Answer::Records { found, ttl: None }
    }
}

/// Follows the events stream; rings `changed` at every event. Returns when the stream ends.
async fn follow_events(d: &DockerDiscovery, changed: &tokio::sync::Notify) -> Result<(), String> {
    let path = events_path(d);
    let (mut stream, mut buf, head) = request(d, &path).await?;
    // Connected: whatever happened before is covered by a listing now.
    changed.notify_one();
    buf.drain(..head.head_len);
    let mut decoder = ChunkedDecoder::new();
    loop {
        if !buf.is_empty() {
            let mut data = Vec::new();
            let (used, done) = match head.body {
                BodyKind::Chunked => decoder
                    .decode(&buf, Some(&mut data))
                    .map_err(|e| format!("{path}: bad chunked body: {e}"))?,
                _ => {
                    data.push(0..buf.len());
                    (buf.len(), false)
                }
            };
            if data.iter().any(|r| !r.is_empty()) {
                changed.notify_one();
            }
            buf.drain(..used);
            if done {
                return Ok(());
            }
        }
        if read_more(&mut stream, &mut buf).await? == 0 {
            return Ok(());
        }
    }
}

/// One Docker-discovered upstream: list at start, at every event and every `refresh`.
pub(super) async fn source(upstream: String, spec: Discovery, d: DockerDiscovery, sink: Sink) {
    let timing = Timing {
        refresh: Some(d.refresh),
        min_ttl: d.refresh,
        max_ttl: d.refresh,
        hold: HOLD,
        hold_obsolete: Duration::ZERO,
    };
    let mut set = PeerSet::new(&upstream, timing);
    let changed = Arc::new(tokio::sync::Notify::new());
    let events = {
        let (d, changed, upstream) = (d.clone(), changed.clone(), upstream.clone());
        tokio::spawn(async move {
            let mut logged = false;
            loop {
                match follow_events(&d, &changed).await {
                    Ok(()) => logged = false,
                    Err(why) if !logged => {
                        tracing::warn!(
                            upstream = %upstream,
                            "discovery: docker events unavailable ({why}): polling every {} ms",
                            d.refresh.as_millis()
                        );
                        logged = true;
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(d.refresh).await;
            }
        })
    };
    let _abort_events = AbortOnDrop(events);
    let mut warned = HashSet::new();
    loop {
        let answer = list(&d, &mut warned).await;
        let (outcome, wait) = set.observe(answer, Instant::now());
        sink.send(&upstream, &spec, &set, outcome, wait);
        let _ = tokio::time::timeout(wait, changed.notified()).await;
    }
}

/// Aborts a task when dropped (the source task's events follower ends with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_json_percent_encoded() {
        assert_eq!(
            filters(&[("label", "ringlb.upstream=api")]),
            "%7B%22label%22%3A%5B%22ringlb.upstream%3Dapi%22%5D%7D"
        );
    }
}

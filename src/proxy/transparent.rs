//! Transparent mode (`algorithm = "transparent"`): a request goes to the host and port its
//! `Host` names, when the upstream's `allow` list permits it.
//!
//! - `Host` is `name[:port]`, `ipv4[:port]` or `[ipv6][:port]`; the port defaults to 80. A
//!   missing or malformed `Host` is a 400.
//! - An address literal must be inside a network rule (`10.0.0.0/8`, `::1`). A name must match
//!   a name rule (`api.internal`, `*.internal`); otherwise, when the list has network rules, the
//!   name is resolved and only its addresses inside them are used (none, or no answer: 403).
//!   Anything else is a 403
//!   (an open forwarder would be an SSRF hole).
//! - Names resolve through this shard's cache (per configuration generation): a miss asks the
//!   lookup thread (`discovery::lookup`) and waits for the answer on the shard's runtime (a
//!   1 ms timer checking a oneshot: never a blocking lookup, and nothing while idle); answers are kept for their TTL (1 s to 300 s), failures for 1 s. A
//!   failed lookup is a 502. Several addresses are used in turn.
//! - Each resolved address gets this shard's own one-peer group (built from the upstream's
//!   settings: timeouts, retry, breaker, pool), so connections are pooled per address and
//!   the try loop, exchange and relay run unchanged. At most [`MAX_TARGETS`] addresses are
//!   kept per shard; beyond that the table starts over (their idle connections close).
//! - With the upstream's `tls`, the peer's server name (SNI, and the name its certificate is
//!   checked for) is `tls.sni`, else the `Host` name without its port (an address literal: the
//!   address). The one-peer groups are then kept per (address, server name): a connection made
//!   for one name is never pooled for another at the same address (and neither is an HTTP/2
//!   one, `H2Upstreams` matching the TLS settings). A `Host` name rustls cannot use as a server
//!   name is a 400.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{PeerConfig, Transparent, UpstreamConfig};
use crate::http::HttpError;
use crate::upstream::{Share, UpstreamGroup};

/// The most one-peer groups (resolved addresses, per server name with `tls`) a shard keeps per
/// generation.
pub(crate) const MAX_TARGETS: usize = 1024;
/// The most names a shard's cache keeps per generation.
const MAX_NAMES: usize = 4096;
/// How long a failed lookup is remembered.
const NEGATIVE_TTL: Duration = Duration::from_secs(1);
/// How often a shard looks for the lookup thread's answer while it waits.
const LOOKUP_POLL: Duration = Duration::from_millis(1);
/// How long a shard waits for the lookup thread.
const LOOKUP_WAIT: Duration = Duration::from_secs(6);

/// A host as `Host` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

/// Parses a `Host` value: `(host, port)`, port 80 when absent; `None` when malformed.
fn parse_host(value: &[u8]) -> Option<(Host, u16)> {
    let v = std::str::from_utf8(value).ok()?.trim();
    let (host, port) = if let Some(rest) = v.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let ip: IpAddr = ip.parse().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (Host::Ip(ip), port)
    } else {
        let (h, port) = match v.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (v, None),
        };
        if h.is_empty() || h.contains(':') {
            return None;
        }
        match h.parse::<IpAddr>() {
            Ok(ip) => (Host::Ip(ip), port),
            Err(_) => {
                let name = h.trim_end_matches('.').to_ascii_lowercase();
                let ok = !name.is_empty()
                    && name.len() <= 253
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
                if !ok {
                    return None;
                }
                (Host::Name(name), port)
            }
        }
    };
    let port = match port {
        None => 80,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0)?,
    };
    Some((host, port))
}

/// One name's cached answer.
struct Cached {
    /// The addresses, or why the lookup failed.
    result: Result<Vec<IpAddr>, String>,
    /// Until when it holds.
    until: Instant,
    /// Which address the next request takes.
    next: Cell<usize>,
}

/// A one-peer group's key: the address and, when the server name follows the `Host`, that name.
type TargetKey = (SocketAddr, Option<String>);

/// TransparentState is one shard's transparent-mode state for one generation: the name cache
/// and the one-peer group of every address forwarded to.
#[derive(Default)]
pub(crate) struct TransparentState {
    names: RefCell<HashMap<String, Cached>>,
    /// By address and, when the server name follows the `Host` (`tls` without `sni`), that
    /// name.
    groups: RefCell<HashMap<TargetKey, Rc<UpstreamGroup>>>,
}

impl TransparentState {
    /// The one-peer group this request (of upstream `cfg`, whose `Host` value is `host`) goes
    /// to, or the error to answer.
    pub async fn target(
        &self,
        cfg: &UpstreamConfig,
        t: &Transparent,
        host: Option<&[u8]>,
    ) -> Result<Rc<UpstreamGroup>, HttpError> {
        let (host, port) = host.and_then(parse_host).ok_or(HttpError::BadRequest(
            "missing or invalid Host for transparent forwarding",
        ))?;
        let forbidden = HttpError::Status(403);
        // The server name comes from the Host only with `tls` and without `tls.sni`.
        let named_by_host = cfg.tls.as_ref().is_some_and(|t| t.sni.is_none());
        let (ip, server_name) = match host {
            Host::Ip(ip) if t.allows_ip(ip) => (ip, named_by_host.then(|| ip.to_string())),
            Host::Ip(_) => return Err(forbidden),
            Host::Name(name) => {
                let by_name = t.allows_name(&name);
                if !by_name && !t.has_networks() {
                    return Err(forbidden);
                }
                // A name allowed by name that does not resolve is a 502; one that is only
                // checked by its addresses and has none is not shown to be allowed: 403.
                let ips = match self.resolve(&name, t).await {
                    Ok(ips) => ips,
                    Err(_) if by_name => {
                        return Err(HttpError::BadGateway("cannot resolve the requested host"))
                    }
                    Err(_) => return Err(forbidden),
                };
                let ips: Vec<IpAddr> = if by_name {
                    ips
                } else {
                    ips.into_iter().filter(|ip| t.allows_ip(*ip)).collect()
                };
                let Some(first) = ips.first().copied() else {
                    return Err(forbidden);
                };
                let ip = match self.names.borrow().get(&name) {
                    Some(c) => {
                        let i = c.next.get();
                        c.next.set(i.wrapping_add(1));
                        ips[i % ips.len()]
                    }
                    None => first,
                };
                (ip, named_by_host.then_some(name))
            }
        };
        self.group(cfg, SocketAddr::new(ip, port), server_name)
    }

    /// The addresses of `name`, from the cache or the lookup thread.
    async fn resolve(&self, name: &str, t: &Transparent) -> Result<Vec<IpAddr>, String> {
        let now = Instant::now();
        if let Some(c) = self.names.borrow().get(name) {
            if c.until > now {
                return c.result.clone();
            }
        }
        let resolvers: Option<Arc<[SocketAddr]>> = t.resolvers.as_deref().map(Arc::from);
        // The answer is polled, not awaited: a monoio task's waker cannot be woken from the
        // lookup thread (monoio without its `sync` feature), and this runs on misses only.
        let mut rx = crate::discovery::lookup(name, resolvers);
        let deadline = now + LOOKUP_WAIT;
        let answer = loop {
            match rx.try_recv() {
                Ok(a) => break a,
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                    break Err("the lookup thread dropped the request".to_string())
                }
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
            }
            if Instant::now() >= deadline {
                break Err("timeout".to_string());
            }
            monoio::time::sleep(LOOKUP_POLL).await;
        };
        let (result, ttl) = match answer {
            Ok((ips, ttl)) => (
                Ok(ips),
                Duration::from_secs(u64::from(ttl))
                    .clamp(Duration::from_secs(1), Duration::from_secs(300)),
            ),
            Err(why) => {
                tracing::debug!("transparent: cannot resolve {name}: {why}");
                (Err(why), NEGATIVE_TTL)
            }
        };
        let mut names = self.names.borrow_mut();
        if names.len() >= MAX_NAMES {
            names.retain(|_, c| c.until > now);
            if names.len() >= MAX_NAMES {
                names.clear();
            }
        }
        names.insert(
            name.to_string(),
            Cached {
                result: result.clone(),
                until: Instant::now() + ttl,
                next: Cell::new(0),
            },
        );
        result
    }

    /// The one-peer group of `addr` for the server name `server_name` (`None`: cleartext, or
    /// `tls.sni`), built on first use from `cfg`.
    fn group(
        &self,
        cfg: &UpstreamConfig,
        addr: SocketAddr,
        server_name: Option<String>,
    ) -> Result<Rc<UpstreamGroup>, HttpError> {
        let key = (addr, server_name);
        if let Some(g) = self.groups.borrow().get(&key) {
            return Ok(g.clone());
        }
        let tls = match &cfg.tls {
            None => None,
            Some(template) => {
                // Without a Host-derived name, `tls.sni` names every peer.
                let name = key.1.as_deref().unwrap_or_default();
                let tls = template.for_name(name).map_err(|why| {
                    tracing::debug!("transparent: no TLS server name for {addr}: {why}");
                    HttpError::BadRequest("the Host is not usable as a TLS server name")
                })?;
                Some(Arc::new(tls))
            }
        };
        let mut one = cfg.clone();
        one.transparent = None;
        one.peers = vec![PeerConfig {
            address: addr.to_string(),
            addr,
            weight: 1,
            backup: false,
            region: None,
            drain: false,
            tls,
            limits: cfg.peer_limits,
            timeouts: cfg.timeouts,
            pool: cfg.pool,
        }];
        let g = Rc::new(UpstreamGroup::for_shard(&one, None, Share::SINGLE));
        let mut groups = self.groups.borrow_mut();
        if groups.len() >= MAX_TARGETS {
            for g in groups.values() {
                g.pool.clear();
            }
            groups.clear();
        }
        groups.insert(key, g.clone());
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_values() {
        let name = |n: &str| Host::Name(n.to_string());
        let ip = |s: &str| Host::Ip(s.parse().unwrap());
        for (v, want) in [
            ("api.internal", Some((name("api.internal"), 80))),
            ("API.Internal.:8080", Some((name("api.internal"), 8080))),
            ("10.0.0.1:81", Some((ip("10.0.0.1"), 81))),
            ("[::1]:9000", Some((ip("::1"), 9000))),
            ("[::1]", Some((ip("::1"), 80))),
            ("::1", None),
            ("a b", None),
            ("x:0", None),
            ("x:99999", None),
            (":80", None),
            ("[zz]:1", None),
        ] {
            assert_eq!(parse_host(v.as_bytes()), want, "{v}");
        }
    }
}

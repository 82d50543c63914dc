//! The backend-protection keys: per-peer (and upstream default) `max_conns`, `rate` and
//! `slow_start_ms`; an upstream's `queue`, `rate` (whole group or per client key), per-request
//! regions (`region_from`, `[[upstream.region_map]]`, `region_fallback`); and the `tcp = { … }`
//! socket options of listeners (`[server] tcp`) and upstream connections.
//!
//! The serde structs mirror the TOML (unknown keys rejected); the `check_*` functions turn them
//! into the runtime types with every range checked, errors naming the key path.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// RateFile is `rate = { requests_per_sec = R, burst = B, key = "…" }` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateFile {
    /// Sustained rate; required, > 0.
    pub requests_per_sec: Option<f64>,
    /// Bucket size. Default: one second's worth (`requests_per_sec`, at least 1).
    pub burst: Option<u64>,
    /// Upstream only: `"client_ip"` or `"header:NAME"` limits each client key separately.
    pub key: Option<String>,
    /// Upstream only, with `key`: how many client keys are tracked at most (LRU). Default
    /// 10000.
    pub max_keys: Option<u64>,
}

/// QueueFile is an upstream's `queue = { max = 1000, timeout_ms = 5000 }`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueueFile {
    /// Requests waiting at most (per shard). Default 1000; 0 = no queue (503 at once).
    pub max: Option<u64>,
    /// How long a request waits at most. Default 5000.
    pub timeout_ms: Option<u64>,
    /// `Retry-After` seconds on the 503 of a full queue or a queue timeout. Default: the
    /// timeout in whole seconds, rounded up (1 with `max = 0`).
    pub retry_after_s: Option<u64>,
}

/// RegionMapFile is one `[[upstream.region_map]]` entry: `cidr = "…", region = "…"`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegionMapFile {
    /// `10.1.0.0/16`, `2001:db8::/32` or a plain address.
    pub cidr: String,
    /// The region of the clients in it.
    pub region: String,
}

/// KeepaliveFile is `keepalive = { idle_s, interval_s, count }`.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeepaliveFile {
    /// TCP_KEEPIDLE.
    pub idle_s: Option<u64>,
    /// TCP_KEEPINTVL.
    pub interval_s: Option<u64>,
    /// TCP_KEEPCNT.
    pub count: Option<u64>,
}

/// TcpFile is `tcp = { … }` as written.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TcpFile {
    /// SO_KEEPALIVE with these timings.
    pub keepalive: Option<KeepaliveFile>,
    /// TCP_NODELAY. Default true.
    pub nodelay: Option<bool>,
    /// SO_SNDBUF in bytes.
    pub send_buffer: Option<u64>,
    /// SO_RCVBUF in bytes.
    pub recv_buffer: Option<u64>,
    /// Listener: TCP_FASTOPEN queue length; upstream: connect with TFO (any value > 0).
    pub fastopen: Option<u64>,
    /// Listener only: TCP_DEFER_ACCEPT in seconds.
    pub defer_accept_s: Option<u64>,
    /// TCP_USER_TIMEOUT in milliseconds.
    pub user_timeout_ms: Option<u64>,
}

/// RateConfig is a token bucket's setting: `requests_per_sec` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateConfig {
    /// Tokens added per second (the whole process; each shard refills its share).
    pub requests_per_sec: f64,
    /// Bucket capacity (the whole process; each shard holds its share).
    pub burst: u32,
}

/// ClientKey is what a per-client rate limit counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientKey {
    /// The client's IP address.
    ClientIp,
    /// A request header's value (lowercase name); requests without it share one bucket.
    Header(String),
}

/// ClientRate is an upstream's `rate = { …, key = … }`: one bucket per client key, at most
/// `max_keys` of them (least recently used evicted), each with the whole rate split over
/// shards like every bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientRate {
    /// The bucket of each key.
    pub rate: RateConfig,
    /// What keys a client.
    pub key: ClientKey,
    /// Keys tracked at most per shard. Default 10000.
    pub max_keys: usize,
}

/// QueueConfig is an upstream's `queue`: where requests wait while every eligible peer is at
/// its `max_conns` (or out of `rate` tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Requests waiting at most, per shard. Default 1000.
    pub max: usize,
    /// Longest wait. Default 5 s.
    pub timeout: Duration,
    /// `Retry-After` of the queue's 503s, in seconds (at least 1).
    pub retry_after_s: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max: 1000,
            timeout: Duration::from_millis(5000),
            retry_after_s: 5,
        }
    }
}

/// PeerLimits is a peer's protection: `max_conns`, `rate`, `slow_start_ms` (each falls back to
/// the upstream's key of the same name).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PeerLimits {
    /// Requests in flight at most, whole process. Default none.
    pub max_conns: Option<u32>,
    /// Token bucket of the peer. Default none.
    pub rate: Option<RateConfig>,
    /// Ramp of the effective weight after the peer comes back. Default none.
    pub slow_start: Option<Duration>,
}

/// RegionFrom is where a request's region comes from (`region_from`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionFrom {
    /// A request header's value (lowercase name), e.g. `CF-IPCountry`.
    Header(String),
    /// The client address, looked up in `region_map`.
    ClientIp,
}

/// Cidr is an address prefix of `region_map`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address (host bits zero).
    pub addr: IpAddr,
    /// Prefix length.
    pub len: u8,
}

impl Cidr {
    /// Whether `ip` is inside this prefix (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// RegionPolicy is how an upstream picks regions per request: where the request's region
/// comes from, the client-address table, and each region's ordered fallbacks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegionPolicy {
    /// `region_from`; `None`: every request is of `local_region`.
    pub from: Option<RegionFrom>,
    /// `[[upstream.region_map]]` in file order (first match wins).
    pub map: Vec<(Cidr, String)>,
    /// `region_fallback`: per region the regions to try next, in order. A region without an
    /// entry falls back to every other region of the peers (in peer order).
    pub fallback: BTreeMap<String, Vec<String>>,
}

/// Keepalive is TCP keep-alive probing: after `idle` without traffic, every `interval`,
/// `count` probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Keepalive {
    /// TCP_KEEPIDLE.
    pub idle: Option<Duration>,
    /// TCP_KEEPINTVL.
    pub interval: Option<Duration>,
    /// TCP_KEEPCNT.
    pub count: Option<u32>,
}

/// TcpOptions is a `tcp = { … }` table: socket options set through socket2 on a listener (and
/// so inherited by its accepted connections) or on each upstream connection. `None` leaves
/// the kernel's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpOptions {
    /// SO_KEEPALIVE with these timings.
    pub keepalive: Option<Keepalive>,
    /// TCP_NODELAY (ringlb sets it on unless this says `false`).
    pub nodelay: Option<bool>,
    /// SO_SNDBUF.
    pub send_buffer: Option<usize>,
    /// SO_RCVBUF.
    pub recv_buffer: Option<usize>,
    /// Listener: the TCP_FASTOPEN queue length; upstream: connect with TCP_FASTOPEN_CONNECT.
    pub fastopen: Option<u32>,
    /// Listener: TCP_DEFER_ACCEPT (wake the accept only once data arrived).
    pub defer_accept: Option<Duration>,
    /// TCP_USER_TIMEOUT.
    pub user_timeout: Option<Duration>,
}

impl TcpOptions {
    /// Sets these options on `sock`, a listener (`listener`, before `listen`) or a connected
    /// upstream socket. The error names the option's key (`keepalive`, `fastopen`, …) with the
    /// kernel's refusal; TCP_NODELAY on an upstream socket is set by the caller.
    pub fn apply(
        &self,
        sock: socket2::SockRef<'_>,
        listener: bool,
    ) -> Result<(), (&'static str, std::io::Error)> {
        use std::os::fd::AsRawFd;
        if let Some(k) = &self.keepalive {
            let mut ka = socket2::TcpKeepalive::new();
            if let Some(idle) = k.idle {
                ka = ka.with_time(idle);
            }
            if let Some(interval) = k.interval {
                ka = ka.with_interval(interval);
            }
            if let Some(count) = k.count {
                ka = ka.with_retries(count);
            }
            sock.set_tcp_keepalive(&ka).map_err(|e| ("keepalive", e))?;
        }
        if listener {
            if let Some(nodelay) = self.nodelay {
                sock.set_tcp_nodelay(nodelay).map_err(|e| ("nodelay", e))?;
            }
        }
        if let Some(n) = self.send_buffer {
            sock.set_send_buffer_size(n)
                .map_err(|e| ("send_buffer", e))?;
        }
        if let Some(n) = self.recv_buffer {
            sock.set_recv_buffer_size(n)
                .map_err(|e| ("recv_buffer", e))?;
        }
        if let Some(ms) = self.user_timeout {
            // Set through libc as the int the kernel reads, so an out-of-range value is the
            // kernel's EINVAL rather than a silent wrap.
            let v = i32::try_from(ms.as_millis()).unwrap_or(-1);
            setsockopt_int(
                sock.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_USER_TIMEOUT,
                v,
            )
            .map_err(|e| ("user_timeout_ms", e))?;
        }
        if listener {
            if let Some(q) = self.fastopen {
                let v = i32::try_from(q).unwrap_or(-1);
                setsockopt_int(sock.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_FASTOPEN, v)
                    .map_err(|e| ("fastopen", e))?;
            }
            if let Some(d) = self.defer_accept {
                let v = i32::try_from(d.as_secs()).unwrap_or(-1);
                setsockopt_int(
                    sock.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_DEFER_ACCEPT,
                    v,
                )
                .map_err(|e| ("defer_accept_s", e))?;
            }
        }
        Ok(())
    }

    /// [`TcpOptions::apply`] on a listener socket, the error naming the key under `prefix`
    /// (`server.tcp`): what a listener's `configure` runs before it listens.
    pub fn apply_listener(&self, sock: &socket2::Socket, prefix: &str) -> std::io::Result<()> {
        self.apply(socket2::SockRef::from(sock), true)
            .map_err(|(key, e)| std::io::Error::new(e.kind(), format!("{prefix}.{key}: {e}")))
    }

    /// Checks that the kernel takes these upstream options, on a socket of `addr`'s family
    /// that is never connected (startup: an option the kernel refuses is an error then, not a
    /// surprise at the first connect). TCP_FASTOPEN_CONNECT included.
    pub fn probe_upstream(
        &self,
        addr: std::net::SocketAddr,
    ) -> Result<(), (&'static str, std::io::Error)> {
        use std::os::fd::AsRawFd;
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .map_err(|e| ("tcp", e))?;
        self.apply(socket2::SockRef::from(&sock), false)?;
        if self.fastopen.is_some_and(|n| n > 0) {
            setsockopt_int(
                sock.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_FASTOPEN_CONNECT,
                1,
            )
            .map_err(|e| ("fastopen", e))?;
        }
        Ok(())
    }
}

impl super::Config {
    /// Checks every upstream's `tcp` options on a probe socket (see
    /// [`TcpOptions::probe_upstream`]): the key path (`upstream[0].tcp.user_timeout_ms`) and
    /// the kernel's refusal of the first one it does not take. Run at start and at a reload.
    pub fn check_upstream_tcp(&self) -> Result<(), (String, std::io::Error)> {
        for (i, u) in self.upstreams.iter().enumerate() {
            let Some(p) = u.peers.first() else { continue };
            if u.tcp == TcpOptions::default() {
                continue;
            }
            u.tcp
                .probe_upstream(p.addr)
                .map_err(|(key, e)| (format!("upstream[{i}].tcp.{key}"), e))?;
        }
        Ok(())
    }
}

/// `setsockopt(fd, level, name, &value, sizeof(int))`.
fn setsockopt_int(fd: i32, level: i32, name: i32, value: i32) -> std::io::Result<()> {
    // SAFETY: `fd` is an open socket borrowed by the caller for this call; `value` lives on
    // this stack frame and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Writes `u`'s protection settings for `ringlb check` (nothing when it has none).
pub(crate) fn describe(out: &mut String, u: &super::UpstreamConfig) -> std::fmt::Result {
    use std::fmt::Write;
    let rate = |r: &RateConfig| format!("{}/s burst {}", r.requests_per_sec, r.burst);
    let limited = u.rate.is_some()
        || u.peers
            .iter()
            .any(|p| p.limits.max_conns.is_some() || p.limits.rate.is_some());
    if limited {
        writeln!(
            out,
            "  queue      max {} per shard, timeout {} ms",
            u.queue.max,
            u.queue.timeout.as_millis()
        )?;
    }
    if let Some(r) = &u.rate {
        writeln!(out, "  rate       {} (whole upstream)", rate(r))?;
    }
    if let Some(c) = &u.client_rate {
        let key = match &c.key {
            ClientKey::ClientIp => "client_ip".to_string(),
            ClientKey::Header(h) => format!("header:{h}"),
        };
        writeln!(
            out,
            "  rate       {} per {key} (429), at most {} keys per shard",
            rate(&c.rate),
            c.max_keys
        )?;
    }
    for (j, p) in u.peers.iter().enumerate() {
        let l = &p.limits;
        if l.max_conns.is_none() && l.rate.is_none() && l.slow_start.is_none() {
            continue;
        }
        write!(out, "  limits [{j}]")?;
        if let Some(n) = l.max_conns {
            write!(out, " max_conns {n}")?;
        }
        if let Some(r) = &l.rate {
            write!(out, " rate {}", rate(r))?;
        }
        if let Some(t) = l.slow_start {
            write!(out, " slow_start {} ms", t.as_millis())?;
        }
        writeln!(out)?;
    }
    if let Some(from) = &u.regions.from {
        let from = match from {
            RegionFrom::Header(h) => format!("header:{h}"),
            RegionFrom::ClientIp => {
                format!("client_ip ({} region_map entries)", u.regions.map.len())
            }
        };
        writeln!(out, "  regions    from {from}")?;
        for (r, list) in &u.regions.fallback {
            writeln!(out, "    {r} -> {}", list.join(", "))?;
        }
    }
    if u.tcp != TcpOptions::default() {
        writeln!(out, "  tcp        {:?}", u.tcp)?;
    }
    Ok(())
}

/// What a check returns on error: the key path and the reason.
pub(crate) type Bad = (String, String);

fn bad(key: &str, reason: impl Into<String>) -> Bad {
    (key.to_string(), reason.into())
}

/// Checks a `rate` table at `key` (without `key`/`max_keys`, which only an upstream has).
pub(crate) fn check_rate(key: &str, f: &RateFile) -> Result<RateConfig, Bad> {
    let rps = f
        .requests_per_sec
        .ok_or_else(|| bad(&format!("{key}.requests_per_sec"), "is required"))?;
    if !rps.is_finite() || rps <= 0.0 || rps > 1e9 {
        return Err(bad(
            &format!("{key}.requests_per_sec"),
            format!("must be a number above 0 (and at most 1e9), got {rps}"),
        ));
    }
    let burst = match f.burst {
        None => rps.ceil().max(1.0) as u32,
        Some(0) => {
            return Err(bad(
                &format!("{key}.burst"),
                "must be at least 1 (a request takes one token)",
            ))
        }
        Some(b) => u32::try_from(b)
            .map_err(|_| bad(&format!("{key}.burst"), format!("{b} is too large")))?,
    };
    Ok(RateConfig {
        requests_per_sec: rps,
        burst,
    })
}

/// Checks a peer's `rate` (no `key`: a peer's bucket is the peer's).
pub(crate) fn check_peer_rate(key: &str, f: &RateFile) -> Result<RateConfig, Bad> {
    if f.key.is_some() || f.max_keys.is_some() {
        return Err(bad(
            &format!("{key}.key"),
            "a per-client key is an upstream's `rate` setting, not a peer's",
        ));
    }
    check_rate(key, f)
}

/// Checks an upstream's `rate`: a whole-group bucket, or per client with `key`.
pub(crate) fn check_upstream_rate(
    key: &str,
    f: &RateFile,
) -> Result<(Option<RateConfig>, Option<ClientRate>), Bad> {
    let rate = check_rate(key, f)?;
    let Some(k) = &f.key else {
        if f.max_keys.is_some() {
            return Err(bad(&format!("{key}.max_keys"), "needs `key`"));
        }
        return Ok((Some(rate), None));
    };
    let client_key = if k == "client_ip" {
        ClientKey::ClientIp
    } else if let Some(name) = k.strip_prefix("header:").filter(|n| is_token(n)) {
        ClientKey::Header(name.to_ascii_lowercase())
    } else {
        return Err(bad(
            &format!("{key}.key"),
            format!("`{k}` is not `client_ip` or `header:NAME`"),
        ));
    };
    let max_keys = match f.max_keys {
        None => 10_000,
        Some(0) => return Err(bad(&format!("{key}.max_keys"), "must be at least 1")),
        Some(n) if n > 10_000_000 => {
            return Err(bad(
                &format!("{key}.max_keys"),
                format!("{n} is too large (at most 10000000)"),
            ))
        }
        Some(n) => n as usize,
    };
    Ok((
        None,
        Some(ClientRate {
            rate,
            key: client_key,
            max_keys,
        }),
    ))
}

/// Checks `max_conns` at `key`.
pub(crate) fn check_max_conns(key: &str, n: Option<u64>) -> Result<Option<u32>, Bad> {
    match n {
        None => Ok(None),
        Some(0) => Err(bad(
            key,
            "must be at least 1 (use `drain = true` to send a peer nothing)",
        )),
        Some(n) => u32::try_from(n)
            .map(Some)
            .map_err(|_| bad(key, format!("{n} is too large"))),
    }
}

/// Checks `slow_start_ms` at `key`.
pub(crate) fn check_slow_start(key: &str, ms: Option<u64>) -> Result<Option<Duration>, Bad> {
    match ms {
        None => Ok(None),
        Some(0) => Err(bad(key, "must be greater than 0 (leave it out for none)")),
        Some(ms) => Ok(Some(Duration::from_millis(ms))),
    }
}

/// Checks `queue` at `key`.
pub(crate) fn check_queue(key: &str, f: Option<&QueueFile>) -> Result<QueueConfig, Bad> {
    let d = QueueConfig::default();
    let Some(f) = f else { return Ok(d) };
    let max = match f.max {
        None => d.max,
        Some(n) if n > 1_000_000 => {
            return Err(bad(
                &format!("{key}.max"),
                format!("{n} is too large (at most 1000000)"),
            ))
        }
        Some(n) => n as usize,
    };
    let timeout = match f.timeout_ms {
        None => d.timeout,
        Some(0) => {
            return Err(bad(
                &format!("{key}.timeout_ms"),
                "must be greater than 0 (use max = 0 for no queue)",
            ))
        }
        Some(ms) => Duration::from_millis(ms),
    };
    let retry_after_s = match f.retry_after_s {
        // A queue's requests are answered within its timeout; without a queue, at once.
        None if max == 0 => 1,
        None => timeout.as_millis().div_ceil(1000).clamp(1, 86_400) as u32,
        Some(s @ 1..=86_400) => s as u32,
        Some(s) => {
            return Err(bad(
                &format!("{key}.retry_after_s"),
                format!("{s} is not between 1 and 86400"),
            ))
        }
    };
    Ok(QueueConfig {
        max,
        timeout,
        retry_after_s,
    })
}

/// Checks the region keys of an upstream at `prefix` (`upstream[0]`): `region_from`,
/// `region_map`, `region_fallback`.
pub(crate) fn check_regions(
    prefix: &str,
    from: Option<&str>,
    map: &[RegionMapFile],
    fallback: Option<&BTreeMap<String, Vec<String>>>,
) -> Result<RegionPolicy, Bad> {
    let from = match from {
        None => None,
        Some("client_ip") => Some(RegionFrom::ClientIp),
        Some(s) => match s.strip_prefix("header:").filter(|n| is_token(n)) {
            Some(name) => Some(RegionFrom::Header(name.to_ascii_lowercase())),
            None => {
                return Err(bad(
                    &format!("{prefix}.region_from"),
                    format!("`{s}` is not `client_ip` or `header:NAME`"),
                ))
            }
        },
    };
    let mut rules = Vec::with_capacity(map.len());
    for (j, m) in map.iter().enumerate() {
        let cidr =
            parse_cidr(&m.cidr).map_err(|r| bad(&format!("{prefix}.region_map[{j}].cidr"), r))?;
        if m.region.trim().is_empty() {
            return Err(bad(
                &format!("{prefix}.region_map[{j}].region"),
                "must not be empty",
            ));
        }
        rules.push((cidr, m.region.clone()));
    }
    if !rules.is_empty() && from != Some(RegionFrom::ClientIp) {
        return Err(bad(
            &format!("{prefix}.region_map"),
            "is only read with region_from = \"client_ip\"",
        ));
    }
    let fallback = fallback.cloned().unwrap_or_default();
    for (region, list) in &fallback {
        if list.iter().any(|r| r == region) {
            return Err(bad(
                &format!("{prefix}.region_fallback.{region}"),
                "lists the region itself",
            ));
        }
    }
    Ok(RegionPolicy {
        from,
        map: rules,
        fallback,
    })
}

/// Parses `a.b.c.d/len`, `v6/len` or a plain address (a host prefix).
fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not an address prefix such as 10.1.0.0/16"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|&l| l <= max)
            .ok_or_else(|| format!("`{s}` has a prefix length outside 0..={max}"))?,
    };
    Ok(Cidr { addr, len })
}

/// Checks a `tcp` table at `key`; `listener` allows `defer_accept_s`.
pub(crate) fn check_tcp(key: &str, f: &TcpFile, listener: bool) -> Result<TcpOptions, Bad> {
    let secs = |name: &str, v: Option<u64>| -> Result<Option<Duration>, Bad> {
        match v {
            None => Ok(None),
            Some(0) => Err(bad(&format!("{key}.{name}"), "must be at least 1")),
            Some(s) if s > i32::MAX as u64 => {
                Err(bad(&format!("{key}.{name}"), format!("{s} is too large")))
            }
            Some(s) => Ok(Some(Duration::from_secs(s))),
        }
    };
    let keepalive = match &f.keepalive {
        None => None,
        Some(k) => Some(Keepalive {
            idle: secs("keepalive.idle_s", k.idle_s)?,
            interval: secs("keepalive.interval_s", k.interval_s)?,
            count: match k.count {
                None => None,
                Some(c) if (1..=127).contains(&c) => Some(c as u32),
                Some(c) => {
                    return Err(bad(
                        &format!("{key}.keepalive.count"),
                        format!("must be between 1 and 127, got {c}"),
                    ))
                }
            },
        }),
    };
    let buffer = |name: &str, v: Option<u64>| -> Result<Option<usize>, Bad> {
        match v {
            None => Ok(None),
            Some(b) if (1024..=i32::MAX as u64).contains(&b) => Ok(Some(b as usize)),
            Some(b) => Err(bad(
                &format!("{key}.{name}"),
                format!("must be between 1024 and {} bytes, got {b}", i32::MAX),
            )),
        }
    };
    if f.defer_accept_s.is_some() && !listener {
        return Err(bad(
            &format!("{key}.defer_accept_s"),
            "is a listener option ([server] tcp)",
        ));
    }
    let fastopen = match f.fastopen {
        None => None,
        Some(n) if n <= i32::MAX as u64 => Some(n as u32),
        Some(n) => return Err(bad(&format!("{key}.fastopen"), format!("{n} is too large"))),
    };
    let user_timeout = match f.user_timeout_ms {
        None => None,
        // Up to u32: the kernel itself refuses what does not fit its int (a startup error).
        Some(ms) if ms <= u32::MAX as u64 => Some(Duration::from_millis(ms)),
        Some(ms) => {
            return Err(bad(
                &format!("{key}.user_timeout_ms"),
                format!("{ms} is too large"),
            ))
        }
    };
    Ok(TcpOptions {
        keepalive,
        nodelay: f.nodelay,
        send_buffer: buffer("send_buffer", f.send_buffer)?,
        recv_buffer: buffer("recv_buffer", f.recv_buffer)?,
        fastopen,
        defer_accept: secs("defer_accept_s", f.defer_accept_s)?,
        user_timeout,
    })
}

/// Whether `s` is a non-empty HTTP token (a header name).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_KEYS: &str = r#"
[server]
listen = ["127.0.0.1:0"]
tcp = { keepalive = { idle_s = 30, interval_s = 5, count = 4 }, defer_accept_s = 2, fastopen = 8 }
[[upstream]]
name = "api"
max_conns = 10
slow_start_ms = 3000
queue = { max = 5, timeout_ms = 700 }
rate = { requests_per_sec = 20, burst = 5, key = "header:X-User", max_keys = 99 }
region_from = "client_ip"
region_fallback = { "eu-1" = ["us-1"] }
tcp = { nodelay = false, user_timeout_ms = 5000 }
peers = [
  { address = "127.0.0.1:1", region = "eu-1", rate = { requests_per_sec = 5 }, max_conns = 3 },
  { address = "127.0.0.1:2", region = "us-1", timeouts = { connect_ms = 100 },
    pool = { max_requests_per_conn = 7, max_conn_age_ms = 9000 } },
]
[[upstream.region_map]]
cidr = "10.0.0.0/8"
region = "eu-1"
"#;

    #[test]
    fn queue_retry_after_defaults_to_the_timeout_rounded_up() {
        let q = |max: Option<u64>, timeout_ms: Option<u64>, retry_after_s: Option<u64>| {
            let f = QueueFile {
                max,
                timeout_ms,
                retry_after_s,
            };
            check_queue("upstream[0].queue", Some(&f)).map(|c| c.retry_after_s)
        };
        assert_eq!(q(None, None, None).unwrap(), 5);
        assert_eq!(q(None, Some(2001), None).unwrap(), 3);
        assert_eq!(q(Some(0), Some(9000), None).unwrap(), 1, "no queue");
        assert_eq!(q(None, None, Some(30)).unwrap(), 30);
        for wrong in [0, 86_401] {
            let e = q(None, None, Some(wrong)).unwrap_err();
            assert_eq!(e.0, "upstream[0].queue.retry_after_s", "{e:?}");
        }
        assert_eq!(QueueConfig::default().retry_after_s, 5);
    }

    #[test]
    fn every_key_parses_and_survives_get_config() {
        let c = crate::Config::from_toml_str(ALL_KEYS, "t.toml").unwrap();
        let again = crate::Config::from_toml_str(&c.to_toml(), "again.toml").unwrap();
        for c in [&c, &again] {
            let u = &c.upstreams[0];
            assert_eq!(u.queue.max, 5);
            assert_eq!(u.queue.timeout, Duration::from_millis(700));
            assert_eq!(u.queue.retry_after_s, 1, "700 ms rounded up");
            assert!(u.rate.is_none());
            let cr = u.client_rate.as_ref().unwrap();
            assert_eq!(cr.key, ClientKey::Header("x-user".into()));
            assert_eq!((cr.rate.burst, cr.max_keys), (5, 99));
            assert_eq!(u.regions.from, Some(RegionFrom::ClientIp));
            assert_eq!(u.regions.map.len(), 1);
            assert_eq!(u.regions.fallback["eu-1"], ["us-1"]);
            assert_eq!(u.tcp.nodelay, Some(false));
            assert_eq!(u.peers[0].limits.max_conns, Some(3));
            assert_eq!(
                u.peers[1].limits.max_conns,
                Some(10),
                "the upstream's default"
            );
            assert_eq!(u.peers[0].limits.rate.unwrap().burst, 5);
            assert_eq!(
                u.peers[1].limits.slow_start,
                Some(Duration::from_millis(3000))
            );
            assert_eq!(u.peers[1].timeouts.connect, Duration::from_millis(100));
            assert_eq!(u.peers[0].timeouts.connect, u.timeouts.connect);
            assert_eq!(u.peers[1].pool.max_requests_per_conn, Some(7));
            assert_eq!(u.peers[0].pool.max_requests_per_conn, None);
            assert_eq!(c.server.tcp.defer_accept, Some(Duration::from_secs(2)));
            assert_eq!(c.server.tcp.keepalive.unwrap().count, Some(4));
        }
    }

    #[test]
    fn bad_values_name_their_keys() {
        let bad = |from: &str, to: &str, key: &str| {
            let text = ALL_KEYS.replacen(from, to, 1);
            let e = crate::Config::from_toml_str(&text, "t.toml").unwrap_err();
            assert_eq!(e.key, key, "{e}");
        };
        bad("max_conns = 10", "max_conns = 0", "upstream[0].max_conns");
        bad(
            "max_conns = 3",
            "max_conns = 0",
            "upstream[0].peers[0].max_conns",
        );
        bad(
            "timeout_ms = 700",
            "timeout_ms = 0",
            "upstream[0].queue.timeout_ms",
        );
        bad(
            "requests_per_sec = 5 }",
            "requests_per_sec = -1 }",
            "upstream[0].peers[0].rate.requests_per_sec",
        );
        bad(
            "requests_per_sec = 5 }",
            "requests_per_sec = 5, key = \"client_ip\" }",
            "upstream[0].peers[0].rate.key",
        );
        bad("\"header:X-User\"", "\"cookie:x\"", "upstream[0].rate.key");
        bad(
            "region_from = \"client_ip\"",
            "region_from = \"geoip\"",
            "upstream[0].region_from",
        );
        bad(
            "cidr = \"10.0.0.0/8\"",
            "cidr = \"10.0.0.0/40\"",
            "upstream[0].region_map[0].cidr",
        );
        bad(
            "user_timeout_ms = 5000 }",
            "user_timeout_ms = 5000, defer_accept_s = 1 }",
            "upstream[0].tcp.defer_accept_s",
        );
        bad("count = 4", "count = 500", "server.tcp.keepalive.count");
        bad(
            "timeouts = { connect_ms = 100 }",
            "timeouts = { client_idle_ms = 100 }",
            "upstream[0].peers[1].timeouts.client_idle_ms",
        );
        bad(
            "max_requests_per_conn = 7",
            "max_requests_per_conn = 0",
            "upstream[0].peers[1].pool.max_requests_per_conn",
        );
        bad(
            "slow_start_ms = 3000",
            "slow_start_ms = 0",
            "upstream[0].slow_start_ms",
        );
    }

    #[test]
    fn cidr_contains() {
        let c = parse_cidr("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.1".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        let all = parse_cidr("0.0.0.0/0").unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let host = parse_cidr("127.0.0.1").unwrap();
        assert!(host.contains("127.0.0.1".parse().unwrap()));
        assert!(!host.contains("127.0.0.2".parse().unwrap()));
        let v6 = parse_cidr("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("nonsense/8").is_err());
    }

    #[test]
    fn rate_defaults_and_errors() {
        let f = RateFile {
            requests_per_sec: Some(2.5),
            ..RateFile::default()
        };
        assert_eq!(check_rate("r", &f).unwrap().burst, 3);
        let f = RateFile {
            requests_per_sec: Some(0.0),
            ..RateFile::default()
        };
        assert_eq!(check_rate("r", &f).unwrap_err().0, "r.requests_per_sec");
        let f = RateFile {
            requests_per_sec: Some(5.0),
            key: Some("cookie:x".into()),
            ..RateFile::default()
        };
        assert_eq!(check_upstream_rate("r", &f).unwrap_err().0, "r.key");
        assert_eq!(check_peer_rate("r", &f).unwrap_err().0, "r.key");
    }
}

//! File structs → checked runtime `Config`.
//!
//! This is the one place that applies defaults, checks ranges, parses addresses and CPU
//! sets, resolves peer host names (once, at load time, with the system resolver) and turns
//! route upstream names into indices. Every failure is a [`ConfigError`] naming the source,
//! the full key path (`upstream[1].peers[0].address`) and the reason; the first problem
//! found is reported.
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use super::cpus::{self, format_cpu_list, parse_cpu_list, MAX_CPUS};
use super::failover;
use super::file::{
    ConfigFile, DriverFile, LimitsFile, PeerFile, PoolFile, RouteFile, ServerFile, TimeoutsFile,
    UpstreamFile, UringTaskrunFile, WorkersFile,
};
use super::{
    Config, ConfigError, Driver, GroupId, Limits, PeerConfig, PoolConfig, RouteConfig,
    ServerConfig, Timeouts, UpgradeAllow, UpstreamConfig, UringTaskrun, Workers,
};

/// Default `server.listen`.
const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// The largest peer weight.
pub(crate) const MAX_WEIGHT: u32 = 65535;

/// Default `server.admin`.
const DEFAULT_ADMIN: &str = "127.0.0.1:9900";
/// Default `server.shutdown_timeout_ms`.
const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 10_000;
/// Default `server.backlog`.
const DEFAULT_BACKLOG: i32 = 4096;
/// Default `server.max_connections` (per shard).
const DEFAULT_MAX_CONNECTIONS: usize = 65_536;
/// Default `server.uring_entries`.
const DEFAULT_URING_ENTRIES: u32 = 1024;
/// Allowed `server.uring_entries`.
const URING_ENTRIES_RANGE: std::ops::RangeInclusive<u64> = 256..=32_768;
/// Allowed `limits.max_header_bytes`: 1 KiB ..= 1 MiB.
const MAX_HEADER_BYTES_RANGE: std::ops::RangeInclusive<u64> = 1024..=1024 * 1024;

/// HostCpus is what validation needs to know about the machine's CPUs: the process's
/// allowed set and where NUMA node cpulists live. A parameter so tests can fake both.
#[derive(Debug, Clone)]
pub(crate) struct HostCpus {
    /// The CPUs this process may run on, ascending.
    pub allowed: Vec<usize>,
    /// The sysfs directory holding `node<N>/cpulist`.
    pub node_dir: PathBuf,
}

impl HostCpus {
    /// The running host: sched_getaffinity and `/sys/devices/system/node`.
    pub fn current() -> HostCpus {
        HostCpus {
            allowed: cpus::allowed_cpus(),
            node_dir: PathBuf::from("/sys/devices/system/node"),
        }
    }
}

/// Converts and checks a parsed file against the running host. `source` names the file in
/// errors.
pub(crate) fn validate(file: ConfigFile, source: &str) -> Result<Config, ConfigError> {
    validate_on(file, source, &HostCpus::current())
}

/// [`validate`] against a given host's CPUs.
pub(crate) fn validate_on(
    file: ConfigFile,
    source: &str,
    host: &HostCpus,
) -> Result<Config, ConfigError> {
    let cx = Cx { source };
    let server = server(&cx, &file.server, host)?;
    let timeouts = timeouts(&cx, &file.timeouts, Timeouts::default(), "timeouts")?;
    let limits = limits(&cx, &file.limits)?;
    let log = super::log::log(&file.log).map_err(|(k, r)| cx.err(k, r))?;
    let upstreams = upstreams(&cx, &file.upstream, timeouts)?;
    let routes = file
        .route
        .iter()
        .enumerate()
        .map(|(i, r)| route(&cx, i, r, &upstreams))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Config {
        source: source.to_string(),
        server,
        timeouts,
        limits,
        log,
        upstreams,
        routes,
        file: std::sync::Arc::new(file),
    })
}

/// Cx carries what every error needs: the source name.
struct Cx<'a> {
    /// The file (or `<string>`) being validated.
    source: &'a str,
}

impl Cx<'_> {
    /// A [`ConfigError`] for `key`.
    fn err(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.source.to_string(),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Checks `[server]`.
fn server(cx: &Cx<'_>, f: &ServerFile, host: &HostCpus) -> Result<ServerConfig, ConfigError> {
    let listen = listen(cx, f.listen.as_deref())?;
    let tls = match f.listen.as_deref() {
        Some(list) => super::tls::listeners(list, &listen).map_err(|(k, r)| cx.err(k, r))?,
        None => Vec::new(),
    };
    let h2_off: Vec<SocketAddr> = match f.listen.as_deref() {
        Some(list) => list
            .iter()
            .zip(&listen)
            .filter(|(entry, _)| !entry.h2())
            .map(|(_, addr)| *addr)
            .collect(),
        None => Vec::new(),
    };
    let h2 = super::h2::h2(f.h2.as_ref()).map_err(|(k, r)| cx.err(k, r))?;
    let mut http1_off = Vec::new();
    for (i, (entry, addr)) in f
        .listen
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .zip(&listen)
        .enumerate()
    {
        if entry.http1() {
            continue;
        }
        if !entry.h2() {
            return Err(cx.err(
                format!("server.listen[{i}]"),
                "`h2 = false` and `http1 = false` leave the listener nothing to serve",
            ));
        }
        if entry.tls().is_none() && !h2.h2c {
            return Err(cx.err(
                format!("server.listen[{i}].http1"),
                "a cleartext listener without HTTP/1.1 serves prior-knowledge h2c only, and \
                 `[server] h2.h2c` is false",
            ));
        }
        http1_off.push(*addr);
    }

    let workers = match f.workers.unwrap_or(WorkersFile::Auto) {
        WorkersFile::Auto => Workers::Auto,
        WorkersFile::Count(n) if n >= 1 && n <= MAX_CPUS as i64 => Workers::Count(n as usize),
        WorkersFile::Count(n) => {
            return Err(cx.err(
                "server.workers",
                format!("must be \"auto\" or an integer from 1 to {MAX_CPUS}, got {n}"),
            ))
        }
    };

    let cpus = match (&f.cpus, f.numa_node) {
        (Some(_), Some(_)) => {
            return Err(cx.err(
                "server.numa_node",
                "`cpus` and `numa_node` are mutually exclusive; set only one of them",
            ))
        }
        (Some(list), None) => Some(cpu_pin_set(cx, list, host)?),
        (None, Some(node)) => Some(numa_pin_set(cx, node, host)?),
        (None, None) => None,
    };

    let admin = match f.admin.as_deref().unwrap_or(DEFAULT_ADMIN) {
        "" => None,
        text => {
            let addr = text.parse::<SocketAddr>().map_err(|_| {
                cx.err(
                    "server.admin",
                    format!(
                        "`{text}` is not an `ip:port` socket address \
                         (IPv6 as `[::1]:9900`; \"\" disables the admin endpoint)"
                    ),
                )
            })?;
            if let Some(i) = listen.iter().position(|l| same_port(*l, addr)) {
                return Err(cx.err(
                    "server.admin",
                    format!(
                        "`{addr}` collides with listen address server.listen[{i}] (`{}`)",
                        listen[i]
                    ),
                ));
            }
            Some(addr)
        }
    };
    let admin_token = match f.admin_token.as_deref() {
        None => None,
        Some(t)
            if t.trim().is_empty() || t.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            return Err(cx.err(
                "server.admin_token",
                "must be non-empty, without spaces or control characters",
            ))
        }
        Some(t) => Some(t.to_string()),
    };
    if let (Some(addr), None) = (admin, &admin_token) {
        if !addr.ip().is_loopback() {
            return Err(cx.err(
                "server.admin",
                format!(
                    "`{addr}` is not a loopback address: set server.admin_token too, so that \
                     only holders of the token can change the running proxy"
                ),
            ));
        }
    }

    let backlog = match f.backlog {
        None => DEFAULT_BACKLOG,
        Some(n) => match i32::try_from(n) {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err(cx.err(
                    "server.backlog",
                    format!("must be between 1 and {}, got {n}", i32::MAX),
                ))
            }
        },
    };

    let driver = match f.driver.unwrap_or(DriverFile::Auto) {
        DriverFile::Auto => Driver::Auto,
        DriverFile::IoUring => Driver::IoUring,
        DriverFile::Epoll => Driver::Epoll,
    };

    let max_connections = match f.max_connections {
        None => DEFAULT_MAX_CONNECTIONS,
        Some(n) => match usize::try_from(n) {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err(cx.err(
                    "server.max_connections",
                    format!("must be at least 1, got {n}"),
                ))
            }
        },
    };

    let uring_entries = match f.uring_entries {
        None => DEFAULT_URING_ENTRIES,
        Some(n) if URING_ENTRIES_RANGE.contains(&n) => n as u32,
        Some(n) => {
            return Err(cx.err(
                "server.uring_entries",
                format!(
                    "must be between {} and {}, got {n}",
                    URING_ENTRIES_RANGE.start(),
                    URING_ENTRIES_RANGE.end()
                ),
            ))
        }
    };

    Ok(ServerConfig {
        listen,
        tls,
        h2_off,
        http1_off,
        workers,
        cpus,
        admin,
        admin_token,
        shutdown_timeout: Duration::from_millis(
            f.shutdown_timeout_ms.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT_MS),
        ),
        backlog,
        driver,
        max_connections,
        uring_entries,
        observation_queue: super::health::observation_queue(f.observation_queue)
            .map_err(|(k, r)| cx.err(k, r))?,
        h2,
        splice: f.splice.unwrap_or(false),
        uring_taskrun: match f.uring_taskrun {
            None | Some(UringTaskrunFile::Defer) => UringTaskrun::Defer,
            Some(UringTaskrunFile::Coop) => UringTaskrun::Coop,
            Some(UringTaskrunFile::Interrupt) => UringTaskrun::Interrupt,
        },
        tcp: match &f.tcp {
            None => Default::default(),
            Some(t) => {
                super::protect::check_tcp("server.tcp", t, true).map_err(|(k, r)| cx.err(k, r))?
            }
        },
    })
}

/// Checks `server.listen`: at least one `ip:port`, no duplicates. Port 0 is allowed (tests).
fn listen(
    cx: &Cx<'_>,
    list: Option<&[super::tls::ListenFile]>,
) -> Result<Vec<SocketAddr>, ConfigError> {
    let Some(list) = list else {
        let addr = DEFAULT_LISTEN
            .parse()
            .expect("DEFAULT_LISTEN is a valid socket address");
        return Ok(vec![addr]);
    };
    if list.is_empty() {
        return Err(cx.err(
            "server.listen",
            "must list at least one address (the default is [\"0.0.0.0:8080\"])",
        ));
    }
    let mut out: Vec<SocketAddr> = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let text = entry.address();
        let key = match entry {
            super::tls::ListenFile::Address(_) => format!("server.listen[{i}]"),
            super::tls::ListenFile::Table(_) => format!("server.listen[{i}].address"),
        };
        let addr = text.parse::<SocketAddr>().map_err(|_| {
            cx.err(
                &key,
                format!("`{text}` is not an `ip:port` socket address (IPv6 as `[::]:8080`)"),
            )
        })?;
        if let Some(j) = out.iter().position(|a| *a == addr) {
            return Err(cx.err(
                key,
                format!("`{addr}` is listed twice (also server.listen[{j}])"),
            ));
        }
        out.push(addr);
    }
    Ok(out)
}

/// Whether binding `a` and `b` would clash: same non-zero port and the same IP, or either
/// is a wildcard (`0.0.0.0`, `[::]` — which on Linux also covers IPv4 by default).
fn same_port(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Checks `server.cpus`: a valid cpulist inside the process's allowed set.
fn cpu_pin_set(cx: &Cx<'_>, list: &str, host: &HostCpus) -> Result<Vec<usize>, ConfigError> {
    let cpus = parse_cpu_list(list).map_err(|e| cx.err("server.cpus", e.to_string()))?;
    if let Some(cpu) = cpus.iter().find(|c| !host.allowed.contains(c)) {
        return Err(cx.err(
            "server.cpus",
            format!(
                "cpu {cpu} is not in this process's allowed set {}",
                format_cpu_list(&host.allowed)
            ),
        ));
    }
    Ok(cpus)
}

/// Checks `server.numa_node`: the node's CPUs that the process may use (at least one).
fn numa_pin_set(cx: &Cx<'_>, node: u64, host: &HostCpus) -> Result<Vec<usize>, ConfigError> {
    let key = "server.numa_node";
    let node = usize::try_from(node)
        .map_err(|_| cx.err(key, format!("NUMA node {node} does not exist")))?;
    let node_cpus =
        cpus::numa_node_cpus_in(&host.node_dir, node).map_err(|reason| cx.err(key, reason))?;
    let usable: Vec<usize> = node_cpus
        .iter()
        .copied()
        .filter(|c| host.allowed.contains(c))
        .collect();
    if usable.is_empty() {
        return Err(cx.err(
            key,
            format!(
                "NUMA node {node} has cpus {}, none of them in this process's allowed set {}",
                format_cpu_list(&node_cpus),
                format_cpu_list(&host.allowed)
            ),
        ));
    }
    Ok(usable)
}

/// Applies the `*_ms` keys of `f` over `base`; every given value must be > 0. `prefix` is
/// the table's key path (`timeouts`, `upstream[1].timeouts`).
fn timeouts(
    cx: &Cx<'_>,
    f: &TimeoutsFile,
    base: Timeouts,
    prefix: &str,
) -> Result<Timeouts, ConfigError> {
    let pick = |name: &str, value: Option<u64>, base: Duration| match value {
        None => Ok(base),
        Some(0) => Err(cx.err(
            format!("{prefix}.{name}"),
            "must be greater than 0 (milliseconds)",
        )),
        Some(ms) => Ok(Duration::from_millis(ms)),
    };
    Ok(Timeouts {
        connect: pick("connect_ms", f.connect_ms, base.connect)?,
        request_header: pick(
            "request_header_ms",
            f.request_header_ms,
            base.request_header,
        )?,
        upstream_read: pick("upstream_read_ms", f.upstream_read_ms, base.upstream_read)?,
        upstream_write: pick(
            "upstream_write_ms",
            f.upstream_write_ms,
            base.upstream_write,
        )?,
        client_idle: pick("client_idle_ms", f.client_idle_ms, base.client_idle)?,
        expect_continue: pick(
            "expect_continue_ms",
            f.expect_continue_ms,
            base.expect_continue,
        )?,
        tunnel_idle: pick("tunnel_idle_ms", f.tunnel_idle_ms, base.tunnel_idle)?,
        // 0 is meaningful here (park at once); only the global table may set it.
        client_park: match f.client_park_ms {
            None => base.client_park,
            Some(_) if prefix != "timeouts" => {
                return Err(cx.err(
                    format!("{prefix}.client_park_ms"),
                    "is a client-side setting: set it in [timeouts] only",
                ))
            }
            Some(ms) => Duration::from_millis(ms),
        },
    })
}

/// Checks `[limits]`.
fn limits(cx: &Cx<'_>, f: &LimitsFile) -> Result<Limits, ConfigError> {
    let defaults = Limits::default();
    let max_header_bytes = match f.max_header_bytes {
        None => defaults.max_header_bytes,
        Some(n) if MAX_HEADER_BYTES_RANGE.contains(&n) => n as usize,
        Some(n) => {
            return Err(cx.err(
                "limits.max_header_bytes",
                format!(
                    "must be between {} and {} (1 MiB), got {n}",
                    MAX_HEADER_BYTES_RANGE.start(),
                    MAX_HEADER_BYTES_RANGE.end()
                ),
            ))
        }
    };
    let max_request_line_bytes = match f.max_request_line_bytes {
        None if defaults.max_request_line_bytes <= max_header_bytes => {
            defaults.max_request_line_bytes
        }
        // A small max_header_bytes caps the default request line too.
        None => max_header_bytes,
        Some(n) if n >= 1 && n <= max_header_bytes as u64 => n as usize,
        Some(n) => {
            return Err(cx.err(
                "limits.max_request_line_bytes",
                format!("must be between 1 and max_header_bytes ({max_header_bytes}), got {n}"),
            ))
        }
    };
    let at_least = |name: &str, value: Option<u64>, min: u64, default: u64| match value {
        None => Ok(default),
        Some(n) if n >= min => Ok(n),
        Some(n) => Err(cx.err(
            format!("limits.{name}"),
            format!("must be at least {min}, got {n}"),
        )),
    };
    let ms = |n: u64| Duration::from_millis(n);
    let lingering_time = at_least(
        "lingering_time_ms",
        f.lingering_time_ms,
        1,
        defaults.lingering_time.as_millis() as u64,
    )?;
    let lingering_timeout = at_least(
        "lingering_timeout_ms",
        f.lingering_timeout_ms,
        1,
        defaults.lingering_timeout.as_millis() as u64,
    )?;
    Ok(Limits {
        max_header_bytes,
        max_request_line_bytes,
        max_body_bytes: f.max_body_bytes,
        max_interim_responses: at_least(
            "max_interim_responses",
            f.max_interim_responses,
            1,
            u64::from(defaults.max_interim_responses),
        )?
        .min(u64::from(u32::MAX)) as u32,
        max_interim_bytes: at_least(
            "max_interim_bytes",
            f.max_interim_bytes,
            64,
            defaults.max_interim_bytes as u64,
        )?
        .min(usize::MAX as u64) as usize,
        lingering_time: ms(lingering_time),
        lingering_timeout: ms(lingering_timeout),
        lingering_max_bytes: at_least(
            "lingering_max_bytes",
            f.lingering_max_bytes,
            0,
            defaults.lingering_max_bytes,
        )?,
    })
}

/// Checks every `[[upstream]]`: at least one, unique names.
fn upstreams(
    cx: &Cx<'_>,
    list: &[UpstreamFile],
    global: Timeouts,
) -> Result<Vec<UpstreamConfig>, ConfigError> {
    if list.is_empty() {
        return Err(cx.err(
            "upstream",
            "at least one [[upstream]] with peers is required",
        ));
    }
    let mut out: Vec<UpstreamConfig> = Vec::with_capacity(list.len());
    for (i, f) in list.iter().enumerate() {
        if let Some(j) = out.iter().position(|u| u.name == f.name) {
            return Err(cx.err(
                format!("upstream[{i}].name"),
                format!("`{}` is already the name of upstream[{j}]", f.name),
            ));
        }
        out.push(upstream(cx, i, f, global)?);
    }
    Ok(out)
}

/// Checks one `[[upstream]]` (index `i`).
fn upstream(
    cx: &Cx<'_>,
    i: usize,
    f: &UpstreamFile,
    global: Timeouts,
) -> Result<UpstreamConfig, ConfigError> {
    let key = |rest: &str| format!("upstream[{i}].{rest}");

    if f.name.trim().is_empty() {
        return Err(cx.err(key("name"), "must not be empty"));
    }
    if f.name.trim() != f.name {
        return Err(cx.err(
            key("name"),
            format!("`{}` has leading or trailing whitespace", f.name),
        ));
    }

    // `algorithm = "transparent"` has no peers to balance: the selector machinery runs with
    // round robin over each request's one resolved address (see `proxy/transparent.rs`).
    let is_transparent = f.algorithm.as_deref() == Some("transparent");
    let transparent = if is_transparent {
        if !f.peers.is_empty() || f.discovery.is_some() {
            let k = if f.peers.is_empty() {
                "discovery"
            } else {
                "peers"
            };
            return Err(cx.err(
                key(k),
                "algorithm = \"transparent\" forwards to the host each request names: \
                 it takes no peers and no discovery",
            ));
        }
        Some(
            super::discovery::transparent(i, f.allow.as_deref(), f.resolvers.as_deref())
                .map_err(|(key, reason)| cx.err(key, reason))?,
        )
    } else {
        for (k, set) in [
            ("allow", f.allow.is_some()),
            ("resolvers", f.resolvers.is_some()),
        ] {
            if set {
                return Err(cx.err(
                    key(k),
                    "is a key of algorithm = \"transparent\" only (discovery has its own \
                     `discovery = { resolvers = [...] }`)",
                ));
            }
        }
        None
    };
    let balance = if is_transparent {
        let mut plain = f.clone();
        plain.algorithm = None;
        super::balance::check(i, &plain)
    } else {
        super::balance::check(i, f)
    }
    .map_err(|(key, reason)| cx.err(key, reason))?;

    let discovery = super::discovery::check(i, f.discovery.as_ref())
        .map_err(|(key, reason)| cx.err(key, reason))?;
    if f.peers.is_empty() && discovery.is_none() && transparent.is_none() {
        return Err(cx.err(
            key("peers"),
            "must list at least one peer (or find them with `discovery = { … }`)",
        ));
    }
    let protocol =
        super::protocol::protocol(i, f.protocol.as_deref()).map_err(|(k, r)| cx.err(k, r))?;
    let mut tls_configs = Vec::new();
    // Checked for every upstream (the same errors as a listed peer's), used by the peers the
    // config does not name.
    let tls_template = match &f.tls {
        Some(t) => super::tls::upstream_tls_template(&key("tls"), t, protocol, &mut tls_configs)
            .map_err(|(k, r)| cx.err(k, r))?,
        None => None,
    };
    let unnamed_peers = is_transparent || f.discovery.is_some();
    if unnamed_peers && protocol.needs_tls() && tls_template.is_none() {
        return Err(cx.err(
            key("protocol"),
            format!(
                "\"{}\" is HTTP/2 chosen by ALPN and needs TLS to every peer; {} peers get \
                 the upstream's `tls = {{ … }}`, and it has none; use \"h2c\" for HTTP/2 \
                 without TLS",
                protocol.name(),
                if is_transparent {
                    "transparent"
                } else {
                    "discovered"
                }
            ),
        ));
    }
    if unnamed_peers && protocol == super::UpstreamProtocol::H2c && tls_template.is_some() {
        return Err(cx.err(
            key("protocol"),
            "\"h2c\" is HTTP/2 without TLS, and the upstream has `tls`; use \"h2\" (HTTP/2 \
             over TLS) or \"auto\" (what the peer picks by ALPN)",
        ));
    }
    let mut peers: Vec<PeerConfig> = Vec::with_capacity(f.peers.len());
    for (j, p) in f.peers.iter().enumerate() {
        let mut peer = peer(cx, &format!("upstream[{i}].peers[{j}]"), p)?;
        let (tls_key, tls) = match (&p.tls, &f.tls) {
            (Some(t), _) => (format!("upstream[{i}].peers[{j}].tls"), Some(t)),
            (None, Some(t)) => (format!("upstream[{i}].tls"), Some(t)),
            (None, None) => (String::new(), None),
        };
        if let Some(t) = tls {
            peer.tls =
                super::tls::upstream_tls(&tls_key, t, &p.address, protocol, &mut tls_configs)
                    .map_err(|(k, r)| cx.err(k, r))?;
        }
        if protocol.needs_tls() && peer.tls.is_none() {
            return Err(cx.err(
                key("protocol"),
                format!(
                    "\"{}\" is HTTP/2 chosen by ALPN and needs TLS to every peer (`tls = {{ \
                     enabled = true, … }}`; peers[{j}] has none); use \"h2c\" for HTTP/2 \
                     without TLS",
                    protocol.name()
                ),
            ));
        }
        if protocol == super::UpstreamProtocol::H2c && peer.tls.is_some() {
            return Err(cx.err(
                key("protocol"),
                format!(
                    "\"h2c\" is HTTP/2 without TLS, and peers[{j}] has `tls`; use \"h2\" \
                     (HTTP/2 over TLS) or \"auto\" (what the peer picks by ALPN)"
                ),
            ));
        }
        if let Some(k) = peers
            .iter()
            .position(|q| q.address == peer.address || q.addr == peer.addr)
        {
            return Err(cx.err(
                key(&format!("peers[{j}].address")),
                format!(
                    "`{}` ({}) is the same peer as upstream[{i}].peers[{k}] (`{}`)",
                    peer.address, peer.addr, peers[k].address
                ),
            ));
        }
        peers.push(peer);
    }
    if !peers.is_empty() && peers.iter().all(|p| p.backup) {
        return Err(cx.err(
            key("peers"),
            "needs at least one peer that is not `backup = true` \
             (backups only take traffic when no primary is eligible)",
        ));
    }

    let timeouts = match &f.timeouts {
        None => global,
        Some(t) => timeouts(cx, t, global, &key("timeouts"))?,
    };
    let pool = pool(cx, &key("pool"), f.pool.as_ref(), PoolConfig::default())?;
    let p = protect_upstream(cx, i, f)?;
    peer_overrides(cx, i, f, &mut peers, timeouts, pool)?;
    let retry = failover::retry(&key("retry"), f.retry.as_ref()).map_err(|(k, r)| cx.err(k, r))?;
    let circuit_breaker =
        failover::circuit_breaker(&key("circuit_breaker"), f.circuit_breaker.as_ref())
            .map_err(|(k, r)| cx.err(k, r))?;
    let keys = super::health::HealthKeys {
        health: f.health.as_ref(),
        passive: f.passive.as_ref(),
        local_region: f.local_region.as_ref(),
        when_all_down: f.when_all_down.as_deref(),
    };
    let h = super::health::upstream_health(i, keys, &peers).map_err(|(k, r)| cx.err(k, r))?;

    Ok(UpstreamConfig {
        name: f.name.clone(),
        algorithm: balance.algorithm,
        hash_key: balance.hash_key,
        balance: balance.params,
        peers,
        timeouts,
        pool,
        retry,
        circuit_breaker,
        health: h.health,
        passive: h.passive,
        local_region: h.local_region,
        when_all_down: h.when_all_down,
        upgrade: upgrade(cx, i, f.upgrade.as_ref())?,
        discovery,
        transparent,
        tls: tls_template,
        peer_limits: super::PeerLimits {
            max_conns: super::protect::check_max_conns(&key("max_conns"), f.max_conns)
                .map_err(|(k, r)| cx.err(k, r))?,
            rate: None,
            slow_start: super::protect::check_slow_start(&key("slow_start_ms"), f.slow_start_ms)
                .map_err(|(k, r)| cx.err(k, r))?,
        },
        queue: p.queue,
        rate: p.rate,
        client_rate: p.client_rate,
        regions: p.regions,
        tcp: p.tcp,
        protocol,
    })
}

/// An upstream's protection keys, checked (see `protect.rs`).
struct UpstreamProtect {
    queue: super::QueueConfig,
    rate: Option<super::RateConfig>,
    client_rate: Option<super::ClientRate>,
    regions: super::RegionPolicy,
    tcp: super::TcpOptions,
}

/// Checks an upstream's `queue`, `rate`, region and `tcp` keys.
fn protect_upstream(
    cx: &Cx<'_>,
    i: usize,
    f: &UpstreamFile,
) -> Result<UpstreamProtect, ConfigError> {
    use super::protect;
    let e = |(k, r): protect::Bad| cx.err(k, r);
    let key = |rest: &str| format!("upstream[{i}].{rest}");
    let (rate, client_rate) = match &f.rate {
        None => (None, None),
        Some(r) => protect::check_upstream_rate(&key("rate"), r).map_err(e)?,
    };
    Ok(UpstreamProtect {
        queue: protect::check_queue(&key("queue"), f.queue.as_ref()).map_err(e)?,
        rate,
        client_rate,
        regions: protect::check_regions(
            &format!("upstream[{i}]"),
            f.region_from.as_deref(),
            &f.region_map,
            f.region_fallback.as_ref(),
        )
        .map_err(e)?,
        tcp: match &f.tcp {
            None => Default::default(),
            Some(t) => protect::check_tcp(&key("tcp"), t, false).map_err(e)?,
        },
    })
}

/// Applies to every peer its protection keys (the upstream's as defaults) and its
/// `timeouts`/`pool` overrides over the upstream's resolved ones.
fn peer_overrides(
    cx: &Cx<'_>,
    i: usize,
    f: &UpstreamFile,
    peers: &mut [PeerConfig],
    timeouts: Timeouts,
    pool_cfg: PoolConfig,
) -> Result<(), ConfigError> {
    use super::protect;
    let e = |(k, r): protect::Bad| cx.err(k, r);
    let up_max =
        protect::check_max_conns(&format!("upstream[{i}].max_conns"), f.max_conns).map_err(e)?;
    let up_slow =
        protect::check_slow_start(&format!("upstream[{i}].slow_start_ms"), f.slow_start_ms)
            .map_err(e)?;
    for (j, (peer, pf)) in peers.iter_mut().zip(&f.peers).enumerate() {
        let key = |rest: &str| format!("upstream[{i}].peers[{j}].{rest}");
        peer.limits = super::PeerLimits {
            max_conns: protect::check_max_conns(&key("max_conns"), pf.max_conns)
                .map_err(e)?
                .or(up_max),
            rate: match &pf.rate {
                None => None,
                Some(r) => Some(protect::check_peer_rate(&key("rate"), r).map_err(e)?),
            },
            slow_start: protect::check_slow_start(&key("slow_start_ms"), pf.slow_start_ms)
                .map_err(e)?
                .or(up_slow),
        };
        peer.timeouts = match &pf.timeouts {
            None => timeouts,
            Some(t) => {
                for (name, set) in [
                    ("request_header_ms", t.request_header_ms.is_some()),
                    ("client_idle_ms", t.client_idle_ms.is_some()),
                    ("expect_continue_ms", t.expect_continue_ms.is_some()),
                    ("tunnel_idle_ms", t.tunnel_idle_ms.is_some()),
                ] {
                    if set {
                        return Err(cx.err(
                            key(&format!("timeouts.{name}")),
                            "is not a per-peer timeout (connect_ms, upstream_read_ms and \
                             upstream_write_ms are)",
                        ));
                    }
                }
                self::timeouts(cx, t, timeouts, &key("timeouts"))?
            }
        };
        peer.pool = match &pf.pool {
            None => pool_cfg,
            Some(p) => pool(cx, &key("pool"), Some(p), pool_cfg)?,
        };
    }
    Ok(())
}

/// Checks an upstream's `upgrade = { allow = [...] }`: each entry a protocol token (RFC 9110
/// §5.6.2), or `"*"` alone for any.
fn upgrade(
    cx: &Cx<'_>,
    i: usize,
    f: Option<&super::file::UpgradeFile>,
) -> Result<UpgradeAllow, ConfigError> {
    let Some(list) = f.and_then(|f| f.allow.as_ref()) else {
        return Ok(UpgradeAllow::default());
    };
    if list.iter().any(|t| t == "*") {
        if list.len() > 1 {
            return Err(cx.err(
                format!("upstream[{i}].upgrade.allow"),
                "`*` allows every protocol and cannot be combined with others",
            ));
        }
        return Ok(UpgradeAllow::Any);
    }
    let mut tokens = Vec::with_capacity(list.len());
    for (j, t) in list.iter().enumerate() {
        let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if t.is_empty() || !t.bytes().all(tchar) {
            return Err(cx.err(
                format!("upstream[{i}].upgrade.allow[{j}]"),
                format!("`{t}` is not a protocol name (a token such as `websocket`)"),
            ));
        }
        tokens.push(t.to_ascii_lowercase());
    }
    Ok(UpgradeAllow::Tokens(tokens))
}

/// Checks one peer table; `key` is its path (`upstream[0].peers[2]`).
fn peer(cx: &Cx<'_>, key: &str, f: &PeerFile) -> Result<PeerConfig, ConfigError> {
    let addr = resolve(&f.address).map_err(|reason| cx.err(format!("{key}.address"), reason))?;
    let weight = f.weight.unwrap_or(1);
    if weight > MAX_WEIGHT {
        return Err(cx.err(
            format!("{key}.weight"),
            format!("must be between 0 and {MAX_WEIGHT}, got {weight}"),
        ));
    }
    if let Some(region) = &f.region {
        if region.trim().is_empty() {
            return Err(cx.err(
                format!("{key}.region"),
                "must not be empty (leave it out instead)",
            ));
        }
    }
    Ok(PeerConfig {
        address: f.address.clone(),
        addr,
        weight,
        backup: f.backup.unwrap_or(false),
        region: f.region.clone(),
        drain: f.drain.unwrap_or(false),
        // Filled in by `peer_overrides` once the upstream's own settings are known.
        limits: Default::default(),
        timeouts: Timeouts::default(),
        pool: PoolConfig::default(),
        tls: None,
    })
}

/// Resolves a peer address: `ip:port` directly, `host:port` with the system resolver (first
/// address). The error is the reason text.
fn resolve(address: &str) -> Result<SocketAddr, String> {
    let addr = match address.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => {
            if address.parse::<IpAddr>().is_ok()
                || address
                    .strip_prefix('[')
                    .and_then(|a| a.strip_suffix(']'))
                    .is_some_and(|a| a.parse::<IpAddr>().is_ok())
            {
                return Err(format!(
                    "`{address}` has no port (write `ip:port`, IPv6 as `[::1]:8080`)"
                ));
            }
            let Some((host, port)) = address.rsplit_once(':') else {
                return Err(format!("`{address}` has no port (write `host:port`)"));
            };
            if host.is_empty() {
                return Err(format!("`{address}` has no host (write `host:port`)"));
            }
            if host.contains(|c: char| c.is_whitespace() || c == ':' || c == '/') {
                return Err(format!(
                    "`{address}` is not an `ip:port` or `host:port` address"
                ));
            }
            let port: u16 = port
                .parse()
                .map_err(|_| format!("`{address}` has an invalid port `{port}`"))?;
            let mut addrs = (host, port)
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve `{host}`: {e}"))?;
            addrs
                .next()
                .ok_or_else(|| format!("cannot resolve `{host}`: no addresses"))?
        }
    };
    if addr.port() == 0 {
        return Err(format!("`{address}` has port 0"));
    }
    Ok(addr)
}

/// Checks a `pool = { … }` at `key` over `defaults` (the built-in ones for an upstream, the
/// upstream's for a peer).
fn pool(
    cx: &Cx<'_>,
    key: &str,
    f: Option<&PoolFile>,
    defaults: PoolConfig,
) -> Result<PoolConfig, ConfigError> {
    let Some(f) = f else {
        return Ok(defaults);
    };
    let max_idle_per_peer = match f.max_idle_per_peer {
        None => defaults.max_idle_per_peer,
        Some(n) => usize::try_from(n).map_err(|_| {
            cx.err(
                format!("{key}.max_idle_per_peer"),
                format!("{n} is too large"),
            )
        })?,
    };
    let idle_timeout = match f.idle_timeout_ms {
        None => defaults.idle_timeout,
        Some(0) => return Err(cx.err(
            format!("{key}.idle_timeout_ms"),
            "must be greater than 0 (milliseconds); use max_idle_per_peer = 0 to disable pooling",
        )),
        Some(ms) => Duration::from_millis(ms),
    };
    let max_requests_per_conn = match f.max_requests_per_conn {
        None => defaults.max_requests_per_conn,
        Some(0) => {
            return Err(cx.err(
                format!("{key}.max_requests_per_conn"),
                "must be at least 1 (leave it out for no limit)",
            ))
        }
        Some(n) => Some(n),
    };
    let max_conn_age = match f.max_conn_age_ms {
        None => defaults.max_conn_age,
        Some(0) => {
            return Err(cx.err(
                format!("{key}.max_conn_age_ms"),
                "must be greater than 0 (leave it out for no limit)",
            ))
        }
        Some(ms) => Some(Duration::from_millis(ms)),
    };
    Ok(PoolConfig {
        max_idle_per_peer,
        idle_timeout,
        max_requests_per_conn,
        max_conn_age,
    })
}

/// Checks one `[[route]]` (index `i`) and resolves its upstream name to an index.
fn route(
    cx: &Cx<'_>,
    i: usize,
    f: &RouteFile,
    upstreams: &[UpstreamConfig],
) -> Result<RouteConfig, ConfigError> {
    let key = |rest: &str| format!("route[{i}].{rest}");

    let upstream = upstreams
        .iter()
        .position(|u| u.name == f.upstream)
        .map(GroupId::new)
        .ok_or_else(|| {
            let known: Vec<String> = upstreams.iter().map(|u| format!("`{}`", u.name)).collect();
            cx.err(
                key("upstream"),
                format!(
                    "no [[upstream]] is named `{}` (known: {})",
                    f.upstream,
                    known.join(", ")
                ),
            )
        })?;

    let host = match &f.host {
        None => None,
        Some(h) => Some(route_host(h).map_err(|reason| cx.err(key("host"), reason))?),
    };

    if let Some(prefix) = &f.path_prefix {
        if !prefix.starts_with('/') {
            return Err(cx.err(
                key("path_prefix"),
                format!("must start with `/`, got `{prefix}`"),
            ));
        }
    }

    let header = match &f.header {
        None => None,
        Some(h) => Some(route_header(h).map_err(|reason| cx.err(key("header"), reason))?),
    };

    let sni = match &f.sni {
        None => None,
        Some(n) => Some(super::tls::route_sni(n).map_err(|reason| cx.err(key("sni"), reason))?),
    };

    Ok(RouteConfig {
        host,
        sni,
        path_prefix: f.path_prefix.clone(),
        header,
        upstream,
    })
}

/// Checks a route's `host`: non-empty, no whitespace, no port. Returned lowercase.
fn route_host(host: &str) -> Result<String, String> {
    if host.is_empty() {
        return Err("must not be empty (leave it out to match any host)".to_string());
    }
    if host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(format!("`{host}` is not a host name"));
    }
    // An IPv6 literal is `[…]`; anything else with a colon carries a port, which never
    // matches because the Host header's port is stripped before comparing.
    let has_port = match host.strip_prefix('[') {
        Some(rest) => !rest.ends_with(']'),
        None => host.contains(':'),
    };
    if has_port {
        return Err(format!(
            "`{host}` must not include a port (the Host header's port is ignored when matching)"
        ));
    }
    Ok(host.to_ascii_lowercase())
}

/// Splits a route's `header = "Name: value"` into the trimmed name (lowercase) and value.
fn route_header(header: &str) -> Result<(String, String), String> {
    let Some((name, value)) = header.split_once(':') else {
        return Err(format!("`{header}` is not `Name: value` (no `:`)"));
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("`{header}` has no header name before `:`"));
    }
    if !name.bytes().all(is_tchar) {
        return Err(format!("`{name}` is not a valid header name"));
    }
    Ok((name.to_ascii_lowercase(), value.trim().to_string()))
}

/// Whether `b` may appear in an HTTP field name (RFC 9110 §5.6.2 `tchar`).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::super::{locate, Algorithm};
    use super::*;

    /// The source name every test config is loaded as.
    const SRC: &str = "test.toml";

    /// The smallest valid config body: one upstream with one peer.
    const MIN: &str = "[[upstream]]\nname = \"a\"\npeers = [{ address = \"127.0.0.1:8001\" }]\n";

    /// A fake host: CPUs 0-3 allowed, no NUMA nodes.
    fn host() -> HostCpus {
        HostCpus {
            allowed: vec![0, 1, 2, 3],
            node_dir: PathBuf::from("/nonexistent/ringlb-test/node"),
        }
    }

    /// What `Config::from_toml_str` does, against `host`.
    fn load_on(text: &str, host: &HostCpus) -> Result<Config, ConfigError> {
        let file: ConfigFile =
            toml::from_str(text).map_err(|e| locate::toml_error(text, SRC, &e))?;
        validate_on(file, SRC, host).map_err(|e| locate::with_line(text, e))
    }

    fn load(text: &str) -> Result<Config, ConfigError> {
        load_on(text, &host())
    }

    /// Loads `text`, expects an error at `key` whose Display names the file, the key and
    /// contains `reason`; returns the Display.
    #[track_caller]
    fn expect_err(text: &str, key: &str, reason: &str) -> String {
        let e = match load(text) {
            Ok(c) => panic!("expected an error at `{key}`, got {c:#?}"),
            Err(e) => e,
        };
        let shown = e.to_string();
        assert_eq!(e.file, SRC, "{shown}");
        assert_eq!(e.key, key, "{shown}");
        assert!(shown.starts_with("test.toml: "), "{shown}");
        assert!(shown.contains(&format!("key `{key}`")), "{shown}");
        assert!(shown.contains(reason), "expected {reason:?} in: {shown}");
        shown
    }

    const FULL: &str = r#"
[server]
listen = ["0.0.0.0:8080", "[::]:8081"]
workers = 3
cpus = "0-1,3"
admin = "127.0.0.1:9901"
shutdown_timeout_ms = 5000
backlog = 1024
driver = "io_uring"
max_connections = 1000
uring_entries = 4096

[timeouts]
connect_ms = 500
request_header_ms = 11000
upstream_read_ms = 31000
upstream_write_ms = 32000
client_idle_ms = 61000
expect_continue_ms = 150
tunnel_idle_ms = 120000

[limits]
max_header_bytes = 32768
max_request_line_bytes = 4096
max_body_bytes = 1048576
max_interim_responses = 4
max_interim_bytes = 4096
lingering_time_ms = 2000
lingering_timeout_ms = 500
lingering_max_bytes = 1000000

[[upstream]]
name = "api"
algorithm = "smooth_weighted"
peers = [
  { address = "10.0.0.1:8080", weight = 3, region = "eu-1" },
  { address = "localhost:8080", weight = 1 },
  { address = "10.0.9.9:8080", backup = true },
  { address = "[2001:db8::1]:80", weight = 0 },
]
pool = { max_idle_per_peer = 16, idle_timeout_ms = 15000 }
timeouts = { connect_ms = 250, upstream_read_ms = 2000, tunnel_idle_ms = 5000 }
upgrade = { allow = ["websocket", "h2c"] }

[[upstream]]
name = "static"
peers = [{ address = "10.0.1.1:80" }]

[[route]]
host = "API.example.com"
path_prefix = "/v1"
header = "X-Canary:  true "
upstream = "api"

[[route]]
upstream = "static"
"#;

    #[test]
    fn full_config_parses_with_the_right_values() {
        let c = load(FULL).unwrap();
        assert_eq!(c.source, SRC);

        let s = &c.server;
        assert_eq!(
            s.listen,
            vec![
                "0.0.0.0:8080".parse::<SocketAddr>().unwrap(),
                "[::]:8081".parse().unwrap()
            ]
        );
        assert_eq!(s.workers, Workers::Count(3));
        assert_eq!(s.cpus, Some(vec![0, 1, 3]));
        assert_eq!(s.admin, Some("127.0.0.1:9901".parse().unwrap()));
        assert_eq!(s.shutdown_timeout, Duration::from_millis(5000));
        assert_eq!(s.backlog, 1024);
        assert_eq!(s.driver, Driver::IoUring);
        assert_eq!(s.max_connections, 1000);
        assert_eq!(s.uring_entries, 4096);

        let global = Timeouts {
            connect: Duration::from_millis(500),
            request_header: Duration::from_millis(11_000),
            upstream_read: Duration::from_millis(31_000),
            upstream_write: Duration::from_millis(32_000),
            client_idle: Duration::from_millis(61_000),
            expect_continue: Duration::from_millis(150),
            tunnel_idle: Duration::from_millis(120_000),
            client_park: Duration::from_millis(100),
        };
        assert_eq!(c.timeouts, global);
        assert_eq!(
            c.limits,
            Limits {
                max_header_bytes: 32768,
                max_request_line_bytes: 4096,
                max_body_bytes: Some(1_048_576),
                max_interim_responses: 4,
                max_interim_bytes: 4096,
                lingering_time: Duration::from_millis(2000),
                lingering_timeout: Duration::from_millis(500),
                lingering_max_bytes: 1_000_000,
            }
        );

        assert_eq!(c.upstreams.len(), 2);
        let api = &c.upstreams[0];
        assert_eq!(api.name, "api");
        assert_eq!(api.algorithm, Algorithm::SmoothWeighted);
        assert_eq!(api.peers.len(), 4);
        assert_eq!(api.peers[0].address, "10.0.0.1:8080");
        assert_eq!(api.peers[0].addr, "10.0.0.1:8080".parse().unwrap());
        assert_eq!(api.peers[0].weight, 3);
        assert!(!api.peers[0].backup);
        assert_eq!(api.peers[0].region.as_deref(), Some("eu-1"));
        assert_eq!(api.peers[1].address, "localhost:8080");
        assert!(
            api.peers[1].addr.ip().is_loopback(),
            "{}",
            api.peers[1].addr
        );
        assert_eq!(api.peers[1].addr.port(), 8080);
        assert_eq!(api.peers[1].region, None);
        assert!(api.peers[2].backup);
        assert_eq!(api.peers[2].weight, 1);
        assert_eq!(api.peers[3].weight, 0);
        assert_eq!(api.peers[3].addr, "[2001:db8::1]:80".parse().unwrap());
        assert_eq!(
            api.pool,
            PoolConfig {
                max_idle_per_peer: 16,
                idle_timeout: Duration::from_millis(15_000),
                ..PoolConfig::default()
            }
        );
        // Per-key overrides over the global [timeouts], not over the built-in defaults.
        assert_eq!(
            api.timeouts,
            Timeouts {
                connect: Duration::from_millis(250),
                upstream_read: Duration::from_millis(2000),
                tunnel_idle: Duration::from_millis(5000),
                ..global
            }
        );
        assert_eq!(
            api.upgrade,
            UpgradeAllow::Tokens(vec!["websocket".into(), "h2c".into()])
        );

        let stat = &c.upstreams[1];
        assert_eq!(stat.algorithm, Algorithm::RoundRobin);
        assert_eq!(stat.timeouts, global);
        assert_eq!(stat.pool, PoolConfig::default());

        assert_eq!(c.routes.len(), 2);
        let r = &c.routes[0];
        assert_eq!(r.host.as_deref(), Some("api.example.com"));
        assert_eq!(r.path_prefix.as_deref(), Some("/v1"));
        assert_eq!(r.header, Some(("x-canary".to_string(), "true".to_string())));
        assert_eq!(r.upstream, GroupId::new(0));
        let r = &c.routes[1];
        assert_eq!(
            (r.host.as_ref(), r.path_prefix.as_ref(), r.header.as_ref()),
            (None, None, None)
        );
        assert_eq!(r.upstream, GroupId::new(1));
        assert_eq!(c.upstream_index("static"), Some(GroupId::new(1)));
    }

    #[test]
    fn the_running_config_as_toml_validates_to_the_same_config() {
        let c = load(FULL).unwrap();
        let text = c.to_toml();
        let again = load(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(again.describe(), c.describe(), "{text}");
        assert_eq!(again.to_toml(), text);
    }

    #[test]
    fn an_http2_only_listener_needs_http2_and_on_cleartext_h2c() {
        let c = load(
            "[server]\nlisten = [\"127.0.0.1:1\", { address = \"127.0.0.1:2\", http1 = false }]\n\
             [[upstream]]\nname = \"a\"\npeers = [\"127.0.0.1:8001\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.server.http1_off,
            vec!["127.0.0.1:2".parse::<SocketAddr>().unwrap()]
        );
        assert!(c.server.h2_off.is_empty());
        expect_err(
            "[server]\nlisten = [{ address = \"127.0.0.1:2\", http1 = false, h2 = false }]\n\
             [[upstream]]\nname = \"a\"\npeers = [\"127.0.0.1:8001\"]\n",
            "server.listen[0]",
            "leave the listener nothing to serve",
        );
        expect_err(
            "[server]\nlisten = [\"127.0.0.1:1\", { address = \"127.0.0.1:2\", http1 = false }]\n\
             h2 = { h2c = false }\n[[upstream]]\nname = \"a\"\npeers = [\"127.0.0.1:8001\"]\n",
            "server.listen[1].http1",
            "`[server] h2.h2c` is false",
        );
    }

    #[test]
    fn defaults() {
        let c = load(MIN).unwrap();
        let s = &c.server;
        assert_eq!(
            s.listen,
            vec!["0.0.0.0:8080".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(s.workers, Workers::Auto);
        assert_eq!(s.cpus, None);
        assert_eq!(s.admin, Some("127.0.0.1:9900".parse().unwrap()));
        assert_eq!(s.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(s.backlog, 4096);
        assert_eq!(s.driver, Driver::Auto);
        assert_eq!(s.max_connections, 65_536);
        assert_eq!(s.uring_entries, 1024);
        assert_eq!(c.timeouts, Timeouts::default());
        assert_eq!(c.limits, Limits::default());
        let u = &c.upstreams[0];
        assert_eq!(u.algorithm, Algorithm::RoundRobin);
        assert_eq!(u.timeouts, Timeouts::default());
        assert_eq!(u.pool, PoolConfig::default());
        assert_eq!(u.peers[0].weight, 1);
        assert!(!u.peers[0].backup);
        assert!(c.routes.is_empty());
    }

    #[test]
    fn a_peer_may_be_written_as_its_address_alone() {
        let c = load(
            "[[upstream]]\nname = \"a\"\npeers = [\"127.0.0.1:8001\", \
             { address = \"127.0.0.1:8002\", weight = 3, backup = true }, \"127.0.0.1:8003\"]\n",
        )
        .unwrap();
        let peers = &c.upstreams[0].peers;
        let shape: Vec<_> = peers
            .iter()
            .map(|p| (p.address.as_str(), p.weight, p.backup))
            .collect();
        assert_eq!(
            shape,
            [
                ("127.0.0.1:8001", 1, false),
                ("127.0.0.1:8002", 3, true),
                ("127.0.0.1:8003", 1, false),
            ]
        );
        assert_eq!(peers[0].addr, "127.0.0.1:8001".parse().unwrap());
        // The string form is checked like the table's `address`.
        expect_err(
            "[[upstream]]\nname = \"a\"\npeers = [\"no-port\"]\n",
            "upstream[0].peers[0].address",
            "no-port",
        );
        // Neither a string nor a table: the error says what a peer may be.
        let e = load("[[upstream]]\nname = \"a\"\npeers = [8001]\n").unwrap_err();
        let shown = e.to_string();
        assert!(shown.starts_with("test.toml: "), "{shown}");
        assert!(shown.contains("upstream[0].peers"), "{shown}");
        assert!(shown.contains("a peer: an \"ip:port\""), "{shown}");
        // A table keeps its unknown-key errors, with their path.
        expect_err(
            "[[upstream]]\nname = \"a\"\npeers = [\"127.0.0.1:8001\", { address = \"127.0.0.1:8002\", wieght = 2 }]\n",
            "upstream[0].peers[1].wieght",
            "unknown field `wieght`",
        );
    }

    #[test]
    fn several_upstreams_without_routes_is_fine() {
        let text = format!(
            "{MIN}[[upstream]]\nname = \"b\"\npeers = [{{ address = \"127.0.0.1:8002\" }}]\n"
        );
        let c = load(&text).unwrap();
        assert_eq!(c.upstreams.len(), 2);
        assert!(c.routes.is_empty());
    }

    #[test]
    fn admin_empty_disables_and_ipv6_listen_works() {
        let c = load(&format!(
            "[server]\nadmin = \"\"\nlisten = [\"[::1]:0\"]\n{MIN}"
        ))
        .unwrap();
        assert_eq!(c.server.admin, None);
        assert_eq!(
            c.server.listen,
            vec!["[::1]:0".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn drivers_and_workers_auto() {
        for (name, driver) in [
            ("auto", Driver::Auto),
            ("io_uring", Driver::IoUring),
            ("epoll", Driver::Epoll),
        ] {
            let c = load(&format!(
                "[server]\ndriver = \"{name}\"\nworkers = \"auto\"\n{MIN}"
            ))
            .unwrap();
            assert_eq!(c.server.driver, driver);
            assert_eq!(c.server.workers, Workers::Auto);
        }
    }

    #[test]
    fn small_max_header_bytes_caps_the_default_request_line() {
        let c = load(&format!("[limits]\nmax_header_bytes = 4096\n{MIN}")).unwrap();
        assert_eq!(c.limits.max_request_line_bytes, 4096);
    }

    // ---- errors from toml itself (syntax, unknown keys, types) ----

    #[test]
    fn unknown_key_at_top_level() {
        // A bare key after an [[upstream]] header belongs to that upstream.
        let shown = expect_err(
            &format!("{MIN}bogus = 1\n"),
            "upstream[0].bogus",
            "unknown field `bogus`",
        );
        assert!(shown.contains("(line 4)"), "{shown}");
        let shown = expect_err(
            &format!("bogus = 1\n{MIN}"),
            "bogus",
            "unknown field `bogus`, expected one of `server`",
        );
        assert!(shown.contains("(line 1)"), "{shown}");
        let shown = expect_err(
            &format!("{MIN}[bogus]\nx = 1\n"),
            "bogus",
            "unknown field `bogus`",
        );
        assert!(shown.contains("(line 4)"), "{shown}");
    }

    #[test]
    fn unknown_key_in_server() {
        let shown = expect_err(
            &format!("[server]\nlisten = [\"127.0.0.1:80\"]\nlisen = 1\n{MIN}"),
            "server.lisen",
            "unknown field `lisen`, expected one of `listen`",
        );
        assert!(shown.contains("(line 3)"), "{shown}");
    }

    #[test]
    fn unknown_key_in_a_peer_table() {
        let text = concat!(
            "[[upstream]]\n",
            "name = \"a\"\n",
            "peers = [\n",
            "  { address = \"127.0.0.1:1\" },\n",
            "  { address = \"127.0.0.1:2\", wieght = 2 },\n",
            "]\n",
        );
        let shown = expect_err(
            text,
            "upstream[0].peers[1].wieght",
            "unknown field `wieght`, expected one of `address`, `weight`",
        );
        assert!(shown.contains("(line 5)"), "{shown}");
    }

    #[test]
    fn unknown_key_in_second_upstream_and_route() {
        let text = format!(
            "{MIN}[[upstream]]\nname = \"b\"\n\
             peers = [{{ address = \"127.0.0.1:2\" }}]\nalgo = \"x\"\n"
        );
        expect_err(&text, "upstream[1].algo", "unknown field `algo`");
        let text = format!("{MIN}[[route]]\nupstream = \"a\"\nprefix = \"/\"\n");
        expect_err(&text, "route[0].prefix", "unknown field `prefix`");
        let text = format!("[timeouts]\nconnect = 5\n{MIN}");
        expect_err(&text, "timeouts.connect", "unknown field `connect`");
        let text = &format!("{MIN}pool = {{ max_idle = 1 }}\n");
        expect_err(
            text,
            "upstream[0].pool.max_idle",
            "unknown field `max_idle`",
        );
    }

    #[test]
    fn upstream_keys_elsewhere_are_unknown() {
        expect_err(
            &format!("[server]\nretry = 1\n{MIN}"),
            "server.retry",
            "unknown field `retry`",
        );
    }

    #[test]
    fn wrong_types() {
        expect_err(
            &format!("[server]\nbacklog = \"big\"\n{MIN}"),
            "server.backlog",
            "invalid type: string \"big\"",
        );
        expect_err(
            &format!("[server]\nlisten = \"0.0.0.0:80\"\n{MIN}"),
            "server.listen",
            "invalid type",
        );
        expect_err(
            &format!("[server]\ndriver = \"kqueue\"\n{MIN}"),
            "server.driver",
            "unknown variant `kqueue`, expected one of `auto`, `io_uring`, `epoll`",
        );
        expect_err(
            "[[upstream]]\nname = \"a\"\npeers = [{ address = \"127.0.0.1:1\", weight = -1 }]\n",
            "upstream[0].peers[0].weight",
            "invalid value",
        );
        expect_err(
            "[[upstream]]\nname = \"a\"\n\
             peers = [{ address = \"127.0.0.1:1\", backup = \"yes\" }]\n",
            "upstream[0].peers[0].backup",
            "invalid type",
        );
    }

    #[test]
    fn missing_required_keys() {
        expect_err(
            "[[upstream]]\npeers = [{ address = \"127.0.0.1:1\" }]\n",
            "upstream[0].name",
            "missing field `name`",
        );
        expect_err(
            "[[upstream]]\nname = \"a\"\npeers = [{ weight = 1 }]\n",
            "upstream[0].peers[0].address",
            "missing field `address`",
        );
        expect_err(
            &format!("{MIN}[[route]]\nhost = \"x\"\n"),
            "route[0].upstream",
            "missing field `upstream`",
        );
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let e = load("[server]\nlisten = [\"0.0.0.0:80\"\n").unwrap_err();
        let shown = e.to_string();
        assert!(shown.starts_with("test.toml: "), "{shown}");
        assert!(shown.contains("line 2"), "{shown}");
        assert!(shown.contains("column"), "{shown}");
    }

    // ---- validation errors ----

    #[test]
    fn bad_listen_address() {
        let shown = expect_err(
            &format!("[server]\nlisten = [\"0.0.0.0:80\", \"localhost:80\"]\n{MIN}"),
            "server.listen[1]",
            "`localhost:80` is not an `ip:port` socket address",
        );
        assert!(shown.contains("(line 2)"), "{shown}");
        expect_err(
            &format!("[server]\nlisten = [\"::1:80\"]\n{MIN}"),
            "server.listen[0]",
            "not an `ip:port`",
        );
        expect_err(
            &format!("[server]\nlisten = [\"0.0.0.0\"]\n{MIN}"),
            "server.listen[0]",
            "not an `ip:port`",
        );
        expect_err(
            &format!("[server]\nlisten = []\n{MIN}"),
            "server.listen",
            "at least one address",
        );
        expect_err(
            &format!("[server]\nlisten = [\"0.0.0.0:80\", \"0.0.0.0:80\"]\n{MIN}"),
            "server.listen[1]",
            "listed twice",
        );
    }

    #[test]
    fn workers_zero_and_nonsense() {
        let shown = expect_err(
            &format!("[server]\nworkers = 0\n{MIN}"),
            "server.workers",
            "got 0",
        );
        assert!(shown.contains("(line 2)"), "{shown}");
        expect_err(
            &format!("[server]\nworkers = -2\n{MIN}"),
            "server.workers",
            "got -2",
        );
        expect_err(
            &format!("[server]\nworkers = 100000\n{MIN}"),
            "server.workers",
            "from 1 to 4096",
        );
        let shown = expect_err(
            &format!("[server]\nworkers = \"lots\"\n{MIN}"),
            "server.workers",
            "\"lots\"",
        );
        assert!(
            shown.contains("expected \"auto\" or an integer >= 1"),
            "{shown}"
        );
        assert!(shown.contains("(line 2)"), "{shown}");
        expect_err(
            &format!("[server]\nworkers = 1.5\n{MIN}"),
            "server.workers",
            "expected \"auto\" or an integer",
        );
    }

    #[test]
    fn cpus_and_numa_node_are_exclusive() {
        expect_err(
            &format!("[server]\ncpus = \"0-1\"\nnuma_node = 0\n{MIN}"),
            "server.numa_node",
            "mutually exclusive",
        );
    }

    #[test]
    fn bad_cpu_lists() {
        expect_err(
            &format!("[server]\ncpus = \"3-1\"\n{MIN}"),
            "server.cpus",
            "invalid cpu list: reversed range `3-1`",
        );
        expect_err(
            &format!("[server]\ncpus = \"a-b\"\n{MIN}"),
            "server.cpus",
            "invalid cpu list",
        );
        expect_err(
            &format!("[server]\ncpus = \"\"\n{MIN}"),
            "server.cpus",
            "invalid cpu list: empty",
        );
        let shown = expect_err(
            &format!("[server]\ncpus = \"0-1,7\"\n{MIN}"),
            "server.cpus",
            "cpu 7 is not in this process's allowed set 0-3",
        );
        assert!(shown.contains("(line 2)"), "{shown}");
    }

    #[test]
    fn cpus_outside_the_real_allowed_set_are_rejected() {
        // Against the real host: the highest possible CPU is (almost) never allowed.
        if !cpus::allowed_cpus().contains(&(MAX_CPUS - 1)) {
            let e = Config::from_toml_str(
                &format!("[server]\ncpus = \"{}\"\n{MIN}", MAX_CPUS - 1),
                SRC,
            )
            .unwrap_err();
            assert!(
                e.to_string()
                    .contains("is not in this process's allowed set"),
                "{e}"
            );
        }
        let first = cpus::allowed_cpus()[0];
        let c =
            Config::from_toml_str(&format!("[server]\ncpus = \"{first}\"\n{MIN}"), SRC).unwrap();
        assert_eq!(c.server.cpus, Some(vec![first]));
    }

    #[test]
    fn numa_nodes() {
        let dir = std::env::temp_dir().join(format!("ringlb-validate-numa-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (node, list) in [(0, "0-1\n"), (1, "2-5\n"), (2, "6-7\n")] {
            std::fs::create_dir_all(dir.join(format!("node{node}"))).unwrap();
            std::fs::write(dir.join(format!("node{node}/cpulist")), list).unwrap();
        }
        let host = HostCpus {
            allowed: vec![0, 1, 2, 3],
            node_dir: dir.clone(),
        };
        let numa = |n: &str| load_on(&format!("[server]\nnuma_node = {n}\n{MIN}"), &host);

        assert_eq!(numa("0").unwrap().server.cpus, Some(vec![0, 1]));
        // Only the node's CPUs this process may use.
        assert_eq!(numa("1").unwrap().server.cpus, Some(vec![2, 3]));
        let e = numa("2").unwrap_err().to_string();
        assert!(
            e.contains("key `server.numa_node`")
                && e.contains("none of them in this process's allowed set 0-3"),
            "{e}"
        );
        let e = numa("9").unwrap_err().to_string();
        assert!(
            e.contains("test.toml")
                && e.contains("key `server.numa_node`")
                && e.contains("NUMA node 9 does not exist"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_admin() {
        expect_err(
            &format!("[server]\nadmin = \"localhost\"\n{MIN}"),
            "server.admin",
            "not an `ip:port`",
        );
        expect_err(
            &format!("[server]\nlisten = [\"0.0.0.0:9900\"]\n{MIN}"),
            "server.admin",
            "collides with listen address server.listen[0]",
        );
        // Reachable from elsewhere: only with a token.
        expect_err(
            &format!("[server]\nadmin = \"0.0.0.0:9901\"\n{MIN}"),
            "server.admin",
            "not a loopback address: set server.admin_token",
        );
        expect_err(
            &format!("[server]\nadmin_token = \"two words\"\n{MIN}"),
            "server.admin_token",
            "without spaces",
        );
        let c = load(&format!(
            "[server]\nadmin = \"0.0.0.0:9901\"\nadmin_token = \"s3cret\"\n{MIN}"
        ))
        .unwrap();
        assert_eq!(c.server.admin_token.as_deref(), Some("s3cret"));
        expect_err(
            &MIN.replace("127.0.0.1:8001\"", "127.0.0.1:8001\", weight = 65536"),
            "upstream[0].peers[0].weight",
            "must be between 0 and 65535",
        );
    }

    #[test]
    fn server_ranges() {
        expect_err(
            &format!("[server]\nbacklog = 0\n{MIN}"),
            "server.backlog",
            "between 1 and",
        );
        expect_err(
            &format!("[server]\nbacklog = 3000000000\n{MIN}"),
            "server.backlog",
            "between 1 and",
        );
        expect_err(
            &format!("[server]\nmax_connections = 0\n{MIN}"),
            "server.max_connections",
            "at least 1",
        );
        expect_err(
            &format!("[server]\nuring_entries = 128\n{MIN}"),
            "server.uring_entries",
            "between 256 and 32768",
        );
        expect_err(
            &format!("[server]\nuring_entries = 65536\n{MIN}"),
            "server.uring_entries",
            "between 256 and 32768",
        );
        load(&format!(
            "[server]\nuring_entries = 256\nshutdown_timeout_ms = 0\n{MIN}"
        ))
        .unwrap();
    }

    #[test]
    fn limits_ranges() {
        expect_err(
            &format!("[limits]\nmax_header_bytes = 512\n{MIN}"),
            "limits.max_header_bytes",
            "between 1024 and 1048576",
        );
        expect_err(
            &format!("[limits]\nmax_header_bytes = 2000000\n{MIN}"),
            "limits.max_header_bytes",
            "between 1024 and 1048576",
        );
        expect_err(
            &format!("[limits]\nmax_request_line_bytes = 20000\n{MIN}"),
            "limits.max_request_line_bytes",
            "max_header_bytes (16384)",
        );
        expect_err(
            &format!("[limits]\nmax_request_line_bytes = 0\n{MIN}"),
            "limits.max_request_line_bytes",
            "between 1 and",
        );
    }

    #[test]
    fn route_to_unknown_upstream() {
        let shown = expect_err(
            &format!("{MIN}[[route]]\npath_prefix = \"/\"\nupstream = \"nope\"\n"),
            "route[0].upstream",
            "no [[upstream]] is named `nope` (known: `a`)",
        );
        assert!(shown.contains("(line 6)"), "{shown}");
    }

    #[test]
    fn duplicate_upstream_name() {
        let text =
            format!("{MIN}[[upstream]]\nname = \"a\"\npeers = [{{ address = \"127.0.0.1:2\" }}]\n");
        let shown = expect_err(
            &text,
            "upstream[1].name",
            "`a` is already the name of upstream[0]",
        );
        assert!(shown.contains("(line 5)"), "{shown}");
        expect_err(
            "[[upstream]]\nname = \"\"\npeers = [{ address = \"127.0.0.1:1\" }]\n",
            "upstream[0].name",
            "must not be empty",
        );
    }

    #[test]
    fn no_upstreams() {
        expect_err(
            "[server]\nworkers = 1\n",
            "upstream",
            "at least one [[upstream]]",
        );
    }

    #[test]
    fn no_peers() {
        expect_err(
            "[[upstream]]\nname = \"a\"\n",
            "upstream[0].peers",
            "at least one peer",
        );
        expect_err(
            "[[upstream]]\nname = \"a\"\npeers = []\n",
            "upstream[0].peers",
            "at least one peer",
        );
    }

    #[test]
    fn only_backup_peers() {
        let text = concat!(
            "[[upstream]]\n",
            "name = \"a\"\n",
            "peers = [\n",
            "  { address = \"127.0.0.1:1\", backup = true },\n",
            "  { address = \"127.0.0.1:2\", backup = true },\n",
            "]\n",
        );
        let shown = expect_err(
            text,
            "upstream[0].peers",
            "at least one peer that is not `backup = true`",
        );
        assert!(shown.contains("(line 3)"), "{shown}");
    }

    #[test]
    fn unresolvable_host() {
        let text = concat!(
            "[[upstream]]\n",
            "name = \"a\"\n",
            "peers = [\n",
            "  { address = \"127.0.0.1:1\" },\n",
            "  { address = \"no-such-host.invalid:8080\" },\n",
            "]\n",
        );
        let shown = expect_err(
            text,
            "upstream[0].peers[1].address",
            "cannot resolve `no-such-host.invalid`: ",
        );
        assert!(shown.contains("(line 5)"), "{shown}");
    }

    #[test]
    fn bad_peer_addresses() {
        let peer =
            |a: &str| format!("[[upstream]]\nname = \"a\"\npeers = [{{ address = \"{a}\" }}]\n");
        let key = "upstream[0].peers[0].address";
        expect_err(&peer("10.0.0.1"), key, "has no port");
        expect_err(&peer("::1"), key, "has no port");
        expect_err(&peer("[::1]"), key, "has no port");
        expect_err(&peer("backend.internal"), key, "has no port");
        expect_err(&peer("backend.internal:http"), key, "invalid port `http`");
        expect_err(&peer("backend.internal:70000"), key, "invalid port `70000`");
        expect_err(&peer(":80"), key, "has no host");
        expect_err(&peer("10.0.0.1:0"), key, "port 0");
        expect_err(&peer("http://x:80"), key, "not an `ip:port` or `host:port`");
    }

    #[test]
    fn duplicate_peers() {
        let text = concat!(
            "[[upstream]]\n",
            "name = \"a\"\n",
            "peers = [\n",
            "  { address = \"127.0.0.1:1\" },\n",
            "  { address = \"10.0.0.1:1\" },\n",
            "  { address = \"127.0.0.1:1\", weight = 2 },\n",
            "]\n",
        );
        expect_err(
            text,
            "upstream[0].peers[2].address",
            "is the same peer as upstream[0].peers[0]",
        );
        // The same address in different groups is fine.
        let text = format!(
            "{MIN}[[upstream]]\nname = \"b\"\npeers = [{{ address = \"127.0.0.1:8001\" }}]\n"
        );
        load(&text).unwrap();
    }

    #[test]
    fn drained_peer_and_empty_region() {
        let c = load(
            "[[upstream]]\nname = \"a\"\npeers = [{ address = \"127.0.0.1:1\", weight = 0 }]\n",
        )
        .unwrap();
        assert_eq!(c.upstreams[0].peers[0].weight, 0);
        expect_err(
            "[[upstream]]\nname = \"a\"\npeers = [{ address = \"127.0.0.1:1\", region = \"\" }]\n",
            "upstream[0].peers[0].region",
            "must not be empty",
        );
    }

    #[test]
    fn path_prefix_without_slash() {
        expect_err(
            &format!("{MIN}[[route]]\npath_prefix = \"v1\"\nupstream = \"a\"\n"),
            "route[0].path_prefix",
            "must start with `/`, got `v1`",
        );
    }

    #[test]
    fn header_without_colon() {
        expect_err(
            &format!("{MIN}[[route]]\nheader = \"X-Canary true\"\nupstream = \"a\"\n"),
            "route[0].header",
            "is not `Name: value` (no `:`)",
        );
        expect_err(
            &format!("{MIN}[[route]]\nheader = \": true\"\nupstream = \"a\"\n"),
            "route[0].header",
            "no header name",
        );
        expect_err(
            &format!("{MIN}[[route]]\nheader = \"X Canary: true\"\nupstream = \"a\"\n"),
            "route[0].header",
            "not a valid header name",
        );
    }

    #[test]
    fn bad_route_hosts() {
        expect_err(
            &format!("{MIN}[[route]]\nhost = \"example.com:8080\"\nupstream = \"a\"\n"),
            "route[0].host",
            "must not include a port",
        );
        expect_err(
            &format!("{MIN}[[route]]\nhost = \"\"\nupstream = \"a\"\n"),
            "route[0].host",
            "must not be empty",
        );
        let c = load(&format!(
            "{MIN}[[route]]\nhost = \"[::1]\"\nupstream = \"a\"\n"
        ))
        .unwrap();
        assert_eq!(c.routes[0].host.as_deref(), Some("[::1]"));
    }

    #[test]
    fn upgrade_allow() {
        let c = load(MIN).unwrap();
        assert_eq!(c.upstreams[0].upgrade, UpgradeAllow::default());
        assert!(c.upstreams[0].upgrade.allows(b"WebSocket"));
        assert!(!c.upstreams[0].upgrade.allows(b"h2c"));
        assert!(!c.upstreams[0].upgrade.allows(b"websocket, h2c"));
        assert!(!c.upstreams[0].upgrade.allows(b" "));
        let c = load(&format!("{MIN}upgrade = {{ allow = [\"*\"] }}\n")).unwrap();
        assert_eq!(c.upstreams[0].upgrade, UpgradeAllow::Any);
        assert!(c.upstreams[0].upgrade.allows(b"h2c, foo/2"));
        let c = load(&format!(
            "{MIN}upgrade = {{ allow = [\"H2C\", \"websocket\"] }}\n"
        ))
        .unwrap();
        assert!(c.upstreams[0].upgrade.allows(b"h2c, websocket/13"));
        let c = load(&format!("{MIN}upgrade = {{ allow = [] }}\n")).unwrap();
        assert!(!c.upstreams[0].upgrade.allows(b"websocket"));
        expect_err(
            &format!("{MIN}upgrade = {{ allow = [\"web socket\"] }}\n"),
            "upstream[0].upgrade.allow[0]",
            "is not a protocol name",
        );
        expect_err(
            &format!("{MIN}upgrade = {{ allow = [\"*\", \"websocket\"] }}\n"),
            "upstream[0].upgrade.allow",
            "cannot be combined",
        );
        assert!(load(&format!("{MIN}upgrade = {{ deny = [] }}\n")).is_err());
    }

    #[test]
    fn timeouts_of_zero() {
        for key in [
            "connect_ms",
            "request_header_ms",
            "upstream_read_ms",
            "upstream_write_ms",
            "client_idle_ms",
            "expect_continue_ms",
            "tunnel_idle_ms",
        ] {
            let shown = expect_err(
                &format!("[timeouts]\n{key} = 0\n{MIN}"),
                &format!("timeouts.{key}"),
                "must be greater than 0",
            );
            assert!(shown.contains("(line 2)"), "{shown}");
        }
        let text = &format!("{MIN}timeouts = {{ upstream_read_ms = 0 }}\n");
        expect_err(
            text,
            "upstream[0].timeouts.upstream_read_ms",
            "must be greater than 0",
        );
        let text = &format!("{MIN}pool = {{ idle_timeout_ms = 0 }}\n");
        expect_err(
            text,
            "upstream[0].pool.idle_timeout_ms",
            "must be greater than 0",
        );
    }
}

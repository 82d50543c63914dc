//! The `discovery = { … }` key of `[[upstream]]`: where an upstream's peers come from when
//! they are not (only) listed in `peers` — DNS records (A/AAAA/SRV) or Docker containers —
//! its file struct, its checked runtime type, its validation and its lines in
//! [`Config::describe`](super::Config::describe).
//!
//! Kept apart from `file.rs`/`validate.rs` so discovery owns its keys in one place; `validate.rs`
//! calls [`check`], which reports errors as `(key path, reason)` pairs.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::UpstreamConfig;

/// Default `hold_ms`: how long a failing lookup keeps the last good set.
pub const DEFAULT_HOLD_MS: u64 = 30_000;
/// Default `hold_obsolete_ms`: how long a record missing from a valid answer stays.
pub const DEFAULT_HOLD_OBSOLETE_MS: u64 = 0;
/// Default `min_ttl_ms`: the shortest refresh a record's TTL can ask for.
pub const DEFAULT_MIN_TTL_MS: u64 = 1_000;
/// Default `max_ttl_ms`: the longest refresh a record's TTL can ask for.
pub const DEFAULT_MAX_TTL_MS: u64 = 300_000;
/// Default `timeout_ms` of one DNS lookup.
pub const DEFAULT_DNS_TIMEOUT_MS: u64 = 5_000;
/// Default Docker `socket`.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// Default Docker `network`.
pub const DEFAULT_DOCKER_NETWORK: &str = "bridge";
/// Default Docker `refresh_ms` (the polling period; with the events stream a safety net).
pub const DEFAULT_DOCKER_REFRESH_MS: u64 = 10_000;

// ---------------------------------------------------------------------------------------------
// File struct.

/// DiscoveryFile is an upstream's `discovery = { … }` as written (the keys of both kinds;
/// validation refuses a key of the other kind).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct DiscoveryFile {
    /// `"dns"` or `"docker"`; required.
    pub kind: Option<String>,
    /// DNS: the name to look up.
    pub name: Option<String>,
    /// DNS: `"a"`, `"aaaa"`, `"any"` (A and AAAA) or `"srv"`. Default `"any"`.
    #[serde(rename = "type")]
    pub record_type: Option<String>,
    /// DNS A/AAAA/any: the peers' port.
    pub port: Option<u64>,
    /// DNS: fixed refresh period; default the answer's TTL. Docker: the polling period.
    pub refresh_ms: Option<u64>,
    /// DNS: the shortest TTL-driven refresh.
    pub min_ttl_ms: Option<u64>,
    /// DNS: the longest TTL-driven refresh.
    pub max_ttl_ms: Option<u64>,
    /// DNS: `["10.0.0.2:53"]`; default `/etc/resolv.conf`.
    pub resolvers: Option<Vec<String>>,
    /// DNS: how long a failing lookup (timeout, SERVFAIL, NXDOMAIN) keeps the last good set.
    pub hold_ms: Option<u64>,
    /// DNS: how long a record missing from a valid answer stays a peer.
    pub hold_obsolete_ms: Option<u64>,
    /// DNS: one lookup's timeout.
    pub timeout_ms: Option<u64>,
    /// Docker: the Engine API's Unix socket.
    pub socket: Option<String>,
    /// Docker: `key=value` (or `key`) a container must carry.
    pub label: Option<String>,
    /// Docker: the label whose value is the container's port.
    pub port_label: Option<String>,
    /// Docker: the network whose address is used.
    pub network: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Runtime types.

/// Discovery is where an upstream's discovered peers come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// DNS records.
    Dns(DnsDiscovery),
    /// Running Docker containers with a label.
    Docker(DockerDiscovery),
}

impl Discovery {
    /// The config-file name of the kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Discovery::Dns(_) => "dns",
            Discovery::Docker(_) => "docker",
        }
    }
}

/// DnsType is the record type a DNS discovery looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsType {
    /// IPv4 addresses.
    A,
    /// IPv6 addresses.
    Aaaa,
    /// A and AAAA.
    Any,
    /// SRV records: target, port, weight, priority.
    Srv,
}

impl DnsType {
    /// The config-file name of the type.
    pub fn name(self) -> &'static str {
        match self {
            DnsType::A => "a",
            DnsType::Aaaa => "aaaa",
            DnsType::Any => "any",
            DnsType::Srv => "srv",
        }
    }
}

/// DnsDiscovery is `discovery = { kind = "dns", … }`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsDiscovery {
    /// The name looked up (as written).
    pub name: String,
    /// The record type.
    pub record_type: DnsType,
    /// The peers' port for A/AAAA/any (`None` for SRV, whose records carry it).
    pub port: Option<u16>,
    /// A fixed refresh period; `None`: the answer's TTL clamped to `min_ttl..=max_ttl`.
    pub refresh: Option<Duration>,
    /// The shortest TTL-driven refresh (also the retry period after a failure). Default 1 s.
    pub min_ttl: Duration,
    /// The longest TTL-driven refresh. Default 300 s.
    pub max_ttl: Duration,
    /// The name servers asked; `None`: `/etc/resolv.conf`.
    pub resolvers: Option<Vec<SocketAddr>>,
    /// How long a failing lookup keeps the last good set. Default 30 s.
    pub hold: Duration,
    /// How long a record missing from a valid answer stays a peer. Default 0.
    pub hold_obsolete: Duration,
    /// One lookup's timeout. Default 5 s.
    pub timeout: Duration,
}

/// DockerDiscovery is `discovery = { kind = "docker", … }`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerDiscovery {
    /// The Engine API's Unix socket.
    pub socket: PathBuf,
    /// The label as written (`ringlb.upstream=api`), the Engine API's `label` filter.
    pub label: String,
    /// The label whose value is the container's port.
    pub port_label: String,
    /// The network whose address is used.
    pub network: String,
    /// The polling period (and the events stream's reconnect period).
    pub refresh: Duration,
}

// ---------------------------------------------------------------------------------------------
// Validation.

/// The keys that belong to one kind only, with that kind.
const DNS_KEYS: &[&str] = &[
    "name",
    "type",
    "port",
    "min_ttl_ms",
    "max_ttl_ms",
    "resolvers",
    "hold_ms",
    "hold_obsolete_ms",
    "timeout_ms",
];
const DOCKER_KEYS: &[&str] = &["socket", "label", "port_label", "network"];

/// Which of `keys` are set in `f`.
fn set_keys(f: &DiscoveryFile) -> Vec<&'static str> {
    let mut set = Vec::new();
    let mut note = |k: &'static str, present: bool| {
        if present {
            set.push(k);
        }
    };
    note("name", f.name.is_some());
    note("type", f.record_type.is_some());
    note("port", f.port.is_some());
    note("min_ttl_ms", f.min_ttl_ms.is_some());
    note("max_ttl_ms", f.max_ttl_ms.is_some());
    note("resolvers", f.resolvers.is_some());
    note("hold_ms", f.hold_ms.is_some());
    note("hold_obsolete_ms", f.hold_obsolete_ms.is_some());
    note("timeout_ms", f.timeout_ms.is_some());
    note("socket", f.socket.is_some());
    note("label", f.label.is_some());
    note("port_label", f.port_label.is_some());
    note("network", f.network.is_some());
    set
}

/// Checks upstream `i`'s `discovery` table. Errors are `(key path, reason)`.
pub(crate) fn check(
    i: usize,
    f: Option<&DiscoveryFile>,
) -> Result<Option<Discovery>, (String, String)> {
    let Some(f) = f else {
        return Ok(None);
    };
    let key = |rest: &str| format!("upstream[{i}].discovery.{rest}");
    let kind = match f.kind.as_deref() {
        None => return Err((key("kind"), "is required: `dns` or `docker`".to_string())),
        Some(k @ ("dns" | "docker")) => k,
        Some(other) => {
            return Err((
                key("kind"),
                format!("unknown discovery kind `{other}`: expected `dns` or `docker`"),
            ))
        }
    };
    let foreign = if kind == "dns" { DOCKER_KEYS } else { DNS_KEYS };
    if let Some(k) = set_keys(f).into_iter().find(|k| foreign.contains(k)) {
        let other = if kind == "dns" { "docker" } else { "dns" };
        return Err((
            key(k),
            format!("belongs to kind = \"{other}\", not kind = \"{kind}\""),
        ));
    }
    if kind == "dns" {
        dns(f, &key).map(|d| Some(Discovery::Dns(d)))
    } else {
        docker(f, &key).map(|d| Some(Discovery::Docker(d)))
    }
}

/// A positive millisecond count, or its default.
fn positive_ms(
    key: &dyn Fn(&str) -> String,
    name: &str,
    v: Option<u64>,
    default: u64,
) -> Result<Duration, (String, String)> {
    match v {
        Some(0) => Err((
            key(name),
            "must be greater than 0 (milliseconds)".to_string(),
        )),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Ok(Duration::from_millis(default)),
    }
}

fn dns(f: &DiscoveryFile, key: &dyn Fn(&str) -> String) -> Result<DnsDiscovery, (String, String)> {
    let name = match f.name.as_deref().map(str::trim) {
        None | Some("") => {
            return Err((
                key("name"),
                "is required: the DNS name to look up (e.g. `api.internal` or \
                 `_http._tcp.api.service.consul`)"
                    .to_string(),
            ))
        }
        Some(n) => n,
    };
    if name.contains(|c: char| c.is_whitespace() || c == '/' || c == ':') || name.len() > 253 {
        return Err((key("name"), format!("`{name}` is not a DNS name")));
    }
    let record_type = match f.record_type.as_deref() {
        None | Some("any") => DnsType::Any,
        Some("a") => DnsType::A,
        Some("aaaa") => DnsType::Aaaa,
        Some("srv") => DnsType::Srv,
        Some(other) => {
            return Err((
                key("type"),
                format!("unknown record type `{other}`: expected `a`, `aaaa`, `any` or `srv`"),
            ))
        }
    };
    let port = match (record_type, f.port) {
        (DnsType::Srv, Some(_)) => {
            return Err((
                key("port"),
                "SRV records carry their own port: leave `port` out with type = \"srv\""
                    .to_string(),
            ))
        }
        (DnsType::Srv, None) => None,
        (_, None) => {
            return Err((
                key("port"),
                format!(
                    "is required with type = \"{}\": A/AAAA records carry no port",
                    record_type.name()
                ),
            ))
        }
        (_, Some(p)) if p == 0 || p > u64::from(u16::MAX) => {
            return Err((key("port"), format!("must be between 1 and 65535, got {p}")))
        }
        (_, Some(p)) => Some(p as u16),
    };
    let refresh = match f.refresh_ms {
        None => None,
        Some(ms) => Some(positive_ms(key, "refresh_ms", Some(ms), 0)?),
    };
    let min_ttl = positive_ms(key, "min_ttl_ms", f.min_ttl_ms, DEFAULT_MIN_TTL_MS)?;
    let max_ttl = positive_ms(key, "max_ttl_ms", f.max_ttl_ms, DEFAULT_MAX_TTL_MS)?;
    if min_ttl > max_ttl {
        return Err((
            key("max_ttl_ms"),
            format!(
                "must be at least min_ttl_ms ({} ms), got {} ms",
                min_ttl.as_millis(),
                max_ttl.as_millis()
            ),
        ));
    }
    let resolvers = match &f.resolvers {
        None => None,
        Some(list) if list.is_empty() => {
            return Err((
                key("resolvers"),
                "must list at least one name server (leave it out to use /etc/resolv.conf)"
                    .to_string(),
            ))
        }
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (j, r) in list.iter().enumerate() {
                let addr = r
                    .parse::<SocketAddr>()
                    .or_else(|_| r.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| {
                        (
                            key(&format!("resolvers[{j}]")),
                            format!(
                                "`{r}` is not a name server address \
                                 (write `ip:port` or `ip`, IPv6 as `[::1]:53`)"
                            ),
                        )
                    })?;
                if addr.port() == 0 {
                    return Err((key(&format!("resolvers[{j}]")), format!("`{r}` has port 0")));
                }
                out.push(addr);
            }
            Some(out)
        }
    };
    let hold = Duration::from_millis(f.hold_ms.unwrap_or(DEFAULT_HOLD_MS));
    let hold_obsolete =
        Duration::from_millis(f.hold_obsolete_ms.unwrap_or(DEFAULT_HOLD_OBSOLETE_MS));
    let timeout = positive_ms(key, "timeout_ms", f.timeout_ms, DEFAULT_DNS_TIMEOUT_MS)?;
    Ok(DnsDiscovery {
        name: name.to_string(),
        record_type,
        port,
        refresh,
        min_ttl,
        max_ttl,
        resolvers,
        hold,
        hold_obsolete,
        timeout,
    })
}

fn docker(
    f: &DiscoveryFile,
    key: &dyn Fn(&str) -> String,
) -> Result<DockerDiscovery, (String, String)> {
    let socket = f.socket.as_deref().unwrap_or(DEFAULT_DOCKER_SOCKET);
    if socket.is_empty() {
        return Err((key("socket"), "must not be empty".to_string()));
    }
    let label = match f.label.as_deref().map(str::trim) {
        None | Some("") => {
            return Err((
                key("label"),
                "is required: the label a container must carry, `key=value` or `key` \
                 (e.g. `ringlb.upstream=api`)"
                    .to_string(),
            ))
        }
        Some(l) => l,
    };
    let port_label = match f.port_label.as_deref().map(str::trim) {
        None | Some("") => {
            return Err((
                key("port_label"),
                "is required: the label whose value is the container's port \
                 (e.g. `ringlb.port`)"
                    .to_string(),
            ))
        }
        Some(l) => l,
    };
    let network = f.network.as_deref().unwrap_or(DEFAULT_DOCKER_NETWORK);
    if network.trim().is_empty() {
        return Err((key("network"), "must not be empty".to_string()));
    }
    let refresh = positive_ms(key, "refresh_ms", f.refresh_ms, DEFAULT_DOCKER_REFRESH_MS)?;
    Ok(DockerDiscovery {
        socket: PathBuf::from(socket),
        label: label.to_string(),
        port_label: port_label.to_string(),
        network: network.to_string(),
        refresh,
    })
}

/// Writes an upstream's discovery line(s) for [`Config::describe`](super::Config::describe).
pub(crate) fn describe(out: &mut String, u: &UpstreamConfig) -> fmt::Result {
    let ms = |d: Duration| format!("{} ms", d.as_millis());
    if let Some(t) = &u.transparent {
        let rules: Vec<String> = t
            .allow
            .iter()
            .map(|r| match r {
                AllowRule::Name(n) => n.clone(),
                AllowRule::Suffix(s) => format!("*{s}"),
                AllowRule::Net(ip, len) => format!("{ip}/{len}"),
            })
            .collect();
        writeln!(out, "  transparent, allow {}", rules.join(" "))?;
    }
    match &u.discovery {
        None => Ok(()),
        Some(Discovery::Dns(d)) => {
            write!(
                out,
                "  discovery  dns {} type {}",
                d.name,
                d.record_type.name()
            )?;
            if let Some(p) = d.port {
                write!(out, " port {p}")?;
            }
            match d.refresh {
                Some(r) => write!(out, ", refresh {}", ms(r))?,
                None => write!(out, ", refresh ttl ({}..{})", ms(d.min_ttl), ms(d.max_ttl))?,
            }
            match &d.resolvers {
                Some(list) => {
                    let list: Vec<String> = list.iter().map(|a| a.to_string()).collect();
                    write!(out, ", resolvers {}", list.join(" "))?;
                }
                None => write!(out, ", resolvers /etc/resolv.conf")?,
            }
            writeln!(
                out,
                ", hold {}, hold_obsolete {}, timeout {}",
                ms(d.hold),
                ms(d.hold_obsolete),
                ms(d.timeout)
            )
        }
        Some(Discovery::Docker(d)) => writeln!(
            out,
            "  discovery  docker {} label {} port_label {} network {}, refresh {}",
            d.socket.display(),
            d.label,
            d.port_label,
            d.network,
            ms(d.refresh)
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Transparent mode.

/// AllowRule is one entry of a transparent upstream's `allow` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowRule {
    /// A host name, exactly (lowercase, no trailing dot).
    Name(String),
    /// `*.suffix`: any name ending in `.suffix` (stored with its leading dot).
    Suffix(String),
    /// An IP network `addr/prefix` (a plain address is `/32` or `/128`).
    Net(IpAddr, u8),
}

/// Transparent is `algorithm = "transparent"`: each request goes to the host (and port) its
/// `Host` names, if `allow` permits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transparent {
    /// What may be forwarded to (required, not empty).
    pub allow: Vec<AllowRule>,
    /// Name servers for host names; `None`: `/etc/resolv.conf` (and `/etc/hosts`).
    pub resolvers: Option<Vec<SocketAddr>>,
}

impl Transparent {
    /// Whether a name rule allows `name` (lowercase, no trailing dot).
    pub fn allows_name(&self, name: &str) -> bool {
        self.allow.iter().any(|r| match r {
            AllowRule::Name(n) => n == name,
            AllowRule::Suffix(s) => name.len() > s.len() && name.ends_with(s.as_str()),
            AllowRule::Net(..) => false,
        })
    }

    /// Whether a network rule allows `ip`.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow.iter().any(|r| match (r, ip) {
            (AllowRule::Net(IpAddr::V4(net), len), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
                u32::from(ip) & mask == u32::from(*net) & mask
            }
            (AllowRule::Net(IpAddr::V6(net), len), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(*len)).unwrap_or(0);
                u128::from(ip) & mask == u128::from(*net) & mask
            }
            _ => false,
        })
    }

    /// Whether the list has network rules (then names outside the name rules are resolved and
    /// their addresses checked).
    pub fn has_networks(&self) -> bool {
        self.allow.iter().any(|r| matches!(r, AllowRule::Net(..)))
    }
}

/// Checks a transparent upstream's `allow` and `resolvers` (upstream `i`). Errors are
/// `(key path, reason)`.
pub(crate) fn transparent(
    i: usize,
    allow: Option<&[String]>,
    resolvers: Option<&[String]>,
) -> Result<Transparent, (String, String)> {
    let key = |rest: &str| format!("upstream[{i}].{rest}");
    let list = match allow {
        None | Some([]) => {
            return Err((
                key("allow"),
                "is required with algorithm = \"transparent\": the hosts and networks \
                 requests may be forwarded to (e.g. [\"*.internal\", \"10.0.0.0/8\"]); \
                 without it ringlb would be an open forwarder"
                    .to_string(),
            ))
        }
        Some(list) => list,
    };
    let mut rules = Vec::with_capacity(list.len());
    for (j, entry) in list.iter().enumerate() {
        let e = entry.trim().to_ascii_lowercase();
        let bad = |why: &str| (key(&format!("allow[{j}]")), format!("`{entry}`: {why}"));
        if e == "*" || e.is_empty() {
            return Err(bad(
                "would allow every host (an open forwarder): name the hosts or networks",
            ));
        }
        let rule = if let Some((net, len)) = e.split_once('/') {
            let ip: IpAddr = net
                .parse()
                .map_err(|_| bad("not a network (`10.0.0.0/8`)"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len: u8 = len
                .parse()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| bad(&format!("the prefix length must be 0 to {max}")))?;
            if len == 0 {
                return Err(bad("/0 allows every address (an open forwarder)"));
            }
            AllowRule::Net(ip, len)
        } else if let Ok(ip) = e.parse::<IpAddr>() {
            AllowRule::Net(ip, if ip.is_ipv4() { 32 } else { 128 })
        } else if let Some(suffix) = e.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') {
                return Err(bad("a wildcard is `*.domain`"));
            }
            AllowRule::Suffix(format!(".{}", suffix.trim_end_matches('.')))
        } else {
            if e.contains(|c: char| c == '*' || c == '/' || c == ':' || c.is_whitespace()) {
                return Err(bad("not a host name, `*.domain` or a network"));
            }
            AllowRule::Name(e.trim_end_matches('.').to_string())
        };
        rules.push(rule);
    }
    let resolvers = match resolvers {
        None => None,
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (j, r) in list.iter().enumerate() {
                let addr = r
                    .parse::<SocketAddr>()
                    .or_else(|_| r.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| {
                        (
                            key(&format!("resolvers[{j}]")),
                            format!("`{r}` is not a name server address (`ip:port` or `ip`)"),
                        )
                    })?;
                out.push(addr);
            }
            if out.is_empty() {
                return Err((key("resolvers"), "must not be empty".to_string()));
            }
            Some(out)
        }
    };
    Ok(Transparent {
        allow: rules,
        resolvers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn upstream(discovery: &str) -> Result<Config, String> {
        let text = format!("[[upstream]]\nname = \"api\"\ndiscovery = {{ {discovery} }}\n");
        Config::from_toml_str(&text, "d.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn dns_defaults() {
        let c = upstream(r#"kind = "dns", name = "api.internal", port = 8080"#).unwrap();
        let u = &c.upstreams[0];
        assert!(u.peers.is_empty());
        let Some(Discovery::Dns(d)) = &u.discovery else {
            panic!("{:?}", u.discovery);
        };
        assert_eq!(d.record_type, DnsType::Any);
        assert_eq!(d.port, Some(8080));
        assert_eq!(d.refresh, None);
        assert_eq!(d.hold, Duration::from_secs(30));
        assert_eq!(d.hold_obsolete, Duration::ZERO);
        assert_eq!(d.resolvers, None);
        assert!(c.describe().contains(
            "  discovery  dns api.internal type any port 8080, refresh ttl (1000 ms..300000 ms), \
             resolvers /etc/resolv.conf, hold 30000 ms, hold_obsolete 0 ms, timeout 5000 ms\n"
        ));
    }

    #[test]
    fn srv_and_resolvers() {
        let c = upstream(
            r#"kind = "dns", name = "_http._tcp.api.service.consul", type = "srv",
               resolvers = ["127.0.0.1:8600", "::1"], refresh_ms = 500"#,
        )
        .unwrap();
        let Some(Discovery::Dns(d)) = &c.upstreams[0].discovery else {
            panic!();
        };
        assert_eq!(d.record_type, DnsType::Srv);
        assert_eq!(d.port, None);
        assert_eq!(d.refresh, Some(Duration::from_millis(500)));
        assert_eq!(
            d.resolvers,
            Some(vec![
                "127.0.0.1:8600".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ])
        );
    }

    #[test]
    fn errors_name_the_key() {
        for (text, want) in [
            (
                r#"name = "a""#,
                "key `upstream[0].discovery.kind`: is required",
            ),
            (r#"kind = "consul""#, "unknown discovery kind `consul`"),
            (
                r#"kind = "dns", port = 80"#,
                "key `upstream[0].discovery.name`: is required",
            ),
            (
                r#"kind = "dns", name = "a""#,
                "key `upstream[0].discovery.port`: is required",
            ),
            (
                r#"kind = "dns", name = "a", type = "srv", port = 80"#,
                "SRV records carry their own port",
            ),
            (
                r#"kind = "dns", name = "a", type = "mx", port = 1"#,
                "unknown record type `mx`",
            ),
            (
                r#"kind = "dns", name = "a", port = 70000"#,
                "between 1 and 65535",
            ),
            (
                r#"kind = "dns", name = "a", port = 1, resolvers = ["x"]"#,
                "key `upstream[0].discovery.resolvers[0]`: `x` is not a name server",
            ),
            (
                r#"kind = "dns", name = "a", port = 1, min_ttl_ms = 10, max_ttl_ms = 5"#,
                "must be at least min_ttl_ms",
            ),
            (
                r#"kind = "dns", name = "a", port = 1, socket = "/x""#,
                "key `upstream[0].discovery.socket`: belongs to kind = \"docker\"",
            ),
            (
                r#"kind = "docker", port_label = "p""#,
                "discovery.label`: is required",
            ),
            (
                r#"kind = "docker", label = "l""#,
                "discovery.port_label`: is required",
            ),
            (
                r#"kind = "docker", label = "l", port_label = "p", name = "x""#,
                "belongs to kind = \"dns\"",
            ),
        ] {
            let e = upstream(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn docker_defaults() {
        let c = upstream(
            r#"kind = "docker", label = "ringlb.upstream=api", port_label = "ringlb.port""#,
        )
        .unwrap();
        let Some(Discovery::Docker(d)) = &c.upstreams[0].discovery else {
            panic!();
        };
        assert_eq!(d.socket, PathBuf::from("/var/run/docker.sock"));
        assert_eq!(d.network, "bridge");
        assert_eq!(d.refresh, Duration::from_secs(10));
    }

    #[test]
    fn no_peers_and_no_discovery_is_an_error() {
        let e = Config::from_toml_str("[[upstream]]\nname = \"api\"\n", "d.toml").unwrap_err();
        assert!(e.to_string().contains("must list at least one peer"), "{e}");
    }
}

#[cfg(test)]
mod transparent_tests {
    use super::*;
    use crate::config::Config;

    fn check(allow: &[&str]) -> Result<Transparent, (String, String)> {
        let list: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        transparent(0, Some(&list), None)
    }

    #[test]
    fn rules_match_names_suffixes_and_networks() {
        let t = check(&[
            "*.internal",
            "api.example.com",
            "10.0.0.0/8",
            "::1",
            "192.168.1.7",
        ])
        .unwrap();
        assert!(t.allows_name("db.internal"));
        assert!(t.allows_name("a.b.internal"));
        assert!(!t.allows_name("internal"));
        assert!(!t.allows_name("evilinternal"));
        assert!(t.allows_name("api.example.com"));
        assert!(!t.allows_name("x.api.example.com"));
        assert!(t.allows_ip("10.1.2.3".parse().unwrap()));
        assert!(!t.allows_ip("11.0.0.1".parse().unwrap()));
        assert!(t.allows_ip("::1".parse().unwrap()));
        assert!(t.allows_ip("192.168.1.7".parse().unwrap()));
        assert!(!t.allows_ip("192.168.1.8".parse().unwrap()));
        assert!(t.allows_ip("::ffff:10.0.0.1".parse().unwrap()));
        assert!(t.has_networks());
    }

    #[test]
    fn an_open_forwarder_is_refused() {
        for (allow, want) in [
            (&[][..], "is required with algorithm = \"transparent\""),
            (&["*"][..], "open forwarder"),
            (&["0.0.0.0/0"][..], "open forwarder"),
            (&["10.0.0.0/33"][..], "prefix length"),
            (&["a*b"][..], "not a host name"),
        ] {
            let e = check(allow).unwrap_err();
            assert!(e.1.contains(want), "{allow:?}: {e:?}");
        }
        let e = Config::from_toml_str(
            "[[upstream]]\nname = \"t\"\nalgorithm = \"transparent\"\n",
            "t.toml",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("key `upstream[0].allow`: is required"),
            "{e}"
        );
        let e = Config::from_toml_str(
            "[[upstream]]\nname = \"t\"\nalgorithm = \"transparent\"\nallow = [\"*.x\"]\n\
             peers = [{ address = \"127.0.0.1:1\" }]\n",
            "t.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("upstream[0].peers"), "{e}");
        let e = Config::from_toml_str(
            "[[upstream]]\nname = \"t\"\nallow = [\"*.x\"]\npeers = [{ address = \"127.0.0.1:1\" }]\n",
            "t.toml",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("of algorithm = \"transparent\" only"),
            "{e}"
        );
    }

    #[test]
    fn a_transparent_upstream_validates() {
        let c = Config::from_toml_str(
            "[[upstream]]\nname = \"t\"\nalgorithm = \"transparent\"\n\
             allow = [\"*.internal\", \"10.0.0.0/8\"]\n",
            "t.toml",
        )
        .unwrap();
        let t = c.upstreams[0].transparent.as_ref().expect("transparent");
        assert_eq!(t.allow.len(), 2);
        assert!(c.upstreams[0].peers.is_empty());
        assert_eq!(c.upstreams[0].algorithm_name(), "transparent");
        assert!(c.describe().contains("  algorithm  transparent\n"));
        assert!(
            c.describe()
                .contains("transparent, allow *.internal 10.0.0.0/8"),
            "{}",
            c.describe()
        );
    }
}

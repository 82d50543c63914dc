//! DNS lookups of one upstream's `discovery = { kind = "dns", … }` with hickory-resolver, on
//! the resolver thread's tokio runtime: A, AAAA, both, or SRV (each target resolved from the
//! answer's additional records, else looked up), turned into an [`Answer`].
//!
//! SRV mapping (RFC 2782): the records with the lowest priority value are the primaries, with
//! their SRV weight as peer weight (the ranges agree: 0–65535); a weight-0 record among
//! primaries with weights is a backup of weight 1 (eligible only as a last resort); when every
//! primary has weight 0 they share the load equally (weight 1 each). Records with a higher
//! priority value are backups (weight = SRV weight, at least 1). A target of `.` (service
//! decidedly not available) adds nothing.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use hickory_resolver::TokioResolver;

use super::set::{Answer, Found};
use crate::config::{DnsDiscovery, DnsType};

/// Builds the resolver `spec` asks for: its `resolvers`, or `/etc/resolv.conf`. No cache (the
/// refresh follows the TTL itself), one attempt per look (the next refresh is the retry).
pub(crate) fn resolver(spec: &DnsDiscovery) -> Result<TokioResolver, String> {
    let provider = hickory_resolver::net::runtime::TokioRuntimeProvider::default();
    let mut builder = match &spec.resolvers {
        Some(list) => {
            let servers = list
                .iter()
                .map(|a| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = a.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = a.port();
                    NameServerConfig::new(a.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
        }
        None => TokioResolver::builder(provider)
            .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?,
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.cache_size = 0;
    opts.timeout = spec.timeout;
    opts.attempts = 0;
    if spec.resolvers.is_some() {
        opts.use_hosts_file = ResolveHosts::Never;
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the resolver: {e}"))
}

/// One look at `spec`'s records.
pub(crate) async fn lookup(r: &TokioResolver, spec: &DnsDiscovery) -> Answer {
    let port = spec.port.unwrap_or(0);
    match spec.record_type {
        DnsType::A => addresses(
            r.lookup(spec.name.as_str(), RecordType::A).await,
            port,
            &spec.name,
        ),
        DnsType::Aaaa => addresses(
            r.lookup(spec.name.as_str(), RecordType::AAAA).await,
            port,
            &spec.name,
        ),
        DnsType::Any => {
            let (a, aaaa) = tokio::join!(
                r.lookup(spec.name.as_str(), RecordType::A),
                r.lookup(spec.name.as_str(), RecordType::AAAA)
            );
            match (
                addresses(a, port, &spec.name),
                addresses(aaaa, port, &spec.name),
            ) {
                (Answer::Failed(e), _) | (_, Answer::Failed(e)) => Answer::Failed(e),
                (Answer::Empty, other) | (other, Answer::Empty) => other,
                (
                    Answer::Records { mut found, ttl: t1 },
                    Answer::Records {
                        found: more,
                        ttl: t2,
                    },
                ) => {
                    found.extend(more);
                    Answer::Records {
                        found,
                        ttl: min_ttl(t1, t2),
                    }
                }
            }
        }
        DnsType::Srv => srv(r, spec).await,
    }
}

/// The smaller of two optional TTLs.
fn min_ttl(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A response code as DNS tools print it (`SERVFAIL`, `NXDOMAIN`, `REFUSED`).
fn rcode(code: ResponseCode) -> String {
    match code {
        ResponseCode::ServFail => "SERVFAIL".to_string(),
        ResponseCode::NXDomain => "NXDOMAIN".to_string(),
        ResponseCode::Refused => "REFUSED".to_string(),
        ResponseCode::FormErr => "FORMERR".to_string(),
        ResponseCode::NotImp => "NOTIMP".to_string(),
        other => format!("response code {}", u16::from(other)),
    }
}

/// What a failed lookup means: `Ok(())` for a valid answer without records, else the reason.
fn classify(e: &NetError) -> Result<(), String> {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(nr)) => match nr.response_code {
            ResponseCode::NoError => Ok(()),
            code => Err(rcode(code)),
        },
        NetError::Dns(DnsError::ResponseCode(code)) => Err(rcode(*code)),
        NetError::Timeout => Err("timeout".to_string()),
        other => Err(other.to_string()),
    }
}

/// The A/AAAA records of one lookup of `name` as peers on `port`, named `name`.
fn addresses(
    result: Result<hickory_resolver::lookup::Lookup, NetError>,
    port: u16,
    name: &str,
) -> Answer {
    let name = name.trim_end_matches('.');
    let lookup = match result {
        Ok(l) => l,
        Err(e) => {
            return match classify(&e) {
                Ok(()) => Answer::Empty,
                Err(why) => Answer::Failed(why),
            }
        }
    };
    let mut found = Vec::new();
    let mut ttl = None;
    for record in lookup.answers() {
        let Some(ip) = ip_of(record) else {
            continue;
        };
        ttl = min_ttl(ttl, Some(record.ttl));
        let kind = if ip.is_ipv4() { "A" } else { "AAAA" };
        found.push(Found {
            addr: SocketAddr::new(ip, port),
            weight: 1,
            backup: false,
            record: format!("{} {kind} {ip} ttl {}", record.name, record.ttl),
            name: name.to_string(),
        });
    }
    if found.is_empty() {
        Answer::Empty
    } else {
        Answer::Records { found, ttl }
    }
}

/// The address an A or AAAA record holds.
fn ip_of(record: &Record) -> Option<IpAddr> {
    match &record.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
        _ => None,
    }
}

/// One SRV record with the addresses of its target.
#[derive(Debug, Clone)]
pub(crate) struct SrvTarget {
    /// SRV priority (lower is preferred).
    pub priority: u16,
    /// SRV weight.
    pub weight: u16,
    /// SRV port.
    pub port: u16,
    /// The target name as written in the record.
    pub target: String,
    /// The target's addresses.
    pub ips: Vec<IpAddr>,
}

/// The SRV records of `spec.name`, targets resolved, mapped to peers (see the module doc).
async fn srv(r: &TokioResolver, spec: &DnsDiscovery) -> Answer {
    let lookup = match r.lookup(spec.name.as_str(), RecordType::SRV).await {
        Ok(l) => l,
        Err(e) => {
            return match classify(&e) {
                Ok(()) => Answer::Empty,
                Err(why) => Answer::Failed(why),
            }
        }
    };
    let mut ttl = None;
    let mut targets = Vec::new();
    for record in lookup.answers() {
        let RData::SRV(s) = &record.data else {
            continue;
        };
        ttl = min_ttl(ttl, Some(record.ttl));
        if s.target.is_root() || s.port == 0 {
            continue;
        }
        // Addresses the server sent along (Consul and CoreDNS do), else a lookup.
        let mut ips: Vec<IpAddr> = lookup
            .additionals()
            .iter()
            .filter(|a| a.name == s.target)
            .filter_map(|a| {
                ttl = min_ttl(ttl, Some(a.ttl));
                ip_of(a)
            })
            .collect();
        if ips.is_empty() {
            match r.lookup_ip(s.target.clone()).await {
                Ok(found) => {
                    for a in found.as_lookup().answers() {
                        if let Some(ip) = ip_of(a) {
                            ttl = min_ttl(ttl, Some(a.ttl));
                            ips.push(ip);
                        }
                    }
                }
                Err(e) => match classify(&e) {
                    Ok(()) => {}
                    Err(why) => {
                        return Answer::Failed(format!("SRV target {}: {why}", s.target));
                    }
                },
            }
        }
        targets.push(SrvTarget {
            priority: s.priority,
            weight: s.weight,
            port: s.port,
            target: s.target.to_string(),
            ips,
        });
    }
    let found = srv_peers(&targets);
    if found.is_empty() {
        Answer::Empty
    } else {
        Answer::Records { found, ttl }
    }
}

/// Maps SRV records to peers: the lowest priority value is primary, higher ones backups;
/// weight → peer weight, weight 0 a last-resort backup (see the module doc).
pub(crate) fn srv_peers(targets: &[SrvTarget]) -> Vec<Found> {
    let Some(primary) = targets
        .iter()
        .filter(|t| !t.ips.is_empty())
        .map(|t| t.priority)
        .min()
    else {
        return Vec::new();
    };
    let primaries_weighted = targets
        .iter()
        .any(|t| t.priority == primary && t.weight > 0 && !t.ips.is_empty());
    let mut out = Vec::new();
    for t in targets {
        let (weight, backup) = if t.priority == primary {
            match (t.weight, primaries_weighted) {
                (0, true) => (1, true),
                (0, false) => (1, false),
                (w, _) => (u32::from(w), false),
            }
        } else {
            (u32::from(t.weight).max(1), true)
        };
        for ip in &t.ips {
            out.push(Found {
                addr: SocketAddr::new(*ip, t.port),
                weight,
                backup,
                record: format!(
                    "SRV {} {} {} {} -> {ip}",
                    t.priority, t.weight, t.port, t.target
                ),
                // RFC 2782 and RFC 6125 practice: the certificate names the target.
                name: t.target.trim_end_matches('.').to_string(),
            });
        }
    }
    out
}

/// How long to wait before building a resolver again after it could not be built.
pub(crate) const REBUILD_WAIT: Duration = Duration::from_secs(5);

/// The addresses of `name` (A, then AAAA if it has none) and their smallest TTL, for
/// transparent mode.
pub(crate) async fn lookup_ip(r: &TokioResolver, name: &str) -> super::lookup::Resolved {
    match r.lookup_ip(name).await {
        Ok(found) => {
            let mut ips = Vec::new();
            let mut ttl = None;
            for a in found.as_lookup().answers() {
                if let Some(ip) = ip_of(a) {
                    ttl = min_ttl(ttl, Some(a.ttl));
                    ips.push(ip);
                }
            }
            if ips.is_empty() {
                Err(format!("{name}: no addresses"))
            } else {
                Ok((ips, ttl.unwrap_or(0)))
            }
        }
        Err(e) => match classify(&e) {
            Ok(()) => Err(format!("{name}: no addresses")),
            Err(why) => Err(format!("{name}: {why}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(priority: u16, weight: u16, port: u16, ip: &str) -> SrvTarget {
        SrvTarget {
            priority,
            weight,
            port,
            target: format!("{ip}.example."),
            ips: vec![ip.parse().unwrap()],
        }
    }

    fn mapped(targets: &[SrvTarget]) -> Vec<(String, u32, bool)> {
        srv_peers(targets)
            .into_iter()
            .map(|f| (f.addr.to_string(), f.weight, f.backup))
            .collect()
    }

    #[test]
    fn lowest_priority_is_primary_higher_are_backups() {
        let got = mapped(&[
            t(20, 5, 81, "10.0.0.3"),
            t(10, 60, 80, "10.0.0.1"),
            t(10, 20, 80, "10.0.0.2"),
        ]);
        assert_eq!(
            got,
            [
                ("10.0.0.3:81".to_string(), 5, true),
                ("10.0.0.1:80".to_string(), 60, false),
                ("10.0.0.2:80".to_string(), 20, false),
            ]
        );
    }

    #[test]
    fn weight_zero_is_a_last_resort_unless_all_are_zero() {
        let got = mapped(&[t(1, 10, 80, "10.0.0.1"), t(1, 0, 80, "10.0.0.2")]);
        assert_eq!(
            got,
            [
                ("10.0.0.1:80".to_string(), 10, false),
                ("10.0.0.2:80".to_string(), 1, true),
            ]
        );
        let got = mapped(&[
            t(1, 0, 80, "10.0.0.1"),
            t(1, 0, 80, "10.0.0.2"),
            t(2, 0, 80, "10.0.0.3"),
        ]);
        assert_eq!(
            got,
            [
                ("10.0.0.1:80".to_string(), 1, false),
                ("10.0.0.2:80".to_string(), 1, false),
                ("10.0.0.3:80".to_string(), 1, true),
            ]
        );
    }

    #[test]
    fn a_priority_without_addresses_does_not_count_as_primary() {
        let mut dead = t(1, 10, 80, "10.0.0.1");
        dead.ips.clear();
        let got = mapped(&[dead, t(5, 3, 80, "10.0.0.2")]);
        assert_eq!(got, [("10.0.0.2:80".to_string(), 3, false)]);
    }
}

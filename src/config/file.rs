//! The config file format: serde structs that mirror the TOML exactly.
//!
//! Every struct rejects unknown keys (`deny_unknown_fields`), every duration is a `*_ms:
//! Option<u64>`, and every optional key is an `Option` so `validate.rs` alone decides the
//! defaults and checks ranges (where it can name the key path in its errors). Nothing here
//! checks values beyond their TOML type, except `workers`, whose shape (`"auto"` or an integer)
//! is decided while deserializing.
//!
//! Every `[[upstream]]` key is declared; the failover keys' structs (`retry`,
//! `circuit_breaker`) live in `failover.rs`, the health keys' (`health`, `passive`) in
//! `health.rs`, the balancing keys' validation in `balance.rs`.
use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::failover::{BreakerFile, RetryFile};

/// ConfigFile is the whole file: `[server]`, `[timeouts]`, `[limits]`, `[log]`,
/// `[[upstream]]`, `[[route]]`. Every table is optional; `[[upstream]]` is required by
/// validation.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    /// The `[server]` table.
    #[serde(default)]
    pub server: ServerFile,
    /// The `[timeouts]` table: global defaults.
    #[serde(default)]
    pub timeouts: TimeoutsFile,
    /// The `[limits]` table.
    #[serde(default)]
    pub limits: LimitsFile,
    /// The `[log]` table (the access log; its keys are in `log.rs`).
    #[serde(default)]
    pub log: super::log::LogFile,
    /// The `[[upstream]]` array of tables, in file order.
    #[serde(default)]
    pub upstream: Vec<UpstreamFile>,
    /// The `[[route]]` array of tables, in file order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteFile>,
}

/// ServerFile is the `[server]` table.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerFile {
    /// `listen = ["0.0.0.0:8080", { address = "0.0.0.0:443", tls = { … } }]`: socket
    /// addresses, plain or TLS (see `tls.rs`). Default `["0.0.0.0:8080"]`.
    pub listen: Option<Vec<super::tls::ListenFile>>,
    /// `workers = "auto" | N`. Default `auto`.
    pub workers: Option<WorkersFile>,
    /// `cpus = "0-3,8"`: a Linux cpulist. Excludes `numa_node`.
    pub cpus: Option<String>,
    /// `numa_node = N`: pin to that node's CPUs. Excludes `cpus`.
    pub numa_node: Option<u64>,
    /// `admin = "127.0.0.1:9900"`; `""` disables. Default `127.0.0.1:9900`.
    pub admin: Option<String>,
    /// Bearer token the admin endpoint's writing requests need. Required with a non-loopback
    /// `admin`.
    pub admin_token: Option<String>,
    /// Default 10000.
    pub shutdown_timeout_ms: Option<u64>,
    /// Default 4096.
    pub backlog: Option<u64>,
    /// `driver = "auto" | "io_uring" | "epoll"`. Default `auto`.
    pub driver: Option<DriverFile>,
    /// Per shard. Default 65536.
    pub max_connections: Option<u64>,
    /// Default 1024; 256..=32768.
    pub uring_entries: Option<u64>,
    /// `uring_taskrun = "defer" | "coop" | "interrupt"`. Default `defer`.
    pub uring_taskrun: Option<UringTaskrunFile>,
    /// Capacity of the shards → control thread observation channel. Default 4096.
    pub observation_queue: Option<u64>,
    /// `tcp = { … }`: socket options of every listener (see `protect.rs`).
    pub tcp: Option<super::protect::TcpFile>,
    /// `h2 = { … }`: HTTP/2 towards clients (keys in `h2.rs`).
    pub h2: Option<super::h2::H2File>,
    /// `splice = true`: large response bodies move between plain TCP sockets through a pipe.
    pub splice: Option<bool>,
}

/// WorkersFile is `workers = "auto"` or `workers = N` as written (N is range-checked later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkersFile {
    /// `"auto"`.
    Auto,
    /// An integer as written (may be 0 or negative; validation rejects those with the key path).
    Count(i64),
}

impl<'de> Deserialize<'de> for WorkersFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct WorkersVisitor;

        impl Visitor<'_> for WorkersVisitor {
            type Value = WorkersFile;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"auto\" or an integer >= 1")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<WorkersFile, E> {
                if v == "auto" {
                    Ok(WorkersFile::Auto)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<WorkersFile, E> {
                Ok(WorkersFile::Count(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<WorkersFile, E> {
                i64::try_from(v)
                    .map(WorkersFile::Count)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
        }

        deserializer.deserialize_any(WorkersVisitor)
    }
}

impl Serialize for WorkersFile {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            WorkersFile::Auto => serializer.serialize_str("auto"),
            WorkersFile::Count(n) => serializer.serialize_i64(*n),
        }
    }
}

/// DriverFile is `driver = "auto" | "io_uring" | "epoll"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DriverFile {
    /// `"auto"`.
    Auto,
    /// `"io_uring"`.
    IoUring,
    /// `"epoll"`.
    Epoll,
}

/// UringTaskrunFile is `uring_taskrun = "defer" | "coop" | "interrupt"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum UringTaskrunFile {
    /// `"defer"`.
    Defer,
    /// `"coop"`.
    Coop,
    /// `"interrupt"`.
    Interrupt,
}

/// TimeoutsFile is `[timeouts]`, and an upstream's `timeouts = { … }` overrides.
#[derive(Debug, Default, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TimeoutsFile {
    /// Upstream TCP connect.
    pub connect_ms: Option<u64>,
    /// Complete client request head.
    pub request_header_ms: Option<u64>,
    /// Each upstream read.
    pub upstream_read_ms: Option<u64>,
    /// Each upstream write.
    pub upstream_write_ms: Option<u64>,
    /// Idle keep-alive client connection.
    pub client_idle_ms: Option<u64>,
    /// Wait for the upstream's `100 Continue` before sending one to the client.
    pub expect_continue_ms: Option<u64>,
    /// A tunnel with no bytes either way for this long is closed.
    pub tunnel_idle_ms: Option<u64>,
    /// A waiting connection parks (gives its buffers back) after this; 0 parks at once.
    pub client_park_ms: Option<u64>,
}

/// LimitsFile is `[limits]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsFile {
    /// Default 16384; 1024..=1 MiB.
    pub max_header_bytes: Option<u64>,
    /// Default 8192; at most `max_header_bytes`.
    pub max_request_line_bytes: Option<u64>,
    /// Default unlimited.
    pub max_body_bytes: Option<u64>,
    /// Default 16; at least 1.
    pub max_interim_responses: Option<u64>,
    /// Default 65536; at least 64.
    pub max_interim_bytes: Option<u64>,
    /// Default 30000.
    pub lingering_time_ms: Option<u64>,
    /// Default 5000.
    pub lingering_timeout_ms: Option<u64>,
    /// Default 64 MiB.
    pub lingering_max_bytes: Option<u64>,
}

/// UpstreamFile is one `[[upstream]]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamFile {
    /// Required, unique, non-empty.
    pub name: String,
    /// Default `round_robin`; checked against the known names in validation.
    pub algorithm: Option<String>,
    /// `hash_key = "header:X-User-Id"`; required by `consistent_hash`/`maglev` (see
    /// `config/balance.rs` for these five balancing keys).
    pub hash_key: Option<String>,
    /// consistent_hash/ip_hash ring points per unit of weight. Default 160.
    pub points: Option<u64>,
    /// Bounded-load factor (> 1.0) of the hashing algorithms. Default none.
    pub balance_factor: Option<f64>,
    /// maglev table size, a prime. Default 65537.
    pub table_size: Option<u64>,
    /// peak_ewma decay time constant. Default 10000.
    pub ewma_decay_ms: Option<u64>,
    /// `peers = [{ address = "…", weight = 1, backup = false, region = "…" }, …]`; a peer with
    /// nothing but its address may be written as that string: `peers = ["10.0.0.1:80", …]`.
    #[serde(default, deserialize_with = "peer_list")]
    pub peers: Vec<PeerFile>,
    /// Per-key overrides of the global `[timeouts]`.
    pub timeouts: Option<TimeoutsFile>,
    /// `pool = { max_idle_per_peer = 64, idle_timeout_ms = 30000 }`.
    pub pool: Option<PoolFile>,
    /// `retry = { max_retries = 3, on = ["connect_failure", "503"], … }`.
    pub retry: Option<RetryFile>,
    /// `circuit_breaker = { failures = 5, open_ms = 30000, … }`.
    pub circuit_breaker: Option<BreakerFile>,
    /// `health = { kind = "http", … }`: the active check (see `health.rs`).
    pub health: Option<super::health::HealthFile>,
    /// `passive = { consecutive_failures = 5, … }`: outlier ejection.
    pub passive: Option<super::health::PassiveFile>,
    /// Prefer peers of this region while any is eligible.
    pub local_region: Option<String>,
    /// `"fail"` or `"try_all"`.
    pub when_all_down: Option<String>,
    /// `upgrade = { allow = ["websocket"] }`: protocol upgrades tunnelled to this upstream.
    pub upgrade: Option<UpgradeFile>,
    /// `discovery = { kind = "dns", … }`: peers from DNS or Docker (see `discovery.rs`).
    pub discovery: Option<super::discovery::DiscoveryFile>,
    /// `allow = ["*.internal", "10.0.0.0/8"]`: where `algorithm = "transparent"` may forward.
    pub allow: Option<Vec<String>>,
    /// `resolvers = ["10.0.0.2:53"]`: name servers of `algorithm = "transparent"`.
    pub resolvers: Option<Vec<String>>,
    /// Default `max_conns` of the peers (see `protect.rs` for these protection keys).
    pub max_conns: Option<u64>,
    /// `queue = { max = 1000, timeout_ms = 5000 }`.
    pub queue: Option<super::protect::QueueFile>,
    /// `rate = { requests_per_sec, burst, key }`: the whole group's, or per client key.
    pub rate: Option<super::protect::RateFile>,
    /// Default `slow_start_ms` of the peers.
    pub slow_start_ms: Option<u64>,
    /// `"header:NAME"` or `"client_ip"`: where a request's region comes from.
    pub region_from: Option<String>,
    /// `[[upstream.region_map]]`: client address prefixes → region.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub region_map: Vec<super::protect::RegionMapFile>,
    /// `region_fallback = { "eu-1" = ["eu-2", "us-1"] }`.
    pub region_fallback: Option<std::collections::BTreeMap<String, Vec<String>>>,
    /// `tcp = { … }`: socket options of the connections to the peers.
    pub tcp: Option<super::protect::TcpFile>,
    /// `tls = { enabled = true, sni, verify, ca, client_cert, client_key, alpn }`: speak TLS
    /// to every peer (see `tls.rs`).
    pub tls: Option<super::tls::UpstreamTlsFile>,
    /// `protocol = "http1" | "h2c" | "h2" | "auto"` (checked in `protocol.rs`).
    pub protocol: Option<String>,
}

/// UpgradeFile is an upstream's `upgrade = { … }`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpgradeFile {
    /// Protocol tokens (`"websocket"`), or `["*"]` for any. Default `["websocket"]`.
    pub allow: Option<Vec<String>>,
}

/// Deserializes an upstream's `peers`: each entry an inline table ([`PeerFile`]) or, for a
/// peer with no key but its address, the address string alone.
fn peer_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<PeerFile>, D::Error> {
    /// One entry of the list.
    struct Entry(PeerFile);

    impl<'de> Deserialize<'de> for Entry {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct EntryVisitor;

            impl<'de> Visitor<'de> for EntryVisitor {
                type Value = PeerFile;

                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str(
                        "a peer: an \"ip:port\" or \"host:port\" string, or a table \
                         { address = \"…\", weight = …, … }",
                    )
                }

                fn visit_str<E: de::Error>(self, v: &str) -> Result<PeerFile, E> {
                    Ok(PeerFile {
                        address: v.to_string(),
                        ..PeerFile::default()
                    })
                }

                fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<PeerFile, A::Error> {
                    PeerFile::deserialize(de::value::MapAccessDeserializer::new(map))
                }
            }

            deserializer.deserialize_any(EntryVisitor).map(Entry)
        }
    }

    let entries = Vec::<Entry>::deserialize(deserializer)?;
    Ok(entries.into_iter().map(|e| e.0).collect())
}

/// PeerFile is one entry in an upstream's `peers`: an inline table, or its address alone.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PeerFile {
    /// `ip:port` or `host:port`.
    pub address: String,
    /// Default 1; 0 = drained.
    pub weight: Option<u32>,
    /// Default false.
    pub backup: Option<bool>,
    /// Optional label.
    pub region: Option<String>,
    /// Default false: `true` sends it no new requests (the admin API's `drain`).
    pub drain: Option<bool>,
    /// Requests in flight at most (whole process). Default: the upstream's `max_conns`.
    pub max_conns: Option<u64>,
    /// `rate = { requests_per_sec, burst }`: the peer's token bucket.
    pub rate: Option<super::protect::RateFile>,
    /// Ramp-up after the peer comes back. Default: the upstream's `slow_start_ms`.
    pub slow_start_ms: Option<u64>,
    /// Overrides of the upstream's timeouts (`connect_ms`, `upstream_read_ms`,
    /// `upstream_write_ms`) for this peer.
    pub timeouts: Option<TimeoutsFile>,
    /// Overrides of the upstream's `pool` for this peer.
    pub pool: Option<PoolFile>,
    /// This peer's own `tls = { … }`, replacing the upstream's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<super::tls::UpstreamTlsFile>,
}

/// PoolFile is an upstream's `pool = { … }`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PoolFile {
    /// Default 64; 0 disables pooling.
    pub max_idle_per_peer: Option<u64>,
    /// Default 30000; must be > 0.
    pub idle_timeout_ms: Option<u64>,
    /// A connection serves at most this many requests, then closes. Default unlimited.
    pub max_requests_per_conn: Option<u64>,
    /// A connection older than this is not reused. Default unlimited.
    pub max_conn_age_ms: Option<u64>,
}

/// RouteFile is one `[[route]]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteFile {
    /// Host to match (no port).
    pub host: Option<String>,
    /// The TLS server name (SNI) the client sent; only TLS connections match.
    pub sni: Option<String>,
    /// Path prefix; must start with `/`.
    pub path_prefix: Option<String>,
    /// `"Name: value"`.
    pub header: Option<String>,
    /// Name of an `[[upstream]]`.
    pub upstream: String,
}

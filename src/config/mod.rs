//! Configuration: the TOML file format and the validated runtime [`Config`].
//!
//! Two layers (as monolake does it): `file.rs` holds serde structs that mirror the file exactly
//! (`*_ms: Option<u64>`, unknown keys rejected); `validate.rs` converts them into the checked
//! runtime types below (`Duration`s, resolved socket addresses, parsed CPU sets). Every error
//! names the file, the key and the reason ([`ConfigError`]).

mod cpus;
mod file;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub use cpus::{parse_cpu_list, CpuSetError};

/// Config is the validated, resolved runtime configuration of a whole ringlb process.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where this config came from (a file path, or `<demo>`/`<string>`), for messages.
    pub source: String,
    /// Process-wide settings: listeners, shards, admin, shutdown.
    pub server: ServerConfig,
    /// Global timeout defaults (each upstream has its own resolved copy too).
    pub timeouts: Timeouts,
    /// Request limits that apply to every downstream connection.
    pub limits: Limits,
    /// Upstream groups, in file order; routes refer to them by index.
    pub upstreams: Vec<UpstreamConfig>,
    /// Routes, in file order; the first match wins. Empty means "everything to upstream 0".
    pub routes: Vec<RouteConfig>,
}

/// ServerConfig is the `[server]` table.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Addresses every shard listens on (each shard binds its own SO_REUSEPORT socket).
    pub listen: Vec<SocketAddr>,
    /// How many shards to run: `auto` = one per allowed CPU. Default `auto`.
    pub workers: Workers,
    /// CPUs to pin shards to, from `cpus = "0-3,8"` or `numa_node = N`; `None` = the
    /// process's allowed set (sched_getaffinity).
    pub cpus: Option<Vec<usize>>,
    /// Admin endpoint address. Default `127.0.0.1:9900`; `None` when `admin = ""`.
    pub admin: Option<SocketAddr>,
    /// How long in-flight requests may take to finish after a shutdown signal. Default 10 s.
    pub shutdown_timeout: Duration,
    /// Listen backlog of each listener. Default 4096.
    pub backlog: i32,
    /// Which I/O driver to run. Default `auto`.
    pub driver: Driver,
    /// Open downstream connections a shard accepts at most; beyond it the shard stops
    /// accepting until one closes. Default 65536.
    pub max_connections: usize,
    /// io_uring submission queue entries per shard. Default 1024.
    pub uring_entries: u32,
}

/// Workers is how many shards run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// One per CPU in the pin set (or the process's allowed set).
    Auto,
    /// Exactly this many (>= 1).
    Count(usize),
}

/// Driver is the monoio I/O driver a shard runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// io_uring when the kernel allows it, else epoll (logged once).
    Auto,
    /// io_uring or a clear startup error.
    IoUring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

/// Timeouts is the `[timeouts]` table (and per-upstream overrides of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Upstream TCP connect. Default 1 s.
    pub connect: Duration,
    /// The client must send a complete request head within this (slowloris). Default 10 s.
    pub request_header: Duration,
    /// Upstream must send (each read of) its response within this → else 504. Default 30 s.
    pub upstream_read: Duration,
    /// Each write to the upstream must complete within this. Default 30 s.
    pub upstream_write: Duration,
    /// Idle keep-alive client connections are closed after this. Default 60 s.
    pub client_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_millis(1000),
            request_header: Duration::from_millis(10_000),
            upstream_read: Duration::from_millis(30_000),
            upstream_write: Duration::from_millis(30_000),
            client_idle: Duration::from_millis(60_000),
        }
    }
}

/// Limits is the `[limits]` table: what a client request may be at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request head (request line + headers) size → 431. Default 16 KiB.
    pub max_header_bytes: usize,
    /// Request line size → 414. Default 8 KiB.
    pub max_request_line_bytes: usize,
    /// Request body size → 413. Default unlimited.
    pub max_body_bytes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            max_request_line_bytes: 8 * 1024,
            max_body_bytes: None,
        }
    }
}

/// Algorithm is the load-balancing algorithm of an upstream group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Plain rotation over peers, ignoring weights.
    RoundRobin,
    /// nginx's smooth weighted round robin.
    SmoothWeighted,
}

impl Algorithm {
    /// The config-file name of this algorithm.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::SmoothWeighted => "smooth_weighted",
        }
    }
}

/// UpstreamConfig is one `[[upstream]]` group.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Unique name; routes refer to it.
    pub name: String,
    /// Balancing algorithm. Default `round_robin`.
    pub algorithm: Algorithm,
    /// Peers in file order; a peer's index here is its `PeerId` within the group.
    pub peers: Vec<PeerConfig>,
    /// Global `[timeouts]` with this upstream's `timeouts = { … }` overrides applied.
    pub timeouts: Timeouts,
    /// Idle connection pool settings.
    pub pool: PoolConfig,
}

/// PeerConfig is one peer of an upstream group.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The address as written (`10.0.0.1:8080` or `api-b.internal:8080`), for logs and status.
    pub address: String,
    /// The address resolved at start.
    pub addr: SocketAddr,
    /// Relative weight. Default 1; 0 = drained (no new requests).
    pub weight: u32,
    /// Backup peers only get traffic when no primary is eligible. Default false.
    pub backup: bool,
    /// Optional region label.
    pub region: Option<String>,
}

/// PoolConfig is an upstream's `pool = { … }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Idle connections kept per peer per shard. Default 64.
    pub max_idle_per_peer: usize,
    /// Idle connections older than this are closed. Default 30 s.
    pub idle_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_idle_per_peer: 64,
            idle_timeout: Duration::from_millis(30_000),
        }
    }
}

/// RouteConfig is one `[[route]]`: all present conditions must match.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Host header (port stripped) compared case-insensitively.
    pub host: Option<String>,
    /// Request path must start with this.
    pub path_prefix: Option<String>,
    /// Header name (case-insensitive) and exact value.
    pub header: Option<(String, String)>,
    /// Index into `Config::upstreams`.
    pub upstream: usize,
}

/// ConfigError is a configuration problem: the file, the key and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or `<string>`) the config came from.
    pub file: String,
    /// The key path, e.g. `upstream[0].peers[1].address`; empty for file-level errors.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.reason)
        } else {
            write!(f, "{}: key `{}`: {}", self.file, self.key, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: source.clone(),
            key: String::new(),
            reason: format!("cannot read file: {e}"),
        })?;
        Config::from_toml_str(&text, &source)
    }

    /// Parses and validates config text; `source` names it in errors.
    pub fn from_toml_str(text: &str, source: &str) -> Result<Config, ConfigError> {
        let file: file::ConfigFile = toml::from_str(text).map_err(|e| ConfigError {
            file: source.to_string(),
            key: String::new(),
            reason: e.to_string().trim_end().to_string(),
        })?;
        validate::validate(file, source)
    }

    /// One entry per shard to run: the CPU it is pinned to (`None` = no CPU known).
    pub fn shard_cpus(&self) -> Vec<Option<usize>> {
        let allowed = self.server.cpus.clone().unwrap_or_else(cpus::allowed_cpus);
        let n = match self.server.workers {
            Workers::Count(n) => n,
            Workers::Auto => allowed.len().max(1),
        };
        (0..n)
            .map(|i| allowed.get(i % allowed.len().max(1)).copied())
            .collect()
    }

    /// The index of the upstream named `name`.
    pub fn upstream_index(&self, name: &str) -> Option<usize> {
        self.upstreams.iter().position(|u| u.name == name)
    }
}

//! Configuration: the TOML file format and the validated runtime [`Config`].
//!
//! Two layers (as monolake does it): `file.rs` holds serde structs that mirror the file exactly
//! (`*_ms: Option<u64>`, unknown keys rejected); `validate.rs` converts them into the checked
//! runtime types below (`Duration`s, resolved socket addresses, parsed CPU sets). Every error
//! names the file, the key and the reason ([`ConfigError`]); so does every warning about a valid
//! but probably mistaken setting ([`Config::warnings`], `warnings.rs`).

mod balance;
mod cpus;
mod discovery;
mod failover;
pub(crate) mod file;
mod h2;
mod health;
mod locate;
mod log;
mod protect;
mod protocol;
mod tls;
mod validate;
mod warnings;
pub(crate) use validate::MAX_WEIGHT;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub(crate) use crate::balance::{Algorithm, BalanceParams, HashKey};
pub(crate) use crate::failover::{BreakerConfig, RetryPolicy};
pub use cpus::allowed_cpus;
pub(crate) use cpus::format_cpu_list;
pub use discovery::{AllowRule, Discovery, DnsDiscovery, DnsType, DockerDiscovery, Transparent};
pub use h2::H2Config;
pub use health::{
    CheckKind, HealthCheck, HttpCheck, PassiveHealth, ProbeMethod, StartState, StatusSet,
    WhenAllDown,
};
pub use log::{AccessFormat, AccessTarget, LogConfig};
pub use protect::{
    Cidr, ClientKey, ClientRate, Keepalive, PeerLimits, QueueConfig, RateConfig, RegionFrom,
    RegionPolicy, TcpOptions,
};
pub use protocol::UpstreamProtocol;
pub use warnings::ConfigWarning;

crate::balance::index_newtype!(
    /// GroupId is an upstream group's index in config order: the index of
    /// [`Config::upstreams`], of a shard's groups, and of the control thread's health state.
    GroupId
);

crate::balance::index_newtype!(
    /// ShardId is a shard's index: its position among the shards the server starts (thread
    /// `ringlb-shard-N`), the index of the control thread's per-shard channels and counters.
    ShardId
);

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
    /// The `[log]` table: the access log (off by default).
    pub log: LogConfig,
    /// Upstream groups, in file order; routes refer to them by index.
    pub upstreams: Vec<UpstreamConfig>,
    /// Routes, in file order; the first match wins. Empty means "everything to upstream 0"
    /// (several upstreams and no routes is valid: the others then get no traffic).
    pub routes: Vec<RouteConfig>,
    /// The file as written (what `GET /config` shows, and what admin API changes edit and
    /// validate again).
    pub(crate) file: std::sync::Arc<file::ConfigFile>,
}

/// ServerConfig is the `[server]` table.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Addresses every shard listens on (each shard binds its own SO_REUSEPORT socket).
    pub listen: Vec<SocketAddr>,
    /// The listeners of `listen` that terminate TLS (`{ address, tls = { … } }`), by their
    /// address as configured, with their certificates loaded.
    pub tls: Vec<(SocketAddr, std::sync::Arc<crate::tls::ServerTls>)>,
    /// The listeners of `listen` with `h2 = false` (HTTP/1.1 only), by their address as
    /// configured.
    pub h2_off: Vec<SocketAddr>,
    /// The listeners of `listen` with `http1 = false` (HTTP/2 only), by their address as
    /// configured.
    pub http1_off: Vec<SocketAddr>,
    /// How many shards to run: `auto` = one per allowed CPU. Default `auto`.
    pub workers: Workers,
    /// CPUs to pin shards to, from `cpus = "0-3,8"` or `numa_node = N`; `None` = the
    /// process's allowed set (sched_getaffinity).
    pub cpus: Option<Vec<usize>>,
    /// Admin endpoint address. Default `127.0.0.1:9900`; `None` when `admin = ""`.
    pub admin: Option<SocketAddr>,
    /// Bearer token the admin endpoint's writing requests need (`admin_token`); `None` = no
    /// token (only allowed on a loopback `admin`).
    pub admin_token: Option<String>,
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
    /// How the kernel runs io_uring completion work for a shard. Default `defer`.
    pub uring_taskrun: UringTaskrun,
    /// Capacity of the one bounded channel shards report request outcomes to the control
    /// thread on (`try_send`: a full channel drops the report and counts it). Default 4096.
    pub observation_queue: usize,
    /// `tcp = { … }`: socket options of every listener (each listener takes its own copy,
    /// so a per-listener table can override it). Default: the kernel's.
    pub tcp: TcpOptions,
    /// The `h2` table: HTTP/2 towards clients (h2c, SETTINGS, abuse limits).
    pub h2: H2Config,
    /// `splice = true`: the rest of a response body of more than 64 KiB after its head's read
    /// moves from a plain TCP upstream to a plain TCP client through a pipe (splice(2)), not
    /// through a buffer: no copy into ringlb or out of it. Default false.
    pub splice: bool,
}

/// UringTaskrun is when the kernel runs the completion work ("task work") of a shard's ring.
///
/// Loopback and NIC wake-ups usually happen on another CPU than the shard's; by default the
/// kernel then interrupts the shard's CPU (an IPI) to run the completion at once. `defer`
/// (IORING_SETUP_DEFER_TASKRUN + SINGLE_ISSUER, Linux 6.1+) and `coop` (COOP_TASKRUN +
/// TASKRUN_FLAG, 5.19+) instead run it when the shard next enters the kernel, which it does
/// anyway in its event loop: measured on the reference box, `defer` cut proxy CPU per request
/// by about a quarter. A kernel that rejects the flags gets the next weaker mode (logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UringTaskrun {
    /// DEFER_TASKRUN + SINGLE_ISSUER + COOP_TASKRUN + TASKRUN_FLAG.
    Defer,
    /// COOP_TASKRUN + TASKRUN_FLAG.
    Coop,
    /// The kernel default: interrupt the shard's CPU for each completion.
    Interrupt,
}

impl UringTaskrun {
    /// The config-file name of this mode.
    pub fn name(self) -> &'static str {
        match self {
            UringTaskrun::Defer => "defer",
            UringTaskrun::Coop => "coop",
            UringTaskrun::Interrupt => "interrupt",
        }
    }
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
    /// How long a request with `Expect: 100-continue` whose body streams waits for the
    /// upstream's `100 Continue` before ringlb sends one to the client itself and streams the
    /// body anyway. Default 200 ms.
    pub expect_continue: Duration,
    /// A tunnel (an upgraded connection, e.g. WebSocket) that carries no byte in either
    /// direction for this long is closed. Default 1 h.
    pub tunnel_idle: Duration,
    /// A client connection waiting for its next request (or a tunnel side waiting for bytes)
    /// keeps its read, and the buffer lent to it, in flight this long; then it *parks*: the
    /// read is cancelled, the buffers go back to the shard's pool, and the connection waits for
    /// readiness holding no buffer. 0 parks at once (fewest bytes per idle connection, one
    /// more ring operation per request). Default 100 ms. Only `[timeouts]` sets it.
    pub client_park: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_millis(1000),
            request_header: Duration::from_millis(10_000),
            upstream_read: Duration::from_millis(30_000),
            upstream_write: Duration::from_millis(30_000),
            client_idle: Duration::from_millis(60_000),
            expect_continue: Duration::from_millis(200),
            tunnel_idle: Duration::from_millis(3_600_000),
            client_park: Duration::from_millis(100),
        }
    }
}

/// Limits is the `[limits]` table: what a client request (and an upstream's interim
/// responses) may be at most, and how ringlb closes a connection it gives up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request head (request line + headers) size → 431. Default 16 KiB.
    pub max_header_bytes: usize,
    /// Request line size → 414. Default 8 KiB.
    pub max_request_line_bytes: usize,
    /// Request body size → 413. Default unlimited.
    pub max_body_bytes: Option<u64>,
    /// Interim (1xx) responses relayed per request; one more → 502. Default 16.
    pub max_interim_responses: u32,
    /// Bytes of interim (1xx) response heads per request; beyond → 502. Default 64 KiB.
    pub max_interim_bytes: usize,
    /// Lingering close: after an answer that closes the connection while the client may still
    /// be sending, ringlb shuts its write side and reads and discards what arrives, so the
    /// client's unread bytes do not turn into a reset that destroys the answer. It stops after
    /// this long in all. Default 30 s (nginx's `lingering_time`).
    pub lingering_time: Duration,
    /// … or when nothing arrives for this long. Default 5 s (nginx's `lingering_timeout`).
    pub lingering_timeout: Duration,
    /// … or after discarding this many bytes. Default 64 MiB.
    pub lingering_max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            max_request_line_bytes: 8 * 1024,
            max_body_bytes: None,
            max_interim_responses: 16,
            max_interim_bytes: 64 * 1024,
            lingering_time: Duration::from_millis(30_000),
            lingering_timeout: Duration::from_millis(5_000),
            lingering_max_bytes: 64 << 20,
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
    /// What hashing algorithms key on (`hash_key = …`); `Some` exactly when the algorithm
    /// hashes (`ip_hash` sets `client_ip`). No default.
    pub hash_key: Option<HashKey>,
    /// The algorithm's tuning (`points`, `balance_factor`, `table_size`, `ewma_decay_ms`).
    pub balance: BalanceParams,
    /// Peers in file order; a peer's index here is its `PeerId` within the group.
    pub peers: Vec<PeerConfig>,
    /// Global `[timeouts]` with this upstream's `timeouts = { … }` overrides applied.
    pub timeouts: Timeouts,
    /// Idle connection pool settings.
    pub pool: PoolConfig,
    /// Retry policy (`retry = { … }`); every default when the key is absent.
    pub retry: RetryPolicy,
    /// Circuit breaker settings (`circuit_breaker = { … }`); `None`: no breaker.
    pub circuit_breaker: Option<BreakerConfig>,
    /// Active health check (`health = { … }`); `None` = no probes: peers are up until passive
    /// signals say otherwise.
    pub health: Option<HealthCheck>,
    /// Passive outlier ejection (`passive = { … }`); on by default, see [`PassiveHealth`].
    pub passive: PassiveHealth,
    /// Prefer peers with this `region` while any is eligible. Default none.
    pub local_region: Option<String>,
    /// What to do when no peer is eligible. Default [`WhenAllDown::Fail`].
    pub when_all_down: WhenAllDown,
    /// Which protocol upgrades (`Upgrade: websocket`, …) are tunnelled to this upstream
    /// (`upgrade = { allow = [...] }`). Default: `websocket` only.
    pub upgrade: UpgradeAllow,
    /// The HTTP version spoken to the peers (`protocol`). Default HTTP/1.1.
    pub protocol: UpstreamProtocol,
    /// What a peer found by discovery (or transparent mode) gets: the upstream's
    /// `max_conns` and `slow_start_ms` defaults.
    pub peer_limits: PeerLimits,
    /// Where requests wait while every eligible peer is at its limit (`queue = { … }`).
    pub queue: QueueConfig,
    /// The whole group's token bucket (`rate` without `key`). Default none.
    pub rate: Option<RateConfig>,
    /// Per client key token buckets (`rate` with `key`): 429 when empty. Default none.
    pub client_rate: Option<ClientRate>,
    /// Per-request regions (`region_from`, `region_map`, `region_fallback`).
    pub regions: RegionPolicy,
    /// Socket options of upstream connections (`tcp = { … }`).
    pub tcp: TcpOptions,
    /// Where further peers come from (`discovery = { … }`): DNS or Docker. `peers` then holds
    /// the listed peers followed by the ones found so far (the control thread fills them in).
    pub discovery: Option<Discovery>,
    /// `algorithm = "transparent"`: every request goes to the host its `Host` names, within
    /// `allow` (`peers` is empty then).
    pub transparent: Option<Transparent>,
    /// The upstream's `tls` table without a server name: what the peers the config does not
    /// name (discovered, transparent) are given with theirs ([`crate::tls::TlsTemplate::for_name`]).
    /// `None`: `tls` absent or `enabled = false` (cleartext to them).
    pub tls: Option<crate::tls::TlsTemplate>,
}

impl UpstreamConfig {
    /// The algorithm as the file names it (`transparent` for a transparent upstream, whose
    /// selector machinery runs round robin over one peer per request).
    pub fn algorithm_name(&self) -> &'static str {
        if self.transparent.is_some() {
            "transparent"
        } else {
            self.algorithm.name()
        }
    }
}

/// UpgradeAllow is an upstream's `upgrade = { allow = [...] }`: the protocol tokens a client
/// may upgrade to (compared case-insensitively); a request asking for another one is forwarded
/// as a plain request without its upgrade headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpgradeAllow {
    /// `allow = ["*"]`: any protocol.
    Any,
    /// These tokens (lowercase; empty: upgrades are never tunnelled).
    Tokens(Vec<String>),
}

impl Default for UpgradeAllow {
    fn default() -> Self {
        UpgradeAllow::Tokens(vec!["websocket".to_string()])
    }
}

impl UpgradeAllow {
    /// Whether every protocol named in an `Upgrade` field value (a comma-separated list of
    /// `protocol[/version]`) is allowed; false for an empty value.
    pub fn allows(&self, value: &[u8]) -> bool {
        let mut any = false;
        for item in value.split(|&b| b == b',') {
            let item = item.trim_ascii();
            if item.is_empty() {
                continue;
            }
            any = true;
            if let UpgradeAllow::Tokens(tokens) = self {
                let name = item
                    .split(|&b| b == b'/')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii();
                if !tokens
                    .iter()
                    .any(|t| t.as_bytes().eq_ignore_ascii_case(name))
                {
                    return false;
                }
            }
        }
        any
    }
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
    /// Draining: no new requests, requests in flight finish (`drain = true`, or the admin
    /// API's `PATCH … {"drain": true}`). Default false.
    pub drain: bool,
    /// `max_conns`, `rate`, `slow_start_ms` (the upstream's defaults applied).
    pub limits: PeerLimits,
    /// The upstream's timeouts with this peer's `timeouts = { … }` overrides applied.
    pub timeouts: Timeouts,
    /// The upstream's pool settings with this peer's `pool = { … }` overrides applied.
    pub pool: PoolConfig,
    /// How ringlb speaks TLS to this peer (its own `tls`, else its upstream's); `None` =
    /// cleartext.
    pub tls: Option<std::sync::Arc<crate::tls::UpstreamTls>>,
}

/// PoolConfig is an upstream's `pool = { … }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Idle connections kept per peer per shard. Default 64.
    pub max_idle_per_peer: usize,
    /// Idle connections older than this are closed. Default 30 s.
    pub idle_timeout: Duration,
    /// A connection that served this many requests is closed instead of pooled. Default
    /// none (unlimited).
    pub max_requests_per_conn: Option<u64>,
    /// A connection older than this (since it was opened) is closed instead of pooled.
    /// Default none (unlimited).
    pub max_conn_age: Option<Duration>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_idle_per_peer: 64,
            idle_timeout: Duration::from_millis(30_000),
            max_requests_per_conn: None,
            max_conn_age: None,
        }
    }
}

/// RouteConfig is one `[[route]]`: all present conditions must match.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Host header (port stripped) compared case-insensitively; stored lowercase.
    pub host: Option<String>,
    /// The SNI a TLS client sent, compared case-insensitively; stored lowercase. A
    /// connection without TLS (or without SNI) never matches.
    pub sni: Option<String>,
    /// Request path must start with this.
    pub path_prefix: Option<String>,
    /// Header name (case-insensitive; stored lowercase) and exact value (trimmed).
    pub header: Option<(String, String)>,
    /// The upstream group the route sends to (an index into `Config::upstreams`).
    pub upstream: GroupId,
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

/// Formats a duration as whole milliseconds, the unit of the file's `*_ms` keys.
fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// Writes a [`Timeouts`] as `name value` lines, each prefixed by `indent`, for
/// [`Config::describe`].
fn write_timeouts(out: &mut String, indent: &str, t: &Timeouts) -> fmt::Result {
    use fmt::Write as _;
    writeln!(out, "{indent}connect         {}", ms(t.connect))?;
    writeln!(out, "{indent}request_header  {}", ms(t.request_header))?;
    writeln!(out, "{indent}upstream_read   {}", ms(t.upstream_read))?;
    writeln!(out, "{indent}upstream_write  {}", ms(t.upstream_write))?;
    writeln!(out, "{indent}client_idle     {}", ms(t.client_idle))?;
    writeln!(out, "{indent}expect_continue {}", ms(t.expect_continue))?;
    writeln!(out, "{indent}tunnel_idle     {}", ms(t.tunnel_idle))?;
    writeln!(out, "{indent}client_park     {}", ms(t.client_park))
}

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
    ///
    /// Errors carry the key path and, where the key is written in `text`, its line, e.g.
    ///
    /// ```text
    /// ringlb.toml: key `server.foo`: unknown field `foo`, expected one of `listen`, … (line 3)
    /// ```
    pub fn from_toml_str(text: &str, source: &str) -> Result<Config, ConfigError> {
        let file: file::ConfigFile =
            toml::from_str(text).map_err(|e| locate::toml_error(text, source, &e))?;
        validate::validate(file, source).map_err(|e| locate::with_line(text, e))
    }

    /// Every upstream's name with its peers' addresses as configured, in config order (the
    /// layout the metrics registry follows).
    pub fn peer_layout(&self) -> Vec<(String, Vec<String>)> {
        self.upstreams
            .iter()
            .map(|u| {
                (
                    u.name.clone(),
                    u.peers.iter().map(|p| p.address.clone()).collect(),
                )
            })
            .collect()
    }

    /// The configuration as TOML, as written plus the admin API's changes (`GET /config`).
    pub fn to_toml(&self) -> String {
        toml::to_string(&*self.file).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// The configuration after `edit` of its file model, validated again in full (the same
    /// errors as `check`). How the admin API changes peers.
    pub(crate) fn edited(
        &self,
        edit: impl FnOnce(&mut file::ConfigFile) -> Result<(), ConfigError>,
    ) -> Result<Config, ConfigError> {
        let mut file = (*self.file).clone();
        edit(&mut file)?;
        validate::validate(file, &self.source)
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

    /// describe is the resolved setup as stable, human-readable text, for `ringlb check`:
    /// listeners, shards and their CPUs, driver, admin, limits, timeouts, the access log, every
    /// upstream (algorithm, peers as written and resolved, pool, timeouts, retry, circuit
    /// breaker) and the routes.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_description(&mut out);
        out
    }

    /// The body of [`Config::describe`].
    fn write_description(&self, out: &mut String) -> fmt::Result {
        use fmt::Write as _;

        let s = &self.server;
        writeln!(out, "config {}", self.source)?;
        writeln!(out, "server")?;
        let listen: Vec<String> = s.listen.iter().map(|a| a.to_string()).collect();
        writeln!(out, "  listen            {}", listen.join(", "))?;
        for (addr, tls) in &s.tls {
            writeln!(out, "  tls {addr}  {}", tls::describe_server(tls))?;
        }
        let shard_cpus = self.shard_cpus();
        let workers = match s.workers {
            Workers::Auto => "auto".to_string(),
            Workers::Count(n) => n.to_string(),
        };
        let pin_set = match &s.cpus {
            Some(cpus) => format!("cpus {}", format_cpu_list(cpus)),
            None => format!("allowed cpus {}", format_cpu_list(&allowed_cpus())),
        };
        writeln!(
            out,
            "  shards            {} (workers = {workers}, {pin_set})",
            shard_cpus.len()
        )?;
        for (i, cpu) in shard_cpus.iter().enumerate() {
            match cpu {
                Some(cpu) => writeln!(out, "    shard {i} -> cpu {cpu}")?,
                None => writeln!(out, "    shard {i} -> unpinned")?,
            }
        }
        let driver = match s.driver {
            Driver::Auto => "auto",
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        };
        writeln!(out, "  driver            {driver}")?;
        match s.admin {
            Some(addr) => writeln!(out, "  admin             {addr}")?,
            None => writeln!(out, "  admin             disabled")?,
        }
        writeln!(out, "  backlog           {}", s.backlog)?;
        writeln!(out, "  max_connections   {} per shard", s.max_connections)?;
        writeln!(out, "  uring_entries     {}", s.uring_entries)?;
        writeln!(out, "  uring_taskrun     {}", s.uring_taskrun.name())?;
        writeln!(out, "  shutdown_timeout  {}", ms(s.shutdown_timeout))?;

        let l = &self.limits;
        writeln!(out, "limits")?;
        writeln!(out, "  max_header_bytes        {}", l.max_header_bytes)?;
        writeln!(
            out,
            "  max_request_line_bytes  {}",
            l.max_request_line_bytes
        )?;
        match l.max_body_bytes {
            Some(n) => writeln!(out, "  max_body_bytes          {n}")?,
            None => writeln!(out, "  max_body_bytes          unlimited")?,
        }
        writeln!(out, "  max_interim_responses   {}", l.max_interim_responses)?;
        writeln!(out, "  max_interim_bytes       {}", l.max_interim_bytes)?;
        writeln!(out, "  lingering_time          {}", ms(l.lingering_time))?;
        writeln!(out, "  lingering_timeout       {}", ms(l.lingering_timeout))?;
        writeln!(out, "  lingering_max_bytes     {}", l.lingering_max_bytes)?;
        writeln!(out, "timeouts")?;
        write_timeouts(out, "  ", &self.timeouts)?;
        log::describe(out, &self.log)?;

        for (i, u) in self.upstreams.iter().enumerate() {
            writeln!(out, "upstream[{i}] \"{}\"", u.name)?;
            writeln!(out, "  algorithm  {}", u.algorithm_name())?;
            balance::describe(out, u)?;
            writeln!(out, "  peers")?;
            for (j, p) in u.peers.iter().enumerate() {
                write!(
                    out,
                    "    [{j}] {} -> {}  weight {}",
                    p.address, p.addr, p.weight
                )?;
                if p.weight == 0 {
                    write!(out, " (drained)")?;
                }
                if p.backup {
                    write!(out, "  backup")?;
                }
                if let Some(region) = &p.region {
                    write!(out, "  region {region}")?;
                }
                if let Some(tls) = &p.tls {
                    write!(out, "  tls {}", tls.settings)?;
                }
                writeln!(out)?;
            }
            if let Some(t) = &u.tls {
                let (whose, own) = if u.transparent.is_some() {
                    ("transparent", "<the request's Host>")
                } else {
                    ("discovered", "<the discovered name>")
                };
                if u.transparent.is_some() || u.discovery.is_some() {
                    let sni = t.sni.as_deref().unwrap_or(own);
                    writeln!(out, "  tls        {whose} peers: sni={sni};{}", t.rest)?;
                }
            }
            writeln!(
                out,
                "  pool       max_idle_per_peer {}, idle_timeout {}",
                u.pool.max_idle_per_peer,
                ms(u.pool.idle_timeout)
            )?;
            writeln!(out, "  timeouts")?;
            write_timeouts(out, "    ", &u.timeouts)?;
            failover::write_upstream(out, u)?;
            health::describe(out, u)?;
            discovery::describe(out, u)?;
            protect::describe(out, u)?;
        }

        writeln!(out, "routes")?;
        if self.routes.is_empty() {
            let first = self.upstreams.first().map_or("", |u| u.name.as_str());
            writeln!(out, "  (none: every request goes to upstream \"{first}\")")?;
        }
        for (i, r) in self.routes.iter().enumerate() {
            let mut conditions = Vec::new();
            if let Some(host) = &r.host {
                conditions.push(format!("host {host}"));
            }
            if let Some(sni) = &r.sni {
                conditions.push(format!("sni {sni}"));
            }
            if let Some(prefix) = &r.path_prefix {
                conditions.push(format!("path_prefix {prefix}"));
            }
            if let Some((name, value)) = &r.header {
                conditions.push(format!("header {name}: {value}"));
            }
            if conditions.is_empty() {
                conditions.push("any request".to_string());
            }
            let target = self
                .upstreams
                .get(r.upstream.index())
                .map_or("?", |u| u.name.as_str());
            writeln!(
                out,
                "  [{i}] {} -> upstream \"{target}\"",
                conditions.join(", ")
            )?;
        }
        Ok(())
    }

    /// The index of the upstream named `name`.
    pub fn upstream_index(&self, name: &str) -> Option<GroupId> {
        self.upstreams
            .iter()
            .position(|u| u.name == name)
            .map(GroupId::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
[server]
listen = ["127.0.0.1:0", "[::1]:0"]
workers = 2
admin = ""

[limits]
max_body_bytes = 1000

[[upstream]]
name = "api"
algorithm = "smooth_weighted"
peers = [
  { address = "127.0.0.1:8001", weight = 3, region = "eu-1" },
  { address = "localhost:8002", weight = 0 },
  { address = "127.0.0.1:8003", backup = true },
]
pool = { max_idle_per_peer = 8, idle_timeout_ms = 5000 }
timeouts = { connect_ms = 250 }

[[upstream]]
name = "static"
peers = [{ address = "127.0.0.1:9001" }]

[[route]]
host = "api.example.com"
path_prefix = "/v1"
header = "X-Canary: true"
upstream = "api"

[[route]]
upstream = "static"
"#;

    #[test]
    fn describe_shows_the_resolved_setup() {
        let c = Config::from_toml_str(TEXT, "ringlb.toml").unwrap();
        let d = c.describe();
        println!("{d}");
        for want in [
            "config ringlb.toml\n",
            "  listen            127.0.0.1:0, [::1]:0\n",
            "  shards            2 (workers = 2, allowed cpus ",
            "    shard 0 -> cpu ",
            "    shard 1 -> cpu ",
            "  driver            auto\n",
            "  admin             disabled\n",
            "  backlog           4096\n",
            "  max_connections   65536 per shard\n",
            "  uring_entries     1024\n",
            "  uring_taskrun     defer\n",
            "  shutdown_timeout  10000 ms\n",
            "  max_header_bytes        16384\n",
            "  max_request_line_bytes  8192\n",
            "  max_body_bytes          1000\n",
            "upstream[0] \"api\"\n",
            "  algorithm  smooth_weighted\n",
            "    [0] 127.0.0.1:8001 -> 127.0.0.1:8001  weight 3  region eu-1\n",
            "    [1] localhost:8002 -> ",
            ":8002  weight 0 (drained)\n",
            "    [2] 127.0.0.1:8003 -> 127.0.0.1:8003  weight 1  backup\n",
            "  pool       max_idle_per_peer 8, idle_timeout 5000 ms\n",
            "  timeouts\n    connect         250 ms\n",
            "timeouts\n  connect         1000 ms\n",
            "    client_idle     60000 ms\n",
            "upstream[1] \"static\"\n",
            "  algorithm  round_robin\n",
            "  [0] host api.example.com, path_prefix /v1, header x-canary: true \
             -> upstream \"api\"\n",
            "  [1] any request -> upstream \"static\"\n",
        ] {
            assert!(d.contains(want), "missing {want:?} in:\n{d}");
        }
        // Stable: the same config describes the same way.
        assert_eq!(d, c.describe());
    }

    #[test]
    fn describe_without_routes() {
        let text = "[server]\ncpus = \"0\"\n\
                    [[upstream]]\nname = \"a\"\npeers = [{ address = \"127.0.0.1:1\" }]\n";
        // CPU 0 may not be allowed in every sandbox; skip rather than fail there.
        let Ok(c) = Config::from_toml_str(text, "x.toml") else {
            return;
        };
        let d = c.describe();
        assert!(d.contains("(workers = auto, cpus 0)"), "{d}");
        assert!(d.contains("    shard 0 -> cpu 0\n"), "{d}");
        assert!(
            d.contains("routes\n  (none: every request goes to upstream \"a\")\n"),
            "{d}"
        );
    }

    #[test]
    fn from_file_names_the_file_in_errors() {
        let path = std::env::temp_dir().join(format!("ringlb-config-{}.toml", std::process::id()));
        std::fs::write(&path, "[server]\nworkers = 0\n").unwrap();
        let e = Config::from_file(&path).unwrap_err();
        let _ = std::fs::remove_file(&path);
        let shown = e.to_string();
        assert!(shown.starts_with(&path.display().to_string()), "{shown}");
        assert!(
            shown.contains("key `server.workers`") && shown.contains("(line 2)"),
            "{shown}"
        );

        let missing = std::env::temp_dir().join("ringlb-config-does-not-exist.toml");
        let e = Config::from_file(&missing).unwrap_err();
        assert!(e.to_string().contains("cannot read file"), "{e}");
    }

    #[test]
    fn error_display_examples() {
        let e = Config::from_toml_str("[server]\nfoo = 1\n", "ringlb.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "ringlb.toml: key `server.foo`: unknown field `foo`, expected one of `listen`, \
             `workers`, `cpus`, `numa_node`, `admin`, `admin_token`, `shutdown_timeout_ms`, `backlog`, \
             `driver`, `max_connections`, `uring_entries`, `uring_taskrun`, \
             `observation_queue`, `tcp`, `h2`, `splice` (line 2)"
        );
        let e = Config::from_toml_str(
            "[[upstream]]\nname = \"a\"\npeers = [{ address = \"10.0.0.1\" }]\n",
            "ringlb.toml",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "ringlb.toml: key `upstream[0].peers[0].address`: `10.0.0.1` has no port \
             (write `ip:port`, IPv6 as `[::1]:8080`) (line 3)"
        );
    }
}

//! Health and failover keys of `[[upstream]]` (`health`, `passive`, `local_region`,
//! `when_all_down`) and `[server] observation_queue`: their file structs, their checked runtime
//! types, their validation and their lines in [`Config::describe`](super::Config::describe).
//!
//! Kept apart from `file.rs`/`validate.rs` so the health checker owns its keys in one place;
//! `validate.rs` calls [`upstream_health`] and [`observation_queue`], which report errors as
//! `(key path, reason)` pairs that it turns into [`ConfigError`](super::ConfigError)s.

use std::fmt::{self, Write as _};
use std::ops::RangeInclusive;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{PeerConfig, UpstreamConfig};

/// Default `health.interval_ms`.
pub const DEFAULT_INTERVAL_MS: u64 = 2000;
/// Default `health.timeout_ms`.
pub const DEFAULT_TIMEOUT_MS: u64 = 1000;
/// Default `health.rise`.
pub const DEFAULT_RISE: u32 = 2;
/// Default `health.fall`.
pub const DEFAULT_FALL: u32 = 3;
/// Default `health.expect`.
pub const DEFAULT_EXPECT: &str = "200-399";
/// Default `passive.consecutive_failures`.
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
/// Default `passive.eject_ms`.
pub const DEFAULT_EJECT_MS: u64 = 30_000;
/// Default `passive.max_eject_ms` is this many times `eject_ms`.
pub const DEFAULT_MAX_EJECT_FACTOR: u64 = 10;
/// Default `passive.max_eject_percent`.
pub const DEFAULT_MAX_EJECT_PERCENT: u8 = 50;
/// Default `[server] observation_queue`.
pub const DEFAULT_OBSERVATION_QUEUE: usize = 4096;
/// Largest `[server] observation_queue`.
const MAX_OBSERVATION_QUEUE: u64 = 1 << 20;
/// Largest `rise` / `fall`.
const MAX_RISE_FALL: u64 = 1000;

// ---------------------------------------------------------------------------------------------
// File structs.

/// HealthFile is an upstream's `health = { … }` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthFile {
    /// `"tcp"`, `"http"`, `"https"` or `"custom"`; required.
    pub kind: Option<String>,
    /// Probe over TLS (`"https"` is `"http"` with `tls = true`). Default false.
    pub tls: Option<bool>,
    /// HTTP only: request path, default `/`.
    pub path: Option<String>,
    /// HTTP only: `"GET"` (default) or `"HEAD"`.
    pub method: Option<String>,
    /// HTTP only: Host header, default the peer's address as written.
    pub host: Option<String>,
    /// HTTP only: `"200-399"`, `"200,204"`, `200` or `[200, "300-302"]`.
    pub expect: Option<toml::Value>,
    /// HTTP only: the body must contain this text.
    pub body_contains: Option<String>,
    /// Probe this port instead of the traffic port.
    pub port: Option<u64>,
    /// Default 2000.
    pub interval_ms: Option<u64>,
    /// Default 1000.
    pub timeout_ms: Option<u64>,
    /// Default 2.
    pub rise: Option<u64>,
    /// Default 3.
    pub fall: Option<u64>,
    /// `"unknown"` (default) or `"down"`.
    pub start: Option<String>,
}

/// PassiveFile is an upstream's `passive = { … }` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PassiveFile {
    /// Default 5; 0 disables passive ejection.
    pub consecutive_failures: Option<u64>,
    /// Default 30000.
    pub eject_ms: Option<u64>,
    /// Default 10 × `eject_ms`.
    pub max_eject_ms: Option<u64>,
    /// Default 50; 0..=100.
    pub max_eject_percent: Option<u64>,
    /// Default false.
    pub on_5xx: Option<bool>,
}

// ---------------------------------------------------------------------------------------------
// Runtime types.

/// HealthCheck is an upstream's active check (`health = { … }`), probed by the control thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// What a probe does: connect (`tcp`) or a full HTTP exchange (`http`).
    pub kind: CheckKind,
    /// Probe this port on the peer's IP instead of its traffic port. Default: the traffic port.
    pub port: Option<u16>,
    /// Time between probes of one peer, jittered by ±10% per probe. Default 2000 ms.
    pub interval: Duration,
    /// A probe that has not succeeded within this fails. Default 1000 ms.
    pub timeout: Duration,
    /// Consecutive successes that bring a peer up. Default 2.
    pub rise: u32,
    /// Consecutive failures that bring a peer down. Default 3.
    pub fall: u32,
    /// State of a peer before its first verdict. Default [`StartState::Unknown`].
    pub start: StartState,
    /// Probe over TLS (`kind = "https"`, or `tls = true`): with the peer's `tls` settings,
    /// else verified against the system roots with the peer's host as SNI. Default false.
    pub tls: bool,
}

/// CheckKind is what an active probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// `kind = "tcp"`: the connect succeeds.
    Tcp,
    /// `kind = "http"`: an HTTP/1.1 request whose response matches.
    Http(HttpCheck),
    /// `kind = "custom"`: a check the library user registers for this upstream by name
    /// ([`StartOptions::health_check`](crate::server::StartOptions::health_check)); the
    /// proxy does not start (and a reload is refused) when none is registered.
    Custom,
}

/// HttpCheck is the request and the expectations of an `http` check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    /// `GET` (default) or `HEAD`.
    pub method: ProbeMethod,
    /// Request path (with query if any). Default `/`.
    pub path: String,
    /// Host header. Default: the peer's address as written in `peers`.
    pub host: Option<String>,
    /// Statuses that count as success. Default `200-399`.
    pub expect: StatusSet,
    /// The response body (its first 64 KiB) must contain this. Default: not checked.
    pub body_contains: Option<String>,
}

/// ProbeMethod is the method of an HTTP probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeMethod {
    /// `GET`.
    Get,
    /// `HEAD` (no body, so no `body_contains`).
    Head,
}

impl ProbeMethod {
    /// The method token.
    pub fn name(self) -> &'static str {
        match self {
            ProbeMethod::Get => "GET",
            ProbeMethod::Head => "HEAD",
        }
    }
}

/// StartState is a probed peer's state before its first verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartState {
    /// `start = "unknown"` (default): eligible until the first verdict.
    Unknown,
    /// `start = "down"`: no traffic until `rise` probes succeeded.
    Down,
}

/// StatusSet is a set of HTTP status codes: `health.expect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet {
    /// Inclusive ranges, in the order written.
    ranges: Vec<RangeInclusive<u16>>,
}

impl StatusSet {
    /// Whether `status` is in the set.
    pub fn contains(&self, status: u16) -> bool {
        self.ranges.iter().any(|r| r.contains(&status))
    }

    /// Parses `"200-399"`, `"200,204"`, `"200, 300-302"`; the error is the reason text.
    pub fn parse(text: &str) -> Result<StatusSet, String> {
        let mut ranges = Vec::new();
        for part in text.split(',') {
            ranges.push(status_range(part.trim())?);
        }
        Ok(StatusSet { ranges })
    }
}

impl fmt::Display for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if r.start() == r.end() {
                write!(f, "{}", r.start())?;
            } else {
                write!(f, "{}-{}", r.start(), r.end())?;
            }
        }
        Ok(())
    }
}

/// Parses one `"200"` or `"200-399"` with codes in 100..=599.
fn status_range(text: &str) -> Result<RangeInclusive<u16>, String> {
    let code = |t: &str| -> Result<u16, String> {
        match t.trim().parse::<u16>() {
            Ok(c) if (100..=599).contains(&c) => Ok(c),
            _ => Err(format!("`{}` is not a status code (100-599)", t.trim())),
        }
    };
    if text.is_empty() {
        return Err("empty status (write e.g. \"200-399\" or \"200,204\")".to_string());
    }
    match text.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (code(a)?, code(b)?);
            if a > b {
                return Err(format!(
                    "range `{text}` is empty (its start is above its end)"
                ));
            }
            Ok(a..=b)
        }
        None => {
            let c = code(text)?;
            Ok(c..=c)
        }
    }
}

/// PassiveHealth is an upstream's outlier ejection (`passive = { … }`), fed by the outcomes
/// shards report. It is on by default; `consecutive_failures = 0` turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveHealth {
    /// Consecutive failures (across all shards) that eject a peer; 0 = never. Default 5.
    pub consecutive_failures: u32,
    /// How long the first ejection lasts; each repeated one doubles it. Default 30 s.
    pub eject: Duration,
    /// Cap of the doubled ejection time. Default 10 × `eject`.
    pub max_eject: Duration,
    /// At most this percentage of the group's peers is ejected at once (rounded down, so a
    /// one-peer group is never ejected unless it is 100). Default 50.
    pub max_eject_percent: u8,
    /// Whether a 5xx response counts as a failure. Default false (a 5xx shows the peer is
    /// alive, and resets the count).
    pub on_5xx: bool,
}

impl PassiveHealth {
    /// Whether passive ejection is on.
    pub fn enabled(&self) -> bool {
        self.consecutive_failures > 0
    }
}

impl Default for PassiveHealth {
    fn default() -> Self {
        PassiveHealth {
            consecutive_failures: DEFAULT_CONSECUTIVE_FAILURES,
            eject: Duration::from_millis(DEFAULT_EJECT_MS),
            max_eject: Duration::from_millis(DEFAULT_EJECT_MS * DEFAULT_MAX_EJECT_FACTOR),
            max_eject_percent: DEFAULT_MAX_EJECT_PERCENT,
            on_5xx: false,
        }
    }
}

/// WhenAllDown is what a group does when none of its peers (primaries or backups) is eligible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenAllDown {
    /// `"fail"` (default): answer 503 at once.
    #[default]
    Fail,
    /// `"try_all"`: try the peers anyway, ignoring health (never drained, weight-0, ones).
    TryAll,
}

impl WhenAllDown {
    /// The config-file name.
    pub fn name(self) -> &'static str {
        match self {
            WhenAllDown::Fail => "fail",
            WhenAllDown::TryAll => "try_all",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation.

/// UpstreamHealth is the checked health keys of one upstream.
pub(crate) struct UpstreamHealth {
    /// `health`.
    pub health: Option<HealthCheck>,
    /// `passive`.
    pub passive: PassiveHealth,
    /// `local_region`.
    pub local_region: Option<String>,
    /// `when_all_down`.
    pub when_all_down: WhenAllDown,
}

/// A validation error: (key path, reason).
pub(crate) type KeyError = (String, String);

/// Checks `[server] observation_queue`: 1..=1048576, default 4096.
pub(crate) fn observation_queue(value: Option<u64>) -> Result<usize, KeyError> {
    match value {
        None => Ok(DEFAULT_OBSERVATION_QUEUE),
        Some(n) if (1..=MAX_OBSERVATION_QUEUE).contains(&n) => Ok(n as usize),
        Some(n) => Err((
            "server.observation_queue".to_string(),
            format!("must be between 1 and {MAX_OBSERVATION_QUEUE}, got {n}"),
        )),
    }
}

/// HealthKeys are the health keys of one `[[upstream]]` as the file wrote them (the fields of
/// `file::UpstreamFile` this module checks; passed apart so that this module and the file
/// format do not import each other).
pub(crate) struct HealthKeys<'a> {
    /// `health = { … }`.
    pub health: Option<&'a HealthFile>,
    /// `passive = { … }`.
    pub passive: Option<&'a PassiveFile>,
    /// `local_region`.
    pub local_region: Option<&'a String>,
    /// `when_all_down`.
    pub when_all_down: Option<&'a str>,
}

/// Checks the health keys of `[[upstream]]` number `i` (whose peers are already checked).
pub(crate) fn upstream_health(
    i: usize,
    f: HealthKeys<'_>,
    peers: &[PeerConfig],
) -> Result<UpstreamHealth, KeyError> {
    let key = |rest: &str| format!("upstream[{i}].{rest}");
    let err = |rest: &str, reason: String| (key(rest), reason);

    let health = match f.health {
        None => None,
        Some(h) => Some(health(h).map_err(|(k, r)| err(&format!("health.{k}"), r))?),
    };
    let passive = match f.passive {
        None => PassiveHealth::default(),
        Some(p) => passive(p).map_err(|(k, r)| err(&format!("passive.{k}"), r))?,
    };
    let local_region = match f.local_region {
        None => None,
        Some(r) if r.trim().is_empty() => {
            return Err(err(
                "local_region",
                "must not be empty (leave it out instead)".to_string(),
            ))
        }
        Some(r) => {
            if !peers
                .iter()
                .any(|p| p.region.as_deref() == Some(r.as_str()))
            {
                return Err(err(
                    "local_region",
                    format!("no peer of this upstream has `region = \"{r}\"`"),
                ));
            }
            Some(r.clone())
        }
    };
    let when_all_down = match f.when_all_down {
        None | Some("fail") => WhenAllDown::Fail,
        Some("try_all") => WhenAllDown::TryAll,
        Some(other) => {
            return Err(err(
                "when_all_down",
                format!("unknown value `{other}`, expected `fail` or `try_all`"),
            ))
        }
    };
    Ok(UpstreamHealth {
        health,
        passive,
        local_region,
        when_all_down,
    })
}

/// Checks `health = { … }`; error keys are relative to `health`.
fn health(f: &HealthFile) -> Result<HealthCheck, KeyError> {
    let err = |k: &str, reason: String| Err((k.to_string(), reason));
    let (is_http, simple) = match f.kind.as_deref() {
        Some("http") | Some("https") => (true, CheckKind::Tcp),
        Some("tcp") => (false, CheckKind::Tcp),
        Some("custom") => (false, CheckKind::Custom),
        Some(other) => {
            return err(
                "kind",
                format!(
                    "unknown check kind `{other}`, expected `tcp`, `http`, `https` or `custom`"
                ),
            )
        }
        None => {
            return err(
                "kind",
                "is required: `kind = \"tcp\"` (connect), `kind = \"http\"` or \
                 `kind = \"custom\"` (a check the library user registers)"
                    .to_string(),
            )
        }
    };
    let kind = if is_http {
        let method = match f.method.as_deref() {
            None | Some("GET") => ProbeMethod::Get,
            Some("HEAD") => ProbeMethod::Head,
            Some(other) => {
                return err(
                    "method",
                    format!("unknown method `{other}`, expected `GET` or `HEAD`"),
                )
            }
        };
        let path = f.path.clone().unwrap_or_else(|| "/".to_string());
        if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return err(
                "path",
                format!("`{path}` must start with `/` and contain no spaces or control bytes"),
            );
        }
        if let Some(host) = &f.host {
            if host.is_empty() || host.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'/') {
                return err("host", format!("`{host}` is not a host name"));
            }
        }
        let expect = match &f.expect {
            None => StatusSet::parse(DEFAULT_EXPECT).expect("DEFAULT_EXPECT parses"),
            Some(v) => expect(v).map_err(|r| ("expect".to_string(), r))?,
        };
        if let Some(text) = &f.body_contains {
            if text.is_empty() {
                return err(
                    "body_contains",
                    "must not be empty (leave it out instead)".to_string(),
                );
            }
            if method == ProbeMethod::Head {
                return err(
                    "body_contains",
                    "a HEAD response has no body; use `method = \"GET\"`".to_string(),
                );
            }
        }
        CheckKind::Http(HttpCheck {
            method,
            path,
            host: f.host.clone(),
            expect,
            body_contains: f.body_contains.clone(),
        })
    } else {
        for (name, set) in [
            ("path", f.path.is_some()),
            ("method", f.method.is_some()),
            ("host", f.host.is_some()),
            ("expect", f.expect.is_some()),
            ("body_contains", f.body_contains.is_some()),
        ] {
            if set {
                return err(name, "only applies to `kind = \"http\"`".to_string());
            }
        }
        simple
    };
    let port = match f.port {
        None => None,
        Some(p) if (1..=65535).contains(&p) => Some(p as u16),
        Some(p) => return err("port", format!("must be between 1 and 65535, got {p}")),
    };
    let positive_ms = |k: &str, v: Option<u64>, default: u64| match v {
        None => Ok(Duration::from_millis(default)),
        Some(0) => Err((
            k.to_string(),
            "must be greater than 0 (milliseconds)".to_string(),
        )),
        Some(ms) => Ok(Duration::from_millis(ms)),
    };
    let interval = positive_ms("interval_ms", f.interval_ms, DEFAULT_INTERVAL_MS)?;
    let timeout = positive_ms("timeout_ms", f.timeout_ms, DEFAULT_TIMEOUT_MS)?;
    let count = |k: &str, v: Option<u64>, default: u32| match v {
        None => Ok(default),
        Some(n) if (1..=MAX_RISE_FALL).contains(&n) => Ok(n as u32),
        Some(n) => Err((
            k.to_string(),
            format!("must be between 1 and {MAX_RISE_FALL}, got {n}"),
        )),
    };
    let rise = count("rise", f.rise, DEFAULT_RISE)?;
    let fall = count("fall", f.fall, DEFAULT_FALL)?;
    let start = match f.start.as_deref() {
        None | Some("unknown") => StartState::Unknown,
        Some("down") => StartState::Down,
        Some(other) => {
            return err(
                "start",
                format!("unknown value `{other}`, expected `unknown` or `down`"),
            )
        }
    };
    let tls = match (f.kind.as_deref(), f.tls) {
        (Some("https"), Some(false)) => {
            return err(
                "tls",
                "`kind = \"https\"` is always TLS; use `kind = \"http\"` for cleartext".to_string(),
            )
        }
        (Some("https"), _) => true,
        (Some("custom"), Some(true)) => {
            return err("tls", "does not apply to `kind = \"custom\"`".to_string())
        }
        (_, t) => t.unwrap_or(false),
    };
    Ok(HealthCheck {
        kind,
        port,
        interval,
        timeout,
        rise,
        fall,
        start,
        tls,
    })
}

/// Checks `health.expect`: a string (`"200-399"`, `"200,204"`), an integer, or an array of
/// those.
fn expect(v: &toml::Value) -> Result<StatusSet, String> {
    let one = |v: &toml::Value| -> Result<Vec<RangeInclusive<u16>>, String> {
        match v {
            toml::Value::String(s) => StatusSet::parse(s).map(|s| s.ranges),
            toml::Value::Integer(n) => status_range(&n.to_string()).map(|r| vec![r]),
            other => Err(format!(
                "expected a status list or range such as \"200-399\", got {}",
                other.type_str()
            )),
        }
    };
    let ranges = match v {
        toml::Value::Array(items) if items.is_empty() => {
            return Err("must list at least one status".to_string())
        }
        toml::Value::Array(items) => {
            let mut all = Vec::new();
            for item in items {
                all.extend(one(item)?);
            }
            all
        }
        other => one(other)?,
    };
    Ok(StatusSet { ranges })
}

/// Checks `passive = { … }`; error keys are relative to `passive`.
fn passive(f: &PassiveFile) -> Result<PassiveHealth, KeyError> {
    let err = |k: &str, reason: String| Err((k.to_string(), reason));
    let consecutive_failures = match f.consecutive_failures {
        None => DEFAULT_CONSECUTIVE_FAILURES,
        Some(n) if n <= 1_000_000 => n as u32,
        Some(n) => return err("consecutive_failures", format!("{n} is too large")),
    };
    let eject_ms = match f.eject_ms {
        None => DEFAULT_EJECT_MS,
        Some(0) => return err("eject_ms", "must be greater than 0 (milliseconds)".into()),
        Some(ms) => ms,
    };
    let max_eject_ms = match f.max_eject_ms {
        None => eject_ms.saturating_mul(DEFAULT_MAX_EJECT_FACTOR),
        Some(ms) if ms >= eject_ms => ms,
        Some(ms) => {
            return err(
                "max_eject_ms",
                format!("must be at least eject_ms ({eject_ms}), got {ms}"),
            )
        }
    };
    let max_eject_percent = match f.max_eject_percent {
        None => DEFAULT_MAX_EJECT_PERCENT,
        Some(p) if p <= 100 => p as u8,
        Some(p) => {
            return err(
                "max_eject_percent",
                format!("must be between 0 and 100, got {p}"),
            )
        }
    };
    Ok(PassiveHealth {
        consecutive_failures,
        eject: Duration::from_millis(eject_ms),
        max_eject: Duration::from_millis(max_eject_ms),
        max_eject_percent,
        on_5xx: f.on_5xx.unwrap_or(false),
    })
}

// ---------------------------------------------------------------------------------------------
// Description.

/// Writes an upstream's health lines for [`Config::describe`](super::Config::describe).
pub(crate) fn describe(out: &mut String, u: &UpstreamConfig) -> fmt::Result {
    match &u.health {
        None => writeln!(out, "  health     none (passive only)")?,
        Some(h) => {
            write!(out, "  health     ")?;
            match &h.kind {
                CheckKind::Tcp => write!(out, "tcp connect")?,
                CheckKind::Custom => write!(out, "custom (registered by the library user)")?,
                CheckKind::Http(c) => {
                    write!(
                        out,
                        "http {} {} expect {}",
                        c.method.name(),
                        c.path,
                        c.expect
                    )?;
                    if let Some(host) = &c.host {
                        write!(out, " host {host}")?;
                    }
                    if let Some(text) = &c.body_contains {
                        write!(out, " body_contains {text:?}")?;
                    }
                }
            }
            if let Some(port) = h.port {
                write!(out, " port {port}")?;
            }
            if h.tls {
                write!(out, " over TLS")?;
            }
            writeln!(
                out,
                ", every {} ms ±10%, timeout {} ms, rise {}, fall {}, start {}",
                h.interval.as_millis(),
                h.timeout.as_millis(),
                h.rise,
                h.fall,
                match h.start {
                    StartState::Unknown => "unknown",
                    StartState::Down => "down",
                }
            )?;
        }
    }
    let p = &u.passive;
    if p.enabled() {
        writeln!(
            out,
            "  passive    eject after {} consecutive failures for {} ms (doubling, max {} ms), \
             at most {}% of peers, on_5xx {}",
            p.consecutive_failures,
            p.eject.as_millis(),
            p.max_eject.as_millis(),
            p.max_eject_percent,
            p.on_5xx
        )?;
    } else {
        writeln!(out, "  passive    off")?;
    }
    write!(out, "  all down   {}", u.when_all_down.name())?;
    if let Some(region) = &u.local_region {
        write!(out, ", local_region {region}")?;
    }
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigError};
    use super::*;

    const PEERS: &str = "[[upstream]]\nname = \"a\"\npeers = [\
        { address = \"127.0.0.1:8001\", region = \"eu-1\" }, \
        { address = \"127.0.0.1:8002\", region = \"us-1\" }]\n";

    fn load(extra: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(&format!("[server]\nadmin = \"\"\n{PEERS}{extra}"), "t.toml")
    }

    #[track_caller]
    fn expect_err(extra: &str, key: &str, reason: &str) {
        let e = load(extra).expect_err("config should be rejected");
        assert_eq!(e.key, key, "{e}");
        assert!(e.to_string().contains(reason), "{reason:?} not in {e}");
    }

    #[test]
    fn defaults() {
        let c = load("").unwrap();
        let u = &c.upstreams[0];
        assert_eq!(u.health, None);
        assert_eq!(u.passive, PassiveHealth::default());
        assert_eq!(u.passive.consecutive_failures, 5);
        assert_eq!(u.passive.max_eject, Duration::from_secs(300));
        assert_eq!(u.local_region, None);
        assert_eq!(u.when_all_down, WhenAllDown::Fail);
        assert_eq!(c.server.observation_queue, 4096);

        let c = load("health = { kind = \"http\" }\n").unwrap();
        let h = c.upstreams[0].health.clone().unwrap();
        assert_eq!(h.interval, Duration::from_millis(2000));
        assert_eq!(h.timeout, Duration::from_millis(1000));
        assert_eq!((h.rise, h.fall, h.start), (2, 3, StartState::Unknown));
        let CheckKind::Http(http) = h.kind else {
            panic!("http check expected")
        };
        assert_eq!(http.method, ProbeMethod::Get);
        assert_eq!(http.path, "/");
        assert_eq!(http.expect.to_string(), "200-399");
    }

    #[test]
    fn full_health_config() {
        let c = load(
            "health = { kind = \"http\", method = \"HEAD\", path = \"/hc?x=1\", host = \"api\", \
             expect = [200, \"300-302\"], port = 9000, interval_ms = 50, timeout_ms = 20, \
             rise = 1, fall = 4, start = \"down\" }\n\
             passive = { consecutive_failures = 3, eject_ms = 100, max_eject_ms = 250, \
             max_eject_percent = 34, on_5xx = true }\n\
             local_region = \"eu-1\"\nwhen_all_down = \"try_all\"\n",
        )
        .unwrap();
        let u = &c.upstreams[0];
        let h = u.health.clone().unwrap();
        assert_eq!(h.port, Some(9000));
        assert_eq!(h.interval, Duration::from_millis(50));
        assert_eq!(h.timeout, Duration::from_millis(20));
        assert_eq!((h.rise, h.fall, h.start), (1, 4, StartState::Down));
        let CheckKind::Http(http) = &h.kind else {
            panic!("http check expected")
        };
        assert_eq!(http.method, ProbeMethod::Head);
        assert_eq!(http.path, "/hc?x=1");
        assert_eq!(http.host.as_deref(), Some("api"));
        assert_eq!(http.expect.to_string(), "200,300-302");
        assert!(http.expect.contains(301) && !http.expect.contains(303));
        assert_eq!(
            u.passive,
            PassiveHealth {
                consecutive_failures: 3,
                eject: Duration::from_millis(100),
                max_eject: Duration::from_millis(250),
                max_eject_percent: 34,
                on_5xx: true,
            }
        );
        assert_eq!(u.local_region.as_deref(), Some("eu-1"));
        assert_eq!(u.when_all_down, WhenAllDown::TryAll);

        let d = c.describe();
        for want in [
            "  health     http HEAD /hc?x=1 expect 200,300-302 host api port 9000, every 50 ms \
             ±10%, timeout 20 ms, rise 1, fall 4, start down\n",
            "  passive    eject after 3 consecutive failures for 100 ms (doubling, max 250 ms), \
             at most 34% of peers, on_5xx true\n",
            "  all down   try_all, local_region eu-1\n",
        ] {
            assert!(d.contains(want), "missing {want:?} in:\n{d}");
        }
    }

    #[test]
    fn tcp_check_and_describe() {
        let c = load("health = { kind = \"tcp\", port = 81 }\npassive = { consecutive_failures = 0 }\nobservation_queue = 1\n");
        // observation_queue belongs to [server], not to the upstream.
        assert!(c.is_err());
        let c = Config::from_toml_str(
            &format!(
                "[server]\nadmin = \"\"\nobservation_queue = 1\n{PEERS}\
                 health = {{ kind = \"tcp\", port = 81 }}\npassive = {{ consecutive_failures = 0 }}\n"
            ),
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.server.observation_queue, 1);
        let u = &c.upstreams[0];
        assert_eq!(u.health.as_ref().unwrap().kind, CheckKind::Tcp);
        assert!(!u.passive.enabled());
        let d = c.describe();
        assert!(
            d.contains("  health     tcp connect port 81, every 2000 ms"),
            "{d}"
        );
        assert!(d.contains("  passive    off\n"), "{d}");
        assert!(d.contains("  all down   fail\n"), "{d}");
    }

    #[test]
    fn custom_check_keeps_the_schedule_and_refuses_http_keys() {
        let c =
            load("health = { kind = \"custom\", interval_ms = 50, rise = 1, fall = 4 }\n").unwrap();
        let h = c.upstreams[0].health.clone().unwrap();
        assert_eq!(h.kind, CheckKind::Custom);
        assert_eq!(h.interval, Duration::from_millis(50));
        assert_eq!((h.rise, h.fall), (1, 4));
        let d = c.describe();
        assert!(
            d.contains("  health     custom (registered by the library user), every 50 ms"),
            "{d}"
        );
        expect_err(
            "health = { kind = \"custom\", path = \"/hc\" }\n",
            "upstream[0].health.path",
            "only applies to `kind = \"http\"`",
        );
    }

    #[test]
    fn errors_name_the_key() {
        expect_err("health = { }\n", "upstream[0].health.kind", "is required");
        expect_err(
            "health = { kind = \"udp\" }\n",
            "upstream[0].health.kind",
            "unknown check kind `udp`",
        );
        expect_err(
            "health = { kind = \"http\", expect = \"200-\" }\n",
            "upstream[0].health.expect",
            "`` is not a status code",
        );
        expect_err(
            "health = { kind = \"http\", expect = \"399-200\" }\n",
            "upstream[0].health.expect",
            "is empty",
        );
        expect_err(
            "health = { kind = \"http\", expect = 700 }\n",
            "upstream[0].health.expect",
            "`700` is not a status code",
        );
        expect_err(
            "health = { kind = \"http\", expect = true }\n",
            "upstream[0].health.expect",
            "got boolean",
        );
        expect_err(
            "health = { kind = \"http\", method = \"POST\" }\n",
            "upstream[0].health.method",
            "expected `GET` or `HEAD`",
        );
        expect_err(
            "health = { kind = \"http\", path = \"health\" }\n",
            "upstream[0].health.path",
            "must start with `/`",
        );
        expect_err(
            "health = { kind = \"http\", method = \"HEAD\", body_contains = \"ok\" }\n",
            "upstream[0].health.body_contains",
            "HEAD response has no body",
        );
        expect_err(
            "health = { kind = \"tcp\", path = \"/\" }\n",
            "upstream[0].health.path",
            "only applies to `kind = \"http\"`",
        );
        expect_err(
            "health = { kind = \"tcp\", port = 70000 }\n",
            "upstream[0].health.port",
            "between 1 and 65535",
        );
        expect_err(
            "health = { kind = \"tcp\", interval_ms = 0 }\n",
            "upstream[0].health.interval_ms",
            "greater than 0",
        );
        expect_err(
            "health = { kind = \"tcp\", rise = 0 }\n",
            "upstream[0].health.rise",
            "between 1 and 1000",
        );
        expect_err(
            "health = { kind = \"tcp\", start = \"up\" }\n",
            "upstream[0].health.start",
            "expected `unknown` or `down`",
        );
        expect_err(
            "health = { kind = \"tcp\", bogus = 1 }\n",
            "upstream[0].health.bogus",
            "unknown field `bogus`",
        );
        expect_err(
            "passive = { eject_ms = 100, max_eject_ms = 50 }\n",
            "upstream[0].passive.max_eject_ms",
            "at least eject_ms (100)",
        );
        expect_err(
            "passive = { max_eject_percent = 101 }\n",
            "upstream[0].passive.max_eject_percent",
            "between 0 and 100",
        );
        expect_err(
            "local_region = \"ap-1\"\n",
            "upstream[0].local_region",
            "no peer of this upstream has `region = \"ap-1\"`",
        );
        expect_err(
            "when_all_down = \"panic\"\n",
            "upstream[0].when_all_down",
            "expected `fail` or `try_all`",
        );
        let e = Config::from_toml_str(
            &format!("[server]\nobservation_queue = 0\n{PEERS}"),
            "t.toml",
        )
        .unwrap_err();
        assert_eq!(e.key, "server.observation_queue");
        // Errors carry the line of the key.
        let e = load("health = { kind = \"udp\" }\n").unwrap_err();
        assert!(e.to_string().ends_with("(line 6)"), "{e}");
    }

    #[test]
    fn status_sets() {
        let s = StatusSet::parse("200, 204,300-399").unwrap();
        assert!(s.contains(200) && s.contains(204) && s.contains(350));
        assert!(!s.contains(201) && !s.contains(400));
        assert_eq!(s.to_string(), "200,204,300-399");
        assert!(StatusSet::parse("").is_err());
        assert!(StatusSet::parse("abc").is_err());
        assert!(StatusSet::parse("99").is_err());
    }
}

//! The failover keys of an `[[upstream]]`: `retry = { … }` and `circuit_breaker = { … }`,
//! both as file structs (serde, unknown keys rejected) and their validation into
//! [`RetryPolicy`] and [`BreakerConfig`], plus their lines in `ringlb check`'s description.
//!
//! Kept apart from `file.rs`/`validate.rs` so the failover keys live in one place; the two
//! layers follow the same rules as there: `*_ms: Option<u64>` in the file, defaults and range
//! checks here, errors naming the full key path (`upstream[0].retry.on[2]`).
use std::fmt::{self, Write as _};
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::UpstreamConfig;
use crate::failover::{Backoff, BreakerConfig, Failure, RetryOn, RetryPolicy};

/// RetryFile is an upstream's `retry = { … }` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetryFile {
    /// Default 3; 0..=100.
    pub max_retries: Option<u64>,
    /// Failure names and status codes (`"503"` or `503`).
    pub on: Option<Vec<OnItemFile>>,
    /// Default false.
    pub retry_non_idempotent: Option<bool>,
    /// Default 100; 0 = no wait.
    pub backoff_base_ms: Option<u64>,
    /// Default 5000; at least `backoff_base_ms`.
    pub backoff_max_ms: Option<u64>,
    /// Default none; > 0.
    pub per_try_timeout_ms: Option<u64>,
    /// Default none; > 0.
    pub request_timeout_ms: Option<u64>,
    /// Default 20; 0..=100.
    pub budget_percent: Option<u64>,
    /// Default 3.
    pub min_retries_per_sec: Option<u64>,
    /// Default 65536.
    pub retry_body_bytes: Option<u64>,
}

/// OnItemFile is one entry of `on = [ … ]` as written: a string (a failure name or a status
/// code in quotes) or an integer (a status code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OnItemFile {
    /// A string, e.g. `"reset"` or `"503"`.
    Text(String),
    /// An integer, e.g. `503` (range-checked in validation).
    Code(i64),
}

impl Serialize for OnItemFile {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            OnItemFile::Text(t) => serializer.serialize_str(t),
            OnItemFile::Code(c) => serializer.serialize_i64(*c),
        }
    }
}

impl<'de> Deserialize<'de> for OnItemFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OnItemVisitor;

        impl Visitor<'_> for OnItemVisitor {
            type Value = OnItemFile;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a failure name such as \"reset\" or a status code such as \"503\"")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<OnItemFile, E> {
                Ok(OnItemFile::Text(v.to_string()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<OnItemFile, E> {
                Ok(OnItemFile::Code(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<OnItemFile, E> {
                Ok(OnItemFile::Code(i64::try_from(v).unwrap_or(i64::MAX)))
            }
        }

        deserializer.deserialize_any(OnItemVisitor)
    }
}

/// BreakerFile is an upstream's `circuit_breaker = { … }` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BreakerFile {
    /// Default 5; >= 1.
    pub failures: Option<u64>,
    /// Default none; 0 < rate <= 1.
    pub failure_rate: Option<f64>,
    /// Default 20; >= 1.
    pub min_requests: Option<u64>,
    /// Default 10000; >= 10.
    pub window_ms: Option<u64>,
    /// Default 30000; > 0.
    pub open_ms: Option<u64>,
    /// Default 10 × `open_ms`; at least `open_ms`.
    pub open_max_ms: Option<u64>,
    /// Default 1; >= 1.
    pub half_open_max: Option<u64>,
    /// Default 3; >= 1.
    pub half_open_successes: Option<u64>,
}

/// KeyError is a validation failure: the full key path and the reason (validate.rs adds the
/// file).
pub(crate) type KeyError = (String, String);

/// Most retries `max_retries` may ask for.
const MAX_RETRIES: u64 = 100;
/// Longest backoff (`backoff_base_ms`, `backoff_max_ms`): one hour.
const MAX_BACKOFF_MS: u64 = 3_600_000;
/// Longest timeout or breaker duration: one day (keeps `Instant + Duration` far from overflow).
const MAX_DURATION_MS: u64 = 86_400_000;
/// Largest `retry_body_bytes`: 64 MiB kept per request in flight is already a lot.
const MAX_RETRY_BODY_BYTES: u64 = 64 * 1024 * 1024;
/// Shortest `window_ms`: ten buckets of at least 1 ms.
const MIN_WINDOW_MS: u64 = 10;

/// Checks an upstream's `retry = { … }` (`None`: all defaults); `prefix` is its key path
/// (`upstream[0].retry`).
pub(crate) fn retry(prefix: &str, f: Option<&RetryFile>) -> Result<RetryPolicy, KeyError> {
    let defaults = RetryPolicy::default();
    let Some(f) = f else {
        return Ok(defaults);
    };
    let key = |name: &str| format!("{prefix}.{name}");
    let max_retries = match f.max_retries {
        None => defaults.max_retries,
        Some(n) if n <= MAX_RETRIES => n as u32,
        Some(n) => {
            return Err((
                key("max_retries"),
                format!("must be between 0 and {MAX_RETRIES}, got {n}"),
            ))
        }
    };
    let on = match &f.on {
        None => defaults.on,
        Some(items) => retry_on(&key("on"), items)?,
    };

    let base_ms = f
        .backoff_base_ms
        .unwrap_or(defaults.backoff.base.as_millis() as u64);
    let max_ms = f
        .backoff_max_ms
        .unwrap_or(defaults.backoff.max.as_millis() as u64);
    for (name, value) in [
        ("backoff_base_ms", f.backoff_base_ms),
        ("backoff_max_ms", f.backoff_max_ms),
    ] {
        if let Some(ms) = value.filter(|ms| *ms > MAX_BACKOFF_MS) {
            return Err((
                key(name),
                format!("must be at most {MAX_BACKOFF_MS} (one hour), got {ms}"),
            ));
        }
    }
    if base_ms > max_ms {
        return Err(match f.backoff_max_ms {
            Some(_) => (
                key("backoff_max_ms"),
                format!("must be at least backoff_base_ms ({base_ms}), got {max_ms}"),
            ),
            None => (
                key("backoff_base_ms"),
                format!(
                    "must be at most backoff_max_ms ({max_ms}, the default), got {base_ms}; \
                     raise backoff_max_ms too"
                ),
            ),
        });
    }

    let budget_percent = match f.budget_percent {
        None => defaults.budget_percent,
        Some(n) if n <= 100 => n as u32,
        Some(n) => {
            return Err((
                key("budget_percent"),
                format!("must be between 0 and 100, got {n}"),
            ))
        }
    };
    let min_retries_per_sec = match f.min_retries_per_sec {
        None => defaults.min_retries_per_sec,
        Some(n) => u32::try_from(n)
            .map_err(|_| (key("min_retries_per_sec"), format!("{n} is too large")))?,
    };
    let retry_body_bytes = match f.retry_body_bytes {
        None => defaults.retry_body_bytes,
        Some(n) if n <= MAX_RETRY_BODY_BYTES => n as usize,
        Some(n) => {
            return Err((
                key("retry_body_bytes"),
                format!("must be at most {MAX_RETRY_BODY_BYTES} (64 MiB), got {n}"),
            ))
        }
    };

    Ok(RetryPolicy {
        max_retries,
        on,
        retry_non_idempotent: f
            .retry_non_idempotent
            .unwrap_or(defaults.retry_non_idempotent),
        backoff: Backoff {
            base: Duration::from_millis(base_ms),
            max: Duration::from_millis(max_ms),
        },
        per_try_timeout: positive_ms(&key("per_try_timeout_ms"), f.per_try_timeout_ms)?,
        request_timeout: positive_ms(&key("request_timeout_ms"), f.request_timeout_ms)?,
        budget_percent,
        min_retries_per_sec,
        retry_body_bytes,
    })
}

/// Checks `on = [ … ]`: known names, status codes 400–599, no entry twice.
fn retry_on(key: &str, items: &[OnItemFile]) -> Result<RetryOn, KeyError> {
    let mut on = RetryOn::none();
    let mut seen: Vec<Failure> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let item_key = format!("{key}[{i}]");
        let failure = on_item(item).map_err(|reason| (item_key.clone(), reason))?;
        if let Some(j) = seen.iter().position(|f| *f == failure) {
            return Err((
                item_key,
                format!("`{failure}` is listed twice (also {key}[{j}])"),
            ));
        }
        seen.push(failure);
        on.insert(failure);
    }
    Ok(on)
}

/// One `on` entry; the error is the reason text.
fn on_item(item: &OnItemFile) -> Result<Failure, String> {
    let code = match item {
        OnItemFile::Text(text) => {
            if let Some(failure) = Failure::from_name(text) {
                return Ok(failure);
            }
            match text.parse::<i64>() {
                Ok(code) => code,
                Err(_) => {
                    let names: Vec<String> =
                        Failure::NAMED.iter().map(|f| format!("`{f}`")).collect();
                    return Err(format!(
                        "unknown retry condition `{text}`, expected one of {}, \
                         or a status code from 400 to 599 (as \"503\")",
                        names.join(", ")
                    ));
                }
            }
        }
        OnItemFile::Code(code) => *code,
    };
    u16::try_from(code)
        .ok()
        .filter(|c| RetryOn::STATUS_RANGE.contains(c))
        .map(Failure::Status)
        .ok_or_else(|| {
            format!(
                "`{code}` is not a status code from 400 to 599 \
                 (only error responses can be retried)"
            )
        })
}

/// Checks an upstream's `circuit_breaker = { … }` (`None`: no breaker); `prefix` is its key
/// path (`upstream[0].circuit_breaker`).
pub(crate) fn circuit_breaker(
    prefix: &str,
    f: Option<&BreakerFile>,
) -> Result<Option<BreakerConfig>, KeyError> {
    let Some(f) = f else {
        return Ok(None);
    };
    let defaults = BreakerConfig::default();
    let key = |name: &str| format!("{prefix}.{name}");
    let at_least_one = |name: &str, value: Option<u64>, default: u32| match value {
        None => Ok(default),
        Some(n) => match u32::try_from(n) {
            Ok(n) if n >= 1 => Ok(n),
            Ok(_) => Err((key(name), "must be at least 1".to_string())),
            Err(_) => Err((key(name), format!("{n} is too large"))),
        },
    };
    let failures = at_least_one("failures", f.failures, defaults.failures)?;
    let min_requests = at_least_one("min_requests", f.min_requests, defaults.min_requests)?;
    let half_open_max = at_least_one("half_open_max", f.half_open_max, defaults.half_open_max)?;
    let half_open_successes = at_least_one(
        "half_open_successes",
        f.half_open_successes,
        defaults.half_open_successes,
    )?;

    let failure_rate = match f.failure_rate {
        None => None,
        Some(rate) if rate.is_finite() && rate > 0.0 && rate <= 1.0 => Some(rate),
        Some(rate) => {
            return Err((
                key("failure_rate"),
                format!(
                    "must be a fraction greater than 0 and at most 1 \
                     (0.5 = half of the results), got {rate}"
                ),
            ))
        }
    };

    let window = match f.window_ms {
        None => defaults.window,
        Some(ms) if (MIN_WINDOW_MS..=MAX_DURATION_MS).contains(&ms) => Duration::from_millis(ms),
        Some(ms) => {
            return Err((
                key("window_ms"),
                format!(
                    "must be between {MIN_WINDOW_MS} and {MAX_DURATION_MS} (one day), got {ms}"
                ),
            ))
        }
    };
    let open = positive_ms(&key("open_ms"), f.open_ms)?.unwrap_or(defaults.open);
    let open_max = match f.open_max_ms {
        None => open.saturating_mul(BreakerConfig::OPEN_MAX_FACTOR),
        Some(ms) => {
            let open_max = positive_ms(&key("open_max_ms"), Some(ms))?.unwrap_or(open);
            if open_max < open {
                return Err((
                    key("open_max_ms"),
                    format!("must be at least open_ms ({}), got {ms}", open.as_millis()),
                ));
            }
            open_max
        }
    };

    Ok(Some(BreakerConfig {
        failures,
        failure_rate,
        min_requests,
        window,
        open,
        open_max,
        half_open_max,
        half_open_successes,
    }))
}

/// An optional duration key that must be > 0 and at most a day when given.
fn positive_ms(key: &str, value: Option<u64>) -> Result<Option<Duration>, KeyError> {
    match value {
        None => Ok(None),
        Some(0) => Err((
            key.to_string(),
            "must be greater than 0 (milliseconds)".to_string(),
        )),
        Some(ms) if ms > MAX_DURATION_MS => Err((
            key.to_string(),
            format!("must be at most {MAX_DURATION_MS} (one day), got {ms}"),
        )),
        Some(ms) => Ok(Some(Duration::from_millis(ms))),
    }
}

/// Writes an upstream's `retry` and `circuit_breaker` lines for [`super::Config::describe`].
pub(crate) fn write_upstream(out: &mut String, u: &UpstreamConfig) -> fmt::Result {
    let optional_ms = |d: Option<Duration>| match d {
        Some(d) => format!("{} ms", d.as_millis()),
        None => "none".to_string(),
    };
    let r = &u.retry;
    writeln!(out, "  retry")?;
    writeln!(out, "    max_retries           {}", r.max_retries)?;
    writeln!(out, "    on                    {}", r.on)?;
    writeln!(out, "    retry_non_idempotent  {}", r.retry_non_idempotent)?;
    writeln!(
        out,
        "    backoff               {} ms doubling to {} ms, full jitter",
        r.backoff.base.as_millis(),
        r.backoff.max.as_millis()
    )?;
    writeln!(
        out,
        "    per_try_timeout       {}",
        optional_ms(r.per_try_timeout)
    )?;
    writeln!(
        out,
        "    request_timeout       {}",
        optional_ms(r.request_timeout)
    )?;
    writeln!(
        out,
        "    budget                {}% of requests + {}/s per shard",
        r.budget_percent, r.min_retries_per_sec
    )?;
    writeln!(out, "    retry_body_bytes      {}", r.retry_body_bytes)?;
    let Some(b) = &u.circuit_breaker else {
        return writeln!(out, "  circuit_breaker  off");
    };
    writeln!(out, "  circuit_breaker")?;
    writeln!(out, "    failures              {} consecutive", b.failures)?;
    match b.failure_rate {
        Some(rate) => writeln!(
            out,
            "    failure_rate          {rate} over {} ms once {} results",
            b.window.as_millis(),
            b.min_requests
        )?,
        None => writeln!(out, "    failure_rate          none")?,
    }
    writeln!(
        out,
        "    open                  {} ms doubling to {} ms",
        b.open.as_millis(),
        b.open_max.as_millis()
    )?;
    writeln!(
        out,
        "    half_open             {} trial(s) at a time, {} successes close",
        b.half_open_max, b.half_open_successes
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError};

    const SRC: &str = "test.toml";
    const MIN: &str = "[[upstream]]\nname = \"a\"\npeers = [{ address = \"127.0.0.1:8001\" }]\n";

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, SRC)
    }

    fn with(lines: &str) -> String {
        format!("{MIN}{lines}\n")
    }

    /// Expects an error at `key` whose Display contains `reason`; returns the Display.
    #[track_caller]
    fn expect_err(text: &str, key: &str, reason: &str) -> String {
        let e = match load(text) {
            Ok(c) => panic!("expected an error at `{key}`, got {:#?}", c.upstreams),
            Err(e) => e,
        };
        let shown = e.to_string();
        assert_eq!(e.key, key, "{shown}");
        assert!(shown.contains(reason), "expected {reason:?} in: {shown}");
        shown
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn absent_keys_give_default_retry_and_no_breaker() {
        let c = load(MIN).unwrap();
        let u = &c.upstreams[0];
        assert_eq!(u.retry, RetryPolicy::default());
        assert_eq!(u.circuit_breaker, None);
        // Empty tables: every default, and a breaker.
        let c = load(&with("retry = {}\ncircuit_breaker = {}")).unwrap();
        let u = &c.upstreams[0];
        assert_eq!(u.retry, RetryPolicy::default());
        assert_eq!(u.circuit_breaker, Some(BreakerConfig::default()));
    }

    #[test]
    fn every_retry_key() {
        let c = load(&with(
            "retry = { max_retries = 2, on = [\"connect_failure\", \"reset\", 503, \"429\"], \
             retry_non_idempotent = true, backoff_base_ms = 50, backoff_max_ms = 800, \
             per_try_timeout_ms = 250, request_timeout_ms = 2000, budget_percent = 10, \
             min_retries_per_sec = 0, retry_body_bytes = 1024 }",
        ))
        .unwrap();
        let r = c.upstreams[0].retry;
        assert_eq!(r.max_retries, 2);
        assert_eq!(r.on.to_string(), "connect_failure, reset, 429, 503");
        assert!(r.retry_non_idempotent);
        assert_eq!(r.backoff.base, 50 * MS);
        assert_eq!(r.backoff.max, 800 * MS);
        assert_eq!(r.per_try_timeout, Some(250 * MS));
        assert_eq!(r.request_timeout, Some(2000 * MS));
        assert_eq!(r.budget_percent, 10);
        assert_eq!(r.min_retries_per_sec, 0);
        assert_eq!(r.retry_body_bytes, 1024);
        // `on = []` never retries; a zero backoff is allowed.
        let c = load(&with(
            "retry = { on = [], backoff_base_ms = 0, backoff_max_ms = 0 }",
        ))
        .unwrap();
        let r = c.upstreams[0].retry;
        assert!(r.on.is_empty());
        assert_eq!(r.backoff.max, Duration::ZERO);
    }

    #[test]
    fn design_md_example_parses() {
        let c = load(&with(
            "retry = { max_retries = 3, on = [\"connect_failure\", \"timeout\", \"reset\", \
             \"502\", \"503\", \"504\"], backoff_base_ms = 100, backoff_max_ms = 5000, \
             budget_percent = 20 }\n\
             circuit_breaker = { failures = 5, open_ms = 30000, half_open_successes = 3 }",
        ))
        .unwrap();
        let u = &c.upstreams[0];
        assert_eq!(
            u.retry.on.to_string(),
            "connect_failure, reset, timeout, 502, 503, 504"
        );
        assert_eq!(u.circuit_breaker, Some(BreakerConfig::default()));
    }

    #[test]
    fn every_breaker_key() {
        let c = load(&with(
            "circuit_breaker = { failures = 3, failure_rate = 0.25, min_requests = 50, \
             window_ms = 5000, open_ms = 1000, open_max_ms = 4000, half_open_max = 2, \
             half_open_successes = 1 }",
        ))
        .unwrap();
        assert_eq!(
            c.upstreams[0].circuit_breaker,
            Some(BreakerConfig {
                failures: 3,
                failure_rate: Some(0.25),
                min_requests: 50,
                window: 5000 * MS,
                open: 1000 * MS,
                open_max: 4000 * MS,
                half_open_max: 2,
                half_open_successes: 1,
            })
        );
        // open_max defaults to 10 × open; an integer rate of 1 is accepted.
        let c = load(&with(
            "circuit_breaker = { open_ms = 2000, failure_rate = 1 }",
        ))
        .unwrap();
        let b = c.upstreams[0].circuit_breaker.unwrap();
        assert_eq!(b.open_max, 20_000 * MS);
        assert_eq!(b.failure_rate, Some(1.0));
    }

    #[test]
    fn bad_on_entries_name_their_index() {
        let shown = expect_err(
            &with("retry = { on = [\"reset\", \"timeout\", \"resets\"] }"),
            "upstream[0].retry.on[2]",
            "unknown retry condition `resets`, expected one of `connect_failure`, \
             `connect_timeout`, `reset`, `timeout`, `invalid_response`, `tls_failure`, or a status code \
             from 400 to 599 (as \"503\")",
        );
        assert!(shown.contains("(line 4)"), "{shown}");
        expect_err(
            &with("retry = { on = [\"503\", 200] }"),
            "upstream[0].retry.on[1]",
            "`200` is not a status code from 400 to 599",
        );
        expect_err(
            &with("retry = { on = [\"600\"] }"),
            "upstream[0].retry.on[0]",
            "`600` is not a status code from 400 to 599",
        );
        expect_err(
            &with("retry = { on = [-1] }"),
            "upstream[0].retry.on[0]",
            "`-1` is not a status code",
        );
        expect_err(
            &with("retry = { on = [\"503\", \"reset\", 503] }"),
            "upstream[0].retry.on[2]",
            "`503` is listed twice (also upstream[0].retry.on[0])",
        );
        expect_err(
            &with("retry = { on = [1.5] }"),
            "upstream[0].retry.on[0]",
            "expected a failure name such as \"reset\" or a status code such as \"503\"",
        );
        expect_err(
            &with("retry = { on = \"reset\" }"),
            "upstream[0].retry.on",
            "invalid type: string \"reset\", expected a sequence",
        );
    }

    #[test]
    fn retry_ranges() {
        for (keys, key, reason) in [
            (
                "max_retries = 101",
                "max_retries",
                "must be between 0 and 100, got 101",
            ),
            (
                "budget_percent = 101",
                "budget_percent",
                "must be between 0 and 100, got 101",
            ),
            (
                "backoff_base_ms = 10000",
                "backoff_base_ms",
                "must be at most backoff_max_ms (5000, the default), got 10000",
            ),
            (
                "backoff_base_ms = 200, backoff_max_ms = 100",
                "backoff_max_ms",
                "must be at least backoff_base_ms (200), got 100",
            ),
            (
                "backoff_max_ms = 3600001",
                "backoff_max_ms",
                "must be at most 3600000 (one hour), got 3600001",
            ),
            (
                "per_try_timeout_ms = 0",
                "per_try_timeout_ms",
                "must be greater than 0",
            ),
            (
                "request_timeout_ms = 0",
                "request_timeout_ms",
                "must be greater than 0",
            ),
            (
                "request_timeout_ms = 86400001",
                "request_timeout_ms",
                "must be at most 86400000 (one day)",
            ),
            (
                "min_retries_per_sec = 4294967296",
                "min_retries_per_sec",
                "is too large",
            ),
            (
                "retry_body_bytes = 67108865",
                "retry_body_bytes",
                "must be at most 67108864 (64 MiB)",
            ),
            (
                "max_retries = -1",
                "max_retries",
                "invalid value: integer `-1`",
            ),
        ] {
            expect_err(
                &with(&format!("retry = {{ {keys} }}")),
                &format!("upstream[0].retry.{key}"),
                reason,
            );
        }
    }

    #[test]
    fn breaker_ranges() {
        for (keys, key, reason) in [
            ("failures = 0", "failures", "must be at least 1"),
            ("min_requests = 0", "min_requests", "must be at least 1"),
            ("half_open_max = 0", "half_open_max", "must be at least 1"),
            (
                "half_open_successes = 0",
                "half_open_successes",
                "must be at least 1",
            ),
            ("failures = 4294967296", "failures", "is too large"),
            (
                "failure_rate = 0.0",
                "failure_rate",
                "must be a fraction greater than 0",
            ),
            (
                "failure_rate = 1.5",
                "failure_rate",
                "at most 1 (0.5 = half of the results), got 1.5",
            ),
            ("failure_rate = nan", "failure_rate", "got NaN"),
            (
                "window_ms = 9",
                "window_ms",
                "must be between 10 and 86400000 (one day), got 9",
            ),
            ("open_ms = 0", "open_ms", "must be greater than 0"),
            (
                "open_ms = 1000, open_max_ms = 999",
                "open_max_ms",
                "must be at least open_ms (1000), got 999",
            ),
            ("open_max_ms = 0", "open_max_ms", "must be greater than 0"),
        ] {
            expect_err(
                &with(&format!("circuit_breaker = {{ {keys} }}")),
                &format!("upstream[0].circuit_breaker.{key}"),
                reason,
            );
        }
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_path() {
        let shown = expect_err(
            &with("retry = { max_retry = 1 }"),
            "upstream[0].retry.max_retry",
            "unknown field `max_retry`, expected one of `max_retries`, `on`",
        );
        assert!(shown.contains("(line 4)"), "{shown}");
        expect_err(
            &with("circuit_breaker = { failure = 1 }"),
            "upstream[0].circuit_breaker.failure",
            "unknown field `failure`, expected one of `failures`",
        );
    }

    #[test]
    fn describe_shows_retry_and_breaker() {
        let c = load(&format!(
            "{MIN}[[upstream]]\nname = \"b\"\npeers = [{{ address = \"127.0.0.1:8002\" }}]\n\
             retry = {{ on = [\"reset\", 503], request_timeout_ms = 3000 }}\n\
             circuit_breaker = {{ failure_rate = 0.5 }}\n"
        ))
        .unwrap();
        let d = c.describe();
        for want in [
            "upstream[0] \"a\"\n",
            "  retry\n    max_retries           3\n\
             \x20   on                    connect_failure, connect_timeout, reset, timeout, tls_failure, 502, 503, 504\n\
             \x20   retry_non_idempotent  false\n\
             \x20   backoff               100 ms doubling to 5000 ms, full jitter\n\
             \x20   per_try_timeout       none\n\
             \x20   request_timeout       none\n\
             \x20   budget                20% of requests + 3/s per shard\n\
             \x20   retry_body_bytes      65536\n\
             \x20 circuit_breaker  off\n",
            "    on                    reset, 503\n",
            "    request_timeout       3000 ms\n",
            "  circuit_breaker\n    failures              5 consecutive\n\
             \x20   failure_rate          0.5 over 10000 ms once 20 results\n\
             \x20   open                  30000 ms doubling to 300000 ms\n\
             \x20   half_open             1 trial(s) at a time, 3 successes close\n",
        ] {
            assert!(d.contains(want), "missing {want:?} in:\n{d}");
        }
    }
}

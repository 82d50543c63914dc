//! The balancing keys of an `[[upstream]]`: `algorithm`, `hash_key`, `points`,
//! `balance_factor`, `table_size`, `ewma_decay_ms` — their checks (called from
//! `validate.rs::upstream`) and their lines in [`super::Config::describe`].
//!
//! Rules: `consistent_hash` and `maglev` need a `hash_key`; `ip_hash` is `consistent_hash`
//! keyed by `client_ip` (a different `hash_key` is an error); other algorithms take no
//! `hash_key`. Each tuning key applies to its algorithms only (`points`: consistent_hash,
//! ip_hash; `balance_factor`: the three hashing ones; `table_size`: maglev; `ewma_decay_ms`:
//! peak_ewma), so a key that would be silently ignored is an error instead.
use std::fmt;
use std::time::Duration;

use super::file::UpstreamFile;
use super::{Algorithm, UpstreamConfig};
use crate::balance::{BalanceParams, HashKey};

/// Algorithms the file may name, in the order error messages list them.
pub(super) const SUPPORTED_ALGORITHMS: [Algorithm; 10] = [
    Algorithm::RoundRobin,
    Algorithm::SmoothWeighted,
    Algorithm::LeastConnections,
    Algorithm::PowerOfTwo,
    Algorithm::Random,
    Algorithm::WeightedRandom,
    Algorithm::ConsistentHash,
    Algorithm::Maglev,
    Algorithm::PeakEwma,
    Algorithm::IpHash,
];

/// Allowed `points`.
const POINTS_RANGE: std::ops::RangeInclusive<u64> = 1..=10_000;
/// Largest `table_size` (a 4 Mi-entry table is 16 MiB per tier per shard and takes ~0.2 s to
/// build).
const MAX_TABLE_SIZE: u64 = 1 << 22;

/// Balance is the checked balancing part of an upstream.
#[derive(Debug, Clone)]
pub(super) struct Balance {
    /// `algorithm`.
    pub algorithm: Algorithm,
    /// `hash_key` (`client_ip` for ip_hash); `Some` exactly for hashing algorithms.
    pub hash_key: Option<HashKey>,
    /// The tuning keys with defaults applied.
    pub params: BalanceParams,
}

/// A check failure: the key path and the reason.
type Failure = (String, String);

/// Checks the balancing keys of upstream `i`; an error names the key and the reason.
pub(super) fn check(i: usize, f: &UpstreamFile) -> Result<Balance, Failure> {
    let key = |rest: &str| format!("upstream[{i}].{rest}");
    let fail = |rest: &str, reason: String| (key(rest), reason);

    let algorithm = match f.algorithm.as_deref() {
        None => Algorithm::RoundRobin,
        Some(name) => algorithm(name).map_err(|r| fail("algorithm", r))?,
    };
    let name = algorithm.name();

    let hash_key = match (&f.hash_key, algorithm) {
        (None, Algorithm::IpHash) => Some(HashKey::ClientIp),
        (None, a) if a.is_hashing() => {
            return Err(fail(
                "hash_key",
                format!(
                    "algorithm `{name}` needs a `hash_key` (`client_ip`, `path`, `query`, `uri`, \
                     `header:NAME`, `cookie:NAME` or `query_param:NAME`)"
                ),
            ))
        }
        (None, _) => None,
        (Some(text), a) => {
            if !a.is_hashing() {
                return Err(fail(
                    "hash_key",
                    format!(
                        "only applies to the hashing algorithms `consistent_hash`, `maglev` and \
                         `ip_hash`, not `{name}`"
                    ),
                ));
            }
            let parsed = HashKey::parse(text).map_err(|r| fail("hash_key", r))?;
            if a == Algorithm::IpHash && parsed != HashKey::ClientIp {
                return Err(fail(
                    "hash_key",
                    format!(
                        "algorithm `ip_hash` always hashes `client_ip`; for `{text}` use \
                         algorithm = \"consistent_hash\""
                    ),
                ));
            }
            Some(parsed)
        }
    };

    let only_for = |rest: &str, set: bool, applies: &[Algorithm]| -> Result<(), Failure> {
        if set && !applies.contains(&algorithm) {
            let names: Vec<String> = applies.iter().map(|a| format!("`{}`", a.name())).collect();
            return Err(fail(
                rest,
                format!(
                    "only applies to algorithm {}, not `{name}`",
                    names.join(" or ")
                ),
            ));
        }
        Ok(())
    };
    use Algorithm::{ConsistentHash, IpHash, Maglev, PeakEwma};
    only_for("points", f.points.is_some(), &[ConsistentHash, IpHash])?;
    only_for(
        "balance_factor",
        f.balance_factor.is_some(),
        &[ConsistentHash, Maglev, IpHash],
    )?;
    only_for("table_size", f.table_size.is_some(), &[Maglev])?;
    only_for("ewma_decay_ms", f.ewma_decay_ms.is_some(), &[PeakEwma])?;

    let defaults = BalanceParams::default();
    let points = match f.points {
        None => defaults.points,
        Some(n) if POINTS_RANGE.contains(&n) => n as u32,
        Some(n) => {
            return Err(fail(
                "points",
                format!(
                    "must be between {} and {}, got {n}",
                    POINTS_RANGE.start(),
                    POINTS_RANGE.end()
                ),
            ))
        }
    };
    let balance_factor = match f.balance_factor {
        None => None,
        Some(x) if x.is_finite() && x > 1.0 => Some(x),
        Some(x) => {
            return Err(fail(
                "balance_factor",
                format!("must be a number greater than 1.0 (e.g. 1.25), got {x}"),
            ))
        }
    };
    let table_size = match f.table_size {
        None => defaults.table_size,
        Some(n) => table_size(n, f.peers.len()).map_err(|r| fail("table_size", r))?,
    };
    let ewma_decay = match f.ewma_decay_ms {
        None => defaults.ewma_decay,
        Some(0) => {
            return Err(fail(
                "ewma_decay_ms",
                "must be greater than 0 (milliseconds)".to_string(),
            ))
        }
        Some(ms) => Duration::from_millis(ms),
    };
    Ok(Balance {
        algorithm,
        hash_key,
        params: BalanceParams {
            points,
            balance_factor,
            table_size,
            ewma_decay,
        },
    })
}

/// Maps an `algorithm = "…"` name; the error is the reason text.
fn algorithm(name: &str) -> Result<Algorithm, String> {
    if let Some(a) = SUPPORTED_ALGORITHMS.iter().find(|a| a.name() == name) {
        return Ok(*a);
    }
    let expected: Vec<String> = SUPPORTED_ALGORITHMS
        .iter()
        .map(|a| format!("`{}`", a.name()))
        .collect();
    Err(format!(
        "unknown algorithm `{name}`, expected one of {}",
        expected.join(", ")
    ))
}

/// Checks a Maglev `table_size`: a prime, at least the number of peers (each needs an
/// entry; ≥ 100 × peers keeps the spread within 1 %), at most [`MAX_TABLE_SIZE`].
fn table_size(n: u64, peers: usize) -> Result<u64, String> {
    use crate::balance::{is_prime, next_prime};
    if n > MAX_TABLE_SIZE {
        return Err(format!("must be at most {MAX_TABLE_SIZE}, got {n}"));
    }
    if n < peers as u64 {
        return Err(format!(
            "must be at least the number of peers ({peers}), and ideally 100 times it; got {n}"
        ));
    }
    if !is_prime(n) {
        return Err(format!(
            "must be a prime number, got {n} (the next prime is {})",
            next_prime(n)
        ));
    }
    Ok(n)
}

/// Writes the balancing lines of an upstream for [`super::Config::describe`]: `hash_key` and
/// the tuning keys that apply to its algorithm.
pub(super) fn describe(out: &mut String, u: &UpstreamConfig) -> fmt::Result {
    use fmt::Write as _;
    if let Some(key) = &u.hash_key {
        writeln!(out, "  hash_key   {key}")?;
    }
    let b = &u.balance;
    let factor = || match b.balance_factor {
        Some(f) => format!("balance_factor {f}"),
        None => "balance_factor none".to_string(),
    };
    match u.algorithm {
        Algorithm::ConsistentHash | Algorithm::IpHash => {
            writeln!(out, "  balance    points {}, {}", b.points, factor())
        }
        Algorithm::Maglev => writeln!(
            out,
            "  balance    table_size {}, {}",
            b.table_size,
            factor()
        ),
        Algorithm::PeakEwma => writeln!(
            out,
            "  balance    ewma_decay {} ms",
            b.ewma_decay.as_millis()
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError};

    /// One upstream with `extra` lines and two peers.
    fn upstream(extra: &str) -> String {
        format!(
            "[server]\nworkers = 1\n\n[[upstream]]\nname = \"a\"\n{extra}\
             peers = [{{ address = \"127.0.0.1:1\" }}, {{ address = \"127.0.0.1:2\" }}]\n"
        )
    }

    fn load(extra: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(&upstream(extra), "t.toml")
    }

    #[track_caller]
    fn err(extra: &str, key: &str, reason: &str) {
        let e = load(extra).expect_err("expected an error");
        assert_eq!(e.key, key, "{e}");
        assert!(e.reason.starts_with(reason), "expected {reason:?} in: {e}");
    }

    #[test]
    fn every_algorithm_name_loads() {
        for a in SUPPORTED_ALGORITHMS {
            let hash = if a == Algorithm::ConsistentHash || a == Algorithm::Maglev {
                "hash_key = \"path\"\n"
            } else {
                ""
            };
            let c = load(&format!("algorithm = \"{}\"\n{hash}", a.name())).unwrap();
            assert_eq!(c.upstreams[0].algorithm, a);
            assert_eq!(c.upstreams[0].hash_key.is_some(), a.is_hashing());
            assert_eq!(c.upstreams[0].balance, BalanceParams::default());
        }
    }

    #[test]
    fn unknown_algorithm_lists_them_all() {
        let e = load("algorithm = \"fastest\"\n").unwrap_err();
        assert_eq!(e.key, "upstream[0].algorithm");
        assert_eq!(
            e.reason,
            "unknown algorithm `fastest`, expected one of `round_robin`, `smooth_weighted`, \
             `least_connections`, `power_of_two`, `random`, `weighted_random`, \
             `consistent_hash`, `maglev`, `peak_ewma`, `ip_hash` (line 6)"
        );
    }

    #[test]
    fn hash_key_rules() {
        let c = load("algorithm = \"consistent_hash\"\nhash_key = \"cookie:sid\"\n").unwrap();
        assert_eq!(
            c.upstreams[0].hash_key,
            Some(HashKey::Cookie("sid".to_string()))
        );
        let c = load("algorithm = \"ip_hash\"\n").unwrap();
        assert_eq!(c.upstreams[0].hash_key, Some(HashKey::ClientIp));
        let c = load("algorithm = \"ip_hash\"\nhash_key = \"client_ip\"\n").unwrap();
        assert_eq!(c.upstreams[0].hash_key, Some(HashKey::ClientIp));
        err(
            "algorithm = \"consistent_hash\"\n",
            "upstream[0].hash_key",
            "algorithm `consistent_hash` needs a `hash_key`",
        );
        err(
            "algorithm = \"maglev\"\n",
            "upstream[0].hash_key",
            "algorithm `maglev` needs a `hash_key`",
        );
        err(
            "hash_key = \"path\"\n",
            "upstream[0].hash_key",
            "only applies to the hashing algorithms `consistent_hash`, `maglev` and `ip_hash`, \
             not `round_robin`",
        );
        err(
            "algorithm = \"ip_hash\"\nhash_key = \"path\"\n",
            "upstream[0].hash_key",
            "algorithm `ip_hash` always hashes `client_ip`; for `path` use",
        );
        err(
            "algorithm = \"maglev\"\nhash_key = \"header\"\n",
            "upstream[0].hash_key",
            "unknown hash_key `header`, expected one of",
        );
        // The line of a written key is appended.
        let e = load("algorithm = \"maglev\"\nhash_key = \"header:\"\n").unwrap_err();
        assert!(e.to_string().ends_with("(line 7)"), "{e}");
    }

    #[test]
    fn tuning_keys() {
        let c = load(
            "algorithm = \"consistent_hash\"\nhash_key = \"uri\"\npoints = 40\n\
             balance_factor = 1.5\n",
        )
        .unwrap();
        let b = c.upstreams[0].balance;
        assert_eq!((b.points, b.balance_factor), (40, Some(1.5)));
        let c = load(
            "algorithm = \"maglev\"\nhash_key = \"uri\"\ntable_size = 251\nbalance_factor = 2\n",
        )
        .unwrap();
        assert_eq!(c.upstreams[0].balance.table_size, 251);
        assert_eq!(c.upstreams[0].balance.balance_factor, Some(2.0));
        let c = load("algorithm = \"peak_ewma\"\newma_decay_ms = 2500\n").unwrap();
        assert_eq!(
            c.upstreams[0].balance.ewma_decay,
            Duration::from_millis(2500)
        );
    }

    #[test]
    fn tuning_key_errors() {
        let ch = "algorithm = \"consistent_hash\"\nhash_key = \"uri\"\n";
        let mg = "algorithm = \"maglev\"\nhash_key = \"uri\"\n";
        err(
            &format!("{ch}points = 0\n"),
            "upstream[0].points",
            "must be between 1 and 10000, got 0",
        );
        err(
            &format!("{ch}balance_factor = 1.0\n"),
            "upstream[0].balance_factor",
            "must be a number greater than 1.0 (e.g. 1.25), got 1",
        );
        err(
            &format!("{ch}balance_factor = nan\n"),
            "upstream[0].balance_factor",
            "must be a number greater than 1.0",
        );
        err(
            &format!("{mg}table_size = 65536\n"),
            "upstream[0].table_size",
            "must be a prime number, got 65536 (the next prime is 65537)",
        );
        err(
            &format!("{mg}table_size = 1\n"),
            "upstream[0].table_size",
            "must be at least the number of peers (2)",
        );
        err(
            &format!("{mg}table_size = 100000000\n"),
            "upstream[0].table_size",
            "must be at most 4194304",
        );
        err(
            "algorithm = \"peak_ewma\"\newma_decay_ms = 0\n",
            "upstream[0].ewma_decay_ms",
            "must be greater than 0",
        );
        err(
            &format!("{mg}points = 10\n"),
            "upstream[0].points",
            "only applies to algorithm `consistent_hash` or `ip_hash`, not `maglev`",
        );
        err(
            "table_size = 251\n",
            "upstream[0].table_size",
            "only applies to algorithm `maglev`, not `round_robin`",
        );
        err(
            "algorithm = \"least_connections\"\nbalance_factor = 1.25\n",
            "upstream[0].balance_factor",
            "only applies to algorithm `consistent_hash` or `maglev` or `ip_hash`",
        );
        err(
            "ewma_decay_ms = 10\n",
            "upstream[0].ewma_decay_ms",
            "only applies to algorithm `peak_ewma`",
        );
    }

    #[test]
    fn describe_prints_the_balancing_setup() {
        let d = load("algorithm = \"consistent_hash\"\nhash_key = \"header:X-User\"\nbalance_factor = 1.25\n")
            .unwrap()
            .describe();
        assert!(d.contains("  algorithm  consistent_hash\n  hash_key   header:X-User\n  balance    points 160, balance_factor 1.25\n"), "{d}");
        let d = load("algorithm = \"maglev\"\nhash_key = \"client_ip\"\n")
            .unwrap()
            .describe();
        assert!(
            d.contains(
                "  hash_key   client_ip\n  balance    table_size 65537, balance_factor none\n"
            ),
            "{d}"
        );
        let d = load("algorithm = \"ip_hash\"\n").unwrap().describe();
        assert!(
            d.contains("  algorithm  ip_hash\n  hash_key   client_ip\n  balance    points 160"),
            "{d}"
        );
        let d = load("algorithm = \"peak_ewma\"\n").unwrap().describe();
        assert!(
            d.contains("  algorithm  peak_ewma\n  balance    ewma_decay 10000 ms\n"),
            "{d}"
        );
        let d = load("algorithm = \"least_connections\"\n")
            .unwrap()
            .describe();
        assert!(
            d.contains("  algorithm  least_connections\n  peers\n"),
            "{d}"
        );
    }
}

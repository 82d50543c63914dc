//! The peer set of one discovered upstream and its failure semantics (HAProxy's `hold`), as a
//! pure state machine: it takes answers and the time, and says which peers the upstream has
//! now, what changed (each change logged with its record) and when to look again.
//!
//! - A valid answer with records: records new to the set are added, known ones updated
//!   (reweighted); a record missing from the answer stays for `hold_obsolete` and is removed
//!   after it (the removal drains it: requests in flight finish on the generation they started
//!   on, new ones go elsewhere).
//! - A valid empty answer (NOERROR, no records): every record is missing, so the set empties
//!   after `hold_obsolete`.
//! - A failed lookup (timeout, SERVFAIL, NXDOMAIN, refused, an unreachable resolver): the last
//!   good set stays for `hold`, logged once when the failure starts and once when it ends; after
//!   `hold` the set empties.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

/// Found is one peer discovered from one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Peer weight (SRV weight; 1 for A/AAAA and containers).
    pub weight: u32,
    /// Whether it is a backup (a higher SRV priority, or SRV weight 0).
    pub backup: bool,
    /// The record it came from, for logs and `/status` (`A 10.0.0.1 ttl 30`,
    /// `SRV 10 5 8080 api-1.example. -> 10.0.0.1`, `container 3f2a… web-1`).
    pub record: String,
    /// The name it is known by, without a trailing dot: the server name (SNI and the name its
    /// certificate is checked for) it gets from its upstream's `tls`. The discovery's `name`
    /// for A/AAAA, the record's target for SRV, the container's name for Docker.
    pub name: String,
}

/// Answer is the outcome of one lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A valid answer with records; `ttl` is the smallest TTL among them, in seconds.
    Records {
        /// The peers the records name.
        found: Vec<Found>,
        /// Smallest TTL of the records (seconds); `None` when the source has no TTL.
        ttl: Option<u32>,
    },
    /// A valid answer without records (NOERROR / no data; no running container).
    Empty,
    /// The lookup failed: why (timeout, SERVFAIL, NXDOMAIN, …).
    Failed(String),
}

/// Outcome is the label of one answer in `ringlb_discovery_updates_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// A valid answer that changed the peer set.
    Changed,
    /// A valid answer that left the peer set as it was.
    Unchanged,
    /// A valid answer without records.
    Empty,
    /// A failed lookup.
    Error,
}

impl Outcome {
    /// The `result` label value.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Changed => "changed",
            Outcome::Unchanged => "unchanged",
            Outcome::Empty => "empty",
            Outcome::Error => "error",
        }
    }
}

/// Timing is how often a source looks again.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A fixed period; `None`: the answer's TTL clamped to `min_ttl..=max_ttl`.
    pub refresh: Option<Duration>,
    /// The shortest TTL-driven period, also the retry period after a failure or empty answer.
    pub min_ttl: Duration,
    /// The longest TTL-driven period.
    pub max_ttl: Duration,
    /// How long a failure keeps the last good set.
    pub hold: Duration,
    /// How long a record missing from a valid answer stays.
    pub hold_obsolete: Duration,
}

/// PeerSet is one discovered upstream's peers and its answer history.
#[derive(Debug)]
pub struct PeerSet {
    /// The upstream's name, for logs.
    upstream: String,
    /// When to look again, and the holds.
    timing: Timing,
    /// The peers now, sorted by address (so every instance orders them alike).
    peers: Vec<Found>,
    /// Peers missing from the last valid answers, since when.
    missing: HashMap<SocketAddr, Instant>,
    /// When the current run of failed lookups began.
    failing_since: Option<Instant>,
    /// The last answer's time (wall clock) and TTL, for `/status`.
    pub last_answer: Option<(SystemTime, Option<u32>)>,
    /// Why the last lookup failed, while it fails.
    pub last_error: Option<String>,
}

impl PeerSet {
    /// An empty set for `upstream`.
    pub fn new(upstream: &str, timing: Timing) -> PeerSet {
        PeerSet {
            upstream: upstream.to_string(),
            timing,
            peers: Vec::new(),
            missing: HashMap::new(),
            failing_since: None,
            last_answer: None,
            last_error: None,
        }
    }

    /// The peers now.
    pub fn peers(&self) -> &[Found] {
        &self.peers
    }

    /// Whether a failure is holding the last good set now.
    pub fn holding(&self) -> bool {
        self.failing_since.is_some()
    }

    /// Takes one answer at `now`; returns its label and how long to wait before looking again.
    pub fn observe(&mut self, answer: Answer, now: Instant) -> (Outcome, Duration) {
        let t = self.timing;
        let retry = t.refresh.unwrap_or(t.min_ttl);
        let (mut outcome, found, ttl) = match answer {
            Answer::Failed(why) => return self.failed(why, now),
            Answer::Empty => (Outcome::Empty, Vec::new(), None),
            Answer::Records { found, ttl } => (Outcome::Unchanged, found, ttl),
        };
        if let Some(since) = self.failing_since.take() {
            tracing::info!(
                upstream = %self.upstream,
                "discovery: answers again after {} ms of failures ({} peers)",
                now.saturating_duration_since(since).as_millis(),
                found.len()
            );
        }
        self.last_error = None;
        self.last_answer = Some((SystemTime::now(), ttl));
        let mut next: Vec<Found> = Vec::with_capacity(found.len().max(self.peers.len()));
        let mut changed = false;
        for f in found {
            if next.iter().any(|n| n.addr == f.addr) {
                continue; // two records naming one address: the first wins
            }
            self.missing.remove(&f.addr);
            match self.peers.iter().find(|p| p.addr == f.addr) {
                None => {
                    tracing::info!(upstream = %self.upstream, "discovery: added {} ({})", f.addr, f.record);
                    changed = true;
                }
                Some(old) if old.weight != f.weight || old.backup != f.backup => {
                    tracing::info!(
                        upstream = %self.upstream,
                        "discovery: reweighted {}: weight {} -> {}{} ({})",
                        f.addr,
                        old.weight,
                        f.weight,
                        match (old.backup, f.backup) {
                            (false, true) => ", now a backup",
                            (true, false) => ", now a primary",
                            _ => "",
                        },
                        f.record
                    );
                    changed = true;
                }
                Some(old) if old.name != f.name => {
                    tracing::info!(
                        upstream = %self.upstream,
                        "discovery: {} is now named {} (was {}) ({})",
                        f.addr,
                        f.name,
                        old.name,
                        f.record
                    );
                    changed = true;
                }
                Some(_) => {}
            }
            next.push(f);
        }
        let mut wait = match (t.refresh, ttl) {
            (Some(r), _) => r,
            (None, Some(ttl)) => Duration::from_secs(u64::from(ttl)).clamp(t.min_ttl, t.max_ttl),
            (None, None) => retry,
        };
        if outcome == Outcome::Empty {
            wait = retry;
        }
        for old in std::mem::take(&mut self.peers) {
            if next.iter().any(|n| n.addr == old.addr) {
                continue;
            }
            let since = *self.missing.entry(old.addr).or_insert(now);
            let gone_for = now.saturating_duration_since(since);
            if gone_for >= t.hold_obsolete {
                self.missing.remove(&old.addr);
                tracing::info!(
                    upstream = %self.upstream,
                    "discovery: removed {} (draining; was {})",
                    old.addr,
                    old.record
                );
                changed = true;
            } else {
                wait = wait.min(t.hold_obsolete - gone_for);
                next.push(old);
            }
        }
        next.sort_by_key(|f| f.addr);
        self.peers = next;
        if changed {
            outcome = Outcome::Changed;
        }
        (outcome, wait.max(Duration::from_millis(1)))
    }

    /// A failed lookup: keep the set for `hold`, then empty it.
    fn failed(&mut self, why: String, now: Instant) -> (Outcome, Duration) {
        let t = self.timing;
        let retry = t.refresh.unwrap_or(t.min_ttl);
        let since = *self.failing_since.get_or_insert(now);
        let failing_for = now.saturating_duration_since(since);
        if since == now {
            tracing::warn!(
                upstream = %self.upstream,
                "discovery: lookup failed ({why}): keeping the last good set of {} peers for {} ms",
                self.peers.len(),
                t.hold.as_millis()
            );
        }
        self.last_error = Some(why);
        let mut outcome = Outcome::Error;
        if failing_for >= t.hold {
            if !self.peers.is_empty() {
                tracing::warn!(
                    upstream = %self.upstream,
                    "discovery: still failing after {} ms: removing all {} peers",
                    t.hold.as_millis(),
                    self.peers.len()
                );
                for p in &self.peers {
                    tracing::info!(upstream = %self.upstream, "discovery: removed {} (draining; was {})", p.addr, p.record);
                }
                self.peers.clear();
                self.missing.clear();
                outcome = Outcome::Changed;
            }
            return (outcome, retry);
        }
        (
            outcome,
            retry
                .min(t.hold - failing_for)
                .max(Duration::from_millis(1)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(addr: &str, weight: u32) -> Found {
        Found {
            addr: addr.parse().unwrap(),
            weight,
            backup: false,
            record: format!("A {addr}"),
            name: "api.test".to_string(),
        }
    }

    fn timing() -> Timing {
        Timing {
            refresh: None,
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(60),
            hold: Duration::from_secs(30),
            hold_obsolete: Duration::ZERO,
        }
    }

    fn addrs(s: &PeerSet) -> Vec<String> {
        s.peers().iter().map(|f| f.addr.to_string()).collect()
    }

    #[test]
    fn a_new_name_for_a_known_address_is_a_change() {
        let mut s = PeerSet::new("api", timing());
        let t0 = Instant::now();
        let named = |name: &str| Answer::Records {
            found: vec![Found {
                name: name.to_string(),
                ..found("10.0.0.1:80", 1)
            }],
            ttl: Some(30),
        };
        assert_eq!(s.observe(named("a.test"), t0).0, Outcome::Changed);
        assert_eq!(s.observe(named("a.test"), t0).0, Outcome::Unchanged);
        assert_eq!(s.observe(named("b.test"), t0).0, Outcome::Changed);
        assert_eq!(s.peers()[0].name, "b.test");
    }

    #[test]
    fn add_reweight_remove_and_ttl_clamping() {
        let mut s = PeerSet::new("api", timing());
        let t0 = Instant::now();
        let a = Answer::Records {
            found: vec![found("10.0.0.2:80", 1), found("10.0.0.1:80", 1)],
            ttl: Some(300),
        };
        assert_eq!(
            s.observe(a.clone(), t0),
            (Outcome::Changed, Duration::from_secs(60))
        );
        assert_eq!(addrs(&s), ["10.0.0.1:80", "10.0.0.2:80"]);
        assert_eq!(
            s.observe(a, t0),
            (Outcome::Unchanged, Duration::from_secs(60))
        );
        let b = Answer::Records {
            found: vec![found("10.0.0.1:80", 5)],
            ttl: Some(0),
        };
        assert_eq!(s.observe(b, t0), (Outcome::Changed, Duration::from_secs(1)));
        assert_eq!(addrs(&s), ["10.0.0.1:80"]);
        assert_eq!(s.peers()[0].weight, 5);
    }

    #[test]
    fn failures_hold_the_last_good_set_then_empty_it() {
        let mut s = PeerSet::new("api", timing());
        let t0 = Instant::now();
        let a = Answer::Records {
            found: vec![found("10.0.0.1:80", 1)],
            ttl: Some(5),
        };
        s.observe(a.clone(), t0);
        let fail = || Answer::Failed("SERVFAIL".into());
        assert_eq!(
            s.observe(fail(), t0),
            (Outcome::Error, Duration::from_secs(1))
        );
        assert!(s.holding());
        assert_eq!(
            s.observe(fail(), t0 + Duration::from_secs(29)).0,
            Outcome::Error
        );
        assert_eq!(addrs(&s), ["10.0.0.1:80"]);
        assert_eq!(s.last_error.as_deref(), Some("SERVFAIL"));
        assert_eq!(
            s.observe(fail(), t0 + Duration::from_secs(30)).0,
            Outcome::Changed
        );
        assert!(s.peers().is_empty());
        assert_eq!(
            s.observe(fail(), t0 + Duration::from_secs(31)).0,
            Outcome::Error
        );
        assert_eq!(
            s.observe(a, t0 + Duration::from_secs(32)).0,
            Outcome::Changed
        );
        assert!(!s.holding());
        assert_eq!(s.last_error, None);
    }

    #[test]
    fn an_empty_answer_empties_after_hold_obsolete() {
        let mut s = PeerSet::new(
            "api",
            Timing {
                hold_obsolete: Duration::from_secs(10),
                ..timing()
            },
        );
        let t0 = Instant::now();
        s.observe(
            Answer::Records {
                found: vec![found("10.0.0.1:80", 1), found("10.0.0.2:80", 1)],
                ttl: Some(30),
            },
            t0,
        );
        // One record gone: kept for hold_obsolete, and the next look comes when it ends.
        let one = Answer::Records {
            found: vec![found("10.0.0.1:80", 1)],
            ttl: Some(30),
        };
        let (o, wait) = s.observe(one.clone(), t0 + Duration::from_secs(4));
        assert_eq!((o, wait), (Outcome::Unchanged, Duration::from_secs(10)));
        assert_eq!(addrs(&s).len(), 2);
        assert_eq!(
            s.observe(one, t0 + Duration::from_secs(14)).0,
            Outcome::Changed
        );
        assert_eq!(addrs(&s), ["10.0.0.1:80"]);
        assert_eq!(
            s.observe(Answer::Empty, t0 + Duration::from_secs(15)).0,
            Outcome::Empty
        );
        assert_eq!(addrs(&s), ["10.0.0.1:80"]);
        assert_eq!(
            s.observe(Answer::Empty, t0 + Duration::from_secs(25)).0,
            Outcome::Changed
        );
        assert!(s.peers().is_empty());
    }
}

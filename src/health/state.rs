//! The health state machine of every peer, owned by the control thread (invariant 3).
//!
//! A peer has an active state ([`ProbeState`]: unknown, up, down; moved by probe results with
//! `rise`/`fall` hysteresis) and a passive one (consecutive failures reported by all shards;
//! enough of them eject the peer for a while, doubling on each repeated ejection, and never
//! more than `max_eject_percent` of a group at once). A peer is *eligible* when it is not down
//! and not ejected. Every `observe_*` returns a [`Change`] only when the peer's [`Status`]
//! or eligibility changed (pingora's `observe_health -> bool`): only changes are logged, and
//! only eligibility flips travel to the shards.

use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use crate::balance::PeerId;
use crate::config::{PassiveHealth, StartState, UpstreamConfig};

/// Largest doubling exponent of an ejection (the cap, `max_eject`, usually binds long before).
const MAX_EJECT_LEVEL: u32 = 20;

/// ProbeState is a peer's active-check state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeState {
    /// Probed, but no verdict yet (`rise` successes or `fall` failures): eligible.
    Unknown,
    /// `rise` consecutive successes (or no active check at all).
    Up,
    /// `fall` consecutive failures (or `start = "down"` before `rise` successes).
    Down,
}

/// Status is what a peer is as a whole, for logs and `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// No verdict yet; eligible.
    Unknown,
    /// Up and not ejected.
    Up,
    /// The active check says down (whether or not it is also ejected).
    Down,
    /// Ejected by passive health (the active check, if any, does not say down).
    Ejected,
}

impl Status {
    /// The lowercase name used in logs and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Status::Unknown => "unknown",
            Status::Up => "up",
            Status::Down => "down",
            Status::Ejected => "ejected",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Change is one state change of one peer: what it was, what it is, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Status before.
    pub from: Status,
    /// Status after (may equal `from` when only eligibility changed).
    pub to: Status,
    /// Eligibility after (before is `!eligible` when [`Change::flipped`]).
    pub eligible: bool,
    /// Whether eligibility flipped: only then the shards are told.
    pub flipped: bool,
    /// The reason, e.g. `3 consecutive probe failures (last: HTTP 500)`.
    pub why: String,
}

/// LastCheck is the most recent probe of a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastCheck {
    /// When it finished (monotonic).
    pub at: Instant,
    /// When it finished (wall clock, for `/status`).
    pub wall: SystemTime,
    /// Whether it succeeded.
    pub ok: bool,
    /// What it saw: `HTTP 200`, `connect: Connection refused`, `timeout after 200 ms`.
    pub detail: String,
}

/// PeerHealth is one peer's health state machine.
#[derive(Debug, Clone)]
pub struct PeerHealth {
    /// Active-check state.
    pub state: ProbeState,
    /// Consecutive successful probes.
    pub successes: u32,
    /// Consecutive failed probes.
    pub failures: u32,
    /// Consecutive failed requests reported by the shards (reset by a reported success).
    pub passive_failures: u32,
    /// Ejected by passive health until then; `None` = not ejected.
    pub ejected_until: Option<Instant>,
    /// How many times it was ejected in total.
    pub ejections: u64,
    /// Doubling exponent of the next ejection (reset after a quiet `max_eject`).
    eject_level: u32,
    /// When its last ejection ended, to reset `eject_level` after a quiet period.
    returned_at: Option<Instant>,
    /// Why it is in its current status.
    pub why: String,
    /// The most recent probe, if probed.
    pub last_check: Option<LastCheck>,
    /// When its status or eligibility last changed.
    pub changed_at: Option<Instant>,
}

impl PeerHealth {
    /// A peer before any observation: `up` without an active check, else per `start`.
    pub fn new(start: Option<StartState>) -> PeerHealth {
        let (state, why) = match start {
            None => (ProbeState::Up, "no active check"),
            Some(StartState::Unknown) => (ProbeState::Unknown, "not probed yet"),
            Some(StartState::Down) => (ProbeState::Down, "start = \"down\": waiting for probes"),
        };
        PeerHealth {
            state,
            successes: 0,
            failures: 0,
            passive_failures: 0,
            ejected_until: None,
            ejections: 0,
            eject_level: 0,
            returned_at: None,
            why: why.to_string(),
            last_check: None,
            changed_at: None,
        }
    }

    /// Whether it is ejected right now.
    pub fn is_ejected(&self) -> bool {
        self.ejected_until.is_some()
    }

    /// Whether the shards may send it new requests: not down and not ejected.
    pub fn is_eligible(&self) -> bool {
        self.state != ProbeState::Down && !self.is_ejected()
    }

    /// Its status as a whole.
    pub fn status(&self) -> Status {
        match self.state {
            ProbeState::Down => Status::Down,
            _ if self.is_ejected() => Status::Ejected,
            ProbeState::Unknown => Status::Unknown,
            ProbeState::Up => Status::Up,
        }
    }

    /// Runs `f` and returns the change it made to status or eligibility, if any (recording
    /// `why` as the reason then).
    fn track(
        &mut self,
        now: Instant,
        f: impl FnOnce(&mut Self) -> Option<String>,
    ) -> Option<Change> {
        let (from, was) = (self.status(), self.is_eligible());
        let why = f(self)?;
        let (to, eligible) = (self.status(), self.is_eligible());
        if from == to && was == eligible {
            return None;
        }
        self.why = why.clone();
        self.changed_at = Some(now);
        Some(Change {
            from,
            to,
            eligible,
            flipped: was != eligible,
            why,
        })
    }

    /// Records one probe result: `rise` consecutive successes bring it up, `fall` consecutive
    /// failures bring it down. Returns the change, if any.
    pub fn observe_probe(
        &mut self,
        ok: bool,
        detail: &str,
        rise: u32,
        fall: u32,
        now: Instant,
    ) -> Option<Change> {
        self.last_check = Some(LastCheck {
            at: now,
            wall: SystemTime::now(),
            ok,
            detail: detail.to_string(),
        });
        self.track(now, |p| {
            if ok {
                p.failures = 0;
                p.successes = p.successes.saturating_add(1);
                if p.state != ProbeState::Up && p.successes >= rise {
                    p.state = ProbeState::Up;
                    return Some(format!(
                        "{} consecutive probe successes (last: {detail})",
                        p.successes
                    ));
                }
            } else {
                p.successes = 0;
                p.failures = p.failures.saturating_add(1);
                if p.state != ProbeState::Down && p.failures >= fall {
                    p.state = ProbeState::Down;
                    return Some(format!(
                        "{} consecutive probe failures (last: {detail})",
                        p.failures
                    ));
                }
            }
            None
        })
    }

    /// Records one request outcome reported by a shard: `failure` is its description, `None`
    /// for a success. `may_eject` says whether the group's `max_eject_percent` leaves room for
    /// one more ejection. Returns the change (an ejection), if any.
    pub fn observe_outcome(
        &mut self,
        failure: Option<&str>,
        passive: &PassiveHealth,
        may_eject: bool,
        now: Instant,
    ) -> Option<Change> {
        let Some(what) = failure else {
            self.passive_failures = 0;
            return None;
        };
        if !passive.enabled() || self.is_ejected() {
            // Failures of requests that were in flight when it was ejected do not count again.
            return None;
        }
        self.passive_failures = self.passive_failures.saturating_add(1);
        if self.passive_failures < passive.consecutive_failures || !may_eject {
            return None;
        }
        self.track(now, |p| {
            if p.returned_at
                .is_some_and(|r| now.saturating_duration_since(r) >= passive.max_eject)
            {
                p.eject_level = 0; // quiet for a whole cap: start over
            }
            let time = eject_time(passive, p.eject_level);
            p.eject_level = (p.eject_level + 1).min(MAX_EJECT_LEVEL);
            p.ejections += 1;
            p.ejected_until = Some(now + time);
            let why = format!(
                "{} consecutive failures (last: {what}): ejected for {} ms (ejection {})",
                p.passive_failures,
                time.as_millis(),
                p.ejections
            );
            p.passive_failures = 0;
            Some(why)
        })
    }

    /// Ends an ejection whose time has come. Returns the change, if any.
    pub fn expire(&mut self, now: Instant) -> Option<Change> {
        let until = self.ejected_until?;
        if now < until {
            return None;
        }
        let change = self.track(now, |p| {
            p.ejected_until = None;
            p.returned_at = Some(now);
            Some("ejection time over".to_string())
        });
        if change.is_none() {
            // Still down by its active check: nothing changed for the shards.
            self.returned_at = Some(now);
        }
        change
    }
}

/// How long ejection number `level + 1` (since the last reset) lasts:
/// `eject × 2^level`, at most `max_eject`.
pub fn eject_time(passive: &PassiveHealth, level: u32) -> Duration {
    let factor = 1u32 << level.min(MAX_EJECT_LEVEL);
    passive
        .eject
        .checked_mul(factor)
        .unwrap_or(passive.max_eject)
        .min(passive.max_eject)
}

/// GroupHealth is the health of every peer of one upstream group.
#[derive(Debug, Clone)]
pub struct GroupHealth {
    /// Peers in config order (indexed by `PeerId`).
    pub peers: Vec<PeerHealth>,
    /// Probe hysteresis: (`rise`, `fall`); unused without an active check.
    rise_fall: (u32, u32),
    /// Passive ejection settings.
    pub passive: PassiveHealth,
}

impl GroupHealth {
    /// The initial health of a configured group.
    pub fn new(cfg: &UpstreamConfig) -> GroupHealth {
        let start = cfg.health.as_ref().map(|h| h.start);
        GroupHealth {
            peers: cfg.peers.iter().map(|_| PeerHealth::new(start)).collect(),
            rise_fall: cfg.health.as_ref().map_or((1, 1), |h| (h.rise, h.fall)),
            passive: cfg.passive,
        }
    }

    /// The health of `cfg` (the same group in a new configuration) after a reload: a peer
    /// whose address stays keeps its state (probe counts, ejection, history), a new one starts
    /// as a new group's would. Without an active check any more, a surviving peer's probe
    /// verdict no longer applies: it is up (an ejection stays).
    pub fn succeed(
        old: &GroupHealth,
        old_cfg: &UpstreamConfig,
        cfg: &UpstreamConfig,
    ) -> GroupHealth {
        let mut next = GroupHealth::new(cfg);
        for (i, peer) in cfg.peers.iter().enumerate() {
            let Some(old_i) = old_cfg.peers.iter().position(|p| p.address == peer.address) else {
                continue;
            };
            let Some(prev) = old.peers.get(old_i) else {
                continue;
            };
            let mut carried = prev.clone();
            if cfg.health.is_none() && carried.state != ProbeState::Up {
                carried.state = ProbeState::Up;
                carried.why = "no active check".to_string();
            }
            next.peers[i] = carried;
        }
        next
    }

    /// How many peers may be ejected at once: `max_eject_percent` of the group, rounded down.
    pub fn max_ejected(&self) -> usize {
        self.peers.len() * self.passive.max_eject_percent as usize / 100
    }

    /// How many peers are ejected now.
    pub fn ejected(&self) -> usize {
        self.peers.iter().filter(|p| p.is_ejected()).count()
    }

    /// Records a probe result of `peer`.
    pub fn observe_probe(
        &mut self,
        peer: PeerId,
        ok: bool,
        detail: &str,
        now: Instant,
    ) -> Option<Change> {
        let (rise, fall) = self.rise_fall;
        self.peers
            .get_mut(peer.index())?
            .observe_probe(ok, detail, rise, fall, now)
    }

    /// Records a request outcome of `peer` (`failure` = its description, `None` = success).
    pub fn observe_outcome(
        &mut self,
        peer: PeerId,
        failure: Option<&str>,
        now: Instant,
    ) -> Option<Change> {
        let may_eject = self.ejected() < self.max_ejected();
        let passive = self.passive;
        self.peers
            .get_mut(peer.index())?
            .observe_outcome(failure, &passive, may_eject, now)
    }

    /// Ends every ejection whose time has come; returns the changes.
    pub fn expire(&mut self, now: Instant) -> Vec<(PeerId, Change)> {
        self.peers
            .iter_mut()
            .enumerate()
            .filter_map(|(i, p)| p.expire(now).map(|c| (PeerId::new(i), c)))
            .collect()
    }

    /// When the next ejection ends, if any peer is ejected.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.peers.iter().filter_map(|p| p.ejected_until).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passive(n: u32, eject_ms: u64, max_ms: u64, pct: u8) -> PassiveHealth {
        PassiveHealth {
            consecutive_failures: n,
            eject: Duration::from_millis(eject_ms),
            max_eject: Duration::from_millis(max_ms),
            max_eject_percent: pct,
            on_5xx: false,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Feeds probe results (`+` ok, `-` failed) and returns the status after each one, plus
    /// which ones produced a change.
    fn run(p: &mut PeerHealth, seq: &str, rise: u32, fall: u32) -> (String, String) {
        let now = Instant::now();
        let mut states = String::new();
        let mut changes = String::new();
        for c in seq.chars() {
            let ch = p.observe_probe(
                c == '+',
                if c == '+' { "HTTP 200" } else { "HTTP 500" },
                rise,
                fall,
                now,
            );
            states.push(p.status().name().chars().next().unwrap());
            changes.push(if ch.is_some() { '!' } else { '.' });
        }
        (states, changes)
    }

    #[test]
    fn unknown_needs_rise_or_fall_for_a_verdict() {
        let mut p = PeerHealth::new(Some(StartState::Unknown));
        assert!(p.is_eligible());
        assert_eq!(p.status(), Status::Unknown);
        // rise 2, fall 3: +- resets, ++ brings it up.
        assert_eq!(run(&mut p, "+-++", 2, 3), ("uuuu".into(), "...!".into()));
        assert_eq!(p.status(), Status::Up);
        // Two failures are not enough; a success resets; then three bring it down.
        assert_eq!(
            run(&mut p, "--+---", 2, 3),
            ("uuuuud".into(), ".....!".into())
        );
        assert!(!p.is_eligible());
        assert_eq!(p.why, "3 consecutive probe failures (last: HTTP 500)");
        // Down: more failures change nothing; rise successes bring it back.
        assert_eq!(
            run(&mut p, "--+-++", 2, 3),
            ("dddddu".into(), ".....!".into())
        );
        assert!(p.is_eligible());
        assert_eq!(p.why, "2 consecutive probe successes (last: HTTP 200)");
        assert_eq!(p.last_check.as_ref().map(|c| c.ok), Some(true));
    }

    #[test]
    fn unknown_goes_down_after_fall_failures() {
        let mut p = PeerHealth::new(Some(StartState::Unknown));
        assert_eq!(run(&mut p, "---", 2, 3), ("uud".into(), "..!".into()));
    }

    #[test]
    fn start_down_needs_rise_successes() {
        let mut p = PeerHealth::new(Some(StartState::Down));
        assert!(!p.is_eligible());
        assert_eq!(p.status(), Status::Down);
        assert_eq!(run(&mut p, "+-++", 2, 3), ("dddu".into(), "...!".into()));
        let c = {
            let mut q = PeerHealth::new(Some(StartState::Down));
            q.observe_probe(true, "ok", 1, 1, Instant::now()).unwrap()
        };
        assert_eq!(
            (c.from, c.to, c.eligible, c.flipped),
            (Status::Down, Status::Up, true, true)
        );
    }

    #[test]
    fn unknown_to_up_is_a_change_but_not_a_flip() {
        let mut p = PeerHealth::new(Some(StartState::Unknown));
        let c = p.observe_probe(true, "ok", 1, 3, Instant::now()).unwrap();
        assert_eq!(
            (c.from, c.to, c.eligible, c.flipped),
            (Status::Unknown, Status::Up, true, false)
        );
    }

    #[test]
    fn no_active_check_is_up() {
        let p = PeerHealth::new(None);
        assert_eq!(p.status(), Status::Up);
        assert!(p.is_eligible());
    }

    #[test]
    fn passive_ejection_doubles_and_is_capped() {
        let cfg = passive(3, 100, 350, 100);
        let mut p = PeerHealth::new(None);
        let t0 = Instant::now();
        let fail = Some("connect failure");
        // Two failures, a success resets, three eject.
        assert_eq!(p.observe_outcome(fail, &cfg, true, t0), None);
        assert_eq!(p.observe_outcome(fail, &cfg, true, t0), None);
        assert_eq!(p.observe_outcome(None, &cfg, true, t0), None);
        assert_eq!(p.observe_outcome(fail, &cfg, true, t0), None);
        assert_eq!(p.observe_outcome(fail, &cfg, true, t0), None);
        let c = p.observe_outcome(fail, &cfg, true, t0).unwrap();
        assert_eq!(
            (c.from, c.to, c.eligible, c.flipped),
            (Status::Up, Status::Ejected, false, true)
        );
        assert_eq!(
            c.why,
            "3 consecutive failures (last: connect failure): ejected for 100 ms (ejection 1)"
        );
        assert_eq!(p.ejected_until, Some(t0 + ms(100)));
        // Failures while ejected do not count.
        assert_eq!(p.observe_outcome(fail, &cfg, true, t0), None);
        assert_eq!(p.passive_failures, 0);
        // Not yet over; then over.
        assert_eq!(p.expire(t0 + ms(99)), None);
        let c = p.expire(t0 + ms(100)).unwrap();
        assert_eq!(
            (c.from, c.to, c.eligible, c.flipped),
            (Status::Ejected, Status::Up, true, true)
        );
        assert_eq!(c.why, "ejection time over");
        // Ejections 2, 3, 4: 200 ms, 350 (capped from 400), 350.
        let mut t = t0 + ms(100);
        for want in [200, 350, 350] {
            for _ in 0..2 {
                assert_eq!(p.observe_outcome(fail, &cfg, true, t), None);
            }
            let c = p.observe_outcome(fail, &cfg, true, t).unwrap();
            assert!(
                c.why.contains(&format!("ejected for {want} ms")),
                "{}",
                c.why
            );
            assert_eq!(p.ejected_until, Some(t + ms(want)));
            t += ms(want);
            assert!(p.expire(t).is_some());
        }
        assert_eq!(p.ejections, 4);
        // Quiet for a whole cap (350 ms): the next ejection starts over at 100 ms.
        t += ms(350);
        for _ in 0..2 {
            p.observe_outcome(fail, &cfg, true, t);
        }
        let c = p.observe_outcome(fail, &cfg, true, t).unwrap();
        assert!(
            c.why.contains("ejected for 100 ms (ejection 5)"),
            "{}",
            c.why
        );
    }

    #[test]
    fn eject_times() {
        let cfg = passive(1, 30_000, 300_000, 50);
        let got: Vec<u64> = (0..7).map(|l| eject_time(&cfg, l).as_secs()).collect();
        assert_eq!(got, vec![30, 60, 120, 240, 300, 300, 300]);
        assert_eq!(eject_time(&cfg, 64).as_secs(), 300);
    }

    #[test]
    fn passive_off_never_ejects() {
        let cfg = passive(0, 100, 100, 100);
        let mut p = PeerHealth::new(None);
        for _ in 0..100 {
            assert_eq!(
                p.observe_outcome(Some("reset"), &cfg, true, Instant::now()),
                None
            );
        }
    }

    #[test]
    fn expiry_while_actively_down_is_no_flip() {
        let cfg = passive(1, 100, 100, 100);
        let mut p = PeerHealth::new(Some(StartState::Unknown));
        let t0 = Instant::now();
        let c = p.observe_outcome(Some("reset"), &cfg, true, t0).unwrap();
        assert_eq!((c.from, c.to), (Status::Unknown, Status::Ejected));
        // The probe says down meanwhile: a status change, no flip (already ineligible).
        let c = p.observe_probe(false, "refused", 1, 1, t0).unwrap();
        assert_eq!(
            (c.from, c.to, c.flipped),
            (Status::Ejected, Status::Down, false)
        );
        // The ejection ends: still down, nothing to tell anyone.
        assert_eq!(p.expire(t0 + ms(100)), None);
        assert!(!p.is_ejected() && !p.is_eligible());
        // Probes agree again: eligible.
        let c = p.observe_probe(true, "ok", 1, 1, t0).unwrap();
        assert_eq!((c.from, c.to, c.flipped), (Status::Down, Status::Up, true));
    }

    fn group(n: usize, pct: u8) -> GroupHealth {
        GroupHealth {
            peers: (0..n).map(|_| PeerHealth::new(None)).collect(),
            rise_fall: (1, 1),
            passive: passive(1, 100, 100, pct),
        }
    }

    #[test]
    fn max_eject_percent_limits_ejections_per_group() {
        let t0 = Instant::now();
        // 50% of 4 = 2.
        let mut g = group(4, 50);
        assert_eq!(g.max_ejected(), 2);
        assert!(g
            .observe_outcome(PeerId::new(0), Some("reset"), t0)
            .is_some());
        assert!(g
            .observe_outcome(PeerId::new(1), Some("reset"), t0)
            .is_some());
        assert_eq!(g.observe_outcome(PeerId::new(2), Some("reset"), t0), None);
        assert_eq!(g.ejected(), 2);
        assert_eq!(g.next_expiry(), Some(t0 + ms(100)));
        // Peer 2 stays at its threshold: once room frees up, its next failure ejects it.
        assert_eq!(g.expire(t0 + ms(100)).len(), 2);
        assert_eq!(g.next_expiry(), None);
        assert!(g
            .observe_outcome(PeerId::new(2), Some("reset"), t0 + ms(100))
            .is_some());
        // One peer of one (50% rounds down to 0): never ejected; 100% allows it.
        let mut g = group(1, 50);
        assert_eq!(g.max_ejected(), 0);
        assert_eq!(g.observe_outcome(PeerId::new(0), Some("reset"), t0), None);
        let mut g = group(1, 100);
        assert!(g
            .observe_outcome(PeerId::new(0), Some("reset"), t0)
            .is_some());
        // 0% never ejects.
        let mut g = group(10, 0);
        assert_eq!(g.observe_outcome(PeerId::new(0), Some("reset"), t0), None);
    }
}

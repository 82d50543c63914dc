//! A group's next generation in one shard (hot reload, admin API changes): what survives, and
//! how requests still in flight on the old generation keep the new one's counts right.
//!
//! [`UpstreamGroup::succeed`] builds the new replica from the new config. For every peer whose
//! `address` stays, it carries the live state over:
//! - its in-flight count and latency estimate (least-connection, power-of-two, peak_ewma keep
//!   their view),
//! - its circuit breaker (the same breaker object, when the breaker settings did not change),
//! - its idle pooled connections (when it still resolves to the same socket address with
//!   the same TLS settings);
//!
//! the group keeps its selector (round-robin position, smooth-weighted credit) when membership,
//! weights, algorithm and balancing parameters are unchanged, and its retry budget when the
//! retry policy is. Health comes from the control thread's snapshot, never from the shard
//! (invariant 3). The old replica's remaining idle connections (removed peers) are closed.
//!
//! A request in flight on the old replica finishes there; the old replica then forwards what it
//! would have changed to its successor: the end of the request (the in-flight count the new
//! replica copied includes it) and its reusable connection (pooled by the successor when the
//! peer stays at the same address, closed otherwise).

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use super::{Connection, UpstreamGroup};
use crate::balance::PeerId;
use crate::config::UpstreamConfig;
use crate::metrics::UpstreamHandles;

/// Successor is the replica that replaced a group after a reload, and where each old peer went.
pub(super) struct Successor {
    /// The new replica.
    group: Rc<UpstreamGroup>,
    /// Indexed by the old [`PeerId`]: the same peer (same address) in the new replica.
    peers: Vec<Option<PeerId>>,
}

impl UpstreamGroup {
    /// Builds the replica that replaces `old` for `cfg` (the same group, by name, in the new
    /// configuration), with `eligible[id]` as each new peer's health, and makes `old` forward
    /// the ends of its in-flight requests to it. See the module documentation for what
    /// survives.
    pub fn succeed(
        old: &UpstreamGroup,
        cfg: &UpstreamConfig,
        eligible: &[bool],
        metrics: Option<&UpstreamHandles>,
    ) -> Rc<Self> {
        let next = UpstreamGroup::for_shard(cfg, metrics, old.share);
        next.set_all_health(eligible);
        let old_ids: HashMap<&str, PeerId> = old
            .peer_ids()
            .map(|id| (old.peer(id).address.as_str(), id))
            .collect();
        let mut map: Vec<Option<PeerId>> = vec![None; old.peers.len()];
        let mut next = next;
        let same_breaker = old.breaker_config == next.breaker_config;
        let now = Instant::now();
        for id in next.peer_ids() {
            let peer = next.peer(id);
            let Some(&old_id) = old_ids.get(peer.address.as_str()) else {
                // Added by the reload or the admin API: it ramps up (slow start).
                peer.guard.begin_ramp(now);
                continue;
            };
            map[old_id.index()] = Some(id);
            let (from, to) = (old.load(old_id), next.load(id));
            to.active.set(from.active.get());
            to.ewma_ns.set(from.ewma_ns.get());
            to.ewma_at.set(from.ewma_at.get());
            // A ramp in progress goes on; a peer that was down and is up now starts one.
            let (was, is) = (old.peer(old_id), next.peer(id));
            is.guard.ramp_since.set(was.guard.ramp_since.get());
            if is.healthy.get() && !was.healthy.get() {
                is.guard.begin_ramp(now);
            }
            if same_breaker {
                if let (Some(from), Some(to)) = (
                    old.breakers.get(old_id.index()),
                    next.breakers.get_mut(id.index()),
                ) {
                    *to = from.clone();
                }
            }
            // Same address and the same TLS settings: a connection made for the old settings
            // (another CA, SNI or client certificate) must not serve the new ones.
            if old.peer(old_id).addr == next.peer(id).addr
                && old.peer(old_id).tls == next.peer(id).tls
            {
                next.pool.adopt(id, &old.pool, old_id);
            }
        }
        if old.same_selection(&next) {
            // Same candidates in the same order: keep the selectors' position and credit.
            std::mem::swap(
                &mut *old.primary.selector.borrow_mut(),
                &mut *next.primary.selector.borrow_mut(),
            );
            std::mem::swap(
                &mut *old.backup.selector.borrow_mut(),
                &mut *next.backup.selector.borrow_mut(),
            );
        }
        if old.retrier.borrow().policy() == next.retrier.borrow().policy() {
            *next.retrier.borrow_mut() = old.retrier.borrow().clone();
        }
        // What was not adopted belongs to removed peers (or moved addresses): close it.
        old.pool.clear();
        for id in next.peer_ids() {
            next.note_idle(id);
            next.note_active(id);
        }
        let next = Rc::new(next);
        *old.successor.borrow_mut() = Some(Successor {
            group: next.clone(),
            peers: map,
        });
        next
    }

    /// Sets every peer's health from a snapshot (`eligible[id.index()]` for peer `id`; a
    /// missing entry is healthy).
    pub fn set_all_health(&self, eligible: &[bool]) {
        for id in self.peer_ids() {
            let healthy = eligible.get(id.index()).copied().unwrap_or(true);
            self.peer(id).healthy.set(healthy);
        }
    }

    /// Whether `next` selects among the same candidates as `self`, the same way.
    fn same_selection(&self, next: &UpstreamGroup) -> bool {
        self.algorithm == next.algorithm
            && self.balance == next.balance
            && self.peers.len() == next.peers.len()
            && self.peers.iter().zip(&next.peers).all(|(a, b)| {
                a.address == b.address && a.weight == b.weight && a.backup == b.backup
            })
    }

    /// Counts a request in flight to `peer` (see [`UpstreamGroup::end_active`]).
    #[inline]
    pub fn begin_active(&self, peer: PeerId) {
        let active = &self.load(peer).active;
        active.set(active.get() + 1);
        self.note_active(peer);
    }

    /// Sets the in-flight gauge of `peer` from its count (a surviving peer's gauge is shared
    /// with the replicas before this one: the newest sets it).
    #[inline]
    fn note_active(&self, peer: PeerId) {
        let n = self.load(peer).active.get();
        self.peer(peer).metrics.active_requests.set(u64::from(n));
    }

    /// Sets the idle-connections gauge of `peer` from the pool.
    #[inline]
    pub(super) fn note_idle(&self, peer: PeerId) {
        self.peer(peer)
            .metrics
            .pool_idle
            .set(self.pool.idle_count(peer) as u64);
    }

    /// Takes a quiet idle connection to `peer` from the pool (see [`super::Pool::take`]).
    pub fn take_idle(&self, peer: PeerId, now: Instant) -> Option<Connection> {
        let conn = self.pool.take(peer, now);
        self.note_idle(peer);
        conn
    }

    /// Ends a request counted by [`UpstreamGroup::begin_active`], here and in every
    /// successor that copied the count.
    #[inline]
    pub fn end_active(&self, peer: PeerId) {
        let active = &self.load(peer).active;
        active.set(active.get().saturating_sub(1));
        if !self.queue.is_empty() {
            // A slot freed: the oldest queued request looks for a peer again.
            self.queue.wake_head();
        }
        if let Some(s) = &*self.successor.borrow() {
            if let Some(&Some(id)) = s.peers.get(peer.index()) {
                s.group.end_active(id);
                return;
            }
        }
        self.note_active(peer);
    }

    /// Returns a reusable connection to `peer` for the next request: to this replica's pool,
    /// or after a reload to the successor's (when the peer stayed at the same address; else
    /// the connection is closed).
    pub fn put_idle(&self, peer: PeerId, conn: Connection, now: Instant) {
        match &*self.successor.borrow() {
            None => {
                self.pool.put(peer, conn, now);
                self.note_idle(peer);
            }
            Some(s) => {
                if let Some(&Some(id)) = s.peers.get(peer.index()) {
                    if s.group.peer(id).addr == self.peer(peer).addr {
                        self.pool.hand_over(&conn, &s.group.pool);
                        s.group.put_idle(id, conn, now);
                    }
                }
            }
        }
    }

    /// Closes expired and dead idle connections (the shard's periodic sweep) and updates the
    /// idle gauges.
    pub fn reap_idle(&self, now: Instant) {
        if self.pool.reap(now) > 0 {
            for id in self.peer_ids() {
                self.note_idle(id);
            }
        }
    }

    /// Whether a reload replaced this replica.
    #[cfg(test)]
    pub fn is_succeeded(&self) -> bool {
        self.successor.borrow().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::upstream::TriedSet;

    fn upstream(body: &str) -> UpstreamConfig {
        let text = format!("[server]\nadmin = \"\"\n[[upstream]]\nname = \"u\"\n{body}\n");
        Config::from_toml_str(&text, "t.toml")
            .expect("valid config")
            .upstreams
            .remove(0)
    }

    const AB: &str = "peers = [{ address = \"127.0.0.1:1\" }, { address = \"127.0.0.1:2\" }]";
    const BC: &str = "peers = [{ address = \"127.0.0.1:2\" }, { address = \"127.0.0.1:3\" }]";

    #[test]
    fn survivors_keep_their_in_flight_count_and_old_requests_end_in_the_successor() {
        let old = UpstreamGroup::new(&upstream(AB));
        old.begin_active(PeerId::new(1)); // 127.0.0.1:2, in flight across the reload
        old.begin_active(PeerId::new(0)); // 127.0.0.1:1, removed by the reload
        let next = UpstreamGroup::succeed(&old, &upstream(BC), &[true, true], None);
        assert_eq!(next.peers[0].address, "127.0.0.1:2");
        assert_eq!(
            next.load(PeerId::new(0)).active.get(),
            1,
            "the count is carried over"
        );
        assert_eq!(
            next.load(PeerId::new(1)).active.get(),
            0,
            "a new peer starts idle"
        );
        next.begin_active(PeerId::new(0));
        assert_eq!(next.load(PeerId::new(0)).active.get(), 2);
        // The old request ends: both replicas count it down.
        old.end_active(PeerId::new(1));
        old.end_active(PeerId::new(0));
        assert_eq!(old.load(PeerId::new(1)).active.get(), 0);
        assert_eq!(next.load(PeerId::new(0)).active.get(), 1);
        next.end_active(PeerId::new(0));
        assert_eq!(next.load(PeerId::new(0)).active.get(), 0);
        assert!(old.is_succeeded() && !next.is_succeeded());
    }

    #[test]
    fn health_comes_from_the_snapshot() {
        let old = UpstreamGroup::new(&upstream(AB));
        let next = UpstreamGroup::succeed(&old, &upstream(BC), &[false, true], None);
        assert!(!next.peers[0].healthy.get());
        assert!(next.peers[1].healthy.get());
        let now = Instant::now();
        assert_eq!(
            next.select(None, &TriedSet::default(), now),
            Some(PeerId::new(1))
        );
    }

    #[test]
    fn unchanged_membership_keeps_the_rotation() {
        let cfg = upstream(
            "peers = [{ address = \"127.0.0.1:1\" }, { address = \"127.0.0.1:2\" }, \
             { address = \"127.0.0.1:3\" }]",
        );
        let now = Instant::now();
        let none = TriedSet::default();
        let old = UpstreamGroup::new(&cfg);
        let first = old.select(None, &none, now).unwrap();
        let next = UpstreamGroup::succeed(&old, &cfg, &[true; 3], None);
        let second = next.select(None, &none, now).unwrap();
        assert_eq!(
            second.index(),
            (first.index() + 1) % 3,
            "round robin goes on where it was"
        );
        // A weight change rebuilds the selector.
        let reweighted = upstream(
            "peers = [{ address = \"127.0.0.1:1\", weight = 2 }, { address = \"127.0.0.1:2\" }, \
             { address = \"127.0.0.1:3\" }]",
        );
        assert!(!next.same_selection(&UpstreamGroup::new(&reweighted)));
    }

    #[test]
    fn open_breaker_survives_a_reload_with_the_same_breaker_settings() {
        let body = format!("{AB}\ncircuit_breaker = {{ failures = 1, open_ms = 60000 }}");
        let old = UpstreamGroup::new(&upstream(&body));
        let now = Instant::now();
        let admit = old.admit(PeerId::new(1), now);
        old.breaker_outcome(PeerId::new(1), admit, Some(false), now);
        assert!(!old.is_eligible(PeerId::new(1), now), "the breaker opened");
        let next = UpstreamGroup::succeed(&old, &upstream(&body), &[true, true], None);
        assert!(
            !next.is_eligible(PeerId::new(1), now),
            "still open after the reload"
        );
        assert!(next.is_eligible(PeerId::new(0), now));
    }
}

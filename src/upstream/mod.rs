//! Upstream groups as a shard sees them: peers, their shard-local state, the selectors, and the
//! per-shard connection pool.
//!
//! Everything here is owned by one shard and touched only from its thread (invariant
//! 1): plain fields and `Cell`s, no atomics, no locks.

mod connection;
mod hash_key;
mod pool;
mod protect;
mod reload;

pub(crate) use hash_key::hash_request;
pub use pool::{is_quiet, Connection, Pool};
use protect::{ClientBuckets, PeerGuard, Queue, TokenBucket};
pub(crate) use protect::{Share, Waiter};

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::balance::{
    build_selector, observe_latency, select_eligible, Algorithm, BalanceParams, Candidate, HashKey,
    PeerId, PeerLoad, Selector,
};
use crate::config::{PoolConfig, StartState, Timeouts, UpgradeAllow, UpstreamConfig, WhenAllDown};
use crate::failover::{
    BreakerConfig, BreakerState, BreakerTransition, CircuitBreaker, Retrier, Ticket,
};
use crate::http::RequestHead;
use crate::metrics::{PeerMetrics, UpstreamHandles, UpstreamMetrics};

/// Peer is one peer of a group with its shard-local state.
pub(crate) struct Peer {
    /// The address as written in the config, for logs.
    pub address: String,
    /// Where to connect.
    pub addr: SocketAddr,
    /// Configured weight (0 = drained: no new requests).
    pub weight: u32,
    /// Draining (`drain = true`): no new requests, whatever the weight.
    pub drain: bool,
    /// Backup peers only get traffic when no primary is eligible.
    pub backup: bool,
    /// This peer's place in its tier (the primaries, or the backups for a backup peer).
    pub slot: Slot,
    /// Optional region label (see `local_region`).
    pub region: Option<String>,
    /// The region's index in the group's regions.
    pub region_id: Option<usize>,
    /// Health as last pushed by the control thread (false = down or ejected). The shard never
    /// overrides a pushed down (invariant 3).
    pub healthy: Cell<bool>,
    /// This shard's counters of the peer (written only here, summed at scrape time).
    pub metrics: Arc<PeerMetrics>,
    /// Its `max_conns` and `rate` shares in this shard, and its slow-start ramp.
    pub(crate) guard: PeerGuard,
    /// Its timeouts (the group's with the peer's overrides).
    pub timeouts: Timeouts,
    /// TLS to this peer (`tls = { … }`); `None` = cleartext.
    pub tls: Option<Arc<crate::tls::UpstreamTls>>,
}

impl Peer {
    /// Whether the shard may send a new request to this peer: not drained, and healthy.
    #[inline]
    pub fn is_eligible(&self) -> bool {
        self.takes_requests() && self.healthy.get()
    }

    /// Whether it takes new requests at all, health aside: not drained, weight above 0.
    #[inline]
    pub fn takes_requests(&self) -> bool {
        self.weight > 0 && !self.drain
    }
}

crate::balance::index_newtype!(
    /// Slot is a peer's index within its tier of a group (the primaries, or the backups): its
    /// candidate index in that tier's selector, and the index of the tier's peer ids and load
    /// table. It differs from the peer's [`PeerId`] whenever the group has backups.
    Slot
);

/// Tier is the primaries or the backups of a group: one selector over them, and per slot the
/// peer it is and its live load.
struct Tier {
    /// Selector over the tier's peers; its candidate `i` is `Slot::new(i)`.
    selector: RefCell<Box<dyn Selector>>,
    /// Which peer each slot is.
    ids: Vec<PeerId>,
    /// Live load of each slot.
    loads: Vec<PeerLoad>,
}

impl Tier {
    /// The tier of `peers` for which `in_tier` holds, in config order.
    fn new(
        peers: &[Peer],
        in_tier: impl Fn(&Peer) -> bool,
        build: impl Fn(&[Candidate<'_>]) -> Box<dyn Selector>,
    ) -> Tier {
        let ids: Vec<PeerId> = (0..peers.len())
            .map(PeerId::new)
            .filter(|&id| in_tier(&peers[id.index()]))
            .collect();
        let candidates: Vec<Candidate<'_>> = ids
            .iter()
            .map(|id| {
                let p = &peers[id.index()];
                Candidate {
                    address: &p.address,
                    weight: p.weight,
                }
            })
            .collect();
        Tier {
            selector: RefCell::new(build(&candidates)),
            loads: vec![PeerLoad::default(); ids.len()],
            ids,
        }
    }

    /// The peer in `slot`.
    #[inline]
    fn peer(&self, slot: Slot) -> PeerId {
        self.ids[slot.index()]
    }

    /// The live load of the peer in `slot`.
    #[inline]
    fn load(&self, slot: Slot) -> &PeerLoad {
        &self.loads[slot.index()]
    }
}

/// UpstreamGroup is one `[[upstream]]` inside a shard: peers, selectors, pool, timeouts.
pub(crate) struct UpstreamGroup {
    /// The group's name.
    pub name: String,
    /// Peers in config order; a `PeerId` indexes this (see [`UpstreamGroup::peer`]).
    pub peers: Vec<Peer>,
    /// The peers that are not backups.
    primary: Tier,
    /// The backup peers.
    backup: Tier,
    /// Idle upstream connections of this shard, per peer.
    pub pool: Pool,
    /// The group's retry policy, retry budget and backoff jitter in this shard.
    pub retrier: RefCell<Retrier>,
    /// One circuit breaker per peer (indexed by `PeerId`) when the upstream configures
    /// `circuit_breaker`; empty otherwise.
    breakers: Vec<Rc<RefCell<CircuitBreaker>>>,
    /// The breaker settings `breakers` were built with.
    breaker_config: Option<BreakerConfig>,
    /// The balancing parameters the selectors were built with.
    balance: BalanceParams,
    /// The replica that replaced this one after a reload (see `reload.rs`).
    successor: RefCell<Option<reload::Successor>>,
    /// This shard's counters of the group.
    pub metrics: Arc<UpstreamMetrics>,
    /// The distinct regions of the peers, in peer order (a region id indexes this).
    region_names: Vec<String>,
    /// `local_region`'s id, when a peer has that region.
    local_region_id: Option<usize>,
    /// Per region id: itself, then its `region_fallback` regions (default every other), the
    /// order a request of that region tries them in.
    region_chains: Vec<Vec<usize>>,
    /// Per region id: the peer its requests last failed over to outside it (`None` = served
    /// at home), so each regional failover and fail-back is logged once per shard.
    failed_over: Vec<Cell<Option<PeerId>>>,
    /// Per-request regions (`region_from`, `region_map`).
    regions: crate::config::RegionPolicy,
    /// What `select` does when no peer is eligible.
    when_all_down: WhenAllDown,
    /// The group's balancing algorithm (a reload keeps the selectors only when it stays).
    algorithm: Algorithm,
    /// What requests are hashed by: `Some` exactly when the algorithm hashes.
    pub hash_key: Option<HashKey>,
    /// Time constant of the peers' latency estimates (peak_ewma; default 10 s).
    pub ewma_decay: Duration,
    /// The protocol upgrades tunnelled to this group (`upgrade = { allow = [...] }`).
    pub upgrade: UpgradeAllow,
    /// Which shard of how many this replica runs in (what its parts of the limits are).
    share: Share,
    /// Whether any peer has `max_conns` or `rate`, or the group a `rate`: only then can a
    /// selection find every eligible peer full, and only then is the queue used.
    limited: bool,
    /// Requests waiting for a peer with room (`queue = { … }`).
    pub(crate) queue: Queue,
    /// The group's own bucket (`rate` without `key`).
    bucket: Option<TokenBucket>,
    /// The per-client buckets (`rate` with `key`) and what keys a client.
    clients: Option<(ClientBuckets, HashKey)>,
    /// Socket options of connections to the peers (`tcp = { … }`).
    pub tcp: crate::config::TcpOptions,
    /// The HTTP version spoken to the peers (`protocol`).
    pub protocol: crate::config::UpstreamProtocol,
}

/// Admit is whether a peer's circuit breaker lets a request through.
pub(crate) enum Admit {
    /// No breaker configured.
    Unguarded,
    /// Admitted; report the outcome with this ticket.
    Ticket(Ticket),
    /// The breaker is open (or its half-open trials are taken).
    Refused,
}

impl UpstreamGroup {
    /// Builds a shard's replica of a configured group. The randomized selectors are seeded
    /// from the thread's `fastrand` generator, so every shard draws its own sequence.
    #[cfg(test)]
    pub fn new(cfg: &UpstreamConfig) -> Self {
        UpstreamGroup::build(cfg, fastrand::u64(..), None)
    }

    /// Builds a shard's replica of a configured group with a fixed seed for its randomness.
    #[cfg(test)]
    pub fn new_seeded(cfg: &UpstreamConfig, seed: u64) -> Self {
        UpstreamGroup::build(cfg, seed, None)
    }

    /// Builds shard `share`'s replica of a configured group that counts into `metrics`.
    pub fn for_shard(
        cfg: &UpstreamConfig,
        metrics: Option<&UpstreamHandles>,
        share: Share,
    ) -> Self {
        UpstreamGroup::build_on(cfg, fastrand::u64(..), metrics, share)
    }

    /// Builds a replica: seeded, counting into `metrics` (fresh counters without).
    #[cfg(test)]
    fn build(cfg: &UpstreamConfig, seed: u64, metrics: Option<&UpstreamHandles>) -> Self {
        UpstreamGroup::build_on(cfg, seed, metrics, Share::SINGLE)
    }

    /// Builds shard `share`'s replica: seeded, counting into `metrics`.
    fn build_on(
        cfg: &UpstreamConfig,
        seed: u64,
        metrics: Option<&UpstreamHandles>,
        share: Share,
    ) -> Self {
        let now = Instant::now();
        let (mut primaries, mut backups) = (0, 0);
        let start_down = cfg
            .health
            .as_ref()
            .is_some_and(|h| h.start == StartState::Down);
        let mut region_names: Vec<String> = Vec::new();
        for r in cfg.peers.iter().filter_map(|p| p.region.as_ref()) {
            if !region_names.contains(r) {
                region_names.push(r.clone());
            }
        }
        let region_chains = region_names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mut chain = vec![i];
                match cfg.regions.fallback.get(name) {
                    Some(list) => chain.extend(
                        list.iter()
                            .filter_map(|r| region_names.iter().position(|n| n == r)),
                    ),
                    None => chain.extend((0..region_names.len()).filter(|&j| j != i)),
                }
                chain
            })
            .collect();
        let peers: Vec<Peer> = cfg
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let tier = if p.backup {
                    &mut backups
                } else {
                    &mut primaries
                };
                *tier += 1;
                Peer {
                    address: p.address.clone(),
                    addr: p.addr,
                    weight: p.weight,
                    drain: p.drain,
                    backup: p.backup,
                    slot: Slot::new(*tier - 1),
                    region: p.region.clone(),
                    region_id: p
                        .region
                        .as_ref()
                        .and_then(|r| region_names.iter().position(|n| n == r)),
                    tls: p.tls.clone(),
                    healthy: Cell::new(!start_down),
                    metrics: metrics
                        .and_then(|m| m.peers.get(i).cloned())
                        .unwrap_or_default(),
                    guard: PeerGuard::new(&p.limits, share, i, now),
                    timeouts: p.timeouts,
                }
            })
            .collect();
        for p in &peers {
            p.metrics
                .max_conns
                .set(u64::from(p.guard.max_conns.unwrap_or(0)));
            p.metrics.slow_start_weight.set(f64::from(p.weight));
        }
        let limited = cfg.rate.is_some()
            || peers
                .iter()
                .any(|p| p.guard.max_conns.is_some() || p.guard.bucket.is_some());
        let build = |candidates: &[Candidate<'_>]| {
            build_selector(cfg.algorithm, &cfg.balance, candidates, fastrand::u64(..))
        };
        let primary = Tier::new(&peers, |p| !p.backup, build);
        let backup = Tier::new(&peers, |p| p.backup, build);
        let pool_cfg: PoolConfig = cfg.pool;
        UpstreamGroup {
            name: cfg.name.clone(),
            pool: Pool::per_peer(cfg.peers.iter().map(|p| p.pool).collect(), pool_cfg),
            peers,
            primary,
            backup,
            retrier: RefCell::new(Retrier::new(cfg.retry, now, fastrand::Rng::with_seed(seed))),
            breakers: match cfg.circuit_breaker {
                Some(b) => (0..cfg.peers.len())
                    .map(|_| Rc::new(RefCell::new(CircuitBreaker::new(b, now))))
                    .collect(),
                None => Vec::new(),
            },
            breaker_config: cfg.circuit_breaker,
            balance: cfg.balance,
            successor: RefCell::new(None),
            metrics: metrics.map(|m| m.metrics.clone()).unwrap_or_default(),
            local_region_id: cfg
                .local_region
                .as_ref()
                .and_then(|r| region_names.iter().position(|n| n == r)),
            failed_over: region_names.iter().map(|_| Cell::new(None)).collect(),
            region_chains,
            region_names,
            regions: cfg.regions.clone(),
            when_all_down: cfg.when_all_down,
            algorithm: cfg.algorithm,
            hash_key: cfg.hash_key.clone(),
            ewma_decay: cfg.balance.ewma_decay,
            upgrade: cfg.upgrade.clone(),
            share,
            limited,
            queue: Queue::new(cfg.queue),
            bucket: cfg.rate.map(|r| TokenBucket::new(r, share, 0, now)),
            clients: cfg.client_rate.as_ref().map(|c| {
                let key = match &c.key {
                    crate::config::ClientKey::ClientIp => HashKey::ClientIp,
                    crate::config::ClientKey::Header(h) => HashKey::Header(h.clone()),
                };
                (ClientBuckets::new(c.rate, c.max_keys, share), key)
            }),
            tcp: cfg.tcp,
            protocol: cfg.protocol,
        }
    }

    /// Peer `id` of this group.
    ///
    /// Panics if `id` is not a peer of this group: ids come from this group's own selectors
    /// and from the config it was built from, so a foreign id is a bug.
    #[inline]
    pub fn peer(&self, id: PeerId) -> &Peer {
        &self.peers[id.index()]
    }

    /// The ids of every peer, in config order.
    pub fn peer_ids(&self) -> impl Iterator<Item = PeerId> {
        (0..self.peers.len()).map(PeerId::new)
    }

    /// `peer`'s circuit breaker, if the group configures breakers.
    #[inline]
    fn breaker(&self, peer: PeerId) -> Option<&RefCell<CircuitBreaker>> {
        self.breakers.get(peer.index()).map(|b| &**b)
    }

    /// Whether a new request may go to `peer` now: not drained, breaker not open.
    #[inline]
    pub fn is_eligible(&self, peer: PeerId, now: Instant) -> bool {
        self.peer(peer).is_eligible()
            && self
                .breaker(peer)
                .is_none_or(|b| b.borrow().would_allow(now))
    }

    /// Whether some eligible peer is not in `tried`.
    pub fn any_untried_eligible(&self, tried: &TriedSet, now: Instant) -> bool {
        self.peer_ids()
            .any(|id| !tried.contains(id) && self.is_eligible(id, now))
    }

    /// Asks `peer`'s circuit breaker to admit a request.
    pub fn admit(&self, peer: PeerId, now: Instant) -> Admit {
        let Some(b) = self.breaker(peer) else {
            return Admit::Unguarded;
        };
        let admission = b.borrow_mut().allow(now);
        self.log_transition(peer, admission.transition);
        match admission.ticket {
            Some(t) => Admit::Ticket(t),
            None => Admit::Refused,
        }
    }

    /// Reports the outcome of an admitted request to `peer`'s breaker: `Some(true)` success,
    /// `Some(false)` a failure of the peer, `None` neither (the request ended for another reason).
    pub fn breaker_outcome(&self, peer: PeerId, admit: Admit, ok: Option<bool>, now: Instant) {
        let (Some(b), Admit::Ticket(t)) = (self.breaker(peer), admit) else {
            return;
        };
        let mut b = b.borrow_mut();
        let transition = match ok {
            Some(true) => b.on_success(t, now),
            Some(false) => b.on_failure(t, now),
            None => {
                b.release(t);
                None
            }
        };
        drop(b);
        self.log_transition(peer, transition);
    }

    fn log_transition(&self, peer: PeerId, transition: Option<BreakerTransition>) {
        if let Some(t) = transition {
            let open = t.to == BreakerState::Open;
            self.peer(peer).metrics.breaker_open.set(u64::from(open));
            tracing::info!(
                group = %self.name,
                peer = %self.peer(peer).address,
                "circuit breaker {} -> {}",
                t.from.name(),
                t.to.name()
            );
        }
    }

    /// Applies a health change pushed by the control thread.
    pub fn set_health(&self, peer: PeerId, eligible: bool) {
        if let Some(p) = self.peers.get(peer.index()) {
            if eligible && !p.healthy.get() {
                // Back after being down: ramp up (slow start), and let a queued request look.
                p.guard.begin_ramp(Instant::now());
                self.queue.wake_head();
            }
            p.healthy.set(eligible);
        }
    }

    /// The hash of a request for this group's hashing algorithm: `None` when the group does
    /// not hash or the key is absent from the request (the selector then rotates). `buf` is
    /// the buffer `head` was parsed from.
    #[inline]
    pub fn request_hash(&self, buf: &[u8], head: &RequestHead, client_ip: IpAddr) -> Option<u64> {
        hash_request(self.hash_key.as_ref()?, buf, head, client_ip)
    }

    /// Feeds a response's round-trip time into `peer`'s latency estimate (what peak_ewma
    /// picks by); cheap enough to call for every response of every group.
    #[inline]
    pub fn observe_latency(&self, peer: PeerId, rtt: Duration, now: Instant) {
        let load = self.load(peer);
        observe_latency(load, rtt, now, self.ewma_decay);
        self.peer(peer)
            .metrics
            .ewma_seconds
            .set(load.ewma_ns.get() / 1e9);
    }

    /// The live load of a peer.
    #[inline]
    pub fn load(&self, peer: PeerId) -> &PeerLoad {
        let p = self.peer(peer);
        self.tier(p.backup).load(p.slot)
    }

    /// Selects a peer for a request. `tried` says which peers this request already tried
    /// (they are skipped).
    ///
    /// Order: eligible primaries of `local_region`, then any eligible primary, then backups
    /// the same way (backups only get traffic while no primary is eligible). When nothing is
    /// eligible, `when_all_down = "try_all"` picks among the not-drained peers ignoring health;
    /// `"fail"` returns `None` (the proxy answers 503).
    #[cfg(test)]
    pub fn select(&self, hash: Option<u64>, tried: &TriedSet, now: Instant) -> Option<PeerId> {
        self.select_from(hash, None, tried, now)
    }

    /// [`UpstreamGroup::select`] for a request that prefers `region` (see
    /// [`UpstreamGroup::request_region`]; `None`: `local_region`): its peers first, then those
    /// of its `region_fallback` regions in order, then any.
    pub fn select_from(
        &self,
        hash: Option<u64>,
        region: Option<usize>,
        tried: &TriedSet,
        now: Instant,
    ) -> Option<PeerId> {
        if !self.limited {
            return self.select_among(hash, region, tried, now, false);
        }
        if let Some(b) = &self.bucket {
            if !b.take(now) {
                self.metrics.rate_limited.inc();
                return None;
            }
        }
        let Some(found) = self.select_among(hash, region, tried, now, true) else {
            if let Some(b) = &self.bucket {
                b.give_back();
            }
            return None;
        };
        if let Some(b) = &self.peer(found).guard.bucket {
            b.take(now);
        }
        Some(found)
    }

    /// [`UpstreamGroup::select`] among the peers with room (`max_conns`, `rate`) when
    /// `limits`; a slow-starting peer's candidacy is admitted with its ramp's probability,
    /// and when that leaves nothing the selection is asked again without it.
    fn select_among(
        &self,
        hash: Option<u64>,
        region: Option<usize>,
        tried: &TriedSet,
        now: Instant,
        limits: bool,
    ) -> Option<PeerId> {
        self.select_ramped(hash, region, tried, now, limits, true)
            .or_else(|| self.select_ramped(hash, region, tried, now, limits, false))
    }

    /// Whether `peer` may take one more request now: room under its `max_conns`, a token in
    /// its `rate` bucket (when `limits`), and, when `ramp` holds this selection's coin, its
    /// slow-start admission (the coin is drawn once per selection, so a selector that asks
    /// about a candidate twice gets the same answer).
    #[inline]
    fn admits(&self, peer: PeerId, now: Instant, limits: bool, ramp: Option<&Cell<f64>>) -> bool {
        let p = self.peer(peer);
        if limits {
            if !p.guard.has_room(self.load(peer).active.get()) {
                p.metrics.saturated.inc();
                return false;
            }
            if p.guard.bucket.as_ref().is_some_and(|b| !b.ready(now)) {
                p.metrics.rate_limited.inc();
                return false;
            }
        }
        match ramp {
            Some(coin) if p.guard.ramp_since.get().is_some() => {
                let f = p.guard.ramp(now);
                p.metrics.slow_start_weight.set(f64::from(p.weight) * f);
                if coin.get() < 0.0 {
                    coin.set(fastrand::f64());
                }
                f >= 1.0 || coin.get() < f
            }
            _ => true,
        }
    }

    /// Whether a selection found nothing only because of limits: the group's bucket is empty,
    /// or some eligible peer not in `tried` is at its `max_conns` or out of tokens. Such a
    /// request waits in the queue instead of getting 503 at once.
    pub fn limited_out(&self, tried: &TriedSet, now: Instant) -> bool {
        if !self.limited {
            return false;
        }
        if self.bucket.as_ref().is_some_and(|b| !b.ready(now)) {
            return true;
        }
        self.peer_ids().any(|id| {
            !tried.contains(id) && self.is_eligible(id, now) && !self.admits(id, now, true, None)
        })
    }

    /// How long until a token may be there for a request waiting on a `rate` (`None`: no
    /// rate, only freed slots wake the queue).
    pub fn next_token_in(&self, now: Instant) -> Option<Duration> {
        let group = self.bucket.as_ref().map(|b| b.until_ready(now));
        let peers = self
            .peers
            .iter()
            .filter_map(|p| p.guard.bucket.as_ref())
            .map(|b| b.until_ready(now))
            .min();
        match (group, peers) {
            (Some(g), Some(p)) => Some(g.max(p)),
            (g, p) => g.or(p),
        }
    }

    /// Whether this group limits its peers at all (`max_conns`, `rate`).
    #[inline]
    pub fn is_limited(&self) -> bool {
        self.limited
    }

    /// Takes a token from the client's bucket of the per-client `rate`; `Err(seconds)`: the
    /// request gets 429 with `Retry-After: seconds` (the wait for the client's next token,
    /// rounded up, at least 1). Always `Ok` without a per-client rate. A request without the
    /// key (no such header) counts in one shared bucket.
    pub fn take_client_token(
        &self,
        buf: &[u8],
        head: &RequestHead,
        client_ip: IpAddr,
        now: Instant,
    ) -> Result<(), u32> {
        let Some((buckets, key)) = &self.clients else {
            return Ok(());
        };
        let hash = hash_request(key, buf, head, client_ip).unwrap_or(0);
        buckets.take(hash, now).map_err(|wait| {
            self.metrics.client_rate_limited.inc();
            wait.as_secs_f64().ceil().clamp(1.0, 86_400.0) as u32
        })
    }

    /// The selection itself: see [`UpstreamGroup::select_from`].
    fn select_ramped(
        &self,
        hash: Option<u64>,
        region: Option<usize>,
        tried: &TriedSet,
        now: Instant,
        limits: bool,
        ramp: bool,
    ) -> Option<PeerId> {
        // This selection's slow-start coin, drawn when a ramping peer is first met.
        let coin = Cell::new(-1.0);
        let ramp = ramp.then_some(&coin);
        let ok = |id: PeerId| {
            !tried.contains(id) && self.is_eligible(id, now) && self.admits(id, now, limits, ramp)
        };
        let home = region.or(self.local_region_id);
        let found = match home.and_then(|r| self.region_chains.get(r)) {
            Some(chain) => {
                let within =
                    |r: usize| move |id: PeerId| ok(id) && self.peer(id).region_id == Some(r);
                (chain
                    .iter()
                    .find_map(|&r| self.pick(false, hash, within(r))))
                .or_else(|| self.pick(false, hash, ok))
                .or_else(|| chain.iter().find_map(|&r| self.pick(true, hash, within(r))))
                .or_else(|| self.pick(true, hash, ok))
            }
            None => self
                .pick(false, hash, ok)
                .or_else(|| self.pick(true, hash, ok)),
        };
        if let (Some(home), Some(id)) = (home, found) {
            self.note_region(home, id);
        }
        if found.is_some() || self.when_all_down == WhenAllDown::Fail {
            return found;
        }
        let last_resort = |id: PeerId| {
            self.peer(id).takes_requests()
                && !tried.contains(id)
                && self.admits(id, now, limits, None)
        };
        self.pick(false, hash, last_resort)
            .or_else(|| self.pick(true, hash, last_resort))
    }

    /// The backup tier if `backup`, else the primary one.
    #[inline]
    fn tier(&self, backup: bool) -> &Tier {
        if backup {
            &self.backup
        } else {
            &self.primary
        }
    }

    /// Picks from the primary (or backup) tier the first candidate `ok` accepts.
    fn pick(&self, backup: bool, hash: Option<u64>, ok: impl Fn(PeerId) -> bool) -> Option<PeerId> {
        let tier = self.tier(backup);
        let mut selector = tier.selector.borrow_mut();
        select_eligible(selector.as_mut(), hash, &tier.loads, |c| {
            ok(tier.peer(Slot::new(c)))
        })
        .map(|c| tier.peer(Slot::new(c)))
    }

    /// The region a request prefers (`region_from`: a header's value, or the client address
    /// looked up in `region_map`), as an index of the peers' regions; `None`: none given, not
    /// found, or a region no peer has (the request then prefers `local_region`).
    pub fn request_region(
        &self,
        buf: &[u8],
        head: &RequestHead,
        client_ip: IpAddr,
    ) -> Option<usize> {
        let name: &[u8] = match self.regions.from.as_ref()? {
            crate::config::RegionFrom::Header(h) => head
                .headers
                .iter()
                .find(|f| f.name(buf).eq_ignore_ascii_case(h.as_bytes()))?
                .value(buf)
                .trim_ascii(),
            crate::config::RegionFrom::ClientIp => self
                .regions
                .map
                .iter()
                .find(|(cidr, _)| cidr.contains(client_ip))?
                .1
                .as_bytes(),
        };
        self.region_names
            .iter()
            .position(|r| r.as_bytes().eq_ignore_ascii_case(name))
    }

    /// Logs a regional failover (no peer of the request's region `home` eligible, `peer` is
    /// elsewhere) or fail-back, once per transition and home region. The log is shard-local:
    /// each shard logs its own transitions.
    fn note_region(&self, home: usize, peer: PeerId) {
        let (Some(home_name), Some(state)) =
            (self.region_names.get(home), self.failed_over.get(home))
        else {
            return;
        };
        let region = |id: PeerId| self.peer(id).region.as_deref().unwrap_or("(none)");
        if self.peer(peer).region_id == Some(home) {
            if let Some(away) = state.take() {
                tracing::info!(group = %self.name, "regional fail-back from {} to {home_name}", region(away));
            }
            return;
        }
        let home_eligible = self
            .peer_ids()
            .any(|id| self.peer(id).region_id == Some(home) && self.peer(id).is_eligible());
        if home_eligible {
            return; // a retry of one request, not a failover
        }
        let from = match state.get() {
            Some(away) if region(away) == region(peer) => return,
            Some(away) => region(away),
            None => home_name.as_str(),
        };
        tracing::info!(group = %self.name, "regional failover from {from} to {}", region(peer));
        state.set(Some(peer));
    }
}

/// TriedSet is the set of peers one request has already tried (a bitset, no allocation for
/// groups of up to 128 peers).
#[derive(Debug, Default, Clone)]
pub(crate) struct TriedSet {
    /// Bits for peers 0..128.
    low: u128,
    /// Peers beyond 128, rarely used.
    high: Vec<PeerId>,
}

impl TriedSet {
    /// Marks `id` as tried.
    pub fn insert(&mut self, id: PeerId) {
        if id.index() < 128 {
            self.low |= 1 << id.index();
        } else if !self.high.contains(&id) {
            self.high.push(id);
        }
    }
    /// Whether `id` was tried.
    #[inline]
    pub fn contains(&self, id: PeerId) -> bool {
        if id.index() < 128 {
            self.low & (1 << id.index()) != 0
        } else {
            self.high.contains(&id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(peers: &str, algorithm: &str) -> UpstreamConfig {
        let text = format!(
            "[[upstream]]\nname = \"app\"\nalgorithm = \"{algorithm}\"\npeers = [{peers}]\n"
        );
        let mut c = Config::from_toml_str(&text, "t.toml").unwrap();
        c.upstreams.remove(0)
    }

    #[test]
    fn reload_carries_loads_over_for_kept_addresses() {
        let old = UpstreamGroup::new(&config(
            "{ address = \"127.0.0.1:1\" }, { address = \"127.0.0.1:2\" }, \
             { address = \"127.0.0.1:3\", backup = true }",
            "least_connections",
        ));
        let t0 = Instant::now();
        for (id, active) in [(0, 4), (1, 7), (2, 1)] {
            old.load(PeerId::new(id)).active.set(active);
            old.observe_latency(PeerId::new(id), Duration::from_millis(id as u64 + 1), t0);
        }
        // :1 goes, :3 stops being a backup and moves to the front, :4 is new.
        let cfg = config(
            "{ address = \"127.0.0.1:3\", weight = 2 }, { address = \"127.0.0.1:4\" }, \
             { address = \"127.0.0.1:2\" }",
            "least_connections",
        );
        let g = UpstreamGroup::succeed(&old, &cfg, &[true; 3], None);
        let addresses: Vec<&str> = g.peers.iter().map(|p| p.address.as_str()).collect();
        assert_eq!(addresses, ["127.0.0.1:3", "127.0.0.1:4", "127.0.0.1:2"]);
        let active: Vec<u32> = (0..3)
            .map(|id| g.load(PeerId::new(id)).active.get())
            .collect();
        assert_eq!(active, [1, 0, 7]);
        assert_eq!(g.load(PeerId::new(0)).ewma_ns.get(), 3e6);
        assert_eq!(g.load(PeerId::new(1)).ewma_ns.get(), 0.0);
        assert_eq!(g.load(PeerId::new(1)).ewma_at.get(), None);
        assert_eq!(g.load(PeerId::new(2)).ewma_ns.get(), 2e6);
        assert_eq!(g.load(PeerId::new(2)).ewma_at.get(), Some(t0));
        assert!(!g.peers[0].backup);
        // The new selector reads the carried loads: :4 is idle, so it goes first.
        assert_eq!(
            g.select(None, &TriedSet::default(), Instant::now()),
            Some(PeerId::new(1))
        );
        g.load(PeerId::new(1)).active.set(10);
        // :3 has 1 active at weight 2, :2 has 7.
        assert_eq!(
            g.select(None, &TriedSet::default(), Instant::now()),
            Some(PeerId::new(0))
        );
    }

    #[test]
    fn reload_keeps_idle_connections_of_kept_peers() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let kept = format!("{{ address = \"{addr}\" }}");
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let old = UpstreamGroup::new(&config(
                &format!("{{ address = \"127.0.0.1:9\" }}, {kept}"),
                "round_robin",
            ));
            let now = Instant::now();
            for _ in 0..2 {
                let stream = monoio::net::TcpStream::connect(addr).await.unwrap();
                old.pool.put(PeerId::new(1), stream, now);
            }
            let cfg = config(
                &format!("{kept}, {{ address = \"127.0.0.1:10\" }}"),
                "round_robin",
            );
            let g = UpstreamGroup::succeed(&old, &cfg, &[true, true], None);
            assert_eq!(g.pool.idle_count(PeerId::new(0)), 2);
            assert_eq!(g.pool.idle_count(PeerId::new(1)), 0);
            assert!(g.pool.take(PeerId::new(0), now).is_some());
        });
    }

    #[test]
    fn a_peer_back_after_down_ramps_up_linearly_for_weighted_and_load_aware_algorithms() {
        for algorithm in [
            "least_connections",
            "weighted_random",
            "smooth_weighted",
            "power_of_two",
        ] {
            let mut cfg = config(
                "{ address = \"127.0.0.1:1\" }, { address = \"127.0.0.1:2\" }",
                algorithm,
            );
            for p in &mut cfg.peers {
                p.limits.slow_start = Some(Duration::from_millis(1000));
            }
            let g = UpstreamGroup::new_seeded(&cfg, 3);
            let b = PeerId::new(1);
            g.set_health(b, false);
            g.set_health(b, true);
            let t0 = g
                .peer(b)
                .guard
                .ramp_since
                .get()
                .expect("ramping after down → up");
            let none = TriedSet::default();
            for (at_ms, f) in [(250u64, 0.25f64), (750, 0.75)] {
                let now = t0 + Duration::from_millis(at_ms);
                let n = 4000;
                let to_b = (0..n)
                    .filter(|i| g.select(Some(*i as u64 * 0x9e37_79b9), &none, now) == Some(b))
                    .count();
                let share = to_b as f64 / n as f64;
                // Admission by a coin of probability f gives between f/2 (a rejected pick
                // goes to the other peer) and f/(1+f) (weight scaled by f), depending on how
                // the algorithm picks again after a rejection.
                let (low, high) = (f / 2.0, f / (1.0 + f));
                assert!(
                    share > low - 0.05 && share < high + 0.05,
                    "{algorithm} at {at_ms} ms: share {share:.3}, want {low:.3}..{high:.3}"
                );
            }
            // Over: plain weights, and the gauge says so.
            let later = t0 + Duration::from_millis(1000);
            let to_b = (0..1000u64)
                .filter(|i| g.select(Some(i * 0x9e37_79b9), &none, later) == Some(b))
                .count();
            assert!((400..=600).contains(&to_b), "{algorithm}: {to_b}");
            assert_eq!(g.peer(b).guard.ramp_since.get(), None);
        }
    }

    #[test]
    fn request_hash_follows_the_hash_key() {
        let g = UpstreamGroup::new(&config("{ address = \"127.0.0.1:1\" }", "ip_hash"));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let head = RequestHead::default();
        assert_eq!(
            g.request_hash(b"", &head, ip),
            Some(crate::balance::stable_hash(&[192, 0, 2, 1]))
        );
        let g = UpstreamGroup::new(&config("{ address = \"127.0.0.1:1\" }", "round_robin"));
        assert_eq!(g.request_hash(b"", &head, ip), None);
    }
}

//! The context the connections of one shard share ([`ShardCtx`]): owned here, where the
//! request loop uses it, and embedded by the shard, so the proxy does not import the shard.
//!
//! Draining the control channel lives here too: the request loop drains it before every
//! request (invariant 1: `try_recv` only), the shard on its tick. A reload arrives there as a
//! [`Snapshot`]: the shard builds its next [`Live`] state from it and swaps it in; a request
//! holds the `Live` it started on (an `Rc`) until it ends.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use crossbeam_channel::Receiver;
use monoio::io::Canceller;

use super::park::Parking;
use super::{Picker, Router, Spare};
use crate::access_log::ShardLog;
use crate::config::{Config, GroupId, ShardId};
use crate::control::{
    ControlMsg, ListenChange, Notify, Outcome, ShardReporter, Signal, SignalWait, Snapshot,
};
use crate::failover::Failure;
use crate::metrics::{ShardHandles, ShardMetrics};
use crate::upstream::{Share, UpstreamGroup};

/// Live is what a shard serves requests with under one configuration generation: the config
/// snapshot, the shard's replica of every upstream group, the router. Immutable once built; a
/// reload builds the next one.
pub(crate) struct Live {
    /// The configuration (immutable snapshot).
    pub config: Arc<Config>,
    /// The generation (see [`Snapshot::generation`]); reports carry it.
    pub generation: u64,
    /// This shard's replica of every upstream group, in config order (index = [`GroupId`];
    /// read with [`Live::group`]).
    pub groups: Vec<Rc<UpstreamGroup>>,
    /// Route table: request → group index (the default picker).
    pub router: Router,
    /// Upstream group names in config order (for pickers).
    pub upstream_names: Vec<String>,
    /// Transparent mode's name cache and per-address groups (`proxy/transparent.rs`).
    pub transparent: super::transparent::TransparentState,
    /// This shard's TLS listeners under this generation (certificates, with the shard's
    /// session cache).
    pub tls: crate::tls::ShardTls,
    /// The shard's TLS session cache, handed from generation to generation.
    tls_sessions: Arc<rustls::server::ServerSessionMemoryCache>,
}

impl Live {
    /// The first generation, every peer as the config starts it, counting into `metrics`.
    fn new(config: Arc<Config>, metrics: &ShardHandles, share: Share) -> Live {
        let groups = config
            .upstreams
            .iter()
            .enumerate()
            .map(|(gi, u)| {
                Rc::new(UpstreamGroup::for_shard(
                    u,
                    metrics.upstreams.get(gi),
                    share,
                ))
            })
            .collect();
        Live::with_groups(config, 0, groups, crate::tls::ShardTls::session_cache())
    }

    fn with_groups(
        config: Arc<Config>,
        generation: u64,
        groups: Vec<Rc<UpstreamGroup>>,
        tls_sessions: Arc<rustls::server::ServerSessionMemoryCache>,
    ) -> Live {
        Live {
            tls: crate::tls::ShardTls::new(&config.server.tls, &tls_sessions),
            tls_sessions,
            router: Router::new(&config),
            upstream_names: config.upstreams.iter().map(|u| u.name.clone()).collect(),
            transparent: Default::default(),
            generation,
            groups,
            config,
        }
    }

    /// The next generation: groups that stay (by name) succeed their old replica (state
    /// carried over, see `UpstreamGroup::succeed`), new ones start fresh, removed ones close
    /// their idle connections (their in-flight requests finish on the old `Live`).
    fn succeed(&self, snap: &Snapshot, shard: ShardId, share: Share) -> Live {
        let metrics = snap.metrics(shard);
        let mut old: HashMap<&str, &Rc<UpstreamGroup>> =
            self.groups.iter().map(|g| (g.name.as_str(), g)).collect();
        let groups = snap
            .config
            .upstreams
            .iter()
            .enumerate()
            .map(|(gi, u)| {
                let gi = GroupId::new(gi);
                let eligible = snap.eligible(gi);
                let handles = metrics.and_then(|m| m.upstreams.get(gi.index()));
                match old.remove(u.name.as_str()) {
                    Some(prev) => UpstreamGroup::succeed(prev, u, eligible, handles),
                    None => {
                        let g = UpstreamGroup::for_shard(u, handles, share);
                        g.set_all_health(eligible);
                        Rc::new(g)
                    }
                }
            })
            .collect();
        for gone in old.values() {
            gone.pool.clear();
        }
        Live::with_groups(
            snap.config.clone(),
            snap.generation,
            groups,
            self.tls_sessions.clone(),
        )
    }

    /// This shard's replica of group `id`, if this generation has such a group.
    #[inline]
    pub fn group(&self, id: GroupId) -> Option<&Rc<UpstreamGroup>> {
        self.groups.get(id.index())
    }
}

/// ShardCtx is everything the connections of one shard share (behind an `Rc`): the current
/// [`Live`] state, the router or picker, the passive-health reporter, and the shard's control
/// channel with the shutdown state it sets. The shard embeds it (`shard::Shard`) and adds what
/// only its own loops count.
pub(crate) struct ShardCtx {
    /// The shard.
    pub id: ShardId,
    /// This shard and how many run: what part of each peer's limits is this shard's.
    share: Share,
    /// The current generation's state; swapped by a reload.
    live: RefCell<Rc<Live>>,
    /// A library user's picker, replacing the router when set.
    pub picker: Option<Arc<dyn Picker>>,
    /// The control channel, drained with `try_recv` only.
    control: Receiver<ControlMsg>,
    /// Set once shutdown began: connections finish their request and close.
    shutting_down: Cell<bool>,
    /// Notified when shutdown begins, when a reload was applied, and by the shard when a
    /// connection closes or an accept loop ends.
    changed: Notify,
    /// Notified when shutdown begins and when a reload was applied, and only then: what the
    /// HTTP/2 connections wait on. (Not `changed`: every connection that closes notifies
    /// that, and waking every open HTTP/2 connection for each one made connection churn
    /// cost in proportion to the HTTP/2 connections open.)
    reconfigured: Notify,
    /// Cancels every accept and idle keep-alive read at shutdown.
    canceller: RefCell<Canceller>,
    /// Reports request outcomes to the control thread (passive health), never blocking.
    pub health: ShardReporter,
    /// This shard's own counters (connections, requests, responses by status).
    pub metrics: Arc<ShardMetrics>,
    /// Listener changes received and not yet applied by the shard (it owns the listeners).
    listen_changes: RefCell<Vec<ListenChange>>,
    /// This shard's access log buffer (`[log] access`), when on.
    pub access_log: Option<ShardLog>,
    /// Set when shutdown's drain time (`shutdown_timeout_ms`) is over: open tunnels close.
    tunnels_ending: Cell<bool>,
    /// Notified when `tunnels_ending` is set (the tunnels wait on it).
    tunnels_end: Notify,
    /// Fired when shutdown begins: keep-alive waits not yet parked end.
    shutdown: Signal,
    /// Parked connections' deadlines (closed at shutdown, which ends their waits).
    pub parking: Parking,
    /// Awake connections' buffers, given back by connections that parked or closed: at most
    /// [`SPARES_SLACK`] more than there are awake connections, and never more than
    /// [`WARM_MAX`], so that once traffic stops the pool shrinks back to a few.
    spares: RefCell<Vec<Spare>>,
    /// Connections awake now (holding a spare).
    awake: Cell<usize>,
    /// This shard's HTTP/2 connections to upstream peers (`protocol = "h2c"`).
    pub h2_upstreams: super::h2::H2Upstreams,
    /// Empty pipes for spliced response bodies, kept between responses (at most
    /// [`PIPES_KEPT`]; an empty pipe holds no pages).
    pipes: RefCell<Vec<crate::io::Pipe>>,
}

/// Bytes a splice pipe holds (`F_SETPIPE_SZ`): a large body's bytes move 256 KiB per pair of
/// splices, as its buffered relay reads and writes.
pub(crate) const SPLICE_PIPE: usize = super::LARGE_BODY_BUF;

/// Empty pipes a shard keeps for the next spliced bodies.
const PIPES_KEPT: usize = 16;

/// Connections that may wait warm (with a read and its buffer in flight) at once per shard;
/// beyond that a waiting connection parks at once. This bounds the buffers an idle flood of
/// connections can pin to about `WARM_MAX` × 25 KiB, whatever the park time.
pub(crate) const WARM_MAX: usize = 256;

/// Spares the pool keeps beyond the awake connections' count.
const SPARES_SLACK: usize = 8;

impl ShardCtx {
    /// Builds the context of shard `id` of `shards` from the config.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: ShardId,
        shards: usize,
        config: Arc<Config>,
        control: Receiver<ControlMsg>,
        picker: Option<Arc<dyn Picker>>,
        health: ShardReporter,
        metrics: ShardHandles,
        access_log: Option<ShardLog>,
    ) -> Self {
        // The count comes from the server: the shard's thread is pinned already, so the
        // config's CPU set as seen from here would be its one CPU.
        let share = Share {
            index: id.index(),
            count: shards.max(id.index() + 1),
        };
        ShardCtx {
            id,
            share,
            live: RefCell::new(Rc::new(Live::new(config, &metrics, share))),
            metrics: metrics.shard,
            listen_changes: RefCell::new(Vec::new()),
            access_log,
            picker,
            control,
            shutting_down: Cell::new(false),
            changed: Notify::default(),
            reconfigured: Notify::default(),
            canceller: RefCell::new(Canceller::new()),
            health,
            tunnels_ending: Cell::new(false),
            tunnels_end: Notify::default(),
            shutdown: Signal::default(),
            parking: Parking::default(),
            spares: RefCell::new(Vec::new()),
            awake: Cell::new(0),
            h2_upstreams: Default::default(),
            pipes: RefCell::new(Vec::new()),
        }
    }

    /// An empty pipe for a spliced body: a kept one, or a new one (`None` when the process is
    /// out of descriptors: the body is then relayed through a buffer).
    pub(super) fn take_pipe(&self) -> Option<crate::io::Pipe> {
        if let Some(p) = self.pipes.borrow_mut().pop() {
            return Some(p);
        }
        crate::io::Pipe::new(SPLICE_PIPE).ok()
    }

    /// Keeps `pipe`, which must be empty, for the next spliced body.
    pub(super) fn put_pipe(&self, pipe: crate::io::Pipe) {
        let mut pipes = self.pipes.borrow_mut();
        if pipes.len() < PIPES_KEPT {
            pipes.push(pipe);
        }
    }

    /// The current generation's state (a request keeps the one it started with).
    #[inline]
    pub fn live(&self) -> Rc<Live> {
        self.live.borrow().clone()
    }

    /// The current configuration.
    pub fn config(&self) -> Arc<Config> {
        self.live.borrow().config.clone()
    }

    /// Applies every pending control message, without blocking.
    pub fn drain_control(&self) {
        while let Ok(msg) = self.control.try_recv() {
            match msg {
                ControlMsg::Shutdown => self.begin_shutdown(),
                ControlMsg::Health(change) => {
                    if let Some(g) = self.live.borrow().group(change.group) {
                        g.set_health(change.peer, change.eligible);
                    }
                    self.health.applied(&change);
                }
                ControlMsg::Reload(snap) => self.reload(&snap),
                ControlMsg::Listen(change) => {
                    self.listen_changes.borrow_mut().push(change);
                    self.changed.notify_all();
                }
            }
        }
    }

    /// Swaps in the next generation.
    fn reload(&self, snap: &Snapshot) {
        let next = self.live.borrow().succeed(snap, self.id, self.share);
        self.health.reconfigure(&snap.config, snap.generation);
        tracing::debug!(
            shard = %self.id,
            generation = snap.generation,
            "configuration applied"
        );
        *self.live.borrow_mut() = Rc::new(next);
        // HTTP/2 connections wait on this to send GOAWAY (their settings are per connection).
        self.changed.notify_all();
        self.reconfigured.notify_all();
    }

    fn begin_shutdown(&self) {
        if self.shutting_down.replace(true) {
            return;
        }
        tracing::debug!(
            shard = %self.id,
            "shutdown: stop accepting, closing idle connections"
        );
        let old = std::mem::take(&mut *self.canceller.borrow_mut());
        *self.canceller.borrow_mut() = old.cancel();
        self.shutdown.fire();
        self.parking.close();
        self.changed.notify_all();
        self.reconfigured.notify_all();
    }

    /// Completes once shutdown began (at once if it has).
    pub fn shutdown_wait(&self) -> SignalWait<'_> {
        self.shutdown.wait()
    }

    /// A connection's buffers and request state for an awake stretch: a pooled one, or new.
    #[inline]
    pub(super) fn take_spare(&self) -> Spare {
        self.awake.set(self.awake.get() + 1);
        self.spares.borrow_mut().pop().unwrap_or_else(Spare::new)
    }

    /// Whether a waiting connection may wait warm (see [`WARM_MAX`]).
    #[inline]
    pub(super) fn may_wait_warm(&self) -> bool {
        self.awake.get() <= WARM_MAX
    }

    /// Drops every pooled spare (before freed memory goes back to the OS: a kept spare's
    /// buffers would pin the allocator pages around them). The pool refills as connections
    /// wake.
    pub fn drop_spares(&self) {
        self.spares.borrow_mut().clear();
    }

    /// Takes back the buffers of a connection that parked or closed.
    #[inline]
    pub(super) fn put_spare(&self, spare: Spare) {
        let awake = self.awake.get().saturating_sub(1);
        self.awake.set(awake);
        let keep = (awake + SPARES_SLACK).min(WARM_MAX);
        let mut spares = self.spares.borrow_mut();
        if spares.len() < keep {
            spares.push(spare);
        } else {
            spares.truncate(keep);
            drop(spare);
            self.parking.release_soon();
        }
    }

    /// The listener changes received since the last call (the shard applies them).
    pub fn take_listen_changes(&self) -> Vec<ListenChange> {
        std::mem::take(&mut *self.listen_changes.borrow_mut())
    }

    /// Whether shutdown began.
    #[inline]
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    /// Closes every open tunnel (shutdown's drain time is over); later ones close at once.
    pub fn end_tunnels(&self) {
        self.tunnels_ending.set(true);
        self.tunnels_end.notify_all();
    }

    /// Whether tunnels are to close (see [`ShardCtx::end_tunnels`]), and what to wait on for
    /// it.
    pub(super) fn tunnels_ending(&self) -> (bool, &Notify) {
        (self.tunnels_ending.get(), &self.tunnels_end)
    }

    /// A handle that shutdown cancels: for accepts and idle keep-alive reads.
    pub fn cancel_handle(&self) -> monoio::io::CancelHandle {
        self.canceller.borrow().handle()
    }

    /// What the shard's loops wait on: notified when shutdown begins (and by the shard when a
    /// connection closes or an accept loop ends).
    pub fn changed(&self) -> &Notify {
        &self.changed
    }

    /// Notified when shutdown begins and when a reload was applied (not when connections
    /// come and go): for waits that only care about those, such as an HTTP/2 connection's.
    pub fn reconfigured(&self) -> &Notify {
        &self.reconfigured
    }
}

/// How a failed try counts for passive health. It lives here, where both are used, so that
/// neither `failover` nor `control` imports the other (docs/architecture.md, "Layers").
impl From<Failure> for Outcome {
    /// How a failed try counts for passive health.
    fn from(failure: Failure) -> Outcome {
        match failure {
            Failure::ConnectFailure | Failure::ConnectTimeout => Outcome::ConnectFailure,
            Failure::Reset => Outcome::Reset,
            Failure::Timeout => Outcome::Timeout,
            Failure::InvalidResponse => Outcome::InvalidResponse,
            Failure::TlsFailure => Outcome::TlsFailure,
            Failure::Status(s) => Outcome::from_status(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_from_failures() {
        assert_eq!(Outcome::from(Failure::Timeout), Outcome::Timeout);
        assert_eq!(
            Outcome::from(Failure::ConnectTimeout),
            Outcome::ConnectFailure
        );
        assert_eq!(
            Outcome::from(Failure::InvalidResponse),
            Outcome::InvalidResponse
        );
        assert_eq!(Outcome::from(Failure::Reset), Outcome::Reset);
        assert_eq!(Outcome::from(Failure::Status(502)), Outcome::Status(502));
        assert_eq!(Outcome::from(Failure::Status(404)), Outcome::Success);
        assert_eq!(Outcome::from_status(200), Outcome::Success);
        assert_eq!(Outcome::from_status(503), Outcome::Status(503));
    }
}

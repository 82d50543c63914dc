//! The control thread `ringlb-ctl`: the one place health is decided (invariant 3).
//!
//! It runs its own monoio runtime (io_uring when available, else epoll) with:
//! - one task per probed peer, each on its own schedule (`interval` ±10% jitter, start to
//!   start), feeding probe results to the peer's state machine;
//! - the observation drain: crossbeam cannot be awaited, so it `try_recv`s everything pending,
//!   then sleeps until its doorbell rings (a shard's report, a reload, stop) or 1 ms, doubling
//!   up to 60 s while nothing arrives; the same loop ends
//!   ejections whose time has come and retries pushes that found a shard's control channel
//!   full;
//! - the admin endpoint: its accept loop and one task per connection, each served by
//!   [`crate::admin::serve`] (`GET /status`, `GET /health`); the `/status` document comes from
//!   this thread's state through [`crate::admin::Host`].
//!
//! The thread runs supervised ([`crate::process::supervise`]): a panic is logged and every
//! shard is told to shut down, so the process stops (and [`ControlThread::stop`] reports it)
//! rather than serving traffic with no health checks and a dead admin endpoint.
//!
//! Every status change is logged once at info (group, peer, old → new, why); every eligibility
//! flip is pushed to every shard as `ControlMsg::Health`, in decision order per shard; then the
//! library user's observers are told (see [`super::observer`]).
//! The state lives in `RefCell`s: one thread, and no borrow is held across an `.await`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use monoio::io::Canceller;
use monoio::net::{TcpListener, TcpStream};

mod api;

use super::custom::Checker;
use super::hooks::Hooks;
use super::observer::HealthEvent;
use super::state::{Change, GroupHealth};
use crate::admin;
use crate::balance::PeerId;
use crate::config::{Config, ConfigError, Discovery, Driver, GroupId};
use crate::control::{
    ControlMsg, Doorbell, HealthChange, ListenChange, Notify, Observation, ShardSender, ShardStats,
    Snapshot, Waker,
};
use crate::discovery::{Discovered, Resolver, Update};
use crate::listen::{bind_for_shards, probe_unshared};
use crate::metrics::Registry;
use crate::process::{spawn_supervised, RateLimit};

/// How long the observation drain sleeps after a round that found observations.
const DRAIN_TICK: Duration = Duration::from_millis(1);
/// The longest sleep of an idle drain: each empty round doubles the sleep up to this. A report,
/// a reload or stop rings the thread's doorbell and ends the sleep at once, and the next
/// ejection's end bounds it, so an idle control thread sleeps (it shares the shards' CPUs).
const DRAIN_IDLE_MAX: Duration = Duration::from_secs(60);
/// Observations handled per drain round before other tasks get a turn.
const DRAIN_BATCH: usize = 4096;
/// How long the control thread waits for its tasks to end when it stops.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// ControlSetup is what the control thread needs from [`Server::start`](crate::Server::start).
pub struct ControlSetup {
    /// The configuration (the same snapshot the shards run).
    pub config: Arc<Config>,
    /// Every shard's control sender, in shard order.
    pub shards: Vec<ShardSender>,
    /// The receiving end of the shards' observation channel.
    pub observations: Receiver<Observation>,
    /// The control thread's doorbell: rung by the shards' reporters, reloads and stop.
    pub bell: Doorbell,
    /// Rings `bell`.
    pub waker: Waker,
    /// Every shard's health counters, in shard order.
    pub stats: Vec<Arc<ShardStats>>,
    /// The bound admin listener (`None` when `server.admin = ""`).
    pub admin: Option<std::net::TcpListener>,
    /// Every shard's metrics, laid out for `config` (the shards hold their handles).
    pub registry: Registry,
    /// The library user's custom checks and observers (kept across reloads).
    pub hooks: Hooks,
}

/// ControlThread is the running `ringlb-ctl` thread; dropping it stops and joins it.
pub struct ControlThread {
    /// Set to stop the thread.
    stop: Arc<AtomicBool>,
    /// Test knobs, read by the thread.
    knobs: Arc<TestKnobs>,
    /// The thread, until joined.
    thread: Option<JoinHandle<()>>,
    /// Set when the thread panicked (the supervisor caught it, so joining succeeds).
    panicked: Arc<AtomicBool>,
    /// The bound admin address.
    admin: Option<SocketAddr>,
    /// Reload requests to the thread.
    reloads: Sender<ReloadRequest>,
    /// Rings the thread's doorbell (stop, knobs, reloads).
    waker: Waker,
}

/// ReloadRequest asks the control thread to apply a configuration: the file again (`None`,
/// what SIGHUP does) or the given one; the outcome goes to `reply`.
struct ReloadRequest {
    /// The configuration to apply; `None` re-reads the file the running one came from.
    config: Option<Config>,
    /// Where the outcome goes.
    reply: mpsc::Sender<Result<ReloadReport, String>>,
}

/// ReloadReport is what an applied reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// The configuration generation now running.
    pub generation: u64,
    /// Settings that changed in the file but only take effect after a restart (the running
    /// value was kept), one sentence each.
    pub needs_restart: Vec<String>,
}

/// ReloadHandle applies a new configuration to a running proxy, from any thread.
#[derive(Clone)]
pub struct ReloadHandle {
    /// Reload requests to the control thread.
    tx: Sender<ReloadRequest>,
    /// Rings the control thread's doorbell.
    waker: Waker,
}

impl ReloadHandle {
    /// Re-reads the configuration file the proxy runs (SIGHUP) and applies it. `Err` carries
    /// the reason (the file, key and reason of a config error); the old configuration keeps
    /// running then.
    pub fn reload(&self) -> Result<ReloadReport, String> {
        self.request(None)
    }

    /// Applies `config` (already validated) as the next generation.
    pub fn apply(&self, config: Config) -> Result<ReloadReport, String> {
        self.request(Some(config))
    }

    fn request(&self, config: Option<Config>) -> Result<ReloadReport, String> {
        let (reply, answer) = mpsc::channel();
        self.tx
            .send(ReloadRequest { config, reply })
            .map_err(|_| "the control thread is not running".to_string())?;
        self.waker.wake();
        answer
            .recv()
            .map_err(|_| "the control thread stopped before answering".to_string())?
    }
}

/// TestKnobs are the control thread's test hooks, set from another thread.
#[derive(Default)]
struct TestKnobs {
    /// Pause the observation drain for this many ms (taken and reset by the thread).
    pause_ms: AtomicU64,
    /// Panic at the next drain round (exercises the supervision).
    panic: AtomicBool,
}

impl ControlThread {
    /// Spawns the control thread and returns once its runtime is up.
    pub fn start(setup: ControlSetup) -> Result<ControlThread, String> {
        let admin = match &setup.admin {
            Some(l) => Some(l.local_addr().map_err(|e| format!("admin listener: {e}"))?),
            None => None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let knobs = Arc::new(TestKnobs::default());
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let panicked = Arc::new(AtomicBool::new(false));
        let (stop2, knobs2) = (stop.clone(), knobs.clone());
        let (shards, panicked2) = (setup.shards.clone(), panicked.clone());
        let (reloads, reload_rx) = crossbeam_channel::unbounded();
        let waker = setup.waker.clone();
        // A second handle on the admin socket: a panic unwinds the runtime without closing the
        // sockets it owned, so the panic action shuts this one down (no more accepts).
        let admin_socket = match &setup.admin {
            Some(l) => Some(l.try_clone().map_err(|e| format!("admin listener: {e}"))?),
            None => None,
        };
        let thread = spawn_supervised(
            "ringlb-ctl",
            move || run(setup, reload_rx, stop2, knobs2, ready_tx),
            move |_| {
                panicked2.store(true, Ordering::SeqCst);
                tracing::error!("no health checks and no admin endpoint any more: stopping ringlb");
                if let Some(l) = admin_socket {
                    let _ = socket2::SockRef::from(&l).shutdown(std::net::Shutdown::Both);
                }
                for tx in &shards {
                    let _ = tx.send(ControlMsg::Shutdown);
                }
            },
        )
        .map_err(|e| format!("cannot spawn the control thread: {e}"))?;
        let mut ctl = ControlThread {
            stop,
            knobs,
            thread: Some(thread),
            panicked,
            admin,
            reloads,
            waker,
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(ctl),
            Ok(Err(reason)) => {
                ctl.stop();
                Err(reason)
            }
            Err(_) => {
                ctl.stop();
                Err("the control thread exited during start".to_string())
            }
        }
    }

    /// The bound admin address (port 0 resolved), if the admin endpoint is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// A handle that applies new configurations.
    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle {
            tx: self.reloads.clone(),
            waker: self.waker.clone(),
        }
    }

    /// Test knob: stop draining observations for `d` (shards keep reporting; a full channel
    /// then drops their reports).
    #[doc(hidden)]
    pub fn pause_observations(&self, d: Duration) {
        self.knobs
            .pause_ms
            .store(d.as_millis().max(1) as u64, Ordering::Relaxed);
        self.waker.wake();
    }

    /// Test knob: make the thread panic (within a few ms), to exercise its supervision.
    #[doc(hidden)]
    pub fn inject_panic(&self) {
        self.knobs.panic.store(true, Ordering::Relaxed);
        self.waker.wake();
    }

    /// Stops the thread and joins it. Returns false if it panicked (then it has already told
    /// every shard to shut down).
    pub fn stop(&mut self) -> bool {
        self.stop.store(true, Ordering::Relaxed);
        self.waker.wake();
        let joined = match self.thread.take() {
            Some(t) => t.join().is_ok(),
            None => true,
        };
        joined && !self.panicked.load(Ordering::SeqCst)
    }
}

impl Drop for ControlThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The thread body: builds the runtime and runs until stopped.
fn run(
    setup: ControlSetup,
    reloads: Receiver<ReloadRequest>,
    stop: Arc<AtomicBool>,
    knobs: Arc<TestKnobs>,
    ready: mpsc::Sender<Result<(), String>>,
) {
    let epoll = setup.config.server.driver == Driver::Epoll;
    let main = |ready: mpsc::Sender<Result<(), String>>| async move {
        let _ = ready.send(Ok(()));
        control_main(setup, reloads, stop, knobs).await;
    };
    if epoll {
        match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
        {
            Ok(mut rt) => rt.block_on(main(ready)),
            Err(e) => {
                let _ = ready.send(Err(format!("control thread runtime: {e}")));
            }
        }
    } else {
        match monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
        {
            Ok(mut rt) => rt.block_on(main(ready)),
            Err(e) => {
                let _ = ready.send(Err(format!("control thread runtime: {e}")));
            }
        }
    }
}

/// Ctl is the control thread's state, shared by its tasks (one thread: `Rc` + `RefCell`).
struct Ctl {
    /// The configuration running now.
    config: RefCell<Arc<Config>>,
    /// Its generation (see [`Snapshot::generation`]).
    generation: Cell<u64>,
    /// Reload outcomes so far.
    reloads: RefCell<ReloadStats>,
    /// Every shard's metrics (read at scrape time, re-laid out by each reload).
    metrics: RefCell<Registry>,
    /// Which admin listener is current (a reload that moves `server.admin` bumps it).
    admin_generation: Cell<u64>,
    /// Wakes the admin accept loop when the endpoint moves.
    admin_changed: Notify,
    /// Cancels the admin listener's pending accept when the endpoint moves.
    admin_canceller: RefCell<Canceller>,
    /// Health of every group, in config order.
    groups: RefCell<Vec<GroupHealth>>,
    /// Every shard's control sender.
    shards: Vec<ShardSender>,
    /// Per shard: pushes that found its channel full, sent before anything newer.
    backlog: RefCell<Vec<VecDeque<ControlMsg>>>,
    /// Every shard's health counters.
    stats: Vec<Arc<ShardStats>>,
    /// Earliest end of any ejection (so the drain loop checks expiry in O(1) otherwise).
    next_expiry: Cell<Option<Instant>>,
    /// Observations received so far.
    received: Cell<u64>,
    /// Eligibility flips pushed so far.
    pushed: Cell<u64>,
    /// Set when the thread stops; tasks end at their next await.
    stopping: Cell<bool>,
    /// Wakes every task when the thread stops.
    stopped: Notify,
    /// Tasks still running (probe loops, admin listener and connections).
    tasks: Cell<usize>,
    /// When the control thread started, for `/status`.
    started: Instant,
    /// Custom checks and health observers.
    hooks: Hooks,
    /// The configuration as loaded, before discovery added its peers (`config` is this plus
    /// the discovered peers; a discovery update rebuilds `config` from it).
    loaded: RefCell<Arc<Config>>,
    /// The latest peer set of every discovered upstream.
    discovered: RefCell<Discovered>,
    /// The resolver thread, once an upstream is discovered.
    resolver: RefCell<Option<Resolver>>,
    /// Where the resolver thread sends its updates (the receiver is drained by the main loop).
    discovery_tx: Sender<Update>,
    /// Rings this thread's doorbell (the resolver thread's updates).
    waker: Waker,
}

/// ReloadStats counts reload outcomes (for `/status` and the metrics).
#[derive(Debug, Default, Clone)]
struct ReloadStats {
    /// Applied reloads.
    ok: u64,
    /// Refused reloads (the old configuration kept running).
    error: u64,
    /// When the last applied reload happened (Unix seconds).
    last_success_unix: Option<f64>,
    /// Why the last refused reload was refused.
    last_error: Option<String>,
}

/// TaskGuard counts a running task for as long as it lives.
struct TaskGuard(Rc<Ctl>);

impl TaskGuard {
    fn new(ctl: &Rc<Ctl>) -> TaskGuard {
        ctl.tasks.set(ctl.tasks.get() + 1);
        TaskGuard(ctl.clone())
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.tasks.set(self.0.tasks.get() - 1);
    }
}

impl Ctl {
    /// Runs `f` until it completes or the thread stops (then `None`).
    async fn until_stop<F: Future>(&self, f: F) -> Option<F::Output> {
        if self.stopping.get() {
            return None;
        }
        let stopped = self.stopped.notified();
        monoio::select! {
            r = f => Some(r),
            _ = stopped => None,
        }
    }

    /// Logs `change` of `peer` in `group` and pushes it to every shard if eligibility flipped.
    fn apply(&self, group: GroupId, peer: PeerId, change: Option<Change>, decided_at: Instant) {
        let Some(c) = change else {
            return;
        };
        let config = self.config.borrow().clone();
        let g = &config.upstreams[group.index()];
        tracing::info!(
            group = %g.name,
            peer = %g.peers[peer.index()].address,
            "health: {} -> {} ({})",
            c.from,
            c.to,
            c.why
        );
        if c.flipped {
            self.push(HealthChange {
                group,
                peer,
                eligible: c.eligible,
                decided_at,
            });
        }
        // After the push: an observer learns of a change once the shards have been told.
        let event = HealthEvent::Changed {
            old: c.from,
            new: c.to,
        };
        self.hooks
            .observers
            .notify(&g.name, &g.peers[peer.index()].address, event, &c.why);
    }

    /// Sends `change` to every shard; a full channel keeps it (in order) for the next round.
    fn push(&self, change: HealthChange) {
        self.pushed.set(self.pushed.get() + 1);
        let mut backlog = self.backlog.borrow_mut();
        for (tx, queue) in self.shards.iter().zip(backlog.iter_mut()) {
            if !queue.is_empty() {
                queue.push_back(ControlMsg::Health(change));
                continue;
            }
            if let Err(TrySendError::Full(msg)) = tx.try_send(ControlMsg::Health(change)) {
                queue.push_back(msg);
            }
        }
    }

    /// Retries pushes that found a shard's channel full.
    fn flush_backlog(&self) {
        let mut backlog = self.backlog.borrow_mut();
        for (tx, queue) in self.shards.iter().zip(backlog.iter_mut()) {
            while let Some(msg) = queue.pop_front() {
                match tx.try_send(msg) {
                    Ok(()) => {}
                    Err(TrySendError::Full(msg)) => {
                        queue.push_front(msg);
                        break;
                    }
                    Err(TrySendError::Disconnected(_)) => queue.clear(),
                }
            }
        }
    }

    /// Feeds one shard observation to its peer's state machine.
    fn observe(&self, obs: Observation) {
        self.received.set(self.received.get() + 1);
        if obs.generation != self.generation.get() {
            return; // its indices belong to an older configuration
        }
        let now = Instant::now();
        let change = {
            let mut groups = self.groups.borrow_mut();
            let Some(g) = groups.get_mut(obs.group.index()) else {
                return;
            };
            let failure = obs.outcome.failure(&g.passive);
            let change = g.observe_outcome(obs.peer, failure.as_deref(), now);
            if change.is_some() {
                let next = g.next_expiry();
                self.next_expiry
                    .set(min_instant(self.next_expiry.get(), next));
            }
            change
        };
        self.apply(obs.group, obs.peer, change, now);
    }

    /// Ends every ejection whose time has come.
    fn expire(&self, now: Instant) {
        if self.next_expiry.get().is_none_or(|t| t > now) {
            return;
        }
        let mut changes = Vec::new();
        let mut next = None;
        {
            let mut groups = self.groups.borrow_mut();
            for (gi, g) in groups.iter_mut().enumerate() {
                for (peer, c) in g.expire(now) {
                    changes.push((GroupId::new(gi), peer, c));
                }
                next = min_instant(next, g.next_expiry());
            }
        }
        self.next_expiry.set(next);
        for (gi, peer, c) in changes {
            self.apply(gi, peer, Some(c), now);
        }
    }
}

/// The running configuration.
fn config_now(ctl: &Ctl) -> Arc<Config> {
    ctl.config.borrow().clone()
}

/// The earlier of two optional instants.
fn min_instant(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `d` ±10%, uniformly.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.9 + fastrand::f64() * 0.2)
}

/// The runtime's main future: spawns the probe and admin tasks, then drains observations until
/// stopped, then lets every task end.
async fn control_main(
    setup: ControlSetup,
    reloads: Receiver<ReloadRequest>,
    stop: Arc<AtomicBool>,
    knobs: Arc<TestKnobs>,
) {
    let config = setup.config;
    let (discovery_tx, discovery_rx) = crossbeam_channel::unbounded();
    let ctl = Rc::new(Ctl {
        loaded: RefCell::new(config.clone()),
        discovered: RefCell::new(Discovered::default()),
        resolver: RefCell::new(None),
        discovery_tx,
        waker: setup.waker,
        groups: RefCell::new(config.upstreams.iter().map(GroupHealth::new).collect()),
        backlog: RefCell::new(setup.shards.iter().map(|_| VecDeque::new()).collect()),
        shards: setup.shards,
        stats: setup.stats,
        next_expiry: Cell::new(None),
        received: Cell::new(0),
        pushed: Cell::new(0),
        stopping: Cell::new(false),
        stopped: Notify::default(),
        tasks: Cell::new(0),
        started: Instant::now(),
        config: RefCell::new(config),
        generation: Cell::new(0),
        reloads: RefCell::new(ReloadStats::default()),
        metrics: RefCell::new(setup.registry),
        admin_generation: Cell::new(0),
        admin_changed: Notify::default(),
        admin_canceller: RefCell::new(Canceller::new()),
        hooks: setup.hooks,
    });
    spawn_probes(&ctl);
    let specs = ctl.discovered.borrow_mut().configure(&config_now(&ctl));
    ctl.follow_discovery(specs);
    if let Some(l) = setup.admin {
        match TcpListener::from_std(l) {
            Ok(l) => {
                monoio::spawn(admin_loop(TaskGuard::new(&ctl), l, 0));
            }
            Err(e) => tracing::error!("cannot register the admin listener: {e}"),
        }
    }

    let rx = setup.observations;
    let mut bell = match setup.bell.register() {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!("control thread: cannot register its doorbell ({e}): polling");
            None
        }
    };
    let mut paused_until: Option<Instant> = None;
    let mut idle_sleep = DRAIN_TICK;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if knobs.panic.load(Ordering::Relaxed) {
            panic!("test knob: injected panic in the control thread");
        }
        let pause = knobs.pause_ms.swap(0, Ordering::Relaxed);
        if pause > 0 {
            paused_until = Some(now + Duration::from_millis(pause));
        }
        if paused_until.is_some_and(|t| now >= t) {
            paused_until = None;
        }
        let mut seen = 0;
        if paused_until.is_none() {
            for obs in rx.try_iter().take(DRAIN_BATCH) {
                ctl.observe(obs);
                seen += 1;
            }
        }
        while let Ok(req) = reloads.try_recv() {
            let outcome = ctl.reload(req.config);
            let _ = req.reply.send(outcome);
        }
        let mut rediscovered = false;
        for update in discovery_rx.try_iter() {
            rediscovered |= ctl.discovered.borrow_mut().update(update);
        }
        if rediscovered {
            ctl.rediscover();
        }
        ctl.expire(Instant::now());
        ctl.flush_backlog();
        idle_sleep = if seen > 0 {
            DRAIN_TICK
        } else {
            (idle_sleep * 2).min(DRAIN_IDLE_MAX)
        };
        // Sleep until woken (a report, a reload, stop), the next ejection ends, or the idle
        // backoff passes; pushes waiting for a full shard channel retry every tick.
        let mut wait = idle_sleep;
        if let Some(t) = ctl.next_expiry.get() {
            wait = wait.min(t.saturating_duration_since(Instant::now()));
        }
        if ctl.backlog.borrow().iter().any(|q| !q.is_empty()) || paused_until.is_some() {
            wait = wait.min(DRAIN_TICK);
        }
        match bell.as_mut() {
            Some(b) => {
                b.wait(wait).await;
            }
            None => monoio::time::sleep(wait.min(DRAIN_TICK * 16)).await,
        }
    }

    ctl.stopping.set(true);
    ctl.stopped.notify_all();
    drop(ctl.resolver.borrow_mut().take());
    let deadline = Instant::now() + STOP_WAIT;
    while ctl.tasks.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(DRAIN_TICK).await;
    }
}

/// Starts one probe loop per actively checked peer of the running configuration generation
/// (loops of an older generation end at their next wake-up).
fn spawn_probes(ctl: &Rc<Ctl>) {
    let config = ctl.config.borrow().clone();
    let generation = ctl.generation.get();
    for (gi, u) in config.upstreams.iter().enumerate() {
        let Some(check) = &u.health else {
            continue;
        };
        for (pi, p) in u.peers.iter().enumerate() {
            let probe = Checker::new(&ctl.hooks, &u.name, check, p);
            monoio::spawn(probe_loop(
                TaskGuard::new(ctl),
                generation,
                GroupId::new(gi),
                PeerId::new(pi),
                probe,
                check.interval,
            ));
        }
    }
}

impl Ctl {
    /// Binds, once per shard, every address of `new.server.listen` that `old` does not have.
    /// Returns per shard the sockets to hand over (with the address as configured).
    #[allow(clippy::type_complexity)]
    fn bind_new_listeners(
        &self,
        old: &Config,
        new: &Config,
    ) -> Result<Vec<Vec<(SocketAddr, std::net::TcpListener)>>, String> {
        let shards = self.shards.len();
        let mut per_shard: Vec<Vec<(SocketAddr, std::net::TcpListener)>> =
            (0..shards).map(|_| Vec::new()).collect();
        for (i, addr) in new.server.listen.iter().enumerate() {
            if old.server.listen.contains(addr) {
                continue;
            }
            if addr.port() != 0 {
                if let Err(e) = probe_unshared(*addr) {
                    return Err(format!(
                        "{}: key `server.listen[{i}]`: cannot listen on {addr}: {e}",
                        new.source
                    ));
                }
            }
            let tcp = new.server.tcp;
            let configure = |s: &socket2::Socket| tcp.apply_listener(s, "server.tcp");
            let (_, sockets) = bind_for_shards(*addr, shards, new.server.backlog, &configure)
                .map_err(|e| {
                    format!(
                        "{}: key `server.listen[{i}]`: cannot listen on {addr}: {e}",
                        new.source
                    )
                })?;
            for (shard, l) in per_shard.iter_mut().zip(sockets) {
                shard.push((*addr, l));
            }
        }
        Ok(per_shard)
    }

    /// Tells every shard which listeners to open and which addresses to close.
    fn send_listen_changes(
        &self,
        opened: Vec<Vec<(SocketAddr, std::net::TcpListener)>>,
        closed: &[SocketAddr],
    ) {
        if closed.is_empty() && opened.iter().all(Vec::is_empty) {
            return;
        }
        let mut backlog = self.backlog.borrow_mut();
        for ((tx, queue), open) in self.shards.iter().zip(backlog.iter_mut()).zip(opened) {
            let msg = ControlMsg::Listen(ListenChange {
                open,
                close: closed.to_vec(),
            });
            if !queue.is_empty() {
                queue.push_back(msg);
                continue;
            }
            if let Err(TrySendError::Full(msg)) = tx.try_send(msg) {
                queue.push_back(msg);
            }
        }
    }

    /// Moves the admin endpoint to `addr` (`None`: off): the old listener stops accepting.
    fn move_admin(self: &Rc<Self>, addr: Option<SocketAddr>) {
        self.admin_generation.set(self.admin_generation.get() + 1);
        let old = std::mem::take(&mut *self.admin_canceller.borrow_mut());
        *self.admin_canceller.borrow_mut() = old.cancel();
        self.admin_changed.notify_all();
        let Some(addr) = addr else {
            tracing::info!("admin endpoint off (reload)");
            return;
        };
        match std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(TcpListener::from_std)
        {
            Ok(l) => {
                tracing::info!("admin endpoint on {addr} (reload)");
                monoio::spawn(admin_loop(
                    TaskGuard::new(self),
                    l,
                    self.admin_generation.get(),
                ));
            }
            Err(e) => tracing::error!("reload: cannot bind the admin endpoint on {addr}: {e}"),
        }
    }
}

/// The settings a running process cannot change: (what, whether it differs). A reload keeps
/// the running value of each and says so.
fn restart_only(old: &Config, new: &Config) -> Vec<(&'static str, bool)> {
    let (o, n) = (&old.server, &new.server);
    vec![
        ("server.workers", o.workers != n.workers),
        ("server.cpus / server.numa_node", o.cpus != n.cpus),
        ("server.driver", o.driver != n.driver),
        ("server.uring_entries", o.uring_entries != n.uring_entries),
        ("server.uring_taskrun", o.uring_taskrun != n.uring_taskrun),
        (
            "server.observation_queue",
            o.observation_queue != n.observation_queue,
        ),
        ("server.backlog", o.backlog != n.backlog),
        ("[log]", old.log != new.log),
    ]
}

impl Ctl {
    /// Applies a new configuration (`None`: the running one's file again): validates it,
    /// carries every surviving peer's health over, pushes the next generation to every shard
    /// and restarts the probes. On error the running configuration stays and the reason is
    /// logged, counted and returned.
    fn reload(self: &Rc<Self>, new: Option<Config>) -> Result<ReloadReport, String> {
        self.install(new, false)
    }

    /// Applies the discovered peers as they are now: the loaded configuration again, with
    /// them, as the next generation (not counted as a reload).
    fn rediscover(self: &Rc<Self>) {
        let loaded = (**self.loaded.borrow()).clone();
        if let Err(reason) = self.install(Some(loaded), true) {
            tracing::error!("discovery: cannot apply the discovered peers: {reason}");
        }
    }

    /// Starts the resolver thread when the first upstream is discovered, and tells it which
    /// upstreams to discover now.
    fn follow_discovery(&self, specs: Vec<(String, Discovery)>) {
        let mut resolver = self.resolver.borrow_mut();
        if resolver.is_none() && !specs.is_empty() {
            match Resolver::start(self.discovery_tx.clone(), self.waker.clone()) {
                Ok(r) => *resolver = Some(r),
                Err(e) => tracing::error!("discovery: {e}"),
            }
        }
        if let Some(r) = resolver.as_ref() {
            r.configure(specs);
        }
    }

    /// [`Ctl::reload`]'s body; `discovery`: a discovery update (the loaded configuration
    /// again: no user check, not counted as a reload).
    fn install(
        self: &Rc<Self>,
        new: Option<Config>,
        discovery: bool,
    ) -> Result<ReloadReport, String> {
        let old = self.config.borrow().clone();
        let loaded = match new {
            Some(c) => Ok(c),
            None if old.source.starts_with('<') => Err(format!(
                "{}: this configuration did not come from a file: there is nothing to re-read",
                old.source
            )),
            None => Config::from_file(std::path::Path::new(&old.source))
                .map_err(|e: ConfigError| e.to_string()),
        }
        .and_then(|c| match self.hooks.check_config(&c) {
            _ if discovery => Ok(c),
            Ok(()) => Ok(c),
            Err((key, reason)) => Err(format!("{}: key `{key}`: {reason}", c.source)),
        });
        let mut new = match loaded {
            Ok(c) => c,
            Err(reason) => {
                let mut stats = self.reloads.borrow_mut();
                stats.error += 1;
                stats.last_error = Some(reason.clone());
                tracing::error!(
                    "reload refused, still running the previous configuration: {reason}"
                );
                return Err(reason);
            }
        };
        let mut needs_restart = Vec::new();
        for (what, changed) in restart_only(&old, &new) {
            if changed {
                needs_restart.push(format!(
                    "{what} changed: it takes effect after a restart; the running value is kept"
                ));
            }
        }
        // Keep what cannot change while running.
        new.server.workers = old.server.workers;
        new.server.cpus = old.server.cpus.clone();
        new.server.driver = old.server.driver;
        new.server.uring_entries = old.server.uring_entries;
        new.server.uring_taskrun = old.server.uring_taskrun;
        new.server.observation_queue = old.server.observation_queue;
        new.server.backlog = old.server.backlog;
        new.log = old.log.clone();
        // New listen addresses are bound now (one socket per shard), before anything changes:
        // an address that cannot be bound refuses the whole reload, and so does an upstream
        // `tcp` option the kernel refuses.
        let checked = new.check_upstream_tcp().map_err(|(key, e)| {
            format!(
                "{}: key `{key}`: the kernel refuses this socket option: {e}",
                new.source
            )
        });
        let opened = match checked.and_then(|()| self.bind_new_listeners(&old, &new)) {
            Ok(opened) => opened,
            Err(reason) => {
                let mut stats = self.reloads.borrow_mut();
                stats.error += 1;
                stats.last_error = Some(reason.clone());
                tracing::error!(
                    "reload refused, still running the previous configuration: {reason}"
                );
                return Err(reason);
            }
        };
        let closed: Vec<SocketAddr> = old
            .server
            .listen
            .iter()
            .filter(|a| !new.server.listen.contains(a))
            .copied()
            .collect();
        let admin_moved = old.server.admin != new.server.admin;
        // Discovery: sources whose upstream or spec changed drop their peers; the running
        // configuration is the loaded one plus the discovered peers.
        let loaded = Arc::new(new);
        let specs = self.discovered.borrow_mut().configure(&loaded);
        let new = self.discovered.borrow().merge(&loaded);

        let groups: Vec<GroupHealth> = {
            let old_groups = self.groups.borrow();
            new.upstreams
                .iter()
                .map(|u| match old.upstream_index(&u.name) {
                    Some(oi) => {
                        GroupHealth::succeed(&old_groups[oi.index()], &old.upstreams[oi.index()], u)
                    }
                    None => GroupHealth::new(u),
                })
                .collect()
        };
        let generation = self.generation.get() + 1;
        let snapshot = Arc::new(Snapshot {
            eligible: groups
                .iter()
                .map(|g| g.peers.iter().map(|p| p.is_eligible()).collect())
                .collect(),
            metrics: self.metrics.borrow_mut().reconcile(&new.peer_layout()),
            config: Arc::new(new),
            generation,
        });
        let next_expiry = groups
            .iter()
            .fold(None, |acc, g| min_instant(acc, g.next_expiry()));
        let old_groups = self.groups.replace(groups);
        *self.config.borrow_mut() = snapshot.config.clone();
        self.generation.set(generation);
        self.next_expiry.set(next_expiry);
        {
            // Health changes still queued name old indices: the snapshot supersedes them.
            let mut backlog = self.backlog.borrow_mut();
            for (tx, queue) in self.shards.iter().zip(backlog.iter_mut()) {
                queue.clear();
                if let Err(TrySendError::Full(msg)) =
                    tx.try_send(ControlMsg::Reload(snapshot.clone()))
                {
                    queue.push_back(msg);
                }
            }
        }
        self.send_listen_changes(opened, &closed);
        if admin_moved {
            self.move_admin(snapshot.config.server.admin);
        }
        // After the push: observers learn of added and removed peers once the shards have.
        self.hooks.observers.reloaded(
            (&old, &old_groups),
            (&snapshot.config, &self.groups.borrow()),
            generation,
        );
        spawn_probes(self);
        *self.loaded.borrow_mut() = loaded;
        self.follow_discovery(specs);
        let c = &snapshot.config;
        if discovery {
            tracing::info!(
                generation,
                peers = c.upstreams.iter().map(|u| u.peers.len()).sum::<usize>(),
                "discovery: peers changed"
            );
            return Ok(ReloadReport {
                generation,
                needs_restart,
            });
        }
        {
            let mut stats = self.reloads.borrow_mut();
            stats.ok += 1;
            stats.last_success_unix = std::time::SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs_f64());
        }
        tracing::info!(
            generation,
            upstreams = c.upstreams.len(),
            peers = c.upstreams.iter().map(|u| u.peers.len()).sum::<usize>(),
            "configuration reloaded"
        );
        for note in &needs_restart {
            tracing::warn!("reload: {note}");
        }
        Ok(ReloadReport {
            generation,
            needs_restart,
        })
    }
}

/// Probes one peer forever, on its own jittered schedule.
async fn probe_loop(
    guard: TaskGuard,
    generation: u64,
    group: GroupId,
    peer: PeerId,
    probe: Checker,
    interval: Duration,
) {
    let ctl = guard.0.clone();
    // The first probe comes within a tenth of an interval, spread so peers do not probe in
    // lockstep; later ones every interval ±10%, start to start.
    let mut wait = interval.mul_f64(fastrand::f64() * 0.1);
    loop {
        if ctl.until_stop(monoio::time::sleep(wait)).await.is_none() {
            return;
        }
        if ctl.generation.get() != generation {
            return; // a reload started the probes of the new configuration
        }
        let started = Instant::now();
        let Some(result) = ctl.until_stop(probe.run()).await else {
            return;
        };
        if ctl.generation.get() != generation {
            return;
        }
        let now = Instant::now();
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        let change = ctl.groups.borrow_mut()[group.index()].observe_probe(peer, ok, &detail, now);
        ctl.apply(group, peer, change, now);
        wait = jitter(interval).saturating_sub(started.elapsed());
    }
}

/// Accepts admin connections until stopped.
async fn admin_loop(guard: TaskGuard, listener: TcpListener, generation: u64) {
    let ctl = guard.0.clone();
    let warnings = RateLimit::per_second();
    loop {
        let moved = ctl.admin_changed.notified();
        let handle = ctl.admin_canceller.borrow().handle();
        let accepted = monoio::select! {
            a = ctl.until_stop(listener.cancelable_accept(handle)) => Some(a),
            _ = moved => None,
        };
        if ctl.admin_generation.get() != generation {
            return; // a reload moved the endpoint
        }
        let Some(accepted) = accepted else {
            continue;
        };
        let Some(accepted) = accepted else {
            return; // the thread stops
        };
        match accepted {
            Ok((stream, _)) => {
                monoio::spawn(admin_conn(TaskGuard::new(&ctl), stream));
            }
            Err(e) => {
                if let Some(suppressed) = warnings.check(Instant::now()) {
                    tracing::warn!("admin accept failed: {e}{suppressed}");
                }
                if ctl
                    .until_stop(monoio::time::sleep(Duration::from_millis(10)))
                    .await
                    .is_none()
                {
                    return;
                }
            }
        }
    }
}

/// Serves one admin connection (see [`crate::admin`]), cut short when the thread stops.
async fn admin_conn(guard: TaskGuard, stream: TcpStream) {
    let ctl = guard.0.clone();
    let _ = ctl.until_stop(admin::serve(&ctl, stream)).await;
}

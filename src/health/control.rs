//! The control thread `ringlb-ctl`: the one place health is decided (invariant 3).
//!
//! It runs its own monoio runtime (io_uring when available, else epoll) with:
//! - one task per probed peer, each on its own schedule (`interval` ±10% jitter, start to
//!   start), feeding probe results to the peer's state machine;
//! - the observation drain: crossbeam cannot be awaited, so it `try_recv`s everything pending,
//!   then sleeps 1 ms (doubling up to 16 ms while nothing arrives); the same loop ends
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
//! flip is pushed to every shard as `ControlMsg::Health`, in decision order per shard.
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
use monoio::net::{TcpListener, TcpStream};
use serde_json::{json, Value};

use super::probe::Probe;
use super::state::{Change, GroupHealth};
use crate::admin;
use crate::balance::PeerId;
use crate::config::{Config, Driver, GroupId};
use crate::control::{ControlMsg, HealthChange, Notify, Observation, ShardStats};
use crate::process::{dropped_log_writes, spawn_supervised, RateLimit};

/// How long the observation drain sleeps after a round that found observations.
const DRAIN_TICK: Duration = Duration::from_millis(1);
/// The longest sleep of an idle drain: each empty round doubles the sleep up to this, so an
/// idle control thread wakes ~60 times a second instead of 1000 (it shares the shards' CPUs).
const DRAIN_IDLE_MAX: Duration = Duration::from_millis(16);
/// Observations handled per drain round before other tasks get a turn.
const DRAIN_BATCH: usize = 4096;
/// How long the control thread waits for its tasks to end when it stops.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// ControlSetup is what the control thread needs from [`Server::start`](crate::Server::start).
pub struct ControlSetup {
    /// The configuration (the same snapshot the shards run).
    pub config: Arc<Config>,
    /// Every shard's control sender, in shard order.
    pub shards: Vec<Sender<ControlMsg>>,
    /// The receiving end of the shards' observation channel.
    pub observations: Receiver<Observation>,
    /// Every shard's health counters, in shard order.
    pub stats: Vec<Arc<ShardStats>>,
    /// The bound admin listener (`None` when `server.admin = ""`).
    pub admin: Option<std::net::TcpListener>,
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
        // A second handle on the admin socket: a panic unwinds the runtime without closing the
        // sockets it owned, so the panic action shuts this one down (no more accepts).
        let admin_socket = match &setup.admin {
            Some(l) => Some(l.try_clone().map_err(|e| format!("admin listener: {e}"))?),
            None => None,
        };
        let thread = spawn_supervised(
            "ringlb-ctl",
            move || run(setup, stop2, knobs2, ready_tx),
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

    /// Test knob: stop draining observations for `d` (shards keep reporting; a full channel
    /// then drops their reports).
    #[doc(hidden)]
    pub fn pause_observations(&self, d: Duration) {
        self.knobs
            .pause_ms
            .store(d.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    /// Test knob: make the thread panic (within a few ms), to exercise its supervision.
    #[doc(hidden)]
    pub fn inject_panic(&self) {
        self.knobs.panic.store(true, Ordering::Relaxed);
    }

    /// Stops the thread and joins it. Returns false if it panicked (then it has already told
    /// every shard to shut down).
    pub fn stop(&mut self) -> bool {
        self.stop.store(true, Ordering::Relaxed);
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
    stop: Arc<AtomicBool>,
    knobs: Arc<TestKnobs>,
    ready: mpsc::Sender<Result<(), String>>,
) {
    let epoll = setup.config.server.driver == Driver::Epoll;
    let main = |ready: mpsc::Sender<Result<(), String>>| async move {
        let _ = ready.send(Ok(()));
        control_main(setup, stop, knobs).await;
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
    /// The configuration.
    config: Arc<Config>,
    /// Health of every group, in config order.
    groups: RefCell<Vec<GroupHealth>>,
    /// Every shard's control sender.
    shards: Vec<Sender<ControlMsg>>,
    /// Per shard: pushes that found its channel full, sent before anything newer.
    backlog: RefCell<Vec<VecDeque<HealthChange>>>,
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
        let g = &self.config.upstreams[group.index()];
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
    }

    /// Sends `change` to every shard; a full channel keeps it (in order) for the next round.
    fn push(&self, change: HealthChange) {
        self.pushed.set(self.pushed.get() + 1);
        let mut backlog = self.backlog.borrow_mut();
        for (tx, queue) in self.shards.iter().zip(backlog.iter_mut()) {
            if !queue.is_empty() {
                queue.push_back(change);
                continue;
            }
            if let Err(TrySendError::Full(_)) = tx.try_send(ControlMsg::Health(change)) {
                queue.push_back(change);
            }
        }
    }

    /// Retries pushes that found a shard's channel full.
    fn flush_backlog(&self) {
        let mut backlog = self.backlog.borrow_mut();
        for (tx, queue) in self.shards.iter().zip(backlog.iter_mut()) {
            while let Some(change) = queue.front() {
                match tx.try_send(ControlMsg::Health(*change)) {
                    Ok(()) => {
                        queue.pop_front();
                    }
                    Err(TrySendError::Full(_)) => break,
                    Err(TrySendError::Disconnected(_)) => queue.clear(),
                }
            }
        }
    }

    /// Feeds one shard observation to its peer's state machine.
    fn observe(&self, obs: Observation) {
        self.received.set(self.received.get() + 1);
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

impl admin::Host for Ctl {
    /// The `/status` document.
    fn status(&self) -> Value {
        let groups = self.groups.borrow();
        let now = Instant::now();
        let ms_since = |t: Instant| now.saturating_duration_since(t).as_millis() as u64;
        let groups: Vec<Value> = self
            .config
            .upstreams
            .iter()
            .zip(groups.iter())
            .map(|(u, g)| {
                let peers: Vec<Value> = u
                    .peers
                    .iter()
                    .zip(g.peers.iter())
                    .map(|(p, h)| {
                        let last_check = h.last_check.as_ref().map(|c| {
                            json!({
                                "ok": c.ok,
                                "result": c.detail,
                                "ago_ms": ms_since(c.at),
                                "unix_ms": c.wall.duration_since(UNIX_EPOCH)
                                    .map_or(0, |d| d.as_millis() as u64),
                            })
                        });
                        json!({
                            "address": p.address,
                            "addr": p.addr.to_string(),
                            "weight": p.weight,
                            "backup": p.backup,
                            "region": p.region,
                            "state": h.status().name(),
                            "eligible": h.is_eligible(),
                            "why": h.why,
                            "last_check": last_check,
                            "consecutive_successes": h.successes,
                            "consecutive_failures": h.failures,
                            "passive_consecutive_failures": h.passive_failures,
                            "ejected": h.is_ejected(),
                            "ejected_for_ms": h.ejected_until
                                .map_or(0, |t| t.saturating_duration_since(now).as_millis() as u64),
                            "ejections": h.ejections,
                            "changed_ago_ms": h.changed_at.map(ms_since),
                        })
                    })
                    .collect();
                json!({
                    "name": u.name,
                    "active_check": u.health.is_some(),
                    "local_region": u.local_region,
                    "when_all_down": u.when_all_down.name(),
                    "ejected": g.ejected(),
                    "max_ejected": g.max_ejected(),
                    "peers": peers,
                })
            })
            .collect();
        let shards: Vec<Value> = self
            .stats
            .iter()
            .enumerate()
            .map(|(i, s)| {
                json!({
                    "shard": i,
                    "sent_observations": s.sent_observations.load(Ordering::Relaxed),
                    "dropped_observations": s.dropped_observations.load(Ordering::Relaxed),
                    "health_changes_applied": s.changes_applied.load(Ordering::Relaxed),
                    "last_apply_lag_us": s.last_apply_lag_ns.load(Ordering::Relaxed) / 1000,
                    "max_apply_lag_us": s.max_apply_lag_ns.load(Ordering::Relaxed) / 1000,
                })
            })
            .collect();
        json!({
            "uptime_ms": ms_since(self.started),
            "observations_received": self.received.get(),
            "health_changes_pushed": self.pushed.get(),
            "dropped_log_writes": dropped_log_writes(),
            "groups": groups,
            "shards": shards,
        })
    }
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
async fn control_main(setup: ControlSetup, stop: Arc<AtomicBool>, knobs: Arc<TestKnobs>) {
    let config = setup.config;
    let ctl = Rc::new(Ctl {
        groups: RefCell::new(config.upstreams.iter().map(GroupHealth::new).collect()),
        backlog: RefCell::new(vec![VecDeque::new(); setup.shards.len()]),
        shards: setup.shards,
        stats: setup.stats,
        next_expiry: Cell::new(None),
        received: Cell::new(0),
        pushed: Cell::new(0),
        stopping: Cell::new(false),
        stopped: Notify::default(),
        tasks: Cell::new(0),
        started: Instant::now(),
        config: config.clone(),
    });
    for (gi, u) in config.upstreams.iter().enumerate() {
        let Some(check) = &u.health else {
            continue;
        };
        for (pi, p) in u.peers.iter().enumerate() {
            let probe = Probe::new(check, p.addr, &p.address);
            monoio::spawn(probe_loop(
                TaskGuard::new(&ctl),
                GroupId::new(gi),
                PeerId::new(pi),
                probe,
                check.interval,
            ));
        }
    }
    if let Some(l) = setup.admin {
        match TcpListener::from_std(l) {
            Ok(l) => {
                monoio::spawn(admin_loop(TaskGuard::new(&ctl), l));
            }
            Err(e) => tracing::error!("cannot register the admin listener: {e}"),
        }
    }

    let rx = setup.observations;
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
        ctl.expire(Instant::now());
        ctl.flush_backlog();
        idle_sleep = if seen > 0 {
            DRAIN_TICK
        } else {
            (idle_sleep * 2).min(DRAIN_IDLE_MAX)
        };
        monoio::time::sleep(idle_sleep).await;
    }

    ctl.stopping.set(true);
    ctl.stopped.notify_all();
    let deadline = Instant::now() + STOP_WAIT;
    while ctl.tasks.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(DRAIN_TICK).await;
    }
}

/// Probes one peer forever, on its own jittered schedule.
async fn probe_loop(
    guard: TaskGuard,
    group: GroupId,
    peer: PeerId,
    probe: Probe,
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
        let started = Instant::now();
        let Some(result) = ctl.until_stop(probe.run()).await else {
            return;
        };
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
async fn admin_loop(guard: TaskGuard, listener: TcpListener) {
    let ctl = guard.0.clone();
    let warnings = RateLimit::per_second();
    while let Some(accepted) = ctl.until_stop(listener.accept()).await {
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
    let _ = ctl.until_stop(admin::serve(&*ctl, stream)).await;
}

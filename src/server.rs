//! Starting and stopping the whole proxy: binds every listener, spawns one pinned shard thread
//! per core and the control thread (health checks, admin), and stops them: the shards through
//! their control channels, then the control thread.
//!
//! Every shard binds its own `SO_REUSEPORT` socket on each listen address, so the kernel also
//! lets *another process* of the same user join that address and take a share of the
//! connections. Start refuses that: before the shards bind, each address is probe-bound
//! without `SO_REUSEPORT`, which fails with `EADDRINUSE` exactly when another socket listens
//! there ([`StartError::AddressInUse`]). [`StartOptions::reuse_listeners`] (the binary's
//! `--reuse-listeners`) skips the probe for a deliberate takeover.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::access_log::{AccessLog, AccessLogHandle};
use crate::config::{Config, ShardId};
use crate::control::{doorbell, shard_channel, ControlMsg, ShardReporter, ShardSender, ShardStats};
use crate::health::control::{ControlSetup, ControlThread};
pub use crate::health::control::{ReloadHandle, ReloadReport};
use crate::health::{HealthCheck, HealthObserver, Hooks};
use crate::listen::{bind_for_shards, probe_unshared};
use crate::proxy::{Picker, ShardCtx};
use crate::shard;

/// Capacity of each shard's control channel.
const CONTROL_CAPACITY: usize = 1024;

/// StartError is why the proxy could not start. Listener errors name the config file, the
/// key and the reason, as config errors do.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another socket (usually another process) already listens on a listen address, and
    /// [`StartOptions::reuse_listeners`] is off.
    #[error(
        "{file}: key `{key}`: cannot listen on {addr}: the address is already in use \
         (another process listens there; --reuse-listeners shares it on purpose)"
    )]
    AddressInUse {
        /// The config file (or `<string>`) the address came from.
        file: String,
        /// The key, e.g. `server.listen[0]`.
        key: String,
        /// The address.
        addr: SocketAddr,
    },
    /// A listener could not be bound.
    #[error("{file}: key `{key}`: cannot listen on {addr}: {error}")]
    Bind {
        /// The config file (or `<string>`) the address came from.
        file: String,
        /// The key, e.g. `server.listen[0]` or `server.admin`.
        key: String,
        /// The address.
        addr: SocketAddr,
        /// The OS error (part of the message, not a separate `source`, so it is printed once).
        error: std::io::Error,
    },
    /// The kernel refused an upstream's `tcp` option (checked on a probe socket at start).
    #[error("{file}: key `{key}`: the kernel refuses this socket option: {error}")]
    Tcp {
        /// The config file (or `<string>`).
        file: String,
        /// The key, e.g. `upstream[0].tcp.user_timeout_ms`.
        key: String,
        /// The OS error.
        error: std::io::Error,
    },
    /// A shard could not start (thread spawn, runtime build, driver unavailable).
    #[error("shard {shard}: {reason}")]
    Shard {
        /// The shard.
        shard: ShardId,
        /// What went wrong.
        reason: String,
    },
    /// The health hooks do not fit the config: an upstream with `kind = "custom"` has no
    /// check registered, or a check is registered for an upstream without it.
    #[error("{file}: {reason}")]
    HealthHooks {
        /// The config file (or `<string>`).
        file: String,
        /// What does not fit (names the key or the upstream).
        reason: String,
    },
    /// The access log file could not be opened.
    #[error("{file}: key `log.access`: {error}")]
    AccessLog {
        /// The config file (or `<string>`).
        file: String,
        /// The OS error (it names the path).
        error: std::io::Error,
    },
    /// The control thread could not start.
    #[error("control thread: {reason}")]
    Control {
        /// What went wrong.
        reason: String,
    },
}

/// StartOptions is how [`Server::start_with`] starts the proxy, beyond what the config says.
#[derive(Clone, Default)]
pub struct StartOptions {
    /// Decides each request's upstream group and hash key instead of the config's routes
    /// (see [`Server::start_with_picker`]). Default `None`.
    pub picker: Option<Arc<dyn Picker>>,
    /// Share listen addresses that another socket already listens on (`SO_REUSEPORT`
    /// across processes: the kernel then spreads connections over both) instead of refusing
    /// to start. For a deliberate takeover, such as a binary upgrade while the old process
    /// still serves. Default `false`.
    pub reuse_listeners: bool,
    /// Custom health checks and health observers (see [`StartOptions::health_check`] and
    /// [`StartOptions::health_observer`]). Default: none.
    pub hooks: Hooks,
}

impl StartOptions {
    /// Registers `check` as the active check of the upstream named `upstream`, which must
    /// have `health = { kind = "custom", … }` (start fails otherwise, and also when an
    /// upstream with `kind = "custom"` has no check). It runs on that table's `interval_ms`
    /// (±10%), `timeout_ms`, `rise`, `fall` and `start`, exactly as a built-in probe, and
    /// again after every reload (see `examples/custom_health.rs`).
    pub fn health_check(mut self, upstream: &str, check: Arc<dyn HealthCheck>) -> StartOptions {
        self.hooks.add_check(upstream, check);
        self
    }

    /// Registers `observer`, told every health event on the control thread: every status
    /// change (the first `unknown → up` included) and every peer a reload or the admin API
    /// adds or removes. It must be quick (see [`HealthObserver`]).
    pub fn health_observer(mut self, observer: Arc<dyn HealthObserver>) -> StartOptions {
        self.hooks.add_observer(observer);
        self
    }
}

/// Server is a running proxy: its shard threads and their control channels.
///
/// Dropping a `Server` shuts it down gracefully (as [`Server::shutdown`]).
pub struct Server {
    /// Bound listen addresses (port 0 resolved), in config order.
    listen: Vec<SocketAddr>,
    /// Control senders of every shard.
    handle: ShutdownHandle,
    /// Shard threads, joined at shutdown.
    threads: Vec<JoinHandle<()>>,
    /// The I/O driver the shards run on (`io_uring` or `epoll`).
    driver: &'static str,
    /// The control thread (health checks, admin); stopped after the shards.
    control: Option<ControlThread>,
    /// The access log's writer (`[log] access`); flushed and stopped after the shards.
    access_log: Option<AccessLog>,
}

/// ShutdownHandle starts a graceful shutdown from anywhere (a signal thread, a test).
#[derive(Clone)]
pub struct ShutdownHandle {
    /// One control sender per shard.
    shards: Vec<ShardSender>,
}

impl ShutdownHandle {
    /// Tells every shard to stop accepting and finish its in-flight requests.
    pub fn shutdown(&self) {
        for tx in &self.shards {
            let _ = tx.send(ControlMsg::Shutdown);
        }
    }
}

impl Server {
    /// Starts the proxy: binds every listener of every shard (so bind errors surface here),
    /// spawns the shards and returns once each runtime is up.
    pub fn start(config: Config) -> Result<Server, StartError> {
        Server::start_with(config, StartOptions::default())
    }

    /// Starts the proxy with a custom [`Picker`] deciding each request's upstream group and
    /// hash key instead of the config's routes (see `examples/custom_router.rs`).
    pub fn start_with_picker(
        config: Config,
        picker: Arc<dyn Picker>,
    ) -> Result<Server, StartError> {
        Server::start_with(
            config,
            StartOptions {
                picker: Some(picker),
                ..StartOptions::default()
            },
        )
    }

    /// Starts the proxy with [`StartOptions`] (a custom picker, listener takeover, health
    /// hooks). Each of
    /// [`Config::warnings`] is logged at warn first.
    pub fn start_with(config: Config, options: StartOptions) -> Result<Server, StartError> {
        let StartOptions {
            picker,
            reuse_listeners,
            hooks,
        } = options;
        let hooks_error = |reason: String| StartError::HealthHooks {
            file: config.source.clone(),
            reason,
        };
        hooks
            .check_config(&config)
            .map_err(|(key, reason)| hooks_error(format!("key `{key}`: {reason}")))?;
        hooks.check_registrations(&config).map_err(hooks_error)?;
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        if let Err((key, error)) = config.check_upstream_tcp() {
            return Err(StartError::Tcp {
                file: config.source.clone(),
                key,
                error,
            });
        }
        let config = Arc::new(config);
        let cpus = config.shard_cpus();
        let bind_error = |key: String, addr: SocketAddr, error: std::io::Error| StartError::Bind {
            file: config.source.clone(),
            key,
            addr,
            error,
        };
        let listen_key = |i: usize| format!("server.listen[{i}]");
        if !reuse_listeners {
            for (i, addr) in config.server.listen.iter().enumerate() {
                if addr.port() == 0 {
                    continue; // the kernel picks an unused port
                }
                match probe_unshared(*addr) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                        return Err(StartError::AddressInUse {
                            file: config.source.clone(),
                            key: listen_key(i),
                            addr: *addr,
                        })
                    }
                    Err(e) => return Err(bind_error(listen_key(i), *addr, e)),
                }
            }
        }
        let mut listen = Vec::with_capacity(config.server.listen.len());
        let mut per_shard: Vec<Vec<std::net::TcpListener>> =
            (0..cpus.len()).map(|_| Vec::new()).collect();
        for (i, addr) in config.server.listen.iter().enumerate() {
            // Every later shard binds the port the kernel picked for the first (an unused one:
            // port selection ignores SO_REUSEPORT, so no probe is needed).
            let tcp = config.server.tcp;
            let configure = |s: &socket2::Socket| tcp.apply_listener(s, "server.tcp");
            let (bound, sockets) =
                bind_for_shards(*addr, cpus.len(), config.server.backlog, &configure)
                    .map_err(|e| bind_error(listen_key(i), *addr, e))?;
            listen.push(bound);
            for (shard, l) in per_shard.iter_mut().zip(sockets) {
                shard.push(l);
            }
        }

        // The admin listener: one socket (no SO_REUSEPORT: a second process must not share it).
        let admin = match config.server.admin {
            Some(addr) => Some(
                std::net::TcpListener::bind(addr)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .map_err(|e| bind_error("server.admin".to_string(), addr, e))?,
            ),
            None => None,
        };
        let access_log = AccessLog::start(&config.log).map_err(|error| StartError::AccessLog {
            file: config.source.clone(),
            error,
        })?;
        let (obs_tx, obs_rx) = crossbeam_channel::bounded(config.server.observation_queue);
        let (control_waker, control_bell) = doorbell().map_err(|e| StartError::Control {
            reason: format!("cannot create its doorbell: {e}"),
        })?;
        let mut registry = crate::metrics::Registry::new(cpus.len());
        let mut handles = registry.reconcile(&config.peer_layout()).into_iter();
        let stats: Vec<Arc<ShardStats>> = cpus.iter().map(|_| Arc::default()).collect();

        let mut channels = Vec::with_capacity(cpus.len());
        for i in 0..cpus.len() {
            channels.push(
                shard_channel(CONTROL_CAPACITY).map_err(|e| StartError::Shard {
                    shard: ShardId::new(i),
                    reason: format!("cannot create its control channel: {e}"),
                })?,
            );
        }
        let mut channels = channels.into_iter();
        let mut senders = Vec::with_capacity(cpus.len());
        let mut threads = Vec::with_capacity(cpus.len());
        let mut waits = Vec::with_capacity(cpus.len());
        let shards = cpus.len();
        for (i, (cpu, listeners)) in cpus.iter().copied().zip(per_shard).enumerate() {
            let id = ShardId::new(i);
            let (tx, rx, bell) = channels.next().expect("one control channel per shard");
            let (ready_tx, ready_rx) = mpsc::channel();
            let cfg = config.clone();
            let picker = picker.clone();
            let reporter = ShardReporter::new(id, &config, obs_tx.clone(), stats[i].clone())
                .with_waker(control_waker.clone());
            let metrics = handles.next().expect("one set of metrics per shard");
            let shard_log = access_log.as_ref().map(AccessLog::shard_log);
            let spawned = std::thread::Builder::new()
                .name(format!("ringlb-shard-{id}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                            tracing::warn!(shard = %id, cpu, "could not pin shard to its cpu");
                        }
                    }
                    let ctx =
                        ShardCtx::new(id, shards, cfg, rx, picker, reporter, metrics, shard_log);
                    shard::run(ctx, listeners, bell, |r| {
                        let _ = ready_tx.send(r);
                    });
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    let server = Server {
                        listen,
                        handle: ShutdownHandle { shards: senders },
                        threads,
                        driver: "",
                        control: None,
                        access_log: None,
                    };
                    drop(server);
                    return Err(StartError::Shard {
                        shard: id,
                        reason: format!("cannot spawn thread: {e}"),
                    });
                }
            }
            senders.push(tx);
            waits.push(ready_rx);
        }
        let mut server = Server {
            listen,
            handle: ShutdownHandle {
                shards: senders.clone(),
            },
            threads,
            driver: "",
            control: None,
            access_log,
        };
        for (i, rx) in waits.into_iter().enumerate() {
            let id = ShardId::new(i);
            match rx.recv() {
                Ok(Ok(driver)) => server.driver = driver,
                Ok(Err(reason)) => return Err(StartError::Shard { shard: id, reason }),
                Err(_) => {
                    return Err(StartError::Shard {
                        shard: id,
                        reason: "shard thread exited during start".into(),
                    })
                }
            }
        }
        drop(obs_tx); // the shards hold the only senders now
        let control = ControlThread::start(ControlSetup {
            config: config.clone(),
            shards: senders,
            observations: obs_rx,
            bell: control_bell,
            waker: control_waker,
            stats,
            admin,
            registry,
            hooks,
        })
        .map_err(|reason| StartError::Control { reason })?;
        server.control = Some(control);
        let admin = server
            .admin_addr()
            .map_or_else(|| "off".to_string(), |a| a.to_string());
        tracing::info!(
            shards = server.threads.len(),
            driver = server.driver,
            listen = ?server.listen,
            admin = %admin,
            "ringlb started"
        );
        Ok(server)
    }

    /// The bound listen addresses (port 0 resolved), in config order.
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listen
    }

    /// A handle that applies new configurations to the running proxy (SIGHUP, `POST
    /// /reload` and the admin API take the same path).
    pub fn reload_handle(&self) -> ReloadHandle {
        self.control
            .as_ref()
            .expect("a started server has a control thread")
            .reload_handle()
    }

    /// Re-reads the configuration file and applies it (what SIGHUP does). `Err`: the reason
    /// it was refused; the running configuration stays.
    pub fn reload(&self) -> Result<ReloadReport, String> {
        self.reload_handle().reload()
    }

    /// Applies `config` as the running configuration (a library user's reload).
    pub fn apply(&self, config: Config) -> Result<ReloadReport, String> {
        self.reload_handle().apply(config)
    }

    /// The access log's handle (reopen, drop counts), when `[log] access` is on.
    pub fn access_log(&self) -> Option<AccessLogHandle> {
        self.access_log.as_ref().map(AccessLog::handle)
    }

    /// The bound admin address (port 0 resolved), or `None` when `server.admin = ""`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.control.as_ref().and_then(|c| c.admin_addr())
    }

    /// Test knob: the control thread stops draining shard observations for `d`.
    #[doc(hidden)]
    pub fn pause_health_observations(&self, d: std::time::Duration) {
        if let Some(c) = &self.control {
            c.pause_observations(d);
        }
    }

    /// Test knob: the control thread panics (its supervision then stops every shard, and
    /// [`Server::wait`] returns false).
    #[doc(hidden)]
    pub fn inject_control_thread_panic(&self) {
        if let Some(c) = &self.control {
            c.inject_panic();
        }
    }

    /// How many shards run.
    pub fn shard_count(&self) -> usize {
        self.handle.shards.len()
    }

    /// The I/O driver the shards run on: `io_uring` or `epoll`.
    pub fn driver(&self) -> &'static str {
        self.driver
    }

    /// A handle that can start the shutdown from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.handle.clone()
    }

    /// Graceful stop: stop accepting, close idle connections, let in-flight requests finish
    /// within `shutdown_timeout`, then join every shard. Returns false if a shard panicked.
    pub fn shutdown(mut self) -> bool {
        self.handle.shutdown();
        self.join()
    }

    /// Waits until every shard has stopped (after someone called a [`ShutdownHandle`]).
    /// Returns false if a shard panicked.
    pub fn wait(mut self) -> bool {
        self.join()
    }

    fn join(&mut self) -> bool {
        let mut clean = true;
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a shard thread panicked");
                clean = false;
            }
        }
        if let Some(mut control) = self.control.take() {
            if !control.stop() {
                tracing::error!("the control thread panicked");
                clean = false;
            }
        }
        // The shards' buffers were handed over when they stopped: write out what is queued.
        if let Some(log) = self.access_log.take() {
            if !log.shutdown() {
                tracing::warn!("the access log writer did not finish in time; lines were lost");
            }
        }
        clean
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.threads.is_empty() || self.control.is_some() || self.access_log.is_some() {
            self.handle.shutdown();
            let _ = self.join();
        }
    }
}

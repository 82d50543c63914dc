//! Starting and stopping the whole proxy: binds every listener, spawns one pinned shard thread
//! per core and the control thread (health checks, admin), and stops them: the shards through
//! their control channels, then the control thread.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;
use crate::health::control::{ControlSetup, ControlThread};
use crate::health::{ShardReporter, ShardStats};
use crate::proxy::Picker;
use crate::shard::{self, ControlMsg, ShardCtx};

/// Capacity of each shard's control channel.
const CONTROL_CAPACITY: usize = 1024;

/// StartError is why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A shard could not start (thread spawn, runtime build, driver unavailable).
    #[error("shard {shard}: {reason}")]
    Shard {
        /// The shard's index.
        shard: usize,
        /// What went wrong.
        reason: String,
    },
    /// The control thread could not start.
    #[error("control thread: {reason}")]
    Control {
        /// What went wrong.
        reason: String,
    },
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
}

/// ShutdownHandle starts a graceful shutdown from anywhere (a signal thread, a test).
#[derive(Clone)]
pub struct ShutdownHandle {
    /// One control sender per shard.
    shards: Vec<Sender<ControlMsg>>,
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
        Server::start_inner(config, None)
    }

    /// Starts the proxy with a custom [`Picker`] deciding each request's upstream group and
    /// hash key instead of the config's routes (see `examples/custom_router.rs`).
    pub fn start_with_picker(
        config: Config,
        picker: Arc<dyn Picker>,
    ) -> Result<Server, StartError> {
        Server::start_inner(config, Some(picker))
    }

    fn start_inner(config: Config, picker: Option<Arc<dyn Picker>>) -> Result<Server, StartError> {
        let config = Arc::new(config);
        let cpus = config.shard_cpus();
        let mut listen = config.server.listen.clone();
        let mut per_shard: Vec<Vec<std::net::TcpListener>> = Vec::with_capacity(cpus.len());
        for _ in 0..cpus.len() {
            let mut listeners = Vec::with_capacity(listen.len());
            for addr in listen.iter_mut() {
                let l = bind_listener(*addr, config.server.backlog).map_err(|source| {
                    StartError::Bind {
                        addr: *addr,
                        source,
                    }
                })?;
                if addr.port() == 0 {
                    // Every later shard binds the port the kernel picked for the first.
                    *addr = l.local_addr().map_err(|source| StartError::Bind {
                        addr: *addr,
                        source,
                    })?;
                }
                listeners.push(l);
            }
            per_shard.push(listeners);
        }

        // The admin listener: one socket (no SO_REUSEPORT: a second process must not share it).
        let admin = match config.server.admin {
            Some(addr) => Some(
                std::net::TcpListener::bind(addr)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .map_err(|source| StartError::Bind { addr, source })?,
            ),
            None => None,
        };
        let (obs_tx, obs_rx) = crossbeam_channel::bounded(config.server.observation_queue);
        let stats: Vec<Arc<ShardStats>> = cpus.iter().map(|_| Arc::default()).collect();

        let mut senders = Vec::with_capacity(cpus.len());
        let mut threads = Vec::with_capacity(cpus.len());
        let mut waits = Vec::with_capacity(cpus.len());
        for (id, (cpu, listeners)) in cpus.iter().copied().zip(per_shard).enumerate() {
            let (tx, rx) = crossbeam_channel::bounded(CONTROL_CAPACITY);
            let (ready_tx, ready_rx) = mpsc::channel();
            let cfg = config.clone();
            let picker = picker.clone();
            let reporter = ShardReporter::new(id, &config, obs_tx.clone(), stats[id].clone());
            let spawned = std::thread::Builder::new()
                .name(format!("ringlb-shard-{id}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                            tracing::warn!(shard = id, cpu, "could not pin shard to its cpu");
                        }
                    }
                    let ctx = ShardCtx::new(id, cfg, rx, picker, reporter);
                    shard::run(ctx, listeners, |r| {
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
        };
        for (id, rx) in waits.into_iter().enumerate() {
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
            stats,
            admin,
        })
        .map_err(|reason| StartError::Control { reason })?;
        server.control = Some(control);
        tracing::info!(
            shards = server.threads.len(),
            driver = server.driver,
            listen = ?server.listen,
            "ringlb started"
        );
        Ok(server)
    }

    /// The bound listen addresses (port 0 resolved), in config order.
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listen
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
        clean
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.threads.is_empty() || self.control.is_some() {
            self.handle.shutdown();
            let _ = self.join();
        }
    }
}

/// Binds one shard's listener: SO_REUSEADDR + SO_REUSEPORT so every shard has its own socket on
/// the same address and the kernel spreads connections across them.
fn bind_listener(addr: SocketAddr, backlog: i32) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // `[::]` serves IPv4 too unless the admin set net.ipv6.bindv6only; be explicit.
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

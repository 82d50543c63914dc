//! One shard: a pinned OS thread with its own monoio runtime, its own SO_REUSEPORT listeners,
//! its own replica of every upstream group (selectors, pool, peer state), and a control channel
//! it drains without blocking.
//!
//! Invariants kept here (1 and 2 of docs/architecture.md): nothing a request touches is shared with another
//! shard; the shard learns about the world only by draining its control channel (`try_recv`)
//! between requests and on a short tick.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::net::{TcpListener, TcpStream};

use monoio::io::Canceller;

use crate::config::{Driver, UringTaskrun};
use crate::control::{Doorbell, ListenChange};
use crate::process::RateLimit;
use crate::proxy::{self, ShardCtx};

mod dormant;
mod tls;

/// How often a shard drains its control channel when no request does it first.
pub const CONTROL_TICK: Duration = Duration::from_millis(5);

/// The longest an idle shard sleeps when nothing (pooled connections, an access log) needs a
/// periodic look; control messages wake it at once.
const IDLE_WAIT: Duration = Duration::from_secs(60);

/// How often a shard closes expired idle upstream connections.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// The first pause of an accept loop after an accept failed for lack of resources (file
/// descriptors, kernel memory); each further failure in a row doubles it, up to
/// [`ACCEPT_BACKOFF_MAX`]. A closing connection of the shard ends the pause early (it freed a
/// descriptor), as nginx re-enables accepting when a connection is freed.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// The longest pause of an accept loop that keeps failing for lack of resources.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// The pause after any other accept failure.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

/// Shard is one running shard: the context its connections share (owned by the proxy, which
/// is what a connection sees) and the counts only the shard's own loops need.
struct Shard {
    /// What every connection of this shard shares; also drains the control channel.
    ctx: ShardCtx,
    /// Open downstream connections.
    connections: Cell<usize>,
    /// Parked plain-TCP connections kept with no task.
    dormant: dormant::Dormant,
    /// Accept loops still running (they end at shutdown, dropping their listeners).
    accept_loops: Cell<usize>,
    /// What stops each accept loop, by the listen address as configured.
    accepts: RefCell<Vec<(SocketAddr, Rc<AcceptStop>)>>,
}

/// AcceptStop ends one accept loop: at shutdown, or when a reload removed its address (then
/// the connections already queued on the socket are served before it closes).
#[derive(Default)]
struct AcceptStop {
    /// Its address was removed from `server.listen`.
    closing: Cell<bool>,
    /// Cancels the loop's pending accept.
    canceller: RefCell<Canceller>,
}

impl AcceptStop {
    fn stop(&self, closing: bool) {
        self.closing.set(self.closing.get() || closing);
        let old = std::mem::take(&mut *self.canceller.borrow_mut());
        *self.canceller.borrow_mut() = old.cancel();
    }
}

impl Shard {
    fn new(ctx: ShardCtx) -> Shard {
        Shard {
            dormant: dormant::Dormant::new(ctx.metrics.clone()),
            ctx,
            connections: Cell::new(0),
            accept_loops: Cell::new(0),
            accepts: RefCell::new(Vec::new()),
        }
    }
}

/// Counts one open connection; dropping it (even when the task is dropped) uncounts it.
struct ConnGuard(Rc<Shard>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.connections.set(self.0.connections.get() - 1);
        self.0.ctx.metrics.connections_active.dec();
        self.0.ctx.changed().notify_all();
    }
}

/// Counts one running accept loop; dropping it uncounts it.
struct AcceptLoopGuard(Rc<Shard>);

impl Drop for AcceptLoopGuard {
    fn drop(&mut self) {
        self.0.accept_loops.set(self.0.accept_loops.get() - 1);
        self.0.ctx.changed().notify_all();
    }
}

/// Marks an accepted socket close-on-exec. io_uring's accept (as monoio submits it) takes no
/// `SOCK_CLOEXEC`, so without this every client socket would be inherited by any process the
/// embedding application (or a test) starts meanwhile, and a connection ringlb closes would
/// stay open in the child until it exits.
fn close_on_exec(stream: &monoio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl(2) on the open socket `stream` owns; it changes no memory of ours.
    unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
}

/// How long a stopping shard waits for its accept loops to end and its sockets to close.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Runs one shard on the current thread until it has shut down.
///
/// `ready` is called once the runtime is built (with the driver's name), or with the reason it
/// could not be built.
pub fn run(
    ctx: ShardCtx,
    listeners: Vec<std::net::TcpListener>,
    bell: Doorbell,
    ready: impl FnOnce(Result<&'static str, String>),
) {
    let entries = ctx.config().server.uring_entries;
    let uring = match ctx.config().server.driver {
        Driver::Epoll => false,
        Driver::Auto => monoio::utils::detect_uring(),
        Driver::IoUring => {
            if !monoio::utils::detect_uring() {
                ready(Err(
                    "driver = \"io_uring\" but io_uring is not available here \
                     (kernel.io_uring_disabled, seccomp, memlock limit or an old kernel)"
                        .to_string(),
                ));
                return;
            }
            true
        }
    };
    if !uring {
        match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
        {
            Ok(mut rt) => {
                ready(Ok("epoll"));
                rt.block_on(shard_main(Rc::new(Shard::new(ctx)), listeners, bell));
            }
            Err(e) => ready(Err(format!("cannot build the epoll runtime: {e}"))),
        }
        return;
    }
    // Try the configured task-run mode, then weaker ones if this kernel rejects its flags.
    let modes = [
        UringTaskrun::Defer,
        UringTaskrun::Coop,
        UringTaskrun::Interrupt,
    ];
    let wanted = ctx.config().server.uring_taskrun;
    let first = modes.iter().position(|&m| m == wanted).unwrap_or(0);
    let mut last_err = String::new();
    for &mode in &modes[first..] {
        match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(entries)
            .uring_builder(uring_builder(mode))
            .enable_timer()
            .build()
        {
            Ok(mut rt) => {
                if mode != wanted {
                    tracing::warn!(
                        shard = %ctx.id,
                        "uring_taskrun = \"{}\" rejected by the kernel ({last_err}); using \"{}\"",
                        wanted.name(),
                        mode.name()
                    );
                }
                ready(Ok("io_uring"));
                rt.block_on(shard_main(Rc::new(Shard::new(ctx)), listeners, bell));
                return;
            }
            Err(e) => last_err = e.to_string(),
        }
    }
    ready(Err(format!(
        "cannot build the io_uring runtime: {last_err}"
    )));
}

/// The io_uring setup flags for a task-run mode (see [`UringTaskrun`]).
fn uring_builder(mode: UringTaskrun) -> io_uring::Builder {
    let mut b = io_uring::IoUring::builder();
    match mode {
        UringTaskrun::Defer => {
            b.setup_coop_taskrun()
                .setup_taskrun_flag()
                .setup_single_issuer()
                .setup_defer_taskrun();
        }
        UringTaskrun::Coop => {
            b.setup_coop_taskrun().setup_taskrun_flag();
        }
        UringTaskrun::Interrupt => {}
    }
    b
}

/// Starts accepting on `listener` (configured as `addr`).
fn start_accept(shard: &Rc<Shard>, addr: SocketAddr, listener: std::net::TcpListener) {
    match TcpListener::from_std(listener) {
        Ok(l) => {
            let stop = Rc::new(AcceptStop::default());
            shard.accepts.borrow_mut().push((addr, stop.clone()));
            shard.accept_loops.set(shard.accept_loops.get() + 1);
            monoio::spawn(accept_loop(AcceptLoopGuard(shard.clone()), l, addr, stop));
        }
        Err(e) => tracing::error!(shard = %shard.ctx.id, "cannot register listener {addr}: {e}"),
    }
}

/// Applies a reload's listener change: new sockets start accepting, removed addresses stop.
fn apply_listen(shard: &Rc<Shard>, change: ListenChange) {
    for (addr, l) in change.open {
        tracing::info!(shard = %shard.ctx.id, "listening on {addr} (reload)");
        start_accept(shard, addr, l);
    }
    for addr in change.close {
        shard.accepts.borrow_mut().retain(|(a, stop)| {
            if *a == addr {
                stop.stop(true);
            }
            *a != addr
        });
    }
    // An accept loop waiting for a free connection slot learns it is closing.
    shard.ctx.changed().notify_all();
}

async fn shard_main(shard: Rc<Shard>, listeners: Vec<std::net::TcpListener>, bell: Doorbell) {
    let ctx = &shard.ctx;
    let mut bell = match bell.register() {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!(shard = %ctx.id, "cannot register the control doorbell ({e}): polling");
            None
        }
    };
    // The parked connections' one timer (it ends at shutdown).
    let reaper = shard.clone();
    monoio::spawn(async move {
        let ctx = &reaper.ctx;
        ctx.parking.run(|| ctx.drop_spares()).await
    });
    // The dormant connections' task (it ends at shutdown).
    monoio::spawn(dormant::run(shard.clone()));
    let configured = ctx.config().server.listen.clone();
    for (addr, l) in configured.into_iter().zip(listeners) {
        start_accept(&shard, addr, l);
    }
    let mut last_reap = Instant::now();
    loop {
        ctx.drain_control();
        for change in ctx.take_listen_changes() {
            apply_listen(&shard, change);
        }
        if ctx.is_shutting_down() {
            for (_, stop) in shard.accepts.borrow_mut().drain(..) {
                stop.stop(false);
            }
            shard.dormant.close();
            break;
        }
        // Woken by a control message; else a tick: every 5 ms while an access log has lines to
        // hand over, once a second while idle pooled connections need the sweep, and otherwise
        // only rarely (an idle shard sleeps).
        let wait = if ctx.access_log.is_some() {
            CONTROL_TICK
        } else if ctx.live().groups.iter().any(|g| !g.pool.is_empty()) {
            REAP_EVERY
        } else {
            IDLE_WAIT
        };
        match bell.as_mut() {
            Some(b) => {
                b.wait(wait).await;
            }
            None => monoio::time::sleep(CONTROL_TICK).await,
        }
        if let Some(log) = &ctx.access_log {
            log.flush();
        }
        let now = Instant::now();
        if now.duration_since(last_reap) >= REAP_EVERY {
            last_reap = now;
            for g in &ctx.live().groups {
                g.reap_idle(now);
            }
        }
    }
    // Drain: in-flight requests finish (their connections close afterwards), bounded.
    let deadline = Instant::now() + ctx.config().server.shutdown_timeout;
    for g in &ctx.live().groups {
        g.pool.clear();
    }
    while shard.connections.get() > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            tracing::warn!(
                shard = %ctx.id,
                open = shard.connections.get(),
                "shutdown timeout: closing connections still open"
            );
            break;
        }
        let _ = monoio::time::timeout(left, ctx.changed().notified()).await;
    }
    // Tunnels (upgraded connections) have no request to finish: they ran for the whole drain
    // time and close now; give their tasks a moment to drop their sockets.
    ctx.end_tunnels();
    let deadline = Instant::now() + CLOSE_WAIT;
    while shard.connections.get() > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let _ = monoio::time::timeout(left, ctx.changed().notified()).await;
    }
    // The listeners must close before the runtime goes away: the accept loops drop them once
    // their cancelled accept returns, and io_uring closes a dropped socket with a queued close
    // operation that only the next turn of the event loop submits. Without both, an embedding
    // process keeps the listen sockets (still completing handshakes into their backlog).
    let deadline = Instant::now() + CLOSE_WAIT;
    while shard.accept_loops.get() > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let _ = monoio::time::timeout(left, ctx.changed().notified()).await;
    }
    monoio::time::sleep(Duration::from_millis(1)).await;
}

/// Accepts connections on `listener` until shutdown. (Parameters drop in reverse order:
/// `listener` closes before `guard` tells the shard this loop is done.)
async fn accept_loop(
    guard: AcceptLoopGuard,
    listener: TcpListener,
    local: SocketAddr,
    stop: Rc<AcceptStop>,
) {
    let shard = &guard.0;
    let ctx = &shard.ctx;
    let max = ctx.config().server.max_connections;
    // One warning per second at most: when descriptors run out, every pending connection
    // fails its accept again and again.
    let warnings = RateLimit::per_second();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        while shard.connections.get() >= max && !ctx.is_shutting_down() && !stop.closing.get() {
            ctx.changed().notified().await;
        }
        if stop.closing.get() {
            serve_queued(shard, &listener, local);
            return;
        }
        if ctx.is_shutting_down() {
            return;
        }
        let handle = stop.canceller.borrow().handle();
        match listener.cancelable_accept(handle).await {
            Ok((stream, addr)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                close_on_exec(&stream);
                shard.connections.set(shard.connections.get() + 1);
                ctx.metrics.connections_accepted.inc();
                ctx.metrics.connections_active.inc();
                let guard = ConnGuard(shard.clone());
                spawn_conn(guard, stream, addr, local);
            }
            Err(e) => {
                if stop.closing.get() {
                    serve_queued(shard, &listener, local);
                    return;
                }
                if ctx.is_shutting_down() {
                    return;
                }
                match AcceptFailure::of(&e) {
                    AcceptFailure::Gone => {
                        tracing::debug!(shard = %ctx.id, "accept: {e}");
                    }
                    AcceptFailure::Exhausted(what) => {
                        if let Some(suppressed) = warnings.check(Instant::now()) {
                            tracing::warn!(
                                shard = %ctx.id,
                                "accept failed: {e}: {what}; pausing accepts until a \
                                 connection closes (at most {} ms){suppressed}",
                                backoff.as_millis()
                            );
                        }
                        // Do not spin: the pending connection fails the same way until a
                        // descriptor is free. Wait for one of ours to close, or a while.
                        let _ = monoio::time::timeout(backoff, ctx.changed().notified()).await;
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    }
                    AcceptFailure::Other => {
                        if let Some(suppressed) = warnings.check(Instant::now()) {
                            tracing::warn!(shard = %ctx.id, "accept failed: {e}{suppressed}");
                        }
                        monoio::time::sleep(ACCEPT_RETRY).await;
                    }
                }
            }
        }
    }
}

/// AcceptFailure is what a failed accept means for the accept loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptFailure {
    /// The connection was gone (aborted by the client) or the call interrupted: accept the
    /// next one at once.
    Gone,
    /// Out of a resource (EMFILE, ENFILE, ENOBUFS, ENOMEM): back off; the text says which.
    Exhausted(&'static str),
    /// Anything else: log it and retry shortly.
    Other,
}

impl AcceptFailure {
    fn of(e: &std::io::Error) -> AcceptFailure {
        match e.raw_os_error() {
            Some(libc::ECONNABORTED | libc::EPROTO | libc::EINTR) => AcceptFailure::Gone,
            Some(libc::EMFILE) => AcceptFailure::Exhausted(
                "the process's open-files limit is reached (ulimit -n, systemd LimitNOFILE)",
            ),
            Some(libc::ENFILE) => {
                AcceptFailure::Exhausted("the system's open-files limit is reached (fs.file-max)")
            }
            Some(libc::ENOBUFS | libc::ENOMEM) => {
                AcceptFailure::Exhausted("the kernel is out of socket memory")
            }
            _ => AcceptFailure::Other,
        }
    }
}

/// Accepts and serves every connection already queued on a listener that is about to close
/// (its address was removed by a reload), so that closing it resets none of them.
fn serve_queued(shard: &Rc<Shard>, listener: &TcpListener, local: SocketAddr) {
    let fd = listener.as_raw_fd();
    // SAFETY: `fd` is the open listening socket owned by `listener`; fcntl(2) and accept4(2)
    // change no memory of ours (null address pointers), and each accepted descriptor is owned
    // by exactly one `std::net::TcpStream` from here on.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return;
        }
    }
    let mut served = 0usize;
    loop {
        // SAFETY: see above.
        let conn = unsafe {
            libc::accept4(
                fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            )
        };
        if conn < 0 {
            break;
        }
        // SAFETY: `conn` is a new descriptor nothing else owns.
        let std_stream = unsafe { std::net::TcpStream::from_raw_fd(conn) };
        let Ok(addr) = std_stream.peer_addr() else {
            continue;
        };
        let Ok(stream) = TcpStream::from_std(std_stream) else {
            continue;
        };
        served += 1;
        shard.connections.set(shard.connections.get() + 1);
        shard.ctx.metrics.connections_accepted.inc();
        shard.ctx.metrics.connections_active.inc();
        spawn_conn(ConnGuard(shard.clone()), stream, addr, local);
    }
    tracing::info!(
        shard = %shard.ctx.id,
        served,
        "stopped listening on a removed address; queued connections served"
    );
}

/// Spawns the task serving one accepted connection (from the listener configured as
/// `local`): over TLS when the current generation has TLS on that listener (`tls.rs`), else
/// plain. (The plain task is `proxy::serve` itself, with no async wrapper: the wrapper's
/// copy of the arguments would be kept in every idle connection's task.)
fn spawn_conn(guard: ConnGuard, stream: TcpStream, addr: SocketAddr, local: SocketAddr) {
    // On unless the listener's `tcp.nodelay = false` (which the connection inherited).
    if guard.0.ctx.config().server.tcp.nodelay != Some(false) {
        let _ = stream.set_nodelay(true);
    }
    let live = guard.0.ctx.live();
    match live.tls.listener(local) {
        Some(config) => {
            let config = config.clone();
            let timeout = live.config.timeouts.request_header;
            drop(live);
            monoio::spawn(async move {
                tls::serve_tls(&guard.0.ctx, config, stream, addr, timeout).await;
            });
        }
        None if live.config.server.http1_off.contains(&local) => {
            // HTTP/2 only: the preface, or a close; no HTTP/1.1 parse.
            drop(live);
            monoio::spawn(async move {
                proxy::h2::serve_prior_knowledge(&guard, stream, addr).await;
            });
        }
        None if live.config.server.h2_off.contains(&local) => {
            drop(live);
            monoio::spawn(proxy::serve(guard, crate::io::Http1Only(stream), addr));
        }
        None => {
            drop(live);
            monoio::spawn(proxy::serve(guard, stream, addr));
        }
    }
}

impl std::ops::Deref for ConnGuard {
    type Target = ShardCtx;

    fn deref(&self) -> &ShardCtx {
        &self.0.ctx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_are_classified_by_errno() {
        let of = |errno| AcceptFailure::of(&std::io::Error::from_raw_os_error(errno));
        assert_eq!(of(libc::ECONNABORTED), AcceptFailure::Gone);
        assert_eq!(of(libc::EINTR), AcceptFailure::Gone);
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(
                matches!(of(errno), AcceptFailure::Exhausted(_)),
                "errno {errno}"
            );
        }
        assert_eq!(of(libc::EINVAL), AcceptFailure::Other);
        assert_eq!(
            AcceptFailure::of(&std::io::Error::other("no errno")),
            AcceptFailure::Other
        );
    }
}

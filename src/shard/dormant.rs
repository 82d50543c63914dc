//! Dormant connections: parked plain-TCP client connections kept with no task at all.
//!
//! A parked connection in its own task costs the task (its future, some 380 bytes, and
//! monoio's header), the socket's shared record and a poll operation in flight. A dormant one
//! costs a slot here (its descriptor, peer address, deadlines and the connection's guard:
//! about 80 bytes) and an entry in the deadline set: the socket itself waits in one epoll
//! instance per shard (`EPOLLIN | EPOLLRDHUP | EPOLLONESHOT`, the slot in the event data),
//! and the epoll instance waits in the shard's ring like any socket (one `POLL_ADD`). When
//! it reports a socket readable, the slot is emptied and a new task serves the connection
//! from where it parked ([`proxy::serve_woken`]); when a deadline passes first, the socket
//! is closed. Shutdown closes every dormant connection at once. One task per shard ([`run`])
//! does all of it; with nobody dormant it sleeps until someone rests.
//!
//! The epoll instance is the readiness source rather than a `POLL_ADD` per socket because an
//! operation in flight needs its owner (a task) to outlive it, which is what resting saves.
//! nginx keeps idle connections the same way, in an epoll set with a small record each.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use monoio::net::TcpStream;

use super::{ConnGuard, Shard};
use crate::control::Notify;
use crate::metrics::ShardMetrics;
use crate::proxy;

/// Events harvested per `epoll_wait`.
const BATCH: usize = 64;

/// Dormant is one shard's set of dormant connections (see the module docs).
pub(super) struct Dormant {
    /// The epoll instance the dormant sockets wait in; `None` when it could not be made (then
    /// connections park in their tasks).
    epoll: Option<OwnedFd>,
    /// Slots by index; a free slot has no guard.
    slots: RefCell<Vec<Slot>>,
    /// Free slot indices.
    free: RefCell<Vec<u32>>,
    /// Dormant connections by (deadline, slot).
    deadlines: RefCell<BTreeSet<(Instant, u32)>>,
    /// Wakes [`run`] when an earlier deadline is filed, or at close.
    changed: Notify,
    /// Set at shutdown: nothing rests from then on.
    closed: Cell<bool>,
    /// The shard's metrics (`ringlb_downstream_connections_dormant`).
    metrics: Arc<ShardMetrics>,
}

/// Slot is one dormant connection.
struct Slot {
    /// The socket, owned (closed when the slot is emptied without waking); -1 when free.
    fd: RawFd,
    /// Bumped every time the slot is filled, so a stale event for an earlier occupant is
    /// ignored.
    generation: u32,
    /// The client's address.
    addr: SocketAddr,
    /// The first request's head deadline, while no request has begun.
    first: Option<Instant>,
    /// When the connection closes unless it becomes readable.
    until: Instant,
    /// Keeps the connection counted while it rests; `None`: free slot.
    guard: Option<ConnGuard>,
}

impl Dormant {
    /// A set with its epoll instance; without one (the kernel refused), every rest is refused.
    pub(super) fn new(metrics: Arc<ShardMetrics>) -> Dormant {
        // SAFETY: epoll_create1 takes no pointers; a valid descriptor is owned from here on.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        let epoll = if fd >= 0 {
            // SAFETY: `fd` was just created and is owned by nobody else.
            Some(unsafe { OwnedFd::from_raw_fd(fd) })
        } else {
            tracing::warn!(
                "epoll_create1: {}: parked connections keep their tasks",
                io::Error::last_os_error()
            );
            None
        };
        Dormant {
            epoll,
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            deadlines: RefCell::new(BTreeSet::new()),
            changed: Notify::default(),
            closed: Cell::new(false),
            metrics,
        }
    }

    /// Takes `stream` (with its `guard`) into the set; gives the stream back if it cannot
    /// (shutdown began, no epoll instance, the kernel refused the registration).
    pub(super) fn rest(
        &self,
        guard: &mut Option<ConnGuard>,
        stream: TcpStream,
        addr: SocketAddr,
        first: Option<Instant>,
        until: Instant,
    ) -> Result<(), TcpStream> {
        let Some(epoll) = &self.epoll else {
            return Err(stream);
        };
        if self.closed.get() || guard.is_none() {
            return Err(stream);
        }
        let index = match self.free.borrow_mut().pop() {
            Some(i) => i,
            None => {
                let mut slots = self.slots.borrow_mut();
                let Ok(i) = u32::try_from(slots.len()) else {
                    return Err(stream);
                };
                slots.push(Slot {
                    fd: -1,
                    generation: 0,
                    addr,
                    first: None,
                    until,
                    guard: None,
                });
                i
            }
        };
        let generation = {
            let slots = self.slots.borrow();
            slots[index as usize].generation.wrapping_add(1)
        };
        let fd = stream.as_raw_fd();
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: (u64::from(generation) << 32) | u64::from(index),
        };
        // A socket that rested before is still in the set (disarmed): re-arm it. A new one
        // (or a descriptor number reused by a new socket after a close, which left the set
        // with the close) is added.
        // SAFETY: `epoll` and `fd` are open descriptors; `ev` outlives the calls.
        let ok = unsafe {
            libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_MOD, fd, &mut ev) == 0
                || libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) == 0
        };
        if !ok {
            tracing::debug!(
                "epoll_ctl: {}: the connection parks in its task",
                io::Error::last_os_error()
            );
            self.free.borrow_mut().push(index);
            return Err(stream);
        }
        // The stream's shared record is ours alone once its awake stretch ended (no operation
        // is in flight); monoio panics otherwise, and then the connection is dropped rather
        // than the shard.
        let raw =
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stream.into_raw_fd())) {
                Ok(raw) => raw,
                Err(_) => {
                    self.free.borrow_mut().push(index);
                    return Ok(());
                }
            };
        {
            let mut slots = self.slots.borrow_mut();
            let slot = &mut slots[index as usize];
            *slot = Slot {
                fd: raw,
                generation,
                addr,
                first,
                until,
                guard: guard.take(),
            };
        }
        let mut deadlines = self.deadlines.borrow_mut();
        let earliest = deadlines.first().is_none_or(|&(t, _)| until < t);
        deadlines.insert((until, index));
        drop(deadlines);
        self.metrics.connections_dormant.inc();
        if earliest {
            self.changed.notify_all();
        }
        Ok(())
    }

    /// Empties slot `index`: its socket, address, first-head deadline and guard.
    fn take(&self, index: u32) -> Option<(RawFd, SocketAddr, Option<Instant>, ConnGuard)> {
        let mut slots = self.slots.borrow_mut();
        let slot = slots.get_mut(index as usize)?;
        let guard = slot.guard.take()?;
        let fd = std::mem::replace(&mut slot.fd, -1);
        self.deadlines.borrow_mut().remove(&(slot.until, index));
        self.free.borrow_mut().push(index);
        self.metrics.connections_dormant.dec();
        Some((fd, slot.addr, slot.first, guard))
    }

    /// Empties every occupied slot (shutdown, or the epoll instance broke).
    fn take_all(&self) -> Vec<(RawFd, SocketAddr, Option<Instant>, ConnGuard)> {
        let indices: Vec<u32> = self.deadlines.borrow().iter().map(|&(_, i)| i).collect();
        indices.into_iter().filter_map(|i| self.take(i)).collect()
    }

    /// Serves the dormant connections the epoll instance reports readable, one batch of at
    /// most [`BATCH`]: when more are ready, the epoll instance stays readable and [`run`]
    /// takes the next batch on its next turn, after the ring's other completions (responses
    /// of requests in flight) had theirs. Draining every ready connection at once would let
    /// a crowd that turns readable together (10 000 clients) put all its requests in flight
    /// at the same time, each on an upstream connection of its own.
    fn wake_ready(&self) {
        let Some(epoll) = &self.epoll else { return };
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
        // SAFETY: `events` has room for BATCH entries; timeout 0 never blocks.
        let n =
            unsafe { libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), BATCH as i32, 0) };
        for ev in &events[..n.max(0) as usize] {
            let data = ev.u64;
            let (index, generation) = (data as u32, (data >> 32) as u32);
            let current = self
                .slots
                .borrow()
                .get(index as usize)
                .is_some_and(|s| s.guard.is_some() && s.generation == generation);
            if !current {
                continue;
            }
            if let Some((fd, addr, first, guard)) = self.take(index) {
                wake(fd, addr, first, guard);
            }
        }
    }

    /// Closes every dormant connection whose deadline passed by `now`; returns the next
    /// deadline.
    fn reap(&self, now: Instant) -> Option<Instant> {
        loop {
            let next = self.deadlines.borrow().first().copied();
            match next {
                Some((t, index)) if t <= now => {
                    if let Some((fd, ..)) = self.take(index) {
                        // SAFETY: the slot owned `fd`; it is closed once, here.
                        drop(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
                other => return other.map(|(t, _)| t),
            }
        }
    }

    /// Closes every dormant connection and refuses new ones (shutdown).
    pub(super) fn close(&self) {
        if self.closed.replace(true) {
            return;
        }
        for (fd, ..) in self.take_all() {
            // SAFETY: as in `reap`.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        self.changed.notify_all();
    }
}

/// Starts serving a woken dormant connection in a new task.
fn wake(fd: RawFd, addr: SocketAddr, first: Option<Instant>, guard: ConnGuard) {
    // SAFETY: the slot owned `fd`, an open TCP socket; ownership moves to the stream.
    let std_stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    match TcpStream::from_std(std_stream) {
        Ok(stream) => {
            monoio::spawn(proxy::serve_woken(guard, stream, addr, first));
        }
        Err(e) => tracing::debug!("cannot take a woken connection back: {e}"),
    }
}

/// The shard's dormant-set task: waits for the epoll instance to be readable, the earliest
/// deadline, or a change; ends at close.
pub(super) async fn run(shard: Rc<Shard>) {
    let dormant = &shard.dormant;
    let Some(epoll) = &dormant.epoll else { return };
    // The epoll instance waits in the ring through a stream wrapper of a duplicate of its
    // descriptor (the wrapper closes the duplicate; only readiness is ever asked of it).
    // SAFETY: dup takes no pointers; the duplicate is owned by the wrapper from here on.
    let dup = unsafe { libc::fcntl(epoll.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        tracing::warn!("dup epoll: {}", io::Error::last_os_error());
        dormant.epoll_broken();
        return;
    }
    // SAFETY: `dup` is a fresh descriptor nobody else owns.
    let std_ready = unsafe { std::os::unix::net::UnixStream::from_raw_fd(dup) };
    let ready = match monoio::net::UnixStream::from_std(std_ready) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("cannot wait on the epoll instance: {e}");
            dormant.epoll_broken();
            return;
        }
    };
    while !dormant.closed.get() {
        let next = dormant.reap(Instant::now());
        let changed = dormant.changed.notified();
        let sleep = async {
            match next {
                Some(t) => monoio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        monoio::select! {
            r = ready.readable(false) => {
                if r.is_err() {
                    dormant.epoll_broken();
                    return;
                }
                dormant.wake_ready();
            }
            _ = sleep => {}
            _ = changed => {}
        }
    }
}

impl Dormant {
    /// The epoll instance cannot be waited on: wake every dormant connection (each then
    /// parks in its own task, since rest is refused from now on).
    fn epoll_broken(&self) {
        if self.closed.replace(true) {
            return;
        }
        for (fd, addr, first, guard) in self.take_all() {
            wake(fd, addr, first, guard);
        }
    }
}

impl Drop for Dormant {
    fn drop(&mut self) {
        for slot in self.slots.get_mut().iter_mut() {
            if slot.guard.is_some() && slot.fd >= 0 {
                // SAFETY: the slot owns `fd`; closed once, here.
                drop(unsafe { OwnedFd::from_raw_fd(slot.fd) });
            }
        }
    }
}

impl proxy::Rest for ConnGuard {
    fn rest<C: crate::io::Transport>(
        self,
        io: C,
        addr: SocketAddr,
        first: Option<Instant>,
        until: Instant,
    ) -> Result<(), (Self, C)> {
        let shard = self.0.clone();
        let mut guard = Some(self);
        let rested = io.rest_tcp(|tcp| shard.dormant.rest(&mut guard, tcp, addr, first, until));
        match (rested, guard) {
            (Ok(()), _) => Ok(()),
            (Err(io), Some(guard)) => Err((guard, io)),
            // Unreachable: the set takes the guard only when it takes the stream.
            (Err(_), None) => Ok(()),
        }
    }
}

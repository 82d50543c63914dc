//! The per-shard, per-peer pool of idle upstream connections.
//!
//! LIFO: the most recently used connection is reused first (it is the least likely to have been
//! closed by the peer, and it keeps the others idle long enough to expire). Expired connections
//! are dropped when met and by [`Pool::reap`], which the shard calls periodically.
//!
//! An idle connection must say nothing: a peer that closed it (FIN or RST, e.g. its keep-alive
//! timeout ran out) or wrote to it unasked (a stray or smuggled response, which would reach the
//! next client that reuses it) is unusable. [`Pool::take`] checks every connection it hands out
//! with one non-blocking `MSG_PEEK` ([`is_quiet`]), so such a connection is closed instead of
//! costing a request; [`Pool::reap`] runs the same check over every idle connection.
//!
//! Each peer has its own settings (the upstream's `pool` with the peer's overrides). A peer
//! with `max_requests_per_conn` or `max_conn_age_ms` has its connections rotate: the pool
//! knows when each was opened ([`Pool::opened`]) and how many requests it served (counted at
//! every return), also while a request uses it (a table by file descriptor, entered at the
//! connect and at every take), and closes one that reached either limit instead of keeping
//! it. Peers without these limits pay nothing for them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use monoio::net::TcpStream;

use crate::balance::PeerId;
use crate::config::PoolConfig;

pub use super::connection::Connection;

/// PooledConn is an idle upstream connection and when it became idle.
pub struct PooledConn {
    /// The connection.
    pub stream: Connection,
    /// When it was returned to the pool.
    pub idle_since: Instant,
    /// When it was opened and how many requests it served (peers with rotation limits).
    life: Option<Life>,
}

/// Life is what the rotation limits look at: when a connection was opened, how many
/// requests it served.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Life {
    /// When it was opened.
    born: Instant,
    /// Requests it served.
    uses: u64,
}

/// Pool is one group's idle connections in one shard, per peer.
pub struct Pool {
    /// Idle connections per peer, most recent last.
    idle: RefCell<Vec<Vec<PooledConn>>>,
    /// Each peer's settings (index = `PeerId`); a missing entry reads as `fallback`.
    cfgs: Vec<PoolConfig>,
    /// The settings of a peer without an entry in `cfgs`.
    fallback: PoolConfig,
    /// The lives of connections in use, by file descriptor (peers with rotation limits only).
    lent: RefCell<HashMap<RawFd, Life>>,
}

impl Pool {
    /// Creates an empty pool for `peers` peers.
    pub fn new(peers: usize, cfg: PoolConfig) -> Self {
        Pool::per_peer(vec![cfg; peers], cfg)
    }

    /// Creates an empty pool with settings per peer (`cfgs[id]` for peer `id`; `fallback`
    /// for one beyond).
    pub fn per_peer(cfgs: Vec<PoolConfig>, fallback: PoolConfig) -> Self {
        Pool {
            idle: RefCell::new((0..cfgs.len()).map(|_| Vec::new()).collect()),
            cfgs,
            fallback,
            lent: RefCell::new(HashMap::new()),
        }
    }

    /// The settings of `peer`.
    #[inline]
    fn cfg(&self, peer: usize) -> &PoolConfig {
        self.cfgs.get(peer).unwrap_or(&self.fallback)
    }

    /// Whether `peer`'s connections rotate (`max_requests_per_conn`, `max_conn_age_ms`).
    #[inline]
    fn rotates(&self, peer: usize) -> bool {
        let c = self.cfg(peer);
        c.max_requests_per_conn.is_some() || c.max_conn_age.is_some()
    }

    /// Notes that `stream` to `peer` was just opened (its age counts from `now`).
    pub fn opened(&self, peer: PeerId, stream: &impl AsRawFd, now: Instant) {
        if self.rotates(peer.index()) {
            self.lent
                .borrow_mut()
                .insert(stream.as_raw_fd(), Life { born: now, uses: 0 });
        }
    }

    /// How long a connection to `peer` may stay idle (its `pool.idle_timeout_ms`).
    pub fn idle_timeout(&self, peer: PeerId) -> std::time::Duration {
        self.cfg(peer.index()).idle_timeout
    }

    /// Takes the most recent idle connection to `peer` that has not expired and is still
    /// quiet ([`is_quiet`]); the expired and dead ones met on the way are closed.
    pub fn take(&self, peer: PeerId, now: Instant) -> Option<Connection> {
        let idle_timeout = self.cfg(peer.index()).idle_timeout;
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(peer.index())?;
        while let Some(conn) = list.pop() {
            if now.saturating_duration_since(conn.idle_since) < idle_timeout
                && conn.stream.is_quiet()
            {
                if let Some(life) = conn.life {
                    self.lent.borrow_mut().insert(conn.stream.as_raw_fd(), life);
                }
                return Some(conn.stream);
            }
        }
        None
    }

    /// Returns a reusable connection to the pool (dropped when the peer's list is full, or
    /// when it reached `max_requests_per_conn` or `max_conn_age_ms`).
    pub fn put(&self, peer: PeerId, stream: impl Into<Connection>, now: Instant) {
        let stream = stream.into();
        let cfg = *self.cfg(peer.index());
        let life = if self.rotates(peer.index()) {
            let mut life = self
                .lent
                .borrow_mut()
                .remove(&stream.as_raw_fd())
                .unwrap_or(Life { born: now, uses: 0 });
            life.uses += 1;
            let worn = cfg.max_requests_per_conn.is_some_and(|m| life.uses >= m)
                || cfg
                    .max_conn_age
                    .is_some_and(|a| now.saturating_duration_since(life.born) >= a);
            if worn {
                return; // closed: the next request opens a fresh one
            }
            Some(life)
        } else {
            None
        };
        let mut idle = self.idle.borrow_mut();
        if let Some(list) = idle.get_mut(peer.index()) {
            if list.len() < cfg.max_idle_per_peer {
                list.push(PooledConn {
                    stream,
                    idle_since: now,
                    life,
                });
            }
        }
    }

    /// Hands the life of a connection in use over to pool `to` (it returns there after a
    /// reload).
    pub(crate) fn hand_over(&self, stream: &Connection, to: &Pool) {
        if let Some(life) = self.lent.borrow_mut().remove(&stream.as_raw_fd()) {
            to.lent.borrow_mut().insert(stream.as_raw_fd(), life);
        }
    }

    /// Closes every idle connection that expired or is no longer quiet; returns how many.
    pub fn reap(&self, now: Instant) -> usize {
        let mut idle = self.idle.borrow_mut();
        let mut closed = 0;
        for (peer, list) in idle.iter_mut().enumerate() {
            let idle_timeout = self.cfg(peer).idle_timeout;
            let before = list.len();
            list.retain(|c| {
                now.saturating_duration_since(c.idle_since) < idle_timeout && c.stream.is_quiet()
            });
            closed += before - list.len();
        }
        closed
    }

    /// Closes every idle connection (shutdown).
    pub fn clear(&self) {
        self.idle.borrow_mut().iter_mut().for_each(Vec::clear);
    }

    /// Moves the idle connections of `from_peer` in pool `from` into this pool's `peer`
    /// (up to `max_idle_per_peer`; the rest close): how a rebuilt group keeps the warm
    /// connections of the peers that stayed.
    pub fn adopt(&self, peer: PeerId, from: &Pool, from_peer: PeerId) {
        let moved = match from.idle.borrow_mut().get_mut(from_peer.index()) {
            Some(list) => std::mem::take(list),
            None => return,
        };
        let max_idle = self.cfg(peer.index()).max_idle_per_peer;
        let mut idle = self.idle.borrow_mut();
        if let Some(list) = idle.get_mut(peer.index()) {
            list.extend(moved);
            let excess = list.len().saturating_sub(max_idle);
            // Keep the most recent ones (the end of the list).
            list.drain(..excess);
        }
    }

    /// Idle connections to `peer` right now (dead ones not yet reaped included).
    pub fn idle_count(&self, peer: PeerId) -> usize {
        self.idle.borrow().get(peer.index()).map_or(0, Vec::len)
    }

    /// Whether any peer has an idle connection (something for [`Pool::reap`] to check).
    pub fn is_empty(&self) -> bool {
        self.idle.borrow().iter().all(Vec::is_empty)
    }
}

/// Whether an idle connection is still open and has nothing to read: one non-blocking
/// `recv(MSG_PEEK)` of one byte must find no data (`EAGAIN`). End of stream (the peer closed
/// it), an error (it reset it) or unsolicited bytes (a response nobody asked for) all mean the
/// connection must not carry another request. The check costs one syscall per reuse; nginx
/// gets the same knowledge from a read event kept armed on idle connections.
pub fn is_quiet(stream: &TcpStream) -> bool {
    let mut byte = 0u8;
    // SAFETY: `fd` is the open socket `stream` owns for the duration of this call; `recv`
    // writes at most 1 byte into `byte`, which lives on this stack frame.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && {
        let err = std::io::Error::last_os_error().raw_os_error();
        err == Some(libc::EAGAIN) || err == Some(libc::EWOULDBLOCK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{Shutdown, TcpListener};
    use std::time::Duration;

    fn rt() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
    }

    fn pool() -> Pool {
        Pool::new(
            1,
            PoolConfig {
                max_idle_per_peer: 8,
                idle_timeout: Duration::from_secs(60),
                ..PoolConfig::default()
            },
        )
    }

    /// Waits (up to 2 s) until the kernel has delivered what the peer did.
    fn settle(stream: &TcpStream) {
        let t = Instant::now();
        while is_quiet(stream) && t.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn take_skips_connections_the_peer_closed_reset_or_wrote_into() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        rt().block_on(async {
            let p = pool();
            let now = Instant::now();
            // Four idle connections: one the peer leaves alone (oldest), then closed (FIN),
            // reset (RST) and written into (a stray response).
            let mut peers = Vec::new();
            for _ in 0..4 {
                let c = TcpStream::connect(addr).await.unwrap();
                peers.push((c, listener.accept().unwrap().0));
            }
            let (quiet, _q) = peers.remove(0);
            let mut kept_open = Vec::new();
            for (i, (c, mut s)) in peers.into_iter().enumerate() {
                match i {
                    0 => {
                        s.shutdown(Shutdown::Both).unwrap();
                        kept_open.push(s);
                    }
                    1 => {
                        // SO_LINGER 0, then close: an RST.
                        socket2::SockRef::from(&s)
                            .set_linger(Some(Duration::ZERO))
                            .unwrap();
                        drop(s);
                    }
                    _ => {
                        s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
                        kept_open.push(s);
                    }
                }
                settle(&c);
                assert!(!is_quiet(&c), "connection {i} must not look idle");
                p.put(PeerId::new(0), c, now);
            }
            p.put(PeerId::new(0), quiet, now);
            // LIFO: the quiet one was put last and comes first; then the three dead ones are
            // skipped and closed.
            assert!(p.take(PeerId::new(0), now).is_some());
            assert_eq!(p.idle_count(PeerId::new(0)), 3);
            assert!(p.take(PeerId::new(0), now).is_none());
            assert_eq!(p.idle_count(PeerId::new(0)), 0);
        });
    }

    #[test]
    fn reap_closes_dead_idle_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        rt().block_on(async {
            let p = pool();
            let now = Instant::now();
            let alive = TcpStream::connect(addr).await.unwrap();
            let _a = listener.accept().unwrap();
            let dead = TcpStream::connect(addr).await.unwrap();
            drop(listener.accept().unwrap());
            settle(&dead);
            p.put(PeerId::new(0), alive, now);
            p.put(PeerId::new(0), dead, now);
            assert_eq!(p.reap(now), 1);
            assert_eq!(p.idle_count(PeerId::new(0)), 1);
        });
    }
}

//! The per-shard, per-peer pool of idle upstream connections.
//!
//! LIFO: the most recently used connection is reused first (it is the least likely to have been
//! closed by the peer, and it keeps the others idle long enough to expire). Expired connections
//! are dropped when met and by [`Pool::reap`], which the shard calls periodically.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::balance::PeerId;
use crate::config::PoolConfig;

/// PooledConn is an idle upstream connection and when it became idle.
pub struct PooledConn {
    /// The connection.
    pub stream: TcpStream,
    /// When it was returned to the pool.
    pub idle_since: Instant,
}

/// Pool is one group's idle connections in one shard, per peer.
pub struct Pool {
    /// Idle connections per peer, most recent last.
    idle: RefCell<Vec<Vec<PooledConn>>>,
    /// At most this many idle connections per peer.
    max_idle_per_peer: usize,
    /// Idle connections older than this are closed.
    idle_timeout: Duration,
}

impl Pool {
    /// Creates an empty pool for `peers` peers.
    pub fn new(peers: usize, cfg: PoolConfig) -> Self {
        Pool {
            idle: RefCell::new((0..peers).map(|_| Vec::new()).collect()),
            max_idle_per_peer: cfg.max_idle_per_peer,
            idle_timeout: cfg.idle_timeout,
        }
    }

    /// Takes the most recent idle connection to `peer` that has not expired.
    pub fn take(&self, peer: PeerId, now: Instant) -> Option<TcpStream> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(peer)?;
        while let Some(conn) = list.pop() {
            if now.saturating_duration_since(conn.idle_since) < self.idle_timeout {
                return Some(conn.stream);
            }
        }
        None
    }

    /// Returns a reusable connection to the pool (dropped when the peer's list is full).
    pub fn put(&self, peer: PeerId, stream: TcpStream, now: Instant) {
        let mut idle = self.idle.borrow_mut();
        if let Some(list) = idle.get_mut(peer) {
            if list.len() < self.max_idle_per_peer {
                list.push(PooledConn {
                    stream,
                    idle_since: now,
                });
            }
        }
    }

    /// Closes every idle connection that expired; returns how many.
    pub fn reap(&self, now: Instant) -> usize {
        let mut idle = self.idle.borrow_mut();
        let mut closed = 0;
        for list in idle.iter_mut() {
            let before = list.len();
            list.retain(|c| now.saturating_duration_since(c.idle_since) < self.idle_timeout);
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
        let moved = match from.idle.borrow_mut().get_mut(from_peer) {
            Some(list) => std::mem::take(list),
            None => return,
        };
        let mut idle = self.idle.borrow_mut();
        if let Some(list) = idle.get_mut(peer) {
            list.extend(moved);
            let excess = list.len().saturating_sub(self.max_idle_per_peer);
            // Keep the most recent ones (the end of the list).
            list.drain(..excess);
        }
    }

    /// Idle connections to `peer` right now.
    pub fn idle_count(&self, peer: PeerId) -> usize {
        self.idle.borrow().get(peer).map_or(0, Vec::len)
    }
}

//! The protocol between the control thread and the shards: the ground floor both sides import
//! (docs/architecture.md, "Layers"), so neither imports the other.
//!
//! - [`ControlMsg`]: what the control side tells a shard, on one bounded crossbeam channel per
//!   shard that the shard drains with `try_recv` between requests (invariant 1);
//! - [`HealthChange`]: an eligibility flip decided by the control thread (invariant 3);
//! - [`Observation`] and [`Outcome`]: what a shard reports about its requests (passive health),
//!   sent by its [`ShardReporter`] with `try_send` only, counted in its [`ShardStats`];
//! - [`Snapshot`]: a new configuration (reload, admin API), pushed as one immutable value that
//!   a shard swaps in at a request boundary;
//! - [`Notify`]: the single-threaded wake-up both sides use inside their own runtime.
//!
//! Indices (group, peer) in every message belong to one configuration *generation*: a shard
//! reports with the generation its request started on, and the control thread ignores reports
//! of an older one (their indices may name other peers since).

mod notify;
mod report;
mod wake;

pub use notify::{Notify, Signal, SignalWait};
pub use report::{ShardReporter, ShardStats};
pub use wake::{doorbell, Doorbell, Waker};

use crossbeam_channel::{Receiver, SendError, Sender, TrySendError};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::balance::PeerId;
use crate::config::{Config, GroupId, PassiveHealth, ShardId};
use crate::metrics::ShardHandles;

/// ShardSender is the control side's end of one shard's control channel: it queues a message,
/// then rings the shard's doorbell, so an idle shard learns of it at once (no polling tick).
#[derive(Debug, Clone)]
pub struct ShardSender {
    /// The bounded channel the shard drains with `try_recv`.
    tx: Sender<ControlMsg>,
    /// The shard's doorbell.
    waker: Waker,
}

impl ShardSender {
    /// Queues `msg` without waiting (a full channel hands it back).
    pub fn try_send(&self, msg: ControlMsg) -> Result<(), TrySendError<ControlMsg>> {
        self.tx.try_send(msg)?;
        self.waker.wake();
        Ok(())
    }

    /// Queues `msg`, waiting for room (only for shutdown, from outside the control thread).
    pub fn send(&self, msg: ControlMsg) -> Result<(), SendError<ControlMsg>> {
        self.tx.send(msg)?;
        self.waker.wake();
        Ok(())
    }
}

/// A shard's control channel of `capacity` messages: the sender, the shard's receiver, and
/// the doorbell the shard waits on.
pub fn shard_channel(
    capacity: usize,
) -> std::io::Result<(ShardSender, Receiver<ControlMsg>, Doorbell)> {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let (waker, bell) = doorbell()?;
    Ok((ShardSender { tx, waker }, rx, bell))
}

/// ControlMsg is what the control side tells a shard.
#[derive(Debug)]
pub enum ControlMsg {
    /// Stop accepting, close idle connections, let in-flight requests finish within the
    /// shutdown timeout, then stop the shard.
    Shutdown,
    /// A peer's eligibility flipped (decided by the control thread's health checks).
    Health(HealthChange),
    /// A new configuration: the shard swaps it in before its next request; requests in flight
    /// finish on the one they started with.
    Reload(Arc<Snapshot>),
    /// Listen sockets to open and configured addresses to stop listening on (a reload that
    /// changed `server.listen`), for this shard.
    Listen(ListenChange),
}

/// ListenChange is one shard's part of a `server.listen` change.
#[derive(Debug, Default)]
pub struct ListenChange {
    /// New listeners, each with the address as configured (port 0 stays 0 here).
    pub open: Vec<(SocketAddr, std::net::TcpListener)>,
    /// Configured addresses no longer listened on: stop accepting, serve what is queued, close.
    pub close: Vec<SocketAddr>,
}

/// Snapshot is one configuration generation as the control thread pushes it to every shard.
#[derive(Debug)]
pub struct Snapshot {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// The generation: 0 at start, one more per applied reload or admin change.
    pub generation: u64,
    /// Per upstream group (index = [`GroupId`]), per peer (index = [`PeerId`]): whether health
    /// lets it take requests now (the control thread's decision carried over from the previous
    /// generation; the shard must not decide it itself, invariant 3). Read with
    /// [`Snapshot::eligible`].
    pub eligible: Vec<Vec<bool>>,
    /// Per shard (index = [`ShardId`]): its metrics for this generation's upstreams and peers
    /// (surviving peers keep their counters). Read with [`Snapshot::metrics`].
    pub metrics: Vec<ShardHandles>,
}

impl Snapshot {
    /// The eligibility of every peer of `group` (index = [`PeerId`]); empty for an unknown
    /// group.
    pub fn eligible(&self, group: GroupId) -> &[bool] {
        self.eligible
            .get(group.index())
            .map_or(&[][..], Vec::as_slice)
    }

    /// The metrics handles of `shard`, if the snapshot has them.
    pub fn metrics(&self, shard: ShardId) -> Option<&ShardHandles> {
        self.metrics.get(shard.index())
    }
}

/// Outcome is how one try of a request on one peer ended, as far as passive health cares.
/// (`From<Failure>` is implemented by the proxy, which uses both.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response came (a 5xx is reported as [`Outcome::Status`]).
    Success,
    /// A 5xx response: a failure only where `passive.on_5xx = true`.
    Status(u16),
    /// The TCP connect failed or timed out.
    ConnectFailure,
    /// The connection was reset or closed before a complete response.
    Reset,
    /// The peer did not answer within `upstream_read`.
    Timeout,
    /// The peer sent something that is not a valid HTTP/1.1 response.
    InvalidResponse,
    /// The TLS handshake with the peer failed (its certificate did not verify, …).
    TlsFailure,
}

impl Outcome {
    /// The outcome of a complete response with `status`.
    pub fn from_status(status: u16) -> Outcome {
        if status >= 500 {
            Outcome::Status(status)
        } else {
            Outcome::Success
        }
    }

    /// Whether it counts as a failure under `passive` (no allocation: the shard's check).
    pub fn is_failure(self, passive: &PassiveHealth) -> bool {
        match self {
            Outcome::Success => false,
            Outcome::Status(_) => passive.on_5xx,
            _ => true,
        }
    }

    /// Its description when it counts as a failure under `passive`, else `None`.
    pub fn failure(self, passive: &PassiveHealth) -> Option<String> {
        Some(match self {
            Outcome::Success => return None,
            Outcome::Status(s) if passive.on_5xx => format!("HTTP {s}"),
            Outcome::Status(_) => return None,
            Outcome::ConnectFailure => "connect failure".to_string(),
            Outcome::Reset => "connection reset".to_string(),
            Outcome::Timeout => "timeout".to_string(),
            Outcome::InvalidResponse => "invalid response".to_string(),
            Outcome::TlsFailure => "TLS failure".to_string(),
        })
    }
}

/// Observation is one request outcome a shard reports to the control thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// The upstream group.
    pub group: GroupId,
    /// The peer within the group.
    pub peer: PeerId,
    /// The reporting shard.
    pub shard: ShardId,
    /// The configuration generation `group` and `peer` belong to.
    pub generation: u64,
    /// What happened.
    pub outcome: Outcome,
}

/// HealthChange is an eligibility flip of one peer, pushed by the control thread to every
/// shard as `ControlMsg::Health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthChange {
    /// The upstream group.
    pub group: GroupId,
    /// The peer within the group.
    pub peer: PeerId,
    /// Whether shards may send it new requests from now on.
    pub eligible: bool,
    /// When the control thread decided (a probe verdict, an ejection, its expiry): shards
    /// measure the propagation delay from it.
    pub decided_at: Instant,
}

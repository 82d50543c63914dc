//! The protocol between the control thread and the shards: the ground floor both sides import
//! (docs/architecture.md, "Layers"), so neither imports the other.
//!
//! - [`ControlMsg`]: what the control side tells a shard, on one bounded crossbeam channel per
//!   shard that the shard drains with `try_recv` between requests (invariant 1);
//! - [`HealthChange`]: an eligibility flip decided by the control thread (invariant 3);
//! - [`Observation`] and [`Outcome`]: what a shard reports about its requests (passive health),
//!   sent by its [`ShardReporter`] with `try_send` only, counted in its [`ShardStats`];
//! - [`Notify`]: the single-threaded wake-up both sides use inside their own runtime.
//!
//! A configuration reload will add its snapshot message here.

mod notify;
mod report;

pub use notify::Notify;
pub use report::{ShardReporter, ShardStats};

use std::time::Instant;

use crate::balance::PeerId;
use crate::config::{GroupId, PassiveHealth, ShardId};

/// ControlMsg is what the control side tells a shard.
#[derive(Debug, Clone)]
pub enum ControlMsg {
    /// Stop accepting, close idle connections, let in-flight requests finish within the
    /// shutdown timeout, then stop the shard.
    Shutdown,
    /// A peer's eligibility flipped (decided by the control thread's health checks).
    Health(HealthChange),
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

//! Health: one state machine per peer on the control thread, active probes, passive outlier
//! ejection, and the fan-out of every eligibility flip to all shards (invariant 3).
//!
//! - [`state`]: the per-peer state machine (unknown/up/down + ejection) and its group.
//! - [`probe`]: async `tcp` and `http` probes on monoio, each bounded by its timeout.
//! - [`control`]: the `ringlb-ctl` thread: its own monoio runtime running one probe task per
//!   probed peer, the observation drain (with ejection expiry) and the admin endpoint.
//!
//! The shard side is not here: a shard reports request outcomes with
//! [`ShardReporter::report`](crate::control::ShardReporter::report) and applies the
//! [`HealthChange`](crate::control::HealthChange)s it drains from its control channel, both
//! types of the protocol module [`crate::control`] that shards and this thread share. Shards
//! never probe and never block.

pub mod control;
pub mod probe;
pub mod state;

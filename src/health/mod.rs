//! Health: one state machine per peer on the control thread, active probes, passive outlier
//! ejection, and the fan-out of every eligibility flip to all shards (invariant 3).
//!
//! - `state`: the per-peer state machine (unknown/up/down + ejection) and its group.
//! - `probe`: async `tcp` and `http` probes on monoio, each bounded by its timeout.
//! - `custom`: the [`HealthCheck`] trait of a library user's own check (`kind = "custom"`).
//! - `observer`: the [`HealthObserver`] told every [`HealthEvent`] (status changes, peers
//!   added and removed by reloads).
//! - `hooks`: [`Hooks`], the registered checks and observers the control thread runs.
//! - `control`: the `ringlb-ctl` thread: its own monoio runtime running one probe task per
//!   probed peer, the observation drain (with ejection expiry) and the admin endpoint.
//!
//! The shard side is not here: a shard reports request outcomes with
//! `control::ShardReporter::report` and applies the
//! `control::HealthChange`s it drains from its control channel, both
//! types of the protocol module `crate::control` that shards and this thread share. Shards
//! never probe and never block.
//!
//! Public here is what a library user registers through
//! [`StartOptions`](crate::server::StartOptions): [`HealthCheck`] (with [`CheckTarget`],
//! [`CheckFuture`], [`PANICKED`]), [`HealthObserver`] (with [`HealthEvent`], [`Status`]) and
//! [`Hooks`]; the rest is the control thread's own.

pub(crate) mod control;
pub(crate) mod custom;
pub(crate) mod hooks;
pub(crate) mod observer;
pub(crate) mod probe;
pub(crate) mod state;

pub use custom::{CheckFuture, CheckTarget, HealthCheck, PANICKED};
pub use hooks::Hooks;
pub use observer::{HealthEvent, HealthObserver};
pub use state::Status;

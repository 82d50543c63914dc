//! The context the connections of one shard share ([`ShardCtx`]): owned here, where the
//! request loop uses it, and embedded by the shard, so the proxy does not import the shard.
//!
//! Draining the control channel lives here too: the request loop drains it before every
//! request (invariant 1: `try_recv` only), the shard on its tick.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use crossbeam_channel::Receiver;
use monoio::io::Canceller;

use super::{Picker, Router};
use crate::config::{Config, GroupId, ShardId};
use crate::control::{ControlMsg, Notify, Outcome, ShardReporter};
use crate::failover::Failure;
use crate::upstream::UpstreamGroup;

/// ShardCtx is everything the connections of one shard share (behind an `Rc`): the
/// configuration snapshot, the shard's replica of every upstream group, the router or picker,
/// the passive-health reporter, and the shard's control channel with the shutdown state it
/// sets. The shard embeds it (`shard::Shard`) and adds what only its own loops count.
pub(crate) struct ShardCtx {
    /// The shard.
    pub id: ShardId,
    /// The configuration this shard runs (immutable snapshot).
    pub config: Arc<Config>,
    /// This shard's replica of every upstream group, in config order.
    pub groups: Vec<UpstreamGroup>,
    /// Route table: request → group index (the default picker).
    pub router: Router,
    /// A library user's picker, replacing `router` when set.
    pub picker: Option<Arc<dyn Picker>>,
    /// Upstream group names in config order (for pickers).
    pub upstream_names: Vec<String>,
    /// The control channel, drained with `try_recv` only.
    control: Receiver<ControlMsg>,
    /// Set once shutdown began: connections finish their request and close.
    shutting_down: Cell<bool>,
    /// Notified when shutdown begins, and by the shard when a connection closes or an accept
    /// loop ends.
    changed: Notify,
    /// Cancels every accept and idle keep-alive read at shutdown.
    canceller: RefCell<Canceller>,
    /// Reports request outcomes to the control thread (passive health), never blocking.
    pub health: ShardReporter,
}

impl ShardCtx {
    /// Builds a shard's context from the config.
    pub fn new(
        id: ShardId,
        config: Arc<Config>,
        control: Receiver<ControlMsg>,
        picker: Option<Arc<dyn Picker>>,
        health: ShardReporter,
    ) -> Self {
        let groups = config.upstreams.iter().map(UpstreamGroup::new).collect();
        let router = Router::new(&config);
        let upstream_names = config.upstreams.iter().map(|u| u.name.clone()).collect();
        ShardCtx {
            id,
            config,
            groups,
            router,
            picker,
            upstream_names,
            control,
            shutting_down: Cell::new(false),
            changed: Notify::default(),
            canceller: RefCell::new(Canceller::new()),
            health,
        }
    }

    /// This shard's replica of group `id`, if there is such a group.
    #[inline]
    pub fn group(&self, id: GroupId) -> Option<&UpstreamGroup> {
        self.groups.get(id.index())
    }

    /// Applies every pending control message, without blocking.
    pub fn drain_control(&self) {
        while let Ok(msg) = self.control.try_recv() {
            match msg {
                ControlMsg::Shutdown => self.begin_shutdown(),
                ControlMsg::Health(change) => {
                    if let Some(g) = self.group(change.group) {
                        g.set_health(change.peer, change.eligible);
                    }
                    self.health.applied(&change);
                }
            }
        }
    }

    fn begin_shutdown(&self) {
        if self.shutting_down.replace(true) {
            return;
        }
        tracing::debug!(
            shard = %self.id,
            "shutdown: stop accepting, closing idle connections"
        );
        let old = std::mem::take(&mut *self.canceller.borrow_mut());
        *self.canceller.borrow_mut() = old.cancel();
        self.changed.notify_all();
    }

    /// Whether shutdown began.
    #[inline]
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    /// A handle that shutdown cancels: for accepts and idle keep-alive reads.
    pub fn cancel_handle(&self) -> monoio::io::CancelHandle {
        self.canceller.borrow().handle()
    }

    /// What the shard's loops wait on: notified when shutdown begins (and by the shard when a
    /// connection closes or an accept loop ends).
    pub fn changed(&self) -> &Notify {
        &self.changed
    }
}

/// How a failed try counts for passive health. It lives here, where both are used, so that
/// neither `failover` nor `control` imports the other (docs/architecture.md, "Layers").
impl From<Failure> for Outcome {
    /// How a failed try counts for passive health.
    fn from(failure: Failure) -> Outcome {
        match failure {
            Failure::ConnectFailure | Failure::ConnectTimeout => Outcome::ConnectFailure,
            Failure::Reset => Outcome::Reset,
            Failure::Timeout => Outcome::Timeout,
            Failure::InvalidResponse => Outcome::InvalidResponse,
            Failure::Status(s) => Outcome::from_status(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_from_failures() {
        assert_eq!(Outcome::from(Failure::Timeout), Outcome::Timeout);
        assert_eq!(
            Outcome::from(Failure::ConnectTimeout),
            Outcome::ConnectFailure
        );
        assert_eq!(
            Outcome::from(Failure::InvalidResponse),
            Outcome::InvalidResponse
        );
        assert_eq!(Outcome::from(Failure::Reset), Outcome::Reset);
        assert_eq!(Outcome::from(Failure::Status(502)), Outcome::Status(502));
        assert_eq!(Outcome::from(Failure::Status(404)), Outcome::Success);
        assert_eq!(Outcome::from_status(200), Outcome::Success);
        assert_eq!(Outcome::from_status(503), Outcome::Status(503));
    }
}

//! The health-change observer: [`HealthObserver`] is told every status change of every peer
//! (the first `unknown → up` included) and every peer a reload or the admin API adds or
//! removes, as a [`HealthEvent`].

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use super::state::{GroupHealth, Status};
use crate::config::Config;

/// HealthEvent is what happened to one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthEvent {
    /// Its status changed (by a probe, the shards' reported outcomes, an ejection ending, or
    /// a reload that changed its upstream's check), e.g. the first `unknown → up`.
    Changed {
        /// Status before.
        old: Status,
        /// Status after.
        new: Status,
    },
    /// A reload (or an admin API change) added it; `state` is its status now: its
    /// upstream's start state (`unknown` or `down`), or `up` without an active check.
    Added {
        /// Its status as it enters.
        state: Status,
    },
    /// A reload (or an admin API change) removed it, or its whole upstream.
    Removed {
        /// Its status when it left.
        last: Status,
    },
}

/// HealthObserver is told about every [`HealthEvent`], registered with
/// [`StartOptions::health_observer`](crate::server::StartOptions::health_observer).
///
/// It is called synchronously on the control thread, in decision order (so per peer in the
/// order the changes happened), while probes, the shards' reports and the admin endpoint
/// wait: keep it quick (record, count, or send on a channel; no blocking I/O). A panic in it
/// is caught and logged.
pub trait HealthObserver: Send + Sync {
    /// `peer` of `upstream` (its address as written in `peers`) had `event`; `why` is the
    /// reason the log line shows (`2 consecutive probe successes (last: HTTP 200)`,
    /// `added by reload (generation 1)`).
    fn on_event(&self, upstream: &str, peer: &str, event: HealthEvent, why: &str);
}

/// Observers are the registered observers, in registration order.
#[derive(Clone, Default)]
pub(crate) struct Observers(pub(crate) Vec<Arc<dyn HealthObserver>>);

impl Observers {
    /// Tells every observer `event`.
    pub(crate) fn notify(&self, upstream: &str, peer: &str, event: HealthEvent, why: &str) {
        for o in &self.0 {
            let told = catch_unwind(AssertUnwindSafe(|| o.on_event(upstream, peer, event, why)));
            if told.is_err() {
                tracing::error!(upstream, peer, "a health observer panicked on {event:?}");
            }
        }
    }

    /// Tells every observer what a reload to `generation` changed: peers removed (also with
    /// their whole upstream), peers added, and surviving peers whose status changed.
    pub(crate) fn reloaded(
        &self,
        old: (&Config, &[GroupHealth]),
        new: (&Config, &[GroupHealth]),
        generation: u64,
    ) {
        if self.0.is_empty() {
            return;
        }
        let ((old_cfg, old_groups), (new_cfg, new_groups)) = (old, new);
        for (oi, u) in old_cfg.upstreams.iter().enumerate() {
            let next = new_cfg.upstreams.iter().find(|n| n.name == u.name);
            for (pi, p) in u.peers.iter().enumerate() {
                if next.is_some_and(|n| n.peers.iter().any(|q| q.address == p.address)) {
                    continue;
                }
                let Some(last) = old_groups.get(oi).and_then(|g| g.peers.get(pi)) else {
                    continue;
                };
                let why = match next {
                    Some(_) => format!("removed by reload (generation {generation})"),
                    None => format!("upstream removed by reload (generation {generation})"),
                };
                let event = HealthEvent::Removed {
                    last: last.status(),
                };
                self.notify(&u.name, &p.address, event, &why);
            }
        }
        for (ni, u) in new_cfg.upstreams.iter().enumerate() {
            let before = old_cfg
                .upstreams
                .iter()
                .position(|o| o.name == u.name)
                .map(|oi| (&old_cfg.upstreams[oi], old_groups.get(oi)));
            for (pi, p) in u.peers.iter().enumerate() {
                let Some(now) = new_groups.get(ni).and_then(|g| g.peers.get(pi)) else {
                    continue;
                };
                let was = before.and_then(|(o, g)| {
                    let i = o.peers.iter().position(|q| q.address == p.address)?;
                    g?.peers.get(i)
                });
                match was {
                    None => {
                        let why = format!("added by reload (generation {generation})");
                        let event = HealthEvent::Added {
                            state: now.status(),
                        };
                        self.notify(&u.name, &p.address, event, &why);
                    }
                    Some(w) if w.status() != now.status() => {
                        let event = HealthEvent::Changed {
                            old: w.status(),
                            new: now.status(),
                        };
                        self.notify(&u.name, &p.address, event, &now.why);
                    }
                    Some(_) => {}
                }
            }
        }
    }
}

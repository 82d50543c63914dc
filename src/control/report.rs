//! The shard's end of passive health: it reports request outcomes to the control thread
//! without ever blocking, and records the health changes it applied (for `/status`).

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Sender, TrySendError};

use super::{HealthChange, Observation, Outcome, Waker};
use crate::balance::PeerId;
use crate::config::{Config, GroupId, PassiveHealth, ShardId};

/// ShardStats are the health counters of one shard, written only by that shard (relaxed
/// atomics, invariant 1) and read by the control thread for `/status`.
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Reports dropped because the observation channel was full.
    pub dropped_observations: AtomicU64,
    /// Reports sent.
    pub sent_observations: AtomicU64,
    /// [`HealthChange`]s applied.
    pub changes_applied: AtomicU64,
    /// Decision → applied delay of the last change, in nanoseconds.
    pub last_apply_lag_ns: AtomicU64,
    /// Largest decision → applied delay so far, in nanoseconds.
    pub max_apply_lag_ns: AtomicU64,
}

/// ShardReporter is a shard's end of passive health: it sends outcomes that matter and
/// records the health changes the shard applied. Shard-local (`Cell`s), never blocks.
pub struct ShardReporter {
    /// The reporting shard.
    shard: ShardId,
    /// The bounded observation channel to the control thread (`try_send` only).
    tx: Sender<Observation>,
    /// What depends on the configuration generation (replaced on reload).
    current: RefCell<PerConfig>,
    /// Reports dropped on a full channel (shard-local copy of the stat).
    dropped: Cell<u64>,
    /// Counters the control thread shows in `/status`.
    stats: Arc<ShardStats>,
    /// The control thread's doorbell.
    waker: Option<Waker>,
}

/// PerConfig is the part of a reporter that follows the configuration.
struct PerConfig {
    /// The configuration generation the indices below belong to.
    generation: u64,
    /// Per group, per peer: whether this shard's last report on it was a failure. Successes
    /// are only sent after a failure (they reset the count), to keep the channel quiet.
    last_failed: Vec<Vec<Cell<bool>>>,
    /// Per group: its passive settings (`None` = passive off: nothing is reported).
    passive: Vec<Option<PassiveHealth>>,
}

impl PerConfig {
    fn new(config: &Config, generation: u64) -> PerConfig {
        PerConfig {
            generation,
            last_failed: config
                .upstreams
                .iter()
                .map(|u| u.peers.iter().map(|_| Cell::new(false)).collect())
                .collect(),
            passive: config
                .upstreams
                .iter()
                .map(|u| u.passive.enabled().then_some(u.passive))
                .collect(),
        }
    }
}

impl ShardReporter {
    /// A reporter for shard `shard` of `config`.
    pub fn new(
        shard: ShardId,
        config: &Config,
        tx: Sender<Observation>,
        stats: Arc<ShardStats>,
    ) -> ShardReporter {
        ShardReporter {
            shard,
            tx,
            current: RefCell::new(PerConfig::new(config, 0)),
            dropped: Cell::new(0),
            stats,
            waker: None,
        }
    }

    /// Rings `waker` (the control thread's doorbell) after every report sent, so the control
    /// thread sleeps while nothing is reported.
    pub fn with_waker(mut self, waker: Waker) -> ShardReporter {
        self.waker = Some(waker);
        self
    }

    /// Reports the outcome of one try on `peer` of group `group`, if it matters: every
    /// failure, and a success right after this shard reported a failure. Never blocks: a full
    /// channel drops the report and counts it.
    pub fn report(&self, generation: u64, group: GroupId, peer: PeerId, outcome: Outcome) {
        let current = self.current.borrow();
        if current.generation != generation {
            // The request started on an older configuration: its indices may name other
            // peers now.
            return;
        }
        let Some(Some(passive)) = current.passive.get(group.index()) else {
            return;
        };
        let Some(flag) = current
            .last_failed
            .get(group.index())
            .and_then(|g| g.get(peer.index()))
        else {
            return;
        };
        let failed = outcome.is_failure(passive);
        if !failed && !flag.get() {
            return;
        }
        let obs = Observation {
            group,
            peer,
            shard: self.shard,
            generation,
            outcome,
        };
        match self.tx.try_send(obs) {
            Ok(()) => {
                if let Some(w) = &self.waker {
                    w.wake();
                }
                flag.set(failed);
                self.stats.sent_observations.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) => {
                let n = self.dropped.get() + 1;
                self.dropped.set(n);
                self.stats.dropped_observations.store(n, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Follows a new configuration generation: reports of requests that started on an older
    /// one are dropped from now on.
    pub fn reconfigure(&self, config: &Config, generation: u64) {
        *self.current.borrow_mut() = PerConfig::new(config, generation);
    }

    /// Reports dropped by this shard because the channel was full.
    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Records that the shard applied `change` (for the propagation figures in `/status`).
    pub fn applied(&self, change: &HealthChange) {
        let lag = change.decided_at.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        let s = &self.stats;
        s.last_apply_lag_ns.store(lag, Ordering::Relaxed);
        if lag > s.max_apply_lag_ns.load(Ordering::Relaxed) {
            s.max_apply_lag_ns.store(lag, Ordering::Relaxed);
        }
        s.changes_applied.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::from_toml_str(
            &format!(
                "[server]\nadmin = \"\"\n[[upstream]]\nname = \"a\"\n\
                 peers = [{{ address = \"127.0.0.1:1\" }}, {{ address = \"127.0.0.1:2\" }}]\n{extra}"
            ),
            "t.toml",
        )
        .unwrap()
    }

    #[test]
    fn reports_failures_and_only_the_first_success_after_one() {
        let cfg = config("");
        let (tx, rx) = crossbeam_channel::bounded(16);
        let r = ShardReporter::new(ShardId::new(3), &cfg, tx, Arc::default());
        r.report(0, GroupId::new(0), PeerId::new(1), Outcome::Success);
        r.report(0, GroupId::new(0), PeerId::new(1), Outcome::Status(503)); // on_5xx = false: a success
        assert!(rx.try_recv().is_err());
        r.report(0, GroupId::new(0), PeerId::new(1), Outcome::Reset);
        r.report(0, GroupId::new(0), PeerId::new(1), Outcome::Timeout);
        r.report(0, GroupId::new(0), PeerId::new(1), Outcome::Success);
        r.report(0, GroupId::new(0), PeerId::new(1), Outcome::Success);
        let got: Vec<Outcome> = rx.try_iter().map(|o| o.outcome).collect();
        assert_eq!(
            got,
            vec![Outcome::Reset, Outcome::Timeout, Outcome::Success]
        );
        // Unknown groups and peers are ignored.
        r.report(0, GroupId::new(5), PeerId::new(0), Outcome::Reset);
        r.report(0, GroupId::new(0), PeerId::new(9), Outcome::Reset);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_full_channel_drops_and_counts() {
        let cfg = config("");
        let (tx, rx) = crossbeam_channel::bounded(1);
        let stats = Arc::new(ShardStats::default());
        let r = ShardReporter::new(ShardId::new(0), &cfg, tx, stats.clone());
        for _ in 0..5 {
            r.report(0, GroupId::new(0), PeerId::new(0), Outcome::ConnectFailure);
        }
        assert_eq!(r.dropped(), 4);
        assert_eq!(stats.dropped_observations.load(Ordering::Relaxed), 4);
        assert_eq!(rx.try_iter().count(), 1);
    }

    #[test]
    fn on_5xx_and_passive_off() {
        let cfg = config("passive = { on_5xx = true }\n");
        let (tx, rx) = crossbeam_channel::bounded(4);
        let r = ShardReporter::new(ShardId::new(0), &cfg, tx, Arc::default());
        r.report(0, GroupId::new(0), PeerId::new(0), Outcome::Status(502));
        assert_eq!(rx.try_recv().map(|o| o.outcome), Ok(Outcome::Status(502)));

        let cfg = config("passive = { consecutive_failures = 0 }\n");
        let (tx, rx) = crossbeam_channel::bounded(4);
        let r = ShardReporter::new(ShardId::new(0), &cfg, tx, Arc::default());
        r.report(0, GroupId::new(0), PeerId::new(0), Outcome::Reset);
        assert!(rx.try_recv().is_err());
    }
}

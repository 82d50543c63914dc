//! The control thread's index of every shard's metrics.

use std::collections::HashMap;
use std::sync::Arc;

use super::{PeerMetrics, ShardMetrics, UpstreamMetrics};

/// What one shard gets to write into, handed to it in its snapshot. The shard keeps these
/// plain `Arc`s and never sees the [`Registry`].
#[derive(Debug, Clone)]
pub struct ShardHandles {
    /// The shard's downstream metrics.
    pub shard: Arc<ShardMetrics>,
    /// One entry per upstream, in the order given to [`Registry::reconcile`].
    pub upstreams: Vec<UpstreamHandles>,
}

/// One shard's metrics of one upstream and its peers.
#[derive(Debug, Clone)]
pub struct UpstreamHandles {
    /// The upstream's metrics.
    pub metrics: Arc<UpstreamMetrics>,
    /// One entry per peer, in the order given to [`Registry::reconcile`].
    pub peers: Vec<Arc<PeerMetrics>>,
}

/// One upstream name's metrics on every shard, with its peers.
#[derive(Debug)]
pub(super) struct UpstreamEntry {
    pub(super) name: String,
    /// Index = shard.
    pub(super) per_shard: Vec<Arc<UpstreamMetrics>>,
    pub(super) peers: Vec<PeerEntry>,
}

/// One peer address's metrics on every shard.
#[derive(Debug)]
pub(super) struct PeerEntry {
    pub(super) address: String,
    /// Index = shard.
    pub(super) per_shard: Vec<Arc<PeerMetrics>>,
}

/// Every shard's metrics, owned by the control thread and read by [`render`](super::render()).
///
/// The number of shards is fixed at [`Registry::new`]. The upstreams and peers are set by
/// [`Registry::reconcile`], at start and again at each config reload:
///
/// ```
/// use ringlb::metrics::Registry;
///
/// let mut registry = Registry::new(2);
/// let handles = registry.reconcile(&[("api", vec!["10.0.0.1:80", "10.0.0.2:80"])]);
/// // handles[shard].upstreams[upstream].peers[peer] goes into that shard's snapshot.
/// handles[1].upstreams[0].peers[1].requests.inc();
/// // A reload that keeps 10.0.0.2:80 keeps its counts; 10.0.0.1:80 disappears.
/// let handles = registry.reconcile(&[("api", vec!["10.0.0.2:80", "10.0.0.3:80"])]);
/// assert_eq!(handles[1].upstreams[0].peers[0].requests.get(), 1);
/// ```
#[derive(Debug)]
pub struct Registry {
    pub(super) shards: Vec<Arc<ShardMetrics>>,
    pub(super) upstreams: Vec<UpstreamEntry>,
}

impl Registry {
    /// A registry for `shards` shards, without upstreams yet.
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards).map(|_| Arc::default()).collect(),
            upstreams: Vec::new(),
        }
    }

    /// The number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Sets the upstreams and their peers to `upstreams`: (upstream name, peer addresses as
    /// configured), and returns per shard (index = shard) the `Arc`s for that shard's
    /// snapshot, in the order given.
    ///
    /// An (upstream name, peer address) that was already registered keeps its `Arc`s, so its
    /// counts continue; one no longer listed is dropped from the registry (and from scrapes;
    /// a shard still holding its old `Arc` writes into memory nobody reads until it takes the
    /// new snapshot). The same name or address listed twice shares one set of metrics (one
    /// series), which keeps the single-writer contract: both handles belong to the same shard.
    /// Shard metrics are never replaced.
    pub fn reconcile<U: AsRef<str>, P: AsRef<str>>(
        &mut self,
        upstreams: &[(U, Vec<P>)],
    ) -> Vec<ShardHandles> {
        let shards = self.shards.len();
        type OldPeers = HashMap<String, Vec<Arc<PeerMetrics>>>;
        let mut old: HashMap<String, (Vec<Arc<UpstreamMetrics>>, OldPeers)> =
            std::mem::take(&mut self.upstreams)
                .into_iter()
                .map(|u| {
                    let peers = u.peers.into_iter().map(|p| (p.address, p.per_shard));
                    (u.name, (u.per_shard, peers.collect()))
                })
                .collect();
        let mut new: Vec<UpstreamEntry> = Vec::with_capacity(upstreams.len());
        // Per listed upstream: its index in `new` and, per listed peer, the peer's index.
        let mut layout: Vec<(usize, Vec<usize>)> = Vec::with_capacity(upstreams.len());
        for (name, peers) in upstreams {
            let name = name.as_ref();
            let ui = match new.iter().position(|u| u.name == name) {
                Some(i) => i,
                None => {
                    let per_shard = old
                        .get_mut(name)
                        .map(|o| std::mem::take(&mut o.0))
                        .unwrap_or_else(|| fresh(shards));
                    new.push(UpstreamEntry {
                        name: name.to_string(),
                        per_shard,
                        peers: Vec::new(),
                    });
                    new.len() - 1
                }
            };
            let entry = &mut new[ui];
            let mut peer_indexes = Vec::with_capacity(peers.len());
            for address in peers {
                let address = address.as_ref();
                let pi = match entry.peers.iter().position(|p| p.address == address) {
                    Some(i) => i,
                    None => {
                        let per_shard = old
                            .get_mut(name)
                            .and_then(|o| o.1.remove(address))
                            .unwrap_or_else(|| fresh(shards));
                        entry.peers.push(PeerEntry {
                            address: address.to_string(),
                            per_shard,
                        });
                        entry.peers.len() - 1
                    }
                };
                peer_indexes.push(pi);
            }
            layout.push((ui, peer_indexes));
        }
        self.upstreams = new;
        (0..shards)
            .map(|s| ShardHandles {
                shard: Arc::clone(&self.shards[s]),
                upstreams: layout
                    .iter()
                    .map(|(ui, pis)| {
                        let u = &self.upstreams[*ui];
                        UpstreamHandles {
                            metrics: Arc::clone(&u.per_shard[s]),
                            peers: pis
                                .iter()
                                .map(|pi| Arc::clone(&u.peers[*pi].per_shard[s]))
                                .collect(),
                        }
                    })
                    .collect(),
            })
            .collect()
    }
}

/// PeerTotals is one peer's counts summed over the shards, for `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PeerTotals {
    /// Tries sent to it.
    pub requests: u64,
    /// Tries that failed (connect failure or timeout, reset, timeout, invalid response).
    pub failures: u64,
    /// Requests in flight to it now.
    pub active: u64,
    /// Mean response time (head received − request sent), if it answered at all.
    pub mean_response_seconds: Option<f64>,
    /// Its `max_conns` (the shards' parts summed; 0 = no limit).
    pub max_conns: u64,
    /// Selections that passed it over at its `max_conns`.
    pub saturated: u64,
    /// Selections that passed it over for lack of `rate` tokens.
    pub rate_limited: u64,
    /// Its effective weight (mean over shards), below its weight during slow start.
    pub slow_start_weight: Option<f64>,
}

/// UpstreamTotals is one upstream's queue and rate-limit counts summed over the shards, for
/// `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct UpstreamTotals {
    /// Requests waiting in its queue now.
    pub queue_length: u64,
    /// Requests answered 503 because the queue was full.
    pub queue_overflows: u64,
    /// Requests answered 503 after `queue.timeout_ms`.
    pub queue_timeouts: u64,
    /// Requests that waited in the queue and then got a peer.
    pub queued: u64,
    /// Their mean wait.
    pub mean_queue_wait_seconds: Option<f64>,
    /// Selections held back by the group's own `rate`.
    pub rate_limited: u64,
    /// Requests answered 429 by the per-client `rate`.
    pub client_rate_limited: u64,
}

impl Registry {
    /// The counts of `address` in `upstream`, summed over the shards.
    pub fn peer_totals(&self, upstream: &str, address: &str) -> Option<PeerTotals> {
        let u = self.upstreams.iter().find(|u| u.name == upstream)?;
        let p = u.peers.iter().find(|p| p.address == address)?;
        let mut t = PeerTotals::default();
        let mut hist = super::HistogramSnapshot::default();
        for m in &p.per_shard {
            t.requests += m.requests.get();
            t.failures += m.failures.iter().map(|c| c.get()).sum::<u64>();
            t.active += m.active_requests.get();
            m.response_seconds.add_to(&mut hist);
        }
        let n = hist.count();
        t.mean_response_seconds = (n > 0).then(|| hist.sum_nanos as f64 / 1e9 / n as f64);
        let (mut w, mut wn) = (0.0, 0u32);
        for m in &p.per_shard {
            t.max_conns += m.max_conns.get();
            t.saturated += m.saturated.get();
            t.rate_limited += m.rate_limited.get();
            if let Some(x) = m.slow_start_weight.get() {
                w += x;
                wn += 1;
            }
        }
        t.slow_start_weight = (wn > 0).then(|| w / f64::from(wn));
        Some(t)
    }

    /// The queue and rate-limit counts of `upstream`, summed over the shards.
    pub fn upstream_totals(&self, upstream: &str) -> Option<UpstreamTotals> {
        let u = self.upstreams.iter().find(|u| u.name == upstream)?;
        let mut t = UpstreamTotals::default();
        let mut hist = super::HistogramSnapshot::default();
        for m in &u.per_shard {
            t.queue_length += m.queue_length.get();
            t.queue_overflows += m.queue_overflows.get();
            t.queue_timeouts += m.queue_timeouts.get();
            t.rate_limited += m.rate_limited.get();
            t.client_rate_limited += m.client_rate_limited.get();
            m.queue_wait_seconds.add_to(&mut hist);
        }
        t.queued = hist.count();
        t.mean_queue_wait_seconds =
            (t.queued > 0).then(|| hist.sum_nanos as f64 / 1e9 / t.queued as f64);
        Some(t)
    }
}

/// One new, zeroed `T` per shard.
fn fresh<T: Default>(shards: usize) -> Vec<Arc<T>> {
    (0..shards).map(|_| Arc::default()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_handle_set_per_shard_in_the_order_given() {
        let mut r = Registry::new(3);
        let h = r.reconcile(&[("a", vec!["p1", "p2"]), ("b", vec!["p3"])]);
        assert_eq!(h.len(), 3);
        for shard in &h {
            assert_eq!(shard.upstreams.len(), 2);
            assert_eq!(shard.upstreams[0].peers.len(), 2);
            assert_eq!(shard.upstreams[1].peers.len(), 1);
        }
        // Every shard writes its own memory.
        assert!(!Arc::ptr_eq(&h[0].shard, &h[1].shard));
        assert!(!Arc::ptr_eq(
            &h[0].upstreams[0].peers[0],
            &h[1].upstreams[0].peers[0]
        ));
        assert!(!Arc::ptr_eq(
            &h[0].upstreams[0].peers[0],
            &h[0].upstreams[0].peers[1]
        ));
    }

    #[test]
    fn reconcile_keeps_survivors_and_drops_removed_peers() {
        let mut r = Registry::new(2);
        let h = r.reconcile(&[("a", vec!["p1", "p2"]), ("gone", vec!["p9"])]);
        h[0].upstreams[0].metrics.requests.add(5);
        h[1].upstreams[0].peers[1].requests.add(7);
        h[0].upstreams[0].peers[0].requests.add(3);
        h[0].upstreams[1].peers[0].requests.add(1);
        h[0].shard.requests.add(11);
        let old_p1 = Arc::downgrade(&h[0].upstreams[0].peers[0]);
        let old_gone = Arc::downgrade(&h[0].upstreams[1].peers[0]);
        drop(h);

        // p2 survives (now listed first), p1 and "gone" are removed, p4 is new.
        let h = r.reconcile(&[("a", vec!["p2", "p4"])]);
        assert_eq!(h[1].upstreams[0].peers[0].requests.get(), 7);
        assert_eq!(h[0].upstreams[0].peers[1].requests.get(), 0);
        assert_eq!(h[0].upstreams[0].metrics.requests.get(), 5);
        assert_eq!(h[0].shard.requests.get(), 11);
        // Nothing holds the removed peers' memory any more.
        assert!(old_p1.upgrade().is_none());
        assert!(old_gone.upgrade().is_none());
        assert_eq!(r.upstreams.len(), 1);
        let addresses: Vec<&str> = r.upstreams[0]
            .peers
            .iter()
            .map(|p| p.address.as_str())
            .collect();
        assert_eq!(addresses, ["p2", "p4"]);

        // A removed peer that comes back starts from zero.
        let h = r.reconcile(&[("a", vec!["p1"])]);
        assert_eq!(h[0].upstreams[0].peers[0].requests.get(), 0);
    }

    #[test]
    fn a_peer_moved_to_another_upstream_is_a_new_series() {
        let mut r = Registry::new(1);
        let h = r.reconcile(&[("a", vec!["p"])]);
        h[0].upstreams[0].peers[0].requests.inc();
        let h = r.reconcile(&[("b", vec!["p"])]);
        assert_eq!(h[0].upstreams[0].peers[0].requests.get(), 0);
    }

    #[test]
    fn a_name_listed_twice_shares_one_set() {
        let mut r = Registry::new(1);
        let h = r.reconcile(&[("a", vec!["p", "p"]), ("a", vec!["q"])]);
        let a = &h[0].upstreams;
        assert!(Arc::ptr_eq(&a[0].peers[0], &a[0].peers[1]));
        assert!(Arc::ptr_eq(&a[0].metrics, &a[1].metrics));
        assert_eq!(r.upstreams.len(), 1);
        assert_eq!(r.upstreams[0].peers.len(), 2);
    }
}

//! Backend protection inside one shard: each peer's share of `max_conns` and of its `rate`
//! bucket, its slow-start ramp, the group's FIFO queue of requests waiting for a peer, the
//! group's own bucket and the per-client buckets (bounded LRU).
//!
//! Every limit is split across shards without any shared state (invariant 1): shard `s` of
//! `n` owns [`Share::part`] of a total, `total / n` plus one of the `total % n` remainder
//! units, which go to the shards `salt, salt + 1, …` (mod `n`) where the salt is the peer's
//! index; the parts always add up to the total, and the remainders of different peers land on
//! different shards. A shard whose part of a peer's `max_conns` is 0 never sends it anything
//! (with `max_conns` below the shard count some shards skip the peer: set `max_conns` to at
//! least the number of shards). Rates split evenly (`R / n` per second per shard); a bucket's
//! capacity is the shard's part of `burst`, at least one token so that no shard is starved.
//!
//! Slow start never rebuilds a selector (invariant 4): a ramping peer's candidacy is admitted
//! with probability `elapsed / slow_start` (at least [`RAMP_FLOOR`]), so its share of the
//! selections scales with its effective weight `weight × elapsed / slow_start`, whatever the
//! algorithm; a selection that finds nothing else still takes it ([`UpstreamGroup::select`]
//! asks again without the ramp).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::config::{PeerLimits, QueueConfig, RateConfig};

/// RAMP_FLOOR is the smallest admission probability of a slow-starting peer: its effective
/// weight right after it came back is this fraction of its weight ("~0").
pub(crate) const RAMP_FLOOR: f64 = 0.02;

/// Share is which shard of how many this replica runs in: what its part of a limit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Share {
    /// This shard's index.
    pub index: usize,
    /// How many shards run.
    pub count: usize,
}

impl Share {
    /// The only shard (tests, and the per-shard one-peer groups of transparent mode).
    pub const SINGLE: Share = Share { index: 0, count: 1 };

    /// This shard's part of `total`: `total / count`, plus one when this shard is among the
    /// `total % count` shards starting at `salt` (mod `count`). The parts of all shards sum to
    /// `total`.
    pub fn part(self, total: u64, salt: usize) -> u64 {
        let n = self.count.max(1) as u64;
        let extra = total % n;
        let pos = (self.index as u64 + n - (salt as u64 % n)) % n;
        total / n + u64::from(pos < extra)
    }
}

/// TokenBucket is one shard's part of a `rate`: refilled continuously at `per_sec`, holding at
/// most `capacity` tokens, starting full. A request takes one token.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    /// Tokens now (as of `at`).
    tokens: Cell<f64>,
    /// When `tokens` was last brought up to date.
    at: Cell<Instant>,
    /// Refill per second.
    per_sec: f64,
    /// Most tokens held.
    capacity: f64,
}

impl TokenBucket {
    /// This shard's part of `rate` (salted like [`Share::part`]).
    pub fn new(rate: RateConfig, share: Share, salt: usize, now: Instant) -> TokenBucket {
        let capacity = share.part(u64::from(rate.burst), salt).max(1) as f64;
        TokenBucket {
            tokens: Cell::new(capacity),
            at: Cell::new(now),
            per_sec: rate.requests_per_sec / share.count.max(1) as f64,
            capacity,
        }
    }

    /// Tokens now.
    #[inline]
    fn refill(&self, now: Instant) -> f64 {
        if now == self.at.get() {
            // Asked again within one selection (same `now`): nothing to add.
            return self.tokens.get();
        }
        let dt = now.saturating_duration_since(self.at.get()).as_secs_f64();
        let t = (self.tokens.get() + dt * self.per_sec).min(self.capacity);
        self.tokens.set(t);
        self.at.set(now.max(self.at.get()));
        t
    }

    /// Whether a token is there (without taking it).
    #[inline]
    pub fn ready(&self, now: Instant) -> bool {
        self.refill(now) >= 1.0
    }

    /// Takes a token if there is one.
    #[inline]
    pub fn take(&self, now: Instant) -> bool {
        let t = self.refill(now);
        if t >= 1.0 {
            self.tokens.set(t - 1.0);
            true
        } else {
            false
        }
    }

    /// Gives back a token taken for a request that then found no peer.
    pub fn give_back(&self) {
        self.tokens
            .set((self.tokens.get() + 1.0).min(self.capacity));
    }

    /// How long until the next token is there.
    pub fn until_ready(&self, now: Instant) -> Duration {
        let missing = 1.0 - self.refill(now);
        if missing <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(missing / self.per_sec)
    }
}

/// PeerGuard is one peer's protection in one shard.
#[derive(Debug)]
pub(crate) struct PeerGuard {
    /// This shard's part of `max_conns`; `None`: no limit.
    pub max_conns: Option<u32>,
    /// This shard's part of `rate`.
    pub bucket: Option<TokenBucket>,
    /// The ramp length (`slow_start_ms`).
    pub slow_start: Option<Duration>,
    /// When the current ramp began (`None`: not ramping).
    pub ramp_since: Cell<Option<Instant>>,
}

impl PeerGuard {
    /// The guard of a peer with `limits`, `salt` its index in the group.
    pub fn new(limits: &PeerLimits, share: Share, salt: usize, now: Instant) -> PeerGuard {
        PeerGuard {
            max_conns: limits
                .max_conns
                .map(|n| share.part(u64::from(n), salt) as u32),
            bucket: limits.rate.map(|r| TokenBucket::new(r, share, salt, now)),
            slow_start: limits.slow_start,
            ramp_since: Cell::new(None),
        }
    }

    /// Whether the peer has room for one more request with `active` in flight.
    #[inline]
    pub fn has_room(&self, active: u32) -> bool {
        self.max_conns.is_none_or(|max| active < max)
    }

    /// Starts the slow-start ramp (the peer came back), if the peer has one.
    pub fn begin_ramp(&self, now: Instant) {
        if self.slow_start.is_some() {
            self.ramp_since.set(Some(now));
        }
    }

    /// The fraction of its weight the peer has now: 1 unless ramping.
    pub fn ramp(&self, now: Instant) -> f64 {
        let (Some(since), Some(len)) = (self.ramp_since.get(), self.slow_start) else {
            return 1.0;
        };
        let f = now.saturating_duration_since(since).as_secs_f64() / len.as_secs_f64();
        if f >= 1.0 {
            self.ramp_since.set(None);
            return 1.0;
        }
        f.max(RAMP_FLOOR)
    }
}

/// Waiter is one request waiting in a [`Queue`].
#[derive(Debug, Default)]
pub(crate) struct Waiter {
    /// Set when the waiter should look for a peer again.
    woken: Cell<bool>,
    /// The task to wake.
    waker: RefCell<Option<Waker>>,
}

/// Queue is one group's FIFO of requests waiting for a peer with room, in one shard. Only the
/// head is woken when a slot frees; a waiter that finds a peer leaves and wakes the next, so
/// requests leave in the order they came, and a new request queues behind the waiting ones.
#[derive(Debug)]
pub(crate) struct Queue {
    /// `queue = { max, timeout_ms }`.
    pub cfg: QueueConfig,
    /// The waiters, oldest first.
    waiters: RefCell<VecDeque<Rc<Waiter>>>,
}

impl Queue {
    /// An empty queue.
    pub fn new(cfg: QueueConfig) -> Queue {
        Queue {
            cfg,
            waiters: RefCell::new(VecDeque::new()),
        }
    }

    /// Requests waiting now.
    #[inline]
    pub fn len(&self) -> usize {
        self.waiters.borrow().len()
    }

    /// Whether no request waits.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.waiters.borrow().is_empty()
    }

    /// Adds a waiter at the back; `None` when the queue is full.
    pub fn join(&self) -> Option<Rc<Waiter>> {
        let mut w = self.waiters.borrow_mut();
        if w.len() >= self.cfg.max {
            return None;
        }
        let waiter = Rc::new(Waiter::default());
        if w.is_empty() {
            waiter.woken.set(true); // the head looks at once
        }
        w.push_back(waiter.clone());
        Some(waiter)
    }

    /// Whether `w` is the oldest waiter.
    pub fn is_head(&self, w: &Rc<Waiter>) -> bool {
        self.waiters
            .borrow()
            .front()
            .is_some_and(|h| Rc::ptr_eq(h, w))
    }

    /// Removes `w` (it found a peer, timed out or went away) and wakes the next head.
    pub fn leave(&self, w: &Rc<Waiter>) {
        let mut q = self.waiters.borrow_mut();
        if let Some(i) = q.iter().position(|x| Rc::ptr_eq(x, w)) {
            q.remove(i);
        }
        drop(q);
        self.wake_head();
    }

    /// Wakes the oldest waiter to look for a peer again (a slot freed, a peer came back).
    pub fn wake_head(&self) {
        let q = self.waiters.borrow();
        if let Some(h) = q.front() {
            h.woken.set(true);
            if let Some(w) = h.waker.borrow_mut().take() {
                w.wake();
            }
        }
    }

    /// Waits until `w` is woken (the caller bounds it with a timer).
    pub fn woken<'a>(&'a self, w: &'a Rc<Waiter>) -> Woken<'a> {
        Woken { w }
    }
}

/// Woken is the future of [`Queue::woken`]: ready once the waiter was woken (and resets it).
pub(crate) struct Woken<'a> {
    /// The waiter.
    w: &'a Rc<Waiter>,
}

impl Future for Woken<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.w.woken.replace(false) {
            return Poll::Ready(());
        }
        *self.w.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// ClientBuckets is the per-client `rate` of a group in one shard: a bucket per key hash, at
/// most `max_keys` of them; the least recently used is forgotten first, so a flood of keys
/// costs bounded memory (a forgotten key starts again with a full bucket).
pub(crate) struct ClientBuckets {
    /// The rate of every bucket.
    rate: RateConfig,
    /// This shard.
    share: Share,
    /// Key hash → bucket.
    buckets: RefCell<lru::LruCache<u64, TokenBucket>>,
}

impl ClientBuckets {
    /// Empty buckets for `rate`, at most `max_keys`.
    pub fn new(rate: RateConfig, max_keys: usize, share: Share) -> ClientBuckets {
        ClientBuckets {
            rate,
            share,
            buckets: RefCell::new(lru::LruCache::new(
                NonZeroUsize::new(max_keys).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    /// Takes a token for the client whose key hashes to `key`; when its bucket is empty (the
    /// request gets 429), `Err` with how long until its next token.
    pub fn take(&self, key: u64, now: Instant) -> Result<(), Duration> {
        let mut b = self.buckets.borrow_mut();
        let bucket = match b.get(&key) {
            Some(bucket) => bucket,
            None => {
                b.put(
                    key,
                    TokenBucket::new(self.rate, self.share, key as usize, now),
                );
                b.get(&key).expect("just put")
            }
        };
        match bucket.take(now) {
            true => Ok(()),
            false => Err(bucket.until_ready(now)),
        }
    }

    /// Keys tracked now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.buckets.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_add_up_and_spread_remainders() {
        for count in 1..6 {
            for total in 0..20u64 {
                for salt in 0..4 {
                    let sum: u64 = (0..count)
                        .map(|index| Share { index, count }.part(total, salt))
                        .sum();
                    assert_eq!(sum, total, "total {total} over {count} salt {salt}");
                }
            }
        }
        let s = |index| Share { index, count: 2 };
        // 3 over 2 shards: peer 0's extra unit on shard 0, peer 1's on shard 1.
        assert_eq!((s(0).part(3, 0), s(1).part(3, 0)), (2, 1));
        assert_eq!((s(0).part(3, 1), s(1).part(3, 1)), (1, 2));
    }

    #[test]
    fn bucket_refills_at_its_share_of_the_rate() {
        let t0 = Instant::now();
        let rate = RateConfig {
            requests_per_sec: 10.0,
            burst: 4,
        };
        let b = TokenBucket::new(rate, Share { index: 0, count: 2 }, 0, t0);
        assert!((0..2).all(|_| b.take(t0)), "capacity 2 of burst 4");
        assert!(!b.take(t0));
        // 5/s per shard: one token every 200 ms.
        assert_eq!(b.until_ready(t0), Duration::from_millis(200));
        assert!(!b.take(t0 + Duration::from_millis(150)));
        assert!(b.take(t0 + Duration::from_millis(210)));
        assert!(!b.ready(t0 + Duration::from_millis(210)));
        // Never more than the capacity.
        let later = t0 + Duration::from_secs(60);
        assert!((0..2).all(|_| b.take(later)));
        assert!(!b.take(later));
    }

    #[test]
    fn queue_is_fifo_and_bounded() {
        let q = Queue::new(QueueConfig {
            max: 2,
            timeout: Duration::from_secs(1),
            retry_after_s: 1,
        });
        let a = q.join().unwrap();
        let b = q.join().unwrap();
        assert!(q.join().is_none(), "full");
        assert!(q.is_head(&a) && !q.is_head(&b));
        assert!(a.woken.get(), "the first waiter looks at once");
        assert!(!b.woken.get());
        q.leave(&a);
        assert!(q.is_head(&b) && b.woken.get(), "the next one is woken");
        q.leave(&b);
        assert!(q.is_empty());
    }

    #[test]
    fn client_buckets_are_bounded() {
        let t0 = Instant::now();
        let rate = RateConfig {
            requests_per_sec: 1.0,
            burst: 1,
        };
        let c = ClientBuckets::new(rate, 3, Share::SINGLE);
        assert_eq!(c.take(1, t0), Ok(()));
        assert_eq!(
            c.take(1, t0),
            Err(Duration::from_secs(1)),
            "key 1 spent its token; the next is 1 s away"
        );
        let half = t0 + Duration::from_millis(500);
        assert_eq!(c.take(1, half), Err(Duration::from_millis(500)));
        for k in 2..100 {
            assert_eq!(c.take(k, half), Ok(()));
        }
        assert_eq!(c.len(), 3);
        assert_eq!(
            c.take(1, half),
            Ok(()),
            "key 1 was forgotten and starts full"
        );
    }

    #[test]
    fn ramp_rises_linearly_and_ends() {
        let t0 = Instant::now();
        let limits = PeerLimits {
            slow_start: Some(Duration::from_millis(1000)),
            ..PeerLimits::default()
        };
        let g = PeerGuard::new(&limits, Share::SINGLE, 0, t0);
        assert_eq!(g.ramp(t0), 1.0, "not ramping until it comes back");
        g.begin_ramp(t0);
        assert_eq!(g.ramp(t0), RAMP_FLOOR);
        assert!((g.ramp(t0 + Duration::from_millis(250)) - 0.25).abs() < 1e-9);
        assert!((g.ramp(t0 + Duration::from_millis(750)) - 0.75).abs() < 1e-9);
        assert_eq!(g.ramp(t0 + Duration::from_millis(1000)), 1.0);
        assert_eq!(g.ramp_since.get(), None);
    }
}

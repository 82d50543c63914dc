//! Parking: the deadlines of a shard's parked connections, kept in one ordered map and served
//! by one timer.
//!
//! A parked connection (see `serve`) waits for readiness until its idle (or first-request)
//! deadline. A timer of its own would cost a monoio `Sleep` (some 600 bytes) in every parked
//! connection's task; instead each one files `(deadline, waker)` here — about 40 bytes — and
//! one reaper task per shard sleeps until the earliest deadline and wakes whoever's passed.
//! Shutdown ([`Parking::close`]) wakes every parked connection at once. Nothing ticks: with
//! nobody parked the reaper sleeps until someone parks.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::control::Notify;

/// Parking is one shard's parked-connection deadlines (see the module docs).
#[derive(Default)]
pub(crate) struct Parking {
    /// Waiting connections by (deadline, sequence number).
    waiting: RefCell<BTreeMap<(Instant, u64), Waker>>,
    /// The next sequence number (makes keys unique).
    seq: Cell<u64>,
    /// The deadline the reaper sleeps until (`None`: no deadline, it waits for a filing).
    armed: Cell<Option<Instant>>,
    /// Wakes the reaper when a deadline earlier than `armed` is filed, or at close.
    reaper: Notify,
    /// Set by [`Parking::close`]: every wait ends, now and from now on.
    closed: Cell<bool>,
    /// When the reaper next hands freed memory back to the OS ([`Parking::release_soon`]).
    release_at: Cell<Option<Instant>>,
}

/// How long after connections gave buffers up the reaper returns freed memory to the OS:
/// long enough that a burst of traffic is over (and reuses what it freed meanwhile).
const RELEASE_AFTER: Duration = Duration::from_secs(1);

impl Parking {
    /// A future that completes at `until`, or when the shard closes parking (shutdown).
    pub fn wait(&self, until: Instant) -> ParkWait<'_> {
        ParkWait {
            parking: self,
            until,
            key: None,
        }
    }

    /// Asks the reaper to return the memory this thread freed to the OS in a moment
    /// (connections gave up buffers the pool does not keep). The allocator (mimalloc) keeps
    /// freed pages for reuse and purges them only on later allocator activity, which an
    /// idle shard has none of; without this, a burst of connections that then all park
    /// would leave their buffers' pages resident.
    pub fn release_soon(&self) {
        if self.release_at.get().is_some() {
            return;
        }
        let at = Instant::now() + RELEASE_AFTER;
        self.release_at.set(Some(at));
        if self.armed.get().is_none_or(|armed| at < armed) {
            self.armed.set(Some(at));
            self.reaper.notify_all();
        }
    }

    /// Ends every wait (shutdown) and stops the reaper.
    pub fn close(&self) {
        if self.closed.replace(true) {
            return;
        }
        let waiting = std::mem::take(&mut *self.waiting.borrow_mut());
        for w in waiting.into_values() {
            w.wake();
        }
        self.reaper.notify_all();
    }

    /// The reaper: sleeps until the earliest filed deadline (or a filing earlier than that),
    /// then wakes every connection whose deadline passed. Returns once parking is closed.
    /// `before_release` runs just before freed memory goes back to the OS (the shard drops
    /// its pooled spares there: a kept spare's buffers would pin whole allocator pages).
    pub async fn run(&self, before_release: impl Fn()) {
        while !self.closed.get() {
            let first = self.waiting.borrow().keys().next().map(|k| k.0);
            let first = match (first, self.release_at.get()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            self.armed.set(first);
            let filed = self.reaper.notified();
            match first {
                None => filed.await,
                Some(t) => {
                    let left = t.saturating_duration_since(Instant::now());
                    monoio::select! {
                        _ = monoio::time::sleep(left) => {},
                        _ = filed => {},
                    }
                }
            }
            let now = Instant::now();
            if self.release_at.get().is_some_and(|at| at <= now) {
                self.release_at.set(None);
                before_release();
                release_freed_memory();
            }
            let mut waiting = self.waiting.borrow_mut();
            while let Some(entry) = waiting.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                entry.remove().wake();
            }
        }
    }

    /// Connections currently filed (for tests).
    #[cfg(test)]
    fn filed(&self) -> usize {
        self.waiting.borrow().len()
    }
}

/// Returns the pages this thread freed to mimalloc back to the OS (`mi_collect(true)`: every
/// free page, not only those whose purge delay passed; it runs at most once a second, after a
/// burst). When the process's allocator is another one this collects mimalloc's own, empty,
/// heap: a no-op.
fn release_freed_memory() {
    // SAFETY: mi_collect takes no pointers; it only walks this thread's mimalloc heap.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// ParkWait is the future returned by [`Parking::wait`].
pub(crate) struct ParkWait<'a> {
    /// Where the deadline is filed.
    parking: &'a Parking,
    /// The deadline.
    until: Instant,
    /// The filing's key, once filed.
    key: Option<(Instant, u64)>,
}

impl Future for ParkWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let parking = self.parking;
        if parking.closed.get() || Instant::now() >= self.until {
            if let Some(key) = self.key.take() {
                parking.waiting.borrow_mut().remove(&key);
            }
            return Poll::Ready(());
        }
        let mut waiting = parking.waiting.borrow_mut();
        match self.key {
            Some(key) => match waiting.get_mut(&key) {
                Some(w) if w.will_wake(cx.waker()) => {}
                Some(w) => *w = cx.waker().clone(),
                // Woken by the reaper at a deadline rounded earlier than ours: file again.
                None => {
                    waiting.insert(key, cx.waker().clone());
                }
            },
            None => {
                let seq = parking.seq.get();
                parking.seq.set(seq.wrapping_add(1));
                let key = (self.until, seq);
                waiting.insert(key, cx.waker().clone());
                self.key = Some(key);
                if parking.armed.get().is_none_or(|armed| self.until < armed) {
                    parking.armed.set(Some(self.until));
                    parking.reaper.notify_all();
                }
            }
        }
        Poll::Pending
    }
}

impl Drop for ParkWait<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            if let Ok(mut waiting) = self.parking.waiting.try_borrow_mut() {
                waiting.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    fn rt() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
    }

    #[test]
    fn waits_end_at_their_deadlines_in_order_with_one_reaper() {
        rt().block_on(async {
            let parking = Rc::new(Parking::default());
            let reaper = {
                let p = parking.clone();
                monoio::spawn(async move { p.run(|| {}).await })
            };
            let start = Instant::now();
            let ended = Rc::new(RefCell::new(Vec::new()));
            let mut tasks = Vec::new();
            // Filed latest first: each earlier filing re-arms the reaper.
            for ms in [120u64, 80, 40] {
                let (p, ended) = (parking.clone(), ended.clone());
                tasks.push(monoio::spawn(async move {
                    p.wait(start + Duration::from_millis(ms)).await;
                    ended.borrow_mut().push((ms, start.elapsed()));
                }));
            }
            for t in tasks {
                t.await;
            }
            let ended = ended.borrow().clone();
            assert_eq!(ended.iter().map(|e| e.0).collect::<Vec<_>>(), [40, 80, 120]);
            for (ms, at) in ended.iter() {
                assert!(
                    *at >= Duration::from_millis(*ms),
                    "{ms} ms wait ended at {at:?}"
                );
                assert!(
                    *at < Duration::from_millis(ms + 100),
                    "{ms} ms wait ended at {at:?}"
                );
            }
            assert_eq!(parking.filed(), 0);
            parking.close();
            reaper.await;
        });
    }

    #[test]
    fn a_dropped_wait_leaves_nothing_filed_and_close_ends_every_wait() {
        rt().block_on(async {
            let parking = Rc::new(Parking::default());
            let reaper = {
                let p = parking.clone();
                monoio::spawn(async move { p.run(|| {}).await })
            };
            let far = Instant::now() + Duration::from_secs(3600);
            // A wait that is given up (the connection became readable) unfiles itself.
            {
                let w = parking.wait(far);
                let _ = monoio::time::timeout(Duration::from_millis(5), w).await;
            }
            assert_eq!(parking.filed(), 0);
            let mut tasks = Vec::new();
            for _ in 0..10 {
                let p = parking.clone();
                tasks.push(monoio::spawn(async move { p.wait(far).await }));
            }
            monoio::time::sleep(Duration::from_millis(10)).await;
            assert_eq!(parking.filed(), 10);
            let t = Instant::now();
            parking.close();
            for task in tasks {
                task.await;
            }
            assert!(t.elapsed() < Duration::from_millis(100));
            reaper.await;
            // After close, a new wait ends at once.
            parking.wait(far).await;
        });
    }
}

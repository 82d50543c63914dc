//! A single-threaded notification: tasks of one thread (a shard, the control thread) wait until
//! another task of the same thread says something changed (a connection closed, shutdown began).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Waiters is the wakers of the tasks waiting on one notification, one slot per wait: a
/// wait registers (or refreshes) its waker in its own slot in O(1) and gives the slot back
/// when it is dropped, so any number of waits cost nothing per poll beyond their own, and a
/// wait that stops leaves nothing behind.
#[derive(Default)]
struct Waiters {
    /// The waiting tasks' wakers by slot; `None` is a free slot.
    slots: RefCell<Vec<Option<Waker>>>,
    /// Free slots.
    free: RefCell<Vec<usize>>,
}

impl Waiters {
    /// Registers `waker` for the wait whose slot is `slot` (taking a slot on its first poll).
    fn register(&self, slot: &mut Option<usize>, waker: &Waker) {
        let mut slots = self.slots.borrow_mut();
        match *slot {
            Some(i) => match &mut slots[i] {
                Some(w) if w.will_wake(waker) => {}
                s => *s = Some(waker.clone()),
            },
            None => {
                let i = match self.free.borrow_mut().pop() {
                    Some(i) => {
                        slots[i] = Some(waker.clone());
                        i
                    }
                    None => {
                        slots.push(Some(waker.clone()));
                        slots.len() - 1
                    }
                };
                *slot = Some(i);
            }
        }
    }

    /// Gives back a wait's slot (a wait that ended without the notification).
    fn release(&self, slot: usize) {
        if let Some(s) = self.slots.borrow_mut().get_mut(slot) {
            *s = None;
            self.free.borrow_mut().push(slot);
        }
    }

    /// Wakes every registered wait and frees every slot.
    fn wake_all(&self) {
        let slots = std::mem::take(&mut *self.slots.borrow_mut());
        self.free.borrow_mut().clear();
        for w in slots.into_iter().flatten() {
            w.wake();
        }
    }

    /// Waits currently registered (for tests).
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.slots.borrow().iter().filter(|s| s.is_some()).count()
    }
}

/// Notify wakes every task waiting on it when [`Notify::notify_all`] is called.
#[derive(Default)]
pub struct Notify {
    /// Bumped by every notification; a waiter is done once it differs from what it saw.
    epoch: Cell<u64>,
    /// The waits for the next notification.
    waiters: Waiters,
}

impl Notify {
    /// A future that completes at the next notification after this call.
    pub fn notified(&self) -> Notified<'_> {
        Notified {
            notify: self,
            epoch: self.epoch.get(),
            slot: None,
        }
    }

    /// Wakes every waiting task.
    pub fn notify_all(&self) {
        self.epoch.set(self.epoch.get().wrapping_add(1));
        self.waiters.wake_all();
    }
}

/// Notified is the future returned by [`Notify::notified`].
pub struct Notified<'a> {
    /// The notification waited on.
    notify: &'a Notify,
    /// Its epoch when the wait began.
    epoch: u64,
    /// This wait's slot among the waiters, once registered.
    slot: Option<usize>,
}

impl Future for Notified<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let notify = self.notify;
        if notify.epoch.get() != self.epoch {
            self.slot = None;
            return Poll::Ready(());
        }
        notify.waiters.register(&mut self.slot, cx.waker());
        Poll::Pending
    }
}

impl Drop for Notified<'_> {
    fn drop(&mut self) {
        // After a notification the slots were freed already (and may be someone else's now).
        if let Some(i) = self.slot {
            if self.notify.epoch.get() == self.epoch {
                self.notify.waiters.release(i);
            }
        }
    }
}

/// Signal is a one-shot notification many tasks may wait on, each in a slot it gives back
/// when its wait ends or is dropped: a waiter that stops waiting (a parked connection that
/// became readable) leaves nothing behind, so any number of waits over a long life cost
/// nothing until the signal fires.
#[derive(Default)]
pub struct Signal {
    /// Set by [`Signal::fire`].
    fired: Cell<bool>,
    /// The waits not ended yet.
    waiters: Waiters,
}

impl Signal {
    /// Fires the signal: every wait ends, now and from now on.
    pub fn fire(&self) {
        if self.fired.replace(true) {
            return;
        }
        self.waiters.wake_all();
    }

    /// A future that completes once the signal fired.
    pub fn wait(&self) -> SignalWait<'_> {
        SignalWait {
            signal: self,
            slot: None,
        }
    }
}

/// SignalWait is the future returned by [`Signal::wait`].
pub struct SignalWait<'a> {
    /// The signal waited on.
    signal: &'a Signal,
    /// The slot holding this wait's waker, once registered.
    slot: Option<usize>,
}

impl Future for SignalWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let signal = self.signal;
        if signal.fired.get() {
            self.slot = None;
            return Poll::Ready(());
        }
        signal.waiters.register(&mut self.slot, cx.waker());
        Poll::Pending
    }
}

impl Drop for SignalWait<'_> {
    fn drop(&mut self) {
        let Some(i) = self.slot else { return };
        if self.signal.fired.get() {
            return;
        }
        self.signal.waiters.release(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_dropped_wait_gives_its_slot_back_and_fire_wakes_the_rest() {
        let signal = Signal::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        // A thousand waits that end without the signal leave no slot behind.
        for _ in 0..1000 {
            let mut w = Box::pin(signal.wait());
            assert!(w.as_mut().poll(&mut cx).is_pending());
            drop(w);
        }
        assert_eq!(signal.waiters.waiting(), 0);
        assert!(signal.waiters.slots.borrow().len() <= 1, "slots are reused");
        let mut a = Box::pin(signal.wait());
        let mut b = Box::pin(signal.wait());
        assert!(a.as_mut().poll(&mut cx).is_pending());
        assert!(b.as_mut().poll(&mut cx).is_pending());
        assert_eq!(signal.waiters.waiting(), 2);
        signal.fire();
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        assert!(a.as_mut().poll(&mut cx).is_ready());
        assert!(b.as_mut().poll(&mut cx).is_ready());
        // A wait begun after the signal fired ends at once.
        assert!(Box::pin(signal.wait()).as_mut().poll(&mut cx).is_ready());
    }

    #[test]
    fn notify_waits_take_one_slot_each_and_give_it_back() {
        let notify = Notify::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        // Waits polled again and again, then dropped, leave nothing listed.
        for _ in 0..1000 {
            let mut w = Box::pin(notify.notified());
            for _ in 0..3 {
                assert!(w.as_mut().poll(&mut cx).is_pending());
            }
            drop(w);
        }
        assert_eq!(notify.waiters.waiting(), 0);
        assert!(notify.waiters.slots.borrow().len() <= 1, "slots are reused");
        let mut a = Box::pin(notify.notified());
        let mut b = Box::pin(notify.notified());
        assert!(a.as_mut().poll(&mut cx).is_pending());
        assert!(b.as_mut().poll(&mut cx).is_pending());
        assert_eq!(notify.waiters.waiting(), 2);
        notify.notify_all();
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        assert!(a.as_mut().poll(&mut cx).is_ready());
        // A wait of the next epoch takes a slot; dropping `b` (of the old epoch, its slot
        // freed by the notification) must not free it.
        let mut c = Box::pin(notify.notified());
        assert!(c.as_mut().poll(&mut cx).is_pending());
        drop(b);
        assert_eq!(notify.waiters.waiting(), 1);
        notify.notify_all();
        assert_eq!(count.0.load(Ordering::Relaxed), 3);
        assert!(c.as_mut().poll(&mut cx).is_ready());
    }
}

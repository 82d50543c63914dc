//! A single-threaded notification: tasks of one thread (a shard, the control thread) wait until
//! another task of the same thread says something changed (a connection closed, shutdown began).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Notify wakes every task waiting on it when [`Notify::notify_all`] is called.
#[derive(Default)]
pub struct Notify {
    /// Bumped by every notification; a waiter is done once it differs from what it saw.
    epoch: Cell<u64>,
    /// Tasks waiting for the next notification.
    waiters: RefCell<Vec<Waker>>,
}

impl Notify {
    /// A future that completes at the next notification after this call.
    pub fn notified(&self) -> Notified<'_> {
        Notified {
            notify: self,
            epoch: self.epoch.get(),
        }
    }

    /// Wakes every waiting task.
    pub fn notify_all(&self) {
        self.epoch.set(self.epoch.get().wrapping_add(1));
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in waiters {
            w.wake();
        }
    }
}

/// Notified is the future returned by [`Notify::notified`].
pub struct Notified<'a> {
    /// The notification waited on.
    notify: &'a Notify,
    /// Its epoch when the wait began.
    epoch: u64,
}

impl Future for Notified<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.epoch.get() != self.epoch {
            return Poll::Ready(());
        }
        let mut waiters = self.notify.waiters.borrow_mut();
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Signal is a one-shot notification many tasks may wait on, each in a slot it gives back
/// when its wait ends or is dropped: a waiter that stops waiting (a parked connection that
/// became readable) leaves nothing behind, so any number of waits over a long life cost
/// nothing until the signal fires. (A [`Notify`] waiter stays listed until the next
/// notification, which suits a few loops but not one wait per idle connection.)
#[derive(Default)]
pub struct Signal {
    /// Set by [`Signal::fire`].
    fired: Cell<bool>,
    /// The waiting tasks' wakers by slot; `None` is a free slot.
    slots: RefCell<Vec<Option<Waker>>>,
    /// Free slots.
    free: RefCell<Vec<usize>>,
}

impl Signal {
    /// Fires the signal: every wait ends, now and from now on.
    pub fn fire(&self) {
        if self.fired.replace(true) {
            return;
        }
        let slots = std::mem::take(&mut *self.slots.borrow_mut());
        self.free.borrow_mut().clear();
        for w in slots.into_iter().flatten() {
            w.wake();
        }
    }

    /// A future that completes once the signal fired.
    pub fn wait(&self) -> SignalWait<'_> {
        SignalWait {
            signal: self,
            slot: None,
        }
    }

    /// Waits currently registered (for tests).
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.slots.borrow().iter().filter(|s| s.is_some()).count()
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
        let mut slots = signal.slots.borrow_mut();
        match self.slot {
            Some(i) => match &mut slots[i] {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            },
            None => {
                let i = match signal.free.borrow_mut().pop() {
                    Some(i) => {
                        slots[i] = Some(cx.waker().clone());
                        i
                    }
                    None => {
                        slots.push(Some(cx.waker().clone()));
                        slots.len() - 1
                    }
                };
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for SignalWait<'_> {
    fn drop(&mut self) {
        let Some(i) = self.slot else { return };
        if self.signal.fired.get() {
            return;
        }
        if let Some(slot) = self.signal.slots.borrow_mut().get_mut(i) {
            *slot = None;
            self.signal.free.borrow_mut().push(i);
        }
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
        assert_eq!(signal.waiting(), 0);
        assert!(signal.slots.borrow().len() <= 1, "slots are reused");
        let mut a = Box::pin(signal.wait());
        let mut b = Box::pin(signal.wait());
        assert!(a.as_mut().poll(&mut cx).is_pending());
        assert!(b.as_mut().poll(&mut cx).is_pending());
        assert_eq!(signal.waiting(), 2);
        signal.fire();
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        assert!(a.as_mut().poll(&mut cx).is_ready());
        assert!(b.as_mut().poll(&mut cx).is_ready());
        // A wait begun after the signal fired ends at once.
        assert!(Box::pin(signal.wait()).as_mut().poll(&mut cx).is_ready());
    }
}

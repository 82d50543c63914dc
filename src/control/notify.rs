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

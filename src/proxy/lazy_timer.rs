//! A deadline that moves later on every message without touching the timer wheel each time.
//!
//! A busy connection pushes its "quiet since" deadline forward once per message. Creating a
//! timer for every wait costs a clock read, a wheel insert and a wheel removal per message; a
//! [`LazyTimer`] keeps one registered timer instead and only records the new deadline. When
//! the timer fires at the old deadline it checks the recorded one, and if that lies later it
//! re-arms itself there (one wheel operation per quiet period, not per message). Moving the
//! deadline earlier re-arms at once, so the timer never fires late.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use monoio::time::Sleep;

/// One reusable timer whose deadline is set with [`LazyTimer::set`] and awaited with
/// [`LazyTimer::poll_due`].
pub(crate) struct LazyTimer {
    sleep: Pin<Box<Sleep>>,
    /// The deadline the timer is registered for.
    armed: Instant,
    /// The deadline it stands for: `armed` or later.
    due: Instant,
}

impl LazyTimer {
    /// A timer due at `due`.
    pub(crate) fn new(due: Instant) -> Self {
        LazyTimer {
            sleep: Box::pin(monoio::time::sleep_until(due.into())),
            armed: due,
            due,
        }
    }

    /// Makes the timer due at `due` (earlier or later than before).
    pub(crate) fn set(&mut self, due: Instant) {
        self.due = due;
        if due < self.armed {
            self.armed = due;
            self.sleep.as_mut().reset(due.into());
        }
    }

    /// Ready once the current deadline has passed.
    pub(crate) fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.armed >= self.due {
                return Poll::Ready(());
            }
            // Fired at a deadline that has moved on since: wait for the new one.
            self.armed = self.due;
            self.sleep.as_mut().reset(self.due.into());
        }
    }

    /// Completes once the current deadline has passed.
    pub(crate) fn wait(&mut self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| self.poll_due(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rt() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
    }

    #[test]
    fn fires_at_a_deadline_moved_later_not_at_the_first() {
        rt().block_on(async {
            let start = Instant::now();
            let mut t = LazyTimer::new(start + Duration::from_millis(30));
            t.set(start + Duration::from_millis(120));
            t.wait().await;
            let waited = start.elapsed();
            assert!(
                waited >= Duration::from_millis(120),
                "fired early: {waited:?}"
            );
            assert!(
                waited < Duration::from_millis(600),
                "fired late: {waited:?}"
            );
        });
    }

    #[test]
    fn fires_at_a_deadline_moved_earlier_without_waiting_for_the_first() {
        rt().block_on(async {
            let start = Instant::now();
            let mut t = LazyTimer::new(start + Duration::from_secs(30));
            t.set(start + Duration::from_millis(40));
            t.wait().await;
            let waited = start.elapsed();
            assert!(
                waited >= Duration::from_millis(40),
                "fired early: {waited:?}"
            );
            assert!(
                waited < Duration::from_secs(2),
                "kept the old deadline: {waited:?}"
            );
        });
    }

    #[test]
    fn is_reusable_after_it_fired() {
        rt().block_on(async {
            let start = Instant::now();
            let mut t = LazyTimer::new(start + Duration::from_millis(20));
            t.wait().await;
            let second = Instant::now() + Duration::from_millis(60);
            t.set(second);
            t.wait().await;
            assert!(
                Instant::now() >= second,
                "a fired timer did not wait for its new deadline"
            );
        });
    }
}

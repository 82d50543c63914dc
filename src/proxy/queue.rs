//! Waiting in an upstream's queue (`queue = { max, timeout_ms }`) while every eligible peer is
//! at its `max_conns` or out of `rate` tokens.
//!
//! A request joins at the back ([`Place`]); the group wakes the oldest waiter when a slot frees
//! or a peer comes back, and the oldest also looks again when the next `rate` token is due. A
//! waiter that gets a peer leaves, which wakes the next, so requests leave in the order they
//! came. A full queue or a wait past `timeout_ms` is a 503 with `Retry-After`.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::http::HttpError;
use crate::upstream::UpstreamGroup;

/// Place is a request's place in its group's queue; dropping it leaves the queue.
pub(super) struct Place<'a> {
    /// The group queued at.
    group: &'a UpstreamGroup,
    /// The waiter in the group's queue.
    waiter: Rc<crate::upstream::Waiter>,
    /// When the request joined.
    since: Instant,
}

impl Place<'_> {
    /// Leaves the queue because the request got a peer: its wait counts in the histogram.
    pub fn served(self, now: Instant) {
        self.group
            .metrics
            .queue_wait_seconds
            .observe(now.saturating_duration_since(self.since));
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.group.queue.leave(&self.waiter);
        self.group
            .metrics
            .queue_length
            .set(self.group.queue.len() as u64);
    }
}

/// Waits in `group`'s queue until this request should look for a peer again: joins first when
/// `place` is empty (a full queue: 503), then waits to be woken; the oldest waiter also wakes
/// for the next `rate` token. Past `queue.timeout_ms` since joining: 503.
pub(super) async fn wait_turn<'a>(
    group: &'a UpstreamGroup,
    place: &mut Option<Place<'a>>,
) -> Result<(), HttpError> {
    let now = Instant::now();
    let timeout = group.queue.cfg.timeout;
    let retry_after = group.queue.cfg.retry_after_s;
    if place.is_none() {
        let Some(waiter) = group.queue.join() else {
            group.metrics.queue_overflows.inc();
            return Err(HttpError::Overloaded("upstream queue is full", retry_after));
        };
        group.metrics.queue_length.set(group.queue.len() as u64);
        *place = Some(Place {
            group,
            waiter,
            since: now,
        });
    }
    let Some(p) = place.as_ref() else {
        return Err(HttpError::Overloaded("upstream queue is full", retry_after));
    };
    let deadline = p.since + timeout;
    let left = deadline.saturating_duration_since(now);
    if left.is_zero() {
        group.metrics.queue_timeouts.inc();
        *place = None;
        return Err(HttpError::Overloaded(
            "timed out in the upstream queue",
            retry_after,
        ));
    }
    let wait = match group.queue.is_head(&p.waiter) {
        // At least a millisecond: a token due "now" may still be a rounding error away.
        true => group
            .next_token_in(now)
            .map_or(left, |t| t.max(Duration::from_millis(1)).min(left)),
        false => left,
    };
    let woken = monoio::time::timeout(wait, group.queue.woken(&p.waiter))
        .await
        .is_ok();
    if !woken && Instant::now() >= deadline {
        group.metrics.queue_timeouts.inc();
        *place = None;
        return Err(HttpError::Overloaded(
            "timed out in the upstream queue",
            retry_after,
        ));
    }
    Ok(())
}

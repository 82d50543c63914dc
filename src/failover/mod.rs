//! Failover: the retry policy, exponential backoff, the per-shard retry budget, the per-peer
//! circuit breaker, and the failure hooks pickers may implement.
//!
//! Everything here is pure logic over shard-local state: no I/O, no clocks (every function
//! takes `now`), no randomness of its own (a `fastrand::Rng` is passed in), no atomics or
//! locks (invariant 1). The request loop in `src/proxy/` drives it.
//!
//! # How the request loop uses it
//!
//! Per upstream group per shard: one `Retrier` (policy + `RetryBudget` + jitter) and, when
//! the upstream has `circuit_breaker = { … }`, one `CircuitBreaker` per peer. Per request:
//!
//! ```text
//! retrier.record_request(now);
//! let deadline = policy.request_deadline(start);
//! let mut ctx = TryContext::new(idempotent, has_idempotency_key);  (plain facts, not the head)
//! loop {
//!     peer = select an eligible peer not in `tried` (breaker.would_allow(now) is part of
//!            eligibility); none at all → 503 with Retry-After
//!     ticket = breaker.allow(now)        (None → mark tried, select again; report transition)
//!     run the try with deadline policy.try_deadline(now, deadline)
//!     success (a response that is not a `Failure`) → breaker.on_success(ticket), done
//!     failure →
//!         breaker.on_failure(ticket) if failure.is_peer_failure() else on_success/release
//!         ctx.request_sent / response_started / body_replayable = what happened
//!         ctx.untried_peer = an eligible peer not in `tried` exists
//!         ctx.set_deadline(deadline, now)
//!         match retrier.decide(hooks, failure, &peer_info, &ctx, now) {
//!             Next::Retry { backoff } => {
//!                 if let Some(d) = backoff { sleep(d) }  (then select ignoring `tried`, but
//!                                                       keep it: further retries back off too)
//!                 ctx.begin_retry(backoff)
//!             }
//!             Next::Respond { status, .. } => answer with ringlb's error response
//!             Next::Relay { .. } => relay the failed try's response as it was
//!         }
//! }
//! ```
//!
//! Status-code retries discard the failed response (close that upstream connection rather
//! than drain it); request bodies up to `retry_body_bytes` are kept for replay, larger ones
//! stream and set `body_replayable = false` once their first byte was sent.

mod backoff;
mod breaker;
mod budget;
mod hooks;
mod policy;
mod window;

pub(crate) use backoff::Backoff;
pub use breaker::BreakerConfig;
pub(crate) use breaker::{BreakerState, BreakerTransition, CircuitBreaker, Ticket};
pub(crate) use budget::RetryBudget;
pub(crate) use hooks::{DefaultHooks, Next, Retrier};
pub use hooks::{FailureAction, FailureHooks, PeerInfo, PolicyHooks};
pub use policy::{Failure, GiveUpReason, RetryOn, RetryPolicy, TryContext};

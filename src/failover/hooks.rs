//! Failure hooks: the library's say in what happens after a failed try, and [`Retrier`], which
//! combines a hook's answer with the retry policy and the retry budget into one [`Next`].
//!
//! [`FailureHooks`] is meant to be merged into the picker trait: given the failure, the peer
//! and the try count, a picker may decide to retry, to stop, or to answer with a status of its
//! own — or leave it to the config ([`FailureAction::Default`], what the provided methods
//! return). [`PolicyHooks`] is that config-driven behaviour written out as hooks, for pickers
//! that want to change one case and delegate the rest.
//!
//! What no hook can override: a try is never repeated once a response byte reached the
//! client, once a request body that was not kept was streamed, or after the request's
//! deadline; `max_retries` caps hook-chosen retries too, and every retry needs the retry
//! budget. A hook's `Retry` skips the `on` list and the idempotency rule: the hook knows
//! better (say, a picker that knows the backend deduplicates POSTs).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::policy::{Failure, GiveUpReason, RetryDecision, RetryPolicy, TryContext};
use super::RetryBudget;
use crate::balance::PeerId;

/// PeerInfo is what a failure hook is told about the peer of the failed try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerInfo<'a> {
    /// The peer's index in its upstream group.
    pub id: PeerId,
    /// Its address as written in the config.
    pub address: &'a str,
    /// Where the try connected (or tried to).
    pub addr: SocketAddr,
    /// Whether it is a backup peer.
    pub backup: bool,
}

/// FailureAction is a failure hook's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureAction {
    /// Try again (still subject to what no hook overrides, `max_retries` and the budget).
    Retry,
    /// Stop; answer as ringlb does for this failure (502/504, or relay the upstream's
    /// response for a status failure). The reason is reported in `Next`.
    GiveUp(GiveUpReason),
    /// Stop and answer with ringlb's own error response with this status (should be 4xx or
    /// 5xx); a status failure's upstream response is discarded.
    Respond(u16),
    /// Let the upstream's retry policy decide.
    Default,
}

/// FailureHooks is how a picker decides what happens after a failed try. Both methods
/// default to [`FailureAction::Default`] (the config's retry policy).
pub trait FailureHooks {
    /// fail_to_connect is called when connecting to `peer` failed or timed out
    /// ([`Failure::ConnectFailure`], [`Failure::ConnectTimeout`]); `tries` counts the tries of
    /// this request so far, this one included.
    fn fail_to_connect(&self, err: &Failure, peer: &PeerInfo<'_>, tries: u32) -> FailureAction {
        let _ = (err, peer, tries);
        FailureAction::Default
    }

    /// error_while_proxying is called for every other failure of a try on `peer` (reset,
    /// timeout, invalid response, a status listed in `on`); `ctx` says what was sent and
    /// whether the request can be replayed.
    fn error_while_proxying(
        &self,
        err: &Failure,
        peer: &PeerInfo<'_>,
        tries: u32,
        ctx: &TryContext,
    ) -> FailureAction {
        let _ = (err, peer, tries, ctx);
        FailureAction::Default
    }
}

/// DefaultHooks is the picker without failure hooks: every failure goes to the retry policy.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultHooks;

impl FailureHooks for DefaultHooks {}

/// PolicyHooks is the config-driven retry policy written out as failure hooks (answers
/// `Retry` or `GiveUp(reason)`, never `Default`), for hooks that delegate to it.
#[derive(Debug, Clone, Copy)]
pub struct PolicyHooks<'a>(pub &'a RetryPolicy);

impl FailureHooks for PolicyHooks<'_> {
    fn fail_to_connect(&self, err: &Failure, _peer: &PeerInfo<'_>, tries: u32) -> FailureAction {
        // Nothing was sent: only `on` and `max_retries` matter here; what the request's state
        // allows (body, deadline) is checked for every retry anyway.
        let policy = self.0;
        if !policy.on.contains(*err) {
            return FailureAction::GiveUp(GiveUpReason::NotRetriable);
        }
        if tries > policy.max_retries {
            return FailureAction::GiveUp(GiveUpReason::Exhausted);
        }
        FailureAction::Retry
    }

    fn error_while_proxying(
        &self,
        err: &Failure,
        _peer: &PeerInfo<'_>,
        _tries: u32,
        ctx: &TryContext,
    ) -> FailureAction {
        match self.0.verdict(*err, ctx) {
            Ok(()) => FailureAction::Retry,
            Err(reason) => FailureAction::GiveUp(reason),
        }
    }
}

/// Next is what the request loop does after a failed try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again: at once on an untried peer (`backoff: None`), or after sleeping `backoff`
    /// on any eligible peer (every one was tried). Call [`TryContext::begin_retry`] first.
    Retry {
        /// How long to wait first.
        backoff: Option<Duration>,
    },
    /// Stop and answer the client with ringlb's own error response with this status.
    Respond {
        /// 502 (connect failure, reset, invalid response), 504 (timeout, or the request's
        /// deadline passed), or a hook's status.
        status: u16,
        /// Why the request was not retried.
        reason: GiveUpReason,
    },
    /// Stop and relay the upstream response of the failed try (a [`Failure::Status`]) to the
    /// client as it was.
    Relay {
        /// Why the request was not retried.
        reason: GiveUpReason,
    },
}

/// Retrier is one upstream group's retry machinery in one shard: its policy, its retry budget
/// and the jitter source for backoffs. Shard-local, `&mut self`.
#[derive(Debug, Clone)]
pub struct Retrier {
    /// The upstream's `retry = { … }`.
    policy: RetryPolicy,
    /// This shard's retry budget for the group.
    budget: RetryBudget,
    /// Draws backoff jitter.
    rng: fastrand::Rng,
}

impl Retrier {
    /// new is the retry machinery for `policy`, with an empty budget starting at `now` and
    /// jitter drawn from `rng` (seed it per shard; seed it fixed in tests).
    pub fn new(policy: RetryPolicy, now: Instant, rng: fastrand::Rng) -> Self {
        Retrier {
            budget: RetryBudget::from_policy(&policy, now),
            policy,
            rng,
        }
    }

    /// policy is the upstream's retry policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// budget is this shard's retry budget for the group (for tests).
    #[cfg(test)]
    pub fn budget(&self) -> &RetryBudget {
        &self.budget
    }

    /// record_request counts a new client request in the budget; call it once per request,
    /// before its first try.
    pub fn record_request(&mut self, now: Instant) {
        self.budget.record_request(now);
    }

    /// decide is what happens after the try on `peer` failed with `failure`: asks `hooks`
    /// (`fail_to_connect` for connect failures, else `error_while_proxying`), falls back to
    /// the policy on [`FailureAction::Default`], applies what no hook overrides, and takes a
    /// retry from the budget last (a `Retry` answer has already been counted there).
    pub fn decide<H: FailureHooks + ?Sized>(
        &mut self,
        hooks: &H,
        failure: Failure,
        peer: &PeerInfo<'_>,
        ctx: &TryContext,
        now: Instant,
    ) -> Next {
        let action = if failure.is_connect() {
            hooks.fail_to_connect(&failure, peer, ctx.tries)
        } else {
            hooks.error_while_proxying(&failure, peer, ctx.tries, ctx)
        };
        let policy = &self.policy;
        let decision = match action {
            FailureAction::Default => policy.should_retry(failure, ctx, &mut self.rng),
            FailureAction::Retry => match policy
                .replay_possible(ctx)
                .and_then(|()| policy.within_max_retries(ctx))
            {
                Ok(()) => policy.schedule(ctx, &mut self.rng),
                Err(reason) => RetryDecision::GiveUp(reason),
            },
            FailureAction::GiveUp(reason) => RetryDecision::GiveUp(reason),
            FailureAction::Respond(status) => {
                return Next::Respond {
                    status,
                    reason: GiveUpReason::Hook,
                }
            }
        };
        match decision {
            // Failing over to an untried peer after a connect failure is free: nothing reached
            // any backend, so it cannot multiply load, and a refused peer must not cost a
            // request its answer when the budget is low.
            RetryDecision::Retry { backoff: None } if failure.is_connect() => {
                Next::Retry { backoff: None }
            }
            RetryDecision::Retry { backoff } if self.budget.try_acquire_retry(now) => {
                Next::Retry { backoff }
            }
            RetryDecision::Retry { .. } => give_up(failure, GiveUpReason::Budget),
            RetryDecision::GiveUp(reason) => give_up(failure, reason),
        }
    }
}

/// The answer when `failure` is not retried for `reason`.
fn give_up(failure: Failure, reason: GiveUpReason) -> Next {
    match failure {
        Failure::Status(_) => Next::Relay { reason },
        _ if reason == GiveUpReason::Deadline => Next::Respond {
            status: 504,
            reason,
        },
        _ => Next::Respond {
            status: failure.status(),
            reason,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::RetryOn;

    use GiveUpReason::*;

    const MS: Duration = Duration::from_millis(1);

    fn peer() -> PeerInfo<'static> {
        PeerInfo {
            id: PeerId::new(1),
            address: "10.0.0.2:80",
            addr: "10.0.0.2:80".parse().unwrap(),
            backup: false,
        }
    }

    fn retrier(policy: RetryPolicy) -> (Retrier, Instant) {
        let now = Instant::now();
        let mut r = Retrier::new(policy, now, fastrand::Rng::with_seed(3));
        r.record_request(now);
        (r, now)
    }

    const AT_ONCE: Next = Next::Retry { backoff: None };

    #[test]
    fn default_hooks_follow_the_policy() {
        let (mut r, now) = retrier(RetryPolicy::default());
        let get = TryContext {
            idempotent: true,
            request_sent: true,
            ..TryContext::default()
        };
        let post = TryContext {
            idempotent: false,
            ..get
        };
        let h = DefaultHooks;
        let p = peer();
        assert_eq!(
            r.decide(&h, Failure::ConnectFailure, &p, &post, now),
            AT_ONCE
        );
        assert_eq!(r.decide(&h, Failure::Timeout, &p, &get, now), AT_ONCE);
        assert_eq!(
            r.decide(&h, Failure::Timeout, &p, &post, now),
            Next::Respond {
                status: 504,
                reason: NotIdempotent
            }
        );
        assert_eq!(
            r.decide(&h, Failure::Reset, &p, &post, now),
            Next::Respond {
                status: 502,
                reason: NotIdempotent
            }
        );
        assert_eq!(
            r.decide(&h, Failure::InvalidResponse, &p, &get, now),
            Next::Respond {
                status: 502,
                reason: NotRetriable
            }
        );
        assert_eq!(r.decide(&h, Failure::Status(503), &p, &get, now), AT_ONCE);
        // A status failure that is not retried relays the upstream's response.
        assert_eq!(
            r.decide(&h, Failure::Status(503), &p, &post, now),
            Next::Relay {
                reason: NotIdempotent
            }
        );
        let last = TryContext { tries: 4, ..get };
        assert_eq!(
            r.decide(&h, Failure::Status(503), &p, &last, now),
            Next::Relay { reason: Exhausted }
        );
        // Past the deadline, ringlb answers 504 whatever the failure.
        let late = TryContext {
            remaining: Some(Duration::ZERO),
            ..get
        };
        assert_eq!(
            r.decide(&h, Failure::ConnectFailure, &p, &late, now),
            Next::Respond {
                status: 504,
                reason: Deadline
            }
        );
    }

    #[test]
    fn policy_hooks_decide_like_the_default() {
        let policy = RetryPolicy::default();
        let (mut with_default, now) = retrier(policy);
        let (mut with_policy, _) = retrier(policy);
        let p = peer();
        let failures = [
            Failure::ConnectFailure,
            Failure::ConnectTimeout,
            Failure::Reset,
            Failure::Timeout,
            Failure::InvalidResponse,
            Failure::Status(502),
            Failure::Status(500),
        ];
        for failure in failures {
            for idempotent in [false, true] {
                for request_sent in [false, true] {
                    for tries in [1, 3, 4] {
                        for untried_peer in [false, true] {
                            let ctx = TryContext {
                                idempotent,
                                request_sent,
                                tries,
                                untried_peer,
                                ..TryContext::default()
                            };
                            let a = with_default.decide(&DefaultHooks, failure, &p, &ctx, now);
                            let b =
                                with_policy.decide(&PolicyHooks(&policy), failure, &p, &ctx, now);
                            assert_eq!(a, b, "{failure} {ctx:?}");
                        }
                    }
                }
            }
        }
        assert_eq!(
            PolicyHooks(&policy).fail_to_connect(&Failure::ConnectFailure, &p, 4),
            FailureAction::GiveUp(Exhausted)
        );
    }

    /// A picker that retries 429 (not in `on`) and answers 503 itself on invalid responses.
    struct Custom;

    impl FailureHooks for Custom {
        fn error_while_proxying(
            &self,
            err: &Failure,
            _peer: &PeerInfo<'_>,
            _tries: u32,
            _ctx: &TryContext,
        ) -> FailureAction {
            match err {
                Failure::Status(429) => FailureAction::Retry,
                Failure::InvalidResponse => FailureAction::Respond(503),
                Failure::Reset => FailureAction::GiveUp(Hook),
                _ => FailureAction::Default,
            }
        }
    }

    #[test]
    fn custom_hooks_override_the_policy_within_hard_limits() {
        let (mut r, now) = retrier(RetryPolicy::default());
        let p = peer();
        let post = TryContext {
            request_sent: true,
            ..TryContext::default()
        };
        // Retry overrides `on` and idempotency …
        assert_eq!(
            r.decide(&Custom, Failure::Status(429), &p, &post, now),
            AT_ONCE
        );
        // … not a started response, a streamed body, max_retries or the deadline.
        for (ctx, reason) in [
            (
                TryContext {
                    response_started: true,
                    ..post
                },
                ResponseStarted,
            ),
            (
                TryContext {
                    body_replayable: false,
                    ..post
                },
                BodyNotReplayable,
            ),
            (TryContext { tries: 4, ..post }, Exhausted),
        ] {
            assert_eq!(
                r.decide(&Custom, Failure::Status(429), &p, &ctx, now),
                Next::Relay { reason }
            );
        }
        assert_eq!(
            r.decide(&Custom, Failure::InvalidResponse, &p, &post, now),
            Next::Respond {
                status: 503,
                reason: Hook
            }
        );
        assert_eq!(
            r.decide(&Custom, Failure::Reset, &p, &post, now),
            Next::Respond {
                status: 502,
                reason: Hook
            }
        );
        // Connect failures go to fail_to_connect, which Custom leaves to the policy.
        assert_eq!(
            r.decide(&Custom, Failure::ConnectTimeout, &p, &post, now),
            AT_ONCE
        );
    }

    #[test]
    fn retries_take_from_the_budget() {
        let policy = RetryPolicy {
            budget_percent: 0,
            min_retries_per_sec: 1,
            ..RetryPolicy::default()
        };
        let (mut r, now) = retrier(policy);
        let ctx = TryContext {
            idempotent: true,
            request_sent: true,
            ..TryContext::default()
        };
        let p = peer();
        // 1/s × 10 s = 10 retries in the window, then none.
        let got: Vec<Next> = (0..11)
            .map(|_| r.decide(&DefaultHooks, Failure::Reset, &p, &ctx, now))
            .collect();
        assert!(got[..10].iter().all(|n| *n == AT_ONCE), "{got:?}");
        assert_eq!(
            got[10],
            Next::Respond {
                status: 502,
                reason: Budget
            }
        );
        assert_eq!(r.budget().counts(now), (1, 10));
        // Failing over to an untried peer after a connect failure is free, even now.
        let fresh = TryContext::default();
        assert_eq!(
            r.decide(&DefaultHooks, Failure::ConnectFailure, &p, &fresh, now),
            AT_ONCE
        );
        assert_eq!(r.budget().counts(now), (1, 10));
        // Give-ups take nothing from the budget.
        let (mut r, now) = retrier(policy);
        let sent = TryContext {
            idempotent: false,
            ..ctx
        };
        r.decide(&DefaultHooks, Failure::Reset, &p, &sent, now);
        assert_eq!(r.budget().counts(now), (1, 0));
    }

    #[test]
    fn backoff_after_every_peer_was_tried() {
        let (mut r, now) = retrier(RetryPolicy::default());
        let p = peer();
        let mut ctx = TryContext {
            untried_peer: false,
            ..TryContext::default()
        };
        let mut ceilings = Vec::new();
        for _ in 0..3 {
            match r.decide(&DefaultHooks, Failure::ConnectFailure, &p, &ctx, now) {
                Next::Retry {
                    backoff: Some(wait),
                } => {
                    ceilings.push(r.policy().backoff.ceiling(ctx.backoffs));
                    assert!(wait <= r.policy().backoff.ceiling(ctx.backoffs));
                    ctx.begin_retry(Some(wait));
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(ceilings, vec![100 * MS, 200 * MS, 400 * MS]);
        assert_eq!((ctx.tries, ctx.backoffs), (4, 3));
        assert_eq!(
            r.decide(&DefaultHooks, Failure::ConnectFailure, &p, &ctx, now),
            Next::Respond {
                status: 502,
                reason: Exhausted
            }
        );
    }

    #[test]
    fn empty_on_never_retries() {
        let (mut r, now) = retrier(RetryPolicy {
            on: RetryOn::none(),
            ..RetryPolicy::default()
        });
        assert_eq!(
            r.decide(
                &DefaultHooks,
                Failure::ConnectFailure,
                &peer(),
                &TryContext::default(),
                now
            ),
            Next::Respond {
                status: 502,
                reason: NotRetriable
            }
        );
    }
}

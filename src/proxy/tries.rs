//! The try loop's decisions, as a synchronous state machine ([`Tries`]): which peer the next
//! try goes to (the tried set, the breaker's admission), what happens after a try ended
//! (retry at once, retry after a backoff, answer with ringlb's own error, relay the held
//! response of a failed try), and what each try counts for the breaker and passive health.
//!
//! It does no I/O and never waits: the request loop (`Conn::handle_request`) asks it for a
//! [`Step`], performs the try, and hands the [`TryEnd`] back to [`Tries::finish`], which
//! says what to do [`Then`] and what to report. Everything it decides is in its return values,
//! so the unit tests below replay exact sequences against real upstream groups.

use std::time::{Duration, Instant};

use crate::balance::PeerId;
use crate::control::Outcome;
use crate::failover::{
    Failure, FailureHooks, GiveUpReason, Next, PeerInfo, RetryPolicy, TryContext,
};
use crate::http::HttpError;
use crate::upstream::{Admit, TriedSet, UpstreamGroup};

/// Step is what the request loop does next for a request.
#[derive(Debug)]
pub(crate) enum Step<H> {
    /// Try the request on `peer` (admitted by its breaker), then report with
    /// [`Tries::finish`].
    Try {
        /// The peer to try.
        peer: PeerId,
        /// When this try must have ended (`retry.per_try_timeout_ms`, `request_timeout_ms`).
        deadline: Option<Instant>,
        /// Whether a request the peer may have received on a pooled connection that then
        /// turned out closed may be sent again on a fresh one (the stale-replay rule: only a
        /// request that is safe to replay).
        replay_stale: bool,
    },
    /// No peer is left for the retry: relay the response a failed try got (a status listed
    /// in `retry.on`), as it is.
    Relay {
        /// The peer that answered.
        peer: PeerId,
        /// Its connection, with the response head read.
        held: H,
    },
    /// No peer is left after a failed try: answer with ringlb's own error for it.
    Respond(HttpError),
    /// No eligible peer for the request at all (nothing was tried): 503.
    NoPeer,
    /// Every eligible peer is at its `max_conns` or out of `rate` tokens (or the group's
    /// `rate` is spent) and nothing was tried yet: wait in the group's queue, then ask again.
    Full,
}

/// TryEnd is how one try ended, as the request loop saw it.
#[derive(Debug)]
pub(crate) enum TryEnd<H> {
    /// The response (with this status) was relayed completely.
    Relayed {
        /// The final status.
        status: u16,
    },
    /// The client went away, or the response broke off after it started; `fault` is the
    /// upstream's part in it, if it had one (it broke off, sent garbage, went silent).
    Broken {
        /// How the upstream failed, for the breaker and passive health.
        fault: Option<Outcome>,
    },
    /// The try failed before anything but interim responses reached the client.
    Failed {
        /// What failed.
        failure: Failure,
        /// Whether any request byte was written on the try's connection.
        sent: bool,
        /// Whether an interim (1xx) response of this try reached the client.
        response_started: bool,
        /// Whether the whole request can still be sent again (no body byte streamed past
        /// what is kept).
        body_replayable: bool,
        /// For a status failure: the connection with its response head, to relay if the
        /// request is not retried.
        held: Option<H>,
    },
}

/// Then is what the request loop does after a try ended.
#[derive(Debug)]
pub(crate) enum Then<H> {
    /// The request is over (relayed, or the client is gone).
    Done,
    /// Ask for the next [`Step`], after sleeping `backoff` when there is one.
    Retry {
        /// How long to wait first.
        backoff: Option<Duration>,
    },
    /// Answer with ringlb's own error.
    Respond(HttpError),
    /// Relay the failed try's response as it is.
    Relay {
        /// The peer that answered.
        peer: PeerId,
        /// Its connection, with the response head read.
        held: H,
    },
}

/// Finished is [`Tries::finish`]'s answer: what to do next, and what the try counts for
/// passive health (the breaker was already told).
#[derive(Debug)]
pub(crate) struct Finished<H> {
    /// What to do next.
    pub then: Then<H>,
    /// The outcome to report to the control thread for the tried peer, if any.
    pub report: Option<(PeerId, Outcome)>,
    /// The retry policy would have retried, but the retry budget was spent.
    pub budget_exhausted: bool,
}

/// Tries is the state of one request's try loop: what was tried, the response held from a
/// failed try, the retry context, the error to answer with when no peer is left.
pub(crate) struct Tries<H> {
    /// What the retry policy learns about the request, updated per try.
    ctx: TryContext,
    /// The group's retry policy.
    policy: RetryPolicy,
    /// The request's deadline (`request_timeout_ms`).
    deadline: Option<Instant>,
    /// Peers this request tried (or that refused it).
    tried: TriedSet,
    /// The empty set: after a backoff, any eligible peer may be tried again.
    no_one: TriedSet,
    /// The last retry waited a backoff: the next selection may pick a tried peer.
    after_backoff: bool,
    /// The answer when no peer is left after a retry decision.
    last_err: Option<HttpError>,
    /// A status failure's response, kept until the retry has a peer: relayed if none is left.
    held: Option<(PeerId, H)>,
    /// The try in progress and its breaker admission.
    current: Option<(PeerId, Admit)>,
    /// Whether the request may be sent again after a stale pooled connection ate it.
    replay_stale: bool,
    /// The region the request prefers (`None`: the group's `local_region`).
    region: Option<usize>,
}

impl<H> Tries<H> {
    /// Starts the try loop of a request with the facts in `ctx` (see [`TryContext::new`]),
    /// under `policy`, whose deadline counts from `start`.
    pub fn new(policy: RetryPolicy, ctx: TryContext, start: Instant) -> Self {
        Tries {
            replay_stale: ctx.idempotent || ctx.idempotency_key || policy.retry_non_idempotent,
            deadline: policy.request_deadline(start),
            ctx,
            policy,
            tried: TriedSet::default(),
            no_one: TriedSet::default(),
            after_backoff: false,
            last_err: None,
            held: None,
            current: None,
            region: None,
        }
    }

    /// Makes the request prefer the peers of `region` (see `UpstreamGroup::request_region`).
    pub fn set_region(&mut self, region: Option<usize>) {
        self.region = region;
    }

    /// Tries made so far (the one in progress included).
    pub fn count(&self) -> u32 {
        self.ctx.tries
    }

    /// The next step: select an eligible peer not tried yet (any eligible peer right after a
    /// backoff) whose breaker admits the request; without one, relay the held response or
    /// answer with the last failure's error (503 when nothing was tried).
    pub fn next(&mut self, group: &UpstreamGroup, hash: Option<u64>, now: Instant) -> Step<H> {
        debug_assert!(self.current.is_none(), "next() while a try is in progress");
        loop {
            let skip = if self.after_backoff {
                &self.no_one
            } else {
                &self.tried
            };
            let Some(peer) = group.select_from(hash, self.region, skip, now) else {
                if let Some((peer, held)) = self.held.take() {
                    return Step::Relay { peer, held };
                }
                return match self.last_err.take() {
                    Some(err) => Step::Respond(err),
                    None if group.limited_out(skip, now) => Step::Full,
                    None => Step::NoPeer,
                };
            };
            self.tried.insert(peer);
            let admit = group.admit(peer, now);
            if matches!(admit, Admit::Refused) {
                // The breaker refused: look on among the untried peers.
                self.after_backoff = false;
                continue;
            }
            // A failed response is discarded with its connection once another try begins.
            self.held = None;
            self.current = Some((peer, admit));
            return Step::Try {
                peer,
                deadline: self.policy.try_deadline(now, self.deadline),
                replay_stale: self.replay_stale,
            };
        }
    }

    /// Reports how the try from the last [`Step::Try`] ended: tells the peer's breaker, and
    /// for a failure lets the group's retrier (asking `hooks` first) decide what follows.
    pub fn finish(
        &mut self,
        group: &UpstreamGroup,
        hooks: &dyn FailureHooks,
        end: TryEnd<H>,
        now: Instant,
    ) -> Finished<H> {
        let Some((peer, admit)) = self.current.take() else {
            debug_assert!(false, "finish() without a try in progress");
            return Finished {
                then: Then::Done,
                report: None,
                budget_exhausted: false,
            };
        };
        let (failure, held) = match end {
            TryEnd::Relayed { status } => {
                group.breaker_outcome(peer, admit, Some(true), now);
                return Finished {
                    then: Then::Done,
                    report: Some((peer, Outcome::from_status(status))),
                    budget_exhausted: false,
                };
            }
            TryEnd::Broken { fault } => {
                group.breaker_outcome(peer, admit, fault.map(|_| false), now);
                return Finished {
                    then: Then::Done,
                    report: fault.map(|outcome| (peer, outcome)),
                    budget_exhausted: false,
                };
            }
            TryEnd::Failed {
                failure,
                sent,
                response_started,
                body_replayable,
                held,
            } => {
                group.breaker_outcome(peer, admit, Some(!failure.is_peer_failure()), now);
                self.ctx.request_sent = sent;
                self.ctx.response_started = response_started;
                self.ctx.body_replayable = body_replayable;
                (failure, held)
            }
        };
        let report = Some((peer, Outcome::from(failure)));
        self.ctx.untried_peer = group.any_untried_eligible(&self.tried, now);
        self.ctx.set_deadline(self.deadline, now);
        let p = group.peer(peer);
        let info = PeerInfo {
            id: peer,
            address: &p.address,
            addr: p.addr,
            backup: p.backup,
        };
        let next = group
            .retrier
            .borrow_mut()
            .decide(hooks, failure, &info, &self.ctx, now);
        tracing::debug!(
            group = %group.name,
            peer = %p.address,
            try_no = self.ctx.tries,
            "try failed ({failure:?}): {next:?}"
        );
        let budget_exhausted = matches!(
            next,
            Next::Respond {
                reason: GiveUpReason::Budget,
                ..
            } | Next::Relay {
                reason: GiveUpReason::Budget
            }
        );
        let then = match next {
            Next::Retry { backoff } => {
                self.held = held.map(|h| (peer, h));
                self.after_backoff = backoff.is_some();
                self.ctx.begin_retry(backoff);
                self.last_err = Some(failure_error(failure));
                Then::Retry { backoff }
            }
            Next::Respond { status, .. } => Then::Respond(match status {
                502 | 504 => failure_error(failure),
                503 => HttpError::ServiceUnavailable("upstream unavailable"),
                s => HttpError::Status(s),
            }),
            Next::Relay { .. } => match held {
                Some(held) => Then::Relay { peer, held },
                None => Then::Respond(failure_error(failure)),
            },
        };
        Finished {
            then,
            report,
            budget_exhausted,
        }
    }
}

/// The answer ringlb gives itself when a try's failure is not retried.
fn failure_error(failure: Failure) -> HttpError {
    match failure {
        Failure::ConnectFailure => HttpError::BadGateway("cannot connect to upstream"),
        Failure::ConnectTimeout => HttpError::GatewayTimeout("upstream connect timed out"),
        Failure::Reset => HttpError::BadGateway("upstream closed the connection"),
        Failure::Timeout => HttpError::GatewayTimeout("upstream did not answer in time"),
        Failure::InvalidResponse => HttpError::BadGateway("invalid response from upstream"),
        Failure::TlsFailure => HttpError::BadGateway("TLS handshake with upstream failed"),
        Failure::Status(_) => HttpError::BadGateway("upstream answered with an error status"),
    }
}

/// Whether an exchange that failed on a connection before the peer can have answered may be
/// sent again, at once, on a fresh connection to the same peer (not counted as a try).
///
/// - A pooled connection whose write took no byte (`unsent`): the peer never saw the request,
///   whatever its method.
/// - A pooled connection that ended before any response byte (`stale`): the peer may have
///   received the request, so only once, and only when the request is safe to replay
///   (`replay_stale`, see [`Step::Try`]).
///
/// A fresh connection that fails is a failed try, never replayed here.
pub(crate) fn replay_on_fresh(
    from_pool: bool,
    unsent: bool,
    replay_stale: bool,
    stale_replayed: bool,
) -> bool {
    from_pool && (unsent || (replay_stale && !stale_replayed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::failover::FailureAction;
    use crate::http::HttpError;

    use std::cell::RefCell;

    /// An upstream group `u` from a `[[upstream]]` body (peers on 127.0.0.1:1..).
    fn group(extra: &str, peers: usize) -> UpstreamGroup {
        let peers: Vec<String> = (1..=peers)
            .map(|i| format!("{{ address = \"127.0.0.1:{i}\" }}"))
            .collect();
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[[upstream]]\nname = \"u\"\n\
             peers = [{}]\n{extra}\n",
            peers.join(", ")
        );
        let config = Config::from_toml_str(&text, "test.toml").expect("valid config");
        UpstreamGroup::new_seeded(&config.upstreams[0], 7)
    }

    /// A GET's try loop.
    fn get(group: &UpstreamGroup, now: Instant) -> Tries<&'static str> {
        let policy = *group.retrier.borrow().policy();
        group.retrier.borrow_mut().record_request(now);
        Tries::new(policy, TryContext::new(true, false), now)
    }

    fn try_peer<H: std::fmt::Debug>(step: Step<H>) -> PeerId {
        match step {
            Step::Try { peer, .. } => peer,
            other => panic!("expected a try, got {other:?}"),
        }
    }

    fn failed(failure: Failure, sent: bool, held: Option<&'static str>) -> TryEnd<&'static str> {
        TryEnd::Failed {
            failure,
            sent,
            response_started: false,
            body_replayable: true,
            held,
        }
    }

    /// Default hooks: the policy decides.
    struct Policy;
    impl FailureHooks for Policy {}

    #[test]
    fn connect_failure_then_success_on_the_next_peer() {
        // A hashing group with a fixed key picks the same peer every time, unless tried.
        let g = group("algorithm = \"consistent_hash\"\nhash_key = \"path\"", 3);
        let now = Instant::now();
        let hash = Some(0x5eed);
        let mut t = get(&g, now);
        let first = try_peer(t.next(&g, hash, now));
        let mut again = get(&g, now);
        assert_eq!(
            try_peer(again.next(&g, hash, now)),
            first,
            "the key decides"
        );
        let fin = t.finish(
            &g,
            &Policy,
            failed(Failure::ConnectFailure, false, None),
            now,
        );
        assert!(matches!(fin.then, Then::Retry { backoff: None }), "{fin:?}");
        assert_eq!(fin.report, Some((first, Outcome::ConnectFailure)));
        let second = try_peer(t.next(&g, hash, now));
        assert_ne!(first, second, "the retry goes to the untried peer");
        assert_eq!(t.count(), 2);
        let fin = t.finish(&g, &Policy, TryEnd::Relayed { status: 200 }, now);
        assert!(matches!(fin.then, Then::Done));
        assert_eq!(fin.report, Some((second, Outcome::Success)));
    }

    #[test]
    fn status_retry_relays_the_last_held_response_when_no_peer_is_left() {
        // Two peers, one retry: both answer 503; the second one's response is relayed.
        let g = group("retry = { on = [503], max_retries = 1 }", 2);
        let now = Instant::now();
        let mut t = get(&g, now);
        let a = try_peer(t.next(&g, None, now));
        let fin = t.finish(
            &g,
            &Policy,
            failed(Failure::Status(503), true, Some("a")),
            now,
        );
        assert!(matches!(fin.then, Then::Retry { backoff: None }), "{fin:?}");
        assert_eq!(fin.report, Some((a, Outcome::Status(503))));
        let b = try_peer(t.next(&g, None, now));
        assert_ne!(a, b);
        let fin = t.finish(
            &g,
            &Policy,
            failed(Failure::Status(503), true, Some("b")),
            now,
        );
        assert_eq!(fin.report, Some((b, Outcome::Status(503))));
        match fin.then {
            Then::Relay { peer, held } => assert_eq!((peer, held), (b, "b")),
            other => panic!("expected b's response relayed, got {other:?}"),
        }
    }

    #[test]
    fn after_every_peer_was_tried_the_retry_waits_and_may_go_to_a_tried_peer() {
        let g = group(
            "retry = { on = [503], max_retries = 2, backoff_base_ms = 10, backoff_max_ms = 10 }",
            1,
        );
        let now = Instant::now();
        let mut t = get(&g, now);
        for (i, name) in ["first", "second"].into_iter().enumerate() {
            assert_eq!(try_peer(t.next(&g, None, now)), PeerId::new(0), "try {i}");
            let fin = t.finish(
                &g,
                &Policy,
                failed(Failure::Status(503), true, Some(name)),
                now,
            );
            match fin.then {
                Then::Retry {
                    backoff: Some(wait),
                } => assert!(wait <= Duration::from_millis(10), "{wait:?}"),
                other => panic!("try {i}: expected a retry after a backoff, got {other:?}"),
            }
        }
        assert_eq!(try_peer(t.next(&g, None, now)), PeerId::new(0));
        assert_eq!(t.count(), 3);
        let fin = t.finish(
            &g,
            &Policy,
            failed(Failure::Status(503), true, Some("third")),
            now,
        );
        match fin.then {
            Then::Relay { peer, held } => assert_eq!((peer, held), (PeerId::new(0), "third")),
            other => panic!("expected the last response relayed, got {other:?}"),
        }
    }

    #[test]
    fn held_response_is_relayed_when_selection_finds_no_peer() {
        // One peer, which a hook pins as down after its 503: the retry finds nobody and the
        // held response goes to the client.
        let g = group("retry = { on = [503] }", 2);
        let now = Instant::now();
        let mut t = get(&g, now);
        let a = try_peer(t.next(&g, None, now));
        let fin = t.finish(
            &g,
            &Policy,
            failed(Failure::Status(503), true, Some("a")),
            now,
        );
        assert!(matches!(fin.then, Then::Retry { backoff: None }));
        // The other peer goes down before the retry is selected.
        let other = PeerId::new(if a == PeerId::new(0) { 1 } else { 0 });
        g.set_health(other, false);
        match t.next(&g, None, now) {
            Step::Relay { peer, held } => assert_eq!((peer, held), (a, "a")),
            step => panic!("expected the held response relayed, got {step:?}"),
        }
    }

    #[test]
    fn exhausted_budget_answers_with_the_failure() {
        // No budget at all: budget_percent = 0 and no minimum.
        let g = group(
            "retry = { budget_percent = 0, min_retries_per_sec = 0, backoff_base_ms = 0 }",
            2,
        );
        let now = Instant::now();
        let mut t = get(&g, now);
        let a = try_peer(t.next(&g, None, now));
        let fin = t.finish(&g, &Policy, failed(Failure::Reset, true, None), now);
        assert_eq!(fin.report, Some((a, Outcome::Reset)));
        match fin.then {
            Then::Respond(HttpError::BadGateway(_)) => {}
            other => panic!("expected 502 for lack of budget, got {other:?}"),
        }
        assert!(fin.budget_exhausted);
        // A connect failure costs no budget: it still fails over at once.
        let mut t = get(&g, now);
        let _ = try_peer(t.next(&g, None, now));
        let fin = t.finish(
            &g,
            &Policy,
            failed(Failure::ConnectFailure, false, None),
            now,
        );
        assert!(matches!(fin.then, Then::Retry { backoff: None }), "{fin:?}");
    }

    #[test]
    fn open_breaker_refuses_and_selection_moves_on() {
        let g = group(
            "circuit_breaker = { failures = 1, open_ms = 60000 }\n\
             retry = { max_retries = 0 }",
            2,
        );
        let now = Instant::now();
        // Open the breaker of the first peer tried.
        let mut t = get(&g, now);
        let a = try_peer(t.next(&g, None, now));
        let fin = t.finish(&g, &Policy, failed(Failure::Reset, true, None), now);
        assert!(matches!(fin.then, Then::Respond(_)), "{fin:?}");
        // Every later request skips `a` while its breaker is open.
        for _ in 0..4 {
            let mut t = get(&g, now);
            let b = try_peer(t.next(&g, None, now));
            assert_ne!(a, b, "the open breaker refuses {a}");
            let fin = t.finish(&g, &Policy, TryEnd::Relayed { status: 200 }, now);
            assert_eq!(fin.report, Some((b, Outcome::Success)));
        }
        // Both breakers open: no peer admits the request, 503.
        let mut t = get(&g, now);
        let b = try_peer(t.next(&g, None, now));
        let _ = t.finish(&g, &Policy, failed(Failure::Reset, true, None), now);
        let mut t = get(&g, now);
        match t.next(&g, None, now) {
            Step::NoPeer => {}
            step => panic!("expected no peer with both breakers open ({a}, {b}), got {step:?}"),
        }
    }

    #[test]
    fn non_idempotent_request_is_not_retried_after_it_was_sent() {
        let g = group("", 2);
        let now = Instant::now();
        let policy = *g.retrier.borrow().policy();
        let mut t: Tries<&'static str> = Tries::new(policy, TryContext::new(false, false), now);
        let a = try_peer(t.next(&g, None, now));
        let fin = t.finish(&g, &Policy, failed(Failure::Reset, true, None), now);
        assert_eq!(fin.report, Some((a, Outcome::Reset)));
        assert!(
            matches!(fin.then, Then::Respond(HttpError::BadGateway(_))),
            "{fin:?}"
        );
        // The same failure before any byte was sent is retried on the other peer.
        let mut t: Tries<&'static str> = Tries::new(policy, TryContext::new(false, false), now);
        let a = try_peer(t.next(&g, None, now));
        let fin = t.finish(&g, &Policy, failed(Failure::Reset, false, None), now);
        assert!(matches!(fin.then, Then::Retry { backoff: None }), "{fin:?}");
        assert_ne!(try_peer(t.next(&g, None, now)), a);
        // With an Idempotency-Key it is retried even after it was sent, and so is a stale
        // connection's request.
        let mut t: Tries<&'static str> = Tries::new(policy, TryContext::new(false, true), now);
        match t.next(&g, None, now) {
            Step::Try { replay_stale, .. } => assert!(replay_stale),
            step => panic!("{step:?}"),
        }
        let fin = t.finish(&g, &Policy, failed(Failure::Reset, true, None), now);
        assert!(matches!(fin.then, Then::Retry { .. }), "{fin:?}");
    }

    #[test]
    fn broken_response_counts_only_the_upstreams_fault() {
        let g = group("", 1);
        let now = Instant::now();
        let mut t = get(&g, now);
        let a = try_peer(t.next(&g, None, now));
        let fin = t.finish(&g, &Policy, TryEnd::Broken { fault: None }, now);
        assert!(matches!(fin.then, Then::Done));
        assert_eq!(
            fin.report, None,
            "a client that left says nothing of the peer"
        );
        let mut t = get(&g, now);
        let _ = try_peer(t.next(&g, None, now));
        let fin = t.finish(
            &g,
            &Policy,
            TryEnd::Broken {
                fault: Some(Outcome::Timeout),
            },
            now,
        );
        assert_eq!(fin.report, Some((a, Outcome::Timeout)));
    }

    #[test]
    fn hooks_decide_before_the_policy() {
        /// Answers 429 to every failure while proxying and records the calls.
        struct TooMany(RefCell<Vec<(Failure, u32)>>);
        impl FailureHooks for TooMany {
            fn error_while_proxying(
                &self,
                err: &Failure,
                _peer: &PeerInfo<'_>,
                tries: u32,
                _ctx: &TryContext,
            ) -> FailureAction {
                self.0.borrow_mut().push((*err, tries));
                FailureAction::Respond(429)
            }
        }
        let g = group("", 2);
        let now = Instant::now();
        let hooks = TooMany(RefCell::new(Vec::new()));
        let mut t = get(&g, now);
        let _ = try_peer(t.next(&g, None, now));
        let fin = t.finish(&g, &hooks, failed(Failure::Timeout, true, None), now);
        assert!(
            matches!(fin.then, Then::Respond(HttpError::Status(429))),
            "{fin:?}"
        );
        assert_eq!(*hooks.0.borrow(), vec![(Failure::Timeout, 1)]);
    }

    #[test]
    fn the_stale_replay_rule() {
        // (from_pool, unsent, replay_stale, stale_replayed) → replay on a fresh connection
        let cases = [
            ((true, true, false, false), true),   // nothing left: any method
            ((true, true, false, true), true),    // … however often
            ((true, false, true, false), true),   // stale, safe to replay: once
            ((true, false, true, true), false),   // … not twice
            ((true, false, false, false), false), // stale, not safe to replay
            ((false, true, true, false), false),  // a fresh connection: a failed try
            ((false, false, true, false), false),
        ];
        for ((from_pool, unsent, safe, used), want) in cases {
            assert_eq!(
                replay_on_fresh(from_pool, unsent, safe, used),
                want,
                "from_pool={from_pool} unsent={unsent} replay_stale={safe} used={used}"
            );
        }
    }
}

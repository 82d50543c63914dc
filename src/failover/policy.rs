//! The retry policy: which failed tries are tried again, and when.
//!
//! [`RetryPolicy::should_retry`] is a pure function of the policy (an upstream's
//! `retry = { … }`), the [`Failure`] and what the proxy knows about the request so far
//! ([`TryContext`]). It checks, in this order, and gives up at the first that fails:
//!
//! 1. nothing of the response reached the client (`response_started`): never retried, a
//!    client cannot be sent two responses;
//! 2. the request can be sent again in full (`body_replayable`): a body larger than
//!    `retry_body_bytes` is streamed, not kept, so once its first byte left it cannot be
//!    replayed;
//! 3. the overall `request_timeout_ms` deadline has not passed;
//! 4. the failure is listed in `on`;
//! 5. replaying is safe: nothing of this try's request was sent (connect failures are always
//!    in this case), or the method is idempotent (GET, HEAD, OPTIONS, TRACE, PUT, DELETE), or
//!    the request carries an `Idempotency-Key`, or `retry_non_idempotent = true`;
//! 6. fewer than `max_retries` retries were made.
//!
//! Then it schedules the retry: at once when the request has an untried eligible peer left,
//! else after an exponential backoff with full jitter ([`Backoff`]); a backoff that would end
//! after the deadline gives up instead. The retry budget ([`RetryBudget`]) is checked by the
//! caller after a `Retry` decision (it counts what it grants, so it comes last):
//! [`crate::failover::decide`] does all of it in one call.
//!
//! "Connect failures are always safe to retry" is read as: they need no idempotency (the
//! upstream never saw the request), but they still need to be listed in `on` (the default
//! lists them), fit in `max_retries` and the budget. So `on = ["503"]` really means "only
//! 503", and a config that wants no retries at all can say `on = []`.
//!
//! [`RetryBudget`]: super::RetryBudget

use std::fmt;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use super::Backoff;

/// Failure is how one try of a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// The TCP connect was refused or failed (`connect_failure`). Answered 502.
    ConnectFailure,
    /// The TCP connect did not complete within the connect timeout (`connect_timeout`).
    /// Answered 504, as nginx does.
    ConnectTimeout,
    /// The connection was reset or closed by the upstream before a complete response head
    /// (`reset`). Answered 502.
    Reset,
    /// The upstream did not answer (or accept the request) within the read/write or per-try
    /// timeout (`timeout`). Answered 504.
    Timeout,
    /// The upstream's response head (or chunked framing) is invalid (`invalid_response`).
    /// Answered 502.
    InvalidResponse,
    /// The TLS handshake with the upstream failed (`tls_failure`): its certificate did not
    /// verify (wrong CA, wrong name, expired), it refused ringlb's (mTLS), no protocol in
    /// common, or it does not speak TLS. The request never reached it. Answered 502.
    TlsFailure,
    /// The upstream answered with this status code, listed in `on` (`"503"`). When not
    /// retried, that response is relayed to the client as it was.
    Status(u16),
}

impl Failure {
    /// NAMED is every failure with a name in `on`, in the order `describe` lists them.
    pub const NAMED: [Failure; 6] = [
        Failure::ConnectFailure,
        Failure::ConnectTimeout,
        Failure::Reset,
        Failure::Timeout,
        Failure::InvalidResponse,
        Failure::TlsFailure,
    ];

    /// name is the `on` name of a failure; `None` for [`Failure::Status`] (written as its code).
    pub fn name(self) -> Option<&'static str> {
        match self {
            Failure::ConnectFailure => Some("connect_failure"),
            Failure::ConnectTimeout => Some("connect_timeout"),
            Failure::Reset => Some("reset"),
            Failure::Timeout => Some("timeout"),
            Failure::InvalidResponse => Some("invalid_response"),
            Failure::TlsFailure => Some("tls_failure"),
            Failure::Status(_) => None,
        }
    }

    /// from_name is the failure an `on` name stands for (status codes are not names).
    pub fn from_name(name: &str) -> Option<Failure> {
        Failure::NAMED.into_iter().find(|f| f.name() == Some(name))
    }

    /// is_connect is whether the try failed while connecting, so the upstream never saw the
    /// request: always safe to replay.
    pub fn is_connect(self) -> bool {
        matches!(
            self,
            Failure::ConnectFailure | Failure::ConnectTimeout | Failure::TlsFailure
        )
    }

    /// status is the status the client gets when this failure is not retried: 502 for connect
    /// failures, resets and invalid responses, 504 for timeouts, and for
    /// [`Failure::Status`] the upstream's own status (its response is relayed as it was).
    pub fn status(self) -> u16 {
        match self {
            Failure::ConnectFailure
            | Failure::Reset
            | Failure::InvalidResponse
            | Failure::TlsFailure => 502,
            Failure::ConnectTimeout | Failure::Timeout => 504,
            Failure::Status(status) => status,
        }
    }

    /// is_peer_failure is whether this failure speaks against the peer's health (circuit
    /// breaker, passive health): every failure except a 4xx status, which is the client's.
    pub fn is_peer_failure(self) -> bool {
        !matches!(self, Failure::Status(status) if status < 500)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.name(), self) {
            (Some(name), _) => f.write_str(name),
            (None, Failure::Status(status)) => write!(f, "{status}"),
            (None, _) => Ok(()),
        }
    }
}

/// RetryOn is the set of failures an upstream retries on (`on = [ … ]`): any of the named
/// failures and any status codes from 400 to 599. Default: `connect_failure`,
/// `connect_timeout`, `reset`, `timeout`, `tls_failure`, `502`, `503`, `504` (not `invalid_response`: a
/// peer that sends garbage usually does so every time, as nginx's default assumes too).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RetryOn {
    /// One bit per [`Failure::NAMED`] entry, in that order.
    kinds: u8,
    /// One bit per status code in [`RetryOn::STATUS_RANGE`]: bit `code - 400`.
    statuses: [u128; 2],
}

impl RetryOn {
    /// STATUS_RANGE is the status codes `on` may list.
    pub const STATUS_RANGE: RangeInclusive<u16> = 400..=599;

    /// none is the empty set: never retry.
    pub const fn none() -> Self {
        RetryOn {
            kinds: 0,
            statuses: [0; 2],
        }
    }

    /// The bit of a named failure, or of a status code in range.
    fn bit(failure: Failure) -> Option<Bit> {
        match failure {
            Failure::Status(status) => {
                if !RetryOn::STATUS_RANGE.contains(&status) {
                    return None;
                }
                let i = usize::from(status - 400);
                Some(Bit::Status(i / 128, 1u128 << (i % 128)))
            }
            named => Failure::NAMED
                .iter()
                .position(|f| *f == named)
                .map(|i| Bit::Kind(1u8 << i)),
        }
    }

    /// insert adds a failure; `false` (and no change) for a status outside 400–599.
    pub fn insert(&mut self, failure: Failure) -> bool {
        match RetryOn::bit(failure) {
            Some(Bit::Kind(b)) => self.kinds |= b,
            Some(Bit::Status(w, b)) => self.statuses[w] |= b,
            None => return false,
        }
        true
    }

    /// contains is whether a failure of this kind (or with this status) is retried.
    pub fn contains(&self, failure: Failure) -> bool {
        match RetryOn::bit(failure) {
            Some(Bit::Kind(b)) => self.kinds & b != 0,
            Some(Bit::Status(w, b)) => self.statuses[w] & b != 0,
            None => false,
        }
    }

    /// is_empty is whether nothing is retried.
    pub fn is_empty(&self) -> bool {
        self.kinds == 0 && self.statuses == [0; 2]
    }

    /// iter lists the members: named failures in [`Failure::NAMED`] order, then status codes
    /// ascending.
    pub fn iter(&self) -> impl Iterator<Item = Failure> + '_ {
        let named = Failure::NAMED.into_iter();
        let statuses = RetryOn::STATUS_RANGE.map(Failure::Status);
        named.chain(statuses).filter(|f| self.contains(*f))
    }
}

/// Bit is where a failure lives in a [`RetryOn`].
enum Bit {
    /// A bit of `kinds`.
    Kind(u8),
    /// Word and bit of `statuses`.
    Status(usize, u128),
}

impl Default for RetryOn {
    fn default() -> Self {
        let mut on = RetryOn::none();
        for f in [
            Failure::ConnectFailure,
            Failure::ConnectTimeout,
            Failure::Reset,
            Failure::Timeout,
            Failure::TlsFailure,
            Failure::Status(502),
            Failure::Status(503),
            Failure::Status(504),
        ] {
            on.insert(f);
        }
        on
    }
}

impl fmt::Display for RetryOn {
    /// `connect_failure, reset, 503`, or `(nothing)` for the empty set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("(nothing)");
        }
        for (i, failure) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{failure}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RetryOn[{self}]")
    }
}

/// RetryPolicy is an upstream's `retry = { … }`: when a failed try is tried again. Present
/// for every upstream (all defaults when the key is absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try, at most, in all (`max_retries`). Default 3.
    pub max_retries: u32,
    /// Which failures are retried (`on`). Default see [`RetryOn`].
    pub on: RetryOn,
    /// Replay requests that were (partly) sent even when their method is not idempotent and
    /// they carry no `Idempotency-Key` (`retry_non_idempotent`). Default false.
    pub retry_non_idempotent: bool,
    /// Waits between retries once every eligible peer was tried (`backoff_base_ms`,
    /// `backoff_max_ms`). Default 100 ms doubling up to 5000 ms.
    pub backoff: Backoff,
    /// Each try must finish (response head received) within this (`per_try_timeout_ms`);
    /// hitting it is a [`Failure::Timeout`]. Default none: only the upstream read/write
    /// timeouts apply.
    pub per_try_timeout: Option<Duration>,
    /// All tries of a request, backoffs included, must finish within this
    /// (`request_timeout_ms`); past it nothing is retried and the client gets 504 (or the
    /// failure's own answer). Default none.
    pub request_timeout: Option<Duration>,
    /// Retries may add at most this percentage of the requests of the last 10 s, per shard
    /// (`budget_percent`, 0–100). Default 20.
    pub budget_percent: u32,
    /// Retries per second always allowed on top of `budget_percent`, per shard
    /// (`min_retries_per_sec`). Default 3.
    pub min_retries_per_sec: u32,
    /// Request bodies up to this many bytes are kept so the request can be replayed
    /// (`retry_body_bytes`); larger ones stream, and the request cannot be retried once the
    /// first body byte was sent. Default 64 KiB.
    pub retry_body_bytes: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            on: RetryOn::default(),
            retry_non_idempotent: false,
            backoff: Backoff::default(),
            per_try_timeout: None,
            request_timeout: None,
            budget_percent: 20,
            min_retries_per_sec: 3,
            retry_body_bytes: 64 * 1024,
        }
    }
}

/// TryContext is what the proxy knows about a request when one of its tries failed: the input
/// of [`RetryPolicy::should_retry`]. Build it with [`TryContext::new`] once per request and
/// update the per-try fields before each decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TryContext {
    /// The method is idempotent (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE).
    pub idempotent: bool,
    /// The request carries a non-empty `Idempotency-Key` header.
    pub idempotency_key: bool,
    /// Some byte of this try's request was written to the upstream after connecting.
    pub request_sent: bool,
    /// Some byte of a response (an interim 1xx too) was written to the client.
    pub response_started: bool,
    /// The whole request can still be sent again: its body is kept (no larger than
    /// `retry_body_bytes`), or none of it was streamed yet.
    pub body_replayable: bool,
    /// Tries made so far, the failed one included (1 after the first try).
    pub tries: u32,
    /// Backoff waits this request already made (the exponent of the next one).
    pub backoffs: u32,
    /// An eligible peer this request has not tried yet exists (the retry goes there at once);
    /// `false` means the retry waits a backoff and may go to a peer tried before.
    pub untried_peer: bool,
    /// Time left until the `request_timeout` deadline (`Some(ZERO)` once it passed); `None`
    /// without a deadline.
    pub remaining: Option<Duration>,
}

impl TryContext {
    /// new is the context of a request's first try, from two plain facts the proxy takes out
    /// of the request head ([`Method::is_idempotent`](crate::http::Method::is_idempotent),
    /// [`RequestHead::has_idempotency_key`](crate::http::RequestHead::has_idempotency_key)):
    /// one try, nothing sent or started, body replayable, an untried peer assumed, no deadline.
    pub fn new(idempotent: bool, idempotency_key: bool) -> Self {
        TryContext {
            idempotent,
            idempotency_key,
            ..TryContext::default()
        }
    }
}

impl TryContext {
    /// begin_retry updates the context for the next try after a `Retry { backoff }` decision:
    /// one more try (and one more backoff when it waited), nothing of it sent yet.
    pub fn begin_retry(&mut self, backoff: Option<Duration>) {
        self.tries = self.tries.saturating_add(1);
        if backoff.is_some() {
            self.backoffs = self.backoffs.saturating_add(1);
        }
        self.request_sent = false;
    }

    /// set_deadline sets `remaining` from the request's deadline (see
    /// [`RetryPolicy::request_deadline`]) as of `now`.
    pub fn set_deadline(&mut self, deadline: Option<Instant>, now: Instant) {
        self.remaining = deadline.map(|d| d.saturating_duration_since(now));
    }
}

impl Default for TryContext {
    /// A first try of a non-idempotent request without a key, nothing sent.
    fn default() -> Self {
        TryContext {
            idempotent: false,
            idempotency_key: false,
            request_sent: false,
            response_started: false,
            body_replayable: true,
            tries: 1,
            backoffs: 0,
            untried_peer: true,
            remaining: None,
        }
    }
}

/// RetryDecision is what to do after a failed try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again: at once on an untried peer (`backoff: None`), or after sleeping `backoff`
    /// (every eligible peer was tried; any eligible peer may be picked again).
    Retry {
        /// How long to wait first.
        backoff: Option<Duration>,
    },
    /// Stop: answer the client ([`Failure::status`]; for a status failure, relay the
    /// upstream's response as it was).
    GiveUp(GiveUpReason),
}

/// GiveUpReason is why a failed try is not retried (for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GiveUpReason {
    /// A response byte already reached the client.
    ResponseStarted,
    /// The request body was streamed and is not kept.
    BodyNotReplayable,
    /// The `request_timeout` deadline passed, or the backoff would end after it.
    Deadline,
    /// The failure is not listed in `on`.
    NotRetriable,
    /// The request was sent, and it is neither idempotent nor keyed.
    NotIdempotent,
    /// `max_retries` retries were made.
    Exhausted,
    /// The retry budget of the shard is used up.
    Budget,
    /// A failure hook decided to stop.
    Hook,
}

impl GiveUpReason {
    /// name is a stable snake_case name for metrics labels and logs.
    pub fn name(self) -> &'static str {
        match self {
            GiveUpReason::ResponseStarted => "response_started",
            GiveUpReason::BodyNotReplayable => "body_not_replayable",
            GiveUpReason::Deadline => "deadline",
            GiveUpReason::NotRetriable => "not_retriable",
            GiveUpReason::NotIdempotent => "not_idempotent",
            GiveUpReason::Exhausted => "exhausted",
            GiveUpReason::Budget => "budget",
            GiveUpReason::Hook => "hook",
        }
    }
}

impl RetryPolicy {
    /// should_retry decides whether the try that failed with `failure` is retried, and how
    /// long to wait first (see the module docs for the order of the checks). It does not look
    /// at the retry budget. `rng` draws the backoff jitter.
    pub fn should_retry(
        &self,
        failure: Failure,
        ctx: &TryContext,
        rng: &mut fastrand::Rng,
    ) -> RetryDecision {
        match self.verdict(failure, ctx) {
            Ok(()) => self.schedule(ctx, rng),
            Err(reason) => RetryDecision::GiveUp(reason),
        }
    }

    /// verdict is checks 1–6 of [`RetryPolicy::should_retry`] without scheduling: `Ok` when
    /// the failed try may be retried, else why not.
    pub fn verdict(&self, failure: Failure, ctx: &TryContext) -> Result<(), GiveUpReason> {
        self.replay_possible(ctx)?;
        if !self.on.contains(failure) {
            return Err(GiveUpReason::NotRetriable);
        }
        if !self.replay_safe(failure, ctx) {
            return Err(GiveUpReason::NotIdempotent);
        }
        self.within_max_retries(ctx)
    }

    /// within_max_retries is whether another retry fits in `max_retries`.
    pub(crate) fn within_max_retries(&self, ctx: &TryContext) -> Result<(), GiveUpReason> {
        if ctx.tries > self.max_retries {
            return Err(GiveUpReason::Exhausted);
        }
        Ok(())
    }

    /// replay_possible checks what no policy or hook can override: nothing reached the client,
    /// the request can be sent again in full, the deadline has not passed.
    pub(crate) fn replay_possible(&self, ctx: &TryContext) -> Result<(), GiveUpReason> {
        if ctx.response_started {
            return Err(GiveUpReason::ResponseStarted);
        }
        if !ctx.body_replayable {
            return Err(GiveUpReason::BodyNotReplayable);
        }
        if ctx.remaining == Some(Duration::ZERO) {
            return Err(GiveUpReason::Deadline);
        }
        Ok(())
    }

    /// replay_safe is whether sending the request again cannot apply it twice (or the config
    /// accepts that it might).
    pub fn replay_safe(&self, failure: Failure, ctx: &TryContext) -> bool {
        failure.is_connect()
            || !ctx.request_sent
            || ctx.idempotent
            || ctx.idempotency_key
            || self.retry_non_idempotent
    }

    /// schedule is the retry of a request that may be retried: at once when an untried peer
    /// is left, else after backoff number `ctx.backoffs`; a backoff reaching the deadline
    /// gives up.
    pub(crate) fn schedule(&self, ctx: &TryContext, rng: &mut fastrand::Rng) -> RetryDecision {
        if ctx.untried_peer {
            return RetryDecision::Retry { backoff: None };
        }
        let wait = self.backoff.delay(ctx.backoffs, rng);
        if ctx.remaining.is_some_and(|left| wait >= left) {
            return RetryDecision::GiveUp(GiveUpReason::Deadline);
        }
        RetryDecision::Retry {
            backoff: Some(wait),
        }
    }

    /// request_deadline is when all tries of a request that started at `start` must be done
    /// (`request_timeout`), if there is such a deadline (a timeout too large for the clock
    /// counts as none).
    pub fn request_deadline(&self, start: Instant) -> Option<Instant> {
        self.request_timeout.and_then(|t| start.checked_add(t))
    }

    /// try_deadline is when a try starting at `now` must have its response head: the earlier
    /// of `now + per_try_timeout` and the request's deadline (`None`: neither is set).
    pub fn try_deadline(&self, now: Instant, request_deadline: Option<Instant>) -> Option<Instant> {
        let per_try = self.per_try_timeout.and_then(|t| now.checked_add(t));
        match (per_try, request_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// keeps_body is whether a request body of `len` bytes (`None`: not known yet, chunked)
    /// is kept for replay; a chunked body is kept while it stays within `retry_body_bytes`.
    pub fn keeps_body(&self, len: Option<u64>) -> bool {
        len.is_none_or(|n| n <= self.retry_body_bytes as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use GiveUpReason::*;

    const MS: Duration = Duration::from_millis(1);

    fn rng() -> fastrand::Rng {
        fastrand::Rng::with_seed(5)
    }

    fn at_once() -> RetryDecision {
        RetryDecision::Retry { backoff: None }
    }

    fn give_up(reason: GiveUpReason) -> RetryDecision {
        RetryDecision::GiveUp(reason)
    }

    #[test]
    fn defaults() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_retries, 3);
        assert_eq!(
            p.on.to_string(),
            "connect_failure, connect_timeout, reset, timeout, tls_failure, 502, 503, 504"
        );
        assert!(!p.retry_non_idempotent);
        assert_eq!(p.backoff.base, 100 * MS);
        assert_eq!(p.backoff.max, 5000 * MS);
        assert_eq!(p.per_try_timeout, None);
        assert_eq!(p.request_timeout, None);
        assert_eq!(p.budget_percent, 20);
        assert_eq!(p.min_retries_per_sec, 3);
        assert_eq!(p.retry_body_bytes, 65536);
    }

    #[test]
    fn failure_names_statuses_and_health() {
        for f in Failure::NAMED {
            let name = f.name().unwrap();
            assert_eq!(Failure::from_name(name), Some(f));
            assert_eq!(f.to_string(), name);
        }
        assert_eq!(Failure::from_name("503"), None);
        assert_eq!(Failure::from_name("Reset"), None);
        assert_eq!(Failure::Status(503).name(), None);
        assert_eq!(Failure::Status(503).to_string(), "503");
        let statuses: Vec<u16> = Failure::NAMED.iter().map(|f| f.status()).collect();
        assert_eq!(statuses, vec![502, 504, 502, 504, 502, 502]);
        assert_eq!(Failure::Status(503).status(), 503);
        assert!(Failure::ConnectFailure.is_connect());
        assert!(Failure::ConnectTimeout.is_connect());
        assert!(Failure::TlsFailure.is_connect());
        assert!(!Failure::Reset.is_connect());
        assert!(!Failure::Status(502).is_connect());
        assert!(Failure::Timeout.is_peer_failure());
        assert!(Failure::Status(500).is_peer_failure());
        assert!(!Failure::Status(429).is_peer_failure());
    }

    #[test]
    fn retry_on_set() {
        let mut on = RetryOn::none();
        assert!(on.is_empty());
        assert_eq!(on.to_string(), "(nothing)");
        assert!(on.insert(Failure::Status(599)));
        assert!(on.insert(Failure::Status(400)));
        assert!(on.insert(Failure::Status(527)));
        assert!(on.insert(Failure::Status(528)));
        assert!(on.insert(Failure::Reset));
        assert!(!on.insert(Failure::Status(399)));
        assert!(!on.insert(Failure::Status(600)));
        assert!(!on.insert(Failure::Status(200)));
        assert_eq!(on.to_string(), "reset, 400, 527, 528, 599");
        assert!(on.contains(Failure::Status(527)));
        assert!(!on.contains(Failure::Status(526)));
        assert!(!on.contains(Failure::Status(600)));
        assert!(!on.contains(Failure::Timeout));
        assert_eq!(on.iter().count(), 5);
        assert_eq!(format!("{on:?}"), "RetryOn[reset, 400, 527, 528, 599]");
    }

    /// Every failure × method kind × sent × started, default policy, second try left, an
    /// untried peer available.
    #[test]
    fn decision_table() {
        let p = RetryPolicy::default();
        let r = at_once();
        let (rs, ni, nr) = (
            give_up(ResponseStarted),
            give_up(NotIdempotent),
            give_up(NotRetriable),
        );
        // (failure, request_sent, response_started) →
        //   [idempotent (GET), non-idempotent (POST), POST with Idempotency-Key]
        #[rustfmt::skip]
        let table = [
            (Failure::ConnectFailure,  false, false, [r, r, r]),
            (Failure::ConnectFailure,  false, true,  [rs, rs, rs]),
            (Failure::ConnectFailure,  true,  false, [r, r, r]),
            (Failure::ConnectFailure,  true,  true,  [rs, rs, rs]),
            (Failure::ConnectTimeout,  false, false, [r, r, r]),
            (Failure::ConnectTimeout,  false, true,  [rs, rs, rs]),
            (Failure::ConnectTimeout,  true,  false, [r, r, r]),
            (Failure::ConnectTimeout,  true,  true,  [rs, rs, rs]),
            (Failure::Reset,           false, false, [r, r, r]),
            (Failure::Reset,           false, true,  [rs, rs, rs]),
            (Failure::Reset,           true,  false, [r, ni, r]),
            (Failure::Reset,           true,  true,  [rs, rs, rs]),
            (Failure::Timeout,         false, false, [r, r, r]),
            (Failure::Timeout,         false, true,  [rs, rs, rs]),
            (Failure::Timeout,         true,  false, [r, ni, r]),
            (Failure::Timeout,         true,  true,  [rs, rs, rs]),
            (Failure::InvalidResponse, false, false, [nr, nr, nr]),
            (Failure::InvalidResponse, false, true,  [rs, rs, rs]),
            (Failure::InvalidResponse, true,  false, [nr, nr, nr]),
            (Failure::InvalidResponse, true,  true,  [rs, rs, rs]),
            (Failure::Status(503),     false, false, [r, r, r]),
            (Failure::Status(503),     false, true,  [rs, rs, rs]),
            (Failure::Status(503),     true,  false, [r, ni, r]),
            (Failure::Status(503),     true,  true,  [rs, rs, rs]),
            (Failure::Status(500),     false, false, [nr, nr, nr]),
            (Failure::Status(500),     false, true,  [rs, rs, rs]),
            (Failure::Status(500),     true,  false, [nr, nr, nr]),
            (Failure::Status(500),     true,  true,  [rs, rs, rs]),
        ];
        let kinds = [(true, false), (false, false), (false, true)];
        for (failure, sent, started, want) in table {
            for ((idempotent, key), want) in kinds.into_iter().zip(want) {
                let ctx = TryContext {
                    idempotent,
                    idempotency_key: key,
                    request_sent: sent,
                    response_started: started,
                    ..TryContext::default()
                };
                assert_eq!(
                    p.should_retry(failure, &ctx, &mut rng()),
                    want,
                    "{failure} sent={sent} started={started} idempotent={idempotent} key={key}"
                );
            }
        }
    }

    #[test]
    fn retry_non_idempotent_replays_posts() {
        let p = RetryPolicy {
            retry_non_idempotent: true,
            ..RetryPolicy::default()
        };
        let ctx = TryContext {
            request_sent: true,
            ..TryContext::default()
        };
        for f in [Failure::Reset, Failure::Timeout, Failure::Status(502)] {
            assert_eq!(p.should_retry(f, &ctx, &mut rng()), at_once(), "{f}");
        }
        // Still never once the response started.
        let started = TryContext {
            response_started: true,
            ..ctx
        };
        assert_eq!(
            p.should_retry(Failure::Reset, &started, &mut rng()),
            give_up(ResponseStarted)
        );
    }

    #[test]
    fn max_retries_counts_all_tries() {
        let p = RetryPolicy::default();
        let got: Vec<RetryDecision> = (1..=5)
            .map(|tries| {
                let ctx = TryContext {
                    tries,
                    ..TryContext::default()
                };
                p.should_retry(Failure::ConnectFailure, &ctx, &mut rng())
            })
            .collect();
        let e = give_up(Exhausted);
        assert_eq!(got, vec![at_once(), at_once(), at_once(), e, e]);
        let none = RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        };
        let first = TryContext::default();
        assert_eq!(
            none.should_retry(Failure::ConnectFailure, &first, &mut rng()),
            e
        );
    }

    #[test]
    fn body_and_deadline_limits() {
        let p = RetryPolicy::default();
        let streamed = TryContext {
            body_replayable: false,
            ..TryContext::default()
        };
        // Even a connect failure: the body that went to the previous peer is gone.
        assert_eq!(
            p.should_retry(Failure::ConnectFailure, &streamed, &mut rng()),
            give_up(BodyNotReplayable)
        );
        let late = TryContext {
            remaining: Some(Duration::ZERO),
            ..TryContext::default()
        };
        assert_eq!(
            p.should_retry(Failure::ConnectFailure, &late, &mut rng()),
            give_up(Deadline)
        );
        let in_time = TryContext {
            remaining: Some(MS),
            ..TryContext::default()
        };
        assert_eq!(
            p.should_retry(Failure::ConnectFailure, &in_time, &mut rng()),
            at_once()
        );
    }

    #[test]
    fn backoff_once_every_peer_was_tried() {
        let p = RetryPolicy::default();
        let mut rng = rng();
        for (backoffs, ceiling) in [(0, 100), (1, 200), (2, 400), (6, 5000), (30, 5000)] {
            let ctx = TryContext {
                untried_peer: false,
                backoffs,
                ..TryContext::default()
            };
            for _ in 0..50 {
                match p.should_retry(Failure::Timeout, &ctx, &mut rng) {
                    RetryDecision::Retry { backoff: Some(d) } => {
                        assert!(d <= ceiling * MS, "backoff {backoffs}: {d:?}")
                    }
                    other => panic!("backoff {backoffs}: {other:?}"),
                }
            }
        }
        // Exactly what the Backoff draws with the same seed.
        let ctx = TryContext {
            untried_peer: false,
            backoffs: 2,
            ..TryContext::default()
        };
        let want = p.backoff.delay(2, &mut fastrand::Rng::with_seed(9));
        assert_eq!(
            p.should_retry(Failure::Timeout, &ctx, &mut fastrand::Rng::with_seed(9)),
            RetryDecision::Retry {
                backoff: Some(want)
            }
        );
        // A wait that reaches the deadline gives up now instead.
        let short = TryContext {
            remaining: Some(want),
            ..ctx
        };
        assert_eq!(
            p.should_retry(Failure::Timeout, &short, &mut fastrand::Rng::with_seed(9)),
            give_up(Deadline)
        );
    }

    #[test]
    fn custom_on_list() {
        let mut on = RetryOn::none();
        on.insert(Failure::Status(503));
        let p = RetryPolicy {
            on,
            ..RetryPolicy::default()
        };
        let ctx = TryContext {
            idempotent: true,
            request_sent: true,
            ..TryContext::default()
        };
        assert_eq!(
            p.should_retry(Failure::Status(503), &ctx, &mut rng()),
            at_once()
        );
        // Connect failures too need to be listed.
        let connect = TryContext::default();
        assert_eq!(
            p.should_retry(Failure::ConnectFailure, &connect, &mut rng()),
            give_up(NotRetriable)
        );
        let never = RetryPolicy {
            on: RetryOn::none(),
            ..RetryPolicy::default()
        };
        assert_eq!(
            never.should_retry(Failure::ConnectFailure, &connect, &mut rng()),
            give_up(NotRetriable)
        );
    }

    #[test]
    fn context_of_a_first_try() {
        for (idempotent, key) in [(true, false), (false, false), (false, true)] {
            let ctx = TryContext::new(idempotent, key);
            assert_eq!((ctx.idempotent, ctx.idempotency_key), (idempotent, key));
            assert_eq!(ctx.tries, 1);
            assert!(ctx.body_replayable && ctx.untried_peer);
            assert!(!ctx.request_sent && !ctx.response_started);
        }
    }

    #[test]
    fn deadlines() {
        let t0 = Instant::now();
        let none = RetryPolicy::default();
        assert_eq!(none.request_deadline(t0), None);
        assert_eq!(none.try_deadline(t0, None), None);
        assert_eq!(none.try_deadline(t0, Some(t0 + MS)), Some(t0 + MS));
        let p = RetryPolicy {
            per_try_timeout: Some(300 * MS),
            request_timeout: Some(1000 * MS),
            ..RetryPolicy::default()
        };
        let deadline = p.request_deadline(t0);
        assert_eq!(deadline, Some(t0 + 1000 * MS));
        assert_eq!(p.try_deadline(t0, deadline), Some(t0 + 300 * MS));
        assert_eq!(
            p.try_deadline(t0 + 800 * MS, deadline),
            Some(t0 + 1000 * MS)
        );
        assert_eq!(p.try_deadline(t0, None), Some(t0 + 300 * MS));

        let mut ctx = TryContext::default();
        ctx.set_deadline(deadline, t0 + 400 * MS);
        assert_eq!(ctx.remaining, Some(600 * MS));
        ctx.set_deadline(deadline, t0 + 2000 * MS);
        assert_eq!(ctx.remaining, Some(Duration::ZERO));
        ctx.set_deadline(None, t0);
        assert_eq!(ctx.remaining, None);

        let huge = RetryPolicy {
            per_try_timeout: Some(Duration::MAX),
            request_timeout: Some(Duration::MAX),
            ..RetryPolicy::default()
        };
        assert_eq!(huge.request_deadline(t0), None);
        assert_eq!(huge.try_deadline(t0, None), None);
    }

    #[test]
    fn begin_retry_counts_tries_and_backoffs() {
        let mut ctx = TryContext {
            request_sent: true,
            ..TryContext::default()
        };
        ctx.begin_retry(None);
        assert_eq!((ctx.tries, ctx.backoffs, ctx.request_sent), (2, 0, false));
        ctx.request_sent = true;
        ctx.begin_retry(Some(MS));
        assert_eq!((ctx.tries, ctx.backoffs, ctx.request_sent), (3, 1, false));
    }

    #[test]
    fn verdict_is_should_retry_without_scheduling() {
        let p = RetryPolicy::default();
        let ctx = TryContext {
            untried_peer: false,
            ..TryContext::default()
        };
        assert_eq!(p.verdict(Failure::Reset, &ctx), Ok(()));
        assert_eq!(p.verdict(Failure::Status(500), &ctx), Err(NotRetriable));
        let sent = TryContext {
            request_sent: true,
            ..ctx
        };
        assert_eq!(p.verdict(Failure::Reset, &sent), Err(NotIdempotent));
    }

    #[test]
    fn keeps_small_bodies() {
        let p = RetryPolicy::default();
        assert!(p.keeps_body(Some(0)));
        assert!(p.keeps_body(Some(65536)));
        assert!(!p.keeps_body(Some(65537)));
        assert!(p.keeps_body(None));
    }

    #[test]
    fn give_up_reason_names() {
        let all = [
            ResponseStarted,
            BodyNotReplayable,
            Deadline,
            NotRetriable,
            NotIdempotent,
            Exhausted,
            Budget,
            Hook,
        ];
        let names: Vec<&str> = all.iter().map(|r| r.name()).collect();
        assert_eq!(
            names,
            vec![
                "response_started",
                "body_not_replayable",
                "deadline",
                "not_retriable",
                "not_idempotent",
                "exhausted",
                "budget",
                "hook"
            ]
        );
    }
}

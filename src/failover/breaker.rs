//! The circuit breaker: one per peer per shard, it stops sending requests to a peer that keeps
//! failing, and lets a few trial requests through after a pause to see whether it recovered.
//!
//! ```text
//!            `failures` consecutive failures, or
//!            `failure_rate` of the results in `window` (once `min_requests` were seen)
//!   Closed ─────────────────────────────────────────────▶ Open (for open_ms × 2^(opens−1),
//!     ▲                                                    │     at most open_max_ms)
//!     │ `half_open_successes` successes        open time   │
//!     │                                        passed      ▼
//!     └──────────────────────────────────────────────── HalfOpen (≤ `half_open_max`
//!                                 any failure ─▶ Open          concurrent trials)
//! ```
//!
//! The open time doubles on each re-open from half-open and resets to `open_ms` once the
//! breaker closes. Every transition is returned (`Option<BreakerTransition>`) so the shard can
//! report it to the control thread; only transitions travel, as with pingora's
//! `observe_health`. A breaker is shard-local and mutated with `&mut self`
//! (invariant 1); it only ever makes a shard *stop* using a peer faster than the control thread
//! would, never contradicts a pushed "down" (invariant 3).
//!
//! Each admitted request holds a [`Ticket`], and its outcome is reported with that ticket.
//! Tickets carry the breaker's generation (bumped on every transition), so a late outcome of a
//! request admitted before a transition is ignored: a success of a request sent while closed
//! cannot close a half-open breaker, and it never takes the slot of a current trial.

use std::time::{Duration, Instant};

use super::window::{Window, BUCKETS};

/// BreakerConfig is an upstream's `circuit_breaker = { … }`; one breaker with it runs per peer
/// per shard. Defaults: failures 5, no failure rate, min_requests 20, window 10000 ms,
/// open 30000 ms, open_max 10 × open (300000 ms), half_open_max 1, half_open_successes 3.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (`failures`, >= 1). Default 5.
    pub failures: u32,
    /// Share of failed results (0 < rate <= 1) in `window` that opens the breaker, once at
    /// least `min_requests` results were seen there (`failure_rate`). Default none: only
    /// consecutive failures count.
    pub failure_rate: Option<f64>,
    /// Results needed in `window` before `failure_rate` is judged (`min_requests`, >= 1).
    /// Default 20.
    pub min_requests: u32,
    /// The sliding window of the failure rate (`window_ms`), in ten buckets. Default 10 s.
    pub window: Duration,
    /// How long the breaker stays open the first time (`open_ms`). Default 30 s.
    pub open: Duration,
    /// The open time doubles on each re-open from half-open up to this (`open_max_ms`).
    /// Default 10 × `open` (300 s with the default `open`).
    pub open_max: Duration,
    /// Trial requests a half-open breaker lets through at once (`half_open_max`, >= 1).
    /// Default 1.
    pub half_open_max: u32,
    /// Consecutive trial successes that close a half-open breaker (`half_open_successes`,
    /// >= 1). Default 3.
    pub half_open_successes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            failure_rate: None,
            min_requests: 20,
            window: Duration::from_millis(10_000),
            open: Duration::from_millis(30_000),
            open_max: Duration::from_millis(300_000),
            half_open_max: 1,
            half_open_successes: 3,
        }
    }
}

impl BreakerConfig {
    /// OPEN_MAX_FACTOR is the default `open_max` as a multiple of `open`.
    pub const OPEN_MAX_FACTOR: u32 = 10;

    /// open_duration is how long the breaker stays open when it opens for the `opens`-th time
    /// since it was last closed (1 = first): `open × 2^(opens−1)`, at most `open_max` (and
    /// never less than `open`).
    pub fn open_duration(&self, opens: u32) -> Duration {
        let doublings = opens.saturating_sub(1);
        let factor = 1u32.checked_shl(doublings).unwrap_or(u32::MAX);
        self.open
            .saturating_mul(factor)
            .min(self.open_max)
            .max(self.open)
    }
}

/// BreakerState is where a breaker is: the part reported to the control thread and `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Requests flow; failures are counted.
    Closed,
    /// No requests until the open time passed.
    Open,
    /// A few trial requests decide between closing and re-opening.
    HalfOpen,
}

impl BreakerState {
    /// name is the state's snake_case name (`closed`, `open`, `half_open`) for status output.
    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// BreakerTransition is a change of a breaker's state, for the shard to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BreakerTransition {
    /// The state before.
    pub from: BreakerState,
    /// The state after.
    pub to: BreakerState,
}

/// Ticket is one admitted request's claim on the breaker; report its outcome with
/// [`CircuitBreaker::on_success`], [`CircuitBreaker::on_failure`] or, when there is none
/// (the client went away, the try was abandoned), [`CircuitBreaker::release`]. A half-open
/// breaker's trial slot is held until then.
#[must_use = "report the outcome with on_success, on_failure or release"]
#[derive(Debug, PartialEq, Eq)]
pub struct Ticket {
    /// The breaker generation that admitted the request.
    generation: u64,
    /// Whether it is a half-open trial (holds a slot of `half_open_max`).
    trial: bool,
}

impl Ticket {
    /// is_trial is whether the request is a half-open trial.
    #[cfg(test)]
    pub fn is_trial(&self) -> bool {
        self.trial
    }
}

/// Admission is the answer of [`CircuitBreaker::allow`].
#[must_use]
#[derive(Debug, PartialEq, Eq)]
pub struct Admission {
    /// The request may go to the peer, holding this ticket; `None`: pick another peer.
    pub ticket: Option<Ticket>,
    /// An open breaker whose time passed turned half-open on this call.
    pub transition: Option<BreakerTransition>,
}

/// State is a breaker's state with its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Requests flow.
    Closed {
        /// Failures since the last success.
        consecutive: u32,
    },
    /// Rejecting until `until`.
    Open {
        /// When it turns half-open.
        until: Instant,
    },
    /// Admitting trials.
    HalfOpen {
        /// Trials admitted and not yet reported.
        in_flight: u32,
        /// Trial successes so far.
        successes: u32,
    },
}

/// CircuitBreaker is one peer's breaker in one shard (see the module docs for the states).
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    /// The upstream's `circuit_breaker` settings.
    config: BreakerConfig,
    /// Where the breaker is.
    state: State,
    /// Times opened since it was last closed; sets the open time (doubling).
    opens: u32,
    /// Bumped on every transition, so outcomes of requests admitted before it are ignored.
    generation: u64,
    /// Results (first counter) and failures (second) while closed, for `failure_rate`.
    window: Window,
}

impl CircuitBreaker {
    /// new is a closed breaker with no history.
    pub fn new(config: BreakerConfig, now: Instant) -> Self {
        let width = config.window / BUCKETS as u32;
        CircuitBreaker {
            config,
            state: State::Closed { consecutive: 0 },
            opens: 0,
            generation: 0,
            window: Window::new(width, now),
        }
    }

    /// state is where the breaker is (an open breaker whose time passed still reads `Open`
    /// until the next [`CircuitBreaker::allow`]).
    pub fn state(&self) -> BreakerState {
        match self.state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// open_until is when an open breaker turns half-open.
    #[cfg(test)]
    pub fn open_until(&self) -> Option<Instant> {
        match self.state {
            State::Open { until } => Some(until),
            _ => None,
        }
    }

    /// opens is how many times the breaker opened since it was last closed.
    #[cfg(test)]
    pub fn opens(&self) -> u32 {
        self.opens
    }

    /// would_allow is whether [`CircuitBreaker::allow`] would admit a request now, without
    /// changing anything: for a selector's eligibility check.
    pub fn would_allow(&self, now: Instant) -> bool {
        match self.state {
            State::Closed { .. } => true,
            State::Open { until } => now >= until && self.config.half_open_max > 0,
            State::HalfOpen { in_flight, .. } => in_flight < self.config.half_open_max,
        }
    }

    /// allow admits a request to the peer or rejects it. An open breaker whose time passed
    /// turns half-open here (reported in the answer); a half-open one admits at most
    /// `half_open_max` trials at once.
    pub fn allow(&mut self, now: Instant) -> Admission {
        let mut transition = None;
        if let State::Open { until } = self.state {
            if now < until {
                return Admission {
                    ticket: None,
                    transition: None,
                };
            }
            transition = Some(self.enter(State::HalfOpen {
                in_flight: 0,
                successes: 0,
            }));
        }
        let ticket = match &mut self.state {
            State::Closed { .. } => Some(Ticket {
                generation: self.generation,
                trial: false,
            }),
            State::HalfOpen { in_flight, .. } if *in_flight < self.config.half_open_max => {
                *in_flight += 1;
                Some(Ticket {
                    generation: self.generation,
                    trial: true,
                })
            }
            _ => None,
        };
        Admission { ticket, transition }
    }

    /// on_success reports that the request of `ticket` succeeded.
    pub fn on_success(&mut self, ticket: Ticket, now: Instant) -> Option<BreakerTransition> {
        if ticket.generation != self.generation {
            return None;
        }
        match &mut self.state {
            State::Closed { consecutive } => {
                *consecutive = 0;
                self.window.add(now, 1, 0);
                None
            }
            State::HalfOpen {
                in_flight,
                successes,
            } => {
                *in_flight = in_flight.saturating_sub(1);
                *successes += 1;
                if *successes < self.config.half_open_successes {
                    return None;
                }
                self.opens = 0;
                Some(self.enter(State::Closed { consecutive: 0 }))
            }
            State::Open { .. } => None,
        }
    }

    /// on_failure reports that the request of `ticket` failed (a [`super::Failure`] for which
    /// `is_peer_failure()` holds).
    pub fn on_failure(&mut self, ticket: Ticket, now: Instant) -> Option<BreakerTransition> {
        if ticket.generation != self.generation {
            return None;
        }
        match &mut self.state {
            State::Closed { consecutive } => {
                *consecutive += 1;
                let consecutive = *consecutive;
                self.window.add(now, 1, 1);
                if consecutive >= self.config.failures || self.rate_exceeded(now) {
                    Some(self.open(now))
                } else {
                    None
                }
            }
            State::HalfOpen { .. } => Some(self.open(now)),
            State::Open { .. } => None,
        }
    }

    /// release ends the request of `ticket` without an outcome: a half-open trial frees its
    /// slot and counts neither way.
    pub fn release(&mut self, ticket: Ticket) {
        if ticket.generation != self.generation || !ticket.trial {
            return;
        }
        if let State::HalfOpen { in_flight, .. } = &mut self.state {
            *in_flight = in_flight.saturating_sub(1);
        }
    }

    /// Whether the failure rate in the window opens the breaker.
    fn rate_exceeded(&self, now: Instant) -> bool {
        let Some(rate) = self.config.failure_rate else {
            return false;
        };
        let (results, failures) = self.window.sums(now);
        results >= u64::from(self.config.min_requests)
            && results > 0
            && failures as f64 >= rate * results as f64
    }

    /// Opens the breaker (once more since it was last closed).
    fn open(&mut self, now: Instant) -> BreakerTransition {
        self.opens = self.opens.saturating_add(1);
        let open_for = self.config.open_duration(self.opens);
        // A duration too large for the clock (validation caps it at a day) means a year.
        let until = now
            .checked_add(open_for)
            .or_else(|| now.checked_add(Duration::from_secs(365 * 86_400)))
            .unwrap_or(now);
        self.enter(State::Open { until })
    }

    /// Moves to `state`, starting a new generation and a fresh failure-rate window.
    fn enter(&mut self, state: State) -> BreakerTransition {
        let from = self.state();
        self.state = state;
        self.generation += 1;
        self.window.clear();
        BreakerTransition {
            from,
            to: self.state(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use BreakerState::{Closed, HalfOpen, Open};

    const MS: Duration = Duration::from_millis(1);
    const S: Duration = Duration::from_secs(1);

    fn t(from: BreakerState, to: BreakerState) -> Option<BreakerTransition> {
        Some(BreakerTransition { from, to })
    }

    /// Admits a request that must be admitted, with no transition.
    #[track_caller]
    fn admit(b: &mut CircuitBreaker, now: Instant) -> Ticket {
        let a = b.allow(now);
        assert_eq!(a.transition, None);
        a.ticket.expect("admitted")
    }

    #[track_caller]
    fn rejected(b: &mut CircuitBreaker, now: Instant) {
        assert!(!b.would_allow(now));
        assert_eq!(
            b.allow(now),
            Admission {
                ticket: None,
                transition: None
            }
        );
    }

    /// Fails requests until the breaker opens; returns how many it took.
    fn fail_until_open(b: &mut CircuitBreaker, now: Instant) -> u32 {
        for n in 1..=1000 {
            let ticket = admit(b, now);
            if let Some(tr) = b.on_failure(ticket, now) {
                assert_eq!(
                    tr,
                    BreakerTransition {
                        from: Closed,
                        to: Open
                    }
                );
                return n;
            }
        }
        panic!("never opened");
    }

    #[test]
    fn defaults_and_open_durations() {
        let c = BreakerConfig::default();
        assert_eq!(c.failures, 5);
        assert_eq!(c.failure_rate, None);
        assert_eq!(c.min_requests, 20);
        assert_eq!(c.window, 10 * S);
        assert_eq!(c.open, 30 * S);
        assert_eq!(c.open_max, 300 * S);
        assert_eq!(c.open_max, c.open * BreakerConfig::OPEN_MAX_FACTOR);
        assert_eq!(c.half_open_max, 1);
        assert_eq!(c.half_open_successes, 3);
        let secs: Vec<u64> = (0..8).map(|n| c.open_duration(n).as_secs()).collect();
        assert_eq!(secs, vec![30, 30, 60, 120, 240, 300, 300, 300]);
        assert_eq!(c.open_duration(u32::MAX), 300 * S);
    }

    #[test]
    fn consecutive_failures_open_and_a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(BreakerConfig::default(), t0);
        for _ in 0..4 {
            let ticket = admit(&mut b, t0);
            assert_eq!(b.on_failure(ticket, t0), None);
        }
        let ticket = admit(&mut b, t0);
        assert_eq!(b.on_success(ticket, t0), None);
        assert_eq!(fail_until_open(&mut b, t0 + S), 5);
        assert_eq!(b.state(), Open);
        assert_eq!(b.opens(), 1);
        assert_eq!(b.open_until(), Some(t0 + S + 30 * S));
        rejected(&mut b, t0 + 30 * S);
    }

    #[test]
    fn half_open_admits_limited_trials_and_closes_after_successes() {
        let t0 = Instant::now();
        let config = BreakerConfig {
            failures: 1,
            half_open_max: 2,
            half_open_successes: 3,
            ..BreakerConfig::default()
        };
        let mut b = CircuitBreaker::new(config, t0);
        assert_eq!(fail_until_open(&mut b, t0), 1);
        rejected(&mut b, t0 + 30 * S - MS);

        let t1 = t0 + 30 * S;
        assert!(b.would_allow(t1));
        let a = b.allow(t1);
        assert_eq!(a.transition, t(Open, HalfOpen));
        let first = a.ticket.expect("first trial");
        assert!(first.is_trial());
        let second = admit(&mut b, t1);
        // Two trials in flight: a third waits.
        rejected(&mut b, t1);
        assert_eq!(b.on_success(first, t1), None);
        let third = admit(&mut b, t1);
        rejected(&mut b, t1);
        // A trial without an outcome frees its slot and counts neither way.
        b.release(second);
        let fourth = admit(&mut b, t1);
        assert_eq!(b.on_success(third, t1), None);
        assert_eq!(b.state(), HalfOpen);
        assert_eq!(b.on_success(fourth, t1), t(HalfOpen, Closed));
        assert_eq!(b.state(), Closed);
        assert_eq!(b.opens(), 0);
        let ticket = admit(&mut b, t1);
        assert!(!ticket.is_trial());
        b.release(ticket);
    }

    #[test]
    fn reopening_doubles_up_to_the_cap_and_closing_resets() {
        let t0 = Instant::now();
        let config = BreakerConfig {
            failures: 1,
            open: 10 * S,
            open_max: 35 * S,
            half_open_successes: 1,
            ..BreakerConfig::default()
        };
        let mut b = CircuitBreaker::new(config, t0);
        fail_until_open(&mut b, t0);
        let mut now = t0;
        let mut opened_for = Vec::new();
        for _ in 0..4 {
            let until = b.open_until().expect("open");
            opened_for.push((until - now).as_secs());
            now = until;
            let a = b.allow(now);
            assert_eq!(a.transition, t(Open, HalfOpen));
            let trial = a.ticket.expect("trial");
            assert_eq!(b.on_failure(trial, now), t(HalfOpen, Open));
        }
        assert_eq!(opened_for, vec![10, 20, 35, 35]);
        assert_eq!(b.opens(), 5);

        // Recover, close, and the next open starts from `open` again.
        now = b.open_until().expect("open");
        let a = b.allow(now);
        assert_eq!(
            b.on_success(a.ticket.expect("trial"), now),
            t(HalfOpen, Closed)
        );
        fail_until_open(&mut b, now);
        assert_eq!(b.open_until(), Some(now + 10 * S));
    }

    #[test]
    fn failure_rate_opens_once_min_requests_were_seen() {
        let t0 = Instant::now();
        let config = BreakerConfig {
            failures: 1000,
            failure_rate: Some(0.5),
            min_requests: 10,
            window: 10 * S,
            ..BreakerConfig::default()
        };
        let mut b = CircuitBreaker::new(config, t0);
        // Alternate: failure, success … 4 failures in 8 results: below min_requests.
        for i in 0..8 {
            let ticket = admit(&mut b, t0);
            let tr = if i % 2 == 0 {
                b.on_failure(ticket, t0)
            } else {
                b.on_success(ticket, t0)
            };
            assert_eq!(tr, None, "result {i}");
        }
        // 9th result, a success: 4 of 9. 10th, a failure: 5 of 10 = 0.5 → open.
        let ticket = admit(&mut b, t0);
        assert_eq!(b.on_success(ticket, t0), None);
        let ticket = admit(&mut b, t0);
        assert_eq!(b.on_failure(ticket, t0), t(Closed, Open));
    }

    #[test]
    fn failure_rate_forgets_results_outside_the_window() {
        let t0 = Instant::now();
        let config = BreakerConfig {
            failures: 1000,
            failure_rate: Some(0.5),
            min_requests: 4,
            window: 10 * S,
            ..BreakerConfig::default()
        };
        let mut b = CircuitBreaker::new(config, t0);
        // Three failures at t0 (below min_requests) …
        for _ in 0..3 {
            let ticket = admit(&mut b, t0);
            assert_eq!(b.on_failure(ticket, t0), None);
        }
        // … have left the window 10 s later: 1 failure of 4 results there.
        let later = t0 + 10 * S;
        for _ in 0..3 {
            let ticket = admit(&mut b, later);
            assert_eq!(b.on_success(ticket, later), None);
        }
        let ticket = admit(&mut b, later);
        assert_eq!(b.on_failure(ticket, later), None);
        // One more failure: 2 of 5 (40 %), still closed; a third: 3 of 6 → open.
        let ticket = admit(&mut b, later);
        assert_eq!(b.on_failure(ticket, later), None);
        let ticket = admit(&mut b, later);
        assert_eq!(b.on_failure(ticket, later), t(Closed, Open));
    }

    #[test]
    fn late_outcomes_from_before_a_transition_are_ignored() {
        let t0 = Instant::now();
        let config = BreakerConfig {
            failures: 2,
            half_open_successes: 1,
            ..BreakerConfig::default()
        };
        let mut b = CircuitBreaker::new(config, t0);
        let slow_ok = admit(&mut b, t0);
        let slow_fail = admit(&mut b, t0);
        assert_eq!(fail_until_open(&mut b, t0), 2);
        // While open, a late failure neither extends nor re-opens.
        let until = b.open_until();
        assert_eq!(b.on_failure(slow_fail, t0 + S), None);
        assert_eq!(b.open_until(), until);
        // Half-open with its one trial in flight: a late success of a request admitted while
        // closed neither closes the breaker nor frees the trial's slot.
        let now = t0 + 30 * S;
        let trial = b.allow(now).ticket.expect("trial");
        assert_eq!(b.on_success(slow_ok, now), None);
        assert_eq!(b.state(), HalfOpen);
        rejected(&mut b, now);
        assert_eq!(b.on_success(trial, now), t(HalfOpen, Closed));
    }

    #[test]
    fn half_open_max_zero_stays_open() {
        let t0 = Instant::now();
        let config = BreakerConfig {
            failures: 1,
            half_open_max: 0,
            ..BreakerConfig::default()
        };
        let mut b = CircuitBreaker::new(config, t0);
        fail_until_open(&mut b, t0);
        assert!(!b.would_allow(t0 + 60 * S));
        let a = b.allow(t0 + 60 * S);
        assert_eq!(a.ticket, None);
        assert_eq!(a.transition, t(Open, HalfOpen));
    }

    #[test]
    fn huge_open_times_do_not_overflow_the_clock() {
        let t0 = Instant::now();
        let config = BreakerConfig {
            failures: 1,
            open: Duration::MAX,
            open_max: Duration::MAX,
            ..BreakerConfig::default()
        };
        let mut b = CircuitBreaker::new(config, t0);
        fail_until_open(&mut b, t0);
        assert!(b.open_until().is_some_and(|until| until > t0 + 300 * S));
    }

    #[test]
    fn state_names() {
        assert_eq!(Closed.name(), "closed");
        assert_eq!(Open.name(), "open");
        assert_eq!(HalfOpen.name(), "half_open");
    }
}

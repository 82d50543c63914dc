//! Custom active checks: the [`HealthCheck`] trait a library user implements for an upstream
//! with `health = { kind = "custom", … }`, and the `Checker` a probe loop runs (the built-in
//! [`Probe`] or the registered check).
//!
//! A custom check runs exactly where a built-in probe would: on the control thread's monoio
//! runtime, on the upstream's `interval_ms` schedule (±10% jitter), cut at `timeout_ms`, its
//! results fed to the same rise/fall state machine. A panic inside the check (building its
//! future or polling it) is caught and counts as a failed probe with the reason
//! `health check panicked`; the control thread keeps running.

use std::future::Future;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::hooks::Hooks;
use super::probe::Probe;
use crate::config::{CheckKind, PeerConfig};

/// The reason a check that panicked fails with.
pub const PANICKED: &str = "health check panicked";

/// CheckFuture is the future a [`HealthCheck`] returns: `Ok(detail)` for healthy, `Err(detail)`
/// for unhealthy, the detail being what `/status` and the state-change log show (as for the
/// built-in probes: `HTTP 200`, `connect: Connection refused (os error 111)`).
///
/// It runs on the control thread's single-threaded monoio runtime, so it need not be `Send`
/// and may use `monoio::net` and `monoio::time`.
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = Result<String, String>> + 'a>>;

/// CheckTarget is the peer one check is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckTarget {
    /// The upstream's name.
    pub upstream: String,
    /// Where to check: the peer's address, with `health.port` instead of its traffic port
    /// when that is set.
    pub addr: SocketAddr,
    /// The peer's address as written in `peers` (e.g. a host name for a Host header).
    pub address: String,
}

/// HealthCheck is an active check a library user implements, registered per upstream with
/// [`StartOptions::health_check`](crate::server::StartOptions::health_check). It replaces the
/// built-in probe of an upstream with `health = { kind = "custom", … }` and runs on that
/// table's schedule, rise/fall and start state.
///
/// (Not to be confused with [`crate::config::HealthCheck`], the `health = { … }` settings.)
///
/// ```
/// use ringlb::health::{CheckFuture, CheckTarget, HealthCheck};
/// use std::time::Instant;
///
/// /// Healthy when the peer accepts a TCP connection.
/// struct Connects;
///
/// impl HealthCheck for Connects {
///     fn check<'a>(&'a self, target: &'a CheckTarget, _deadline: Instant) -> CheckFuture<'a> {
///         Box::pin(async move {
///             monoio::net::TcpStream::connect_addr(target.addr)
///                 .await
///                 .map(|_| "connected".to_string())
///                 .map_err(|e| format!("connect: {e}"))
///         })
///     }
/// }
/// ```
pub trait HealthCheck: Send + Sync {
    /// Checks `target` once. `deadline` is when ringlb gives up on this check (now plus
    /// `health.timeout_ms`): a check still running then is dropped and fails with
    /// `timeout after N ms`, so a check need not enforce it, but may (e.g. to report
    /// what it was waiting for).
    fn check<'a>(&'a self, target: &'a CheckTarget, deadline: Instant) -> CheckFuture<'a>;
}

/// Checker is what one probe loop runs for one peer: the built-in probe or a registered check.
pub(crate) enum Checker {
    /// `kind = "tcp"` or `"http"` (or `"custom"` with nothing registered, which start and
    /// reload refuse).
    Builtin(Probe),
    /// `kind = "custom"` with a registered check.
    Custom {
        /// The registered check.
        check: Arc<dyn HealthCheck>,
        /// The peer.
        target: CheckTarget,
        /// `health.timeout_ms`.
        timeout: Duration,
    },
}

impl Checker {
    /// The checker of `peer` of upstream `upstream` under `check`.
    pub(crate) fn new(
        hooks: &Hooks,
        upstream: &str,
        check: &crate::config::HealthCheck,
        peer: &PeerConfig,
    ) -> Checker {
        let probe =
            Probe::new(check, peer.addr, &peer.address).with_tls(peer.tls.as_ref(), &peer.address);
        match (&check.kind, hooks.check(upstream)) {
            (CheckKind::Custom, Some(custom)) => Checker::Custom {
                check: custom.clone(),
                target: CheckTarget {
                    upstream: upstream.to_string(),
                    addr: probe.addr,
                    address: peer.address.clone(),
                },
                timeout: check.timeout,
            },
            _ => Checker::Builtin(probe),
        }
    }

    /// Runs the check once, within its timeout; a panic is a failure ([`PANICKED`]).
    pub(crate) async fn run(&self) -> Result<String, String> {
        match self {
            Checker::Builtin(probe) => probe.run().await,
            Checker::Custom {
                check,
                target,
                timeout,
            } => run_custom(check.as_ref(), target, *timeout).await,
        }
    }
}

/// Runs a registered check once, cut at `timeout`, a panic caught as a failure.
async fn run_custom(
    check: &dyn HealthCheck,
    target: &CheckTarget,
    timeout: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let Ok(future) = catch_unwind(AssertUnwindSafe(|| check.check(target, deadline))) else {
        return Err(PANICKED.to_string());
    };
    match monoio::time::timeout(timeout, CatchUnwind(future)).await {
        Ok(Some(result)) => result,
        Ok(None) => Err(PANICKED.to_string()),
        Err(_) => Err(format!("timeout after {} ms", timeout.as_millis())),
    }
}

/// CatchUnwind polls its future under `catch_unwind`: `Some(output)`, or `None` once a poll
/// panicked (the future is not polled again).
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match catch_unwind(AssertUnwindSafe(|| Pin::new(&mut *inner).poll(cx))) {
            Ok(Poll::Ready(out)) => Poll::Ready(Some(out)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(None),
        }
    }
}

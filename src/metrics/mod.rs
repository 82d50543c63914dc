//! The metrics core: per-shard counters summed at scrape time, and their Prometheus text.
//!
//! Counters live in per-shard memory written only by their shard ([`counter`] states the
//! single-writer contract): the request path never locks and never does a locked
//! read-modify-write (invariant 1). The control thread owns the [`Registry`], which holds an
//! `Arc` to every shard's metrics; a scrape reads them all and sums over shards in
//! [`render()`].
//!
//! - [`ShardMetrics`]: one per shard (downstream connections, requests, responses by code,
//!   request duration).
//! - [`UpstreamMetrics`]: one per shard × upstream group.
//! - [`PeerMetrics`]: one per shard × upstream × peer.
//! - [`Registry::reconcile`] builds the set for a (new) list of upstreams and peers, keeping the
//!   `Arc`s of every surviving (upstream, peer) so counts continue across a reload, and returns
//!   per shard the plain `Arc`s ([`ShardHandles`]) that go into that shard's snapshot.
//! - [`ControlGauges`]: what only the control thread knows (health states, ejections, reloads),
//!   filled by the caller as plain values so this module imports nothing of the crate.
//!
//! This module is on the ground floor: it imports no other module of the crate.

pub mod counter;
pub mod histogram;
mod registry;
pub mod render;

pub use counter::{Counter, F64Gauge, Gauge};
pub use histogram::{Histogram, HistogramSnapshot, BUCKETS_SECONDS};
pub use registry::{PeerTotals, Registry, ShardHandles, UpstreamHandles, UpstreamTotals};
pub use render::render;

/// Why a try at a peer failed, one counter each in [`PeerMetrics::failures`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The connection was refused or could not be set up.
    ConnectFailure,
    /// Connecting took longer than the connect timeout.
    ConnectTimeout,
    /// The connection was reset or closed before a complete response.
    Reset,
    /// Writing the request or reading the response took longer than its timeout.
    Timeout,
    /// The response head or framing could not be parsed.
    InvalidResponse,
    /// The TLS handshake failed (certificate not verified, refused, no protocol in common).
    TlsFailure,
}

impl FailureKind {
    /// Every kind, in the order of [`PeerMetrics::failures`].
    pub const ALL: [FailureKind; 6] = [
        FailureKind::ConnectFailure,
        FailureKind::ConnectTimeout,
        FailureKind::Reset,
        FailureKind::Timeout,
        FailureKind::InvalidResponse,
        FailureKind::TlsFailure,
    ];

    /// The value of the `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::ConnectFailure => "connect_failure",
            FailureKind::ConnectTimeout => "connect_timeout",
            FailureKind::Reset => "reset",
            FailureKind::Timeout => "timeout",
            FailureKind::InvalidResponse => "invalid_response",
            FailureKind::TlsFailure => "tls_failure",
        }
    }
}

/// The `code` label values of [`PeerMetrics::responses`], by index.
pub const RESPONSE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One shard's view of one peer of one upstream. Written only by that shard.
#[derive(Debug, Default)]
pub struct PeerMetrics {
    /// Tries sent to this peer (first tries and retries).
    pub requests: Counter,
    /// Responses received from this peer by class, index 0 = 1xx … 4 = 5xx (interim
    /// responses included).
    pub responses: [Counter; 5],
    /// Failed tries by kind, in the order of [`FailureKind::ALL`].
    pub failures: [Counter; 6],
    /// Retries sent to this peer (tries that were not the request's first).
    pub retries: Counter,
    /// Tries in flight at this peer.
    pub active_requests: Gauge,
    /// 1 while this shard's circuit breaker for the peer is open, else 0.
    pub breaker_open: Gauge,
    /// This shard's EWMA of the peer's response time, in seconds (unset until measured).
    pub ewma_seconds: F64Gauge,
    /// Connections newly opened to the peer.
    pub connections_new: Counter,
    /// Tries that reused a pooled connection.
    pub connections_reused: Counter,
    /// Idle pooled connections to the peer.
    pub pool_idle: Gauge,
    /// Bytes written to the peer.
    pub bytes_sent: Counter,
    /// Bytes read from the peer.
    pub bytes_received: Counter,
    /// Time from sending the request to having the response head.
    pub response_seconds: Histogram,
    /// This shard's share of the peer's `max_conns` (0 = no limit).
    pub max_conns: Gauge,
    /// Times a selection passed the peer over because it was at its `max_conns`.
    pub saturated: Counter,
    /// Times a selection passed the peer over because its `rate` bucket was empty.
    pub rate_limited: Counter,
    /// The peer's effective weight in this shard (below its weight during `slow_start_ms`).
    pub slow_start_weight: F64Gauge,
}

impl PeerMetrics {
    /// Counts a response with status `code` in its class; a code outside 100..=599 is not
    /// counted.
    #[inline]
    pub fn count_response(&self, code: u16) {
        if let Some(c) = (code / 100)
            .checked_sub(1)
            .and_then(|i| self.responses.get(usize::from(i)))
        {
            c.inc();
        }
    }

    /// Counts a failed try of `kind`.
    #[inline]
    pub fn count_failure(&self, kind: FailureKind) {
        self.failures[kind as usize].inc();
    }
}

/// One shard's view of one upstream group. Written only by that shard.
#[derive(Debug, Default)]
pub struct UpstreamMetrics {
    /// Requests routed to this upstream.
    pub requests: Counter,
    /// Requests for which no eligible peer was found.
    pub no_peer: Counter,
    /// Retries not made because the retry budget was spent.
    pub retry_budget_exhausted: Counter,
    /// Tunnels (upgraded connections) open now.
    pub tunnels_active: Gauge,
    /// Tunnels opened (a `101 Switching Protocols` relayed).
    pub tunnels_total: Counter,
    /// Tunnel bytes copied from clients to the upstream (`direction="upstream"`).
    pub tunnel_bytes_upstream: Counter,
    /// Tunnel bytes copied from the upstream to clients (`direction="downstream"`).
    pub tunnel_bytes_downstream: Counter,
    /// Response body bytes moved from the upstream to clients through a pipe (`[server]
    /// splice = true`), never copied into ringlb.
    pub spliced_bytes: Counter,
    /// Requests waiting in the upstream's queue now.
    pub queue_length: Gauge,
    /// How long requests waited in the queue before a peer took them.
    pub queue_wait_seconds: Histogram,
    /// Requests answered 503 because the queue was full.
    pub queue_overflows: Counter,
    /// Requests answered 503 because they waited `queue.timeout_ms`.
    pub queue_timeouts: Counter,
    /// Selections held back because the upstream's own `rate` bucket was empty.
    pub rate_limited: Counter,
    /// Requests answered 429 by the per-client `rate`.
    pub client_rate_limited: Counter,
}

/// The lowest status code [`ShardMetrics::responses`] counts.
pub const FIRST_CODE: u16 = 100;
/// The highest status code [`ShardMetrics::responses`] counts.
pub const LAST_CODE: u16 = 599;
const CODES: usize = (LAST_CODE - FIRST_CODE + 1) as usize;

/// One shard's downstream (client-side) metrics. Written only by that shard.
#[derive(Debug)]
pub struct ShardMetrics {
    /// Client connections accepted.
    pub connections_accepted: Counter,
    /// Client connections open now.
    pub connections_active: Gauge,
    /// Of those, parked ones resting in the shard's dormant set (no task, no buffer).
    pub connections_dormant: Gauge,
    /// Requests read from clients.
    pub requests: Counter,
    /// Final responses sent to clients by exact status code, index `code - 100`; use
    /// [`ShardMetrics::count_response`].
    responses: [Counter; CODES],
    /// Time from a request's head being read to its response's last byte being written.
    pub request_duration_seconds: Histogram,
    /// Failed TLS handshakes of clients, by reason (index into [`TLS_HANDSHAKE_REASONS`]).
    pub tls_handshake_failures: [Counter; 7],
}

/// The `reason` label values of `ringlb_tls_handshake_failures_total`, by index of
/// [`ShardMetrics::tls_handshake_failures`] (the order of `tls::HandshakeFailure::ALL`).
pub const TLS_HANDSHAKE_REASONS: [&str; 7] = [
    "timeout",
    "eof",
    "cleartext",
    "alert",
    "incompatible",
    "protocol",
    "io",
];

impl Default for ShardMetrics {
    fn default() -> Self {
        Self {
            connections_accepted: Counter::new(),
            connections_active: Gauge::new(),
            connections_dormant: Gauge::new(),
            requests: Counter::new(),
            responses: std::array::from_fn(|_| Counter::new()),
            request_duration_seconds: Histogram::new(),
            tls_handshake_failures: std::array::from_fn(|_| Counter::new()),
        }
    }
}

impl ShardMetrics {
    /// Counts a response sent to a client with status `code`; a code outside
    /// [`FIRST_CODE`]..=[`LAST_CODE`] is not counted.
    #[inline]
    pub fn count_response(&self, code: u16) {
        if let Some(c) = code
            .checked_sub(FIRST_CODE)
            .and_then(|i| self.responses.get(usize::from(i)))
        {
            c.inc();
        }
    }

    /// How many responses with status `code` this shard sent (0 outside the table).
    pub fn responses(&self, code: u16) -> u64 {
        code.checked_sub(FIRST_CODE)
            .and_then(|i| self.responses.get(usize::from(i)))
            .map_or(0, Counter::get)
    }
}

/// A peer's health as the control thread sees it, for `ringlb_peer_up` and
/// `ringlb_peer_health_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PeerState {
    /// Healthy: selectable.
    Up,
    /// Failed its active health checks.
    Down,
    /// Taken out by passive ejection.
    Ejected,
    /// Not known yet (no probe result), or not reported by the caller.
    #[default]
    Unknown,
}

impl PeerState {
    /// Every state, in the order rendered.
    pub const ALL: [PeerState; 4] = [
        PeerState::Up,
        PeerState::Down,
        PeerState::Ejected,
        PeerState::Unknown,
    ];

    /// The value of the `state` label.
    pub fn label(self) -> &'static str {
        match self {
            PeerState::Up => "up",
            PeerState::Down => "down",
            PeerState::Ejected => "ejected",
            PeerState::Unknown => "unknown",
        }
    }
}

/// The control thread's facts about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerControl {
    /// The upstream's name, as in the config.
    pub upstream: String,
    /// The peer's address, as in the config.
    pub peer: String,
    /// Its current health state.
    pub state: PeerState,
    /// How often passive health ejected it since start.
    pub ejections: u64,
}

/// What only the control thread knows, filled by it before each [`render()`]. A peer of the
/// [`Registry`] without an entry in [`ControlGauges::peers`] renders as
/// [`PeerState::Unknown`] with 0 ejections.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ControlGauges {
    /// The `version` label of `ringlb_build_info`.
    pub version: String,
    /// Per peer: health state and ejections.
    pub peers: Vec<PeerControl>,
    /// Config reloads that were applied.
    pub reloads_ok: u64,
    /// Config reloads that were rejected.
    pub reloads_error: u64,
    /// Unix time in seconds of the last successful (re)load, `None` to leave the metric out.
    pub last_reload_success_unix_seconds: Option<f64>,
    /// Observations shards could not send to the control thread (channel full).
    pub observations_dropped: u64,
    /// Per discovered upstream: its answers by result and its discovered peers.
    pub discovery: Vec<DiscoveryGauges>,
}

/// DiscoveryGauges is one discovered upstream's figures (`ringlb_discovery_*`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DiscoveryGauges {
    /// The `upstream` label.
    pub upstream: String,
    /// Answers so far by `result` label (`changed`, `unchanged`, `empty`, `error`).
    pub updates: Vec<(&'static str, u64)>,
    /// Peers the discovery provides now.
    pub peers: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_responses_count_by_class_and_skip_nonsense_codes() {
        let p = PeerMetrics::default();
        for code in [100, 199, 200, 204, 302, 404, 499, 500, 599, 0, 42, 600, 999] {
            p.count_response(code);
        }
        let got: Vec<u64> = p.responses.iter().map(Counter::get).collect();
        assert_eq!(got, [2, 2, 1, 2, 2]);
    }

    #[test]
    fn failure_kinds_index_their_own_counter() {
        let p = PeerMetrics::default();
        p.count_failure(FailureKind::Timeout);
        p.count_failure(FailureKind::Timeout);
        p.count_failure(FailureKind::ConnectFailure);
        let got: Vec<u64> = p.failures.iter().map(Counter::get).collect();
        assert_eq!(got, [1, 0, 0, 2, 0, 0]);
        let labels: Vec<&str> = FailureKind::ALL.iter().map(|k| k.label()).collect();
        assert_eq!(
            labels,
            [
                "connect_failure",
                "connect_timeout",
                "reset",
                "timeout",
                "invalid_response",
                "tls_failure"
            ]
        );
    }

    #[test]
    fn shard_responses_count_exact_codes_inside_the_table() {
        let s = ShardMetrics::default();
        for code in [100, 200, 200, 599, 99, 600] {
            s.count_response(code);
        }
        assert_eq!(s.responses(100), 1);
        assert_eq!(s.responses(200), 2);
        assert_eq!(s.responses(599), 1);
        assert_eq!(s.responses(99), 0);
        assert_eq!(s.responses(600), 0);
    }
}

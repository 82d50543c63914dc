//! The per-connection request loop: read head → route → select → forward → relay → repeat.
//!
//! One task per downstream connection, inside one shard. Everything it touches is shard-local
//! (invariant 1). Buffers are owned and moved through monoio's I/O calls; bodies
//! stream through one bounded buffer per direction, so memory per connection stays bounded
//! whatever the body size. Failures before anything reached the client are answered with one
//! status from [`HttpError::status`]; failures after that close the client connection, so a
//! client never sees mixed or truncated-but-complete-looking bytes.

mod body;
mod context;
mod picker;
mod route;

pub use context::ShardCtx;
pub use picker::{Pick, Picker, RequestInfo, Upstreams};
pub use route::Router;

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use monoio::io::{CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;

use crate::balance::PeerId;
use crate::control::Outcome;
use crate::failover::{Failure, FailureAction, FailureHooks, Next, PeerInfo, TryContext};
use crate::http::{
    copy_without, parse_request, parse_response, rewrite_request, rewrite_response,
    write_error_response, BodyKind, ChunkedDecoder, ForwardInfo, HttpError, ParseStatus,
    RequestHead, ResponseHead, Version,
};
use crate::io::{read_more, write_all, write_all_counted, write_range, IoFail};
use crate::upstream::{Admit, TriedSet, UpstreamGroup};
use body::BodyProgress;

/// Initial capacity of a connection's client read buffer.
const CLIENT_BUF: usize = 8 * 1024;
/// Initial capacity of a connection's upstream read buffer (response heads).
const UPSTREAM_BUF: usize = 16 * 1024;
/// Capacity bodies stream through.
const STREAM_BUF: usize = 64 * 1024;

/// Serves one downstream connection until it closes.
pub async fn serve(ctx: &ShardCtx, io: TcpStream, addr: SocketAddr) {
    let mut conn = Conn {
        ctx,
        io,
        client: addr,
        fwd: ForwardInfo {
            client_ip: addr.ip().to_canonical(),
            proto: "http",
        },
        rbuf: Vec::with_capacity(CLIENT_BUF),
        rpos: 0,
        out: Vec::with_capacity(1024),
        ubuf: Vec::with_capacity(UPSTREAM_BUF),
        head: RequestHead::default(),
        resp: ResponseHead::default(),
        interim_sent: false,
        upstream_fault: None,
        head_request: false,
        linger: false,
        continue_sent: false,
        interim_count: 0,
        interim_bytes: 0,
    };
    let mut first = true;
    loop {
        ctx.drain_control();
        match conn.read_request_head(first).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(err) => {
                conn.reply_error(&err, false).await;
                break;
            }
        }
        first = false;
        if !conn.handle_request().await {
            break;
        }
    }
    // Unread bytes mean the client sent more than was answered (pipelined requests after a
    // close): linger for them too.
    if conn.linger || conn.rbuf.len() > conn.rpos {
        conn.lingering_close().await;
    }
}

/// Conn is one downstream connection and its reusable buffers.
struct Conn<'a> {
    /// The shard this connection lives on.
    ctx: &'a ShardCtx,
    /// The client socket.
    io: TcpStream,
    /// The client's address.
    client: SocketAddr,
    /// What X-Forwarded-* says about the client.
    fwd: ForwardInfo,
    /// Bytes read from the client; the unconsumed ones start at `rpos`.
    rbuf: Vec<u8>,
    /// Start of the unconsumed bytes in `rbuf`.
    rpos: usize,
    /// Heads (and small bodies) being written, in either direction.
    out: Vec<u8>,
    /// Bytes read from the upstream.
    ubuf: Vec<u8>,
    /// The current request head (offsets into `rbuf`), reused.
    head: RequestHead,
    /// The current response head (offsets into `ubuf`), reused.
    resp: ResponseHead,
    /// Whether an interim (1xx) response of the current try reached the client.
    interim_sent: bool,
    /// Set when a response was broken off by the upstream mid-body (for passive health).
    upstream_fault: Option<Outcome>,
    /// The request being answered is a HEAD (known from its first bytes even when its head
    /// does not parse): ringlb's own answers to it carry no body.
    head_request: bool,
    /// ringlb closes the connection while the client may still be sending (an error answer,
    /// a request body it did not read): close it the lingering way.
    linger: bool,
    /// A `100 Continue` reached the client for the current request (from ringlb or the
    /// upstream): another one would say nothing new and is not relayed.
    continue_sent: bool,
    /// Interim responses of the current try (bounded by `limits.max_interim_responses`).
    interim_count: u32,
    /// Bytes of the current try's interim response heads (bounded by
    /// `limits.max_interim_bytes`).
    interim_bytes: usize,
}

/// TryResult is how one try of a request on one peer ended.
enum TryResult {
    /// The response was relayed completely (or as far as the client took it).
    Relayed {
        /// The client connection may serve another request.
        keep_client: bool,
    },
    /// The try failed before anything but interim responses reached the client.
    Failed {
        /// What failed.
        failure: Failure,
        /// Whether any request byte was written on the try's connection.
        sent: bool,
        /// For a status failure: the connection with its response head, to relay it when
        /// the request is not retried.
        held: Option<Held>,
    },
    /// The client went away, or the response broke off after it started: close.
    ClientGone,
}

/// TryFail is why sending a request or reading its response head failed.
enum TryFail {
    /// A pooled connection turned out closed before any response byte: the request may be
    /// sent again on a fresh connection.
    Stale,
    /// Writing the request failed before any byte of it left: the peer never saw it, so it
    /// may be sent again whatever its method.
    Unsent,
    /// The try failed.
    Failure {
        /// What failed.
        failure: Failure,
        /// Whether any request byte was written.
        sent: bool,
    },
    /// The client went away.
    ClientGone,
}

/// Held is an upstream connection whose final response head is parsed in `Conn::resp` and
/// not relayed yet.
struct Held {
    /// The connection.
    up: TcpStream,
    /// The upstream refused an `Expect: 100-continue` body, which was never sent.
    body_unsent: bool,
    /// The request body was read completely from the client.
    body_done: bool,
}

/// PickerHooks lets a custom picker's failure hooks (or the policy, without one) decide.
struct PickerHooks<'a>(Option<&'a dyn Picker>);

impl FailureHooks for PickerHooks<'_> {
    fn fail_to_connect(&self, err: &Failure, peer: &PeerInfo<'_>, tries: u32) -> FailureAction {
        match self.0 {
            Some(p) => p.fail_to_connect(err, peer, tries),
            None => FailureAction::Default,
        }
    }

    fn error_while_proxying(
        &self,
        err: &Failure,
        peer: &PeerInfo<'_>,
        tries: u32,
        ctx: &TryContext,
    ) -> FailureAction {
        match self.0 {
            Some(p) => p.error_while_proxying(err, peer, tries, ctx),
            None => FailureAction::Default,
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
        Failure::Status(_) => HttpError::BadGateway("upstream answered with an error status"),
    }
}

/// ActiveGuard counts a request in flight to a peer for as long as it lives.
struct ActiveGuard<'a>(&'a Cell<u32>);

impl<'a> ActiveGuard<'a> {
    fn new(active: &'a Cell<u32>) -> Self {
        active.set(active.get() + 1);
        ActiveGuard(active)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

impl Conn<'_> {
    /// Reads until `rbuf[rpos..]` starts with a complete request head, parsed into `self.head`.
    ///
    /// `Ok(false)`: the connection should close quietly (client closed, idle timeout,
    /// shutdown). An idle wait is bounded by `client_idle`; once a request has begun (and for a
    /// new connection, from accept) the whole head must arrive within `request_header` (408).
    async fn read_request_head(&mut self, first: bool) -> Result<bool, HttpError> {
        let ctx = self.ctx;
        let limits = ctx.config.limits;
        let timeouts = ctx.config.timeouts;
        if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        let mut deadline = first.then(|| Instant::now() + timeouts.request_header);
        loop {
            if !self.rbuf.is_empty() {
                self.head_request = starts_head_request(&self.rbuf);
                if parse_request(&self.rbuf, &limits, &mut self.head)? == ParseStatus::Complete {
                    return Ok(true);
                }
                deadline.get_or_insert_with(|| Instant::now() + timeouts.request_header);
            }
            if self.rbuf.is_empty() && ctx.is_shutting_down() {
                return Ok(false);
            }
            let wait = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => timeouts.client_idle,
            };
            // Only a connection with nothing pending is idle: shutdown may cancel that wait.
            let pending = !self.rbuf.is_empty();
            let cancel = (!pending).then(|| ctx.cancel_handle());
            match read_more(&mut self.io, &mut self.rbuf, wait, cancel, CLIENT_BUF).await {
                Ok(0) => return Ok(false),
                Ok(_) => {}
                // (a timed-out read drops the buffer, so `pending` was taken before it)
                Err(IoFail::Timeout) if pending => return Err(HttpError::RequestTimeout),
                Err(_) => return Ok(false),
            }
        }
    }

    /// Writes an error response; returns whether the connection stays open. A connection that
    /// closes after it is closed the lingering way (the client may be sending still).
    async fn reply_error(&mut self, err: &HttpError, keep_alive: bool) -> bool {
        let keep_alive = keep_alive && !self.ctx.is_shutting_down();
        self.out.clear();
        write_error_response(err, keep_alive, self.head_request, &mut self.out);
        let wait = self.ctx.config.timeouts.client_idle;
        let written = write_all(&mut self.io, &mut self.out, wait).await.is_ok();
        self.linger = written && !keep_alive;
        written && keep_alive
    }

    /// Sends `100 Continue` to the client (once per request): ringlb asks for the body itself.
    /// Returns false when the client is gone.
    async fn send_continue(&mut self) -> bool {
        if self.continue_sent {
            return true;
        }
        self.continue_sent = true;
        self.out.clear();
        self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        let wait = self.ctx.config.timeouts.client_idle;
        let ok = write_all(&mut self.io, &mut self.out, wait).await.is_ok();
        self.out.clear();
        ok
    }

    /// Closes the connection so that what was written reaches the client even while it is
    /// still sending (nginx's `lingering_close`): shut the write side (the FIN tells the client
    /// the answer is complete), then read and discard until the client closes, nothing arrives
    /// for `lingering_timeout`, `lingering_time` has passed or `lingering_max_bytes` were
    /// discarded. Closing with unread bytes instead would make the kernel send a reset, which
    /// destroys the answer not yet read by the client. Shutdown cuts the wait short.
    async fn lingering_close(&mut self) {
        let limits = self.ctx.config.limits;
        // SAFETY: the fd is the open client socket owned by `self.io`; shutdown(2) changes no
        // memory.
        if unsafe { libc::shutdown(self.io.as_raw_fd(), libc::SHUT_WR) } != 0 {
            return;
        }
        let end = Instant::now() + limits.lingering_time;
        let mut discarded = 0u64;
        self.rbuf.clear();
        self.rpos = 0;
        while discarded <= limits.lingering_max_bytes {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() || self.ctx.is_shutting_down() {
                break;
            }
            let wait = left.min(limits.lingering_timeout);
            let cancel = Some(self.ctx.cancel_handle());
            match read_more(&mut self.io, &mut self.rbuf, wait, cancel, CLIENT_BUF).await {
                Ok(n) if n > 0 => discarded += n as u64,
                _ => break,
            }
            self.rbuf.clear();
        }
    }

    /// Answers 404 (no route). The request body, if any, was not read: close unless it has none.
    async fn reply_not_found(&mut self) -> bool {
        let keep = self.head.keep_alive && self.head.body == BodyKind::None;
        if keep {
            self.rpos = self.head.head_len;
        }
        self.reply_error(&HttpError::NotFound, keep).await
    }

    /// Proxies the request in `self.head`; returns whether the client connection stays open.
    ///
    /// The try loop: select an eligible peer (breaker included), try it, and on a failure let
    /// the group's [`Retrier`](crate::failover::Retrier) (with the picker's failure hooks)
    /// decide between retrying (at once on an untried peer, or after a backoff), answering
    /// with ringlb's own error, or relaying the failed try's response.
    async fn handle_request(&mut self) -> bool {
        let ctx = self.ctx;
        let pick = match &ctx.picker {
            Some(picker) => {
                let info = RequestInfo::new(&self.rbuf, &self.head, self.client);
                picker.pick(&info, &Upstreams::new(&ctx.upstream_names))
            }
            None => Pick {
                upstream: ctx.router.route(&self.rbuf, &self.head),
                hash: None,
            },
        };
        let Some(group_idx) = pick.upstream else {
            return self.reply_not_found().await;
        };
        let Some(group) = ctx.groups.get(group_idx) else {
            return self.reply_not_found().await;
        };
        let head_len = self.head.head_len;
        let mut body = BodyProgress::new(self.head.body, ctx.config.limits.max_body_bytes);
        let buffered = match body.advance(&self.rbuf[head_len..], None) {
            Ok(n) => n,
            Err(err) => return self.reply_error(&err, false).await,
        };
        self.rpos = head_len + buffered;
        self.continue_sent = false;
        let policy = *group.retrier.borrow().policy();
        let known = match self.head.body {
            BodyKind::Length(n) => Some(n),
            _ => None,
        };
        // A body small enough to keep is read whole before the first try, so that the request
        // can be replayed on another peer.
        let keep_body = !body.done() && policy.keeps_body(known);
        // `Expect: 100-continue` with no body bytes yet: a body ringlb keeps anyway is asked
        // for at once (ringlb answers 100 itself, as nginx does, and the upstream gets the
        // whole request without the expectation); a body that streams waits for the
        // upstream's 100 (see `await_continue`). Otherwise what is buffered goes out with the
        // head.
        let mut expect = self.head.expect_continue && buffered == 0 && !body.done();
        if expect && keep_body {
            if !self.send_continue().await {
                return false;
            }
            expect = false;
        }
        self.head.expect_continue = expect;
        self.build_request(group);

        let hash = pick
            .hash
            .or_else(|| group.request_hash(&self.rbuf, &self.head, self.fwd.client_ip));
        let start = Instant::now();
        let mut tctx = TryContext::new(
            self.head.method.is_idempotent(),
            self.head.has_idempotency_key(&self.rbuf),
        );
        if keep_body {
            if let Err(keep) = self.buffer_body(&mut body, policy.retry_body_bytes).await {
                return keep;
            }
        }
        group.retrier.borrow_mut().record_request(start);
        let deadline = policy.request_deadline(start);
        let hooks = PickerHooks(ctx.picker.as_deref());
        let mut tried = TriedSet::default();
        let no_one = TriedSet::default();
        let mut after_backoff = false;
        // A request the peer may have received on a reused connection that then died is sent
        // again (once per try, on a fresh connection) only when replaying it is safe.
        let stale_replay_safe =
            tctx.idempotent || tctx.idempotency_key || policy.retry_non_idempotent;
        let mut last_err = None;
        // A status failure's response, kept until the retry has a peer: relayed if none is left.
        let mut last_held: Option<(PeerId, Held)> = None;
        loop {
            let now = Instant::now();
            let skip = if after_backoff { &no_one } else { &tried };
            let Some(peer_id) = group.select(hash, skip, now) else {
                if let Some((held_peer, held)) = last_held.take() {
                    return match self.relay_response(group, held_peer, held).await {
                        TryResult::Relayed { keep_client } => keep_client,
                        _ => false,
                    };
                }
                let err =
                    last_err.unwrap_or(HttpError::ServiceUnavailable("no eligible upstream peer"));
                let keep = self.head.keep_alive && body.done();
                return self.reply_error(&err, keep).await;
            };
            tried.insert(peer_id);
            let admit = group.admit(peer_id, now);
            if matches!(admit, Admit::Refused) {
                after_backoff = false;
                continue;
            }
            drop(last_held.take()); // a failed response is discarded with its connection
            if self.out.is_empty() {
                // A timed-out write took the request with it; it is still whole in `rbuf`
                // (a retry only happens while the body is replayable).
                self.build_request(group);
            }
            let try_deadline = policy.try_deadline(now, deadline);
            let mut stale_retry_used = !stale_replay_safe;
            let result = self
                .try_peer(
                    group,
                    peer_id,
                    expect,
                    &mut body,
                    try_deadline,
                    &mut stale_retry_used,
                )
                .await;
            let (failure, sent, held) = match result {
                TryResult::Relayed { keep_client } => {
                    group.breaker_outcome(peer_id, admit, Some(true), Instant::now());
                    let outcome = Outcome::from_status(self.resp.status);
                    ctx.health.report(group_idx, peer_id, outcome);
                    return keep_client;
                }
                TryResult::ClientGone => {
                    let fault = self.upstream_fault.take();
                    group.breaker_outcome(peer_id, admit, fault.map(|_| false), Instant::now());
                    if let Some(outcome) = fault {
                        ctx.health.report(group_idx, peer_id, outcome);
                    }
                    return false;
                }
                TryResult::Failed {
                    failure,
                    sent,
                    held,
                } => (failure, sent, held),
            };
            let now = Instant::now();
            group.breaker_outcome(peer_id, admit, Some(!failure.is_peer_failure()), now);
            ctx.health
                .report(group_idx, peer_id, Outcome::from(failure));
            tctx.request_sent = sent;
            tctx.response_started = self.interim_sent;
            tctx.body_replayable = !body.started_streaming();
            tctx.untried_peer = group.any_untried_eligible(&tried, now);
            tctx.set_deadline(deadline, now);
            let peer = &group.peers[peer_id];
            let info = PeerInfo {
                id: peer_id,
                address: &peer.address,
                addr: peer.addr,
                backup: peer.backup,
            };
            let next = group
                .retrier
                .borrow_mut()
                .decide(&hooks, failure, &info, &tctx, now);
            tracing::debug!(
                group = %group.name,
                peer = %peer.address,
                try_no = tctx.tries,
                "try failed ({failure:?}): {next:?}"
            );
            let keep_client = self.head.keep_alive && body.done();
            match next {
                Next::Retry { backoff } => {
                    last_held = held.map(|h| (peer_id, h));
                    if let Some(wait) = backoff {
                        monoio::time::sleep(wait).await;
                    }
                    after_backoff = backoff.is_some();
                    tctx.begin_retry(backoff);
                    last_err = Some(failure_error(failure));
                }
                Next::Respond { status, .. } => {
                    let err = match status {
                        502 | 504 => failure_error(failure),
                        503 => HttpError::ServiceUnavailable("upstream unavailable"),
                        s => HttpError::Status(s),
                    };
                    return self.reply_error(&err, keep_client).await;
                }
                Next::Relay { .. } => {
                    let Some(held) = held else {
                        return self.reply_error(&failure_error(failure), keep_client).await;
                    };
                    return match self.relay_response(group, peer_id, held).await {
                        TryResult::Relayed { keep_client } => keep_client,
                        _ => false,
                    };
                }
            }
        }
    }

    /// Writes into `out` what a try sends first: the rewritten head and the request body
    /// bytes read so far (`rbuf[head_len..rpos]`, a chunked body in canonical framing).
    fn build_request(&mut self, group: &UpstreamGroup) {
        self.out.clear();
        rewrite_request(&self.rbuf, &self.head, &self.fwd, &mut self.out);
        if self.head.host.is_none() {
            // HTTP/1.0 clients may omit Host; the upstream request is HTTP/1.1, which needs
            // one: like nginx, name the upstream group.
            insert_host(&mut self.out, group.name.as_bytes());
        }
        let body = &self.rbuf[self.head.head_len..self.rpos];
        if self.head.body == BodyKind::Chunked {
            // These bytes were validated when they were read; scanning them again finds the
            // framing bytes not to forward (none, almost always: no allocation then).
            let mut strip = Vec::new();
            let _ = ChunkedDecoder::new().decode_framed(body, None, &mut strip);
            copy_without(body, &strip, &mut self.out);
        } else {
            self.out.extend_from_slice(body);
        }
    }

    /// Reads the rest of a request body that fits in `limit` bytes into `out` (after the
    /// head), so the whole request can be sent again. Stops early, leaving the rest to stream,
    /// when a chunked body turns out larger. `Err(keep)`: answered or gone; return `keep`.
    async fn buffer_body(&mut self, body: &mut BodyProgress, limit: usize) -> Result<(), bool> {
        let client_idle = self.ctx.config.timeouts.client_idle;
        let kept = |out: &Vec<u8>, head: usize| out.len().saturating_sub(head);
        let head_part = self.out.len() - (self.rpos - self.head.head_len);
        while !body.done() && kept(&self.out, head_part) <= limit {
            let before = self.rbuf.len();
            match read_more(&mut self.io, &mut self.rbuf, client_idle, None, CLIENT_BUF).await {
                Ok(n) if n > 0 => {}
                _ => return Err(false), // the client went away mid-body
            }
            let taken = match body.advance(&self.rbuf[before..], None) {
                Ok(n) => n,
                Err(err) => return Err(self.reply_error(&err, false).await),
            };
            body.copy_taken(&self.rbuf[before..], taken, &mut self.out);
            self.rpos = before + taken;
        }
        Ok(())
    }

    /// One try on one peer: a pooled or new connection, the request, the response head; then
    /// either the response is relayed, or the failure is handed back to the try loop (with the
    /// connection and its parsed head when the failure is a status listed in `retry.on`).
    async fn try_peer(
        &mut self,
        group: &UpstreamGroup,
        peer_id: PeerId,
        expect: bool,
        body: &mut BodyProgress,
        try_deadline: Option<Instant>,
        stale_retry_used: &mut bool,
    ) -> TryResult {
        // In flight to the peer from the moment it is chosen: a request waiting for its
        // connect counts too, or a peer that is slow to accept looks idle to the load-aware
        // selectors and attracts every request meanwhile.
        let _active = ActiveGuard::new(&group.load(peer_id).active);
        let mut fresh_only = false;
        loop {
            let pooled = if fresh_only {
                None
            } else {
                group.pool.take(peer_id, Instant::now())
            };
            let from_pool = pooled.is_some();
            let mut up = match pooled {
                Some(up) => up,
                None => match connect(group, peer_id, try_deadline).await {
                    Ok(up) => up,
                    Err(failure) => {
                        return TryResult::Failed {
                            failure,
                            sent: false,
                            held: None,
                        }
                    }
                },
            };
            let sent_at = Instant::now();
            let res = self
                .send_and_read_head(group, &mut up, expect, body, try_deadline)
                .await;
            if matches!(
                res,
                Ok(_)
                    | Err(TryFail::Failure {
                        failure: Failure::Timeout,
                        ..
                    })
            ) {
                // Response-head latency feeds peak_ewma (a timeout counts as its duration).
                let now = Instant::now();
                group.observe_latency(peer_id, now.duration_since(sent_at), now);
            }
            match res {
                Ok(body_unsent) => {
                    let status = self.resp.status;
                    let retry_on = group.retrier.borrow().policy().on;
                    if retry_on.contains(Failure::Status(status)) {
                        return TryResult::Failed {
                            failure: Failure::Status(status),
                            sent: true,
                            held: Some(Held {
                                up,
                                body_unsent,
                                body_done: body.done(),
                            }),
                        };
                    }
                    let held = Held {
                        up,
                        body_unsent,
                        body_done: body.done(),
                    };
                    return self.relay_response(group, peer_id, held).await;
                }
                Err(TryFail::Stale) if from_pool && !*stale_retry_used => {
                    tracing::debug!(
                        group = %group.name,
                        peer = %group.peers[peer_id].address,
                        "pooled connection was closed by the peer; retrying on a fresh one"
                    );
                    *stale_retry_used = true;
                    fresh_only = true;
                }
                Err(TryFail::Unsent) if from_pool => {
                    tracing::debug!(
                        group = %group.name,
                        peer = %group.peers[peer_id].address,
                        "pooled connection failed before the request left; sending it on a fresh one"
                    );
                    fresh_only = true;
                }
                Err(TryFail::Stale) => {
                    return TryResult::Failed {
                        failure: Failure::Reset,
                        sent: true,
                        held: None,
                    }
                }
                Err(TryFail::Unsent) => {
                    return TryResult::Failed {
                        failure: Failure::Reset,
                        sent: false,
                        held: None,
                    }
                }
                Err(TryFail::Failure { failure, sent }) => {
                    return TryResult::Failed {
                        failure,
                        sent,
                        held: None,
                    }
                }
                Err(TryFail::ClientGone) => return TryResult::ClientGone,
            }
        }
    }

    /// Sends the request on `up` (head, then the body) and reads the final response head
    /// into `self.resp`, relaying interim 1xx responses to HTTP/1.1 clients. `Ok(true)` means
    /// the upstream answered an `Expect: 100-continue` with a final status, so the body was
    /// never sent.
    async fn send_and_read_head(
        &mut self,
        group: &UpstreamGroup,
        up: &mut TcpStream,
        expect: bool,
        body: &mut BodyProgress,
        try_deadline: Option<Instant>,
    ) -> Result<bool, TryFail> {
        let t = group.timeouts;
        self.interim_sent = false;
        self.interim_count = 0;
        self.interim_bytes = 0;
        self.upstream_fault = None;
        // A try may be replayed transparently (stale pooled connection) only while no client
        // body byte beyond `out` was consumed and nothing reached the client.
        let replayable = !body.started_streaming();
        let limit = within(t.upstream_write, try_deadline);
        match write_all_counted(up, &mut self.out, limit).await {
            Ok(()) => {}
            Err((IoFail::Timeout, written)) => {
                return Err(TryFail::Failure {
                    failure: Failure::Timeout,
                    sent: written > 0,
                })
            }
            // Not one byte left: the peer cannot have seen the request.
            Err((IoFail::Io(_), 0)) => return Err(TryFail::Unsent),
            Err(_) if replayable => return Err(TryFail::Stale),
            Err(_) => {
                return Err(TryFail::Failure {
                    failure: Failure::Reset,
                    sent: true,
                })
            }
        }
        self.ubuf.clear();
        let mut body_unsent = false;
        if expect && !body.started_streaming() {
            match self.await_continue(up, t.expect_continue).await {
                Ok(true) => {}
                Ok(false) => body_unsent = true,
                Err(fail) => return Err(fail),
            }
        }
        if !body.done() && !body_unsent {
            self.stream_request_body(up, body, t.upstream_write, try_deadline)
                .await?;
        }

        let method = self.head.method;
        loop {
            match parse_response(&self.ubuf, method, &mut self.resp) {
                Ok(ParseStatus::Complete) => {
                    let status = self.resp.status;
                    if status == 101 {
                        return Err(TryFail::Failure {
                            failure: Failure::InvalidResponse,
                            sent: true,
                        });
                    }
                    if (100..200).contains(&status) {
                        self.relay_interim().await?;
                        continue;
                    }
                    return Ok(body_unsent);
                }
                Ok(ParseStatus::Partial) => {}
                Err(_) => {
                    return Err(TryFail::Failure {
                        failure: Failure::InvalidResponse,
                        sent: true,
                    })
                }
            }
            let mut wait = t.upstream_read;
            if let Some(d) = try_deadline {
                wait = wait.min(d.saturating_duration_since(Instant::now()));
            }
            let read = read_more(up, &mut self.ubuf, wait, None, UPSTREAM_BUF).await;
            match read {
                Ok(n) if n > 0 => {}
                Ok(_) | Err(IoFail::Io(_)) => {
                    if let Err(IoFail::Io(e)) = &read {
                        tracing::debug!(group = %group.name, "upstream read failed: {e}");
                    }
                    if self.ubuf.is_empty() && !body.started_streaming() && !self.interim_sent {
                        return Err(TryFail::Stale);
                    }
                    return Err(TryFail::Failure {
                        failure: Failure::Reset,
                        sent: true,
                    });
                }
                Err(IoFail::Timeout) => {
                    return Err(TryFail::Failure {
                        failure: Failure::Timeout,
                        sent: true,
                    })
                }
            }
        }
    }

    /// Relays the final response whose head is in `self.resp` / `self.ubuf` to the client,
    /// streaming its body, and returns the upstream connection to the pool when reusable.
    async fn relay_response(
        &mut self,
        group: &UpstreamGroup,
        peer_id: PeerId,
        held: Held,
    ) -> TryResult {
        let Held {
            mut up,
            body_unsent,
            body_done,
        } = held;
        let t = group.timeouts;
        let client_idle = self.ctx.config.timeouts.client_idle;
        let client_version = self.head.version;
        let resp_body = self.resp.body;
        let dechunk = resp_body == BodyKind::Chunked && client_version == Version::Http10;
        let keep_client = self.head.keep_alive
            && !self.ctx.is_shutting_down()
            && body_done
            && !body_unsent
            && resp_body != BodyKind::UntilClose
            && !dechunk;
        let mut reuse_upstream = self.resp.keep_alive && !body_unsent;
        // The client may still be sending a body ringlb did not read: close the lingering way.
        self.linger = !keep_client && (body_unsent || !body_done);
        if resp_body == BodyKind::UntilClose
            && self.resp.transfer_coded
            && client_version == Version::Http10
        {
            // Transfer codings other than chunked cannot be told to an HTTP/1.0 client
            // (RFC 9112 §6.1), and without them the payload is undecodable.
            self.upstream_fault = Some(Outcome::InvalidResponse);
            let err = HttpError::BadGateway("transfer coding an HTTP/1.0 client cannot decode");
            self.reply_error(&err, false).await;
            return TryResult::ClientGone;
        }
        self.out.clear();
        rewrite_response(
            &self.ubuf,
            &self.resp,
            client_version,
            keep_client,
            &mut self.out,
        );
        let rhead_len = self.resp.head_len;
        let mut rbody = BodyProgress::new(resp_body, None);
        let mut ranges = Vec::new();
        let taken = match rbody.advance(&self.ubuf[rhead_len..], dechunk.then_some(&mut ranges)) {
            Ok(n) => n,
            Err(_) => {
                self.upstream_fault = Some(Outcome::InvalidResponse);
                let err = HttpError::BadGateway("invalid chunked body from upstream");
                self.reply_error(&err, false).await;
                return TryResult::ClientGone;
            }
        };
        if rhead_len + taken < self.ubuf.len() {
            reuse_upstream = false; // the upstream sent more than its response
        }
        if dechunk {
            for r in &ranges {
                self.out
                    .extend_from_slice(&self.ubuf[rhead_len + r.start..rhead_len + r.end]);
            }
        } else {
            rbody.copy_taken(&self.ubuf[rhead_len..], taken, &mut self.out);
        }
        if write_all(&mut self.io, &mut self.out, client_idle)
            .await
            .is_err()
        {
            return TryResult::ClientGone;
        }

        // The rest of the body streams through `ubuf`.
        if !rbody.done() {
            if self.ubuf.capacity() < STREAM_BUF {
                self.ubuf.reserve(STREAM_BUF - self.ubuf.len());
            }
            loop {
                self.ubuf.clear();
                match read_more(&mut up, &mut self.ubuf, t.upstream_read, None, STREAM_BUF).await {
                    Ok(0) if resp_body == BodyKind::UntilClose => break,
                    Ok(0) | Err(IoFail::Io(_)) => {
                        self.upstream_fault = Some(Outcome::Reset);
                        return TryResult::ClientGone;
                    }
                    Err(IoFail::Timeout) => {
                        self.upstream_fault = Some(Outcome::Timeout);
                        return TryResult::ClientGone;
                    }
                    Ok(_) => {}
                }
                ranges.clear();
                let taken = match rbody.advance(&self.ubuf, dechunk.then_some(&mut ranges)) {
                    Ok(n) => n,
                    Err(_) => {
                        self.upstream_fault = Some(Outcome::InvalidResponse);
                        return TryResult::ClientGone;
                    }
                };
                if taken < self.ubuf.len() {
                    reuse_upstream = false;
                }
                let res = if dechunk {
                    self.out.clear();
                    for r in &ranges {
                        self.out.extend_from_slice(&self.ubuf[r.clone()]);
                    }
                    write_all(&mut self.io, &mut self.out, client_idle).await
                } else if !rbody.strip().is_empty() {
                    self.out.clear();
                    rbody.copy_taken(&self.ubuf, taken, &mut self.out);
                    write_all(&mut self.io, &mut self.out, client_idle).await
                } else {
                    write_range(&mut self.io, &mut self.ubuf, 0..taken, client_idle).await
                };
                if res.is_err() {
                    return TryResult::ClientGone;
                }
                if rbody.done() {
                    break;
                }
            }
            if self.ubuf.capacity() > STREAM_BUF {
                self.ubuf.shrink_to(STREAM_BUF);
            }
        }
        if reuse_upstream && resp_body != BodyKind::UntilClose {
            group.pool.put(peer_id, up, Instant::now());
        }
        TryResult::Relayed { keep_client }
    }

    /// With `Expect: 100-continue` on a body that streams: waits (at most `wait`, the
    /// upstream's `timeouts.expect_continue_ms`) for the upstream's answer.
    /// `Ok(true)`: send the body (a 100 was relayed, or the upstream stayed silent and ringlb
    /// sent the client a 100 itself, so that the client does not wait for its own timeout);
    /// `Ok(false)`: the upstream answered with a final status, the body is not sent.
    async fn await_continue(
        &mut self,
        up: &mut TcpStream,
        wait: Duration,
    ) -> Result<bool, TryFail> {
        let canceller = Canceller::new();
        let buf = std::mem::take(&mut self.ubuf);
        let len = buf.len();
        let cap = buf.capacity().max(UPSTREAM_BUF);
        let mut buf = buf;
        buf.reserve(cap - len);
        let cap = buf.capacity();
        let (res, slice) = {
            let slice = monoio::buf::IoBufMut::slice_mut(buf, len..cap);
            let read = up.cancelable_read(slice, canceller.handle());
            let mut read = std::pin::pin!(read);
            monoio::select! {
                r = &mut read => r,
                _ = monoio::time::sleep(wait) => {
                    let _ = canceller.cancel();
                    read.await
                }
            }
        };
        self.ubuf = slice.into_inner();
        match res {
            Ok(0) => return Err(TryFail::Stale),
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {
                return match self.send_continue().await {
                    true => Ok(true),
                    false => Err(TryFail::ClientGone),
                };
            }
            Err(_) if self.ubuf.is_empty() => return Err(TryFail::Stale),
            Err(_) => {}
        }
        // Read on until we know what the upstream said.
        let read_timeout = self.ctx.config.timeouts.upstream_read;
        loop {
            match parse_response(&self.ubuf, self.head.method, &mut self.resp) {
                Ok(ParseStatus::Complete) => {
                    if self.resp.status == 100 {
                        self.relay_interim().await?;
                        return Ok(true);
                    }
                    // Another 1xx is handled by the caller's loop; a final status means
                    // the upstream refused the body.
                    return Ok((100..200).contains(&self.resp.status) && self.resp.status != 101);
                }
                Ok(ParseStatus::Partial) => {}
                Err(_) => return Ok(false), // the caller reports the invalid response
            }
            match read_more(up, &mut self.ubuf, read_timeout, None, UPSTREAM_BUF).await {
                Ok(n) if n > 0 => {}
                _ => return Ok(false),
            }
        }
    }

    /// Relays the interim (1xx) response at the start of `ubuf` to an HTTP/1.1 client and
    /// removes it from `ubuf`. An upstream that sends more interim responses (or bytes of them)
    /// than `[limits]` allows is answering nothing: its response is invalid (502). A second
    /// `100 Continue` is dropped.
    async fn relay_interim(&mut self) -> Result<(), TryFail> {
        let limits = self.ctx.config.limits;
        self.interim_count += 1;
        self.interim_bytes += self.resp.head_len;
        if self.interim_count > limits.max_interim_responses
            || self.interim_bytes > limits.max_interim_bytes
        {
            tracing::debug!(
                count = self.interim_count,
                bytes = self.interim_bytes,
                "upstream sent too many interim responses"
            );
            return Err(TryFail::Failure {
                failure: Failure::InvalidResponse,
                sent: true,
            });
        }
        let repeat = self.resp.status == 100 && self.continue_sent;
        if self.head.version == Version::Http11 && !repeat {
            self.out.clear();
            rewrite_response(&self.ubuf, &self.resp, Version::Http11, true, &mut self.out);
            let wait = self.ctx.config.timeouts.client_idle;
            if write_all(&mut self.io, &mut self.out, wait).await.is_err() {
                return Err(TryFail::ClientGone);
            }
            self.interim_sent = true;
            self.continue_sent |= self.resp.status == 100;
        }
        self.ubuf.drain(..self.resp.head_len);
        Ok(())
    }

    /// Streams the rest of the request body from the client to the upstream, through `rbuf`
    /// (so bytes of a pipelined next request stay where the next head read finds them).
    async fn stream_request_body(
        &mut self,
        up: &mut TcpStream,
        body: &mut BodyProgress,
        write_timeout: Duration,
        try_deadline: Option<Instant>,
    ) -> Result<(), TryFail> {
        let client_idle = self.ctx.config.timeouts.client_idle;
        body.mark_streaming();
        if self.rbuf.capacity() < STREAM_BUF {
            self.rbuf.reserve(STREAM_BUF - self.rbuf.len());
        }
        while !body.done() {
            self.rbuf.clear();
            self.rpos = 0;
            match read_more(&mut self.io, &mut self.rbuf, client_idle, None, STREAM_BUF).await {
                Ok(n) if n > 0 => {}
                _ => return Err(TryFail::ClientGone), // the client went away mid-body
            }
            let taken = match body.advance(&self.rbuf, None) {
                Ok(n) => n,
                Err(err) => {
                    self.reply_error(&err, false).await;
                    return Err(TryFail::ClientGone);
                }
            };
            let limit = within(write_timeout, try_deadline);
            let written = if body.strip().is_empty() {
                write_range(up, &mut self.rbuf, 0..taken, limit).await
            } else {
                self.out.clear();
                body.copy_taken(&self.rbuf, taken, &mut self.out);
                write_all(up, &mut self.out, limit).await
            };
            match written {
                Ok(()) => {}
                Err(IoFail::Timeout) => {
                    return Err(TryFail::Failure {
                        failure: Failure::Timeout,
                        sent: true,
                    })
                }
                Err(_) => {
                    return Err(TryFail::Failure {
                        failure: Failure::Reset,
                        sent: true,
                    })
                }
            }
            self.rpos = taken;
        }
        if self.rbuf.capacity() > STREAM_BUF {
            self.rbuf.shrink_to(STREAM_BUF);
        }
        Ok(())
    }
}

/// Connects to a peer within the group's connect timeout.
async fn connect(
    group: &UpstreamGroup,
    peer: PeerId,
    try_deadline: Option<Instant>,
) -> Result<TcpStream, Failure> {
    let p = &group.peers[peer];
    let limit = within(group.timeouts.connect, try_deadline);
    match monoio::time::timeout(limit, TcpStream::connect_addr(p.addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(e)) => {
            tracing::debug!(group = %group.name, peer = %p.address, "connect failed: {e}");
            Err(Failure::ConnectFailure)
        }
        Err(_) => {
            tracing::debug!(group = %group.name, peer = %p.address, "connect timed out");
            Err(Failure::ConnectTimeout)
        }
    }
}

/// Inserts `Host: <host>` right after the request line of the head in `out`.
fn insert_host(out: &mut Vec<u8>, host: &[u8]) {
    let Some(eol) = out.windows(2).position(|w| w == b"\r\n") else {
        return;
    };
    let at = eol + 2;
    let line: Vec<u8> = [b"Host: ".as_slice(), host, b"\r\n"].concat();
    out.splice(at..at, line);
}

/// Whether a request that starts with `buf` is a HEAD (leading empty lines skipped, as the
/// parser does), so an error answer to it can leave out the body even when its head is bad.
fn starts_head_request(buf: &[u8]) -> bool {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    buf[start..].starts_with(b"HEAD ")
}

/// The shorter of `timeout` and the time left until `deadline`.
fn within(timeout: Duration, deadline: Option<Instant>) -> Duration {
    match deadline {
        Some(d) => timeout.min(d.saturating_duration_since(Instant::now())),
        None => timeout,
    }
}

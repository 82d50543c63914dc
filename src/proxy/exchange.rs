//! One exchange on one upstream connection: take a pooled connection or connect, send the
//! request (head, kept body, streamed body, `Expect: 100-continue`), read the response head
//! (relaying interim responses), and hand back how it went ([`TryResult`]). A stale pooled
//! connection is replaced here, within the try ([`replay_on_fresh`]); every other failure goes
//! back to the try loop as a value.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use monoio::io::Canceller;
use monoio::net::{TcpConnectOpts, TcpStream};

use super::body::BodyProgress;
use super::h2::{tunnels, H2Call, UpstreamIo};
use super::tries::replay_on_fresh;
use super::{Conn, STREAM_BUF, UPSTREAM_BUF};
use crate::balance::PeerId;
use crate::config::UpstreamProtocol;
use crate::control::Outcome;
use crate::failover::Failure;
use crate::http::{parse_response, rewrite_response, HttpError, ParseStatus, Version};
use crate::io::{
    read_append, read_more, write_all, write_all_counted, write_range, IoFail, Transport,
};
use crate::metrics::{FailureKind, PeerMetrics};
use crate::upstream::{Connection, UpstreamGroup};

/// TryResult is how one try of a request on one peer ended.
pub(super) enum TryResult {
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
    /// The client went away, or the response broke off after it started: close. `fault` is
    /// the upstream's part in it, if it had one.
    Broken {
        /// How the upstream failed (broke off, sent garbage, went silent).
        fault: Option<Outcome>,
    },
}

/// TryFail is why sending a request or reading its response head failed.
pub(super) enum TryFail {
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
pub(super) struct Held {
    /// The connection (or HTTP/2 stream).
    pub up: UpstreamIo,
    /// The upstream refused an `Expect: 100-continue` body, which was never sent.
    pub body_unsent: bool,
    /// The request body was read completely from the client.
    pub body_done: bool,
}

/// ActiveGuard counts a request in flight to a peer for as long as it lives (in the group's
/// successors too, after a reload).
pub(super) struct ActiveGuard<'a> {
    /// The group the request was counted in.
    group: &'a UpstreamGroup,
    /// The peer.
    peer: PeerId,
}

impl<'a> ActiveGuard<'a> {
    fn new(group: &'a UpstreamGroup, peer: PeerId) -> Self {
        group.begin_active(peer);
        ActiveGuard { group, peer }
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.group.end_active(self.peer);
    }
}

impl<C: Transport + 'static> Conn<'_, C> {
    /// One try on one peer: a pooled or new connection, the request, the response head; then
    /// either the response is relayed, or the failure is handed back to the try loop (with the
    /// connection and its parsed head when the failure is a status listed in `retry.on`).
    pub(super) async fn try_peer(
        &mut self,
        group: &UpstreamGroup,
        peer_id: PeerId,
        expect: bool,
        body: &mut BodyProgress,
        try_deadline: Option<Instant>,
        replay_stale: bool,
    ) -> TryResult {
        // In flight to the peer from the moment it is chosen: a request waiting for its
        // connect counts too, or a peer that is slow to accept looks idle to the load-aware
        // selectors and attracts every request meanwhile.
        let _active = ActiveGuard::new(group, peer_id);
        let pm = &*group.peer(peer_id).metrics;
        // Whether the try may run on HTTP/2 (for "auto" only if the peer picks it).
        let h2 = group.protocol != UpstreamProtocol::Http1;
        let mut expect = expect;
        if h2 && expect {
            // An HTTP/2 stream carries the body at once: ask the client for it now.
            if !self.send_continue().await {
                return TryResult::Broken { fault: None };
            }
            expect = false;
        }
        let mut fresh_only = false;
        let mut stale_replayed = false;
        loop {
            let (mut up, from_pool) = match self
                .upstream_for(group, peer_id, h2, fresh_only, try_deadline)
                .await
            {
                Ok(x) => x,
                Err(failure) => {
                    return TryResult::Failed {
                        failure,
                        sent: false,
                        held: None,
                    }
                }
            };
            if let UpstreamIo::H2(call) = &up {
                if let Err(end) = self
                    .h2_takes_upgrade(group, peer_id, call, try_deadline)
                    .await
                {
                    return end;
                }
            }
            let sent_at = Instant::now();
            let res = self
                .send_and_read_head(group, peer_id, &mut up, expect, body, try_deadline)
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
                    pm.response_seconds.observe(sent_at.elapsed());
                    pm.count_response(status);
                    if self.logging() {
                        self.log.upstream_time = Some(sent_at.elapsed());
                    }
                    if status == 101 {
                        // Never retried once relayed; `_active` keeps the peer in flight
                        // until the tunnel ends.
                        let held = Held {
                            up,
                            body_unsent,
                            body_done: body.done(),
                        };
                        return self.tunnel(group, peer_id, held).await;
                    }
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
                Err(TryFail::ClientGone) => return TryResult::Broken { fault: None },
                Err(TryFail::Failure { failure, sent }) => {
                    return TryResult::Failed {
                        failure,
                        sent,
                        held: None,
                    }
                }
                Err(fail @ (TryFail::Stale | TryFail::Unsent)) => {
                    let unsent = matches!(fail, TryFail::Unsent);
                    if !replay_on_fresh(from_pool, unsent, replay_stale, stale_replayed) {
                        return TryResult::Failed {
                            failure: Failure::Reset,
                            sent: !unsent,
                            held: None,
                        };
                    }
                    tracing::debug!(
                        group = %group.name,
                        peer = %group.peer(peer_id).address,
                        "pooled connection failed before the peer answered ({}); sending the \
                         request on a fresh one",
                        if unsent { "nothing sent" } else { "closed by the peer" }
                    );
                    stale_replayed |= !unsent;
                    fresh_only = true;
                }
            }
        }
    }

    /// For an upgrade request on an HTTP/2 stream: whether the peer takes extended CONNECT
    /// (RFC 8441), once its SETTINGS are known. One that does not is answered `502` (a clear
    /// error rather than the request without its upgrade) and the client connection closes;
    /// the peer is not blamed (no breaker or passive-health outcome): it is healthy, only not
    /// configured for tunnels.
    async fn h2_takes_upgrade(
        &mut self,
        group: &UpstreamGroup,
        peer_id: PeerId,
        call: &H2Call,
        try_deadline: Option<Instant>,
    ) -> Result<(), TryResult> {
        if !tunnels(&self.head) {
            return Ok(());
        }
        let p = group.peer(peer_id);
        let wait = within(p.timeouts.upstream_read, try_deadline);
        let failure = match monoio::time::timeout(wait, call.extended_connect()).await {
            Ok(Some(true)) => return Ok(()),
            Ok(Some(false)) => {
                tracing::warn!(
                    group = %group.name,
                    peer = %p.address,
                    "upgrade request answered 502: the HTTP/2 peer does not enable extended \
                     CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL, RFC 8441)"
                );
                let err = HttpError::BadGateway("upstream does not take upgrades over HTTP/2");
                self.reply_error(&err, false).await;
                return Err(TryResult::Broken { fault: None });
            }
            // The connection ended before its settings came: as a reset before sending.
            Ok(None) => Failure::Reset,
            Err(_) => Failure::Timeout,
        };
        Err(TryResult::Failed {
            failure,
            sent: false,
            held: None,
        })
    }

    /// The connection for one attempt of a try: a pooled HTTP/1.1 connection or a new one
    /// (`fresh_only`: a new one), or a stream on a multiplexed HTTP/2 connection (`h2`: the
    /// group's protocol is not plain HTTP/1.1). The bool says whether it was taken from what
    /// was open already.
    async fn upstream_for(
        &self,
        group: &UpstreamGroup,
        peer_id: PeerId,
        h2: bool,
        fresh_only: bool,
        try_deadline: Option<Instant>,
    ) -> Result<(UpstreamIo, bool), Failure> {
        let pm = &*group.peer(peer_id).metrics;
        if h2 {
            return self
                .h2_upstream_for(group, peer_id, fresh_only, try_deadline)
                .await;
        }
        if !fresh_only {
            if let Some(up) = group.take_idle(peer_id, Instant::now()) {
                pm.connections_reused.inc();
                return Ok((UpstreamIo::H1(up), true));
            }
        }
        let up = connect(group, peer_id, try_deadline, true).await?;
        pm.connections_new.inc();
        Ok((UpstreamIo::H1(up), false))
    }

    /// [`Self::upstream_for`] of a group whose protocol is `h2c`, `h2` or `auto`: a stream on
    /// an open HTTP/2 connection to the peer with room, else (`auto`) a pooled HTTP/1.1 one,
    /// else a new connection: HTTP/2 for `h2c`; for `h2` when the peer chose `h2` by ALPN (any
    /// other choice is a `tls_failure`); for `auto` what the peer chose.
    async fn h2_upstream_for(
        &self,
        group: &UpstreamGroup,
        peer_id: PeerId,
        fresh_only: bool,
        try_deadline: Option<Instant>,
    ) -> Result<(UpstreamIo, bool), Failure> {
        let p = group.peer(peer_id);
        let pm = &*p.metrics;
        let auto = group.protocol == UpstreamProtocol::Auto;
        let limits = self.live.config.limits;
        if !fresh_only {
            if let Some(client) = self.ctx.h2_upstreams.find(p.addr, p.tls.as_ref()) {
                pm.connections_reused.inc();
                let call = H2Call::new(client, limits);
                return Ok((UpstreamIo::H2(Box::new(call)), true));
            }
            if auto {
                if let Some(up) = group.take_idle(peer_id, Instant::now()) {
                    pm.connections_reused.inc();
                    return Ok((UpstreamIo::H1(up), true));
                }
            }
        }
        let started = Instant::now();
        let up = connect(group, peer_id, try_deadline, false).await?;
        pm.connections_new.inc();
        let chose_h2 = up.alpn() == Some(&b"h2"[..]);
        match group.protocol {
            UpstreamProtocol::H2 if !chose_h2 => {
                tracing::debug!(
                    group = %group.name,
                    peer = %p.address,
                    alpn = ?up.alpn().map(String::from_utf8_lossy),
                    "protocol \"h2\": the peer did not choose h2 by ALPN"
                );
                return Err(Failure::TlsFailure);
            }
            UpstreamProtocol::Auto if !chose_h2 => {
                // HTTP/1.1 it is: this connection is pooled like any other.
                group.pool.opened(peer_id, &up, Instant::now());
                return Ok((UpstreamIo::H1(up), false));
            }
            _ => {}
        }
        let limit = within(p.timeouts.connect, try_deadline).saturating_sub(started.elapsed());
        let idle = group.pool.idle_timeout(peer_id);
        let handshake = self.ctx.h2_upstreams.add(p.addr, p.tls.clone(), up, idle);
        let client = match monoio::time::timeout(limit, handshake).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::debug!(group = %group.name, peer = %p.address, "HTTP/2 handshake failed: {e}");
                return Err(Failure::ConnectFailure);
            }
            Err(_) => {
                tracing::debug!(group = %group.name, peer = %p.address, "HTTP/2 handshake timed out");
                return Err(Failure::ConnectTimeout);
            }
        };
        let call = H2Call::new(client, limits);
        Ok((UpstreamIo::H2(Box::new(call)), false))
    }

    /// Sends the request on `up` (head, then the body) and reads the final response head
    /// into `self.resp`, relaying interim 1xx responses to HTTP/1.1 clients. `Ok(true)` means
    /// the upstream answered an `Expect: 100-continue` with a final status, so the body was
    /// never sent.
    pub(super) async fn send_and_read_head<U: Transport>(
        &mut self,
        group: &UpstreamGroup,
        peer_id: PeerId,
        up: &mut U,
        expect: bool,
        body: &mut BodyProgress,
        try_deadline: Option<Instant>,
    ) -> Result<bool, TryFail> {
        let pm = &*group.peer(peer_id).metrics;
        let t = group.peer(peer_id).timeouts;
        self.interim_sent = false;
        self.interim_count = 0;
        self.interim_bytes = 0;
        // A try may be replayed transparently (stale pooled connection) only while no client
        // body byte beyond `out` was consumed and nothing reached the client.
        let replayable = !body.started_streaming();
        let limit = within(t.upstream_write, try_deadline);
        let head_bytes = self.out.len() as u64;
        match write_all_counted(up, &mut self.out, limit).await {
            Ok(()) => pm.bytes_sent.add(head_bytes),
            Err((IoFail::Timeout, written)) => {
                pm.bytes_sent.add(written as u64);
                return Err(TryFail::Failure {
                    failure: Failure::Timeout,
                    sent: written > 0,
                });
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
            match self.await_continue(up, pm, t.expect_continue).await {
                Ok(true) => {}
                Ok(false) => body_unsent = true,
                Err(fail) => return Err(fail),
            }
        }
        if !body.done() && !body_unsent {
            match self
                .stream_request_body(up, pm, body, t.upstream_write, try_deadline)
                .await
            {
                Ok(()) => {}
                // The peer stopped taking the body (it closed or reset the connection). A server
                // may answer before it read the whole body and close then (RFC 9112 §9.5: a
                // `413`, a `401`, a `501` for a method it does not serve), and its answer can
                // still be read from the socket, even behind the reset: it is the response,
                // relayed like any other; the rest of the body goes nowhere (`body_unsent`: the
                // upstream connection is not reused, the client's closes after the response).
                // No answer there: the read below fails and the try fails as a reset.
                Err(TryFail::Failure {
                    failure: Failure::Reset,
                    sent: true,
                }) => body_unsent = true,
                Err(fail) => return Err(fail),
            }
        }

        let method = self.head.method;
        loop {
            match parse_response(&self.ubuf, method, &mut self.resp) {
                Ok(ParseStatus::Complete) => {
                    let status = self.resp.status;
                    if status == 101 {
                        // Switching protocols answers only a request that asked to upgrade
                        // (to a protocol this upstream tunnels); the caller tunnels then.
                        if self.head.upgrade {
                            return Ok(body_unsent);
                        }
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
                Ok(n) if n > 0 => pm.bytes_received.add(n as u64),
                Ok(_) | Err(IoFail::Io(_)) => {
                    if let Err(IoFail::Io(e)) = &read {
                        tracing::debug!(group = %group.name, "upstream read failed: {e}");
                        if crate::tls::is_tls_failure(e) && self.ubuf.is_empty() {
                            // A TLS 1.3 peer refuses ringlb's client certificate only after
                            // the handshake: its alert is the answer to the request.
                            return Err(TryFail::Failure {
                                failure: Failure::TlsFailure,
                                sent: true,
                            });
                        }
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

    /// With `Expect: 100-continue` on a body that streams: waits (at most `wait`, the
    /// upstream's `timeouts.expect_continue_ms`) for the upstream's answer.
    /// `Ok(true)`: send the body (a 100 was relayed, or the upstream stayed silent and ringlb
    /// sent the client a 100 itself, so that the client does not wait for its own timeout);
    /// `Ok(false)`: the upstream answered with a final status, the body is not sent.
    pub(super) async fn await_continue<U: Transport>(
        &mut self,
        up: &mut U,
        pm: &PeerMetrics,
        wait: Duration,
    ) -> Result<bool, TryFail> {
        let canceller = Canceller::new();
        let res = {
            let read = read_append(
                up,
                &mut self.ubuf,
                UPSTREAM_BUF,
                usize::MAX,
                Some(canceller.handle()),
            );
            let mut read = std::pin::pin!(read);
            monoio::select! {
                r = &mut read => r,
                _ = monoio::time::sleep(wait) => {
                    let _ = canceller.cancel();
                    read.await
                }
            }
        };
        match res {
            Ok(0) => return Err(TryFail::Stale),
            Ok(n) => pm.bytes_received.add(n as u64),
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
        let read_timeout = self.live.config.timeouts.upstream_read;
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
                Ok(n) if n > 0 => pm.bytes_received.add(n as u64),
                _ => return Ok(false),
            }
        }
    }

    /// Relays the interim (1xx) response at the start of `ubuf` to an HTTP/1.1 client and
    /// removes it from `ubuf`. An upstream that sends more interim responses (or bytes of them)
    /// than `[limits]` allows is answering nothing: its response is invalid (502). A second
    /// `100 Continue` is dropped.
    pub(super) async fn relay_interim(&mut self) -> Result<(), TryFail> {
        let limits = self.live.config.limits;
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
            let wait = self.live.config.timeouts.client_idle;
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
    pub(super) async fn stream_request_body<U: Transport>(
        &mut self,
        up: &mut U,
        pm: &PeerMetrics,
        body: &mut BodyProgress,
        write_timeout: Duration,
        try_deadline: Option<Instant>,
    ) -> Result<(), TryFail> {
        let client_idle = self.live.config.timeouts.client_idle;
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
            let (written, n) = if body.strip().is_empty() {
                (
                    write_range(up, &mut self.rbuf, 0..taken, limit).await,
                    taken,
                )
            } else {
                self.out.clear();
                body.copy_taken(&self.rbuf, taken, &mut self.out);
                let n = self.out.len();
                (write_all(up, &mut self.out, limit).await, n)
            };
            match written {
                Ok(()) => pm.bytes_sent.add(n as u64),
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

/// The metrics' name for a failed try (`None` for a status: that is a response).
pub(super) fn failure_kind(failure: Failure) -> Option<FailureKind> {
    Some(match failure {
        Failure::ConnectFailure => FailureKind::ConnectFailure,
        Failure::ConnectTimeout => FailureKind::ConnectTimeout,
        Failure::Reset => FailureKind::Reset,
        Failure::Timeout => FailureKind::Timeout,
        Failure::InvalidResponse => FailureKind::InvalidResponse,
        Failure::TlsFailure => FailureKind::TlsFailure,
        Failure::Status(_) => return None,
    })
}

/// The metrics' name for how a response broke off.
pub(super) fn fault_kind(fault: Outcome) -> Option<FailureKind> {
    Some(match fault {
        Outcome::ConnectFailure => FailureKind::ConnectFailure,
        Outcome::Reset => FailureKind::Reset,
        Outcome::Timeout => FailureKind::Timeout,
        Outcome::InvalidResponse => FailureKind::InvalidResponse,
        Outcome::TlsFailure => FailureKind::TlsFailure,
        Outcome::Success | Outcome::Status(_) => return None,
    })
}

/// Connects to a peer within the group's connect timeout (the TLS handshake included, for a
/// peer with `tls`: a failed one is [`Failure::TlsFailure`]). `pooled`: the connection will
/// go back to the HTTP/1.1 pool (its age is tracked for rotation).
async fn connect(
    group: &UpstreamGroup,
    peer: PeerId,
    try_deadline: Option<Instant>,
    pooled: bool,
) -> Result<Connection, Failure> {
    let p = group.peer(peer);
    let limit = within(p.timeouts.connect, try_deadline);
    let started = Instant::now();
    let tcp = &group.tcp;
    let opts = TcpConnectOpts::default().tcp_fast_open(tcp.fastopen.is_some_and(|n| n > 0));
    let connecting = TcpStream::connect_addr_with_config(p.addr, &opts);
    let stream = match monoio::time::timeout(limit, connecting).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(tcp.nodelay.unwrap_or(true));
            // SAFETY: `stream` owns this open socket for the whole borrow.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(stream.as_raw_fd()) };
            if let Err((key, e)) = tcp.apply(socket2::SockRef::from(&fd), false) {
                // Checked at startup; a kernel that changed its mind since only costs the option.
                tracing::debug!(group = %group.name, "tcp.{key}: {e}");
            }
            if pooled {
                group.pool.opened(peer, &stream, Instant::now());
            }
            stream
        }
        Ok(Err(e)) => {
            tracing::debug!(group = %group.name, peer = %p.address, "connect failed: {e}");
            return Err(Failure::ConnectFailure);
        }
        Err(_) => {
            tracing::debug!(group = %group.name, peer = %p.address, "connect timed out");
            return Err(Failure::ConnectTimeout);
        }
    };
    let Some(tls) = &p.tls else {
        return Ok(Connection::Plain(stream));
    };
    let left = limit.saturating_sub(started.elapsed());
    match monoio::time::timeout(left, crate::tls::connect(stream, tls)).await {
        Ok(Ok(stream)) => Ok(stream.into()),
        Ok(Err(e)) => {
            let tls_failure = crate::tls::is_tls_failure(&e);
            // A certificate that does not verify, an alert, no protocol in common: most often
            // a setting to fix (`ca`, `sni`), so it is a warning, but at most one a second per
            // shard (the rest at debug): every request would fail the same way.
            if tls_failure && tls_warning_due() {
                tracing::warn!(
                    group = %group.name,
                    peer = %p.address,
                    "TLS handshake with the peer failed: {e} (further failures within 1 s are \
                     logged at debug)"
                );
            } else {
                tracing::debug!(group = %group.name, peer = %p.address, "TLS handshake failed: {e}");
            }
            Err(if tls_failure {
                Failure::TlsFailure
            } else {
                Failure::ConnectFailure
            })
        }
        Err(_) => {
            tracing::debug!(group = %group.name, peer = %p.address, "TLS handshake timed out");
            Err(Failure::ConnectTimeout)
        }
    }
}

/// The shorter of `timeout` and the time left until `deadline`.
pub(super) fn within(timeout: Duration, deadline: Option<Instant>) -> Duration {
    match deadline {
        Some(d) => timeout.min(d.saturating_duration_since(Instant::now())),
        None => timeout,
    }
}

/// Whether an upstream TLS failure may be logged as a warning now: at most one a second per
/// shard (thread).
fn tls_warning_due() -> bool {
    thread_local! {
        static LAST: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
    }
    let now = Instant::now();
    LAST.with(|last| {
        let due = last
            .get()
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1));
        if due {
            last.set(Some(now));
        }
        due
    })
}

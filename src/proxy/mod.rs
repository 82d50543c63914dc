//! The per-connection request loop: read head → route → select → forward → relay → repeat.
//!
//! One task per downstream connection, inside one shard. Everything it touches is shard-local
//! (DESIGN.md invariant 1). Buffers are owned and moved through monoio's I/O calls; bodies
//! stream through one bounded buffer per direction, so memory per connection stays bounded
//! whatever the body size. Failures before anything reached the client are answered with one
//! status from [`HttpError::status`]; failures after that close the client connection, so a
//! client never sees mixed or truncated-but-complete-looking bytes.

mod body;
mod io;
mod route;

pub use route::Router;

use std::cell::Cell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use monoio::io::{CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;

use crate::balance::PeerId;
use crate::health::Outcome;
use crate::http::{
    parse_request, parse_response, rewrite_request, rewrite_response, write_error_response,
    BodyKind, ForwardInfo, HttpError, ParseStatus, RequestHead, ResponseHead, Version,
};
use crate::shard::ShardCtx;
use crate::upstream::{TriedSet, UpstreamGroup};
use body::BodyProgress;
use io::{read_more, write_all, write_range, IoFail};

/// Initial capacity of a connection's client read buffer.
const CLIENT_BUF: usize = 8 * 1024;
/// Initial capacity of a connection's upstream read buffer (response heads).
const UPSTREAM_BUF: usize = 16 * 1024;
/// Capacity bodies stream through.
const STREAM_BUF: usize = 64 * 1024;
/// How long to wait for an upstream's `100 Continue` before sending the body anyway
/// (curl waits one second too).
const EXPECT_WAIT: Duration = Duration::from_secs(1);

/// Serves one downstream connection until it closes.
pub async fn serve(ctx: &ShardCtx, io: TcpStream, addr: SocketAddr) {
    let mut conn = Conn {
        ctx,
        io,
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
    };
    let mut first = true;
    loop {
        ctx.drain_control();
        match conn.read_request_head(first).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(err) => {
                conn.reply_error(&err, false).await;
                return;
            }
        }
        first = false;
        if !conn.handle_request().await {
            return;
        }
    }
}

/// Conn is one downstream connection and its reusable buffers.
struct Conn<'a> {
    /// The shard this connection lives on.
    ctx: &'a ShardCtx,
    /// The client socket.
    io: TcpStream,
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
    /// Set when the current try was aborted by the upstream (for passive health).
    upstream_fault: Option<Outcome>,
}

/// Exchange is how one try of a request on one upstream connection ended.
enum Exchange {
    /// The response was relayed completely.
    Done {
        /// The upstream connection may go back to the pool.
        reuse_upstream: bool,
        /// The client connection may serve another request.
        keep_client: bool,
    },
    /// A pooled connection turned out closed before any response byte: the request may be
    /// sent again on a fresh connection.
    Stale,
    /// Failed before anything reached the client: answer with this error.
    Failed {
        /// The answer.
        err: HttpError,
        /// Whether the client connection can still be used afterwards.
        keep_client: bool,
    },
    /// Failed after the response started (or the client went away): close the client.
    Aborted,
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

    /// Writes an error response; returns whether the connection stays open.
    async fn reply_error(&mut self, err: &HttpError, keep_alive: bool) -> bool {
        let keep_alive = keep_alive && !self.ctx.is_shutting_down();
        self.out.clear();
        write_error_response(err, keep_alive, &mut self.out);
        let wait = self.ctx.config.timeouts.client_idle;
        write_all(&mut self.io, &mut self.out, wait).await.is_ok() && keep_alive
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
    async fn handle_request(&mut self) -> bool {
        let ctx = self.ctx;
        let Some(group_idx) = ctx.router.route(&self.rbuf, &self.head) else {
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
        self.out.clear();
        rewrite_request(&self.rbuf, &self.head, &self.fwd, &mut self.out);
        if self.head.host.is_none() {
            // HTTP/1.0 clients may omit Host; the upstream request is HTTP/1.1, which needs
            // one: like nginx, name the upstream group.
            insert_host(&mut self.out, group.name.as_bytes());
        }
        // With `Expect: 100-continue` and no body bytes yet, the body waits for the upstream's
        // 100 (relayed to the client); otherwise what is buffered goes out with the head.
        let expect = self.head.expect_continue && buffered == 0 && !body.done();
        self.out
            .extend_from_slice(&self.rbuf[head_len..head_len + buffered]);
        self.rpos = head_len + buffered;

        let mut tried = TriedSet::default();
        let mut last_err = HttpError::BadGateway("no upstream peer could be reached");
        let mut stale_retry_used = false;
        loop {
            let Some(peer_id) = group.select(None, &tried) else {
                let err = if tried.is_empty() {
                    HttpError::ServiceUnavailable("no eligible upstream peer")
                } else {
                    last_err
                };
                let keep = self.head.keep_alive && body.done();
                return self.reply_error(&err, keep).await;
            };
            tried.insert(peer_id);
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
                    None => match connect(group, peer_id).await {
                        Ok(up) => up,
                        Err(err) => {
                            ctx.health
                                .report(group_idx, peer_id, Outcome::ConnectFailure);
                            last_err = err;
                            break; // next peer
                        }
                    },
                };
                let outcome = {
                    let _active = ActiveGuard::new(&group.load(peer_id).active);
                    self.exchange(group, &mut up, expect, &mut body).await
                };
                match outcome {
                    Exchange::Done {
                        reuse_upstream,
                        keep_client,
                    } => {
                        let outcome = Outcome::from_status(self.resp.status);
                        ctx.health.report(group_idx, peer_id, outcome);
                        if reuse_upstream {
                            group.pool.put(peer_id, up, Instant::now());
                        }
                        return keep_client;
                    }
                    Exchange::Stale if from_pool && !stale_retry_used => {
                        tracing::debug!(
                            group = %group.name,
                            peer = %group.peers[peer_id].address,
                            "pooled connection was closed by the peer; retrying on a fresh one"
                        );
                        stale_retry_used = true;
                        fresh_only = true;
                    }
                    Exchange::Stale => {
                        ctx.health.report(group_idx, peer_id, Outcome::Reset);
                        let keep = self.head.keep_alive && body.done();
                        let err = HttpError::BadGateway("upstream closed the connection");
                        return self.reply_error(&err, keep).await;
                    }
                    Exchange::Failed { err, keep_client } => {
                        tracing::debug!(
                            group = %group.name,
                            peer = %group.peers[peer_id].address,
                            "request failed: {err}"
                        );
                        ctx.health.report_error(group_idx, peer_id, &err);
                        return self.reply_error(&err, keep_client).await;
                    }
                    Exchange::Aborted => {
                        if let Some(outcome) = self.upstream_fault.take() {
                            ctx.health.report(group_idx, peer_id, outcome);
                        }
                        return false;
                    }
                }
            }
        }
    }

    /// One try: send the request on `up`, relay the response.
    async fn exchange(
        &mut self,
        group: &UpstreamGroup,
        up: &mut TcpStream,
        expect: bool,
        body: &mut BodyProgress,
    ) -> Exchange {
        let t = group.timeouts;
        let client_idle = self.ctx.config.timeouts.client_idle;
        // A try may only be replayed while no client body byte beyond `out` was consumed and
        // nothing reached the client.
        self.interim_sent = false;
        self.upstream_fault = None;
        let replayable = !body.started_streaming();
        let stale_or = |err: &'static str, replayable: bool| {
            if replayable {
                Exchange::Stale
            } else {
                Exchange::Failed {
                    err: HttpError::BadGateway(err),
                    keep_client: false,
                }
            }
        };
        if write_all(up, &mut self.out, t.upstream_write)
            .await
            .is_err()
        {
            return stale_or("cannot write to upstream", replayable);
        }
        self.ubuf.clear();
        let mut body_unsent = false;
        if expect && !body.started_streaming() {
            match self.await_continue(up).await {
                Ok(true) => {}
                Ok(false) => body_unsent = true,
                Err(ex) => return ex,
            }
        }
        if !body.done() && !body_unsent {
            if let Err(ex) = self.stream_request_body(up, body, t.upstream_write).await {
                return ex;
            }
        }
        // Response head (interim 1xx responses relayed to HTTP/1.1 clients).
        let method = self.head.method;
        loop {
            match parse_response(&self.ubuf, method, &mut self.resp) {
                Ok(ParseStatus::Complete) => {
                    let status = self.resp.status;
                    if status == 101 {
                        return Exchange::Failed {
                            err: HttpError::BadGateway("unexpected 101 from upstream"),
                            keep_client: false,
                        };
                    }
                    if (100..200).contains(&status) {
                        if let Err(ex) = self.relay_interim().await {
                            return ex;
                        }
                        continue;
                    }
                    break;
                }
                Ok(ParseStatus::Partial) => {}
                Err(_) => {
                    return Exchange::Failed {
                        err: HttpError::BadGateway("invalid response from upstream"),
                        keep_client: self.head.keep_alive && body.done(),
                    }
                }
            }
            let read = read_more(up, &mut self.ubuf, t.upstream_read, None, UPSTREAM_BUF).await;
            if let Err(IoFail::Io(e)) = &read {
                tracing::debug!(group = %group.name, "upstream read failed: {e}");
            }
            match read {
                Ok(0) | Err(IoFail::Io(_)) => {
                    if self.ubuf.is_empty() {
                        let replayable = !body.started_streaming() && !self.interim_sent;
                        return stale_or("upstream closed the connection", replayable);
                    }
                    return Exchange::Failed {
                        err: HttpError::BadGateway("upstream closed mid-response"),
                        keep_client: self.head.keep_alive && body.done(),
                    };
                }
                Ok(_) => {}
                Err(IoFail::Timeout) => {
                    return Exchange::Failed {
                        err: HttpError::GatewayTimeout("upstream did not answer in time"),
                        keep_client: self.head.keep_alive && body.done(),
                    }
                }
            }
        }

        // The final response: head plus whatever body bytes came with it, in one write.
        let client_version = self.head.version;
        let resp_body = self.resp.body;
        let dechunk = resp_body == BodyKind::Chunked && client_version == Version::Http10;
        let keep_client = self.head.keep_alive
            && !self.ctx.is_shutting_down()
            && body.done()
            && !body_unsent
            && resp_body != BodyKind::UntilClose
            && !dechunk;
        let mut reuse_upstream = self.resp.keep_alive && !body_unsent;
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
                return Exchange::Failed {
                    err: HttpError::BadGateway("invalid chunked body from upstream"),
                    keep_client: false,
                }
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
            self.out
                .extend_from_slice(&self.ubuf[rhead_len..rhead_len + taken]);
        }
        if write_all(&mut self.io, &mut self.out, client_idle)
            .await
            .is_err()
        {
            return Exchange::Aborted;
        }

        // The rest of the body streams through `ubuf`.
        if !rbody.done() {
            if self.ubuf.capacity() < STREAM_BUF {
                self.ubuf.reserve(STREAM_BUF - self.ubuf.len());
            }
            loop {
                self.ubuf.clear();
                match read_more(up, &mut self.ubuf, t.upstream_read, None, STREAM_BUF).await {
                    Ok(0) if resp_body == BodyKind::UntilClose => break,
                    Ok(0) | Err(IoFail::Io(_)) => {
                        self.upstream_fault = Some(Outcome::Reset);
                        return Exchange::Aborted;
                    }
                    Err(IoFail::Timeout) => {
                        self.upstream_fault = Some(Outcome::Timeout);
                        return Exchange::Aborted;
                    }
                    Ok(_) => {}
                }
                ranges.clear();
                let taken = match rbody.advance(&self.ubuf, dechunk.then_some(&mut ranges)) {
                    Ok(n) => n,
                    Err(_) => {
                        self.upstream_fault = Some(Outcome::InvalidResponse);
                        return Exchange::Aborted;
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
                } else {
                    write_range(&mut self.io, &mut self.ubuf, 0..taken, client_idle).await
                };
                if res.is_err() {
                    return Exchange::Aborted;
                }
                if rbody.done() {
                    break;
                }
            }
            if self.ubuf.capacity() > STREAM_BUF {
                self.ubuf.shrink_to(STREAM_BUF);
            }
        }
        Exchange::Done {
            reuse_upstream: reuse_upstream && resp_body != BodyKind::UntilClose,
            keep_client,
        }
    }

    /// With `Expect: 100-continue`: waits (at most [`EXPECT_WAIT`]) for the upstream's answer.
    /// `Ok(true)`: send the body (a 100 was relayed, or the upstream stayed silent);
    /// `Ok(false)`: the upstream answered with a final status, the body is not sent.
    async fn await_continue(&mut self, up: &mut TcpStream) -> Result<bool, Exchange> {
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
                _ = monoio::time::sleep(EXPECT_WAIT) => {
                    let _ = canceller.cancel();
                    read.await
                }
            }
        };
        self.ubuf = slice.into_inner();
        match res {
            Ok(0) => return Err(Exchange::Stale),
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => return Ok(true),
            Err(_) if self.ubuf.is_empty() => return Err(Exchange::Stale),
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
    /// removes it from `ubuf`.
    async fn relay_interim(&mut self) -> Result<(), Exchange> {
        if self.head.version == Version::Http11 {
            self.out.clear();
            rewrite_response(&self.ubuf, &self.resp, Version::Http11, true, &mut self.out);
            let wait = self.ctx.config.timeouts.client_idle;
            if write_all(&mut self.io, &mut self.out, wait).await.is_err() {
                return Err(Exchange::Aborted);
            }
            self.interim_sent = true;
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
    ) -> Result<(), Exchange> {
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
                _ => return Err(Exchange::Aborted), // the client went away mid-body
            }
            let taken = match body.advance(&self.rbuf, None) {
                Ok(n) => n,
                Err(err) => {
                    return Err(Exchange::Failed {
                        err,
                        keep_client: false,
                    })
                }
            };
            if write_range(up, &mut self.rbuf, 0..taken, write_timeout)
                .await
                .is_err()
            {
                return Err(Exchange::Failed {
                    err: HttpError::BadGateway("cannot write request body to upstream"),
                    keep_client: false,
                });
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
async fn connect(group: &UpstreamGroup, peer: PeerId) -> Result<TcpStream, HttpError> {
    let p = &group.peers[peer];
    match monoio::time::timeout(group.timeouts.connect, TcpStream::connect_addr(p.addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(e)) => {
            tracing::debug!(group = %group.name, peer = %p.address, "connect failed: {e}");
            Err(HttpError::BadGateway("cannot connect to upstream"))
        }
        Err(_) => {
            tracing::debug!(group = %group.name, peer = %p.address, "connect timed out");
            Err(HttpError::BadGateway("upstream connect timed out"))
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

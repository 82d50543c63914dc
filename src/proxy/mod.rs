//! The per-connection request loop: read head → route → select → forward → relay → repeat.
//!
//! One task per downstream connection, inside one shard. Everything it touches is shard-local
//! (invariant 1). Buffers are owned and moved through monoio's I/O calls; bodies
//! stream through one bounded buffer per direction, so memory per connection stays bounded
//! whatever the body size. Failures before anything reached the client are answered with one
//! status from [`HttpError::status`]; failures after that close the client connection, so a
//! client never sees mixed or truncated-but-complete-looking bytes.
//!
//! The pieces, each in its own file:
//! - this file: the connection (`serve`, `Conn`) and one request's driver
//!   (`handle_request`): route, keep or stream the body, then run the try loop;
//! - `tries`: the try loop's decisions as a synchronous state machine (tried set, held
//!   response, backoff, stale-replay rule, breaker and health outcomes), unit-tested;
//! - `exchange`: one try on one upstream connection (pool or connect, send, 1xx, head);
//! - `relay`: streaming the response back;
//! - `client`: the client side (head reads, ringlb's own answers, lingering close);
//! - `body`, `context`, `picker`, `route`: body framing progress, the shard's shared
//!   context, the programmable picker, the config-driven router.
//!
//! Both sides are generic over `io::Transport`: the client connection is any transport the
//! shard accepted (plain TCP today, monomorphised), the upstream side any transport the pool
//! keeps.

mod body;
mod client;
mod context;
mod exchange;
pub(crate) mod h2;
mod lazy_timer;
mod log;
mod park;
mod picker;
mod queue;
mod relay;
mod route;
mod transparent;
mod tries;
mod tunnel;

pub(crate) use context::{Live, ShardCtx};
pub use picker::{Pick, Picker, RequestInfo, Upstreams};
pub(crate) use route::Router;

use std::future::Future;
use std::net::SocketAddr;
use std::ops::Deref;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Instant;

use monoio::io::Canceller;

use crate::balance::PeerId;
use crate::failover::{DefaultHooks, FailureHooks, TryContext};
use crate::http::{
    copy_without, rewrite_request, BodyKind, ChunkedDecoder, ForwardInfo, HttpError, RequestHead,
    ResponseHead,
};
use crate::io::{read_more, Transport};
use crate::upstream::UpstreamGroup;
use body::BodyProgress;
use exchange::{Held, TryResult};
use tries::{Step, Then, Tries, TryEnd};

/// Initial capacity of a connection's client read buffer.
const CLIENT_BUF: usize = 8 * 1024;
/// Initial capacity of a connection's upstream read buffer (response heads).
const UPSTREAM_BUF: usize = 16 * 1024;
/// Capacity bodies stream through.
const STREAM_BUF: usize = 64 * 1024;
/// Capacity a response body longer than [`STREAM_BUF`] (by its `Content-Length`) streams
/// through.
const LARGE_BODY_BUF: usize = 256 * 1024;

/// Serves one downstream connection until it closes.
///
/// A connection alternates between *awake* and *parked*. Awake, it holds a [`Spare`] (its
/// buffers and request state, from the shard's pool) inside a boxed future and serves
/// requests; once it has waited `timeouts.client_park` for the next request with nothing
/// arriving, it gives the spare back, drops the boxed future and parks (invariant 7). A plain
/// TCP connection of a shard that keeps a dormant set ([`Rest`]) then leaves its task
/// altogether: its socket waits in the set, and readiness starts a new task
/// ([`serve_woken`]). Any other connection parks in its own task: this frame then holds only
/// the transport and a readiness wait. A busy keep-alive connection never parks, so the
/// request path keeps one read per request.
///
/// `shard` is what keeps the connection counted (the shard's guard); it derefs to the shard's
/// context. The future is an `async move` block over the arguments rather than an `async fn`,
/// which would keep a second copy of them: a connection parked in its task is this future,
/// so its size is most of what such a connection costs.
pub(crate) fn serve<C, S>(shard: S, io: C, addr: SocketAddr) -> impl Future<Output = ()>
where
    C: Transport + 'static,
    S: Deref<Target = ShardCtx> + Rest,
{
    serve_from(shard, io, addr, None, false)
}

/// Serves a connection that rested in the shard's dormant set and is readable: like
/// [`serve`], from the state it rested in (`first`: the first request's head deadline while
/// no request has begun).
pub(crate) fn serve_woken<C, S>(
    shard: S,
    io: C,
    addr: SocketAddr,
    first: Option<Instant>,
) -> impl Future<Output = ()>
where
    C: Transport + 'static,
    S: Deref<Target = ShardCtx> + Rest,
{
    serve_from(shard, io, addr, first, true)
}

// An `async fn` would keep its arguments twice (see `serve`): 200 bytes per parked connection.
#[allow(clippy::manual_async_fn)]
fn serve_from<C, S>(
    shard: S,
    io: C,
    addr: SocketAddr,
    first: Option<Instant>,
    woken: bool,
) -> impl Future<Output = ()>
where
    C: Transport + 'static,
    S: Deref<Target = ShardCtx> + Rest,
{
    async move {
        let (mut shard, mut io, mut first, mut woken) = (shard, io, first, woken);
        if !woken {
            first = Some(Instant::now() + shard.live().config.timeouts.request_header);
        }
        loop {
            // (in a block of its own: the awake stretch's result, and the boxed future with
            // its memory, must be gone before the park)
            let until = {
                let awake = boxed_in_place(|| serve_awake(&shard, io, addr, first, woken)).await;
                match awake {
                    Awake::Closed => return,
                    Awake::H2 { io, replay } => {
                        let conn = h2::serve_connection(&shard, h2::poll_stream(io), replay, addr);
                        Box::pin(conn).await;
                        return;
                    }
                    Awake::Parked {
                        io: parked,
                        until,
                        first: still_first,
                    } => {
                        io = parked;
                        first = still_first;
                        until
                    }
                }
            };
            if shard.is_shutting_down() {
                return;
            }
            // Parked: rest in the shard's dormant set (this task ends), or else wait here,
            // holding no buffer, until readable; close instead when the idle time passes,
            // shutdown begins (it closes parking) or the socket fails.
            match shard.rest(io, addr, first, until) {
                Ok(()) => return,
                Err((s, back)) => {
                    shard = s;
                    io = back;
                }
            }
            let ctx: &ShardCtx = &shard;
            let readable = monoio::select! {
                ready = io.wait_readable() => ready.is_ok(),
                _ = ctx.parking.wait(until) => false,
            };
            if !readable {
                return;
            }
            woken = true;
        }
    }
}

/// Rest is how a shard keeps parked connections with no task: its connection guard hands the
/// transport to the shard's dormant set. `Err` gives both back: the connection parks in its
/// own task (the default, for contexts without a dormant set).
pub(crate) trait Rest: Sized {
    /// Keeps the parked `io` until it is readable (then serves it with [`serve_woken`]) or
    /// `until` passes (then closes it); `first` as for [`serve_woken`].
    fn rest<C: Transport>(
        self,
        io: C,
        addr: SocketAddr,
        first: Option<Instant>,
        until: Instant,
    ) -> Result<(), (Self, C)> {
        let _ = (addr, first, until);
        Err((self, io))
    }
}

impl Rest for &ShardCtx {}

/// Awake is how an awake stretch of a connection ended.
enum Awake<C> {
    /// The connection is closed (or to be dropped).
    Closed,
    /// The connection opened with the HTTP/2 preface (prior knowledge): the caller serves it
    /// as HTTP/2 with `replay`, the bytes read so far, first.
    H2 {
        /// The transport, handed back.
        io: C,
        /// What was read from it already (the preface, and maybe more).
        replay: Vec<u8>,
    },
    /// Nothing arrived within the park time: the connection waits for readiness until
    /// `until`, then closes quietly.
    Parked {
        /// The transport, handed back.
        io: C,
        /// When the idle (or first-request) wait ends.
        until: Instant,
        /// The first request's head deadline, while no request has begun yet.
        first: Option<Instant>,
    },
}

/// `Box::pin(make())`, with the value built in the allocation rather than on the stack and
/// then moved there: `serve_awake`'s future is about 16 KB (the request path's states), and
/// `Box::pin(serve_awake(..))` copied all of it, unused states included, for every connection
/// and every HTTP/2 stream (7.5 % of an h2load run's CPU in `memmove`). Allocating first lets
/// the compiler write the future's few initial fields straight into the box.
#[inline(always)]
pub(crate) fn boxed_in_place<F>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    let mut slot = Box::<F>::new_uninit();
    slot.write(make());
    // SAFETY: `write` initialized the value.
    Box::into_pin(unsafe { slot.assume_init() })
}

/// Serves the one request of an HTTP/2 stream (`io`): the awake stretch alone, boxed once, with
/// none of [`serve`]'s parking around it. The stream's request is there already, so it is read
/// as a woken connection's is (at once: no warm wait, no park before it); after it the stream
/// has nothing more to say, and whether that ends in a close or a park, the stream ends.
pub(crate) fn serve_h2_request(
    ctx: &ShardCtx,
    io: h2::StreamIo,
    addr: SocketAddr,
) -> Pin<Box<impl Future<Output = impl Sized> + '_>> {
    let first = Some(Instant::now() + ctx.live().config.timeouts.request_header);
    boxed_in_place(|| serve_awake(ctx, io, addr, first, true))
}

/// Serves requests on `io` until the connection closes or parks. `first` is the first
/// request's head deadline (from accept) while no request has begun; `woken`: readiness
/// woke the parked connection.
async fn serve_awake<C: Transport + 'static>(
    ctx: &ShardCtx,
    io: C,
    addr: SocketAddr,
    first: Option<Instant>,
    woken: bool,
) -> Awake<C> {
    let mut conn = Conn::new(ctx, io, addr, ctx.take_spare());
    conn.woken = woken;
    let mut first = first;
    loop {
        ctx.drain_control();
        conn.live = ctx.live();
        match conn.read_request_head(first).await {
            Ok(Head::Ready) => {}
            Ok(Head::Close) => break,
            Ok(Head::Park(until)) => {
                let (io, spare) = conn.into_parts();
                ctx.put_spare(spare);
                return Awake::Parked { io, until, first };
            }
            Err(_)
                if first.is_some()
                    && conn.live.config.server.h2.h2c
                    && h2::is_preface(&conn.rbuf)
                    && conn.io.allows_h2c() =>
            {
                // Prior-knowledge HTTP/2 (RFC 9113 §3.3): the first bytes are the connection
                // preface, which never parses as HTTP/1.1, so the check costs HTTP/1.1
                // nothing. The connection is served from the caller, once this (large)
                // future is gone: not inside it, where it would stay allocated for the
                // HTTP/2 connection's whole life.
                let replay = std::mem::take(&mut conn.rbuf);
                let (io, spare) = conn.into_parts();
                ctx.put_spare(spare);
                return Awake::H2 { io, replay };
            }
            Err(err) => {
                let started = Instant::now();
                conn.begin_log(false);
                conn.reply_error(&err, false).await;
                conn.finish_log(started);
                break;
            }
        }
        first = None;
        // A reload that arrived while the head was read applies to this request already.
        ctx.drain_control();
        conn.live = ctx.live();
        let started = Instant::now();
        conn.begin_log(true);
        let keep = conn.handle_request().await;
        ctx.metrics
            .request_duration_seconds
            .observe(started.elapsed());
        conn.finish_log(started);
        if !keep {
            break;
        }
    }
    // Unread bytes mean the client sent more than was answered (pipelined requests after a
    // close): linger for them too.
    if conn.linger || conn.rbuf.len() > conn.rpos {
        conn.lingering_close().await;
    }
    ctx.put_spare(conn.into_parts().1);
    Awake::Closed
}

/// Head is what waiting for a request head ended with.
enum Head {
    /// `conn.head` holds a complete request head.
    Ready,
    /// Close quietly (the client closed, the idle wait passed, shutdown).
    Close,
    /// Nothing arrived within the park time: park until this instant.
    Park(Instant),
}

/// Spare is what a connection holds only while awake: its buffers and per-request state. A
/// shard keeps a bounded pool of them ([`ShardCtx::take_spare`]), so a connection that wakes
/// reuses another's allocations.
pub(crate) struct Spare {
    /// See [`Conn::rbuf`].
    rbuf: Vec<u8>,
    /// See [`Conn::out`].
    out: Vec<u8>,
    /// See [`Conn::ubuf`].
    ubuf: Vec<u8>,
    /// See [`Conn::head`].
    head: RequestHead,
    /// See [`Conn::resp`].
    resp: ResponseHead,
    /// See [`Conn::log`].
    log: log::RequestLog,
    /// See [`Conn::canceller`].
    canceller: Canceller,
}

impl Spare {
    /// A fresh spare with the buffers' initial capacities.
    pub(crate) fn new() -> Spare {
        Spare {
            rbuf: Vec::with_capacity(CLIENT_BUF),
            out: Vec::with_capacity(1024),
            ubuf: Vec::with_capacity(UPSTREAM_BUF),
            head: RequestHead::default(),
            resp: ResponseHead::default(),
            log: log::RequestLog::default(),
            canceller: Canceller::new(),
        }
    }

    /// Empties the buffers (and shrinks any that grew past what a request normally needs)
    /// before the spare goes back to the pool.
    fn reset(&mut self) {
        for (buf, keep) in [
            (&mut self.rbuf, CLIENT_BUF),
            (&mut self.out, 1024),
            (&mut self.ubuf, UPSTREAM_BUF),
        ] {
            buf.clear();
            if buf.capacity() > keep * 4 {
                buf.shrink_to(keep);
            }
        }
    }
}

impl<'a, C: Transport + 'static> Conn<'a, C> {
    /// An awake connection on `io`, with `spare`'s buffers.
    fn new(ctx: &'a ShardCtx, io: C, addr: SocketAddr, spare: Spare) -> Self {
        let proto = proto_of(&io);
        Conn {
            ctx,
            live: ctx.live(),
            io,
            client: addr,
            fwd: ForwardInfo {
                client_ip: addr.ip().to_canonical(),
                proto,
            },
            rbuf: spare.rbuf,
            rpos: 0,
            out: spare.out,
            ubuf: spare.ubuf,
            head: spare.head,
            resp: spare.resp,
            interim_sent: false,
            head_request: false,
            linger: false,
            continue_sent: false,
            interim_count: 0,
            interim_bytes: 0,
            log: spare.log,
            canceller: spare.canceller,
            woken: false,
            cold: None,
        }
    }

    /// The transport and the spare, taken apart (the spare reset for the pool).
    fn into_parts(self) -> (C, Spare) {
        let mut spare = Spare {
            rbuf: self.rbuf,
            out: self.out,
            ubuf: self.ubuf,
            head: self.head,
            resp: self.resp,
            log: self.log,
            canceller: self.canceller,
        };
        spare.reset();
        (self.io, spare)
    }
}

/// Conn is one downstream connection and its reusable buffers.
struct Conn<'a, C> {
    /// The shard this connection lives on.
    ctx: &'a ShardCtx,
    /// The configuration generation the current request runs on (taken before each request
    /// head is read: a reload applies from the next request on).
    live: Rc<Live>,
    /// The client connection.
    io: C,
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
    /// The current request's access-log facts (gathered only when the access log is on).
    log: log::RequestLog,
    /// Cancels the keep-alive wait's read when the connection parks (`io::read_warm`).
    canceller: Canceller,
    /// The connection just woke from parking (it is readable): read, don't wait warm.
    woken: bool,
    /// When the keep-alive wait parks (`client_park` after it began): one timer for the
    /// awake stretch, moved along lazily, instead of one per request.
    cold: Option<lazy_timer::LazyTimer>,
}

impl<C: Transport + 'static> Conn<'_, C> {
    /// Proxies the request in `self.head`; returns whether the client connection stays open.
    ///
    /// The try loop: select an eligible peer (breaker included), try it, and on a failure let
    /// the group's [`Retrier`](crate::failover::Retrier) (with the picker's failure hooks)
    /// decide between retrying (at once on an untried peer, or after a backoff), answering
    /// with ringlb's own error, or relaying the failed try's response.
    async fn handle_request(&mut self) -> bool {
        let ctx = self.ctx;
        let live = self.live.clone();
        ctx.metrics.requests.inc();
        let pick = match &ctx.picker {
            Some(picker) => {
                let info =
                    RequestInfo::new(&self.rbuf, &self.head, self.client).with_sni(self.io.sni());
                picker.pick(&info, &Upstreams::new(&live.upstream_names))
            }
            None => Pick {
                upstream: live.router.route(&self.rbuf, &self.head, self.io.sni()),
                hash: None,
            },
        };
        let Some(group_id) = pick.upstream else {
            return self.reply_not_found().await;
        };
        let Some(group) = live.group(group_id) else {
            return self.reply_not_found().await;
        };
        group.metrics.requests.inc();
        // Transparent mode: the request's own host, through this shard's one-peer group of
        // its address (health is per generation's peers; such a group reports none).
        let forwarded;
        let transparent = live.config.upstreams.get(group_id.index()).and_then(|u| {
            let t = u.transparent.as_ref()?;
            Some((u, t))
        });
        let group = match transparent {
            None => group,
            Some((u, t)) => {
                let host = self.head.host.map(|s| s.get(&self.rbuf));
                match live.transparent.target(u, t, host).await {
                    Ok(g) => {
                        forwarded = g;
                        &forwarded
                    }
                    Err(err) => return self.reply_error(&err, false).await,
                }
            }
        };
        if self.logging() {
            self.log.upstream = Some(group_id);
        }
        if self.head.upgrade
            && !group
                .upgrade
                .allows(&self.head.upgrade_protocols(&self.rbuf))
        {
            if self.io.upgrade_only() {
                let err = HttpError::NotImplemented("upgrade to this protocol");
                return self.reply_error(&err, false).await;
            }
            // A protocol this upstream does not tunnel: the request goes on as a plain one,
            // without its upgrade headers (the upstream answers it as HTTP).
            self.head.upgrade = false;
        }
        let head_len = self.head.head_len;
        let mut body = BodyProgress::new(self.head.body, live.config.limits.max_body_bytes);
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
        let facts = TryContext::new(
            self.head.method.is_idempotent(),
            self.head.has_idempotency_key(&self.rbuf),
        );
        if keep_body {
            if let Err(keep) = self.buffer_body(&mut body, policy.retry_body_bytes).await {
                return keep;
            }
        }
        if let Err(secs) =
            group.take_client_token(&self.rbuf, &self.head, self.fwd.client_ip, start)
        {
            let err = HttpError::TooManyRequests("client rate limit exceeded", secs);
            let keep = self.head.keep_alive && body.done();
            return self.reply_error(&err, keep).await;
        }
        group.retrier.borrow_mut().record_request(start);
        let hooks: &dyn FailureHooks = match ctx.picker.as_deref() {
            Some(picker) => picker,
            None => &DefaultHooks,
        };
        let mut tries = Tries::new(policy, facts, start);
        tries.set_region(group.request_region(&self.rbuf, &self.head, self.fwd.client_ip));
        // A request waiting in the group's queue; it leaves when it gets a peer.
        let mut place = None;
        if group.is_limited() && !group.queue.is_empty() {
            // Requests are waiting for a slot already: this one queues behind them (FIFO).
            if let Err(err) = queue::wait_turn(group, &mut place).await {
                let keep = self.head.keep_alive && body.done();
                return self.reply_error(&err, keep).await;
            }
        }
        loop {
            let (peer, deadline, replay_stale) = match tries.next(group, hash, Instant::now()) {
                Step::Try {
                    peer,
                    deadline,
                    replay_stale,
                } => {
                    if let Some(p) = place.take() {
                        p.served(Instant::now());
                    }
                    (peer, deadline, replay_stale)
                }
                Step::Full => match queue::wait_turn(group, &mut place).await {
                    Ok(()) => continue,
                    Err(err) => {
                        let keep = self.head.keep_alive && body.done();
                        return self.reply_error(&err, keep).await;
                    }
                },
                Step::Relay { peer, held } => return self.relay_held(group, peer, held).await,
                Step::Respond(err) => {
                    let keep = self.head.keep_alive && body.done();
                    return self.reply_error(&err, keep).await;
                }
                Step::NoPeer => {
                    group.metrics.no_peer.inc();
                    let err = HttpError::ServiceUnavailable("no eligible upstream peer");
                    let keep = self.head.keep_alive && body.done();
                    return self.reply_error(&err, keep).await;
                }
            };
            let pm = &*group.peer(peer).metrics;
            pm.requests.inc();
            if self.logging() {
                self.log.peer = Some(group.peer(peer).addr);
                self.log.tries = tries.count();
            }
            if tries.count() > 1 {
                pm.retries.inc();
            }
            if self.out.is_empty() {
                // A timed-out write took the request with it; it is still whole in `rbuf`
                // (a retry only happens while the body is replayable).
                self.build_request(group);
            }
            let result = self
                .try_peer(group, peer, expect, &mut body, deadline, replay_stale)
                .await;
            let (end, keep_client) = match result {
                TryResult::Relayed { keep_client } => (
                    TryEnd::Relayed {
                        status: self.resp.status,
                    },
                    keep_client,
                ),
                TryResult::Broken { fault } => {
                    if let Some(kind) = fault.and_then(exchange::fault_kind) {
                        pm.count_failure(kind);
                    }
                    (TryEnd::Broken { fault }, false)
                }
                TryResult::Failed {
                    failure,
                    sent,
                    held,
                } => {
                    if let Some(kind) = exchange::failure_kind(failure) {
                        pm.count_failure(kind);
                    }
                    (
                        TryEnd::Failed {
                            failure,
                            sent,
                            response_started: self.interim_sent,
                            body_replayable: !body.started_streaming(),
                            held,
                        },
                        false,
                    )
                }
            };
            let finished = tries.finish(group, hooks, end, Instant::now());
            if finished.budget_exhausted {
                group.metrics.retry_budget_exhausted.inc();
            }
            if let Some((peer, outcome)) = finished.report.filter(|_| transparent.is_none()) {
                ctx.health.report(live.generation, group_id, peer, outcome);
            }
            match finished.then {
                Then::Done => return keep_client,
                Then::Retry { backoff } => {
                    if let Some(wait) = backoff {
                        monoio::time::sleep(wait).await;
                    }
                }
                Then::Respond(err) => {
                    let keep = self.head.keep_alive && body.done();
                    return self.reply_error(&err, keep).await;
                }
                Then::Relay { peer, held } => return self.relay_held(group, peer, held).await,
            }
        }
    }

    /// Relays the held response of a failed try that is not retried; returns whether the
    /// client connection stays open. The try was counted when it failed.
    async fn relay_held(&mut self, group: &UpstreamGroup, peer: PeerId, held: Held) -> bool {
        match self.relay_response(group, peer, held).await {
            TryResult::Relayed { keep_client } => keep_client,
            _ => false,
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
        let client_idle = self.live.config.timeouts.client_idle;
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
}

/// What `X-Forwarded-Proto` says for a client connection over `io`.
fn proto_of<C: Transport>(io: &C) -> &'static str {
    if io.is_tls() {
        "https"
    } else {
        "http"
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

//! HTTP/2 towards clients, on the `h2` crate (framing, HPACK, flow control, stream states)
//! over monoio's poll-based streams.
//!
//! [`serve_connection`] runs one client connection: the handshake with ringlb's SETTINGS
//! (`[server] h2`), then every stream the client opens as one request through the HTTP/1.1
//! request path (`stream.rs`: the stream is a [`Transport`](crate::io::Transport) that
//! speaks HTTP/1.1), all in the connection's one task: the streams are futures polled
//! together with the connection (no task per stream, nothing crosses the shard). A cleartext
//! connection comes here from the first read of `proxy::serve` when it opens with the
//! connection preface (prior knowledge, RFC 9113 §3.3); a TLS connection whose ALPN chose
//! `h2` calls [`serve_connection`] itself, with its stream as a [`PollStream`].
//!
//! Limits: the `h2` crate answers an over-long header list with 431 (HPACK bombs) and ends a
//! CONTINUATION flood with GOAWAY; `meter.rs` counts RST_STREAM, PING and SETTINGS frames
//! per second and past a limit the connection gets GOAWAY (ENHANCE_YOUR_CALM) and closes.
//! A stream the client resets stops its request at once (its upstream try is dropped), so
//! resets cannot pile up work behind the stream limit.
//!
//! Shutdown and reload: the connection sends GOAWAY (graceful: the streams in flight finish,
//! new ones are refused) and closes when they are done. A connection without streams for
//! `client_idle_ms` closes the same way.

mod compat;
mod meter;
mod stream;
mod upstream;

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::server::SendResponse;
use h2::{Reason, RecvStream};

use super::ShardCtx;
use crate::io::PollStream;
pub(crate) use meter::PREFACE;
use meter::{Abuse, Metered};
use stream::Reply;
pub(crate) use stream::StreamIo;
pub(crate) use upstream::{tunnels, H2Call, H2Upstreams, UpstreamIo};

/// How long a connection that is closing (GOAWAY sent) may take to finish its streams and
/// flush before it is dropped. Shutdown's own drain time bounds it further.
const CLOSING_GRACE: Duration = Duration::from_secs(30);

/// `io` as the poll-based stream the `h2` crate runs on: natively when the transport can be
/// one, else through [`compat::RentPoll`] over its owned-buffer I/O (a TLS stream).
pub(crate) fn poll_stream<C: crate::io::Transport + 'static>(io: C) -> Box<dyn PollStream> {
    match io.into_poll_stream() {
        Ok(stream) => stream,
        Err(io) => Box::new(compat::RentPoll::new(io)),
    }
}

/// Whether `buf` (a cleartext connection's first bytes, which did not parse as HTTP/1.1)
/// starts the HTTP/2 connection preface.
pub(crate) fn is_preface(buf: &[u8]) -> bool {
    let n = buf.len().min(PREFACE.len());
    n >= 14 && buf[..n] == PREFACE[..n]
}

/// Serves a connection of a cleartext listener with `http1 = false`: prior-knowledge h2c
/// only. Bytes that are not the connection preface are a connection error (RFC 9113 §3.4;
/// the GOAWAY may be left out, the peer does not speak HTTP/2): the connection is closed the
/// lingering way, so that the close is a FIN, not a reset, however much the client sent.
pub(crate) async fn serve_prior_knowledge<C: crate::io::Transport + 'static>(
    ctx: &ShardCtx,
    mut io: C,
    addr: SocketAddr,
) {
    let live = ctx.live();
    let deadline = Instant::now() + live.config.timeouts.request_header;
    let limits = live.config.limits;
    drop(live);
    let mut buf = Vec::new();
    loop {
        let n = buf.len().min(PREFACE.len());
        if buf[..n] != PREFACE[..n] {
            tracing::debug!(client = %addr, "not the HTTP/2 preface on an HTTP/2-only listener");
            super::client::linger(ctx, &mut io, &mut buf, &limits).await;
            return;
        }
        if n == PREFACE.len() {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let cancel = Some(ctx.cancel_handle());
        match crate::io::read_more(&mut io, &mut buf, left, cancel, PREFACE.len()).await {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    }
    Box::pin(serve_connection(ctx, poll_stream(io), buf, addr)).await;
}

/// What woke the connection's driver.
enum Event {
    /// The connection is closed (or failed): finish the streams and stop.
    Closed,
    /// The shard changed state (shutdown began, a reload arrived).
    Changed,
    /// A limit tripped.
    Abuse,
    /// No stream for `client_idle_ms`.
    Idle,
}

/// Serves one HTTP/2 client connection on `io` until it closes. `replay` holds the bytes
/// already read from it (the connection preface first: a cleartext connection's first read);
/// empty when nothing was read yet.
pub(crate) async fn serve_connection(
    ctx: &ShardCtx,
    io: Box<dyn PollStream>,
    replay: Vec<u8>,
    addr: SocketAddr,
) {
    let live = ctx.live();
    let cfg = live.config.server.h2;
    let timeouts = live.config.timeouts;
    let abuse = Abuse::new(&cfg);
    let io = Metered::new(io, replay, &abuse);
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(cfg.max_concurrent_streams)
        .initial_window_size(cfg.initial_window)
        .initial_connection_window_size(cfg.connection_window())
        .max_frame_size(cfg.max_frame_size)
        .max_header_list_size(cfg.max_header_list_size)
        // What a stream may queue beyond the client's window: one relay buffer.
        .max_send_buffer_size(super::STREAM_BUF)
        // RFC 8441: WebSocket (and other upgrades) over a stream.
        .enable_connect_protocol();
    let handshake = builder.handshake::<_, Bytes>(io);
    let mut conn = match monoio::time::timeout(timeouts.request_header, handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(client = %addr, "HTTP/2 handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(client = %addr, "HTTP/2 handshake timed out");
            return;
        }
    };
    let generation = live.generation;
    drop(live);
    let mut streams: FuturesUnordered<Pin<Box<dyn Future<Output = ()> + '_>>> =
        FuturesUnordered::new();
    let mut closing = false;
    // Streams accepted so far: the idle close only fires when none came (and none is open)
    // for a whole `client_idle_ms`.
    let mut accepted = 0u64;
    loop {
        let idle = timeouts.client_idle;
        let accepted_before = accepted;
        // New streams are taken inside the driver, so that the wait below (and its
        // registrations) is set up once per rare event, not once per stream.
        let event = {
            let drive = poll_fn(|cx| {
                abuse.register(cx.waker());
                loop {
                    if !closing && abuse.tripped().is_some() {
                        return Poll::Ready(Event::Abuse);
                    }
                    match conn.poll_accept(cx) {
                        Poll::Ready(Some(Ok((req, respond)))) => {
                            accepted += 1;
                            streams.push(Box::pin(serve_stream(ctx, req, respond, addr)));
                            continue;
                        }
                        Poll::Ready(Some(Err(e))) => {
                            tracing::debug!(client = %addr, "HTTP/2 connection error: {e}");
                            return Poll::Ready(Event::Closed);
                        }
                        Poll::Ready(None) => return Poll::Ready(Event::Closed),
                        Poll::Pending => {}
                    }
                    let mut ended = false;
                    while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {
                        ended = true;
                    }
                    // A stream that ended may have queued frames or freed a slot: the
                    // connection is polled again before sleeping.
                    if !ended {
                        return Poll::Pending;
                    }
                }
            });
            monoio::select! {
                ev = drive => ev,
                _ = ctx.reconfigured().notified() => Event::Changed,
                _ = sleep_if(!closing, idle) => Event::Idle,
            }
        };
        match event {
            Event::Closed => {
                // The streams end on their own now (their I/O fails); bounded anyway.
                let finish = poll_fn(|cx| loop {
                    match streams.poll_next_unpin(cx) {
                        Poll::Ready(Some(())) => continue,
                        Poll::Ready(None) => return Poll::Ready(()),
                        Poll::Pending => return Poll::Pending,
                    }
                });
                let _ = monoio::time::timeout(CLOSING_GRACE, finish).await;
                return;
            }
            Event::Changed => {
                let reloaded = ctx.live().generation != generation;
                if !closing && (ctx.is_shutting_down() || reloaded) {
                    tracing::debug!(client = %addr, reloaded, "HTTP/2: GOAWAY, draining");
                    conn.graceful_shutdown();
                    closing = true;
                }
            }
            Event::Abuse => {
                tracing::info!(
                    client = %addr,
                    "HTTP/2 client over its limit ({:?}): GOAWAY",
                    abuse.tripped()
                );
                conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                // Its streams are dropped with it; the GOAWAY is flushed by polling on.
                streams.clear();
                let flush = poll_fn(|cx| conn.poll_closed(cx));
                let _ = monoio::time::timeout(Duration::from_secs(1), flush).await;
                return;
            }
            Event::Idle => {
                if !closing && streams.is_empty() && accepted == accepted_before {
                    conn.graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// Sleeps `wait` when `on`, else never completes.
async fn sleep_if(on: bool, wait: Duration) {
    if on {
        monoio::time::sleep(wait).await;
    } else {
        std::future::pending::<()>().await;
    }
}

/// Runs one stream's request through the request path; a reset by the client ends it at once.
async fn serve_stream(
    ctx: &ShardCtx,
    req: http::Request<RecvStream>,
    respond: SendResponse<Bytes>,
    addr: SocketAddr,
) {
    let (parts, body) = req.into_parts();
    let reply = Rc::new(RefCell::new(Reply::Waiting(respond)));
    let io = StreamIo::new(&parts, body, reply.clone());
    // The request path's future is large: boxed once, in place, it is not copied again when
    // this stream's (small) future is boxed into the connection's set and selected on.
    let mut serve = super::serve_h2_request(ctx, io, addr);
    let reset = poll_fn(|cx| reply.borrow_mut().poll_reset(cx));
    monoio::select! {
        _ = &mut serve => {}
        _ = reset => {
            tracing::debug!(client = %addr, "HTTP/2 stream reset by the client");
        }
    }
}

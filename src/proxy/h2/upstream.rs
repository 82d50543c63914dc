//! HTTP/2 towards upstreams (`protocol = "h2c"`, and `"h2"`/`"auto"` over TLS when the
//! peer chose `h2` by ALPN; the connection comes from the exchange's connect): per shard, one multiplexed connection per
//! peer ([`H2Upstreams`]), another one when the peer's `SETTINGS_MAX_CONCURRENT_STREAMS` is
//! reached; each connection's driver task pings it for liveness (no PONG in time: the
//! connection is dropped) and closes it when idle for the pool's `idle_timeout_ms`. A
//! connection that received GOAWAY takes no new stream: its streams drain and the next request
//! opens a new one.
//!
//! A request's try on such a connection is an [`H2Call`]: a [`Transport`] the exchange writes
//! the rewritten HTTP/1.1 request into (head, then body in HTTP/1.1 framing) and reads the
//! response from as HTTP/1.1 (status line, fields, body chunked when no `content-length`,
//! trailers as the chunked trailer section), so `exchange.rs`, the try loop and the relay run
//! unchanged. What goes wrong maps onto the failure kinds retries use: a failed connect or
//! handshake is `connect_failure`/`connect_timeout`, a stream reset or a GOAWAY after the
//! request went out is `reset`, a response that does not come in time is `timeout`.
//!
//! gRPC passes through: `te: trailers` goes upstream on a request whose `content-type` is
//! `application/grpc…`, and the response's trailers come back as trailers.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use h2::client::{ResponseFuture, SendRequest};
use h2::{RecvStream, SendStream};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Uri};
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, CancelHandle, CancelableAsyncReadRent, Split};
use monoio::BufResult;

use super::stream::{parse_trailers, push_field, push_hex};
use crate::config::Limits;
use crate::http::{parse_request, BodyKind, ChunkedDecoder, ParseStatus, RequestHead};
use crate::io::{PollStream, Transport};
use crate::tls::UpstreamTls;
use crate::upstream::Connection;

/// How often an upstream HTTP/2 connection is pinged.
const PING_INTERVAL: Duration = Duration::from_secs(10);
/// How long a PONG may take before the connection counts as dead.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// The receive window of each upstream stream and of the connection (responses stream back
/// through one relay buffer anyway).
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 4 << 20;

/// Client is one HTTP/2 connection to a peer, shared by the streams of this shard.
pub(crate) struct Client {
    /// Opens streams.
    send: SendRequest<Bytes>,
    /// Streams open on it now.
    in_flight: Cell<usize>,
    /// The peer's stream limit, as the driver last saw it.
    max_streams: Cell<usize>,
    /// The connection ended or received GOAWAY: no new stream on it.
    closed: Cell<bool>,
    /// When its last stream ended (for the idle close).
    last_used: Cell<Instant>,
    /// The TLS settings it was made with (none: cleartext): peers of other upstreams at the
    /// same address with other settings (another SNI) do not share it.
    tls: Option<Arc<UpstreamTls>>,
}

/// H2Upstreams is a shard's HTTP/2 connections to upstream peers, by peer address.
#[derive(Default)]
pub(crate) struct H2Upstreams {
    /// Open connections per peer.
    peers: RefCell<HashMap<SocketAddr, Vec<Rc<Client>>>>,
}

impl H2Upstreams {
    /// An open connection to `addr` with the TLS settings `tls` and room for another stream,
    /// if any.
    pub fn find(&self, addr: SocketAddr, tls: Option<&Arc<UpstreamTls>>) -> Option<Rc<Client>> {
        let mut peers = self.peers.borrow_mut();
        let list = peers.get_mut(&addr)?;
        list.retain(|c| !c.closed.get());
        list.iter()
            .find(|c| c.in_flight.get() < c.max_streams.get() && c.tls.as_ref() == tls)
            .cloned()
    }

    /// Runs the HTTP/2 handshake on `io`, a new connection to `addr` (cleartext for `h2c`,
    /// TLS that chose `h2` by ALPN), starts its driver task (closing it after `idle` without
    /// streams) and keeps it for the shard's next requests.
    pub async fn add(
        &self,
        addr: SocketAddr,
        tls: Option<Arc<UpstreamTls>>,
        io: Connection,
        idle: Duration,
    ) -> io::Result<Rc<Client>> {
        let io = super::poll_stream(io);
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake::<Box<dyn PollStream>, Bytes>(io)
            .await
            .map_err(io::Error::other)?;
        let client = Rc::new(Client {
            send,
            in_flight: Cell::new(0),
            max_streams: Cell::new(conn.max_concurrent_send_streams()),
            closed: Cell::new(false),
            last_used: Cell::new(Instant::now()),
            tls,
        });
        monoio::spawn(drive(conn, client.clone(), idle));
        self.peers
            .borrow_mut()
            .entry(addr)
            .or_default()
            .push(client.clone());
        Ok(client)
    }
}

/// Runs one upstream connection until it ends, pinging it and closing it when idle.
async fn drive(
    mut conn: h2::client::Connection<Box<dyn PollStream>, Bytes>,
    client: Rc<Client>,
    idle: Duration,
) {
    let mut ping = conn.ping_pong();
    let mut run = pin!(poll_fn(|cx| {
        let res = std::pin::Pin::new(&mut conn).poll(cx);
        client.max_streams.set(conn.max_concurrent_send_streams());
        res
    }));
    loop {
        monoio::select! {
            res = &mut run => {
                if let Err(e) = res {
                    tracing::debug!("upstream HTTP/2 connection ended: {e}");
                }
                break;
            }
            _ = monoio::time::sleep(PING_INTERVAL) => {}
        }
        if client.in_flight.get() == 0 && client.last_used.get().elapsed() >= idle {
            break;
        }
        let Some(p) = ping.as_mut() else { continue };
        let pong = monoio::time::timeout(PING_TIMEOUT, p.ping(h2::Ping::opaque()));
        monoio::select! {
            _ = &mut run => break,
            r = pong => match r {
                Ok(Ok(_)) => {}
                _ => {
                    tracing::debug!("upstream HTTP/2 connection: no PONG in time; closing");
                    break;
                }
            },
        }
    }
    client.closed.set(true);
}

/// Out is how far the request written so far got.
enum Out {
    /// The head is still being written.
    Head,
    /// The body is being sent: `n` more bytes.
    Length(SendStream<Bytes>, u64),
    /// A chunked body: the stream, the decoder, the bytes after the last chunk data.
    Chunked(SendStream<Bytes>, ChunkedDecoder, Vec<u8>),
    /// The request is sent.
    Done,
}

/// H2Call is one request on an upstream HTTP/2 connection, as an HTTP/1.1 byte stream (see
/// the module doc).
pub(crate) struct H2Call {
    /// The connection.
    client: Rc<Client>,
    /// The request path's limits (the rewritten head is parsed once more).
    limits: Limits,
    /// Request head bytes gathered until the head is complete.
    head: Vec<u8>,
    /// The parsed request head.
    parsed: RequestHead,
    /// Where the request is.
    out: Out,
    /// The response, until its head arrived.
    response: Option<ResponseFuture>,
    /// The response body, until it ended.
    recv: Option<RecvStream>,
    /// The response body is relayed chunked (no content-length).
    chunked: bool,
    /// Response bytes not handed out yet.
    input: Vec<u8>,
    /// How much of `input` was handed out.
    in_pos: usize,
    /// A stream was opened (counted in `in_flight`).
    opened: bool,
}

impl H2Call {
    /// A call on `client`.
    pub fn new(client: Rc<Client>, limits: Limits) -> H2Call {
        H2Call {
            client,
            limits,
            head: Vec::new(),
            parsed: RequestHead::default(),
            out: Out::Head,
            response: None,
            recv: None,
            chunked: false,
            input: Vec::new(),
            in_pos: 0,
            opened: false,
        }
    }

    /// Takes request bytes the exchange wrote.
    async fn take(&mut self, data: &[u8]) -> io::Result<()> {
        if let Out::Head = self.out {
            self.head.extend_from_slice(data);
            match parse_request(&self.head, &self.limits, &mut self.parsed) {
                Ok(ParseStatus::Complete) => {}
                Ok(ParseStatus::Partial) => return Ok(()),
                Err(_) => return Err(io::Error::new(io::ErrorKind::InvalidData, "request head")),
            }
            let head = std::mem::take(&mut self.head);
            self.open(&head).await?;
            return self.body(&head[self.parsed.head_len..]).await;
        }
        self.body(data).await
    }

    /// Opens the stream with the request head in `head`.
    async fn open(&mut self, head: &[u8]) -> io::Result<()> {
        let p = &self.parsed;
        let mut authority = None;
        let mut grpc = false;
        let mut req = Request::builder().method(p.method_range.get(head));
        let headers = req.headers_mut().expect("a fresh builder has headers");
        for h in &p.headers {
            let name = h.name(head);
            let value = h.value(head);
            if name.eq_ignore_ascii_case(b"host") {
                authority = Some(value);
                continue;
            }
            if super::stream::is_hop_by_hop(name) {
                continue;
            }
            if name.eq_ignore_ascii_case(b"content-type") {
                grpc = value.starts_with(b"application/grpc");
            }
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
                headers.append(n, v);
            }
        }
        if grpc {
            headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
        }
        let mut uri = Vec::with_capacity(64);
        uri.extend_from_slice(b"http://");
        uri.extend_from_slice(authority.unwrap_or(b"upstream"));
        uri.extend_from_slice(p.target.get(head));
        let uri = Uri::try_from(uri).map_err(io::Error::other)?;
        let req = req.uri(uri).body(()).map_err(io::Error::other)?;
        let body = p.body;
        let end = matches!(body, BodyKind::None | BodyKind::Length(0));
        let send = poll_fn(|cx| {
            self.client
                .send
                .clone()
                .poll_ready(cx)
                .map(|r| r.map(|_| ()))
        });
        if let Err(e) = send.await {
            self.client.closed.set(true);
            return Err(io::Error::new(io::ErrorKind::NotConnected, e));
        }
        let mut send = self.client.send.clone();
        let (response, stream) = match send.send_request(req, end) {
            Ok(x) => x,
            Err(e) => {
                // GOAWAY received or the connection is gone: nothing was sent.
                self.client.closed.set(true);
                return Err(io::Error::new(io::ErrorKind::NotConnected, e));
            }
        };
        self.opened = true;
        self.client.in_flight.set(self.client.in_flight.get() + 1);
        self.response = Some(response);
        self.out = match body {
            _ if end => Out::Done,
            BodyKind::Length(n) => Out::Length(stream, n),
            _ => Out::Chunked(stream, ChunkedDecoder::new(), Vec::new()),
        };
        Ok(())
    }

    /// Sends request body bytes (HTTP/1.1 framing) as DATA, trailers as HEADERS.
    async fn body(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.out {
            Out::Head | Out::Done => Ok(()),
            Out::Length(stream, left) => {
                let take = (*left).min(data.len() as u64) as usize;
                *left -= take as u64;
                let end = *left == 0;
                send(stream, Bytes::copy_from_slice(&data[..take]), end).await?;
                if end {
                    self.out = Out::Done;
                }
                Ok(())
            }
            Out::Chunked(stream, decoder, tail) => {
                let mut ranges: Vec<Range<usize>> = Vec::new();
                let (used, done) = decoder
                    .decode(data, Some(&mut ranges))
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "chunked body"))?;
                let mut payload = BytesMut::new();
                for r in &ranges {
                    payload.extend_from_slice(&data[r.clone()]);
                }
                match ranges.last() {
                    Some(last) => {
                        tail.clear();
                        tail.extend_from_slice(&data[last.end..used]);
                    }
                    None => tail.extend_from_slice(&data[..used]),
                }
                if !done {
                    return send(stream, payload.freeze(), false).await;
                }
                match parse_trailers(tail) {
                    Some(t) => {
                        send(stream, payload.freeze(), false).await?;
                        stream.send_trailers(t).map_err(io::Error::other)?;
                    }
                    None => send(stream, payload.freeze(), true).await?,
                }
                self.out = Out::Done;
                Ok(())
            }
        }
    }

    /// Makes sure `input` has response bytes to hand out; empty at the end of the response.
    async fn fill(&mut self) -> io::Result<()> {
        if self.in_pos < self.input.len() {
            return Ok(());
        }
        self.input.clear();
        self.in_pos = 0;
        if let Some(response) = self.response.take() {
            let resp = response.await.map_err(reset)?;
            let (parts, recv) = resp.into_parts();
            self.head_bytes(&parts, recv.is_end_stream());
            if !recv.is_end_stream() {
                self.recv = Some(recv);
            }
            return Ok(());
        }
        while let Some(recv) = self.recv.as_mut() {
            match poll_fn(|cx| recv.poll_data(cx)).await {
                Some(Ok(data)) => {
                    let _ = recv.flow_control().release_capacity(data.len());
                    if data.is_empty() {
                        continue;
                    }
                    if self.chunked {
                        push_hex(&mut self.input, data.len());
                        self.input.extend_from_slice(b"\r\n");
                        self.input.extend_from_slice(&data);
                        self.input.extend_from_slice(b"\r\n");
                    } else {
                        self.input.extend_from_slice(&data);
                    }
                    return Ok(());
                }
                Some(Err(e)) => {
                    self.recv = None;
                    return Err(reset(e));
                }
                None => {
                    let trailers = poll_fn(|cx| recv.poll_trailers(cx)).await;
                    self.recv = None;
                    let trailers = trailers.map_err(reset)?;
                    if self.chunked {
                        self.end_chunked(trailers.as_ref());
                    }
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Writes the response head as HTTP/1.1 into `input`.
    fn head_bytes(&mut self, parts: &http::response::Parts, ended: bool) {
        let status = parts.status;
        self.input.extend_from_slice(b"HTTP/1.1 ");
        self.input.extend_from_slice(status.as_str().as_bytes());
        self.input.push(b' ');
        let reason = status.canonical_reason().unwrap_or("");
        self.input.extend_from_slice(reason.as_bytes());
        self.input.extend_from_slice(b"\r\n");
        for (name, value) in &parts.headers {
            push_field(&mut self.input, name.as_str().as_bytes(), value.as_bytes());
        }
        let bodiless =
            matches!(status.as_u16(), 204 | 304) || self.parsed.method == crate::http::Method::Head;
        let has_length = parts.headers.contains_key(http::header::CONTENT_LENGTH);
        if !bodiless && !has_length {
            if ended {
                push_field(&mut self.input, b"content-length", b"0");
            } else {
                push_field(&mut self.input, b"transfer-encoding", b"chunked");
                self.chunked = true;
            }
        }
        self.input.extend_from_slice(b"\r\n");
    }

    /// Ends a chunked response body: the last chunk and the trailer section.
    fn end_chunked(&mut self, trailers: Option<&HeaderMap>) {
        self.input.extend_from_slice(b"0\r\n");
        for (name, value) in trailers.into_iter().flatten() {
            push_field(&mut self.input, name.as_str().as_bytes(), value.as_bytes());
        }
        self.input.extend_from_slice(b"\r\n");
    }
}

impl Drop for H2Call {
    fn drop(&mut self) {
        if self.opened {
            self.client.in_flight.set(self.client.in_flight.get() - 1);
            self.client.last_used.set(Instant::now());
        }
        // A stream not finished is reset by the `h2` crate when its handles are dropped.
    }
}

/// An `h2` error as an I/O error of the request path (a reset).
fn reset(e: h2::Error) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, e)
}

/// Sends `data` on `stream` as its window allows (`end`: the last of the body).
async fn send(stream: &mut SendStream<Bytes>, mut data: Bytes, end: bool) -> io::Result<()> {
    loop {
        if data.is_empty() {
            if end {
                stream
                    .send_data(Bytes::new(), true)
                    .map_err(io::Error::other)?;
            }
            return Ok(());
        }
        stream.reserve_capacity(data.len());
        let n = match poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(reset(e)),
            None => return Err(io::Error::from(io::ErrorKind::BrokenPipe)),
        };
        if n == 0 {
            continue;
        }
        let chunk = data.split_to(n.min(data.len()));
        let last = end && data.is_empty();
        stream.send_data(chunk, last).map_err(io::Error::other)?;
        if last {
            return Ok(());
        }
    }
}

impl AsyncReadRent for H2Call {
    async fn read<B: IoBufMut>(&mut self, mut buf: B) -> BufResult<usize, B> {
        if let Err(e) = self.fill().await {
            return (Err(e), buf);
        }
        let rest = &self.input[self.in_pos..];
        let n = rest.len().min(buf.bytes_total());
        // SAFETY: `buf` has room for `bytes_total()` bytes from `write_ptr()`, and `n` is no
        // more than that; `rest` is a separate allocation.
        unsafe {
            std::ptr::copy_nonoverlapping(rest.as_ptr(), buf.write_ptr(), n);
            buf.set_init(n);
        }
        self.in_pos += n;
        (Ok(n), buf)
    }

    fn readv<B: IoVecBufMut>(&mut self, buf: B) -> impl Future<Output = BufResult<usize, B>> {
        std::future::ready((Err(io::Error::from(io::ErrorKind::Unsupported)), buf))
    }
}

impl CancelableAsyncReadRent for H2Call {
    fn cancelable_read<B: IoBufMut>(
        &mut self,
        buf: B,
        _c: CancelHandle,
    ) -> impl Future<Output = BufResult<usize, B>> {
        self.read(buf)
    }

    fn cancelable_readv<B: IoVecBufMut>(
        &mut self,
        buf: B,
        _c: CancelHandle,
    ) -> impl Future<Output = BufResult<usize, B>> {
        self.readv(buf)
    }
}

impl AsyncWriteRent for H2Call {
    async fn write<B: IoBuf>(&mut self, buf: B) -> BufResult<usize, B> {
        // SAFETY: `buf` holds `bytes_init()` initialised bytes from `read_ptr()`, and it is
        // not touched while the slice lives (it is ours until we return it).
        let data = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let n = data.len();
        match self.take(data).await {
            Ok(()) => (Ok(n), buf),
            Err(e) => (Err(e), buf),
        }
    }

    fn writev<B: IoVecBuf>(&mut self, buf: B) -> impl Future<Output = BufResult<usize, B>> {
        std::future::ready((Err(io::Error::from(io::ErrorKind::Unsupported)), buf))
    }

    fn flush(&mut self) -> impl Future<Output = io::Result<()>> {
        std::future::ready(Ok(()))
    }

    fn shutdown(&mut self) -> impl Future<Output = io::Result<()>> {
        std::future::ready(Ok(()))
    }
}

// SAFETY: reads use the response fields, writes the request fields; nothing is shared between
// a read and a write in flight at once.
unsafe impl Split for H2Call {}

impl Transport for H2Call {
    fn shutdown_write(&mut self) -> bool {
        false
    }
}

/// UpstreamIo is the connection one try runs on: a pooled or new HTTP/1.1 connection, or a
/// stream on an HTTP/2 connection.
pub(crate) enum UpstreamIo {
    /// HTTP/1.1 (`protocol = "http1"`).
    H1(Connection),
    /// A stream on an HTTP/2 connection (`protocol = "h2c"`).
    H2(Box<H2Call>),
}

crate::io::delegate_io!(UpstreamIo { H1, H2 });

// SAFETY: both variants are `Split` (a TCP stream; `H2Call` above).
unsafe impl Split for UpstreamIo {}

impl Transport for UpstreamIo {
    fn shutdown_write(&mut self) -> bool {
        match self {
            UpstreamIo::H1(c) => c.shutdown_write(),
            UpstreamIo::H2(c) => c.shutdown_write(),
        }
    }

    async fn wait_readable(&mut self) -> std::io::Result<()> {
        match self {
            // An HTTP/1.1 connection waits for its socket (a parked tunnel direction).
            UpstreamIo::H1(c) => c.wait_readable().await,
            UpstreamIo::H2(c) => c.wait_readable().await,
        }
    }
}

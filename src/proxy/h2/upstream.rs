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
//!
//! An upgrade request (WebSocket and the like, no body) goes out as an extended CONNECT
//! (RFC 8441): `:method CONNECT`, `:protocol` the `Upgrade` token (the first one listed,
//! lowercased), `:scheme`, `:path` and `:authority` as for any request, the other fields but
//! the hop-by-hop ones and (for `websocket`, §5) `sec-websocket-key`. The exchange first asks
//! [`H2Call::extended_connect`] whether the peer's SETTINGS enabled it. A 2xx answer comes
//! back as `101 Switching Protocols` with `Upgrade`, `Connection: Upgrade` and, for
//! `websocket`, the `Sec-WebSocket-Accept` of the client's key; the stream then carries the
//! tunnel's bytes as DATA both ways (the half-close is END_STREAM each way, a reset ends the
//! tunnel). Any other status is an ordinary response.

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

use super::stream::{base64, parse_trailers, push_field, push_hex};
use crate::config::Limits;
use crate::control::Notify;
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
    /// The peer's first SETTINGS were applied (the PONG to the driver's first PING came
    /// after them), or the connection ended: what it allows is known.
    settled: Cell<bool>,
    /// Notified when `settled` is set.
    settling: Notify,
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
            settled: Cell::new(false),
            settling: Notify::default(),
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

impl Client {
    /// Marks what the peer allows as known and wakes the streams waiting for it.
    fn settle(&self) {
        self.settled.set(true);
        self.settling.notify_all();
    }
}

/// Runs one upstream connection until it ends, pinging it and closing it when idle. The
/// first PING goes out at once: its PONG comes after the peer's SETTINGS (the first frame of
/// its preface, applied before the next frame is read), so it tells when the peer's settings
/// (`SETTINGS_ENABLE_CONNECT_PROTOCOL`) are known.
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
    let alive = match ping.as_mut() {
        Some(p) => {
            let pong = monoio::time::timeout(PING_TIMEOUT, p.ping(h2::Ping::opaque()));
            monoio::select! {
                res = &mut run => {
                    if let Err(e) = res {
                        tracing::debug!("upstream HTTP/2 connection ended: {e}");
                    }
                    false
                }
                r = pong => {
                    let ok = matches!(r, Ok(Ok(_)));
                    if !ok {
                        tracing::debug!("upstream HTTP/2 connection: no PONG in time; closing");
                    }
                    ok
                }
            }
        }
        None => true,
    };
    if alive {
        // Its settings are in: the connection takes streams of every kind.
        client.settle();
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
    }
    // Closed first: a stream waiting for the settings learns that the connection ended.
    client.closed.set(true);
    client.settle();
}

/// Out is how far the request written so far got.
enum Out {
    /// The head is still being written.
    Head,
    /// The body is being sent: `n` more bytes.
    Length(SendStream<Bytes>, u64),
    /// A chunked body: the stream, the decoder, the bytes after the last chunk data.
    Chunked(SendStream<Bytes>, ChunkedDecoder, Vec<u8>),
    /// An extended CONNECT: what the exchange writes is tunnel data.
    Tunnel(SendStream<Bytes>),
    /// The request is sent.
    Done,
}

/// Whether an HTTP/1.1 request head goes out as an extended CONNECT (RFC 8441): an upgrade
/// request without a body (a body has no place in front of a tunnel's bytes; such a request
/// goes out as a plain one, without its upgrade).
pub(crate) fn tunnels(head: &RequestHead) -> bool {
    head.upgrade && matches!(head.body, BodyKind::None | BodyKind::Length(0))
}

/// Connect is what an extended CONNECT needs to answer the exchange's upgrade request.
struct Connect {
    /// The `:protocol` sent (the upgrade token, lowercased).
    protocol: String,
    /// For `websocket`: the client's `Sec-WebSocket-Key`, for the accept.
    key: Option<Vec<u8>>,
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
    /// The request is an extended CONNECT (set when the stream opens, read by the response
    /// head).
    connect: Option<Connect>,
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
            connect: None,
        }
    }

    /// Whether the peer takes extended CONNECT (`SETTINGS_ENABLE_CONNECT_PROTOCOL`, RFC 8441
    /// §3), once its settings are known (on a new connection: after its preface); `None` when
    /// the connection ended before that.
    pub async fn extended_connect(&self) -> Option<bool> {
        loop {
            let notified = self.client.settling.notified();
            if self.client.settled.get() {
                break;
            }
            notified.await;
        }
        if self.client.closed.get() {
            return None;
        }
        Some(self.client.send.is_extended_connect_protocol_enabled())
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
        let mut connect = None;
        if tunnels(p) {
            let token = upgrade_token(&p.upgrade_protocols(head))
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "upgrade token"))?;
            if !self.client.send.is_extended_connect_protocol_enabled() {
                // The exchange asked first (`extended_connect`); a peer that turned it off
                // since takes no tunnel.
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the peer does not enable extended CONNECT",
                ));
            }
            connect = Some(Connect {
                protocol: token,
                key: None,
            });
        }
        let websocket = connect.as_ref().is_some_and(|c| c.protocol == "websocket");
        let mut authority = None;
        let mut grpc = false;
        let mut req = match &connect {
            Some(c) => Request::builder()
                .method(http::Method::CONNECT)
                .extension(h2::ext::Protocol::from(c.protocol.as_str())),
            None => Request::builder().method(p.method_range.get(head)),
        };
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
            if websocket && name.eq_ignore_ascii_case(b"sec-websocket-key") {
                // RFC 8441 §5: no key over HTTP/2; the accept is computed from it here.
                if let Some(c) = connect.as_mut() {
                    c.key = Some(value.to_vec());
                }
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
        // `:scheme` says how the peer was reached: `https` over TLS (`protocol = "h2"`, or
        // "auto" when the peer chose h2), `http` for h2c.
        let scheme: &[u8] = if self.client.tls.is_some() {
            b"https://"
        } else {
            b"http://"
        };
        uri.extend_from_slice(scheme);
        uri.extend_from_slice(authority.unwrap_or(b"upstream"));
        uri.extend_from_slice(p.target.get(head));
        let uri = Uri::try_from(uri).map_err(io::Error::other)?;
        let req = req.uri(uri).body(()).map_err(io::Error::other)?;
        let body = p.body;
        let end = connect.is_none() && matches!(body, BodyKind::None | BodyKind::Length(0));
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
        let tunnel = connect.is_some();
        self.connect = connect;
        self.out = match body {
            _ if tunnel => Out::Tunnel(stream),
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
            Out::Tunnel(stream) => send(stream, Bytes::copy_from_slice(data), false).await,
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
            if self.connect.is_some() && parts.status.is_success() {
                self.switching_head(&parts);
            } else {
                if let Out::Tunnel(stream) = &mut self.out {
                    // No tunnel: the request ends here (nothing is written meanwhile: the
                    // exchange waits for this head).
                    let _ = stream.send_data(Bytes::new(), true);
                    self.out = Out::Done;
                }
                self.head_bytes(&parts, recv.is_end_stream());
            }
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

    /// Writes the `101 Switching Protocols` a 2xx to the extended CONNECT stands for into
    /// `input`: `Upgrade`, `Connection: Upgrade`, for `websocket` the accept of the client's
    /// key, then the response's own fields (no framing: the tunnel's bytes follow).
    fn switching_head(&mut self, parts: &http::response::Parts) {
        let Some(c) = &self.connect else { return };
        self.input
            .extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
        push_field(&mut self.input, b"upgrade", c.protocol.as_bytes());
        push_field(&mut self.input, b"connection", b"Upgrade");
        if let Some(key) = &c.key {
            push_field(
                &mut self.input,
                b"sec-websocket-accept",
                &websocket_accept(key),
            );
        }
        for (name, value) in &parts.headers {
            let n = name.as_str().as_bytes();
            if super::stream::is_hop_by_hop(n)
                || n == b"content-length"
                || n == b"sec-websocket-accept"
            {
                continue;
            }
            push_field(&mut self.input, n, value.as_bytes());
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

/// The `:protocol` for an `Upgrade` field value: its first token, lowercased (RFC 8441 names
/// one protocol; the client listed its preference first). `None` when there is none or it is
/// not a token.
fn upgrade_token(value: &[u8]) -> Option<String> {
    let first = value.split(|b| *b == b',').next()?.trim_ascii();
    let token = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(b);
    if first.is_empty() || !first.iter().all(token) {
        return None;
    }
    Some(String::from_utf8_lossy(first).to_ascii_lowercase())
}

/// `Sec-WebSocket-Accept` for the client's `key` (RFC 6455 §4.2.2):
/// base64(SHA-1(key + the protocol's GUID)), with ring's SHA-1 (rustls' crypto provider
/// already links it).
fn websocket_accept(key: &[u8]) -> Vec<u8> {
    let mut sha1 = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    sha1.update(key);
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64(sha1.finish().as_ref())
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
        // In a tunnel the half-close is END_STREAM; otherwise nothing to linger for.
        let Out::Tunnel(stream) = &mut self.out else {
            return false;
        };
        let ok = stream.send_data(Bytes::new(), true).is_ok();
        self.out = Out::Done;
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_accept_of_the_rfc_6455_example() {
        assert_eq!(
            websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn upgrade_tokens() {
        assert_eq!(upgrade_token(b"WebSocket").as_deref(), Some("websocket"));
        assert_eq!(
            upgrade_token(b" foo/2 , websocket").as_deref(),
            Some("foo/2")
        );
        assert_eq!(upgrade_token(b""), None);
        assert_eq!(upgrade_token(b"a b"), None);
        assert_eq!(upgrade_token(b",websocket"), None);
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

    fn splice_fd(&self) -> Option<std::os::fd::RawFd> {
        match self {
            UpstreamIo::H1(c) => c.splice_fd(),
            UpstreamIo::H2(_) => None,
        }
    }
}

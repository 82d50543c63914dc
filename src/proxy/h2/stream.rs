//! One HTTP/2 stream as the byte stream the request path speaks HTTP/1.1 over ([`StreamIo`],
//! a [`Transport`]): reads give the stream's request as an HTTP/1.1 message (the head built
//! from the pseudo-headers and fields, then the DATA frames, chunked when the length is not
//! known), and what the request path writes back — a response head and its body in HTTP/1.1
//! framing, or ringlb's own error answer — goes out as HEADERS, DATA and trailers. A relayed
//! response's head comes parsed instead ([`StreamIo::take_response_head`]): the relay hands
//! over the upstream's head and its fields go straight into HEADERS, with no HTTP/1.1 text
//! written and parsed again (8 % of the instructions per request under h2load).
//!
//! So each stream runs through the very route → select → try → relay path of HTTP/1.1
//! (`proxy::serve`): balancing, retries, breakers, passive health, metrics and the access log
//! apply per stream, and the HTTP/1.1 path itself is unchanged.
//!
//! Translation rules (RFC 9113 §8):
//! - `:method`, `:path` become the request line; `:authority` the `Host` field (a `Host`
//!   field that is also sent is dropped in its favour);
//! - several `cookie` fields are joined with `; ` (§8.2.3);
//! - the `h2` crate already refuses connection-specific fields and any `te` but `trailers`
//!   (a malformed request, stream error); `te` is not forwarded to an HTTP/1.1 upstream;
//! - a `content-length` is checked against the DATA frames by the `h2` crate (a mismatch is a
//!   stream error, PROTOCOL_ERROR) and forwarded; without one a body goes chunked, the
//!   client's trailers as the chunked trailer section;
//! - the response loses the HTTP/1.1 hop-by-hop fields (`connection`, `keep-alive`,
//!   `proxy-connection`, `transfer-encoding`, `upgrade`, `te`), interim 1xx responses go out
//!   as informational HEADERS frames, a chunked response's trailer section becomes a trailing
//!   HEADERS frame;
//! - an extended CONNECT (RFC 8441, `:protocol`) becomes the HTTP/1.1 upgrade request
//!   `GET :path` with `Upgrade: <:protocol>`, `Connection: upgrade` (for `websocket` a
//!   `Sec-WebSocket-Key` of ringlb's own, §5); the upstream's `101` becomes `200` without its
//!   `Sec-WebSocket-Accept` and the stream carries the tunnel (`proxy::tunnel` runs over it
//!   unchanged: DATA both ways, END_STREAM as the half-close); a `2xx` without the switch is
//!   answered `502`, since the client would take it for an open tunnel.
//!
//! Flow control: a read takes one DATA frame at a time and gives its window back once the
//! bytes were handed to the request path; a write waits until the client's window has room
//! for what it sends, so at most one relay buffer per stream is held. A write that waits
//! longer than the request path's client timeout ends the stream (zero-window stall).
//!
//! When the request path ends without a complete response (the upstream failed mid-response,
//! the client timed out), dropping the stream sends RST_STREAM (INTERNAL_ERROR).

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::ops::Range;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, CancelHandle, CancelableAsyncReadRent, Split};
use monoio::BufResult;

use crate::http::{
    client_content_length, end_to_end_fields, parse_response, BodyKind, ChunkedDecoder, Method,
    ParseStatus, ResponseHead,
};
use crate::io::Transport;

/// The most bytes a response head may take before it is answered (an upstream's head is
/// bounded by the HTTP/1.1 parser already; this bounds the buffer here).
const MAX_HEAD: usize = 64 * 1024;
/// The most bytes kept of a chunked response's tail while looking for its trailers.
const MAX_TAIL: usize = 64 * 1024;

/// Reply is where the stream's answer is: not begun, its body being sent, or finished.
pub(super) enum Reply {
    /// No response head sent yet.
    Waiting(SendResponse<Bytes>),
    /// The head went out; the body is being sent.
    Body(SendStream<Bytes>),
    /// The response is complete (or the stream was reset).
    Done,
}

impl Reply {
    /// Ready when the client reset the stream (or the connection is gone).
    pub fn poll_reset(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let res = match self {
            Reply::Waiting(r) => r.poll_reset(cx),
            Reply::Body(s) => s.poll_reset(cx),
            Reply::Done => return Poll::Pending,
        };
        res.map(|_| ())
    }
}

/// OutBody is how far the response body written so far got.
enum OutBody {
    /// The response head is still being written.
    Head,
    /// `n` more body bytes are expected.
    Length(u64),
    /// A chunked body: the decoder, and the bytes after the last chunk data (the last chunk
    /// and the trailer section, once it ends).
    Chunked(ChunkedDecoder, Vec<u8>),
    /// The body runs until the request path closes the stream.
    UntilClose,
    /// The response is complete.
    Done,
}

/// Where an extended CONNECT (RFC 8441: `:method CONNECT` with a `:protocol`) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connect {
    /// An ordinary request.
    No,
    /// Sent on as an HTTP/1.1 upgrade request; no final response yet.
    Pending,
    /// The upstream switched protocols: the stream is a tunnel.
    Open,
}

/// StreamIo is one HTTP/2 stream as an HTTP/1.1 byte stream (see the module doc).
pub(crate) struct StreamIo {
    /// Request bytes not handed out yet: the head, then the current DATA frame's bytes.
    input: Vec<u8>,
    /// How much of `input` was handed out.
    in_pos: usize,
    /// The request body, until its end was read.
    recv: Option<RecvStream>,
    /// The body is forwarded chunked (no content-length).
    chunked: bool,
    /// The answer; shared with the stream's reset watch.
    reply: Rc<RefCell<Reply>>,
    /// The request method (a response to HEAD has no body).
    method: Method,
    /// Response head bytes gathered until the head is complete.
    head: Vec<u8>,
    /// The parsed response head.
    resp: ResponseHead,
    /// Where the response body is.
    out: OutBody,
    /// Whether the stream is an extended CONNECT.
    connect: Connect,
}

impl StreamIo {
    /// The stream of `parts` whose body is `recv`: builds the HTTP/1.1 request head.
    pub(super) fn new(
        parts: &http::request::Parts,
        recv: RecvStream,
        reply: Rc<RefCell<Reply>>,
    ) -> StreamIo {
        let mut input = Vec::with_capacity(512);
        // RFC 8441: CONNECT with a `:protocol` is an upgrade request on the stream; to an
        // HTTP/1.1 upstream it is a GET with `Upgrade: <protocol>`.
        let protocol = match parts.method {
            http::Method::CONNECT => parts.extensions.get::<h2::ext::Protocol>(),
            _ => None,
        };
        let method = match parts.method {
            http::Method::HEAD => Method::Head,
            http::Method::CONNECT if protocol.is_none() => Method::Connect,
            _ => Method::Get,
        };
        let target = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        if protocol.is_some() {
            input.extend_from_slice(b"GET ");
        } else {
            input.extend_from_slice(parts.method.as_str().as_bytes());
            input.push(b' ');
        }
        if method == Method::Connect {
            let authority = parts.uri.authority().map(|a| a.as_str()).unwrap_or("");
            input.extend_from_slice(authority.as_bytes());
        } else {
            input.extend_from_slice(if target.is_empty() {
                b"/"
            } else {
                target.as_bytes()
            });
        }
        input.extend_from_slice(b" HTTP/1.1\r\n");
        let authority = parts.uri.authority();
        if let Some(a) = authority {
            push_field(&mut input, b"host", a.as_str().as_bytes());
        }
        let mut cookies = Vec::new();
        for (name, value) in &parts.headers {
            match name.as_str() {
                "host" if authority.is_some() => continue,
                "cookie" => {
                    if !cookies.is_empty() {
                        cookies.extend_from_slice(b"; ");
                    }
                    cookies.extend_from_slice(value.as_bytes());
                    continue;
                }
                // Framing is re-emitted below; `te: trailers` means nothing to HTTP/1.1.
                "content-length" | "transfer-encoding" | "te" => continue,
                // RFC 8441 §5: the key is the HTTP/1.1 side's own (made below).
                "sec-websocket-key" if protocol.is_some() => continue,
                _ => {}
            }
            push_field(&mut input, name.as_str().as_bytes(), value.as_bytes());
        }
        if !cookies.is_empty() {
            push_field(&mut input, b"cookie", &cookies);
        }
        if let Some(protocol) = protocol {
            push_field(&mut input, b"upgrade", protocol.as_str().as_bytes());
            push_field(&mut input, b"connection", b"upgrade");
            if protocol.as_str().eq_ignore_ascii_case("websocket") {
                push_field(&mut input, b"sec-websocket-key", &websocket_key());
                if !parts.headers.contains_key("sec-websocket-version") {
                    push_field(&mut input, b"sec-websocket-version", b"13");
                }
            }
            // The DATA frames are the tunnel's bytes, not a request body.
            input.extend_from_slice(b"\r\n");
            return StreamIo::with_input(input, recv, false, reply, method, Connect::Pending);
        }
        let length = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .map(|v| v.as_bytes());
        let ended = recv.is_end_stream();
        let mut chunked = false;
        match length {
            Some(n) => push_field(&mut input, b"content-length", n),
            None if !ended => {
                push_field(&mut input, b"transfer-encoding", b"chunked");
                chunked = true;
            }
            None => {}
        }
        input.extend_from_slice(b"\r\n");
        StreamIo::with_input(input, recv, chunked, reply, method, Connect::No)
    }

    /// The stream whose request head is `input`.
    fn with_input(
        input: Vec<u8>,
        recv: RecvStream,
        chunked: bool,
        reply: Rc<RefCell<Reply>>,
        method: Method,
        connect: Connect,
    ) -> StreamIo {
        let ended = recv.is_end_stream();
        StreamIo {
            input,
            in_pos: 0,
            recv: (!ended).then_some(recv),
            chunked,
            reply,
            method,
            head: Vec::new(),
            resp: ResponseHead::default(),
            out: OutBody::Head,
            connect,
        }
    }

    /// Makes sure `input` has bytes to hand out, reading the next DATA frame (or the end of
    /// the body) when it has none. Leaves `input` empty at the end of the request.
    async fn fill(&mut self) -> io::Result<()> {
        if self.in_pos < self.input.len() {
            return Ok(());
        }
        self.input.clear();
        self.in_pos = 0;
        if self.connect == Connect::Pending && matches!(self.out, OutBody::Done) {
            // An extended CONNECT answered without a tunnel: its DATA is nobody's, and the
            // request path looking for a next request finds the end.
            return Ok(());
        }
        while let Some(recv) = self.recv.as_mut() {
            match poll_fn(|cx| recv.poll_data(cx)).await {
                Some(Ok(data)) => {
                    // The bytes are ours now: the client may send the next ones.
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
                    return Err(io::Error::new(io::ErrorKind::ConnectionReset, e));
                }
                None => {
                    if self.chunked {
                        let trailers = match poll_fn(|cx| recv.poll_trailers(cx)).await {
                            Ok(t) => t,
                            Err(e) => {
                                self.recv = None;
                                return Err(io::Error::new(io::ErrorKind::ConnectionReset, e));
                            }
                        };
                        self.input.extend_from_slice(b"0\r\n");
                        for (name, value) in trailers.iter().flatten() {
                            push_field(&mut self.input, name.as_str().as_bytes(), value.as_bytes());
                        }
                        self.input.extend_from_slice(b"\r\n");
                    }
                    self.recv = None;
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Takes response bytes the request path wrote: the head, then the body. One write may
    /// carry the head and much body after it (the first read of a response fills the
    /// upstream buffer, up to 256 KiB): only a head still incomplete counts against
    /// `MAX_HEAD`.
    async fn take(&mut self, data: &[u8]) -> io::Result<()> {
        if let OutBody::Head = self.out {
            self.head.extend_from_slice(data);
            let mut head = std::mem::take(&mut self.head);
            let res = self.start_response(&mut head).await;
            if matches!(self.out, OutBody::Head) && res.is_ok() {
                if head.len() > MAX_HEAD {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "response head too large",
                    ));
                }
                self.head = head; // still incomplete
            }
            return res;
        }
        self.body(data).await
    }

    /// Parses the response head gathered in `head`; once complete, sends HEADERS and the body
    /// bytes after it. Interim responses are passed over.
    async fn start_response(&mut self, head: &mut Vec<u8>) -> io::Result<()> {
        loop {
            match parse_response(head, self.method, &mut self.resp) {
                Ok(ParseStatus::Complete) => {}
                Ok(ParseStatus::Partial) => return Ok(()),
                Err(_) => return Err(io::Error::new(io::ErrorKind::InvalidData, "bad response")),
            }
            let status = self.resp.status;
            if status == 101 && self.connect == Connect::Pending {
                return self.open_tunnel(head).await;
            }
            if (100..200).contains(&status) {
                self.send_interim(head)?;
                head.drain(..self.resp.head_len);
                continue;
            }
            let mut response = Response::new(());
            *response.status_mut() =
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            *response.headers_mut() = self.response_fields(head);
            let mut body = self.resp.body;
            if self.connect == Connect::Pending && (200..300).contains(&status) {
                // A 2xx to an extended CONNECT means "tunnel open" (RFC 8441 §4), which an
                // upstream that did not switch protocols did not say.
                *response.status_mut() = StatusCode::BAD_GATEWAY;
                response.headers_mut().clear();
                body = BodyKind::None;
            }
            self.send_head(response, body)?;
            if matches!(self.out, OutBody::Done) {
                return Ok(());
            }
            let rest = head.split_off(self.resp.head_len);
            return self.body(&rest).await;
        }
    }

    /// Takes the final response head `head` (parsed from `buf`) as it is and sends its
    /// HEADERS, instead of the HTTP/1.1 head text the relay would write next; the body bytes
    /// are written after it as usual. `None`: not taken (the head goes as text).
    pub(crate) fn take_response_head(
        &mut self,
        buf: &[u8],
        head: &ResponseHead,
    ) -> Option<io::Result<()>> {
        // Tunnels (extended CONNECT), interim responses and a head begun as text keep the
        // text path.
        if self.connect != Connect::No
            || !matches!(self.out, OutBody::Head)
            || !self.head.is_empty()
            || (100..200).contains(&head.status)
        {
            return None;
        }
        let mut response = Response::new(());
        *response.status_mut() =
            StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let fields = response.headers_mut();
        for (name, value) in end_to_end_fields(buf, head) {
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                fields.append(name, value);
            }
        }
        if let Some(n) = client_content_length(buf, head) {
            fields.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        Some(self.send_head(response, head.body))
    }

    /// Sends the final response's HEADERS; `body` is how its body is framed in the bytes
    /// written next (an empty one ends the stream with the HEADERS).
    fn send_head(&mut self, response: Response<()>, body: BodyKind) -> io::Result<()> {
        let empty = matches!(body, BodyKind::None | BodyKind::Length(0));
        let reply = &mut *self.reply.borrow_mut();
        let Reply::Waiting(mut respond) = std::mem::replace(reply, Reply::Done) else {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        };
        let stream = respond
            .send_response(response, empty)
            .map_err(io::Error::other)?;
        if empty {
            self.out = OutBody::Done;
            return Ok(());
        }
        *reply = Reply::Body(stream);
        self.out = match body {
            BodyKind::Length(n) => OutBody::Length(n),
            BodyKind::Chunked => OutBody::Chunked(ChunkedDecoder::new(), Vec::new()),
            _ => OutBody::UntilClose,
        };
        Ok(())
    }

    /// The fields of the response head in `head` that an HTTP/2 response may carry.
    fn response_fields(&self, head: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for h in &self.resp.headers {
            let name = h.name(head);
            if is_hop_by_hop(name) {
                continue;
            }
            // RFC 8441 §5: the accept answers the HTTP/1.1 side's key, not the client's.
            if self.connect != Connect::No && name.eq_ignore_ascii_case(b"sec-websocket-accept") {
                continue;
            }
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name),
                HeaderValue::from_bytes(h.value(head)),
            ) else {
                continue;
            };
            headers.append(name, value);
        }
        headers
    }

    /// Relays the interim (1xx) response in `head` as an informational HEADERS frame.
    fn send_interim(&mut self, head: &[u8]) -> io::Result<()> {
        let mut response = Response::new(());
        *response.status_mut() =
            StatusCode::from_u16(self.resp.status).unwrap_or(StatusCode::CONTINUE);
        *response.headers_mut() = self.response_fields(head);
        match &mut *self.reply.borrow_mut() {
            Reply::Waiting(respond) => respond
                .send_informational(response)
                .map_err(io::Error::other),
            _ => Err(io::Error::from(io::ErrorKind::BrokenPipe)),
        }
    }

    /// The upstream's `101` (head in `head`) to an extended CONNECT: the client gets `200`
    /// and the stream carries the tunnel's bytes from here, the ones after the head first.
    async fn open_tunnel(&mut self, head: &mut Vec<u8>) -> io::Result<()> {
        let mut response = Response::new(());
        *response.headers_mut() = self.response_fields(head);
        // Until either side ends it (a half-close is END_STREAM, see `finish`).
        self.send_head(response, BodyKind::UntilClose)?;
        self.connect = Connect::Open;
        let rest = head.split_off(self.resp.head_len);
        self.body(&rest).await
    }

    /// Sends response body bytes (in HTTP/1.1 framing) as DATA, trailers as HEADERS.
    async fn body(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.out {
            OutBody::Head | OutBody::Done => Ok(()),
            OutBody::Length(left) => {
                let take = (*left).min(data.len() as u64) as usize;
                *left -= take as u64;
                let end = *left == 0;
                if end {
                    self.out = OutBody::Done;
                }
                self.send(Bytes::copy_from_slice(&data[..take]), end).await
            }
            OutBody::UntilClose => self.send(Bytes::copy_from_slice(data), false).await,
            OutBody::Chunked(decoder, tail) => {
                let mut ranges: Vec<Range<usize>> = Vec::new();
                let (used, done) = decoder
                    .decode(data, Some(&mut ranges))
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunked body"))?;
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
                if tail.len() > MAX_TAIL {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "trailers too large",
                    ));
                }
                if !done {
                    return self.send(payload.freeze(), false).await;
                }
                let trailers = parse_trailers(tail);
                self.out = OutBody::Done;
                match trailers {
                    Some(t) => {
                        self.send(payload.freeze(), false).await?;
                        self.send_trailers(t)
                    }
                    None => self.send(payload.freeze(), true).await,
                }
            }
        }
    }

    /// Sends `data` as DATA frames as the client's window allows (`end`: the last ones).
    async fn send(&mut self, mut data: Bytes, end: bool) -> io::Result<()> {
        loop {
            if data.is_empty() {
                if end {
                    self.with_body(|stream| stream.send_data(Bytes::new(), true))?;
                    *self.reply.borrow_mut() = Reply::Done;
                }
                return Ok(());
            }
            let want = data.len();
            self.with_body(|stream| {
                stream.reserve_capacity(want);
                Ok(())
            })?;
            let room = poll_fn(|cx| match &mut *self.reply.borrow_mut() {
                Reply::Body(s) => s.poll_capacity(cx),
                _ => Poll::Ready(None),
            })
            .await;
            let n = match room {
                Some(Ok(n)) => n,
                Some(Err(e)) => return Err(io::Error::other(e)),
                None => return Err(io::Error::from(io::ErrorKind::BrokenPipe)),
            };
            if n == 0 {
                continue;
            }
            let chunk = data.split_to(n.min(data.len()));
            let last = end && data.is_empty();
            self.with_body(|stream| stream.send_data(chunk, last))?;
            if last {
                *self.reply.borrow_mut() = Reply::Done;
                return Ok(());
            }
        }
    }

    /// Runs `f` on the stream the body is sent on (an error when there is none any more).
    fn with_body(
        &self,
        f: impl FnOnce(&mut SendStream<Bytes>) -> Result<(), h2::Error>,
    ) -> io::Result<()> {
        match &mut *self.reply.borrow_mut() {
            Reply::Body(stream) => f(stream).map_err(io::Error::other),
            _ => Err(io::Error::from(io::ErrorKind::BrokenPipe)),
        }
    }

    /// Ends the response with a trailing HEADERS frame.
    fn send_trailers(&mut self, trailers: HeaderMap) -> io::Result<()> {
        let mut reply = self.reply.borrow_mut();
        if let Reply::Body(stream) = &mut *reply {
            stream.send_trailers(trailers).map_err(io::Error::other)?;
        }
        *reply = Reply::Done;
        Ok(())
    }

    /// Ends the stream when the request path is done with it: a body that runs until close
    /// ends here; anything else unfinished is reset.
    fn finish(&mut self) {
        let mut reply = self.reply.borrow_mut();
        match (&mut *reply, &self.out) {
            (Reply::Done, _) => {}
            (Reply::Body(stream), OutBody::UntilClose) => {
                let _ = stream.send_data(Bytes::new(), true);
            }
            (Reply::Body(stream), _) => stream.send_reset(Reason::INTERNAL_ERROR),
            (Reply::Waiting(respond), _) => respond.send_reset(Reason::INTERNAL_ERROR),
        }
        *reply = Reply::Done;
    }
}

impl Drop for StreamIo {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes in base64 (RFC 6455 §4.1).
fn websocket_key() -> Vec<u8> {
    base64(&fastrand::u128(..).to_be_bytes())
}

/// `data` in base64 (RFC 4648 §4, padded): the WebSocket handshake's key and accept.
pub(super) fn base64(data: &[u8]) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(data.len().div_ceil(3) * 4);
    for group in data.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for j in 0..4 {
            out.push(match j <= group.len() {
                true => ALPHABET[(n >> (18 - 6 * j) & 63) as usize],
                false => b'=',
            });
        }
    }
    out
}

/// Appends `name: value\r\n`.
pub(super) fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in hex (a chunk size).
pub(super) fn push_hex(out: &mut Vec<u8>, n: usize) {
    let digits = format!("{n:x}");
    out.extend_from_slice(digits.as_bytes());
}

/// Whether an HTTP/1.1 response field must not appear in an HTTP/2 response (RFC 9113
/// §8.2.2).
pub(super) fn is_hop_by_hop(name: &[u8]) -> bool {
    const FIELDS: [&[u8]; 6] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
    ];
    FIELDS.iter().any(|f| f.eq_ignore_ascii_case(name))
}

/// The trailer fields at the end of a chunked body: `tail` holds what followed the last chunk
/// data (its CRLF, the last chunk, the trailer section). `None` when there are none.
pub(super) fn parse_trailers(tail: &[u8]) -> Option<HeaderMap> {
    let tail = tail.strip_prefix(b"\r\n").unwrap_or(tail);
    let eol = tail.windows(2).position(|w| w == b"\r\n")?;
    let section = &tail[eol + 2..];
    if section.starts_with(b"\r\n") || section.is_empty() {
        return None;
    }
    let mut slots = [httparse::EMPTY_HEADER; crate::http::MAX_HEADERS];
    let Ok(httparse::Status::Complete((_, fields))) = httparse::parse_headers(section, &mut slots)
    else {
        return None;
    };
    let mut map = HeaderMap::new();
    for f in fields {
        if is_hop_by_hop(f.name.as_bytes()) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(f.name.as_bytes()),
            HeaderValue::from_bytes(f.value),
        ) {
            map.append(n, v);
        }
    }
    (!map.is_empty()).then_some(map)
}

impl AsyncReadRent for StreamIo {
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
        // The request path reads into one buffer only.
        std::future::ready((Err(io::Error::from(io::ErrorKind::Unsupported)), buf))
    }
}

impl CancelableAsyncReadRent for StreamIo {
    fn cancelable_read<B: IoBufMut>(
        &mut self,
        buf: B,
        _c: CancelHandle,
    ) -> impl Future<Output = BufResult<usize, B>> {
        // A stream's request is all there (or its body on the way): nothing idles here.
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

impl AsyncWriteRent for StreamIo {
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
        self.finish();
        std::future::ready(Ok(()))
    }
}

// SAFETY: `StreamIo` keeps no state that a read and a write in flight at once could both
// touch unsynchronised: reads use `input`/`recv` (and look at `connect`/`out` before they
// wait), writes the response fields, and the `RefCell` they share is borrowed only between
// awaits. Both run at once only in a tunnel (an extended CONNECT), on one thread.
unsafe impl Split for StreamIo {}

impl Transport for StreamIo {
    fn shutdown_write(&mut self) -> bool {
        // The stream's end is its own signal: nothing to linger for. In a tunnel it is the
        // half-close (END_STREAM), which succeeded.
        let tunnel = self.connect == Connect::Open && matches!(self.out, OutBody::UntilClose);
        self.finish();
        tunnel
    }

    fn upgrade_only(&self) -> bool {
        self.connect != Connect::No
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailers_after_the_last_chunk() {
        let t = parse_trailers(b"\r\n0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\n\r\n").unwrap();
        assert_eq!(t["grpc-status"], "0");
        assert_eq!(t["grpc-message"], "ok");
        assert!(parse_trailers(b"\r\n0\r\n\r\n").is_none());
        assert!(parse_trailers(b"0\r\n\r\n").is_none());
        assert!(parse_trailers(b"0;ext=1\r\nx: y\r\n\r\n").is_some());
    }

    #[test]
    fn hop_by_hop_fields() {
        for f in [
            "Connection",
            "keep-alive",
            "Transfer-Encoding",
            "TE",
            "upgrade",
        ] {
            assert!(is_hop_by_hop(f.as_bytes()), "{f}");
        }
        assert!(!is_hop_by_hop(b"content-length"));
        assert!(!is_hop_by_hop(b"trailer"));
    }

    #[test]
    fn base64_of_the_rfc_4648_vectors() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), enc.as_bytes(), "{raw}");
        }
    }

    #[test]
    fn websocket_keys_are_base64_of_16_bytes_and_differ() {
        let a = websocket_key();
        let b = websocket_key();
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
        assert_eq!(&a[22..], b"==");
        assert!(a[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/'));
    }
}

//! The wire side of the test client and of the test servers: [`Wire`] (a TCP stream with a read
//! buffer that reads heads, Content-Length, chunked and until-close bodies), [`ReadErr`],
//! [`Client`] and [`Response`] (a raw HTTP/1.1 client, one response at a time, every read with a
//! timeout), request builders ([`get`], [`post`]) and header and byte helpers for messages.

use super::*;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Wire is a TCP stream with a read buffer, so pipelined bytes read ahead are never lost.
pub struct Wire {
    stream: TcpStream,
    /// Storage, zero-filled once (debug builds fill Vecs byte by byte: never per read).
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
}

/// ReadErr is why reading a message failed.
#[derive(Debug)]
pub enum ReadErr {
    /// The peer closed the connection cleanly before the first byte of a message.
    Eof,
    /// The peer closed the connection in the middle of a message.
    Truncated(String),
    /// A read timed out.
    Timeout(String),
    /// Any other I/O error.
    Io(io::Error),
    /// The bytes are not valid HTTP/1.1.
    Protocol(String),
}

impl std::fmt::Display for ReadErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadErr::Eof => write!(f, "connection closed before a message started"),
            ReadErr::Truncated(s) => write!(f, "connection closed mid-message: {s}"),
            ReadErr::Timeout(s) => write!(f, "read timed out: {s}"),
            ReadErr::Io(e) => write!(f, "i/o error: {e}"),
            ReadErr::Protocol(s) => write!(f, "protocol error: {s}"),
        }
    }
}

pub(super) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl Wire {
    /// Wraps a connected stream.
    pub fn new(stream: TcpStream) -> Wire {
        Wire {
            stream,
            buf: vec![0u8; 256 * 1024],
            start: 0,
            end: 0,
        }
    }

    /// The underlying stream.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Bytes read but not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        assert!(self.start <= self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads more bytes into the buffer; returns how many (0 = EOF).
    fn fill(&mut self, what: &str) -> Result<usize, ReadErr> {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let mut bigger = vec![0u8; self.buf.len() * 2];
                bigger[..self.end].copy_from_slice(&self.buf[..self.end]);
                self.buf = bigger;
            }
        }
        let res = self.stream.read(&mut self.buf[self.end..]);
        match res {
            Ok(n) => {
                self.end += n;
                Ok(n)
            }
            Err(e) if is_timeout(&e) => Err(ReadErr::Timeout(format!(
                "{what}; buffered so far: {:?}",
                show(self.buffered())
            ))),
            Err(e) => Err(ReadErr::Io(e)),
        }
    }

    /// Reads a head up to and including the blank line. `Eof` if the connection closed before
    /// any byte of it.
    pub fn read_head(&mut self, max: usize) -> Result<Vec<u8>, ReadErr> {
        let mut scanned: usize = 0;
        loop {
            let avail = self.buffered();
            if let Some(i) = find(&avail[scanned.saturating_sub(3)..], b"\r\n\r\n") {
                let end = scanned.saturating_sub(3) + i + 4;
                let head = avail[..end].to_vec();
                self.consume(end);
                return Ok(head);
            }
            scanned = avail.len();
            if scanned > max {
                return Err(ReadErr::Protocol(format!(
                    "head longer than {max} bytes: {:?}",
                    show(&avail[..200.min(avail.len())])
                )));
            }
            if self.fill("reading a head")? == 0 {
                return if self.buffered().is_empty() {
                    Err(ReadErr::Eof)
                } else {
                    Err(ReadErr::Truncated(format!(
                        "partial head {:?}",
                        show(self.buffered())
                    )))
                };
            }
        }
    }

    /// Reads one CRLF-terminated line (without the CRLF).
    fn read_line(&mut self, what: &str) -> Result<Vec<u8>, ReadErr> {
        loop {
            if let Some(i) = find(self.buffered(), b"\r\n") {
                let line = self.buffered()[..i].to_vec();
                self.consume(i + 2);
                return Ok(line);
            }
            if self.buffered().len() > 64 * 1024 {
                return Err(ReadErr::Protocol(format!("{what}: line too long")));
            }
            if self.fill(what)? == 0 {
                return Err(ReadErr::Truncated(format!(
                    "{what}: got {:?}",
                    show(self.buffered())
                )));
            }
        }
    }

    /// Reads exactly `n` body bytes, handing them to `sink` piece by piece.
    pub fn read_exact_to(
        &mut self,
        mut n: u64,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), ReadErr> {
        while n > 0 {
            if !self.buffered().is_empty() {
                let take = (self.buffered().len() as u64).min(n) as usize;
                sink(&self.buffered()[..take]);
                self.consume(take);
                n -= take as u64;
                continue;
            }
            // Empty buffer: read at most what the body still needs, so pipelined bytes after
            // it stay buffered.
            let want = (n.min(self.buf.len() as u64)) as usize;
            match self.stream.read(&mut self.buf[..want]) {
                Ok(0) => {
                    return Err(ReadErr::Truncated(format!("{n} body bytes still missing")));
                }
                Ok(k) => {
                    sink(&self.buf[..k]);
                    n -= k as u64;
                }
                Err(e) if is_timeout(&e) => {
                    return Err(ReadErr::Timeout(format!("{n} body bytes still missing")));
                }
                Err(e) => return Err(ReadErr::Io(e)),
            }
        }
        Ok(())
    }

    /// Reads a chunked body (RFC 9112 §7.1), handing the decoded data to `sink`; returns the
    /// trailer fields.
    pub fn read_chunked_to(&mut self, sink: &mut dyn FnMut(&[u8])) -> Result<Vec<Header>, ReadErr> {
        loop {
            let line = self.read_line("chunk size line")?;
            let size_part = match line.iter().position(|&b| b == b';') {
                Some(i) => &line[..i],
                None => &line[..],
            };
            let size_str = std::str::from_utf8(size_part)
                .map_err(|_| ReadErr::Protocol(format!("bad chunk size {:?}", show(&line))))?
                .trim_end_matches([' ', '\t']);
            let size = u64::from_str_radix(size_str, 16)
                .map_err(|_| ReadErr::Protocol(format!("bad chunk size {:?}", show(&line))))?;
            if size == 0 {
                let mut trailers = Vec::new();
                loop {
                    let t = self.read_line("trailer line")?;
                    if t.is_empty() {
                        return Ok(trailers);
                    }
                    trailers.push(parse_header_line(&t).map_err(ReadErr::Protocol)?);
                }
            }
            self.read_exact_to(size, sink)?;
            let crlf = self.read_line("chunk data CRLF")?;
            if !crlf.is_empty() {
                return Err(ReadErr::Protocol(format!(
                    "chunk data not followed by CRLF: {:?}",
                    show(&crlf)
                )));
            }
        }
    }

    /// Reads until the peer closes the connection.
    pub fn read_to_close(&mut self, sink: &mut dyn FnMut(&[u8])) -> Result<(), ReadErr> {
        if !self.buffered().is_empty() {
            sink(self.buffered());
            let n = self.buffered().len();
            self.consume(n);
        }
        loop {
            match self.stream.read(&mut self.buf) {
                Ok(0) => return Ok(()),
                Ok(k) => sink(&self.buf[..k]),
                Err(e) if is_timeout(&e) => {
                    return Err(ReadErr::Timeout("body delimited by close".into()));
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(ReadErr::Io(e)),
            }
        }
    }
}

/// Shows bytes for messages: printable ASCII kept, the rest escaped, long input cut.
pub fn show(b: &[u8]) -> String {
    let cut = &b[..b.len().min(600)];
    let mut s = String::from_utf8_lossy(&cut.escape_ascii().collect::<Vec<u8>>()).into_owned();
    if b.len() > cut.len() {
        let _ = write!(s, "… (+{} bytes)", b.len() - cut.len());
    }
    s
}

/// The first position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub(super) fn parse_header_line(line: &[u8]) -> Result<Header, String> {
    let s = std::str::from_utf8(line).map_err(|_| format!("non-UTF-8 header {:?}", show(line)))?;
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("header line without colon: {s:?}"))?;
    if name.is_empty() || name.contains([' ', '\t']) {
        return Err(format!("bad header name in {s:?}"));
    }
    Ok((
        name.to_string(),
        value.trim_matches([' ', '\t']).to_string(),
    ))
}

/// Splits a head (ending in CRLFCRLF) into its start line and header fields.
pub(super) fn split_head(head: &[u8]) -> Result<(String, Vec<Header>), String> {
    let body = &head[..head.len() - 4];
    let text = std::str::from_utf8(body).map_err(|_| format!("non-UTF-8 head {:?}", show(head)))?;
    if text.split("\r\n").any(|l| l.contains(['\n', '\r'])) {
        return Err(format!("bare LF in head {:?}", show(head)));
    }
    let mut lines = text.split("\r\n");
    let start = lines.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    for l in lines {
        headers.push(parse_header_line(l.as_bytes())?);
    }
    Ok((start, headers))
}

/// All values of header `name` (case-insensitive), in order.
pub fn header_values<'a>(headers: &'a [Header], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The one value of header `name`; panics if it appears more than once.
pub fn header_value<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    let v = header_values(headers, name);
    assert!(
        v.len() <= 1,
        "header {name} appears {} times: {v:?}",
        v.len()
    );
    v.first().copied()
}

/// Whether a comma-separated header (`Connection`, `Transfer-Encoding`) lists `token`.
pub fn has_token(headers: &[Header], name: &str, token: &str) -> bool {
    header_values(headers, name)
        .iter()
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Header fields as sorted (lowercase name, value) pairs, for order-free exact comparison.
pub fn header_set(headers: &[Header]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
        .collect();
    v.sort();
    v
}

/// Builds an expected header set from literal pairs (names lowercased, sorted).
pub fn expect_set(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pairs
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// Client.

/// Framing is how a response body was delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    /// Content-Length.
    Length,
    /// Transfer-Encoding: chunked.
    Chunked,
    /// Until the connection closed.
    UntilClose,
}

/// Response is one response as the client received it.
#[derive(Debug, Clone)]
pub struct Response {
    /// `HTTP/1.1`.
    pub version: String,
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// Header fields in wire order.
    pub headers: Vec<Header>,
    /// The raw head.
    pub head: Vec<u8>,
    /// Decoded body (empty when streamed to a sink).
    pub body: Vec<u8>,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<Header>,
    /// How the body was delimited.
    pub framing: Framing,
}

impl Response {
    /// The one value of header `name`, case-insensitive.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }
    /// All values of header `name`.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        header_values(&self.headers, name)
    }
    /// The body as UTF-8 (lossy).
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Asserts this is an error the proxy produced itself: `status`, `text/plain`, with
    /// a non-empty body whose length matches Content-Length.
    pub fn assert_proxy_error(&self, status: u16) {
        assert_eq!(
            self.status,
            status,
            "expected {status}, got {}",
            show(&self.head)
        );
        assert_eq!(self.version, "HTTP/1.1");
        let ct = self.header("content-type").unwrap_or_default();
        assert!(
            ct.starts_with("text/plain"),
            "error response Content-Type {ct:?}, head {}",
            show(&self.head)
        );
        assert_eq!(self.framing, Framing::Length, "{}", show(&self.head));
        assert!(!self.body.is_empty(), "error response has an empty body");
    }
}

/// Client is a raw HTTP/1.1 client on one connection.
pub struct Client {
    wire: Wire,
}

impl Client {
    /// Connects to `addr` (with read/write timeouts of `IO_TIMEOUT`).
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to proxy {addr}: {e}"));
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("set timeout");
        s.set_write_timeout(Some(IO_TIMEOUT)).expect("set timeout");
        s.set_nodelay(true).expect("nodelay");
        Client { wire: Wire::new(s) }
    }

    /// Like [`Client::connect`], but returns the error instead of panicking (for client
    /// threads that count failures).
    pub fn try_connect(addr: SocketAddr) -> io::Result<Client> {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        s.set_nodelay(true)?;
        Ok(Client { wire: Wire::new(s) })
    }

    /// Like [`Client::roundtrip`] for a non-HEAD request, but returns a failed write or read
    /// instead of panicking.
    pub fn try_roundtrip(&mut self, req: &[u8]) -> Result<Response, ReadErr> {
        self.wire.stream().write_all(req).map_err(ReadErr::Io)?;
        self.try_response(false)
    }

    /// Wraps an already connected socket (timeouts are the caller's).
    pub fn from_stream(s: TcpStream) -> Client {
        Client { wire: Wire::new(s) }
    }

    /// The socket.
    pub fn stream(&mut self) -> &mut TcpStream {
        self.wire.stream()
    }

    /// Sends bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.wire
            .stream()
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("send {}: {e}", show(bytes)));
    }

    /// Sends `req` and reads the response (a HEAD request's response if `req` starts with HEAD).
    pub fn roundtrip(&mut self, req: &[u8]) -> Response {
        self.send(req);
        if req.starts_with(b"HEAD ") {
            self.head_response()
        } else {
            self.response()
        }
    }

    /// Reads one response to a non-HEAD request (a 1xx is returned as a response of its own).
    pub fn response(&mut self) -> Response {
        self.try_response(false)
            .unwrap_or_else(|e| panic!("reading response: {e}"))
    }

    /// Reads one response to a HEAD request (no body whatever the headers say).
    pub fn head_response(&mut self) -> Response {
        self.try_response(true)
            .unwrap_or_else(|e| panic!("reading HEAD response: {e}"))
    }

    /// Reads one response, collecting the body.
    pub fn try_response(&mut self, head_request: bool) -> Result<Response, ReadErr> {
        let mut body = Vec::new();
        let mut r = self.response_streamed(head_request, &mut |d| body.extend_from_slice(d))?;
        r.body = body;
        Ok(r)
    }

    /// Reads one response, handing the body to `sink` instead of storing it.
    pub fn response_streamed(
        &mut self,
        head_request: bool,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<Response, ReadErr> {
        let head = self.wire.read_head(1 << 20)?;
        let (line, headers) = split_head(&head).map_err(ReadErr::Protocol)?;
        let mut it = line.splitn(3, ' ');
        let version = it.next().unwrap_or_default().to_string();
        let code = it.next().unwrap_or_default();
        let reason = it.next().unwrap_or_default().to_string();
        if !version.starts_with("HTTP/1.") || code.len() != 3 {
            return Err(ReadErr::Protocol(format!("bad status line {line:?}")));
        }
        let status: u16 = code
            .parse()
            .map_err(|_| ReadErr::Protocol(format!("bad status line {line:?}")))?;
        let mut r = Response {
            version,
            status,
            reason,
            headers,
            head,
            body: Vec::new(),
            trailers: Vec::new(),
            framing: Framing::None,
        };
        if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
            return Ok(r);
        }
        let te = r.headers_named("transfer-encoding");
        let cl = r.headers_named("content-length");
        if !te.is_empty() {
            if !cl.is_empty() {
                return Err(ReadErr::Protocol(format!(
                    "response has both Content-Length and Transfer-Encoding: {}",
                    show(&r.head)
                )));
            }
            if has_token(&r.headers, "transfer-encoding", "chunked") {
                r.framing = Framing::Chunked;
                r.trailers = self.wire.read_chunked_to(sink)?;
            } else {
                r.framing = Framing::UntilClose;
                self.wire.read_to_close(sink)?;
            }
        } else if !cl.is_empty() {
            if cl.iter().any(|v| *v != cl[0]) {
                return Err(ReadErr::Protocol(format!(
                    "differing Content-Length {cl:?}"
                )));
            }
            let n: u64 = cl[0]
                .parse()
                .map_err(|_| ReadErr::Protocol(format!("bad Content-Length {cl:?}")))?;
            r.framing = Framing::Length;
            self.wire.read_exact_to(n, sink)?;
        } else {
            r.framing = Framing::UntilClose;
            self.wire.read_to_close(sink)?;
        }
        Ok(r)
    }

    /// Asserts that the peer closes the connection (EOF or reset) without sending anything more.
    pub fn expect_closed(&mut self) {
        assert!(
            self.wire.buffered().is_empty(),
            "unexpected bytes after the response: {}",
            show(self.wire.buffered())
        );
        let mut b = [0u8; 4096];
        match self.wire.stream().read(&mut b) {
            Ok(0) => {}
            Ok(n) => panic!(
                "expected the connection to close, got more bytes: {}",
                show(&b[..n])
            ),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            Err(e) if is_timeout(&e) => {
                panic!("expected the connection to close; still open after {IO_TIMEOUT:?}")
            }
            Err(e) => panic!("expected the connection to close, got error {e}"),
        }
    }

    /// Whether the peer closes within `wait` (false = still open and silent).
    pub fn closes_within(&mut self, wait: Duration) -> bool {
        self.wire
            .stream()
            .set_read_timeout(Some(wait))
            .expect("set timeout");
        let mut b = [0u8; 4096];
        let r = match self.wire.stream().read(&mut b) {
            Ok(0) => true,
            Ok(n) => panic!("unexpected bytes: {}", show(&b[..n])),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => true,
            Err(e) if is_timeout(&e) => false,
            Err(e) => panic!("read error {e}"),
        };
        self.wire
            .stream()
            .set_read_timeout(Some(IO_TIMEOUT))
            .expect("set timeout");
        r
    }
}

/// A simple GET request for `path` with `Host: test`.
pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").into_bytes()
}

/// A POST of `body` with Content-Length.
pub fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    v
}

//! Shared helpers of the black-box suite.
//!
//! - [`Backend`]: a programmable HTTP/1.1 origin server on std threads and blocking sockets. It
//!   counts accepted connections and requests, records every request it received (head bytes,
//!   headers, decoded body, trailers) and answers each one with whatever its handler returns
//!   ([`Reply`]). It parses Content-Length and chunked bodies, keeps connections alive and
//!   answers pipelined requests in order.
//! - [`Client`]: a raw client: writes bytes, reads one complete response at a time (Content-Length,
//!   chunked with trailers, or until close) and checks that a connection was closed. Every read
//!   has a timeout, so a broken proxy fails a test instead of hanging it.
//! - [`ProxyConfig`] / [`Proxy`]: the proxy started in-process from TOML on `127.0.0.1:0`;
//!   [`ProxyProcess`]: the real binary, its listen port found through `/proc`.
//! - Test data: a deterministic byte pattern that can be generated and checked on the fly at
//!   memcmp speed (for GiB streams, where sha256 in a debug build is too slow), and `sha256_hex`.
#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// IO_TIMEOUT bounds every single socket read and write of the test side.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// BACKEND_IDLE is how long a backend connection may sit without a request before the backend
/// drops it (only to let threads of finished tests end; far above any test's duration).
const BACKEND_IDLE: Duration = Duration::from_secs(120);

/// BODY_RECORD_LIMIT is the largest request body a backend keeps in memory; larger bodies are
/// only measured and checked against the pattern.
pub const BODY_RECORD_LIMIT: u64 = 32 << 20;

/// Header is one header field as (name as sent, value trimmed).
pub type Header = (String, String);

// ---------------------------------------------------------------------------------------------
// Buffered wire reader shared by the backend and the client.

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

fn is_timeout(e: &io::Error) -> bool {
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

fn parse_header_line(line: &[u8]) -> Result<Header, String> {
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
fn split_head(head: &[u8]) -> Result<(String, Vec<Header>), String> {
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
// Test data.

/// PATTERN_PERIOD is the period of the test byte pattern: a prime, so that a dropped or
/// repeated block of any power-of-two size shows up as a mismatch.
pub const PATTERN_PERIOD: usize = 1_048_573;

/// The pattern, two periods long so that any window of up to one period is contiguous.
fn pattern_buf() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        let mut v = Vec::with_capacity(2 * PATTERN_PERIOD);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        while v.len() < PATTERN_PERIOD {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.truncate(PATTERN_PERIOD);
        v.extend_from_within(..PATTERN_PERIOD);
        v
    })
}

/// The pattern bytes at stream offset `pos`, `len <= PATTERN_PERIOD` of them.
pub fn pattern_at(pos: u64, len: usize) -> &'static [u8] {
    assert!(len <= PATTERN_PERIOD);
    let o = (pos % PATTERN_PERIOD as u64) as usize;
    &pattern_buf()[o..o + len]
}

/// The first `len` bytes of the pattern as an owned buffer.
pub fn pattern_bytes(len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        let n = (len - v.len()).min(PATTERN_PERIOD);
        v.extend_from_slice(pattern_at(v.len() as u64, n));
    }
    v
}

/// PatternCheck verifies a stream against the pattern as it arrives.
#[derive(Debug, Clone, Default)]
pub struct PatternCheck {
    /// Bytes seen so far.
    pub len: u64,
    /// Offset of the first byte that differed from the pattern.
    pub first_mismatch: Option<u64>,
}

impl PatternCheck {
    /// Checks the next piece of the stream.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = data.len().min(PATTERN_PERIOD);
            if self.first_mismatch.is_none() && data[..n] != *pattern_at(self.len, n) {
                let exp = pattern_at(self.len, n);
                let i = data[..n]
                    .iter()
                    .zip(exp)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                self.first_mismatch = Some(self.len + i as u64);
            }
            self.len += n as u64;
            data = &data[n..];
        }
    }

    /// Whether everything so far matched.
    pub fn ok(&self) -> bool {
        self.first_mismatch.is_none()
    }
}

/// Writes `len` pattern bytes to `w`, raw (`chunk = None`) or as chunks of that size.
pub fn write_pattern(w: &mut impl Write, len: u64, chunk: Option<usize>) -> io::Result<()> {
    let piece = chunk.unwrap_or(256 * 1024);
    let mut pos = 0u64;
    while pos < len {
        let n = ((len - pos) as usize).min(piece);
        let data = pattern_at(pos, n);
        if chunk.is_some() {
            let mut framed = Vec::with_capacity(n + 16);
            write!(framed, "{n:x}\r\n").expect("writing to a Vec cannot fail");
            framed.extend_from_slice(data);
            framed.extend_from_slice(b"\r\n");
            w.write_all(&framed)?;
        } else {
            w.write_all(data)?;
        }
        pos += n as u64;
    }
    if chunk.is_some() {
        w.write_all(b"0\r\n\r\n")?;
    }
    Ok(())
}

/// The lowercase hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    d.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

// ---------------------------------------------------------------------------------------------
// Backend.

/// Request is one request as a backend received it.
#[derive(Debug, Clone)]
pub struct Request {
    /// Accept index of the connection it came on (0 = the backend's first connection).
    pub conn: usize,
    /// Position of this request on its connection (0 = first).
    pub seq_on_conn: usize,
    /// Method token.
    pub method: String,
    /// Request target as sent.
    pub target: String,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// Header fields in wire order.
    pub headers: Vec<Header>,
    /// The raw head, request line through the blank line.
    pub head: Vec<u8>,
    /// The decoded body (empty if it was longer than `BODY_RECORD_LIMIT`; see `body_len`).
    pub body: Vec<u8>,
    /// Decoded body length.
    pub body_len: u64,
    /// The body matched the test pattern from offset 0 (for streamed bodies).
    pub body_is_pattern: bool,
    /// The body came chunked.
    pub chunked: bool,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<Header>,
}

impl Request {
    /// The one value of header `name`, case-insensitive.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }
    /// All values of header `name`.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        header_values(&self.headers, name)
    }
    /// The path part of the target.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
    /// The body as UTF-8 (lossy).
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Body is how a [`Reply`] frames and carries its body.
#[derive(Debug, Clone)]
pub enum Body {
    /// No body and no framing header (204, 304, or with an explicit header added by the handler).
    Empty,
    /// `Content-Length` framing. For a HEAD request only the header is sent.
    Full(Vec<u8>),
    /// `Transfer-Encoding: chunked` with these chunks (empty ones skipped) and trailers.
    Chunked(Vec<Vec<u8>>, Vec<Header>),
    /// No framing header; the body ends when the backend closes the connection.
    UntilClose(Vec<u8>),
    /// `len` pattern bytes, generated while sending: Content-Length, or chunked in pieces of
    /// the given size.
    Pattern { len: u64, chunk: Option<usize> },
    /// These exact bytes are the whole response (status line and headers ignored).
    Raw(Vec<u8>),
}

/// Reply is what a backend answers to one request.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// Extra header fields (framing headers are added from `body`).
    pub headers: Vec<Header>,
    /// The body and its framing.
    pub body: Body,
    /// Interim (1xx) responses sent before the final one: (status, headers).
    pub interim: Vec<(u16, Vec<Header>)>,
    /// Wait this long before answering (a slow peer).
    pub delay: Duration,
    /// Close the connection after this reply.
    pub close: bool,
}

/// The standard reason phrase of `status`.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

impl Reply {
    /// `status` with a Content-Length body.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            reason: reason(status).to_string(),
            headers: Vec::new(),
            body: Body::Full(body.into()),
            interim: Vec::new(),
            delay: Duration::ZERO,
            close: false,
        }
    }
    /// 200 with a Content-Length body.
    pub fn ok(body: impl Into<Vec<u8>>) -> Reply {
        Reply::new(200, body)
    }
    /// `status` without a body or framing header (204, 304).
    pub fn no_body(status: u16) -> Reply {
        Reply {
            body: Body::Empty,
            ..Reply::new(status, Vec::new())
        }
    }
    /// 200 chunked with these chunks and trailers.
    pub fn chunked(chunks: &[&[u8]], trailers: &[(&str, &str)]) -> Reply {
        Reply {
            body: Body::Chunked(
                chunks.iter().map(|c| c.to_vec()).collect(),
                trailers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Reply::new(200, Vec::new())
        }
    }
    /// 200 delimited by closing the connection.
    pub fn until_close(body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            body: Body::UntilClose(body.into()),
            close: true,
            ..Reply::new(200, Vec::new())
        }
    }
    /// 200 with `len` generated pattern bytes.
    pub fn pattern(len: u64, chunk: Option<usize>) -> Reply {
        Reply {
            body: Body::Pattern { len, chunk },
            ..Reply::new(200, Vec::new())
        }
    }
    /// These exact bytes, then close.
    pub fn raw(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply {
            body: Body::Raw(bytes.into()),
            close: true,
            ..Reply::new(200, Vec::new())
        }
    }
    /// Adds a header field.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    /// Waits `d` before answering.
    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
    /// Sends an interim 1xx response first.
    pub fn interim(mut self, status: u16, headers: &[(&str, &str)]) -> Reply {
        self.interim.push((
            status,
            headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        ));
        self
    }
    /// Closes the connection after the reply.
    pub fn close(mut self) -> Reply {
        self.close = true;
        self
    }
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

struct Shared {
    name: String,
    handler: Box<Handler>,
    /// Send `100 Continue` on `Expect: 100-continue` before reading the body.
    auto_continue: bool,
    accepts: AtomicUsize,
    heads: AtomicUsize,
    requests: Mutex<Vec<Request>>,
    errors: Mutex<Vec<String>>,
    stop: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
}

/// Backend is a programmable origin server on `127.0.0.1:0`.
pub struct Backend {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Backend {
    /// A backend that answers every request `200` with its own name as the body.
    pub fn start(name: &str) -> Backend {
        let n = name.to_string();
        Backend::with_handler(name, move |_| Reply::ok(n.clone()))
    }

    /// A backend that answers each request with `handler(&request)`.
    pub fn with_handler(
        name: &str,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> Backend {
        Backend::build(name, true, Box::new(handler))
    }

    /// Like `with_handler`, but never sends `100 Continue` by itself.
    pub fn without_auto_continue(
        name: &str,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> Backend {
        Backend::build(name, false, Box::new(handler))
    }

    fn build(name: &str, auto_continue: bool, handler: Box<Handler>) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let addr = listener.local_addr().expect("backend local addr");
        let shared = Arc::new(Shared {
            name: name.to_string(),
            handler,
            auto_continue,
            accepts: AtomicUsize::new(0),
            heads: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            errors: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let sh = shared.clone();
        thread::Builder::new()
            .name(format!("backend-{name}"))
            .spawn(move || accept_loop(listener, sh))
            .expect("spawn backend thread");
        Backend { addr, shared }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// Its name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }
    /// Connections accepted so far.
    pub fn accepts(&self) -> usize {
        self.shared.accepts.load(Ordering::SeqCst)
    }
    /// Request heads received so far (counted before the body is read and before the handler).
    pub fn heads_seen(&self) -> usize {
        self.shared.heads.load(Ordering::SeqCst)
    }
    /// Complete requests received so far.
    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }
    /// Every complete request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }
    /// The only request received; panics unless exactly one arrived.
    pub fn only_request(&self) -> Request {
        let r = self.requests();
        assert_eq!(
            r.len(),
            1,
            "backend {} expected exactly one request, got {:?}",
            self.name(),
            r.iter().map(|r| show(&r.head)).collect::<Vec<_>>()
        );
        r.into_iter().next().unwrap()
    }
    /// Protocol errors the backend saw in what the proxy sent (should be empty).
    pub fn errors(&self) -> Vec<String> {
        self.shared.errors.lock().unwrap().clone()
    }
    /// Waits until at least `n` request heads arrived.
    pub fn wait_heads(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.heads_seen() < n {
            assert!(
                Instant::now() < deadline,
                "backend {} saw {} request heads, wanted {n} within {timeout:?}",
                self.name(),
                self.heads_seen()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, sh: Arc<Shared>) {
    for stream in listener.incoming() {
        if sh.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let conn = sh.accepts.fetch_add(1, Ordering::SeqCst);
        if let Ok(c) = stream.try_clone() {
            sh.conns.lock().unwrap().push(c);
        }
        let sh2 = sh.clone();
        let _ = thread::Builder::new()
            .name(format!("backend-{}-{conn}", sh.name))
            .spawn(move || serve_conn(stream, conn, sh2));
    }
}

fn serve_conn(stream: TcpStream, conn: usize, sh: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(BACKEND_IDLE));
    let _ = stream.set_write_timeout(Some(BACKEND_IDLE));
    let mut wire = Wire::new(stream);
    let mut seq = 0;
    loop {
        if sh.stop.load(Ordering::SeqCst) {
            return;
        }
        match serve_one(&mut wire, conn, seq, &sh) {
            Ok(true) => seq += 1,
            Ok(false) => {
                let _ = wire.stream().shutdown(Shutdown::Both);
                return;
            }
            Err(ReadErr::Eof) => return,
            Err(ReadErr::Timeout(_)) => return,
            Err(e) => {
                // What the proxy sent is not valid HTTP (or it went away mid-message):
                // record it so a test can assert on it, answer 400 and close.
                if !sh.stop.load(Ordering::SeqCst) {
                    sh.errors.lock().unwrap().push(e.to_string());
                }
                let _ = wire.stream().write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 15\r\nConnection: close\r\n\r\nbackend: bad re",
                );
                let _ = wire.stream().shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

/// Serves one request; Ok(true) = keep the connection.
fn serve_one(wire: &mut Wire, conn: usize, seq: usize, sh: &Shared) -> Result<bool, ReadErr> {
    let head = wire.read_head(1 << 20)?;
    sh.heads.fetch_add(1, Ordering::SeqCst);
    let (line, headers) = split_head(&head).map_err(ReadErr::Protocol)?;
    let parts: Vec<&str> = line.split(' ').collect();
    if parts.len() != 3 || !parts[2].starts_with("HTTP/1.") {
        return Err(ReadErr::Protocol(format!("bad request line {line:?}")));
    }
    let mut req = Request {
        conn,
        seq_on_conn: seq,
        method: parts[0].to_string(),
        target: parts[1].to_string(),
        version: parts[2].to_string(),
        headers,
        head,
        body: Vec::new(),
        body_len: 0,
        body_is_pattern: true,
        chunked: false,
        trailers: Vec::new(),
    };
    let te = header_values(&req.headers, "transfer-encoding");
    let cl = header_values(&req.headers, "content-length");
    if !te.is_empty() && !cl.is_empty() {
        return Err(ReadErr::Protocol(format!(
            "request has both Content-Length and Transfer-Encoding: {:?}",
            show(&req.head)
        )));
    }
    if cl.len() > 1 {
        return Err(ReadErr::Protocol(format!("several Content-Length: {cl:?}")));
    }
    let expects_body = !te.is_empty() || cl.first().is_some_and(|v| *v != "0");
    if sh.auto_continue
        && expects_body
        && req.version == "HTTP/1.1"
        && req
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        wire.stream()
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(ReadErr::Io)?;
    }
    let mut check = PatternCheck::default();
    let mut body = Vec::new();
    let mut keep = true;
    let mut sink = |d: &[u8]| {
        check.update(d);
        if keep {
            if (body.len() + d.len()) as u64 > BODY_RECORD_LIMIT {
                body = Vec::new();
                keep = false;
            } else {
                body.extend_from_slice(d);
            }
        }
    };
    if !te.is_empty() {
        let last = te
            .last()
            .and_then(|v| v.split(',').next_back())
            .map(|t| t.trim().to_ascii_lowercase());
        if last.as_deref() != Some("chunked") {
            return Err(ReadErr::Protocol(format!(
                "request Transfer-Encoding not ending in chunked: {te:?}"
            )));
        }
        req.chunked = true;
        req.trailers = wire.read_chunked_to(&mut sink)?;
    } else if let Some(v) = cl.first() {
        let n: u64 = v
            .parse()
            .map_err(|_| ReadErr::Protocol(format!("bad Content-Length {v:?}")))?;
        wire.read_exact_to(n, &mut sink)?;
    }
    req.body = body;
    req.body_len = check.len;
    req.body_is_pattern = check.ok();

    let reply = (sh.handler)(&req);
    let client_close = has_token(&req.headers, "connection", "close")
        || (req.version == "HTTP/1.0" && !has_token(&req.headers, "connection", "keep-alive"));
    let is_head = req.method == "HEAD";
    sh.requests.lock().unwrap().push(req);

    if !reply.delay.is_zero() {
        thread::sleep(reply.delay);
    }
    if write_reply(wire.stream(), &reply, is_head).is_err() {
        // The proxy went away (e.g. it gave up on a slow peer): just close.
        return Ok(false);
    }
    Ok(!(reply.close || client_close))
}

fn write_reply(s: &mut TcpStream, r: &Reply, is_head: bool) -> io::Result<()> {
    let mut out = Vec::new();
    for (status, headers) in &r.interim {
        write!(out, "HTTP/1.1 {status} {}\r\n", reason(*status))?;
        for (n, v) in headers {
            write!(out, "{n}: {v}\r\n")?;
        }
        out.extend_from_slice(b"\r\n");
    }
    if let Body::Raw(bytes) = &r.body {
        out.extend_from_slice(bytes);
        return s.write_all(&out);
    }
    write!(out, "HTTP/1.1 {} {}\r\n", r.status, r.reason)?;
    for (n, v) in &r.headers {
        write!(out, "{n}: {v}\r\n")?;
    }
    match &r.body {
        Body::Full(b) => write!(out, "Content-Length: {}\r\n", b.len())?,
        Body::Chunked(..) => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Body::Pattern { len, chunk: None } => write!(out, "Content-Length: {len}\r\n")?,
        Body::Pattern { chunk: Some(_), .. } => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n")
        }
        Body::Empty | Body::UntilClose(_) | Body::Raw(_) => {}
    }
    if r.close && !matches!(r.body, Body::UntilClose(_)) {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if is_head {
        return s.write_all(&out);
    }
    match &r.body {
        Body::Full(b) | Body::UntilClose(b) => out.extend_from_slice(b),
        Body::Chunked(chunks, trailers) => {
            for c in chunks.iter().filter(|c| !c.is_empty()) {
                write!(out, "{:x}\r\n", c.len())?;
                out.extend_from_slice(c);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n");
            for (n, v) in trailers {
                write!(out, "{n}: {v}\r\n")?;
            }
            out.extend_from_slice(b"\r\n");
        }
        Body::Pattern { len, chunk } => {
            s.write_all(&out)?;
            return write_pattern(s, *len, *chunk);
        }
        Body::Empty | Body::Raw(_) => {}
    }
    s.write_all(&out)
}

/// An address on which connections are refused: a port that was bound and closed again.
pub fn refusing_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("local addr");
    drop(l);
    a
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

// ---------------------------------------------------------------------------------------------
// Proxy configuration and the in-process proxy.

/// Peer is one `peers = [...]` entry.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    addr: SocketAddr,
    weight: u32,
    backup: bool,
}

/// A peer entry for `addr` with weight 1.
pub fn peer(addr: SocketAddr) -> Peer {
    Peer {
        addr,
        weight: 1,
        backup: false,
    }
}

impl Peer {
    /// Sets the weight.
    pub fn weight(mut self, w: u32) -> Peer {
        self.weight = w;
        self
    }
    /// Makes it a backup peer.
    pub fn backup(mut self) -> Peer {
        self.backup = true;
        self
    }
}

/// ProxyConfig builds the TOML of a test proxy: loopback port 0, admin off, short timeouts.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    workers: usize,
    shutdown_timeout_ms: u64,
    timeouts: BTreeMap<String, u64>,
    limits: BTreeMap<String, u64>,
    upstreams: Vec<String>,
    routes: Vec<String>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig::new()
    }
}

impl ProxyConfig {
    /// One worker, generous timeouts, default limits, no upstreams yet.
    pub fn new() -> ProxyConfig {
        let timeouts = [
            ("connect_ms", 2000),
            ("request_header_ms", 10_000),
            ("upstream_read_ms", 15_000),
            ("upstream_write_ms", 15_000),
            ("client_idle_ms", 30_000),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        ProxyConfig {
            workers: 1,
            shutdown_timeout_ms: 3000,
            timeouts,
            limits: BTreeMap::new(),
            upstreams: Vec::new(),
            routes: Vec::new(),
        }
    }

    /// One worker and one round-robin upstream `app` with the given backends as peers.
    pub fn with_backends(backends: &[&Backend]) -> ProxyConfig {
        let peers: Vec<Peer> = backends.iter().map(|b| peer(b.addr())).collect();
        ProxyConfig::new().upstream("app", "round_robin", &peers)
    }

    /// Sets the number of shards.
    pub fn workers(mut self, n: usize) -> ProxyConfig {
        self.workers = n;
        self
    }
    /// Sets `[server] shutdown_timeout_ms`.
    pub fn shutdown_timeout_ms(mut self, ms: u64) -> ProxyConfig {
        self.shutdown_timeout_ms = ms;
        self
    }
    /// Sets a `[timeouts]` key, e.g. `("upstream_read_ms", 300)`.
    pub fn timeout(mut self, key: &str, ms: u64) -> ProxyConfig {
        self.timeouts.insert(key.to_string(), ms);
        self
    }
    /// Sets a `[limits]` key, e.g. `("max_body_bytes", 1000)`.
    pub fn limit(mut self, key: &str, v: u64) -> ProxyConfig {
        self.limits.insert(key.to_string(), v);
        self
    }
    /// Adds an `[[upstream]]`.
    pub fn upstream(mut self, name: &str, algorithm: &str, peers: &[Peer]) -> ProxyConfig {
        let mut s =
            format!("[[upstream]]\nname = \"{name}\"\nalgorithm = \"{algorithm}\"\npeers = [\n");
        for p in peers {
            let _ = writeln!(
                s,
                "  {{ address = \"{}\", weight = {}, backup = {} }},",
                p.addr, p.weight, p.backup
            );
        }
        s.push_str("]\npool = { max_idle_per_peer = 64, idle_timeout_ms = 30000 }\n");
        self.upstreams.push(s);
        self
    }
    /// Adds a `[[route]]` with these condition lines (e.g. `host = "a.example"`).
    pub fn route(mut self, conditions: &[&str], upstream: &str) -> ProxyConfig {
        let mut s = String::from("[[route]]\n");
        for c in conditions {
            s.push_str(c);
            s.push('\n');
        }
        let _ = writeln!(s, "upstream = \"{upstream}\"");
        self.routes.push(s);
        self
    }

    /// The TOML text.
    pub fn toml(&self) -> String {
        let mut s = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = {}\nadmin = \"\"\nshutdown_timeout_ms = {}\n\n[timeouts]\n",
            self.workers, self.shutdown_timeout_ms
        );
        for (k, v) in &self.timeouts {
            let _ = writeln!(s, "{k} = {v}");
        }
        if !self.limits.is_empty() {
            s.push_str("\n[limits]\n");
            for (k, v) in &self.limits {
                let _ = writeln!(s, "{k} = {v}");
            }
        }
        for u in &self.upstreams {
            s.push('\n');
            s.push_str(u);
        }
        for r in &self.routes {
            s.push('\n');
            s.push_str(r);
        }
        s
    }

    /// Starts the proxy in-process.
    pub fn start(&self) -> Proxy {
        Proxy::start(&self.toml())
    }

    /// Starts the real binary with this config.
    pub fn spawn_binary(&self) -> ProxyProcess {
        ProxyProcess::spawn(&self.toml())
    }
}

/// Proxy is a `ringlb::Server` running in this process; dropping it shuts it down.
pub struct Proxy {
    server: Option<ringlb::Server>,
    /// The first listen address (port resolved).
    pub addr: SocketAddr,
}

impl Proxy {
    /// Starts the proxy from TOML text; panics with the error and the text if that fails.
    pub fn start(toml: &str) -> Proxy {
        let cfg = ringlb::Config::from_toml_str(toml, "<test>")
            .unwrap_or_else(|e| panic!("config rejected: {e}\n--- config ---\n{toml}"));
        let server = ringlb::Server::start(cfg)
            .unwrap_or_else(|e| panic!("server did not start: {e}\n--- config ---\n{toml}"));
        let addr = server.listen_addrs()[0];
        assert_ne!(addr.port(), 0, "listen_addrs() must resolve port 0");
        Proxy {
            server: Some(server),
            addr,
        }
    }

    /// A new client connection to the proxy.
    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Graceful shutdown; fails the whole test process if it does not return within 30 s.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        if thread::panicking() {
            // The test already failed: do not risk hanging in a shutdown of a broken proxy.
            std::mem::forget(server);
            return;
        }
        let (tx, rx) = mpsc::channel::<()>();
        thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(30)) {
                eprintln!("ringlb::Server::shutdown() did not return within 30 s");
                std::process::exit(101);
            }
        });
        server.shutdown();
        let _ = tx.send(());
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// The real binary.

/// A unique path under the cargo test temp dir.
pub fn temp_path(stem: &str, ext: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{stem}-{}-{n}.{ext}", std::process::id()))
}

/// Writes `text` to a fresh config file and returns its path.
pub fn write_config(text: &str) -> PathBuf {
    let p = temp_path("ringlb", "toml");
    std::fs::write(&p, text).expect("write config file");
    p
}

/// ProxyProcess is the `ringlb` binary running a config; killed on drop if still running.
pub struct ProxyProcess {
    child: Child,
    /// The listen address (found through /proc).
    pub addr: SocketAddr,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    /// Its config file.
    pub config: PathBuf,
    exited: Option<ExitStatus>,
}

impl ProxyProcess {
    /// Writes `toml` to a file, starts `ringlb --config FILE --log-level warn` and waits (up to
    /// 20 s) until it listens.
    pub fn spawn(toml: &str) -> ProxyProcess {
        let config = write_config(toml);
        let log = temp_path("ringlb", "log");
        let out = std::fs::File::create(&log).expect("create log");
        let err = out.try_clone().expect("clone log");
        let child = Command::new(env!("CARGO_BIN_EXE_ringlb"))
            .arg("--config")
            .arg(&config)
            .arg("--log-level")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn ringlb binary");
        let mut p = ProxyProcess {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            log,
            config,
            exited: None,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = p.child.try_wait().expect("try_wait") {
                p.exited = Some(st);
                panic!(
                    "ringlb exited during startup with {st}; log:\n{}",
                    p.log_text()
                );
            }
            if let Some(port) = listening_port(p.child.id()) {
                p.addr = SocketAddr::from(([127, 0, 0, 1], port));
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "ringlb did not listen within 20 s; log:\n{}",
                p.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of a child this struct owns and has not reaped yet.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.child.id());
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.exited {
                return Some(st);
            }
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                self.exited = Some(st);
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// A field of /proc/<pid>/status in kB (e.g. `VmHWM`, `VmRSS`).
    pub fn status_kb(&self, field: &str) -> u64 {
        proc_status_kb(self.child.id(), field)
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if self.exited.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if !thread::panicking() {
            let _ = std::fs::remove_file(&self.config);
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!("ringlb log ({}):\n{}", self.log.display(), self.log_text());
        }
    }
}

/// A field of /proc/<pid>/status in kB.
pub fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad line {line:?}"))
}

/// The TCP port `pid` listens on (its first listening socket), from /proc.
pub fn listening_port(pid: u32) -> Option<u16> {
    let mut inodes = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        if let Ok(target) = std::fs::read_link(e.path()) {
            let t = target.to_string_lossy();
            if let Some(ino) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                inodes.push(ino.to_string());
            }
        }
    }
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let port = f[1].rsplit(':').next()?;
                return u16::from_str_radix(port, 16).ok();
            }
        }
    }
    None
}

/// Runs `ringlb ARGS...` to completion (60 s at most) and returns its output.
pub fn run_binary(args: &[&str]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringlb");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ringlb {args:?} did not finish within 60 s");
        }
        thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("collect output")
}

// ---------------------------------------------------------------------------------------------
// Health-check helpers: backends that die and come back on the same address, backends that
// reset every connection, and access to the in-process server (admin address, test knobs).

impl Backend {
    /// Like `with_handler`, but listening on `addr` (e.g. the address of a killed backend,
    /// to restart it). Retries the bind for up to 2 s while the old listener closes.
    pub fn with_handler_on(
        name: &str,
        addr: SocketAddr,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> Backend {
        let deadline = Instant::now() + Duration::from_secs(2);
        let listener = loop {
            match TcpListener::bind(addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("rebind backend {name} on {addr}: {e}"),
            }
        };
        let shared = Arc::new(Shared {
            name: name.to_string(),
            handler: Box::new(handler),
            auto_continue: true,
            accepts: AtomicUsize::new(0),
            heads: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            errors: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let sh = shared.clone();
        thread::Builder::new()
            .name(format!("backend-{name}"))
            .spawn(move || accept_loop(listener, sh))
            .expect("spawn backend thread");
        Backend { addr, shared }
    }

    /// Like `start` (answers 200 with its name), on `addr`.
    pub fn start_on(name: &str, addr: SocketAddr) -> Backend {
        let n = name.to_string();
        Backend::with_handler_on(name, addr, move |_| Reply::ok(n.clone()))
    }

    /// Kills the backend: closes its listener (connects are refused from then on) and every
    /// open connection. Returns once the port refuses connections.
    pub fn kill(self) {
        let addr = self.addr;
        drop(self);
        let deadline = Instant::now() + Duration::from_secs(2);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "killed backend {addr} still accepts"
            );
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Requests received so far whose path is not `health_path` (traffic, not probes).
    pub fn traffic_count(&self, health_path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.path() != health_path)
            .count()
    }
}

/// ResetBackend accepts connections, reads the request, and resets the connection (RST, via
/// SO_LINGER 0) without answering.
pub struct ResetBackend {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl ResetBackend {
    /// Starts one on `127.0.0.1:0`.
    pub fn start() -> ResetBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind reset backend");
        let addr = listener.local_addr().expect("local addr");
        let accepts = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (accepts.clone(), stop.clone());
        thread::Builder::new()
            .name("backend-reset".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if s.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(mut stream) = stream else { continue };
                    a.fetch_add(1, Ordering::SeqCst);
                    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                    let mut b = [0u8; 4096];
                    let _ = stream.read(&mut b);
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    drop(stream);
                }
            })
            .expect("spawn reset backend");
        ResetBackend {
            addr,
            accepts,
            stop,
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

impl Drop for ResetBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

impl Proxy {
    /// The running server (admin address, test knobs).
    pub fn server(&self) -> &ringlb::Server {
        self.server.as_ref().expect("the proxy is running")
    }
}

// ---------------------------------------------------------------------------------------------
// Fault-injecting peers (tests/faults.rs) and upstream keys for the proxy config.

impl ProxyConfig {
    /// Appends `line` (e.g. `retry = { max_retries = 1 }`) to the last `[[upstream]]` added.
    pub fn upstream_line(mut self, line: &str) -> ProxyConfig {
        let u = self
            .upstreams
            .last_mut()
            .expect("upstream_line needs an [[upstream]] added first");
        u.push_str(line);
        u.push('\n');
        self
    }
}

/// Fault is how a [`FaultPeer`] misbehaves on every connection it accepts.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Accepts the connection and closes it at once, without reading anything.
    AcceptClose,
    /// Reads the whole request, then resets the connection (SO_LINGER 0, close: an RST).
    ResetAfterRead,
    /// Reads the whole request and never answers; the connection stays open until the proxy
    /// closes it or the peer is dropped.
    Hang,
    /// Reads the whole request, writes these bytes, then closes the connection (FIN).
    Answer(Vec<u8>),
    /// Answers the first request on each connection `200` (`ok`, kept alive), then reads the
    /// second one whole and resets the connection: a pooled connection that dies after the
    /// peer got the request.
    ResetSecondRequest,
    /// Accepts the connection and never reads from it (nor answers): a writer to it blocks
    /// once the socket buffers are full. Held open until the peer is dropped.
    Stall,
}

/// FaultShared is what a fault peer's threads and its handle share.
struct FaultShared {
    fault: Fault,
    /// Connections accepted.
    accepts: AtomicUsize,
    /// Requests read completely (head and body), with when they were complete.
    hits: Mutex<Vec<(Instant, Vec<u8>)>>,
    stop: AtomicBool,
    /// A clone of every accepted connection, shut down on drop (wakes hanging threads).
    conns: Mutex<Vec<TcpStream>>,
}

/// FaultPeer is a raw upstream on `127.0.0.1:0` (std threads, blocking sockets) that
/// misbehaves in one way ([`Fault`]) on every connection, counting accepted connections and
/// complete requests ("hits") exactly. A connection serves one request (two for
/// [`Fault::ResetSecondRequest`]).
pub struct FaultPeer {
    addr: SocketAddr,
    shared: Arc<FaultShared>,
}

impl FaultPeer {
    /// Starts a peer with this fault.
    pub fn start(fault: Fault) -> FaultPeer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fault peer");
        let addr = listener.local_addr().expect("fault peer local addr");
        let shared = Arc::new(FaultShared {
            fault,
            accepts: AtomicUsize::new(0),
            hits: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let sh = shared.clone();
        thread::Builder::new()
            .name(format!("fault-peer-{}", addr.port()))
            .spawn(move || fault_accept_loop(listener, sh))
            .expect("spawn fault peer thread");
        FaultPeer { addr, shared }
    }

    /// A peer that answers every request with these bytes and closes.
    pub fn answering(bytes: impl Into<Vec<u8>>) -> FaultPeer {
        FaultPeer::start(Fault::Answer(bytes.into()))
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepts(&self) -> usize {
        self.shared.accepts.load(Ordering::SeqCst)
    }

    /// Requests read completely so far (0 for [`Fault::AcceptClose`] and [`Fault::Stall`],
    /// which read nothing).
    pub fn hits(&self) -> usize {
        self.shared.hits.lock().unwrap().len()
    }

    /// When each request was read completely, in order.
    pub fn hit_times(&self) -> Vec<Instant> {
        self.shared
            .hits
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| *t)
            .collect()
    }

    /// Each request as received (head and decoded body), in order.
    pub fn requests(&self) -> Vec<Vec<u8>> {
        self.shared
            .hits
            .lock()
            .unwrap()
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }
}

impl Drop for FaultPeer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn fault_accept_loop(listener: TcpListener, sh: Arc<FaultShared>) {
    for stream in listener.incoming() {
        if sh.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        sh.accepts.fetch_add(1, Ordering::SeqCst);
        match sh.fault {
            Fault::AcceptClose => {
                drop(stream);
                continue;
            }
            Fault::Stall => {
                sh.conns.lock().unwrap().push(stream);
                continue;
            }
            _ => {}
        }
        // Only a hanging connection is kept for Drop to shut down (which wakes its thread): a
        // kept clone would hold the socket open past the thread's close, so no RST would go out.
        if let Fault::Hang = sh.fault {
            if let Ok(c) = stream.try_clone() {
                sh.conns.lock().unwrap().push(c);
            }
        }
        let sh2 = sh.clone();
        let _ = thread::Builder::new()
            .name("fault-peer-conn".into())
            .spawn(move || fault_serve(stream, &sh2));
    }
}

/// Reads one request (head, then a Content-Length or chunked body); returns head + body.
fn read_one_request(wire: &mut Wire) -> Result<Vec<u8>, ReadErr> {
    let head = wire.read_head(1 << 20)?;
    let (_, headers) = split_head(&head).map_err(ReadErr::Protocol)?;
    let mut req = head.clone();
    if has_token(&headers, "transfer-encoding", "chunked") {
        wire.read_chunked_to(&mut |d| req.extend_from_slice(d))?;
    } else if let Some(cl) = header_value(&headers, "content-length") {
        let n: u64 = cl
            .parse()
            .map_err(|_| ReadErr::Protocol(format!("bad Content-Length {cl:?}")))?;
        wire.read_exact_to(n, &mut |d| req.extend_from_slice(d))?;
    }
    Ok(req)
}

fn fault_serve(stream: TcpStream, sh: &FaultShared) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let mut wire = Wire::new(stream);
    let Ok(req) = read_one_request(&mut wire) else {
        return;
    };
    sh.hits.lock().unwrap().push((Instant::now(), req));
    match &sh.fault {
        Fault::AcceptClose | Fault::Stall => {}
        Fault::ResetSecondRequest => {
            if wire
                .stream()
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .is_err()
            {
                return;
            }
            let Ok(req) = read_one_request(&mut wire) else {
                return;
            };
            sh.hits.lock().unwrap().push((Instant::now(), req));
            let _ = socket2::SockRef::from(&*wire.stream()).set_linger(Some(Duration::ZERO));
        }
        Fault::ResetAfterRead => {
            // SO_LINGER 0: close() sends an RST instead of a FIN.
            let _ = socket2::SockRef::from(&*wire.stream()).set_linger(Some(Duration::ZERO));
        }
        Fault::Hang => {
            // Never answer: wait until the proxy gives up (EOF, reset) or Drop shuts the
            // connection down. A quiet spell longer than IO_TIMEOUT also ends it.
            let mut b = [0u8; 4096];
            while let Ok(n) = wire.stream().read(&mut b) {
                if n == 0 {
                    break;
                }
            }
        }
        Fault::Answer(bytes) => {
            let _ = wire.stream().write_all(bytes);
            let _ = wire.stream().shutdown(Shutdown::Write);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Balancing helpers: upstreams with balancing keys, a proxy with a custom picker.

impl ProxyConfig {
    /// Adds an `[[upstream]]` like [`ProxyConfig::upstream`], with `extra` lines after the
    /// algorithm (e.g. `hash_key = "header:X-User-Id"`, `balance_factor = 1.25`).
    pub fn upstream_with(
        mut self,
        name: &str,
        algorithm: &str,
        extra: &[&str],
        peers: &[Peer],
    ) -> ProxyConfig {
        self = self.upstream(name, algorithm, peers);
        let u = self.upstreams.last_mut().expect("just added");
        let at = u.find("peers = [").expect("peers line");
        let lines: String = extra.iter().map(|l| format!("{l}\n")).collect();
        u.insert_str(at, &lines);
        self
    }
}

/// Parses a config text (panics with the error and the text).
pub fn config_from(text: impl AsRef<str>) -> ringlb::Config {
    let text = text.as_ref();
    ringlb::Config::from_toml_str(text, "<test>")
        .unwrap_or_else(|e| panic!("config rejected: {e}\n--- config ---\n{text}"))
}

impl Proxy {
    /// Starts the proxy in-process from TOML text with a custom picker instead of the
    /// config's routes.
    pub fn start_with_picker(
        toml: &str,
        picker: std::sync::Arc<dyn ringlb::proxy::Picker>,
    ) -> Proxy {
        let server = ringlb::Server::start_with_picker(config_from(toml), picker)
            .unwrap_or_else(|e| panic!("server did not start: {e}\n--- config ---\n{toml}"));
        let addr = server.listen_addrs()[0];
        assert_ne!(addr.port(), 0, "listen_addrs() must resolve port 0");
        Proxy {
            server: Some(server),
            addr,
        }
    }
}

/// A peer whose accept queue is full: the kernel drops further SYNs, so connecting to it hangs
/// (a connect timeout, for real). Keep the returned socket and connections alive for as long
/// as the peer should stay so.
pub fn blackhole_peer() -> (socket2::Socket, Vec<TcpStream>, SocketAddr) {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    s.listen(0).expect("listen");
    let addr = s
        .local_addr()
        .expect("local addr")
        .as_socket()
        .expect("inet");
    // Fill the accept queue (never accepted).
    let fill = (0..4)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok())
        .collect();
    (s, fill, addr)
}

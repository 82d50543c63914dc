//! [`Backend`]: a programmable HTTP/1.1 origin server on std threads and blocking sockets. It
//! counts accepted connections and requests, records every request it received (head bytes,
//! headers, decoded body, trailers) and answers each one with whatever its handler returns
//! ([`Reply`]). It parses Content-Length and chunked bodies, keeps connections alive and answers
//! pipelined requests in order; it can be killed and restarted on the same address.

use super::*;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// BACKEND_IDLE is how long a backend connection may sit without a request before the backend
/// drops it (only to let threads of finished tests end; far above any test's duration).
const BACKEND_IDLE: Duration = Duration::from_secs(120);

/// BODY_RECORD_LIMIT is the largest request body a backend keeps in memory; larger bodies are
/// only measured and checked against the pattern.
pub const BODY_RECORD_LIMIT: u64 = 32 << 20;

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
        Backend::serve(name, listener, auto_continue, handler)
    }

    /// Serves on `listener` from a thread of its own.
    fn serve(
        name: &str,
        listener: TcpListener,
        auto_continue: bool,
        handler: Box<Handler>,
    ) -> Backend {
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
        Backend::serve(name, listener, true, Box::new(handler))
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

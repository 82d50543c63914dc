//! In-process HTTP/1.1 keep-alive backends.
//!
//! A [`Backend`] is one thread, pinned to a CPU, running a level-triggered epoll loop over its
//! listener (127.0.0.1, ephemeral port) and its connections. It answers every complete request
//! head (up to `\r\n\r\n`) with the same canned `200 OK` and a fixed-size body, handles pipelined
//! requests (all heads in one read are answered with one write), assumes GET without bodies, and
//! closes after `Connection: close` or an HTTP/1.0 request. It does no per-request allocation, so
//! one backend thread serves far more than a proxy on another core can push through.
//!
//! For the `faults` subcommand a backend can be killed ([`Backend::kill`]: the thread stops at
//! once, closing its listener and every connection) and restarted on the same port
//! ([`Backend::restart`]); its request counter carries on across restarts.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::procstat::own_thread_cpu_seconds;
use crate::setup::pin_current_thread;

/// LISTENER is the epoll token of the listening socket (connections use their fd, never this).
const LISTENER: u64 = u64::MAX;
/// WAKE is the epoll token of the eventfd that [`Backend::kill`] signals.
const WAKE: u64 = u64::MAX - 1;
/// READ_BUF is the size of the one read buffer each backend thread reuses.
const READ_BUF: usize = 64 * 1024;
/// MAX_HEAD is how long an incomplete request head may grow before the connection is dropped.
const MAX_HEAD: usize = 64 * 1024;

/// Backend is a backend thread (running, or killed and waiting for a restart); dropping it stops
/// the thread and closes its sockets.
pub struct Backend {
    /// Thread name, reused on restart.
    name: String,
    /// CPU the thread is pinned to.
    cpu: usize,
    /// The canned response, shared by every run of the thread.
    response: Arc<Vec<u8>>,
    /// Where it listens (the same port after a restart).
    addr: SocketAddr,
    /// Tells the current thread to exit (it checks after every epoll wait).
    stop: Arc<AtomicBool>,
    /// Wakes the current thread's epoll wait, so that a kill takes effect at once.
    wake: Option<Arc<EventFd>>,
    /// Requests answered so far (across restarts), to check that the proxies spread load over
    /// all backends.
    served: Arc<AtomicU64>,
    /// The serving thread's kernel thread id (0 until it started), to read its CPU time.
    tid: Arc<AtomicI32>,
    /// The serving thread; `None` once joined (killed).
    thread: Option<JoinHandle<()>>,
}

/// Raises a listener's accept backlog from std's 128 to the kernel's cap (`somaxconn`), as
/// real servers configure it (nginx 511, HAProxy its `maxconn`): a proxy opening thousands of
/// upstream connections at once (`conns`) must not find the backend's queue overflowing, SYNs
/// dropped and its connects timing out, which would measure the harness's backend rather
/// than the proxy. Calling listen(2) again on a listening socket only changes the backlog.
fn deepen_backlog(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: listen(2) on our own open socket; no memory is passed.
    unsafe {
        libc::listen(listener.as_raw_fd(), 65_535);
    }
}

impl Backend {
    /// Starts a backend on 127.0.0.1:0 whose thread is pinned to `cpu`, answering every request
    /// with a `body_bytes`-byte body.
    pub fn start(name: &str, cpu: usize, body_bytes: usize) -> Result<Backend> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind backend")?;
        deepen_backlog(&listener);
        let addr = listener.local_addr()?;
        let mut b = Backend {
            name: name.to_string(),
            cpu,
            response: Arc::new(canned_response(body_bytes)),
            addr,
            stop: Arc::new(AtomicBool::new(false)),
            wake: None,
            served: Arc::new(AtomicU64::new(0)),
            tid: Arc::new(AtomicI32::new(0)),
            thread: None,
        };
        b.spawn(listener)?;
        Ok(b)
    }

    /// Starts the serving thread on `listener`.
    fn spawn(&mut self, listener: TcpListener) -> Result<()> {
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(EventFd::new().context("eventfd")?);
        let (addr, cpu) = (self.addr, self.cpu);
        let (stop2, wake2, served2, tid2, response) = (
            stop.clone(),
            wake.clone(),
            self.served.clone(),
            self.tid.clone(),
            self.response.clone(),
        );
        let thread = std::thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                tid2.store(unsafe { libc::gettid() }, Ordering::Relaxed);
                if let Err(e) = pin_current_thread(cpu) {
                    eprintln!("warning: cannot pin backend {addr} to CPU {cpu}: {e}");
                }
                if let Err(e) = serve(listener, &response, &stop2, &served2, &wake2) {
                    eprintln!("backend {addr} stopped: {e}");
                }
            })
            .context("spawn backend thread")?;
        self.stop = stop;
        self.wake = Some(wake);
        self.thread = Some(thread);
        Ok(())
    }

    /// Kills the backend like a crashed process: its thread stops at once and closes the
    /// listener (new connections are refused) and every connection (requests in flight are
    /// lost). Does nothing if it is not running.
    pub fn kill(&mut self) {
        let Some(t) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.wake.take() {
            w.signal();
        }
        let _ = t.join();
    }

    /// Starts a killed backend again on the same address (waiting up to 2 s for the port);
    /// does nothing if it is running.
    pub fn restart(&mut self) -> Result<()> {
        if self.thread.is_some() {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let listener = loop {
            match TcpListener::bind(self.addr) {
                Ok(l) => {
                    deepen_backlog(&l);
                    break l;
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("re-bind backend {}", self.addr));
                }
            }
        };
        self.spawn(listener)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests answered since start (across restarts).
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// CPU seconds its current thread has used (since start, or since the last restart).
    pub fn cpu_seconds(&self) -> f64 {
        match self.tid.load(Ordering::Relaxed) {
            0 => 0.0,
            tid => own_thread_cpu_seconds(tid),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The full response bytes: head + a body of `body_bytes` printable bytes.
fn canned_response(body_bytes: usize) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nServer: bench-backend\r\nContent-Type: text/plain\r\n\
         Content-Length: {body_bytes}\r\n\r\n"
    )
    .into_bytes();
    r.extend((0..body_bytes).map(|i| b'a' + (i % 26) as u8));
    r
}

/// Conn is one accepted connection's state.
struct Conn {
    /// The socket (non-blocking).
    stream: TcpStream,
    /// Bytes of a request head that has not ended yet (split across reads).
    partial: Vec<u8>,
    /// Response bytes not yet written (the socket buffer was full).
    out: Vec<u8>,
    /// A request asked to close: close once `out` is flushed.
    close_after: bool,
    /// epoll currently waits for writability (and not readability) on this socket.
    waiting_write: bool,
}

/// What to do with a connection after handling an event.
enum Next {
    Keep,
    Close,
}

fn serve(
    listener: TcpListener,
    response: &[u8],
    stop: &AtomicBool,
    served: &AtomicU64,
    wake: &EventFd,
) -> io::Result<()> {
    let ep = Epoll::new()?;
    ep.ctl(
        libc::EPOLL_CTL_ADD,
        listener.as_raw_fd(),
        LISTENER,
        libc::EPOLLIN,
    )?;
    ep.ctl(libc::EPOLL_CTL_ADD, wake.fd, WAKE, libc::EPOLLIN)?;
    let mut conns: HashMap<u64, Conn> = HashMap::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = vec![0u8; READ_BUF];
    while !stop.load(Ordering::Relaxed) {
        let n = ep.wait(&mut events, 100)?;
        for ev in &events[..n] {
            let token = ev.u64;
            if token == WAKE || stop.load(Ordering::Relaxed) {
                break; // killed: the while condition ends the loop
            }
            if token == LISTENER {
                accept_all(&listener, &ep, &mut conns)?;
                continue;
            }
            let Some(conn) = conns.get_mut(&token) else {
                continue;
            };
            let next = if conn.waiting_write {
                on_writable(conn, &ep)
            } else {
                on_readable(conn, &ep, &mut buf, response, served)
            };
            if let Next::Close = next {
                if let Some(c) = conns.remove(&token) {
                    let _ = ep.ctl(libc::EPOLL_CTL_DEL, c.stream.as_raw_fd(), token, 0);
                }
            }
        }
    }
    Ok(())
}

fn accept_all(
    listener: &TcpListener,
    ep: &Epoll,
    conns: &mut HashMap<u64, Conn>,
) -> io::Result<()> {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(true)?;
                stream.set_nodelay(true)?;
                let fd = stream.as_raw_fd();
                let token = fd as u64;
                ep.ctl(libc::EPOLL_CTL_ADD, fd, token, libc::EPOLLIN)?;
                conns.insert(
                    token,
                    Conn {
                        stream,
                        partial: Vec::new(),
                        out: Vec::new(),
                        close_after: false,
                        waiting_write: false,
                    },
                );
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // ECONNABORTED, EMFILE, …: skip this round, the listener stays registered.
            Err(_) => return Ok(()),
        }
    }
}

fn on_readable(
    conn: &mut Conn,
    ep: &Epoll,
    buf: &mut [u8],
    response: &[u8],
    served: &AtomicU64,
) -> Next {
    let n = match conn.stream.read(buf) {
        Ok(0) => return Next::Close,
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Keep,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return Next::Keep,
        Err(_) => return Next::Close,
    };
    let heads = if conn.partial.is_empty() {
        let scan = scan_heads(&buf[..n]);
        conn.partial.extend_from_slice(&buf[scan.consumed..n]);
        scan
    } else {
        conn.partial.extend_from_slice(&buf[..n]);
        let scan = scan_heads(&conn.partial);
        conn.partial.drain(..scan.consumed);
        scan
    };
    if conn.partial.len() > MAX_HEAD {
        return Next::Close;
    }
    if heads.count == 0 {
        return Next::Keep;
    }
    served.fetch_add(heads.count as u64, Ordering::Relaxed);
    conn.close_after = heads.close;
    for _ in 0..heads.count {
        conn.out.extend_from_slice(response);
    }
    flush(conn, ep)
}

fn on_writable(conn: &mut Conn, ep: &Epoll) -> Next {
    flush(conn, ep)
}

/// Writes as much of `out` as the socket takes; switches epoll interest to writability while
/// something is left (and stops reading meanwhile: backpressure), back to readability after.
fn flush(conn: &mut Conn, ep: &Epoll) -> Next {
    let mut written = 0;
    while written < conn.out.len() {
        match conn.stream.write(&conn.out[written..]) {
            Ok(0) => return Next::Close,
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Next::Close,
        }
    }
    conn.out.drain(..written);
    let fd = conn.stream.as_raw_fd();
    let token = fd as u64;
    if conn.out.is_empty() {
        if conn.close_after {
            return Next::Close;
        }
        if conn.waiting_write {
            conn.waiting_write = false;
            if ep
                .ctl(libc::EPOLL_CTL_MOD, fd, token, libc::EPOLLIN)
                .is_err()
            {
                return Next::Close;
            }
        }
    } else if !conn.waiting_write {
        conn.waiting_write = true;
        if ep
            .ctl(libc::EPOLL_CTL_MOD, fd, token, libc::EPOLLOUT)
            .is_err()
        {
            return Next::Close;
        }
    }
    Next::Keep
}

/// HeadScan is what [`scan_heads`] found in a byte run.
#[derive(Debug, PartialEq, Eq)]
struct HeadScan {
    /// Complete request heads (each ended by `\r\n\r\n`).
    count: usize,
    /// Bytes up to and including the last complete head's `\r\n\r\n`.
    consumed: usize,
    /// One of those heads asked to close the connection.
    close: bool,
}

/// Counts complete request heads in `data` (no request bodies assumed).
fn scan_heads(data: &[u8]) -> HeadScan {
    let mut scan = HeadScan {
        count: 0,
        consumed: 0,
        close: false,
    };
    let mut start = 0;
    let mut i = 3;
    while i < data.len() {
        if data[i] == b'\n' && &data[i - 3..i] == b"\r\n\r" {
            let head = &data[start..=i];
            scan.count += 1;
            scan.close |= wants_close(head);
            start = i + 1;
            scan.consumed = start;
            i = start + 3;
        } else {
            i += 1;
        }
    }
    scan
}

/// A head asks to close: `Connection: close`, or HTTP/1.0 (we never keep 1.0 alive).
fn wants_close(head: &[u8]) -> bool {
    let line_end = head.iter().position(|&b| b == b'\r').unwrap_or(head.len());
    if head[..line_end].ends_with(b"HTTP/1.0") {
        return true;
    }
    head.split(|&b| b == b'\n').skip(1).any(|line| {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return false;
        };
        line[..colon].eq_ignore_ascii_case(b"connection")
            && line[colon + 1..]
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

/// Epoll is an owned epoll file descriptor.
struct Epoll {
    /// The epoll fd, closed on drop.
    fd: RawFd,
}

impl Epoll {
    fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall; the returned fd is owned by the Epoll and closed on drop.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll { fd })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, events: libc::c_int) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: events as u32,
            u64: token,
        };
        // SAFETY: `self.fd` is a live epoll fd, `ev` a valid event that outlives the call.
        let rc = unsafe { libc::epoll_ctl(self.fd, op, fd, &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms`; returns how many entries of `events` were filled (0 on EINTR).
    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        let max = events.len().min(i32::MAX as usize) as i32;
        // SAFETY: `events` is a valid writable buffer of at least `max` entries.
        let n = unsafe { libc::epoll_wait(self.fd, events.as_mut_ptr(), max, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(n as usize)
    }
}

/// EventFd is an owned eventfd, used to wake a backend's epoll wait.
struct EventFd {
    /// The eventfd, closed on drop.
    fd: RawFd,
}

impl EventFd {
    fn new() -> io::Result<EventFd> {
        // SAFETY: plain syscall; the returned fd is owned by the EventFd and closed on drop.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(EventFd { fd })
    }

    /// Makes the eventfd readable (wakes an epoll wait on it).
    fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
        unsafe { libc::write(self.fd, (&one as *const u64).cast(), 8) };
    }
}

impl Drop for EventFd {
    fn drop(&mut self) {
        // SAFETY: we own `self.fd` and close it exactly once.
        unsafe { libc::close(self.fd) };
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: we own `self.fd` and close it exactly once.
        unsafe { libc::close(self.fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::time::Duration;

    #[test]
    fn scan_counts_pipelined_heads_and_keeps_the_tail() {
        let data = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\n\r\nGET /y HT";
        let scan = scan_heads(data);
        assert_eq!(scan.count, 2);
        assert_eq!(&data[scan.consumed..], b"GET /y HT");
        assert!(!scan.close);
    }

    #[test]
    fn scan_sees_connection_close_and_http10() {
        assert!(scan_heads(b"GET / HTTP/1.1\r\nconnection: Keep-Alive, CLOSE\r\n\r\n").close);
        assert!(scan_heads(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n").close);
        assert!(!scan_heads(b"GET / HTTP/1.1\r\nX-Connection: close\r\n\r\n").close);
    }

    #[test]
    fn backend_answers_pipelined_requests_in_order() {
        let b = Backend::start("test-backend", 0, 100).expect("backend starts");
        let mut s = TcpStream::connect(b.addr()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        // The second request arrives split across two writes.
        s.write_all(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nHo")
            .expect("write");
        std::thread::sleep(Duration::from_millis(20));
        s.write_all(b"st: a\r\n\r\n").expect("write");
        let mut r = BufReader::new(s);
        for _ in 0..2 {
            let mut line = String::new();
            r.read_line(&mut line).expect("status line");
            assert_eq!(line, "HTTP/1.1 200 OK\r\n");
            let mut len = 0;
            loop {
                line.clear();
                r.read_line(&mut line).expect("header");
                if line == "\r\n" {
                    break;
                }
                if let Some(v) = line.strip_prefix("Content-Length: ") {
                    len = v.trim().parse().expect("number");
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).expect("body");
            assert_eq!(body.len(), 100);
        }
        assert_eq!(b.served(), 2);
    }

    /// One `GET /` on a fresh connection; returns the status line.
    fn get_status(addr: SocketAddr) -> io::Result<String> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        Ok(line)
    }

    #[test]
    fn killed_backend_refuses_and_comes_back_on_the_same_port() {
        let mut b = Backend::start("test-restart", 0, 10).expect("backend starts");
        let addr = b.addr();
        // An idle keep-alive connection, which the kill must close.
        let mut idle = TcpStream::connect(addr).expect("connect");
        idle.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        assert_eq!(get_status(addr).expect("served"), "HTTP/1.1 200 OK\r\n");
        let t = Instant::now();
        b.kill();
        assert!(
            t.elapsed() < Duration::from_millis(50),
            "kill took {:?}",
            t.elapsed()
        );
        let err = TcpStream::connect(addr).expect_err("the listener is closed");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        let mut buf = [0u8; 16];
        assert!(
            matches!(idle.read(&mut buf), Ok(0) | Err(_)),
            "idle connection closed"
        );
        b.restart().expect("restart");
        assert_eq!(b.addr(), addr);
        assert_eq!(
            get_status(addr).expect("served again"),
            "HTTP/1.1 200 OK\r\n"
        );
        assert_eq!(b.served(), 2);
    }
}

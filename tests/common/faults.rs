//! Peers that misbehave: [`FaultPeer`] (one [`Fault`] on every connection, hits counted
//! exactly), [`ResetBackend`] (resets every connection), [`refusing_addr`] (connects refused)
//! and [`blackhole_peer`] (connects hang).

use super::*;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// An address on which connections are refused: a port that was bound and closed again.
pub fn refusing_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("local addr");
    drop(l);
    a
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
    /// Reads the whole request, writes these bytes (a response head and part of its body),
    /// then goes silent like [`Fault::Hang`]: a response that started and stalls.
    AnswerThenHang(Vec<u8>),
    /// Answers the first request on each connection `200` (`ok`, kept alive), then reads the
    /// second one whole and resets the connection: a pooled connection that dies after the
    /// peer got the request.
    ResetSecondRequest,
    /// Accepts the connection and never reads from it (nor answers): a writer to it blocks
    /// once the socket buffers are full. Held open until the peer is dropped.
    Stall,
    /// Reads only the request head, writes these bytes (a whole response, e.g. a `413`) and
    /// closes with the body unread, as a server refusing a body does: the kernel answers
    /// the body bytes with an RST (forced with SO_LINGER 0, so it does not depend on timing).
    /// A hit is the head alone.
    AnswerBeforeBody(Vec<u8>),
}

/// A whole `413` response with the body `too large`, for a [`Fault::AnswerBeforeBody`] peer.
pub const TOO_LARGE: &[u8] =
    b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large";

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

    /// How it misbehaves.
    pub fn fault(&self) -> &Fault {
        &self.shared.fault
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
        if let Fault::Hang | Fault::AnswerThenHang(_) = sh.fault {
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

/// Answers nothing more: waits until the proxy gives up (EOF, reset) or Drop shuts the
/// connection down. A quiet spell longer than IO_TIMEOUT also ends it.
fn hang(wire: &mut Wire) {
    let mut b = [0u8; 4096];
    while let Ok(n) = wire.stream().read(&mut b) {
        if n == 0 {
            break;
        }
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
    if let Fault::AnswerBeforeBody(bytes) = &sh.fault {
        let Ok(head) = wire.read_head(1 << 20) else {
            return;
        };
        let _ = wire.stream().write_all(bytes);
        // (the answer is in the proxy's socket once the write returned, on loopback; the
        // pause only keeps the reset from racing it on a loaded machine)
        thread::sleep(Duration::from_millis(20));
        let _ = socket2::SockRef::from(&*wire.stream()).set_linger(Some(Duration::ZERO));
        sh.hits.lock().unwrap().push((Instant::now(), head));
        return;
    }
    let Ok(req) = read_one_request(&mut wire) else {
        return;
    };
    sh.hits.lock().unwrap().push((Instant::now(), req));
    match &sh.fault {
        Fault::AcceptClose | Fault::Stall | Fault::AnswerBeforeBody(_) => {}
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
        Fault::Hang => hang(&mut wire),
        Fault::AnswerThenHang(bytes) => {
            if wire.stream().write_all(bytes).is_ok() {
                hang(&mut wire);
            }
        }
        Fault::Answer(bytes) => {
            let _ = wire.stream().write_all(bytes);
            let _ = wire.stream().shutdown(Shutdown::Write);
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

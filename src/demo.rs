//! Demo backends for `ringlb demo`: small keep-alive HTTP/1.1 servers on loopback, inside the
//! process, on their own thread and monoio runtime (not on a shard).
//!
//! Each answers every request with `200 OK` and a short text naming the backend, the method and
//! the path. They read and discard request bodies (Content-Length or chunked), so uploads work.

use std::net::SocketAddr;
use std::thread::JoinHandle;

use monoio::io::AsyncWriteRentExt;
use monoio::net::{TcpListener, TcpStream};

use crate::config::Limits;
use crate::http::{parse_request, BodyKind, ChunkedDecoder, ParseStatus, RequestHead};
use crate::io::read_append;

/// DemoBackends is a set of running demo backends.
pub struct DemoBackends {
    /// Their addresses, in order (`demo-1`, `demo-2`, …).
    pub addrs: Vec<SocketAddr>,
    /// The thread running them; it lives as long as the process.
    _thread: JoinHandle<()>,
}

impl DemoBackends {
    /// Starts `n` demo backends on 127.0.0.1 ephemeral ports.
    pub fn start(n: usize) -> std::io::Result<DemoBackends> {
        let mut listeners = Vec::with_capacity(n);
        for _ in 0..n {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.set_nonblocking(true)?;
            listeners.push(l);
        }
        let addrs = listeners
            .iter()
            .map(|l| l.local_addr())
            .collect::<Result<Vec<_>, _>>()?;
        let thread = std::thread::Builder::new()
            .name("ringlb-demo".into())
            .spawn(move || {
                let built = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                    .enable_timer()
                    .build();
                let mut rt = match built {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("demo backends cannot start: {e}");
                        return;
                    }
                };
                rt.block_on(async move {
                    let mut tasks = Vec::new();
                    for (i, l) in listeners.into_iter().enumerate() {
                        match TcpListener::from_std(l) {
                            Ok(l) => tasks.push(monoio::spawn(accept_loop(l, i + 1))),
                            Err(e) => tracing::error!("demo backend {}: {e}", i + 1),
                        }
                    }
                    for t in tasks {
                        t.await;
                    }
                });
            })?;
        Ok(DemoBackends {
            addrs,
            _thread: thread,
        })
    }
}

async fn accept_loop(listener: TcpListener, n: usize) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                monoio::spawn(serve(stream, n));
            }
            Err(e) => {
                tracing::warn!("demo backend {n}: accept: {e}");
                monoio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve(mut stream: TcpStream, n: usize) {
    let _ = stream.set_nodelay(true);
    let limits = Limits::default();
    let mut head = RequestHead::default();
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut out: Vec<u8> = Vec::with_capacity(512);
    loop {
        // Read a head.
        let head_len = loop {
            match parse_request(&buf, &limits, &mut head) {
                Ok(ParseStatus::Complete) => break head.head_len,
                Ok(ParseStatus::Partial) => {}
                Err(_) => return,
            }
            if !read_some(&mut stream, &mut buf).await {
                return;
            }
        };
        let text = format!(
            "hello from demo backend {n}: {} {}\n",
            String::from_utf8_lossy(head.method_range.get(&buf)),
            String::from_utf8_lossy(head.target.get(&buf)),
        );
        let keep_alive = head.keep_alive;
        let body = head.body;
        buf.drain(..head_len);
        // Discard the body.
        match body {
            BodyKind::Length(mut left) => loop {
                let take = left.min(buf.len() as u64) as usize;
                buf.drain(..take);
                left -= take as u64;
                if left == 0 {
                    break;
                }
                if !read_some(&mut stream, &mut buf).await {
                    return;
                }
            },
            BodyKind::Chunked => {
                let mut dec = ChunkedDecoder::new();
                loop {
                    let Ok((used, done)) = dec.decode(&buf, None) else {
                        return;
                    };
                    buf.drain(..used);
                    if done {
                        break;
                    }
                    if !read_some(&mut stream, &mut buf).await {
                        return;
                    }
                }
            }
            BodyKind::None | BodyKind::UntilClose => {}
        }
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Backend: demo-");
        out.extend_from_slice(n.to_string().as_bytes());
        out.extend_from_slice(b"\r\nContent-Length: ");
        out.extend_from_slice(text.len().to_string().as_bytes());
        out.extend_from_slice(if keep_alive {
            b"\r\n\r\n".as_slice()
        } else {
            b"\r\nConnection: close\r\n\r\n".as_slice()
        });
        out.extend_from_slice(text.as_bytes());
        let (res, o) = stream.write_all(std::mem::take(&mut out)).await;
        out = o;
        if res.is_err() || !keep_alive {
            return;
        }
    }
}

/// Reads more bytes onto `buf`; false on EOF or error.
async fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    matches!(read_append(stream, buf, 8192, usize::MAX, None).await, Ok(n) if n > 0)
}

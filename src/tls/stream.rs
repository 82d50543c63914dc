//! [`TlsStream`]: a rustls connection over a monoio TCP stream, with owned-buffer I/O.
//!
//! Why an adaptor of our own rather than `monoio-rustls` or `tokio-rustls`: the request path
//! drops I/O futures (every read and write is under a timeout, an idle keep-alive read is
//! cancelled at shutdown) and needs a cancellable read (`CancelableAsyncReadRent`);
//! `monoio-rustls` 0.4 documents that its futures must not be dropped and has no cancellable
//! read, and `tokio-rustls` would need monoio's `poll-io` compatibility layer (readiness
//! polling, a copy into a tokio `ReadBuf`) under every read. This adaptor drives
//! `rustls::{ServerConnection, ClientConnection}` directly through `read_tls`/`write_tls`
//! over two owned buffers (ciphertext in, ciphertext out), so a read is one `recv` into a
//! buffer the runtime owns and a write is one `send` of the encrypted records.
//!
//! A dropped read or write leaves the TLS stream unusable (ciphertext bytes may be lost);
//! that is the contract of the request path's timeouts anyway: a timeout ends the exchange.
//!
//! Split: one read and one write may be in flight at once (a tunnel). Both touch the rustls
//! connection only between awaits, never across one; the read side writes what rustls queued
//! for the peer itself (a key update, session tickets) only while no write is in flight, and
//! otherwise leaves it to the next write.

use std::future::Future;
use std::io::{self, BufRead, Write};
use std::ops::{Deref, DerefMut};
use std::os::fd::AsRawFd;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent, Split,
};
use monoio::net::TcpStream;
use monoio::BufResult;
use rustls::{ConnectionCommon, SideData};

use crate::io::Transport;

/// Capacity of the ciphertext read buffer: one full TLS record (16 KiB of plaintext plus the
/// record overhead) fits in one read.
const TLS_READ_BUF: usize = 16 * 1024 + 512;

/// The smallest caller buffer ciphertext is read into directly (a smaller one reads through
/// `rbuf`, so that one read still brings a useful amount).
const DIRECT_READ_MIN: usize = 1024;

/// The largest ciphertext read buffer (`rbuf`) kept once its bytes are consumed: the
/// handshake's, and leftovers of a large read, are freed.
const RBUF_KEEP: usize = 8 * 1024;

/// The largest ciphertext write buffer a connection keeps between writes (one full record
/// and then some); a larger one, left by a big body, is freed.
const WBUF_KEEP: usize = 32 * 1024;

/// TlsStream is a TLS connection (server side `C = rustls::ServerConnection`, client side
/// `rustls::ClientConnection`) over a TCP stream. It implements `io::Transport`, so the request
/// path runs over it unchanged.
pub struct TlsStream<C> {
    /// The TCP stream the records travel on.
    io: TcpStream,
    /// The rustls state machine.
    conn: C,
    /// Ciphertext read from the socket; `rbuf[rpos..]` is not yet handed to rustls.
    rbuf: Vec<u8>,
    /// Start of the ciphertext in `rbuf` rustls has not taken yet.
    rpos: usize,
    /// Ciphertext rustls produced, being written.
    wbuf: Vec<u8>,
    /// A write (or a flush from the read side) is in flight: the other side must not write.
    writing: bool,
    /// The socket reached end of stream.
    eof: bool,
    /// The first byte the peer sent (a TLS handshake record starts with 0x16; anything else
    /// is a client speaking another protocol, cleartext HTTP most often).
    first_byte: Option<u8>,
    /// rustls held decrypted bytes nobody read yet after the last read.
    plaintext_left: bool,
}

// SAFETY: the read side uses `io` only to read and `rbuf`/`rpos`/`eof` only from reads; the
// write side uses `io` only to write and `wbuf` only from writes. `conn` and `writing` are
// touched by both, but only in synchronous sections between awaits, never across one, and a
// shard runs one task at a time, so those sections never interleave.
unsafe impl<C> Split for TlsStream<C> {}

impl<C, SD> TlsStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
    SD: SideData,
{
    /// Wraps `io` with the fresh rustls connection `conn` (the handshake has not run yet:
    /// see [`TlsStream::handshake`]).
    pub fn new(io: TcpStream, conn: C) -> Self {
        TlsStream {
            io,
            conn,
            rbuf: Vec::new(),
            rpos: 0,
            wbuf: Vec::new(),
            writing: false,
            eof: false,
            first_byte: None,
            plaintext_left: false,
        }
    }

    /// Whether nothing received is waiting: no ciphertext not yet handed to rustls, no
    /// decrypted bytes not yet read, no end of stream seen (for the pool's liveness check,
    /// with the socket's own).
    pub fn is_idle(&self) -> bool {
        self.rpos >= self.rbuf.len() && !self.plaintext_left && !self.eof
    }

    /// The first byte the peer sent, once anything arrived.
    pub fn first_byte(&self) -> Option<u8> {
        self.first_byte
    }

    /// The TCP stream, giving up the TLS state (to answer a client that does not speak TLS).
    pub fn into_tcp(self) -> TcpStream {
        self.io
    }

    /// The rustls connection (ALPN, SNI, resumption facts, the peer's certificates).
    pub fn conn(&self) -> &C {
        &self.conn
    }

    /// The TCP stream underneath.
    pub fn tcp(&self) -> &TcpStream {
        &self.io
    }

    /// Runs the handshake to its end and writes what it leaves to send (the last flight, a
    /// TLS 1.3 server's session tickets). On a failure the alert rustls prepared is still
    /// queued: [`TlsStream::send_alert`] sends it.
    pub async fn handshake(&mut self) -> io::Result<()> {
        while self.conn.is_handshaking() {
            if self.conn.wants_write() {
                self.flush_tls().await?;
                continue;
            }
            if self.read_tls(None).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        if self.conn.wants_write() {
            self.flush_tls().await?;
        }
        Ok(())
    }

    /// Sends what rustls still has queued (the alert of a failed handshake), best effort.
    pub async fn send_alert(&mut self) {
        let _ = self.flush_tls().await;
    }

    /// Reads ciphertext (from what is left in `rbuf`, else one socket read) and hands it to
    /// rustls. Returns the bytes handed over; 0 means the socket reached end of stream.
    /// A TLS error (a bad record, an alert from the peer) is `InvalidData` carrying the
    /// `rustls::Error`.
    async fn read_tls(&mut self, cancel: Option<&CancelHandle>) -> io::Result<usize> {
        if self.rpos >= self.rbuf.len() {
            if self.eof {
                return Ok(0);
            }
            let mut buf = std::mem::take(&mut self.rbuf);
            buf.clear();
            if buf.capacity() < TLS_READ_BUF {
                buf.reserve(TLS_READ_BUF);
            }
            self.rpos = 0;
            let (res, buf) = match cancel {
                Some(c) => self.io.cancelable_read(buf, c.clone()).await,
                None => self.io.read(buf).await,
            };
            self.rbuf = buf;
            if self.first_byte.is_none() {
                self.first_byte = self.rbuf.first().copied();
            }
            if res? == 0 {
                self.eof = true;
                // Tells rustls the transport ended (an unclean close unless it saw
                // close_notify).
                let _ = self.conn.read_tls(&mut io::empty());
                return Ok(0);
            }
        }
        let mut pending = &self.rbuf[self.rpos..];
        let before = pending.len();
        let taken = self.conn.read_tls(&mut pending);
        self.rpos += before - pending.len();
        let taken = taken?;
        if let Err(e) = self.conn.process_new_packets() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        // rustls takes nothing while its plaintext buffer is full; the caller reads that first.
        Ok(taken.max(1))
    }

    /// Writes every record rustls has queued.
    async fn flush_tls(&mut self) -> io::Result<()> {
        self.writing = true;
        let res = async {
            while self.conn.wants_write() {
                let mut buf = std::mem::take(&mut self.wbuf);
                buf.clear();
                while self.conn.wants_write() {
                    self.conn.write_tls(&mut buf)?;
                }
                let (res, mut buf) = self.io.write_all(buf).await;
                if buf.capacity() > WBUF_KEEP {
                    // A large body went out: do not keep its buffer on an idle connection.
                    buf = Vec::new();
                }
                self.wbuf = buf;
                res?;
            }
            Ok(())
        }
        .await;
        self.writing = false;
        res
    }

    /// Copies decrypted bytes into `buf`: `Some(n)` when there were any (or the peer closed
    /// the TLS session: `Some(0)`), `None` when rustls has none buffered.
    fn copy_plaintext<B: IoBufMut>(&mut self, buf: &mut B) -> Option<io::Result<usize>> {
        let room = buf.bytes_total();
        let mut reader = self.conn.reader();
        match reader.fill_buf() {
            Ok(data) => {
                let n = data.len().min(room);
                // SAFETY: `write_ptr` points at `bytes_total()` writable bytes the buffer owns;
                // `n` is at most that, and `data` is rustls's memory, not the buffer's.
                unsafe {
                    std::ptr::copy_nonoverlapping(data.as_ptr(), buf.write_ptr(), n);
                    buf.set_init(n);
                }
                reader.consume(n);
                self.plaintext_left = matches!(reader.fill_buf(), Ok(d) if !d.is_empty());
                Some(Ok(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            // The transport ended without close_notify: many peers close that way; it reads
            // as end of stream (HTTP framing tells a truncated message apart).
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Some(Ok(0)),
            Err(e) => Some(Err(e)),
        }
    }

    /// One plaintext read into `buf` (see [`AsyncReadRent::read`]).
    async fn read_plain<B: IoBufMut>(
        &mut self,
        mut buf: B,
        cancel: Option<CancelHandle>,
    ) -> BufResult<usize, B> {
        if buf.bytes_total() == 0 {
            return (Ok(0), buf);
        }
        loop {
            if let Some(res) = self.copy_plaintext(&mut buf) {
                return (res, buf);
            }
            if self.conn.wants_write() && !self.writing {
                if let Err(e) = self.flush_tls().await {
                    return (Err(e), buf);
                }
            }
            let res = if self.rpos < self.rbuf.len() || buf.bytes_total() < DIRECT_READ_MIN {
                self.read_tls(cancel.as_ref()).await
            } else {
                if self.rbuf.capacity() > RBUF_KEEP {
                    // Leftovers of a large read are consumed: do not keep their buffer.
                    self.rbuf = Vec::new();
                    self.rpos = 0;
                }
                let (res, b) = self.read_tls_into(buf, cancel.as_ref()).await;
                buf = b;
                res
            };
            match res {
                Ok(0) => {
                    return match self.copy_plaintext(&mut buf) {
                        Some(res) => (res, buf),
                        None => (Ok(0), buf),
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if !self.writing {
                        let _ = self.flush_tls().await;
                    }
                    return (Err(e), buf);
                }
            }
        }
    }

    /// Like [`TlsStream::read_tls`] from the socket, but the ciphertext lands in the caller's
    /// buffer (which the plaintext then overwrites): an idle connection holds no ciphertext
    /// buffer of its own. What rustls does not take at once is kept in `rbuf`. The buffer
    /// comes back with no bytes initialized.
    async fn read_tls_into<B: IoBufMut>(
        &mut self,
        buf: B,
        cancel: Option<&CancelHandle>,
    ) -> BufResult<usize, B> {
        if self.eof {
            return (Ok(0), buf);
        }
        let (res, mut buf) = match cancel {
            Some(c) => self.io.cancelable_read(buf, c.clone()).await,
            None => self.io.read(buf).await,
        };
        let n = match res {
            Ok(n) => n,
            Err(e) => {
                uninit(&mut buf);
                return (Err(e), buf);
            }
        };
        if n == 0 {
            self.eof = true;
            // Tells rustls the transport ended (an unclean close unless it saw close_notify).
            let _ = self.conn.read_tls(&mut io::empty());
            uninit(&mut buf);
            return (Ok(0), buf);
        }
        let ptr = buf.write_ptr();
        // SAFETY: the read initialized `n` bytes at `write_ptr()`, memory the buffer owns; the
        // buffer is not touched while `data` lives (only `self`'s other fields are).
        let data = unsafe { std::slice::from_raw_parts(ptr.cast_const(), n) };
        if self.first_byte.is_none() {
            self.first_byte = data.first().copied();
        }
        let mut pending = data;
        let taken = self.conn.read_tls(&mut pending);
        if !pending.is_empty() {
            self.rbuf.clear();
            self.rbuf.extend_from_slice(pending);
            self.rpos = 0;
        }
        uninit(&mut buf);
        if let Err(e) = taken {
            return (Err(e), buf);
        }
        if let Err(e) = self.conn.process_new_packets() {
            return (Err(io::Error::new(io::ErrorKind::InvalidData, e)), buf);
        }
        (Ok(n), buf)
    }

    /// Encrypts `data` (all of it, in as many records as it takes) and writes it.
    async fn write_plain(&mut self, data: &[&[u8]]) -> io::Result<usize> {
        let mut total = 0;
        for part in data {
            let mut part = *part;
            while !part.is_empty() {
                let n = self.conn.writer().write(part)?;
                if n == 0 {
                    // rustls's send buffer is full: write it out, then go on.
                    self.flush_tls().await?;
                    continue;
                }
                total += n;
                part = &part[n..];
            }
        }
        self.flush_tls().await?;
        Ok(total)
    }

    /// Waits until a plaintext read would not wait on the socket (see
    /// `Transport::wait_readable`): at once when rustls holds decrypted bytes, ciphertext we
    /// read is not yet handed to it, or the stream ended; else it first writes what rustls
    /// queued for the peer, gives up the buffers an idle connection does not need (the
    /// consumed ciphertext read buffer, the write buffer, and rustls's deframer buffer is
    /// shrunk to its 4 KiB floor), then waits for the socket's readability, lending no
    /// buffer to the kernel.
    async fn wait_readable_tls(&mut self) -> io::Result<()> {
        if self.has_pending_input() {
            return Ok(());
        }
        if self.conn.wants_write() && !self.writing {
            self.flush_tls().await?;
        }
        if !self.writing {
            self.wbuf = Vec::new();
        }
        self.rbuf = Vec::new();
        self.rpos = 0;
        self.shrink_deframer();
        Transport::wait_readable(&mut self.io).await
    }

    /// Whether a read would return without reading the socket: decrypted bytes wait in
    /// rustls, ciphertext in `rbuf`, or the stream ended.
    fn has_pending_input(&mut self) -> bool {
        if self.eof || self.rpos < self.rbuf.len() {
            return true;
        }
        // `WouldBlock`: no plaintext and the session goes on; anything else (bytes, a
        // close_notify, an error) is for a read to report.
        !matches!(self.conn.reader().fill_buf(), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Shrinks rustls's ciphertext (deframer) buffer, which keeps the size of the largest
    /// read since (up to a whole record, ~16.7 KiB) until its next read: a read from a source
    /// with nothing to give (`WouldBlock`, not end of stream) makes rustls resize it to the
    /// 4 KiB it reads at a time when it holds no partial record, and consumes nothing.
    fn shrink_deframer(&mut self) {
        struct Nothing;
        impl io::Read for Nothing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::ErrorKind::WouldBlock.into())
            }
        }
        let _ = self.conn.read_tls(&mut Nothing);
    }

    /// Sends close_notify and half-closes the TCP stream without waiting (best effort: the
    /// alert is a few dozen bytes the socket buffer takes at once).
    fn close_notify_now(&mut self) -> bool {
        self.conn.send_close_notify();
        let mut alert = Vec::new();
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut alert).is_err() {
                break;
            }
        }
        let fd = self.io.as_raw_fd();
        if !alert.is_empty() && !self.writing {
            // SAFETY: `fd` is the open socket `self.io` owns; send(2) reads `alert.len()`
            // bytes from `alert`, which lives until the call returns.
            unsafe {
                libc::send(
                    fd,
                    alert.as_ptr().cast(),
                    alert.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                );
            }
        }
        // SAFETY: as above; shutdown(2) changes no memory.
        unsafe { libc::shutdown(fd, libc::SHUT_WR) == 0 }
    }
}

/// Marks no byte of `buf` initialized (after ciphertext passed through it).
fn uninit<B: IoBufMut>(buf: &mut B) {
    // SAFETY: zero initialized bytes claims nothing about the buffer's memory.
    unsafe { buf.set_init(0) };
}

impl<C, SD> AsyncReadRent for TlsStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
    SD: SideData,
{
    fn read<B: IoBufMut>(&mut self, buf: B) -> impl Future<Output = BufResult<usize, B>> {
        self.read_plain(buf, None)
    }

    async fn readv<B: IoVecBufMut>(&mut self, mut buf: B) -> BufResult<usize, B> {
        // Reads into the first buffer of the vector (nothing on the request path reads
        // vectored; this keeps the trait whole).
        let first = {
            // SAFETY: the vector owns `write_iovec_len()` iovecs at `write_iovec_ptr()`.
            let iovs =
                unsafe { std::slice::from_raw_parts(buf.write_iovec_ptr(), buf.write_iovec_len()) };
            iovs.iter().find(|v| v.iov_len > 0).copied()
        };
        let Some(iov) = first else {
            return (Ok(0), buf);
        };
        let mut tmp = vec![0u8; iov.iov_len];
        let (res, got) = self.read_plain(std::mem::take(&mut tmp), None).await;
        tmp = got;
        if let Ok(n) = res {
            // SAFETY: `iov` is one of the vector's own writable buffers, at least `n`
            // bytes long (`tmp` was that long); the bytes copied are initialized.
            unsafe {
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), iov.iov_base.cast(), n);
                buf.set_init(n);
            }
        }
        (res, buf)
    }
}

impl<C, SD> CancelableAsyncReadRent for TlsStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
    SD: SideData,
{
    fn cancelable_read<B: IoBufMut>(
        &mut self,
        buf: B,
        c: CancelHandle,
    ) -> impl Future<Output = BufResult<usize, B>> {
        self.read_plain(buf, Some(c))
    }

    fn cancelable_readv<B: IoVecBufMut>(
        &mut self,
        buf: B,
        _c: CancelHandle,
    ) -> impl Future<Output = BufResult<usize, B>> {
        self.readv(buf)
    }
}

impl<C, SD> AsyncWriteRent for TlsStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
    SD: SideData,
{
    async fn write<B: IoBuf>(&mut self, buf: B) -> BufResult<usize, B> {
        // SAFETY: `read_ptr` points at `bytes_init()` initialized bytes the buffer owns,
        // and the buffer outlives this borrow (it is returned below).
        let data = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let res = self.write_plain(&[data]).await;
        (res, buf)
    }

    async fn writev<B: IoVecBuf>(&mut self, buf: B) -> BufResult<usize, B> {
        // SAFETY: the vector owns `read_iovec_len()` iovecs at `read_iovec_ptr()`, each
        // pointing at initialized bytes it owns until it is returned below.
        let parts: Vec<&[u8]> = unsafe {
            std::slice::from_raw_parts(buf.read_iovec_ptr(), buf.read_iovec_len())
                .iter()
                .map(|v| std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len))
                .collect()
        };
        let res = self.write_plain(&parts).await;
        drop(parts);
        (res, buf)
    }

    fn flush(&mut self) -> impl Future<Output = io::Result<()>> {
        self.flush_tls()
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        let _ = self.flush_tls().await;
        self.io.shutdown().await
    }
}

impl Transport for TlsStream<rustls::ServerConnection> {
    fn shutdown_write(&mut self) -> bool {
        self.close_notify_now()
    }

    fn wait_readable(&mut self) -> impl Future<Output = io::Result<()>> {
        self.wait_readable_tls()
    }

    fn is_tls(&self) -> bool {
        true
    }

    fn sni(&self) -> Option<&str> {
        self.conn.server_name()
    }
}

impl Transport for TlsStream<rustls::ClientConnection> {
    fn shutdown_write(&mut self) -> bool {
        self.close_notify_now()
    }

    fn wait_readable(&mut self) -> impl Future<Output = io::Result<()>> {
        self.wait_readable_tls()
    }

    fn is_tls(&self) -> bool {
        true
    }
}

//! [`RentPoll`]: any [`Transport`] (owned-buffer, completion-based I/O) as the poll-based byte
//! stream the `h2` crate runs on. The fallback for transports that are not poll-based
//! themselves (a TLS stream over io_uring), and for plain TCP the way to keep every read and
//! write on io_uring.
//!
//! One read and one write may be in flight at once (the transport is `Split`). A read fills
//! the adapter's own buffer, which later `poll_read`s drain; a write copies the bytes into the
//! adapter's buffer and reports them written at once, the next write (or a flush) waiting for
//! it to finish.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{ready, Context, Poll};

use monoio::io::AsyncWriteRentExt;
use monoio::BufResult;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::io::Transport;

/// Bytes one read asks for.
const READ_BUF: usize = 16 * 1024;

/// An I/O operation in flight, owning its buffer.
type Op = Pin<Box<dyn Future<Output = BufResult<usize, Vec<u8>>>>>;

/// RentPoll is a [`Transport`] as a tokio `AsyncRead + AsyncWrite` (see the module doc).
pub(crate) struct RentPoll<T: Transport + 'static> {
    /// The transport, on the heap (the operations in flight point into it); freed in `Drop`
    /// after them.
    io: NonNull<T>,
    /// The read in flight.
    read: Option<Op>,
    /// Bytes read and not handed out yet (`rpos..`), or the idle read buffer.
    rbuf: Vec<u8>,
    /// How much of `rbuf` was handed out.
    rpos: usize,
    /// The write in flight.
    write: Option<Op>,
    /// The idle write buffer.
    wbuf: Vec<u8>,
}

impl<T: Transport + 'static> RentPoll<T> {
    /// Wraps `io`.
    pub fn new(io: T) -> Self {
        RentPoll {
            io: NonNull::from(Box::leak(Box::new(io))),
            read: None,
            rbuf: Vec::new(),
            rpos: 0,
            write: None,
            wbuf: Vec::new(),
        }
    }

    /// The transport, for an operation that outlives this call.
    ///
    /// SAFETY (for the callers): the reference is used only by an operation stored in `self`
    /// (a read in `read`, a write in `write`: at most one of each, which `T: Split` allows at
    /// once), and every such operation is dropped before the transport (see `Drop`).
    unsafe fn io(&self) -> &'static mut T {
        // SAFETY: `io` comes from `Box::leak` and is freed only in `Drop`; see above for the
        // aliasing.
        unsafe { &mut *self.io.as_ptr() }
    }

    /// Waits for the write in flight, if any.
    fn poll_write_done(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(op) = self.write.as_mut() {
            let (res, buf) = ready!(op.as_mut().poll(cx));
            self.write = None;
            self.wbuf = buf;
            res?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: Transport + 'static> Drop for RentPoll<T> {
    fn drop(&mut self) {
        // The operations borrow the transport: they go first.
        self.read = None;
        self.write = None;
        // SAFETY: `io` came from `Box::leak` in `new` and nothing refers to it any more.
        drop(unsafe { Box::from_raw(self.io.as_ptr()) });
    }
}

impl<T: Transport + 'static> Unpin for RentPoll<T> {}

impl<T: Transport + 'static> AsyncRead for RentPoll<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.rpos >= this.rbuf.len() {
            if this.read.is_none() {
                let mut owned = std::mem::take(&mut this.rbuf);
                owned.clear();
                owned.reserve(READ_BUF);
                // SAFETY: the operation is stored in `this.read` (see `io`).
                let io = unsafe { this.io() };
                this.read = Some(Box::pin(io.read(owned)));
            }
            let Some(op) = this.read.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            let (res, owned) = ready!(op.as_mut().poll(cx));
            this.read = None;
            this.rbuf = owned;
            this.rpos = 0;
            res?;
        }
        let rest = &this.rbuf[this.rpos..];
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        this.rpos += n;
        Poll::Ready(Ok(()))
    }
}

impl<T: Transport + 'static> AsyncWrite for RentPoll<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_write_done(cx))?;
        let mut owned = std::mem::take(&mut this.wbuf);
        owned.clear();
        owned.extend_from_slice(data);
        // SAFETY: the operation is stored in `this.write` (see `io`).
        let io = unsafe { this.io() };
        this.write = Some(Box::pin(io.write_all(owned)));
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_write_done(cx))?;
        let mut owned = std::mem::take(&mut this.wbuf);
        owned.clear();
        for b in bufs {
            owned.extend_from_slice(b);
        }
        let n = owned.len();
        // SAFETY: the operation is stored in `this.write` (see `io`).
        let io = unsafe { this.io() };
        this.write = Some(Box::pin(io.write_all(owned)));
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_write_done(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_done(cx))?;
        // SAFETY: no write is in flight; the transport is not borrowed past this call.
        let io = unsafe { this.io() };
        io.shutdown_write();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn reads_and_writes_through_owned_buffer_io() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let tcp = monoio::net::TcpStream::connect(addr).await.unwrap();
            let (mut peer, _) = listener.accept().unwrap();
            let mut s = RentPoll::new(tcp);
            s.write_all(b"hello, ").await.unwrap();
            s.write_all(b"world").await.unwrap();
            s.flush().await.unwrap();
            let mut got = [0u8; 12];
            peer.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"hello, world");
            let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
            peer.write_all(&big).unwrap();
            let mut back = vec![0u8; big.len()];
            s.read_exact(&mut back).await.unwrap();
            assert_eq!(back, big);
            s.shutdown().await.unwrap();
            let mut rest = Vec::new();
            peer.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty(), "the write side was shut");
            drop(peer);
            let mut end = [0u8; 1];
            assert_eq!(s.read(&mut end).await.unwrap(), 0, "end of stream");
        });
    }
}

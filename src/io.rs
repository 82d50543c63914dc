//! Owned-buffer I/O, the monoio way: move the buffer in, get it back, rebind. The one read
//! helper ([`read_append`]) serves the request path ([`read_more`], with a timeout), the
//! health probes, the admin endpoint and the demo backends.
//!
//! Every helper is generic over the stream, and the request path over [`Transport`]: plain
//! TCP is one implementation, monomorphised (no boxing, no dynamic dispatch per read); a TLS
//! stream is another that slots in without changing the request path.
//!
//! When a timeout fires the in-flight operation is cancelled and its buffer is dropped with it;
//! the caller's `Vec` is then left empty (a timeout always ends the exchange anyway).

use std::io;
use std::ops::Range;
use std::time::Duration;

use std::future::Future;
use std::marker::PhantomData;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent,
    Canceller, Split,
};
use monoio::net::TcpStream;
use monoio::BufResult;

/// Transport is a byte stream the request path speaks HTTP/1.1 over, on either side: owned-
/// buffer reads (cancellable, so shutdown can end an idle keep-alive wait) and writes, and a
/// half-close. [`TcpStream`] is the plain case; a TLS stream implements it too.
///
/// A transport is [`Split`] (monoio's contract): one read and one write may be in flight at
/// once, which a tunnel (an upgraded connection) needs to copy both ways ([`split`]).
pub trait Transport: AsyncReadRent + AsyncWriteRent + CancelableAsyncReadRent + Split {
    /// Closes the write side only (the peer reads end of stream after what was written) while
    /// reads go on, for a lingering close. Returns false when the stream is already broken.
    fn shutdown_write(&mut self) -> bool;

    /// Waits until a read would not wait: bytes arrived, the peer closed, or the socket has an
    /// error. No buffer is lent to the kernel meanwhile, so a parked connection (see
    /// [`read_warm`]) holds no memory for its next request. On io_uring this is one
    /// `IORING_OP_POLL_ADD`; dropping the future cancels it and consumes nothing.
    ///
    /// The default says "readable" at once: the woken connection then waits in an ordinary
    /// read, with its buffer lent (correct, just not buffer-free), for transports that have no
    /// readiness of their own.
    fn wait_readable(&mut self) -> impl Future<Output = io::Result<()>> {
        std::future::ready(Ok(()))
    }

    /// The socket bytes may be spliced to or from ([`splice_some`]) with no layer between:
    /// plain TCP only. Default none.
    fn splice_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    /// Waits until a write would not wait (room in the send buffer, or an error), for
    /// writes outside the ring ([`splice_some`]). Only meaningful where
    /// [`Transport::splice_fd`] is; the default says "writable" at once.
    fn wait_writable(&mut self) -> impl Future<Output = io::Result<()>> {
        std::future::ready(Ok(()))
    }

    /// Whether the bytes travel inside TLS (`X-Forwarded-Proto: https` for a client). Default
    /// false.
    fn is_tls(&self) -> bool {
        false
    }

    /// The server name a TLS client asked for (SNI), for routes with `sni`. Default none.
    fn sni(&self) -> Option<&str> {
        None
    }

    /// Whether a connection that opens with the HTTP/2 preface may be served as h2c (prior
    /// knowledge). False for [`Http1Only`] (a listener with `h2 = false`). Default true (and
    /// `[server] h2.h2c` decides).
    fn allows_h2c(&self) -> bool {
        true
    }

    /// Whether the request on this transport means nothing without its upgrade (an HTTP/2
    /// extended CONNECT): a protocol the upstream does not tunnel is then refused instead of
    /// sent on as a plain request. Default false.
    fn upgrade_only(&self) -> bool {
        false
    }

    /// This transport as a poll-based byte stream ([`PollStream`]), for the HTTP/2 codec,
    /// which is written against tokio's I/O traits, when it can be one natively; `Err(self)`
    /// (the default) when not: the HTTP/2 code then wraps it in an adapter over its
    /// owned-buffer reads and writes.
    fn into_poll_stream(self) -> Result<Box<dyn PollStream>, Self>
    where
        Self: Sized,
    {
        Err(self)
    }

    /// Hands this transport, when it is plain TCP, to `rest`, which keeps a parked connection
    /// with no task at all (the shard's dormant set) or gives the stream back. `Err(self)`:
    /// not taken (the default: only plain TCP can rest that way); the connection then parks
    /// in its own task.
    fn rest_tcp(self, rest: impl FnOnce(TcpStream) -> Result<(), TcpStream>) -> Result<(), Self>
    where
        Self: Sized,
    {
        let _ = rest;
        Err(self)
    }
}

/// PollStream is a byte stream with poll-based (tokio) reads and writes: what the HTTP/2
/// codec (the `h2` crate) runs a connection over. A [`Transport`] becomes one with
/// [`Transport::into_poll_stream`] (plain TCP through monoio's `poll-io`: readiness-driven
/// `recv`/`send` on the same runtime); a TLS stream that is one already is boxed as it is.
pub trait PollStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> PollStream for T {}

impl Transport for TcpStream {
    fn shutdown_write(&mut self) -> bool {
        use std::os::fd::AsRawFd;
        // SAFETY: the fd is the open socket owned by `self`; shutdown(2) changes no memory.
        unsafe { libc::shutdown(self.as_raw_fd(), libc::SHUT_WR) == 0 }
    }

    fn wait_readable(&mut self) -> impl Future<Output = io::Result<()>> {
        // Not relaxed: on the epoll driver a stale readiness is re-checked with poll(2).
        TcpStream::readable(self, false)
    }

    fn splice_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        Some(self.as_raw_fd())
    }

    fn wait_writable(&mut self) -> impl Future<Output = io::Result<()>> {
        TcpStream::writable(self, false)
    }

    fn rest_tcp(self, rest: impl FnOnce(TcpStream) -> Result<(), TcpStream>) -> Result<(), Self> {
        rest(self)
    }

    fn into_poll_stream(self) -> Result<Box<dyn PollStream>, Self> {
        match self.try_into_poll_io() {
            Ok(poll) => Ok(Box::new(poll)),
            Err((e, tcp)) => {
                tracing::debug!("cannot switch the connection to poll-based I/O: {e}");
                Err(tcp)
            }
        }
    }
}

/// Implements the owned-buffer I/O traits (`AsyncReadRent`, `CancelableAsyncReadRent`,
/// `AsyncWriteRent`) for an enum of transports by forwarding every call to its variant: one
/// match per call, no box. `delegate_io!(Connection { Plain, Tls })` for
/// `enum Connection { Plain(A), Tls(B) }`.
macro_rules! delegate_io {
    ($ty:ident { $($v:ident),+ }) => {
        impl ::monoio::io::AsyncReadRent for $ty {
            async fn read<B: ::monoio::buf::IoBufMut>(&mut self, buf: B) -> ::monoio::BufResult<usize, B> {
                match self { $($ty::$v(s) => s.read(buf).await,)+ }
            }

            async fn readv<B: ::monoio::buf::IoVecBufMut>(&mut self, buf: B) -> ::monoio::BufResult<usize, B> {
                match self { $($ty::$v(s) => s.readv(buf).await,)+ }
            }
        }

        impl ::monoio::io::CancelableAsyncReadRent for $ty {
            async fn cancelable_read<B: ::monoio::buf::IoBufMut>(
                &mut self,
                buf: B,
                c: ::monoio::io::CancelHandle,
            ) -> ::monoio::BufResult<usize, B> {
                match self { $($ty::$v(s) => s.cancelable_read(buf, c).await,)+ }
            }

            async fn cancelable_readv<B: ::monoio::buf::IoVecBufMut>(
                &mut self,
                buf: B,
                c: ::monoio::io::CancelHandle,
            ) -> ::monoio::BufResult<usize, B> {
                match self { $($ty::$v(s) => s.cancelable_readv(buf, c).await,)+ }
            }
        }

        impl ::monoio::io::AsyncWriteRent for $ty {
            async fn write<B: ::monoio::buf::IoBuf>(&mut self, buf: B) -> ::monoio::BufResult<usize, B> {
                match self { $($ty::$v(s) => s.write(buf).await,)+ }
            }

            async fn writev<B: ::monoio::buf::IoVecBuf>(&mut self, buf: B) -> ::monoio::BufResult<usize, B> {
                match self { $($ty::$v(s) => s.writev(buf).await,)+ }
            }

            async fn flush(&mut self) -> ::std::io::Result<()> {
                match self { $($ty::$v(s) => s.flush().await,)+ }
            }

            async fn shutdown(&mut self) -> ::std::io::Result<()> {
                match self { $($ty::$v(s) => s.shutdown().await,)+ }
            }
        }
    };
}
pub(crate) use delegate_io;

/// Http1Only is a transport of a listener with `h2 = false`: HTTP/1.1 only (no h2c preface
/// detection); everything else is the inner transport's.
pub struct Http1Only<T>(pub T);

impl<T: Transport> AsyncReadRent for Http1Only<T> {
    fn read<B: IoBufMut>(&mut self, buf: B) -> impl Future<Output = BufResult<usize, B>> {
        self.0.read(buf)
    }

    fn readv<B: IoVecBufMut>(&mut self, buf: B) -> impl Future<Output = BufResult<usize, B>> {
        self.0.readv(buf)
    }
}

impl<T: Transport> CancelableAsyncReadRent for Http1Only<T> {
    fn cancelable_read<B: IoBufMut>(
        &mut self,
        buf: B,
        c: CancelHandle,
    ) -> impl Future<Output = BufResult<usize, B>> {
        self.0.cancelable_read(buf, c)
    }

    fn cancelable_readv<B: IoVecBufMut>(
        &mut self,
        buf: B,
        c: CancelHandle,
    ) -> impl Future<Output = BufResult<usize, B>> {
        self.0.cancelable_readv(buf, c)
    }
}

impl<T: Transport> AsyncWriteRent for Http1Only<T> {
    fn write<B: IoBuf>(&mut self, buf: B) -> impl Future<Output = BufResult<usize, B>> {
        self.0.write(buf)
    }

    fn writev<B: IoVecBuf>(&mut self, buf: B) -> impl Future<Output = BufResult<usize, B>> {
        self.0.writev(buf)
    }

    fn flush(&mut self) -> impl Future<Output = io::Result<()>> {
        self.0.flush()
    }

    fn shutdown(&mut self) -> impl Future<Output = io::Result<()>> {
        self.0.shutdown()
    }
}

// SAFETY: a read and a write on the wrapper are a read and a write on the inner transport,
// which is `Split`.
unsafe impl<T: Transport> Split for Http1Only<T> {}

impl<T: Transport> Transport for Http1Only<T> {
    fn shutdown_write(&mut self) -> bool {
        self.0.shutdown_write()
    }

    fn wait_readable(&mut self) -> impl Future<Output = io::Result<()>> {
        self.0.wait_readable()
    }

    fn is_tls(&self) -> bool {
        self.0.is_tls()
    }

    fn sni(&self) -> Option<&str> {
        self.0.sni()
    }

    fn allows_h2c(&self) -> bool {
        false
    }

    fn upgrade_only(&self) -> bool {
        self.0.upgrade_only()
    }

    fn splice_fd(&self) -> Option<std::os::fd::RawFd> {
        self.0.splice_fd()
    }

    fn wait_writable(&mut self) -> impl Future<Output = io::Result<()>> {
        self.0.wait_writable()
    }
}

/// ReadHalf is the read side of a transport borrowed by [`split`].
pub struct ReadHalf<'a, T> {
    /// The transport; the [`WriteHalf`] of the same split only writes through it.
    io: *mut T,
    /// Borrows the transport for `'a`.
    _borrow: PhantomData<&'a mut T>,
}

/// WriteHalf is the write side of a transport borrowed by [`split`].
pub struct WriteHalf<'a, T> {
    /// The transport; the [`ReadHalf`] of the same split only reads through it.
    io: *mut T,
    /// Borrows the transport for `'a`.
    _borrow: PhantomData<&'a mut T>,
}

/// Splits a borrowed transport into a read side and a write side that can be used at the
/// same time (a tunnel reads from each side while it writes to it what the other sent). Like
/// monoio's `into_split`, without moving the stream: the halves borrow it.
pub fn split<T: Transport>(io: &mut T) -> (ReadHalf<'_, T>, WriteHalf<'_, T>) {
    let io: *mut T = io;
    (
        ReadHalf {
            io,
            _borrow: PhantomData,
        },
        WriteHalf {
            io,
            _borrow: PhantomData,
        },
    )
}

impl<T: Transport> ReadHalf<'_, T> {
    /// The transport, for a read.
    #[inline]
    fn io(&mut self) -> &mut T {
        // SAFETY: `split` borrowed the transport mutably for the halves' lifetime, so nothing
        // else touches it; of the two halves this one only reads and the other only writes,
        // which `T: Split` promises may run concurrently (monoio's `OwnedReadHalf` does the
        // same through its `UnsafeCell`).
        unsafe { &mut *self.io }
    }
}

impl<T: Transport> ReadHalf<'_, T> {
    /// Waits until a read would not wait (see [`Transport::wait_readable`]): a tunnel
    /// direction that went quiet waits here holding no buffer.
    pub fn wait_readable(&mut self) -> impl Future<Output = io::Result<()>> + '_ {
        self.io().wait_readable()
    }
}

impl<T: Transport> WriteHalf<'_, T> {
    /// The transport, for a write.
    #[inline]
    fn io(&mut self) -> &mut T {
        // SAFETY: as in `ReadHalf::io`: this half only writes (and shuts the write side).
        unsafe { &mut *self.io }
    }

    /// Closes the write side of the transport (see [`Transport::shutdown_write`]).
    pub fn shutdown_write(&mut self) -> bool {
        self.io().shutdown_write()
    }
}

impl<T: Transport> AsyncReadRent for ReadHalf<'_, T> {
    #[inline]
    fn read<B: IoBufMut>(&mut self, buf: B) -> impl Future<Output = BufResult<usize, B>> {
        self.io().read(buf)
    }

    #[inline]
    fn readv<B: IoVecBufMut>(&mut self, buf: B) -> impl Future<Output = BufResult<usize, B>> {
        self.io().readv(buf)
    }
}

impl<T: Transport> CancelableAsyncReadRent for ReadHalf<'_, T> {
    #[inline]
    fn cancelable_read<B: IoBufMut>(
        &mut self,
        buf: B,
        c: CancelHandle,
    ) -> impl Future<Output = BufResult<usize, B>> {
        self.io().cancelable_read(buf, c)
    }

    #[inline]
    fn cancelable_readv<B: IoVecBufMut>(
        &mut self,
        buf: B,
        c: CancelHandle,
    ) -> impl Future<Output = BufResult<usize, B>> {
        self.io().cancelable_readv(buf, c)
    }
}

impl<T: Transport> AsyncWriteRent for WriteHalf<'_, T> {
    #[inline]
    fn write<B: IoBuf>(&mut self, buf: B) -> impl Future<Output = BufResult<usize, B>> {
        self.io().write(buf)
    }

    #[inline]
    fn writev<B: IoVecBuf>(&mut self, buf: B) -> impl Future<Output = BufResult<usize, B>> {
        self.io().writev(buf)
    }

    #[inline]
    fn flush(&mut self) -> impl Future<Output = io::Result<()>> {
        self.io().flush()
    }

    #[inline]
    fn shutdown(&mut self) -> impl Future<Output = io::Result<()>> {
        self.io().shutdown()
    }
}

/// IoFail is how an I/O step failed.
#[derive(Debug)]
pub enum IoFail {
    /// The timeout passed first.
    Timeout,
    /// The socket reported an error.
    Io(io::Error),
}

/// Reads once, appending to `buf`: first grows it by `grow` when less than 1 KiB is free, and
/// never fills it past `max` bytes in all (`Ok(0)` then, as at end of stream). `cancel`, when
/// given, cancels the read. If the future is dropped mid-read, `buf` is left empty.
pub async fn read_append<S: AsyncReadRent + CancelableAsyncReadRent>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    grow: usize,
    max: usize,
    cancel: Option<CancelHandle>,
) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(grow);
    }
    let owned = std::mem::take(buf);
    let len = owned.len();
    let cap = owned.capacity().min(max).max(len);
    let slice = owned.slice_mut(len..cap);
    let (res, slice) = match cancel {
        Some(c) => stream.cancelable_read(slice, c).await,
        None => stream.read(slice).await,
    };
    *buf = slice.into_inner();
    res
}

/// Warm is what [`read_warm`] ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warm {
    /// The read completed with this many bytes (0: end of stream).
    Read(usize),
    /// Nothing arrived within the warm time; the read was cancelled and consumed nothing.
    Cold,
}

/// Reads once, appending to `buf` as [`read_append`] does, if anything arrives before `cold`
/// completes (a park timer, shutdown); otherwise cancels the read (through `canceller`, which is replaced by a fresh one) and
/// returns [`Warm::Cold`] with `buf` as it was. No byte is lost to the cancel: a read that
/// completes while it is being cancelled returns its bytes as `Read`.
///
/// This is how a connection that waits gives its buffers back: busy connections keep one read
/// in flight per wait (one ring operation, as a plain read), and one that stayed quiet until
/// `cold` parks — the caller returns its buffers and waits with [`Transport::wait_readable`].
pub async fn read_warm<S: AsyncReadRent + CancelableAsyncReadRent>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    grow: usize,
    cold: impl Future<Output = ()>,
    canceller: &mut Canceller,
) -> io::Result<Warm> {
    let handle = canceller.handle();
    {
        let read = read_append(stream, buf, grow.max(4096), usize::MAX, Some(handle));
        let mut read = std::pin::pin!(read);
        monoio::select! {
            res = &mut read => return res.map(Warm::Read),
            _ = cold => {}
        }
        *canceller = std::mem::take(canceller).cancel();
        match read.await {
            Ok(n) => Ok(Warm::Read(n)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ECANCELED | libc::EINTR)) => {
                Ok(Warm::Cold)
            }
            Err(e) => Err(e),
        }
    }
}

/// Reads once within `timeout`, appending to `buf` (growing it by `grow`, at least 4 KiB, when
/// it has little room left). `Ok(0)` is end of stream.
pub async fn read_more<S: AsyncReadRent + CancelableAsyncReadRent>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    timeout: Duration,
    cancel: Option<CancelHandle>,
    grow: usize,
) -> Result<usize, IoFail> {
    let read = read_append(stream, buf, grow.max(4096), usize::MAX, cancel);
    match monoio::time::timeout(timeout, read).await {
        Ok(res) => res.map_err(IoFail::Io),
        Err(_) => Err(IoFail::Timeout),
    }
}

/// Writes all of `buf` within `timeout` (on a timeout `buf` is left empty: the caller
/// rebuilds what it needs to send again).
pub async fn write_all<S: AsyncWriteRent>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), IoFail> {
    let owned = std::mem::take(buf);
    match monoio::time::timeout(timeout, AsyncWriteRentExt::write_all(stream, owned)).await {
        Ok((res, owned)) => {
            *buf = owned;
            res.map(|_| ()).map_err(IoFail::Io)
        }
        Err(_) => Err(IoFail::Timeout),
    }
}

/// Like [`write_all`], but a failure also says how many bytes the kernel took before it
/// (`Timeout` counts what was written until then): a request none of whose bytes left is safe
/// to send again, whatever its method.
pub async fn write_all_counted<S: AsyncWriteRent>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), (IoFail, usize)> {
    let written = std::cell::Cell::new(0usize);
    let owned = std::mem::take(buf);
    let total = owned.len();
    let write = async {
        let mut owned = owned;
        while written.get() < total {
            let (res, slice) = stream.write(owned.slice(written.get()..total)).await;
            owned = slice.into_inner();
            match res {
                Ok(0) => {
                    let err = io::Error::from(io::ErrorKind::WriteZero);
                    return (owned, Err(err));
                }
                Ok(n) => written.set(written.get() + n),
                Err(e) => return (owned, Err(e)),
            }
        }
        (owned, Ok(()))
    };
    match monoio::time::timeout(timeout, write).await {
        Ok((owned, res)) => {
            *buf = owned;
            res.map_err(|e| (IoFail::Io(e), written.get()))
        }
        Err(_) => Err((IoFail::Timeout, written.get())),
    }
}

/// Writes `buf[range]` within `timeout`.
pub async fn write_range<S: AsyncWriteRent>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    range: Range<usize>,
    timeout: Duration,
) -> Result<(), IoFail> {
    if range.is_empty() {
        return Ok(());
    }
    let owned = std::mem::take(buf).slice(range);
    match monoio::time::timeout(timeout, AsyncWriteRentExt::write_all(stream, owned)).await {
        Ok((res, owned)) => {
            *buf = owned.into_inner();
            res.map(|_| ()).map_err(IoFail::Io)
        }
        Err(_) => Err(IoFail::Timeout),
    }
}

/// Pipe is a kernel pipe that bytes move through from one socket to another without being
/// copied to user space ([`splice_some`] in, then out). Both ends are non-blocking; dropping it
/// closes them (and frees whatever was still in it).
pub struct Pipe {
    read: std::os::fd::OwnedFd,
    write: std::os::fd::OwnedFd,
    /// Bytes it holds at most (`F_SETPIPE_SZ`, when the kernel granted it, else its default).
    capacity: usize,
}

impl Pipe {
    /// A pipe of (up to) `capacity` bytes: the kernel may grant less (`pipe-max-size`, or a
    /// user past `pipe-user-pages-soft`), which only means more, smaller splices.
    pub fn new(capacity: usize) -> io::Result<Pipe> {
        use std::os::fd::{FromRawFd, OwnedFd};
        let mut fds = [0; 2];
        // SAFETY: `fds` is an array of two ints, as pipe2(2) writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 returned two new descriptors that nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut pipe = Pipe {
            read,
            write,
            capacity: 64 * 1024,
        };
        use std::os::fd::AsRawFd;
        // SAFETY: fcntl on a descriptor this value owns; no memory is passed.
        let got = unsafe {
            libc::fcntl(
                pipe.write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                capacity as libc::c_int,
            )
        };
        if got > 0 {
            pipe.capacity = got as usize;
        } else {
            // SAFETY: as above.
            let now = unsafe { libc::fcntl(pipe.write.as_raw_fd(), libc::F_GETPIPE_SZ) };
            if now > 0 {
                pipe.capacity = now as usize;
            }
        }
        Ok(pipe)
    }

    /// Bytes it holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Its read end (what [`splice_some`] takes bytes out from).
    pub fn read_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.read.as_raw_fd()
    }

    /// Its write end (what [`splice_some`] puts bytes in through).
    pub fn write_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.write.as_raw_fd()
    }
}

/// One non-blocking splice(2) of up to `len` bytes from `from` to `to` (one of them a pipe):
/// how many moved (`Ok(0)`: `from` is at end of stream), or `WouldBlock` when `from` has
/// nothing or `to` has no room. `more`: more bytes follow at once (`SPLICE_F_MORE`, the
/// `MSG_MORE` of a socket written to). Not on the ring: io_uring runs every splice in a
/// worker thread, blocking; this is one system call after the ring said the socket is ready.
pub fn splice_some(
    from: std::os::fd::RawFd,
    to: std::os::fd::RawFd,
    len: usize,
    more: bool,
) -> io::Result<usize> {
    let mut flags = libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE;
    if more {
        flags |= libc::SPLICE_F_MORE;
    }
    // SAFETY: splice(2) between two descriptors the caller holds open; null offsets (both
    // are a socket or a pipe); no memory is passed.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            flags,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Up to this many body bytes are copied behind the head and written with it in one buffer;
/// more go out as a second iovec of the same vectored write (copying them costs more than
/// the iovec).
pub const VECTORED_MIN: usize = 2048;

/// Writes all of `head`, then `body[range]`, within `timeout`, without copying a large
/// `range` behind `head`: one vectored write on transports that have one (each partial write
/// continues where it stopped), a copy and a plain write on those that do not (an HTTP/2
/// stream), or when `range` is under [`VECTORED_MIN`] bytes. Both buffers come back whole
/// (on a timeout both are left empty, as with [`write_all`]); `head` may hold the copied
/// body afterwards.
pub async fn write_head_and_range<S: AsyncWriteRent>(
    stream: &mut S,
    head: &mut Vec<u8>,
    body: &mut Vec<u8>,
    range: Range<usize>,
    timeout: Duration,
) -> Result<(), IoFail> {
    if head.is_empty() {
        return write_range(stream, body, range, timeout).await;
    }
    if range.len() < VECTORED_MIN {
        head.extend_from_slice(&body[range]);
        return write_all(stream, head, timeout).await;
    }
    let mut parts = HeadAndRange::new(std::mem::take(head), std::mem::take(body), range);
    let write = async {
        loop {
            let (res, back) = stream.writev(parts).await;
            parts = back;
            match res {
                Ok(0) => return (parts, Err(io::Error::from(io::ErrorKind::WriteZero))),
                Ok(n) => {
                    if parts.advance(n) {
                        return (parts, Ok(()));
                    }
                }
                Err(e) => return (parts, Err(e)),
            }
        }
    };
    let (parts, res) = match monoio::time::timeout(timeout, write).await {
        Ok(done) => done,
        Err(_) => return Err(IoFail::Timeout),
    };
    let unsupported =
        parts.written == 0 && matches!(&res, Err(e) if e.kind() == io::ErrorKind::Unsupported);
    let range = parts.range.clone();
    (*head, *body) = (parts.head, parts.body);
    if unsupported {
        head.extend_from_slice(&body[range]);
        return write_all(stream, head, timeout).await;
    }
    res.map_err(IoFail::Io)
}

/// The two parts of a [`write_head_and_range`] as one owned iovec array: what is left of
/// `head`, then of `body[range]`, after `written` bytes.
struct HeadAndRange {
    head: Vec<u8>,
    body: Vec<u8>,
    range: Range<usize>,
    written: usize,
    /// Boxed: the kernel reads it at submission, after this value has moved into the op.
    iov: Box<[libc::iovec; 2]>,
    count: usize,
}

impl HeadAndRange {
    fn new(head: Vec<u8>, body: Vec<u8>, range: Range<usize>) -> Self {
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let mut parts = HeadAndRange {
            head,
            body,
            range,
            written: 0,
            iov: Box::new([empty, empty]),
            count: 0,
        };
        parts.advance(0);
        parts
    }

    /// Counts `n` more bytes written and points the iovecs at the rest; true when none is
    /// left.
    fn advance(&mut self, n: usize) -> bool {
        self.written += n;
        let head_left = &self.head[self.written.min(self.head.len())..];
        let body = &self.body[self.range.clone()];
        let body_left = &body[self.written.saturating_sub(self.head.len()).min(body.len())..];
        self.count = 0;
        for part in [head_left, body_left] {
            if !part.is_empty() {
                self.iov[self.count] = libc::iovec {
                    iov_base: part.as_ptr() as *mut libc::c_void,
                    iov_len: part.len(),
                };
                self.count += 1;
            }
        }
        self.count == 0
    }
}

// SAFETY: `iov` is boxed (it does not move with the value) and its first `count` entries
// point into `head` and `body`, which the value owns and does not touch while it is lent.
unsafe impl IoVecBuf for HeadAndRange {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov.as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    #[test]
    fn counted_write_says_nothing_left_on_a_reset_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            // A healthy connection: everything is written.
            let mut ok = TcpStream::connect(addr).await.unwrap();
            let (mut peer, _) = listener.accept().unwrap();
            let mut buf = b"GET / HTTP/1.1\r\n\r\n".to_vec();
            assert!(write_all_counted(&mut ok, &mut buf, Duration::from_secs(5))
                .await
                .is_ok());
            let mut got = [0u8; 18];
            peer.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"GET / HTTP/1.1\r\n\r\n");

            // A connection the peer reset: the write fails with nothing taken.
            let mut reset = TcpStream::connect(addr).await.unwrap();
            let (peer, _) = listener.accept().unwrap();
            socket2::SockRef::from(&peer)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(peer);
            monoio::time::sleep(Duration::from_millis(50)).await;
            let mut buf = b"POST / HTTP/1.1\r\n\r\n".to_vec();
            match write_all_counted(&mut reset, &mut buf, Duration::from_secs(5)).await {
                Err((IoFail::Io(_), 0)) => {}
                other => panic!("expected an error with 0 bytes written, got {other:?}"),
            }
            assert_eq!(
                buf, b"POST / HTTP/1.1\r\n\r\n",
                "the request is kept for a replay"
            );
        });
    }

    /// A writer without vectored writes (as an HTTP/2 stream is one), over a real stream.
    struct NoWritev(TcpStream);

    impl AsyncWriteRent for NoWritev {
        fn write<T: IoBuf>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
            self.0.write(buf)
        }

        fn writev<T: IoVecBuf>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
            std::future::ready((Err(io::Error::from(io::ErrorKind::Unsupported)), buf))
        }

        fn flush(&mut self) -> impl Future<Output = io::Result<()>> {
            self.0.flush()
        }

        fn shutdown(&mut self) -> impl Future<Output = io::Result<()>> {
            self.0.shutdown()
        }
    }

    /// Writes `head` and `body[range]` through a connection whose peer starts reading late
    /// and slowly (small socket buffers both sides: many partial vectored writes), and
    /// returns what the peer received.
    async fn head_and_range_through_a_slow_reader(
        listener: &TcpListener,
        head: &[u8],
        body: &[u8],
        range: Range<usize>,
        vectored: bool,
    ) -> Vec<u8> {
        let addr = listener.local_addr().unwrap();
        let std_stream = std::net::TcpStream::connect(addr).unwrap();
        socket2::SockRef::from(&std_stream)
            .set_send_buffer_size(4096)
            .unwrap();
        std_stream.set_nonblocking(true).unwrap();
        let stream = TcpStream::from_std(std_stream).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        socket2::SockRef::from(&peer)
            .set_recv_buffer_size(4096)
            .unwrap();
        let want = head.len() + range.len();
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let mut got = Vec::new();
            let mut chunk = [0u8; 1500];
            while got.len() < want {
                let n = peer.read(&mut chunk).unwrap();
                assert!(n > 0, "closed after {} of {want} bytes", got.len());
                got.extend_from_slice(&chunk[..n]);
            }
            got
        });
        let mut head_buf = head.to_vec();
        let mut body_buf = body.to_vec();
        let (head_out, body_out) = (&mut head_buf, &mut body_buf);
        let wait = Duration::from_secs(10);
        let res = if vectored {
            write_head_and_range(&mut { stream }, head_out, body_out, range, wait).await
        } else {
            write_head_and_range(&mut NoWritev(stream), head_out, body_out, range, wait).await
        };
        assert!(res.is_ok(), "{res:?}");
        assert_eq!(body_buf, body, "the body buffer comes back as it was");
        assert!(head_buf.starts_with(head), "the head buffer comes back");
        reader.join().unwrap()
    }

    /// Every case of [`head_and_range_arrive_whole_and_in_order_through_partial_writes`], on
    /// the runtime it runs in.
    async fn head_and_range_cases(listener: &TcpListener) {
        let head: Vec<u8> = (0..1000u32).map(|i| b'A' + (i % 26) as u8).collect();
        let body: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let large = 100..body.len() - 5;
        let small = 10..10 + VECTORED_MIN - 1;
        for range in [large, small] {
            let mut expected = head.clone();
            expected.extend_from_slice(&body[range.clone()]);
            for vectored in [true, false] {
                let got = head_and_range_through_a_slow_reader(
                    listener,
                    &head,
                    &body,
                    range.clone(),
                    vectored,
                )
                .await;
                assert!(
                    got == expected,
                    "vectored {vectored}, {range:?}: bytes differ"
                );
            }
        }
    }

    #[test]
    fn head_and_range_arrive_whole_and_in_order_through_partial_writes() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(head_and_range_cases(&listener));
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(head_and_range_cases(&listener));
    }
}

//! Owned-buffer I/O with timeouts, the monoio way: move the buffer in, get it back, rebind.
//!
//! When a timeout fires the in-flight operation is cancelled and its buffer is dropped with it;
//! the caller's `Vec` is then left empty (a timeout always ends the exchange anyway).

use std::io;
use std::ops::Range;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent};
use monoio::net::TcpStream;

/// IoFail is how an I/O step failed.
#[derive(Debug)]
pub enum IoFail {
    /// The timeout passed first.
    Timeout,
    /// The socket reported an error.
    Io(io::Error),
}

/// Reads once, appending to `buf` (growing it by `grow` when it has little room left).
/// `Ok(0)` is end of stream.
pub async fn read_more(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    timeout: Duration,
    cancel: Option<CancelHandle>,
    grow: usize,
) -> Result<usize, IoFail> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(grow.max(4096));
    }
    let owned = std::mem::take(buf);
    let len = owned.len();
    let cap = owned.capacity();
    let slice = owned.slice_mut(len..cap);
    let read = async {
        match cancel {
            Some(c) => stream.cancelable_read(slice, c).await,
            None => stream.read(slice).await,
        }
    };
    match monoio::time::timeout(timeout, read).await {
        Ok((res, slice)) => {
            *buf = slice.into_inner();
            res.map_err(IoFail::Io)
        }
        Err(_) => Err(IoFail::Timeout),
    }
}

/// Writes all of `buf` within `timeout` (on a timeout `buf` is left empty: the caller
/// rebuilds what it needs to send again).
pub async fn write_all(
    stream: &mut TcpStream,
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

/// Writes `buf[range]` within `timeout`.
pub async fn write_range(
    stream: &mut TcpStream,
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

//! The abuse limits the `h2` crate leaves to its user: how often a client may reset streams
//! (rapid reset, CVE-2023-44487), ping and change settings. [`Metered`] wraps the connection's
//! byte stream and reads the 9-byte header of every frame the client sends as it passes
//! (payloads are skipped, nothing is decoded or copied: the codec is still the `h2` crate's);
//! [`Abuse`] counts the frames of each kind per second and, past a limit, marks the connection
//! for a GOAWAY (ENHANCE_YOUR_CALM), which the connection's driver sends.
//!
//! The bytes a cleartext connection's first read took (the connection preface and whatever
//! followed it) are replayed first, through the same meter.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::H2Config;

/// The client connection preface (RFC 9113 §3.4), which the meter skips.
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types the meter counts (RFC 9113 §6).
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
/// The ACK flag of SETTINGS and PING.
const ACK: u8 = 0x1;

/// Tripped is the limit a client went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tripped {
    /// Too many RST_STREAM frames per second.
    Resets,
    /// Too many PING frames per second.
    Pings,
    /// Too many SETTINGS frames per second.
    Settings,
}

/// Rate counts frames of one kind in the current one-second window.
struct Rate {
    /// Frames allowed per window.
    max: u32,
    /// Frames seen in the current window.
    seen: Cell<u32>,
    /// When the current window began.
    since: Cell<Instant>,
}

impl Rate {
    fn new(max: u32, now: Instant) -> Rate {
        Rate {
            max,
            seen: Cell::new(0),
            since: Cell::new(now),
        }
    }

    /// Counts one frame; false once the window holds more than `max`.
    fn count(&self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.since.get()) >= Duration::from_secs(1) {
            self.since.set(now);
            self.seen.set(0);
        }
        self.seen.set(self.seen.get() + 1);
        self.seen.get() <= self.max
    }
}

/// Abuse is one connection's frame counters and the limit it went over, if any.
pub(crate) struct Abuse {
    /// RST_STREAM frames.
    resets: Rate,
    /// PING frames (not acknowledgements).
    pings: Rate,
    /// SETTINGS frames (not acknowledgements).
    settings: Rate,
    /// The first limit the client went over.
    tripped: Cell<Option<Tripped>>,
    /// The connection driver's task, woken when a limit trips.
    waker: Cell<Option<Waker>>,
}

impl Abuse {
    /// Counters for a connection under `cfg`'s limits.
    pub fn new(cfg: &H2Config) -> Abuse {
        let now = Instant::now();
        Abuse {
            resets: Rate::new(cfg.max_resets_per_sec, now),
            pings: Rate::new(cfg.max_pings_per_sec, now),
            settings: Rate::new(cfg.max_settings_per_sec, now),
            tripped: Cell::new(None),
            waker: Cell::new(None),
        }
    }

    /// The limit the client went over, if any.
    pub fn tripped(&self) -> Option<Tripped> {
        self.tripped.get()
    }

    /// Remembers the task to wake when a limit trips.
    pub fn register(&self, waker: &Waker) {
        self.waker.set(Some(waker.clone()));
    }

    /// Counts a frame header (type, flags).
    fn frame(&self, kind: u8, flags: u8) {
        let over = match kind {
            RST_STREAM if !self.resets.count() => Tripped::Resets,
            PING if flags & ACK == 0 && !self.pings.count() => Tripped::Pings,
            SETTINGS if flags & ACK == 0 && !self.settings.count() => Tripped::Settings,
            _ => return,
        };
        if self.tripped.get().is_none() {
            self.tripped.set(Some(over));
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
    }
}

/// FrameScan follows the frame boundaries of the bytes a client sends.
struct FrameScan {
    /// Bytes to pass over before the next frame header (the preface, a frame payload).
    skip: usize,
    /// The frame header being gathered.
    header: [u8; 9],
    /// Bytes of it gathered so far.
    have: usize,
}

impl FrameScan {
    /// Passes over `bytes`, counting each complete frame header in `abuse`.
    fn scan(&mut self, mut bytes: &[u8], abuse: &Abuse) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == 9 {
                let h = self.header;
                self.have = 0;
                self.skip = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                abuse.frame(h[3], h[4]);
            }
        }
    }
}

/// Metered is a client connection's byte stream with its frames counted as they are read, and
/// the bytes read before the switch to HTTP/2 replayed first.
pub(crate) struct Metered<'a, T> {
    /// The stream.
    inner: T,
    /// Bytes already read from the stream, replayed before reading it again.
    replay: Vec<u8>,
    /// How much of `replay` was handed out.
    replayed: usize,
    /// Frame boundaries.
    scan: FrameScan,
    /// The counters.
    abuse: &'a Abuse,
}

impl<'a, T> Metered<'a, T> {
    /// Meters `inner`, replaying `replay` (bytes read from it already) first. The connection
    /// preface is passed over: the stream starts with it.
    pub fn new(inner: T, replay: Vec<u8>, abuse: &'a Abuse) -> Self {
        Metered {
            inner,
            replay,
            replayed: 0,
            scan: FrameScan {
                skip: PREFACE.len(),
                header: [0; 9],
                have: 0,
            },
            abuse,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.replayed < this.replay.len() {
            let rest = &this.replay[this.replayed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.scan.scan(&rest[..n], this.abuse);
            this.replayed += n;
            if this.replayed == this.replay.len() {
                this.replay = Vec::new();
                this.replayed = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            this.scan.scan(&buf.filled()[before..], this.abuse);
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: usize) -> Vec<u8> {
        let mut f = vec![
            (payload >> 16) as u8,
            (payload >> 8) as u8,
            payload as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.resize(9 + payload, 0xAA);
        f
    }

    #[test]
    fn counts_frames_split_anywhere_and_trips_past_the_rate() {
        let cfg = H2Config {
            max_pings_per_sec: 3,
            ..H2Config::default()
        };
        let abuse = Abuse::new(&cfg);
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(SETTINGS, 0, 6));
        bytes.extend(frame(0x0, 0, 100)); // DATA whose payload looks like frame headers
        for _ in 0..3 {
            bytes.extend(frame(PING, 0, 8));
            bytes.extend(frame(PING, ACK, 8)); // acknowledgements are not counted
        }
        let mut scan = FrameScan {
            skip: PREFACE.len(),
            header: [0; 9],
            have: 0,
        };
        for piece in bytes.chunks(5) {
            scan.scan(piece, &abuse);
        }
        assert_eq!(abuse.tripped(), None, "three pings are allowed");
        scan.scan(&frame(PING, 0, 8), &abuse);
        assert_eq!(abuse.tripped(), Some(Tripped::Pings));
    }

    #[test]
    fn resets_trip_their_own_limit() {
        let cfg = H2Config {
            max_resets_per_sec: 2,
            ..H2Config::default()
        };
        let abuse = Abuse::new(&cfg);
        let mut scan = FrameScan {
            skip: 0,
            header: [0; 9],
            have: 0,
        };
        for _ in 0..2 {
            scan.scan(&frame(RST_STREAM, 0, 4), &abuse);
        }
        assert_eq!(abuse.tripped(), None);
        scan.scan(&frame(RST_STREAM, 0, 4), &abuse);
        assert_eq!(abuse.tripped(), Some(Tripped::Resets));
    }
}

//! The client side of a connection: reading request heads (the keep-alive wait, the header
//! deadline), ringlb's own answers (errors, `100 Continue`) and the lingering close.

use std::time::{Duration, Instant};

use super::lazy_timer::LazyTimer;
use super::{Conn, Head, ShardCtx, CLIENT_BUF};
use crate::config::Limits;
use crate::http::{parse_request, write_error_response, BodyKind, HttpError, ParseStatus};
use crate::io::{read_more, read_warm, write_all, IoFail, Transport, Warm};

impl<C: Transport + 'static> Conn<'_, C> {
    /// Reads until `rbuf[rpos..]` starts with a complete request head, parsed into `self.head`.
    ///
    /// [`Head::Close`]: the connection should close quietly (client closed, idle timeout,
    /// shutdown). [`Head::Park`]: nothing arrived within `client_park`; the caller parks the
    /// connection. An idle wait is bounded by `client_idle`; once a request has begun (and for
    /// a new connection, from accept: `first`) the whole head must arrive within
    /// `request_header` (408).
    pub(super) async fn read_request_head(
        &mut self,
        first: Option<Instant>,
    ) -> Result<Head, HttpError> {
        let ctx = self.ctx;
        let limits = self.live.config.limits;
        let timeouts = self.live.config.timeouts;
        if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        let mut deadline = first;
        loop {
            if !self.rbuf.is_empty() {
                self.head_request = starts_head_request(&self.rbuf);
                if parse_request(&self.rbuf, &limits, &mut self.head)? == ParseStatus::Complete {
                    return Ok(Head::Ready);
                }
                let d = *deadline.get_or_insert_with(|| Instant::now() + timeouts.request_header);
                // A request has begun: its head must arrive by the deadline.
                let wait = d.saturating_duration_since(Instant::now());
                match read_more(&mut self.io, &mut self.rbuf, wait, None, CLIENT_BUF).await {
                    Ok(0) => return Ok(Head::Close),
                    Ok(_) => continue,
                    Err(IoFail::Timeout) => return Err(HttpError::RequestTimeout),
                    Err(IoFail::Io(_)) => return Ok(Head::Close),
                }
            }
            // Nothing pending: the wait for a request (the first, or the next keep-alive one).
            if ctx.is_shutting_down() {
                return Ok(Head::Close);
            }
            // (One clock read for the whole wait.)
            let now = Instant::now();
            let until = deadline.unwrap_or(now + timeouts.client_idle);
            if std::mem::take(&mut self.woken) {
                // Readiness woke a parked connection: the bytes (or the close) are there.
                let wait = until.saturating_duration_since(now);
                match read_more(&mut self.io, &mut self.rbuf, wait, None, CLIENT_BUF).await {
                    Ok(0) | Err(_) => return Ok(Head::Close),
                    Ok(_) => continue,
                }
            }
            let warm = if ctx.may_wait_warm() {
                timeouts
                    .client_park
                    .min(until.saturating_duration_since(now))
            } else {
                Duration::ZERO
            };
            if warm.is_zero() {
                return Ok(Head::Park(until));
            }
            let cold_at = now + warm;
            let timer = match &mut self.cold {
                Some(t) => {
                    t.set(cold_at);
                    t
                }
                None => self.cold.insert(LazyTimer::new(cold_at)),
            };
            let cold = async {
                monoio::select! {
                    _ = timer.wait() => {},
                    _ = ctx.shutdown_wait() => {},
                }
            };
            let read = read_warm(
                &mut self.io,
                &mut self.rbuf,
                CLIENT_BUF,
                cold,
                &mut self.canceller,
            );
            match read.await {
                Ok(Warm::Read(0)) | Err(_) => return Ok(Head::Close),
                Ok(Warm::Read(_)) => {}
                Ok(Warm::Cold) => return Ok(Head::Park(until)),
            }
        }
    }

    /// Writes an error response; returns whether the connection stays open. A connection that
    /// closes after it is closed the lingering way (the client may be sending still).
    pub(super) async fn reply_error(&mut self, err: &HttpError, keep_alive: bool) -> bool {
        let keep_alive = keep_alive && !self.ctx.is_shutting_down();
        self.out.clear();
        let body_bytes = write_error_response(err, keep_alive, self.head_request, &mut self.out);
        self.ctx.metrics.count_response(err.status());
        if self.logging() {
            self.log.status = err.status();
            self.log.body_bytes = body_bytes;
        }
        let wait = self.live.config.timeouts.client_idle;
        let written = write_all(&mut self.io, &mut self.out, wait).await.is_ok();
        self.linger = written && !keep_alive;
        written && keep_alive
    }

    /// Sends `100 Continue` to the client (once per request): ringlb asks for the body itself.
    /// Returns false when the client is gone.
    pub(super) async fn send_continue(&mut self) -> bool {
        if self.continue_sent {
            return true;
        }
        self.continue_sent = true;
        self.out.clear();
        self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        let wait = self.live.config.timeouts.client_idle;
        let ok = write_all(&mut self.io, &mut self.out, wait).await.is_ok();
        self.out.clear();
        ok
    }

    /// Closes the connection so that what was written reaches the client even while it is
    /// still sending (nginx's `lingering_close`): shut the write side (the FIN tells the client
    /// the answer is complete), then read and discard until the client closes, nothing arrives
    /// for `lingering_timeout`, `lingering_time` has passed or `lingering_max_bytes` were
    /// discarded. Closing with unread bytes instead would make the kernel send a reset, which
    /// destroys the answer not yet read by the client. Shutdown cuts the wait short.
    pub(super) async fn lingering_close(&mut self) {
        self.rpos = 0;
        let limits = &self.live.config.limits;
        linger(self.ctx, &mut self.io, &mut self.rbuf, limits).await;
    }

    /// Answers 404 (no route). The request body, if any, was not read: close unless it has none.
    pub(super) async fn reply_not_found(&mut self) -> bool {
        let keep = self.head.keep_alive && self.head.body == BodyKind::None;
        if keep {
            self.rpos = self.head.head_len;
        }
        self.reply_error(&HttpError::NotFound, keep).await
    }
}

/// The lingering close of [`Conn::lingering_close`] on any connection, discarding through
/// `buf` (left empty).
pub(super) async fn linger<T: Transport>(
    ctx: &ShardCtx,
    io: &mut T,
    buf: &mut Vec<u8>,
    limits: &Limits,
) {
    buf.clear();
    if !io.shutdown_write() {
        return;
    }
    let end = Instant::now() + limits.lingering_time;
    let mut discarded = 0u64;
    while discarded <= limits.lingering_max_bytes {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() || ctx.is_shutting_down() {
            break;
        }
        let wait = left.min(limits.lingering_timeout);
        match read_more(io, buf, wait, Some(ctx.cancel_handle()), CLIENT_BUF).await {
            Ok(n) if n > 0 => discarded += n as u64,
            _ => break,
        }
        buf.clear();
    }
}

/// Whether a request that starts with `buf` is a HEAD (leading empty lines skipped, as the
/// parser does), so an error answer to it can leave out the body even when its head is bad.
fn starts_head_request(buf: &[u8]) -> bool {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    buf[start..].starts_with(b"HEAD ")
}

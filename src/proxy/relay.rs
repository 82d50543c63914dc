//! Response streaming: relay a final response whose head was read (rewritten for the client,
//! de-chunked for HTTP/1.0), stream its body through one bounded buffer, and return the
//! upstream connection to the pool when it can carry another request.

use std::any::Any;
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use super::body::BodyProgress;
use super::exchange::{Held, TryResult};
use super::h2::{StreamIo, UpstreamIo};
use super::{Conn, LARGE_BODY_BUF, STREAM_BUF};
use crate::balance::PeerId;
use crate::control::Outcome;
use crate::http::{rewrite_response, BodyKind, HttpError, Version};
use crate::io::{
    read_more, splice_some, write_all, write_head_and_range, write_range, IoFail, Pipe, Transport,
};
use crate::metrics::{PeerMetrics, UpstreamMetrics};
use crate::upstream::UpstreamGroup;

impl<C: Transport + 'static> Conn<'_, C> {
    /// Relays the final response whose head is in `self.resp` / `self.ubuf` to the client,
    /// streaming its body, and returns the upstream connection to the pool when reusable.
    pub(super) async fn relay_response(
        &mut self,
        group: &UpstreamGroup,
        peer_id: PeerId,
        held: Held,
    ) -> TryResult {
        let Held {
            mut up,
            body_unsent,
            body_done,
        } = held;
        let t = group.peer(peer_id).timeouts;
        let pm = &*group.peer(peer_id).metrics;
        let client_idle = self.live.config.timeouts.client_idle;
        let client_version = self.head.version;
        let resp_body = self.resp.body;
        let dechunk = resp_body == BodyKind::Chunked && client_version == Version::Http10;
        let keep_client = self.head.keep_alive
            && !self.ctx.is_shutting_down()
            && body_done
            && !body_unsent
            && resp_body != BodyKind::UntilClose
            && !dechunk;
        let mut reuse_upstream = self.resp.keep_alive && !body_unsent;
        // The client may still be sending a body ringlb did not read: close the lingering way.
        self.linger = !keep_client && (body_unsent || !body_done);
        if resp_body == BodyKind::UntilClose
            && self.resp.transfer_coded
            && client_version == Version::Http10
        {
            // Transfer codings other than chunked cannot be told to an HTTP/1.0 client
            // (RFC 9112 §6.1), and without them the payload is undecodable.
            let err = HttpError::BadGateway("transfer coding an HTTP/1.0 client cannot decode");
            self.reply_error(&err, false).await;
            return TryResult::Broken {
                fault: Some(Outcome::InvalidResponse),
            };
        }
        self.out.clear();
        // A client side that frames heads itself (an HTTP/2 stream) takes the parsed head:
        // no HTTP/1.1 text to write and parse again.
        // (`downcast_mut` is decided per transport type at compile time.)
        let stream = (&mut self.io as &mut dyn Any).downcast_mut::<StreamIo>();
        match stream.and_then(|s| s.take_response_head(&self.ubuf, &self.resp)) {
            Some(Ok(())) => {}
            Some(Err(_)) => return TryResult::Broken { fault: None },
            None => rewrite_response(
                &self.ubuf,
                &self.resp,
                client_version,
                keep_client,
                &mut self.out,
            ),
        }
        let rhead_len = self.resp.head_len;
        let head_out = self.out.len();
        let mut rbody = BodyProgress::new(resp_body, None);
        let mut ranges = Vec::new();
        let taken = match rbody.advance(&self.ubuf[rhead_len..], dechunk.then_some(&mut ranges)) {
            Ok(n) => n,
            Err(_) => {
                let err = HttpError::BadGateway("invalid chunked body from upstream");
                self.reply_error(&err, false).await;
                return TryResult::Broken {
                    fault: Some(Outcome::InvalidResponse),
                };
            }
        };
        if rhead_len + taken < self.ubuf.len() {
            reuse_upstream = false; // the upstream sent more than its response
        }
        // The body bytes that came with the head go out from `ubuf` where they are as they
        // came (not copied behind the head: `write_head_and_range`).
        let mut first = rhead_len..rhead_len;
        if dechunk {
            for r in &ranges {
                self.out
                    .extend_from_slice(&self.ubuf[rhead_len + r.start..rhead_len + r.end]);
            }
        } else if rbody.strip().is_empty() {
            first.end += taken;
        } else {
            rbody.copy_taken(&self.ubuf[rhead_len..], taken, &mut self.out);
        }
        self.ctx.metrics.count_response(self.resp.status);
        let logging = self.logging();
        if logging {
            self.log.status = self.resp.status;
            self.log.body_bytes = (self.out.len() - head_out + first.len()) as u64;
        }
        if (!self.out.is_empty() || !first.is_empty())
            && write_head_and_range(
                &mut self.io,
                &mut self.out,
                &mut self.ubuf,
                first,
                client_idle,
            )
            .await
            .is_err()
        {
            return TryResult::Broken { fault: None };
        }

        // With `[server] splice = true`, the rest of a large `Content-Length` body between
        // two plain TCP sockets moves through a pipe, never copied to user space
        // (`splice_body`).
        let splice = match rbody.length_left() {
            Some(left) if !dechunk && left > SPLICE_MIN && self.live.config.server.splice => {
                match (self.io.splice_fd(), up.splice_fd()) {
                    (Some(client), Some(upstream)) => Some((SpliceFds { client, upstream }, left)),
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some(((fds, left), pipe)) = splice.and_then(|s| Some((s, self.ctx.take_pipe()?))) {
            let meters = (pm, &*group.metrics);
            let upstream_read = t.upstream_read;
            match self
                .splice_body(&mut up, fds, pipe, left, upstream_read, meters)
                .await
            {
                Ok(()) => rbody = BodyProgress::new(BodyKind::None, None),
                Err(broken) => return broken,
            }
        }
        // The rest of the body streams through `ubuf`.
        if !rbody.done() {
            // A body known to be large streams through a larger buffer: a quarter of the
            // reads and writes per byte. It goes back to `STREAM_BUF` afterwards, so a pooled
            // spare never keeps more.
            let buf = match resp_body {
                BodyKind::Length(n) if n > STREAM_BUF as u64 => LARGE_BODY_BUF,
                _ => STREAM_BUF,
            };
            if self.ubuf.capacity() < buf {
                self.ubuf.reserve(buf - self.ubuf.len());
            }
            loop {
                self.ubuf.clear();
                match read_more(&mut up, &mut self.ubuf, t.upstream_read, None, buf).await {
                    Ok(0) if resp_body == BodyKind::UntilClose => break,
                    Ok(0) | Err(IoFail::Io(_)) => {
                        return TryResult::Broken {
                            fault: Some(Outcome::Reset),
                        };
                    }
                    Err(IoFail::Timeout) => {
                        return TryResult::Broken {
                            fault: Some(Outcome::Timeout),
                        };
                    }
                    Ok(n) => pm.bytes_received.add(n as u64),
                }
                ranges.clear();
                let taken = match rbody.advance(&self.ubuf, dechunk.then_some(&mut ranges)) {
                    Ok(n) => n,
                    Err(_) => {
                        return TryResult::Broken {
                            fault: Some(Outcome::InvalidResponse),
                        };
                    }
                };
                if taken < self.ubuf.len() {
                    reuse_upstream = false;
                }
                let (res, sent) = if dechunk {
                    self.out.clear();
                    for r in &ranges {
                        self.out.extend_from_slice(&self.ubuf[r.clone()]);
                    }
                    let n = self.out.len();
                    (write_all(&mut self.io, &mut self.out, client_idle).await, n)
                } else if !rbody.strip().is_empty() {
                    self.out.clear();
                    rbody.copy_taken(&self.ubuf, taken, &mut self.out);
                    let n = self.out.len();
                    (write_all(&mut self.io, &mut self.out, client_idle).await, n)
                } else {
                    let res =
                        write_range(&mut self.io, &mut self.ubuf, 0..taken, client_idle).await;
                    (res, taken)
                };
                if logging {
                    self.log.body_bytes += sent as u64;
                }
                if res.is_err() {
                    return TryResult::Broken { fault: None };
                }
                if rbody.done() {
                    break;
                }
            }
            if self.ubuf.capacity() > STREAM_BUF {
                self.ubuf.clear();
                self.ubuf.shrink_to(STREAM_BUF);
            }
        }
        if reuse_upstream && resp_body != BodyKind::UntilClose {
            // (An HTTP/2 stream is done; its connection stays with the shard's h2 clients.)
            if let UpstreamIo::H1(up) = up {
                group.put_idle(peer_id, up, Instant::now());
            }
        }
        TryResult::Relayed { keep_client }
    }

    /// Moves the last `left` bytes of a response body from the upstream to the client
    /// through `pipe` (splice(2), non-blocking, after the ring said the socket is ready): the
    /// kernel hands the received pages on to the client's socket, with no copy into ringlb
    /// and none out of it. The pipe goes back to the shard when it ends empty. Each wait for
    /// the upstream is cut by `upstream_read`, each for the client by `client_idle_ms`.
    async fn splice_body(
        &mut self,
        up: &mut UpstreamIo,
        fds: SpliceFds,
        pipe: Pipe,
        mut left: u64,
        upstream_read: Duration,
        (pm, um): (&PeerMetrics, &UpstreamMetrics),
    ) -> Result<(), TryResult> {
        let client_idle = self.live.config.timeouts.client_idle;
        let logging = self.logging();
        let cap = pipe.capacity();
        let mut in_pipe = 0usize;
        let upstream_failed = |fault| TryResult::Broken { fault: Some(fault) };
        loop {
            let mut moved = false;
            if left > 0 && in_pipe < cap {
                let want = ((cap - in_pipe) as u64).min(left) as usize;
                match splice_some(fds.upstream, pipe.write_fd(), want, false) {
                    Ok(0) => return Err(upstream_failed(Outcome::Reset)),
                    Ok(n) => {
                        in_pipe += n;
                        left -= n as u64;
                        pm.bytes_received.add(n as u64);
                        moved = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Err(upstream_failed(Outcome::Reset)),
                }
            }
            if in_pipe > 0 {
                match splice_some(pipe.read_fd(), fds.client, in_pipe, left > 0) {
                    Ok(n) if n > 0 => {
                        in_pipe -= n;
                        um.spliced_bytes.add(n as u64);
                        if logging {
                            self.log.body_bytes += n as u64;
                        }
                        moved = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    _ => return Err(TryResult::Broken { fault: None }),
                }
            }
            if left == 0 && in_pipe == 0 {
                self.ctx.put_pipe(pipe);
                return Ok(());
            }
            if moved {
                continue;
            }
            // Nothing moved: bytes in the pipe wait for room at the client, an empty pipe
            // for the upstream's next bytes.
            if in_pipe > 0 {
                match monoio::time::timeout(client_idle, self.io.wait_writable()).await {
                    Ok(Ok(())) => {}
                    _ => return Err(TryResult::Broken { fault: None }),
                }
            } else {
                match monoio::time::timeout(upstream_read, up.wait_readable()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(upstream_failed(Outcome::Reset)),
                    Err(_) => return Err(upstream_failed(Outcome::Timeout)),
                }
            }
        }
    }
}

/// The two sockets of a spliced body.
#[derive(Clone, Copy)]
struct SpliceFds {
    /// The client's (written to).
    client: RawFd,
    /// The upstream's (read from).
    upstream: RawFd,
}

/// Bodies with more than this many bytes left after the head's read are spliced (when both
/// sides are plain TCP): below it a pipe's two extra system calls cost more than the copies
/// they save.
const SPLICE_MIN: u64 = STREAM_BUF as u64;

//! Tunnels: after a `101 Switching Protocols` to an upgrade request (WebSocket and the like)
//! the client connection stops being HTTP and carries the upgraded protocol's bytes both ways
//! between the client and the peer, until either side is done.
//!
//! - Two bounded buffers of [`TUNNEL_BUF`] bytes, one per direction (the connection's two read
//!   buffers, reused): a direction reads at most that much, writes it all, reads again, so a
//!   slow reader on one side holds back only its own direction. A direction whose read filled
//!   its buffer whole is moving bulk data: its buffer grows to [`TUNNEL_BULK_BUF`] (a quarter
//!   of the reads and writes per MB) until a read would have fit the small one again.
//! - A direction that waited `timeouts.client_park_ms` for its next bytes *parks*, as an idle
//!   client connection does: its read is cancelled (`io::read_warm`: bytes of a read that
//!   completed meanwhile are forwarded as usual), its buffer is freed, and it waits for
//!   readiness (`Transport::wait_readable`) holding none; readiness gives it a fresh buffer.
//!   An idle tunnel then holds no buffer at all (the same knob as for client connections: it
//!   trades one more ring operation per quiet spell for the memory, and a busy direction
//!   never parks).
//! - A FIN from one side is relayed as a half-close (`shutdown(SHUT_WR)`) toward the other;
//!   the other direction keeps flowing until it ends too.
//! - An error on either side (a reset, a failed write) ends both directions.
//! - No byte either way for `timeouts.tunnel_idle_ms` closes both sides.
//! - At shutdown a tunnel runs until the drain time (`shutdown_timeout_ms`) is over.
//! - The peer counts as in flight for the whole tunnel (the try's `ActiveGuard` lives on);
//!   the upstream connection is never pooled; a reload leaves the tunnel on its peer (it holds
//!   the request's generation).

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use monoio::io::{AsyncWriteRentExt, Canceller};

use super::exchange::{Held, TryResult};
use super::lazy_timer::LazyTimer;
use super::Conn;
use crate::balance::PeerId;
use crate::control::Outcome;
use crate::failover::Failure;
use crate::http::rewrite_switching;
use crate::io::{read_append, read_warm, split, write_all, ReadHalf, Transport, Warm, WriteHalf};
use crate::metrics::{Counter, UpstreamMetrics};
use crate::upstream::UpstreamGroup;

/// Size of each of a tunnel's two buffers (one per direction).
pub(super) const TUNNEL_BUF: usize = 16 * 1024;
/// What a direction's buffer grows to once a read filled [`TUNNEL_BUF`] whole (a bulk
/// transfer: fewer, larger reads and writes); it goes back to [`TUNNEL_BUF`] after a read
/// that would have fit in it, and when the direction parks.
pub(super) const TUNNEL_BULK_BUF: usize = 128 * 1024;

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Both sides closed their write side (each FIN relayed).
    Closed,
    /// A read or write failed on one side.
    Broken,
    /// No byte either way for `tunnel_idle`.
    Idle,
    /// Shutdown's drain time is over.
    Shutdown,
}

/// Counts a tunnel as open in its upstream's metrics while it lives.
struct OpenTunnel<'a>(&'a UpstreamMetrics);

impl<'a> OpenTunnel<'a> {
    fn new(m: &'a UpstreamMetrics) -> Self {
        m.tunnels_total.inc();
        m.tunnels_active.inc();
        OpenTunnel(m)
    }
}

impl Drop for OpenTunnel<'_> {
    fn drop(&mut self) {
        self.0.tunnels_active.dec();
    }
}

impl<C: Transport + 'static> Conn<'_, C> {
    /// Relays the `101` whose head is in `self.resp` / `self.ubuf` and tunnels the connection
    /// to the peer until it ends. Called within the try, so the peer stays in flight.
    pub(super) async fn tunnel(
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
        if body_unsent || !body_done {
            // A 101 before the request body went through: nothing sensible to switch to.
            return TryResult::Failed {
                failure: Failure::InvalidResponse,
                sent: true,
                held: None,
            };
        }
        let t = group.peer(peer_id).timeouts;
        let client_idle = self.live.config.timeouts.client_idle;
        let pm = &*group.peer(peer_id).metrics;
        let um = &*group.metrics;
        self.ctx.metrics.count_response(101);
        if self.logging() {
            self.log.status = 101;
            self.log.body_bytes = 0;
        }
        let _open = OpenTunnel::new(um);

        // The 101 head, and whatever the peer sent after it, go to the client; what the client
        // sent after its request head goes to the peer.
        let head_len = self.resp.head_len;
        self.out.clear();
        rewrite_switching(&self.ubuf, &self.resp, &mut self.out);
        let early_down = self.ubuf.len().saturating_sub(head_len);
        self.out
            .extend_from_slice(self.ubuf.get(head_len..).unwrap_or_default());
        if write_all(&mut self.io, &mut self.out, client_idle)
            .await
            .is_err()
        {
            return TryResult::Broken { fault: None };
        }
        um.tunnel_bytes_downstream.add(early_down as u64);
        let mut down_bytes = early_down as u64;
        let early_up = self.rbuf.len().saturating_sub(self.rpos);
        if early_up > 0 {
            self.out.clear();
            self.out.extend_from_slice(&self.rbuf[self.rpos..]);
            if write_all(&mut up, &mut self.out, t.upstream_write)
                .await
                .is_err()
            {
                return TryResult::Broken {
                    fault: Some(Outcome::Reset),
                };
            }
            pm.bytes_sent.add(early_up as u64);
            um.tunnel_bytes_upstream.add(early_up as u64);
        }
        // Nothing of the client's bytes is left for a next request (there is none).
        self.rpos = 0;
        let mut up_buf = std::mem::take(&mut self.rbuf);
        let mut down_buf = std::mem::take(&mut self.ubuf);
        for b in [&mut up_buf, &mut down_buf] {
            b.clear();
            b.shrink_to(TUNNEL_BUF);
            b.reserve_exact(TUNNEL_BUF);
        }
        self.out = Vec::new();

        let last = Cell::new(Instant::now());
        let down_total = Cell::new(0u64);
        let park = Park {
            ctx: self.ctx,
            after: self.live.config.timeouts.client_park,
        };
        let counters = Counters {
            up: [&um.tunnel_bytes_upstream, &pm.bytes_sent],
            down: [&um.tunnel_bytes_downstream, &pm.bytes_received],
        };
        let bufs = (&mut up_buf, &mut down_buf);
        let watch = watchdog(self.ctx, t.tunnel_idle, &last);
        let end = copy_both(
            &mut self.io,
            &mut up,
            bufs,
            counters,
            &last,
            &down_total,
            &park,
            watch,
        )
        .await;
        down_bytes += down_total.get();
        if self.logging() {
            self.log.body_bytes = down_bytes;
        }
        tracing::debug!(
            group = %group.name,
            peer = %group.peer(peer_id).address,
            ?end,
            "tunnel ended"
        );
        // Give the connection small buffers back; it closes after this anyway.
        self.rbuf = Vec::new();
        self.ubuf = Vec::new();
        TryResult::Relayed { keep_client: false }
    }
}

/// The counters each direction adds its bytes to.
struct Counters<'a> {
    /// Client to peer.
    up: [&'a Counter; 2],
    /// Peer to client.
    down: [&'a Counter; 2],
}

/// Copies both ways between `client` and `up` (one [`pump`] each way, into `bufs.0` and
/// `bufs.1`) until [`run`] ends the tunnel.
#[allow(clippy::too_many_arguments)]
async fn copy_both<C: Transport, U: Transport>(
    client: &mut C,
    up: &mut U,
    bufs: (&mut Vec<u8>, &mut Vec<u8>),
    counters: Counters<'_>,
    last: &Cell<Instant>,
    down_total: &Cell<u64>,
    park: &Park<'_>,
    watch: impl Future<Output = End>,
) -> End {
    let (client_r, client_w) = split(client);
    let (up_r, up_w) = split(up);
    let to_up = pump(client_r, up_w, bufs.0, counters.up, last, None, park);
    let to_down = pump(
        up_r,
        client_w,
        bufs.1,
        counters.down,
        last,
        Some(down_total),
        park,
    );
    run(to_up, to_down, watch).await
}

/// Runs both directions and the watchdog until both directions ended, one of them broke, or
/// the watchdog fired.
async fn run(
    to_up: impl Future<Output = bool>,
    to_down: impl Future<Output = bool>,
    watch: impl Future<Output = End>,
) -> End {
    let mut to_up = pin!(to_up);
    let mut to_down = pin!(to_down);
    let mut watch = pin!(watch);
    let mut up_done: Option<bool> = None;
    let mut down_done: Option<bool> = None;
    poll_fn(|cx| {
        if up_done.is_none() {
            if let Poll::Ready(ok) = to_up.as_mut().poll(cx) {
                up_done = Some(ok);
            }
        }
        if down_done.is_none() {
            if let Poll::Ready(ok) = to_down.as_mut().poll(cx) {
                down_done = Some(ok);
            }
        }
        match (up_done, down_done) {
            (Some(false), _) | (_, Some(false)) => return Poll::Ready(End::Broken),
            (Some(true), Some(true)) => return Poll::Ready(End::Closed),
            _ => {}
        }
        watch.as_mut().poll(cx)
    })
    .await
}

/// When a tunnel direction parks (see the module docs).
struct Park<'a> {
    /// The shard (its allocator's freed pages are handed back after buffers are freed).
    ctx: &'a super::ShardCtx,
    /// How long a direction waits for bytes with a read (and its buffer) in flight before it
    /// parks: `timeouts.client_park`. Zero: it always waits for readiness first.
    after: Duration,
}

/// Copies one direction until end of stream (relayed as a half-close: true) or an error
/// (false). Each read takes at most [`TUNNEL_BUF`] bytes ([`TUNNEL_BULK_BUF`] while reads
/// keep filling that); `counters` count them, `last` is
/// when bytes were last written either way, `total` (if given) sums what was written. A direction
/// quiet for `park.after` parks: it frees its buffer and waits for readiness (module docs).
async fn pump<R, W>(
    mut from: ReadHalf<'_, R>,
    mut to: WriteHalf<'_, W>,
    buf: &mut Vec<u8>,
    counters: [&Counter; 2],
    last: &Cell<Instant>,
    total: Option<&Cell<u64>>,
    park: &Park<'_>,
) -> bool
where
    R: Transport,
    W: Transport,
{
    let mut canceller = Canceller::new();
    // How much the next read takes: TUNNEL_BUF, or TUNNEL_BULK_BUF in a bulk transfer.
    let mut size = TUNNEL_BUF;
    // When this direction last had something to do (its last write, or a wake from parking):
    // the clock is read once per message, and the cold timer is one timer for the
    // direction's life, moved along lazily.
    let mut mark = Instant::now();
    let mut cold = LazyTimer::new(mark + park.after);
    loop {
        if buf.capacity() < size {
            buf.clear();
            if buf.capacity() > 0 {
                // Growing: nothing in it is kept, so no copy on the way.
                *buf = Vec::new();
            }
            buf.reserve_exact(size);
        }
        buf.clear();
        let read = if park.after.is_zero() {
            // Parks at once: wait for bytes before a buffer is lent.
            *buf = Vec::new();
            if from.wait_readable().await.is_err() {
                return false;
            }
            buf.reserve_exact(size);
            read_append(&mut from, buf, size, size, None).await
        } else {
            // A woken direction reads warm too: readiness can be spurious (then it parks
            // again after `park.after` instead of holding a buffer in a read).
            cold.set(mark + park.after);
            match read_warm(&mut from, buf, size, cold.wait(), &mut canceller).await {
                Ok(Warm::Read(n)) => Ok(n),
                Ok(Warm::Cold) => {
                    // Quiet: give the buffer up and wait for readiness holding none.
                    *buf = Vec::new();
                    size = TUNNEL_BUF;
                    park.ctx.parking.release_soon();
                    if from.wait_readable().await.is_err() {
                        return false;
                    }
                    mark = Instant::now();
                    continue;
                }
                Err(e) => Err(e),
            }
        };
        match read {
            Ok(0) => {
                // End of stream: pass the half-close on; the other direction goes on.
                return to.shutdown_write();
            }
            Ok(n) => {
                for c in counters {
                    c.add(n as u64);
                }
            }
            Err(_) => return false,
        }
        let n = buf.len();
        let (res, owned) = AsyncWriteRentExt::write_all(&mut to, std::mem::take(buf)).await;
        *buf = owned;
        let next = next_read_size(n);
        if next < size {
            // Back to small messages: the bulk buffer goes before the next read.
            *buf = Vec::new();
        }
        size = next;
        if res.is_err() {
            return false;
        }
        mark = Instant::now();
        last.set(mark);
        if let Some(t) = total {
            t.set(t.get() + n as u64);
        }
    }
}

/// How much a tunnel direction's next read takes after one that returned `n` bytes: a read
/// that filled [`TUNNEL_BUF`] (or more) means bulk data, [`TUNNEL_BULK_BUF`]; anything smaller,
/// [`TUNNEL_BUF`].
fn next_read_size(n: usize) -> usize {
    if n >= TUNNEL_BUF {
        TUNNEL_BULK_BUF
    } else {
        TUNNEL_BUF
    }
}

/// Completes when no byte moved either way for `idle` (since `last`), or when the shard ends
/// its tunnels at the end of shutdown's drain time. Sleeps until the idle deadline, so an
/// idle tunnel costs one timer.
async fn watchdog(ctx: &super::ShardCtx, idle: Duration, last: &Cell<Instant>) -> End {
    loop {
        let (ending, notify) = ctx.tunnels_ending();
        if ending {
            return End::Shutdown;
        }
        let due = last.get() + idle;
        let now = Instant::now();
        if now >= due {
            return End::Idle;
        }
        let notified = notify.notified();
        monoio::select! {
            _ = monoio::time::sleep(due - now) => {}
            _ = notified => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_that_fills_the_small_buffer_switches_to_the_bulk_one_and_back() {
        assert_eq!(next_read_size(0), TUNNEL_BUF);
        assert_eq!(next_read_size(1024), TUNNEL_BUF);
        assert_eq!(next_read_size(TUNNEL_BUF - 1), TUNNEL_BUF);
        assert_eq!(next_read_size(TUNNEL_BUF), TUNNEL_BULK_BUF);
        assert_eq!(next_read_size(TUNNEL_BULK_BUF), TUNNEL_BULK_BUF);
        assert_eq!(next_read_size(TUNNEL_BUF + 1), TUNNEL_BULK_BUF);
    }
}

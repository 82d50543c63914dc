//! The access-log side of one request: what the line needs is gathered while the request runs
//! (status, body bytes, peer, tries, upstream time) and written by the shard's
//! [`ShardLog`](crate::access_log::ShardLog) when it ends. With `[log] access = "off"` none
//! of this runs but one branch per request.
//!
//! The head's fields are copied out of the read buffer first: a streamed request body reuses
//! that buffer before the response is done.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use super::Conn;
use crate::access_log::Entry;
use crate::config::GroupId;
use crate::http::Version;
use crate::io::Transport;

/// RequestLog is the current request's access-log facts.
#[derive(Debug, Default)]
pub(super) struct RequestLog {
    /// Method, target, referer and user agent, copied from the head.
    head: Vec<u8>,
    method: Range<usize>,
    target: Range<usize>,
    referer: Option<Range<usize>>,
    user_agent: Option<Range<usize>>,
    /// HTTP/1.0 (else 1.1).
    http10: bool,
    /// The status sent to the client (0 = nothing sent).
    pub status: u16,
    /// Body bytes sent to the client.
    pub body_bytes: u64,
    /// The upstream group, once routed.
    pub upstream: Option<GroupId>,
    /// The peer of the last try.
    pub peer: Option<SocketAddr>,
    /// Tries made.
    pub tries: u32,
    /// First request byte sent → response head received, of the last try.
    pub upstream_time: Option<Duration>,
}

impl<C: Transport + 'static> Conn<'_, C> {
    /// Whether this shard writes an access log.
    #[inline]
    pub(super) fn logging(&self) -> bool {
        self.ctx.access_log.is_some()
    }

    /// Starts the log facts of the request whose head was just parsed (`parsed` false: the
    /// head was bad, only the status will be known).
    pub(super) fn begin_log(&mut self, parsed: bool) {
        if !self.logging() {
            return;
        }
        let log = &mut self.log;
        log.head.clear();
        let mut copy = |bytes: &[u8]| {
            let start = log.head.len();
            log.head.extend_from_slice(bytes);
            start..log.head.len()
        };
        let (method, target, referer, user_agent) = if parsed {
            let buf = &self.rbuf;
            let h = &self.head;
            let header = |name: &[u8]| {
                h.headers
                    .iter()
                    .find(|x| x.name(buf).eq_ignore_ascii_case(name))
                    .map(|x| x.value(buf))
            };
            (
                copy(h.method_range.get(buf)),
                copy(h.target.get(buf)),
                header(b"referer").map(&mut copy),
                header(b"user-agent").map(&mut copy),
            )
        } else {
            (0..0, 0..0, None, None)
        };
        *log = RequestLog {
            head: std::mem::take(&mut log.head),
            method,
            target,
            referer,
            user_agent,
            http10: parsed && self.head.version == Version::Http10,
            ..RequestLog::default()
        };
    }

    /// Writes the request's access-log line (`started`: when its head was complete).
    pub(super) fn finish_log(&mut self, started: Instant) {
        let Some(shard_log) = &self.ctx.access_log else {
            return;
        };
        let log = &self.log;
        let upstream = log
            .upstream
            .and_then(|id| self.live.group(id))
            .map(|g| g.name.as_str());
        shard_log.record(&Entry {
            client: self.client,
            method: &log.head[log.method.clone()],
            target: &log.head[log.target.clone()],
            version: if log.http10 { "HTTP/1.0" } else { "HTTP/1.1" },
            status: log.status,
            body_bytes: log.body_bytes,
            referer: log.referer.clone().map(|r| &log.head[r]),
            user_agent: log.user_agent.clone().map(|r| &log.head[r]),
            upstream,
            peer: log.peer,
            tries: log.tries,
            upstream_time: log.upstream_time,
            total_time: started.elapsed(),
        });
    }
}

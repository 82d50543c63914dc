//! HTTP/1.1 wire handling (RFC 9110/9112): head parsing with httparse into offsets, message
//! framing, the chunked codec, head rewriting for both directions, and error responses.
//!
//! Nothing here does I/O and nothing here panics on input: every problem becomes an
//! [`HttpError`], and [`HttpError::status`] is the one place that maps errors to status codes
//! (invariant 5).

mod chunked;
mod error;
mod parse;
mod rewrite;

pub use chunked::{copy_without, ChunkedDecoder};
pub use error::HttpError;
pub(crate) use error::{status_reason, write_error_response};
pub use parse::{parse_request, parse_response, ParseStatus};
pub use rewrite::{
    client_content_length, end_to_end_fields, rewrite_request, rewrite_response, rewrite_switching,
    ForwardInfo,
};
// The access log writes its numbers and addresses as the rewritten heads do.
pub(crate) use rewrite::{push_ip, push_u64};

use std::ops::Range;

/// MAX_HEADERS is the most header fields a request or response may carry (→ 431 beyond).
pub const MAX_HEADERS: usize = 100;

/// Version is the HTTP/1.x minor version of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0
    Http10,
    /// HTTP/1.1
    Http11,
}

/// Span is a run of bytes in the buffer a head was parsed from: the offsets `start..end`.
///
/// Its one accessor, [`Span::get`], never panics: a span that does not fit the buffer it is
/// applied to (or that ends before it starts) reads as no bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// The span `start..end`.
    #[inline]
    pub const fn new(start: u32, end: u32) -> Span {
        Span { start, end }
    }

    /// The offset of the first byte.
    #[inline]
    pub const fn start(self) -> u32 {
        self.start
    }

    /// The offset one past the last byte.
    #[inline]
    pub const fn end(self) -> u32 {
        self.end
    }

    /// The bytes of the span in `buf`; empty when the span does not fit `buf` (never panics).
    #[inline]
    pub fn get(self, buf: &[u8]) -> &[u8] {
        buf.get(self.range()).unwrap_or_default()
    }

    /// The offsets as a `Range<usize>`.
    #[inline]
    pub fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }

    /// The number of bytes the span covers (0 if it ends before it starts).
    #[inline]
    pub const fn len(self) -> usize {
        self.end.saturating_sub(self.start) as usize
    }

    /// Whether the span covers no bytes.
    #[inline]
    pub const fn is_empty(self) -> bool {
        self.len() == 0
    }
}

/// HeaderRange is one header field as byte offsets into the buffer the head was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeaderRange {
    /// Offsets of the field name.
    pub name: Span,
    /// Offsets of the field value (surrounding whitespace already trimmed by httparse).
    pub value: Span,
}

impl HeaderRange {
    /// The field name bytes in `buf` (empty if the offsets do not fit `buf`).
    #[inline]
    pub fn name(self, buf: &[u8]) -> &[u8] {
        self.name.get(buf)
    }
    /// The field value bytes in `buf` (empty if the offsets do not fit `buf`).
    #[inline]
    pub fn value(self, buf: &[u8]) -> &[u8] {
        self.value.get(buf)
    }
}

/// BodyKind is how a message body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body at all.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Transfer-Encoding: chunked.
    Chunked,
    /// Response only: the body runs until the upstream closes the connection.
    UntilClose,
}

/// Method is the request method, with the ones the proxy treats specially named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// HEAD (responses carry no body)
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
    /// OPTIONS
    Options,
    /// TRACE
    Trace,
    /// CONNECT (answered 501: ringlb is not a forward proxy)
    Connect,
    /// PATCH
    Patch,
    /// Any other token.
    Other,
}

impl Method {
    /// Whether RFC 9110 §9.2.2 calls the method idempotent (safe to retry once sent).
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Method::Get
                | Method::Head
                | Method::Put
                | Method::Delete
                | Method::Options
                | Method::Trace
        )
    }
}

/// RequestHead is a parsed request head, kept as offsets into the read buffer (no copies).
///
/// Reuse one per connection: `parse_request` clears and refills it, so the header vector keeps
/// its capacity and parsing allocates nothing after the first request.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// The method.
    pub method: Method,
    /// Offsets of the method token (for forwarding `Other` methods verbatim).
    pub method_range: Span,
    /// Offsets of the request target (origin-form `/path?query`, or absolute-form).
    pub target: Span,
    /// Offsets of the path part of the target (no query); for absolute-form, the path after the authority.
    /// An absolute-form target without a path (`http://host?q`) gives an empty range here; the
    /// rewriter then sends `/`. For asterisk-form (`OPTIONS *`) it is the `*`.
    pub path: Span,
    /// Offsets of the query (after `?`, without it), if any.
    pub query: Option<Span>,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// All header fields in order.
    pub headers: Vec<HeaderRange>,
    /// The Host header value, if present (exactly one allowed; two → 400).
    pub host: Option<Span>,
    /// Request body framing after the smuggling checks.
    pub body: BodyKind,
    /// Whether the client wants the connection kept after this exchange (version default +
    /// `Connection: close` / `keep-alive`).
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
    /// The request asks to switch protocols (RFC 9110 §7.8): HTTP/1.1 with an `upgrade`
    /// token among its `Connection` options and an `Upgrade` field. The rewriter then keeps
    /// `Upgrade` and sends `Connection: upgrade`; the proxy clears it for a protocol the
    /// upstream does not tunnel, so the request goes on as a plain one.
    pub upgrade: bool,
    /// Length of the head including the final CRLFCRLF.
    pub head_len: usize,
}

impl RequestHead {
    /// Whether the request carries a non-empty `Idempotency-Key` header (which makes a
    /// non-idempotent request safe to send again). `buf` is the buffer the head was parsed
    /// from; offsets outside it read as absent.
    pub fn has_idempotency_key(&self, buf: &[u8]) -> bool {
        self.headers.iter().any(|h| {
            h.name(buf).eq_ignore_ascii_case(b"idempotency-key") && !h.value(buf).is_empty()
        })
    }

    /// The values of the request's `Upgrade` fields joined by `,` (empty when it has none),
    /// for checking the protocols it asks for.
    pub fn upgrade_protocols(&self, buf: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for h in &self.headers {
            if h.name(buf).eq_ignore_ascii_case(b"upgrade") {
                if !out.is_empty() {
                    out.push(b',');
                }
                out.extend_from_slice(h.value(buf));
            }
        }
        out
    }
}

impl Default for RequestHead {
    fn default() -> Self {
        RequestHead {
            method: Method::Get,
            method_range: Span::default(),
            target: Span::default(),
            path: Span::default(),
            query: None,
            version: Version::Http11,
            headers: Vec::with_capacity(32),
            host: None,
            body: BodyKind::None,
            keep_alive: true,
            expect_continue: false,
            upgrade: false,
            head_len: 0,
        }
    }
}

/// ResponseHead is a parsed response head, kept as offsets into the read buffer.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Offsets of the reason phrase.
    pub reason: Span,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// All header fields in order.
    pub headers: Vec<HeaderRange>,
    /// Response body framing, given the request method and the status.
    pub body: BodyKind,
    /// An HTTP/1.1 response's Transfer-Encoding does not end in chunked (`chunked, gzip`): the
    /// body runs until close, and the client must be told the codings to decode it (only an
    /// HTTP/1.1 client can be). An HTTP/1.0 response's Transfer-Encoding is faulty framing and
    /// is dropped.
    pub transfer_coded: bool,
    /// Whether the upstream connection may be reused after this response.
    pub keep_alive: bool,
    /// Length of the head including the final CRLFCRLF.
    pub head_len: usize,
}

impl Default for ResponseHead {
    fn default() -> Self {
        ResponseHead {
            status: 0,
            reason: Span::default(),
            version: Version::Http11,
            headers: Vec::with_capacity(32),
            body: BodyKind::None,
            transfer_coded: false,
            keep_alive: true,
            head_len: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;

    #[test]
    fn idempotency_facts_from_a_request_head() {
        let limits = Limits::default();
        let cases: [(&[u8], bool, bool); 5] = [
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true, false),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", false, false),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nidempotency-KEY: \"8e03\"\r\nContent-Length: 0\r\n\r\n",
                false,
                true,
            ),
            (b"POST / HTTP/1.1\r\nHost: a\r\nIdempotency-Key:\r\n\r\n", false, false),
            (b"DELETE /x HTTP/1.1\r\nHost: a\r\n\r\n", true, false),
        ];
        for (raw, idempotent, key) in cases {
            let mut head = RequestHead::default();
            assert_eq!(
                parse_request(raw, &limits, &mut head).unwrap(),
                ParseStatus::Complete
            );
            assert_eq!(
                head.method.is_idempotent(),
                idempotent,
                "{}",
                String::from_utf8_lossy(raw)
            );
            assert_eq!(
                head.has_idempotency_key(raw),
                key,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        // A head that does not match its buffer never panics.
        let mut head = RequestHead::default();
        parse_request(cases[2].0, &limits, &mut head).unwrap();
        assert_eq!(head.method, Method::Post);
        assert!(!head.has_idempotency_key(b"short"));
    }
}

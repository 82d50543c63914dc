//! Request and response head parsing (httparse into offsets) and framing decisions.
//!
//! httparse parses into a stack array of header slots; every slice it returns is converted into
//! `u32` offsets relative to the start of the read buffer (the hyper technique), so a parsed head
//! borrows nothing and copies nothing. The framing rules of RFC 9112 §6 are applied here, once,
//! and are the proxy's request-smuggling defence: anything ambiguous is rejected before a single
//! byte goes upstream.

use super::{
    BodyKind, HeaderRange, HttpError, Method, RequestHead, ResponseHead, Span, Version, MAX_HEADERS,
};
use crate::config::Limits;
use std::mem::MaybeUninit;

/// MAX_RESPONSE_HEAD_BYTES is the largest upstream response head accepted (→ 502 beyond).
const MAX_RESPONSE_HEAD_BYTES: usize = 64 * 1024;

/// MAX_CONNECTION_OPTIONS is the most tokens all `Connection` fields of one message may carry
/// together. The rewriter keeps them in a fixed stack array to drop the fields they name, so
/// more than this is rejected (400 / 502) instead of being half-honoured.
pub(super) const MAX_CONNECTION_OPTIONS: usize = 32;

/// ParseStatus says whether a complete head was parsed or more bytes are needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseStatus {
    /// The head is complete; `head.head_len` bytes of the buffer belong to it.
    Complete,
    /// More bytes are needed (not an error, unless a limit is already exceeded).
    Partial,
}

/// KnownHeader is a header field name the parser or the rewriter treats specially.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KnownHeader {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Expect,
    KeepAlive,
    ProxyConnection,
    Te,
    Upgrade,
    XForwardedFor,
    XForwardedProto,
    Via,
    ProxyAuthorization,
    ProxyAuthenticate,
    Other,
}

impl KnownHeader {
    /// Whether the field is hop-by-hop: the one list both rewriters drop in both directions
    /// (RFC 9110 §7.6.1, RFC 9112 §9.6): `Connection`, `Keep-Alive`, `Proxy-Connection`, `TE`,
    /// `Transfer-Encoding`, `Upgrade` (but see `RequestHead::upgrade`: an upgrade ringlb tunnels
    /// keeps it, and a `101` keeps it), and, our
    /// call, `Proxy-Authorization` and `Proxy-Authenticate` (they address the proxy hop, RFC
    /// 9110 §11.7). Fields named by a `Connection` option are dropped too (per message).
    ///
    /// Not here, because the directions differ: `Content-Length` is dropped from both and
    /// re-emitted from the parser's framing decision (for a response to HEAD or a 304, the
    /// received value, normalised); a request also loses `X-Forwarded-Proto`, and its `X-Forwarded-For` and
    /// `Via` are rewritten with ringlb's hop appended, and `Expect: 100-continue` goes on only
    /// while ringlb waits for the upstream's 100.
    #[inline]
    pub(super) fn is_hop_by_hop(self) -> bool {
        use KnownHeader::*;
        matches!(
            self,
            Connection
                | KeepAlive
                | ProxyConnection
                | Te
                | TransferEncoding
                | Upgrade
                | ProxyAuthorization
                | ProxyAuthenticate
        )
    }
}

/// Classifies a header field name (case-insensitively; dispatches on the length first so most
/// names cost one comparison or none).
#[inline]
pub(super) fn classify(name: &[u8]) -> KnownHeader {
    use KnownHeader::*;
    let is = |lit: &[u8]| name.eq_ignore_ascii_case(lit);
    match name.len() {
        2 if is(b"te") => Te,
        3 if is(b"via") => Via,
        4 if is(b"host") => Host,
        6 if is(b"expect") => Expect,
        7 if is(b"upgrade") => Upgrade,
        10 if is(b"connection") => Connection,
        10 if is(b"keep-alive") => KeepAlive,
        14 if is(b"content-length") => ContentLength,
        15 if is(b"x-forwarded-for") => XForwardedFor,
        16 if is(b"proxy-connection") => ProxyConnection,
        17 if is(b"transfer-encoding") => TransferEncoding,
        17 if is(b"x-forwarded-proto") => XForwardedProto,
        18 if is(b"proxy-authenticate") => ProxyAuthenticate,
        19 if is(b"proxy-authorization") => ProxyAuthorization,
        _ => Other,
    }
}

/// Trims optional whitespace (SP / HTAB, RFC 9110 §5.6.3) from both ends.
#[inline]
pub(super) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The non-empty, OWS-trimmed elements of a comma-separated field value (RFC 9110 §5.6.1:
/// empty list elements are ignored).
#[inline]
pub(super) fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|t| !t.is_empty())
}

/// Parses a strict decimal: one or more ASCII digits, no sign, no whitespace, no overflow.
#[inline]
fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// Folds one Content-Length field value into `acc` (RFC 9112 §6.3 item 5, RFC 9110 §8.6).
///
/// The value may be a list of identical decimals (`5, 5`), as may several fields be; every
/// element must be a strict decimal and all must agree. Returns false if not.
#[inline]
pub(super) fn fold_content_length(value: &[u8], acc: &mut Option<u64>) -> bool {
    for item in value.split(|&b| b == b',') {
        let Some(n) = parse_decimal(trim_ows(item)) else {
            return false;
        };
        match *acc {
            Some(prev) if prev != n => return false,
            _ => *acc = Some(n),
        }
    }
    true
}

/// TransferCodings summarises all Transfer-Encoding fields of a message.
#[derive(Debug, Default, Clone, Copy)]
struct TransferCodings {
    /// At least one Transfer-Encoding field was present (even an empty one).
    present: bool,
    /// How often `chunked` appeared.
    chunked: u32,
    /// Whether the last coding in the list is `chunked`.
    last_chunked: bool,
    /// Whether any coding other than `chunked` appeared.
    other: bool,
}

impl TransferCodings {
    /// Adds one field value: codings are a comma list, across fields in order (RFC 9110 §5.3).
    #[inline]
    fn add(&mut self, value: &[u8]) {
        self.present = true;
        for coding in list_items(value) {
            if coding.eq_ignore_ascii_case(b"chunked") {
                self.chunked += 1;
                self.last_chunked = true;
            } else {
                self.other = true;
                self.last_chunked = false;
            }
        }
    }
}

/// ConnectionOptions summarises all Connection fields of a message (RFC 9112 §9.3/§9.6).
#[derive(Debug, Default, Clone, Copy)]
struct ConnectionOptions {
    /// A `close` token was present.
    close: bool,
    /// A `keep-alive` token was present.
    keep_alive: bool,
    /// An `upgrade` token was present.
    upgrade: bool,
    /// Tokens seen in total (bounded by MAX_CONNECTION_OPTIONS).
    count: usize,
}

impl ConnectionOptions {
    /// Adds one field value; fails with `err` when the total token count exceeds the bound.
    #[inline]
    fn add(&mut self, value: &[u8], err: HttpError) -> Result<(), HttpError> {
        // Fast path for the two values nearly every message carries.
        if value.eq_ignore_ascii_case(b"keep-alive") {
            self.keep_alive = true;
            self.count += 1;
        } else if value.eq_ignore_ascii_case(b"close") {
            self.close = true;
            self.count += 1;
        } else {
            self.add_list(value);
        }
        if self.count > MAX_CONNECTION_OPTIONS {
            return Err(err);
        }
        Ok(())
    }

    /// Adds the tokens of a general Connection list.
    fn add_list(&mut self, value: &[u8]) {
        for token in list_items(value) {
            self.count += 1;
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            }
        }
    }

    /// Whether the connection persists, given the message version (RFC 9112 §9.3).
    #[inline]
    fn persistent(&self, version: Version) -> bool {
        match version {
            Version::Http11 => !self.close,
            Version::Http10 => self.keep_alive && !self.close,
        }
    }
}

/// The offsets of `s` inside the buffer starting at `base` of length `len`.
///
/// Every non-empty slice httparse returns lies inside the buffer. An empty slice may be a
/// static `""`; it maps to `0..0`, which denotes the same (empty) bytes.
#[inline]
fn span(base: usize, len: usize, s: &[u8]) -> Span {
    let start = (s.as_ptr() as usize).wrapping_sub(base);
    match start.checked_add(s.len()) {
        // len <= u32::MAX is guaranteed by the callers, so the casts are lossless.
        Some(end) if end <= len => Span::new(start as u32, end as u32),
        _ => Span::default(),
    }
}

/// Counts the empty lines (CR / LF bytes) httparse skips before a start line (RFC 9112 §2.2).
#[inline]
fn leading_empty_lines(buf: &[u8]) -> usize {
    buf.iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len())
}

/// Checks an incomplete request for an over-long request line (→ 414) before reading more.
fn check_partial_request_line(buf: &[u8], limits: &Limits) -> Result<(), HttpError> {
    let max = limits.max_request_line_bytes;
    let start = leading_empty_lines(buf);
    let rest = buf.get(start..).unwrap_or_default();
    if rest.len() <= max {
        // Whatever the line turns out to be, it is within the limit so far.
        return Ok(());
    }
    // Look for the end of the line only as far as the limit allows (+ CRLF).
    let window = rest.get(..max.saturating_add(2)).unwrap_or(rest);
    match window.iter().position(|&b| b == b'\n') {
        None => Err(HttpError::UriTooLong),
        Some(nl) => {
            let line = if nl > 0 && window.get(nl - 1) == Some(&b'\r') {
                nl - 1
            } else {
                nl
            };
            if line > max {
                Err(HttpError::UriTooLong)
            } else {
                Ok(())
            }
        }
    }
}

/// Maps an httparse request error to the answer the client gets.
fn request_error(err: httparse::Error) -> HttpError {
    match err {
        httparse::Error::TooManyHeaders => HttpError::HeaderTooLarge,
        httparse::Error::Token => HttpError::BadRequest("invalid request line"),
        httparse::Error::Version => HttpError::BadRequest("unsupported HTTP version"),
        // A header line starting with whitespace (obs-fold, RFC 9112 §5.2) and whitespace
        // before the colon (RFC 9112 §5.1) end up here.
        httparse::Error::HeaderName => HttpError::BadRequest("invalid header name"),
        httparse::Error::HeaderValue => HttpError::BadRequest("invalid header value"),
        httparse::Error::NewLine => HttpError::BadRequest("invalid line ending"),
        _ => HttpError::BadRequest("malformed request head"),
    }
}

/// Maps a method token (case-sensitive, RFC 9110 §9.1) to [`Method`].
#[inline]
fn method_of(token: &[u8]) -> Method {
    match token {
        b"GET" => Method::Get,
        b"HEAD" => Method::Head,
        b"POST" => Method::Post,
        b"PUT" => Method::Put,
        b"DELETE" => Method::Delete,
        b"OPTIONS" => Method::Options,
        b"TRACE" => Method::Trace,
        b"CONNECT" => Method::Connect,
        b"PATCH" => Method::Patch,
        _ => Method::Other,
    }
}

/// TargetParts is the path and query of a request target, as offsets.
type TargetParts = (Span, Option<Span>);

/// Splits a path-and-query starting at offset `at` into path and query offsets.
#[inline]
fn split_query(tail: &[u8], at: u32) -> TargetParts {
    let end = at + tail.len() as u32;
    match tail.iter().position(|&b| b == b'?') {
        Some(q) => (
            Span::new(at, at + q as u32),
            Some(Span::new(at + q as u32 + 1, end)),
        ),
        None => (Span::new(at, end), None),
    }
}

/// Finds path and query of a request target (RFC 9112 §3.2) starting at offset `at`.
///
/// - origin-form `/a/b?x=1`: path `/a/b`, query `x=1`;
/// - absolute-form `http://host:port/p?q` (scheme http/https, case-insensitive): path `/p`,
///   query `q`. If the path is empty (`http://host?q`) the path range is empty, positioned at the
///   end of the authority, and the rewriter sends `/` upstream (RFC 9112 §3.2.1);
/// - asterisk-form `*`, for OPTIONS only: path `*`, no query.
///
/// Fragments (`#`) are not part of any request-target form and are rejected, as are
/// authority-form (CONNECT only, answered 501 earlier), empty hosts and userinfo
/// (RFC 9110 §4.2.1, §4.2.4).
fn parse_target(target: &[u8], at: u32, method: Method) -> Result<TargetParts, HttpError> {
    if target.contains(&b'#') {
        return Err(HttpError::BadRequest("fragment in request target"));
    }
    match target {
        [b'/', ..] => Ok(split_query(target, at)),
        b"*" if method == Method::Options => Ok((Span::new(at, at + 1), None)),
        b"*" => Err(HttpError::BadRequest("asterisk-form is only for OPTIONS")),
        _ => {
            let has_prefix = |p: &[u8]| {
                target
                    .get(..p.len())
                    .is_some_and(|s| s.eq_ignore_ascii_case(p))
            };
            let scheme_len = if has_prefix(b"http://") {
                7
            } else if has_prefix(b"https://") {
                8
            } else {
                return Err(HttpError::BadRequest("invalid request target"));
            };
            let rest = target.get(scheme_len..).unwrap_or_default();
            let auth_len = rest
                .iter()
                .position(|&b| b == b'/' || b == b'?')
                .unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(auth_len);
            if authority.is_empty() || authority.contains(&b'@') {
                return Err(HttpError::BadRequest("invalid authority in request target"));
            }
            Ok(split_query(tail, at + (scheme_len + auth_len) as u32))
        }
    }
}

/// Whether an `Expect` value asks for `100-continue` (RFC 9110 §10.1.1, case-insensitive).
#[inline]
pub(super) fn wants_continue(value: &[u8]) -> bool {
    list_items(value).any(|e| e.eq_ignore_ascii_case(b"100-continue"))
}

/// Parses a request head from the start of `buf` into `head`.
///
/// Returns `Partial` when more bytes are needed, `Complete` when `head` is filled in (the head
/// is `buf[..head.head_len]`; what follows is body or the next request). On `Err` the contents
/// of `head` are unspecified. Errors, each answered by `http::write_error_response`:
/// - 414 when the request line exceeds `limits.max_request_line_bytes` (checked while partial too);
/// - 431 when the head reaches `limits.max_header_bytes` or has more than [`MAX_HEADERS`] fields;
/// - 400 for syntax errors (including obs-fold and whitespace before a colon), a bad target,
///   missing/duplicate Host, and ambiguous framing (RFC 9112 §6.3);
/// - 501 for CONNECT and transfer codings other than `chunked`;
/// - 413 when Content-Length exceeds `limits.max_body_bytes` (the caller enforces the limit on
///   chunked bodies while streaming).
///
/// Leading empty lines before the request line are skipped (RFC 9112 §2.2) and count towards
/// `head_len`. Allocates nothing once `head.headers` has grown to the connection's needs.
pub fn parse_request(
    buf: &[u8],
    limits: &Limits,
    head: &mut RequestHead,
) -> Result<ParseStatus, HttpError> {
    // Parse no further than the head limit: a complete head fits in it, a partial one that
    // fills it is 431. This also bounds the work per call and keeps offsets within u32.
    let cap = buf
        .len()
        .min(limits.max_header_bytes)
        .min(u32::MAX as usize);
    let window = buf.get(..cap).unwrap_or_default();
    let base = window.as_ptr() as usize;

    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(window, &mut slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            check_partial_request_line(buf, limits)?;
            if buf.len() >= limits.max_header_bytes {
                return Err(HttpError::HeaderTooLarge);
            }
            return Ok(ParseStatus::Partial);
        }
        Err(e) => return Err(request_error(e)),
    };

    // Request line: method SP request-target SP HTTP-version (RFC 9112 §3).
    let method_bytes = req.method.unwrap_or_default().as_bytes();
    let method_range = span(base, cap, method_bytes);
    let method = method_of(method_bytes);
    if method == Method::Connect {
        // ringlb is a gateway, not a forward proxy: no tunnels.
        return Err(HttpError::NotImplemented("CONNECT"));
    }
    let target_bytes = req.path.unwrap_or_default().as_bytes();
    let target = span(base, cap, target_bytes);
    let line_len =
        (target.end() as usize + " HTTP/1.1".len()).saturating_sub(method_range.start() as usize);
    if line_len > limits.max_request_line_bytes {
        return Err(HttpError::UriTooLong);
    }
    let version = match req.version {
        Some(0) => Version::Http10,
        // httparse only accepts HTTP/1.0 and HTTP/1.1.
        _ => Version::Http11,
    };
    let (path, query) = parse_target(target_bytes, target.start(), method)?;

    // Header fields: record offsets and collect what framing and routing need, in one pass.
    head.headers.clear();
    let mut host = None;
    let mut content_length: Option<u64> = None;
    let mut has_content_length = false;
    let mut codings = TransferCodings::default();
    let mut connection = ConnectionOptions::default();
    let mut expect_continue = false;
    let mut upgrade_field = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = span(base, cap, h.value);
        head.headers.push(HeaderRange {
            name: span(base, cap, name),
            value,
        });
        match classify(name) {
            KnownHeader::Host => {
                // RFC 9112 §3.2: more than one Host field → 400.
                if host.is_some() {
                    return Err(HttpError::BadRequest("more than one Host header"));
                }
                host = Some(value);
            }
            KnownHeader::ContentLength => {
                has_content_length = true;
                if !fold_content_length(h.value, &mut content_length) {
                    return Err(HttpError::BadRequest("invalid Content-Length"));
                }
            }
            KnownHeader::TransferEncoding => codings.add(h.value),
            KnownHeader::Connection => connection.add(
                h.value,
                HttpError::BadRequest("too many Connection options"),
            )?,
            KnownHeader::Expect => expect_continue |= wants_continue(h.value),
            KnownHeader::Upgrade => upgrade_field |= !trim_ows(h.value).is_empty(),
            _ => {}
        }
    }

    // RFC 9112 §3.2: a client MUST send Host in every HTTP/1.1 request; a server MUST answer
    // 400 to one without it.
    if host.is_none() && version == Version::Http11 {
        return Err(HttpError::BadRequest("missing Host header"));
    }

    // Message body length, RFC 9112 §6.3.
    let body = if codings.present {
        // §6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing.
        if version == Version::Http10 {
            return Err(HttpError::BadRequest(
                "Transfer-Encoding in HTTP/1.0 request",
            ));
        }
        // §6.3 item 3 (and §6.1): both fields may be a smuggling attempt; a server may reject,
        // and a proxy that forwards must pick one. Rejecting is the safe choice.
        if has_content_length {
            return Err(HttpError::BadRequest(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        // §7.1 / RFC 9110 §7.8: chunked must not be applied more than once.
        if codings.chunked > 1 {
            return Err(HttpError::BadRequest("chunked applied more than once"));
        }
        // §6.3 item 4: if chunked is not the final coding of a request, the length cannot be
        // determined → 400 and close.
        if !codings.last_chunked {
            return Err(HttpError::BadRequest(
                "final transfer coding is not chunked",
            ));
        }
        // §6.1: a transfer coding the server does not understand → 501.
        if codings.other {
            return Err(HttpError::NotImplemented("transfer-coding"));
        }
        BodyKind::Chunked
    } else if let Some(n) = content_length {
        // §6.3 item 6: a valid Content-Length gives the length (invalid ones were 400 above,
        // item 5).
        if limits.max_body_bytes.is_some_and(|max| n > max) {
            return Err(HttpError::PayloadTooLarge);
        }
        BodyKind::Length(n)
    } else {
        // §6.3 item 7: a request without either has no body.
        BodyKind::None
    };

    // RFC 9110 §10.1.1: 100-continue only makes sense with content, and an HTTP/1.0 request's
    // expectation MUST be ignored.
    let has_content =
        matches!(body, BodyKind::Chunked) || matches!(body, BodyKind::Length(n) if n > 0);
    head.method = method;
    head.method_range = method_range;
    head.target = target;
    head.path = path;
    head.query = query;
    head.version = version;
    head.host = host;
    head.body = body;
    head.keep_alive = connection.persistent(version);
    head.expect_continue = expect_continue && has_content && version == Version::Http11;
    // RFC 9110 §7.8: a server ignores an Upgrade received in HTTP/1.0, and Upgrade only
    // means something when `Connection: upgrade` names it.
    head.upgrade = connection.upgrade && upgrade_field && version == Version::Http11;
    head.head_len = head_len;
    Ok(ParseStatus::Complete)
}

/// Finds the reason phrase of the status line at the start of `head` (after empty lines).
///
/// Used when httparse reports an empty reason: it substitutes a static `""` for reasons
/// containing obs-text, which we forward verbatim instead.
fn reason_span(head: &[u8]) -> Span {
    let start = leading_empty_lines(head);
    let line = head.get(start..).unwrap_or_default();
    let nl = line.iter().position(|&b| b == b'\n').unwrap_or(line.len());
    let mut end = nl;
    if nl > 0 && line.get(nl - 1) == Some(&b'\r') {
        end = nl - 1;
    }
    // "HTTP/1.1 200 " is 13 bytes; httparse validated the version and code.
    let reason_start = end.min(13);
    Span::new((start + reason_start) as u32, (start + end) as u32)
}

/// Parses a response head from the start of `buf` into `head`.
///
/// Returns `Partial` when more bytes are needed. Errors are `HttpError::BadGateway`: a syntax
/// error, a status outside 100–599 or too many header fields is `"invalid response"`, a
/// head beyond 64 KiB `"response head too large"`, an invalid or conflicting Content-Length
/// `"invalid response content-length"` (RFC 9112 §6.3 item 5: a proxy answers 502).
///
/// Framing (RFC 9112 §6.3): responses to HEAD, 1xx, 204 and 304 have no body; otherwise a
/// Transfer-Encoding whose final coding is `chunked` means chunked (Content-Length ignored), any
/// other Transfer-Encoding means until-close, a valid Content-Length gives the length, and
/// otherwise the body runs until close. `keep_alive` starts from the version default, follows
/// the Connection tokens, and is false for until-close bodies, for messages that carried both
/// Transfer-Encoding and Content-Length, and for 101.
pub fn parse_response(
    buf: &[u8],
    request_method: Method,
    head: &mut ResponseHead,
) -> Result<ParseStatus, HttpError> {
    let cap = buf.len().min(MAX_RESPONSE_HEAD_BYTES);
    let window = buf.get(..cap).unwrap_or_default();
    let base = window.as_ptr() as usize;

    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, window, &mut slots);
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= MAX_RESPONSE_HEAD_BYTES {
                return Err(HttpError::BadGateway("response head too large"));
            }
            return Ok(ParseStatus::Partial);
        }
        Err(_) => return Err(HttpError::BadGateway("invalid response")),
    };

    let status = resp.code.unwrap_or_default();
    if !(100..=599).contains(&status) {
        return Err(HttpError::BadGateway("invalid response"));
    }
    let version = match resp.version {
        Some(0) => Version::Http10,
        _ => Version::Http11,
    };

    head.headers.clear();
    let mut content_length: Option<u64> = None;
    let mut has_content_length = false;
    let mut content_length_valid = true;
    let mut codings = TransferCodings::default();
    let mut connection = ConnectionOptions::default();
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        head.headers.push(HeaderRange {
            name: span(base, cap, name),
            value: span(base, cap, h.value),
        });
        match classify(name) {
            KnownHeader::ContentLength => {
                has_content_length = true;
                content_length_valid &= fold_content_length(h.value, &mut content_length);
            }
            KnownHeader::TransferEncoding => codings.add(h.value),
            KnownHeader::Connection => {
                connection.add(h.value, HttpError::BadGateway("invalid response"))?
            }
            _ => {}
        }
    }

    // Message body length, RFC 9112 §6.3.
    let mut reusable = true;
    let body = if request_method == Method::Head
        || (100..200).contains(&status)
        || status == 204
        || status == 304
    {
        // Item 1: never a body, whatever the header fields say.
        BodyKind::None
    } else if codings.present {
        if version == Version::Http10 {
            // §6.1: Transfer-Encoding in HTTP/1.0 means faulty framing; only the close of the
            // connection delimits the message reliably.
            BodyKind::UntilClose
        } else if codings.last_chunked {
            // Item 3: Transfer-Encoding overrides Content-Length. Such a message "ought to be
            // handled as an error"; we forward it (the rewriter drops Content-Length) but do
            // not reuse the connection.
            if has_content_length {
                reusable = false;
            }
            BodyKind::Chunked
        } else {
            // Item 4: final coding not chunked in a response → read until close.
            BodyKind::UntilClose
        }
    } else if has_content_length {
        // Item 5: an invalid Content-Length in a response → the proxy answers 502.
        match content_length {
            Some(n) if content_length_valid => BodyKind::Length(n),
            _ => return Err(HttpError::BadGateway("invalid response content-length")),
        }
    } else {
        // Item 8: otherwise the body ends when the server closes.
        BodyKind::UntilClose
    };

    head.status = status;
    head.reason = match resp.reason {
        Some(r) if !r.is_empty() => span(base, cap, r.as_bytes()),
        // Empty, or obs-text that httparse replaced by a static "": find it in the line.
        _ => reason_span(window.get(..head_len).unwrap_or_default()),
    };
    head.version = version;
    head.body = body;
    head.transfer_coded = codings.present && version == Version::Http11 && !codings.last_chunked;
    head.keep_alive =
        connection.persistent(version) && reusable && body != BodyKind::UntilClose && status != 101;
    head.head_len = head_len;
    Ok(ParseStatus::Complete)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    fn req(raw: &[u8]) -> Result<RequestHead, HttpError> {
        req_with(raw, &limits())
    }

    fn req_with(raw: &[u8], limits: &Limits) -> Result<RequestHead, HttpError> {
        let mut head = RequestHead::default();
        match parse_request(raw, limits, &mut head)? {
            ParseStatus::Complete => Ok(head),
            ParseStatus::Partial => {
                panic!("unexpected partial: {:?}", String::from_utf8_lossy(raw))
            }
        }
    }

    fn status(raw: &[u8], limits: &Limits) -> Result<ParseStatus, HttpError> {
        parse_request(raw, limits, &mut RequestHead::default())
    }

    fn resp(raw: &[u8], method: Method) -> Result<ResponseHead, HttpError> {
        let mut head = ResponseHead::default();
        match parse_response(raw, method, &mut head)? {
            ParseStatus::Complete => Ok(head),
            ParseStatus::Partial => panic!("unexpected partial"),
        }
    }

    fn body_of(raw: &[u8]) -> Result<BodyKind, HttpError> {
        req(raw).map(|h| h.body)
    }

    // ---- request line, target, offsets ----

    #[test]
    fn parses_simple_get_with_offsets() {
        let raw = b"GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\nBODY";
        let h = req(raw).unwrap();
        assert_eq!(h.method, Method::Get);
        assert_eq!(h.method_range.get(raw), b"GET");
        assert_eq!(h.target.get(raw), b"/a/b?x=1&y=2");
        assert_eq!(h.path.get(raw), b"/a/b");
        assert_eq!(h.query.unwrap().get(raw), b"x=1&y=2");
        assert_eq!(h.version, Version::Http11);
        assert_eq!(h.host.unwrap().get(raw), b"example.com");
        assert_eq!(h.headers.len(), 2);
        assert_eq!(h.headers[1].name(raw), b"Accept");
        assert_eq!(h.headers[1].value(raw), b"*/*");
        assert_eq!(h.body, BodyKind::None);
        assert!(h.keep_alive);
        assert!(!h.expect_continue);
        assert_eq!(h.head_len, raw.len() - 4);
    }

    #[test]
    fn methods() {
        for (m, want) in [
            ("GET", Method::Get),
            ("HEAD", Method::Head),
            ("POST", Method::Post),
            ("PUT", Method::Put),
            ("DELETE", Method::Delete),
            ("OPTIONS", Method::Options),
            ("TRACE", Method::Trace),
            ("PATCH", Method::Patch),
            ("PROPFIND", Method::Other),
            ("get", Method::Other),
        ] {
            let raw = format!("{m} / HTTP/1.1\r\nHost: h\r\n\r\n");
            let h = req(raw.as_bytes()).unwrap();
            assert_eq!(h.method, want, "{m}");
            assert_eq!(h.method_range.get(raw.as_bytes()), m.as_bytes());
        }
        assert_eq!(
            req(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n").unwrap_err(),
            HttpError::NotImplemented("CONNECT")
        );
    }

    #[test]
    fn versions() {
        assert_eq!(
            req(b"GET / HTTP/1.0\r\n\r\n").unwrap().version,
            Version::Http10
        );
        for raw in [
            &b"GET / HTTP/2.0\r\nHost: h\r\n\r\n"[..],
            b"GET / HTTP/0.9\r\nHost: h\r\n\r\n",
            b"GET / HTTP/1.2\r\nHost: h\r\n\r\n",
            b"GET /\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert!(
                matches!(req(raw), Err(HttpError::BadRequest(_))),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn absolute_form_targets() {
        let raw = b"GET http://example.com:8080/p/q?x=1 HTTP/1.1\r\nHost: example.com:8080\r\n\r\n";
        let h = req(raw).unwrap();
        assert_eq!(h.target.get(raw), b"http://example.com:8080/p/q?x=1");
        assert_eq!(h.path.get(raw), b"/p/q");
        assert_eq!(h.query.unwrap().get(raw), b"x=1");

        let raw = b"GET HTTPS://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n";
        let h = req(raw).unwrap();
        assert_eq!(
            h.path,
            Span::new(23, 23),
            "empty path at the end of the authority"
        );
        assert_eq!(h.query, None);

        let raw = b"GET http://example.com?a=b HTTP/1.1\r\nHost: example.com\r\n\r\n";
        let h = req(raw).unwrap();
        assert_eq!(h.path.get(raw), b"");
        assert_eq!(h.query.unwrap().get(raw), b"a=b");

        for bad in [
            &b"GET http:///p HTTP/1.1\r\nHost: h\r\n\r\n"[..],
            b"GET http://user@h/p HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET ftp://h/p HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET example.com HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /p#frag HTTP/1.1\r\nHost: h\r\n\r\n",
        ] {
            assert!(
                matches!(req(bad), Err(HttpError::BadRequest(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn asterisk_form_only_for_options() {
        let raw = b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n";
        let h = req(raw).unwrap();
        assert_eq!(h.path.get(raw), b"*");
        assert_eq!(h.query, None);
        assert_eq!(
            req(b"GET * HTTP/1.1\r\nHost: h\r\n\r\n").unwrap_err(),
            HttpError::BadRequest("asterisk-form is only for OPTIONS")
        );
    }

    #[test]
    fn empty_query_and_leading_empty_lines() {
        let raw = b"GET /p? HTTP/1.1\r\nHost: h\r\n\r\n";
        let h = req(raw).unwrap();
        assert_eq!(h.path.get(raw), b"/p");
        assert_eq!(h.query.unwrap().get(raw), b"");

        let raw = b"\r\n\r\nGET /x HTTP/1.1\r\nHost: h\r\n\r\n";
        let h = req(raw).unwrap();
        assert_eq!(h.path.get(raw), b"/x");
        assert_eq!(h.method_range.get(raw), b"GET");
        assert_eq!(h.head_len, raw.len());
    }

    #[test]
    fn partial_heads() {
        let full = b"GET /x HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n";
        for i in 0..full.len() {
            assert_eq!(
                status(&full[..i], &limits()),
                Ok(ParseStatus::Partial),
                "prefix {i}"
            );
        }
        assert_eq!(status(full, &limits()), Ok(ParseStatus::Complete));
    }

    // ---- limits ----

    #[test]
    fn request_line_limit_414() {
        let lim = Limits {
            max_header_bytes: 1024,
            max_request_line_bytes: 64,
            max_body_bytes: None,
            ..Limits::default()
        };
        // Exactly at the limit: "GET " + path + " HTTP/1.1" == 64.
        let path = "/".repeat(64 - 13);
        let raw = format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n");
        assert!(req_with(raw.as_bytes(), &lim).is_ok());
        // One over, complete.
        let raw = format!("GET {path}a HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(
            req_with(raw.as_bytes(), &lim).unwrap_err(),
            HttpError::UriTooLong
        );
        // One over, request line complete but head not.
        let raw = format!("GET {path}a HTTP/1.1\r\nHost: h\r\n");
        assert_eq!(status(raw.as_bytes(), &lim), Err(HttpError::UriTooLong));
        // No newline yet, but already longer than the limit.
        let raw = format!("GET /{}", "a".repeat(64));
        assert_eq!(status(raw.as_bytes(), &lim), Err(HttpError::UriTooLong));
        // No newline yet, at the limit: keep reading.
        let raw = format!("GET /{}", "a".repeat(59));
        assert_eq!(raw.len(), 64);
        assert_eq!(status(raw.as_bytes(), &lim), Ok(ParseStatus::Partial));
        // Request line longer than the whole head limit: still 414, not 431.
        let raw = format!("GET /{}", "a".repeat(2000));
        assert_eq!(status(raw.as_bytes(), &lim), Err(HttpError::UriTooLong));
    }

    #[test]
    fn header_size_limit_431() {
        let lim = Limits {
            max_header_bytes: 256,
            max_request_line_bytes: 128,
            max_body_bytes: None,
            ..Limits::default()
        };
        let mut raw = b"GET / HTTP/1.1\r\nHost: h\r\nX-Fill: ".to_vec();
        let fill = 256 - raw.len() - 4;
        raw.extend(std::iter::repeat_n(b'a', fill));
        raw.extend_from_slice(b"\r\n\r\n");
        assert_eq!(raw.len(), 256);
        // Exactly at the limit: complete, even with more bytes (a body) behind it.
        let mut with_body = raw.clone();
        with_body.extend_from_slice(&[b'z'; 1000]);
        assert_eq!(req_with(&with_body, &lim).unwrap().head_len, 256);
        // One byte more in a header: 431 once the buffer reaches the limit.
        let mut big = b"GET / HTTP/1.1\r\nHost: h\r\nX-Fill: a".to_vec();
        big.extend(std::iter::repeat_n(b'a', fill));
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(status(&big, &lim), Err(HttpError::HeaderTooLarge));
        assert_eq!(status(&big[..255], &lim), Ok(ParseStatus::Partial));
        assert_eq!(status(&big[..256], &lim), Err(HttpError::HeaderTooLarge));
    }

    #[test]
    fn too_many_headers_431() {
        let mut raw = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
        for i in 0..MAX_HEADERS - 1 {
            raw.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        let mut ok = raw.clone();
        ok.extend_from_slice(b"\r\n");
        assert_eq!(req(&ok).unwrap().headers.len(), MAX_HEADERS);
        raw.extend_from_slice(b"X-Last: v\r\n\r\n");
        assert_eq!(req(&raw).unwrap_err(), HttpError::HeaderTooLarge);
    }

    // ---- header syntax ----

    #[test]
    fn obs_fold_and_bad_header_syntax_400() {
        for raw in [
            &b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n folded\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n\tfolded\r\n\r\n",
            b"GET / HTTP/1.1\r\n Host: h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\0b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX A: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n: b\r\n\r\n",
            b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET / HTTP/1.1\rHost: h\r\n\r\n",
        ] {
            assert!(
                matches!(req(raw), Err(HttpError::BadRequest(_))),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn host_rules() {
        assert_eq!(
            req(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n").unwrap_err(),
            HttpError::BadRequest("missing Host header")
        );
        assert_eq!(
            req(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n").unwrap_err(),
            HttpError::BadRequest("more than one Host header")
        );
        assert_eq!(
            req(b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n").unwrap_err(),
            HttpError::BadRequest("more than one Host header")
        );
        let h = req(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(h.host, None);
        let raw = b"GET / HTTP/1.1\r\nHOST:   example.com:80  \r\n\r\n";
        assert_eq!(req(raw).unwrap().host.unwrap().get(raw), b"example.com:80");
    }

    // ---- framing / smuggling ----

    #[test]
    fn content_length_rules() {
        let ok = |v: &str| {
            body_of(format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {v}\r\n\r\n").as_bytes())
        };
        assert_eq!(ok("0"), Ok(BodyKind::Length(0)));
        assert_eq!(ok("5"), Ok(BodyKind::Length(5)));
        assert_eq!(ok("005"), Ok(BodyKind::Length(5)));
        assert_eq!(ok("5, 5"), Ok(BodyKind::Length(5)));
        assert_eq!(ok("5,5"), Ok(BodyKind::Length(5)));
        // OWS around the value is legal field syntax (httparse trims it).
        assert_eq!(ok("  5\t"), Ok(BodyKind::Length(5)));
        assert_eq!(ok("18446744073709551615"), Ok(BodyKind::Length(u64::MAX)));
        for bad in [
            "+5",
            "-5",
            "5a",
            "0x5",
            "5 5",
            "5, 6",
            "5,",
            ",5",
            "",
            "5.0",
            "18446744073709551616",
            "99999999999999999999999",
        ] {
            assert_eq!(
                ok(bad),
                Err(HttpError::BadRequest("invalid Content-Length")),
                "{bad:?}"
            );
        }
        // Several fields: identical → fine, differing → 400.
        assert_eq!(
            body_of(
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n"
            ),
            Ok(BodyKind::Length(3))
        );
        assert_eq!(
            body_of(
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"
            ),
            Err(HttpError::BadRequest("invalid Content-Length"))
        );
        assert_eq!(
            body_of(b"POST / HTTP/1.0\r\nContent-Length: 7\r\n\r\n"),
            Ok(BodyKind::Length(7))
        );
    }

    #[test]
    fn body_limit_413() {
        let lim = Limits {
            max_body_bytes: Some(10),
            ..Limits::default()
        };
        let raw = |n: u32| format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {n}\r\n\r\n");
        assert_eq!(
            req_with(raw(10).as_bytes(), &lim).unwrap().body,
            BodyKind::Length(10)
        );
        assert_eq!(
            req_with(raw(11).as_bytes(), &lim).unwrap_err(),
            HttpError::PayloadTooLarge
        );
    }

    #[test]
    fn transfer_encoding_rules() {
        let te = |v: &str| {
            body_of(
                format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: {v}\r\n\r\n").as_bytes(),
            )
        };
        assert_eq!(te("chunked"), Ok(BodyKind::Chunked));
        assert_eq!(te("CHUNKED"), Ok(BodyKind::Chunked));
        assert_eq!(te(" chunked "), Ok(BodyKind::Chunked));
        assert_eq!(te(",chunked,"), Ok(BodyKind::Chunked));
        let not_final = Err(HttpError::BadRequest(
            "final transfer coding is not chunked",
        ));
        assert_eq!(te("chunked, gzip"), not_final);
        assert_eq!(te("gzip"), not_final);
        assert_eq!(te("identity"), not_final);
        assert_eq!(te(""), not_final);
        assert_eq!(te("chunked;q=1"), not_final);
        assert_eq!(te("xchunked"), not_final);
        assert_eq!(
            te("chunked, chunked"),
            Err(HttpError::BadRequest("chunked applied more than once"))
        );
        let unknown = Err(HttpError::NotImplemented("transfer-coding"));
        assert_eq!(te("gzip, chunked"), unknown);
        assert_eq!(te("deflate,chunked"), unknown);
        assert_eq!(te("identity, chunked"), unknown);
        assert_eq!(te("foo, chunked"), unknown);

        // Lists across several fields, in order.
        assert_eq!(
            body_of(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"),
            unknown
        );
        assert_eq!(
            body_of(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n"),
            not_final
        );
        assert_eq!(
            body_of(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n"),
            Err(HttpError::BadRequest("chunked applied more than once"))
        );
    }

    #[test]
    fn smuggling_cl_te() {
        let both = Err(HttpError::BadRequest(
            "both Transfer-Encoding and Content-Length",
        ));
        assert_eq!(
            body_of(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
            both
        );
        assert_eq!(
            body_of(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n"),
            both
        );
        assert_eq!(
            body_of(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HttpError::BadRequest(
                "Transfer-Encoding in HTTP/1.0 request"
            ))
        );
        // Header-name tricks do not slip through: whitespace before the colon is a 400.
        assert!(matches!(
            body_of(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n"),
            Err(HttpError::BadRequest(_))
        ));
    }

    #[test]
    fn upgrade_rules() {
        let up = |raw: &[u8]| req(raw).unwrap().upgrade;
        assert!(up(
            b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        ));
        assert!(up(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, UPGRADE\r\nUpgrade: x\r\n\r\n"
        ));
        // Both are needed, and HTTP/1.1.
        assert!(!up(
            b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n"
        ));
        assert!(!up(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\n\r\n"
        ));
        assert!(!up(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: \r\n\r\n"
        ));
        assert!(!up(
            b"GET / HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
        ));
        assert!(!up(
            b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgraded\r\n\r\n"
        ));
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |raw: &[u8]| req(raw).unwrap().keep_alive;
        assert!(ka(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(ka(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n"
        ));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        ));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, CLOSE\r\n\r\n"
        ));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: foo\r\nConnection: close\r\n\r\n"
        ));
        assert!(ka(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: closed\r\n\r\n"
        ));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(ka(
            b"GET / HTTP/1.0\r\nConnection: foo , keep-alive\r\n\r\n"
        ));
        assert!(!ka(
            b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"
        ));

        let many = format!(
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: {}\r\n\r\n",
            vec!["x"; MAX_CONNECTION_OPTIONS + 1].join(",")
        );
        assert_eq!(
            req(many.as_bytes()).unwrap_err(),
            HttpError::BadRequest("too many Connection options")
        );
    }

    #[test]
    fn expect_continue_rules() {
        let ec = |raw: &[u8]| req(raw).unwrap().expect_continue;
        assert!(ec(
            b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
        ));
        assert!(ec(b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert!(!ec(
            b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!ec(
            b"GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n"
        ));
        assert!(!ec(
            b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
        ));
        assert!(!ec(
            b"POST / HTTP/1.1\r\nHost: h\r\nExpect: something\r\nContent-Length: 3\r\n\r\n"
        ));
    }

    #[test]
    fn head_is_reused_without_reallocation() {
        let mut head = RequestHead::default();
        let raw = b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n";
        parse_request(raw, &limits(), &mut head).unwrap();
        let cap = head.headers.capacity();
        let ptr = head.headers.as_ptr();
        for _ in 0..10 {
            parse_request(raw, &limits(), &mut head).unwrap();
            assert_eq!(head.headers.len(), 3);
        }
        assert_eq!(head.headers.capacity(), cap);
        assert_eq!(head.headers.as_ptr(), ptr);
    }

    // ---- responses ----

    #[test]
    fn response_basic_offsets() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\nhello";
        let h = resp(raw, Method::Get).unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.reason.get(raw), b"OK");
        assert_eq!(h.version, Version::Http11);
        assert_eq!(h.body, BodyKind::Length(5));
        assert!(h.keep_alive);
        assert_eq!(h.head_len, raw.len() - 5);
        assert_eq!(h.headers.len(), 2);
        assert_eq!(h.headers[1].name(raw), b"Server");
    }

    #[test]
    fn response_reason_forms() {
        let raw = b"HTTP/1.1 404 Not Found Here\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            resp(raw, Method::Get).unwrap().reason.get(raw),
            b"Not Found Here"
        );
        let raw = b"HTTP/1.1 204 \r\n\r\n";
        assert_eq!(resp(raw, Method::Get).unwrap().reason.get(raw), b"");
        let raw = b"HTTP/1.1 204\r\n\r\n";
        assert_eq!(resp(raw, Method::Get).unwrap().reason.get(raw), b"");
        let raw = b"HTTP/1.1 200 D\xe9j\xe0 vu\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            resp(raw, Method::Get).unwrap().reason.get(raw),
            b"D\xe9j\xe0 vu"
        );
        let raw = b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(resp(raw, Method::Get).unwrap().reason.get(raw), b"OK");
    }

    #[test]
    fn response_framing() {
        let b = |raw: &[u8], m: Method| resp(raw, m).map(|h| (h.body, h.keep_alive));
        let get = Method::Get;
        // HEAD, 1xx, 204, 304: no body whatever the headers say.
        assert_eq!(
            b(
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
                Method::Head
            ),
            Ok((BodyKind::None, true))
        );
        assert_eq!(
            b(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Method::Head
            ),
            Ok((BodyKind::None, true))
        );
        assert_eq!(
            b(b"HTTP/1.1 100 Continue\r\n\r\n", get),
            Ok((BodyKind::None, true))
        );
        assert_eq!(
            b(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
                get
            ),
            Ok((BodyKind::None, false))
        );
        assert_eq!(
            b(b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n", get),
            Ok((BodyKind::None, true))
        );
        assert_eq!(
            b(
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n",
                get
            ),
            Ok((BodyKind::None, true))
        );
        // A broken Content-Length does not matter when there is no body.
        assert_eq!(
            b(
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: x\r\n\r\n",
                get
            ),
            Ok((BodyKind::None, true))
        );
        // Chunked; Content-Length ignored then, connection not reused.
        assert_eq!(
            b(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                get
            ),
            Ok((BodyKind::Chunked, true))
        );
        assert_eq!(
            b(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                get
            ),
            Ok((BodyKind::Chunked, true))
        );
        assert_eq!(
            b(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                get
            ),
            Ok((BodyKind::Chunked, false))
        );
        // TE not ending in chunked, or in 1.0: until close.
        assert_eq!(
            b(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                get
            ),
            Ok((BodyKind::UntilClose, false))
        );
        assert_eq!(
            b(
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n",
                get
            ),
            Ok((BodyKind::UntilClose, false))
        );
        // Content-Length.
        assert_eq!(
            b(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                get
            ),
            Ok((BodyKind::Length(5), true))
        );
        assert_eq!(
            b(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                get
            ),
            Err(HttpError::BadGateway("invalid response content-length"))
        );
        assert_eq!(
            b(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", get),
            Err(HttpError::BadGateway("invalid response content-length"))
        );
        // Nothing: until close.
        assert_eq!(
            b(b"HTTP/1.1 200 OK\r\n\r\n", get),
            Ok((BodyKind::UntilClose, false))
        );
    }

    #[test]
    fn response_keep_alive() {
        let ka = |raw: &[u8]| resp(raw, Method::Get).unwrap().keep_alive;
        assert!(ka(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!ka(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ));
        assert!(!ka(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(ka(
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
        ));
    }

    #[test]
    fn transfer_codings_the_client_must_be_told() {
        let coded = |raw: &[u8]| {
            let h = resp(raw, Method::Get).unwrap();
            (h.body, h.transfer_coded)
        };
        assert_eq!(
            coded(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            (BodyKind::UntilClose, true)
        );
        assert_eq!(
            coded(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            (BodyKind::Chunked, false)
        );
        // HTTP/1.0 with Transfer-Encoding is faulty framing: until close, codings dropped.
        assert_eq!(
            coded(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            (BodyKind::UntilClose, false)
        );
        assert_eq!(
            coded(b"HTTP/1.1 200 OK\r\n\r\n"),
            (BodyKind::UntilClose, false)
        );
    }

    #[test]
    fn response_errors() {
        let mut head = ResponseHead::default();
        for raw in [
            &b"HTTP/1.1 2000 OK\r\n\r\n"[..],
            b"HTTP/1.1 099 Low\r\n\r\n",
            b"HTTP/1.1 600 High\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
            b"ICY 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n",
        ] {
            assert_eq!(
                parse_response(raw, Method::Get, &mut head),
                Err(HttpError::BadGateway("invalid response")),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n";
        assert_eq!(
            parse_response(raw, Method::Get, &mut head),
            Ok(ParseStatus::Partial)
        );
        let mut big = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
        big.resize(MAX_RESPONSE_HEAD_BYTES, b'a');
        assert_eq!(
            parse_response(&big, Method::Get, &mut head),
            Err(HttpError::BadGateway("response head too large"))
        );
        assert_eq!(
            parse_response(&big[..MAX_RESPONSE_HEAD_BYTES - 1], Method::Get, &mut head),
            Ok(ParseStatus::Partial)
        );
    }

    // ---- helpers ----

    #[test]
    fn helpers() {
        assert_eq!(trim_ows(b" \t a b \t"), b"a b");
        assert_eq!(trim_ows(b"   "), b"");
        assert_eq!(
            list_items(b" a, ,b ,, c").collect::<Vec<_>>(),
            vec![&b"a"[..], b"b", b"c"]
        );
        assert_eq!(classify(b"CONTENT-length"), KnownHeader::ContentLength);
        assert_eq!(classify(b"Keep-Alive"), KnownHeader::KeepAlive);
        assert_eq!(classify(b"X-Forwarded-Proto"), KnownHeader::XForwardedProto);
        assert_eq!(classify(b"Content-Type"), KnownHeader::Other);
        assert_eq!(classify(b"Content_Length"), KnownHeader::Other);
        assert_eq!(classify(b"Content-Lengtx"), KnownHeader::Other);
        assert_eq!(classify(b"TE"), KnownHeader::Te);
        assert_eq!(classify(b"t\x05"), KnownHeader::Other);
    }
}

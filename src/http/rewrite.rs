//! Head rewriting for both directions.
//!
//! Both rewriters copy the received head from the read buffer (offsets from the parser), drop
//! what must not cross the proxy, and append what the proxy adds. Runs of consecutive kept
//! header lines are copied with one `memcpy` each. Nothing is allocated besides growing `out`,
//! which the caller reuses.
//!
//! Removed in both directions: the hop-by-hop fields, one list in `KnownHeader::is_hop_by_hop`
//! (parse.rs) with the differences between the directions stated there (RFC 9110 §7.6.1 and
//! RFC 9112 §9.6): `Connection`, every field named by a `Connection` option, `Keep-Alive`,
//! `Proxy-Connection`, `TE`, `Transfer-Encoding`, `Upgrade` (kept, with `Connection: upgrade`, on a request
//! asking for an upgrade the upstream tunnels: `RequestHead::upgrade`; a `101` is written by
//! [`rewrite_switching`]); and `Content-Length` — framing is re-emitted from the parser's decision, so what
//! reaches the other side always matches what the proxy will actually send. `Trailer` is kept
//! (RFC 9110 no longer lists it as hop-by-hop).
//!
//! Our call: `Proxy-Authorization` and `Proxy-Authenticate` are dropped too. They address the
//! proxy hop (RFC 9110 §11.7), ringlb as a gateway does not authenticate proxies, and forwarding
//! them would hand proxy credentials to every backend (nginx forwards them by default).

use super::parse::{
    classify, fold_content_length, list_items, wants_continue, KnownHeader, MAX_CONNECTION_OPTIONS,
};
use super::{BodyKind, HeaderRange, RequestHead, ResponseHead, Span, Version};
use std::io::Write as _;
use std::net::IpAddr;

/// ForwardInfo is what the proxy adds to a forwarded request about the client.
#[derive(Debug, Clone, Copy)]
pub struct ForwardInfo {
    /// The client's address (appended to X-Forwarded-For).
    pub client_ip: IpAddr,
    /// `http` or `https` (X-Forwarded-Proto).
    pub proto: &'static str,
}

/// Appends the decimal digits of `n` (no allocation, no formatting machinery).
#[inline]
pub(crate) fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends a three-digit status code followed by a space.
#[inline]
fn push_status(out: &mut Vec<u8>, status: u16) {
    let s = status.min(999);
    out.extend_from_slice(&[
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
        b' ',
    ]);
}

/// Appends an IP address as X-Forwarded-For carries it (IPv4-mapped IPv6 shown as IPv4).
#[inline]
pub(crate) fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            // At most "255.255.255.255": format on the stack, copy once.
            let mut text = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    text[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    text[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                text[len] = b'0' + octet % 10;
                len += 1;
            }
            out.extend_from_slice(&text[..len]);
        }
        IpAddr::V6(v6) => {
            // Writing to a Vec cannot fail; std's formatter handles `::` compression.
            let _ = write!(out, "{v6}");
        }
    }
}

/// LineCopier copies kept header lines to `out`, merging lines that are adjacent in the read
/// buffer into a single copy.
#[derive(Default)]
struct LineCopier {
    /// Start of the pending run of buffer bytes (inclusive).
    start: usize,
    /// End of the pending run (exclusive); `start == end` means no run is pending.
    end: usize,
}

impl LineCopier {
    /// Queues the header line `h` (`name: value\r\n`) for copying.
    #[inline]
    fn push(&mut self, out: &mut Vec<u8>, buf: &[u8], h: &HeaderRange) {
        let (name_start, name_end) = (h.name.start() as usize, h.name.end() as usize);
        let value_end = h.value.end() as usize;
        // The line can be copied as is when the value ends right before its CRLF (no trailing
        // whitespace, no bare LF) and lies after the name.
        if value_end >= name_end && buf.get(value_end..value_end + 2) == Some(b"\r\n") {
            if self.end > self.start && name_start == self.end {
                self.end = value_end + 2;
            } else {
                self.flush(out, buf);
                self.start = name_start;
                self.end = value_end + 2;
            }
            return;
        }
        self.flush(out, buf);
        match buf.get(name_start..value_end) {
            Some(line) if value_end >= name_end => out.extend_from_slice(line),
            _ => {
                out.extend_from_slice(h.name.get(buf));
                out.extend_from_slice(b": ");
                out.extend_from_slice(h.value.get(buf));
            }
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Copies the pending run, if any.
    #[inline]
    fn flush(&mut self, out: &mut Vec<u8>, buf: &[u8]) {
        if self.end > self.start {
            out.extend_from_slice(buf.get(self.start..self.end).unwrap_or_default());
        }
        self.start = 0;
        self.end = 0;
    }
}

/// ConnectionNamed holds the field names a message's `Connection` options name (RFC 9110
/// §7.6.1), other than `close` and `keep-alive`, which name nothing that is kept anyway.
struct ConnectionNamed<'a> {
    /// The option tokens, as slices of the read buffer.
    names: [&'a [u8]; MAX_CONNECTION_OPTIONS],
    /// How many of `names` are in use.
    len: usize,
}

impl<'a> ConnectionNamed<'a> {
    /// Collects the options of all `Connection` fields; `None` (the common case) when there
    /// are none besides `close`/`keep-alive`. The parser rejected messages with more than
    /// MAX_CONNECTION_OPTIONS tokens; any beyond are ignored here rather than panicking.
    #[inline]
    fn collect(buf: &'a [u8], headers: &[HeaderRange]) -> Option<Self> {
        let mut named: Option<Self> = None;
        for h in headers {
            let name = h.name.get(buf);
            if name.len() != 10 || !name.eq_ignore_ascii_case(b"connection") {
                continue;
            }
            let value = h.value.get(buf);
            if value.eq_ignore_ascii_case(b"keep-alive") || value.eq_ignore_ascii_case(b"close") {
                continue;
            }
            for token in list_items(value) {
                if token.eq_ignore_ascii_case(b"close") || token.eq_ignore_ascii_case(b"keep-alive")
                {
                    continue;
                }
                let n = match &mut named {
                    Some(n) => n,
                    None => named.insert(ConnectionNamed {
                        names: [&[]; MAX_CONNECTION_OPTIONS],
                        len: 0,
                    }),
                };
                if let Some(slot) = n.names.get_mut(n.len) {
                    *slot = token;
                    n.len += 1;
                }
            }
        }
        named
    }

    /// Whether `name` is one of the named fields.
    #[inline]
    fn contains(&self, name: &[u8]) -> bool {
        self.names
            .get(..self.len)
            .unwrap_or_default()
            .iter()
            .any(|t| t.len() == name.len() && t.eq_ignore_ascii_case(name))
    }
}

/// Whether a `Connection` option in `named` names `name`.
#[inline]
fn is_named(named: &Option<ConnectionNamed<'_>>, name: &[u8]) -> bool {
    named.as_ref().is_some_and(|n| n.contains(name))
}

/// Appends the values of all fields of kind `kind`, joined by `", "`; returns whether any
/// non-empty value was written.
#[inline]
fn push_joined(out: &mut Vec<u8>, buf: &[u8], headers: &[HeaderRange], kind: KnownHeader) -> bool {
    let mut any = false;
    for h in headers {
        if classify(h.name.get(buf)) != kind {
            continue;
        }
        let value = h.value.get(buf);
        if value.is_empty() {
            continue;
        }
        if any {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(value);
        any = true;
    }
    any
}

/// Writes the upstream request head for `head` (parsed from `buf`) to `out` (appending).
///
/// The result is `<method> <target> HTTP/1.1`, the received fields minus the hop-by-hop ones
/// (see the module doc), then, in this order: `X-Forwarded-For` (received values joined by
/// `", "`, then the client address), `X-Forwarded-Proto` (replaces any received one), `Via`
/// (received values, then `1.1 ringlb` or `1.0 ringlb` after the client's version),
/// `Content-Length: n` or `Transfer-Encoding: chunked` per `head.body`, and
/// `Connection: keep-alive`.
///
/// Origin-form and asterisk-form targets are sent verbatim. An absolute-form target is sent in
/// origin-form (path and query; `/` for an empty path), as RFC 9112 §3.2.1 requires towards an
/// origin server; the `Host` field is forwarded verbatim in every case, so the upstream sees the
/// same host the proxy routed on. `Host` is never removed by a `Connection` option.
pub fn rewrite_request(buf: &[u8], head: &RequestHead, fwd: &ForwardInfo, out: &mut Vec<u8>) {
    out.reserve(head.head_len + 160);

    if head.path.start() != head.target.start() {
        // Absolute-form: the path starts after the authority.
        out.extend_from_slice(head.method_range.get(buf));
        out.push(b' ');
        let path = head.path.get(buf);
        out.extend_from_slice(if path.is_empty() { b"/" } else { path });
        if let Some(q) = head.query {
            out.push(b'?');
            out.extend_from_slice(q.get(buf));
        }
    } else {
        // "<method> <target>" is contiguous in the buffer (httparse allows one SP only).
        out.extend_from_slice(Span::new(head.method_range.start(), head.target.end()).get(buf));
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");

    let named = ConnectionNamed::collect(buf, &head.headers);
    let mut copier = LineCopier::default();
    let mut forwarded_for = false;
    let mut via = false;
    for h in &head.headers {
        let name = h.name.get(buf);
        match classify(name) {
            // An upgrade the upstream may tunnel keeps its `Upgrade` (though `Connection`
            // names it): the upstream answers it with 101 or as a plain request.
            KnownHeader::Upgrade if head.upgrade => {}
            k if k.is_hop_by_hop() => continue,
            KnownHeader::ContentLength | KnownHeader::XForwardedProto => continue,
            KnownHeader::XForwardedFor => {
                forwarded_for = true;
                continue;
            }
            KnownHeader::Via => {
                via = true;
                continue;
            }
            // Routing used Host; the upstream must see the same one.
            KnownHeader::Host => {}
            // `100-continue` goes on only while ringlb waits for the upstream's 100; when it
            // answers 100 itself (or the expectation does not apply) the upstream gets the
            // whole request without it.
            KnownHeader::Expect if !head.expect_continue && wants_continue(h.value.get(buf)) => {
                continue
            }
            _ => {
                if is_named(&named, name) {
                    continue;
                }
            }
        }
        copier.push(out, buf, h);
    }
    copier.flush(out, buf);

    out.extend_from_slice(b"X-Forwarded-For: ");
    if forwarded_for
        && !is_named(&named, b"x-forwarded-for")
        && push_joined(out, buf, &head.headers, KnownHeader::XForwardedFor)
    {
        out.extend_from_slice(b", ");
    }
    push_ip(out, fwd.client_ip);
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: ");
    out.extend_from_slice(fwd.proto.as_bytes());
    out.extend_from_slice(b"\r\nVia: ");
    if via && !is_named(&named, b"via") && push_joined(out, buf, &head.headers, KnownHeader::Via) {
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(match head.version {
        Version::Http10 => b"1.0 ringlb\r\n",
        Version::Http11 => b"1.1 ringlb\r\n",
    });

    match head.body {
        BodyKind::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyKind::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        BodyKind::None | BodyKind::UntilClose => {}
    }
    out.extend_from_slice(if head.upgrade {
        b"Connection: upgrade\r\n\r\n".as_slice()
    } else {
        b"Connection: keep-alive\r\n\r\n".as_slice()
    });
}

/// Writes the client's head for a `101 Switching Protocols` answering an upgrade request
/// (appending to `out`): the status line, the received fields as they came (`Upgrade` and
/// `Sec-WebSocket-*` byte-exact) except the other hop-by-hop ones and framing fields, then
/// `Connection: upgrade`.
pub fn rewrite_switching(buf: &[u8], head: &ResponseHead, out: &mut Vec<u8>) {
    out.reserve(head.head_len + 32);
    out.extend_from_slice(b"HTTP/1.1 101 ");
    out.extend_from_slice(head.reason.get(buf));
    out.extend_from_slice(b"\r\n");
    let named = ConnectionNamed::collect(buf, &head.headers);
    let mut copier = LineCopier::default();
    for h in &head.headers {
        let name = h.name.get(buf);
        match classify(name) {
            KnownHeader::Upgrade => {}
            k if k.is_hop_by_hop() => continue,
            KnownHeader::ContentLength => continue,
            _ => {
                if is_named(&named, name) {
                    continue;
                }
            }
        }
        copier.push(out, buf, h);
    }
    copier.flush(out, buf);
    out.extend_from_slice(b"Connection: upgrade\r\n\r\n");
}

/// Whether a received response field `name` passes on to the client: not hop-by-hop, not
/// named by a `Connection` option (`named`), not `Content-Length` (framing is re-emitted:
/// [`client_content_length`]).
#[inline]
fn passes_on(named: &Option<ConnectionNamed<'_>>, name: &[u8]) -> bool {
    match classify(name) {
        k if k.is_hop_by_hop() => false,
        KnownHeader::ContentLength => false,
        _ => !is_named(named, name),
    }
}

/// The received fields of the response `head` (parsed from `buf`) that pass on to the client,
/// as `(name, value)` slices of `buf`: what [`rewrite_response`] copies, for a client side
/// that frames the head itself (an HTTP/2 stream), with [`client_content_length`].
pub fn end_to_end_fields<'a>(
    buf: &'a [u8],
    head: &'a ResponseHead,
) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
    let named = ConnectionNamed::collect(buf, &head.headers);
    head.headers.iter().filter_map(move |h| {
        let name = h.name.get(buf);
        passes_on(&named, name).then(|| (name, h.value.get(buf)))
    })
}

/// The `Content-Length` the client's response head carries: the body's length when the
/// framing gave one; for a response without a body (to HEAD, a 304) the upstream's, when it
/// sent a valid one and the status allows it (RFC 9110 §8.6; 1xx and 204 never carry it);
/// none for chunked and close-delimited bodies.
pub fn client_content_length(buf: &[u8], head: &ResponseHead) -> Option<u64> {
    match head.body {
        BodyKind::Length(n) => Some(n),
        BodyKind::None if !(100..200).contains(&head.status) && head.status != 204 => {
            let mut n = None;
            for h in &head.headers {
                if classify(h.name.get(buf)) == KnownHeader::ContentLength
                    && !fold_content_length(h.value.get(buf), &mut n)
                {
                    return None;
                }
            }
            n
        }
        _ => None,
    }
}

/// Writes the client response head for `head` (parsed from `buf`) to `out` (appending).
///
/// The result is `HTTP/1.1 <status> <reason>` (RFC 9110 §2.5: a proxy sends its own version),
/// the received fields minus the hop-by-hop ones (see the module doc), then framing:
/// - `Length(n)`: `Content-Length: n`;
/// - `Chunked`: for an HTTP/1.1 client `Transfer-Encoding` with the upstream's codings (normally
///   just `chunked`; any codings before the final chunked are kept so the payload stays
///   decodable); for an HTTP/1.0 client nothing — the proxy de-chunks and closes;
/// - `None`: the upstream's Content-Length if it sent a valid one and the status allows it
///   (responses to HEAD and 304 keep it, RFC 9110 §8.6; 1xx and 204 never carry it);
/// - `UntilClose`: nothing.
///
/// Then `Connection: keep-alive` or `Connection: close`. `Connection: close` is forced, whatever
/// `keep_alive` says, when only the close can delimit the body for the client (`UntilClose`,
/// or `Chunked` to an HTTP/1.0 client). Interim 1xx responses get no `Connection` field.
pub fn rewrite_response(
    buf: &[u8],
    head: &ResponseHead,
    client_version: Version,
    keep_alive: bool,
    out: &mut Vec<u8>,
) {
    out.reserve(head.head_len + 64);

    out.extend_from_slice(b"HTTP/1.1 ");
    push_status(out, head.status);
    out.extend_from_slice(head.reason.get(buf));
    out.extend_from_slice(b"\r\n");

    let named = ConnectionNamed::collect(buf, &head.headers);
    let mut copier = LineCopier::default();
    for h in &head.headers {
        if passes_on(&named, h.name.get(buf)) {
            copier.push(out, buf, h);
        }
    }
    copier.flush(out, buf);

    let interim = (100..200).contains(&head.status);
    let mut must_close = false;
    if let Some(n) = client_content_length(buf, head) {
        out.extend_from_slice(b"Content-Length: ");
        push_u64(out, n);
        out.extend_from_slice(b"\r\n");
    }
    match head.body {
        BodyKind::Length(_) | BodyKind::None => {}
        BodyKind::Chunked => match client_version {
            Version::Http11 => {
                out.extend_from_slice(b"Transfer-Encoding: ");
                if !push_joined(out, buf, &head.headers, KnownHeader::TransferEncoding) {
                    out.extend_from_slice(b"chunked");
                }
                out.extend_from_slice(b"\r\n");
            }
            Version::Http10 => must_close = true,
        },
        BodyKind::UntilClose => {
            must_close = true;
            // Codings other than a final chunked (`chunked, gzip`) delimit nothing, but the
            // client must know them to decode the payload, which is relayed as it came.
            if head.transfer_coded && client_version == Version::Http11 {
                let mark = out.len();
                out.extend_from_slice(b"Transfer-Encoding: ");
                if push_joined(out, buf, &head.headers, KnownHeader::TransferEncoding) {
                    out.extend_from_slice(b"\r\n");
                } else {
                    out.truncate(mark);
                }
            }
        }
    }

    if !interim {
        out.extend_from_slice(if keep_alive && !must_close {
            b"Connection: keep-alive\r\n".as_slice()
        } else {
            b"Connection: close\r\n".as_slice()
        });
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;
    use crate::http::{parse_request, parse_response, Method, ParseStatus};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn fwd() -> ForwardInfo {
        ForwardInfo {
            client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
            proto: "http",
        }
    }

    fn rewrite_req_with(raw: &[u8], fwd: &ForwardInfo) -> String {
        let mut head = RequestHead::default();
        assert_eq!(
            parse_request(raw, &Limits::default(), &mut head),
            Ok(ParseStatus::Complete)
        );
        let mut out = Vec::new();
        rewrite_request(raw, &head, fwd, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn rewrite_req(raw: &[u8]) -> String {
        rewrite_req_with(raw, &fwd())
    }

    fn rewrite_resp(raw: &[u8], method: Method, client: Version, keep_alive: bool) -> String {
        let mut head = ResponseHead::default();
        assert_eq!(
            parse_response(raw, method, &mut head),
            Ok(ParseStatus::Complete)
        );
        let mut out = Vec::new();
        rewrite_response(raw, &head, client, keep_alive, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn upgrade_keeps_upgrade_and_sends_connection_upgrade() {
        let out = rewrite_req(
            b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\
              Connection: keep-alive, Upgrade, x-hop\r\nx-hop: 1\r\nKeep-Alive: 5\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        );
        assert_eq!(
            out,
            "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\nVia: 1.1 ringlb\r\n\
             Connection: upgrade\r\n\r\n"
        );
        // Cleared by the proxy (a protocol it does not tunnel): a plain request.
        let raw = b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n";
        let mut head = RequestHead::default();
        parse_request(raw, &Limits::default(), &mut head).unwrap();
        assert!(head.upgrade);
        head.upgrade = false;
        let mut out = Vec::new();
        rewrite_request(raw, &head, &fwd(), &mut out);
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("pgrade"), "{out}");
        assert!(out.ends_with("Connection: keep-alive\r\n\r\n"), "{out}");
    }

    #[test]
    fn switching_protocols_head_is_kept_byte_exact() {
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                    Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
                    Sec-WebSocket-Extensions: x;  a=1\r\nKeep-Alive: 1\r\nContent-Length: 0\r\n\r\n";
        let mut head = ResponseHead::default();
        assert_eq!(
            parse_response(raw, Method::Get, &mut head),
            Ok(ParseStatus::Complete)
        );
        let mut out = Vec::new();
        rewrite_switching(raw, &head, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
             Sec-WebSocket-Extensions: x;  a=1\r\nConnection: upgrade\r\n\r\n"
        );
    }

    #[test]
    fn push_u64_digits() {
        for n in [0, 7, 10, 99, 100, 12345, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn push_ip_forms() {
        for ip in ["0.0.0.0", "10.1.100.255", "9.99.199.200", "255.255.255.255"] {
            let mut out = Vec::new();
            push_ip(&mut out, ip.parse().unwrap());
            assert_eq!(out, ip.as_bytes());
        }
        let mut out = Vec::new();
        push_ip(&mut out, "::1".parse().unwrap());
        assert_eq!(out, b"::1");
    }

    #[test]
    fn bare_lf_and_trailing_whitespace_lines_get_crlf() {
        assert_eq!(
            rewrite_req(b"GET / HTTP/1.1\nHost: h\nX-A: v  \nX-B: w\nX-C:\n\n"),
            "GET / HTTP/1.1\r\nHost: h\r\nX-A: v\r\nX-B: w\r\nX-C:\r\n\
             X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\nVia: 1.1 ringlb\r\n\
             Connection: keep-alive\r\n\r\n"
        );
        assert_eq!(
            rewrite_req(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: v \t\r\nX-B: w\r\n\r\n"),
            "GET / HTTP/1.1\r\nHost: h\r\nX-A: v\r\nX-B: w\r\n\
             X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\nVia: 1.1 ringlb\r\n\
             Connection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn simple_get() {
        assert_eq!(
            rewrite_req(b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nAccept:  */*\r\n\r\n"),
            "GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nAccept:  */*\r\n\
             X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\nVia: 1.1 ringlb\r\n\
             Connection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn hop_by_hop_and_connection_named_removed() {
        let raw = b"POST /up HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret, close\r\n\
                    Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n\
                    Upgrade: websocket\r\nx-secret: 1\r\nProxy-Authorization: Basic Zm9v\r\n\
                    Trailer: X-Sum\r\nContent-Length: 3\r\nX-Keep: yes\r\n\r\nabc";
        assert_eq!(
            rewrite_req(raw),
            "POST /up HTTP/1.1\r\nHost: h\r\nTrailer: X-Sum\r\nX-Keep: yes\r\n\
             X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\nVia: 1.1 ringlb\r\n\
             Content-Length: 3\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn connection_cannot_drop_host() {
        assert_eq!(
            rewrite_req(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: host\r\n\r\n"),
            "GET / HTTP/1.1\r\nHost: h\r\n\
             X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\nVia: 1.1 ringlb\r\n\
             Connection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn forwarded_headers_merged() {
        let raw = b"GET / HTTP/1.1\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.2\r\nHost: h\r\n\
                    X-Forwarded-Proto: https\r\nx-forwarded-for: 10.0.0.3\r\nVia: 1.1 cdn\r\n\
                    X-Forwarded-For:\r\n\r\n";
        assert_eq!(
            rewrite_req(raw),
            "GET / HTTP/1.1\r\nHost: h\r\n\
             X-Forwarded-For: 10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7\r\n\
             X-Forwarded-Proto: http\r\nVia: 1.1 cdn, 1.1 ringlb\r\n\
             Connection: keep-alive\r\n\r\n"
        );
        // A Connection option naming X-Forwarded-For drops the received chain.
        assert_eq!(
            rewrite_req(
                b"GET / HTTP/1.1\r\nHost: h\r\nConnection: X-Forwarded-For\r\n\
                  X-Forwarded-For: 6.6.6.6\r\n\r\n"
            ),
            "GET / HTTP/1.1\r\nHost: h\r\n\
             X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\nVia: 1.1 ringlb\r\n\
             Connection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn http10_client_chunked_and_ipv6() {
        let fwd6 = ForwardInfo {
            client_ip: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            proto: "https",
        };
        assert_eq!(
            rewrite_req_with(b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &fwd6),
            "GET /x HTTP/1.1\r\nX-Forwarded-For: 2001:db8::1\r\nX-Forwarded-Proto: https\r\n\
             Via: 1.0 ringlb\r\nConnection: keep-alive\r\n\r\n"
        );
        let mapped = ForwardInfo {
            client_ip: IpAddr::V6(Ipv4Addr::new(198, 51, 100, 255).to_ipv6_mapped()),
            proto: "http",
        };
        assert_eq!(
            rewrite_req_with(
                b"PUT /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
                &mapped
            ),
            "PUT /u HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 198.51.100.255\r\n\
             X-Forwarded-Proto: http\r\nVia: 1.1 ringlb\r\nTransfer-Encoding: chunked\r\n\
             Connection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn absolute_form_sent_as_origin_form() {
        let tail = "Host: example.com\r\nX-Forwarded-For: 192.0.2.7\r\n\
                    X-Forwarded-Proto: http\r\nVia: 1.1 ringlb\r\nConnection: keep-alive\r\n\r\n";
        assert_eq!(
            rewrite_req(b"GET http://example.com/p?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n"),
            format!("GET /p?q=1 HTTP/1.1\r\n{tail}")
        );
        assert_eq!(
            rewrite_req(b"GET http://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n"),
            format!("GET / HTTP/1.1\r\n{tail}")
        );
        assert_eq!(
            rewrite_req(b"GET http://example.com?x HTTP/1.1\r\nHost: example.com\r\n\r\n"),
            format!("GET /?x HTTP/1.1\r\n{tail}")
        );
        assert_eq!(
            rewrite_req(b"OPTIONS * HTTP/1.1\r\nHost: example.com\r\n\r\n"),
            format!("OPTIONS * HTTP/1.1\r\n{tail}")
        );
    }

    #[test]
    fn request_out_is_appended_not_cleared() {
        let raw = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        let mut head = RequestHead::default();
        parse_request(raw, &Limits::default(), &mut head).unwrap();
        let mut out = b"xx".to_vec();
        rewrite_request(raw, &head, &fwd(), &mut out);
        assert!(out.starts_with(b"xxGET / HTTP/1.1\r\n"));
    }

    #[test]
    fn response_content_length_and_hop_by_hop() {
        let raw = b"HTTP/1.0 200 OK\r\nServer: up\r\nConnection: keep-alive, X-Internal\r\n\
                    Keep-Alive: timeout=5\r\nX-Internal: 1\r\nContent-Length: 5\r\n\
                    Proxy-Authenticate: Basic\r\nUpgrade: h2c\r\n\r\nhello";
        assert_eq!(
            rewrite_resp(raw, Method::Get, Version::Http11, true),
            "HTTP/1.1 200 OK\r\nServer: up\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n"
        );
        assert_eq!(
            rewrite_resp(raw, Method::Get, Version::Http10, false),
            "HTTP/1.1 200 OK\r\nServer: up\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn response_chunked() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\
                    Date: x\r\n\r\n";
        assert_eq!(
            rewrite_resp(raw, Method::Get, Version::Http11, true),
            "HTTP/1.1 200 OK\r\nDate: x\r\nTransfer-Encoding: chunked\r\n\
             Connection: keep-alive\r\n\r\n"
        );
        // HTTP/1.0 clients cannot take chunked: no framing, the close ends the body.
        assert_eq!(
            rewrite_resp(raw, Method::Get, Version::Http10, true),
            "HTTP/1.1 200 OK\r\nDate: x\r\nConnection: close\r\n\r\n"
        );
        // Codings before the final chunked are kept for the client.
        let raw =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(
            rewrite_resp(raw, Method::Get, Version::Http11, true),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn response_without_body() {
        // HEAD keeps the upstream Content-Length (normalised).
        assert_eq!(
            rewrite_resp(
                b"HTTP/1.1 200 OK\r\nContent-Length: 42, 42\r\nETag: \"e\"\r\n\r\n",
                Method::Head,
                Version::Http11,
                true
            ),
            "HTTP/1.1 200 OK\r\nETag: \"e\"\r\nContent-Length: 42\r\nConnection: keep-alive\r\n\r\n"
        );
        // 304 keeps it too.
        assert_eq!(
            rewrite_resp(
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 42\r\n\r\n",
                Method::Get,
                Version::Http11,
                true
            ),
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 42\r\nConnection: keep-alive\r\n\r\n"
        );
        // An invalid one is not forwarded.
        assert_eq!(
            rewrite_resp(
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 4x\r\n\r\n",
                Method::Get,
                Version::Http11,
                true
            ),
            "HTTP/1.1 304 Not Modified\r\nConnection: keep-alive\r\n\r\n"
        );
        // 204 never carries Content-Length.
        assert_eq!(
            rewrite_resp(
                b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
                Method::Get,
                Version::Http11,
                false
            ),
            "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
        );
        // 1xx: interim, no framing and no Connection field.
        assert_eq!(
            rewrite_resp(
                b"HTTP/1.1 100 Continue\r\nConnection: keep-alive\r\n\r\n",
                Method::Post,
                Version::Http11,
                true
            ),
            "HTTP/1.1 100 Continue\r\n\r\n"
        );
        // HEAD response with chunked upstream: nothing about framing.
        assert_eq!(
            rewrite_resp(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Method::Head,
                Version::Http11,
                true
            ),
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn response_until_close_forces_close() {
        assert_eq!(
            rewrite_resp(
                b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n",
                Method::Get,
                Version::Http11,
                true
            ),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn response_empty_reason_and_obs_text() {
        assert_eq!(
            rewrite_resp(
                b"HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n",
                Method::Get,
                Version::Http11,
                true
            ),
            "HTTP/1.1 404 \r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
        );
        let raw = b"HTTP/1.1 200 D\xe9j\xe0\r\nContent-Length: 0\r\n\r\n";
        let mut head = ResponseHead::default();
        parse_response(raw, Method::Get, &mut head).unwrap();
        let mut out = Vec::new();
        rewrite_response(raw, &head, Version::Http11, true, &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 200 D\xe9j\xe0\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn empty_header_value_is_forwarded() {
        assert_eq!(
            rewrite_req(b"GET / HTTP/1.1\r\nHost: h\r\nX-Empty:\r\nX-Sp:   \r\n\r\n"),
            "GET / HTTP/1.1\r\nHost: h\r\nX-Empty:\r\nX-Sp:   \r\n\
             X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\nVia: 1.1 ringlb\r\n\
             Connection: keep-alive\r\n\r\n"
        );
    }
}

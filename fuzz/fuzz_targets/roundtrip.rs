//! `roundtrip`: what ringlb forwards re-parses to the request it received.
//!
//! A request head that `parse_request` accepts is rewritten with `rewrite_request`, the body
//! bytes that are present are appended (Content-Length: up to the length; chunked: the raw
//! chunked body as far as it decodes), and the result is parsed again. It must be a complete
//! head of exactly the rewritten length with the same method token and enum, the same target
//! (absolute-form becomes origin-form: path, `/` if empty, and `?query`), the same end-to-end
//! header fields in order (byte for byte, minus the hop-by-hop fields ringlb drops, the fields
//! named by `Connection`, and the X-Forwarded-For/-Proto and Via it replaces), then exactly
//! the fields it adds (X-Forwarded-For with the received chain plus the client, X-Forwarded-Proto,
//! Via, the framing field, `Connection: keep-alive`), the same framing and the same body bytes.
//!
//! ringlb forwards HTTP/1.0 requests without Host as HTTP/1.1 without Host, which its own
//! parser rejects (`missing Host header`); for those the rewritten request is re-parsed with
//! its version set back to HTTP/1.0 so everything else is still checked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlb::config::Limits;
use ringlb::http::{
    parse_request, rewrite_request, BodyKind, ChunkedDecoder, ForwardInfo, HttpError, ParseStatus,
    RequestHead, Version, MAX_HEADERS,
};
use std::net::{IpAddr, Ipv4Addr};

/// The trimmed, non-empty elements of a comma-separated list.
fn items(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(|t| {
            let start = t.iter().position(|&b| b != b' ' && b != b'\t');
            let end = t.iter().rposition(|&b| b != b' ' && b != b'\t');
            match (start, end) {
                (Some(s), Some(e)) => &t[s..=e],
                _ => &t[..0],
            }
        })
        .filter(|t| !t.is_empty())
}

fn is(name: &[u8], lit: &str) -> bool {
    name.eq_ignore_ascii_case(lit.as_bytes())
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let mut head = RequestHead::default();
    if parse_request(data, &limits, &mut head) != Ok(ParseStatus::Complete) {
        return;
    }
    let fields: Vec<(&[u8], &[u8])> = head
        .headers
        .iter()
        .map(|h| (h.name(data), h.value(data)))
        .collect();

    // Names the Connection options drop (close / keep-alive name nothing; Host is kept).
    let mut named: Vec<&[u8]> = Vec::new();
    for (n, v) in &fields {
        if is(n, "connection") {
            named.extend(items(v).filter(|t| !is(t, "close") && !is(t, "keep-alive")));
        }
    }
    let is_named = |n: &[u8]| named.iter().any(|t| t.eq_ignore_ascii_case(n));
    const DROPPED: [&str; 12] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "proxy-authorization",
        "proxy-authenticate",
        "x-forwarded-for",
        "x-forwarded-proto",
        "via",
    ];
    // `Expect: 100-continue` goes on only while the proxy waits for the upstream's 100, which
    // it does only for a request whose head says so (`expect_continue`).
    let dropped_expect = |n: &[u8], v: &[u8]| {
        is(n, "expect") && !head.expect_continue && items(v).any(|t| is(t, "100-continue"))
    };
    let mut expected: Vec<(Vec<u8>, Vec<u8>)> = fields
        .iter()
        .filter(|(n, v)| {
            is(n, "host")
                || (!DROPPED.iter().any(|d| is(n, d)) && !is_named(n) && !dropped_expect(n, v))
        })
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect();
    let chain = |name: &str, own: &str| {
        let mut v: Vec<u8> = Vec::new();
        if !is_named(name.as_bytes()) {
            for (_, val) in fields.iter().filter(|(n, v)| is(n, name) && !v.is_empty()) {
                v.extend_from_slice(val);
                v.extend_from_slice(b", ");
            }
        }
        v.extend_from_slice(own.as_bytes());
        v
    };
    expected.push((
        b"X-Forwarded-For".to_vec(),
        chain("x-forwarded-for", "192.0.2.7"),
    ));
    expected.push((b"X-Forwarded-Proto".to_vec(), b"http".to_vec()));
    let via = match head.version {
        Version::Http10 => "1.0 ringlb",
        Version::Http11 => "1.1 ringlb",
    };
    expected.push((b"Via".to_vec(), chain("via", via)));
    match head.body {
        BodyKind::Length(n) => expected.push((b"Content-Length".to_vec(), n.to_string().into())),
        BodyKind::Chunked => expected.push((b"Transfer-Encoding".to_vec(), b"chunked".to_vec())),
        BodyKind::None | BodyKind::UntilClose => {}
    }
    expected.push((b"Connection".to_vec(), b"keep-alive".to_vec()));

    let fwd = ForwardInfo {
        client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        proto: "http",
    };
    let mut out = Vec::new();
    rewrite_request(data, &head, &fwd, &mut out);
    let out_head_len = out.len();

    // The body bytes that are here.
    let rest = &data[head.head_len..];
    let body: &[u8] = match head.body {
        BodyKind::Length(n) => &rest[..rest.len().min(usize::try_from(n).unwrap_or(usize::MAX))],
        BodyKind::Chunked => match ChunkedDecoder::new().decode(rest, None) {
            Ok((used, _)) => &rest[..used],
            Err(_) => &[],
        },
        BodyKind::None | BodyKind::UntilClose => &[],
    };
    out.extend_from_slice(body);

    // The proxy's additions may exceed what its own parser accepts from a client; a backend
    // has its own limits, so the head size limit is lifted, but MAX_HEADERS is a constant.
    if expected.len() > MAX_HEADERS {
        return;
    }
    let big = Limits {
        max_header_bytes: 1 << 20,
        max_request_line_bytes: 1 << 20,
        max_body_bytes: None,
        ..Limits::default()
    };
    let mut again = RequestHead::default();
    let mut res = parse_request(&out, &big, &mut again);
    let mut reparsed: &[u8] = &out;
    let patched;
    if head.host.is_none() && res == Err(HttpError::BadRequest("missing Host header")) {
        // Known: no Host is added for HTTP/1.0 clients (see the module doc).
        let line_end = out.iter().position(|&b| b == b'\n').unwrap();
        assert_eq!(&out[line_end - 9..line_end + 1], b"HTTP/1.1\r\n");
        let mut p = out.clone();
        p[line_end - 2] = b'0';
        patched = p;
        reparsed = &patched;
        res = parse_request(reparsed, &big, &mut again);
    }
    let shown = String::from_utf8_lossy(&out[..out_head_len]).into_owned();
    assert_eq!(res, Ok(ParseStatus::Complete), "rewritten: {shown:?}");
    assert_eq!(again.head_len, out_head_len, "rewritten: {shown:?}");

    // Method and target.
    assert_eq!(again.method, head.method);
    assert_eq!(
        again.method_range.get(reparsed),
        head.method_range.get(data)
    );
    let mut target = head.path.get(data).to_vec();
    if head.path.start() != head.target.start() && target.is_empty() {
        target.push(b'/');
    }
    if let Some(q) = head.query {
        target.push(b'?');
        target.extend_from_slice(q.get(data));
    }
    if head.path.start() == head.target.start() {
        assert_eq!(head.target.get(data), &target[..]);
    }
    assert_eq!(
        again.target.get(reparsed),
        &target[..],
        "rewritten: {shown:?}"
    );

    // Header fields.
    let got: Vec<(&[u8], &[u8])> = again
        .headers
        .iter()
        .map(|h| (h.name(reparsed), h.value(reparsed)))
        .collect();
    let want: Vec<(&[u8], &[u8])> = expected.iter().map(|(n, v)| (&n[..], &v[..])).collect();
    assert_eq!(
        got.iter()
            .map(|(n, v)| (String::from_utf8_lossy(n), String::from_utf8_lossy(v)))
            .collect::<Vec<_>>(),
        want.iter()
            .map(|(n, v)| (String::from_utf8_lossy(n), String::from_utf8_lossy(v)))
            .collect::<Vec<_>>(),
        "rewritten: {shown:?}"
    );
    assert_eq!(got, want, "rewritten: {shown:?}");
    assert_eq!(
        again.host.map(|h| h.get(reparsed)),
        head.host.map(|h| h.get(data))
    );

    // Framing and body.
    assert_eq!(again.body, head.body);
    let body_again = &reparsed[again.head_len..];
    assert_eq!(body_again, body);
});

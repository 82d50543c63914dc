//! `request_head`: `parse_request` on arbitrary bytes with the default limits.
//!
//! Never panics; on `Complete` the head is consistent: `head_len` within the input and the
//! header limit, every offset inside the head, path/query inside the target, Host is one of
//! the header values, the method token matches `method`, framing is decided (never
//! `UntilClose` for a request). Parsing is deterministic with a reused `RequestHead`, and every
//! strict prefix of a complete head is `Partial` (a head split across reads is not rejected).
//! The bytes after the head are fed to the framing they were given: a `ChunkedDecoder` for
//! chunked bodies, which must stay within the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlb::config::Limits;
use ringlb::http::{
    parse_request, BodyKind, ChunkedDecoder, Method, ParseStatus, RequestHead, Span, MAX_HEADERS,
};

/// Whether `r` is a well-formed range ending at or before `end`.
fn within(r: Span, end: usize) -> bool {
    r.start() <= r.end() && r.end() as usize <= end
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let mut head = RequestHead::default();
    let res = parse_request(data, &limits, &mut head);

    // Same answer with a head left over from the previous parse.
    let mut again = head.clone();
    assert_eq!(parse_request(data, &limits, &mut again), res);

    match res {
        Err(e) => assert!((400..=599).contains(&e.status()), "{e:?}"),
        Ok(ParseStatus::Partial) => assert!(data.len() < limits.max_header_bytes),
        Ok(ParseStatus::Complete) => {
            let n = head.head_len;
            assert!(n > 0 && n <= data.len() && n <= limits.max_header_bytes);
            assert_eq!(again.head_len, n);
            assert_eq!(again.headers, head.headers);
            assert!(head.headers.len() <= MAX_HEADERS);
            assert!(
                within(head.method_range, n) && head.method_range.start() < head.method_range.end()
            );
            assert!(within(head.target, n) && head.target.start() < head.target.end());
            assert!(head.method_range.end() < head.target.start());
            assert!(within(head.path, n));
            assert!(
                head.path.start() >= head.target.start() && head.path.end() <= head.target.end()
            );
            if let Some(q) = head.query {
                assert!(within(q, n));
                assert!(q.start() > head.path.end() && q.end() == head.target.end());
                assert_eq!(data[q.start() as usize - 1], b'?');
            }
            for h in &head.headers {
                assert!(within(h.name, n) && h.name.start() < h.name.end());
                // An empty value may be (0, 0).
                assert!(within(h.value, n));
            }
            if let Some(host) = head.host {
                assert!(head
                    .headers
                    .iter()
                    .any(|h| h.value == host && h.name(data).eq_ignore_ascii_case(b"host")));
            }
            let token = head.method_range.get(data);
            let named = match token {
                b"GET" => Method::Get,
                b"HEAD" => Method::Head,
                b"POST" => Method::Post,
                b"PUT" => Method::Put,
                b"DELETE" => Method::Delete,
                b"OPTIONS" => Method::Options,
                b"TRACE" => Method::Trace,
                b"PATCH" => Method::Patch,
                _ => Method::Other,
            };
            assert_eq!(head.method, named);
            if head.expect_continue {
                assert!(matches!(
                    head.body,
                    BodyKind::Chunked | BodyKind::Length(1..)
                ));
            }

            // A strict prefix of the head is not an error: more bytes are simply needed.
            for cut in [n - 1, n / 2] {
                let mut h = RequestHead::default();
                assert_eq!(
                    parse_request(&data[..cut], &limits, &mut h),
                    Ok(ParseStatus::Partial),
                    "prefix of {cut} bytes"
                );
            }
            // The head alone parses the same.
            let mut h = RequestHead::default();
            assert_eq!(
                parse_request(&data[..n], &limits, &mut h),
                Ok(ParseStatus::Complete)
            );
            assert_eq!(h.headers, head.headers);
            assert_eq!(h.body, head.body);

            let rest = &data[n..];
            match head.body {
                BodyKind::None | BodyKind::Length(_) => {}
                BodyKind::Chunked => {
                    let mut ranges = Vec::new();
                    if let Ok((used, done)) = ChunkedDecoder::new().decode(rest, Some(&mut ranges))
                    {
                        assert!(used <= rest.len());
                        assert!(done || used == rest.len());
                        assert!(ranges.iter().all(|r| r.start <= r.end && r.end <= used));
                    }
                }
                BodyKind::UntilClose => panic!("a request body is never delimited by close"),
            }
        }
    }
});

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
    parse_request, range, BodyKind, ChunkedDecoder, Method, ParseStatus, RequestHead, MAX_HEADERS,
};

/// Whether `r` is a well-formed range ending at or before `end`.
fn within(r: (u32, u32), end: usize) -> bool {
    r.0 <= r.1 && r.1 as usize <= end
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
            assert!(within(head.method_range, n) && head.method_range.0 < head.method_range.1);
            assert!(within(head.target, n) && head.target.0 < head.target.1);
            assert!(head.method_range.1 < head.target.0);
            assert!(within(head.path, n));
            assert!(head.path.0 >= head.target.0 && head.path.1 <= head.target.1);
            if let Some(q) = head.query {
                assert!(within(q, n));
                assert!(q.0 > head.path.1 && q.1 == head.target.1);
                assert_eq!(data[q.0 as usize - 1], b'?');
            }
            for h in &head.headers {
                assert!(within(h.name, n) && h.name.0 < h.name.1);
                // An empty value may be (0, 0).
                assert!(within(h.value, n));
            }
            if let Some(host) = head.host {
                assert!(head
                    .headers
                    .iter()
                    .any(|h| h.value == host && h.name(data).eq_ignore_ascii_case(b"host")));
            }
            let token = &data[range(head.method_range)];
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

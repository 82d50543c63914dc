//! `response_head`: `parse_response` on arbitrary bytes, for a GET and for a HEAD request.
//!
//! Never panics; on `Complete`: `head_len` within the input and 64 KiB, status 100–599, every
//! offset inside the head, no body for HEAD / 1xx / 204 / 304, no reuse after an until-close
//! body or a 101. A head that parses for GET parses identically for HEAD (only the framing may
//! differ). Every strict prefix of a complete head is `Partial`. The head `rewrite_response`
//! writes for an HTTP/1.1 client parses again, completely, to the same status and framing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlb::http::{
    parse_response, rewrite_response, BodyKind, Method, ParseStatus, ResponseHead, Span, Version,
    MAX_HEADERS,
};

/// Whether `r` is a well-formed range ending at or before `end`.
fn within(r: Span, end: usize) -> bool {
    r.start() <= r.end() && r.end() as usize <= end
}

/// Parses `data` as the response to `method`, checks the invariants, returns the head if complete.
fn check(data: &[u8], method: Method) -> Option<ResponseHead> {
    let mut head = ResponseHead::default();
    match parse_response(data, method, &mut head) {
        Err(e) => {
            assert_eq!(e.status(), 502, "{e:?}");
            return None;
        }
        Ok(ParseStatus::Partial) => {
            assert!(data.len() < 64 * 1024);
            return None;
        }
        Ok(ParseStatus::Complete) => {}
    }
    let n = head.head_len;
    assert!(n > 0 && n <= data.len() && n <= 64 * 1024);
    assert!((100..=599).contains(&head.status));
    assert!(within(head.reason, n));
    assert!(head.headers.len() <= MAX_HEADERS);
    for h in &head.headers {
        assert!(within(h.name, n) && h.name.start() < h.name.end());
        assert!(within(h.value, n));
    }
    let bodiless =
        method == Method::Head || head.status / 100 == 1 || matches!(head.status, 204 | 304);
    if bodiless {
        assert_eq!(head.body, BodyKind::None);
    }
    if head.body == BodyKind::UntilClose || head.status == 101 {
        assert!(!head.keep_alive);
    }
    for cut in [n - 1, n / 2] {
        let mut h = ResponseHead::default();
        assert_eq!(
            parse_response(&data[..cut], method, &mut h),
            Ok(ParseStatus::Partial),
            "prefix of {cut} bytes"
        );
    }

    // What the client gets parses back to the same status and framing (unless the proxy's
    // own additions push it past the parser's header count or size limit).
    let mut out = Vec::new();
    rewrite_response(data, &head, Version::Http11, true, &mut out);
    if head.headers.len() + 2 > MAX_HEADERS || out.len() >= 64 * 1024 {
        return Some(head);
    }
    let mut again = ResponseHead::default();
    assert_eq!(
        parse_response(&out, method, &mut again),
        Ok(ParseStatus::Complete),
        "rewritten: {:?}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(again.head_len, out.len());
    assert_eq!(again.status, head.status);
    assert_eq!(again.body, head.body);
    Some(head)
}

fuzz_target!(|data: &[u8]| {
    let get = check(data, Method::Get);
    let head = check(data, Method::Head);
    if let Some(get) = get {
        let head = head.expect("a head that parses for GET parses for HEAD");
        assert_eq!(get.head_len, head.head_len);
        assert_eq!(get.status, head.status);
        assert_eq!(get.reason, head.reason);
        assert_eq!(get.headers, head.headers);
    }
});

//! The hash key of a request: the value a hashing algorithm keys on, taken out of a parsed
//! request head (what [`HashKey`] names, its table of meanings is there), hashed with
//! [`stable_hash`]. Selectors get only the resulting `u64`.

use std::net::IpAddr;

use crate::balance::{stable_hash, HashKey};
use crate::http::RequestHead;

/// Hashes `key` of a request: `buf` is the buffer `head` was parsed from, `client_ip`
/// the downstream peer. `None` when the key is absent from the request or empty (the
/// selectors then rotate). Never panics on odd offsets: an offset outside `buf` reads as
/// absent.
pub fn hash_request(
    key: &HashKey,
    buf: &[u8],
    head: &RequestHead,
    client_ip: IpAddr,
) -> Option<u64> {
    let value = match key {
        HashKey::ClientIp => {
            return Some(match client_ip {
                IpAddr::V4(v4) => stable_hash(&v4.octets()),
                IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                    Some(v4) => stable_hash(&v4.octets()),
                    None => stable_hash(&v6.octets()),
                },
            })
        }
        HashKey::Path => match head.path.get(buf) {
            // A non-empty path that reads as nothing lies outside `buf`: absent.
            [] if !head.path.is_empty() => return None,
            [] => b"/",
            path => path,
        },
        HashKey::Query => head.query?.get(buf),
        HashKey::Uri => head.target.get(buf),
        HashKey::Header(name) => head
            .headers
            .iter()
            .find(|h| h.name(buf).eq_ignore_ascii_case(name.as_bytes()))?
            .value(buf),
        HashKey::Cookie(name) => cookie(buf, head, name.as_bytes())?,
        HashKey::QueryParam(name) => query_param(head.query?.get(buf), name.as_bytes())?,
    };
    (!value.is_empty()).then(|| stable_hash(value))
}

/// The value of cookie `name` from the request's `Cookie` header(s) (`a=1; b=2`, RFC 6265
/// §4.2.1; several `Cookie` fields are searched in order), without surrounding quotes.
fn cookie<'a>(buf: &'a [u8], head: &RequestHead, name: &[u8]) -> Option<&'a [u8]> {
    head.headers
        .iter()
        .filter(|h| h.name(buf).eq_ignore_ascii_case(b"cookie"))
        .map(|h| h.value(buf))
        .flat_map(|v| v.split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = trim(pair);
            let eq = pair.iter().position(|&b| b == b'=')?;
            let (n, v) = (trim(&pair[..eq]), trim(&pair[eq + 1..]));
            (n == name).then_some(match v {
                [b'"', inner @ .., b'"'] => inner,
                v => v,
            })
        })
}

/// The value of the first `name=value` parameter of a query (`a=1&b=2`); a bare `name`
/// (no `=`) has an empty value.
fn query_param<'a>(query: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    query.split(|&b| b == b'&').find_map(|param| {
        let (n, v) = match param.iter().position(|&b| b == b'=') {
            Some(eq) => (&param[..eq], &param[eq + 1..]),
            None => (param, &b""[..]),
        };
        (n == name).then_some(v)
    })
}

/// Trims spaces and tabs from both ends.
fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;
    use crate::http::{parse_request, ParseStatus, Span};
    use std::net::{Ipv4Addr, Ipv6Addr};

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));

    /// Parses `raw` and hashes `key` of it.
    fn hash(key: &str, raw: &str) -> Option<u64> {
        let mut head = RequestHead::default();
        let status = parse_request(raw.as_bytes(), &Limits::default(), &mut head).unwrap();
        assert_eq!(status, ParseStatus::Complete);
        hash_request(&HashKey::parse(key).unwrap(), raw.as_bytes(), &head, IP)
    }

    fn h(s: &str) -> Option<u64> {
        Some(stable_hash(s.as_bytes()))
    }

    const REQ: &str = "GET /shop/cart?user=42&lang=en&user=43&empty=&bare HTTP/1.1\r\n\
        Host: example.com\r\n\
        X-User-Id: alice\r\n\
        x-user-id: bob\r\n\
        X-Empty:\r\n\
        Cookie: theme=dark; session=abc123\r\n\
        Cookie: other=1; quoted=\"q v\"; blank=\r\n\
        \r\n";

    #[test]
    fn request_line_keys() {
        assert_eq!(hash("path", REQ), h("/shop/cart"));
        assert_eq!(hash("query", REQ), h("user=42&lang=en&user=43&empty=&bare"));
        assert_eq!(
            hash("uri", REQ),
            h("/shop/cart?user=42&lang=en&user=43&empty=&bare")
        );
        let plain = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(hash("path", plain), h("/a"));
        assert_eq!(hash("query", plain), None);
        assert_eq!(hash("query", "GET /a? HTTP/1.1\r\nHost: x\r\n\r\n"), None);
        assert_eq!(hash("uri", plain), h("/a"));
        // No percent-decoding.
        let enc = "GET /a%20b?q=x%20y HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(hash("path", enc), h("/a%20b"));
        assert_eq!(hash("query_param:q", enc), h("x%20y"));
    }

    #[test]
    fn header_key_takes_the_first_and_ignores_name_case() {
        assert_eq!(hash("header:X-User-Id", REQ), h("alice"));
        assert_eq!(hash("header:x-user-id", REQ), h("alice"));
        assert_eq!(hash("header:host", REQ), h("example.com"));
        assert_eq!(hash("header:X-Empty", REQ), None);
        assert_eq!(hash("header:X-Missing", REQ), None);
    }

    #[test]
    fn cookie_key_searches_every_cookie_header() {
        assert_eq!(hash("cookie:session", REQ), h("abc123"));
        assert_eq!(hash("cookie:theme", REQ), h("dark"));
        assert_eq!(hash("cookie:other", REQ), h("1"));
        assert_eq!(hash("cookie:quoted", REQ), h("q v"));
        assert_eq!(hash("cookie:blank", REQ), None);
        assert_eq!(hash("cookie:Session", REQ), None);
        assert_eq!(hash("cookie:missing", REQ), None);
        assert_eq!(
            hash("cookie:session", "GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            None
        );
    }

    #[test]
    fn query_param_key_takes_the_first_match() {
        assert_eq!(hash("query_param:user", REQ), h("42"));
        assert_eq!(hash("query_param:lang", REQ), h("en"));
        assert_eq!(hash("query_param:empty", REQ), None);
        assert_eq!(hash("query_param:bare", REQ), None);
        assert_eq!(hash("query_param:use", REQ), None);
        assert_eq!(
            hash("query_param:user", "GET /x HTTP/1.1\r\nHost: x\r\n\r\n"),
            None
        );
    }

    #[test]
    fn client_ip_key_hashes_the_address_bytes() {
        let head = RequestHead::default();
        let key = HashKey::ClientIp;
        assert_eq!(
            hash_request(&key, b"", &head, IP),
            Some(stable_hash(&[203, 0, 113, 7]))
        );
        // An IPv4 client on a dual-stack listener is the same client.
        let mapped = IpAddr::V6(Ipv4Addr::new(203, 0, 113, 7).to_ipv6_mapped());
        assert_eq!(
            hash_request(&key, b"", &head, mapped),
            hash_request(&key, b"", &head, IP)
        );
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(
            hash_request(&key, b"", &head, v6),
            Some(stable_hash(&Ipv6Addr::LOCALHOST.octets()))
        );
    }

    #[test]
    fn offsets_outside_the_buffer_read_as_absent() {
        let head = RequestHead {
            path: Span::new(5, 50),
            query: Some(Span::new(0, 99)),
            ..RequestHead::default()
        };
        assert_eq!(hash_request(&HashKey::Path, b"GET /", &head, IP), None);
        assert_eq!(hash_request(&HashKey::Query, b"GET /", &head, IP), None);
    }
}

//! Hash keys: which part of a request a hashing algorithm (`consistent_hash`, `maglev`,
//! `ip_hash`) keys on, from the config's `hash_key = "…"`.
//!
//! | `hash_key` | hashes |
//! | --- | --- |
//! | `client_ip` | the client's IP address: 4 bytes for IPv4 (and IPv4-mapped IPv6), 16 for IPv6 |
//! | `path` | the request path without the query (`/` when the target has none) |
//! | `query` | the query string after `?`, as sent |
//! | `uri` | the whole request target as sent (`/path?query`, or absolute-form) |
//! | `header:NAME` | the value of the first `NAME` header (name case-insensitive) |
//! | `cookie:NAME` | the value of cookie `NAME` (case-sensitive) from the `Cookie` header(s) |
//! | `query_param:NAME` | the value of the first `NAME=` parameter of the query |
//!
//! Values are hashed with [`stable_hash`] exactly as they appear on the wire: no
//! percent-decoding (`a%20b` and `a+b` are different keys from `a b`), no case folding of
//! values; cookie values in double quotes are hashed without the quotes. A key that is absent
//! from the request — no such header, cookie or parameter, no query — or whose value is empty
//! gives `None`, and the hashing selectors then spread that request by round robin over the
//! eligible peers (no affinity rather than every key-less request on one peer).

use std::fmt;
use std::net::IpAddr;

use super::stable_hash;
use crate::http::RequestHead;

/// HashKey is the request attribute a hashing algorithm keys on (`hash_key = …`; no default:
/// `consistent_hash` and `maglev` require one, `ip_hash` implies `client_ip`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// `client_ip`: the downstream peer's IP address.
    ClientIp,
    /// `path`: the path part of the request target.
    Path,
    /// `query`: the query part of the request target (after `?`).
    Query,
    /// `uri`: the whole request target.
    Uri,
    /// `header:NAME`: the first header field with this name (compared case-insensitively;
    /// kept as written for display).
    Header(String),
    /// `cookie:NAME`: the cookie with this name (case-sensitive).
    Cookie(String),
    /// `query_param:NAME`: the first query parameter with this name (case-sensitive).
    QueryParam(String),
}

/// The accepted forms, for error messages.
const EXPECTED: &str = "`client_ip`, `path`, `query`, `uri`, `header:NAME`, `cookie:NAME`, \
                        `query_param:NAME`";

/// Whether `b` is an RFC 9110 `tchar` (header and cookie names are tokens).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl HashKey {
    /// Parses a `hash_key` value; the error is a reason for a config error message.
    pub fn parse(s: &str) -> Result<HashKey, String> {
        match s {
            "client_ip" => return Ok(HashKey::ClientIp),
            "path" => return Ok(HashKey::Path),
            "query" => return Ok(HashKey::Query),
            "uri" => return Ok(HashKey::Uri),
            _ => {}
        }
        let Some((kind, name)) = s.split_once(':') else {
            return Err(format!(
                "unknown hash_key `{s}`, expected one of {EXPECTED}"
            ));
        };
        let example = match kind {
            "header" => "header:X-User-Id",
            "cookie" => "cookie:session",
            "query_param" => "query_param:user",
            _ => {
                return Err(format!(
                    "unknown hash_key `{s}`, expected one of {EXPECTED}"
                ))
            }
        };
        if name.is_empty() {
            return Err(format!(
                "`{kind}:` needs a name after the colon, e.g. `{example}`"
            ));
        }
        let valid = match kind {
            "query_param" => name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"&=#?".contains(&b)),
            _ => name.bytes().all(is_tchar),
        };
        if !valid {
            return Err(format!(
                "`{name}` is not a valid {} name in hash_key `{s}`",
                kind.replace('_', " ")
            ));
        }
        let name = name.to_string();
        Ok(match kind {
            "header" => HashKey::Header(name),
            "cookie" => HashKey::Cookie(name),
            _ => HashKey::QueryParam(name),
        })
    }

    /// Hashes this key of a request: `buf` is the buffer `head` was parsed from, `client_ip`
    /// the downstream peer. `None` when the key is absent from the request or empty (the
    /// selectors then rotate). Never panics on odd offsets: an offset outside `buf` reads as
    /// absent.
    pub fn hash(&self, buf: &[u8], head: &RequestHead, client_ip: IpAddr) -> Option<u64> {
        let value = match self {
            HashKey::ClientIp => {
                return Some(match client_ip {
                    IpAddr::V4(v4) => stable_hash(&v4.octets()),
                    IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                        Some(v4) => stable_hash(&v4.octets()),
                        None => stable_hash(&v6.octets()),
                    },
                })
            }
            HashKey::Path => {
                let path = get(buf, head.path)?;
                if path.is_empty() {
                    b"/"
                } else {
                    path
                }
            }
            HashKey::Query => get(buf, head.query?)?,
            HashKey::Uri => get(buf, head.target)?,
            HashKey::Header(name) => head.headers.iter().find_map(|h| {
                let n = get(buf, h.name)?;
                n.eq_ignore_ascii_case(name.as_bytes())
                    .then(|| get(buf, h.value))
                    .flatten()
            })?,
            HashKey::Cookie(name) => cookie(buf, head, name.as_bytes())?,
            HashKey::QueryParam(name) => query_param(get(buf, head.query?)?, name.as_bytes())?,
        };
        (!value.is_empty()).then(|| stable_hash(value))
    }
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKey::ClientIp => f.write_str("client_ip"),
            HashKey::Path => f.write_str("path"),
            HashKey::Query => f.write_str("query"),
            HashKey::Uri => f.write_str("uri"),
            HashKey::Header(n) => write!(f, "header:{n}"),
            HashKey::Cookie(n) => write!(f, "cookie:{n}"),
            HashKey::QueryParam(n) => write!(f, "query_param:{n}"),
        }
    }
}

impl std::str::FromStr for HashKey {
    type Err = String;

    fn from_str(s: &str) -> Result<HashKey, String> {
        HashKey::parse(s)
    }
}

/// The bytes of an offset pair, `None` if it is outside `buf`.
#[inline]
fn get(buf: &[u8], r: (u32, u32)) -> Option<&[u8]> {
    buf.get(r.0 as usize..r.1 as usize)
}

/// The value of cookie `name` from the request's `Cookie` header(s) (`a=1; b=2`, RFC 6265
/// §4.2.1; several `Cookie` fields are searched in order), without surrounding quotes.
fn cookie<'a>(buf: &'a [u8], head: &RequestHead, name: &[u8]) -> Option<&'a [u8]> {
    head.headers
        .iter()
        .filter(|h| get(buf, h.name).is_some_and(|n| n.eq_ignore_ascii_case(b"cookie")))
        .filter_map(|h| get(buf, h.value))
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
    use crate::http::{parse_request, ParseStatus};
    use std::net::{Ipv4Addr, Ipv6Addr};

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));

    /// Parses `raw` and hashes `key` of it.
    fn hash(key: &str, raw: &str) -> Option<u64> {
        let mut head = RequestHead::default();
        let status = parse_request(raw.as_bytes(), &Limits::default(), &mut head).unwrap();
        assert_eq!(status, ParseStatus::Complete);
        HashKey::parse(key).unwrap().hash(raw.as_bytes(), &head, IP)
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
    fn parses_every_kind_and_displays_it_back() {
        for s in [
            "client_ip",
            "path",
            "query",
            "uri",
            "header:X-User-Id",
            "cookie:session",
            "query_param:user",
        ] {
            assert_eq!(HashKey::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(
            HashKey::parse("header:X-User-Id"),
            Ok(HashKey::Header("X-User-Id".to_string()))
        );
    }

    #[test]
    fn parse_errors_say_what_is_expected() {
        assert_eq!(
            HashKey::parse("ip").unwrap_err(),
            "unknown hash_key `ip`, expected one of `client_ip`, `path`, `query`, `uri`, \
             `header:NAME`, `cookie:NAME`, `query_param:NAME`"
        );
        assert!(HashKey::parse("host:x")
            .unwrap_err()
            .starts_with("unknown hash_key `host:x`"));
        assert_eq!(
            HashKey::parse("header:").unwrap_err(),
            "`header:` needs a name after the colon, e.g. `header:X-User-Id`"
        );
        assert_eq!(
            HashKey::parse("header:X User").unwrap_err(),
            "`X User` is not a valid header name in hash_key `header:X User`"
        );
        assert_eq!(
            HashKey::parse("query_param:a=b").unwrap_err(),
            "`a=b` is not a valid query param name in hash_key `query_param:a=b`"
        );
        assert!(HashKey::parse("cookie:a;b").is_err());
        assert!(HashKey::parse("Path").is_err());
    }

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
            key.hash(b"", &head, IP),
            Some(stable_hash(&[203, 0, 113, 7]))
        );
        // An IPv4 client on a dual-stack listener is the same client.
        let mapped = IpAddr::V6(Ipv4Addr::new(203, 0, 113, 7).to_ipv6_mapped());
        assert_eq!(key.hash(b"", &head, mapped), key.hash(b"", &head, IP));
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(
            key.hash(b"", &head, v6),
            Some(stable_hash(&Ipv6Addr::LOCALHOST.octets()))
        );
    }

    #[test]
    fn offsets_outside_the_buffer_read_as_absent() {
        let head = RequestHead {
            path: (5, 50),
            query: Some((0, 99)),
            ..RequestHead::default()
        };
        assert_eq!(HashKey::Path.hash(b"GET /", &head, IP), None);
        assert_eq!(HashKey::Query.hash(b"GET /", &head, IP), None);
    }
}

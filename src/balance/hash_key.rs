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
//! Values are hashed with [`stable_hash`](super::stable_hash) exactly as they appear on the wire: no
//! percent-decoding (`a%20b` and `a+b` are different keys from `a b`), no case folding of
//! values; cookie values in double quotes are hashed without the quotes. A key that is absent
//! from the request — no such header, cookie or parameter, no query — or whose value is empty
//! gives `None`, and the hashing selectors then spread that request by round robin over the
//! eligible peers (no affinity rather than every key-less request on one peer).
//!
//! This module only names the key: balance never sees a request (selectors get the `u64`,
//! [`PickRequest::hash`](super::PickRequest::hash)). Taking the key's value out of a parsed
//! request is [`crate::upstream::hash_request`].

use std::fmt;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}

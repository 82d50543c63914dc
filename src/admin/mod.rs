//! The admin HTTP endpoint. Reading: `GET /status` (peer health and shard counters, JSON),
//! `GET /health` (`ok`), `GET /upstreams` (groups and peers, JSON), `GET /config` (the
//! running configuration as TOML), `GET /metrics` (Prometheus text format 0.0.4). Writing:
//! `POST /reload`, `POST /upstreams/{name}/peers`, `PATCH /upstreams/{name}/peers/{address}`,
//! `DELETE /upstreams/{name}/peers/{address}`. Any other path is 404, another method on a
//! known path 405 (with `Allow`).
//!
//! Writing requests need `Authorization: Bearer <admin_token>` when a token is configured
//! (401 otherwise). Errors of writing requests are JSON: `{"error": "...", "field": "..."}`
//! (`field` names the offending input, a JSON field or a config key path).
//!
//! One request per connection, answered with `Connection: close`, within [`TIMEOUT`]. The head
//! is parsed by the proxy's own parser ([`http::parse_request`]) under [`limits`]; a head that
//! does not fit in [`MAX_HEAD`] bytes gets no answer, any other parse error a 400. A body needs
//! `Content-Length` (411 without, for a chunked one) and at most [`MAX_BODY`] bytes (413).
//!
//! The endpoint runs on the control thread, which accepts the connections and calls [`serve`]
//! for each; what it shows and changes goes through the [`Host`] trait, so this module knows
//! nothing of health state machines or snapshots.

use std::time::Duration;

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::Limits;
use crate::http::{self, BodyKind, HttpError, Method, ParseStatus, RequestHead};
use crate::io::read_append;

/// An admin request must arrive and be answered within this.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest admin request head.
pub const MAX_HEAD: usize = 8 * 1024;
/// Largest admin request body.
pub const MAX_BODY: usize = 64 * 1024;

/// Host is what the admin endpoint asks of the thread that runs it.
pub trait Host {
    /// The bearer token writing requests need, if one is configured.
    fn token(&self) -> Option<String>;
    /// The `/status` document.
    fn status(&self) -> Value;
    /// The `/upstreams` document.
    fn upstreams(&self) -> Value;
    /// The running configuration as TOML (`/config`).
    fn config_toml(&self) -> String;
    /// The Prometheus text exposition (`/metrics`).
    fn metrics(&self) -> String;
    /// Re-reads the configuration file and applies it (`POST /reload`): what it changed, or
    /// why it was refused.
    fn reload(&self) -> Result<Value, ApiError>;
    /// Applies a peer change through the same path as a reload.
    fn change_peers(&self, change: PeerChange) -> Result<Value, ApiError>;
}

/// NewPeer is the body of `POST /upstreams/{name}/peers`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPeer {
    /// `ip:port` or `host:port`.
    pub address: String,
    /// Default 1.
    pub weight: Option<u32>,
    /// Default false.
    pub backup: Option<bool>,
    /// Optional region label.
    pub region: Option<String>,
}

/// PeerPatch is the body of `PATCH /upstreams/{name}/peers/{address}`: the fields to change.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerPatch {
    /// A new weight.
    pub weight: Option<u32>,
    /// Whether it is a backup.
    pub backup: Option<bool>,
    /// `true`: no new requests, requests in flight finish; `false` ends a drain.
    pub drain: Option<bool>,
}

/// PeerChange is one runtime change of an upstream's peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    /// Add a peer.
    Add {
        /// The upstream's name.
        upstream: String,
        /// The peer.
        peer: NewPeer,
    },
    /// Change a peer.
    Update {
        /// The upstream's name.
        upstream: String,
        /// The peer's address as configured.
        address: String,
        /// What to change.
        patch: PeerPatch,
    },
    /// Remove a peer: no new requests, requests in flight finish, its idle connections close.
    Remove {
        /// The upstream's name.
        upstream: String,
        /// The peer's address as configured.
        address: String,
    },
}

/// ApiError is a refused admin request: its status and what to tell the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status (4xx).
    pub status: u16,
    /// The input at fault (a JSON field, a path part, a config key path), if one is.
    pub field: Option<String>,
    /// Why.
    pub message: String,
}

impl ApiError {
    /// An error of `status` about `field`.
    pub fn new(status: u16, field: Option<&str>, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            field: field.map(str::to_string),
            message: message.into(),
        }
    }

    fn body(&self) -> String {
        let mut v = json!({ "error": self.message });
        if let Some(f) = &self.field {
            v["field"] = json!(f);
        }
        format!("{v:#}\n")
    }
}

/// The parser limits of an admin request head: [`MAX_HEAD`] bytes, the proxy's defaults
/// otherwise.
pub fn limits() -> Limits {
    Limits {
        max_header_bytes: MAX_HEAD,
        ..Limits::default()
    }
}

/// Serves one admin connection: reads one request and answers it, within [`TIMEOUT`], then
/// closes.
pub async fn serve(host: &impl Host, stream: TcpStream) {
    let _ = monoio::time::timeout(TIMEOUT, serve_unbounded(host, stream)).await;
}

/// Response is an answer before it is written.
struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
    /// For 405: the methods the path allows.
    allow: Option<&'static str>,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            allow: None,
        }
    }

    fn json(status: u16, v: &Value) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: format!("{v:#}\n"),
            allow: None,
        }
    }

    fn error(e: &ApiError) -> Response {
        Response {
            status: e.status,
            content_type: "application/json",
            body: e.body(),
            allow: None,
        }
    }

    fn not_allowed(allow: &'static str) -> Response {
        Response {
            allow: Some(allow),
            ..Response::text(405, "method not allowed\n")
        }
    }
}

async fn serve_unbounded(host: &impl Host, mut stream: TcpStream) {
    let limits = limits();
    let mut head = RequestHead::default();
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        if buf.len() >= MAX_HEAD {
            return;
        }
        match read_append(&mut stream, &mut buf, 1024, MAX_HEAD, None).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        match http::parse_request(&buf, &limits, &mut head) {
            Ok(ParseStatus::Complete) => break,
            Ok(ParseStatus::Partial) => {}
            Err(HttpError::HeaderTooLarge) if buf.len() >= MAX_HEAD => return,
            Err(_) => {
                let _ = write_response(&mut stream, Response::text(400, "bad request\n")).await;
                return;
            }
        }
    }
    let body_len = match head.body {
        BodyKind::None => 0,
        BodyKind::Length(n) if n as usize <= MAX_BODY => n as usize,
        BodyKind::Length(_) => {
            let _ = write_response(&mut stream, Response::text(413, "body too large\n")).await;
            return;
        }
        _ => {
            let r = Response::text(411, "a body needs Content-Length\n");
            let _ = write_response(&mut stream, r).await;
            return;
        }
    };
    let end = head.head_len + body_len;
    while buf.len() < end {
        match read_append(&mut stream, &mut buf, 4096, end, None).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    let request = Request {
        method: head.method,
        path: head.path.get(&buf),
        authorization: head
            .headers
            .iter()
            .find(|h| h.name(&buf).eq_ignore_ascii_case(b"authorization"))
            .map(|h| h.value(&buf)),
        body: &buf[head.head_len..end],
    };
    let response = route(host, &request);
    let _ = write_response(&mut stream, response).await;
}

/// Request is one admin request, read whole.
struct Request<'a> {
    method: Method,
    path: &'a [u8],
    authorization: Option<&'a [u8]>,
    body: &'a [u8],
}

/// Answers one request.
fn route(host: &impl Host, req: &Request<'_>) -> Response {
    let path = match std::str::from_utf8(req.path) {
        Ok(p) => p,
        Err(_) => return Response::text(404, "not found\n"),
    };
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let m = req.method;
    match parts.as_slice() {
        ["status"] => match m {
            Method::Get => Response::json(200, &host.status()),
            _ => Response::not_allowed("GET"),
        },
        ["health"] => match m {
            Method::Get => Response::text(200, "ok\n"),
            _ => Response::not_allowed("GET"),
        },
        ["upstreams"] => match m {
            Method::Get => Response::json(200, &host.upstreams()),
            _ => Response::not_allowed("GET"),
        },
        ["config"] => match m {
            Method::Get => Response {
                content_type: "application/toml",
                ..Response::text(200, host.config_toml())
            },
            _ => Response::not_allowed("GET"),
        },
        ["metrics"] => match m {
            Method::Get => Response {
                content_type: crate::metrics::render::CONTENT_TYPE,
                ..Response::text(200, host.metrics())
            },
            _ => Response::not_allowed("GET"),
        },
        ["reload"] => match m {
            Method::Post => writing(host, req, |h| h.reload()),
            _ => Response::not_allowed("POST"),
        },
        ["upstreams", name, "peers"] => match m {
            Method::Post => writing(host, req, |h| {
                let peer: NewPeer = parse_json(req.body)?;
                h.change_peers(PeerChange::Add {
                    upstream: decode(name)?,
                    peer,
                })
            }),
            _ => Response::not_allowed("POST"),
        },
        ["upstreams", name, "peers", address] => match m {
            Method::Patch => writing(host, req, |h| {
                let patch: PeerPatch = parse_json(req.body)?;
                h.change_peers(PeerChange::Update {
                    upstream: decode(name)?,
                    address: decode(address)?,
                    patch,
                })
            }),
            Method::Delete => writing(host, req, |h| {
                h.change_peers(PeerChange::Remove {
                    upstream: decode(name)?,
                    address: decode(address)?,
                })
            }),
            _ => Response::not_allowed("PATCH, DELETE"),
        },
        _ => Response::text(404, "not found\n"),
    }
}

/// Runs a writing request after checking its bearer token.
fn writing<H: Host>(
    host: &H,
    req: &Request<'_>,
    f: impl FnOnce(&H) -> Result<Value, ApiError>,
) -> Response {
    if let Some(token) = host.token() {
        let given = req.authorization.and_then(|v| {
            v.strip_prefix(b"Bearer ")
                .or_else(|| v.strip_prefix(b"bearer "))
        });
        if !given.is_some_and(|g| same_secret(g, token.as_bytes())) {
            return Response::error(&ApiError::new(
                401,
                Some("Authorization"),
                "this request needs `Authorization: Bearer <admin_token>`",
            ));
        }
    }
    match f(host) {
        Ok(v) => Response::json(200, &v),
        Err(e) => Response::error(&e),
    }
}

/// Compares two secrets in time that depends only on their lengths.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parses a JSON request body; a bad one is a 400 naming the field serde names.
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        // serde names the field in backticks: "unknown field `wieght`", "missing field `address`".
        let field = msg.split('`').nth(1).map(str::to_string);
        ApiError {
            status: 400,
            field: field.or(Some("body".to_string())),
            message: format!("invalid JSON body: {msg}"),
        }
    })
}

/// Percent-decodes one path segment.
fn decode(segment: &str) -> Result<String, ApiError> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                None => return Err(ApiError::new(400, Some("path"), "bad percent-encoding")),
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ApiError::new(400, Some("path"), "path is not UTF-8"))
}

/// Writes a complete `Connection: close` response.
async fn write_response(stream: &mut TcpStream, r: Response) -> std::io::Result<()> {
    let reason = http::status_reason(r.status);
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n",
        r.status,
        r.content_type,
        r.body.len()
    );
    if let Some(allow) = r.allow {
        out.push_str(&format!("Allow: {allow}\r\n"));
    }
    if r.status == 401 {
        out.push_str("WWW-Authenticate: Bearer\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&r.body);
    let (res, _) = stream.write_all(out.into_bytes()).await;
    res.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cret", b"s3creT"));
        assert!(!same_secret(b"s3cre", b"s3cret"));
        assert!(!same_secret(b"", b"x"));
    }

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(decode("127.0.0.1%3A8080").unwrap(), "127.0.0.1:8080");
        assert_eq!(decode("%5B%3A%3A1%5D:80").unwrap(), "[::1]:80");
        assert_eq!(decode("plain").unwrap(), "plain");
        assert!(decode("bad%zz").is_err());
        assert!(decode("cut%4").is_err());
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = parse_json::<NewPeer>(br#"{"address":"a:1","wieght":2}"#).unwrap_err();
        assert_eq!((e.status, e.field.as_deref()), (400, Some("wieght")));
        let e = parse_json::<NewPeer>(br#"{"weight":2}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("address"));
        let e = parse_json::<PeerPatch>(b"not json").unwrap_err();
        assert_eq!(e.status, 400);
        let p: PeerPatch = parse_json(br#"{"drain":true}"#).unwrap();
        assert_eq!(p.drain, Some(true));
    }
}

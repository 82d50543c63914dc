//! The programmable picker: library users decide, per request, which upstream group serves it
//! and what its balancing hash key is — the analogue of Pingora's `upstream_peer`.
//!
//! The config-driven [`Router`](super::Router) is the default picker. A custom one is given to
//! [`Server::start_with_picker`](crate::Server::start_with_picker); every shard calls it through a
//! shared `Arc`, so it must be `Send + Sync` and should not take locks (it runs on the request
//! path of every shard).

use std::net::SocketAddr;

use crate::config::GroupId;
use crate::failover::FailureHooks;
use crate::http::{Method, RequestHead};

/// Pick is a picker's decision for one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pick {
    /// The upstream group (see [`Upstreams::index`]); `None` answers 404.
    pub upstream: Option<GroupId>,
    /// Hash key for hashing algorithms (see [`crate::balance::stable_hash`]); `None` uses the
    /// group's configured `hash_key` (or round robin when the group does not hash).
    pub hash: Option<u64>,
}

/// Upstreams names the configured upstream groups, for pickers to look up by name.
#[derive(Debug, Clone, Copy)]
pub struct Upstreams<'a> {
    /// Group names in config order.
    names: &'a [String],
}

impl<'a> Upstreams<'a> {
    /// Wraps the group names in config order.
    pub fn new(names: &'a [String]) -> Self {
        Upstreams { names }
    }
    /// The group named `name`.
    pub fn index(&self, name: &str) -> Option<GroupId> {
        self.names.iter().position(|n| n == name).map(GroupId::new)
    }
    /// How many groups there are.
    pub fn len(&self) -> usize {
        self.names.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// RequestInfo is a read-only view of a request head for pickers (no copies).
#[derive(Clone, Copy)]
pub struct RequestInfo<'a> {
    /// The buffer the head was parsed from.
    buf: &'a [u8],
    /// The parsed head (offsets into `buf`).
    head: &'a RequestHead,
    /// The client's address.
    client: SocketAddr,
    /// The server name a TLS client sent (SNI), if any.
    sni: Option<&'a str>,
}

impl<'a> RequestInfo<'a> {
    /// Wraps a parsed head.
    pub fn new(buf: &'a [u8], head: &'a RequestHead, client: SocketAddr) -> Self {
        RequestInfo {
            buf,
            head,
            client,
            sni: None,
        }
    }

    /// The same, for a connection whose TLS client sent `sni`.
    pub fn with_sni(self, sni: Option<&'a str>) -> Self {
        RequestInfo { sni, ..self }
    }

    /// The server name the client sent in its TLS handshake (SNI); `None` over cleartext or
    /// without SNI.
    pub fn sni(&self) -> Option<&'a str> {
        self.sni
    }
    /// The method.
    pub fn method(&self) -> Method {
        self.head.method
    }
    /// The method token as sent.
    pub fn method_str(&self) -> &'a [u8] {
        self.head.method_range.get(self.buf)
    }
    /// The request target as sent (`/path?query`).
    pub fn target(&self) -> &'a [u8] {
        self.head.target.get(self.buf)
    }
    /// The path, without the query.
    pub fn path(&self) -> &'a [u8] {
        self.head.path.get(self.buf)
    }
    /// The query (after `?`), if any.
    pub fn query(&self) -> Option<&'a [u8]> {
        self.head.query.map(|q| q.get(self.buf))
    }
    /// The Host header, if any.
    pub fn host(&self) -> Option<&'a [u8]> {
        self.head.host.map(|h| h.get(self.buf))
    }
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        let buf = self.buf;
        self.head
            .headers
            .iter()
            .find(|h| h.name(buf).eq_ignore_ascii_case(name.as_bytes()))
            .map(|h| h.value(buf))
    }
    /// Every header as (name, value).
    pub fn headers(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let buf = self.buf;
        self.head
            .headers
            .iter()
            .map(move |h| (h.name(buf), h.value(buf)))
    }
    /// The client's address.
    pub fn client(&self) -> SocketAddr {
        self.client
    }
}

/// Picker decides which upstream group serves a request and with which hash key. Its
/// [`FailureHooks`] (Pingora's `fail_to_connect` / `error_while_proxying`) may decide what
/// happens after a failed try; both default to the upstream's `retry = { … }` policy, so a
/// picker that does not care writes `impl FailureHooks for MyPicker {}`.
pub trait Picker: FailureHooks + Send + Sync + 'static {
    /// Returns the decision for one request.
    fn pick(&self, req: &RequestInfo<'_>, upstreams: &Upstreams<'_>) -> Pick;
}

//! Head rewriting for both directions.
// STUB: to be implemented (see the http helper's brief).
use super::{RequestHead, ResponseHead, Version};
use std::net::IpAddr;

/// ForwardInfo is what the proxy adds to a forwarded request about the client.
#[derive(Debug, Clone, Copy)]
pub struct ForwardInfo {
    /// The client's address (appended to X-Forwarded-For).
    pub client_ip: IpAddr,
    /// `http` or `https` (X-Forwarded-Proto).
    pub proto: &'static str,
}

/// Writes the upstream request head for `head` (parsed from `buf`) to `out`.
pub fn rewrite_request(_buf: &[u8], _head: &RequestHead, _fwd: &ForwardInfo, _out: &mut Vec<u8>) {
    todo!()
}

/// Writes the client response head for `head` (parsed from `buf`) to `out`.
pub fn rewrite_response(
    _buf: &[u8],
    _head: &ResponseHead,
    _client_version: Version,
    _keep_alive: bool,
    _out: &mut Vec<u8>,
) {
    todo!()
}

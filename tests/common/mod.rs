//! Shared helpers of the black-box suite, one module per role:
//!
//! - [`wire`]: the raw client ([`Client`], [`Response`]), the buffered reader both sides use
//!   ([`Wire`], [`ReadErr`]) and header and byte helpers for messages.
//! - [`backend`]: [`Backend`], a programmable HTTP/1.1 origin server ([`Request`], [`Reply`]).
//! - [`faults`]: peers that misbehave ([`FaultPeer`], [`ResetBackend`], [`blackhole_peer`],
//!   [`refusing_addr`]).
//! - [`proxy`]: the proxy under test ([`ProxyConfig`], [`Proxy`] in-process, [`ProxyProcess`]
//!   the real binary).
//! - [`pattern`]: deterministic test data checked on the fly, and `sha256_hex`.
//! - [`ws`]: [`WsEcho`], a WebSocket origin that echoes its tunnel's bytes.
//! - [`certs`]: test TLS material ([`Ca`], [`Leaf`]) and [`TlsBackend`], an HTTPS origin that
//!   reports the SNI it received.
//! - [`dns`]: [`DnsServer`], a real DNS server answering from a zone the test sets.
//! - [`metrics`]: the admin endpoint's `/metrics` through a real Prometheus parser
//!   ([`scrape_metrics`], [`metric_sample`]).
//!
//! Every item is re-exported here, so a test file says `mod common; use common::*;`.
//!
//! Each test file is its own crate and uses only part of these helpers, so the rest would be
//! dead code in that crate. `dead_code` is allowed per module below, and `unused_imports` on the
//! re-exports only (not crate-wide in the test files, not on the test files' own items); the
//! helper modules' own imports and every other lint stay checked.

use std::time::Duration;

#[allow(dead_code)]
pub mod backend;
#[allow(dead_code)]
pub mod certs;
#[allow(dead_code)]
pub mod dns;
#[allow(dead_code)]
pub mod faults;
#[allow(dead_code)]
pub mod metrics;
#[allow(dead_code)]
pub mod pattern;
#[allow(dead_code)]
pub mod proxy;
#[allow(dead_code)]
pub mod wire;
#[allow(dead_code)]
pub mod ws;

// A re-export a test file does not use is not an error either.
#[allow(unused_imports)]
pub use {
    backend::*, certs::*, dns::*, faults::*, metrics::*, pattern::*, proxy::*, wire::*, ws::*,
};

/// IO_TIMEOUT bounds every single socket read and write of the test side.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Header is one header field as (name as sent, value trimmed).
pub type Header = (String, String);

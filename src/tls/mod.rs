//! TLS on both sides of the proxy, on rustls with the ring provider.
//!
//! - `stream`: [`TlsStream`], a rustls connection over a monoio TCP stream with owned-buffer
//!   I/O; it implements `io::Transport`, so the request path runs over it unchanged.
//! - `server`: downstream TLS: certificates by SNI ([`CertResolver`]), a listener's settings
//!   ([`ServerTls`]) and their per-shard copy ([`ShardTls`], with the shard's session cache),
//!   the handshake ([`accept`]) and why one failed ([`HandshakeFailure`]).
//! - `client`: upstream TLS: a peer's settings ([`UpstreamTls`]), an upstream's settings
//!   without a server name for the peers the config does not name ([`TlsTemplate`]), the handshake
//!   ([`connect`]), the system roots, what counts as a TLS failure.
//!
//! Everything that reads files (certificates, keys, CA bundles) runs while a config is
//! validated (`config/tls.rs`, on the control thread), never on the request path.
//!
//! This module imports only `io` (for the `Transport` trait it implements).

mod client;
mod server;
mod stream;

pub use client::{
    connect, is_tls_failure, system_roots, ClientTlsStream, NoVerify, RootsOrPinned, TlsTemplate,
    UpstreamTls,
};
pub use server::{
    accept, reject_cleartext, ticketer, AcceptError, CertInfo, CertResolver, HandshakeFailure,
    ServerTls, ServerTlsStream, ShardTls, SERVER_ALPN, SESSION_CACHE_PER_SHARD,
};
pub use stream::TlsStream;

/// The crypto provider every TLS configuration of ringlb uses: rustls's ring backend (no
/// cmake or Go needed to build it, unlike aws-lc-rs).
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<std::sync::Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The rustls error inside an I/O error the TLS stream returned, if it is one.
pub fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

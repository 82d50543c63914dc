//! Downstream TLS: the certificates of a listener chosen by SNI ([`CertResolver`]), the
//! listener's rustls configuration ([`ServerTls`], built once per config generation by
//! `config/tls.rs`), its per-shard copy with the shard's own session cache ([`ShardTls`]),
//! and the handshake of an accepted connection ([`accept`]) with its failure reasons.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConnection;

use super::stream::TlsStream;

/// The protocols a TLS listener offers in ALPN, most preferred first: HTTP/2, then
/// HTTP/1.1. [`accept`]'s caller reads the choice from [`ServerTlsStream::alpn`] and hands an
/// `h2` connection to the HTTP/2 server instead of `proxy::serve`.
pub const SERVER_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Sessions a shard's cache keeps for TLS 1.2 session-id resumption (a TLS 1.3 client
/// resumes with a ticket instead, which needs no server state).
pub const SESSION_CACHE_PER_SHARD: usize = 4096;

/// A server-side TLS stream.
pub type ServerTlsStream = TlsStream<ServerConnection>;

/// CertResolver picks a listener's certificate by the SNI the client sent: an exact name
/// first, then a wildcard (`*.b.example` covers `x.b.example`, not `b.example` nor
/// `y.x.b.example`), else the default (the first configured certificate).
#[derive(Debug)]
pub struct CertResolver {
    /// Lower-case names → certificate.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Lower-case parent domains of `*.` names → certificate.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// For clients without SNI or with a name no certificate has.
    default: Arc<CertifiedKey>,
}

impl CertResolver {
    /// A resolver whose default is `default`.
    pub fn new(default: Arc<CertifiedKey>) -> Self {
        CertResolver {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default,
        }
    }

    /// Adds `name` (`a.example` or `*.b.example`) for `key`; an earlier entry for the same
    /// name wins (certificates are listed in preference order).
    pub fn add(&mut self, name: &str, key: &Arc<CertifiedKey>) {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match name.strip_prefix("*.") {
            Some(parent) => self.wildcard.entry(parent.to_string()),
            None => self.exact.entry(name),
        }
        .or_insert_with(|| key.clone());
    }

    /// The certificate for a client that sent `sni`.
    pub fn pick(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = sni else {
            return &self.default;
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return k;
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = self.wildcard.get(parent) {
                return k;
            }
        }
        &self.default
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()).clone())
    }
}

/// The key that encrypts session tickets, shared by every listener and shard of the process
/// (a client's next connection lands on any shard) and rotated every 6 hours (rustls's
/// `TicketRotator`: tickets of the previous key are still accepted).
pub fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, String> {
    static TICKETER: OnceLock<Arc<dyn rustls::server::ProducesTickets>> = OnceLock::new();
    if let Some(t) = TICKETER.get() {
        return Ok(t.clone());
    }
    let t = rustls::crypto::ring::Ticketer::new()
        .map_err(|e| format!("cannot make a session-ticket key: {e}"))?;
    Ok(TICKETER.get_or_init(|| t).clone())
}

/// CertInfo is what the config keeps about one configured certificate, for messages and
/// warnings.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// The `cert` path as written.
    pub cert: String,
    /// The key path of the entry (`server.listen[0].tls.certificates[1]`).
    pub key_path: String,
    /// The names it is chosen for (configured `names`, else its DNS SANs).
    pub names: Vec<String>,
    /// End of its validity, Unix seconds.
    pub not_after: i64,
}

/// ServerTls is one TLS listener's settings: the rustls configuration every shard copies
/// (certificates by SNI, ALPN, TLS 1.2 and 1.3, the shared ticket key) and what is known about
/// its certificates.
#[derive(Clone)]
pub struct ServerTls {
    /// The configuration (its session cache is replaced per shard, see [`ShardTls`]).
    pub config: Arc<rustls::ServerConfig>,
    /// The certificates, the default first.
    pub certs: Vec<CertInfo>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("certs", &self.certs)
            .finish_non_exhaustive()
    }
}

/// ShardTls is one shard's TLS listeners under one config generation: each listener's
/// configuration with the shard's own session cache in it (so session lookups never touch
/// another shard's memory). Built with every `Live`; the cache outlives reloads.
#[derive(Default)]
pub struct ShardTls {
    /// By the listen address as configured.
    listeners: Vec<(SocketAddr, Arc<rustls::ServerConfig>)>,
}

impl ShardTls {
    /// The shard's copies of `listeners`' configurations, sharing `sessions`.
    pub fn new(
        listeners: &[(SocketAddr, Arc<ServerTls>)],
        sessions: &Arc<ServerSessionMemoryCache>,
    ) -> ShardTls {
        ShardTls {
            listeners: listeners
                .iter()
                .map(|(addr, tls)| {
                    let mut cfg = (*tls.config).clone();
                    cfg.session_storage = sessions.clone();
                    (*addr, Arc::new(cfg))
                })
                .collect(),
        }
    }

    /// A fresh session cache for a shard.
    pub fn session_cache() -> Arc<ServerSessionMemoryCache> {
        ServerSessionMemoryCache::new(SESSION_CACHE_PER_SHARD)
    }

    /// The configuration of the TLS listener configured as `addr`, if it is one.
    pub fn listener(&self, addr: SocketAddr) -> Option<&Arc<rustls::ServerConfig>> {
        self.listeners
            .iter()
            .find(|(a, _)| *a == addr)
            .map(|(_, c)| c)
    }
}

/// HandshakeFailure is why a client's TLS handshake failed: the `reason` label of
/// `ringlb_tls_handshake_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Not done within `request_header_ms`.
    Timeout,
    /// The client closed the connection before the handshake ended.
    Eof,
    /// The client spoke something other than TLS (cleartext HTTP, most often).
    Cleartext,
    /// The client sent an alert (it rejected the certificate, most often).
    Alert,
    /// No protocol version, cipher suite, group or ALPN protocol in common.
    Incompatible,
    /// The client broke the protocol (malformed or unexpected messages).
    Protocol,
    /// The socket failed.
    Io,
}

impl HandshakeFailure {
    /// Every reason, in the order of the metric's counters.
    pub const ALL: [HandshakeFailure; 7] = [
        HandshakeFailure::Timeout,
        HandshakeFailure::Eof,
        HandshakeFailure::Cleartext,
        HandshakeFailure::Alert,
        HandshakeFailure::Incompatible,
        HandshakeFailure::Protocol,
        HandshakeFailure::Io,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Eof => "eof",
            HandshakeFailure::Cleartext => "cleartext",
            HandshakeFailure::Alert => "alert",
            HandshakeFailure::Incompatible => "incompatible",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Io => "io",
        }
    }

    /// The reason for a handshake that failed with `e`.
    pub fn of(e: &io::Error) -> HandshakeFailure {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            return HandshakeFailure::Eof;
        }
        match super::rustls_error(e) {
            Some(rustls::Error::AlertReceived(_)) => HandshakeFailure::Alert,
            Some(rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol) => {
                HandshakeFailure::Incompatible
            }
            Some(_) => HandshakeFailure::Protocol,
            None if matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ) =>
            {
                HandshakeFailure::Eof
            }
            None => HandshakeFailure::Io,
        }
    }
}

/// The answer to a client that sent cleartext HTTP to a TLS port: a 400 it can read, then the
/// connection closes (as nginx answers "The plain HTTP request was sent to HTTPS port").
const CLEARTEXT_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain\r\n\
Content-Length: 43\r\n\
Connection: close\r\n\
\r\n\
This port speaks HTTPS: use https:// here.\n";

/// AcceptError is a failed server handshake: why, the error, and for a client that spoke
/// cleartext its connection, to answer with [`reject_cleartext`].
pub struct AcceptError {
    /// Why, for the metric.
    pub reason: HandshakeFailure,
    /// What failed, for the debug log.
    pub error: io::Error,
    /// The connection of a client that did not speak TLS.
    pub cleartext: Option<TcpStream>,
}

/// Runs the server handshake on an accepted connection within `timeout`. On a failure the
/// client got the alert rustls prepared (unless it spoke cleartext: see [`AcceptError`]).
pub async fn accept(
    config: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<ServerTlsStream, AcceptError> {
    let fail = |reason, error| AcceptError {
        reason,
        error,
        cleartext: None,
    };
    let conn = ServerConnection::new(config)
        .map_err(|e| fail(HandshakeFailure::Io, io::Error::other(e)))?;
    let mut tls = TlsStream::new(tcp, conn);
    let deadline = std::time::Instant::now() + timeout;
    let res = match monoio::time::timeout(timeout, tls.handshake()).await {
        Ok(r) => r,
        Err(_) => {
            return Err(fail(
                HandshakeFailure::Timeout,
                io::Error::from(io::ErrorKind::TimedOut),
            ))
        }
    };
    match res {
        Ok(()) => Ok(tls),
        Err(e) => {
            if matches!(tls.first_byte(), Some(b) if b != 0x16) {
                return Err(AcceptError {
                    reason: HandshakeFailure::Cleartext,
                    error: e,
                    cleartext: Some(tls.into_tcp()),
                });
            }
            // Tell the client why (the alert rustls queued), within the same time.
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let _ = monoio::time::timeout(left, tls.send_alert()).await;
            Err(fail(HandshakeFailure::of(&e), e))
        }
    }
}

/// Answers a client that spoke cleartext HTTP to a TLS port with `CLEARTEXT_ANSWER` (a 400),
/// half-closes, and reads what it still sends until it closes too (so that closing does not
/// reset the answer away), within `timeout`.
pub async fn reject_cleartext(tcp: TcpStream, timeout: Duration) {
    let _ = monoio::time::timeout(timeout, answer_cleartext(tcp)).await;
}

async fn answer_cleartext(mut tcp: TcpStream) {
    let (res, _) = tcp.write_all(CLEARTEXT_ANSWER).await;
    if res.is_err() {
        return;
    }
    {
        use std::os::fd::AsRawFd;
        // SAFETY: the fd is the open socket owned by `tcp`; shutdown(2) changes no memory.
        unsafe { libc::shutdown(tcp.as_raw_fd(), libc::SHUT_WR) };
    }
    let mut buf = Vec::with_capacity(4096);
    let mut total = 0usize;
    while total < 64 * 1024 {
        buf.clear();
        let (res, b) = monoio::io::AsyncReadRent::read(&mut tcp, buf).await;
        buf = b;
        match res {
            Ok(n) if n > 0 => total += n,
            _ => break,
        }
    }
}

impl ServerTlsStream {
    /// The ALPN protocol agreed on, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.conn().alpn_protocol()
    }

    /// The SNI the client sent, if any.
    pub fn sni(&self) -> Option<&str> {
        self.conn().server_name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certified key whose only distinguishing mark is its (fake) certificate bytes: `pick`
    /// never looks inside.
    fn key(tag: u8) -> Arc<CertifiedKey> {
        let pair = rcgen::KeyPair::generate().expect("key pair");
        let der =
            rustls::pki_types::PrivateKeyDer::try_from(pair.serialize_der()).expect("PKCS#8 key");
        let signer = super::super::provider()
            .key_provider
            .load_private_key(der)
            .expect("ring loads the key");
        Arc::new(CertifiedKey::new(
            vec![rustls::pki_types::CertificateDer::from(vec![tag])],
            signer,
        ))
    }

    fn tag(k: &Arc<CertifiedKey>) -> u8 {
        k.cert[0].as_ref()[0]
    }

    #[test]
    fn exact_names_then_one_label_wildcards_then_the_default() {
        let mut r = CertResolver::new(key(0));
        r.add("a.example", &key(1));
        r.add("*.b.example", &key(2));
        r.add("A.EXAMPLE.", &key(3)); // the same name again: the earlier entry stays
        assert_eq!(tag(r.pick(Some("a.example"))), 1);
        assert_eq!(tag(r.pick(Some("A.Example."))), 1);
        assert_eq!(tag(r.pick(Some("x.b.example"))), 2);
        assert_eq!(
            tag(r.pick(Some("b.example"))),
            0,
            "a wildcard needs a label"
        );
        assert_eq!(tag(r.pick(Some("y.x.b.example"))), 0, "one label only");
        assert_eq!(tag(r.pick(Some("other.example"))), 0);
        assert_eq!(tag(r.pick(None)), 0);
    }

    #[test]
    fn handshake_errors_map_to_reasons() {
        let tls = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        assert_eq!(
            HandshakeFailure::of(&io::ErrorKind::UnexpectedEof.into()),
            HandshakeFailure::Eof
        );
        assert_eq!(
            HandshakeFailure::of(&tls(rustls::Error::AlertReceived(
                rustls::AlertDescription::BadCertificate
            ))),
            HandshakeFailure::Alert
        );
        assert_eq!(
            HandshakeFailure::of(&tls(rustls::Error::NoApplicationProtocol)),
            HandshakeFailure::Incompatible
        );
        assert_eq!(
            HandshakeFailure::of(&tls(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            ))),
            HandshakeFailure::Protocol
        );
        assert_eq!(
            HandshakeFailure::of(&io::ErrorKind::ConnectionReset.into()),
            HandshakeFailure::Eof
        );
        assert_eq!(
            HandshakeFailure::of(&io::Error::other("x")),
            HandshakeFailure::Io
        );
    }
}

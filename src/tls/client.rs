//! Upstream TLS: a peer's client settings ([`UpstreamTls`], built by `config/tls.rs`), the
//! client handshake ([`connect`]) and what a failed one means ([`is_tls_failure`]).

use std::fmt;
use std::io;
use std::sync::{Arc, OnceLock};

use monoio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::stream::TlsStream;

/// A client-side TLS stream (ringlb → a peer).
pub type ClientTlsStream = TlsStream<ClientConnection>;

/// UpstreamTls is how ringlb speaks TLS to one peer: the rustls client configuration (roots
/// or no verification, client certificate, ALPN, the session cache for resumption) and the
/// server name to send and verify.
#[derive(Clone)]
pub struct UpstreamTls {
    /// The client configuration (shared by every peer with the same settings).
    pub config: Arc<rustls::ClientConfig>,
    /// The name sent as SNI (none for an IP address) and checked against the certificate.
    pub server_name: ServerName<'static>,
    /// The settings as one string (`sni=…;verify=…;ca=…;…`): equal strings mean the same TLS
    /// settings, so pooled connections may move between generations.
    pub settings: String,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.settings == other.settings
    }
}

/// TlsTemplate is an upstream's TLS settings without the server name: what a peer whose name
/// the config does not know (a discovered or a transparent one) is given, with its name, by
/// [`TlsTemplate::for_name`]. Every peer made from it shares its one rustls configuration
/// (and so its session cache, which rustls keys by server name).
#[derive(Clone)]
pub struct TlsTemplate {
    /// The client configuration (roots or no verification, client certificate, ALPN).
    pub config: Arc<rustls::ClientConfig>,
    /// `tls.sni`: the name every peer gets instead of its own.
    pub sni: Option<String>,
    /// The settings without the server name (`verify=…;ca=…;…`), for [`UpstreamTls::settings`].
    pub rest: String,
}

impl fmt::Debug for TlsTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsTemplate")
            .field("sni", &self.sni)
            .field("settings", &self.rest)
            .finish_non_exhaustive()
    }
}

impl TlsTemplate {
    /// The settings of a peer named `name` (a DNS name or an IP address): SNI and
    /// certificate verification use `tls.sni` when it is set, else `name`.
    pub fn for_name(&self, name: &str) -> Result<UpstreamTls, String> {
        let sni = self.sni.as_deref().unwrap_or(name);
        let server_name = ServerName::try_from(sni.to_string())
            .map_err(|_| format!("`{sni}` is not a DNS name or an IP address"))?;
        Ok(UpstreamTls {
            config: self.config.clone(),
            server_name,
            settings: format!("sni={sni};{}", self.rest),
        })
    }
}

/// Runs the client handshake on a connected TCP stream (the caller bounds it with the
/// connect timeout).
pub async fn connect(tcp: TcpStream, tls: &UpstreamTls) -> io::Result<ClientTlsStream> {
    let conn = ClientConnection::new(tls.config.clone(), tls.server_name.clone())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut stream = TlsStream::new(tcp, conn);
    match stream.handshake().await {
        Ok(()) => Ok(stream),
        Err(e) => {
            stream.send_alert().await;
            Err(e)
        }
    }
}

impl UpstreamTls {
    /// The default settings for a peer at `host` that has no `tls` table of its own (a health
    /// check with `tls = true`): verify against the system roots, SNI = `host`, ALPN
    /// `http/1.1`.
    pub fn default_for(host: &str) -> Result<UpstreamTls, String> {
        static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
        let config = CONFIG
            .get_or_init(|| {
                let roots = system_roots()?;
                let mut c = rustls::ClientConfig::builder_with_provider(super::provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                c.alpn_protocols = vec![b"http/1.1".to_vec()];
                Ok(Arc::new(c))
            })
            .clone()?;
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|_| format!("`{host}` is not a DNS name or an IP address"))?;
        Ok(UpstreamTls {
            config,
            server_name,
            settings: format!("sni={host};default"),
        })
    }
}

/// Whether an I/O error of a TLS stream is a TLS failure (a certificate that does not
/// verify, an alert from the peer, no protocol in common, a peer that does not speak TLS)
/// rather than the network's.
pub fn is_tls_failure(e: &io::Error) -> bool {
    super::rustls_error(e).is_some()
}

/// The system's trust anchors (rustls-native-certs: the OS store, `SSL_CERT_FILE` /
/// `SSL_CERT_DIR` honoured), loaded once per process.
pub fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (_added, _ignored) = roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_string(), |e| e.to_string());
                return Err(format!(
                    "no system root certificates ({why}); install ca-certificates or set `ca`"
                ));
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

/// NoVerify accepts any certificate (`verify = false`): the connection is encrypted but the
/// peer is not authenticated. Handshake signatures are still checked, so the peer must hold
/// the key of the certificate it sent.
#[derive(Debug)]
pub struct NoVerify(pub Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// RootsOrPinned verifies a peer's certificate against the roots of a `ca` file and also
/// accepts, as OpenSSL (and so nginx's `proxy_ssl_trusted_certificate`) does, a certificate
/// that is itself one of that file's certificates: a backend's self-signed certificate. Such
/// a certificate is often marked `CA:TRUE` (`openssl req -x509` does so), which webpki refuses
/// as a server's own (`CaUsedAsEndEntity`). One that matches a `ca` certificate byte for byte
/// is trusted as pinned; its names and validity period are still checked, and the handshake
/// signature is checked against its key as for any other.
#[derive(Debug)]
pub struct RootsOrPinned {
    /// Chain verification against the roots.
    roots: Arc<rustls::client::WebPkiServerVerifier>,
    /// The `ca` file's certificates, accepted as the peer's own.
    pinned: Vec<CertificateDer<'static>>,
}

impl RootsOrPinned {
    /// A verifier trusting `pinned` as roots and as peer certificates.
    pub fn new(
        pinned: Vec<CertificateDer<'static>>,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<RootsOrPinned, String> {
        let mut roots = RootCertStore::empty();
        for c in &pinned {
            roots
                .add(c.clone())
                .map_err(|e| format!("not a usable CA certificate: {e}"))?;
        }
        let roots =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| e.to_string())?;
        Ok(RootsOrPinned { roots, pinned })
    }
}

impl ServerCertVerifier for RootsOrPinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let refused = match self.roots.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if !self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            return Err(refused);
        }
        pinned_is_valid(end_entity, server_name, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.roots.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.roots.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.roots.supported_verify_schemes()
    }
}

/// The checks a pinned certificate still gets: it names `server_name` (its SANs, wildcards
/// as webpki matches them) and `now` is within its validity period.
fn pinned_is_valid(
    cert: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    use rustls::CertificateError;
    let bad = rustls::Error::InvalidCertificate(CertificateError::BadEncoding);
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|_| bad.clone())?;
    ee.verify_is_valid_for_subject_name(server_name)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::NotValidForName))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|_| bad)?;
    let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let validity = parsed.validity();
    if secs < validity.not_before.timestamp() {
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet,
        ));
    }
    if secs > validity.not_after.timestamp() {
        return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
    }
    Ok(())
}

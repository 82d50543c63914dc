//! Test TLS material and an HTTPS origin: a certificate authority made with `rcgen` ([`Ca`]),
//! its leaf certificates ([`Leaf`]) and [`TlsBackend`], a rustls origin that reports the SNI it
//! received.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{RootCertStore, StreamOwned};

use super::{find, temp_path, IO_TIMEOUT};

/// Ca is a test certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub der: CertificateDer<'static>,
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate for `names` (DNS names or IPs): (cert PEM, key PEM, cert DER).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_with(names, |_| {})
    }

    pub fn leaf_with(&self, names: &[&str], edit: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        edit(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: format!("{}{}", cert.pem(), self.pem),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// Writes the CA certificate to a file, for `ca = PATH`.
    pub fn write(&self) -> PathBuf {
        let p = temp_path("tls-ca", "pem");
        std::fs::write(&p, &self.pem).unwrap();
        p
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        roots
    }
}

/// A self-signed certificate for `names`, marked `CA:TRUE` as `openssl req -x509` makes it:
/// a backend's own certificate with no CA behind it (`edit` adjusts it first).
pub fn self_signed(names: &[&str], edit: impl FnOnce(&mut CertificateParams)) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    edit(&mut params);
    let cert = params.self_signed(&key).unwrap();
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

/// Leaf is a certificate (with its chain) and its key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Leaf {
    /// Writes the chain and key to files: (cert path, key path).
    pub fn write(&self) -> (PathBuf, PathBuf) {
        let c = temp_path("tls-cert", "pem");
        let k = temp_path("tls-key", "pem");
        std::fs::write(&c, &self.cert_pem).unwrap();
        std::fs::write(&k, &self.key_pem).unwrap();
        (c, k)
    }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TlsBackend is an HTTPS origin on its own thread: it answers every request `200` with
/// `sni=<name the client sent> client_cert=<yes|no> path=<path>`, keep-alive, and when built
/// with a client CA it requires a client certificate signed by it (mTLS).
pub struct TlsBackend {
    pub addr: SocketAddr,
    accepts: Arc<std::sync::atomic::AtomicUsize>,
}

impl TlsBackend {
    pub fn start(leaf: &Leaf, client_ca: Option<&Ca>) -> TlsBackend {
        TlsBackend::start_with(leaf, client_ca, false)
    }

    /// Like [`TlsBackend::start`], and with `host_is_sni` a request whose `Host` (its port
    /// stripped) is not the SNI the connection sent is answered `421 Misdirected Request`.
    pub fn start_with(leaf: &Leaf, client_ca: Option<&Ca>, host_is_sni: bool) -> TlsBackend {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(ca.roots()),
                    provider(),
                )
                .build()
                .unwrap(),
            ),
            None => builder.with_no_client_auth(),
        };
        let config = Arc::new(builder.with_single_cert(chain, key).unwrap());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = accepts.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(tcp) = conn else { continue };
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let config = config.clone();
                std::thread::spawn(move || serve_tls_conn(config, tcp, host_is_sni));
            }
        });
        TlsBackend { addr, accepts }
    }

    /// How many connections it accepted.
    pub fn accepts(&self) -> usize {
        self.accepts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn serve_tls_conn(config: Arc<rustls::ServerConfig>, tcp: TcpStream, host_is_sni: bool) {
    let _ = tcp.set_read_timeout(Some(IO_TIMEOUT));
    let conn = rustls::ServerConnection::new(config).unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(end) = find(&buf, b"\r\n\r\n") else {
            match tls.read(&mut chunk) {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < end + 4 + len {
            match tls.read(&mut chunk) {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        }
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        buf.drain(..end + 4 + len);
        let body = format!(
            "sni={} client_cert={} path={path}",
            tls.conn.server_name().unwrap_or("-"),
            if tls.conn.peer_certificates().is_some() {
                "yes"
            } else {
                "no"
            }
        );
        // `/big` answers 300 000 bytes: many records, reads larger than rustls takes at once.
        let body = if path == "/big" {
            "b".repeat(300_000)
        } else {
            body
        };
        let host = head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("host")
                .then(|| v.trim().to_ascii_lowercase())
        });
        let host_name = host
            .as_deref()
            .map(|h| h.rsplit_once(':').map_or(h, |(n, _)| n));
        let status = if host_is_sni && host_name != tls.conn.server_name() {
            "421 Misdirected Request"
        } else {
            "200 OK"
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if tls.write_all(resp.as_bytes()).is_err() || tls.flush().is_err() {
            return;
        }
    }
}

//! TLS keys: a `listen` entry with `tls = { … }` (downstream), an upstream's or a peer's
//! `tls = { … }` (upstream), their file structs, their validation into rustls configurations
//! and the certificate facts warnings need.
//!
//! ```toml
//! [server]
//! listen = [
//!   "0.0.0.0:80",
//!   { address = "0.0.0.0:443", tls = { cert = "site.pem", key = "site.key" } },
//!   { address = "0.0.0.0:8443", tls = { certificates = [
//!       { cert = "a.pem", key = "a.key", names = ["a.example"] },   # the default
//!       { cert = "b.pem", key = "b.key" },                          # names from its SANs
//!   ] } },
//! ]
//! ```
//!
//! Certificate and key files are read here, while the config is validated (at start and at
//! every reload, on the control thread): a reload picks up renewed certificates, and an
//! unreadable file, a PEM without a certificate or key, or a key that does not belong to its
//! certificate is an error naming the file, the key path and the reason. An expired
//! certificate is only a warning (`warnings.rs`).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::health::KeyError;
use crate::tls::{
    system_roots, CertInfo, CertResolver, NoVerify, RootsOrPinned, ServerTls, TlsTemplate,
    UpstreamTls, SERVER_ALPN,
};

/// ListenFile is one entry of `server.listen`: `"ip:port"`, or a table with an address and
/// optional TLS settings.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub(crate) enum ListenFile {
    /// `"0.0.0.0:8080"`.
    Address(String),
    /// `{ address = "0.0.0.0:443", tls = { … } }`.
    Table(ListenTableFile),
}

impl ListenFile {
    /// The address as written.
    pub fn address(&self) -> &str {
        match self {
            ListenFile::Address(a) => a,
            ListenFile::Table(t) => &t.address,
        }
    }

    /// The TLS settings, if any.
    pub fn tls(&self) -> Option<&ServerTlsFile> {
        match self {
            ListenFile::Address(_) => None,
            ListenFile::Table(t) => t.tls.as_ref(),
        }
    }

    /// Whether the entry allows HTTP/2 (`h2`, default true).
    pub fn h2(&self) -> bool {
        match self {
            ListenFile::Address(_) => true,
            ListenFile::Table(t) => t.h2 != Some(false),
        }
    }

    /// Whether the entry allows HTTP/1.1 (`http1`, default true).
    pub fn http1(&self) -> bool {
        match self {
            ListenFile::Address(_) => true,
            ListenFile::Table(t) => t.http1 != Some(false),
        }
    }
}

impl<'de> Deserialize<'de> for ListenFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListenVisitor;

        impl<'de> Visitor<'de> for ListenVisitor {
            type Value = ListenFile;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an \"ip:port\" string or a table { address = \"ip:port\", tls = { … } }",
                )
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ListenFile, E> {
                Ok(ListenFile::Address(v.to_string()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ListenFile, A::Error> {
                ListenTableFile::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(ListenFile::Table)
            }
        }

        deserializer.deserialize_any(ListenVisitor)
    }
}

/// ListenTableFile is a `listen` entry written as a table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenTableFile {
    /// `ip:port`.
    pub address: String,
    /// `tls = { cert, key }` or `tls = { certificates = [...] }`: terminate TLS here.
    pub tls: Option<ServerTlsFile>,
    /// `h2 = false`: no HTTP/2 on this listener (TLS: ALPN offers only `http/1.1`;
    /// cleartext: no prior-knowledge h2c). Default true.
    pub h2: Option<bool>,
    /// `http1 = false`: HTTP/2 only on this listener (TLS: ALPN offers only `h2`, and a
    /// client that names no protocol speaks h2 too; cleartext: every connection is
    /// prior-knowledge h2c, and bytes other than the preface are a PROTOCOL_ERROR). Default
    /// true.
    pub http1: Option<bool>,
}

/// ServerTlsFile is a listener's `tls = { … }`: one certificate (`cert` + `key`) or several
/// chosen by SNI (`certificates`), not both.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerTlsFile {
    /// PEM file: the certificate, then its chain.
    pub cert: Option<String>,
    /// PEM file: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<String>,
    /// Several certificates; the first is the default.
    pub certificates: Option<Vec<CertFile>>,
}

/// CertFile is one entry of `tls.certificates`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CertFile {
    /// PEM file: the certificate, then its chain.
    pub cert: String,
    /// PEM file: the private key.
    pub key: String,
    /// Names it is chosen for (`a.example`, `*.b.example`). Default: its DNS SANs.
    pub names: Option<Vec<String>>,
}

/// Checks one listener's `tls` table (at `key`, e.g. `server.listen[1].tls`) and builds its
/// rustls configuration.
pub(crate) fn server_tls(
    key: &str,
    f: &ServerTlsFile,
    h2: bool,
    http1: bool,
) -> Result<ServerTls, KeyError> {
    let entries: Vec<(String, &str, &str, Option<&Vec<String>>)> =
        match (&f.cert, &f.key, &f.certificates) {
            (Some(cert), Some(key_file), None) => {
                vec![(key.to_string(), cert.as_str(), key_file.as_str(), None)]
            }
            (None, None, Some(list)) if !list.is_empty() => list
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    (
                        format!("{key}.certificates[{i}]"),
                        c.cert.as_str(),
                        c.key.as_str(),
                        c.names.as_ref(),
                    )
                })
                .collect(),
            (None, None, Some(_)) => {
                return Err((
                    format!("{key}.certificates"),
                    "must list at least one { cert, key }".to_string(),
                ))
            }
            (Some(_), None, _) => {
                return Err((
                    format!("{key}.key"),
                    "`cert` needs `key` (the certificate's private key)".to_string(),
                ))
            }
            (None, Some(_), _) => {
                return Err((
                    format!("{key}.cert"),
                    "`key` needs `cert` (the certificate it belongs to)".to_string(),
                ))
            }
            (Some(_), Some(_), Some(_)) => {
                return Err((
                    format!("{key}.certificates"),
                    "set either `cert` and `key` or `certificates`, not both".to_string(),
                ))
            }
            (None, None, None) => {
                return Err((
                    key.to_string(),
                    "needs `cert` and `key`, or `certificates = [{ cert, key }, …]`".to_string(),
                ))
            }
        };
    let provider = crate::tls::provider();
    let mut resolver: Option<CertResolver> = None;
    let mut infos = Vec::with_capacity(entries.len());
    for (entry_key, cert_path, key_path, names) in entries {
        let (certified, sans, not_after) = load_pair(&entry_key, cert_path, key_path, &provider)?;
        let names: Vec<String> = match names {
            Some(list) => {
                for (j, n) in list.iter().enumerate() {
                    check_name(n).map_err(|r| (format!("{entry_key}.names[{j}]"), r))?;
                }
                list.clone()
            }
            None => sans,
        };
        let certified = Arc::new(certified);
        let r = resolver.get_or_insert_with(|| CertResolver::new(certified.clone()));
        for n in &names {
            r.add(n, &certified);
        }
        infos.push(CertInfo {
            cert: cert_path.to_string(),
            key_path: entry_key,
            names,
            not_after,
        });
    }
    let resolver = resolver.expect("at least one certificate was loaded above");
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| (key.to_string(), format!("TLS setup: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    // `h2 = false` on the listener: HTTP/1.1 only; `http1 = false`: h2 only.
    let alpn = match (h2, http1) {
        (false, _) => &SERVER_ALPN[1..],
        (true, false) => &SERVER_ALPN[..1],
        (true, true) => SERVER_ALPN,
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.ticketer = crate::tls::ticketer().map_err(|r| (key.to_string(), r))?;
    Ok(ServerTls {
        config: Arc::new(config),
        certs: infos,
    })
}

/// A `names` entry: a DNS name or `*.` and one; no ports, no spaces.
fn check_name(name: &str) -> Result<(), String> {
    let bare = name.strip_prefix("*.").unwrap_or(name);
    let ok = !bare.is_empty()
        && bare
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a DNS name (`a.example`) or a wildcard (`*.b.example`)"
        ))
    }
}

/// Loads a certificate chain and its key: the checked pair, the DNS names in the
/// certificate's SANs and the end of its validity (Unix seconds). Errors name
/// `{key}.cert` or `{key}.key` and the file.
pub(crate) fn load_pair(
    key: &str,
    cert_path: &str,
    key_path: &str,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<(CertifiedKey, Vec<String>, i64), KeyError> {
    let chain = load_certs(cert_path).map_err(|r| (format!("{key}.cert"), r))?;
    let der = load_key(key_path).map_err(|r| (format!("{key}.key"), r))?;
    let (sans, not_after) = cert_facts(&chain[0])
        .map_err(|r| (format!("{key}.cert"), format!("`{cert_path}`: {r}")))?;
    let certified = CertifiedKey::from_der(chain, der, provider).map_err(|e| {
        let why = match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "`{key_path}` is not the private key of the certificate in `{cert_path}` \
                 (mismatched key)"
            ),
            other => format!("`{key_path}`: unusable private key: {other}"),
        };
        (format!("{key}.key"), why)
    })?;
    Ok((certified, sans, not_after))
}

/// Reads every certificate of a PEM file, the first being the end-entity one.
pub(crate) fn load_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read `{path}`: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("`{path}` is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "`{path}` holds no certificate (expected PEM `-----BEGIN CERTIFICATE-----`)"
        ));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file.
pub(crate) fn load_key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read `{path}`: {e}"))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "`{path}` holds no private key (expected PEM `-----BEGIN PRIVATE KEY-----`, \
             `RSA PRIVATE KEY` or `EC PRIVATE KEY`)"
        ),
        other => format!("`{path}` is not a valid PEM private key: {other}"),
    })
}

/// The DNS names of a certificate's SANs and its notAfter (Unix seconds).
fn cert_facts(der: &CertificateDer<'_>) -> Result<(Vec<String>, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    Ok((names, cert.validity().not_after.timestamp()))
}

/// The names a listener's certificates answer for, for [`super::Config::describe`].
pub(crate) fn describe_server(tls: &ServerTls) -> String {
    tls.certs
        .iter()
        .map(|c| {
            if c.names.is_empty() {
                c.cert.clone()
            } else {
                format!("{} ({})", c.cert, c.names.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Every TLS listener of a parsed `listen` list, by the resolved addresses `addrs`.
pub(crate) fn listeners(
    list: &[ListenFile],
    addrs: &[SocketAddr],
) -> Result<Vec<(SocketAddr, Arc<ServerTls>)>, KeyError> {
    let mut out = Vec::new();
    for (i, (entry, addr)) in list.iter().zip(addrs).enumerate() {
        if let Some(tls) = entry.tls() {
            out.push((
                *addr,
                Arc::new(server_tls(
                    &format!("server.listen[{i}].tls"),
                    tls,
                    entry.h2(),
                    entry.http1(),
                )?),
            ));
        }
    }
    Ok(out)
}

/// Checks a route's `sni`: a DNS name. Returned lowercase.
pub(crate) fn route_sni(name: &str) -> Result<String, String> {
    if name.starts_with("*.") {
        return Err(format!(
            "`{name}`: wildcards are not matched here; name the server exactly"
        ));
    }
    check_name(name)?;
    Ok(name.trim_end_matches('.').to_ascii_lowercase())
}

/// The certificates of `listeners` whose validity has ended: `(key path, reason)`.
pub(crate) fn expired(listeners: &[(SocketAddr, Arc<ServerTls>)]) -> Vec<KeyError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut out = Vec::new();
    for (addr, tls) in listeners {
        for c in &tls.certs {
            if c.not_after < now {
                out.push((
                    c.key_path.clone(),
                    format!(
                        "the certificate in `{}` (listener {addr}) expired {} day(s) ago: \
                         clients will refuse it; renew it and reload",
                        c.cert,
                        (now - c.not_after) / 86_400
                    ),
                ));
            }
        }
    }
    out
}

/// UpstreamTlsFile is an upstream's or a peer's `tls = { … }`: speak TLS to the peer. A
/// peer's table replaces its upstream's whole.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamTlsFile {
    /// Default true once the table is there; `false` on a peer turns its upstream's TLS off.
    pub enabled: Option<bool>,
    /// Name sent as SNI and verified. Default: the host of the peer's address.
    pub sni: Option<String>,
    /// Verify the peer's certificate. Default true.
    pub verify: Option<bool>,
    /// PEM file of the CAs to trust. Default: the system's roots.
    pub ca: Option<String>,
    /// PEM client certificate (with chain) for mTLS; needs `client_key`.
    pub client_cert: Option<String>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<String>,
    /// ALPN protocols to offer. Default `["http/1.1"]` (`protocol = "h2"`: `["h2"]`,
    /// `"auto"`: `["h2", "http/1.1"]`).
    pub alpn: Option<Vec<String>>,
}

/// Builds a peer's TLS settings (`key` is the table's path) for a peer at `address` (as
/// written: `host:port` or `ip:port`); `None` when TLS is off. `cache` shares one rustls
/// configuration (and so its session cache) between peers with the same settings.
pub(crate) fn upstream_tls(
    key: &str,
    f: &UpstreamTlsFile,
    address: &str,
    protocol: super::UpstreamProtocol,
    cache: &mut Vec<(String, Arc<rustls::ClientConfig>)>,
) -> Result<Option<Arc<UpstreamTls>>, KeyError> {
    let Some(template) = upstream_tls_template(key, f, protocol, cache)? else {
        return Ok(None);
    };
    let tls = template
        .for_name(peer_host(address))
        .map_err(|r| (format!("{key}.sni"), r))?;
    Ok(Some(Arc::new(tls)))
}

/// Checks a `tls` table (`key` is its path) and builds its settings without a server name:
/// the template listed peers are made from, and what discovered and transparent peers get
/// with their own name (`TlsTemplate::for_name`). `None` when TLS is off. `cache` shares one
/// rustls configuration between tables with the same settings.
pub(crate) fn upstream_tls_template(
    key: &str,
    f: &UpstreamTlsFile,
    protocol: super::UpstreamProtocol,
    cache: &mut Vec<(String, Arc<rustls::ClientConfig>)>,
) -> Result<Option<TlsTemplate>, KeyError> {
    if f.enabled == Some(false) {
        return Ok(None);
    }
    if let Some(sni) = &f.sni {
        ServerName::try_from(sni.clone()).map_err(|_| {
            (
                format!("{key}.sni"),
                format!("`{sni}` is not a DNS name or an IP address"),
            )
        })?;
    }
    let verify = f.verify.unwrap_or(true);
    let alpn: Vec<String> = match &f.alpn {
        Some(list) => {
            super::protocol::check_alpn(&format!("{key}.alpn"), protocol, list)?;
            list.clone()
        }
        None => super::protocol::default_alpn(protocol)
            .iter()
            .map(|p| p.to_string())
            .collect(),
    };
    for (i, p) in alpn.iter().enumerate() {
        if p.is_empty() || p.len() > 255 {
            return Err((
                format!("{key}.alpn[{i}]"),
                "a protocol name is 1 to 255 bytes".to_string(),
            ));
        }
    }
    // The rustls configuration does not depend on the server name: peers share it.
    let rest = format!(
        "verify={verify};ca={};cert={};key={};alpn={}",
        f.ca.as_deref().unwrap_or("-"),
        f.client_cert.as_deref().unwrap_or("-"),
        f.client_key.as_deref().unwrap_or("-"),
        alpn.join(",")
    );
    let config = match cache.iter().find(|(k, _)| *k == rest) {
        Some((_, c)) => c.clone(),
        None => {
            let c = Arc::new(client_config(key, f, verify, &alpn)?);
            cache.push((rest.clone(), c.clone()));
            c
        }
    };
    Ok(Some(TlsTemplate {
        config,
        sni: f.sni.clone(),
        rest,
    }))
}

/// The host part of a peer address (`api.internal:8443` → `api.internal`, `[::1]:443` →
/// `::1`).
fn peer_host(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// The rustls client configuration of one set of upstream TLS settings.
fn client_config(
    key: &str,
    f: &UpstreamTlsFile,
    verify: bool,
    alpn: &[String],
) -> Result<rustls::ClientConfig, KeyError> {
    let provider = crate::tls::provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| (key.to_string(), format!("TLS setup: {e}")))?;
    let builder = if !verify {
        if f.ca.is_some() {
            return Err((
                format!("{key}.ca"),
                "`ca` has no use with `verify = false`".to_string(),
            ));
        }
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider.clone())))
    } else {
        match &f.ca {
            Some(path) => {
                // The file's certificates are roots, and each may also be the peer's own
                // (a self-signed backend: see `RootsOrPinned`).
                let certs = load_certs(path).map_err(|r| (format!("{key}.ca"), r))?;
                let verifier = RootsOrPinned::new(certs, provider.clone())
                    .map_err(|r| (format!("{key}.ca"), format!("`{path}`: {r}")))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verifier))
            }
            None => builder
                .with_root_certificates(system_roots().map_err(|r| (format!("{key}.ca"), r))?),
        }
    };
    let mut config = match (&f.client_cert, &f.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(k)) => {
            let (certified, _, _) = load_pair(key, cert, k, &provider).map_err(|(k2, r)| {
                (
                    k2.replace(".cert", ".client_cert")
                        .replace(".key", ".client_key"),
                    r,
                )
            })?;
            builder
                .with_client_auth_cert(
                    certified.cert,
                    load_key(k).map_err(|r| (format!("{key}.client_key"), r))?,
                )
                .map_err(|e| (format!("{key}.client_key"), format!("`{k}`: {e}")))?
        }
        (Some(_), None) => {
            return Err((
                format!("{key}.client_key"),
                "`client_cert` needs `client_key`".to_string(),
            ))
        }
        (None, Some(_)) => {
            return Err((
                format!("{key}.client_cert"),
                "`client_key` needs `client_cert`".to_string(),
            ))
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(config)
}

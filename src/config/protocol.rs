//! An upstream's `protocol` key: which HTTP version ringlb speaks to its peers. Its file type,
//! its checked runtime type ([`UpstreamProtocol`]) and its validation; `validate.rs` calls
//! [`protocol`], which reports errors as `(key path, reason)` pairs.
//!
//! ```toml
//! [[upstream]]
//! protocol = "http1"   # "http1" (default) | "h2c" | "h2" | "auto"
//! ```
//!
//! `"h2"` (HTTP/2 over TLS, ALPN `h2` required) and `"auto"` (ALPN offers `h2` and
//! `http/1.1`, the peer picks) need `tls` on every peer; [`default_alpn`] is what their TLS
//! offers when `tls.alpn` is not set, and [`check_alpn`] refuses an `alpn` list that
//! contradicts them.

use super::health::KeyError;

/// UpstreamProtocol is the HTTP version spoken to an upstream's peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1, one pooled connection per request in flight (the default).
    #[default]
    Http1,
    /// HTTP/2 over cleartext TCP with prior knowledge: one multiplexed connection per peer and
    /// shard (another one when the peer's stream limit is reached).
    H2c,
    /// HTTP/2 over TLS (ALPN `h2`, which the peer must choose), multiplexed like `H2c`.
    H2,
    /// TLS offering ALPN `h2` and `http/1.1`: each new connection speaks what the peer chose.
    Auto,
}

impl UpstreamProtocol {
    /// The config-file name.
    pub fn name(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2c => "h2c",
            UpstreamProtocol::H2 => "h2",
            UpstreamProtocol::Auto => "auto",
        }
    }

    /// Whether the protocol needs TLS to the peers.
    pub fn needs_tls(self) -> bool {
        matches!(self, UpstreamProtocol::H2 | UpstreamProtocol::Auto)
    }
}

/// The ALPN list a peer's TLS offers when its `tls.alpn` is not set.
pub(crate) fn default_alpn(p: UpstreamProtocol) -> &'static [&'static str] {
    match p {
        UpstreamProtocol::H2 => &["h2"],
        UpstreamProtocol::Auto => &["h2", "http/1.1"],
        UpstreamProtocol::Http1 | UpstreamProtocol::H2c => &["http/1.1"],
    }
}

/// Checks an explicit `tls.alpn` list (at `key`) against protocol `p`.
pub(crate) fn check_alpn(key: &str, p: UpstreamProtocol, alpn: &[String]) -> Result<(), KeyError> {
    let has = |name: &str| alpn.iter().any(|a| a == name);
    let missing = match p {
        UpstreamProtocol::H2 if !has("h2") => "\"h2\"",
        UpstreamProtocol::Auto if !(has("h2") && has("http/1.1")) => "\"h2\" and \"http/1.1\"",
        _ => return Ok(()),
    };
    Err((
        key.to_string(),
        format!(
            "protocol = \"{}\" needs {missing} in the ALPN list (leave `alpn` out for the default)",
            p.name()
        ),
    ))
}

/// Checks upstream `i`'s `protocol`.
pub(crate) fn protocol(i: usize, v: Option<&str>) -> Result<UpstreamProtocol, KeyError> {
    let key = || format!("upstream[{i}].protocol");
    match v {
        None | Some("http1") => Ok(UpstreamProtocol::Http1),
        Some("h2c") => Ok(UpstreamProtocol::H2c),
        Some("h2") => Ok(UpstreamProtocol::H2),
        Some("auto") => Ok(UpstreamProtocol::Auto),
        Some(other) => Err((
            key(),
            format!(
                "unknown protocol \"{other}\": expected \"http1\", \"h2c\", \"h2\" or \"auto\""
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::UpstreamProtocol;
    use crate::config::Config;

    fn load(line: &str) -> Result<Config, String> {
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[[upstream]]\nname = \"u\"\n{line}\n\
             peers = [{{ address = \"127.0.0.1:1\" }}]\n"
        );
        Config::from_toml_str(&text, "t.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn protocols() {
        assert_eq!(
            load("").unwrap().upstreams[0].protocol,
            UpstreamProtocol::Http1
        );
        let c = load("protocol = \"h2c\"").unwrap();
        assert_eq!(c.upstreams[0].protocol, UpstreamProtocol::H2c);
        for p in ["h2", "auto"] {
            let err = load(&format!("protocol = \"{p}\"")).unwrap_err();
            assert!(err.contains("upstream[0].protocol"), "{err}");
            assert!(err.contains("needs TLS"), "{err}");
            let c = load(&format!(
                "protocol = \"{p}\"\ntls = {{ enabled = true, verify = false }}"
            ))
            .unwrap();
            assert_eq!(c.upstreams[0].protocol.name(), p);
            let tls = c.upstreams[0].peers[0].tls.as_ref().unwrap();
            let want: &[&[u8]] = if p == "h2" {
                &[b"h2"]
            } else {
                &[b"h2", b"http/1.1"]
            };
            assert_eq!(tls.config.alpn_protocols, want);
            let err = load(&format!(
                "protocol = \"{p}\"\ntls = {{ enabled = true, alpn = [\"http/1.1\"] }}"
            ))
            .unwrap_err();
            assert!(err.contains("upstream[0].tls.alpn"), "{err}");
        }
        let err = load("protocol = \"spdy\"").unwrap_err();
        assert!(err.contains("unknown protocol \"spdy\""), "{err}");
    }
}

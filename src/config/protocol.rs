//! An upstream's `protocol` key: which HTTP version ringlb speaks to its peers. Its file type,
//! its checked runtime type ([`UpstreamProtocol`]) and its validation; `validate.rs` calls
//! [`protocol`], which reports errors as `(key path, reason)` pairs.
//!
//! ```toml
//! [[upstream]]
//! protocol = "http1"   # "http1" (default) | "h2c" | "h2" | "auto"
//! ```
//!
//! `"h2"` (HTTP/2 over TLS) and `"auto"` (ALPN over TLS) are not supported yet (upstream
//! TLS connections speak HTTP/1.1 only): they are refused with a message saying so.

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
}

impl UpstreamProtocol {
    /// The config-file name.
    pub fn name(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2c => "h2c",
        }
    }
}

/// Checks upstream `i`'s `protocol`.
pub(crate) fn protocol(i: usize, v: Option<&str>) -> Result<UpstreamProtocol, KeyError> {
    let key = || format!("upstream[{i}].protocol");
    match v {
        None | Some("http1") => Ok(UpstreamProtocol::Http1),
        Some("h2c") => Ok(UpstreamProtocol::H2c),
        Some(p @ ("h2" | "auto")) => Err((
            key(),
            format!(
                "\"{p}\" needs HTTP/2 over TLS to the upstream, which is not supported yet \
                 (upstream TLS speaks HTTP/1.1); use \"h2c\" (HTTP/2 without TLS) or \"http1\""
            ),
        )),
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
            assert!(err.contains("not supported yet"), "{err}");
        }
        let err = load("protocol = \"spdy\"").unwrap_err();
        assert!(err.contains("unknown protocol \"spdy\""), "{err}");
    }
}

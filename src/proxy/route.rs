//! Routing: the first `[[route]]` whose conditions all match picks the upstream group.

use crate::config::{Config, GroupId};
use crate::http::RequestHead;

/// Router is the compiled route table of one shard.
pub(crate) struct Router {
    /// Routes in config order.
    routes: Vec<Route>,
}

/// Route is one compiled `[[route]]`.
struct Route {
    /// Lower-cased host to match (port ignored).
    host: Option<Vec<u8>>,
    /// Lower-cased TLS server name to match.
    sni: Option<String>,
    /// Path prefix to match.
    path_prefix: Option<Vec<u8>>,
    /// Header name (matched case-insensitively) and exact value.
    header: Option<(Vec<u8>, Vec<u8>)>,
    /// The upstream group.
    upstream: GroupId,
}

impl Router {
    /// Compiles the routes of `config`.
    pub fn new(config: &Config) -> Self {
        let routes = config
            .routes
            .iter()
            .map(|r| Route {
                host: r.host.as_ref().map(|h| h.to_ascii_lowercase().into_bytes()),
                sni: r.sni.clone(),
                path_prefix: r.path_prefix.as_ref().map(|p| p.clone().into_bytes()),
                header: r
                    .header
                    .as_ref()
                    .map(|(n, v)| (n.clone().into_bytes(), v.clone().into_bytes())),
                upstream: r.upstream,
            })
            .collect();
        Router { routes }
    }

    /// The group for a request (on a connection whose TLS client asked for `sni`), or `None`
    /// when routes exist and none matches. With no routes at all, everything goes to the
    /// first upstream.
    pub fn route(&self, buf: &[u8], head: &RequestHead, sni: Option<&str>) -> Option<GroupId> {
        if self.routes.is_empty() {
            return Some(GroupId::new(0));
        }
        self.routes
            .iter()
            .find(|r| r.matches(buf, head, sni))
            .map(|r| r.upstream)
    }
}

impl Route {
    fn matches(&self, buf: &[u8], head: &RequestHead, sni: Option<&str>) -> bool {
        if let Some(want) = &self.sni {
            match sni {
                Some(got) if got.trim_end_matches('.').eq_ignore_ascii_case(want) => {}
                _ => return false,
            }
        }
        if let Some(want) = &self.host {
            let Some(host) = head.host.map(|h| h.get(buf)) else {
                return false;
            };
            if !host_without_port(host).eq_ignore_ascii_case(want) {
                return false;
            }
        }
        if let Some(prefix) = &self.path_prefix {
            if !head.path.get(buf).starts_with(prefix) {
                return false;
            }
        }
        if let Some((name, value)) = &self.header {
            let found = head.headers.iter().any(|h| {
                h.name(buf).eq_ignore_ascii_case(name) && h.value(buf) == value.as_slice()
            });
            if !found {
                return false;
            }
        }
        true
    }
}

/// Strips a `:port` suffix from a Host value (keeping IPv6 brackets intact).
fn host_without_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        return match host.iter().position(|&b| b == b']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(colon) => &host[..colon],
        None => host,
    }
}

#[cfg(test)]
mod tests {
    use super::host_without_port;

    #[test]
    fn strips_ports() {
        assert_eq!(host_without_port(b"a.example:8080"), b"a.example");
        assert_eq!(host_without_port(b"a.example"), b"a.example");
        assert_eq!(host_without_port(b"[::1]:80"), b"[::1]");
    }
}

//! Settings that are valid but most likely not what was meant: [`Config::warnings`].
//!
//! A warning does not stop ringlb: `ringlb check` prints each one and the proxy logs each one
//! (at warn) when it starts.

use std::fmt;

use super::{allowed_cpus, format_cpu_list, Config, Workers};

/// ConfigWarning is a setting that is valid but probably a mistake: the file, the key and the
/// reason, shown the way a [`super::ConfigError`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The file (or `<string>`, `<demo>`) the config came from.
    pub file: String,
    /// The key path, e.g. `server.workers` or `upstream[0].peers`.
    pub key: String,
    /// Why it is probably a mistake, and what it does.
    pub reason: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: key `{}`: {}", self.file, self.key, self.reason)
    }
}

impl Config {
    /// The settings of this config that are valid but probably mistakes, in file order:
    ///
    /// - `server.workers` above the number of CPUs the shards are pinned to (`cpus`,
    ///   `numa_node`, or else the process's allowed set): shards then share cores;
    /// - an `[[upstream]]` whose every peer has `weight = 0`: the group gets no traffic, every
    ///   request routed to it is answered 503;
    /// - a TLS listener's certificate that has expired (clients refuse it; ringlb still
    ///   serves it, so a renewal can be reloaded in).
    pub fn warnings(&self) -> Vec<ConfigWarning> {
        let warn = |key: String, reason: String| ConfigWarning {
            file: self.source.clone(),
            key,
            reason,
        };
        let mut out = Vec::new();
        if let Workers::Count(n) = self.server.workers {
            let (set, cpus) = match &self.server.cpus {
                Some(cpus) => ("the pin set", cpus.clone()),
                None => ("this process's allowed set", allowed_cpus()),
            };
            if n > cpus.len() {
                out.push(warn(
                    "server.workers".to_string(),
                    format!(
                        "{n} shards on {} cpu(s) ({set} {}): shards share cpus (shard i runs \
                         on the (i mod {})-th cpu), which costs latency and throughput; \
                         `workers = \"auto\"` runs one shard per cpu",
                        cpus.len(),
                        format_cpu_list(&cpus),
                        cpus.len()
                    ),
                ));
            }
        }
        for (i, u) in self.upstreams.iter().enumerate() {
            if u.peers.iter().all(|p| p.weight == 0) {
                out.push(warn(
                    format!("upstream[{i}].peers"),
                    format!(
                        "every peer has `weight = 0` (drained): upstream \"{}\" gets no \
                         traffic and every request routed to it is answered 503",
                        u.name
                    ),
                ));
            }
        }
        out.extend(
            super::tls::expired(&self.server.tls)
                .into_iter()
                .map(|(k, r)| warn(k, r)),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::validate::{validate_on, HostCpus};
    use super::*;

    /// A host with CPUs 0-3 allowed.
    fn host() -> HostCpus {
        HostCpus {
            allowed: vec![0, 1, 2, 3],
            node_dir: std::env::temp_dir().join("ringlb-no-numa-nodes-here"),
        }
    }

    fn load(text: &str) -> Config {
        let file = toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        validate_on(file, "w.toml", &host()).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    const PEERS: &str = "[[upstream]]\nname = \"a\"\n\
                         peers = [{ address = \"127.0.0.1:1\" }, { address = \"127.0.0.1:2\" }]\n";

    #[test]
    fn a_plain_config_has_no_warnings() {
        let c = load(&format!("[server]\nworkers = 2\ncpus = \"0-1\"\n{PEERS}"));
        assert_eq!(c.warnings(), vec![]);
        let c = load(&format!("[server]\nworkers = \"auto\"\n{PEERS}"));
        assert_eq!(c.warnings(), vec![]);
    }

    #[test]
    fn more_workers_than_pinned_cpus() {
        let c = load(&format!("[server]\nworkers = 3\ncpus = \"0-1\"\n{PEERS}"));
        let w = c.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].key, "server.workers");
        let shown = w[0].to_string();
        assert!(
            shown.starts_with(
                "w.toml: key `server.workers`: 3 shards on 2 cpu(s) (the pin set 0-1)"
            ),
            "{shown}"
        );
    }

    #[test]
    fn more_workers_than_allowed_cpus() {
        // No pin set: the real process's allowed set counts.
        let allowed = allowed_cpus().len();
        let text = |n: usize| format!("[server]\nworkers = {n}\n{PEERS}");
        assert_eq!(load(&text(allowed)).warnings(), vec![]);
        let w = load(&text(allowed + 1)).warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].reason.starts_with(&format!(
                "{} shards on {allowed} cpu(s) (this process's allowed set ",
                allowed + 1
            )),
            "{}",
            w[0]
        );
    }

    #[test]
    fn every_peer_drained() {
        let text = "[[upstream]]\nname = \"live\"\n\
                    peers = [{ address = \"127.0.0.1:1\", weight = 0 }, { address = \"127.0.0.1:2\" }]\n\
                    [[upstream]]\nname = \"dead\"\n\
                    peers = [{ address = \"127.0.0.1:3\", weight = 0 }, \
                    { address = \"127.0.0.1:4\", weight = 0, backup = true }]\n";
        let w = load(text).warnings();
        assert_eq!(
            w,
            vec![ConfigWarning {
                file: "w.toml".to_string(),
                key: "upstream[1].peers".to_string(),
                reason: "every peer has `weight = 0` (drained): upstream \"dead\" gets no \
                         traffic and every request routed to it is answered 503"
                    .to_string(),
            }]
        );
    }
}

//! ringlb: a thread-per-core HTTP/1.1 reverse proxy and load balancer on io_uring.
//!
//! # Layout
//! - [`config`]: the TOML file format and the validated runtime `Config`.
//! - `control`: the protocol between the control thread and the shards (`ControlMsg`,
//!   `HealthChange`, `Observation`, the shard's outcome reporter, the wake-up primitive).
//! - [`server`]: starts and stops the whole proxy ([`Server`]): control thread + shards.
//! - `shard`: one pinned thread with its own monoio runtime, listeners, pool and selectors.
//! - [`http`]: head parsing, framing, chunked codec, head rewriting, error responses.
//! - `io`: the owned-buffer read and write helpers (one read helper for every reader).
//! - `listen`: binding listen sockets, one `SO_REUSEPORT` socket per shard (start and reload).
//! - [`proxy`]: the per-connection request loop: route → select → forward → failover.
//! - [`upstream`]: peers, upstream groups, the per-shard connection pool.
//! - [`balance`]: the `Selector` trait, one file per algorithm, the eligibility wrapper.
//! - [`tls`]: TLS on both sides (rustls): the TLS transport, certificates by SNI, handshakes.
//! - [`failover`]: retry policy, backoff, retry budget, circuit breaker, failure hooks.
//! - [`health`]: the control thread: health state machines, probes, passive ejection, and the
//!   task that serves the admin endpoint; public: the health-check and observer hooks.
//! - `admin`: the admin HTTP endpoint (`/status`, `/health`), served through the `http` parser.
//! - `discovery`: peers from DNS (A/AAAA/SRV) and Docker, looked up on the resolver thread
//!   `ringlb-dns` (a current-thread tokio runtime) and applied by the control thread.
//! - [`demo`]: in-process demo backends for `ringlb demo`.
//! - [`access_log`]: the access log: shard-local line buffers handed to a writer thread
//!   (`[log] access`), reopened on SIGUSR1.
//! - [`metrics`]: per-shard counters, gauges and histograms (single writer, no locks), the
//!   control thread's `Registry` of them, and their Prometheus text rendering.
//! - [`process`]: what keeps the process controllable: a log writer that never fails, a
//!   rate limiter for repeated warnings, panic supervision of the control and signal threads.
//!
//! Imports between these modules point down only (the floors are listed in the `layers` test
//! at the end of this file and in docs/architecture.md, "Layers").
//!
//! Invariants (see docs/architecture.md): the request path takes no locks and does no cross-shard
//! communication; one shard = one core = one runtime; bad input gets a clear HTTP answer.

#![warn(missing_docs)]

pub mod access_log;
pub(crate) mod admin;
pub mod balance;
pub mod config;
pub(crate) mod control;
pub mod demo;
pub(crate) mod discovery;
pub mod failover;
pub mod health;
pub mod http;
pub(crate) mod io;
pub(crate) mod listen;
pub mod metrics;
pub mod process;
pub mod proxy;
pub mod server;
pub(crate) mod shard;
pub mod tls;
pub mod upstream;

pub use config::Config;
pub use server::Server;

/// The layering of the top-level modules, checked by reading `src/`: imports point down only.
#[cfg(test)]
mod layers {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// The floors, lowest first. A module may import (`crate::x` outside comments, tests
    /// included) only modules on a lower floor. A module not listed is checked for cycles only.
    const FLOORS: &[&[&str]] = &[
        // Ground: no imports of the crate's own modules.
        &["process", "balance", "io", "listen", "metrics"],
        // Pure retry/breaker logic over peer ids.
        &["failover", "tls"],
        // The file format and the runtime Config; it builds balance and failover types.
        &["config"],
        // HTTP heads and codecs; the control-thread/shard protocol.
        &["http", "control"],
        // Upstream groups and pools; the admin endpoint; the demo backends; the access log
        // (it writes numbers and addresses with http's helpers).
        &["upstream", "admin", "demo", "access_log", "discovery"],
        // The request loop (shard side); the control thread (health, probes).
        &["proxy", "health"],
        // One shard: runtime, listeners, accept loop.
        &["shard"],
        // Start and stop of the whole proxy.
        &["server"],
    ];

    /// The top-level modules of `src/` (`lib.rs` and `main.rs` aside) and the crate modules
    /// each one names.
    fn imports() -> BTreeMap<String, BTreeSet<String>> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut graph = BTreeMap::new();
        for entry in std::fs::read_dir(&src).expect("src/ is readable") {
            let path = entry.expect("src/ entry").path();
            let name = match path.file_stem().and_then(|s| s.to_str()) {
                Some(n) if n != "lib" && n != "main" => n.to_string(),
                _ => continue,
            };
            if path.is_file() && path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let mut text = String::new();
            read_rs(&path, &mut text);
            let names: BTreeSet<String> = crate_paths(&text)
                .into_iter()
                .filter(|m| *m != name)
                .collect();
            graph
                .entry(name)
                .or_insert_with(BTreeSet::new)
                .extend(names);
        }
        graph
    }

    /// Appends the non-comment lines of every `.rs` file at `path` (a file or a directory).
    fn read_rs(path: &Path, out: &mut String) {
        if path.is_dir() {
            for entry in std::fs::read_dir(path).expect("directory is readable") {
                read_rs(&entry.expect("directory entry").path(), out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(path).expect("source file is readable");
            for line in text.lines() {
                let code = line.split("//").next().unwrap_or_default();
                out.push_str(code);
                out.push('\n');
            }
        }
    }

    /// The first segment after every `crate::` (also inside `crate::{a, b::c}`).
    fn crate_paths(text: &str) -> BTreeSet<String> {
        let ident = |s: &str| -> String {
            s.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        };
        let mut found = BTreeSet::new();
        for (at, _) in text.match_indices("crate::") {
            let rest = &text[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // The group's top-level items: split on commas outside nested braces, up to
                // the brace that closes the group.
                let mut depth = 0;
                let mut start = 0;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => {
                            found.insert(ident(group[start..i].trim()));
                            break;
                        }
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            found.insert(ident(group[start..i].trim()));
                            start = i + 1;
                        }
                        _ => {}
                    }
                }
            } else {
                found.insert(ident(rest));
            }
        }
        found.retain(|m| !m.is_empty() && m.starts_with(|c: char| c.is_ascii_lowercase()));
        found
    }

    #[test]
    fn top_level_modules_import_only_lower_floors() {
        let graph = imports();
        let floor = |m: &str| FLOORS.iter().position(|f| f.contains(&m));
        let mut wrong = Vec::new();
        for (from, tos) in &graph {
            let Some(f) = floor(from) else { continue };
            for to in tos {
                if let Some(t) = floor(to) {
                    if t >= f {
                        wrong.push(format!("{from} (floor {f}) imports {to} (floor {t})"));
                    }
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "imports must point down (see FLOORS in src/lib.rs):\n{}",
            wrong.join("\n")
        );
    }

    #[test]
    fn no_import_cycle_between_top_level_modules() {
        let graph = imports();
        assert!(graph.contains_key("proxy") && graph.contains_key("shard"));
        // Depth-first search; a module met again while still on the path closes a cycle.
        fn visit<'a>(
            m: &'a str,
            graph: &'a BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<&'a str>,
            done: &mut BTreeSet<&'a str>,
        ) -> Option<String> {
            if let Some(i) = path.iter().position(|p| *p == m) {
                let mut cycle = path[i..].to_vec();
                cycle.push(m);
                return Some(cycle.join(" -> "));
            }
            if !done.insert(m) {
                return None;
            }
            path.push(m);
            for to in graph.get(m).into_iter().flatten() {
                if let Some(c) = visit(to, graph, path, done) {
                    return Some(c);
                }
            }
            path.pop();
            None
        }
        let mut done = BTreeSet::new();
        for m in graph.keys() {
            if let Some(cycle) = visit(m, &graph, &mut Vec::new(), &mut done) {
                panic!("import cycle between top-level modules: {cycle}");
            }
        }
    }

    #[test]
    fn the_scanner_sees_grouped_and_plain_paths() {
        let found = crate_paths("use crate::{a::X, b::{c, d}, e};\nlet x = crate::f::g();");
        let want: BTreeSet<String> = ["a", "b", "e", "f"].iter().map(|s| s.to_string()).collect();
        assert_eq!(found, want);
    }
}

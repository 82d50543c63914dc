//! What the side-by-side subcommands (`compare`, `conns`, `body`, `idle`, `latency`) share:
//! the resolved tools, scratch dir and backends ([`Lab`]), starting one proxy at a time, the
//! round-robin order of proxies from round to round ([`rotation`]), the open-files limit
//! ([`raise_nofile_limit`]) and a per-proxy table with ratios against ringlb ([`SideBySide`]).
//!
//! Fairness: only the proxy under test runs while it is measured. Each measurement starts
//! its proxy from a fresh config, waits until it answers, measures, and stops it (its guard's
//! Drop) before the next proxy starts; and the order of the proxies rotates from round to
//! round (round 1: A B C, round 2: B C A, round 3: C A B), so that slow drift on the machine
//! and "who ran first" hit every proxy alike.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::backend::Backend;
use crate::proxy::{ProxySpec, RunningProxy, TlsFiles};
use crate::report::{opt, Table};
use crate::setup::{free_port, install_signal_handlers, ScratchDir, SetupArgs, Tools};

/// BACKENDS is how many backends every proxy balances over.
pub const BACKENDS: usize = 3;

/// FD_RESERVE is how many descriptors a process keeps for everything but the connections
/// under test (listeners, logs, epoll, pipes, the proxy's own files).
pub const FD_RESERVE: u64 = 256;

/// Lab is one run's tools and scratch dir.
pub struct Lab<'a> {
    /// The shared options.
    pub setup: &'a SetupArgs,
    /// wrk, taskset, the proxies' binaries.
    pub tools: Tools,
    /// Configs, logs, wrk reports.
    pub scratch: ScratchDir,
}

impl<'a> Lab<'a> {
    /// Installs the Ctrl-C handler, resolves the tools, checks the CPUs, creates the scratch
    /// dir.
    pub fn new(setup: &'a SetupArgs) -> Result<Lab<'a>> {
        install_signal_handlers();
        let tools = setup.resolve_tools()?;
        setup.check_cpus()?;
        let scratch = ScratchDir::create(setup.keep_tmp)?;
        Ok(Lab {
            setup,
            tools,
            scratch,
        })
    }

    /// Starts [`BACKENDS`] backends pinned to the load CPU, answering `body_bytes`-byte bodies.
    pub fn backends(&self, body_bytes: usize) -> Result<Vec<Backend>> {
        let backends = (0..BACKENDS)
            .map(|i| Backend::start(&format!("backend-{i}"), self.setup.load_cpu, body_bytes))
            .collect::<Result<Vec<_>>>()?;
        eprintln!(
            "backends: {} (pinned to CPU {}, {body_bytes}-byte bodies)",
            backends
                .iter()
                .map(|b| b.addr().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            self.setup.load_cpu,
        );
        Ok(backends)
    }

    /// Starts proxy number `index` of `tools.proxies` over `backends` (the like-for-like
    /// config of `compare`, with limits for `max_conns` clients) and waits until it answers.
    pub fn start(
        &self,
        index: usize,
        backends: &[SocketAddr],
        max_conns: u32,
    ) -> Result<RunningProxy> {
        self.start_with(index, backends, max_conns, None, false)
    }

    /// Like [`Lab::start`], the listener terminating TLS with `tls` when given, and clients
    /// speaking HTTP/2 with prior knowledge when `h2`.
    pub fn start_with(
        &self,
        index: usize,
        backends: &[SocketAddr],
        max_conns: u32,
        tls: Option<&TlsFiles>,
        h2: bool,
    ) -> Result<RunningProxy> {
        let extra = &self.setup.ringlb_upstream;
        self.start_extra(index, backends, max_conns, tls, h2, extra)
    }

    /// Like [`Lab::start_with`], with `ringlb_extra` as the lines added to ringlb's
    /// `[[upstream]]` instead of `--ringlb-upstream` (the variants of `limits`).
    pub fn start_extra(
        &self,
        index: usize,
        backends: &[SocketAddr],
        max_conns: u32,
        tls: Option<&TlsFiles>,
        h2: bool,
        ringlb_extra: &str,
    ) -> Result<RunningProxy> {
        let (kind, program) = &self.tools.proxies[index];
        let spec = ProxySpec {
            kind: *kind,
            program,
            taskset: &self.tools.taskset,
            cpu: self.setup.proxy_cpu,
            port: free_port()?,
            backends,
            dir: self.scratch.path().join(kind.name()),
            ringlb_extra,
            ringlb_server: &self.setup.ringlb_server,
            ringlb_log_level: "warn",
            upgrade: false,
            ringlb_admin: "",
            tls,
            max_conns,
            h2,
        };
        let mut p = RunningProxy::start(&spec)?;
        p.wait_ready(Duration::from_secs(15))?;
        eprintln!(
            "{}: ready at {} (pid {}): {}",
            kind.name(),
            p.url(),
            p.pid(),
            p.command_line()
        );
        Ok(p)
    }

    /// A file in the scratch dir.
    pub fn file(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }
}

/// The order of `n` proxies in 1-based `round`: indices rotated left by `round - 1`.
pub fn rotation(n: usize, round: u32) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let shift = (round.saturating_sub(1) as usize) % n;
    (0..n).map(|i| (i + shift) % n).collect()
}

/// Raises this process's open-files soft limit to its hard limit (children inherit it);
/// returns the soft limit in force afterwards.
pub fn raise_nofile_limit() -> u64 {
    // SAFETY: rlimit is plain data; getrlimit fills it.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `want` is a valid rlimit; raising the soft limit up to the hard one is
        // always allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    lim.rlim_cur
}

/// Caps `wanted` connections to what `fd_limit` allows when each connection costs
/// `fds_per_conn` descriptors in the busiest process; returns the cap and, when it bit, a
/// sentence saying so.
pub fn cap_connections(wanted: u32, fd_limit: u64, fds_per_conn: u64) -> (u32, Option<String>) {
    let fit = fd_limit.saturating_sub(FD_RESERVE) / fds_per_conn.max(1);
    let fit = u32::try_from(fit).unwrap_or(u32::MAX).max(1);
    if wanted <= fit {
        return (wanted, None);
    }
    (
        fit,
        Some(format!(
            "capped {wanted} connections to {fit}: the open-files limit is {fd_limit} \
             (soft = hard after setrlimit), a connection costs {fds_per_conn} descriptor(s) \
             in the busiest process, and {FD_RESERVE} are kept for everything else; raise \
             the hard limit (ulimit -Hn, as root) for more"
        )),
    )
}

/// Metric is one column of a [`SideBySide`] table.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// Column title.
    pub name: &'static str,
    /// Decimals printed.
    pub decimals: usize,
    /// Whether a smaller value is better (latency, CPU, memory): says which way the ratio
    /// reads.
    pub lower_is_better: bool,
}

/// SideBySide is one value per proxy and metric, printed as a table, followed by ringlb's
/// ratios against every other proxy (metric by metric).
#[derive(Debug, Clone)]
pub struct SideBySide {
    /// The columns after the proxy's name.
    pub metrics: Vec<Metric>,
    /// (proxy, one value per metric; `None` = not measured).
    pub rows: Vec<(String, Vec<Option<f64>>)>,
}

impl SideBySide {
    /// An empty table with these columns.
    pub fn new(metrics: &[Metric]) -> SideBySide {
        SideBySide {
            metrics: metrics.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds one proxy's values (as many as metrics).
    pub fn row(&mut self, label: &str, values: Vec<Option<f64>>) {
        assert_eq!(values.len(), self.metrics.len(), "one value per metric");
        self.rows.push((label.to_string(), values));
    }

    /// ringlb's value ÷ `other`'s, per metric (`None` when either is missing or the divisor
    /// is 0); empty when ringlb did not run.
    pub fn ratios(&self) -> Vec<(String, Vec<Option<f64>>)> {
        let Some((_, r)) = self.rows.iter().find(|(l, _)| l == "ringlb") else {
            return Vec::new();
        };
        self.rows
            .iter()
            .filter(|(l, _)| l != "ringlb")
            .map(|(l, o)| {
                let ratios = r
                    .iter()
                    .zip(o)
                    .map(|(a, b)| match (a, b) {
                        (Some(a), Some(b)) if *b != 0.0 => Some(a / b),
                        _ => None,
                    })
                    .collect();
                (format!("ringlb/{l}"), ratios)
            })
            .collect()
    }

    /// The table, then the ratios with a line saying which way each reads.
    pub fn render(&self, markdown: bool) -> String {
        let mut headers = vec!["proxy"];
        headers.extend(self.metrics.iter().map(|m| m.name));
        let mut t = Table::new(1, &headers);
        for (label, values) in &self.rows {
            let mut cells = vec![label.clone()];
            cells.extend(
                values
                    .iter()
                    .zip(&self.metrics)
                    .map(|(v, m)| opt(*v, m.decimals)),
            );
            t.row(cells);
        }
        let mut out = t.render(markdown);
        let ratios = self.ratios();
        if ratios.is_empty() {
            return out;
        }
        let mut headers = vec!["ratio"];
        headers.extend(self.metrics.iter().map(|m| m.name));
        let mut t = Table::new(1, &headers);
        for (label, values) in ratios {
            let mut cells = vec![label];
            cells.extend(values.iter().map(|v| opt(*v, 2)));
            t.row(cells);
        }
        let lower: Vec<&str> = self
            .metrics
            .iter()
            .filter(|m| m.lower_is_better)
            .map(|m| m.name)
            .collect();
        let higher: Vec<&str> = self
            .metrics
            .iter()
            .filter(|m| !m.lower_is_better)
            .map(|m| m.name)
            .collect();
        let mut how = Vec::new();
        if !higher.is_empty() {
            how.push(format!("> 1 is better for ringlb in {}", higher.join(", ")));
        }
        if !lower.is_empty() {
            how.push(format!("< 1 is better for ringlb in {}", lower.join(", ")));
        }
        let _ = writeln!(out, "\nRatios ({}):\n", how.join("; "));
        out.push_str(&t.render(markdown));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_starts_each_round_one_later() {
        assert_eq!(rotation(3, 1), vec![0, 1, 2]);
        assert_eq!(rotation(3, 2), vec![1, 2, 0]);
        assert_eq!(rotation(3, 3), vec![2, 0, 1]);
        assert_eq!(rotation(3, 4), vec![0, 1, 2]);
        assert_eq!(rotation(1, 7), vec![0]);
        assert!(rotation(0, 1).is_empty());
    }

    #[test]
    fn cap_connections_says_when_it_caps() {
        assert_eq!(cap_connections(100, 20_000, 2), (100, None));
        let (n, why) = cap_connections(10_000, 20_000, 2);
        assert_eq!(n, 9_872);
        assert!(why.expect("capped").contains("open-files limit is 20000"));
        assert_eq!(cap_connections(10, 100, 1).0, 1, "never below one");
    }

    #[test]
    fn nofile_limit_is_raised_to_the_hard_limit() {
        let soft = raise_nofile_limit();
        // SAFETY: rlimit is plain data; getrlimit fills it.
        let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
        // SAFETY: `lim` is a valid, writable rlimit.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(soft, lim.rlim_cur);
        assert_eq!(lim.rlim_cur, lim.rlim_max);
    }

    #[test]
    fn side_by_side_prints_values_and_ratios() {
        let mut t = SideBySide::new(&[
            Metric {
                name: "MB/s",
                decimals: 1,
                lower_is_better: false,
            },
            Metric {
                name: "CPU s/GB",
                decimals: 3,
                lower_is_better: true,
            },
        ]);
        t.row("ringlb", vec![Some(200.0), Some(0.5)]);
        t.row("nginx", vec![Some(100.0), Some(1.0)]);
        t.row("haproxy", vec![Some(400.0), None]);
        let text = t.render(false);
        assert!(text.contains("ringlb   200.0     0.500"), "{text}");
        assert!(text.contains("haproxy  400.0         -"), "{text}");
        assert!(text.contains("ringlb/nginx    2.00      0.50"), "{text}");
        assert!(text.contains("ringlb/haproxy  0.50         -"), "{text}");
        assert!(text.contains("> 1 is better for ringlb in MB/s; < 1 is better"));
        let md = t.render(true);
        assert!(md.contains("| ringlb  | 200.0 |    0.500 |"), "{md}");
    }
}

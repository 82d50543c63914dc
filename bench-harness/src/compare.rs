//! The `compare` subcommand: the same load against ringlb, nginx and HAProxy, in interleaved
//! rounds, with CPU time per request taken from `/proc`.
//!
//! Order of a run: resolve tools → start three backends (pinned to the load CPU) → wrk directly
//! against one backend (the baseline: what the load side can do without a proxy) → rounds; in
//! each round every proxy once, in an order rotated from round to round, and each run starts
//! its proxy (pinned to the proxy CPU), waits until it answers, warms it up, measures, and
//! stops it, so that only the proxy under test is up → print the tables. Every process started
//! is stopped by its guard's Drop, on success, error, or Ctrl-C. [`run_rounds`] is shared with
//! `conns` and `body`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::backend::Backend;
use crate::lab::{rotation, Lab, BACKENDS};
use crate::procstat::{tree_cpu_seconds, tree_rss_kib, CoreTicks};
use crate::proxy::{ProxyKind, TlsFiles};
use crate::report::{Report, RunRow};
use crate::setup::{check_interrupted, ScratchDir, SetupArgs, Tools};
use crate::wrk::Load;

/// CompareArgs are the options of `compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Options shared with other subcommands (binaries, CPUs, which proxies).
    #[command(flatten)]
    setup: SetupArgs,

    /// Seconds each measured wrk run lasts.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    duration: u64,

    /// Rounds; each round runs every proxy once, the order rotated by one from round to round.
    #[arg(long, default_value_t = 3, value_name = "N")]
    rounds: u32,

    /// Open connections wrk keeps (`-c`).
    #[arg(long, default_value_t = 64, value_name = "N")]
    connections: u32,

    /// wrk threads (`-t`); they all share the load CPU.
    #[arg(long, default_value_t = 1, value_name = "N")]
    threads: u32,

    /// Seconds of unmeasured load against each proxy after it starts, before its measured run
    /// (0 = none).
    #[arg(long, default_value_t = 2, value_name = "SECS")]
    warmup: u64,

    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Print the tables as Markdown.
    #[arg(long)]
    markdown: bool,

    /// HTTPS: every proxy terminates TLS with the same certificate (ECDSA P-256, made with
    /// openssl) and the same TLS 1.3 suites; two series: keep-alive HTTPS, then a new TLS
    /// connection (a full handshake) per request (`-H 'Connection: close'`).
    #[arg(long, conflicts_with = "h2")]
    tls: bool,

    /// Load with h2load over HTTP/2 with prior knowledge instead of wrk (nginx `listen …
    /// http2`, HAProxy `bind … proto h2`, ringlb's default h2c); upstreams stay HTTP/1.1. No
    /// baseline run (the backends speak HTTP/1.1 only). The latency columns then hold h2load's
    /// mean and maximum request time.
    #[arg(long)]
    h2: bool,

    /// With `--h2`: concurrent streams per connection (h2load `-m`).
    #[arg(long, default_value_t = 10, value_name = "N")]
    streams: u32,
}

/// Runs `compare`.
pub fn run(args: &CompareArgs) -> Result<()> {
    if args.duration == 0 || args.rounds == 0 || args.connections == 0 || args.threads == 0 {
        bail!("--duration, --rounds, --connections and --threads must be at least 1");
    }
    if args.connections < args.threads {
        bail!("wrk needs --connections >= --threads");
    }
    let lab = Lab::new(&args.setup)?;
    let backends = lab.backends(args.setup.body_bytes)?;
    let tls = if args.tls {
        Some(TlsFiles::create(lab.scratch.path())?)
    } else {
        None
    };
    // Without --tls one series; with it, keep-alive HTTPS then one handshake per request.
    let series: Vec<(&str, Vec<String>)> = if args.tls {
        vec![
            ("keep-alive HTTPS", Vec::new()),
            (
                "a new TLS connection per request (Connection: close)",
                vec!["Connection: close".to_string()],
            ),
        ]
    } else {
        vec![("", Vec::new())]
    };
    let mut reports = Vec::new();
    for (i, (title, headers)) in series.into_iter().enumerate() {
        let (baseline, runs) = run_rounds(
            &lab,
            &backends,
            &Rounds {
                duration: args.duration,
                rounds: args.rounds,
                connections: args.connections,
                threads: args.threads,
                warmup: args.warmup,
                max_conns: 0,
                baseline: i == 0 && !args.h2,
                tag: if i == 0 { "compare" } else { "compare-close" },
                headers,
                tls: tls.clone(),
                h2_streams: args.h2.then_some(args.streams),
                variants: Vec::new(),
            },
        )?;
        let mut settings = settings(args, &lab.tools);
        if !title.is_empty() {
            settings.push(("series".to_string(), title.to_string()));
        }
        reports.push(Report {
            settings,
            versions: versions(&lab.tools),
            baseline,
            runs,
        });
    }
    drop(backends);
    for report in &reports {
        println!();
        print!("{}", report.render(args.markdown));
    }
    if let Some(path) = &args.json {
        let json: Vec<String> = reports.iter().map(Report::to_json).collect();
        let text = if json.len() == 1 {
            json.concat()
        } else {
            format!("[{}]", json.join(","))
        };
        std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Rounds is the shape of a series of wrk runs against every proxy (`compare`, `conns`,
/// `body`).
pub struct Rounds {
    /// Seconds per measured run.
    pub duration: u64,
    /// Rounds; each runs every proxy once, in rotated order.
    pub rounds: u32,
    /// wrk `-c`.
    pub connections: u32,
    /// wrk `-t`.
    pub threads: u32,
    /// Seconds of unmeasured load after each start, before the measured run (0 = none).
    pub warmup: u64,
    /// Client connections the proxies must be configured for (0 = the default 4096).
    pub max_conns: u32,
    /// Also run wrk straight at one backend first.
    pub baseline: bool,
    /// Names the wrk report files.
    pub tag: &'static str,
    /// wrk `-H` headers.
    pub headers: Vec<String>,
    /// The proxies terminate TLS with this certificate (`compare --tls`).
    pub tls: Option<TlsFiles>,
    /// Load with h2load over h2c, this many streams per connection, instead of wrk.
    pub h2_streams: Option<u32>,
    /// Instead of the lab's proxies: ringlb alone, once per variant in each round, labelled
    /// and configured by the pair (label, lines added to its `[[upstream]]`).
    pub variants: Vec<(String, String)>,
}

/// Runs `shape.rounds` rounds; in round r the proxies go in [`rotation`] order, and each run
/// starts its proxy, warms it up, measures one wrk run and stops it, so that only the proxy
/// under test is up while it is measured. Returns the baseline (if asked) and every run.
pub fn run_rounds(
    lab: &Lab<'_>,
    backends: &[Backend],
    shape: &Rounds,
) -> Result<(Option<RunRow>, Vec<RunRow>)> {
    let setup = lab.setup;
    let load = Load {
        wrk: lab.tools.wrk.clone(),
        taskset: lab.tools.taskset.clone(),
        cpu: setup.load_cpu,
        threads: shape.threads,
        connections: shape.connections,
        headers: shape.headers.clone(),
    };
    let addrs: Vec<_> = backends.iter().map(Backend::addr).collect();
    let bench = Bench {
        load: &load,
        seconds: shape.duration,
        backends,
        scratch: &lab.scratch,
        proxy_cpu: setup.proxy_cpu,
        h2_streams: shape.h2_streams,
    };
    let baseline = if shape.baseline {
        // The load side alone, straight at one backend.
        let url = format!("http://{}/", addrs[0]);
        eprintln!("baseline: {}", load.command_line(shape.duration, &url));
        let row = bench.measure(&url, None, "backend", 0, shape.tag)?;
        eprintln!("  {}", one_line(&row));
        Some(row)
    } else {
        None
    };
    let mut runs = Vec::new();
    let n = match shape.variants.len() {
        0 => lab.tools.proxies.len(),
        v => v,
    };
    for round in 1..=shape.rounds {
        for i in rotation(n, round) {
            check_interrupted()?;
            let (index, extra, label) = match shape.variants.get(i) {
                // ringlb is always the first of the lab's proxies.
                Some((label, extra)) => (0, extra.as_str(), label.as_str()),
                None => (i, lab.setup.ringlb_upstream.as_str(), ""),
            };
            let mut p = lab.start_extra(
                index,
                &addrs,
                shape.max_conns,
                shape.tls.as_ref(),
                shape.h2_streams.is_some(),
                extra,
            )?;
            let label = match label {
                "" => p.kind().name(),
                l => l,
            };
            if shape.warmup > 0 {
                eprintln!("warm-up: {label} for {} s", shape.warmup);
                let out = lab.file(&format!("wrk-{}-warmup-{label}-{round}.txt", shape.tag));
                bench.load_run(&p.url(), shape.warmup, &out)?;
            }
            let command = match shape.h2_streams {
                Some(m) => load.h2load_command_line(m, shape.duration, &p.url()),
                None => load.command_line(shape.duration, &p.url()),
            };
            eprintln!("round {round}/{}: {label}: {command}", shape.rounds);
            let row = bench.measure(&p.url(), Some(p.pid()), label, round, shape.tag)?;
            eprintln!("  {}", one_line(&row));
            p.check_alive()?;
            runs.push(row);
            // `p` drops here: the proxy stops before the next one starts.
        }
    }
    Ok((baseline, runs))
}

/// Bench is what every measured run shares.
struct Bench<'a> {
    /// wrk settings.
    load: &'a Load,
    /// Seconds per run.
    seconds: u64,
    /// The backends, for their request counters.
    backends: &'a [Backend],
    /// Where wrk reports go.
    scratch: &'a ScratchDir,
    /// The proxies' core, to see how busy it was.
    proxy_cpu: usize,
    /// h2load over h2c with this many streams per connection instead of wrk.
    h2_streams: Option<u32>,
}

impl Bench<'_> {
    /// One load run (wrk, or h2load with `h2_streams`).
    fn load_run(
        &self,
        url: &str,
        seconds: u64,
        out: &std::path::Path,
    ) -> Result<(crate::wrk::WrkResult, f64)> {
        match self.h2_streams {
            Some(m) => self.load.run_h2load(m, url, seconds, out),
            None => self.load.run(url, seconds, out),
        }
    }

    /// One wrk run against `url`, with the CPU time of the proxy's process tree (rooted at
    /// `pid`) sampled around it.
    fn measure(
        &self,
        url: &str,
        pid: Option<u32>,
        label: &str,
        round: u32,
        tag: &str,
    ) -> Result<RunRow> {
        let load = self.load;
        let served_before: Vec<u64> = self.backends.iter().map(Backend::served).collect();
        let cores_before = (CoreTicks::read(self.proxy_cpu), CoreTicks::read(load.cpu));
        let backends_cpu = || self.backends.iter().map(Backend::cpu_seconds).sum::<f64>();
        let backends_cpu_before = backends_cpu();
        let cpu_before = pid.map(tree_cpu_seconds);
        let out = self
            .scratch
            .path()
            .join(format!("wrk-{tag}-{label}-{round}.txt"));
        let (wrk, wrk_cpu) = self.load_run(url, self.seconds, &out)?;
        let cpu_after = pid.map(tree_cpu_seconds);
        let backends_cpu_after = backends_cpu();
        let cores_after = (CoreTicks::read(self.proxy_cpu), CoreTicks::read(load.cpu));
        let rss_kib = pid.map(tree_rss_kib);
        let backend_requests = self
            .backends
            .iter()
            .zip(served_before)
            .map(|(b, before)| b.served().saturating_sub(before))
            .collect();
        Ok(RunRow {
            label: label.to_string(),
            round,
            wrk,
            cpu_seconds: cpu_before
                .zip(cpu_after)
                .map(|(before, after)| (after - before).max(0.0)),
            rss_kib,
            backend_requests,
            load_cpu_seconds: wrk_cpu + (backends_cpu_after - backends_cpu_before).max(0.0),
            proxy_core_busy: pid.and(cores_after.0.busy_percent_since(&cores_before.0)),
            load_core_busy: cores_after.1.busy_percent_since(&cores_before.1),
        })
    }
}

/// A progress line for one run.
fn one_line(r: &RunRow) -> String {
    let mut s = format!(
        "{:.0} req/s, p50 {:.0} µs, p99 {:.0} µs, {} errors",
        r.wrk.req_per_s,
        r.wrk.p50_us,
        r.wrk.p99_us,
        r.wrk.errors()
    );
    let k = &r.wrk.socket_error_kinds;
    if r.wrk.errors() > 0 {
        s.push_str(&format!(
            " (connect {}, read {}, write {}, timeout {}, status >= 400 {})",
            k.connect, k.read, k.write, k.timeout, r.wrk.bad_status
        ));
    }
    if let (Some(us), Some(pct)) = (r.cpu_us_per_req(), r.cpu_percent()) {
        s.push_str(&format!(", proxy CPU {us:.2} µs/req ({pct:.0} %)"));
    }
    if let Some(pct) = r.load_cpu_percent() {
        s.push_str(&format!(", load side CPU {pct:.0} %"));
    }
    if let Some(b) = r.proxy_core_busy {
        s.push_str(&format!(", proxy core {b:.0} % busy"));
    }
    if let Some(b) = r.load_core_busy {
        s.push_str(&format!(", load core {b:.0} % busy"));
    }
    s
}

fn settings(args: &CompareArgs, tools: &Tools) -> Vec<(String, String)> {
    let s = &args.setup;
    [
        ("duration_s", args.duration.to_string()),
        ("rounds", args.rounds.to_string()),
        ("connections", args.connections.to_string()),
        ("wrk_threads", args.threads.to_string()),
        (
            "load",
            match args.h2 {
                true => format!("h2load h2c -m{} (latency columns: mean, max)", args.streams),
                false => "wrk HTTP/1.1".to_string(),
            },
        ),
        ("warmup_s", args.warmup.to_string()),
        ("proxy_cpu", s.proxy_cpu.to_string()),
        ("load_cpu", s.load_cpu.to_string()),
        ("backends", BACKENDS.to_string()),
        ("body_bytes", s.body_bytes.to_string()),
        (
            "proxies",
            tools
                .proxies
                .iter()
                .map(|(k, _)| k.name())
                .collect::<Vec<_>>()
                .join(","),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// First line of each tool's version output; ringlb's also names the binary's path.
fn versions(tools: &Tools) -> Vec<(String, String)> {
    let mut v = vec![("wrk".to_string(), version_line(&tools.wrk, "-v"))];
    for (kind, program) in &tools.proxies {
        let version = match kind {
            ProxyKind::Ringlb => format!(
                "{} ({})",
                version_line(program, "--version"),
                program.display()
            ),
            ProxyKind::Nginx | ProxyKind::Haproxy => version_line(program, "-v"),
        };
        v.push((kind.name().to_string(), version));
    }
    v
}

/// The first non-empty line `program arg` prints (stdout, then stderr); `unknown` if it fails
/// or takes more than 2 s (a binary that ignores the flag and starts serving is killed).
fn version_line(program: &PathBuf, arg: &str) -> String {
    let Ok(mut child) = Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        return "unknown".into();
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return "unknown".into();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let Ok(out) = child.wait_with_output() else {
        return "unknown".into();
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find(|l| !l.trim().is_empty())
        .map_or_else(|| "unknown".into(), |l| l.trim().to_string())
}

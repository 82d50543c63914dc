//! The `latency` subcommand: fixed-rate latency with `oha` against each proxy in turn.
//!
//! wrk sends as fast as responses come back, so its percentiles leave out the requests it did
//! not send while it waited (coordinated omission). `oha -q RATE --latency-correction` sends
//! at a fixed rate and measures each request from when it was *due*, so a stall shows up in
//! the percentiles of every request it delayed. Per proxy (only the one under test is up, the
//! order rotated from round to round): start, warm up with wrk, `taskset -c <load-cpu> oha
//! --no-tui -z <secs>s -c <conns> -q RATE --latency-correction <json flag> URL`, stop. Prints
//! p50/p90/p99/p99.9/max (medians over rounds), the rate achieved, errors, and ringlb's ratios.
//!
//! oha is not a Debian package: when it is missing the subcommand says how to install it
//! (`cargo install oha`) and exits non-zero.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::backend::Backend;
use crate::lab::{rotation, Lab, Metric, SideBySide};
use crate::report::median;
use crate::setup::{check_interrupted, find_program, kill_with_parent, SetupArgs};
use crate::wrk::Load;

/// OHA_INSTALL_HINT says how to get oha.
pub const OHA_INSTALL_HINT: &str = "cargo install oha   (or `cargo install oha --locked` when \
     the newest release needs a newer rustc than this one); it installs to ~/.cargo/bin";

/// LatencyArgs are the options of `latency`.
#[derive(Debug, Args)]
pub struct LatencyArgs {
    /// Requests per second oha sends (`-q`), the same for every proxy.
    #[arg(value_name = "RATE")]
    rate: u32,

    /// Options shared with other subcommands (binaries, CPUs, which proxies).
    #[command(flatten)]
    setup: SetupArgs,

    /// Seconds each measured oha run lasts.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    duration: u64,

    /// Rounds; each runs every proxy once, the order rotated by one from round to round.
    #[arg(long, default_value_t = 1, value_name = "N")]
    rounds: u32,

    /// Connections oha keeps (`-c`).
    #[arg(long, default_value_t = 64, value_name = "N")]
    connections: u32,

    /// Seconds of unmeasured wrk load after each proxy starts (0 = none).
    #[arg(long, default_value_t = 1, value_name = "SECS")]
    warmup: u64,

    /// The oha binary. Default: `oha` on PATH, then `~/.cargo/bin/oha`.
    #[arg(long, value_name = "PATH")]
    oha: Option<PathBuf>,

    /// Print the tables as Markdown.
    #[arg(long)]
    markdown: bool,
}

/// OhaResult is what one oha run reported, latencies in µs.
#[derive(Debug, Clone, Default, PartialEq)]
struct OhaResult {
    /// Requests per second achieved.
    req_per_s: f64,
    /// Median latency.
    p50_us: f64,
    /// 90th percentile.
    p90_us: f64,
    /// 99th percentile.
    p99_us: f64,
    /// 99.9th percentile.
    p999_us: f64,
    /// Slowest request.
    max_us: f64,
    /// Responses other than 2xx plus failed requests (oha's error distribution).
    errors: u64,
    /// Responses seen (all statuses).
    responses: u64,
}

/// Checks the options.
fn validate(args: &LatencyArgs) -> Result<()> {
    if args.rate == 0 || args.duration == 0 || args.rounds == 0 || args.connections == 0 {
        bail!("RATE, --duration, --rounds and --connections must be at least 1");
    }
    Ok(())
}

/// Finds oha: `--oha`, PATH, `~/.cargo/bin/oha`; the error says how to install it.
fn find_oha(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("--oha {} does not exist", p.display());
    }
    if let Some(p) = find_program("oha") {
        return Ok(p);
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = PathBuf::from(home).join(".cargo/bin/oha");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("`oha` is not installed (not on PATH nor in ~/.cargo/bin); install it with: {OHA_INSTALL_HINT}")
}

/// Runs `latency`.
pub fn run(args: &LatencyArgs) -> Result<()> {
    validate(args)?;
    let oha = find_oha(args.oha.as_deref())?;
    let json_flag = json_flag(&oha);
    let lab = Lab::new(&args.setup)?;
    let backends = lab.backends(args.setup.body_bytes)?;
    let addrs: Vec<_> = backends.iter().map(Backend::addr).collect();
    let warm = Load {
        wrk: lab.tools.wrk.clone(),
        taskset: lab.tools.taskset.clone(),
        cpu: args.setup.load_cpu,
        threads: 1,
        connections: args.connections,
        headers: Vec::new(),
    };
    let mut runs: Vec<(&'static str, OhaResult)> = Vec::new();
    for round in 1..=args.rounds {
        for i in rotation(lab.tools.proxies.len(), round) {
            check_interrupted()?;
            let mut p = lab.start(i, &addrs, 0)?;
            let name = p.kind().name();
            if args.warmup > 0 {
                eprintln!("warm-up: {name} for {} s (wrk)", args.warmup);
                let out = lab.file(&format!("wrk-latency-warmup-{name}-{round}.txt"));
                warm.run(&p.url(), args.warmup, &out)?;
            }
            let cmd = OhaRun {
                oha: &oha,
                taskset: &lab.tools.taskset,
                cpu: args.setup.load_cpu,
                rate: args.rate,
                seconds: args.duration,
                connections: args.connections,
                json_flag,
            };
            eprintln!(
                "round {round}/{}: {name}: {}",
                args.rounds,
                cmd.command_line(&p.url())
            );
            let out = lab.file(&format!("oha-{name}-{round}.json"));
            let r = cmd.run(&p.url(), &out)?;
            eprintln!(
                "  {:.0} req/s, p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs, {} errors",
                r.req_per_s, r.p50_us, r.p99_us, r.p999_us, r.max_us, r.errors
            );
            p.check_alive()?;
            runs.push((name, r));
        }
    }
    drop(backends);
    println!();
    println!(
        "latency: oha -q {} --latency-correction, -c {}, {} s per run, median of {} round(s)\n",
        args.rate, args.connections, args.duration, args.rounds
    );
    print!("{}", table(&runs).render(args.markdown));
    let short: Vec<&str> = runs
        .iter()
        .filter(|(_, r)| r.req_per_s < 0.9 * args.rate as f64)
        .map(|(n, _)| *n)
        .collect();
    if !short.is_empty() {
        println!(
            "\nnote: {} did not reach 90 % of {} req/s in some run: the rate was more than it \
             (or the load side) could serve, and latencies there are queueing time.",
            short.join(", "),
            args.rate
        );
    }
    Ok(())
}

/// The per-proxy medians.
fn table(runs: &[(&str, OhaResult)]) -> SideBySide {
    let m = |name, decimals, lower_is_better| Metric {
        name,
        decimals,
        lower_is_better,
    };
    let mut t = SideBySide::new(&[
        m("req/s", 0, false),
        m("p50 µs", 0, true),
        m("p90 µs", 0, true),
        m("p99 µs", 0, true),
        m("p99.9 µs", 0, true),
        m("max µs", 0, true),
        m("errors", 0, true),
    ]);
    let mut labels: Vec<&str> = Vec::new();
    for (l, _) in runs {
        if !labels.contains(l) {
            labels.push(l);
        }
    }
    for label in labels {
        let rs: Vec<&OhaResult> = runs
            .iter()
            .filter(|(l, _)| *l == label)
            .map(|(_, r)| r)
            .collect();
        let med = |f: fn(&OhaResult) -> f64| median(rs.iter().map(|r| f(r)));
        t.row(
            label,
            vec![
                med(|r| r.req_per_s),
                med(|r| r.p50_us),
                med(|r| r.p90_us),
                med(|r| r.p99_us),
                med(|r| r.p999_us),
                med(|r| r.max_us),
                Some(rs.iter().map(|r| r.errors).sum::<u64>() as f64),
            ],
        );
    }
    t
}

/// The flag that makes this oha print JSON: newer releases have `--output-format json`, older
/// ones `-j`.
fn json_flag(oha: &Path) -> &'static str {
    let help = Command::new(oha)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if help.contains("--output-format") {
        "--output-format=json"
    } else {
        "-j"
    }
}

/// OhaRun is one oha invocation's shape.
struct OhaRun<'a> {
    /// The oha binary.
    oha: &'a Path,
    /// taskset, to pin it.
    taskset: &'a Path,
    /// CPU it runs on.
    cpu: usize,
    /// `-q`.
    rate: u32,
    /// `-z`.
    seconds: u64,
    /// `-c`.
    connections: u32,
    /// `-j` or `--output-format=json`.
    json_flag: &'static str,
}

impl OhaRun<'_> {
    /// oha's arguments for `url`.
    fn args(&self, url: &str) -> Vec<String> {
        vec![
            "--no-tui".into(),
            self.json_flag.into(),
            "-z".into(),
            format!("{}s", self.seconds),
            "-c".into(),
            self.connections.to_string(),
            "-q".into(),
            self.rate.to_string(),
            "--latency-correction".into(),
            url.into(),
        ]
    }

    /// The command line, for printing.
    fn command_line(&self, url: &str) -> String {
        format!("taskset -c {} oha {}", self.cpu, self.args(url).join(" "))
    }

    /// Runs oha against `url`, keeping its JSON in `out`; gives up 30 s after it should have
    /// ended, or on Ctrl-C.
    fn run(&self, url: &str, out: &Path) -> Result<OhaResult> {
        let stdout =
            std::fs::File::create(out).with_context(|| format!("create {}", out.display()))?;
        let err_path = out.with_extension("stderr.txt");
        let stderr = std::fs::File::create(&err_path)?;
        let mut cmd = Command::new(self.taskset);
        cmd.arg("-c")
            .arg(self.cpu.to_string())
            .arg(self.oha)
            .args(self.args(url))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        kill_with_parent(&mut cmd);
        let mut child = cmd.spawn().context("start oha")?;
        let deadline = Instant::now() + Duration::from_secs(self.seconds + 30);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if check_interrupted().is_err() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                check_interrupted()?;
                bail!("oha did not finish within {} s", self.seconds + 30);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let text = std::fs::read_to_string(out).unwrap_or_default();
        if !status.success() {
            let err = std::fs::read_to_string(&err_path).unwrap_or_default();
            bail!("oha failed ({status}):\n{text}{err}");
        }
        parse_oha(&text).with_context(|| format!("cannot parse oha's JSON:\n{text}"))
    }
}

/// Parses `oha --output-format json` / `oha -j`: seconds as floats in `summary` and
/// `latencyPercentiles`, counts in `statusCodeDistribution` and `errorDistribution`.
fn parse_oha(text: &str) -> Result<OhaResult> {
    let v: serde_json::Value = serde_json::from_str(text.trim()).context("not JSON")?;
    let secs = |path: &[&str]| -> Result<f64> {
        let mut cur = &v;
        for k in path {
            cur = cur
                .get(k)
                .with_context(|| format!("missing {}", path.join(".")))?;
        }
        // oha prints null for a percentile of zero requests.
        Ok(cur.as_f64().unwrap_or(f64::NAN))
    };
    let us = |path: &[&str]| secs(path).map(|s| s * 1e6);
    let count = |key: &str, good: fn(&str) -> bool| -> u64 {
        v.get(key)
            .and_then(|d| d.as_object())
            .map(|o| {
                o.iter()
                    .filter(|(k, _)| good(k))
                    .filter_map(|(_, n)| n.as_u64())
                    .sum()
            })
            .unwrap_or(0)
    };
    let responses = count("statusCodeDistribution", |_| true);
    let bad_status = count("statusCodeDistribution", |k| !k.starts_with('2'));
    let failed = count("errorDistribution", |_| true);
    Ok(OhaResult {
        req_per_s: secs(&["summary", "requestsPerSec"])?,
        p50_us: us(&["latencyPercentiles", "p50"])?,
        p90_us: us(&["latencyPercentiles", "p90"])?,
        p99_us: us(&["latencyPercentiles", "p99"])?,
        p999_us: us(&["latencyPercentiles", "p99.9"])?,
        max_us: us(&["summary", "slowest"])?,
        errors: bad_status + failed,
        responses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: LatencyArgs,
    }

    fn parse(argv: &[&str]) -> Result<LatencyArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("latency").chain(argv.iter().copied())).map(|c| c.args)
    }

    const SAMPLE: &str = r#"{
  "summary": {"successRate": 1.0, "total": 10.001, "slowest": 0.0123, "fastest": 0.0001,
              "average": 0.0004, "requestsPerSec": 999.9, "totalData": 100000,
              "sizePerRequest": 100, "sizePerSec": 9999.0},
  "responseTimeHistogram": {"0.0001": 10},
  "latencyPercentiles": {"p10": 0.0002, "p25": 0.00025, "p50": 0.0003, "p75": 0.0004,
                         "p90": 0.0005, "p95": 0.0006, "p99": 0.0011, "p99.9": 0.0042,
                         "p99.99": 0.01},
  "rps": {"mean": 1000.0},
  "details": {},
  "statusCodeDistribution": {"200": 9990, "502": 3},
  "errorDistribution": {"connection closed": 2}
}"#;

    #[test]
    fn parses_oha_json_into_microseconds() {
        let r = parse_oha(SAMPLE).expect("parses");
        assert_eq!(r.req_per_s, 999.9);
        assert!((r.p50_us - 300.0).abs() < 1e-6);
        assert!((r.p90_us - 500.0).abs() < 1e-6);
        assert!((r.p99_us - 1100.0).abs() < 1e-6);
        assert!((r.p999_us - 4200.0).abs() < 1e-6);
        assert!((r.max_us - 12_300.0).abs() < 1e-6);
        assert_eq!((r.errors, r.responses), (5, 9993));
    }

    #[test]
    fn oha_output_without_percentiles_is_an_error() {
        assert!(parse_oha("not json").is_err());
        assert!(parse_oha(r#"{"summary": {"requestsPerSec": 1.0, "slowest": 0.1}}"#).is_err());
    }

    #[test]
    fn rate_is_required_and_positive() {
        assert!(parse(&[]).is_err(), "RATE is required");
        assert!(validate(&parse(&["0"]).expect("parses")).is_err());
        assert!(validate(&parse(&["1000"]).expect("parses")).is_ok());
        assert!(validate(&parse(&["1000", "--duration", "0"]).expect("parses")).is_err());
    }

    #[test]
    fn missing_oha_names_the_install_command() {
        let e = find_oha(Some(Path::new("/nonexistent/oha"))).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/oha"));
        assert!(OHA_INSTALL_HINT.starts_with("cargo install oha"));
    }

    #[test]
    fn command_line_asks_for_a_fixed_corrected_rate() {
        let run = OhaRun {
            oha: Path::new("/x/oha"),
            taskset: Path::new("/usr/bin/taskset"),
            cpu: 1,
            rate: 2000,
            seconds: 10,
            connections: 64,
            json_flag: "-j",
        };
        assert_eq!(
            run.command_line("http://127.0.0.1:1/"),
            "taskset -c 1 oha --no-tui -j -z 10s -c 64 -q 2000 --latency-correction \
             http://127.0.0.1:1/"
        );
    }

    #[test]
    fn table_takes_medians_and_ratios() {
        let r = parse_oha(SAMPLE).expect("parses");
        let mut slow = r.clone();
        slow.p99_us *= 2.0;
        let text = table(&[("ringlb", r), ("nginx", slow)]).render(false);
        assert!(text.contains("p99.9 µs"), "{text}");
        assert!(text.contains("ringlb/nginx"), "{text}");
    }
}

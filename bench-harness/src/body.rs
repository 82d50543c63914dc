//! The `body` subcommand: backends answer BYTES-byte bodies; wrk against each proxy, one at a
//! time, in rotated rounds; throughput (MB/s of response bodies) and the proxy's CPU seconds
//! per GB moved, per proxy and size.

use anyhow::{bail, Result};
use clap::Args;

use crate::compare::{run_rounds, Rounds};
use crate::lab::{Lab, Metric, SideBySide};
use crate::report::{median, RunRow};
use crate::setup::SetupArgs;

/// MAX_BODY is the largest body size accepted (each backend keeps the whole response in
/// memory).
const MAX_BODY: usize = 64 << 20;

/// BodyArgs are the options of `body`.
#[derive(Debug, Args)]
pub struct BodyArgs {
    /// Body sizes in bytes, one series each (default: 16384 1048576). `--body-bytes` is
    /// ignored here.
    #[arg(value_name = "BYTES")]
    sizes: Vec<usize>,

    /// Options shared with other subcommands (binaries, CPUs, which proxies).
    #[command(flatten)]
    setup: SetupArgs,

    /// Seconds each measured wrk run lasts.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    duration: u64,

    /// Rounds per size; each runs every proxy once, the order rotated from round to round.
    #[arg(long, default_value_t = 3, value_name = "N")]
    rounds: u32,

    /// Open connections wrk keeps (`-c`).
    #[arg(long, default_value_t = 64, value_name = "N")]
    connections: u32,

    /// wrk threads (`-t`).
    #[arg(long, default_value_t = 1, value_name = "N")]
    threads: u32,

    /// Seconds of unmeasured load after each proxy starts (0 = none).
    #[arg(long, default_value_t = 2, value_name = "SECS")]
    warmup: u64,

    /// Print the tables as Markdown.
    #[arg(long)]
    markdown: bool,
}

/// The sizes to run: the given ones, or 16 KiB and 1 MiB; each must be 1 ..= 64 MiB.
fn sizes(args: &BodyArgs) -> Result<Vec<usize>> {
    if args.duration == 0 || args.rounds == 0 || args.connections == 0 || args.threads == 0 {
        bail!("--duration, --rounds, --connections and --threads must be at least 1");
    }
    if args.connections < args.threads {
        bail!("wrk needs --connections >= --threads");
    }
    let sizes = if args.sizes.is_empty() {
        vec![16_384, 1_048_576]
    } else {
        args.sizes.clone()
    };
    if let Some(bad) = sizes.iter().find(|&&b| b == 0 || b > MAX_BODY) {
        bail!("body size {bad} is out of range (1 ..= {MAX_BODY} bytes)");
    }
    Ok(sizes)
}

/// The table of one size: per proxy the medians over rounds.
fn table(runs: &[RunRow], bytes: usize) -> SideBySide {
    let mut t = SideBySide::new(&[
        Metric {
            name: "req/s",
            decimals: 0,
            lower_is_better: false,
        },
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
        Metric {
            name: "p99 µs",
            decimals: 0,
            lower_is_better: true,
        },
        Metric {
            name: "errors",
            decimals: 0,
            lower_is_better: true,
        },
    ]);
    let mut labels: Vec<&str> = Vec::new();
    for r in runs {
        if !labels.contains(&r.label.as_str()) {
            labels.push(&r.label);
        }
    }
    for label in labels {
        let rows: Vec<&RunRow> = runs.iter().filter(|r| r.label == label).collect();
        let rps = median(rows.iter().map(|r| r.wrk.req_per_s));
        let mbps = rps.map(|r| r * bytes as f64 / 1e6);
        // CPU seconds per 10^9 body bytes = CPU µs/req × 1000 / bytes.
        let cpu_per_gb = median(
            rows.iter()
                .filter_map(|r| r.cpu_us_per_req())
                .map(|us| us * 1000.0 / bytes as f64),
        );
        let p99 = median(rows.iter().map(|r| r.wrk.p99_us));
        let errors = rows.iter().map(|r| r.wrk.errors()).sum::<u64>() as f64;
        t.row(label, vec![rps, mbps, cpu_per_gb, p99, Some(errors)]);
    }
    t
}

/// Runs `body`.
pub fn run(args: &BodyArgs) -> Result<()> {
    let sizes = sizes(args)?;
    let lab = Lab::new(&args.setup)?;
    let mut out = Vec::new();
    for &bytes in &sizes {
        let backends = lab.backends(bytes)?;
        let (_, runs) = run_rounds(
            &lab,
            &backends,
            &Rounds {
                headers: Vec::new(),
                tls: None,
                duration: args.duration,
                rounds: args.rounds,
                connections: args.connections,
                threads: args.threads,
                warmup: args.warmup,
                max_conns: 0,
                baseline: false,
                tag: "body",
                h2_streams: None,
                variants: Vec::new(),
            },
        )?;
        out.push((bytes, table(&runs, bytes)));
    }
    println!();
    for (bytes, t) in out {
        println!(
            "body {bytes} bytes (wrk -t{} -c{} -d{}s, median of {} round(s); MB = 10^6 body \
             bytes, GB = 10^9):\n",
            args.threads, args.connections, args.duration, args.rounds
        );
        print!("{}", t.render(args.markdown));
        println!();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wrk::WrkResult;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BodyArgs,
    }

    fn parse(argv: &[&str]) -> BodyArgs {
        Cli::try_parse_from(std::iter::once("body").chain(argv.iter().copied()))
            .expect("parses")
            .args
    }

    #[test]
    fn sizes_default_to_16k_and_1m_and_are_range_checked() {
        assert_eq!(sizes(&parse(&[])).expect("ok"), vec![16_384, 1_048_576]);
        assert_eq!(
            sizes(&parse(&["100", "2000"])).expect("ok"),
            vec![100, 2000]
        );
        assert!(sizes(&parse(&["0"])).is_err());
        assert!(sizes(&parse(&["67108865"])).is_err());
        assert!(sizes(&parse(&["100", "--connections", "0"])).is_err());
    }

    #[test]
    fn throughput_and_cpu_per_gb_come_from_req_per_s_and_cpu_per_request() {
        let row = |label: &str, rps: f64, cpu: f64| RunRow {
            label: label.into(),
            round: 1,
            wrk: WrkResult {
                requests: (rps * 10.0) as u64,
                seconds: 10.0,
                req_per_s: rps,
                p99_us: 900.0,
                ..WrkResult::default()
            },
            cpu_seconds: Some(cpu),
            rss_kib: None,
            backend_requests: Vec::new(),
            load_cpu_seconds: 0.0,
            proxy_core_busy: None,
            load_core_busy: None,
        };
        // 1000 req/s × 1 MB = 1000 MB/s; 10 000 requests moved 10 GB for 5 CPU s = 0.5 s/GB.
        let t = table(
            &[row("ringlb", 1000.0, 5.0), row("nginx", 500.0, 5.0)],
            1_000_000,
        );
        assert_eq!(t.rows[0].1[1], Some(1000.0));
        assert_eq!(t.rows[0].1[2], Some(0.5));
        assert_eq!(t.rows[1].1[2], Some(1.0));
        assert_eq!(t.ratios()[0].1[1], Some(2.0));
    }
}

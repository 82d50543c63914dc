//! The `limits` subcommand: what backend protection costs on the request path. ringlb alone,
//! in interleaved rounds: plain, then with `max_conns` + `queue` + the group's `rate`, then
//! with `max_conns` + a per-client `rate` (`key = "client_ip"`), every limit set so high that
//! nothing is ever queued or refused. Every request then pays for the checks (a slot taken and
//! given back, tokens taken, the client key hashed and looked up in the LRU) and nothing else
//! changes.
//!
//! The figure is CPU µs per request, limited ÷ plain, as the median of the per-round ratios
//! (the runs of a round are back to back, so the slow drift of a shared machine cancels), next
//! to the medians of every run.

use anyhow::{bail, Result};
use clap::Args;

use crate::compare::{run_rounds, Rounds};
use crate::lab::Lab;
use crate::proxy::ProxyKind;
use crate::report::{median, Report, RunRow};
use crate::setup::SetupArgs;

/// The variants: label and the lines added to ringlb's `[[upstream]]`. The first is the
/// plain one every other is divided by.
const VARIANTS: [(&str, &str); 3] = [
    ("plain", ""),
    (
        "limits",
        "max_conns = 100000\n\
         queue = { max = 1000, timeout_ms = 5000 }\n\
         rate = { requests_per_sec = 100000000, burst = 1000000 }\n",
    ),
    (
        "client-rate",
        "max_conns = 100000\n\
         rate = { requests_per_sec = 100000000, burst = 1000000, key = \"client_ip\" }\n",
    ),
];

/// LimitsArgs are the options of `limits`.
#[derive(Debug, Args)]
pub struct LimitsArgs {
    /// Options shared with other subcommands (binaries, CPUs); `--only` and
    /// `--ringlb-upstream` are ignored: ringlb runs alone, in the variants above.
    #[command(flatten)]
    setup: SetupArgs,

    /// Seconds each measured wrk run lasts.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    duration: u64,

    /// Rounds; each runs every variant once, the order rotated from round to round.
    #[arg(long, default_value_t = 6, value_name = "N")]
    rounds: u32,

    /// Open connections wrk keeps (`-c`).
    #[arg(long, default_value_t = 64, value_name = "N")]
    connections: u32,

    /// Seconds of unmeasured load after each start (0 = none).
    #[arg(long, default_value_t = 2, value_name = "SECS")]
    warmup: u64,

    /// Print the tables as Markdown.
    #[arg(long)]
    markdown: bool,
}

/// Runs `limits`.
pub fn run(args: &LimitsArgs) -> Result<()> {
    if args.duration == 0 || args.rounds == 0 || args.connections == 0 {
        bail!("--duration, --rounds and --connections must be at least 1");
    }
    let setup = SetupArgs {
        only: vec![ProxyKind::Ringlb],
        ringlb: args.setup.ringlb.clone(),
        proxy_cpu: args.setup.proxy_cpu,
        load_cpu: args.setup.load_cpu,
        body_bytes: args.setup.body_bytes,
        ringlb_upstream: String::new(),
        ringlb_server: String::new(),
        keep_tmp: args.setup.keep_tmp,
    };
    let lab = Lab::new(&setup)?;
    let backends = lab.backends(setup.body_bytes)?;
    let (_, runs) = run_rounds(
        &lab,
        &backends,
        &Rounds {
            duration: args.duration,
            rounds: args.rounds,
            connections: args.connections,
            threads: 1,
            warmup: args.warmup,
            max_conns: 0,
            baseline: false,
            tag: "limits",
            headers: Vec::new(),
            tls: None,
            h2_streams: None,
            variants: VARIANTS
                .iter()
                .map(|(label, extra)| (label.to_string(), extra.to_string()))
                .collect(),
        },
    )?;
    drop(backends);
    let mut settings = vec![("rounds".to_string(), args.rounds.to_string())];
    for (label, extra) in &VARIANTS[1..] {
        settings.push((label.to_string(), extra.trim().replace('\n', "; ")));
    }
    let report = Report {
        settings,
        versions: Vec::new(),
        baseline: None,
        runs,
    };
    println!();
    print!("{}", report.render(args.markdown));
    println!("\nCPU µs/req of each variant ÷ plain, median of the per-round ratios:\n");
    for (label, _) in &VARIANTS[1..] {
        match paired_ratio(&report.runs, label, VARIANTS[0].0) {
            Some((ratio, n)) => println!(
                "  {label:<12} {ratio:.3} ({:+.1} %) over {n} rounds",
                (ratio - 1.0) * 100.0
            ),
            None => println!("  {label:<12} no round had both CPU figures"),
        }
    }
    Ok(())
}

/// The median over rounds of (`label`'s CPU µs/req ÷ `base`'s) within the same round, and how
/// many rounds had both.
fn paired_ratio(runs: &[RunRow], label: &str, base: &str) -> Option<(f64, usize)> {
    let rounds = runs.iter().map(|r| r.round).max().unwrap_or(0);
    let ratios: Vec<f64> = (1..=rounds)
        .filter_map(|round| {
            let cpu = |l: &str| {
                runs.iter()
                    .find(|r| r.round == round && r.label == l)
                    .and_then(RunRow::cpu_us_per_req)
            };
            match (cpu(label), cpu(base)) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            }
        })
        .collect();
    let n = ratios.len();
    median(ratios.into_iter()).map(|m| (m, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wrk::WrkResult;

    fn row(label: &str, round: u32, requests: u64, cpu: f64) -> RunRow {
        RunRow {
            label: label.into(),
            round,
            wrk: WrkResult {
                requests,
                seconds: 10.0,
                req_per_s: requests as f64 / 10.0,
                ..WrkResult::default()
            },
            cpu_seconds: Some(cpu),
            rss_kib: None,
            backend_requests: Vec::new(),
            load_cpu_seconds: 0.0,
            proxy_core_busy: None,
            load_core_busy: None,
        }
    }

    #[test]
    fn paired_ratio_divides_within_rounds_and_takes_the_median() {
        // Round 2 ran on a slower machine for both: within the round the ratio is unchanged.
        let runs = vec![
            row("plain", 1, 1_000_000, 10.0),
            row("limits", 1, 1_000_000, 10.2),
            row("limits", 2, 1_000_000, 20.8),
            row("plain", 2, 1_000_000, 20.0),
            row("plain", 3, 1_000_000, 10.0),
            row("limits", 3, 1_000_000, 10.1),
            row("client-rate", 3, 1_000_000, 11.0),
        ];
        let (r, n) = paired_ratio(&runs, "limits", "plain").unwrap();
        assert_eq!(n, 3);
        assert!((r - 1.02).abs() < 1e-9, "{r}");
        let (r, n) = paired_ratio(&runs, "client-rate", "plain").unwrap();
        assert_eq!(n, 1);
        assert!((r - 1.1).abs() < 1e-9, "{r}");
        assert!(paired_ratio(&runs, "nothing", "plain").is_none());
    }

    #[test]
    fn every_variant_is_a_valid_ringlb_upstream() {
        for (label, extra) in VARIANTS {
            let toml = format!(
                "[server]\nlisten = [\"127.0.0.1:0\"]\n[[upstream]]\nname = \"u\"\n{extra}\
                 peers = [{{ address = \"127.0.0.1:1\" }}]\n"
            );
            let c = ringlb::Config::from_toml_str(&toml, "t.toml");
            assert!(c.is_ok(), "{label}: {:?}", c.err());
        }
    }
}

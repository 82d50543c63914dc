//! The `conns` subcommand: wrk with many connections (default 10000) against each proxy,
//! one at a time, in rotated rounds: req/s, p50, p99, errors and CPU µs/request.
//!
//! N is capped by the open-files limit (raised from soft to hard first) at (limit − 256) / 2:
//! the proxy holds two descriptors per proxied connection (client and upstream side), which is
//! the tightest budget, since wrk and the backends each hold one (and HAProxy refuses to start
//! when its `maxconn` would not get two each).

use anyhow::{bail, Result};
use clap::Args;

use crate::compare::{run_rounds, Rounds};
use crate::lab::{cap_connections, raise_nofile_limit, Lab};
use crate::report::Report;
use crate::setup::SetupArgs;

/// ConnsArgs are the options of `conns`.
#[derive(Debug, Args)]
pub struct ConnsArgs {
    /// Open connections wrk keeps (`-c`), capped by the open-files limit.
    #[arg(default_value_t = 10_000, value_name = "N")]
    connections: u32,

    /// Options shared with other subcommands (binaries, CPUs, which proxies).
    #[command(flatten)]
    setup: SetupArgs,

    /// Seconds each measured wrk run lasts.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    duration: u64,

    /// Rounds; each runs every proxy once, the order rotated by one from round to round.
    #[arg(long, default_value_t = 3, value_name = "N")]
    rounds: u32,

    /// wrk threads (`-t`); they all share the load CPU.
    #[arg(long, default_value_t = 1, value_name = "N")]
    threads: u32,

    /// Seconds of unmeasured load after each proxy starts (0 = none); it also opens the
    /// connections, so the measured run does not time the connects.
    #[arg(long, default_value_t = 2, value_name = "SECS")]
    warmup: u64,

    /// Print the tables as Markdown.
    #[arg(long)]
    markdown: bool,
}

/// Checks the options; returns the connection count after the fd cap (and why it was capped).
fn plan(args: &ConnsArgs, fd_limit: u64) -> Result<(u32, Option<String>)> {
    if args.duration == 0 || args.rounds == 0 || args.connections == 0 || args.threads == 0 {
        bail!("N, --duration, --rounds and --threads must be at least 1");
    }
    let (n, why) = cap_connections(args.connections, fd_limit, 2);
    if n < args.threads {
        bail!("wrk needs N >= --threads ({n} < {})", args.threads);
    }
    Ok((n, why))
}

/// Runs `conns`.
pub fn run(args: &ConnsArgs) -> Result<()> {
    let fd_limit = raise_nofile_limit();
    let (n, why) = plan(args, fd_limit)?;
    if let Some(why) = &why {
        eprintln!("note: {why}");
    }
    let lab = Lab::new(&args.setup)?;
    let backends = lab.backends(args.setup.body_bytes)?;
    let (baseline, runs) = run_rounds(
        &lab,
        &backends,
        &Rounds {
            headers: Vec::new(),
            tls: None,
            duration: args.duration,
            rounds: args.rounds,
            connections: n,
            threads: args.threads,
            warmup: args.warmup,
            max_conns: n,
            baseline: false,
            tag: "conns",
            h2_streams: None,
            variants: Vec::new(),
        },
    )?;
    let report = Report {
        settings: Vec::new(),
        versions: Vec::new(),
        baseline,
        runs,
    };
    drop(backends);
    println!();
    println!(
        "conns: {n} keep-alive connections (wrk -t{} -c{n} -d{}s), {}-byte bodies",
        args.threads, args.duration, args.setup.body_bytes
    );
    if let Some(why) = &why {
        println!("note: {why}");
    }
    println!();
    print!("{}", report.render(args.markdown));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ConnsArgs,
    }

    fn parse(argv: &[&str]) -> ConnsArgs {
        Cli::try_parse_from(std::iter::once("conns").chain(argv.iter().copied()))
            .expect("parses")
            .args
    }

    #[test]
    fn default_is_ten_thousand_capped_by_the_fd_limit() {
        let a = parse(&[]);
        assert_eq!(a.connections, 10_000);
        assert_eq!(plan(&a, 1_048_576).expect("ok"), (10_000, None));
        let (n, why) = plan(&a, 20_000).expect("ok");
        assert_eq!(n, (20_000 - 256) / 2);
        assert!(why.is_some());
    }

    #[test]
    fn zero_or_too_few_connections_are_refused() {
        assert!(plan(&parse(&["0"]), 20_000).is_err());
        assert!(plan(&parse(&["2", "--threads", "4"]), 20_000).is_err());
        assert!(plan(&parse(&["500", "--rounds", "0"]), 20_000).is_err());
    }
}

//! bench-harness: side-by-side load runs of ringlb against nginx and HAProxy.
//!
//! # Layout
//! - [`setup`]: finding tools and the ringlb binary, CPU pinning, the temp dir, Ctrl-C.
//! - [`backend`]: in-process HTTP/1.1 keep-alive backends (one epoll thread each).
//! - [`proxy`]: generating each proxy's config, starting it pinned, readiness, stopping it.
//! - [`procstat`]: CPU time and RSS of a process tree from `/proc`.
//! - [`wrk`]: running wrk and parsing its `--latency` report.
//! - [`report`]: per-run rows, medians, ratios; text, Markdown and JSON output.
//! - [`compare`]: the `compare` subcommand that ties them together.
//!
//! Subcommands share the [`setup::SetupArgs`] options (binary paths, CPUs, which proxies), so a
//! later `faults` subcommand (kill/pause a backend under load, measure failover) can reuse the
//! backends, the proxy launcher and the process accounting without touching `compare`.

mod backend;
mod compare;
mod procstat;
mod proxy;
mod report;
mod setup;
mod wrk;

use clap::{Parser, Subcommand};

/// Cli is the command line of the harness.
#[derive(Debug, Parser)]
#[command(
    name = "bench-harness",
    about = "Load-test ringlb side by side with nginx and HAProxy"
)]
struct Cli {
    /// Which experiment to run.
    #[command(subcommand)]
    command: Command,
}

/// Command is one experiment. `faults` (failover under load) will be added next to `compare`.
#[derive(Debug, Subcommand)]
enum Command {
    /// Throughput, latency and CPU per request of ringlb vs nginx vs HAProxy, same backends,
    /// same pinning, interleaved rounds.
    Compare(compare::CompareArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Compare(args) => compare::run(&args),
    };
    if let Err(e) = result {
        eprintln!("bench-harness: error: {e:#}");
        std::process::exit(1);
    }
}

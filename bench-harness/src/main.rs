//! bench-harness: side-by-side load runs of ringlb against nginx and HAProxy.
//!
//! # Layout
//! - [`setup`]: finding tools and the ringlb binary, CPU pinning, the temp dir, Ctrl-C.
//! - [`backend`]: in-process HTTP/1.1 keep-alive backends (one epoll thread each).
//! - [`proxy`]: generating each proxy's config, starting it pinned, readiness, stopping it.
//! - [`procstat`]: CPU time and RSS of a process tree from `/proc`.
//! - [`wrk`]: running wrk and parsing its `--latency` report.
//! - [`report`]: per-run rows, medians, ratios; text, Markdown and JSON output.
//! - [`lab`]: what the side-by-side subcommands share: one proxy up at a time, rotated order,
//!   the open-files limit, per-proxy tables with ratios.
//! - [`compare`]: the `compare` subcommand that ties them together (and its rounds, shared
//!   with `conns` and `body`).
//! - [`conns`]: `conns N`: many wrk connections (default 10000).
//! - [`body`]: `body BYTES…`: large bodies, MB/s and CPU s/GB.
//! - [`idle`]: `idle N`: RSS and CPU cost of N idle keep-alive clients.
//! - [`latency`]: `latency RATE`: fixed-rate, coordinated-omission-corrected latency (oha).
//! - [`limits`]: `limits`: the CPU cost of `max_conns` + `rate` on the request path, ringlb
//!   plain vs limited in interleaved rounds.
//! - [`faults`]: the `faults` subcommand: ringlb under load while backends are killed and
//!   restarted (failover, retries, circuit breakers).
//! - [`reload`]: the `reload` subcommand: ringlb under load while its config file is rewritten
//!   and reloaded (SIGHUP and `POST /reload` in turn), broken files included.
//! - [`ws`]: the `ws` subcommand: WebSocket echo round trips through each proxy.
//!
//! Subcommands share the setup ([`setup::SetupArgs`]: binary paths, CPUs), the backends, the
//! proxy launcher and wrk.

mod backend;
mod body;
mod compare;
mod conns;
mod faults;
mod idle;
mod lab;
mod latency;
mod limits;
mod procstat;
mod proxy;
mod reload;
mod report;
mod setup;
mod wrk;
mod ws;

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

/// Command is one experiment.
#[derive(Debug, Subcommand)]
enum Command {
    /// Throughput, latency and CPU per request of ringlb vs nginx vs HAProxy, same backends,
    /// same pinning, interleaved rounds.
    Compare(compare::CompareArgs),
    /// ringlb under wrk load while one of three backends is killed and restarted every few
    /// seconds: failed requests (target: none), req/s, breaker transitions.
    Faults(faults::FaultsArgs),
    /// ringlb under wrk load while its config is rewritten and reloaded every second
    /// (peers added, removed, reweighted; a broken file every fifth time): failed requests
    /// (target: none), reloads applied and refused.
    Reload(reload::ReloadArgs),
    /// WebSocket echo round trips through ringlb, nginx and HAProxy (one tunnel per client
    /// thread): round trips per second, CPU per round trip, RSS.
    Ws(ws::WsArgs),
    /// wrk with many connections (default 10000, capped by the open-files limit) against
    /// ringlb, nginx and HAProxy in turn: req/s, p50, p99, errors, CPU µs/request.
    Conns(conns::ConnsArgs),
    /// Backends answer BYTES-byte bodies (default 16384 and 1048576): throughput (MB/s) and
    /// proxy CPU seconds per GB, ringlb vs nginx vs HAProxy.
    Body(body::BodyArgs),
    /// N idle keep-alive clients (one request each) against ringlb, nginx and HAProxy in
    /// turn: RSS growth per client, idle CPU per 10 s alone and with the clients.
    Idle(idle::IdleArgs),
    /// Fixed-rate latency with oha (`-q RATE --latency-correction`) against ringlb, nginx and
    /// HAProxy in turn: p50/p90/p99/p99.9/max.
    Latency(latency::LatencyArgs),
    /// What backend protection costs per request: ringlb plain vs with `max_conns`, `queue`
    /// and `rate` (group, then per client) set too high to ever bite, interleaved rounds,
    /// CPU µs/request ratios.
    Limits(limits::LimitsArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Compare(args) => compare::run(&args),
        Command::Faults(args) => faults::run(&args),
        Command::Reload(args) => reload::run(&args),
        Command::Ws(args) => ws::run(&args),
        Command::Conns(args) => conns::run(&args),
        Command::Body(args) => body::run(&args),
        Command::Idle(args) => idle::run(&args),
        Command::Latency(args) => latency::run(&args),
        Command::Limits(args) => limits::run(&args),
    };
    if let Err(e) = result {
        eprintln!("bench-harness: error: {e:#}");
        std::process::exit(1);
    }
}

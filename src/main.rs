//! The `ringlb` binary: run a config, check a config, or run the embedded demo.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ringlb::config::Config;
use ringlb::demo::DemoBackends;
use ringlb::server::Server;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// ringlb: a thread-per-core HTTP/1.1 reverse proxy and load balancer on io_uring.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Config file (TOML) to run or check.
    #[arg(short, long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log level (error, warn, info, debug, trace) or a tracing filter; overrides RUST_LOG.
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with --config FILE (the default when no command is given).
    Run,
    /// Validate --config FILE and print the resolved setup.
    Check,
    /// Start three demo backends on loopback and the proxy in front of them.
    Demo {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Shards to run ("auto" = one per CPU).
        #[arg(long, default_value = "auto")]
        workers: String,
        /// Balancing algorithm over the demo backends: round_robin, smooth_weighted,
        /// least_connections, power_of_two, random, weighted_random, consistent_hash, maglev,
        /// peak_ewma, ip_hash.
        #[arg(long, default_value = "round_robin")]
        algorithm: String,
        /// What hashing algorithms (consistent_hash, maglev) hash: client_ip, path, query,
        /// uri, header:NAME, cookie:NAME, query_param:NAME.
        #[arg(long, default_value = "header:X-User-Id")]
        hash_key: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref());
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.config),
        Command::Check => check(cli.config),
        Command::Demo {
            listen,
            workers,
            algorithm,
            hash_key,
        } => demo(&listen, &workers, &algorithm, &hash_key),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringlb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::try_new(l),
        None => EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new("info")),
    }
    .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

fn load(path: Option<PathBuf>) -> anyhow::Result<Config> {
    let path =
        path.ok_or_else(|| anyhow::anyhow!("--config FILE is required (or try `ringlb demo`)"))?;
    Ok(Config::from_file(&path)?)
}

fn check(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = load(path)?;
    println!("{}", config.describe());
    println!("config OK");
    Ok(())
}

fn run(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = load(path)?;
    let server = Server::start(config)?;
    serve_until_signal(server)
}

/// Waits for SIGTERM/SIGINT: the first one starts a graceful shutdown, a second one exits at
/// once.
fn serve_until_signal(server: Server) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    let handle = server.shutdown_handle();
    std::thread::Builder::new()
        .name("ringlb-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                seen += 1;
                if seen == 1 {
                    tracing::info!(signal = sig, "shutting down: finishing in-flight requests");
                    handle.shutdown();
                } else {
                    tracing::warn!(signal = sig, "second signal: exiting now");
                    std::process::exit(1);
                }
            }
        })?;
    if !server.wait() {
        anyhow::bail!("a shard stopped abnormally (see the log above)");
    }
    tracing::info!("stopped");
    Ok(())
}

fn demo(listen: &str, workers: &str, algorithm: &str, hash_key: &str) -> anyhow::Result<()> {
    let backends = DemoBackends::start(3)?;
    let workers = if workers == "auto" {
        "\"auto\"".to_string()
    } else {
        workers.to_string()
    };
    let peers: Vec<String> = backends
        .addrs
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect();
    // consistent_hash and maglev need a key; ip_hash brings its own.
    let hash_line = if matches!(algorithm, "consistent_hash" | "maglev") {
        format!("hash_key = \"{hash_key}\"\n")
    } else {
        String::new()
    };
    let text = format!(
        "[server]\nlisten = [\"{listen}\"]\nworkers = {workers}\nadmin = \"\"\n\n\
         [[upstream]]\nname = \"demo\"\nalgorithm = \"{algorithm}\"\n{hash_line}peers = [{}]\n",
        peers.join(", ")
    );
    let config = Config::from_toml_str(&text, "<demo>")?;
    let server = Server::start(config)?;
    let addr = server.listen_addrs()[0];
    println!(
        "ringlb demo: {} shard(s) on {}, listening on http://{addr}/",
        server.shard_count(),
        server.driver()
    );
    for (i, a) in backends.addrs.iter().enumerate() {
        println!("  demo backend {} on {a}", i + 1);
    }
    println!("\nTry:");
    println!("  curl -i http://{addr}/hello          # answered by the next backend in rotation");
    println!("  for i in 1 2 3 4; do curl -s http://{addr}/; done");
    println!("  curl -s -X POST --data-binary @Cargo.toml http://{addr}/upload");
    println!("  wrk -t1 -c64 -d10s http://{addr}/");
    println!("\nCtrl-C stops it (a second Ctrl-C exits at once).");
    serve_until_signal(server)
}

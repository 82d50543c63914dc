//! The `ringlb` binary: run a config, check a config, or run the embedded demo.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{Parser, Subcommand};
use ringlb::config::Config;
use ringlb::demo::DemoBackends;
use ringlb::process::{spawn_supervised, StderrLog};
use ringlb::server::{Server, ShutdownHandle, StartOptions};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

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
    /// Share the listen addresses with a process that already listens there (SO_REUSEPORT
    /// across processes, e.g. the old ringlb during a binary upgrade); without it ringlb
    /// refuses to start on an address in use.
    #[arg(long, global = true)]
    reuse_listeners: bool,
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
    let options = StartOptions {
        reuse_listeners: cli.reuse_listeners,
        ..StartOptions::default()
    };
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.config, options),
        Command::Check => check(cli.config),
        Command::Demo {
            listen,
            workers,
            algorithm,
            hash_key,
        } => demo(&listen, &workers, &algorithm, &hash_key, options),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!: it panics when stderr is a closed pipe.
            let _ = writeln!(std::io::stderr(), "ringlb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr through [`StderrLog`]: a log line the OS refuses (stderr closed or full) is
/// dropped and counted, never reported with a panicking `eprintln!` from the thread that
/// logged.
fn init_logging(level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::try_new(l),
        None => EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new("info")),
    }
    .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(StderrLog)
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// Writes `text` to stdout; a closed stdout (`ringlb check | head -n1`) is not an error
/// worth a panic.
fn print_stdout(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// The signals the binary handles, registered before the proxy starts so that none of them
/// kills the process with its default action once startup began.
fn handled_signals() -> anyhow::Result<Signals> {
    Ok(Signals::new([SIGTERM, SIGINT, SIGHUP])?)
}

fn load(path: Option<PathBuf>) -> anyhow::Result<Config> {
    let path =
        path.ok_or_else(|| anyhow::anyhow!("--config FILE is required (or try `ringlb demo`)"))?;
    Ok(Config::from_file(&path)?)
}

fn check(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = load(path)?;
    print_stdout(&format!("{}\nconfig OK\n", config.describe()));
    Ok(())
}

fn run(path: Option<PathBuf>, options: StartOptions) -> anyhow::Result<()> {
    let signals = handled_signals()?;
    let config = load(path)?;
    let server = Server::start_with(config, options)?;
    serve_until_signal(server, signals)
}

/// Serves until SIGTERM/SIGINT: the first one starts a graceful shutdown, a second one exits
/// at once (status 1). SIGHUP is logged (reload is not supported yet) and changes nothing.
///
/// The signal thread runs supervised: if it panics, the panic is logged and a graceful
/// shutdown starts, and the process then exits non-zero, instead of serving on with signals
/// ignored.
fn serve_until_signal(server: Server, signals: Signals) -> anyhow::Result<()> {
    let handle = server.shutdown_handle();
    let signal_thread_died = Arc::new(AtomicBool::new(false));
    let (died, stop) = (signal_thread_died.clone(), handle.clone());
    spawn_supervised(
        "ringlb-signals",
        move || signal_loop(signals, &handle),
        move |_| {
            died.store(true, Ordering::SeqCst);
            tracing::error!("signals are no longer handled: stopping ringlb");
            stop.shutdown();
        },
    )?;
    let clean = server.wait();
    if signal_thread_died.load(Ordering::SeqCst) {
        anyhow::bail!("the signal thread panicked (see the log above)");
    }
    if !clean {
        anyhow::bail!("a shard or the control thread stopped abnormally (see the log above)");
    }
    tracing::info!("stopped");
    Ok(())
}

/// The signal thread's body: acts on each signal as [`serve_until_signal`] describes.
fn signal_loop(mut signals: Signals, handle: &ShutdownHandle) {
    let mut stopping = false;
    for sig in signals.forever() {
        let name = signal_name(sig);
        if sig == SIGHUP {
            tracing::warn!(
                "{name}: configuration reload is not supported yet; still serving with the \
                 configuration loaded at start"
            );
        } else if !stopping {
            stopping = true;
            tracing::info!("{name}: shutting down: finishing in-flight requests");
            handle.shutdown();
        } else {
            tracing::warn!("{name}: second signal: exiting now");
            std::process::exit(1);
        }
    }
}

/// The name of a signal [`handled_signals`] registers.
fn signal_name(sig: i32) -> &'static str {
    match sig {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

fn demo(
    listen: &str,
    workers: &str,
    algorithm: &str,
    hash_key: &str,
    options: StartOptions,
) -> anyhow::Result<()> {
    let signals = handled_signals()?;
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
    let server = Server::start_with(config, options)?;
    let addr = server.listen_addrs()[0];
    let mut out = format!(
        "ringlb demo: {} shard(s) on {}, listening on http://{addr}/\n",
        server.shard_count(),
        server.driver()
    );
    for (i, a) in backends.addrs.iter().enumerate() {
        out += &format!("  demo backend {} on {a}\n", i + 1);
    }
    out += &format!(
        "\nTry:\n\
         \x20 curl -i http://{addr}/hello          # answered by the next backend in rotation\n\
         \x20 for i in 1 2 3 4; do curl -s http://{addr}/; done\n\
         \x20 curl -s -X POST --data-binary @Cargo.toml http://{addr}/upload\n\
         \x20 wrk -t1 -c64 -d10s http://{addr}/\n\
         \nCtrl-C stops it (a second Ctrl-C exits at once).\n"
    );
    print_stdout(&out);
    serve_until_signal(server, signals)
}

//! The `ringlb` binary: run a config, check a config, or run the embedded demo.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand};
use ringlb::access_log::AccessLogHandle;
use ringlb::config::Config;
use ringlb::demo::DemoBackends;
use ringlb::process::{spawn_supervised, StderrLog};
use ringlb::server::{ReloadHandle, Server, ShutdownHandle, StartOptions};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
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
    /// Log level (error, warn, info, debug, trace, off) or a tracing filter such as
    /// `info,ringlb=debug`; overrides RUST_LOG. Anything else is an error (exit status 2).
    #[arg(long, global = true, value_name = "LEVEL", value_parser = parse_log_filter)]
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
    /// Tell a running ringlb to reload its configuration file (`POST /reload` on its admin
    /// endpoint) and print the outcome. The admin address and token come from --admin and
    /// --token, else from --config FILE, else the default 127.0.0.1:9900.
    Reload {
        /// The admin address of the running ringlb.
        #[arg(long, value_name = "ADDR")]
        admin: Option<String>,
        /// The admin token (`server.admin_token`); also read from RINGLB_ADMIN_TOKEN.
        #[arg(long, env = "RINGLB_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Start three demo backends on loopback and the proxy in front of them (it builds its
    /// own config: --config is rejected).
    Demo {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Where the admin endpoint (/status, /health) listens; `off` disables it.
        #[arg(long, default_value = DEMO_ADMIN, value_parser = parse_demo_admin)]
        admin: String,
        /// Shards to run ("auto" = one per CPU). One by default, so that the rotation over the
        /// backends is the one you see: each shard rotates on its own.
        #[arg(long, default_value = "1")]
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

/// The demo's default admin address: next to the default `server.admin` (9900), so that the
/// demo runs beside a ringlb with the default config.
const DEMO_ADMIN: &str = "127.0.0.1:9901";

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Some(Command::Demo { .. })) {
        if let Some(path) = &cli.config {
            // `--config` is a global flag, so clap accepts it here; the demo would ignore it.
            Cli::command()
                .error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!(
                        "`ringlb demo` builds its own config and cannot use --config {}; \
                         run `ringlb --config {}` to serve that file",
                        path.display(),
                        path.display()
                    ),
                )
                .exit();
        }
    }
    init_logging(cli.log_level.as_deref());
    let options = StartOptions {
        reuse_listeners: cli.reuse_listeners,
        ..StartOptions::default()
    };
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.config, options),
        Command::Check => check(cli.config),
        Command::Reload { admin, token } => reload(cli.config, admin, token),
        Command::Demo {
            listen,
            admin,
            workers,
            algorithm,
            hash_key,
        } => demo(
            &DemoArgs {
                listen: &listen,
                admin: &admin,
                workers: &workers,
                algorithm: &algorithm,
                hash_key: &hash_key,
            },
            options,
        ),
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

/// Checks a `--log-level` value: a level name (`error`, `warn`, `info`, `debug`, `trace`,
/// `off`, any case) or a tracing filter with directives (`info,ringlb=debug`). A lone word
/// that is no level (`loud`) is rejected: tracing would take it for a target name and log
/// nothing else.
fn parse_log_filter(value: &str) -> Result<String, String> {
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::EnvFilter;
    let is_directive_list = value.contains(['=', ',', '[', ':']);
    if !is_directive_list {
        value.parse::<LevelFilter>().map_err(|_| {
            format!(
                "`{value}` is not a log level (error, warn, info, debug, trace, off) \
                 nor a filter such as `info,ringlb=debug`"
            )
        })?;
    }
    EnvFilter::builder()
        .parse(value)
        .map_err(|e| format!("`{value}` is not a valid log filter: {e}"))?;
    Ok(value.to_string())
}

/// Checks the demo's `--admin` value: `off` or an `ip:port` address.
fn parse_demo_admin(value: &str) -> Result<String, String> {
    if value == "off" || value.parse::<std::net::SocketAddr>().is_ok() {
        Ok(value.to_string())
    } else {
        Err(format!(
            "`{value}` is not an `ip:port` address (IPv6 as `[::1]:9901`) nor `off`"
        ))
    }
}

/// Logs to stderr through [`StderrLog`]: a log line the OS refuses (stderr closed or full) is
/// dropped and counted, never reported with a panicking `eprintln!` from the thread that
/// logged. `level` was checked by [`parse_log_filter`]; a `RUST_LOG` that does not parse
/// falls back to `info`.
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
    Ok(Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])?)
}

fn load(path: Option<PathBuf>) -> anyhow::Result<Config> {
    let path =
        path.ok_or_else(|| anyhow::anyhow!("--config FILE is required (or try `ringlb demo`)"))?;
    Ok(Config::from_file(&path)?)
}

/// `ringlb check`: the resolved setup, then each warning (a valid setting that is probably a
/// mistake), then `config OK`.
/// `ringlb reload`: `POST /reload` to a running ringlb's admin endpoint; prints its answer.
fn reload(
    config: Option<PathBuf>,
    admin: Option<String>,
    token: Option<String>,
) -> anyhow::Result<()> {
    use std::io::Read;
    let from_file = match &config {
        Some(path) => Some(Config::from_file(path)?),
        None => None,
    };
    let addr = match (&admin, &from_file) {
        (Some(a), _) => a
            .parse::<std::net::SocketAddr>()
            .map_err(|_| anyhow::anyhow!("--admin {a}: not an ip:port address"))?,
        (None, Some(c)) => c.server.admin.ok_or_else(|| {
            anyhow::anyhow!(
                "{}: server.admin is off: no admin endpoint to ask",
                c.source
            )
        })?,
        (None, None) => "127.0.0.1:9900".parse().expect("a valid address"),
    };
    let token = token.or_else(|| from_file.and_then(|c| c.server.admin_token));
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let mut stream = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
        .map_err(|e| anyhow::anyhow!("cannot reach the admin endpoint {addr}: {e}"))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    write!(
        stream,
        "POST /reload HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(0);
    print!("{body}");
    match status {
        200 => Ok(()),
        _ => anyhow::bail!(
            "reload failed ({})",
            head.lines().next().unwrap_or("no answer")
        ),
    }
}

fn check(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = load(path)?;
    let mut out = format!("{}\n", config.describe());
    for warning in config.warnings() {
        out += &format!("warning: {warning}\n");
    }
    out += "config OK\n";
    print_stdout(&out);
    Ok(())
}

fn run(path: Option<PathBuf>, options: StartOptions) -> anyhow::Result<()> {
    let signals = handled_signals()?;
    let config = load(path)?;
    let server = Server::start_with(config, options)?;
    serve_until_signal(server, signals)
}

/// Serves until SIGTERM/SIGINT: the first one starts a graceful shutdown, a second one exits
/// at once (status 1). SIGHUP reloads the configuration file (a broken one is refused and
/// logged; the running configuration stays); SIGUSR1 reopens the access log (logrotate).
///
/// The signal thread runs supervised: if it panics, the panic is logged and a graceful
/// shutdown starts, and the process then exits non-zero, instead of serving on with signals
/// ignored.
fn serve_until_signal(server: Server, signals: Signals) -> anyhow::Result<()> {
    let handle = server.shutdown_handle();
    let reload = server.reload_handle();
    let access_log = server.access_log();
    let signal_thread_died = Arc::new(AtomicBool::new(false));
    let (died, stop) = (signal_thread_died.clone(), handle.clone());
    spawn_supervised(
        "ringlb-signals",
        move || signal_loop(signals, &handle, &reload, access_log.as_ref()),
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
fn signal_loop(
    mut signals: Signals,
    handle: &ShutdownHandle,
    reload: &ReloadHandle,
    access_log: Option<&AccessLogHandle>,
) {
    let mut stopping = false;
    for sig in signals.forever() {
        let name = signal_name(sig);
        if sig == SIGUSR1 {
            match access_log {
                Some(log) => {
                    log.reopen();
                    tracing::info!("{name}: reopening the access log");
                }
                None => tracing::info!("{name}: no access log to reopen"),
            }
        } else if sig == SIGHUP {
            if stopping {
                continue;
            }
            // The control thread logs the outcome (and why a refused file was refused).
            match reload.reload() {
                Ok(r) => {
                    tracing::info!("{name}: configuration generation {} running", r.generation)
                }
                Err(_) => tracing::warn!(
                    "{name}: reload refused; the previous configuration keeps running"
                ),
            }
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
        SIGUSR1 => "SIGUSR1",
        _ => "signal",
    }
}

/// The command-line arguments of `ringlb demo`.
struct DemoArgs<'a> {
    /// `--listen`: the proxy's address.
    listen: &'a str,
    /// `--admin`: the admin endpoint's address, or `off`.
    admin: &'a str,
    /// `--workers`: `auto` or a number of shards.
    workers: &'a str,
    /// `--algorithm`: the balancing algorithm's name.
    algorithm: &'a str,
    /// `--hash-key`: what hashing algorithms hash.
    hash_key: &'a str,
}

/// `ringlb demo`: three demo backends, the proxy in front of them and its admin endpoint;
/// prints what to try, then serves until a signal as `run` does.
fn demo(args: &DemoArgs<'_>, options: StartOptions) -> anyhow::Result<()> {
    let signals = handled_signals()?;
    let backends = DemoBackends::start(3)?;
    let workers = if args.workers == "auto" {
        "\"auto\"".to_string()
    } else {
        args.workers.to_string()
    };
    let admin = if args.admin == "off" { "" } else { args.admin };
    let peers: Vec<String> = backends
        .addrs
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect();
    // consistent_hash and maglev need a key; ip_hash brings its own.
    let algorithm = args.algorithm;
    let hash_line = if matches!(algorithm, "consistent_hash" | "maglev") {
        format!("hash_key = \"{}\"\n", args.hash_key)
    } else {
        String::new()
    };
    let text = format!(
        "[server]\nlisten = [\"{}\"]\nworkers = {workers}\nadmin = \"{admin}\"\n\n\
         [[upstream]]\nname = \"demo\"\nalgorithm = \"{algorithm}\"\n{hash_line}peers = [{}]\n",
        args.listen,
        peers.join(", ")
    );
    let config = Config::from_toml_str(&text, "<demo>")?;
    let server = Server::start_with(config, options).map_err(|e| {
        anyhow::anyhow!(
            "{e}\n(`ringlb demo --listen ADDR --admin ADDR` picks other addresses; \
             `--admin off` runs without the admin endpoint)"
        )
    })?;
    let addr = server.listen_addrs()[0];
    let shards = server.shard_count();
    let mut out = format!(
        "ringlb demo: {shards} shard(s) on {}, listening on http://{addr}/\n",
        server.driver()
    );
    for (i, a) in backends.addrs.iter().enumerate() {
        out += &format!("  demo backend {} on {a}\n", i + 1);
    }
    match server.admin_addr() {
        Some(a) => out += &format!("  admin on http://{a}/ (GET /status, GET /health)\n"),
        None => out += "  admin off\n",
    }
    out += &format!(
        "\nTry:\n\
         \x20 curl -i http://{addr}/hello          # answered by the next backend in rotation\n\
         \x20 for i in 1 2 3 4; do curl -s http://{addr}/; done\n\
         \x20 curl -s -X POST --data-binary @Cargo.toml http://{addr}/upload\n\
         \x20 wrk -t1 -c64 -d10s http://{addr}/\n"
    );
    if let Some(a) = server.admin_addr() {
        out +=
            &format!("\x20 curl -s http://{a}/status          # every peer's state and counts\n");
    }
    if shards > 1 {
        out += &format!(
            "\nThe rotation is per shard: each of the {shards} shards rotates over the backends \
             on its own,\nand the kernel spreads connections over the shards, so consecutive \
             requests on new\nconnections need not go 1, 2, 3 (`--workers 1` shows one rotation).\n"
        );
    }
    out += "\nCtrl-C stops it (a second Ctrl-C exits at once).\n";
    print_stdout(&out);
    serve_until_signal(server, signals)
}

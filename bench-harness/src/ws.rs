//! The `ws` subcommand: WebSocket echo throughput through ringlb, nginx and HAProxy.
//!
//! One echo backend (std threads, pinned to the load CPU) answers the upgrade with `101` and
//! then copies every byte back; `--connections` client threads (also on the load CPU) each
//! open one tunnel through the proxy and do echo round trips of `--message-bytes` (one
//! write, then read until all of it came back) for `--duration` seconds. The proxies do not
//! parse WebSocket frames, so the payload is raw bytes. Reported per proxy: round trips per
//! second, MiB/s each way, the proxy's CPU seconds per 10 000 round trips and its CPU
//! milliseconds per MiB relayed (both directions counted), its RSS with the tunnels open;
//! then each proxy's median CPU per MiB over the rounds and ringlb's ratio to the best peer.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::procstat::{tree_cpu_seconds, tree_rss_kib};
use crate::proxy::{ProxyKind, ProxySpec, RunningProxy};
use crate::report::median;
use crate::setup::{
    check_interrupted, free_port, install_signal_handlers, pin_current_thread, ScratchDir,
    SetupArgs,
};

/// WsArgs are the options of `ws`.
#[derive(Debug, Args)]
pub struct WsArgs {
    /// Options shared with other subcommands (binaries, CPUs, which proxies).
    #[command(flatten)]
    setup: SetupArgs,

    /// Seconds each measured run lasts.
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    duration: u64,

    /// Tunnels open at once (one client thread each).
    #[arg(long, default_value_t = 16, value_name = "N")]
    connections: u32,

    /// Bytes of each echo round trip.
    #[arg(long, default_value_t = 1024, value_name = "BYTES")]
    message_bytes: usize,

    /// Rounds; each round runs every proxy once, in the same order.
    #[arg(long, default_value_t = 1, value_name = "N")]
    rounds: u32,
}

/// Runs `ws`.
pub fn run(args: &WsArgs) -> Result<()> {
    if args.duration == 0 || args.connections == 0 || args.message_bytes == 0 || args.rounds == 0 {
        bail!("--duration, --connections, --message-bytes and --rounds must be at least 1");
    }
    install_signal_handlers();
    let setup = &args.setup;
    let tools = setup.resolve_tools()?;
    setup.check_cpus()?;
    let scratch = ScratchDir::create(setup.keep_tmp)?;
    let backend = start_echo_backend(setup.load_cpu)?;
    eprintln!(
        "echo backend: {backend} (pinned to CPU {}); {} tunnels, {}-byte round trips, {} s",
        setup.load_cpu, args.connections, args.message_bytes, args.duration
    );
    let addrs = [backend];
    let mut proxies = Vec::new();
    for (kind, program) in &tools.proxies {
        let spec = ProxySpec {
            kind: *kind,
            program,
            taskset: &tools.taskset,
            cpu: setup.proxy_cpu,
            port: free_port()?,
            backends: &addrs,
            dir: scratch.path().join(kind.name()),
            ringlb_extra: "",
            ringlb_server: "",
            ringlb_log_level: "warn",
            max_conns: 0,
            h2: false,
            ringlb_admin: "",
            tls: None,
            upgrade: true,
        };
        let mut p = RunningProxy::start(&spec)?;
        p.wait_ready(Duration::from_secs(15))?;
        eprintln!(
            "{}: ready at {}: {}",
            kind.name(),
            p.url(),
            p.command_line()
        );
        proxies.push((p, spec.port));
    }
    println!(
        "| proxy | round trips/s | MiB/s each way | proxy CPU s per 10k round trips | proxy CPU ms per MiB | proxy RSS (MiB) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    // CPU ms per MiB of each run, by proxy (in `proxies` order).
    let mut per_mib: Vec<Vec<f64>> = vec![Vec::new(); proxies.len()];
    for round in 0..args.rounds {
        for (i, (p, port)) in proxies.iter_mut().enumerate() {
            check_interrupted()?;
            let addr = SocketAddr::from(([127, 0, 0, 1], *port));
            let r = measure(addr, args, setup.load_cpu, p.pid())
                .with_context(|| format!("{} round {round}", p.kind().name()))?;
            p.check_alive()?;
            let mib = r.round_trips.max(1) as f64 * 2.0 * args.message_bytes as f64 / 1048576.0;
            let ms_per_mib = r.cpu_seconds * 1000.0 / mib;
            per_mib[i].push(ms_per_mib);
            println!(
                "| {} | {:.0} | {:.1} | {:.3} | {:.3} | {:.1} |",
                p.kind().name(),
                r.round_trips as f64 / r.seconds,
                (r.round_trips as f64 * args.message_bytes as f64) / r.seconds / 1048576.0,
                r.cpu_seconds / (r.round_trips.max(1) as f64) * 10_000.0,
                ms_per_mib,
                r.rss_kib as f64 / 1024.0,
            );
        }
    }
    let medians: Vec<(ProxyKind, f64)> = proxies
        .iter()
        .zip(&per_mib)
        .filter_map(|((p, _), v)| Some((p.kind(), median(v.iter().copied())?)))
        .collect();
    println!();
    println!("Median proxy CPU ms per MiB over {} round(s):", args.rounds);
    for (kind, m) in &medians {
        println!("  {:<8} {m:.3}", kind.name());
    }
    let ours = medians.iter().find(|(k, _)| *k == ProxyKind::Ringlb);
    let best_peer = medians
        .iter()
        .filter(|(k, _)| *k != ProxyKind::Ringlb)
        .min_by(|a, b| a.1.total_cmp(&b.1));
    if let (Some((_, ours)), Some((peer, best))) = (ours, best_peer) {
        println!(
            "  ringlb / best peer ({}): {:.2}x",
            peer.name(),
            ours / best
        );
    }
    Ok(())
}

/// What one measured run gave.
struct Measured {
    round_trips: u64,
    seconds: f64,
    cpu_seconds: f64,
    rss_kib: u64,
}

/// Opens the tunnels, runs the echo loops for the duration, and reads the proxy's CPU time.
fn measure(proxy: SocketAddr, args: &WsArgs, cpu: usize, pid: u32) -> Result<Measured> {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut streams = Vec::new();
    for _ in 0..args.connections {
        streams.push(handshake(proxy)?);
    }
    let rss_kib = tree_rss_kib(pid);
    let cpu_before = tree_cpu_seconds(pid);
    let started = Instant::now();
    let threads: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            let (stop, count) = (stop.clone(), count.clone());
            let len = args.message_bytes;
            std::thread::spawn(move || -> std::io::Result<()> {
                let _ = pin_current_thread(cpu);
                let msg: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let mut back = vec![0u8; len];
                while !stop.load(Ordering::Relaxed) {
                    s.write_all(&msg)?;
                    s.read_exact(&mut back)?;
                    count.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(args.duration));
    stop.store(true, Ordering::Relaxed);
    let mut failed = 0;
    for t in threads {
        if !matches!(t.join(), Ok(Ok(()))) {
            failed += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = tree_cpu_seconds(pid) - cpu_before;
    if failed > 0 {
        bail!("{failed} tunnels failed during the run");
    }
    Ok(Measured {
        round_trips: count.load(Ordering::Relaxed),
        seconds,
        cpu_seconds,
        rss_kib,
    })
}

/// Connects through the proxy and completes the upgrade handshake.
fn handshake(proxy: SocketAddr) -> Result<TcpStream> {
    let mut s = TcpStream::connect(proxy).context("connect to the proxy")?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )?;
    let head = read_head(&mut s)?;
    if !head.starts_with(b"HTTP/1.1 101") {
        bail!(
            "the proxy answered the upgrade with {:?}",
            String::from_utf8_lossy(&head)
        );
    }
    Ok(s)
}

/// Reads an HTTP head byte by byte (nothing after it is consumed).
fn read_head(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(b[0]);
    }
    Ok(head)
}

/// Starts the echo backend: plain requests get `200 ok` (keep-alive, for the readiness
/// probe), an upgrade gets `101` and then every byte back.
fn start_echo_backend(cpu: usize) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        let _ = pin_current_thread(cpu);
        for s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = pin_current_thread(cpu);
                let _ = serve(s);
            });
        }
    });
    Ok(addr)
}

fn serve(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    loop {
        let head = read_head(&mut s)?;
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        if !text.contains("\r\nupgrade:") {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")?;
            continue;
        }
        s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        )?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            s.write_all(&buf[..n])?;
        }
    }
}

//! The `idle` subcommand: what idle keep-alive clients cost each proxy.
//!
//! For each proxy in turn (only the one under test is up): start it, let it settle, read its
//! RSS and its CPU time over `--idle-secs` with no client at all (the proxy alone, idle); then
//! open N keep-alive client connections from the harness (plain blocking std sockets, one
//! after another: connect, one `GET /`, read the whole response, keep the socket), read the
//! RSS again, and the CPU time over another `--idle-secs` while all N sit idle; finally count
//! how many of them the proxy still holds open. Prints, per proxy: RSS growth per idle client
//! in bytes, idle CPU in µs per 10 s alone and with the clients, and ringlb's ratios.
//!
//! CPU time comes from the scheduler's ns counters (`/proc/<pid>/task/*/schedstat`, see
//! [`tree_cpu_ns`]) rather than the 10 ms ticks of `stat`: an idle proxy uses far less than a
//! tick per second. RSS is `VmRSS` summed over the proxy's process tree.
//!
//! N is capped by the open-files limit (raised from soft to hard first) at (limit − 256) / 2:
//! the harness and ringlb or nginx hold one descriptor per idle client, but HAProxy reserves
//! two per connection (`maxconn`) and refuses to start when the limit does not allow that, and
//! every proxy must get the same N.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;

use crate::backend::Backend;
use crate::lab::{cap_connections, raise_nofile_limit, Lab, Metric, SideBySide};
use crate::procstat::{tree_cpu_ns, tree_rss_kib};
use crate::setup::{check_interrupted, SetupArgs};

/// IdleArgs are the options of `idle`.
#[derive(Debug, Args)]
pub struct IdleArgs {
    /// Idle keep-alive client connections to open against each proxy, capped by the
    /// open-files limit.
    #[arg(default_value_t = 10_000, value_name = "N")]
    clients: u32,

    /// Options shared with other subcommands (binaries, CPUs, which proxies).
    #[command(flatten)]
    setup: SetupArgs,

    /// Seconds of idleness over which CPU time is measured (alone, then with the clients);
    /// reported scaled to µs per 10 s.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    idle_secs: u64,

    /// Milliseconds to wait after the start and after opening the clients, before reading
    /// RSS and starting a CPU window.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    settle_ms: u64,

    /// Print the tables as Markdown.
    #[arg(long)]
    markdown: bool,
}

/// IdleRow is one proxy's measurements.
#[derive(Debug, Clone, Default, PartialEq)]
struct IdleRow {
    /// Clients asked for.
    clients: u32,
    /// Clients whose request got a full 200 response.
    opened: u32,
    /// Clients still open (not closed by the proxy) after the idle window.
    still_open: u32,
    /// RSS after the start, before any client, KiB.
    rss_before_kib: u64,
    /// RSS with all clients open, KiB.
    rss_after_kib: u64,
    /// CPU ns over the idle window with no client.
    cpu_alone_ns: u64,
    /// CPU ns over the idle window with the clients open.
    cpu_clients_ns: u64,
    /// Length of a window, seconds.
    window_s: f64,
}

impl IdleRow {
    /// RSS growth per opened client, bytes (may be negative if the kernel reclaimed pages).
    fn rss_bytes_per_client(&self) -> Option<f64> {
        (self.opened > 0).then(|| {
            (self.rss_after_kib as f64 - self.rss_before_kib as f64) * 1024.0 / self.opened as f64
        })
    }

    /// CPU ns of a window scaled to µs per 10 s.
    fn per_10s_us(&self, ns: u64) -> Option<f64> {
        (self.window_s > 0.0).then(|| ns as f64 / 1e3 * 10.0 / self.window_s)
    }
}

/// Checks the options; returns the client count after the fd cap (and why it was capped).
fn plan(args: &IdleArgs, fd_limit: u64) -> Result<(u32, Option<String>)> {
    if args.clients == 0 || args.idle_secs == 0 {
        bail!("N and --idle-secs must be at least 1");
    }
    Ok(cap_connections(args.clients, fd_limit, 2))
}

/// Runs `idle`.
pub fn run(args: &IdleArgs) -> Result<()> {
    let fd_limit = raise_nofile_limit();
    let (n, why) = plan(args, fd_limit)?;
    if let Some(why) = &why {
        eprintln!("note: {why}");
    }
    let lab = Lab::new(&args.setup)?;
    let backends = lab.backends(args.setup.body_bytes)?;
    let addrs: Vec<_> = backends.iter().map(Backend::addr).collect();
    let window = Duration::from_secs(args.idle_secs);
    let settle = Duration::from_millis(args.settle_ms);
    let mut rows = Vec::new();
    for i in 0..lab.tools.proxies.len() {
        check_interrupted()?;
        let mut p = lab.start(i, &addrs, n)?;
        let name = p.kind().name();
        let addr = SocketAddr::from(([127, 0, 0, 1], port_of(&p.url())));
        std::thread::sleep(settle);
        let mut row = IdleRow {
            clients: n,
            rss_before_kib: tree_rss_kib(p.pid()),
            ..IdleRow::default()
        };
        eprintln!("{name}: idle alone for {} s", args.idle_secs);
        let (ns, secs) = cpu_over(p.pid(), window)?;
        row.cpu_alone_ns = ns;
        row.window_s = secs;
        let started = Instant::now();
        let clients = open_clients(addr, n)?;
        row.opened = clients.len() as u32;
        eprintln!(
            "{name}: {} of {n} clients open after one request each ({:.1} s); idle for {} s",
            row.opened,
            started.elapsed().as_secs_f64(),
            args.idle_secs
        );
        std::thread::sleep(settle);
        row.rss_after_kib = tree_rss_kib(p.pid());
        let (ns, _) = cpu_over(p.pid(), window)?;
        row.cpu_clients_ns = ns;
        row.still_open = count_open(&clients);
        p.check_alive()?;
        eprintln!("  {}", one_line(&row));
        drop(clients);
        rows.push((name, row));
        // `p` drops here: the proxy stops before the next one starts.
    }
    drop(backends);
    println!();
    println!(
        "idle: {n} keep-alive clients per proxy, one request each, then idle; CPU over {} s \
         windows scaled to µs per 10 s",
        args.idle_secs
    );
    if let Some(why) = &why {
        println!("note: {why}");
    }
    println!();
    print!("{}", table(&rows).render(args.markdown));
    Ok(())
}

/// The proxy's CPU ns over `window` (and the window's real length in seconds).
fn cpu_over(pid: u32, window: Duration) -> Result<(u64, f64)> {
    let t0 = Instant::now();
    let before = tree_cpu_ns(pid);
    let deadline = t0 + window;
    while Instant::now() < deadline {
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(50).min(deadline - Instant::now()));
    }
    let after = tree_cpu_ns(pid);
    Ok((after.saturating_sub(before), t0.elapsed().as_secs_f64()))
}

/// The port of `http://127.0.0.1:PORT/`.
fn port_of(url: &str) -> u16 {
    url.trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// Opens up to `n` keep-alive connections to `addr`, each sending one `GET /` and reading the
/// whole response; returns the ones that got a 200. Stops early (with what it has) after 20
/// failures in a row, e.g. when the proxy stops accepting more connections.
fn open_clients(addr: SocketAddr, n: u32) -> Result<Vec<TcpStream>> {
    let mut open = Vec::with_capacity(n as usize);
    let mut failures_in_a_row = 0;
    let mut first_error = None;
    for _ in 0..n {
        if open.len() % 1000 == 0 {
            check_interrupted()?;
        }
        match one_request(addr) {
            Ok(s) => {
                open.push(s);
                failures_in_a_row = 0;
            }
            Err(e) => {
                first_error.get_or_insert(e.to_string());
                failures_in_a_row += 1;
                if failures_in_a_row >= 20 {
                    break;
                }
            }
        }
    }
    if open.len() < n as usize {
        eprintln!(
            "warning: only {} of {n} clients got a response (first error: {})",
            open.len(),
            first_error.unwrap_or_default()
        );
    }
    Ok(open)
}

/// Connects, sends one keep-alive `GET /`, reads the response head and its
/// `Content-Length` body; fails unless the status is 200.
fn one_request(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_nodelay(true)?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(need) = response_len(&buf)? {
            if buf.len() >= need {
                break;
            }
        }
        let k = s.read(&mut chunk)?;
        if k == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before the whole response",
            ));
        }
        buf.extend_from_slice(&chunk[..k]);
    }
    if !buf.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other(format!(
            "status line {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(20)])
        )));
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Once the head is complete: head length + `Content-Length`; `None` while it is not.
fn response_len(buf: &[u8]) -> std::io::Result<Option<usize>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .ok_or_else(|| std::io::Error::other("response without Content-Length"))?;
    Ok(Some(end + 4 + len))
}

/// How many of the (nonblocking) clients are still open: a peek that would block means the
/// proxy has neither closed the connection nor sent anything.
fn count_open(clients: &[TcpStream]) -> u32 {
    let mut byte = [0u8; 1];
    clients
        .iter()
        .filter(
            |s| matches!(s.peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        )
        .count() as u32
}

/// A progress line for one proxy.
fn one_line(r: &IdleRow) -> String {
    format!(
        "RSS {} → {} KiB ({:.0} B/client), CPU alone {:.0} µs/10 s, with {} clients \
         {:.0} µs/10 s, {} still open",
        r.rss_before_kib,
        r.rss_after_kib,
        r.rss_bytes_per_client().unwrap_or(0.0),
        r.per_10s_us(r.cpu_alone_ns).unwrap_or(0.0),
        r.opened,
        r.per_10s_us(r.cpu_clients_ns).unwrap_or(0.0),
        r.still_open
    )
}

/// The side-by-side table.
fn table(rows: &[(&str, IdleRow)]) -> SideBySide {
    let m = |name, decimals, lower_is_better| Metric {
        name,
        decimals,
        lower_is_better,
    };
    let mut t = SideBySide::new(&[
        m("opened", 0, false),
        m("still open", 0, false),
        m("RSS before MiB", 1, true),
        m("RSS after MiB", 1, true),
        m("RSS B/client", 0, true),
        m("CPU alone µs/10s", 0, true),
        m("CPU w/ clients µs/10s", 0, true),
    ]);
    for (name, r) in rows {
        t.row(
            name,
            vec![
                Some(r.opened as f64),
                Some(r.still_open as f64),
                Some(r.rss_before_kib as f64 / 1024.0),
                Some(r.rss_after_kib as f64 / 1024.0),
                r.rss_bytes_per_client(),
                r.per_10s_us(r.cpu_alone_ns),
                r.per_10s_us(r.cpu_clients_ns),
            ],
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: IdleArgs,
    }

    fn parse(argv: &[&str]) -> IdleArgs {
        Cli::try_parse_from(std::iter::once("idle").chain(argv.iter().copied()))
            .expect("parses")
            .args
    }

    #[test]
    fn n_is_validated_and_capped_by_the_fd_limit() {
        assert_eq!(parse(&[]).clients, 10_000);
        assert_eq!(plan(&parse(&["500"]), 20_000).expect("ok"), (500, None));
        let (n, why) = plan(&parse(&["50000"]), 20_000).expect("ok");
        assert_eq!(n, (20_000 - 256) / 2);
        assert!(why.expect("capped").contains("capped 50000"));
        assert!(plan(&parse(&["0"]), 20_000).is_err());
        assert!(plan(&parse(&["10", "--idle-secs", "0"]), 20_000).is_err());
    }

    #[test]
    fn growth_per_client_and_cpu_per_10s() {
        let r = IdleRow {
            clients: 1000,
            opened: 1000,
            still_open: 1000,
            rss_before_kib: 10_000,
            rss_after_kib: 12_000,
            cpu_alone_ns: 500_000,
            cpu_clients_ns: 2_000_000,
            window_s: 5.0,
        };
        assert_eq!(r.rss_bytes_per_client(), Some(2048.0));
        // 0.5 ms in 5 s = 1000 µs per 10 s.
        assert_eq!(r.per_10s_us(r.cpu_alone_ns), Some(1000.0));
        assert_eq!(r.per_10s_us(r.cpu_clients_ns), Some(4000.0));
        let text = table(&[("ringlb", r.clone()), ("nginx", r)]).render(false);
        assert!(text.contains("RSS B/client"), "{text}");
        assert!(text.contains("ringlb/nginx"), "{text}");
        assert_eq!(IdleRow::default().rss_bytes_per_client(), None);
    }

    #[test]
    fn response_length_needs_a_full_head() {
        assert_eq!(response_len(b"HTTP/1.1 200 OK\r\n").expect("ok"), None);
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab";
        assert_eq!(response_len(head).expect("ok"), Some(head.len() - 2 + 5));
        assert!(response_len(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert_eq!(port_of("http://127.0.0.1:8080/"), 8080);
    }

    #[test]
    fn clients_stay_open_against_a_keep_alive_backend() {
        let b = Backend::start("idle-test", 0, 100).expect("backend");
        let clients = open_clients(b.addr(), 20).expect("open");
        assert_eq!(clients.len(), 20);
        assert_eq!(count_open(&clients), 20);
        drop(b);
        // A killed backend closes its connections: reads now see EOF, not WouldBlock.
        let deadline = Instant::now() + Duration::from_secs(5);
        while count_open(&clients) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(count_open(&clients), 0);
    }
}

//! The real `ringlb` binary: graceful SIGTERM and SIGINT, an expiring shutdown timeout,
//! `--log-level` (and its rejection of nonsense), memory bounded while streaming huge bodies,
//! `ringlb check` (its warnings, and the README's complete example), and `ringlb demo` (its
//! rotation, its admin endpoint, its rejection of `--config`).

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// HUGE is the size of the body streamed each way in the memory test.
const HUGE: u64 = 1 << 30;

/// How much the proxy's peak and current RSS may grow while streaming HUGE bytes each way.
const RSS_SLACK_KB: u64 = 16 * 1024;

/// The first SIGTERM or SIGINT: new connections are refused, the in-flight request finishes,
/// an idle keep-alive connection is closed, and the process exits 0 without waiting out the
/// shutdown timeout. Logged at info: `SIGxxx: shutting down`.
fn first_signal_finishes_in_flight_request_then_exits_zero(sig: i32, name: &str) {
    let b = Backend::with_handler("a", |r| {
        if r.path() == "/slow" {
            Reply::ok("slow done").delay(Duration::from_secs(1))
        } else {
            Reply::ok("fast")
        }
    });
    let mut p = ProxyProcess::spawn_with_log_level(
        &ProxyConfig::with_backends(&[&b])
            .shutdown_timeout_ms(30_000)
            .toml(),
        "info",
    );
    // The proxy works; this client then stays idle on its keep-alive connection.
    let mut idle = Client::connect(p.addr);
    assert_eq!(idle.roundtrip(&get("/")).body_str(), "fast");

    let mut inflight = Client::connect(p.addr);
    inflight.send(&get("/slow"));
    b.wait_heads(2, Duration::from_secs(10));
    let t = Instant::now();
    p.signal(sig);

    // New connections are refused soon after the signal (while /slow is still in flight).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect_timeout(&p.addr, Duration::from_secs(1)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ => {
                assert!(
                    Instant::now() < deadline,
                    "still accepting connections 5 s after {name}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    let r = inflight.response();
    assert_eq!(r.status, 200, "{}", show(&r.head));
    assert_eq!(r.body_str(), "slow done");

    // The idle keep-alive connection is closed, not kept until the shutdown timeout.
    idle.expect_closed();

    let st = p.wait_exit(Duration::from_secs(15)).unwrap_or_else(|| {
        panic!(
            "ringlb still running 15 s after {name}; log:\n{}",
            p.log_text()
        )
    });
    assert_eq!(
        st.code(),
        Some(0),
        "exit status {st}; log:\n{}",
        p.log_text()
    );
    // The in-flight request needs ~1 s; an idle connection must not hold the process until
    // the 30 s shutdown timeout.
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "exit took {:?} after {name} (in-flight request: 1 s, shutdown_timeout_ms = 30000)",
        t.elapsed()
    );
    let log = p.log_text();
    assert!(
        log.contains(&format!(
            "{name}: shutting down: finishing in-flight requests"
        )),
        "{log}"
    );
    let refused = TcpStream::connect_timeout(&p.addr, Duration::from_secs(1));
    assert!(refused.is_err(), "connect after exit succeeded");
}

/// Downloads `len` pattern bytes from `path`, checking them on the fly.
#[test]
fn sigterm_finishes_in_flight_request_then_exits_zero() {
    first_signal_finishes_in_flight_request_then_exits_zero(libc::SIGTERM, "SIGTERM");
}

#[test]
fn sigint_as_the_first_signal_finishes_in_flight_request_then_exits_zero() {
    first_signal_finishes_in_flight_request_then_exits_zero(libc::SIGINT, "SIGINT");
}

/// `shutdown_timeout_ms` expires: a request still in flight after it does not hold the
/// process; the client's connection is closed without an answer and ringlb exits 0 at about
/// the timeout.
#[test]
fn expiring_shutdown_timeout_closes_the_in_flight_request_and_exits() {
    let b = Backend::with_handler("a", |_| {
        Reply::ok("too late").delay(Duration::from_secs(20))
    });
    let mut p = ProxyConfig::with_backends(&[&b])
        .shutdown_timeout_ms(500)
        .spawn_binary();
    let mut inflight = Client::connect(p.addr);
    inflight.send(&get("/slow"));
    b.wait_heads(1, Duration::from_secs(10));
    let t = Instant::now();
    p.signal(libc::SIGTERM);
    let st = p.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| {
        panic!(
            "ringlb still running 10 s after SIGTERM with shutdown_timeout_ms = 500; log:\n{}",
            p.log_text()
        )
    });
    let took = t.elapsed();
    assert_eq!(
        st.code(),
        Some(0),
        "exit status {st}; log:\n{}",
        p.log_text()
    );
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(2500),
        "exit {took:?} after SIGTERM (shutdown_timeout_ms = 500, the request needs 20 s)"
    );
    match inflight.try_response(false) {
        Err(ReadErr::Eof) => {}
        Err(ReadErr::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the in-flight client got {other:?}, not a closed connection"),
    }
}

/// `--log-level` sets the filter: at `info` the start, the signal and the stop are logged; at
/// `warn` none of them are, while a warning (a SIGHUP reload of a broken file) still is.
#[test]
fn log_level_sets_the_log_filter() {
    let b = Backend::start("a");
    for level in ["info", "warn"] {
        let mut p =
            ProxyProcess::spawn_with_log_level(&ProxyConfig::with_backends(&[&b]).toml(), level);
        std::fs::write(&p.config, "[server\n").expect("break the config file");
        p.signal(libc::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !p.log_text().contains("SIGHUP: reload refused") {
            assert!(
                Instant::now() < deadline,
                "--log-level {level}: no SIGHUP warning within 10 s; log:\n{}",
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        p.signal(libc::SIGTERM);
        let st = p
            .wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("--log-level {level}: still running 10 s after SIGTERM"));
        assert_eq!(st.code(), Some(0));
        let log = p.log_text();
        for info_line in [
            "ringlb started",
            "SIGTERM: shutting down: finishing in-flight requests",
            "stopped",
        ] {
            assert_eq!(
                log.contains(info_line),
                level == "info",
                "--log-level {level}: {info_line:?} in the log:\n{log}"
            );
        }
    }
}

fn download(c: &mut Client, path: &str, len: u64) {
    c.send(&get(path));
    let mut check = PatternCheck::default();
    let r = c
        .response_streamed(false, &mut |d| check.update(d))
        .unwrap_or_else(|e| panic!("GET {path}: {e} after {} body bytes", check.len));
    assert_eq!(r.status, 200, "{}", show(&r.head));
    let framing = if path.ends_with("-chunked") {
        Framing::Chunked
    } else {
        Framing::Length
    };
    assert_eq!(r.framing, framing);
    assert_eq!(check.len, len);
    assert_eq!(check.first_mismatch, None, "download corrupted");
}

/// Uploads `len` pattern bytes with Content-Length (or chunked in pieces of `chunk`); the
/// backend checks them on the fly.
fn upload(c: &mut Client, len: u64, chunk: Option<usize>) {
    let framing = match chunk {
        Some(_) => "Transfer-Encoding: chunked".to_string(),
        None => format!("Content-Length: {len}"),
    };
    c.send(format!("POST /up HTTP/1.1\r\nHost: t\r\n{framing}\r\n\r\n").as_bytes());
    write_pattern(c.stream(), len, chunk).expect("write upload body");
    let r = c.response();
    assert_eq!(r.status, 200, "{}", show(&r.head));
    assert_eq!(
        r.body_str(),
        format!("{len} true"),
        "backend saw length and pattern match"
    );
}

#[test]
fn huge_bodies_stream_without_growing_memory() {
    let b = Backend::with_handler("a", |r| match (r.method.as_str(), r.path()) {
        ("GET", "/huge") => Reply::pattern(HUGE, None),
        ("GET", "/huge-chunked") => Reply::pattern(HUGE, Some(64 * 1024)),
        ("GET", "/warm") => Reply::pattern(8 << 20, None),
        _ => Reply::ok(format!("{} {}", r.body_len, r.body_is_pattern)),
    });
    let p = ProxyConfig::with_backends(&[&b]).spawn_binary();
    let mut c = Client::connect(p.addr);

    // Warm up buffers, the pool and the allocator with a few MiB each way.
    download(&mut c, "/warm", 8 << 20);
    upload(&mut c, 8 << 20, None);
    upload(&mut c, 8 << 20, Some(64 * 1024));
    let hwm0 = p.status_kb("VmHWM");
    let rss0 = p.status_kb("VmRSS");

    let timed = |what: &str, f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        eprintln!("{what} of {} MiB took {:?}", HUGE >> 20, t.elapsed());
    };
    timed("download", &mut || download(&mut c, "/huge", HUGE));
    timed("chunked download", &mut || {
        download(&mut c, "/huge-chunked", HUGE)
    });
    timed("upload", &mut || upload(&mut c, HUGE, None));
    timed("chunked upload", &mut || {
        upload(&mut c, HUGE, Some(64 * 1024))
    });
    eprintln!("VmHWM {hwm0} kB, VmRSS {rss0} kB before");

    let hwm1 = p.status_kb("VmHWM");
    let rss1 = p.status_kb("VmRSS");
    eprintln!("VmHWM {hwm1} kB, VmRSS {rss1} kB after");
    assert!(
        hwm1 <= hwm0 + RSS_SLACK_KB,
        "VmHWM grew from {hwm0} kB to {hwm1} kB while streaming {} MiB each way",
        HUGE >> 20
    );
    assert!(
        rss1 <= rss0 + RSS_SLACK_KB,
        "VmRSS grew from {rss0} kB to {rss1} kB",
    );
    assert_eq!(b.accepts(), 1);
}

#[test]
fn check_prints_the_upstream_and_exits_zero() {
    let b = Backend::start("a");
    let cfg = ProxyConfig::new()
        .upstream("checked-upstream", "round_robin", &[peer(b.addr())])
        .toml();
    let path = write_config(&cfg);
    let out = run_binary(&["check", "--config", path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ringlb check failed: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    assert!(
        stdout.contains("checked-upstream"),
        "stdout does not name the upstream: {stdout}"
    );
    let _ = std::fs::remove_file(path);
}

#[test]
fn check_rejects_unknown_key_naming_file_and_key() {
    let b = Backend::start("a");
    let cfg = ProxyConfig::with_backends(&[&b])
        .toml()
        .replace("[timeouts]\n", "[timeouts]\nbogus_timeout_knob = 5\n");
    let path = write_config(&cfg);
    let out = run_binary(&["check", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "check accepted an unknown key:\n{cfg}"
    );
    let file = path.to_str().unwrap();
    assert!(
        stderr.contains(file),
        "stderr does not name {file}: {stderr}"
    );
    assert!(
        stderr.contains("bogus_timeout_knob"),
        "stderr does not name the key: {stderr}"
    );
    let _ = std::fs::remove_file(path);
}

/// The first ```toml block after "A complete example:" in README.md.
fn readme_complete_example() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let after = readme
        .split_once("A complete example:")
        .expect("README.md has no \"A complete example:\"")
        .1;
    let block = after
        .split_once("```toml\n")
        .expect("no ```toml block after \"A complete example:\"")
        .1;
    block
        .split_once("\n```")
        .expect("the example's ```toml block does not end")
        .0
        .to_string()
}

/// The README's complete example passes `ringlb check` on any machine (no CPU it names may be
/// missing, every host name resolves), without warnings.
#[test]
fn readme_complete_example_passes_check() {
    let example = readme_complete_example();
    assert!(
        example.contains("[[upstream]]") && example.contains("[[route]]"),
        "not the complete example:\n{example}"
    );
    let path = write_config(&example);
    let out = run_binary(&["check", "--config", path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ringlb check of README.md's complete example failed: {}\nstderr: {stderr}\n\
         --- example ---\n{example}",
        out.status
    );
    assert!(stdout.ends_with("config OK\n"), "{stdout}");
    assert!(!stdout.contains("warning:"), "{stdout}");
    let _ = std::fs::remove_file(path);
}

/// `workers` above the CPU count and an upstream whose every peer has `weight = 0` are valid
/// but warned about: `check` prints each warning (file, key, reason) before `config OK` and
/// exits 0; the proxy logs them at warn when it starts, and runs.
#[test]
fn check_prints_warnings_and_the_proxy_logs_them_at_start() {
    let b = Backend::start("a");
    let cpus = ringlb::config::allowed_cpus().len();
    let toml = ProxyConfig::new()
        .workers(cpus + 1)
        .upstream("drained", "round_robin", &[peer(b.addr()).weight(0)])
        .toml();
    let path = write_config(&toml);
    let file = path.to_str().unwrap();
    let out = run_binary(&["check", "--config", file]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}: {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let workers = format!(
        "{file}: key `server.workers`: {} shards on {cpus} cpu(s) (this process's allowed set ",
        cpus + 1
    );
    let weights = format!(
        "{file}: key `upstream[0].peers`: every peer has `weight = 0` (drained): upstream \
         \"drained\" gets no traffic"
    );
    for want in [&workers, &weights] {
        assert!(
            stdout.contains(&format!("\nwarning: {want}")),
            "missing warning {want:?} in:\n{stdout}"
        );
    }
    assert!(stdout.ends_with("config OK\n"), "{stdout}");
    let _ = std::fs::remove_file(&path);

    let mut p = ProxyProcess::spawn(&toml);
    let log = p.log_text();
    let config = p.config.display().to_string();
    for want in [&workers, &weights] {
        let want = want.replace(file, &config);
        assert!(log.contains(&want), "the start log lacks {want:?}:\n{log}");
        assert_eq!(
            log.matches(&want).count(),
            1,
            "logged more than once:\n{log}"
        );
    }
    // Drained: ringlb answers 503 itself.
    let r = Client::connect(p.addr).roundtrip(&get("/"));
    assert_eq!(r.status, 503, "{}", show(&r.head));
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(10)).is_some());
}

/// A `--log-level` that is neither a level nor a filter is rejected before anything runs:
/// the parse error on stderr, exit status 2. A filter with directives is accepted.
#[test]
fn invalid_log_level_is_rejected_with_status_2() {
    let b = Backend::start("a");
    let path = write_config(&ProxyConfig::with_backends(&[&b]).toml());
    let file = path.to_str().unwrap();
    for (arg, value, why) in [
        ("--log-level=loud", "loud", "`loud` is not a log level"),
        (
            "--log-level=info,ringlb=loud",
            "info,ringlb=loud",
            "is not a valid log filter",
        ),
    ] {
        let out = run_binary(&[arg, "check", "--config", file]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{arg}: {}\n{stderr}",
            out.status
        );
        assert!(
            stderr.contains(&format!(
                "invalid value '{value}' for '--log-level <LEVEL>'"
            )) && stderr.contains(why),
            "{arg}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{arg}: check ran anyway");
    }
    let out = run_binary(&[
        "--log-level",
        "warn,ringlb=debug",
        "check",
        "--config",
        file,
    ]);
    assert!(
        out.status.success(),
        "a valid filter was rejected: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(path);
}

/// `ringlb demo --config FILE` is an error (the demo would ignore the file), exit status 2,
/// and nothing starts.
#[test]
fn demo_rejects_config() {
    for args in [
        &["demo", "--config", "ringlb.toml"][..],
        &["--config", "ringlb.toml", "demo", "--listen", "127.0.0.1:0"][..],
    ] {
        let out = run_binary_within(args, Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}\n{stderr}",
            out.status
        );
        assert!(
            stderr.contains(
                "`ringlb demo` builds its own config and cannot use --config ringlb.toml"
            ),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: the demo started");
    }
}

/// A running `ringlb demo` (killed on drop) and what it printed up to its "Ctrl-C" line.
struct Demo {
    child: Child,
    /// Everything it printed before serving.
    printed: String,
    /// The proxy's address, from `listening on http://ADDR/`.
    addr: SocketAddr,
}

impl Demo {
    /// Runs `ringlb demo ARGS… --log-level warn` and reads its greeting (20 s at most).
    fn start(args: &[&str]) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringlb"))
            .arg("demo")
            .args(args)
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ringlb demo");
        let stdout = child.stdout.take().expect("stdout");
        // Read on another thread, so a silent child fails the test instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut printed = String::new();
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                printed += &line;
                printed.push('\n');
                if line.starts_with("Ctrl-C stops it") {
                    break;
                }
            }
            let _ = tx.send(printed);
            // Keep the pipe open (and drained) while the demo runs.
            for _ in lines {}
        });
        let mut demo = Demo {
            child,
            printed: String::new(),
            addr: "0.0.0.0:0".parse().unwrap(),
        };
        demo.printed = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("ringlb demo printed nothing within 20 s");
        let addr = demo
            .printed
            .split("listening on http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("no `listening on http://` in:\n{}", demo.printed));
        demo.addr = addr.parse().expect("listen address");
        demo
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// The demo runs one shard by default, so "the next backend in rotation" is exactly that:
/// six requests, each on a new connection, go to demo backends 1, 2, 3, 1, 2, 3. With more
/// shards the demo says that the rotation is per shard.
#[test]
fn demo_by_default_rotates_one_shard_through_the_backends_in_order() {
    let demo = Demo::start(&["--listen", "127.0.0.1:0", "--admin", "off"]);
    assert!(
        demo.printed.starts_with("ringlb demo: 1 shard(s) on "),
        "{}",
        demo.printed
    );
    assert!(!demo.printed.contains("per shard"), "{}", demo.printed);
    let got: Vec<String> = (0..6)
        .map(|_| {
            let r = Client::connect(demo.addr).roundtrip(&get("/"));
            assert_eq!(r.status, 200, "{}", show(&r.head));
            r.header("X-Backend").unwrap_or("none").to_string()
        })
        .collect();
    assert_eq!(
        got,
        ["demo-1", "demo-2", "demo-3", "demo-1", "demo-2", "demo-3"],
        "printed:\n{}",
        demo.printed
    );
    drop(demo);

    let two = Demo::start(&[
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "off",
        "--workers",
        "2",
    ]);
    assert!(
        two.printed.starts_with("ringlb demo: 2 shard(s) on ")
            && two
                .printed
                .contains("The rotation is per shard: each of the 2 shards"),
        "{}",
        two.printed
    );
}

/// The demo serves the admin endpoint where `--admin` says (127.0.0.1:9901 by default, as
/// `--help` shows: the test does not bind a fixed port), prints its URL, and answers
/// `GET /status` (JSON naming the demo group and its backends) and `GET /health`.
#[test]
fn demo_serves_the_admin_endpoint() {
    let help = run_binary(&["demo", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    for want in ["[default: 127.0.0.1:9901]", "[default: 1]"] {
        assert!(
            help.contains(want),
            "`ringlb demo --help` lacks {want}:\n{help}"
        );
    }
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let demo = Demo::start(&["--listen", "127.0.0.1:0", "--admin", &admin.to_string()]);
    assert!(
        demo.printed.contains(&format!(
            "  admin on http://{admin}/ (GET /status, GET /health)\n"
        )),
        "{}",
        demo.printed
    );
    assert!(
        demo.printed
            .contains(&format!("curl -s http://{admin}/status")),
        "{}",
        demo.printed
    );
    // Traffic first, so /status has counts to show.
    let r = Client::connect(demo.addr).roundtrip(&get("/hello"));
    assert_eq!(r.status, 200, "{}", show(&r.head));

    let health = Client::connect(admin).roundtrip(&get("/health"));
    assert_eq!(health.status, 200, "{}", show(&health.head));
    assert_eq!(health.body_str(), "ok\n");
    let status = Client::connect(admin).roundtrip(&get("/status"));
    assert_eq!(status.status, 200, "{}", show(&status.head));
    assert_eq!(status.header("Content-Type"), Some("application/json"));
    let body = status.body_str();
    let json: serde_json::Value = serde_json::from_str(&body).expect("/status is JSON");
    assert!(
        body.contains("\"demo\""),
        "no demo group in /status:\n{json:#}"
    );
    for backend in demo
        .printed
        .lines()
        .filter_map(|l| l.trim().strip_prefix("demo backend "))
    {
        let addr = backend
            .split(" on ")
            .nth(1)
            .expect("demo backend N on ADDR");
        assert!(
            body.contains(addr),
            "/status does not list {addr}:\n{json:#}"
        );
    }
}

/// `ringlb reload --config FILE` asks the running proxy (at the file's admin address, with its
/// token) to reload, prints the answer and exits 0; a refused reload exits 1 with the reason.
#[test]
fn reload_command_reloads_a_running_proxy_through_its_admin_endpoint() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let admin = format!("127.0.0.1:{}", free_port());
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = |backend: &Backend| {
        ProxyConfig::with_backends(&[backend])
            .toml()
            .replace(
                "admin = \"\"",
                &format!("admin = \"{admin}\"\nadmin_token = \"tok3n\""),
            )
            .replace("127.0.0.1:0", &listen.to_string())
    };
    let p = ProxyProcess::spawn(&text(&a));
    let get_body = |path: &str| Client::connect(listen).roundtrip(&get(path)).body_str();
    assert_eq!(get_body("/"), "a");
    std::fs::write(&p.config, text(&b)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .arg("--config")
        .arg(&p.config)
        .arg("reload")
        .output()
        .expect("run ringlb reload");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("the answer is JSON");
    assert_eq!(v["ok"], true, "{stdout}");
    assert_eq!(get_body("/"), "b");

    // Without the token the endpoint refuses.
    let out = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["reload", "--admin", &admin])
        .env_remove("RINGLB_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{out:?}"
    );

    // A broken file: exit 1, the reason printed, still serving b.
    std::fs::write(&p.config, "[server\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["reload", "--admin", &admin, "--token", "tok3n"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&p.config.display().to_string()), "{stdout}");
    assert_eq!(get_body("/"), "b");
}

//! The real `ringlb` binary: graceful SIGTERM and SIGINT, an expiring shutdown timeout,
//! `--log-level`, memory bounded while streaming huge bodies, and `ringlb check`.

mod common;

use common::*;
use std::net::TcpStream;
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
/// `warn` none of them are, while a warning (SIGHUP's) still is.
#[test]
fn log_level_sets_the_log_filter() {
    let b = Backend::start("a");
    for level in ["info", "warn"] {
        let mut p =
            ProxyProcess::spawn_with_log_level(&ProxyConfig::with_backends(&[&b]).toml(), level);
        p.signal(libc::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !p
            .log_text()
            .contains("SIGHUP: configuration reload is not supported yet")
        {
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

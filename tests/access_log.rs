//! The access log end to end: real requests through the proxy, the lines read back from the
//! file (JSON lines parsed with serde_json), logrotate's rename + SIGUSR1 on the real binary.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// The lines of `path`, waiting (10 s at most) until there are at least `n`.
fn lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} lines in {}, wanted {n}:\n{text}",
            lines.len(),
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn config(log: &Path, format: &str, peers: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\nadmin = \"\"\n\n\
         [log]\naccess = \"{}\"\naccess_format = \"{format}\"\n\n\
         [[upstream]]\nname = \"app\"\npeers = [{peers}]\n\
         passive = {{ consecutive_failures = 0 }}\n\n\
         [[route]]\npath_prefix = \"/\"\nupstream = \"app\"\n",
        log.display()
    )
}

#[test]
fn json_lines_name_the_request_the_answer_and_the_upstream() {
    let a = Backend::with_handler("a", |r| {
        if r.path() == "/missing" {
            // Longer than ringlb copies behind the head: sent from where it was read.
            Reply::new(404, "nope".repeat(1000))
        } else {
            Reply::ok("hello")
        }
    });
    let dead = refusing_addr();
    let log = temp_path("access", "log");
    let peers = format!(
        "{{ address = \"{dead}\" }}, {{ address = \"{}\", backup = true }}",
        a.addr()
    );
    let proxy = Proxy::start(&config(&log, "json", &peers));
    let mut c = proxy.client();
    let r = c.roundtrip(
        b"GET /items?page=2 HTTP/1.1\r\nHost: x\r\nUser-Agent: tester/1.0\r\n\
          Referer: https://example.com/\"quoted\"\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let r = c.roundtrip(b"POST /missing HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!(r.status, 404);
    assert_eq!(r.body, "nope".repeat(1000).as_bytes());
    let r = c.roundtrip(b"GET /bad\x01path HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 400);
    drop(c);
    proxy.shutdown(); // flushes the log

    let got = lines(&log, 3);
    assert_eq!(got.len(), 3, "{got:?}");
    let v: Vec<Value> = got
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(v[0]["method"], "GET");
    assert_eq!(v[0]["target"], "/items?page=2");
    assert_eq!(v[0]["version"], "HTTP/1.1");
    assert_eq!(v[0]["status"], 200);
    assert_eq!(v[0]["bytes_sent"], 5);
    assert_eq!(v[0]["user_agent"], "tester/1.0");
    assert_eq!(v[0]["referer"], "https://example.com/\"quoted\"");
    assert_eq!(v[0]["upstream"], "app");
    assert_eq!(v[0]["peer"], a.addr().to_string());
    assert_eq!(v[0]["tries"], 2, "the refusing primary, then the backup");
    assert!(v[0]["upstream_time"].as_f64().unwrap() >= 0.0);
    assert!(v[0]["total_time"].as_f64().unwrap() >= v[0]["upstream_time"].as_f64().unwrap());
    assert_eq!(v[1]["method"], "POST");
    assert_eq!(v[1]["status"], 404);
    assert_eq!(v[1]["bytes_sent"], 4000);
    // A head ringlb refused: its own 400, no upstream.
    assert_eq!(v[2]["status"], 400);
    assert_eq!(v[2]["upstream"], Value::Null);
    assert_eq!(v[2]["tries"], 0);
}

#[test]
fn combined_lines_and_logrotate_reopen_on_sigusr1() {
    let a = Backend::start("a");
    let log = temp_path("access", "log");
    let peers = format!("{{ address = \"{}\" }}", a.addr());
    let mut p = ProxyProcess::spawn_with_log_level(&config(&log, "combined", &peers), "info");
    let fetch = |path: &str| Client::connect(p.addr).roundtrip(&get(path)).status;
    assert_eq!(fetch("/one"), 200);
    let first = lines(&log, 1);
    let line = &first[0];
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(line.contains("] \"GET /one HTTP/1.1\" 200 1 "), "{line}");
    assert!(line.contains(&format!("\"app\" {} 1 ", a.addr())), "{line}");

    // logrotate: rename, then SIGUSR1; the next line goes to a new file at the old path.
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    p.signal(libc::SIGUSR1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.log_text().contains("SIGUSR1: reopening the access log") {
        assert!(Instant::now() < deadline, "{}", p.log_text());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(fetch("/two"), 200);
    let after = lines(&log, 1);
    assert!(after[0].contains("\"GET /two HTTP/1.1\" 200"), "{after:?}");
    let old = lines(&rotated, 1);
    assert_eq!(old.len(), 1, "the old file keeps only its line: {old:?}");
    assert!(old[0].contains("/one"));
    p.signal(libc::SIGTERM);
    assert_eq!(
        p.wait_exit(Duration::from_secs(10)).and_then(|s| s.code()),
        Some(0)
    );
}

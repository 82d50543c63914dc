//! A custom active health check and a health observer.
//!
//! The upstream `app` has `health = { kind = "custom", … }`: instead of a built-in probe, the
//! registered `StatusLine` check runs on that schedule (every 500 ms, rise 2, fall 2). It
//! connects, sends `GET /healthz`, and is healthy when the status line says `200`. The third
//! peer refuses connections, so it goes `unknown → down`; the others go `unknown → up`. The
//! observer prints every change.
//!
//! Run it with `cargo run --example custom_health`, then `curl -s http://127.0.0.1:8082/`.

use std::sync::Arc;
use std::time::Instant;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use ringlb::demo::DemoBackends;
use ringlb::health::{CheckFuture, CheckTarget, HealthCheck, HealthEvent, HealthObserver};
use ringlb::server::StartOptions;
use ringlb::{Config, Server};

/// StatusLine is healthy when `GET /healthz` answers with a `200` status line.
pub struct StatusLine;

impl HealthCheck for StatusLine {
    fn check<'a>(&'a self, target: &'a CheckTarget, _deadline: Instant) -> CheckFuture<'a> {
        Box::pin(async move {
            let mut stream = TcpStream::connect_addr(target.addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let req = format!(
                "GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                target.address
            );
            let (res, _) = stream.write_all(req.into_bytes()).await;
            res.map_err(|e| format!("write: {e}"))?;
            let (res, buf) = stream.read(Vec::with_capacity(1024)).await;
            res.map_err(|e| format!("read: {e}"))?;
            let text = String::from_utf8_lossy(&buf);
            let line = text.lines().next().unwrap_or_default().to_string();
            if line.split(' ').nth(1) == Some("200") {
                Ok(line)
            } else {
                Err(format!("status line {line:?}"))
            }
        })
    }
}

/// Printer prints every health event (quickly: it runs on the control thread).
pub struct Printer;

impl HealthObserver for Printer {
    fn on_event(&self, upstream: &str, peer: &str, event: HealthEvent, why: &str) {
        match event {
            HealthEvent::Changed { old, new } => {
                println!("{upstream} {peer}: {old} -> {new} ({why})")
            }
            HealthEvent::Added { state } => println!("{upstream} {peer}: added as {state} ({why})"),
            HealthEvent::Removed { last } => {
                println!("{upstream} {peer}: removed, was {last} ({why})")
            }
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backends = DemoBackends::start(2)?;
    // A port nothing listens on: bound, then closed.
    let refusing = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let peers: Vec<String> = backends
        .addrs
        .iter()
        .chain([&refusing])
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect();
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:8082\"]\nworkers = 1\nadmin = \"\"\n\n\
         [[upstream]]\nname = \"app\"\npeers = [{}]\n\
         health = {{ kind = \"custom\", interval_ms = 500, timeout_ms = 300, rise = 2, fall = 2 }}\n",
        peers.join(", ")
    );
    let config = Config::from_toml_str(&text, "<custom_health example>")?;
    let options = StartOptions::default()
        .health_check("app", Arc::new(StatusLine))
        .health_observer(Arc::new(Printer));
    let server = Server::start_with(config, options)?;
    println!(
        "custom_health example on http://{}/",
        server.listen_addrs()[0]
    );
    println!("Ctrl-C to stop.");
    let handle = server.shutdown_handle();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            handle.shutdown();
        }
    });
    server.wait();
    Ok(())
}

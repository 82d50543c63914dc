//! The proxy under test: [`ProxyConfig`] builds the TOML of a test proxy, [`Proxy`] runs a
//! `ringlb::Server` in this process, [`ProxyProcess`] runs the real binary (its listen port
//! found through `/proc`), plus config files in the cargo test temp dir.

use super::*;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Peer is one `peers = [...]` entry.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    addr: SocketAddr,
    weight: u32,
    backup: bool,
}

/// A peer entry for `addr` with weight 1.
pub fn peer(addr: SocketAddr) -> Peer {
    Peer {
        addr,
        weight: 1,
        backup: false,
    }
}

impl Peer {
    /// Sets the weight.
    pub fn weight(mut self, w: u32) -> Peer {
        self.weight = w;
        self
    }
    /// Makes it a backup peer.
    pub fn backup(mut self) -> Peer {
        self.backup = true;
        self
    }
}

/// ProxyConfig builds the TOML of a test proxy: loopback port 0, admin off, short timeouts.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    workers: usize,
    shutdown_timeout_ms: u64,
    timeouts: BTreeMap<String, u64>,
    limits: BTreeMap<String, u64>,
    upstreams: Vec<String>,
    routes: Vec<String>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig::new()
    }
}

impl ProxyConfig {
    /// One worker, generous timeouts, default limits, no upstreams yet.
    pub fn new() -> ProxyConfig {
        let timeouts = [
            ("connect_ms", 2000),
            ("request_header_ms", 10_000),
            ("upstream_read_ms", 15_000),
            ("upstream_write_ms", 15_000),
            ("client_idle_ms", 30_000),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        ProxyConfig {
            workers: 1,
            shutdown_timeout_ms: 3000,
            timeouts,
            limits: BTreeMap::new(),
            upstreams: Vec::new(),
            routes: Vec::new(),
        }
    }

    /// One worker and one round-robin upstream `app` with the given backends as peers.
    pub fn with_backends(backends: &[&Backend]) -> ProxyConfig {
        let peers: Vec<Peer> = backends.iter().map(|b| peer(b.addr())).collect();
        ProxyConfig::new().upstream("app", "round_robin", &peers)
    }

    /// Sets the number of shards.
    pub fn workers(mut self, n: usize) -> ProxyConfig {
        self.workers = n;
        self
    }
    /// Sets `[server] shutdown_timeout_ms`.
    pub fn shutdown_timeout_ms(mut self, ms: u64) -> ProxyConfig {
        self.shutdown_timeout_ms = ms;
        self
    }
    /// Sets a `[timeouts]` key, e.g. `("upstream_read_ms", 300)`.
    pub fn timeout(mut self, key: &str, ms: u64) -> ProxyConfig {
        self.timeouts.insert(key.to_string(), ms);
        self
    }
    /// Sets a `[limits]` key, e.g. `("max_body_bytes", 1000)`.
    pub fn limit(mut self, key: &str, v: u64) -> ProxyConfig {
        self.limits.insert(key.to_string(), v);
        self
    }
    /// Adds an `[[upstream]]`.
    pub fn upstream(mut self, name: &str, algorithm: &str, peers: &[Peer]) -> ProxyConfig {
        let mut s =
            format!("[[upstream]]\nname = \"{name}\"\nalgorithm = \"{algorithm}\"\npeers = [\n");
        for p in peers {
            let _ = writeln!(
                s,
                "  {{ address = \"{}\", weight = {}, backup = {} }},",
                p.addr, p.weight, p.backup
            );
        }
        s.push_str("]\npool = { max_idle_per_peer = 64, idle_timeout_ms = 30000 }\n");
        self.upstreams.push(s);
        self
    }
    /// Adds a `[[route]]` with these condition lines (e.g. `host = "a.example"`).
    pub fn route(mut self, conditions: &[&str], upstream: &str) -> ProxyConfig {
        let mut s = String::from("[[route]]\n");
        for c in conditions {
            s.push_str(c);
            s.push('\n');
        }
        let _ = writeln!(s, "upstream = \"{upstream}\"");
        self.routes.push(s);
        self
    }

    /// The TOML text.
    pub fn toml(&self) -> String {
        let mut s = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = {}\nadmin = \"\"\nshutdown_timeout_ms = {}\n\n[timeouts]\n",
            self.workers, self.shutdown_timeout_ms
        );
        for (k, v) in &self.timeouts {
            let _ = writeln!(s, "{k} = {v}");
        }
        if !self.limits.is_empty() {
            s.push_str("\n[limits]\n");
            for (k, v) in &self.limits {
                let _ = writeln!(s, "{k} = {v}");
            }
        }
        for u in &self.upstreams {
            s.push('\n');
            s.push_str(u);
        }
        for r in &self.routes {
            s.push('\n');
            s.push_str(r);
        }
        s
    }

    /// Starts the proxy in-process.
    pub fn start(&self) -> Proxy {
        Proxy::start(&self.toml())
    }

    /// Starts the real binary with this config.
    pub fn spawn_binary(&self) -> ProxyProcess {
        ProxyProcess::spawn(&self.toml())
    }

    /// Appends `line` (e.g. `retry = { max_retries = 1 }`) to the last `[[upstream]]` added.
    pub fn upstream_line(mut self, line: &str) -> ProxyConfig {
        let u = self
            .upstreams
            .last_mut()
            .expect("upstream_line needs an [[upstream]] added first");
        u.push_str(line);
        u.push('\n');
        self
    }

    /// Adds an `[[upstream]]` like [`ProxyConfig::upstream`], with `extra` lines after the
    /// algorithm (e.g. `hash_key = "header:X-User-Id"`, `balance_factor = 1.25`).
    pub fn upstream_with(
        mut self,
        name: &str,
        algorithm: &str,
        extra: &[&str],
        peers: &[Peer],
    ) -> ProxyConfig {
        self = self.upstream(name, algorithm, peers);
        let u = self.upstreams.last_mut().expect("just added");
        let at = u.find("peers = [").expect("peers line");
        let lines: String = extra.iter().map(|l| format!("{l}\n")).collect();
        u.insert_str(at, &lines);
        self
    }
}

/// Proxy is a `ringlb::Server` running in this process; dropping it shuts it down.
pub struct Proxy {
    server: Option<ringlb::Server>,
    /// The first listen address (port resolved).
    pub addr: SocketAddr,
}

impl Proxy {
    /// Starts the proxy from TOML text; panics with the error and the text if that fails.
    pub fn start(toml: &str) -> Proxy {
        Proxy::from_server(ringlb::Server::start(config_from(toml)), toml)
    }

    /// Starts the proxy from a config file (so that a reload can read it again).
    pub fn start_file(path: &Path) -> Proxy {
        Proxy::start_file_with(path, ringlb::server::StartOptions::default())
    }

    /// Starts the proxy from TOML text with `options` (health hooks, a picker).
    pub fn start_with(toml: &str, options: ringlb::server::StartOptions) -> Proxy {
        Proxy::from_server(ringlb::Server::start_with(config_from(toml), options), toml)
    }

    /// Starts the proxy from a config file (so that a reload can read it again) with
    /// `options`.
    pub fn start_file_with(path: &Path, options: ringlb::server::StartOptions) -> Proxy {
        let config =
            ringlb::Config::from_file(path).unwrap_or_else(|e| panic!("config rejected: {e}"));
        let text = std::fs::read_to_string(path).unwrap_or_default();
        Proxy::from_server(ringlb::Server::start_with(config, options), &text)
    }

    /// Wraps a started server (panics with the error and the config text if it did not start).
    fn from_server(
        started: Result<ringlb::Server, ringlb::server::StartError>,
        toml: &str,
    ) -> Proxy {
        let server =
            started.unwrap_or_else(|e| panic!("server did not start: {e}\n--- config ---\n{toml}"));
        let addr = server.listen_addrs()[0];
        assert_ne!(addr.port(), 0, "listen_addrs() must resolve port 0");
        Proxy {
            server: Some(server),
            addr,
        }
    }

    /// A new client connection to the proxy.
    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Graceful shutdown; fails the whole test process if it does not return within 30 s.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        if thread::panicking() {
            // The test already failed: do not risk hanging in a shutdown of a broken proxy.
            std::mem::forget(server);
            return;
        }
        let (tx, rx) = mpsc::channel::<()>();
        thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(30)) {
                eprintln!("ringlb::Server::shutdown() did not return within 30 s");
                std::process::exit(101);
            }
        });
        server.shutdown();
        let _ = tx.send(());
    }

    /// The running server (admin address, test knobs).
    pub fn server(&self) -> &ringlb::Server {
        self.server.as_ref().expect("the proxy is running")
    }

    /// Starts the proxy in-process from TOML text with a custom picker instead of the
    /// config's routes.
    pub fn start_with_picker(
        toml: &str,
        picker: std::sync::Arc<dyn ringlb::proxy::Picker>,
    ) -> Proxy {
        Proxy::from_server(
            ringlb::Server::start_with_picker(config_from(toml), picker),
            toml,
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// The real binary.

/// A unique path under the cargo test temp dir.
pub fn temp_path(stem: &str, ext: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{stem}-{}-{n}.{ext}", std::process::id()))
}

/// Writes `text` to a fresh config file and returns its path.
pub fn write_config(text: &str) -> PathBuf {
    let p = temp_path("ringlb", "toml");
    std::fs::write(&p, text).expect("write config file");
    p
}

/// ProxyProcess is the `ringlb` binary running a config; killed on drop if still running.
pub struct ProxyProcess {
    child: Child,
    /// The listen address (found through /proc).
    pub addr: SocketAddr,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    /// Its config file.
    pub config: PathBuf,
    exited: Option<ExitStatus>,
}

impl ProxyProcess {
    /// Writes `toml` to a file, starts `ringlb --config FILE --log-level warn` and waits (up to
    /// 20 s) until it listens.
    pub fn spawn(toml: &str) -> ProxyProcess {
        ProxyProcess::spawn_with_log_level(toml, "warn")
    }

    /// Like [`ProxyProcess::spawn`], with `--log-level level`.
    pub fn spawn_with_log_level(toml: &str, level: &str) -> ProxyProcess {
        let config = write_config(toml);
        let log = temp_path("ringlb", "log");
        let out = std::fs::File::create(&log).expect("create log");
        let err = out.try_clone().expect("clone log");
        let child = Command::new(env!("CARGO_BIN_EXE_ringlb"))
            .arg("--config")
            .arg(&config)
            .arg("--log-level")
            .arg(level)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn ringlb binary");
        let mut p = ProxyProcess {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            log,
            config,
            exited: None,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = p.child.try_wait().expect("try_wait") {
                p.exited = Some(st);
                panic!(
                    "ringlb exited during startup with {st}; log:\n{}",
                    p.log_text()
                );
            }
            if let Some(port) = listening_port_except(p.child.id(), admin_port(toml)) {
                p.addr = SocketAddr::from(([127, 0, 0, 1], port));
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "ringlb did not listen within 20 s; log:\n{}",
                p.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of a child this struct owns and has not reaped yet.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.child.id());
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.exited {
                return Some(st);
            }
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                self.exited = Some(st);
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// A field of /proc/<pid>/status in kB (e.g. `VmHWM`, `VmRSS`).
    pub fn status_kb(&self, field: &str) -> u64 {
        proc_status_kb(self.child.id(), field)
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if self.exited.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if !thread::panicking() {
            let _ = std::fs::remove_file(&self.config);
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!("ringlb log ({}):\n{}", self.log.display(), self.log_text());
        }
    }
}

/// A field of /proc/<pid>/status in kB.
pub fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad line {line:?}"))
}

/// The TCP port `pid` listens on (its first listening socket), from /proc.
pub fn listening_port(pid: u32) -> Option<u16> {
    listening_port_except(pid, None)
}

/// The admin port a config text names (`server.admin = "host:port"`), if any: the port a
/// proxy listens on besides its `listen` addresses.
pub fn admin_port(toml_text: &str) -> Option<u16> {
    let v: toml::Value = toml::from_str(toml_text).ok()?;
    let admin = v.get("server")?.get("admin")?.as_str()?;
    admin.parse::<SocketAddr>().ok().map(|a| a.port())
}

/// The TCP port `pid` listens on, from /proc: its first listening socket whose port is not
/// `skip` (the admin port, which may be bound first).
pub fn listening_port_except(pid: u32, skip: Option<u16>) -> Option<u16> {
    let mut inodes = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        if let Ok(target) = std::fs::read_link(e.path()) {
            let t = target.to_string_lossy();
            if let Some(ino) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                inodes.push(ino.to_string());
            }
        }
    }
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let port = u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()?;
                if Some(port) != skip {
                    return Some(port);
                }
            }
        }
    }
    None
}

/// Runs `ringlb ARGS...` to completion (60 s at most) and returns its output.
pub fn run_binary(args: &[&str]) -> std::process::Output {
    run_binary_within(args, Duration::from_secs(60))
}

/// Runs `ringlb ARGS...` and returns its output; panics (with its stderr) if it still runs
/// after `timeout`.
pub fn run_binary_within(args: &[&str], timeout: Duration) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringlb");
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "ringlb {args:?} still running after {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("collect output")
}

/// Parses a config text (panics with the error and the text).
pub fn config_from(text: impl AsRef<str>) -> ringlb::Config {
    let text = text.as_ref();
    ringlb::Config::from_toml_str(text, "<test>")
        .unwrap_or_else(|e| panic!("config rejected: {e}\n--- config ---\n{text}"))
}

/// Raises this process's open-files soft limit to its hard limit (children inherit it) and
/// returns the limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}

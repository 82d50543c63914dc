//! The proxies under test: their generated configs, starting them pinned, waiting until they
//! answer, and stopping them (and every process they forked) when the guard drops.
//!
//! Every proxy gets the same setup: one worker/thread, pinned with `taskset -c <proxy-cpu>`,
//! no access log, HTTP/1.1 keep-alive to the client and to the upstreams (pool of idle upstream
//! connections), round robin over the same three backends, its own free port on 127.0.0.1.
//! Each runs from its own directory inside the scratch dir, which holds its config, pid file,
//! temp files and logs (stdout/stderr in `stdout.log`/`stderr.log`).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;

use crate::setup::{check_interrupted, kill_with_parent};

/// RINGLB_CONFIG_FILE is the name of ringlb's config file in its directory (`reload` rewrites it).
pub const RINGLB_CONFIG_FILE: &str = "ringlb.toml";

/// ProxyKind is one of the proxies the harness knows how to configure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProxyKind {
    /// ringlb (this workspace).
    Ringlb,
    /// nginx (`proxy_pass` to an `upstream` block with `keepalive`).
    Nginx,
    /// HAProxy (`mode http`, `http-reuse always`).
    Haproxy,
}

impl ProxyKind {
    /// The proxy's name, which is also its binary's name.
    pub fn name(self) -> &'static str {
        match self {
            ProxyKind::Ringlb => "ringlb",
            ProxyKind::Nginx => "nginx",
            ProxyKind::Haproxy => "haproxy",
        }
    }
}

/// ProxySpec is everything needed to start one proxy.
pub struct ProxySpec<'a> {
    /// Which proxy.
    pub kind: ProxyKind,
    /// Its binary.
    pub program: &'a Path,
    /// taskset, to pin it.
    pub taskset: &'a Path,
    /// The CPU it is pinned to.
    pub cpu: usize,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    /// The backends it balances over.
    pub backends: &'a [SocketAddr],
    /// Its own working directory (created).
    pub dir: PathBuf,
    /// Lines appended to ringlb's `[[upstream]]` (e.g. `circuit_breaker = { … }`); `""` for
    /// the like-for-like setup of `compare`.
    pub ringlb_extra: &'a str,
    /// Lines added to ringlb's `[server]` table (`--ringlb-server`).
    pub ringlb_server: &'a str,
    /// ringlb's `--log-level` (`warn` for `compare`: no per-event logging).
    pub ringlb_log_level: &'a str,
    /// ringlb's `[server] admin` address; `""` (no admin endpoint) for `compare` and `faults`.
    pub ringlb_admin: &'a str,
    /// Pass WebSocket upgrades (`ws`): nginx gets `proxy_set_header Upgrade $http_upgrade;`
    /// and `Connection "upgrade"`, HAProxy a `timeout tunnel`; ringlb tunnels websocket by
    /// default.
    pub upgrade: bool,
    /// Client connections the proxy must hold at once (`conns`, `idle`); 0 = the default
    /// setup (nginx `worker_connections 4096`, HAProxy `maxconn 4096`). Above that nginx gets
    /// `worker_connections 2N + 256` (a proxied connection takes two) and HAProxy
    /// `maxconn N + 96`, at most (open-files limit − 64) / 2, since HAProxy refuses to start
    /// when it cannot have two descriptors per `maxconn`; ringlb's default `max_connections`
    /// (65536 per shard) already covers any N the fd limit allows. The proxies inherit the
    /// harness's open-files limit (raised to the hard limit by `conns` and `idle`).
    pub max_conns: u32,
    /// Terminate TLS on the listener with this certificate (`compare --tls`); `None` =
    /// cleartext.
    pub tls: Option<&'a TlsFiles>,
    /// Clients speak HTTP/2 with prior knowledge (`compare --h2`): nginx gets
    /// `listen … http2`, HAProxy `bind … proto h2`; ringlb takes h2c on its listener by
    /// default. Upstreams stay HTTP/1.1 for all three.
    pub h2: bool,
}

/// TlsFiles is the certificate every proxy serves in a TLS run: one self-signed ECDSA P-256
/// certificate for `localhost` made with `openssl req`, so all three do the same
/// public-key work per handshake.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// Certificate then key in one file (HAProxy's `crt`).
    pub combined: PathBuf,
}

/// The TLS 1.3 cipher suites every proxy enables, in the same order (OpenSSL's default order;
/// rustls enables the same three). TLS 1.2 is left at each one's ECDHE + AEAD defaults.
pub const TLS13_SUITES: &str =
    "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256";

impl TlsFiles {
    /// Makes the certificate and key in `dir` with `openssl`.
    pub fn create(dir: &Path) -> Result<TlsFiles> {
        let cert = dir.join("tls-cert.pem");
        let key = dir.join("tls-key.pem");
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .context("run openssl (apt-get install -y openssl)")?;
        if !out.status.success() {
            bail!(
                "openssl req failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let combined = dir.join("tls-combined.pem");
        let text = format!(
            "{}{}",
            std::fs::read_to_string(&cert)?,
            std::fs::read_to_string(&key)?
        );
        std::fs::write(&combined, text)?;
        Ok(TlsFiles {
            cert,
            key,
            combined,
        })
    }
}

/// RunningProxy is a started proxy; dropping it stops its whole process group.
pub struct RunningProxy {
    /// Which proxy.
    kind: ProxyKind,
    /// Where it listens.
    port: u16,
    /// The root process (ringlb, the nginx master, haproxy); also the process group leader.
    child: Child,
    /// Its working directory, for log excerpts in error messages.
    dir: PathBuf,
    /// The command line, as a human would type it.
    command_line: String,
    /// It listens with TLS (`https://` URL, readiness probed with curl).
    tls: bool,
    /// It serves HTTP/2 with prior knowledge only (probe with the preface).
    h2: bool,
}

impl RunningProxy {
    /// Writes the proxy's config into `spec.dir` and starts it in its own process group.
    pub fn start(spec: &ProxySpec<'_>) -> Result<RunningProxy> {
        std::fs::create_dir_all(&spec.dir)
            .with_context(|| format!("create {}", spec.dir.display()))?;
        let args = write_config(spec)?;
        let stdout = std::fs::File::create(spec.dir.join("stdout.log"))?;
        let stderr = std::fs::File::create(spec.dir.join("stderr.log"))?;
        let mut cmd = Command::new(spec.taskset);
        cmd.arg("-c")
            .arg(spec.cpu.to_string())
            .arg(spec.program)
            .args(&args)
            .current_dir(&spec.dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Its own process group: Ctrl-C on the terminal does not reach it directly (the
            // guard stops it in order), and stopping the group reaches nginx's workers too.
            .process_group(0);
        kill_with_parent(&mut cmd);
        let command_line = format!(
            "taskset -c {} {} {}",
            spec.cpu,
            spec.program.display(),
            args.iter()
                .map(|a| if a.contains(' ') {
                    format!("'{a}'")
                } else {
                    a.clone()
                })
                .collect::<Vec<_>>()
                .join(" ")
        );
        let child = cmd
            .spawn()
            .with_context(|| format!("start {}", spec.kind.name()))?;
        Ok(RunningProxy {
            kind: spec.kind,
            port: spec.port,
            child,
            dir: spec.dir.clone(),
            command_line,
            tls: spec.tls.is_some(),
            h2: spec.h2,
        })
    }

    /// Which proxy this is.
    pub fn kind(&self) -> ProxyKind {
        self.kind
    }

    /// The root pid of its process tree.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The URL wrk loads.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// The command line it was started with.
    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    /// Waits until a `GET /` through the proxy returns 200, or fails with the proxy's log tail
    /// when it exits or `timeout` passes.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + timeout;
        loop {
            check_interrupted()?;
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited during startup ({status}); command: {}\n{}",
                    self.kind.name(),
                    self.command_line,
                    self.log_tail()
                );
            }
            let answer = if self.tls {
                probe_tls(addr)
            } else if self.h2 {
                probe_h2(addr)
            } else {
                probe(addr)
            };
            let last = match answer {
                Ok(200) => return Ok(()),
                Ok(code) => format!("answered {code}"),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer GET / with 200 within {timeout:?} (last: {last}); \
                     command: {}\n{}",
                    self.kind.name(),
                    self.command_line,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The text of one of its log files (`stderr.log`, `stdout.log`, `error.log`); empty if
    /// there is none.
    pub fn log_text(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// Fails with the log excerpt if the proxy has exited (crashed under load).
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited during the run ({status})\n{}",
                self.kind.name(),
                self.log_tail()
            );
        }
        Ok(())
    }

    /// The start and end of the proxy's stderr, stdout and error log, for error messages
    /// (a panic message sits at the start, before its backtrace).
    fn log_tail(&self) -> String {
        const HEAD: usize = 8;
        const TAIL: usize = 12;
        let mut out = String::new();
        for name in ["stderr.log", "stdout.log", "error.log"] {
            let Ok(text) = std::fs::read_to_string(self.dir.join(name)) else {
                continue;
            };
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            if lines.is_empty() {
                continue;
            }
            let _ = writeln!(out, "--- {} {name} ---", self.kind.name());
            if lines.len() <= HEAD + TAIL {
                lines.iter().for_each(|l| {
                    let _ = writeln!(out, "{l}");
                });
            } else {
                lines[..HEAD].iter().for_each(|l| {
                    let _ = writeln!(out, "{l}");
                });
                let _ = writeln!(out, "[… {} lines …]", lines.len() - HEAD - TAIL);
                lines[lines.len() - TAIL..].iter().for_each(|l| {
                    let _ = writeln!(out, "{l}");
                });
            }
        }
        if !out.is_empty() {
            out.push_str("(rerun with --keep-tmp to keep the full logs and configs)\n");
        }
        out
    }

    /// Stops the process group: SIGTERM, up to 3 s for the root to exit, then SIGKILL to
    /// whatever of the group is left.
    fn stop(&mut self) {
        let pgid = self.child.id() as libc::pid_t;
        if let Ok(Some(_)) = self.child.try_wait() {
            kill_group_if_alive(pgid);
            return;
        }
        // SAFETY: plain syscall; the group is the one we created for this child.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        kill_group_if_alive(pgid);
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SIGKILLs the process group `pgid` if any process is still in it (nginx workers can outlive
/// their master by a moment). Checks first so that a recycled group id is never signalled.
fn kill_group_if_alive(pgid: libc::pid_t) {
    for _ in 0..50 {
        if !group_has_members(pgid) {
            return;
        }
        // SAFETY: plain syscall; the group still has members, so it is still ours.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn group_has_members(pgid: libc::pid_t) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        let Some(pid) = e
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<libc::pid_t>().ok())
        else {
            return false;
        };
        // SAFETY: plain syscall.
        let g = unsafe { libc::getpgid(pid) };
        g == pgid && !is_zombie(pid)
    })
}

fn is_zombie(pid: libc::pid_t) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| s[i + 1..].trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// One `GET /` over a fresh connection; returns the status code.
fn probe(addr: SocketAddr) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("no HTTP status in {:?}", text.lines().next().unwrap_or("")),
            )
        })
}

/// One `GET /` over TLS with curl (certificate not checked); returns the status code.
fn probe_tls(addr: SocketAddr) -> std::io::Result<u16> {
    let out = Command::new("curl")
        .args(["-sk", "-m", "2", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("https://{addr}/"))
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| std::io::Error::other("curl: no status"))
}

/// Sends the HTTP/2 connection preface and an empty SETTINGS; `Ok(200)` when the server
/// answers with a SETTINGS frame (it speaks h2c).
fn probe_h2(addr: SocketAddr) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")?;
    let mut head = [0u8; 9];
    s.read_exact(&mut head)?;
    if head[3] == 0x4 {
        Ok(200)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("first frame is of type {}, not SETTINGS", head[3]),
        ))
    }
}

/// Writes the proxy's config file(s) into `spec.dir`; returns the proxy's arguments.
fn write_config(spec: &ProxySpec<'_>) -> Result<Vec<String>> {
    let dir = &spec.dir;
    let (file, text, args) = match spec.kind {
        ProxyKind::Ringlb => {
            let file = dir.join(RINGLB_CONFIG_FILE);
            let args = vec![
                "--config".into(),
                path_str(&file)?,
                "--log-level".into(),
                spec.ringlb_log_level.into(),
            ];
            (file, ringlb_config(spec), args)
        }
        ProxyKind::Nginx => {
            let file = dir.join("nginx.conf");
            let args = vec![
                "-p".into(),
                format!("{}/", path_str(dir)?),
                "-e".into(),
                path_str(&dir.join("error.log"))?,
                "-c".into(),
                path_str(&file)?,
                "-g".into(),
                "daemon off;".into(),
            ];
            (file, nginx_config(spec)?, args)
        }
        ProxyKind::Haproxy => {
            let file = dir.join("haproxy.cfg");
            let args = vec!["-db".into(), "-f".into(), path_str(&file)?];
            (file, haproxy_config(spec), args)
        }
    };
    std::fs::write(&file, text).with_context(|| format!("write {}", file.display()))?;
    Ok(args)
}

fn path_str(p: &Path) -> Result<String> {
    p.to_str()
        .map(str::to_string)
        .with_context(|| format!("path is not UTF-8: {}", p.display()))
}

fn ringlb_config(spec: &ProxySpec<'_>) -> String {
    let peers = spec
        .backends
        .iter()
        .map(|b| format!("{{ address = \"{b}\" }}"))
        .collect::<Vec<_>>()
        .join(", ");
    ringlb_config_text(spec, "round_robin", &peers)
}

/// ringlb's config for `spec` with `algorithm` and `peers` (the inside of `peers = [ … ]`,
/// TOML inline tables) instead of round robin over one unweighted peer per backend; `reload`
/// rewrites the file with it.
///
/// The upstream connect timeout is HAProxy's `timeout connect 5s` of its config here (nginx
/// waits 60 s): with ringlb's default of 1 s, a connect storm (`conns 10000` opens thousands of
/// upstream connections at once) times connects out that the others wait for, and passive
/// ejection then takes a backend out of the run.
pub fn ringlb_config_text(spec: &ProxySpec<'_>, algorithm: &str, peers: &str) -> String {
    let listen = match spec.tls {
        None => format!("\"127.0.0.1:{}\"", spec.port),
        Some(t) => format!(
            "{{ address = \"127.0.0.1:{}\", tls = {{ cert = \"{}\", key = \"{}\" }} }}",
            spec.port,
            t.cert.display(),
            t.key.display()
        ),
    };
    format!(
        "# Generated by bench-harness.\n\
         [server]\n\
         listen = [{listen}]\n\
         workers = 1\n\
         cpus = \"{cpu}\"\n\
         admin = \"{admin}\"\n\
         {server}\
         \n\
         [[upstream]]\n\
         name = \"bench\"\n\
         algorithm = \"{algorithm}\"\n\
         peers = [ {peers} ]\n\
         pool = {{ max_idle_per_peer = 256 }}\n\
         timeouts = {{ connect_ms = 5000 }}\n\
         {extra}",
        cpu = spec.cpu,
        admin = spec.ringlb_admin,
        server = match spec.ringlb_server {
            "" => String::new(),
            lines => format!("{lines}\n"),
        },
        extra = spec.ringlb_extra,
    )
}

fn nginx_config(spec: &ProxySpec<'_>) -> Result<String> {
    let d = path_str(&spec.dir)?;
    let servers: String = spec
        .backends
        .iter()
        .map(|b| format!("        server {b};\n"))
        .collect();
    // worker_cpu_affinity takes a bitmask with the rightmost bit = CPU 0.
    let mask = format!("{:b}", 1u128 << spec.cpu);
    let worker_connections = nginx_worker_connections(spec.max_conns);
    Ok(format!(
        "# Generated by bench-harness.\n\
         worker_processes 1;\n\
         worker_cpu_affinity {mask};\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         \n\
         events {{\n    worker_connections {worker_connections};\n}}\n\
         \n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   default_type application/octet-stream;\n\
         \x20   client_body_temp_path {d}/client_body;\n\
         \x20   proxy_temp_path {d}/proxy_temp;\n\
         \x20   fastcgi_temp_path {d}/fastcgi_temp;\n\
         \x20   uwsgi_temp_path {d}/uwsgi_temp;\n\
         \x20   scgi_temp_path {d}/scgi_temp;\n\
         \x20   # nginx >= 1.19.10 closes a keep-alive connection after 1000 requests by default;\n\
         \x20   # ringlb and HAProxy have no such limit, so lift it for a like-for-like run.\n\
         \x20   keepalive_requests 1000000;\n\
         \n\
         \x20   upstream b {{\n\
         {servers}\
         \x20       keepalive 256;\n\
         \x20       keepalive_requests 1000000;\n\
         \x20   }}\n\
         \n\
         \x20   server {{\n\
         \x20       listen 127.0.0.1:{port}{ssl}{http2};\n\
         {ssl_conf}\
         \x20       location / {{\n\
         \x20           proxy_pass http://b;\n\
         \x20           proxy_http_version 1.1;\n\
         {connection}\
         \x20       }}\n\
         \x20   }}\n\
         }}\n",
        port = spec.port,
        ssl = if spec.tls.is_some() { " ssl" } else { "" },
        ssl_conf = match spec.tls {
            None => String::new(),
            Some(t) => format!(
                "        ssl_certificate {};\n\
                 \x20       ssl_certificate_key {};\n\
                 \x20       ssl_protocols TLSv1.2 TLSv1.3;\n\
                 \x20       ssl_conf_command Ciphersuites {TLS13_SUITES};\n\
                 \x20       ssl_session_cache shared:SSL:10m;\n\
                 \x20       ssl_session_tickets on;\n",
                path_str(&t.cert)?,
                path_str(&t.key)?
            ),
        },
        http2 = if spec.h2 { " http2" } else { "" },
        connection = if spec.upgrade {
            "            proxy_set_header Upgrade $http_upgrade;\n\
             \x20           proxy_set_header Connection \"upgrade\";\n\
             \x20           proxy_read_timeout 3600s;\n"
        } else {
            "            proxy_set_header Connection \"\";\n"
        },
    ))
}

/// nginx's `worker_connections` for `max_conns` clients (a proxied connection takes two). No
/// `worker_rlimit_nofile`: nginx inherits the harness's limit and may not raise it further.
fn nginx_worker_connections(max_conns: u32) -> u32 {
    if max_conns == 0 {
        4096
    } else {
        (2 * max_conns + 256).max(4096)
    }
}

/// HAProxy's `maxconn` for `max_conns` clients under an open-files limit of `fd_limit`:
/// HAProxy wants 2 × maxconn descriptors plus a few, and refuses to start without them.
fn haproxy_maxconn(max_conns: u32, fd_limit: u64) -> u32 {
    if max_conns == 0 {
        return 4096;
    }
    let fit = u32::try_from(fd_limit.saturating_sub(64) / 2).unwrap_or(u32::MAX);
    (max_conns + 96).max(4096).min(fit)
}

/// This process's open-files soft limit (what the proxies inherit).
fn nofile_limit() -> u64 {
    // SAFETY: rlimit is plain data; getrlimit fills it.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur
}

fn haproxy_config(spec: &ProxySpec<'_>) -> String {
    let servers: String = spec
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("    server s{} {b}\n", i + 1))
        .collect();
    format!(
        "# Generated by bench-harness.\n\
         global\n\
         \x20   nbthread 1\n\
         {ssl_global}\
         \x20   maxconn {maxconn}\n\
         \n\
         defaults\n\
         \x20   mode http\n\
         \x20   timeout connect 5s\n\
         \x20   timeout client 30s\n\
         \x20   timeout server 30s\n\
         {tunnel}\
         \x20   option http-keep-alive\n\
         \x20   http-reuse always\n\
         \n\
         frontend fe\n\
         \x20   bind 127.0.0.1:{port}{ssl}{proto}\n\
         \x20   default_backend be\n\
         \n\
         backend be\n\
         \x20   balance roundrobin\n\
         {servers}",
        port = spec.port,
        proto = if spec.h2 { " proto h2" } else { "" },
        tunnel = if spec.upgrade {
            "    timeout tunnel 3600s\n"
        } else {
            ""
        },
        maxconn = haproxy_maxconn(spec.max_conns, nofile_limit()),
        ssl = match spec.tls {
            None => String::new(),
            Some(t) => format!(" ssl crt {} alpn http/1.1", t.combined.display()),
        },
        ssl_global = if spec.tls.is_some() {
            format!(
                "    ssl-default-bind-ciphersuites {TLS13_SUITES}\n\
                 \x20   ssl-default-bind-options ssl-min-ver TLSv1.2\n\
                 \x20   tune.ssl.cachesize 100000\n"
            )
        } else {
            String::new()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_runs_give_every_proxy_the_same_certificate_and_suites() {
        let files = TlsFiles {
            cert: PathBuf::from("/t/cert.pem"),
            key: PathBuf::from("/t/key.pem"),
            combined: PathBuf::from("/t/both.pem"),
        };
        let with = |kind| {
            let mut s = spec(kind);
            s.tls = Some(&files);
            s
        };
        let ringlb = ringlb_config(&with(ProxyKind::Ringlb));
        assert!(
            ringlb.contains(
                "listen = [{ address = \"127.0.0.1:8080\", tls = { cert = \"/t/cert.pem\", \
                 key = \"/t/key.pem\" } }]"
            ),
            "{ringlb}"
        );
        let nginx = nginx_config(&with(ProxyKind::Nginx)).unwrap();
        for line in [
            "listen 127.0.0.1:8080 ssl;",
            "ssl_certificate /t/cert.pem;",
            "ssl_certificate_key /t/key.pem;",
            "ssl_session_cache shared:SSL:10m;",
            &format!("ssl_conf_command Ciphersuites {TLS13_SUITES};"),
        ] {
            assert!(nginx.contains(line), "{line} in\n{nginx}");
        }
        let haproxy = haproxy_config(&with(ProxyKind::Haproxy));
        assert!(
            haproxy.contains("bind 127.0.0.1:8080 ssl crt /t/both.pem alpn http/1.1"),
            "{haproxy}"
        );
        assert!(
            haproxy.contains(&format!("ssl-default-bind-ciphersuites {TLS13_SUITES}")),
            "{haproxy}"
        );
        // Without TLS nothing of it appears.
        assert!(!nginx_config(&spec(ProxyKind::Nginx))
            .unwrap()
            .contains("ssl"));
        assert!(!haproxy_config(&spec(ProxyKind::Haproxy)).contains("ssl"));
    }

    fn spec(kind: ProxyKind) -> ProxySpec<'static> {
        static BACKENDS: [SocketAddr; 3] = [
            SocketAddr::V4(std::net::SocketAddrV4::new(
                std::net::Ipv4Addr::LOCALHOST,
                9001,
            )),
            SocketAddr::V4(std::net::SocketAddrV4::new(
                std::net::Ipv4Addr::LOCALHOST,
                9002,
            )),
            SocketAddr::V4(std::net::SocketAddrV4::new(
                std::net::Ipv4Addr::LOCALHOST,
                9003,
            )),
        ];
        ProxySpec {
            kind,
            program: Path::new("/bin/true"),
            taskset: Path::new("/usr/bin/taskset"),
            cpu: 0,
            port: 8080,
            backends: &BACKENDS,
            dir: PathBuf::from("/tmp/x"),
            ringlb_extra: "",
            ringlb_server: "",
            ringlb_log_level: "warn",
            ringlb_admin: "",
            tls: None,
            upgrade: false,
            max_conns: 0,
            h2: false,
        }
    }

    #[test]
    fn ringlb_config_matches_the_documented_shape() {
        assert_eq!(
            ringlb_config(&spec(ProxyKind::Ringlb)),
            "# Generated by bench-harness.\n[server]\nlisten = [\"127.0.0.1:8080\"]\n\
             workers = 1\ncpus = \"0\"\nadmin = \"\"\n\n[[upstream]]\nname = \"bench\"\n\
             algorithm = \"round_robin\"\npeers = [ { address = \"127.0.0.1:9001\" }, \
             { address = \"127.0.0.1:9002\" }, { address = \"127.0.0.1:9003\" } ]\n\
             pool = { max_idle_per_peer = 256 }\ntimeouts = { connect_ms = 5000 }\n"
        );
    }

    #[test]
    fn nginx_config_pins_pools_and_lists_every_backend() {
        let c = nginx_config(&spec(ProxyKind::Nginx)).expect("utf-8 dir");
        for want in [
            "worker_processes 1;",
            "worker_cpu_affinity 1;",
            "access_log off;",
            "server 127.0.0.1:9003;",
            "keepalive 256;",
            "proxy_set_header Connection \"\";",
            "listen 127.0.0.1:8080;",
            "proxy_temp_path /tmp/x/proxy_temp;",
        ] {
            assert!(c.contains(want), "missing {want:?} in\n{c}");
        }
    }

    #[test]
    fn haproxy_config_has_three_servers_and_reuse() {
        let c = haproxy_config(&spec(ProxyKind::Haproxy));
        assert!(c.contains("    server s3 127.0.0.1:9003\n"));
        assert!(c.contains("http-reuse always"));
        assert!(c.contains("bind 127.0.0.1:8080"));
        assert!(c.contains("maxconn 4096\n"));
    }

    #[test]
    fn many_connections_raise_nginx_and_haproxy_limits() {
        let mut s = spec(ProxyKind::Nginx);
        s.max_conns = 9_000;
        let c = nginx_config(&s).expect("utf-8 dir");
        assert!(c.contains("worker_connections 18256;"), "{c}");
        assert!(!c.contains("worker_rlimit_nofile"), "{c}");
        assert!(nginx_config(&spec(ProxyKind::Nginx))
            .expect("utf-8 dir")
            .contains("worker_connections 4096;"));
        assert_eq!(haproxy_maxconn(0, 20_000), 4096);
        assert_eq!(haproxy_maxconn(100, 20_000), 4096);
        assert_eq!(haproxy_maxconn(9_000, 1_048_576), 9_096);
        // HAProxy needs two descriptors per maxconn: 20000 fds allow (20000 - 64) / 2.
        assert_eq!(haproxy_maxconn(9_872, 20_000), 9_968);
        assert_eq!(haproxy_maxconn(19_000, 20_000), 9_968);
    }
}

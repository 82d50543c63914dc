//! The `reload` subcommand: ringlb under wrk load while its configuration is reloaded.
//!
//! Order of a run: resolve wrk, taskset and the ringlb binary → start four backends (pinned to
//! the load CPU) → start ringlb (pinned to the proxy CPU, one shard) from `ringlb.toml` in the
//! scratch dir, the file `compare` writes (round robin over backends 0 and 1) plus the admin
//! endpoint on a free loopback port, and wait until it answers → run wrk, and meanwhile every
//! `--interval-ms` rewrite that file with the next step of [`CYCLE`] (`smooth_weighted`, so
//! weights count; peers added, removed, reweighted, all replaced, and a broken file every
//! fifth time) and reload it, alternately by SIGHUP and by `POST /reload` → print what wrk saw
//! and what each reload did.
//!
//! How a reload's outcome is known: `POST /reload` answers 200 (applied) or 400 (refused);
//! after a SIGHUP the harness polls `GET /status` until ringlb's `reloads.ok` or
//! `reloads.error` counter moves. A good file must be applied and a broken one refused;
//! anything else (the wrong outcome, another status, no outcome within the interval) is a
//! mismatch. At the end ringlb's own counters must agree with the harness's tally.
//!
//! Target: zero non-2xx responses, zero socket errors, zero mismatches.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::backend::Backend;
use crate::proxy::{ringlb_config_text, ProxyKind, ProxySpec, RunningProxy, RINGLB_CONFIG_FILE};
use crate::setup::{check_interrupted, free_port, ringlb_only, RinglbOnly};
use crate::wrk::{Load, WrkResult};

/// BACKENDS is how many backends the peer sets draw from.
const BACKENDS: usize = 4;
/// ALGORITHM is the balancing algorithm of every file: weighted, so that reweighting matters.
const ALGORITHM: &str = "smooth_weighted";
/// INITIAL is the peer set ringlb starts with: (backend index, weight).
const INITIAL: &[(usize, u32)] = &[(0, 1), (1, 1)];
/// CYCLE is what reload k writes: `CYCLE[k % 5]`. It starts from [`INITIAL`], and the set
/// running when the broken file is refused is [`INITIAL`] again, so the cycle repeats.
const CYCLE: [Step; 5] = [
    // add backend 2
    Step::Peers(&[(0, 1), (1, 1), (2, 1)]),
    // remove backend 0, backend 2 to weight 3
    Step::Peers(&[(1, 1), (2, 3)]),
    // remove backend 1, add backend 3, backend 2 back to weight 1
    Step::Peers(&[(2, 1), (3, 1)]),
    // replace every peer
    Step::Peers(&[(0, 1), (1, 1)]),
    // refused; the previous set keeps running
    Step::Broken,
];
/// LAST_RELOAD_MARGIN is how long before the end of the load the last reload must start, so
/// that its outcome is known while wrk still runs.
const LAST_RELOAD_MARGIN: Duration = Duration::from_millis(500);
/// POLL is how often the reload loop looks at the clock (and, after a SIGHUP, at `/status`).
const POLL: Duration = Duration::from_millis(10);
/// ADMIN_TIMEOUT bounds one admin request (connect, and each read).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// ReloadArgs are the options of `reload`.
#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// The ringlb binary. Default: `target/release/ringlb` in the workspace root.
    #[arg(long, value_name = "PATH")]
    ringlb: Option<PathBuf>,

    /// Seconds the wrk run lasts.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    duration: u64,

    /// Open connections wrk keeps (`-c`).
    #[arg(long, default_value_t = 64, value_name = "N")]
    connections: u32,

    /// wrk threads (`-t`).
    #[arg(long, default_value_t = 1, value_name = "N")]
    threads: u32,

    /// Milliseconds between two reloads (the first one comes one interval into the load).
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    interval_ms: u64,

    /// CPU ringlb is pinned to (`taskset -c N`); it runs one shard.
    #[arg(long, default_value_t = 0, value_name = "N")]
    proxy_cpu: usize,

    /// CPU the backends and wrk are pinned to.
    #[arg(long, default_value_t = 1, value_name = "N")]
    load_cpu: usize,

    /// Body size of every backend response, in bytes.
    #[arg(long, default_value_t = 100, value_name = "BYTES")]
    body_bytes: usize,

    /// Keep the scratch directory (ringlb's config and log, wrk's report).
    #[arg(long)]
    keep_tmp: bool,
}

/// Step is what one reload writes into the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// A good file with these peers: (backend index, weight).
    Peers(&'static [(usize, u32)]),
    /// A file ringlb must refuse: a TOML syntax error or an out-of-range weight, in turn.
    Broken,
}

/// Trigger is how a reload is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// `kill -HUP <ringlb pid>`.
    Sighup,
    /// `POST /reload` on the admin endpoint.
    Post,
}

impl Trigger {
    /// Reload k is asked for by SIGHUP when k is even, by `POST /reload` when it is odd (the
    /// cycle has odd length, so the broken file meets both in turn).
    fn of(k: usize) -> Trigger {
        if k.is_multiple_of(2) {
            Trigger::Sighup
        } else {
            Trigger::Post
        }
    }

    fn name(self) -> &'static str {
        match self {
            Trigger::Sighup => "SIGHUP",
            Trigger::Post => "POST /reload",
        }
    }
}

/// Outcome is what ringlb did with one reload.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Applied (200, or `reloads.ok` moved).
    Applied,
    /// Refused (400, or `reloads.error` moved).
    Refused,
    /// Neither: another status, an admin request that failed, no counter moved in time.
    Other(String),
}

/// Record is one reload as it happened.
#[derive(Debug, Clone)]
struct Record {
    /// When it was asked for, from the start of the load.
    at: Duration,
    /// Index into [`CYCLE`].
    step: usize,
    /// How it was asked for.
    trigger: Trigger,
    /// What ringlb did.
    outcome: Outcome,
    /// From the request until the outcome was known.
    took: Duration,
}

impl Record {
    /// The outcome is the one the file calls for.
    fn matches(&self) -> bool {
        let want = match CYCLE[self.step] {
            Step::Peers(_) => Outcome::Applied,
            Step::Broken => Outcome::Refused,
        };
        self.outcome == want
    }
}

/// Counters are ringlb's own reload counters from `GET /status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counters {
    /// `reloads.ok`.
    ok: u64,
    /// `reloads.error`.
    error: u64,
    /// `generation`.
    generation: u64,
}

/// Runs `reload`.
pub fn run(args: &ReloadArgs) -> Result<()> {
    if args.duration == 0 || args.connections == 0 || args.threads == 0 || args.interval_ms == 0 {
        bail!("--duration, --connections, --threads and --interval-ms must be at least 1");
    }
    if args.connections < args.threads {
        bail!("wrk needs --connections >= --threads");
    }
    let interval = Duration::from_millis(args.interval_ms);
    let reloads = planned_reloads(Duration::from_secs(args.duration), interval);
    if reloads == 0 {
        bail!(
            "no reload fits in {} s with --interval-ms {}; raise --duration",
            args.duration,
            args.interval_ms
        );
    }

    let RinglbOnly {
        tools,
        ringlb,
        scratch,
    } = ringlb_only(
        args.ringlb.clone(),
        args.proxy_cpu,
        args.load_cpu,
        args.body_bytes,
        args.keep_tmp,
    )?;
    let ringlb = &ringlb;

    let backends = (0..BACKENDS)
        .map(|i| Backend::start(&format!("backend-{i}"), args.load_cpu, args.body_bytes))
        .collect::<Result<Vec<_>>>()?;
    let addrs: Vec<SocketAddr> = backends.iter().map(Backend::addr).collect();
    for (i, a) in addrs.iter().enumerate() {
        eprintln!("backend {i}: {a} (pinned to CPU {})", args.load_cpu);
    }
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let admin = admin_addr.to_string();
    let initial: Vec<SocketAddr> = INITIAL.iter().map(|&(i, _)| addrs[i]).collect();
    let spec = ProxySpec {
        kind: ProxyKind::Ringlb,
        program: ringlb,
        taskset: &tools.taskset,
        cpu: args.proxy_cpu,
        port: free_port()?,
        backends: &initial,
        dir: scratch.path().join("ringlb"),
        ringlb_extra: "",
        ringlb_server: "",
        ringlb_log_level: "info",
        upgrade: false,
        ringlb_admin: &admin,
        tls: None,
        max_conns: 0,
        h2: false,
    };
    let config_path = spec.dir.join(RINGLB_CONFIG_FILE);
    let mut proxy = RunningProxy::start(&spec)?;
    proxy.wait_ready(Duration::from_secs(15))?;
    eprintln!(
        "ringlb: ready at {} (pid {}, admin {admin_addr}): {}",
        proxy.url(),
        proxy.pid(),
        proxy.command_line()
    );
    let before = counters(admin_addr).context("GET /status before the load")?;
    let served_before: Vec<u64> = backends.iter().map(Backend::served).collect();

    let load = Load {
        wrk: tools.wrk.clone(),
        taskset: tools.taskset.clone(),
        cpu: args.load_cpu,
        threads: args.threads,
        connections: args.connections,
        headers: Vec::new(),
    };
    let url = proxy.url();
    let wrk_out = scratch.path().join("wrk-reload.txt");
    let command = load.command_line(args.duration, &url);
    eprintln!("load: {command}");
    let pid = proxy.pid();
    let (wrk, records) = std::thread::scope(|s| -> Result<(WrkResult, Vec<Record>)> {
        let wrk = s.spawn(|| load.run(&url, args.duration, &wrk_out));
        let t0 = Instant::now();
        let reloader = Reloader {
            spec: &spec,
            addrs: &addrs,
            path: &config_path,
            pid,
            admin: admin_addr,
            interval,
        };
        let records = reloader.run(reloads, t0, || wrk.is_finished());
        let wrk = wrk
            .join()
            .map_err(|_| anyhow::anyhow!("the wrk thread panicked"))?;
        let records = records?;
        Ok((wrk?.0, records))
    })?;
    proxy.check_alive()?;
    let after = counters(admin_addr).context("GET /status after the load")?;
    let served: Vec<u64> = backends
        .iter()
        .zip(&served_before)
        .map(|(b, before)| b.served().saturating_sub(*before))
        .collect();
    drop(proxy);
    drop(backends);

    let summary = Summary::of(&wrk, &records, before, after);
    println!();
    print!(
        "{}",
        render(&Rendered {
            args,
            ringlb: ringlb.display().to_string(),
            command,
            wrk: &wrk,
            records: &records,
            served: &served,
            summary: &summary,
        })
    );
    if !summary.pass() {
        bail!("reload under load missed the target (see FAIL above)");
    }
    Ok(())
}

/// How many reloads fit: one every `interval` from `interval` on, each starting at least
/// [`LAST_RELOAD_MARGIN`] before the end of the load.
fn planned_reloads(duration: Duration, interval: Duration) -> usize {
    (1u32..)
        .map(|k| interval * k)
        .take_while(|at| *at + LAST_RELOAD_MARGIN <= duration)
        .count()
}

/// The `peers = [ … ]` inside for a peer set.
fn peers_toml(addrs: &[SocketAddr], set: &[(usize, u32)]) -> String {
    set.iter()
        .map(|&(i, w)| format!("{{ address = \"{}\", weight = {w} }}", addrs[i]))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The text reload k writes. The n-th broken file (n = k / 5) is a TOML syntax error (the
/// peers array not closed) when n is even, an out-of-range weight when n is odd; both keep the
/// shape of a good file, so only the mistake differs.
fn file_text(spec: &ProxySpec<'_>, addrs: &[SocketAddr], k: usize) -> String {
    match CYCLE[k % CYCLE.len()] {
        Step::Peers(set) => ringlb_config_text(spec, ALGORITHM, &peers_toml(addrs, set)),
        Step::Broken if (k / CYCLE.len()).is_multiple_of(2) => {
            ringlb_config_text(spec, ALGORITHM, &peers_toml(addrs, INITIAL))
                .replace(" ]\npool", "\npool")
        }
        Step::Broken => ringlb_config_text(
            spec,
            ALGORITHM,
            &peers_toml(addrs, INITIAL).replace("weight = 1 }", "weight = 70000 }"),
        ),
    }
}

/// Reloader rewrites ringlb's config file and asks for reloads.
struct Reloader<'a> {
    /// The spec ringlb was started with (listen address, CPU, admin address).
    spec: &'a ProxySpec<'a>,
    /// Every backend's address, by index.
    addrs: &'a [SocketAddr],
    /// ringlb's config file.
    path: &'a Path,
    /// ringlb's pid, for SIGHUP.
    pid: u32,
    /// The admin endpoint.
    admin: SocketAddr,
    /// Time between two reloads.
    interval: Duration,
}

impl Reloader<'_> {
    /// Runs `reloads` reloads, one every interval from `t0 + interval`, until they are done or
    /// `load_done()`.
    fn run(
        &self,
        reloads: usize,
        t0: Instant,
        load_done: impl Fn() -> bool,
    ) -> Result<Vec<Record>> {
        let mut records = Vec::new();
        for k in 0..reloads {
            let at = self.interval * (k as u32 + 1);
            loop {
                check_interrupted()?;
                if load_done() {
                    return Ok(records);
                }
                if t0.elapsed() >= at {
                    break;
                }
                std::thread::sleep(POLL);
            }
            let text = file_text(self.spec, self.addrs, k);
            write_atomically(self.path, &text)?;
            let trigger = Trigger::of(k);
            let started = Instant::now();
            let at = t0.elapsed();
            let outcome = match trigger {
                Trigger::Sighup => self.sighup(),
                Trigger::Post => self.post(),
            };
            let record = Record {
                at,
                step: k % CYCLE.len(),
                trigger,
                outcome,
                took: started.elapsed(),
            };
            eprintln!(
                "{:>6.2} s: reload {:>2} ({:<12}) {:<28} {} in {} ms{}",
                record.at.as_secs_f64(),
                k + 1,
                trigger.name(),
                step_label(CYCLE[record.step]),
                outcome_label(&record.outcome),
                record.took.as_millis(),
                if record.matches() { "" } else { "  MISMATCH" }
            );
            records.push(record);
        }
        Ok(records)
    }

    /// SIGHUP, then `GET /status` until a reload counter moves (at most one interval, and at
    /// least 500 ms).
    fn sighup(&self) -> Outcome {
        let before = match counters(self.admin) {
            Ok(c) => c,
            Err(e) => return Outcome::Other(format!("GET /status failed: {e:#}")),
        };
        // SAFETY: plain syscall on the pid of the child the RunningProxy guard owns and has
        // not reaped (check_alive has not seen it exit).
        if unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGHUP) } != 0 {
            return Outcome::Other(format!(
                "kill -HUP {}: {}",
                self.pid,
                std::io::Error::last_os_error()
            ));
        }
        let deadline = Instant::now() + self.interval.max(Duration::from_millis(500));
        loop {
            match counters(self.admin) {
                Ok(now) if now.ok == before.ok + 1 && now.error == before.error => {
                    return Outcome::Applied
                }
                Ok(now) if now.error == before.error + 1 && now.ok == before.ok => {
                    return Outcome::Refused
                }
                Ok(now) if (now.ok, now.error) != (before.ok, before.error) => {
                    return Outcome::Other(format!(
                        "counters moved from ok {} error {} to ok {} error {}",
                        before.ok, before.error, now.ok, now.error
                    ))
                }
                Ok(_) => {}
                Err(e) => return Outcome::Other(format!("GET /status failed: {e:#}")),
            }
            if Instant::now() > deadline {
                return Outcome::Other("no reload counter moved after SIGHUP".into());
            }
            std::thread::sleep(POLL);
        }
    }

    /// `POST /reload`: 200 applied, 400 refused.
    fn post(&self) -> Outcome {
        match admin_request(self.admin, "POST", "/reload") {
            Ok((200, _)) => Outcome::Applied,
            Ok((400, _)) => Outcome::Refused,
            Ok((code, body)) => Outcome::Other(format!("answered {code}: {}", body.trim())),
            Err(e) => Outcome::Other(format!("POST /reload failed: {e:#}")),
        }
    }
}

/// Writes `text` to `path` through a temporary file and a rename, so that ringlb never reads
/// a half-written file.
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
}

/// One admin request over a fresh connection (`Connection: close`); returns (status, body).
fn admin_request(addr: SocketAddr, method: &str, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, ADMIN_TIMEOUT)
        .with_context(|| format!("connect to the admin endpoint {addr}"))?;
    s.set_read_timeout(Some(ADMIN_TIMEOUT))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .with_context(|| format!("read the answer to {method} {path}"))?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .with_context(|| format!("no HTTP status in {:?}", head.lines().next()))?;
    Ok((status, body.to_string()))
}

/// ringlb's reload counters and generation from `GET /status`.
fn counters(addr: SocketAddr) -> Result<Counters> {
    let (code, body) = admin_request(addr, "GET", "/status")?;
    if code != 200 {
        bail!("GET /status answered {code}");
    }
    parse_counters(&body)
}

fn parse_counters(body: &str) -> Result<Counters> {
    let v: serde_json::Value =
        serde_json::from_str(body).with_context(|| format!("GET /status is not JSON: {body}"))?;
    let n = |x: &serde_json::Value, what: &str| {
        x.as_u64()
            .with_context(|| format!("GET /status has no number {what}"))
    };
    Ok(Counters {
        ok: n(&v["reloads"]["ok"], "reloads.ok")?,
        error: n(&v["reloads"]["error"], "reloads.error")?,
        generation: n(&v["generation"], "generation")?,
    })
}

/// Summary is the tally the verdict is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Summary {
    /// wrk's non-2xx/3xx count.
    bad_status: u64,
    /// wrk's socket errors (connect + read + write + timeout).
    socket_errors: u64,
    /// Reloads asked for.
    reloads: usize,
    /// Reloads applied.
    applied: usize,
    /// Reloads refused.
    refused: usize,
    /// Reloads whose outcome was not the one their file calls for.
    mismatches: usize,
    /// ringlb's counters moved by (ok, error) over the load.
    ringlb_counted: (u64, u64),
    /// ringlb's generation moved by this much.
    generations: u64,
}

impl Summary {
    fn of(wrk: &WrkResult, records: &[Record], before: Counters, after: Counters) -> Summary {
        Summary {
            bad_status: wrk.bad_status,
            socket_errors: wrk.socket_errors,
            reloads: records.len(),
            applied: records
                .iter()
                .filter(|r| r.outcome == Outcome::Applied)
                .count(),
            refused: records
                .iter()
                .filter(|r| r.outcome == Outcome::Refused)
                .count(),
            mismatches: records.iter().filter(|r| !r.matches()).count(),
            ringlb_counted: (
                after.ok.saturating_sub(before.ok),
                after.error.saturating_sub(before.error),
            ),
            generations: after.generation.saturating_sub(before.generation),
        }
    }

    /// ringlb's own counters agree with what the harness saw.
    fn counters_agree(&self) -> bool {
        self.ringlb_counted == (self.applied as u64, self.refused as u64)
            && self.generations == self.applied as u64
    }

    /// Zero non-2xx, zero socket errors, every reload as its file calls for, counters agree.
    fn pass(&self) -> bool {
        self.bad_status == 0
            && self.socket_errors == 0
            && self.reloads > 0
            && self.mismatches == 0
            && self.counters_agree()
    }
}

fn step_label(step: Step) -> String {
    match step {
        Step::Peers(set) => {
            let peers = set
                .iter()
                .map(|&(i, w)| {
                    if w == 1 {
                        format!("b{i}")
                    } else {
                        format!("b{i}×{w}")
                    }
                })
                .collect::<Vec<_>>()
                .join(",");
            format!("peers {{{peers}}}")
        }
        Step::Broken => "broken file".into(),
    }
}

fn outcome_label(o: &Outcome) -> String {
    match o {
        Outcome::Applied => "applied".into(),
        Outcome::Refused => "refused".into(),
        Outcome::Other(why) => format!("neither: {why}"),
    }
}

/// Rendered is everything the report prints.
struct Rendered<'a> {
    /// The options.
    args: &'a ReloadArgs,
    /// The ringlb binary.
    ringlb: String,
    /// wrk's command line.
    command: String,
    /// What wrk saw.
    wrk: &'a WrkResult,
    /// Every reload.
    records: &'a [Record],
    /// Requests each backend answered during the load.
    served: &'a [u64],
    /// The tally.
    summary: &'a Summary,
}

/// The report as text.
fn render(r: &Rendered<'_>) -> String {
    use std::fmt::Write as _;
    let a = r.args;
    let w = r.wrk;
    let k = &w.socket_error_kinds;
    let s = r.summary;
    let mut out = String::new();
    let cycle = CYCLE
        .iter()
        .map(|st| step_label(*st))
        .collect::<Vec<_>>()
        .join(" → ");
    let _ = writeln!(
        out,
        "reload: ringlb under load while its configuration is reloaded"
    );
    let _ = writeln!(
        out,
        "  ringlb   {} (CPU {}, 1 shard), starting on round robin over {}, then {ALGORITHM}",
        r.ringlb,
        a.proxy_cpu,
        step_label(Step::Peers(INITIAL))
    );
    let _ = writeln!(out, "  load     {}", r.command);
    let _ = writeln!(
        out,
        "  reloads  every {} ms, alternately SIGHUP and POST /reload; cycle: {cycle}",
        a.interval_ms
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "  requests             {}", w.requests);
    let _ = writeln!(out, "  req/s                {:.0}", w.req_per_s);
    let _ = writeln!(
        out,
        "  non-2xx responses    {} (wrk's \"Non-2xx or 3xx responses\")",
        w.bad_status
    );
    let _ = writeln!(
        out,
        "  socket errors        {} (connect {}, read {}, write {}, timeout {})",
        w.socket_errors, k.connect, k.read, k.write, k.timeout
    );
    let _ = writeln!(
        out,
        "  latency p50 / p99    {:.0} µs / {:.0} µs",
        w.p50_us, w.p99_us
    );
    let by = |t: Trigger, o: Outcome| {
        r.records
            .iter()
            .filter(|x| x.trigger == t && x.outcome == o)
            .count()
    };
    let _ = writeln!(
        out,
        "  reloads applied      {} (SIGHUP {}, POST {})",
        s.applied,
        by(Trigger::Sighup, Outcome::Applied),
        by(Trigger::Post, Outcome::Applied)
    );
    let _ = writeln!(
        out,
        "  reloads refused      {} (SIGHUP {}, POST {})",
        s.refused,
        by(Trigger::Sighup, Outcome::Refused),
        by(Trigger::Post, Outcome::Refused)
    );
    let _ = writeln!(
        out,
        "  reload mismatches    {} of {} (good file not applied, broken file not refused, \
         or no answer)",
        s.mismatches, s.reloads
    );
    let slowest = r.records.iter().map(|x| x.took).max().unwrap_or_default();
    let _ = writeln!(
        out,
        "  slowest reload       {} ms (request until outcome known)",
        slowest.as_millis()
    );
    let _ = writeln!(
        out,
        "  ringlb's counters    ok +{}, error +{}, generation +{}{}",
        s.ringlb_counted.0,
        s.ringlb_counted.1,
        s.generations,
        if s.counters_agree() {
            " (agree)"
        } else {
            " (DISAGREE with the harness)"
        }
    );
    let total: u64 = r.served.iter().sum();
    let split = r
        .served
        .iter()
        .map(|n| format!("{n} ({:.0} %)", *n as f64 * 100.0 / total.max(1) as f64))
        .collect::<Vec<_>>()
        .join(" / ");
    let _ = writeln!(out, "  served per backend   {split}");
    let verdict = if s.pass() {
        "PASS: 0 non-2xx, 0 socket errors, every good reload applied and every broken one \
         refused"
            .to_string()
    } else {
        let mut why = Vec::new();
        if s.bad_status > 0 {
            why.push(format!("{} non-2xx", s.bad_status));
        }
        if s.socket_errors > 0 {
            why.push(format!("{} socket errors", s.socket_errors));
        }
        if s.reloads == 0 {
            why.push("no reload ran".into());
        }
        if s.mismatches > 0 {
            why.push(format!("{} reload mismatches", s.mismatches));
        }
        if !s.counters_agree() {
            why.push("ringlb's counters disagree".into());
        }
        format!("FAIL: {}", why.join(", "))
    };
    let _ = writeln!(out, "  result               {verdict}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    fn spec(backends: &[SocketAddr]) -> ProxySpec<'_> {
        ProxySpec {
            kind: ProxyKind::Ringlb,
            program: Path::new("/bin/true"),
            taskset: Path::new("/usr/bin/taskset"),
            cpu: 0,
            port: 8080,
            backends,
            dir: PathBuf::from("/tmp/x"),
            ringlb_extra: "",
            ringlb_server: "",
            ringlb_log_level: "info",
            upgrade: false,
            ringlb_admin: "127.0.0.1:9900",
            tls: None,
            max_conns: 0,
            h2: false,
        }
    }

    #[test]
    fn reloads_fit_before_the_end_of_the_load() {
        // 1 s … 29 s: the one at 30 s would end with the load.
        assert_eq!(planned_reloads(30 * S, 1000 * MS), 29);
        assert_eq!(planned_reloads(20 * S, 1000 * MS), 19);
        assert_eq!(planned_reloads(1 * S, 1000 * MS), 0);
        assert_eq!(planned_reloads(2 * S, 250 * MS), 6);
    }

    #[test]
    fn every_fifth_reload_is_broken_and_triggers_alternate() {
        let broken: Vec<usize> = (0..15)
            .filter(|k| CYCLE[k % CYCLE.len()] == Step::Broken)
            .collect();
        assert_eq!(broken, [4, 9, 14]);
        let triggers: Vec<Trigger> = broken.iter().map(|&k| Trigger::of(k)).collect();
        assert_eq!(triggers, [Trigger::Sighup, Trigger::Post, Trigger::Sighup]);
        // The set running when the broken file is refused is the one the cycle started from.
        assert_eq!(CYCLE[3], Step::Peers(INITIAL));
    }

    #[test]
    fn files_are_good_or_broken_as_the_cycle_says() {
        let addrs: Vec<SocketAddr> = (0..4)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 9001 + i)))
            .collect();
        let spec = spec(&addrs[..2]);
        let second = file_text(&spec, &addrs, 1);
        assert!(second.contains(
            "peers = [ { address = \"127.0.0.1:9002\", weight = 1 }, \
             { address = \"127.0.0.1:9003\", weight = 3 } ]\n"
        ));
        assert!(second.contains("admin = \"127.0.0.1:9900\"\n"));
        let syntax = file_text(&spec, &addrs, 4);
        assert!(!syntax.contains(" ]\npool"), "{syntax}");
        assert!(syntax.contains("weight = 1 }\npool"), "{syntax}");
        let range = file_text(&spec, &addrs, 9);
        assert!(range.contains("weight = 70000 }"), "{range}");
        assert!(range.contains(" ]\npool"), "{range}");
    }

    #[test]
    fn status_counters_parse() {
        let c = parse_counters(
            r#"{"generation": 3, "reloads": {"ok": 3, "error": 1, "last_error": "x"}}"#,
        )
        .expect("parses");
        assert_eq!(
            c,
            Counters {
                ok: 3,
                error: 1,
                generation: 3
            }
        );
        assert!(parse_counters("{}").is_err());
    }

    #[test]
    fn verdict_needs_clean_load_matching_reloads_and_agreeing_counters() {
        let rec = |step, outcome| Record {
            at: S,
            step,
            trigger: Trigger::Post,
            outcome,
            took: MS,
        };
        let records = vec![rec(0, Outcome::Applied), rec(4, Outcome::Refused)];
        let c = |ok, error, generation| Counters {
            ok,
            error,
            generation,
        };
        let wrk = WrkResult::default();
        let s = Summary::of(&wrk, &records, c(0, 0, 0), c(1, 1, 1));
        assert!(s.pass(), "{s:?}");
        // A broken file applied is a mismatch.
        let bad = vec![rec(0, Outcome::Applied), rec(4, Outcome::Applied)];
        let s = Summary::of(&wrk, &bad, c(0, 0, 0), c(2, 0, 2));
        assert_eq!(s.mismatches, 1);
        assert!(!s.pass());
        // Socket errors fail the run.
        let wrk = WrkResult {
            socket_errors: 1,
            ..WrkResult::default()
        };
        assert!(!Summary::of(&wrk, &records, c(0, 0, 0), c(1, 1, 1)).pass());
        // Counters that disagree fail it too.
        let wrk = WrkResult::default();
        assert!(!Summary::of(&wrk, &records, c(0, 0, 0), c(2, 1, 2)).pass());
    }
}

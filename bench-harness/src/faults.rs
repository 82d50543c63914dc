//! The `faults` subcommand: ringlb under load while its backends die and come back.
//!
//! Order of a run: resolve wrk, taskset and the ringlb binary → start three backends (pinned to
//! the load CPU) → start ringlb (pinned to the proxy CPU, one shard, round robin over the three,
//! `retry` defaults, `circuit_breaker = { failures = 3, open_ms = 1000 }`, `--log-level info`
//! so that breaker transitions are logged) and wait until it answers → run wrk, and meanwhile
//! every `--kill-every` seconds kill one backend (its listener and every connection closed at
//! once) and restart it on the same port `--down-ms` later → print what wrk saw, each cycle,
//! and the breaker transitions from ringlb's log.
//!
//! Victims rotate (backend 0, 1, 2, 0, …) unless `--same-backend`; one cycle starts every
//! `--kill-every` seconds from 1 s into the run, and only cycles whose restart falls at least
//! 0.5 s before the end of the load are run, so every backend is up when wrk stops. At most one
//! backend is down at any time, so the target is zero failed requests: no non-2xx response and
//! no socket error.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::backend::Backend;
use crate::proxy::{ProxyKind, ProxySpec, RunningProxy};
use crate::setup::{check_interrupted, free_port, ringlb_only, RinglbOnly};
use crate::wrk::{Load, WrkResult};

/// BACKENDS is how many backends ringlb balances over.
const BACKENDS: usize = 3;
/// RINGLB_UPSTREAM is what the run adds to ringlb's `[[upstream]]` (retry stays at defaults).
const RINGLB_UPSTREAM: &str = "circuit_breaker = { failures = 3, open_ms = 1000 }\n";
/// FIRST_KILL is when the first cycle starts, after wrk started.
const FIRST_KILL: Duration = Duration::from_secs(1);
/// LAST_RESTART_MARGIN is how long before the end of the load the last restart must fall.
const LAST_RESTART_MARGIN: Duration = Duration::from_millis(500);
/// POLL is how often the chaos loop looks at the clock and the backends' counters.
const POLL: Duration = Duration::from_millis(10);
/// TRANSITIONS are the breaker transitions ringlb logs, as they appear in its log.
const TRANSITIONS: [&str; 4] = [
    "closed -> open",
    "open -> half_open",
    "half_open -> open",
    "half_open -> closed",
];

/// FaultsArgs are the options of `faults`.
#[derive(Debug, Args)]
pub struct FaultsArgs {
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

    /// Seconds between the starts of two kill/restart cycles.
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    kill_every: u64,

    /// How long a killed backend stays down before it is restarted, in ms.
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    down_ms: u64,

    /// Kill backend 0 every time instead of rotating over the three.
    #[arg(long)]
    same_backend: bool,

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

/// Cycle is one kill/restart of one backend, times from the start of the load.
#[derive(Debug, Clone)]
struct Cycle {
    /// Which backend.
    victim: usize,
    /// When it was killed.
    killed: Duration,
    /// When it was restarted (`None`: the load ended first; restarted afterwards).
    restarted: Option<Duration>,
    /// Its request counter when it was killed.
    served_at_kill: u64,
    /// Requests it answered while down (must be 0: the kill works).
    served_while_down: u64,
    /// Its request counter when it was restarted.
    served_at_restart: u64,
    /// How long after the restart it answered its first request (ringlb sent it traffic
    /// again: its breaker let a trial through); `None` if it did not before the load ended.
    back_after: Option<Duration>,
}

/// Runs `faults`.
pub fn run(args: &FaultsArgs) -> Result<()> {
    if args.duration == 0 || args.connections == 0 || args.threads == 0 || args.kill_every == 0 {
        bail!("--duration, --connections, --threads and --kill-every must be at least 1");
    }
    if args.connections < args.threads {
        bail!("wrk needs --connections >= --threads");
    }
    let down = Duration::from_millis(args.down_ms);
    let period = Duration::from_secs(args.kill_every);
    if down.is_zero() || down >= period {
        bail!("--down-ms must be more than 0 and less than --kill-every");
    }
    let plan = plan(
        Duration::from_secs(args.duration),
        period,
        down,
        args.same_backend,
    );
    if plan.is_empty() {
        bail!(
            "no kill/restart cycle fits in {} s (first kill at {:?}, down {:?}); \
             raise --duration",
            args.duration,
            FIRST_KILL,
            down
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

    let mut backends = (0..BACKENDS)
        .map(|i| Backend::start(&format!("backend-{i}"), args.load_cpu, args.body_bytes))
        .collect::<Result<Vec<_>>>()?;
    let addrs: Vec<_> = backends.iter().map(Backend::addr).collect();
    for (i, a) in addrs.iter().enumerate() {
        eprintln!("backend {i}: {a} (pinned to CPU {})", args.load_cpu);
    }
    let spec = ProxySpec {
        kind: ProxyKind::Ringlb,
        program: ringlb,
        taskset: &tools.taskset,
        cpu: args.proxy_cpu,
        port: free_port()?,
        backends: &addrs,
        dir: scratch.path().join("ringlb"),
        ringlb_extra: RINGLB_UPSTREAM,
        ringlb_server: "",
        ringlb_log_level: "info",
        upgrade: false,
        ringlb_admin: "",
        tls: None,
        max_conns: 0,
        h2: false,
    };
    let mut proxy = RunningProxy::start(&spec)?;
    proxy.wait_ready(Duration::from_secs(15))?;
    eprintln!(
        "ringlb: ready at {} (pid {}): {}",
        proxy.url(),
        proxy.pid(),
        proxy.command_line()
    );
    // The startup probe's request should not count in the split.
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
    let wrk_out = scratch.path().join("wrk-faults.txt");
    let command = load.command_line(args.duration, &url);
    eprintln!("load: {command}");
    let (wrk, cycles) = std::thread::scope(|s| -> Result<(WrkResult, Vec<Cycle>)> {
        let wrk = s.spawn(|| load.run(&url, args.duration, &wrk_out));
        let t0 = Instant::now();
        let chaos = chaos(&mut backends, &plan, t0, || wrk.is_finished());
        let wrk = wrk
            .join()
            .map_err(|_| anyhow::anyhow!("the wrk thread panicked"))?;
        let cycles = chaos?;
        Ok((wrk?.0, cycles))
    })?;
    for b in &mut backends {
        b.restart()?;
    }
    proxy.check_alive()?;
    let served: Vec<u64> = backends
        .iter()
        .zip(&served_before)
        .map(|(b, before)| b.served().saturating_sub(*before))
        .collect();
    let log = proxy.log_text("stderr.log");
    let transitions: Vec<(&str, usize)> = TRANSITIONS
        .iter()
        .map(|t| (*t, log.matches(&format!("circuit breaker {t}")).count()))
        .collect();
    drop(proxy);
    drop(backends);

    let failed = wrk.bad_status + wrk.socket_errors;
    println!();
    print!(
        "{}",
        render(&Rendered {
            args,
            ringlb: ringlb.display().to_string(),
            command,
            wrk: &wrk,
            cycles: &cycles,
            served: &served,
            transitions: &transitions,
        })
    );
    if failed > 0 {
        bail!("{failed} failed requests with at most one of {BACKENDS} backends down");
    }
    Ok(())
}

/// PlannedCycle is when to kill which backend, and when to restart it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PlannedCycle {
    /// Which backend.
    victim: usize,
    /// When to kill it, from the start of the load.
    kill_at: Duration,
    /// When to restart it.
    restart_at: Duration,
}

/// The cycles of a run: one every `period` from [`FIRST_KILL`], each down for `down`, as long
/// as the restart falls [`LAST_RESTART_MARGIN`] before the end of the load.
fn plan(duration: Duration, period: Duration, down: Duration, same: bool) -> Vec<PlannedCycle> {
    (0u32..)
        .map(|k| PlannedCycle {
            victim: if same { 0 } else { k as usize % BACKENDS },
            kill_at: FIRST_KILL + period * k,
            restart_at: FIRST_KILL + period * k + down,
        })
        .take_while(|c| c.restart_at + LAST_RESTART_MARGIN <= duration)
        .collect()
}

/// Runs the plan against `backends` until it is done or `load_done()`; watches each restarted
/// backend until it serves again.
fn chaos(
    backends: &mut [Backend],
    plan: &[PlannedCycle],
    t0: Instant,
    load_done: impl Fn() -> bool,
) -> Result<Vec<Cycle>> {
    let mut cycles: Vec<Cycle> = Vec::new();
    // Waits until `at` (from t0) while watching restarted backends; false once the load ended.
    let wait =
        |cycles: &mut Vec<Cycle>, backends: &[Backend], at: Option<Duration>| -> Result<bool> {
            loop {
                check_interrupted()?;
                let now = t0.elapsed();
                for c in cycles.iter_mut() {
                    if let (Some(r), None) = (c.restarted, c.back_after) {
                        if backends[c.victim].served() > c.served_at_restart {
                            c.back_after = Some(now.saturating_sub(r));
                        }
                    }
                }
                if load_done() {
                    return Ok(false);
                }
                if at.is_some_and(|at| now >= at) {
                    return Ok(true);
                }
                std::thread::sleep(POLL);
            }
        };
    for p in plan {
        if !wait(&mut cycles, backends, Some(p.kill_at))? {
            break;
        }
        let b = &mut backends[p.victim];
        let served_at_kill = b.served();
        b.kill();
        let killed = t0.elapsed();
        eprintln!(
            "{:>6.2} s: killed backend {}",
            killed.as_secs_f64(),
            p.victim
        );
        cycles.push(Cycle {
            victim: p.victim,
            killed,
            restarted: None,
            served_at_kill,
            served_while_down: 0,
            served_at_restart: 0,
            back_after: None,
        });
        let ended = !wait(&mut cycles, backends, Some(p.restart_at))?;
        let b = &mut backends[p.victim];
        let served = b.served();
        b.restart()
            .with_context(|| format!("restart backend {}", p.victim))?;
        let restarted = t0.elapsed();
        let c = cycles.last_mut().context("the cycle was just pushed")?;
        c.served_while_down = served - c.served_at_kill;
        c.served_at_restart = served;
        if ended {
            break;
        }
        c.restarted = Some(restarted);
        eprintln!(
            "{:>6.2} s: restarted backend {} on its port",
            restarted.as_secs_f64(),
            p.victim
        );
    }
    wait(&mut cycles, backends, None)?;
    Ok(cycles)
}

/// Rendered is everything the report prints.
struct Rendered<'a> {
    /// The options.
    args: &'a FaultsArgs,
    /// The ringlb binary.
    ringlb: String,
    /// wrk's command line.
    command: String,
    /// What wrk saw.
    wrk: &'a WrkResult,
    /// The kill/restart cycles.
    cycles: &'a [Cycle],
    /// Requests each backend answered during the load.
    served: &'a [u64],
    /// Breaker transitions ringlb logged, by kind.
    transitions: &'a [(&'a str, usize)],
}

/// The report as text.
fn render(r: &Rendered<'_>) -> String {
    use std::fmt::Write as _;
    let a = r.args;
    let w = r.wrk;
    let k = &w.socket_error_kinds;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "faults: ringlb under load while backends are killed and restarted"
    );
    let _ = writeln!(
        s,
        "  ringlb  {} (CPU {}, 1 shard), round robin over {BACKENDS} backends, retry defaults, {}",
        r.ringlb,
        a.proxy_cpu,
        RINGLB_UPSTREAM.trim()
    );
    let _ = writeln!(s, "  load    {}", r.command);
    let _ = writeln!(
        s,
        "  chaos   every {} s one backend ({}) killed for {} ms (listener and connections \
         closed), then restarted on its port",
        a.kill_every,
        if a.same_backend {
            "always backend 0"
        } else {
            "rotating 0, 1, 2, …"
        },
        a.down_ms
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "  cycle  backend  killed at  restarted at  served while down  serving again after"
    );
    for (i, c) in r.cycles.iter().enumerate() {
        let restarted = c.restarted.map_or_else(
            || "after the load".into(),
            |t| format!("{:.2} s", t.as_secs_f64()),
        );
        let back = match (c.restarted, c.back_after) {
            (Some(_), Some(d)) => format!("{} ms", d.as_millis()),
            (Some(_), None) => "not before the load ended".into(),
            (None, _) => "-".into(),
        };
        let _ = writeln!(
            s,
            "  {:>5}  {:>7}  {:>7.2} s  {:>12}  {:>17}  {back}",
            i + 1,
            c.victim,
            c.killed.as_secs_f64(),
            restarted,
            c.served_while_down
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "  requests             {}", w.requests);
    let _ = writeln!(s, "  req/s                {:.0}", w.req_per_s);
    let _ = writeln!(s, "  non-2xx responses    {}", w.bad_status);
    let _ = writeln!(
        s,
        "  socket errors        {} (connect {}, read {}, write {}, timeout {})",
        w.socket_errors, k.connect, k.read, k.write, k.timeout
    );
    let _ = writeln!(
        s,
        "  latency p50 / p99    {:.0} µs / {:.0} µs",
        w.p50_us, w.p99_us
    );
    let _ = writeln!(s, "  kill/restart cycles  {}", r.cycles.len());
    let total: u64 = r.served.iter().sum();
    let split = r
        .served
        .iter()
        .map(|n| format!("{n} ({:.0} %)", *n as f64 * 100.0 / total.max(1) as f64))
        .collect::<Vec<_>>()
        .join(" / ");
    let _ = writeln!(s, "  served per backend   {split}");
    let trans = r
        .transitions
        .iter()
        .map(|(t, n)| format!("{t}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(s, "  breaker transitions  {trans}");
    let failed = w.bad_status + w.socket_errors;
    let _ = writeln!(
        s,
        "  result               {}",
        if failed == 0 {
            "PASS: no failed request while at least two of three backends were up".to_string()
        } else {
            format!("FAIL: {failed} failed requests")
        }
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn plan_rotates_victims_and_ends_before_the_load() {
        let p = plan(15 * S, 5 * S, 2000 * MS, false);
        let got: Vec<(usize, u64, u64)> = p
            .iter()
            .map(|c| {
                (
                    c.victim,
                    c.kill_at.as_millis() as u64,
                    c.restart_at.as_millis() as u64,
                )
            })
            .collect();
        assert_eq!(got, [(0, 1000, 3000), (1, 6000, 8000), (2, 11000, 13000)]);
        // 30 s: six cycles, the last restart at 28 s.
        let p = plan(30 * S, 5 * S, 2000 * MS, false);
        assert_eq!(p.len(), 6);
        assert_eq!(p[3].victim, 0);
        assert_eq!(p[5].restart_at, 28 * S);
        // The same backend every time.
        assert!(plan(30 * S, 5 * S, 2000 * MS, true)
            .iter()
            .all(|c| c.victim == 0));
        // A restart must fall 0.5 s before the end.
        assert!(plan(3 * S, 5 * S, 1600 * MS, false).is_empty());
        assert_eq!(plan(3 * S, 5 * S, 1500 * MS, false).len(), 1);
    }
}

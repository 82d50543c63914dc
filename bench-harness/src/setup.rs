//! Setup shared by every subcommand: finding the tools and the ringlb binary, CPU pinning, the
//! scratch directory, free ports, and the Ctrl-C flag that lets guards clean up.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::proxy::ProxyKind;

/// INSTALL_HINT is the command that installs every external tool the harness uses.
pub const INSTALL_HINT: &str = "apt-get install -y nginx haproxy wrk nghttp2-client";

/// SetupArgs are the options every subcommand shares: which proxies, which binaries, which CPUs.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// The ringlb binary. Default: `target/release/ringlb` in the workspace root.
    #[arg(long, value_name = "PATH")]
    pub ringlb: Option<PathBuf>,

    /// Which proxies to run, comma-separated. Default: all three.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ringlb,nginx,haproxy"
    )]
    pub only: Vec<ProxyKind>,

    /// CPU the proxies are pinned to (`taskset -c N`); each runs one worker.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub proxy_cpu: usize,

    /// CPU the backends and the load generator are pinned to.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub load_cpu: usize,

    /// Body size of every backend response, in bytes.
    #[arg(long, default_value_t = 100, value_name = "BYTES")]
    pub body_bytes: usize,

    /// Lines added to ringlb's `[[upstream]]` (e.g. `max_conns = 100000`), to measure what a
    /// setting costs: run once with and once without.
    #[arg(long, default_value = "", value_name = "TOML")]
    pub ringlb_upstream: String,

    /// Lines added to ringlb's `[server]` table (e.g. `splice = true`), to measure a server
    /// setting the same way.
    #[arg(long, default_value = "", value_name = "TOML")]
    pub ringlb_server: String,

    /// Keep the scratch directory (generated configs, proxy logs) instead of deleting it.
    #[arg(long)]
    pub keep_tmp: bool,
}

/// Tools are the resolved paths of the external programs a run uses; `None` = not found.
#[derive(Debug)]
pub struct Tools {
    /// The load generator (required).
    pub wrk: PathBuf,
    /// Pins the proxies (required; util-linux).
    pub taskset: PathBuf,
    /// Each selected proxy that was found, with its binary, in `--only` order.
    pub proxies: Vec<(ProxyKind, PathBuf)>,
}

impl SetupArgs {
    /// Resolves the tools and binaries, printing a clear message for each one that is missing.
    /// Fails when wrk, taskset or the ringlb binary (if selected) is missing, or when no
    /// selected proxy is left.
    pub fn resolve_tools(&self) -> Result<Tools> {
        let Some(wrk) = find_program("wrk") else {
            bail!("`wrk` is not installed (not on PATH); install it with: {INSTALL_HINT}");
        };
        let Some(taskset) = find_program("taskset") else {
            bail!("`taskset` is not installed; install it with: apt-get install -y util-linux");
        };
        let mut proxies = Vec::new();
        for &kind in &self.only {
            if proxies.iter().any(|(k, _)| *k == kind) {
                continue;
            }
            match kind {
                ProxyKind::Ringlb => {
                    let path = self.ringlb_path();
                    if !path.is_file() {
                        bail!(
                            "ringlb binary not found at {}; build it with `cargo build --release` \
                             in the workspace root, or pass --ringlb PATH \
                             (or leave it out with --only nginx,haproxy)",
                            path.display()
                        );
                    }
                    proxies.push((kind, path));
                }
                ProxyKind::Nginx | ProxyKind::Haproxy => match find_program(kind.name()) {
                    Some(path) => proxies.push((kind, path)),
                    None => eprintln!(
                        "warning: `{}` is not installed (not on PATH); skipping it. \
                         Install it with: {INSTALL_HINT}",
                        kind.name()
                    ),
                },
            }
        }
        if proxies.is_empty() {
            bail!("no proxy left to measure");
        }
        Ok(Tools {
            wrk,
            taskset,
            proxies,
        })
    }

    /// The ringlb binary to run: `--ringlb`, else `<workspace>/target/release/ringlb`.
    fn ringlb_path(&self) -> PathBuf {
        match &self.ringlb {
            Some(p) => p.clone(),
            None => {
                let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
                manifest
                    .parent()
                    .unwrap_or(manifest)
                    .join("target/release/ringlb")
            }
        }
    }

    /// Checks that both CPUs are ones this process may run on.
    pub fn check_cpus(&self) -> Result<()> {
        let allowed = allowed_cpus()?;
        for (what, cpu) in [
            ("--proxy-cpu", self.proxy_cpu),
            ("--load-cpu", self.load_cpu),
        ] {
            if !allowed.contains(&cpu) {
                bail!("{what} {cpu} is not in this process's CPU set {allowed:?}");
            }
        }
        if self.proxy_cpu == self.load_cpu {
            eprintln!(
                "warning: proxy and load generator share CPU {}; results will mix their costs",
                self.proxy_cpu
            );
        }
        Ok(())
    }
}

/// Finds `name` on PATH, then in the sbin directories that non-root PATHs often lack
/// (nginx and haproxy live in /usr/sbin on Debian).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The CPUs this process may run on (sched_getaffinity).
pub fn allowed_cpus() -> Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; all-zero is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size we pass.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
    }
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `set` was filled by the kernel; CPU_ISSET only reads bit `cpu` < CPU_SETSIZE.
    Ok((0..max)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; all-zero is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes bit `cpu` of a valid set; callers pass CPUs from allowed_cpus().
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 = the calling thread; `set` is a valid cpu_set_t of the size we pass.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; a small race we accept on loopback).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// RinglbOnly is what a subcommand that runs ringlb alone (`faults`, `reload`) starts from.
pub struct RinglbOnly {
    /// The load generator and taskset (and ringlb, as the only proxy).
    pub tools: Tools,
    /// The ringlb binary.
    pub ringlb: PathBuf,
    /// The run's scratch directory.
    pub scratch: ScratchDir,
}

/// The common start of a ringlb-only subcommand: signal handlers, the tools and the ringlb
/// binary found, the CPUs checked, a scratch directory.
pub fn ringlb_only(
    ringlb: Option<PathBuf>,
    proxy_cpu: usize,
    load_cpu: usize,
    body_bytes: usize,
    keep_tmp: bool,
) -> Result<RinglbOnly> {
    install_signal_handlers();
    let setup = SetupArgs {
        ringlb,
        only: vec![ProxyKind::Ringlb],
        proxy_cpu,
        load_cpu,
        body_bytes,
        ringlb_upstream: String::new(),
        ringlb_server: String::new(),
        keep_tmp,
    };
    let tools = setup.resolve_tools()?;
    setup.check_cpus()?;
    let Some((_, ringlb)) = tools.proxies.first() else {
        bail!("ringlb binary not found");
    };
    let ringlb = ringlb.clone();
    Ok(RinglbOnly {
        tools,
        ringlb,
        scratch: ScratchDir::create(keep_tmp)?,
    })
}

/// ScratchDir is a fresh directory under the system temp dir, removed on drop unless kept.
pub struct ScratchDir {
    /// The directory.
    path: PathBuf,
    /// `--keep-tmp`: leave it for inspection.
    keep: bool,
}

impl ScratchDir {
    /// Creates `$TMPDIR/ringlb-bench-<pid>-<nanos>`.
    pub fn create(keep: bool) -> Result<ScratchDir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("ringlb-bench-{}-{nanos:09}", std::process::id()));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("create scratch dir {}", path.display()))?;
        Ok(ScratchDir { path, keep })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept scratch dir {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// INTERRUPTED is set by SIGINT/SIGTERM; long waits poll it and return an error so that the
/// guards (proxies, backends, scratch dir) run their Drop.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Installs the SIGINT/SIGTERM handler that sets the interrupted flag.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe; the
        // sigaction struct is zero-initialised (empty mask, no flags) and fully valid.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Fails with "interrupted" once Ctrl-C (or SIGTERM) arrived.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sets PR_SET_PDEATHSIG = SIGKILL on a child, so that it dies if the harness is killed
/// without a chance to run its guards (SIGKILL, abort).
pub fn kill_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent; it is the only
    // call made between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            Ok(())
        });
    }
}

//! CPU time and resident memory of a process tree, from `/proc`.
//!
//! A proxy is a tree: ringlb and HAProxy are one process (all threads are counted by the
//! process's own `stat`), nginx is a master with worker children. CPU time of the tree is the
//! sum of `utime + stime` (fields 14 and 15 of `/proc/<pid>/stat`) over every live process in
//! it; the difference of two samples is the CPU the proxy spent in between.

use std::collections::HashMap;

/// process_tree is a root pid followed by all its live descendants.
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(stat) = read_stat(pid) {
                children.entry(stat.ppid).or_default().push(pid);
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        if let Some(kids) = children.get(&tree[i]) {
            tree.extend(kids.iter().copied());
        }
        i += 1;
    }
    tree
}

/// CPU seconds (user + system) spent so far by the tree rooted at `root`.
pub fn tree_cpu_seconds(root: u32) -> f64 {
    let ticks: u64 = process_tree(root)
        .into_iter()
        .filter_map(read_stat)
        .map(|s| s.utime + s.stime)
        .sum();
    ticks as f64 / clock_ticks_per_second()
}

/// CPU time spent so far by the tree rooted at `root`, in ns, from the scheduler's own
/// accounting (`/proc/<pid>/task/<tid>/schedstat`, first field: ns on a CPU), summed over every
/// thread of every live process in the tree. Far finer than the 10 ms ticks of `stat`, which
/// matters for an idle proxy; falls back to [`tree_cpu_seconds`] when schedstat is missing.
pub fn tree_cpu_ns(root: u32) -> u64 {
    let mut total = 0u64;
    let mut any = false;
    for pid in process_tree(root) {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let path = t.path().join("schedstat");
            if let Some(ns) = std::fs::read_to_string(path)
                .ok()
                .and_then(|text| parse_schedstat(&text))
            {
                total += ns;
                any = true;
            }
        }
    }
    if any {
        total
    } else {
        (tree_cpu_seconds(root) * 1e9) as u64
    }
}

/// The first field of a `schedstat` line (`ns_on_cpu ns_waiting timeslices`).
fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_ascii_whitespace().next()?.parse().ok()
}

/// CPU seconds spent so far by one thread of this process (by its kernel thread id).
pub fn own_thread_cpu_seconds(tid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
        .ok()
        .and_then(|t| parse_stat(&t))
        .map_or(0.0, |s| {
            (s.utime + s.stime) as f64 / clock_ticks_per_second()
        })
}

/// CPU seconds spent by all children of this process that have been waited for so far.
pub fn reaped_children_cpu_seconds() -> f64 {
    // SAFETY: rusage is plain data; getrusage fills it and reads nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// Resident set size of the tree rooted at `root`, in KiB (VmRSS summed over its processes).
pub fn tree_rss_kib(root: u32) -> u64 {
    process_tree(root).into_iter().filter_map(rss_kib).sum()
}

/// CoreTicks is one CPU's busy and total time from `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct CoreTicks {
    /// Everything but idle and iowait.
    busy: u64,
    /// All states.
    total: u64,
}

impl CoreTicks {
    /// Reads the `cpuN` line of `/proc/stat`; zeros when it is missing.
    pub fn read(cpu: usize) -> CoreTicks {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let name = format!("cpu{cpu}");
        text.lines()
            .find(|l| l.split_ascii_whitespace().next() == Some(name.as_str()))
            .map(parse_core_line)
            .unwrap_or_default()
    }

    /// How busy the core was between `earlier` and `self`, in % (all processes, not just
    /// ours: this is how we see other load stealing the proxy's or the load generator's core).
    pub fn busy_percent_since(&self, earlier: &CoreTicks) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let busy = self.busy.checked_sub(earlier.busy)?;
        (total > 0).then(|| busy as f64 * 100.0 / total as f64)
    }
}

/// Parses `cpuN user nice system idle iowait irq softirq steal guest guest_nice`. guest time is
/// already included in user, so only the first eight count.
fn parse_core_line(line: &str) -> CoreTicks {
    let f: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = f.iter().sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    CoreTicks {
        busy: total.saturating_sub(idle),
        total,
    }
}

/// The fields of `/proc/<pid>/stat` we use.
struct Stat {
    /// Field 4: parent pid.
    ppid: u32,
    /// Field 14: user-mode CPU time, in clock ticks.
    utime: u64,
    /// Field 15: kernel-mode CPU time, in clock ticks.
    stime: u64,
}

fn read_stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may itself hold
/// spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let after = &text[text.rfind(')')? + 1..];
    // `after` starts at field 3 (state): field N is at index N - 3.
    let f: Vec<&str> = after.split_ascii_whitespace().collect();
    Some(Stat {
        ppid: f.get(1)?.parse().ok()?,
        utime: f.get(11)?.parse().ok()?,
        stime: f.get(12)?.parse().ok()?,
    })
}

fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_ascii_whitespace().nth(1)?.parse().ok()
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_stat_counts_fields_after_the_command_name() {
        let line = "1234 (nginx: worker (x)) S 1200 1200 1200 0 -1 4194624 10 0 0 0 \
                    517 83 0 0 20 0 1 0 100 1000 200";
        let s = parse_stat(line).expect("parses");
        assert_eq!((s.ppid, s.utime, s.stime), (1200, 517, 83));
    }

    #[test]
    fn core_line_counts_idle_and_iowait_as_not_busy() {
        let before = parse_core_line("cpu1 100 0 50 800 50 0 0 0 0 0");
        let after = parse_core_line("cpu1 250 0 100 850 50 0 0 0 0 0");
        assert_eq!(after.busy_percent_since(&before), Some(80.0));
        assert!(CoreTicks::read(0).total > 0);
    }

    #[test]
    fn schedstat_gives_nanoseconds_and_grows_with_work() {
        assert_eq!(parse_schedstat("123456789 2000 17\n"), Some(123_456_789));
        assert_eq!(parse_schedstat(""), None);
        let me = std::process::id();
        let before = tree_cpu_ns(me);
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(tree_cpu_ns(me) > before);
    }

    #[test]
    fn own_process_is_its_tree_root_and_has_rss() {
        let me = std::process::id();
        assert_eq!(process_tree(me)[0], me);
        assert!(tree_rss_kib(me) > 0);
    }

    #[test]
    fn tree_cpu_counts_a_busy_child() {
        use std::time::{Duration, Instant};
        let me = std::process::id();
        let mut child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .expect("spawn a busy shell");
        let pid = child.id();
        assert!(process_tree(me).contains(&pid), "the child is in the tree");
        // The child burns CPU: its tree's CPU time grows past 50 ms (wall time is no measure
        // on a shared machine, so wait for it, 30 s at most).
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut burnt = tree_cpu_seconds(pid);
        while burnt < 0.05 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            burnt = tree_cpu_seconds(pid);
        }
        // Sampled in this order, each later value only grew: this process's tree holds at
        // least its own CPU time plus the child's.
        let own = read_stat(me).map_or(0, |s| s.utime + s.stime) as f64 / clock_ticks_per_second();
        let whole = tree_cpu_seconds(me);
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            burnt >= 0.05,
            "a busy child shows {burnt} CPU seconds after 30 s"
        );
        // (Whole ticks divided by the tick rate: compare with a margin far below one tick, as
        // 0.01 + 0.05 > 0.06 in floating point.)
        assert!(
            whole + 1e-9 >= own + burnt,
            "tree {whole} s < own {own} s + child {burnt} s"
        );
    }
}

//! CPU sets: `cpus = "0-3,8"` lists, NUMA node cpulists, the process's allowed set.
//!
//! A CPU set is always a sorted, deduplicated `Vec<usize>` of CPU numbers below [`MAX_CPUS`].
//! The text form is the Linux cpulist format (`0-3,8,10-11`), as used by `taskset -c`,
//! `/sys/devices/system/node/node<N>/cpulist` and `cpus = "…"` in the config file.
use std::path::Path;

/// MAX_CPUS is the number of CPU ids ringlb handles: CPU numbers are `0..MAX_CPUS` (4096).
pub const MAX_CPUS: usize = 4096;

/// The sysfs directory holding one `node<N>` directory per NUMA node.
const SYSFS_NODE_DIR: &str = "/sys/devices/system/node";

/// CpuSetError is a malformed CPU list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cpu list: {0}")]
pub struct CpuSetError(pub String);

/// Parses a Linux cpulist such as `0-3,8,10-11` into a sorted, deduplicated list.
///
/// Items are single CPUs (`8`) or inclusive ranges (`0-3`), separated by commas; whitespace
/// around items is ignored (so a sysfs file's trailing newline is fine). Errors: an empty
/// list or item, a reversed range (`3-0`), anything that is not a number, and CPU numbers
/// `>= MAX_CPUS`.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, CpuSetError> {
    if s.trim().is_empty() {
        return Err(CpuSetError("empty list".to_string()));
    }
    let mut cpus = Vec::new();
    for item in s.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(CpuSetError(format!("empty item in `{}`", s.trim())));
        }
        let (first, last) = match item.split_once('-') {
            Some((a, b)) => (parse_cpu(a, item)?, parse_cpu(b, item)?),
            None => {
                let cpu = parse_cpu(item, item)?;
                (cpu, cpu)
            }
        };
        if first > last {
            return Err(CpuSetError(format!(
                "reversed range `{item}` (write `{last}-{first}`)"
            )));
        }
        cpus.extend(first..=last);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Parses one CPU number of `item`.
fn parse_cpu(s: &str, item: &str) -> Result<usize, CpuSetError> {
    let s = s.trim();
    // `usize::from_str` accepts a leading `+`; a cpulist does not.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CpuSetError(format!(
            "`{item}` is not a cpu number or range"
        )));
    }
    match s.parse::<usize>() {
        Ok(cpu) if cpu < MAX_CPUS => Ok(cpu),
        _ => Err(CpuSetError(format!(
            "cpu {s} is out of range (at most {})",
            MAX_CPUS - 1
        ))),
    }
}

/// Formats a sorted CPU list in cpulist form, collapsing runs: `[0, 1, 2, 3, 8]` → `0-3,8`.
/// An empty list formats as `(none)`.
pub fn format_cpu_list(cpus: &[usize]) -> String {
    if cpus.is_empty() {
        return "(none)".to_string();
    }
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
        i += 1;
    }
    out
}

/// The CPUs this process may run on (sched_getaffinity), ascending.
///
/// Falls back to `0..std::thread::available_parallelism()` (or `[0]`) when the affinity
/// mask cannot be read. Never empty.
pub fn allowed_cpus() -> Vec<usize> {
    match affinity_cpus() {
        Some(cpus) if !cpus.is_empty() => cpus,
        _ => {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            (0..n.min(MAX_CPUS)).collect()
        }
    }
}

/// The affinity mask of the calling thread, or `None` if the kernel refuses.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn affinity_cpus() -> Option<Vec<usize>> {
    const WORD_BITS: usize = u64::BITS as usize;
    // A mask of MAX_CPUS bits (larger than libc's 1024-bit cpu_set_t), so hosts with more
    // than 1024 CPUs still work.
    let mut mask = [0u64; MAX_CPUS / WORD_BITS];
    // SAFETY: `mask` is a live, writable buffer of exactly `size_of_val(&mask)` bytes, which
    // is the size we pass; sched_getaffinity writes at most that many bytes, and a cpu mask
    // is plain bits, valid for any contents (cpu_set_t is itself an array of integers).
    let rc = unsafe {
        libc::sched_getaffinity(
            0,
            std::mem::size_of_val(&mask),
            mask.as_mut_ptr().cast::<libc::cpu_set_t>(),
        )
    };
    if rc != 0 {
        return None;
    }
    let cpus = (0..MAX_CPUS)
        .filter(|&cpu| mask[cpu / WORD_BITS] & (1u64 << (cpu % WORD_BITS)) != 0)
        .collect();
    Some(cpus)
}

/// The affinity mask is not available on this OS; use the fallback.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn affinity_cpus() -> Option<Vec<usize>> {
    None
}

/// The CPUs of NUMA node `node`, from `/sys/devices/system/node/node<N>/cpulist`.
///
/// Errors (as a message for a config error) when the node does not exist, its cpulist
/// cannot be read or parsed, or the node has no CPUs (a memory-only node).
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "for NUMA-aware cpu sets, not wired to the config yet; tested through numa_node_cpus_in"
    )
)]
pub fn numa_node_cpus(node: usize) -> Result<Vec<usize>, String> {
    numa_node_cpus_in(Path::new(SYSFS_NODE_DIR), node)
}

/// [`numa_node_cpus`] with the sysfs node directory as a parameter, for tests.
pub(crate) fn numa_node_cpus_in(node_dir: &Path, node: usize) -> Result<Vec<usize>, String> {
    let path = node_dir.join(format!("node{node}")).join("cpulist");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "NUMA node {node} does not exist ({} not found)",
                path.display()
            ))
        }
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    if text.trim().is_empty() {
        return Err(format!("NUMA node {node} has no CPUs"));
    }
    parse_cpu_list(&text).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Vec<usize>, CpuSetError> {
        parse_cpu_list(s)
    }

    #[test]
    fn parses_singles_and_ranges() {
        assert_eq!(parse("0").unwrap(), vec![0]);
        assert_eq!(parse("0-3").unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(parse("0-3,8,10-11").unwrap(), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse("5-5").unwrap(), vec![5]);
        assert_eq!(parse("4095").unwrap(), vec![4095]);
    }

    #[test]
    fn sorts_and_dedups() {
        assert_eq!(parse("8,0-2,1,2-3").unwrap(), vec![0, 1, 2, 3, 8]);
    }

    #[test]
    fn tolerates_whitespace_and_sysfs_newline() {
        assert_eq!(parse("0-1\n").unwrap(), vec![0, 1]);
        assert_eq!(parse(" 0 - 1 , 4 ").unwrap(), vec![0, 1, 4]);
    }

    #[test]
    fn rejects_malformed_lists() {
        for bad in [
            "", " ", "\n", ",", "0,", ",0", "0,,1", "a", "0-", "-3", "1-2-3", "0x1", "+1", "-1",
            "1.5", "0-3;8",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn rejects_reversed_range() {
        let e = parse("3-0").unwrap_err();
        assert!(e.to_string().contains("reversed range `3-0`"), "{e}");
    }

    #[test]
    fn rejects_cpus_beyond_the_limit() {
        assert!(parse("4096").is_err());
        assert!(parse("0-4096").is_err());
        assert!(parse("99999999999999999999999").is_err());
        let e = parse("5000").unwrap_err();
        assert!(e.to_string().contains("cpu 5000 is out of range"), "{e}");
    }

    #[test]
    fn formats_runs() {
        assert_eq!(format_cpu_list(&[]), "(none)");
        assert_eq!(format_cpu_list(&[3]), "3");
        assert_eq!(format_cpu_list(&[0, 1]), "0-1");
        assert_eq!(format_cpu_list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(format_cpu_list(&[1, 3, 5]), "1,3,5");
    }

    #[test]
    fn format_round_trips() {
        let cpus = parse("0-3,8,10-11,63-65").unwrap();
        assert_eq!(parse(&format_cpu_list(&cpus)).unwrap(), cpus);
    }

    #[test]
    fn allowed_cpus_is_sorted_and_non_empty() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]), "{cpus:?}");
        assert!(cpus.iter().all(|&c| c < MAX_CPUS));
    }

    /// A fresh, empty directory under the system temp dir, unique to this test process.
    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ringlb-cpus-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn reads_numa_node_cpulists() {
        let dir = temp_dir("numa");
        std::fs::create_dir_all(dir.join("node0")).unwrap();
        std::fs::write(dir.join("node0/cpulist"), "0-3,8\n").unwrap();
        std::fs::create_dir_all(dir.join("node1")).unwrap();
        std::fs::write(dir.join("node1/cpulist"), "\n").unwrap();
        std::fs::create_dir_all(dir.join("node2")).unwrap();
        std::fs::write(dir.join("node2/cpulist"), "garbage\n").unwrap();

        assert_eq!(numa_node_cpus_in(&dir, 0).unwrap(), vec![0, 1, 2, 3, 8]);
        let e = numa_node_cpus_in(&dir, 1).unwrap_err();
        assert!(e.contains("NUMA node 1 has no CPUs"), "{e}");
        let e = numa_node_cpus_in(&dir, 2).unwrap_err();
        assert!(e.contains("invalid cpu list"), "{e}");
        let e = numa_node_cpus_in(&dir, 7).unwrap_err();
        assert!(e.contains("NUMA node 7 does not exist"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn real_numa_node_lookup_does_not_panic() {
        // Node 0 exists on most Linux hosts but not in every container; either answer is fine.
        let _ = numa_node_cpus(0);
        assert!(numa_node_cpus(MAX_CPUS).is_err());
    }
}

//! CPU sets: `cpus = "0-3,8"` lists, NUMA node cpulists, the process's allowed set.
// STUB: to be implemented (see the config helper's brief).

/// CpuSetError is a malformed CPU list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cpu list: {0}")]
pub struct CpuSetError(pub String);

/// Parses a Linux cpulist such as `0-3,8,10-11`.
pub fn parse_cpu_list(_s: &str) -> Result<Vec<usize>, CpuSetError> {
    todo!()
}

/// The CPUs this process may run on (sched_getaffinity), ascending.
pub fn allowed_cpus() -> Vec<usize> {
    todo!()
}

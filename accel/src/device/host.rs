//! Host CPU utilisation and memory, read from /proc and, inside a container with a memory limit,
//! from cgroup v2 (what the kubelet enforces, rather than the node's memory).

use std::fs;

/// Cumulative CPU time counters from /proc/stat, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

impl CpuTimes {
    pub fn read() -> Option<CpuTimes> {
        parse_proc_stat(&fs::read_to_string("/proc/stat").ok()?)
    }

    /// Fraction of CPU time spent busy between `earlier` and `self`, in [0, 1].
    pub fn utilization_since(&self, earlier: &CpuTimes) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        (self.busy.saturating_sub(earlier.busy) as f64 / total as f64).clamp(0.0, 1.0)
    }
}

fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some(CpuTimes {
        busy: total.saturating_sub(idle),
        total,
    })
}

/// Total, used and available memory, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostMemory {
    pub total: u64,
    pub used: u64,
    /// What could still be allocated: free plus reclaimable page cache.
    pub available: u64,
}

impl HostMemory {
    /// The container's limit and usage when cgroup v2 sets a limit, else the machine's memory.
    pub fn read() -> Option<HostMemory> {
        let limit = fs::read_to_string("/sys/fs/cgroup/memory.max").ok();
        let current = fs::read_to_string("/sys/fs/cgroup/memory.current").ok();
        if let (Some(limit), Some(current)) = (limit, current)
            && let (Ok(total), Ok(used)) = (limit.trim().parse::<u64>(), current.trim().parse::<u64>())
        {
            // Page cache the kernel would drop before failing an allocation is not in use.
            let reclaimable = fs::read_to_string("/sys/fs/cgroup/memory.stat")
                .ok()
                .and_then(|s| cgroup_stat(&s, "inactive_file"))
                .unwrap_or(0);
            return Some(HostMemory {
                total,
                used,
                available: total.saturating_sub(used.saturating_sub(reclaimable)),
            });
        }
        parse_meminfo(&fs::read_to_string("/proc/meminfo").ok()?)
    }
}

fn cgroup_stat(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

fn parse_meminfo(text: &str) -> Option<HostMemory> {
    let kib = |key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|v| v * 1024)
    };
    let total = kib("MemTotal:")?;
    let available = kib("MemAvailable:")?;
    Some(HostMemory {
        total,
        used: total.saturating_sub(available),
        available,
    })
}

/// This process's resident set size, in bytes.
pub fn process_rss() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_and_meminfo() {
        let a = parse_proc_stat("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n").unwrap();
        assert_eq!(a, CpuTimes { busy: 150, total: 1000 });
        let b = parse_proc_stat("cpu  200 0 100 850 50 0 0 0 0 0\n").unwrap();
        assert!((b.utilization_since(&a) - 0.75).abs() < 1e-9);
        let m = parse_meminfo("MemTotal:       1000 kB\nMemFree:  10 kB\nMemAvailable:    400 kB\n").unwrap();
        assert_eq!(
            m,
            HostMemory {
                total: 1_024_000,
                used: 614_400,
                available: 409_600
            }
        );
        assert_eq!(
            cgroup_stat("active_file 5\ninactive_file 42\n", "inactive_file"),
            Some(42)
        );
        assert_eq!(cgroup_stat("inactive_filex 1\n", "inactive_file"), None);
        assert!(process_rss().is_some_and(|r| r > 0));
        assert!(
            CpuTimes::read().is_some() && HostMemory::read().is_some(),
            "readable on Linux"
        );
    }
}

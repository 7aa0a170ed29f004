//! Live memory readings of the device models run on, behind one trait so that the residency manager
//! schedules the same way on the CPU (cgroup v2 or /proc) and on a GPU (NVML). Readings are taken when
//! a load is admitted, not cached: what others on the device use changes without telling Accel.

use std::fmt::Debug;

use super::host::HostMemory;

/// One reading of a device's memory, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryReading {
    pub total: u64,
    pub used: u64,
    /// What could still be allocated now.
    pub free: u64,
    /// What other processes on the device hold, when the device can tell (NVML can).
    pub others: Option<u64>,
}

/// A device whose memory can be read live.
pub trait DeviceMemory: Send + Sync + Debug {
    /// For logs and messages: `cpu (cgroup v2)`, `cuda:0 NVIDIA H100 (NVML)`.
    fn describe(&self) -> String;

    fn read(&self) -> Result<MemoryReading, String>;
}

/// The host's memory: the container's cgroup v2 limit and usage when it has a limit, else the machine's.
#[derive(Debug, Default, Clone, Copy)]
pub struct Host;

impl DeviceMemory for Host {
    fn describe(&self) -> String {
        let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max").is_ok_and(|m| m.trim() != "max");
        if cgroup {
            "cpu (cgroup v2 memory limit)".into()
        } else {
            "cpu (machine memory)".into()
        }
    }

    fn read(&self) -> Result<MemoryReading, String> {
        let m = HostMemory::read().ok_or("cannot read /sys/fs/cgroup or /proc/meminfo")?;
        Ok(MemoryReading {
            total: m.total,
            used: m.used,
            free: m.available,
            others: None,
        })
    }
}

/// A fixed device, for tests of the residency manager's decisions.
#[derive(Debug, Clone, Copy)]
pub struct Fixed(pub MemoryReading);

impl DeviceMemory for Fixed {
    fn describe(&self) -> String {
        "fixed (tests)".into()
    }

    fn read(&self) -> Result<MemoryReading, String> {
        Ok(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_reads_consistently() {
        let r = Host.read().expect("readable on Linux");
        assert!(r.total > 0 && r.free <= r.total && r.used <= r.total, "{r:?}");
        assert!(Host.describe().starts_with("cpu"));
    }
}

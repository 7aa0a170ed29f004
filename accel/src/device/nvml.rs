//! GPU memory through NVML (nvml-wrapper, which loads libnvidia-ml at run time: nothing to link, and
//! a machine without a driver gets a clear error instead of a crash). Used for the `nv_gpu_*` gauges
//! and, on the GPU path, as the residency manager's [`DeviceMemory`].

use nvml_wrapper::Nvml;

use super::memory::{DeviceMemory, MemoryReading};

/// One GPU, by index.
pub struct Gpu {
    nvml: Nvml,
    index: u32,
    name: String,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("index", &self.index)
            .field("name", &self.name)
            .finish()
    }
}

/// NVML and the GPUs it sees, or why not.
pub fn gpus() -> Result<Vec<Gpu>, String> {
    let count = {
        let nvml = Nvml::init().map_err(|e| format!("NVML is not available: {e}"))?;
        nvml.device_count()
            .map_err(|e| format!("NVML cannot count devices: {e}"))?
    };
    (0..count).map(Gpu::open).collect()
}

impl Gpu {
    pub fn open(index: u32) -> Result<Gpu, String> {
        let nvml = Nvml::init().map_err(|e| format!("NVML is not available: {e}"))?;
        let name = nvml
            .device_by_index(index)
            .and_then(|d| d.name())
            .map_err(|e| format!("NVML device {index}: {e}"))?;
        Ok(Gpu { nvml, index, name })
    }

    /// The GPU with this UUID (`GPU-…`, as the CUDA driver reports it): NVML's own indices ignore
    /// CUDA_VISIBLE_DEVICES, a UUID does not.
    pub fn open_uuid(uuid: &str) -> Result<Gpu, String> {
        let nvml = Nvml::init().map_err(|e| format!("NVML is not available: {e}"))?;
        let (index, name) = nvml
            .device_by_uuid(uuid)
            .and_then(|d| Ok((d.index()?, d.name()?)))
            .map_err(|e| format!("NVML device {uuid}: {e}"))?;
        Ok(Gpu { nvml, index, name })
    }

    /// GPU utilization over NVML's last sample period, in [0, 1].
    pub fn utilization(&self) -> Result<f64, String> {
        let device = self.nvml.device_by_index(self.index).map_err(|e| e.to_string())?;
        let u = device.utilization_rates().map_err(|e| e.to_string())?;
        Ok(f64::from(u.gpu) / 100.0)
    }
}

impl DeviceMemory for Gpu {
    fn describe(&self) -> String {
        format!("cuda:{} {} (NVML)", self.index, self.name)
    }

    fn read(&self) -> Result<MemoryReading, String> {
        let device = self
            .nvml
            .device_by_index(self.index)
            .map_err(|e| format!("NVML device {}: {e}", self.index))?;
        let info = device.memory_info().map_err(|e| format!("NVML memory info: {e}"))?;
        let me = std::process::id();
        let others = device.running_compute_processes().ok().map(|ps| {
            ps.iter()
                .filter(|p| p.pid != me)
                .map(|p| match p.used_gpu_memory {
                    nvml_wrapper::enums::device::UsedGpuMemory::Used(b) => b,
                    nvml_wrapper::enums::device::UsedGpuMemory::Unavailable => 0,
                })
                .sum()
        });
        Ok(MemoryReading {
            total: info.total,
            used: info.used,
            free: info.free,
            others,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a machine without a driver this is an error, never a panic; on a GPU machine the readings
    /// are consistent.
    #[test]
    fn nvml_answers_or_says_why_not() {
        match gpus() {
            Err(e) => assert!(e.contains("NVML"), "{e}"),
            Ok(gpus) => {
                for g in gpus {
                    let r = g.read().expect("reading");
                    assert!(r.total > 0 && r.used <= r.total, "{r:?}");
                    assert!(g.describe().starts_with("cuda:"));
                }
            }
        }
    }
}

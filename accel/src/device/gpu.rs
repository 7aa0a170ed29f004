//! Where models run: `--gpu N` asks for GPU N (counted after CUDA_VISIBLE_DEVICES, as CUDA counts).
//! A binary built without the `cuda` feature, a machine without a driver, a GPU that does not exist or
//! whose libraries are missing all end the same way: Accel logs why and serves on the CPU. Nothing
//! here panics: cudarc panics when libcuda is absent, so every library is probed before the first
//! CUDA call.

use candle_core::Device;

use super::memory::{DeviceMemory, Host};

/// The device models are placed on, and how its memory is read.
#[derive(Debug)]
pub struct Placement {
    /// candle's device: CPU, or the GPU (each loaded model makes its own stream on it).
    pub device: Device,
    /// The GPU's ordinal when models run on one.
    pub gpu: Option<usize>,
    /// Live memory readings for the residency manager: NVML (or the CUDA driver) on a GPU, the host's
    /// memory on the CPU.
    pub memory: Box<dyn DeviceMemory>,
}

impl Placement {
    /// Models on the CPU.
    pub fn cpu() -> Placement {
        Placement {
            device: Device::Cpu,
            gpu: None,
            memory: Box::new(Host),
        }
    }

    /// GPU `requested` when one is asked for and usable, else the CPU; why not is logged.
    pub fn select(requested: Option<u32>) -> Placement {
        let Some(ordinal) = requested else {
            return Placement::cpu();
        };
        match open(ordinal as usize) {
            Ok(placement) => {
                tracing::info!(gpu = ordinal, memory = %placement.memory.describe(), "models run on the GPU");
                placement
            }
            Err(reason) => {
                tracing::warn!(gpu = ordinal, %reason, "no GPU present: serving on the CPU");
                Placement::cpu()
            }
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn open(_ordinal: usize) -> Result<Placement, String> {
    Err("this Accel binary was built without the `cuda` feature (scripts/build-cuda.sh builds one with it)".into())
}

#[cfg(feature = "cuda")]
fn open(ordinal: usize) -> Result<Placement, String> {
    cuda::open(ordinal)
}

#[cfg(feature = "cuda")]
mod cuda {
    #![allow(unsafe_code)]

    use std::sync::Arc;

    use candle_core::{Device, Tensor};
    use cudarc::driver::CudaContext;

    use super::super::memory::{DeviceMemory, MemoryReading};
    use super::super::nvml::Gpu;
    use super::Placement;

    pub(super) fn open(ordinal: usize) -> Result<Placement, String> {
        let ctx = accel_kernels::cuda::probe(ordinal).map_err(|e| e.to_string())?;
        // candle calls cuBLAS for every matmul and cudarc would panic on the first if it were missing.
        // SAFETY: these only try to dlopen the libraries.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err("cuBLAS (libcublas.so.13) is not present: put the CUDA 13 libraries on LD_LIBRARY_PATH".into());
        }
        if !unsafe { cudarc::cublaslt::sys::is_culib_present() } {
            return Err(
                "cuBLASLt (libcublasLt.so.13) is not present: put the CUDA 13 libraries on LD_LIBRARY_PATH".into(),
            );
        }
        accel_kernels::cuda::BatchKernels::for_context(&ctx).map_err(|e| e.to_string())?;
        let device = Device::new_cuda(ordinal).map_err(|e| format!("candle cannot use GPU {ordinal}: {e}"))?;
        // One small matmul, so that a GPU that cannot run candle's kernels is found now, not by a request.
        let x = Tensor::ones((2, 2), candle_core::DType::F32, &device).map_err(|e| e.to_string())?;
        let y = x
            .matmul(&x)
            .and_then(|y| y.sum_all())
            .and_then(|y| y.to_scalar::<f32>())
            .map_err(|e| format!("candle cannot compute on GPU {ordinal}: {e}"))?;
        if y != 8.0 {
            return Err(format!(
                "GPU {ordinal} computed a 2x2 matmul wrongly ({y} instead of 8)"
            ));
        }
        let memory: Box<dyn DeviceMemory> = match uuid(&ctx).and_then(|u| Gpu::open_uuid(&u)) {
            Ok(gpu) => Box::new(gpu),
            Err(reason) => {
                tracing::warn!(%reason, "NVML is not available: device memory is read from the CUDA driver");
                Box::new(DriverMemory { ctx })
            }
        };
        Ok(Placement {
            device,
            gpu: Some(ordinal),
            memory,
        })
    }

    /// The device's UUID as NVML writes it (`GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`): the way to
    /// find the same GPU in NVML, whose indices ignore CUDA_VISIBLE_DEVICES.
    fn uuid(ctx: &Arc<CudaContext>) -> Result<String, String> {
        let u = ctx.uuid().map_err(|e| e.to_string())?;
        let b: Vec<u8> = u.bytes.iter().map(|&c| c as u8).collect();
        let hex = |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
        Ok(format!(
            "GPU-{}-{}-{}-{}-{}",
            hex(0..4),
            hex(4..6),
            hex(6..8),
            hex(8..10),
            hex(10..16)
        ))
    }

    /// Device memory from the CUDA driver (cuMemGetInfo), when NVML is not there.
    #[derive(Debug)]
    struct DriverMemory {
        ctx: Arc<CudaContext>,
    }

    impl DeviceMemory for DriverMemory {
        fn describe(&self) -> String {
            format!("cuda:{} (CUDA driver)", self.ctx.ordinal())
        }

        fn read(&self) -> Result<MemoryReading, String> {
            let (free, total) = self.ctx.mem_get_info().map_err(|e| e.to_string())?;
            Ok(MemoryReading {
                total: total as u64,
                used: (total - free) as u64,
                free: free as u64,
                others: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a machine without a GPU (and in a build without `cuda`) asking for one serves on the CPU.
    #[test]
    fn asking_for_a_gpu_without_one_places_models_on_the_cpu() {
        let p = Placement::select(Some(0));
        if p.gpu.is_some() {
            eprintln!("skipped: this machine has a usable GPU");
            return;
        }
        assert!(p.device.is_cpu());
        assert!(p.memory.describe().starts_with("cpu"));
        // A GPU that no machine has is never usable.
        assert!(Placement::select(Some(4096)).gpu.is_none());
        assert!(Placement::select(None).device.is_cpu());
    }
}

//! What the server knows about the machine it runs on. Today: the host's CPU and memory (for metrics);
//! the GPU readings through NVML and the DeviceMemory trait the residency manager schedules with are
//! the next issues' work.

pub mod host;

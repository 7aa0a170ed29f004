//! What the server knows about the machine it runs on: the host's CPU and memory (`host`), live
//! device memory behind one trait for the residency manager (`memory`), and GPUs through NVML
//! (`nvml`).

pub mod host;
pub mod memory;
pub mod nvml;

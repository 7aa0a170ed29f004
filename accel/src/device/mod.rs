//! What the server knows about the machine it runs on: the host's CPU and memory (`host`), live
//! device memory behind one trait for the residency manager (`memory`), and GPUs through NVML
//! (`nvml`), and which device models are placed on (`gpu`: `--gpu N`, or the CPU when there is none).

pub mod gpu;
pub mod host;
pub mod memory;
pub mod nvml;

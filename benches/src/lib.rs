//! accel-bench: a load generator for the KServe v2 gRPC protocol, built to be trusted. Closed loop
//! (fixed concurrency) and open loop (Poisson arrivals at a fixed rate, latency measured from each
//! request's intended send time, so overload shows as queueing instead of being hidden — no coordinated
//! omission); warm-up, then measurement windows until three agree; hdrhistogram percentiles; every
//! response checked, errors counted and reported, never folded into throughput.

pub mod inputs;
pub mod load;
pub mod report;
pub mod residency_sim;
pub mod shm;
pub mod target;

pub use load::{LevelResult, LoadShape, Plan};
pub use target::{ModelLoad, Target};

//! Accel: a batching inference sidecar speaking the KServe v2 / Open Inference Protocol.
//!
//! Layers point one way: `server` (protocols) → `residency` (which models run) → `batching`
//! (queues, batches, executor threads) → `backend` (engines). `core` holds the protocol-neutral types
//! all of them share; `repository` reads the model repository on disk.

pub mod alloc;
pub mod backend;
pub mod batching;
pub mod config;
pub mod core;
pub mod device;
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "cuda")]
pub mod gpu_check;
pub mod logging;
pub mod metrics;
pub mod repository;
pub mod residency;
pub mod server;
pub mod shm;
pub mod stats;

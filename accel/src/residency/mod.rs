//! Many models, one device. The registry knows every model of the repository and its state in
//! Triton's words (READY, LOADING, UNLOADING, UNAVAILABLE with a reason); it loads models (at start,
//! through the repository API, or on a model's first request), keeps the memory they hold within a
//! budget checked against live readings of the device (`budget`, `crate::device::memory`), evicts idle
//! models by value when a load needs room (`policy`), keeps evicted models' prepared weights in host
//! memory (`host_tier`), and hands the request path leases that keep a model alive while it is used
//! (`served`), and splits requests that name no version between a model's versions by weight
//! (`split`). A model that fails to load is UNAVAILABLE with the reason and never affects the others.

pub mod budget;
mod engines;
mod host_tier;
pub mod policy;
mod registry;
mod served;
pub mod split;
mod state;

pub use budget::{Bytes, MemorySize};
pub use engines::DefaultBackend;
pub use registry::{ControlMode, IndexEntry, LOADER_STACK, LoadOptions, PIN_PARAMETER, Registry, Route};
pub use served::{Lease, ServedModel};
pub use state::ModelState;

use thiserror::Error;

use crate::core::Code;

/// Why a request could not get a model to run on.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AcquireError {
    #[error("unknown model '{model}'")]
    UnknownModel { model: String },
    #[error("unknown version '{version}' of model '{model}' (versions: {available})")]
    UnknownVersion {
        model: String,
        version: String,
        available: String,
    },
    #[error("model '{model}'{} is not ready ({state}): {reason}", version_label(version))]
    NotReady {
        model: String,
        version: String,
        state: ModelState,
        reason: String,
    },
    #[error("model '{model}' needs {}, more than the whole memory budget of {}", Bytes(*need), Bytes(*budget))]
    ResourceExhausted { model: String, need: u64, budget: u64 },
    #[error(
        "model '{model}' needs {} but {} of the {} budget is held by {}",
        Bytes(*need), Bytes(*in_use), Bytes(*budget),
        if *waited { "models that stayed busy or pinned until the load timeout" } else { "loaded models: unload one first" }
    )]
    NoMemory {
        model: String,
        need: u64,
        in_use: u64,
        budget: u64,
        /// Whether the load waited for models to become evictable (on-demand mode): then retrying
        /// later may succeed.
        waited: bool,
    },
}

fn version_label(version: &str) -> String {
    if version.is_empty() {
        String::new()
    } else {
        format!(" version {version}")
    }
}

impl AcquireError {
    pub fn code(&self) -> Code {
        match self {
            AcquireError::UnknownModel { .. } | AcquireError::UnknownVersion { .. } => Code::NotFound,
            AcquireError::NotReady { .. } | AcquireError::NoMemory { waited: true, .. } => Code::Unavailable,
            AcquireError::ResourceExhausted { .. } | AcquireError::NoMemory { waited: false, .. } => {
                Code::ResourceExhausted
            }
        }
    }
}

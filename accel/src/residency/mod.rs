//! The model registry: which models and versions exist, their state in Triton's words (READY,
//! LOADING, UNLOADING, UNAVAILABLE, each with a reason), loading them through a backend, and handing
//! out leases to the request path. A model that fails to load is UNAVAILABLE with the reason and
//! never affects the others.

mod registry;
mod state;

pub use registry::{ControlMode, IndexEntry, Lease, LoadOptions, Registry, ServedModel};
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
            AcquireError::NotReady { .. } => Code::Unavailable,
        }
    }
}

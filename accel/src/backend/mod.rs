//! The execution boundary. A [`Backend`] reads a model file into a [`LoadedModel`] (weights turned into
//! device tensors once), which creates one [`ModelInstance`] per executor thread; an instance executes a
//! [`Batch`]. Nothing here knows about protocols or scheduling: engines (candle, our own executor;
//! ONNX Runtime) plug in behind these traits.

pub mod candle;
pub mod onnxruntime;

use std::fmt::Debug;
use std::path::Path;

use bytes::Bytes;
use thiserror::Error;

use crate::core::{Code, DataType, ModelSpec, Signature, Tensor};

/// Why a model could not be loaded or a batch could not be executed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BackendError {
    #[error("cannot read model file '{path}': {reason}")]
    Read { path: String, reason: String },
    #[error("invalid model: {0}")]
    InvalidModel(String),
    #[error("unsupported operator {0}")]
    UnsupportedOperator(String),
    #[error("{0}")]
    UnsupportedDataType(String),
    #[error("execution failed: {0}")]
    Execution(String),
    /// The request's tensors cannot run through the model (found only when executing).
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

impl BackendError {
    pub fn code(&self) -> Code {
        match self {
            BackendError::Read { .. } | BackendError::InvalidModel(_) | BackendError::UnsupportedOperator(_) => {
                Code::Unavailable
            }
            BackendError::UnsupportedDataType(_) | BackendError::InvalidInput(_) => Code::InvalidArgument,
            BackendError::Execution(_) => Code::Internal,
        }
    }
}

/// One input of a batch: the requests' tensors for one model input, to be concatenated along the first
/// dimension. Kept in parts so that the backend copies them once, straight into its own buffer.
#[derive(Debug, Clone)]
pub struct BatchInput {
    pub datatype: DataType,
    /// The shape the backend sees (the batched shape, after any config `reshape`).
    pub shape: Vec<usize>,
    /// The requests' data, in batch order.
    pub parts: Vec<Bytes>,
}

impl BatchInput {
    pub fn byte_len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    /// Copies the parts, in order, into `dst`, whose length must be [`BatchInput::byte_len`].
    pub fn copy_to(&self, dst: &mut [u8]) {
        let mut offset = 0;
        for part in &self.parts {
            dst[offset..offset + part.len()].copy_from_slice(part);
            offset += part.len();
        }
    }

    /// The data as one buffer: the single part itself when there is one (no copy), else a copy.
    pub fn contiguous(&self) -> Bytes {
        match self.parts.as_slice() {
            [one] => one.clone(),
            parts => {
                let mut buf = vec![0u8; parts.iter().map(Bytes::len).sum()];
                self.copy_to(&mut buf);
                Bytes::from(buf)
            }
        }
    }
}

/// The inputs of one execution, and which outputs to produce.
#[derive(Debug)]
pub struct Batch {
    /// One entry per model input, in the model's order; `None` for an optional input left out.
    pub inputs: Vec<Option<BatchInput>>,
    /// Indices into the model's outputs that some request of the batch wants, ascending.
    pub outputs: Vec<usize>,
}

/// Loads model files of one format.
pub trait Backend: Send + Sync + Debug {
    /// The name configs use to select this backend (`backend: "candle"`).
    fn name(&self) -> &'static str;

    /// Reads and prepares a model file. Weights become device tensors here, once.
    fn load(&self, file: &Path) -> Result<Box<dyn LoadedModel>, BackendError>;
}

/// A model whose weights are resident and ready to execute.
pub trait LoadedModel: Send + Sync + Debug {
    /// The inputs and outputs the model file declares, for completing and checking its config.
    fn signature(&self) -> &Signature;

    /// Bytes held by the weights.
    fn weight_bytes(&self) -> u64;

    /// Creates an instance that executes batches for `spec` (the completed config of this model).
    fn instance(&self, spec: &ModelSpec) -> Result<Box<dyn ModelInstance>, BackendError>;
}

/// An executor of batches. Each lives on one executor thread, so `execute` takes `&mut self`.
pub trait ModelInstance: Send {
    /// Runs one batch; returns one tensor per entry of `batch.outputs`, in that order, each with the
    /// batch as its first dimension when the model batches.
    fn execute(&mut self, batch: &Batch) -> Result<Vec<Tensor>, BackendError>;
}

/// Bytes of the files in a model file's directory (ONNX external data included): what a load is
/// expected to hold before it is measured.
pub fn files_size(model_file: &Path) -> u64 {
    let Some(dir) = model_file.parent() else {
        return 0;
    };
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

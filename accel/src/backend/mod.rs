//! The execution boundary. A [`Backend`] reads a model file into a [`LoadedModel`] (weights turned into
//! device tensors once), which creates one [`ModelInstance`] per executor thread; an instance executes a
//! [`Batch`]. Nothing here knows about protocols or scheduling: engines (candle, our own executor;
//! ONNX Runtime; Hugging Face sentence encoders on candle) plug in behind these traits.

pub mod candle;
pub mod hf;
pub mod onnxruntime;

use std::fmt::Debug;
use std::sync::{Arc, Weak};
use std::time::Instant;

use bytes::Bytes;
use thiserror::Error;

use crate::core::{Code, DataType, ModelFile, ModelSpec, Parameters, Signature, Tensor, ValidatedRequest};

/// Why a model could not be loaded or a batch could not be executed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BackendError {
    /// A model file could not be read (the message names it relative to the model's directory).
    #[error("cannot read the model file: {0}")]
    Read(String),
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
    /// The execution would hold more memory than one execution may (`ExecLimits::max_bytes`).
    #[error("{0}")]
    ResourceExhausted(String),
    /// Every request of the batch was given up by its client (disconnected, or past its deadline).
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// A load did not finish before its deadline.
    #[error("{0}")]
    TimedOut(String),
}

impl BackendError {
    pub fn code(&self) -> Code {
        match self {
            BackendError::Read(_)
            | BackendError::InvalidModel(_)
            | BackendError::UnsupportedOperator(_)
            | BackendError::TimedOut(_) => Code::Unavailable,
            BackendError::UnsupportedDataType(_) | BackendError::InvalidInput(_) => Code::InvalidArgument,
            BackendError::ResourceExhausted(_) => Code::ResourceExhausted,
            BackendError::Cancelled(_) => Code::Cancelled,
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

/// Tells an engine whether anyone still waits for a batch: each request's handler holds an `Arc`
/// whose `Weak` is here, and drops it when its client goes away (a closed connection, or a deadline
/// that passed). When every one is gone the execution may stop. An empty `Cancel` is never cancelled.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<[Weak<()>]>);

impl Cancel {
    pub fn new(waiting: Vec<Weak<()>>) -> Self {
        Cancel(waiting.into())
    }

    /// Whether every request of the batch has been given up.
    pub fn is_cancelled(&self) -> bool {
        !self.0.is_empty() && self.0.iter().all(|w| w.strong_count() == 0)
    }
}

/// The inputs of one execution, and which outputs to produce.
#[derive(Debug)]
pub struct Batch {
    /// One entry per model input, in the model's order; `None` for an optional input left out.
    pub inputs: Vec<Option<BatchInput>>,
    /// Indices into the model's outputs that some request of the batch wants, ascending.
    pub outputs: Vec<usize>,
    /// Whether the batch's requests are still wanted.
    pub cancel: Cancel,
}

/// What bounds one execution, whatever the request holds. Defaults never bother a real model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecLimits {
    /// Bytes one execution may hold at once: its inputs, the intermediate tensors alive, and what
    /// the next operator is about to create (`--max-execution-memory`).
    pub max_bytes: u64,
    /// Iterations one Loop may run (`--max-loop-iterations`).
    pub max_loop_iterations: u64,
    /// Work one execution may do, in multiply-accumulates or their equivalent, summed over its
    /// operators as each estimates it from its inputs' shapes before it runs
    /// (`--max-execution-work`). The candle engine only: ONNX Runtime's runs are bounded by time.
    pub max_work: u64,
}

/// The default of [`ExecLimits::max_work`]: 2^42, about 4.4·10^12 multiply-accumulates (about a minute
/// on two CPU cores, milliseconds on a GPU; a BERT-base batch of 64 sequences of 512 tokens is
/// 3·10^12).
pub const DEFAULT_MAX_WORK: u64 = 1 << 42;

impl Default for ExecLimits {
    fn default() -> Self {
        ExecLimits {
            max_bytes: 4 << 30,
            max_loop_iterations: 1 << 20,
            max_work: DEFAULT_MAX_WORK,
        }
    }
}

/// What bounds one load: its deadline, and what constant folding may create.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadLimits {
    /// Past it the load stops with an error (and its memory is freed).
    pub deadline: Option<Instant>,
    /// Bytes constant folding may add to a model's weights; nodes beyond it run at request time.
    pub fold_bytes: u64,
    /// Iterations a Loop folded at load may run (beyond it the Loop runs at request time).
    pub max_loop_iterations: u64,
    /// Work folding one node may do (as [`ExecLimits::max_work`] counts it); a node beyond it runs
    /// at request time.
    pub fold_work: u64,
}

impl Default for LoadLimits {
    fn default() -> Self {
        LoadLimits {
            deadline: None,
            fold_bytes: 1 << 30,
            max_loop_iterations: 1 << 20,
            fold_work: 1 << 34,
        }
    }
}

impl LoadLimits {
    /// An error once the deadline has passed.
    pub fn check_deadline(&self) -> Result<(), BackendError> {
        match self.deadline {
            Some(d) if Instant::now() >= d => Err(BackendError::TimedOut(
                "the load did not finish before its deadline (--model-load-timeout-secs)".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// Loads model files of one format.
pub trait Backend: Send + Sync + Debug {
    /// The name configs use to select this backend (`backend: "candle"`).
    fn name(&self) -> &'static str;

    /// Reads and prepares a model file (and the files it names, inside its model's directory).
    /// Weights become device tensors here, once.
    fn load(&self, file: &ModelFile, limits: &LoadLimits) -> Result<Box<dyn LoadedModel>, BackendError>;
}

/// A model whose weights are resident and ready to execute.
pub trait LoadedModel: Send + Sync + Debug {
    /// The inputs and outputs the model file declares, for completing and checking its config.
    fn signature(&self) -> &Signature;

    /// Bytes held by the weights.
    fn weight_bytes(&self) -> u64;

    /// The labels of an output, when the model file names them (a classifier's `id2label`): what
    /// the classification extension prints when the config gives no `label_filename`.
    fn output_labels(&self, _output: &str) -> Option<Arc<[String]>> {
        None
    }

    /// Creates an instance that executes batches for `spec` (the completed config of this model).
    fn instance(&self, spec: &ModelSpec) -> Result<Box<dyn ModelInstance>, BackendError>;

    /// The inputs a request may leave out, whatever the config says (alternatives the engine
    /// chooses between, such as text or token ids).
    fn optional_inputs(&self) -> &[&'static str] {
        &[]
    }

    /// Config `parameters` the engine sets when the config does not (its padded batching), for a
    /// model that batches.
    fn default_parameters(&self, _max_batch_size: usize) -> Vec<(String, String)> {
        Vec::new()
    }

    /// What each request goes through before it is queued, when the engine has such work.
    fn preparer(&self) -> Option<Arc<dyn Prepare>> {
        None
    }
}

/// Per-request work an engine does before a request joins its model's queue (a tokenizer turning
/// text into token ids): run by the server off the async runtime and off the executor threads, so
/// that preparing the next requests overlaps the current batch's execution, and batching then sees
/// what the engine really computes (token counts for padded batching).
pub trait Prepare: Send + Sync + Debug {
    /// Whether preparing `request` is heavy enough to belong on a blocking thread (else it runs
    /// inline).
    fn is_heavy(&self, request: &ValidatedRequest) -> bool;

    /// `request` rewritten into the inputs the engine executes, and checked; `parameters` are the
    /// request's own.
    fn prepare(
        &self,
        spec: &ModelSpec,
        request: ValidatedRequest,
        parameters: &Parameters,
    ) -> Result<ValidatedRequest, BackendError>;
}

/// An executor of batches. Each lives on one executor thread, so `execute` takes `&mut self`.
pub trait ModelInstance: Send {
    /// Runs one batch; returns one tensor per entry of `batch.outputs`, in that order, each with the
    /// batch as its first dimension when the model batches.
    fn execute(&mut self, batch: &Batch) -> Result<Vec<Tensor>, BackendError>;
}

/// An ONNX tensor's external data: the file its `location` names next to the model file (inside
/// the model's directory), and the byte range its `offset` and `length` give. Both engines read the
/// entries this way (ONNX Runtime then opens the file itself).
pub(crate) struct ExternalData {
    pub file: ModelFile,
    pub offset: u64,
    pub length: Option<u64>,
}

impl ExternalData {
    /// The reference that `get` (a tensor's `external_data` entries, by key) makes from `model`.
    /// Errors say what is wrong, for a message that names the tensor.
    pub(crate) fn of<'a>(model: &ModelFile, get: impl Fn(&str) -> Option<&'a str>) -> Result<ExternalData, String> {
        let location = get("location").ok_or("without a location")?;
        let number = |key: &str| {
            get(key)
                .map(|v| v.parse::<u64>().map_err(|_| format!("has a bad {key} '{v}'")))
                .transpose()
        };
        let offset = number("offset")?.unwrap_or(0);
        let length = number("length")?;
        let file = model.sibling(location).map_err(|e| e.to_string())?;
        Ok(ExternalData { file, offset, length })
    }
}

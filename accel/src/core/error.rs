//! Error codes and the crate-wide error. Each boundary has its own error enum named by cause
//! (`ValidationError` here, `SubmitError` in batching, `AcquireError` in residency, `BackendError` in
//! backend); each says which protocol-neutral [`Code`] it is. `server/` maps a `Code` to a gRPC status
//! (and later an HTTP status) in exactly one place.

use thiserror::Error as ThisError;

/// What kind of failure a client sees, independent of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// The request is malformed or does not match the model.
    InvalidArgument,
    /// No such model or version.
    NotFound,
    /// Retryable: the model is not ready, the queue is full, the request timed out in the queue.
    Unavailable,
    /// What the request creates exists already (a shared-memory region's name).
    AlreadyExists,
    /// The request cannot fit in the memory the server may use.
    ResourceExhausted,
    /// The feature exists in the protocol but not (yet) in Accel.
    Unimplemented,
    /// The server failed; not the client's fault.
    Internal,
    /// The request was cancelled before it ran.
    Cancelled,
}

/// A request that does not match the model it addresses. Every message names the tensor at fault and
/// what was expected.
#[derive(Debug, ThisError, PartialEq, Eq)]
pub enum ValidationError {
    #[error("unexpected inference input '{input}' for model '{model}'; the model's inputs are: {expected}")]
    UnknownInput {
        model: String,
        input: String,
        expected: String,
    },
    #[error("input '{input}' appears more than once")]
    DuplicateInput { input: String },
    #[error("output '{output}' is requested more than once")]
    DuplicateOutput { output: String },
    #[error("model '{model}' expects input '{input}', which the request does not carry")]
    MissingInput { model: String, input: String },
    #[error("unexpected inference output '{output}' for model '{model}'; the model's outputs are: {expected}")]
    UnknownOutput {
        model: String,
        output: String,
        expected: String,
    },
    #[error("input '{input}': datatype {got} does not match the model's {expected}")]
    DataTypeMismatch {
        input: String,
        got: String,
        expected: String,
    },
    #[error("input '{input}': shape {got:?} does not match the model's {expected}")]
    ShapeMismatch {
        input: String,
        got: Vec<i64>,
        expected: String,
    },
    #[error("input '{input}': batch size {got} exceeds the model's max_batch_size {max}")]
    BatchTooLarge { input: String, got: usize, max: usize },
    #[error("input '{input}': batch size {got} differs from input '{first}' with batch size {expected}")]
    BatchMismatch {
        input: String,
        first: String,
        got: usize,
        expected: usize,
    },
    #[error("input '{input}': {got} bytes of data, but shape {shape:?} of {datatype} needs {expected}")]
    ByteSize {
        input: String,
        got: usize,
        expected: usize,
        shape: Vec<i64>,
        datatype: String,
    },
    #[error("input '{input}': {reason}")]
    Malformed { input: String, reason: String },
    #[error("{0}")]
    Request(String),
}

/// The crate's error: what a request path or a start-up step returns. Maps to a [`Code`].
#[derive(Debug, ThisError)]
pub enum Error {
    #[error(transparent)]
    Validation(#[from] ValidationError),
    #[error(transparent)]
    Submit(#[from] crate::batching::SubmitError),
    #[error(transparent)]
    Acquire(#[from] crate::residency::AcquireError),
    #[error(transparent)]
    Shm(#[from] crate::shm::ShmError),
    #[error("{message}")]
    Other { code: Code, message: String },
}

impl Error {
    /// An error with an explicit code, for the few places that have no boundary enum of their own.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Error::Other {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::new(Code::Unimplemented, message)
    }

    /// The code a client sees.
    pub fn code(&self) -> Code {
        match self {
            Error::Validation(_) => Code::InvalidArgument,
            Error::Submit(e) => e.code(),
            Error::Acquire(e) => e.code(),
            Error::Shm(e) => e.code(),
            Error::Other { code, .. } => *code,
        }
    }
}

/// What a caught panic says (its `&str` or `String` payload).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

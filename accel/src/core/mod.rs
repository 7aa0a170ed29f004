//! Protocol-neutral types shared by every layer: datatypes, tensors, requests and responses, the model
//! specification a request is validated against, and the error codes every boundary maps to. Nothing
//! here knows about tonic, prost or axum; `server/` converts the wire messages into these types.

pub mod classify;
mod datatype;
mod error;
mod files;
pub mod model;
mod request;
mod tensor;
mod validate;

pub use datatype::DataType;
pub use error::{Code, Error, ValidationError, panic_message};
pub use files::{FileError, ModelDir, ModelFile, is_file_name, shown_path};
pub use model::{
    BatchInputKind, BatchInputSpec, BatchOutputSpec, BatchingPolicy, GraphIo, InstanceKind, IoSpec, ModelSpec, Padding,
    QueuePolicy, Scheduling, Signature, SloAction, SloPolicy, TimeoutAction, VariableBatching,
};
pub use request::{
    InferRequest, InferResponse, ParamValue, Parameters, ROUTING_KEY_PARAMETER, RequestedOutput, SLO_MS_PARAMETER,
    ScheduleOptions,
};
pub use tensor::{Tensor, bytes_elements, element_count};
pub use validate::{ValidatedRequest, padded_lengths, validate};

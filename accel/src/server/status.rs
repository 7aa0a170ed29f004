//! The one place where Accel's errors become gRPC statuses.

use tonic::Status;

use crate::core::{Code, Error};

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let message = e.to_string();
        match e.code() {
            Code::InvalidArgument => Status::invalid_argument(message),
            Code::NotFound => Status::not_found(message),
            Code::Unavailable => Status::unavailable(message),
            Code::ResourceExhausted => Status::resource_exhausted(message),
            Code::Unimplemented => Status::unimplemented(message),
            Code::Internal => Status::internal(message),
            Code::Cancelled => Status::cancelled(message),
        }
    }
}

/// Converts a boundary error through [`Error`].
pub(super) fn status(e: impl Into<Error>) -> Status {
    Status::from(e.into())
}

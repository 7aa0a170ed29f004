//! The one place where Accel's error codes become protocol statuses: gRPC codes, and HTTP status codes
//! with Triton's `{"error": "..."}` body.

use tonic::Status;

use crate::core::{Code, Error};

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let message = e.to_string();
        match e.code() {
            Code::InvalidArgument => Status::invalid_argument(message),
            Code::NotFound => Status::not_found(message),
            Code::AlreadyExists => Status::already_exists(message),
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

/// The HTTP status of a code (Triton's mapping; RESOURCE_EXHAUSTED as 429, gRPC's own HTTP mapping).
pub(super) fn http_status(code: Code) -> axum::http::StatusCode {
    use axum::http::StatusCode;
    match code {
        // ALREADY_EXISTS is 400 in Triton's HTTP mapping.
        Code::InvalidArgument | Code::Cancelled | Code::AlreadyExists => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl axum::response::IntoResponse for Error {
    fn into_response(self) -> axum::response::Response {
        let status = http_status(self.code());
        (status, axum::Json(serde_json::json!({ "error": self.to_string() }))).into_response()
    }
}

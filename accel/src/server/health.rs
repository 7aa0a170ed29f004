//! `grpc.health.v1.Health/Check`, as Kubernetes gRPC probes call it: SERVING once start-up loading
//! is done, NOT_SERVING again while the server drains.

use accel_proto::health::health_check_response::ServingStatus;
use accel_proto::health::health_server::Health;
use accel_proto::health::{HealthCheckRequest, HealthCheckResponse};
use tonic::{Request, Response, Status};

use super::infer::Inference;

/// The gRPC health service.
#[derive(Debug, Clone)]
pub struct HealthService {
    inference: Inference,
}

impl HealthService {
    pub fn new(inference: Inference) -> Self {
        HealthService { inference }
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        if !(service.is_empty() || service == "inference.GRPCInferenceService") {
            return Err(Status::not_found(format!("unknown service '{service}'")));
        }
        let status = if self.inference.ready() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        Ok(Response::new(HealthCheckResponse { status: status as i32 }))
    }
}

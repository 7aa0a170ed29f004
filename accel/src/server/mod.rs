//! The network side: the gRPC inference service (`grpc`), the standard health service (`health`),
//! conversion between wire messages and core types (`convert`), and the one mapping from errors to
//! status codes (`status`). No scheduling logic lives here.

mod convert;
mod grpc;
mod health;
mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use accel_proto::health::health_server::HealthServer;
use accel_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::batching::QueueLimits;
use crate::config::Config;
use crate::repository::Repository;
use crate::residency::{LoadOptions, Registry};

pub use grpc::InferenceService;
pub use health::HealthService;

/// The registry a configuration describes (nothing loaded yet).
pub fn registry(config: &Config) -> Result<Arc<Registry>, String> {
    let repository = Repository::open(&config.model_repository).map_err(|e| e.to_string())?;
    Ok(Arc::new(Registry::new(
        repository,
        LoadOptions {
            control_mode: config.model_control_mode,
            load_models: config.load_models.clone(),
            default_max_batch_size: config.default_max_batch_size,
            queue_limits: QueueLimits {
                max_queued: config.max_queued_requests,
            },
            load_threads: config.model_load_threads,
        },
    )))
}

/// Binds the gRPC port.
pub async fn bind(config: &Config) -> std::io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::new(config.grpc_address, config.grpc_port)).await
}

/// Serves gRPC on `listener` until `shutdown` completes, loading the models in the background.
pub async fn serve(
    config: &Config,
    registry: Arc<Registry>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let loader = registry.clone();
    std::thread::Builder::new()
        .name("accel-load".into())
        .spawn(move || loader.start())
        .map_err(|e| tracing::error!(error = %e, "cannot start the loading thread"))
        .ok();
    let limit = config.grpc_max_message_bytes;
    let inference = GrpcInferenceServiceServer::new(InferenceService::new(registry.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    // Small tensors must not wait for delayed ACKs (Nagle): 40 ms per request otherwise.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .initial_connection_window_size(16 * 1024 * 1024)
        .initial_stream_window_size(4 * 1024 * 1024)
        .add_service(inference)
        .add_service(HealthServer::new(HealthService::new(registry)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

//! The server under test: gRPC channels (requests spread over several connections, as many clients
//! would), and the per-model request prepared once from ModelMetadata.

use std::sync::atomic::{AtomicUsize, Ordering};

use accel_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use accel_proto::inference::model_infer_request::InferInputTensor;
use accel_proto::inference::{ModelInferRequest, ModelMetadataRequest};
use tonic::transport::{Channel, Endpoint};

use crate::inputs;

/// Connections to one server.
#[derive(Debug)]
pub struct Target {
    clients: Vec<GrpcInferenceServiceClient<Channel>>,
    next: AtomicUsize,
}

impl Target {
    /// Opens `connections` HTTP/2 connections to `url` (e.g. `http://127.0.0.1:8001`).
    pub async fn connect(url: &str, connections: usize) -> Result<Target, String> {
        let mut clients = Vec::with_capacity(connections.max(1));
        for _ in 0..connections.max(1) {
            let endpoint = Endpoint::from_shared(url.to_string())
                .map_err(|e| format!("{url}: {e}"))?
                .tcp_nodelay(true)
                .initial_connection_window_size(16 * 1024 * 1024)
                .initial_stream_window_size(4 * 1024 * 1024);
            let channel = endpoint
                .connect()
                .await
                .map_err(|e| format!("cannot connect to {url}: {e}"))?;
            clients.push(
                GrpcInferenceServiceClient::new(channel)
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX),
            );
        }
        Ok(Target {
            clients,
            next: AtomicUsize::new(0),
        })
    }

    /// A client, round-robin over the connections.
    pub fn client(&self) -> GrpcInferenceServiceClient<Channel> {
        let k = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        self.clients[k].clone()
    }
}

/// The request sent to one model, prepared once.
#[derive(Debug, Clone)]
pub struct ModelLoad {
    pub name: String,
    pub request: ModelInferRequest,
    /// Batch elements per request.
    pub rows: usize,
}

/// Asks the server for the model's inputs and builds a request of `batch` rows with random data.
/// Variable dimensions other than the first (the batch) take `shapes[name]` or fail.
pub async fn prepare(
    target: &Target,
    model: &str,
    batch: usize,
    shapes: &[(String, Vec<i64>)],
    seed: u64,
) -> Result<ModelLoad, String> {
    let meta = target
        .client()
        .model_metadata(ModelMetadataRequest {
            name: model.to_string(),
            version: String::new(),
        })
        .await
        .map_err(|s| format!("ModelMetadata({model}): {}", s.message()))?
        .into_inner();
    let mut request = ModelInferRequest {
        model_name: model.to_string(),
        ..Default::default()
    };
    for (k, input) in meta.inputs.iter().enumerate() {
        let shape: Vec<i64> = match shapes.iter().find(|(n, _)| *n == input.name) {
            Some((_, s)) => s.clone(),
            None => input
                .shape
                .iter()
                .enumerate()
                .map(|(i, &d)| match (i, d) {
                    (0, -1) => Ok(batch as i64),
                    (_, -1) => Err(format!(
                        "input '{}' has variable dimension {i}: give it with --shape {}:{}",
                        input.name,
                        input.name,
                        input.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",")
                    )),
                    (_, d) => Ok(d),
                })
                .collect::<Result<_, _>>()?,
        };
        let data = inputs::random(&input.datatype, &shape, seed.wrapping_add(k as u64))?;
        request.inputs.push(InferInputTensor {
            name: input.name.clone(),
            datatype: input.datatype.clone(),
            shape,
            ..Default::default()
        });
        request.raw_input_contents.push(data);
    }
    Ok(ModelLoad {
        name: model.to_string(),
        request,
        rows: batch,
    })
}

//! The serving ceiling: a bare tonic server with Accel's protocol and release profile that answers
//! ModelInfer with its own input and nothing else. Accel's throughput over this server's, under the
//! same load, is Accel's serving efficiency.

use std::net::SocketAddr;

use accel_proto::inference::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use accel_proto::inference::model_infer_response::InferOutputTensor;
use accel_proto::inference::model_metadata_response::TensorMetadata;
use accel_proto::inference::{
    ModelInferRequest, ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse, ServerLiveRequest,
    ServerLiveResponse, ServerReadyRequest, ServerReadyResponse,
};
use clap::Parser;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

#[derive(Debug, Parser)]
#[command(
    name = "echo-server",
    about = "A v2 gRPC server that answers ModelInfer with its input"
)]
struct Args {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:8011")]
    address: SocketAddr,
    /// The input every model reports in ModelMetadata: NAME:DATATYPE:d1,d2 (-1 = variable).
    #[arg(long, default_value = "INPUT0:FP32:-1,256")]
    input: String,
    /// Runtime threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

#[derive(Debug, Clone)]
struct Echo {
    input: TensorMetadata,
}

#[tonic::async_trait]
impl GrpcInferenceService for Echo {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: true }))
    }

    async fn model_metadata(
        &self,
        r: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let output = TensorMetadata {
            name: "OUTPUT0".into(),
            ..self.input.clone()
        };
        Ok(Response::new(ModelMetadataResponse {
            name: r.into_inner().name,
            versions: vec!["1".into()],
            platform: "echo".into(),
            inputs: vec![self.input.clone()],
            outputs: vec![output],
            properties: Default::default(),
        }))
    }

    async fn model_infer(&self, r: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        let r = r.into_inner();
        let outputs = r
            .inputs
            .iter()
            .map(|i| InferOutputTensor {
                name: i.name.clone(),
                datatype: i.datatype.clone(),
                shape: i.shape.clone(),
                ..Default::default()
            })
            .collect();
        Ok(Response::new(ModelInferResponse {
            model_name: r.model_name,
            model_version: "1".into(),
            id: r.id,
            parameters: Default::default(),
            outputs,
            raw_output_contents: r.raw_input_contents,
        }))
    }
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    let mut parts = args.input.splitn(3, ':');
    let (name, datatype, dims) = (parts.next(), parts.next(), parts.next());
    let (Some(name), Some(datatype), Some(dims)) = (name, datatype, dims) else {
        return Err(format!("--input {}: expected NAME:DATATYPE:d1,d2", args.input));
    };
    let shape = dims
        .split(',')
        .map(|d| d.parse::<i64>().map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let echo = Echo {
        input: TensorMetadata {
            name: name.into(),
            datatype: datatype.into(),
            shape,
        },
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if args.threads > 0 {
        runtime.worker_threads(args.threads);
    }
    let runtime = runtime.enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.address)
            .await
            .map_err(|e| e.to_string())?;
        eprintln!(
            "echo-server listening on {}",
            listener.local_addr().map_err(|e| e.to_string())?
        );
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let service = GrpcInferenceServiceServer::new(echo)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        tonic::transport::Server::builder()
            .initial_connection_window_size(16 * 1024 * 1024)
            .initial_stream_window_size(4 * 1024 * 1024)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(|e| e.to_string())
    })
}

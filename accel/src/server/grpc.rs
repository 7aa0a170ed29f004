//! `inference.GRPCInferenceService`: the KServe v2 core RPCs and the Triton extensions Accel
//! implements. Each handler converts, asks the registry or a scheduler, and converts back; the RPCs
//! that belong to work still to come answer UNIMPLEMENTED saying so.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use accel_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use accel_proto::inference::{
    CudaSharedMemoryRegisterRequest, CudaSharedMemoryRegisterResponse, CudaSharedMemoryStatusRequest,
    CudaSharedMemoryStatusResponse, CudaSharedMemoryUnregisterRequest, CudaSharedMemoryUnregisterResponse,
    InferBatchStatistics, InferStatistics, LogSettingsRequest, LogSettingsResponse, MemoryUsage, ModelConfigRequest,
    ModelConfigResponse, ModelInferRequest, ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse,
    ModelReadyRequest, ModelReadyResponse, ModelStatistics, ModelStatisticsRequest, ModelStatisticsResponse,
    ModelStreamInferResponse, RepositoryIndexRequest, RepositoryIndexResponse, RepositoryModelLoadRequest,
    RepositoryModelLoadResponse, RepositoryModelUnloadRequest, RepositoryModelUnloadResponse, ServerLiveRequest,
    ServerLiveResponse, ServerMetadataRequest, ServerMetadataResponse, ServerReadyRequest, ServerReadyResponse,
    StatisticDuration, SystemSharedMemoryRegisterRequest, SystemSharedMemoryRegisterResponse,
    SystemSharedMemoryStatusRequest, SystemSharedMemoryStatusResponse, SystemSharedMemoryUnregisterRequest,
    SystemSharedMemoryUnregisterResponse, TraceSettingRequest, TraceSettingResponse,
    model_metadata_response::TensorMetadata, repository_index_response::ModelIndex,
};
use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use super::status::status;
use crate::core::{IoSpec, validate};
use crate::residency::Registry;
use crate::stats::{DurationStat, ModelStats};

/// Requests of one stream processed at once; responses keep the order of the requests.
const STREAM_IN_FLIGHT: usize = 128;

/// Extensions of the protocol this server really implements.
pub(super) const EXTENSIONS: &[&str] = &["model_configuration", "statistics", "schedule_policy", "parameters"];

/// The inference service.
#[derive(Debug, Clone)]
pub struct InferenceService {
    registry: Arc<Registry>,
}

impl InferenceService {
    pub fn new(registry: Arc<Registry>) -> Self {
        InferenceService { registry }
    }

    /// One inference, start to end: the same path for unary and streaming calls.
    async fn infer(&self, req: ModelInferRequest) -> Result<ModelInferResponse, Status> {
        let received = Instant::now();
        let lease = self
            .registry
            .acquire(&req.model_name, &req.model_version)
            .map_err(status)?;
        let request = match convert::infer_request(req) {
            Ok(r) => r,
            Err(e) => {
                lease.stats.record_failure(received.elapsed());
                return Err(e.into());
            }
        };
        let (model_name, id) = (request.model_name.clone(), request.id.clone());
        let validated = match validate(&lease.spec, request) {
            Ok(v) => v,
            Err(e) => {
                lease.stats.record_failure(received.elapsed());
                return Err(status(e));
            }
        };
        let outputs = lease.scheduler.infer(validated, received).await.map_err(status)?;
        Ok(convert::infer_response(
            model_name,
            lease.spec.version.to_string(),
            id,
            outputs,
        ))
    }
}

fn tensor_metadata(io: &IoSpec, batching: bool) -> TensorMetadata {
    TensorMetadata {
        name: io.name.clone(),
        datatype: io.datatype.wire_name().to_string(),
        shape: io.reported_shape(batching),
    }
}

fn duration(s: &DurationStat) -> Option<StatisticDuration> {
    let (count, ns) = s.get();
    Some(StatisticDuration { count, ns })
}

fn statistics(name: &str, version: u64, s: &ModelStats) -> ModelStatistics {
    ModelStatistics {
        name: name.to_string(),
        version: version.to_string(),
        last_inference: s.last_inference_ms(),
        inference_count: s.inference_count(),
        execution_count: s.execution_count(),
        inference_stats: Some(InferStatistics {
            success: duration(&s.success),
            fail: duration(&s.fail),
            queue: duration(&s.queue),
            compute_input: duration(&s.compute_input),
            compute_infer: duration(&s.compute_infer),
            compute_output: duration(&s.compute_output),
            cache_hit: Some(StatisticDuration::default()),
            cache_miss: Some(StatisticDuration::default()),
        }),
        batch_stats: s
            .batch_sizes()
            .into_iter()
            .map(|(size, b)| InferBatchStatistics {
                batch_size: size as u64,
                compute_input: Some(StatisticDuration {
                    count: b.count,
                    ns: b.input_ns,
                }),
                compute_infer: Some(StatisticDuration {
                    count: b.count,
                    ns: b.infer_ns,
                }),
                compute_output: Some(StatisticDuration {
                    count: b.count,
                    ns: b.output_ns,
                }),
            })
            .collect(),
        memory_usage: vec![MemoryUsage {
            r#type: "CPU".into(),
            id: 0,
            byte_size: s.memory_bytes(),
        }],
        response_stats: Default::default(),
    }
}

fn not_yet(what: &str, issue: &str) -> Status {
    Status::unimplemented(format!("{what} is not implemented yet: it arrives with {issue}"))
}

type StreamOf<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.registry.started(),
        }))
    }

    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(ModelReadyResponse {
            ready: self.registry.acquire(&r.name, &r.version).is_ok(),
        }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "accel".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: EXTENSIONS.iter().map(|s| s.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let lease = self.registry.acquire(&r.name, &r.version).map_err(status)?;
        let spec = &lease.spec;
        Ok(Response::new(ModelMetadataResponse {
            name: spec.name.clone(),
            versions: self.registry.versions(&spec.name),
            platform: lease.config.platform.clone(),
            inputs: spec.inputs.iter().map(|i| tensor_metadata(i, spec.batches())).collect(),
            outputs: spec
                .outputs
                .iter()
                .map(|o| tensor_metadata(o, spec.batches()))
                .collect(),
            properties: Default::default(),
        }))
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        self.infer(request.into_inner()).await.map(Response::new)
    }

    type ModelStreamInferStream = StreamOf<ModelStreamInferResponse>;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let service = self.clone();
        let responses = request
            .into_inner()
            .map(move |next| {
                let service = service.clone();
                async move {
                    let req = next?;
                    let (model_name, model_version, id) =
                        (req.model_name.clone(), req.model_version.clone(), req.id.clone());
                    // Errors travel in-band; the stream stays open for the next request.
                    Ok(match service.infer(req).await {
                        Ok(r) => ModelStreamInferResponse {
                            error_message: String::new(),
                            infer_response: Some(r),
                        },
                        Err(s) => ModelStreamInferResponse {
                            error_message: s.message().to_string(),
                            infer_response: Some(ModelInferResponse {
                                model_name,
                                model_version,
                                id,
                                ..Default::default()
                            }),
                        },
                    })
                }
            })
            .buffered(STREAM_IN_FLIGHT);
        Ok(Response::new(Box::pin(responses)))
    }

    async fn model_config(
        &self,
        request: Request<ModelConfigRequest>,
    ) -> Result<Response<ModelConfigResponse>, Status> {
        let r = request.into_inner();
        let lease = self.registry.acquire(&r.name, &r.version).map_err(status)?;
        Ok(Response::new(ModelConfigResponse {
            config: Some(lease.config.clone()),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        let r = request.into_inner();
        let served = self.registry.served(&r.name, &r.version).map_err(status)?;
        let model_stats = served
            .iter()
            .map(|m| statistics(&m.spec.name, m.spec.version, &m.stats))
            .collect();
        Ok(Response::new(ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let r = request.into_inner();
        let models = self
            .registry
            .index()
            .into_iter()
            .filter(|e| !r.ready || e.state == crate::residency::ModelState::Ready)
            .map(|e| ModelIndex {
                name: e.name,
                version: e.version,
                state: e.state.as_str().into(),
                reason: e.reason,
            })
            .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        _: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        Err(not_yet("RepositoryModelLoad", "memory-aware residency (issue 3)"))
    }

    async fn repository_model_unload(
        &self,
        _: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        Err(not_yet("RepositoryModelUnload", "memory-aware residency (issue 3)"))
    }

    async fn system_shared_memory_status(
        &self,
        _: Request<SystemSharedMemoryStatusRequest>,
    ) -> Result<Response<SystemSharedMemoryStatusResponse>, Status> {
        Err(not_yet("system shared memory", "the shared-memory work"))
    }

    async fn system_shared_memory_register(
        &self,
        _: Request<SystemSharedMemoryRegisterRequest>,
    ) -> Result<Response<SystemSharedMemoryRegisterResponse>, Status> {
        Err(not_yet("system shared memory", "the shared-memory work"))
    }

    async fn system_shared_memory_unregister(
        &self,
        _: Request<SystemSharedMemoryUnregisterRequest>,
    ) -> Result<Response<SystemSharedMemoryUnregisterResponse>, Status> {
        Err(not_yet("system shared memory", "the shared-memory work"))
    }

    async fn cuda_shared_memory_status(
        &self,
        _: Request<CudaSharedMemoryStatusRequest>,
    ) -> Result<Response<CudaSharedMemoryStatusResponse>, Status> {
        Err(not_yet("CUDA shared memory", "the GPU path (issue 5)"))
    }

    async fn cuda_shared_memory_register(
        &self,
        _: Request<CudaSharedMemoryRegisterRequest>,
    ) -> Result<Response<CudaSharedMemoryRegisterResponse>, Status> {
        Err(not_yet("CUDA shared memory", "the GPU path (issue 5)"))
    }

    async fn cuda_shared_memory_unregister(
        &self,
        _: Request<CudaSharedMemoryUnregisterRequest>,
    ) -> Result<Response<CudaSharedMemoryUnregisterResponse>, Status> {
        Err(not_yet("CUDA shared memory", "the GPU path (issue 5)"))
    }

    async fn trace_setting(&self, _: Request<TraceSettingRequest>) -> Result<Response<TraceSettingResponse>, Status> {
        Err(not_yet("TraceSetting", "the operations work (issue 4)"))
    }

    async fn log_settings(&self, _: Request<LogSettingsRequest>) -> Result<Response<LogSettingsResponse>, Status> {
        Err(not_yet("LogSettings", "the operations work (issue 4)"))
    }
}

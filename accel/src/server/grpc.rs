//! `inference.GRPCInferenceService`: the KServe v2 core RPCs and the Triton extensions Accel
//! implements. Inference goes through the shared path (`infer`); the other answers come from
//! `answers`, which REST uses too; shared-memory registration goes to `shm`. RPCs that belong to work
//! still to come answer UNIMPLEMENTED.

use std::pin::Pin;

use accel_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use accel_proto::inference::{
    CudaSharedMemoryRegisterRequest, CudaSharedMemoryRegisterResponse, CudaSharedMemoryStatusRequest,
    CudaSharedMemoryStatusResponse, CudaSharedMemoryUnregisterRequest, CudaSharedMemoryUnregisterResponse,
    LogSettingsRequest, LogSettingsResponse, ModelConfigRequest, ModelConfigResponse, ModelInferRequest,
    ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse, ModelReadyRequest, ModelReadyResponse,
    ModelStatisticsRequest, ModelStatisticsResponse, ModelStreamInferResponse, RepositoryIndexRequest,
    RepositoryIndexResponse, RepositoryModelLoadRequest, RepositoryModelLoadResponse, RepositoryModelUnloadRequest,
    RepositoryModelUnloadResponse, ServerLiveRequest, ServerLiveResponse, ServerMetadataRequest,
    ServerMetadataResponse, ServerReadyRequest, ServerReadyResponse, SystemSharedMemoryRegisterRequest,
    SystemSharedMemoryRegisterResponse, SystemSharedMemoryStatusRequest, SystemSharedMemoryStatusResponse,
    SystemSharedMemoryUnregisterRequest, SystemSharedMemoryUnregisterResponse, TraceSettingRequest,
    TraceSettingResponse, log_settings_request::setting_value::ParameterChoice,
    model_repository_parameter::ParameterChoice as ModelRepositoryChoice,
};
use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::answers::{self, LoadParameter, LogValue, not_yet};
use super::convert;
use super::infer::Inference;
use super::status::status;

/// Requests of one stream processed at once; responses keep the order of the requests.
const STREAM_IN_FLIGHT: usize = 128;

/// The inference service.
#[derive(Debug, Clone)]
pub struct InferenceService {
    inference: Inference,
}

impl InferenceService {
    pub fn new(inference: Inference) -> Self {
        InferenceService { inference }
    }

    /// One inference, start to end: the same path for unary and streaming calls. `metadata_key` is
    /// the call's `accel-routing-key` metadata; the request's own parameter wins over it.
    async fn infer(&self, req: ModelInferRequest, metadata_key: Option<&str>) -> Result<ModelInferResponse, Status> {
        let (model, version) = (req.model_name.clone(), req.model_version.clone());
        let key = convert::routing_key(&req)?;
        let key = key.as_deref().or(metadata_key);
        let r = self
            .inference
            .infer(&model, &version, key, move |_| convert::infer_request(req))
            .await?;
        Ok(convert::infer_response(r.model_name, r.model_version, r.id, r.outputs))
    }
}

/// The call's `accel-routing-key` metadata, if any.
fn routing_metadata(metadata: &tonic::metadata::MetadataMap) -> Result<Option<String>, Status> {
    match metadata.get(crate::residency::split::ROUTING_KEY_HEADER) {
        None => Ok(None),
        Some(v) => v.to_str().map(|s| Some(s.to_string())).map_err(|_| {
            Status::invalid_argument(format!(
                "metadata {} must be text",
                crate::residency::split::ROUTING_KEY_HEADER
            ))
        }),
    }
}

type StreamOf<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn unimplemented<T>(what: &str, issue: &str) -> Result<Response<T>, Status> {
    Err(not_yet(what, issue).into())
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.inference.ready(),
        }))
    }

    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let ready =
            !self.inference.lifecycle.draining() && self.inference.registry.model_ready(&r.name, &r.version).await;
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(answers::server_metadata()))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(
            answers::model_metadata(&self.inference.registry, &r.name, &r.version).await?,
        ))
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        let key = routing_metadata(request.metadata())?;
        self.infer(request.into_inner(), key.as_deref())
            .await
            .map(Response::new)
    }

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<ModelInferRequest>>,
    ) -> Result<Response<StreamOf<ModelStreamInferResponse>>, Status> {
        let service = self.clone();
        let key = routing_metadata(request.metadata())?;
        let responses = request
            .into_inner()
            .map(move |next| {
                let service = service.clone();
                let key = key.clone();
                async move {
                    let req = next?;
                    let (model_name, model_version, id) =
                        (req.model_name.clone(), req.model_version.clone(), req.id.clone());
                    // Errors travel in-band; the stream stays open for the next request.
                    Ok(match service.infer(req, key.as_deref()).await {
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
        Ok(Response::new(
            answers::model_config(&self.inference.registry, &r.name, &r.version).await?,
        ))
    }

    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(answers::model_statistics(
            &self.inference.registry,
            &r.name,
            &r.version,
        )?))
    }

    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        Ok(Response::new(answers::repository_index(
            &self.inference.registry,
            request.into_inner().ready,
        )))
    }

    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        let r = request.into_inner();
        let parameters = r
            .parameters
            .into_iter()
            .map(|(k, v)| {
                let value = match v.parameter_choice {
                    Some(ModelRepositoryChoice::StringParam(s)) => LoadParameter::String(s),
                    // tritonclient sends the config override as bytes when given as such.
                    Some(ModelRepositoryChoice::BytesParam(b)) => match String::from_utf8(b.to_vec()) {
                        Ok(s) => LoadParameter::String(s),
                        Err(_) => LoadParameter::Other,
                    },
                    _ => LoadParameter::Other,
                };
                (k, value)
            })
            .collect();
        answers::load_model(&self.inference.registry, &r.model_name, parameters).await?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        let r = request.into_inner();
        answers::unload_model(&self.inference.registry, &r.model_name).await?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }

    async fn system_shared_memory_status(
        &self,
        request: Request<SystemSharedMemoryStatusRequest>,
    ) -> Result<Response<SystemSharedMemoryStatusResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(answers::system_shm_status(&self.inference.shm, &r.name)?))
    }

    async fn system_shared_memory_register(
        &self,
        request: Request<SystemSharedMemoryRegisterRequest>,
    ) -> Result<Response<SystemSharedMemoryRegisterResponse>, Status> {
        let r = request.into_inner();
        self.inference
            .shm
            .register(&r.name, &r.key, r.offset, r.byte_size)
            .map_err(status)?;
        Ok(Response::new(SystemSharedMemoryRegisterResponse {}))
    }

    async fn system_shared_memory_unregister(
        &self,
        request: Request<SystemSharedMemoryUnregisterRequest>,
    ) -> Result<Response<SystemSharedMemoryUnregisterResponse>, Status> {
        let r = request.into_inner();
        self.inference.shm.unregister(&r.name).await.map_err(status)?;
        Ok(Response::new(SystemSharedMemoryUnregisterResponse {}))
    }

    async fn cuda_shared_memory_status(
        &self,
        request: Request<CudaSharedMemoryStatusRequest>,
    ) -> Result<Response<CudaSharedMemoryStatusResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(answers::cuda_shm_status(&self.inference.shm, &r.name)?))
    }

    async fn cuda_shared_memory_register(
        &self,
        request: Request<CudaSharedMemoryRegisterRequest>,
    ) -> Result<Response<CudaSharedMemoryRegisterResponse>, Status> {
        let r = request.into_inner();
        let shm = self.inference.shm.clone();
        shm.register_cuda(r.name, r.raw_handle.to_vec(), r.device_id, r.byte_size)
            .await
            .map_err(status)?;
        Ok(Response::new(CudaSharedMemoryRegisterResponse {}))
    }

    async fn cuda_shared_memory_unregister(
        &self,
        request: Request<CudaSharedMemoryUnregisterRequest>,
    ) -> Result<Response<CudaSharedMemoryUnregisterResponse>, Status> {
        let r = request.into_inner();
        self.inference.shm.unregister_cuda(&r.name).await.map_err(status)?;
        Ok(Response::new(CudaSharedMemoryUnregisterResponse {}))
    }

    async fn trace_setting(&self, _: Request<TraceSettingRequest>) -> Result<Response<TraceSettingResponse>, Status> {
        unimplemented("TraceSetting", "request tracing (not scheduled yet)")
    }

    async fn log_settings(
        &self,
        request: Request<LogSettingsRequest>,
    ) -> Result<Response<LogSettingsResponse>, Status> {
        let mut updates = Vec::new();
        for (key, value) in request.into_inner().settings {
            let value = match value.parameter_choice {
                Some(ParameterChoice::BoolParam(b)) => LogValue::Bool(b),
                Some(ParameterChoice::Uint32Param(u)) => LogValue::Uint(u),
                Some(ParameterChoice::StringParam(s)) => LogValue::String(s),
                None => continue,
            };
            updates.push((key, value));
        }
        Ok(Response::new(answers::log_settings(updates).map_err(status)?))
    }
}

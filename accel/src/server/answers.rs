//! Answers to the requests other than inference, as the protocol's messages. gRPC returns them as
//! they are; REST returns their JSON form (`http`), so both front ends report exactly the same thing.

use std::sync::Arc;

use accel_proto::inference::{
    InferBatchStatistics, InferStatistics, LogSettingsResponse, MemoryUsage, ModelConfig, ModelConfigResponse,
    ModelMetadataResponse, ModelStatistics, ModelStatisticsResponse, RepositoryIndexResponse, ServerMetadataResponse,
    StatisticDuration, log_settings_response::SettingValue, log_settings_response::setting_value::ParameterChoice,
    model_metadata_response::TensorMetadata, repository_index_response::ModelIndex,
};

use accel_proto::inference::{
    CudaSharedMemoryStatusResponse, SystemSharedMemoryStatusResponse,
    cuda_shared_memory_status_response::RegionStatus as CudaRegionStatus,
    system_shared_memory_status_response::RegionStatus as SystemRegionStatus,
};

use crate::core::{Error, IoSpec};
use crate::logging::{self, LogFormat, LogSettings};
use crate::residency::{ModelState, Registry};
use crate::shm::SharedMemory;
use crate::stats::{DurationStat, ModelStats};

/// Extensions of the protocol this server really implements.
pub const EXTENSIONS: &[&str] = &[
    "model_configuration",
    "statistics",
    "schedule_policy",
    "parameters",
    "binary_tensor_data",
    "logging",
    "model_repository",
    "system_shared_memory",
];

/// The system shared-memory regions registered (`""`: all).
pub(super) fn system_shm_status(shm: &SharedMemory, name: &str) -> Result<SystemSharedMemoryStatusResponse, Error> {
    let regions = shm
        .status(name)?
        .into_iter()
        .map(|r| {
            let status = SystemRegionStatus {
                name: r.name.clone(),
                key: r.key,
                offset: r.offset,
                byte_size: r.byte_size,
            };
            (r.name, status)
        })
        .collect();
    Ok(SystemSharedMemoryStatusResponse { regions })
}

/// The CUDA regions registered (`""`: all; none in a build without `cuda`).
pub(super) fn cuda_shm_status(shm: &SharedMemory, name: &str) -> Result<CudaSharedMemoryStatusResponse, Error> {
    let regions = shm
        .cuda_status(name)?
        .into_iter()
        .map(|r| {
            let status = CudaRegionStatus {
                name: r.name.clone(),
                device_id: u64::try_from(r.device_id).unwrap_or(0),
                byte_size: r.byte_size,
            };
            (r.name, status)
        })
        .collect();
    Ok(CudaSharedMemoryStatusResponse { regions })
}

/// An RPC that belongs to work still to come.
pub(super) fn not_yet(what: &str, issue: &str) -> Error {
    Error::unimplemented(format!("{what} is not implemented yet: it arrives with {issue}"))
}

pub(super) fn server_metadata() -> ServerMetadataResponse {
    ServerMetadataResponse {
        name: "accel".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: EXTENSIONS.iter().map(|s| s.to_string()).collect(),
    }
}

fn tensor_metadata(io: &IoSpec, batching: bool) -> TensorMetadata {
    TensorMetadata {
        name: io.name.clone(),
        datatype: io.datatype.wire_name().to_string(),
        shape: io.reported_shape(batching),
    }
}

pub(super) async fn model_metadata(
    registry: &Arc<Registry>,
    name: &str,
    version: &str,
) -> Result<ModelMetadataResponse, Error> {
    let lease = registry.acquire(name, version).await?;
    let spec = &lease.spec;
    Ok(ModelMetadataResponse {
        name: spec.name.clone(),
        versions: registry.versions(&spec.name),
        platform: lease.config.platform.clone(),
        inputs: spec.inputs.iter().map(|i| tensor_metadata(i, spec.batches())).collect(),
        outputs: spec
            .outputs
            .iter()
            .map(|o| tensor_metadata(o, spec.batches()))
            .collect(),
        properties: Default::default(),
    })
}

pub(super) async fn model_config(
    registry: &Arc<Registry>,
    name: &str,
    version: &str,
) -> Result<ModelConfigResponse, Error> {
    let lease = registry.acquire(name, version).await?;
    let mut config = lease.config.clone();
    // Weights changed through the repository API take effect without a reload: report them.
    if let Some(weights) = registry.version_weights(name) {
        config.parameters.insert(
            crate::residency::split::VERSION_WEIGHTS.to_string(),
            accel_proto::inference::ModelParameter { string_value: weights },
        );
    }
    Ok(ModelConfigResponse { config: Some(config) })
}

fn duration(s: &DurationStat) -> Option<StatisticDuration> {
    let (count, ns) = s.get();
    Some(StatisticDuration { count, ns })
}

fn statistics(name: &str, version: u64, s: &ModelStats) -> ModelStatistics {
    let batch = |count, ns| Some(StatisticDuration { count, ns });
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
                compute_input: batch(b.count, b.input_ns),
                compute_infer: batch(b.count, b.infer_ns),
                compute_output: batch(b.count, b.output_ns),
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

/// Statistics of the loaded versions of one model (kept across evictions), or of every model when
/// `name` is empty.
pub(super) fn model_statistics(
    registry: &Registry,
    name: &str,
    version: &str,
) -> Result<ModelStatisticsResponse, Error> {
    let found = registry.statistics(name, version)?;
    Ok(ModelStatisticsResponse {
        model_stats: found.iter().map(|(n, v, s)| statistics(n, *v, s)).collect(),
    })
}

/// A RepositoryModelLoad parameter, whichever protocol carried it.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum LoadParameter {
    String(String),
    Other,
}

/// Loads (or reloads) a model; `config` is Triton's override: the model's whole configuration as JSON.
pub(super) async fn load_model(
    registry: &Arc<Registry>,
    name: &str,
    parameters: Vec<(String, LoadParameter)>,
) -> Result<(), Error> {
    let mut config = None;
    for (key, value) in parameters {
        match (key.as_str(), value) {
            ("config", LoadParameter::String(json)) => config = Some(config_from_json(name, &json)?),
            ("config", _) => return Err(Error::invalid_argument("parameter 'config' must be a JSON string")),
            (k, _) if k.starts_with("file:") => {
                return Err(Error::unimplemented(
                    "model file overrides ('file:' parameters) are not supported: put the files in the repository",
                ));
            }
            (k, _) => return Err(Error::invalid_argument(format!("unknown load parameter '{k}'"))),
        }
    }
    registry.load_model(name, config).await?;
    Ok(())
}

/// Triton's JSON form of a ModelConfig (field names as in the .proto, enums by name), checked against
/// the model it is for.
fn config_from_json(name: &str, json: &str) -> Result<ModelConfig, Error> {
    let internal = |m: String| Error::new(crate::core::Code::Internal, m);
    let descriptor = accel_proto::descriptor_pool()
        .map_err(|e| internal(e.to_string()))?
        .get_message_by_name(accel_proto::MODEL_CONFIG_MESSAGE)
        .ok_or_else(|| internal("the ModelConfig descriptor is missing".into()))?;
    let mut de = serde_json::Deserializer::from_str(json);
    let options = prost_reflect::DeserializeOptions::new().deny_unknown_fields(false);
    let message = prost_reflect::DynamicMessage::deserialize_with_options(descriptor, &mut de, &options)
        .map_err(|e| Error::invalid_argument(format!("parameter 'config' is not a model configuration: {e}")))?;
    let config: ModelConfig = message
        .transcode_to()
        .map_err(|e| Error::invalid_argument(format!("parameter 'config': {e}")))?;
    if !config.name.is_empty() && config.name != name {
        return Err(Error::invalid_argument(format!(
            "parameter 'config' names the model '{}', not '{name}'",
            config.name
        )));
    }
    Ok(config)
}

/// Unloads a model once its requests in flight have finished.
pub(super) async fn unload_model(registry: &Arc<Registry>, name: &str) -> Result<(), Error> {
    registry.unload_model(name).await?;
    Ok(())
}

pub(super) fn repository_index(registry: &Registry, ready_only: bool) -> RepositoryIndexResponse {
    let models = registry
        .index()
        .into_iter()
        .filter(|e| !ready_only || e.state == ModelState::Ready)
        .map(|e| ModelIndex {
            name: e.name,
            version: e.version,
            state: e.state.as_str().into(),
            reason: e.reason,
        })
        .collect();
    RepositoryIndexResponse { models }
}

/// A LogSettings value, whichever protocol carried it.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum LogValue {
    Bool(bool),
    Uint(u32),
    String(String),
}

/// Applies LogSettings updates (none: just report) and returns the settings in force.
pub(super) fn log_settings(updates: Vec<(String, LogValue)>) -> Result<LogSettingsResponse, Error> {
    let control = logging::control().ok_or_else(|| {
        Error::new(
            crate::core::Code::Unavailable,
            "this process did not install Accel's logger",
        )
    })?;
    let mut s = control.settings();
    let changed = !updates.is_empty();
    for (key, value) in updates {
        match (key.as_str(), value) {
            ("log_info", LogValue::Bool(b)) => s.info = b,
            ("log_warning", LogValue::Bool(b)) => s.warning = b,
            ("log_error", LogValue::Bool(b)) => s.error = b,
            ("log_verbose_level", LogValue::Uint(v)) => s.verbose = v,
            // Triton's formats are text lines ("default", or "ISO8601" timestamps, which these
            // lines have); "json" is Accel's one JSON object per line.
            ("log_format", LogValue::String(f)) if matches!(f.as_str(), "default" | "ISO8601" | "text") => {
                s.format = LogFormat::Text;
            }
            ("log_format", LogValue::String(f)) if f == "json" => s.format = LogFormat::Json,
            ("log_file", LogValue::String(f)) if f.is_empty() => {}
            ("log_file", LogValue::String(_)) => {
                return Err(Error::unimplemented("log_file: Accel logs to standard output only"));
            }
            (k, v) => {
                return Err(Error::invalid_argument(format!(
                    "log setting '{k}' cannot be set to {v:?}"
                )));
            }
        }
    }
    if changed {
        control
            .update(s.clone())
            .map_err(|e| Error::new(crate::core::Code::Internal, e))?;
        tracing::info!(settings = ?s, "log settings changed");
    }
    Ok(log_response(&s))
}

fn log_response(s: &LogSettings) -> LogSettingsResponse {
    let v = |c: ParameterChoice| SettingValue {
        parameter_choice: Some(c),
    };
    let mut settings = std::collections::HashMap::new();
    settings.insert("log_file".into(), v(ParameterChoice::StringParam(String::new())));
    settings.insert("log_info".into(), v(ParameterChoice::BoolParam(s.info)));
    settings.insert("log_warning".into(), v(ParameterChoice::BoolParam(s.warning)));
    settings.insert("log_error".into(), v(ParameterChoice::BoolParam(s.error)));
    settings.insert("log_verbose_level".into(), v(ParameterChoice::Uint32Param(s.verbose)));
    let format = match s.format {
        LogFormat::Text => "default",
        LogFormat::Json => "json",
    };
    settings.insert("log_format".into(), v(ParameterChoice::StringParam(format.into())));
    LogSettingsResponse { settings }
}

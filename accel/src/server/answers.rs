//! Answers to the requests other than inference, as the protocol's messages. gRPC returns them as
//! they are; REST returns their JSON form (`http`), so both front ends report exactly the same thing.

use accel_proto::inference::{
    InferBatchStatistics, InferStatistics, LogSettingsResponse, MemoryUsage, ModelConfigResponse,
    ModelMetadataResponse, ModelStatistics, ModelStatisticsResponse, RepositoryIndexResponse, ServerMetadataResponse,
    StatisticDuration, log_settings_response::SettingValue, log_settings_response::setting_value::ParameterChoice,
    model_metadata_response::TensorMetadata, repository_index_response::ModelIndex,
};

use crate::core::{Error, IoSpec};
use crate::logging::{self, LogFormat, LogSettings};
use crate::residency::{ModelState, Registry};
use crate::stats::{DurationStat, ModelStats};

/// Extensions of the protocol this server really implements.
pub const EXTENSIONS: &[&str] = &[
    "model_configuration",
    "statistics",
    "schedule_policy",
    "parameters",
    "binary_tensor_data",
    "logging",
];

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

pub(super) fn model_metadata(registry: &Registry, name: &str, version: &str) -> Result<ModelMetadataResponse, Error> {
    let lease = registry.acquire(name, version)?;
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

pub(super) fn model_config(registry: &Registry, name: &str, version: &str) -> Result<ModelConfigResponse, Error> {
    let lease = registry.acquire(name, version)?;
    Ok(ModelConfigResponse {
        config: Some(lease.config.clone()),
    })
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

/// Statistics of one model's READY versions, or of every model when `name` is empty.
pub(super) fn model_statistics(
    registry: &Registry,
    name: &str,
    version: &str,
) -> Result<ModelStatisticsResponse, Error> {
    let served = registry.served(name, version)?;
    Ok(ModelStatisticsResponse {
        model_stats: served
            .iter()
            .map(|m| statistics(&m.spec.name, m.spec.version, &m.stats))
            .collect(),
    })
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
            ("log_format", LogValue::String(f)) if f == "default" || f == "ISO8601" => {}
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

//! config.pbtxt: parsing into the ModelConfig proto (leniently, see `pbtxt`), choosing versions, and
//! turning a complete ModelConfig into the request path's [`ModelSpec`].

use std::time::Duration;

use accel_proto::inference::{
    ModelConfig, ModelDynamicBatching, ModelQueuePolicy, batch_input::Kind as ProtoBatchInputKind,
    model_config::SchedulingChoice, model_instance_group::Kind as GroupKind,
    model_queue_policy::TimeoutAction as ProtoTimeoutAction, model_version_policy::PolicyChoice,
};

use super::{RepositoryError, pbtxt};
use crate::core::{
    BatchInputKind, BatchInputSpec, BatchOutputSpec, BatchingPolicy, DataType, InstanceKind, IoSpec, ModelSpec,
    Padding, QueuePolicy, Scheduling, SloAction, SloPolicy, TimeoutAction, VariableBatching,
    model::{DEFAULT_MIN_PADDING_EFFICIENCY, MAX_BATCH_TOKENS, MIN_PADDING_EFFICIENCY, PADDED_INPUTS, PADDED_OUTPUTS},
    model::{SLO_ACTION, SLO_HEADROOM, SLO_MS, SLO_PERCENTILE},
};

/// The most instances (executor threads, each with its own engine state) one model version may
/// have: far above what a device can use, low enough that a config cannot exhaust threads.
pub(super) const MAX_INSTANCE_COUNT: usize = 64;

/// Parses config.pbtxt text. Returns the config and the paths of fields Accel ignores.
pub fn parse_config(text: &str) -> Result<(ModelConfig, Vec<String>), String> {
    let pool = accel_proto::descriptor_pool().map_err(|e| format!("protocol descriptors: {e}"))?;
    let desc = pool
        .get_message_by_name(accel_proto::MODEL_CONFIG_MESSAGE)
        .ok_or_else(|| "protocol descriptors lack ModelConfig".to_string())?;
    let parsed = pbtxt::parse_lenient(&desc, text)?;
    let config = parsed
        .message
        .transcode_to::<ModelConfig>()
        .map_err(|e| e.to_string())?;
    Ok((config, parsed.ignored))
}

/// Applies the version policy to the versions found on disk (ascending).
pub(super) fn select_versions<T>(
    config: &ModelConfig,
    mut available: Vec<(u64, T)>,
) -> Result<Vec<(u64, T)>, RepositoryError> {
    let policy = config.version_policy.as_ref().and_then(|p| p.policy_choice.as_ref());
    Ok(match policy {
        None => latest(available, 1),
        Some(PolicyChoice::Latest(l)) => latest(available, l.num_versions.max(1) as usize),
        Some(PolicyChoice::All(_)) => available,
        Some(PolicyChoice::Specific(s)) => {
            let mut missing = Vec::new();
            for v in &s.versions {
                if !available.iter().any(|(a, _)| *a as i64 == *v) {
                    missing.push(*v);
                }
            }
            if !missing.is_empty() {
                return Err(RepositoryError::Invalid(format!(
                    "version_policy names versions {missing:?} that have no model file"
                )));
            }
            available.retain(|(a, _)| s.versions.contains(&(*a as i64)));
            available
        }
    })
}

fn latest<T>(mut available: Vec<(u64, T)>, n: usize) -> Vec<(u64, T)> {
    let skip = available.len().saturating_sub(n);
    available.drain(..skip);
    available
}

/// Builds the request path's view of a complete config (inputs and outputs known).
pub fn to_spec(config: &ModelConfig, version: u64, backend: &str) -> Result<ModelSpec, String> {
    let max_batch_size = usize::try_from(config.max_batch_size)
        .map_err(|_| format!("max_batch_size must not be negative, got {}", config.max_batch_size))?;
    let inputs = config
        .input
        .iter()
        .map(|i| {
            io_spec(
                &i.name,
                i.data_type,
                &i.dims,
                i.reshape.as_ref().map(|r| &r.shape),
                i.optional,
                "input",
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut inputs = inputs;
    for (spec, config) in inputs.iter_mut().zip(&config.input) {
        spec.ragged = config.allow_ragged_batch;
        if spec.ragged && spec.optional {
            return Err(format!("input '{}' cannot be both ragged and optional", spec.name));
        }
    }
    let outputs = config
        .output
        .iter()
        .map(|o| {
            io_spec(
                &o.name,
                o.data_type,
                &o.dims,
                o.reshape.as_ref().map(|r| &r.shape),
                false,
                "output",
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    if inputs.is_empty() {
        return Err("the model has no inputs".into());
    }
    if outputs.is_empty() {
        return Err("the model has no outputs".into());
    }
    for (list, what) in [(&inputs, "input"), (&outputs, "output")] {
        for (i, a) in list.iter().enumerate() {
            if list[..i].iter().any(|b| b.name == a.name) {
                return Err(format!("{what} '{}' is declared twice", a.name));
            }
        }
    }
    let slo = slo_policy(config)?;
    let scheduling = match &config.scheduling_choice {
        Some(SchedulingChoice::DynamicBatching(d)) if max_batch_size > 0 => {
            let mut policy = batching_policy(d, max_batch_size)?;
            if slo.is_some() && (!policy.max_queue_delay.is_zero() || !policy.preferred_batch_sizes.is_empty()) {
                tracing::info!(model = %config.name, "SLO mode: max_queue_delay_microseconds and preferred_batch_size are ignored");
            }
            policy.slo = slo;
            Scheduling::Dynamic(policy)
        }
        _ if slo.is_some() => {
            return Err(format!(
                "{SLO_MS} needs a model that batches (max_batch_size > 0 and dynamic_batching)"
            ));
        }
        Some(SchedulingChoice::DynamicBatching(_)) => {
            tracing::warn!(model = %config.name, "dynamic_batching is ignored: max_batch_size is 0, so requests cannot be batched");
            Scheduling::Direct
        }
        None => Scheduling::Direct,
    };
    let mut instance_count = 0usize;
    let mut instance_kind = InstanceKind::Cpu;
    for group in &config.instance_group {
        let count =
            usize::try_from(group.count).map_err(|_| format!("instance_group count {} is negative", group.count))?;
        instance_count = instance_count.saturating_add(count.max(1));
        if instance_count > MAX_INSTANCE_COUNT {
            return Err(format!(
                "instance_group asks for more than {MAX_INSTANCE_COUNT} instances (count {}), the most a model may have",
                group.count
            ));
        }
        if group.kind() == GroupKind::Gpu {
            instance_kind = InstanceKind::Gpu;
        }
    }
    let variable = variable_batching(config, &inputs, &outputs, max_batch_size)?;
    if variable.padding.is_some() && matches!(&scheduling, Scheduling::Dynamic(p) if p.slo.is_some()) {
        return Err(format!("{SLO_MS} cannot be combined with {PADDED_INPUTS} yet"));
    }
    Ok(ModelSpec {
        name: config.name.clone(),
        version,
        platform: config.platform.clone(),
        backend: backend.to_string(),
        max_batch_size,
        inputs,
        outputs,
        scheduling,
        instance_count: instance_count.max(1),
        instance_kind,
        variable,
    })
}

/// Batch inputs, batch outputs and padding, checked against the inputs and outputs (Triton's
/// `ValidateBatchIO` messages where Triton has one).
fn variable_batching(
    config: &ModelConfig,
    inputs: &[IoSpec],
    outputs: &[IoSpec],
    max_batch_size: usize,
) -> Result<VariableBatching, String> {
    let input_index = |name: &str| {
        inputs
            .iter()
            .position(|i| i.name == name)
            .ok_or_else(|| format!("unknown source input name '{name}'"))
    };
    let mut batch_inputs = Vec::new();
    for b in &config.batch_input {
        let kind = match b.kind() {
            ProtoBatchInputKind::BatchElementCount => BatchInputKind::ElementCount,
            ProtoBatchInputKind::BatchAccumulatedElementCount => BatchInputKind::AccumulatedElementCount,
            ProtoBatchInputKind::BatchAccumulatedElementCountWithZero => {
                BatchInputKind::AccumulatedElementCountWithZero
            }
            ProtoBatchInputKind::BatchMaxElementCountAsShape => BatchInputKind::MaxElementCountAsShape,
            ProtoBatchInputKind::BatchItemShape => BatchInputKind::ItemShape,
            ProtoBatchInputKind::BatchItemShapeFlatten => BatchInputKind::ItemShapeFlatten,
        };
        if b.source_input.len() != 1 {
            return Err(format!(
                "batch input kind '{}' expects 1 source input, got {}",
                b.kind().as_str_name(),
                b.source_input.len()
            ));
        }
        let datatype = match DataType::from_config_value(b.data_type) {
            Some(d @ (DataType::I32 | DataType::F32)) => d,
            _ => return Err("batch input data type must be TYPE_INT32 or TYPE_FP32".into()),
        };
        let source = input_index(&b.source_input[0])?;
        if max_batch_size == 0 {
            return Err("batch_input needs a model that batches (max_batch_size > 0)".into());
        }
        if b.target_name.is_empty() {
            return Err(format!(
                "batch input kind '{}' has no target_name",
                b.kind().as_str_name()
            ));
        }
        for target in &b.target_name {
            if inputs.iter().any(|i| &i.name == target)
                || batch_inputs.iter().any(|x: &BatchInputSpec| &x.target == target)
            {
                return Err(format!("batch input target '{target}' is already an input"));
            }
            batch_inputs.push(BatchInputSpec {
                kind,
                target: target.clone(),
                datatype,
                source,
            });
        }
    }
    let mut batch_outputs = Vec::new();
    let mut scattered: Vec<usize> = Vec::new();
    for b in &config.batch_output {
        if b.source_input.len() != 1 {
            return Err(format!(
                "batch output kind 'BATCH_SCATTER_WITH_INPUT_SHAPE' expects 1 source input, got {}",
                b.source_input.len()
            ));
        }
        let source = input_index(&b.source_input[0])?;
        let mut targets = Vec::new();
        for t in &b.target_name {
            let k = outputs
                .iter()
                .position(|o| &o.name == t)
                .ok_or_else(|| format!("unknown target output name '{t}'"))?;
            if scattered.contains(&k) {
                return Err(format!("target output name '{t}' can only be specified once"));
            }
            if outputs[k].datatype == DataType::Bytes {
                return Err(format!("batch output '{t}' is BYTES, which cannot be scattered"));
            }
            scattered.push(k);
            targets.push(k);
        }
        batch_outputs.push(BatchOutputSpec { targets, source });
    }
    let padding = padding(config, inputs, outputs, max_batch_size)?;
    if padding.is_some() && inputs.iter().any(|i| i.ragged) {
        return Err(format!("{PADDED_INPUTS} and allow_ragged_batch cannot be combined"));
    }
    Ok(VariableBatching {
        batch_inputs,
        batch_outputs,
        padding,
    })
}

fn parameter<'a>(config: &'a ModelConfig, key: &str) -> Option<&'a str> {
    config.parameters.get(key).map(|p| p.string_value.trim())
}

fn padding(
    config: &ModelConfig,
    inputs: &[IoSpec],
    outputs: &[IoSpec],
    max_batch_size: usize,
) -> Result<Option<Padding>, String> {
    let Some(list) = parameter(config, PADDED_INPUTS) else {
        for key in [PADDED_OUTPUTS, MAX_BATCH_TOKENS, MIN_PADDING_EFFICIENCY] {
            if parameter(config, key).is_some() {
                return Err(format!("parameter {key} needs {PADDED_INPUTS}"));
            }
        }
        return Ok(None);
    };
    if max_batch_size == 0 || !matches!(config.scheduling_choice, Some(SchedulingChoice::DynamicBatching(_))) {
        return Err(format!(
            "{PADDED_INPUTS} needs a model that batches (max_batch_size > 0 and dynamic_batching)"
        ));
    }
    let mut padded = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, value) = item
            .split_once('=')
            .map(|(n, v)| (n.trim(), v.trim()))
            .ok_or_else(|| format!("{PADDED_INPUTS}: '{item}' is not name=pad_value"))?;
        let index = inputs
            .iter()
            .position(|i| i.name == name)
            .ok_or_else(|| format!("{PADDED_INPUTS} names '{name}', which is not an input"))?;
        let io = &inputs[index];
        if padded.iter().any(|(i, _)| *i == index) {
            return Err(format!("{PADDED_INPUTS} names '{name}' twice"));
        }
        if !io.dims.contains(&-1) {
            return Err(format!(
                "{PADDED_INPUTS}: input '{name}' has no variable (-1) dimension to pad"
            ));
        }
        if io.reshape.is_some() {
            return Err(format!(
                "{PADDED_INPUTS}: input '{name}' has a reshape, which padding does not support"
            ));
        }
        let pad = pad_bytes(io.datatype, value).ok_or_else(|| {
            format!(
                "{PADDED_INPUTS}: '{value}' is not a {} pad value for '{name}'",
                io.datatype
            )
        })?;
        padded.push((index, pad));
    }
    let Some((first, _)) = padded.first() else {
        return Err(format!("{PADDED_INPUTS} names no input"));
    };
    let token_dims = inputs[*first].dims.iter().filter(|&&d| d == -1).count();
    let mut padded_outputs = Vec::new();
    for name in parameter(config, PADDED_OUTPUTS)
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let k = outputs
            .iter()
            .position(|o| o.name == name)
            .ok_or_else(|| format!("{PADDED_OUTPUTS} names '{name}', which is not an output"))?;
        let o = &outputs[k];
        let variable = o.dims.iter().filter(|&&d| d == -1).count();
        if variable == 0 || variable > token_dims {
            return Err(format!(
                "{PADDED_OUTPUTS}: output '{name}' must have between 1 and {token_dims} variable (-1) dimensions, as '{}' has",
                inputs[*first].name
            ));
        }
        if o.datatype == DataType::Bytes || o.reshape.is_some() {
            return Err(format!(
                "{PADDED_OUTPUTS}: output '{name}' cannot be cut back (BYTES or reshaped)"
            ));
        }
        if !padded_outputs.contains(&k) {
            padded_outputs.push(k);
        }
    }
    let max_batch_tokens = parameter(config, MAX_BATCH_TOKENS)
        .map(|v| match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{MAX_BATCH_TOKENS} must be a positive integer, got '{v}'")),
        })
        .transpose()?;
    let min_efficiency_percent = parameter(config, MIN_PADDING_EFFICIENCY)
        .map(|v| match v.parse::<f64>() {
            Ok(x) if (0.0..=1.0).contains(&x) => Ok((x * 100.0).round() as u32),
            _ => Err(format!(
                "{MIN_PADDING_EFFICIENCY} must be a number between 0 and 1, got '{v}'"
            )),
        })
        .transpose()?
        .unwrap_or(DEFAULT_MIN_PADDING_EFFICIENCY);
    Ok(Some(Padding {
        inputs: padded,
        outputs: padded_outputs,
        max_batch_tokens,
        min_efficiency_percent,
    }))
}

/// The most a latency target may be: an hour.
const MAX_SLO_MS: f64 = 3_600_000.0;

/// SLO mode's parameters, when `accel.slo_ms` is given (the others need it).
fn slo_policy(config: &ModelConfig) -> Result<Option<SloPolicy>, String> {
    let number = |key: &str, range: std::ops::RangeInclusive<f64>, what: &str| -> Result<Option<f64>, String> {
        parameter(config, key)
            .map(|v| match v.parse::<f64>() {
                Ok(x) if x.is_finite() && range.contains(&x) => Ok(x),
                _ => Err(format!("{key} must be {what}, got '{v}'")),
            })
            .transpose()
    };
    let Some(ms) = number(SLO_MS, 0.0..=MAX_SLO_MS, "a number of milliseconds, at most an hour")? else {
        for key in [SLO_PERCENTILE, SLO_HEADROOM, SLO_ACTION] {
            if parameter(config, key).is_some() {
                return Err(format!("parameter {key} needs {SLO_MS}"));
            }
        }
        return Ok(None);
    };
    if ms <= 0.0 {
        return Err(format!("{SLO_MS} must be above 0, got '{ms}'"));
    }
    let percentile = number(SLO_PERCENTILE, 50.0..=99.99, "a percentile between 50 and 99.99")?.unwrap_or(99.0);
    let headroom = number(SLO_HEADROOM, 0.0..=0.9, "a fraction of the target between 0 and 0.9")?.unwrap_or(0.1);
    let action = match parameter(config, SLO_ACTION) {
        None | Some("best_effort") => SloAction::BestEffort,
        Some("shed") => SloAction::Shed,
        Some(other) => return Err(format!("{SLO_ACTION} must be 'shed' or 'best_effort', got '{other}'")),
    };
    Ok(Some(SloPolicy {
        target: Duration::from_secs_f64(ms / 1000.0),
        percentile_bp: (percentile * 100.0).round() as u32,
        headroom_bp: (headroom * 10_000.0).round() as u32,
        action,
    }))
}

/// One pad element of `datatype`, little-endian, from its text.
fn pad_bytes(datatype: DataType, text: &str) -> Option<Vec<u8>> {
    let int = || text.parse::<i128>().ok();
    Some(match datatype {
        DataType::Bool => vec![u8::from(match text {
            "0" | "false" => false,
            "1" | "true" => true,
            _ => return None,
        })],
        DataType::U8 => u8::try_from(int()?).ok()?.to_le_bytes().to_vec(),
        DataType::U16 => u16::try_from(int()?).ok()?.to_le_bytes().to_vec(),
        DataType::U32 => u32::try_from(int()?).ok()?.to_le_bytes().to_vec(),
        DataType::U64 => u64::try_from(int()?).ok()?.to_le_bytes().to_vec(),
        DataType::I8 => i8::try_from(int()?).ok()?.to_le_bytes().to_vec(),
        DataType::I16 => i16::try_from(int()?).ok()?.to_le_bytes().to_vec(),
        DataType::I32 => i32::try_from(int()?).ok()?.to_le_bytes().to_vec(),
        DataType::I64 => i64::try_from(int()?).ok()?.to_le_bytes().to_vec(),
        DataType::F16 => half::f16::from_f64(text.parse().ok()?).to_le_bytes().to_vec(),
        DataType::Bf16 => half::bf16::from_f64(text.parse().ok()?).to_le_bytes().to_vec(),
        DataType::F32 => text.parse::<f32>().ok()?.to_le_bytes().to_vec(),
        DataType::F64 => text.parse::<f64>().ok()?.to_le_bytes().to_vec(),
        DataType::Bytes => return None,
    })
}

fn io_spec(
    name: &str,
    data_type: i32,
    dims: &[i64],
    reshape: Option<&Vec<i64>>,
    optional: bool,
    what: &str,
) -> Result<IoSpec, String> {
    if name.is_empty() {
        return Err(format!("an {what} has no name"));
    }
    let datatype =
        DataType::from_config_value(data_type).ok_or_else(|| format!("{what} '{name}' has no valid data_type"))?;
    if let Some(d) = dims.iter().find(|&&d| d < -1) {
        return Err(format!(
            "{what} '{name}' has dimension {d}; dimensions are -1 (variable) or at least 0"
        ));
    }
    if let Some(d) = reshape.and_then(|shape| shape.iter().find(|&&d| d < -1)) {
        return Err(format!("{what} '{name}' reshape has dimension {d}"));
    }
    Ok(IoSpec {
        name: name.to_string(),
        datatype,
        dims: dims.to_vec(),
        reshape: reshape.cloned(),
        optional,
        verify_shape: false,
        ragged: false,
        labels: None,
    })
}

fn batching_policy(d: &ModelDynamicBatching, max_batch_size: usize) -> Result<BatchingPolicy, String> {
    let mut preferred = Vec::with_capacity(d.preferred_batch_size.len());
    for &p in &d.preferred_batch_size {
        match usize::try_from(p) {
            Ok(p) if p >= 1 && p <= max_batch_size => preferred.push(p),
            _ => {
                return Err(format!(
                    "preferred_batch_size {p} is not between 1 and max_batch_size {max_batch_size}"
                ));
            }
        }
    }
    preferred.sort_unstable();
    preferred.dedup();
    let levels = usize::try_from(d.priority_levels)
        .map_err(|_| "priority_levels is too large".to_string())?
        .max(1);
    if d.priority_levels > 1024 {
        return Err(format!("priority_levels {} is more than 1024", d.priority_levels));
    }
    let default_level = match d.default_priority_level {
        0 if d.priority_levels == 0 => 1,
        0 => return Err("default_priority_level must be set when priority_levels is".into()),
        l if l as usize <= levels => l as usize,
        l => {
            return Err(format!("default_priority_level {l} is outside 1..={levels}"));
        }
    };
    let default_policy = d.default_queue_policy.as_ref().map(queue_policy).unwrap_or_default();
    let mut queue_policies = vec![default_policy; levels];
    for (&level, policy) in &d.priority_queue_policy {
        if level == 0 || level > levels as u64 {
            return Err(format!(
                "priority_queue_policy names level {level}, outside 1..={levels}"
            ));
        }
        queue_policies[level as usize - 1] = queue_policy(policy);
    }
    Ok(BatchingPolicy {
        preferred_batch_sizes: preferred,
        max_queue_delay: Duration::from_micros(d.max_queue_delay_microseconds),
        priority_levels: levels,
        default_priority_level: default_level,
        queue_policies,
        slo: None,
    })
}

fn queue_policy(p: &ModelQueuePolicy) -> QueuePolicy {
    QueuePolicy {
        timeout_action: match p.timeout_action() {
            ProtoTimeoutAction::Reject => TimeoutAction::Reject,
            ProtoTimeoutAction::Delay => TimeoutAction::Delay,
        },
        default_timeout: (p.default_timeout_microseconds > 0)
            .then(|| Duration::from_micros(p.default_timeout_microseconds)),
        allow_timeout_override: p.allow_timeout_override,
        max_queue_size: (p.max_queue_size > 0).then_some(p.max_queue_size as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
        name: "mlp"
        platform: "onnxruntime_onnx"
        max_batch_size: 64
        version_policy: { latest: { num_versions: 2 } }
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 256 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 256 ] reshape: { shape: [ 16, 16 ] } } ]
        dynamic_batching {
          preferred_batch_size: [ 32, 8 ]
          max_queue_delay_microseconds: 500
          priority_levels: 2
          default_priority_level: 2
          default_queue_policy { max_queue_size: 100 default_timeout_microseconds: 2000 }
          priority_queue_policy { key: 1 value: { timeout_action: DELAY allow_timeout_override: true } }
        }
        instance_group [ { count: 2 kind: KIND_CPU } ]
        parameters { key: "pin" value: { string_value: "true" } }
    "#;

    #[test]
    fn parses_every_field_the_spec_uses() {
        let (config, ignored) = parse_config(FULL).unwrap();
        assert!(ignored.is_empty());
        let spec = to_spec(&config, 3, "candle").unwrap();
        assert_eq!(spec.max_batch_size, 64);
        assert_eq!(spec.instance_count, 2);
        assert_eq!(spec.outputs[0].reshape, Some(vec![16, 16]));
        let Scheduling::Dynamic(p) = spec.scheduling else {
            panic!("dynamic batching expected")
        };
        assert_eq!(p.preferred_batch_sizes, vec![8, 32]);
        assert_eq!(p.max_queue_delay, Duration::from_micros(500));
        assert_eq!(p.priority_levels, 2);
        assert_eq!(p.default_priority_level, 2);
        assert_eq!(p.queue_policies[0].timeout_action, TimeoutAction::Delay);
        assert!(p.queue_policies[0].allow_timeout_override);
        assert_eq!(p.queue_policies[1].max_queue_size, Some(100));
        assert_eq!(p.queue_policies[1].default_timeout, Some(Duration::from_millis(2)));
        assert_eq!(
            select_versions(&config, vec![(1, ()), (2, ()), (5, ())])
                .unwrap()
                .iter()
                .map(|v| v.0)
                .collect::<Vec<_>>(),
            vec![2, 5]
        );
    }

    #[test]
    fn rejects_inconsistent_configs() {
        let bad = [
            (
                "max_batch_size: 4 input [{name:\"a\" data_type: TYPE_FP32 dims: [1]}] output [{name:\"b\" data_type: TYPE_FP32 dims: [1]}] dynamic_batching { preferred_batch_size: 8 }",
                "preferred_batch_size 8",
            ),
            (
                "max_batch_size: 4 input [{name:\"a\" dims: [1]}] output [{name:\"b\" data_type: TYPE_FP32 dims: [1]}]",
                "no valid data_type",
            ),
            (
                "max_batch_size: 4 input [{name:\"a\" data_type: TYPE_FP32 dims: [-2]}] output [{name:\"b\" data_type: TYPE_FP32 dims: [1]}]",
                "dimension -2",
            ),
            (
                "max_batch_size: 4 input [{name:\"a\" data_type: TYPE_FP32 dims: [1]}] output [{name:\"b\" data_type: TYPE_FP32 dims: [1]}] dynamic_batching { priority_levels: 2 default_priority_level: 3 }",
                "outside 1..=2",
            ),
            (
                "max_batch_size: -1 input [{name:\"a\" data_type: TYPE_FP32 dims: [1]}] output [{name:\"b\" data_type: TYPE_FP32 dims: [1]}]",
                "negative",
            ),
            (
                "input [{name:\"a\" data_type: TYPE_FP32 dims: [1]}] output [{name:\"b\" data_type: TYPE_FP32 dims: [1]}] instance_group [{count: 2147483647}]",
                "more than 64 instances",
            ),
        ];
        for (text, needle) in bad {
            let (config, _) = parse_config(text).unwrap();
            let err = to_spec(&config, 1, "candle").unwrap_err();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
        let (config, _) = parse_config("version_policy { specific { versions: [3] } }").unwrap();
        assert!(select_versions(&config, vec![(1, ())]).is_err());
    }

    const PADDED: &str = r#"
        max_batch_size: 32
        input [ { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] },
                { name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] } ]
        output [ { name: "last_hidden_state" data_type: TYPE_FP32 dims: [ -1, 32 ] },
                 { name: "pooled" data_type: TYPE_FP32 dims: [ 32 ] } ]
        dynamic_batching { }
        parameters [ { key: "accel.padded_inputs" value: { string_value: "input_ids=0, attention_mask=0" } },
                     { key: "accel.padded_outputs" value: { string_value: "last_hidden_state" } },
                     { key: "accel.max_batch_tokens" value: { string_value: "4096" } } ]
    "#;

    #[test]
    fn padded_batching_parameters() {
        let (config, _) = parse_config(PADDED).unwrap();
        let spec = to_spec(&config, 1, "candle").unwrap();
        let p = spec.variable.padding.unwrap();
        assert_eq!(p.inputs, vec![(0, vec![0; 8]), (1, vec![0; 8])]);
        assert_eq!(p.outputs, vec![0]);
        assert_eq!(p.max_batch_tokens, Some(4096));
        assert_eq!(p.min_efficiency_percent, DEFAULT_MIN_PADDING_EFFICIENCY);
        let bad = [
            ("input_ids=0, nope=1", "last_hidden_state", "not an input"),
            ("input_ids=0", "nope", "not an output"),
            ("input_ids=x", "", "not a INT64 pad value"),
            ("input_ids=0", "pooled", "between 1 and 1 variable"),
            ("input_ids", "", "not name=pad_value"),
        ];
        for (inputs, outputs, needle) in bad {
            let text = PADDED
                .replace("input_ids=0, attention_mask=0", inputs)
                .replace("\"last_hidden_state\" } }", &format!("\"{outputs}\" }} }}"));
            let (config, _) = parse_config(&text).unwrap();
            let err = to_spec(&config, 1, "candle").unwrap_err();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
        let unbatched = PADDED.replace("max_batch_size: 32", "max_batch_size: 0");
        let (config, _) = parse_config(&unbatched).unwrap();
        assert!(
            to_spec(&config, 1, "candle")
                .unwrap_err()
                .contains("needs a model that batches")
        );
    }

    #[test]
    fn slo_parameters() {
        let base = r#"
            max_batch_size: 8
            input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]
            output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
            dynamic_batching { max_queue_delay_microseconds: 500 }
        "#;
        let with = |params: &[(&str, &str)]| {
            let list: Vec<String> = params
                .iter()
                .map(|(k, v)| format!("{{ key: \"{k}\" value: {{ string_value: \"{v}\" }} }}"))
                .collect();
            let (config, _) = parse_config(&format!("{base} parameters [ {} ]", list.join(", "))).unwrap();
            to_spec(&config, 1, "candle").map(|s| match s.scheduling {
                Scheduling::Dynamic(p) => p.slo,
                Scheduling::Direct => None,
            })
        };
        assert_eq!(with(&[]).unwrap(), None);
        let slo = with(&[("accel.slo_ms", "25")]).unwrap().unwrap();
        assert_eq!(slo.target, Duration::from_millis(25));
        assert_eq!(
            (slo.percentile_bp, slo.headroom_bp, slo.action),
            (9900, 1000, SloAction::BestEffort)
        );
        assert_eq!(slo.planned(None), Duration::from_micros(22_500));
        assert_eq!(slo.planned(Some(Duration::from_millis(10))), Duration::from_millis(9));
        assert_eq!(
            slo.target_of(Some(Duration::from_secs(9))),
            Duration::from_millis(25),
            "never raised"
        );
        let slo = with(&[
            ("accel.slo_ms", "2.5"),
            ("accel.slo_percentile", "99.9"),
            ("accel.slo_headroom", "0"),
            ("accel.slo_action", "shed"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (slo.target, slo.percentile_bp, slo.headroom_bp, slo.action),
            (Duration::from_micros(2500), 9990, 0, SloAction::Shed)
        );
        for (params, needle) in [
            (vec![("accel.slo_ms", "0")], "above 0"),
            (vec![("accel.slo_ms", "-3")], "accel.slo_ms must be"),
            (vec![("accel.slo_ms", "soon")], "accel.slo_ms must be"),
            (vec![("accel.slo_ms", "1e9")], "at most an hour"),
            (
                vec![("accel.slo_ms", "5"), ("accel.slo_percentile", "100")],
                "accel.slo_percentile",
            ),
            (
                vec![("accel.slo_ms", "5"), ("accel.slo_headroom", "1")],
                "accel.slo_headroom",
            ),
            (
                vec![("accel.slo_ms", "5"), ("accel.slo_action", "drop")],
                "'shed' or 'best_effort'",
            ),
            (vec![("accel.slo_action", "shed")], "needs accel.slo_ms"),
        ] {
            let err = with(&params).unwrap_err();
            assert!(err.contains(needle), "{params:?}: {err}");
        }
        let (config, _) = parse_config(
            &(base.replace("dynamic_batching { max_queue_delay_microseconds: 500 }", "")
                + r#" parameters { key: "accel.slo_ms" value: { string_value: "5" } }"#),
        )
        .unwrap();
        assert!(
            to_spec(&config, 1, "candle")
                .unwrap_err()
                .contains("needs a model that batches")
        );
    }

    #[test]
    fn batch_inputs_and_outputs_are_checked() {
        let base = r#"
            max_batch_size: 8
            input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true } ]
            output [ { name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] } ]
            dynamic_batching { }
        "#;
        let ok = format!(
            "{base} batch_input [ {{ kind: BATCH_ACCUMULATED_ELEMENT_COUNT target_name: \"IDX\" data_type: TYPE_INT32 source_input: \"INPUT\" }} ] \
             batch_output [ {{ target_name: \"OUT\" kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: \"INPUT\" }} ]"
        );
        let (config, _) = parse_config(&ok).unwrap();
        let spec = to_spec(&config, 1, "candle").unwrap();
        assert!(spec.inputs[0].ragged);
        assert_eq!(
            spec.variable.batch_inputs[0].kind,
            BatchInputKind::AccumulatedElementCount
        );
        assert_eq!(spec.variable.batch_outputs[0].targets, vec![0]);
        let bad = [
            (
                "batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: \"I\" data_type: TYPE_INT64 source_input: \"INPUT\" } ]",
                "TYPE_INT32 or TYPE_FP32",
            ),
            (
                "batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: \"I\" data_type: TYPE_INT32 source_input: \"X\" } ]",
                "unknown source input name 'X'",
            ),
            (
                "batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: \"INPUT\" data_type: TYPE_INT32 source_input: \"INPUT\" } ]",
                "already an input",
            ),
            (
                "batch_output [ { target_name: \"NOPE\" source_input: \"INPUT\" } ]",
                "unknown target output name 'NOPE'",
            ),
            (
                "batch_output [ { target_name: [\"OUT\", \"OUT\"] source_input: \"INPUT\" } ]",
                "only be specified once",
            ),
        ];
        for (extra, needle) in bad {
            let (config, _) = parse_config(&format!("{base} {extra}")).unwrap();
            let err = to_spec(&config, 1, "candle").unwrap_err();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }
}

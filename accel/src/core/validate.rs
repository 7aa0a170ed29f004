//! Validation of a request against its model, before anything is queued: input names, datatypes,
//! shapes (batch dimension and feature dimensions), byte sizes, requested outputs and scheduling
//! parameters. A request that passes can be batched and executed without further checks on the data.

use std::time::Duration;

use super::{InferRequest, IoSpec, ModelSpec, ParamValue, ScheduleOptions, Tensor, ValidationError};

/// A request that matches its model. Inputs are in the model's input order.
#[derive(Debug)]
pub struct ValidatedRequest {
    pub id: String,
    /// Rows this request contributes to a batch (1 for a model without a batch dimension).
    pub batch_size: usize,
    /// One slot per model input, in the model's order; `None` for an omitted optional input.
    pub inputs: Vec<Option<Tensor>>,
    /// Indices into the model's outputs, in the order requested; `None` for every output.
    pub outputs: Option<Vec<usize>>,
    /// Outputs answered with Triton's classification extension: (output index, class count).
    pub classification: Vec<(usize, usize)>,
    /// For a padded model: the sizes of the first padded input's variable dimensions (its
    /// tokens per row are their product). Empty otherwise.
    pub lengths: Vec<usize>,
    pub schedule: ScheduleOptions,
}

impl ValidatedRequest {
    /// Whether two requests can share one execution: every input present in both or in neither, with
    /// equal non-batch dimensions, except the inputs `free` marks (ragged or padded ones, whose
    /// fixed dimensions validation has already checked).
    pub fn batches_with(&self, other: &ValidatedRequest, free: &[bool]) -> bool {
        self.inputs.len() == other.inputs.len()
            && self
                .inputs
                .iter()
                .zip(&other.inputs)
                .enumerate()
                .all(|(k, (a, b))| match (a, b) {
                    (Some(a), Some(b)) => free.get(k).copied().unwrap_or(false) || a.shape.get(1..) == b.shape.get(1..),
                    (None, None) => true,
                    _ => false,
                })
    }

    /// Tokens per row of a padded model's request (1 for any other).
    pub fn tokens(&self) -> usize {
        self.lengths.iter().product()
    }

    /// Bytes of input data this request holds.
    pub fn input_bytes(&self) -> usize {
        self.inputs.iter().flatten().map(|t| t.data.len()).sum()
    }
}

/// Checks `request` against `spec`.
pub fn validate(spec: &ModelSpec, request: InferRequest) -> Result<ValidatedRequest, ValidationError> {
    let schedule = schedule_options(&request)?;
    let mut slots: Vec<Option<Tensor>> = vec![None; spec.inputs.len()];
    for tensor in request.inputs {
        let Some(index) = spec.inputs.iter().position(|i| i.name == tensor.name) else {
            return Err(ValidationError::UnknownInput {
                model: spec.name.clone(),
                input: tensor.name,
                expected: names(&spec.inputs),
            });
        };
        if slots[index].is_some() {
            return Err(ValidationError::DuplicateInput { input: tensor.name });
        }
        slots[index] = Some(tensor);
    }

    let mut batch: Option<(String, usize)> = None;
    for (spec_input, slot) in spec.inputs.iter().zip(&slots) {
        let Some(tensor) = slot else {
            if spec_input.optional {
                continue;
            }
            return Err(ValidationError::MissingInput {
                model: spec.name.clone(),
                input: spec_input.name.clone(),
            });
        };
        check_tensor(spec, spec_input, tensor)?;
        if spec.batches() {
            let rows = tensor.shape[0];
            match &batch {
                None => batch = Some((tensor.name.clone(), rows)),
                Some((first, expected)) if *expected != rows => {
                    return Err(ValidationError::BatchMismatch {
                        input: tensor.name.clone(),
                        first: first.clone(),
                        got: rows,
                        expected: *expected,
                    });
                }
                Some(_) => {}
            }
        }
    }

    let mut classification = Vec::new();
    let outputs = if request.outputs.is_empty() {
        None
    } else {
        let mut indices = Vec::with_capacity(request.outputs.len());
        for requested in &request.outputs {
            let Some(index) = spec.outputs.iter().position(|o| o.name == requested.name) else {
                return Err(ValidationError::UnknownOutput {
                    model: spec.name.clone(),
                    output: requested.name.clone(),
                    expected: names(&spec.outputs),
                });
            };
            if indices.contains(&index) {
                return Err(ValidationError::DuplicateOutput {
                    output: requested.name.clone(),
                });
            }
            if let Some((_, value)) = requested.parameters.iter().find(|(k, _)| k == "classification")
                && let Some(count) = class_count(&spec.outputs[index], value)?
            {
                classification.push((index, count));
            }
            indices.push(index);
        }
        Some(indices)
    };

    let rows = batch.as_ref().map_or(1, |(_, rows)| *rows);
    let lengths = padded_lengths(spec, &slots, rows)?;

    Ok(ValidatedRequest {
        id: request.id,
        batch_size: batch.map_or(1, |(_, rows)| rows),
        inputs: slots,
        outputs,
        classification,
        lengths,
        schedule,
    })
}

/// For a padded model: the sizes of the first padded input's variable dimensions, checked against
/// the model's token budget (`rows` rows of them); empty for another model or when that input is
/// left out.
pub fn padded_lengths(spec: &ModelSpec, slots: &[Option<Tensor>], rows: usize) -> Result<Vec<usize>, ValidationError> {
    let Some(padding) = &spec.variable.padding else {
        return Ok(Vec::new());
    };
    let (first, _) = padding.inputs[0];
    let lengths: Vec<usize> = match slots.get(first).and_then(Option::as_ref) {
        Some(t) => t.shape[usize::from(spec.batches())..]
            .iter()
            .zip(&spec.inputs[first].dims)
            .filter(|(_, want)| **want == -1)
            .map(|(&got, _)| got)
            .collect(),
        None => Vec::new(),
    };
    let cost = lengths.iter().try_fold(rows, |acc, &d| acc.checked_mul(d));
    if let Some(max) = padding.max_batch_tokens
        && cost.is_none_or(|c| c > max)
    {
        return Err(ValidationError::Request(format!(
            "input '{}': {rows} rows of {lengths:?} are more tokens than the model's {} {max}",
            spec.inputs[first].name,
            super::model::MAX_BATCH_TOKENS,
        )));
    }
    Ok(lengths)
}

/// The class count a requested output's `classification` parameter asks for (Triton's rules and
/// messages); `None` for 0, which asks for the tensor itself.
fn class_count(output: &IoSpec, value: &ParamValue) -> Result<Option<usize>, ValidationError> {
    let count = match value {
        ParamValue::Int(v) if *v >= 0 => *v as u64,
        ParamValue::Uint(v) => *v,
        ParamValue::Int(_) => {
            return Err(ValidationError::Request(format!(
                "output '{}': invalid value for 'classification' parameter, expected >= 0",
                output.name
            )));
        }
        _ => {
            return Err(ValidationError::Request(format!(
                "output '{}': invalid value type for 'classification' parameter, expected int64_param",
                output.name
            )));
        }
    };
    if !crate::core::classify::supports(output.datatype) {
        return Err(ValidationError::Request(format!(
            "output '{}': class result not available for output due to unsupported type '{}'",
            output.name, output.datatype
        )));
    }
    Ok((count > 0).then(|| usize::try_from(count).unwrap_or(usize::MAX)))
}

fn check_tensor(spec: &ModelSpec, expected: &IoSpec, tensor: &Tensor) -> Result<(), ValidationError> {
    if tensor.datatype != expected.datatype {
        return Err(ValidationError::DataTypeMismatch {
            input: tensor.name.clone(),
            got: tensor.datatype.to_string(),
            expected: expected.datatype.to_string(),
        });
    }
    let wire_shape = tensor.wire_shape();
    let shape_error = || ValidationError::ShapeMismatch {
        input: tensor.name.clone(),
        got: wire_shape.clone(),
        expected: describe_shape(expected, spec.batches()),
    };
    let rank = expected.dims.len() + usize::from(spec.batches());
    if tensor.shape.len() != rank {
        return Err(shape_error());
    }
    let feature_dims = if spec.batches() {
        let rows = tensor.shape[0];
        if rows == 0 {
            return Err(ValidationError::Malformed {
                input: tensor.name.clone(),
                reason: "the batch dimension must be at least 1".into(),
            });
        }
        if rows > spec.max_batch_size {
            return Err(ValidationError::BatchTooLarge {
                input: tensor.name.clone(),
                got: rows,
                max: spec.max_batch_size,
            });
        }
        &tensor.shape[1..]
    } else {
        &tensor.shape[..]
    };
    if feature_dims
        .iter()
        .zip(&expected.dims)
        .any(|(&got, &want)| want >= 0 && got as i64 != want)
    {
        return Err(shape_error());
    }
    let Some(elements) = tensor.element_count() else {
        return Err(ValidationError::Malformed {
            input: tensor.name.clone(),
            reason: format!("shape {wire_shape:?} has more elements than this server can address"),
        });
    };
    match tensor.datatype.size() {
        Some(size) => {
            let expected_bytes = elements.checked_mul(size).ok_or_else(|| ValidationError::Malformed {
                input: tensor.name.clone(),
                reason: format!("shape {wire_shape:?} has more bytes than this server can address"),
            })?;
            if tensor.data.len() != expected_bytes {
                return Err(ValidationError::ByteSize {
                    input: tensor.name.clone(),
                    got: tensor.data.len(),
                    expected: expected_bytes,
                    shape: wire_shape,
                    datatype: tensor.datatype.to_string(),
                });
            }
        }
        None => {
            let count = count_bytes_elements(&tensor.data).ok_or_else(|| ValidationError::Malformed {
                input: tensor.name.clone(),
                reason: "BYTES data is not a sequence of 4-byte little-endian lengths each followed by that many bytes"
                    .into(),
            })?;
            if count != elements {
                return Err(ValidationError::Malformed {
                    input: tensor.name.clone(),
                    reason: format!("{count} BYTES elements, but shape {wire_shape:?} needs {elements}"),
                });
            }
        }
    }
    Ok(())
}

/// Counts the elements of a raw `BYTES` tensor, or `None` if a length runs past the end.
pub(crate) fn count_bytes_elements(mut data: &[u8]) -> Option<usize> {
    let mut count = 0usize;
    while !data.is_empty() {
        let (len, rest) = data.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
        data = rest.get(len..)?;
        count += 1;
    }
    Some(count)
}

fn schedule_options(request: &InferRequest) -> Result<ScheduleOptions, ValidationError> {
    let mut options = ScheduleOptions::default();
    if let Some(value) = request.parameter("priority") {
        options.priority = match value {
            ParamValue::Int(v) if *v >= 0 => *v as u64,
            ParamValue::Uint(v) => *v,
            other => {
                return Err(ValidationError::Request(format!(
                    "parameter 'priority' must be a non-negative integer, got {other:?}"
                )));
            }
        };
    }
    if let Some(value) = request.parameter("timeout") {
        let micros = match value {
            ParamValue::Int(v) if *v >= 0 => *v as u64,
            ParamValue::Uint(v) => *v,
            other => {
                return Err(ValidationError::Request(format!(
                    "parameter 'timeout' must be a non-negative integer of microseconds, got {other:?}"
                )));
            }
        };
        // 0 means "no timeout", as in Triton.
        options.timeout = (micros > 0).then(|| Duration::from_micros(micros));
    }
    if let Some(value) = request.parameter(super::SLO_MS_PARAMETER) {
        options.slo = Some(slo_ms(value)?);
    }
    Ok(options)
}

/// The longest latency target a request may give: an hour.
const MAX_SLO_MS: f64 = 3_600_000.0;

/// A request's `accel.slo_ms`: a positive number of milliseconds (a string holding one is taken too).
fn slo_ms(value: &ParamValue) -> Result<Duration, ValidationError> {
    let ms = match value {
        ParamValue::Int(v) => Some(*v as f64),
        ParamValue::Uint(v) => Some(*v as f64),
        ParamValue::Double(v) => Some(*v),
        ParamValue::String(s) => s.trim().parse::<f64>().ok(),
        ParamValue::Bool(_) => None,
    };
    match ms {
        Some(ms) if ms.is_finite() && ms > 0.0 && ms <= MAX_SLO_MS => Ok(Duration::from_secs_f64(ms / 1000.0)),
        _ => Err(ValidationError::Request(format!(
            "parameter '{}' must be a number of milliseconds above 0 and at most {MAX_SLO_MS}, got {value:?}",
            super::SLO_MS_PARAMETER
        ))),
    }
}

fn names(specs: &[IoSpec]) -> String {
    specs
        .iter()
        .map(|s| format!("'{}'", s.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe_shape(spec: &IoSpec, batching: bool) -> String {
    let dims = spec.reported_shape(batching);
    let mut text = format!("{dims:?}");
    if batching {
        text.push_str(" (first dimension: batch)");
    }
    text
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::core::{DataType, InstanceKind, RequestedOutput, Scheduling};

    fn spec(max_batch_size: usize) -> ModelSpec {
        ModelSpec {
            name: "m".into(),
            version: 1,
            platform: "onnxruntime_onnx".into(),
            backend: "candle".into(),
            max_batch_size,
            inputs: vec![
                IoSpec {
                    name: "a".into(),
                    datatype: DataType::F32,
                    dims: vec![4],
                    reshape: None,
                    optional: false,
                    verify_shape: false,
                    ragged: false,
                    labels: None,
                },
                IoSpec {
                    name: "b".into(),
                    datatype: DataType::I32,
                    dims: vec![-1],
                    reshape: None,
                    optional: true,
                    verify_shape: false,
                    ragged: false,
                    labels: None,
                },
            ],
            outputs: vec![IoSpec {
                name: "y".into(),
                datatype: DataType::F32,
                dims: vec![4],
                reshape: None,
                optional: false,
                verify_shape: false,
                ragged: false,
                labels: None,
            }],
            scheduling: Scheduling::Direct,
            instance_count: 1,
            instance_kind: InstanceKind::Cpu,
            variable: Default::default(),
        }
    }

    fn tensor(name: &str, datatype: DataType, shape: &[usize], bytes: usize) -> Tensor {
        Tensor {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
            data: Bytes::from(vec![0u8; bytes]),
        }
    }

    fn request(inputs: Vec<Tensor>) -> InferRequest {
        InferRequest {
            model_name: "m".into(),
            inputs,
            ..Default::default()
        }
    }

    #[test]
    fn accepts_a_matching_request_and_orders_inputs() {
        let r = request(vec![
            tensor("b", DataType::I32, &[2, 3], 24),
            tensor("a", DataType::F32, &[2, 4], 32),
        ]);
        let v = validate(&spec(8), r).unwrap();
        assert_eq!(v.batch_size, 2);
        assert_eq!(v.inputs[0].as_ref().unwrap().name, "a");
        assert_eq!(v.inputs[1].as_ref().unwrap().name, "b");
        assert!(v.outputs.is_none());
    }

    #[test]
    fn rejects_each_kind_of_bad_input() {
        let s = spec(8);
        let cases: Vec<(InferRequest, &str)> = vec![
            (request(vec![tensor("a", DataType::F64, &[1, 4], 32)]), "datatype FP64"),
            (request(vec![tensor("a", DataType::F32, &[1, 5], 20)]), "shape [1, 5]"),
            (request(vec![tensor("a", DataType::F32, &[4], 16)]), "shape [4]"),
            (
                request(vec![tensor("a", DataType::F32, &[9, 4], 144)]),
                "exceeds the model's max_batch_size 8",
            ),
            (request(vec![tensor("a", DataType::F32, &[1, 4], 15)]), "15 bytes"),
            (
                request(vec![tensor("c", DataType::F32, &[1, 4], 16)]),
                "unexpected inference input 'c'",
            ),
            (
                request(vec![tensor("b", DataType::I32, &[1, 2], 8)]),
                "expects input 'a'",
            ),
            (
                request(vec![
                    tensor("a", DataType::F32, &[1, 4], 16),
                    tensor("a", DataType::F32, &[1, 4], 16),
                ]),
                "more than once",
            ),
            (
                request(vec![
                    tensor("a", DataType::F32, &[2, 4], 32),
                    tensor("b", DataType::I32, &[3, 1], 12),
                ]),
                "batch size 3 differs",
            ),
            (request(vec![tensor("a", DataType::F32, &[0, 4], 0)]), "at least 1"),
        ];
        for (r, needle) in cases {
            let err = validate(&s, r).unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }

    #[test]
    fn shape_overflow_is_an_error_not_a_panic() {
        let s = spec(0);
        let mut s2 = s.clone();
        s2.inputs[0].dims = vec![-1, -1];
        let r = request(vec![tensor("a", DataType::F32, &[usize::MAX, 3], 0)]);
        assert!(validate(&s2, r).is_err());
    }

    #[test]
    fn unknown_output_and_parameters() {
        let mut r = request(vec![tensor("a", DataType::F32, &[1, 4], 16)]);
        r.outputs = vec![RequestedOutput {
            name: "z".into(),
            parameters: vec![],
        }];
        assert!(validate(&spec(8), r).unwrap_err().to_string().contains("output 'z'"));

        // The same output twice (Triton refuses it too): a few bytes of request must not make the
        // response many times the output's size.
        let mut r = request(vec![tensor("a", DataType::F32, &[1, 4], 16)]);
        r.outputs = vec![
            RequestedOutput {
                name: "y".into(),
                parameters: vec![],
            };
            3
        ];
        let e = validate(&spec(8), r).unwrap_err();
        assert_eq!(e, ValidationError::DuplicateOutput { output: "y".into() });

        let mut r = request(vec![tensor("a", DataType::F32, &[1, 4], 16)]);
        r.parameters = vec![
            ("priority".into(), ParamValue::Int(2)),
            ("timeout".into(), ParamValue::Int(1500)),
        ];
        let v = validate(&spec(8), r).unwrap();
        assert_eq!(v.schedule.priority, 2);
        assert_eq!(v.schedule.timeout, Some(Duration::from_micros(1500)));

        let mut r = request(vec![tensor("a", DataType::F32, &[1, 4], 16)]);
        r.parameters = vec![("timeout".into(), ParamValue::String("soon".into()))];
        assert!(validate(&spec(8), r).is_err());

        for (value, expected) in [
            (ParamValue::Int(20), Some(20_000)),
            (ParamValue::Double(2.5), Some(2_500)),
            (ParamValue::String(" 7 ".into()), Some(7_000)),
            (ParamValue::Int(0), None),
            (ParamValue::Double(-1.0), None),
            (ParamValue::Double(f64::NAN), None),
            (ParamValue::Double(1e12), None),
            (ParamValue::Bool(true), None),
            (ParamValue::String("soon".into()), None),
        ] {
            let mut r = request(vec![tensor("a", DataType::F32, &[1, 4], 16)]);
            r.parameters = vec![(crate::core::SLO_MS_PARAMETER.into(), value.clone())];
            match (validate(&spec(8), r), expected) {
                (Ok(v), Some(us)) => assert_eq!(v.schedule.slo, Some(Duration::from_micros(us)), "{value:?}"),
                (Err(e), None) => assert!(e.to_string().contains("accel.slo_ms"), "{e}"),
                (other, _) => panic!("{value:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn bytes_elements_are_counted_and_truncation_is_caught() {
        let mut data = Vec::new();
        for s in ["ab", "", "xyz"] {
            data.extend_from_slice(&(s.len() as u32).to_le_bytes());
            data.extend_from_slice(s.as_bytes());
        }
        assert_eq!(count_bytes_elements(&data), Some(3));
        assert_eq!(count_bytes_elements(&data[..data.len() - 1]), None);
        assert_eq!(count_bytes_elements(&[1, 0]), None);
    }
}

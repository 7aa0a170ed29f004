//! Wire messages to core types and back. Raw tensor contents stay the received `Bytes` (no copy);
//! typed contents (`fp32_contents`...) are serialised once into the same little-endian form, with their
//! element count and kind checked against the tensor's datatype and shape.

use std::collections::HashMap;

use accel_proto::inference::{
    InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse, infer_parameter::ParameterChoice,
    model_infer_response::InferOutputTensor,
};
use bytes::{BufMut, Bytes, BytesMut};

use super::infer::Decoded;
use crate::core::{DataType, Error, InferRequest, ParamValue, Parameters, RequestedOutput, Tensor, element_count};
use crate::shm;

fn parameters(map: HashMap<String, InferParameter>) -> Parameters {
    let mut out: Parameters = map
        .into_iter()
        .filter_map(|(k, v)| {
            let value = match v.parameter_choice? {
                ParameterChoice::BoolParam(b) => ParamValue::Bool(b),
                ParameterChoice::Int64Param(i) => ParamValue::Int(i),
                ParameterChoice::StringParam(s) => ParamValue::String(s),
                ParameterChoice::DoubleParam(d) => ParamValue::Double(d),
                ParameterChoice::Uint64Param(u) => ParamValue::Uint(u),
            };
            Some((k, value))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Decodes a ModelInferRequest. Errors are INVALID_ARGUMENT and name the tensor. Inputs in shared
/// memory come back as references (bound by `Ticket::run`); raw_input_contents then holds one entry
/// per other input, in order (Triton's rule).
pub fn infer_request(req: ModelInferRequest) -> Result<Decoded, Error> {
    let ModelInferRequest {
        model_name,
        model_version,
        id,
        parameters: params,
        inputs,
        outputs,
        raw_input_contents,
    } = req;
    let in_memory = inputs
        .iter()
        .filter(|i| !i.parameters.contains_key(shm::REGION))
        .count();
    if !raw_input_contents.is_empty() && raw_input_contents.len() != in_memory {
        return Err(Error::invalid_argument(format!(
            "raw_input_contents has {} entries for {in_memory} inputs not in shared memory; send one per such input, in the order of the inputs",
            raw_input_contents.len(),
        )));
    }
    let mut raw = raw_input_contents.into_iter();
    let mut tensors = Vec::with_capacity(inputs.len());
    let mut shared = Vec::new();
    for input in inputs {
        let datatype = DataType::from_wire(&input.datatype).ok_or_else(|| {
            Error::invalid_argument(format!("input '{}': unknown datatype '{}'", input.name, input.datatype))
        })?;
        let shape = input
            .shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<Vec<usize>, _>>()
            .map_err(|_| {
                Error::invalid_argument(format!(
                    "input '{}': shape {:?} has a negative dimension",
                    input.name, input.shape
                ))
            })?;
        let typed = input.contents.filter(|c| !contents_empty(c));
        // Most inputs carry no parameters: nothing to convert then.
        let at = if input.parameters.is_empty() {
            None
        } else {
            shm::tensor_ref(&input.name, &parameters(input.parameters))?
        };
        if let Some(at) = at {
            if typed.is_some() {
                return Err(Error::invalid_argument(format!(
                    "unexpected 'content' provided when using shared memory for input tensor '{}' for model '{model_name}'",
                    input.name
                )));
            }
            shared.push((tensors.len(), at));
            tensors.push(Tensor {
                name: input.name,
                datatype,
                shape,
                data: Bytes::new(),
            });
            continue;
        }
        let data = match (raw.next(), typed) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid_argument(format!(
                    "input '{}': contents and raw_input_contents are both set; use one or the other",
                    input.name
                )));
            }
            (Some(bytes), None) => bytes,
            (None, Some(contents)) => typed_bytes(&input.name, datatype, &shape, contents)?,
            (None, None) => {
                let elements = element_count(&shape);
                if elements == Some(0) {
                    Bytes::new()
                } else {
                    return Err(Error::invalid_argument(format!(
                        "input '{}' carries no data",
                        input.name
                    )));
                }
            }
        };
        tensors.push(Tensor {
            name: input.name,
            datatype,
            shape,
            data,
        });
    }
    let request = InferRequest {
        model_name,
        model_version,
        id,
        parameters: parameters(params),
        inputs: tensors,
        outputs: outputs
            .into_iter()
            .map(|o| RequestedOutput {
                name: o.name,
                parameters: parameters(o.parameters),
            })
            .collect(),
    };
    Ok(Decoded { request, shared })
}

fn contents_empty(c: &InferTensorContents) -> bool {
    c.bool_contents.is_empty()
        && c.int_contents.is_empty()
        && c.int64_contents.is_empty()
        && c.uint_contents.is_empty()
        && c.uint64_contents.is_empty()
        && c.fp32_contents.is_empty()
        && c.fp64_contents.is_empty()
        && c.bytes_contents.is_empty()
}

/// Serialises typed contents into raw little-endian bytes, checking kind and count.
fn typed_bytes(name: &str, datatype: DataType, shape: &[usize], c: InferTensorContents) -> Result<Bytes, Error> {
    let expected = element_count(shape)
        .ok_or_else(|| Error::invalid_argument(format!("input '{name}': shape {shape:?} is too large")))?;
    let wrong_field = || {
        Error::invalid_argument(format!(
            "input '{name}': the typed contents do not match datatype {datatype} (FP16 and BF16 must be sent as raw contents)"
        ))
    };
    let count_check = |got: usize| {
        if got == expected {
            Ok(())
        } else {
            Err(Error::invalid_argument(format!(
                "input '{name}': {got} values in contents, but shape {shape:?} needs {expected}"
            )))
        }
    };
    // Exactly one field may be set, and it must be the datatype's.
    let set = [
        !c.bool_contents.is_empty(),
        !c.int_contents.is_empty(),
        !c.int64_contents.is_empty(),
        !c.uint_contents.is_empty(),
        !c.uint64_contents.is_empty(),
        !c.fp32_contents.is_empty(),
        !c.fp64_contents.is_empty(),
        !c.bytes_contents.is_empty(),
    ];
    if set.iter().filter(|s| **s).count() > 1 {
        return Err(Error::invalid_argument(format!(
            "input '{name}': more than one kind of typed contents is set"
        )));
    }
    let size = datatype.size().unwrap_or(0);
    let mut buf = BytesMut::with_capacity(expected.saturating_mul(size.max(1)).min(1 << 30));
    macro_rules! narrow {
        ($values:expr, $t:ty, $put:ident) => {{
            count_check($values.len())?;
            for &v in &$values {
                let v = <$t>::try_from(v).map_err(|_| {
                    Error::invalid_argument(format!("input '{name}': value {v} does not fit {datatype}"))
                })?;
                buf.$put(v);
            }
        }};
    }
    match datatype {
        DataType::Bool if set[0] => {
            count_check(c.bool_contents.len())?;
            buf.extend(c.bool_contents.iter().map(|&b| u8::from(b)));
        }
        DataType::I8 if set[1] => narrow!(c.int_contents, i8, put_i8),
        DataType::I16 if set[1] => narrow!(c.int_contents, i16, put_i16_le),
        DataType::I32 if set[1] => narrow!(c.int_contents, i32, put_i32_le),
        DataType::I64 if set[2] => narrow!(c.int64_contents, i64, put_i64_le),
        DataType::U8 if set[3] => narrow!(c.uint_contents, u8, put_u8),
        DataType::U16 if set[3] => narrow!(c.uint_contents, u16, put_u16_le),
        DataType::U32 if set[3] => narrow!(c.uint_contents, u32, put_u32_le),
        DataType::U64 if set[4] => narrow!(c.uint64_contents, u64, put_u64_le),
        DataType::F32 if set[5] => {
            count_check(c.fp32_contents.len())?;
            for &v in &c.fp32_contents {
                buf.put_f32_le(v);
            }
        }
        DataType::F64 if set[6] => {
            count_check(c.fp64_contents.len())?;
            for &v in &c.fp64_contents {
                buf.put_f64_le(v);
            }
        }
        DataType::Bytes if set[7] => {
            count_check(c.bytes_contents.len())?;
            for v in &c.bytes_contents {
                let len = u32::try_from(v.len())
                    .map_err(|_| Error::invalid_argument(format!("input '{name}': an element is over 4 GiB")))?;
                buf.put_u32_le(len);
                buf.extend_from_slice(v);
            }
        }
        _ => return Err(wrong_field()),
    }
    Ok(buf.freeze())
}

/// Builds the response: outputs as raw contents, the form Triton's clients read by default.
pub(super) fn infer_response(
    model_name: String,
    model_version: String,
    id: String,
    outputs: Vec<Tensor>,
) -> ModelInferResponse {
    let mut tensors = Vec::with_capacity(outputs.len());
    let mut raw = Vec::with_capacity(outputs.len());
    for t in outputs {
        tensors.push(InferOutputTensor {
            name: t.name.clone(),
            datatype: t.datatype.wire_name().to_string(),
            shape: t.wire_shape(),
            parameters: HashMap::new(),
            contents: None,
        });
        raw.push(t.data);
    }
    ModelInferResponse {
        model_name,
        model_version,
        id,
        parameters: HashMap::new(),
        outputs: tensors,
        raw_output_contents: raw,
    }
}

/// The request's `accel.routing_key` parameter, as text (an integer key is its decimal digits, so
/// that it lands where the same key sent as a header does).
pub(super) fn routing_key(req: &ModelInferRequest) -> Result<Option<String>, Error> {
    let Some(p) = req.parameters.get(crate::core::ROUTING_KEY_PARAMETER) else {
        return Ok(None);
    };
    match &p.parameter_choice {
        Some(ParameterChoice::StringParam(s)) => Ok(Some(s.clone())),
        Some(ParameterChoice::Int64Param(i)) => Ok(Some(i.to_string())),
        Some(ParameterChoice::Uint64Param(u)) => Ok(Some(u.to_string())),
        _ => Err(Error::invalid_argument(format!(
            "parameter '{}' must be a string or an integer",
            crate::core::ROUTING_KEY_PARAMETER
        ))),
    }
}

#[cfg(test)]
mod tests {
    use accel_proto::inference::model_infer_request::InferInputTensor;

    use super::*;

    fn input(name: &str, datatype: &str, shape: &[i64], contents: Option<InferTensorContents>) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            parameters: HashMap::new(),
            contents,
        }
    }

    #[test]
    fn typed_contents_become_little_endian_bytes() {
        let c = InferTensorContents {
            int_contents: vec![1, -2],
            ..Default::default()
        };
        let req = ModelInferRequest {
            inputs: vec![input("x", "INT32", &[2], Some(c))],
            ..Default::default()
        };
        let r = infer_request(req).unwrap().request;
        assert_eq!(&r.inputs[0].data[..], &[1, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn bad_contents_are_invalid_arguments() {
        let cases = [
            (
                input(
                    "x",
                    "FP32",
                    &[3],
                    Some(InferTensorContents {
                        fp32_contents: vec![1.0, 2.0],
                        ..Default::default()
                    }),
                ),
                "2 values",
            ),
            (
                input(
                    "x",
                    "INT32",
                    &[1],
                    Some(InferTensorContents {
                        fp32_contents: vec![1.0],
                        ..Default::default()
                    }),
                ),
                "do not match",
            ),
            (
                input(
                    "x",
                    "INT8",
                    &[1],
                    Some(InferTensorContents {
                        int_contents: vec![300],
                        ..Default::default()
                    }),
                ),
                "does not fit",
            ),
            (
                input(
                    "x",
                    "FP16",
                    &[1],
                    Some(InferTensorContents {
                        fp32_contents: vec![1.0],
                        ..Default::default()
                    }),
                ),
                "raw contents",
            ),
            (input("x", "fp32", &[1], None), "unknown datatype"),
            (input("x", "FP32", &[-1], None), "negative"),
            (input("x", "FP32", &[1], None), "no data"),
        ];
        for (inp, needle) in cases {
            let req = ModelInferRequest {
                inputs: vec![inp],
                ..Default::default()
            };
            let e = infer_request(req).unwrap_err();
            assert_eq!(e.code(), crate::core::Code::InvalidArgument);
            assert!(e.to_string().contains(needle), "{e} should mention {needle}");
        }
        let both = ModelInferRequest {
            inputs: vec![input(
                "x",
                "FP32",
                &[1],
                Some(InferTensorContents {
                    fp32_contents: vec![1.0],
                    ..Default::default()
                }),
            )],
            raw_input_contents: vec![Bytes::from_static(&[0, 0, 0, 0])],
            ..Default::default()
        };
        assert!(infer_request(both).unwrap_err().to_string().contains("both"));
        let param = |p| InferParameter {
            parameter_choice: Some(p),
        };
        let mut shm = input("x", "FP32", &[1], None);
        shm.parameters
            .insert(shm::REGION.into(), param(ParameterChoice::StringParam("region".into())));
        let e = infer_request(ModelInferRequest {
            inputs: vec![shm.clone()],
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.code(), crate::core::Code::InvalidArgument);
        assert!(e.to_string().contains("must be specified along"), "{e}");
        // An input in shared memory takes no raw_input_contents entry; the others keep theirs, in order.
        shm.parameters
            .insert(shm::BYTE_SIZE.into(), param(ParameterChoice::Int64Param(4)));
        let d = infer_request(ModelInferRequest {
            inputs: vec![
                input("a", "FP32", &[1], None),
                shm.clone(),
                input("b", "FP32", &[1], None),
            ],
            raw_input_contents: vec![Bytes::from_static(&[1, 0, 0, 0]), Bytes::from_static(&[2, 0, 0, 0])],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(d.shared.len(), 1);
        assert_eq!(d.shared[0].0, 1);
        assert_eq!(d.shared[0].1.byte_size, 4);
        assert_eq!(&d.request.inputs[2].data[..], &[2, 0, 0, 0]);
        let mut with_contents = shm.clone();
        with_contents.contents = Some(InferTensorContents {
            fp32_contents: vec![1.0],
            ..Default::default()
        });
        let e = infer_request(ModelInferRequest {
            inputs: vec![with_contents],
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("unexpected 'content'"), "{e}");
        let count = ModelInferRequest {
            inputs: vec![input("x", "FP32", &[1], None)],
            raw_input_contents: vec![Bytes::new(), Bytes::new()],
            ..Default::default()
        };
        assert!(
            infer_request(count)
                .unwrap_err()
                .to_string()
                .contains("2 entries for 1 inputs")
        );
    }
}

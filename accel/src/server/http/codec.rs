//! The REST inference body: JSON tensors (nested or flat `data`) and Triton's binary tensor data
//! extension (`Inference-Header-Content-Length`, `binary_data_size`, `binary_data_output`), in both
//! directions. Binary tensors are slices of the received body: no copy.

use bytes::{BufMut, Bytes, BytesMut};
use half::{bf16, f16};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::core::{
    DataType, Error, InferRequest, InferResponse, ModelSpec, ParamValue, Parameters, RequestedOutput, Tensor,
    element_count,
};

/// The header that says how many leading bytes of the body are JSON.
pub(super) const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Debug, Deserialize)]
struct JsonRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(default)]
    inputs: Vec<JsonInput>,
    #[serde(default)]
    outputs: Option<Vec<JsonOutput>>,
}

#[derive(Debug, Deserialize)]
struct JsonInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct JsonOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

/// A decoded body waiting for its model (the raw binary form needs the model's input to be read).
#[derive(Debug)]
pub(super) enum Body {
    Json {
        request: Box<InferRequest>,
    },
    /// `Inference-Header-Content-Length: 0`: the body is the one input's raw bytes.
    RawBinary(Bytes),
}

/// How the answer is encoded: per requested output name, whether it goes binary; the default for the rest.
#[derive(Debug, Clone, Default)]
pub(super) struct OutputForm {
    pub default_binary: bool,
    pub binary: Vec<(String, bool)>,
}

impl OutputForm {
    fn is_binary(&self, name: &str) -> bool {
        self.binary
            .iter()
            .find(|(n, _)| n == name)
            .map_or(self.default_binary, |(_, b)| *b)
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::invalid_argument(msg)
}

fn parameters(map: Option<Map<String, Value>>) -> Result<Parameters, Error> {
    let mut out = Vec::new();
    for (k, v) in map.unwrap_or_default() {
        let value = match v {
            Value::Bool(b) => ParamValue::Bool(b),
            Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => ParamValue::Int(i),
                (None, Some(u), _) => ParamValue::Uint(u),
                (None, None, Some(f)) => ParamValue::Double(f),
                _ => return Err(invalid(format!("parameter '{k}': unsupported number {n}"))),
            },
            Value::String(s) => ParamValue::String(s),
            other => {
                return Err(invalid(format!(
                    "parameter '{k}': {other} is not a bool, number or string"
                )));
            }
        };
        out.push((k, value));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn param<'a>(p: &'a Parameters, key: &str) -> Option<&'a ParamValue> {
    p.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Splits a body into its JSON header and binary section and decodes it.
pub(super) fn decode(header_length: Option<&str>, body: Bytes) -> Result<(Body, OutputForm), Error> {
    let json_len = match header_length {
        None => body.len(),
        Some(v) => v
            .trim()
            .parse::<usize>()
            .map_err(|_| invalid(format!("{HEADER_LENGTH} '{v}' is not a byte count")))?,
    };
    if json_len == 0 && header_length.is_some() {
        return Ok((
            Body::RawBinary(body),
            OutputForm {
                default_binary: true,
                binary: Vec::new(),
            },
        ));
    }
    if json_len > body.len() {
        return Err(invalid(format!(
            "{HEADER_LENGTH} is {json_len}, but the body has {} bytes",
            body.len()
        )));
    }
    let json: JsonRequest = serde_json::from_slice(&body[..json_len])
        .map_err(|e| invalid(format!("the request is not valid inference JSON: {e}")))?;
    let mut binary = body.slice(json_len..);
    let params = parameters(json.parameters)?;
    let default_binary = match param(&params, "binary_data_output") {
        None => false,
        Some(ParamValue::Bool(b)) => *b,
        Some(other) => {
            return Err(invalid(format!(
                "parameter 'binary_data_output' must be a bool, got {other:?}"
            )));
        }
    };
    let mut inputs = Vec::with_capacity(json.inputs.len());
    for input in json.inputs {
        let datatype = DataType::from_wire(&input.datatype)
            .ok_or_else(|| invalid(format!("input '{}': unknown datatype '{}'", input.name, input.datatype)))?;
        let shape = input
            .shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<Vec<usize>, _>>()
            .map_err(|_| {
                invalid(format!(
                    "input '{}': shape {:?} has a negative dimension",
                    input.name, input.shape
                ))
            })?;
        let tparams = parameters(input.parameters)?;
        let data = match (param(&tparams, "binary_data_size"), input.data) {
            (Some(_), Some(_)) => {
                return Err(invalid(format!(
                    "input '{}' has both data and binary_data_size",
                    input.name
                )));
            }
            (Some(size), None) => {
                let size = size.as_i64().and_then(|s| usize::try_from(s).ok()).ok_or_else(|| {
                    invalid(format!(
                        "input '{}': binary_data_size must be a non-negative integer",
                        input.name
                    ))
                })?;
                if size > binary.len() {
                    return Err(invalid(format!(
                        "input '{}': binary_data_size {size}, but only {} binary bytes remain",
                        input.name,
                        binary.len()
                    )));
                }
                binary.split_to(size)
            }
            (None, Some(data)) => json_data(&input.name, datatype, &shape, &data)?,
            (None, None) => {
                return Err(invalid(format!(
                    "input '{}' has neither data nor binary_data_size",
                    input.name
                )));
            }
        };
        if tparams.iter().any(|(k, _)| k == "shared_memory_region") {
            return Err(Error::unimplemented(format!(
                "input '{}': shared-memory tensors are not supported yet",
                input.name
            )));
        }
        inputs.push(Tensor {
            name: input.name,
            datatype,
            shape,
            data,
        });
    }
    if !binary.is_empty() {
        return Err(invalid(format!(
            "{} bytes of binary data follow the JSON but no input claims them",
            binary.len()
        )));
    }
    let mut form = OutputForm {
        default_binary,
        binary: Vec::new(),
    };
    let mut outputs = Vec::new();
    for o in json.outputs.unwrap_or_default() {
        let p = parameters(o.parameters)?;
        match param(&p, "binary_data") {
            None => {}
            Some(ParamValue::Bool(b)) => form.binary.push((o.name.clone(), *b)),
            Some(other) => {
                return Err(invalid(format!(
                    "output '{}': binary_data must be a bool, got {other:?}",
                    o.name
                )));
            }
        }
        outputs.push(RequestedOutput {
            name: o.name,
            parameters: p,
        });
    }
    let request = InferRequest {
        id: json.id.unwrap_or_default(),
        parameters: params,
        inputs,
        outputs,
        ..Default::default()
    };
    Ok((
        Body::Json {
            request: Box::new(request),
        },
        form,
    ))
}

impl Body {
    /// The request, once the model is known.
    pub(super) fn into_request(self, spec: &ModelSpec) -> Result<InferRequest, Error> {
        match self {
            Body::Json { request } => Ok(*request),
            Body::RawBinary(data) => {
                let [input] = spec.inputs.as_slice() else {
                    return Err(invalid(format!(
                        "a raw binary request (Inference-Header-Content-Length: 0) needs a model with one input; '{}' has {}",
                        spec.name,
                        spec.inputs.len()
                    )));
                };
                let shape = raw_shape(input.datatype, &input.dims, spec.batches(), data.len()).ok_or_else(|| {
                    invalid(format!(
                        "{} raw bytes do not fit input '{}' with dims {:?}",
                        data.len(),
                        input.name,
                        input.dims
                    ))
                })?;
                Ok(InferRequest {
                    inputs: vec![Tensor {
                        name: input.name.clone(),
                        datatype: input.datatype,
                        shape,
                        data,
                    }],
                    ..Default::default()
                })
            }
        }
    }
}

/// The shape of a raw binary body: batch 1, the one variable dimension (if any) from the length.
fn raw_shape(datatype: DataType, dims: &[i64], batching: bool, len: usize) -> Option<Vec<usize>> {
    let mut shape: Vec<usize> = if batching { vec![1] } else { Vec::new() };
    let Some(size) = datatype.size() else {
        // BYTES: one element.
        shape.extend(dims.iter().map(|&d| if d < 0 { 1 } else { d as usize }));
        return Some(shape);
    };
    let known: usize = dims.iter().filter(|&&d| d >= 0).map(|&d| d as usize).product::<usize>() * size;
    let variable = dims.iter().filter(|&&d| d < 0).count();
    for &d in dims {
        shape.push(if d < 0 {
            len.checked_div(known).unwrap_or(0)
        } else {
            d as usize
        });
    }
    let total = element_count(&shape)?.checked_mul(size)?;
    (variable <= 1 && total == len).then_some(shape)
}

/// Flattens nested JSON `data` and serialises it as the datatype's little-endian bytes.
fn json_data(name: &str, datatype: DataType, shape: &[usize], data: &Value) -> Result<Bytes, Error> {
    let expected =
        element_count(shape).ok_or_else(|| invalid(format!("input '{name}': shape {shape:?} is too large")))?;
    let mut leaves = Vec::new();
    flatten(data, &mut leaves, expected).map_err(|_| {
        invalid(format!(
            "input '{name}': data has more than the {expected} elements of shape {shape:?}"
        ))
    })?;
    if leaves.len() != expected {
        return Err(invalid(format!(
            "input '{name}': {} values in data, but shape {shape:?} needs {expected}",
            leaves.len()
        )));
    }
    let mut buf = BytesMut::with_capacity(expected.saturating_mul(datatype.size().unwrap_or(8)).min(1 << 30));
    let bad = |v: &Value| invalid(format!("input '{name}': {v} is not a {datatype} value"));
    macro_rules! ints {
        ($t:ty, $put:ident) => {
            for v in &leaves {
                let x = match v {
                    Value::Number(n) => n
                        .as_i64()
                        .and_then(|i| <$t>::try_from(i).ok())
                        .or_else(|| n.as_u64().and_then(|u| <$t>::try_from(u).ok())),
                    _ => None,
                }
                .ok_or_else(|| bad(v))?;
                buf.$put(x);
            }
        };
    }
    macro_rules! floats {
        ($conv:expr) => {
            for v in &leaves {
                let x = v.as_f64().ok_or_else(|| bad(v))?;
                $conv(&mut buf, x);
            }
        };
    }
    match datatype {
        DataType::Bool => {
            for v in &leaves {
                buf.put_u8(u8::from(v.as_bool().ok_or_else(|| bad(v))?));
            }
        }
        DataType::U8 => ints!(u8, put_u8),
        DataType::U16 => ints!(u16, put_u16_le),
        DataType::U32 => ints!(u32, put_u32_le),
        DataType::U64 => ints!(u64, put_u64_le),
        DataType::I8 => ints!(i8, put_i8),
        DataType::I16 => ints!(i16, put_i16_le),
        DataType::I32 => ints!(i32, put_i32_le),
        DataType::I64 => ints!(i64, put_i64_le),
        DataType::F16 => floats!(|b: &mut BytesMut, x: f64| b.put_u16_le(f16::from_f64(x).to_bits())),
        DataType::Bf16 => floats!(|b: &mut BytesMut, x: f64| b.put_u16_le(bf16::from_f64(x).to_bits())),
        DataType::F32 => floats!(|b: &mut BytesMut, x: f64| b.put_f32_le(x as f32)),
        DataType::F64 => floats!(|b: &mut BytesMut, x: f64| b.put_f64_le(x)),
        DataType::Bytes => {
            for v in &leaves {
                let s = v.as_str().ok_or_else(|| bad(v))?;
                let len =
                    u32::try_from(s.len()).map_err(|_| invalid(format!("input '{name}': an element is over 4 GiB")))?;
                buf.put_u32_le(len);
                buf.put_slice(s.as_bytes());
            }
        }
    }
    Ok(buf.freeze())
}

/// Collects the leaves of nested arrays, refusing more than `limit` of them.
fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>, limit: usize) -> Result<(), ()> {
    match v {
        Value::Array(items) => {
            for item in items {
                flatten(item, out, limit)?;
            }
            Ok(())
        }
        leaf => {
            if out.len() >= limit {
                return Err(());
            }
            out.push(leaf);
            Ok(())
        }
    }
}

/// An encoded answer: the body and, when it carries binary tensors, the JSON header's length.
#[derive(Debug)]
pub(super) struct Encoded {
    pub body: Bytes,
    pub header_length: Option<usize>,
}

/// Encodes a response: JSON `data` for JSON outputs, `binary_data_size` and appended bytes for binary ones.
pub(super) fn encode(response: InferResponse, form: &OutputForm) -> Result<Encoded, Error> {
    let mut outputs = Vec::with_capacity(response.outputs.len());
    let mut binary: Vec<Bytes> = Vec::new();
    for t in response.outputs {
        let mut o = Map::new();
        o.insert("name".into(), Value::String(t.name.clone()));
        o.insert("datatype".into(), Value::String(t.datatype.wire_name().into()));
        o.insert("shape".into(), Value::from(t.shape.clone()));
        if form.is_binary(&t.name) {
            o.insert(
                "parameters".into(),
                serde_json::json!({ "binary_data_size": t.data.len() }),
            );
            binary.push(t.data);
        } else {
            o.insert("data".into(), Value::Array(json_values(&t)?));
        }
        outputs.push(Value::Object(o));
    }
    let mut json = Map::new();
    json.insert("model_name".into(), Value::String(response.model_name));
    json.insert("model_version".into(), Value::String(response.model_version));
    if !response.id.is_empty() {
        json.insert("id".into(), Value::String(response.id));
    }
    json.insert("outputs".into(), Value::Array(outputs));
    let header =
        serde_json::to_vec(&Value::Object(json)).map_err(|e| Error::new(crate::core::Code::Internal, e.to_string()))?;
    if binary.is_empty() {
        return Ok(Encoded {
            body: Bytes::from(header),
            header_length: None,
        });
    }
    let header_length = header.len();
    let mut body = BytesMut::with_capacity(header_length + binary.iter().map(Bytes::len).sum::<usize>());
    body.put_slice(&header);
    for b in binary {
        body.put_slice(&b);
    }
    Ok(Encoded {
        body: body.freeze(),
        header_length: Some(header_length),
    })
}

/// A tensor's elements as JSON values.
fn json_values(t: &Tensor) -> Result<Vec<Value>, Error> {
    let d = &t.data[..];
    macro_rules! each {
        ($n:expr, $f:expr) => {
            d.chunks_exact($n).map($f).collect()
        };
    }
    Ok(match t.datatype {
        DataType::Bool => d.iter().map(|&b| Value::Bool(b != 0)).collect(),
        DataType::U8 => d.iter().map(|&b| Value::from(b)).collect(),
        DataType::I8 => d.iter().map(|&b| Value::from(b as i8)).collect(),
        DataType::U16 => each!(2, |c: &[u8]| Value::from(u16::from_le_bytes([c[0], c[1]]))),
        DataType::I16 => each!(2, |c: &[u8]| Value::from(i16::from_le_bytes([c[0], c[1]]))),
        DataType::U32 => each!(4, |c: &[u8]| Value::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        DataType::I32 => each!(4, |c: &[u8]| Value::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        DataType::U64 => each!(8, |c: &[u8]| Value::from(u64::from_le_bytes(
            c.try_into().unwrap_or_default()
        ))),
        DataType::I64 => each!(8, |c: &[u8]| Value::from(i64::from_le_bytes(
            c.try_into().unwrap_or_default()
        ))),
        DataType::F16 => each!(2, |c: &[u8]| float(
            f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f64()
        )),
        DataType::Bf16 => each!(2, |c: &[u8]| float(
            bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f64()
        )),
        DataType::F32 => each!(4, |c: &[u8]| float(f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)),
        DataType::F64 => each!(8, |c: &[u8]| float(f64::from_le_bytes(
            c.try_into().unwrap_or_default()
        ))),
        DataType::Bytes => {
            let mut out = Vec::new();
            let mut rest = d;
            while let Some((len, tail)) = rest.split_first_chunk::<4>() {
                let n = (u32::from_le_bytes(*len) as usize).min(tail.len());
                out.push(Value::String(String::from_utf8_lossy(&tail[..n]).into_owned()));
                rest = &tail[n..];
            }
            out
        }
    })
}

/// JSON has no NaN or infinity: they are written as null, as serde_json does.
fn float(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_json_data_and_binary_sections() {
        let json = br#"{"inputs":[{"name":"a","shape":[2,2],"datatype":"INT32","data":[[1,-2],[3,4]]},
            {"name":"b","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}],
            "outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#;
        let mut body = json.to_vec();
        body.extend_from_slice(&1.5f32.to_le_bytes());
        body.extend_from_slice(&(-2f32).to_le_bytes());
        let (decoded, form) = decode(Some(&json.len().to_string()), Bytes::from(body)).unwrap();
        let Body::Json { request } = decoded else {
            panic!("json")
        };
        assert_eq!(&request.inputs[0].data[..4], &1i32.to_le_bytes());
        assert_eq!(&request.inputs[0].data[4..8], &(-2i32).to_le_bytes());
        assert_eq!(
            &request.inputs[1].data[..],
            &[1.5f32.to_le_bytes(), (-2f32).to_le_bytes()].concat()
        );
        assert!(form.is_binary("y"));
        assert!(!form.is_binary("z"));
    }

    #[test]
    fn bad_bodies_are_invalid_arguments() {
        let cases: [(&[u8], Option<&str>, &str); 6] = [
            (
                br#"{"inputs":[{"name":"a","shape":[3],"datatype":"INT8","data":[1,2,300]}]}"#,
                None,
                "not a INT8",
            ),
            (
                br#"{"inputs":[{"name":"a","shape":[3],"datatype":"FP32","data":[1,2]}]}"#,
                None,
                "2 values",
            ),
            (
                br#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1,[2]]}]}"#,
                None,
                "more than",
            ),
            (
                br#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32"}]}"#,
                None,
                "neither",
            ),
            (
                br#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#,
                Some("200"),
                "200",
            ),
            (b"not json", None, "not valid inference JSON"),
        ];
        for (body, header, needle) in cases {
            let e = decode(header, Bytes::copy_from_slice(body)).unwrap_err();
            assert_eq!(e.code(), crate::core::Code::InvalidArgument);
            assert!(e.to_string().contains(needle), "{e} should mention {needle}");
        }
    }

    #[test]
    fn raw_binary_shapes() {
        assert_eq!(raw_shape(DataType::F32, &[-1, 4], true, 32), Some(vec![1, 2, 4]));
        assert_eq!(raw_shape(DataType::F32, &[4], false, 16), Some(vec![4]));
        assert_eq!(raw_shape(DataType::F32, &[4], false, 12), None);
        assert_eq!(raw_shape(DataType::F32, &[-1, -1], true, 16), None);
    }

    #[test]
    fn responses_mix_json_and_binary_outputs() {
        let t = |name: &str, v: &[f32]| Tensor {
            name: name.into(),
            datatype: DataType::F32,
            shape: vec![v.len()],
            data: Bytes::from(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>()),
        };
        let response = InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: "7".into(),
            outputs: vec![t("a", &[1.0, 2.5]), t("b", &[3.0])],
        };
        let form = OutputForm {
            default_binary: false,
            binary: vec![("b".into(), true)],
        };
        let enc = encode(response, &form).unwrap();
        let n = enc.header_length.unwrap();
        let header: Value = serde_json::from_slice(&enc.body[..n]).unwrap();
        assert_eq!(header["outputs"][0]["data"], serde_json::json!([1.0, 2.5]));
        assert_eq!(header["outputs"][1]["parameters"]["binary_data_size"], 4);
        assert_eq!(&enc.body[n..], &3f32.to_le_bytes());
        assert_eq!(header["id"], "7");
    }
}

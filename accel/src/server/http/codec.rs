//! The REST inference body: JSON tensors (nested or flat `data`) and Triton's binary tensor data
//! extension (`Inference-Header-Content-Length`, `binary_data_size`, `binary_data_output`), in both
//! directions. Binary tensors are slices of the received body: no copy.
//!
//! Decoding is bounded by the body: the JSON envelope is read without building a tree (tensor data
//! and parameters stay borrowed slices of the body until the model is known), and each input's
//! `data` is streamed straight into its little-endian bytes, refusing more elements than its shape
//! declares. A JSON element takes at least two bytes and becomes at most eight, so a decode holds at
//! most the body and four times its size. Answers are written the same way, element by element,
//! without a tree either.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use half::{bf16, f16};
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::core::{
    DataType, Error, InferRequest, InferResponse, ModelSpec, ParamValue, Parameters, RequestedOutput, Tensor,
    element_count,
};
use crate::server::infer::Decoded;
use crate::shm;

/// The header that says how many leading bytes of the body are JSON.
pub(super) const HEADER_LENGTH: &str = "inference-header-content-length";

type RawParameters<'a> = BTreeMap<String, &'a RawValue>;

#[derive(Debug, Deserialize)]
struct JsonRequest<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default, borrow)]
    parameters: Option<RawParameters<'a>>,
    #[serde(default, borrow)]
    inputs: Vec<JsonInput<'a>>,
    #[serde(default, borrow)]
    outputs: Option<Vec<JsonOutput<'a>>>,
}

#[derive(Debug, Deserialize)]
struct JsonInput<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default, borrow)]
    parameters: Option<RawParameters<'a>>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
struct JsonOutput<'a> {
    name: String,
    #[serde(default, borrow)]
    parameters: Option<RawParameters<'a>>,
}

/// How the answer is encoded: per requested output name, whether it goes binary; the default for the rest.
#[derive(Debug, Clone, Default)]
pub(super) struct OutputForm {
    pub default_binary: bool,
    pub binary: Vec<(String, bool)>,
    /// Outputs written into shared memory: their JSON has no data.
    pub shared: Vec<String>,
}

impl OutputForm {
    fn is_binary(&self, name: &str) -> bool {
        !self.is_shared(name) && self.is_binary_requested(name)
    }

    fn is_shared(&self, name: &str) -> bool {
        self.shared.iter().any(|n| n == name)
    }

    fn is_binary_requested(&self, name: &str) -> bool {
        self.binary
            .iter()
            .find(|(n, _)| n == name)
            .map_or(self.default_binary, |(_, b)| *b)
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::invalid_argument(msg)
}

/// Parameters as the core's values: each must be a bool, a number or a string (read from its own
/// slice of the body; an object or array is refused without being parsed).
fn parameters(map: Option<RawParameters<'_>>) -> Result<Parameters, Error> {
    let mut out = Vec::new();
    for (k, raw) in map.unwrap_or_default() {
        let text = raw.get().trim_start();
        if text.starts_with('{') || text.starts_with('[') {
            return Err(invalid(format!("parameter '{k}' is not a bool, number or string")));
        }
        let v: Value = serde_json::from_str(text).map_err(|e| invalid(format!("parameter '{k}': {e}")))?;
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
    Ok(out)
}

fn param<'a>(p: &'a Parameters, key: &str) -> Option<&'a ParamValue> {
    p.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// The request's `accel.routing_key` parameter, read from the body's JSON before the model version
/// (and so the spec to decode against) is chosen. A string, or an integer as its digits.
pub(super) fn routing_key(header_length: Option<&str>, body: &[u8]) -> Result<Option<String>, Error> {
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(default)]
        parameters: Option<serde_json::Map<String, serde_json::Value>>,
    }
    let json_len = match header_length {
        None => body.len(),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) => n,
            // decode says what is wrong with it.
            Err(_) => return Ok(None),
        },
    };
    let Some(json) = body.get(..json_len).filter(|j| !j.is_empty()) else {
        return Ok(None);
    };
    let Ok(head) = serde_json::from_slice::<Head>(json) else {
        return Ok(None);
    };
    match head
        .parameters
        .as_ref()
        .and_then(|p| p.get(crate::core::ROUTING_KEY_PARAMETER))
    {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
        Some(other) => Err(invalid(format!(
            "parameter '{}' must be a string or an integer, got {other}",
            crate::core::ROUTING_KEY_PARAMETER
        ))),
    }
}

/// Decodes a body for `spec`'s model: splits it into its JSON header and binary section (or takes
/// it as the one input's raw bytes when `Inference-Header-Content-Length` is 0). Inputs in shared
/// memory come back as references, bound by `Ticket::run`.
pub(super) fn decode(
    header_length: Option<&str>,
    body: Bytes,
    spec: &ModelSpec,
) -> Result<(Decoded, OutputForm), Error> {
    let json_len = match header_length {
        None => body.len(),
        Some(v) => v
            .trim()
            .parse::<usize>()
            .map_err(|_| invalid(format!("{HEADER_LENGTH} '{v}' is not a byte count")))?,
    };
    if json_len == 0 && header_length.is_some() {
        let form = OutputForm {
            default_binary: true,
            ..Default::default()
        };
        return Ok((raw_request(body, spec)?.into(), form));
    }
    if json_len > body.len() {
        return Err(invalid(format!(
            "{HEADER_LENGTH} is {json_len}, but the body has {} bytes",
            body.len()
        )));
    }
    let json: JsonRequest<'_> = serde_json::from_slice(&body[..json_len])
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
    let mut shared = Vec::new();
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
        if let Some(at) = shm::tensor_ref(&input.name, &tparams)? {
            if input.data.is_some() || param(&tparams, "binary_data_size").is_some() {
                return Err(invalid(format!(
                    "input '{}': Input must set only one of the following fields: 'data', 'binary_data_size' in 'parameters', 'shared_memory_region' in 'parameters'",
                    input.name
                )));
            }
            shared.push((inputs.len(), at));
            inputs.push(Tensor {
                name: input.name,
                datatype,
                shape,
                data: Bytes::new(),
            });
            continue;
        }
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
            (None, Some(data)) => json_data(&input.name, datatype, &shape, data)?,
            (None, None) => {
                return Err(invalid(format!(
                    "input '{}' has neither data nor binary_data_size",
                    input.name
                )));
            }
        };
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
        ..Default::default()
    };
    let mut outputs = Vec::new();
    for o in json.outputs.unwrap_or_default() {
        let p = parameters(o.parameters)?;
        let binary = match param(&p, "binary_data") {
            None => None,
            Some(ParamValue::Bool(b)) => Some(*b),
            Some(other) => {
                return Err(invalid(format!(
                    "output '{}': binary_data must be a bool, got {other:?}",
                    o.name
                )));
            }
        };
        if p.iter().any(|(k, _)| k == shm::REGION) {
            if binary == Some(true) {
                return Err(invalid(format!(
                    "output '{}': Output can't set both 'shared_memory_region' and 'binary_data'",
                    o.name
                )));
            }
            form.shared.push(o.name.clone());
        }
        if let Some(b) = binary {
            form.binary.push((o.name.clone(), b));
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
    Ok((Decoded { request, shared }, form))
}

/// `Inference-Header-Content-Length: 0`: the body is the raw bytes of the model's one input.
fn raw_request(data: Bytes, spec: &ModelSpec) -> Result<InferRequest, Error> {
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

/// The shape of a raw binary body: batch 1, the one variable dimension (if any) from the length.
fn raw_shape(datatype: DataType, dims: &[i64], batching: bool, len: usize) -> Option<Vec<usize>> {
    let mut shape: Vec<usize> = if batching { vec![1] } else { Vec::new() };
    let Some(size) = datatype.size() else {
        // BYTES: one element.
        shape.extend(dims.iter().map(|&d| if d < 0 { 1 } else { d as usize }));
        return Some(shape);
    };
    let known = dims
        .iter()
        .filter(|&&d| d >= 0)
        .try_fold(size, |acc, &d| acc.checked_mul(usize::try_from(d).ok()?))?;
    let variable = dims.iter().filter(|&&d| d < 0).count();
    for &d in dims {
        shape.push(if d < 0 {
            len.checked_div(known).unwrap_or(0)
        } else {
            usize::try_from(d).ok()?
        });
    }
    let total = element_count(&shape)?.checked_mul(size)?;
    (variable <= 1 && total == len).then_some(shape)
}

/// An input's `data`, nested or flat, as the datatype's little-endian bytes.
fn json_data(name: &str, datatype: DataType, shape: &[usize], data: &RawValue) -> Result<Bytes, Error> {
    let expected =
        element_count(shape).ok_or_else(|| invalid(format!("input '{name}': shape {shape:?} is too large")))?;
    let text = data.get();
    // Never more than the elements the text can hold (two bytes each at least) or the shape has.
    let capacity = expected
        .min(text.len() / 2 + 1)
        .saturating_mul(datatype.size().unwrap_or(8));
    let mut sink = Sink {
        name,
        datatype,
        shape,
        out: BytesMut::with_capacity(capacity),
        count: 0,
        limit: expected,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    Level(&mut sink)
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| invalid(format!("input '{name}': {e}")))?;
    if sink.count != expected {
        return Err(invalid(format!(
            "input '{name}': {} values in data, but shape {shape:?} needs {expected}",
            sink.count
        )));
    }
    Ok(sink.out.freeze())
}

/// Where the elements of one input's `data` go.
struct Sink<'a> {
    name: &'a str,
    datatype: DataType,
    shape: &'a [usize],
    out: BytesMut,
    count: usize,
    limit: usize,
}

/// One element of JSON `data`.
enum Leaf<'v> {
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(&'v str),
}

impl Sink<'_> {
    fn push(&mut self, leaf: Leaf<'_>) -> Result<(), String> {
        if self.count >= self.limit {
            return Err(format!(
                "data has more than the {} elements of shape {:?}",
                self.limit, self.shape
            ));
        }
        self.count += 1;
        let datatype = self.datatype;
        let bad = |leaf: &Leaf<'_>| {
            let shown = match leaf {
                Leaf::Bool(b) => b.to_string(),
                Leaf::Int(i) => i.to_string(),
                Leaf::Uint(u) => u.to_string(),
                Leaf::Float(f) => f.to_string(),
                Leaf::Str(s) => format!("{s:?}"),
            };
            format!("input '{}': {shown} is not a {datatype} value", self.name)
        };
        macro_rules! int {
            ($t:ty, $put:ident) => {{
                let x = match leaf {
                    Leaf::Int(i) => <$t>::try_from(i).ok(),
                    Leaf::Uint(u) => <$t>::try_from(u).ok(),
                    _ => None,
                }
                .ok_or_else(|| bad(&leaf))?;
                self.out.$put(x);
            }};
        }
        let float = |leaf: &Leaf<'_>| match *leaf {
            Leaf::Int(i) => Ok(i as f64),
            Leaf::Uint(u) => Ok(u as f64),
            Leaf::Float(f) => Ok(f),
            _ => Err(bad(leaf)),
        };
        match datatype {
            DataType::Bool => match leaf {
                Leaf::Bool(b) => self.out.put_u8(u8::from(b)),
                other => return Err(bad(&other)),
            },
            DataType::U8 => int!(u8, put_u8),
            DataType::U16 => int!(u16, put_u16_le),
            DataType::U32 => int!(u32, put_u32_le),
            DataType::U64 => int!(u64, put_u64_le),
            DataType::I8 => int!(i8, put_i8),
            DataType::I16 => int!(i16, put_i16_le),
            DataType::I32 => int!(i32, put_i32_le),
            DataType::I64 => int!(i64, put_i64_le),
            DataType::F16 => {
                let x = float(&leaf)?;
                self.out.put_u16_le(f16::from_f64(x).to_bits());
            }
            DataType::Bf16 => {
                let x = float(&leaf)?;
                self.out.put_u16_le(bf16::from_f64(x).to_bits());
            }
            DataType::F32 => {
                let x = float(&leaf)?;
                self.out.put_f32_le(x as f32);
            }
            DataType::F64 => {
                let x = float(&leaf)?;
                self.out.put_f64_le(x);
            }
            DataType::Bytes => match leaf {
                Leaf::Str(s) => {
                    let len = u32::try_from(s.len())
                        .map_err(|_| format!("input '{}': an element is over 4 GiB", self.name))?;
                    self.out.put_u32_le(len);
                    self.out.put_slice(s.as_bytes());
                }
                other => return Err(bad(&other)),
            },
        }
        Ok(())
    }
}

/// A value of `data` at any nesting level: arrays recurse (serde_json bounds the depth), leaves go
/// to the sink.
struct Level<'s, 'a>(&'s mut Sink<'a>);

impl<'de> DeserializeSeed<'de> for Level<'_, '_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

macro_rules! leaf {
    ($f:ident, $t:ty, $leaf:expr) => {
        fn $f<E: serde::de::Error>(self, v: $t) -> Result<(), E> {
            self.0.push($leaf(v)).map_err(E::custom)
        }
    };
}

impl<'de> Visitor<'de> for Level<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("numbers, bools or strings, or arrays of them")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Level(&mut *self.0))?.is_some() {}
        Ok(())
    }

    leaf!(visit_bool, bool, Leaf::Bool);
    leaf!(visit_i64, i64, Leaf::Int);
    leaf!(visit_u64, u64, Leaf::Uint);
    leaf!(visit_f64, f64, Leaf::Float);

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.0.push(Leaf::Str(v)).map_err(E::custom)
    }
}

/// An encoded answer: the body and, when it carries binary tensors, the JSON header's length.
#[derive(Debug)]
pub(super) struct Encoded {
    pub body: Bytes,
    pub header_length: Option<usize>,
}

/// The JSON of one output: data written element by element, or the size of its binary section.
struct JsonOutputTensor<'a> {
    tensor: &'a Tensor,
    binary: bool,
    /// Written into shared memory: metadata only.
    shared: bool,
}

impl Serialize for JsonOutputTensor<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = self.tensor;
        let mut map = s.serialize_map(Some(4))?;
        map.serialize_entry("name", &t.name)?;
        map.serialize_entry("datatype", t.datatype.wire_name())?;
        map.serialize_entry("shape", &t.shape)?;
        if self.shared {
            // Written into the client's region: the metadata is the answer.
        } else if self.binary {
            map.serialize_entry("parameters", &serde_json::json!({ "binary_data_size": t.data.len() }))?;
        } else {
            map.serialize_entry("data", &JsonData(t))?;
        }
        map.end()
    }
}

/// A tensor's elements as a JSON array, written as they are read.
struct JsonData<'a>(&'a Tensor);

impl Serialize for JsonData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = self.0;
        let d = &t.data[..];
        let mut seq = s.serialize_seq(None)?;
        macro_rules! each {
            ($n:expr, $conv:expr) => {
                for c in d.chunks_exact($n) {
                    seq.serialize_element(&$conv(c))?;
                }
            };
        }
        let arr = |c: &[u8]| -> [u8; 8] {
            let mut a = [0u8; 8];
            a[..c.len()].copy_from_slice(c);
            a
        };
        match t.datatype {
            DataType::Bool => each!(1, |c: &[u8]| c[0] != 0),
            DataType::U8 => each!(1, |c: &[u8]| c[0]),
            DataType::I8 => each!(1, |c: &[u8]| c[0] as i8),
            DataType::U16 => each!(2, |c: &[u8]| u16::from_le_bytes([c[0], c[1]])),
            DataType::I16 => each!(2, |c: &[u8]| i16::from_le_bytes([c[0], c[1]])),
            DataType::U32 => each!(4, |c: &[u8]| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            DataType::I32 => each!(4, |c: &[u8]| i32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            DataType::U64 => each!(8, |c: &[u8]| u64::from_le_bytes(arr(c))),
            DataType::I64 => each!(8, |c: &[u8]| i64::from_le_bytes(arr(c))),
            // JSON has no NaN or infinity: serde_json writes them as null.
            DataType::F16 => each!(2, |c: &[u8]| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f64()),
            DataType::Bf16 => each!(2, |c: &[u8]| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f64()),
            DataType::F32 => each!(4, |c: &[u8]| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            DataType::F64 => each!(8, |c: &[u8]| f64::from_le_bytes(arr(c))),
            DataType::Bytes => {
                for element in crate::core::bytes_elements(d) {
                    seq.serialize_element(&String::from_utf8_lossy(element))?;
                }
            }
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct JsonResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    id: &'a str,
    outputs: Vec<JsonOutputTensor<'a>>,
}

/// Encodes a response: JSON `data` for JSON outputs, `binary_data_size` and appended bytes for binary ones.
pub(super) fn encode(response: InferResponse, form: &OutputForm) -> Result<Encoded, Error> {
    let outputs: Vec<JsonOutputTensor<'_>> = response
        .outputs
        .iter()
        .map(|t| JsonOutputTensor {
            tensor: t,
            binary: form.is_binary(&t.name),
            shared: form.is_shared(&t.name),
        })
        .collect();
    let binary_bytes: usize = outputs.iter().filter(|o| o.binary).map(|o| o.tensor.data.len()).sum();
    let json = JsonResponse {
        model_name: &response.model_name,
        model_version: &response.model_version,
        id: &response.id,
        outputs,
    };
    let mut body = Vec::new();
    serde_json::to_writer(&mut body, &json).map_err(|e| Error::new(crate::core::Code::Internal, e.to_string()))?;
    if !json.outputs.iter().any(|o| o.binary) {
        return Ok(Encoded {
            body: Bytes::from(body),
            header_length: None,
        });
    }
    let header_length = body.len();
    body.reserve(binary_bytes);
    for o in json.outputs.iter().filter(|o| o.binary) {
        body.extend_from_slice(&o.tensor.data);
    }
    Ok(Encoded {
        body: Bytes::from(body),
        header_length: Some(header_length),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{InstanceKind, IoSpec, Scheduling};

    fn spec() -> ModelSpec {
        let io = |name: &str, datatype| IoSpec {
            name: name.into(),
            datatype,
            dims: vec![-1],
            reshape: None,
            optional: false,
            verify_shape: false,
            ragged: false,
            labels: None,
        };
        ModelSpec {
            name: "m".into(),
            version: 1,
            platform: String::new(),
            backend: "candle".into(),
            max_batch_size: 0,
            inputs: vec![io("a", DataType::I32), io("b", DataType::F32)],
            outputs: vec![io("y", DataType::F32)],
            scheduling: Scheduling::Direct,
            instance_count: 1,
            instance_kind: InstanceKind::Cpu,
            variable: Default::default(),
        }
    }

    #[test]
    fn nested_json_data_and_binary_sections() {
        let json = br#"{"inputs":[{"name":"a","shape":[2,2],"datatype":"INT32","data":[[1,-2],[3,4]]},
            {"name":"b","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}],
            "outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#;
        let mut body = json.to_vec();
        body.extend_from_slice(&1.5f32.to_le_bytes());
        body.extend_from_slice(&(-2f32).to_le_bytes());
        let (Decoded { request, .. }, form) =
            decode(Some(&json.len().to_string()), Bytes::from(body), &spec()).unwrap();
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
    fn every_datatype_decodes_from_json() {
        let cases: [(&str, &str, Vec<u8>); 5] = [
            ("BOOL", "[true,false]", vec![1, 0]),
            (
                "UINT16",
                "[1,65535]",
                [1u16.to_le_bytes(), 65535u16.to_le_bytes()].concat(),
            ),
            (
                "FP16",
                "[1, 0.5]",
                [f16::from_f32(1.0).to_le_bytes(), f16::from_f32(0.5).to_le_bytes()].concat(),
            ),
            (
                "INT64",
                "[[-9007199254740993],[2]]",
                [(-9007199254740993i64).to_le_bytes(), 2i64.to_le_bytes()].concat(),
            ),
            ("BYTES", r#"["ab",""]"#, vec![2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]),
        ];
        for (datatype, data, want) in cases {
            let body = format!(r#"{{"inputs":[{{"name":"a","shape":[2],"datatype":"{datatype}","data":{data}}}]}}"#);
            let (Decoded { request, .. }, _) = decode(None, Bytes::from(body), &spec()).unwrap();
            assert_eq!(&request.inputs[0].data[..], &want[..], "{datatype}");
        }
    }

    #[test]
    fn bad_bodies_are_invalid_arguments() {
        let cases: [(&[u8], Option<&str>, &str); 9] = [
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
            (
                br#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[null]}]}"#,
                None,
                "input 'a'",
            ),
            (
                br#"{"parameters":{"x":{"deep":[1,2,3]}},"inputs":[]}"#,
                None,
                "not a bool, number or string",
            ),
            (
                br#"{"inputs":[{"name":"a","shape":[1],"datatype":"INT32","data":[1.5]}]}"#,
                None,
                "not a INT32",
            ),
        ];
        for (body, header, needle) in cases {
            let e = decode(header, Bytes::copy_from_slice(body), &spec()).unwrap_err();
            assert_eq!(e.code(), crate::core::Code::InvalidArgument);
            assert!(e.to_string().contains(needle), "{e} should mention {needle}");
        }
    }

    #[test]
    fn a_shape_larger_than_the_data_costs_nothing() {
        // A client may declare any shape: nothing is reserved for it beyond what the text holds.
        let body = br#"{"inputs":[{"name":"a","shape":[1000000000000],"datatype":"FP64","data":[1]}]}"#;
        let e = decode(None, Bytes::copy_from_slice(body), &spec()).unwrap_err();
        assert!(e.to_string().contains("1 values"), "{e}");
        let deep = format!(
            r#"{{"inputs":[{{"name":"a","shape":[1],"datatype":"FP32","data":{}1{}}}]}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(decode(None, Bytes::from(deep), &spec()).is_err());
    }

    #[test]
    fn raw_binary_shapes() {
        assert_eq!(raw_shape(DataType::F32, &[-1, 4], true, 32), Some(vec![1, 2, 4]));
        assert_eq!(raw_shape(DataType::F32, &[4], false, 16), Some(vec![4]));
        assert_eq!(raw_shape(DataType::F32, &[4], false, 12), None);
        assert_eq!(raw_shape(DataType::F32, &[-1, -1], true, 16), None);
        assert_eq!(raw_shape(DataType::F32, &[i64::MAX, i64::MAX], true, 16), None);
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
            outputs: vec![t("a", &[1.0, 2.5, f32::NAN]), t("b", &[3.0])],
        };
        let form = OutputForm {
            default_binary: false,
            binary: vec![("b".into(), true)],
            ..Default::default()
        };
        let enc = encode(response, &form).unwrap();
        let n = enc.header_length.unwrap();
        let header: Value = serde_json::from_slice(&enc.body[..n]).unwrap();
        assert_eq!(header["outputs"][0]["data"], serde_json::json!([1.0, 2.5, null]));
        assert_eq!(header["outputs"][1]["parameters"]["binary_data_size"], 4);
        assert_eq!(&enc.body[n..], &3f32.to_le_bytes());
        assert_eq!(header["id"], "7");
    }

    #[test]
    fn shared_memory_tensors_are_references_and_outputs_metadata_only() {
        let body = br#"{"inputs":[{"name":"a","shape":[1,4],"datatype":"FP32","parameters":{"shared_memory_region":"in","shared_memory_byte_size":16,"shared_memory_offset":32}}],
            "outputs":[{"name":"y","parameters":{"shared_memory_region":"out","shared_memory_byte_size":16}}]}"#;
        let (decoded, form) = decode(None, Bytes::copy_from_slice(body), &spec()).unwrap();
        assert_eq!(
            decoded.shared,
            vec![(
                0,
                shm::TensorRef {
                    region: "in".into(),
                    offset: 32,
                    byte_size: 16
                }
            )]
        );
        assert!(decoded.request.inputs[0].data.is_empty());
        assert_eq!(form.shared, ["y"]);
        let response = InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: String::new(),
            outputs: vec![Tensor {
                name: "y".into(),
                datatype: DataType::F32,
                shape: vec![1, 4],
                data: Bytes::new(),
            }],
        };
        let enc = encode(response, &form).unwrap();
        assert_eq!(enc.header_length, None);
        let json: Value = serde_json::from_slice(&enc.body).unwrap();
        assert_eq!(json["outputs"][0]["shape"], serde_json::json!([1, 4]));
        assert!(json["outputs"][0].get("data").is_none(), "{json}");
        assert!(json["outputs"][0].get("parameters").is_none(), "{json}");

        let bad: [&[u8]; 3] = [
            br#"{"inputs":[{"name":"a","shape":[1,4],"datatype":"FP32","data":[1,2,3,4],"parameters":{"shared_memory_region":"in","shared_memory_byte_size":16}}]}"#,
            br#"{"inputs":[{"name":"a","shape":[1,4],"datatype":"FP32","parameters":{"shared_memory_region":"in"}}]}"#,
            br#"{"inputs":[],"outputs":[{"name":"y","parameters":{"shared_memory_region":"out","shared_memory_byte_size":16,"binary_data":true}}]}"#,
        ];
        for body in bad {
            let e = decode(None, Bytes::copy_from_slice(body), &spec()).unwrap_err();
            assert_eq!(e.code(), crate::core::Code::InvalidArgument, "{e}");
        }
    }
}

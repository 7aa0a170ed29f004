//! Reading ONNX protobuf values: element types, initializers (raw, typed or external data) and node
//! attributes. candle-onnx supplies the generated protobuf types; everything else is ours.
//!
//! Inside the executor every integer type is held as candle `I64` and booleans as `U8`: ONNX only
//! combines tensors of equal type, so arithmetic stays exact, and the declared type is restored at the
//! graph's boundary.

use candle_core::{DType, Device, Tensor};
use candle_onnx::onnx::{AttributeProto, NodeProto, TensorProto, tensor_proto::DataType as OnnxType};
use half::{bf16, f16};

use crate::backend::ExternalData;
use crate::core::{DataType, ModelFile};

/// The most elements one initializer or constant may declare (its data must be there too: this
/// bounds what a shape of wrapping dimensions could otherwise claim).
pub(super) const MAX_TENSOR_ELEMENTS: usize = 1 << 34;

/// The candle dtype that holds values of an ONNX element type inside the executor.
pub(super) fn internal_dtype(elem_type: i32) -> Result<DType, String> {
    Ok(
        match OnnxType::try_from(elem_type).map_err(|_| format!("unknown ONNX element type {elem_type}"))? {
            OnnxType::Float => DType::F32,
            OnnxType::Float16 => DType::F16,
            OnnxType::Bfloat16 => DType::BF16,
            OnnxType::Double => DType::F64,
            OnnxType::Bool => DType::U8,
            OnnxType::Uint8
            | OnnxType::Int8
            | OnnxType::Uint16
            | OnnxType::Int16
            | OnnxType::Int32
            | OnnxType::Int64
            | OnnxType::Uint32
            | OnnxType::Uint64 => DType::I64,
            other => {
                return Err(format!("ONNX element type {} is not supported", other.as_str_name()));
            }
        },
    )
}

/// The protocol datatype of an ONNX element type, for model metadata.
pub(super) fn wire_datatype(elem_type: i32) -> Option<DataType> {
    Some(match OnnxType::try_from(elem_type).ok()? {
        OnnxType::Float => DataType::F32,
        OnnxType::Float16 => DataType::F16,
        OnnxType::Bfloat16 => DataType::Bf16,
        OnnxType::Double => DataType::F64,
        OnnxType::Bool => DataType::Bool,
        OnnxType::Uint8 => DataType::U8,
        OnnxType::Int8 => DataType::I8,
        OnnxType::Uint16 => DataType::U16,
        OnnxType::Int16 => DataType::I16,
        OnnxType::Int32 => DataType::I32,
        OnnxType::Int64 => DataType::I64,
        OnnxType::Uint32 => DataType::U32,
        OnnxType::Uint64 => DataType::U64,
        OnnxType::String => DataType::Bytes,
        _ => return None,
    })
}

/// The candle dtype that holds a protocol datatype inside the executor.
pub(super) fn internal_dtype_of(datatype: DataType) -> Option<DType> {
    Some(match datatype {
        DataType::F32 => DType::F32,
        DataType::F16 => DType::F16,
        DataType::Bf16 => DType::BF16,
        DataType::F64 => DType::F64,
        DataType::Bool => DType::U8,
        DataType::U8
        | DataType::I8
        | DataType::U16
        | DataType::I16
        | DataType::I32
        | DataType::I64
        | DataType::U32
        | DataType::U64 => DType::I64,
        DataType::Bytes => return None,
    })
}

fn dims(t: &TensorProto) -> Result<Vec<usize>, String> {
    t.dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("tensor '{}' has dimension {d}", t.name)))
        .collect()
}

/// Turns an initializer or constant into a tensor on `device`. External data is read from files
/// next to `file`, inside its model's directory.
pub(super) fn tensor_from_proto(t: &TensorProto, file: &ModelFile, device: &Device) -> Result<Tensor, String> {
    let shape = dims(t)?;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_TENSOR_ELEMENTS)
        .ok_or_else(|| {
            format!(
                "tensor '{}' has shape {shape:?}, more elements than a tensor may have",
                t.name
            )
        })?;
    let ty = OnnxType::try_from(t.data_type)
        .map_err(|_| format!("tensor '{}': unknown element type {}", t.name, t.data_type))?;
    let external;
    let raw: &[u8] = if t.data_location == 1 {
        external = read_external(t, file)?;
        &external
    } else {
        &t.raw_data
    };
    let wrong = |what: &str| format!("tensor '{}': {what}", t.name);
    let check = |n: usize| {
        if n == count {
            Ok(())
        } else {
            Err(wrong(&format!("{n} values for shape {shape:?}")))
        }
    };
    let make = |r: candle_core::Result<Tensor>| r.map_err(|e| wrong(&super::error::message(&e)));
    macro_rules! from_raw_or {
        ($t:ty, $typed:expr, $conv:expr) => {{
            let values: Vec<$t> = if !raw.is_empty() {
                let size = std::mem::size_of::<$t>();
                if Some(raw.len()) != count.checked_mul(size) {
                    return Err(wrong(&format!("{} bytes of raw data for shape {shape:?}", raw.len())));
                }
                raw.chunks_exact(size)
                    .map(|c| <$t>::from_le_bytes(c.try_into().unwrap_or_default()))
                    .collect()
            } else {
                let typed: Vec<$t> = $typed.iter().map($conv).collect();
                check(typed.len())?;
                typed
            };
            values
        }};
    }
    let tensor = match ty {
        OnnxType::Float => {
            let v = from_raw_or!(f32, t.float_data, |&x| x);
            make(Tensor::from_vec(v, shape, device))?
        }
        OnnxType::Double => {
            let v = from_raw_or!(f64, t.double_data, |&x| x);
            make(Tensor::from_vec(v, shape, device))?
        }
        OnnxType::Float16 => {
            let v = from_raw_or!(u16, t.int32_data, |&x| x as u16);
            let v: Vec<f16> = v.into_iter().map(f16::from_bits).collect();
            make(Tensor::from_vec(v, shape, device))?
        }
        OnnxType::Bfloat16 => {
            let v = from_raw_or!(u16, t.int32_data, |&x| x as u16);
            let v: Vec<bf16> = v.into_iter().map(bf16::from_bits).collect();
            make(Tensor::from_vec(v, shape, device))?
        }
        OnnxType::Bool => {
            let v = from_raw_or!(u8, t.int32_data, |&x| x as u8);
            let v: Vec<u8> = v.into_iter().map(|b| u8::from(b != 0)).collect();
            make(Tensor::from_vec(v, shape, device))?
        }
        OnnxType::Uint8 => int_tensor(from_raw_or!(u8, t.int32_data, |&x| x as u8), shape, device, make)?,
        OnnxType::Int8 => int_tensor(from_raw_or!(i8, t.int32_data, |&x| x as i8), shape, device, make)?,
        OnnxType::Uint16 => int_tensor(from_raw_or!(u16, t.int32_data, |&x| x as u16), shape, device, make)?,
        OnnxType::Int16 => int_tensor(from_raw_or!(i16, t.int32_data, |&x| x as i16), shape, device, make)?,
        OnnxType::Int32 => int_tensor(from_raw_or!(i32, t.int32_data, |&x| x), shape, device, make)?,
        OnnxType::Int64 => int_tensor(from_raw_or!(i64, t.int64_data, |&x| x), shape, device, make)?,
        OnnxType::Uint32 => int_tensor(from_raw_or!(u32, t.uint64_data, |&x| x as u32), shape, device, make)?,
        OnnxType::Uint64 => int_tensor(from_raw_or!(u64, t.uint64_data, |&x| x), shape, device, make)?,
        other => {
            return Err(wrong(&format!("element type {} is not supported", other.as_str_name())));
        }
    };
    Ok(tensor)
}

trait ToI64: Copy {
    fn to_i64(self) -> i64;
}
macro_rules! to_i64 {
    ($($t:ty),*) => { $(impl ToI64 for $t { fn to_i64(self) -> i64 { self as i64 } })* };
}
to_i64!(u8, i8, u16, i16, i32, i64, u32, u64);

fn int_tensor<T: ToI64>(
    values: Vec<T>,
    shape: Vec<usize>,
    device: &Device,
    make: impl Fn(candle_core::Result<Tensor>) -> Result<Tensor, String>,
) -> Result<Tensor, String> {
    let v: Vec<i64> = values.into_iter().map(ToI64::to_i64).collect();
    make(Tensor::from_vec(v, shape, device))
}

fn read_external(t: &TensorProto, file: &ModelFile) -> Result<Vec<u8>, String> {
    let get = |key: &str| t.external_data.iter().find(|e| e.key == key).map(|e| e.value.as_str());
    let data = ExternalData::of(file, get).map_err(|e| format!("tensor '{}': external data {e}", t.name))?;
    data.file
        .read_range(data.offset, data.length)
        .map_err(|e| format!("tensor '{}': external data {e}", t.name))
}

/// Attribute access on a node.
#[derive(Clone, Copy, Debug)]
pub(super) struct Attrs<'a>(pub &'a NodeProto);

impl<'a> Attrs<'a> {
    pub(super) fn get(&self, name: &str) -> Option<&'a AttributeProto> {
        self.0.attribute.iter().find(|a| a.name == name)
    }

    pub(super) fn int(&self, name: &str, default: i64) -> i64 {
        self.get(name).map_or(default, |a| a.i)
    }

    pub(super) fn float(&self, name: &str, default: f32) -> f32 {
        self.get(name).map_or(default, |a| a.f)
    }

    pub(super) fn ints(&self, name: &str) -> Option<&'a [i64]> {
        self.get(name).map(|a| a.ints.as_slice())
    }

    pub(super) fn floats(&self, name: &str) -> Option<&'a [f32]> {
        self.get(name).map(|a| a.floats.as_slice())
    }

    pub(super) fn string(&self, name: &str) -> Option<String> {
        self.get(name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }

    pub(super) fn strings(&self, name: &str) -> Option<Vec<String>> {
        self.get(name).map(|a| {
            a.strings
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
    }

    pub(super) fn tensor(&self, name: &str) -> Option<&'a TensorProto> {
        self.get(name).and_then(|a| a.t.as_ref())
    }
}

//! The boundary between the protocol's little-endian bytes and candle tensors. Inputs are copied once,
//! from the requests' buffers straight into the tensor's storage (integers widened to i64 on the way);
//! outputs are copied once into a buffer that becomes the response's `Bytes` without another copy.

use bytes::Bytes;
use candle_core::{DType, Device, Tensor as CTensor};
use half::{bf16, f16};

use super::onnx::internal_dtype_of;
use crate::backend::{BackendError, BatchInput};
use crate::core::{DataType, Tensor};

fn exec(e: candle_core::Error) -> BackendError {
    BackendError::Execution(super::error::message(&e))
}

/// Reads little-endian elements of `N` bytes from the parts, in order.
fn read_le<const N: usize, T>(parts: &[Bytes], count: usize, f: impl Fn([u8; N]) -> T) -> Vec<T> {
    let mut out = Vec::with_capacity(count);
    for part in parts {
        out.extend(part.chunks_exact(N).map(|c| f(c.try_into().unwrap_or([0; N]))));
    }
    out
}

/// Copies the parts into a vector of plain-old-data elements (little-endian host).
fn pod<T: bytemuck::Pod + Default>(input: &BatchInput, count: usize) -> Vec<T> {
    let mut v = vec![T::default(); count];
    input.copy_to(bytemuck::cast_slice_mut(&mut v));
    v
}

pub(super) fn to_candle(input: &BatchInput, device: &Device) -> Result<CTensor, BackendError> {
    let count: usize = input.shape.iter().product();
    let size = input.datatype.size().ok_or_else(|| {
        BackendError::UnsupportedDataType("BYTES tensors cannot be executed by the candle backend".into())
    })?;
    if input.byte_len() != count * size {
        return Err(BackendError::Execution(format!(
            "{} bytes for shape {:?}",
            input.byte_len(),
            input.shape
        )));
    }
    let shape = input.shape.clone();
    let p = &input.parts;
    let t = match input.datatype {
        DataType::F32 => CTensor::from_vec(pod::<f32>(input, count), shape, device),
        DataType::F64 => CTensor::from_vec(pod::<f64>(input, count), shape, device),
        DataType::F16 => CTensor::from_vec(pod::<f16>(input, count), shape, device),
        DataType::Bf16 => CTensor::from_vec(pod::<bf16>(input, count), shape, device),
        DataType::Bool => CTensor::from_vec(read_le(p, count, |[b]: [u8; 1]| u8::from(b != 0)), shape, device),
        DataType::I64 => CTensor::from_vec(pod::<i64>(input, count), shape, device),
        DataType::U8 => CTensor::from_vec(read_le(p, count, |b: [u8; 1]| i64::from(b[0])), shape, device),
        DataType::I8 => CTensor::from_vec(read_le(p, count, |b: [u8; 1]| i64::from(b[0] as i8)), shape, device),
        DataType::U16 => CTensor::from_vec(read_le(p, count, |b| i64::from(u16::from_le_bytes(b))), shape, device),
        DataType::I16 => CTensor::from_vec(read_le(p, count, |b| i64::from(i16::from_le_bytes(b))), shape, device),
        DataType::U32 => CTensor::from_vec(read_le(p, count, |b| i64::from(u32::from_le_bytes(b))), shape, device),
        DataType::I32 => CTensor::from_vec(read_le(p, count, |b| i64::from(i32::from_le_bytes(b))), shape, device),
        // Values above i64::MAX wrap; arithmetic on them wraps identically, and they convert back exactly.
        DataType::U64 => CTensor::from_vec(read_le(p, count, |b| u64::from_le_bytes(b) as i64), shape, device),
        DataType::Bytes => unreachable_bytes(),
    };
    t.map_err(exec)
}

fn unreachable_bytes() -> candle_core::Result<CTensor> {
    Err(candle_core::Error::Msg("BYTES tensors cannot be executed".into()))
}

/// A vector of plain-old-data as `Bytes`, without copying it.
fn pod_bytes<T: bytemuck::Pod + Send + Sync + 'static>(v: Vec<T>) -> Bytes {
    struct Owner<T>(Vec<T>);
    impl<T: bytemuck::Pod> AsRef<[u8]> for Owner<T> {
        fn as_ref(&self) -> &[u8] {
            bytemuck::cast_slice(&self.0)
        }
    }
    Bytes::from_owner(Owner(v))
}

pub(super) fn from_candle(t: &CTensor, name: &str, datatype: DataType) -> Result<Tensor, BackendError> {
    let shape = t.dims().to_vec();
    let want = internal_dtype_of(datatype)
        .ok_or_else(|| BackendError::UnsupportedDataType(format!("output '{name}' is BYTES")))?;
    let t = if t.dtype() == want {
        t.clone()
    } else if want == DType::U8 {
        t.ne(0.0).map_err(exec)?
    } else {
        t.to_dtype(want).map_err(exec)?
    };
    let flat = t.flatten_all().map_err(exec)?;
    let data = match datatype {
        DataType::F32 => pod_bytes(flat.to_vec1::<f32>().map_err(exec)?),
        DataType::F64 => pod_bytes(flat.to_vec1::<f64>().map_err(exec)?),
        DataType::F16 => pod_bytes(flat.to_vec1::<f16>().map_err(exec)?),
        DataType::Bf16 => pod_bytes(flat.to_vec1::<bf16>().map_err(exec)?),
        DataType::Bool => Bytes::from(flat.to_vec1::<u8>().map_err(exec)?),
        DataType::I64 => pod_bytes(flat.to_vec1::<i64>().map_err(exec)?),
        // Narrowing integers keeps the low bits: the exact inverse of widening, and wrapping arithmetic.
        DataType::I32 => pod_bytes(
            flat.to_vec1::<i64>()
                .map_err(exec)?
                .into_iter()
                .map(|v| v as i32)
                .collect::<Vec<_>>(),
        ),
        DataType::U32 => pod_bytes(
            flat.to_vec1::<i64>()
                .map_err(exec)?
                .into_iter()
                .map(|v| v as u32)
                .collect::<Vec<_>>(),
        ),
        DataType::I16 => pod_bytes(
            flat.to_vec1::<i64>()
                .map_err(exec)?
                .into_iter()
                .map(|v| v as i16)
                .collect::<Vec<_>>(),
        ),
        DataType::U16 => pod_bytes(
            flat.to_vec1::<i64>()
                .map_err(exec)?
                .into_iter()
                .map(|v| v as u16)
                .collect::<Vec<_>>(),
        ),
        DataType::I8 => pod_bytes(
            flat.to_vec1::<i64>()
                .map_err(exec)?
                .into_iter()
                .map(|v| v as i8)
                .collect::<Vec<_>>(),
        ),
        DataType::U8 => Bytes::from(
            flat.to_vec1::<i64>()
                .map_err(exec)?
                .into_iter()
                .map(|v| v as u8)
                .collect::<Vec<_>>(),
        ),
        DataType::U64 => pod_bytes(
            flat.to_vec1::<i64>()
                .map_err(exec)?
                .into_iter()
                .map(|v| v as u64)
                .collect::<Vec<_>>(),
        ),
        DataType::Bytes => {
            return Err(BackendError::UnsupportedDataType(format!("output '{name}' is BYTES")));
        }
    };
    Ok(Tensor {
        name: name.to_string(),
        datatype,
        shape,
        data,
    })
}

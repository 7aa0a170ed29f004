//! A tensor in flight: name, datatype, shape and little-endian bytes. The bytes are a `Bytes` slice of
//! the received message (no copy on the way in) and outputs are `Bytes` slices of the batched result
//! (no copy on the way out).

use bytes::Bytes;

use super::DataType;

/// A named tensor whose data is row-major and little-endian, as on the wire.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<usize>,
    /// For `BYTES`, each element is a 4-byte little-endian length followed by its bytes.
    pub data: Bytes,
}

impl Tensor {
    pub fn element_count(&self) -> Option<usize> {
        element_count(&self.shape)
    }

    /// The shape as the protocol's int64 list.
    pub fn wire_shape(&self) -> Vec<i64> {
        self.shape.iter().map(|&d| d as i64).collect()
    }
}

/// The product of a shape, or `None` on overflow.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

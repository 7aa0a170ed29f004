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

/// The elements of a raw `BYTES` buffer, each a 4-byte little-endian length followed by that many
/// bytes, in order. A length running past the end yields what is left and ends the walk, and 1-3
/// trailing bytes are not an element: validation refuses both (`validate::count_bytes_elements`),
/// so on a validated buffer this is every element exactly.
pub fn bytes_elements(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = data;
    std::iter::from_fn(move || {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let n = (u32::from_le_bytes(*len) as usize).min(tail.len());
        let (element, after) = tail.split_at(n);
        rest = after;
        Some(element)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn bytes_elements_walk_the_length_prefixes() {
        let mut data = Vec::new();
        for s in [&b""[..], b"ab", b"xyz"] {
            data.extend((s.len() as u32).to_le_bytes());
            data.extend(s);
        }
        let all: Vec<&[u8]> = super::bytes_elements(&data).collect();
        assert_eq!(all, [&b""[..], b"ab", b"xyz"]);
        // A length past the end yields the rest; trailing bytes short of a prefix are nothing.
        let cut: Vec<&[u8]> = super::bytes_elements(&[9, 0, 0, 0, b'q']).collect();
        assert_eq!(cut, [&b"q"[..]]);
        assert_eq!(super::bytes_elements(&[1, 0]).count(), 0);
    }
}

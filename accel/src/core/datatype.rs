//! The protocol's tensor datatypes: their wire names ("FP32"), sizes, and the model-config enum values
//! (`TYPE_FP32`). One enum so that no layer compares datatype strings.

use std::fmt;

/// A tensor element type as the v2 protocol names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DataType {
    /// One byte, 0 or 1.
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F16,
    F32,
    F64,
    /// Variable-size elements; raw form is a 4-byte little-endian length before each element.
    Bytes,
    Bf16,
}

impl DataType {
    /// Every datatype, in the model config's enum order.
    pub const ALL: [DataType; 14] = [
        DataType::Bool,
        DataType::U8,
        DataType::U16,
        DataType::U32,
        DataType::U64,
        DataType::I8,
        DataType::I16,
        DataType::I32,
        DataType::I64,
        DataType::F16,
        DataType::F32,
        DataType::F64,
        DataType::Bytes,
        DataType::Bf16,
    ];

    /// The protocol's name, e.g. `FP32`.
    pub fn wire_name(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::U8 => "UINT8",
            DataType::U16 => "UINT16",
            DataType::U32 => "UINT32",
            DataType::U64 => "UINT64",
            DataType::I8 => "INT8",
            DataType::I16 => "INT16",
            DataType::I32 => "INT32",
            DataType::I64 => "INT64",
            DataType::F16 => "FP16",
            DataType::F32 => "FP32",
            DataType::F64 => "FP64",
            DataType::Bytes => "BYTES",
            DataType::Bf16 => "BF16",
        }
    }

    /// Parses a protocol name. Names are case-sensitive, as the protocol says.
    pub fn from_wire(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.wire_name() == name)
    }

    /// The value of Triton's model-config `DataType` enum (`TYPE_BOOL` = 1 ... `TYPE_BF16` = 14).
    pub fn config_value(self) -> i32 {
        match self {
            DataType::Bool => 1,
            DataType::U8 => 2,
            DataType::U16 => 3,
            DataType::U32 => 4,
            DataType::U64 => 5,
            DataType::I8 => 6,
            DataType::I16 => 7,
            DataType::I32 => 8,
            DataType::I64 => 9,
            DataType::F16 => 10,
            DataType::F32 => 11,
            DataType::F64 => 12,
            DataType::Bytes => 13,
            DataType::Bf16 => 14,
        }
    }

    /// The inverse of [`DataType::config_value`]; `None` for `TYPE_INVALID` and unknown values.
    pub fn from_config_value(value: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.config_value() == value)
    }

    /// Bytes per element, or `None` for `BYTES`, whose elements vary in size.
    pub fn size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::U8 | DataType::I8 => 1,
            DataType::U16 | DataType::I16 | DataType::F16 | DataType::Bf16 => 2,
            DataType::U32 | DataType::I32 | DataType::F32 => 4,
            DataType::U64 | DataType::I64 | DataType::F64 => 8,
            DataType::Bytes => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.wire_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_config_values_round_trip() {
        for d in DataType::ALL {
            assert_eq!(DataType::from_wire(d.wire_name()), Some(d));
            assert_eq!(DataType::from_config_value(d.config_value()), Some(d));
        }
        assert_eq!(DataType::from_wire("fp32"), None, "names are case-sensitive");
        assert_eq!(DataType::from_config_value(0), None);
        assert_eq!(DataType::F16.size(), Some(2));
        assert_eq!(DataType::Bytes.size(), None);
    }
}

//! Triton's classification extension: an output requested with `classification: k` is answered
//! with its top k values per batch row as BYTES strings `"value:index"` or `"value:index:label"`,
//! formatted as Triton's server formats them (C++ `std::to_string`: six decimals for floats). A pure
//! function of the output tensor, run on the executor thread after the batch is split.

use super::{DataType, Tensor};
use bytes::{BufMut, Bytes, BytesMut};

/// The most elements one row may have (Triton's limit, "classification output tensor too large").
pub const MAX_ELEMENTS: usize = 1_000_000;

/// Whether classification can rank values of `datatype` (Triton's list: integers, FP32, FP64).
pub fn supports(datatype: DataType) -> bool {
    !matches!(
        datatype,
        DataType::Bytes | DataType::Bool | DataType::F16 | DataType::Bf16
    )
}

/// One element's value, for ranking and for its text.
#[derive(Clone, Copy)]
enum Value {
    Int(i128),
    Float(f64),
}

impl Value {
    fn key(self) -> f64 {
        match self {
            Value::Int(v) => v as f64,
            Value::Float(v) => v,
        }
    }

    fn text(self) -> String {
        match self {
            Value::Int(v) => v.to_string(),
            // std::to_string(float) is printf's "%f".
            Value::Float(v) => format!("{v:.6}"),
        }
    }
}

fn values(t: &Tensor) -> Result<Vec<Value>, String> {
    let d = &t.data[..];
    macro_rules! ints {
        ($n:expr, $t:ty) => {
            d.chunks_exact($n)
                .map(|c| Value::Int(<$t>::from_le_bytes(c.try_into().unwrap_or([0; $n])) as i128))
                .collect()
        };
    }
    Ok(match t.datatype {
        DataType::U8 => d.iter().map(|&v| Value::Int(v.into())).collect(),
        DataType::I8 => d.iter().map(|&v| Value::Int((v as i8).into())).collect(),
        DataType::U16 => ints!(2, u16),
        DataType::I16 => ints!(2, i16),
        DataType::U32 => ints!(4, u32),
        DataType::I32 => ints!(4, i32),
        DataType::U64 => ints!(8, u64),
        DataType::I64 => ints!(8, i64),
        DataType::F32 => d
            .chunks_exact(4)
            .map(|c| Value::Float(f32::from_le_bytes([c[0], c[1], c[2], c[3]]).into()))
            .collect(),
        DataType::F64 => d
            .chunks_exact(8)
            .map(|c| Value::Float(f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))))
            .collect(),
        DataType::F16 | DataType::Bf16 | DataType::Bool | DataType::Bytes => {
            return Err(format!(
                "class result not available for output due to unsupported type '{}'",
                t.datatype
            ));
        }
    })
}

/// The classification of `t` (one request's output): its top `k` per row when `batching` (the
/// first dimension is the batch), else over the whole tensor.
pub fn classify(t: &Tensor, batching: bool, k: usize, labels: Option<&[String]>) -> Result<Tensor, String> {
    let all = values(t)?;
    let rows = if batching {
        t.shape.first().copied().unwrap_or(1)
    } else {
        1
    };
    let per_row = all.len().checked_div(rows).unwrap_or(0);
    if per_row > MAX_ELEMENTS {
        return Err(format!("output '{}': classification output tensor too large", t.name));
    }
    let k = k.min(per_row);
    let mut out = BytesMut::new();
    let mut order: Vec<usize> = Vec::with_capacity(per_row);
    for row in all.chunks(per_row.max(1)).take(rows) {
        order.clear();
        order.extend(0..row.len());
        // Descending; NaN ranks last. Stable, so ties keep index order.
        order.sort_by(|&a, &b| {
            let (x, y) = (row[a].key(), row[b].key());
            y.partial_cmp(&x).unwrap_or_else(|| x.is_nan().cmp(&y.is_nan()))
        });
        for &i in order.iter().take(k) {
            let mut s = format!("{}:{i}", row[i].text());
            if let Some(label) = labels.and_then(|l| l.get(i)).filter(|l| !l.is_empty()) {
                s.push(':');
                s.push_str(label);
            }
            out.put_u32_le(s.len() as u32);
            out.put_slice(s.as_bytes());
        }
    }
    let shape = if batching { vec![rows, k] } else { vec![k] };
    Ok(Tensor {
        name: t.name.clone(),
        datatype: DataType::Bytes,
        shape,
        data: Bytes::from(out),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(t: &Tensor) -> Vec<String> {
        let mut out = Vec::new();
        let mut d = &t.data[..];
        while let Some((len, rest)) = d.split_first_chunk::<4>() {
            let n = u32::from_le_bytes(*len) as usize;
            out.push(String::from_utf8(rest[..n].to_vec()).unwrap());
            d = &rest[n..];
        }
        out
    }

    #[test]
    fn top_k_per_row_with_and_without_labels() {
        let v: Vec<f32> = vec![0.5, 3.3, -1.0, 2.0, 2.0, 7.0];
        let t = Tensor {
            name: "y".into(),
            datatype: DataType::F32,
            shape: vec![2, 3],
            data: Bytes::from(bytemuck::cast_slice::<f32, u8>(&v).to_vec()),
        };
        let r = classify(&t, true, 2, None).unwrap();
        assert_eq!(r.shape, vec![2, 2]);
        assert_eq!(strings(&r), ["3.300000:1", "0.500000:0", "7.000000:2", "2.000000:0"]);
        let labels: Vec<String> = vec!["a".into(), "".into(), "c".into()];
        let r = classify(&t, true, 9, Some(&labels)).unwrap();
        assert_eq!(r.shape, vec![2, 3]);
        assert_eq!(strings(&r)[..3], ["3.300000:1", "0.500000:0:a", "-1.000000:2:c"]);
        let r = classify(&t, false, 1, Some(&labels)).unwrap();
        assert_eq!(
            (r.shape.clone(), strings(&r)),
            (vec![1], vec!["7.000000:5".to_string()])
        );
    }

    #[test]
    fn integers_print_as_integers_and_unsupported_types_are_refused() {
        let t = Tensor {
            name: "y".into(),
            datatype: DataType::I32,
            shape: vec![1, 3],
            data: Bytes::from(bytemuck::cast_slice::<i32, u8>(&[4, -9, 12]).to_vec()),
        };
        assert_eq!(strings(&classify(&t, true, 2, None).unwrap()), ["12:2", "4:0"]);
        let b = Tensor {
            datatype: DataType::F16,
            data: Bytes::from_static(&[0, 0]),
            shape: vec![1],
            ..t
        };
        assert!(
            classify(&b, false, 1, None)
                .unwrap_err()
                .contains("unsupported type 'FP16'")
        );
    }
}

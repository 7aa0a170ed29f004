//! Random tensor contents for any protocol datatype, little-endian as the wire wants them.

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// `shape`'s worth of random elements of `datatype` (floats in [-1, 1), small integers, 8-byte strings).
pub fn random(datatype: &str, shape: &[i64], seed: u64) -> Result<Bytes, String> {
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(usize::try_from(d).ok()?));
    let count = count.ok_or_else(|| format!("shape {shape:?} is not a tensor shape"))?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for _ in 0..count {
        match datatype {
            "BOOL" => out.push(u8::from(rng.random::<bool>())),
            "UINT8" | "INT8" => out.push(rng.random_range(0..100u8)),
            "UINT16" | "INT16" => out.extend(rng.random_range(0..1000u16).to_le_bytes()),
            "UINT32" | "INT32" => out.extend(rng.random_range(0..1000u32).to_le_bytes()),
            "UINT64" | "INT64" => out.extend(rng.random_range(0..1000u64).to_le_bytes()),
            "FP16" => out.extend(
                half::f16::from_f32(rng.random_range(-1.0..1.0f32))
                    .to_bits()
                    .to_le_bytes(),
            ),
            "BF16" => out.extend(
                half::bf16::from_f32(rng.random_range(-1.0..1.0f32))
                    .to_bits()
                    .to_le_bytes(),
            ),
            "FP32" => out.extend(rng.random_range(-1.0..1.0f32).to_le_bytes()),
            "FP64" => out.extend(rng.random_range(-1.0..1.0f64).to_le_bytes()),
            "BYTES" => {
                out.extend(8u32.to_le_bytes());
                out.extend((0..8).map(|_| rng.random_range(b'a'..=b'z')));
            }
            other => return Err(format!("datatype {other} is not supported")),
        }
    }
    Ok(Bytes::from(out))
}

/// Bytes of one element (`None` for BYTES, whose elements vary).
pub fn element_size(datatype: &str) -> Option<usize> {
    Some(match datatype {
        "BOOL" | "UINT8" | "INT8" => 1,
        "UINT16" | "INT16" | "FP16" | "BF16" => 2,
        "UINT32" | "INT32" | "FP32" => 4,
        "UINT64" | "INT64" | "FP64" => 8,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_follow_the_datatype() {
        assert_eq!(super::random("FP32", &[2, 3], 1).unwrap().len(), 24);
        assert_eq!(super::random("INT64", &[4], 1).unwrap().len(), 32);
        assert_eq!(super::random("BYTES", &[2], 1).unwrap().len(), 24);
        assert!(super::random("FP8", &[2], 1).is_err());
        assert!(super::random("FP32", &[-1], 1).is_err());
        assert_eq!(super::element_size("FP16"), Some(2));
        assert_eq!(super::element_size("BYTES"), None);
    }
}

//! Encoder self-attention in one pass over a fused Q/K/V projection: `qkv [n, len, 3, heads, dh]`
//! (the output of one product with the query, key and value weights side by side) into the
//! context `[n, len, heads * dh]`, heads concatenated: what the attention's output projection
//! reads. candle's path splits the heads with three transposed copies, runs two batched GEMMs per
//! layer (each packing its operands), adds the mask as a broadcast and copies the context back;
//! here each head's queries, keys (transposed, scaled) and values are gathered once into scratch
//! buffers and both products run through the packed kernel (`packed.rs`), the key mask as the
//! scores' column bias.

use crate::activation::softmax_rows_impl;
use crate::packed::PackedB;

/// The shape of one attention: `n` sequences of `len` tokens, `heads` heads of `dh` each, scores
/// scaled by `scale`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Heads {
    pub n: usize,
    pub len: usize,
    pub heads: usize,
    pub dh: usize,
    pub scale: f32,
}

multiversion! {
    /// `out [n, len, heads * dh]` = softmax(q·kᵀ · scale + bias) · v per sequence and head, with
    /// `bias [n, len]` added to every query's scores of that key (0 for a real token, a large
    /// negative value for padding). Panics when the lengths do not match the shape.
    pub fn attention(qkv: &[f32], bias: &[f32], out: &mut [f32], shape: Heads) = attention_impl;
}

#[inline(always)]
fn attention_impl(qkv: &[f32], bias: &[f32], out: &mut [f32], shape: Heads) {
    let Heads {
        n,
        len,
        heads,
        dh,
        scale,
    } = shape;
    let hidden = heads * dh;
    assert_eq!(qkv.len(), n * len * 3 * hidden, "qkv length");
    assert_eq!(bias.len(), n * len, "bias length");
    assert_eq!(out.len(), n * len * hidden, "output length");
    let row = 3 * hidden;
    let mut q = vec![0f32; len * dh];
    let mut kt = vec![0f32; dh * len];
    let mut v = vec![0f32; len * dh];
    let mut scores = vec![0f32; len * len];
    let mut probs = vec![0f32; len * len];
    let mut context = vec![0f32; len * dh];
    for b in 0..n {
        let seq = &qkv[b * len * row..][..len * row];
        let bias = &bias[b * len..][..len];
        for h in 0..heads {
            // This head's queries [len, dh], keys transposed and scaled [dh, len], values [len, dh].
            for j in 0..len {
                let at = j * row + h * dh;
                q[j * dh..][..dh].copy_from_slice(&seq[at..][..dh]);
                for (d, &x) in seq[at + hidden..][..dh].iter().enumerate() {
                    kt[d * len + j] = x * scale;
                }
                v[j * dh..][..dh].copy_from_slice(&seq[at + 2 * hidden..][..dh]);
            }
            // Both products through the packed kernel: the key bias is the scores' column bias.
            let keys = PackedB::new(&kt, dh, len, Some(bias)).expect("key shapes");
            keys.matmul(&q, len, &mut scores);
            softmax_rows_impl(&scores, &mut probs, len);
            let values = PackedB::new(&v, len, dh, None).expect("value shapes");
            values.matmul(&probs, len, &mut context);
            for i in 0..len {
                out[(b * len + i) * hidden + h * dh..][..dh].copy_from_slice(&context[i * dh..][..dh]);
            }
        }
    }
}

/// The definition, in f64.
pub fn attention_reference(qkv: &[f32], bias: &[f32], shape: Heads) -> Vec<f32> {
    let Heads {
        n,
        len,
        heads,
        dh,
        scale,
    } = shape;
    let hidden = heads * dh;
    let at = |b: usize, t: usize, part: usize, h: usize, d: usize| {
        f64::from(qkv[((b * len + t) * 3 + part) * hidden + h * dh + d])
    };
    let mut out = vec![0f32; n * len * hidden];
    for b in 0..n {
        for h in 0..heads {
            for i in 0..len {
                let s: Vec<f64> = (0..len)
                    .map(|j| {
                        (0..dh).map(|d| at(b, i, 0, h, d) * at(b, j, 1, h, d)).sum::<f64>() * f64::from(scale)
                            + f64::from(bias[b * len + j])
                    })
                    .collect();
                let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for d in 0..dh {
                    let c: f64 = (0..len).map(|j| e[j] / sum * at(b, j, 2, h, d)).sum();
                    out[(b * len + i) * hidden + h * dh + d] = c as f32;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::tests::Rng;

    #[test]
    fn fused_attention_matches_the_reference_with_padding_at_every_level() {
        crate::simd::each_level(|level| {
            for &(n, len, heads, dh) in &[(1, 1, 1, 1), (2, 7, 3, 5), (3, 16, 12, 32), (1, 33, 2, 16)] {
                let hidden = heads * dh;
                let qkv = Rng(0x2545_f491_4f6c_dd1d).values(n * len * 3 * hidden);
                // The last rows of every sequence but the first are padding.
                let bias: Vec<f32> = (0..n * len)
                    .map(|k| {
                        if k / len > 0 && k % len >= len.div_ceil(2) {
                            -10000.0
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let scale = 1.0 / (dh as f32).sqrt();
                let mut out = vec![f32::NAN; n * len * hidden];
                let shape = Heads {
                    n,
                    len,
                    heads,
                    dh,
                    scale,
                };
                attention(&qkv, &bias, &mut out, shape);
                let want = attention_reference(&qkv, &bias, shape);
                for (k, (g, w)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                        "level {level} {n}x{len}x{heads}x{dh} at {k}: {g} vs {w}"
                    );
                }
            }
        });
    }
}

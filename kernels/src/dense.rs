//! Dense and grouped 2-D convolution on the CPU (FP32, NCHW) as one GEMM per image and group:
//! `weights [out, in*kh*kw] x columns [in*kh*kw, out_h*out_w]`, written straight into the NCHW output
//! with the bias as its starting value. A 1x1 convolution with unit strides and no padding reads the
//! input itself as the columns (no copy); otherwise the columns are gathered a row run at a time, the
//! padding clipped rather than materialised. candle's path copies the input into a transposed
//! im2col, multiplies into `[out_h*out_w, out]` and transposes that back: two more copies per call.

use crate::conv::ShapeError;

/// The shape of a convolution: input `[batch, in_channels, height, width]`, weights `[out_channels,
/// in_channels / groups, kernel_h, kernel_w]`, output `[batch, out_channels, out_h, out_w]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub groups: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: [usize; 2],
    /// Padding `[top, left, bottom, right]`.
    pub pads: [usize; 4],
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
}

impl Conv2d {
    /// Output height and width.
    pub fn output_size(&self) -> Result<[usize; 2], ShapeError> {
        let sizes = [self.height, self.width];
        let mut out = [0; 2];
        for axis in 0..2 {
            if self.kernel[axis] == 0 || self.strides[axis] == 0 || self.dilations[axis] == 0 {
                return Err(ShapeError::Degenerate);
            }
            let padded = sizes[axis] + self.pads[axis] + self.pads[axis + 2];
            let extent = (self.kernel[axis] - 1) * self.dilations[axis] + 1;
            if padded < extent {
                return Err(ShapeError::TooSmall { axis, padded, extent });
            }
            out[axis] = (padded - extent) / self.strides[axis] + 1;
        }
        Ok(out)
    }

    fn check(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Result<[usize; 2], ShapeError> {
        if self.groups == 0
            || !self.in_channels.is_multiple_of(self.groups)
            || !self.out_channels.is_multiple_of(self.groups)
        {
            return Err(ShapeError::Degenerate);
        }
        let size = self.output_size()?;
        let lengths = [
            (
                "the input",
                self.batch * self.in_channels * self.height * self.width,
                x.len(),
            ),
            (
                "the weights",
                self.out_channels * self.in_channels / self.groups * self.kernel[0] * self.kernel[1],
                w.len(),
            ),
            (
                "the bias",
                self.out_channels,
                bias.map_or(self.out_channels, <[f32]>::len),
            ),
        ];
        for (what, expected, got) in lengths {
            if expected != got {
                return Err(ShapeError::Length { what, expected, got });
            }
        }
        Ok(size)
    }

    /// Whether the input itself is the column matrix (1x1, unit strides, no padding).
    fn pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.strides == [1, 1] && self.pads == [0; 4]
    }
}

/// The convolution; the GEMMs use `threads` threads (rayon's pool) when more than one.
pub fn conv2d(
    shape: &Conv2d,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    threads: usize,
) -> Result<Vec<f32>, ShapeError> {
    let [oh, ow] = shape.check(x, w, bias)?;
    if crate::direct::applies(shape) {
        return Ok(crate::direct::conv2d(shape, x, w, bias, threads));
    }
    let n = oh * ow;
    let icg = shape.in_channels / shape.groups;
    let ocg = shape.out_channels / shape.groups;
    let k = icg * shape.kernel[0] * shape.kernel[1];
    let plane = shape.height * shape.width;
    let mut out = vec![0f32; shape.batch * shape.out_channels * n];
    if n == 0 || out.is_empty() {
        return Ok(out);
    }
    if let Some(bias) = bias {
        for (c, row) in out.chunks_exact_mut(n).enumerate() {
            row.fill(bias[c % shape.out_channels]);
        }
    }
    // The column matrix is rebuilt for every image and group (im2col writes every element), in a
    // buffer each thread keeps: a fresh one per call would be zeroed and faulted in every time.
    let mut columns = if shape.pointwise() {
        Vec::new()
    } else {
        let mut buffer = COLUMNS.with(|c| std::mem::take(&mut *c.borrow_mut()));
        buffer.resize(k * n, 0.0);
        buffer
    };
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    for b in 0..shape.batch {
        for g in 0..shape.groups {
            let input = &x[(b * shape.in_channels + g * icg) * plane..][..icg * plane];
            let rhs: &[f32] = if shape.pointwise() {
                input
            } else {
                im2col(shape, input, icg, [oh, ow], &mut columns);
                &columns
            };
            let lhs = &w[g * ocg * k..][..ocg * k];
            let dst = &mut out[(b * shape.out_channels + g * ocg) * n..][..ocg * n];
            // SAFETY: dst is ocg x n, lhs ocg x k and rhs k x n, all row-major and in bounds (checked
            // lengths above); dst does not alias the inputs.
            unsafe {
                gemm::gemm(
                    ocg,
                    n,
                    k,
                    dst.as_mut_ptr(),
                    1,
                    n as isize,
                    bias.is_some(),
                    lhs.as_ptr(),
                    1,
                    k as isize,
                    rhs.as_ptr(),
                    1,
                    n as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
        }
    }
    if columns.capacity() <= MAX_KEPT_COLUMNS {
        COLUMNS.with(|c| *c.borrow_mut() = columns);
    }
    Ok(out)
}

/// The largest column buffer a thread keeps between calls (elements; 64 MiB).
const MAX_KEPT_COLUMNS: usize = 16 << 20;

thread_local! {
    static COLUMNS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

multiversion! {
    /// Gathers the column matrix `[icg*kh*kw, oh*ow]` of one image and group: row `(c, ky, kx)` holds
    /// input channel `c` at `(oy*sh + ky*dh - top, ox*sw + kx*dw - left)`, zero outside the input.
    fn im2col(shape: &Conv2d, input: &[f32], icg: usize, size: [usize; 2], columns: &mut [f32]) = im2col_impl;
}

#[inline(always)]
fn im2col_impl(shape: &Conv2d, input: &[f32], icg: usize, [oh, ow]: [usize; 2], columns: &mut [f32]) {
    let (h, w) = (shape.height, shape.width);
    let [kh, kw] = shape.kernel;
    let [sh, sw] = shape.strides;
    let [dh, dw] = shape.dilations;
    let (top, left) = (shape.pads[0] as isize, shape.pads[1] as isize);
    let n = oh * ow;
    for c in 0..icg {
        let plane = &input[c * h * w..][..h * w];
        for ky in 0..kh {
            for kx in 0..kw {
                let row = &mut columns[((c * kh + ky) * kw + kx) * n..][..n];
                let offset = (kx * dw) as isize - left;
                let (lo, hi) = crate::conv::valid_columns(offset, sw, w, ow);
                for oy in 0..oh {
                    let out = &mut row[oy * ow..][..ow];
                    let iy = (oy * sh + ky * dh) as isize - top;
                    if iy < 0 || iy >= h as isize || lo == hi {
                        out.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * w..][..w];
                    out[..lo].fill(0.0);
                    out[hi..].fill(0.0);
                    let start = (lo as isize * sw as isize + offset) as usize;
                    if sw == 1 {
                        out[lo..hi].copy_from_slice(&src[start..start + (hi - lo)]);
                    } else {
                        for (o, &v) in out[lo..hi].iter_mut().zip(src[start..].iter().step_by(sw)) {
                            *o = v;
                        }
                    }
                }
            }
        }
    }
}

/// The definition, one output element at a time: what the tests hold [`conv2d`] to.
pub fn conv2d_reference(shape: &Conv2d, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Result<Vec<f32>, ShapeError> {
    let [oh, ow] = shape.check(x, w, bias)?;
    let icg = shape.in_channels / shape.groups;
    let ocg = shape.out_channels / shape.groups;
    let [kh, kw] = shape.kernel;
    let mut out = Vec::with_capacity(shape.batch * shape.out_channels * oh * ow);
    for b in 0..shape.batch {
        for oc in 0..shape.out_channels {
            let g = oc / ocg;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = f64::from(bias.map_or(0.0, |b| b[oc]));
                    for c in 0..icg {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy =
                                    (oy * shape.strides[0] + ky * shape.dilations[0]) as isize - shape.pads[0] as isize;
                                let ix =
                                    (ox * shape.strides[1] + kx * shape.dilations[1]) as isize - shape.pads[1] as isize;
                                if iy < 0 || ix < 0 || iy >= shape.height as isize || ix >= shape.width as isize {
                                    continue;
                                }
                                let ic = g * icg + c;
                                let xv = x[((b * shape.in_channels + ic) * shape.height + iy as usize) * shape.width
                                    + ix as usize];
                                let wv = w[((oc * icg + c) * kh + ky) * kw + kx];
                                acc += f64::from(xv) * f64::from(wv);
                            }
                        }
                    }
                    out.push(acc as f32);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::conv::tests::{Rng, max_error};

    /// A random convolution: up to `batch` images, up to `channels` `[in, out]` channels per group
    /// (1-3 groups), up to `size` `[height, width]`, every kernel/pad/stride/dilation case. It may
    /// have no output: callers skip those.
    pub(crate) fn random_conv2d(rng: &mut Rng, batch: usize, channels: [usize; 2], size: [usize; 2]) -> Conv2d {
        let groups = 1 + rng.below(3);
        Conv2d {
            batch: 1 + rng.below(batch),
            in_channels: groups * (1 + rng.below(channels[0])),
            out_channels: groups * (1 + rng.below(channels[1])),
            groups,
            height: 1 + rng.below(size[0]),
            width: 1 + rng.below(size[1]),
            kernel: [1 + rng.below(4), 1 + rng.below(4)],
            pads: [rng.below(3), rng.below(3), rng.below(3), rng.below(3)],
            strides: [1 + rng.below(3), 1 + rng.below(3)],
            dilations: [1 + rng.below(2), 1 + rng.below(3)],
        }
    }

    /// Random input, weights and bias for `shape`, and whether to use the bias.
    pub(crate) fn random_data(rng: &mut Rng, shape: &Conv2d) -> (Vec<f32>, Vec<f32>, Vec<f32>, bool) {
        let x = rng.values(shape.batch * shape.in_channels * shape.height * shape.width);
        let w = rng.values(shape.out_channels * shape.in_channels / shape.groups * shape.kernel[0] * shape.kernel[1]);
        let bias = rng.values(shape.out_channels);
        (x, w, bias, rng.below(2) == 0)
    }

    #[test]
    fn matches_the_reference_on_random_shapes() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut tried = 0;
        while tried < 300 {
            let shape = random_conv2d(&mut rng, 3, [4, 5], [11, 14]);
            // Every fourth case pointwise, the no-copy path.
            let shape = if tried % 4 == 0 {
                Conv2d {
                    kernel: [1, 1],
                    pads: [0; 4],
                    strides: [1, 1],
                    ..shape
                }
            } else {
                shape
            };
            if shape.output_size().is_err() {
                continue;
            }
            tried += 1;
            let (x, w, bias, with_bias) = random_data(&mut rng, &shape);
            let bias = with_bias.then_some(&bias[..]);
            let want = conv2d_reference(&shape, &x, &w, bias).unwrap();
            // Every instruction level: the im2col path below AVX-512, the direct one at it.
            crate::simd::each_level(|level| {
                for threads in [1, 2] {
                    let got = conv2d(&shape, &x, &w, bias, threads).unwrap();
                    assert_eq!(got.len(), want.len(), "{shape:?}");
                    let err = max_error(&got, &want);
                    assert!(err < 1e-4, "{shape:?} level {level} threads {threads}: {err}");
                }
            });
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let shape = Conv2d {
            batch: 1,
            in_channels: 3,
            out_channels: 4,
            groups: 2,
            height: 4,
            width: 4,
            kernel: [3, 3],
            pads: [0; 4],
            strides: [1, 1],
            dilations: [1, 1],
        };
        assert_eq!(shape.check(&[], &[], None), Err(ShapeError::Degenerate));
        let shape = Conv2d { groups: 1, ..shape };
        let e = conv2d(&shape, &[0.0; 48], &[0.0; 107], None, 1).unwrap_err();
        assert_eq!(
            e,
            ShapeError::Length {
                what: "the weights",
                expected: 108,
                got: 107
            }
        );
    }
}

//! Transposed 2-D convolution on the CPU (FP32, NCHW), before any cropping: one GEMM per image and
//! group, `weights^T [out*kh*kw, in] x input [in, h*w]`, then each column added into the output at
//! the position its kernel tap reaches (col2im). candle zero-stuffs the input and runs a direct
//! convolution instead (PP-OCR's text detector spent 18% of its time in its two ConvTranspose nodes).
//! Padding, output padding and the bias are the caller's (a crop and an add on the full result).

use crate::conv::ShapeError;

/// Input `[batch, in_channels, height, width]`, weights `[in_channels, out_channels / groups, kh, kw]`
/// (ONNX's layout), full output `[batch, out_channels, (h-1)*sh + (kh-1)*dh + 1, (likewise w)]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTranspose2d {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub groups: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
}

impl ConvTranspose2d {
    /// The full output's height and width.
    pub fn output_size(&self) -> Result<[usize; 2], ShapeError> {
        if self.kernel.contains(&0) || self.strides.contains(&0) || self.dilations.contains(&0) || self.groups == 0 {
            return Err(ShapeError::Degenerate);
        }
        if !self.in_channels.is_multiple_of(self.groups) || !self.out_channels.is_multiple_of(self.groups) {
            return Err(ShapeError::Degenerate);
        }
        let size = |s: usize, axis: usize| {
            s.saturating_sub(1) * self.strides[axis] + (self.kernel[axis] - 1) * self.dilations[axis] + 1
        };
        Ok([size(self.height, 0), size(self.width, 1)])
    }

    fn check(&self, x: &[f32], w: &[f32]) -> Result<[usize; 2], ShapeError> {
        let size = self.output_size()?;
        let lengths = [
            (
                "the input",
                self.batch * self.in_channels * self.height * self.width,
                x.len(),
            ),
            (
                "the weights",
                self.in_channels * self.out_channels / self.groups * self.kernel[0] * self.kernel[1],
                w.len(),
            ),
        ];
        for (what, expected, got) in lengths {
            if expected != got {
                return Err(ShapeError::Length { what, expected, got });
            }
        }
        Ok(size)
    }
}

thread_local! {
    static COLUMNS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The largest column buffer a thread keeps between calls (elements; 64 MiB).
const MAX_KEPT_COLUMNS: usize = 16 << 20;

/// The full transposed convolution; the GEMMs use `threads` threads (rayon's pool) when more than one.
pub fn conv_transpose2d(shape: &ConvTranspose2d, x: &[f32], w: &[f32], threads: usize) -> Result<Vec<f32>, ShapeError> {
    let [oh, ow] = shape.check(x, w)?;
    let (h, wd) = (shape.height, shape.width);
    let [kh, kw] = shape.kernel;
    let icg = shape.in_channels / shape.groups;
    let ocg = shape.out_channels / shape.groups;
    let n = h * wd;
    let m = ocg * kh * kw;
    let mut out = vec![0f32; shape.batch * shape.out_channels * oh * ow];
    if n == 0 || m == 0 || out.is_empty() {
        return Ok(out);
    }
    let mut columns = COLUMNS.with(|c| std::mem::take(&mut *c.borrow_mut()));
    columns.resize(m * n, 0.0);
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    for b in 0..shape.batch {
        for g in 0..shape.groups {
            let input = &x[(b * shape.in_channels + g * icg) * n..][..icg * n];
            let weights = &w[g * icg * m..][..icg * m];
            // SAFETY: columns is m x n (row-major), the weights icg x m read transposed (m x icg with
            // row stride 1 and column stride m), the input icg x n; all in bounds, no aliasing.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    icg,
                    columns.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    weights.as_ptr(),
                    m as isize,
                    1,
                    input.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
            let dst = &mut out[(b * shape.out_channels + g * ocg) * oh * ow..][..ocg * oh * ow];
            col2im(shape, &columns, [oh, ow], dst);
        }
    }
    if columns.capacity() <= MAX_KEPT_COLUMNS {
        COLUMNS.with(|c| *c.borrow_mut() = columns);
    }
    Ok(out)
}

multiversion! {
    /// Adds each column row `(oc, ky, kx)` into output channel `oc` at `(iy*sh + ky*dh, ix*sw + kx*dw)`.
    fn col2im(shape: &ConvTranspose2d, columns: &[f32], size: [usize; 2], out: &mut [f32]) = col2im_impl;
}

#[inline(always)]
fn col2im_impl(shape: &ConvTranspose2d, columns: &[f32], [oh, ow]: [usize; 2], out: &mut [f32]) {
    let (h, w) = (shape.height, shape.width);
    let [kh, kw] = shape.kernel;
    let [sh, sw] = shape.strides;
    let [dh, dw] = shape.dilations;
    let ocg = shape.out_channels / shape.groups;
    for oc in 0..ocg {
        let plane = &mut out[oc * oh * ow..][..oh * ow];
        for ky in 0..kh {
            for kx in 0..kw {
                let row = &columns[((oc * kh + ky) * kw + kx) * h * w..][..h * w];
                for iy in 0..h {
                    let src = &row[iy * w..][..w];
                    let start = (iy * sh + ky * dh) * ow + kx * dw;
                    if sw == 1 {
                        for (o, &v) in plane[start..start + w].iter_mut().zip(src) {
                            *o += v;
                        }
                    } else {
                        for (o, &v) in plane[start..].iter_mut().step_by(sw).zip(src) {
                            *o += v;
                        }
                    }
                }
            }
        }
    }
}

/// The definition, one input element and kernel tap at a time: what the tests hold
/// [`conv_transpose2d`] to.
pub fn conv_transpose2d_reference(shape: &ConvTranspose2d, x: &[f32], w: &[f32]) -> Result<Vec<f32>, ShapeError> {
    let [oh, ow] = shape.check(x, w)?;
    let [kh, kw] = shape.kernel;
    let icg = shape.in_channels / shape.groups;
    let ocg = shape.out_channels / shape.groups;
    let mut out = vec![0f64; shape.batch * shape.out_channels * oh * ow];
    for b in 0..shape.batch {
        for ic in 0..shape.in_channels {
            let g = ic / icg;
            for iy in 0..shape.height {
                for ix in 0..shape.width {
                    let xv = f64::from(x[((b * shape.in_channels + ic) * shape.height + iy) * shape.width + ix]);
                    for o in 0..ocg {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let y = iy * shape.strides[0] + ky * shape.dilations[0];
                                let xo = ix * shape.strides[1] + kx * shape.dilations[1];
                                let wv = f64::from(w[((ic * ocg + o) * kh + ky) * kw + kx]);
                                out[((b * shape.out_channels + g * ocg + o) * oh + y) * ow + xo] += xv * wv;
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(out.into_iter().map(|v| v as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::tests::{Rng, max_error};

    #[test]
    fn matches_the_reference_on_random_shapes() {
        let mut rng = Rng(0x5851_f42d_4c95_7f2d);
        for case in 0..300 {
            let groups = 1 + rng.below(3);
            let shape = ConvTranspose2d {
                batch: 1 + rng.below(2),
                in_channels: groups * (1 + rng.below(4)),
                out_channels: groups * (1 + rng.below(4)),
                groups,
                height: 1 + rng.below(9),
                width: 1 + rng.below(11),
                kernel: [1 + rng.below(4), 1 + rng.below(4)],
                strides: [1 + rng.below(3), 1 + rng.below(3)],
                dilations: [1 + rng.below(2), 1 + rng.below(3)],
            };
            let x = rng.values(shape.batch * shape.in_channels * shape.height * shape.width);
            let w = rng.values(shape.in_channels * shape.out_channels / groups * shape.kernel[0] * shape.kernel[1]);
            let want = conv_transpose2d_reference(&shape, &x, &w).unwrap();
            crate::simd::each_level(|level| {
                let got = conv_transpose2d(&shape, &x, &w, 1 + case % 2).unwrap();
                assert_eq!(got.len(), want.len(), "{shape:?}");
                assert!(
                    max_error(&got, &want) < 1e-4,
                    "{shape:?} level {level}: {}",
                    max_error(&got, &want)
                );
            });
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let shape = ConvTranspose2d {
            batch: 1,
            in_channels: 3,
            out_channels: 2,
            groups: 2,
            height: 2,
            width: 2,
            kernel: [2, 2],
            strides: [1, 1],
            dilations: [1, 1],
        };
        assert_eq!(shape.output_size(), Err(ShapeError::Degenerate));
        let shape = ConvTranspose2d { groups: 1, ..shape };
        assert_eq!(shape.output_size(), Ok([3, 3]));
        let e = conv_transpose2d(&shape, &[0.0; 12], &[0.0; 23], 1).unwrap_err();
        assert_eq!(
            e,
            ShapeError::Length {
                what: "the weights",
                expected: 24,
                got: 23
            }
        );
    }
}

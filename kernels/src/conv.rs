//! Depthwise 2-D convolution on the CPU (FP32, NCHW): every output channel reads one input channel.
//! MobileNet-style exports use it in every block, and candle runs it as one convolution per channel
//! (an im2col and a tiny GEMM each): 1x128x80x80 with a 3x3 kernel took 54 ms in candle against
//! 0.57 ms in ONNX Runtime. Here each plane is copied once into zero-padded phase planes (`direct`'s
//! geometry, one channel), so that every kernel tap is one multiply-add over consecutive grid points,
//! 48 at a time in registers, whatever the stride, dilation or width. (An earlier version clipped a
//! run per output row and tap: on 16x16 planes with 5x5 kernels its 400 short runs per plane cost 4x
//! more than the arithmetic.)

use std::fmt;

use crate::dense::Conv2d;
use crate::direct::Plan;

/// The shape of a depthwise convolution: input `[batch, channels, height, width]`, weights
/// `[channels * multiplier, 1, kernel_h, kernel_w]`, output `[batch, channels * multiplier, out_h, out_w]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Depthwise {
    pub batch: usize,
    pub channels: usize,
    /// Output channels per input channel (ONNX: `C_out / group` with `group == C_in`).
    pub multiplier: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: [usize; 2],
    /// Padding `[top, left, bottom, right]`.
    pub pads: [usize; 4],
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
}

/// Why a convolution's shape does not work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShapeError {
    /// A zero kernel, stride or dilation.
    Degenerate,
    /// The padded input is smaller than the dilated kernel along an axis.
    TooSmall { axis: usize, padded: usize, extent: usize },
    /// A slice's length does not match the shape.
    Length {
        what: &'static str,
        expected: usize,
        got: usize,
    },
}

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShapeError::Degenerate => write!(f, "kernel, strides and dilations must be positive"),
            ShapeError::TooSmall { axis, padded, extent } => write!(
                f,
                "spatial axis {axis} is {padded} with padding, smaller than the dilated kernel ({extent})"
            ),
            ShapeError::Length { what, expected, got } => {
                write!(f, "{what} has {got} elements where the shape needs {expected}")
            }
        }
    }
}

impl std::error::Error for ShapeError {}

impl Depthwise {
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

    pub fn output_channels(&self) -> usize {
        self.channels * self.multiplier
    }

    /// Elements of the output.
    pub fn output_len(&self) -> Result<usize, ShapeError> {
        let [oh, ow] = self.output_size()?;
        Ok(self.batch * self.output_channels() * oh * ow)
    }

    fn check(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Result<[usize; 2], ShapeError> {
        let size = self.output_size()?;
        let lengths = [
            (
                "the input",
                self.batch * self.channels * self.height * self.width,
                x.len(),
            ),
            (
                "the weights",
                self.output_channels() * self.kernel[0] * self.kernel[1],
                w.len(),
            ),
            (
                "the bias",
                self.output_channels(),
                bias.map_or(self.output_channels(), <[f32]>::len),
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

/// The depthwise convolution, split over `threads` threads by output planes.
pub fn depthwise_conv2d(
    shape: &Depthwise,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    threads: usize,
) -> Result<Vec<f32>, ShapeError> {
    let [oh, ow] = shape.check(x, w, bias)?;
    let plane = oh * ow;
    let planes = shape.batch * shape.output_channels();
    let mut out = vec![0f32; planes * plane];
    if plane == 0 {
        return Ok(out);
    }
    let threads = threads.clamp(1, planes.max(1));
    let per = planes.div_ceil(threads);
    // Every plane has the same geometry: one channel of a dense convolution.
    let one = Conv2d {
        batch: 1,
        in_channels: 1,
        out_channels: 1,
        groups: 1,
        height: shape.height,
        width: shape.width,
        kernel: shape.kernel,
        pads: shape.pads,
        strides: shape.strides,
        dilations: shape.dilations,
    };
    let plan = Plan::new(&one, 1, [oh, ow]);
    let run = |first: usize, chunk: &mut [f32]| {
        for (k, out_plane) in chunk.chunks_exact_mut(plane).enumerate() {
            let p = first + k;
            let (b, oc) = (p / shape.output_channels(), p % shape.output_channels());
            let ic = oc / shape.multiplier;
            let input = &x[(b * shape.channels + ic) * shape.height * shape.width..][..shape.height * shape.width];
            let taps = &w[oc * shape.kernel[0] * shape.kernel[1]..][..shape.kernel[0] * shape.kernel[1]];
            plane_conv(
                &one,
                &plan,
                input,
                taps,
                bias.map_or(0.0, |b| b[oc]),
                [oh, ow],
                out_plane,
            );
        }
    };
    if threads == 1 {
        run(0, &mut out);
    } else {
        let cap = crate::simd::cap();
        std::thread::scope(|s| {
            for (t, chunk) in out.chunks_mut(per * plane).enumerate() {
                s.spawn(move || {
                    crate::simd::set_cap(cap);
                    run(t * per, chunk)
                });
            }
        });
    }
    Ok(out)
}

/// The output columns `ox` whose input column `ox * stride + offset` lies inside `0..width`.
pub(crate) fn valid_columns(offset: isize, stride: usize, width: usize, out_width: usize) -> (usize, usize) {
    let s = stride as isize;
    // First ox with ox*s + offset >= 0.
    let lo = if offset >= 0 { 0 } else { ((-offset) + s - 1) / s };
    // Last ox with ox*s + offset <= width - 1, plus one.
    let last = width as isize - 1 - offset;
    let hi = if last < 0 { 0 } else { last / s + 1 };
    let lo = (lo.max(0) as usize).min(out_width);
    let hi = (hi.max(0) as usize).min(out_width);
    (lo, hi.max(lo))
}

thread_local! {
    static GRID_BUFFERS: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// One output plane from one input plane, through the phase-plane geometry of `direct` (one
/// channel): the input copied once, zero-padded, then every tap one multiply-add over 48 grid points
/// held in registers, and the grid's valid columns copied out.
fn plane_conv(
    one: &Conv2d,
    plan: &Plan,
    input: &[f32],
    taps: &[f32],
    bias: f32,
    [oh, ow]: [usize; 2],
    out: &mut [f32],
) {
    GRID_BUFFERS.with(|b| {
        let (phases, grid) = &mut *b.borrow_mut();
        phases.resize(plan.channel + crate::direct::PXB, 0.0);
        grid.resize(plan.grid, 0.0);
        crate::direct::fill_phases(one, plan, input, 1, phases);
        grid_taps(&plan.offsets, phases, taps, bias, grid);
        for oy in 0..oh {
            out[oy * ow..][..ow].copy_from_slice(&grid[oy * plan.wq..][..ow]);
        }
    });
}

multiversion! {
    /// Every grid point: `bias + sum over taps t of taps[t] * phases[offsets[t] + point]`.
    fn grid_taps(offsets: &[usize], phases: &[f32], taps: &[f32], bias: f32, grid: &mut [f32]) = grid_taps_impl;
}

#[inline(always)]
fn grid_taps_impl(offsets: &[usize], phases: &[f32], taps: &[f32], bias: f32, grid: &mut [f32]) {
    const N: usize = crate::direct::PXB;
    for (k, chunk) in grid.chunks_exact_mut(N).enumerate() {
        let base = k * N;
        let mut acc = [bias; N];
        for (&offset, &w) in offsets.iter().zip(taps) {
            let src: &[f32; N] = phases[offset + base..][..N].try_into().expect("N elements");
            for i in 0..N {
                acc[i] += w * src[i];
            }
        }
        chunk.copy_from_slice(&acc);
    }
}

/// The definition, one output element at a time: what the tests hold [`depthwise_conv2d`] to.
pub fn depthwise_conv2d_reference(
    shape: &Depthwise,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
) -> Result<Vec<f32>, ShapeError> {
    let [oh, ow] = shape.check(x, w, bias)?;
    let oc_n = shape.output_channels();
    let mut out = Vec::with_capacity(shape.batch * oc_n * oh * ow);
    for b in 0..shape.batch {
        for oc in 0..oc_n {
            let ic = oc / shape.multiplier;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias.map_or(0.0, |b| b[oc]) as f64;
                    for ky in 0..shape.kernel[0] {
                        for kx in 0..shape.kernel[1] {
                            let iy =
                                (oy * shape.strides[0] + ky * shape.dilations[0]) as isize - shape.pads[0] as isize;
                            let ix =
                                (ox * shape.strides[1] + kx * shape.dilations[1]) as isize - shape.pads[1] as isize;
                            if iy < 0 || ix < 0 || iy >= shape.height as isize || ix >= shape.width as isize {
                                continue;
                            }
                            let xv =
                                x[((b * shape.channels + ic) * shape.height + iy as usize) * shape.width + ix as usize];
                            let wv = w[(oc * shape.kernel[0] + ky) * shape.kernel[1] + kx];
                            acc += xv as f64 * wv as f64;
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

    /// A small deterministic generator (xorshift), so the tests need no crate.
    pub(crate) struct Rng(pub u64);
    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        pub(crate) fn values(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| (self.next() % 2001) as f32 / 1000.0 - 1.0).collect()
        }
    }

    pub(crate) fn max_error(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// A random depthwise case of at most `height` x `width` (odd sizes, every pad/stride/dilation,
    /// multipliers) that has an output: the shape, input, weights and bias values, and whether the
    /// bias is used.
    pub(crate) fn random_depthwise(
        rng: &mut Rng,
        height: usize,
        width: usize,
    ) -> (Depthwise, Vec<f32>, Vec<f32>, Vec<f32>, bool) {
        loop {
            let shape = Depthwise {
                batch: 1 + rng.below(3),
                channels: 1 + rng.below(7),
                multiplier: 1 + rng.below(3),
                height: 1 + rng.below(height),
                width: 1 + rng.below(width),
                kernel: [1 + rng.below(5), 1 + rng.below(5)],
                pads: [rng.below(3), rng.below(3), rng.below(3), rng.below(3)],
                strides: [1 + rng.below(3), 1 + rng.below(3)],
                dilations: [1 + rng.below(3), 1 + rng.below(3)],
            };
            if shape.output_size().is_err() {
                continue;
            }
            let x = rng.values(shape.batch * shape.channels * shape.height * shape.width);
            let w = rng.values(shape.output_channels() * shape.kernel[0] * shape.kernel[1]);
            let bias = rng.values(shape.output_channels());
            let with_bias = rng.below(2) == 0;
            return (shape, x, w, bias, with_bias);
        }
    }

    #[test]
    fn matches_the_reference_on_random_shapes() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..400 {
            let (shape, x, w, bias, with_bias) = random_depthwise(&mut rng, 13, 70);
            let bias = with_bias.then_some(&bias[..]);
            let want = depthwise_conv2d_reference(&shape, &x, &w, bias).unwrap();
            crate::simd::each_level(|level| {
                for threads in [1, 3] {
                    let got = depthwise_conv2d(&shape, &x, &w, bias, threads).unwrap();
                    assert_eq!(got.len(), want.len(), "{shape:?}");
                    let err = max_error(&got, &want);
                    assert!(err < 1e-4, "{shape:?} threads {threads} level {level}: {err}");
                }
            });
        }
    }

    #[test]
    fn the_reference_is_a_convolution() {
        // 1 channel, 3x3 input, 2x2 kernel of ones, no padding: sums of 2x2 windows.
        let shape = Depthwise {
            batch: 1,
            channels: 1,
            multiplier: 1,
            height: 3,
            width: 3,
            kernel: [2, 2],
            pads: [0; 4],
            strides: [1, 1],
            dilations: [1, 1],
        };
        let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let y = depthwise_conv2d_reference(&shape, &x, &[1.0; 4], Some(&[0.5])).unwrap();
        assert_eq!(y, vec![12.5, 16.5, 24.5, 28.5]);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let shape = Depthwise {
            batch: 1,
            channels: 2,
            multiplier: 1,
            height: 2,
            width: 2,
            kernel: [3, 3],
            pads: [0; 4],
            strides: [1, 1],
            dilations: [1, 1],
        };
        let e = depthwise_conv2d(&shape, &[0.0; 8], &[0.0; 18], None, 1).unwrap_err();
        assert!(
            matches!(
                e,
                ShapeError::TooSmall {
                    axis: 0,
                    padded: 2,
                    extent: 3
                }
            ),
            "{e}"
        );
        let padded = Depthwise { pads: [1; 4], ..shape };
        let e = depthwise_conv2d(&padded, &[0.0; 7], &[0.0; 18], None, 1).unwrap_err();
        assert_eq!(
            e,
            ShapeError::Length {
                what: "the input",
                expected: 8,
                got: 7
            }
        );
        let zero = Depthwise {
            strides: [0, 1],
            ..padded
        };
        assert_eq!(zero.output_size(), Err(ShapeError::Degenerate));
    }
}

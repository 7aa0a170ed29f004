//! Direct 2-D convolution with AVX-512 for kernels larger than 1x1: no column matrix. The im2col path
//! of `dense` writes `in*kh*kw` rows of the whole output size and the GEMM then packs them again, so
//! on the shapes detectors use (3x3 over 16-128 channels) most of its time is memory traffic.
//!
//! Here the input of one image and group is copied once, zero-padded, into `strides_h * strides_w`
//! phase planes (phase `(a, b)` holds padded pixels `(i*sh + a, j*sw + b)`). On a phase plane of
//! width `wq`, output `(oy, ox)` reads tap `(ky, kx)` at flat index `p + (ky*dh / sh) * wq + kx*dw /
//! sw`, with `p = oy * wq + ox`: consecutive outputs read consecutive inputs, whatever the stride or
//! dilation. So the output is computed on a grid of `oh` rows of `wq` columns (the columns past `ow`
//! are thrown away), 48 grid points (three vectors) by 8 output channels at a time: per tap, three
//! vector loads, eight broadcast weights and 24 fused multiply-adds into 24 registers. The grid is
//! then compacted into the NCHW output.

use crate::dense::Conv2d;

/// Output channels per register block.
const OCB: usize = 8;
/// Grid points per register block (three 16-lane vectors).
pub(crate) const PXB: usize = 48;

/// Whether the direct path applies (and this CPU has AVX-512): kernels larger than 1x1, strides up
/// to 4 (the phase planes multiply with them), and an output of at least MIN_GRID grid points. On
/// small outputs with many input channels each block's reads span all of them for few outputs, and
/// the GEMM's blocking does better (measured on YOLOv8's 10x10 and 20x20 layers).
pub fn applies(shape: &Conv2d) -> bool {
    shape.kernel[0] * shape.kernel[1] > 1
        && shape.strides.iter().all(|&s| (1..=4).contains(&s))
        && grid_points(shape) >= MIN_GRID
        && crate::simd::allowed(crate::simd::AVX512)
        && avx512()
}

/// Output grid points below which the GEMM path is kept.
const MIN_GRID: usize = 256;

fn grid_points(shape: &Conv2d) -> usize {
    let Ok([oh, _]) = shape.output_size() else {
        return 0;
    };
    let wp = shape.width + shape.pads[1] + shape.pads[3];
    oh * wp.div_ceil(shape.strides[1])
}

fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The geometry of one image and group on the phase planes.
pub(crate) struct Plan {
    /// Phase plane height and width.
    hq: usize,
    pub(crate) wq: usize,
    /// Floats per phase plane, and per input channel (all its phases), slack included.
    plane: usize,
    pub(crate) channel: usize,
    /// Grid points computed (a multiple of PXB covering `oh * wq`).
    pub(crate) grid: usize,
    /// For each tap `(c, ky, kx)`: where its reads start, relative to grid point 0.
    pub(crate) offsets: Vec<usize>,
}

impl Plan {
    pub(crate) fn new(shape: &Conv2d, icg: usize, [oh, _ow]: [usize; 2]) -> Plan {
        let [sh, sw] = shape.strides;
        let [dh, dw] = shape.dilations;
        let [kh, kw] = shape.kernel;
        let hp = shape.height + shape.pads[0] + shape.pads[2];
        let wp = shape.width + shape.pads[1] + shape.pads[3];
        let (hq, wq) = (hp.div_ceil(sh), wp.div_ceil(sw));
        let grid = (oh * wq).next_multiple_of(PXB);
        let max_shift = ((kh - 1) * dh / sh) * wq + (kw - 1) * dw / sw;
        // Reads reach grid + max_shift: slack past the plane keeps them inside (they land on zeros or
        // on the next plane, and only feed grid columns that are thrown away).
        let plane = (hq * wq).max(grid + max_shift);
        let channel = plane * sh * sw;
        let mut offsets = Vec::with_capacity(icg * kh * kw);
        for c in 0..icg {
            for ky in 0..kh {
                for kx in 0..kw {
                    let (ry, rx) = (ky * dh, kx * dw);
                    let phase = (ry % sh) * sw + rx % sw;
                    offsets.push(c * channel + phase * plane + (ry / sh) * wq + rx / sw);
                }
            }
        }
        Plan {
            hq,
            wq,
            plane,
            channel,
            grid,
            offsets,
        }
    }
}

/// The convolution through phase planes; `threads` > 1 splits the output channel blocks.
pub fn conv2d(shape: &Conv2d, x: &[f32], w: &[f32], bias: Option<&[f32]>, threads: usize) -> Vec<f32> {
    let Ok([oh, ow]) = shape.output_size() else {
        return Vec::new();
    };
    let icg = shape.in_channels / shape.groups;
    let ocg = shape.out_channels / shape.groups;
    let taps = icg * shape.kernel[0] * shape.kernel[1];
    let plan = Plan::new(shape, icg, [oh, ow]);
    let blocks = ocg.div_ceil(OCB);
    // Weights packed per group and block: [group][block][tap][OCB], zero for channels past ocg.
    let mut packed = vec![0f32; shape.groups * blocks * taps * OCB];
    let mut bias_blocks = vec![0f32; shape.groups * blocks * OCB];
    for g in 0..shape.groups {
        let group = &mut packed[g * blocks * taps * OCB..][..blocks * taps * OCB];
        for o in 0..ocg {
            let row = &w[(g * ocg + o) * taps..][..taps];
            for (t, &v) in row.iter().enumerate() {
                group[((o / OCB) * taps + t) * OCB + o % OCB] = v;
            }
        }
        if let Some(b) = bias {
            bias_blocks[g * blocks * OCB..][..ocg].copy_from_slice(&b[g * ocg..][..ocg]);
        }
    }
    // The output is appended in NCHW order (image, group, channel, row): no zeroing pass.
    let mut out = Vec::with_capacity(shape.batch * shape.out_channels * oh * ow);
    BUFFERS.with(|buffers| {
        let (phases, grid) = &mut *buffers.borrow_mut();
        // Both are overwritten whole before they are read (fill_phases, then every block).
        phases.resize(icg * plan.channel + PXB, 0.0);
        grid.resize(blocks * OCB * plan.grid, 0.0);
        for b in 0..shape.batch {
            for g in 0..shape.groups {
                let plane = shape.height * shape.width;
                let input = &x[(b * shape.in_channels + g * icg) * plane..][..icg * plane];
                fill_phases(shape, &plan, input, icg, phases);
                let packed = &packed[g * blocks * taps * OCB..][..blocks * taps * OCB];
                let bias_block = &bias_blocks[g * blocks * OCB..][..blocks * OCB];
                let phases = &*phases;
                let work = |first: usize, grid: &mut [f32]| {
                    let n = grid.len() / (OCB * plan.grid);
                    compute_blocks(
                        &plan,
                        phases,
                        &packed[first * taps * OCB..][..n * taps * OCB],
                        &bias_block[first * OCB..][..n * OCB],
                        grid,
                    );
                };
                let per = blocks.div_ceil(threads.clamp(1, blocks.max(1)));
                if threads > 1 && blocks > 1 {
                    std::thread::scope(|s| {
                        for (i, part) in grid.chunks_mut(per * OCB * plan.grid).enumerate() {
                            let work = &work;
                            s.spawn(move || work(i * per, part));
                        }
                    });
                } else {
                    work(0, grid);
                }
                for o in 0..ocg {
                    let src = &grid[o * plan.grid..];
                    for oy in 0..oh {
                        out.extend_from_slice(&src[oy * plan.wq..][..ow]);
                    }
                }
            }
        }
        if phases.capacity() + grid.capacity() > MAX_KEPT {
            *phases = Vec::new();
            *grid = Vec::new();
        }
    });
    out
}

/// Floats of buffers a thread keeps between calls (64 MiB).
const MAX_KEPT: usize = 16 << 20;

thread_local! {
    /// The phase planes and the output grid, kept per thread: fresh ones would be zeroed and faulted
    /// in on every call.
    static BUFFERS: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Copies one image and group into its zero-padded phase planes.
pub(crate) fn fill_phases(shape: &Conv2d, plan: &Plan, input: &[f32], icg: usize, phases: &mut [f32]) {
    // Every element is written once: each padded input row is laid out whole (zeros where it is
    // padding) and dealt to its sw phase rows, then the slack after each phase's rows is zeroed.
    let [sh, sw] = shape.strides;
    let (h, w) = (shape.height, shape.width);
    let (top, left) = (shape.pads[0], shape.pads[1]);
    let wq = plan.wq;
    // The padded row dealt to the phases (unit column strides copy straight into the phase row).
    let mut padded = if sw > 1 { vec![0f32; wq * sw] } else { Vec::new() };
    let copy = w.min(wq * sw - left.min(wq * sw));
    for c in 0..icg {
        let src = &input[c * h * w..][..h * w];
        let dst = &mut phases[c * plan.channel..][..plan.channel];
        for phase in dst.chunks_exact_mut(plan.plane) {
            phase[plan.hq * wq..].fill(0.0);
        }
        for a in 0..sh {
            for i in 0..plan.hq {
                let py = i * sh + a;
                let row_start = (a * sw) * plan.plane + i * wq;
                if py < top || py - top >= h {
                    for b in 0..sw {
                        dst[row_start + b * plan.plane..][..wq].fill(0.0);
                    }
                    continue;
                }
                let row = &src[(py - top) * w..][..w];
                if sw == 1 {
                    let out = &mut dst[row_start..][..wq];
                    out[..left.min(wq)].fill(0.0);
                    out[left.min(wq)..][..copy].copy_from_slice(&row[..copy]);
                    out[(left + copy).min(wq)..].fill(0.0);
                    continue;
                }
                padded[..left.min(wq * sw)].fill(0.0);
                padded[left.min(wq * sw)..][..copy].copy_from_slice(&row[..copy]);
                padded[(left + copy).min(wq * sw)..].fill(0.0);
                if sw == 2 {
                    let (p0, rest) = dst[row_start..].split_at_mut(plan.plane);
                    let (p0, p1) = (&mut p0[..wq], &mut rest[..wq]);
                    for ((pair, e), o) in padded.chunks_exact(2).zip(p0.iter_mut()).zip(p1.iter_mut()) {
                        *e = pair[0];
                        *o = pair[1];
                    }
                } else {
                    for b in 0..sw {
                        let out = &mut dst[row_start + b * plan.plane..][..wq];
                        for (o, &v) in out.iter_mut().zip(padded[b..].iter().step_by(sw)) {
                            *o = v;
                        }
                    }
                }
            }
        }
    }
    let used = icg * plan.channel;
    phases[used..].fill(0.0);
}

/// Blocks of OCB output channels over the whole grid: `weights` holds the blocks' packed weights
/// (`[block][tap][OCB]`), `bias` theirs, `rows` their grid rows (`[block * OCB + j][grid]`).
fn compute_blocks(plan: &Plan, phases: &[f32], weights: &[f32], bias: &[f32], rows: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `applies` checked that the CPU has AVX-512F; `blocks` asserts every bound it
        // relies on before touching memory.
        unsafe { avx512::blocks(plan, phases, weights, bias, rows) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (plan, phases, weights, bias, rows);
        unreachable!("the direct path is only taken with AVX-512");
    }
}

/// Taps per pass over the blocks of one tile: their input (four cache lines a tap) stays in L1 while
/// every block of output channels uses it, instead of coming from L2 once per block.
const TAP_CHUNK: usize = 128;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{OCB, PXB, Plan, TAP_CHUNK};

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn blocks(plan: &Plan, phases: &[f32], weights: &[f32], bias: &[f32], rows: &mut [f32]) {
        let taps = plan.offsets.len();
        let blocks = rows.len() / (OCB * plan.grid);
        assert!(plan.grid.is_multiple_of(PXB));
        assert!(phases.len() >= plan.offsets.iter().max().copied().unwrap_or(0) + plan.grid);
        assert!(rows.len() == blocks * OCB * plan.grid);
        assert!(weights.len() >= blocks * taps * OCB && bias.len() >= blocks * OCB);
        let input = phases.as_ptr();
        let out = rows.as_mut_ptr();
        let mut p = 0;
        while p < plan.grid {
            let mut t0 = 0;
            while t0 < taps {
                let t1 = (t0 + TAP_CHUNK).min(taps);
                for block in 0..blocks {
                    let w = unsafe { weights.as_ptr().add(block * taps * OCB) };
                    let dst = unsafe { out.add(block * OCB * plan.grid + p) };
                    let mut acc = [[_mm512_setzero_ps(); 3]; OCB];
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = if t0 == 0 {
                            let b = _mm512_set1_ps(bias[block * OCB + j]);
                            [b, b, b]
                        } else {
                            // SAFETY (every pointer access below): inside the bounds asserted above.
                            let row = unsafe { dst.add(j * plan.grid) };
                            unsafe {
                                [
                                    _mm512_loadu_ps(row),
                                    _mm512_loadu_ps(row.add(16)),
                                    _mm512_loadu_ps(row.add(32)),
                                ]
                            }
                        };
                    }
                    for t in t0..t1 {
                        let src = unsafe { input.add(*plan.offsets.get_unchecked(t) + p) };
                        let x0 = unsafe { _mm512_loadu_ps(src) };
                        let x1 = unsafe { _mm512_loadu_ps(src.add(16)) };
                        let x2 = unsafe { _mm512_loadu_ps(src.add(32)) };
                        let wt = unsafe { w.add(t * OCB) };
                        for (j, a) in acc.iter_mut().enumerate() {
                            let wj = _mm512_set1_ps(unsafe { *wt.add(j) });
                            a[0] = _mm512_fmadd_ps(x0, wj, a[0]);
                            a[1] = _mm512_fmadd_ps(x1, wj, a[1]);
                            a[2] = _mm512_fmadd_ps(x2, wj, a[2]);
                        }
                    }
                    for (j, a) in acc.iter().enumerate() {
                        let row = unsafe { dst.add(j * plan.grid) };
                        unsafe {
                            _mm512_storeu_ps(row, a[0]);
                            _mm512_storeu_ps(row.add(16), a[1]);
                            _mm512_storeu_ps(row.add(32), a[2]);
                        }
                    }
                }
                t0 = t1;
            }
            p += PXB;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::tests::{Rng, max_error};
    use crate::dense::conv2d_reference;

    #[test]
    fn matches_the_reference_on_random_shapes() {
        if !avx512() {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut tried = 0;
        while tried < 300 {
            let shape = crate::dense::tests::random_conv2d(&mut rng, 2, [5, 19], [40, 45]);
            if shape.output_size().is_err() || !applies(&shape) {
                continue;
            }
            tried += 1;
            let (x, w, bias, with_bias) = crate::dense::tests::random_data(&mut rng, &shape);
            let bias = with_bias.then_some(&bias[..]);
            let want = conv2d_reference(&shape, &x, &w, bias).unwrap();
            for threads in [1, 3] {
                let got = conv2d(&shape, &x, &w, bias, threads);
                assert_eq!(got.len(), want.len(), "{shape:?}");
                let err = max_error(&got, &want);
                assert!(err < 1e-4, "{shape:?} threads {threads}: {err}");
            }
        }
    }

    #[test]
    fn detector_shapes_match_the_reference() {
        if !avx512() {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        let mut rng = Rng(77);
        for (c_in, c_out, hw, stride) in [(16, 32, 40, 2), (64, 64, 20, 1), (3, 16, 64, 2), (32, 32, 17, 1)] {
            let shape = Conv2d {
                batch: 1,
                in_channels: c_in,
                out_channels: c_out,
                groups: 1,
                height: hw,
                width: hw,
                kernel: [3, 3],
                pads: [1; 4],
                strides: [stride; 2],
                dilations: [1, 1],
            };
            let x = rng.values(c_in * hw * hw);
            let w = rng.values(c_out * c_in * 9);
            let bias = rng.values(c_out);
            let want = conv2d_reference(&shape, &x, &w, Some(&bias)).unwrap();
            let err = max_error(&conv2d(&shape, &x, &w, Some(&bias), 1), &want);
            assert!(err < 1e-4, "{shape:?}: {err}");
        }
    }
}

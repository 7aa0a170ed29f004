//! 2-D max pooling on the CPU (FP32, NCHW) with padding that never wins (as -inf): YOLO's SPPF block
//! pools 5x5 three times in a row, and candle's pool (after a padded copy) took 0.3 ms for one
//! 128x10x10 pass. Separable: a row pass takes the maximum over the kernel's width, a column pass
//! over its height.

/// The shape of a max pool over `planes` planes of `height x width`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool2d {
    pub planes: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    /// Padding `[top, left, bottom, right]` (any extra end padding ceil_mode needs included).
    pub pads: [usize; 4],
}

impl MaxPool2d {
    /// Output height and width, or `None` when the padded input is smaller than the window or a
    /// kernel or stride is zero.
    pub fn output_size(&self) -> Option<[usize; 2]> {
        let mut out = [0; 2];
        for (axis, size) in [self.height, self.width].into_iter().enumerate() {
            let span = size + self.pads[axis] + self.pads[axis + 2];
            if self.kernel[axis] == 0 || self.strides[axis] == 0 || span < self.kernel[axis] {
                return None;
            }
            out[axis] = (span - self.kernel[axis]) / self.strides[axis] + 1;
        }
        Some(out)
    }
}

/// The pool, or `None` when the shape does not work or `x` does not hold it.
pub fn max_pool2d(shape: &MaxPool2d, x: &[f32]) -> Option<Vec<f32>> {
    let [oh, ow] = shape.output_size()?;
    let (h, w) = (shape.height, shape.width);
    if x.len() != shape.planes * h * w {
        return None;
    }
    let [kh, kw] = shape.kernel;
    let [sh, sw] = shape.strides;
    let (top, left) = (shape.pads[0], shape.pads[1]);
    let mut out = Vec::with_capacity(shape.planes * oh * ow);
    // Row pass result: for every input row, the maximum over each output column's window.
    let mut rows = vec![f32::NEG_INFINITY; h * ow];
    for plane in x.chunks_exact(h * w) {
        for (y, row) in plane.chunks_exact(w).enumerate() {
            let dst = &mut rows[y * ow..][..ow];
            for (ox, d) in dst.iter_mut().enumerate() {
                let start = (ox * sw) as isize - left as isize;
                let lo = start.max(0) as usize;
                let hi = ((start + kw as isize).max(0) as usize).min(w);
                *d = row.get(lo..hi).map_or(f32::NEG_INFINITY, |r| {
                    r.iter().copied().fold(f32::NEG_INFINITY, f32::max)
                });
            }
        }
        for oy in 0..oh {
            let start = (oy * sh) as isize - top as isize;
            let lo = start.max(0) as usize;
            let hi = ((start + kh as isize).max(0) as usize).min(h);
            let at = out.len();
            out.resize(at + ow, f32::NEG_INFINITY);
            let dst = &mut out[at..];
            for y in lo..hi.max(lo) {
                for (d, &v) in dst.iter_mut().zip(&rows[y * ow..][..ow]) {
                    *d = d.max(v);
                }
            }
        }
    }
    Some(out)
}

/// The definition, one output at a time.
pub fn max_pool2d_reference(shape: &MaxPool2d, x: &[f32]) -> Option<Vec<f32>> {
    let [oh, ow] = shape.output_size()?;
    let (h, w) = (shape.height, shape.width);
    let mut out = Vec::new();
    for p in 0..shape.planes {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut m = f32::NEG_INFINITY;
                for ky in 0..shape.kernel[0] {
                    for kx in 0..shape.kernel[1] {
                        let iy = (oy * shape.strides[0] + ky) as isize - shape.pads[0] as isize;
                        let ix = (ox * shape.strides[1] + kx) as isize - shape.pads[1] as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                            m = m.max(x[(p * h + iy as usize) * w + ix as usize]);
                        }
                    }
                }
                out.push(m);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::tests::Rng;

    #[test]
    fn matches_the_reference_on_random_shapes() {
        let mut rng = Rng(31);
        let mut tried = 0;
        while tried < 300 {
            let shape = MaxPool2d {
                planes: 1 + rng.below(4),
                height: 1 + rng.below(12),
                width: 1 + rng.below(12),
                kernel: [1 + rng.below(5), 1 + rng.below(5)],
                strides: [1 + rng.below(3), 1 + rng.below(3)],
                pads: [rng.below(3), rng.below(3), rng.below(4), rng.below(4)],
            };
            if shape.output_size().is_none() {
                continue;
            }
            tried += 1;
            let x = rng.values(shape.planes * shape.height * shape.width);
            assert_eq!(max_pool2d(&shape, &x), max_pool2d_reference(&shape, &x), "{shape:?}");
        }
    }

    #[test]
    fn bad_shapes_are_none() {
        let s = MaxPool2d {
            planes: 1,
            height: 2,
            width: 2,
            kernel: [3, 3],
            strides: [1, 1],
            pads: [0; 4],
        };
        assert_eq!(max_pool2d(&s, &[0.0; 4]), None);
        let s = MaxPool2d { kernel: [2, 2], ..s };
        assert_eq!(max_pool2d(&s, &[0.0; 3]), None);
        let s = MaxPool2d { strides: [0, 1], ..s };
        assert_eq!(max_pool2d(&s, &[0.0; 4]), None);
    }
}

//! Nearest-neighbour resizing of the last two axes (FP32): output `(oy, ox)` of every plane is input
//! `(rows[oy], cols[ox])`. An output row whose source row is the previous one's is a copy of that
//! output row, so a 2x upsample reads each input row once. candle's path is one index_select per
//! axis, each a full pass (PP-OCR's detector spent 11% of its time there).

use crate::conv::ShapeError;

/// `planes` planes of `height x width`, gathered to `rows.len() x cols.len()`.
pub fn nearest2d(
    x: &[f32],
    planes: usize,
    [height, width]: [usize; 2],
    rows: &[usize],
    cols: &[usize],
) -> Result<Vec<f32>, ShapeError> {
    let expected = planes * height * width;
    if x.len() != expected {
        return Err(ShapeError::Length {
            what: "the input",
            expected,
            got: x.len(),
        });
    }
    if rows.iter().any(|&r| r >= height) || cols.iter().any(|&c| c >= width) {
        return Err(ShapeError::Degenerate);
    }
    let (oh, ow) = (rows.len(), cols.len());
    let mut out = vec![0f32; planes * oh * ow];
    if oh == 0 || ow == 0 {
        return Ok(out);
    }
    for (p, dst) in out.chunks_exact_mut(oh * ow).enumerate() {
        let plane = &x[p * height * width..][..height * width];
        for oy in 0..oh {
            if oy > 0 && rows[oy] == rows[oy - 1] {
                let (done, rest) = dst.split_at_mut(oy * ow);
                rest[..ow].copy_from_slice(&done[(oy - 1) * ow..]);
                continue;
            }
            let src = &plane[rows[oy] * width..][..width];
            for (o, &c) in dst[oy * ow..][..ow].iter_mut().zip(cols) {
                *o = src[c];
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::tests::Rng;

    #[test]
    fn matches_the_definition() {
        let mut rng = Rng(99);
        for _ in 0..200 {
            let (planes, h, w) = (1 + rng.below(3), 1 + rng.below(7), 1 + rng.below(9));
            let rows: Vec<usize> = (0..rng.below(15)).map(|_| rng.below(h)).collect();
            let mut cols: Vec<usize> = (0..1 + rng.below(15)).map(|_| rng.below(w)).collect();
            cols.sort_unstable();
            let x = rng.values(planes * h * w);
            let got = nearest2d(&x, planes, [h, w], &rows, &cols).unwrap();
            let mut want = Vec::new();
            for p in 0..planes {
                for &r in &rows {
                    for &c in &cols {
                        want.push(x[(p * h + r) * w + c]);
                    }
                }
            }
            assert_eq!(got, want);
        }
        assert_eq!(nearest2d(&[0.0; 4], 1, [2, 2], &[2], &[0]), Err(ShapeError::Degenerate));
    }
}

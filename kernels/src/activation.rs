//! Exponential-based activations over FP32 slices (Sigmoid, Tanh, Exp): a polynomial exponential the
//! compiler vectorises, instead of one libm `expf` call per element. YOLO-style detectors apply SiLU
//! (x * sigmoid(x)) to every activation map and it was 17% of nudenet's time in candle.
//!
//! `exp` is Cephes' single-precision scheme: `x = n ln2 + r`, |r| <= ln2/2, `e^r` by a degree-6
//! polynomial, `2^n` built in the exponent bits; relative error below 2e-7 across the finite range.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 * 2^23: adding and subtracting it rounds to the nearest integer without a libm call.
const ROUND: f32 = 12_582_912.0;

/// e^x, branch-free (inputs clamped to the range whose result is a normal float, NaN kept).
#[inline(always)]
fn exp1(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    // n as an integer, read from t's low mantissa bits (a saturating `as i32` would not vectorise);
    // for NaN it is garbage, but the polynomial below is NaN and so is the product.
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits((ni.wrapping_add(127) as u32) << 23)
}

multiversion! {
    /// `out[i] = e^x[i]`.
    pub fn exp(x: &[f32], out: &mut [f32]) = exp_impl;
}

multiversion! {
    /// `out[i] = 1 / (1 + e^-x[i])`.
    pub fn sigmoid(x: &[f32], out: &mut [f32]) = sigmoid_impl;
}

multiversion! {
    /// `out[i] = tanh(x[i])`, as `sign(x) (1 - e^-2|x|) / (1 + e^-2|x|)`, with `x` itself below 2^-12
    /// where that form loses relative precision (tanh x = x there to within a float's precision).
    pub fn tanh(x: &[f32], out: &mut [f32]) = tanh_impl;
}

/// erf(x), branch-free: for |x| < 0.5 its Taylor series to x^13 (relative error below 1e-7),
/// beyond it `1 - erfc(|x|)` with Numerical Recipes' Chebyshev fit of erfc (fractional error below
/// 1.2e-7), signed; NaN stays NaN.
#[inline(always)]
fn erf1(x: f32) -> f32 {
    let a = x.abs();
    let z = a * a;
    let series = z * (1.0 / 9360.0) - 1.0 / 1320.0;
    let series = series * z + 1.0 / 216.0;
    let series = series * z - 1.0 / 42.0;
    let series = series * z + 0.1;
    let series = series * z - 1.0 / 3.0;
    let series = (series * z + 1.0) * a * std::f32::consts::FRAC_2_SQRT_PI;
    let t = 1.0 / (1.0 + 0.5 * a);
    let p = t * 0.170_872_77 - 0.822_152_23;
    let p = p * t + 1.488_515_9;
    let p = p * t - 1.135_204;
    let p = p * t + 0.278_868_07;
    let p = p * t - 0.186_288_06;
    let p = p * t + 0.096_784_18;
    let p = p * t + 0.374_091_96;
    let p = p * t + 1.000_023_7;
    let p = p * t - 1.265_512_2;
    let erfc = t * exp1(p - z);
    let y = if a < 0.5 { series } else { 1.0 - erfc };
    y.copysign(x)
}

multiversion! {
    /// `out[i] = erf(x[i])` (GELU's error function in exported transformers).
    pub fn erf(x: &[f32], out: &mut [f32]) = erf_impl;
}

#[inline(always)]
pub(crate) fn erf_impl(x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = erf1(v);
    }
}

/// erf in f64 by its Taylor series, for |x| < 4 (beyond, ±1 to within 2e-8): the definition the
/// kernel is held to.
pub fn erf_reference(x: f32) -> f32 {
    let x = f64::from(x);
    if x.is_nan() {
        return f32::NAN;
    }
    if x.abs() >= 4.0 {
        return x.signum() as f32;
    }
    let (mut term, mut sum) = (x, x);
    for n in 1..200 {
        term *= -x * x / n as f64;
        let add = term / (2 * n + 1) as f64;
        sum += add;
        if add.abs() < 1e-18 {
            break;
        }
    }
    (sum * std::f64::consts::FRAC_2_SQRT_PI) as f32
}

multiversion! {
    /// Softmax over each row of `width` elements: `out = e^(x - max) / sum`. A row holding NaN is
    /// NaN; a row of -inf is NaN (as e^(-inf - -inf) is). Transformer attention spends half its
    /// time here when each `e^x` is a libm call.
    pub fn softmax_rows(x: &[f32], out: &mut [f32], width: usize) = softmax_rows_impl;
}

/// Lanes of the running max and sum: a multiple of every vector width, so that both vectorise
/// (floating-point reductions are not reordered by the compiler on its own).
const LANES: usize = 16;

/// e^d, or 0 where e^d is below the smallest normal float (where `exp1` clamps): a masked score's
/// weight is exactly 0, as in libm.
#[inline(always)]
fn exp_or_zero(d: f32) -> f32 {
    let e = exp1(d);
    if d < -87.0 { 0.0 } else { e }
}

#[inline(always)]
pub(crate) fn softmax_rows_impl(x: &[f32], out: &mut [f32], width: usize) {
    if width == 0 {
        return;
    }
    for (row, o) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let mut m = [f32::NEG_INFINITY; LANES];
        let mut nan = false;
        let mut chunks = row.chunks_exact(LANES);
        for c in &mut chunks {
            for k in 0..LANES {
                m[k] = if c[k] > m[k] { c[k] } else { m[k] };
                nan |= c[k].is_nan();
            }
        }
        let mut max = f32::NEG_INFINITY;
        for &v in chunks.remainder().iter().chain(m.iter()) {
            max = if v > max { v } else { max };
            nan |= v.is_nan();
        }
        let max = if nan { f32::NAN } else { max };
        let mut s = [0f32; LANES];
        let mut oc = o.chunks_exact_mut(LANES);
        let mut xc = row.chunks_exact(LANES);
        for (oo, xx) in (&mut oc).zip(&mut xc) {
            for k in 0..LANES {
                let e = exp_or_zero(xx[k] - max);
                oo[k] = e;
                s[k] += e;
            }
        }
        let mut sum = 0f32;
        for (oo, &xx) in oc.into_remainder().iter_mut().zip(xc.remainder()) {
            let e = exp_or_zero(xx - max);
            *oo = e;
            sum += e;
        }
        for v in s {
            sum += v;
        }
        let inv = 1.0 / sum;
        for v in o.iter_mut() {
            *v *= inv;
        }
    }
}

#[inline(always)]
pub(crate) fn exp_impl(x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = exp1(v);
    }
}

#[inline(always)]
pub(crate) fn sigmoid_impl(x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = 1.0 / (1.0 + exp1(-v));
    }
}

#[inline(always)]
pub(crate) fn tanh_impl(x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        let a = v.abs();
        let e = exp1(-2.0 * a);
        let t = (1.0 - e) / (1.0 + e);
        let t = if a < 2.441_406_3e-4 { a } else { t };
        *o = t.copysign(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> Vec<f32> {
        let mut v: Vec<f32> = (-20_000..=20_000).map(|k| k as f32 * 0.005).collect();
        v.extend([
            0.0,
            -0.0,
            1e-6,
            -1e-6,
            1e-3,
            87.0,
            -87.0,
            88.0,
            200.0,
            -200.0,
            f32::MIN_POSITIVE,
        ]);
        v
    }

    fn relative(got: f32, want: f64) -> f64 {
        (f64::from(got) - want).abs() / want.abs().max(1e-30)
    }

    #[test]
    fn erf_matches_the_series() {
        let mut x = grid();
        x.extend([
            0.49999,
            0.5,
            0.50001,
            -0.5,
            3.99,
            4.0,
            9.0,
            -9.5,
            1e-30,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ]);
        crate::simd::each_level(|level| {
            let mut y = vec![0.0; x.len()];
            erf(&x, &mut y);
            for (&v, &got) in x.iter().zip(&y) {
                let want = f64::from(erf_reference(v));
                let err = (f64::from(got) - want).abs();
                assert!(
                    err <= 2.5e-7 * want.abs().max(0.5),
                    "erf({v}) = {got}, want {want} at level {level}"
                );
            }
        });
        let mut y = [0.0];
        erf(&[f32::NAN], &mut y);
        assert!(y[0].is_nan());
    }

    /// The definition: max, libm exp, sum, divide, in f64.
    fn softmax_reference(row: &[f32]) -> Vec<f64> {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
        let e: Vec<f64> = row.iter().map(|&v| (f64::from(v) - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        e.iter().map(|v| v / sum).collect()
    }

    #[test]
    fn softmax_rows_match_the_reference() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 40.0
        };
        for width in [1, 3, 15, 16, 17, 33, 128, 129] {
            let rows = 5;
            let x: Vec<f32> = (0..rows * width).map(|_| next()).collect();
            crate::simd::each_level(|level| {
                let mut y = vec![0.0; x.len()];
                softmax_rows(&x, &mut y, width);
                for (r, (xr, yr)) in x.chunks(width).zip(y.chunks(width)).enumerate() {
                    for (k, (&got, want)) in yr.iter().zip(softmax_reference(xr)).enumerate() {
                        let err = (f64::from(got) - want).abs();
                        assert!(
                            err <= 1e-6 * want.max(1e-30) + 1e-12,
                            "width {width} row {r} [{k}] at level {level}: {got} vs {want}"
                        );
                    }
                }
            });
        }
        let mut y = vec![0.0; 4];
        softmax_rows(&[1.0, f32::NAN, 2.0, 3.0], &mut y, 4);
        assert!(y.iter().all(|v| v.is_nan()), "a NaN makes the row NaN");
        softmax_rows(&[f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, 0.0], &mut y, 4);
        assert_eq!(y, vec![0.0, 0.5, 0.0, 0.5]);
    }

    #[test]
    fn exp_matches_libm() {
        let x: Vec<f32> = grid().into_iter().filter(|v| v.abs() <= 87.0).collect();
        crate::simd::each_level(|level| {
            let mut y = vec![0.0; x.len()];
            exp(&x, &mut y);
            for (&v, &got) in x.iter().zip(&y) {
                let err = relative(got, f64::from(v).exp());
                assert!(err < 3e-7, "exp({v}) = {got} at level {level}, relative error {err}");
            }
        });
    }

    #[test]
    fn sigmoid_and_tanh_match_libm() {
        let x = grid();
        let (mut s, mut t) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        let mut by_level = Vec::new();
        crate::simd::each_level(|_| {
            sigmoid(&x, &mut s);
            tanh(&x, &mut t);
            by_level.push((s.clone(), t.clone()));
        });
        // Every instruction set computes the same values.
        assert!(by_level.windows(2).all(|w| w[0] == w[1]));
        for k in 0..x.len() {
            let v = f64::from(x[k]);
            let want_s = 1.0 / (1.0 + (-v).exp());
            assert!(
                (f64::from(s[k]) - want_s).abs() < 3e-7 * want_s.max(1e-3) + 1e-30,
                "sigmoid({v}) = {}",
                s[k]
            );
            let want_t = v.tanh();
            assert!(
                relative(t[k], want_t) < 1e-6 || (f64::from(t[k]) - want_t).abs() < 1e-7,
                "tanh({v}) = {}",
                t[k]
            );
            assert_eq!(t[k].is_sign_negative(), x[k].is_sign_negative(), "tanh({v}) sign");
        }
        let mut nan = [0.0];
        sigmoid(&[f32::NAN], &mut nan);
        assert!(nan[0].is_nan());
    }
}

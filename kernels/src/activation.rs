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

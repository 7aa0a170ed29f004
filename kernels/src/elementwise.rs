//! A chain of element-wise operations over one FP32 tensor, evaluated block by block: every
//! operation is applied to a block that stays in L1 before the next block is read, so the chain
//! costs one pass over memory instead of one per operation. Operands are the chain's input (the
//! root), the value computed so far, or scalars: what exporters' spelled-out activations need
//! (HardSwish as `x * clip(x + 3, 0, 6) / 6`, SiLU as `x * sigmoid(x)`).

use crate::activation;

/// Elements per block: the block, the root's block and a temporary fit in L1 together.
const BLOCK: usize = 2048;

/// Where a binary operation's operand comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Operand {
    /// The chain's input.
    Root,
    /// The previous operation's result (the root before the first operation).
    Current,
    Scalar(f32),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    Add(Operand, Operand),
    Sub(Operand, Operand),
    Mul(Operand, Operand),
    Div(Operand, Operand),
    /// `min(max(v, lo), hi)`.
    Clip(f32, f32),
    Relu,
    Sigmoid,
    Tanh,
    Erf,
    /// `clamp(alpha * v + beta, 0, 1)`.
    HardSigmoid(f32, f32),
}

multiversion! {
    /// The chain applied to `root`: each element goes through `ops` in order.
    pub fn chain(ops: &[Op], root: &[f32]) -> Vec<f32> = chain_impl;
}

#[inline(always)]
fn chain_impl(ops: &[Op], root: &[f32]) -> Vec<f32> {
    let mut out = root.to_vec();
    let mut tmp = vec![0f32; BLOCK.min(root.len())];
    for (xs, cur) in root.chunks(BLOCK).zip(out.chunks_mut(BLOCK)) {
        let tmp = &mut tmp[..xs.len()];
        for &op in ops {
            apply(op, xs, cur, tmp);
        }
    }
    out
}

/// The definition, element by element: what the tests hold [`chain`] to.
pub fn chain_reference(ops: &[Op], root: &[f32]) -> Vec<f32> {
    root.iter()
        .map(|&x| {
            let mut c = x;
            for &op in ops {
                let v = |o: Operand| match o {
                    Operand::Root => x,
                    Operand::Current => c,
                    Operand::Scalar(s) => s,
                };
                c = match op {
                    Op::Add(a, b) => v(a) + v(b),
                    Op::Sub(a, b) => v(a) - v(b),
                    Op::Mul(a, b) => v(a) * v(b),
                    Op::Div(a, b) => v(a) / v(b),
                    Op::Clip(lo, hi) => c.max(lo).min(hi),
                    Op::Relu => c.max(0.0),
                    Op::Sigmoid => 1.0 / (1.0 + (-c).exp()),
                    Op::Tanh => c.tanh(),
                    Op::Erf => activation::erf_reference(c),
                    Op::HardSigmoid(alpha, beta) => (alpha * c + beta).clamp(0.0, 1.0),
                };
            }
            c
        })
        .collect()
}

/// `cur = f(a, b)`, the operands' sources matched once per block so that each loop vectorises.
#[inline(always)]
fn binary(a: Operand, b: Operand, xs: &[f32], cur: &mut [f32], f: impl Fn(f32, f32) -> f32) {
    use Operand::{Current, Root, Scalar};
    match (a, b) {
        (Current, Scalar(s)) => cur.iter_mut().for_each(|c| *c = f(*c, s)),
        (Scalar(s), Current) => cur.iter_mut().for_each(|c| *c = f(s, *c)),
        (Current, Current) => cur.iter_mut().for_each(|c| *c = f(*c, *c)),
        (Root, Current) => cur.iter_mut().zip(xs).for_each(|(c, &x)| *c = f(x, *c)),
        (Current, Root) => cur.iter_mut().zip(xs).for_each(|(c, &x)| *c = f(*c, x)),
        (Root, Scalar(s)) => cur.iter_mut().zip(xs).for_each(|(c, &x)| *c = f(x, s)),
        (Scalar(s), Root) => cur.iter_mut().zip(xs).for_each(|(c, &x)| *c = f(s, x)),
        (Root, Root) => cur.iter_mut().zip(xs).for_each(|(c, &x)| *c = f(x, x)),
        (Scalar(p), Scalar(q)) => cur.fill(f(p, q)),
    }
}

#[inline(always)]
fn apply(op: Op, xs: &[f32], cur: &mut [f32], tmp: &mut [f32]) {
    match op {
        Op::Add(a, b) => binary(a, b, xs, cur, |p, q| p + q),
        Op::Sub(a, b) => binary(a, b, xs, cur, |p, q| p - q),
        Op::Mul(a, b) => binary(a, b, xs, cur, |p, q| p * q),
        Op::Div(a, b) => binary(a, b, xs, cur, |p, q| p / q),
        Op::Clip(lo, hi) => cur.iter_mut().for_each(|v| *v = v.max(lo).min(hi)),
        Op::Relu => cur.iter_mut().for_each(|v| *v = v.max(0.0)),
        Op::HardSigmoid(alpha, beta) => cur.iter_mut().for_each(|v| *v = (alpha * *v + beta).clamp(0.0, 1.0)),
        Op::Sigmoid => {
            tmp.copy_from_slice(cur);
            activation::sigmoid_impl(tmp, cur);
        }
        Op::Tanh => {
            tmp.copy_from_slice(cur);
            activation::tanh_impl(tmp, cur);
        }
        Op::Erf => {
            tmp.copy_from_slice(cur);
            activation::erf_impl(tmp, cur);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::tests::Rng;

    #[test]
    fn chains_match_the_reference() {
        use Operand::{Current, Root, Scalar};
        let hard_swish = vec![
            Op::Add(Current, Scalar(3.0)),
            Op::Clip(0.0, 6.0),
            Op::Mul(Root, Current),
            Op::Div(Current, Scalar(6.0)),
        ];
        let silu = vec![Op::Sigmoid, Op::Mul(Root, Current)];
        // GELU as PyTorch exports it: x * (erf(x / sqrt 2) + 1) * 0.5.
        let gelu = vec![
            Op::Div(Root, Scalar(std::f32::consts::SQRT_2)),
            Op::Erf,
            Op::Add(Current, Scalar(1.0)),
            Op::Mul(Root, Current),
            Op::Mul(Current, Scalar(0.5)),
        ];
        let mixed = vec![
            Op::Sub(Scalar(1.0), Root),
            Op::Tanh,
            Op::HardSigmoid(0.3, 0.4),
            Op::Relu,
            Op::Div(Root, Current),
            Op::Mul(Current, Current),
        ];
        let mut rng = Rng(7);
        for len in [0, 1, 7, 2047, 2048, 2049, 10_001] {
            let x: Vec<f32> = rng.values(len).iter().map(|v| v * 8.0).collect();
            for ops in [&hard_swish, &silu, &gelu, &mixed] {
                crate::simd::each_level(|level| {
                    let (got, want) = (chain(ops, &x), chain_reference(ops, &x));
                    assert_eq!(got.len(), len);
                    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                        let ok = (g - w).abs() <= 1e-5 * w.abs().max(1.0) || (g.is_nan() && w.is_nan()) || g == w;
                        assert!(ok, "{ops:?} level {level} at {k} (x = {}): {g} vs {w}", x[k]);
                    }
                });
            }
        }
        // Without transcendental steps the chain is exact: the same operations in the same order.
        let x: Vec<f32> = rng.values(5000).iter().map(|v| v * 8.0).collect();
        crate::simd::each_level(|_| assert_eq!(chain(&hard_swish, &x), chain_reference(&hard_swish, &x)));
    }
}

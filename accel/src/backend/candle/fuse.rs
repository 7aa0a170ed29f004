//! Element-wise fusion: a chain of element-wise nodes that starts from one value `x` (the root),
//! where each node reads the previous node's output, the root, or scalar constants, and every
//! intermediate has that one reader, runs as one kernel. Exports spell HardSwish as
//! `x * clip(x + 3, 0, 6) / 6` and SiLU as `x * sigmoid(x)`: four and two passes over an activation
//! map that, at batch 8, no longer fits in cache, so each pass costs a trip to memory. The fused
//! kernel walks the map once, in blocks that stay in L1, applying every operation to a block before
//! moving on. FP32 tensors on the CPU take that path; anything else runs the original nodes' kernels
//! one after the other, so results never depend on fusion except through float rounding order
//! (none: the same operations in the same order on the same values).

use std::collections::HashMap;

use candle_core::{CpuStorage, DType, Storage, Tensor};
use candle_onnx::onnx::NodeProto;

use accel_kernels::elementwise::chain;
pub(super) use accel_kernels::elementwise::{Op, Operand};

use super::ops::{Kernel, Result, arg};

/// One node of a chain as its own kernel would run it, for tensors the fused path does not take.
pub(super) struct Fallback {
    pub kernel: Kernel,
    /// Per input: the root, the previous result, or a constant.
    pub args: Vec<Option<FallbackArg>>,
}

pub(super) enum FallbackArg {
    Root,
    Current,
    Constant(Tensor),
}

/// Reads a node of a chain: `current` is the value the chain has computed so far (the root for the
/// first node), `constant` gives a constant input's value. `None` when the node cannot join.
pub(super) fn chain_op(
    node: &NodeProto,
    opset: i64,
    root: &str,
    current: &str,
    constant: &dyn Fn(&str) -> Option<Tensor>,
) -> Option<Op> {
    if !(node.domain.is_empty() || node.domain == "ai.onnx") || node.output.len() != 1 {
        return None;
    }
    let scalar = |name: &str| -> Option<f32> {
        let t = constant(name)?;
        if t.elem_count() != 1 || !matches!(t.dtype(), DType::F32 | DType::F64 | DType::F16 | DType::BF16) {
            return None;
        }
        t.flatten_all()
            .ok()?
            .to_dtype(DType::F32)
            .ok()?
            .to_vec1::<f32>()
            .ok()?
            .first()
            .copied()
    };
    let operand = |name: &str| -> Option<Operand> {
        if name == current {
            Some(Operand::Current)
        } else if name == root {
            Some(Operand::Root)
        } else {
            scalar(name).map(Operand::Scalar)
        }
    };
    let reads_current = node.input.iter().any(|i| i == current);
    if !reads_current {
        return None;
    }
    let attr_f = |name: &str, default: f32| node.attribute.iter().find(|a| a.name == name).map_or(default, |a| a.f);
    let unary = node.input.len() == 1;
    let op = match node.op_type.as_str() {
        "Add" | "Sub" | "Mul" | "Div" if node.input.len() == 2 => {
            let (a, b) = (operand(&node.input[0])?, operand(&node.input[1])?);
            // At least one operand has the root's shape, so the result does too.
            if matches!((a, b), (Operand::Scalar(_), Operand::Scalar(_))) {
                return None;
            }
            match node.op_type.as_str() {
                "Add" => Op::Add(a, b),
                "Sub" => Op::Sub(a, b),
                "Mul" => Op::Mul(a, b),
                _ => Op::Div(a, b),
            }
        }
        "Relu" if unary => Op::Relu,
        "Sigmoid" if unary => Op::Sigmoid,
        "Tanh" if unary => Op::Tanh,
        "Erf" if unary => Op::Erf,
        "HardSigmoid" if unary => Op::HardSigmoid(attr_f("alpha", 0.2), attr_f("beta", 0.5)),
        "Clip" if node.input[0] == current => {
            if opset < 11 {
                Op::Clip(attr_f("min", f32::MIN), attr_f("max", f32::MAX))
            } else {
                let bound = |k: usize, default: f32| match node.input.get(k) {
                    None => Some(default),
                    Some(n) if n.is_empty() => Some(default),
                    Some(n) => scalar(n),
                };
                let (lo, hi) = (bound(1, f32::NEG_INFINITY)?, bound(2, f32::INFINITY)?);
                if lo > hi {
                    return None;
                }
                Op::Clip(lo, hi)
            }
        }
        _ => return None,
    };
    Some(op)
}

/// The fused kernel of `ops` (with each node's own kernel for other tensors).
pub(super) fn kernel(ops: Vec<Op>, fallback: Vec<Fallback>) -> Kernel {
    Kernel::guarded(move |inputs, guard| {
        let x = arg(inputs, 0)?;
        if let Some(y) = fused(&ops, x)? {
            return Ok(vec![y]);
        }
        let mut current = x.clone();
        for step in &fallback {
            let args: Vec<Option<&Tensor>> = step
                .args
                .iter()
                .map(|a| match a {
                    Some(FallbackArg::Root) => Some(x),
                    Some(FallbackArg::Current) => Some(&current),
                    Some(FallbackArg::Constant(t)) => Some(t),
                    None => None,
                })
                .collect();
            let mut out = step.kernel.run(&args, guard)?;
            if out.is_empty() {
                candle_core::bail!("a fused node produced nothing")
            }
            current = out.swap_remove(0);
        }
        Ok(vec![current])
    })
}

/// The chain over an FP32 CPU tensor of rank 1 or more, or `None`.
fn fused(ops: &[Op], x: &Tensor) -> Result<Option<Tensor>> {
    if x.dtype() != DType::F32 || !x.device().is_cpu() || x.rank() == 0 {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
        return Ok(None);
    };
    let out = chain(ops, &data[start..end]);
    drop(storage);
    Tensor::from_vec(out, x.shape(), x.device()).map(Some)
}

/// Who reads each value: node indices (their inputs and what their sub-graphs capture), and
/// `usize::MAX` for a graph output.
pub(super) fn readers(nodes: &[NodeProto], outputs: &[String]) -> HashMap<String, Vec<usize>> {
    let mut map: HashMap<String, Vec<usize>> = HashMap::new();
    for (k, node) in nodes.iter().enumerate() {
        for name in node.input.iter().cloned().chain(super::graph::captured_names(node)) {
            if !name.is_empty() {
                map.entry(name).or_default().push(k);
            }
        }
    }
    for o in outputs {
        map.entry(o.clone()).or_default().push(usize::MAX);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_swish_chain_matches_the_step_by_step_result() {
        let ops = [
            Op::Add(Operand::Current, Operand::Scalar(3.0)),
            Op::Clip(0.0, 6.0),
            Op::Mul(Operand::Root, Operand::Current),
            Op::Div(Operand::Current, Operand::Scalar(6.0)),
        ];
        let xs: Vec<f32> = (0..5000).map(|k| (k as f32 - 2500.0) / 300.0).collect();
        let x = Tensor::from_vec(xs.clone(), (5, 1000), &candle_core::Device::Cpu).unwrap();
        let y = fused(&ops, &x).unwrap().unwrap();
        assert_eq!(y.dims(), &[5, 1000]);
        let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (g, v) in got.iter().zip(&xs) {
            let want = v * (v + 3.0).clamp(0.0, 6.0) / 6.0;
            assert_eq!(*g, want, "hardswish({v})");
        }
        // Not FP32: the fused path declines (the fallback kernels run instead).
        let ints = Tensor::new(&[1i64, 2], &candle_core::Device::Cpu).unwrap();
        assert!(fused(&ops, &ints).unwrap().is_none());
    }
}

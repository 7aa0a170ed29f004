//! Reductions and ArgMax/ArgMin. The axes are an attribute before opset 18 (13 for ReduceSum) and an
//! optional input after; both are read. `noop_with_empty_axes` is honoured.

use candle_core::{DType, Tensor, bail};

use super::{Kernel, NodeCtx, Result, arg, axis, host_i64, is_float, opt};

pub(super) fn reduce(ctx: &NodeCtx<'_>) -> Result<Kernel> {
    let a = ctx.attrs();
    let op = ctx.node.op_type.clone();
    let keepdims = a.int("keepdims", 1) != 0;
    let noop_empty = a.int("noop_with_empty_axes", 0) != 0;
    let attr_axes = a.ints("axes").map(<[i64]>::to_vec);
    if op == "ReduceProd" {
        bail!("ReduceProd is not supported")
    }
    Ok(Kernel::new(move |i| {
        let x = arg(i, 0)?;
        let axes = match opt(i, 1) {
            Some(t) => Some(host_i64(t)?),
            None => attr_axes.clone(),
        };
        let axes: Vec<usize> = match axes {
            Some(v) if !v.is_empty() => {
                let mut v: Vec<usize> = v.iter().map(|&d| axis(d, x.rank())).collect::<Result<_>>()?;
                v.sort_unstable();
                v.dedup();
                v
            }
            _ if noop_empty => return Ok(vec![x.clone()]),
            _ => (0..x.rank()).collect(),
        };
        if x.rank() == 0 {
            return Ok(vec![x.clone()]);
        }
        let needs_float = matches!(
            op.as_str(),
            "ReduceMean" | "ReduceL2" | "ReduceLogSumExp" | "ReduceLogSum"
        );
        if needs_float && !is_float(x.dtype()) {
            bail!("{op} on {:?} tensors is not supported", x.dtype())
        }
        let mut y = match op.as_str() {
            "ReduceSum" => x.sum_keepdim(axes.as_slice())?,
            "ReduceMean" => x.mean_keepdim(axes.as_slice())?,
            "ReduceSumSquare" => x.sqr()?.sum_keepdim(axes.as_slice())?,
            "ReduceL1" => x.abs()?.sum_keepdim(axes.as_slice())?,
            "ReduceL2" => x.sqr()?.sum_keepdim(axes.as_slice())?.sqrt()?,
            "ReduceLogSum" => x.sum_keepdim(axes.as_slice())?.log()?,
            "ReduceLogSumExp" => {
                let mut m = x.clone();
                for &d in &axes {
                    m = m.max_keepdim(d)?;
                }
                x.broadcast_sub(&m)?
                    .exp()?
                    .sum_keepdim(axes.as_slice())?
                    .log()?
                    .add(&m)?
            }
            "ReduceMax" | "ReduceMin" => {
                let mut m = x.clone();
                for &d in &axes {
                    m = if op == "ReduceMax" {
                        m.max_keepdim(d)?
                    } else {
                        m.min_keepdim(d)?
                    };
                }
                m
            }
            other => bail!("{other} is not supported"),
        };
        if !keepdims {
            for &d in axes.iter().rev() {
                y = y.squeeze(d)?;
            }
        }
        Ok(vec![y])
    }))
}

pub(super) fn arg_extreme(ctx: &NodeCtx<'_>, max: bool) -> Kernel {
    let a = ctx.attrs();
    let ax = a.int("axis", 0);
    let keepdims = a.int("keepdims", 1) != 0;
    let last = a.int("select_last_index", 0) != 0;
    Kernel::new(move |i| {
        let x = arg(i, 0)?;
        let d = axis(ax, x.rank())?;
        let n = x.dims()[d];
        let src = if last { x.flip(&[d])? } else { x.clone() };
        let idx = if max {
            src.argmax_keepdim(d)?
        } else {
            src.argmin_keepdim(d)?
        };
        let mut idx = idx.to_dtype(DType::I64)?;
        if last {
            idx = Tensor::new(n as i64 - 1, idx.device())?.broadcast_sub(&idx)?;
        }
        if !keepdims {
            idx = idx.squeeze(d)?;
        }
        Ok(vec![idx])
    })
}

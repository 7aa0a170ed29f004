//! Normalisations and softmax. BatchNormalization with constant statistics is folded at load into one
//! scale and one shift per channel. Softmax follows the opset: before 13 it normalises over all axes
//! from `axis` on (the input flattened to 2-D), from 13 over `axis` alone.

use candle_core::{D, Tensor, bail};

use super::{Kernel, NodeCtx, Result, arg, axis, opt};

fn channel_shape(rank: usize, c: usize) -> Vec<usize> {
    let mut s = vec![1; rank.max(2)];
    s[1] = c;
    s
}

/// scale / sqrt(var + eps) and bias - mean * that, per channel.
pub(in crate::backend::candle) fn fold_batch_norm(
    scale: &Tensor,
    bias: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    let a = scale.div(&(var + eps)?.sqrt()?)?;
    let b = bias.sub(&mean.mul(&a)?)?;
    Ok((a, b))
}

pub(super) fn batch_norm(ctx: &NodeCtx<'_>) -> Result<Kernel> {
    let attrs = ctx.attrs();
    if attrs.int("training_mode", 0) != 0 {
        bail!("BatchNormalization in training mode is not supported")
    }
    let eps = attrs.float("epsilon", 1e-5) as f64;
    let folded = match (
        ctx.const_input(1),
        ctx.const_input(2),
        ctx.const_input(3),
        ctx.const_input(4),
    ) {
        (Some(s), Some(b), Some(m), Some(v)) => Some(fold_batch_norm(s, b, m, v, eps)?),
        _ => None,
    };
    Ok(Kernel::new(move |i| {
        let x = arg(i, 0)?;
        let (a, b) = match &folded {
            Some(ab) => ab.clone(),
            None => fold_batch_norm(arg(i, 1)?, arg(i, 2)?, arg(i, 3)?, arg(i, 4)?, eps)?,
        };
        let c = a.elem_count();
        let shape = channel_shape(x.rank(), c);
        let y = x
            .broadcast_mul(&a.to_dtype(x.dtype())?.reshape(shape.as_slice())?)?
            .broadcast_add(&b.to_dtype(x.dtype())?.reshape(shape.as_slice())?)?;
        Ok(vec![y])
    }))
}

pub(super) fn instance_norm(ctx: &NodeCtx<'_>) -> Result<Kernel> {
    let eps = ctx.attrs().float("epsilon", 1e-5) as f64;
    Ok(Kernel::new(move |i| {
        let (x, scale, bias) = (arg(i, 0)?, arg(i, 1)?, arg(i, 2)?);
        let spatial: Vec<usize> = (2..x.rank()).collect();
        let mean = x.mean_keepdim(spatial.as_slice())?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(spatial.as_slice())?;
        let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
        let shape = channel_shape(x.rank(), scale.elem_count());
        Ok(vec![
            normed
                .broadcast_mul(&scale.reshape(shape.as_slice())?)?
                .broadcast_add(&bias.reshape(shape.as_slice())?)?,
        ])
    }))
}

pub(super) fn layer_norm(ctx: &NodeCtx<'_>) -> Result<Kernel> {
    let attrs = ctx.attrs();
    let ax = attrs.int("axis", -1);
    let eps = attrs.float("epsilon", 1e-5);
    if ctx.output_count() > 1 && ctx.node.output[1..].iter().any(|o| !o.is_empty()) {
        bail!("LayerNormalization's Mean and InvStdDev outputs are not supported")
    }
    Ok(Kernel::new(move |i| {
        let (x, scale) = (arg(i, 0)?, arg(i, 1)?);
        let d = axis(ax, x.rank())?;
        let outer: usize = x.dims()[..d].iter().product();
        let inner: usize = x.dims()[d..].iter().product();
        let x2 = x.reshape((outer, inner))?.contiguous()?;
        let gamma = scale.broadcast_as(&x.dims()[d..])?.flatten_all()?.contiguous()?;
        let beta = match opt(i, 2) {
            Some(b) => b.broadcast_as(&x.dims()[d..])?.flatten_all()?.contiguous()?,
            None => gamma.zeros_like()?,
        };
        let y = candle_nn::ops::layer_norm(&x2, &gamma.to_dtype(x.dtype())?, &beta.to_dtype(x.dtype())?, eps)?;
        Ok(vec![y.reshape(x.dims())?])
    }))
}

/// Softmax over the last dimension of a contiguous FP32 CPU tensor with accel-kernels' vectorised
/// exponential; `None` for other tensors (candle's then runs).
fn softmax_cpu(t: &Tensor) -> Result<Option<Tensor>> {
    use candle_core::{CpuStorage, DType, Storage};
    if t.dtype() != DType::F32 || !t.device().is_cpu() || t.rank() == 0 {
        return Ok(None);
    }
    let width = t.dims()[t.rank() - 1];
    let (storage, layout) = t.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
        return Ok(None);
    };
    let mut out = vec![0f32; end - start];
    accel_kernels::activation::softmax_rows(&data[start..end], &mut out, width);
    drop(storage);
    Tensor::from_vec(out, t.shape(), t.device()).map(Some)
}

pub(super) fn softmax(ctx: &NodeCtx<'_>, log: bool) -> Kernel {
    let legacy = ctx.opset < 13;
    let ax = ctx.attrs().int("axis", if legacy { 1 } else { -1 });
    Kernel::new(move |i| {
        let x = arg(i, 0)?;
        if x.rank() == 0 {
            return Ok(vec![if log { x.zeros_like()? } else { x.ones_like()? }]);
        }
        let d = axis(ax, x.rank())?;
        let last = |t: &Tensor| -> Result<Tensor> {
            let t = t.contiguous()?;
            if !log && let Some(y) = softmax_cpu(&t)? {
                return Ok(y);
            }
            if log {
                candle_nn::ops::log_softmax(&t, D::Minus1)
            } else {
                candle_nn::ops::softmax_last_dim(&t)
            }
        };
        let y = if legacy || d == x.rank() - 1 {
            // Before opset 13 the input is coerced to 2-D at `axis`; at the last axis both agree.
            let outer: usize = x.dims()[..d].iter().product();
            let inner: usize = x.dims()[d..].iter().product();
            last(&x.reshape((outer, inner))?)?.reshape(x.dims())?
        } else {
            let moved = x.transpose(d, x.rank() - 1)?;
            last(&moved)?.transpose(d, x.rank() - 1)?
        };
        Ok(vec![y])
    })
}

//! MaxPool, AveragePool (1-D and 2-D, with pads, `auto_pad`, `ceil_mode`, per-axis strides and
//! `count_include_pad`), and the global pools. candle's pools take no padding, so pads are applied
//! here: with -inf for max pooling, with zeros for averages, whose divisor is then computed from a
//! mask of the positions that count.

use candle_core::{Tensor, bail};

use super::conv::Spatial;
use super::{Kernel, NodeCtx, Result, arg, pad_constant};
use crate::backend::candle::error::input_error;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Max,
    Average,
}

pub(super) fn pool(ctx: &NodeCtx<'_>, kind: Kind) -> Result<Kernel> {
    let a = ctx.attrs();
    let Some(kernel) = a.ints("kernel_shape") else {
        bail!("{} without kernel_shape", ctx.node.op_type)
    };
    let kernel: Vec<usize> = kernel.iter().map(|&k| k.max(1) as usize).collect();
    if kernel.is_empty() || kernel.len() > 2 {
        bail!(
            "{} with {} spatial dimensions is not supported (1-D and 2-D are)",
            ctx.node.op_type,
            kernel.len()
        )
    }
    let sp = Spatial::read(ctx, kernel)?;
    if sp.dilations.iter().any(|&d| d != 1) {
        bail!(
            "{} with dilations {:?} is not supported",
            ctx.node.op_type,
            sp.dilations
        )
    }
    if ctx.output_count() > 1 && !ctx.node.output[1].is_empty() {
        bail!("MaxPool's Indices output is not supported")
    }
    let ceil_mode = a.int("ceil_mode", 0) != 0;
    let count_include_pad = a.int("count_include_pad", 0) != 0;
    Ok(Kernel::new(move |i| {
        let x = arg(i, 0)?;
        let n = sp.kernel.len();
        if x.rank() != n + 2 {
            bail!("pooling input of rank {} for a {n}-D kernel", x.rank())
        }
        // 1-D pools run as 2-D pools over a trailing axis of size 1.
        let (x4, kernel, strides, pads_spec) = if n == 1 {
            let p = sp.resolve_pads(&x.dims()[2..]);
            (
                x.unsqueeze(3)?,
                (sp.kernel[0], 1),
                (sp.strides[0], 1),
                vec![p[0], (0, 0)],
            )
        } else {
            (
                x.clone(),
                (sp.kernel[0], sp.kernel[1]),
                (sp.strides[0], sp.strides[1]),
                sp.resolve_pads(&x.dims()[2..]),
            )
        };
        let ks = [kernel.0, kernel.1];
        let ss = [strides.0, strides.1];
        // Extra end padding so that ceil_mode's last, partial window exists.
        let mut extra = [0usize; 2];
        for k in 0..2 {
            let size = x4.dims()[2 + k];
            let (b, e) = pads_spec[k];
            let span = size + b + e;
            if span < ks[k] {
                input_error!(
                    "input spatial size {size} (padded to {span}) is smaller than the pooling window {}",
                    ks[k]
                )
            }
            if ceil_mode {
                let mut out = (span - ks[k]).div_ceil(ss[k]) + 1;
                // The last window must start inside the input or its begin padding.
                if (out - 1) * ss[k] >= size + b {
                    out -= 1;
                }
                extra[k] = ((out - 1) * ss[k] + ks[k]).saturating_sub(span);
            }
        }
        let padded = |t: &Tensor, value: f64, with_extra: bool| -> Result<Tensor> {
            let mut t = t.clone();
            for k in 0..2 {
                let (b, e) = pads_spec[k];
                t = pad_constant(&t, 2 + k, b, e + if with_extra { extra[k] } else { 0 }, value)?;
            }
            Ok(t)
        };
        if kind == Kind::Max
            && let Some(y) = native_max(&x4, ks, ss, pads_spec.as_slice(), extra)?
        {
            return Ok(vec![if n == 1 { y.squeeze(3)? } else { y }]);
        }
        let y = match kind {
            Kind::Max => padded(&x4, f64::NEG_INFINITY, true)?
                .contiguous()?
                .max_pool2d_with_stride(kernel, strides)?,
            Kind::Average => {
                let sum_like = padded(&x4, 0.0, true)?
                    .contiguous()?
                    .avg_pool2d_with_stride(kernel, strides)?;
                let any_pad = pads_spec.iter().any(|&(b, e)| b + e > 0) || extra.iter().any(|&e| e > 0);
                if !any_pad {
                    sum_like
                } else {
                    // Divide by the number of positions that count instead of the window size.
                    let ones = x4.ones_like()?;
                    let mask = if count_include_pad {
                        let mut m = padded(&ones, 1.0, false)?;
                        for (k, &e) in extra.iter().enumerate() {
                            m = pad_constant(&m, 2 + k, 0, e, 0.0)?;
                        }
                        m
                    } else {
                        padded(&ones, 0.0, true)?
                    };
                    let counts = mask.contiguous()?.avg_pool2d_with_stride(kernel, strides)?;
                    sum_like.div(&counts)?
                }
            }
        };
        Ok(vec![if n == 1 { y.squeeze(3)? } else { y }])
    }))
}

/// Max pooling of a contiguous FP32 CPU tensor with accel-kernels (no padded copy); `None` for
/// anything else, which candle's pool then runs.
fn native_max(
    x: &Tensor,
    kernel: [usize; 2],
    strides: [usize; 2],
    pads: &[(usize, usize)],
    extra: [usize; 2],
) -> Result<Option<Tensor>> {
    use candle_core::{CpuStorage, DType, Storage};
    if x.dtype() != DType::F32 || !x.device().is_cpu() || x.rank() != 4 || pads.len() != 2 {
        return Ok(None);
    }
    let d = x.dims().to_vec();
    let shape = accel_kernels::pool::MaxPool2d {
        planes: d[0] * d[1],
        height: d[2],
        width: d[3],
        kernel,
        strides,
        pads: [pads[0].0, pads[1].0, pads[0].1 + extra[0], pads[1].1 + extra[1]],
    };
    let Some([oh, ow]) = shape.output_size() else {
        return Ok(None);
    };
    let (storage, layout) = x.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
        return Ok(None);
    };
    let Some(y) = accel_kernels::pool::max_pool2d(&shape, &data[start..end]) else {
        return Ok(None);
    };
    Tensor::from_vec(y, (d[0], d[1], oh, ow), x.device()).map(Some)
}

pub(super) fn global(kind: Kind) -> Kernel {
    Kernel::new(move |i| {
        let x = arg(i, 0)?;
        let spatial: Vec<usize> = (2..x.rank()).collect();
        let y = match kind {
            Kind::Average => x.mean_keepdim(spatial)?,
            Kind::Max => {
                let mut y = x.clone();
                for d in spatial {
                    y = y.max_keepdim(d)?;
                }
                y
            }
        };
        Ok(vec![y])
    })
}

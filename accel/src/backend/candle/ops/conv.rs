//! Conv and ConvTranspose (1-D and 2-D) with everything exporters emit: asymmetric pads, `auto_pad`,
//! per-axis strides and dilations, groups (depthwise included), output padding. candle's kernels take
//! one padding/stride/dilation for all axes, so the general cases are reduced to them: pads are
//! applied explicitly, per-axis dilations are baked into the weights at load, and per-axis strides run
//! at stride 1 and keep every n-th output.

use accel_kernels::conv::{Depthwise, ShapeError, depthwise_conv2d};
use accel_kernels::dense::{Conv2d, conv2d};
use accel_kernels::transpose::{ConvTranspose2d, conv_transpose2d};
use candle_core::{CpuStorage, DType, Storage, Tensor, bail};

use super::{Kernel, NodeCtx, Result, arg, opt, pad_constant, take_strided};
use crate::backend::candle::error::input_error;

/// Spatial attributes shared by Conv, ConvTranspose and the pools.
#[derive(Clone, Debug)]
pub(super) struct Spatial {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    /// `[begin..., end...]`, as ONNX lists them.
    pub pads: Vec<usize>,
    pub auto_pad: String,
}

impl Spatial {
    pub(super) fn read(ctx: &NodeCtx<'_>, kernel: Vec<usize>) -> Result<Self> {
        let a = ctx.attrs();
        let n = kernel.len();
        let list = |name: &str, default: usize| -> Result<Vec<usize>> {
            match a.ints(name) {
                Some(v) if !v.is_empty() => v
                    .iter()
                    .map(|&x| usize::try_from(x).map_err(|_| candle_core::Error::Msg(format!("{name} {v:?}"))))
                    .collect(),
                _ => Ok(vec![default; n]),
            }
        };
        let strides = list("strides", 1)?;
        let dilations = list("dilations", 1)?;
        let pads = match a.ints("pads") {
            Some(v) if !v.is_empty() => v.iter().map(|&x| x.max(0) as usize).collect(),
            _ => vec![0; 2 * n],
        };
        let auto_pad = a.string("auto_pad").unwrap_or_else(|| "NOTSET".into());
        if strides.len() != n || dilations.len() != n || pads.len() != 2 * n {
            bail!("kernel {kernel:?}, strides {strides:?}, dilations {dilations:?} and pads {pads:?} disagree in rank")
        }
        if strides.contains(&0) || dilations.contains(&0) || kernel.contains(&0) {
            bail!("kernel sizes, strides and dilations must be positive")
        }
        Ok(Spatial {
            kernel,
            strides,
            dilations,
            pads,
            auto_pad,
        })
    }

    /// Begin and end padding of every spatial axis for inputs of `sizes`.
    pub(super) fn resolve_pads(&self, sizes: &[usize]) -> Vec<(usize, usize)> {
        let n = self.kernel.len();
        (0..n)
            .map(|k| match self.auto_pad.as_str() {
                "SAME_UPPER" | "SAME_LOWER" => {
                    let out = sizes[k].div_ceil(self.strides[k]);
                    let eff = (self.kernel[k] - 1) * self.dilations[k] + 1;
                    let total = ((out.saturating_sub(1)) * self.strides[k] + eff).saturating_sub(sizes[k]);
                    let small = total / 2;
                    if self.auto_pad == "SAME_UPPER" {
                        (small, total - small)
                    } else {
                        (total - small, small)
                    }
                }
                "VALID" => (0, 0),
                _ => (self.pads[k], self.pads[k + n]),
            })
            .collect()
    }
}

fn all_equal(v: &[usize]) -> bool {
    v.windows(2).all(|w| w[0] == w[1])
}

/// Inserts `d - 1` zeros between kernel taps along each spatial axis whose dilation `d` is not 1.
fn dilate_kernel(w: &Tensor, dilations: &[usize]) -> Result<Tensor> {
    let mut w = w.clone();
    for (k, &d) in dilations.iter().enumerate() {
        if d == 1 {
            continue;
        }
        let axis = 2 + k;
        let taps = w.dims()[axis];
        let mut parts = Vec::with_capacity(2 * taps);
        for t in 0..taps {
            parts.push(w.narrow(axis, t, 1)?);
            if t + 1 < taps {
                parts.push(
                    w.narrow(axis, t, 1)?
                        .zeros_like()?
                        .repeat(repeat_on(w.rank(), axis, d - 1))?,
                );
            }
        }
        w = Tensor::cat(&parts, axis)?;
    }
    Ok(w)
}

fn repeat_on(rank: usize, axis: usize, n: usize) -> Vec<usize> {
    let mut r = vec![1; rank];
    r[axis] = n;
    r
}

/// Adds the per-channel bias: the one prepared at load, else the node's third input, if any.
fn add_bias(y: Tensor, prepared: Option<&Tensor>, input: Option<&Tensor>) -> Result<Tensor> {
    match (prepared, input) {
        (Some(b), _) => y.broadcast_add(b),
        (None, Some(b)) => y.broadcast_add(&b.reshape(bias_shape(y.rank(), b.elem_count()))?),
        (None, None) => Ok(y),
    }
}

fn bias_shape(rank: usize, channels: usize) -> Vec<usize> {
    let mut s = vec![1; rank];
    s[1] = channels;
    s
}

/// An FP32 convolution with constant weights (1-D as 2-D with a height of 1) run by accel-kernels:
/// depthwise ones by the per-channel kernel (candle runs them as one convolution per channel), the
/// others as one GEMM per image and group straight into the output (candle adds two copies).
struct NativeConv {
    in_channels: usize,
    out_channels: usize,
    groups: usize,
    /// The kernel as 2-D (`[1, k]` for a 1-D convolution).
    kernel: [usize; 2],
    weights: Vec<f32>,
    bias: Option<Vec<f32>>,
}

impl NativeConv {
    fn prepare(ctx: &NodeCtx<'_>, groups: usize, sp: &Spatial) -> Result<Option<Self>> {
        let Some(w) = ctx.const_input(1) else {
            return Ok(None);
        };
        let dims = w.dims();
        if w.dtype() != DType::F32 || dims.len() != sp.kernel.len() + 2 || dims[2..] != sp.kernel[..] {
            return Ok(None);
        }
        let kernel = match sp.kernel[..] {
            [k] => [1, k],
            [kh, kw] => [kh, kw],
            _ => return Ok(None),
        };
        if dims[0] % groups != 0 {
            bail!("Conv: {} output channels do not split into {groups} groups", dims[0])
        }
        let bias = match ctx.const_input(2) {
            Some(b) if b.dtype() == DType::F32 && b.elem_count() == dims[0] => Some(b.flatten_all()?.to_vec1::<f32>()?),
            Some(_) => return Ok(None),
            None if ctx.node.input.get(2).is_some_and(|n| !n.is_empty()) => return Ok(None),
            None => None,
        };
        Ok(Some(NativeConv {
            in_channels: dims[1] * groups,
            out_channels: dims[0],
            groups,
            kernel,
            weights: w.flatten_all()?.to_vec1::<f32>()?,
            bias,
        }))
    }

    /// The shape of a 2-D depthwise convolution of an FP32 `x` on a GPU, which accel-kernels' CUDA
    /// kernel runs; `None` for anything else.
    #[cfg(feature = "cuda")]
    fn depthwise_on_gpu(&self, x: &Tensor, sp: &Spatial) -> Option<Depthwise> {
        let depthwise = self.groups == self.in_channels && self.groups > 1;
        if !depthwise
            || sp.kernel.len() != 2
            || x.rank() != 4
            || x.dims()[1] != self.in_channels
            || x.dtype() != DType::F32
            || !x.device().is_cuda()
        {
            return None;
        }
        let pads = sp.resolve_pads(&x.dims()[2..]);
        let shape = Depthwise {
            batch: x.dims()[0],
            channels: self.in_channels,
            multiplier: self.out_channels / self.groups,
            height: x.dims()[2],
            width: x.dims()[3],
            kernel: self.kernel,
            pads: [pads[0].0, pads[1].0, pads[0].1, pads[1].1],
            strides: [sp.strides[0], sp.strides[1]],
            dilations: [sp.dilations[0], sp.dilations[1]],
        };
        shape.output_size().is_ok().then_some(shape)
    }

    /// The convolution of `x`, or `None` when `x` is not what the kernels handle (then candle runs it).
    fn run(&self, x: &Tensor, sp: &Spatial) -> Result<Option<Tensor>> {
        let one_d = sp.kernel.len() == 1;
        if x.rank() != sp.kernel.len() + 2
            || x.dims()[1] != self.in_channels
            || x.dtype() != DType::F32
            || !x.device().is_cpu()
        {
            return Ok(None);
        }
        let pads = sp.resolve_pads(&x.dims()[2..]);
        let (height, width, pads, strides, dilations) = if one_d {
            let (b, e) = pads[0];
            (1, x.dims()[2], [0, b, 0, e], [1, sp.strides[0]], [1, sp.dilations[0]])
        } else {
            let (h, w) = (x.dims()[2], x.dims()[3]);
            (
                h,
                w,
                [pads[0].0, pads[1].0, pads[0].1, pads[1].1],
                [sp.strides[0], sp.strides[1]],
                [sp.dilations[0], sp.dilations[1]],
            )
        };
        // A 2-D convolution over a width of 1 with a kx1 kernel (Magika's 1-D convolution exported as
        // 2-D) is the same memory as one over a height of 1 with a 1xk kernel, whose im2col copies
        // whole rows instead of one element per row.
        let mut kernel = self.kernel;
        let columnar = !one_d && width == 1 && kernel[1] == 1 && pads[1] == 0 && pads[3] == 0;
        let (height, width, pads, strides, dilations) = if columnar {
            kernel = [1, kernel[0]];
            (1, height, [0, pads[0], 0, pads[2]], [1, strides[0]], [1, dilations[0]])
        } else {
            (height, width, pads, strides, dilations)
        };
        let batch = x.dims()[0];
        let (storage, layout) = x.storage_and_layout();
        let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
            return Ok(None);
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            return Ok(None);
        };
        let data = &data[start..end];
        let threads = candle_core::utils::get_num_threads();
        let too_small = |e: ShapeError| -> Result<Option<Tensor>> {
            match e {
                ShapeError::TooSmall { .. } => input_error!("input spatial size {:?}: {e}", &x.dims()[2..]),
                e => bail!("Conv: {e}"),
            }
        };
        let depthwise = self.groups == self.in_channels && self.groups > 1;
        let (y, [oh, ow]) = if depthwise {
            let shape = Depthwise {
                batch,
                channels: self.in_channels,
                multiplier: self.out_channels / self.groups,
                height,
                width,
                kernel,
                pads,
                strides,
                dilations,
            };
            let size = match shape.output_size() {
                Ok(size) => size,
                Err(e) => return too_small(e),
            };
            let y = depthwise_conv2d(&shape, data, &self.weights, self.bias.as_deref(), threads);
            (y, size)
        } else {
            let shape = Conv2d {
                batch,
                in_channels: self.in_channels,
                out_channels: self.out_channels,
                groups: self.groups,
                height,
                width,
                kernel,
                pads,
                strides,
                dilations,
            };
            let size = match shape.output_size() {
                Ok(size) => size,
                Err(e) => return too_small(e),
            };
            (conv2d(&shape, data, &self.weights, self.bias.as_deref(), threads), size)
        };
        let y = y.map_err(|e| candle_core::Error::Msg(format!("Conv: {e}")))?;
        drop(storage);
        let y = if one_d {
            Tensor::from_vec(y, (batch, self.out_channels, ow), x.device())?
        } else if columnar {
            Tensor::from_vec(y, (batch, self.out_channels, ow, oh), x.device())?
        } else {
            Tensor::from_vec(y, (batch, self.out_channels, oh, ow), x.device())?
        };
        Ok(Some(y))
    }
}

pub(super) fn conv(ctx: &NodeCtx<'_>) -> Result<Kernel> {
    let groups = ctx.attrs().int("group", 1).max(1) as usize;
    let kernel_attr: Option<Vec<usize>> = ctx
        .attrs()
        .ints("kernel_shape")
        .map(|k| k.iter().map(|&x| x.max(0) as usize).collect());
    let w_const = ctx.const_input(1).cloned();
    let kernel = match (&kernel_attr, &w_const) {
        (Some(k), _) => k.clone(),
        (None, Some(w)) => w.dims().get(2..).unwrap_or_default().to_vec(),
        (None, None) => bail!("Conv needs kernel_shape or constant weights"),
    };
    if kernel.is_empty() || kernel.len() > 2 {
        bail!(
            "Conv with {} spatial dimensions is not supported (1-D and 2-D are)",
            kernel.len()
        )
    }
    let sp = Spatial::read(ctx, kernel)?;
    let uniform_dilation = all_equal(&sp.dilations);
    let dilation = if uniform_dilation { sp.dilations[0] } else { 1 };
    let prep = {
        let sp = sp.clone();
        move |w: &Tensor| -> Result<Tensor> {
            let w = if uniform_dilation {
                w.clone()
            } else {
                dilate_kernel(w, &sp.dilations)?
            };
            w.contiguous()
        }
    };
    let w_const = w_const.map(|w| prep(&w)).transpose()?;
    let b_const = ctx
        .const_input(2)
        .map(|b| b.reshape(bias_shape(sp.kernel.len() + 2, b.elem_count())))
        .transpose()?;
    let native = NativeConv::prepare(ctx, groups, &sp)?;
    #[cfg(feature = "cuda")]
    let gpu_weights = ctx.const_input(1).cloned();
    Ok(Kernel::new(move |i| {
        let x = arg(i, 0)?.contiguous()?;
        if let Some(native) = &native
            && let Some(y) = native.run(&x, &sp)?
        {
            return Ok(vec![y]);
        }
        #[cfg(feature = "cuda")]
        if let (Some(native), Some(w)) = (&native, &gpu_weights)
            && let Some(shape) = native.depthwise_on_gpu(&x, &sp)
        {
            return Ok(vec![crate::backend::candle::gpu::depthwise(
                &x,
                w,
                b_const.as_ref(),
                shape,
            )?]);
        }
        let w = match &w_const {
            Some(w) => w.clone(),
            None => prep(arg(i, 1)?)?,
        };
        let spatial = x.rank().saturating_sub(2);
        if spatial != sp.kernel.len() {
            bail!("Conv input of rank {} for a {}-D kernel", x.rank(), sp.kernel.len())
        }
        let pads = sp.resolve_pads(&x.dims()[2..]);
        for (k, &(b, e)) in pads.iter().enumerate() {
            let extent = (sp.kernel[k].saturating_sub(1)) * sp.dilations[k] + 1;
            if x.dims()[2 + k] + b + e < extent {
                input_error!(
                    "input spatial size {:?} (padded {b}+{e}) is smaller than the kernel {:?}",
                    &x.dims()[2..],
                    sp.kernel
                )
            }
        }
        let symmetric = pads.iter().all(|&(b, e)| b == e) && all_equal(&pads.iter().map(|p| p.0).collect::<Vec<_>>());
        let (x, padding) = if symmetric {
            (x, pads[0].0)
        } else {
            let mut x = x;
            for (k, &(b, e)) in pads.iter().enumerate() {
                x = pad_constant(&x, 2 + k, b, e, 0.0)?;
            }
            (x, 0)
        };
        let uniform_stride = all_equal(&sp.strides);
        let stride = if uniform_stride { sp.strides[0] } else { 1 };
        let mut y = if spatial == 1 {
            x.conv1d(&w, padding, stride, dilation, groups)?
        } else {
            x.conv2d(&w, padding, stride, dilation, groups)?
        };
        if !uniform_stride {
            for (k, &s) in sp.strides.iter().enumerate() {
                let axis = 2 + k;
                let n = y.dims()[axis];
                y = take_strided(&y, axis, 0, s, n.div_ceil(s))?;
            }
        }
        Ok(vec![add_bias(y, b_const.as_ref(), opt(i, 2))?])
    }))
}

/// The full (uncropped) transposed convolution of an FP32 CPU tensor by accel-kernels, 1-D as 2-D
/// with a height of 1; `None` for other tensors.
fn native_conv_transpose(
    x: &Tensor,
    weights: &[f32],
    out_channels: usize,
    groups: usize,
    sp: &Spatial,
) -> Result<Option<Tensor>> {
    let one_d = sp.kernel.len() == 1;
    if x.dtype() != DType::F32 || !x.device().is_cpu() || x.rank() != sp.kernel.len() + 2 {
        return Ok(None);
    }
    let (height, width, kernel, strides, dilations) = if one_d {
        (
            1,
            x.dims()[2],
            [1, sp.kernel[0]],
            [1, sp.strides[0]],
            [1, sp.dilations[0]],
        )
    } else {
        (
            x.dims()[2],
            x.dims()[3],
            [sp.kernel[0], sp.kernel[1]],
            [sp.strides[0], sp.strides[1]],
            [sp.dilations[0], sp.dilations[1]],
        )
    };
    let shape = ConvTranspose2d {
        batch: x.dims()[0],
        in_channels: x.dims()[1],
        out_channels,
        groups,
        height,
        width,
        kernel,
        strides,
        dilations,
    };
    let [oh, ow] = shape
        .output_size()
        .map_err(|e| candle_core::Error::Msg(format!("ConvTranspose: {e}")))?;
    let (storage, layout) = x.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
        return Ok(None);
    };
    let threads = candle_core::utils::get_num_threads();
    let y = conv_transpose2d(&shape, &data[start..end], weights, threads)
        .map_err(|e| candle_core::Error::Msg(format!("ConvTranspose: {e}")))?;
    drop(storage);
    let y = if one_d {
        Tensor::from_vec(y, (shape.batch, out_channels, ow), x.device())?
    } else {
        Tensor::from_vec(y, (shape.batch, out_channels, oh, ow), x.device())?
    };
    Ok(Some(y))
}

pub(super) fn conv_transpose(ctx: &NodeCtx<'_>) -> Result<Kernel> {
    let a = ctx.attrs();
    let groups = a.int("group", 1).max(1) as usize;
    let Some(w) = ctx.const_input(1).cloned() else {
        bail!("ConvTranspose with non-constant weights is not supported")
    };
    let kernel: Vec<usize> = w.dims().get(2..).unwrap_or_default().to_vec();
    if kernel.is_empty() || kernel.len() > 2 {
        bail!(
            "ConvTranspose with {} spatial dimensions is not supported (1-D and 2-D are)",
            kernel.len()
        )
    }
    let sp = Spatial::read(ctx, kernel.clone())?;
    let n = kernel.len();
    let output_padding: Vec<usize> = match a.ints("output_padding") {
        Some(v) if !v.is_empty() => v.iter().map(|&x| x.max(0) as usize).collect(),
        _ => vec![0; n],
    };
    let output_shape: Option<Vec<usize>> = a.ints("output_shape").filter(|v| !v.is_empty()).map(|v| {
        let v: Vec<usize> = v.iter().map(|&x| x.max(0) as usize).collect();
        v[v.len().saturating_sub(n)..].to_vec()
    });
    let c_in = w.dims()[0];
    if c_in % groups != 0 {
        bail!("ConvTranspose: {c_in} input channels do not split into {groups} groups")
    }
    // Per-group weights, contiguous, so that each group is one candle call.
    let w_groups: Vec<Tensor> = (0..groups)
        .map(|g| w.narrow(0, g * c_in / groups, c_in / groups)?.contiguous())
        .collect::<Result<_>>()?;
    let b_const = ctx
        .const_input(2)
        .map(|b| b.reshape(bias_shape(n + 2, b.elem_count())))
        .transpose()?;
    // FP32 weights for accel-kernels' transposed convolution (the full result, cropped below).
    let w_f32 = if w.dtype() == DType::F32 {
        Some(w.flatten_all()?.to_vec1::<f32>()?)
    } else {
        None
    };
    let w_dims = w.dims().to_vec();
    let native = all_equal(&sp.strides) && all_equal(&sp.dilations);
    let flipped = if native {
        None
    } else {
        Some(flipped_kernel(&w, groups)?)
    };
    Ok(Kernel::new(move |i| {
        let x = arg(i, 0)?.contiguous()?;
        if x.rank() != n + 2 {
            bail!("ConvTranspose input of rank {} for a {n}-D kernel", x.rank())
        }
        let sizes = &x.dims()[2..];
        if sizes.contains(&0) {
            bail!("ConvTranspose input has an empty spatial dimension: {sizes:?}")
        }
        // Full output size per axis, before cropping the pads.
        let full: Vec<usize> = (0..n)
            .map(|k| (sizes[k] - 1) * sp.strides[k] + (sp.kernel[k] - 1) * sp.dilations[k] + 1)
            .collect();
        let crops: Vec<(usize, usize)> = (0..n)
            .map(|k| {
                let total_out = full[k] + output_padding[k];
                match (&output_shape, sp.auto_pad.as_str()) {
                    (Some(os), mode) => {
                        let total = total_out.saturating_sub(os[k]);
                        let small = total / 2;
                        if mode == "SAME_LOWER" {
                            (total - small, small)
                        } else {
                            (small, total - small)
                        }
                    }
                    (None, "SAME_UPPER" | "SAME_LOWER") => {
                        let target = sizes[k] * sp.strides[k];
                        let total = total_out.saturating_sub(target);
                        let small = total / 2;
                        if sp.auto_pad == "SAME_UPPER" {
                            (small, total - small)
                        } else {
                            (total - small, small)
                        }
                    }
                    (None, _) => (sp.pads[k], sp.pads[k + n]),
                }
            })
            .collect();
        let native = match &w_f32 {
            Some(weights) => native_conv_transpose(&x, weights, w_dims[1] * groups, groups, &sp)?,
            None => None,
        };
        let mut y = match (native, &flipped) {
            (Some(y), _) => y,
            (None, None) => {
                let (s, d) = (sp.strides[0], sp.dilations[0]);
                let chunks: Vec<Tensor> = (0..groups)
                    .map(|g| {
                        let xg = if groups == 1 {
                            x.clone()
                        } else {
                            x.narrow(1, g * c_in / groups, c_in / groups)?.contiguous()?
                        };
                        if n == 1 {
                            xg.conv_transpose1d(&w_groups[g], 0, 0, s, d, 1)
                        } else {
                            xg.conv_transpose2d(&w_groups[g], 0, 0, s, d)
                        }
                    })
                    .collect::<Result<_>>()?;
                Tensor::cat(&chunks, 1)?
            }
            (None, Some(wf)) => {
                // Zero-stuff the input by the strides, pad by the dilated kernel extent, and run an
                // ordinary convolution with the flipped, transposed kernel.
                let mut z = x.clone();
                for k in 0..n {
                    z = stuff_zeros(&z, 2 + k, sp.strides[k])?;
                    let edge = (sp.kernel[k] - 1) * sp.dilations[k];
                    z = pad_constant(&z, 2 + k, edge, edge, 0.0)?;
                }
                let wd = dilate_kernel(wf, &sp.dilations)?.contiguous()?;
                if n == 1 {
                    z.conv1d(&wd, 0, 1, 1, groups)?
                } else {
                    z.conv2d(&wd, 0, 1, 1, groups)?
                }
            }
        };
        for k in 0..n {
            let axis = 2 + k;
            if output_padding[k] > 0 {
                y = pad_constant(&y, axis, 0, output_padding[k], 0.0)?;
            }
            let (b, e) = crops[k];
            let len = y.dims()[axis]
                .checked_sub(b + e)
                .ok_or_else(|| candle_core::Error::Msg("ConvTranspose pads exceed the output".into()))?;
            y = y.narrow(axis, b, len)?;
        }
        Ok(vec![add_bias(y, b_const.as_ref(), opt(i, 2))?])
    }))
}

/// Inserts `s - 1` zeros after every element but the last along `axis`.
fn stuff_zeros(x: &Tensor, axis: usize, s: usize) -> Result<Tensor> {
    if s == 1 {
        return Ok(x.clone());
    }
    let n = x.dims()[axis];
    let y = x.unsqueeze(axis + 1)?;
    let y = pad_constant(&y, axis + 1, 0, s - 1, 0.0)?;
    let mut dims = x.dims().to_vec();
    dims[axis] = n * s;
    y.reshape(dims)?.narrow(axis, 0, (n - 1) * s + 1)
}

/// ConvTranspose weights `(C, M/g, k...)` as Conv weights `(M, C/g, k...)`, spatially flipped.
fn flipped_kernel(w: &Tensor, groups: usize) -> Result<Tensor> {
    let c = w.dims()[0];
    let spatial: Vec<usize> = (2..w.rank()).collect();
    let w = w.flip(&spatial)?;
    let per = c / groups;
    let parts: Vec<Tensor> = (0..groups)
        .map(|g| w.narrow(0, g * per, per)?.transpose(0, 1)?.contiguous())
        .collect::<Result<_>>()?;
    Tensor::cat(&parts, 0)
}

//! Element-wise operators: arithmetic with numpy broadcasting, comparisons and logic (booleans are
//! `U8`), activations, `Where`, `Cast` and `Clip`. candle's float-only unary functions panic on
//! integers, so integer inputs take exact integer formulations or an explicit error instead.

use accel_kernels::activation;
use candle_core::{CpuStorage, DType, Storage, Tensor, bail};

use super::{Kernel, NodeCtx, Result, arg, broadcast_shape, host_scalar, is_float, opt, scalar};
use crate::backend::candle::onnx::internal_dtype;

pub(super) fn compile(ctx: &NodeCtx<'_>) -> Result<Option<Kernel>> {
    let a = ctx.attrs();
    let op = ctx.node.op_type.as_str();
    let k = match op {
        "Add" => binary(|x, y| x.broadcast_add(y)),
        "Sub" => binary(|x, y| x.broadcast_sub(y)),
        "Mul" => binary(|x, y| x.broadcast_mul(y)),
        "Div" => binary(|x, y| x.broadcast_div(y)),
        "Equal" => binary(|x, y| x.broadcast_eq(y)),
        "Less" => binary(|x, y| x.broadcast_lt(y)),
        "LessOrEqual" => binary(|x, y| x.broadcast_le(y)),
        "Greater" => binary(|x, y| x.broadcast_gt(y)),
        "GreaterOrEqual" => binary(|x, y| x.broadcast_ge(y)),
        "And" => binary(|x, y| x.broadcast_mul(y)),
        "Or" => binary(|x, y| x.broadcast_maximum(y)),
        "Xor" => binary(|x, y| x.broadcast_ne(y)),
        "Max" => variadic(|x, y| x.broadcast_maximum(y), false),
        "Min" => variadic(|x, y| x.broadcast_minimum(y), false),
        "Sum" => variadic(|x, y| x.broadcast_add(y), false),
        "Mean" => variadic(|x, y| x.broadcast_add(y), true),
        "Pow" => pow(ctx)?,
        "Mod" => {
            let fmod = a.int("fmod", 0) != 0;
            binary(move |x, y| modulo(x, y, fmod))
        }
        "PRelu" => binary(|x, slope| {
            let neg = x.broadcast_mul(slope)?;
            let pos = x.broadcast_as(neg.shape())?;
            pos.ge(&pos.zeros_like()?)?.where_cond(&pos, &neg)
        }),
        "Where" => Kernel::new(|i| {
            let (c, x, y) = (arg(i, 0)?, arg(i, 1)?, arg(i, 2)?);
            let shape = broadcast_shape(&broadcast_shape(c.dims(), x.dims())?, y.dims())?;
            let c = c.broadcast_as(shape.as_slice())?;
            let c = if c.dtype() == DType::U8 { c } else { c.ne(0.0)? };
            Ok(vec![c.where_cond(
                &x.broadcast_as(shape.as_slice())?,
                &y.broadcast_as(shape.as_slice())?,
            )?])
        }),
        "Not" => unary(|x| x.eq(0.0)),
        "Neg" => unary(|x| {
            if is_float(x.dtype()) {
                x.neg()
            } else {
                x.zeros_like()?.sub(x)
            }
        }),
        "Abs" => unary(|x| {
            if is_float(x.dtype()) {
                x.abs()
            } else {
                x.lt(0.0)?.where_cond(&x.zeros_like()?.sub(x)?, x)
            }
        }),
        "Sign" => unary(|x| {
            let pos = x.gt(0.0)?.to_dtype(x.dtype())?;
            let neg = x.lt(0.0)?.to_dtype(x.dtype())?;
            pos.sub(&neg)
        }),
        "Relu" => unary(|x| if is_float(x.dtype()) { x.relu() } else { x.maximum(0.0) }),
        "Identity" | "Dropout" => Kernel::new(|i| {
            let x = arg(i, 0)?;
            Ok(vec![x.clone(), x.ones_like()?.to_dtype(DType::U8)?])
        }),
        "Sigmoid" => float_unary(op, sigmoid),
        "Tanh" => float_unary(op, tanh),
        "Exp" => float_unary(op, |x| match map_f32(x, activation::exp)? {
            Some(y) => Ok(y),
            None => x.exp(),
        }),
        "Log" => float_unary(op, |x| x.log()),
        "Sqrt" => float_unary(op, |x| x.sqrt()),
        "Reciprocal" => float_unary(op, |x| x.recip()),
        "Erf" => float_unary(op, erf),
        "Sin" => float_unary(op, |x| x.sin()),
        "Cos" => float_unary(op, |x| x.cos()),
        "Floor" => float_unary(op, |x| x.floor()),
        "Ceil" => float_unary(op, |x| x.ceil()),
        "Round" => float_unary(op, round_half_even),
        "Softplus" => float_unary(op, |x| {
            // log(1 + e^x), computed as max(x, 0) + log(1 + e^-|x|) so that large x does not overflow.
            x.relu()?.add(&((x.abs()?.neg()?.exp()? + 1.0)?.log()?))
        }),
        "Softsign" => float_unary(op, |x| x.div(&(x.abs()? + 1.0)?)),
        "HardSigmoid" => {
            let (alpha, beta) = (a.float("alpha", 0.2) as f64, a.float("beta", 0.5) as f64);
            float_unary(op, move |x| x.affine(alpha, beta)?.clamp(0.0, 1.0))
        }
        "HardSwish" => float_unary(op, |x| x.mul(&x.affine(1.0 / 6.0, 0.5)?.clamp(0.0, 1.0)?)),
        "LeakyRelu" => {
            let alpha = a.float("alpha", 0.01) as f64;
            float_unary(op, move |x| x.ge(0.0)?.where_cond(x, &x.affine(alpha, 0.0)?))
        }
        "Elu" => {
            let alpha = a.float("alpha", 1.0) as f64;
            float_unary(op, move |x| {
                x.ge(0.0)?.where_cond(x, &(x.exp()? - 1.0)?.affine(alpha, 0.0)?)
            })
        }
        "Selu" => {
            let alpha = a.float("alpha", 1.673_263_2) as f64;
            let gamma = a.float("gamma", 1.050_701) as f64;
            float_unary(op, move |x| {
                x.ge(0.0)?
                    .where_cond(x, &(x.exp()? - 1.0)?.affine(alpha, 0.0)?)?
                    .affine(gamma, 0.0)
            })
        }
        "Gelu" => {
            let tanh = a.string("approximate").as_deref() == Some("tanh");
            float_unary(op, move |x| if tanh { x.gelu() } else { x.gelu_erf() })
        }
        "Cast" => {
            let to = internal_dtype(a.int("to", 0) as i32).map_err(candle_core::Error::Msg)?;
            Kernel::new(move |i| Ok(vec![cast(arg(i, 0)?, to)?]))
        }
        "CastLike" => Kernel::new(|i| Ok(vec![cast(arg(i, 0)?, arg(i, 1)?.dtype())?])),
        "Clip" => clip(ctx),
        _ => return Ok(None),
    };
    Ok(Some(k))
}

fn unary(f: impl Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static) -> Kernel {
    Kernel::new(move |i| Ok(vec![f(arg(i, 0)?)?]))
}

/// A unary function candle defines for floats only; integers are refused with a clear error.
/// Sigmoid: accel-kernels' vectorised form on FP32 CPU tensors, candle's otherwise.
pub(super) fn sigmoid(x: &Tensor) -> Result<Tensor> {
    match map_f32(x, activation::sigmoid)? {
        Some(y) => Ok(y),
        None => candle_nn::ops::sigmoid(&x.contiguous()?),
    }
}

/// Erf: accel-kernels' vectorised form on FP32 CPU tensors, candle's otherwise.
fn erf(x: &Tensor) -> Result<Tensor> {
    match map_f32(x, activation::erf)? {
        Some(y) => Ok(y),
        None => x.erf(),
    }
}

/// Tanh: accel-kernels' vectorised form on FP32 CPU tensors, candle's otherwise.
pub(super) fn tanh(x: &Tensor) -> Result<Tensor> {
    match map_f32(x, activation::tanh)? {
        Some(y) => Ok(y),
        None => x.tanh(),
    }
}

/// `f` over the elements of an FP32 tensor on the CPU (made contiguous), or `None` for other tensors.
pub(crate) fn map_f32(x: &Tensor, f: impl Fn(&[f32], &mut [f32])) -> Result<Option<Tensor>> {
    map_f32_rows(x, x.elem_count(), f)?
        .map(|y| y.reshape(x.shape()))
        .transpose()
}

/// `f` over a CPU FP32 tensor's contiguous data into a new flat tensor of `len` elements (a
/// product's output, whose shape the caller then gives it); `None` where the tensor is not one.
pub(crate) fn map_f32_rows(x: &Tensor, len: usize, f: impl Fn(&[f32], &mut [f32])) -> Result<Option<Tensor>> {
    if x.dtype() != DType::F32 || !x.device().is_cpu() {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
        return Ok(None);
    };
    let mut out = vec![0f32; len];
    f(&data[start..end], &mut out);
    drop(storage);
    Tensor::from_vec(out, len, x.device()).map(Some)
}

fn float_unary(op: &str, f: impl Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static) -> Kernel {
    let op = op.to_string();
    Kernel::new(move |i| {
        let x = arg(i, 0)?;
        if !is_float(x.dtype()) {
            bail!("{op} on {:?} tensors is not supported", x.dtype())
        }
        Ok(vec![f(x)?])
    })
}

fn binary(f: impl Fn(&Tensor, &Tensor) -> Result<Tensor> + Send + Sync + 'static) -> Kernel {
    Kernel::new(move |i| {
        let (x, y) = (arg(i, 0)?, arg(i, 1)?);
        let y = if y.dtype() == x.dtype() {
            y.clone()
        } else {
            y.to_dtype(x.dtype())?
        };
        Ok(vec![f(x, &y)?])
    })
}

fn variadic(f: impl Fn(&Tensor, &Tensor) -> Result<Tensor> + Send + Sync + 'static, mean: bool) -> Kernel {
    Kernel::new(move |i| {
        let mut acc = arg(i, 0)?.clone();
        let mut n = 1usize;
        for t in i.iter().skip(1).flatten() {
            acc = f(&acc, t)?;
            n += 1;
        }
        if mean {
            acc = acc.affine(1.0 / n as f64, 0.0)?;
        }
        Ok(vec![acc])
    })
}

/// ONNX `Round`: halves go to the even neighbour (candle's `round` takes them away from zero).
fn round_half_even(x: &Tensor) -> Result<Tensor> {
    let rounded = x.round()?;
    let is_half = x.sub(&x.floor()?)?.eq(0.5)?;
    let even = x.affine(0.5, 0.0)?.round()?.affine(2.0, 0.0)?;
    is_half.where_cond(&even, &rounded)
}

fn modulo(x: &Tensor, y: &Tensor, fmod: bool) -> Result<Tensor> {
    if is_float(x.dtype()) && !fmod {
        bail!("Mod with fmod=0 on floats is not defined by ONNX")
    }
    let q = x.broadcast_div(y)?;
    // Integer division truncates; fmod keeps the dividend's sign, Python-style mod the divisor's.
    let q = if is_float(x.dtype()) {
        (q.ge(0.0)?.where_cond(&q.floor()?, &q.ceil()?))?
    } else {
        q
    };
    let r = x.broadcast_sub(&q.broadcast_mul(y)?)?;
    if fmod {
        return Ok(r);
    }
    let y = y.broadcast_as(r.shape())?;
    let fix = r.ne(0.0)?.mul(&r.lt(0.0)?.ne(&y.lt(0.0)?)?)?;
    fix.where_cond(&r.add(&y)?, &r)
}

fn pow(ctx: &NodeCtx<'_>) -> Result<Kernel> {
    if let Some(e) = ctx.const_input(1).filter(|e| e.elem_count() == 1) {
        let e = host_scalar(e)?;
        if e.fract() == 0.0 && e.abs() <= 8.0 {
            let n = e as i32;
            return Ok(Kernel::new(move |i| Ok(vec![int_power(arg(i, 0)?, n)?])));
        }
        if e == 0.5 {
            return Ok(Kernel::new(|i| Ok(vec![arg(i, 0)?.sqrt()?])));
        }
    }
    Ok(Kernel::new(|i| {
        let (x, e) = (arg(i, 0)?, arg(i, 1)?);
        if !is_float(x.dtype()) {
            bail!("Pow with an integer base and a variable exponent is not supported")
        }
        let e = e.to_dtype(x.dtype())?;
        // |x|^e, then the sign of odd integer exponents; negative bases with fractional exponents
        // give NaN, as in ONNX Runtime.
        let magnitude = x.abs()?.broadcast_pow(&e)?;
        let odd = e.affine(0.5, 0.0)?.floor()?.affine(2.0, 0.0)?.ne(&e.floor()?)?;
        let integral = e.eq(&e.floor()?)?;
        let negative = x.lt(0.0)?.broadcast_as(magnitude.shape())?;
        let flip = negative.mul(&odd.broadcast_as(magnitude.shape())?)?;
        let nan = negative.mul(&integral.eq(0.0)?.broadcast_as(magnitude.shape())?)?;
        let out = flip.where_cond(&magnitude.neg()?, &magnitude)?;
        let nans = scalar(f64::NAN, x.dtype(), x.device())?.broadcast_as(out.shape())?;
        Ok(vec![nan.where_cond(&nans, &out)?])
    }))
}

/// `x^n` by repeated multiplication: exact for integers and for negative bases.
fn int_power(x: &Tensor, n: i32) -> Result<Tensor> {
    if n == 0 {
        return x.ones_like();
    }
    let mut acc = x.clone();
    for _ in 1..n.unsigned_abs() {
        acc = acc.mul(x)?;
    }
    if n < 0 {
        if !is_float(x.dtype()) {
            bail!("Pow with an integer base and a negative exponent is not supported")
        }
        acc = acc.recip()?;
    }
    Ok(acc)
}

/// ONNX `Cast`: float to integer truncates, anything to bool is `!= 0`.
pub(super) fn cast(x: &Tensor, to: DType) -> Result<Tensor> {
    if x.dtype() == to {
        return Ok(x.clone());
    }
    if to == DType::U8 {
        return x.ne(0.0);
    }
    x.to_dtype(to)
}

fn clip(ctx: &NodeCtx<'_>) -> Kernel {
    let a = ctx.attrs();
    // Before opset 11 the bounds are attributes; from 11 they are optional inputs.
    let (amin, amax) = if ctx.opset < 11 {
        (
            Some(a.float("min", f32::MIN) as f64),
            Some(a.float("max", f32::MAX) as f64),
        )
    } else {
        (None, None)
    };
    Kernel::new(move |i| {
        let x = arg(i, 0)?;
        let mut y = x.clone();
        let lo = match opt(i, 1) {
            Some(t) => Some(host_scalar(t)?),
            None => amin,
        };
        let hi = match opt(i, 2) {
            Some(t) => Some(host_scalar(t)?),
            None => amax,
        };
        // FP32 on the CPU: one pass (candle's maximum then minimum make two, each with a new tensor).
        let (l, h) = (
            lo.map_or(f32::NEG_INFINITY, |v| v as f32),
            hi.map_or(f32::INFINITY, |v| v as f32),
        );
        if l <= h
            && let Some(y) = map_f32(x, |src, dst| {
                for (o, &v) in dst.iter_mut().zip(src) {
                    *o = v.max(l).min(h);
                }
            })?
        {
            return Ok(vec![y]);
        }
        if let Some(lo) = lo {
            y = y.maximum(lo)?;
        }
        if let Some(hi) = hi {
            y = y.minimum(hi)?;
        }
        Ok(vec![y])
    })
}

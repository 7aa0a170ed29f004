//! MatMul (numpy semantics: 1-D promotion, broadcast batch dimensions) and Gemm. Constant right-hand
//! sides are prepared at load: Gemm's `transB` weights are transposed once into a contiguous
//! (in, out) matrix, which candle's CPU matmul runs about twice as fast as a transposed view.

use candle_core::{Tensor, bail};

use super::{Kernel, NodeCtx, Result, arg, is_float, opt};

fn prepare(t: &Tensor) -> Result<Tensor> {
    if !is_float(t.dtype()) {
        bail!("matrix products of {:?} tensors are not supported", t.dtype())
    }
    t.contiguous()
}

/// numpy `matmul` of two tensors.
pub(super) fn matmul_tensors(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let a_vec = a.rank() == 1;
    let b_vec = b.rank() == 1;
    let a2 = if a_vec { a.unsqueeze(0)? } else { prepare(a)? };
    let b2 = if b_vec { b.unsqueeze(1)? } else { prepare(b)? };
    let y = if a2.rank() == 2 && b2.rank() == 2 {
        a2.matmul(&b2)?
    } else if b2.rank() == 2 {
        // (..., m, k) x (k, n): fold the batch dimensions into rows, one GEMM.
        let dims = a2.dims().to_vec();
        let (m, k) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let rows: usize = dims[..dims.len() - 2].iter().product::<usize>() * m;
        let y = a2.reshape((rows, k))?.matmul(&b2)?;
        let mut out = dims[..dims.len() - 1].to_vec();
        out.push(b2.dims()[1]);
        y.reshape(out)?
    } else {
        a2.broadcast_matmul(&b2)?
    };
    let y = if a_vec { y.squeeze(y.rank() - 2)? } else { y };
    if b_vec { y.squeeze(y.rank() - 1) } else { Ok(y) }
}

pub(super) fn matmul(ctx: &NodeCtx<'_>) -> Result<Kernel> {
    let b_const = ctx.const_input(1).map(prepare).transpose()?;
    Ok(Kernel::new(move |i| {
        let a = arg(i, 0)?;
        let b = match &b_const {
            Some(b) => b,
            None => arg(i, 1)?,
        };
        Ok(vec![matmul_tensors(a, b)?])
    }))
}

pub(super) fn gemm(ctx: &NodeCtx<'_>) -> Result<Kernel> {
    let attrs = ctx.attrs();
    let alpha = attrs.float("alpha", 1.0) as f64;
    let beta = attrs.float("beta", 1.0) as f64;
    let trans_a = attrs.int("transA", 0) != 0;
    let trans_b = attrs.int("transB", 0) != 0;
    let orient_b = move |b: &Tensor| -> Result<Tensor> { if trans_b { prepare(&b.t()?) } else { prepare(b) } };
    let b_const = ctx.const_input(1).map(orient_b).transpose()?;
    // Fold alpha into a constant B and beta into a constant C once.
    let (b_const, alpha) = match b_const {
        Some(b) if alpha != 1.0 => (Some(b.affine(alpha, 0.0)?), 1.0),
        other => (other, alpha),
    };
    let c_const = ctx
        .const_input(2)
        .map(|c| {
            if beta == 1.0 {
                Ok(c.clone())
            } else {
                c.affine(beta, 0.0)
            }
        })
        .transpose()?;
    let c_scaled = c_const.is_some();
    Ok(Kernel::new(move |i| {
        let a = arg(i, 0)?;
        let a = if trans_a { a.t()? } else { a.clone() };
        let b = match &b_const {
            Some(b) => b.clone(),
            None => orient_b(arg(i, 1)?)?,
        };
        let mut y = prepare(&a)?.matmul(&b)?;
        if alpha != 1.0 {
            y = y.affine(alpha, 0.0)?;
        }
        let c = match &c_const {
            Some(c) => Some(c.clone()),
            None => opt(i, 2).cloned(),
        };
        if let Some(c) = c {
            let c = if beta != 1.0 && !c_scaled {
                c.affine(beta, 0.0)?
            } else {
                c
            };
            y = y.broadcast_add(&c)?;
        }
        Ok(vec![y])
    }))
}

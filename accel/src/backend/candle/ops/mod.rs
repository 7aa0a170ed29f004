//! ONNX operators over candle tensors. Each operator is compiled once, at load time, into a kernel: a
//! closure that holds the node's parsed attributes and any weights prepared for it (transposed,
//! folded), so that execution does no attribute parsing and no weight conversion. An operator that is
//! not here makes the model UNAVAILABLE with the operator named; nothing is guessed.

mod conv;
mod elementwise;
pub(crate) use elementwise::{map_f32, map_f32_rows};
mod matmul;
pub(super) mod norm;
mod pool;
mod reduce;
mod resize;
mod rnn;
mod shape;

use std::fmt;

use candle_core::{DType, Device, Tensor, bail};
use candle_onnx::onnx::NodeProto;

use super::guard::Guard;
use super::onnx::Attrs;
use crate::core::ModelFile;

pub(super) type Result<T> = candle_core::Result<T>;

type KernelFn = dyn Fn(&[Option<&Tensor>]) -> Result<Vec<Tensor>> + Send + Sync;
type GuardedFn = dyn Fn(&[Option<&Tensor>], &Guard<'_>) -> Result<Vec<Tensor>> + Send + Sync;

/// A compiled operator: call it with the node's inputs (absent optional inputs are `None`).
/// Operators that run nested plans (If, Loop) see the execution's guard.
pub(super) enum Kernel {
    Plain(Box<KernelFn>),
    Guarded(Box<GuardedFn>),
}

impl Kernel {
    pub(super) fn new(f: impl Fn(&[Option<&Tensor>]) -> Result<Vec<Tensor>> + Send + Sync + 'static) -> Self {
        Kernel::Plain(Box::new(f))
    }

    pub(super) fn guarded(
        f: impl Fn(&[Option<&Tensor>], &Guard<'_>) -> Result<Vec<Tensor>> + Send + Sync + 'static,
    ) -> Self {
        Kernel::Guarded(Box::new(f))
    }

    pub(super) fn run(&self, inputs: &[Option<&Tensor>], guard: &Guard<'_>) -> Result<Vec<Tensor>> {
        match self {
            Kernel::Plain(f) => f(inputs),
            Kernel::Guarded(f) => f(inputs, guard),
        }
    }
}

impl fmt::Debug for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kernel")
    }
}

/// What an operator sees when it is compiled.
pub(super) struct NodeCtx<'a> {
    pub node: &'a NodeProto,
    /// The model's opset version for the default ONNX domain.
    pub opset: i64,
    /// For each input, its value if it is known at load time (an initializer or a folded constant).
    pub consts: Vec<Option<&'a Tensor>>,
    /// The model file (external data of Constant values is resolved next to it).
    pub file: &'a ModelFile,
    pub device: &'a Device,
}

impl<'a> NodeCtx<'a> {
    pub(super) fn attrs(&self) -> Attrs<'a> {
        Attrs(self.node)
    }

    /// Whether input `i` is given (ONNX marks a skipped optional input with an empty name).
    pub(super) fn has_input(&self, i: usize) -> bool {
        self.node.input.get(i).is_some_and(|n| !n.is_empty())
    }

    pub(super) fn const_input(&self, i: usize) -> Option<&'a Tensor> {
        self.consts.get(i).copied().flatten()
    }

    pub(super) fn output_count(&self) -> usize {
        self.node.output.len()
    }
}

/// Operators ONNX defines for floating-point tensors only, whose candle implementations reach
/// functions (sqrt, exp, tanh...) that candle does not define for integers and panics on: an integer
/// input is refused with an error instead.
/// Each with the inputs that are integers by definition (sequence lengths, axes).
const FLOAT_ONLY: &[(&str, &[usize])] = &[
    ("BatchNormalization", &[]),
    ("InstanceNormalization", &[]),
    ("LayerNormalization", &[]),
    ("Softmax", &[]),
    ("LogSoftmax", &[]),
    ("LSTM", &[4]),
    ("GRU", &[4]),
    ("RNN", &[4]),
    ("Conv", &[]),
    ("ConvTranspose", &[]),
    ("AveragePool", &[]),
    ("GlobalAveragePool", &[]),
    ("ReduceL2", &[1]),
    ("ReduceLogSumExp", &[1]),
    ("ReduceLogSum", &[1]),
];

/// The first input of `inputs` (not one of `integers`) that is not floating point.
fn not_float<'t>(inputs: &[Option<&'t Tensor>], integers: &[usize]) -> Option<&'t Tensor> {
    inputs
        .iter()
        .enumerate()
        .filter(|(k, _)| !integers.contains(k))
        .find_map(|(_, t)| t.filter(|t| !is_float(t.dtype())))
}

/// `kernel`, refusing inputs that are not floating point.
fn floats_only(op: &str, integers: &'static [usize], kernel: Kernel) -> Kernel {
    let op = op.to_string();
    Kernel::guarded(move |inputs, guard| {
        if let Some(t) = not_float(inputs, integers) {
            bail!(
                "{op} on {:?} tensors is not supported (ONNX defines it for floating point)",
                t.dtype()
            )
        }
        kernel.run(inputs, guard)
    })
}

/// Compiles `ctx.node`, or returns `Ok(None)` when the operator is not supported.
pub(super) fn compile(ctx: &NodeCtx<'_>) -> Result<Option<Kernel>> {
    let op = ctx.node.op_type.as_str();
    if let Some(&(_, integers)) = FLOAT_ONLY.iter().find(|(name, _)| *name == op) {
        if let Some(t) = not_float(&ctx.consts, integers) {
            bail!(
                "{op} with {:?} parameters is not supported (ONNX defines it for floating point)",
                t.dtype()
            )
        }
        return Ok(compile_op(ctx)?.map(|k| floats_only(op, integers, k)));
    }
    compile_op(ctx)
}

fn compile_op(ctx: &NodeCtx<'_>) -> Result<Option<Kernel>> {
    if let Some(k) = elementwise::compile(ctx)? {
        return Ok(Some(k));
    }
    if let Some(k) = shape::compile(ctx)? {
        return Ok(Some(k));
    }
    Ok(match ctx.node.op_type.as_str() {
        "MatMul" => Some(matmul::matmul(ctx)?),
        "Gemm" => Some(matmul::gemm(ctx)?),
        "Conv" => Some(conv::conv(ctx)?),
        "ConvTranspose" => Some(conv::conv_transpose(ctx)?),
        "MaxPool" => Some(pool::pool(ctx, pool::Kind::Max)?),
        "AveragePool" => Some(pool::pool(ctx, pool::Kind::Average)?),
        "GlobalAveragePool" => Some(pool::global(pool::Kind::Average)),
        "GlobalMaxPool" => Some(pool::global(pool::Kind::Max)),
        "BatchNormalization" => Some(norm::batch_norm(ctx)?),
        "InstanceNormalization" => Some(norm::instance_norm(ctx)?),
        "LayerNormalization" => Some(norm::layer_norm(ctx)?),
        "Softmax" => Some(norm::softmax(ctx, false)),
        "LogSoftmax" => Some(norm::softmax(ctx, true)),
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL1" | "ReduceL2"
        | "ReduceSumSquare" | "ReduceLogSumExp" | "ReduceLogSum" => Some(reduce::reduce(ctx)?),
        "ArgMax" => Some(reduce::arg_extreme(ctx, true)),
        "ArgMin" => Some(reduce::arg_extreme(ctx, false)),
        "Resize" | "Upsample" => Some(resize::resize(ctx)?),
        "LSTM" => Some(rnn::lstm(ctx)?),
        "GRU" => Some(rnn::gru(ctx)?),
        "RNN" => Some(rnn::rnn(ctx)?),
        _ => None,
    })
}

// ---- helpers shared by the operator modules -------------------------------------------------------

/// Input `i`, which the operator requires.
pub(super) fn arg<'t>(inputs: &[Option<&'t Tensor>], i: usize) -> Result<&'t Tensor> {
    match inputs.get(i).copied().flatten() {
        Some(t) => Ok(t),
        None => bail!("required input {i} is missing"),
    }
}

/// Optional input `i`.
pub(super) fn opt<'t>(inputs: &[Option<&'t Tensor>], i: usize) -> Option<&'t Tensor> {
    inputs.get(i).copied().flatten()
}

/// The values of a (small) tensor as integers on the host.
pub(super) fn host_i64(t: &Tensor) -> Result<Vec<i64>> {
    t.flatten_all()?.to_dtype(DType::I64)?.to_vec1::<i64>()
}

/// The values of a (small) tensor as floats on the host.
pub(super) fn host_f64(t: &Tensor) -> Result<Vec<f64>> {
    t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()
}

/// A single value as a float.
pub(super) fn host_scalar(t: &Tensor) -> Result<f64> {
    match host_f64(t)?.as_slice() {
        [v] => Ok(*v),
        v => bail!("expected a single value, got {} values", v.len()),
    }
}

/// Normalises a possibly negative axis for a tensor of rank `rank` (a scalar has none: callers index
/// the tensor's dimensions with it).
pub(super) fn axis(a: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    let n = if a < 0 { a.saturating_add(r) } else { a };
    if n < 0 || n >= r {
        bail!("axis {a} is out of range for rank {rank}")
    }
    Ok(n as usize)
}

/// The largest tensor an operator may create from shapes computed at run time (which can depend on
/// a client's input values): 2^30 elements. Anything larger is refused with an error instead of an
/// allocation that could take the process down.
pub(super) const MAX_CREATED_ELEMENTS: usize = 1 << 30;

/// Refuses to create a tensor of `dims` beyond [`MAX_CREATED_ELEMENTS`].
pub(super) fn ensure_size(dims: &[usize]) -> Result<()> {
    match dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)) {
        Some(n) if n <= MAX_CREATED_ELEMENTS => Ok(()),
        _ => bail!(
            "a tensor of shape {dims:?} is larger than the {MAX_CREATED_ELEMENTS} elements an operator may create"
        ),
    }
}

/// A rank-0 tensor holding `v` in `dtype`.
pub(super) fn scalar(v: f64, dtype: DType, device: &Device) -> Result<Tensor> {
    Tensor::new(v, device)?.to_dtype(dtype)
}

pub(super) fn is_float(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
}

/// The numpy broadcast of two shapes.
pub(super) fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank { a[i + a.len() - rank] } else { 1 };
        let db = if i + b.len() >= rank { b[i + b.len() - rank] } else { 1 };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => bail!("shapes {a:?} and {b:?} cannot be broadcast together"),
        };
    }
    Ok(out)
}

/// Pads `dim` of `x` with `before`/`after` entries of `value`.
pub(super) fn pad_constant(x: &Tensor, dim: usize, before: usize, after: usize, value: f64) -> Result<Tensor> {
    if before == 0 && after == 0 {
        return Ok(x.clone());
    }
    if value == 0.0 {
        return x.pad_with_zeros(dim, before, after);
    }
    let mut parts = Vec::with_capacity(3);
    let block = |n: usize| -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        dims[dim] = n;
        scalar(value, x.dtype(), x.device())?.broadcast_as(dims)?.contiguous()
    };
    if before > 0 {
        parts.push(block(before)?);
    }
    parts.push(x.clone());
    if after > 0 {
        parts.push(block(after)?);
    }
    Tensor::cat(&parts, dim)
}

/// Positions `0, step, 2*step, ...` (`count` of them) along `dim`.
pub(super) fn take_strided(x: &Tensor, dim: usize, start: usize, step: usize, count: usize) -> Result<Tensor> {
    if step == 1 {
        return x.narrow(dim, start, count);
    }
    let idx: Vec<i64> = (0..count).map(|i| (start + i * step) as i64).collect();
    x.index_select(&Tensor::from_vec(idx, count, x.device())?, dim)
}

//! How much one step of a plan may create, computed before it runs from its inputs' shapes (and, for
//! the operators whose output shape is an input's value — Expand, Tile, Pad, Range, ConstantOfShape,
//! Resize — from those values): its outputs and the working buffers of convolutions, pools and
//! matrix products. The guard admits the step only when what the execution holds plus this bound fits
//! its limit, so a small request that would make an operator allocate gigabytes (`X[n,1] @ Xᵀ`, a
//! broadcast `X + Xᵀ`, a Gather of a huge index list) is refused before anything is allocated.
//!
//! Every bound is an upper bound in saturating arithmetic: a shape that overflows reads as
//! `u64::MAX` bytes, which no limit admits. Operators whose output is no larger than their inputs
//! (element-wise, shape, normalisation, reductions) take twice their inputs' bytes, which leaves room
//! for their temporaries.
//!
//! A step also has its **work**, so that one that fits in memory cannot run for hours (a pooling
//! window of a million positions slid over a million points, a matrix product of two large constant
//! squares, a Loop repeating a large operator a million times): multiply-accumulates for matrix
//! products, convolutions and recurrent cells, [`SCALAR_STEP`] per window position for pools, and
//! for every other operator (work linear in its data) its byte bound. The guard sums the work of an
//! execution and refuses the step that would take it past its limit, before it runs.

use candle_core::Tensor;
use candle_onnx::onnx::NodeProto;

use super::onnx::Attrs;
use super::ops::host_i64;

type BoundFn = dyn Fn(&[Option<&Tensor>]) -> u64 + Send + Sync;

/// A step's bound: bytes, and work when the operator's is not linear in its data; both from its
/// arguments.
pub(super) struct Bound(Box<BoundFn>, Option<Box<BoundFn>>);

/// The work of one pooling-window position, in multiply-accumulates: pools run as scalar loops where
/// matrix products run vectorised.
pub(super) const SCALAR_STEP: u64 = 16;

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bound")
    }
}

impl Bound {
    pub(super) fn of(&self, args: &[Option<&Tensor>]) -> u64 {
        (self.0)(args)
    }

    /// The step's work: its own estimate, or its byte bound.
    pub(super) fn work(&self, args: &[Option<&Tensor>]) -> u64 {
        match &self.1 {
            Some(work) => work(args),
            None => self.of(args),
        }
    }

    fn new(f: impl Fn(&[Option<&Tensor>]) -> u64 + Send + Sync + 'static) -> Self {
        Bound(Box::new(f), None)
    }

    fn with_work(self, f: impl Fn(&[Option<&Tensor>]) -> u64 + Send + Sync + 'static) -> Self {
        Bound(self.0, Some(Box::new(f)))
    }

    /// At most twice the inputs' bytes: outputs no larger than the inputs, and temporaries.
    pub(super) fn inputs() -> Self {
        Bound::new(|args| inputs_bytes(args).saturating_mul(2))
    }

    /// Nothing of its own: the step's nested plans admit their own operators (If, Loop).
    fn nested() -> Self {
        Bound::new(|_| 0).with_work(|_| 0)
    }
}

/// Values above this are not read to size a bound (a shape argument is a handful of numbers).
const MAX_SHAPE_VALUES: usize = 1 << 16;

fn product(dims: impl IntoIterator<Item = u64>) -> u64 {
    dims.into_iter().fold(1u64, u64::saturating_mul)
}

fn dims_u64(t: &Tensor) -> Vec<u64> {
    t.dims().iter().map(|&d| d as u64).collect()
}

fn bytes(t: &Tensor) -> u64 {
    (t.elem_count() as u64).saturating_mul(t.dtype().size_in_bytes() as u64)
}

fn inputs_bytes(args: &[Option<&Tensor>]) -> u64 {
    args.iter().flatten().map(|t| bytes(t)).fold(0, u64::saturating_add)
}

/// The widest element among the inputs, in bytes (8 when there are none).
fn element_size(args: &[Option<&Tensor>]) -> u64 {
    args.iter()
        .flatten()
        .map(|t| t.dtype().size_in_bytes() as u64)
        .max()
        .unwrap_or(8)
}

/// The values of a small integer argument.
fn values(t: Option<&Tensor>) -> Option<Vec<i64>> {
    let t = t?;
    if t.elem_count() > MAX_SHAPE_VALUES {
        return None;
    }
    host_i64(t).ok()
}

fn float_values(t: Option<&Tensor>) -> Option<Vec<f64>> {
    let t = t?;
    if t.elem_count() > MAX_SHAPE_VALUES {
        return None;
    }
    super::ops::host_f64(t).ok()
}

/// The numpy broadcast of shapes, dimension by dimension the larger (an upper bound even for shapes
/// that do not broadcast: the kernel refuses those).
fn broadcast(shapes: &[Vec<u64>]) -> Vec<u64> {
    let rank = shapes.iter().map(Vec::len).max().unwrap_or(0);
    (0..rank)
        .map(|i| {
            shapes
                .iter()
                .filter_map(|s| (i + s.len()).checked_sub(rank).map(|k| s[k]))
                .max()
                .unwrap_or(1)
        })
        .collect()
}

fn arg<'t>(args: &[Option<&'t Tensor>], i: usize) -> Option<&'t Tensor> {
    args.get(i).copied().flatten()
}

/// The bound of `node` (compiled once, at load).
pub(super) fn for_node(node: &NodeProto, opset: i64) -> Bound {
    let a = Attrs(node);
    match node.op_type.as_str() {
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Mod" | "Equal" | "Greater" | "GreaterOrEqual" | "Less"
        | "LessOrEqual" | "And" | "Or" | "Xor" | "Where" | "Max" | "Min" | "Mean" | "Sum" | "PRelu" | "Clip"
        | "BitShift" => Bound::new(|args| {
            let shapes: Vec<Vec<u64>> = args.iter().flatten().map(|t| dims_u64(t)).collect();
            product(broadcast(&shapes))
                .saturating_mul(element_size(args))
                .saturating_mul(2)
        }),
        "MatMul" => Bound::new(matmul).with_work(matmul_work),
        "Gemm" => {
            let (ta, tb) = (a.int("transA", 0) != 0, a.int("transB", 0) != 0);
            Bound::new(move |args| {
                let (Some(x), Some(w)) = (arg(args, 0), arg(args, 1)) else {
                    return inputs_bytes(args);
                };
                let (xd, wd) = (dims_u64(x), dims_u64(w));
                let m = if ta { xd.get(1) } else { xd.first() }.copied().unwrap_or(1);
                let n = if tb { wd.first() } else { wd.get(1) }.copied().unwrap_or(1);
                product([m, n])
                    .saturating_mul(element_size(args))
                    .saturating_mul(2)
                    .saturating_add(inputs_bytes(args))
            })
            .with_work(move |args| {
                let (Some(x), Some(w)) = (arg(args, 0), arg(args, 1)) else {
                    return inputs_bytes(args);
                };
                let (xd, wd) = (dims_u64(x), dims_u64(w));
                let (m, k) = if ta {
                    (xd.get(1), xd.first())
                } else {
                    (xd.first(), xd.get(1))
                };
                let n = if tb { wd.first() } else { wd.get(1) };
                product([m, k, n].map(|d| d.copied().unwrap_or(1))).saturating_add(inputs_bytes(args))
            })
        }
        "Conv" => conv(node, false),
        "ConvTranspose" => conv(node, true),
        "MaxPool" | "AveragePool" => pool(node),
        "Expand" => Bound::new(|args| {
            let Some(x) = arg(args, 0) else { return 0 };
            let Some(target) = values(arg(args, 1)) else {
                return u64::MAX;
            };
            let target: Vec<u64> = target.iter().map(|&d| d.max(0) as u64).collect();
            product(broadcast(&[dims_u64(x), target])).saturating_mul(x.dtype().size_in_bytes() as u64)
        }),
        "Tile" => Bound::new(|args| {
            let Some(x) = arg(args, 0) else { return 0 };
            let Some(reps) = values(arg(args, 1)) else {
                return u64::MAX;
            };
            let mut dims = dims_u64(x);
            for (d, r) in dims.iter_mut().zip(&reps) {
                *d = d.saturating_mul((*r).max(0) as u64);
            }
            product(dims)
                .saturating_mul(x.dtype().size_in_bytes() as u64)
                .saturating_mul(2)
        }),
        "Pad" => {
            let attr_pads = a.ints("pads").map(<[i64]>::to_vec);
            Bound::new(move |args| {
                let Some(x) = arg(args, 0) else { return 0 };
                let pads = match arg(args, 1) {
                    Some(t) => values(Some(t)),
                    None => attr_pads.clone(),
                };
                let Some(pads) = pads else { return u64::MAX };
                let dims = dims_u64(x);
                let grown: Vec<u64> = if arg(args, 3).is_none() && pads.len() == 2 * dims.len() {
                    let r = dims.len();
                    (0..r)
                        .map(|k| {
                            dims[k]
                                .saturating_add(pads[k].max(0) as u64)
                                .saturating_add(pads[k + r].max(0) as u64)
                        })
                        .collect()
                } else {
                    // Pads over chosen axes: each axis grows by at most all the padding.
                    let total = pads.iter().map(|&p| p.max(0) as u64).fold(0, u64::saturating_add);
                    dims.iter().map(|&d| d.saturating_add(total)).collect()
                };
                product(grown)
                    .saturating_mul(x.dtype().size_in_bytes() as u64)
                    .saturating_mul(2)
            })
        }
        "Range" => Bound::new(|args| {
            let (Some(s), Some(l), Some(d)) = (
                float_values(arg(args, 0)),
                float_values(arg(args, 1)),
                float_values(arg(args, 2)),
            ) else {
                return u64::MAX;
            };
            let (Some(s), Some(l), Some(d)) = (s.first(), l.first(), d.first()) else {
                return 0;
            };
            let n = ((l - s) / d).ceil();
            if n.is_nan() || n <= 0.0 {
                0
            } else if n >= u64::MAX as f64 / 8.0 {
                u64::MAX
            } else {
                (n as u64).saturating_mul(8)
            }
        }),
        "ConstantOfShape" => {
            // The fill value's type (float unless the node says otherwise); integers are held as
            // 64-bit values inside the executor.
            let size = match a.tensor("value").map(|t| t.data_type) {
                None | Some(1) => 4,
                Some(10 | 16) => 2,
                Some(9) => 1,
                Some(_) => 8,
            };
            Bound::new(move |args| match values(arg(args, 0)) {
                Some(dims) => product(dims.iter().map(|&d| d.max(0) as u64)).saturating_mul(size),
                None => u64::MAX,
            })
        }
        "Gather" => {
            let axis = a.int("axis", 0);
            Bound::new(move |args| {
                let (Some(data), Some(indices)) = (arg(args, 0), arg(args, 1)) else {
                    return inputs_bytes(args);
                };
                let dims = dims_u64(data);
                let r = dims.len() as i64;
                let k = if axis < 0 { axis + r } else { axis };
                let Ok(k) = usize::try_from(k) else {
                    return inputs_bytes(args);
                };
                let mut out: Vec<u64> = dims.iter().take(k).copied().collect();
                out.extend(dims_u64(indices));
                out.extend(dims.iter().skip(k + 1).copied());
                product(out)
                    .saturating_mul(data.dtype().size_in_bytes() as u64)
                    .saturating_mul(2)
            })
        }
        "Resize" | "Upsample" => resize(node, opset),
        "LSTM" | "GRU" | "RNN" => {
            let hidden = a.int("hidden_size", 0).max(0) as u64;
            let dirs = if a.string("direction").as_deref() == Some("bidirectional") {
                2
            } else {
                1
            };
            let gates = match node.op_type.as_str() {
                "LSTM" => 4,
                "GRU" => 3,
                _ => 1,
            };
            Bound::new(move |args| {
                let Some(x) = arg(args, 0) else { return 0 };
                let d = dims_u64(x);
                // Outputs and per-step gates: ten hidden-sized values per step, direction and row.
                product([
                    d.first().copied().unwrap_or(1),
                    d.get(1).copied().unwrap_or(1),
                    dirs,
                    hidden,
                    10,
                ])
                .saturating_mul(x.dtype().size_in_bytes() as u64)
                .saturating_add(inputs_bytes(args).saturating_mul(2))
            })
            .with_work(move |args| {
                let Some(x) = arg(args, 0) else { return 0 };
                let d = dims_u64(x);
                // Each step, row and direction: every gate's input and recurrent products.
                let (steps, rows, features) = (
                    d.first().copied().unwrap_or(1),
                    d.get(1).copied().unwrap_or(1),
                    d.get(2).copied().unwrap_or(1),
                );
                product([steps, rows, dirs, gates, hidden, features.saturating_add(hidden)])
                    .saturating_add(inputs_bytes(args))
            })
        }
        "If" | "Loop" => Bound::nested(),
        // Outputs of up to 8 bytes per element whatever the input type.
        "Cast" | "CastLike" | "ArgMax" | "ArgMin" | "Shape" | "Size" => Bound::new(|args| {
            let elements = args
                .iter()
                .flatten()
                .map(|t| t.elem_count() as u64)
                .fold(0, u64::saturating_add);
            elements.saturating_mul(16)
        }),
        _ => Bound::inputs(),
    }
}

/// A matrix product's `[batch, m, k, n]` (numpy's rules: a vector operand gains a unit dimension,
/// batch dimensions broadcast); `None` without two non-scalar operands, which the kernel refuses.
fn matmul_dims(args: &[Option<&Tensor>]) -> Option<[u64; 4]> {
    let (x, w) = (arg(args, 0)?, arg(args, 1)?);
    let (mut xd, mut wd) = (dims_u64(x), dims_u64(w));
    if xd.is_empty() || wd.is_empty() {
        return None;
    }
    if xd.len() == 1 {
        xd.insert(0, 1);
    }
    if wd.len() == 1 {
        wd.push(1);
    }
    let (xr, wr) = (xd.len(), wd.len());
    let batch = product(broadcast(&[xd[..xr - 2].to_vec(), wd[..wr - 2].to_vec()]));
    Some([batch, xd[xr - 2], xd[xr - 1], wd[wr - 1]])
}

fn matmul(args: &[Option<&Tensor>]) -> u64 {
    let Some([batch, m, k, n]) = matmul_dims(args) else {
        return inputs_bytes(args);
    };
    // The product, and the inputs broadcast to the common batch shape.
    product([batch, m, n])
        .saturating_add(product([batch, m, k]))
        .saturating_add(product([batch, k, n]))
        .saturating_mul(element_size(args))
}

/// Multiply-accumulates of a (batched) matrix product.
fn matmul_work(args: &[Option<&Tensor>]) -> u64 {
    match matmul_dims(args) {
        Some(dims) => product(dims).saturating_add(inputs_bytes(args)),
        None => inputs_bytes(args),
    }
}

/// Padding of each spatial axis: explicit pads, or what `auto_pad` SAME can add.
fn spatial_pads(a: &Attrs<'_>, rank: usize, kernel: &[u64], strides: &[u64], dilations: &[u64]) -> Vec<u64> {
    let explicit = a.ints("pads").unwrap_or(&[]);
    let same = matches!(a.string("auto_pad").as_deref(), Some("SAME_UPPER" | "SAME_LOWER"));
    (0..rank)
        .map(|k| {
            let listed = |i: usize| explicit.get(i).map_or(0, |&p| p.max(0) as u64);
            let pads = listed(k).saturating_add(listed(k + rank));
            if same {
                let eff = kernel.get(k).copied().unwrap_or(1).saturating_sub(1);
                let eff = eff.saturating_mul(dilations.get(k).copied().unwrap_or(1));
                pads.max(eff.saturating_add(strides.get(k).copied().unwrap_or(1)))
            } else {
                pads
            }
        })
        .collect()
}

fn list(a: &Attrs<'_>, name: &str, rank: usize, default: u64) -> Vec<u64> {
    match a.ints(name) {
        Some(v) if v.len() == rank => v.iter().map(|&x| x.max(1) as u64).collect(),
        _ => vec![default; rank],
    }
}

/// A convolution's input and weight dimensions, or the bound to give when they are missing or of
/// ranks the kernel refuses.
fn conv_operands(args: &[Option<&Tensor>]) -> Result<(Vec<u64>, Vec<u64>), u64> {
    let (Some(x), Some(w)) = (arg(args, 0), arg(args, 1)) else {
        return Err(inputs_bytes(args));
    };
    let (xd, wd) = (dims_u64(x), dims_u64(w));
    if xd.len() < 3 || wd.len() != xd.len() {
        return Err(inputs_bytes(args).saturating_mul(2));
    }
    Ok((xd, wd))
}

fn conv(node: &NodeProto, transposed: bool) -> Bound {
    let work_node = node.clone();
    let node = node.clone();
    let work = move |args: &[Option<&Tensor>]| {
        let a = Attrs(&work_node);
        let (xd, wd) = match conv_operands(args) {
            Ok(dims) => dims,
            Err(fallback) => return fallback,
        };
        let rank = xd.len() - 2;
        let taps = product(wd[2..].iter().copied());
        let macs = if transposed {
            // Weights [C_in, C_out/group, k...]: each input point scatters into C_out/group · taps.
            product([xd[0], wd[0], wd[1], taps]).saturating_mul(product(xd[2..].iter().copied()))
        } else {
            // Weights [C_out, C_in/group, k...]: each output point gathers C_in/group · taps.
            let strides = list(&a, "strides", rank, 1);
            let dilations = list(&a, "dilations", rank, 1);
            let pads = spatial_pads(&a, rank, &wd[2..], &strides, &dilations);
            let out = (0..rank).map(|k| {
                let reach = wd[2 + k]
                    .saturating_sub(1)
                    .saturating_mul(dilations[k])
                    .saturating_add(1);
                xd[2 + k].saturating_add(pads[k]).saturating_sub(reach) / strides[k] + 1
            });
            product([xd[0], wd[0], wd[1], taps]).saturating_mul(product(out))
        };
        macs.saturating_add(inputs_bytes(args))
    };
    Bound::new(move |args| {
        let a = Attrs(&node);
        let (xd, wd) = match conv_operands(args) {
            Ok(dims) => dims,
            Err(fallback) => return fallback,
        };
        let rank = xd.len() - 2;
        let kernel = wd[2..].to_vec();
        let strides = list(&a, "strides", rank, 1);
        let dilations = list(&a, "dilations", rank, 1);
        let pads = spatial_pads(&a, rank, &kernel, &strides, &dilations);
        let (n, c_in) = (xd[0], xd[1]);
        let groups = a.int("group", 1).max(1) as u64;
        let size = element_size(args);
        let taps = product(kernel.iter().copied());
        if transposed {
            let c_out = wd[1].saturating_mul(groups);
            let out_padding = list(&a, "output_padding", rank, 0);
            let shape_attr = a.ints("output_shape").unwrap_or(&[]);
            let out: Vec<u64> = (0..rank)
                .map(|k| {
                    let grown = strides[k]
                        .saturating_mul(xd[2 + k])
                        .saturating_add(out_padding[k])
                        .saturating_add(kernel[k].saturating_mul(dilations[k]))
                        .saturating_add(1);
                    let given = shape_attr
                        .get(shape_attr.len().saturating_sub(rank) + k)
                        .map_or(0, |&d| d.max(0) as u64);
                    grown.max(given)
                })
                .collect();
            // The output and the columns of the GEMM (C_out·taps per input point) before col2im.
            product([n, c_out])
                .saturating_mul(product(out))
                .saturating_add(product([n, c_out, taps]).saturating_mul(product(xd[2..].iter().copied())))
                .saturating_mul(size)
                .saturating_add(inputs_bytes(args))
        } else {
            let c_out = wd[0];
            let padded: Vec<u64> = (0..rank).map(|k| xd[2 + k].saturating_add(pads[k])).collect();
            let out: Vec<u64> = (0..rank).map(|k| padded[k] / strides[k] + 1).collect();
            let out_points = product(out.iter().copied());
            // The output, the padded input, and im2col's columns (C_in·taps per output point).
            product([n, c_out, out_points])
                .saturating_add(product([n, c_in]).saturating_mul(product(padded)))
                .saturating_add(product([n, c_in, taps, out_points]))
                .saturating_mul(size)
                .saturating_add(inputs_bytes(args))
        }
    })
    .with_work(work)
}

/// A pool's shape arithmetic: (rows × channels, padded sizes, output sizes, window positions). The
/// output sizes are exact up to `ceil_mode`'s one more; the byte bound takes a looser one.
fn pool_shape(a: &Attrs<'_>, xd: &[u64]) -> (u64, Vec<u64>, Vec<u64>, u64) {
    let rank = xd.len() - 2;
    let kernel = list(a, "kernel_shape", rank, 1);
    let strides = list(a, "strides", rank, 1);
    let pads = spatial_pads(a, rank, &kernel, &strides, &[1; 2]);
    let padded: Vec<u64> = (0..rank).map(|k| xd[2 + k].saturating_add(pads[k])).collect();
    let out: Vec<u64> = (0..rank)
        .map(|k| padded[k].saturating_sub(kernel[k]) / strides[k] + 2)
        .collect();
    (product([xd[0], xd[1]]), padded, out, product(kernel))
}

fn pool(node: &NodeProto) -> Bound {
    let node = node.clone();
    let work_node = node.clone();
    Bound::new(move |args| {
        let a = Attrs(&node);
        let Some(x) = arg(args, 0) else { return 0 };
        let xd = dims_u64(x);
        if xd.len() < 3 {
            return inputs_bytes(args).saturating_mul(2);
        }
        let (plane, padded, _, _) = pool_shape(&a, &xd);
        let out = padded
            .iter()
            .zip(list(&a, "strides", xd.len() - 2, 1))
            .map(|(p, s)| p / s + 2);
        plane
            .saturating_mul(product(out).saturating_add(product(padded.iter().copied()).saturating_mul(2)))
            .saturating_mul(x.dtype().size_in_bytes() as u64)
    })
    .with_work(move |args| {
        let Some(x) = arg(args, 0) else { return 0 };
        let xd = dims_u64(x);
        if xd.len() < 3 {
            return inputs_bytes(args).saturating_mul(2);
        }
        let (plane, _, out, taps) = pool_shape(&Attrs(&work_node), &xd);
        product([plane, product(out), taps, SCALAR_STEP]).saturating_add(inputs_bytes(args))
    })
}

fn resize(node: &NodeProto, opset: i64) -> Bound {
    let a = Attrs(node);
    let legacy = node.op_type == "Upsample" || opset < 11;
    let axes = a.ints("axes").map(<[i64]>::to_vec);
    let attr_scales: Option<Vec<f64>> = a.floats("scales").map(|s| s.iter().map(|&v| v as f64).collect());
    let (scales_input, sizes_input) = if legacy { (1, None) } else { (2, Some(3)) };
    Bound::new(move |args| {
        let Some(x) = arg(args, 0) else { return 0 };
        let dims = dims_u64(x);
        let rank = dims.len();
        let chosen: Vec<usize> = match &axes {
            Some(list) => list
                .iter()
                .filter_map(|&d| usize::try_from(if d < 0 { d + rank as i64 } else { d }).ok())
                .collect(),
            None => (0..rank).collect(),
        };
        let mut out = dims.clone();
        let sizes = sizes_input.and_then(|k| values(arg(args, k))).filter(|s| !s.is_empty());
        if let Some(sizes) = sizes {
            for (&k, &s) in chosen.iter().zip(&sizes) {
                if let Some(d) = out.get_mut(k) {
                    *d = (*d).max(s.max(0) as u64);
                }
            }
        } else {
            let scales = float_values(arg(args, scales_input))
                .filter(|s| !s.is_empty())
                .or_else(|| attr_scales.clone())
                .unwrap_or_default();
            for (&k, &s) in chosen.iter().zip(&scales) {
                if let Some(d) = out.get_mut(k) {
                    let scaled = (*d as f64 * s).ceil();
                    *d = if scaled.is_finite() && scaled < u64::MAX as f64 {
                        (*d).max(scaled as u64)
                    } else {
                        u64::MAX
                    };
                }
            }
        }
        product(out)
            .saturating_mul(x.dtype().size_in_bytes() as u64)
            .saturating_mul(3)
    })
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};
    use candle_onnx::onnx::AttributeProto;

    use super::*;

    fn node(op: &str, attrs: Vec<AttributeProto>) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            attribute: attrs,
            ..Default::default()
        }
    }

    fn zeros(dims: &[usize]) -> Tensor {
        Tensor::zeros(dims, candle_core::DType::F32, &Device::Cpu).unwrap()
    }

    #[test]
    fn amplifying_operators_are_sized_from_their_output() {
        let x = zeros(&[100_000, 1]);
        let xt = zeros(&[1, 100_000]);
        // X @ Xᵀ and X + Xᵀ: 10^10 elements from 400 KB.
        for op in ["MatMul", "Add"] {
            let b = for_node(&node(op, vec![]), 17).of(&[Some(&x), Some(&xt)]);
            assert!(b >= 40_000_000_000, "{op}: {b}");
        }
        // An ordinary MLP layer is sized as what it is.
        let (a, w) = (zeros(&[64, 256]), zeros(&[256, 1024]));
        let b = for_node(&node("MatMul", vec![]), 17).of(&[Some(&a), Some(&w)]);
        assert_eq!(b, (64 * 1024 + 64 * 256 + 256 * 1024) * 4);
        let shape = Tensor::new(&[1_000_000i64, 1_000_000], &Device::Cpu).unwrap();
        assert!(for_node(&node("ConstantOfShape", vec![]), 17).of(&[Some(&shape)]) >= 1 << 40);
        let idx = Tensor::zeros(&[1_000_000], candle_core::DType::I64, &Device::Cpu).unwrap();
        let table = zeros(&[30_000, 768]);
        assert!(for_node(&node("Gather", vec![]), 17).of(&[Some(&table), Some(&idx)]) >= 768 * 4 * 1_000_000);
    }

    #[test]
    fn overflowing_shapes_read_as_unbounded() {
        let shape = Tensor::new(&[i64::MAX, i64::MAX, 4], &Device::Cpu).unwrap();
        assert_eq!(
            for_node(&node("ConstantOfShape", vec![]), 17).of(&[Some(&shape)]),
            u64::MAX
        );
        let start = Tensor::new(&[0f32], &Device::Cpu).unwrap();
        let limit = Tensor::new(&[f32::INFINITY], &Device::Cpu).unwrap();
        let delta = Tensor::new(&[1f32], &Device::Cpu).unwrap();
        assert_eq!(
            for_node(&node("Range", vec![]), 17).of(&[Some(&start), Some(&limit), Some(&delta)]),
            u64::MAX
        );
    }

    #[test]
    fn work_counts_what_memory_does_not() {
        // A 2048² product fits in 48 MiB but takes 2048³ multiply-accumulates.
        let x = zeros(&[2048, 2048]);
        let b = for_node(&node("MatMul", vec![]), 17);
        assert!(b.of(&[Some(&x), Some(&x)]) < 64 << 20);
        assert!(b.work(&[Some(&x), Some(&x)]) >= 2048 * 2048 * 2048);
        // A million-position window over a 1024² image padded to 2046² (1023² outputs): little
        // memory, 10^12 window positions.
        let ints = |name: &str, v: Vec<i64>| AttributeProto {
            name: name.into(),
            ints: v,
            ..Default::default()
        };
        let pool = node(
            "MaxPool",
            vec![ints("kernel_shape", vec![1024, 1024]), ints("pads", vec![511; 4])],
        );
        let img = zeros(&[1, 1, 1024, 1024]);
        let p = for_node(&pool, 17);
        assert!(p.of(&[Some(&img)]) < 64 << 20, "{}", p.of(&[Some(&img)]));
        assert!(p.work(&[Some(&img)]) >= 1023 * 1023 * 1024 * 1024 * SCALAR_STEP);
        // The same window over a 4×4 image (3×3 outputs) is little work.
        let small = zeros(&[1, 1, 4, 4]);
        assert!(p.work(&[Some(&small)]) <= 4 * 4 * 1024 * 1024 * SCALAR_STEP + 64);
        // A ResNet stem's 3×3 pool is small work; an element-wise step's work is its bytes.
        let stem = node(
            "MaxPool",
            vec![ints("kernel_shape", vec![3, 3]), ints("strides", vec![2, 2])],
        );
        let act = zeros(&[1, 64, 112, 112]);
        assert!(for_node(&stem, 17).work(&[Some(&act)]) < 1 << 30);
        let add = for_node(&node("Add", vec![]), 17);
        assert_eq!(add.work(&[Some(&act), Some(&act)]), add.of(&[Some(&act), Some(&act)]));
        // A convolution's multiply-accumulates: 64 · 3 · 9 per output point.
        let w = zeros(&[64, 3, 3, 3]);
        let img = zeros(&[1, 3, 224, 224]);
        let c = for_node(&node("Conv", vec![]), 17).work(&[Some(&img), Some(&w)]);
        let macs = 64 * 27 * 222 * 222;
        let inputs = (3 * 224 * 224 + 64 * 27) * 4;
        assert!((macs..=macs + inputs).contains(&c), "{c}");
        // A kernel as large as the image has one output point.
        let w = zeros(&[8, 3, 224, 224]);
        let c = for_node(&node("Conv", vec![]), 17).work(&[Some(&img), Some(&w)]);
        assert!(c <= 8 * 3 * 224 * 224 * 2 + (3 + 8 * 3) * 224 * 224 * 4, "{c}");
    }

    #[test]
    fn convolutions_count_their_working_buffers() {
        let x = zeros(&[1, 3, 224, 224]);
        let w = zeros(&[64, 3, 3, 3]);
        let strides = AttributeProto {
            name: "strides".into(),
            ints: vec![2, 2],
            ..Default::default()
        };
        let b = for_node(&node("Conv", vec![strides]), 17).of(&[Some(&x), Some(&w)]);
        let out = 64 * 113 * 113;
        let cols = 3 * 9 * 113 * 113;
        assert!(b >= (out + cols) * 4, "{b}");
        assert!(b < 64 << 20, "{b}: a small convolution is not sized as a large one");
    }
}

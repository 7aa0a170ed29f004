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

use candle_core::Tensor;
use candle_onnx::onnx::NodeProto;

use super::onnx::Attrs;
use super::ops::host_i64;

type BoundFn = dyn Fn(&[Option<&Tensor>]) -> u64 + Send + Sync;

/// A step's bound: bytes, from its arguments.
pub(super) struct Bound(Box<BoundFn>);

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bound")
    }
}

impl Bound {
    pub(super) fn of(&self, args: &[Option<&Tensor>]) -> u64 {
        (self.0)(args)
    }

    fn new(f: impl Fn(&[Option<&Tensor>]) -> u64 + Send + Sync + 'static) -> Self {
        Bound(Box::new(f))
    }

    /// At most twice the inputs' bytes: outputs no larger than the inputs, and temporaries.
    pub(super) fn inputs() -> Self {
        Bound::new(|args| inputs_bytes(args).saturating_mul(2))
    }

    /// Nothing of its own: the step's nested plans admit their own operators (If, Loop).
    fn nested() -> Self {
        Bound::new(|_| 0)
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
        "MatMul" => Bound::new(matmul),
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

fn matmul(args: &[Option<&Tensor>]) -> u64 {
    let (Some(x), Some(w)) = (arg(args, 0), arg(args, 1)) else {
        return inputs_bytes(args);
    };
    let (mut xd, mut wd) = (dims_u64(x), dims_u64(w));
    if xd.len() == 1 {
        xd.insert(0, 1);
    }
    if wd.len() == 1 {
        wd.push(1);
    }
    let (xr, wr) = (xd.len(), wd.len());
    let (m, k) = (xd[xr - 2], xd[xr - 1]);
    let n = wd[wr - 1];
    let batch = product(broadcast(&[xd[..xr - 2].to_vec(), wd[..wr - 2].to_vec()]));
    let size = element_size(args);
    // The product, and the inputs broadcast to the common batch shape.
    product([batch, m, n])
        .saturating_add(product([batch, m, k]))
        .saturating_add(product([batch, k, n]))
        .saturating_mul(size)
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

fn conv(node: &NodeProto, transposed: bool) -> Bound {
    let node = node.clone();
    Bound::new(move |args| {
        let a = Attrs(&node);
        let (Some(x), Some(w)) = (arg(args, 0), arg(args, 1)) else {
            return inputs_bytes(args);
        };
        let (xd, wd) = (dims_u64(x), dims_u64(w));
        if xd.len() < 3 || wd.len() != xd.len() {
            return inputs_bytes(args).saturating_mul(2);
        }
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
}

fn pool(node: &NodeProto) -> Bound {
    let node = node.clone();
    Bound::new(move |args| {
        let a = Attrs(&node);
        let Some(x) = arg(args, 0) else { return 0 };
        let xd = dims_u64(x);
        if xd.len() < 3 {
            return inputs_bytes(args).saturating_mul(2);
        }
        let rank = xd.len() - 2;
        let kernel = list(&a, "kernel_shape", rank, 1);
        let strides = list(&a, "strides", rank, 1);
        let pads = spatial_pads(&a, rank, &kernel, &strides, &[1; 2]);
        let padded: Vec<u64> = (0..rank).map(|k| xd[2 + k].saturating_add(pads[k])).collect();
        let out: Vec<u64> = (0..rank).map(|k| padded[k] / strides[k] + 2).collect();
        let plane = product([xd[0], xd[1]]);
        plane
            .saturating_mul(product(out).saturating_add(product(padded).saturating_mul(2)))
            .saturating_mul(x.dtype().size_in_bytes() as u64)
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

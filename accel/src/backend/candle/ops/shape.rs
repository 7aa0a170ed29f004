//! Operators that move, select or create data without arithmetic: reshaping, slicing, gathering,
//! concatenation, padding, and the shape computations exporters emit (`Shape`, `Range`,
//! `ConstantOfShape`). Where ONNX changed an attribute into an input across opsets (Squeeze,
//! Unsqueeze, Split, Slice, Pad), both forms are read.

use candle_core::{DType, Tensor, bail};

use super::{
    Kernel, NodeCtx, Result, arg, axis, broadcast_shape, ensure_size, host_i64, opt, pad_constant, take_strided,
};
use crate::backend::candle::onnx::tensor_from_proto;

pub(super) fn compile(ctx: &NodeCtx<'_>) -> Result<Option<Kernel>> {
    let a = ctx.attrs();
    let k = match ctx.node.op_type.as_str() {
        "Reshape" => {
            let allowzero = a.int("allowzero", 0) != 0;
            let fixed = match a.ints("shape") {
                Some(s) if !ctx.has_input(1) => Some(s.to_vec()),
                _ => None,
            };
            Kernel::new(move |i| {
                let x = arg(i, 0)?;
                let target = match &fixed {
                    Some(s) => s.clone(),
                    None => host_i64(arg(i, 1)?)?,
                };
                Ok(vec![x.reshape(reshape_dims(x.dims(), &target, allowzero)?)?])
            })
        }
        "Flatten" => {
            let ax = a.int("axis", 1);
            Kernel::new(move |i| {
                let x = arg(i, 0)?;
                let r = x.rank() as i64;
                let k = if ax < 0 { ax + r } else { ax };
                if !(0..=r).contains(&k) {
                    bail!("Flatten axis {ax} is out of range for rank {r}")
                }
                let (outer, inner) = x.dims().split_at(k as usize);
                Ok(vec![x.reshape((
                    outer.iter().product::<usize>(),
                    inner.iter().product::<usize>(),
                ))?])
            })
        }
        "Transpose" => {
            let perm = a.ints("perm").map(<[i64]>::to_vec);
            Kernel::new(move |i| {
                let x = arg(i, 0)?;
                let perm: Vec<usize> = match &perm {
                    Some(p) => p.iter().map(|&d| axis(d, x.rank())).collect::<Result<_>>()?,
                    None => (0..x.rank()).rev().collect(),
                };
                Ok(vec![x.permute(perm)?])
            })
        }
        "Squeeze" => {
            let attr_axes = a.ints("axes").map(<[i64]>::to_vec);
            Kernel::new(move |i| {
                let x = arg(i, 0)?;
                let axes = match opt(i, 1) {
                    Some(t) => Some(host_i64(t)?),
                    None => attr_axes.clone(),
                };
                let rank = x.rank();
                let remove: Vec<usize> = match axes {
                    Some(axes) => axes.iter().map(|&d| axis(d, rank)).collect::<Result<_>>()?,
                    None => (0..rank).filter(|&d| x.dims()[d] == 1).collect(),
                };
                for &d in &remove {
                    if x.dims()[d] != 1 {
                        bail!("Squeeze: dimension {d} of shape {:?} is not 1", x.dims())
                    }
                }
                let dims: Vec<usize> = (0..rank).filter(|d| !remove.contains(d)).map(|d| x.dims()[d]).collect();
                Ok(vec![x.reshape(dims)?])
            })
        }
        "Unsqueeze" => {
            let attr_axes = a.ints("axes").map(<[i64]>::to_vec);
            Kernel::new(move |i| {
                let x = arg(i, 0)?;
                let axes = match opt(i, 1) {
                    Some(t) => host_i64(t)?,
                    None => attr_axes.clone().unwrap_or_default(),
                };
                Ok(vec![x.reshape(unsqueeze_dims(x.dims(), &axes)?)?])
            })
        }
        "Concat" => {
            let ax = a.int("axis", 0);
            Kernel::new(move |i| {
                let parts: Vec<&Tensor> = i.iter().flatten().copied().collect();
                let Some(first) = parts.first() else {
                    bail!("Concat without inputs")
                };
                let d = axis(ax, first.rank())?;
                let nonempty: Vec<&Tensor> = parts.iter().copied().filter(|t| t.elem_count() > 0).collect();
                if nonempty.is_empty() {
                    let mut dims = first.dims().to_vec();
                    dims[d] = parts.iter().map(|t| t.dims().get(d).copied().unwrap_or(0)).sum();
                    return Ok(vec![Tensor::zeros(dims, first.dtype(), first.device())?]);
                }
                let dtype = nonempty[0].dtype();
                let cast: Vec<Tensor> = nonempty.iter().map(|t| t.to_dtype(dtype)).collect::<Result<_>>()?;
                Ok(vec![Tensor::cat(&cast, d)?])
            })
        }
        "Split" => {
            let ax = a.int("axis", 0);
            let attr_split = a.ints("split").map(<[i64]>::to_vec);
            let outputs = ctx.output_count();
            Kernel::new(move |i| {
                let x = arg(i, 0)?;
                let d = axis(ax, x.rank())?;
                let dim = x.dims()[d];
                let sizes: Vec<usize> = match opt(i, 1).map(host_i64).transpose()?.or_else(|| attr_split.clone()) {
                    Some(s) => s
                        .iter()
                        .map(|&v| usize::try_from(v).map_err(|_| candle_core::Error::Msg(format!("Split size {v}"))))
                        .collect::<Result<_>>()?,
                    None => {
                        let chunk = dim.div_ceil(outputs.max(1));
                        (0..outputs).map(|k| chunk.min(dim.saturating_sub(k * chunk))).collect()
                    }
                };
                if sizes.iter().sum::<usize>() != dim {
                    bail!("Split sizes {sizes:?} do not add up to dimension {dim}")
                }
                let mut start = 0;
                let mut out = Vec::with_capacity(sizes.len());
                for s in sizes {
                    out.push(x.narrow(d, start, s)?);
                    start += s;
                }
                Ok(out)
            })
        }
        "Slice" => {
            let attrs = (
                a.ints("starts").map(<[i64]>::to_vec),
                a.ints("ends").map(<[i64]>::to_vec),
                a.ints("axes").map(<[i64]>::to_vec),
            );
            let from_attrs = !ctx.has_input(1);
            Kernel::new(move |i| {
                let x = arg(i, 0)?;
                let (starts, ends, axes, steps) = if from_attrs {
                    let (Some(s), Some(e)) = (&attrs.0, &attrs.1) else {
                        bail!("Slice without starts/ends")
                    };
                    (s.clone(), e.clone(), attrs.2.clone(), None)
                } else {
                    (
                        host_i64(arg(i, 1)?)?,
                        host_i64(arg(i, 2)?)?,
                        opt(i, 3).map(host_i64).transpose()?,
                        opt(i, 4).map(host_i64).transpose()?,
                    )
                };
                Ok(vec![slice(x, &starts, &ends, axes.as_deref(), steps.as_deref())?])
            })
        }
        "Gather" => {
            let ax = a.int("axis", 0);
            Kernel::new(move |i| {
                let (x, idx) = (arg(i, 0)?, arg(i, 1)?);
                let d = axis(ax, x.rank())?;
                let flat = normalize_indices(&idx.flatten_all()?, x.dims()[d])?;
                let picked = x.index_select(&flat, d)?;
                let mut dims = x.dims()[..d].to_vec();
                dims.extend_from_slice(idx.dims());
                dims.extend_from_slice(&x.dims()[d + 1..]);
                Ok(vec![picked.reshape(dims)?])
            })
        }
        "GatherElements" => {
            let ax = a.int("axis", 0);
            Kernel::new(move |i| {
                let (x, idx) = (arg(i, 0)?, arg(i, 1)?);
                let d = axis(ax, x.rank())?;
                let idx = normalize_indices(idx, x.dims()[d])?;
                Ok(vec![x.contiguous()?.gather(&idx.contiguous()?, d)?])
            })
        }
        "Shape" => {
            let (start, end) = (a.int("start", 0), a.get("end").map(|e| e.i));
            Kernel::new(move |i| {
                let x = arg(i, 0)?;
                let r = x.rank() as i64;
                let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let (s, e) = (clampi(start), clampi(end.unwrap_or(r)));
                let dims: Vec<i64> = x.dims()[s..e.max(s)].iter().map(|&d| d as i64).collect();
                let n = dims.len();
                Ok(vec![Tensor::from_vec(dims, n, x.device())?])
            })
        }
        "Size" => Kernel::new(|i| {
            let x = arg(i, 0)?;
            Ok(vec![Tensor::new(x.elem_count() as i64, x.device())?])
        }),
        "Expand" => Kernel::new(|i| {
            let x = arg(i, 0)?;
            let target: Vec<usize> = host_i64(arg(i, 1)?)?.iter().map(|&d| d.max(0) as usize).collect();
            let shape = broadcast_shape(x.dims(), &target)?;
            ensure_size(&shape)?;
            Ok(vec![x.broadcast_as(shape)?])
        }),
        "Tile" => Kernel::new(|i| {
            let x = arg(i, 0)?;
            let reps: Vec<usize> = host_i64(arg(i, 1)?)?.iter().map(|&d| d.max(0) as usize).collect();
            if reps.len() != x.rank() {
                bail!("Tile repeats {reps:?} do not match rank {}", x.rank())
            }
            let out: Vec<usize> = x.dims().iter().zip(&reps).map(|(d, r)| d.saturating_mul(*r)).collect();
            ensure_size(&out)?;
            Ok(vec![x.repeat(reps)?])
        }),
        "Constant" => {
            let device = ctx.device.clone();
            let value = if let Some(t) = a.tensor("value") {
                tensor_from_proto(t, ctx.file, &device).map_err(candle_core::Error::Msg)?
            } else if let Some(v) = a.get("value_float") {
                Tensor::new(v.f, &device)?
            } else if let Some(v) = a.floats("value_floats") {
                Tensor::new(v, &device)?
            } else if let Some(v) = a.get("value_int") {
                Tensor::new(v.i, &device)?
            } else if let Some(v) = a.ints("value_ints") {
                Tensor::new(v, &device)?
            } else {
                bail!("Constant without a supported value attribute")
            };
            Kernel::new(move |_| Ok(vec![value.clone()]))
        }
        "ConstantOfShape" => {
            let device = ctx.device.clone();
            let value = match a.tensor("value") {
                Some(t) => tensor_from_proto(t, ctx.file, &device)
                    .map_err(candle_core::Error::Msg)?
                    .flatten_all()?,
                None => Tensor::new(&[0f32], &device)?,
            };
            Kernel::new(move |i| {
                let dims: Vec<usize> = host_i64(arg(i, 0)?)?.iter().map(|&d| d.max(0) as usize).collect();
                ensure_size(&dims)?;
                Ok(vec![value.reshape(())?.broadcast_as(dims)?.contiguous()?])
            })
        }
        "Range" => Kernel::new(|i| {
            let (s, l, d) = (arg(i, 0)?, arg(i, 1)?, arg(i, 2)?);
            let dtype = s.dtype();
            let device = s.device();
            let first = |t: &Tensor| -> Result<i64> {
                match host_i64(t)?.first() {
                    Some(&v) => Ok(v),
                    None => bail!("Range's start, limit and delta must each hold a value"),
                }
            };
            if dtype == DType::I64 {
                let (s, l, d) = (first(s)?, first(l)?, first(d)?);
                if d == 0 {
                    bail!("Range with delta 0")
                }
                let n = ((l as f64 - s as f64) / d as f64).ceil().max(0.0) as usize;
                ensure_size(&[n])?;
                // Values past i64's range wrap, as the integer arithmetic of ONNX runtimes does.
                let v: Vec<i64> = (0..n as i64).map(|k| s.wrapping_add(k.wrapping_mul(d))).collect();
                Ok(vec![Tensor::from_vec(v, n, device)?])
            } else {
                let (s, l, d) = (super::host_scalar(s)?, super::host_scalar(l)?, super::host_scalar(d)?);
                if d == 0.0 {
                    bail!("Range with delta 0")
                }
                let n = ((l - s) / d).ceil().max(0.0) as usize;
                ensure_size(&[n])?;
                let v: Vec<f64> = (0..n).map(|k| s + k as f64 * d).collect();
                Ok(vec![Tensor::from_vec(v, n, device)?.to_dtype(dtype)?])
            }
        }),
        "Pad" => pad(ctx),
        "DepthToSpace" | "SpaceToDepth" => {
            let block = a.int("blocksize", 0) as usize;
            let crd = a.string("mode").as_deref() == Some("CRD");
            let to_space = ctx.node.op_type == "DepthToSpace";
            Kernel::new(move |i| {
                let x = arg(i, 0)?;
                let (n, c, h, w) = x.dims4()?;
                let b = block.max(1);
                let y = if to_space {
                    let c2 = c / (b * b);
                    if crd {
                        x.reshape((n, c2, b, b, h, w))?
                            .permute((0, 1, 4, 2, 5, 3))?
                            .reshape((n, c2, h * b, w * b))?
                    } else {
                        x.reshape((n, b, b, c2, h, w))?
                            .permute((0, 3, 4, 1, 5, 2))?
                            .reshape((n, c2, h * b, w * b))?
                    }
                } else {
                    x.reshape((n, c, h / b, b, w / b, b))?
                        .permute((0, 3, 5, 1, 2, 4))?
                        .reshape((n, c * b * b, h / b, w / b))?
                };
                Ok(vec![y])
            })
        }
        _ => return Ok(None),
    };
    Ok(Some(k))
}

/// ONNX Reshape semantics: 0 copies the input dimension (unless `allowzero`), -1 is inferred.
pub(super) fn reshape_dims(input: &[usize], target: &[i64], allowzero: bool) -> Result<Vec<usize>> {
    let total: usize = input.iter().product();
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (k, &d) in target.iter().enumerate() {
        out.push(match d {
            -1 => {
                if infer.replace(k).is_some() {
                    bail!("Reshape target {target:?} has more than one -1")
                }
                1
            }
            0 if !allowzero => match input.get(k) {
                Some(&v) => v,
                None => bail!("Reshape target {target:?} copies dimension {k}, which input {input:?} lacks"),
            },
            d if d >= 0 => d as usize,
            d => bail!("Reshape target has dimension {d}"),
        });
    }
    if let Some(k) = infer {
        let known: usize = out.iter().product();
        if known == 0 || !total.is_multiple_of(known) {
            bail!("cannot reshape {input:?} into {target:?}")
        }
        out[k] = total / known;
    }
    if out.iter().product::<usize>() != total {
        bail!("cannot reshape {input:?} ({total} elements) into {target:?}")
    }
    Ok(out)
}

/// ONNX Unsqueeze: `axes` index the output (negative ones from its end) and may come in any order.
pub(super) fn unsqueeze_dims(input: &[usize], axes: &[i64]) -> Result<Vec<usize>> {
    let rank = input.len() + axes.len();
    let mut at = vec![false; rank];
    for &a in axes {
        let k = axis(a, rank)?;
        if std::mem::replace(&mut at[k], true) {
            bail!("Unsqueeze axes {axes:?} repeat an axis")
        }
    }
    let mut rest = input.iter();
    Ok(at
        .iter()
        .map(|&new| if new { 1 } else { *rest.next().unwrap_or(&1) })
        .collect())
}

/// Turns negative indices into `index + dim`.
fn normalize_indices(idx: &Tensor, dim: usize) -> Result<Tensor> {
    let idx = idx.to_dtype(DType::I64)?;
    let shifted = (&idx + dim as f64)?;
    idx.lt(0.0)?.where_cond(&shifted, &idx)
}

/// The (start, length, step) of an ONNX slice along a dimension of size `dim`.
pub(super) fn slice_range(start: i64, end: i64, step: i64, dim: usize) -> Result<(usize, usize, i64)> {
    if step == 0 {
        bail!("Slice step 0")
    }
    let d = dim as i64;
    let norm = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
    let (s, e) = if step > 0 {
        (norm(start).clamp(0, d), norm(end).clamp(0, d))
    } else {
        (norm(start).clamp(0, (d - 1).max(0)), norm(end).clamp(-1, d - 1))
    };
    let len = if step > 0 {
        if e > s { (e - s + step - 1) / step } else { 0 }
    } else if s > e {
        (s - e + (-step) - 1) / (-step)
    } else {
        0
    };
    Ok((s.max(0) as usize, len as usize, step))
}

fn slice(x: &Tensor, starts: &[i64], ends: &[i64], axes: Option<&[i64]>, steps: Option<&[i64]>) -> Result<Tensor> {
    if starts.len() != ends.len() {
        bail!("Slice starts {starts:?} and ends {ends:?} differ in length")
    }
    let mut y = x.clone();
    for k in 0..starts.len() {
        let d = match axes {
            Some(a) => axis(
                *a.get(k)
                    .ok_or_else(|| candle_core::Error::Msg("Slice axes too short".into()))?,
                x.rank(),
            )?,
            None => k,
        };
        if d >= x.rank() {
            bail!("Slice axis {d} is out of range for rank {}", x.rank())
        }
        let step = steps.and_then(|s| s.get(k).copied()).unwrap_or(1);
        let (s, len, step) = slice_range(starts[k], ends[k], step, y.dims()[d])?;
        y = if step > 0 {
            take_strided(&y, d, s, step as usize, len)?
        } else {
            let idx: Vec<i64> = (0..len as i64).map(|j| s as i64 + j * step).collect();
            y.index_select(&Tensor::from_vec(idx, len, y.device())?, d)?
        };
    }
    Ok(y)
}

fn pad(ctx: &NodeCtx<'_>) -> Kernel {
    let a = ctx.attrs();
    let mode = a.string("mode").unwrap_or_else(|| "constant".into());
    let attr_pads = a.ints("pads").map(<[i64]>::to_vec);
    let attr_value = a.float("value", 0.0) as f64;
    Kernel::new(move |i| {
        let x = arg(i, 0)?;
        let pads = match opt(i, 1) {
            Some(t) => host_i64(t)?,
            None => attr_pads.clone().unwrap_or_default(),
        };
        let value = match opt(i, 2) {
            Some(t) if t.elem_count() > 0 => super::host_scalar(t)?,
            _ => attr_value,
        };
        let rank = x.rank();
        let axes: Vec<usize> = match opt(i, 3) {
            Some(t) => host_i64(t)?.iter().map(|&d| axis(d, rank)).collect::<Result<_>>()?,
            None => (0..rank).collect(),
        };
        if pads.len() != 2 * axes.len() {
            bail!("Pad: {} pads for {} axes", pads.len(), axes.len())
        }
        let mut y = x.clone();
        for (k, &d) in axes.iter().enumerate() {
            let (before, after) = (pads[k], pads[k + axes.len()]);
            // Negative pads crop.
            if before < 0 || after < 0 {
                let n = y.dims()[d] as i64;
                let s = (-before).max(0);
                let len = n - s - (-after).max(0);
                if len < 0 {
                    bail!("Pad crops more than dimension {d} holds")
                }
                y = y.narrow(d, s as usize, len as usize)?;
            }
            let (b, e) = (before.max(0) as usize, after.max(0) as usize);
            if b == 0 && e == 0 {
                continue;
            }
            let mut out = y.dims().to_vec();
            out[d] = out[d].saturating_add(b).saturating_add(e);
            ensure_size(&out)?;
            y = match mode.as_str() {
                "constant" => pad_constant(&y, d, b, e, value)?,
                "edge" => y.pad_with_same(d, b, e)?,
                "reflect" | "wrap" => {
                    let n = y.dims()[d] as i64;
                    if n == 0 || (mode == "reflect" && (b as i64 >= n || e as i64 >= n)) {
                        bail!("Pad {mode}: pads ({b}, {e}) too large for dimension {n}")
                    }
                    let idx: Vec<i64> = (-(b as i64)..n + e as i64)
                        .map(|j| {
                            if mode == "wrap" {
                                j.rem_euclid(n)
                            } else if j < 0 {
                                -j
                            } else if j >= n {
                                2 * (n - 1) - j
                            } else {
                                j
                            }
                        })
                        .collect();
                    let len = idx.len();
                    y.index_select(&Tensor::from_vec(idx, len, y.device())?, d)?
                }
                other => bail!("Pad mode '{other}' is not supported"),
            };
        }
        Ok(vec![y])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsqueeze_inserts_every_axis_where_the_output_has_it() {
        // BERT's attention mask: [batch, seq] -> [batch, 1, 1, seq] with axes [1, 2].
        assert_eq!(unsqueeze_dims(&[8, 128], &[1, 2]).unwrap(), vec![8, 1, 1, 128]);
        assert_eq!(unsqueeze_dims(&[8, 128], &[2, 1]).unwrap(), vec![8, 1, 1, 128]);
        assert_eq!(unsqueeze_dims(&[3, 4, 5], &[2, 0]).unwrap(), vec![1, 3, 1, 4, 5]);
        assert_eq!(unsqueeze_dims(&[3], &[-1, 0]).unwrap(), vec![1, 3, 1]);
        assert!(unsqueeze_dims(&[3], &[0, 0]).is_err());
        assert!(unsqueeze_dims(&[3], &[5]).is_err());
    }

    #[test]
    fn reshape_copies_zeros_and_infers_one_dimension() {
        assert_eq!(reshape_dims(&[2, 3, 4], &[0, -1], false).unwrap(), vec![2, 12]);
        assert_eq!(reshape_dims(&[2, 3, 4], &[-1], false).unwrap(), vec![24]);
        assert!(reshape_dims(&[2, 3, 4], &[-1, -1], false).is_err());
        assert!(reshape_dims(&[2, 3, 4], &[5, -1], false).is_err());
        assert_eq!(reshape_dims(&[0, 3], &[0, 3], true).unwrap(), vec![0, 3]);
    }

    #[test]
    fn slice_ranges_follow_onnx_clamping() {
        assert_eq!(slice_range(0, i64::MAX, 1, 10).unwrap(), (0, 10, 1));
        assert_eq!(slice_range(-3, -1, 1, 10).unwrap(), (7, 2, 1));
        assert_eq!(slice_range(i64::MIN, 4, 2, 10).unwrap(), (0, 2, 2));
        assert_eq!(slice_range(-1, i64::MIN, -1, 5).unwrap(), (4, 5, -1));
        assert_eq!(slice_range(8, 2, 1, 10).unwrap(), (8, 0, 1));
        assert!(slice_range(0, 1, 0, 10).is_err());
    }
}

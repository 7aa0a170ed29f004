//! Resize (opsets 10 to 19) and the older Upsample: nearest and linear modes, every coordinate
//! transformation except `tf_crop_and_resize`, every nearest-rounding mode. Each resized axis is one
//! gather (nearest) or two gathers and a blend (linear), so N-D and any device work the same way.

use candle_core::{CpuStorage, DType, Storage, Tensor, bail};

use super::{Kernel, NodeCtx, Result, arg, axis, ensure_size, host_f64, host_i64, opt};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Nearest,
    Linear,
}

#[derive(Clone, Debug)]
struct Params {
    mode: Mode,
    transform: String,
    nearest: String,
    axes: Option<Vec<i64>>,
    /// Index of the scales and sizes inputs for this opset (Upsample: scales only).
    scales_input: Option<usize>,
    sizes_input: Option<usize>,
    attr_scales: Option<Vec<f64>>,
}

pub(super) fn resize(ctx: &NodeCtx<'_>) -> Result<Kernel> {
    let a = ctx.attrs();
    let upsample = ctx.node.op_type == "Upsample";
    let legacy = upsample || ctx.opset < 11;
    let mode = match a.string("mode").as_deref().unwrap_or("nearest") {
        "nearest" => Mode::Nearest,
        "linear" | "bilinear" => Mode::Linear,
        other => bail!(
            "{} mode '{other}' is not supported (nearest and linear are)",
            ctx.node.op_type
        ),
    };
    let transform = if legacy {
        "asymmetric".to_string()
    } else {
        a.string("coordinate_transformation_mode")
            .unwrap_or_else(|| "half_pixel".into())
    };
    if transform == "tf_crop_and_resize" {
        bail!("Resize with coordinate_transformation_mode tf_crop_and_resize is not supported")
    }
    if a.int("antialias", 0) != 0 {
        bail!("Resize with antialias is not supported")
    }
    if let Some(policy) = a.string("keep_aspect_ratio_policy").filter(|p| p != "stretch") {
        bail!("Resize with keep_aspect_ratio_policy {policy} is not supported")
    }
    let nearest = if legacy {
        "simple".to_string()
    } else {
        a.string("nearest_mode").unwrap_or_else(|| "round_prefer_floor".into())
    };
    let (scales_input, sizes_input) = if legacy { (Some(1), None) } else { (Some(2), Some(3)) };
    let params = Params {
        mode,
        transform,
        nearest,
        axes: a.ints("axes").map(<[i64]>::to_vec),
        scales_input,
        sizes_input,
        attr_scales: a.floats("scales").map(|s| s.iter().map(|&v| v as f64).collect()),
    };
    Ok(Kernel::new(move |i| Ok(vec![run(&params, arg(i, 0)?, i)?])))
}

fn run(p: &Params, x: &Tensor, inputs: &[Option<&Tensor>]) -> Result<Tensor> {
    let rank = x.rank();
    let axes: Vec<usize> = match &p.axes {
        Some(a) => a.iter().map(|&d| axis(d, rank)).collect::<Result<_>>()?,
        None => (0..rank).collect(),
    };
    let sizes = p
        .sizes_input
        .and_then(|k| opt(inputs, k))
        .filter(|t| t.elem_count() > 0);
    let scales = p
        .scales_input
        .and_then(|k| opt(inputs, k))
        .filter(|t| t.elem_count() > 0);
    // (output length, scale) per resized axis.
    let mut plan: Vec<(usize, usize, f64)> = Vec::with_capacity(axes.len());
    if let Some(sizes) = sizes {
        let sizes = host_i64(sizes)?;
        if sizes.len() != axes.len() {
            bail!("Resize: {} sizes for {} axes", sizes.len(), axes.len())
        }
        for (k, &d) in axes.iter().enumerate() {
            let out =
                usize::try_from(sizes[k]).map_err(|_| candle_core::Error::Msg(format!("Resize size {}", sizes[k])))?;
            plan.push((d, out, out as f64 / x.dims()[d].max(1) as f64));
        }
    } else {
        let scales = match (scales, &p.attr_scales) {
            (Some(t), _) => host_f64(t)?,
            (None, Some(s)) => s.clone(),
            (None, None) => bail!("Resize needs scales or sizes"),
        };
        if scales.len() != axes.len() {
            bail!("Resize: {} scales for {} axes", scales.len(), axes.len())
        }
        for (k, &d) in axes.iter().enumerate() {
            if scales[k].is_nan() || scales[k] <= 0.0 {
                bail!("Resize scale {} must be positive", scales[k])
            }
            plan.push((d, (x.dims()[d] as f64 * scales[k]).floor() as usize, scales[k]));
        }
    }
    let mut out_dims = x.dims().to_vec();
    for &(d, out, _) in &plan {
        out_dims[d] = out;
    }
    ensure_size(&out_dims)?;
    if let Some(y) = nearest_last_two(p, x, &plan)? {
        return Ok(y);
    }
    let mut y = x.clone();
    for (d, out, scale) in plan {
        let len = y.dims()[d];
        if out == len && scale == 1.0 {
            continue;
        }
        if len == 0 || out == 0 {
            bail!("Resize of an empty axis")
        }
        let coords: Vec<f64> = (0..out)
            .map(|o| original_coordinate(&p.transform, o, len, out, scale))
            .collect::<Result<_>>()?;
        y = match p.mode {
            Mode::Nearest => {
                let idx: Vec<i64> = coords
                    .iter()
                    .map(|&c| nearest_index(&p.nearest, c, scale, len))
                    .collect();
                y.index_select(&Tensor::from_vec(idx, out, y.device())?, d)?
            }
            Mode::Linear => {
                let last = (len - 1) as f64;
                let mut i0 = Vec::with_capacity(out);
                let mut i1 = Vec::with_capacity(out);
                let mut w = Vec::with_capacity(out);
                for &c in &coords {
                    let c = c.clamp(0.0, last);
                    let f = c.floor();
                    i0.push(f as i64);
                    i1.push((f as i64 + 1).min(len as i64 - 1));
                    w.push(c - f);
                }
                let a = y.index_select(&Tensor::from_vec(i0, out, y.device())?, d)?;
                let b = y.index_select(&Tensor::from_vec(i1, out, y.device())?, d)?;
                let mut wshape = vec![1; y.rank()];
                wshape[d] = out;
                if !super::is_float(y.dtype()) {
                    bail!("linear Resize of {:?} tensors is not supported", y.dtype())
                }
                let w = Tensor::from_vec(w, wshape, y.device())?.to_dtype(y.dtype())?;
                a.add(&b.sub(&a)?.broadcast_mul(&w)?)?
            }
        };
    }
    Ok(y)
}

/// Nearest resizing of only the last two axes of an FP32 CPU tensor, by accel-kernels in one pass;
/// `None` for anything else.
fn nearest_last_two(p: &Params, x: &Tensor, plan: &[(usize, usize, f64)]) -> Result<Option<Tensor>> {
    let rank = x.rank();
    if !matches!(p.mode, Mode::Nearest) || x.dtype() != DType::F32 || !x.device().is_cpu() || rank < 2 {
        return Ok(None);
    }
    let dims = x.dims();
    let mut index: [Option<Vec<usize>>; 2] = [None, None];
    for &(d, out, scale) in plan {
        let len = dims[d];
        if out == len && scale == 1.0 {
            continue;
        }
        if d + 2 < rank || len == 0 || out == 0 {
            return Ok(None);
        }
        let idx = (0..out)
            .map(|o| {
                let c = original_coordinate(&p.transform, o, len, out, scale)?;
                Ok(nearest_index(&p.nearest, c, scale, len).clamp(0, len as i64 - 1) as usize)
            })
            .collect::<Result<Vec<usize>>>()?;
        index[d + 2 - rank] = Some(idx);
    }
    let (h, w) = (dims[rank - 2], dims[rank - 1]);
    let [rows, cols] = index;
    let rows = rows.unwrap_or_else(|| (0..h).collect());
    let cols = cols.unwrap_or_else(|| (0..w).collect());
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
        return Ok(None);
    };
    let planes = dims[..rank - 2].iter().product();
    let y = accel_kernels::resize::nearest2d(&data[start..end], planes, [h, w], &rows, &cols)
        .map_err(|e| candle_core::Error::Msg(format!("Resize: {e}")))?;
    drop(storage);
    let mut shape = dims[..rank - 2].to_vec();
    shape.extend([rows.len(), cols.len()]);
    Tensor::from_vec(y, shape, x.device()).map(Some)
}

fn original_coordinate(transform: &str, o: usize, len: usize, out: usize, scale: f64) -> Result<f64> {
    let x = o as f64;
    Ok(match transform {
        "half_pixel" => (x + 0.5) / scale - 0.5,
        "pytorch_half_pixel" => {
            if out > 1 {
                (x + 0.5) / scale - 0.5
            } else {
                0.0
            }
        }
        "align_corners" => {
            if out == 1 {
                0.0
            } else {
                x * (len as f64 - 1.0) / (out as f64 - 1.0)
            }
        }
        "asymmetric" => x / scale,
        "half_pixel_symmetric" => {
            let adjustment = out as f64 / (scale * len as f64);
            let center = len as f64 / 2.0;
            center * (1.0 - adjustment) + (x + 0.5) / scale - 0.5
        }
        other => bail!("Resize coordinate_transformation_mode '{other}' is not supported"),
    })
}

fn nearest_index(mode: &str, c: f64, scale: f64, len: usize) -> i64 {
    let half = (c - c.floor() - 0.5).abs() < 1e-9;
    let i = match mode {
        "round_prefer_ceil" => {
            if half {
                c.ceil()
            } else {
                c.round()
            }
        }
        "floor" => c.floor(),
        "ceil" => c.ceil(),
        // Opsets before 11: truncate when upsampling, ceil when downsampling (ONNX Runtime's rule).
        "simple" => {
            if scale < 1.0 {
                c.ceil()
            } else {
                c.trunc()
            }
        }
        _ => {
            if half {
                c.floor()
            } else {
                c.round()
            }
        }
    };
    (i as i64).clamp(0, len as i64 - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinates_and_rounding() {
        // 2x nearest upsampling, asymmetric + floor (YOLO exports): 0 0 1 1 2 2.
        let idx: Vec<i64> = (0..6)
            .map(|o| {
                nearest_index(
                    "floor",
                    original_coordinate("asymmetric", o, 3, 6, 2.0).unwrap(),
                    2.0,
                    3,
                )
            })
            .collect();
        assert_eq!(idx, vec![0, 0, 1, 1, 2, 2]);
        // align_corners maps the ends onto the ends.
        assert_eq!(original_coordinate("align_corners", 5, 3, 6, 2.0).unwrap(), 2.0);
        // half_pixel at 2x: output 0 sits at -0.25 of the input.
        assert_eq!(original_coordinate("half_pixel", 0, 3, 6, 2.0).unwrap(), -0.25);
        assert_eq!(nearest_index("round_prefer_floor", 1.5, 2.0, 3), 1);
        assert_eq!(nearest_index("round_prefer_ceil", 1.5, 2.0, 3), 2);
        assert_eq!(nearest_index("floor", -0.25, 2.0, 3), 0);
    }
}

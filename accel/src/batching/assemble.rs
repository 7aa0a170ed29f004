//! Turning queued requests into one backend batch and the batch's outputs back into per-request
//! outputs. Inputs are passed to the backend as the requests' own buffers (the backend copies them
//! once, into its tensors); outputs are split by row ranges with `Bytes::slice`, without copying.
//! Public for the hot-path micro-benchmarks.

use bytes::Bytes;

use crate::backend::{Batch, BatchInput, Cancel};
use crate::core::{
    BatchInputKind, BatchInputSpec, DataType, IoSpec, ModelSpec, Tensor, ValidatedRequest, bytes_elements, classify,
    element_count,
};

/// Resolves a config `reshape` (which may hold one -1) for `elements` elements.
fn resolve(shape: &[i64], elements: usize) -> Option<Vec<usize>> {
    let known: usize = shape.iter().filter(|&&d| d >= 0).map(|&d| d as usize).product();
    shape
        .iter()
        .map(|&d| {
            if d >= 0 {
                Some(d as usize)
            } else {
                elements.checked_div(known)
            }
        })
        .collect()
}

/// The shape a model input has in the batch: rows first when batching, then the feature dims (or the
/// config's reshape of them).
fn batched_shape(spec: &ModelSpec, io: &IoSpec, first: &Tensor, rows: usize) -> Vec<usize> {
    let features = if spec.batches() {
        &first.shape[1..]
    } else {
        &first.shape[..]
    };
    let features = match &io.reshape {
        Some(r) => resolve(r, element_count(features).unwrap_or(0)).unwrap_or_else(|| features.to_vec()),
        None => features.to_vec(),
    };
    if spec.batches() {
        let mut s = Vec::with_capacity(features.len() + 1);
        s.push(rows);
        s.extend(features);
        s
    } else {
        features
    }
}

/// Builds the backend's batch from compatible requests (same non-batch shapes, see
/// `ValidatedRequest::batches_with`, except ragged and padded inputs); `cancel` tells whether they
/// are still wanted. Padded inputs are padded to the batch's longest, ragged inputs concatenated
/// as 1-D, and the config's batch inputs generated after the model's inputs.
pub fn batch(spec: &ModelSpec, entries: &[&ValidatedRequest], cancel: Cancel) -> Batch {
    let rows: usize = entries.iter().map(|p| p.batch_size).sum();
    let padding = spec.variable.padding.as_ref();
    let mut inputs: Vec<Option<BatchInput>> = spec
        .inputs
        .iter()
        .enumerate()
        .map(|(k, io)| {
            let first = entries.first()?.inputs[k].as_ref()?;
            let parts = || -> Vec<Bytes> {
                entries
                    .iter()
                    .filter_map(|p| p.inputs[k].as_ref().map(|t| t.data.clone()))
                    .collect()
            };
            if io.ragged {
                let elements = entries
                    .iter()
                    .filter_map(|p| p.inputs[k].as_ref().and_then(Tensor::element_count))
                    .sum();
                return Some(BatchInput {
                    datatype: io.datatype,
                    shape: vec![elements],
                    parts: parts(),
                });
            }
            if let Some((_, pad)) = padding.and_then(|p| p.inputs.iter().find(|(i, _)| *i == k)) {
                return Some(padded_input(io, entries, k, rows, pad));
            }
            Some(BatchInput {
                datatype: io.datatype,
                shape: batched_shape(spec, io, first, rows),
                parts: parts(),
            })
        })
        .collect();
    for b in &spec.variable.batch_inputs {
        inputs.push(Some(batch_input(b, entries)));
    }
    let mut outputs: Vec<usize> = Vec::new();
    for p in entries {
        match &p.outputs {
            Some(wanted) => outputs.extend(wanted),
            None => outputs.extend(0..spec.outputs.len()),
        }
    }
    outputs.sort_unstable();
    outputs.dedup();
    Batch {
        inputs,
        outputs,
        cancel,
    }
}

/// Real and computed tokens of a padded batch (rows × the first padded input's longest).
pub fn padding_tokens(entries: &[&ValidatedRequest]) -> (u64, u64) {
    let rows: usize = entries.iter().map(|p| p.batch_size).sum();
    let real: usize = entries.iter().map(|p| p.batch_size * p.tokens()).sum();
    let ndims = entries.first().map_or(0, |p| p.lengths.len());
    let longest: usize = (0..ndims)
        .map(|d| {
            entries
                .iter()
                .filter_map(|p| p.lengths.get(d))
                .copied()
                .max()
                .unwrap_or(0)
        })
        .product();
    (real as u64, (rows * longest) as u64)
}

/// Feature dims (without the batch dimension) of input `k` padded to the batch's largest in each
/// variable dimension.
fn padded_dims(io: &IoSpec, entries: &[&ValidatedRequest], k: usize) -> Vec<usize> {
    let rank = io.dims.len();
    (0..rank)
        .map(|d| {
            entries
                .iter()
                .filter_map(|p| p.inputs[k].as_ref().and_then(|t| t.shape.get(d + 1)))
                .copied()
                .max()
                .unwrap_or(0)
        })
        .collect()
}

/// A padded input: each request's rows copied into the batch's shape, the rest filled with the
/// pad value. Requests already of the batch's shape are passed without a copy.
fn padded_input(io: &IoSpec, entries: &[&ValidatedRequest], k: usize, rows: usize, pad: &[u8]) -> BatchInput {
    let dims = padded_dims(io, entries, k);
    let shape: Vec<usize> = std::iter::once(rows).chain(dims.iter().copied()).collect();
    let mut parts = Vec::with_capacity(entries.len());
    for p in entries {
        let Some(t) = p.inputs[k].as_ref() else { continue };
        if t.shape[1..] == dims[..] {
            parts.push(t.data.clone());
            continue;
        }
        let row_elems = element_count(&dims).unwrap_or(0);
        let mut out = Vec::with_capacity(t.shape[0] * row_elems * pad.len());
        let src_row = t.data.len() / t.shape[0].max(1);
        for r in 0..t.shape[0] {
            pad_block(
                &t.data[r * src_row..(r + 1) * src_row],
                &t.shape[1..],
                &dims,
                pad,
                &mut out,
            );
        }
        parts.push(Bytes::from(out));
    }
    BatchInput {
        datatype: io.datatype,
        shape,
        parts,
    }
}

/// Appends `src` (row-major, of shape `have`) laid out in shape `want` (each dimension at least as
/// large), filling what `src` lacks with `pad`.
fn pad_block(src: &[u8], have: &[usize], want: &[usize], pad: &[u8], out: &mut Vec<u8>) {
    let elem = pad.len();
    match (have, want) {
        ([], []) => out.extend_from_slice(src),
        ([h], [w]) => {
            out.extend_from_slice(&src[..h * elem]);
            for _ in *h..*w {
                out.extend_from_slice(pad);
            }
        }
        ([h, have_rest @ ..], [w, want_rest @ ..]) => {
            let inner_src = element_count(have_rest).unwrap_or(0) * elem;
            for i in 0..*h {
                pad_block(&src[i * inner_src..(i + 1) * inner_src], have_rest, want_rest, pad, out);
            }
            let inner_want = element_count(want_rest).unwrap_or(0);
            for _ in 0..(w - h) * inner_want {
                out.extend_from_slice(pad);
            }
        }
        _ => {}
    }
}

/// The inverse of [`pad_block`]: the `want`-shaped block of `src` (of shape `have`).
fn cut_block(src: &[u8], have: &[usize], want: &[usize], elem: usize, out: &mut Vec<u8>) {
    match (have, want) {
        ([], []) => out.extend_from_slice(src),
        ([_], [w]) => out.extend_from_slice(&src[..w * elem]),
        ([_, have_rest @ ..], [w, want_rest @ ..]) => {
            let inner = element_count(have_rest).unwrap_or(0) * elem;
            for i in 0..*w {
                cut_block(&src[i * inner..(i + 1) * inner], have_rest, want_rest, elem, out);
            }
        }
        _ => {}
    }
}

/// A generated batch input (Triton's kinds; element counts include the batch dimension).
fn batch_input(b: &BatchInputSpec, entries: &[&ValidatedRequest]) -> BatchInput {
    let shapes: Vec<&[usize]> = entries
        .iter()
        .map(|p| p.inputs[b.source].as_ref().map_or(&[][..], |t| &t.shape[..]))
        .collect();
    let counts: Vec<usize> = shapes.iter().map(|s| element_count(s).unwrap_or(0)).collect();
    let mut values: Vec<i64> = Vec::new();
    let shape = match b.kind {
        BatchInputKind::ElementCount => {
            values.extend(counts.iter().map(|&c| c as i64));
            vec![counts.len()]
        }
        BatchInputKind::AccumulatedElementCount | BatchInputKind::AccumulatedElementCountWithZero => {
            if b.kind == BatchInputKind::AccumulatedElementCountWithZero {
                values.push(0);
            }
            let mut total = 0i64;
            for &c in &counts {
                total += c as i64;
                values.push(total);
            }
            vec![values.len()]
        }
        BatchInputKind::MaxElementCountAsShape => {
            let max = counts.iter().copied().max().unwrap_or(0);
            values.resize(max, 0);
            vec![max]
        }
        BatchInputKind::ItemShape | BatchInputKind::ItemShapeFlatten => {
            let rank = shapes.first().map_or(0, |s| s.len().saturating_sub(1));
            let mut items = 0;
            for s in &shapes {
                let rows = s.first().copied().unwrap_or(0);
                for _ in 0..rows {
                    values.extend(s[1..].iter().map(|&d| d as i64));
                    items += 1;
                }
            }
            if b.kind == BatchInputKind::ItemShape {
                vec![items, rank]
            } else {
                vec![items * rank]
            }
        }
    };
    let data: Vec<u8> = match b.datatype {
        DataType::F32 => values.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect(),
        _ => values.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect(),
    };
    BatchInput {
        datatype: b.datatype,
        shape,
        parts: vec![Bytes::from(data)],
    }
}

/// Byte offsets of the first `n + 1` element boundaries of a raw BYTES buffer (validated or
/// produced by an engine: a length running past the end is cut at the end).
fn bytes_offsets(data: &[u8]) -> Vec<usize> {
    let mut at = 0;
    std::iter::once(0)
        .chain(bytes_elements(data).map(|e| {
            at += 4 + e.len();
            at
        }))
        .collect()
}

/// Gives each request its rows of each output it asked for, in the order it asked: row ranges
/// (`Bytes::slice`, no copy), BYTES by element boundaries, padded outputs cut back to the request's
/// lengths, scattered batch outputs by the source input's shapes; then classification.
pub fn split(
    spec: &ModelSpec,
    produced: &[usize],
    outputs: Vec<Tensor>,
    entries: &[&ValidatedRequest],
) -> Vec<Result<Vec<Tensor>, String>> {
    let fail = |msg: String| entries.iter().map(|_| Err(msg.clone())).collect();
    if outputs.len() != produced.len() {
        return fail(format!(
            "the backend returned {} outputs for {} requested",
            outputs.len(),
            produced.len()
        ));
    }
    let rows: usize = entries.iter().map(|p| p.batch_size).sum();
    let scattered = |k: usize| spec.variable.batch_outputs.iter().find(|b| b.targets.contains(&k));
    if spec.batches()
        && let Some((bad, _)) = outputs
            .iter()
            .zip(produced)
            .find(|(t, k)| scattered(**k).is_none() && t.shape.first() != Some(&rows))
    {
        return fail(format!(
            "output '{}' has shape {:?}; its first dimension should be the batch size {rows}",
            bad.name, bad.shape
        ));
    }
    // Scattered outputs: each request's shape and byte range, consecutive in request order.
    let mut scatter: Vec<Option<Vec<Scattered>>> = Vec::with_capacity(outputs.len());
    for (t, &k) in outputs.iter().zip(produced) {
        let Some(b) = scattered(k) else {
            scatter.push(None);
            continue;
        };
        let io = &spec.outputs[k];
        let size = io.datatype.size().unwrap_or(1);
        let template: Vec<i64> = io.reported_shape(spec.batches());
        let mut at = 0usize;
        let mut pieces = Vec::with_capacity(entries.len());
        for p in entries {
            let source = p.inputs[b.source].as_ref().map_or(&[][..], |t| &t.shape[..]);
            let shape: Vec<usize> = template
                .iter()
                .enumerate()
                .map(|(d, &want)| {
                    if want < 0 {
                        source.get(d).copied().unwrap_or(1)
                    } else {
                        want as usize
                    }
                })
                .collect();
            let bytes = element_count(&shape).unwrap_or(usize::MAX).saturating_mul(size);
            let end = at.saturating_add(bytes);
            if end > t.data.len() {
                return fail(format!(
                    "output '{}' has {} bytes, fewer than its scatter by input '{}' needs",
                    io.name,
                    t.data.len(),
                    spec.inputs[b.source].name
                ));
            }
            pieces.push((shape, at..end));
            at = end;
        }
        scatter.push(Some(pieces));
    }
    let offsets: Vec<Option<Vec<usize>>> = outputs
        .iter()
        .map(|t| (t.datatype == DataType::Bytes && spec.batches()).then(|| bytes_offsets(&t.data)))
        .collect();
    let padded_outputs: &[usize] = spec.variable.padding.as_ref().map_or(&[], |p| &p.outputs);
    let mut offset = 0;
    entries
        .iter()
        .enumerate()
        .map(|(e, p)| {
            let r = p.batch_size;
            let wanted: Vec<usize> = match &p.outputs {
                Some(w) => w.clone(),
                None => (0..spec.outputs.len()).collect(),
            };
            let result = wanted
                .iter()
                .map(|&k| {
                    let pos = produced
                        .iter()
                        .position(|x| *x == k)
                        .ok_or_else(|| format!("output {k} was not produced"))?;
                    let t = &outputs[pos];
                    let io = &spec.outputs[k];
                    let piece = if let Some(pieces) = &scatter[pos] {
                        let (shape, range) = &pieces[e];
                        Tensor {
                            name: io.name.clone(),
                            datatype: t.datatype,
                            shape: shape.clone(),
                            data: t.data.slice(range.clone()),
                        }
                    } else if spec.batches() {
                        let mut shape = t.shape.clone();
                        shape[0] = r;
                        let data = if let Some(offsets) = &offsets[pos] {
                            let per_row = (offsets.len() - 1).checked_div(rows).unwrap_or(0);
                            let (a, b) = (offset * per_row, (offset + r) * per_row);
                            match (offsets.get(a), offsets.get(b)) {
                                (Some(&a), Some(&b)) => t.data.slice(a..b),
                                _ => return Err(format!("output '{}' has too few BYTES elements", io.name)),
                            }
                        } else {
                            let row_bytes = t.data.len() / rows.max(1);
                            let rows_data = t.data.slice(offset * row_bytes..(offset + r) * row_bytes);
                            if padded_outputs.contains(&k) {
                                let want = cut_shape(&t.shape[1..], &io.dims, &p.lengths);
                                if want[..] != t.shape[1..] {
                                    let elem = t.datatype.size().unwrap_or(1);
                                    let mut out = Vec::with_capacity(r * element_count(&want).unwrap_or(0) * elem);
                                    for row in 0..r {
                                        let src = &rows_data[row * row_bytes..(row + 1) * row_bytes];
                                        cut_block(src, &t.shape[1..], &want, elem, &mut out);
                                    }
                                    shape = std::iter::once(r).chain(want).collect();
                                    Bytes::from(out)
                                } else {
                                    rows_data
                                }
                            } else {
                                rows_data
                            }
                        };
                        Tensor {
                            name: io.name.clone(),
                            datatype: t.datatype,
                            shape,
                            data,
                        }
                    } else {
                        Tensor {
                            name: io.name.clone(),
                            ..t.clone()
                        }
                    };
                    let mut piece = piece;
                    if scatter[pos].is_none() {
                        restore_and_verify(spec, io, r, &mut piece)?;
                    }
                    if let Some(&(_, count)) = p.classification.iter().find(|(o, _)| *o == k) {
                        piece = classify::classify(&piece, spec.batches(), count, io.labels.as_deref())
                            .map_err(|e| format!("output '{}': {e}", io.name))?;
                    }
                    Ok(piece)
                })
                .collect();
            offset += r;
            result
        })
        .collect()
}

/// One request's piece of a scattered output: its shape and byte range.
type Scattered = (Vec<usize>, std::ops::Range<usize>);

/// A padded output's feature shape for one request: its variable (-1) dimensions, in order, take
/// the request's lengths; the others stay as produced.
fn cut_shape(produced: &[usize], dims: &[i64], lengths: &[usize]) -> Vec<usize> {
    let mut next = lengths.iter();
    produced
        .iter()
        .enumerate()
        .map(|(d, &have)| match dims.get(d) {
            Some(-1) => next.next().copied().unwrap_or(have).min(have),
            _ => have,
        })
        .collect()
}

/// Restores the config's dims of a reshaped output and checks an output whose shape the config
/// states.
fn restore_and_verify(spec: &ModelSpec, io: &IoSpec, r: usize, piece: &mut Tensor) -> Result<(), String> {
    if io.reshape.is_some() {
        // The backend produced the reshaped form; the client sees the config's dims.
        let features = if spec.batches() {
            &piece.shape[1..]
        } else {
            &piece.shape[..]
        };
        let dims = resolve(&io.dims, element_count(features).unwrap_or(0))
            .ok_or_else(|| format!("output '{}': cannot restore dims {:?}", io.name, io.dims))?;
        piece.shape = if spec.batches() {
            std::iter::once(r).chain(dims).collect()
        } else {
            dims
        };
    }
    if io.verify_shape {
        let features = piece.shape.get(usize::from(spec.batches())..).unwrap_or(&[]);
        let fits = features.len() == io.dims.len()
            && features
                .iter()
                .zip(&io.dims)
                .all(|(&got, &want)| want < 0 || got as i64 == want);
        if !fits {
            return Err(format!(
                "output '{}' has shape {:?}, not the dims {:?} its config states",
                io.name, piece.shape, io.dims
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_and_cutting_back_are_inverses() {
        // A [2, 3] block of u16 padded to [3, 5] with 0xffff, then cut back.
        let src: Vec<u8> = (1u16..=6).flat_map(u16::to_le_bytes).collect();
        let mut padded = Vec::new();
        pad_block(&src, &[2, 3], &[3, 5], &[0xff, 0xff], &mut padded);
        let values: Vec<u16> = padded.chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        let p = 0xffff;
        assert_eq!(values, vec![1, 2, 3, p, p, 4, 5, 6, p, p, p, p, p, p, p]);
        let mut back = Vec::new();
        cut_block(&padded, &[3, 5], &[2, 3], 2, &mut back);
        assert_eq!(back, src);
    }

    #[test]
    fn byte_offsets_follow_the_length_prefixes() {
        let mut data = Vec::new();
        for s in [&b""[..], b"ab", b"xyz"] {
            data.extend((s.len() as u32).to_le_bytes());
            data.extend(s);
        }
        assert_eq!(bytes_offsets(&data), vec![0, 4, 10, 17]);
    }

    #[test]
    fn cut_shape_takes_the_request_lengths_in_variable_dimensions() {
        assert_eq!(cut_shape(&[128, 32], &[-1, 32], &[17]), vec![17, 32]);
        assert_eq!(cut_shape(&[32], &[32], &[17]), vec![32]);
        assert_eq!(cut_shape(&[9, 9, 4], &[-1, -1, 4], &[3, 5]), vec![3, 5, 4]);
    }
}

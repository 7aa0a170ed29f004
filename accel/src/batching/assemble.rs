//! Turning queued requests into one backend batch and the batch's outputs back into per-request
//! outputs. Inputs are passed to the backend as the requests' own buffers (the backend copies them
//! once, into its tensors); outputs are split by row ranges with `Bytes::slice`, without copying.
//! Public for the hot-path micro-benchmarks.

use crate::backend::{Batch, BatchInput, Cancel};
use crate::core::{IoSpec, ModelSpec, Tensor, ValidatedRequest, element_count};

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
/// `ValidatedRequest::batches_with`); `cancel` tells whether they are still wanted.
pub fn batch(spec: &ModelSpec, entries: &[&ValidatedRequest], cancel: Cancel) -> Batch {
    let rows: usize = entries.iter().map(|p| p.batch_size).sum();
    let inputs = spec
        .inputs
        .iter()
        .enumerate()
        .map(|(k, io)| {
            let first = entries.first()?.inputs[k].as_ref()?;
            Some(BatchInput {
                datatype: io.datatype,
                shape: batched_shape(spec, io, first, rows),
                parts: entries
                    .iter()
                    .filter_map(|p| p.inputs[k].as_ref().map(|t| t.data.clone()))
                    .collect(),
            })
        })
        .collect();
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

/// Gives each request its rows of each output it asked for, in the order it asked.
pub fn split(
    spec: &ModelSpec,
    produced: &[usize],
    outputs: Vec<Tensor>,
    entries: &[&ValidatedRequest],
) -> Vec<Result<Vec<Tensor>, String>> {
    if outputs.len() != produced.len() {
        let msg = format!(
            "the backend returned {} outputs for {} requested",
            outputs.len(),
            produced.len()
        );
        return entries.iter().map(|_| Err(msg.clone())).collect();
    }
    let rows: usize = entries.iter().map(|p| p.batch_size).sum();
    if spec.batches()
        && let Some(bad) = outputs.iter().find(|t| t.shape.first() != Some(&rows))
    {
        let msg = format!(
            "output '{}' has shape {:?}; its first dimension should be the batch size {rows}",
            bad.name, bad.shape
        );
        return entries.iter().map(|_| Err(msg.clone())).collect();
    }
    let mut offset = 0;
    entries
        .iter()
        .map(|p| {
            let r = p.batch_size;
            let wanted: Vec<usize> = match &p.outputs {
                Some(w) => w.clone(),
                None => (0..spec.outputs.len()).collect(),
            };
            let result = wanted
                .iter()
                .map(|k| {
                    let pos = produced
                        .iter()
                        .position(|x| x == k)
                        .ok_or_else(|| format!("output {k} was not produced"))?;
                    let t = &outputs[pos];
                    let io = &spec.outputs[*k];
                    let mut piece = if spec.batches() {
                        let row_bytes = t.data.len() / rows.max(1);
                        let mut shape = t.shape.clone();
                        shape[0] = r;
                        Tensor {
                            name: io.name.clone(),
                            datatype: t.datatype,
                            shape,
                            data: t.data.slice(offset * row_bytes..(offset + r) * row_bytes),
                        }
                    } else {
                        Tensor {
                            name: io.name.clone(),
                            ..t.clone()
                        }
                    };
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
                    Ok(piece)
                })
                .collect();
            offset += r;
            result
        })
        .collect()
}

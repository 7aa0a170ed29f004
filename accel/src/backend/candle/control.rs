//! Control flow: If (the branch chosen at run time by its condition) and Loop (a trip count and/or a
//! condition, loop-carried values, scan outputs stacked along a new first axis). Each branch and body
//! is compiled once at load into its own plan, like the main graph; the values a sub-graph reads from
//! enclosing scopes arrive as extra inputs of the node (constants there become the sub-plan's own
//! constants, so its weights are prepared once too).

use candle_core::{DType, Tensor, bail};
use candle_onnx::onnx::tensor_shape_proto::dimension::Value as Dim;
use candle_onnx::onnx::type_proto::Value as TypeValue;
use candle_onnx::onnx::{GraphProto, NodeProto, ValueInfoProto};

use super::error::input_error;
use super::graph::{Plan, Scope, tensor_bytes};
use super::guard::to_candle;
use super::onnx::internal_dtype;
use super::ops::{Kernel, Result, arg, opt};

type LoadResult<T> = std::result::Result<T, BackendError>;
use crate::backend::BackendError;

pub(super) fn is_control_flow(node: &NodeProto) -> bool {
    (node.domain.is_empty() || node.domain == "ai.onnx") && matches!(node.op_type.as_str(), "If" | "Loop")
}

fn graph_attr<'a>(node: &'a NodeProto, name: &str) -> LoadResult<&'a GraphProto> {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .and_then(|a| a.g.as_ref())
        .ok_or_else(|| BackendError::InvalidModel(format!("{} without its '{name}' graph", node.op_type)))
}

/// The kernel of an If or Loop node whose sub-graphs read `outer` (names, and values known at load).
pub(super) fn compile(node: &NodeProto, scope: &Scope<'_>, outer: &[(String, Option<Tensor>)]) -> LoadResult<Kernel> {
    let declared = node.input.len();
    // Positions, among the node's extra inputs, of the captured values the sub-plans take as inputs.
    let runtime: Vec<usize> = outer
        .iter()
        .enumerate()
        .filter(|(_, (_, v))| v.is_none())
        .map(|(k, _)| k)
        .collect();
    let device = scope.device.clone();
    match node.op_type.as_str() {
        "If" => {
            let then_plan = Plan::compile_sub(graph_attr(node, "then_branch")?, scope, outer)?;
            let else_plan = Plan::compile_sub(graph_attr(node, "else_branch")?, scope, outer)?;
            let wanted = node.output.len();
            for (which, plan) in [("then_branch", &then_plan), ("else_branch", &else_plan)] {
                if plan.outputs.len() != wanted {
                    return Err(BackendError::InvalidModel(format!(
                        "If: {which} has {} outputs, the node {wanted}",
                        plan.outputs.len()
                    )));
                }
            }
            Ok(Kernel::guarded(move |args, guard| {
                let plan = if truthy(arg(args, 0)?)? { &then_plan } else { &else_plan };
                let inputs = runtime.iter().map(|&k| opt(args, declared + k).cloned()).collect();
                plan.run(inputs, guard).map_err(to_candle)
            }))
        }
        "Loop" => {
            let body_graph = graph_attr(node, "body")?;
            let body = Plan::compile_sub(body_graph, scope, outer)?;
            let carried = declared.saturating_sub(2);
            let formal = body.inputs.len() - runtime.len();
            if formal != carried + 2 || body.outputs.len() < carried + 1 {
                return Err(BackendError::InvalidModel(format!(
                    "Loop: the body takes {formal} inputs and gives {} outputs for {carried} loop-carried values",
                    body.outputs.len()
                )));
            }
            let scans = body.outputs.len() - 1 - carried;
            // What a scan output is after zero iterations: [0, its declared dims], its declared type.
            let empty: Vec<(Vec<usize>, DType)> = body_graph.output[1 + carried..]
                .iter()
                .map(|v| {
                    let (elem, dims) = declared_type(v);
                    let mut shape = vec![0];
                    shape.extend(dims.unwrap_or_default());
                    (shape, internal_dtype(elem).unwrap_or(DType::F32))
                })
                .collect();
            Ok(Kernel::guarded(move |args, guard| {
                let trip = opt(args, 0).map(scalar_i64).transpose()?;
                // A trip count (which may come from the request) beyond the limit is refused before
                // anything runs; a condition that never turns false is stopped at the limit.
                let max = guard.max_iterations();
                if let Some(m) = trip
                    && u64::try_from(m).is_ok_and(|m| m > max)
                {
                    input_error!(
                        "Loop trip count {m} is more than the {max} iterations a Loop may run (--max-loop-iterations)"
                    )
                }
                let mut keep = opt(args, 1).map(truthy).transpose()?.unwrap_or(true);
                let mut values: Vec<Tensor> = (0..carried).map(|k| arg(args, 2 + k).cloned()).collect::<Result<_>>()?;
                let captured: Vec<Option<Tensor>> = runtime.iter().map(|&k| opt(args, declared + k).cloned()).collect();
                let mut scanned: Vec<Vec<Tensor>> = vec![Vec::new(); scans];
                // Scan outputs pile up across iterations: they count against the execution's limit.
                let mut held = 0u64;
                let result = (|| {
                    let mut i = 0i64;
                    while keep && trip.is_none_or(|m| i < m) {
                        if u64::try_from(i).is_ok_and(|i| i >= max) {
                            input_error!(
                                "Loop ran {max} iterations without its condition turning false (--max-loop-iterations)"
                            )
                        }
                        guard.check()?;
                        let mut inputs = Vec::with_capacity(2 + carried + captured.len());
                        inputs.push(Some(Tensor::new(i, &device)?));
                        inputs.push(Some(Tensor::new(1u8, &device)?));
                        inputs.extend(values.drain(..).map(Some));
                        inputs.extend(captured.iter().cloned());
                        let mut outputs = body.run(inputs, guard).map_err(to_candle)?.into_iter();
                        keep = match outputs.next() {
                            Some(c) => truthy(&c)?,
                            None => bail!("Loop body gave no condition"),
                        };
                        values.extend(outputs.by_ref().take(carried));
                        for (list, t) in scanned.iter_mut().zip(outputs) {
                            let bytes = tensor_bytes(&t);
                            guard.admit(bytes, bytes, || "Loop's scan outputs".into())?;
                            guard.charge(bytes);
                            held += bytes;
                            list.push(t.unsqueeze(0)?);
                        }
                        i += 1;
                    }
                    // Stacking copies the scans once more.
                    guard.admit(held, held, || "Loop's scan outputs".into())?;
                    for (list, (shape, dtype)) in scanned.drain(..).zip(&empty) {
                        values.push(if list.is_empty() {
                            Tensor::zeros(shape.as_slice(), *dtype, &device)?
                        } else {
                            Tensor::cat(&list, 0)?
                        });
                    }
                    Ok(std::mem::take(&mut values))
                })();
                guard.release(held);
                result
            }))
        }
        other => Err(BackendError::InvalidModel(format!(
            "{other} is not a control-flow operator"
        ))),
    }
}

/// A value's declared element type and, when every dimension is a number, its dims.
fn declared_type(v: &ValueInfoProto) -> (i32, Option<Vec<usize>>) {
    match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(TypeValue::TensorType(t)) => {
            let dims = t.shape.as_ref().and_then(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(Dim::DimValue(n)) if n >= 0 => Some(n as usize),
                        _ => None,
                    })
                    .collect()
            });
            (t.elem_type, dims)
        }
        _ => (0, None),
    }
}

/// A single-element condition (bool as u8, or any number): non-zero is true.
fn truthy(t: &Tensor) -> Result<bool> {
    if t.elem_count() != 1 {
        bail!("a condition must hold one element, not {:?}", t.dims())
    }
    Ok(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?[0] != 0.0)
}

fn scalar_i64(t: &Tensor) -> Result<i64> {
    if t.elem_count() != 1 {
        bail!("a trip count must hold one element, not {:?}", t.dims())
    }
    Ok(t.flatten_all()?.to_dtype(DType::I64)?.to_vec1::<i64>()?[0])
}

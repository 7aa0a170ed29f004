//! The execution plan of an ONNX graph, built once per load: every value gets a slot, initializers
//! become device tensors, each node becomes a compiled kernel, nodes whose inputs are all constant are
//! evaluated at load (constant folding), and each intermediate is dropped right after its last use.
//! Running the plan is a walk over the steps with no parsing and no weight conversion.

use std::cell::Cell;
use std::collections::HashMap;

use candle_core::{Device, Tensor};
use candle_onnx::onnx::{
    GraphProto, ModelProto, NodeProto, ValueInfoProto, tensor_shape_proto::dimension::Value as Dim,
    type_proto::Value as TypeValue,
};

use super::bound::{self, Bound};
use super::control;
use super::error::message;
use super::fuse;
use super::guard::{self, Guard};
use super::onnx::{internal_dtype, tensor_from_proto, wire_datatype};
use super::ops::{self, Kernel, NodeCtx};
use crate::backend::{BackendError, LoadLimits};
use crate::core::{GraphIo, ModelFile, Signature};

/// A graph input or output.
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    pub name: String,
    pub slot: usize,
    /// The ONNX element type the graph declares.
    pub elem_type: i32,
}

#[derive(Debug)]
struct Step {
    name: String,
    op_type: String,
    kernel: Kernel,
    /// What the step may create, admitted by the guard before it runs.
    bound: Bound,
    inputs: Vec<Option<usize>>,
    outputs: Vec<Option<usize>>,
    /// Slots whose last reader is this step.
    release: Vec<usize>,
}

/// A compiled graph.
#[derive(Debug)]
pub(super) struct Plan {
    /// One entry per slot: the constants (initializers and folded values); `None` for computed ones.
    constants: Vec<Option<Tensor>>,
    pub inputs: Vec<Endpoint>,
    pub outputs: Vec<Endpoint>,
    steps: Vec<Step>,
    pub signature: Signature,
    pub weight_bytes: u64,
}

/// What every graph of a model shares: the opset, the model file (its external data is resolved
/// next to it, inside its model's directory), the device, the load's limits and what constant
/// folding has created so far.
pub(super) struct Scope<'a> {
    pub opset: i64,
    pub file: &'a ModelFile,
    pub device: &'a Device,
    pub limits: &'a LoadLimits,
    pub folded: &'a Cell<u64>,
}

struct Slots(HashMap<String, usize>);

impl Slots {
    fn get_or_add(&mut self, name: &str) -> usize {
        let n = self.0.len();
        *self.0.entry(name.to_string()).or_insert(n)
    }
}

fn graph_io(v: &ValueInfoProto) -> Result<GraphIo, BackendError> {
    let Some(TypeValue::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(BackendError::InvalidModel(format!("'{}' is not a tensor", v.name)));
    };
    let datatype = wire_datatype(t.elem_type).ok_or_else(|| {
        BackendError::UnsupportedDataType(format!(
            "'{}' has ONNX element type {}, which Accel does not serve",
            v.name, t.elem_type
        ))
    })?;
    let dims = t.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .map(|d| match &d.value {
                Some(Dim::DimValue(v)) if *v >= 0 => Some(*v as usize),
                _ => None,
            })
            .collect()
    });
    Ok(GraphIo {
        name: v.name.clone(),
        datatype,
        dims,
    })
}

/// Bytes a tensor holds.
pub(super) fn tensor_bytes(t: &Tensor) -> u64 {
    (t.elem_count() * t.dtype().size_in_bytes()) as u64
}

impl Plan {
    pub(super) fn compile(
        model: &ModelProto,
        file: &ModelFile,
        device: &Device,
        limits: &LoadLimits,
    ) -> Result<Plan, BackendError> {
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| BackendError::InvalidModel("the file has no graph".into()))?;
        let opset = model
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map_or(1, |o| o.version);
        let folded = Cell::new(0);
        let scope = Scope {
            opset,
            file,
            device,
            limits,
            folded: &folded,
        };
        Self::compile_graph(graph, &scope, &[], true)
    }

    /// A sub-graph (a branch of If, the body of Loop): its inputs are its formal inputs, then the
    /// values it reads from enclosing scopes that are not constants there (`outer`, in order); the
    /// constant ones become its own constants.
    pub(super) fn compile_sub(
        graph: &GraphProto,
        scope: &Scope<'_>,
        outer: &[(String, Option<Tensor>)],
    ) -> Result<Plan, BackendError> {
        Self::compile_graph(graph, scope, outer, false)
    }

    fn compile_graph(
        graph: &GraphProto,
        scope: &Scope<'_>,
        outer: &[(String, Option<Tensor>)],
        top: bool,
    ) -> Result<Plan, BackendError> {
        let invalid = |m: String| BackendError::InvalidModel(m);
        let (opset, device) = (scope.opset, scope.device);

        let mut slots = Slots(HashMap::new());
        let mut constants: HashMap<usize, Tensor> = HashMap::new();
        let mut weight_bytes = 0u64;
        for init in &graph.initializer {
            scope.limits.check_deadline()?;
            let t = tensor_from_proto(init, scope.file, device).map_err(invalid)?;
            weight_bytes += tensor_bytes(&t);
            constants.insert(slots.get_or_add(&init.name), t);
        }

        let mut inputs = Vec::new();
        let mut signature = Signature::default();
        for v in &graph.input {
            let slot = slots.get_or_add(&v.name);
            if constants.contains_key(&slot) {
                continue; // an initializer listed as an input: a constant unless overridden
            }
            if top {
                signature.inputs.push(graph_io(v)?);
            }
            inputs.push(Endpoint {
                name: v.name.clone(),
                slot,
                elem_type: elem_type(v),
            });
        }
        for (name, value) in outer {
            let slot = slots.get_or_add(name);
            match value {
                Some(t) => {
                    constants.insert(slot, t.clone());
                }
                None => inputs.push(Endpoint {
                    name: name.clone(),
                    slot,
                    elem_type: 0,
                }),
            }
        }
        let mut outputs = Vec::new();
        for v in &graph.output {
            if top {
                signature.outputs.push(graph_io(v)?);
            }
            outputs.push(Endpoint {
                name: v.name.clone(),
                slot: slots.get_or_add(&v.name),
                elem_type: elem_type(v),
            });
        }

        let order = topological_order(
            scope.limits,
            &graph.node,
            &graph
                .initializer
                .iter()
                .map(|t| t.name.as_str())
                .chain(graph.input.iter().map(|v| v.name.as_str()))
                .chain(outer.iter().map(|(n, _)| n.as_str()))
                .collect::<Vec<_>>(),
        )?;
        // Nodes without inputs (Constant, mostly) first: exporters put them next to their readers,
        // and fusion needs every constant of a chain known when it reaches the chain's first node.
        let (mut order, rest): (Vec<usize>, Vec<usize>) = order.into_iter().partition(|&n| {
            graph.node[n].input.iter().all(String::is_empty) && captured_names(&graph.node[n]).is_empty()
        });
        order.extend(rest);
        let folds = batch_norms_to_fold(graph);
        let mut folded_away: std::collections::HashSet<usize> = std::collections::HashSet::new();
        let mut unsupported: Vec<String> = Vec::new();
        let mut steps: Vec<Step> = Vec::new();
        let graph_outputs: Vec<String> = graph.output.iter().map(|v| v.name.clone()).collect();
        let readers = fuse::readers(&graph.node, &graph_outputs);
        for &n in &order {
            scope.limits.check_deadline()?;
            if folded_away.contains(&n) {
                continue;
            }
            if !folds.contains_key(&n)
                && let Some(chain) = element_wise_chain(graph, n, &readers, scope, &mut slots, &constants)
            {
                folded_away.extend(chain.nodes[1..].iter().copied());
                steps.push(chain.step);
                continue;
            }
            let folded_node;
            // Fold only when the weights, bias and batch-norm parameters are known now (initializers,
            // or Constant nodes already folded).
            let fold = folds.get(&n).copied().filter(|&(bn, _)| {
                let mut known = |name: &String| name.is_empty() || constants.contains_key(&slots.get_or_add(name));
                graph.node[n].input[1..].iter().all(&mut known) && graph.node[bn].input[1..].iter().all(&mut known)
            });
            let node = match fold {
                Some((bn, weights_unshared)) => {
                    folded_away.insert(bn);
                    let (conv, norm) = (&graph.node[n], &graph.node[bn]);
                    folded_node = fold_into_conv(conv, norm, &mut slots, &mut constants)
                        .map_err(|e| invalid(format!("folding {} into {}: {}", norm.name, conv.name, message(&e))))?;
                    if weights_unshared {
                        // The original weights have no other reader: keep only the folded copy.
                        constants.remove(&slots.get_or_add(&conv.input[1]));
                    }
                    &folded_node
                }
                None => &graph.node[n],
            };
            let node_label = if node.name.is_empty() {
                node.op_type.clone()
            } else {
                format!("{} ({})", node.name, node.op_type)
            };
            if !(node.domain.is_empty() || node.domain == "ai.onnx") {
                unsupported.push(format!("{}:{}", node.domain, node.op_type));
                continue;
            }
            let mut in_slots: Vec<Option<usize>> = node
                .input
                .iter()
                .map(|s| (!s.is_empty()).then(|| slots.get_or_add(s)))
                .collect();
            // Control flow: the values its sub-graphs read from this scope become extra inputs.
            let control = control::is_control_flow(node);
            let captured = if control { captured_names(node) } else { Vec::new() };
            in_slots.extend(captured.iter().map(|n| Some(slots.get_or_add(n))));
            let out_slots: Vec<Option<usize>> = node
                .output
                .iter()
                .map(|s| (!s.is_empty()).then(|| slots.get_or_add(s)))
                .collect();
            let consts: Vec<Option<&Tensor>> = in_slots.iter().map(|s| s.and_then(|s| constants.get(&s))).collect();
            let ctx = NodeCtx {
                node,
                opset,
                consts,
                file: scope.file,
                device,
            };
            let compiled = if control {
                let outer: Vec<(String, Option<Tensor>)> = captured
                    .iter()
                    .zip(&in_slots[node.input.len()..])
                    .map(|(n, s)| (n.clone(), s.and_then(|s| constants.get(&s)).cloned()))
                    .collect();
                control::compile(node, scope, &outer).map(Some).map_err(|e| match e {
                    BackendError::InvalidModel(m) => invalid(format!("node {node_label}: {m}")),
                    other => other,
                })?
            } else {
                ops::compile(&ctx).map_err(|e| invalid(format!("node {node_label}: {}", message(&e))))?
            };
            let Some(kernel) = compiled else {
                unsupported.push(node.op_type.clone());
                continue;
            };
            let bound = bound::for_node(node, opset);
            // Constant folding: every given input known now, and what it creates and the work it
            // takes within the load's limits (beyond them, or past the iterations a Loop may run,
            // the node runs at request time, under each request's limits).
            let all_const = in_slots.iter().all(|s| s.is_none_or(|s| constants.contains_key(&s)));
            if all_const && unsupported.is_empty() {
                let args: Vec<Option<&Tensor>> = in_slots.iter().map(|s| s.and_then(|s| constants.get(&s))).collect();
                let room = scope.limits.fold_bytes.saturating_sub(scope.folded.get());
                // The fold guard admits the node as an execution's admits each step.
                let guard = Guard::fold(scope.limits, room);
                let folded = guard
                    .admit(bound.of(&args), bound.work(&args), || format!("node {node_label}"))
                    .and_then(|()| kernel.run(&args, &guard));
                match folded {
                    Ok(values) => {
                        let made: u64 = values.iter().map(tensor_bytes).sum();
                        if made <= room {
                            scope.folded.set(scope.folded.get() + made);
                            for (slot, value) in out_slots.iter().zip(values) {
                                if let Some(slot) = slot {
                                    constants.insert(*slot, value);
                                }
                            }
                            continue;
                        }
                    }
                    Err(e) => match guard::to_backend(&e, format!("node {node_label}: {}", message(&e))) {
                        // Too large or too long to fold: computed per request instead.
                        BackendError::ResourceExhausted(_) | BackendError::InvalidInput(_) => {
                            tracing::debug!(node = %node_label, reason = %message(&e), "not folded at load");
                        }
                        BackendError::TimedOut(m) => return Err(BackendError::TimedOut(m)),
                        other => return Err(invalid(other.to_string())),
                    },
                }
            }
            steps.push(Step {
                name: node.name.clone(),
                op_type: node.op_type.clone(),
                kernel,
                bound,
                inputs: in_slots,
                outputs: out_slots,
                release: Vec::new(),
            });
        }
        if !unsupported.is_empty() {
            unsupported.sort();
            unsupported.dedup();
            return Err(BackendError::UnsupportedOperator(format!(
                "{} (the candle backend does not implement {})",
                unsupported.join(", "),
                if unsupported.len() == 1 { "it" } else { "them" }
            )));
        }
        let n_slots = slots.0.len();
        for out in &outputs {
            let produced = constants.contains_key(&out.slot)
                || inputs.iter().any(|i| i.slot == out.slot)
                || steps.iter().any(|s| s.outputs.contains(&Some(out.slot)));
            if !produced {
                return Err(invalid(format!("graph output '{}' is produced by no node", out.name)));
            }
        }

        // Release each computed value after its last reader (never graph outputs or constants).
        let mut last_use: HashMap<usize, usize> = HashMap::new();
        for (k, step) in steps.iter().enumerate() {
            for s in step.inputs.iter().flatten() {
                last_use.insert(*s, k);
            }
        }
        for (slot, k) in last_use {
            if !constants.contains_key(&slot) && !outputs.iter().any(|o| o.slot == slot) {
                steps[k].release.push(slot);
            }
        }
        let mut table = vec![None; n_slots];
        for (slot, t) in constants {
            table[slot] = Some(t);
        }
        Ok(Plan {
            constants: table,
            inputs,
            outputs,
            steps,
            signature,
            weight_bytes,
        })
    }

    /// Runs the graph on `inputs` (one per [`Plan::inputs`] entry; `None` leaves an input out) and
    /// returns every graph output in order. Each step is admitted by `guard` first (what the run
    /// holds plus what the step may create must fit its limit, and the run must still be wanted);
    /// the values it creates are counted until their last reader has run.
    pub(super) fn run(&self, inputs: Vec<Option<Tensor>>, guard: &Guard<'_>) -> Result<Vec<Tensor>, BackendError> {
        let mut env = self.constants.clone();
        for (endpoint, value) in self.inputs.iter().zip(inputs) {
            if value.is_some() {
                env[endpoint.slot] = value;
            }
        }
        // Bytes of the values this run created, per slot (inputs and constants are counted by
        // whoever owns them).
        let mut held = vec![0u64; env.len()];
        let result = self.steps(&mut env, &mut held, guard);
        guard.release(held.iter().sum());
        result?;
        self.outputs
            .iter()
            .map(|o| {
                env[o.slot]
                    .clone()
                    .ok_or_else(|| BackendError::Execution(format!("output '{}' was not computed", o.name)))
            })
            .collect()
    }

    fn steps(&self, env: &mut [Option<Tensor>], held: &mut [u64], guard: &Guard<'_>) -> Result<(), BackendError> {
        for step in &self.steps {
            let args: Vec<Option<&Tensor>> = step.inputs.iter().map(|s| s.and_then(|s| env[s].as_ref())).collect();
            let label = || {
                if step.name.is_empty() {
                    step.op_type.clone()
                } else {
                    format!("{} ({})", step.name, step.op_type)
                }
            };
            let started = super::profile::enabled().then(std::time::Instant::now);
            // The guard's refusal names the node itself; a kernel's error is prefixed with it.
            guard
                .admit(step.bound.of(&args), step.bound.work(&args), || {
                    format!("node {}", label())
                })
                .map_err(|e| guard::to_backend(&e, message(&e)))?;
            let values = step
                .kernel
                .run(&args, guard)
                .map_err(|e| guard::to_backend(&e, format!("node {}: {}", label(), message(&e))))?;
            if let Some(started) = started {
                let elapsed = started.elapsed();
                if super::profile::by_shape() {
                    let shapes: Vec<_> = args.iter().map(|a| a.map(|t| t.dims().to_vec())).collect();
                    super::profile::record(&format!("{} {shapes:?}", step.op_type), elapsed);
                } else {
                    super::profile::record(&step.op_type, elapsed);
                }
            }
            for (slot, value) in step.outputs.iter().zip(values) {
                if let Some(slot) = slot {
                    let bytes = tensor_bytes(&value);
                    guard.charge(bytes);
                    held[*slot] = held[*slot].saturating_add(bytes);
                    env[*slot] = Some(value);
                }
            }
            for &slot in &step.release {
                env[slot] = None;
                guard.release(std::mem::take(&mut held[slot]));
            }
        }
        Ok(())
    }
}

fn elem_type(v: &ValueInfoProto) -> i32 {
    match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(TypeValue::TensorType(t)) => t.elem_type,
        _ => 0,
    }
}

/// An element-wise chain from node `first` on, compiled as one fused step (see `fuse`).
struct Chain {
    nodes: Vec<usize>,
    step: Step,
}

fn element_wise_chain(
    graph: &GraphProto,
    first: usize,
    readers: &HashMap<String, Vec<usize>>,
    scope: &Scope<'_>,
    slots: &mut Slots,
    constants: &HashMap<usize, Tensor>,
) -> Option<Chain> {
    // Looked up by name (a map of every constant input of the graph, built per node, made compiling
    // quadratic in the node count).
    let names = &slots.0;
    let constant = |name: &str| names.get(name).and_then(|s| constants.get(s)).cloned();
    let node = &graph.node[first];
    let mut variable: Vec<&String> = node
        .input
        .iter()
        .filter(|i| !i.is_empty() && constant(i).is_none())
        .collect();
    variable.dedup();
    let [root] = variable[..] else {
        return None;
    };
    let root = root.clone();
    let mut current = root.clone();
    let (mut nodes, mut ops, mut fallback) = (Vec::new(), Vec::new(), Vec::new());
    let mut k = first;
    loop {
        let node = &graph.node[k];
        if node.output.is_empty() {
            break;
        }
        let Some(op) = fuse::chain_op(node, scope.opset, &root, &current, &constant) else {
            break;
        };
        // The node's own kernel, for tensors the fused path does not take.
        let consts: Vec<Option<Tensor>> = node.input.iter().map(|i| constant(i)).collect();
        let ctx = NodeCtx {
            node,
            opset: scope.opset,
            consts: consts.iter().map(Option::as_ref).collect(),
            file: scope.file,
            device: scope.device,
        };
        let Ok(Some(kernel)) = ops::compile(&ctx) else {
            break;
        };
        let args = node
            .input
            .iter()
            .zip(consts)
            .map(|(name, value)| match value {
                _ if name.is_empty() => None,
                _ if *name == current && nodes.is_empty() => Some(fuse::FallbackArg::Root),
                _ if *name == current => Some(fuse::FallbackArg::Current),
                _ if *name == root => Some(fuse::FallbackArg::Root),
                Some(t) => Some(fuse::FallbackArg::Constant(t)),
                None => None,
            })
            .collect();
        fallback.push(fuse::Fallback { kernel, args });
        ops.push(op);
        nodes.push(k);
        current = node.output[0].clone();
        // The chain goes on only through a value with exactly one reader (not a graph output).
        match readers.get(&current).map(Vec::as_slice) {
            Some(&[next]) if next != usize::MAX => k = next,
            _ => break,
        }
    }
    if nodes.len() < 2 {
        return None;
    }
    let names: Vec<&str> = nodes.iter().map(|&k| graph.node[k].op_type.as_str()).collect();
    Some(Chain {
        step: Step {
            name: graph.node[first].name.clone(),
            op_type: format!("Fused({})", names.join("+")),
            kernel: fuse::kernel(ops, fallback),
            bound: Bound::inputs(),
            inputs: vec![Some(slots.get_or_add(&root))],
            outputs: vec![Some(slots.get_or_add(&current))],
            release: Vec::new(),
        },
        nodes,
    })
}

/// Conv nodes whose only reader is an inference-mode BatchNormalization (folded when their parameters
/// turn out constant):
/// conv index -> (batch-norm index, whether the conv is its weights' only reader). The pair becomes one Conv with scaled weights and a bias (what
/// ONNX Runtime does too), saving a pass over the activation map per pair.
fn batch_norms_to_fold(graph: &GraphProto) -> HashMap<usize, (usize, bool)> {
    let default_domain = |n: &NodeProto| n.domain.is_empty() || n.domain == "ai.onnx";
    let mut readers: HashMap<String, usize> = HashMap::new();
    for node in &graph.node {
        for name in node.input.iter().cloned().chain(captured_names(node)) {
            *readers.entry(name).or_default() += 1;
        }
    }
    for v in &graph.output {
        *readers.entry(v.name.clone()).or_default() += 1;
    }
    // The Conv producing each value (first one, as a search from the start would find).
    let mut conv_of: HashMap<&str, usize> = HashMap::new();
    for (c, node) in graph.node.iter().enumerate() {
        if node.op_type == "Conv"
            && default_domain(node)
            && node.input.len() >= 2
            && let Some(out) = node.output.first()
        {
            conv_of.entry(out.as_str()).or_insert(c);
        }
    }
    let mut folds = HashMap::new();
    for (k, bn) in graph.node.iter().enumerate() {
        let constant_params = bn.input.len() == 5 && bn.input[1..].iter().all(|i| !i.is_empty());
        let training = bn.attribute.iter().any(|a| a.name == "training_mode" && a.i != 0);
        if bn.op_type != "BatchNormalization" || !default_domain(bn) || !constant_params || training {
            continue;
        }
        if bn.output.is_empty()
            || bn.output.iter().skip(1).any(|o| !o.is_empty())
            || readers.get(&bn.input[0]) != Some(&1)
        {
            continue;
        }
        if let Some(&c) = conv_of.get(bn.input[0].as_str()) {
            folds.insert(c, (k, readers.get(&graph.node[c].input[1]) == Some(&1)));
        }
    }
    folds
}

/// The Conv node that computes `conv` followed by `bn`: weights scaled per output channel, the
/// batch norm's shift as the bias, writing the batch norm's output.
fn fold_into_conv(
    conv: &NodeProto,
    bn: &NodeProto,
    slots: &mut Slots,
    constants: &mut HashMap<usize, Tensor>,
) -> candle_core::Result<NodeProto> {
    let get = |slots: &mut Slots, name: &str| -> candle_core::Result<Tensor> {
        constants
            .get(&slots.get_or_add(name))
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg(format!("'{name}' is not a constant")))
    };
    let eps = bn.attribute.iter().find(|a| a.name == "epsilon").map_or(1e-5, |a| a.f) as f64;
    let params: Vec<Tensor> = bn.input[1..5]
        .iter()
        .map(|n| get(slots, n)?.to_dtype(candle_core::DType::F64))
        .collect::<candle_core::Result<_>>()?;
    let (a, b) = ops::norm::fold_batch_norm(&params[0], &params[1], &params[2], &params[3], eps)?;
    let w = get(slots, &conv.input[1])?;
    if w.rank() == 0 {
        candle_core::bail!("the convolution's weights are a scalar")
    }
    let mut scale_shape = vec![1; w.rank()];
    scale_shape[0] = a.elem_count();
    let w_folded = w
        .to_dtype(candle_core::DType::F64)?
        .broadcast_mul(&a.reshape(scale_shape.as_slice())?)?
        .to_dtype(w.dtype())?;
    let bias = match conv.input.get(2).filter(|n| !n.is_empty()) {
        Some(name) => get(slots, name)?.to_dtype(candle_core::DType::F64)?.mul(&a)?.add(&b)?,
        None => b,
    };
    let bias = bias.to_dtype(w.dtype())?;
    let Some(out) = bn.output.first() else {
        candle_core::bail!("the batch normalization has no output")
    };
    let (w_name, b_name) = (format!("{out}::folded_weights"), format!("{out}::folded_bias"));
    constants.insert(slots.get_or_add(&w_name), w_folded);
    constants.insert(slots.get_or_add(&b_name), bias);
    let mut node = conv.clone();
    node.input = vec![conv.input[0].clone(), w_name, b_name];
    node.output = vec![out.clone()];
    Ok(node)
}

/// The names a node's sub-graphs (If branches, a Loop body, nested ones too) read from enclosing
/// scopes, in first-use order.
pub(super) fn captured_names(node: &NodeProto) -> Vec<String> {
    let mut names = Vec::new();
    for attr in &node.attribute {
        for g in attr.g.iter().chain(&attr.graphs) {
            for name in free_names(g) {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    names
}

/// What a graph reads that it does not define itself (initializers, inputs, node outputs).
fn free_names(graph: &GraphProto) -> Vec<String> {
    let mut defined: std::collections::HashSet<&str> = graph
        .initializer
        .iter()
        .map(|t| t.name.as_str())
        .chain(graph.input.iter().map(|v| v.name.as_str()))
        .collect();
    for node in &graph.node {
        defined.extend(node.output.iter().map(String::as_str));
    }
    let mut free = Vec::new();
    for node in &graph.node {
        let reads = node.input.iter().cloned().chain(captured_names(node));
        for name in reads {
            if !name.is_empty() && !defined.contains(name.as_str()) && !free.contains(&name) {
                free.push(name);
            }
        }
    }
    free
}

/// Node indices in an order where every input is produced first. ONNX requires files to be sorted
/// already; exporters sometimes are not, so sort when needed (Kahn's algorithm: linear in nodes and
/// edges, ties kept in file order). Stops at the load's deadline.
fn topological_order(limits: &LoadLimits, nodes: &[NodeProto], given: &[&str]) -> Result<Vec<usize>, BackendError> {
    let mut known: std::collections::HashSet<&str> = given.iter().copied().collect();
    known.insert("");
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (n, node) in nodes.iter().enumerate() {
        for o in &node.output {
            if !known.contains(o.as_str()) {
                producer.entry(o.as_str()).or_insert(n);
            }
        }
    }
    let reads: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| n.input.iter().cloned().chain(captured_names(n)).collect())
        .collect();
    let mut waiting = vec![0usize; nodes.len()];
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    let mut missing: Vec<Option<String>> = vec![None; nodes.len()];
    for (n, names) in reads.iter().enumerate() {
        for name in names {
            if known.contains(name.as_str()) {
                continue;
            }
            match producer.get(name.as_str()) {
                Some(&p) if p != n => {
                    waiting[n] += 1;
                    readers[p].push(n);
                }
                _ => {
                    missing[n].get_or_insert_with(|| name.clone());
                    waiting[n] += 1;
                }
            }
        }
    }
    let mut ready: std::collections::BTreeSet<usize> = (0..nodes.len()).filter(|&n| waiting[n] == 0).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(n) = ready.pop_first() {
        if order.len() % 1024 == 0 {
            limits.check_deadline()?;
        }
        order.push(n);
        for &r in &readers[n] {
            waiting[r] -= 1;
            if waiting[r] == 0 {
                ready.insert(r);
            }
        }
    }
    if order.len() < nodes.len() {
        let stuck = (0..nodes.len()).find(|n| waiting[*n] > 0).unwrap_or(0);
        let n = &nodes[stuck];
        let what = match &missing[stuck] {
            Some(name) => format!("reads '{name}', which nothing produces"),
            None => "is part of a cycle".to_string(),
        };
        return Err(BackendError::InvalidModel(format!(
            "node '{}' ({}) {what}",
            n.name, n.op_type
        )));
    }
    Ok(order)
}

/// Ensures an elem type can be held; used for graph inputs at load.
pub(super) fn check_elem_type(e: &Endpoint) -> Result<(), BackendError> {
    internal_dtype(e.elem_type)
        .map(|_| ())
        .map_err(|m| BackendError::UnsupportedDataType(format!("'{}': {m}", e.name)))
}

#[cfg(test)]
mod tests {
    use candle_onnx::onnx::{OperatorSetIdProto, TensorProto, TypeProto, type_proto};

    use super::*;

    /// y = C·C for a constant 64×64 C made by ConstantOfShape.
    fn constant_square() -> ModelProto {
        let node = |op: &str, inputs: &[&str], output: &str| NodeProto {
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            ..Default::default()
        };
        let shape = TensorProto {
            name: "shape".into(),
            dims: vec![2],
            data_type: 7,
            int64_data: vec![64, 64],
            ..Default::default()
        };
        ModelProto {
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(GraphProto {
                node: vec![
                    node("ConstantOfShape", &["shape"], "c"),
                    node("MatMul", &["c", "c"], "y"),
                ],
                initializer: vec![shape],
                output: vec![ValueInfoProto {
                    name: "y".into(),
                    r#type: Some(TypeProto {
                        value: Some(TypeValue::TensorType(type_proto::Tensor {
                            elem_type: 1,
                            shape: None,
                        })),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn folding_stays_within_the_load_s_work_limit() {
        let dir = tempfile::tempdir().unwrap();
        let file = crate::fuzzing::model_file_in(dir.path()).unwrap();
        let model = constant_square();
        let all = Plan::compile(&model, &file, &Device::Cpu, &LoadLimits::default()).unwrap();
        assert!(all.steps.is_empty(), "everything is folded: {:?}", all.steps.len());
        // 64³ multiply-accumulates are past a limit of 10^5 (the 16 KiB fill is not): the product
        // runs per request.
        let limits = LoadLimits {
            fold_work: 100_000,
            ..LoadLimits::default()
        };
        let some = Plan::compile(&model, &file, &Device::Cpu, &limits).unwrap();
        let ops: Vec<&str> = some.steps.iter().map(|s| s.op_type.as_str()).collect();
        assert_eq!(ops, ["MatMul"]);
    }
}

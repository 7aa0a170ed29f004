//! The execution plan of an ONNX graph, built once per load: every value gets a slot, initializers
//! become device tensors, each node becomes a compiled kernel, nodes whose inputs are all constant are
//! evaluated at load (constant folding), and each intermediate is dropped right after its last use.
//! Running the plan is a walk over the steps with no parsing and no weight conversion.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use candle_onnx::onnx::{
    ModelProto, NodeProto, ValueInfoProto, tensor_shape_proto::dimension::Value as Dim, type_proto::Value as TypeValue,
};

use super::error::{is_input_error, message};
use super::onnx::{internal_dtype, tensor_from_proto, wire_datatype};
use super::ops::{self, Kernel, NodeCtx};
use crate::backend::BackendError;
use crate::core::{GraphIo, Signature};

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

fn tensor_bytes(t: &Tensor) -> u64 {
    (t.elem_count() * t.dtype().size_in_bytes()) as u64
}

impl Plan {
    pub(super) fn compile(model: &ModelProto, dir: &Path, device: &Device) -> Result<Plan, BackendError> {
        let invalid = |m: String| BackendError::InvalidModel(m);
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| invalid("the file has no graph".into()))?;
        let opset = model
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map_or(1, |o| o.version);

        let mut slots = Slots(HashMap::new());
        let mut constants: HashMap<usize, Tensor> = HashMap::new();
        let mut weight_bytes = 0u64;
        for init in &graph.initializer {
            let t = tensor_from_proto(init, dir, device).map_err(invalid)?;
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
            signature.inputs.push(graph_io(v)?);
            inputs.push(Endpoint {
                name: v.name.clone(),
                slot,
                elem_type: elem_type(v),
            });
        }
        let mut outputs = Vec::new();
        for v in &graph.output {
            signature.outputs.push(graph_io(v)?);
            outputs.push(Endpoint {
                name: v.name.clone(),
                slot: slots.get_or_add(&v.name),
                elem_type: elem_type(v),
            });
        }

        let order = topological_order(
            &graph.node,
            &graph
                .initializer
                .iter()
                .map(|t| t.name.as_str())
                .chain(graph.input.iter().map(|v| v.name.as_str()))
                .collect::<Vec<_>>(),
        )?;
        let mut unsupported: Vec<String> = Vec::new();
        let mut steps: Vec<Step> = Vec::new();
        for &n in &order {
            let node = &graph.node[n];
            let node_label = if node.name.is_empty() {
                node.op_type.clone()
            } else {
                format!("{} ({})", node.name, node.op_type)
            };
            if !(node.domain.is_empty() || node.domain == "ai.onnx") {
                unsupported.push(format!("{}:{}", node.domain, node.op_type));
                continue;
            }
            let in_slots: Vec<Option<usize>> = node
                .input
                .iter()
                .map(|s| (!s.is_empty()).then(|| slots.get_or_add(s)))
                .collect();
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
                dir,
                device,
            };
            let kernel = match ops::compile(&ctx) {
                Ok(Some(k)) => k,
                Ok(None) => {
                    unsupported.push(node.op_type.clone());
                    continue;
                }
                Err(e) => return Err(invalid(format!("node {node_label}: {}", message(&e)))),
            };
            // Constant folding: every given input known now.
            let all_const = in_slots.iter().all(|s| s.is_none_or(|s| constants.contains_key(&s)));
            if all_const && unsupported.is_empty() {
                let args: Vec<Option<&Tensor>> = in_slots.iter().map(|s| s.and_then(|s| constants.get(&s))).collect();
                match kernel.run(&args) {
                    Ok(values) => {
                        for (slot, value) in out_slots.iter().zip(values) {
                            if let Some(slot) = slot {
                                constants.insert(*slot, value);
                            }
                        }
                        continue;
                    }
                    Err(e) => return Err(invalid(format!("node {node_label}: {}", message(&e)))),
                }
            }
            steps.push(Step {
                name: node.name.clone(),
                op_type: node.op_type.clone(),
                kernel,
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
    /// returns every graph output in order.
    pub(super) fn run(&self, inputs: Vec<Option<Tensor>>) -> Result<Vec<Tensor>, BackendError> {
        let mut env = self.constants.clone();
        for (endpoint, value) in self.inputs.iter().zip(inputs) {
            if value.is_some() {
                env[endpoint.slot] = value;
            }
        }
        for step in &self.steps {
            let args: Vec<Option<&Tensor>> = step.inputs.iter().map(|s| s.and_then(|s| env[s].as_ref())).collect();
            let started = super::profile::enabled().then(std::time::Instant::now);
            let values = step.kernel.run(&args).map_err(|e| {
                let label = if step.name.is_empty() {
                    step.op_type.clone()
                } else {
                    format!("{} ({})", step.name, step.op_type)
                };
                let text = format!("node {label}: {}", message(&e));
                if is_input_error(&e) {
                    BackendError::InvalidInput(text)
                } else {
                    BackendError::Execution(text)
                }
            })?;
            if let Some(started) = started {
                super::profile::record(&step.op_type, started.elapsed());
            }
            for (slot, value) in step.outputs.iter().zip(values) {
                if let Some(slot) = slot {
                    env[*slot] = Some(value);
                }
            }
            for &slot in &step.release {
                env[slot] = None;
            }
        }
        self.outputs
            .iter()
            .map(|o| {
                env[o.slot]
                    .clone()
                    .ok_or_else(|| BackendError::Execution(format!("output '{}' was not computed", o.name)))
            })
            .collect()
    }
}

fn elem_type(v: &ValueInfoProto) -> i32 {
    match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(TypeValue::TensorType(t)) => t.elem_type,
        _ => 0,
    }
}

/// Node indices in an order where every input is produced first. ONNX requires files to be sorted
/// already; exporters sometimes are not, so sort when needed.
fn topological_order(nodes: &[NodeProto], given: &[&str]) -> Result<Vec<usize>, BackendError> {
    let mut known: std::collections::HashSet<&str> = given.iter().copied().collect();
    known.insert("");
    let mut order = Vec::with_capacity(nodes.len());
    let mut pending: Vec<usize> = (0..nodes.len()).collect();
    while !pending.is_empty() {
        let before = pending.len();
        pending.retain(|&n| {
            let ready = nodes[n].input.iter().all(|i| known.contains(i.as_str()));
            if ready {
                order.push(n);
                for o in &nodes[n].output {
                    known.insert(o.as_str());
                }
            }
            !ready
        });
        if pending.len() == before {
            let n = &nodes[pending[0]];
            let missing: Vec<&String> = n.input.iter().filter(|i| !known.contains(i.as_str())).collect();
            return Err(BackendError::InvalidModel(format!(
                "node '{}' ({}) reads {missing:?}, which nothing produces (or the graph has a cycle)",
                n.name, n.op_type
            )));
        }
    }
    Ok(order)
}

/// Ensures an elem type can be held; used for graph inputs at load.
pub(super) fn check_elem_type(e: &Endpoint) -> Result<(), BackendError> {
    internal_dtype(e.elem_type)
        .map(|_| ())
        .map_err(|m| BackendError::UnsupportedDataType(format!("'{}': {m}", e.name)))
}

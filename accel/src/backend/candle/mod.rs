//! The candle backend: ONNX models executed by our own executor over candle tensors. candle-onnx is
//! used only to read the protobuf. The graph is compiled once per load into a plan (`graph`) whose
//! weights stay resident as device tensors; an instance converts a batch's bytes into tensors (one copy,
//! straight from the requests' buffers), runs the plan, and turns the outputs back into bytes.

mod bound;
mod control;
mod convert;
mod error;
mod fuse;
#[cfg(feature = "cuda")]
mod gpu;
mod graph;
mod guard;
mod onnx;
mod ops;
/// accel-kernels over FP32 CPU tensors, for the other candle-based engine (`backend::hf`).
pub(crate) use ops::{map_f32, map_f32_rows};
pub mod profile;

use std::sync::Arc;

use candle_core::Device;

use self::graph::Plan;
use self::guard::Guard;
use super::{Backend, BackendError, Batch, ExecLimits, LoadLimits, LoadedModel, ModelInstance};
use crate::core::{ModelFile, ModelSpec, Signature, Tensor};

/// Executes ONNX models with candle on one device.
#[derive(Debug, Clone)]
pub struct CandleBackend {
    device: Device,
    limits: ExecLimits,
}

impl CandleBackend {
    /// A backend on the CPU.
    pub fn cpu() -> Self {
        Self::on(Device::Cpu)
    }

    /// A backend on `device`. On a GPU each loaded model gets a stream of its own.
    pub fn on(device: Device) -> Self {
        CandleBackend {
            device,
            limits: ExecLimits::default(),
        }
    }

    /// With `limits` on every execution.
    pub fn with_limits(mut self, limits: ExecLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The device a load places its weights on: on a GPU, a new stream for this model, so that models
    /// run concurrently; candle ties a tensor to its device and stream, so the model's instances
    /// share it.
    fn load_device(&self) -> Result<Device, BackendError> {
        match self.device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => {
                Device::new_cuda_with_stream(gpu_id).map_err(|e| BackendError::Execution(format!("CUDA stream: {e}")))
            }
            _ => Ok(self.device.clone()),
        }
    }
}

impl Backend for CandleBackend {
    fn name(&self) -> &'static str {
        "candle"
    }

    fn load(&self, file: &ModelFile, limits: &LoadLimits) -> Result<Box<dyn LoadedModel>, BackendError> {
        let bytes = file.read(u64::MAX).map_err(|e| BackendError::Read(e.to_string()))?;
        let model = decode(&bytes, file)?;
        // The file's bytes are not needed while compiling: the decoded model holds the weights.
        drop(bytes);
        self.compile(&model, file, limits)
    }
}

/// ONNX's element type of string tensors.
const ONNX_STRING: i32 = 8;

/// The candle engine has no string tensors: a graph whose inputs, outputs or initializers are
/// strings is refused at load with the engine that runs it.
fn refuse_strings(model: &candle_onnx::onnx::ModelProto) -> Result<(), BackendError> {
    use candle_onnx::onnx::type_proto::Value;
    let Some(graph) = &model.graph else { return Ok(()) };
    let typed = graph.input.iter().chain(&graph.output).find(|v| {
        matches!(
            v.r#type.as_ref().and_then(|t| t.value.as_ref()),
            Some(Value::TensorType(t)) if t.elem_type == ONNX_STRING
        )
    });
    let name = typed.map(|v| v.name.clone()).or_else(|| {
        graph
            .initializer
            .iter()
            .find(|t| t.data_type == ONNX_STRING)
            .map(|t| t.name.clone())
    });
    match name {
        Some(name) => Err(BackendError::UnsupportedDataType(format!(
            "'{name}' is a string (BYTES) tensor, which the candle engine does not run; serve this model with backend: \"onnxruntime\""
        ))),
        None => Ok(()),
    }
}

impl CandleBackend {
    /// Loads a model from the bytes of `file` (read by the caller; external data is looked up next
    /// to `file`).
    pub fn load_bytes(
        &self,
        bytes: &[u8],
        file: &ModelFile,
        limits: &LoadLimits,
    ) -> Result<Box<dyn LoadedModel>, BackendError> {
        self.compile(&decode(bytes, file)?, file, limits)
    }

    fn compile(
        &self,
        model: &candle_onnx::onnx::ModelProto,
        file: &ModelFile,
        limits: &LoadLimits,
    ) -> Result<Box<dyn LoadedModel>, BackendError> {
        refuse_strings(model)?;
        let device = self.load_device()?;
        let plan = Plan::compile(model, file, &device, limits)?;
        for input in &plan.inputs {
            graph::check_elem_type(input)?;
        }
        Ok(Box::new(CandleModel {
            plan: Arc::new(plan),
            device,
            limits: self.limits,
        }))
    }
}

/// An ONNX file's bytes as its protobuf (prost refuses messages nested more than 100 deep).
fn decode(bytes: &[u8], file: &ModelFile) -> Result<candle_onnx::onnx::ModelProto, BackendError> {
    <candle_onnx::onnx::ModelProto as prost::Message>::decode(bytes)
        .map_err(|e| BackendError::Read(format!("'{}' is not an ONNX model: {e}", file.shown())))
}

#[derive(Debug)]
struct CandleModel {
    plan: Arc<Plan>,
    device: Device,
    limits: ExecLimits,
}

impl LoadedModel for CandleModel {
    fn signature(&self) -> &Signature {
        &self.plan.signature
    }

    fn weight_bytes(&self) -> u64 {
        self.plan.weight_bytes
    }

    fn instance(&self, spec: &ModelSpec) -> Result<Box<dyn ModelInstance>, BackendError> {
        let position = |list: &[graph::Endpoint], name: &str, what: &str| {
            list.iter()
                .position(|e| e.name == name)
                .ok_or_else(|| BackendError::InvalidModel(format!("the model file has no {what} '{name}'")))
        };
        let inputs = spec
            .engine_inputs()
            .map(|(name, _)| position(&self.plan.inputs, name, "input"))
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = spec
            .outputs
            .iter()
            .map(|o| position(&self.plan.outputs, &o.name, "output"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Box::new(CandleInstance {
            plan: self.plan.clone(),
            #[cfg(feature = "cuda")]
            gpu: gpu::GpuInputs::new(&self.device)?,
            device: self.device.clone(),
            limits: self.limits,
            spec_inputs: inputs,
            spec_outputs: outputs,
            names: spec.outputs.iter().map(|o| (o.name.clone(), o.datatype)).collect(),
        }))
    }
}

struct CandleInstance {
    plan: Arc<Plan>,
    /// On a GPU: the pinned staging buffer and gather kernel batch inputs go through.
    #[cfg(feature = "cuda")]
    gpu: Option<gpu::GpuInputs>,
    device: Device,
    limits: ExecLimits,
    /// For each spec input, its index among the plan's inputs.
    spec_inputs: Vec<usize>,
    /// For each spec output, its index among the plan's outputs.
    spec_outputs: Vec<usize>,
    names: Vec<(String, crate::core::DataType)>,
}

impl ModelInstance for CandleInstance {
    fn execute(&mut self, batch: &Batch) -> Result<Vec<Tensor>, BackendError> {
        let guard = Guard::execution(&self.limits, &batch.cancel);
        // The batch's inputs count towards what the execution holds.
        let inputs: u64 = batch.inputs.iter().flatten().map(|i| i.byte_len() as u64).sum();
        guard
            .admit(inputs, 0, || "the batch's inputs".into())
            .map_err(|e| guard::to_backend(&e, e.to_string()))?;
        guard.charge(inputs);
        let mut args = vec![None; self.plan.inputs.len()];
        for (k, input) in batch.inputs.iter().enumerate() {
            let Some(input) = input else { continue };
            let slot = self.spec_inputs[k];
            #[cfg(feature = "cuda")]
            if let Some(gpu) = self.gpu.as_mut()
                && let Some(t) = gpu.upload(input)?
            {
                args[slot] = Some(t);
                continue;
            }
            args[slot] = Some(convert::to_candle(input, &self.device)?);
        }
        let results = self.plan.run(args, &guard)?;
        batch
            .outputs
            .iter()
            .map(|&k| {
                let (name, datatype) = &self.names[k];
                convert::from_candle(&results[self.spec_outputs[k]], name, *datatype)
            })
            .collect()
    }
}

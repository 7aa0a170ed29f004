//! The candle backend: ONNX models executed by our own executor over candle tensors. candle-onnx is
//! used only to read the protobuf. The graph is compiled once per load into a plan (`graph`) whose
//! weights stay resident as device tensors; an instance converts a batch's bytes into tensors (one copy,
//! straight from the requests' buffers), runs the plan, and turns the outputs back into bytes.

mod control;
mod convert;
mod error;
mod fuse;
#[cfg(feature = "cuda")]
mod gpu;
mod graph;
mod onnx;
mod ops;
pub mod profile;

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;

use self::graph::Plan;
use super::{Backend, BackendError, Batch, LoadedModel, ModelInstance};
use crate::core::{ModelSpec, Signature, Tensor};

/// Executes ONNX models with candle on one device.
#[derive(Debug, Clone)]
pub struct CandleBackend {
    device: Device,
}

impl CandleBackend {
    /// A backend on the CPU.
    pub fn cpu() -> Self {
        CandleBackend { device: Device::Cpu }
    }

    /// A backend on `device`. On a GPU each loaded model gets a stream of its own.
    pub fn on(device: Device) -> Self {
        CandleBackend { device }
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

    fn load(&self, file: &Path) -> Result<Box<dyn LoadedModel>, BackendError> {
        let read_error = |reason: String| BackendError::Read {
            path: file.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(file).map_err(|e| read_error(e.to_string()))?;
        let model = <candle_onnx::onnx::ModelProto as prost::Message>::decode(bytes.as_slice())
            .map_err(|e| read_error(format!("not an ONNX model: {e}")))?;
        drop(bytes);
        let dir = file.parent().unwrap_or_else(|| Path::new("."));
        let device = self.load_device()?;
        let plan = Plan::compile(&model, dir, &device)?;
        for input in &plan.inputs {
            graph::check_elem_type(input)?;
        }
        Ok(Box::new(CandleModel {
            plan: Arc::new(plan),
            device,
        }))
    }
}

#[derive(Debug)]
struct CandleModel {
    plan: Arc<Plan>,
    device: Device,
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
            .inputs
            .iter()
            .map(|i| position(&self.plan.inputs, &i.name, "input"))
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
    /// For each spec input, its index among the plan's inputs.
    spec_inputs: Vec<usize>,
    /// For each spec output, its index among the plan's outputs.
    spec_outputs: Vec<usize>,
    names: Vec<(String, crate::core::DataType)>,
}

impl ModelInstance for CandleInstance {
    fn execute(&mut self, batch: &Batch) -> Result<Vec<Tensor>, BackendError> {
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
        let results = self.plan.run(args)?;
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

//! `--shared-memory system`: each prepared request's inputs are written once into a POSIX
//! shared-memory object of their own (in /dev/shm), registered with the server, and the request then
//! names the region instead of carrying the bytes; each output goes to one region shared by every
//! request (as perf_analyzer does). What the bench measures is the transport's best case: only names
//! and sizes cross the socket. Everything is unregistered and unlinked at the end.

use std::path::PathBuf;

use accel_proto::inference::model_infer_request::InferRequestedOutputTensor;
use accel_proto::inference::{
    InferParameter, ModelMetadataRequest, SystemSharedMemoryRegisterRequest, SystemSharedMemoryUnregisterRequest,
    infer_parameter::ParameterChoice,
};

use crate::target::{ModelLoad, Target};

/// Regions the bench registered and the files behind them.
#[derive(Debug, Default)]
pub struct Regions {
    names: Vec<String>,
    files: Vec<PathBuf>,
}

fn string(s: &str) -> InferParameter {
    InferParameter {
        parameter_choice: Some(ParameterChoice::StringParam(s.into())),
    }
}

fn int(v: usize) -> InferParameter {
    InferParameter {
        parameter_choice: Some(ParameterChoice::Int64Param(v as i64)),
    }
}

impl Regions {
    async fn create(&mut self, target: &Target, name: String, bytes: &[u8]) -> Result<(), String> {
        let file = format!("accel_bench_{}_{name}", std::process::id());
        let path = PathBuf::from("/dev/shm").join(&file);
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        self.files.push(path);
        target
            .client()
            .system_shared_memory_register(SystemSharedMemoryRegisterRequest {
                name: name.clone(),
                key: format!("/{file}"),
                offset: 0,
                byte_size: bytes.len() as u64,
            })
            .await
            .map_err(|s| format!("registering shared memory '{name}': {}", s.message()))?;
        self.names.push(name);
        Ok(())
    }

    /// Moves `load`'s requests into shared memory. `output_size`: the region of an output whose
    /// shape does not give its size (0: the request's largest input, right for models whose output
    /// is as large as their input).
    pub async fn place(&mut self, target: &Target, load: &mut ModelLoad, output_size: usize) -> Result<(), String> {
        let meta = target
            .client()
            .model_metadata(ModelMetadataRequest {
                name: load.name.clone(),
                version: String::new(),
            })
            .await
            .map_err(|s| format!("ModelMetadata({}): {}", load.name, s.message()))?
            .into_inner();
        let largest = load
            .requests
            .iter()
            .flat_map(|r| r.raw_input_contents.iter().map(|b| b.len()))
            .max()
            .unwrap_or(0);
        let mut outputs = Vec::new();
        for (k, o) in meta.outputs.iter().enumerate() {
            let fixed: Option<usize> = crate::inputs::element_size(&o.datatype).and_then(|elem| {
                o.shape.iter().enumerate().try_fold(elem, |acc, (i, &d)| match (i, d) {
                    (0, -1) => Some(acc * load.rows),
                    (_, d) if d >= 0 => Some(acc * d as usize),
                    _ => None,
                })
            });
            let size = fixed
                .unwrap_or(if output_size > 0 { output_size } else { largest })
                .max(1);
            let name = format!("{}_out{k}", load.name);
            self.create(target, name.clone(), &vec![0u8; size]).await?;
            outputs.push(InferRequestedOutputTensor {
                name: o.name.clone(),
                parameters: [
                    ("shared_memory_region".to_string(), string(&name)),
                    ("shared_memory_byte_size".to_string(), int(size)),
                ]
                .into(),
            });
        }
        for (r, request) in load.requests.iter_mut().enumerate() {
            let raw = std::mem::take(&mut request.raw_input_contents);
            let total: usize = raw.iter().map(|b| b.len()).sum();
            let mut bytes = Vec::with_capacity(total.max(1));
            for b in &raw {
                bytes.extend_from_slice(b);
            }
            if bytes.is_empty() {
                bytes.push(0);
            }
            let name = format!("{}_in{r}", load.name);
            self.create(target, name.clone(), &bytes).await?;
            let mut offset = 0;
            for (input, data) in request.inputs.iter_mut().zip(&raw) {
                input.parameters.insert("shared_memory_region".into(), string(&name));
                input
                    .parameters
                    .insert("shared_memory_byte_size".into(), int(data.len()));
                input.parameters.insert("shared_memory_offset".into(), int(offset));
                offset += data.len();
            }
            request.outputs = outputs.clone();
        }
        Ok(())
    }

    /// Unregisters every region and removes its file.
    pub async fn release(self, target: &Target) {
        for name in &self.names {
            let _ = target
                .client()
                .system_shared_memory_unregister(SystemSharedMemoryUnregisterRequest { name: name.clone() })
                .await;
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

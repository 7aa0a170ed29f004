//! A model version as the registry holds it: prepared (read, compiled, its footprint measured: what the
//! host tier keeps) and served (executor threads started over the prepared model: what requests lease).
//! Building either is blocking work done on loader threads, never on the async runtime.

use std::ops::Deref;
use std::sync::{Arc, Weak};

use accel_proto::inference::ModelConfig;
use parking_lot::Mutex;

use crate::backend::{Backend, LoadLimits, LoadedModel, Prepare};
use crate::batching::{QueueLimits, Scheduler, SchedulerThreads};
use crate::core::{ModelFile, ModelSpec};
use crate::device::memory::DeviceMemory;
use crate::repository::{complete_config, to_spec};
use crate::stats::ModelStats;

/// A version read and compiled, with what it holds in memory.
#[derive(Debug)]
pub struct PreparedVersion {
    pub version: u64,
    pub loaded: Box<dyn LoadedModel>,
    /// The completed configuration, as the ModelConfig RPC reports it.
    pub config: ModelConfig,
    pub spec: Arc<ModelSpec>,
    /// Bytes the load left allocated (measured), or the backend's count of its weights.
    pub bytes: u64,
}

/// What every version of one load is prepared with.
pub(super) struct Preparation<'a> {
    pub backend: &'a dyn Backend,
    pub name: &'a str,
    pub config: &'a ModelConfig,
    pub default_max_batch_size: usize,
    /// The GPU's memory, when models run there (a load's footprint is then its delta).
    pub device_memory: Option<&'a dyn DeviceMemory>,
    pub limits: LoadLimits,
}

/// Reads and compiles one version, measuring what it holds.
pub(super) fn prepare(p: &Preparation<'_>, version: u64, file: &ModelFile) -> Result<PreparedVersion, String> {
    let Preparation {
        backend,
        name,
        config,
        default_max_batch_size,
        device_memory,
        ref limits,
    } = *p;
    let before = device_memory.and_then(|m| m.read().ok());
    let (loaded, measured) = crate::alloc::measure(|| backend.load(file, limits));
    let loaded = loaded.map_err(|e| e.to_string())?;
    // On a GPU the weights are device memory: the footprint is what the load took there (NVML's used
    // memory before and after), which the host allocator's count cannot see.
    let measured = match (device_memory, before) {
        (Some(m), Some(before)) => match m.read() {
            Ok(after) => {
                let delta = after.used.saturating_sub(before.used);
                tracing::info!(model = %name, version, device = %m.describe(), bytes = delta, "device memory taken by the load");
                Some(delta)
            }
            Err(_) => measured,
        },
        _ => measured,
    };
    let mut config = config.clone();
    let trusted = complete_config(&mut config, name, loaded.signature(), default_max_batch_size)?;
    let optional = loaded.optional_inputs();
    for input in config.input.iter_mut().filter(|i| optional.contains(&i.name.as_str())) {
        input.optional = true;
    }
    let dynamic = matches!(
        config.scheduling_choice,
        Some(accel_proto::inference::model_config::SchedulingChoice::DynamicBatching(
            _
        ))
    );
    if config.max_batch_size > 0 && dynamic {
        for (key, value) in loaded.default_parameters(config.max_batch_size as usize) {
            config
                .parameters
                .entry(key)
                .or_insert(accel_proto::inference::ModelParameter { string_value: value });
        }
    }
    if config.platform.is_empty() {
        config.platform = if backend.name() == crate::backend::hf::BACKEND {
            crate::backend::hf::BACKEND.into()
        } else {
            "onnxruntime_onnx".into()
        };
    }
    config.backend = backend.name().to_string();
    let mut spec = to_spec(&config, version, backend.name())?;
    for output in &mut spec.outputs {
        output.verify_shape = trusted.contains(&output.name);
    }
    for (spec, declared) in spec.outputs.iter_mut().zip(&config.output) {
        spec.labels = if declared.label_filename.is_empty() {
            loaded.output_labels(&spec.name)
        } else {
            Some(read_labels(file.model_dir(), &declared.label_filename)?)
        };
    }
    let spec = Arc::new(spec);
    // The weights at least: the allocator's count can miss memory other threads allocated.
    let bytes = measured.unwrap_or(0).max(loaded.weight_bytes());
    Ok(PreparedVersion {
        version,
        loaded,
        config,
        spec,
        bytes,
    })
}

/// The most a labels file may hold: far beyond any real classifier's.
const MAX_LABELS_BYTES: u64 = 64 << 20;

/// An output's `label_filename` (relative to the model's directory, as in Triton): one label per
/// line, blank lines included (Triton's `std::getline`), a trailing `\r` kept as Triton keeps it.
fn read_labels(dir: &crate::core::ModelDir, name: &str) -> Result<Arc<[String]>, String> {
    let file = dir.file(name).map_err(|e| format!("label_filename: {e}"))?;
    let bytes = file
        .read(MAX_LABELS_BYTES)
        .map_err(|e| format!("label_filename: {e}"))?;
    let text = String::from_utf8_lossy(&bytes);
    let mut labels: Vec<String> = text.split('\n').map(str::to_string).collect();
    if text.ends_with('\n') {
        labels.pop();
    }
    Ok(labels.into())
}

/// A READY model version: executor threads over a prepared model.
#[derive(Debug)]
pub struct ServedModel {
    pub spec: Arc<ModelSpec>,
    pub config: ModelConfig,
    pub scheduler: Scheduler,
    pub stats: Arc<ModelStats>,
    /// What each request goes through before it is queued (a tokenizer), when the engine has it.
    pub prepare: Option<Arc<dyn Prepare>>,
    pub(super) prepared: Arc<PreparedVersion>,
    threads: Mutex<Option<SchedulerThreads>>,
    /// Alive until the executor threads have been joined (and their instances freed).
    running: Mutex<Option<Arc<()>>>,
}

impl ServedModel {
    /// Starts one executor thread per instance.
    pub fn start(prepared: Arc<PreparedVersion>, stats: Arc<ModelStats>, limits: QueueLimits) -> Result<Self, String> {
        let spec = prepared.spec.clone();
        let instances = (0..spec.instance_count)
            .map(|_| prepared.loaded.instance(&spec))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        stats.set_memory_bytes(prepared.bytes);
        let (scheduler, threads) = Scheduler::start(spec.clone(), instances, stats.clone(), limits)
            .map_err(|e| format!("cannot start threads: {e}"))?;
        Ok(ServedModel {
            spec,
            config: prepared.config.clone(),
            scheduler,
            stats,
            prepare: prepared.loaded.preparer(),
            prepared,
            threads: Mutex::new(Some(threads)),
            running: Mutex::new(Some(Arc::new(()))),
        })
    }

    /// What tells when this model's memory has really come back: the served model and its prepared
    /// model dropped, and the executor threads joined.
    pub(super) fn freed_signal(&self) -> Freed {
        Freed {
            running: self.running.lock().as_ref().map(Arc::downgrade).unwrap_or_default(),
            prepared: Arc::downgrade(&self.prepared),
        }
    }
}

impl Drop for ServedModel {
    fn drop(&mut self) {
        let threads = self.threads.lock().take();
        let running = self.running.lock().take();
        if let Some(threads) = threads {
            // Joining waits for a batch in progress: not on the thread that dropped the last lease,
            // which may be the async runtime's.
            let reaper = std::thread::Builder::new().name("accel-reaper".into()).spawn(move || {
                threads.shutdown();
                drop(running);
                crate::alloc::release_free_memory();
            });
            if let Err(e) = reaper {
                tracing::warn!(error = %e, "cannot start a thread to join executors; they stop on their own");
            }
        }
    }
}

/// Weak references that die when a served model's memory is free.
#[derive(Debug, Clone, Default)]
pub(super) struct Freed {
    running: Weak<()>,
    prepared: Weak<PreparedVersion>,
}

impl Freed {
    pub(super) fn is_freed(&self) -> bool {
        self.running.strong_count() == 0 && self.prepared.strong_count() == 0
    }
}

/// A served model held for one request: it cannot go away while the lease lives.
#[derive(Debug, Clone)]
pub struct Lease(pub(super) Arc<ServedModel>);

impl Deref for Lease {
    type Target = ServedModel;
    fn deref(&self) -> &ServedModel {
        &self.0
    }
}

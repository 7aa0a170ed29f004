//! The registry proper: a map from model name to its versions, each with a state and, when READY,
//! the running model (spec, completed config, scheduler, statistics). Loading happens on plain
//! threads, never on the async runtime. A [`Lease`] keeps a served model alive for as long as a
//! request uses it.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use accel_proto::inference::ModelConfig;
use parking_lot::{Mutex, RwLock};

use super::{AcquireError, ModelState};
use crate::backend::Backend;
use crate::backend::candle::CandleBackend;
use crate::batching::{QueueLimits, Scheduler, SchedulerThreads};
use crate::core::ModelSpec;
use crate::repository::{Repository, complete_config, to_spec};
use crate::stats::ModelStats;

/// Which models are loaded (tritonserver's `--model-control-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ControlMode {
    /// Load every model of the repository at start.
    None,
    /// Load only the models named with `--load-model`.
    Explicit,
}

/// What loading needs besides the repository.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub control_mode: ControlMode,
    /// Models to load at start (in every mode).
    pub load_models: Vec<String>,
    /// max_batch_size given to models that have no config and can batch.
    pub default_max_batch_size: usize,
    pub queue_limits: QueueLimits,
    /// Models loaded at once.
    pub load_threads: usize,
}

/// A READY model version.
#[derive(Debug)]
pub struct ServedModel {
    pub spec: Arc<ModelSpec>,
    /// The completed configuration, as the ModelConfig RPC reports it.
    pub config: ModelConfig,
    pub scheduler: Scheduler,
    pub stats: Arc<ModelStats>,
    threads: Mutex<Option<SchedulerThreads>>,
}

impl Drop for ServedModel {
    fn drop(&mut self) {
        if let Some(t) = self.threads.lock().take() {
            drop(t); // asks the threads to stop once their work is answered
        }
    }
}

/// A served model held for one request: it cannot go away while the lease lives.
#[derive(Debug, Clone)]
pub struct Lease(Arc<ServedModel>);

impl Deref for Lease {
    type Target = ServedModel;
    fn deref(&self) -> &ServedModel {
        &self.0
    }
}

#[derive(Debug)]
struct Version {
    state: ModelState,
    reason: String,
    served: Option<Arc<ServedModel>>,
}

#[derive(Debug, Default)]
struct Entry {
    /// Set when the model as a whole cannot be read (bad config, no versions).
    problem: Option<(ModelState, String)>,
    versions: BTreeMap<u64, Version>,
}

/// One line of RepositoryIndex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    /// Empty when the model has no loadable version.
    pub version: String,
    pub state: ModelState,
    pub reason: String,
}

/// Every model of the repository and its state.
#[derive(Debug)]
pub struct Registry {
    repository: Repository,
    options: LoadOptions,
    backend: CandleBackend,
    models: RwLock<BTreeMap<String, Entry>>,
    started: AtomicBool,
}

impl Registry {
    pub fn new(repository: Repository, options: LoadOptions) -> Self {
        Registry {
            repository,
            options,
            backend: CandleBackend::cpu(),
            models: RwLock::new(BTreeMap::new()),
            started: AtomicBool::new(false),
        }
    }

    pub fn repository(&self) -> &Repository {
        &self.repository
    }

    /// Lists the repository and loads what the control mode says, `load_threads` models at a time.
    /// Blocking: call it from a plain thread.
    pub fn start(&self) {
        let names = match self.repository.model_names() {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the model repository");
                self.started.store(true, Ordering::Release);
                return;
            }
        };
        let to_load: Vec<String> = match self.options.control_mode {
            ControlMode::None => names.clone(),
            ControlMode::Explicit => self.options.load_models.clone(),
        };
        {
            let mut models = self.models.write();
            for name in &names {
                let entry = models.entry(name.clone()).or_default();
                entry.problem = Some(if to_load.contains(name) {
                    (ModelState::Loading, String::new())
                } else {
                    (ModelState::Unavailable, "unloaded".into())
                });
            }
            for name in &to_load {
                if !names.contains(name) {
                    tracing::error!(model = %name, "--load-model names a model that is not in the repository");
                }
            }
        }
        let queue = Mutex::new(to_load.into_iter().filter(|n| names.contains(n)).collect::<Vec<_>>());
        std::thread::scope(|s| {
            for _ in 0..self.options.load_threads.max(1) {
                s.spawn(|| {
                    while let Some(name) = queue.lock().pop() {
                        self.load(&name);
                    }
                });
            }
        });
        self.started.store(true, Ordering::Release);
    }

    /// Whether start-up loading has finished.
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Loads every selected version of a model; failures make them UNAVAILABLE with the reason.
    fn load(&self, name: &str) {
        let started = std::time::Instant::now();
        let entry = self.build(name);
        for (v, version) in &entry.versions {
            match version.state {
                ModelState::Ready => {
                    tracing::info!(model = %name, version = v, elapsed_ms = started.elapsed().as_millis() as u64, "model ready")
                }
                _ => {
                    tracing::error!(model = %name, version = v, reason = %version.reason, "model unavailable")
                }
            }
        }
        if let Some((_, reason)) = &entry.problem {
            tracing::error!(model = %name, %reason, "model unavailable");
        }
        self.models.write().insert(name.to_string(), entry);
    }

    fn build(&self, name: &str) -> Entry {
        let unavailable = |reason: String| Entry {
            problem: Some((ModelState::Unavailable, reason)),
            versions: BTreeMap::new(),
        };
        let source = match self.repository.read_model(name) {
            Ok(s) => s,
            Err(e) => return unavailable(e.to_string()),
        };
        if !source.ignored_fields.is_empty() {
            tracing::info!(model = %name, fields = ?source.ignored_fields, "config.pbtxt fields that Accel does not use are ignored");
        }
        if let Err(reason) = select_backend(&source.config) {
            return unavailable(reason);
        }
        let mut versions = BTreeMap::new();
        for (version, path) in &source.versions {
            let started = std::time::Instant::now();
            let loaded = self.load_version(name, *version, path, &source.config);
            crate::metrics::record_load(name, started.elapsed().as_secs_f64(), loaded.is_ok());
            let v = match loaded {
                Ok(served) => Version {
                    state: ModelState::Ready,
                    reason: String::new(),
                    served: Some(Arc::new(served)),
                },
                Err(reason) => Version {
                    state: ModelState::Unavailable,
                    reason,
                    served: None,
                },
            };
            versions.insert(*version, v);
        }
        Entry {
            problem: None,
            versions,
        }
    }

    fn load_version(
        &self,
        name: &str,
        version: u64,
        path: &std::path::Path,
        config: &ModelConfig,
    ) -> Result<ServedModel, String> {
        let loaded = self.backend.load(path).map_err(|e| e.to_string())?;
        let mut config = config.clone();
        complete_config(
            &mut config,
            name,
            loaded.signature(),
            self.options.default_max_batch_size,
        )?;
        if config.platform.is_empty() {
            config.platform = "onnxruntime_onnx".into();
        }
        config.backend = self.backend.name().to_string();
        let spec = Arc::new(to_spec(&config, version, self.backend.name())?);
        let instances = (0..spec.instance_count)
            .map(|_| loaded.instance(&spec))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let stats = Arc::new(ModelStats::new(&spec.name, version, spec.instance_count));
        stats.set_memory_bytes(loaded.weight_bytes());
        let (scheduler, threads) = Scheduler::start(spec.clone(), instances, stats.clone(), self.options.queue_limits)
            .map_err(|e| format!("cannot start threads: {e}"))?;
        Ok(ServedModel {
            spec,
            config,
            scheduler,
            stats,
            threads: Mutex::new(Some(threads)),
        })
    }

    /// The model version a request addresses (empty version: the newest READY one).
    pub fn acquire(&self, name: &str, version: &str) -> Result<Lease, AcquireError> {
        let models = self.models.read();
        let Some(entry) = models.get(name) else {
            return Err(AcquireError::UnknownModel {
                model: name.to_string(),
            });
        };
        if let Some((state, reason)) = &entry.problem {
            return Err(AcquireError::NotReady {
                model: name.to_string(),
                version: version.to_string(),
                state: *state,
                reason: reason.clone(),
            });
        }
        let available = || entry.versions.keys().map(u64::to_string).collect::<Vec<_>>().join(", ");
        let chosen = if version.is_empty() {
            entry
                .versions
                .iter()
                .rev()
                .find(|(_, v)| v.state == ModelState::Ready)
                .or_else(|| entry.versions.iter().next_back())
        } else {
            let Ok(n) = version.parse::<u64>() else {
                return Err(AcquireError::UnknownVersion {
                    model: name.to_string(),
                    version: version.to_string(),
                    available: available(),
                });
            };
            entry.versions.get_key_value(&n)
        };
        let Some((v, ver)) = chosen else {
            return Err(AcquireError::UnknownVersion {
                model: name.to_string(),
                version: version.to_string(),
                available: available(),
            });
        };
        match &ver.served {
            Some(served) if ver.state == ModelState::Ready => Ok(Lease(served.clone())),
            _ => Err(AcquireError::NotReady {
                model: name.to_string(),
                version: v.to_string(),
                state: ver.state,
                reason: ver.reason.clone(),
            }),
        }
    }

    /// Every model and version with its state.
    pub fn index(&self) -> Vec<IndexEntry> {
        let models = self.models.read();
        let mut out = Vec::new();
        for (name, entry) in models.iter() {
            if let Some((state, reason)) = &entry.problem {
                out.push(IndexEntry {
                    name: name.clone(),
                    version: String::new(),
                    state: *state,
                    reason: reason.clone(),
                });
            }
            for (v, ver) in &entry.versions {
                out.push(IndexEntry {
                    name: name.clone(),
                    version: v.to_string(),
                    state: ver.state,
                    reason: ver.reason.clone(),
                });
            }
        }
        out
    }

    /// The READY versions of one model (or of every model when `name` is empty), for statistics.
    pub fn served(&self, name: &str, version: &str) -> Result<Vec<Lease>, AcquireError> {
        let models = self.models.read();
        if name.is_empty() {
            return Ok(models
                .values()
                .flat_map(|e| e.versions.values())
                .filter_map(|v| v.served.clone().map(Lease))
                .collect());
        }
        let Some(entry) = models.get(name) else {
            return Err(AcquireError::UnknownModel {
                model: name.to_string(),
            });
        };
        let ready: Vec<Lease> = entry
            .versions
            .iter()
            .filter(|(v, _)| version.is_empty() || v.to_string() == version)
            .filter_map(|(_, ver)| ver.served.clone().map(Lease))
            .collect();
        if ready.is_empty() {
            drop(models);
            // Report why, as acquire would.
            return self.acquire(name, version).map(|l| vec![l]);
        }
        Ok(ready)
    }

    /// The versions of a model, for metadata.
    pub fn versions(&self, name: &str) -> Vec<String> {
        self.models
            .read()
            .get(name)
            .map(|e| e.versions.keys().map(u64::to_string).collect())
            .unwrap_or_default()
    }
}

/// Which engine runs a model, from its config (Triton's `backend` / `platform` fields).
fn select_backend(config: &ModelConfig) -> Result<&'static str, String> {
    match (config.backend.as_str(), config.platform.as_str()) {
        ("candle", _) | ("onnxruntime", _) | ("", "onnxruntime_onnx" | "onnx_onnxv1" | "") => Ok("candle"),
        ("", platform) => Err(format!(
            "platform '{platform}' is not supported: Accel serves ONNX models (platform onnxruntime_onnx)"
        )),
        (backend, _) => Err(format!(
            "backend '{backend}' is not supported: Accel serves ONNX models with the candle backend"
        )),
    }
}

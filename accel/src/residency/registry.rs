//! The registry proper: every model of the repository, its phase (not loaded, loading, ready,
//! unloading, failed: Triton's states in the index), the memory budget and the host tier.
//!
//! Locks are held only for bookkeeping, never across a load or an await. The request path takes the
//! read lock, clones the served model's `Arc` (its lease) and counts a hit with an atomic add. Loads
//! run on blocking threads, at most `--model-load-threads` at once; requests for a model that is
//! loading wait on the same load (single flight). A load is admitted against the budget and a live
//! reading of the device; in on-demand mode it evicts idle, unpinned models by value
//! (`policy::choose_victims`) to make room, moving their prepared weights to the host tier.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use accel_proto::inference::ModelConfig;
use parking_lot::{Condvar, Mutex, RwLock};
use tokio::sync::watch;

use super::budget::{Budget, Bytes, MemorySize};
use super::engines::{DefaultBackend, Engines};
use super::host_tier::HostTier;
use super::policy::{Candidate, Usage, choose_victims};
use super::served::{Freed, Lease, Preparation, PreparedVersion, ServedModel, prepare};
use super::split::{self, Split};
use super::{AcquireError, ModelState};
use crate::backend::{ExecLimits, LoadLimits};
use crate::batching::QueueLimits;
use crate::device::memory::DeviceMemory;
use crate::repository::Repository;
use crate::stats::ModelStats;

/// Which models are loaded (tritonserver's `--model-control-mode`, plus on-demand).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ControlMode {
    /// Load every model of the repository at start; nothing is evicted.
    None,
    /// Load only `--load-model` models and what the repository API asks for; nothing is evicted.
    Explicit,
    /// List every model; load each at its first request; evict idle models when memory is needed.
    OnDemand,
}

/// The model-config parameter that pins a model (`parameters { key: "accel.pinned" value: {
/// string_value: "true" } }`).
pub const PIN_PARAMETER: &str = "accel.pinned";

/// A model loaded less than this long ago is not evicted: the requests that waited for it must get
/// to use it.
const FRESH: Duration = Duration::from_millis(100);

/// Stack of a loader thread: compiling walks nested graphs (If and Loop bodies) recursively.
pub const LOADER_STACK: usize = 16 << 20;

/// How much longer than a load may take a caller waits for it.
const WAIT_GRACE: Duration = Duration::from_secs(2);

/// How often a load waiting for memory, or an unload waiting for requests in flight, looks again.
const POLL: Duration = Duration::from_millis(2);

/// What loading needs besides the repository.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub control_mode: ControlMode,
    /// Models to load at start (in every mode).
    pub load_models: Vec<String>,
    /// Models never evicted (loaded at start too).
    pub pinned: Vec<String>,
    /// max_batch_size given to models that have no config and can batch.
    pub default_max_batch_size: usize,
    pub queue_limits: QueueLimits,
    /// Loads running at once.
    pub load_threads: usize,
    /// Device memory resident models may hold, before the reserve is taken off.
    pub memory_budget: MemorySize,
    /// Device memory left alone (for requests, and for others on the device).
    pub memory_reserve: MemorySize,
    /// Host memory evicted models may keep.
    pub host_cache: MemorySize,
    /// How long a request waits for its model to become resident (loading, or memory to free up).
    pub load_timeout: Duration,
    /// The ONNX Runtime library, when given.
    pub onnxruntime_library: Option<std::path::PathBuf>,
    /// The engine of ONNX models whose config names no backend.
    pub default_backend: DefaultBackend,
    /// Threads one execution may use inside an engine.
    pub intra_op_threads: usize,
    /// candle's device for models (the CPU, or the GPU `--gpu` selected).
    pub device: candle_core::Device,
    /// The GPU models run on, when there is one: a load's footprint is then its device memory delta.
    pub gpu: Option<usize>,
    /// What bounds each execution (`max_bytes` is resolved against the device when the registry
    /// is made: see `max_execution_memory`).
    pub exec_limits: ExecLimits,
    /// What one execution may hold: bytes or a share of the device's memory.
    pub max_execution_memory: MemorySize,
    /// What bounds each load (its deadline is the load timeout from its start).
    pub load_limits: LoadLimits,
}

/// One version of a resident model.
#[derive(Debug)]
struct Slot {
    state: ModelState,
    reason: String,
    served: Option<Arc<ServedModel>>,
}

/// A model in memory.
#[derive(Debug)]
struct Resident {
    versions: BTreeMap<u64, Slot>,
    /// Versions whose load failed (kept to report them when the model comes back from the host tier).
    failed: Vec<(u64, String)>,
    bytes: u64,
    /// Requests since the last time the registry folded them into the entry's usage.
    hits: AtomicU64,
    loaded_at: Instant,
    /// A reload in progress: this copy serves until the new one is ready.
    reload: Option<Flight>,
    /// How requests that name no version are split between the versions.
    split: Option<Split>,
    /// The configuration it was loaded from, before completion (the override or config.pbtxt).
    source: Option<Box<ModelConfig>>,
}

impl Resident {
    fn idle(&self) -> bool {
        self.versions
            .values()
            .all(|s| s.served.as_ref().is_none_or(|m| Arc::strong_count(m) == 1))
    }

    fn freed_signals(&self) -> Vec<Freed> {
        self.versions
            .values()
            .filter_map(|s| s.served.as_ref().map(|m| m.freed_signal()))
            .collect()
    }
}

/// Where a model stands.
#[derive(Debug)]
enum Phase {
    /// Listed, not in memory; the reason says why ("not loaded", "unloaded", "evicted ...").
    Unloaded {
        reason: String,
    },
    Loading(Flight),
    Ready(Resident),
    Unloading,
    /// The last load failed; the model stays UNAVAILABLE until loaded again.
    Failed(AcquireError),
}

/// Prepared versions kept in the host tier.
#[derive(Debug)]
struct HostModel {
    versions: Vec<Arc<PreparedVersion>>,
    failed: Vec<(u64, String)>,
    bytes: u64,
    split: Option<Split>,
    source: Option<Box<ModelConfig>>,
}

#[derive(Debug)]
struct Entry {
    phase: Phase,
    /// Statistics per version, kept across loads so that counts never go back.
    stats: BTreeMap<u64, Arc<ModelStats>>,
    usage: Usage,
    pinned: bool,
    /// Measured bytes of the last successful load.
    bytes: Option<u64>,
    /// Seconds the last load from the files took.
    cold_secs: f64,
    /// Seconds the last load from the host tier took.
    host_secs: Option<f64>,
}

impl Entry {
    fn new(reason: &str, pinned: bool) -> Self {
        Entry {
            phase: Phase::Unloaded { reason: reason.into() },
            stats: BTreeMap::new(),
            usage: Usage::default(),
            pinned,
            bytes: None,
            cold_secs: 0.0,
            host_secs: None,
        }
    }
}

/// The outcome of one load, shared by every request that waits for it.
#[derive(Debug, Clone)]
struct Flight(Arc<watch::Sender<Option<Result<(), AcquireError>>>>);

impl Flight {
    fn new() -> Self {
        Flight(Arc::new(watch::channel(None).0))
    }

    fn finish(&self, result: Result<(), AcquireError>) {
        self.0.send_replace(Some(result));
    }

    async fn wait(&self, deadline: Instant, model: &str) -> Result<(), AcquireError> {
        let mut rx = self.0.subscribe();
        match tokio::time::timeout_at(deadline.into(), rx.wait_for(Option::is_some)).await {
            Ok(Ok(v)) => v.clone().unwrap_or(Ok(())),
            Ok(Err(_)) => Ok(()), // the loader is gone: look again
            Err(_) => Err(AcquireError::NotReady {
                model: model.to_string(),
                version: String::new(),
                state: ModelState::Loading,
                reason: "still loading when the load timeout passed".into(),
            }),
        }
    }
}

#[derive(Debug)]
struct State {
    models: BTreeMap<String, Entry>,
    budget: Budget,
    host: HostTier<HostModel>,
}

/// One line of RepositoryIndex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    /// Empty when the model is not in memory.
    pub version: String,
    pub state: ModelState,
    pub reason: String,
}

/// Every model of the repository and its state.
#[derive(Debug)]
pub struct Registry {
    repository: Repository,
    options: LoadOptions,
    engines: Engines,
    memory: Box<dyn DeviceMemory>,
    /// Bytes of the device left alone.
    reserve: u64,
    state: RwLock<State>,
    /// Loads running now, bounded by `options.load_threads`.
    loads: Mutex<usize>,
    load_done: Condvar,
    started: AtomicBool,
    epoch: Instant,
}

enum Step {
    Lease(Lease),
    Wait(Flight),
    Retry,
}

/// What a repository load does next.
enum Next {
    Go,
    Wait(Flight),
    Retry,
}

/// What an unload does next.
enum Unload {
    Wait(Flight),
    Retry,
    Done(Option<Resident>),
}

impl Registry {
    /// A registry over `repository`, scheduling memory on `memory` (the device models run on).
    pub fn new(repository: Repository, options: LoadOptions, memory: Box<dyn DeviceMemory>) -> Result<Self, String> {
        let reading = memory
            .read()
            .map_err(|e| format!("cannot read the memory of {}: {e}", memory.describe()))?;
        let reserve = options.memory_reserve.resolve(reading.total);
        let budget = options.memory_budget.resolve(reading.total);
        if budget <= reserve {
            return Err(format!(
                "--memory-budget {} ({}) leaves nothing above --memory-reserve {} ({})",
                options.memory_budget,
                Bytes(budget),
                options.memory_reserve,
                Bytes(reserve)
            ));
        }
        let host_limit = match options.host_cache {
            MemorySize::Percent(_) => options
                .host_cache
                .resolve(crate::device::host::HostMemory::read().map_or(0, |m| m.total)),
            bytes => bytes.resolve(0),
        };
        // A compiled model on the GPU holds device memory: kept in the host tier it would free none.
        // Until compiled plans can move their weights to host memory and back, an evicted model on
        // the GPU is dropped and reloads from its files.
        let host_limit = if options.gpu.is_some() && host_limit > 0 {
            tracing::info!("the host tier is not used on the GPU: evicted models reload from their files");
            0
        } else {
            host_limit
        };
        let limit = budget - reserve;
        let exec_limits = ExecLimits {
            max_bytes: options.max_execution_memory.resolve(reading.total),
            ..options.exec_limits
        };
        let engines = Engines::new(
            options.onnxruntime_library.as_deref(),
            options.default_backend,
            options.intra_op_threads,
            &options.device,
            options.gpu,
            exec_limits,
        );
        tracing::info!(
            device = %memory.describe(),
            total = %Bytes(reading.total),
            budget = %Bytes(limit),
            host_tier = %Bytes(host_limit),
            execution_limit = %Bytes(exec_limits.max_bytes),
            mode = ?options.control_mode,
            "memory budget for resident models"
        );
        Ok(Registry {
            repository,
            options,
            engines,
            memory,
            reserve,
            state: RwLock::new(State {
                models: BTreeMap::new(),
                budget: Budget::new(limit),
                host: HostTier::new(host_limit),
            }),
            loads: Mutex::new(0),
            load_done: Condvar::new(),
            started: AtomicBool::new(false),
            epoch: Instant::now(),
        })
    }

    pub fn repository(&self) -> &Repository {
        &self.repository
    }

    pub fn control_mode(&self) -> ControlMode {
        self.options.control_mode
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
        let mut to_load: Vec<String> = match self.options.control_mode {
            ControlMode::None => names.clone(),
            ControlMode::Explicit | ControlMode::OnDemand => self.options.load_models.clone(),
        };
        for p in &self.options.pinned {
            if !to_load.contains(p) {
                to_load.push(p.clone());
            }
        }
        for name in &to_load {
            if !names.contains(name) {
                tracing::error!(model = %name, "--load-model or --pin-model names a model that is not in the repository");
            }
        }
        to_load.retain(|n| names.contains(n));
        let mut flights = Vec::new();
        {
            let mut st = self.state.write();
            for name in &names {
                let mut entry = Entry::new("unloaded", self.options.pinned.contains(name));
                if to_load.contains(name) {
                    let flight = Flight::new();
                    entry.phase = Phase::Loading(flight.clone());
                    flights.push((name.clone(), flight));
                }
                st.models.insert(name.clone(), entry);
            }
            publish(&st);
        }
        let queue = Mutex::new(flights);
        std::thread::scope(|s| {
            for _ in 0..self.options.load_threads.max(1) {
                s.spawn(|| {
                    while let Some((name, flight)) = queue.lock().pop() {
                        self.load_and_finish(&name, &flight, None);
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

    /// How long a caller waits for a load: the load's own bound (it gives up waiting for memory at
    /// the load timeout and says why) plus a moment to hear its answer.
    fn wait_deadline(&self) -> Instant {
        Instant::now() + self.options.load_timeout + WAIT_GRACE
    }

    fn now_secs(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    // ---- the request path ---------------------------------------------------------------------

    /// The model version a request addresses (empty version: the newest READY one). In on-demand
    /// mode a model that is not resident is loaded first (one load shared by every request for it),
    /// waiting at most `--model-load-timeout-secs`.
    pub async fn acquire(self: &Arc<Self>, name: &str, version: &str) -> Result<Lease, AcquireError> {
        self.acquire_for(name, version, Route::Newest).await
    }

    /// [`Registry::acquire`] for an inference: an empty version follows the model's split, if it
    /// has one (by the routing key, when given).
    pub async fn acquire_for(
        self: &Arc<Self>,
        name: &str,
        version: &str,
        route: Route<'_>,
    ) -> Result<Lease, AcquireError> {
        if self.options.control_mode != ControlMode::OnDemand {
            return self.acquire_now_for(name, version, route);
        }
        let deadline = self.wait_deadline();
        loop {
            match self.step(name, version, route)? {
                Step::Lease(lease) => return Ok(lease),
                Step::Wait(flight) => flight.wait(deadline, name).await?,
                Step::Retry => {
                    if Instant::now() >= deadline {
                        return Err(AcquireError::NotReady {
                            model: name.to_string(),
                            version: version.to_string(),
                            state: ModelState::Unloading,
                            reason: "still unloading when the load timeout passed".into(),
                        });
                    }
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }

    /// Whether requests for `name` that name no version are split between its versions (then the
    /// routing key must be known before the version is chosen).
    pub fn has_split(&self, name: &str) -> bool {
        matches!(&self.state.read().models.get(name).map(|e| &e.phase), Some(Phase::Ready(res)) if res.split.is_some())
    }

    /// What a request can do now: take a lease, wait for a load (started here if needed), or look
    /// again shortly.
    fn step(self: &Arc<Self>, name: &str, version: &str, route: Route<'_>) -> Result<Step, AcquireError> {
        {
            let st = self.state.read();
            let entry = st.models.get(name).ok_or_else(|| unknown(name))?;
            match &entry.phase {
                Phase::Ready(res) => return lease(name, version, res, route).map(Step::Lease),
                Phase::Loading(f) => return Ok(Step::Wait(f.clone())),
                Phase::Unloading => return Ok(Step::Retry),
                Phase::Failed(e) => return Err(e.clone()),
                Phase::Unloaded { .. } => {}
            }
        }
        let flight = Flight::new();
        {
            let mut st = self.state.write();
            let entry = st.models.get_mut(name).ok_or_else(|| unknown(name))?;
            if !matches!(entry.phase, Phase::Unloaded { .. }) {
                return Ok(Step::Retry);
            }
            entry.phase = Phase::Loading(flight.clone());
        }
        self.spawn_load(name, flight.clone(), None);
        Ok(Step::Wait(flight))
    }

    /// The model version a request addresses, as it is now: no load.
    pub fn acquire_now(&self, name: &str, version: &str) -> Result<Lease, AcquireError> {
        self.acquire_now_for(name, version, Route::Newest)
    }

    fn acquire_now_for(&self, name: &str, version: &str, route: Route<'_>) -> Result<Lease, AcquireError> {
        let st = self.state.read();
        let entry = st.models.get(name).ok_or_else(|| unknown(name))?;
        match &entry.phase {
            Phase::Ready(res) => lease(name, version, res, route),
            Phase::Failed(e) => Err(e.clone()),
            phase => Err(AcquireError::NotReady {
                model: name.to_string(),
                version: version.to_string(),
                state: phase_state(phase),
                reason: phase_reason(phase),
            }),
        }
    }

    /// Whether a request for this model version is served. On-demand, a model that is not resident
    /// is loaded first (or its load joined), within the load timeout, so the answer is the truth:
    /// a model whose files are broken is not ready.
    pub async fn model_ready(self: &Arc<Self>, name: &str, version: &str) -> bool {
        self.acquire(name, version).await.is_ok()
    }

    // ---- loading --------------------------------------------------------------------------------

    fn spawn_load(self: &Arc<Self>, name: &str, flight: Flight, config: Option<ModelConfig>) {
        let registry = self.clone();
        let name = name.to_string();
        let spawned = std::thread::Builder::new()
            .name(format!("accel-load-{name}"))
            .stack_size(LOADER_STACK)
            .spawn(move || registry.load_and_finish(&name, &flight, config));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a loader thread");
        }
    }

    /// Loads a model whose phase says Loading (or Ready with a reload) and tells the waiters.
    fn load_and_finish(&self, name: &str, flight: &Flight, config: Option<ModelConfig>) {
        let result = {
            let _slot = self.load_slot();
            self.load(name, config)
        };
        if let Err(e) = &result {
            tracing::error!(model = %name, error = %e, "model not loaded");
        }
        flight.finish(result);
    }

    /// Waits for one of the `load_threads` load slots.
    fn load_slot(&self) -> impl Drop + '_ {
        let mut running = self.loads.lock();
        while *running >= self.options.load_threads.max(1) {
            self.load_done.wait(&mut running);
        }
        *running += 1;
        SlotGuard(self)
    }

    /// Reads (or takes from the host tier), admits and starts a model. On return the entry's phase
    /// is Ready, Failed, or Unloaded (memory could not be found in time: a later request tries again).
    fn load(&self, name: &str, config: Option<ModelConfig>) -> Result<(), AcquireError> {
        if let Some(c) = &config
            && let Some(done) = self.reweigh(name, c)
        {
            return done;
        }
        let started = Instant::now();
        let deadline = started + self.options.load_timeout;
        let taken = {
            let mut st = self.state.write();
            let host = st.host.remove(name);
            publish(&st);
            host
        };
        // A configuration override makes the kept copy stale.
        let from_host = if config.is_some() { None } else { taken };
        let (model, reserved, waited, is_host) = match from_host {
            Some(h) => match self.admit(name, h.bytes, deadline) {
                Ok(waited) => {
                    let bytes = h.bytes;
                    (h, bytes, waited, true)
                }
                Err(e) => {
                    self.after_failure(name, &e, Some(h));
                    return Err(e);
                }
            },
            None => match self.prepare_from_files(name, config, deadline) {
                Ok((h, reserved, waited)) => (h, reserved, waited, false),
                Err(e) => {
                    self.after_failure(name, &e, None);
                    return Err(e);
                }
            },
        };
        self.start_served(name, model, reserved, started.elapsed().saturating_sub(waited), is_host)
    }

    /// A configuration override that changes nothing but `accel.version_weights` of a READY model
    /// changes its split in place, without reloading the versions. `None`: it is not such an
    /// override (a full reload follows).
    fn reweigh(&self, name: &str, config: &ModelConfig) -> Option<Result<(), AcquireError>> {
        let source = self.repository.read_model_with(name, Some(config.clone())).ok()?;
        let wanted = split::without_weights(&source.config);
        let mut st = self.state.write();
        let Phase::Ready(res) = &mut st.models.get_mut(name)?.phase else {
            return None;
        };
        let same = res.source.as_ref().is_some_and(|c| split::without_weights(c) == wanted)
            || res
                .versions
                .values()
                .filter_map(|s| s.served.as_ref())
                .any(|m| split::without_weights(&m.config) == wanted);
        let served: Vec<u64> = res.versions.keys().copied().collect();
        let listed: Vec<u64> = source.versions.iter().map(|(v, _)| *v).collect();
        let weights = |c: &ModelConfig| c.parameters.get(split::VERSION_WEIGHTS).map(|p| p.string_value.clone());
        let current = res.split.as_ref().map(|s| s.text().to_string());
        // The same weights: an explicit reload (of changed files, say), as in Triton.
        if !same || served != listed || weights(&source.config).map(|w| w.trim().to_string()) == current {
            return None;
        }
        res.reload = None;
        Some(match Split::of_config(&source.config, &served) {
            Ok(new) => {
                tracing::info!(model = %name, weights = new.as_ref().map_or("none", Split::text),
                    "version weights changed without reloading the versions");
                res.split = new;
                res.source = Some(Box::new(source.config));
                Ok(())
            }
            Err(reason) => Err(AcquireError::NotReady {
                model: name.to_string(),
                version: String::new(),
                state: ModelState::Unavailable,
                reason: format!("{reason}; the current split keeps serving"),
            }),
        })
    }

    /// The split's weights of a READY model, as its config says them now.
    pub fn version_weights(&self, name: &str) -> Option<String> {
        match &self.state.read().models.get(name)?.phase {
            Phase::Ready(res) => res.split.as_ref().map(|s| s.text().to_string()),
            _ => None,
        }
    }

    /// The cold path: reads the model's files, admitting an estimate first, then its measured size.
    /// Returns the prepared versions, the bytes reserved for them, and the time spent waiting for
    /// memory.
    fn prepare_from_files(
        &self,
        name: &str,
        config: Option<ModelConfig>,
        deadline: Instant,
    ) -> Result<(HostModel, u64, Duration), AcquireError> {
        let unavailable = |reason: String| AcquireError::NotReady {
            model: name.to_string(),
            version: String::new(),
            state: ModelState::Unavailable,
            reason,
        };
        let source = self
            .repository
            .read_model_with(name, config)
            .map_err(|e| unavailable(e.to_string()))?;
        if !source.ignored_fields.is_empty() {
            tracing::info!(model = %name, fields = ?source.ignored_fields, "config.pbtxt fields that Accel does not use are ignored");
        }
        let numbers: Vec<u64> = source.versions.iter().map(|(v, _)| *v).collect();
        let split = Split::of_config(&source.config, &numbers).map_err(unavailable)?;
        let backend = self
            .engines
            .select(&source.config.backend, &source.config.platform)
            .map_err(unavailable)?;
        let known = self.state.read().models.get(name).and_then(|e| e.bytes);
        let estimate = known.unwrap_or_else(|| source.versions.iter().map(|(_, p)| p.directory_size()).sum());
        let mut waited = self.admit(name, estimate, deadline)?;
        let mut versions = Vec::new();
        let mut failed = Vec::new();
        for (version, path) in &source.versions {
            let t = Instant::now();
            let device_memory = self.options.gpu.map(|_| self.memory.as_ref());
            let preparation = Preparation {
                backend,
                name,
                config: &source.config,
                default_max_batch_size: self.options.default_max_batch_size,
                device_memory,
                limits: LoadLimits {
                    deadline: Some(deadline),
                    ..self.options.load_limits
                },
            };
            // An engine that panics on a hostile file fails this version, not the loader (whose
            // reservations and phase must be put right).
            let prepared =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| prepare(&preparation, *version, path)))
                    .unwrap_or_else(|panic| {
                        Err(format!(
                            "the engine failed while loading: {}",
                            crate::core::panic_message(&*panic)
                        ))
                    });
            match prepared {
                Ok(p) => {
                    crate::metrics::record_load(name, "file", t.elapsed().as_secs_f64(), true);
                    versions.push(Arc::new(p));
                }
                Err(reason) => {
                    crate::metrics::record_load(name, "file", t.elapsed().as_secs_f64(), false);
                    tracing::error!(model = %name, version, %reason, "model version unavailable");
                    failed.push((*version, reason));
                }
            }
        }
        let bytes: u64 = versions.iter().map(|v| v.bytes).sum();
        let cancel = |e: AcquireError| {
            self.state.write().budget.cancel(estimate);
            Err(e)
        };
        let limit = self.state.read().budget.limit();
        if bytes > limit {
            return cancel(AcquireError::ResourceExhausted {
                model: name.to_string(),
                need: bytes,
                budget: limit,
            });
        }
        let mut reserved = estimate;
        if bytes > estimate {
            match self.admit(name, bytes - estimate, deadline) {
                Ok(w) => waited += w,
                Err(e) => return cancel(e),
            }
            reserved = bytes;
        }
        let pinned = versions.iter().any(|v| {
            v.config
                .parameters
                .get(PIN_PARAMETER)
                .is_some_and(|p| p.string_value == "true")
        });
        if let Some(entry) = self.state.write().models.get_mut(name) {
            entry.pinned |= pinned;
        }
        Ok((
            HostModel {
                versions,
                failed,
                bytes,
                split,
                source: Some(Box::new(source.config)),
            },
            reserved,
            waited,
        ))
    }

    /// Starts the executors of prepared versions and makes the model READY.
    fn start_served(
        &self,
        name: &str,
        model: HostModel,
        reserved: u64,
        prepared_in: Duration,
        from_host: bool,
    ) -> Result<(), AcquireError> {
        let started = Instant::now();
        let mut slots = BTreeMap::new();
        for (version, reason) in &model.failed {
            slots.insert(
                *version,
                Slot {
                    state: ModelState::Unavailable,
                    reason: reason.clone(),
                    served: None,
                },
            );
        }
        for prepared in &model.versions {
            let version = prepared.version;
            let stats = self.stats_for(name, version, prepared.spec.instance_count);
            let slot = match ServedModel::start(prepared.clone(), stats, self.options.queue_limits) {
                Ok(served) => Slot {
                    state: ModelState::Ready,
                    reason: String::new(),
                    served: Some(Arc::new(served)),
                },
                Err(reason) => Slot {
                    state: ModelState::Unavailable,
                    reason,
                    served: None,
                },
            };
            slots.insert(version, slot);
        }
        // What the load took, waiting for memory left out.
        let elapsed = (prepared_in + started.elapsed()).as_secs_f64();
        let any_ready = slots.values().any(|s| s.state == ModelState::Ready);
        let old = {
            let mut guard = self.state.write();
            let st = &mut *guard;
            st.budget.commit(reserved, model.bytes);
            publish(st);
            let Some(entry) = st.models.get_mut(name) else {
                return Ok(());
            };
            entry.bytes = Some(model.bytes);
            if !any_ready {
                let reason = slots
                    .values()
                    .map(|s| s.reason.clone())
                    .next()
                    .unwrap_or_else(|| "no version could be loaded".into());
                let error = AcquireError::NotReady {
                    model: name.to_string(),
                    version: String::new(),
                    state: ModelState::Unavailable,
                    reason,
                };
                match &mut entry.phase {
                    // A failed reload: the old copy keeps serving.
                    Phase::Ready(res) => res.reload = None,
                    phase => *phase = Phase::Failed(error.clone()),
                }
                st.budget.release(model.bytes);
                publish(st);
                return Err(error);
            }
            let now = self.now_secs();
            if from_host {
                entry.host_secs = Some(elapsed);
            } else {
                entry.cold_secs = elapsed;
            }
            entry.usage.hit(now);
            let resident = Resident {
                versions: slots,
                failed: model.failed.clone(),
                bytes: model.bytes,
                hits: AtomicU64::new(0),
                loaded_at: Instant::now(),
                reload: None,
                split: model.split.clone(),
                source: model.source.clone(),
            };
            match std::mem::replace(&mut entry.phase, Phase::Ready(resident)) {
                Phase::Ready(old) => Some(old),
                _ => None,
            }
        };
        if from_host {
            metrics::counter!(crate::metrics::ACCEL_MODEL_RELOADS_TOTAL, crate::metrics::LABEL_MODEL => name.to_string())
                .increment(1);
            crate::metrics::record_load(name, "host", elapsed, true);
        }
        tracing::info!(model = %name, bytes = model.bytes, load_us = (elapsed * 1e6) as u64,
            source = if from_host { "host" } else { "file" }, "model ready");
        if let Some(old) = old {
            // A reload: the old copy drains (its requests finish), then its memory is given back.
            let bytes = old.bytes;
            let freed = old.freed_signals();
            drop(old);
            let until = Instant::now() + self.options.load_timeout;
            while !freed.iter().all(Freed::is_freed) && Instant::now() < until {
                std::thread::sleep(POLL);
            }
            let mut st = self.state.write();
            st.budget.release(bytes);
            publish(&st);
        }
        Ok(())
    }

    /// Sets the phase after a failed load: UNAVAILABLE with the reason, or back to not loaded when
    /// memory could not be found in time (a later request tries again). A model taken from the host
    /// tier goes back there.
    fn after_failure(&self, name: &str, error: &AcquireError, host: Option<HostModel>) {
        let mut st = self.state.write();
        if let Some(h) = host {
            let bytes = h.bytes;
            drop(st.host.insert(name.to_string(), bytes, h));
            publish(&st);
        }
        let Some(entry) = st.models.get_mut(name) else {
            return;
        };
        match &mut entry.phase {
            Phase::Ready(res) => res.reload = None, // a failed reload: the old copy keeps serving
            phase => {
                *phase = match error {
                    AcquireError::NoMemory { .. } => Phase::Unloaded {
                        reason: format!("not loaded: {error}"),
                    },
                    e => Phase::Failed(e.clone()),
                }
            }
        }
    }

    fn stats_for(&self, name: &str, version: u64, instances: usize) -> Arc<ModelStats> {
        let mut st = self.state.write();
        let Some(entry) = st.models.get_mut(name) else {
            return Arc::new(ModelStats::new(name, version, instances));
        };
        entry
            .stats
            .entry(version)
            .or_insert_with(|| Arc::new(ModelStats::new(name, version, instances)))
            .clone()
    }

    // ---- memory -----------------------------------------------------------------------------------

    /// Reserves `need` bytes for a load of `name`, evicting idle models (on-demand mode) until they
    /// fit both the budget and the device's live free memory. Waits for requests to finish on busy
    /// models up to `deadline`.
    /// Returns how long that took, so that load times leave out the wait.
    fn admit(&self, name: &str, need: u64, deadline: Instant) -> Result<Duration, AcquireError> {
        let entered = Instant::now();
        loop {
            let live_free = self.memory.read().ok().map(|r| r.free.saturating_sub(self.reserve));
            let mut dropped = Vec::new();
            {
                let mut st = self.state.write();
                let limit = st.budget.limit();
                if need > limit {
                    return Err(AcquireError::ResourceExhausted {
                        model: name.to_string(),
                        need,
                        budget: limit,
                    });
                }
                let budget_short = st.budget.shortfall(need);
                let mut live_short = live_free.map_or(0, |free| need.saturating_sub(free));
                // Host-tier memory is the first to give back when the device itself runs short
                // (on the CPU it is the same memory).
                while live_short > 0 {
                    let Some((n, h)) = st.host.pop_oldest() else { break };
                    live_short = live_short.saturating_sub(h.bytes);
                    tracing::info!(model = %n, "dropped from the host tier: device memory is short");
                    dropped.push(h);
                }
                publish(&st);
                if budget_short == 0 && live_short == 0 {
                    st.budget.reserve(need);
                    publish(&st);
                    return Ok(entered.elapsed());
                }
                let short = budget_short.max(live_short);
                if self.options.control_mode == ControlMode::OnDemand {
                    let (names, candidates) = self.candidates(&mut st, name);
                    if let Some(victims) = choose_victims(&candidates, short, self.now_secs()) {
                        for i in victims {
                            dropped.extend(self.evict(&mut st, &names[i], live_short == 0));
                        }
                        continue;
                    }
                }
                if self.options.control_mode != ControlMode::OnDemand || Instant::now() >= deadline {
                    return Err(AcquireError::NoMemory {
                        model: name.to_string(),
                        need,
                        in_use: st.budget.in_use(),
                        budget: limit,
                        waited: self.options.control_mode == ControlMode::OnDemand,
                    });
                }
            }
            if !dropped.is_empty() {
                drop(dropped);
                crate::alloc::release_free_memory();
            }
            std::thread::sleep(POLL);
        }
    }

    /// The models that could be evicted now: resident, idle, not pinned, not freshly loaded, not
    /// reloading, and not `except`.
    fn candidates(&self, st: &mut State, except: &str) -> (Vec<String>, Vec<Candidate>) {
        let now = self.now_secs();
        let mut names = Vec::new();
        let mut candidates = Vec::new();
        for (name, entry) in st.models.iter_mut() {
            let Phase::Ready(res) = &entry.phase else { continue };
            // Fold the hits counted on the request path into the decayed usage.
            let hits = res.hits.swap(0, Ordering::Relaxed);
            for _ in 0..hits.min(1000) {
                entry.usage.hit(now);
            }
            if name == except || entry.pinned || res.reload.is_some() || res.loaded_at.elapsed() < FRESH || !res.idle()
            {
                continue;
            }
            let reload_secs = if res.bytes <= st.host.limit() {
                entry.host_secs.unwrap_or(entry.cold_secs)
            } else {
                entry.cold_secs
            };
            names.push(name.clone());
            candidates.push(Candidate {
                bytes: res.bytes,
                usage: entry.usage,
                reload_secs,
            });
        }
        (names, candidates)
    }

    /// Evicts an idle resident model: its executors stop, its budget comes back, its prepared weights
    /// go to the host tier (when `keep` and they fit). Returns what must be dropped outside the lock.
    fn evict(&self, st: &mut State, name: &str, keep: bool) -> Vec<HostModel> {
        let Some(entry) = st.models.get_mut(name) else {
            return Vec::new();
        };
        let reason = if keep {
            "evicted to free memory (kept in host memory)"
        } else {
            "evicted to free memory"
        };
        let Phase::Ready(res) = std::mem::replace(&mut entry.phase, Phase::Unloaded { reason: reason.into() }) else {
            return Vec::new();
        };
        for stats in entry.stats.values() {
            stats.set_memory_bytes(0);
        }
        let bytes = res.bytes;
        let versions: Vec<Arc<PreparedVersion>> = res
            .versions
            .values()
            .filter_map(|s| s.served.as_ref().map(|m| m.prepared.clone()))
            .collect();
        let host = HostModel {
            versions,
            failed: res.failed.clone(),
            bytes,
            split: res.split.clone(),
            source: res.source.clone(),
        };
        drop(res); // the served models: their executor threads stop
        st.budget.release(bytes);
        publish(st);
        metrics::counter!(crate::metrics::ACCEL_MODEL_EVICTIONS_TOTAL, crate::metrics::LABEL_MODEL => name.to_string())
            .increment(1);
        tracing::info!(model = %name, bytes = %Bytes(bytes), kept = keep, "model evicted");
        let dropped = if keep {
            st.host
                .insert(name.to_string(), bytes, host)
                .into_iter()
                .map(|(_, h)| h)
                .collect()
        } else {
            vec![host]
        };
        publish(st);
        dropped
    }

    // ---- the repository API -------------------------------------------------------------------

    /// Loads a model (RepositoryModelLoad), with `config` replacing its config.pbtxt when given. A
    /// model already READY is reloaded: its current copy serves until the new one is ready.
    pub async fn load_model(self: &Arc<Self>, name: &str, config: Option<ModelConfig>) -> Result<(), AcquireError> {
        let deadline = self.wait_deadline();
        loop {
            let flight = Flight::new();
            match self.load_step(name, &flight)? {
                Next::Go => {
                    self.spawn_load(name, flight.clone(), config);
                    return flight.wait(deadline, name).await;
                }
                Next::Wait(f) => {
                    let _ = f.wait(deadline, name).await;
                }
                Next::Retry => tokio::time::sleep(POLL).await,
            }
            if Instant::now() >= deadline {
                return Err(AcquireError::NotReady {
                    model: name.to_string(),
                    version: String::new(),
                    state: ModelState::Loading,
                    reason: "another load or unload did not finish before the load timeout".into(),
                });
            }
        }
    }

    /// Marks `name` as loading with `flight` (or reloading, when READY), unless another load or an
    /// unload is under way.
    fn load_step(&self, name: &str, flight: &Flight) -> Result<Next, AcquireError> {
        let mut st = self.state.write();
        if !st.models.contains_key(name) {
            // A model added to the repository after start.
            if !self.repository.model_names().is_ok_and(|n| n.iter().any(|m| m == name)) {
                return Err(unknown(name));
            }
            let pinned = self.options.pinned.iter().any(|p| p == name);
            st.models.insert(name.to_string(), Entry::new("unloaded", pinned));
        }
        let entry = st.models.get_mut(name).ok_or_else(|| unknown(name))?;
        Ok(match &mut entry.phase {
            Phase::Loading(f) => Next::Wait(f.clone()),
            Phase::Ready(res) => match &res.reload {
                Some(f) => Next::Wait(f.clone()),
                None => {
                    res.reload = Some(flight.clone());
                    Next::Go
                }
            },
            Phase::Unloading => Next::Retry,
            phase @ (Phase::Unloaded { .. } | Phase::Failed(_)) => {
                *phase = Phase::Loading(flight.clone());
                Next::Go
            }
        })
    }

    /// Unloads a model (RepositoryModelUnload): new requests no longer reach it (on-demand mode loads
    /// it again), requests in flight finish, then its memory is given back and the call returns.
    pub async fn unload_model(self: &Arc<Self>, name: &str) -> Result<(), AcquireError> {
        let deadline = self.wait_deadline();
        let resident = loop {
            match self.unload_step(name)? {
                Unload::Wait(f) => {
                    let _ = f.wait(deadline, name).await;
                }
                Unload::Retry => tokio::time::sleep(POLL).await,
                Unload::Done(resident) => break resident,
            }
        };
        let Some(res) = resident else {
            return Ok(());
        };
        let bytes = res.bytes;
        let freed = res.freed_signals();
        drop(res);
        let registry = self.clone();
        let name = name.to_string();
        // Requests in flight hold leases: wait for them, then give the memory back.
        let waiter = tokio::spawn(async move {
            while !freed.iter().all(Freed::is_freed) {
                tokio::time::sleep(POLL).await;
            }
            registry.unloaded(&name, bytes);
        });
        let _ = tokio::time::timeout_at(deadline.into(), waiter).await;
        Ok(())
    }

    /// Takes a model out of service: its resident copy when READY (the phase becomes UNLOADING), and
    /// its host-tier copy.
    fn unload_step(&self, name: &str) -> Result<Unload, AcquireError> {
        let mut dropped = None;
        let step = {
            let mut guard = self.state.write();
            let st = &mut *guard;
            let entry = st.models.get_mut(name).ok_or_else(|| unknown(name))?;
            let step = match &mut entry.phase {
                Phase::Loading(f) => Unload::Wait(f.clone()),
                Phase::Ready(res) if res.reload.is_some() => Unload::Wait(res.reload.clone().expect("checked")),
                Phase::Unloading => Unload::Retry,
                Phase::Ready(_) => match std::mem::replace(&mut entry.phase, Phase::Unloading) {
                    Phase::Ready(res) => Unload::Done(Some(res)),
                    _ => Unload::Done(None),
                },
                phase @ (Phase::Unloaded { .. } | Phase::Failed(_)) => {
                    *phase = Phase::Unloaded {
                        reason: "unloaded".into(),
                    };
                    Unload::Done(None)
                }
            };
            if matches!(step, Unload::Done(_)) {
                dropped = st.host.remove(name);
                publish(st);
            }
            step
        };
        if dropped.is_some() {
            drop(dropped);
            crate::alloc::release_free_memory();
        }
        Ok(step)
    }

    /// An unloaded model's memory came back.
    fn unloaded(&self, name: &str, bytes: u64) {
        crate::alloc::release_free_memory();
        let mut st = self.state.write();
        st.budget.release(bytes);
        publish(&st);
        if let Some(entry) = st.models.get_mut(name) {
            for stats in entry.stats.values() {
                stats.set_memory_bytes(0);
            }
            if matches!(entry.phase, Phase::Unloading) {
                entry.phase = Phase::Unloaded {
                    reason: "unloaded".into(),
                };
            }
        }
        tracing::info!(model = %name, bytes = %Bytes(bytes), "model unloaded");
    }

    // ---- reports ----------------------------------------------------------------------------------

    /// Every model and version with its state.
    pub fn index(&self) -> Vec<IndexEntry> {
        let st = self.state.read();
        let mut out = Vec::new();
        for (name, entry) in &st.models {
            match &entry.phase {
                Phase::Ready(res) => {
                    for (v, slot) in &res.versions {
                        out.push(IndexEntry {
                            name: name.clone(),
                            version: v.to_string(),
                            state: slot.state,
                            reason: slot.reason.clone(),
                        });
                    }
                }
                phase => out.push(IndexEntry {
                    name: name.clone(),
                    version: String::new(),
                    state: phase_state(phase),
                    reason: phase_reason(phase),
                }),
            }
        }
        out
    }

    /// Statistics of the versions of one model that have been loaded (or of every model when `name`
    /// is empty), kept across evictions and reloads.
    pub fn statistics(&self, name: &str, version: &str) -> Result<Vec<(String, u64, Arc<ModelStats>)>, AcquireError> {
        let st = self.state.read();
        if name.is_empty() {
            return Ok(st
                .models
                .iter()
                .flat_map(|(n, e)| e.stats.iter().map(move |(v, s)| (n.clone(), *v, s.clone())))
                .collect());
        }
        let entry = st.models.get(name).ok_or_else(|| unknown(name))?;
        let found: Vec<_> = entry
            .stats
            .iter()
            .filter(|(v, _)| version.is_empty() || v.to_string() == version)
            .map(|(v, s)| (name.to_string(), *v, s.clone()))
            .collect();
        if found.is_empty() {
            drop(st);
            // Report why, as acquire would.
            return self
                .acquire_now(name, version)
                .map(|l| vec![(name.to_string(), l.spec.version, l.stats.clone())]);
        }
        Ok(found)
    }

    /// The versions of a model, for metadata.
    pub fn versions(&self, name: &str) -> Vec<String> {
        let st = self.state.read();
        st.models
            .get(name)
            .map(|e| match &e.phase {
                Phase::Ready(res) => res.versions.keys().map(u64::to_string).collect(),
                _ => e.stats.keys().map(u64::to_string).collect(),
            })
            .unwrap_or_default()
    }

    /// (budget, in use, host tier bytes).
    pub fn memory(&self) -> (u64, u64, u64) {
        let st = self.state.read();
        (st.budget.limit(), st.budget.in_use(), st.host.bytes())
    }
}

/// Sets the memory gauges (rare events: loads, evictions, unloads; looked up by name each time, so
/// that they work whenever the metrics recorder is installed).
fn publish(st: &State) {
    metrics::gauge!(crate::metrics::ACCEL_MEMORY_BUDGET_BYTES).set(st.budget.limit() as f64);
    metrics::gauge!(crate::metrics::ACCEL_MEMORY_IN_USE_BYTES).set(st.budget.in_use() as f64);
    metrics::gauge!(crate::metrics::ACCEL_HOST_TIER_BYTES).set(st.host.bytes() as f64);
}

struct SlotGuard<'a>(&'a Registry);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.loads.lock() -= 1;
        self.0.load_done.notify_one();
    }
}

fn unknown(name: &str) -> AcquireError {
    AcquireError::UnknownModel {
        model: name.to_string(),
    }
}

fn phase_state(phase: &Phase) -> ModelState {
    match phase {
        Phase::Unloaded { .. } | Phase::Failed(_) => ModelState::Unavailable,
        Phase::Loading(_) => ModelState::Loading,
        Phase::Ready(_) => ModelState::Ready,
        Phase::Unloading => ModelState::Unloading,
    }
}

fn phase_reason(phase: &Phase) -> String {
    match phase {
        Phase::Unloaded { reason } => reason.clone(),
        Phase::Failed(e) => match e {
            AcquireError::NotReady { reason, .. } => reason.clone(),
            e => e.to_string(),
        },
        Phase::Loading(_) | Phase::Ready(_) | Phase::Unloading => String::new(),
    }
}

/// How a request that names no version chooses one.
#[derive(Clone, Copy, Debug)]
pub enum Route<'a> {
    /// The newest READY version (metadata, config, and models without a split).
    Newest,
    /// By the model's split, if it has one; the key, when given, makes the draw deterministic.
    Split(Option<&'a str>),
}

/// The lease of a version of a resident model (empty version: the newest READY one, or the split's
/// draw for an inference).
fn lease(name: &str, version: &str, res: &Resident, route: Route<'_>) -> Result<Lease, AcquireError> {
    let available = || res.versions.keys().map(u64::to_string).collect::<Vec<_>>().join(", ");
    let chosen = if version.is_empty() {
        match (route, &res.split) {
            (Route::Split(key), Some(split)) => {
                let order = split.choose(split::point(key));
                // The drawn version, or the next weighted one that is READY.
                let ready = order
                    .iter()
                    .find(|v| res.versions.get(v).is_some_and(|s| s.state == ModelState::Ready))
                    .or(order.first());
                ready.and_then(|v| res.versions.get_key_value(v))
            }
            _ => res
                .versions
                .iter()
                .rev()
                .find(|(_, s)| s.state == ModelState::Ready)
                .or_else(|| res.versions.iter().next_back()),
        }
    } else {
        let Ok(n) = version.parse::<u64>() else {
            return Err(AcquireError::UnknownVersion {
                model: name.to_string(),
                version: version.to_string(),
                available: available(),
            });
        };
        res.versions.get_key_value(&n)
    };
    let Some((v, slot)) = chosen else {
        return Err(AcquireError::UnknownVersion {
            model: name.to_string(),
            version: version.to_string(),
            available: available(),
        });
    };
    match &slot.served {
        Some(served) if slot.state == ModelState::Ready => {
            res.hits.fetch_add(1, Ordering::Relaxed);
            Ok(Lease(served.clone()))
        }
        _ => Err(AcquireError::NotReady {
            model: name.to_string(),
            version: v.to_string(),
            state: slot.state,
            reason: slot.reason.clone(),
        }),
    }
}

//! The ONNX Runtime backend, through the `ort` crate with its library loaded at run time: the
//! `libonnxruntime.so.1.x` that PyPI's `onnxruntime` wheel ships, named by `--onnxruntime-library`.
//! Nothing is linked at build time, and a missing or wrong library is an error for the models that
//! need it, never a crash (`ort::init_from`, not `ORT_DYLIB_PATH`, which panics).
//!
//! A load creates one session (which checks the file and gives the signature); each instance owns a
//! session, created once and returned to the model's pool when the instance stops, so a model brought
//! back from the host tier starts without recompiling. A batch's inputs are copied once, from the
//! requests' buffers straight into the tensors ONNX Runtime reads; outputs are copied once out of
//! its tensors.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{RunOptions, Session};
use ort::value::{DynValue, PrimitiveTensorElementType, Tensor as OrtTensor, TensorElementType, ValueType};
use parking_lot::Mutex;

use super::{Backend, BackendError, Batch, BatchInput, LoadLimits, LoadedModel, ModelInstance};
use crate::core::{DataType, GraphIo, ModelFile, ModelSpec, Signature, Tensor};

/// ONNX Runtime, loaded from a library file.
#[derive(Clone)]
pub struct OrtBackend {
    env: Environment,
    library: PathBuf,
    intra_threads: usize,
    /// The GPU sessions run on through ONNX Runtime's CUDA execution provider (builds with `cuda`;
    /// always `None` without it).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    gpu: Option<i32>,
}

impl std::fmt::Debug for OrtBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtBackend").field("library", &self.library).finish()
    }
}

impl OrtBackend {
    /// Loads the library (once per process) and creates ONNX Runtime's environment. `intra_threads`
    /// is the thread count of each session's own pool.
    pub fn open(library: &Path, intra_threads: usize) -> Result<OrtBackend, String> {
        Self::open_on(library, intra_threads, None)
    }

    /// As [`OrtBackend::open`], with sessions on GPU `gpu` when the library has the CUDA execution
    /// provider (onnxruntime-gpu's); without it, or in a build without `cuda`, this logs why and
    /// sessions run on the CPU.
    pub fn open_on(library: &Path, intra_threads: usize, gpu: Option<usize>) -> Result<OrtBackend, String> {
        let builder = ort::init_from(library).map_err(|e| {
            let mut message = format!("cannot load ONNX Runtime: {e}");
            if let ort::LoadDynamicError::Dlopen { error, .. } = &e
                && let Some(reason) = std::error::Error::source(error)
            {
                message = format!("{message}: {reason}");
            }
            message
        })?;
        let env = builder
            .with_name("accel")
            .with_telemetry(false)
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime: {e}"))?;
        Ok(OrtBackend {
            env,
            library: library.to_path_buf(),
            intra_threads: intra_threads.max(1),
            gpu: gpu.and_then(cuda_provider),
        })
    }

    fn session(&self, file: &Path) -> Result<Session, BackendError> {
        let invalid = |e: String| BackendError::InvalidModel(format!("ONNX Runtime: {e}"));
        let builder = Session::builder(&self.env).map_err(|e| invalid(e.to_string()))?;
        let builder = builder
            .with_intra_threads(self.intra_threads)
            .map_err(|e| invalid(e.to_string()))?;
        let builder = builder.with_inter_threads(1).map_err(|e| invalid(e.to_string()))?;
        let builder = builder
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| invalid(e.to_string()))?;
        #[cfg(feature = "cuda")]
        let builder = match self.gpu {
            Some(id) => builder
                .with_execution_providers([ort::ep::CUDA::default().with_device_id(id).build().error_on_failure()])
                .map_err(|e| invalid(format!("CUDA execution provider on GPU {id}: {e}")))?,
            None => builder,
        };
        let mut builder = builder;
        builder.commit_from_file(file).map_err(|e| invalid(e.to_string()))
    }
}

/// `Some(gpu)` when the loaded ONNX Runtime has its CUDA execution provider, else `None`, logged.
#[cfg(feature = "cuda")]
fn cuda_provider(gpu: usize) -> Option<i32> {
    use ort::ep::ExecutionProvider;
    match ort::ep::CUDA::is_available() {
        Ok(true) => i32::try_from(gpu).ok(),
        Ok(false) => {
            tracing::warn!(
                gpu,
                "this ONNX Runtime library has no CUDA execution provider (PyPI's onnxruntime is CPU-only; \
                 onnxruntime-gpu has it): ONNX Runtime models run on the CPU"
            );
            None
        }
        Err(e) => {
            tracing::warn!(gpu, error = %e, "cannot ask ONNX Runtime for its CUDA execution provider: ONNX Runtime models run on the CPU");
            None
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_provider(_gpu: usize) -> Option<i32> {
    None
}

impl Backend for OrtBackend {
    fn name(&self) -> &'static str {
        "onnxruntime"
    }

    fn load(&self, file: &ModelFile, limits: &LoadLimits) -> Result<Box<dyn LoadedModel>, BackendError> {
        let size = file.directory_size();
        // ONNX Runtime opens the external data files itself: check first that every one it will
        // open is a regular file inside the model's directory, and its ranges inside the file.
        let bytes = file.read(u64::MAX).map_err(|e| BackendError::Read(e.to_string()))?;
        refs::check(&bytes, file)?;
        drop(bytes);
        limits.check_deadline()?;
        let session = self.session(file.path()).map_err(|e| match e {
            // ONNX Runtime's messages name files by their host paths: not for clients.
            BackendError::InvalidModel(m) => BackendError::InvalidModel(file.scrub(&m)),
            other => other,
        })?;
        let signature = Signature {
            inputs: session
                .inputs()
                .iter()
                .map(|o| graph_io(o.name(), o.dtype()))
                .collect::<Result<_, _>>()?,
            outputs: session
                .outputs()
                .iter()
                .map(|o| graph_io(o.name(), o.dtype()))
                .collect::<Result<_, _>>()?,
        };
        Ok(Box::new(OrtModel {
            backend: self.clone(),
            file: file.path().to_path_buf(),
            signature,
            bytes: size,
            sessions: Arc::new(Mutex::new(vec![session])),
        }))
    }
}

/// The parts of an ONNX file that name other files: the external data of every tensor, in the main
/// graph, its sub-graphs and functions. Decoded without the weights: prost skips the fields these
/// messages do not declare (raw data among them) without copying them.
mod refs {
    use crate::backend::{BackendError, ExternalData};
    use crate::core::ModelFile;

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Model {
        #[prost(message, optional, tag = "7")]
        graph: Option<Graph>,
        #[prost(message, repeated, tag = "20")]
        training_info: Vec<TrainingInfo>,
        #[prost(message, repeated, tag = "25")]
        functions: Vec<Function>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct TrainingInfo {
        #[prost(message, optional, tag = "1")]
        initialization: Option<Graph>,
        #[prost(message, optional, tag = "2")]
        algorithm: Option<Graph>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Function {
        #[prost(message, repeated, tag = "7")]
        node: Vec<Node>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Graph {
        #[prost(message, repeated, tag = "1")]
        node: Vec<Node>,
        #[prost(message, repeated, tag = "5")]
        initializer: Vec<TensorRef>,
        #[prost(message, repeated, tag = "15")]
        sparse_initializer: Vec<Sparse>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Node {
        #[prost(message, repeated, tag = "5")]
        attribute: Vec<Attribute>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Attribute {
        #[prost(message, optional, tag = "5")]
        t: Option<TensorRef>,
        #[prost(message, optional, tag = "6")]
        g: Option<Graph>,
        #[prost(message, repeated, tag = "10")]
        tensors: Vec<TensorRef>,
        #[prost(message, repeated, tag = "11")]
        graphs: Vec<Graph>,
        #[prost(message, optional, tag = "22")]
        sparse_tensor: Option<Sparse>,
        #[prost(message, repeated, tag = "23")]
        sparse_tensors: Vec<Sparse>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Sparse {
        #[prost(message, optional, tag = "1")]
        values: Option<TensorRef>,
        #[prost(message, optional, tag = "2")]
        indices: Option<TensorRef>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct TensorRef {
        #[prost(string, tag = "8")]
        name: String,
        #[prost(message, repeated, tag = "13")]
        external_data: Vec<Entry>,
        #[prost(int32, tag = "14")]
        data_location: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Entry {
        #[prost(string, tag = "1")]
        key: String,
        #[prost(string, tag = "2")]
        value: String,
    }

    /// Checks every external-data reference of the model in `bytes` against the files next to
    /// `file`.
    pub(super) fn check(bytes: &[u8], file: &ModelFile) -> Result<(), BackendError> {
        let model = <Model as prost::Message>::decode(bytes)
            .map_err(|e| BackendError::Read(format!("'{}' is not an ONNX model: {e}", file.shown())))?;
        let mut tensors = Vec::new();
        let mut graphs: Vec<&Graph> = model.graph.iter().collect();
        for t in &model.training_info {
            graphs.extend(t.initialization.iter().chain(&t.algorithm));
        }
        let mut nodes: Vec<&Node> = model.functions.iter().flat_map(|f| &f.node).collect();
        while let Some(g) = graphs.pop() {
            tensors.extend(&g.initializer);
            for s in &g.sparse_initializer {
                tensors.extend(s.values.iter().chain(&s.indices));
            }
            nodes.extend(&g.node);
            while let Some(n) = nodes.pop() {
                for a in &n.attribute {
                    tensors.extend(a.t.iter().chain(&a.tensors));
                    for s in a.sparse_tensor.iter().chain(&a.sparse_tensors) {
                        tensors.extend(s.values.iter().chain(&s.indices));
                    }
                    graphs.extend(a.g.iter().chain(&a.graphs));
                }
            }
        }
        for t in tensors.into_iter().filter(|t| t.data_location == 1) {
            let get = |key: &str| t.external_data.iter().find(|e| e.key == key).map(|e| e.value.as_str());
            let bad = |what: String| BackendError::InvalidModel(format!("tensor '{}': external data {what}", t.name));
            let data = ExternalData::of(file, get).map_err(bad)?;
            data.file
                .check_range(data.offset, data.length)
                .map_err(|e| bad(e.to_string()))?;
        }
        Ok(())
    }
}

fn datatype(t: TensorElementType) -> Option<DataType> {
    Some(match t {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::U8,
        TensorElementType::Uint16 => DataType::U16,
        TensorElementType::Uint32 => DataType::U32,
        TensorElementType::Uint64 => DataType::U64,
        TensorElementType::Int8 => DataType::I8,
        TensorElementType::Int16 => DataType::I16,
        TensorElementType::Int32 => DataType::I32,
        TensorElementType::Int64 => DataType::I64,
        TensorElementType::Float16 => DataType::F16,
        TensorElementType::Float32 => DataType::F32,
        TensorElementType::Float64 => DataType::F64,
        TensorElementType::Bfloat16 => DataType::Bf16,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

fn graph_io(name: &str, ty: &ValueType) -> Result<GraphIo, BackendError> {
    let ValueType::Tensor { ty, shape, .. } = ty else {
        return Err(BackendError::UnsupportedDataType(format!(
            "'{name}' is not a tensor ({ty:?}), which Accel does not serve"
        )));
    };
    let datatype = datatype(*ty).ok_or_else(|| {
        BackendError::UnsupportedDataType(format!("'{name}' has element type {ty:?}, which Accel does not serve"))
    })?;
    Ok(GraphIo {
        name: name.to_string(),
        datatype,
        dims: Some(shape.iter().map(|&d| usize::try_from(d).ok()).collect()),
    })
}

/// A model ONNX Runtime has compiled, with its idle sessions.
struct OrtModel {
    backend: OrtBackend,
    file: PathBuf,
    signature: Signature,
    bytes: u64,
    sessions: Arc<Mutex<Vec<Session>>>,
}

impl std::fmt::Debug for OrtModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtModel").field("file", &self.file).finish()
    }
}

impl LoadedModel for OrtModel {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// ONNX Runtime allocates outside Rust's allocator, so its weights are counted as the model's
    /// files (what its initializers hold).
    fn weight_bytes(&self) -> u64 {
        self.bytes
    }

    fn instance(&self, spec: &ModelSpec) -> Result<Box<dyn ModelInstance>, BackendError> {
        let session = match self.sessions.lock().pop() {
            Some(s) => s,
            None => self.backend.session(&self.file)?,
        };
        let position = |list: &[GraphIo], name: &str, what: &str| {
            list.iter()
                .position(|e| e.name == name)
                .ok_or_else(|| BackendError::InvalidModel(format!("the model file has no {what} '{name}'")))
        };
        for (name, _) in spec.engine_inputs() {
            position(&self.signature.inputs, name, "input")?;
        }
        for o in &spec.outputs {
            position(&self.signature.outputs, &o.name, "output")?;
        }
        Ok(Box::new(OrtInstance {
            session: Some(session),
            pool: self.sessions.clone(),
            inputs: spec.engine_inputs().map(|(name, _)| name.to_string()).collect(),
            outputs: spec.outputs.iter().map(|o| (o.name.clone(), o.datatype)).collect(),
        }))
    }
}

struct OrtInstance {
    session: Option<Session>,
    /// Where the session goes back when the instance stops.
    pool: Arc<Mutex<Vec<Session>>>,
    inputs: Vec<String>,
    outputs: Vec<(String, DataType)>,
}

impl Drop for OrtInstance {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            self.pool.lock().push(s);
        }
    }
}

impl ModelInstance for OrtInstance {
    fn execute(&mut self, batch: &Batch) -> Result<Vec<Tensor>, BackendError> {
        let session = self
            .session
            .as_mut()
            .ok_or_else(|| BackendError::Execution("the session is gone".into()))?;
        let mut values = Vec::with_capacity(batch.inputs.len());
        for (k, input) in batch.inputs.iter().enumerate() {
            if let Some(input) = input {
                values.push((self.inputs[k].as_str(), to_ort(input)?));
            }
        }
        let run = |e: ort::Error| {
            let text = format!("ONNX Runtime: {e}");
            match e.code() {
                ort::ErrorCode::InvalidArgument => BackendError::InvalidInput(text),
                _ if text.contains("terminate flag") => BackendError::Cancelled(text),
                _ if text.contains("Failed to allocate memory") || text.contains("bad allocation") => {
                    BackendError::ResourceExhausted(text)
                }
                _ => BackendError::Execution(text),
            }
        };
        // A run whose clients all left is terminated by the watchdog.
        let options = Arc::new(RunOptions::new().map_err(|e| BackendError::Execution(format!("ONNX Runtime: {e}")))?);
        let _watched = watchdog::watch(options.clone(), batch.cancel.clone());
        let outputs = session.run_with_options(values, &*options).map_err(run)?;
        batch
            .outputs
            .iter()
            .map(|&k| {
                let (name, datatype) = &self.outputs[k];
                let value = outputs
                    .get(name)
                    .ok_or_else(|| BackendError::Execution(format!("ONNX Runtime returned no output '{name}'")))?;
                from_ort(value, name, *datatype)
            })
            .collect()
    }
}

/// Stops ONNX Runtime runs that nobody waits for any more: one thread, started at the first run,
/// looks at the runs in progress a few times a second and sets the terminate flag of each whose
/// batch has been given up by every client (ONNX Runtime checks it between operators and Loop
/// iterations).
mod watchdog {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, OnceLock};
    use std::time::Duration;

    use ort::session::RunOptions;
    use parking_lot::Mutex;

    use crate::backend::Cancel;

    const PERIOD: Duration = Duration::from_millis(50);

    type Runs = Mutex<Vec<(u64, Arc<RunOptions>, Cancel)>>;

    struct Watchdog {
        runs: Runs,
        next: AtomicU64,
    }

    fn watchdog() -> &'static Watchdog {
        static WATCHDOG: OnceLock<Watchdog> = OnceLock::new();
        WATCHDOG.get_or_init(|| {
            let spawned = std::thread::Builder::new().name("accel-ort-watch".into()).spawn(|| {
                loop {
                    std::thread::sleep(PERIOD);
                    let Some(w) = WATCHDOG.get() else { continue };
                    for (_, options, cancel) in w.runs.lock().iter() {
                        if cancel.is_cancelled() {
                            let _ = options.terminate();
                        }
                    }
                }
            });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the ONNX Runtime watchdog: abandoned runs finish");
            }
            Watchdog {
                runs: Mutex::new(Vec::new()),
                next: AtomicU64::new(0),
            }
        })
    }

    /// A run being watched; dropping it ends the watch.
    pub(super) struct Watched(u64);

    impl Drop for Watched {
        fn drop(&mut self) {
            watchdog().runs.lock().retain(|(id, _, _)| *id != self.0);
        }
    }

    pub(super) fn watch(options: Arc<RunOptions>, cancel: Cancel) -> Watched {
        let w = watchdog();
        let id = w.next.fetch_add(1, Ordering::Relaxed);
        w.runs.lock().push((id, options, cancel));
        Watched(id)
    }
}

fn owned<T: PrimitiveTensorElementType + bytemuck::Pod + std::fmt::Debug>(
    input: &BatchInput,
) -> Result<DynValue, BackendError> {
    let mut data = vec![T::zeroed(); input.byte_len() / std::mem::size_of::<T>()];
    input.copy_to(bytemuck::cast_slice_mut(&mut data));
    let shape: Vec<i64> = input.shape.iter().map(|&d| d as i64).collect();
    OrtTensor::from_array((shape, data))
        .map(|t| t.into_dyn())
        .map_err(|e| BackendError::Execution(format!("ONNX Runtime input: {e}")))
}

/// The one copy of a batch input: the requests' bytes into a tensor ONNX Runtime owns.
fn to_ort(input: &BatchInput) -> Result<DynValue, BackendError> {
    match input.datatype {
        DataType::F32 => owned::<f32>(input),
        DataType::F64 => owned::<f64>(input),
        DataType::F16 => owned::<half::f16>(input),
        DataType::Bf16 => owned::<half::bf16>(input),
        DataType::I8 => owned::<i8>(input),
        DataType::I16 => owned::<i16>(input),
        DataType::I32 => owned::<i32>(input),
        DataType::I64 => owned::<i64>(input),
        DataType::U8 => owned::<u8>(input),
        DataType::U16 => owned::<u16>(input),
        DataType::U32 => owned::<u32>(input),
        DataType::U64 => owned::<u64>(input),
        DataType::Bool => {
            let data: Vec<bool> = input.parts.iter().flat_map(|p| p.iter().map(|&b| b != 0)).collect();
            let shape: Vec<i64> = input.shape.iter().map(|&d| d as i64).collect();
            OrtTensor::from_array((shape, data))
                .map(|t| t.into_dyn())
                .map_err(|e| BackendError::Execution(format!("ONNX Runtime input: {e}")))
        }
        DataType::Bytes => strings::to_ort(input),
    }
}

fn extract<T: PrimitiveTensorElementType + bytemuck::Pod>(value: &DynValue) -> Result<(Vec<usize>, Bytes), String> {
    let (shape, data) = value.try_extract_tensor::<T>().map_err(|e| e.to_string())?;
    let shape = shape.iter().map(|&d| d.max(0) as usize).collect();
    Ok((shape, Bytes::copy_from_slice(bytemuck::cast_slice(data))))
}

/// The one copy of an output: out of ONNX Runtime's tensor into the response's bytes.
fn from_ort(value: &DynValue, name: &str, datatype: DataType) -> Result<Tensor, BackendError> {
    let extracted = match datatype {
        DataType::F32 => extract::<f32>(value),
        DataType::F64 => extract::<f64>(value),
        DataType::F16 => extract::<half::f16>(value),
        DataType::Bf16 => extract::<half::bf16>(value),
        DataType::I8 => extract::<i8>(value),
        DataType::I16 => extract::<i16>(value),
        DataType::I32 => extract::<i32>(value),
        DataType::I64 => extract::<i64>(value),
        DataType::U8 => extract::<u8>(value),
        DataType::U16 => extract::<u16>(value),
        DataType::U32 => extract::<u32>(value),
        DataType::U64 => extract::<u64>(value),
        DataType::Bool => value
            .try_extract_tensor::<bool>()
            .map(|(shape, data)| {
                (
                    shape.iter().map(|&d| d.max(0) as usize).collect(),
                    data.iter().map(|&b| u8::from(b)).collect::<Vec<u8>>().into(),
                )
            })
            .map_err(|e| e.to_string()),
        DataType::Bytes => strings::from_ort(value),
    };
    let (shape, data) = extracted
        .map_err(|e| BackendError::Execution(format!("output '{name}' is not {}: {e}", datatype.wire_name())))?;
    Ok(Tensor {
        name: name.to_string(),
        datatype,
        shape,
        data,
    })
}

/// BYTES tensors as ONNX string tensors, through ONNX Runtime's C API: `ort`'s string helpers go
/// through C strings (no NUL inside an element) and UTF-8 `String`s, while a BYTES element is any
/// bytes. Elements are written with `GetResizedStringTensorElementBuffer` (ONNX Runtime 1.17+, the
/// oldest this server loads) and read with `GetStringTensorContent`.
mod strings {
    #![allow(unsafe_code)] // ONNX Runtime's C API for string elements

    use std::ffi::CStr;

    use bytes::{BufMut, Bytes, BytesMut};
    use ort::AsPointer;
    use ort::value::{DynValue, Tensor as OrtTensor};

    use crate::backend::{BackendError, BatchInput};

    fn check(status: ort::sys::OrtStatusPtr) -> Result<(), String> {
        let ptr = status.0;
        if ptr.is_null() {
            return Ok(());
        }
        let api = ort::api();
        // SAFETY: a non-null status from ONNX Runtime, released once here.
        let message = unsafe {
            let text = (api.GetErrorMessage)(ptr);
            let message = if text.is_null() {
                "unknown error".to_string()
            } else {
                CStr::from_ptr(text).to_string_lossy().into_owned()
            };
            (api.ReleaseStatus)(ptr);
            message
        };
        Err(message)
    }

    /// The batch's length-prefixed elements as a string tensor (validated: the prefixes tile each part).
    pub(super) fn to_ort(input: &BatchInput) -> Result<DynValue, BackendError> {
        let fail = |e: String| BackendError::Execution(format!("ONNX Runtime string input: {e}"));
        let elements: Vec<&[u8]> = input
            .parts
            .iter()
            .flat_map(|p| crate::core::bytes_elements(p))
            .collect();
        let expected: usize = input.shape.iter().product();
        if elements.len() != expected {
            return Err(fail(format!("{} elements for shape {:?}", elements.len(), input.shape)));
        }
        let shape: Vec<i64> = input.shape.iter().map(|&d| d as i64).collect();
        let empty = vec![""; elements.len()];
        let mut value = OrtTensor::from_string_array((shape, &empty[..]))
            .map_err(|e| fail(e.to_string()))?
            .into_dyn();
        let api = ort::api();
        let ptr = value.ptr_mut();
        for (i, e) in elements.iter().enumerate() {
            let mut buffer: *mut std::ffi::c_char = std::ptr::null_mut();
            // SAFETY: `ptr` is a string tensor of `elements.len()` elements; the buffer ONNX Runtime
            // returns holds `e.len()` bytes.
            unsafe {
                check((api.GetResizedStringTensorElementBuffer)(ptr, i, e.len(), &mut buffer)).map_err(fail)?;
                if !e.is_empty() {
                    if buffer.is_null() {
                        return Err(fail("no element buffer".into()));
                    }
                    std::ptr::copy_nonoverlapping(e.as_ptr(), buffer.cast::<u8>(), e.len());
                }
            }
        }
        Ok(value)
    }

    /// A string tensor's shape and its elements, length-prefixed.
    pub(super) fn from_ort(value: &DynValue) -> Result<(Vec<usize>, Bytes), String> {
        let ort::value::ValueType::Tensor { ty, shape, .. } = value.dtype() else {
            return Err("not a tensor".into());
        };
        if *ty != ort::value::TensorElementType::String {
            return Err(format!("element type {ty:?}"));
        }
        let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
        let count: usize = dims.iter().product();
        let api = ort::api();
        let ptr = value.ptr();
        let mut total = 0usize;
        // SAFETY: `ptr` is a string tensor of `count` elements; the buffers are sized as asked.
        let (content, mut offsets) = unsafe {
            check((api.GetStringTensorDataLength)(ptr, &mut total))?;
            let mut content = vec![0u8; total];
            let mut offsets = vec![0usize; count + 1];
            check((api.GetStringTensorContent)(
                ptr,
                content.as_mut_ptr().cast(),
                total,
                offsets.as_mut_ptr(),
                count,
            ))?;
            (content, offsets)
        };
        offsets[count] = total;
        let mut out = BytesMut::with_capacity(total + 4 * count);
        for w in offsets.windows(2) {
            let (a, b) = (w[0].min(total), w[1].min(total).max(w[0].min(total)));
            out.put_u32_le((b - a) as u32);
            out.put_slice(&content[a..b]);
        }
        Ok((dims, out.freeze()))
    }
}

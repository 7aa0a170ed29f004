//! Triton's shared-memory extensions: clients register regions of their own memory and name them in
//! tensors (`shared_memory_region`, `shared_memory_byte_size`, `shared_memory_offset` on inputs and
//! requested outputs), so a colocated predictor's tensors never cross a socket.
//!
//! - **System memory** (`region`): a POSIX shm object, opened under the key rules (one file name in
//!   `--shm-dir`, not a symlink, a regular file owned by the server's user or a `--shm-allowed-uid`)
//!   and mapped once at registration. An input is a `Bytes` over the mapped pages, so the backend
//!   copies it from the client's memory straight into the batch; an output is written from the
//!   batch's result into the client's region, and the response carries its metadata only.
//! - **Truncation** by the client cannot kill the server: `guard` turns the fault into zero pages and
//!   a count, the request that touched them fails with INTERNAL, the region refuses later use.
//! - **Lifetime**: each request holds a `Use` of every region it names; unregistering stops new uses
//!   at once and waits (bounded) for those in flight, so that once it answers, the server no longer
//!   touches the memory.
//! - **CUDA memory** (`cuda`, the `cuda` build): a client's device allocation by its IPC handle, in
//!   the same namespace; its bytes are copied between device and host for the batch. The CPU build
//!   answers UNIMPLEMENTED to registration (status and unregister answer as for an empty set, which
//!   perf_analyzer relies on).
//!
//! Errors and codes are Triton's (`server@src/shared_memory_manager.cc`), with one difference made on
//! purpose: an object that cannot be opened is the client's mistake (INVALID_ARGUMENT), not INTERNAL.

#[cfg(feature = "cuda")]
mod cuda;
mod guard;
mod region;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use thiserror::Error as ThisError;

use crate::core::{Code, ParamValue, Parameters};

use region::{Kind, Region};
pub use region::{OutputSlot, Policy, Use};

/// The most regions `--shm-max-regions` may allow (the size of the fault handler's table).
pub const MAX_REGIONS: usize = guard::SLOTS;

/// How long unregistering waits for the requests using a region; past it the region is released
/// when the last of them ends.
const UNREGISTER_WAIT: Duration = Duration::from_secs(30);

/// The tensor parameters of the extension.
pub const REGION: &str = "shared_memory_region";
pub const BYTE_SIZE: &str = "shared_memory_byte_size";
pub const OFFSET: &str = "shared_memory_offset";

/// Why a shared-memory call or tensor failed.
#[derive(Debug, ThisError, PartialEq, Eq)]
pub enum ShmError {
    #[error("Client shared memory is disabled. Start the server with '--allow-client-shm=true' to enable.")]
    Disabled,
    #[error("cannot register shared memory region '{name}' - invalid shm key '{key}': {reason}")]
    BadKey { name: String, key: String, reason: String },
    #[error("a shared memory region needs a name")]
    NoName,
    #[error("shared memory region '{name}' already in manager")]
    Exists { name: String },
    #[error("{max} shared memory regions are registered, the most this server holds (--shm-max-regions)")]
    TooMany { max: usize },
    #[error("Unable to open shared memory region: '{key}': {reason}")]
    Open { key: String, reason: String },
    #[error("cannot register shared memory region '{name}': '{key}' {reason}")]
    Refused { name: String, key: String, reason: String },
    #[error(
        "failed to register shared memory region '{name}': invalid args: offset {offset} + byte_size {byte_size} {}",
        match size { Some(s) => format!("is beyond the object's {s} bytes"), None => "is empty".to_string() }
    )]
    RegisterBounds {
        name: String,
        offset: u64,
        byte_size: u64,
        size: Option<u64>,
    },
    #[error("cannot map shared memory region '{name}': {reason}")]
    Map { name: String, reason: String },
    #[error("Unable to find shared memory region: '{name}'")]
    NotFound { name: String },
    #[error("Unable to find {kind} shared memory region: '{name}'")]
    StatusNotFound { name: String, kind: &'static str },
    #[error("The region named '{name}' is registered as {is} shared memory, not {not} shared memory")]
    WrongKind {
        name: String,
        is: &'static str,
        not: &'static str,
    },
    #[error("shared memory region '{name}' is being unregistered")]
    Closing { name: String },
    #[error("Invalid offset for shared memory region: '{name}'")]
    Offset { name: String },
    #[error(
        "Integer overflow detected: byte_size ({byte_size}) + offset ({offset}) exceeds maximum value for region '{name}'"
    )]
    Overflow { name: String, offset: u64, byte_size: u64 },
    #[error("Invalid offset + byte size for shared memory region: '{name}'")]
    Bounds { name: String },
    #[error("tensor '{tensor}': {reason}")]
    Parameter { tensor: String, reason: String },
    #[error(
        "shared memory region '{name}': its object was truncated to {size} bytes after registration, below the {needed} bytes registered; unregister and register it again"
    )]
    Truncated { name: String, size: u64, needed: u64 },
    #[error(
        "shared memory region '{name}' was truncated by its owner while in use; what this request read or wrote there is lost; unregister and register it again"
    )]
    Faulted { name: String },
    #[error(
        "shared memory size specified with the request for output '{output}' ({have} bytes) should be at least {need} bytes to hold the results"
    )]
    OutputTooSmall { output: String, have: usize, need: usize },
    #[error("CUDA shared memory is not available: {0}")]
    Cuda(String),
}

impl ShmError {
    pub fn code(&self) -> Code {
        use ShmError::*;
        match self {
            Disabled | Cuda(_) => Code::Unimplemented,
            Exists { .. } => Code::AlreadyExists,
            TooMany { .. } => Code::ResourceExhausted,
            NotFound { .. } | StatusNotFound { .. } | WrongKind { .. } | Closing { .. } => Code::NotFound,
            Map { .. } | Faulted { .. } | OutputTooSmall { .. } => Code::Internal,
            BadKey { .. }
            | NoName
            | Open { .. }
            | Refused { .. }
            | RegisterBounds { .. }
            | Offset { .. }
            | Overflow { .. }
            | Bounds { .. }
            | Parameter { .. }
            | Truncated { .. } => Code::InvalidArgument,
        }
    }
}

/// A tensor's place in a region, as its parameters give it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorRef {
    pub region: String,
    pub offset: u64,
    pub byte_size: u64,
}

/// Reads the extension's parameters of tensor `tensor`: `None` when it names no region.
pub fn tensor_ref(tensor: &str, params: &Parameters) -> Result<Option<TensorRef>, ShmError> {
    let get = |key: &str| params.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    let bad = |reason: String| ShmError::Parameter {
        tensor: tensor.into(),
        reason,
    };
    let count = |key: &str| -> Result<Option<u64>, ShmError> {
        match get(key) {
            None => Ok(None),
            Some(ParamValue::Int(v)) if *v >= 0 => Ok(Some(*v as u64)),
            Some(ParamValue::Uint(v)) => Ok(Some(*v)),
            Some(other) => Err(bad(format!(
                "'{key}' must be a non-negative int64_param, got {other:?}"
            ))),
        }
    };
    let byte_size = count(BYTE_SIZE)?;
    let offset = count(OFFSET)?;
    let region = match get(REGION) {
        None => {
            if byte_size.is_some() || offset.is_some() {
                return Err(bad(format!(
                    "'{BYTE_SIZE}' and '{OFFSET}' must be specified along with '{REGION}'"
                )));
            }
            return Ok(None);
        }
        Some(ParamValue::String(s)) => s.clone(),
        Some(other) => return Err(bad(format!("'{REGION}' must be a string_param, got {other:?}"))),
    };
    let byte_size = byte_size.ok_or_else(|| bad(format!("'{BYTE_SIZE}' must be specified along with '{REGION}'")))?;
    Ok(Some(TensorRef {
        region,
        offset: offset.unwrap_or(0),
        byte_size,
    }))
}

/// A registered system region as status reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionStatus {
    pub name: String,
    pub key: String,
    pub offset: u64,
    pub byte_size: u64,
}

/// A registered CUDA region as status reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaRegionStatus {
    pub name: String,
    pub device_id: i64,
    pub byte_size: u64,
}

fn kind_name(cuda: bool) -> &'static str {
    if cuda { "cuda" } else { "system" }
}

/// The server's registered regions.
#[derive(Debug)]
pub struct SharedMemory {
    policy: Policy,
    regions: parking_lot::Mutex<BTreeMap<String, Arc<Region>>>,
}

/// What one request holds of shared memory: a use per input region (checked after the run) and the
/// slot of each output placed in one.
#[derive(Debug, Default)]
pub struct Bound {
    inputs: Vec<Use>,
    outputs: Vec<(String, OutputSlot)>,
}

impl Bound {
    /// Fails if a region an input was read from faulted meanwhile (its bytes may have been zeros).
    pub fn check_inputs(&self) -> Result<(), ShmError> {
        self.inputs.iter().try_for_each(Use::check)
    }

    /// The slot output `name` is written to, if it is placed in shared memory.
    pub fn output(&self, name: &str) -> Option<&OutputSlot> {
        self.outputs.iter().find(|(n, _)| n == name).map(|(_, s)| s)
    }

    pub fn has_outputs(&self) -> bool {
        !self.outputs.is_empty()
    }
}

impl SharedMemory {
    pub fn new(policy: Policy) -> SharedMemory {
        SharedMemory {
            policy,
            regions: parking_lot::Mutex::new(BTreeMap::new()),
        }
    }

    /// No client memory: what a server without `--allow-client-shm` has.
    pub fn disabled() -> SharedMemory {
        SharedMemory::new(Policy {
            allowed: false,
            dir: "/dev/shm".into(),
            uids: Vec::new(),
            max_regions: 0,
        })
    }

    /// Refuses every call but status without `--allow-client-shm`.
    pub fn allowed(&self) -> Result<(), ShmError> {
        if self.policy.allowed {
            Ok(())
        } else {
            Err(ShmError::Disabled)
        }
    }

    /// Registers `key`'s bytes `[offset, offset + byte_size)` as region `name`.
    pub fn register(&self, name: &str, key: &str, offset: u64, byte_size: u64) -> Result<(), ShmError> {
        self.insert(name, || Region::open(&self.policy, name, key, offset, byte_size))
    }

    /// Registers a client's CUDA allocation by its IPC handle (the `cuda` build; elsewhere
    /// UNIMPLEMENTED, saying why). Opening a handle is a driver call: it runs on a blocking thread.
    pub async fn register_cuda(
        self: Arc<Self>,
        name: String,
        raw_handle: Vec<u8>,
        device_id: i64,
        byte_size: u64,
    ) -> Result<(), ShmError> {
        tokio::task::spawn_blocking(move || self.register_cuda_now(&name, &raw_handle, device_id, byte_size))
            .await
            .unwrap_or_else(|e| Err(ShmError::Cuda(format!("the registering thread failed: {e}"))))
    }

    fn register_cuda_now(&self, name: &str, raw_handle: &[u8], device_id: i64, byte_size: u64) -> Result<(), ShmError> {
        #[cfg(feature = "cuda")]
        return self.insert(name, || Region::open_cuda(name, raw_handle, device_id, byte_size));
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (raw_handle, device_id, byte_size);
            self.allowed()?;
            Err(ShmError::Cuda(format!(
                "cannot register '{name}': this server is built without the `cuda` feature; use system shared memory"
            )))
        }
    }

    fn insert(&self, name: &str, open: impl FnOnce() -> Result<Region, ShmError>) -> Result<(), ShmError> {
        self.allowed()?;
        if name.is_empty() {
            return Err(ShmError::NoName);
        }
        let mut regions = self.regions.lock();
        if regions.contains_key(name) {
            return Err(ShmError::Exists { name: name.into() });
        }
        if regions.len() >= self.policy.max_regions {
            return Err(ShmError::TooMany {
                max: self.policy.max_regions,
            });
        }
        regions.insert(name.into(), Arc::new(open()?));
        Ok(())
    }

    /// The regions of one kind registered (`""`: all of them), through `status`.
    fn listed<T>(&self, name: &str, cuda: bool, status: impl Fn(&Region) -> Option<T>) -> Result<Vec<T>, ShmError> {
        let regions = self.regions.lock();
        if name.is_empty() {
            return Ok(regions.values().filter_map(|r| status(r)).collect());
        }
        let region = regions.get(name).ok_or_else(|| ShmError::StatusNotFound {
            name: name.into(),
            kind: kind_name(cuda),
        })?;
        status(region).map(|s| vec![s]).ok_or_else(|| ShmError::WrongKind {
            name: name.into(),
            is: kind_name(!cuda),
            not: kind_name(cuda),
        })
    }

    /// The system regions registered (`""`: all of them). Without `--allow-client-shm` there are none.
    pub fn status(&self, name: &str) -> Result<Vec<RegionStatus>, ShmError> {
        self.listed(name, false, |r| match &r.kind {
            Kind::System { key, offset } => Some(RegionStatus {
                name: r.name.clone(),
                key: key.clone(),
                offset: *offset,
                byte_size: r.byte_size,
            }),
            Kind::Cuda { .. } => None,
        })
    }

    /// The CUDA regions registered (`""`: all of them).
    pub fn cuda_status(&self, name: &str) -> Result<Vec<CudaRegionStatus>, ShmError> {
        self.listed(name, true, |r| match &r.kind {
            Kind::Cuda { device_id } => Some(CudaRegionStatus {
                name: r.name.clone(),
                device_id: *device_id,
                byte_size: r.byte_size,
            }),
            Kind::System { .. } => None,
        })
    }

    /// Unregisters system region `name` (`""`: every system region): new requests can no longer
    /// use it at once, and the call returns once the requests using it are done (or after
    /// [`UNREGISTER_WAIT`], leaving the region to be released by the last of them). An unknown name
    /// is not an error (Triton).
    pub async fn unregister(&self, name: &str) -> Result<(), ShmError> {
        self.unregister_kind(name, false).await
    }

    /// Unregisters CUDA region `name` (`""`: every CUDA region), as [`SharedMemory::unregister`].
    pub async fn unregister_cuda(&self, name: &str) -> Result<(), ShmError> {
        self.unregister_kind(name, true).await
    }

    async fn unregister_kind(&self, name: &str, cuda: bool) -> Result<(), ShmError> {
        self.allowed()?;
        let closing: Vec<Arc<Region>> = {
            let regions = self.regions.lock();
            let picked: Vec<Arc<Region>> = if name.is_empty() {
                regions.values().filter(|r| r.is_cuda() == cuda).cloned().collect()
            } else {
                regions
                    .get(name)
                    .filter(|r| r.is_cuda() == cuda)
                    .cloned()
                    .into_iter()
                    .collect()
            };
            for r in &picked {
                r.closing.store(true, Ordering::Release);
            }
            picked
        };
        let waits = closing.iter().map(|r| async move {
            let idle = async {
                loop {
                    let notified = r.idle.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if r.users() == 0 {
                        return;
                    }
                    notified.await;
                }
            };
            if tokio::time::timeout(UNREGISTER_WAIT, idle).await.is_err() {
                tracing::warn!(
                    region = %r.name,
                    in_use = r.users(),
                    "unregistered a shared memory region still in use; it is released when its requests end"
                );
            }
        });
        futures_util::future::join_all(waits).await;
        let mut regions = self.regions.lock();
        for r in closing {
            if regions.get(&r.name).is_some_and(|held| Arc::ptr_eq(held, &r)) {
                regions.remove(&r.name);
            }
        }
        Ok(())
    }

    fn find(&self, name: &str) -> Result<Arc<Region>, ShmError> {
        self.allowed()?;
        let regions = self.regions.lock();
        let region = regions
            .get(name)
            .ok_or_else(|| ShmError::NotFound { name: name.into() })?;
        if region.closing.load(Ordering::Acquire) {
            return Err(ShmError::Closing { name: name.into() });
        }
        Ok(region.clone())
    }

    /// An input's bytes, read from the client's region without a copy.
    pub fn bind_input(&self, at: &TensorRef, bound: &mut Bound) -> Result<Bytes, ShmError> {
        let region = self.find(&at.region)?;
        let (bytes, check) = region::input(&region, at.offset, at.byte_size)?;
        bound.inputs.push(check);
        Ok(bytes)
    }

    /// Places requested output `output` in a region.
    pub fn bind_output(&self, output: &str, at: &TensorRef, bound: &mut Bound) -> Result<(), ShmError> {
        let region = self.find(&at.region)?;
        let slot = region::output(&region, at.offset, at.byte_size)?;
        bound.outputs.push((output.into(), slot));
        Ok(())
    }
}

#[cfg(test)]
mod tests;

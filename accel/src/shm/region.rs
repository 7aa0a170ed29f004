//! One registered region: a system one (the client's object opened under the key rules, mapped
//! once, guarded against truncation by `guard`) or, in the `cuda` build, a CUDA IPC allocation
//! (`cuda`); either counted while requests use it.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use memmap2::{MmapOptions, MmapRaw};

use super::ShmError;
use super::guard::{self, Guarded};

/// Triton's reserved key prefix (its Python backend's own regions).
const RESERVED_PREFIX: &str = "triton_python_backend_shm_region_";

/// Who may register what.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `--allow-client-shm`.
    pub allowed: bool,
    /// `--shm-dir`: every key is one file name in it.
    pub dir: std::path::PathBuf,
    /// Owners whose objects may be registered besides the server's own user.
    pub uids: Vec<u32>,
    /// Regions registered at once.
    pub max_regions: usize,
}

#[derive(Debug)]
pub(super) struct Region {
    pub name: String,
    pub kind: Kind,
    pub byte_size: u64,
    memory: Memory,
    users: AtomicUsize,
    pub closing: AtomicBool,
    pub idle: tokio::sync::Notify,
    /// Requests that name one output region write it one at a time (perf_analyzer shares one output
    /// region among all its requests).
    writing: parking_lot::Mutex<()>,
}

/// What kind of memory a region is, as status reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(super) enum Kind {
    System { key: String, offset: u64 },
    Cuda { device_id: i64 },
}

#[derive(Debug)]
enum Memory {
    System(Mapped),
    #[cfg(feature = "cuda")]
    Cuda(super::cuda::DeviceMemory),
}

/// A client's object, mapped.
#[derive(Debug)]
struct Mapped {
    file: File,
    /// The object's length registration needs (offset + byte_size).
    needed: u64,
    // Fields drop in order: the range leaves the fault handler's table before it is unmapped, so
    // the handler never mistakes a later mapping at the same addresses for this one.
    guard: Guarded,
    map: MmapRaw,
}

/// The file name a key stands for: leading slashes dropped (as shm_open does), then exactly one
/// path component.
fn file_name<'k>(name: &str, key: &'k str) -> Result<&'k str, ShmError> {
    let bad = |reason: &str| ShmError::BadKey {
        name: name.into(),
        key: key.into(),
        reason: reason.into(),
    };
    let file = key.trim_start_matches('/');
    if file.is_empty() {
        return Err(bad("it names no file"));
    }
    if file.contains('/') || file == "." || file == ".." || file.contains('\0') {
        return Err(bad(
            "it must name one file in the shared-memory directory (no '/', '.' or '..')",
        ));
    }
    if file.starts_with(RESERVED_PREFIX) {
        return Err(bad("the key contains a reserved prefix"));
    }
    Ok(file)
}

impl Region {
    /// Opens and maps `key`'s object for bytes `[offset, offset + byte_size)`.
    pub(super) fn open(
        policy: &Policy,
        name: &str,
        key: &str,
        offset: u64,
        byte_size: u64,
    ) -> Result<Region, ShmError> {
        let file_name = file_name(name, key)?;
        if byte_size == 0 {
            return Err(ShmError::RegisterBounds {
                name: name.into(),
                offset,
                byte_size,
                size: None,
            });
        }
        let path = policy.dir.join(file_name);
        let refused = |reason: String| ShmError::Refused {
            name: name.into(),
            key: key.into(),
            reason,
        };
        // No symlink at the last component, and no blocking open of a FIFO; the type is checked next.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => refused("is a symbolic link".into()),
                Some(libc::EISDIR) => refused("is not a regular file".into()),
                _ => ShmError::Open {
                    key: key.into(),
                    reason: e.to_string(),
                },
            })?;
        let meta = file.metadata().map_err(|e| ShmError::Open {
            key: key.into(),
            reason: e.to_string(),
        })?;
        if !meta.file_type().is_file() {
            return Err(refused("is not a regular file".into()));
        }
        check_owner(&policy.uids, meta.uid()).map_err(refused)?;
        let end = offset.checked_add(byte_size);
        if end.is_none_or(|end| end > meta.len()) {
            return Err(ShmError::RegisterBounds {
                name: name.into(),
                offset,
                byte_size,
                size: Some(meta.len()),
            });
        }
        let len = usize::try_from(byte_size).map_err(|_| ShmError::RegisterBounds {
            name: name.into(),
            offset,
            byte_size,
            size: Some(meta.len()),
        })?;
        let map = MmapOptions::new()
            .offset(offset)
            .len(len)
            .map_raw(&file)
            .map_err(|e| ShmError::Map {
                name: name.into(),
                reason: e.to_string(),
            })?;
        // The mapping begins at the page holding `offset`.
        let lead = (offset % guard::page_size() as u64) as usize;
        let start = map.as_ptr() as usize - lead;
        let guard = Guarded::new(start, len + lead).ok_or(ShmError::TooMany { max: guard::SLOTS })?;
        tracing::debug!(name, key, offset, byte_size, "shared-memory region registered");
        let memory = Memory::System(Mapped {
            file,
            needed: offset + byte_size,
            guard,
            map,
        });
        Ok(Region::new(
            name,
            Kind::System {
                key: key.into(),
                offset,
            },
            byte_size,
            memory,
        ))
    }

    /// Opens a CUDA IPC handle for `byte_size` bytes on GPU `device_id`.
    #[cfg(feature = "cuda")]
    pub(super) fn open_cuda(name: &str, raw_handle: &[u8], device_id: i64, byte_size: u64) -> Result<Region, ShmError> {
        let memory = super::cuda::DeviceMemory::open(name, raw_handle, device_id, byte_size)?;
        tracing::debug!(name, device_id, byte_size, "CUDA shared-memory region registered");
        Ok(Region::new(
            name,
            Kind::Cuda { device_id },
            byte_size,
            Memory::Cuda(memory),
        ))
    }

    fn new(name: &str, kind: Kind, byte_size: u64, memory: Memory) -> Region {
        Region {
            name: name.into(),
            kind,
            byte_size,
            memory,
            users: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            idle: tokio::sync::Notify::new(),
            writing: parking_lot::Mutex::new(()),
        }
    }

    pub(super) fn is_cuda(&self) -> bool {
        matches!(self.kind, Kind::Cuda { .. })
    }

    /// Faults caught in the region's pages (only mapped system memory can fault).
    fn faults(&self) -> u64 {
        match &self.memory {
            Memory::System(m) => m.guard.faults(),
            #[cfg(feature = "cuda")]
            Memory::Cuda(_) => 0,
        }
    }

    pub(super) fn users(&self) -> usize {
        self.users.load(Ordering::Acquire)
    }

    /// Whether the region can still be used: no fault caught in it, and its object still as long
    /// as registered (a truncation seen here fails cleanly, before anything touches the pages).
    fn check(&self) -> Result<(), ShmError> {
        if self.faults() > 0 {
            return Err(ShmError::Faulted {
                name: self.name.clone(),
            });
        }
        #[allow(irrefutable_let_patterns)]
        if let Memory::System(m) = &self.memory {
            let size = m.file.metadata().map(|m| m.len()).unwrap_or(0);
            if size < m.needed {
                return Err(ShmError::Truncated {
                    name: self.name.clone(),
                    size,
                    needed: m.needed,
                });
            }
        }
        Ok(())
    }

    /// Bytes `[offset, offset + byte_size)` of the region, checked against its bounds with
    /// Triton's rules and messages.
    fn span(&self, offset: u64, byte_size: u64) -> Result<(usize, usize), ShmError> {
        let name = || self.name.clone();
        if offset >= self.byte_size && !(offset == 0 && byte_size == 0) {
            return Err(ShmError::Offset { name: name() });
        }
        match offset.checked_add(byte_size) {
            None => Err(ShmError::Overflow {
                name: name(),
                offset,
                byte_size,
            }),
            Some(end) if end > self.byte_size => Err(ShmError::Bounds { name: name() }),
            // Both fit the mapping's length, a usize.
            Some(_) => Ok((offset as usize, byte_size as usize)),
        }
    }
}

fn check_owner(allowed: &[u32], owner: u32) -> Result<(), String> {
    // SAFETY: geteuid cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    if owner == me || allowed.contains(&owner) {
        Ok(())
    } else {
        Err(format!(
            "is owned by uid {owner}; only objects of uid {me} (this server) or of a --shm-allowed-uid may be registered"
        ))
    }
}

/// A request's use of a region: the region stays mapped, and unregistering it waits, while any exists.
#[derive(Debug)]
pub struct Use {
    region: Arc<Region>,
}

impl Use {
    fn new(region: &Arc<Region>) -> Use {
        region.users.fetch_add(1, Ordering::AcqRel);
        Use { region: region.clone() }
    }

    /// Fails if a fault was caught in the region: what this request read or wrote there may be zeros.
    pub fn check(&self) -> Result<(), ShmError> {
        if self.region.faults() > 0 {
            return Err(ShmError::Faulted {
                name: self.region.name.clone(),
            });
        }
        Ok(())
    }
}

impl Drop for Use {
    fn drop(&mut self) {
        if self.region.users.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.region.idle.notify_waiters();
        }
    }
}

/// Input bytes that are the region's own pages, kept mapped by the use inside.
struct View {
    _use: Use,
    ptr: *const u8,
    len: usize,
}

// SAFETY: the pointer is into a mapping that lives as long as the `Use` it travels with; the bytes are
// plain data, read the same from any thread.
unsafe impl Send for View {}
// SAFETY: as above; nothing in a `View` is written through it.
unsafe impl Sync for View {}

impl AsRef<[u8]> for View {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr + len` lies in the mapping (checked by `span`), which `_use` keeps alive.
        // The client may change the bytes meanwhile (that is the protocol: they are its memory), and
        // a truncation turns them into zeros through `guard`: they are always readable.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Binds an input: its bytes as a `Bytes` over the mapping (no copy; CUDA memory is copied to the
/// host), and a use of its own for the request to check afterwards.
pub(super) fn input(region: &Arc<Region>, offset: u64, byte_size: u64) -> Result<(Bytes, Use), ShmError> {
    let (at, len) = region.span(offset, byte_size)?;
    region.check()?;
    let bytes = match &region.memory {
        Memory::System(m) => {
            // SAFETY: `at + len <= byte_size`, the mapping's length.
            let ptr = unsafe { m.map.as_ptr().add(at) };
            Bytes::from_owner(View {
                _use: Use::new(region),
                ptr,
                len,
            })
        }
        #[cfg(feature = "cuda")]
        Memory::Cuda(d) => Bytes::from(d.read(at, len)?),
    };
    Ok((bytes, Use::new(region)))
}

/// Where a requested output is written.
#[derive(Debug)]
pub struct OutputSlot {
    use_: Use,
    at: usize,
    byte_size: usize,
}

pub(super) fn output(region: &Arc<Region>, offset: u64, byte_size: u64) -> Result<OutputSlot, ShmError> {
    let (at, byte_size) = region.span(offset, byte_size)?;
    region.check()?;
    Ok(OutputSlot {
        use_: Use::new(region),
        at,
        byte_size,
    })
}

impl OutputSlot {
    /// Bytes the slot holds.
    pub fn byte_size(&self) -> usize {
        self.byte_size
    }

    /// Writes output `tensor`'s bytes at the start of the slot.
    pub fn write(&self, tensor: &str, data: &[u8]) -> Result<(), ShmError> {
        if data.len() > self.byte_size {
            return Err(ShmError::OutputTooSmall {
                output: tensor.into(),
                have: self.byte_size,
                need: data.len(),
            });
        }
        let region = &self.use_.region;
        region.check()?;
        {
            let _one_at_a_time = region.writing.lock();
            match &region.memory {
                // SAFETY: `at + data.len() <= at + byte_size`, inside the mapping, which the use keeps
                // alive; a truncation meanwhile turns the pages into private zero pages (`guard`), so
                // the write cannot fault; writers in this process are serialised by the lock.
                Memory::System(m) => unsafe {
                    std::ptr::copy_nonoverlapping(data.as_ptr(), m.map.as_mut_ptr().add(self.at), data.len());
                },
                #[cfg(feature = "cuda")]
                Memory::Cuda(d) => d.write(self.at, data)?,
            }
        }
        self.use_.check()
    }
}

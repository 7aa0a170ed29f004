//! CUDA shared memory (the `cuda` build): a client's device allocation, exported with
//! `cudaIpcGetMemHandle` and registered by its 64-byte handle, opened in this process with
//! `cuIpcOpenMemHandle` on the GPU the client names, its size checked against the allocation
//! (`cuMemGetAddressRange`), closed when the region goes. Inputs are copied from the device to the
//! host for the batch and outputs from the host into the region (`cuMemcpyDtoH` / `HtoD`): correct on
//! any model, though not yet the device-to-device path a GPU model could take (the batch kernel
//! gathers host segments only). Every call is checked; a machine without a driver answers why.
#![allow(unsafe_code)]

use std::sync::Arc;

use cudarc::driver::{CudaContext, sys};

use super::ShmError;

/// The size of a `cudaIpcMemHandle_t`.
pub(super) const HANDLE_BYTES: usize = 64;

/// An opened IPC allocation.
#[derive(Debug)]
pub(super) struct DeviceMemory {
    ctx: Arc<CudaContext>,
    ptr: sys::CUdeviceptr,
    len: usize,
}

fn driver(what: &str, e: impl std::fmt::Display) -> ShmError {
    ShmError::Cuda(format!("{what}: {e}"))
}

impl DeviceMemory {
    /// Opens `raw_handle` on GPU `device_id` and checks that `byte_size` bytes lie in it.
    pub(super) fn open(
        name: &str,
        raw_handle: &[u8],
        device_id: i64,
        byte_size: u64,
    ) -> Result<DeviceMemory, ShmError> {
        let bad = |reason: String| ShmError::Parameter {
            tensor: name.into(),
            reason,
        };
        let bytes: [u8; HANDLE_BYTES] = raw_handle.try_into().map_err(|_| {
            bad(format!(
                "raw_handle has {} bytes; a cudaIpcMemHandle_t has {HANDLE_BYTES}",
                raw_handle.len()
            ))
        })?;
        let ordinal = usize::try_from(device_id).map_err(|_| bad(format!("device_id {device_id} is not a GPU")))?;
        let len = usize::try_from(byte_size).map_err(|_| bad(format!("byte_size {byte_size} is too large")))?;
        if len == 0 {
            return Err(bad("byte_size must be at least 1".into()));
        }
        let ctx = accel_kernels::cuda::probe(ordinal).map_err(|e| driver("no usable GPU", e))?;
        ctx.bind_to_thread()
            .map_err(|e| driver("binding the GPU's context", e))?;
        let mut handle = sys::CUipcMemHandle_st {
            reserved: [0; HANDLE_BYTES],
        };
        for (d, s) in handle.reserved.iter_mut().zip(bytes) {
            *d = s as std::ffi::c_char;
        }
        let mut ptr: sys::CUdeviceptr = 0;
        // SAFETY: `ptr` is written by the call; the handle is a value; the flag is CUDA's.
        unsafe {
            sys::cuIpcOpenMemHandle_v2(
                &mut ptr,
                handle,
                sys::CUipcMem_flags::CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS as u32,
            )
        }
        .result()
        .map_err(|e| driver("failed to register shared memory region: cuIpcOpenMemHandle", e))?;
        let memory = DeviceMemory { ctx, ptr, len };
        let (mut base, mut size): (sys::CUdeviceptr, usize) = (0, 0);
        // SAFETY: both outputs are written by the call for an address the driver just mapped.
        unsafe { sys::cuMemGetAddressRange_v2(&mut base, &mut size, ptr) }
            .result()
            .map_err(|e| driver("cuMemGetAddressRange", e))?;
        let room = size.saturating_sub((ptr - base) as usize);
        if len > room {
            return Err(ShmError::RegisterBounds {
                name: name.into(),
                offset: 0,
                byte_size,
                size: Some(room as u64),
            });
        }
        Ok(memory)
    }

    /// Bytes `[at, at + len)` copied to the host (`at + len` is within the region: `span` checked).
    pub(super) fn read(&self, at: usize, len: usize) -> Result<Vec<u8>, ShmError> {
        let mut out = vec![0u8; len];
        if len == 0 {
            return Ok(out);
        }
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver("binding the GPU's context", e))?;
        debug_assert!(at + len <= self.len);
        // SAFETY: `out` holds `len` bytes; the source range lies in the opened allocation.
        unsafe { sys::cuMemcpyDtoH_v2(out.as_mut_ptr().cast(), self.ptr + at as u64, len) }
            .result()
            .map_err(|e| driver("reading CUDA shared memory", e))?;
        Ok(out)
    }

    /// Copies `data` to `[at, at + data.len())` (within the region: the caller checked).
    pub(super) fn write(&self, at: usize, data: &[u8]) -> Result<(), ShmError> {
        if data.is_empty() {
            return Ok(());
        }
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver("binding the GPU's context", e))?;
        debug_assert!(at + data.len() <= self.len);
        // SAFETY: the destination range lies in the opened allocation; `data` is `data.len()` bytes.
        unsafe { sys::cuMemcpyHtoD_v2(self.ptr + at as u64, data.as_ptr().cast(), data.len()) }
            .result()
            .map_err(|e| driver("writing CUDA shared memory", e))
    }
}

impl Drop for DeviceMemory {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: `ptr` came from cuIpcOpenMemHandle and is closed once.
            let _ = unsafe { sys::cuIpcCloseMemHandle(self.ptr) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_handles_and_missing_gpus_are_errors_not_panics() {
        let e = DeviceMemory::open("r", &[0; 10], 0, 64).unwrap_err();
        assert!(e.to_string().contains("64"), "{e}");
        let e = DeviceMemory::open("r", &[0; HANDLE_BYTES], -1, 64).unwrap_err();
        assert!(e.to_string().contains("not a GPU"), "{e}");
        // A zero handle on a machine with or without a GPU: the driver refuses it, or there is none.
        let e = DeviceMemory::open("r", &[0; HANDLE_BYTES], 0, 64).unwrap_err();
        assert!(matches!(e, ShmError::Cuda(_)), "{e}");
    }
}

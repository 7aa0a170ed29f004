//! A batch's inputs into device tensors on a GPU. The requests' rows are written into a pinned staging
//! buffer, copied to the device on a copy stream of their own (so the copy engine works while the
//! model's stream computes), and packed by the gather kernel of accel-kernels into the batch tensor
//! on the model's stream: one host copy, one DMA, no pageable staging inside the driver. Datatypes
//! candle holds as they arrive (FP32, FP16, BF16, INT64) take this path; the others are widened on the
//! host by `convert` first.

#![allow(unsafe_code)]

use std::sync::Arc;

use accel_kernels::batch::Cast;
use accel_kernels::cuda::{BatchKernels, Upload};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{Device, Storage, Tensor};
use cudarc::driver::CudaSlice;
use half::{bf16, f16};

use super::super::{BackendError, BatchInput};
use crate::core::DataType;

/// One instance's staging buffer and kernels, on its model's device.
pub(super) struct GpuInputs {
    device: CudaDevice,
    kernels: Arc<BatchKernels>,
    upload: Upload,
}

fn gpu_error(e: impl std::fmt::Display) -> BackendError {
    BackendError::Execution(format!("GPU: {e}"))
}

impl GpuInputs {
    /// `None` on the CPU.
    pub(super) fn new(device: &Device) -> Result<Option<GpuInputs>, BackendError> {
        let Device::Cuda(device) = device else {
            return Ok(None);
        };
        let ctx = device.cuda_stream().context().clone();
        let kernels = BatchKernels::for_context(&ctx).map_err(gpu_error)?;
        let upload = Upload::new(&ctx, 1 << 20).map_err(gpu_error)?;
        Ok(Some(GpuInputs {
            device: device.clone(),
            kernels,
            upload,
        }))
    }

    /// The input as a device tensor, or `None` when its datatype goes the host way.
    pub(super) fn upload(&mut self, input: &BatchInput) -> Result<Option<Tensor>, BackendError> {
        let count: usize = input.shape.iter().product();
        match input.datatype {
            DataType::F32 => self.gather::<f32>(input, count, Cast::Copy4),
            DataType::F16 => self.gather::<f16>(input, count, Cast::Copy2),
            DataType::Bf16 => self.gather::<bf16>(input, count, Cast::Copy2),
            DataType::I64 => self.gather::<i64>(input, count, Cast::Copy8),
            _ => Ok(None),
        }
    }

    fn gather<T: CudaDType + cudarc::driver::DeviceRepr>(
        &mut self,
        input: &BatchInput,
        count: usize,
        cast: Cast,
    ) -> Result<Option<Tensor>, BackendError> {
        if input.byte_len() != count * size_of::<T>() {
            return Err(BackendError::InvalidInput(format!(
                "{} bytes of {} data do not make a tensor of shape {:?}",
                input.byte_len(),
                input.datatype.wire_name(),
                input.shape
            )));
        }
        let stream = self.device.cuda_stream();
        // SAFETY: the gather below writes every element (the rows' lengths add up to `count`).
        let mut dst: CudaSlice<T> = unsafe { stream.alloc::<T>(count) }.map_err(gpu_error)?;
        let rows: Vec<&[u8]> = input.parts.iter().map(|b| b.as_ref()).collect();
        self.upload
            .gather_rows(&self.kernels, &stream, cast, &rows, &mut dst)
            .map_err(gpu_error)?;
        let storage = CudaStorage::wrap_cuda_slice(dst, self.device.clone());
        Ok(Some(Tensor::from_storage(
            Storage::Cuda(storage),
            input.shape.as_slice(),
            BackpropOp::none(),
            false,
        )))
    }
}

/// A depthwise convolution on the GPU through accel-kernels' NVRTC kernel (one thread per output),
/// where candle would run one convolution per channel.
struct DepthwiseOp(accel_kernels::conv::Depthwise);

fn cuda_error(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Cuda(e.to_string().into())
}

impl candle_core::CustomOp2 for DepthwiseOp {
    fn name(&self) -> &'static str {
        "accel-depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        candle_core::bail!("accel-depthwise-conv2d runs on the GPU only (the CPU has its own kernel)")
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        x_layout: &candle_core::Layout,
        w: &CudaStorage,
        w_layout: &candle_core::Layout,
    ) -> candle_core::Result<(CudaStorage, candle_core::Shape)> {
        let shape = &self.0;
        let contiguous = |l: &candle_core::Layout| {
            l.contiguous_offsets()
                .ok_or_else(|| cuda_error("accel-depthwise-conv2d needs contiguous tensors"))
        };
        let ((x0, x1), (w0, w1)) = (contiguous(x_layout)?, contiguous(w_layout)?);
        let xs = x.as_cuda_slice::<f32>()?.slice(x0..x1);
        let ws = w.as_cuda_slice::<f32>()?.slice(w0..w1);
        let device = x.device.clone();
        let stream = device.cuda_stream();
        let kernels = BatchKernels::for_context(stream.context()).map_err(cuda_error)?;
        let [oh, ow] = shape.output_size().map_err(cuda_error)?;
        let oc = shape.output_channels();
        // SAFETY: the kernel writes every output element.
        let mut y = unsafe { stream.alloc::<f32>(shape.batch * oc * oh * ow) }.map_err(cuda_error)?;
        kernels
            .depthwise_conv2d(&stream, shape, &xs, &ws, None, &mut y)
            .map_err(cuda_error)?;
        Ok((
            CudaStorage::wrap_cuda_slice(y, device),
            candle_core::Shape::from((shape.batch, oc, oh, ow)),
        ))
    }
}

/// `x` (NCHW, FP32, on a GPU) convolved depthwise with `w` (`[channels * multiplier, 1, kh, kw]`),
/// plus `bias` (`[1, C, 1, 1]`) when given.
pub(super) fn depthwise(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    shape: accel_kernels::conv::Depthwise,
) -> candle_core::Result<Tensor> {
    let y = x.apply_op2_no_bwd(&w.contiguous()?, &DepthwiseOp(shape))?;
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

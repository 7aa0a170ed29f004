//! The GPU twins of [`crate::batch`]: CUDA C (`batch.cu`) compiled at run time with NVRTC through
//! cudarc (no nvcc, no CUDA headers at build time), once per device, and launched on the caller's
//! stream. [`Upload`] is the host side of batch assembly: requests' rows written into pinned
//! (page-locked) host memory, copied to the device on a stream of its own (the copy engine works while
//! the compute stream runs the previous batch), then gathered into one contiguous batch tensor, with
//! an FP32 -> FP16/BF16 conversion on the way when the model wants one.
//!
//! cudarc opens libcuda and libnvrtc with dlopen and panics when they are missing; [`probe`] checks
//! for them first, so that a machine without a GPU gets an error to log, never a crash.

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, CudaView, DeviceRepr, LaunchConfig, PinnedHostSlice,
    PushKernelArg,
};
use cudarc::nvrtc::CompileOptions;

use crate::batch::{self, Cast, Segment, SegmentError};
use crate::conv::Depthwise;

/// The CUDA source: the batch kernels, then the depthwise convolution (which uses batch.cu's types).
fn source() -> String {
    [include_str!("batch.cu"), include_str!("conv.cu")].concat()
}

const DEPTHWISE: &str = "depthwise_conv2d_f32";
const BLOCK: u32 = 256;
/// Row offsets in the staging buffer are multiples of this (cache-line and widest-element aligned).
const ROW_ALIGN: usize = 256;

/// Why GPU work could not be done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CudaError {
    /// The CUDA driver library (libcuda.so.1) cannot be opened: no NVIDIA driver on this machine.
    NoDriver,
    /// NVRTC (libnvrtc.so.13) cannot be opened: put the CUDA 13 libraries on LD_LIBRARY_PATH.
    NoNvrtc,
    /// A CUDA driver call failed.
    Driver(String),
    /// NVRTC could not compile the kernels.
    Compile(String),
    /// The segments do not fit the buffers.
    Segments(SegmentError),
    /// A kernel's buffers do not match its shape.
    Shape(String),
}

impl std::fmt::Display for CudaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CudaError::NoDriver => write!(
                f,
                "the CUDA driver (libcuda.so.1) is not present: no NVIDIA driver here"
            ),
            CudaError::NoNvrtc => write!(
                f,
                "NVRTC (libnvrtc.so.13) is not present: put the CUDA 13 libraries on LD_LIBRARY_PATH"
            ),
            CudaError::Driver(e) => write!(f, "CUDA driver: {e}"),
            CudaError::Compile(e) => write!(f, "NVRTC: {e}"),
            CudaError::Segments(e) => write!(f, "{e}"),
            CudaError::Shape(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CudaError {}

impl From<cudarc::driver::DriverError> for CudaError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        CudaError::Driver(e.to_string())
    }
}

impl From<SegmentError> for CudaError {
    fn from(e: SegmentError) -> Self {
        CudaError::Segments(e)
    }
}

/// Whether the driver library can be opened (cudarc would panic on its first call otherwise).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library; no CUDA call is made.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether NVRTC can be opened.
pub fn nvrtc_present() -> bool {
    // SAFETY: as above.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// The context of GPU `ordinal` (after CUDA_VISIBLE_DEVICES), or why there is none. Never panics.
pub fn probe(ordinal: usize) -> Result<Arc<CudaContext>, CudaError> {
    if !driver_present() {
        return Err(CudaError::NoDriver);
    }
    let count = CudaContext::device_count()?;
    if ordinal >= count.max(0) as usize {
        return Err(CudaError::Driver(format!(
            "GPU {ordinal} does not exist: the driver sees {count} device(s)"
        )));
    }
    Ok(CudaContext::new(ordinal)?)
}

/// `batch.cu` compiled by NVRTC for compute capability `major`.`minor` (needs libnvrtc, not a GPU).
pub fn compile_ptx(major: i32, minor: i32) -> Result<cudarc::nvrtc::Ptx, CudaError> {
    if !nvrtc_present() {
        return Err(CudaError::NoNvrtc);
    }
    let options = CompileOptions {
        options: vec![format!("--gpu-architecture=compute_{major}{minor}")],
        name: Some("accel_batch.cu".into()),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(source(), options).map_err(|e| CudaError::Compile(e.to_string()))
}

/// The batch kernels and the depthwise convolution, compiled for one device.
#[derive(Debug)]
pub struct BatchKernels {
    functions: HashMap<Cast, CudaFunction>,
    depthwise: CudaFunction,
}

impl BatchKernels {
    /// The kernels for `ctx`'s device: compiled with NVRTC for its compute capability on first use,
    /// then cached for the life of the process.
    pub fn for_context(ctx: &Arc<CudaContext>) -> Result<Arc<BatchKernels>, CudaError> {
        static CACHE: OnceLock<Mutex<HashMap<usize, Arc<BatchKernels>>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = cache.get(&ctx.ordinal()) {
            return Ok(k.clone());
        }
        let kernels = Arc::new(Self::compile(ctx)?);
        cache.insert(ctx.ordinal(), kernels.clone());
        Ok(kernels)
    }

    fn compile(ctx: &Arc<CudaContext>) -> Result<BatchKernels, CudaError> {
        if !nvrtc_present() {
            return Err(CudaError::NoNvrtc);
        }
        use cudarc::driver::sys::CUdevice_attribute as A;
        let major = ctx.attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = ctx.attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        let module = ctx.load_module(compile_ptx(major, minor)?)?;
        let functions = Cast::ALL
            .iter()
            .map(|&c| Ok((c, module.load_function(c.kernel_name())?)))
            .collect::<Result<HashMap<_, _>, CudaError>>()?;
        let depthwise = module.load_function(DEPTHWISE)?;
        Ok(BatchKernels { functions, depthwise })
    }

    /// Enqueues on `stream` the copy of every segment from `src` to `dst` (buffers read as `cast`'s
    /// source and destination elements, whatever their Rust element type): [`batch::copy_segments`]
    /// on the GPU.
    pub fn copy_segments<S: DeviceRepr, D: DeviceRepr>(
        &self,
        stream: &Arc<CudaStream>,
        cast: Cast,
        src: &CudaSlice<S>,
        dst: &mut CudaSlice<D>,
        segments: &[Segment],
    ) -> Result<(), CudaError> {
        let (ss, ds) = (cast.src_size(), cast.dst_size());
        let (src_bytes, dst_bytes) = (src.len() * size_of::<S>(), dst.len() * size_of::<D>());
        if !src_bytes.is_multiple_of(ss) || !dst_bytes.is_multiple_of(ds) {
            return Err(SegmentError::Misaligned.into());
        }
        batch::check(segments, src_bytes / ss, dst_bytes / ds)?;
        let longest = segments.iter().map(|s| s.len).max().unwrap_or(0);
        if longest == 0 {
            return Ok(());
        }
        let table: Vec<u64> = segments
            .iter()
            .flat_map(|s| [s.src as u64, s.dst as u64, s.len as u64])
            .collect();
        let table = stream.clone_htod(&table)?;
        let n = segments.len() as u32;
        let config = LaunchConfig {
            grid_dim: (longest.div_ceil(BLOCK as usize).min(1024) as u32, n.min(65_535), 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let function = &self.functions[&cast];
        let mut launch = stream.launch_builder(function);
        launch.arg(src).arg(dst).arg(&table).arg(&n);
        // SAFETY: the kernel's parameters are (const S*, D*, const u64*, u32), matching the arguments;
        // every segment was checked to lie inside `src` and `dst`, and the table has 3n entries.
        unsafe { launch.launch(config) }?;
        Ok(())
    }
}

impl BatchKernels {
    /// Enqueues on `stream` the depthwise convolution of `x` by `w` (+ `bias`) into `y`:
    /// [`crate::conv::depthwise_conv2d`] on the GPU, one thread per output element.
    #[allow(clippy::too_many_arguments)]
    pub fn depthwise_conv2d(
        &self,
        stream: &Arc<CudaStream>,
        shape: &Depthwise,
        x: &CudaView<'_, f32>,
        w: &CudaView<'_, f32>,
        bias: Option<&CudaView<'_, f32>>,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let [oh, ow] = shape.output_size().map_err(|e| CudaError::Shape(e.to_string()))?;
        let oc = shape.output_channels();
        let lengths = [
            (
                "the input",
                shape.batch * shape.channels * shape.height * shape.width,
                x.len(),
            ),
            ("the weights", oc * shape.kernel[0] * shape.kernel[1], w.len()),
            ("the bias", oc, bias.map_or(oc, |b| b.len())),
            ("the output", shape.batch * oc * oh * ow, y.len()),
        ];
        for (what, want, got) in lengths {
            if want != got {
                return Err(CudaError::Shape(format!(
                    "{what} has {got} elements where the shape needs {want}"
                )));
            }
        }
        let total = y.len();
        if total == 0 {
            return Ok(());
        }
        let u = |v: usize| u32::try_from(v).map_err(|_| CudaError::Shape(format!("{v} does not fit 32 bits")));
        let args = [
            u(shape.batch)?,
            u(shape.channels)?,
            u(shape.multiplier)?,
            u(shape.height)?,
            u(shape.width)?,
            u(oh)?,
            u(ow)?,
            u(shape.kernel[0])?,
            u(shape.kernel[1])?,
            u(shape.strides[0])?,
            u(shape.strides[1])?,
            u(shape.dilations[0])?,
            u(shape.dilations[1])?,
            u(shape.pads[0])?,
            u(shape.pads[1])?,
            u32::from(bias.is_some()),
        ];
        let config = LaunchConfig {
            grid_dim: (total.div_ceil(BLOCK as usize).min(65_535) as u32, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        // Without a bias the kernel never reads its pointer: pass the weights in its place.
        let bias = bias.unwrap_or(w);
        let mut launch = stream.launch_builder(&self.depthwise);
        launch.arg(x).arg(w).arg(bias).arg(y);
        for a in &args {
            launch.arg(a);
        }
        // SAFETY: the parameters are (const float* x3, float*, u32 x16) in this order; every buffer
        // holds exactly the elements the shape addresses (checked above), and the kernel reads inside
        // the input plane only (it skips taps that fall in the padding).
        unsafe { launch.launch(config) }?;
        Ok(())
    }
}

/// Batch assembly on the host side: a pinned staging buffer, its device copy, and the copy stream.
#[derive(Debug)]
pub struct Upload {
    ctx: Arc<CudaContext>,
    copy: Arc<CudaStream>,
    host: PinnedHostSlice<u8>,
    device: CudaSlice<u8>,
    /// Recorded after the last host-to-device copy: the staging buffer is reused only after it.
    copied: Option<CudaEvent>,
    /// Recorded after the last gather: the device copy of the staging buffer is overwritten only
    /// after the kernel that read it.
    gathered: Option<CudaEvent>,
}

impl Upload {
    pub fn new(ctx: &Arc<CudaContext>, capacity: usize) -> Result<Upload, CudaError> {
        let copy = ctx.new_stream()?;
        let capacity = capacity.max(ROW_ALIGN);
        // SAFETY: the buffer is written before any byte of it is read (see `gather_rows`).
        let host = unsafe { ctx.alloc_pinned::<u8>(capacity) }?;
        let device = copy.alloc_zeros::<u8>(capacity)?;
        Ok(Upload {
            ctx: ctx.clone(),
            copy,
            host,
            device,
            copied: None,
            gathered: None,
        })
    }

    /// Bytes the staging buffer holds now (it grows to the largest batch seen).
    pub fn capacity(&self) -> usize {
        self.host.len()
    }

    /// Writes `rows` (each a whole number of `cast`'s source elements) into pinned memory, copies
    /// them to the device on the copy stream, and enqueues on `compute` (after that copy) the gather
    /// of the rows, packed in order and converted, into `dst`. Returns without waiting for the GPU.
    pub fn gather_rows<D: DeviceRepr>(
        &mut self,
        kernels: &BatchKernels,
        compute: &Arc<CudaStream>,
        cast: Cast,
        rows: &[&[u8]],
        dst: &mut CudaSlice<D>,
    ) -> Result<(), CudaError> {
        let ss = cast.src_size();
        if rows.iter().any(|r| !r.len().is_multiple_of(ss)) {
            return Err(SegmentError::Misaligned.into());
        }
        let mut offsets = Vec::with_capacity(rows.len());
        let mut used = 0usize;
        for r in rows {
            offsets.push((used / ss, r.len() / ss));
            used = (used + r.len()).next_multiple_of(ROW_ALIGN);
        }
        if let Some(done) = self.copied.take() {
            done.synchronize()?;
        }
        // Before the device buffer is overwritten or freed (a free is ordered on the copy stream).
        if let Some(gathered) = self.gathered.take() {
            self.copy.wait(&gathered)?;
        }
        if used > self.host.len() {
            let capacity = used.next_power_of_two();
            // SAFETY: written below before the copy reads it.
            self.host = unsafe { self.ctx.alloc_pinned::<u8>(capacity) }?;
            self.device = self.copy.alloc_zeros::<u8>(capacity)?;
        }
        let host = self.host.as_mut_slice()?;
        for (r, &(offset, _)) in rows.iter().zip(&offsets) {
            host[offset * ss..offset * ss + r.len()].copy_from_slice(r);
        }
        let staged = &self.host.as_slice()?[..used];
        self.copy.memcpy_htod(staged, &mut self.device.slice_mut(..used))?;
        let copied = self.copy.record_event(None)?;
        compute.wait(&copied)?;
        self.copied = Some(copied);
        kernels.copy_segments(compute, cast, &self.device, dst, &batch::gather(&offsets))?;
        self.gathered = Some(compute.record_event(None)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! These run on a GPU and print why they are skipped elsewhere; the CPU definitions they compare
    //! with are tested in `batch` on every machine.

    use super::*;
    use crate::batch::tests::{Rng, random_segments, random_source};

    fn gpu() -> Option<Arc<CudaContext>> {
        match probe(0) {
            Ok(ctx) => Some(ctx),
            Err(e) => {
                eprintln!("skipped: no GPU ({e})");
                None
            }
        }
    }

    fn kernels(ctx: &Arc<CudaContext>) -> Option<Arc<BatchKernels>> {
        match BatchKernels::for_context(ctx) {
            Ok(k) => Some(k),
            Err(CudaError::NoNvrtc) => {
                eprintln!("skipped: {}", CudaError::NoNvrtc);
                None
            }
            Err(e) => panic!("the kernels do not compile: {e}"),
        }
    }

    #[test]
    fn every_cast_equals_the_cpu_reference_on_random_segments() {
        let Some(ctx) = gpu() else { return };
        let Some(k) = kernels(&ctx) else { return };
        let stream = ctx.default_stream();
        let mut rng = Rng(2024);
        for round in 0..40 {
            for cast in Cast::ALL {
                let (segments, src_len, dst_len) = random_segments(&mut rng);
                let src = random_source(cast, src_len, &mut rng);
                let fill = (rng.next() & 0xff) as u8;
                let mut want = vec![fill; dst_len * cast.dst_size()];
                batch::copy_segments(cast, &src, &mut want, &segments).expect("reference");
                let d_src = stream.clone_htod(&src).expect("htod");
                let mut d_dst = stream.clone_htod(&vec![fill; want.len()]).expect("htod");
                k.copy_segments(&stream, cast, &d_src, &mut d_dst, &segments)
                    .expect("launch");
                let got = stream.clone_dtoh(&d_dst).expect("dtoh");
                assert_eq!(got, want, "round {round}, {cast:?}, {segments:?}");
            }
        }
    }

    #[test]
    fn upload_gathers_rows_through_pinned_memory_and_grows() {
        let Some(ctx) = gpu() else { return };
        let Some(k) = kernels(&ctx) else { return };
        let compute = ctx.new_stream().expect("stream");
        let mut upload = Upload::new(&ctx, 1024).expect("upload");
        let mut rng = Rng(5);
        for rows_n in [1usize, 3, 17, 64] {
            let rows: Vec<Vec<u8>> = (0..rows_n)
                .map(|_| random_source(Cast::F32ToBf16, 1 + rng.below(700), &mut rng))
                .collect();
            let refs: Vec<&[u8]> = rows.iter().map(Vec::as_slice).collect();
            let packed: Vec<u8> = rows.concat();
            for cast in [Cast::Copy4, Cast::F32ToF16, Cast::F32ToBf16] {
                let n = packed.len() / 4;
                let mut want = vec![0u8; n * cast.dst_size()];
                batch::copy_segments(cast, &packed, &mut want, &batch::gather(&[(0, n)])).expect("reference");
                let mut dst = compute.alloc_zeros::<u8>(want.len()).expect("alloc");
                upload.gather_rows(&k, &compute, cast, &refs, &mut dst).expect("gather");
                assert_eq!(compute.clone_dtoh(&dst).expect("dtoh"), want, "{rows_n} rows, {cast:?}");
            }
        }
        assert!(
            upload.capacity() >= 64 * 256,
            "the staging buffer grew: {}",
            upload.capacity()
        );
    }

    #[test]
    fn depthwise_equals_the_cpu_reference_on_random_shapes() {
        use crate::conv::depthwise_conv2d_reference;
        let Some(ctx) = gpu() else { return };
        let Some(k) = kernels(&ctx) else { return };
        let stream = ctx.default_stream();
        let mut rng = crate::conv::tests::Rng(404);
        for _ in 0..200 {
            let (shape, x, w, b, with_bias) = crate::conv::tests::random_depthwise(&mut rng, 20, 40);
            let bias = with_bias.then_some(&b[..]);
            let want = depthwise_conv2d_reference(&shape, &x, &w, bias).expect("reference");
            let (dx, dw, db) = (
                stream.clone_htod(&x).expect("htod"),
                stream.clone_htod(&w).expect("htod"),
                stream.clone_htod(&b).expect("htod"),
            );
            let mut dy = stream.alloc_zeros::<f32>(want.len()).expect("alloc");
            let db_view = db.slice(..);
            k.depthwise_conv2d(
                &stream,
                &shape,
                &dx.slice(..),
                &dw.slice(..),
                bias.map(|_| &db_view),
                &mut dy,
            )
            .expect("launch");
            let got = stream.clone_dtoh(&dy).expect("dtoh");
            let err = crate::conv::tests::max_error(&got, &want);
            assert!(err < 1e-4, "{shape:?}: {err}");
        }
    }

    #[test]
    fn a_bad_segment_list_is_an_error_before_any_launch() {
        let Some(ctx) = gpu() else { return };
        let Some(k) = kernels(&ctx) else { return };
        let stream = ctx.default_stream();
        let src = stream.alloc_zeros::<u8>(16).expect("alloc");
        let mut dst = stream.alloc_zeros::<u8>(16).expect("alloc");
        let bad = [Segment { src: 0, dst: 2, len: 3 }];
        assert_eq!(
            k.copy_segments(&stream, Cast::Copy4, &src, &mut dst, &bad),
            Err(CudaError::Segments(SegmentError::OutOfBounds { segment: 0 }))
        );
    }
}

#[cfg(test)]
mod absent {
    /// NVRTC needs no GPU: wherever the library is present (the CUDA wheels' lib folder on
    /// LD_LIBRARY_PATH), the source compiles for the H100's and older architectures.
    #[test]
    fn the_source_compiles_with_nvrtc() {
        if !super::nvrtc_present() {
            eprintln!("skipped: {}", super::CudaError::NoNvrtc);
            return;
        }
        for (major, minor) in [(7, 5), (8, 0), (9, 0)] {
            let ptx = super::compile_ptx(major, minor).expect("compiles").to_src();
            for cast in crate::batch::Cast::ALL {
                assert!(
                    ptx.contains(cast.kernel_name()),
                    "{} missing for sm_{major}{minor}",
                    cast.kernel_name()
                );
            }
            assert!(
                ptx.contains(super::DEPTHWISE),
                "the depthwise kernel is missing for sm_{major}{minor}"
            );
        }
    }

    /// Without a driver, probing is an error (never cudarc's panic).
    #[test]
    fn probing_without_a_driver_is_an_error() {
        if super::driver_present() {
            eprintln!("skipped: this machine has a CUDA driver");
            return;
        }
        assert_eq!(super::probe(0).map(|_| ()), Err(super::CudaError::NoDriver));
    }
}

//! `accel gpu-check`: the GPU path checked in one command on a machine with a GPU and no Rust
//! (`scripts/gpu-check.sh` builds the binary here and runs this there). Each check is a row of one
//! table: the NVRTC batch kernels against their CPU references, pinned against pageable
//! host-to-device bandwidth, NVML's reading of one model load, candle on the GPU against candle on the
//! CPU for every model given (largest relative error, and time per call on each), and the MLP's
//! throughput at batch 1/8/64/256 against PyTorch eager on the same GPU (its figures measured by
//! `benches/gpu/torch_mlp.py` and passed in as JSON).

#![allow(unsafe_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use accel_kernels::batch::{self, Cast};
use accel_kernels::cuda::{BatchKernels, Upload, probe};
use bytes::Bytes;
use candle_core::Device;
use cudarc::driver::CudaContext;

use crate::backend::candle::CandleBackend;
use crate::backend::{Backend, Batch, BatchInput, LoadedModel, ModelInstance};
use crate::core::{DataType, ModelSpec, Tensor};
use crate::device::memory::DeviceMemory;

/// What to check.
#[derive(Debug, clap::Args)]
pub struct GpuCheckArgs {
    /// The GPU (after CUDA_VISIBLE_DEVICES).
    #[arg(long, default_value_t = 0)]
    pub gpu: usize,
    /// ONNX models to run on the GPU and the CPU (their outputs compared).
    #[arg(long = "model", value_name = "FILE")]
    pub models: Vec<PathBuf>,
    /// The MLP 256 -> 1024 -> 256 whose throughput is measured.
    #[arg(long, value_name = "FILE")]
    pub mlp: PathBuf,
    /// PyTorch eager's samples/s for the same MLP, by batch (`{"1": 1234.5, ...}`), to compare with.
    #[arg(long, value_name = "FILE")]
    pub torch: Option<PathBuf>,
    /// Seconds per throughput measurement.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Also write the table here.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// One row of the report.
struct Row {
    check: String,
    result: String,
    ok: bool,
}

/// Runs every check; returns the report (a markdown table) and whether all passed.
pub fn run(args: &GpuCheckArgs) -> Result<(String, bool), String> {
    let ctx = probe(args.gpu).map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    let name = ctx.name().unwrap_or_else(|e| format!("? ({e})"));
    let placement = crate::device::gpu::Placement::select(Some(args.gpu as u32));
    if placement.gpu.is_none() {
        return Err("the GPU was probed but Accel cannot place models on it (see the log above)".into());
    }
    rows.push(Row {
        check: "device".into(),
        result: format!(
            "GPU {}: {name}; memory through {}",
            args.gpu,
            placement.memory.describe()
        ),
        ok: true,
    });
    rows.push(kernels(&ctx));
    rows.push(upload(&ctx));
    rows.push(bandwidth(&ctx));
    rows.push(nvml_load(&placement.device, placement.memory.as_ref(), &args.mlp));
    for model in &args.models {
        rows.push(compare(&placement.device, model));
    }
    let torch = match &args.torch {
        Some(path) => Some(read_torch(path)?),
        None => None,
    };
    for b in [1usize, 8, 64, 256] {
        rows.push(throughput(
            &placement.device,
            &args.mlp,
            b,
            args.seconds,
            torch.as_ref(),
        ));
    }
    let ok = rows.iter().all(|r| r.ok);
    let mut out = String::from("| check | result | pass |\n|---|---|---|\n");
    for r in &rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            r.check,
            r.result,
            if r.ok { "yes" } else { "NO" }
        );
    }
    if let Some(path) = &args.out {
        std::fs::write(path, &out).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok((out, ok))
}

fn row(check: impl Into<String>, result: Result<String, String>) -> Row {
    let ok = result.is_ok();
    Row {
        check: check.into(),
        result: result.unwrap_or_else(|e| format!("FAILED: {e}")),
        ok,
    }
}

/// xorshift: inputs that reproduce run to run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Every cast on random segment lists (odd lengths, unaligned offsets) against `batch::copy_segments`.
fn kernels(ctx: &Arc<CudaContext>) -> Row {
    let result = (|| {
        let k = BatchKernels::for_context(ctx).map_err(|e| e.to_string())?;
        let stream = ctx.default_stream();
        let mut rng = Rng(0x5eed);
        let mut cases = 0;
        for _ in 0..50 {
            for cast in Cast::ALL {
                let n = 1 + rng.below(8);
                let mut rows = Vec::new();
                let mut offset = 0;
                for _ in 0..n {
                    offset += rng.below(33);
                    let len = rng.below(1000);
                    rows.push((offset, len));
                    offset += len;
                }
                let packed: usize = rows.iter().map(|r| r.1).sum();
                let (segments, src_len, dst_len) = if rng.below(2) == 0 {
                    (batch::gather(&rows), offset, packed)
                } else {
                    (batch::scatter(&rows), packed, offset)
                };
                let src: Vec<u8> = (0..src_len * cast.src_size())
                    .map(|i| match (cast, i % 4) {
                        // Keep float sources mostly ordinary numbers (exponent bytes not all ones).
                        (Cast::F32ToF16 | Cast::F32ToBf16, 3) => (rng.next() as u8) & 0x7e,
                        _ => rng.next() as u8,
                    })
                    .collect();
                let mut want = vec![0u8; dst_len * cast.dst_size()];
                batch::copy_segments(cast, &src, &mut want, &segments).map_err(|e| e.to_string())?;
                let d_src = stream.clone_htod(&src).map_err(|e| e.to_string())?;
                let mut d_dst = stream.alloc_zeros::<u8>(want.len()).map_err(|e| e.to_string())?;
                k.copy_segments(&stream, cast, &d_src, &mut d_dst, &segments)
                    .map_err(|e| e.to_string())?;
                let got = stream.clone_dtoh(&d_dst).map_err(|e| e.to_string())?;
                if got != want {
                    let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
                    return Err(format!("{cast:?} differs from the CPU reference at byte {at}"));
                }
                cases += 1;
            }
        }
        Ok(format!(
            "{} casts, {cases} random segment lists: equal to the CPU references bit for bit",
            Cast::ALL.len()
        ))
    })();
    row("NVRTC batch kernels", result)
}

/// Rows through pinned staging, the copy stream and the gather kernel, against a host concatenation.
fn upload(ctx: &Arc<CudaContext>) -> Row {
    let result = (|| {
        let k = BatchKernels::for_context(ctx).map_err(|e| e.to_string())?;
        let compute = ctx.new_stream().map_err(|e| e.to_string())?;
        let mut up = Upload::new(ctx, 4096).map_err(|e| e.to_string())?;
        let mut rng = Rng(11);
        let rows: Vec<Vec<u8>> = (0..64)
            .map(|_| (0..(1 + rng.below(500)) * 4).map(|_| rng.next() as u8).collect())
            .collect();
        let refs: Vec<&[u8]> = rows.iter().map(Vec::as_slice).collect();
        let want = rows.concat();
        let mut dst = compute.alloc_zeros::<u8>(want.len()).map_err(|e| e.to_string())?;
        up.gather_rows(&k, &compute, Cast::Copy4, &refs, &mut dst)
            .map_err(|e| e.to_string())?;
        let got = compute.clone_dtoh(&dst).map_err(|e| e.to_string())?;
        if got != want {
            return Err("the gathered batch differs from the rows".into());
        }
        Ok(format!("64 rows, {} bytes: gathered exactly", want.len()))
    })();
    row("pinned staging + gather", result)
}

/// Host-to-device GB/s from pinned and from pageable memory (256 MiB, best of 5).
fn bandwidth(ctx: &Arc<CudaContext>) -> Row {
    let result = (|| {
        const BYTES: usize = 256 << 20;
        let stream = ctx.new_stream().map_err(|e| e.to_string())?;
        let mut dev = stream.alloc_zeros::<u8>(BYTES).map_err(|e| e.to_string())?;
        // SAFETY: filled right below.
        let mut pinned = unsafe { ctx.alloc_pinned_with_flags::<u8>(BYTES, 0) }.map_err(|e| e.to_string())?;
        pinned.as_mut_slice().map_err(|e| e.to_string())?.fill(1);
        let pageable = vec![1u8; BYTES];
        let mut best = |src: &dyn Fn(&mut cudarc::driver::CudaSlice<u8>) -> Result<(), String>| {
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = Instant::now();
                src(&mut dev)?;
                stream.synchronize().map_err(|e| e.to_string())?;
                best = best.min(t.elapsed().as_secs_f64());
            }
            Ok::<f64, String>(BYTES as f64 / best / 1e9)
        };
        let pinned_gbs = best(&|d| stream.memcpy_htod(&pinned, d).map_err(|e| e.to_string()))?;
        let pageable_gbs = best(&|d| stream.memcpy_htod(&pageable, d).map_err(|e| e.to_string()))?;
        Ok(format!(
            "pinned {pinned_gbs:.1} GB/s, pageable {pageable_gbs:.1} GB/s ({:.2}x)",
            pinned_gbs / pageable_gbs
        ))
    })();
    row("host->device bandwidth (256 MiB)", result)
}

fn load(device: &Device, file: &Path) -> Result<Box<dyn LoadedModel>, String> {
    let file = crate::core::ModelFile::standalone(file).map_err(|e| e.to_string())?;
    CandleBackend::on(device.clone())
        .load(&file, &crate::backend::LoadLimits::default())
        .map_err(|e| e.to_string())
}

/// NVML (or the driver) before and after a load of `file` on the GPU.
fn nvml_load(device: &Device, memory: &dyn DeviceMemory, file: &Path) -> Row {
    let result = (|| {
        let before = memory.read()?;
        let loaded = load(device, file)?;
        device.synchronize().map_err(|e| e.to_string())?;
        let after = memory.read()?;
        let delta = after.used.saturating_sub(before.used);
        let weights = loaded.weight_bytes();
        drop(loaded);
        Ok(format!(
            "{}: used {} -> {} MiB, delta {:.1} MiB for {:.1} MiB of weights",
            memory.describe(),
            before.used >> 20,
            after.used >> 20,
            delta as f64 / 1048576.0,
            weights as f64 / 1048576.0
        ))
    })();
    row(format!("device memory of one load ({})", file_name(file)), result)
}

fn file_name(file: &Path) -> String {
    let parent = file
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .unwrap_or("");
    let parent2 = file
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .unwrap_or("");
    // model repositories keep files as NAME/VERSION/model.onnx: name them by NAME.
    if parent.chars().all(|c| c.is_ascii_digit()) && !parent2.is_empty() {
        parent2.to_string()
    } else {
        file.file_stem().and_then(|n| n.to_str()).unwrap_or("?").to_string()
    }
}

/// Random inputs for `spec` at batch `b` (dynamic dimensions 1): floats in [-1, 1), integers 0.
fn inputs(spec: &ModelSpec, b: usize, seed: u64) -> Result<Batch, String> {
    let mut rng = Rng(seed | 1);
    let mut inputs = Vec::new();
    for io in &spec.inputs {
        let mut shape = vec![b];
        shape.extend(io.dims.iter().map(|&d| d.max(1) as usize));
        let n: usize = shape.iter().product();
        let data: Vec<u8> = match io.datatype {
            DataType::F32 => (0..n).flat_map(|_| rng.unit().to_le_bytes()).collect(),
            DataType::F16 => (0..n)
                .flat_map(|_| half::f16::from_f32(rng.unit()).to_le_bytes())
                .collect(),
            DataType::Bf16 => (0..n)
                .flat_map(|_| half::bf16::from_f32(rng.unit()).to_le_bytes())
                .collect(),
            DataType::F64 => (0..n).flat_map(|_| f64::from(rng.unit()).to_le_bytes()).collect(),
            other => vec![0u8; n * other.size().ok_or("BYTES inputs are not generated")?],
        };
        inputs.push(Some(BatchInput {
            datatype: io.datatype,
            shape,
            parts: vec![Bytes::from(data)],
        }));
    }
    Ok(Batch {
        inputs,
        outputs: (0..spec.outputs.len()).collect(),
        cancel: Default::default(),
    })
}

fn floats(t: &Tensor) -> Option<Vec<f64>> {
    let d = &t.data;
    Some(match t.datatype {
        DataType::F32 => d
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        DataType::F64 => d
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
        DataType::F16 => d
            .chunks_exact(2)
            .map(|c| f64::from(half::f16::from_le_bytes([c[0], c[1]]).to_f32()))
            .collect(),
        DataType::Bf16 => d
            .chunks_exact(2)
            .map(|c| f64::from(half::bf16::from_le_bytes([c[0], c[1]]).to_f32()))
            .collect(),
        _ => return None,
    })
}

/// candle on the GPU against candle on the CPU, same file and inputs: the largest relative error
/// (|gpu - cpu| / max |cpu| per output), which must stay under 1e-3.
fn compare(device: &Device, file: &Path) -> Row {
    let result = (|| {
        let gpu = load(device, file)?;
        let cpu = load(&Device::Cpu, file)?;
        let spec = ModelSpec::direct(gpu.signature(), "candle");
        let batch = inputs(&spec, 2, 42)?;
        let mut g: Box<dyn ModelInstance> = gpu.instance(&spec).map_err(|e| e.to_string())?;
        let mut c: Box<dyn ModelInstance> = cpu.instance(&spec).map_err(|e| e.to_string())?;
        let (go, co) = (
            g.execute(&batch).map_err(|e| e.to_string())?,
            c.execute(&batch).map_err(|e| e.to_string())?,
        );
        let mut worst = 0f64;
        for (a, b) in go.iter().zip(&co) {
            if a.shape != b.shape {
                return Err(format!(
                    "output {}: shape {:?} on the GPU, {:?} on the CPU",
                    b.name, a.shape, b.shape
                ));
            }
            match (floats(a), floats(b)) {
                (Some(x), Some(y)) => {
                    let scale = y.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
                    let diff = x.iter().zip(&y).fold(0f64, |m, (p, q)| {
                        if p.is_nan() && q.is_nan() {
                            m
                        } else {
                            m.max((p - q).abs())
                        }
                    });
                    worst = worst.max(diff / scale);
                }
                _ if a.data != b.data => return Err(format!("output {} differs (integers)", b.name)),
                _ => {}
            }
        }
        // Time per call at batch 2, inputs from and outputs to the host on both devices.
        let time = |i: &mut Box<dyn ModelInstance>| -> Result<f64, String> {
            let t = Instant::now();
            let mut n = 0u32;
            while n < 3 || t.elapsed().as_secs_f64() < 0.5 {
                i.execute(&batch).map_err(|e| e.to_string())?;
                n += 1;
            }
            Ok(t.elapsed().as_secs_f64() * 1000.0 / f64::from(n))
        };
        let (gpu_ms, cpu_ms) = (time(&mut g)?, time(&mut c)?);
        if worst < 1e-3 {
            Ok(format!(
                "max relative error {worst:.2e} over {} outputs; batch 2: GPU {gpu_ms:.3} ms, CPU {cpu_ms:.3} ms per call",
                co.len()
            ))
        } else {
            Err(format!("max relative error {worst:.2e} (limit 1e-3)"))
        }
    })();
    row(format!("GPU = CPU: {}", file_name(file)), result)
}

fn read_torch(path: &Path) -> Result<std::collections::HashMap<String, f64>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Samples/s of the MLP at batch `b` on the GPU, host inputs in and host outputs out (as served).
fn throughput(
    device: &Device,
    mlp: &Path,
    b: usize,
    seconds: f64,
    torch: Option<&std::collections::HashMap<String, f64>>,
) -> Row {
    let result = (|| {
        let loaded = load(device, mlp)?;
        let spec = ModelSpec::direct(loaded.signature(), "candle");
        let mut instance = loaded.instance(&spec).map_err(|e| e.to_string())?;
        let batch = inputs(&spec, b, 7)?;
        for _ in 0..10 {
            instance.execute(&batch).map_err(|e| e.to_string())?;
        }
        let (mut n, t) = (0u64, Instant::now());
        while t.elapsed().as_secs_f64() < seconds {
            instance.execute(&batch).map_err(|e| e.to_string())?;
            n += 1;
        }
        let rate = n as f64 * b as f64 / t.elapsed().as_secs_f64();
        let ms = t.elapsed().as_secs_f64() * 1000.0 / n as f64;
        Ok(match torch.and_then(|m| m.get(&b.to_string())) {
            Some(&pt) => format!(
                "Accel {rate:.0} samples/s ({ms:.3} ms/batch); PyTorch eager {pt:.0}; Accel / PyTorch {:.2}x",
                rate / pt
            ),
            None => format!("Accel {rate:.0} samples/s ({ms:.3} ms/batch); PyTorch not measured"),
        })
    })();
    row(format!("MLP 256-1024-256, batch {b}"), result)
}

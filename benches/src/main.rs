//! `accel-bench`: load a KServe v2 gRPC server and report throughput and latency you can trust, time
//! Accel's candle executor in-process (`compute`) for the compute-only ceiling, or replay a Zipf trace
//! against Accel's eviction policy, LRU and Belady's rule (`residency-sim`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use accel_bench::{LoadShape, Plan, Target, load, report, residency_sim, target};
use clap::{Args, Parser, Subcommand};

// The server's allocator, so that `compute` allocates tensors the way the server does (glibc's
// malloc maps and faults in fresh pages for every large tensor).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "accel-bench",
    version,
    about = "Throughput and latency of a KServe v2 gRPC server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Load a server: a concurrency sweep (closed loop) or fixed rates (open loop).
    Run(RunArgs),
    /// Time Accel's candle executor on an ONNX file, in-process, per batch size.
    Compute(ComputeArgs),
    /// Hit rates of Accel's eviction policy, LRU and Belady's rule on Zipf traces (offline).
    ResidencySim(SimArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Server address: http://HOST:PORT, or unix:///path/to.sock for a Unix domain socket.
    #[arg(long, default_value = "http://127.0.0.1:8001")]
    url: String,
    /// How tensors travel: `none` (in the request), `system` (through POSIX shared-memory regions
    /// the bench creates in /dev/shm and registers; the server needs --allow-client-shm). `cuda` is
    /// refused: Accel opens no CUDA IPC handles yet.
    #[arg(long, default_value = "none", value_parser = ["none", "system", "cuda"])]
    shared_memory: String,
    /// With --shared-memory: the region of an output whose shape does not give its size, in bytes
    /// (0: the request's largest input).
    #[arg(long, default_value_t = 0)]
    output_shared_memory_size: usize,
    /// Input sizes to sweep (4KiB,64KiB,1MiB,...): each request's input with a variable dimension
    /// holds that many bytes; every level runs at every size.
    #[arg(long, value_delimiter = ',', value_parser = parse_bytes)]
    input_bytes: Vec<usize>,
    /// Model to load; repeat for several (requests then spread over them, see --zipf).
    #[arg(long = "model", required_unless_present = "all_models")]
    models: Vec<String>,
    /// Use every READY model of the server's repository index.
    #[arg(long)]
    all_models: bool,
    /// Zipf exponent for choosing among several models (0: uniform).
    #[arg(long, default_value_t = 0.0)]
    zipf: f64,
    /// Closed loop: concurrent callers, a sweep (comma-separated).
    #[arg(long, value_delimiter = ',', conflicts_with = "rate")]
    concurrency: Vec<usize>,
    /// Open loop: requests per second with Poisson arrivals, a sweep (comma-separated).
    #[arg(long, value_delimiter = ',')]
    rate: Vec<f64>,
    /// Batch elements per request (the first, variable dimension).
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// A variable non-batch dimension: NAME:d1,d2,... (the whole shape of that input).
    #[arg(long = "shape")]
    shapes: Vec<String>,
    /// Requests of varying lengths, MIN:MAX: every variable non-batch dimension of a request takes
    /// one length drawn uniformly (a pool of 512 requests sent in turn); a BYTES input becomes text
    /// of that many words.
    #[arg(long)]
    lengths: Option<String>,
    /// With --lengths: the client pads every request to this length with zeros.
    #[arg(long)]
    pad_to: Option<usize>,
    /// NAME=VALUE: every real element of that input is VALUE (an attention mask of ones).
    #[arg(long = "fill")]
    fill: Vec<String>,
    /// Send only these inputs (repeatable), leaving the model's others out (an HF model's `text`
    /// without its token-id alternatives).
    #[arg(long = "input")]
    only_inputs: Vec<String>,
    /// gRPC connections the requests are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Warm-up before measuring, seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Length of a measurement window, seconds.
    #[arg(long, default_value_t = 3.0)]
    window: f64,
    /// Consecutive windows whose throughputs must agree within --stability.
    #[arg(long, default_value_t = 3)]
    stable_windows: usize,
    /// Give up waiting for stability after this many windows (and say so).
    #[arg(long, default_value_t = 10)]
    max_windows: usize,
    /// Relative spread allowed between the agreeing windows.
    #[arg(long, default_value_t = 0.1)]
    stability: f64,
    /// Open loop: requests in flight beyond which arrivals are dropped and counted as errors.
    #[arg(long, default_value_t = 10_000)]
    max_in_flight: usize,
    /// A latency target in milliseconds: each level also reports the fraction of its requests
    /// answered within it (errors count as misses).
    #[arg(long)]
    slo_ms: Option<f64>,
    /// Write the results as JSON to this file ("-" for standard output).
    #[arg(long)]
    json: Option<String>,
    /// Write the results as CSV to this file ("-" for standard output).
    #[arg(long)]
    csv: Option<String>,
    /// No progress line on standard error.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct SimArgs {
    /// Models in the repository.
    #[arg(long, default_value_t = 200)]
    models: usize,
    /// Largest model over smallest (sizes log-uniform between).
    #[arg(long, default_value_t = 30.0)]
    spread: f64,
    /// Zipf exponents of model popularity (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0.8,1.0,1.2")]
    zipf: Vec<f64>,
    /// Memory capacity as fractions of all models' bytes (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.25")]
    capacity: Vec<f64>,
    /// Requests per trace.
    #[arg(long, default_value_t = 200_000)]
    requests: usize,
    /// Traces per point (different seeds), reported as min / median / max.
    #[arg(long, default_value_t = 3)]
    seeds: u64,
}

#[derive(Debug, Args)]
struct ComputeArgs {
    /// The model file: an ONNX file, or a Hugging Face directory's config.json (--engine huggingface).
    #[arg(long, alias = "model")]
    onnx: String,
    /// Batch sizes (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    batch: Vec<usize>,
    /// Seconds of timing per batch size and repeat.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Repeats per batch size (reported as min / median / max).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// The engine: Accel's candle executor, ONNX Runtime through Accel's backend, or the Hugging Face
    /// encoder on candle (token ids in: its text is tokenized before the queue, not here).
    #[arg(long, value_parser = ["candle", "onnxruntime", "huggingface"], default_value = "candle")]
    engine: String,
    /// Threads one execution may use, for every engine alike (candle's GEMMs through
    /// RAYON_NUM_THREADS, as the server sets it from --intra-op-threads; ONNX Runtime's intra-op
    /// threads).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// An input filled with one value instead of random data, NAME=VALUE (an attention mask of ones).
    #[arg(long = "fill")]
    fill: Vec<String>,
    /// libonnxruntime.so.1.x, for --engine onnxruntime.
    #[arg(long)]
    onnxruntime_library: Option<std::path::PathBuf>,
    /// An input's whole shape, NAME:d1,d2,... (a variable first dimension is then replaced by the batch
    /// size); other variable dimensions default to 1.
    #[arg(long = "shape", value_parser = parse_shape)]
    shapes: Vec<(String, Vec<i64>)>,
    /// After each batch size, the candle executor's time per operator type.
    #[arg(long)]
    profile: bool,
    /// With --profile: one row per operator type and input shapes (the 25 slowest).
    #[arg(long)]
    profile_shapes: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("accel-bench: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run(args))
        }
        Command::Compute(args) => compute(args),
        Command::ResidencySim(args) => residency(args),
    }
}

fn residency(args: SimArgs) -> ExitCode {
    let spread3 = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        format!("{:.3} / {:.3} / {:.3}", v[0], v[v.len() / 2], v[v.len() - 1])
    };
    println!("| Zipf s | capacity | policy | hit rate (min / median / max) | load time s (median) |");
    println!("|---|---|---|---|---|");
    for &s in &args.zipf {
        for &c in &args.capacity {
            let mut rows: Vec<(&'static str, Vec<f64>, Vec<f64>)> = Vec::new();
            for seed in 0..args.seeds.max(1) {
                let trace = residency_sim::Trace::zipf(args.models, args.spread, s, args.requests, seed);
                let capacity = (trace.total_bytes() as f64 * c) as u64;
                let outcomes = [
                    residency_sim::accel(&trace, capacity),
                    residency_sim::lru(&trace, capacity),
                    residency_sim::belady(&trace, capacity),
                ];
                for (k, o) in outcomes.into_iter().enumerate() {
                    if rows.len() <= k {
                        rows.push((o.policy, Vec::new(), Vec::new()));
                    }
                    rows[k].1.push(o.hit_rate());
                    rows[k].2.push(o.load_secs);
                }
            }
            for (policy, hits, secs) in rows {
                let mut secs = secs;
                secs.sort_by(f64::total_cmp);
                println!(
                    "| {s} | {:.0}% | {policy} | {} | {:.0} |",
                    c * 100.0,
                    spread3(hits),
                    secs[secs.len() / 2]
                );
            }
        }
    }
    ExitCode::SUCCESS
}

fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: usize = n.parse().map_err(|_| format!("'{s}' is not a size (such as 64KiB)"))?;
    let scale: usize = match unit {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        _ => return Err(format!("'{s}': unit must be B, KiB, MiB or GiB")),
    };
    n.checked_mul(scale).ok_or_else(|| format!("'{s}' is too large"))
}

fn show_bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => format!("{n}B"),
    }
}

fn parse_shape(s: &str) -> Result<(String, Vec<i64>), String> {
    let (name, dims) = s
        .split_once(':')
        .ok_or_else(|| format!("--shape {s}: expected NAME:d1,d2"))?;
    let dims = dims
        .split(',')
        .map(|d| {
            d.trim()
                .parse::<i64>()
                .map_err(|_| format!("--shape {s}: bad dimension '{d}'"))
        })
        .collect::<Result<_, _>>()?;
    Ok((name.to_string(), dims))
}

async fn run(args: RunArgs) -> ExitCode {
    match try_run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("accel-bench: {e}");
            ExitCode::from(2)
        }
    }
}

async fn try_run(args: RunArgs) -> Result<ExitCode, String> {
    let shapes = args
        .shapes
        .iter()
        .map(|s| parse_shape(s))
        .collect::<Result<Vec<_>, _>>()?;
    let target = Arc::new(Target::connect(&args.url, args.connections).await?);
    let mut names = args.models.clone();
    if args.all_models {
        let index = target
            .client()
            .repository_index(accel_proto::inference::RepositoryIndexRequest {
                repository_name: String::new(),
                ready: true,
            })
            .await
            .map_err(|s| format!("RepositoryIndex: {}", s.message()))?
            .into_inner();
        names.extend(index.models.into_iter().map(|m| m.name));
        names.dedup();
    }
    let range = args
        .lengths
        .as_deref()
        .map(|l| {
            let (a, b) = l
                .split_once(':')
                .ok_or_else(|| format!("--lengths {l}: expected MIN:MAX"))?;
            let parse = |v: &str| {
                v.parse::<usize>()
                    .map_err(|_| format!("--lengths {l}: bad length '{v}'"))
            };
            Ok::<_, String>((parse(a)?.max(1), parse(b)?))
        })
        .transpose()?;
    let fill = args
        .fill
        .iter()
        .map(|f| {
            let (n, v) = f
                .split_once('=')
                .ok_or_else(|| format!("--fill {f}: expected NAME=VALUE"))?;
            Ok::<_, String>((
                n.to_string(),
                v.parse::<i64>().map_err(|_| format!("--fill {f}: bad value"))?,
            ))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if args.shared_memory == "cuda" {
        return Err("--shared-memory cuda: Accel opens no CUDA IPC handles yet; use system".into());
    }
    let sizes: Vec<Option<usize>> = if args.input_bytes.is_empty() {
        vec![None]
    } else {
        args.input_bytes.iter().map(|&b| Some(b)).collect()
    };
    let plan = Plan {
        warmup: Duration::from_secs_f64(args.warmup),
        window: Duration::from_secs_f64(args.window),
        stable_windows: args.stable_windows.max(1),
        max_windows: args.max_windows,
        stability: args.stability,
        max_in_flight: args.max_in_flight,
        zipf: args.zipf,
        progress: !args.quiet,
        slo: args.slo_ms.map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1000.0)),
    };
    let levels: Vec<LoadShape> = if !args.rate.is_empty() {
        args.rate.iter().map(|&rate| LoadShape::Open { rate }).collect()
    } else if !args.concurrency.is_empty() {
        args.concurrency
            .iter()
            .map(|&concurrency| LoadShape::Closed { concurrency })
            .collect()
    } else {
        vec![LoadShape::Closed { concurrency: 1 }]
    };
    let mut results = Vec::new();
    for size in sizes {
        let lengths = target::Lengths {
            range,
            pad_to: args.pad_to,
            fill: fill.clone(),
            only: args.only_inputs.clone(),
            bytes: size,
        };
        let mut models = Vec::with_capacity(names.len());
        for (k, name) in names.iter().enumerate() {
            models.push(target::prepare(&target, name, args.batch_size, &shapes, k as u64, &lengths).await?);
        }
        let mut regions = accel_bench::shm::Regions::default();
        if args.shared_memory == "system" {
            for m in &mut models {
                if let Err(e) = regions.place(&target, m, args.output_shared_memory_size).await {
                    regions.release(&target).await;
                    return Err(e);
                }
            }
        }
        let models = Arc::new(models);
        for level in &levels {
            let mut r = load::run(target.clone(), models.clone(), *level, &plan).await;
            if let Some(b) = size {
                r.label = format!("{} {}", show_bytes(b), r.label);
            }
            results.push(r);
        }
        regions.release(&target).await;
    }
    print!("{}", report::table(&results));
    if let Some(path) = &args.json {
        let text = report::json(&results)?;
        if path == "-" {
            println!("{text}");
        } else {
            std::fs::write(path, text).map_err(|e| format!("{path}: {e}"))?;
        }
    }
    if let Some(path) = &args.csv {
        if path == "-" {
            report::csv(&results, std::io::stdout())?;
        } else {
            let file = std::fs::File::create(path).map_err(|e| format!("{path}: {e}"))?;
            report::csv(&results, file)?;
        }
    }
    let errors: u64 = results.iter().map(|r| r.error_count).sum();
    if errors > 0 {
        eprintln!("accel-bench: {errors} requests failed; the throughput above counts only successful ones");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// In-process compute through Accel's candle backend: the ceiling of the model itself.
#[allow(unsafe_code, clippy::disallowed_methods)]
fn compute(args: ComputeArgs) -> ExitCode {
    use accel::backend::candle::CandleBackend;
    use accel::backend::{Backend, Batch, BatchInput};
    use accel::core::ModelSpec;

    // SAFETY: `compute` runs on the main thread before any other thread exists (candle sizes its
    // GEMMs' parallelism from the variable, as the server sets it).
    unsafe { std::env::set_var("RAYON_NUM_THREADS", args.threads.max(1).to_string()) };
    let mut fill = Vec::new();
    for f in &args.fill {
        match f.split_once('=').map(|(n, v)| (n, v.parse::<i64>())) {
            Some((n, Ok(v))) => fill.push((n.to_string(), v)),
            _ => {
                eprintln!("accel-bench: --fill {f}: expected NAME=INTEGER");
                return ExitCode::FAILURE;
            }
        }
    }
    let no_limit = accel::backend::ExecLimits {
        max_bytes: u64::MAX,
        ..Default::default()
    };
    let backend: Box<dyn Backend> = match (args.engine.as_str(), &args.onnxruntime_library) {
        ("huggingface", _) => {
            Box::new(accel::backend::hf::HfBackend::on(candle_core::Device::Cpu).with_limits(no_limit))
        }
        ("onnxruntime", Some(library)) => {
            match accel::backend::onnxruntime::OrtBackend::open(library, args.threads.max(1)) {
                Ok(b) => Box::new(b),
                Err(e) => {
                    eprintln!("accel-bench: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        ("onnxruntime", None) => {
            eprintln!("accel-bench: --engine onnxruntime needs --onnxruntime-library PATH");
            return ExitCode::FAILURE;
        }
        // Timing compute alone: no limit on what one execution may hold.
        _ => Box::new(CandleBackend::cpu().with_limits(no_limit)),
    };
    let file = match accel::core::ModelFile::standalone(std::path::Path::new(&args.onnx)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("accel-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let loaded = match backend.load(&file, &accel::backend::LoadLimits::default()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("accel-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sig = loaded.signature().clone();
    let spec = ModelSpec::direct(&sig, &args.engine);
    let mut instance = match loaded.instance(&spec) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("accel-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("| batch | samples/s (min / median / max) | ms per batch (median) |");
    println!("|---|---|---|");
    for &b in &args.batch {
        let mut inputs = Vec::new();
        for (k, input) in spec.inputs.iter().enumerate() {
            // Text the engine tokenizes before the queue: the compute gets token ids.
            if input.datatype == accel::core::DataType::Bytes && loaded.optional_inputs().contains(&input.name.as_str())
            {
                inputs.push(None);
                continue;
            }
            let mut shape = vec![b];
            match args.shapes.iter().find(|(n, _)| *n == input.name) {
                Some((_, given)) => {
                    shape = given.iter().map(|&d| d.max(1) as usize).collect();
                    let variable_first = sig.inputs[k]
                        .dims
                        .as_ref()
                        .is_none_or(|d| d.first().is_some_and(Option::is_none));
                    if variable_first && !shape.is_empty() {
                        shape[0] = b;
                    }
                }
                None => shape.extend(input.dims.iter().map(|&d| d.max(1) as usize)),
            }
            let wire: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            let filled = fill.iter().find(|(n, _)| *n == input.name).map(|&(_, v)| {
                accel_bench::target::filled(input.datatype.wire_name(), shape.iter().product(), v)
                    .map(bytes::Bytes::from)
            });
            let data = match filled
                .unwrap_or_else(|| accel_bench::inputs::random(input.datatype.wire_name(), &wire, k as u64))
            {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("accel-bench: {e}");
                    return ExitCode::FAILURE;
                }
            };
            inputs.push(Some(BatchInput {
                datatype: input.datatype,
                shape,
                parts: vec![data],
            }));
        }
        let batch = Batch {
            inputs,
            outputs: (0..spec.outputs.len()).collect(),
            cancel: Default::default(),
        };
        let mut rates = Vec::new();
        let mut per_batch = Vec::new();
        for _ in 0..args.repeats.max(1) {
            let _ = instance.execute(&batch);
            let (mut n, start) = (0u64, Instant::now());
            while start.elapsed().as_secs_f64() < args.seconds {
                if let Err(e) = instance.execute(&batch) {
                    eprintln!("accel-bench: {e}");
                    return ExitCode::FAILURE;
                }
                n += 1;
            }
            let secs = start.elapsed().as_secs_f64();
            rates.push(n as f64 * b as f64 / secs);
            per_batch.push(secs * 1000.0 / n as f64);
        }
        if args.profile {
            accel::backend::candle::profile::enable(args.profile_shapes);
            let (mut n, start) = (0u32, Instant::now());
            while start.elapsed().as_secs_f64() < args.seconds {
                let _ = instance.execute(&batch);
                n += 1;
            }
            let rows = accel::backend::candle::profile::take();
            let all: f64 = rows.iter().map(|r| r.1.as_secs_f64()).sum();
            eprintln!(
                "batch {b}: {:.3} ms per run in operators",
                all * 1000.0 / f64::from(n.max(1))
            );
            for (op, time, count) in rows.iter().take(if args.profile_shapes { 25 } else { 12 }) {
                eprintln!(
                    "  {op:<24} {:>8.3} ms/run {:>5.1}% {:>5} steps/run",
                    time.as_secs_f64() * 1000.0 / f64::from(n.max(1)),
                    100.0 * time.as_secs_f64() / all.max(1e-12),
                    count / u64::from(n.max(1))
                );
            }
        }
        rates.sort_by(f64::total_cmp);
        per_batch.sort_by(f64::total_cmp);
        println!(
            "| {b} | {:.0} / {:.0} / {:.0} | {:.3} |",
            rates[0],
            rates[rates.len() / 2],
            rates[rates.len() - 1],
            per_batch[per_batch.len() / 2]
        );
    }
    ExitCode::SUCCESS
}

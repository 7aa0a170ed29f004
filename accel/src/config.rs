//! The command line: one `Config` with tritonserver's flag names where the concept is the same, every
//! flag also readable from an `ACCEL_*` environment variable (how a Helm chart configures a
//! container). The whole configuration is checked before any port is bound; an invalid one exits 64.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::logging::LogFormat;
use crate::residency::{ControlMode, DefaultBackend, MemorySize};

/// Accel: a batching inference sidecar for KServe, speaking the v2 / Open Inference Protocol.
#[derive(Debug, Parser)]
#[command(name = "accel", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Command {
    /// The configuration of `accel serve`, if that is the command.
    pub fn serve(self) -> Option<Config> {
        match self {
            Command::Serve(c) => Some(c),
            #[cfg(feature = "cuda")]
            Command::GpuCheck(_) => None,
        }
    }
}

// Parsed once at start: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the models of a model repository over gRPC.
    Serve(Config),
    /// Check the GPU path on this machine's GPU and print a table (binaries built with `cuda`;
    /// scripts/gpu-check.sh runs it).
    #[cfg(feature = "cuda")]
    GpuCheck(crate::gpu_check::GpuCheckArgs),
}

/// Everything `accel serve` can be told.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Model repository in Triton's layout: <DIR>/<model>/config.pbtxt and <DIR>/<model>/<version>/model.onnx.
    /// A model without config.pbtxt gets its inputs and outputs from the ONNX graph.
    #[arg(long, env = "ACCEL_MODEL_REPOSITORY", value_name = "DIR")]
    pub model_repository: PathBuf,

    /// Address the gRPC server binds. The default serves only the pod (a sidecar's predictor reaches it
    /// on localhost); use 0.0.0.0 to serve other pods, or `unix:/path/to.sock` for a Unix domain socket
    /// (clients then connect to `unix:///path/to.sock`; --grpc-port is not used).
    #[arg(long, env = "ACCEL_GRPC_ADDRESS", default_value = "127.0.0.1")]
    pub grpc_address: ListenAddress,

    /// gRPC port (KServe v2 / Triton protocol). 0 picks a free port, printed at start.
    #[arg(long, env = "ACCEL_GRPC_PORT", default_value_t = 8001)]
    pub grpc_port: u16,

    /// Serve REST v2 (the KServe v2 HTTP protocol, with Triton's binary tensor extension).
    #[arg(long, env = "ACCEL_ALLOW_HTTP", default_value_t = true, action = clap::ArgAction::Set)]
    pub allow_http: bool,

    /// Address the HTTP/REST server binds: an IP address, or `unix:/path/to.sock` for a Unix domain
    /// socket (--http-port is then not used).
    #[arg(long, env = "ACCEL_HTTP_ADDRESS", default_value = "127.0.0.1")]
    pub http_address: ListenAddress,

    /// Permission bits of the Unix domain sockets Accel creates (octal, as chmod takes them). A stale
    /// socket file left by an earlier run is replaced; any other file at the path is refused.
    #[arg(long, env = "ACCEL_UNIX_SOCKET_MODE", default_value = "660", value_parser = parse_mode)]
    pub unix_socket_mode: u32,

    /// HTTP/REST port (v2 endpoints and the /v2/health/live and /v2/health/ready probes). 0 picks a free port.
    #[arg(long, env = "ACCEL_HTTP_PORT", default_value_t = 8000)]
    pub http_port: u16,

    /// Largest HTTP request body accepted, in bytes (the JSON header plus binary tensors).
    #[arg(long, env = "ACCEL_HTTP_MAX_BODY_BYTES", default_value_t = u32::MAX as usize)]
    pub http_max_body_bytes: usize,

    /// Serve Prometheus metrics at /metrics on --metrics-port.
    #[arg(long, env = "ACCEL_ALLOW_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub allow_metrics: bool,

    /// Address the metrics server binds. Prometheus scrapes from outside the pod, hence all interfaces.
    #[arg(long, env = "ACCEL_METRICS_ADDRESS", default_value = "0.0.0.0")]
    pub metrics_address: IpAddr,

    /// Prometheus metrics port. 0 picks a free port.
    #[arg(long, env = "ACCEL_METRICS_PORT", default_value_t = 8002)]
    pub metrics_port: u16,

    /// How often the CPU, memory and executor duty-cycle gauges are sampled, in milliseconds.
    #[arg(long, env = "ACCEL_METRICS_INTERVAL_MS", default_value_t = 2000)]
    pub metrics_interval_ms: u64,

    /// On SIGTERM, how long requests already accepted may take to finish before the process exits.
    /// Keep the pod's terminationGracePeriodSeconds above it.
    #[arg(long, env = "ACCEL_EXIT_TIMEOUT_SECS", default_value_t = 30)]
    pub exit_timeout_secs: u64,

    /// Which models are loaded: `on-demand` lists every model and loads each at its first request,
    /// evicting idle ones when memory is needed; `none` loads every model at start; `explicit` loads
    /// only --load-model models and those the repository API asks for. Only on-demand evicts.
    #[arg(long, env = "ACCEL_MODEL_CONTROL_MODE", value_enum, default_value = "on-demand")]
    pub model_control_mode: ControlMode,

    /// A model to load at start, in every mode; repeat the flag (or separate names with commas).
    #[arg(
        long = "load-model",
        env = "ACCEL_LOAD_MODEL",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub load_models: Vec<String>,

    /// A model that is loaded at start and never evicted; repeat or separate with commas. A model's
    /// config can pin it too: parameters { key: "accel.pinned" value: { string_value: "true" } }.
    #[arg(
        long = "pin-model",
        env = "ACCEL_PIN_MODEL",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub pin_models: Vec<String>,

    /// Device memory resident models may hold: bytes (8GiB, 512MiB, 1000000) or a percentage of the
    /// device (the container's memory limit on the CPU). Loads that do not fit evict idle models
    /// (on-demand mode) or fail with RESOURCE_EXHAUSTED.
    #[arg(long, env = "ACCEL_MEMORY_BUDGET", default_value = "80%")]
    pub memory_budget: MemorySize,

    /// Device memory left out of the budget, for requests in flight and others on the device. A load
    /// also needs this much to stay free on the device, as measured when it is admitted.
    #[arg(long, env = "ACCEL_MEMORY_RESERVE", default_value = "256MiB")]
    pub memory_reserve: MemorySize,

    /// Host memory that evicted models may keep their prepared weights in, so that bringing one back
    /// skips reading and compiling its file (bytes, or a percentage of host memory). 0 disables.
    #[arg(long, env = "ACCEL_HOST_CACHE_SIZE", default_value = "10%")]
    pub host_cache_size: MemorySize,

    /// How long a request waits for its model to become resident (its load, and memory to free up).
    #[arg(long, env = "ACCEL_MODEL_LOAD_TIMEOUT_SECS", default_value_t = 60)]
    pub model_load_timeout_secs: u64,

    /// The ONNX Runtime shared library, loaded at start: the libonnxruntime.so.1.x that PyPI's
    /// onnxruntime wheel ships in onnxruntime/capi/. Without it, models run on candle.
    #[arg(long, env = "ACCEL_ONNXRUNTIME_LIBRARY", value_name = "PATH")]
    pub onnxruntime_library: Option<PathBuf>,

    /// The engine for ONNX models whose config names no backend: `auto` is onnxruntime when its
    /// library is loaded, else candle. `backend: "onnxruntime"` or `"candle"` in a config overrides it.
    #[arg(long, env = "ACCEL_DEFAULT_BACKEND", value_enum, default_value = "auto")]
    pub default_backend: DefaultBackend,

    /// Log verbosity: 0 logs information, 1 adds debug detail, 2 and more trace everything. It can be
    /// changed at run time with LogSettings (gRPC) or POST /v2/logging.
    #[arg(long, env = "ACCEL_LOG_VERBOSE", default_value_t = 0)]
    pub log_verbose: u8,

    /// Log line format: `text` for people, `json` for log collectors.
    #[arg(long, env = "ACCEL_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Largest gRPC message accepted or sent, in bytes. The default (the protocol's 4 GiB framing
    /// limit) carries tensors of 2 GiB and more; lower it to bound the memory one request may take.
    #[arg(long, env = "ACCEL_GRPC_MAX_MESSAGE_BYTES", default_value_t = u32::MAX as usize)]
    pub grpc_max_message_bytes: usize,

    /// Requests one model may hold queued; beyond it requests fail at once with UNAVAILABLE (retryable)
    /// instead of waiting without bound. Per-level `max_queue_size` in config.pbtxt applies as well.
    #[arg(long, env = "ACCEL_MAX_QUEUED_REQUESTS", default_value_t = 4096)]
    pub max_queued_requests: usize,

    /// max_batch_size given to a model that has no config.pbtxt when its graph can batch (every input
    /// and output has a variable first dimension); dynamic batching is enabled for it too. 0 disables.
    #[arg(long, env = "ACCEL_DEFAULT_MAX_BATCH_SIZE", default_value_t = 32)]
    pub default_max_batch_size: usize,

    /// Models loaded in parallel at start.
    #[arg(long, env = "ACCEL_MODEL_LOAD_THREADS", default_value_t = 2)]
    pub model_load_threads: usize,

    /// Run models on GPU N (counted after CUDA_VISIBLE_DEVICES): candle's CUDA backend, and ONNX
    /// Runtime's CUDA execution provider when its library has one. Device memory is then read live
    /// through NVML. Without a usable GPU (or in a build without the `cuda` feature) Accel logs why and
    /// serves on the CPU.
    #[arg(long, env = "ACCEL_GPU", value_name = "N")]
    pub gpu: Option<u32>,

    /// Threads one execution may use inside candle's CPU kernels. Instances already run in parallel
    /// (one executor thread each) and the server needs a core too: on small machines 1 is fastest,
    /// since threads that compete for the same cores stall each other.
    #[arg(long, env = "ACCEL_INTRA_OP_THREADS", default_value_t = 1)]
    pub intra_op_threads: usize,

    /// How long an executor that has just finished a batch polls for more work before it sleeps, in
    /// microseconds. Waking a sleeping thread costs tens of microseconds on virtual machines; polling
    /// costs CPU while idle. 0 never polls.
    #[arg(long, env = "ACCEL_EXECUTOR_SPIN_US", default_value_t = 50)]
    pub executor_spin_us: u64,

    /// Threads of the async runtime that serves the network (decoding, encoding, batching handoff).
    /// 0: one per core.
    #[arg(long, env = "ACCEL_SERVER_THREADS", default_value_t = 0)]
    pub server_threads: usize,

    /// Memory one execution may hold at once (its inputs, the intermediate tensors alive, and what
    /// the next operator would create), in bytes or as a share of the device's memory. An execution
    /// that would need more fails with RESOURCE_EXHAUSTED naming the operator, before allocating.
    #[arg(long, env = "ACCEL_MAX_EXECUTION_MEMORY", default_value = "25%")]
    pub max_execution_memory: MemorySize,

    /// Iterations one ONNX Loop may run in one execution (a trip count from a request above it is
    /// refused with INVALID_ARGUMENT before anything runs).
    #[arg(long, env = "ACCEL_MAX_LOOP_ITERATIONS", default_value_t = 1 << 20)]
    pub max_loop_iterations: u64,

    /// Work one execution on the candle engine may do, in multiply-accumulates (or their equivalent:
    /// a pooling-window position counts 16, an element-wise step its bytes), summed over its operators
    /// as each estimates it from its inputs' shapes before it runs. An execution that would do more
    /// fails with RESOURCE_EXHAUSTED naming the operator. The default, 2^42 (4.4e12), is about a minute on
    /// two CPU cores; raise it for very large batches on a GPU.
    #[arg(long, env = "ACCEL_MAX_EXECUTION_WORK", default_value_t = crate::backend::DEFAULT_MAX_WORK)]
    pub max_execution_work: u64,

    /// How long an HTTP client may take to send a request's headers, counted from when the
    /// connection is ready for its next request: also how long an idle kept-alive connection stays
    /// open. REST and metrics listeners.
    #[arg(long, env = "ACCEL_HTTP_HEADER_TIMEOUT_SECS", default_value_t = 30)]
    pub http_header_timeout_secs: u64,

    /// How long an HTTP client may take to send a request's whole body once its headers are in.
    #[arg(long, env = "ACCEL_HTTP_BODY_TIMEOUT_SECS", default_value_t = 300)]
    pub http_body_timeout_secs: u64,

    /// Connections the REST listener holds open at once; further ones are closed at once.
    #[arg(long, env = "ACCEL_HTTP_MAX_CONNECTIONS", default_value_t = 1024)]
    pub http_max_connections: usize,

    /// Connections the gRPC listener holds open at once; further ones are closed at once.
    #[arg(long, env = "ACCEL_GRPC_MAX_CONNECTIONS", default_value_t = 1024)]
    pub grpc_max_connections: usize,

    /// Connections the metrics listener holds open at once; further ones are closed at once.
    #[arg(long, env = "ACCEL_METRICS_MAX_CONNECTIONS", default_value_t = 64)]
    pub metrics_max_connections: usize,

    /// Let clients register shared-memory regions and send tensors through them (Triton's system
    /// shared-memory extension; off by default, as in Triton since 2.69). `--allow-client-shm` alone
    /// means true.
    #[arg(long, env = "ACCEL_ALLOW_CLIENT_SHM", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub allow_client_shm: bool,

    /// The directory system shared-memory keys name files in: a key is one file name there (leading
    /// slashes dropped, as POSIX shm_open does), a regular file, not a symlink, owned by this server's
    /// user or by a --shm-allowed-uid.
    #[arg(long, env = "ACCEL_SHM_DIR", value_name = "DIR", default_value = "/dev/shm")]
    pub shm_dir: PathBuf,

    /// A user id, besides the server's own, whose shared-memory objects may be registered (the
    /// predictor container's user); repeat the flag or separate ids with commas.
    #[arg(
        long = "shm-allowed-uid",
        env = "ACCEL_SHM_ALLOWED_UIDS",
        value_name = "UID",
        value_delimiter = ','
    )]
    pub shm_allowed_uids: Vec<u32>,

    /// Shared-memory regions registered at once (system and CUDA together); registering more fails
    /// with RESOURCE_EXHAUSTED.
    #[arg(long, env = "ACCEL_SHM_MAX_REGIONS", default_value_t = 1024)]
    pub shm_max_regions: usize,
}

/// Where a listener binds: an IP address (with the listener's port) or a Unix domain socket's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddress {
    Ip(IpAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for ListenAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            // gRPC's target syntax allows unix:path and unix:///abs/path; both name the same file.
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err("unix: needs a socket path, as in unix:/run/accel/grpc.sock".into());
            }
            return Ok(ListenAddress::Unix(PathBuf::from(path)));
        }
        s.parse::<IpAddr>()
            .map(ListenAddress::Ip)
            .map_err(|_| format!("'{s}' is neither an IP address nor unix:/path/to.sock"))
    }
}

impl std::fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddress::Ip(ip) => write!(f, "{ip}"),
            ListenAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

fn parse_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(format!("'{s}' is not permission bits in octal (such as 660)")),
    }
}

impl Config {
    /// The `--load-model` names, without empty ones.
    pub fn models_to_load(&self) -> Vec<String> {
        names(&self.load_models)
    }

    /// The `--pin-model` names, without empty ones.
    pub fn models_to_pin(&self) -> Vec<String> {
        names(&self.pin_models)
    }

    /// Checks what can be checked before binding anything.
    pub fn validate(&self) -> Result<(), String> {
        match std::fs::metadata(&self.model_repository) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "--model-repository {} is not a directory",
                    self.model_repository.display()
                ));
            }
            Err(e) => {
                return Err(format!("--model-repository {}: {e}", self.model_repository.display()));
            }
        }
        if self.model_control_mode == ControlMode::Explicit && self.models_to_load().is_empty() {
            tracing::warn!("--model-control-mode explicit without --load-model: no model will be loaded");
        }
        if self.grpc_max_message_bytes < 1024 {
            return Err(format!(
                "--grpc-max-message-bytes {} is too small",
                self.grpc_max_message_bytes
            ));
        }
        if self.max_queued_requests == 0 {
            return Err("--max-queued-requests must be at least 1".into());
        }
        if self.metrics_interval_ms == 0 {
            return Err("--metrics-interval-ms must be at least 1".into());
        }
        let tcp = |a: &ListenAddress| matches!(a, ListenAddress::Ip(_));
        let ports = [
            ("--grpc-port", tcp(&self.grpc_address).then_some(self.grpc_port)),
            (
                "--http-port",
                (self.allow_http && tcp(&self.http_address)).then_some(self.http_port),
            ),
            ("--metrics-port", self.allow_metrics.then_some(self.metrics_port)),
        ];
        for (i, (a, pa)) in ports.iter().enumerate() {
            for (b, pb) in &ports[i + 1..] {
                if let (Some(x), Some(y)) = (pa, pb)
                    && x == y
                    && *x != 0
                {
                    return Err(format!("{a} and {b} are both {x}"));
                }
            }
        }
        if let (ListenAddress::Unix(a), ListenAddress::Unix(b)) = (&self.grpc_address, &self.http_address)
            && self.allow_http
            && a == b
        {
            return Err(format!(
                "--grpc-address and --http-address are both unix:{}",
                a.display()
            ));
        }
        if self.shm_max_regions == 0 || self.shm_max_regions > crate::shm::MAX_REGIONS {
            return Err(format!(
                "--shm-max-regions must be between 1 and {}",
                crate::shm::MAX_REGIONS
            ));
        }
        if self.intra_op_threads == 0 {
            return Err("--intra-op-threads must be at least 1".into());
        }
        if let Some(bad) = self
            .models_to_load()
            .into_iter()
            .chain(self.models_to_pin())
            .find(|n| n.contains('/') || n.starts_with('.'))
        {
            return Err(format!("--load-model or --pin-model '{bad}' is not a model name"));
        }
        if self.model_load_timeout_secs == 0 {
            return Err("--model-load-timeout-secs must be at least 1".into());
        }
        if self.max_loop_iterations == 0 {
            return Err("--max-loop-iterations must be at least 1".into());
        }
        if self.max_execution_work == 0 {
            return Err("--max-execution-work must be at least 1".into());
        }
        for (flag, secs) in [
            ("--http-header-timeout-secs", self.http_header_timeout_secs),
            ("--http-body-timeout-secs", self.http_body_timeout_secs),
        ] {
            if secs == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        for (flag, n) in [
            ("--http-max-connections", self.http_max_connections),
            ("--grpc-max-connections", self.grpc_max_connections),
            ("--metrics-max-connections", self.metrics_max_connections),
        ] {
            if n == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        Ok(())
    }
}

fn names(list: &[String]) -> Vec<String> {
    list.iter()
        .filter(|n| !n.trim().is_empty())
        .map(|n| n.trim().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_flags_parse() {
        let cli = Cli::try_parse_from([
            "accel",
            "serve",
            "--model-repository",
            "/tmp",
            "--load-model",
            "a,b",
            "--load-model",
            "c",
        ])
        .unwrap();
        let c = cli.command.serve().expect("serve");
        assert_eq!(c.grpc_port, 8001);
        assert_eq!(c.grpc_address.to_string(), "127.0.0.1");
        assert_eq!(c.load_models, vec!["a", "b", "c"]);
        assert_eq!(c.model_control_mode, ControlMode::OnDemand);
        assert_eq!(c.memory_budget, MemorySize::Percent(80.0));
        assert!(c.validate().is_ok());
        assert!(!c.allow_client_shm);
        assert_eq!(c.unix_socket_mode, 0o660);
    }

    #[test]
    fn unix_addresses_and_shm_flags_parse() {
        let cli = Cli::try_parse_from([
            "accel",
            "serve",
            "--model-repository",
            "/tmp",
            "--grpc-address",
            "unix:///run/a.sock",
            "--http-address",
            "unix:/run/b.sock",
            "--unix-socket-mode",
            "600",
            "--allow-client-shm",
            "--shm-allowed-uid",
            "1000,1001",
        ])
        .unwrap();
        let c = cli.command.serve().expect("serve");
        assert_eq!(c.grpc_address, ListenAddress::Unix("/run/a.sock".into()));
        assert_eq!(c.http_address, ListenAddress::Unix("/run/b.sock".into()));
        assert_eq!(c.unix_socket_mode, 0o600);
        assert!(c.allow_client_shm);
        assert_eq!(c.shm_allowed_uids, [1000, 1001]);
        assert!(c.validate().is_ok());
        let off = Cli::try_parse_from([
            "accel",
            "serve",
            "--model-repository",
            "/tmp",
            "--allow-client-shm=false",
        ]);
        assert!(!off.unwrap().command.serve().expect("serve").allow_client_shm);
        for bad in [
            ["--grpc-address", "unix:"],
            ["--unix-socket-mode", "999"],
            ["--grpc-address", "localhost"],
        ] {
            let mut args = vec!["accel", "serve", "--model-repository", "/tmp"];
            args.extend(bad);
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?}");
        }
        let same = Cli::try_parse_from([
            "accel",
            "serve",
            "--model-repository",
            "/tmp",
            "--grpc-address",
            "unix:/run/a.sock",
            "--http-address",
            "unix:/run/a.sock",
        ])
        .unwrap();
        assert!(same.command.serve().expect("serve").validate().is_err());
    }

    #[test]
    fn invalid_values_are_refused() {
        assert!(Cli::try_parse_from(["accel", "serve", "--model-repository", "/tmp", "--grpc-port", "70000"]).is_err());
        assert!(
            Cli::try_parse_from([
                "accel",
                "serve",
                "--model-repository",
                "/tmp",
                "--model-control-mode",
                "poll"
            ])
            .is_err()
        );
        let cli = Cli::try_parse_from(["accel", "serve", "--model-repository", "/nonexistent/repo"]).unwrap();
        let c = cli.command.serve().expect("serve");
        assert!(c.validate().unwrap_err().contains("/nonexistent/repo"));
    }
}

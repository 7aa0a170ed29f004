//! The network side: gRPC (`grpc`), REST (`http`), Prometheus metrics (`metrics_endpoint`) and health
//! (`health`), all over one inference path (`infer`) and one set of answers (`answers`), with the
//! error-to-status mapping in one place (`status`). `run` also owns the lifecycle a Kubernetes pod
//! needs: readiness, and the drain on SIGTERM (`lifecycle`).

mod answers;
mod authority;
mod convert;
mod grpc;
mod health;
mod http;
mod infer;
mod lifecycle;
mod listen;
mod metrics_endpoint;
mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use accel_proto::health::health_server::HealthServer;
use accel_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::batching::QueueLimits;
use crate::config::{Config, ListenAddress};
use crate::repository::Repository;
use crate::residency::{LoadOptions, Registry};

pub use answers::EXTENSIONS;
/// Decodes a ModelInferRequest into the core request (public for the hot-path micro-benchmarks).
pub use convert::infer_request as decode_infer_request;
pub use grpc::InferenceService;
pub use health::HealthService;
pub use infer::{Decoded, Inference, Ticket};
pub use lifecycle::Lifecycle;
pub use listen::Listener;

/// The Unix-socket gRPC header rewriter over a client's bytes (for the fuzz targets).
#[doc(hidden)]
pub fn fuzz_grpc_authority(input: &[u8]) {
    let _ = authority::rewrite_all(input);
}

/// The REST decoder and encoder on one body (for the fuzz targets, `crate::fuzzing`).
#[doc(hidden)]
pub fn fuzz_rest_body(header_length: Option<&str>, body: bytes::Bytes, spec: &crate::core::ModelSpec) {
    http::fuzz_body(header_length, body, spec);
}

/// The registry a configuration describes (nothing loaded yet), scheduling the memory of the device
/// models run on: the GPU `--gpu` names when it is usable, else the host's.
pub fn registry(config: &Config) -> Result<Arc<Registry>, String> {
    let repository = Repository::open(&config.model_repository).map_err(|e| e.to_string())?;
    let placement = crate::device::gpu::Placement::select(config.gpu);
    let options = LoadOptions {
        control_mode: config.model_control_mode,
        load_models: config.models_to_load(),
        pinned: config.models_to_pin(),
        default_max_batch_size: config.default_max_batch_size,
        queue_limits: QueueLimits {
            max_queued: config.max_queued_requests,
            executor_spin: Duration::from_micros(config.executor_spin_us),
        },
        load_threads: config.model_load_threads,
        memory_budget: config.memory_budget,
        memory_reserve: config.memory_reserve,
        host_cache: config.host_cache_size,
        load_timeout: Duration::from_secs(config.model_load_timeout_secs),
        onnxruntime_library: config.onnxruntime_library.clone(),
        default_backend: config.default_backend,
        intra_op_threads: config.intra_op_threads,
        device: placement.device,
        gpu: placement.gpu,
        exec_limits: crate::backend::ExecLimits {
            max_bytes: u64::MAX,
            max_loop_iterations: config.max_loop_iterations,
            max_work: config.max_execution_work,
        },
        max_execution_memory: config.max_execution_memory,
        load_limits: crate::backend::LoadLimits {
            max_loop_iterations: config.max_loop_iterations,
            ..Default::default()
        },
    };
    Ok(Arc::new(Registry::new(repository, options, placement.memory)?))
}

/// The largest HTTP/2 frame gRPC clients may send (SETTINGS_MAX_FRAME_SIZE): with the protocol's
/// default, 16 KiB, a 1 MiB tensor is 64 DATA frames to parse; clients built on gRPC's C core send
/// frames as large as the server allows.
const MAX_FRAME_SIZE: u32 = 1 << 20;

/// The bound sockets: gRPC always, REST and metrics when enabled.
#[derive(Debug)]
pub struct Listeners {
    pub grpc: Listener,
    pub http: Option<Listener>,
    pub metrics: Option<TcpListener>,
}

async fn bind_tcp(ip: std::net::IpAddr, port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::new(ip, port))
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot bind {ip}:{port}: {e}")))
}

impl Listeners {
    /// Binds every port and socket the configuration asks for.
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        let bind = |address: &ListenAddress, port| {
            let address = address.clone();
            async move {
                match address {
                    ListenAddress::Ip(ip) => Ok(Listener::Tcp(bind_tcp(ip, port).await?)),
                    ListenAddress::Unix(path) => listen::bind_unix(&path, config.unix_socket_mode),
                }
            }
        };
        Ok(Listeners {
            grpc: bind(&config.grpc_address, config.grpc_port).await?,
            http: if config.allow_http {
                Some(bind(&config.http_address, config.http_port).await?)
            } else {
                None
            },
            metrics: if config.allow_metrics {
                Some(bind_tcp(config.metrics_address, config.metrics_port).await?)
            } else {
                None
            },
        })
    }

    /// The gRPC listener's TCP address (`None` on a Unix socket).
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.tcp_addr()
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(Listener::tcp_addr)
    }

    /// Where gRPC, REST and metrics listen, for the log.
    pub fn describe(&self) -> [String; 3] {
        let off = || "off".to_string();
        [
            self.grpc.describe(),
            self.http.as_ref().map_or_else(off, Listener::describe),
            self.metrics
                .as_ref()
                .and_then(|l| l.local_addr().ok())
                .map_or_else(off, |a| a.to_string()),
        ]
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Every accepted request was answered before the exit timeout.
    Drained,
    /// The exit timeout passed with requests still running.
    TimedOut { in_flight: usize },
}

/// Serves until `signal` completes, then drains: readiness turns false, new requests are refused,
/// accepted ones finish (up to `--exit-timeout-secs`), and the servers stop.
pub async fn run(
    config: &Config,
    registry: Arc<Registry>,
    listeners: Listeners,
    signal: impl Future<Output = ()> + Send,
) -> Result<Exit, String> {
    let lifecycle = Lifecycle::new();
    let shm = Arc::new(crate::shm::SharedMemory::new(crate::shm::Policy {
        allowed: config.allow_client_shm,
        dir: config.shm_dir.clone(),
        uids: config.shm_allowed_uids.clone(),
        max_regions: config.shm_max_regions,
    }));
    let inference = Inference::new(registry.clone(), lifecycle.clone(), shm);
    let loader = registry.clone();
    std::thread::Builder::new()
        .name("accel-load".into())
        .stack_size(crate::residency::LOADER_STACK)
        .spawn(move || loader.start())
        .map_err(|e| format!("cannot start the loading thread: {e}"))?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let mut servers = tokio::task::JoinSet::new();
    let limit = config.grpc_max_message_bytes;
    let grpc = GrpcInferenceServiceServer::new(InferenceService::new(inference.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let health = HealthServer::new(HealthService::new(inference.clone()));
    listen::raise_open_files(
        config.grpc_max_connections
            + if config.allow_http {
                config.http_max_connections
            } else {
                0
            }
            + if config.allow_metrics {
                config.metrics_max_connections
            } else {
                0
            },
    );
    // Within the connection limit; TCP_NODELAY, since small tensors must not wait for delayed ACKs
    // (Nagle: 40 ms per request otherwise); TCP keep-alive finds dead peers.
    let incoming = listen::grpc_incoming(listeners.grpc, config.grpc_max_connections);
    let shutdown = stopped();
    servers.spawn(async move {
        tonic::transport::Server::builder()
            .initial_connection_window_size(16 * 1024 * 1024)
            .initial_stream_window_size(4 * 1024 * 1024)
            .max_frame_size(MAX_FRAME_SIZE)
            .add_service(grpc)
            .add_service(health)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .map_err(|e| format!("gRPC server: {e}"))
    });
    let http_limits = |max_connections| listen::ConnLimits {
        max_connections,
        header_timeout: Duration::from_secs(config.http_header_timeout_secs),
    };
    if let Some(listener) = listeners.http {
        let body = http::BodyLimits {
            max_bytes: config.http_max_body_bytes,
            timeout: Duration::from_secs(config.http_body_timeout_secs),
        };
        let router = http::router(inference.clone(), body);
        servers.spawn(listen::serve_http(
            listener,
            router,
            http_limits(config.http_max_connections),
            stopped(),
            "REST",
        ));
    }
    if let Some(listener) = listeners.metrics
        && let Some(handle) = crate::metrics::install()
    {
        servers.spawn(listen::serve_http(
            Listener::Tcp(listener),
            metrics_endpoint::router(handle),
            http_limits(config.metrics_max_connections),
            stopped(),
            "metrics",
        ));
        let interval = Duration::from_millis(config.metrics_interval_ms);
        tokio::spawn(metrics_endpoint::sample(
            handle,
            registry.clone(),
            lifecycle.clone(),
            interval,
            stopped(),
        ));
    }

    // Serve until the signal (or until a server fails on its own).
    tokio::select! {
        _ = signal => {}
        Some(done) = servers.join_next() => {
            let _ = stop_tx.send(true);
            return Err(match done {
                Ok(Ok(())) => "a server stopped unexpectedly".to_string(),
                Ok(Err(e)) => e,
                Err(e) => format!("a server task failed: {e}"),
            });
        }
    }
    lifecycle.start_drain();
    let timeout = Duration::from_secs(config.exit_timeout_secs);
    tracing::info!(
        in_flight = lifecycle.in_flight(),
        timeout_secs = config.exit_timeout_secs,
        "draining: not ready, refusing new requests"
    );
    let exit = if lifecycle.drained(timeout).await {
        Exit::Drained
    } else {
        Exit::TimedOut {
            in_flight: lifecycle.in_flight(),
        }
    };
    let _ = stop_tx.send(true);
    // Connections close once their last response is written; do not wait on idle clients forever.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(done) = servers.join_next().await {
            if let Ok(Err(e)) = done {
                tracing::warn!(error = %e, "server stopped with an error");
            }
        }
    })
    .await;
    Ok(exit)
}

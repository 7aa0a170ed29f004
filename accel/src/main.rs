//! The `accel` binary: parse and check the configuration before binding anything (an invalid one
//! exits 64), set up logging and the compute thread count, then serve until SIGINT or SIGTERM, drain,
//! and exit 0 once every accepted request is answered.

use std::process::ExitCode;

use accel::config::{Cli, Command, Config};
use accel::server::{Exit, Listeners};
use clap::Parser;

// mimalloc: cheaper small allocations than glibc's malloc on the request path (measured in
// BENCHMARKS.md), and freed memory returns to the system. Counted per thread so that a model load
// measures what it holds (accel::alloc).
#[global_allocator]
static ALLOCATOR: accel::alloc::Counting<mimalloc::MiMalloc> = accel::alloc::Counting(mimalloc::MiMalloc);

/// Frees what mimalloc holds for later reuse: delayed purges, and pages of threads that have exited
/// (model loads run on short-lived threads).
#[allow(unsafe_code)]
fn mimalloc_release() {
    // SAFETY: mi_collect takes no pointers and may be called from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// `EX_USAGE`: the configuration is invalid.
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    accel::alloc::set_release_hook(mimalloc_release);
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            return if usage {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Serve(config) => serve(config),
        #[cfg(feature = "cuda")]
        Command::GpuCheck(args) => {
            accel::logging::init(0, accel::logging::LogFormat::Text);
            match accel::gpu_check::run(&args) {
                Ok((table, ok)) => {
                    print!("{table}");
                    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
                }
                Err(e) => {
                    eprintln!("accel gpu-check: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// candle sizes its CPU thread pools from `RAYON_NUM_THREADS` when they are first used.
#[allow(unsafe_code, clippy::disallowed_methods)]
fn set_compute_threads(n: usize) {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: called from `main` before any other thread exists (the runtime is built after).
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
}

fn serve(config: Config) -> ExitCode {
    accel::logging::init(config.log_verbose, config.log_format);
    if let Err(e) = config.validate() {
        eprintln!("accel: invalid configuration: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    set_compute_threads(config.intra_op_threads);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all().thread_name("accel-io");
    if config.server_threads > 0 {
        runtime.worker_threads(config.server_threads);
    }
    let runtime = match runtime.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("accel: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let registry = match accel::server::registry(&config) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("accel: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        };
        let shutdown = shutdown_signal();
        let listeners = match Listeners::bind(&config).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("accel: {e}");
                return ExitCode::FAILURE;
            }
        };
        let [grpc, http, metrics] = listeners.describe();
        tracing::info!(
            grpc = %grpc,
            http = %http,
            metrics = %metrics,
            repository = %config.model_repository.display(),
            "listening"
        );
        match accel::server::run(&config, registry, listeners, shutdown).await {
            Ok(Exit::Drained) => {
                tracing::info!("drained; exiting");
                ExitCode::SUCCESS
            }
            Ok(Exit::TimedOut { in_flight }) => {
                tracing::error!(in_flight, "exit timeout reached with requests still running");
                ExitCode::FAILURE
            }
            Err(e) => {
                tracing::error!(error = %e, "server failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// Resolves on SIGINT or SIGTERM (Kubernetes sends SIGTERM to start a graceful shutdown). The handlers
/// are installed when this is called, not when the future is first polled: called before anything is
/// bound, a SIGTERM that arrives right after readiness drains the server instead of killing it.
#[cfg(unix)]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (term, interrupt) {
            (Ok(mut t), Ok(mut i)) => {
                tokio::select! {
                    _ = t.recv() => {}
                    _ = i.recv() => {}
                }
            }
            (Ok(mut t), Err(_)) => {
                t.recv().await;
            }
            (Err(_), Ok(mut i)) => {
                i.recv().await;
            }
            (Err(_), Err(_)) => std::future::pending::<()>().await,
        }
        tracing::info!("shutdown signal received");
    }
}

#[cfg(not(unix))]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown signal received");
    }
}

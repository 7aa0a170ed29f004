//! The `accel` binary: parse and check the configuration before binding anything (an invalid one
//! exits 64), set up logging and the compute thread count, then serve until SIGINT or SIGTERM.

use std::process::ExitCode;

use accel::config::{Cli, Command, Config};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// `EX_USAGE`: the configuration is invalid.
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
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
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("ACCEL_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},h2=info,tower=info,hyper=info")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
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
    init_logging(config.log_verbose);
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
        let listener = match accel::server::bind(&config).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "accel: cannot bind gRPC on {}:{}: {e}",
                    config.grpc_address, config.grpc_port
                );
                return ExitCode::FAILURE;
            }
        };
        match listener.local_addr() {
            Ok(addr) => tracing::info!(%addr, repository = %config.model_repository.display(), "gRPC server listening"),
            Err(e) => tracing::warn!(error = %e, "gRPC server listening on an unknown address"),
        }
        tracing::info!(
            http_port = config.http_port,
            metrics_port = config.metrics_port,
            "REST and metrics endpoints are not served yet"
        );
        match accel::server::serve(&config, registry, listener, shutdown_signal()).await {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "server failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// Resolves on SIGINT or SIGTERM (Kubernetes sends SIGTERM to start a graceful shutdown).
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("shutdown signal received");
}

//! `/metrics` for Prometheus on its own port, and the sampler that refreshes the gauges which are
//! readings rather than events (CPU utilisation, host and GPU memory, executor duty cycles, the drain
//! flag) and folds recorded histogram samples into their buckets.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use super::lifecycle::Lifecycle;
use crate::device::host::{CpuTimes, HostMemory};
use crate::device::memory::DeviceMemory;
use crate::residency::Registry;

pub(super) fn router(handle: &'static PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || async move {
            (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                handle.render(),
            )
                .into_response()
        }),
    )
}

/// Samples the reading gauges every `interval` until `stop` completes.
pub(super) async fn sample(
    handle: &'static PrometheusHandle,
    registry: Arc<Registry>,
    lifecycle: Arc<Lifecycle>,
    interval: Duration,
    stop: impl Future<Output = ()>,
) {
    let (cpu, mem_total, mem_used, draining) = crate::metrics::host_gauges();
    let gpus: Vec<_> = match crate::device::nvml::gpus() {
        Ok(gpus) => gpus
            .into_iter()
            .enumerate()
            .map(|(i, g)| (g, crate::metrics::gpu_gauges(i as u32)))
            .collect(),
        Err(reason) => {
            tracing::info!(%reason, "no GPU metrics");
            Vec::new()
        }
    };
    let mut previous = CpuTimes::read();
    let mut ticker = tokio::time::interval(interval);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticker.tick() => {}
        }
        let now = CpuTimes::read();
        if let (Some(p), Some(n)) = (previous, now) {
            cpu.set(n.utilization_since(&p));
        }
        previous = now;
        if let Some(m) = HostMemory::read() {
            mem_total.set(m.total as f64);
            mem_used.set(m.used as f64);
        }
        for (gpu, (utilization, total, used)) in &gpus {
            if let Ok(r) = gpu.read() {
                total.set(r.total as f64);
                used.set(r.used as f64);
            }
            if let Ok(u) = gpu.utilization() {
                utilization.set(u);
            }
        }
        if let Ok(models) = registry.statistics("", "") {
            for (_, _, stats) in models {
                stats.sample_duty_cycle();
            }
        }
        draining.set(if lifecycle.draining() { 1.0 } else { 0.0 });
        // Histogram samples accumulate until drained into their buckets: without this, memory grows
        // with every request between scrapes.
        handle.run_upkeep();
    }
}

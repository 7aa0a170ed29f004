//! The inference path every protocol front end shares: admission (refused while draining), the
//! model's lease, decoding against the model, validation, the scheduler. gRPC and REST differ only in
//! how they decode requests and encode answers.

use std::sync::Arc;
use std::time::Instant;

use crate::core::{Error, InferRequest, InferResponse, ModelSpec, validate};
use crate::metrics::FailureReason;
use crate::residency::Registry;

use super::lifecycle::Lifecycle;

/// The protocol-neutral inference entry point.
#[derive(Debug, Clone)]
pub struct Inference {
    pub registry: Arc<Registry>,
    pub lifecycle: Arc<Lifecycle>,
}

impl Inference {
    pub fn new(registry: Arc<Registry>, lifecycle: Arc<Lifecycle>) -> Self {
        Inference { registry, lifecycle }
    }

    /// Whether the server takes requests: models loaded at start and not draining.
    pub fn ready(&self) -> bool {
        self.registry.started() && !self.lifecycle.draining()
    }

    /// Runs one request on `model`/`version`; `decode` turns the wire request into an
    /// [`InferRequest`] once the model is known.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future (the client went away) releases the admission and the lease; a queued
    /// request is then skipped by the batcher without being computed.
    pub async fn infer(
        &self,
        model: &str,
        version: &str,
        decode: impl FnOnce(&ModelSpec) -> Result<InferRequest, Error>,
    ) -> Result<InferResponse, Error> {
        let received = Instant::now();
        let _admission = self.lifecycle.admit()?;
        let lease = self.registry.acquire(model, version).await?;
        let fail = |e: Error| {
            lease.stats.record_failure(received.elapsed(), FailureReason::Other);
            e
        };
        let request = decode(&lease.spec).map_err(fail)?;
        let id = request.id.clone();
        let validated = validate(&lease.spec, request).map_err(|e| fail(e.into()))?;
        let outputs = lease.scheduler.infer(validated, received).await?;
        Ok(InferResponse {
            model_name: lease.spec.name.clone(),
            model_version: lease.spec.version.to_string(),
            id,
            outputs,
        })
    }
}

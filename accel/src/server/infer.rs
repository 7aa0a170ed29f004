//! The inference path every protocol front end shares: admission (refused while draining), the
//! model's lease, decoding against the model, validation, the scheduler. gRPC and REST differ only in
//! how they decode requests and encode answers. The model is looked up before anything of the
//! request's tensors is decoded, so a request for an unknown model costs nothing but its envelope.

use std::sync::Arc;
use std::time::Instant;

use crate::core::{Error, InferRequest, InferResponse, ModelSpec, validate};
use crate::metrics::FailureReason;
use crate::residency::{Lease, Registry};

use super::lifecycle::{Admission, Lifecycle};

/// The protocol-neutral inference entry point.
#[derive(Debug, Clone)]
pub struct Inference {
    pub registry: Arc<Registry>,
    pub lifecycle: Arc<Lifecycle>,
}

/// An admitted request whose model is resident: decode it against [`Ticket::spec`], then run it.
#[derive(Debug)]
pub struct Ticket {
    _admission: Admission,
    lease: Lease,
    received: Instant,
}

impl Inference {
    pub fn new(registry: Arc<Registry>, lifecycle: Arc<Lifecycle>) -> Self {
        Inference { registry, lifecycle }
    }

    /// Whether the server takes requests: models loaded at start and not draining.
    pub fn ready(&self) -> bool {
        self.registry.started() && !self.lifecycle.draining()
    }

    /// Admits a request for `model`/`version` and takes the model's lease (loading it on demand).
    pub async fn begin(&self, model: &str, version: &str) -> Result<Ticket, Error> {
        let received = Instant::now();
        let admission = self.lifecycle.admit()?;
        let lease = self.registry.acquire(model, version).await?;
        Ok(Ticket {
            _admission: admission,
            lease,
            received,
        })
    }

    /// Runs one request on `model`/`version`; `decode` turns the wire request into an
    /// [`InferRequest`] once the model is known.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future (the client went away) releases the admission and the lease; a queued
    /// request is then skipped by the batcher without being computed, and an execution whose
    /// requests are all gone stops between operators.
    pub async fn infer(
        &self,
        model: &str,
        version: &str,
        decode: impl FnOnce(&ModelSpec) -> Result<InferRequest, Error>,
    ) -> Result<InferResponse, Error> {
        let ticket = self.begin(model, version).await?;
        let request = decode(ticket.spec()).map_err(|e| ticket.failed(e))?;
        ticket.run(request).await
    }
}

impl Ticket {
    /// The model the request is for.
    pub fn spec(&self) -> &Arc<ModelSpec> {
        &self.lease.spec
    }

    /// Records a request that could not be decoded, and gives its error back.
    pub fn failed(&self, e: Error) -> Error {
        self.lease
            .stats
            .record_failure(self.received.elapsed(), FailureReason::Other);
        e
    }

    /// Validates and runs the decoded request.
    pub async fn run(self, request: InferRequest) -> Result<InferResponse, Error> {
        let id = request.id.clone();
        let validated = validate(&self.lease.spec, request).map_err(|e| self.failed(e.into()))?;
        let outputs = self.lease.scheduler.infer(validated, self.received).await?;
        Ok(InferResponse {
            model_name: self.lease.spec.name.clone(),
            model_version: self.lease.spec.version.to_string(),
            id,
            outputs,
        })
    }
}

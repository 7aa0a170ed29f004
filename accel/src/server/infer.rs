//! The inference path every protocol front end shares: admission (refused while draining), the
//! model's lease, decoding against the model, validation, the scheduler. gRPC and REST differ only in
//! how they decode requests and encode answers. The model is looked up before anything of the
//! request's tensors is decoded, so a request for an unknown model costs nothing but its envelope.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;

use crate::backend::Prepare;
use crate::batching::SubmitError;
use crate::core::{Code, Error, InferRequest, InferResponse, ModelSpec, ValidatedRequest, validate};
use crate::metrics::FailureReason;
use crate::residency::{Lease, Registry};

use super::lifecycle::{Admission, Lifecycle};

/// The protocol-neutral inference entry point.
#[derive(Debug, Clone)]
pub struct Inference {
    pub registry: Arc<Registry>,
    pub lifecycle: Arc<Lifecycle>,
    /// Blocking threads preparing requests (tokenizing) at once: two per core (measured: with one
    /// per core, four models in one server ran at 0.92x of four servers; with two, 0.99x), so
    /// that preparation never queues far more work than the machine runs.
    preparing: Arc<Semaphore>,
}

/// An admitted request whose model is resident: decode it against [`Ticket::spec`], then run it.
#[derive(Debug)]
pub struct Ticket {
    _admission: Admission,
    lease: Lease,
    received: Instant,
    preparing: Arc<Semaphore>,
}

impl Inference {
    pub fn new(registry: Arc<Registry>, lifecycle: Arc<Lifecycle>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Inference {
            registry,
            lifecycle,
            preparing: Arc::new(Semaphore::new(2 * cores)),
        }
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
            preparing: self.preparing.clone(),
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

    /// Validates, prepares and runs the decoded request. A ticket may run several requests (the
    /// OpenAI route sends each text as its own, so that batching sees them apart).
    pub async fn run(&self, request: InferRequest) -> Result<InferResponse, Error> {
        let id = request.id.clone();
        // The engine's step reads the request's parameters, which validation consumes.
        let prepare = self.lease.prepare.clone().map(|p| (p, request.parameters.clone()));
        let mut validated = validate(&self.lease.spec, request).map_err(|e| self.failed(e.into()))?;
        if let Some((prepare, parameters)) = prepare {
            validated = self
                .prepare(prepare, validated, parameters)
                .await
                .map_err(|e| self.failed(e))?;
        }
        let outputs = self.lease.scheduler.infer(validated, self.received).await?;
        Ok(InferResponse {
            model_name: self.lease.spec.name.clone(),
            model_version: self.lease.spec.version.to_string(),
            id,
            outputs,
        })
    }

    /// The engine's preparation of a request (tokenizing its text): inline when it is cheap, else on
    /// a blocking thread, at most two per core at once.
    async fn prepare(
        &self,
        prepare: Arc<dyn Prepare>,
        request: ValidatedRequest,
        parameters: crate::core::Parameters,
    ) -> Result<ValidatedRequest, Error> {
        let spec = self.lease.spec.clone();
        let failed = |source| {
            Error::from(SubmitError::Backend {
                model: spec.name.clone(),
                source,
            })
        };
        if !prepare.is_heavy(&request) {
            return prepare.prepare(&spec, request, &parameters).map_err(failed);
        }
        let permit = self
            .preparing
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::new(Code::Unavailable, "the server is shutting down"))?;
        let task_spec = spec.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            // Held by the work itself: a client that goes away does not free its slot early.
            let _permit = permit;
            prepare.prepare(&task_spec, request, &parameters)
        })
        .await
        .map_err(|e| Error::new(Code::Internal, format!("preparing the request failed: {e}")))?;
        prepared.map_err(failed)
    }
}

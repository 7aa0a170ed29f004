//! The inference path every protocol front end shares: admission (refused while draining), the
//! model's lease, decoding against the model, validation, the scheduler. gRPC and REST differ only in
//! how they decode requests and encode answers. The model is looked up before anything of the
//! request's tensors is decoded, so a request for an unknown model costs nothing but its envelope.
//! Tensors placed in client shared memory are bound here, for both protocols: inputs become the
//! region's bytes before validation, outputs are written into their regions after the run.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;

use crate::backend::Prepare;
use crate::batching::SubmitError;
use crate::core::{Code, Error, InferRequest, InferResponse, ModelSpec, ValidatedRequest, validate};
use crate::metrics::FailureReason;
use crate::residency::split::MAX_ROUTING_KEY;
use crate::residency::{Lease, Registry, Route};
use crate::shm::{self, Bound, SharedMemory, TensorRef};

use super::lifecycle::{Admission, Lifecycle};

/// The protocol-neutral inference entry point.
#[derive(Debug, Clone)]
pub struct Inference {
    pub registry: Arc<Registry>,
    pub lifecycle: Arc<Lifecycle>,
    /// Client shared-memory regions.
    pub shm: Arc<SharedMemory>,
    /// Blocking threads preparing requests (tokenizing) at once: two per core (measured: with one
    /// per core, four models in one server ran at 0.92x of four servers; with two, 0.99x), so
    /// that preparation never queues far more work than the machine runs.
    preparing: Arc<Semaphore>,
}

/// Outputs larger than this are written into shared memory on a blocking thread.
const INLINE_OUTPUT_BYTES: usize = 1 << 20;

/// A decoded request whose shared-memory inputs are still references: `shared` holds the index of
/// each such input in `request.inputs` (its data empty until bound) and where it lies.
#[derive(Debug, Default)]
pub struct Decoded {
    pub request: InferRequest,
    pub shared: Vec<(usize, TensorRef)>,
}

impl From<InferRequest> for Decoded {
    fn from(request: InferRequest) -> Decoded {
        Decoded {
            request,
            shared: Vec::new(),
        }
    }
}

/// An admitted request whose model is resident: decode it against [`Ticket::spec`], then run it.
#[derive(Debug)]
pub struct Ticket {
    _admission: Admission,
    lease: Lease,
    received: Instant,
    preparing: Arc<Semaphore>,
    shm: Arc<SharedMemory>,
}

impl Inference {
    pub fn new(registry: Arc<Registry>, lifecycle: Arc<Lifecycle>, shm: Arc<SharedMemory>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Inference {
            registry,
            lifecycle,
            shm,
            preparing: Arc::new(Semaphore::new(2 * cores)),
        }
    }

    /// Whether the server takes requests: models loaded at start and not draining.
    pub fn ready(&self) -> bool {
        self.registry.started() && !self.lifecycle.draining()
    }

    /// Admits a request for `model`/`version` and takes the model's lease (loading it on demand).
    /// An empty version follows the model's split between its versions, by `routing_key` when
    /// the request gives one.
    pub async fn begin(&self, model: &str, version: &str, routing_key: Option<&str>) -> Result<Ticket, Error> {
        let received = Instant::now();
        let admission = self.lifecycle.admit()?;
        if let Some(key) = routing_key
            && key.len() > MAX_ROUTING_KEY
        {
            return Err(Error::invalid_argument(format!(
                "the routing key is {} bytes, more than {MAX_ROUTING_KEY}",
                key.len()
            )));
        }
        let lease = self
            .registry
            .acquire_for(model, version, Route::Split(routing_key))
            .await?;
        Ok(Ticket {
            _admission: admission,
            lease,
            received,
            preparing: self.preparing.clone(),
            shm: self.shm.clone(),
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
        routing_key: Option<&str>,
        decode: impl FnOnce(&ModelSpec) -> Result<Decoded, Error>,
    ) -> Result<InferResponse, Error> {
        let ticket = self.begin(model, version, routing_key).await?;
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

    /// Binds the request's shared memory, validates, prepares and runs it, and writes the outputs
    /// placed in shared memory (their data in the response is then empty). A ticket may run several
    /// requests (the OpenAI route sends each text as its own, so that batching sees them apart).
    pub async fn run(&self, decoded: impl Into<Decoded>) -> Result<InferResponse, Error> {
        let Decoded { mut request, shared } = decoded.into();
        let bound = self.bind(&mut request, shared).map_err(|e| self.failed(e.into()))?;
        let mut response = self.execute(request).await?;
        if let Some(bound) = bound {
            bound.check_inputs().map_err(|e| self.failed(e.into()))?;
            if bound.has_outputs() {
                response = write_outputs(bound, response).await.map_err(|e| self.failed(e))?;
            }
        }
        Ok(response)
    }

    /// Resolves the request's shared-memory tensors: `None` when it names none.
    fn bind(
        &self,
        request: &mut InferRequest,
        shared: Vec<(usize, TensorRef)>,
    ) -> Result<Option<Bound>, shm::ShmError> {
        let mut outputs = Vec::new();
        for o in &request.outputs {
            if let Some(at) = shm::tensor_ref(&o.name, &o.parameters)? {
                if o.parameters.iter().any(|(k, _)| k == "classification") {
                    return Err(shm::ShmError::Parameter {
                        tensor: o.name.clone(),
                        reason: "output can't set both 'shared_memory_region' and 'classification'".into(),
                    });
                }
                outputs.push((o.name.clone(), at));
            }
        }
        if shared.is_empty() && outputs.is_empty() {
            return Ok(None);
        }
        let mut bound = Bound::default();
        for (index, at) in shared {
            if let Some(input) = request.inputs.get_mut(index) {
                input.data = self.shm.bind_input(&at, &mut bound)?;
            }
        }
        for (name, at) in outputs {
            self.shm.bind_output(&name, &at, &mut bound)?;
        }
        Ok(Some(bound))
    }

    async fn execute(&self, request: InferRequest) -> Result<InferResponse, Error> {
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

/// Writes each output placed in shared memory into its slot and empties its data (the response then
/// carries its name, datatype and shape only); on a blocking thread when large.
async fn write_outputs(bound: Bound, mut response: InferResponse) -> Result<InferResponse, Error> {
    let size: usize = response
        .outputs
        .iter()
        .filter(|t| bound.output(&t.name).is_some())
        .map(|t| t.data.len())
        .sum();
    let write = move || -> Result<InferResponse, Error> {
        for t in &mut response.outputs {
            if let Some(slot) = bound.output(&t.name) {
                slot.write(&t.name, &t.data)?;
                t.data = bytes::Bytes::new();
            }
        }
        Ok(response)
    };
    if size <= INLINE_OUTPUT_BYTES {
        return write();
    }
    tokio::task::spawn_blocking(write).await.map_err(|e| {
        Error::new(
            Code::Internal,
            format!("writing outputs into shared memory failed: {e}"),
        )
    })?
}

//! An executor thread: it owns one model instance, takes batches from the scheduler, concatenates the
//! inputs (`assemble`), runs the backend, splits the outputs by rows and answers each request. A panic
//! inside the backend fails that batch's requests and leaves the thread serving.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use super::queue::Pending;
use super::shared::Shared;
use super::{SubmitError, assemble};
use crate::backend::{BackendError, Cancel, ModelInstance};
use crate::core::{ModelSpec, ValidatedRequest};
use crate::metrics::FailureReason;
use crate::stats::{BatchTimes, ModelStats};

pub(super) fn run(
    spec: &ModelSpec,
    index: usize,
    mut instance: Box<dyn ModelInstance>,
    stats: &ModelStats,
    shared: &Shared,
) {
    while let Some(mut entries) = shared.next_batch(index) {
        // A client that went away while its request waited does not get compute spent on it.
        entries.retain(|p| !p.is_cancelled());
        if !entries.is_empty() {
            execute(spec, (index, instance.as_mut()), stats, shared, entries);
        }
    }
}

fn execute(
    spec: &ModelSpec,
    (index, instance): (usize, &mut dyn ModelInstance),
    stats: &ModelStats,
    shared: &Shared,
    entries: Vec<Pending>,
) {
    let started = Instant::now();
    let requests: Vec<&ValidatedRequest> = entries.iter().map(|p| &p.request).collect();
    let cancel = Cancel::new(entries.iter().map(|p| p.alive.clone()).collect());
    let batch = assemble::batch(spec, &requests, cancel);
    let assembled = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| instance.execute(&batch))).unwrap_or_else(|panic| {
        let what = crate::core::panic_message(&*panic);
        tracing::error!(model = %spec.name, %what, "backend panicked; the batch fails and the executor continues");
        Err(BackendError::Execution(format!("the backend panicked: {what}")))
    });
    let computed = Instant::now();
    let rows: usize = entries.iter().map(|p| p.request.batch_size).sum();
    let count = entries.len();
    let replies: Vec<_> = match result {
        Ok(outputs) => assemble::split(spec, &batch.outputs, outputs, &requests)
            .into_iter()
            .map(|r| {
                r.map_err(|message| SubmitError::Output {
                    model: spec.name.clone(),
                    message,
                })
            })
            .collect(),
        Err(source) => {
            let _span = entries.first().map(|p| p.span.enter());
            match &source {
                BackendError::Cancelled(_) => {
                    tracing::info!(model = %spec.name, requests = entries.len(), "batch stopped: its clients left");
                }
                _ => tracing::warn!(model = %spec.name, error = %source, requests = entries.len(), "batch failed"),
            }
            entries
                .iter()
                .map(|_| {
                    Err(SubmitError::Backend {
                        model: spec.name.clone(),
                        source: source.clone(),
                    })
                })
                .collect()
        }
    };
    let finished = Instant::now();
    stats.record_busy(finished - started);
    let tokens = spec
        .variable
        .padding
        .is_some()
        .then(|| assemble::padding_tokens(&requests));
    let ok = replies.iter().all(Result::is_ok);
    // Counted before anyone is answered: a client that reads the statistics after its answer sees
    // its execution.
    if ok {
        shared.record_slo_execution(index, rows, (finished - started).as_secs_f64());
        if let Some((real, padded)) = tokens {
            stats.record_padding(real, padded);
            shared.record_cost(padded, computed - assembled);
        }
        stats.record_execution(
            rows,
            count,
            BatchTimes {
                input: assembled - started,
                infer: computed - assembled,
                output: finished - computed,
            },
        );
    }
    for (p, reply) in entries.into_iter().zip(replies) {
        let elapsed = p.received.elapsed();
        shared.check_slo(&p);
        match &reply {
            Ok(_) => stats.record_success(elapsed),
            Err(SubmitError::Backend {
                source: BackendError::Cancelled(_),
                ..
            }) => stats.record_failure(elapsed, FailureReason::Canceled),
            Err(SubmitError::Backend { .. }) => stats.record_failure(elapsed, FailureReason::Backend),
            Err(_) => stats.record_failure(elapsed, FailureReason::Other),
        }
        let _ = p.reply.send(reply);
    }
}

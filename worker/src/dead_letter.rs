//! Dead-lettering jobs: bad input ([`reject`]: dead-lettered once with the reason; the
//! Component is told only when the payload is a valid job on its own subject), a final failure
//! ([`bury`]), and jobs JetStream stopped delivering after `max_deliver`
//! ([`watch_advisories`]). The copy is stored before the original is terminated or deleted,
//! since both remove it from the work queue.
//!
//! A payload that cannot be decoded, or that names a Component other than its subject's, tells
//! no Component: what it names cannot be believed, and a status for it would let any publisher
//! write on another tenant's Component (at any generation, freezing it).

use std::sync::Arc;

use async_nats::jetstream::message::{AckKind, Message};
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use helmq_queue::StatusSink;
use helmq_queue::dlq::{DeadLetter, dead_letter};
use helmq_queue::topology::JOBS_STREAM;
use helmq_schemas::event::{JobAction, JobEvent, StatusEvent, StatusPhase};

use crate::job::{Context, Delivery, Refused, Shared, check_subject};
use crate::metrics::JobOutcome;
use crate::readable::readable;

/// Copies a delivered job to the dead-letter stream, then terminates it.
pub(crate) async fn bury(
    ctx: &Context,
    message: &Message,
    delivery: Delivery,
    reason: String,
) -> JobOutcome {
    let letter = DeadLetter::of(
        &message.subject,
        message.payload.clone(),
        (JOBS_STREAM, delivery.sequence),
        u64::from(delivery.attempt),
        reason,
    );
    if ctx
        .persist("dead-letter the job", || dead_letter(&ctx.js, &letter))
        .await
        .is_none()
    {
        return ctx.give_back(message, None).await;
    }
    ctx.metrics.dead_letters.inc();
    ctx.settle(message, AckKind::Term).await;
    JobOutcome::Failed
}

/// Bad input: dead-letter it once with the reason and Term it; tell the Component only what
/// [`Refused::told`] allows (a valid job on its own subject that this worker refuses).
pub(crate) async fn reject<D, S: StatusSink>(
    shared: &Shared<D, S>,
    message: &Message,
    delivery: Delivery,
    refused: Refused,
) -> JobOutcome {
    let reason = refused.reason().to_owned();
    warn!(%reason, "rejecting a job");
    let ctx = &shared.ctx;
    if let Some(job) = refused.told() {
        let told = readable(reason.clone(), &reason);
        let status = rejection_status(job, &told, delivery, &ctx.settings.worker_id);
        let _ = shared.publish(&status).await;
    }
    match bury(ctx, message, delivery, reason).await {
        JobOutcome::Failed => JobOutcome::Rejected,
        other => other,
    }
}

/// The `Failed` (or `TerminationFailed` for a delete) status of a refused `job` in this
/// delivery, answering the job's id.
pub(crate) fn rejection_status(
    job: &JobEvent,
    reason: &str,
    delivery: Delivery,
    worker: &str,
) -> StatusEvent {
    let phase = match job.action {
        JobAction::Delete => StatusPhase::TerminationFailed,
        JobAction::Apply => StatusPhase::Failed,
    };
    StatusEvent::new(
        job.id.clone(),
        job.component.clone(),
        phase,
        format!("job rejected: {reason}"),
        delivery.attempt,
        worker,
        jiff::Timestamp::now(),
    )
    .for_job_sequence(delivery.sequence)
}

/// Moves jobs that reached `max_deliver` to the dead-letter stream: JetStream stops delivering
/// them but keeps them in the work queue (DESIGN §9). Every worker hears the advisory; the
/// dead letter's dedupe id (stream + sequence) makes handling it twice harmless.
pub(crate) async fn watch_advisories<D, S: StatusSink>(
    shared: Arc<Shared<D, S>>,
    mut advisories: async_nats::Subscriber,
    shutdown: CancellationToken,
) {
    let ctx = &shared.ctx;
    loop {
        let advisory = tokio::select! {
            () = shutdown.cancelled() => return,
            next = advisories.next() => match next {
                Some(advisory) => advisory,
                None => return,
            },
        };
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&advisory.payload) else {
            continue;
        };
        let Some(sequence) = value.get("stream_seq").and_then(serde_json::Value::as_u64) else {
            continue;
        };
        let deliveries = value
            .get("deliveries")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let stored = match ctx.stream.get_raw_message(sequence).await {
            Ok(stored) => stored,
            Err(e) => {
                debug!(sequence, error = %e, "max-deliveries job already gone");
                continue;
            }
        };
        let reason = format!("exceeded max_deliver ({deliveries} deliveries)");
        warn!(sequence, %reason, "moving an undeliverable job to the dead-letter stream");
        let delivery = Delivery {
            attempt: u32::try_from(deliveries).unwrap_or(u32::MAX),
            sequence,
        };
        // Told only for a valid job on its own subject, as in `reject`.
        if let Ok(job) = JobEvent::decode(&stored.payload)
            && check_subject(&stored.subject, &job).is_ok()
        {
            let status = rejection_status(&job, &reason, delivery, &ctx.settings.worker_id);
            let _ = shared.publish(&status).await;
        }
        let letter = DeadLetter::of(
            &stored.subject,
            stored.payload.clone(),
            (JOBS_STREAM, sequence),
            deliveries,
            reason,
        );
        if ctx
            .persist("dead-letter the job", || dead_letter(&ctx.js, &letter))
            .await
            .is_none()
        {
            continue;
        }
        ctx.metrics.dead_letters.inc();
        if let Err(e) = ctx.stream.delete_message(sequence).await {
            debug!(sequence, error = %e, "cannot delete the job (another worker may have)");
        }
    }
}

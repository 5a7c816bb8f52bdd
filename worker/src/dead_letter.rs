//! Dead-lettering: the dead letter of a delivered job ([`letter`], stored by [`store`] before
//! `settle` terminates the job), and jobs JetStream stopped delivering after `max_deliver`
//! ([`watch_advisories`]: stored, then deleted). The copy is stored before the original is
//! terminated or deleted, since both remove it from the work queue.
//!
//! A payload that cannot be decoded, or that names a Component other than its subject's, tells
//! no Component: what it names cannot be believed, and a status for it would let any publisher
//! write on another tenant's Component (at any generation, freezing it).

use std::sync::Arc;

use async_nats::jetstream::message::Message;
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use helmq_queue::StatusSink;
use helmq_queue::dlq::{DeadLetter, dead_letter};
use helmq_queue::topology::JOBS_STREAM;
use helmq_schemas::event::JobEvent;

use crate::admission::{check_subject, rejection_status};
use crate::context::{Context, Delivery, Shared};

/// The dead letter of a delivered job: its subject and payload, where it was in the jobs
/// stream, how often it was delivered and why it is dead.
pub(crate) fn letter(message: &Message, delivery: Delivery, reason: &str) -> DeadLetter {
    DeadLetter::of(
        &message.subject,
        message.payload.clone(),
        (JOBS_STREAM, delivery.sequence),
        u64::from(delivery.attempt),
        reason,
    )
}

/// Stores a dead letter, retrying with [`Context::persist`]'s patience, and counts it; `false`
/// when it could not be stored.
pub(crate) async fn store(ctx: &Context, letter: &DeadLetter) -> bool {
    let stored = ctx
        .persist("dead-letter the job", || dead_letter(&ctx.js, letter))
        .await
        .is_some();
    if stored {
        ctx.metrics.dead_letters.inc();
    }
    stored
}

/// Moves jobs that reached `max_deliver` to the dead-letter stream: JetStream stops delivering
/// them but keeps them in the work queue (docs/ARCHITECTURE.md, "JetStream behaviours helmq relies on"). Every worker hears the advisory; the
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
        if !store(ctx, &letter).await {
            continue;
        }
        if let Err(e) = ctx.stream.delete_message(sequence).await {
            debug!(sequence, error = %e, "cannot delete the job (another worker may have)");
        }
    }
}

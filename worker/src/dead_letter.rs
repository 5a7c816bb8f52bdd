//! Dead-lettering jobs: bad input ([`reject`]: dead-lettered once with the reason, and the
//! Component it names told), a final failure ([`bury`]), and jobs JetStream stopped delivering
//! after `max_deliver` ([`watch_advisories`]). The copy is stored before the original is
//! terminated or deleted, since both remove it from the work queue.

use std::sync::Arc;

use async_nats::jetstream::message::{AckKind, Message};
use futures::StreamExt as _;
use serde::Deserialize as _;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use helmq_queue::StatusSink;
use helmq_queue::dlq::{DeadLetter, dead_letter};
use helmq_queue::topology::JOBS_STREAM;
use helmq_schemas::event::{JobAction, JobEvent, MAX_ID_LEN, StatusEvent, StatusPhase};

use crate::job::{Context, Delivery, Shared};
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

/// Bad input: dead-letter it once with the reason, tell the Component it names, and Term it.
pub(crate) async fn reject<D, S: StatusSink>(
    shared: &Shared<D, S>,
    message: &Message,
    delivery: Delivery,
    reason: String,
) -> JobOutcome {
    warn!(%reason, "rejecting a job");
    let ctx = &shared.ctx;
    let told = readable(reason.clone(), &reason);
    if let Some(status) =
        rejection_status(&message.payload, &told, delivery, &ctx.settings.worker_id)
    {
        let _ = shared.publish(&status).await;
    }
    reject_silently(ctx, message, delivery, reason).await
}

/// Bad input that must not reach the Component it names (a job on another Component's
/// subject): dead-letter it once with the reason and Term it, publishing no status.
pub(crate) async fn reject_silently(
    ctx: &Context,
    message: &Message,
    delivery: Delivery,
    reason: String,
) -> JobOutcome {
    match bury(ctx, message, delivery, reason).await {
        JobOutcome::Failed => JobOutcome::Rejected,
        other => other,
    }
}

/// The `Failed` (or `TerminationFailed` for a delete) status of a rejected payload in this
/// delivery, when the payload names a Component.
pub(crate) fn rejection_status(
    payload: &[u8],
    reason: &str,
    delivery: Delivery,
    worker: &str,
) -> Option<StatusEvent> {
    let component = JobEvent::component_hint(payload)?;
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    // The id the payload claims, when it is one a status event may carry (the status must
    // itself pass the writer's checks, or the Component never hears of the rejection).
    let job_id = value
        .get("id")
        .and_then(|v| v.as_str())
        .filter(|id| id.len() <= MAX_ID_LEN && !id.chars().any(char::is_control))
        .unwrap_or_default();
    let action = value
        .get("action")
        .and_then(|v| JobAction::deserialize(v).ok());
    let phase = match action {
        Some(JobAction::Delete) => StatusPhase::TerminationFailed,
        _ => StatusPhase::Failed,
    };
    Some(
        StatusEvent::new(
            job_id,
            component,
            phase,
            format!("job rejected: {reason}"),
            delivery.attempt,
            worker,
            jiff::Timestamp::now(),
        )
        .for_job_sequence(delivery.sequence),
    )
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
        if let Some(status) =
            rejection_status(&stored.payload, &reason, delivery, &ctx.settings.worker_id)
        {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_payloads_that_name_a_component_get_a_failure_status() {
        let payload = br#"{"schema":"helmq.job/v9","id":"j1","action":"delete","component":{"namespace":"ns","name":"web","generation":3}}"#;
        let first = Delivery {
            attempt: 1,
            sequence: 9,
        };
        let status = rejection_status(payload, "unknown schema", first, "w").unwrap();
        assert_eq!(status.phase, StatusPhase::TerminationFailed);
        assert_eq!(status.job_id, "j1");
        assert_eq!(status.component.generation, 3);
        assert_eq!(status.message, "job rejected: unknown schema");
        assert_eq!(status.job_sequence, 9);
        let hostile_id = br#"{"id":"j\r\nX: 1","action":"apply","component":{"namespace":"ns","name":"web","generation":3}}"#;
        let status = rejection_status(hostile_id, "x", first, "w").unwrap();
        assert_eq!(
            status.job_id, "",
            "an id a status may not carry is left out"
        );
        assert!(StatusEvent::decode(&status.encode()).is_ok());
        let apply = br#"{"id":"j2","action":"apply","component":{"namespace":"ns","name":"web","generation":3}}"#;
        assert_eq!(
            rejection_status(apply, "x", first, "w").unwrap().phase,
            StatusPhase::Failed
        );
        assert!(rejection_status(b"not json", "x", first, "w").is_none());
        assert!(
            rejection_status(
                br#"{"component":{"namespace":"","name":"x","generation":1}}"#,
                "x",
                first,
                "w"
            )
            .is_none()
        );
    }
}

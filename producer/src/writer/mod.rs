//! The status writer: consumes `HELMQ_STATUS` through the durable pull consumer
//! `helmq-writer` and writes each event into its Component's status subresource (and, on
//! `Terminated`, removes our finalizer).
//!
//! One sequential loop, pulling small batches ([`WriterConfig::batch`], never an unbounded
//! prefetch), one try per delivery. API errors are handled per event, by their
//! [`ErrorClass`], so one stuck Component never holds up the others' events:
//!
//! - a conflict is re-read and decided again at once (up to [`MAX_CONFLICT_ROUNDS`] times,
//!   then it is retried later like a transient error);
//! - a transient error (429, 5xx, transport) Naks the event with a delay that doubles with
//!   each delivery up to [`WriterConfig::max_retry_delay`]; the events behind it, of other
//!   Components, are applied meanwhile. Events of one Component may so be applied out of
//!   stream order: the stale rule of [`apply()`] drops an earlier one that comes back after a
//!   later one, so a status never regresses. At the consumer's last delivery (`max_deliver`)
//!   the event is dead-lettered instead, to be replayed once the API is back;
//! - a permanent error (a request that cannot be built, 400/403/422, ...) dead-letters the
//!   event with the reason and acks it.
//!
//! Payloads that are not status events, and events published on another Component's subject,
//! are dead-lettered with the reason and acked. An event that answers no job the producer
//! issued for its Component ([`issued::answers_issued`]: no uid, another job id, a generation
//! the object has not reached, the other action's phase) changes nothing: it is logged at debug
//! level with the reason, counted (`helmq_writer_unissued_events_dropped`) and acked.
//!
//! Each status write is followed by the Kubernetes Events it produces ([`events`]): recorded
//! after the write, bounded by [`EVENT_TIMEOUT`], and a failure is logged and counted
//! (`helmq_writer_event_failures`) but never fails, retries or delays the status write.

pub mod apply;
pub mod events;
pub mod issued;

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::Message;
use async_nats::jetstream::stream::ConsumerError;
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use helmq_queue::dlq::{DeadLetter, dead_letter};
use helmq_queue::topology::{STATUS_STREAM, WRITER_CONSUMER};
use helmq_schemas::component::HELM_FINALIZER;
use helmq_schemas::event::{JobAction, StatusEvent};
use helmq_schemas::subject::status_subject;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::store::{ComponentStore, ErrorClass, EventStore, StoreError};
pub use apply::{StatusPatch, apply};
pub use events::{EventRecorder, phase_events};
pub use issued::{Unissued, Verdict, answers_issued};

/// The longest the writer waits for one Kubernetes Event to be recorded before it moves on.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Delay before the second delivery of an event whose write failed transiently; it doubles
/// with each delivery up to [`WriterConfig::max_retry_delay`].
pub const FIRST_RETRY_DELAY: Duration = Duration::from_millis(200);

/// Conflicts re-read at once for one delivery before the event is put back for later (so a
/// Component that keeps changing cannot hold up the stream).
pub const MAX_CONFLICT_ROUNDS: usize = 10;

/// Errors that stop the writer.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// The writer's consumer cannot be found (topology not set up).
    #[error(
        "cannot open consumer {WRITER_CONSUMER} on {STATUS_STREAM}: {0} (run `helmqctl setup`)"
    )]
    Consumer(#[source] ConsumerError),
}

/// Settings of the writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// `claimedBy` value (our handler name).
    pub handler: String,
    /// Messages pulled per fetch. Small: they are processed one by one, and whatever is
    /// fetched but not processed at shutdown waits for `ack_wait` unless Nak'd.
    pub batch: usize,
    /// How long one fetch waits for messages.
    pub fetch_wait: Duration,
    /// Longest delay before the redelivery of an event whose write failed transiently.
    pub max_retry_delay: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            handler: helmq_schemas::component::DEFAULT_HANDLER.to_owned(),
            batch: 16,
            fetch_wait: Duration::from_secs(1),
            max_retry_delay: Duration::from_secs(30),
        }
    }
}

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The status (and maybe the finalizer) was written.
    Applied,
    /// The status already shows a newer position.
    Stale,
    /// The Component is gone or is another object with the same name.
    Orphan,
    /// The event answers no job the producer issued for the Component.
    Unissued(Unissued),
}

/// The writer over a store, an event recorder and a JetStream context.
#[derive(Debug)]
pub struct Writer<S, E> {
    store: S,
    events: EventRecorder<E>,
    js: jetstream::Context,
    config: WriterConfig,
    metrics: Metrics,
}

/// Where one delivery of a message stands.
#[derive(Debug, Clone, Copy)]
struct Delivery {
    /// Its sequence in `HELMQ_STATUS`.
    sequence: u64,
    /// Deliveries so far, this one included.
    delivered: u64,
    /// The consumer's `max_deliver`; `None`: unlimited.
    max_deliver: Option<u64>,
}

impl Delivery {
    fn is_last(&self) -> bool {
        self.max_deliver.is_some_and(|max| self.delivered >= max)
    }
}

impl<S: ComponentStore, E: EventStore> Writer<S, E> {
    /// A writer; nothing happens until [`Writer::run`].
    pub fn new(
        store: S,
        events: EventRecorder<E>,
        js: jetstream::Context,
        config: WriterConfig,
        metrics: Metrics,
    ) -> Self {
        Writer {
            store,
            events,
            js,
            config,
            metrics,
        }
    }

    /// Pulls and applies events until `shutdown` is cancelled; the message being processed
    /// is finished, the rest of its batch is Nak'd for prompt redelivery.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WriterError> {
        let consumer: PullConsumer = self
            .js
            .get_consumer_from_stream(WRITER_CONSUMER, STATUS_STREAM)
            .await
            .map_err(WriterError::Consumer)?;
        let max_deliver = u64::try_from(consumer.cached_info().config.max_deliver)
            .ok()
            .filter(|max| *max > 0);
        while !shutdown.is_cancelled() {
            let fetch = consumer
                .fetch()
                .max_messages(self.config.batch)
                .expires(self.config.fetch_wait)
                .messages();
            let mut batch = tokio::select! {
                () = shutdown.cancelled() => break,
                batch = fetch => match batch {
                    Ok(batch) => batch,
                    Err(error) => {
                        tracing::warn!(%error, "status fetch failed; retrying");
                        sleep_or_cancel(Duration::from_secs(1), &shutdown).await;
                        continue;
                    }
                },
            };
            while let Some(message) = batch.next().await {
                match message {
                    Ok(message) if shutdown.is_cancelled() => {
                        let _ = message.ack_with(AckKind::Nak(None)).await;
                    }
                    Ok(message) => self.process(message, max_deliver).await,
                    Err(error) => tracing::warn!(%error, "status fetch interrupted"),
                }
            }
        }
        Ok(())
    }

    async fn process(&self, message: Message, max_deliver: Option<u64>) {
        let (sequence, delivered) = message
            .info()
            .map(|i| (i.stream_sequence, u64::try_from(i.delivered).unwrap_or(0)))
            .unwrap_or((0, 0));
        let delivery = Delivery {
            sequence,
            delivered,
            max_deliver,
        };
        let event = match StatusEvent::decode(&message.payload) {
            Ok(event) => event,
            Err(error) => {
                self.dead_letter(&message, delivery, error.to_string())
                    .await;
                return;
            }
        };
        if let Err(reason) = check_subject(&message.subject, &event) {
            self.dead_letter(&message, delivery, reason).await;
            return;
        }
        let span = tracing::info_span!(
            "status",
            namespace = %event.component.namespace,
            name = %event.component.name,
            generation = event.component.generation,
            phase = ?event.phase,
            delivered,
        );
        async {
            let ack = match self.write_resolving_conflicts(&event).await {
                Ok(Outcome::Applied) => {
                    self.metrics.statuses_applied.inc();
                    message.ack().await
                }
                Ok(Outcome::Stale) => {
                    self.metrics.stale_events_dropped.inc();
                    tracing::debug!("stale event dropped");
                    message.ack().await
                }
                Ok(Outcome::Orphan) => {
                    self.metrics.orphan_events_dropped.inc();
                    tracing::debug!("event for a missing or re-created component dropped");
                    message.ack().await
                }
                Ok(Outcome::Unissued(reason)) => {
                    self.metrics.unissued_events_dropped.inc();
                    tracing::debug!(%reason, job_id = %event.job_id, "event answering no issued job dropped");
                    message.ack().await
                }
                Err(error) if error.class() == ErrorClass::Permanent => {
                    let reason = format!("status write refused for good: {error}");
                    self.dead_letter(&message, delivery, reason).await;
                    return;
                }
                Err(error) if delivery.is_last() => {
                    let reason = format!(
                        "status write still failing at the last delivery ({delivered}): {error}"
                    );
                    self.dead_letter(&message, delivery, reason).await;
                    return;
                }
                Err(error) => {
                    let delay = retry_delay(delivered, self.config.max_retry_delay);
                    self.metrics.status_retries.inc();
                    tracing::warn!(%error, ?delay, "status write failed; retrying later");
                    message.ack_with(AckKind::Nak(Some(delay))).await
                }
            };
            if let Err(error) = ack {
                tracing::warn!(%error, "ack failed; the event will be redelivered");
            }
        }
        .instrument(span)
        .await;
    }

    async fn dead_letter(&self, message: &Message, delivery: Delivery, reason: String) {
        tracing::warn!(%reason, sequence = delivery.sequence, "dead-lettering status message");
        let letter = DeadLetter::of(
            &message.subject,
            message.payload.clone(),
            (STATUS_STREAM, delivery.sequence),
            delivery.delivered,
            reason,
        );
        let ack = match dead_letter(&self.js, &letter).await {
            Ok(()) => {
                self.metrics.dead_letters.inc();
                message.ack().await
            }
            Err(error) => {
                tracing::warn!(%error, "dead-lettering failed; will retry");
                message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                    .await
            }
        };
        if let Err(error) = ack {
            tracing::warn!(%error, "ack of a dead-lettered message failed");
        }
    }

    /// Writes `event`, re-reading and deciding again at once after a conflict (up to
    /// [`MAX_CONFLICT_ROUNDS`] times, then the conflict is returned); an event for a Component
    /// that is gone is an [`Outcome::Orphan`].
    async fn write_resolving_conflicts(&self, event: &StatusEvent) -> Result<Outcome, StoreError> {
        let mut rounds = 0;
        loop {
            match self.write(event).await {
                Err(StoreError::Conflict { .. }) if rounds + 1 < MAX_CONFLICT_ROUNDS => {
                    rounds += 1;
                    self.metrics.conflicts.inc();
                    tracing::debug!("status conflict; re-reading");
                }
                Err(StoreError::NotFound { .. }) => return Ok(Outcome::Orphan),
                result => return result,
            }
        }
    }

    /// One read-decide-write round.
    pub async fn write(&self, event: &StatusEvent) -> Result<Outcome, StoreError> {
        let target = &event.component;
        // An object that cannot be read as a Component still gets its status: what the
        // writer needs of it (metadata, status) is read.
        let component = match self.store.get(&target.namespace, &target.name).await {
            Err(StoreError::Unreadable(unreadable)) => Some(unreadable.component),
            other => other?,
        };
        let Some(mut component) = component else {
            return Ok(Outcome::Orphan);
        };
        let action = match answers_issued(&component, event) {
            Verdict::Answers(action) => action,
            Verdict::OtherObject => return Ok(Outcome::Orphan),
            Verdict::Unissued(reason) => return Ok(Outcome::Unissued(reason)),
        };
        let current = component.status.clone().unwrap_or_default();
        let Some(patch) = apply(&current, event, &self.config.handler) else {
            return Ok(Outcome::Stale);
        };
        let ours = component
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == HELM_FINALIZER);
        if patch.remove_finalizer
            && action == JobAction::Delete
            && ours
            && component.metadata.deletion_timestamp.is_some()
        {
            // Finalizer first: if the object then goes away, there is no status to write.
            let removed = match self.store.remove_finalizer(&component).await {
                Err(StoreError::Unreadable(unreadable)) => Some(unreadable.component),
                other => other?,
            };
            match removed {
                None => {
                    tracing::info!("terminated: finalizer removed, component gone");
                    return Ok(Outcome::Applied);
                }
                Some(updated) => {
                    tracing::info!("terminated: finalizer removed");
                    component = updated;
                }
            }
        }
        match self.store.patch_status(&component, &patch.status).await {
            // Written; the object it answered with is not readable.
            Ok(_) | Err(StoreError::Unreadable(_)) => {
                self.record_events(&component, event).await;
                Ok(Outcome::Applied)
            }
            Err(e) => Err(e),
        }
    }

    /// Records the Kubernetes Events of a status event just written; failures are logged and
    /// counted, never returned.
    async fn record_events(
        &self,
        component: &helmq_schemas::component::Component,
        event: &StatusEvent,
    ) {
        let regarding = events::regarding(component);
        for phase_event in phase_events(event) {
            let record = self
                .events
                .record(&regarding, &phase_event, jiff::Timestamp::now());
            match tokio::time::timeout(EVENT_TIMEOUT, record).await {
                Ok(Ok(recorded)) => {
                    self.metrics.events_recorded.inc();
                    tracing::debug!(reason = phase_event.reason, ?recorded, "event recorded");
                }
                Ok(Err(error)) => {
                    self.metrics.event_failures.inc();
                    tracing::warn!(%error, reason = phase_event.reason, "cannot record the event");
                }
                Err(_) => {
                    self.metrics.event_failures.inc();
                    tracing::warn!(reason = phase_event.reason, timeout = ?EVENT_TIMEOUT, "recording the event timed out");
                }
            }
        }
    }
}

/// A status event must come on `helmq.status.<namespace>.<name>` of the Component it names.
pub fn check_subject(subject: &str, event: &StatusEvent) -> Result<(), String> {
    let (namespace, name) = (&event.component.namespace, &event.component.name);
    let expected = status_subject(namespace, name);
    if subject == expected {
        Ok(())
    } else {
        Err(format!(
            "status event for component {namespace}/{name} was published on subject {subject}, not on {expected}: an event must come on its component's subject"
        ))
    }
}

/// The delay before the next delivery of an event whose write failed transiently at its
/// `delivered`-th delivery: [`FIRST_RETRY_DELAY`], doubled per earlier delivery, at most `max`.
pub fn retry_delay(delivered: u64, max: Duration) -> Duration {
    let doublings = u32::try_from(delivered.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(20);
    FIRST_RETRY_DELAY.saturating_mul(1 << doublings).min(max)
}

/// Sleeps for `delay`; `false` if `shutdown` came first.
async fn sleep_or_cancel(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_delay_doubles_per_delivery_up_to_the_cap() {
        let max = Duration::from_secs(30);
        let cases = [
            (0, 200),
            (1, 200),
            (2, 400),
            (3, 800),
            (4, 1_600),
            (8, 25_600),
            (9, 30_000),
            (20, 30_000),
            (u64::MAX, 30_000),
        ];
        for (delivered, millis) in cases {
            assert_eq!(
                retry_delay(delivered, max),
                Duration::from_millis(millis),
                "{delivered}"
            );
        }
        assert_eq!(
            retry_delay(5, Duration::from_millis(300)),
            Duration::from_millis(300)
        );
    }
}

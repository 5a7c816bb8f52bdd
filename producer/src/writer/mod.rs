//! The status writer: consumes `HELMQ_STATUS` through the durable pull consumer
//! `helmq-writer` and writes each event into its Component's status subresource (and, on
//! `Terminated`, removes our finalizer).
//!
//! One sequential loop, pulling small batches ([`WriterConfig::batch`], never an unbounded
//! prefetch): events of one Component are applied in stream order, and the stale rule of
//! [`apply()`] keeps any redelivery from regressing a status. A conflict is re-read and decided
//! again; an API outage is retried in place with a capped exponential backoff (`backon`, with
//! Progress acks so the message is not redelivered meanwhile), so a later event never
//! overtakes an earlier one. Payloads that are
//! not status events are dead-lettered with the reason and acked.

pub mod apply;

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::Message;
use async_nats::jetstream::stream::ConsumerError;
use async_nats::jetstream::{self, AckKind};
use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use helmq_queue::dlq::{DeadLetter, dead_letter};
use helmq_queue::topology::{STATUS_STREAM, WRITER_CONSUMER};
use helmq_schemas::component::HELM_FINALIZER;
use helmq_schemas::event::StatusEvent;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::store::{ComponentStore, StoreError};
pub use apply::{StatusPatch, apply};

/// Delay before the first retry of a status write during an API outage; it doubles up to
/// [`WriterConfig::max_retry_delay`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(200);

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
    /// Longest delay between retries of a failing API call.
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
}

/// The writer over a store and a JetStream context.
#[derive(Debug)]
pub struct Writer<S> {
    store: S,
    js: jetstream::Context,
    config: WriterConfig,
    metrics: Metrics,
}

impl<S: ComponentStore> Writer<S> {
    /// A writer; nothing happens until [`Writer::run`].
    pub fn new(store: S, js: jetstream::Context, config: WriterConfig, metrics: Metrics) -> Self {
        Writer {
            store,
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
                    Ok(message) => self.process(message, &shutdown).await,
                    Err(error) => tracing::warn!(%error, "status fetch interrupted"),
                }
            }
        }
        Ok(())
    }

    async fn process(&self, message: Message, shutdown: &CancellationToken) {
        let (sequence, delivered) = message
            .info()
            .map(|i| (i.stream_sequence, u64::try_from(i.delivered).unwrap_or(0)))
            .unwrap_or((0, 0));
        let event = match StatusEvent::decode(&message.payload) {
            Ok(event) => event,
            Err(error) => {
                self.dead_letter(&message, sequence, delivered, error.to_string())
                    .await;
                return;
            }
        };
        let span = tracing::info_span!(
            "status",
            namespace = %event.component.namespace,
            name = %event.component.name,
            generation = event.component.generation,
            phase = ?event.phase,
        );
        let result = self
            .write_with_retries(&event, &message, shutdown)
            .instrument(span)
            .await;
        let ack = match result {
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
            Err(Interrupted::Shutdown) => message.ack_with(AckKind::Nak(None)).await,
            Err(Interrupted::Failed(error)) => {
                self.dead_letter(&message, sequence, delivered, error.to_string())
                    .await;
                return;
            }
        };
        if let Err(error) = ack {
            tracing::warn!(%error, "ack failed; the event will be redelivered and found stale");
        }
    }

    async fn dead_letter(&self, message: &Message, sequence: u64, delivered: u64, reason: String) {
        tracing::warn!(%reason, sequence, "dead-lettering status message");
        let letter = DeadLetter {
            payload: message.payload.clone(),
            subject: message.subject.to_string(),
            stream: STATUS_STREAM.to_owned(),
            sequence,
            attempts: delivered,
            reason,
        };
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

    /// Writes `event`, retrying API outages in place with a growing delay until shutdown.
    async fn write_with_retries(
        &self,
        event: &StatusEvent,
        message: &Message,
        shutdown: &CancellationToken,
    ) -> Result<Outcome, Interrupted> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(FIRST_RETRY_DELAY)
            .with_max_delay(self.config.max_retry_delay)
            .with_factor(2.0)
            .without_max_times();
        let token = shutdown.clone();
        let sleep = move |delay| {
            let token = token.clone();
            async move { sleep_or_cancel(delay, &token).await }
        };
        let mut retrying = false;
        let attempt = || {
            let retry = std::mem::replace(&mut retrying, true);
            async move {
                if retry && shutdown.is_cancelled() {
                    return Err(Interrupted::Shutdown);
                }
                match self.write_resolving_conflicts(event).await {
                    Err(error) if error.is_transient() => {
                        // Keep the message ours while we wait, so it is not redelivered.
                        let _ = message.ack_with(AckKind::Progress).await;
                        Err(Interrupted::Failed(error))
                    }
                    result => result.map_err(Interrupted::Failed),
                }
            }
        };
        attempt
            .retry(backoff)
            .sleep(sleep)
            .when(|e| matches!(e, Interrupted::Failed(error) if error.is_transient()))
            .notify(|e, delay| {
                if let Interrupted::Failed(error) = e {
                    tracing::warn!(%error, ?delay, "status write failed; retrying");
                }
            })
            .await
    }

    /// Writes `event`, re-reading and deciding again at once after each conflict; an event
    /// for a Component that is gone is an [`Outcome::Orphan`].
    async fn write_resolving_conflicts(&self, event: &StatusEvent) -> Result<Outcome, StoreError> {
        loop {
            match self.write(event).await {
                Err(StoreError::Conflict { .. }) => {
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
        let Some(mut component) = self.store.get(&target.namespace, &target.name).await? else {
            return Ok(Outcome::Orphan);
        };
        if let Some(uid) = target.uid.as_deref().filter(|u| !u.is_empty())
            && component.metadata.uid.as_deref() != Some(uid)
        {
            return Ok(Outcome::Orphan);
        }
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
        if patch.remove_finalizer && ours && component.metadata.deletion_timestamp.is_some() {
            // Finalizer first: if the object then goes away, there is no status to write.
            match self.store.remove_finalizer(&component).await? {
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
        self.store.patch_status(&component, &patch.status).await?;
        Ok(Outcome::Applied)
    }
}

/// Why an event was not finished.
#[derive(Debug)]
enum Interrupted {
    /// Shutdown while waiting to retry.
    Shutdown,
    /// The write failed: for good once the retries gave up on it (the API server refused it).
    Failed(StoreError),
}

/// Sleeps for `delay`; `false` if `shutdown` came first.
async fn sleep_or_cancel(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

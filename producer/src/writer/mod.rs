//! The status writer: consumes `HELMQ_STATUS` through the durable pull consumer
//! `helmq-writer` and writes each event into its Component's status subresource (and, on
//! `Terminated`, removes our finalizer).
//!
//! One loop pulling small batches ([`WriterConfig::batch`], never an unbounded prefetch). The
//! events of a batch are grouped by Component and the groups are written concurrently (so at
//! most `batch` writes are in flight). The events of one Component are decided together, in
//! stream order, against one read of it, and take one status write ([`coalesce`]): a writer
//! that fell behind catches up with one write per Component rather than one per event, and
//! still records every applied event's Kubernetes Events. One try per delivery. API errors are
//! handled per Component, by their [`ErrorClass`], so one stuck Component never holds up the
//! others' events:
//!
//! - a conflict is re-read and decided again at once (up to [`MAX_CONFLICT_ROUNDS`] times,
//!   then it is retried later like a transient error);
//! - a transient error (429, 5xx, transport) Naks the events with a delay that doubles with
//!   each delivery up to [`WriterConfig::max_retry_delay`]; the events behind them, of other
//!   Components, are applied meanwhile. Events of one Component may so be applied out of
//!   stream order: the stale rule of [`apply()`] drops an earlier one that comes back after a
//!   later one, so a status never regresses. At the consumer's last delivery (`max_deliver`)
//!   an event is dead-lettered instead, to be replayed once the API is back;
//! - a permanent error (a request that cannot be built, 400/403/422, ...) dead-letters the
//!   event with the reason and acks it. A coalesced write refused for good is tried again one
//!   event at a time first, so that only the event the API server refuses is dead-lettered.
//!
//! Payloads that are not status events, and events published on another Component's subject,
//! are dead-lettered with the reason and acked. An event that answers no job the producer
//! issued for its Component ([`issued::answers_issued`]: no uid, another job id, a generation
//! the object has not reached, the other action's phase) changes nothing: it is logged at debug
//! level with the reason, counted (`helmq_writer_unissued_events_dropped`) and acked.
//!
//! Each status write is followed by the Kubernetes Events it produces ([`events`]), recorded
//! off the status path by an [`EventQueue`]: at most [`EVENT_QUEUE`] writes' worth wait, then
//! the writer waits for room; each is bounded by [`EVENT_TIMEOUT`]; a failure is logged and
//! counted (`helmq_writer_event_failures`) but never fails, retries or delays a status write.

pub mod apply;
pub mod coalesce;
pub mod events;
pub mod issued;

use helmq_telemetry::retry::pause;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::Message;
use async_nats::jetstream::stream::ConsumerError;
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use helmq_queue::dlq::{DeadLetter, dead_letter};
use helmq_queue::topology::{STATUS_STREAM, WRITER_CONSUMER};
use helmq_schemas::component::{Component, HELM_FINALIZER};
use helmq_schemas::event::StatusEvent;
use helmq_schemas::subject::status_subject;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::store::{ComponentStore, ErrorClass, Observed, StoreError};
pub use apply::{StatusPatch, apply};
pub use events::{EVENT_QUEUE, EVENT_TIMEOUT, EventQueue, EventRecorder, PhaseEvent, phase_events};
pub use issued::{Unissued, Verdict, answers_issued};

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
    /// Messages pulled per fetch, and so the most status writes in flight at once. Small:
    /// whatever is fetched but not processed at shutdown is Nak'd.
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
            batch: 32,
            fetch_wait: Duration::from_secs(1),
            max_retry_delay: Duration::from_secs(30),
        }
    }
}

impl WriterConfig {
    /// Short fetches and retries, for tests (a 200 ms fetch wait and retry cap).
    #[must_use]
    pub fn fast() -> WriterConfig {
        WriterConfig {
            fetch_wait: Duration::from_millis(200),
            max_retry_delay: Duration::from_millis(200),
            ..WriterConfig::default()
        }
    }
}

/// A writer over the in-memory API server on a task of its own (feature `testing`): the one
/// way tests start a writer. Its Events go to `events`; cancel `stop` to end it.
#[cfg(feature = "testing")]
pub fn spawn_test_writer(
    store: crate::store::fake::FakeComponentStore,
    events: crate::store::fake::FakeEventStore,
    js: jetstream::Context,
    config: WriterConfig,
    metrics: Metrics,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Result<(), WriterError>> {
    let events = EventQueue::spawn(EventRecorder::new(events, "producer-test"), metrics.clone());
    tokio::spawn(Writer::new(store, events, js, config, metrics).run(stop))
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
pub struct Writer<S> {
    store: S,
    /// Where the Events of status writes wait to be recorded.
    events: EventQueue,
    js: jetstream::Context,
    config: WriterConfig,
    metrics: Metrics,
}

/// Where the writer reads a Component from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// A copy that may lag behind: the producer's own watch or the API server's watch cache
    /// ([`ComponentStore::get_cached`]).
    Cached,
    /// etcd, through the API server.
    Fresh,
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

/// Why a status write failed, for each message whose event it carried.
#[derive(Debug)]
struct Failure {
    class: ErrorClass,
    /// The error, as it is logged and dead-lettered.
    error: String,
}

impl Failure {
    fn of(error: &StoreError) -> Failure {
        Failure {
            class: error.class(),
            error: error.to_string(),
        }
    }
}

impl Delivery {
    /// Where `message` stands, for a consumer with `max_deliver`.
    fn of(message: &Message, max_deliver: Option<u64>) -> Delivery {
        let (sequence, delivered) = message
            .info()
            .map(|i| (i.stream_sequence, u64::try_from(i.delivered).unwrap_or(0)))
            .unwrap_or((0, 0));
        Delivery {
            sequence,
            delivered,
            max_deliver,
        }
    }

    fn is_last(&self) -> bool {
        self.max_deliver.is_some_and(|max| self.delivered >= max)
    }
}

impl<S: ComponentStore> Writer<S> {
    /// A writer queueing the Events of its writes on `events`; no status is written until
    /// [`Writer::run`].
    pub fn new(
        store: S,
        events: EventQueue,
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
                        pause(&shutdown, Duration::from_secs(1)).await;
                        continue;
                    }
                },
            };
            let mut messages = Vec::with_capacity(self.config.batch);
            while let Some(message) = batch.next().await {
                match message {
                    Ok(message) => messages.push(message),
                    Err(error) => tracing::warn!(%error, "status fetch interrupted"),
                }
            }
            if shutdown.is_cancelled() {
                for message in messages {
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                }
                break;
            }
            let groups = by_subject(messages)
                .into_iter()
                .map(|group| self.process(group, max_deliver));
            futures::future::join_all(groups).await;
        }
        Ok(())
    }

    /// Processes the messages of one subject (one Component) of a batch: what is not a status
    /// event of that Component is dead-lettered, the events are written together
    /// ([`coalesce`]), and each message is settled by what happened to its event.
    async fn process(&self, group: Vec<Message>, max_deliver: Option<u64>) {
        let mut received = Vec::with_capacity(group.len());
        let mut events = Vec::with_capacity(group.len());
        for message in group {
            let delivery = Delivery::of(&message, max_deliver);
            let event = StatusEvent::decode(&message.payload)
                .map_err(|error| error.to_string())
                .and_then(|event| check_subject(&message.subject, &event).map(|()| event));
            match event {
                Ok(event) => {
                    received.push((message, delivery));
                    events.push(event);
                }
                Err(reason) => self.dead_letter(&message, delivery, reason).await,
            }
        }
        let Some(first) = events.first() else {
            return;
        };
        let span = tracing::info_span!(
            "status",
            namespace = %first.component.namespace,
            name = %first.component.name,
            events = events.len(),
        );
        async {
            let written = self.write_resolving_conflicts(&events).await;
            let outcomes = match written {
                // One event's request refused for good must not take the others with it:
                // they are written one at a time, as if they had come in batches of their own.
                Err(error) if error.class() == ErrorClass::Permanent && events.len() > 1 => {
                    tracing::debug!(%error, "a coalesced write was refused; writing the events one at a time");
                    let mut each = Vec::with_capacity(events.len());
                    for event in &events {
                        let written = self.write_resolving_conflicts(std::slice::from_ref(event));
                        let written = written.await.map(|outcomes| outcomes[0]);
                        each.push(written.map_err(|e| Failure::of(&e)));
                    }
                    each
                }
                Ok(outcomes) => {
                    let applied = outcomes.iter().filter(|o| **o == Outcome::Applied).count();
                    if applied > 1 {
                        self.metrics.coalesced_events.inc_by(applied as u64 - 1);
                    }
                    outcomes.into_iter().map(Ok).collect()
                }
                Err(error) => events.iter().map(|_| Err(Failure::of(&error))).collect(),
            };
            for (((message, delivery), event), outcome) in received.iter().zip(&events).zip(outcomes) {
                self.settle(message, *delivery, event, outcome).await;
            }
        }
        .instrument(span)
        .await;
    }

    /// Acks, Naks or dead-letters `message` by what happened to its `event`.
    async fn settle(
        &self,
        message: &Message,
        delivery: Delivery,
        event: &StatusEvent,
        outcome: Result<Outcome, Failure>,
    ) {
        let delivered = delivery.delivered;
        let span = tracing::info_span!(
            "event",
            generation = event.component.generation,
            phase = ?event.phase,
            delivered,
        );
        async {
            let ack = match outcome {
                Ok(Outcome::Applied) => {
                    self.applied(event);
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
                Err(Failure {
                    class: ErrorClass::Permanent,
                    error,
                }) => {
                    let reason = format!("status write refused for good: {error}");
                    self.dead_letter(message, delivery, reason).await;
                    return;
                }
                Err(Failure { error, .. }) if delivery.is_last() => {
                    let reason = format!(
                        "status write still failing at the last delivery ({delivered}): {error}"
                    );
                    self.dead_letter(message, delivery, reason).await;
                    return;
                }
                Err(Failure { error, .. }) => {
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

    /// Counts a status written, and how long after its publication.
    fn applied(&self, event: &StatusEvent) {
        self.metrics.statuses_applied.inc();
        let lag = jiff::Timestamp::now().duration_since(event.at);
        self.metrics
            .writer_lag
            .0
            .observe(lag.as_secs_f64().max(0.0));
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

    /// Writes `events` (one Component's, in stream order) in one status write, re-reading and
    /// deciding again at once after a conflict (up to [`MAX_CONFLICT_ROUNDS`] times, then the
    /// conflict is returned); what happened to each, in order. Events for a Component that is
    /// gone are [`Outcome::Orphan`]s.
    async fn write_resolving_conflicts(
        &self,
        events: &[StatusEvent],
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut rounds = 0;
        loop {
            // After a conflict the cached copy is known to be behind.
            let read = if rounds == 0 {
                Read::Cached
            } else {
                Read::Fresh
            };
            match self.write_after(events, read).await {
                Err(StoreError::Conflict(_)) if rounds + 1 < MAX_CONFLICT_ROUNDS => {
                    rounds += 1;
                    self.metrics.conflicts.inc();
                    tracing::debug!("status conflict; re-reading");
                }
                Err(StoreError::NotFound(_)) => return Ok(vec![Outcome::Orphan; events.len()]),
                result => return result,
            }
        }
    }

    /// One read-decide-write round for `event`, reading the Component afresh.
    pub async fn write(&self, event: &StatusEvent) -> Result<Outcome, StoreError> {
        let outcomes = self
            .write_after(std::slice::from_ref(event), Read::Fresh)
            .await?;
        Ok(outcomes[0])
    }

    /// One read-decide-write round after a `read` of the Component. From a cached copy, which
    /// may lag behind, only a write (conditional on the copy being current) or stale events
    /// (the copy can only be older) are believed: when nothing was written, the rest is
    /// decided again from a fresh read.
    async fn write_after(
        &self,
        events: &[StatusEvent],
        read: Read,
    ) -> Result<Vec<Outcome>, StoreError> {
        let (outcomes, wrote) = self.write_once(events, read).await?;
        let unsure = outcomes
            .iter()
            .any(|o| matches!(o, Outcome::Orphan | Outcome::Unissued(_)));
        if read == Read::Cached && unsure && !wrote {
            return Ok(self.write_once(events, Read::Fresh).await?.0);
        }
        Ok(outcomes)
    }

    /// One round: what happened to each event, and whether a status was written.
    async fn write_once(
        &self,
        events: &[StatusEvent],
        read: Read,
    ) -> Result<(Vec<Outcome>, bool), StoreError> {
        // The events of one subject all name its Component.
        let Some(target) = events.first().map(|e| &e.component) else {
            return Ok((Vec::new(), false));
        };
        // An object that cannot be read as a Component still gets its status: what the
        // writer needs of it (metadata, status) is read.
        let observed = match read {
            Read::Fresh => self.store.get(&target.namespace, &target.name).await?,
            Read::Cached => {
                self.store
                    .get_cached(&target.namespace, &target.name)
                    .await?
            }
        };
        let Some(mut component) = observed.map(Observed::into_component) else {
            return Ok((vec![Outcome::Orphan; events.len()], false));
        };
        let decision = coalesce::decide(&component, events, &self.config.handler);
        let Some(status) = decision.status else {
            return Ok((decision.outcomes, false));
        };
        let ours = component
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == HELM_FINALIZER);
        if decision.remove_finalizer && ours && component.metadata.deletion_timestamp.is_some() {
            // Finalizer first: if the object then goes away, there is no status to write.
            match self.store.remove_finalizer(&component).await? {
                None => {
                    tracing::info!("terminated: finalizer removed, component gone");
                    self.queue_events(&component, events, &decision.outcomes)
                        .await;
                    return Ok((decision.outcomes, true));
                }
                Some(updated) => {
                    tracing::info!("terminated: finalizer removed");
                    component = updated.into_component();
                }
            }
        }
        // Written, whether or not the object it answered with is readable.
        self.store.patch_status(&component, &status).await?;
        self.queue_events(&component, events, &decision.outcomes)
            .await;
        Ok((decision.outcomes, true))
    }

    /// Queues the Kubernetes Events of each applied event, in order.
    async fn queue_events(
        &self,
        component: &Component,
        events: &[StatusEvent],
        outcomes: &[Outcome],
    ) {
        for (event, _) in events
            .iter()
            .zip(outcomes)
            .filter(|(_, o)| **o == Outcome::Applied)
        {
            self.events.queue(component, event).await;
        }
    }
}

/// The messages of a batch by subject (one Component each), in stream order within each.
fn by_subject(messages: Vec<Message>) -> Vec<Vec<Message>> {
    let mut groups: Vec<Vec<Message>> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for message in messages {
        let subject = message.subject.to_string();
        match index.get(&subject) {
            Some(&i) => groups[i].push(message),
            None => {
                index.insert(subject, groups.len());
                groups.push(vec![message]);
            }
        }
    }
    groups
}

/// A status event must come on `helmq.status.<namespace>.<name>` of the Component it names.
pub fn check_subject(subject: &str, event: &StatusEvent) -> Result<(), String> {
    let (namespace, name) = (&event.component.namespace, &event.component.name);
    helmq_schemas::subject::check_own_subject(
        "status event",
        subject,
        &status_subject(namespace, name),
        (namespace, name),
    )
}

/// The delay before the next delivery of an event whose write failed transiently at its
/// `delivered`-th delivery: [`FIRST_RETRY_DELAY`], doubled per earlier delivery, at most `max`.
pub fn retry_delay(delivered: u64, max: Duration) -> Duration {
    let failures = u32::try_from(delivered).unwrap_or(u32::MAX);
    helmq_telemetry::retry::backoff(FIRST_RETRY_DELAY, max, failures, false)
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

//! What every job of a pool shares ([`Context`], [`Shared`]), where a delivery stands
//! ([`Delivery`]), and the NATS operations a job retries with patience: status publishing
//! ([`Shared::publish`]) and [`Context::persist`].

use helmq_telemetry::retry::pause;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::Message;
use async_nats::jetstream::{self, stream};
use backon::Retryable as _;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use helmq_queue::{PublishError, StatusSink};
use helmq_schemas::event::{JobEvent, StatusEvent, StatusPhase};

use crate::exclusivity::{Intents, Lease, LeaseTiming, Leases};
use crate::intent_watch::IntentWatch;
use crate::metrics::Metrics;
use crate::settings::Settings;

/// What every job of a pool shares, apart from the driver and the status sink.
pub(crate) struct Context {
    pub(crate) js: jetstream::Context,
    pub(crate) stream: stream::Stream,
    pub(crate) settings: Settings,
    pub(crate) metrics: Metrics,
    pub(crate) leases: Leases,
    pub(crate) intents: Intents,
    /// The worker's one watch of the intents bucket, which tells running jobs of newer intents.
    pub(crate) watch: IntentWatch,
    /// When runs renew their release lease and when they must stop.
    pub(crate) timing: LeaseTiming,
    /// The workers' consumer's `ack_wait`: Progress acks go out every third of it.
    pub(crate) ack_wait: Duration,
    /// Cancelled when the drain deadline passes: running jobs stop and are Nak'ed.
    pub(crate) hard_stop: CancellationToken,
}

/// The [`Context`] with the driver and the status sink.
pub(crate) struct Shared<D, S> {
    pub(crate) ctx: Context,
    pub(crate) driver: Arc<D>,
    pub(crate) status: S,
}

/// Where a delivery stands: its attempt (delivery count) and its stream sequence.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Delivery {
    pub(crate) attempt: u32,
    pub(crate) sequence: u64,
}

impl Delivery {
    /// Reads the delivery from a message's JetStream metadata.
    pub(crate) fn of(message: &Message) -> Result<Delivery, async_nats::Error> {
        let info = message.info()?;
        Ok(Delivery {
            attempt: u32::try_from(info.delivered).unwrap_or(u32::MAX),
            sequence: info.stream_sequence,
        })
    }
}

/// What became of a status event.
#[derive(Debug)]
pub(crate) enum Published {
    /// The server stored it.
    Stored,
    /// The hard stop fired or `--nats-patience` ran out: the job is given back.
    GaveUp,
    /// The server refuses it for good (too large for it or for the stream): the job is
    /// dead-lettered rather than redelivered for ever.
    Refused(PublishError),
}

impl<D, S: StatusSink> Shared<D, S> {
    /// Publishes a status event, retrying until it is stored, the hard stop fires or
    /// `--nats-patience` is spent; a refusal that no retry can change ends the retries at once.
    pub(crate) async fn publish(&self, status: &StatusEvent) -> Published {
        let outcome = self
            .ctx
            .persist("publish the status", || async {
                match self.status.publish_status(status).await {
                    Err(e) if e.is_permanent() => Ok(Err(e)),
                    other => other.map(Ok),
                }
            })
            .await;
        match outcome {
            Some(Ok(())) => Published::Stored,
            Some(Err(e)) => Published::Refused(e),
            None => Published::GaveUp,
        }
    }
}

impl Context {
    /// A status event of `job` in this delivery.
    pub(crate) fn event(
        &self,
        job: &JobEvent,
        phase: StatusPhase,
        message: String,
        delivery: Delivery,
    ) -> StatusEvent {
        StatusEvent::new(
            job.id.clone(),
            job.component.clone(),
            phase,
            message,
            delivery.attempt,
            self.settings.worker_id.clone(),
            jiff::Timestamp::now(),
        )
        .for_job_sequence(delivery.sequence)
    }

    /// Retries `op` with capped exponential backoff until it succeeds; `None` once the hard
    /// stop fires or after [`Settings::nats_patience`] (the job is then redelivered and, being
    /// idempotent, does the same again).
    pub(crate) async fn persist<T, E, F, Fut>(&self, what: &str, op: F) -> Option<T>
    where
        E: std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_total_delay(Some(self.settings.nats_patience))
            .without_max_times();
        // Once the hard stop fires, the attempt under way finishes and no other is made.
        let stop = self.hard_stop.clone();
        let result = op
            .retry(backoff)
            .sleep(move |delay| {
                let stop = stop.clone();
                async move {
                    pause(&stop, delay).await;
                }
            })
            .when(|_| !self.hard_stop.is_cancelled())
            .notify(|e, delay| {
                self.metrics.nats_retries.inc();
                warn!(error = %e, retry_in = ?delay, "cannot {what}; retrying");
            })
            .await;
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                self.metrics.nats_retries.inc();
                warn!(error = %e, "cannot {what}; giving up (hard stop, or --nats-patience spent)");
                None
            }
        }
    }

    /// Gives the lease back; a failure only delays the next job on the release until it expires.
    pub(crate) async fn release(&self, lease: &Lease) {
        if let Err(e) = self.leases.release(lease).await {
            warn!(error = %e, "cannot release the lease; it will expire");
        }
    }
}

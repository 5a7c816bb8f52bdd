//! The worker pool: `concurrency` slots, each pulling one job at a time from the shared durable
//! consumer and handing it to `job`, plus the MAX_DELIVERIES advisory watcher.
//!
//! Shutdown: the `shutdown` token stops the slots from pulling; running jobs get
//! `drain_deadline` to finish, then the hard-stop token cancels them and their messages are
//! Nak'ed for redelivery.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::Context as JetStream;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::{AckKind, Message};
use futures::{FutureExt as _, StreamExt as _};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, info_span, warn};

use helmq_queue::StatusSink;
use helmq_queue::topology::{JOBS_STREAM, WORKERS_CONSUMER};
use helmq_telemetry::Readiness;

use crate::allowlist::Allowlist;
use crate::dead_letter::{self, watch_advisories};
use crate::driver::HelmDriver;
use crate::exclusivity::{Intents, KvError, LeaseTiming, Leases, TimingError};
use crate::job::{Context, Delivery, Shared, handle};
use crate::metrics::Metrics;
use crate::policy::RetryPolicy;

/// Subject of the advisory JetStream sends when a job reached `max_deliver`.
pub fn max_deliveries_subject() -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.{WORKERS_CONSUMER}")
}

/// How the pool behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Worker id in status events and lease values.
    pub worker_id: String,
    /// Jobs at once.
    pub concurrency: usize,
    /// Attempts (deliveries) per job before a transient failure becomes final.
    pub max_attempts: u32,
    /// Delays between attempts.
    pub retry: RetryPolicy,
    /// Allowed chart sources and namespaces (any, by default: the binary always sets it from
    /// its required flags).
    pub allowlist: Allowlist,
    /// Time running jobs get to finish after shutdown starts.
    pub drain_deadline: Duration,
    /// Longest wait for a release lease before the job is given back with a short delay.
    pub lease_wait: Duration,
    /// How long one pull request waits for a job (also bounds how fast a slot notices shutdown).
    pub fetch_expires: Duration,
    /// Longest job timeout accepted; a job asking for more is rejected.
    pub max_timeout: Duration,
    /// How long a job keeps retrying one NATS operation (status publish, intent write,
    /// dead letter, ack) before it gives up and leaves the message to be redelivered.
    pub nats_patience: Duration,
    /// Where the pool reports that it cannot work any more (a slot or the advisory task ended
    /// on its own): `/readyz` turns red.
    pub health: Readiness,
    /// The ServiceAccount, in each job's Component namespace, that jobs without
    /// `config.serviceAccountName` run as (`--default-service-account`); `None` with no
    /// such field runs Helm with the worker's own rights (single-tenant mode).
    pub default_service_account: Option<String>,
    /// Act on releases whatever their owner labels say (`--allow-shared-releases`): several
    /// Components may then share one release, as the original controller allowed. Off by
    /// default: a job acts only on a release its own Component (or subject) owns.
    pub allow_shared_releases: bool,
}

impl Settings {
    /// Defaults for a worker called `worker_id`.
    pub fn new(worker_id: impl Into<String>) -> Settings {
        Settings {
            worker_id: worker_id.into(),
            concurrency: 4,
            max_attempts: 5,
            retry: RetryPolicy::default(),
            allowlist: Allowlist::any(),
            drain_deadline: Duration::from_secs(60),
            lease_wait: Duration::from_secs(60),
            fetch_expires: Duration::from_secs(2),
            max_timeout: Duration::from_secs(3600),
            nats_patience: Duration::from_secs(120),
            health: Readiness::default(),
            default_service_account: None,
            allow_shared_releases: false,
        }
    }
}

/// Errors that stop the pool from starting.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The jobs stream or the workers' consumer is missing or unreachable.
    #[error(
        "cannot open consumer {WORKERS_CONSUMER} on {JOBS_STREAM}: {0} (run `helmqctl setup` or start with --setup)"
    )]
    Consumer(String),
    /// A KV bucket is missing or unreachable.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// The lease TTL leaves a cancelled Helm run no time to end before its lease may expire.
    #[error(transparent)]
    LeaseTiming(#[from] TimingError),
    /// The advisory subscription failed.
    #[error("cannot subscribe to the MAX_DELIVERIES advisory: {0}")]
    Advisory(String),
}

/// Runs the pool until `shutdown` is cancelled and the running jobs are settled.
pub async fn run_pool<D, S>(
    js: JetStream,
    client: async_nats::Client,
    driver: Arc<D>,
    status: S,
    settings: Settings,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), PoolError>
where
    D: HelmDriver,
    S: StatusSink + 'static,
{
    let stream = js
        .get_stream(JOBS_STREAM)
        .await
        .map_err(|e| PoolError::Consumer(e.to_string()))?;
    let mut consumer: PullConsumer = stream
        .get_consumer(WORKERS_CONSUMER)
        .await
        .map_err(|e| PoolError::Consumer(e.to_string()))?;
    let ack_wait = consumer
        .info()
        .await
        .map(|i| i.config.ack_wait)
        .map_err(|e| PoolError::Consumer(e.to_string()))?;
    let leases = Leases::open(&js).await?;
    let timing = LeaseTiming::new(leases.ttl(), driver.grace())?;
    let intents = Intents::open(&js).await?;
    let advisories = client
        .subscribe(max_deliveries_subject())
        .await
        .map_err(|e| PoolError::Advisory(e.to_string()))?;
    let shared = Arc::new(Shared {
        ctx: Context {
            js,
            stream,
            settings,
            metrics,
            leases,
            intents,
            timing,
            ack_wait,
            hard_stop: CancellationToken::new(),
        },
        driver,
        status,
    });
    let ctx = &shared.ctx;
    info!(
        worker = %ctx.settings.worker_id,
        concurrency = ctx.settings.concurrency,
        ack_wait = ?ack_wait,
        lease_ttl = ?ctx.leases.ttl(),
        lease_renewal = ?ctx.timing.renew_every,
        helm_grace = ?ctx.timing.grace,
        "worker pool started"
    );

    let mut advisory_task = tokio::spawn(watch_advisories(
        shared.clone(),
        advisories,
        shutdown.clone(),
    ));
    let mut slots = tokio::task::JoinSet::new();
    for slot in 0..ctx.settings.concurrency.max(1) {
        slots.spawn(run_slot(
            shared.clone(),
            consumer.clone(),
            slot,
            shutdown.clone(),
        ));
    }

    // Until shutdown, a slot or the advisory task ending means this worker lost part of its
    // capacity: say so on /readyz, so the orchestrator replaces the process.
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            ended = slots.join_next() => {
                let why = match ended {
                    Some(Err(e)) => format!("a worker slot stopped: {e}"),
                    _ => "a worker slot stopped".to_owned(),
                };
                tracing::error!(%why, "worker pool degraded");
                ctx.settings.health.broken(why);
                if slots.is_empty() {
                    shutdown.cancelled().await;
                    break;
                }
            }
            ended = &mut advisory_task => {
                let why = format!("the max-deliveries advisory watcher stopped: {ended:?}");
                tracing::error!(%why, "worker pool degraded");
                ctx.settings.health.broken(why);
                shutdown.cancelled().await;
                break;
            }
        }
    }
    info!(deadline = ?ctx.settings.drain_deadline, "shutting down: finishing running jobs");
    let drained = tokio::time::timeout(ctx.settings.drain_deadline, async {
        while slots.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!("drain deadline passed: cancelling running jobs and returning them to the queue");
        ctx.hard_stop.cancel();
        while slots.join_next().await.is_some() {}
    }
    advisory_task.abort();
    info!("worker pool stopped");
    Ok(())
}

/// One slot: pull one job, process it, repeat until shutdown.
async fn run_slot<D: HelmDriver, S: StatusSink + 'static>(
    shared: Arc<Shared<D, S>>,
    consumer: PullConsumer,
    slot: usize,
    shutdown: CancellationToken,
) {
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        // One message per pull: a prefetched message would sit unacked at shutdown (DESIGN §9).
        let batch = consumer
            .fetch()
            .max_messages(1)
            .expires(shared.ctx.settings.fetch_expires)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                failures += 1;
                warn!(slot, error = %e, "cannot pull a job; retrying");
                pause(&shutdown, backoff_step(failures)).await;
                continue;
            }
        };
        // Not raced against shutdown: a message already on its way must be settled here.
        while let Some(next) = batch.next().await {
            let message = match next {
                Ok(message) => message,
                Err(e) => {
                    failures += 1;
                    debug!(slot, error = %e, "pull ended with an error");
                    pause(&shutdown, backoff_step(failures)).await;
                    break;
                }
            };
            failures = 0;
            if shutdown.is_cancelled() {
                // Arrived after shutdown began: give it straight back.
                shared.ctx.settle(&message, AckKind::Nak(None)).await;
                continue;
            }
            process(&shared, message).await;
        }
    }
}

/// Pause after `failures` failed NATS operations in a row: 200 ms doubling to 5 s.
fn backoff_step(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1u64 << failures.min(6)).min(5000))
}

/// Sleeps for `delay`, or until `token` is cancelled.
pub(crate) async fn pause(token: &CancellationToken, delay: Duration) {
    tokio::select! {
        () = token.cancelled() => {}
        () = tokio::time::sleep(delay) => {}
    }
}

/// Processes one delivery and records its metrics.
async fn process<D: HelmDriver, S: StatusSink + 'static>(shared: &Shared<D, S>, message: Message) {
    let started = Instant::now();
    let (attempt, sequence) = match message.info() {
        Ok(info) => (
            u32::try_from(info.delivered).unwrap_or(u32::MAX),
            info.stream_sequence,
        ),
        Err(e) => {
            warn!(error = %e, "message without JetStream metadata; returning it");
            shared.ctx.settle(&message, AckKind::Nak(None)).await;
            return;
        }
    };
    let metrics = &shared.ctx.metrics;
    metrics.in_flight.inc();
    let span = info_span!(
        "job",
        job_id = tracing::field::Empty,
        seq = sequence,
        attempt
    );
    let delivery = Delivery { attempt, sequence };
    let job = AssertUnwindSafe(handle(shared, &message, delivery, &span).instrument(span.clone()))
        .catch_unwind()
        .await;
    let outcome = match job {
        Ok(outcome) => outcome,
        Err(panic) => {
            // A bug met by this job must not cost the slot: dead-letter the job and carry on.
            let what = panic_text(panic.as_ref());
            span.in_scope(|| tracing::error!(panic = %what, "job panicked; dead-lettering it"));
            metrics.panics.inc();
            dead_letter::bury(&shared.ctx, &message, delivery, format!("panic: {what}"))
                .instrument(span.clone())
                .await
        }
    };
    metrics.in_flight.dec();
    metrics.job(outcome);
    metrics
        .job_duration
        .observe(started.elapsed().as_secs_f64());
    span.in_scope(|| debug!(outcome = outcome.as_str(), "job settled"));
}

/// The text a panic carried (`panic!("...")` gives a `&str` or a `String`).
pub(crate) fn panic_text(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_texts_are_read_from_both_payload_types() {
        let caught = std::panic::catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(panic_text(caught.as_ref()), "boom 1");
        let caught = std::panic::catch_unwind(|| panic!("static")).unwrap_err();
        assert_eq!(panic_text(caught.as_ref()), "static");
        let caught = std::panic::catch_unwind(|| std::panic::panic_any(7_u8)).unwrap_err();
        assert_eq!(panic_text(caught.as_ref()), "a panic without a message");
    }

    #[test]
    fn the_advisory_subject_names_the_workers_consumer() {
        assert_eq!(
            max_deliveries_subject(),
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.HELMQ_JOBS.helmq-workers"
        );
    }
}

//! The worker pool: `concurrency` slots, each pulling one job at a time from the shared durable
//! consumer into the fair scheduler (`parking`), starting the job it gives, handing it to `job`
//! and having `settle` carry out what the job decided, plus the MAX_DELIVERIES advisory watcher
//! and the parked deliveries' Progress acks.
//!
//! Shutdown: the `shutdown` token stops the slots from pulling and parked deliveries are given
//! back at once; running jobs get
//! `drain_deadline` to finish, then the hard-stop token cancels them and their messages are
//! Nak'ed for redelivery.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::Context as JetStream;
use async_nats::jetstream::consumer::PullConsumer;
use futures::{FutureExt as _, StreamExt as _};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, info_span, warn};

use helmq_queue::StatusSink;
use helmq_queue::topology::{JOBS_STREAM, WORKERS_CONSUMER};
use helmq_telemetry::Readiness;

use crate::context::{Context, Delivery, Shared};
use crate::dead_letter::watch_advisories;
use crate::driver::HelmDriver;
use crate::exclusivity::{Intents, KvError, LeaseTiming, Leases, TimingError};
use crate::intent_watch::IntentWatch;
use crate::job::handle;
use crate::metrics::Metrics;
use crate::parking::{Parking, Waiting, limits};
use crate::settings::Settings;
use crate::settle::{Buried, Settlement, settle};
use helmq_telemetry::retry::{backoff, pause};

/// Subject of the advisory JetStream sends when a job reached `max_deliver`.
pub fn max_deliveries_subject() -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.{WORKERS_CONSUMER}")
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
    let (ctx, consumer) = open(js, driver.grace(), settings, metrics).await?;
    let advisories = client
        .subscribe(max_deliveries_subject())
        .await
        .map_err(|e| PoolError::Advisory(e.to_string()))?;
    let shared = Arc::new(Shared {
        ctx,
        driver,
        status,
    });
    let ctx = &shared.ctx;
    info!(
        worker = %ctx.settings.worker_id,
        concurrency = ctx.settings.concurrency,
        tenant_concurrency = ctx.settings.tenant_concurrency,
        check_concurrency = ctx.settings.check_limit(),
        max_parked = ctx.settings.max_parked,
        ack_wait = ?ctx.ack_wait,
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
    let parking = Arc::new(Parking::new(limits(&ctx.settings), ctx.metrics.clone()));
    let keep_alive = tokio::spawn(
        parking
            .clone()
            .keep_alive(ctx.ack_wait / 3, shutdown.clone()),
    );
    let mut slots = JoinSet::new();
    for slot in 0..ctx.settings.concurrency.max(1) {
        slots.spawn(run_slot(
            shared.clone(),
            consumer.clone(),
            parking.clone(),
            slot,
            shutdown.clone(),
        ));
    }
    watch_capacity(
        &ctx.settings.health,
        &mut slots,
        &mut advisory_task,
        &shutdown,
    )
    .await;
    // Its last sweep ends before the parked messages are given back.
    let _ = keep_alive.await;
    info!(deadline = ?ctx.settings.drain_deadline, "shutting down: finishing running jobs");
    // The parked go back while the running finish; the hard stop also ends the give-back's
    // retries when NATS is away.
    tokio::join!(parking.give_back(ctx), drain(ctx, &mut slots));
    advisory_task.abort();
    ctx.watch.stop();
    info!("worker pool stopped");
    Ok(())
}

/// Waits for the slots to finish their running jobs; past the drain deadline, cancels them (the
/// hard stop) and waits for their messages to be given back.
async fn drain(ctx: &Context, slots: &mut JoinSet<()>) {
    let drained = tokio::time::timeout(ctx.settings.drain_deadline, async {
        while slots.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!("drain deadline passed: cancelling running jobs and returning them to the queue");
        ctx.hard_stop.cancel();
        while slots.join_next().await.is_some() {}
    }
}

/// Opens what the pool's jobs share: the jobs stream, the workers' consumer (and its
/// `ack_wait`), the lease and intent buckets, and the lease timing for a driver whose cancelled
/// runs take up to `grace` to end.
async fn open(
    js: JetStream,
    grace: Duration,
    settings: Settings,
    metrics: Metrics,
) -> Result<(Context, PullConsumer), PoolError> {
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
    let timing = LeaseTiming::new(leases.ttl(), grace)?;
    let intents = Intents::open(&js).await?;
    let watch = IntentWatch::start(intents.bucket()).await?;
    let ctx = Context {
        js,
        stream,
        settings,
        metrics,
        leases,
        intents,
        watch,
        timing,
        ack_wait,
        hard_stop: CancellationToken::new(),
    };
    Ok((ctx, consumer))
}

/// Waits for `shutdown`. Until then, a slot or the advisory task ending means this worker lost
/// part of its capacity: say so on /readyz, so the orchestrator replaces the process.
async fn watch_capacity(
    health: &Readiness,
    slots: &mut JoinSet<()>,
    advisory_task: &mut JoinHandle<()>,
    shutdown: &CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            ended = slots.join_next() => {
                let why = match ended {
                    Some(Err(e)) => format!("a worker slot stopped: {e}"),
                    _ => "a worker slot stopped".to_owned(),
                };
                tracing::error!(%why, "worker pool degraded");
                health.broken(why);
                if slots.is_empty() {
                    shutdown.cancelled().await;
                    return;
                }
            }
            ended = &mut *advisory_task => {
                let why = format!("the max-deliveries advisory watcher stopped: {ended:?}");
                tracing::error!(%why, "worker pool degraded");
                health.broken(why);
                shutdown.cancelled().await;
                return;
            }
        }
    }
}

/// One slot: start the next job the scheduler gives, else pull one (a free slot pulls past jobs
/// a limit holds, until `--max-parked` are parked), repeat until shutdown.
async fn run_slot<D: HelmDriver, S: StatusSink + 'static>(
    shared: Arc<Shared<D, S>>,
    consumer: PullConsumer,
    parking: Arc<Parking>,
    slot: usize,
    shutdown: CancellationToken,
) {
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        if let Some(start) = parking.next() {
            process(&shared, &start.waiting).await;
            parking.finish(start.ticket);
        } else if parking.has_room() {
            pull(&shared, &consumer, &parking, slot, &shutdown, &mut failures).await;
        } else {
            parking.wait_for_turn(&shutdown).await;
        }
    }
}

/// Pulls one message and parks it; `failures` counts failed pulls in a row.
async fn pull<D: HelmDriver, S: StatusSink + 'static>(
    shared: &Shared<D, S>,
    consumer: &PullConsumer,
    parking: &Parking,
    slot: usize,
    shutdown: &CancellationToken,
    failures: &mut u32,
) {
    // One message per pull: a prefetched message would sit unacked at shutdown (docs/ARCHITECTURE.md, "JetStream behaviours helmq relies on").
    let batch = consumer
        .fetch()
        .max_messages(1)
        .expires(shared.ctx.settings.fetch_expires)
        .messages()
        .await;
    let mut batch = match batch {
        Ok(batch) => batch,
        Err(e) => {
            *failures += 1;
            warn!(slot, error = %e, "cannot pull a job; retrying");
            pause(shutdown, backoff_step(*failures)).await;
            return;
        }
    };
    // Not raced against shutdown: a message already on its way must be settled here.
    while let Some(next) = batch.next().await {
        let message = match next {
            Ok(message) => message,
            Err(e) => {
                *failures += 1;
                debug!(slot, error = %e, "pull ended with an error");
                pause(shutdown, backoff_step(*failures)).await;
                break;
            }
        };
        *failures = 0;
        let back = match Delivery::of(&message) {
            // Arrived after shutdown began: give it straight back.
            Ok(_) if shutdown.is_cancelled() => Some(message),
            Ok(delivery) => parking.arrive(message, delivery),
            Err(e) => {
                warn!(error = %e, "message without JetStream metadata; returning it");
                Some(message)
            }
        };
        if let Some(message) = back {
            settle(&shared.ctx, &message, Settlement::GIVE_BACK).await;
        }
    }
}

/// Pause after `failures` failed NATS operations in a row: 200 ms doubling to 5 s.
fn backoff_step(failures: u32) -> Duration {
    backoff(
        Duration::from_millis(200),
        Duration::from_secs(5),
        failures,
        false,
    )
}

/// Processes one delivery, settles it and records its metrics.
async fn process<D: HelmDriver, S: StatusSink + 'static>(shared: &Shared<D, S>, waiting: &Waiting) {
    let started = Instant::now();
    let ctx = &shared.ctx;
    let (message, delivery) = (&waiting.message, waiting.delivery);
    let metrics = &ctx.metrics;
    metrics.in_flight.inc();
    let span = info_span!(
        "job",
        job_id = tracing::field::Empty,
        seq = delivery.sequence,
        attempt = delivery.attempt
    );
    let job = AssertUnwindSafe(handle(shared, message, delivery, &span).instrument(span.clone()))
        .catch_unwind()
        .await;
    let settlement = job.unwrap_or_else(|panic| {
        // A bug met by this job must not cost the slot: dead-letter the job and carry on.
        let what = panic_text(panic.as_ref());
        span.in_scope(|| tracing::error!(panic = %what, "job panicked; dead-lettering it"));
        metrics.panics.inc();
        Settlement::Bury {
            reason: format!("panic: {what}"),
            cause: Buried::Failed,
        }
    });
    let outcome = settle(ctx, message, settlement)
        .instrument(span.clone())
        .await;
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

/// An in-process pool on a task of its own (feature `testing`): the one way tests and the
/// benchmark start a pool without the worker binary.
#[cfg(feature = "testing")]
#[derive(Debug)]
pub struct SpawnedPool {
    /// Cancel it to stop the pool (it drains first).
    pub shutdown: CancellationToken,
    /// The pool's task.
    pub task: JoinHandle<Result<(), PoolError>>,
    /// The pool's metrics.
    pub metrics: Metrics,
}

#[cfg(feature = "testing")]
impl SpawnedPool {
    /// Starts a pool on `client` with `driver` and `settings`; `sink` builds where its status
    /// events go from the pool's JetStream context.
    pub fn spawn<D, S>(
        client: async_nats::Client,
        driver: D,
        settings: Settings,
        sink: impl FnOnce(JetStream) -> S,
    ) -> SpawnedPool
    where
        D: HelmDriver,
        S: StatusSink + 'static,
    {
        let js = async_nats::jetstream::new(client.clone());
        let metrics = Metrics::register(&mut prometheus_client::registry::Registry::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_pool(
            js.clone(),
            client,
            Arc::new(driver),
            sink(js),
            settings,
            metrics.clone(),
            shutdown.clone(),
        ));
        SpawnedPool {
            shutdown,
            task,
            metrics,
        }
    }

    /// Stops the pool and waits for its drain. For tests: panics when the pool ended with an
    /// error or panicked, so the test fails there.
    pub async fn stop(self) {
        self.shutdown.cancel();
        match self.task.await {
            Ok(result) => result.expect("the pool ended with an error"),
            // Aborted from outside: nothing more to report.
            Err(join) => {
                if let Ok(panic) = join.try_into_panic() {
                    std::panic::resume_unwind(panic);
                }
            }
        }
    }
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

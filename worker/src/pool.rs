//! The worker pool: `concurrency` slots, each pulling one job at a time from the shared durable
//! consumer, and the path of one job from decode to ack.
//!
//! One job: decode and check it (bad input is dead-lettered once and terminated) → compare with
//! the latest intent (an older generation is acked as superseded, a finished one has its status
//! published again) → publish `Deploying`/`Terminating` → take the release lease (Progress acks
//! while waiting) → recover a stuck release → run Helm while sending Progress acks, renewing the
//! lease and watching for a newer generation (which cancels the run) → publish the outcome,
//! dead-letter a final failure, and ack, Nak with a delay, or Term.
//!
//! Shutdown: the `shutdown` token stops the slots from pulling; running jobs get
//! `drain_deadline` to finish, then the hard-stop token cancels them and their messages are
//! Nak'ed for redelivery.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::{AckKind, Message};
use async_nats::jetstream::{Context, stream};
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, info_span, warn};

use helmq_queue::StatusSink;
use helmq_queue::dlq::{DeadLetter, dead_letter};
use helmq_queue::topology::{JOBS_STREAM, WORKERS_CONSUMER};
use helmq_schemas::event::{JobAction, JobEvent, ReleaseInfo, StatusEvent, StatusPhase};
use helmq_schemas::subject::component_key;

use crate::driver::{
    Apply, DriverError, HelmDriver, NamespaceDeletion, Uninstalled, recovery_plan,
};
use crate::exclusivity::{Intents, KvError, Lease, Leases, intent_key};
use crate::metrics::{JobOutcome, Metrics};
use crate::policy::{
    AfterFailure, Allowlist, Decision, Outcome, Position, RetryPolicy, after_failure, decide,
};

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
    /// Allowed chart sources and namespaces.
    pub allowlist: Allowlist,
    /// Time running jobs get to finish after shutdown starts.
    pub drain_deadline: Duration,
    /// Longest wait for a release lease before the job is given back with a short delay.
    pub lease_wait: Duration,
    /// How long one pull request waits for a job (also bounds how fast a slot notices shutdown).
    pub fetch_expires: Duration,
}

impl Settings {
    /// Defaults for a worker called `worker_id`.
    pub fn new(worker_id: impl Into<String>) -> Settings {
        Settings {
            worker_id: worker_id.into(),
            concurrency: 4,
            max_attempts: 5,
            retry: RetryPolicy::default(),
            allowlist: Allowlist::default(),
            drain_deadline: Duration::from_secs(60),
            lease_wait: Duration::from_secs(60),
            fetch_expires: Duration::from_secs(2),
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
    /// The advisory subscription failed.
    #[error("cannot subscribe to the MAX_DELIVERIES advisory: {0}")]
    Advisory(String),
}

/// Everything a job needs, shared by the slots.
struct Shared<D, S> {
    js: Context,
    stream: stream::Stream,
    driver: Arc<D>,
    status: S,
    settings: Settings,
    metrics: Metrics,
    leases: Leases,
    intents: Intents,
    ack_wait: Duration,
    /// Cancelled when the drain deadline passes: running jobs stop and are Nak'ed.
    hard_stop: CancellationToken,
}

/// Runs the pool until `shutdown` is cancelled and the running jobs are settled.
pub async fn run_pool<D, S>(
    js: Context,
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
    let intents = Intents::open(&js).await?;
    let advisories = client
        .subscribe(max_deliveries_subject())
        .await
        .map_err(|e| PoolError::Advisory(e.to_string()))?;
    let shared = Arc::new(Shared {
        js,
        stream,
        driver,
        status,
        settings,
        metrics,
        leases,
        intents,
        ack_wait,
        hard_stop: CancellationToken::new(),
    });
    info!(
        worker = %shared.settings.worker_id,
        concurrency = shared.settings.concurrency,
        ack_wait = ?ack_wait,
        lease_ttl = ?shared.leases.ttl(),
        "worker pool started"
    );

    let advisory_task = tokio::spawn(watch_advisories(
        shared.clone(),
        advisories,
        shutdown.clone(),
    ));
    let mut slots = tokio::task::JoinSet::new();
    for slot in 0..shared.settings.concurrency.max(1) {
        slots.spawn(run_slot(
            shared.clone(),
            consumer.clone(),
            slot,
            shutdown.clone(),
        ));
    }

    shutdown.cancelled().await;
    info!(deadline = ?shared.settings.drain_deadline, "shutting down: finishing running jobs");
    let drained = tokio::time::timeout(shared.settings.drain_deadline, async {
        while slots.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!("drain deadline passed: cancelling running jobs and returning them to the queue");
        shared.hard_stop.cancel();
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
            .expires(shared.settings.fetch_expires)
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
                settle(&shared, &message, AckKind::Nak(None)).await;
                continue;
            }
            process(&shared, message).await;
        }
    }
}

fn backoff_step(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1u64 << failures.min(6)).min(5000))
}

async fn pause(token: &CancellationToken, delay: Duration) {
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
            settle(shared, &message, AckKind::Nak(None)).await;
            return;
        }
    };
    shared.metrics.in_flight.inc();
    let span = info_span!(
        "job",
        job_id = tracing::field::Empty,
        seq = sequence,
        attempt
    );
    let outcome = handle(shared, &message, attempt, sequence, &span)
        .instrument(span.clone())
        .await;
    shared.metrics.in_flight.dec();
    shared.metrics.job(outcome);
    shared
        .metrics
        .job_duration
        .observe(started.elapsed().as_secs_f64());
    span.in_scope(|| debug!(outcome = outcome.as_str(), "job settled"));
}

/// Shortest Progress/renewal period (a zero period would make `interval` panic).
const MIN_TICK: Duration = Duration::from_millis(100);

/// What ended the Helm run early.
const STOP_NONE: u8 = 0;
const STOP_SUPERSEDED: u8 = 1;
const STOP_LEASE_LOST: u8 = 2;

/// What a successful run produced.
struct Done {
    phase: StatusPhase,
    outcome: Outcome,
    message: String,
    release: ReleaseInfo,
}

async fn handle<D: HelmDriver, S: StatusSink + 'static>(
    shared: &Shared<D, S>,
    message: &Message,
    attempt: u32,
    sequence: u64,
    span: &tracing::Span,
) -> JobOutcome {
    let job = match JobEvent::decode(&message.payload) {
        Ok(job) => job,
        Err(e) => return reject(shared, message, attempt, sequence, e.to_string()).await,
    };
    span.record("job_id", job.id.as_str());
    if let Err(e) = shared.settings.allowlist.check(&job.config) {
        return reject(shared, message, attempt, sequence, e.to_string()).await;
    }
    let intent_key = intent_key(&job.component);
    let Some(decision) = persist(shared, "read the intent", || {
        shared.intents.claim(&intent_key, &job)
    })
    .await
    else {
        return give_back(shared, message, None).await;
    };
    if let Some(outcome) = skip_unless_run(shared, message, decision, None).await {
        return outcome;
    }

    let (start_phase, fail_phase) = match job.action {
        JobAction::Apply => (StatusPhase::Deploying, StatusPhase::Failed),
        JobAction::Delete => (StatusPhase::Terminating, StatusPhase::TerminationFailed),
    };
    let config = &job.config;
    let start_message = match job.action {
        JobAction::Apply => format!(
            "deploying chart {}:{} as release {}/{} (attempt {attempt})",
            config.chart_name(),
            config.chart_version(),
            config.release_namespace,
            config.release_name
        ),
        JobAction::Delete => format!(
            "uninstalling release {}/{} (attempt {attempt})",
            config.release_namespace, config.release_name
        ),
    };
    let start = event(shared, &job, start_phase, start_message, attempt);
    if persist(shared, "publish the status", || {
        shared.status.publish_status(&start)
    })
    .await
    .is_none()
    {
        return give_back(shared, message, None).await;
    }

    // The lease, with Progress acks while waiting for it.
    let lease_key = component_key(&config.release_namespace, &config.release_name);
    let lease = match acquire(shared, message, &lease_key).await {
        Acquired::Lease(lease) => lease,
        Acquired::TooLong => {
            info!("lease wait too long; giving the job back");
            return give_back(shared, message, Some(Duration::from_secs(1))).await;
        }
        Acquired::Stopped => return give_back(shared, message, None).await,
    };

    // While we waited, a newer generation may have arrived, or another delivery of this very job
    // may have finished it: JetStream can hand a job out twice (e.g. a server restarted after a
    // crash forgets a delivery), and both copies then queue for this lease. Helm must not run
    // again for a generation that is done.
    if let Some(Some(intent)) = persist(shared, "read the intent", || {
        shared.intents.current(&intent_key, Position::of(&job))
    })
    .await
    {
        let decision = decide(Position::of(&job), Some(&intent));
        if let Some(outcome) = skip_unless_run(shared, message, decision, Some(&lease)).await {
            return outcome;
        }
    }

    let cancel = shared.hard_stop.child_token();
    let stopped = AtomicU8::new(STOP_NONE);
    let helm_started = Instant::now();
    let held = std::sync::Mutex::new(lease);
    let result = {
        let run = execute(shared, &job, &cancel);
        let keeper = keep_alive(
            shared,
            message,
            &held,
            &intent_key,
            Position::of(&job),
            &cancel,
            &stopped,
        );
        tokio::pin!(run, keeper);
        let mut keeper_done = false;
        loop {
            tokio::select! {
                biased;
                result = &mut run => break result,
                () = &mut keeper, if !keeper_done => keeper_done = true,
            }
        }
    };
    let lease = match held.into_inner() {
        Ok(lease) => lease,
        Err(poisoned) => poisoned.into_inner(),
    };
    shared
        .metrics
        .helm_duration
        .observe(helm_started.elapsed().as_secs_f64());

    match result {
        Ok(done) => {
            let status =
                event(shared, &job, done.phase, done.message, attempt).with_release(done.release);
            // The intent first: once the status is out, the writer may remove the finalizer
            // and the object may be gone, so the record of its end must already be there for
            // a late copy of this job. A copy that finds it publishes this status again.
            let ok = persist(shared, "record the intent", || {
                shared
                    .intents
                    .finish(&intent_key, &job, done.outcome, &status)
            })
            .await
            .is_some()
                && persist(shared, "publish the status", || {
                    shared.status.publish_status(&status)
                })
                .await
                .is_some();
            release(shared, &lease).await;
            if !ok {
                return give_back(shared, message, None).await;
            }
            info!(phase = ?status.phase, "job done");
            settle(shared, message, AckKind::Ack).await;
            JobOutcome::Succeeded
        }
        Err(e) => {
            release(shared, &lease).await;
            match stopped.load(Ordering::SeqCst) {
                STOP_SUPERSEDED => {
                    info!("a newer generation arrived; cancelled this run");
                    settle(shared, message, AckKind::Ack).await;
                    return JobOutcome::Superseded;
                }
                STOP_LEASE_LOST => {
                    warn!("lost the release lease; giving the job back");
                    return give_back(shared, message, Some(Duration::from_secs(1))).await;
                }
                _ => {}
            }
            if shared.hard_stop.is_cancelled() {
                return give_back(shared, message, None).await;
            }
            match after_failure(
                e.failure(),
                attempt,
                shared.settings.max_attempts,
                &shared.settings.retry,
            ) {
                AfterFailure::Retry(delay) => {
                    warn!(error = %e, retry_in = ?delay, "transient failure; will retry");
                    shared.metrics.retries.inc();
                    settle(shared, message, AckKind::Nak(Some(delay))).await;
                    JobOutcome::Retried
                }
                AfterFailure::GiveUp => {
                    let reason = format!(
                        "{e} (attempt {attempt} of {})",
                        shared.settings.max_attempts
                    );
                    warn!(error = %e, "job failed for good");
                    let status = event(shared, &job, fail_phase, reason.clone(), attempt);
                    if persist(shared, "publish the status", || {
                        shared.status.publish_status(&status)
                    })
                    .await
                    .is_none()
                    {
                        return give_back(shared, message, None).await;
                    }
                    let _ = persist(shared, "record the intent", || {
                        shared
                            .intents
                            .finish(&intent_key, &job, Outcome::Failed, &status)
                    })
                    .await;
                    bury(shared, message, attempt, sequence, reason).await
                }
            }
        }
    }
}

/// The Helm work of a job, with the lease held.
async fn execute<D: HelmDriver, S>(
    shared: &Shared<D, S>,
    job: &JobEvent,
    cancel: &CancellationToken,
) -> Result<Done, DriverError> {
    let config = &job.config;
    let (name, namespace) = (&config.release_name, &config.release_namespace);
    let timeout = Duration::from_secs(job.timeout_seconds.max(1));
    let driver = &shared.driver;
    let mut notes = Vec::new();
    match job.action {
        JobAction::Apply => {
            if let Some(current) = driver.status(name, namespace, cancel).await?
                && let Some(plan) = recovery_plan(
                    &current.status,
                    &driver.history(name, namespace, cancel).await?,
                )
            {
                warn!(release = %name, from = %current.status, "recovering a stuck release");
                match &plan {
                    crate::driver::Recovery::Rollback { revision, .. } => {
                        driver
                            .rollback(name, namespace, *revision, timeout, cancel)
                            .await?;
                    }
                    crate::driver::Recovery::Uninstall { .. } => {
                        driver.uninstall(name, namespace, timeout, cancel).await?;
                    }
                }
                notes.push(plan.describe(name));
            }
            let release = driver.apply(Apply { config, timeout }, cancel).await?;
            notes.push(format!(
                "release {name} revision {} is {} (chart {} {})",
                release.revision,
                release.status,
                config.chart_name(),
                release
                    .chart_version
                    .as_deref()
                    .unwrap_or(config.chart_version())
            ));
            Ok(Done {
                phase: StatusPhase::Ready,
                outcome: Outcome::Ready,
                message: notes.join("; "),
                release: ReleaseInfo {
                    name: name.clone(),
                    namespace: namespace.clone(),
                    revision: Some(release.revision),
                    chart_version: release.chart_version,
                    helm_status: Some(release.status.to_string()),
                },
            })
        }
        JobAction::Delete => {
            notes.push(
                match driver.uninstall(name, namespace, timeout, cancel).await? {
                    Uninstalled::Removed => format!("release {name} uninstalled"),
                    Uninstalled::NotFound => format!("release {name} was already gone"),
                },
            );
            if config.manage_namespace {
                if *namespace == job.component.namespace {
                    notes.push(format!(
                        "namespace {namespace} was not deleted: it is the Component's own namespace"
                    ));
                } else {
                    notes.push(match driver.delete_namespace(namespace, cancel).await? {
                        NamespaceDeletion::Deleted => format!("namespace {namespace} deleted"),
                        NamespaceDeletion::Skipped(why) => why,
                    });
                }
            }
            Ok(Done {
                phase: StatusPhase::Terminated,
                outcome: Outcome::Terminated,
                message: notes.join("; "),
                release: ReleaseInfo {
                    name: name.clone(),
                    namespace: namespace.clone(),
                    revision: None,
                    chart_version: None,
                    helm_status: Some("uninstalled".into()),
                },
            })
        }
    }
}

enum Acquired {
    Lease(Lease),
    TooLong,
    Stopped,
}

/// Takes the release lease, sending Progress acks while another job holds it.
async fn acquire<D, S>(shared: &Shared<D, S>, message: &Message, key: &str) -> Acquired {
    let started = Instant::now();
    let mut waited = false;
    let mut last_progress = Instant::now();
    let poll =
        (shared.leases.ttl() / 20).clamp(Duration::from_millis(50), Duration::from_millis(500));
    loop {
        match shared
            .leases
            .try_acquire(key, &shared.settings.worker_id)
            .await
        {
            Ok(Some(lease)) => return Acquired::Lease(lease),
            Ok(None) => {
                if !waited {
                    waited = true;
                    shared.metrics.lease_waits.inc();
                    info!(lease = key, "release busy; waiting for its lease");
                }
            }
            Err(e) => warn!(error = %e, "cannot take the lease; retrying"),
        }
        if started.elapsed() >= shared.settings.lease_wait {
            return Acquired::TooLong;
        }
        if last_progress.elapsed() >= shared.ack_wait / 3 {
            let _ = message.ack_with(AckKind::Progress).await;
            last_progress = Instant::now();
        }
        if shared.hard_stop.is_cancelled() {
            return Acquired::Stopped;
        }
        pause(&shared.hard_stop, poll).await;
    }
}

/// Keeps a running job alive: Progress acks every `ack_wait/3`, lease renewal every `ttl/3`
/// (the renewed lease is written back to `held`), and cancels the run when a newer generation
/// is recorded or the lease is lost. Returns only after cancelling the run.
async fn keep_alive<D, S>(
    shared: &Shared<D, S>,
    message: &Message,
    held: &std::sync::Mutex<Lease>,
    intent_key: &str,
    position: Position,
    cancel: &CancellationToken,
    stopped: &AtomicU8,
) {
    let mut progress = tokio::time::interval((shared.ack_wait / 3).max(MIN_TICK));
    let mut renew = tokio::time::interval((shared.leases.ttl() / 3).max(MIN_TICK));
    progress.tick().await;
    renew.tick().await;
    let newer = shared.intents.newer_than(intent_key, position);
    tokio::pin!(newer);
    loop {
        tokio::select! {
            by = &mut newer => {
                info!(newer_generation = by.generation, "newer intent recorded; cancelling this run");
                stopped.store(STOP_SUPERSEDED, Ordering::SeqCst);
                cancel.cancel();
                return;
            }
            _ = progress.tick() => {
                if let Err(e) = message.ack_with(AckKind::Progress).await {
                    warn!(error = %e, "cannot send a progress ack");
                }
            }
            _ = renew.tick() => {
                let current = match held.lock() {
                    Ok(guard) => guard.clone(),
                    Err(poisoned) => poisoned.into_inner().clone(),
                };
                match shared.leases.renew(&current, &shared.settings.worker_id).await {
                    Ok(renewed) => match held.lock() {
                        Ok(mut guard) => *guard = renewed,
                        Err(poisoned) => *poisoned.into_inner() = renewed,
                    },
                    Err(KvError::LeaseLost(key)) => {
                        warn!(lease = %key, "release lease taken over; cancelling this run");
                        stopped.store(STOP_LEASE_LOST, Ordering::SeqCst);
                        cancel.cancel();
                        return;
                    }
                    Err(e) => warn!(error = %e, "cannot renew the release lease; retrying"),
                }
            }
        }
    }
}

/// Gives the lease back; a failure only delays the next job on the release until it expires.
async fn release<D, S>(shared: &Shared<D, S>, lease: &Lease) {
    if let Err(e) = shared.leases.release(lease).await {
        warn!(error = %e, "cannot release the lease; it will expire");
    }
}

/// A status event of this job.
fn event<D, S>(
    shared: &Shared<D, S>,
    job: &JobEvent,
    phase: StatusPhase,
    message: String,
    attempt: u32,
) -> StatusEvent {
    StatusEvent::new(
        job.id.clone(),
        job.component.clone(),
        phase,
        message,
        attempt,
        shared.settings.worker_id.clone(),
        jiff::Timestamp::now(),
    )
}

/// Retries `op` with backoff until it succeeds; `None` once the hard stop fires (the job is then
/// redelivered and, being idempotent, does the same again).
async fn persist<D, S, T, E, F, Fut>(shared: &Shared<D, S>, what: &str, mut op: F) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut failures = 0u32;
    loop {
        match op().await {
            Ok(value) => return Some(value),
            Err(e) => {
                failures += 1;
                shared.metrics.nats_retries.inc();
                warn!(error = %e, failures, "cannot {what}; retrying");
            }
        }
        if shared.hard_stop.is_cancelled() {
            return None;
        }
        pause(&shared.hard_stop, backoff_step(failures)).await;
    }
}

/// Acks, Naks or Terms a message, retrying until the server confirms or the hard stop fires.
/// Settles a job the intent says not to run — superseded (ack) or already done (publish its
/// status again, then ack) — releasing `lease` first when one is held. `None` for `Run`.
async fn skip_unless_run<D: HelmDriver, S: StatusSink + 'static>(
    shared: &Shared<D, S>,
    message: &Message,
    decision: Decision,
    lease: Option<&Lease>,
) -> Option<JobOutcome> {
    if matches!(decision, Decision::Run) {
        return None;
    }
    if let Some(lease) = lease {
        release(shared, lease).await;
    }
    match decision {
        Decision::Run => None,
        Decision::Superseded { by } => {
            info!(
                newer_generation = by.generation,
                "superseded by a newer intent; not running helm"
            );
            settle(shared, message, AckKind::Ack).await;
            Some(JobOutcome::Superseded)
        }
        Decision::AlreadyDone(status) => {
            info!(phase = ?status.phase, "already done; publishing its status again");
            if persist(shared, "publish the status", || {
                shared.status.publish_status(&status)
            })
            .await
            .is_none()
            {
                return Some(give_back(shared, message, None).await);
            }
            settle(shared, message, AckKind::Ack).await;
            Some(JobOutcome::Duplicate)
        }
    }
}

async fn settle<D, S>(shared: &Shared<D, S>, message: &Message, kind: AckKind) {
    let _ = persist(shared, "settle the message", || {
        message.double_ack_with(kind)
    })
    .await;
}

/// Returns a message for redelivery (shutdown, lease trouble, lost connection).
async fn give_back<D, S>(
    shared: &Shared<D, S>,
    message: &Message,
    delay: Option<Duration>,
) -> JobOutcome {
    settle(shared, message, AckKind::Nak(delay)).await;
    JobOutcome::Requeued
}

/// Copies a message to the dead-letter stream, then terminates it (Term deletes it from the
/// work queue, so the copy must be stored first).
async fn bury<D, S>(
    shared: &Shared<D, S>,
    message: &Message,
    attempt: u32,
    sequence: u64,
    reason: String,
) -> JobOutcome {
    let letter = DeadLetter {
        payload: message.payload.clone(),
        subject: message.subject.to_string(),
        stream: JOBS_STREAM.to_owned(),
        sequence,
        attempts: u64::from(attempt),
        reason,
    };
    if persist(shared, "dead-letter the job", || {
        dead_letter(&shared.js, &letter)
    })
    .await
    .is_none()
    {
        return give_back(shared, message, None).await;
    }
    shared.metrics.dead_letters.inc();
    settle(shared, message, AckKind::Term).await;
    JobOutcome::Failed
}

/// Bad input: dead-letter it once with the reason, tell the Component it names, and Term it.
async fn reject<D, S: StatusSink>(
    shared: &Shared<D, S>,
    message: &Message,
    attempt: u32,
    sequence: u64,
    reason: String,
) -> JobOutcome {
    warn!(%reason, "rejecting a job");
    if let Some(status) = rejection_status(
        &message.payload,
        &reason,
        attempt,
        &shared.settings.worker_id,
    ) {
        let _ = persist(shared, "publish the status", || {
            shared.status.publish_status(&status)
        })
        .await;
    }
    match bury(shared, message, attempt, sequence, reason).await {
        JobOutcome::Failed => JobOutcome::Rejected,
        other => other,
    }
}

/// The `Failed` (or `TerminationFailed` for a delete) status of a rejected payload, when the
/// payload names a Component.
pub fn rejection_status(
    payload: &[u8],
    reason: &str,
    attempt: u32,
    worker: &str,
) -> Option<StatusEvent> {
    let component = JobEvent::component_hint(payload)?;
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let job_id = value.get("id").and_then(|v| v.as_str()).unwrap_or_default();
    let phase = if value.get("action").and_then(|v| v.as_str()) == Some("delete") {
        StatusPhase::TerminationFailed
    } else {
        StatusPhase::Failed
    };
    Some(StatusEvent::new(
        job_id,
        component,
        phase,
        format!("job rejected: {reason}"),
        attempt,
        worker,
        jiff::Timestamp::now(),
    ))
}

/// Moves jobs that reached `max_deliver` to the dead-letter stream: JetStream stops delivering
/// them but keeps them in the work queue (DESIGN §9). Every worker hears the advisory; the
/// dead letter's dedupe id (stream + sequence) makes handling it twice harmless.
async fn watch_advisories<D: HelmDriver, S: StatusSink + 'static>(
    shared: Arc<Shared<D, S>>,
    mut advisories: async_nats::Subscriber,
    shutdown: CancellationToken,
) {
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
        let stored = match shared.stream.get_raw_message(sequence).await {
            Ok(stored) => stored,
            Err(e) => {
                debug!(sequence, error = %e, "max-deliveries job already gone");
                continue;
            }
        };
        let reason = format!("exceeded max_deliver ({deliveries} deliveries)");
        warn!(sequence, %reason, "moving an undeliverable job to the dead-letter stream");
        if let Some(status) = rejection_status(
            &stored.payload,
            &reason,
            u32::try_from(deliveries).unwrap_or(u32::MAX),
            &shared.settings.worker_id,
        ) {
            let _ = persist(&shared, "publish the status", || {
                shared.status.publish_status(&status)
            })
            .await;
        }
        let letter = DeadLetter {
            payload: stored.payload.clone(),
            subject: stored.subject.to_string(),
            stream: JOBS_STREAM.to_owned(),
            sequence,
            attempts: deliveries,
            reason,
        };
        if persist(&shared, "dead-letter the job", || {
            dead_letter(&shared.js, &letter)
        })
        .await
        .is_none()
        {
            continue;
        }
        shared.metrics.dead_letters.inc();
        if let Err(e) = shared.stream.delete_message(sequence).await {
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
        let status = rejection_status(payload, "unknown schema", 1, "w").unwrap();
        assert_eq!(status.phase, StatusPhase::TerminationFailed);
        assert_eq!(status.job_id, "j1");
        assert_eq!(status.component.generation, 3);
        assert_eq!(status.message, "job rejected: unknown schema");
        assert!(rejection_status(b"not json", "x", 1, "w").is_none());
        assert!(
            rejection_status(
                br#"{"component":{"namespace":"","name":"x","generation":1}}"#,
                "x",
                1,
                "w"
            )
            .is_none()
        );
    }

    #[test]
    fn the_advisory_subject_names_the_workers_consumer() {
        assert_eq!(
            max_deliveries_subject(),
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.HELMQ_JOBS.helmq-workers"
        );
    }
}

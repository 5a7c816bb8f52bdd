//! One job from delivery to settlement, in the order of DESIGN.md §5: decode and check it (bad
//! input is dead-lettered once) → compare it with its object's latest intent (an older
//! generation is acked as superseded, a finished one has its status published again) → publish
//! `Deploying`/`Terminating` → take the release lease (Progress acks while waiting) → compare
//! again → run Helm under [`guard`] (Progress acks, lease renewal; a newer generation, a lost
//! lease or the hard stop cancels the run) → record the intent, publish the outcome, and ack,
//! Nak with a delay, or dead-letter.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::message::{AckKind, Message};
use async_nats::jetstream::{self, stream};
use backon::Retryable as _;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use helmq_queue::{PublishError, StatusSink};
use helmq_schemas::event::{JobAction, JobEvent, ReleaseInfo, StatusEvent, StatusPhase};
use helmq_schemas::subject::{component_key, job_subject};

use crate::dead_letter;
use crate::driver::{
    Apply, DriverError, HelmDriver, NamespaceDeletion, Pending, Recovery, Target, Uninstalled,
    is_pending, judge_pending, recovery_plan,
};
use crate::exclusivity::{Intents, Lease, LeaseLost, LeaseTiming, Leases, intent_key};
use crate::metrics::{JobOutcome, Metrics};
use crate::ownership::{self, Identity, Owner, Ownership};
use crate::policy::{
    AfterFailure, Decision, Outcome, Position, after_failure, decide, republished,
};
use crate::pool::{Settings, pause};
use crate::readable::readable;

/// Shortest Progress period (a zero period would make `interval` panic).
const MIN_TICK: Duration = Duration::from_millis(100);
/// Added to the wait for a pending release to become recoverable (clock steps, Helm's
/// one-second timestamps).
const STALE_SLACK: Duration = Duration::from_millis(500);
/// Delay before a job given back for a busy or lost lease comes again.
const LEASE_RETRY: Duration = Duration::from_secs(1);

/// What every job of a pool shares, apart from the driver and the status sink.
pub(crate) struct Context {
    pub(crate) js: jetstream::Context,
    pub(crate) stream: stream::Stream,
    pub(crate) settings: Settings,
    pub(crate) metrics: Metrics,
    pub(crate) leases: Leases,
    pub(crate) intents: Intents,
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

/// Why a Helm run was stopped before it finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// A newer intent was recorded for the object.
    Superseded(Position),
    /// Another worker took the release lease.
    LeaseLost,
    /// The drain deadline passed.
    Shutdown,
}

/// What a successful run produced.
struct Done {
    phase: StatusPhase,
    outcome: Outcome,
    message: String,
    release: ReleaseInfo,
}

/// One job, start to end.
pub(crate) async fn handle<D: HelmDriver, S: StatusSink>(
    shared: &Shared<D, S>,
    message: &Message,
    delivery: Delivery,
    span: &tracing::Span,
) -> JobOutcome {
    let ctx = &shared.ctx;
    let job = match admit(&ctx.settings, &message.subject, &message.payload) {
        Ok(job) => job,
        Err(refused) => return dead_letter::reject(shared, message, delivery, refused).await,
    };
    span.record("job_id", job.id.as_str());
    let key = intent_key(&job.component);
    let position = Position::of(&job);
    let Some(decision) = ctx
        .persist("read the intent", || ctx.intents.claim(&key, &job))
        .await
    else {
        return ctx.give_back(message, None).await;
    };
    if let Some(outcome) = skip_unless_run(shared, message, delivery, decision, None).await {
        return outcome;
    }
    match shared.publish(&start_event(ctx, &job, delivery)).await {
        Published::Stored => {}
        Published::GaveUp => return ctx.give_back(message, None).await,
        Published::Refused(error) => return unpublishable(ctx, message, delivery, error).await,
    }
    let (lease, run_number) = match take_release(shared, message, delivery, &job, &key).await {
        Ok(taken) => taken,
        Err(outcome) => return outcome,
    };
    let cancel = ctx.hard_stop.child_token();
    let helm_started = Instant::now();
    let run = execute(shared, &job, lease.revision, &cancel);
    let (result, lease) = guard(ctx, message, lease, &key, position, &cancel, run).await;
    ctx.metrics
        .helm_duration
        .observe(helm_started.elapsed().as_secs_f64());
    match result {
        Ok(Ok(done)) => succeed(shared, message, &job, delivery, &key, &lease, done).await,
        Ok(Err(error)) => {
            ctx.release(&lease).await;
            fail(shared, message, &job, delivery, run_number, &key, error).await
        }
        Err(stop) => {
            ctx.release(&lease).await;
            stopped(ctx, message, stop).await
        }
    }
}

/// Takes the release lease for a job that is to run, checks the intent again and counts the
/// run; `Err` with how the job was settled when it must not run now.
async fn take_release<D, S: StatusSink>(
    shared: &Shared<D, S>,
    message: &Message,
    delivery: Delivery,
    job: &JobEvent,
    key: &str,
) -> Result<(Lease, u32), JobOutcome> {
    let ctx = &shared.ctx;
    let position = Position::of(job);
    let lease = match acquire(ctx, message, &lease_key(job)).await {
        Acquired::Lease(lease) => lease,
        Acquired::TooLong => {
            info!("lease wait too long; giving the job back");
            return Err(ctx.give_back(message, Some(LEASE_RETRY)).await);
        }
        Acquired::Stopped => return Err(ctx.give_back(message, None).await),
    };
    // While we waited, a newer generation may have arrived, or another delivery of this very job
    // may have finished it: JetStream can hand a job out twice (e.g. a server restarted after a
    // crash forgets a delivery), and both copies then queue for this lease. Helm must not run
    // again for a generation that is done.
    if let Some(Some(intent)) = ctx
        .persist("read the intent", || ctx.intents.current(key, position))
        .await
    {
        let decision = decide(position, Some(&intent));
        if let Some(outcome) =
            skip_unless_run(shared, message, delivery, decision, Some(&lease)).await
        {
            return Err(outcome);
        }
    }
    match ctx
        .persist("count the run", || ctx.intents.begin_run(key, job))
        .await
    {
        Some(Some(run)) => Ok((lease, run)),
        // Replaced or ended since the check just above: the next delivery sorts it out.
        Some(None) | None => {
            ctx.release(&lease).await;
            Err(ctx.give_back(message, None).await)
        }
    }
}

/// Why a delivered job is refused; each holds the dead-letter reason.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Refused {
    /// The payload is not a valid job: nobody is told. What it names cannot be believed (it
    /// may name another tenant's Component, at any generation).
    Undecodable(String),
    /// The subject is not the one of the Component the payload names: nobody is told (that
    /// may be another tenant's, and the publisher may not speak for it).
    Subject(String),
    /// A valid job on its own subject that this worker refuses (allowlist, timeout limit): the
    /// Component is told (`Failed` or `TerminationFailed`, answering the job's id).
    Policy(Box<JobEvent>, String),
}

impl Refused {
    /// The dead-letter reason.
    pub(crate) fn reason(&self) -> &str {
        match self {
            Refused::Undecodable(reason)
            | Refused::Subject(reason)
            | Refused::Policy(_, reason) => reason,
        }
    }

    /// The job whose Component is told of the refusal, if any.
    pub(crate) fn told(&self) -> Option<&JobEvent> {
        match self {
            Refused::Policy(job, _) => Some(job),
            Refused::Undecodable(_) | Refused::Subject(_) => None,
        }
    }
}

/// Decodes a payload, checks that it came on its Component's subject (per-namespace publish
/// permissions in NATS then bound what a publisher can name), and checks it against the
/// allowlist and the timeout limit.
pub(crate) fn admit(
    settings: &Settings,
    subject: &str,
    payload: &[u8],
) -> Result<JobEvent, Refused> {
    let job = JobEvent::decode(payload).map_err(|e| Refused::Undecodable(e.to_string()))?;
    check_subject(subject, &job).map_err(Refused::Subject)?;
    match allowed(settings, &job) {
        Ok(()) => Ok(job),
        Err(reason) => Err(Refused::Policy(Box::new(job), reason)),
    }
}

/// The job's subject must be `helmq.jobs.<namespace>.<name>` of the Component it names.
pub(crate) fn check_subject(subject: &str, job: &JobEvent) -> Result<(), String> {
    let (namespace, name) = (&job.component.namespace, &job.component.name);
    let expected = job_subject(namespace, name);
    if subject == expected {
        Ok(())
    } else {
        Err(format!(
            "job for component {namespace}/{name} was published on subject {subject}, not on {expected}: a job must come on its component's subject"
        ))
    }
}

/// The allowlist and the timeout limit.
fn allowed(settings: &Settings, job: &JobEvent) -> Result<(), String> {
    settings
        .allowlist
        .check(&job.config)
        .map_err(|e| e.to_string())?;
    let max = settings.max_timeout.as_secs();
    if job.timeout_seconds > max {
        return Err(format!(
            "timeoutSeconds {} is over this worker's limit of {max} (--max-timeout)",
            job.timeout_seconds
        ));
    }
    Ok(())
}

/// The lease key of the release a job works on: the release, not the Component, is what two
/// runs must never share.
fn lease_key(job: &JobEvent) -> String {
    component_key(&job.config.release_namespace, &job.config.release_name)
}

/// `Deploying` or `Terminating`, with what is about to happen.
fn start_event(ctx: &Context, job: &JobEvent, delivery: Delivery) -> StatusEvent {
    let config = &job.config;
    let attempt = delivery.attempt;
    let (phase, text) = match job.action {
        JobAction::Apply => (
            StatusPhase::Deploying,
            format!(
                "deploying chart {}:{} as release {}/{} (attempt {attempt})",
                config.chart_name(),
                config.chart_version(),
                config.release_namespace,
                config.release_name
            ),
        ),
        JobAction::Delete => (
            StatusPhase::Terminating,
            format!(
                "uninstalling release {}/{} (attempt {attempt})",
                config.release_namespace, config.release_name
            ),
        ),
    };
    ctx.event(job, phase, text, delivery)
}

/// The run finished: record the intent, publish the outcome, ack.
async fn succeed<D: HelmDriver, S: StatusSink>(
    shared: &Shared<D, S>,
    message: &Message,
    job: &JobEvent,
    delivery: Delivery,
    key: &str,
    lease: &Lease,
    done: Done,
) -> JobOutcome {
    let ctx = &shared.ctx;
    let status = ctx
        .event(job, done.phase, done.message, delivery)
        .with_release(done.release);
    // The intent first: once the status is out, the writer may remove the finalizer and the
    // object may be gone, so the record of its end must already be there for a late copy of
    // this job. A copy that finds it publishes this status again.
    let recorded = ctx
        .persist("record the intent", || {
            ctx.intents.finish(key, job, done.outcome, &status)
        })
        .await
        .is_some();
    let published = if recorded {
        shared.publish(&status).await
    } else {
        Published::GaveUp
    };
    ctx.release(lease).await;
    match published {
        Published::Stored => {}
        Published::GaveUp => return ctx.give_back(message, None).await,
        Published::Refused(error) => return unpublishable(ctx, message, delivery, error).await,
    }
    info!(phase = ?status.phase, "job done");
    ctx.settle(message, AckKind::Ack).await;
    JobOutcome::Succeeded
}

/// Run `run` of the job failed: retry later, or publish the failure and dead-letter the job.
async fn fail<D: HelmDriver, S: StatusSink>(
    shared: &Shared<D, S>,
    message: &Message,
    job: &JobEvent,
    delivery: Delivery,
    run: u32,
    key: &str,
    error: DriverError,
) -> JobOutcome {
    let ctx = &shared.ctx;
    if ctx.hard_stop.is_cancelled() {
        return ctx.give_back(message, None).await;
    }
    let settings = &ctx.settings;
    match after_failure(error.failure(), run, settings.max_attempts, &settings.retry) {
        AfterFailure::Retry(delay) => {
            // A pending release left by a dead run becomes recoverable at a known time: retrying
            // sooner would only spend the attempt budget (and end the job Failed under load).
            let delay = delay.max(
                error
                    .retry_after()
                    .map_or(Duration::ZERO, |d| d + STALE_SLACK),
            );
            warn!(%error, retry_in = ?delay, "transient failure; will retry");
            ctx.metrics.retries.inc();
            ctx.settle(message, AckKind::Nak(Some(delay))).await;
            JobOutcome::Retried
        }
        AfterFailure::GiveUp => {
            let reason = readable(
                format!("{error} (attempt {run} of {})", settings.max_attempts),
                &error.to_string(),
            );
            warn!(%error, "job failed for good");
            let phase = match job.action {
                JobAction::Apply => StatusPhase::Failed,
                JobAction::Delete => StatusPhase::TerminationFailed,
            };
            let status = ctx.event(job, phase, reason.clone(), delivery);
            let reason = match shared.publish(&status).await {
                Published::Stored => reason,
                Published::GaveUp => return ctx.give_back(message, None).await,
                // First: the reason may be cut where it is stored.
                Published::Refused(error) => {
                    format!("its status cannot be published ({error}): {reason}")
                }
            };
            let _ = ctx
                .persist("record the intent", || {
                    ctx.intents.finish(key, job, Outcome::Failed, &status)
                })
                .await;
            dead_letter::bury(ctx, message, delivery, reason).await
        }
    }
}

/// The run was stopped from outside.
async fn stopped(ctx: &Context, message: &Message, stop: Stop) -> JobOutcome {
    match stop {
        Stop::Superseded(by) => {
            info!(
                newer_generation = by.generation,
                "a newer intent arrived; cancelled this run"
            );
            ctx.settle(message, AckKind::Ack).await;
            JobOutcome::Superseded
        }
        Stop::LeaseLost => {
            warn!("lost the release lease; giving the job back");
            ctx.give_back(message, Some(LEASE_RETRY)).await
        }
        Stop::Shutdown => ctx.give_back(message, None).await,
    }
}

/// The Helm work of a job, with the lease held (at `lease_revision` when it was taken: every
/// revision a later holder writes is higher).
async fn execute<D: HelmDriver, S>(
    shared: &Shared<D, S>,
    job: &JobEvent,
    lease_revision: u64,
    cancel: &CancellationToken,
) -> Result<Done, DriverError> {
    let config = &job.config;
    let (name, namespace) = (&config.release_name, &config.release_namespace);
    let timeout = Duration::from_secs(job.timeout_seconds.max(1));
    let driver = &shared.driver;
    let identity = Identity::for_job(job, shared.ctx.settings.default_service_account.as_deref());
    let owner = Owner::of(job);
    let target = Target {
        release: name,
        namespace,
        identity: &identity,
    };
    let mut notes = Vec::new();
    // Whose release it is comes before any Helm action, recovery included.
    let current = driver.status(target, cancel).await?;
    if let Some(current) = &current {
        let labels = driver.labels(target, current.revision, cancel).await?;
        match ownership::judge(&target.describe(), &labels, &owner, config.adopt) {
            Ok(Ownership::Ours) => {}
            Ok(Ownership::Adopted) => {
                info!(release = %target.describe(), "adopting a release without owner labels");
                notes.push(format!("release {name} adopted"));
            }
            Err(refused) if shared.ctx.settings.allow_shared_releases => {
                info!(%refused, "acting anyway: --allow-shared-releases");
            }
            Err(refused) => return Err(refused.into()),
        }
    }
    match job.action {
        JobAction::Apply => {
            if let Some(current) = current.filter(|c| is_pending(&c.status)) {
                let history = driver.history(target, cancel).await?;
                let stale_after = shared.ctx.timing.ttl + shared.ctx.timing.grace;
                match judge_pending(
                    &history,
                    jiff::Timestamp::now(),
                    stale_after,
                    lease_revision,
                ) {
                    Pending::Stale => {}
                    Pending::Recent(age) => {
                        return Err(DriverError::StillPending {
                            release: name.clone(),
                            status: current.status,
                            age: age.map_or_else(
                                || "at an unknown time".to_owned(),
                                |age| format!("{}s ago", age.as_secs()),
                            ),
                            stale_in: age.map(|age| stale_after.saturating_sub(age)),
                        });
                    }
                    Pending::Fenced(stamp) => {
                        return Err(DriverError::Fenced {
                            release: name.clone(),
                            status: current.status,
                            stamp,
                            held: lease_revision,
                        });
                    }
                }
                if let Some(plan) = recovery_plan(&current.status, &history) {
                    warn!(release = %name, from = %current.status, "recovering a stuck release");
                    match &plan {
                        Recovery::Rollback { revision, .. } => {
                            driver.rollback(target, *revision, timeout, cancel).await?;
                        }
                        Recovery::Uninstall { .. } => {
                            driver.uninstall(target, timeout, cancel).await?;
                        }
                    }
                    notes.push(plan.describe(name));
                }
            }
            // The tenant is the subject's namespace (checked on admission to equal the
            // payload's Component namespace), never the release namespace a publisher picks.
            let own_namespace = &job.component.namespace;
            let apply = Apply {
                config,
                timeout,
                own_namespace,
                lease_revision,
                identity: &identity,
                owner: &owner,
            };
            let release = driver.apply(apply, cancel).await?;
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
            notes.push(if current.is_none() {
                format!("release {name} was already gone")
            } else {
                match driver.uninstall(target, timeout, cancel).await? {
                    Uninstalled::Removed => format!("release {name} uninstalled"),
                    Uninstalled::NotFound => format!("release {name} was already gone"),
                }
            });
            if config.manage_namespace {
                if *namespace == job.component.namespace {
                    notes.push(format!(
                        "namespace {namespace} was not deleted: it is the Component's own namespace"
                    ));
                } else {
                    notes.push(
                        match driver
                            .delete_namespace(namespace, &identity, &owner, cancel)
                            .await?
                        {
                            NamespaceDeletion::Deleted => format!("namespace {namespace} deleted"),
                            NamespaceDeletion::NotOwned => format!(
                                "namespace {namespace} was not deleted: helmq did not create it for this Component"
                            ),
                            NamespaceDeletion::Skipped(why) => why,
                        },
                    );
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
async fn acquire(ctx: &Context, message: &Message, key: &str) -> Acquired {
    let started = Instant::now();
    let mut waited = false;
    let mut last_progress = Instant::now();
    let poll = (ctx.leases.ttl() / 20).clamp(Duration::from_millis(50), Duration::from_millis(500));
    loop {
        match ctx.leases.try_acquire(key, &ctx.settings.worker_id).await {
            Ok(Some(lease)) => return Acquired::Lease(lease),
            Ok(None) => {
                if !waited {
                    waited = true;
                    ctx.metrics.lease_waits.inc();
                    info!(lease = key, "release busy; waiting for its lease");
                }
            }
            Err(e) => warn!(error = %e, "cannot take the lease; retrying"),
        }
        if started.elapsed() >= ctx.settings.lease_wait {
            return Acquired::TooLong;
        }
        if last_progress.elapsed() >= ctx.ack_wait / 3 {
            let _ = message.ack_with(AckKind::Progress).await;
            last_progress = Instant::now();
        }
        if ctx.hard_stop.is_cancelled() {
            return Acquired::Stopped;
        }
        pause(&ctx.hard_stop, poll).await;
    }
}

/// Runs `run` while keeping its job alive: the release lease is kept by [`Leases::keep`]
/// (renewed with compare-and-set before `run` starts, so a lease lost meanwhile means it never
/// starts) and Progress acks go out every `ack_wait/3`. A newer intent for the object, a lost
/// lease or the hard stop cancels `cancel` and waits for the run to end (its process killed)
/// before reporting why. Gives back the lease as last renewed.
async fn guard<T>(
    ctx: &Context,
    message: &Message,
    lease: Lease,
    intent_key: &str,
    position: Position,
    cancel: &CancellationToken,
    run: impl Future<Output = T>,
) -> (Result<T, Stop>, Lease) {
    let progress_every = (ctx.ack_wait / 3).max(MIN_TICK);
    let mut progress = tokio::time::interval(progress_every);
    progress.tick().await;
    let kept = ctx
        .leases
        .keep(lease, &ctx.settings.worker_id, &ctx.timing, cancel, run);
    let newer = ctx.intents.newer_than(intent_key, position);
    tokio::pin!(kept, newer);
    let mut stop = None;
    loop {
        tokio::select! {
            biased;
            (result, lease) = &mut kept => {
                let result = match (result, stop) {
                    (_, Some(stop)) => Err(stop),
                    (Ok(value), None) => Ok(value),
                    (Err(LeaseLost), None) => {
                        warn!("release lease lost or not renewed in time; the run was stopped or never started");
                        Err(Stop::LeaseLost)
                    }
                };
                return (result, lease);
            }
            () = ctx.hard_stop.cancelled(), if stop.is_none() => {
                stop = Some(Stop::Shutdown);
                cancel.cancel();
            }
            by = &mut newer, if stop.is_none() => {
                info!(newer_generation = by.generation, "newer intent recorded; cancelling this run");
                stop = Some(Stop::Superseded(by));
                cancel.cancel();
            }
            _ = progress.tick() => {
                // Bounded: the loop must come back to the run and the lease.
                match tokio::time::timeout(progress_every, message.ack_with(AckKind::Progress)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!(error = %e, "cannot send a progress ack"),
                    Err(_) => warn!("sending a progress ack timed out"),
                }
            }
        }
    }
}

/// Settles a job the intent says not to run — superseded (ack) or already done (publish its
/// status again, then ack) — releasing `lease` first when one is held. `None` for `Run`.
async fn skip_unless_run<D, S: StatusSink>(
    shared: &Shared<D, S>,
    message: &Message,
    delivery: Delivery,
    decision: Decision,
    lease: Option<&Lease>,
) -> Option<JobOutcome> {
    let ctx = &shared.ctx;
    if decision == Decision::Run {
        return None;
    }
    if let Some(lease) = lease {
        ctx.release(lease).await;
    }
    match decision {
        Decision::Run => None,
        Decision::Superseded { by } => {
            info!(
                newer_generation = by.generation,
                "superseded by a newer intent; not running helm"
            );
            ctx.settle(message, AckKind::Ack).await;
            Some(JobOutcome::Superseded)
        }
        Decision::AlreadyDone(status) => {
            info!(phase = ?status.phase, "already done; publishing its status again");
            // Holding the lease: this delivery published its start; a later attempt: an
            // earlier one may have.
            let may_have_started = lease.is_some() || delivery.attempt > 1;
            let status = republished(
                &status,
                delivery.attempt,
                delivery.sequence,
                may_have_started,
            );
            match shared.publish(&status).await {
                Published::Stored => {}
                Published::GaveUp => return Some(ctx.give_back(message, None).await),
                Published::Refused(error) => {
                    return Some(unpublishable(ctx, message, delivery, error).await);
                }
            }
            ctx.settle(message, AckKind::Ack).await;
            Some(JobOutcome::Duplicate)
        }
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

/// A job whose status the server refuses for good: dead-lettered with the reason.
async fn unpublishable(
    ctx: &Context,
    message: &Message,
    delivery: Delivery,
    error: PublishError,
) -> JobOutcome {
    warn!(%error, "the job's status cannot be published; dead-lettering the job");
    let reason = format!("its status cannot be published: {error}");
    dead_letter::bury(ctx, message, delivery, reason).await
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
                async move { pause(&stop, delay).await }
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

    /// Acks, Naks or Terms a message, retrying until the server confirms or the hard stop fires.
    pub(crate) async fn settle(&self, message: &Message, kind: AckKind) {
        let _ = self
            .persist("settle the message", || message.double_ack_with(kind))
            .await;
    }

    /// Returns a message for redelivery (shutdown, lease trouble, lost connection).
    pub(crate) async fn give_back(&self, message: &Message, delay: Option<Duration>) -> JobOutcome {
        self.settle(message, AckKind::Nak(delay)).await;
        JobOutcome::Requeued
    }

    /// Gives the lease back; a failure only delays the next job on the release until it expires.
    async fn release(&self, lease: &Lease) {
        if let Err(e) = self.leases.release(lease).await {
            warn!(error = %e, "cannot release the lease; it will expire");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use helmq_schemas::event::ComponentRef;

    /// An apply job for `team-a/web.v2` at generation 1, timeout 60 s.
    fn web_job() -> JobEvent {
        JobEvent::new(
            JobAction::Apply,
            ComponentRef {
                namespace: "team-a".into(),
                name: "web.v2".into(),
                uid: None,
                generation: 1,
            },
            helmq_schemas::HelmConfig::parse(
                Some(&serde_json::json!({
                    "repository": {"url": "https://charts.example.com", "name": "x"},
                    "chart": {"name": "nginx", "version": "1.0.0"}
                })),
                "team-a",
                "web.v2",
            )
            .unwrap(),
            60,
            jiff::Timestamp::UNIX_EPOCH,
        )
    }

    #[test]
    fn bad_input_tells_a_component_only_when_it_is_a_valid_job_on_its_own_subject() {
        let mut settings = Settings::new("w");
        settings.max_timeout = Duration::from_secs(30);
        let own = "helmq.jobs.team-a.web_2Ev2";
        let mut undecodable = serde_json::to_value(web_job()).unwrap();
        undecodable["schema"] = serde_json::json!("helmq.job/v9");
        undecodable["component"] = serde_json::json!(
            {"namespace": "team-b", "name": "db", "uid": "6f1c2b1e-3d4a-4b5c-8d6e-7f8091a2b3c4", "generation": 1_i64 << 53}
        );
        let mut bad_generation = serde_json::to_value(web_job()).unwrap();
        bad_generation["component"]["generation"] = serde_json::json!((1_i64 << 53) + 1);
        let mut elsewhere = web_job();
        elsewhere.component.namespace = "team-b".into();
        let mut delete = web_job();
        delete.action = JobAction::Delete;
        let payload = |v: &serde_json::Value| serde_json::to_vec(v).unwrap();
        // (name, payload on team-a's own subject, refused as, the phase told)
        let cases: Vec<(&str, Vec<u8>, &str, Option<StatusPhase>)> = vec![
            (
                "another schema naming team-b/db at 2^53, on team-a's subject",
                payload(&undecodable),
                "undecodable",
                None,
            ),
            (
                "a generation over 2^53 on its own subject",
                payload(&bad_generation),
                "undecodable",
                None,
            ),
            ("not JSON", b"{".to_vec(), "undecodable", None),
            (
                "a valid job naming team-b, on team-a's subject",
                elsewhere.encode(),
                "subject",
                None,
            ),
            (
                "a valid apply over the timeout limit",
                web_job().encode(),
                "policy",
                Some(StatusPhase::Failed),
            ),
            (
                "a valid delete over the timeout limit",
                delete.encode(),
                "policy",
                Some(StatusPhase::TerminationFailed),
            ),
        ];
        let delivery = Delivery {
            attempt: 1,
            sequence: 9,
        };
        for (name, payload, want, phase) in cases {
            let refused = admit(&settings, own, &payload).unwrap_err();
            let kind = match &refused {
                Refused::Undecodable(_) => "undecodable",
                Refused::Subject(_) => "subject",
                Refused::Policy(..) => "policy",
            };
            assert_eq!(kind, want, "{name}: {}", refused.reason());
            let told = refused
                .told()
                .map(|job| dead_letter::rejection_status(job, "r", delivery, "w"));
            assert_eq!(told.as_ref().map(|s| s.phase), phase, "{name}");
            if let Some(status) = told {
                let job = JobEvent::decode(&payload).unwrap();
                assert_eq!(status.job_id, job.id, "{name}: answers the job's id");
                assert_eq!(status.component, job.component, "{name}");
                assert_eq!(status.job_sequence, 9, "{name}");
            }
        }
        settings.max_timeout = Duration::from_secs(60);
        assert_eq!(admit(&settings, own, &web_job().encode()), Ok(web_job()));
    }

    #[test]
    fn a_job_must_come_on_its_components_subject() {
        let mut job = web_job();
        let cases = [
            ("helmq.jobs.team-a.web_2Ev2", Ok(())),
            // Another namespace's subject (what a per-namespace NATS user may publish to).
            (
                "helmq.jobs.team-b.web_2Ev2",
                Err("subject helmq.jobs.team-b.web_2Ev2,"),
            ),
            (
                "helmq.jobs.team-a.web",
                Err("subject helmq.jobs.team-a.web,"),
            ),
            (
                "helmq.jobs.team-a.web.v2",
                Err("subject helmq.jobs.team-a.web.v2,"),
            ),
            (
                "helmq.jobs.team-a.web_2ev2",
                Err("subject helmq.jobs.team-a.web_2ev2,"),
            ),
        ];
        for (subject, want) in cases {
            let got = check_subject(subject, &job);
            match (&got, want) {
                (Ok(()), Ok(())) => {}
                (Err(reason), Err(part)) => {
                    assert!(reason.contains(part), "{subject}: {reason}");
                    assert!(
                        reason.contains("component team-a/web.v2")
                            && reason.contains("not on helmq.jobs.team-a.web_2Ev2"),
                        "{reason}"
                    );
                }
                _ => panic!("{subject}: {got:?}"),
            }
        }
        // A payload naming another namespace, on the publisher's own subject.
        job.component.namespace = "team-b".into();
        let reason = check_subject("helmq.jobs.team-a.web_2Ev2", &job).unwrap_err();
        assert_eq!(
            reason,
            "job for component team-b/web.v2 was published on subject helmq.jobs.team-a.web_2Ev2, not on helmq.jobs.team-b.web_2Ev2: a job must come on its component's subject"
        );
    }
}

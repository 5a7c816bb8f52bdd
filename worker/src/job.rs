//! One job from delivery to its [`Settlement`], in the order of `docs/ARCHITECTURE.md` ("The
//! worker: one job from delivery to settlement"): admit it (bad input is dead-lettered once) →
//! register with the worker's intents watch → read its object's latest intent and take the
//! release lease at once (an older generation is acked as superseded, a finished one has its
//! status published again) → record the job as running and count its run in one
//! compare-and-set, while `Deploying`/`Terminating` goes out → run Helm ([`HelmRun`]) under
//! [`JobRun::guard`] (Progress acks, lease renewal; a newer generation, a lost lease or the hard
//! stop cancels the run) → record the intent, publish the outcome while the lease is given
//! back, and say whether the message is acked, Nak'ed with a delay, or dead-lettered. The pool
//! has `settle` carry that out.
//!
//! When the lease is busy the job takes the careful path instead: it records itself as the
//! newest intent first (so that an older run holding the lease is cancelled), publishes its
//! start, waits for the lease with Progress acks, and looks at the intent again.

use std::time::{Duration, Instant};

use async_nats::jetstream::message::Message;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use helmq_queue::StatusSink;
use helmq_schemas::event::{JobAction, JobEvent, StatusEvent, StatusPhase};
use helmq_schemas::subject::component_key;

use crate::admission::{Refused, admit, rejection_status};
use crate::context::{Delivery, Published, Shared};
use crate::driver::{DriverError, HelmDriver, ReleaseRef};
use crate::exclusivity::{KvError, Lease, LeaseLost, Live, Run, intent_key};
use crate::helm_run::{Done, Held, HelmRun, Prior};
use crate::intent_watch::Newer;
use crate::ownership::Owner;
use crate::policy::{
    AfterFailure, Decision, Intent, Outcome, Precedence, after_failure, decide, latest, republished,
};
use crate::readable::readable;
use crate::settle::{Acked, Buried, Settlement, progress, unless_stored};
use helmq_telemetry::retry::pause;

/// Shortest Progress period (a zero period would make `interval` panic).
const MIN_TICK: Duration = Duration::from_millis(100);
/// Added to the wait for a pending release to become recoverable (clock steps, Helm's
/// one-second timestamps).
const STALE_SLACK: Duration = Duration::from_millis(500);
/// Delay before a job given back for a busy or lost lease comes again.
const LEASE_RETRY: Duration = Duration::from_secs(1);

/// Why a Helm run was stopped before it finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// A newer intent was recorded for the object.
    Superseded(Precedence),
    /// Another worker took the release lease.
    LeaseLost,
    /// The drain deadline passed.
    Shutdown,
}

/// A job that is to run: its release lease, its run as counted, and what is known of its
/// release.
struct Started {
    lease: Lease,
    run: Run,
    prior: Prior,
}

/// What a step of a job gives: `Err` when the job ends there, settled thus.
type Step<T> = Result<T, Settlement>;

/// One job, start to end: what is to happen to its message.
pub(crate) async fn handle<D: HelmDriver, S: StatusSink>(
    shared: &Shared<D, S>,
    message: &Message,
    delivery: Delivery,
    span: &tracing::Span,
) -> Settlement {
    let job = match admit(&shared.ctx.settings, &message.subject, &message.payload) {
        Ok(job) => job,
        Err(refused) => return reject(shared, delivery, refused).await,
    };
    span.record("job_id", job.id.as_str());
    let run = JobRun {
        shared,
        message,
        job: &job,
        delivery,
        key: intent_key(&job.component),
        position: Precedence::of(&job),
    };
    run.steps().await.unwrap_or_else(|settlement| settlement)
}

/// Bad input: dead-lettered once with the reason; the Component is told only what
/// [`Refused::told`] allows (a valid job on its own subject that this worker refuses).
async fn reject<D, S: StatusSink>(
    shared: &Shared<D, S>,
    delivery: Delivery,
    refused: Refused,
) -> Settlement {
    let reason = refused.reason();
    warn!(%reason, "rejecting a job");
    if let Some(job) = refused.told() {
        let told = readable(reason.clone(), refused.cause().as_ref());
        let status = rejection_status(job, &told, delivery, &shared.ctx.settings.worker_id);
        let _ = shared.publish(&status).await;
    }
    Settlement::Bury {
        reason,
        cause: Buried::Rejected,
    }
}

/// An admitted job in this delivery: what its steps share.
struct JobRun<'a, D, S> {
    shared: &'a Shared<D, S>,
    /// The delivered message, for Progress acks.
    message: &'a Message,
    job: &'a JobEvent,
    delivery: Delivery,
    /// The job's object's key in the intents bucket.
    key: String,
    position: Precedence,
}

impl<D: HelmDriver, S: StatusSink> JobRun<'_, D, S> {
    /// The steps after admission.
    async fn steps(&self) -> Step<Settlement> {
        let ctx = &self.shared.ctx;
        // Before any read of the intent, so that no newer one recorded later goes unnoticed.
        let newer = ctx.watch.newer_than(&self.key, self.position);
        let started = match self.start_at_once().await? {
            Some(started) => started,
            None => self.start_carefully().await?,
        };
        let Started { lease, run, prior } = started;
        let cancel = ctx.hard_stop.child_token();
        let helm_started = Instant::now();
        let held = Held {
            lease_revision: lease.revision,
            stale_after: ctx.timing.ttl + ctx.timing.grace,
        };
        let helm = HelmRun::new(&*self.shared.driver, self.job, &ctx.settings, &cancel);
        let (result, lease) = self
            .guard(lease, &cancel, newer, helm.execute(held, prior))
            .await;
        ctx.metrics
            .helm_duration
            .observe(helm_started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(done)) => self.succeed(&lease, run, prior, done).await,
            Ok(Err(error)) => {
                ctx.release(&lease).await;
                self.fail(run, &error).await
            }
            Err(stop) => {
                ctx.release(&lease).await;
                Ok(stopped(stop))
            }
        }
    }

    /// The common start, in two round trips: the intent and the tombstone read and the release
    /// lease taken at once, then one compare-and-set that records the job as running and counts
    /// its run, while its start event goes out and the release's owner record is read. `None`
    /// when the lease is busy (or cannot be taken now): [`JobRun::start_carefully`] then starts
    /// over.
    async fn start_at_once(&self) -> Step<Option<Started>> {
        let ctx = &self.shared.ctx;
        let lease_key = lease_key(self.job);
        let (live, tombstone, lease) = tokio::join!(
            ctx.persist("read the intent", || ctx.intents.live(&self.key)),
            ctx.persist("read the tombstone", || ctx.intents.tombstone(&self.key)),
            ctx.leases.try_acquire(&lease_key, &ctx.settings.worker_id)
        );
        let Ok(Some(lease)) = lease else {
            return live.map(|_| None).ok_or(Settlement::GIVE_BACK);
        };
        let (Some(live), Some(tombstone)) = (live, tombstone) else {
            ctx.release(&lease).await;
            return Err(Settlement::GIVE_BACK);
        };
        let Some(tombstone) = self.tombstone_for(&live, tombstone).await else {
            ctx.release(&lease).await;
            return Err(Settlement::GIVE_BACK);
        };
        let decision = decide(self.position, latest(live.intent(), tombstone.as_ref()));
        self.skip_unless_run(decision, Some(&lease), false).await?;
        let release = release_of(self.job);
        let (counted, start, record) = tokio::join!(
            ctx.persist("count the run", || {
                ctx.intents.count_run(&self.key, self.job, &live)
            }),
            self.publish_start(),
            ctx.intents.owner(&release)
        );
        if let Err(settlement) = unless_stored(start) {
            ctx.release(&lease).await;
            return Err(settlement);
        }
        match counted {
            Some(Some(run)) => self.started(lease, run, record).await.map(Some),
            // The intent changed since it was read: look again, holding the lease.
            Some(None) => self.check_again(lease, true).await.map(Some),
            None => {
                ctx.release(&lease).await;
                Err(Settlement::GIVE_BACK)
            }
        }
    }

    /// The tombstone the job is measured against, given the live intent and the tombstone as
    /// read at once (`None` inside: there is none; outer `None`: it cannot be read now).
    ///
    /// A live intent is newer than its object's tombstone, or the job that ends it holds the
    /// lease now taken. A key that never had an intent has no tombstone written before it was
    /// read, and one written since follows a live intent that fails the compare-and-set against
    /// the empty key. Only a removed intent needs its tombstone read again: the two reads went to
    /// different streams, so the tombstone may have been read before the end that removed the
    /// intent was written.
    async fn tombstone_for(
        &self,
        live: &Live,
        read_at_once: Option<Intent>,
    ) -> Option<Option<Intent>> {
        match live {
            Live::Intent(..) => Some(None),
            Live::Never => Some(read_at_once),
            Live::Ended(_) if read_at_once.is_some() => Some(read_at_once),
            Live::Ended(_) => {
                let ctx = &self.shared.ctx;
                ctx.persist("read the tombstone", || ctx.intents.tombstone(&self.key))
                    .await
            }
        }
    }

    /// The start while another job holds the release lease: record the job as its object's
    /// newest intent first (so that an older run holding the lease is cancelled), publish its
    /// start, wait for the lease, then look again.
    async fn start_carefully(&self) -> Step<Started> {
        let ctx = &self.shared.ctx;
        let decision = ctx
            .persist("read the intent", || ctx.intents.claim(&self.key, self.job))
            .await
            .ok_or(Settlement::GIVE_BACK)?;
        self.skip_unless_run(decision, None, false).await?;
        unless_stored(self.publish_start().await)?;
        let lease = self.acquire(&lease_key(self.job)).await?;
        self.check_again(lease, true).await
    }

    /// With the lease held, checks the intent again and counts the run: while the job waited, a
    /// newer generation may have arrived, or another delivery of this very job may have
    /// finished it (JetStream can hand a job out twice, e.g. a server restarted after a crash
    /// forgets a delivery, and both copies then queue for this lease). Helm must not run again
    /// for a generation that is done. `started`: this delivery published its start.
    async fn check_again(&self, lease: Lease, started: bool) -> Step<Started> {
        let ctx = &self.shared.ctx;
        if let Some(Some(intent)) = ctx
            .persist("read the intent", || {
                ctx.intents.current(&self.key, self.position)
            })
            .await
        {
            let decision = decide(self.position, Some(&intent));
            self.skip_unless_run(decision, Some(&lease), started)
                .await?;
        }
        let release = release_of(self.job);
        let (counted, record) = tokio::join!(
            ctx.persist("count the run", || {
                ctx.intents.begin_run(&self.key, self.job)
            }),
            ctx.intents.owner(&release)
        );
        match counted {
            Some(Some(run)) => self.started(lease, run, record).await,
            // Replaced or ended since the check just above (the next delivery sorts it out), or
            // NATS is away.
            _ => {
                ctx.release(&lease).await;
                Err(Settlement::GIVE_BACK)
            }
        }
    }

    /// A job whose run is counted, with the release's owner record as read. A delete forgets
    /// the record before Helm runs, so that no record outlives the release it names.
    async fn started(
        &self,
        lease: Lease,
        run: Run,
        record: Result<Option<Owner>, KvError>,
    ) -> Step<Started> {
        let ctx = &self.shared.ctx;
        let release = release_of(self.job);
        if self.job.action == JobAction::Delete
            && ctx
                .persist("forget the release's owner", || {
                    ctx.intents.forget_owner(&release)
                })
                .await
                .is_none()
        {
            ctx.release(&lease).await;
            return Err(Settlement::GIVE_BACK);
        }
        let prior = Prior::judge(
            record.as_ref().map(Option::as_ref),
            &Owner::of(self.job),
            run.number,
        );
        Ok(Started { lease, run, prior })
    }

    /// Publishes the start event, but not for a drift check of a release the status says is
    /// deployed as the job asks: it changes nothing on the common path, and its Component must
    /// not show `Deploying` at every interval.
    async fn publish_start(&self) -> Published {
        if self.job.drift_check && self.job.deployed.is_some() {
            return Published::Stored;
        }
        self.shared.publish(&self.start_event()).await
    }

    /// `Deploying` or `Terminating`, with what is about to happen.
    fn start_event(&self) -> StatusEvent {
        let config = &self.job.config;
        let attempt = self.delivery.attempt;
        let (phase, text) = match self.job.action {
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
        self.shared.ctx.event(self.job, phase, text, self.delivery)
    }

    /// The run finished: record the intent (and the release's owner after an apply that did
    /// not know it), then publish the outcome while the lease is given back, and ack.
    async fn succeed(&self, lease: &Lease, run: Run, prior: Prior, done: Done) -> Step<Settlement> {
        let ctx = &self.shared.ctx;
        if let Some(report) = &done.release.drift {
            ctx.metrics.drift_check(report);
        }
        let status = ctx
            .event(self.job, done.phase, done.message, self.delivery)
            .with_release(done.release);
        let record_owner = async {
            if self.job.action == JobAction::Apply && prior != Prior::Ours {
                let owner = Owner::of(self.job);
                // Only spares reading the release next time.
                if let Err(e) = ctx
                    .intents
                    .record_owner(&release_of(self.job), &owner)
                    .await
                {
                    warn!(error = %e, "cannot record the release's owner; the next run reads it from the release");
                }
            }
        };
        // The intent first: once the status is out, the writer may remove the finalizer and the
        // object may be gone, so the record of its end must already be there for a late copy of
        // this job. A copy that finds it publishes this status again.
        let (recorded, ()) = tokio::join!(
            ctx.persist("record the intent", || {
                ctx.intents
                    .finish(&self.key, self.job, done.outcome, &status, Some(run))
            }),
            record_owner
        );
        let published = if recorded.is_some() {
            tokio::join!(self.shared.publish(&status), ctx.release(lease)).0
        } else {
            ctx.release(lease).await;
            Published::GaveUp
        };
        unless_stored(published)?;
        info!(phase = ?status.phase, "job done");
        Ok(Settlement::Ack(Acked::Succeeded))
    }

    /// Run `run` of the job failed: retry later, or publish the failure and dead-letter the job.
    async fn fail(&self, run: Run, error: &DriverError) -> Step<Settlement> {
        let ctx = &self.shared.ctx;
        ctx.metrics.helm_failure(error.cause());
        if error.uninstalled() {
            // A remediation uninstalled the release: no owner record may outlive it.
            if let Err(e) = ctx.intents.forget_owner(&release_of(self.job)).await {
                warn!(error = %e, "cannot forget the owner of the uninstalled release");
            }
        }
        if ctx.hard_stop.is_cancelled() {
            return Err(Settlement::GIVE_BACK);
        }
        let settings = &ctx.settings;
        match after_failure(
            error.failure(),
            run.number,
            settings.max_attempts,
            &settings.retry,
        ) {
            AfterFailure::Retry(delay) => {
                // A pending release left by a dead run becomes recoverable at a known time:
                // retrying sooner would only spend the attempt budget (and end the job Failed
                // under load).
                let after = delay.max(
                    error
                        .retry_after()
                        .map_or(Duration::ZERO, |d| d + STALE_SLACK),
                );
                warn!(%error, retry_in = ?after, "transient failure; will retry");
                Ok(Settlement::Retry { after })
            }
            AfterFailure::GiveUp => {
                let reason = readable(
                    format!(
                        "{error} (attempt {} of {})",
                        run.number, settings.max_attempts
                    ),
                    error.cause(),
                );
                warn!(%error, "job failed for good");
                let phase = match self.job.action {
                    JobAction::Apply => StatusPhase::Failed,
                    JobAction::Delete => StatusPhase::TerminationFailed,
                };
                let status = ctx.event(self.job, phase, reason.clone(), self.delivery);
                let reason = match self.shared.publish(&status).await {
                    // First: the reason may be cut where it is stored.
                    Published::Refused(error) => {
                        format!("its status cannot be published ({error}): {reason}")
                    }
                    other => {
                        unless_stored(other)?;
                        reason
                    }
                };
                let _ = ctx
                    .persist("record the intent", || {
                        ctx.intents
                            .finish(&self.key, self.job, Outcome::Failed, &status, Some(run))
                    })
                    .await;
                Ok(Settlement::Bury {
                    reason,
                    cause: Buried::Failed,
                })
            }
        }
    }

    /// Takes the release lease, sending Progress acks while another job holds it; a wait
    /// longer than `--lease-wait` gives the job back.
    async fn acquire(&self, key: &str) -> Step<Lease> {
        let ctx = &self.shared.ctx;
        let started = Instant::now();
        let mut waited = false;
        let mut last_progress = Instant::now();
        let poll =
            (ctx.leases.ttl() / 20).clamp(Duration::from_millis(50), Duration::from_millis(500));
        loop {
            match ctx.leases.try_acquire(key, &ctx.settings.worker_id).await {
                Ok(Some(lease)) => return Ok(lease),
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
                info!("lease wait too long; giving the job back");
                return Err(Settlement::GiveBack {
                    after: Some(LEASE_RETRY),
                });
            }
            if last_progress.elapsed() >= ctx.ack_wait / 3 {
                let _ = progress(self.message).await;
                last_progress = Instant::now();
            }
            if ctx.hard_stop.is_cancelled() {
                return Err(Settlement::GIVE_BACK);
            }
            pause(&ctx.hard_stop, poll).await;
        }
    }

    /// Runs `run` while keeping its job alive: the release lease is kept by
    /// [`Leases::keep`](crate::exclusivity::Leases::keep) (renewed with compare-and-set before
    /// `run` starts, so a lease lost meanwhile means it never starts) and Progress acks go out
    /// every `ack_wait/3`. A newer intent for the object, a lost lease or the hard stop cancels
    /// `cancel` and waits for the run to end (its process killed) before reporting why. Gives
    /// back the lease as last renewed.
    async fn guard<T>(
        &self,
        lease: Lease,
        cancel: &CancellationToken,
        newer: Newer,
        run: impl Future<Output = T>,
    ) -> (Result<T, Stop>, Lease) {
        let ctx = &self.shared.ctx;
        let progress_every = (ctx.ack_wait / 3).max(MIN_TICK);
        let mut ticks = tokio::time::interval(progress_every);
        ticks.tick().await;
        let kept = ctx
            .leases
            .keep(lease, &ctx.settings.worker_id, &ctx.timing, cancel, run);
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
                _ = ticks.tick() => {
                    // Bounded: the loop must come back to the run and the lease.
                    match tokio::time::timeout(progress_every, progress(self.message)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => warn!(error = %e, "cannot send a progress ack"),
                        Err(_) => warn!("sending a progress ack timed out"),
                    }
                }
            }
        }
    }

    /// Ends a job the intent says not to run — superseded (ack) or already done (publish its
    /// status again, then ack) — releasing `lease` first when one is held. `started`: this
    /// delivery published its start. `Ok` for `Run`.
    async fn skip_unless_run(
        &self,
        decision: Decision,
        lease: Option<&Lease>,
        started: bool,
    ) -> Step<()> {
        let ctx = &self.shared.ctx;
        if decision == Decision::Run {
            return Ok(());
        }
        if let Some(lease) = lease {
            ctx.release(lease).await;
        }
        Err(match decision {
            Decision::Run => return Ok(()),
            Decision::Superseded { by } => {
                info!(
                    newer_generation = by.generation,
                    "superseded by a newer intent; not running helm"
                );
                Settlement::Ack(Acked::Superseded)
            }
            Decision::AlreadyDone(status) => {
                info!(phase = ?status.phase, "already done; publishing its status again");
                // A later attempt: an earlier one may have published its start.
                let may_have_started = started || self.delivery.attempt > 1;
                let status = republished(
                    &status,
                    self.delivery.attempt,
                    self.delivery.sequence,
                    may_have_started,
                );
                unless_stored(self.shared.publish(&status).await)?;
                Settlement::Ack(Acked::Duplicate)
            }
        })
    }
}

/// The lease key of the release a job works on: the release, not the Component, is what two
/// runs must never share.
fn lease_key(job: &JobEvent) -> String {
    component_key(&job.config.release_namespace, &job.config.release_name)
}

/// The release a job acts on.
fn release_of(job: &JobEvent) -> ReleaseRef {
    ReleaseRef::new(&job.config.release_namespace, &job.config.release_name)
}

/// A run stopped from outside: acked when superseded, given back otherwise (after a moment
/// when the lease was lost, so that its new holder goes first).
fn stopped(stop: Stop) -> Settlement {
    match stop {
        Stop::Superseded(by) => {
            info!(
                newer_generation = by.generation,
                "a newer intent arrived; cancelled this run"
            );
            Settlement::Ack(Acked::Superseded)
        }
        Stop::LeaseLost => {
            warn!("lost the release lease; giving the job back");
            Settlement::GiveBack {
                after: Some(LEASE_RETRY),
            }
        }
        Stop::Shutdown => Settlement::GIVE_BACK,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_run_is_acked_only_when_superseded() {
        let by = Precedence {
            generation: 2,
            action: JobAction::Apply,
            refresh: 0,
        };
        let cases = [
            (Stop::Superseded(by), Settlement::Ack(Acked::Superseded)),
            (
                Stop::LeaseLost,
                Settlement::GiveBack {
                    after: Some(LEASE_RETRY),
                },
            ),
            (Stop::Shutdown, Settlement::GIVE_BACK),
        ];
        for (stop, want) in cases {
            assert_eq!(stopped(stop), want, "{stop:?}");
        }
    }
}

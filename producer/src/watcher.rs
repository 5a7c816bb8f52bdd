//! The watch loop: follows Components through the [`ComponentStore`], asks [`plan`] what to do
//! with each and does it — claim (our finalizer), publish apply/delete jobs, publish the
//! producer's own status events (`Failed` for an invalid config, `Terminated` when nothing was
//! installed). Of the status it writes, before it publishes anything for a (generation,
//! action), the job it issues (`status.handlerStatus.issuedJob`, with a random nonce in its id),
//! so that the writer applies only events answering it; with a claim's job, in the same write,
//! `Claimed` as the writer would apply it ([`apply()`]), with its Event. Everything else in the
//! status the writer writes, from the events.
//!
//! What was published is remembered per object, for its uid and generation (the `ledger`), so
//! that the many watch events of one Component do not re-publish; a periodic resync re-lists
//! and re-publishes what the status still does not reflect after the grace period (a job lost
//! in a purged stream or an outage). Components whose handling failed are retried by the class
//! of the failure ([`retry_after`]; one entry per object in the retry queue, `retries`):
//! a permanent one (a request the API server refuses for good, a message NATS refuses) is
//! reported once and not retried until the object changes; a conflict is re-read at the next
//! retry tick; a transient one (429, 5xx, transport, NATS down) backs off, doubling up to
//! [`MAX_RETRY_DELAY`].
//!
//! An object that cannot be read as a Component (nested deeper than the JSON decoder allows,
//! a field of the wrong type) does not stop the others: it is logged and counted once per
//! generation (`helmq_producer_unreadable_components`), and handled like a Component with an
//! invalid config — claimed and `Failed` with the reason, its deletion finished without an
//! uninstall unless a release was recorded — so it is never retried in a loop.
//!
//! With [`Watcher::with_leadership`] all of it runs only while this replica leads: the loop
//! waits for leadership, drops its watch as soon as leadership is lost (no claim or publish
//! after that, not even for the rest of a resync pass), and starts a fresh watch, which lists
//! every Component, when it leads again.

mod ledger;
mod retries;

use helmq_telemetry::retry::backoff;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use helmq_queue::{JobQueue, PRODUCER_WORKER, PublishError, PublishOutcome, StatusSink};
use helmq_schemas::component::{Component, ComponentStatus, IssuedJob, Phase};
use helmq_schemas::config::MISSING_SOURCE;
use helmq_schemas::event::{JobAction, JobEvent, StatusEvent, StatusPhase};
use jiff::Timestamp;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::plan::{
    Action, Context, component_ref, issued_status, new_issued_job, next_drift_check, plan,
    plan_unreadable, reads_any_source, reads_source, recorded_job, suspended_status,
};
use crate::store::sources::SourceRef;
use crate::store::{
    Change, ComponentStore, ErrorClass, ObjectKey, Observed, StoreError, Unreadable,
};
use crate::writer::{EventQueue, apply};
use ledger::Ledger;
use retries::Retries;

/// Message of the `Claimed` event, as the original handler wrote it.
pub fn claimed_message(handler: &str) -> String {
    format!("Claimed by {handler} handler")
}
/// Plan/act rounds per Component per event (a claim, a conflict re-read, then the job).
const MAX_STEPS: usize = 6;
/// How often the watcher looks for Components whose drift check is due: the granularity of
/// `config.drift.interval`.
const DRIFT_TICK: Duration = Duration::from_secs(1);
/// The longest wait before a Component that failed transiently is retried.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// What to do after handling a Component failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The same requests would fail again: report it once, retry only when the object
    /// changes (a new resourceVersion).
    GiveUp,
    /// Try again after this long.
    After(Duration),
}

/// The decision after the `failures`-th failure in a row (1 for the first) of class `class`:
/// permanent → give up; conflict → re-read after `interval`; transient → `interval` doubled
/// per earlier failure, at most `max`.
pub fn retry_after(class: ErrorClass, failures: u32, interval: Duration, max: Duration) -> Retry {
    match class {
        ErrorClass::Permanent => Retry::GiveUp,
        ErrorClass::Conflict => Retry::After(interval.min(max)),
        ErrorClass::Transient => Retry::After(backoff(interval, max, failures, false)),
    }
}

/// Errors handling one Component (logged; the Component is retried).
#[derive(Debug, thiserror::Error)]
pub enum WatcherError {
    /// The Kubernetes API failed.
    #[error("kubernetes api: {0}")]
    Store(#[from] StoreError),
    /// Publishing to JetStream failed.
    #[error("publish: {0}")]
    Publish(#[from] PublishError),
    /// Conflicts kept coming.
    #[error("gave up on {0} after {MAX_STEPS} rounds of conflicts")]
    TooManyRounds(String),
    /// The watch stream ended, which a watch never does by itself.
    #[error("the component watch ended")]
    WatchEnded,
    /// Leader election stopped while the watcher waited for leadership.
    #[error("leader election ended")]
    ElectionEnded,
    /// The system's random source failed: no job id can be issued.
    #[error("cannot draw a job id nonce: {0}")]
    Random(getrandom::Error),
    /// The API server dropped the issued job from the status it stored: the Component CRD in
    /// the cluster is older than this producer and prunes the field.
    #[error(
        "the issued job {0} was not kept in the Component's status: the Component CRD is older than this producer (run helmqctl preflight --install-crd, or kubectl apply -f deploy/crds/)"
    )]
    IssuedJobPruned(String),
}

impl WatcherError {
    /// The class of this failure, for [`retry_after`].
    pub fn class(&self) -> ErrorClass {
        match self {
            WatcherError::Store(e) => e.class(),
            WatcherError::Publish(e) if e.is_permanent() => ErrorClass::Permanent,
            WatcherError::TooManyRounds(_) => ErrorClass::Conflict,
            // Backs off (up to --max-retry-delay) and recovers by itself once the CRD is updated,
            // which changes no Component.
            WatcherError::IssuedJobPruned(_) => ErrorClass::Transient,
            WatcherError::Publish(_)
            | WatcherError::WatchEnded
            | WatcherError::ElectionEnded
            | WatcherError::Random(_) => ErrorClass::Transient,
        }
    }
}

/// Settings of the watch loop.
#[derive(Debug, Clone)]
pub struct WatcherConfig {
    /// `spec.handler` value we answer to.
    pub handler: String,
    /// How often to re-list every Component.
    pub resync_interval: Duration,
    /// How long a published job may go unanswered before resync re-publishes it; `None`: the
    /// Component's own timeout plus a minute.
    pub resync_grace: Option<Duration>,
    /// How often Components whose handling failed are retried (the first time; doubled per
    /// failure in a row).
    pub retry_interval: Duration,
    /// The longest wait between two retries of a Component ([`MAX_RETRY_DELAY`] by default).
    pub max_retry_delay: Duration,
    /// The longest `deploymentTimeout`/`terminationTimeout` accepted (`--max-timeout`); more
    /// fails the Component like an invalid config.
    pub max_timeout: Duration,
}

impl Default for WatcherConfig {
    fn default() -> Self {
        WatcherConfig {
            handler: helmq_schemas::component::DEFAULT_HANDLER.to_owned(),
            resync_interval: Duration::from_secs(300),
            resync_grace: None,
            retry_interval: Duration::from_secs(5),
            max_retry_delay: MAX_RETRY_DELAY,
            max_timeout: Duration::from_secs(3600),
        }
    }
}

/// Whether a resync applies a Component with `valuesFrom` again: when it is `Ready` (a source
/// may have changed) or `Failed` because a required source was missing (it may be there now).
fn worth_reading_again(component: &Component) -> bool {
    let Some(status) = &component.status else {
        return false;
    };
    match status.phase {
        Some(Phase::Ready) => true,
        Some(Phase::Failed) => status
            .message
            .as_deref()
            .is_some_and(|m| m.contains(MISSING_SOURCE)),
        _ => false,
    }
}

/// What one step of [`Watcher::handle_as`] leaves: the Component as it is now and, when it
/// cannot be read as one, why, to plan again; `None` when there is nothing more to do (gone).
type Fresh = Option<(Component, Option<String>)>;

/// Kinds of things published, for the in-memory record and the metrics.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Apply,
    Delete,
    Failed,
    Terminated,
    TerminationFailed,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Apply => "apply",
            Kind::Delete => "delete",
            Kind::Failed => "failed",
            Kind::Terminated => "terminated",
            Kind::TerminationFailed => "termination_failed",
        }
    }
}

/// The watch loop over a store, a job queue and a status sink.
#[derive(Debug)]
pub struct Watcher<S, Q, T> {
    store: S,
    jobs: Q,
    status: T,
    config: WatcherConfig,
    metrics: Metrics,
    /// What was published per object, and which unreadable generations were reported.
    ledger: Ledger,
    /// The objects whose handling failed: when to retry them, or the version given up at.
    retries: Retries,
    /// `None`: always acts; otherwise only while leading.
    leadership: Option<Leadership>,
    /// Components to apply again because a `valuesFrom` source may have changed (a labelled
    /// source's change, or a resync): kept until an apply job is issued for them.
    refreshing: BTreeSet<ObjectKey>,
    /// When each Component with `config.drift` on is next checked ([`next_drift_check`]).
    drift_checks: BTreeMap<ObjectKey, Timestamp>,
    /// Where the Events of the statuses it writes itself (`Claimed`) are queued; `None`: none
    /// are recorded.
    events: Option<EventQueue>,
}

/// Why one leading stint ended.
#[derive(Debug)]
enum Stint {
    Shutdown,
    LostLeadership,
}

/// Resolves when `leadership` says we no longer lead (or the elector is gone); never
/// without leader election.
async fn lost(leadership: Option<&mut Leadership>) {
    match leadership {
        Some(leadership) => {
            leadership.wait_until(false).await;
        }
        None => std::future::pending().await,
    }
}

impl<S: ComponentStore, Q: JobQueue, T: StatusSink> Watcher<S, Q, T> {
    /// A loop with nothing published yet.
    pub fn new(store: S, jobs: Q, status: T, config: WatcherConfig, metrics: Metrics) -> Self {
        Watcher {
            store,
            jobs,
            status,
            config,
            metrics,
            ledger: Ledger::default(),
            retries: Retries::default(),
            leadership: None,
            refreshing: BTreeSet::new(),
            drift_checks: BTreeMap::new(),
            events: None,
        }
    }

    /// Records the Events of the statuses it writes itself (`Claimed`) through `events`.
    pub fn with_events(mut self, events: EventQueue) -> Self {
        self.events = Some(events);
        self
    }

    /// Acts only while `leadership` says this replica leads.
    pub fn with_leadership(mut self, leadership: Leadership) -> Self {
        self.leadership = Some(leadership);
        self
    }

    fn leading(&self) -> bool {
        self.leadership.as_ref().is_none_or(Leadership::is_leader)
    }

    /// Runs until `shutdown` is cancelled (`Ok`) or the watch ends (an error). With leader
    /// election, pauses while not leading.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), WatcherError> {
        loop {
            if let Some(mut leadership) = self.leadership.clone() {
                if !leadership.is_leader() {
                    tracing::info!("not the leader: waiting");
                }
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return Ok(()),
                    leads = leadership.wait_until(true) => if !leads {
                        return Err(WatcherError::ElectionEnded);
                    },
                }
                tracing::info!("leading: watching components");
            }
            match self.lead(&shutdown).await? {
                Stint::Shutdown => return Ok(()),
                Stint::LostLeadership => {
                    tracing::warn!("lost leadership: pausing until leading again");
                }
            }
        }
    }

    /// One stint of watching, from a fresh watch (a full listing) until shutdown or the loss
    /// of leadership.
    async fn lead(&mut self, shutdown: &CancellationToken) -> Result<Stint, WatcherError> {
        let mut leadership = self.leadership.clone();
        let mut changes = self.store.changes();
        let mut sources = self.store.source_changes();
        let mut resync = tokio::time::interval(self.config.resync_interval);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; the watch starts with a full listing anyway.
        resync.tick().await;
        let mut retry = tokio::time::interval(self.config.retry_interval);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        retry.tick().await;
        let mut drift = tokio::time::interval(DRIFT_TICK);
        drift.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(Stint::Shutdown),
                () = lost(leadership.as_mut()) => return Ok(Stint::LostLeadership),
                change = changes.next() => match change {
                    None => return Err(WatcherError::WatchEnded),
                    Some(change) => self.on_change(change).await,
                },
                Some(source) = sources.next() => self.on_source(source).await,
                _ = resync.tick() => self.resync().await,
                _ = retry.tick(), if self.retries.any_waiting() => self.retry_failed().await,
                _ = drift.tick(), if !self.drift_checks.is_empty() => self.check_drift_due().await,
            }
        }
    }

    async fn on_change(&mut self, change: Change) {
        match change {
            Change::Applied(component) => self.handle_logged(*component).await,
            Change::Unreadable(unreadable) => self.unreadable_logged(*unreadable).await,
            Change::Deleted(component) => {
                if component.metadata.uid.is_some() {
                    self.ledger.forget(&component);
                }
                self.retries.remove(&ObjectKey::of(&*component));
                self.refreshing.remove(&ObjectKey::of(&*component));
                self.drift_checks.remove(&ObjectKey::of(&*component));
            }
            Change::Restarted => {
                self.metrics.watch_restarts.inc();
                tracing::info!("watch (re)started: listing components");
            }
            Change::Error(error) => {
                self.metrics.watch_errors.inc();
                tracing::warn!(%error, "component watch failed; backing off");
            }
        }
    }

    /// A labelled ConfigMap or Secret changed: every Component of its namespace whose
    /// `valuesFrom` reads it is applied again (Helm runs only if its values changed).
    async fn on_source(&mut self, source: SourceRef) {
        self.metrics.values_source_changes.inc();
        let listing = match self.store.list().await {
            Ok(listing) => listing,
            Err(error) => {
                tracing::warn!(%error, "cannot list components for a values source change; the resync will");
                return;
            }
        };
        for component in listing.components {
            let here = component.metadata.namespace.as_deref() == Some(source.namespace.as_str());
            if here && reads_source(&component, source.kind, &source.name) {
                tracing::info!(
                    kind = source.kind.as_str(),
                    source = %source.name,
                    component = %ObjectKey::of(&component),
                    "values source changed; applying again"
                );
                self.refreshing.insert(ObjectKey::of(&component));
                self.handle_logged(component).await;
            }
        }
    }

    /// Re-lists every Component and handles each (re-publishing what is overdue). A Component
    /// with `valuesFrom` that is `Ready`, or `Failed` for want of one of its objects, is applied
    /// again, so a source without the watch label is read again at least once a resync.
    pub async fn resync(&mut self) {
        self.metrics.resyncs.inc();
        match self.store.list().await {
            Ok(listing) => {
                let live: BTreeSet<String> = listing
                    .components
                    .iter()
                    .chain(listing.unreadable.iter().map(|u| &u.component))
                    .filter_map(|c| c.metadata.uid.clone())
                    .collect();
                self.ledger.retain_live(&live);
                for component in listing.components {
                    if reads_any_source(&component) && worth_reading_again(&component) {
                        self.refreshing.insert(ObjectKey::of(&component));
                    }
                    self.handle_logged(component).await;
                }
                for unreadable in listing.unreadable {
                    self.unreadable_logged(unreadable).await;
                }
            }
            Err(error) => tracing::warn!(%error, "resync: cannot list components"),
        }
    }

    async fn retry_failed(&mut self) {
        for key in self.retries.due(tokio::time::Instant::now()) {
            match self.store.get(&key.namespace, &key.name).await {
                Ok(Some(Observed::Component(component))) => self.handle_logged(*component).await,
                Ok(Some(Observed::Unreadable(unreadable))) => {
                    self.unreadable_logged(*unreadable).await;
                }
                Ok(None) => self.retries.remove(&key),
                Err(error) => {
                    let (namespace, name) = (&key.namespace, &key.name);
                    tracing::debug!(%error, %namespace, %name, "retry: cannot read component");
                    self.failed(key, None, &WatcherError::Store(error));
                }
            }
        }
    }

    /// Reports `unreadable` (once per generation), then handles it like a Component with an
    /// invalid config.
    async fn unreadable_logged(&mut self, unreadable: Unreadable) {
        let Unreadable { component, error } = unreadable;
        let handler = &component.spec.handler;
        // An unreadable handler may be ours; an object of another handler is theirs.
        if !handler.is_empty() && !component.is_for(&self.config.handler) {
            return;
        }
        let ObjectKey { namespace, name } = ObjectKey::of(&component);
        let generation = component.metadata.generation.unwrap_or(0);
        if self.ledger.first_report(&component) {
            self.metrics.unreadable_components.inc();
            tracing::warn!(%namespace, %name, generation, %error, "component cannot be read; skipping it");
        }
        if !component.is_for(&self.config.handler) {
            return;
        }
        self.handle_logged_as(component, Some(error)).await;
    }

    async fn handle_logged(&mut self, component: Component) {
        if !component.is_for(&self.config.handler) {
            return;
        }
        // Every change of a Component passes here, the writer's answers to checks included:
        // its next check is dated from what it shows now.
        let key = ObjectKey::of(&component);
        match next_drift_check(&component) {
            Some(due) => self.drift_checks.insert(key, due),
            None => self.drift_checks.remove(&key),
        };
        self.handle_logged_as(component, None).await;
    }

    /// Handles the Components whose drift check is due (the plan issues it).
    async fn check_drift_due(&mut self) {
        let now = Timestamp::now();
        let due: Vec<ObjectKey> = self
            .drift_checks
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(key, _)| key.clone())
            .collect();
        for key in due {
            // A due time fires once: the change the check makes (its issued job, then its
            // answer) or the next resync dates the next one, so a check the plan does not issue
            // now is never polled in a loop.
            self.drift_checks.remove(&key);
            match self.store.get(&key.namespace, &key.name).await {
                Ok(Some(Observed::Component(component)))
                    if component.is_for(&self.config.handler) =>
                {
                    self.handle_logged_as(*component, None).await;
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, component = %key, "drift check: cannot read component");
                    self.failed(key, None, &WatcherError::Store(error));
                }
            }
        }
    }

    async fn handle_logged_as(&mut self, component: Component, unreadable: Option<String>) {
        let key = ObjectKey::of(&component);
        let version = component.metadata.resource_version.clone();
        let (namespace, name) = (&key.namespace, &key.name);
        if self.retries.given_up_at(&key, version.as_ref()) {
            tracing::debug!(%namespace, %name, "failed for good at this resourceVersion; left alone");
            return;
        }
        let span = tracing::info_span!("component", %namespace, %name);
        match self.handle_as(component, unreadable).instrument(span).await {
            Ok(()) => self.retries.remove(&key),
            Err(error) => self.failed(key, version, &error),
        }
    }

    /// Reports a failure of `key` (at `version`) and schedules its retry by class.
    fn failed(&mut self, key: ObjectKey, version: Option<String>, error: &WatcherError) {
        let (namespace, name) = (&key.namespace, &key.name);
        let failures = self.retries.failures(&key).saturating_add(1);
        let class = error.class();
        self.metrics.handling_failures.inc();
        match retry_after(
            class,
            failures,
            self.config.retry_interval,
            self.config.max_retry_delay,
        ) {
            Retry::GiveUp => {
                tracing::warn!(%namespace, %name, %error, "handling failed for good; not retried until the component changes");
                self.retries.give_up(key, version);
            }
            Retry::After(delay) => {
                tracing::warn!(%namespace, %name, %error, ?class, ?delay, failures, "handling failed; will retry");
                let due = tokio::time::Instant::now() + delay;
                self.retries.retry_at(key, failures, due);
            }
        }
    }

    fn record(&mut self, component: &Component, kind: Kind, now: Timestamp) {
        self.ledger.record(component, |p| match kind {
            Kind::Apply => p.apply = Some(now),
            Kind::Delete => p.delete = Some(now),
            Kind::Failed => p.failed = true,
            Kind::Terminated => p.terminated = true,
            Kind::TerminationFailed => p.termination_failed = true,
        });
    }

    /// Plans and acts on one Component until there is nothing more to do for it now.
    pub async fn handle(&mut self, component: Component) -> Result<(), WatcherError> {
        self.handle_as(component, None).await
    }

    /// [`Watcher::handle`], for an object that cannot be read as a Component when
    /// `unreadable` says why.
    async fn handle_as(
        &mut self,
        mut component: Component,
        mut unreadable: Option<String>,
    ) -> Result<(), WatcherError> {
        let key = ObjectKey::of(&component);
        for _ in 0..MAX_STEPS {
            if !self.leading() {
                // The new leader's listing covers it.
                return Ok(());
            }
            let now = Timestamp::now();
            let nonce = nonce()?;
            let ctx = Context {
                handler: &self.config.handler,
                refresh: self.refreshing.contains(&key),
                now,
                published: self.ledger.published(&component),
                resync_grace: self.config.resync_grace,
                max_timeout: self.config.max_timeout,
                nonce: &nonce,
            };
            let action = match &unreadable {
                Some(error) => plan_unreadable(&component, error, &ctx),
                None => plan(&component, &ctx),
            };
            tracing::debug!(?action, "planned");
            match action {
                Action::Ignore | Action::Nothing(_) => return Ok(()),
                Action::SkipOtherHandler { finalizer } => {
                    tracing::debug!(%finalizer, "claimed by another handler; skipping");
                    return Ok(());
                }
                Action::WaitCoordination => {
                    tracing::debug!("deletion waits for the coordination finalizer");
                    return Ok(());
                }
                Action::Claim => match self.claim(component, unreadable, &nonce, now).await? {
                    Some(fresh) => (component, unreadable) = fresh,
                    None => return Ok(()),
                },
                Action::Suspend => {
                    let status = suspended_status(&component, true, now);
                    match self
                        .write_status(component, unreadable, &status, "suspend")
                        .await?
                    {
                        Some(fresh) => (component, unreadable) = fresh,
                        None => return Ok(()),
                    }
                    tracing::info!("suspended");
                }
                Action::Issue(job) => match self.issue(component, unreadable, job, now).await? {
                    Some(fresh) => (component, unreadable) = fresh,
                    None => return Ok(()),
                },
                Action::PublishApply(job) => {
                    return self.publish_job(&component, Kind::Apply, &job, now).await;
                }
                Action::PublishDelete(job) => {
                    return self.publish_job(&component, Kind::Delete, &job, now).await;
                }
                Action::ConfigFailed { message } => {
                    tracing::info!(%message, "invalid config; failing this generation");
                    return self
                        .tell(&component, Kind::Failed, StatusPhase::Failed, message, now)
                        .await;
                }
                Action::FinishDeleteWithoutRelease { message } => {
                    let phase = StatusPhase::Terminated;
                    return self
                        .tell(&component, Kind::Terminated, phase, message, now)
                        .await;
                }
                Action::DeleteBlocked { message } => {
                    tracing::warn!(%message, "cannot build a delete job");
                    let phase = StatusPhase::TerminationFailed;
                    return self
                        .tell(&component, Kind::TerminationFailed, phase, message, now)
                        .await;
                }
            }
        }
        Err(WatcherError::TooManyRounds(key.to_string()))
    }

    /// Claims `component` (the finalizer), then writes `Claimed` together with its apply job
    /// as issued (unless one is recorded) in one status write, and queues the `Claimed` Event;
    /// on a conflict, the object as it is now, to plan again.
    ///
    /// `Claimed` is written here rather than published for the writer: the status write that
    /// records the job would otherwise be followed by a second one for the same claim.
    async fn claim(
        &mut self,
        component: Component,
        unreadable: Option<String>,
        nonce: &str,
        now: Timestamp,
    ) -> Result<Fresh, WatcherError> {
        let key = ObjectKey::of(&component);
        let claimed = match self.store.add_finalizer(&component).await {
            // Claimed, whether or not the object it answered with is readable.
            Ok(claimed) => claimed.into_parts(),
            // Someone else wrote first: re-read and decide again, never overwrite.
            Err(StoreError::Conflict(_)) => {
                return Ok(self.reread(&key, "claim").await?);
            }
            Err(e) => return Err(e.into()),
        };
        tracing::info!("claimed");
        let (claimed, error) = claimed;
        // The `Claimed` event answers this generation's apply job: issued with it.
        let (status, job_id, recorded) = match recorded_job(&claimed, JobAction::Apply) {
            Some(job) => {
                let status = claimed.status.clone().unwrap_or_default();
                (status, job.id.clone(), true)
            }
            None => {
                let job = new_issued_job(&claimed, JobAction::Apply, nonce);
                let id = job.id.clone();
                (issued_status(&claimed, job, now), id, false)
            }
        };
        let message = claimed_message(&self.config.handler);
        let event = self.event_for(&claimed, &job_id, StatusPhase::Claimed, message, now);
        let told = apply(&status, &event, &self.config.handler).map(|patch| patch.status);
        if recorded && told.is_none() {
            // The status already stands past this claim: nothing to write.
            return Ok(Some((claimed, error.or(unreadable))));
        }
        let written = self
            .store
            .patch_status(&claimed, told.as_ref().unwrap_or(&status))
            .await;
        match written {
            Ok(updated) => {
                let (updated, error) = updated.into_parts();
                if let Some(events) = self.events.as_ref().filter(|_| told.is_some()) {
                    events.queue(&updated, &event).await;
                }
                Ok(Some((updated, error.or(unreadable))))
            }
            // Planned again from a fresh read, the job is issued on its own: only `Claimed` is
            // not told (the writer still sets claimedBy from the next event).
            Err(StoreError::Conflict(_)) => Ok(self.reread(&key, "issue").await?),
            Err(e) => Err(e.into()),
        }
    }

    /// Records `job` as issued for `component`; the object as it is then, to plan again.
    async fn issue(
        &mut self,
        component: Component,
        unreadable: Option<String>,
        job: IssuedJob,
        now: Timestamp,
    ) -> Result<Fresh, WatcherError> {
        let (id, action) = (job.id.clone(), job.action);
        match self.record_issued(&component, job, now).await {
            Ok((component, error)) => {
                // Planning again on a status without it would issue another job, for ever.
                if recorded_job(&component, action).is_none_or(|j| j.id != id) {
                    return Err(WatcherError::IssuedJobPruned(id));
                }
                tracing::info!(job = %id, "job issued");
                if action == JobAction::Apply {
                    // It reads the values sources afresh.
                    self.refreshing.remove(&ObjectKey::of(&component));
                }
                Ok(Some((component, error.or(unreadable))))
            }
            Err(StoreError::Conflict(_)) => {
                Ok(self.reread(&ObjectKey::of(&component), "issue").await?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Publishes the status event `phase` (noted as `kind`) with `message` for `component`.
    async fn tell(
        &mut self,
        component: &Component,
        kind: Kind,
        phase: StatusPhase,
        message: String,
        now: Timestamp,
    ) -> Result<(), WatcherError> {
        let event = self.event(component, phase, message, now);
        self.publish_status(component, kind, &event, now).await
    }

    /// Counts a conflict of a `write` (`claim`, `issue`) and re-reads `key`: the object and,
    /// when it cannot be read as a Component, why; `None` when it is gone.
    async fn reread(&self, key: &ObjectKey, write: &str) -> Result<Fresh, StoreError> {
        self.metrics.conflicts.inc();
        tracing::debug!("{write} conflict; re-reading");
        let fresh = self.store.get(&key.namespace, &key.name).await?;
        Ok(fresh.map(Observed::into_parts))
    }

    /// Records `job` as issued in `component`'s status, on the condition that it is unchanged
    /// since it was read: the updated object and, when it cannot be read as a Component, why.
    async fn record_issued(
        &self,
        component: &Component,
        job: IssuedJob,
        now: Timestamp,
    ) -> Result<(Component, Option<String>), StoreError> {
        let status = issued_status(component, job, now);
        // Recorded, whether or not the object it answered with is readable.
        let updated = self.store.patch_status(component, &status).await?;
        Ok(updated.into_parts())
    }

    /// Writes `status` for `component`; the object as it is then (or, on a conflict, as it is
    /// now), to plan again. `what` names the write in logs.
    async fn write_status(
        &mut self,
        component: Component,
        unreadable: Option<String>,
        status: &ComponentStatus,
        what: &'static str,
    ) -> Result<Fresh, WatcherError> {
        match self.store.patch_status(&component, status).await {
            Ok(updated) => {
                let (component, error) = updated.into_parts();
                Ok(Some((component, error.or(unreadable))))
            }
            Err(StoreError::Conflict { .. }) => {
                Ok(self.reread(&ObjectKey::of(&component), what).await?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The producer's own event: it answers the job recorded as issued for the phase's action
    /// (the plan asks for the event only once it is recorded).
    fn event(
        &self,
        component: &Component,
        phase: StatusPhase,
        message: String,
        now: Timestamp,
    ) -> StatusEvent {
        let action = if phase.is_deletion() {
            JobAction::Delete
        } else {
            JobAction::Apply
        };
        let job_id = recorded_job(component, action).map_or("", |job| job.id.as_str());
        self.event_for(component, job_id, phase, message, now)
    }

    /// The producer's own event answering the job `job_id`.
    fn event_for(
        &self,
        component: &Component,
        job_id: &str,
        phase: StatusPhase,
        message: String,
        now: Timestamp,
    ) -> StatusEvent {
        StatusEvent::new(
            job_id,
            component_ref(component),
            phase,
            message,
            0,
            PRODUCER_WORKER,
            now,
        )
    }

    async fn publish_status(
        &mut self,
        component: &Component,
        kind: Kind,
        event: &StatusEvent,
        now: Timestamp,
    ) -> Result<(), WatcherError> {
        self.status.publish_status(event).await?;
        self.metrics.published(kind.as_str(), false);
        self.record(component, kind, now);
        Ok(())
    }

    async fn publish_job(
        &mut self,
        component: &Component,
        kind: Kind,
        job: &JobEvent,
        now: Timestamp,
    ) -> Result<(), WatcherError> {
        let outcome = self.jobs.publish_job(job).await?;
        let duplicate = matches!(outcome, PublishOutcome::Duplicate { .. });
        tracing::info!(job = %job.id, duplicate, "published {} job", kind.as_str());
        self.metrics.published(kind.as_str(), duplicate);
        self.record(component, kind, now);
        Ok(())
    }
}

/// A fresh nonce for an issued job id.
fn nonce() -> Result<String, WatcherError> {
    helmq_schemas::event::job_nonce().map_err(WatcherError::Random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_follow_the_class_of_the_failure() {
        let s = Duration::from_secs;
        let interval = s(5);
        let max = MAX_RETRY_DELAY;
        let cases = [
            ("permanent, first", ErrorClass::Permanent, 1, Retry::GiveUp),
            ("permanent, later", ErrorClass::Permanent, 7, Retry::GiveUp),
            ("conflict", ErrorClass::Conflict, 1, Retry::After(s(5))),
            (
                "conflict, again",
                ErrorClass::Conflict,
                9,
                Retry::After(s(5)),
            ),
            (
                "transient, first",
                ErrorClass::Transient,
                1,
                Retry::After(s(5)),
            ),
            (
                "transient, second",
                ErrorClass::Transient,
                2,
                Retry::After(s(10)),
            ),
            (
                "transient, fourth",
                ErrorClass::Transient,
                4,
                Retry::After(s(40)),
            ),
            (
                "transient, capped",
                ErrorClass::Transient,
                7,
                Retry::After(s(300)),
            ),
            (
                "transient, no overflow",
                ErrorClass::Transient,
                u32::MAX,
                Retry::After(s(300)),
            ),
            (
                "transient, zero failures",
                ErrorClass::Transient,
                0,
                Retry::After(s(5)),
            ),
        ];
        for (name, class, failures, want) in cases {
            assert_eq!(retry_after(class, failures, interval, max), want, "{name}");
        }
    }

    #[test]
    fn watcher_errors_have_the_class_of_their_cause() {
        let rejected = |code| {
            WatcherError::Store(StoreError::Rejected {
                code,
                message: String::new(),
            })
        };
        let cases = [
            (rejected(422), ErrorClass::Permanent),
            (rejected(403), ErrorClass::Permanent),
            (rejected(503), ErrorClass::Transient),
            (rejected(429), ErrorClass::Transient),
            (
                WatcherError::Store(StoreError::Invalid("bad uri".into())),
                ErrorClass::Permanent,
            ),
            (
                WatcherError::Publish(PublishError::NoStream("HELMQ_JOBS")),
                ErrorClass::Transient,
            ),
            (
                WatcherError::Publish(PublishError::TooLarge { size: 2, limit: 1 }),
                ErrorClass::Permanent,
            ),
            (
                WatcherError::TooManyRounds("ns/c".into()),
                ErrorClass::Conflict,
            ),
        ];
        for (error, want) in cases {
            assert_eq!(error.class(), want, "{error}");
        }
    }
}

//! The producer's decisions as a pure function: [`plan`] looks at one Component (and at what
//! this producer already published for it) and says what to do, following the original
//! handler's claiming, creation and deletion protocols (`docs/ARCHITECTURE.md`, "Protocols").
//! The watch loop only carries the [`Action`] out.
//!
//! Nothing is published for a (generation, action) before the job is recorded as issued in the
//! Component's status (`status.handlerStatus.issuedJob`, [`Action::Issue`]): the writer applies
//! only status events that answer it. Every later publish for it, by this producer or one that
//! takes over, reuses the recorded id, so JetStream drops the duplicates.

use std::time::Duration;

use helmq_schemas::component::{
    COORDINATION_FINALIZER, Component, ComponentStatus, HELM_FINALIZER, IssuedJob,
    LIFECYCLE_FINALIZER_SUFFIX, Phase, REQUESTED_AT_ANNOTATION, SUSPEND_ANNOTATION,
    SUSPENDED_CONDITION,
};
use helmq_schemas::config::{HelmConfig, ValuesKind, ValuesReference};
use helmq_schemas::event::{ComponentRef, Deployed, JobAction, JobEvent, issued_job_id};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Prefix of the Composition controller's finalizers, which never mean "claimed".
const COMPOSITION_PREFIX: &str = "composition.";
/// Extra time over a job's own timeout before resync re-publishes it.
pub const RESYNC_SLACK: Duration = Duration::from_secs(60);

/// What this producer already published for one (uid, generation), from its in-memory record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    /// When the apply job was last published.
    pub apply: Option<Timestamp>,
    /// When the delete job was last published.
    pub delete: Option<Timestamp>,
    /// A `Failed` event for an invalid config was published.
    pub failed: bool,
    /// A `Terminated` event (nothing to uninstall) was published.
    pub terminated: bool,
    /// A `TerminationFailed` event (cannot build a delete job) was published.
    pub termination_failed: bool,
}

/// Everything besides the Component that a decision depends on.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The handler name we answer to (`spec.handler`).
    pub handler: &'a str,
    /// A `valuesFrom` source may have changed: apply the generation again once its outcome is
    /// in the status.
    pub refresh: bool,
    /// The current time.
    pub now: Timestamp,
    /// What was already published for this Component's uid and generation.
    pub published: Published,
    /// How long a published job may go unanswered before it is re-published; `None`: the
    /// Component's own timeout plus [`RESYNC_SLACK`].
    pub resync_grace: Option<Duration>,
    /// The longest `deploymentTimeout`/`terminationTimeout` accepted (`--max-timeout`); a
    /// Component asking for more fails like an invalid config.
    pub max_timeout: Duration,
    /// A fresh random nonce, for the id of a job issued now ([`Action::Issue`]); unused when
    /// the job is already recorded.
    pub nonce: &'a str,
}

/// What to do with one Component.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `spec.handler` names another handler.
    Ignore,
    /// Another handler's lifecycle finalizer is on it: it is theirs.
    SkipOtherHandler {
        /// The other handler's finalizer.
        finalizer: String,
    },
    /// Add our finalizer (optimistic concurrency), record the apply job of this generation as
    /// issued, then publish a `Claimed` event answering it.
    Claim,
    /// Record this job as issued in `status.handlerStatus.issuedJob` (optimistic concurrency),
    /// then plan again: the actions that publish something for a (generation, action) come only
    /// once it is recorded, and their jobs and events carry its id.
    Issue(IssuedJob),
    /// Suspended by its annotation and not yet said so: write the `Suspended` condition
    /// ([`suspended_status`]). No job is issued while it stays suspended.
    Suspend,
    /// Publish this apply job.
    PublishApply(Box<JobEvent>),
    /// `spec.config` is invalid: publish a `Failed` event with the parser's message, answering
    /// the apply job recorded as issued ([`recorded_job`]).
    ConfigFailed {
        /// The parser's message.
        message: String,
    },
    /// Being deleted, but the Composition controller's finalizer is still on it.
    WaitCoordination,
    /// Publish this delete job.
    PublishDelete(Box<JobEvent>),
    /// Being deleted, the config is invalid and no release was ever recorded: nothing was
    /// installed, so publish `Terminated` directly (answering the delete job recorded as
    /// issued) and let the writer remove our finalizer.
    FinishDeleteWithoutRelease {
        /// Why nothing needs uninstalling.
        message: String,
    },
    /// Being deleted with a release recorded, but the config is invalid so no delete job can
    /// be built: publish `TerminationFailed` answering the delete job recorded as issued (the
    /// finalizer stays until the spec is fixed).
    DeleteBlocked {
        /// Why.
        message: String,
    },
    /// Nothing to do now.
    Nothing(&'static str),
}

/// Decides what to do with `component`.
pub fn plan(component: &Component, ctx: &Context<'_>) -> Action {
    plan_with(component, ctx, None)
}

/// Decides what to do with an object that cannot be read as a Component (`error` says why;
/// `component` holds its metadata, `spec.handler` and status): as with an invalid config, it is
/// claimed and fails with the reason, and its deletion needs no uninstall unless a release
/// was recorded.
pub fn plan_unreadable(component: &Component, error: &str, ctx: &Context<'_>) -> Action {
    plan_with(component, ctx, Some(error))
}

/// The message of a Component that cannot be read.
pub fn unreadable_message(error: &str) -> String {
    format!("this Component cannot be read ({error}); helmq skips it until its spec is fixed")
}

fn plan_with(component: &Component, ctx: &Context<'_>, unreadable: Option<&str>) -> Action {
    if !component.is_for(ctx.handler) {
        return Action::Ignore;
    }
    let finalizers = component.metadata.finalizers.as_deref().unwrap_or_default();
    let ours = finalizers.iter().any(|f| f == HELM_FINALIZER);
    let deleting = component.metadata.deletion_timestamp.is_some();
    if !ours {
        if let Some(other) = other_handler_finalizer(finalizers) {
            return Action::SkipOtherHandler {
                finalizer: other.to_owned(),
            };
        }
        if deleting {
            return Action::Nothing("being deleted and never claimed by us");
        }
        if component.is_suspended() {
            return suspend(component);
        }
        return Action::Claim;
    }
    let config = |action| match unreadable {
        Some(error) => Err(unreadable_message(error)),
        None => config_and_timeout(component, action, ctx.max_timeout),
    };
    if deleting {
        // Suspension stops applies only: a deleted Component's release is uninstalled, or it
        // would stay behind with owner labels no Component can match again.
        plan_delete(component, ctx, config(JobAction::Delete))
    } else if component.is_suspended() {
        suspend(component)
    } else {
        plan_apply(component, ctx, config(JobAction::Apply))
    }
}

/// [`Action::Suspend`] unless the status already says it is suspended.
fn suspend(component: &Component) -> Action {
    if is_marked_suspended(component.status.as_ref()) {
        Action::Nothing("suspended")
    } else {
        Action::Suspend
    }
}

/// True when the status carries the `Suspended` condition as `True`.
fn is_marked_suspended(status: Option<&ComponentStatus>) -> bool {
    status.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == SUSPENDED_CONDITION && c.status == "True")
    })
}

/// `component`'s status with the `Suspended` condition set to `suspended` at `now` (its
/// transition time kept when it does not flip).
pub fn suspended_status(component: &Component, suspended: bool, now: Timestamp) -> ComponentStatus {
    let mut status = component.status.clone().unwrap_or_default();
    let (value, reason, message) = if suspended {
        (
            "True",
            "Suspended",
            format!("{SUSPEND_ANNOTATION} is \"true\": no Helm runs until it is removed"),
        )
    } else {
        (
            "False",
            "Resumed",
            format!("{SUSPEND_ANNOTATION} was removed"),
        )
    };
    let generation = component.metadata.generation;
    let existing = status
        .conditions
        .iter()
        .position(|c| c.type_ == SUSPENDED_CONDITION);
    let last_transition_time = match existing.map(|i| &status.conditions[i]) {
        Some(c) if c.status == value => c.last_transition_time.clone(),
        _ => Time(now),
    };
    let condition = Condition {
        type_: SUSPENDED_CONDITION.to_owned(),
        status: value.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    };
    match existing {
        Some(i) => status.conditions[i] = condition,
        None => status.conditions.push(condition),
    }
    status
}

/// `component`'s status with `job` recorded as issued. An apply job handles the reconcile
/// request the annotation holds now, and ends a suspension the status still shows.
pub fn issued_status(component: &Component, mut job: IssuedJob, now: Timestamp) -> ComponentStatus {
    let action = job.action;
    if action == JobAction::Apply && reconcile_requested(component, component.status.as_ref()) {
        // A reconcile request runs Helm even when nothing changed.
        job.forced = true;
    }
    let mut status = if action == JobAction::Apply && is_marked_suspended(component.status.as_ref())
    {
        suspended_status(component, false, now)
    } else {
        component.status.clone().unwrap_or_default()
    };
    let record = status.handler_status.get_or_insert_with(Default::default);
    record.issued_job = Some(job);
    if action == JobAction::Apply
        && let Some(requested) = component.annotation(REQUESTED_AT_ANNOTATION)
    {
        record.last_handled_reconcile_at = Some(requested.to_owned());
    }
    status
}

/// Whether the `requested-at` annotation holds a value no apply job was issued for yet.
fn reconcile_requested(component: &Component, status: Option<&ComponentStatus>) -> bool {
    let handled = status
        .and_then(|s| s.handler_status.as_ref())
        .and_then(|h| h.last_handled_reconcile_at.as_deref());
    component
        .annotation(REQUESTED_AT_ANNOTATION)
        .is_some_and(|requested| Some(requested) != handled)
}

/// What a `Ready` status says is deployed, for an apply job not answering a reconcile request
/// (the worker skips Helm when nothing changed).
fn deployed(component: &Component) -> Option<Deployed> {
    let status = component.status.as_ref()?;
    let record = status.handler_status.as_ref()?;
    let forced = recorded_job(component, JobAction::Apply).is_some_and(|job| job.forced);
    if status.phase != Some(Phase::Ready) || forced {
        return None;
    }
    Some(Deployed {
        values_digest: record.values_digest.clone()?,
        config_digest: record.config_digest.clone()?,
    })
}

/// When `component`'s next drift check is due (`config.drift`): an interval after its last
/// check or deploy, whichever is later. `None` unless checks are on and it is `Ready` at its
/// generation with the apply job issued last answered (a check is an apply job of its own),
/// and not suspended.
pub fn next_drift_check(component: &Component) -> Option<Timestamp> {
    let namespace = component.metadata.namespace.as_deref().unwrap_or_default();
    let name = component.metadata.name.as_deref().unwrap_or_default();
    let config = HelmConfig::parse(component.spec.config.as_ref(), namespace, name).ok()?;
    if !config.drift.enabled() || component.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = component.status.as_ref()?;
    let record = status.handler_status.as_ref()?;
    // A suspended Component gets no job, checks included.
    if status.phase != Some(Phase::Ready) || !answered(component) || component.is_suspended() {
        return None;
    }
    let since = record
        .drift_checked_at
        .iter()
        .chain(&record.last_deploy_time)
        .map(|t| t.0)
        .max()?;
    let interval = jiff::SignedDuration::try_from(config.drift.interval()).ok()?;
    since.checked_add(interval).ok()
}

/// Whether `component`'s `valuesFrom` reads the `kind` object `name` (false for a config that
/// does not parse).
pub fn reads_source(component: &Component, kind: ValuesKind, name: &str) -> bool {
    values_sources(component)
        .iter()
        .any(|r| r.kind == kind && r.name == name)
}

/// Whether `component` has a `valuesFrom`.
pub fn reads_any_source(component: &Component) -> bool {
    !values_sources(component).is_empty()
}

fn values_sources(component: &Component) -> Vec<ValuesReference> {
    let namespace = component.metadata.namespace.as_deref().unwrap_or_default();
    let name = component.metadata.name.as_deref().unwrap_or_default();
    HelmConfig::parse(component.spec.config.as_ref(), namespace, name)
        .map(|config| config.values_from)
        .unwrap_or_default()
}

/// The `refresh` of the apply job recorded as issued for the current generation (0 without one).
pub fn recorded_refresh(component: &Component) -> u32 {
    recorded_job(component, JobAction::Apply).map_or(0, |job| job.refresh)
}

/// Another handler's claim: `*.deployment-orchestrator.io/lifecycle`, not ours and not the
/// Composition controller's.
fn other_handler_finalizer(finalizers: &[String]) -> Option<&str> {
    finalizers.iter().map(String::as_str).find(|f| {
        *f != HELM_FINALIZER
            && f.ends_with(LIFECYCLE_FINALIZER_SUFFIX)
            && !f.starts_with(COMPOSITION_PREFIX)
    })
}

/// The job recorded as issued for `component`'s current generation and `action`, if any.
pub fn recorded_job(component: &Component, action: JobAction) -> Option<&IssuedJob> {
    let generation = component.metadata.generation.unwrap_or(0);
    component
        .status
        .as_ref()?
        .handler_status
        .as_ref()?
        .issued_job
        .as_ref()
        .filter(|job| job.generation == generation && job.action == action)
}

/// A job to issue for `component`'s current generation and `action`, its id made with `nonce`.
pub fn new_issued_job(component: &Component, action: JobAction, nonce: &str) -> IssuedJob {
    let target = component_ref(component);
    IssuedJob {
        id: issued_job_id(&target, action, nonce),
        generation: target.generation,
        action,
        refresh: 0,
        forced: false,
        drift_check: false,
    }
}

/// `publish(id)` with the id of the job recorded for `action`, or [`Action::Issue`] of a new one.
fn issued_then(
    component: &Component,
    ctx: &Context<'_>,
    action: JobAction,
    publish: impl FnOnce(String) -> Action,
) -> Action {
    match recorded_job(component, action) {
        Some(job) => publish(job.id.clone()),
        None => Action::Issue(new_issued_job(component, action, ctx.nonce)),
    }
}

/// Publish the `action` job of `component` under the id recorded as issued, or
/// [`Action::Issue`] first.
fn publish_job(
    component: &Component,
    ctx: &Context<'_>,
    action: JobAction,
    config: HelmConfig,
    timeout: Duration,
) -> Action {
    issued_then(component, ctx, action, |id| {
        let mut job = JobEvent::new(
            action,
            component_ref(component),
            config,
            timeout.as_secs().max(1),
            ctx.now,
        );
        job.id = id;
        if action == JobAction::Apply {
            job.refresh = recorded_refresh(component);
            job.deployed = deployed(component);
            job.drift_check =
                recorded_job(component, JobAction::Apply).is_some_and(|job| job.drift_check);
        }
        match action {
            JobAction::Apply => Action::PublishApply(Box::new(job)),
            JobAction::Delete => Action::PublishDelete(Box::new(job)),
        }
    })
}

/// The reference to `component` (namespace, name, uid, generation) that its jobs and status
/// events carry.
pub fn component_ref(component: &Component) -> ComponentRef {
    ComponentRef {
        namespace: component.metadata.namespace.clone().unwrap_or_default(),
        name: component.metadata.name.clone().unwrap_or_default(),
        uid: component.metadata.uid.clone(),
        generation: component.metadata.generation.unwrap_or(0),
    }
}

/// The parsed config and the timeout for `action` (at most `max`), or the message saying what
/// is wrong.
fn config_and_timeout(
    component: &Component,
    action: JobAction,
    max: Duration,
) -> Result<(HelmConfig, Duration), String> {
    let namespace = component.metadata.namespace.as_deref().unwrap_or_default();
    let name = component.metadata.name.as_deref().unwrap_or_default();
    let config = HelmConfig::parse(component.spec.config.as_ref(), namespace, name)
        .map_err(|e| e.to_string())?;
    let (field, timeout) = match action {
        JobAction::Apply => (
            "spec.deploymentTimeout",
            component.spec.deployment_timeout(),
        ),
        JobAction::Delete => (
            "spec.terminationTimeout",
            component.spec.termination_timeout(),
        ),
    };
    let timeout = capped_timeout(field, timeout.map_err(|e| e.to_string())?, max)?;
    Ok((config, timeout))
}

/// `timeout` when it is at most `max` (`--max-timeout`, which the workers enforce too);
/// otherwise the message naming `field` and both limits.
pub fn capped_timeout(field: &str, timeout: Duration, max: Duration) -> Result<Duration, String> {
    if timeout <= max {
        return Ok(timeout);
    }
    Err(format!(
        "{field} is {}s, over the limit of {}s (--max-timeout); use a shorter timeout",
        timeout.as_secs(),
        max.as_secs()
    ))
}

/// True when `published` is recent enough that the job is presumably still on its way.
fn still_pending(published: Option<Timestamp>, timeout: Duration, ctx: &Context<'_>) -> bool {
    let Some(at) = published else {
        return false;
    };
    let grace = ctx.resync_grace.unwrap_or(timeout + RESYNC_SLACK);
    let grace = jiff::SignedDuration::try_from(grace).unwrap_or(jiff::SignedDuration::MAX);
    ctx.now.duration_since(at) < grace
}

fn plan_apply(
    component: &Component,
    ctx: &Context<'_>,
    config: Result<(HelmConfig, Duration), String>,
) -> Action {
    let generation = component.metadata.generation.unwrap_or(0);
    let status = component.status.clone().unwrap_or_default();
    let up_to_date = status.observed_generation == Some(generation);
    let observed_refresh = observed_refresh(&status);
    let answered = answered(component);
    match config {
        Err(message) => {
            if up_to_date && status.phase == Some(Phase::Failed) {
                Action::Nothing("failed at this generation; waiting for a spec change")
            } else if ctx.published.failed {
                Action::Nothing("config failure published; waiting for the writer")
            } else {
                issued_then(component, ctx, JobAction::Apply, |_| Action::ConfigFailed {
                    message,
                })
            }
        }
        // The status answers this generation's apply job, yet another apply of it is due: a
        // reconcile request, a suspension just lifted, a values source that may have changed,
        // or a drift check.
        Ok(_) if answered => {
            let drift_check = next_drift_check(component).is_some_and(|due| due <= ctx.now);
            if reconcile_requested(component, Some(&status))
                || is_marked_suspended(Some(&status))
                || ctx.refresh
                || drift_check
            {
                let mut job = new_issued_job(component, JobAction::Apply, ctx.nonce);
                job.refresh = recorded_refresh(component).max(observed_refresh) + 1;
                job.drift_check = drift_check;
                Action::Issue(job)
            } else {
                Action::Nothing("status reflects this generation")
            }
        }
        Ok((mut config, timeout)) => {
            if still_pending(
                last_activity(&status, generation, ctx.published.apply),
                timeout,
                ctx,
            ) {
                return Action::Nothing("apply job published; waiting for the worker");
            }
            adopt_recorded(&mut config, &status);
            publish_job(component, ctx, JobAction::Apply, config, timeout)
        }
    }
}

/// The `refresh` of the apply job whose outcome the status shows (0 without one).
fn observed_refresh(status: &ComponentStatus) -> u32 {
    status
        .handler_status
        .as_ref()
        .and_then(|h| h.observed_refresh)
        .unwrap_or(0)
}

/// Whether the status answers the apply job issued last (not only one of this generation):
/// it shows the current generation's outcome, at the recorded refresh or later.
fn answered(component: &Component) -> bool {
    let Some(status) = &component.status else {
        return false;
    };
    status.observed_generation == Some(component.metadata.generation.unwrap_or(0))
        && recorded_refresh(component) <= observed_refresh(status)
}

/// Lets the job take over the release its Component's status records when that release has no
/// owner labels: one this Component deployed before helmq labelled releases, which an upgrade of
/// helmq must not strand. A release another owner labelled stays refused (the worker decides).
fn adopt_recorded(config: &mut HelmConfig, status: &ComponentStatus) {
    let recorded = status.handler_status.as_ref().is_some_and(|h| {
        h.release_name.as_deref() == Some(config.release_name.as_str())
            && h.release_namespace.as_deref() == Some(config.release_namespace.as_str())
    });
    if recorded {
        config.adopt = true;
    }
}

/// The later of our own publish time and the last progress the status shows for this
/// generation (the `Progressing` condition turning true), so a producer that restarted does not
/// re-publish a job a worker is visibly running.
fn last_activity(
    status: &ComponentStatus,
    generation: i64,
    published: Option<Timestamp>,
) -> Option<Timestamp> {
    let progressing = status
        .conditions
        .iter()
        .find(|c| {
            c.type_ == "Progressing"
                && c.status == "True"
                && c.observed_generation == Some(generation)
        })
        .map(|c| c.last_transition_time.0);
    published.max(progressing)
}

fn plan_delete(
    component: &Component,
    ctx: &Context<'_>,
    config: Result<(HelmConfig, Duration), String>,
) -> Action {
    let finalizers = component.metadata.finalizers.as_deref().unwrap_or_default();
    if finalizers.iter().any(|f| f == COORDINATION_FINALIZER) {
        return Action::WaitCoordination;
    }
    let generation = component.metadata.generation.unwrap_or(0);
    let status = component.status.clone().unwrap_or_default();
    if status.phase == Some(Phase::TerminationFailed)
        && status.observed_generation == Some(generation)
    {
        return Action::Nothing("termination failed at this generation; finalizer kept");
    }
    if ctx.published.terminated {
        return Action::Nothing("terminated; waiting for the writer to remove the finalizer");
    }
    let record = status
        .handler_status
        .as_ref()
        .and_then(|h| Some((h.release_name.clone()?, h.release_namespace.clone()?)));
    match config {
        Ok((mut config, timeout)) => {
            if still_pending(ctx.published.delete, timeout, ctx) {
                return Action::Nothing("delete job published; waiting for the worker");
            }
            // Every operation after the first deploy uses the recorded release.
            if let Some((name, namespace)) = record {
                config.release_name = name;
                config.release_namespace = namespace;
            }
            adopt_recorded(&mut config, &status);
            publish_job(component, ctx, JobAction::Delete, config, timeout)
        }
        Err(message) => match record {
            None => issued_then(component, ctx, JobAction::Delete, |_| {
                Action::FinishDeleteWithoutRelease {
                    message: format!("nothing to uninstall (no release was installed: {message})"),
                }
            }),
            Some(_) if ctx.published.termination_failed => {
                Action::Nothing("termination failure published; waiting for a spec change")
            }
            Some((name, namespace)) => issued_then(component, ctx, JobAction::Delete, |_| {
                Action::DeleteBlocked {
                    message: format!(
                        "cannot uninstall release {namespace}/{name}: {message}; fix spec.config to retry"
                    ),
                }
            }),
        },
    }
}

#[cfg(test)]
mod tests;

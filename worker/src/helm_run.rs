//! The Helm work of a job, with its release lease held: whose release it is (before any Helm
//! action), recovery of a release a dead run left pending (unless the fence says a newer lease
//! holder wrote it), then apply or delete. Talks to the [`HelmDriver`] only, never to NATS.
//!
//! A deploy is `helm install` or `helm upgrade --install`, then `helm test` when the config asks
//! for it; one that fails after Helm wrote its revision is remediated as `config.remediation`
//! says (tried again within this run, then kept, uninstalled or rolled back; see
//! [`crate::remediation`]), always after the owner checks and with the job's identity.
//!
//! One Helm process per job on the common path: what the worker knows beforehand ([`Prior`],
//! from the release's owner record and the run count) decides whether it asks Helm first. A
//! release recorded as this Component's is upgraded or uninstalled at once; one without a
//! record is installed with `helm install`, which refuses a name in use. Only when Helm refuses
//! (another operation in progress, the name in use), or the worker cannot be sure, does the run
//! read the release (`helm status`, its owner labels, its history) and recover it first.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use helmq_schemas::HelmConfig;
use helmq_schemas::config::DriftMode;
use helmq_schemas::event::{Deployed, DriftReport, JobAction, JobEvent, ReleaseInfo, StatusPhase};
use serde_json::{Map, Value};

use crate::drift;
use crate::driver::{
    Apply, DriverError, HelmDriver, NamespaceDeletion, Pending, Recovery, Release, Target,
    Uninstalled, is_pending, judge_pending, recovery_plan,
};
use crate::failure::Cause;
use crate::ownership::{self, Identity, Owner, Ownership};
use crate::policy::{Failure, Outcome};
use crate::remediation::{FailedDeploy, Remedy, Strategy, judge_failure, remedy};
use crate::settings::Settings;
use crate::values::{self, Digests};

/// Reads every `valuesFrom` object of `config` from `namespace` (the Component's) with the
/// rights of `identity`, and merges them with the inline values.
///
/// # Errors
///
/// A read that fails, or [`ValuesError`] as a [`DriverError::Values`].
async fn resolve<D: HelmDriver>(
    driver: &D,
    config: &HelmConfig,
    namespace: &str,
    identity: &Identity,
    cancel: &CancellationToken,
) -> Result<Map<String, Value>, DriverError> {
    let mut sources = Vec::with_capacity(config.values_from.len());
    for reference in &config.values_from {
        sources.push(
            driver
                .values_source(reference.kind, &reference.name, namespace, identity, cancel)
                .await?,
        );
    }
    values::effective(config, namespace, &sources).map_err(DriverError::Values)
}

/// A digest cut for a message: `sha256:` and 12 hex digits.
fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

/// What a successful run produced.
#[derive(Debug)]
pub(crate) struct Done {
    /// `Ready` or `Terminated`.
    pub(crate) phase: StatusPhase,
    /// What the intent records.
    pub(crate) outcome: Outcome,
    /// What the status message says was done.
    pub(crate) message: String,
    /// The release as it now is.
    pub(crate) release: ReleaseInfo,
}

/// The lease a run holds, as the fence sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Held {
    /// The lease revision when it was taken: every revision a later holder writes is higher.
    pub(crate) lease_revision: u64,
    /// How old a pending release must be before no live run can still be writing it (lease TTL
    /// plus the grace a cancelled run gets).
    pub(crate) stale_after: Duration,
}

/// What the worker knows of a release before a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prior {
    /// helmq's record names this job's owner and no earlier run of the job started: upgrade or
    /// uninstall at once.
    Ours,
    /// No record and no earlier run: an apply installs with `helm install`.
    Unrecorded,
    /// Another owner recorded, the record unreadable, or an earlier run of this job that may
    /// have been cut short: read the release from Helm first.
    Unsure,
}

impl Prior {
    /// Judges `record` (`Err`: it could not be read) for a job of `owner` in its run `run`.
    pub(crate) fn judge<E>(record: Result<Option<&Owner>, E>, owner: &Owner, run: u32) -> Prior {
        match record {
            _ if run > 1 => Prior::Unsure,
            Ok(Some(recorded)) if recorded == owner => Prior::Ours,
            Ok(None) => Prior::Unrecorded,
            Ok(Some(_)) | Err(_) => Prior::Unsure,
        }
    }
}

/// One Helm run of a job.
pub(crate) struct HelmRun<'a, D> {
    driver: &'a D,
    job: &'a JobEvent,
    identity: Identity,
    owner: Owner,
    timeout: Duration,
    allow_shared_releases: bool,
    cancel: &'a CancellationToken,
    /// What the status message will say, in order.
    notes: Vec<String>,
}

impl<'a, D: HelmDriver> HelmRun<'a, D> {
    /// A run of `job` on `driver` with these settings, stopped early by `cancel`.
    pub(crate) fn new(
        driver: &'a D,
        job: &'a JobEvent,
        settings: &Settings,
        cancel: &'a CancellationToken,
    ) -> Self {
        HelmRun {
            driver,
            job,
            identity: Identity::for_job(job, settings.default_service_account.as_deref()),
            owner: Owner::of(job),
            timeout: Duration::from_secs(job.timeout_seconds.max(1)),
            allow_shared_releases: settings.allow_shared_releases,
            cancel,
            notes: Vec::new(),
        }
    }

    /// Runs the job's Helm work with the lease `held`, knowing `prior` of the release.
    pub(crate) async fn execute(mut self, held: Held, prior: Prior) -> Result<Done, DriverError> {
        let install = match (self.job.action, prior) {
            (JobAction::Delete, Prior::Ours) => return self.delete(false).await,
            (JobAction::Apply, Prior::Ours) => false,
            (JobAction::Apply, Prior::Unrecorded) => true,
            _ => return self.checked(held).await,
        };
        match self.deploy(held.lease_revision, install).await {
            Err(error)
                if matches!(
                    error.cause(),
                    Some(Cause::AnotherOperation | Cause::NameInUse)
                ) =>
            {
                info!(%error, "helm refused; reading the release first");
                self.checked(held).await
            }
            done => done,
        }
    }

    /// The job's Helm work after reading the release: its owner, then recovery when it is
    /// pending.
    async fn checked(mut self, held: Held) -> Result<Done, DriverError> {
        // Whose release it is comes before any Helm action, recovery included.
        let current = self.driver.status(self.target(), self.cancel).await?;
        if let Some(current) = &current {
            self.check_owner(current).await?;
        }
        match self.job.action {
            JobAction::Apply => {
                if let Some(current) = current.filter(|c| is_pending(&c.status)) {
                    self.recover_pending(current, held).await?;
                }
                self.deploy(held.lease_revision, false).await
            }
            JobAction::Delete => self.delete(current.is_none()).await,
        }
    }

    /// The release the job acts on, with the job's rights.
    fn target(&self) -> Target<'_> {
        Target {
            release: &self.job.config.release_name,
            namespace: &self.job.config.release_namespace,
            identity: &self.identity,
        }
    }

    /// Refuses a release another Component owns (unless `--allow-shared-releases`); adopts one
    /// without owner labels when the job allows it.
    async fn check_owner(&mut self, current: &Release) -> Result<(), DriverError> {
        let target = self.target();
        let labels = self
            .driver
            .labels(target, current.revision, self.cancel)
            .await?;
        match ownership::judge(
            &target.describe(),
            &labels,
            &self.owner,
            self.job.config.adopt,
        ) {
            Ok(Ownership::Ours) => {}
            Ok(Ownership::Adopted) => {
                info!(release = %target.describe(), "adopting a release without owner labels");
                let note = format!("release {} adopted", self.job.config.release_name);
                self.notes.push(note);
            }
            Err(refused) if self.allow_shared_releases => {
                info!(%refused, "acting anyway: --allow-shared-releases");
            }
            Err(refused) => return Err(refused.into()),
        }
        Ok(())
    }

    /// A pending release: recovered (rolled back or uninstalled) once stale; an error while a
    /// run may still be writing it, or when a newer lease holder wrote it (the fence).
    async fn recover_pending(&mut self, current: Release, held: Held) -> Result<(), DriverError> {
        let target = self.target();
        let name = &self.job.config.release_name;
        let history = self.driver.history(target, self.cancel).await?;
        match judge_pending(
            &history,
            jiff::Timestamp::now(),
            held.stale_after,
            held.lease_revision,
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
                    stale_in: age.map(|age| held.stale_after.saturating_sub(age)),
                });
            }
            Pending::Fenced(stamp) => {
                return Err(DriverError::Fenced {
                    release: name.clone(),
                    status: current.status,
                    stamp,
                    held: held.lease_revision,
                });
            }
        }
        if let Some(plan) = recovery_plan(&current.status, &history) {
            warn!(release = %name, from = %current.status, "recovering a stuck release");
            match &plan {
                Recovery::Rollback { revision, .. } => {
                    self.driver
                        .rollback(target, *revision, self.timeout, self.cancel)
                        .await?;
                }
                Recovery::Uninstall { .. } => {
                    self.driver
                        .uninstall(target, self.timeout, self.cancel)
                        .await?;
                }
            }
            self.notes.push(plan.describe(name));
        }
        Ok(())
    }

    /// Deploys the release (`helm install` when `install`, else `helm upgrade --install`, then
    /// `helm test` when the config asks): a try that fails after Helm wrote its revision is
    /// tried again or remediated as `config.remediation` says; any other failure stands.
    async fn deploy(&mut self, lease_revision: u64, install: bool) -> Result<Done, DriverError> {
        let since = jiff::Timestamp::now();
        let mut install = install;
        let mut tries = 0;
        loop {
            tries += 1;
            let (error, tested) = match self.try_deploy(lease_revision, install).await {
                Ok(done) => return Ok(done),
                Err(failed) => failed,
            };
            let Some(failed) = self.failed_deploy(&error, tested, since).await else {
                return Err(error);
            };
            match remedy(&self.job.config.remediation, failed, tries) {
                Remedy::Untouched => return Err(error),
                Remedy::Retry => {
                    warn!(%error, tries, "deploy failed; trying again (config.remediation)");
                    self.notes
                        .push(format!("{} failed and was tried again", failed.deploy()));
                    // The release exists now: only `helm upgrade --install` can go on with it.
                    install = false;
                }
                Remedy::Then(strategy) => {
                    return Err(self.remediate(strategy, failed, error, tries).await);
                }
            }
        }
    }

    /// One try: apply, then test when the config asks. A failure comes with the revision whose
    /// tests failed (`None`: the apply failed).
    async fn try_deploy(
        &self,
        lease_revision: u64,
        install: bool,
    ) -> Result<Done, (DriverError, Option<i64>)> {
        let done = self
            .apply(lease_revision, install)
            .await
            .map_err(|e| (e, None))?;
        let test = &self.job.config.test;
        // An apply that changed nothing (no revision) was tested when it was deployed.
        if !test.enable || done.release.revision.is_none() {
            return Ok(done);
        }
        let revision = done.release.revision;
        let timeout = test.timeout().unwrap_or(self.timeout);
        self.driver
            .test(self.target(), timeout, self.cancel)
            .await
            .map_err(|e| (e, revision))?;
        Ok(Done {
            message: format!("{}; tests passed", done.message),
            ..done
        })
    }

    /// What a failed try left, from the release's history, when remediation may act on it:
    /// never without `config.remediation`, for a cancelled run, or for Helm's refusals before
    /// it writes anything.
    async fn failed_deploy(
        &self,
        error: &DriverError,
        tested: Option<i64>,
        since: jiff::Timestamp,
    ) -> Option<FailedDeploy> {
        let refused = matches!(
            error.cause(),
            Some(Cause::AnotherOperation | Cause::NameInUse)
        );
        if self.job.config.remediation.is_default()
            || refused
            || matches!(error, DriverError::Cancelled { .. })
        {
            return None;
        }
        match self.driver.history(self.target(), self.cancel).await {
            Ok(history) => judge_failure(&history, tested, since),
            Err(e) => {
                warn!(error = %e, "cannot read the release's history; not remediating");
                None
            }
        }
    }

    /// Runs the strategy after the last failed try, and says what was done in the error the
    /// job ends with.
    async fn remediate(
        &self,
        strategy: Strategy,
        failed: FailedDeploy,
        last: DriverError,
        tries: u32,
    ) -> DriverError {
        let target = self.target();
        warn!(error = %last, ?strategy, "deploy failed; remediating (config.remediation)");
        let (done, class) = match strategy {
            Strategy::Keep => (
                format!("kept at revision {}", failed.revision),
                Failure::Permanent,
            ),
            Strategy::Uninstall => match self
                .driver
                .uninstall(target, self.timeout, self.cancel)
                .await
            {
                Ok(_) => ("uninstalled".to_owned(), Failure::Permanent),
                Err(e) => (format!("uninstall failed: {e}"), e.failure()),
            },
            Strategy::Rollback(revision) => match self
                .driver
                .rollback(target, revision, self.timeout, self.cancel)
                .await
            {
                Ok(()) => (
                    format!("rolled back to revision {revision}"),
                    Failure::Permanent,
                ),
                Err(e) => (
                    format!("rollback to revision {revision} failed: {e}"),
                    e.failure(),
                ),
            },
        };
        DriverError::Remediated {
            deploy: failed.deploy(),
            tries,
            last: Box::new(last),
            done,
            uninstalled: strategy == Strategy::Uninstall && class == Failure::Permanent,
            class,
        }
    }

    /// Installs (`helm install` when `install`) or upgrades the release with the effective
    /// values (`valuesFrom` read now, as the tenant); reports `Ready` without running Helm when
    /// they and the config are what the Component's status says is deployed.
    async fn apply(&self, lease_revision: u64, install: bool) -> Result<Done, DriverError> {
        let job = self.job;
        // The tenant is the subject's namespace (checked on admission to equal the
        // payload's Component namespace), never the release namespace a publisher picks.
        let own_namespace = &job.component.namespace;
        let values = resolve(
            self.driver,
            &job.config,
            own_namespace,
            &self.identity,
            self.cancel,
        )
        .await?;
        let digests = Digests::of(&job.config, &values);
        let deployed = Deployed {
            values_digest: digests.values.clone(),
            config_digest: digests.config.clone(),
        };
        if values::unchanged(job.deployed.as_ref(), &digests) {
            if job.drift_check && job.config.drift.enabled() {
                return self.check_drift(deployed).await;
            }
            return Ok(self.unchanged(deployed));
        }
        let config = HelmConfig {
            values,
            values_from: Vec::new(),
            ..job.config.clone()
        };
        let apply = Apply {
            config: &config,
            timeout: self.timeout,
            own_namespace,
            lease_revision,
            identity: &self.identity,
            owner: &self.owner,
            install,
        };
        let release = self.driver.apply(apply, self.cancel).await?;
        let deployed_text = format!(
            "release {} revision {} is {} (chart {} {})",
            config.release_name,
            release.revision,
            release.status,
            config.chart_name(),
            release
                .chart_version
                .as_deref()
                .unwrap_or(config.chart_version())
        );
        // Not kept in the notes: a later try's would follow it.
        let mut message = self.notes.clone();
        message.push(deployed_text);
        Ok(Done {
            phase: StatusPhase::Ready,
            outcome: Outcome::Ready,
            message: message.join("; "),
            release: ReleaseInfo {
                name: config.release_name,
                namespace: config.release_namespace,
                revision: Some(release.revision),
                chart_version: release.chart_version,
                helm_status: Some(release.status.to_string()),
                deployed: Some(deployed),
                drift: None,
            },
        })
    }

    /// A drift check of a release whose values and config are unchanged: its objects compared
    /// with its manifest ([`drift::detect`]), and in `correct` mode the drifted ones applied
    /// again. `Ready` either way; the report says what was found and done.
    async fn check_drift(&self, deployed: Deployed) -> Result<Done, DriverError> {
        let config = &self.job.config;
        let name = &config.release_name;
        let states = match self.driver.drift_states(self.target(), self.cancel).await {
            Ok(states) => states,
            Err(e @ DriverError::Cancelled { .. }) => return Err(e),
            Err(e) => {
                let report = DriftReport {
                    failed: true,
                    ..DriftReport::default()
                };
                let text = format!("drift check of release {name} failed: {e}");
                return Ok(self.checked_drift(deployed, report, text));
            }
        };
        let findings = drift::detect(&states, &config.drift.ignore);
        let correct = config.drift.mode == DriftMode::Correct && !findings.is_empty();
        let mut failure = None;
        if correct {
            let objects: Vec<Value> = findings
                .iter()
                .map(|f| drift::correction(&states, f, &config.drift.ignore))
                .collect();
            match self
                .driver
                .reapply(self.target(), &objects, self.cancel)
                .await
            {
                Ok(()) => {}
                Err(e @ DriverError::Cancelled { .. }) => return Err(e),
                Err(e) => failure = Some(e),
            }
        }
        let mut report = drift::report(states.len(), &findings, correct && failure.is_none());
        report.failed = failure.is_some();
        let text = match (&failure, findings.is_empty(), report.corrected) {
            (_, true, _) => format!(
                "no drift: the {} objects of release {name} match its manifest",
                states.len()
            ),
            (Some(e), ..) => format!(
                "drift detected in release {name}: {}; putting it back failed: {e}",
                report.describe()
            ),
            (None, false, true) => {
                format!("drift corrected in release {name}: {}", report.describe())
            }
            (None, false, false) => {
                format!("drift detected in release {name}: {}", report.describe())
            }
        };
        Ok(self.checked_drift(deployed, report, text))
    }

    /// `Ready` with what a drift check found and did: the release record stays as it is.
    fn checked_drift(&self, deployed: Deployed, report: DriftReport, text: String) -> Done {
        info!(
            drifted = report.drifted,
            corrected = report.corrected,
            failed = report.failed,
            "drift check"
        );
        let mut message = self.notes.clone();
        message.push(text);
        let mut done = self.unchanged(deployed);
        done.message = message.join("; ");
        done.release.drift = Some(report);
        done
    }

    /// `Ready` for an apply that would change nothing: the release record stays as it is.
    fn unchanged(&self, deployed: Deployed) -> Done {
        let config = &self.job.config;
        let mut message = self.notes.clone();
        message.push(format!(
            "values ({}) and config unchanged since the last deploy of release {}: helm not run",
            short(&deployed.values_digest),
            config.release_name
        ));
        Done {
            phase: StatusPhase::Ready,
            outcome: Outcome::Ready,
            message: message.join("; "),
            release: ReleaseInfo {
                name: config.release_name.clone(),
                namespace: config.release_namespace.clone(),
                revision: None,
                chart_version: None,
                helm_status: None,
                deployed: Some(deployed),
                drift: None,
            },
        }
    }

    /// Uninstalls the release (unless `gone` already), then its namespace when helmq manages
    /// it and created it for this Component.
    async fn delete(mut self, gone: bool) -> Result<Done, DriverError> {
        let job = self.job;
        let config = &job.config;
        let (name, namespace) = (&config.release_name, &config.release_namespace);
        let uninstalled = if gone {
            Uninstalled::NotFound
        } else {
            self.driver
                .uninstall(self.target(), self.timeout, self.cancel)
                .await?
        };
        self.notes.push(match uninstalled {
            Uninstalled::Removed => format!("release {name} uninstalled"),
            Uninstalled::NotFound => format!("release {name} was already gone"),
        });
        if config.manage_namespace {
            let note = if *namespace == job.component.namespace {
                format!(
                    "namespace {namespace} was not deleted: it is the Component's own namespace"
                )
            } else {
                match self
                    .driver
                    .delete_namespace(namespace, &self.identity, &self.owner, self.cancel)
                    .await?
                {
                    NamespaceDeletion::Deleted => format!("namespace {namespace} deleted"),
                    NamespaceDeletion::NotOwned => format!(
                        "namespace {namespace} was not deleted: helmq did not create it for this Component"
                    ),
                    NamespaceDeletion::Skipped(why) => why,
                }
            };
            self.notes.push(note);
        }
        Ok(Done {
            phase: StatusPhase::Terminated,
            outcome: Outcome::Terminated,
            message: self.notes.join("; "),
            release: ReleaseInfo {
                name: name.clone(),
                namespace: namespace.clone(),
                revision: None,
                chart_version: None,
                helm_status: Some("uninstalled".into()),
                deployed: None,
                drift: None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(uid: &str) -> Owner {
        Owner {
            namespace: "team".into(),
            name: "web".into(),
            uid: uid.into(),
        }
    }

    #[test]
    fn only_a_first_run_on_a_release_recorded_as_ours_or_unrecorded_skips_reading_it() {
        let ours = owner("u-1");
        let theirs = owner("u-2");
        // The record as read (`Err`: unreadable), the run number, the judgement.
        type Case<'a> = (Result<Option<&'a Owner>, ()>, u32, Prior);
        let cases: [Case; 7] = [
            (Ok(Some(&ours)), 1, Prior::Ours),
            (Ok(None), 1, Prior::Unrecorded),
            (Ok(Some(&theirs)), 1, Prior::Unsure),
            (Err(()), 1, Prior::Unsure),
            // An earlier run of the job may have been cut short: read the release first.
            (Ok(Some(&ours)), 2, Prior::Unsure),
            (Ok(None), 2, Prior::Unsure),
            (Ok(Some(&theirs)), 3, Prior::Unsure),
        ];
        for (record, run, want) in cases {
            assert_eq!(
                Prior::judge(record, &ours, run),
                want,
                "{record:?} run {run}"
            );
        }
    }
}

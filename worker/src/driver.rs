//! The [`HelmDriver`] seam: what a worker needs from Helm (apply, uninstall, learn a release's
//! state, roll back, delete a namespace), its errors and their classification, Helm's release
//! statuses, the stuck-release recovery plan, and two implementations: [`HelmCli`] (the `helm`
//! executable) and `MemoryDriver` (in memory, for tests of the pipeline; built only for this
//! crate's tests and with the `testing` feature, so release binaries do not contain it), which
//! both count the Helm processes they run or stand for in [`HelmProcesses`].

pub mod helm_cli;
#[cfg(any(test, feature = "testing"))]
pub mod memory;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use helmq_schemas::HelmConfig;
use helmq_schemas::config::ValuesKind;
use helmq_schemas::event::RECOVERED_PREFIX;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

pub use helm_cli::{CredentialsError, HelmCli, HelmCliSettings, OutputError};
#[cfg(any(test, feature = "testing"))]
pub use memory::MemoryDriver;

use crate::drift::ObjectState;
use crate::failure::{Answer, Cause, HelmFailure};
use crate::ownership::{Identity, Owner, OwnershipError};
use crate::policy::Failure;

/// Why a driver call did not succeed. An error built on another keeps it as its
/// [`source`](std::error::Error::source) and also says it in its own text, which is what
/// status messages and logs show. (Not `Clone` or `PartialEq`: the causes it keeps are neither.)
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// Helm ran and failed.
    #[error("helm {command} failed: {failure}")]
    Helm {
        /// The subcommand (`upgrade`, `uninstall`, ...).
        command: String,
        /// Its exit code (`None` when killed by a signal).
        exit_code: Option<i32>,
        /// What its stderr says: class, cause and readable text (never holds values: they are
        /// passed in a file). Boxed: it is large, and errors travel in every `Result`.
        failure: Box<HelmFailure>,
    },
    /// kubectl ran and failed.
    #[error("cannot {action}: {failure}")]
    Kubectl {
        /// What kubectl was asked to do.
        action: KubectlAction,
        /// kubectl's exit code (`None` when killed by a signal).
        exit_code: Option<i32>,
        /// What its stderr says, read with kubectl's own table (its errors never hold a
        /// Secret's data).
        failure: Box<HelmFailure>,
    },
    /// The command ran longer than its own timeout and was killed.
    #[error("{tool} {command} did not finish within {limit:?} and was killed")]
    TimedOut {
        /// The executable.
        tool: Tool,
        /// The subcommand.
        command: String,
        /// The limit.
        limit: Duration,
    },
    /// The run was cancelled (newer generation, lost lease or shutdown); the process was killed.
    #[error("{tool} {command} was cancelled")]
    Cancelled {
        /// The executable.
        tool: Tool,
        /// The subcommand.
        command: String,
    },
    /// The executable could not be started or its output could not be read.
    #[error("cannot run {program}: {source}{}", purpose(.needed_to.as_ref()))]
    Spawn {
        /// The program.
        program: String,
        /// What kubectl was needed for, when the program is kubectl.
        needed_to: Option<KubectlAction>,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Helm's output was not what `-o json` promises.
    #[error("cannot read the output of helm {command}: {reason}")]
    Output {
        /// The subcommand.
        command: String,
        /// What is wrong with it.
        #[source]
        reason: OutputError,
    },
    /// Local files (values file, chart cache) could not be written or read.
    #[error("{what}: {source}")]
    Local {
        /// What was being done, e.g. `cannot create the values file`.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// An OCI registry login cannot be attempted: kubectl is disabled, or the Secret lacks
    /// usable credentials. Never holds a credential.
    #[error("cannot log in to registry {registry} with secret {secret}: {reason}")]
    RegistryCredentials {
        /// The registry host (`host[:port]`).
        registry: String,
        /// `namespace/name` of the Secret.
        secret: String,
        /// What is missing or wrong.
        #[source]
        reason: CredentialsError,
    },
    /// The release is `pending-*` and its record was written under a lease revision not older
    /// than the one this run holds: never undone by an older holder.
    #[error(
        "release {release} is {status}, written under release lease revision {stamp}, not older than this run's ({held}): not recovering it"
    )]
    Fenced {
        /// The release.
        release: String,
        /// Its pending status.
        status: HelmStatus,
        /// The lease revision stamped on its newest record.
        stamp: u64,
        /// The lease revision this run holds.
        held: u64,
    },
    /// The release is `pending-*` and its record is too recent to prove that no one is still
    /// working on it: reported and retried, never rolled back under a live operation.
    #[error(
        "release {release} is {status}, last written {age}: another operation may still be running; not recovering it yet"
    )]
    StillPending {
        /// The release.
        release: String,
        /// Its pending status.
        status: HelmStatus,
        /// How long ago its newest record was written, as text (`at an unknown time` when Helm
        /// did not say).
        age: String,
        /// When the record will be old enough to recover, when its age is known: the retry
        /// waits that long instead of spending attempts that cannot succeed before.
        stale_in: Option<Duration>,
    },
    /// The release belongs to another owner, has none, or its owner cannot be read: no Helm
    /// action runs.
    #[error(transparent)]
    Ownership(#[from] OwnershipError),
    /// A `valuesFrom` source is missing or cannot be used (never with its data).
    #[error(transparent)]
    Values(crate::values::ValuesError),
    /// An install or upgrade failed after Helm wrote its revision, and `config.remediation`
    /// dealt with it: tried again as often as it allows, then kept, uninstalled or rolled back
    /// (the `remediation` module).
    #[error("{deploy} failed{}: {}; {done}", times(*tries), helm_words(last))]
    Remediated {
        /// What failed.
        deploy: Deploy,
        /// How many times it was tried in the run.
        tries: u32,
        /// The last failure.
        #[source]
        last: Box<DriverError>,
        /// What was done after it, e.g. `rolled back to revision 3`.
        done: String,
        /// Whether the release was uninstalled.
        uninstalled: bool,
        /// Whether retrying the job can help: permanent once the strategy ran (retries are
        /// `config.remediation`'s to give), the strategy's own failure's class when it failed.
        class: Failure,
    },
}

/// What failed, for messages: an install (no revision was deployed before) or an upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deploy {
    /// A release that never had a deployed revision.
    Install,
    /// A release that had one.
    Upgrade,
}

impl fmt::Display for Deploy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Deploy::Install => "install",
            Deploy::Upgrade => "upgrade",
        })
    }
}

/// ` N times` after more than one try, or nothing.
fn times(tries: u32) -> String {
    if tries > 1 {
        format!(" {tries} times")
    } else {
        String::new()
    }
}

/// What a failure says, in Helm's own words when Helm said it (`helm test: ` before a test's).
fn helm_words(error: &DriverError) -> String {
    match error {
        DriverError::Helm {
            command, failure, ..
        } if command == "test" => format!("helm test: {failure}"),
        DriverError::Helm { failure, .. } => failure.text.clone(),
        other => other.to_string(),
    }
}

/// ` (needed to <action>)`, or nothing.
fn purpose(action: Option<&KubectlAction>) -> String {
    action.map_or_else(String::new, |action| format!(" (needed to {action})"))
}

impl DriverError {
    /// The shortest wait before a retry can succeed, when the error knows it.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            DriverError::StillPending { stale_in, .. } => *stale_in,
            _ => None,
        }
    }

    /// The common failure helm or kubectl reported, if it is one (what the status message
    /// advises on).
    pub fn cause(&self) -> Option<&Cause> {
        match self {
            DriverError::Helm { failure, .. } | DriverError::Kubectl { failure, .. } => {
                failure.cause.as_ref()
            }
            DriverError::Remediated { last, .. } => last.cause(),
            _ => None,
        }
    }

    /// What helm or kubectl said of the object it was about, if it said one of the
    /// [`Answer`]s (never that of a run a remediation made).
    pub fn answer(&self) -> Option<Answer> {
        match self {
            DriverError::Helm { failure, .. } | DriverError::Kubectl { failure, .. } => {
                failure.answer
            }
            _ => None,
        }
    }

    /// Whether the run uninstalled the release (a remediation's `uninstall`).
    pub fn uninstalled(&self) -> bool {
        matches!(
            self,
            DriverError::Remediated {
                uninstalled: true,
                ..
            }
        )
    }

    /// A [`DriverError::Local`]: `what` failed because of `source`.
    pub fn local(what: impl Into<String>, source: std::io::Error) -> DriverError {
        DriverError::Local {
            what: what.into(),
            source,
        }
    }

    /// Whether retrying can help. Helm's and kubectl's failures have the class read from their
    /// stderr where they ran.
    pub fn failure(&self) -> Failure {
        match self {
            DriverError::Helm { failure, .. } | DriverError::Kubectl { failure, .. } => {
                failure.class
            }
            DriverError::RegistryCredentials { .. }
            | DriverError::Ownership(_)
            | DriverError::Values(_) => Failure::Permanent,
            DriverError::Remediated { class, .. } => *class,
            DriverError::TimedOut { .. }
            | DriverError::StillPending { .. }
            | DriverError::Fenced { .. }
            | DriverError::Cancelled { .. }
            | DriverError::Spawn { .. }
            | DriverError::Output { .. }
            | DriverError::Local { .. } => Failure::Transient,
        }
    }
}

/// The executable a driver runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `helm`.
    Helm,
    /// `kubectl`.
    Kubectl,
}

impl fmt::Display for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tool::Helm => "helm",
            Tool::Kubectl => "kubectl",
        })
    }
}

/// What a driver asks kubectl to do; its text completes `cannot …` and `needed to …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubectlAction {
    /// `kubectl get secret` of an OCI registry login.
    ReadSecret {
        /// `namespace/name` of the Secret.
        secret: String,
    },
    /// `kubectl get secret` of a release record, for its owner and lease stamp.
    ReadReleaseRecord {
        /// `namespace/name` of the release.
        release: String,
        /// The revision.
        revision: i64,
    },
    /// `kubectl create` of a namespace helmq manages, with its owner labels.
    CreateNamespace {
        /// The namespace.
        namespace: String,
    },
    /// `kubectl get namespace` of a namespace helmq manages, for its owner labels.
    ReadNamespace {
        /// The namespace.
        namespace: String,
    },
    /// `kubectl delete namespace` of a namespace helmq manages.
    DeleteNamespace {
        /// The namespace.
        namespace: String,
    },
    /// `kubectl get configmap|secret` of a `valuesFrom` source.
    ReadValues {
        /// `Kind namespace/name`.
        source: String,
    },
    /// `kubectl apply --dry-run=server` and `kubectl get` of a release's objects (a drift check).
    CompareObjects {
        /// `namespace/name` of the release.
        release: String,
    },
    /// `kubectl apply --server-side` of a release's drifted objects (a drift correction).
    CorrectObjects {
        /// `namespace/name` of the release.
        release: String,
    },
}

impl fmt::Display for KubectlAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KubectlAction::ReadSecret { secret } => write!(f, "read registry secret {secret}"),
            KubectlAction::ReadReleaseRecord { release, revision } => {
                write!(f, "read revision {revision} of release {release}")
            }
            KubectlAction::CreateNamespace { namespace } => {
                write!(f, "create namespace {namespace}")
            }
            KubectlAction::ReadNamespace { namespace } => {
                write!(f, "read namespace {namespace}")
            }
            KubectlAction::DeleteNamespace { namespace } => {
                write!(f, "delete namespace {namespace}")
            }
            KubectlAction::ReadValues { source } => write!(f, "read values from {source}"),
            KubectlAction::CompareObjects { release } => {
                write!(
                    f,
                    "compare the objects of release {release} with its manifest"
                )
            }
            KubectlAction::CorrectObjects { release } => {
                write!(f, "apply the drifted objects of release {release} again")
            }
        }
    }
}

/// A release's status as Helm names it, read once where Helm's output is parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(from = "String")]
pub enum HelmStatus {
    /// `deployed`.
    Deployed,
    /// `superseded`: an older revision that was deployed.
    Superseded,
    /// `failed`.
    Failed,
    /// `uninstalling`.
    Uninstalling,
    /// `uninstalled` (kept with `--keep-history`).
    Uninstalled,
    /// `pending-install`.
    PendingInstall,
    /// `pending-upgrade`.
    PendingUpgrade,
    /// `pending-rollback`.
    PendingRollback,
    /// Any other text, as Helm wrote it (Helm's own `unknown`, or a status a newer Helm adds).
    /// Parsing never puts a known status here.
    Unknown(String),
}

impl HelmStatus {
    /// Helm's text for the status, exactly as on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            HelmStatus::Deployed => "deployed",
            HelmStatus::Superseded => "superseded",
            HelmStatus::Failed => "failed",
            HelmStatus::Uninstalling => "uninstalling",
            HelmStatus::Uninstalled => "uninstalled",
            HelmStatus::PendingInstall => "pending-install",
            HelmStatus::PendingUpgrade => "pending-upgrade",
            HelmStatus::PendingRollback => "pending-rollback",
            HelmStatus::Unknown(text) => text,
        }
    }

    /// The known status named `text`.
    fn known(text: &str) -> Option<HelmStatus> {
        Some(match text {
            "deployed" => HelmStatus::Deployed,
            "superseded" => HelmStatus::Superseded,
            "failed" => HelmStatus::Failed,
            "uninstalling" => HelmStatus::Uninstalling,
            "uninstalled" => HelmStatus::Uninstalled,
            "pending-install" => HelmStatus::PendingInstall,
            "pending-upgrade" => HelmStatus::PendingUpgrade,
            "pending-rollback" => HelmStatus::PendingRollback,
            _ => return None,
        })
    }
}

impl From<&str> for HelmStatus {
    fn from(text: &str) -> Self {
        HelmStatus::known(text).unwrap_or_else(|| HelmStatus::Unknown(text.to_owned()))
    }
}

impl From<String> for HelmStatus {
    fn from(text: String) -> Self {
        HelmStatus::known(&text).unwrap_or(HelmStatus::Unknown(text))
    }
}

impl fmt::Display for HelmStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A release after a successful apply (or as `helm status` reports it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// Revision.
    pub revision: i64,
    /// Helm status.
    pub status: HelmStatus,
    /// Chart version.
    pub chart_version: Option<String>,
}

/// One line of `helm history -o json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Revision {
    /// Revision number.
    pub revision: i64,
    /// Helm status of that revision.
    pub status: HelmStatus,
    /// `name-version` of the chart.
    #[serde(default)]
    pub chart: String,
    /// What Helm did.
    #[serde(default)]
    pub description: String,
    /// When the revision was last written (`None` when Helm's text cannot be read).
    #[serde(default, deserialize_with = "lenient_time")]
    pub updated: Option<jiff::Timestamp>,
    /// The release lease revision the run that wrote it held ([`LEASE_LABEL`] on its storage
    /// object; not in `helm history`): read for the newest revision when it is pending, `None`
    /// when unknown (written before helmq stamped releases, or unreadable).
    #[serde(skip)]
    pub lease_revision: Option<u64>,
}

/// The label on a release record (Helm's `--labels`, kept on its storage object) that holds the
/// release lease revision of the run that wrote it: the fence recovery checks.
pub const LEASE_LABEL: &str = "helmq.io/lease-revision";

/// Helm's `updated` (Go's RFC 3339 with nanoseconds); anything unreadable counts as unknown
/// rather than failing the whole history.
fn lenient_time<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<jiff::Timestamp>, D::Error> {
    let text = Option::<String>::deserialize(deserializer)?;
    Ok(text.and_then(|t| t.parse().ok()))
}

/// What an uninstall found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uninstalled {
    /// The release existed and was removed.
    Removed,
    /// There was no such release (success).
    NotFound,
}

/// What deleting a managed namespace did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceDeletion {
    /// Deletion requested.
    Deleted,
    /// Not deleted: helmq did not create it for this owner (it existed before, or another
    /// Component's job created it).
    NotOwned,
    /// Not done, with the reason for the status message (e.g. no `kubectl` on this worker).
    Skipped(String),
}

/// An apply request: everything `helm upgrade --install` needs.
#[derive(Debug, Clone, Copy)]
pub struct Apply<'a> {
    /// The normalized config (values included; a driver never logs them).
    pub config: &'a HelmConfig,
    /// `--timeout` of the run.
    pub timeout: Duration,
    /// The namespace whose Secrets the job may use for a registry login without an operator
    /// allowlist: the tenant's, i.e. the namespace of the job's subject and Component (for an
    /// orchestrator job too), never the release namespace.
    pub own_namespace: &'a str,
    /// The release lease revision the run holds, stamped on the release ([`LEASE_LABEL`]).
    pub lease_revision: u64,
    /// Whose rights every Kubernetes call of the apply uses.
    pub identity: &'a Identity,
    /// The owner stamped on the release and on a namespace the apply creates.
    pub owner: &'a Owner,
    /// `helm install`, which fails with [`Cause::NameInUse`]
    /// when the release exists, instead of `helm upgrade --install`: for a release helmq has
    /// no record of, whose owner is not yet checked.
    pub install: bool,
}

/// Helm processes started, by subcommand (`install`, `upgrade`, `status`, `pull`, ...): what
/// [`HelmCli`] runs, and what the in-memory driver's calls stand for: both drivers hold one and
/// register it in [`HelmDriver::register_metrics`]. Clones share their counts.
#[derive(Debug, Clone, Default)]
pub struct HelmProcesses(Family<Vec<(&'static str, String)>, Counter>);

impl HelmProcesses {
    /// Counts one helm process of `subcommand`.
    pub fn count(&self, subcommand: &str) {
        self.0
            .get_or_create(&vec![("subcommand", subcommand.to_owned())])
            .inc();
    }

    /// Registers the counts as `helm_processes` in `registry` (the worker's
    /// `helmq_worker_` sub-registry).
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "helm_processes",
            "Helm processes started, by subcommand",
            self.0.clone(),
        );
    }
}

/// A Helm release by namespace and name: the key under which releases are kept (by the fake
/// driver), so a namespace and a release name can never be swapped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReleaseRef {
    /// Its namespace.
    pub namespace: String,
    /// The release name.
    pub release: String,
}

impl ReleaseRef {
    /// Release `release` in `namespace`.
    pub fn new(namespace: &str, release: &str) -> ReleaseRef {
        ReleaseRef {
            namespace: namespace.to_owned(),
            release: release.to_owned(),
        }
    }
}

impl std::fmt::Display for ReleaseRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.release)
    }
}

/// The release a call acts on, and whose rights the call uses.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The release name.
    pub release: &'a str,
    /// Its namespace.
    pub namespace: &'a str,
    /// Whose rights the call uses.
    pub identity: &'a Identity,
}

impl Target<'_> {
    /// The release it names.
    pub fn release_ref(&self) -> ReleaseRef {
        ReleaseRef::new(self.namespace, self.release)
    }

    /// `namespace/release`, for messages.
    pub fn describe(&self) -> String {
        self.release_ref().to_string()
    }
}

/// The Helm operations a worker needs. Every call takes a cancellation token: cancelling it
/// must stop the operation (and kill any process it started) promptly. Every Kubernetes call
/// runs with the rights of the [`Identity`] it is given.
pub trait HelmDriver: Send + Sync + 'static {
    /// How long an operation may go on after its cancellation token is cancelled (for `helm`:
    /// `--helm-grace`, between SIGTERM and SIGKILL). Lease deadlines leave room for it.
    fn grace(&self) -> Duration;

    /// Registers the driver's own metrics (for [`HelmCli`]: `helm_processes`) in the worker's
    /// registry (prefix `helmq_worker`); none by default.
    fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}

    /// `helm upgrade --install` (or `helm install`, see [`Apply::install`]) and wait for
    /// readiness, the release labelled with its owner and the lease revision; a managed
    /// namespace is created with its owner's labels.
    fn apply(
        &self,
        request: Apply<'_>,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<Release, DriverError>> + Send;

    /// `helm uninstall` and wait for the resources to go; a missing release is success.
    fn uninstall(
        &self,
        target: Target<'_>,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<Uninstalled, DriverError>> + Send;

    /// `helm status`; `None` when there is no such release.
    fn status(
        &self,
        target: Target<'_>,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<Option<Release>, DriverError>> + Send;

    /// The labels of `revision`'s record (Helm's own and those of `--labels`).
    ///
    /// # Errors
    ///
    /// [`DriverError::Ownership`] when they cannot be read at all on this worker.
    fn labels(
        &self,
        target: Target<'_>,
        revision: i64,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<BTreeMap<String, String>, DriverError>> + Send;

    /// `helm history` (newest 20 revisions); empty when there is no such release.
    fn history(
        &self,
        target: Target<'_>,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<Vec<Revision>, DriverError>> + Send;

    /// `helm test`: runs the test hooks of the release's newest revision and waits for them up
    /// to `timeout`.
    ///
    /// # Errors
    ///
    /// A test that ran and failed (or did not finish in time) is a [`DriverError::Helm`] whose
    /// failure is permanent, with the cause [`Cause::TestFailed`] and Helm's own words; a
    /// failure to run the tests at all is classified as any other.
    fn test(
        &self,
        target: Target<'_>,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// `helm rollback` to `revision`.
    fn rollback(
        &self,
        target: Target<'_>,
        revision: i64,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// The data of the ConfigMap or Secret `name` in `namespace` (a Secret's decoded), read with
    /// the rights of `identity`; `None` when there is no such object.
    fn values_source(
        &self,
        kind: ValuesKind,
        name: &str,
        namespace: &str,
        identity: &Identity,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<crate::values::SourceData, DriverError>> + Send;

    /// The objects of the release's newest revision, each as Helm applies it, as applying it
    /// would make it (a server-side dry run as Helm's field manager) and as it is now, with
    /// the rights of the target's identity; empty for a release without objects.
    fn drift_states(
        &self,
        target: Target<'_>,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<Vec<ObjectState>, DriverError>> + Send;

    /// Applies `objects` (from [`crate::drift::correction`]) again, server-side as Helm's field
    /// manager, taking back fields another manager took.
    fn reapply(
        &self,
        target: Target<'_>,
        objects: &[serde_json::Value],
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// Deletes a managed namespace, only when its owner labels name `owner`.
    fn delete_namespace(
        &self,
        namespace: &str,
        identity: &Identity,
        owner: &Owner,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<NamespaceDeletion, DriverError>> + Send;
}

/// How to unlock a release a dead run left in a `pending-*` state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Roll back to the newest revision that was deployed.
    Rollback {
        /// The stuck state.
        from: HelmStatus,
        /// The revision to go back to.
        revision: i64,
    },
    /// Nothing was ever deployed: uninstall, and the job installs afresh.
    Uninstall {
        /// The stuck state.
        from: HelmStatus,
    },
}

impl Recovery {
    /// The sentence for the status message.
    pub fn describe(&self, release: &str) -> String {
        match self {
            Recovery::Rollback { from, revision } => {
                format!(
                    "{RECOVERED_PREFIX}{release} from {from} by rolling back to revision {revision}"
                )
            }
            Recovery::Uninstall { from } => format!(
                "{RECOVERED_PREFIX}{release} from {from} by uninstalling it (no revision was ever deployed)"
            ),
        }
    }
}

/// Whether a Helm status is one a crashed run leaves behind.
pub fn is_pending(status: &HelmStatus) -> bool {
    matches!(
        status,
        HelmStatus::PendingInstall | HelmStatus::PendingUpgrade | HelmStatus::PendingRollback
    )
}

/// How long ago the newest revision in `history` was written, at `now`; `None` when unknown.
pub fn pending_age(history: &[Revision], now: jiff::Timestamp) -> Option<std::time::Duration> {
    let newest = history.iter().max_by_key(|r| r.revision)?;
    let updated = newest.updated?;
    now.duration_since(updated).try_into().ok()
}

/// What may be done with a release whose newest record is pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// Provably left behind by a dead run: recover it.
    Stale,
    /// Written too recently (or at an unknown time) to prove that no run is still on it.
    Recent(Option<std::time::Duration>),
    /// Stamped under a lease revision not older than the one held: a run under a newer lease
    /// wrote it, so it is not ours to undo.
    Fenced(u64),
}

/// Judges a pending release for the holder of lease revision `held`, at `now`: stale only when
/// its newest record is at least `stale_after` old (the lease TTL plus the run's grace: no run
/// under a live lease goes that long unrenewed) and was stamped under an older lease than
/// `held` (an unstamped record was written before helmq stamped releases: its age decides).
pub fn judge_pending(
    history: &[Revision],
    now: jiff::Timestamp,
    stale_after: std::time::Duration,
    held: u64,
) -> Pending {
    let age = pending_age(history, now);
    if age.is_none_or(|age| age < stale_after) {
        return Pending::Recent(age);
    }
    match history
        .iter()
        .max_by_key(|r| r.revision)
        .and_then(|r| r.lease_revision)
    {
        Some(stamp) if stamp >= held => Pending::Fenced(stamp),
        _ => Pending::Stale,
    }
}

/// The recovery of a release whose current status is `status`, from its history; `None` when
/// it is not stuck.
pub fn recovery_plan(status: &HelmStatus, history: &[Revision]) -> Option<Recovery> {
    if !is_pending(status) {
        return None;
    }
    let last_good = history
        .iter()
        .filter(|r| matches!(r.status, HelmStatus::Deployed | HelmStatus::Superseded))
        .map(|r| r.revision)
        .max();
    let from = status.clone();
    Some(match last_good {
        Some(revision) => Recovery::Rollback { from, revision },
        None => Recovery::Uninstall { from },
    })
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    fn rev(revision: i64, status: &str) -> Revision {
        Revision {
            revision,
            status: status.into(),
            chart: "web-1.0.0".into(),
            description: String::new(),
            updated: None,
            lease_revision: None,
        }
    }

    #[test]
    fn only_an_old_pending_record_stamped_under_an_older_lease_is_stale() {
        let now: jiff::Timestamp = "2026-11-29T12:00:00Z".parse().unwrap();
        let at = |text: &str| Some(text.parse::<jiff::Timestamp>().unwrap());
        let history = [
            Revision {
                updated: at("2026-11-29T11:00:00Z"),
                ..rev(1, "deployed")
            },
            Revision {
                updated: at("2026-11-29T11:59:50Z"),
                ..rev(2, "pending-upgrade")
            },
        ];
        let age = pending_age(&history, now);
        assert_eq!(age, Some(std::time::Duration::from_secs(10)));
        let secs = std::time::Duration::from_secs;
        // TTL 30 s + grace 10 s; this worker holds lease revision 100.
        let stale_after = secs(40);
        assert_eq!(
            judge_pending(&history, now, stale_after, 100),
            Pending::Recent(Some(secs(10))),
            "10 s old"
        );
        let stamped = |age: &str, stamp: Option<u64>| {
            let mut history = history.clone();
            history[1].updated = at(age);
            history[1].lease_revision = stamp;
            judge_pending(&history, now, stale_after, 100)
        };
        assert_eq!(
            stamped("2026-11-29T11:59:21Z", Some(7)),
            Pending::Recent(Some(secs(39)))
        );
        assert_eq!(
            stamped("2026-11-29T11:59:20Z", Some(7)),
            Pending::Stale,
            "40 s old, older lease"
        );
        assert_eq!(stamped("2026-11-29T11:00:00Z", Some(99)), Pending::Stale);
        assert_eq!(
            stamped("2026-11-29T11:00:00Z", None),
            Pending::Stale,
            "unstamped: its age decides"
        );
        assert_eq!(
            stamped("2026-11-29T11:00:00Z", Some(100)),
            Pending::Fenced(100)
        );
        assert_eq!(
            stamped("2026-11-29T11:00:00Z", Some(250)),
            Pending::Fenced(250)
        );
        let unknown = [rev(1, "pending-install")];
        assert_eq!(pending_age(&unknown, now), None);
        assert_eq!(
            judge_pending(&unknown, now, stale_after, 100),
            Pending::Recent(None),
            "an unknown age proves nothing"
        );
        // Helm's own text (Go's RFC 3339 with nanoseconds and an offset) and junk.
        let parsed: Vec<Revision> = serde_json::from_str(
            r#"[{"revision":1,"status":"pending-install","updated":"2026-11-29T11:59:59.123456789+00:00"},
                {"revision":2,"status":"failed","updated":"yesterday"}]"#,
        )
        .unwrap();
        assert_eq!(parsed[0].updated, at("2026-11-29T11:59:59.123456789Z"));
        assert_eq!(parsed[1].updated, None);
    }

    #[test]
    fn helm_statuses_read_and_print_helms_text() {
        let cases = [
            ("deployed", HelmStatus::Deployed),
            ("superseded", HelmStatus::Superseded),
            ("failed", HelmStatus::Failed),
            ("uninstalling", HelmStatus::Uninstalling),
            ("uninstalled", HelmStatus::Uninstalled),
            ("pending-install", HelmStatus::PendingInstall),
            ("pending-upgrade", HelmStatus::PendingUpgrade),
            ("pending-rollback", HelmStatus::PendingRollback),
            ("unknown", HelmStatus::Unknown("unknown".into())),
            ("Deployed", HelmStatus::Unknown("Deployed".into())),
            ("", HelmStatus::Unknown(String::new())),
        ];
        for (text, status) in &cases {
            assert_eq!(&HelmStatus::from(*text), status, "{text}");
            assert_eq!(&HelmStatus::from((*text).to_owned()), status, "{text}");
            assert_eq!(status.as_str(), *text);
            assert_eq!(status.to_string(), *text);
            let parsed: HelmStatus = serde_json::from_value((*text).into()).unwrap();
            assert_eq!(&parsed, status, "{text}");
        }
        let pending: Vec<_> = cases
            .iter()
            .filter(|(_, s)| is_pending(s))
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(
            pending,
            ["pending-install", "pending-upgrade", "pending-rollback"]
        );
    }

    #[test]
    fn stuck_releases_roll_back_to_the_newest_deployed_revision() {
        assert_eq!(
            recovery_plan(&HelmStatus::Deployed, &[rev(1, "deployed")]),
            None
        );
        assert_eq!(
            recovery_plan(&HelmStatus::Failed, &[rev(1, "failed")]),
            None
        );
        let history = [
            rev(1, "superseded"),
            rev(2, "superseded"),
            rev(3, "deployed"),
            rev(4, "failed"),
            rev(5, "pending-upgrade"),
        ];
        assert_eq!(
            recovery_plan(&HelmStatus::PendingUpgrade, &history),
            Some(Recovery::Rollback {
                from: HelmStatus::PendingUpgrade,
                revision: 3
            })
        );
        // After a failed upgrade nothing is `deployed`; the newest superseded one was.
        let history = [
            rev(1, "superseded"),
            rev(2, "failed"),
            rev(3, "pending-rollback"),
        ];
        assert_eq!(
            recovery_plan(&HelmStatus::PendingRollback, &history),
            Some(Recovery::Rollback {
                from: HelmStatus::PendingRollback,
                revision: 1
            })
        );
        assert_eq!(
            recovery_plan(&HelmStatus::PendingInstall, &[rev(1, "pending-install")]),
            Some(Recovery::Uninstall {
                from: HelmStatus::PendingInstall
            })
        );
        assert_eq!(
            Recovery::Rollback {
                from: HelmStatus::PendingUpgrade,
                revision: 3
            }
            .describe("web"),
            "recovered release web from pending-upgrade by rolling back to revision 3"
        );
    }

    #[test]
    fn driver_errors_are_classified() {
        let helm = |stderr: &str| DriverError::Helm {
            command: "upgrade".into(),
            exit_code: Some(1),
            failure: Box::new(helm_cli::helm_failure(Some(1), stderr.into())),
        };
        assert_eq!(
            helm(
                "Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress"
            )
            .failure(),
            Failure::Transient
        );
        assert_eq!(
            helm(r#"Error: chart "x" version "9" not found in https://c.io repository"#).failure(),
            Failure::Permanent
        );
        assert_eq!(
            DriverError::TimedOut {
                tool: Tool::Helm,
                command: "upgrade".into(),
                limit: Duration::from_secs(1)
            }
            .failure(),
            Failure::Transient
        );
        let kubectl = |action: KubectlAction, stderr: &str| DriverError::Kubectl {
            action,
            exit_code: Some(1),
            failure: Box::new(helm_cli::kubectl_failure(Some(1), stderr.into())),
        };
        let secret = || KubectlAction::ReadSecret {
            secret: "apps/creds".into(),
        };
        let namespace = || KubectlAction::DeleteNamespace {
            namespace: "apps".into(),
        };
        let not_found = kubectl(
            secret(),
            r#"Error from server (NotFound): secrets "creds" not found"#,
        );
        assert_eq!(not_found.failure(), Failure::Permanent);
        assert_eq!(
            not_found.to_string(),
            r#"cannot read registry secret apps/creds: Error from server (NotFound): secrets "creds" not found"#
        );
        let refused = "The connection to the server 10.0.0.1:6443 was refused - did you specify the right host or port?";
        assert_eq!(kubectl(secret(), refused).failure(), Failure::Transient);
        assert_eq!(kubectl(namespace(), refused).failure(), Failure::Transient);
        // kubectl's texts are not read with Helm's table: `eof` in a name is no network error.
        let forbidden = kubectl(
            namespace(),
            r#"Error from server (Forbidden): namespaces "eof" is forbidden: User "system:serviceaccount:helmq:worker" cannot delete resource "namespaces" in API group "" in the namespace "eof""#,
        );
        assert_eq!(forbidden.failure(), Failure::Permanent);
        assert!(
            forbidden
                .to_string()
                .starts_with("cannot delete namespace apps: Error from server (Forbidden)"),
            "{forbidden}"
        );
        let no_keys = DriverError::RegistryCredentials {
            registry: "registry.example.com".into(),
            secret: "apps/creds".into(),
            reason: CredentialsError::KubectlDisabled,
        };
        assert_eq!(no_keys.failure(), Failure::Permanent);
        assert_eq!(
            no_keys.to_string(),
            "cannot log in to registry registry.example.com with secret apps/creds: kubectl is \
             disabled on this worker (set --kubectl-bin / HELMQ_KUBECTL_BIN)"
        );
    }

    #[test]
    fn errors_keep_their_cause() {
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        let spawn = DriverError::Spawn {
            program: "/bin/kubectl".into(),
            needed_to: Some(KubectlAction::ReadSecret {
                secret: "apps/creds".into(),
            }),
            source: missing,
        };
        assert_eq!(
            spawn.to_string(),
            "cannot run /bin/kubectl: entity not found (needed to read registry secret apps/creds)"
        );
        assert_eq!(spawn.failure(), Failure::Transient);
        let cause = spawn
            .source()
            .and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(
            cause.map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotFound)
        );
        let local = DriverError::local(
            "cannot create the values file",
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert_eq!(
            local.to_string(),
            "cannot create the values file: permission denied"
        );
        assert!(local.source().is_some());
        assert_eq!(
            DriverError::Cancelled {
                tool: Tool::Kubectl,
                command: "get".into()
            }
            .to_string(),
            "kubectl get was cancelled"
        );
    }
}

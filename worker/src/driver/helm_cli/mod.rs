//! [`HelmCli`]: the [`HelmDriver`] that runs the `helm` executable (Helm 3.14+ and Helm 4).
//!
//! - Charts come from a cache shared by every job: pulled once per source and exact version
//!   and installed from the package, so no repository index is downloaded or parsed per job.
//! - Values go to `helm` in a 0600 temporary file (`--values`), never on the command line.
//! - Every process runs in a process group of its own, with stdin closed, output captured up
//!   to a cap and its own time limit (the job's timeout plus a margin); cancelling a call or
//!   reaching the limit sends SIGTERM to the group, then SIGKILL after a grace period, so Helm
//!   can mark the release `failed` instead of leaving it `pending-*`.
//! - Helm's own state lives under the cache directory (`HELM_CACHE_HOME`, `HELM_CONFIG_HOME`,
//!   `HELM_DATA_HOME`), so workers share nothing with the host's Helm setup.
//! - helm and kubectl start from a cleared environment plus an explicit list (`PATH`, `HOME`,
//!   `TMPDIR`, `KUBECONFIG`, the in-cluster `KUBERNETES_SERVICE_*`, proxies, TLS roots, and for
//!   helm `HELM_DRIVER` and its limits): never the worker's NATS credentials.
//! - Helm cannot delete namespaces: a managed namespace is deleted with `kubectl` (optional;
//!   when it is missing the deletion is skipped and the status message says so).
//! - An OCI source with `authentication` is pulled after `helm registry login` with credentials
//!   from a Kubernetes Secret in the job's own namespace (or one the operator allows), sent only
//!   to a registry that Secret names, and kept in a registry config file private to that pull.
//!
//! # Modules
//!
//! `process` runs a process; `args` builds the argument lists; `cache` keeps the charts;
//! `registry` logs in to OCI registries; `output` reads what Helm prints; `failure` reads what
//! a failed helm or kubectl run means.

mod args;
mod cache;
mod failure;
mod output;
mod process;
mod registry;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use helmq_schemas::HelmConfig;
use helmq_schemas::config::ValuesKind;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

pub(crate) use failure::{helm_failure, kubectl_failure, test_failure};
pub use output::OutputError;
pub use registry::CredentialsError;

use self::args::{
    Stamp, apply_args, get_manifest_args, history_args, kubectl_apply_args,
    kubectl_create_stdin_args, kubectl_delete_namespace_args, kubectl_get_labels_args,
    kubectl_get_objects_args, kubectl_get_values_args, kubectl_namespace_labels_args,
    rollback_args, status_args, test_args, uninstall_args, with_access,
};
use self::cache::{CacheIndex, KeyLocks};
use self::output::{
    OutputError as Unreadable, a_test_failed, parse_history, parse_labels, parse_objects,
    parse_release, source_data,
};
use self::process::{Exit, Limits, Stdout};
use super::{
    Apply, DriverError, HelmDriver, HelmProcesses, KubectlAction, LEASE_LABEL, NamespaceDeletion,
    Release, Revision, Target, Tool, Uninstalled, is_pending,
};
use crate::drift::{ObjectState, identity, manifest_objects};
use crate::failure::Answer;
use crate::ownership::{Identity, Owner, OwnershipError};
use crate::values::SourceData;

/// The three states of each object: `applied` (the manifest's, in order), `desired` (the dry
/// run's answer, in the same order) and `live` (those that exist, matched by identity).
/// `None` when the dry run answered other objects than it was given.
fn pair(
    applied: Vec<serde_json::Value>,
    desired: Vec<serde_json::Value>,
    live: Vec<serde_json::Value>,
) -> Option<Vec<ObjectState>> {
    if applied.len() != desired.len() {
        return None;
    }
    let mut live: BTreeMap<_, _> = live
        .into_iter()
        .filter_map(|object| Some((identity(&object)?, object)))
        .collect();
    applied
        .into_iter()
        .zip(desired)
        .map(|(applied, desired)| {
            let name = |o: &serde_json::Value| identity(o).map(|(_, kind, _, name)| (kind, name));
            if name(&applied)? != name(&desired)? {
                return None;
            }
            let live = live.remove(&identity(&desired)?);
            Some(ObjectState {
                applied,
                desired,
                live,
            })
        })
        .collect()
}

/// The chart cache's default bound: 512 MiB, half the deployed cache volume's 1 GiB limit
/// (Helm's own cache and temporary files share that volume).
pub const DEFAULT_CHART_CACHE_MAX_BYTES: u64 = 512 * 1024 * 1024;

/// How [`HelmCli`] runs Helm.
#[derive(Debug, Clone)]
pub struct HelmCliSettings {
    /// The `helm` executable.
    pub helm_bin: PathBuf,
    /// `--kubeconfig` passed to helm and kubectl (in-cluster config when `None`).
    pub kubeconfig: Option<PathBuf>,
    /// Chart cache and Helm home directories.
    pub cache_dir: PathBuf,
    /// `kubectl`, used to delete managed namespaces and to read the Secrets of OCI registry
    /// logins; `None` disables both (authenticated OCI sources then fail).
    pub kubectl_bin: Option<PathBuf>,
    /// Added to a job's timeout to bound the helm process itself.
    pub margin: Duration,
    /// Time limit of short commands (`status`, `history`, `pull`, kubectl).
    pub short_timeout: Duration,
    /// Time a cancelled or timed-out process gets between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// The chart cache's bound in bytes: least recently used entries no job uses are evicted
    /// beyond it.
    pub chart_cache_max_bytes: u64,
    /// Namespaces whose Secrets any job may name for a registry login, besides its own
    /// (`--allowed-secret-namespaces`; empty: only its own).
    pub allowed_secret_namespaces: Vec<String>,
}

impl HelmCliSettings {
    /// Defaults around a helm binary and a cache directory.
    pub fn new(helm_bin: impl Into<PathBuf>, cache_dir: impl Into<PathBuf>) -> Self {
        HelmCliSettings {
            helm_bin: helm_bin.into(),
            kubeconfig: None,
            cache_dir: cache_dir.into(),
            kubectl_bin: Some(PathBuf::from("kubectl")),
            margin: Duration::from_secs(30),
            short_timeout: Duration::from_secs(120),
            grace: Duration::from_secs(10),
            allowed_secret_namespaces: Vec::new(),
            chart_cache_max_bytes: DEFAULT_CHART_CACHE_MAX_BYTES,
        }
    }
}

/// The stdout of a helm run that succeeded; a failure is [`DriverError::Helm`], its stderr read
/// with helm's table.
fn succeeded(exit: Exit) -> Result<Stdout, DriverError> {
    match exit {
        Exit::Success(stdout) => Ok(stdout),
        Exit::Failure {
            command,
            code,
            stderr,
            ..
        } => Err(DriverError::Helm {
            command,
            exit_code: code,
            failure: Box::new(helm_failure(code, stderr)),
        }),
    }
}

/// The [`HelmDriver`] that runs `helm`.
#[derive(Debug)]
pub struct HelmCli {
    settings: HelmCliSettings,
    locks: KeyLocks,
    index: CacheIndex,
    processes: HelmProcesses,
}

impl HelmCli {
    /// A driver with these settings; creates the cache directory and brings the chart cache
    /// within its bound.
    ///
    /// # Errors
    ///
    /// [`DriverError::Local`] when a directory cannot be created.
    pub fn new(settings: HelmCliSettings) -> Result<HelmCli, DriverError> {
        for dir in ["charts", "tmp", "helm/cache", "helm/config", "helm/data"] {
            let path = settings.cache_dir.join(dir);
            std::fs::create_dir_all(&path)
                .map_err(|e| DriverError::local(format!("cannot create {}", path.display()), e))?;
        }
        let index = CacheIndex::scan(&settings.cache_dir.join("charts"));
        let cli = HelmCli {
            settings,
            locks: KeyLocks::default(),
            index,
            processes: HelmProcesses::default(),
        };
        cli.evict();
        Ok(cli)
    }

    /// The limits of a process that may run for `time`.
    fn limits(&self, time: Duration) -> Limits {
        Limits {
            time,
            grace: self.settings.grace,
        }
    }

    /// The time limit of a command asked to finish within `timeout`.
    fn long_limit(&self, timeout: Duration) -> Duration {
        timeout.saturating_add(self.settings.margin)
    }

    /// Runs helm with `args` and returns its stdout.
    async fn helm(
        &self,
        args: Vec<OsString>,
        identity: &Identity,
        limit: Duration,
        cancel: &CancellationToken,
    ) -> Result<Stdout, DriverError> {
        self.helm_with(args, identity, None, None, &[], limit, cancel)
            .await
            .and_then(succeeded)
    }

    /// Runs helm with `args` about a release and returns its stdout; `None` when helm says
    /// there is no such release.
    async fn helm_on_release(
        &self,
        args: Vec<OsString>,
        identity: &Identity,
        limit: Duration,
        cancel: &CancellationToken,
    ) -> Result<Option<Stdout>, DriverError> {
        match self.helm(args, identity, limit, cancel).await {
            Ok(stdout) => Ok(Some(stdout)),
            Err(e) if e.answer() == Some(Answer::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Runs helm with `args` (plus `--kubeconfig` and the identity's `--kube-as-user`) in the
    /// worker's own Helm home, an optional registry config file and optional stdin, and returns
    /// how it exited ([`succeeded`] turns a failure into an error). `input` and `secrets` are
    /// redacted from its stderr.
    #[allow(clippy::too_many_arguments)]
    async fn helm_with(
        &self,
        args: Vec<OsString>,
        identity: &Identity,
        registry_config: Option<&Path>,
        input: Option<&[u8]>,
        secrets: &[&[u8]],
        limit: Duration,
        cancel: &CancellationToken,
    ) -> Result<Exit, DriverError> {
        let subcommand = args.first().map(|a| a.to_string_lossy());
        self.processes
            .count(subcommand.as_deref().unwrap_or_default());
        let home = &self.settings.cache_dir;
        let mut command = process::command(Tool::Helm, &self.settings.helm_bin);
        command
            .args(with_access(
                args,
                Tool::Helm,
                self.settings.kubeconfig.as_deref(),
                identity,
            ))
            .env("HELM_CACHE_HOME", home.join("helm/cache"))
            .env("HELM_CONFIG_HOME", home.join("helm/config"))
            .env("HELM_DATA_HOME", home.join("helm/data"));
        if let Some(path) = registry_config {
            command.env("HELM_REGISTRY_CONFIG", path);
        }
        process::run(
            command,
            Tool::Helm,
            input,
            secrets,
            self.limits(limit),
            cancel,
        )
        .await
    }

    /// Runs `kubectl` with `args` (plus `--kubeconfig` and the identity's `--as`) and optional
    /// stdin for `action`, and returns its stdout; its failures are [`DriverError::Kubectl`],
    /// and one to start it says what it was needed for.
    async fn kubectl(
        &self,
        kubectl: &Path,
        args: Vec<OsString>,
        action: KubectlAction,
        identity: &Identity,
        input: Option<&[u8]>,
        cancel: &CancellationToken,
    ) -> Result<Stdout, DriverError> {
        let mut command = process::command(Tool::Kubectl, kubectl);
        command.args(with_access(
            args,
            Tool::Kubectl,
            self.settings.kubeconfig.as_deref(),
            identity,
        ));
        match process::run(
            command,
            Tool::Kubectl,
            input,
            &[],
            self.limits(self.settings.short_timeout),
            cancel,
        )
        .await
        {
            Ok(Exit::Success(stdout)) => Ok(stdout),
            Ok(Exit::Failure { code, stderr, .. }) => Err(DriverError::Kubectl {
                action,
                exit_code: code,
                failure: Box::new(kubectl_failure(code, stderr)),
            }),
            Err(DriverError::Spawn {
                program, source, ..
            }) => Err(DriverError::Spawn {
                program,
                needed_to: Some(action),
                source,
            }),
            Err(e) => Err(e),
        }
    }

    /// The worker's kubectl, or an error saying what it was needed for (`action`) when kubectl
    /// is disabled on this worker.
    fn kubectl_bin(&self, action: &KubectlAction) -> Result<&Path, DriverError> {
        self.settings.kubectl_bin.as_deref().ok_or_else(|| {
            DriverError::local(
                format!("cannot {action}"),
                std::io::Error::other("kubectl is disabled on this worker (--kubectl-bin)"),
            )
        })
    }

    /// The values of `config` in a new 0600 file (tempfile's mode), deleted when dropped.
    fn values_file(&self, config: &HelmConfig) -> Result<tempfile::NamedTempFile, DriverError> {
        let mut file = tempfile::Builder::new()
            .prefix("values-")
            .suffix(".json")
            .tempfile_in(self.settings.cache_dir.join("tmp"))
            .map_err(|e| DriverError::local("cannot create the values file", e))?;
        serde_json::to_writer(&mut file, &config.values)
            .map_err(std::io::Error::from)
            .and_then(|()| file.flush())
            .map_err(|e| DriverError::local("cannot write the values file", e))?;
        Ok(file)
    }
}

impl HelmCli {
    /// Creates the managed namespace of an apply, as the job's identity, with its owner's
    /// labels; one that exists already is left as it is (and so never counts as created by
    /// helmq). `false` when kubectl is disabled or cannot run: helm's `--create-namespace` then
    /// creates it, without labels.
    async fn create_namespace(
        &self,
        namespace: &str,
        identity: &Identity,
        owner: &Owner,
        cancel: &CancellationToken,
    ) -> Result<bool, DriverError> {
        let Some(kubectl) = &self.settings.kubectl_bin else {
            return Ok(false);
        };
        let labels: serde_json::Map<String, serde_json::Value> = owner
            .labels()
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).into()))
            .collect();
        let manifest = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": namespace, "labels": labels},
        });
        let action = KubectlAction::CreateNamespace {
            namespace: namespace.to_owned(),
        };
        match self
            .kubectl(
                kubectl,
                kubectl_create_stdin_args(),
                action,
                identity,
                Some(manifest.to_string().as_bytes()),
                cancel,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e @ DriverError::Kubectl { .. }) if e.answer() == Some(Answer::AlreadyExists) => {
                Ok(true)
            }
            // Creating namespaces is cluster-scoped: a tenant may lack the right and still be
            // allowed to see that its namespace exists, which is all the apply needs.
            Err(error @ DriverError::Kubectl { .. })
                if error.answer() == Some(Answer::Forbidden) =>
            {
                let action = KubectlAction::ReadNamespace {
                    namespace: namespace.to_owned(),
                };
                let args = kubectl_namespace_labels_args(namespace);
                match self
                    .kubectl(kubectl, args, action, identity, None, cancel)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(_) => Err(error),
                }
            }
            Err(DriverError::Spawn { source, .. }) => {
                tracing::warn!(error = %source, %namespace, "cannot run kubectl; helm creates the namespace, without owner labels, so helmq never deletes it");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

impl HelmDriver for HelmCli {
    fn grace(&self) -> Duration {
        self.settings.grace
    }

    fn register_metrics(&self, registry: &mut Registry) {
        self.processes.register(registry);
    }

    async fn apply(
        &self,
        request: Apply<'_>,
        cancel: &CancellationToken,
    ) -> Result<Release, DriverError> {
        let chart = self
            .chart(
                request.config,
                request.own_namespace,
                request.identity,
                cancel,
            )
            .await?;
        let values = self.values_file(request.config)?;
        // The Component's own namespace exists (the Component lives there) and is never managed.
        let manage = request.config.manage_namespace
            && request.config.release_namespace != request.own_namespace;
        let created = manage
            && self
                .create_namespace(
                    &request.config.release_namespace,
                    request.identity,
                    request.owner,
                    cancel,
                )
                .await?;
        let stamp = Stamp {
            install: request.install,
            lease_revision: request.lease_revision,
            owner: request.owner,
            create_namespace: manage && !created,
        };
        let stdout = self
            .helm(
                apply_args(
                    request.config,
                    &chart.path,
                    values.path(),
                    request.timeout,
                    &stamp,
                ),
                request.identity,
                self.long_limit(request.timeout),
                cancel,
            )
            .await?;
        parse_release(
            if request.install {
                "install"
            } else {
                "upgrade"
            },
            &stdout,
        )
    }

    async fn uninstall(
        &self,
        target: Target<'_>,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<Uninstalled, DriverError> {
        let removed = self
            .helm_on_release(
                uninstall_args(&target.release_ref(), timeout),
                target.identity,
                self.long_limit(timeout),
                cancel,
            )
            .await?;
        Ok(match removed {
            Some(_) => Uninstalled::Removed,
            None => Uninstalled::NotFound,
        })
    }

    async fn status(
        &self,
        target: Target<'_>,
        cancel: &CancellationToken,
    ) -> Result<Option<Release>, DriverError> {
        self.helm_on_release(
            status_args(&target.release_ref()),
            target.identity,
            self.settings.short_timeout,
            cancel,
        )
        .await?
        .map(|stdout| parse_release("status", &stdout))
        .transpose()
    }

    async fn labels(
        &self,
        target: Target<'_>,
        revision: i64,
        cancel: &CancellationToken,
    ) -> Result<BTreeMap<String, String>, DriverError> {
        let unknown = |reason: String| OwnershipError::Unknown {
            release: target.describe(),
            reason,
        };
        let Some(kubectl) = self.settings.kubectl_bin.as_ref() else {
            return Err(unknown(
                "kubectl is disabled on this worker (set --kubectl-bin / HELMQ_KUBECTL_BIN)".into(),
            )
            .into());
        };
        let args = kubectl_get_labels_args(&target.release_ref(), revision);
        let action = KubectlAction::ReadReleaseRecord {
            release: target.describe(),
            revision,
        };
        let stdout = self
            .kubectl(kubectl, args, action, target.identity, None, cancel)
            .await?;
        parse_labels(&stdout.text)
            .ok_or_else(|| unknown("its record's labels are not a JSON map".into()).into())
    }

    async fn history(
        &self,
        target: Target<'_>,
        cancel: &CancellationToken,
    ) -> Result<Vec<Revision>, DriverError> {
        let Some(stdout) = self
            .helm_on_release(
                history_args(&target.release_ref()),
                target.identity,
                self.settings.short_timeout,
                cancel,
            )
            .await?
        else {
            return Ok(Vec::new());
        };
        let mut history = parse_history(&stdout)?;
        if let Some(newest) = history.iter_mut().max_by_key(|r| r.revision)
            && is_pending(&newest.status)
        {
            // Unreadable: the record's age alone decides whether it may be recovered.
            newest.lease_revision = match self.labels(target, newest.revision, cancel).await {
                Ok(labels) => labels.get(LEASE_LABEL).and_then(|v| v.parse().ok()),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the lease stamp of a pending release; its age decides");
                    None
                }
            };
        }
        Ok(history)
    }

    async fn test(
        &self,
        target: Target<'_>,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<(), DriverError> {
        let exit = self
            .helm_with(
                test_args(target.release, target.namespace, timeout),
                target.identity,
                None,
                None,
                &[],
                self.long_limit(timeout),
                cancel,
            )
            .await?;
        match exit {
            Exit::Success(_) => Ok(()),
            Exit::Failure {
                command,
                code,
                stderr,
                stdout,
            } => Err(DriverError::Helm {
                command,
                exit_code: code,
                // Helm's report says whether the tests ran and one failed, or Helm could not
                // run them (the cluster away, the release gone): only the first is permanent.
                failure: Box::new(if a_test_failed(&stdout) {
                    test_failure(stderr)
                } else {
                    helm_failure(code, stderr)
                }),
            }),
        }
    }

    async fn rollback(
        &self,
        target: Target<'_>,
        revision: i64,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<(), DriverError> {
        self.helm(
            rollback_args(&target.release_ref(), revision, timeout),
            target.identity,
            self.long_limit(timeout),
            cancel,
        )
        .await
        .map(drop)
    }

    async fn values_source(
        &self,
        kind: ValuesKind,
        name: &str,
        namespace: &str,
        identity: &Identity,
        cancel: &CancellationToken,
    ) -> Result<SourceData, DriverError> {
        let source = format!("{} {namespace}/{name}", kind.as_str());
        let args = kubectl_get_values_args(kind, name, namespace);
        let action = KubectlAction::ReadValues {
            source: source.clone(),
        };
        let kubectl = self.kubectl_bin(&action)?;
        let stdout = match self
            .kubectl(kubectl, args, action, identity, None, cancel)
            .await
        {
            Ok(stdout) => stdout,
            Err(e) if e.answer() == Some(Answer::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        let data = source_data(kind, &stdout.text).map_err(|reason| {
            DriverError::local(
                format!("cannot read values from {source}"),
                std::io::Error::other(reason),
            )
        })?;
        Ok(Some(data))
    }

    async fn drift_states(
        &self,
        target: Target<'_>,
        cancel: &CancellationToken,
    ) -> Result<Vec<ObjectState>, DriverError> {
        let release = target.release_ref();
        let stdout = self
            .helm(
                get_manifest_args(&release),
                target.identity,
                self.settings.short_timeout,
                cancel,
            )
            .await?;
        let unreadable = |command: &str, reason: Unreadable| DriverError::Output {
            command: command.to_owned(),
            reason,
        };
        if stdout.truncated {
            return Err(unreadable("get manifest", Unreadable::Cut));
        }
        let applied = manifest_objects(&stdout.text, target.release, target.namespace)
            .map_err(|e| unreadable("get manifest", e.into()))?;
        if applied.is_empty() {
            return Ok(Vec::new());
        }
        let input = serde_json::to_vec(&serde_json::json!({
            "apiVersion": "v1", "kind": "List", "items": applied,
        }))
        .map_err(|e| DriverError::local("cannot write the release's objects", e.into()))?;
        let action = || KubectlAction::CompareObjects {
            release: release.to_string(),
        };
        let input = &input;
        let objects = |args, command: &'static str| async move {
            let action = action();
            let kubectl = self.kubectl_bin(&action)?;
            let stdout = self
                .kubectl(kubectl, args, action, target.identity, Some(input), cancel)
                .await?;
            if stdout.truncated {
                return Err(unreadable(command, Unreadable::Cut));
            }
            parse_objects(&stdout).map_err(|e| unreadable(command, e))
        };
        let desired = objects(kubectl_apply_args(target.namespace, true), "kubectl apply").await?;
        let live = objects(kubectl_get_objects_args(target.namespace), "kubectl get").await?;
        pair(applied, desired, live)
            .ok_or_else(|| unreadable("kubectl apply", Unreadable::Mismatched))
    }

    async fn reapply(
        &self,
        target: Target<'_>,
        objects: &[serde_json::Value],
        cancel: &CancellationToken,
    ) -> Result<(), DriverError> {
        let input = serde_json::to_vec(&serde_json::json!({
            "apiVersion": "v1", "kind": "List", "items": objects,
        }))
        .map_err(|e| DriverError::local("cannot write the release's objects", e.into()))?;
        let action = KubectlAction::CorrectObjects {
            release: target.release_ref().to_string(),
        };
        let kubectl = self.kubectl_bin(&action)?;
        self.kubectl(
            kubectl,
            kubectl_apply_args(target.namespace, false),
            action,
            target.identity,
            Some(&input),
            cancel,
        )
        .await
        .map(drop)
    }

    async fn delete_namespace(
        &self,
        namespace: &str,
        identity: &Identity,
        owner: &Owner,
        cancel: &CancellationToken,
    ) -> Result<NamespaceDeletion, DriverError> {
        let Some(kubectl) = &self.settings.kubectl_bin else {
            return Ok(NamespaceDeletion::Skipped(format!(
                "namespace {namespace} was not deleted: namespace deletion is disabled on this worker"
            )));
        };
        let skipped = |source: std::io::Error| {
            NamespaceDeletion::Skipped(format!(
                "namespace {namespace} was not deleted: cannot run {}: {source}",
                kubectl.display()
            ))
        };
        let action = KubectlAction::ReadNamespace {
            namespace: namespace.to_owned(),
        };
        let labels = match self
            .kubectl(
                kubectl,
                kubectl_namespace_labels_args(namespace),
                action,
                identity,
                None,
                cancel,
            )
            .await
        {
            Ok(stdout) => parse_labels(&stdout.text).unwrap_or_default(),
            Err(e) if e.answer() == Some(Answer::NotFound) => {
                return Ok(NamespaceDeletion::Deleted);
            }
            Err(DriverError::Spawn { source, .. }) => return Ok(skipped(source)),
            Err(e) => return Err(e),
        };
        if Owner::from_labels(&labels).as_ref() != Some(owner) {
            return Ok(NamespaceDeletion::NotOwned);
        }
        let action = KubectlAction::DeleteNamespace {
            namespace: namespace.to_owned(),
        };
        match self
            .kubectl(
                kubectl,
                kubectl_delete_namespace_args(namespace),
                action,
                identity,
                None,
                cancel,
            )
            .await
        {
            Ok(_) => Ok(NamespaceDeletion::Deleted),
            Err(DriverError::Spawn { source, .. }) => Ok(skipped(source)),
            Err(e) => Err(e),
        }
    }
}

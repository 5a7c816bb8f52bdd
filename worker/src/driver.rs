//! The [`HelmDriver`] seam: what a worker needs from Helm (apply, uninstall, learn a release's
//! state, roll back, delete a namespace), the stuck-release recovery plan, and two
//! implementations: [`HelmCli`] (the `helm` executable) and [`MemoryDriver`] (in memory, for
//! tests of the pipeline).

pub mod helm_cli;
pub mod memory;

use std::future::Future;
use std::time::Duration;

use helmq_schemas::HelmConfig;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

pub use helm_cli::{HelmCli, HelmCliSettings};
pub use memory::MemoryDriver;

use crate::policy::{Failure, classify, classify_kubectl};

/// Why a driver call did not succeed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DriverError {
    /// Helm ran and failed.
    #[error("helm {command} failed: {stderr}")]
    Helm {
        /// The subcommand (`upgrade`, `uninstall`, ...).
        command: String,
        /// Its exit code (`None` when killed by a signal).
        exit_code: Option<i32>,
        /// Its stderr, trimmed (never holds values: they are passed in a file).
        stderr: String,
    },
    /// The command ran longer than its own timeout and was killed.
    #[error("helm {command} did not finish within {limit:?} and was killed")]
    TimedOut {
        /// The subcommand.
        command: String,
        /// The limit.
        limit: Duration,
    },
    /// The run was cancelled (newer generation, lost lease or shutdown); the process was killed.
    #[error("helm {command} was cancelled")]
    Cancelled {
        /// The subcommand.
        command: String,
    },
    /// The executable could not be started or its output could not be read.
    #[error("cannot run {program}: {reason}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        reason: String,
    },
    /// Helm's output was not what `-o json` promises.
    #[error("cannot read the output of helm {command}: {reason}")]
    Output {
        /// The subcommand.
        command: String,
        /// Why.
        reason: String,
    },
    /// Local files (values file, chart cache) could not be written.
    #[error("{0}")]
    Local(String),
    /// `kubectl get secret` failed for the Secret of an OCI registry login.
    #[error("cannot read registry secret {secret}: {stderr}")]
    SecretRead {
        /// `namespace/name` of the Secret.
        secret: String,
        /// kubectl's exit code (`None` when killed by a signal).
        exit_code: Option<i32>,
        /// kubectl's stderr, trimmed (its errors never hold the Secret's data).
        stderr: String,
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
        reason: String,
    },
}

impl DriverError {
    /// Whether retrying can help.
    pub fn failure(&self) -> Failure {
        match self {
            DriverError::Helm {
                exit_code, stderr, ..
            } => classify(*exit_code, stderr),
            DriverError::SecretRead {
                exit_code, stderr, ..
            } => classify_kubectl(*exit_code, stderr),
            DriverError::RegistryCredentials { .. } => Failure::Permanent,
            DriverError::TimedOut { .. }
            | DriverError::Cancelled { .. }
            | DriverError::Spawn { .. }
            | DriverError::Output { .. }
            | DriverError::Local(_) => Failure::Transient,
        }
    }
}

/// A release after a successful apply (or as `helm status` reports it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// Revision.
    pub revision: i64,
    /// Helm status (`deployed`, `pending-upgrade`, ...).
    pub status: String,
    /// Chart version.
    pub chart_version: Option<String>,
}

/// One line of `helm history -o json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Revision {
    /// Revision number.
    pub revision: i64,
    /// Helm status of that revision.
    pub status: String,
    /// `name-version` of the chart.
    #[serde(default)]
    pub chart: String,
    /// What Helm did.
    #[serde(default)]
    pub description: String,
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
}

/// The Helm operations a worker needs. Every call takes a cancellation token: cancelling it
/// must stop the operation (and kill any process it started) promptly.
pub trait HelmDriver: Send + Sync + 'static {
    /// `helm upgrade --install` and wait for readiness.
    fn apply(
        &self,
        request: Apply<'_>,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<Release, DriverError>> + Send;

    /// `helm uninstall` and wait for the resources to go; a missing release is success.
    fn uninstall(
        &self,
        release: &str,
        namespace: &str,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<Uninstalled, DriverError>> + Send;

    /// `helm status`; `None` when there is no such release.
    fn status(
        &self,
        release: &str,
        namespace: &str,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<Option<Release>, DriverError>> + Send;

    /// `helm history` (newest 20 revisions); empty when there is no such release.
    fn history(
        &self,
        release: &str,
        namespace: &str,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<Vec<Revision>, DriverError>> + Send;

    /// `helm rollback` to `revision`.
    fn rollback(
        &self,
        release: &str,
        namespace: &str,
        revision: i64,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// Deletes a namespace helmq manages.
    fn delete_namespace(
        &self,
        namespace: &str,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<NamespaceDeletion, DriverError>> + Send;
}

/// How to unlock a release a dead run left in a `pending-*` state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Roll back to the newest revision that was deployed.
    Rollback {
        /// The stuck state.
        from: String,
        /// The revision to go back to.
        revision: i64,
    },
    /// Nothing was ever deployed: uninstall, and the job installs afresh.
    Uninstall {
        /// The stuck state.
        from: String,
    },
}

impl Recovery {
    /// The sentence for the status message.
    pub fn describe(&self, release: &str) -> String {
        match self {
            Recovery::Rollback { from, revision } => {
                format!(
                    "recovered release {release} from {from} by rolling back to revision {revision}"
                )
            }
            Recovery::Uninstall { from } => format!(
                "recovered release {release} from {from} by uninstalling it (no revision was ever deployed)"
            ),
        }
    }
}

/// Whether a Helm status is one a crashed run leaves behind.
pub fn is_pending(status: &str) -> bool {
    matches!(
        status,
        "pending-install" | "pending-upgrade" | "pending-rollback"
    )
}

/// The recovery of a release whose current status is `status`, from its history; `None` when
/// it is not stuck.
pub fn recovery_plan(status: &str, history: &[Revision]) -> Option<Recovery> {
    if !is_pending(status) {
        return None;
    }
    let last_good = history
        .iter()
        .filter(|r| r.status == "deployed" || r.status == "superseded")
        .map(|r| r.revision)
        .max();
    Some(match last_good {
        Some(revision) => Recovery::Rollback {
            from: status.to_owned(),
            revision,
        },
        None => Recovery::Uninstall {
            from: status.to_owned(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(revision: i64, status: &str) -> Revision {
        Revision {
            revision,
            status: status.into(),
            chart: "web-1.0.0".into(),
            description: String::new(),
        }
    }

    #[test]
    fn stuck_releases_roll_back_to_the_newest_deployed_revision() {
        assert_eq!(recovery_plan("deployed", &[rev(1, "deployed")]), None);
        assert_eq!(recovery_plan("failed", &[rev(1, "failed")]), None);
        let history = [
            rev(1, "superseded"),
            rev(2, "superseded"),
            rev(3, "deployed"),
            rev(4, "failed"),
            rev(5, "pending-upgrade"),
        ];
        assert_eq!(
            recovery_plan("pending-upgrade", &history),
            Some(Recovery::Rollback {
                from: "pending-upgrade".into(),
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
            recovery_plan("pending-rollback", &history),
            Some(Recovery::Rollback {
                from: "pending-rollback".into(),
                revision: 1
            })
        );
        assert_eq!(
            recovery_plan("pending-install", &[rev(1, "pending-install")]),
            Some(Recovery::Uninstall {
                from: "pending-install".into()
            })
        );
        assert_eq!(
            Recovery::Rollback {
                from: "pending-upgrade".into(),
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
            stderr: stderr.into(),
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
                command: "upgrade".into(),
                limit: Duration::from_secs(1)
            }
            .failure(),
            Failure::Transient
        );
        let secret = |stderr: &str| DriverError::SecretRead {
            secret: "apps/creds".into(),
            exit_code: Some(1),
            stderr: stderr.into(),
        };
        assert_eq!(
            secret(r#"Error from server (NotFound): secrets "creds" not found"#).failure(),
            Failure::Permanent
        );
        assert_eq!(
            secret("The connection to the server 10.0.0.1:6443 was refused - did you specify the right host or port?").failure(),
            Failure::Transient
        );
        let no_keys = DriverError::RegistryCredentials {
            registry: "registry.example.com".into(),
            secret: "apps/creds".into(),
            reason: "the secret holds no token and no password".into(),
        };
        assert_eq!(no_keys.failure(), Failure::Permanent);
        assert_eq!(
            no_keys.to_string(),
            "cannot log in to registry registry.example.com with secret apps/creds: the secret holds no token and no password"
        );
    }
}

//! A failed helm or kubectl run, understood once: [`HelmFailure`] holds whether a retry can
//! help (its class, a [`Failure`] that `policy` decides on), what went wrong when it is one of
//! the common failures (its [`Cause`], which the `readable` module turns into advice), what it
//! said of the release or object it was about (its [`Answer`]: not found, already exists,
//! forbidden; what the driver acts on) and the readable, secret-free text. The driver reads a
//! process's stderr into one where it runs (`driver::helm_cli`); nothing reads that text again
//! to learn what it means.

use std::fmt;

use crate::policy::Failure;

/// What went wrong, as far as the failure tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The chart, or that version of it, is not in the repository.
    ChartNotFound,
    /// The repository's `index.yaml` cannot be fetched.
    RepositoryUnreachable,
    /// Helm's wait ran out; the resources it named as not ready (`Kind namespace/name`).
    WaitTimeout(Vec<String>),
    /// RBAC refused the account: who, and the sentence of what it cannot do.
    Forbidden {
        /// The user (`system:serviceaccount:...`).
        user: String,
        /// `list resource "secrets" in API group "" in the namespace "cap"`.
        cannot: String,
    },
    /// The allowlist refused the chart source or the release namespace (never read from a
    /// process's output: the worker's own typed refusal).
    NotAllowed,
    /// An object of the chart exists outside this release.
    OwnedElsewhere {
        /// `ConfigMap "taken-config" in namespace "cap"`.
        object: String,
        /// The release that has it, when the object says (`None`: no Helm release).
        release: Option<String>,
    },
    /// Another install, upgrade or rollback of the release is in progress.
    AnotherOperation,
    /// `helm install` found a release of that name (it never replaces one).
    NameInUse,
    /// `helm test` ran the chart's tests and one failed (or did not finish in time).
    TestFailed,
}

impl Cause {
    /// Every cause's [`Cause::label`].
    pub const LABELS: [&'static str; 9] = [
        "chart_not_found",
        "repository_unreachable",
        "wait_timeout",
        "forbidden",
        "not_allowed",
        "owned_elsewhere",
        "another_operation",
        "name_in_use",
        "test_failed",
    ];

    /// Its name in metrics (`helmq_worker_helm_failures{cause}`).
    pub fn label(&self) -> &'static str {
        match self {
            Cause::ChartNotFound => "chart_not_found",
            Cause::RepositoryUnreachable => "repository_unreachable",
            Cause::WaitTimeout(_) => "wait_timeout",
            Cause::Forbidden { .. } => "forbidden",
            Cause::NotAllowed => "not_allowed",
            Cause::OwnedElsewhere { .. } => "owned_elsewhere",
            Cause::AnotherOperation => "another_operation",
            Cause::NameInUse => "name_in_use",
            Cause::TestFailed => "test_failed",
        }
    }
}

/// What a failed run said of the object it was about, when it said one of these: what the
/// driver acts on (a release or object that is not there, a namespace that already is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The release (helm's `release: not found`) or the object (kubectl's
    /// `Error from server (NotFound)`) does not exist.
    NotFound,
    /// The object already exists (kubectl's `AlreadyExists`).
    AlreadyExists,
    /// The API server refused the account (kubectl's `Error from server (Forbidden)`).
    Forbidden,
}

/// A helm or kubectl run that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelmFailure {
    /// Whether a retry can help.
    pub class: Failure,
    /// The common failure it is, if it is one.
    pub cause: Option<Cause>,
    /// What it said of the object it was about, if it said one of the [`Answer`]s.
    pub answer: Option<Answer>,
    /// Its stderr, the `Error:` line first, without Helm's log lines, control characters or
    /// the secrets the driver used, cut at 4 KiB with a marker (never holds values: they are
    /// passed in a file; never a Secret's data).
    pub text: String,
}

impl fmt::Display for HelmFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cause_has_its_own_label_among_the_labels() {
        let causes = [
            Cause::ChartNotFound,
            Cause::RepositoryUnreachable,
            Cause::WaitTimeout(Vec::new()),
            Cause::Forbidden {
                user: "u".into(),
                cannot: "c".into(),
            },
            Cause::NotAllowed,
            Cause::OwnedElsewhere {
                object: "o".into(),
                release: None,
            },
            Cause::AnotherOperation,
            Cause::NameInUse,
            Cause::TestFailed,
        ];
        let labels: Vec<&str> = causes.iter().map(Cause::label).collect();
        assert_eq!(labels, Cause::LABELS);
    }
}

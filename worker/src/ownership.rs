//! Who owns a release or a namespace helmq created, and who a job acts as.
//!
//! Every release helmq installs and every namespace it creates carries owner labels: the
//! namespace, name and uid of the Component the job was issued for (for an orchestrator job, the
//! subject's namespace and the name it gives, with an empty uid, so an orchestrator can never
//! pass for a Component). A job acts on a release only when the owners are equal; a release
//! without owner labels is taken over only when the job says so (`config.adopt`). The decision
//! is the pure [`judge`]; the driver reads the labels.
//!
//! The identity a job's Kubernetes calls run as is the tenant's ServiceAccount
//! ([`Identity::for_job`]): the namespace is the job's Component namespace, which admission has
//! checked equals its subject's, never the release namespace a publisher picks.

use std::collections::BTreeMap;
use std::fmt;

use helmq_schemas::JobEvent;
use sha2::{Digest, Sha256};

/// The label holding the owner's namespace.
pub const OWNER_NAMESPACE_LABEL: &str = "helmq.io/owner-namespace";
/// The label holding the owner's name (a digest form when the name is longer than a label
/// value may be).
pub const OWNER_NAME_LABEL: &str = "helmq.io/owner-name";
/// The label holding the owner Component's uid; empty for an orchestrator (uid-less) job.
pub const OWNER_UID_LABEL: &str = "helmq.io/owner-uid";

/// Longest label value Kubernetes accepts.
const MAX_LABEL_VALUE: usize = 63;

/// Why a job may not act on a release.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OwnershipError {
    /// The release belongs to someone else.
    #[error("release {release} belongs to {owner}; helmq leaves it alone")]
    Foreign {
        /// `namespace/name` of the release.
        release: String,
        /// Who owns it.
        owner: Owner,
    },
    /// The release has no helmq owner and the job does not adopt it.
    #[error(
        "release {release} exists and was not installed by helmq for this Component; set config.adopt: true to take it over"
    )]
    Unowned {
        /// `namespace/name` of the release.
        release: String,
    },
    /// The release's owner labels cannot be read.
    #[error("cannot tell who owns release {release}: {reason}")]
    Unknown {
        /// `namespace/name` of the release.
        release: String,
        /// Why.
        reason: String,
    },
}

/// The owner of what helmq creates for a job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    /// The Component's (or the orchestrator job subject's) namespace.
    pub namespace: String,
    /// The name, as a label value ([`label_value`]).
    pub name: String,
    /// The Component's uid; empty for an orchestrator job.
    pub uid: String,
}

impl Owner {
    /// The owner of what `job` creates.
    pub fn of(job: &JobEvent) -> Owner {
        Owner {
            namespace: job.component.namespace.clone(),
            name: label_value(&job.component.name),
            uid: job.component.uid.clone().unwrap_or_default(),
        }
    }

    /// The owner labels, as `key=value` pairs.
    pub fn labels(&self) -> [(&'static str, &str); 3] {
        [
            (OWNER_NAMESPACE_LABEL, &self.namespace),
            (OWNER_NAME_LABEL, &self.name),
            (OWNER_UID_LABEL, &self.uid),
        ]
    }

    /// The owner the labels name; `None` when they name none (no namespace label).
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Option<Owner> {
        let get = |key: &str| labels.get(key).cloned().unwrap_or_default();
        labels.get(OWNER_NAMESPACE_LABEL).map(|namespace| Owner {
            namespace: namespace.clone(),
            name: get(OWNER_NAME_LABEL),
            uid: get(OWNER_UID_LABEL),
        })
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.uid.is_empty() {
            write!(f, "orchestrator jobs for {}/{}", self.namespace, self.name)
        } else {
            write!(
                f,
                "Component {}/{} (uid {})",
                self.namespace, self.name, self.uid
            )
        }
    }
}

/// `name` as a label value: itself when it fits (Component names are DNS subdomains, whose
/// characters labels accept), else its first 40 characters and a digest of the whole.
pub fn label_value(name: &str) -> String {
    if name.len() <= MAX_LABEL_VALUE {
        return name.to_owned();
    }
    let digest = Sha256::digest(name.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let head = name
        .get(..40)
        .unwrap_or(name)
        .trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{head}-{hex}")
}

/// What a job may do with an existing release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Its owner is the job's.
    Ours,
    /// It has no owner labels and the job adopts it: the next upgrade labels it.
    Adopted,
}

/// Whether a job owned by `ours` may act on `release`, whose newest record carries `labels`.
///
/// # Errors
///
/// [`OwnershipError::Foreign`] for another owner, [`OwnershipError::Unowned`] for a release
/// without owner labels that the job does not adopt.
pub fn judge(
    release: &str,
    labels: &BTreeMap<String, String>,
    ours: &Owner,
    adopt: bool,
) -> Result<Ownership, OwnershipError> {
    match Owner::from_labels(labels) {
        Some(owner) if owner == *ours => Ok(Ownership::Ours),
        Some(owner) => Err(OwnershipError::Foreign {
            release: release.to_owned(),
            owner,
        }),
        None if adopt => Ok(Ownership::Adopted),
        None => Err(OwnershipError::Unowned {
            release: release.to_owned(),
        }),
    }
}

/// Whose rights a job's Kubernetes calls use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The worker's own (single-tenant mode: no ServiceAccount configured).
    Worker,
    /// An impersonated user, `system:serviceaccount:<tenant>:<account>`.
    User(String),
}

impl Identity {
    /// The identity of `job`: its `config.serviceAccountName`, else the worker's
    /// `default_account`, in the job's Component namespace; the worker's own without either.
    pub fn for_job(job: &JobEvent, default_account: Option<&str>) -> Identity {
        match job
            .config
            .service_account_name
            .as_deref()
            .or(default_account)
        {
            Some(account) => Identity::User(format!(
                "system:serviceaccount:{}:{account}",
                job.component.namespace
            )),
            None => Identity::Worker,
        }
    }

    /// The impersonated user, if any.
    pub fn user(&self) -> Option<&str> {
        match self {
            Identity::Worker => None,
            Identity::User(user) => Some(user),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Worker => f.write_str("the worker's own account"),
            Identity::User(user) => f.write_str(user),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(namespace: &str, name: &str, uid: &str) -> Owner {
        Owner {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn only_the_same_owner_acts_and_an_unowned_release_only_when_adopted() {
        let ours = owner("team-a", "web", "u-1");
        let helm_only = labels(&[("name", "web"), ("owner", "helm")]);
        let same = labels(&[
            (OWNER_NAMESPACE_LABEL, "team-a"),
            (OWNER_NAME_LABEL, "web"),
            (OWNER_UID_LABEL, "u-1"),
        ]);
        let recreated = labels(&[
            (OWNER_NAMESPACE_LABEL, "team-a"),
            (OWNER_NAME_LABEL, "web"),
            (OWNER_UID_LABEL, "u-0"),
        ]);
        let other_tenant = labels(&[
            (OWNER_NAMESPACE_LABEL, "team-b"),
            (OWNER_NAME_LABEL, "db"),
            (OWNER_UID_LABEL, "u-9"),
        ]);
        let orchestrator = labels(&[
            (OWNER_NAMESPACE_LABEL, "team-a"),
            (OWNER_NAME_LABEL, "web"),
            (OWNER_UID_LABEL, ""),
        ]);
        let foreign = |owner: Owner| {
            Err(OwnershipError::Foreign {
                release: "team-a/web".into(),
                owner,
            })
        };
        let cases = [
            (&same, false, Ok(Ownership::Ours)),
            (&same, true, Ok(Ownership::Ours)),
            (&helm_only, true, Ok(Ownership::Adopted)),
            (
                &helm_only,
                false,
                Err(OwnershipError::Unowned {
                    release: "team-a/web".into(),
                }),
            ),
            // adopt never takes a release someone else owns
            (&other_tenant, true, foreign(owner("team-b", "db", "u-9"))),
            (&recreated, false, foreign(owner("team-a", "web", "u-0"))),
            (&orchestrator, true, foreign(owner("team-a", "web", ""))),
        ];
        for (found, adopt, expected) in cases {
            assert_eq!(
                judge("team-a/web", found, &ours, adopt),
                expected,
                "{found:?} adopt={adopt}"
            );
        }
    }

    #[test]
    fn an_orchestrator_never_passes_for_a_component() {
        let component = owner("team-a", "web", "u-1");
        let orchestrator = owner("team-a", "web", "");
        assert_ne!(component, orchestrator);
        assert_eq!(orchestrator.to_string(), "orchestrator jobs for team-a/web");
        assert_eq!(component.to_string(), "Component team-a/web (uid u-1)");
        let text = OwnershipError::Foreign {
            release: "team-b/db".into(),
            owner: owner("team-b", "db", "u-9"),
        }
        .to_string();
        assert_eq!(
            text,
            "release team-b/db belongs to Component team-b/db (uid u-9); helmq leaves it alone"
        );
    }

    #[test]
    fn long_names_become_valid_distinct_label_values() {
        let short = "web";
        assert_eq!(label_value(short), "web");
        let long_a = format!("{}-a", "x".repeat(70));
        let long_b = format!("{}-b", "x".repeat(70));
        let (a, b) = (label_value(&long_a), label_value(&long_b));
        assert_ne!(a, b);
        for value in [&a, &b] {
            assert!(value.len() <= MAX_LABEL_VALUE, "{value}");
            assert!(value.starts_with(&"x".repeat(40)), "{value}");
        }
        // a cut that ends in '-' or '.' is trimmed: label values end alphanumeric
        let dashed = format!("{}-{}", "y".repeat(39), "z".repeat(40));
        assert!(label_value(&dashed).starts_with(&format!("{}-", "y".repeat(39))));
        assert!(!label_value(&dashed).contains("--"));
    }

    #[test]
    fn the_identity_is_the_tenants_account_in_the_components_namespace() {
        let mut job: JobEvent = serde_json::from_value(serde_json::json!({
            "schema": "helmq.job/v1", "id": "j", "action": "apply",
            "component": {"namespace": "team-a", "name": "web", "generation": 1},
            "config": {
                "releaseName": "web", "releaseNamespace": "team-b",
                "source": {"type": "http",
                    "repository": {"url": "http://charts.example", "name": "r"},
                    "chart": {"name": "c", "version": "1.0.0"}}
            },
            "timeoutSeconds": 60, "requestedAt": "2026-12-07T00:00:00Z"
        }))
        .expect("a job");
        assert_eq!(Identity::for_job(&job, None), Identity::Worker);
        assert_eq!(
            Identity::for_job(&job, Some("deployer")).user(),
            Some("system:serviceaccount:team-a:deployer")
        );
        job.config.service_account_name = Some("web-deployer".into());
        assert_eq!(
            Identity::for_job(&job, Some("deployer")).user(),
            Some("system:serviceaccount:team-a:web-deployer")
        );
    }
}

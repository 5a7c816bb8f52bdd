//! Whose a job is and what it may touch (issue 12 items 5 and 8), as pure decisions:
//!
//! - **Release namespaces.** A job installs into its own object's namespace (a Component's
//!   namespace; for an orchestrator's job, the namespace in its `component` reference, which its
//!   subject names and which NATS permissions can bind to that orchestrator). Any other release
//!   namespace must be in the operator's `--allowed-foreign-release-namespaces`.
//! - **Owners.** helmq writes [`Owner::labels`] on every release it installs or upgrades (Helm's
//!   release labels, `--labels`) and on every namespace it creates. A release whose labels name
//!   another object is never upgraded or uninstalled; one without helmq's labels (made by a
//!   person, or by a helmq older than these labels) only with the operator's
//!   `--adopt-unlabelled-releases`. A namespace is deleted only when helmq's labels on it name the
//!   same owner: a namespace helmq found is never deleted.
//! - **Impersonation.** helm (and kubectl) run as the ServiceAccount the config names
//!   (`serviceAccountName`, in the release namespace) or the operator's
//!   `--default-service-account`; `--require-impersonation` refuses a job with neither.

use std::collections::BTreeMap;
use std::fmt;

use helmq_schemas::HelmConfig;
use helmq_schemas::event::{ComponentRef, JobEvent};
use sha2::Digest as _;

/// Label naming helmq as the manager of a release or namespace.
pub const MANAGED_BY: &str = "helmq.io/managed-by";
/// The value of [`MANAGED_BY`].
pub const HELMQ: &str = "helmq";
/// Label holding [`Owner::key`]: the one label ownership is decided on.
pub const OWNER: &str = "helmq.io/owner";
/// Label with the owner's namespace (for people and `helm list -l`).
pub const OWNER_NAMESPACE: &str = "helmq.io/owner-namespace";
/// Label with the owner's name (shortened with a hash when it is no label value).
pub const OWNER_NAME: &str = "helmq.io/owner-name";
/// Label with the owner's uid, when it has one.
pub const OWNER_UID: &str = "helmq.io/owner-uid";

/// Longest Kubernetes label value.
const MAX_LABEL_VALUE: usize = 63;

/// The operator's tenancy rules for a worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tenancy {
    /// Release namespaces a job may use although they are not its object's own.
    pub foreign_namespaces: Vec<String>,
    /// Whether a release without helmq's owner labels may be taken over (and labelled).
    pub adopt_unlabelled: bool,
    /// The ServiceAccount helm runs as when a config names none.
    pub default_service_account: Option<String>,
    /// Whether a job without a ServiceAccount (and no default) is refused.
    pub require_impersonation: bool,
}

/// Why a job breaks the tenancy rules (the dead-letter reason and the `Failed` message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenancyError {
    /// The release namespace is not the object's own and not allowed as a foreign one.
    #[error(
        "releaseNamespace {release_namespace} is not the namespace of {namespace}/{name}; \
         installing into another namespace needs the operator's --allowed-foreign-release-namespaces \
         (allowed: {allowed})"
    )]
    ForeignNamespace {
        /// The release namespace asked for.
        release_namespace: String,
        /// The object's namespace.
        namespace: String,
        /// The object's name.
        name: String,
        /// The allowed foreign namespaces, or `none`.
        allowed: String,
    },
    /// Impersonation is required and the job has no ServiceAccount.
    #[error(
        "no ServiceAccount to run helm as: this worker requires impersonation \
         (--require-impersonation); set serviceAccountName in the config, or \
         --default-service-account on the worker"
    )]
    NoServiceAccount,
}

impl Tenancy {
    /// Checks a job against the release-namespace and impersonation rules.
    ///
    /// # Errors
    ///
    /// The first rule the job breaks.
    pub fn check(&self, job: &JobEvent) -> Result<(), TenancyError> {
        let config = &job.config;
        let component = &job.component;
        if config.release_namespace != component.namespace
            && !self.foreign_namespaces.contains(&config.release_namespace)
        {
            return Err(TenancyError::ForeignNamespace {
                release_namespace: config.release_namespace.clone(),
                namespace: component.namespace.clone(),
                name: component.name.clone(),
                allowed: if self.foreign_namespaces.is_empty() {
                    "none".to_owned()
                } else {
                    self.foreign_namespaces.join(", ")
                },
            });
        }
        if self.require_impersonation && self.identity(config).is_none() {
            return Err(TenancyError::NoServiceAccount);
        }
        Ok(())
    }

    /// The account helm runs as for `config`: its `serviceAccountName`, else the default; `None`
    /// runs helm with the worker's own credentials.
    pub fn identity(&self, config: &HelmConfig) -> Option<Impersonation> {
        config
            .service_account_name
            .as_ref()
            .or(self.default_service_account.as_ref())
            .map(|account| Impersonation {
                namespace: config.release_namespace.clone(),
                service_account: account.clone(),
            })
    }
}

/// A ServiceAccount helm and kubectl impersonate, in the release namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Impersonation {
    /// The ServiceAccount's namespace (the release namespace).
    pub namespace: String,
    /// Its name.
    pub service_account: String,
}

impl Impersonation {
    /// `system:serviceaccount:<ns>:<name>`, the user name Kubernetes gives the account.
    pub fn user(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }

    /// The groups Kubernetes puts every ServiceAccount of the namespace in.
    pub fn groups(&self) -> [String; 2] {
        [
            "system:serviceaccounts".to_owned(),
            format!("system:serviceaccounts:{}", self.namespace),
        ]
    }
}

/// The object a release or namespace belongs to: a Component, or an orchestrator's object
/// (namespace and name, without a uid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its uid, when it has one: a Component deleted and created again under the same name is
    /// another owner.
    pub uid: Option<String>,
}

impl Owner {
    /// The owner of a job's release.
    pub fn of(component: &ComponentRef) -> Owner {
        Owner {
            namespace: component.namespace.clone(),
            name: component.name.clone(),
            uid: component.uid.clone(),
        }
    }

    /// A label value that identifies this owner exactly: 40 hex digits of the SHA-256 of
    /// namespace, name and uid.
    pub fn key(&self) -> String {
        let mut digest = sha2::Sha256::new();
        for part in [
            self.namespace.as_str(),
            self.name.as_str(),
            self.uid.as_deref().unwrap_or(""),
        ] {
            digest.update(part.as_bytes());
            digest.update([0]);
        }
        hex(&digest.finalize()[..20])
    }

    /// The labels helmq writes on what it creates for this owner, as `key=value` pairs.
    pub fn labels(&self) -> Vec<(&'static str, String)> {
        let mut labels = vec![
            (MANAGED_BY, HELMQ.to_owned()),
            (OWNER, self.key()),
            (OWNER_NAMESPACE, label_value(&self.namespace)),
            (OWNER_NAME, label_value(&self.name)),
        ];
        if let Some(uid) = &self.uid {
            labels.push((OWNER_UID, label_value(uid)));
        }
        labels
    }

    /// The labels as Helm's `--labels` takes them: `k=v,k=v`.
    pub fn labels_flag(&self) -> String {
        self.labels()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A label selector matching what is not this owner's (including what has no owner label).
    pub fn not_mine_selector(&self) -> String {
        format!("{OWNER}!={}", self.key())
    }

    /// A label selector matching only what helmq created for this owner.
    pub fn mine_selector(&self) -> String {
        format!("{MANAGED_BY}={HELMQ},{OWNER}={}", self.key())
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if let Some(uid) = &self.uid {
            write!(f, " (uid {uid})")?;
        }
        Ok(())
    }
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `text` as a Kubernetes label value: itself when it is one, else its allowed characters cut
/// to 52 and followed by `-` and 10 hex digits of its hash (so two long names never share one).
pub fn label_value(text: &str) -> String {
    if is_label_value(text) {
        return text.to_owned();
    }
    let kept: String = text
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(MAX_LABEL_VALUE - 11)
        .collect();
    let kept = kept.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let hash = hex(&sha2::Sha256::digest(text.as_bytes())[..5]);
    if kept.is_empty() {
        hash
    } else {
        format!("{kept}-{hash}")
    }
}

/// Whether `text` is a valid label value: at most 63 of `[A-Za-z0-9-_.]`, alphanumeric at both
/// ends (or empty).
fn is_label_value(text: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    text.len() <= MAX_LABEL_VALUE
        && text
            .chars()
            .all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
        && text.chars().next().is_none_or(alnum)
        && text.chars().last().is_none_or(alnum)
}

/// Who owns an existing release, as far as its labels tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseOwner {
    /// No such release, or this owner's own.
    MineOrAbsent,
    /// The release has no helmq owner label.
    Unlabelled,
    /// Another object's release; its owner as the labels describe it, when they could be read.
    Other(Option<String>),
}

/// What a job may do with the release it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Takeover {
    /// Go ahead.
    Proceed,
    /// Go ahead and take the unlabelled release over (the job labels it); the note says so.
    Adopt(String),
    /// Leave the release alone; why.
    Refuse(String),
}

/// Whether a job of `owner` may install, upgrade or uninstall release `release` in `namespace`
/// that [`ReleaseOwner`] `found` describes.
pub fn takeover(
    release: &str,
    namespace: &str,
    found: &ReleaseOwner,
    adopt_unlabelled: bool,
) -> Takeover {
    match found {
        ReleaseOwner::MineOrAbsent => Takeover::Proceed,
        ReleaseOwner::Unlabelled if adopt_unlabelled => Takeover::Adopt(format!(
            "adopted release {release} in namespace {namespace}, which had no helmq owner \
             (--adopt-unlabelled-releases)"
        )),
        ReleaseOwner::Unlabelled => Takeover::Refuse(format!(
            "release {release} in namespace {namespace} was not installed by helmq for this \
             object (it has no {OWNER} label: installed by hand or by another tool); helmq does \
             not take it over (an operator may allow that with --adopt-unlabelled-releases)"
        )),
        ReleaseOwner::Other(owner) => Takeover::Refuse(format!(
            "release {release} in namespace {namespace} belongs to {}; helmq does not take over \
             a release another object owns",
            owner.as_deref().unwrap_or("another helmq object")
        )),
    }
}

/// The owner helmq's labels describe, e.g. `apps/web (uid 1234)`; `None` without an owner
/// label.
pub fn describe_owner(labels: &BTreeMap<String, String>) -> Option<String> {
    labels.get(OWNER)?;
    let namespace = labels.get(OWNER_NAMESPACE).map_or("?", String::as_str);
    let name = labels.get(OWNER_NAME).map_or("?", String::as_str);
    Some(match labels.get(OWNER_UID) {
        Some(uid) => format!("{namespace}/{name} (uid {uid})"),
        None => format!("{namespace}/{name}"),
    })
}

/// Whether a managed namespace is to be deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceFate {
    /// helmq created it for this owner: delete it.
    Delete,
    /// Keep it; why (for the status message).
    Keep(String),
}

/// [`NamespaceFate::Keep`] when `namespace` is the owner's own (never deleted, whatever its
/// labels; decided before reading them).
pub fn own_namespace(namespace: &str, owner: &Owner) -> Option<NamespaceFate> {
    (namespace == owner.namespace).then(|| {
        NamespaceFate::Keep(format!(
            "namespace {namespace} was not deleted: it is the Component's own namespace"
        ))
    })
}

/// Whether to delete `namespace`, whose labels are `labels` (`None` when it is gone), at the end
/// of `owner`'s release.
pub fn namespace_fate(
    namespace: &str,
    labels: Option<&BTreeMap<String, String>>,
    owner: &Owner,
) -> NamespaceFate {
    if let Some(kept) = own_namespace(namespace, owner) {
        return kept;
    }
    let Some(labels) = labels else {
        return NamespaceFate::Keep(format!("namespace {namespace} was already gone"));
    };
    if labels.get(MANAGED_BY).map(String::as_str) != Some(HELMQ) {
        return NamespaceFate::Keep(format!(
            "namespace {namespace} was not deleted: helmq did not create it"
        ));
    }
    if labels.get(OWNER) != Some(&owner.key()) {
        return NamespaceFate::Keep(format!(
            "namespace {namespace} was not deleted: helmq created it for {}",
            describe_owner(labels).unwrap_or_else(|| "another object".to_owned())
        ));
    }
    NamespaceFate::Delete
}

#[cfg(test)]
mod tests {
    use helmq_schemas::config::{ChartRef, Repository};
    use helmq_schemas::{ChartSource, event::JobAction};

    use super::*;

    fn owner(ns: &str, name: &str, uid: Option<&str>) -> Owner {
        Owner {
            namespace: ns.into(),
            name: name.into(),
            uid: uid.map(Into::into),
        }
    }

    fn job(component_ns: &str, release_ns: &str, account: Option<&str>) -> JobEvent {
        let config = HelmConfig {
            release_name: "web".into(),
            release_namespace: release_ns.into(),
            manage_namespace: true,
            source: ChartSource::Http {
                repository: Repository {
                    url: "https://charts.example.com/".into(),
                    name: "example".into(),
                },
                chart: ChartRef {
                    name: "web".into(),
                    version: "1.0.0".into(),
                },
            },
            values: serde_json::Map::new(),
            service_account_name: account.map(Into::into),
        };
        JobEvent::new(
            JobAction::Apply,
            ComponentRef {
                namespace: component_ns.into(),
                name: "web".into(),
                uid: Some("u1".into()),
                generation: 1,
            },
            config,
            300,
            jiff::Timestamp::UNIX_EPOCH,
        )
    }

    #[test]
    fn a_release_namespace_other_than_the_objects_own_needs_the_operators_allowlist() {
        let open = Tenancy {
            foreign_namespaces: vec!["shared".into()],
            ..Tenancy::default()
        };
        let closed = Tenancy::default();
        // (rules, component ns, release ns, accepted)
        let cases = [
            (&closed, "team-a", "team-a", true),
            // The attack: team-a installing into team-b.
            (&closed, "team-a", "team-b", false),
            (&open, "team-a", "team-b", false),
            (&open, "team-a", "shared", true),
            (&closed, "team-a", "shared", false),
        ];
        for (rules, component_ns, release_ns, accepted) in cases {
            let result = rules.check(&job(component_ns, release_ns, None));
            assert_eq!(result.is_ok(), accepted, "{component_ns} → {release_ns}");
        }
        assert_eq!(
            closed
                .check(&job("team-a", "team-b", None))
                .unwrap_err()
                .to_string(),
            "releaseNamespace team-b is not the namespace of team-a/web; installing into another \
             namespace needs the operator's --allowed-foreign-release-namespaces (allowed: none)"
        );
    }

    #[test]
    fn helm_runs_as_the_configs_account_else_the_default_and_impersonation_can_be_required() {
        let plain = Tenancy::default();
        let defaulted = Tenancy {
            default_service_account: Some("deployer".into()),
            ..Tenancy::default()
        };
        let required = Tenancy {
            require_impersonation: true,
            ..Tenancy::default()
        };
        let as_ = |account: &str| {
            Some(Impersonation {
                namespace: "apps".into(),
                service_account: account.into(),
            })
        };
        // (rules, config's account, identity, accepted)
        let cases = [
            (&plain, None, None, true),
            (&plain, Some("tenant"), as_("tenant"), true),
            (&defaulted, None, as_("deployer"), true),
            (&defaulted, Some("tenant"), as_("tenant"), true),
            (&required, Some("tenant"), as_("tenant"), true),
            (&required, None, None, false),
        ];
        for (rules, account, identity, accepted) in cases {
            let job = job("apps", "apps", account);
            assert_eq!(rules.identity(&job.config), identity, "{account:?}");
            assert_eq!(rules.check(&job).is_ok(), accepted, "{account:?}");
        }
        assert_eq!(
            required.check(&job("apps", "apps", None)),
            Err(TenancyError::NoServiceAccount)
        );
        let tenant = as_("tenant").unwrap();
        assert_eq!(tenant.user(), "system:serviceaccount:apps:tenant");
        assert_eq!(
            tenant.groups(),
            ["system:serviceaccounts", "system:serviceaccounts:apps"]
        );
    }

    #[test]
    fn owners_are_told_apart_by_namespace_name_and_uid_in_label_values() {
        let a = owner(
            "team-a",
            "web",
            Some("8c3f0c6e-1b2a-4c1d-9f00-0123456789ab"),
        );
        let keys = [
            a.key(),
            owner("team-b", "web", a.uid.as_deref()).key(),
            owner("team-a", "web2", a.uid.as_deref()).key(),
            owner("team-a", "web", Some("another-uid")).key(),
            owner("team-a", "web", None).key(),
            // No ambiguity from joining: "a" + "b-c" is not "a-b" + "c".
            owner("a", "b-c", None).key(),
            owner("a-b", "c", None).key(),
        ];
        let distinct: std::collections::BTreeSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len());
        assert!(keys.iter().all(|k| k.len() == 40 && is_label_value(k)));
        assert_eq!(
            a.labels_flag(),
            format!(
                "helmq.io/managed-by=helmq,helmq.io/owner={},helmq.io/owner-namespace=team-a,\
                 helmq.io/owner-name=web,helmq.io/owner-uid=8c3f0c6e-1b2a-4c1d-9f00-0123456789ab",
                a.key()
            )
        );
        assert_eq!(
            a.not_mine_selector(),
            format!("helmq.io/owner!={}", a.key())
        );
        assert_eq!(
            owner("o", "web", None).labels().len(),
            4,
            "no uid label without a uid"
        );
        // Names that are no label values are shortened with a hash, and stay distinct.
        let long = "a".repeat(200);
        let long2 = format!("{}b", "a".repeat(199));
        for text in [long.as_str(), &long2, "x.y.z-", "odd:uid", "::"] {
            let value = label_value(text);
            assert!(is_label_value(&value), "{text} → {value}");
        }
        assert_ne!(label_value(&long), label_value(&long2));
        assert_eq!(label_value("web.example"), "web.example");
    }

    #[test]
    fn no_release_is_taken_over_from_another_owner() {
        // (found, adopt flag, want)
        let cases = [
            (ReleaseOwner::MineOrAbsent, false, "proceed"),
            // Attack: a release installed by hand (or another tool) under the same name.
            (ReleaseOwner::Unlabelled, false, "refuse"),
            (ReleaseOwner::Unlabelled, true, "adopt"),
            // Attack: another Component's release (also a late delete of a deleted object
            // whose name a new object took: the uid differs).
            (
                ReleaseOwner::Other(Some("team-b/web (uid u2)".into())),
                false,
                "refuse",
            ),
            (
                ReleaseOwner::Other(Some("team-b/web (uid u2)".into())),
                true,
                "refuse",
            ),
            (ReleaseOwner::Other(None), true, "refuse"),
        ];
        for (found, adopt, want) in cases {
            let got = takeover("web", "apps", &found, adopt);
            let kind = match &got {
                Takeover::Proceed => "proceed",
                Takeover::Adopt(_) => "adopt",
                Takeover::Refuse(_) => "refuse",
            };
            assert_eq!(kind, want, "{found:?} adopt={adopt}");
        }
        let Takeover::Refuse(message) = takeover(
            "web",
            "apps",
            &ReleaseOwner::Other(Some("team-b/web (uid u2)".into())),
            false,
        ) else {
            unreachable!()
        };
        assert_eq!(
            message,
            "release web in namespace apps belongs to team-b/web (uid u2); helmq does not take \
             over a release another object owns"
        );
        let Takeover::Refuse(message) = takeover("web", "apps", &ReleaseOwner::Unlabelled, false)
        else {
            unreachable!()
        };
        assert!(message.contains("was not installed by helmq"), "{message}");
    }

    #[test]
    fn only_a_namespace_helmq_created_for_the_same_owner_is_deleted() {
        let me = owner("team-a", "web", Some("u1"));
        let labels = |o: &Owner| -> BTreeMap<String, String> {
            o.labels()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect()
        };
        let mine = labels(&me);
        let theirs = labels(&owner("team-a", "web", Some("u2")));
        let found: BTreeMap<String, String> =
            [("kubernetes.io/metadata.name".to_owned(), "apps".to_owned())].into();
        let forged_manager: BTreeMap<String, String> =
            [(MANAGED_BY.to_owned(), HELMQ.to_owned())].into();
        // (namespace, labels, delete?)
        let cases = [
            ("apps", Some(&mine), true),
            // Attack: a namespace helmq found (created by someone else) is never deleted.
            ("apps", Some(&found), false),
            ("apps", Some(&forged_manager), false),
            // Created by helmq for the earlier object of the same name.
            ("apps", Some(&theirs), false),
            ("apps", None, false),
            // The object's own namespace, whatever its labels.
            ("team-a", Some(&mine), false),
        ];
        for (namespace, labels, delete) in cases {
            let fate = namespace_fate(namespace, labels, &me);
            assert_eq!(
                fate == NamespaceFate::Delete,
                delete,
                "{namespace} {labels:?}"
            );
        }
        assert_eq!(
            namespace_fate("apps", Some(&found), &me),
            NamespaceFate::Keep("namespace apps was not deleted: helmq did not create it".into())
        );
        assert_eq!(
            namespace_fate("apps", Some(&theirs), &me),
            NamespaceFate::Keep(
                "namespace apps was not deleted: helmq created it for team-a/web (uid u2)".into()
            )
        );
    }
}

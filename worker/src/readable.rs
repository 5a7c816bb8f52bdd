//! Status messages people can act on: [`readable`] keeps what happened (Helm's or kubectl's
//! own words, already made readable by the driver) and adds what to do next for the common
//! failures, recognised by [`cause`] from that text:
//!
//! - the chart or its version is not in the repository, or the repository cannot be reached;
//! - Helm's wait timed out, naming the resources that were not ready;
//! - the worker's ServiceAccount is forbidden something by RBAC;
//! - the chart source or release namespace is not on the workers' allowlist;
//! - an object the chart renders exists and belongs to another release (or to none).
//!
//! Two Components naming the same release are not told apart: helmq has no notion of a
//! release's owner (the lease only serialises their runs), so the second one simply upgrades
//! the release.
//!
//! Pure functions over text, with a table test of Helm v4's real messages.

/// What went wrong, as far as the text tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The chart, or that version of it, is not in the repository.
    ChartNotFound,
    /// The repository's `index.yaml` cannot be fetched.
    RepositoryUnreachable,
    /// Helm's wait ran out; the resources it named as not ready (`Kind namespace/name`).
    WaitTimeout(Vec<String>),
    /// RBAC refused the worker: who, and the sentence of what it cannot do.
    Forbidden {
        /// The user (`system:serviceaccount:...`).
        user: String,
        /// `list resource "secrets" in API group "" in the namespace "cap"`.
        cannot: String,
    },
    /// The allowlist refused the chart source or the release namespace.
    NotAllowed,
    /// An object of the chart exists outside this release.
    OwnedElsewhere {
        /// `ConfigMap "taken-config" in namespace "cap"`.
        object: String,
        /// The release that has it, when the object says (`None`: no Helm release).
        release: Option<String>,
    },
}

/// The cause of a failure, from its readable text; `None` when it is none of the common ones.
pub fn cause(text: &str) -> Option<Cause> {
    let lower = text.to_lowercase();
    if lower.contains("is not allowed (allowed sources:")
        || lower.contains("is not allowed (allowed namespaces:")
    {
        return Some(Cause::NotAllowed);
    }
    if let Some((user, rest)) = after(text, "is forbidden: User \"").and_then(|r| r.split_once('"'))
        && let Some(cannot) = rest.trim_start().strip_prefix("cannot ")
    {
        let cannot = cannot.lines().next().unwrap_or_default();
        return Some(Cause::Forbidden {
            user: user.to_owned(),
            cannot: cannot.trim_end_matches(['.', ' ']).to_owned(),
        });
    }
    if lower.contains("exists and cannot be imported into the current release") {
        let object = between(text, "unable to continue with install: ", " exists")
            .or_else(|| between(text, "unable to continue with update: ", " exists"))
            .unwrap_or("an object of the chart");
        let release = after(text, "\"meta.helm.sh/release-name\" must equal \"")
            .and_then(|rest| between(rest, "current value is \"", "\""))
            .map(str::to_owned);
        return Some(Cause::OwnedElsewhere {
            object: object.to_owned(),
            release,
        });
    }
    let not_ready: Vec<String> = text
        .match_indices("resource ")
        .filter_map(|(i, m)| {
            let rest = &text[i + m.len()..];
            let (resource, tail) = rest.split_once(' ')?;
            if !tail.starts_with("not ready") {
                return None;
            }
            let mut parts = resource.splitn(3, '/');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(kind), Some(namespace), Some(name)) => {
                    Some(format!("{kind} {namespace}/{name}"))
                }
                (Some(kind), Some(name), None) => Some(format!("{kind} {name}")),
                _ => None,
            }
        })
        .collect();
    if !not_ready.is_empty() {
        return Some(Cause::WaitTimeout(not_ready));
    }
    if lower.contains("timed out waiting for the condition") {
        return Some(Cause::WaitTimeout(Vec::new()));
    }
    if lower.contains("is not a valid chart repository or cannot be reached") {
        return Some(Cause::RepositoryUnreachable);
    }
    if (lower.contains("not found in") && lower.contains("repository"))
        || lower.contains("no chart version found")
        || lower.contains("no chart name found")
    {
        return Some(Cause::ChartNotFound);
    }
    None
}

/// What to do next about `cause`.
pub fn next_step(cause: &Cause) -> String {
    match cause {
        Cause::ChartNotFound => "check spec.config's chart name and version against the repository (`helm search repo <chart> --versions` after `helm repo add`) and fix the Component".to_owned(),
        Cause::RepositoryUnreachable => "check spec.config's repository URL (it must serve index.yaml) and that the workers can reach it".to_owned(),
        Cause::WaitTimeout(resources) if resources.is_empty() => "look at the release's pods (`kubectl get pods -n <release namespace>`, then `kubectl describe` the ones not ready: image, probes, resources), fix the chart values, or raise spec.deploymentTimeout".to_owned(),
        Cause::WaitTimeout(resources) => format!(
            "{} did not become ready in time: `kubectl describe` it and its pods (image, probes, resources, events), fix the values, or raise spec.deploymentTimeout",
            resources.join(", ")
        ),
        Cause::Forbidden { user, cannot } => format!(
            "{user} may not {cannot}: grant it in the workers' RBAC (deploy/rbac/worker.yaml) or release into a namespace they manage"
        ),
        Cause::NotAllowed => "use an allowed chart source and release namespace, or ask the helmq operator to add yours to the workers' --allowed-sources / --allowed-namespaces".to_owned(),
        Cause::OwnedElsewhere { object, release: Some(release) } => format!(
            "{object} belongs to Helm release {release}: give this release another name, or remove it from that release first"
        ),
        Cause::OwnedElsewhere { object, release: None } => format!(
            "{object} was not created by Helm: delete it, or adopt it by adding Helm's ownership labels and annotations, then edit the Component to retry"
        ),
    }
}

/// The status message: `happened` (the error and where the attempts stand) followed by what to
/// do next, when the cause of `error` (its readable text) is a common one.
pub fn readable(happened: String, error: &str) -> String {
    match cause(error) {
        Some(cause) => format!("{happened}; next: {}", next_step(&cause)),
        None => happened,
    }
}

/// The text after the first `start`, up to the first `end` after it.
fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let rest = &text[from..];
    Some(&rest[..rest.find(end)?])
}

/// The text after the first `start`, to the end.
fn after<'a>(text: &'a str, start: &str) -> Option<&'a str> {
    Some(&text[text.find(start)? + start.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    // Helm v4.2.3's own messages, captured on the rig (`$HELMQ_RIG/helm` against a real
    // kube-apiserver 1.32), as the worker reports them.
    const VERSION_NOT_FOUND: &str = r#"helm pull failed: Error: chart "demo" version "9.9.9" not found in http://127.0.0.1:18765 repository"#;
    const CHART_NOT_FOUND: &str = r#"helm pull failed: Error: chart "nosuch" version "0.1.0" not found in http://127.0.0.1:18765 repository"#;
    const REPOSITORY_404: &str = r#"helm pull failed: Error: looks like "http://127.0.0.1:18765/nope" is not a valid chart repository or cannot be reached: failed to fetch http://127.0.0.1:18765/nope/index.yaml : 404 File not found"#;
    const WAIT_TIMEOUT: &str = "helm upgrade failed: Error: UPGRADE FAILED: resource Deployment/cap/stuck-web not ready. status: InProgress, message: Available: 0/2\ncontext deadline exceeded";
    const NOT_HELMS: &str = r#"helm upgrade failed: Error: unable to continue with install: ConfigMap "taken-config" in namespace "cap" exists and cannot be imported into the current release: invalid ownership metadata; label validation error: missing key "app.kubernetes.io/managed-by": must be set to "Helm"; annotation validation error: missing key "meta.helm.sh/release-name": must be set to "taken"; annotation validation error: missing key "meta.helm.sh/release-namespace": must be set to "cap""#;
    const FORBIDDEN: &str = r#"helm upgrade failed: Error: query: failed to query with labels: secrets is forbidden: User "system:serviceaccount:cap:nobody" cannot list resource "secrets" in API group "" in the namespace "cap""#;

    #[test]
    fn common_failures_get_their_cause_and_next_step() {
        let cases: &[(&str, Option<Cause>, &str)] = &[
            (
                VERSION_NOT_FOUND,
                Some(Cause::ChartNotFound),
                "chart name and version",
            ),
            (
                CHART_NOT_FOUND,
                Some(Cause::ChartNotFound),
                "chart name and version",
            ),
            (
                REPOSITORY_404,
                Some(Cause::RepositoryUnreachable),
                "repository URL",
            ),
            (
                WAIT_TIMEOUT,
                Some(Cause::WaitTimeout(vec!["Deployment cap/stuck-web".into()])),
                "Deployment cap/stuck-web did not become ready in time",
            ),
            (
                "helm upgrade failed: Error: timed out waiting for the condition",
                Some(Cause::WaitTimeout(Vec::new())),
                "spec.deploymentTimeout",
            ),
            (
                NOT_HELMS,
                Some(Cause::OwnedElsewhere {
                    object: r#"ConfigMap "taken-config" in namespace "cap""#.into(),
                    release: None,
                }),
                "was not created by Helm",
            ),
            (
                FORBIDDEN,
                Some(Cause::Forbidden {
                    user: "system:serviceaccount:cap:nobody".into(),
                    cannot: r#"list resource "secrets" in API group "" in the namespace "cap""#
                        .into(),
                }),
                "deploy/rbac/worker.yaml",
            ),
            (
                "chart source http://evil.example/charts is not allowed (allowed sources: https://charts.example)",
                Some(Cause::NotAllowed),
                "--allowed-sources",
            ),
            (
                "release namespace kube-system is not allowed (allowed namespaces: apps)",
                Some(Cause::NotAllowed),
                "--allowed-namespaces",
            ),
            (
                "helm upgrade failed: Error: template: demo/templates/cm.yaml:3: unexpected EOF",
                None,
                "",
            ),
        ];
        for (text, want, step) in cases {
            let got = cause(text);
            assert_eq!(&got, want, "{text}");
            let happened = format!("{text} (attempt 1 of 5)");
            let message = readable(happened.clone(), text);
            if want.is_some() {
                let next = format!("{happened}; next: ");
                assert!(
                    message.starts_with(&next),
                    "what happened comes first: {message}"
                );
                assert!(message.contains(step), "{step:?} not in {message}");
            } else {
                assert_eq!(message, happened);
            }
        }
    }

    #[test]
    fn an_object_of_another_release_names_that_release() {
        let text = r#"Error: unable to continue with update: Service "web" in namespace "apps" exists and cannot be imported into the current release: invalid ownership metadata; annotation validation error: key "meta.helm.sh/release-name" must equal "web": current value is "shop"; annotation validation error: key "meta.helm.sh/release-namespace" must equal "apps": current value is "apps""#;
        assert_eq!(
            cause(text),
            Some(Cause::OwnedElsewhere {
                object: r#"Service "web" in namespace "apps""#.into(),
                release: Some("shop".into()),
            })
        );
        assert!(readable(text.into(), text).contains("belongs to Helm release shop"));
    }
}

//! Status messages people can act on: [`readable`] keeps what happened (Helm's or kubectl's
//! own words, already made readable by the driver) and adds what to do next ([`next_step`],
//! the one place with advice) for the common failures, whose [`Cause`] the driver read where
//! helm ran or the allowlist named:
//!
//! - the chart or its version is not in the repository, or the repository cannot be reached;
//! - Helm's wait timed out, naming the resources that were not ready;
//! - the worker's ServiceAccount is forbidden something by RBAC;
//! - the chart source or release namespace is not on the workers' allowlist;
//! - an object the chart renders exists and belongs to another release (or to none);
//! - the chart's tests (`helm test`, `config.test`) failed.
//!
//! Two Components naming the same release are not told apart: helmq has no notion of a
//! release's owner (the lease only serialises their runs), so the second one simply upgrades
//! the release.

pub use crate::failure::Cause;

/// What to do next about `cause`; `None` when there is nothing to do but let the worker
/// retry.
pub fn next_step(cause: &Cause) -> Option<String> {
    Some(match cause {
        Cause::ChartNotFound => "check spec.config's chart name and version against the repository (`helm search repo <chart> --versions` after `helm repo add`) and fix the Component".to_owned(),
        Cause::RepositoryUnreachable => "check spec.config's repository URL (it must serve index.yaml) and that the workers can reach it".to_owned(),
        Cause::WaitTimeout(resources) if resources.is_empty() => "look at the release's pods (`kubectl get pods -n <release namespace>`, then `kubectl describe` the ones not ready: image, probes, resources), fix the chart values, or raise spec.deploymentTimeout".to_owned(),
        Cause::WaitTimeout(resources) => format!(
            "{} did not become ready in time: `kubectl describe` it and its pods (image, probes, resources, events), fix the values, or raise spec.deploymentTimeout",
            resources.join(", ")
        ),
        Cause::Forbidden { user, cannot } => format!(
            "{user} may not {cannot}: grant it to that account (a tenant's account the job runs as: in its namespace, as deploy/examples/tenant.yaml does; the workers' own in single-tenant mode: deploy/rbac/worker.yaml), or release into a namespace it may use"
        ),
        Cause::NotAllowed => "use an allowed chart source and release namespace, or ask the helmq operator to add yours to the workers' --allowed-sources / --allowed-namespaces".to_owned(),
        Cause::OwnedElsewhere { object, release: Some(release) } => format!(
            "{object} belongs to Helm release {release}: give this release another name, or remove it from that release first"
        ),
        Cause::OwnedElsewhere { object, release: None } => format!(
            "{object} was not created by Helm: delete it, or adopt it by adding Helm's ownership labels and annotations, then edit the Component to retry"
        ),
        Cause::TestFailed => "look at the release's test pods (`kubectl describe pod -n <release namespace> <pod helm named>` and their logs), then fix the chart or its values, or turn config.test off".to_owned(),
        // Retried while attempts remain; a release a dead run left pending is recovered.
        // Both are handled by the worker itself (recovery, the owner check) before they can
        // end a job.
        Cause::AnotherOperation | Cause::NameInUse => return None,
    })
}

/// The status message: `happened` (the error and where the attempts stand) followed by what to
/// do next, when the failure's `cause` is a common one with advice.
pub fn readable(happened: String, cause: Option<&Cause>) -> String {
    match cause.and_then(next_step) {
        Some(next) => format!("{happened}; next: {next}"),
        None => happened,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_failures_get_their_next_step_after_what_happened() {
        let wait = || Cause::WaitTimeout(vec!["Deployment cap/stuck-web".into()]);
        let cases: Vec<(Option<Cause>, &str)> = vec![
            (Some(Cause::ChartNotFound), "chart name and version"),
            (Some(Cause::RepositoryUnreachable), "repository URL"),
            (
                Some(wait()),
                "Deployment cap/stuck-web did not become ready in time",
            ),
            (
                Some(Cause::WaitTimeout(Vec::new())),
                "spec.deploymentTimeout",
            ),
            (
                Some(Cause::OwnedElsewhere {
                    object: r#"ConfigMap "taken-config" in namespace "cap""#.into(),
                    release: None,
                }),
                "was not created by Helm",
            ),
            (
                Some(Cause::OwnedElsewhere {
                    object: r#"Service "web" in namespace "apps""#.into(),
                    release: Some("shop".into()),
                }),
                "belongs to Helm release shop",
            ),
            (
                Some(Cause::Forbidden {
                    user: "system:serviceaccount:cap:nobody".into(),
                    cannot: r#"list resource "secrets" in API group "" in the namespace "cap""#
                        .into(),
                }),
                "deploy/rbac/worker.yaml",
            ),
            (Some(Cause::NotAllowed), "--allowed-sources"),
            (Some(Cause::NotAllowed), "--allowed-namespaces"),
            (Some(Cause::TestFailed), "test pods"),
            (Some(Cause::AnotherOperation), ""),
            (None, ""),
        ];
        for (cause, step) in cases {
            let happened = "helm upgrade failed: Error: x (attempt 1 of 5)".to_owned();
            let message = readable(happened.clone(), cause.as_ref());
            if step.is_empty() {
                assert_eq!(message, happened, "{cause:?}");
            } else {
                let next = format!("{happened}; next: ");
                assert!(
                    message.starts_with(&next),
                    "what happened comes first: {message}"
                );
                assert!(message.contains(step), "{step:?} not in {message}");
            }
        }
    }
}

//! `helmqctl reconcile|suspend|resume <namespace>/<name>`: day-2 requests to the producer,
//! made as annotations on the Component (what GitOps tools and `kubectl annotate` can do too).
//! Needs no NATS, only the current kubeconfig and the right to patch Components.

use helmq_schemas::component::{Component, REQUESTED_AT_ANNOTATION, SUSPEND_ANNOTATION};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

/// Why the request could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AnnotateError {
    /// Not of the form `<namespace>/<name>`.
    #[error("expected <namespace>/<name>, got {0:?}")]
    Target(String),
    /// No usable kubeconfig or cluster.
    #[error("cannot reach the cluster of the current kubeconfig: {0}")]
    Client(#[source] kube::Error),
    /// The Component does not exist.
    #[error("component {0} not found")]
    NotFound(String),
    /// The API server refused the patch.
    #[error("cannot annotate component {target}: {source}")]
    Patch {
        /// `<namespace>/<name>`.
        target: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
}

/// A day-2 request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Apply the current generation again ([`REQUESTED_AT_ANNOTATION`] set to now).
    Reconcile,
    /// Stop Helm runs ([`SUSPEND_ANNOTATION`] `"true"`).
    Suspend,
    /// Lift a suspension ([`SUSPEND_ANNOTATION`] removed).
    Resume,
}

impl Request {
    /// The merge patch that makes the request at `now` (RFC 3339).
    pub fn patch(self, now: &str) -> Value {
        let (key, value) = match self {
            Request::Reconcile => (REQUESTED_AT_ANNOTATION, json!(now)),
            Request::Suspend => (SUSPEND_ANNOTATION, json!("true")),
            Request::Resume => (SUSPEND_ANNOTATION, Value::Null),
        };
        json!({"metadata": {"annotations": {key: value}}})
    }

    /// What was done, for the report.
    fn done(self) -> &'static str {
        match self {
            Request::Reconcile => "reconcile requested",
            Request::Suspend => "suspended",
            Request::Resume => "resumed",
        }
    }
}

/// Splits `<namespace>/<name>`.
pub fn parse_target(target: &str) -> Result<(&str, &str), AnnotateError> {
    match target.split_once('/') {
        Some((namespace, name))
            if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
        {
            Ok((namespace, name))
        }
        _ => Err(AnnotateError::Target(target.to_owned())),
    }
}

/// Makes `request` on the Component `target`; says what was done in one line.
pub async fn annotate(target: &str, request: Request) -> Result<String, AnnotateError> {
    let (namespace, name) = parse_target(target)?;
    let client = kube::Client::try_default()
        .await
        .map_err(AnnotateError::Client)?;
    let api: Api<Component> = Api::namespaced(client, namespace);
    let now = jiff::Timestamp::now().to_string();
    match api
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(request.patch(&now)),
        )
        .await
    {
        Ok(_) => Ok(format!("component {target}: {}", request.done())),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            Err(AnnotateError::NotFound(target.to_owned()))
        }
        Err(source) => Err(AnnotateError::Patch {
            target: target.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_namespace_slash_name() {
        assert_eq!(parse_target("team-a/web").unwrap(), ("team-a", "web"));
        for bad in ["web", "/web", "team-a/", "a/b/c", ""] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_request_is_one_annotation() {
        let at = "2026-12-07T10:00:00Z";
        let annotations = |r: Request| r.patch(at)["metadata"]["annotations"].clone();
        assert_eq!(
            annotations(Request::Reconcile),
            json!({REQUESTED_AT_ANNOTATION: at})
        );
        assert_eq!(
            annotations(Request::Suspend),
            json!({SUSPEND_ANNOTATION: "true"})
        );
        // null removes the key in a merge patch.
        assert_eq!(
            annotations(Request::Resume),
            json!({SUSPEND_ANNOTATION: null})
        );
    }
}

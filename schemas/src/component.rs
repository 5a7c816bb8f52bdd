//! The `Component` custom resource (`deployment-orchestrator.io/v1alpha1`), compatible with the
//! original Go handler: spec, status, phases, finalizer names and the duration fields.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event::{JobAction, Order, is_zero};

/// API group of the `Component` resource.
pub const GROUP: &str = "deployment-orchestrator.io";
/// The handler name this system answers to by default (`spec.handler`).
pub const DEFAULT_HANDLER: &str = "helm";
/// Our claim finalizer.
pub const HELM_FINALIZER: &str = "helm.deployment-orchestrator.io/lifecycle";
/// The Composition controller's finalizer: deletion waits while it is present; never touched by us.
pub const COORDINATION_FINALIZER: &str = "composition.deployment-orchestrator.io/coordination";
/// Suffix shared by every handler's claim finalizer.
pub const LIFECYCLE_FINALIZER_SUFFIX: &str = ".deployment-orchestrator.io/lifecycle";
/// Deployment and termination timeout when the spec gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Annotation that suspends a Component when `"true"`: no Helm runs until it is removed (or set
/// to anything else); deletion still uninstalls.
pub const SUSPEND_ANNOTATION: &str = "helm.deployment-orchestrator.io/suspend";
/// Annotation whose new value requests a fresh apply of the same generation (`helmqctl
/// reconcile` sets it to the current time); the value handled last is
/// `status.handlerStatus.lastHandledReconcileAt`.
pub const REQUESTED_AT_ANNOTATION: &str = "helm.deployment-orchestrator.io/requested-at";
/// Label that opts a ConfigMap or Secret in to being watched: a change to one with
/// `"true"` re-applies, within seconds, every Component whose `valuesFrom` reads it (others are
/// read again at the producer's resync).
pub const WATCH_LABEL: &str = "helm.deployment-orchestrator.io/watch";
/// The condition a suspended Component carries.
pub const SUSPENDED_CONDITION: &str = "Suspended";
/// The condition a drift check writes (`config.drift`): `True` while a `warn` check finds the
/// release's objects differ from its manifest.
pub const DRIFTED_CONDITION: &str = "Drifted";

/// Go-style duration such as `30s`, `5m` or `1h30m`.
pub(crate) const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// Errors in the typed fields of a Component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComponentError {
    /// A duration string that is not of the Go form (`30s`, `5m`, `1h30m`).
    #[error("{field} is not a valid duration (like 30s, 5m or 1h30m): {value:?}")]
    InvalidDuration {
        /// Field path, e.g. `spec.deploymentTimeout`.
        field: &'static str,
        /// The rejected value.
        value: String,
    },
}

/// Desired state of a Component: which handler deploys it and with what config.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "deployment-orchestrator.io",
    version = "v1alpha1",
    kind = "Component",
    namespaced,
    shortname = "component",
    status = "ComponentStatus",
    derive = "PartialEq",
    doc = "A deployable unit of a composition, handed to the handler named in spec.handler",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Handler","type":"string","jsonPath":".spec.handler"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    // `-o wide` only (priority 1): the release record and what happened last.
    printcolumn = r#"{"name":"Release","type":"string","priority":1,"jsonPath":".status.handlerStatus.releaseName"}"#,
    printcolumn = r#"{"name":"Revision","type":"integer","priority":1,"jsonPath":".status.handlerStatus.revision"}"#,
    printcolumn = r#"{"name":"Chart-Version","type":"string","priority":1,"jsonPath":".status.handlerStatus.chartVersion"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.message"}"#,
    printcolumn = r#"{"name":"Suspended","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Suspended\")].status"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ComponentSpec {
    /// The component name within its composition.
    pub name: String,
    /// The handler that deploys this component (`helm` for helmq).
    pub handler: String,
    /// Handler-specific configuration; for `helm`, the Helm config (source or MVP form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_fields")]
    pub config: Option<serde_json::Value>,
    /// How long a deployment may take before it fails (Go duration, default 5m; at most the
    /// producer's and workers' --max-timeout, default 1h, never over 24h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub deployment_timeout: Option<String>,
    /// How long a termination may take before it fails (Go duration, default 5m; at most the
    /// producer's and workers' --max-timeout, default 1h, never over 24h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub termination_timeout: Option<String>,
}

impl ComponentSpec {
    /// The deployment timeout, or [`DEFAULT_TIMEOUT`].
    pub fn deployment_timeout(&self) -> Result<Duration, ComponentError> {
        timeout_or_default("spec.deploymentTimeout", self.deployment_timeout.as_deref())
    }

    /// The termination timeout, or [`DEFAULT_TIMEOUT`].
    pub fn termination_timeout(&self) -> Result<Duration, ComponentError> {
        timeout_or_default(
            "spec.terminationTimeout",
            self.termination_timeout.as_deref(),
        )
    }
}

fn timeout_or_default(
    field: &'static str,
    value: Option<&str>,
) -> Result<Duration, ComponentError> {
    match value {
        None => Ok(DEFAULT_TIMEOUT),
        Some(v) => parse_go_duration(v).ok_or_else(|| ComponentError::InvalidDuration {
            field,
            value: v.to_owned(),
        }),
    }
}

/// Parses a Go duration string (`300ms`, `1.5h`, `1h30m`), non-negative only.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    const UNITS: [(&str, f64); 7] = [
        ("ns", 1e-9),
        ("us", 1e-6),
        ("µs", 1e-6),
        ("ms", 1e-3),
        ("s", 1.0),
        ("m", 60.0),
        ("h", 3600.0),
    ];
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        // Longest unit first so `ms` is not read as `m` followed by garbage.
        let (unit, scale) = UNITS
            .iter()
            .filter(|(u, _)| rest.starts_with(u))
            .max_by_key(|(u, _)| u.len())?;
        rest = &rest[unit.len()..];
        total += number * scale;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Value parser for duration flags (`--drain-deadline 60s`): a non-zero Go duration.
pub fn parse_duration_flag(text: &str) -> Result<Duration, String> {
    match parse_go_duration(text.trim()) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err(format!(
            "{text:?} is not a duration like 500ms, 30s, 5m or 1h30m"
        )),
    }
}

fn preserve_unknown_fields(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "Handler-specific configuration; for helm, the Helm config (source or MVP form).",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Lifecycle phase of a Component, as the original protocols define them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// Created, not yet claimed by a handler.
    Pending,
    /// Claimed by a handler (our finalizer is on it).
    Claimed,
    /// A deployment is running.
    Deploying,
    /// Deployed and ready.
    Ready,
    /// The deployment failed; retried only when the spec changes.
    Failed,
    /// Being uninstalled.
    Terminating,
    /// The uninstall failed; the finalizer stays so nothing is orphaned silently.
    TerminationFailed,
}

/// Observed state of a Component, written only by the status writer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// Current lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Human-readable detail of the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The handler that claimed the Component (`helm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    /// When the claim happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_at: Option<Time>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The Helm release record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler_status: Option<HandlerStatus>,
}

/// The Helm release record kept in `status.handlerStatus`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HandlerStatus {
    /// Release name; every operation after the first deploy uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_name: Option<String>,
    /// Namespace holding the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_namespace: Option<String>,
    /// Helm release revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Deployed chart version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart_version: Option<String>,
    /// When the last deployment finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_deploy_time: Option<Time>,
    /// Attempts spent on the current generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Generation of the last status event applied (with `eventOrder`, the writer's position:
    /// an event at or below it is stale and dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_generation: Option<i64>,
    /// Order key of the last status event applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_order: Option<Order>,
    /// The job the producer issued last (recorded before it publishes the job): the writer
    /// applies only status events that answer it. Absent on Components an older helmq wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_job: Option<IssuedJob>,
    /// The `refresh` of the issued apply job whose outcome (`Ready` or `Failed`) the status
    /// shows: with `observedGeneration`, whether the status answers the apply job issued last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_refresh: Option<u32>,
    /// The value of the `helm.deployment-orchestrator.io/requested-at` annotation when the
    /// producer last issued an apply job (the request it handled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
    /// `sha256:<hex>` of the effective values last deployed (`valuesFrom` merged under
    /// `values`): never the values themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values_digest: Option<String>,
    /// `sha256:<hex>` of the rest of the config last deployed (chart, release, settings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_digest: Option<String>,
    /// When the release's objects were last compared with its manifest (`config.drift`): the
    /// next check is due an interval later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_checked_at: Option<Time>,
}

/// A job the producer issued for one generation and action of a Component
/// (`status.handlerStatus.issuedJob`).
///
/// Its `id` is the job's `id` and `Nats-Msg-Id`: `<uid>:<generation>:<action>:<nonce>`, the
/// nonce random and drawn once, when the job is first recorded. A producer that retries or takes
/// over reads it here and publishes the same id, so JetStream drops the duplicate; another
/// tenant, who cannot read this status, cannot guess it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuedJob {
    /// The job id.
    #[schemars(length(min = 1, max = 256))]
    pub id: String,
    /// `metadata.generation` the job is for.
    pub generation: i64,
    /// `apply` or `delete`.
    pub action: JobAction,
    /// Which apply of this generation it is: 0 for the first, one more for each apply
    /// requested again without a spec change (a reconcile request, a resume). Always 0 for a
    /// delete.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refresh: u32,
    /// It answers a reconcile request: Helm runs even when nothing changed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forced: bool,
    /// A drift check (`config.drift`): an apply that, when nothing changed, compares the
    /// release's objects with its manifest instead of running Helm.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drift_check: bool,
}

impl Component {
    /// True when `spec.handler` names `handler`.
    pub fn is_for(&self, handler: &str) -> bool {
        self.spec.handler == handler
    }

    /// The value of annotation `key`, if set.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }

    /// True when [`SUSPEND_ANNOTATION`] is `"true"`.
    pub fn is_suspended(&self) -> bool {
        self.annotation(SUSPEND_ANNOTATION) == Some("true")
    }
}

/// The CRD of [`Component`] as Kubernetes receives it.
pub fn crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    <Component as kube::CustomResourceExt>::crd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_like_go() {
        let cases = [
            ("30s", Some(30.0)),
            ("5m", Some(300.0)),
            ("1h30m", Some(5400.0)),
            ("1.5h", Some(5400.0)),
            ("250ms", Some(0.25)),
            ("2m30s", Some(150.0)),
            ("", None),
            ("5", None),
            ("m", None),
            ("5d", None),
            ("-5m", None),
            ("1h 30m", None),
        ];
        for (input, want) in cases {
            let got = parse_go_duration(input).map(|d| d.as_secs_f64());
            assert_eq!(got, want, "input {input:?}");
        }
    }

    #[test]
    fn duration_flags_are_non_zero_go_durations() {
        assert_eq!(parse_duration_flag("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(
            parse_duration_flag(" 1h30m "),
            Ok(Duration::from_secs(5400))
        );
        for bad in ["0s", "30", "5d", "soon", ""] {
            assert_eq!(
                parse_duration_flag(bad),
                Err(format!(
                    "{bad:?} is not a duration like 500ms, 30s, 5m or 1h30m"
                ))
            );
        }
    }

    #[test]
    fn timeouts_default_to_five_minutes_and_name_the_field_when_invalid() {
        let mut spec = ComponentSpec {
            name: "web".into(),
            handler: "helm".into(),
            config: None,
            deployment_timeout: None,
            termination_timeout: Some("2m".into()),
        };
        assert_eq!(spec.deployment_timeout(), Ok(DEFAULT_TIMEOUT));
        assert_eq!(spec.termination_timeout(), Ok(Duration::from_secs(120)));
        spec.deployment_timeout = Some("soon".into());
        assert_eq!(
            spec.deployment_timeout().unwrap_err().to_string(),
            r#"spec.deploymentTimeout is not a valid duration (like 30s, 5m or 1h30m): "soon""#
        );
    }

    #[test]
    fn the_pattern_in_the_crd_accepts_what_the_parser_accepts() {
        // Keep the admission-time check and the runtime parser in agreement on the common forms.
        for ok in ["30s", "5m", "1h30m", "1.5h", "250ms"] {
            assert!(parse_go_duration(ok).is_some(), "{ok}");
        }
        let crd = serde_json::to_value(crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(
            spec["properties"]["deploymentTimeout"]["pattern"],
            DURATION_PATTERN
        );
    }

    #[test]
    fn a_component_from_the_original_samples_deserializes() {
        let json = serde_json::json!({
            "apiVersion": "deployment-orchestrator.io/v1alpha1",
            "kind": "Component",
            "metadata": {"name": "nginx-basic", "namespace": "default", "generation": 3,
                "finalizers": [HELM_FINALIZER, COORDINATION_FINALIZER]},
            "spec": {"name": "nginx-basic", "handler": "helm", "deploymentTimeout": "5m",
                "terminationTimeout": "2m", "config": {"repository": {"url": "https://repo.broadcom.com/bitnami-files", "name": "bitnami"}}},
            "status": {"phase": "Ready", "claimedBy": "helm", "observedGeneration": 3,
                "handlerStatus": {"releaseName": "nginx-basic", "revision": 2}}
        });
        let c: Component = serde_json::from_value(json).unwrap();
        assert!(c.is_for("helm"));
        let status = c.status.unwrap();
        assert_eq!(status.phase, Some(Phase::Ready));
        assert_eq!(status.handler_status.unwrap().revision, Some(2));
        assert_eq!(c.spec.termination_timeout(), Ok(Duration::from_secs(120)));
    }
}

//! The Helm config of a `Component`: parses the free-form JSON `spec.config` into one
//! normalized [`HelmConfig`] and validates it, with error messages that name the field.
//!
//! Two shapes are accepted:
//!
//! * the **source form** (`releaseName`, `releaseNamespace`, `manageNamespace`, `values` and a
//!   `source` that is either `{type: http, repository, chart}` or `{type: oci, chart:
//!   "oci://registry/path/chart:version", authentication}`), which is also the serialized form of
//!   [`HelmConfig`], so normalizing a normalized config is the identity;
//! * the **MVP form** of the original controller (`repository`, `chart`, `values`, `namespace`),
//!   normalized into an HTTP source whose release is named `<component namespace>-<component name>`.
//!
//! Both shapes also take `serviceAccountName` and `adopt` (tenancy) and the day-2 fields
//! `remediation`, `test` and `drift` ([`Remediation`], [`HelmTest`], [`DriftDetection`]).
//!
//! Unknown top-level keys are ignored, as the original Go `json.Unmarshal` did. A JSON `null` is
//! treated everywhere as an absent key.

use std::io;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{dns, oci};

mod day2;
mod drift;
mod values_from;

pub use day2::{
    HelmTest, InstallStrategy, MAX_REMEDIATION_RETRIES, Remediation, Remedy, UpgradeStrategy,
};
pub use drift::{
    DEFAULT_DRIFT_INTERVAL, DriftDetection, DriftMode, IgnoreRule, IgnoreTarget,
    MAX_DRIFT_INTERVAL, MAX_IGNORE_RULES, MIN_DRIFT_INTERVAL,
};
pub use values_from::{
    DEFAULT_VALUES_KEY, MAX_VALUES_FROM, MISSING_SOURCE, ValuesKind, ValuesReference, merge_into,
    place,
};

/// Largest accepted `values`, measured as the length of its compact JSON serialization.
pub const MAX_VALUES_BYTES: usize = 256 * 1024;

/// Longest Helm release name.
const MAX_RELEASE_NAME_LEN: usize = 53;
/// The only supported OCI authentication method.
const REGISTRY_METHOD: &str = "registry";

const AN_OBJECT: &str = "an object";
const A_STRING: &str = "a string";
const A_BOOLEAN: &str = "a boolean";

/// Normalized Helm config of a Component.
///
/// Serialized in camelCase; the serialized form is the source form accepted by
/// [`HelmConfig::parse`], so parsing a serialized config gives it back unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HelmConfig {
    /// Helm release name (lowercase DNS-1123 name, at most 53 characters).
    pub release_name: String,
    /// Namespace the release is installed in (DNS-1123 label).
    pub release_namespace: String,
    /// Whether helmq creates the release namespace and deletes it on termination.
    #[serde(default = "default_manage_namespace")]
    pub manage_namespace: bool,
    /// Where the chart comes from.
    pub source: ChartSource,
    /// Chart values: an arbitrary nested JSON object; empty when absent. They go on top of
    /// `valuesFrom`.
    #[serde(default)]
    pub values: Map<String, Value>,
    /// Values from ConfigMaps and Secrets in the Component's own namespace, merged in order
    /// (later ones win) under `values`; the worker reads them, as the tenant, when it runs the
    /// job.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values_from: Vec<ValuesReference>,
    /// The ServiceAccount, in the Component's own namespace, that every Kubernetes call of the
    /// job runs as (impersonated); the worker's `--default-service-account` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Take over a release that carries no helmq owner labels (one installed by hand or by
    /// another tool). A release owned by another Component or job is never taken over.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt: bool,
    /// What a failed install or upgrade does (retries, then keep, uninstall or roll back);
    /// nothing by default.
    #[serde(default, skip_serializing_if = "Remediation::is_default")]
    pub remediation: Remediation,
    /// `helm test` after each successful install or upgrade; off by default.
    #[serde(default, skip_serializing_if = "HelmTest::is_default")]
    pub test: HelmTest,
    /// Drift detection and correction of the release's objects; off by default.
    #[serde(default, skip_serializing_if = "DriftDetection::is_default")]
    pub drift: DriftDetection,
}

/// Where a chart comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ChartSource {
    /// A classic HTTP(S) chart repository.
    Http {
        /// The repository to add.
        repository: Repository,
        /// The chart to install from it.
        chart: ChartRef,
    },
    /// An OCI registry.
    Oci {
        /// Full reference `oci://registry/path/chart:version`.
        chart: String,
        /// Registry credentials, if the registry needs them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        authentication: Option<OciAuthentication>,
    },
}

/// An HTTP(S) chart repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Repository {
    /// Repository URL (http or https).
    pub url: String,
    /// Local name of the repository (`helm repo add <name> <url>`).
    pub name: String,
}

/// A chart in an HTTP(S) repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChartRef {
    /// Chart name.
    pub name: String,
    /// Chart version or semver range (resolved by Helm).
    pub version: String,
}

/// Credentials of an OCI registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OciAuthentication {
    /// Authentication method; always `registry` (a docker-config Secret).
    pub method: String,
    /// The Secret holding the registry credentials.
    pub secret_ref: SecretRef,
}

/// Reference to a Secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Secret name.
    pub name: String,
    /// Secret namespace; the job's own namespace when absent (its subject's and Component's,
    /// also for a job without a uid). Another namespace needs the worker's
    /// `--allowed-secret-namespaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Why a Helm config was rejected. Field paths are full dotted paths such as
/// `source.repository.url`.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// `spec.config` is absent or null.
    #[error("config is required for helm components")]
    Missing,
    /// `spec.config` is not a JSON object (e.g. a YAML block string).
    #[error("config must be an object, got {got}")]
    NotAnObject {
        /// JSON type found.
        got: &'static str,
    },
    /// Both `source` and a top-level `repository` or `chart` are present.
    #[error("config mixes the source form (source) with the MVP form (repository, chart): use one")]
    MixedShapes,
    /// Neither shape matched, or the source form has no `source`.
    #[error("source field is required in helm configuration")]
    SourceRequired,
    /// A required field is absent, null, empty or whitespace only.
    #[error("{field} is required")]
    Required {
        /// Field path.
        field: &'static str,
    },
    /// A field has the wrong JSON type.
    #[error("{field} must be {expected}, got {got}")]
    WrongType {
        /// Field path.
        field: &'static str,
        /// Expected type with its article, e.g. `an object`.
        expected: &'static str,
        /// JSON type found.
        got: &'static str,
    },
    /// `source.type` is absent.
    #[error("source.type is required (must be 'http' or 'oci')")]
    SourceTypeRequired,
    /// `source.type` is neither `http` nor `oci`.
    #[error("unknown source type: {0} (available types: http, oci)")]
    UnknownSourceType(String),
    /// A repository URL that does not parse.
    #[error("{field} is not a valid URL: {reason}")]
    InvalidUrl {
        /// Field path.
        field: &'static str,
        /// Parser error.
        reason: String,
    },
    /// A repository URL whose scheme is not http or https.
    #[error("{field} must use http or https, got {scheme}")]
    UrlScheme {
        /// Field path.
        field: &'static str,
        /// Scheme found.
        scheme: String,
    },
    /// An OCI reference that does not start with `oci://`.
    #[error("{field} must start with oci://, got {value}")]
    OciPrefix {
        /// Field path.
        field: &'static str,
        /// The rejected value.
        value: String,
    },
    /// An OCI reference without a registry or a chart path.
    #[error("{field} must name a registry and a chart path (oci://registry/path/chart:version)")]
    OciPath {
        /// Field path.
        field: &'static str,
    },
    /// An OCI reference without a `:version` tag (digests are not supported).
    #[error("{field} must end with a version tag (oci://registry/path/chart:version)")]
    OciTag {
        /// Field path.
        field: &'static str,
    },
    /// An OCI authentication method other than `registry`.
    #[error("{field} must be 'registry', got {got}")]
    AuthMethod {
        /// Field path.
        field: &'static str,
        /// Method found.
        got: String,
    },
    /// An invalid Helm release name.
    #[error("{field} must be a lowercase DNS-1123 name of at most 53 characters, got {value}")]
    ReleaseName {
        /// Field path.
        field: &'static str,
        /// The rejected value.
        value: String,
    },
    /// A chart name that cannot be one (it would reach `helm pull` as a flag or a path).
    #[error(
        "{field} must be a chart name: letters, digits, '.', '_' and '-', starting with a letter or digit, without '..', at most {MAX_CHART_NAME_LEN} characters; got {value:?}"
    )]
    ChartName {
        /// Field path.
        field: &'static str,
        /// The rejected value (cut to 64 characters).
        value: String,
    },
    /// A chart version that is neither a version nor a version range.
    #[error(
        "{field} must be a chart version or range: letters, digits, spaces and . + - ^ ~ < > = * | , !, starting with a letter, a digit or one of ^ ~ < > = *, at most {MAX_CHART_VERSION_LEN} characters; got {value:?}"
    )]
    ChartVersion {
        /// Field path.
        field: &'static str,
        /// The rejected value (cut to 64 characters).
        value: String,
    },
    /// An invalid ServiceAccount name.
    #[error(
        "{field} must be a ServiceAccount name (a DNS-1123 subdomain of at most 253 characters), got {value:?}"
    )]
    ServiceAccountName {
        /// Field path.
        field: &'static str,
        /// The rejected value (cut to 64 characters).
        value: String,
    },
    /// An invalid namespace.
    #[error("{field} must be a DNS-1123 label of at most 63 characters, got {value}")]
    Namespace {
        /// Field path.
        field: &'static str,
        /// The rejected value.
        value: String,
    },
    /// One entry of `valuesFrom` is invalid.
    #[error("valuesFrom[{index}]: {reason}")]
    ValuesFrom {
        /// Its index.
        index: usize,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// `valuesFrom` holds more than [`MAX_VALUES_FROM`] references.
    #[error("valuesFrom has {count} references; at most {limit} are allowed")]
    TooManyValuesFrom {
        /// How many it holds.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// `values` is larger than [`MAX_VALUES_BYTES`] once serialized.
    #[error("values is too large: {size} bytes (limit {limit})")]
    TooLarge {
        /// Serialized size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// `remediation.*.retries` that is not a whole number from 0 to
    /// [`MAX_REMEDIATION_RETRIES`].
    #[error("{field} must be a whole number from 0 to {MAX_REMEDIATION_RETRIES}, got {got}")]
    Retries {
        /// Field path.
        field: &'static str,
        /// The rejected number.
        got: String,
    },
    /// A remediation strategy the field does not take.
    #[error("{field} must be {allowed}, got {got:?}")]
    Strategy {
        /// Field path.
        field: &'static str,
        /// The strategies it takes, e.g. `'keep' or 'rollback'`.
        allowed: &'static str,
        /// The rejected value (cut to 64 characters).
        got: String,
    },
    /// `test.timeout` that is not a Go duration from 1s to 24h.
    #[error("{field} must be a duration from 1s to 24h (like 30s, 5m or 1h30m), got {value:?}")]
    TestTimeout {
        /// Field path.
        field: &'static str,
        /// The rejected value (cut to 64 characters).
        value: String,
    },
    /// `drift.interval` that is not a Go duration from 10s to 168h.
    #[error(
        "drift.interval must be a duration from 10s to 168h (like 30s, 5m or 1h30m), got {value:?}"
    )]
    DriftInterval {
        /// The rejected value (cut to 64 characters).
        value: String,
    },
    /// A `drift.ignore` path that is not a JSON pointer.
    #[error("drift.ignore[].paths must hold JSON pointers such as /spec/replicas, got {value:?}")]
    JsonPointer {
        /// The rejected value (cut to 64 characters).
        value: String,
    },
    /// A list longer than its limit.
    #[error("{field} has {count} entries; at most {limit} are allowed")]
    TooMany {
        /// Field path.
        field: &'static str,
        /// Entries found.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A field that could not be serialized (not expected for JSON input).
    #[error("{field} could not be serialized: {reason}")]
    Unserializable {
        /// Field path.
        field: &'static str,
        /// Serializer error.
        reason: String,
    },
}

fn default_manage_namespace() -> bool {
    true
}

impl HelmConfig {
    /// Parse `spec.config` (`None` when the field is absent) of the Component
    /// `component_namespace/component_name`, in the source or the MVP form, and validate it.
    ///
    /// Shape-level errors come first, then fields in their documented order, so the error
    /// reported for a given input is deterministic.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first offending field.
    pub fn parse(
        config: Option<&Value>,
        component_namespace: &str,
        component_name: &str,
    ) -> Result<Self, ConfigError> {
        let obj = match config {
            None | Some(Value::Null) => return Err(ConfigError::Missing),
            Some(Value::Object(obj)) => obj,
            Some(other) => return Err(ConfigError::NotAnObject { got: kind(other) }),
        };
        let has_source = get(obj, "source").is_some();
        let source_form = has_source
            || get(obj, "releaseName").is_some()
            || get(obj, "releaseNamespace").is_some();
        let mvp_form = get(obj, "repository").is_some() || get(obj, "chart").is_some();
        if has_source && mvp_form {
            return Err(ConfigError::MixedShapes);
        }
        if source_form {
            parse_source_form(obj)
        } else if mvp_form {
            parse_mvp_form(obj, component_namespace, component_name)
        } else {
            Err(ConfigError::SourceRequired)
        }
    }

    /// Re-validate an already normalized config (e.g. one received in a job): the same rules,
    /// in the same order and with the same messages as [`HelmConfig::parse`] on the source form.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_required("releaseName", &self.release_name)?;
        check_release_name("releaseName", &self.release_name)?;
        check_required("releaseNamespace", &self.release_namespace)?;
        check_namespace("releaseNamespace", &self.release_namespace)?;
        check_values_size(&self.values)?;
        values_from::check(&self.values_from)?;
        if let Some(account) = &self.service_account_name {
            check_service_account("serviceAccountName", account)?;
        }
        day2::validate_day2(&self.remediation, &self.test)?;
        drift::validate_drift(&self.drift)?;
        match &self.source {
            ChartSource::Http { repository, chart } => {
                check_required("source.repository.url", &repository.url)?;
                check_repository_url("source.repository.url", &repository.url)?;
                check_required("source.repository.name", &repository.name)?;
                check_required("source.chart.name", &chart.name)?;
                check_chart_name("source.chart.name", &chart.name)?;
                check_required("source.chart.version", &chart.version)?;
                check_chart_version("source.chart.version", &chart.version)?;
            }
            ChartSource::Oci {
                chart,
                authentication,
            } => {
                check_required("source.chart", chart)?;
                check_oci_reference("source.chart", chart)?;
                if let Some(auth) = authentication {
                    check_required("source.authentication.method", &auth.method)?;
                    check_auth_method("source.authentication.method", &auth.method)?;
                    check_required(
                        "source.authentication.secretRef.name",
                        &auth.secret_ref.name,
                    )?;
                    if let Some(namespace) = &auth.secret_ref.namespace
                        && !is_blank(namespace)
                    {
                        check_namespace("source.authentication.secretRef.namespace", namespace)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Chart name for display: the chart name of an HTTP source, the last path segment (without
    /// the tag) of an OCI reference.
    #[must_use]
    pub fn chart_name(&self) -> &str {
        match &self.source {
            ChartSource::Http { chart, .. } => &chart.name,
            ChartSource::Oci { chart, .. } => oci::name_and_tag(chart).0,
        }
    }

    /// Chart version for display: the chart version of an HTTP source, the tag of an OCI
    /// reference (empty when the reference has none).
    #[must_use]
    pub fn chart_version(&self) -> &str {
        match &self.source {
            ChartSource::Http { chart, .. } => &chart.version,
            ChartSource::Oci { chart, .. } => oci::name_and_tag(chart).1,
        }
    }
}

/// Source form: `releaseName`, `releaseNamespace`, `manageNamespace`, `values`, `source`.
fn parse_source_form(obj: &Map<String, Value>) -> Result<HelmConfig, ConfigError> {
    let release_name = required_str(obj, "releaseName")?;
    check_release_name("releaseName", release_name)?;
    let release_namespace = required_str(obj, "releaseNamespace")?;
    check_namespace("releaseNamespace", release_namespace)?;
    let manage_namespace = optional_bool(obj, "manageNamespace")?.unwrap_or(true);
    let values = parse_values(obj)?;
    let source = match get(obj, "source") {
        None => return Err(ConfigError::SourceRequired),
        Some(Value::Object(source)) => parse_source(source)?,
        Some(other) => return Err(wrong_type("source", AN_OBJECT, other)),
    };
    with_tenancy(
        obj,
        release_name.to_owned(),
        release_namespace,
        manage_namespace,
        source,
        values,
    )
}

/// The `source` object of the source form.
fn parse_source(source: &Map<String, Value>) -> Result<ChartSource, ConfigError> {
    let source_type = match get(source, "type") {
        None => return Err(ConfigError::SourceTypeRequired),
        Some(Value::String(t)) if is_blank(t) => return Err(ConfigError::SourceTypeRequired),
        Some(Value::String(t)) => t.as_str(),
        Some(other) => return Err(wrong_type("source.type", A_STRING, other)),
    };
    match source_type {
        // `source.authentication` is accepted and ignored for HTTP sources.
        "http" => parse_http_source(source, &HttpFields::SOURCE_FORM),
        "oci" => {
            let chart = required_str(source, "source.chart")?;
            check_oci_reference("source.chart", chart)?;
            let authentication = optional_object(source, "source.authentication")?
                .map(parse_oci_authentication)
                .transpose()?;
            Ok(ChartSource::Oci {
                chart: chart.to_owned(),
                authentication,
            })
        }
        other => Err(ConfigError::UnknownSourceType(other.to_owned())),
    }
}

/// Where the parts of an HTTP chart source stand: under `source` in the source form, at the
/// top level in the MVP form. Each is a full dotted path, named in error messages.
struct HttpFields {
    repository: &'static str,
    url: &'static str,
    repository_name: &'static str,
    chart: &'static str,
    chart_name: &'static str,
    chart_version: &'static str,
}

impl HttpFields {
    const SOURCE_FORM: HttpFields = HttpFields {
        repository: "source.repository",
        url: "source.repository.url",
        repository_name: "source.repository.name",
        chart: "source.chart",
        chart_name: "source.chart.name",
        chart_version: "source.chart.version",
    };
    const MVP_FORM: HttpFields = HttpFields {
        repository: "repository",
        url: "repository.url",
        repository_name: "repository.name",
        chart: "chart",
        chart_name: "chart.name",
        chart_version: "chart.version",
    };
}

/// An HTTP chart source: `repository` (`url`, `name`) and `chart` (`name`, `version`) of
/// `obj`, at the paths `fields` names.
fn parse_http_source(
    obj: &Map<String, Value>,
    fields: &HttpFields,
) -> Result<ChartSource, ConfigError> {
    let repository = required_object(obj, fields.repository)?;
    let url = required_str(repository, fields.url)?;
    check_repository_url(fields.url, url)?;
    let repository_name = required_str(repository, fields.repository_name)?;
    let chart = required_object(obj, fields.chart)?;
    let chart_name = required_str(chart, fields.chart_name)?;
    check_chart_name(fields.chart_name, chart_name)?;
    let chart_version = required_str(chart, fields.chart_version)?;
    check_chart_version(fields.chart_version, chart_version)?;
    Ok(ChartSource::Http {
        repository: Repository {
            url: url.to_owned(),
            name: repository_name.to_owned(),
        },
        chart: ChartRef {
            name: chart_name.to_owned(),
            version: chart_version.to_owned(),
        },
    })
}

/// `source.authentication` of an OCI source.
fn parse_oci_authentication(auth: &Map<String, Value>) -> Result<OciAuthentication, ConfigError> {
    let method = required_str(auth, "source.authentication.method")?;
    check_auth_method("source.authentication.method", method)?;
    let secret_ref = required_object(auth, "source.authentication.secretRef")?;
    let name = required_str(secret_ref, "source.authentication.secretRef.name")?;
    let namespace = optional_str(secret_ref, "source.authentication.secretRef.namespace")?;
    if let Some(namespace) = namespace {
        check_namespace("source.authentication.secretRef.namespace", namespace)?;
    }
    Ok(OciAuthentication {
        method: method.to_owned(),
        secret_ref: SecretRef {
            name: name.to_owned(),
            namespace: namespace.map(str::to_owned),
        },
    })
}

/// MVP form: `repository`, `chart`, `values`, `namespace`, `manageNamespace`; the release is
/// named `<component namespace>-<component name>`.
fn parse_mvp_form(
    obj: &Map<String, Value>,
    component_namespace: &str,
    component_name: &str,
) -> Result<HelmConfig, ConfigError> {
    let source = parse_http_source(obj, &HttpFields::MVP_FORM)?;
    let values = parse_values(obj)?;
    let namespace = optional_str(obj, "namespace")?;
    let release_namespace = namespace.unwrap_or(component_namespace);
    check_namespace("namespace", release_namespace)?;
    // Never manage (and so never delete) the namespace the Component itself lives in.
    let manage_namespace = optional_bool(obj, "manageNamespace")?
        .unwrap_or_else(|| namespace.is_some_and(|ns| ns != component_namespace));
    let release_name = format!("{component_namespace}-{component_name}");
    check_release_name("releaseName", &release_name)?;
    with_tenancy(
        obj,
        release_name,
        release_namespace,
        manage_namespace,
        source,
        values,
    )
}

/// The config of either form from the parts it read, with `serviceAccountName` and `adopt`,
/// which both forms read the same way, last.
fn with_tenancy(
    obj: &Map<String, Value>,
    release_name: String,
    release_namespace: &str,
    manage_namespace: bool,
    source: ChartSource,
    values: Map<String, Value>,
) -> Result<HelmConfig, ConfigError> {
    let account = optional_str(obj, "serviceAccountName")?;
    if let Some(account) = account {
        check_service_account("serviceAccountName", account)?;
    }
    let adopt = optional_bool(obj, "adopt")?.unwrap_or(false);
    let values_from = values_from::parse(obj)?;
    let (remediation, test) = day2::parse_day2(obj)?;
    let drift = drift::parse_drift(obj)?;
    Ok(HelmConfig {
        release_name,
        release_namespace: release_namespace.to_owned(),
        manage_namespace,
        source,
        values,
        values_from,
        service_account_name: account.map(str::to_owned),
        adopt,
        remediation,
        test,
        drift,
    })
}

/// Top-level `values`: absent or null is empty, otherwise an object within the size limit.
fn parse_values(obj: &Map<String, Value>) -> Result<Map<String, Value>, ConfigError> {
    match get(obj, "values") {
        None => Ok(Map::new()),
        Some(Value::Object(values)) => {
            check_values_size(values)?;
            Ok(values.clone())
        }
        Some(other) => Err(wrong_type("values", AN_OBJECT, other)),
    }
}

// ---------------------------------------------------------------------------------------------
// Field access. `field` is the full dotted path; the key looked up is its last segment.

/// Value of the key, with `null` treated as absent.
fn get<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// Last segment of a dotted field path.
fn key_of(field: &'static str) -> &'static str {
    field.rsplit_once('.').map_or(field, |(_, key)| key)
}

fn required_str<'a>(
    obj: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a str, ConfigError> {
    match get(obj, key_of(field)) {
        None => Err(ConfigError::Required { field }),
        Some(Value::String(s)) => {
            check_required(field, s)?;
            Ok(s)
        }
        Some(other) => Err(wrong_type(field, A_STRING, other)),
    }
}

/// An optional string; empty or whitespace-only counts as absent.
fn optional_str<'a>(
    obj: &'a Map<String, Value>,
    field: &'static str,
) -> Result<Option<&'a str>, ConfigError> {
    match get(obj, key_of(field)) {
        None => Ok(None),
        Some(Value::String(s)) if is_blank(s) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(wrong_type(field, A_STRING, other)),
    }
}

fn optional_bool(
    obj: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<bool>, ConfigError> {
    match get(obj, key_of(field)) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(wrong_type(field, A_BOOLEAN, other)),
    }
}

fn required_object<'a>(
    obj: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a Map<String, Value>, ConfigError> {
    optional_object(obj, field)?.ok_or(ConfigError::Required { field })
}

fn optional_object<'a>(
    obj: &'a Map<String, Value>,
    field: &'static str,
) -> Result<Option<&'a Map<String, Value>>, ConfigError> {
    match get(obj, key_of(field)) {
        None => Ok(None),
        Some(Value::Object(inner)) => Ok(Some(inner)),
        Some(other) => Err(wrong_type(field, AN_OBJECT, other)),
    }
}

fn wrong_type(field: &'static str, expected: &'static str, got: &Value) -> ConfigError {
    ConfigError::WrongType {
        field,
        expected,
        got: kind(got),
    }
}

/// JSON type name of a value, as used in messages (here and in [`crate::event`]).
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_blank(s: &str) -> bool {
    s.trim().is_empty()
}

// ---------------------------------------------------------------------------------------------
// Rules shared by `parse` and `validate`.

fn check_required(field: &'static str, value: &str) -> Result<(), ConfigError> {
    if is_blank(value) {
        Err(ConfigError::Required { field })
    } else {
        Ok(())
    }
}

/// Helm release name: `^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`, at
/// most 53 characters.
fn check_release_name(field: &'static str, value: &str) -> Result<(), ConfigError> {
    if value.len() <= MAX_RELEASE_NAME_LEN && dns::is_subdomain(value) {
        Ok(())
    } else {
        Err(ConfigError::ReleaseName {
            field,
            value: value.to_owned(),
        })
    }
}

/// Longest chart name accepted.
pub const MAX_CHART_NAME_LEN: usize = 128;
/// Longest chart version (or version range) accepted.
pub const MAX_CHART_VERSION_LEN: usize = 64;

/// The first 64 characters of a rejected value, for an error message.
fn cut(value: &str) -> String {
    value.chars().take(64).collect()
}

/// A chart name: `[A-Za-z0-9._-]`, starting alphanumeric (so never a flag), no `..` (so never a
/// path out of a directory), at most [`MAX_CHART_NAME_LEN`] characters.
fn check_chart_name(field: &'static str, value: &str) -> Result<(), ConfigError> {
    let valid = value.len() <= MAX_CHART_NAME_LEN
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !value.contains("..");
    valid.then_some(()).ok_or_else(|| ConfigError::ChartName {
        field,
        value: cut(value),
    })
}

/// A chart version or a version range as `helm --version` takes them (`1.2.3`, `v1.2.3`,
/// `^1.2`, `>=1.0 <2.0`, `1.x`): never starting with `-`, at most [`MAX_CHART_VERSION_LEN`]
/// characters of a small set.
fn check_chart_version(field: &'static str, value: &str) -> Result<(), ConfigError> {
    let valid = value.len() <= MAX_CHART_VERSION_LEN
        && value.starts_with(|c: char| c.is_ascii_alphanumeric() || "^~<>=*".contains(c))
        && value.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    ' ' | '.' | '+' | '-' | '^' | '~' | '<' | '>' | '=' | '*' | '|' | ',' | '!'
                )
        });
    valid
        .then_some(())
        .ok_or_else(|| ConfigError::ChartVersion {
            field,
            value: cut(value),
        })
}

/// DNS-1123 label: lowercase alphanumerics and `-`, starting and ending alphanumeric, at most
/// 63 characters.
fn check_namespace(field: &'static str, value: &str) -> Result<(), ConfigError> {
    if dns::is_label(value) {
        Ok(())
    } else {
        Err(ConfigError::Namespace {
            field,
            value: value.to_owned(),
        })
    }
}

/// A ServiceAccount name: a DNS-1123 subdomain (it becomes part of the impersonated user
/// `system:serviceaccount:<namespace>:<name>`, so nothing else may reach that string).
fn check_service_account(field: &'static str, value: &str) -> Result<(), ConfigError> {
    if dns::is_subdomain(value) {
        Ok(())
    } else {
        Err(ConfigError::ServiceAccountName {
            field,
            value: value.chars().take(64).collect(),
        })
    }
}

/// An http or https URL with a host.
fn check_repository_url(field: &'static str, value: &str) -> Result<(), ConfigError> {
    let url = url::Url::parse(value).map_err(|e| ConfigError::InvalidUrl {
        field,
        reason: e.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::UrlScheme {
            field,
            scheme: url.scheme().to_owned(),
        });
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::InvalidUrl {
            field,
            reason: url::ParseError::EmptyHost.to_string(),
        });
    }
    Ok(())
}

fn check_auth_method(field: &'static str, value: &str) -> Result<(), ConfigError> {
    if value == REGISTRY_METHOD {
        Ok(())
    } else {
        Err(ConfigError::AuthMethod {
            field,
            got: value.to_owned(),
        })
    }
}

fn check_values_size(values: &Map<String, Value>) -> Result<(), ConfigError> {
    let mut counter = ByteCounter(0);
    serde_json::to_writer(&mut counter, values).map_err(|e| ConfigError::Unserializable {
        field: "values",
        reason: e.to_string(),
    })?;
    if counter.0 > MAX_VALUES_BYTES {
        Err(ConfigError::TooLarge {
            size: counter.0,
            limit: MAX_VALUES_BYTES,
        })
    } else {
        Ok(())
    }
}

/// Counts the bytes `serde_json::to_vec` would produce, without keeping them.
struct ByteCounter(usize);

impl io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn check_oci_reference(field: &'static str, value: &str) -> Result<(), ConfigError> {
    match oci::Reference::parse(value) {
        Ok(_) => Ok(()),
        Err(oci::ReferenceError::Prefix) => Err(ConfigError::OciPrefix {
            field,
            value: value.to_owned(),
        }),
        Err(oci::ReferenceError::Path) => Err(ConfigError::OciPath { field }),
        Err(oci::ReferenceError::Tag) => Err(ConfigError::OciTag { field }),
    }
}

#[cfg(test)]
mod tests;

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
//! Unknown top-level keys are ignored, as the original Go `json.Unmarshal` did. A JSON `null` is
//! treated everywhere as an absent key.

use std::io;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{dns, oci};

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
    /// Chart values: an arbitrary nested JSON object; empty when absent.
    #[serde(default)]
    pub values: Map<String, Value>,
    /// The ServiceAccount, in the Component's own namespace, that every Kubernetes call of the
    /// job runs as (impersonated); the worker's `--default-service-account` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Take over a release that carries no helmq owner labels (one installed by hand or by
    /// another tool). A release owned by another Component or job is never taken over.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt: bool,
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
    /// `values` is larger than [`MAX_VALUES_BYTES`] once serialized.
    #[error("values is too large: {size} bytes (limit {limit})")]
    TooLarge {
        /// Serialized size in bytes.
        size: usize,
        /// The limit in bytes.
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
        if let Some(account) = &self.service_account_name {
            check_service_account("serviceAccountName", account)?;
        }
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
    let (service_account_name, adopt) = parse_tenancy(obj)?;
    Ok(HelmConfig {
        release_name: release_name.to_owned(),
        release_namespace: release_namespace.to_owned(),
        manage_namespace,
        source,
        values,
        service_account_name,
        adopt,
    })
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
        "http" => {
            // `source.authentication` is accepted and ignored for HTTP sources.
            let repository = required_object(source, "source.repository")?;
            let url = required_str(repository, "source.repository.url")?;
            check_repository_url("source.repository.url", url)?;
            let repository_name = required_str(repository, "source.repository.name")?;
            let chart = required_object(source, "source.chart")?;
            let chart_name = required_str(chart, "source.chart.name")?;
            check_chart_name("source.chart.name", chart_name)?;
            let chart_version = required_str(chart, "source.chart.version")?;
            check_chart_version("source.chart.version", chart_version)?;
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
    let repository = required_object(obj, "repository")?;
    let url = required_str(repository, "repository.url")?;
    check_repository_url("repository.url", url)?;
    let repository_name = required_str(repository, "repository.name")?;
    let chart = required_object(obj, "chart")?;
    let chart_name = required_str(chart, "chart.name")?;
    check_chart_name("chart.name", chart_name)?;
    let chart_version = required_str(chart, "chart.version")?;
    check_chart_version("chart.version", chart_version)?;
    let values = parse_values(obj)?;
    let namespace = optional_str(obj, "namespace")?;
    let release_namespace = namespace.unwrap_or(component_namespace);
    check_namespace("namespace", release_namespace)?;
    // Never manage (and so never delete) the namespace the Component itself lives in.
    let manage_namespace = optional_bool(obj, "manageNamespace")?
        .unwrap_or_else(|| namespace.is_some_and(|ns| ns != component_namespace));
    let release_name = format!("{component_namespace}-{component_name}");
    check_release_name("releaseName", &release_name)?;
    let (service_account_name, adopt) = parse_tenancy(obj)?;
    Ok(HelmConfig {
        release_name,
        release_namespace: release_namespace.to_owned(),
        manage_namespace,
        source: ChartSource::Http {
            repository: Repository {
                url: url.to_owned(),
                name: repository_name.to_owned(),
            },
            chart: ChartRef {
                name: chart_name.to_owned(),
                version: chart_version.to_owned(),
            },
        },
        values,
        service_account_name,
        adopt,
    })
}

/// `serviceAccountName` and `adopt`, the same in both forms.
fn parse_tenancy(obj: &Map<String, Value>) -> Result<(Option<String>, bool), ConfigError> {
    let account = optional_str(obj, "serviceAccountName")?;
    if let Some(account) = account {
        check_service_account("serviceAccountName", account)?;
    }
    let adopt = optional_bool(obj, "adopt")?.unwrap_or(false);
    Ok((account.map(str::to_owned), adopt))
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
    if valid {
        Ok(())
    } else {
        Err(ConfigError::ChartName {
            field,
            value: cut(value),
        })
    }
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
    if valid {
        Ok(())
    } else {
        Err(ConfigError::ChartVersion {
            field,
            value: cut(value),
        })
    }
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
mod tests {
    use serde_json::json;

    use super::*;

    const BITNAMI: &str = "https://repo.broadcom.com/bitnami-files";
    const PROMETHEUS: &str = "https://prometheus-community.github.io/helm-charts";

    fn http(url: &str, repo: &str, chart: &str, version: &str) -> ChartSource {
        ChartSource::Http {
            repository: Repository {
                url: url.to_owned(),
                name: repo.to_owned(),
            },
            chart: ChartRef {
                name: chart.to_owned(),
                version: version.to_owned(),
            },
        }
    }

    fn oci(chart: &str, secret: Option<(&str, Option<&str>)>) -> ChartSource {
        ChartSource::Oci {
            chart: chart.to_owned(),
            authentication: secret.map(|(name, namespace)| OciAuthentication {
                method: "registry".to_owned(),
                secret_ref: SecretRef {
                    name: name.to_owned(),
                    namespace: namespace.map(str::to_owned),
                },
            }),
        }
    }

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            other => panic!("test values must be an object, got {other}"),
        }
    }

    fn expected(
        release_name: &str,
        release_namespace: &str,
        manage_namespace: bool,
        source: ChartSource,
        values: Value,
    ) -> HelmConfig {
        HelmConfig {
            release_name: release_name.to_owned(),
            release_namespace: release_namespace.to_owned(),
            manage_namespace,
            source,
            values: object(values),
            service_account_name: None,
            adopt: false,
        }
    }

    struct Valid {
        name: &'static str,
        /// Component namespace and name.
        component: (&'static str, &'static str),
        config: Value,
        expected: HelmConfig,
        /// JSON pointers into the normalized values and the value expected there.
        probes: Vec<(&'static str, Value)>,
    }

    fn nginx_values() -> Value {
        json!({"service": {"type": "ClusterIP"}, "replicaCount": 1})
    }

    fn nginx_advanced_values() -> Value {
        json!({
            "replicaCount": 3,
            "service": {
                "type": "LoadBalancer",
                "annotations": {
                    "service.beta.kubernetes.io/aws-load-balancer-type": "nlb",
                    "service.beta.kubernetes.io/aws-load-balancer-internal": "true"
                }
            },
            "ingress": {
                "enabled": true,
                "hostname": "www.example.com",
                "ingressClassName": "nginx",
                "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt-prod"},
                "tls": true,
                "extraTls": [
                    {"hosts": ["www.example.com"], "secretName": "www-example-com-tls"},
                    {"hosts": ["api.example.com"], "secretName": "api-example-com-tls"}
                ]
            },
            "resources": {
                "requests": {"cpu": "100m", "memory": "128Mi"},
                "limits": {"cpu": "500m", "memory": "512Mi"}
            },
            "autoscaling": {"enabled": true, "minReplicas": 3, "maxReplicas": 10, "targetCPU": 70},
            "podSecurityContext": {"enabled": true, "fsGroup": 1001},
            "containerSecurityContext": {
                "enabled": true,
                "runAsUser": 1001,
                "runAsNonRoot": true,
                "readOnlyRootFilesystem": true
            }
        })
    }

    fn postgresql_values() -> Value {
        json!({
            "auth": {
                "postgresPassword": "s3cr3t-admin",
                "username": "app",
                "password": "s3cr3t-app",
                "database": "appdb"
            },
            "primary": {
                "persistence": {"enabled": true, "size": "20Gi", "storageClass": "standard"},
                "extendedConfiguration": "max_connections = 200\nshared_buffers = 256MB\nwork_mem = 8MB\n"
            },
            "metrics": {
                "enabled": true,
                "serviceMonitor": {"enabled": true, "namespace": "monitoring", "interval": "30s"}
            }
        })
    }

    fn redis_values() -> Value {
        json!({
            "architecture": "replication",
            "auth": {"enabled": true, "password": "redis-pass"},
            "master": {"persistence": {"size": "8Gi"}},
            "replica": {"replicaCount": 2, "persistence": {"size": "8Gi"}}
        })
    }

    fn wordpress_values() -> Value {
        json!({
            "wordpressUsername": "admin",
            "wordpressPassword": "wp-pass",
            "wordpressEmail": "admin@example.com",
            "wordpressBlogName": "Engineering Blog",
            "service": {"type": "ClusterIP"},
            "persistence": {"enabled": true, "size": "10Gi"},
            "mariadb": {
                "enabled": true,
                "architecture": "standalone",
                "auth": {
                    "rootPassword": "root-pass",
                    "database": "bitnami_wordpress",
                    "username": "bn_wordpress",
                    "password": "db-pass"
                },
                "primary": {"persistence": {"enabled": true, "size": "8Gi"}}
            }
        })
    }

    fn prometheus_values() -> Value {
        json!({
            "grafana": {"enabled": true, "adminPassword": "grafana-pass"},
            "alertmanager": {"enabled": true},
            "prometheus": {
                "prometheusSpec": {
                    "retention": "15d",
                    "serviceMonitorSelectorNilUsesHelmValues": false,
                    "podMonitorSelectorNilUsesHelmValues": false,
                    "storageSpec": {
                        "volumeClaimTemplate": {
                            "spec": {
                                "storageClassName": "standard",
                                "accessModes": ["ReadWriteOnce"],
                                "resources": {"requests": {"storage": "50Gi"}}
                            }
                        }
                    }
                }
            }
        })
    }

    fn valid_cases() -> Vec<Valid> {
        vec![
            Valid {
                name: "nginx source form",
                component: ("default", "nginx"),
                config: json!({
                    "releaseName": "nginx",
                    "releaseNamespace": "web",
                    "source": {
                        "type": "http",
                        "repository": {"url": BITNAMI, "name": "bitnami"},
                        "chart": {"name": "nginx", "version": "18.2.4"}
                    },
                    "values": nginx_values()
                }),
                expected: expected(
                    "nginx",
                    "web",
                    true,
                    http(BITNAMI, "bitnami", "nginx", "18.2.4"),
                    nginx_values(),
                ),
                probes: vec![
                    ("/service/type", json!("ClusterIP")),
                    ("/replicaCount", json!(1)),
                ],
            },
            Valid {
                name: "nginx MVP form without namespace",
                component: ("default", "nginx"),
                config: json!({
                    "repository": {"url": BITNAMI, "name": "bitnami"},
                    "chart": {"name": "nginx", "version": "18.2.4"},
                    "values": nginx_values()
                }),
                expected: expected(
                    "default-nginx",
                    "default",
                    false,
                    http(BITNAMI, "bitnami", "nginx", "18.2.4"),
                    nginx_values(),
                ),
                probes: vec![
                    ("/service/type", json!("ClusterIP")),
                    ("/replicaCount", json!(1)),
                ],
            },
            Valid {
                name: "nginx advanced",
                component: ("web", "frontend"),
                config: json!({
                    "releaseName": "frontend",
                    "releaseNamespace": "web-frontend",
                    "manageNamespace": true,
                    "source": {
                        "type": "http",
                        "repository": {"url": BITNAMI, "name": "bitnami"},
                        "chart": {"name": "nginx", "version": "18.2.4"}
                    },
                    "values": nginx_advanced_values()
                }),
                expected: expected(
                    "frontend",
                    "web-frontend",
                    true,
                    http(BITNAMI, "bitnami", "nginx", "18.2.4"),
                    nginx_advanced_values(),
                ),
                probes: vec![
                    ("/replicaCount", json!(3)),
                    ("/service/type", json!("LoadBalancer")),
                    (
                        "/service/annotations/service.beta.kubernetes.io~1aws-load-balancer-type",
                        json!("nlb"),
                    ),
                    ("/ingress/extraTls/1/hosts/0", json!("api.example.com")),
                    ("/resources/limits/memory", json!("512Mi")),
                    ("/autoscaling/maxReplicas", json!(10)),
                    ("/containerSecurityContext/runAsNonRoot", json!(true)),
                ],
            },
            Valid {
                name: "postgresql with metrics and extended configuration",
                component: ("databases", "orders-db"),
                config: json!({
                    "releaseName": "orders-db",
                    "releaseNamespace": "databases",
                    "manageNamespace": false,
                    "source": {
                        "type": "http",
                        "repository": {"url": BITNAMI, "name": "bitnami"},
                        "chart": {"name": "postgresql", "version": "16.2.1"}
                    },
                    "values": postgresql_values()
                }),
                expected: expected(
                    "orders-db",
                    "databases",
                    false,
                    http(BITNAMI, "bitnami", "postgresql", "16.2.1"),
                    postgresql_values(),
                ),
                probes: vec![
                    ("/auth/database", json!("appdb")),
                    ("/primary/persistence/size", json!("20Gi")),
                    ("/metrics/serviceMonitor/enabled", json!(true)),
                    (
                        "/primary/extendedConfiguration",
                        json!("max_connections = 200\nshared_buffers = 256MB\nwork_mem = 8MB\n"),
                    ),
                ],
            },
            Valid {
                name: "redis MVP form in cache-system",
                component: ("default", "redis"),
                config: json!({
                    "repository": {"url": BITNAMI, "name": "bitnami"},
                    "chart": {"name": "redis", "version": "20.2.1"},
                    "namespace": "cache-system",
                    "values": redis_values()
                }),
                expected: expected(
                    "default-redis",
                    "cache-system",
                    true,
                    http(BITNAMI, "bitnami", "redis", "20.2.1"),
                    redis_values(),
                ),
                probes: vec![
                    ("/architecture", json!("replication")),
                    ("/replica/replicaCount", json!(2)),
                ],
            },
            Valid {
                name: "wordpress with mariadb",
                component: ("blog", "wordpress"),
                config: json!({
                    "releaseName": "blog",
                    "releaseNamespace": "blog",
                    "source": {
                        "type": "http",
                        "repository": {"url": BITNAMI, "name": "bitnami"},
                        "chart": {"name": "wordpress", "version": "23.1.40"}
                    },
                    "values": wordpress_values()
                }),
                expected: expected(
                    "blog",
                    "blog",
                    true,
                    http(BITNAMI, "bitnami", "wordpress", "23.1.40"),
                    wordpress_values(),
                ),
                probes: vec![
                    ("/mariadb/enabled", json!(true)),
                    ("/mariadb/auth/database", json!("bitnami_wordpress")),
                    ("/wordpressBlogName", json!("Engineering Blog")),
                ],
            },
            Valid {
                name: "kube-prometheus-stack in monitoring",
                component: ("platform", "monitoring"),
                config: json!({
                    "releaseName": "kube-prometheus-stack",
                    "releaseNamespace": "monitoring",
                    "source": {
                        "type": "http",
                        "repository": {"url": PROMETHEUS, "name": "prometheus-community"},
                        "chart": {"name": "kube-prometheus-stack", "version": "65.1.1"}
                    },
                    "values": prometheus_values()
                }),
                expected: expected(
                    "kube-prometheus-stack",
                    "monitoring",
                    true,
                    http(
                        PROMETHEUS,
                        "prometheus-community",
                        "kube-prometheus-stack",
                        "65.1.1",
                    ),
                    prometheus_values(),
                ),
                probes: vec![
                    (
                        "/prometheus/prometheusSpec/storageSpec/volumeClaimTemplate/spec/resources/requests/storage",
                        json!("50Gi"),
                    ),
                    (
                        "/prometheus/prometheusSpec/storageSpec/volumeClaimTemplate/spec/accessModes/0",
                        json!("ReadWriteOnce"),
                    ),
                    ("/grafana/enabled", json!(true)),
                ],
            },
            Valid {
                name: "oci without authentication",
                component: ("default", "nginx"),
                config: json!({
                    "releaseName": "nginx-oci",
                    "releaseNamespace": "web",
                    "source": {
                        "type": "oci",
                        "chart": "oci://registry-1.docker.io/bitnamicharts/nginx:18.2.4"
                    },
                    "values": nginx_values()
                }),
                expected: expected(
                    "nginx-oci",
                    "web",
                    true,
                    oci(
                        "oci://registry-1.docker.io/bitnamicharts/nginx:18.2.4",
                        None,
                    ),
                    nginx_values(),
                ),
                probes: vec![("/service/type", json!("ClusterIP"))],
            },
            Valid {
                name: "oci with authentication",
                component: ("default", "nginx"),
                config: json!({
                    "releaseName": "nginx-oci",
                    "releaseNamespace": "web",
                    "source": {
                        "type": "oci",
                        "chart": "oci://registry-1.docker.io/bitnamicharts/nginx:18.2.4",
                        "authentication": {
                            "method": "registry",
                            "secretRef": {"name": "dockerhub-creds", "namespace": "helmq-system"}
                        }
                    }
                }),
                expected: expected(
                    "nginx-oci",
                    "web",
                    true,
                    oci(
                        "oci://registry-1.docker.io/bitnamicharts/nginx:18.2.4",
                        Some(("dockerhub-creds", Some("helmq-system"))),
                    ),
                    json!({}),
                ),
                probes: vec![],
            },
            Valid {
                name: "oci registry with port, secret without namespace",
                component: ("apps", "app"),
                config: json!({
                    "releaseName": "app",
                    "releaseNamespace": "apps",
                    "manageNamespace": false,
                    "source": {
                        "type": "oci",
                        "chart": "oci://localhost:5000/charts/app:1.0.0",
                        "authentication": {
                            "method": "registry",
                            "secretRef": {"name": "local-registry", "namespace": ""}
                        }
                    },
                    "values": {"image": {"tag": "1.0.0"}}
                }),
                expected: expected(
                    "app",
                    "apps",
                    false,
                    oci(
                        "oci://localhost:5000/charts/app:1.0.0",
                        Some(("local-registry", None)),
                    ),
                    json!({"image": {"tag": "1.0.0"}}),
                ),
                probes: vec![("/image/tag", json!("1.0.0"))],
            },
            Valid {
                name: "MVP namespace equal to the component's",
                component: ("shop", "cart"),
                config: json!({
                    "repository": {"url": BITNAMI, "name": "bitnami"},
                    "chart": {"name": "redis", "version": "20.2.1"},
                    "namespace": "shop"
                }),
                expected: expected(
                    "shop-cart",
                    "shop",
                    false,
                    http(BITNAMI, "bitnami", "redis", "20.2.1"),
                    json!({}),
                ),
                probes: vec![],
            },
            Valid {
                name: "MVP explicit manageNamespace false, timeouts ignored",
                component: ("default", "redis"),
                config: json!({
                    "repository": {"url": BITNAMI, "name": "bitnami"},
                    "chart": {"name": "redis", "version": "20.2.1"},
                    "namespace": "cache-system",
                    "manageNamespace": false,
                    "timeouts": {"install": "10m"},
                    "values": null
                }),
                expected: expected(
                    "default-redis",
                    "cache-system",
                    false,
                    http(BITNAMI, "bitnami", "redis", "20.2.1"),
                    json!({}),
                ),
                probes: vec![],
            },
            Valid {
                name: "values null, http authentication and unknown keys ignored",
                component: ("default", "nginx"),
                config: json!({
                    "releaseName": "nginx",
                    "releaseNamespace": "default",
                    "manageNamespace": false,
                    "timeouts": {"deploy": "5m"},
                    "comment": "ignored",
                    "source": {
                        "type": "http",
                        "repository": {"url": BITNAMI, "name": "bitnami"},
                        "chart": {"name": "nginx", "version": "18.2.4"},
                        "authentication": {}
                    },
                    "values": null
                }),
                expected: expected(
                    "nginx",
                    "default",
                    false,
                    http(BITNAMI, "bitnami", "nginx", "18.2.4"),
                    json!({}),
                ),
                probes: vec![],
            },
            Valid {
                name: "semver range version and dotted release name",
                component: ("default", "nginx"),
                config: json!({
                    "releaseName": "nginx.v2",
                    "releaseNamespace": "web",
                    "source": {
                        "type": "http",
                        "repository": {"url": "http://charts.internal:8080/stable", "name": "internal"},
                        "chart": {"name": "nginx", "version": "~18.2"}
                    }
                }),
                expected: expected(
                    "nginx.v2",
                    "web",
                    true,
                    http(
                        "http://charts.internal:8080/stable",
                        "internal",
                        "nginx",
                        "~18.2",
                    ),
                    json!({}),
                ),
                probes: vec![],
            },
            Valid {
                name: "a tenant's ServiceAccount and adoption",
                component: ("team-a", "web"),
                config: json!({
                    "releaseName": "web",
                    "releaseNamespace": "team-a",
                    "serviceAccountName": "helmq-deployer",
                    "adopt": true,
                    "source": {
                        "type": "http",
                        "repository": {"url": "http://charts.internal:8080/stable", "name": "internal"},
                        "chart": {"name": "nginx", "version": "18.2.0"}
                    }
                }),
                expected: HelmConfig {
                    service_account_name: Some("helmq-deployer".into()),
                    adopt: true,
                    ..expected(
                        "web",
                        "team-a",
                        true,
                        http(
                            "http://charts.internal:8080/stable",
                            "internal",
                            "nginx",
                            "18.2.0",
                        ),
                        json!({}),
                    )
                },
                probes: vec![],
            },
        ]
    }

    #[test]
    fn valid_configs_normalize() {
        let cases = valid_cases();
        assert!(cases.len() >= 10);
        for case in cases {
            let (namespace, name) = case.component;
            let cfg = HelmConfig::parse(Some(&case.config), namespace, name)
                .unwrap_or_else(|e| panic!("case {}: {e}", case.name));
            assert_eq!(cfg, case.expected, "case {}", case.name);
            let values = Value::Object(cfg.values.clone());
            for (pointer, want) in &case.probes {
                assert_eq!(
                    values.pointer(pointer),
                    Some(want),
                    "case {}: {pointer}",
                    case.name
                );
            }
            assert_eq!(cfg.validate(), Ok(()), "case {}", case.name);
        }
    }

    #[test]
    fn normalized_form_round_trips() {
        for case in valid_cases() {
            let (namespace, name) = case.component;
            let cfg = HelmConfig::parse(Some(&case.config), namespace, name)
                .unwrap_or_else(|e| panic!("case {}: {e}", case.name));
            let wire = serde_json::to_value(&cfg).expect("serialize");
            // Parsing the normalized form is the identity, whatever the component.
            let again = HelmConfig::parse(Some(&wire), "elsewhere", "other")
                .unwrap_or_else(|e| panic!("case {}: {e}", case.name));
            assert_eq!(again, cfg, "case {}", case.name);
            let decoded: HelmConfig = serde_json::from_value(wire).expect("deserialize");
            assert_eq!(decoded, cfg, "case {}", case.name);
        }
    }

    struct Broken {
        name: &'static str,
        config: Option<Value>,
        component: (&'static str, &'static str),
        message: String,
    }

    fn broken(name: &'static str, config: Value, message: impl Into<String>) -> Broken {
        Broken {
            name,
            config: Some(config),
            component: ("default", "web"),
            message: message.into(),
        }
    }

    /// A valid source form with `patch` merged in at the top level.
    fn source_form(patch: Value) -> Value {
        let mut base = json!({
            "releaseName": "nginx",
            "releaseNamespace": "web",
            "source": {
                "type": "http",
                "repository": {"url": BITNAMI, "name": "bitnami"},
                "chart": {"name": "nginx", "version": "18.2.4"}
            },
            "values": {"replicaCount": 1}
        });
        merge(&mut base, patch);
        base
    }

    /// A valid OCI source form with `patch` merged into `source`.
    fn oci_form(patch: Value) -> Value {
        let mut source = json!({
            "type": "oci",
            "chart": "oci://registry-1.docker.io/bitnamicharts/nginx:18.2.4",
            "authentication": {"method": "registry", "secretRef": {"name": "creds"}}
        });
        merge(&mut source, patch);
        json!({"releaseName": "nginx", "releaseNamespace": "web", "source": source})
    }

    /// A valid MVP form with `patch` merged in at the top level.
    fn mvp_form(patch: Value) -> Value {
        let mut base = json!({
            "repository": {"url": BITNAMI, "name": "bitnami"},
            "chart": {"name": "nginx", "version": "18.2.4"},
            "values": {"replicaCount": 1}
        });
        merge(&mut base, patch);
        base
    }

    /// JSON merge: objects merge recursively, a `"$delete"` string removes the key, anything
    /// else replaces.
    fn merge(base: &mut Value, patch: Value) {
        match (base, patch) {
            (Value::Object(base), Value::Object(patch)) => {
                for (key, value) in patch {
                    if value == json!("$delete") {
                        base.remove(&key);
                    } else if let Some(existing) = base.get_mut(&key)
                        && existing.is_object()
                        && value.is_object()
                    {
                        merge(existing, value);
                    } else {
                        base.insert(key, value);
                    }
                }
            }
            (base, patch) => *base = patch,
        }
    }

    fn broken_cases() -> Vec<Broken> {
        let big = "x".repeat(300 * 1024);
        let big_size = 300 * 1024 + r#"{"blob":""}"#.len();
        let name_rule = "must be a chart name: letters, digits, '.', '_' and '-', starting with a letter or digit, without '..', at most 128 characters; got";
        let version_rule = "must be a chart version or range: letters, digits, spaces and . + - ^ ~ < > = * | , !, starting with a letter, a digit or one of ^ ~ < > = *, at most 64 characters; got";
        vec![
            // Chart names and versions that would reach helm as a flag or a path (issue 20).
            broken(
                "chart name is a flag",
                source_form(json!({"source": {"chart": {"name": "--version"}}})),
                format!("source.chart.name {name_rule} \"--version\""),
            ),
            broken(
                "chart name is a path",
                source_form(json!({"source": {"chart": {"name": "../../../../etc/passwd"}}})),
                format!("source.chart.name {name_rule} \"../../../../etc/passwd\""),
            ),
            broken(
                "chart name too long",
                source_form(json!({"source": {"chart": {"name": "a".repeat(129)}}})),
                format!("source.chart.name {name_rule} \"{}\"", "a".repeat(64)),
            ),
            broken(
                "chart name with a slash",
                mvp_form(json!({"chart": {"name": "stable/nginx"}})),
                format!("chart.name {name_rule} \"stable/nginx\""),
            ),
            broken(
                "chart version is a flag",
                source_form(json!({"source": {"chart": {"version": "--set=a=b"}}})),
                format!("source.chart.version {version_rule} \"--set=a=b\""),
            ),
            broken(
                "chart version with a shell substitution",
                mvp_form(json!({"chart": {"version": "1.0$(id)"}})),
                format!("chart.version {version_rule} \"1.0$(id)\""),
            ),
            // Whole config.
            Broken {
                name: "config absent",
                config: None,
                component: ("default", "web"),
                message: "config is required for helm components".into(),
            },
            broken(
                "config null",
                Value::Null,
                "config is required for helm components",
            ),
            broken(
                "config is a YAML string",
                json!("releaseName: nginx\nreleaseNamespace: web\n"),
                "config must be an object, got string",
            ),
            broken(
                "config number",
                json!(42),
                "config must be an object, got number",
            ),
            broken(
                "config boolean",
                json!(true),
                "config must be an object, got boolean",
            ),
            broken(
                "config array",
                json!([]),
                "config must be an object, got array",
            ),
            broken(
                "both shapes",
                source_form(json!({"repository": {"url": BITNAMI, "name": "bitnami"}})),
                "config mixes the source form (source) with the MVP form (repository, chart): use one",
            ),
            broken(
                "source with MVP chart",
                source_form(json!({"chart": {"name": "nginx", "version": "1"}})),
                "config mixes the source form (source) with the MVP form (repository, chart): use one",
            ),
            broken(
                "empty object",
                json!({}),
                "source field is required in helm configuration",
            ),
            broken(
                "only timeouts",
                json!({"timeouts": {"install": "5m"}, "values": {}}),
                "source field is required in helm configuration",
            ),
            // Source form, top level.
            broken(
                "releaseName missing",
                source_form(json!({"releaseName": "$delete"})),
                "releaseName is required",
            ),
            broken(
                "releaseName empty",
                source_form(json!({"releaseName": ""})),
                "releaseName is required",
            ),
            broken(
                "releaseName whitespace",
                source_form(json!({"releaseName": "   "})),
                "releaseName is required",
            ),
            broken(
                "releaseName number",
                source_form(json!({"releaseName": 42})),
                "releaseName must be a string, got number",
            ),
            broken(
                "releaseName uppercase",
                source_form(json!({"releaseName": "MyNginx"})),
                "releaseName must be a lowercase DNS-1123 name of at most 53 characters, got MyNginx",
            ),
            broken(
                "releaseName underscore",
                source_form(json!({"releaseName": "my_nginx"})),
                "releaseName must be a lowercase DNS-1123 name of at most 53 characters, got my_nginx",
            ),
            broken(
                "releaseName trailing dash",
                source_form(json!({"releaseName": "nginx-"})),
                "releaseName must be a lowercase DNS-1123 name of at most 53 characters, got nginx-",
            ),
            broken(
                "releaseName 54 characters",
                source_form(json!({"releaseName": "a".repeat(54)})),
                format!(
                    "releaseName must be a lowercase DNS-1123 name of at most 53 characters, got {}",
                    "a".repeat(54)
                ),
            ),
            broken(
                "releaseNamespace missing",
                source_form(json!({"releaseNamespace": "$delete"})),
                "releaseNamespace is required",
            ),
            broken(
                "releaseNamespace bool",
                source_form(json!({"releaseNamespace": false})),
                "releaseNamespace must be a string, got boolean",
            ),
            broken(
                "releaseNamespace invalid",
                source_form(json!({"releaseNamespace": "Team_A"})),
                "releaseNamespace must be a DNS-1123 label of at most 63 characters, got Team_A",
            ),
            broken(
                "releaseNamespace with a dot",
                source_form(json!({"releaseNamespace": "team.a"})),
                "releaseNamespace must be a DNS-1123 label of at most 63 characters, got team.a",
            ),
            broken(
                "releaseNamespace 64 characters",
                source_form(json!({"releaseNamespace": "n".repeat(64)})),
                format!(
                    "releaseNamespace must be a DNS-1123 label of at most 63 characters, got {}",
                    "n".repeat(64)
                ),
            ),
            broken(
                "manageNamespace string",
                source_form(json!({"manageNamespace": "yes"})),
                "manageNamespace must be a boolean, got string",
            ),
            broken(
                "values array",
                source_form(json!({"values": [1, 2]})),
                "values must be an object, got array",
            ),
            broken(
                "values YAML string",
                source_form(json!({"values": "replicaCount: 1\n"})),
                "values must be an object, got string",
            ),
            broken(
                "values too large",
                source_form(json!({"values": {"replicaCount": "$delete", "blob": big}})),
                format!("values is too large: {big_size} bytes (limit 262144)"),
            ),
            broken(
                "source missing",
                source_form(json!({"source": "$delete"})),
                "source field is required in helm configuration",
            ),
            broken(
                "source string",
                source_form(
                    json!({"source": "oci://registry-1.docker.io/bitnamicharts/nginx:18.2.4"}),
                ),
                "source must be an object, got string",
            ),
            // Source form, http source.
            broken(
                "source.type missing",
                source_form(json!({"source": {"type": "$delete"}})),
                "source.type is required (must be 'http' or 'oci')",
            ),
            broken(
                "source.type number",
                source_form(json!({"source": {"type": 1}})),
                "source.type must be a string, got number",
            ),
            broken(
                "source.type git",
                source_form(json!({"source": {"type": "git"}})),
                "unknown source type: git (available types: http, oci)",
            ),
            broken(
                "repository missing",
                source_form(json!({"source": {"repository": "$delete"}})),
                "source.repository is required",
            ),
            broken(
                "repository string",
                source_form(json!({"source": {"repository": BITNAMI}})),
                "source.repository must be an object, got string",
            ),
            broken(
                "repository.url missing",
                source_form(json!({"source": {"repository": {"url": "$delete"}}})),
                "source.repository.url is required",
            ),
            broken(
                "repository.url not a url",
                source_form(json!({"source": {"repository": {"url": "not a url"}}})),
                "source.repository.url is not a valid URL: relative URL without a base",
            ),
            broken(
                "repository.url ftp",
                source_form(json!({"source": {"repository": {"url": "ftp://x"}}})),
                "source.repository.url must use http or https, got ftp",
            ),
            broken(
                "repository.url without host",
                source_form(json!({"source": {"repository": {"url": "https://"}}})),
                "source.repository.url is not a valid URL: empty host",
            ),
            broken(
                "repository.url oci",
                source_form(
                    json!({"source": {"repository": {"url": "oci://registry-1.docker.io/bitnamicharts"}}}),
                ),
                "source.repository.url must use http or https, got oci",
            ),
            broken(
                "repository.name empty",
                source_form(json!({"source": {"repository": {"name": ""}}})),
                "source.repository.name is required",
            ),
            broken(
                "http chart missing",
                source_form(json!({"source": {"chart": "$delete"}})),
                "source.chart is required",
            ),
            broken(
                "http chart string",
                source_form(
                    json!({"source": {"chart": "oci://registry-1.docker.io/bitnamicharts/nginx:18.2.4"}}),
                ),
                "source.chart must be an object, got string",
            ),
            broken(
                "chart.name whitespace",
                source_form(json!({"source": {"chart": {"name": " \t"}}})),
                "source.chart.name is required",
            ),
            broken(
                "chart.version missing",
                source_form(json!({"source": {"chart": {"version": "$delete"}}})),
                "source.chart.version is required",
            ),
            broken(
                "chart.version number",
                source_form(json!({"source": {"chart": {"version": 18.2}}})),
                "source.chart.version must be a string, got number",
            ),
            // Source form, OCI source.
            broken(
                "oci chart missing",
                oci_form(json!({"chart": "$delete"})),
                "source.chart is required",
            ),
            broken(
                "oci chart object",
                oci_form(json!({"chart": {"name": "nginx", "version": "18.2.4"}})),
                "source.chart must be a string, got object",
            ),
            broken(
                "oci without prefix",
                oci_form(json!({"chart": "registry-1.docker.io/bitnamicharts/nginx:18.2.4"})),
                "source.chart must start with oci://, got registry-1.docker.io/bitnamicharts/nginx:18.2.4",
            ),
            broken(
                "oci with https prefix",
                oci_form(
                    json!({"chart": "https://registry-1.docker.io/bitnamicharts/nginx:18.2.4"}),
                ),
                "source.chart must start with oci://, got https://registry-1.docker.io/bitnamicharts/nginx:18.2.4",
            ),
            broken(
                "oci without tag",
                oci_form(json!({"chart": "oci://registry-1.docker.io/bitnamicharts/nginx"})),
                "source.chart must end with a version tag (oci://registry/path/chart:version)",
            ),
            broken(
                "oci port but no tag",
                oci_form(json!({"chart": "oci://localhost:5000/charts/app"})),
                "source.chart must end with a version tag (oci://registry/path/chart:version)",
            ),
            broken(
                "oci empty tag",
                oci_form(json!({"chart": "oci://localhost:5000/charts/app:"})),
                "source.chart must end with a version tag (oci://registry/path/chart:version)",
            ),
            broken(
                "oci digest",
                oci_form(
                    json!({"chart": "oci://registry-1.docker.io/bitnamicharts/nginx@sha256:0123abcd"}),
                ),
                "source.chart must end with a version tag (oci://registry/path/chart:version)",
            ),
            broken(
                "oci without path",
                oci_form(json!({"chart": "oci://registry-1.docker.io"})),
                "source.chart must name a registry and a chart path (oci://registry/path/chart:version)",
            ),
            broken(
                "oci only a registry and a slash",
                oci_form(json!({"chart": "oci://localhost:5000/"})),
                "source.chart must name a registry and a chart path (oci://registry/path/chart:version)",
            ),
            broken(
                "oci without registry",
                oci_form(json!({"chart": "oci:///charts/app:1.0.0"})),
                "source.chart must name a registry and a chart path (oci://registry/path/chart:version)",
            ),
            broken(
                "oci registry that reads as a flag",
                oci_form(json!({"chart": "oci://--help/charts/app:1.0.0"})),
                "source.chart must name a registry and a chart path (oci://registry/path/chart:version)",
            ),
            broken(
                "oci authentication string",
                oci_form(json!({"authentication": "registry"})),
                "source.authentication must be an object, got string",
            ),
            broken(
                "oci auth method basic",
                oci_form(json!({"authentication": {"method": "basic"}})),
                "source.authentication.method must be 'registry', got basic",
            ),
            broken(
                "oci auth method missing",
                oci_form(json!({"authentication": {"method": "$delete"}})),
                "source.authentication.method is required",
            ),
            broken(
                "oci secretRef missing",
                oci_form(json!({"authentication": {"secretRef": "$delete"}})),
                "source.authentication.secretRef is required",
            ),
            broken(
                "oci secretRef.name empty",
                oci_form(json!({"authentication": {"secretRef": {"name": ""}}})),
                "source.authentication.secretRef.name is required",
            ),
            broken(
                "oci secretRef.namespace invalid",
                oci_form(json!({"authentication": {"secretRef": {"namespace": "Helmq"}}})),
                "source.authentication.secretRef.namespace must be a DNS-1123 label of at most 63 characters, got Helmq",
            ),
            // MVP form.
            broken(
                "MVP repository string",
                mvp_form(json!({"repository": BITNAMI})),
                "repository must be an object, got string",
            ),
            broken(
                "MVP repository missing",
                mvp_form(json!({"repository": "$delete"})),
                "repository is required",
            ),
            broken(
                "MVP repository.url missing",
                mvp_form(json!({"repository": {"url": "$delete"}})),
                "repository.url is required",
            ),
            broken(
                "MVP repository.url ftp",
                mvp_form(json!({"repository": {"url": "ftp://charts.example.com"}})),
                "repository.url must use http or https, got ftp",
            ),
            broken(
                "MVP repository.url not a url",
                mvp_form(json!({"repository": {"url": "not a url"}})),
                "repository.url is not a valid URL: relative URL without a base",
            ),
            broken(
                "MVP repository.name missing",
                mvp_form(json!({"repository": {"name": "$delete"}})),
                "repository.name is required",
            ),
            broken(
                "MVP chart missing",
                mvp_form(json!({"chart": "$delete"})),
                "chart is required",
            ),
            broken(
                "MVP chart.name empty",
                mvp_form(json!({"chart": {"name": ""}})),
                "chart.name is required",
            ),
            broken(
                "MVP chart.version missing",
                mvp_form(json!({"chart": {"version": "$delete"}})),
                "chart.version is required",
            ),
            broken(
                "MVP values array",
                mvp_form(json!({"values": ["a"]})),
                "values must be an object, got array",
            ),
            broken(
                "MVP namespace invalid",
                mvp_form(json!({"namespace": "Cache_System"})),
                "namespace must be a DNS-1123 label of at most 63 characters, got Cache_System",
            ),
            broken(
                "MVP namespace number",
                mvp_form(json!({"namespace": 7})),
                "namespace must be a string, got number",
            ),
            broken(
                "MVP manageNamespace string",
                mvp_form(json!({"manageNamespace": "true"})),
                "manageNamespace must be a boolean, got string",
            ),
            broken(
                "serviceAccountName with a colon (would name another user)",
                source_form(json!({"serviceAccountName": "x:y"})),
                "serviceAccountName must be a ServiceAccount name (a DNS-1123 subdomain of at most 253 characters), got \"x:y\"",
            ),
            broken(
                "serviceAccountName number",
                source_form(json!({"serviceAccountName": 7})),
                "serviceAccountName must be a string, got number",
            ),
            broken(
                "MVP serviceAccountName uppercase",
                mvp_form(json!({"serviceAccountName": "Deployer"})),
                "serviceAccountName must be a ServiceAccount name (a DNS-1123 subdomain of at most 253 characters), got \"Deployer\"",
            ),
            broken(
                "adopt string",
                source_form(json!({"adopt": "yes"})),
                "adopt must be a boolean, got string",
            ),
            Broken {
                name: "MVP derived release name too long",
                config: Some(mvp_form(json!({}))),
                component: (
                    "platform-engineering-team",
                    "very-long-component-name-for-nginx",
                ),
                message: "releaseName must be a lowercase DNS-1123 name of at most 53 characters, \
                          got platform-engineering-team-very-long-component-name-for-nginx"
                    .into(),
            },
        ]
    }

    #[test]
    fn broken_configs_are_rejected_with_exact_messages() {
        let cases = broken_cases();
        assert!(cases.len() >= 20);
        for case in cases {
            let (namespace, name) = case.component;
            match HelmConfig::parse(case.config.as_ref(), namespace, name) {
                Ok(cfg) => panic!("case {}: accepted as {cfg:?}", case.name),
                Err(err) => assert_eq!(err.to_string(), case.message, "case {}", case.name),
            }
        }
    }

    /// Any broken source-form config that still deserializes is rejected by `validate` with the
    /// message `parse` gives.
    #[test]
    fn validate_agrees_with_parse_on_source_form() {
        let mut checked = 0;
        for case in broken_cases() {
            let Some(config) = &case.config else { continue };
            let mvp_keys = config.get("repository").is_some() || config.get("chart").is_some();
            if mvp_keys {
                continue;
            }
            let Ok(cfg) = serde_json::from_value::<HelmConfig>(config.clone()) else {
                continue;
            };
            let (namespace, name) = case.component;
            let from_parse = HelmConfig::parse(Some(config), namespace, name);
            assert_eq!(cfg.validate(), from_parse.map(|_| ()), "case {}", case.name);
            checked += 1;
        }
        assert!(checked >= 10, "only {checked} cases checked");
    }

    #[test]
    fn validate_rejects_empty_release_name() {
        let wire = json!({
            "releaseName": "",
            "releaseNamespace": "web",
            "manageNamespace": true,
            "source": {
                "type": "http",
                "repository": {"url": BITNAMI, "name": "bitnami"},
                "chart": {"name": "nginx", "version": "18.2.4"}
            },
            "values": {}
        });
        let cfg: HelmConfig = serde_json::from_value(wire.clone()).expect("deserialize");
        let err = cfg.validate().expect_err("empty releaseName");
        assert_eq!(
            err,
            ConfigError::Required {
                field: "releaseName"
            }
        );
        assert_eq!(err.to_string(), "releaseName is required");
        let parsed = HelmConfig::parse(Some(&wire), "default", "web").expect_err("rejected");
        assert_eq!(parsed.to_string(), err.to_string());
    }

    #[test]
    fn validate_rejects_bad_oci_reference() {
        let mut cfg =
            HelmConfig::parse(Some(&oci_form(json!({}))), "default", "web").expect("valid");
        assert_eq!(cfg.validate(), Ok(()));
        cfg.source = oci("oci://localhost:5000/charts/app", None);
        assert_eq!(
            cfg.validate().map_err(|e| e.to_string()),
            Err(
                "source.chart must end with a version tag (oci://registry/path/chart:version)"
                    .to_owned()
            )
        );
    }

    #[test]
    fn chart_name_and_version() {
        let cases = [
            (
                http(BITNAMI, "bitnami", "nginx", "18.2.4"),
                "nginx",
                "18.2.4",
            ),
            (
                http(
                    PROMETHEUS,
                    "prometheus-community",
                    "kube-prometheus-stack",
                    "65.1.1",
                ),
                "kube-prometheus-stack",
                "65.1.1",
            ),
            (
                oci(
                    "oci://registry-1.docker.io/bitnamicharts/nginx:18.2.4",
                    None,
                ),
                "nginx",
                "18.2.4",
            ),
            (
                oci("oci://localhost:5000/charts/app:1.0.0", None),
                "app",
                "1.0.0",
            ),
            (
                oci("oci://ghcr.io/org/team/charts/api:2.3.4-rc.1", None),
                "api",
                "2.3.4-rc.1",
            ),
            // Malformed references never panic: last segment, no tag.
            (oci("oci://localhost:5000/charts/app", None), "app", ""),
            (oci("", None), "", ""),
        ];
        for (source, name, version) in cases {
            let cfg = expected("r", "ns", true, source, json!({}));
            assert_eq!(cfg.chart_name(), name, "{:?}", cfg.source);
            assert_eq!(cfg.chart_version(), version, "{:?}", cfg.source);
        }
    }

    #[test]
    fn serialized_form_is_camel_case_and_tagged() {
        let cfg = expected(
            "app",
            "apps",
            false,
            oci(
                "oci://localhost:5000/charts/app:1.0.0",
                Some(("creds", Some("apps"))),
            ),
            json!({"a": 1}),
        );
        assert_eq!(
            serde_json::to_value(&cfg).expect("serialize"),
            json!({
                "releaseName": "app",
                "releaseNamespace": "apps",
                "manageNamespace": false,
                "source": {
                    "type": "oci",
                    "chart": "oci://localhost:5000/charts/app:1.0.0",
                    "authentication": {
                        "method": "registry",
                        "secretRef": {"name": "creds", "namespace": "apps"}
                    }
                },
                "values": {"a": 1}
            })
        );
    }
}

//! OCI registry logins for sources with `authentication`: the credentials come from a
//! Kubernetes Secret read with `kubectl get secret -o json`, the password goes to
//! `helm registry login` on stdin, and the login is kept in a
//! registry config file private to that one pull (`HELM_REGISTRY_CONFIG`), deleted after it, so
//! no job can pull with another job's credentials. Secret values never reach argv, logs or
//! errors (the password is redacted from the login's and the pull's stderr).
//!
//! Credentials never cross a boundary:
//! - the Secret must be in the job's own namespace (the Component's; the release namespace for
//!   an orchestrator job without a uid), or in one the operator allows
//!   (`--allowed-secret-namespaces`);
//! - they go only to a registry the Secret itself names, never to a host taken from the job
//!   alone: a `kubernetes.io/dockerconfigjson` Secret's `auths` keys, or the `registry` key of
//!   a Secret with `token` or `username` + `password`; `host[:port]` must match the chart
//!   reference's exactly (case-insensitive).

use std::fmt;

use base64::Engine as _;
use helmq_schemas::config::OciAuthentication;
use helmq_schemas::{dns, oci};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::HelmCli;
use super::args::{kubectl_get_secret_args, registry_login_args};
use crate::driver::{DriverError, KubectlAction};
use crate::ownership::Identity;

/// The user name helm logs in with when the Secret holds only a token; registries that take a
/// token as the password ignore it.
const TOKEN_USERNAME: &str = "helmq";

/// Why a registry login cannot be attempted. Names keys, never values.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The chart reference does not parse, so there is no registry to log in to.
    #[error("the chart reference names no registry host")]
    NoRegistryHost,
    /// `secretRef.name` is no Kubernetes name (and might read as a flag).
    #[error("the secret name is not a valid Kubernetes name")]
    InvalidSecretName,
    /// The worker runs without kubectl.
    #[error("kubectl is disabled on this worker (set --kubectl-bin / HELMQ_KUBECTL_BIN)")]
    KubectlDisabled,
    /// kubectl's output is not a Secret in JSON.
    #[error("kubectl printed no readable secret ({0})")]
    Unreadable(#[source] serde_json::Error),
    /// The Secret's `data` is not a map.
    #[error("the secret's data is not a map")]
    DataNotAMap,
    /// A key's value is not a string.
    #[error("key {0} is not a string")]
    NotAString(&'static str),
    /// A key's value is not base64 (the decoder's error is dropped: it quotes the value).
    #[error("key {0} is not valid base64")]
    NotBase64(&'static str),
    /// `username` is not UTF-8.
    #[error("key username is not UTF-8")]
    UsernameNotUtf8,
    /// The Secret is in another namespace than the job's own, and the operator does not allow
    /// that namespace.
    #[error(
        "the secret is not in the job's own namespace {own} and namespace {namespace} is not in \
         --allowed-secret-namespaces"
    )]
    OtherNamespace {
        /// The Secret's namespace.
        namespace: String,
        /// The job's own namespace.
        own: String,
    },
    /// The Secret names no credentials for the chart's registry.
    #[error(
        "the secret names no credentials for this registry (it names {named}); credentials are \
         only sent to a registry the secret names"
    )]
    OtherRegistry {
        /// The registries the Secret names, sorted, or `none`.
        named: String,
    },
    /// A Secret with `token` or `username` + `password` and no `registry` key.
    #[error(
        "the secret names no registry: add a `registry` key (host[:port]) or use a \
         kubernetes.io/dockerconfigjson secret"
    )]
    NoRegistryNamed,
    /// `.dockerconfigjson` is not a docker config with `auths`.
    #[error("key .dockerconfigjson is not a docker config with auths")]
    BadDockerConfig,
    /// Neither a token nor both user name and password.
    #[error(
        "the secret holds no token and no {missing} (keys found: {found}); it needs `token` or \
         both `username` and `password`"
    )]
    Incomplete {
        /// `username and password`, `username` or `password`.
        missing: String,
        /// The Secret's keys, sorted, or `none`.
        found: String,
    },
}

impl HelmCli {
    /// Reads the Secret of an OCI source's `authentication` and logs in to its registry. The
    /// login lands in a registry config file inside the returned directory, which the pull uses
    /// and which is deleted when the directory is dropped.
    pub(super) async fn registry_login(
        &self,
        chart: &str,
        secret: &SecretName,
        identity: &Identity,
        cancel: &CancellationToken,
    ) -> Result<Login, DriverError> {
        let credentials_error = |registry: &str, reason| DriverError::RegistryCredentials {
            registry: registry.to_owned(),
            secret: secret.to_string(),
            reason,
        };
        let registry = match oci::Reference::parse(chart) {
            Ok(reference) => reference.registry(),
            Err(_) => return Err(credentials_error(chart, CredentialsError::NoRegistryHost)),
        };
        let Some(kubectl) = &self.settings.kubectl_bin else {
            return Err(credentials_error(
                registry,
                CredentialsError::KubectlDisabled,
            ));
        };
        let json = self
            .kubectl(
                kubectl,
                kubectl_get_secret_args(&secret.name, &secret.namespace),
                KubectlAction::ReadSecret {
                    secret: secret.to_string(),
                },
                identity,
                None,
                cancel,
            )
            .await?;
        let credentials = registry_credentials(&json.text, registry)
            .map_err(|reason| credentials_error(registry, reason))?;
        drop(json);
        let dir = tempfile::Builder::new()
            .prefix("registry-")
            .tempdir_in(self.settings.cache_dir.join("tmp"))
            .map_err(|e| DriverError::local("cannot create a registry config directory", e))?;
        let config = dir.path().join("config.json");
        // The password goes on stdin, which is redacted from helm's errors.
        self.helm_with(
            registry_login_args(registry, &credentials.username),
            &Identity::Worker,
            Some(&config),
            Some(&credentials.password),
            &[],
            self.settings.short_timeout,
            cancel,
        )
        .await
        .and_then(super::succeeded)?;
        Ok(Login {
            dir,
            password: credentials.password,
        })
    }
}

/// A registry login for one pull: the directory of its registry config file (deleted when
/// dropped) and the password, which is redacted from the pull's errors.
pub(super) struct Login {
    /// Holds `config.json`.
    pub(super) dir: tempfile::TempDir,
    /// What was sent as the password.
    pub(super) password: Vec<u8>,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("dir", &self.dir)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The Secret of a registry login, resolved and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SecretName {
    pub(super) namespace: String,
    pub(super) name: String,
}

impl SecretName {
    /// The Secret `auth` names: in `secretRef.namespace`, else in `own` (the job's own
    /// namespace); one in another namespace than `own` only when that namespace is in
    /// `allowed`.
    pub(super) fn resolve(
        auth: &OciAuthentication,
        own: &str,
        allowed: &[String],
    ) -> Result<SecretName, CredentialsError> {
        if !dns::is_subdomain(&auth.secret_ref.name) {
            return Err(CredentialsError::InvalidSecretName);
        }
        let namespace = auth
            .secret_ref
            .namespace
            .as_deref()
            .map(str::trim)
            .filter(|ns| !ns.is_empty())
            .unwrap_or(own);
        if namespace != own && !allowed.iter().any(|a| a == namespace) {
            return Err(CredentialsError::OtherNamespace {
                namespace: namespace.to_owned(),
                own: own.to_owned(),
            });
        }
        Ok(SecretName {
            namespace: namespace.to_owned(),
            name: auth.secret_ref.name.clone(),
        })
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Registry credentials read from a Secret.
#[derive(Clone, PartialEq, Eq)]
struct RegistryCredentials {
    username: String,
    password: Vec<u8>,
}

impl fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Reads the credentials for `registry` (`host[:port]`) from `kubectl get secret -o json`:
/// from `.dockerconfigjson` the `auths` entry of that registry (`username` + `password`, or
/// `auth`); otherwise `token` (which wins, as the password, with the Secret's `username` or
/// [`TOKEN_USERNAME`]) or `username` + `password`, with a `registry` key naming that registry.
fn registry_credentials(
    secret_json: &str,
    registry: &str,
) -> Result<RegistryCredentials, CredentialsError> {
    let secret: Value = serde_json::from_str(secret_json).map_err(CredentialsError::Unreadable)?;
    let data = match secret.get("data") {
        Some(Value::Object(data)) => Some(data),
        None | Some(Value::Null) => None,
        Some(_) => return Err(CredentialsError::DataNotAMap),
    };
    let key = |key: &'static str| -> Result<Option<Vec<u8>>, CredentialsError> {
        let Some(value) = data.and_then(|d| d.get(key)) else {
            return Ok(None);
        };
        let encoded = value.as_str().ok_or(CredentialsError::NotAString(key))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| CredentialsError::NotBase64(key))?;
        Ok((!decoded.is_empty()).then_some(decoded))
    };
    if let Some(config) = key(".dockerconfigjson")? {
        return docker_config_credentials(&config, registry);
    }
    let username = key("username")?
        .map(|u| String::from_utf8(u).map_err(|_| CredentialsError::UsernameNotUtf8))
        .transpose()?;
    let credentials = if let Some(token) = key("token")? {
        RegistryCredentials {
            username: username.unwrap_or_else(|| TOKEN_USERNAME.to_owned()),
            password: token,
        }
    } else {
        match (username, key("password")?) {
            (Some(username), Some(password)) => RegistryCredentials { username, password },
            (username, password) => {
                let mut missing = Vec::new();
                if username.is_none() {
                    missing.push("username");
                }
                if password.is_none() {
                    missing.push("password");
                }
                let mut found: Vec<&str> = data
                    .map(|d| d.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                found.sort_unstable();
                let found = if found.is_empty() {
                    "none".to_owned()
                } else {
                    found.join(", ")
                };
                return Err(CredentialsError::Incomplete {
                    missing: missing.join(" and "),
                    found,
                });
            }
        }
    };
    let named = key("registry")?.ok_or(CredentialsError::NoRegistryNamed)?;
    let named = String::from_utf8_lossy(&named).into_owned();
    if same_registry(&named, registry) {
        Ok(credentials)
    } else {
        Err(CredentialsError::OtherRegistry {
            named: registry_host(&named).to_owned(),
        })
    }
}

/// The credentials of `registry` in a docker config (`{"auths": {host: {...}}}`).
fn docker_config_credentials(
    config: &[u8],
    registry: &str,
) -> Result<RegistryCredentials, CredentialsError> {
    let config: Value =
        serde_json::from_slice(config).map_err(|_| CredentialsError::BadDockerConfig)?;
    let Some(auths) = config.get("auths").and_then(Value::as_object) else {
        return Err(CredentialsError::BadDockerConfig);
    };
    let Some(entry) = auths
        .iter()
        .find(|(host, _)| same_registry(host, registry))
        .map(|(_, entry)| entry)
    else {
        let mut named: Vec<&str> = auths.keys().map(|k| registry_host(k)).collect();
        named.sort_unstable();
        return Err(CredentialsError::OtherRegistry {
            named: if named.is_empty() {
                "none".to_owned()
            } else {
                named.join(", ")
            },
        });
    };
    let text = |key: &str| {
        entry
            .get(key)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    };
    if let (Some(username), Some(password)) = (text("username"), text("password")) {
        return Ok(RegistryCredentials {
            username: username.to_owned(),
            password: password.as_bytes().to_vec(),
        });
    }
    let decoded = text("auth")
        .and_then(|a| {
            base64::engine::general_purpose::STANDARD
                .decode(a.trim())
                .ok()
        })
        .and_then(|a| String::from_utf8(a).ok());
    match decoded.as_deref().and_then(|a| a.split_once(':')) {
        Some((username, password)) if !username.is_empty() && !password.is_empty() => {
            Ok(RegistryCredentials {
                username: username.to_owned(),
                password: password.as_bytes().to_vec(),
            })
        }
        _ => Err(CredentialsError::Incomplete {
            missing: "username and password".to_owned(),
            found: "an auths entry without them".to_owned(),
        }),
    }
}

/// The `host[:port]` of a registry as a Secret names it: docker configs may write a URL
/// (`https://host/v1/`).
fn registry_host(named: &str) -> &str {
    let named = named.trim();
    let named = named
        .strip_prefix("https://")
        .or_else(|| named.strip_prefix("http://"))
        .unwrap_or(named);
    named.split('/').next().unwrap_or_default()
}

/// Whether the Secret's `named` registry is `registry` (`host[:port]`, exactly, ignoring case).
fn same_registry(named: &str, registry: &str) -> bool {
    let named = registry_host(named);
    !named.is_empty() && named.eq_ignore_ascii_case(registry)
}

#[cfg(test)]
mod tests {
    use helmq_schemas::config::SecretRef;

    use super::*;

    fn secret(data: serde_json::Value) -> String {
        serde_json::json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": data})
            .to_string()
    }

    fn b64(text: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    /// The registry of the charts in these tests.
    const REG: &str = "registry.example.com";

    /// `data` plus a `registry` key naming [`REG`].
    fn for_reg(mut data: serde_json::Value) -> serde_json::Value {
        data["registry"] = b64(REG).into();
        data
    }

    #[test]
    fn registry_credentials_prefer_the_token_then_username_and_password() {
        let cases = [
            (
                serde_json::json!({"token": b64("t0k3n")}),
                TOKEN_USERNAME,
                "t0k3n",
                "a token alone logs in as helmq",
            ),
            (
                serde_json::json!({
                    "token": b64("t0k3n"), "username": b64("robot"), "password": b64("hunter2")
                }),
                "robot",
                "t0k3n",
                "the token wins, with the secret's user name",
            ),
            (
                serde_json::json!({
                    "username": b64("robot"), "password": b64("hunter2"), "token": ""
                }),
                "robot",
                "hunter2",
                "an empty token does not count",
            ),
        ];
        for (data, username, password, why) in cases {
            let credentials = registry_credentials(&secret(for_reg(data)), REG).unwrap();
            assert_eq!(
                credentials,
                RegistryCredentials {
                    username: username.into(),
                    password: password.as_bytes().to_vec()
                },
                "{why}"
            );
            assert!(
                !format!("{credentials:?}").contains(password),
                "{credentials:?}"
            );
        }
    }

    #[test]
    fn unusable_secrets_name_keys_never_values() {
        let cases = [
            (
                secret(serde_json::json!({"username": b64("robot"), "extra": b64("hunter2")})),
                "the secret holds no token and no password (keys found: extra, username); it \
                 needs `token` or both `username` and `password`",
            ),
            (
                secret(serde_json::json!({})),
                "the secret holds no token and no username and password (keys found: none); it \
                 needs `token` or both `username` and `password`",
            ),
            (
                r#"{"kind":"Secret","metadata":{"name":"x"}}"#.to_owned(),
                "the secret holds no token and no username and password (keys found: none); it \
                 needs `token` or both `username` and `password`",
            ),
            (
                secret(serde_json::json!({"token": "hunter2!!"})),
                "key token is not valid base64",
            ),
            (
                secret(serde_json::json!({"token": 7})),
                "key token is not a string",
            ),
            (
                secret(serde_json::json!(["hunter2"])),
                "the secret's data is not a map",
            ),
            (
                secret(serde_json::json!({"username": "/w==", "password": b64("hunter2")})),
                "key username is not UTF-8",
            ),
            (
                "not json".to_owned(),
                "kubectl printed no readable secret (expected ident at line 1 column 2)",
            ),
        ];
        for (json, want) in cases {
            let err = registry_credentials(&json, REG).unwrap_err();
            assert_eq!(err.to_string(), want);
            assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
        }
        let unreadable = registry_credentials("{", REG).unwrap_err();
        assert!(std::error::Error::source(&unreadable).is_some());
    }

    #[test]
    fn a_secret_is_read_only_in_the_jobs_own_namespace_or_an_allowed_one() {
        let auth = |name: &str, namespace: Option<&str>| OciAuthentication {
            method: "registry".into(),
            secret_ref: SecretRef {
                name: name.into(),
                namespace: namespace.map(str::to_owned),
            },
        };
        let allowed = vec!["shared-creds".to_owned()];
        let cases = [
            (
                auth("creds", None),
                "team-a",
                Ok("team-a/creds"),
                "bare: own namespace",
            ),
            (
                auth("creds", Some(" ")),
                "team-a",
                Ok("team-a/creds"),
                "blank: own namespace",
            ),
            (
                auth("creds", Some("team-a")),
                "team-a",
                Ok("team-a/creds"),
                "own, named",
            ),
            (
                auth("creds", Some("shared-creds")),
                "team-a",
                Ok("shared-creds/creds"),
                "allowed",
            ),
            (
                auth("creds", Some("kube-system")),
                "team-a",
                Err(
                    "the secret is not in the job's own namespace team-a and namespace \
                     kube-system is not in --allowed-secret-namespaces",
                ),
                "attack: another namespace's secret",
            ),
            (
                auth("creds", Some("team-b")),
                "team-a",
                Err(
                    "the secret is not in the job's own namespace team-a and namespace team-b \
                     is not in --allowed-secret-namespaces",
                ),
                "attack: another tenant's secret",
            ),
            (
                auth("--all", None),
                "team-a",
                Err("the secret name is not a valid Kubernetes name"),
                "a name that reads as a flag",
            ),
        ];
        for (auth, own, want, why) in cases {
            let got = SecretName::resolve(&auth, own, &allowed)
                .map(|s| s.to_string())
                .map_err(|e| e.to_string());
            assert_eq!(got, want.map(str::to_owned).map_err(str::to_owned), "{why}");
        }
    }

    #[test]
    fn credentials_go_only_to_a_registry_the_secret_names() {
        let docker = |auths: serde_json::Value| {
            secret(serde_json::json!({
                ".dockerconfigjson": b64(&serde_json::json!({"auths": auths}).to_string())
            }))
        };
        let opaque = |registry: Option<&str>| {
            let mut data = serde_json::json!({"token": b64("t0k3n")});
            if let Some(registry) = registry {
                data["registry"] = b64(registry).into();
            }
            secret(data)
        };
        let pass =
            |user: &str, password: &str| Ok::<_, String>((user.to_owned(), password.to_owned()));
        // The refusal of a Secret that names only `named`.
        let elsewhere = |named: &str| {
            Err(format!(
                "the secret names no credentials for this registry (it names {named}); \
                 credentials are only sent to a registry the secret names"
            ))
        };
        let robot = || {
            docker(serde_json::json!({
                "registry.example.com": {"username": "robot", "password": "hunter2"}
            }))
        };
        let cases = [
            (
                robot(),
                "registry.example.com",
                pass("robot", "hunter2"),
                "docker config, its own registry",
            ),
            (
                docker(
                    serde_json::json!({"https://Registry.Example.com/v1/": {"auth": b64("robot:hunter2")}}),
                ),
                "registry.example.com",
                pass("robot", "hunter2"),
                "a URL key and `auth`, case-insensitive",
            ),
            (
                robot(),
                "attacker.example",
                elsewhere("registry.example.com"),
                "attack: a chart on another host",
            ),
            (
                robot(),
                "registry.example.com:5000",
                elsewhere("registry.example.com"),
                "attack: another port on the same host",
            ),
            (
                docker(
                    serde_json::json!({"registry.example.com.attacker.example": {"username": "r", "password": "p"}}),
                ),
                "registry.example.com",
                elsewhere("registry.example.com.attacker.example"),
                "no prefix matches",
            ),
            (
                docker(serde_json::json!({"registry.example.com": {"username": "robot"}})),
                "registry.example.com",
                Err(
                    "the secret holds no token and no username and password (keys found: an \
                     auths entry without them); it needs `token` or both `username` and \
                     `password`"
                        .to_owned(),
                ),
                "an entry without a password",
            ),
            (
                secret(serde_json::json!({".dockerconfigjson": b64("[]")})),
                "registry.example.com",
                Err("key .dockerconfigjson is not a docker config with auths".to_owned()),
                "not a docker config",
            ),
            (
                opaque(Some("registry.example.com")),
                "registry.example.com",
                pass("helmq", "t0k3n"),
                "token with its registry",
            ),
            (
                opaque(Some("registry.example.com")),
                "attacker.example",
                elsewhere("registry.example.com"),
                "attack: a token for another host",
            ),
            (
                opaque(None),
                "registry.example.com",
                Err(
                    "the secret names no registry: add a `registry` key (host[:port]) or use a \
                     kubernetes.io/dockerconfigjson secret"
                        .to_owned(),
                ),
                "a token that names no registry goes nowhere",
            ),
        ];
        for (json, registry, want, why) in cases {
            let got = registry_credentials(&json, registry)
                .map(|c| (c.username, String::from_utf8(c.password).unwrap()))
                .map_err(|e| e.to_string());
            assert_eq!(got, want, "{why}");
        }
    }
}

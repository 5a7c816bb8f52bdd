//! OCI registry logins for sources with `authentication`: the credentials come from a
//! Kubernetes Secret read with `kubectl get secret -o json` (`token`, which wins, or `username` +
//! `password`), the password goes to `helm registry login` on stdin, and the login is kept in a
//! registry config file private to that one pull (`HELM_REGISTRY_CONFIG`), deleted after it, so
//! no job can pull with another job's credentials. Secret values never reach argv, logs or
//! errors (the password is redacted from the login's and the pull's stderr).

use std::fmt;

use base64::Engine as _;
use helmq_schemas::config::OciAuthentication;
use helmq_schemas::{dns, oci};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::HelmCli;
use super::args::{kubectl_get_secret_args, registry_login_args};
use crate::driver::{DriverError, KubectlAction};

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
        auth: &OciAuthentication,
        release_namespace: &str,
        cancel: &CancellationToken,
    ) -> Result<Login, DriverError> {
        let secret = SecretName::of(auth, release_namespace);
        let credentials_error = |registry: &str, reason| DriverError::RegistryCredentials {
            registry: registry.to_owned(),
            secret: secret.to_string(),
            reason,
        };
        let registry = match oci::Reference::parse(chart) {
            Ok(reference) => reference.registry(),
            Err(_) => return Err(credentials_error(chart, CredentialsError::NoRegistryHost)),
        };
        if !dns::is_subdomain(&secret.name) {
            return Err(credentials_error(
                registry,
                CredentialsError::InvalidSecretName,
            ));
        }
        let Some(kubectl) = &self.settings.kubectl_bin else {
            return Err(credentials_error(
                registry,
                CredentialsError::KubectlDisabled,
            ));
        };
        let json = self
            .kubectl(
                kubectl,
                kubectl_get_secret_args(
                    &secret.name,
                    &secret.namespace,
                    self.settings.kubeconfig.as_deref(),
                ),
                KubectlAction::ReadSecret {
                    secret: secret.to_string(),
                },
                cancel,
            )
            .await?;
        let credentials = registry_credentials(&json.text)
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
            Some(&config),
            Some(&credentials.password),
            &[],
            self.settings.short_timeout,
            cancel,
        )
        .await?;
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

/// The Secret of a registry login.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SecretName {
    namespace: String,
    name: String,
}

impl SecretName {
    /// `secretRef.namespace`, else the release namespace.
    fn of(auth: &OciAuthentication, release_namespace: &str) -> SecretName {
        let namespace = auth
            .secret_ref
            .namespace
            .as_deref()
            .map(str::trim)
            .filter(|ns| !ns.is_empty())
            .unwrap_or(release_namespace);
        SecretName {
            namespace: namespace.to_owned(),
            name: auth.secret_ref.name.clone(),
        }
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

/// Reads the credentials from `kubectl get secret -o json`: `token` wins (as the password, with
/// the Secret's `username` or [`TOKEN_USERNAME`]); otherwise both `username` and `password`.
fn registry_credentials(secret_json: &str) -> Result<RegistryCredentials, CredentialsError> {
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
    let username = key("username")?
        .map(|u| String::from_utf8(u).map_err(|_| CredentialsError::UsernameNotUtf8))
        .transpose()?;
    if let Some(token) = key("token")? {
        return Ok(RegistryCredentials {
            username: username.unwrap_or_else(|| TOKEN_USERNAME.to_owned()),
            password: token,
        });
    }
    match (username, key("password")?) {
        (Some(username), Some(password)) => Ok(RegistryCredentials { username, password }),
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
            Err(CredentialsError::Incomplete {
                missing: missing.join(" and "),
                found,
            })
        }
    }
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
            let credentials = registry_credentials(&secret(data)).unwrap();
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
            let err = registry_credentials(&json).unwrap_err();
            assert_eq!(err.to_string(), want);
            assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
        }
        let unreadable = registry_credentials("{").unwrap_err();
        assert!(std::error::Error::source(&unreadable).is_some());
    }

    #[test]
    fn the_secret_lives_in_its_own_namespace_or_the_release_namespace() {
        let auth = |namespace: Option<&str>| OciAuthentication {
            method: "registry".into(),
            secret_ref: SecretRef {
                name: "creds".into(),
                namespace: namespace.map(str::to_owned),
            },
        };
        let cases = [
            (None, "apps/creds"),
            (Some(" "), "apps/creds"),
            (Some("shared"), "shared/creds"),
        ];
        for (namespace, want) in cases {
            assert_eq!(SecretName::of(&auth(namespace), "apps").to_string(), want);
        }
    }
}

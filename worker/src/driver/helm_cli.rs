//! [`HelmCli`]: the [`HelmDriver`] that runs the `helm` executable (Helm 3.14+ and Helm 4).
//!
//! - Charts are pulled once per (source, chart, exact version) into a cache shared by every job
//!   (`<cache>/charts/<key>/<chart>-<version>.tgz`, guarded by a per-key async lock) and
//!   installed from the package, so no repository index is downloaded or parsed per job. A
//!   version range is pulled afresh for each job (it may resolve differently tomorrow).
//! - Values go to `helm` in a 0600 temporary file (`--values`), never on the command line.
//! - Every process runs with `kill_on_drop`, stdin closed, output captured and its own time
//!   limit (the job's timeout plus a margin); cancelling a call kills the process.
//! - Helm's own state lives under the cache directory (`HELM_CACHE_HOME`, `HELM_CONFIG_HOME`,
//!   `HELM_DATA_HOME`), so workers share nothing with the host's Helm setup.
//! - Helm cannot delete namespaces: a managed namespace is deleted with `kubectl` (optional;
//!   when it is missing the deletion is skipped and the status message says so).
//! - An OCI source with `authentication` is pulled after `helm registry login`: the credentials
//!   come from a Kubernetes Secret read with `kubectl get secret -o json` (`token`, which wins,
//!   or `username` + `password`), the password goes to helm on stdin, and the login is kept in
//!   a registry config file private to that one pull (`HELM_REGISTRY_CONFIG`), deleted after it,
//!   so no job can pull with another job's credentials. Secret values never reach argv, logs or
//!   errors.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use helmq_schemas::config::OciAuthentication;
use helmq_schemas::{ChartSource, HelmConfig};
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;
use tokio_util::sync::CancellationToken;

use super::{Apply, DriverError, HelmDriver, NamespaceDeletion, Release, Revision, Uninstalled};

/// How [`HelmCli`] runs Helm.
#[derive(Debug, Clone)]
pub struct HelmCliSettings {
    /// The `helm` executable.
    pub helm_bin: PathBuf,
    /// `--kubeconfig` passed to helm and kubectl (in-cluster config when `None`).
    pub kubeconfig: Option<PathBuf>,
    /// Chart cache and Helm home directories.
    pub cache_dir: PathBuf,
    /// `kubectl`, used to delete managed namespaces and to read the Secrets of OCI registry
    /// logins; `None` disables both (authenticated OCI sources then fail).
    pub kubectl_bin: Option<PathBuf>,
    /// Added to a job's timeout to bound the helm process itself.
    pub margin: Duration,
    /// Time limit of short commands (`status`, `history`, `pull`).
    pub short_timeout: Duration,
}

impl HelmCliSettings {
    /// Defaults around a helm binary and a cache directory.
    pub fn new(helm_bin: impl Into<PathBuf>, cache_dir: impl Into<PathBuf>) -> Self {
        HelmCliSettings {
            helm_bin: helm_bin.into(),
            kubeconfig: None,
            cache_dir: cache_dir.into(),
            kubectl_bin: Some(PathBuf::from("kubectl")),
            margin: Duration::from_secs(30),
            short_timeout: Duration::from_secs(120),
        }
    }
}

/// The [`HelmDriver`] that runs `helm`.
#[derive(Debug)]
pub struct HelmCli {
    settings: HelmCliSettings,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A chart package ready to install; a fresh pull of a version range keeps its directory alive.
#[derive(Debug)]
struct ChartPackage {
    path: PathBuf,
    _fresh: Option<tempfile::TempDir>,
}

impl HelmCli {
    /// A driver with these settings; creates the cache directory.
    pub fn new(settings: HelmCliSettings) -> Result<HelmCli, DriverError> {
        for dir in ["charts", "tmp", "helm/cache", "helm/config", "helm/data"] {
            let path = settings.cache_dir.join(dir);
            std::fs::create_dir_all(&path).map_err(|e| {
                DriverError::Local(format!("cannot create {}: {e}", path.display()))
            })?;
        }
        Ok(HelmCli {
            settings,
            locks: Mutex::new(HashMap::new()),
        })
    }

    fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = match self.locks.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        locks.entry(key.to_owned()).or_default().clone()
    }

    /// Runs helm with `args` and returns its stdout.
    async fn helm(
        &self,
        args: Vec<OsString>,
        limit: Duration,
        cancel: &CancellationToken,
    ) -> Result<String, DriverError> {
        self.helm_with(args, None, None, limit, cancel).await
    }

    /// Runs helm with `args`, an optional registry config file and optional stdin.
    async fn helm_with(
        &self,
        args: Vec<OsString>,
        registry_config: Option<&Path>,
        input: Option<&[u8]>,
        limit: Duration,
        cancel: &CancellationToken,
    ) -> Result<String, DriverError> {
        let mut args = args;
        if let Some(kubeconfig) = &self.settings.kubeconfig {
            args.push("--kubeconfig".into());
            args.push(kubeconfig.into());
        }
        let home = &self.settings.cache_dir;
        let mut command = tokio::process::Command::new(&self.settings.helm_bin);
        command
            .args(&args)
            .env("HELM_CACHE_HOME", home.join("helm/cache"))
            .env("HELM_CONFIG_HOME", home.join("helm/config"))
            .env("HELM_DATA_HOME", home.join("helm/data"));
        if let Some(path) = registry_config {
            command.env("HELM_REGISTRY_CONFIG", path);
        }
        run_with_input(
            command,
            &self.settings.helm_bin,
            &args,
            input,
            limit,
            cancel,
        )
        .await
    }

    /// Reads the Secret of an OCI source's `authentication` and logs in to its registry. The
    /// login lands in a registry config file inside the returned directory, which the pull uses
    /// and which is deleted when the directory is dropped.
    async fn registry_login(
        &self,
        chart: &str,
        auth: &OciAuthentication,
        release_namespace: &str,
        cancel: &CancellationToken,
    ) -> Result<tempfile::TempDir, DriverError> {
        let secret = SecretName::of(auth, release_namespace);
        let registry = registry_host(chart).ok_or_else(|| DriverError::RegistryCredentials {
            registry: chart.to_owned(),
            secret: secret.to_string(),
            reason: "the chart reference names no registry host".into(),
        })?;
        let credentials_error = |reason: String| DriverError::RegistryCredentials {
            registry: registry.to_owned(),
            secret: secret.to_string(),
            reason,
        };
        if !is_dns_subdomain(&secret.name) {
            return Err(credentials_error(
                "the secret name is not a valid Kubernetes name".into(),
            ));
        }
        let Some(kubectl) = &self.settings.kubectl_bin else {
            return Err(credentials_error(
                "kubectl is disabled on this worker (set --kubectl-bin / HELMQ_KUBECTL_BIN)".into(),
            ));
        };
        let args = kubectl_get_secret_args(
            &secret.name,
            &secret.namespace,
            self.settings.kubeconfig.as_deref(),
        );
        let mut command = tokio::process::Command::new(kubectl);
        command.args(&args);
        let json = match run(command, kubectl, &args, self.settings.short_timeout, cancel).await {
            Ok(json) => json,
            Err(DriverError::Helm {
                exit_code, stderr, ..
            }) => {
                return Err(DriverError::SecretRead {
                    secret: secret.to_string(),
                    exit_code,
                    stderr,
                });
            }
            Err(DriverError::Spawn { program, reason }) => {
                return Err(DriverError::Spawn {
                    program,
                    reason: format!("{reason} (needed to read registry secret {secret})"),
                });
            }
            Err(e) => return Err(e),
        };
        let credentials = registry_credentials(&json).map_err(credentials_error)?;
        drop(json);
        let dir = tempfile::Builder::new()
            .prefix("registry-")
            .tempdir_in(self.settings.cache_dir.join("tmp"))
            .map_err(|e| {
                DriverError::Local(format!("cannot create a registry config directory: {e}"))
            })?;
        let config = dir.path().join("config.json");
        self.helm_with(
            registry_login_args(registry, &credentials.username),
            Some(&config),
            Some(&credentials.password),
            self.settings.short_timeout,
            cancel,
        )
        .await
        .map_err(|e| redact(e, &credentials.password))?;
        Ok(dir)
    }

    /// The package to install for `config`, pulled into the cache when it is not there yet.
    async fn chart(
        &self,
        config: &HelmConfig,
        cancel: &CancellationToken,
    ) -> Result<ChartPackage, DriverError> {
        let key = cache_key(&config.source);
        let pinned = is_exact_version(config.chart_version());
        let dir = self.settings.cache_dir.join("charts").join(&key);
        let lock = self.lock_for(&key);
        let _guard = lock.lock().await;
        if pinned && let Some(path) = find_package(&dir)? {
            return Ok(ChartPackage { path, _fresh: None });
        }
        let login = match &config.source {
            ChartSource::Oci {
                chart,
                authentication: Some(auth),
            } => Some(
                self.registry_login(chart, auth, &config.release_namespace, cancel)
                    .await?,
            ),
            _ => None,
        };
        let registry_config = login.as_ref().map(|dir| dir.path().join("config.json"));
        let fresh = tempfile::Builder::new()
            .prefix(".pull-")
            .tempdir_in(self.settings.cache_dir.join("charts"))
            .map_err(|e| DriverError::Local(format!("cannot create a pull directory: {e}")))?;
        self.helm_with(
            pull_args(&config.source, fresh.path()),
            registry_config.as_deref(),
            None,
            self.settings.short_timeout,
            cancel,
        )
        .await?;
        drop(login);
        let Some(pulled) = find_package(fresh.path())? else {
            return Err(DriverError::Output {
                command: "pull".into(),
                reason: "no chart package was written".into(),
            });
        };
        if !pinned {
            return Ok(ChartPackage {
                path: pulled,
                _fresh: Some(fresh),
            });
        }
        // Publish the package atomically: a crash mid-pull never leaves a partial cache entry.
        let kept = fresh.keep();
        if dir.exists() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        std::fs::rename(&kept, &dir).map_err(|e| {
            DriverError::Local(format!("cannot store the chart in {}: {e}", dir.display()))
        })?;
        find_package(&dir)?.map_or_else(
            || {
                Err(DriverError::Local(format!(
                    "chart package vanished from {}",
                    dir.display()
                )))
            },
            |path| Ok(ChartPackage { path, _fresh: None }),
        )
    }

    fn values_file(&self, config: &HelmConfig) -> Result<tempfile::NamedTempFile, DriverError> {
        // tempfile creates files with mode 0600.
        let mut file = tempfile::Builder::new()
            .prefix("values-")
            .suffix(".json")
            .tempfile_in(self.settings.cache_dir.join("tmp"))
            .map_err(|e| DriverError::Local(format!("cannot create the values file: {e}")))?;
        serde_json::to_writer(&mut file, &config.values)
            .map_err(|e| DriverError::Local(format!("cannot write the values file: {e}")))?;
        file.flush()
            .map_err(|e| DriverError::Local(format!("cannot write the values file: {e}")))?;
        Ok(file)
    }
}

impl HelmDriver for HelmCli {
    async fn apply(
        &self,
        request: Apply<'_>,
        cancel: &CancellationToken,
    ) -> Result<Release, DriverError> {
        let chart = self.chart(request.config, cancel).await?;
        let values = self.values_file(request.config)?;
        let stdout = self
            .helm(
                upgrade_args(request.config, &chart.path, values.path(), request.timeout),
                request.timeout + self.settings.margin,
                cancel,
            )
            .await?;
        parse_release("upgrade", &stdout)
    }

    async fn uninstall(
        &self,
        release: &str,
        namespace: &str,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<Uninstalled, DriverError> {
        match self
            .helm(
                uninstall_args(release, namespace, timeout),
                timeout + self.settings.margin,
                cancel,
            )
            .await
        {
            Ok(_) => Ok(Uninstalled::Removed),
            Err(e) if is_not_found(&e) => Ok(Uninstalled::NotFound),
            Err(e) => Err(e),
        }
    }

    async fn status(
        &self,
        release: &str,
        namespace: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<Release>, DriverError> {
        match self
            .helm(
                status_args(release, namespace),
                self.settings.short_timeout,
                cancel,
            )
            .await
        {
            Ok(stdout) => parse_release("status", &stdout).map(Some),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn history(
        &self,
        release: &str,
        namespace: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<Revision>, DriverError> {
        match self
            .helm(
                history_args(release, namespace),
                self.settings.short_timeout,
                cancel,
            )
            .await
        {
            Ok(stdout) => serde_json::from_str(&stdout).map_err(|e| DriverError::Output {
                command: "history".into(),
                reason: e.to_string(),
            }),
            Err(e) if is_not_found(&e) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    async fn rollback(
        &self,
        release: &str,
        namespace: &str,
        revision: i64,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<(), DriverError> {
        self.helm(
            rollback_args(release, namespace, revision, timeout),
            timeout + self.settings.margin,
            cancel,
        )
        .await
        .map(drop)
    }

    async fn delete_namespace(
        &self,
        namespace: &str,
        cancel: &CancellationToken,
    ) -> Result<NamespaceDeletion, DriverError> {
        let Some(kubectl) = &self.settings.kubectl_bin else {
            return Ok(NamespaceDeletion::Skipped(format!(
                "namespace {namespace} was not deleted: namespace deletion is disabled on this worker"
            )));
        };
        let args = kubectl_delete_namespace_args(namespace, self.settings.kubeconfig.as_deref());
        let mut command = tokio::process::Command::new(kubectl);
        command.args(&args);
        match run(command, kubectl, &args, self.settings.short_timeout, cancel).await {
            Ok(_) => Ok(NamespaceDeletion::Deleted),
            Err(DriverError::Spawn { reason, .. }) => Ok(NamespaceDeletion::Skipped(format!(
                "namespace {namespace} was not deleted: cannot run {}: {reason}",
                kubectl.display()
            ))),
            Err(e) => Err(e),
        }
    }
}

/// Runs a prepared command with the rules every helm call follows.
async fn run(
    command: tokio::process::Command,
    program: &Path,
    args: &[OsString],
    limit: Duration,
    cancel: &CancellationToken,
) -> Result<String, DriverError> {
    run_with_input(command, program, args, None, limit, cancel).await
}

/// [`run`], writing `input` (when given) to the process's stdin and then closing it.
async fn run_with_input(
    mut command: tokio::process::Command,
    program: &Path,
    args: &[OsString],
    input: Option<&[u8]>,
    limit: Duration,
    cancel: &CancellationToken,
) -> Result<String, DriverError> {
    let name = args
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| DriverError::Spawn {
        program: program.display().to_string(),
        reason: e.to_string(),
    })?;
    let stdin = child.stdin.take();
    let feed = async move {
        if let (Some(mut stdin), Some(input)) = (stdin, input) {
            // A process that exits without reading its stdin fails on its own; its exit status
            // and stderr tell why, so a broken pipe here is not an error of its own.
            let _ = stdin.write_all(input).await;
            let _ = stdin.shutdown().await;
        }
    };
    // Dropping `output` (cancel or timeout) drops the child, and kill_on_drop kills it.
    let output = async move {
        let (output, ()) = tokio::join!(child.wait_with_output(), feed);
        output
    };
    let output = tokio::select! {
        () = cancel.cancelled() => return Err(DriverError::Cancelled { command: name }),
        result = tokio::time::timeout(limit, output) => match result {
            Err(_) => return Err(DriverError::TimedOut { command: name, limit }),
            Ok(Err(e)) => return Err(DriverError::Spawn {
                program: program.display().to_string(),
                reason: e.to_string(),
            }),
            Ok(Ok(output)) => output,
        },
    };
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    Err(DriverError::Helm {
        command: name,
        exit_code: output.status.code(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

fn is_not_found(error: &DriverError) -> bool {
    matches!(error, DriverError::Helm { stderr, .. } if stderr.to_lowercase().contains("release: not found"))
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn secs(timeout: Duration) -> String {
    format!("{}s", timeout.as_secs().max(1))
}

/// `helm upgrade --install` from a local package with values from a file.
pub fn upgrade_args(
    config: &HelmConfig,
    chart: &Path,
    values: &Path,
    timeout: Duration,
) -> Vec<OsString> {
    let mut args = os(&["upgrade", "--install", &config.release_name]);
    args.push(chart.into());
    args.extend(os(&["--namespace", &config.release_namespace]));
    if config.manage_namespace {
        args.push("--create-namespace".into());
    }
    if !config.chart_version().is_empty() {
        args.extend(os(&["--version", config.chart_version()]));
    }
    args.push("--values".into());
    args.push(values.into());
    args.extend(os(&["--wait", "--timeout", &secs(timeout), "-o", "json"]));
    args
}

/// `helm pull` of an HTTP repository chart or an OCI reference into `destination`.
pub fn pull_args(source: &ChartSource, destination: &Path) -> Vec<OsString> {
    let mut args = match source {
        ChartSource::Http { repository, chart } => os(&[
            "pull",
            &chart.name,
            "--repo",
            &repository.url,
            "--version",
            &chart.version,
        ]),
        ChartSource::Oci { chart, .. } => {
            let (reference, tag) = split_oci(chart);
            let mut args = os(&["pull", reference]);
            if !tag.is_empty() {
                args.extend(os(&["--version", tag]));
            }
            args
        }
    };
    args.push("--destination".into());
    args.push(destination.into());
    args
}

/// `helm uninstall`.
pub fn uninstall_args(release: &str, namespace: &str, timeout: Duration) -> Vec<OsString> {
    os(&[
        "uninstall",
        release,
        "--namespace",
        namespace,
        "--wait",
        "--timeout",
        &secs(timeout),
    ])
}

/// `helm status -o json`.
pub fn status_args(release: &str, namespace: &str) -> Vec<OsString> {
    os(&["status", release, "--namespace", namespace, "-o", "json"])
}

/// `helm history -o json --max 20`.
pub fn history_args(release: &str, namespace: &str) -> Vec<OsString> {
    os(&[
        "history",
        release,
        "--namespace",
        namespace,
        "-o",
        "json",
        "--max",
        "20",
    ])
}

/// `helm rollback <release> <revision>`.
pub fn rollback_args(
    release: &str,
    namespace: &str,
    revision: i64,
    timeout: Duration,
) -> Vec<OsString> {
    os(&[
        "rollback",
        release,
        &revision.to_string(),
        "--namespace",
        namespace,
        "--wait",
        "--timeout",
        &secs(timeout),
    ])
}

/// `kubectl delete namespace`, without waiting for the namespace to go.
pub fn kubectl_delete_namespace_args(namespace: &str, kubeconfig: Option<&Path>) -> Vec<OsString> {
    let mut args = os(&[
        "delete",
        "namespace",
        namespace,
        "--ignore-not-found",
        "--wait=false",
    ]);
    if let Some(path) = kubeconfig {
        args.push("--kubeconfig".into());
        args.push(path.into());
    }
    args
}

/// `kubectl get secret -o json` of a registry login's Secret.
pub fn kubectl_get_secret_args(
    name: &str,
    namespace: &str,
    kubeconfig: Option<&Path>,
) -> Vec<OsString> {
    let mut args = os(&["get", "secret", name, "-n", namespace, "-o", "json"]);
    if let Some(path) = kubeconfig {
        args.push("--kubeconfig".into());
        args.push(path.into());
    }
    args
}

/// `helm registry login <host> --username <user> --password-stdin`: the password never goes on
/// the command line.
pub fn registry_login_args(host: &str, username: &str) -> Vec<OsString> {
    os(&[
        "registry",
        "login",
        host,
        "--username",
        username,
        "--password-stdin",
    ])
}

/// The registry (`host` or `host:port`) of `oci://host/path/chart:tag`; `None` when there is
/// no usable host.
pub fn registry_host(reference: &str) -> Option<&str> {
    let rest = reference.strip_prefix("oci://")?;
    let (host, path) = rest.split_once('/')?;
    (!host.is_empty() && !host.starts_with('-') && !path.is_empty()).then_some(host)
}

/// The user name helm logs in with when the Secret holds only a token; registries that take a
/// token as the password ignore it.
pub const TOKEN_USERNAME: &str = "helmq";

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

/// A DNS-1123 subdomain, the shape of a Secret name (and never a command-line flag).
fn is_dns_subdomain(name: &str) -> bool {
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    name.len() <= 253
        && name.starts_with(alphanumeric)
        && name.ends_with(alphanumeric)
        && name
            .chars()
            .all(|c| alphanumeric(c) || matches!(c, '-' | '.'))
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
/// Errors name keys, never values.
fn registry_credentials(secret_json: &str) -> Result<RegistryCredentials, String> {
    let secret: Value = serde_json::from_str(secret_json)
        .map_err(|e| format!("kubectl printed no readable secret ({e})"))?;
    let data = match secret.get("data") {
        Some(Value::Object(data)) => Some(data),
        None | Some(Value::Null) => None,
        Some(_) => return Err("the secret's data is not a map".into()),
    };
    let key = |key: &str| -> Result<Option<Vec<u8>>, String> {
        let Some(value) = data.and_then(|d| d.get(key)) else {
            return Ok(None);
        };
        let encoded = value
            .as_str()
            .ok_or_else(|| format!("key {key} is not a string"))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| format!("key {key} is not valid base64"))?;
        Ok((!decoded.is_empty()).then_some(decoded))
    };
    let username = key("username")?
        .map(|u| String::from_utf8(u).map_err(|_| "key username is not UTF-8".to_owned()))
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
            Err(format!(
                "the secret holds no token and no {} (keys found: {found}); it needs `token` \
                 or both `username` and `password`",
                missing.join(" and ")
            ))
        }
    }
}

/// Removes a secret from a helm error, should a registry or helm ever echo it.
fn redact(error: DriverError, secret: &[u8]) -> DriverError {
    let Ok(secret) = std::str::from_utf8(secret) else {
        return error;
    };
    match error {
        DriverError::Helm {
            command,
            exit_code,
            stderr,
        } if !secret.trim().is_empty() && stderr.contains(secret.trim()) => DriverError::Helm {
            command,
            exit_code,
            stderr: stderr.replace(secret.trim(), "<redacted>"),
        },
        other => other,
    }
}

/// `oci://host/path/chart:tag` → (`oci://host/path/chart`, `tag`).
fn split_oci(reference: &str) -> (&str, &str) {
    let after_slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[after_slash..].rfind(':') {
        Some(i) => (
            &reference[..after_slash + i],
            &reference[after_slash + i + 1..],
        ),
        None => (reference, ""),
    }
}

/// A chart version that always names the same package (no range, no wildcard).
pub fn is_exact_version(version: &str) -> bool {
    !version.is_empty()
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'))
        && !version
            .trim_start_matches('v')
            .split(['.', '-', '+'])
            .take(3)
            .any(|part| matches!(part, "x" | "X"))
}

/// Cache directory name of a (source, chart, version): readable and filesystem-safe.
pub fn cache_key(source: &ChartSource) -> String {
    use sha2::Digest as _;
    // Parts are joined with NUL for the digest (no part can hold one) and with `-` for people.
    let (raw, credentials) = match source {
        ChartSource::Http { repository, chart } => (
            format!(
                "{}\0{}\0{}",
                repository.url.trim_end_matches('/'),
                chart.name,
                chart.version
            ),
            String::new(),
        ),
        // A chart pulled with credentials is cached apart from the same reference pulled by a
        // job that names other (or no) credentials: a cache hit must not bypass the registry.
        ChartSource::Oci {
            chart,
            authentication,
        } => (
            chart.clone(),
            authentication.as_ref().map_or_else(String::new, |auth| {
                format!(
                    "{}/{}",
                    auth.secret_ref.namespace.as_deref().unwrap_or_default(),
                    auth.secret_ref.name
                )
            }),
        ),
    };
    let readable: String = raw
        .replace('\0', "-")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(96)
        .collect();
    // The readable part alone can collide (`/` and `_` map to the same character); the digest
    // of the exact source keeps one directory per source.
    let digest = sha2::Sha256::new()
        .chain_update(raw.as_bytes())
        .chain_update([0])
        .chain_update(credentials.as_bytes())
        .finalize();
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{readable}-{hex}")
}

fn find_package(dir: &Path) -> Result<Option<PathBuf>, DriverError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(DriverError::Local(format!(
                "cannot read {}: {e}",
                dir.display()
            )));
        }
    };
    Ok(entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "tgz")))
}

/// Reads the release from `helm upgrade -o json` or `helm status -o json`.
pub fn parse_release(command: &str, stdout: &str) -> Result<Release, DriverError> {
    let bad = |reason: String| DriverError::Output {
        command: command.to_owned(),
        reason,
    };
    let value: Value = serde_json::from_str(stdout).map_err(|e| bad(e.to_string()))?;
    let revision = value
        .get("version")
        .and_then(Value::as_i64)
        .ok_or_else(|| bad("no release version in the output".into()))?;
    let status = value
        .pointer("/info/status")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no info.status in the output".into()))?
        .to_owned();
    let chart_version = value
        .pointer("/chart/metadata/version")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(Release {
        revision,
        status,
        chart_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use helmq_schemas::config::{ChartRef, Repository};

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn http_config(manage: bool) -> HelmConfig {
        let mut values = serde_json::Map::new();
        values.insert("password".into(), "s3cret".into());
        HelmConfig {
            release_name: "web".into(),
            release_namespace: "apps".into(),
            manage_namespace: manage,
            source: ChartSource::Http {
                repository: Repository {
                    url: "https://charts.example.com/stable/".into(),
                    name: "example".into(),
                },
                chart: ChartRef {
                    name: "nginx".into(),
                    version: "15.4.2".into(),
                },
            },
            values,
        }
    }

    #[test]
    fn upgrade_installs_from_the_cached_package_with_values_in_a_file() {
        let args = strings(&upgrade_args(
            &http_config(true),
            Path::new("/c/nginx-15.4.2.tgz"),
            Path::new("/t/values-1.json"),
            Duration::from_secs(300),
        ));
        assert_eq!(
            args.join(" "),
            "upgrade --install web /c/nginx-15.4.2.tgz --namespace apps --create-namespace \
             --version 15.4.2 --values /t/values-1.json --wait --timeout 300s -o json"
        );
        assert!(!args.iter().any(|a| a.contains("s3cret")));
        let unmanaged = strings(&upgrade_args(
            &http_config(false),
            Path::new("/c/x.tgz"),
            Path::new("/v"),
            Duration::from_millis(10),
        ));
        assert!(!unmanaged.contains(&"--create-namespace".to_owned()));
        assert!(
            unmanaged.contains(&"1s".to_owned()),
            "a timeout is at least 1s"
        );
    }

    #[test]
    fn pulls_use_the_repository_or_the_oci_reference() {
        let dest = Path::new("/cache/charts/.pull-1");
        assert_eq!(
            strings(&pull_args(&http_config(true).source, dest)).join(" "),
            "pull nginx --repo https://charts.example.com/stable/ --version 15.4.2 --destination /cache/charts/.pull-1"
        );
        let oci = ChartSource::Oci {
            chart: "oci://registry.example.com:5000/charts/nginx:1.2.3".into(),
            authentication: None,
        };
        assert_eq!(
            strings(&pull_args(&oci, dest)).join(" "),
            "pull oci://registry.example.com:5000/charts/nginx --version 1.2.3 --destination /cache/charts/.pull-1"
        );
    }

    #[test]
    fn other_commands_take_release_namespace_and_timeout() {
        let t = Duration::from_secs(60);
        assert_eq!(
            strings(&uninstall_args("web", "apps", t)).join(" "),
            "uninstall web --namespace apps --wait --timeout 60s"
        );
        assert_eq!(
            strings(&status_args("web", "apps")).join(" "),
            "status web --namespace apps -o json"
        );
        assert_eq!(
            strings(&history_args("web", "apps")).join(" "),
            "history web --namespace apps -o json --max 20"
        );
        assert_eq!(
            strings(&rollback_args("web", "apps", 3, t)).join(" "),
            "rollback web 3 --namespace apps --wait --timeout 60s"
        );
        assert_eq!(
            strings(&kubectl_delete_namespace_args(
                "apps",
                Some(Path::new("/k"))
            ))
            .join(" "),
            "delete namespace apps --ignore-not-found --wait=false --kubeconfig /k"
        );
    }

    #[test]
    fn only_exact_versions_are_cached_and_keys_are_safe() {
        for exact in ["1.2.3", "v1.2.3", "1.2.3-rc.1", "1.2.3+build.7"] {
            assert!(is_exact_version(exact), "{exact}");
        }
        for range in [
            "",
            "^1.2",
            "~1.2.3",
            ">=1.0.0",
            "1.x",
            "1.2.*",
            "1.0 - 2.0",
            "*",
        ] {
            assert!(!is_exact_version(range), "{range}");
        }
        let key = cache_key(&http_config(true).source);
        assert!(
            key.starts_with("https___charts.example.com_stable-nginx-15.4.2-"),
            "{key}"
        );
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        );
        assert_eq!(key, cache_key(&http_config(true).source), "stable");
        // Sources that read the same once sanitized still get their own directories.
        let http = |url: &str, name: &str| ChartSource::Http {
            repository: helmq_schemas::config::Repository {
                url: url.into(),
                name: "r".into(),
            },
            chart: helmq_schemas::config::ChartRef {
                name: name.into(),
                version: "1.0.0".into(),
            },
        };
        assert_ne!(
            cache_key(&http("https://x.example/a-b", "c")),
            cache_key(&http("https://x.example/a", "b-c"))
        );
        assert_ne!(
            cache_key(&http("https://x.example/a/b", "c")),
            cache_key(&http("https://x.example/a_b", "c"))
        );
        // The same OCI chart with and without credentials is cached apart.
        let oci = |secret: Option<&str>| ChartSource::Oci {
            chart: "oci://registry.example/charts/app:1.0.0".into(),
            authentication: secret.map(|name| helmq_schemas::config::OciAuthentication {
                method: "registry".into(),
                secret_ref: helmq_schemas::config::SecretRef {
                    name: name.into(),
                    namespace: Some("apps".into()),
                },
            }),
        };
        assert_ne!(cache_key(&oci(None)), cache_key(&oci(Some("creds"))));
        assert_ne!(cache_key(&oci(Some("a"))), cache_key(&oci(Some("b"))));
    }

    fn secret(data: serde_json::Value) -> String {
        serde_json::json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": data})
            .to_string()
    }

    fn b64(text: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    #[test]
    fn registry_credentials_prefer_the_token_then_username_and_password() {
        let token = registry_credentials(&secret(serde_json::json!({"token": b64("t0k3n")})));
        assert_eq!(
            token,
            Ok(RegistryCredentials {
                username: TOKEN_USERNAME.into(),
                password: b"t0k3n".to_vec()
            })
        );
        let both = registry_credentials(&secret(serde_json::json!({
            "token": b64("t0k3n"), "username": b64("robot"), "password": b64("hunter2")
        })));
        assert_eq!(
            both,
            Ok(RegistryCredentials {
                username: "robot".into(),
                password: b"t0k3n".to_vec()
            }),
            "the token wins, with the secret's user name"
        );
        let basic = registry_credentials(&secret(serde_json::json!({
            "username": b64("robot"), "password": b64("hunter2"), "token": ""
        })));
        assert_eq!(
            basic,
            Ok(RegistryCredentials {
                username: "robot".into(),
                password: b"hunter2".to_vec()
            }),
            "an empty token does not count"
        );
        assert!(!format!("{basic:?}").contains("hunter2"), "{basic:?}");
    }

    #[test]
    fn unusable_secrets_name_keys_never_values() {
        let only_user = registry_credentials(&secret(serde_json::json!({
            "username": b64("robot"), "extra": b64("hunter2")
        })))
        .unwrap_err();
        assert_eq!(
            only_user,
            "the secret holds no token and no password (keys found: extra, username); it needs \
             `token` or both `username` and `password`"
        );
        let empty = registry_credentials(&secret(serde_json::json!({}))).unwrap_err();
        assert!(
            empty.contains("no token and no username and password (keys found: none)"),
            "{empty}"
        );
        let no_data = registry_credentials(r#"{"kind":"Secret","metadata":{"name":"x"}}"#);
        assert!(no_data.unwrap_err().contains("keys found: none"));
        let bad =
            registry_credentials(&secret(serde_json::json!({"token": "hunter2!!"}))).unwrap_err();
        assert_eq!(bad, "key token is not valid base64");
        assert!(
            registry_credentials("not json")
                .unwrap_err()
                .starts_with("kubectl printed no readable secret")
        );
    }

    #[test]
    fn registry_login_reads_the_password_from_stdin() {
        let args = strings(&registry_login_args("registry.example.com:5000", "robot"));
        assert_eq!(
            args.join(" "),
            "registry login registry.example.com:5000 --username robot --password-stdin"
        );
        assert_eq!(
            strings(&kubectl_get_secret_args(
                "creds",
                "apps",
                Some(Path::new("/k"))
            ))
            .join(" "),
            "get secret creds -n apps -o json --kubeconfig /k"
        );
        assert_eq!(
            registry_host("oci://registry.example.com:5000/charts/nginx:1.2.3"),
            Some("registry.example.com:5000")
        );
        assert_eq!(registry_host("oci://ghcr.io/o/c:1"), Some("ghcr.io"));
        for bad in [
            "oci://host",
            "oci:///x:1",
            "oci://--help/x:1",
            "https://h/x:1",
        ] {
            assert_eq!(registry_host(bad), None, "{bad}");
        }
        for ok in ["creds", "registry.creds-1", "a"] {
            assert!(is_dns_subdomain(ok), "{ok}");
        }
        for bad in ["", "-n", "Creds", "a/b", "creds-", ".x"] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }

    #[test]
    fn the_secret_lives_in_its_own_namespace_or_the_release_namespace() {
        let auth = |namespace: Option<&str>| OciAuthentication {
            method: "registry".into(),
            secret_ref: helmq_schemas::config::SecretRef {
                name: "creds".into(),
                namespace: namespace.map(str::to_owned),
            },
        };
        assert_eq!(
            SecretName::of(&auth(None), "apps").to_string(),
            "apps/creds"
        );
        assert_eq!(
            SecretName::of(&auth(Some(" ")), "apps").to_string(),
            "apps/creds"
        );
        assert_eq!(
            SecretName::of(&auth(Some("shared")), "apps").to_string(),
            "shared/creds"
        );
    }

    #[test]
    fn echoed_secrets_are_redacted_from_helm_errors() {
        let err = DriverError::Helm {
            command: "registry".into(),
            exit_code: Some(1),
            stderr: "Error: bad password hunter2".into(),
        };
        assert_eq!(
            redact(err, b"hunter2\n").to_string(),
            "helm registry failed: Error: bad password <redacted>"
        );
    }

    #[test]
    fn release_output_is_read_from_json() {
        let out = r#"{"name":"web","info":{"status":"deployed"},"chart":{"metadata":{"version":"15.4.2"}},"version":4}"#;
        assert_eq!(
            parse_release("upgrade", out),
            Ok(Release {
                revision: 4,
                status: "deployed".into(),
                chart_version: Some("15.4.2".into())
            })
        );
        assert!(matches!(
            parse_release("upgrade", "Release \"web\" has been upgraded"),
            Err(DriverError::Output { .. })
        ));
    }
}

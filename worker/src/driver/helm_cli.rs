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

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use helmq_schemas::{ChartSource, HelmConfig};
use serde_json::Value;
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
    /// `kubectl`, used only to delete managed namespaces; `None` disables that.
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
        run(command, &self.settings.helm_bin, &args, limit, cancel).await
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
        let fresh = tempfile::Builder::new()
            .prefix(".pull-")
            .tempdir_in(self.settings.cache_dir.join("charts"))
            .map_err(|e| DriverError::Local(format!("cannot create a pull directory: {e}")))?;
        self.helm(
            pull_args(&config.source, fresh.path()),
            self.settings.short_timeout,
            cancel,
        )
        .await?;
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
    mut command: tokio::process::Command,
    program: &Path,
    args: &[OsString],
    limit: Duration,
    cancel: &CancellationToken,
) -> Result<String, DriverError> {
    let name = args
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().map_err(|e| DriverError::Spawn {
        program: program.display().to_string(),
        reason: e.to_string(),
    })?;
    // Dropping `output` (cancel or timeout) drops the child, and kill_on_drop kills it.
    let output = child.wait_with_output();
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
    let raw = match source {
        ChartSource::Http { repository, chart } => format!(
            "{}-{}-{}",
            repository.url.trim_end_matches('/'),
            chart.name,
            chart.version
        ),
        ChartSource::Oci { chart, .. } => chart.clone(),
    };
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
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
        assert_eq!(
            cache_key(&http_config(true).source),
            "https___charts.example.com_stable-nginx-15.4.2"
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

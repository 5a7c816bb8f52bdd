//! The argument lists of every `helm` and `kubectl` command the driver runs, as pure functions.
//! Values and passwords never appear here: values go in a file, passwords on stdin.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use helmq_schemas::{ChartSource, HelmConfig, oci};

use crate::driver::LEASE_LABEL;

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// Helm's `--timeout`, in whole seconds and at least one.
fn secs(timeout: Duration) -> String {
    format!("{}s", timeout.as_secs().max(1))
}

/// Appends `--kubeconfig <path>` when there is one (in-cluster config otherwise); helm and
/// kubectl take it alike.
pub(super) fn with_kubeconfig(mut args: Vec<OsString>, kubeconfig: Option<&Path>) -> Vec<OsString> {
    if let Some(path) = kubeconfig {
        args.push("--kubeconfig".into());
        args.push(path.into());
    }
    args
}

/// `helm upgrade --install` from a local package with values from a file.
pub(super) fn upgrade_args(
    config: &HelmConfig,
    chart: &Path,
    values: &Path,
    timeout: Duration,
    lease_revision: u64,
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
    args.extend(os(&[
        "--labels",
        &format!("{LEASE_LABEL}={lease_revision}"),
        "--wait",
        "--timeout",
        &secs(timeout),
        "-o",
        "json",
    ]));
    args
}

/// `helm pull` of an HTTP repository chart or an OCI reference into `destination`.
pub(super) fn pull_args(source: &ChartSource, destination: &Path) -> Vec<OsString> {
    let mut args = match source {
        ChartSource::Http { repository, chart } => os(&[
            "pull",
            &chart.name,
            "--repo",
            &repository.url,
            "--version",
            &chart.version,
        ]),
        ChartSource::Oci { chart, .. } => match oci::Reference::parse(chart) {
            Ok(reference) => os(&["pull", reference.repository(), "--version", reference.tag()]),
            // Jobs are validated before they reach a driver; should one slip through, helm
            // gets the reference as written and says what is wrong with it.
            Err(_) => os(&["pull", chart]),
        },
    };
    args.push("--destination".into());
    args.push(destination.into());
    args
}

/// `helm uninstall`.
pub(super) fn uninstall_args(release: &str, namespace: &str, timeout: Duration) -> Vec<OsString> {
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
pub(super) fn status_args(release: &str, namespace: &str) -> Vec<OsString> {
    os(&["status", release, "--namespace", namespace, "-o", "json"])
}

/// `helm history -o json --max 20`.
pub(super) fn history_args(release: &str, namespace: &str) -> Vec<OsString> {
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
pub(super) fn rollback_args(
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

/// `helm registry login <host> --username <user> --password-stdin`: the password never goes on
/// the command line.
pub(super) fn registry_login_args(host: &str, username: &str) -> Vec<OsString> {
    os(&[
        "registry",
        "login",
        host,
        "--username",
        username,
        "--password-stdin",
    ])
}

/// `kubectl delete namespace`, without waiting for the namespace to go.
pub(super) fn kubectl_delete_namespace_args(
    namespace: &str,
    kubeconfig: Option<&Path>,
) -> Vec<OsString> {
    with_kubeconfig(
        os(&[
            "delete",
            "namespace",
            namespace,
            "--ignore-not-found",
            "--wait=false",
        ]),
        kubeconfig,
    )
}

/// The name of the Secret that stores `revision` of `release` (Helm's storage driver
/// `secret`, its default).
pub(super) fn release_record_secret(release: &str, revision: i64) -> String {
    format!("sh.helm.release.v1.{release}.v{revision}")
}

/// `kubectl get secret` of a release record, printing only its labels (as a JSON map).
pub(super) fn kubectl_get_labels_args(
    release: &str,
    revision: i64,
    namespace: &str,
    kubeconfig: Option<&Path>,
) -> Vec<OsString> {
    let secret = release_record_secret(release, revision);
    with_kubeconfig(
        os(&[
            "get",
            "secret",
            &secret,
            "-n",
            namespace,
            "-o",
            "jsonpath={.metadata.labels}",
        ]),
        kubeconfig,
    )
}

/// `kubectl get secret -o json` of a registry login's Secret.
pub(super) fn kubectl_get_secret_args(
    name: &str,
    namespace: &str,
    kubeconfig: Option<&Path>,
) -> Vec<OsString> {
    with_kubeconfig(
        os(&["get", "secret", name, "-n", namespace, "-o", "json"]),
        kubeconfig,
    )
}

#[cfg(test)]
mod tests {
    use helmq_schemas::config::{ChartRef, Repository};

    use super::*;

    fn line(args: &[OsString]) -> String {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
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
        let upgrade = |manage: bool, timeout: Duration| {
            line(&upgrade_args(
                &http_config(manage),
                Path::new("/c/nginx-15.4.2.tgz"),
                Path::new("/t/values-1.json"),
                timeout,
                42,
            ))
        };
        let cases = [
            (
                true,
                Duration::from_secs(300),
                "upgrade --install web /c/nginx-15.4.2.tgz --namespace apps --create-namespace \
                 --version 15.4.2 --values /t/values-1.json --labels helmq.io/lease-revision=42 --wait --timeout 300s -o json",
            ),
            // Unmanaged namespace; a timeout is at least 1s.
            (
                false,
                Duration::from_millis(10),
                "upgrade --install web /c/nginx-15.4.2.tgz --namespace apps --version 15.4.2 \
                 --values /t/values-1.json --labels helmq.io/lease-revision=42 --wait --timeout 1s -o json",
            ),
        ];
        for (manage, timeout, want) in cases {
            let got = upgrade(manage, timeout);
            assert_eq!(got, want);
            assert!(!got.contains("s3cret"), "values never on the command line");
        }
    }

    #[test]
    fn pulls_use_the_repository_or_the_oci_reference() {
        let dest = Path::new("/cache/charts/.pull-1");
        let oci = |chart: &str| ChartSource::Oci {
            chart: chart.into(),
            authentication: None,
        };
        let cases = [
            (
                http_config(true).source,
                "pull nginx --repo https://charts.example.com/stable/ --version 15.4.2 \
                 --destination /cache/charts/.pull-1",
            ),
            (
                oci("oci://registry.example.com:5000/charts/nginx:1.2.3"),
                "pull oci://registry.example.com:5000/charts/nginx --version 1.2.3 \
                 --destination /cache/charts/.pull-1",
            ),
            (
                oci("oci://registry.example.com:5000/charts/nginx"),
                "pull oci://registry.example.com:5000/charts/nginx \
                 --destination /cache/charts/.pull-1",
            ),
        ];
        for (source, want) in cases {
            assert_eq!(line(&pull_args(&source, dest)), want);
        }
    }

    #[test]
    fn other_commands_take_release_namespace_timeout_and_kubeconfig() {
        let t = Duration::from_secs(60);
        let k = Some(Path::new("/k"));
        let cases = [
            (
                uninstall_args("web", "apps", t),
                "uninstall web --namespace apps --wait --timeout 60s",
            ),
            (
                status_args("web", "apps"),
                "status web --namespace apps -o json",
            ),
            (
                history_args("web", "apps"),
                "history web --namespace apps -o json --max 20",
            ),
            (
                rollback_args("web", "apps", 3, t),
                "rollback web 3 --namespace apps --wait --timeout 60s",
            ),
            (
                registry_login_args("registry.example.com:5000", "robot"),
                "registry login registry.example.com:5000 --username robot --password-stdin",
            ),
            (
                with_kubeconfig(status_args("web", "apps"), k),
                "status web --namespace apps -o json --kubeconfig /k",
            ),
            (
                kubectl_delete_namespace_args("apps", k),
                "delete namespace apps --ignore-not-found --wait=false --kubeconfig /k",
            ),
            (
                kubectl_delete_namespace_args("apps", None),
                "delete namespace apps --ignore-not-found --wait=false",
            ),
            (
                kubectl_get_secret_args("creds", "apps", k),
                "get secret creds -n apps -o json --kubeconfig /k",
            ),
        ];
        for (args, want) in cases {
            assert_eq!(line(&args), want);
        }
    }
}

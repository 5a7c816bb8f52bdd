//! The argument lists of every `helm` and `kubectl` command the driver runs, as pure functions.
//! Values and passwords never appear here: values go in a file, passwords on stdin.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::time::Duration;

use helmq_schemas::config::ValuesKind;
use helmq_schemas::{ChartSource, HelmConfig, oci};

use crate::driver::{LEASE_LABEL, ReleaseRef, Tool};
use crate::ownership::{Identity, Owner};

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// Helm's `--timeout`, in whole seconds and at least one.
fn secs(timeout: Duration) -> String {
    format!("{}s", timeout.as_secs().max(1))
}

/// Adds, before the `--` that ends the flags, `--kubeconfig <path>` when there is one
/// (in-cluster config otherwise) and the impersonated user when the identity is not the
/// worker's own: helm's `--kube-as-user`, kubectl's `--as`.
pub(super) fn with_access(
    mut args: Vec<OsString>,
    tool: Tool,
    kubeconfig: Option<&Path>,
    identity: &Identity,
) -> Vec<OsString> {
    let mut access = Vec::new();
    if let Some(path) = kubeconfig {
        access.extend([OsString::from("--kubeconfig"), path.into()]);
    }
    if let Some(user) = identity.user() {
        access.push(match tool {
            Tool::Helm => flag("kube-as-user", user),
            Tool::Kubectl => flag("as", user),
        });
    }
    let at = args.iter().position(|a| a == "--").unwrap_or(args.len());
    args.splice(at..at, access);
    args
}

/// `flags`, then `--` and `positionals`: after `--` nothing is read as a flag, whatever a job
/// named. Values a job chooses go in flags as `--flag=value`, never as the next argument.
fn command(flags: Vec<OsString>, positionals: &[&OsStr]) -> Vec<OsString> {
    let mut args = flags;
    args.push("--".into());
    args.extend(positionals.iter().map(|p| (*p).to_owned()));
    args
}

/// `--name=value`.
fn flag(name: &str, value: &str) -> OsString {
    format!("--{name}={value}").into()
}

/// How `helm install` or `helm upgrade --install` runs: what it stamps on the release and
/// whether helm creates the namespace.
pub(super) struct Stamp<'a> {
    /// `helm install`, which refuses a release name in use, instead of `helm upgrade --install`.
    pub install: bool,
    /// The release lease revision the run holds.
    pub lease_revision: u64,
    /// The release's owner.
    pub owner: &'a Owner,
    /// `--create-namespace`: only when the driver could not create the namespace with its
    /// owner labels itself (no kubectl), so that helmq never claims a namespace it did not
    /// create.
    pub create_namespace: bool,
}

/// `helm install` or `helm upgrade --install` from a local package with values from a file.
pub(super) fn apply_args(
    config: &HelmConfig,
    chart: &Path,
    values: &Path,
    timeout: Duration,
    stamp: &Stamp<'_>,
) -> Vec<OsString> {
    let mut flags = if stamp.install {
        os(&["install"])
    } else {
        os(&["upgrade", "--install"])
    };
    flags.push(flag("namespace", &config.release_namespace));
    if stamp.create_namespace {
        flags.push("--create-namespace".into());
    }
    if !config.chart_version().is_empty() {
        flags.push(flag("version", config.chart_version()));
    }
    let mut values_flag = OsString::from("--values=");
    values_flag.push(values);
    flags.push(values_flag);
    let mut labels = format!("{LEASE_LABEL}={}", stamp.lease_revision);
    for (key, value) in stamp.owner.labels() {
        labels.push_str(&format!(",{key}={value}"));
    }
    flags.push(flag("labels", &labels));
    flags.extend(os(&["--wait", "--timeout", &secs(timeout), "-o", "json"]));
    command(
        flags,
        &[OsStr::new(&config.release_name), chart.as_os_str()],
    )
}

/// `helm pull` of an HTTP repository chart or an OCI reference into `destination`.
pub(super) fn pull_args(source: &ChartSource, destination: &Path) -> Vec<OsString> {
    let mut destination_flag = OsString::from("--destination=");
    destination_flag.push(destination);
    match source {
        ChartSource::Http { repository, chart } => command(
            vec![
                "pull".into(),
                flag("repo", &repository.url),
                flag("version", &chart.version),
                destination_flag,
            ],
            &[OsStr::new(&chart.name)],
        ),
        ChartSource::Oci { chart, .. } => match oci::Reference::parse(chart) {
            Ok(reference) => command(
                vec![
                    "pull".into(),
                    flag("version", reference.tag()),
                    destination_flag,
                ],
                &[OsStr::new(reference.repository())],
            ),
            // Jobs are validated before they reach a driver; should one slip through, helm
            // gets the reference as written and says what is wrong with it.
            Err(_) => command(
                vec!["pull".into(), destination_flag],
                &[OsStr::new(chart.as_str())],
            ),
        },
    }
}

/// `helm <subcommand> --namespace=<namespace> <flags> -- <release> <positionals>`: a subcommand
/// about one release.
fn on_release(
    subcommand: &str,
    namespace: &str,
    release: &str,
    flags: &[&str],
    positionals: &[&str],
) -> Vec<OsString> {
    let mut args = vec![subcommand.into(), flag("namespace", namespace)];
    args.extend(os(flags));
    let mut positionals: Vec<&OsStr> = positionals.iter().map(OsStr::new).collect();
    positionals.insert(0, OsStr::new(release));
    command(args, &positionals)
}

/// `helm uninstall`.
pub(super) fn uninstall_args(release: &ReleaseRef, timeout: Duration) -> Vec<OsString> {
    let flags = ["--wait", "--timeout", &secs(timeout)];
    on_release(
        "uninstall",
        &release.namespace,
        &release.release,
        &flags,
        &[],
    )
}

/// `helm status -o json`.
pub(super) fn status_args(release: &ReleaseRef) -> Vec<OsString> {
    let flags = ["-o", "json"];
    on_release("status", &release.namespace, &release.release, &flags, &[])
}

/// `helm history -o json --max 20`.
pub(super) fn history_args(release: &ReleaseRef) -> Vec<OsString> {
    let flags = ["-o", "json", "--max", "20"];
    on_release("history", &release.namespace, &release.release, &flags, &[])
}

/// `helm rollback <release> <revision>`.
pub(super) fn rollback_args(
    release: &ReleaseRef,
    revision: i64,
    timeout: Duration,
) -> Vec<OsString> {
    let flags = ["--wait", "--timeout", &secs(timeout)];
    let revision = revision.to_string();
    on_release(
        "rollback",
        &release.namespace,
        &release.release,
        &flags,
        &[&revision],
    )
}

/// `helm test <release>`: runs the test hooks of the release's newest revision and waits for
/// them up to `timeout`.
pub(super) fn test_args(release: &str, namespace: &str, timeout: Duration) -> Vec<OsString> {
    on_release(
        "test",
        namespace,
        release,
        &["--timeout", &secs(timeout)],
        &[],
    )
}

/// `helm registry login <host> --username <user> --password-stdin`: the password never goes on
/// the command line.
pub(super) fn registry_login_args(host: &str, username: &str) -> Vec<OsString> {
    command(
        vec![
            "registry".into(),
            "login".into(),
            flag("username", username),
            "--password-stdin".into(),
        ],
        &[OsStr::new(host)],
    )
}

/// `kubectl delete namespace`, without waiting for the namespace to go.
pub(super) fn kubectl_delete_namespace_args(namespace: &str) -> Vec<OsString> {
    command(
        os(&["delete", "namespace", "--ignore-not-found", "--wait=false"]),
        &[OsStr::new(namespace)],
    )
}

/// `kubectl get namespace -o jsonpath={.metadata.labels}`: its labels as a JSON map.
pub(super) fn kubectl_namespace_labels_args(namespace: &str) -> Vec<OsString> {
    command(
        os(&["get", "namespace", "-o", "jsonpath={.metadata.labels}"]),
        &[OsStr::new(namespace)],
    )
}

/// `kubectl create -f -`: creates the object read from stdin (a namespace with its owner
/// labels); fails with `AlreadyExists` when it exists.
pub(super) fn kubectl_create_stdin_args() -> Vec<OsString> {
    os(&["create", "-o", "name", "-f", "-"])
}

/// `helm get manifest <release>`: the objects of its newest revision, as YAML documents.
pub(super) fn get_manifest_args(release: &ReleaseRef) -> Vec<OsString> {
    command(
        vec![
            "get".into(),
            "manifest".into(),
            flag("namespace", &release.namespace),
        ],
        &[OsStr::new(&release.release)],
    )
}

/// `kubectl apply --server-side` of the objects on stdin as Helm's field manager, taking back
/// fields another manager took (`--force-conflicts`); only the server's answer when `dry_run`.
pub(super) fn kubectl_apply_args(namespace: &str, dry_run: bool) -> Vec<OsString> {
    let mut args = os(&["apply", "--server-side", "--force-conflicts"]);
    args.push(flag("field-manager", crate::drift::FIELD_MANAGER));
    args.push(flag("namespace", namespace));
    if dry_run {
        args.push("--dry-run=server".into());
    }
    args.extend(os(&["-o", "json", "-f", "-"]));
    args
}

/// `kubectl get` of the objects on stdin as they are (those that are gone left out).
pub(super) fn kubectl_get_objects_args(namespace: &str) -> Vec<OsString> {
    let mut args = os(&["get", "--ignore-not-found"]);
    args.push(flag("namespace", namespace));
    args.extend(os(&["-o", "json", "-f", "-"]));
    args
}

/// The name of the Secret that stores `revision` of `release` (Helm's storage driver
/// `secret`, its default).
pub(super) fn release_record_secret(release: &str, revision: i64) -> String {
    format!("sh.helm.release.v1.{release}.v{revision}")
}

/// `kubectl get secret` of a release record, printing only its labels (as a JSON map).
pub(super) fn kubectl_get_labels_args(release: &ReleaseRef, revision: i64) -> Vec<OsString> {
    let secret = release_record_secret(&release.release, revision);
    kubectl_get_secret(&secret, &release.namespace, "jsonpath={.metadata.labels}")
}

/// `kubectl get secret -o json` of a registry login's Secret.
pub(super) fn kubectl_get_secret_args(name: &str, namespace: &str) -> Vec<OsString> {
    kubectl_get_secret(name, namespace, "json")
}

/// `kubectl get configmap|secret -o json` of a `valuesFrom` source.
pub(super) fn kubectl_get_values_args(
    kind: ValuesKind,
    name: &str,
    namespace: &str,
) -> Vec<OsString> {
    let resource = match kind {
        ValuesKind::ConfigMap => "configmap",
        ValuesKind::Secret => "secret",
    };
    kubectl_get(resource, name, namespace, "json")
}

/// `kubectl get secret -o <output>`.
fn kubectl_get_secret(name: &str, namespace: &str, output: &str) -> Vec<OsString> {
    kubectl_get("secret", name, namespace, output)
}

/// `kubectl get <resource> -o <output>`.
fn kubectl_get(resource: &str, name: &str, namespace: &str, output: &str) -> Vec<OsString> {
    command(
        vec![
            "get".into(),
            resource.into(),
            flag("namespace", namespace),
            "-o".into(),
            output.into(),
        ],
        &[OsStr::new(name)],
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
            values_from: Vec::new(),
            service_account_name: None,
            adopt: false,
            remediation: Default::default(),
            test: Default::default(),
            drift: Default::default(),
        }
    }

    fn owner(uid: &str) -> Owner {
        Owner {
            namespace: "team-a".into(),
            name: "web".into(),
            uid: uid.into(),
        }
    }

    #[test]
    fn applies_install_from_the_cached_package_with_values_in_a_file() {
        let owner = owner("u-1");
        let upgrade = |create_namespace: bool, timeout: Duration| {
            line(&apply_args(
                &http_config(create_namespace),
                Path::new("/c/nginx-15.4.2.tgz"),
                Path::new("/t/values-1.json"),
                timeout,
                &Stamp {
                    install: false,
                    lease_revision: 42,
                    owner: &owner,
                    create_namespace,
                },
            ))
        };
        let cases = [
            (
                true,
                Duration::from_secs(300),
                "upgrade --install --namespace=apps --create-namespace --version=15.4.2 \
                 --values=/t/values-1.json --labels=helmq.io/lease-revision=42,\
                 helmq.io/owner-namespace=team-a,helmq.io/owner-name=web,helmq.io/owner-uid=u-1 \
                 --wait --timeout 300s -o json -- web /c/nginx-15.4.2.tgz",
            ),
            // The namespace is not created by helm; a timeout is at least 1s.
            (
                false,
                Duration::from_millis(10),
                "upgrade --install --namespace=apps --version=15.4.2 --values=/t/values-1.json \
                 --labels=helmq.io/lease-revision=42,helmq.io/owner-namespace=team-a,\
                 helmq.io/owner-name=web,helmq.io/owner-uid=u-1 --wait --timeout 1s -o json -- \
                 web /c/nginx-15.4.2.tgz",
            ),
        ];
        for (manage, timeout, want) in cases {
            let got = upgrade(manage, timeout);
            assert_eq!(got, want);
            assert!(!got.contains("s3cret"), "values never on the command line");
        }
        // A release helmq has no record of is installed: helm refuses a name in use.
        let install = line(&apply_args(
            &http_config(false),
            Path::new("/c/nginx-15.4.2.tgz"),
            Path::new("/t/values-1.json"),
            Duration::from_secs(60),
            &Stamp {
                install: true,
                lease_revision: 7,
                owner: &owner,
                create_namespace: false,
            },
        ));
        assert_eq!(
            install,
            "install --namespace=apps --version=15.4.2 --values=/t/values-1.json \
             --labels=helmq.io/lease-revision=7,helmq.io/owner-namespace=team-a,\
             helmq.io/owner-name=web,helmq.io/owner-uid=u-1 --wait --timeout 60s -o json -- \
             web /c/nginx-15.4.2.tgz"
        );
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
                "pull --repo=https://charts.example.com/stable/ --version=15.4.2 \
                 --destination=/cache/charts/.pull-1 -- nginx",
            ),
            (
                oci("oci://registry.example.com:5000/charts/nginx:1.2.3"),
                "pull --version=1.2.3 --destination=/cache/charts/.pull-1 -- \
                 oci://registry.example.com:5000/charts/nginx",
            ),
            (
                oci("oci://registry.example.com:5000/charts/nginx"),
                "pull --destination=/cache/charts/.pull-1 -- \
                 oci://registry.example.com:5000/charts/nginx",
            ),
        ];
        for (source, want) in cases {
            assert_eq!(line(&pull_args(&source, dest)), want);
        }
    }

    #[test]
    fn other_commands_take_release_namespace_timeout_kubeconfig_and_identity() {
        let t = Duration::from_secs(60);
        let k = Some(Path::new("/k"));
        let tenant = Identity::User("system:serviceaccount:team-a:deployer".into());
        let worker = Identity::Worker;
        let web = ReleaseRef::new("apps", "web");
        let cases = [
            (
                uninstall_args(&web, t),
                "uninstall --namespace=apps --wait --timeout 60s -- web",
            ),
            (status_args(&web), "status --namespace=apps -o json -- web"),
            (
                history_args(&web),
                "history --namespace=apps -o json --max 20 -- web",
            ),
            (
                rollback_args(&web, 3, t),
                "rollback --namespace=apps --wait --timeout 60s -- web 3",
            ),
            (
                test_args("web", "apps", Duration::from_millis(1500)),
                "test --namespace=apps --timeout 1s -- web",
            ),
            (
                with_access(test_args("web", "apps", t), Tool::Helm, k, &tenant),
                "test --namespace=apps --timeout 60s --kubeconfig /k \
                 --kube-as-user=system:serviceaccount:team-a:deployer -- web",
            ),
            (
                registry_login_args("registry.example.com:5000", "robot"),
                "registry login --username=robot --password-stdin -- registry.example.com:5000",
            ),
            (
                with_access(status_args(&web), Tool::Helm, k, &worker),
                "status --namespace=apps -o json --kubeconfig /k -- web",
            ),
            (
                with_access(status_args(&web), Tool::Helm, k, &tenant),
                "status --namespace=apps -o json --kubeconfig /k \
                 --kube-as-user=system:serviceaccount:team-a:deployer -- web",
            ),
            (
                with_access(
                    kubectl_delete_namespace_args("apps"),
                    Tool::Kubectl,
                    k,
                    &tenant,
                ),
                "delete namespace --ignore-not-found --wait=false --kubeconfig /k \
                 --as=system:serviceaccount:team-a:deployer -- apps",
            ),
            (
                with_access(
                    kubectl_delete_namespace_args("apps"),
                    Tool::Kubectl,
                    None,
                    &worker,
                ),
                "delete namespace --ignore-not-found --wait=false -- apps",
            ),
            (
                kubectl_namespace_labels_args("apps"),
                "get namespace -o jsonpath={.metadata.labels} -- apps",
            ),
            (
                with_access(kubectl_create_stdin_args(), Tool::Kubectl, None, &tenant),
                "create -o name -f - --as=system:serviceaccount:team-a:deployer",
            ),
            (
                kubectl_get_labels_args(&web, 2),
                "get secret --namespace=apps -o jsonpath={.metadata.labels} -- sh.helm.release.v1.web.v2",
            ),
            // A name that looks like a flag stays a positional argument.
            (
                status_args(&ReleaseRef::new("apps", "--all")),
                "status --namespace=apps -o json -- --all",
            ),
            (
                with_access(
                    kubectl_get_secret_args("creds", "apps"),
                    Tool::Kubectl,
                    k,
                    &worker,
                ),
                "get secret --namespace=apps -o json --kubeconfig /k -- creds",
            ),
        ];
        for (args, want) in cases {
            assert_eq!(line(&args), want);
        }
    }
}

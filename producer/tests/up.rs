//! `just up` (scripts/up.sh) fails early, with a clear message and nothing left running, when
//! helm is missing or too old or no cluster is reachable.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_helmqctl"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A stand-in `helm` that only answers `version --short`.
fn fake_helm(dir: &Path, version: &str) -> PathBuf {
    let path = dir.join("helm");
    std::fs::write(
        &path,
        format!("#!/bin/sh\n[ \"$1\" = version ] && echo '{version}' && exit 0\nexit 1\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

fn up(run_dir: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new("bash")
        .arg(root().join("scripts/up.sh"))
        .env("HELMQ_RUN_DIR", run_dir)
        .env("HELMQ_BIN_DIR", bin_dir())
        .env_remove("NATS_URL")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), stderr)
}

/// Nothing was started: no PID recorded.
fn assert_nothing_started(run_dir: &Path) {
    let pids = std::fs::read_to_string(run_dir.join("pids")).unwrap_or_default();
    assert!(pids.trim().is_empty(), "processes were started: {pids}");
}

#[test]
fn up_fails_early_without_helm() {
    let run = tempfile::tempdir().unwrap();
    let (ok, stderr) = up(run.path(), &[("HELM_BIN", "/nonexistent/helm")]);
    assert!(!ok);
    assert_eq!(
        stderr.trim(),
        "just up: helm not found (HELM_BIN=/nonexistent/helm): install Helm 3.14+ or 4 and put it on PATH, or set HELM_BIN"
    );
    assert_nothing_started(run.path());
}

#[test]
fn up_refuses_an_old_helm() {
    let run = tempfile::tempdir().unwrap();
    let helm = fake_helm(run.path(), "v3.12.3+g3a31588");
    let (ok, stderr) = up(run.path(), &[("HELM_BIN", helm.to_str().unwrap())]);
    assert!(!ok);
    assert!(
        stderr.contains("is too old: helmq needs Helm 3.14+ or 4"),
        "{stderr}"
    );
    assert_nothing_started(run.path());
}

#[test]
fn up_fails_early_when_no_cluster_is_reachable() {
    let run = tempfile::tempdir().unwrap();
    let helm = fake_helm(run.path(), "v3.16.2+g13654a5");
    let kubeconfig = run.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:1\"}}]\n\
         contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n\
         users: [{name: u, user: {token: x}}]\n",
    )
    .unwrap();
    let (ok, stderr) = up(
        run.path(),
        &[
            ("HELM_BIN", helm.to_str().unwrap()),
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("helmqctl: no Kubernetes cluster reachable at https://127.0.0.1:1/"),
        "{stderr}"
    );
    assert!(
        stderr.contains("just up: no usable Kubernetes cluster (see above); set KUBECONFIG or fix the current context"),
        "{stderr}"
    );
    assert_nothing_started(run.path());

    let (ok, stderr) = up(
        run.path(),
        &[
            ("HELM_BIN", helm.to_str().unwrap()),
            ("KUBECONFIG", "/nonexistent/kubeconfig"),
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("helmqctl: cannot load a kubeconfig (KUBECONFIG=/nonexistent/kubeconfig)"),
        "{stderr}"
    );
}

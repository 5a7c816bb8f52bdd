//! `just up` (scripts/up.sh) fails early, with a clear message and nothing left running, when
//! helm is missing or too old or no cluster is reachable.
//!
//! The script runs the workspace's binaries from `target/<profile>/`
//! ([`helmq_tests::binaries_dir`]): a run over the whole workspace builds them, a run of this
//! crate alone needs `cargo build --bins` first.

use std::path::{Path, PathBuf};
use std::process::Command;

use helmq_tests::wait::eventually_blocking;

fn root() -> PathBuf {
    helmq_tests::workspace_root()
}

fn bin_dir() -> PathBuf {
    helmq_tests::binaries_dir()
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

/// A kubeconfig whose API server (127.0.0.1:1) never answers.
fn unreachable_kubeconfig(dir: &Path) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:1\"}}]\n\
         contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n\
         users: [{name: u, user: {token: x}}]\n",
    )
    .unwrap();
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
    let kubeconfig = unreachable_kubeconfig(run.path());
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn alive(pid: &str) -> bool {
    pid.parse().is_ok_and(helmq_tests::procfs::is_alive)
}

/// `up` starts NATS, the producer and the workers and records them; `down` stops exactly
/// those. (No cluster here: the preflight is skipped and the producer keeps retrying its
/// watch, as it does while an API server is down.)
#[test]
fn up_then_down_starts_and_stops_exactly_its_processes() {
    let run = tempfile::tempdir().unwrap();
    let helm = fake_helm(run.path(), "v3.16.2+g13654a5");
    let kubeconfig = unreachable_kubeconfig(run.path());
    let nats_port = free_port().to_string();
    // Three consecutive ports for the producer and two workers.
    let http_base = loop {
        let base = free_port();
        if (1..=2).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            break base.to_string();
        }
    };
    let nats_dir = helmq_tests::default_binary().expect("a nats-server (just setup)");
    let path = format!(
        "{}:{}",
        nats_dir.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (ok, stderr) = up(
        run.path(),
        &[
            ("HELM_BIN", helm.to_str().unwrap()),
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("HELMQ_UP_SKIP_PREFLIGHT", "1"),
            ("NATS_PORT", &nats_port),
            ("HELMQ_HTTP_BASE", &http_base),
            ("WORKERS", "2"),
            ("PATH", &path),
        ],
    );
    let pids_file = run.path().join("pids");
    let pids = std::fs::read_to_string(&pids_file).unwrap_or_default();
    let started: Vec<(String, String)> = pids
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, p)| (n.to_owned(), p.to_owned()))
        .collect();
    let stop = || {
        Command::new("bash")
            .arg(root().join("scripts/down.sh"))
            .env("HELMQ_RUN_DIR", run.path())
            .output()
            .unwrap()
    };
    if !ok {
        stop();
        panic!("up failed: {stderr}");
    }
    let names: Vec<&str> = started.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "nats-server",
            "helmq-producer",
            "helmq-worker-1",
            "helmq-worker-2"
        ]
    );
    for (name, pid) in &started {
        assert!(alive(pid), "{name} ({pid}) is not running");
    }
    // The queue is set up and the workers pull from it.
    let status = Command::new(bin_dir().join("helmqctl"))
        .args([
            "--nats-url",
            &format!("nats://127.0.0.1:{nats_port}"),
            "-o",
            "json",
            "status",
        ])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["consumers"][0]["name"], "helmq-workers", "{status}");
    assert_eq!(status["missing"], serde_json::json!([]), "{status}");
    // A second `up` refuses to start another set.
    let (again, stderr) = up(run.path(), &[("HELM_BIN", helm.to_str().unwrap())]);
    assert!(!again);
    assert!(stderr.contains("is already running"), "{stderr}");

    let out = stop();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, pid) in &started {
        eventually_blocking(
            std::time::Duration::from_secs(10),
            &format!("{name} ({pid}) to stop after down"),
            || !alive(pid),
        );
    }
    assert!(!pids_file.exists());
}

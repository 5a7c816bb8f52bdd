//! helm and kubectl never see the worker's NATS credentials: this test runs itself again as a
//! child process whose environment holds NATS passwords and tokens (as a worker's does), and
//! there drives `HelmCli` with a fake helm and a fake kubectl (shell scripts) that dump the
//! environment they were given.

use std::path::Path;
use std::process::Command;

use helmq_worker::HelmCli;
use helmq_worker::driver::{HelmCliSettings, HelmDriver};
use tokio_util::sync::CancellationToken;

/// Set in the child run: the directory the fakes dump their environments into.
const DUMP_DIR: &str = "HELMQ_TEST_ENV_DUMP_DIR";

/// What a worker's environment may hold that no child may see.
const SECRETS: &[(&str, &str)] = &[
    ("NATS_PASSWORD", "nats-password-1"),
    ("NATS_TOKEN", "nats-token-2"),
    ("HELMQ_NATS_TOKEN", "helmq-token-3"),
    ("HELMQ_NATS_PASSWORD", "helmq-password-4"),
    ("HELMQ_NATS_CREDS", "/secret/nats.creds-5"),
    ("HELM_KUBETOKEN", "kube-token-6"),
];

fn dumper(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let script = format!(
        "#!/bin/sh\nenv > '{}/{name}.env'\necho 'Error: release: not found' >&2\nexit 1\n",
        dir.display()
    );
    std::fs::write(&path, script).unwrap();
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&path, perms).unwrap();
    path
}

/// The child run: helm and kubectl, each once.
async fn run_children(dir: &Path) {
    let mut settings = HelmCliSettings::new(dumper(dir, "helm"), dir.join("cache"));
    settings.kubectl_bin = Some(dumper(dir, "kubectl"));
    let cli = HelmCli::new(settings).unwrap();
    let cancel = CancellationToken::new();
    let worker = helmq_worker::ownership::Identity::Worker;
    let target = helmq_worker::driver::Target {
        release: "web",
        namespace: "apps",
        identity: &worker,
    };
    assert_eq!(cli.status(target, &cancel).await.unwrap(), None);
    let owner = helmq_worker::ownership::Owner {
        namespace: "team".into(),
        name: "web".into(),
        uid: String::new(),
    };
    let _ = cli.delete_namespace("apps", &worker, &owner, &cancel).await;
}

fn read_env(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[tokio::test]
async fn the_workers_secrets_never_reach_helm_or_kubectl() {
    if let Some(dir) = std::env::var_os(DUMP_DIR) {
        run_children(Path::new(&dir)).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "the_workers_secrets_never_reach_helm_or_kubectl",
            "--exact",
            "--nocapture",
        ])
        .env(DUMP_DIR, dir.path())
        .envs(SECRETS.iter().copied())
        .env("HELM_DRIVER", "secret")
        .env("HTTPS_PROXY", "http://proxy.example:3128")
        .status()
        .unwrap();
    assert!(status.success(), "the child run failed: {status}");
    for tool in ["helm", "kubectl"] {
        let env = read_env(&dir.path().join(format!("{tool}.env")));
        let text = format!("{env:?}");
        for (name, value) in SECRETS {
            assert!(
                !env.iter().any(|(k, _)| k == name) && !text.contains(value),
                "{tool} saw {name}: {text}"
            );
        }
        assert!(!text.contains(DUMP_DIR), "{tool}: {text}");
        let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        assert!(get("PATH").is_some(), "{tool} needs PATH: {text}");
        assert_eq!(
            get("HTTPS_PROXY"),
            Some("http://proxy.example:3128"),
            "{tool}"
        );
        let helm_only = if tool == "helm" { Some("secret") } else { None };
        assert_eq!(get("HELM_DRIVER"), helm_only, "{tool}");
        if tool == "helm" {
            assert!(get("HELM_DATA_HOME").is_some_and(|v| v.contains("cache")));
        }
    }
}

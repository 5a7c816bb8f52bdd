//! The deployment files agree with each other and with the code: the KEDA trigger watches the
//! workers' real stream and consumer with a lag threshold of one pod's concurrency, the grace
//! period covers the drain deadline (and, for the worker, helm's SIGTERM grace), probes hit the
//! health endpoints, images run as non-root with a pinned helm, and the NATS account config is
//! accepted by a real nats-server.

use std::path::PathBuf;
use std::process::Command;

use helmq_queue::topology::{JOBS_STREAM, WORKERS_CONSUMER};
use helmq_schemas::component::parse_go_duration;
use helmq_tests::workspace_root;
use serde_json::Value;

fn path(rel: &str) -> PathBuf {
    workspace_root().join(rel)
}

fn docs(rel: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_saphyr::from_str_multiple::<Value, Vec<Value>>(&text)
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn one(rel: &str, kind: &str) -> Value {
    docs(rel)
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("{rel} has no {kind}"))
}

fn env(container: &Value, name: &str) -> Option<String> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(str::to_owned))
}

#[test]
fn keda_scales_the_workers_on_their_consumer_lag_by_one_pods_concurrency() {
    let worker = one("deploy/kubernetes/worker.yaml", "Deployment");
    let scaled = one("deploy/kubernetes/worker-scaledobject.yaml", "ScaledObject");
    assert_eq!(scaled["apiVersion"], "keda.sh/v1alpha1");
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"],
        worker["metadata"]["name"]
    );
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "nats-jetstream");
    assert_eq!(trigger["metadata"]["stream"], JOBS_STREAM);
    assert_eq!(trigger["metadata"]["consumer"], WORKERS_CONSUMER);
    let container = &worker["spec"]["template"]["spec"]["containers"][0];
    let concurrency = env(container, "HELMQ_CONCURRENCY").expect("HELMQ_CONCURRENCY set");
    assert_eq!(
        trigger["metadata"]["lagThreshold"].as_str(),
        Some(concurrency.as_str())
    );
}

#[test]
fn deployments_drain_before_being_killed_and_probe_the_health_endpoints() {
    for (file, name) in [
        ("deploy/kubernetes/worker.yaml", "helmq-worker"),
        ("deploy/kubernetes/producer.yaml", "helmq-producer"),
    ] {
        let deployment = one(file, "Deployment");
        assert_eq!(deployment["metadata"]["name"], name);
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let drain = env(container, "HELMQ_DRAIN_DEADLINE").expect("drain deadline set");
        let drain = parse_go_duration(&drain).unwrap().as_secs();
        // Jobs cancelled at the drain deadline give helm its own grace (HELMQ_HELM_GRACE,
        // 10s by default) between SIGTERM and SIGKILL.
        let helm_grace = if name == "helmq-worker" {
            let value = env(container, "HELMQ_HELM_GRACE").unwrap_or_else(|| "10s".into());
            parse_go_duration(&value).unwrap().as_secs()
        } else {
            0
        };
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(
            grace > drain.saturating_add(helm_grace),
            "{file}: grace {grace}s must exceed the drain deadline {drain}s plus the helm grace \
             {helm_grace}s"
        );
        assert_eq!(
            container["livenessProbe"]["httpGet"]["path"], "/healthz",
            "{file}"
        );
        assert_eq!(
            container["readinessProbe"]["httpGet"]["path"], "/readyz",
            "{file}"
        );
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{file}");
        // The service account exists in the role's RBAC file.
        let role = name.trim_start_matches("helmq-");
        let rbac = docs(&format!("deploy/rbac/{role}.yaml"));
        assert!(
            rbac.iter().any(|d| d["kind"] == "ServiceAccount"
                && d["metadata"]["name"] == pod["serviceAccountName"]
                && d["metadata"]["namespace"] == deployment["metadata"]["namespace"]),
            "{file}: no ServiceAccount {} in namespace {} in deploy/rbac/{role}.yaml",
            pod["serviceAccountName"],
            deployment["metadata"]["namespace"]
        );
    }
}

#[test]
fn the_dockerfile_builds_non_root_images_with_a_pinned_helm() {
    let text = std::fs::read_to_string(path("deploy/docker/Dockerfile")).unwrap();
    let mut stage = String::new();
    let mut stage_user: std::collections::BTreeMap<String, String> = Default::default();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (instruction, rest) = line.split_once(' ').unwrap_or((line, ""));
        let known = [
            "FROM",
            "ARG",
            "WORKDIR",
            "COPY",
            "RUN",
            "USER",
            "ENV",
            "EXPOSE",
            "ENTRYPOINT",
            "&&",
            "mkdir",
            "cp",
        ];
        assert!(
            known.contains(&instruction) || line.starts_with("&&"),
            "unexpected Dockerfile line: {line}"
        );
        match instruction {
            "FROM" => {
                assert!(!rest.contains(":latest"), "unpinned base image: {line}");
                stage = rest.split(" AS ").nth(1).unwrap_or_default().to_owned();
            }
            "USER" => {
                stage_user.insert(stage.clone(), rest.to_owned());
            }
            "ARG" if rest.starts_with("HELM_VERSION=") => {
                let version = rest.trim_start_matches("HELM_VERSION=");
                assert!(
                    version.split('.').count() == 3
                        && version.split('.').all(|p| p.parse::<u32>().is_ok()),
                    "helm must be pinned to an exact version, got {version}"
                );
            }
            _ => {}
        }
    }
    for target in ["producer", "worker"] {
        assert_eq!(
            stage_user.get(target).map(String::as_str),
            Some("65532:65532"),
            "{target}"
        );
    }
    assert!(
        text.contains("COPY --from=helm /usr/bin/helm"),
        "the worker image needs helm"
    );
}

/// Runs `nats-server -t` on `config` (next to the account config it may include) with the
/// environment the deployment gives it, and fails with the server's words if it is refused.
fn assert_server_accepts(config: &str, env: &[(&str, &str)]) {
    let Some(server) = helmq_tests::default_binary() else {
        panic!("no nats-server: run `just setup`");
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        path("deploy/nats/helmq-accounts.conf"),
        dir.path().join("helmq-accounts.conf"),
    )
    .unwrap();
    let conf = dir.path().join("server.conf");
    std::fs::write(&conf, config).unwrap();
    let out = Command::new(server)
        .args(["-t", "-c"])
        .arg(&conf)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("is valid"), "{text}");
}

const ACCOUNT_PASSWORDS: [&str; 5] = [
    "HELMQ_ADMIN_PASSWORD",
    "HELMQ_PRODUCER_PASSWORD",
    "HELMQ_WORKER_PASSWORD",
    "HELMQ_ORCHESTRATOR_PASSWORD",
    "HELMQ_ORCHESTRATOR_TEAM_A_PASSWORD",
];

#[test]
fn a_real_nats_server_accepts_the_account_config() {
    let dir = tempfile::tempdir().unwrap();
    let env: Vec<(&str, &str)> = ACCOUNT_PASSWORDS.iter().map(|v| (*v, "x")).collect();
    assert_server_accepts(
        &format!(
            "listen: 127.0.0.1:-1\njetstream {{ store_dir: {:?} }}\ninclude helmq-accounts.conf\n",
            dir.path().join("js")
        ),
        &env,
    );
}

#[test]
fn the_nats_cluster_example_routes_its_three_pods_and_a_real_server_accepts_its_config() {
    let rel = "deploy/nats/cluster.yaml";
    let config = one(rel, "ConfigMap")["data"]["nats.conf"]
        .as_str()
        .unwrap()
        .to_owned();
    // What docs/RELIABILITY.md recommends: fsync before every acknowledgement.
    assert!(
        config.contains("sync_interval: always"),
        "{rel}: no sync_interval: always"
    );
    let set = one(rel, "StatefulSet");
    let replicas = set["spec"]["replicas"].as_u64().unwrap();
    assert_eq!(replicas, 3);
    let headless = set["spec"]["serviceName"].as_str().unwrap();
    let service = docs(rel)
        .into_iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == headless)
        .unwrap_or_else(|| panic!("{rel}: no Service {headless}"));
    assert_eq!(service["spec"]["clusterIP"], "None");
    let name = set["metadata"]["name"].as_str().unwrap();
    let namespace = set["metadata"]["namespace"].as_str().unwrap();
    for i in 0..replicas {
        let route = format!("nats://{name}-{i}.{headless}.{namespace}.svc:6222");
        assert!(config.contains(&route), "{rel}: no route {route}");
    }
    // Every variable the config and the account file use is set by the pod.
    let container = &set["spec"]["template"]["spec"]["containers"][0];
    let names: Vec<&str> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for var in ACCOUNT_PASSWORDS.iter().chain(&["POD_NAME"]) {
        assert!(names.contains(var), "{rel}: the pod does not set {var}");
    }
    let env: Vec<(&str, &str)> = names.iter().map(|v| (*v, "nats-0")).collect();
    assert_server_accepts(&config, &env);
}

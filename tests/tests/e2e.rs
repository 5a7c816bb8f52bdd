//! End-to-end suite against a real cluster and a real `helm` (Helm 3.14+ or 4). Gated by
//! `HELMQ_E2E=1` (skipped visibly otherwise: `just e2e` shows the message). Uses `KUBECONFIG`
//! and `HELM_BIN` (default `helm`); packages the charts in `tests/fixtures/charts/`, serves them
//! as a chart repository over HTTP on 127.0.0.1, starts NATS and the binaries as `just up` does,
//! and drives real Components: claim → Ready → values upgrade → delete, an invalid config, a
//! missing chart version. `HELMQ_E2E_SCALE=N` adds a scale run: N small Components (no pods),
//! the time until all are Ready and the peak RSS of each process.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use helmq_schemas::component::HELM_FINALIZER;
use helmq_schemas::{Component, ComponentSpec, Phase};
use helmq_tests::{NatsServer, e2e_gate, workspace_root};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

const CLAIM_WITHIN: Duration = Duration::from_secs(10);
const READY_WITHIN: Duration = Duration::from_secs(180);

/// Everything one run started; dropping it kills the processes.
struct Stack {
    _nats: NatsServer,
    nats_url: String,
    processes: Vec<(String, Child)>,
    _repo_dir: tempfile::TempDir,
    repo_url: String,
    helm: String,
    namespace: String,
    client: kube::Client,
}

fn binary(name: &str) -> PathBuf {
    // target/<profile>/deps/e2e-<hash> → target/<profile>/<name>
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --bins`; `just e2e` does)",
        path.display()
    );
    path
}

async fn run_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Packages the fixture chart at two versions and serves the repository on 127.0.0.1.
async fn chart_repository(helm: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let chart = workspace_root().join("tests/fixtures/charts/hello");
    for version in ["0.1.0", "0.2.0"] {
        run_ok(
            helm,
            &[
                "package",
                chart.to_str().unwrap(),
                "--version",
                version,
                "-d",
                dir.path().to_str().unwrap(),
            ],
        )
        .await;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    run_ok(
        helm,
        &["repo", "index", dir.path().to_str().unwrap(), "--url", &url],
    )
    .await;
    let app = axum::Router::new().fallback_service(tower_http::services::ServeDir::new(dir.path()));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (dir, url)
}

impl Stack {
    async fn start(workers: usize) -> Stack {
        let helm = std::env::var("HELM_BIN").unwrap_or_else(|_| "helm".into());
        let version = run_ok(&helm, &["version", "--short"]).await;
        eprintln!("e2e: helm {}", version.trim());
        let client = kube::Client::try_default()
            .await
            .expect("a cluster from KUBECONFIG");
        let (repo_dir, repo_url) = chart_repository(&helm).await;
        let nats = NatsServer::start();
        let nats_url = nats.url().to_owned();

        let ctl = binary("helmqctl");
        run_ok(ctl.to_str().unwrap(), &["preflight", "--install-crd"]).await;
        run_ok(ctl.to_str().unwrap(), &["--nats-url", &nats_url, "setup"]).await;

        let namespace = format!("helmq-e2e-{}", std::process::id());
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap(),
            )
            .await
            .expect("create the test namespace");

        let mut processes = Vec::new();
        let producer = Command::new(binary("helmq-producer"))
            .args(["--nats-url", &nats_url, "--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start helmq-producer");
        processes.push(("helmq-producer".to_owned(), producer));
        for i in 1..=workers {
            let worker = Command::new(binary("helmq-worker"))
                .args([
                    "--nats-url",
                    &nats_url,
                    "--listen",
                    "127.0.0.1:0",
                    "--helm-bin",
                    &helm,
                    "--worker-id",
                    &format!("e2e-{i}"),
                ])
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("start helmq-worker");
            processes.push((format!("helmq-worker-{i}"), worker));
        }
        Stack {
            _nats: nats,
            nats_url,
            processes,
            _repo_dir: repo_dir,
            repo_url,
            helm,
            namespace,
            client,
        }
    }

    fn components(&self) -> Api<Component> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn config(&self, release: &str, version: &str, greeting: &str) -> Value {
        json!({
            "releaseName": release,
            "releaseNamespace": self.namespace,
            "manageNamespace": false,
            "source": {
                "type": "http",
                "repository": {"url": self.repo_url, "name": "e2e"},
                "chart": {"name": "hello", "version": version}
            },
            "values": {"greeting": greeting, "nested": {"list": [1, 2, 3], "map": {"a": "b"}}}
        })
    }

    async fn create(&self, name: &str, config: Value) {
        let mut component = Component::new(
            name,
            ComponentSpec {
                name: name.into(),
                handler: "helm".into(),
                config: Some(config),
                deployment_timeout: Some("2m".into()),
                termination_timeout: Some("2m".into()),
            },
        );
        component.metadata.namespace = Some(self.namespace.clone());
        self.components()
            .create(&PostParams::default(), &component)
            .await
            .expect("create Component");
    }

    /// Polls until `check` accepts the Component (or it is gone, given `None`).
    async fn wait_for(
        &self,
        name: &str,
        within: Duration,
        what: &str,
        check: impl Fn(Option<&Component>) -> bool,
    ) -> Option<Component> {
        let deadline = Instant::now() + within;
        loop {
            let current = self
                .components()
                .get_opt(name)
                .await
                .expect("get Component");
            if check(current.as_ref()) {
                return current;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: not {what} within {within:?}; last seen: {:#?}",
                current.map(|c| c.status)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn stop(mut self) -> Vec<(String, u64)> {
        let mut peaks = Vec::new();
        for (name, child) in &mut self.processes {
            if let Some(pid) = child.id() {
                peaks.push((name.clone(), peak_rss_kib(pid)));
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(70), child.wait()).await;
        }
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = namespaces
            .delete(&self.namespace, &DeleteParams::default())
            .await;
        peaks
    }
}

fn phase(c: Option<&Component>) -> Option<Phase> {
    c.and_then(|c| c.status.as_ref()).and_then(|s| s.phase)
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn components_deploy_upgrade_fail_and_delete_on_a_real_cluster() {
    if let Err(skip) = e2e_gate() {
        eprintln!("{skip}");
        return;
    }
    let stack = Stack::start(2).await;
    let api = stack.components();
    let ns = stack.namespace.clone();

    // Claim within 10 s, then Ready with the release record.
    stack
        .create("hello", stack.config("hello", "0.1.0", "hi"))
        .await;
    stack
        .wait_for("hello", CLAIM_WITHIN, "claimed", |c| {
            c.is_some_and(|c| {
                c.metadata
                    .finalizers
                    .iter()
                    .flatten()
                    .any(|f| f == HELM_FINALIZER)
            })
        })
        .await;
    let ready = stack
        .wait_for("hello", READY_WITHIN, "Ready", |c| {
            phase(c) == Some(Phase::Ready)
        })
        .await
        .unwrap();
    let status = ready.status.unwrap();
    assert_eq!(status.observed_generation, ready.metadata.generation);
    let record = status.handler_status.unwrap();
    assert_eq!(record.release_name.as_deref(), Some("hello"));
    assert_eq!(record.release_namespace.as_deref(), Some(ns.as_str()));
    assert_eq!(record.revision, Some(1));
    assert_eq!(record.chart_version.as_deref(), Some("0.1.0"));
    let configmaps: Api<ConfigMap> = Api::namespaced(stack.client.clone(), &ns);
    let cm = configmaps
        .get("hello-hello")
        .await
        .expect("the chart's ConfigMap");
    assert_eq!(cm.data.unwrap()["greeting"], "hi");

    // Values and version upgrade → new revision → Ready at the new generation.
    let mut config = stack.config("hello", "0.2.0", "hello again");
    config["values"]["replicaCount"] = json!(2);
    api.patch(
        "hello",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"config": config}})),
    )
    .await
    .unwrap();
    let upgraded = stack
        .wait_for("hello", READY_WITHIN, "Ready at generation 2", |c| {
            c.and_then(|c| c.status.as_ref())
                .is_some_and(|s| s.phase == Some(Phase::Ready) && s.observed_generation == Some(2))
        })
        .await
        .unwrap();
    let record = upgraded.status.unwrap().handler_status.unwrap();
    assert_eq!(record.revision, Some(2));
    assert_eq!(record.chart_version.as_deref(), Some("0.2.0"));
    let cm = configmaps.get("hello-hello").await.unwrap();
    assert_eq!(cm.data.unwrap()["greeting"], "hello again");

    // Delete → Terminated → finalizer removed → Component and release gone.
    api.delete("hello", &DeleteParams::default()).await.unwrap();
    stack
        .wait_for("hello", READY_WITHIN, "deleted", |c| c.is_none())
        .await;
    let status = Command::new(&stack.helm)
        .args(["status", "hello", "-n", &ns])
        .output()
        .await
        .unwrap();
    assert!(
        !status.status.success(),
        "release still present after delete"
    );
    assert!(configmaps.get_opt("hello-hello").await.unwrap().is_none());

    // Invalid config → claimed, then Failed with the parser's message.
    let mut invalid = stack.config("broken", "0.1.0", "x");
    invalid.as_object_mut().unwrap().remove("releaseName");
    stack.create("broken", invalid).await;
    let failed = stack
        .wait_for("broken", READY_WITHIN, "Failed", |c| {
            phase(c) == Some(Phase::Failed)
        })
        .await
        .unwrap();
    let message = failed.status.unwrap().message.unwrap_or_default();
    assert!(message.contains("releaseName is required"), "{message}");

    // A chart version that does not exist → Failed, and a dead letter.
    stack
        .create("missing", stack.config("missing", "9.9.9", "x"))
        .await;
    let failed = stack
        .wait_for("missing", READY_WITHIN, "Failed", |c| {
            phase(c) == Some(Phase::Failed)
        })
        .await
        .unwrap();
    let message = failed.status.unwrap().message.unwrap_or_default();
    assert!(message.contains("9.9.9"), "{message}");
    let nats = async_nats::connect(&stack.nats_url).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let mut dlq = js.get_stream("HELMQ_DLQ").await.unwrap();
    assert!(
        dlq.info().await.unwrap().state.messages >= 1,
        "no dead letter"
    );

    for name in ["broken", "missing"] {
        api.delete(name, &DeleteParams::default()).await.unwrap();
        stack
            .wait_for(name, READY_WITHIN, "deleted", |c| c.is_none())
            .await;
    }
    stack.stop().await;
}

#[tokio::test]
async fn scale_many_small_components() {
    if let Err(skip) = e2e_gate() {
        eprintln!("{skip}");
        return;
    }
    let Some(count) = std::env::var("HELMQ_E2E_SCALE")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
    else {
        eprintln!("SKIPPED: set HELMQ_E2E_SCALE=N to create N Components and time them");
        return;
    };
    let stack = Stack::start(2).await;
    let api = stack.components();
    let started = Instant::now();
    for i in 0..count {
        let name = format!("scale-{i}");
        stack
            .create(&name, stack.config(&name, "0.1.0", "scale"))
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(60 + count as u64);
    loop {
        let list = api.list(&Default::default()).await.unwrap();
        let ready = list
            .items
            .iter()
            .filter(|c| phase(Some(c)) == Some(Phase::Ready))
            .count();
        if ready == count {
            break;
        }
        assert!(Instant::now() < deadline, "only {ready} of {count} Ready");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let elapsed = started.elapsed();
    for i in 0..count {
        let _ = api
            .delete(&format!("scale-{i}"), &DeleteParams::default())
            .await;
    }
    // The workers uninstall and the writer removes the finalizers: wait, then stop.
    let deadline = Instant::now() + Duration::from_secs(60 + count as u64);
    while !api
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .is_empty()
    {
        assert!(Instant::now() < deadline, "Components left after delete");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let peaks = stack.stop().await;
    println!(
        "e2e scale: {count} Components Ready in {:.1}s",
        elapsed.as_secs_f64()
    );
    for (name, kib) in peaks {
        println!("e2e scale: peak RSS {name} {:.1} MiB", kib as f64 / 1024.0);
    }
}

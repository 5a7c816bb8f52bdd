//! The Helm chart of helmq (`deploy/chart/helmq`) installs on a real cluster with a real helm:
//! for each RBAC profile, `helm install --wait` succeeds, the setup Job (a pre-install hook)
//! completes, the producer and worker Deployments become Available, the workers carry the
//! allowlists of the values, and the ServiceAccounts get what the profile grants and no more
//! (SubjectAccessReviews for each account); `helm upgrade` runs the setup hook again and rolls
//! the workers out with the new value; `helm uninstall` removes it all, cluster-wide RBAC
//! included.
//!
//! The CRD stays out (`crds.install=false`): every case installs it with `helmqctl preflight`,
//! and a CRD another case created cannot be adopted by a release. On the rig no container runs
//! (its pod simulator makes pods Ready), so the images need not exist.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use crate::support::{GONE_WITHIN, gate, run_ok};
use helmq_tests::wait::eventually;
use helmq_tests::workspace_root;

/// How long the Deployments may take to become Available after `helm install --wait`.
const AVAILABLE_WITHIN: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Profile {
    Cluster,
    Namespaced,
}

/// Whether the API server's authorizer lets ServiceAccount `namespace/account` do `verb` on
/// `resource` (`resource.group`, optionally `/subresource`) in `in_ns` (`""`: all namespaces),
/// asked with a SubjectAccessReview.
async fn can_i(
    client: &kube::Client,
    account: &str,
    namespace: &str,
    verb: &str,
    resource: &str,
    in_ns: &str,
) -> bool {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    let (resource, group) = resource.split_once('.').unwrap_or((resource, ""));
    let review: SubjectAccessReview = serde_json::from_value(json!({
        "spec": {
            "user": format!("system:serviceaccount:{namespace}:{account}"),
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{namespace}"),
                       "system:authenticated"],
            "resourceAttributes": {"verb": verb, "group": group, "resource": resource,
                                   "subresource": subresource, "namespace": in_ns},
        }
    }))
    .expect("a SubjectAccessReview");
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    let answer = reviews
        .create(&PostParams::default(), &review)
        .await
        .expect("create a SubjectAccessReview");
    answer.status.is_some_and(|s| s.allowed)
}

async fn available(deployments: &Api<Deployment>, name: &str) -> Result<i32, String> {
    let d = deployments
        .get_opt(name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no Deployment {name}"))?;
    let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = d.status.unwrap_or_default();
    let condition = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .any(|c| c.type_ == "Available" && c.status == "True");
    let ready = status.available_replicas.unwrap_or(0);
    if condition && ready == wanted {
        Ok(ready)
    } else {
        Err(format!(
            "{name}: Available={condition}, {ready}/{wanted} available"
        ))
    }
}

async fn install_and_check(profile: Profile) {
    let helm = std::env::var("HELM_BIN").unwrap_or_else(|_| "helm".into());
    let client = kube::Client::try_default()
        .await
        .expect("a cluster from KUBECONFIG");
    let tag = match profile {
        Profile::Cluster => "cl",
        Profile::Namespaced => "ns",
    };
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() % 0x10000)
        .unwrap_or_default();
    let namespace = format!("e2e-chart-{tag}-{}-{nonce:04x}", std::process::id());
    // Release names without "helmq" give objects named "<release>-helmq-<role>".
    let release = format!("hq{tag}{}{nonce:04x}", std::process::id());
    let fullname = format!("{release}-helmq");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": namespace,
                "labels": {"app.kubernetes.io/created-by": "helmq-e2e"}}}))
            .expect("namespace"),
        )
        .await
        .expect("create the namespace");
    // The NATS passwords the chart expects in an existing Secret.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "helmq-nats"},
                "stringData": {"admin-password": "a", "producer-password": "p",
                               "worker-password": "w"}}))
            .expect("secret"),
        )
        .await
        .expect("create the NATS Secret");

    let dir = tempfile::tempdir().expect("temp dir");
    let values = dir.path().join("values.yaml");
    let mut values_json = json!({
        "crds": {"install": false},
        "nats": {"url": "nats://nats.nats.svc:4222"},
        "producer": {"replicas": 2},
        "worker": {
            "replicas": 2,
            "allowedSources": ["http://127.0.0.1:8879"],
            "allowedNamespaces": [namespace],
        },
    });
    if profile == Profile::Namespaced {
        values_json["rbac"] = json!({"profile": "namespaced"});
        values_json["producer"]["watchNamespaces"] = json!([namespace]);
    }
    std::fs::write(&values, serde_json::to_string_pretty(&values_json).unwrap())
        .expect("write values");
    let chart = workspace_root().join("deploy/chart/helmq");
    let out = run_ok(
        &helm,
        &[
            "install",
            &release,
            chart.to_str().expect("utf-8 path"),
            "-n",
            &namespace,
            "-f",
            values.to_str().expect("utf-8 path"),
            "--wait",
            "--timeout",
            "3m",
        ],
    )
    .await;
    eprintln!(
        "chart[{tag}]: helm install {release}: {}",
        out.lines().next().unwrap_or("")
    );

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    for role in ["producer", "worker"] {
        let name = format!("{fullname}-{role}");
        let ready = eventually(AVAILABLE_WITHIN, &format!("{name} Available"), async || {
            available(&deployments, &name).await
        })
        .await;
        eprintln!("chart[{tag}]: Deployment {name} Available with {ready} replicas");
    }
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let setup = jobs
        .get(&format!("{fullname}-setup"))
        .await
        .expect("the setup Job (a hook) is kept until the next one");
    assert_eq!(
        setup.status.and_then(|s| s.succeeded),
        Some(1),
        "the setup Job completed"
    );
    let worker = deployments
        .get(&format!("{fullname}-worker"))
        .await
        .expect("worker Deployment");
    let env = worker.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap_or_default();
    let value = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(
        value("HELMQ_ALLOWED_SOURCES").as_deref(),
        Some("http://127.0.0.1:8879")
    );
    assert_eq!(
        value("HELMQ_ALLOWED_NAMESPACES").as_deref(),
        Some(namespace.as_str())
    );

    // What the ServiceAccounts may do, asked of the API server's authorizer: (account, verb,
    // resource, namespace ("": all), allowed).
    let producer = format!("{fullname}-producer");
    let worker = format!("{fullname}-worker");
    let components = "components.deployment-orchestrator.io";
    let cluster_wide = profile == Profile::Cluster;
    let ns = namespace.as_str();
    let table = [
        (&producer, "watch", components, ns, true),
        (
            &producer,
            "patch",
            "components.deployment-orchestrator.io/status",
            ns,
            true,
        ),
        (&producer, "create", "events.events.k8s.io", ns, true),
        (&producer, "update", "leases.coordination.k8s.io", ns, true),
        (&producer, "delete", components, ns, false),
        (&producer, "get", "secrets", ns, false),
        // Cluster-wide only in the cluster profile.
        (&producer, "watch", components, "", cluster_wide),
        (&worker, "create", "deployments.apps", ns, true),
        (
            &worker,
            "create",
            "deployments.apps",
            "default",
            cluster_wide,
        ),
    ];
    for (account, verb, resource, in_ns, allowed) in table {
        assert_eq!(
            can_i(&client, account, ns, verb, resource, in_ns).await,
            allowed,
            "{account} {verb} {resource} in {in_ns:?}"
        );
    }
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    assert_eq!(
        cluster_roles
            .get_opt(&producer)
            .await
            .expect("read ClusterRoles")
            .is_some(),
        cluster_wide
    );

    // An upgrade runs the setup hook again (the previous Job is replaced) and rolls the workers
    // out with the new value.
    let setup_uid = |job: Job| job.metadata.uid.expect("a Job uid");
    let first_setup = setup_uid(
        jobs.get(&format!("{fullname}-setup"))
            .await
            .expect("setup Job"),
    );
    run_ok(
        &helm,
        &[
            "upgrade",
            &release,
            chart.to_str().expect("utf-8 path"),
            "-n",
            &namespace,
            "-f",
            values.to_str().expect("utf-8 path"),
            "--set",
            "worker.concurrency=8",
            "--wait",
            "--timeout",
            "3m",
        ],
    )
    .await;
    let setup = jobs
        .get(&format!("{fullname}-setup"))
        .await
        .expect("the setup Job of the upgrade");
    assert_eq!(setup.status.clone().and_then(|s| s.succeeded), Some(1));
    assert_ne!(
        setup_uid(setup),
        first_setup,
        "the upgrade ran a new setup Job"
    );
    let name = format!("{fullname}-worker");
    eventually(
        AVAILABLE_WITHIN,
        &format!("{name} rolled out"),
        async || {
            let d = deployments.get(&name).await.map_err(|e| e.to_string())?;
            let status = d.status.clone().unwrap_or_default();
            let env = d.spec.unwrap().template.spec.unwrap().containers[0]
                .env
                .clone()
                .unwrap_or_default();
            let concurrency = env
                .iter()
                .find(|e| e.name == "HELMQ_CONCURRENCY")
                .and_then(|e| e.value.clone());
            let current = status.updated_replicas == status.replicas
                && status.observed_generation == d.metadata.generation;
            if concurrency.as_deref() == Some("8") && current {
                available(&deployments, &name).await.map(|_| ())
            } else {
                Err(format!(
                    "concurrency {concurrency:?}, rolled out: {current}"
                ))
            }
        },
    )
    .await;

    run_ok(&helm, &["uninstall", &release, "-n", &namespace, "--wait"]).await;
    for role in ["producer", "worker"] {
        let name = format!("{fullname}-{role}");
        eventually(GONE_WITHIN, &format!("{name} deleted"), async || {
            deployments.get_opt(&name).await.ok().flatten().is_none()
        })
        .await;
    }
    assert!(
        cluster_roles
            .get_opt(&producer)
            .await
            .expect("read ClusterRoles")
            .is_none(),
        "helm uninstall removed the ClusterRole"
    );
    namespaces
        .delete(&namespace, &DeleteParams::default())
        .await
        .expect("delete the namespace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a cluster and helm (HELMQ_E2E=1, just e2e)"]
async fn the_chart_installs_with_the_cluster_profile() {
    gate!();
    install_and_check(Profile::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a cluster and helm (HELMQ_E2E=1, just e2e)"]
async fn the_chart_installs_with_the_namespaced_profile() {
    gate!();
    install_and_check(Profile::Namespaced).await;
}

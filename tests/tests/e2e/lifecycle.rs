//! The Component lifecycle users see: claim, `Ready` with the release record, a values or chart
//! upgrade to a new revision, delete (release, objects and a managed namespace gone), and the
//! configs that fail at once (invalid config, missing chart version).

use helmq_schemas::Phase;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::{Api, ListParams};
use serde_json::json;

use crate::support::{CLAIM_WITHIN, Options, READY_WITHIN, Stack, claimed, gate, phase};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a cluster and helm; `just e2e` runs it (with HELMQ_E2E=1)"]
async fn components_deploy_upgrade_fail_and_delete_on_a_real_cluster() {
    gate!();
    let stack = Stack::start("hello").await;
    let ns = stack.cluster.namespace().to_owned();

    // Claim within 10 s, then Ready with the release record.
    stack
        .cluster
        .create("hello", stack.charts.hello_config("hello", "0.1.0", "hi"))
        .await;
    stack
        .cluster
        .wait_for("hello", CLAIM_WITHIN, "claimed", claimed)
        .await;
    let ready = stack.cluster.wait_phase("hello", Phase::Ready, 1).await;
    let status = ready.status.unwrap();
    let record = status.handler_status.unwrap();
    assert_eq!(record.release_name.as_deref(), Some("hello"));
    assert_eq!(record.release_namespace.as_deref(), Some(ns.as_str()));
    assert_eq!(record.revision, Some(1));
    assert_eq!(record.chart_version.as_deref(), Some("0.1.0"));
    let configmaps: Api<ConfigMap> = Api::namespaced(stack.cluster.client().clone(), &ns);
    let cm = configmaps
        .get("hello-hello")
        .await
        .expect("the chart's ConfigMap");
    assert_eq!(cm.data.unwrap()["greeting"], "hi");

    // Values and version upgrade → new revision → Ready at the new generation.
    let mut config = stack.charts.hello_config("hello", "0.2.0", "hello again");
    config["values"]["replicaCount"] = json!(2);
    stack.cluster.patch_config("hello", config).await;
    let upgraded = stack.cluster.wait_phase("hello", Phase::Ready, 2).await;
    let record = upgraded.status.unwrap().handler_status.unwrap();
    assert_eq!(record.revision, Some(2));
    assert_eq!(record.chart_version.as_deref(), Some("0.2.0"));
    let cm = configmaps.get("hello-hello").await.unwrap();
    assert_eq!(cm.data.unwrap()["greeting"], "hello again");

    // Delete → Terminated → finalizer removed → Component and release gone.
    stack.cluster.delete_and_wait_gone("hello").await;
    assert_eq!(
        stack.cluster.release_status("hello", &ns).await,
        None,
        "release still present after delete"
    );
    assert!(configmaps.get_opt("hello-hello").await.unwrap().is_none());

    // Invalid config → claimed, then Failed with the parser's message.
    let mut invalid = stack.charts.hello_config("broken", "0.1.0", "x");
    invalid.as_object_mut().unwrap().remove("releaseName");
    stack.cluster.create("broken", invalid).await;
    let failed = stack
        .cluster
        .wait_for("broken", READY_WITHIN, "Failed", |c| {
            phase(c) == Some(Phase::Failed)
        })
        .await
        .unwrap();
    assert!(claimed(Some(&failed)), "an invalid config is still claimed");
    let message = failed.status.unwrap().message.unwrap_or_default();
    assert!(message.contains("releaseName is required"), "{message}");

    // A chart version that does not exist → Failed, and a dead letter.
    stack
        .cluster
        .create(
            "missing",
            stack.charts.hello_config("missing", "9.9.9", "x"),
        )
        .await;
    let failed = stack
        .cluster
        .wait_for("missing", READY_WITHIN, "Failed", |c| {
            phase(c) == Some(Phase::Failed)
        })
        .await
        .unwrap();
    let message = failed.status.unwrap().message.unwrap_or_default();
    assert!(message.contains("9.9.9"), "{message}");
    // What happened, then what to do about it.
    assert!(
        message.contains("; next: check spec.config's chart name and version"),
        "{message}"
    );
    eprintln!("e2e[hello]: missing chart version: {message}");
    assert_eq!(stack.queue.dead_letters().await, 1, "one dead letter");

    for name in ["broken", "missing"] {
        stack.cluster.delete_and_wait_gone(name).await;
    }
    stack.stop().await;
}

/// Ready replicas of a Deployment (0 when it is missing or has no status yet).
async fn ready_replicas(deployments: &Api<Deployment>, name: &str) -> i32 {
    deployments
        .get_opt(name)
        .await
        .expect("get Deployment")
        .and_then(|d| d.status)
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a cluster and helm; `just e2e` runs it (with HELMQ_E2E=1)"]
async fn webapp_is_ready_with_its_pods_scales_on_a_values_edit_and_goes_with_its_namespace() {
    gate!();
    let stack = Stack::start_with(Options {
        charts: vec!["webapp"],
        ..Options::new("webapp")
    })
    .await;
    // A namespace nobody has yet: helm creates it and helmq deletes it with the Component.
    let release_ns = format!("{}-app", stack.cluster.namespace());
    let config = |replicas: i64| {
        stack.charts.chart_config(
            "webapp",
            "0.1.0",
            "web",
            &release_ns,
            true,
            json!({"replicaCount": replicas, "greeting": format!("{replicas} replicas")}),
        )
    };
    stack.cluster.create("web", config(2)).await;

    // Ready only once the Deployment's two pods are ready: the first time the Component is
    // seen Ready, both already are.
    let ready = stack.cluster.wait_phase("web", Phase::Ready, 1).await;
    let client = stack.cluster.client().clone();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &release_ns);
    assert_eq!(ready_replicas(&deployments, "web-webapp").await, 2);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &release_ns);
    let ready_pods = pods
        .list(&ListParams::default().labels("app.kubernetes.io/instance=web"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count();
    assert_eq!(ready_pods, 2, "two ready pods");
    let record = ready.status.unwrap().handler_status.unwrap();
    assert_eq!(record.revision, Some(1));
    assert_eq!(
        record.release_namespace.as_deref(),
        Some(release_ns.as_str())
    );
    let services: Api<Service> = Api::namespaced(client.clone(), &release_ns);
    let service = services.get("web-webapp").await.expect("the Service");
    assert_eq!(
        service.spec.and_then(|s| s.type_).as_deref(),
        Some("ClusterIP")
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &release_ns);
    let cm = configmaps.get("web-webapp").await.expect("the ConfigMap");
    assert_eq!(cm.data.unwrap()["replicaCount"], "2");

    // A values edit: revision 2 with three ready replicas.
    stack.cluster.patch_config("web", config(3)).await;
    let upgraded = stack.cluster.wait_phase("web", Phase::Ready, 2).await;
    assert_eq!(
        upgraded.status.unwrap().handler_status.unwrap().revision,
        Some(2)
    );
    let deployment = deployments.get("web-webapp").await.unwrap();
    assert_eq!(deployment.spec.unwrap().replicas, Some(3));
    assert_eq!(ready_replicas(&deployments, "web-webapp").await, 3);
    let cm = configmaps.get("web-webapp").await.unwrap();
    assert_eq!(cm.data.unwrap()["replicaCount"], "3");
    let history = stack
        .cluster
        .helm_json(&["history", "web", "-n", &release_ns])
        .await
        .expect("helm history");
    let last = history.as_array().and_then(|h| h.last()).cloned().unwrap();
    assert_eq!(last["revision"], 2);
    assert_eq!(last["status"], "deployed");

    // Delete: release, objects and the managed namespace go.
    stack.cluster.delete_and_wait_gone("web").await;
    assert_eq!(stack.cluster.release_status("web", &release_ns).await, None);
    // `helm uninstall --wait` removed the objects before the namespace deletion was asked for.
    assert!(
        deployments.get_opt("web-webapp").await.unwrap().is_none()
            && services.get_opt("web-webapp").await.unwrap().is_none()
            && configmaps.get_opt("web-webapp").await.unwrap().is_none(),
        "objects left after delete"
    );
    stack.cluster.wait_namespace_gone(&release_ns).await;
    stack.stop().await;
}

//! The documented examples, as users apply them: the seed's acceptance Component
//! (`deploy/examples/nginx.yaml`, with the chart taken from the local repository instead of the
//! Internet) and the "Try it on the rig" Component (`deploy/examples/webapp.yaml`): deploy →
//! `Ready` → delete → release and managed namespace gone; and the tenant's Component of the
//! multi-tenant profile (`deploy/examples/team-a-webapp.yaml`), released into its own namespace,
//! which outlives it.

use helmq_schemas::{Component, Phase};
use helmq_tests::workspace_root;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::support::{CLAIM_WITHIN, Options, Stack, claimed, gate};

fn example(file: &str) -> Component {
    let path = workspace_root().join("deploy/examples").join(file);
    let text = std::fs::read_to_string(&path).expect("read the example");
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Applies an example Component in the stack's namespace, with its repository the stack's and its
/// release namespace made the case's own (a managed one `<namespace>-<release>`, created by helm
/// and deleted by helmq; otherwise the stack's namespace, as a tenant's), then checks it through
/// deploy, Ready and cleanup.
async fn deploy_and_clean_up(stack: &Stack, mut component: Component, replicas: i32) {
    let name = component.metadata.name.clone().expect("a name");
    let config = component.spec.config.as_mut().expect("a config");
    let release = config["releaseName"]
        .as_str()
        .expect("source form")
        .to_owned();
    let managed = config["manageNamespace"] == true;
    let release_ns = if managed {
        format!("{}-{release}", stack.cluster.namespace())
    } else {
        assert_eq!(
            config["releaseNamespace"],
            component.metadata.namespace.as_deref().unwrap_or_default(),
            "an unmanaged example releases into its own namespace"
        );
        stack.cluster.namespace().to_owned()
    };
    config["releaseNamespace"] = json!(release_ns);
    config["source"]["repository"]["url"] = json!(stack.charts.repo_url());
    component.metadata.namespace = Some(stack.cluster.namespace().to_owned());
    stack
        .cluster
        .components()
        .create(&PostParams::default(), &component)
        .await
        .expect("apply the example");

    stack
        .cluster
        .wait_for(&name, CLAIM_WITHIN, "claimed", claimed)
        .await;
    let ready = stack.cluster.wait_phase(&name, Phase::Ready, 1).await;
    let record = ready.status.unwrap().handler_status.unwrap();
    assert_eq!(record.release_name.as_deref(), Some(release.as_str()));
    assert_eq!(
        record.release_namespace.as_deref(),
        Some(release_ns.as_str())
    );
    assert_eq!(
        stack
            .cluster
            .release_status(&release, &release_ns)
            .await
            .as_deref(),
        Some("deployed")
    );
    let deployments: Api<Deployment> = Api::namespaced(stack.cluster.client().clone(), &release_ns);
    let deployment = deployments
        .get(&format!("{release}-webapp"))
        .await
        .expect("the chart's Deployment");
    assert_eq!(deployment.status.unwrap().ready_replicas, Some(replicas));

    stack.cluster.delete_and_wait_gone(&name).await;
    assert_eq!(
        stack.cluster.release_status(&release, &release_ns).await,
        None
    );
    if managed {
        stack.cluster.wait_namespace_gone(&release_ns).await;
    } else {
        let namespace = Api::<Namespace>::all(stack.cluster.client().clone())
            .get(&release_ns)
            .await
            .expect("the tenant's namespace");
        assert!(
            namespace.metadata.deletion_timestamp.is_none(),
            "a namespace helmq did not create outlives the Component"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a cluster and helm; `just e2e` runs it (with HELMQ_E2E=1)"]
async fn seed_acceptance_nginx_example_with_a_local_chart_deploys_and_cleans_up() {
    gate!();
    let stack = Stack::start_with(Options {
        charts: vec!["webapp"],
        ..Options::new("nginx")
    })
    .await;
    let mut component = example("nginx.yaml");
    // Everything as written (names, timeouts, values: service.type ClusterIP, one replica)
    // but the chart, which comes from the local repository instead of Bitnami's.
    let config = component.spec.config.as_mut().unwrap();
    config["source"]["repository"]["name"] = json!("local");
    config["source"]["chart"] = json!({"name": "webapp", "version": "0.1.0"});
    assert_eq!(config["values"]["replicaCount"], 1);
    deploy_and_clean_up(&stack, component, 1).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a cluster and helm; `just e2e` runs it (with HELMQ_E2E=1)"]
async fn try_it_on_the_rig_webapp_example_deploys_and_cleans_up() {
    gate!();
    let stack = Stack::start_with(Options {
        charts: vec!["webapp"],
        ..Options::new("example")
    })
    .await;
    deploy_and_clean_up(&stack, example("webapp.yaml"), 2).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a cluster and helm; `just e2e` runs it (with HELMQ_E2E=1)"]
async fn a_tenants_webapp_example_deploys_into_its_own_namespace_and_cleans_up() {
    gate!();
    let stack = Stack::start_with(Options {
        charts: vec!["webapp"],
        ..Options::new("team-a")
    })
    .await;
    deploy_and_clean_up(&stack, example("team-a-webapp.yaml"), 2).await;
    stack.stop().await;
}

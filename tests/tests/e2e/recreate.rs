//! A Component deleted and created again under the same name (issue 8): the new object (a new
//! uid) deploys, whether the old one is long gone or its deletion is still running on the
//! cluster when the new one appears.

use std::time::Duration;

use helmq_schemas::Phase;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::support::{Options, Stack, gate, phase};

/// A finalizer of this test's own: a ConfigMap carrying it keeps its namespace `Terminating`.
const HOLD: &str = "e2e.helmq.io/hold";

fn uid(c: &helmq_schemas::Component) -> String {
    c.metadata.uid.clone().expect("a uid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a cluster and helm; `just e2e` runs it (with HELMQ_E2E=1)"]
async fn a_component_deleted_and_created_again_with_the_same_name_deploys() {
    gate!();
    let stack = Stack::start("recreate").await;
    let ns = stack.cluster.namespace().to_owned();

    // The first object reaches generation 2, so its delete job is at generation 2: the new
    // object's generation 1 is lower, which is what used to block it.
    let first = stack
        .cluster
        .create("web", stack.charts.hello_config("web", "0.1.0", "first"))
        .await;
    stack.cluster.wait_phase("web", Phase::Ready, 1).await;
    stack
        .cluster
        .patch_config(
            "web",
            stack.charts.hello_config("web", "0.2.0", "first, upgraded"),
        )
        .await;
    stack.cluster.wait_phase("web", Phase::Ready, 2).await;
    stack.cluster.delete_and_wait_gone("web").await;
    assert_eq!(stack.cluster.release_status("web", &ns).await, None);

    let second = stack
        .cluster
        .create("web", stack.charts.hello_config("web", "0.1.0", "second"))
        .await;
    assert_ne!(uid(&first), uid(&second), "a new object");
    let ready = stack.cluster.wait_phase("web", Phase::Ready, 1).await;
    assert_eq!(uid(&ready), uid(&second));
    let record = ready.status.unwrap().handler_status.unwrap();
    assert_eq!(record.revision, Some(1), "installed afresh");
    assert_eq!(record.chart_version.as_deref(), Some("0.1.0"));
    let configmaps: Api<ConfigMap> = Api::namespaced(stack.cluster.client().clone(), &ns);
    let cm = configmaps
        .get("web-hello")
        .await
        .expect("the chart's ConfigMap");
    assert_eq!(cm.data.unwrap()["greeting"], "second");

    // And once more, to see the cycle repeat.
    stack.cluster.delete_and_wait_gone("web").await;
    stack
        .cluster
        .create("web", stack.charts.hello_config("web", "0.2.0", "third"))
        .await;
    stack.cluster.wait_phase("web", Phase::Ready, 1).await;
    stack.cluster.delete_and_wait_gone("web").await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a cluster and helm; `just e2e` runs it (with HELMQ_E2E=1)"]
async fn a_component_created_again_while_the_old_ones_deletion_still_runs_deploys() {
    gate!();
    // Retries close together, so the new object's attempts against the terminating namespace
    // do not spend its budget while the test holds the namespace.
    let mut options = Options::new("recreate-busy");
    options.worker_args = [
        "--max-attempts",
        "8",
        "--retry-min-delay",
        "1s",
        "--retry-max-delay",
        "3s",
    ]
    .map(String::from)
    .to_vec();
    let stack = Stack::start_with(options).await;
    let release_ns = format!("{}-rel", stack.cluster.namespace());
    let config = |greeting: &str| {
        stack.charts.chart_config(
            "hello",
            "0.1.0",
            "web",
            &release_ns,
            true,
            json!({"greeting": greeting}),
        )
    };

    let first = stack.cluster.create("web", config("first")).await;
    stack.cluster.wait_phase("web", Phase::Ready, 1).await;
    // Something in the release's namespace that takes its time to go: the namespace stays
    // Terminating after the old object is gone, as with slow finalizers on a real cluster.
    let held: Api<ConfigMap> = Api::namespaced(stack.cluster.client().clone(), &release_ns);
    held.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "hold", "finalizers": [HOLD]},
            "data": {"why": "keeps the namespace terminating"}
        }))
        .unwrap(),
    )
    .await
    .expect("create the holding ConfigMap");

    stack.cluster.delete_and_wait_gone("web").await;
    let namespaces: Api<Namespace> = Api::all(stack.cluster.client().clone());
    let terminating = namespaces.get(&release_ns).await.expect("still there");
    assert_eq!(
        terminating.status.and_then(|s| s.phase).as_deref(),
        Some("Terminating"),
        "the old object's namespace deletion is still running"
    );

    // The new object appears while the old deletion runs: it is claimed and tries (Helm cannot
    // write into a terminating namespace), without being superseded or failing for good.
    let second = stack.cluster.create("web", config("second")).await;
    assert_ne!(uid(&first), uid(&second));
    stack
        .cluster
        .wait_for("web", Duration::from_secs(60), "Deploying", |c| {
            phase(c) == Some(Phase::Deploying)
        })
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let meanwhile = stack.cluster.components().get("web").await.unwrap();
    assert_ne!(
        phase(Some(&meanwhile)),
        Some(Phase::Ready),
        "cannot be Ready while its namespace is terminating"
    );

    // The old deletion finishes; the new object deploys into a fresh namespace.
    held.patch(
        "hold",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("release the hold");
    let ready = stack.cluster.wait_phase("web", Phase::Ready, 1).await;
    assert_eq!(uid(&ready), uid(&second));
    assert_eq!(
        ready.status.unwrap().handler_status.unwrap().revision,
        Some(1)
    );
    let cm = held.get("web-hello").await.expect("the chart's ConfigMap");
    assert_eq!(cm.data.unwrap()["greeting"], "second");

    stack.cluster.delete_and_wait_gone("web").await;
    stack.cluster.wait_namespace_gone(&release_ns).await;
    let _ = namespaces
        .delete(&release_ns, &DeleteParams::default())
        .await;
    stack.stop().await;
}

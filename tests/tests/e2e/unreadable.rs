//! One Component nested deeper than a JSON decoder with serde_json's 128-level limit reads
//! (values 200 deep: the API server accepts them under `x-kubernetes-preserve-unknown-fields`),
//! created next to healthy ones: the healthy ones deploy, the deep one is claimed and ends
//! `Failed` saying why, and its deletion still finishes.

use std::time::{Duration, Instant};

use helmq_schemas::Phase;
use kube::api::ListParams;
use serde_json::{Value, json};

use crate::support::{Stack, gate, kubectl, run_ok, spec};

/// `{"a":{"a":...1...}}`, `depth` objects deep.
fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(1), |inner, _| json!({ "a": inner }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a cluster and helm; `just e2e` runs it (with HELMQ_E2E=1)"]
async fn a_component_nested_200_deep_fails_alone_while_the_others_deploy() {
    gate!();
    let stack = Stack::start("deep").await;
    let ns = stack.cluster.namespace().to_owned();
    let kubectl = kubectl();

    // kube's typed client cannot read the object back, so kubectl creates it.
    let mut config = stack.charts.hello_config("deep", "0.1.0", "hi");
    config["values"]["nested"] = nested(200);
    let deep = json!({
        "apiVersion": "deployment-orchestrator.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": "deep", "namespace": ns},
        "spec": spec("deep", config),
    });
    let file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    std::fs::write(file.path(), deep.to_string()).unwrap();
    run_ok(
        &kubectl,
        &["create", "-f", &file.path().display().to_string()],
    )
    .await;
    // The API server took it; a typed list of the namespace (what the producer did before)
    // fails as a whole on it.
    let typed = stack
        .cluster
        .components()
        .list(&ListParams::default())
        .await;
    let Err(kube::Error::SerdeError(error)) = typed else {
        panic!("a typed list read the deep object: {typed:?}");
    };
    eprintln!("e2e[deep]: a typed list fails: {error}");
    for name in ["one", "two"] {
        stack
            .cluster
            .create(name, stack.charts.hello_config(name, "0.1.0", "hi"))
            .await;
    }
    for name in ["one", "two"] {
        stack.cluster.wait_phase(name, Phase::Ready, 1).await;
    }

    let read = |path: &'static str| {
        let (kubectl, ns) = (kubectl.clone(), ns.clone());
        async move {
            run_ok(
                &kubectl,
                &[
                    "get",
                    "component",
                    "deep",
                    "-n",
                    &ns,
                    "-o",
                    &format!("jsonpath={path}"),
                ],
            )
            .await
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while read("{.status.phase}").await != "Failed" {
        assert!(Instant::now() < deadline, "deep: not Failed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let message = read("{.status.message}").await;
    eprintln!("e2e[deep]: Failed: {message}");
    assert!(
        message.contains("cannot be read") && message.contains("recursion limit"),
        "{message}"
    );
    assert_eq!(read("{.status.observedGeneration}").await, "1");
    // The writer records the failure on it as on any Component.
    let note = stack.cluster.wait_event("deep", "Failed").await;
    assert!(note.contains("recursion limit"), "{note}");
    assert_eq!(
        read("{.metadata.finalizers}").await,
        r#"["helm.deployment-orchestrator.io/lifecycle"]"#
    );

    // Deleting it needs no uninstall (nothing was installed): the writer removes the
    // finalizer and the object goes.
    run_ok(
        &kubectl,
        &["delete", "component", "deep", "-n", &ns, "--timeout=60s"],
    )
    .await;
    stack.cluster.delete_and_wait_gone("one").await;
    stack.stop().await;
}

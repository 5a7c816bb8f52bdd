//! Day-2 control on a real cluster: a suspended Component ignores a spec change until it is
//! resumed (with `helmqctl suspend|resume`), deleting a suspended Component still uninstalls,
//! and a reconcile request (`helmqctl reconcile`) puts back an object of the release that was
//! deleted by hand, with no spec change.

use std::time::Duration;

use helmq_schemas::Phase;
use helmq_schemas::component::{Component, SUSPENDED_CONDITION};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams};
use tokio::process::Command;

use crate::support::{READY_WITHIN, Stack, binary, gate};

/// Runs `helmqctl <request> <namespace>/<name>` with the test's kubeconfig.
async fn helmqctl(request: &str, stack: &Stack, name: &str) {
    let target = format!("{}/{name}", stack.cluster.namespace());
    let out = Command::new(binary("helmqctl"))
        .args([request, &target])
        .output()
        .await
        .expect("run helmqctl");
    assert!(
        out.status.success(),
        "helmqctl {request} {target}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn suspended(c: Option<&Component>) -> Option<&str> {
    let conditions = &c?.status.as_ref()?.conditions;
    let condition = conditions.iter().find(|c| c.type_ == SUSPENDED_CONDITION)?;
    Some(condition.status.as_str())
}

async fn greeting(configmaps: &Api<ConfigMap>, name: &str) -> Option<String> {
    let cm = configmaps.get_opt(name).await.expect("get ConfigMap")?;
    cm.data?.get("greeting").cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a cluster and helm; `just e2e` runs it (with HELMQ_E2E=1)"]
async fn a_suspended_component_ignores_a_spec_change_until_resumed() {
    gate!();
    let stack = Stack::start("suspend").await;
    let ns = stack.cluster.namespace().to_owned();
    let configmaps: Api<ConfigMap> = Api::namespaced(stack.cluster.client().clone(), &ns);
    stack
        .cluster
        .create("held", stack.charts.hello_config("held", "0.1.0", "before"))
        .await;
    stack.cluster.wait_phase("held", Phase::Ready, 1).await;

    helmqctl("suspend", &stack, "held").await;
    stack
        .cluster
        .wait_for("held", READY_WITHIN, "Suspended", |c| {
            suspended(c) == Some("True")
        })
        .await;
    stack
        .cluster
        .patch_config("held", stack.charts.hello_config("held", "0.1.0", "after"))
        .await;
    // Long enough for a claim, a job and a Helm run on the rig (a deploy takes 2-5 s).
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(
        greeting(&configmaps, "held-hello").await.as_deref(),
        Some("before"),
        "a suspended Component's spec change reached the release"
    );
    let held = stack.cluster.components().get("held").await.unwrap();
    let status = held.status.unwrap();
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.handler_status.unwrap().revision, Some(1));

    helmqctl("resume", &stack, "held").await;
    let resumed = stack.cluster.wait_phase("held", Phase::Ready, 2).await;
    assert_eq!(suspended(Some(&resumed)), Some("False"));
    assert_eq!(
        greeting(&configmaps, "held-hello").await.as_deref(),
        Some("after")
    );

    // Deleting a suspended Component uninstalls its release all the same.
    helmqctl("suspend", &stack, "held").await;
    stack
        .cluster
        .wait_for("held", READY_WITHIN, "Suspended", |c| {
            suspended(c) == Some("True")
        })
        .await;
    stack.cluster.delete_and_wait_gone("held").await;
    assert_eq!(stack.cluster.release_status("held", &ns).await, None);
    assert!(greeting(&configmaps, "held-hello").await.is_none());
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a cluster and helm; `just e2e` runs it (with HELMQ_E2E=1)"]
async fn a_reconcile_request_puts_back_an_object_deleted_by_hand() {
    gate!();
    let stack = Stack::start("reconcile").await;
    let ns = stack.cluster.namespace().to_owned();
    let configmaps: Api<ConfigMap> = Api::namespaced(stack.cluster.client().clone(), &ns);
    stack
        .cluster
        .create("kept", stack.charts.hello_config("kept", "0.1.0", "hi"))
        .await;
    stack.cluster.wait_phase("kept", Phase::Ready, 1).await;
    configmaps
        .delete("kept-hello", &DeleteParams::default())
        .await
        .expect("delete the release's ConfigMap by hand");
    assert!(greeting(&configmaps, "kept-hello").await.is_none());

    helmqctl("reconcile", &stack, "kept").await;
    let requested = stack
        .cluster
        .components()
        .get("kept")
        .await
        .unwrap()
        .metadata
        .annotations
        .unwrap_or_default()
        .get(helmq_schemas::component::REQUESTED_AT_ANNOTATION)
        .cloned()
        .expect("helmqctl reconcile sets the annotation");
    let handled = stack
        .cluster
        .wait_for("kept", READY_WITHIN, "the request handled and Ready", |c| {
            let Some(status) = c.and_then(|c| c.status.as_ref()) else {
                return false;
            };
            let record = status.handler_status.clone().unwrap_or_default();
            status.phase == Some(Phase::Ready)
                && record.last_handled_reconcile_at.as_deref() == Some(requested.as_str())
                && record.observed_refresh == Some(1)
        })
        .await
        .unwrap();
    assert_eq!(handled.status.unwrap().observed_generation, Some(1));
    assert_eq!(
        greeting(&configmaps, "kept-hello").await.as_deref(),
        Some("hi"),
        "the ConfigMap deleted by hand is back"
    );
    let history = stack
        .cluster
        .helm_json(&["history", "kept", "-n", &ns])
        .await
        .expect("helm history");
    assert_eq!(history.as_array().map(Vec::len), Some(2), "{history}");
    stack.cluster.delete_and_wait_gone("kept").await;
    stack.stop().await;
}

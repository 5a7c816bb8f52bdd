//! Day-2 configs against a real helm: `config.remediation` rolls a failed upgrade back to the
//! revision deployed before it (Helm's own rollback), and `config.test` runs `helm test` after
//! a deploy: a failing test pod ends the Component `Failed` with Helm's words, and a fix that
//! passes its tests is `Ready` saying so.

use std::time::Duration;

use helmq_schemas::Phase;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use serde_json::{Value, json};

use crate::support::{Options, Stack, gate, spec};

/// Helm's wait of the failing upgrade: short, the pods never become ready.
const DEPLOYMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The greeting in the ConfigMap of release `release`'s chart (`<release>-<suffix>`).
async fn greeting(stack: &Stack, name: &str) -> String {
    let configmaps: Api<ConfigMap> =
        Api::namespaced(stack.cluster.client().clone(), stack.cluster.namespace());
    let cm = configmaps.get(name).await.expect("the chart's ConfigMap");
    cm.data.unwrap_or_default()["greeting"].clone()
}

/// `helm history` of `release` in the stack's namespace: `(revision, status, description)`.
async fn history(stack: &Stack, release: &str) -> Vec<(i64, String, String)> {
    let history = stack
        .cluster
        .helm_json(&["history", release, "-n", stack.cluster.namespace()])
        .await
        .expect("helm history");
    history
        .as_array()
        .expect("a list")
        .iter()
        .map(|r| {
            (
                r["revision"].as_i64().unwrap_or_default(),
                r["status"].as_str().unwrap_or_default().to_owned(),
                r["description"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Release `release` of `chart` 0.1.0 into the stack's namespace with `values`, and the
/// top-level config fields of `day2` (`test`, `remediation`).
fn day2_config(stack: &Stack, chart: &str, release: &str, values: Value, day2: Value) -> Value {
    let ns = stack.cluster.namespace();
    let mut config = stack
        .charts
        .chart_config(chart, "0.1.0", release, ns, false, values);
    for (key, value) in day2.as_object().expect("an object") {
        config[key] = value.clone();
    }
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a cluster and helm; `just e2e` runs it (with HELMQ_E2E=1)"]
async fn a_failed_upgrade_with_rollback_leaves_the_previous_revision_deployed() {
    gate!();
    let stack = Stack::start_with(Options {
        workers: 1,
        charts: vec!["webapp"],
        ..Options::new("rollback")
    })
    .await;
    let config = |greeting: &str, never_ready: bool| {
        day2_config(
            &stack,
            "webapp",
            "web",
            json!({"replicaCount": 1, "greeting": greeting, "neverReady": never_ready}),
            json!({"remediation": {"upgrade": {"strategy": "rollback"}}}),
        )
    };
    let mut component = spec("web", config("first", false));
    component.deployment_timeout = Some(format!("{}s", DEPLOYMENT_TIMEOUT.as_secs()));
    stack.cluster.create_spec("web", component).await;
    stack.cluster.wait_phase("web", Phase::Ready, 1).await;

    // Helm's wait runs out and it records revision 2 failed; the worker rolls back to 1.
    stack
        .cluster
        .patch_config("web", config("second", true))
        .await;
    let failed = stack.cluster.wait_phase("web", Phase::Failed, 2).await;
    let status = failed.status.unwrap();
    let message = status.message.unwrap_or_default();
    eprintln!("e2e[rollback]: Failed: {message}");
    assert!(message.starts_with("upgrade failed: "), "{message}");
    assert!(message.contains("; rolled back to revision 1"), "{message}");
    assert_eq!(
        status.handler_status.unwrap().attempts,
        Some(1),
        "remediated failures are not retried by the transient policy"
    );
    let revisions = history(&stack, "web").await;
    eprintln!("e2e[rollback]: history: {revisions:?}");
    let newest = revisions.last().expect("revisions");
    assert_eq!(
        (newest.0, newest.1.as_str(), newest.2.as_str()),
        (3, "deployed", "Rollback to 1"),
        "{revisions:?}"
    );
    assert_eq!(revisions[1].1, "failed", "{revisions:?}");
    assert_eq!(greeting(&stack, "web-webapp").await, "first");
    let note = stack.cluster.wait_event("web", "Failed").await;
    assert!(note.contains("rolled back to revision 1"), "{note}");

    stack.cluster.delete_and_wait_gone("web").await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a cluster and helm; `just e2e` runs it (with HELMQ_E2E=1)"]
async fn a_chart_whose_test_fails_ends_failed_with_the_tests_message() {
    gate!();
    let stack = Stack::start_with(Options {
        workers: 1,
        charts: vec!["testy"],
        ..Options::new("test-fails")
    })
    .await;
    let ns = stack.cluster.namespace().to_owned();
    let config = |exit_code: &str| {
        day2_config(
            &stack,
            "testy",
            "checked",
            json!({"greeting": "hi", "testExitCode": exit_code}),
            json!({"test": {"enable": true, "timeout": "2m"}}),
        )
    };
    stack.cluster.create("checked", config("1")).await;
    let failed = stack.cluster.wait_phase("checked", Phase::Failed, 1).await;
    let status = failed.status.unwrap();
    let message = status.message.unwrap_or_default();
    eprintln!("e2e[test-fails]: Failed: {message}");
    // Helm's own words: `resource Pod/<ns>/checked-test not ready. status: Failed, message: pod
    // checked-test failed` (Helm 4), `pod checked-test failed` (Helm 3).
    assert!(message.starts_with("helm test failed: "), "{message}");
    assert!(message.contains("checked-test"), "{message}");
    assert!(message.contains("failed"), "{message}");
    assert!(message.contains("; next: "), "{message}");
    assert_eq!(
        status.handler_status.unwrap().attempts,
        Some(1),
        "a failed test is permanent"
    );
    // Without remediation the release stays deployed as Helm left it.
    assert_eq!(
        stack
            .cluster
            .release_status("checked", &ns)
            .await
            .as_deref(),
        Some("deployed")
    );

    // The fix passes its tests.
    stack.cluster.patch_config("checked", config("0")).await;
    let ready = stack.cluster.wait_phase("checked", Phase::Ready, 2).await;
    let message = ready.status.unwrap().message.unwrap_or_default();
    assert!(message.ends_with("; tests passed"), "{message}");

    stack.cluster.delete_and_wait_gone("checked").await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a cluster and helm; `just e2e` runs it (with HELMQ_E2E=1)"]
async fn an_upgrade_whose_test_fails_is_rolled_back_to_the_values_that_passed() {
    gate!();
    let stack = Stack::start_with(Options {
        workers: 1,
        charts: vec!["testy"],
        ..Options::new("test-rollback")
    })
    .await;
    let config = |greeting: &str, exit_code: &str| {
        day2_config(
            &stack,
            "testy",
            "tested",
            json!({"greeting": greeting, "testExitCode": exit_code}),
            json!({
                "test": {"enable": true},
                "remediation": {"upgrade": {"retries": 1, "strategy": "rollback"}}
            }),
        )
    };
    stack.cluster.create("tested", config("first", "0")).await;
    let ready = stack.cluster.wait_phase("tested", Phase::Ready, 1).await;
    let message = ready.status.unwrap().message.unwrap_or_default();
    assert!(message.ends_with("; tests passed"), "{message}");

    // Tried twice (one retry), then rolled back to revision 1.
    stack
        .cluster
        .patch_config("tested", config("second", "1"))
        .await;
    let failed = stack.cluster.wait_phase("tested", Phase::Failed, 2).await;
    let message = failed.status.unwrap().message.unwrap_or_default();
    eprintln!("e2e[test-rollback]: Failed: {message}");
    assert!(
        message.starts_with("upgrade failed 2 times: helm test: "),
        "{message}"
    );
    assert!(message.contains("; rolled back to revision 1"), "{message}");
    let revisions = history(&stack, "tested").await;
    let newest = revisions.last().expect("revisions");
    assert_eq!(
        (newest.1.as_str(), newest.2.as_str()),
        ("deployed", "Rollback to 1"),
        "{revisions:?}"
    );
    assert_eq!(revisions.len(), 4, "{revisions:?}");
    assert_eq!(greeting(&stack, "tested-config").await, "first");

    stack.cluster.delete_and_wait_gone("tested").await;
    stack.stop().await;
}

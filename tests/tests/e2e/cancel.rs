//! Graceful cancellation on a real cluster (issue 11 item 7): a Helm run cut short while it
//! waits for pods that never become ready, by a newer generation (supersede) or by a draining
//! worker (SIGTERM, drain deadline passed), gets SIGTERM before SIGKILL; Helm then marks the
//! interrupted revision `failed`, never leaves it `pending-upgrade`, and the next generation
//! deploys with no recovery needed.

use std::time::{Duration, Instant};

use helmq_schemas::Phase;
use serde_json::{Value, json};

use crate::support::{Options, Stack, gate, spec};

/// Longer than the test: the interrupted runs are still waiting when they are cut short.
const DEPLOYMENT_TIMEOUT: &str = "600s";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a cluster and helm; `just e2e` runs it (with HELMQ_E2E=1)"]
async fn a_superseded_or_drained_run_leaves_its_revision_failed_not_pending() {
    gate!();
    let mut stack = Stack::start_with(Options {
        workers: 1,
        worker_args: ["--drain-deadline", "2s", "--helm-grace", "20s"]
            .map(str::to_owned)
            .to_vec(),
        charts: vec!["webapp"],
        ..Options::new("cancel")
    })
    .await;
    let ns = stack.cluster.namespace().to_owned();
    let mut component = spec("cut", webapp(&stack, &ns, false, 1));
    component.deployment_timeout = Some(DEPLOYMENT_TIMEOUT.into());
    stack.cluster.create_spec("cut", component).await;
    stack.cluster.wait_phase("cut", Phase::Ready, 1).await;

    // Supersede: generation 2 never becomes ready; generation 3 arrives while helm waits.
    stack
        .cluster
        .patch_config("cut", webapp(&stack, &ns, true, 1))
        .await;
    let superseded = wait_pending_upgrade(&stack, &ns, 1).await;
    stack
        .cluster
        .patch_config("cut", webapp(&stack, &ns, false, 2))
        .await;
    stack.cluster.wait_phase("cut", Phase::Ready, 3).await;
    let history = revisions(&stack, &ns).await;
    eprintln!("e2e[cancel]: after supersede: {history:?}");
    assert_eq!(
        status_of(&history, superseded),
        Some("failed"),
        "the superseded revision {superseded}: {history:?}"
    );
    assert_eq!(history.last().map(|(_, s)| s.as_str()), Some("deployed"));
    assert!(no_pending(&history), "{history:?}");

    // Drain: generation 4 never becomes ready; the worker is stopped while helm waits, its
    // drain deadline passes and the run is cancelled.
    stack
        .cluster
        .patch_config("cut", webapp(&stack, &ns, true, 1))
        .await;
    let drained = wait_pending_upgrade(&stack, &ns, superseded).await;
    stack.processes.terminate("helmq-worker-1").await;
    let history = revisions(&stack, &ns).await;
    eprintln!("e2e[cancel]: after drain: {history:?}");
    assert_eq!(
        status_of(&history, drained),
        Some("failed"),
        "the drained revision {drained}: {history:?}"
    );
    assert!(no_pending(&history), "{history:?}");

    // A new worker and a fixed generation: deployed, nothing to recover.
    stack.processes.start_worker();
    stack
        .cluster
        .patch_config("cut", webapp(&stack, &ns, false, 1))
        .await;
    let ready = stack.cluster.wait_phase("cut", Phase::Ready, 5).await;
    let message = ready.status.and_then(|s| s.message).unwrap_or_default();
    assert!(!message.contains("recovered"), "{message}");
    let history = revisions(&stack, &ns).await;
    eprintln!("e2e[cancel]: at the end: {history:?}");
    assert_eq!(history.last().map(|(_, s)| s.as_str()), Some("deployed"));
    assert!(no_pending(&history), "{history:?}");

    stack.cluster.delete_and_wait_gone("cut").await;
    stack.stop().await;
}

/// Release `cut` of the webapp chart.
fn webapp(stack: &Stack, ns: &str, never_ready: bool, replicas: u32) -> Value {
    stack.charts.chart_config(
        "webapp",
        "0.1.0",
        "cut",
        ns,
        false,
        json!({"replicaCount": replicas, "neverReady": never_ready}),
    )
}

/// Waits until release `cut` is `pending-upgrade` at a revision above `after` (helm is waiting
/// for its pods) and returns that revision.
async fn wait_pending_upgrade(stack: &Stack, ns: &str, after: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = stack.cluster.helm_json(&["status", "cut", "-n", ns]).await {
            let revision = status["version"].as_i64().unwrap_or_default();
            if status["info"]["status"] == "pending-upgrade" && revision > after {
                // Well inside the wait, not at its start.
                tokio::time::sleep(Duration::from_secs(3)).await;
                return revision;
            }
        }
        assert!(
            Instant::now() < deadline,
            "release cut never went pending-upgrade above revision {after}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `(revision, status)` of release `cut`, oldest first.
async fn revisions(stack: &Stack, ns: &str) -> Vec<(i64, String)> {
    let history = stack
        .cluster
        .helm_json(&["history", "cut", "-n", ns])
        .await
        .expect("helm history");
    history
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r: &Value| {
            (
                r["revision"].as_i64().unwrap_or_default(),
                r["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn status_of(history: &[(i64, String)], revision: i64) -> Option<&str> {
    history
        .iter()
        .find(|(r, _)| *r == revision)
        .map(|(_, s)| s.as_str())
}

fn no_pending(history: &[(i64, String)]) -> bool {
    history.iter().all(|(_, s)| !s.starts_with("pending-"))
}

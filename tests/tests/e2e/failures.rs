//! Failures that take time: a release whose pods never become ready times out in Helm's wait,
//! is retried with the configured backoff, ends `Failed` with Helm's message and one dead
//! letter, and a spec fix deploys it with a fresh attempt budget.

use std::time::Duration;

use helmq_queue::dlq::ATTEMPTS_HEADER;
use helmq_queue::topology::DLQ_STREAM;
use helmq_schemas::Phase;
use helmq_schemas::event::StatusPhase;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use serde_json::json;

use crate::support::{Options, Stack, gate, spec};

const ATTEMPTS: u32 = 3;
const DEPLOYMENT_TIMEOUT: Duration = Duration::from_secs(10);
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a cluster and helm; `just e2e` runs it (with HELMQ_E2E=1)"]
async fn never_ready_pods_time_out_back_off_fail_with_one_dead_letter_then_a_fix_is_ready() {
    gate!();
    let stack = Stack::start_with(Options {
        workers: 1,
        worker_args: [
            "--max-attempts",
            &ATTEMPTS.to_string(),
            "--retry-min-delay",
            "1s",
            "--retry-max-delay",
            "4s",
        ]
        .map(str::to_owned)
        .to_vec(),
        charts: vec!["webapp"],
        ..Options::new("never-ready")
    })
    .await;
    let ns = stack.cluster.namespace().to_owned();
    let config = |never_ready: bool| {
        stack.charts.chart_config(
            "webapp",
            "0.1.0",
            "stuck",
            &ns,
            false,
            json!({"replicaCount": 1, "neverReady": never_ready}),
        )
    };
    let mut component = spec("stuck", config(true));
    component.deployment_timeout = Some(format!("{}s", DEPLOYMENT_TIMEOUT.as_secs()));
    stack.cluster.create_spec("stuck", component).await;

    // Every attempt waits the whole deploymentTimeout, then the budget is spent: Failed with
    // Helm's own words about the wait.
    let failed = stack.cluster.wait_phase("stuck", Phase::Failed, 1).await;
    let status = failed.status.unwrap();
    let message = status.message.unwrap_or_default();
    assert!(message.contains("helm upgrade failed"), "{message}");
    assert!(
        ["not ready", "timed out waiting", "deadline exceeded"]
            .iter()
            .any(|m| message.contains(m)),
        "not Helm's wait timeout: {message}"
    );
    assert!(
        message.contains(&format!("(attempt {ATTEMPTS} of {ATTEMPTS})")),
        "{message}"
    );
    assert_eq!(status.handler_status.unwrap().attempts, Some(ATTEMPTS));
    eprintln!("e2e[never-ready]: Failed: {message}");
    // The next step names the resource that was not ready.
    assert!(
        message.contains(&format!(
            "; next: Deployment {ns}/stuck-webapp did not become ready in time"
        )),
        "{message}"
    );

    // The attempts, from the workers' Deploying events: each starts after the previous one's
    // full wait plus the backoff delay, min × 2^(n-1) up to twice that, capped at max.
    let starts: Vec<_> = stack
        .queue
        .status_events("stuck")
        .await
        .into_iter()
        .filter(|e| e.phase == StatusPhase::Deploying && e.component.generation == 1)
        .map(|e| (e.attempt, e.at))
        .collect();
    assert_eq!(
        starts.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
        (1..=ATTEMPTS).collect::<Vec<_>>(),
        "one start per attempt"
    );
    for pair in starts.windows(2) {
        let (attempt, at) = pair[0];
        let gap = Duration::try_from(pair[1].1.duration_since(at)).expect("events in order");
        let delay = (RETRY_MIN * 2u32.pow(attempt - 1)).min(RETRY_MAX);
        let least = DEPLOYMENT_TIMEOUT + delay;
        let most = DEPLOYMENT_TIMEOUT + (delay * 2).min(RETRY_MAX) + Duration::from_secs(30);
        eprintln!(
            "e2e[never-ready]: attempt {} started {gap:?} after attempt {attempt} (at least {least:?})",
            attempt + 1
        );
        assert!(
            gap >= least && gap <= most,
            "attempt {} started {gap:?} after attempt {attempt}: expected {least:?}..{most:?}",
            attempt + 1
        );
    }

    // Exactly one dead letter, the job with its attempts.
    assert_eq!(stack.queue.dead_letters().await, 1, "one dead letter");
    let js = stack.queue.jetstream().await;
    let mut dlq = js.get_stream(DLQ_STREAM).await.unwrap();
    let first = dlq.info().await.unwrap().state.first_sequence;
    let headers = dlq.get_raw_message(first).await.unwrap().headers;
    assert_eq!(
        headers.get(ATTEMPTS_HEADER).map(|v| v.as_str()),
        Some(ATTEMPTS.to_string().as_str())
    );

    // The spec fix is a new generation with a fresh budget: Ready at its first attempt.
    stack.cluster.patch_config("stuck", config(false)).await;
    let ready = stack.cluster.wait_phase("stuck", Phase::Ready, 2).await;
    assert_eq!(
        ready.status.unwrap().handler_status.unwrap().attempts,
        Some(1)
    );
    let deployments: Api<Deployment> = Api::namespaced(stack.cluster.client().clone(), &ns);
    let deployment = deployments.get("stuck-webapp").await.unwrap();
    assert_eq!(deployment.status.unwrap().ready_replicas, Some(1));
    assert_eq!(
        stack.queue.dead_letters().await,
        1,
        "the fix added no dead letter"
    );

    stack.cluster.delete_and_wait_gone("stuck").await;
    stack.stop().await;
}

//! Two producers with `--leader-elect` on the real `coordination.k8s.io` Lease API: one claim
//! and one job per generation, also when the leader stops and the other takes over.
//!
//! Jobs are counted as they are published, by a plain NATS subscription to `helmq.jobs.>`,
//! which sees every publish, also one JetStream would drop as a duplicate; the stream's last
//! sequence counts the ones it accepted.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use helmq_schemas::Phase;
use helmq_schemas::event::{JobAction, JobEvent};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

use crate::support::{Options, Stack, gate};

const LEASE: &str = "helmq-producer";

/// The Lease's holder, e.g. `e2e-producer-1-<suffix>`.
async fn holder(stack: &Stack) -> Option<String> {
    Api::<Lease>::namespaced(stack.cluster.client().clone(), stack.cluster.namespace())
        .get_opt(LEASE)
        .await
        .expect("read the Lease")
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a cluster and helm; `just e2e` runs it (with HELMQ_E2E=1)"]
async fn two_leader_elected_producers_claim_once_and_publish_one_job_per_generation() {
    gate!();
    let mut stack = Stack::start_with(Options {
        producers: 2,
        producer_args: [
            "--leader-elect",
            "--lease-namespace",
            "{namespace}",
            "--lease-name",
            LEASE,
            "--lease-duration",
            "5s",
        ]
        .map(str::to_owned)
        .to_vec(),
        ..Options::new("leader")
    })
    .await;

    let nats = async_nats::connect(stack.queue.nats_url()).await.unwrap();
    let mut subscription = nats.subscribe("helmq.jobs.>").await.unwrap();
    nats.flush().await.unwrap();
    let jobs: Arc<Mutex<Vec<(JobAction, i64)>>> = Arc::default();
    let seen = jobs.clone();
    tokio::spawn(async move {
        while let Some(message) = subscription.next().await {
            let job: JobEvent = serde_json::from_slice(&message.payload).expect("a job");
            seen.lock()
                .unwrap()
                .push((job.action, job.component.generation));
        }
    });

    // One leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        if let Some(h) = holder(&stack).await {
            break h;
        }
        assert!(Instant::now() < deadline, "no producer took the Lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (leading, following) = if leader.starts_with("e2e-producer-1") {
        ("helmq-producer-1", "e2e-producer-2")
    } else {
        ("helmq-producer-2", "e2e-producer-1")
    };

    stack
        .cluster
        .create("led", stack.charts.hello_config("led", "0.1.0", "one"))
        .await;
    stack.cluster.wait_phase("led", Phase::Ready, 1).await;

    // The leader stops as a rolling update stops it; the other replica takes over.
    stack.processes.terminate(leading).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !holder(&stack)
        .await
        .is_some_and(|h| h.starts_with(following))
    {
        assert!(Instant::now() < deadline, "{following} did not take over");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stack
        .cluster
        .patch_config("led", stack.charts.hello_config("led", "0.1.0", "two"))
        .await;
    stack.cluster.wait_phase("led", Phase::Ready, 2).await;
    stack.cluster.delete_and_wait_gone("led").await;
    nats.flush().await.unwrap();

    let mut published = jobs.lock().unwrap().clone();
    published.sort_by_key(|(action, generation)| (*generation, *action == JobAction::Delete));
    eprintln!("e2e[leader]: jobs published (action, generation): {published:?}");
    let applies: Vec<i64> = published
        .iter()
        .filter(|(a, _)| *a == JobAction::Apply)
        .map(|(_, g)| *g)
        .collect();
    let deletes = published
        .iter()
        .filter(|(a, _)| *a == JobAction::Delete)
        .count();
    assert_eq!(
        applies,
        vec![1, 2],
        "one apply job per generation: {published:?}"
    );
    assert_eq!(deletes, 1, "one delete job: {published:?}");
    assert_eq!(
        stack.queue.jobs_published().await,
        3,
        "jobs JetStream accepted"
    );
    // The watcher writes `Claimed` itself and records its Event: a second claim, by either
    // producer, would be a second Event (they do not share a recorder).
    let claims: i32 = stack
        .cluster
        .events("led")
        .await
        .iter()
        .filter(|e| e.0 == "Claimed")
        .map(|e| e.1)
        .sum();
    assert_eq!(claims, 1, "one claim");
    stack.stop().await;
}

//! Order that survives replays (issue 11): a Component whose job failed at attempt 5 is
//! `Failed`; after `helmqctl dlq replay` the replayed job's events order above the failure and
//! the Component ends `Ready`. Real nats-server, real worker pool and status writer, Helm in
//! memory, Kubernetes as the in-memory API server.

mod common;

use std::time::Duration;

use common::Pipeline;

use clap::Parser as _;
use helmq_producer::store::fake::FakeComponentStore;
use helmq_queue::{JetStreamQueue, JobQueue as _};
use helmq_schemas::HelmConfig;
use helmq_schemas::component::{Component, ComponentSpec, Phase};
use helmq_schemas::event::{ComponentRef, JobAction, JobEvent};
use helmq_worker::driver::memory::Step;
use helmq_worker::{MemoryDriver, Settings};
use serde_json::json;

/// A failure a retry can help with (the API server away), which the worker does not handle
/// itself as it does Helm's "another operation in progress".
const TRANSIENT: &str = "Error: Kubernetes cluster unreachable: Get \"https://10.0.0.1:6443/version\": dial tcp 10.0.0.1:6443: connect: connection refused";

async fn wait_phase(store: &FakeComponentStore, phase: Phase) -> Component {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(c) = store.snapshot("default", "web")
            && c.status.as_ref().and_then(|s| s.phase) == Some(phase)
        {
            return c;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "web not {phase:?}: {:#?}",
            store.snapshot("default", "web").and_then(|c| c.status)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_failed_at_attempt_5_and_replayed_leaves_its_component_ready() {
    let driver = MemoryDriver::new();
    driver.script("web", (0..5).map(|_| Step::Fail(TRANSIENT.into())));
    let mut settings = Settings::new("w");
    settings.max_attempts = 5;
    settings.retry.min = Duration::from_millis(20);
    settings.retry.max = Duration::from_millis(50);
    settings.fetch_expires = Duration::from_millis(300);
    let pipeline = Pipeline::start(&driver, settings).await;
    let (js, store) = (&pipeline.js, &pipeline.store);

    let config = json!({
        "releaseName": "web",
        "releaseNamespace": "apps",
        "source": {"type": "http",
            "repository": {"url": "https://charts.example.com/stable", "name": "example"},
            "chart": {"name": "nginx", "version": "1.2.3"}},
    });
    let mut component = Component::new(
        "web",
        ComponentSpec {
            name: "web".into(),
            handler: "helm".into(),
            config: Some(config.clone()),
            deployment_timeout: None,
            termination_timeout: None,
        },
    );
    component.metadata.namespace = Some("default".into());
    let component = store.create(component).unwrap();
    let job = JobEvent::new(
        JobAction::Apply,
        ComponentRef {
            namespace: "default".into(),
            name: "web".into(),
            uid: component.metadata.uid.clone(),
            generation: component.metadata.generation.unwrap_or(1),
        },
        HelmConfig::parse(Some(&config), "default", "web").unwrap(),
        30,
        jiff::Timestamp::now(),
    );
    JetStreamQueue::new(js.clone())
        .publish_job(&job)
        .await
        .unwrap();

    let failed = wait_phase(store, Phase::Failed).await;
    let message = failed.status.unwrap().message.unwrap_or_default();
    assert!(message.contains("(attempt 5 of 5)"), "{message}");

    // The operator replays the dead letter (stored right after the Failed status went out).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let letters = loop {
        let letters = helmq_queue::dlq::list(js, 10).await.unwrap();
        if !letters.is_empty() || tokio::time::Instant::now() > deadline {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(letters.len(), 1, "{letters:#?}");
    let sequence = letters[0].dlq_sequence.to_string();
    let args = helmq_ctl::Args::try_parse_from([
        "helmqctl",
        "--nats-url",
        pipeline.server.url(),
        "dlq",
        "replay",
        sequence.as_str(),
    ])
    .unwrap();
    let mut out = Vec::new();
    helmq_ctl::run(args, &mut out).await.unwrap();

    let ready = wait_phase(store, Phase::Ready).await;
    let status = ready.status.unwrap();
    assert_eq!(status.observed_generation, Some(1));
    let applies = driver.calls().iter().filter(|c| c.op == "apply").count();
    assert_eq!(applies, 6, "five failed runs, then the replay's");

    pipeline.stop().await;
}

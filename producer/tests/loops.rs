//! The watcher and the writer against the in-memory API server ([`FakeComponentStore`]) and a
//! real nats-server; the worker is simulated by the test (it pulls jobs from the workers'
//! consumer and publishes the status events a worker would).

use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use helmq_producer::leader::{ElectionConfig, LeaderElector, Leadership};
use helmq_producer::metrics::{Metrics, PublishLabels};
use helmq_producer::store::ErrorClass;
use helmq_producer::store::fake::{FakeComponentStore, FakeEventStore, FakeLeaseStore};
use helmq_producer::watcher::{Watcher, WatcherConfig};
use helmq_producer::writer::events::JOB_ID_ANNOTATION;
use helmq_producer::writer::{
    EventQueue, EventRecorder, Outcome, Unissued, Writer, WriterConfig, spawn_test_writer,
};
use helmq_queue::topology::{DLQ_STREAM, JOBS_STREAM, STATUS_STREAM, WORKERS_CONSUMER};
use helmq_queue::{JetStreamQueue, JetStreamStatus, StatusSink, Topology};
use helmq_schemas::component::{
    COORDINATION_FINALIZER, Component, HELM_FINALIZER, IssuedJob, Phase, REQUESTED_AT_ANNOTATION,
    SUSPEND_ANNOTATION, SUSPENDED_CONDITION,
};
use helmq_schemas::event::{
    ComponentRef, JobAction, JobEvent, ReleaseInfo, StatusEvent, StatusPhase, default_job_id,
};
use helmq_tests::NatsServer;
use helmq_tests::build::{component, nginx_config};
use helmq_tests::wait::eventually;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(15);

/// A Component with a valid config, in `default`.
fn deployable(name: &str) -> Component {
    component(name)
        .config(nginx_config(serde_json::json!({})))
        .build()
}

struct Rig {
    _server: NatsServer,
    js: jetstream::Context,
    store: FakeComponentStore,
    events: FakeEventStore,
    token: CancellationToken,
    metrics: Metrics,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Fast loops for tests: frequent resync so "nothing happens" is observed over many rounds.
fn fast_watcher() -> WatcherConfig {
    WatcherConfig {
        resync_interval: Duration::from_millis(200),
        retry_interval: Duration::from_millis(200),
        ..WatcherConfig::default()
    }
}

impl Rig {
    async fn new(topology: Topology) -> Rig {
        let server = NatsServer::start();
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = jetstream::new(client);
        topology.ensure(&js).await.unwrap();
        Rig {
            _server: server,
            js,
            store: FakeComponentStore::new(),
            events: FakeEventStore::new(),
            token: CancellationToken::new(),
            metrics: Metrics::default(),
        }
    }

    fn watcher(
        &self,
        config: WatcherConfig,
        metrics: Metrics,
    ) -> Watcher<FakeComponentStore, JetStreamQueue, JetStreamStatus> {
        let events = EventQueue::spawn(
            EventRecorder::new(self.events.clone(), "producer-test"),
            metrics.clone(),
        );
        Watcher::new(
            self.store.clone(),
            JetStreamQueue::new(self.js.clone()),
            JetStreamStatus::new(self.js.clone()),
            config,
            metrics,
        )
        .with_events(events)
    }

    fn spawn_watcher(&self, config: WatcherConfig) {
        let watcher = self.watcher(config, self.metrics.clone());
        tokio::spawn(watcher.run(self.token.clone()));
    }

    /// A watcher behind leader election on `leases` (its own connection), with its elector,
    /// both stopped by `token`.
    fn spawn_elected_watcher(
        &self,
        leases: FakeLeaseStore,
        identity: &str,
        metrics: Metrics,
        token: CancellationToken,
    ) -> Leadership {
        let elector = LeaderElector::new(leases, fast_election(identity));
        let leadership = elector.leadership();
        let watcher = self
            .watcher(fast_watcher(), metrics)
            .with_leadership(leadership.clone());
        tokio::spawn(elector.run(token.clone()));
        tokio::spawn(watcher.run(token));
        leadership
    }

    fn writer(&self) -> Writer<FakeComponentStore> {
        Writer::new(
            self.store.clone(),
            EventQueue::spawn(
                EventRecorder::new(self.events.clone(), "producer-test"),
                self.metrics.clone(),
            ),
            self.js.clone(),
            WriterConfig::fast(),
            self.metrics.clone(),
        )
    }

    fn spawn_writer(&self) {
        spawn_test_writer(
            self.store.clone(),
            self.events.clone(),
            self.js.clone(),
            WriterConfig::fast(),
            self.metrics.clone(),
            self.token.clone(),
        );
    }

    /// Creates a deployable Component `name`, claims it with a watcher (without starting one)
    /// and takes its apply job.
    async fn claim_and_take_job(&self, name: &str) -> JobEvent {
        let mut watcher = self.watcher(fast_watcher(), self.metrics.clone());
        let created = self.store.create(deployable(name)).unwrap();
        watcher.handle(created).await.unwrap();
        self.next_job().await
    }

    /// The next job, taken (and acked) from the workers' consumer as a worker would.
    async fn next_job(&self) -> JobEvent {
        let consumer: PullConsumer = self
            .js
            .get_consumer_from_stream(WORKERS_CONSUMER, JOBS_STREAM)
            .await
            .unwrap();
        eventually(DEADLINE, "a job", async || {
            let mut batch = consumer
                .fetch()
                .max_messages(1)
                .expires(Duration::from_millis(300))
                .messages()
                .await
                .unwrap();
            let message = batch.next().await?.unwrap();
            message.ack().await.unwrap();
            Some(JobEvent::decode(&message.payload).unwrap())
        })
        .await
    }

    async fn messages_in(&self, stream: &str) -> u64 {
        let mut stream = self.js.get_stream(stream).await.unwrap();
        stream.info().await.unwrap().state.messages
    }

    async fn stored(
        &self,
        stream_name: &str,
    ) -> Vec<async_nats::jetstream::message::StreamMessage> {
        let mut stream = self.js.get_stream(stream_name).await.unwrap();
        let state = stream.info().await.unwrap().state.clone();
        let mut out = Vec::new();
        for seq in state.first_sequence..=state.last_sequence {
            if let Ok(m) = stream.get_raw_message(seq).await {
                out.push(m);
            }
        }
        out
    }

    async fn status_events(&self) -> Vec<StatusEvent> {
        self.stored(STATUS_STREAM)
            .await
            .iter()
            .filter_map(|m| StatusEvent::decode(&m.payload).ok())
            .collect()
    }

    /// Publishes a status event as a worker would.
    async fn report(
        &self,
        job: &JobEvent,
        phase: StatusPhase,
        attempt: u32,
        release: Option<ReleaseInfo>,
    ) {
        self.report_with(
            job,
            phase,
            attempt,
            release,
            &format!("{phase:?} by the test worker"),
        )
        .await;
    }

    /// Publishes a status event with `message` as a worker would.
    async fn report_with(
        &self,
        job: &JobEvent,
        phase: StatusPhase,
        attempt: u32,
        release: Option<ReleaseInfo>,
        message: &str,
    ) {
        let mut event = StatusEvent::new(
            job.id.clone(),
            job.component.clone(),
            phase,
            message,
            attempt,
            "worker-test",
            jiff::Timestamp::now(),
        );
        if let Some(release) = release {
            event = event.with_release(release);
        }
        JetStreamStatus::new(self.js.clone())
            .publish_status(&event)
            .await
            .unwrap();
    }

    /// Polls the store until `check` holds for `default/name`.
    async fn wait_for(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(Option<&Component>) -> bool,
    ) -> Option<Component> {
        eventually(DEADLINE, what, async || {
            let current = self.store.snapshot("default", name);
            if check(current.as_ref()) {
                Ok(current)
            } else {
                Err(current)
            }
        })
        .await
    }
}

/// A 1s lease (the API's minimum) with fast rounds.
fn fast_election(identity: &str) -> ElectionConfig {
    ElectionConfig {
        renew_interval: Duration::from_millis(100),
        renew_deadline: Duration::from_millis(500),
        retry_interval: Duration::from_millis(100),
        ..ElectionConfig::new(
            "helmq-system",
            "helmq-producer",
            identity,
            Duration::from_secs(1),
        )
    }
}

/// Apply jobs this producer published with `outcome` `stored` or `duplicate` (dropped by the
/// server).
fn apply_publishes(metrics: &Metrics, outcome: &str) -> u64 {
    metrics
        .events_published
        .get_or_create(&PublishLabels {
            kind: "apply".into(),
            outcome: outcome.into(),
        })
        .get()
}

fn release(revision: i64) -> ReleaseInfo {
    ReleaseInfo {
        name: "web".into(),
        namespace: "apps".into(),
        revision: Some(revision),
        chart_version: Some("18.2.4".into()),
        helm_status: Some("deployed".into()),
        deployed: None,
        drift: None,
    }
}

/// `c`'s resourceVersion: the in-memory API server counts every write.
fn rv(c: &Component) -> u64 {
    let rv = c.metadata.resource_version.as_deref().unwrap_or_default();
    rv.parse().unwrap()
}

fn finalizers(c: Option<&Component>) -> Vec<String> {
    c.and_then(|c| c.metadata.finalizers.clone())
        .unwrap_or_default()
}

fn phase(c: Option<&Component>) -> Option<Phase> {
    c.and_then(|c| c.status.as_ref()).and_then(|s| s.phase)
}

fn observed(c: Option<&Component>) -> Option<i64> {
    c.and_then(|c| c.status.as_ref())
        .and_then(|s| s.observed_generation)
}

#[tokio::test]
async fn two_producers_racing_to_claim_one_component_claim_it_once() {
    let rig = Rig::new(Topology::default()).await;
    let created = rig.store.create(deployable("web")).unwrap();

    // Both producers decide on the same read: the second write carries a stale
    // resourceVersion, is refused (409), re-read, and finds the Component already claimed.
    let (first_metrics, second_metrics) = (Metrics::default(), Metrics::default());
    let mut first = rig.watcher(fast_watcher(), first_metrics.clone());
    let mut second = rig.watcher(fast_watcher(), second_metrics.clone());
    first.handle(created.clone()).await.unwrap();
    second.handle(created.clone()).await.unwrap();
    assert_eq!(first_metrics.conflicts.get(), 0);
    assert_eq!(second_metrics.conflicts.get(), 1);
    // The claim took two writes in all: the finalizer, then the job with `Claimed`.
    let claimed = rig.store.snapshot("default", "web").unwrap();
    assert_eq!(rv(&claimed), rv(&created) + 2);

    // And two running producers racing on a fresh Component.
    rig.spawn_watcher(fast_watcher());
    rig.spawn_watcher(fast_watcher());
    rig.store.create(deployable("api")).unwrap();
    rig.wait_for("api", "the claim", |c| {
        finalizers(c).contains(&HELM_FINALIZER.to_owned())
    })
    .await;
    eventually(DEADLINE, "apply jobs of both components", async || {
        rig.messages_in(JOBS_STREAM).await >= 2
    })
    .await;

    for name in ["web", "api"] {
        let c = rig.store.snapshot("default", name).unwrap();
        assert_eq!(finalizers(Some(&c)), [HELM_FINALIZER], "{name}");
        // `Claimed` is written with the apply job it answers, in one status write.
        let status = c.status.clone().unwrap();
        assert_eq!(status.phase, Some(Phase::Claimed), "{name}");
        assert_eq!(status.message.as_deref(), Some("Claimed by helm handler"));
        assert_eq!(status.claimed_by.as_deref(), Some("helm"));
        assert!(status.claimed_at.is_some(), "{name}");
        let issued = issued(&c);
        let uid = c.metadata.uid.clone().unwrap();
        assert!(
            issued.id.starts_with(&format!("{uid}:1:apply:")),
            "{issued:?}"
        );
        // Its one Event carries that job too.
        assert_eq!(claims_recorded(&rig, name).await, [issued.id], "{name}");
    }
    // What the watcher wrote itself is not published for the writer to write again.
    let published = rig.status_events().await;
    assert!(
        published.iter().all(|e| e.phase != StatusPhase::Claimed),
        "{published:#?}"
    );
    // One apply job per (uid, generation) on the stream, whoever published it.
    assert_eq!(rig.messages_in(JOBS_STREAM).await, 2);
}

#[tokio::test]
async fn create_deploy_ready_then_upgrade_to_the_new_generation() {
    let rig = Rig::new(Topology::default()).await;
    rig.spawn_watcher(fast_watcher());
    rig.spawn_writer();
    let created = rig
        .store
        .create(
            component("web")
                .config(nginx_config(serde_json::json!({"replicaCount": 1})))
                .build(),
        )
        .unwrap();

    let job = rig.next_job().await;
    assert_eq!(job.action, JobAction::Apply);
    assert_eq!(job.component.generation, 1);
    assert_eq!(job.component.uid, created.metadata.uid);
    assert_eq!(job.config.values["replicaCount"], 1);
    rig.wait_for("web", "Claimed", |c| phase(c) == Some(Phase::Claimed))
        .await;

    rig.report(&job, StatusPhase::Deploying, 1, None).await;
    rig.wait_for("web", "Deploying", |c| phase(c) == Some(Phase::Deploying))
        .await;
    rig.report(&job, StatusPhase::Ready, 1, Some(release(1)))
        .await;
    let ready = rig
        .wait_for("web", "Ready at generation 1", |c| {
            phase(c) == Some(Phase::Ready) && observed(c) == Some(1)
        })
        .await
        .unwrap();
    let status = ready.status.unwrap();
    assert_eq!(status.claimed_by.as_deref(), Some("helm"));
    let record = status.handler_status.unwrap();
    assert_eq!(record.release_name.as_deref(), Some("web"));
    assert_eq!(record.release_namespace.as_deref(), Some("apps"));
    assert_eq!(record.revision, Some(1));
    assert_eq!(record.chart_version.as_deref(), Some("18.2.4"));
    assert!(record.last_deploy_time.is_some());
    let ready_condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (
            ready_condition.status.as_str(),
            ready_condition.observed_generation
        ),
        ("True", Some(1))
    );

    // Spec edit: a new generation, a new job, Ready at the new generation.
    rig.store
        .edit_spec("default", "web", |s| {
            s.config = Some(nginx_config(serde_json::json!({"replicaCount": 2})))
        })
        .unwrap();
    let upgrade = rig.next_job().await;
    assert_eq!(
        (upgrade.action, upgrade.component.generation),
        (JobAction::Apply, 2)
    );
    assert_eq!(upgrade.config.values["replicaCount"], 2);
    rig.report(&upgrade, StatusPhase::Deploying, 1, None).await;
    rig.report(&upgrade, StatusPhase::Ready, 1, Some(release(2)))
        .await;
    let upgraded = rig
        .wait_for("web", "Ready at generation 2", |c| {
            phase(c) == Some(Phase::Ready) && observed(c) == Some(2)
        })
        .await
        .unwrap();
    assert_eq!(
        upgraded.status.unwrap().handler_status.unwrap().revision,
        Some(2)
    );
    // Up to date: no further job (the stream holds nothing after several resyncs).
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(rig.messages_in(JOBS_STREAM).await, 0);
}

#[tokio::test]
async fn deletion_waits_for_coordination_then_terminates_or_keeps_the_finalizer_on_failure() {
    let rig = Rig::new(Topology::default()).await;
    rig.spawn_watcher(fast_watcher());
    rig.spawn_writer();
    for name in ["web", "api"] {
        rig.store.create(deployable(name)).unwrap();
        rig.store
            .add_foreign_finalizer("default", name, COORDINATION_FINALIZER)
            .unwrap();
    }
    for _ in 0..2 {
        let job = rig.next_job().await;
        rig.report(&job, StatusPhase::Ready, 1, Some(release(1)))
            .await;
    }
    for name in ["web", "api"] {
        rig.wait_for(name, "Ready", |c| phase(c) == Some(Phase::Ready))
            .await;
        rig.store.delete("default", name).unwrap();
    }

    // While the coordination finalizer is there, nothing happens (over several resyncs).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(rig.messages_in(JOBS_STREAM).await, 0);
    for name in ["web", "api"] {
        let c = rig.store.snapshot("default", name).unwrap();
        assert!(c.metadata.deletion_timestamp.is_some());
        assert_eq!(
            finalizers(Some(&c)),
            [COORDINATION_FINALIZER, HELM_FINALIZER]
        );
        assert_eq!(phase(Some(&c)), Some(Phase::Ready));
    }

    // Coordination gone: one delete job each.
    rig.store
        .remove_foreign_finalizer("default", "web", COORDINATION_FINALIZER)
        .unwrap();
    let delete = rig.next_job().await;
    assert_eq!(
        (delete.action, delete.component.name.as_str()),
        (JobAction::Delete, "web")
    );
    assert_eq!(delete.config.release_name, "web");
    rig.report(&delete, StatusPhase::Terminating, 1, None).await;
    rig.wait_for("web", "Terminating", |c| {
        phase(c) == Some(Phase::Terminating)
    })
    .await;
    rig.report(&delete, StatusPhase::Terminated, 1, None).await;
    rig.wait_for("web", "the object to be gone", |c| c.is_none())
        .await;

    rig.store
        .remove_foreign_finalizer("default", "api", COORDINATION_FINALIZER)
        .unwrap();
    let delete = rig.next_job().await;
    assert_eq!(
        (delete.action, delete.component.name.as_str()),
        (JobAction::Delete, "api")
    );
    rig.report(&delete, StatusPhase::Terminating, 1, None).await;
    rig.report(&delete, StatusPhase::TerminationFailed, 1, None)
        .await;
    let failed = rig
        .wait_for("api", "TerminationFailed", |c| {
            phase(c) == Some(Phase::TerminationFailed)
        })
        .await
        .unwrap();
    assert_eq!(finalizers(Some(&failed)), [HELM_FINALIZER]);
    assert!(failed.metadata.deletion_timestamp.is_some());
    // Not re-published: the failure stands until someone acts.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(rig.messages_in(JOBS_STREAM).await, 0);
    assert!(rig.store.snapshot("default", "api").is_some());
}

#[tokio::test]
async fn status_events_out_of_order_never_regress_the_status() {
    let rig = Rig::new(Topology::default()).await;
    rig.spawn_writer();
    let created = rig.store.create(deployable("web")).unwrap();
    rig.store
        .edit_spec("default", "web", |s| {
            s.config = Some(nginx_config(serde_json::json!({"a": 1})))
        })
        .unwrap();
    let job = |generation| {
        JobEvent::new(
            JobAction::Apply,
            ComponentRef {
                namespace: "default".into(),
                name: "web".into(),
                uid: created.metadata.uid.clone(),
                generation,
            },
            helmq_schemas::HelmConfig::parse(
                Some(&nginx_config(serde_json::json!({}))),
                "default",
                "web",
            )
            .unwrap(),
            300,
            jiff::Timestamp::now(),
        )
    };
    rig.report(&job(2), StatusPhase::Ready, 1, Some(release(2)))
        .await;
    rig.wait_for("web", "Ready at 2", |c| observed(c) == Some(2))
        .await;
    // No watcher here, so no issued job is recorded: the writer takes the default job id of the
    // current generation (a Component of an older helmq). An older generation's events answer
    // no job it accepts; an earlier phase of the same generation is stale; then another uid.
    rig.report(&job(1), StatusPhase::Ready, 1, Some(release(1)))
        .await;
    rig.report(&job(1), StatusPhase::Failed, 3, None).await;
    rig.report(&job(2), StatusPhase::Deploying, 1, None).await;
    let mut foreign = job(3);
    foreign.component.uid = Some(helmq_tests::build::uid("a deleted namesake"));
    rig.report(&foreign, StatusPhase::Failed, 1, None).await;

    eventually(DEADLINE, "1 stale event dropped", async || {
        rig.metrics.stale_events_dropped.get() == 1
    })
    .await;
    eventually(DEADLINE, "2 unissued events dropped", async || {
        rig.metrics.unissued_events_dropped.get() == 2
    })
    .await;
    eventually(DEADLINE, "1 orphan event dropped", async || {
        rig.metrics.orphan_events_dropped.get() == 1
    })
    .await;
    let c = rig.store.snapshot("default", "web").unwrap();
    let status = c.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Ready));
    assert_eq!(status.observed_generation, Some(2));
    assert_eq!(status.handler_status.unwrap().revision, Some(2));
    assert_eq!(rig.metrics.statuses_applied.get(), 1);
    // Only the applied event is told as a Kubernetes Event: no stale Failed, no orphan's.
    let reasons: Vec<String> = events_on(&rig, "web").into_iter().map(|e| e.1).collect();
    assert_eq!(reasons, ["Ready"]);
}

#[tokio::test]
async fn a_purged_jobs_stream_is_recovered_by_resync() {
    // A duplicate window shorter than the grace, as in production (2m window, 6m grace).
    let rig = Rig::new(Topology {
        duplicate_window: Duration::from_secs(1),
        ..Topology::default()
    })
    .await;
    rig.spawn_watcher(WatcherConfig {
        resync_grace: Some(Duration::from_secs(2)),
        ..fast_watcher()
    });
    rig.store.create(deployable("web")).unwrap();
    eventually(DEADLINE, "the first job", async || {
        rig.messages_in(JOBS_STREAM).await == 1
    })
    .await;

    rig.js
        .get_stream(JOBS_STREAM)
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    assert_eq!(rig.messages_in(JOBS_STREAM).await, 0);

    let job = rig.next_job().await;
    assert_eq!(
        (job.action, job.component.generation),
        (JobAction::Apply, 1)
    );
    assert!(rig.metrics.resyncs.get() > 0);
}

#[tokio::test]
async fn invalid_config_is_claimed_then_failed_without_a_job_until_the_spec_changes() {
    let rig = Rig::new(Topology::default()).await;
    rig.spawn_watcher(fast_watcher());
    rig.spawn_writer();
    rig.store.create(component("web").build()).unwrap();
    let failed = rig
        .wait_for("web", "Failed", |c| phase(c) == Some(Phase::Failed))
        .await
        .unwrap();
    let status = failed.status.clone().unwrap();
    assert_eq!(
        status.message.as_deref(),
        Some("config is required for helm components")
    );
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.claimed_by.as_deref(), Some("helm"));
    assert_eq!(finalizers(Some(&failed)), [HELM_FINALIZER]);

    // Not re-published over several resyncs; no job ever.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(rig.messages_in(JOBS_STREAM).await, 0);
    let phases: Vec<StatusPhase> = rig.status_events().await.iter().map(|e| e.phase).collect();
    // `Claimed` was written with the claim, not published.
    assert_eq!(phases, [StatusPhase::Failed]);
    assert_eq!(claims_recorded(&rig, "web").await.len(), 1);

    // Another invalid config: Failed again, for the new generation, with the new message.
    rig.store
        .edit_spec("default", "web", |s| {
            s.config = Some(serde_json::json!({"repository": {"name": "bitnami"}}))
        })
        .unwrap();
    let failed_again = rig
        .wait_for("web", "Failed at generation 2", |c| {
            phase(c) == Some(Phase::Failed) && observed(c) == Some(2)
        })
        .await
        .unwrap();
    assert_eq!(
        failed_again.status.unwrap().message.as_deref(),
        Some("repository.url is required")
    );
    assert_eq!(rig.messages_in(JOBS_STREAM).await, 0);

    // Fixed: deployed.
    rig.store
        .edit_spec("default", "web", |s| {
            s.config = Some(nginx_config(serde_json::json!({})))
        })
        .unwrap();
    let job = rig.next_job().await;
    assert_eq!(
        (job.action, job.component.generation),
        (JobAction::Apply, 3)
    );
}

#[tokio::test]
async fn deleting_a_component_that_never_installed_anything_needs_no_job() {
    let rig = Rig::new(Topology::default()).await;
    rig.spawn_watcher(fast_watcher());
    rig.spawn_writer();
    rig.store
        .create(
            component("web")
                .config(serde_json::json!("not an object"))
                .build(),
        )
        .unwrap();
    rig.wait_for("web", "Failed", |c| phase(c) == Some(Phase::Failed))
        .await;
    rig.store.delete("default", "web").unwrap();
    rig.wait_for("web", "the object to be gone", |c| c.is_none())
        .await;
    assert_eq!(rig.messages_in(JOBS_STREAM).await, 0);
    let last = rig.status_events().await.pop().unwrap();
    assert_eq!(last.phase, StatusPhase::Terminated);
    assert!(
        last.message.starts_with("nothing to uninstall"),
        "{}",
        last.message
    );
}

#[tokio::test]
async fn bad_status_payloads_are_dead_lettered_with_the_reason() {
    let rig = Rig::new(Topology::default()).await;
    rig.spawn_writer();
    rig.store.create(deployable("web")).unwrap();
    let subject = helmq_schemas::subject::status_subject("default", "web");
    for payload in [
        &b"not json at all"[..],
        br#"{"schema":"helmq.status/v9","jobId":"x"}"#,
    ] {
        rig.js
            .publish(subject.clone(), payload.to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    eventually(DEADLINE, "two dead letters", async || {
        rig.messages_in(DLQ_STREAM).await == 2
    })
    .await;
    let letters = dead_letters(&rig).await;
    assert_eq!(letters[0].payload.as_ref(), b"not json at all");
    assert!(
        letters[0]
            .reason
            .starts_with("malformed helmq.status/v1 payload: not JSON"),
        "{}",
        letters[0].reason
    );
    assert_eq!(letters[0].subject, subject);
    assert_eq!(letters[0].stream, STATUS_STREAM);
    assert_eq!(
        letters[1].reason,
        r#"unknown schema "helmq.status/v9" (this build reads helmq.status/v1)"#
    );
    assert_eq!(rig.metrics.dead_letters.get(), 2);
    // Acked: nothing left pending for the writer, and the store is untouched.
    assert!(
        rig.store
            .snapshot("default", "web")
            .unwrap()
            .status
            .is_none()
    );
}

/// An apply job of generation `generation` for `created`, as the producer would publish it.
fn job_for(created: &Component, generation: i64) -> JobEvent {
    let helmq_producer::store::ObjectKey { namespace, name } =
        helmq_producer::store::ObjectKey::of(created);
    JobEvent::new(
        JobAction::Apply,
        ComponentRef {
            namespace: namespace.clone(),
            name: name.clone(),
            uid: created.metadata.uid.clone(),
            generation,
        },
        helmq_schemas::HelmConfig::parse(
            Some(&nginx_config(serde_json::json!({}))),
            &namespace,
            &name,
        )
        .unwrap(),
        300,
        jiff::Timestamp::now(),
    )
}

async fn dead_letters(rig: &Rig) -> Vec<helmq_queue::dlq::DeadLetter> {
    rig.stored(DLQ_STREAM)
        .await
        .into_iter()
        .map(|m| helmq_queue::dlq::read_stored(m.sequence, Some(&m.headers), m.payload).letter)
        .collect()
}

#[tokio::test]
async fn the_writer_retries_through_an_api_outage() {
    let rig = Rig::new(Topology::default()).await;
    let created = rig.store.create(deployable("web")).unwrap();
    rig.store.set_unavailable(true);
    rig.spawn_writer();
    let job = job_for(&created, 1);
    rig.report(&job, StatusPhase::Deploying, 1, None).await;
    rig.report(&job, StatusPhase::Ready, 1, Some(release(1)))
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        rig.store
            .snapshot("default", "web")
            .unwrap()
            .status
            .is_none()
    );
    assert!(rig.metrics.status_retries.get() >= 2);
    rig.store.set_unavailable(false);
    rig.wait_for("web", "Ready", |c| phase(c) == Some(Phase::Ready))
        .await;
    // Both settled: applied, or (Deploying redelivered after Ready) dropped as stale; Ready
    // stays.
    eventually(DEADLINE, "both events settled", async || {
        rig.metrics.statuses_applied.get() + rig.metrics.stale_events_dropped.get() == 2
    })
    .await;
    assert_eq!(
        phase(rig.store.snapshot("default", "web").as_ref()),
        Some(Phase::Ready)
    );
    assert_eq!(rig.messages_in(DLQ_STREAM).await, 0);
}

#[tokio::test]
async fn a_status_write_refused_for_good_is_dead_lettered_and_the_others_go_on() {
    let rig = Rig::new(Topology::default()).await;
    let stuck = rig.store.create(deployable("stuck")).unwrap();
    let web = rig.store.create(deployable("web")).unwrap();
    rig.store
        .fail_component("default", "stuck", ErrorClass::Permanent);
    rig.spawn_writer();
    rig.report(&job_for(&stuck, 1), StatusPhase::Deploying, 1, None)
        .await;
    let job = job_for(&web, 1);
    rig.report(&job, StatusPhase::Deploying, 1, None).await;
    rig.report(&job, StatusPhase::Ready, 1, Some(release(1)))
        .await;
    rig.wait_for("web", "Ready", |c| phase(c) == Some(Phase::Ready))
        .await;

    eventually(DEADLINE, "one dead letter", async || {
        rig.messages_in(DLQ_STREAM).await == 1
    })
    .await;
    let letter = dead_letters(&rig).await.pop().unwrap();
    assert_eq!(
        letter.subject,
        helmq_schemas::subject::status_subject("default", "stuck")
    );
    assert_eq!(letter.stream, STATUS_STREAM);
    assert_eq!(letter.attempts, 1);
    assert!(
        letter.reason.starts_with("status write refused for good") && letter.reason.contains("422"),
        "{}",
        letter.reason
    );
    assert_eq!(
        StatusEvent::decode(&letter.payload).unwrap().phase,
        StatusPhase::Deploying
    );
    assert_eq!(rig.metrics.dead_letters.get(), 1);
    assert_eq!(rig.metrics.status_retries.get(), 0);
    assert!(
        rig.store
            .snapshot("default", "stuck")
            .unwrap()
            .status
            .is_none()
    );

    // Acked, not retried: once the Component is writable, its next event is applied.
    rig.store.clear_failure("default", "stuck");
    rig.report(&job_for(&stuck, 1), StatusPhase::Ready, 1, Some(release(1)))
        .await;
    rig.wait_for("stuck", "Ready", |c| phase(c) == Some(Phase::Ready))
        .await;
    assert_eq!(rig.messages_in(DLQ_STREAM).await, 1);
}

#[tokio::test]
async fn a_component_failing_transiently_does_not_hold_up_the_others() {
    let rig = Rig::new(Topology::default()).await;
    let stuck = rig.store.create(deployable("stuck")).unwrap();
    let web = rig.store.create(deployable("web")).unwrap();
    rig.store
        .fail_component("default", "stuck", ErrorClass::Transient);
    rig.spawn_writer();
    let failing_since = tokio::time::Instant::now();
    let stuck_job = job_for(&stuck, 1);
    rig.report(&stuck_job, StatusPhase::Deploying, 1, None)
        .await;
    rig.report(&stuck_job, StatusPhase::Ready, 1, Some(release(1)))
        .await;
    let job = job_for(&web, 1);
    rig.report(&job, StatusPhase::Deploying, 1, None).await;
    rig.report(&job, StatusPhase::Ready, 1, Some(release(1)))
        .await;

    // The events behind the failing ones are applied while the failure lasts.
    rig.wait_for("web", "Ready", |c| phase(c) == Some(Phase::Ready))
        .await;
    assert!(
        failing_since.elapsed() < Duration::from_secs(2),
        "web was held up for {:?}",
        failing_since.elapsed()
    );
    assert!(
        rig.store
            .snapshot("default", "stuck")
            .unwrap()
            .status
            .is_none()
    );
    eventually(DEADLINE, "retries of the failing events", async || {
        rig.metrics.status_retries.get() >= 2
    })
    .await;

    // The failure lasts 2 s; then the failing Component gets its status.
    tokio::time::sleep_until(failing_since + Duration::from_secs(2)).await;
    assert!(
        rig.store
            .snapshot("default", "stuck")
            .unwrap()
            .status
            .is_none()
    );
    rig.store.clear_failure("default", "stuck");
    let ready = rig
        .wait_for("stuck", "Ready", |c| phase(c) == Some(Phase::Ready))
        .await
        .unwrap();
    assert_eq!(
        ready.status.unwrap().handler_status.unwrap().revision,
        Some(1)
    );
    assert_eq!(rig.messages_in(DLQ_STREAM).await, 0);
}

#[tokio::test]
async fn a_write_still_failing_at_the_last_delivery_is_dead_lettered() {
    let rig = Rig::new(Topology {
        max_deliver: 3,
        ..Topology::default()
    })
    .await;
    let stuck = rig.store.create(deployable("stuck")).unwrap();
    rig.store
        .fail_component("default", "stuck", ErrorClass::Transient);
    rig.spawn_writer();
    rig.report(&job_for(&stuck, 1), StatusPhase::Deploying, 1, None)
        .await;
    eventually(DEADLINE, "one dead letter", async || {
        rig.messages_in(DLQ_STREAM).await == 1
    })
    .await;
    let letter = dead_letters(&rig).await.pop().unwrap();
    assert_eq!(letter.attempts, 3);
    assert!(
        letter
            .reason
            .starts_with("status write still failing at the last delivery (3)")
            && letter.reason.contains("503"),
        "{}",
        letter.reason
    );
    assert_eq!(rig.metrics.status_retries.get(), 2);
}

#[tokio::test]
async fn two_elected_producers_publish_each_job_once_and_the_follower_takes_over() {
    let rig = Rig::new(Topology::default()).await;
    let leases = FakeLeaseStore::new();
    let (metrics_1, metrics_2) = (Metrics::default(), Metrics::default());
    let (token_1, token_2) = (rig.token.child_token(), rig.token.child_token());
    let view_1 = rig.spawn_elected_watcher(
        leases.connection(),
        "p1",
        metrics_1.clone(),
        token_1.clone(),
    );
    let view_2 = rig.spawn_elected_watcher(
        leases.connection(),
        "p2",
        metrics_2.clone(),
        token_2.clone(),
    );
    for name in ["web", "api"] {
        rig.store.create(deployable(name)).unwrap();
    }
    eventually(DEADLINE, "apply jobs of both components", async || {
        rig.messages_in(JOBS_STREAM).await >= 2
    })
    .await;
    let (leader, leader_metrics, follower_view, follower_metrics) = if view_1.is_leader() {
        (token_1, metrics_1, view_2, metrics_2)
    } else {
        (token_2, metrics_2, view_1, metrics_1)
    };
    assert!(!follower_view.is_leader());
    // Several resync passes of the leader later, still one publish per job, all by the
    // leader; the follower never even watched.
    let resyncs = leader_metrics.resyncs.get();
    eventually(DEADLINE, "three more resyncs", async || {
        leader_metrics.resyncs.get() >= resyncs + 3
    })
    .await;
    assert_eq!(rig.messages_in(JOBS_STREAM).await, 2);
    assert_eq!(apply_publishes(&leader_metrics, "stored"), 2);
    assert_eq!(apply_publishes(&leader_metrics, "duplicate"), 0);
    assert_eq!(apply_publishes(&follower_metrics, "stored"), 0);
    assert_eq!(apply_publishes(&follower_metrics, "duplicate"), 0);
    assert_eq!(follower_metrics.watch_restarts.get(), 0);
    for name in ["web", "api"] {
        assert_eq!(claims_recorded(&rig, name).await.len(), 1, "{name}");
    }

    // The leader stops; the other one takes over and handles a new Component.
    leader.cancel();
    eventually(DEADLINE, "the follower to lead", async || {
        follower_view.is_leader()
    })
    .await;
    rig.store.create(deployable("db")).unwrap();
    eventually(DEADLINE, "the new component's job", async || {
        rig.messages_in(JOBS_STREAM).await >= 3
    })
    .await;
    rig.wait_for("db", "the claim", |c| {
        finalizers(c).contains(&HELM_FINALIZER.to_owned())
    })
    .await;
    // Like a restarted producer, the new leader does not know what its predecessor published:
    // its listing re-publishes the jobs still unanswered, which the stream drops as
    // duplicates.
    assert_eq!(apply_publishes(&follower_metrics, "stored"), 1);
    assert_eq!(apply_publishes(&leader_metrics, "stored"), 2);
    assert_eq!(rig.messages_in(JOBS_STREAM).await, 3);
}

#[tokio::test]
async fn an_elected_producer_pauses_without_leadership_and_relists_when_it_leads_again() {
    let rig = Rig::new(Topology::default()).await;
    let leases = FakeLeaseStore::new();
    let metrics = Metrics::default();
    let view = rig.spawn_elected_watcher(leases.clone(), "p1", metrics.clone(), rig.token.clone());
    eventually(DEADLINE, "leading", async || view.is_leader()).await;
    eventually(DEADLINE, "the first listing", async || {
        metrics.watch_restarts.get() == 1
    })
    .await;

    // Cut off from the Leases: it stops leading and leaves a new Component alone.
    leases.cut_off(true);
    eventually(DEADLINE, "not leading", async || !view.is_leader()).await;
    rig.store.create(deployable("web")).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(finalizers(rig.store.snapshot("default", "web").as_ref()).is_empty());
    assert_eq!(rig.messages_in(JOBS_STREAM).await, 0);

    // Back: it renews its own Lease, lists again and handles what it missed.
    let back = jiff::Timestamp::now();
    leases.cut_off(false);
    let job = rig.next_job().await;
    assert_eq!(job.component.name, "web");
    assert!(job.requested_at >= back, "{} < {back}", job.requested_at);
    assert!(view.is_leader());
    assert_eq!(metrics.watch_restarts.get(), 2);
}

#[tokio::test]
async fn a_claim_refused_for_good_is_reported_once_and_not_retried_until_the_component_changes() {
    let rig = Rig::new(Topology::default()).await;
    let stuck = rig.store.create(deployable("stuck")).unwrap();
    rig.store
        .fail_component("default", "stuck", ErrorClass::Permanent);
    rig.spawn_watcher(fast_watcher());
    rig.store.create(deployable("web")).unwrap();
    assert_eq!(rig.next_job().await.component.name, "web");
    // Five retry ticks and resyncs later: still the one failure.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(rig.metrics.handling_failures.get(), 1);
    assert!(!claimed_by_us(&rig, "stuck"));
    // A change (a new resourceVersion) is tried again; once the API accepts it, it deploys.
    rig.store.clear_failure("default", "stuck");
    rig.store
        .edit_spec("default", "stuck", |spec| {
            spec.deployment_timeout = Some("2m".into());
        })
        .unwrap();
    let job = rig.next_job().await;
    assert_eq!(
        (job.component.name.as_str(), job.component.uid.as_deref()),
        ("stuck", stuck.metadata.uid.as_deref())
    );
}

fn claimed_by_us(rig: &Rig, name: &str) -> bool {
    finalizers(rig.store.snapshot("default", name).as_ref()).contains(&HELM_FINALIZER.to_owned())
}

/// `(type, reason, note, count, job id)` of the Events on `default/name`, oldest first.
/// The job ids of the `Claimed` Events recorded on `name`, one per occurrence: once the first
/// is recorded, and the recording tasks had time for any other claim's Event (queued before
/// that watcher published anything, so before the caller saw its job).
async fn claims_recorded(rig: &Rig, name: &str) -> Vec<String> {
    let claimed = |e: &(String, String, String, i32, String)| e.1 == "Claimed";
    eventually(DEADLINE, "a Claimed event", async || {
        events_on(rig, name).iter().any(claimed)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    events_on(rig, name)
        .into_iter()
        .filter(claimed)
        .flat_map(|e| std::iter::repeat_n(e.4, usize::try_from(e.3).unwrap_or(0)))
        .collect()
}

fn events_on(rig: &Rig, name: &str) -> Vec<(String, String, String, i32, String)> {
    rig.events
        .regarding("default", name)
        .into_iter()
        .map(|e| {
            let job = e
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(JOB_ID_ANNOTATION).cloned())
                .unwrap_or_default();
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
                e.series.map_or(1, |s| s.count),
                job,
            )
        })
        .collect()
}

#[tokio::test]
async fn the_writer_records_events_for_deploy_fail_fix_delete_and_counts_repeated_failures() {
    let rig = Rig::new(Topology::default()).await;
    rig.spawn_watcher(fast_watcher());
    rig.spawn_writer();
    rig.store.create(deployable("web")).unwrap();
    let deploy = rig.next_job().await;
    rig.report(&deploy, StatusPhase::Deploying, 1, None).await;
    rig.report(&deploy, StatusPhase::Ready, 1, Some(release(1)))
        .await;
    rig.wait_for("web", "Ready", |c| phase(c) == Some(Phase::Ready))
        .await;

    // Two generations fail the same way (the second failure is counted, not added), then a
    // third one fixes it.
    let failure = "chart nginx version 99.0.0 not found in https://charts.example";
    let mut failed_jobs = Vec::new();
    for (generation, replicas) in [(2, 5), (3, 6)] {
        rig.store
            .edit_spec("default", "web", |s| {
                s.config = Some(nginx_config(serde_json::json!({"replicaCount": replicas})))
            })
            .unwrap();
        let job = rig.next_job().await;
        rig.report(&job, StatusPhase::Deploying, 1, None).await;
        rig.report_with(&job, StatusPhase::Failed, 1, None, failure)
            .await;
        rig.wait_for("web", "Failed", |c| {
            phase(c) == Some(Phase::Failed) && observed(c) == Some(generation)
        })
        .await;
        failed_jobs.push(job.id);
    }
    rig.store
        .edit_spec("default", "web", |s| {
            s.config = Some(nginx_config(serde_json::json!({"replicaCount": 1})))
        })
        .unwrap();
    let fix = rig.next_job().await;
    rig.report(&fix, StatusPhase::Deploying, 1, None).await;
    rig.report(&fix, StatusPhase::Ready, 1, Some(release(2)))
        .await;
    rig.wait_for("web", "Ready again", |c| {
        phase(c) == Some(Phase::Ready) && observed(c) == Some(4)
    })
    .await;

    rig.store.delete("default", "web").unwrap();
    let delete = rig.next_job().await;
    assert_eq!(delete.action, JobAction::Delete);
    rig.report(&delete, StatusPhase::Terminating, 1, None).await;
    rig.report(&delete, StatusPhase::Terminated, 1, None).await;
    rig.wait_for("web", "the object to be gone", |c| c.is_none())
        .await;
    // Events are recorded off the status path, a moment after the status.
    eventually(DEADLINE, "ten events recorded", async || {
        match rig.metrics.events_recorded.get() {
            10 => Ok(()),
            n => Err(n),
        }
    })
    .await;

    let owned = |s: &str| s.to_owned();
    assert_eq!(
        events_on(&rig, "web"),
        [
            (
                owned("Normal"),
                owned("Claimed"),
                owned("Claimed by helm handler"),
                1,
                // The claim answers the first apply job, issued before it was told.
                deploy.id.clone()
            ),
            (
                owned("Normal"),
                owned("Deploying"),
                owned("Deploying by the test worker"),
                4,
                fix.id.clone()
            ),
            (
                owned("Normal"),
                owned("Ready"),
                owned("Ready by the test worker"),
                2,
                fix.id.clone()
            ),
            (
                owned("Warning"),
                owned("Failed"),
                owned(failure),
                2,
                failed_jobs[1].clone()
            ),
            (
                owned("Normal"),
                owned("Terminating"),
                owned("Terminating by the test worker"),
                1,
                delete.id.clone()
            ),
        ]
    );
    // Claimed, 4 Deploying, 2 Ready, 2 Failed, Terminating: five objects, five patches.
    assert_eq!(rig.events.writes(), (5, 5));
    assert_eq!(rig.metrics.events_recorded.get(), 10);
    assert_eq!(rig.metrics.event_failures.get(), 0);
}

#[tokio::test]
async fn a_writer_behind_writes_a_component_once_for_its_events_and_records_each_of_them() {
    use StatusPhase::{Deploying, Ready};
    let rig = Rig::new(Topology::default()).await;
    let job = rig.claim_and_take_job("web").await;
    // Both are in the stream before the writer starts: they come in one batch.
    rig.report(&job, Deploying, 1, None).await;
    rig.report(&job, Ready, 1, Some(release(1))).await;
    let claimed = rig.store.snapshot("default", "web").unwrap();

    rig.spawn_writer();
    let ready = rig
        .wait_for("web", "Ready", |c| phase(c) == Some(Phase::Ready))
        .await
        .unwrap();
    assert_eq!(rv(&ready), rv(&claimed) + 1, "one status write for both");
    assert_eq!(observed(Some(&ready)), Some(1));
    assert_eq!(rig.metrics.statuses_applied.get(), 2);
    assert_eq!(rig.metrics.coalesced_events.get(), 1);
    // Every phase still has its Event, in order.
    eventually(
        DEADLINE,
        "Claimed, Deploying and Ready events",
        async || {
            let reasons: Vec<String> = events_on(&rig, "web").into_iter().map(|e| e.1).collect();
            if reasons == ["Claimed", "Deploying", "Ready"] {
                Ok(())
            } else {
                Err(reasons)
            }
        },
    )
    .await;
    assert!(dead_letters(&rig).await.is_empty());
}

#[tokio::test]
async fn a_coalesced_write_refused_for_good_dead_letters_only_the_event_refused() {
    use StatusPhase::{Deploying, Failed};
    let rig = Rig::new(Topology::default()).await;
    let job = rig.claim_and_take_job("web").await;
    rig.store.set_refused_message(Some("Failed"));
    // In one batch: the write of both is refused, because of the second.
    rig.report(&job, Deploying, 1, None).await;
    rig.report(&job, Failed, 1, None).await;

    rig.spawn_writer();
    eventually(DEADLINE, "one dead letter", async || {
        match dead_letters(&rig).await.len() {
            1 => Ok(()),
            n => Err(n),
        }
    })
    .await;
    let letter = &dead_letters(&rig).await[0];
    let refused = StatusEvent::decode(&letter.payload).unwrap();
    assert_eq!(refused.phase, Failed);
    assert!(
        letter.reason.contains("refused for good"),
        "{}",
        letter.reason
    );
    // The other was written on its own.
    let c = rig.store.snapshot("default", "web");
    assert_eq!(phase(c.as_ref()), Some(Phase::Deploying));
    assert_eq!(rig.metrics.statuses_applied.get(), 1);
    assert_eq!(rig.metrics.coalesced_events.get(), 0);
}

#[tokio::test]
async fn an_events_api_outage_never_holds_up_or_fails_a_status_write() {
    let rig = Rig::new(Topology::default()).await;
    rig.events.set_unavailable(true);
    rig.spawn_watcher(fast_watcher());
    rig.spawn_writer();
    rig.store.create(deployable("web")).unwrap();
    let job = rig.next_job().await;
    rig.report(&job, StatusPhase::Deploying, 1, None).await;
    rig.report(&job, StatusPhase::Ready, 1, Some(release(1)))
        .await;
    rig.wait_for("web", "Ready", |c| phase(c) == Some(Phase::Ready))
        .await;
    // Claimed (by the watcher, with the job), Deploying, Ready: each written once, each Event
    // counted as failed.
    assert_eq!(rig.metrics.statuses_applied.get(), 2);
    assert_eq!(rig.metrics.status_retries.get(), 0);
    eventually(DEADLINE, "three events failed", async || {
        match rig.metrics.event_failures.get() {
            3 => Ok(()),
            n => Err(n),
        }
    })
    .await;
    assert!(events_on(&rig, "web").is_empty());
    assert!(dead_letters(&rig).await.is_empty());

    // Back: the next phase is recorded.
    rig.events.set_unavailable(false);
    rig.store.delete("default", "web").unwrap();
    let delete = rig.next_job().await;
    rig.report(&delete, StatusPhase::Terminating, 1, None).await;
    eventually(DEADLINE, "the Terminating event", async || {
        let events = events_on(&rig, "web");
        if events.iter().any(|e| e.1 == "Terminating") {
            Ok(())
        } else {
            Err(events)
        }
    })
    .await;
}

/// The job recorded as issued in `component`'s status.
fn issued(component: &Component) -> IssuedJob {
    component
        .status
        .as_ref()
        .and_then(|s| s.handler_status.as_ref())
        .and_then(|h| h.issued_job.clone())
        .expect("an issued job recorded in the status")
}

/// An event for `target` reporting `phase` of job `job_id`, as a worker (or a forger) would.
fn answer(job_id: &str, target: &ComponentRef, phase: StatusPhase) -> StatusEvent {
    StatusEvent::new(
        job_id,
        target.clone(),
        phase,
        format!("{phase:?}"),
        1,
        "worker-test",
        jiff::Timestamp::now(),
    )
}

#[tokio::test]
async fn the_writer_changes_a_component_only_on_answers_to_the_job_issued_for_it() {
    use StatusPhase::{Claimed, Deploying, Ready, Terminated, Terminating, TerminationFailed};
    let rig = Rig::new(Topology::default()).await;
    let writer = rig.writer();
    let mut watcher = rig.watcher(fast_watcher(), Metrics::default());
    watcher
        .handle(rig.store.create(deployable("web")).unwrap())
        .await
        .unwrap();
    let apply = rig.next_job().await;
    let claimed = rig.store.snapshot("default", "web").unwrap();
    assert_eq!(apply.id, issued(&claimed).id);
    let real = apply.component.clone();
    let uid = real.uid.clone().unwrap();

    // Forgeries and strays change nothing: neither the status nor the finalizers.
    let forged = [
        (
            "the real uid, another job id",
            answer(&format!("{uid}:1:apply:guessed"), &real, Ready),
            Unissued::NotIssued {
                generation: 1,
                action: "apply",
            },
        ),
        (
            "the real uid, the id helmq gave before issued jobs",
            answer(&default_job_id(&real, JobAction::Apply), &real, Ready),
            Unissued::NotIssued {
                generation: 1,
                action: "apply",
            },
        ),
        (
            "no uid (an orchestrator's job naming the Component)",
            answer(
                &apply.id,
                &ComponentRef {
                    uid: None,
                    ..real.clone()
                },
                Ready,
            ),
            Unissued::NoUid,
        ),
        (
            "a generation above metadata.generation",
            answer(
                &apply.id,
                &ComponentRef {
                    generation: 1 << 53,
                    ..real.clone()
                },
                TerminationFailed,
            ),
            Unissued::FutureGeneration {
                event: 1 << 53,
                live: 1,
            },
        ),
        (
            "Terminated for an object that is not being deleted",
            answer(&apply.id, &real, Terminated),
            Unissued::WrongPhase {
                phase: "Terminated",
                action: "apply",
            },
        ),
    ];
    for (name, event, reason) in &forged {
        assert_eq!(
            writer.write(event).await.unwrap(),
            Outcome::Unissued(*reason),
            "{name}"
        );
        assert_eq!(
            rig.store.snapshot("default", "web").as_ref(),
            Some(&claimed),
            "{name}"
        );
    }

    // The protocol: the producer's Claimed and the worker's answers to the issued job.
    for phase in [Claimed, Deploying, Ready] {
        let event = answer(&apply.id, &real, phase).with_release(release(1));
        assert_eq!(
            writer.write(&event).await.unwrap(),
            Outcome::Applied,
            "{phase:?}"
        );
    }
    let ready = rig.store.snapshot("default", "web").unwrap();
    assert_eq!(phase(Some(&ready)), Some(Phase::Ready));
    assert_eq!(observed(Some(&ready)), Some(1));

    // Being deleted: before the delete job is issued, no Terminated removes the finalizer,
    // not even one with the id a tenant could compute.
    rig.store.delete("default", "web").unwrap();
    let deleting = rig.store.snapshot("default", "web").unwrap();
    for (name, job_id) in [
        ("the apply job's id", apply.id.clone()),
        (
            "the default delete id",
            default_job_id(&real, JobAction::Delete),
        ),
    ] {
        let outcome = writer
            .write(&answer(&job_id, &real, Terminated))
            .await
            .unwrap();
        assert!(
            matches!(outcome, Outcome::Unissued(_)),
            "{name}: {outcome:?}"
        );
        assert_eq!(
            rig.store.snapshot("default", "web").as_ref(),
            Some(&deleting),
            "{name}"
        );
    }
    watcher.handle(deleting).await.unwrap();
    let delete = rig.next_job().await;
    assert_eq!(delete.action, JobAction::Delete);
    let recorded = issued(&rig.store.snapshot("default", "web").unwrap());
    assert_eq!(
        (delete.id.as_str(), recorded.action),
        (recorded.id.as_str(), JobAction::Delete)
    );
    assert!(
        delete.id.starts_with(&format!("{uid}:1:delete:")),
        "{}",
        delete.id
    );
    assert_ne!(delete.id, apply.id);
    let event = answer(&delete.id, &real, Terminating);
    assert_eq!(writer.write(&event).await.unwrap(), Outcome::Applied);
    assert_eq!(
        finalizers(rig.store.snapshot("default", "web").as_ref()),
        [HELM_FINALIZER]
    );
    let event = answer(&delete.id, &real, Terminated);
    assert_eq!(writer.write(&event).await.unwrap(), Outcome::Applied);
    assert!(
        rig.store.snapshot("default", "web").is_none(),
        "finalizer removed, object gone"
    );
}

#[tokio::test]
async fn the_issued_job_is_recorded_before_it_is_published_and_reused_by_a_producer_taking_over() {
    let rig = Rig::new(Topology::default()).await;
    // Claimed earlier (our finalizer is on it): the next step is the apply job.
    let created = rig
        .store
        .create(
            component("web")
                .config(nginx_config(serde_json::json!({})))
                .finalizers(&[HELM_FINALIZER])
                .build(),
        )
        .unwrap();
    // The status cannot be written: the job is not issued, so nothing is published.
    rig.store
        .fail_component("default", "web", ErrorClass::Transient);
    let first_metrics = Metrics::default();
    let mut first = rig.watcher(fast_watcher(), first_metrics.clone());
    assert!(first.handle(created).await.is_err());
    assert_eq!(rig.messages_in(JOBS_STREAM).await, 0);
    let unrecorded = rig.store.snapshot("default", "web").unwrap();
    assert!(unrecorded.status.is_none(), "{unrecorded:?}");

    rig.store.clear_failure("default", "web");
    first.handle(unrecorded).await.unwrap();
    let recorded = issued(&rig.store.snapshot("default", "web").unwrap());
    assert_eq!(rig.messages_in(JOBS_STREAM).await, 1);

    // Another producer, which never published anything (a new leader): the same job, whose
    // duplicate the server drops.
    let second_metrics = Metrics::default();
    let mut second = rig.watcher(fast_watcher(), second_metrics.clone());
    second
        .handle(rig.store.snapshot("default", "web").unwrap())
        .await
        .unwrap();
    let duplicates = second_metrics
        .events_published
        .get_or_create(&PublishLabels {
            kind: "apply".into(),
            outcome: "duplicate".into(),
        })
        .get();
    assert_eq!(duplicates, 1);
    assert_eq!(rig.messages_in(JOBS_STREAM).await, 1);
    assert_eq!(
        issued(&rig.store.snapshot("default", "web").unwrap()),
        recorded,
        "the record is not replaced"
    );
    let job = rig.next_job().await;
    assert_eq!(
        (job.id.as_str(), job.dedupe_id()),
        (recorded.id.as_str(), recorded.id.clone())
    );
}

#[tokio::test]
async fn a_crd_that_prunes_the_issued_job_stops_issuing_instead_of_looping() {
    let rig = Rig::new(Topology::default()).await;
    let created = rig
        .store
        .create(
            component("web")
                .config(nginx_config(serde_json::json!({})))
                .finalizers(&[HELM_FINALIZER])
                .build(),
        )
        .unwrap();
    // The cluster's CRD predates `issuedJob`: the API server drops it from every status write.
    rig.store.set_old_crd(true);
    let mut watcher = rig.watcher(fast_watcher(), Metrics::default());
    let error = watcher.handle(created).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("the Component CRD is older than this producer"),
        "{error}"
    );
    assert_eq!(rig.messages_in(JOBS_STREAM).await, 0, "nothing published");
    // Once the CRD is brought up to date, the same Component goes on.
    rig.store.set_old_crd(false);
    watcher
        .handle(rig.store.snapshot("default", "web").unwrap())
        .await
        .unwrap();
    assert_eq!(rig.messages_in(JOBS_STREAM).await, 1);
}

#[tokio::test]
async fn a_writer_reading_a_lagging_cache_applies_every_event_and_drops_none() {
    let rig = Rig::new(Topology::default()).await;
    // Every cached read is one change behind: the writer must notice and read afresh.
    rig.store.set_lagging_cache(true);
    rig.spawn_watcher(fast_watcher());
    rig.spawn_writer();
    rig.store.create(deployable("web")).unwrap();
    let job = rig.next_job().await;
    rig.report(&job, StatusPhase::Deploying, 1, None).await;
    rig.wait_for("web", "Deploying", |c| phase(c) == Some(Phase::Deploying))
        .await;
    rig.report(&job, StatusPhase::Ready, 1, Some(release(1)))
        .await;
    rig.wait_for("web", "Ready", |c| phase(c) == Some(Phase::Ready))
        .await;
    // The stale copies cost conflicts (re-read afresh), never a dropped event.
    assert!(rig.metrics.conflicts.get() >= 1);
    assert_eq!(rig.metrics.unissued_events_dropped.get(), 0);
    assert_eq!(rig.metrics.orphan_events_dropped.get(), 0);
    assert!(dead_letters(&rig).await.is_empty());
}

fn suspended(c: Option<&Component>) -> Option<String> {
    let status = c?.status.as_ref()?;
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == SUSPENDED_CONDITION)?;
    Some(condition.status.clone())
}

/// Publishes `phase` of `job` stamped with its message's stream `sequence`, as a worker does.
async fn report_at(rig: &Rig, job: &JobEvent, phase: StatusPhase, sequence: u64) {
    let event = StatusEvent::new(
        job.id.clone(),
        job.component.clone(),
        phase,
        format!("{phase:?} by the test worker"),
        1,
        "worker-test",
        jiff::Timestamp::now(),
    )
    .for_job_sequence(sequence);
    JetStreamStatus::new(rig.js.clone())
        .publish_status(&event)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_reconcile_request_re_applies_and_a_suspension_holds_spec_changes_until_resumed() {
    let rig = Rig::new(Topology::default()).await;
    rig.spawn_watcher(fast_watcher());
    rig.spawn_writer();
    rig.store
        .create(
            component("web")
                .config(nginx_config(serde_json::json!({})))
                .build(),
        )
        .unwrap();
    let first = rig.next_job().await;
    report_at(&rig, &first, StatusPhase::Ready, 1).await;
    rig.wait_for("web", "Ready", |c| phase(c) == Some(Phase::Ready))
        .await;

    // A reconcile request: the same generation again, as another job.
    rig.store
        .annotate("default", "web", REQUESTED_AT_ANNOTATION, Some("t1"))
        .unwrap();
    let again = rig.next_job().await;
    assert_eq!((again.component.generation, again.refresh), (1, 1));
    assert_ne!(again.id, first.id);
    report_at(&rig, &again, StatusPhase::Deploying, 2).await;
    report_at(&rig, &again, StatusPhase::Ready, 2).await;
    let handled = rig
        .wait_for("web", "the refresh answered", |c| {
            let record = c.and_then(|c| c.status.as_ref()?.handler_status.clone());
            phase(c) == Some(Phase::Ready)
                && record.is_some_and(|r| {
                    r.observed_refresh == Some(1)
                        && r.last_handled_reconcile_at.as_deref() == Some("t1")
                })
        })
        .await;
    assert!(handled.is_some());

    // Suspended: a spec change publishes nothing until the annotation goes.
    rig.store
        .annotate("default", "web", SUSPEND_ANNOTATION, Some("true"))
        .unwrap();
    rig.wait_for("web", "Suspended", |c| {
        suspended(c).as_deref() == Some("True")
    })
    .await;
    rig.store
        .edit_spec("default", "web", |s| {
            s.config = Some(nginx_config(serde_json::json!({"replicaCount": 2})));
        })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        rig.messages_in(JOBS_STREAM).await,
        0,
        "no job while suspended"
    );
    rig.store
        .annotate("default", "web", SUSPEND_ANNOTATION, None)
        .unwrap();
    let resumed = rig.next_job().await;
    assert_eq!((resumed.component.generation, resumed.refresh), (2, 0));
    assert_eq!(resumed.config.values["replicaCount"], 2);
    rig.wait_for("web", "not suspended", |c| {
        suspended(c).as_deref() == Some("False")
    })
    .await;
}

#[tokio::test]
async fn a_change_of_a_labelled_values_source_re_applies_the_components_reading_it() {
    use helmq_schemas::config::ValuesKind;

    let rig = Rig::new(Topology::default()).await;
    // No resync during the test: only the source's change may apply it again.
    rig.spawn_watcher(WatcherConfig {
        resync_interval: Duration::from_secs(3600),
        ..fast_watcher()
    });
    rig.spawn_writer();
    let mut config = nginx_config(serde_json::json!({}));
    config["valuesFrom"] = serde_json::json!([{"kind": "ConfigMap", "name": "web-values"}]);
    rig.store
        .create(component("web").config(config).build())
        .unwrap();
    rig.store
        .create(
            component("other")
                .config(nginx_config(serde_json::json!({})))
                .build(),
        )
        .unwrap();
    let mut first = Vec::new();
    for _ in 0..2 {
        let job = rig.next_job().await;
        report_at(&rig, &job, StatusPhase::Ready, 1).await;
        first.push(job);
    }
    for name in ["web", "other"] {
        rig.wait_for(name, "Ready", |c| phase(c) == Some(Phase::Ready))
            .await;
    }

    // Another object of the same name elsewhere, or of the other kind, changes nothing.
    rig.store
        .touch_source(ValuesKind::Secret, "default", "web-values");
    rig.store
        .touch_source(ValuesKind::ConfigMap, "elsewhere", "web-values");
    rig.store
        .touch_source(ValuesKind::ConfigMap, "default", "web-values");
    let again = rig.next_job().await;
    assert_eq!(again.component.name, "web");
    assert_eq!((again.component.generation, again.refresh), (1, 1));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        rig.messages_in(JOBS_STREAM).await,
        0,
        "only web is applied again"
    );
}

#[tokio::test]
async fn a_resync_reads_the_values_sources_of_ready_components_and_of_those_missing_one() {
    use helmq_schemas::config::MISSING_SOURCE;

    let rig = Rig::new(Topology::default()).await;
    rig.spawn_watcher(fast_watcher());
    rig.spawn_writer();
    let mut config = nginx_config(serde_json::json!({}));
    config["valuesFrom"] = serde_json::json!([{"kind": "Secret", "name": "db"}]);
    for name in ["missing", "broken", "plain"] {
        let config = if name == "plain" {
            nginx_config(serde_json::json!({}))
        } else {
            config.clone()
        };
        rig.store
            .create(component(name).config(config).build())
            .unwrap();
    }
    let mut jobs = Vec::new();
    for _ in 0..3 {
        jobs.push(rig.next_job().await);
    }
    for job in &jobs {
        let message = match job.component.name.as_str() {
            "missing" => {
                format!("valuesFrom[0]: Secret default/db not found ({MISSING_SOURCE}: ...)")
            }
            "broken" => "helm upgrade failed: Error: chart not found".to_owned(),
            _ => String::new(),
        };
        let phase = if message.is_empty() {
            StatusPhase::Ready
        } else {
            StatusPhase::Failed
        };
        rig.report_with(job, phase, 1, None, &message).await;
    }
    // At the next resync: the one missing a source is tried again; neither the one failing for
    // another reason nor the one without valuesFrom.
    let again = rig.next_job().await;
    assert_eq!(
        (again.component.name.as_str(), again.refresh),
        ("missing", 1)
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(rig.messages_in(JOBS_STREAM).await, 0);
}

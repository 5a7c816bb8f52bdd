//! Helpers shared by the worker's integration tests: a real nats-server with the helmq
//! topology, jobs, reading back status events and dead letters, polling with a deadline.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use async_nats::jetstream::{self, Context};
use helmq_queue::dlq::{DeadLetter, read_stored};
use helmq_queue::topology::{DLQ_STREAM, JOBS_STREAM, STATUS_STREAM, WORKERS_CONSUMER};
use helmq_queue::{JetStreamQueue, JetStreamStatus, JobQueue, Topology};
use helmq_schemas::config::{ChartRef, Repository};
use helmq_schemas::event::{ComponentRef, JobAction, JobEvent, StatusEvent, StatusPhase};
use helmq_schemas::{ChartSource, HelmConfig};
use helmq_tests::NatsServer;
use helmq_worker::{HelmDriver, Settings};

pub struct Env {
    pub server: NatsServer,
    pub client: async_nats::Client,
    pub js: Context,
}

impl Env {
    pub async fn start(topology: Topology) -> Env {
        let server = NatsServer::start();
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = jetstream::new(client.clone());
        topology.ensure(&js).await.unwrap();
        Env { server, client, js }
    }

    /// A server with [`fast_topology`] but for the workers' consumer's `ack_wait`.
    pub async fn with_ack_wait(ack_wait: Duration) -> Env {
        Env::start(Topology {
            ack_wait,
            ..fast_topology()
        })
        .await
    }

    pub async fn publish(&self, job: &JobEvent) {
        JetStreamQueue::new(self.js.clone())
            .publish_job(job)
            .await
            .unwrap();
    }

    pub async fn publish_raw(&self, subject: &str, payload: Vec<u8>) {
        self.js
            .publish(subject.to_owned(), payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    pub async fn statuses(&self) -> Vec<StatusEvent> {
        read_all(&self.js, STATUS_STREAM)
            .await
            .into_iter()
            .map(|(_, _, payload)| StatusEvent::decode(&payload).unwrap())
            .collect()
    }

    pub async fn dead_letters(&self) -> Vec<DeadLetter> {
        read_all(&self.js, DLQ_STREAM)
            .await
            .into_iter()
            .map(|(seq, headers, payload)| read_stored(seq, Some(&headers), payload).letter)
            .collect()
    }

    pub async fn jobs_left(&self) -> u64 {
        let mut stream = self.js.get_stream(JOBS_STREAM).await.unwrap();
        stream.info().await.unwrap().state.messages
    }

    /// Waits until the jobs stream is empty: a job's ack is sent after its outcome is stored,
    /// without waiting for the server, so it lands a moment after the status can be read.
    pub async fn no_jobs_left(&self) {
        eventually(
            std::time::Duration::from_secs(20),
            "no jobs left",
            || async { (self.jobs_left().await == 0).then_some(()) },
        )
        .await;
    }

    pub async fn ack_pending(&self) -> usize {
        let stream = self.js.get_stream(JOBS_STREAM).await.unwrap();
        stream
            .consumer_info(WORKERS_CONSUMER)
            .await
            .unwrap()
            .num_ack_pending
    }

    /// Like [`statuses`](Self::statuses), `None` instead of a panic when the server cannot be
    /// asked (it is down, or this client has not reconnected yet).
    pub async fn try_statuses(&self) -> Option<Vec<StatusEvent>> {
        let mut stream = self.js.get_stream(STATUS_STREAM).await.ok()?;
        let state = stream.info().await.ok()?.state.clone();
        let mut out = Vec::new();
        if state.messages == 0 {
            return Some(out);
        }
        for seq in state.first_sequence..=state.last_sequence {
            let m = stream.get_raw_message(seq).await.ok()?;
            out.push(StatusEvent::decode(&m.payload).ok()?);
        }
        Some(out)
    }

    /// Jobs in the stream and jobs delivered but not acked, `None` when the server cannot be
    /// asked.
    pub async fn try_jobs_and_pending(&self) -> Option<(u64, usize)> {
        let mut stream = self.js.get_stream(JOBS_STREAM).await.ok()?;
        let messages = stream.info().await.ok()?.state.messages;
        let pending = stream
            .consumer_info(WORKERS_CONSUMER)
            .await
            .ok()?
            .num_ack_pending;
        Some((messages, pending))
    }

    /// Status events of one Component with a given phase.
    pub async fn phases(&self, name: &str, phase: StatusPhase) -> Vec<StatusEvent> {
        self.statuses()
            .await
            .into_iter()
            .filter(|s| s.component.name == name && s.phase == phase)
            .collect()
    }

    /// Status events of every Component with a given phase.
    pub async fn phases_all(&self, phase: StatusPhase) -> Vec<StatusEvent> {
        self.statuses()
            .await
            .into_iter()
            .filter(|s| s.phase == phase)
            .collect()
    }

    /// Runs an in-process pool until it is stopped.
    pub async fn pool<D: HelmDriver>(&self, driver: D, settings: Settings) -> Pool {
        let client = async_nats::connect(self.server.url()).await.unwrap();
        Pool::spawn(client, driver, settings, JetStreamStatus::new)
    }
}

pub type Pool = helmq_worker::SpawnedPool;

async fn read_all(js: &Context, stream: &str) -> Vec<(u64, async_nats::HeaderMap, bytes::Bytes)> {
    let mut stream = js.get_stream(stream).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push((seq, m.headers, m.payload));
        }
    }
    out
}

/// Polls a check until it holds, or panics with `what` after a limit (shared by every crate's
/// tests).
pub use helmq_tests::wait::eventually;

pub fn fast_topology() -> Topology {
    Topology {
        lease_ttl: Duration::from_secs(3),
        ..Topology::default()
    }
}

pub fn settings(id: &str) -> Settings {
    let mut settings = Settings::new(id);
    settings.retry.min = Duration::from_millis(100);
    settings.retry.max = Duration::from_secs(1);
    settings.fetch_expires = Duration::from_millis(500);
    settings
}

pub fn config(release: &str, namespace: &str) -> HelmConfig {
    let mut values = serde_json::Map::new();
    values.insert("password".into(), "hunter2-secret".into());
    HelmConfig {
        release_name: release.into(),
        release_namespace: namespace.into(),
        manage_namespace: true,
        source: ChartSource::Http {
            repository: Repository {
                url: "https://charts.example.com/stable".into(),
                name: "example".into(),
            },
            chart: ChartRef {
                name: "nginx".into(),
                version: "1.2.3".into(),
            },
        },
        values,
        values_from: Vec::new(),
        service_account_name: None,
        adopt: false,
        remediation: Default::default(),
        test: Default::default(),
        drift: Default::default(),
    }
}

pub fn job(name: &str, generation: i64, action: JobAction, config: HelmConfig) -> JobEvent {
    JobEvent::new(
        action,
        ComponentRef {
            namespace: "team".into(),
            name: name.into(),
            uid: Some(helmq_tests::build::uid(name)),
            generation,
        },
        config,
        30,
        jiff::Timestamp::now(),
    )
}

pub fn apply(name: &str, generation: i64, release: &str) -> JobEvent {
    job(name, generation, JobAction::Apply, config(release, "apps"))
}

pub fn fake_helm() -> std::path::PathBuf {
    // This crate's own manifest dir: the fixture belongs to this checkout.
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/fake-helm")
}

/// The fake kubectl of tests/fixtures.
pub fn fake_kubectl() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/fake-kubectl")
}

/// The worker's own identity (single-tenant mode), for driver calls in tests.
pub static WORKER: helmq_worker::ownership::Identity = helmq_worker::ownership::Identity::Worker;

/// `release` in `namespace`, called with the worker's own rights.
pub fn target<'a>(release: &'a str, namespace: &'a str) -> helmq_worker::driver::Target<'a> {
    helmq_worker::driver::Target {
        release,
        namespace,
        identity: &WORKER,
    }
}

/// The owner the driver tests stamp on what they create.
pub fn owner() -> helmq_worker::ownership::Owner {
    helmq_worker::ownership::Owner {
        namespace: "team".into(),
        name: "web".into(),
        uid: "00000000-0000-4000-8000-000000000001".into(),
    }
}

/// The owner labels `job` stamps on its release: a release set up by hand with them is one
/// the job's Component installed.
pub fn owner_labels(job: &JobEvent) -> std::collections::BTreeMap<String, String> {
    helmq_worker::ownership::Owner::of(job)
        .labels()
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

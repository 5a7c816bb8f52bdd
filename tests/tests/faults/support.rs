//! What the fault scenarios share: a real nats-server with the helmq topology and the status
//! writer over the in-memory API server ([`Stack`]), a Helm driver with random latency that
//! records every run ([`RecordingDriver`]) for in-process pools, `helmq-worker` processes in
//! their own process groups running the fake helm ([`WorkerProcess`], [`fake_helm_runs`]), and
//! the load (Components created in the API server first, then their jobs).

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, Context};
use futures::StreamExt as _;
use helmq_producer::metrics::Metrics as ProducerMetrics;
use helmq_producer::store::fake::{FakeComponentStore, FakeEventStore};
use helmq_producer::store::{Change, ComponentStore as _};
use helmq_producer::writer::apply::stored_position;
use helmq_producer::writer::{WriterConfig, spawn_test_writer};
use helmq_queue::topology::{DLQ_STREAM, JOBS_STREAM, STATUS_STREAM, WORKERS_CONSUMER};
use helmq_queue::{
    JetStreamQueue, JetStreamStatus, JobQueue as _, PublishError, StatusSink, Topology,
};
use helmq_schemas::HelmConfig;
use helmq_schemas::component::{Component, ComponentSpec, Phase};
use helmq_schemas::config::ValuesKind;
use helmq_schemas::event::{ComponentRef, JobAction, JobEvent, Position, StatusEvent};
use helmq_tests::NatsServer;
use helmq_tests::faults::Run;
use helmq_worker::drift::ObjectState;
use helmq_worker::driver::{
    Apply, DriverError, HelmDriver, NamespaceDeletion, Release, Revision, Target, Uninstalled,
};
use helmq_worker::failure::Cause;
use helmq_worker::ownership::{Identity, Owner};
use helmq_worker::values::SourceData;
use helmq_worker::{MemoryDriver, Settings};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Namespace of the Components.
pub const NAMESPACE: &str = "team";
/// Namespace of the releases.
pub const RELEASE_NAMESPACE: &str = "apps";
/// The chart repository every job installs from.
pub const REPOSITORY: &str = "https://charts.example.com/stable";

/// Seconds since the Unix epoch, as the fake helm writes them.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The values that tell a recording driver (or the fake helm) which job a run belongs to.
pub fn fault_values(uid: &str, generation: i64) -> Value {
    json!({"fault": {"uid": uid, "generation": generation}})
}

/// `spec.config` of a Component whose release is `release`.
pub fn config_json(release: &str, values: Value) -> Value {
    json!({
        "releaseName": release,
        "releaseNamespace": RELEASE_NAMESPACE,
        "source": {"type": "http",
            "repository": {"url": REPOSITORY, "name": "example"},
            "chart": {"name": "nginx", "version": "1.2.3"}},
        "values": values,
    })
}

/// The apply job of `component` (at its current generation) for `release`, its values naming
/// the job.
pub fn apply_job(component: &Component, release: &str) -> JobEvent {
    let name = component.metadata.name.clone().unwrap_or_default();
    let uid = component.metadata.uid.clone().unwrap_or_default();
    let generation = component.metadata.generation.unwrap_or(1);
    let config = config_json(release, fault_values(&uid, generation));
    JobEvent::new(
        JobAction::Apply,
        ComponentRef {
            namespace: NAMESPACE.into(),
            name: name.clone(),
            uid: Some(uid),
            generation,
        },
        HelmConfig::parse(Some(&config), NAMESPACE, &name).expect("a valid config"),
        60,
        jiff::Timestamp::now(),
    )
}

/// Reads `fault.uid`/`fault.generation` out of a run's values.
fn job_of(values: &serde_json::Map<String, Value>) -> (String, i64) {
    let fault = values.get("fault");
    (
        fault
            .and_then(|f| f["uid"].as_str())
            .unwrap_or_default()
            .to_owned(),
        fault.and_then(|f| f["generation"].as_i64()).unwrap_or(0),
    )
}

/// The runs recorded so far, shared by every [`RecordingDriver`] of a scenario.
#[derive(Debug, Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<Run>>>);

impl Recorder {
    /// Every run so far.
    pub fn runs(&self) -> Vec<Run> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn push(&self, run: Run) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(run);
    }
}

/// A [`HelmDriver`] for in-process pools: Helm in memory ([`MemoryDriver`], whose clones share
/// the releases, as workers share a cluster), every mutating call first waits a random
/// 50–500 ms (cancellable), and every run is recorded with its job, worker, start and end.
#[derive(Debug, Clone)]
pub struct RecordingDriver {
    /// The shared in-memory Helm.
    pub inner: MemoryDriver,
    /// The worker this driver belongs to.
    pub worker: String,
    /// Where runs go.
    pub recorder: Recorder,
}

impl RecordingDriver {
    /// A driver for `worker` over `inner`, recording into `recorder`.
    pub fn new(inner: &MemoryDriver, worker: &str, recorder: &Recorder) -> Self {
        RecordingDriver {
            inner: inner.clone(),
            worker: worker.into(),
            recorder: recorder.clone(),
        }
    }

    async fn recorded<T>(
        &self,
        action: &str,
        release: String,
        job: (String, i64),
        cancel: &CancellationToken,
        call: impl Future<Output = Result<T, DriverError>>,
    ) -> Result<T, DriverError> {
        let start = now();
        let latency = Duration::from_millis(fastrand::u64(50..=500));
        let result = tokio::select! {
            () = cancel.cancelled() => Err(DriverError::Cancelled {
                tool: helmq_worker::driver::Tool::Helm,
                command: action.into(),
            }),
            () = tokio::time::sleep(latency) => call.await,
        };
        // Helm refused before it wrote anything (the name in use, another operation): not a run.
        if let Err(error) = &result
            && matches!(
                error.cause(),
                Some(Cause::NameInUse | Cause::AnotherOperation)
            )
        {
            return result;
        }
        self.recorder.push(Run {
            release,
            uid: job.0,
            generation: job.1,
            action: action.into(),
            worker: self.worker.clone(),
            start,
            end: now(),
            completed: !matches!(result, Err(DriverError::Cancelled { .. })),
        });
        result
    }
}

impl HelmDriver for RecordingDriver {
    fn grace(&self) -> Duration {
        self.inner.grace()
    }

    async fn apply(
        &self,
        request: Apply<'_>,
        cancel: &CancellationToken,
    ) -> Result<Release, DriverError> {
        let config = request.config;
        let release = format!("{}/{}", config.release_namespace, config.release_name);
        let job = job_of(&config.values);
        self.recorded(
            "apply",
            release,
            job,
            cancel,
            self.inner.apply(request, cancel),
        )
        .await
    }

    async fn uninstall(
        &self,
        target: Target<'_>,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<Uninstalled, DriverError> {
        self.recorded(
            "uninstall",
            target.describe(),
            (String::new(), 0),
            cancel,
            self.inner.uninstall(target, timeout, cancel),
        )
        .await
    }

    async fn status(
        &self,
        target: Target<'_>,
        cancel: &CancellationToken,
    ) -> Result<Option<Release>, DriverError> {
        self.inner.status(target, cancel).await
    }

    async fn labels(
        &self,
        target: Target<'_>,
        revision: i64,
        cancel: &CancellationToken,
    ) -> Result<BTreeMap<String, String>, DriverError> {
        self.inner.labels(target, revision, cancel).await
    }

    async fn history(
        &self,
        target: Target<'_>,
        cancel: &CancellationToken,
    ) -> Result<Vec<Revision>, DriverError> {
        self.inner.history(target, cancel).await
    }

    async fn test(
        &self,
        target: Target<'_>,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<(), DriverError> {
        self.inner.test(target, timeout, cancel).await
    }

    async fn rollback(
        &self,
        target: Target<'_>,
        revision: i64,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<(), DriverError> {
        self.recorded(
            "rollback",
            target.describe(),
            (String::new(), 0),
            cancel,
            self.inner.rollback(target, revision, timeout, cancel),
        )
        .await
    }

    async fn values_source(
        &self,
        kind: ValuesKind,
        name: &str,
        namespace: &str,
        identity: &Identity,
        cancel: &CancellationToken,
    ) -> Result<SourceData, DriverError> {
        self.inner
            .values_source(kind, name, namespace, identity, cancel)
            .await
    }

    async fn drift_states(
        &self,
        target: Target<'_>,
        cancel: &CancellationToken,
    ) -> Result<Vec<ObjectState>, DriverError> {
        self.inner.drift_states(target, cancel).await
    }

    async fn reapply(
        &self,
        target: Target<'_>,
        objects: &[Value],
        cancel: &CancellationToken,
    ) -> Result<(), DriverError> {
        self.inner.reapply(target, objects, cancel).await
    }

    async fn delete_namespace(
        &self,
        namespace: &str,
        identity: &Identity,
        owner: &Owner,
        cancel: &CancellationToken,
    ) -> Result<NamespaceDeletion, DriverError> {
        self.inner
            .delete_namespace(namespace, identity, owner, cancel)
            .await
    }
}

/// A [`StatusSink`] that keeps the events instead of publishing them (to publish them later,
/// as the scenario wants).
#[derive(Debug, Clone, Default)]
pub struct CapturingSink(Arc<Mutex<Vec<StatusEvent>>>);

impl CapturingSink {
    /// Every event so far.
    pub fn events(&self) -> Vec<StatusEvent> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl StatusSink for CapturingSink {
    async fn publish_status(&self, event: &StatusEvent) -> Result<(), PublishError> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event.clone());
        Ok(())
    }
}

/// Worker settings for the suite: short retries and fetches.
pub fn settings(id: &str) -> Settings {
    let mut settings = Settings::new(id);
    settings.retry.min = Duration::from_millis(100);
    settings.retry.max = Duration::from_secs(1);
    settings.fetch_expires = Duration::from_millis(500);
    // The scenarios' Components share releases, to contend for their leases.
    settings.allow_shared_releases = true;
    settings
}

/// An in-process worker pool.
#[derive(Debug)]
pub struct Pool(helmq_worker::SpawnedPool);

impl Pool {
    /// Starts a pool connected to `url` (one URL or a comma-separated list of a cluster's nodes)
    /// over `driver`, publishing status events through `sink`
    /// (`None`: to `HELMQ_STATUS`).
    pub async fn start<D: HelmDriver, S: StatusSink + 'static>(
        url: &str,
        driver: D,
        settings: Settings,
        sink: impl FnOnce(Context) -> S,
    ) -> Pool {
        let client = helmq_queue::connect(&helmq_queue::NatsArgs::with_url(url), "faults pool")
            .await
            .expect("connect the pool");
        Pool(helmq_worker::SpawnedPool::spawn(
            client, driver, settings, sink,
        ))
    }

    /// Stops the pool (draining it).
    pub async fn stop(self) {
        self.0.stop().await;
    }
}

/// Starts the status writer over `store` on `js` with the suite's short fetches and retries;
/// cancel the token to stop it.
pub fn spawn_writer(
    store: FakeComponentStore,
    js: Context,
    metrics: ProducerMetrics,
) -> (CancellationToken, JoinHandle<()>) {
    let config = WriterConfig {
        max_retry_delay: Duration::from_millis(500),
        ..WriterConfig::fast()
    };
    let stop = CancellationToken::new();
    let writer = spawn_test_writer(
        store,
        FakeEventStore::new(),
        js,
        config,
        metrics,
        stop.clone(),
    );
    let task = tokio::spawn(async move {
        writer
            .await
            .expect("the writer panicked")
            .expect("the writer stopped with an error");
    });
    (stop, task)
}

/// The status sink on JetStream, for [`Pool::start`].
pub fn jetstream_sink(js: Context) -> JetStreamStatus {
    JetStreamStatus::new(js)
}

/// Status positions written per Component, in order.
type Positions = Arc<Mutex<BTreeMap<String, Vec<Position>>>>;

/// A nats-server with the topology, the in-memory API server, the status writer over it (when
/// started) and a watch recording every status position written per Component.
pub struct Stack {
    pub server: NatsServer,
    pub js: Context,
    pub store: FakeComponentStore,
    /// The writer's counters (shared by every writer started), for the scenarios to print.
    pub metrics: ProducerMetrics,
    writer: Option<(CancellationToken, JoinHandle<()>)>,
    positions: Positions,
    watch: JoinHandle<()>,
}

impl Stack {
    /// Starts a server (`args` passed to it) with `topology`, and the watch; not the writer.
    pub async fn start(topology: &Topology) -> Stack {
        Stack::on(NatsServer::start(), topology).await
    }

    /// The same on a server already started.
    pub async fn on(server: NatsServer, topology: &Topology) -> Stack {
        let client = async_nats::connect(server.url()).await.expect("connect");
        let js = jetstream::new(client);
        topology.ensure(&js).await.expect("topology");
        let store = FakeComponentStore::new();
        let positions = Positions::default();
        let mut changes = store.changes();
        let seen = positions.clone();
        let watch = tokio::spawn(async move {
            while let Some(change) = changes.next().await {
                if let Change::Applied(component) = change {
                    let Some(position) = component.status.as_ref().and_then(stored_position) else {
                        continue;
                    };
                    let name = component.metadata.name.clone().unwrap_or_default();
                    let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
                    let list = seen.entry(name).or_default();
                    // A re-listing repeats the current position: not a write.
                    if list.last() != Some(&position) {
                        list.push(position);
                    }
                }
            }
        });
        Stack {
            server,
            js,
            store,
            metrics: ProducerMetrics::default(),
            writer: None,
            positions,
            watch,
        }
    }

    /// Starts the status writer (a new one: as after a restart).
    pub async fn start_writer(&mut self) {
        assert!(self.writer.is_none(), "the writer runs already");
        let client = async_nats::connect(self.server.url())
            .await
            .expect("connect the writer");
        let (stop, task) = spawn_writer(
            self.store.clone(),
            jetstream::new(client),
            self.metrics.clone(),
        );
        self.writer = Some((stop, task));
    }

    /// Whether the writer was started and has not stopped.
    pub fn writer_running(&self) -> bool {
        self.writer
            .as_ref()
            .is_some_and(|(_, task)| !task.is_finished())
    }

    /// Stops the status writer and waits for it.
    pub async fn stop_writer(&mut self) {
        if let Some((stop, task)) = self.writer.take() {
            stop.cancel();
            task.await.expect("writer task");
        }
    }

    /// Creates `count` Components named `c0000`.. whose config names release `release(i)`.
    pub fn create_components(
        &self,
        count: usize,
        release: impl Fn(usize) -> String,
    ) -> Vec<Component> {
        (0..count)
            .map(|i| {
                let name = format!("c{i:04}");
                let mut component = Component::new(
                    &name,
                    ComponentSpec {
                        name: name.clone(),
                        handler: "helm".into(),
                        config: Some(config_json(&release(i), json!({}))),
                        deployment_timeout: None,
                        termination_timeout: None,
                    },
                );
                component.metadata.namespace = Some(NAMESPACE.into());
                self.store.create(component).expect("create a Component")
            })
            .collect()
    }

    /// A user edits a Component's spec: its generation goes up by one.
    pub fn bump(&self, component: &Component) -> Component {
        let name = component.metadata.name.clone().unwrap_or_default();
        // A value no earlier generation had: an unchanged spec would keep the generation.
        let next = component.metadata.generation.unwrap_or(1) + 1;
        let edited = self
            .store
            .edit_spec(NAMESPACE, &name, |spec| {
                spec.deployment_timeout = Some(format!("{next}m"));
            })
            .expect("edit a Component");
        assert_eq!(
            edited.metadata.generation,
            Some(next),
            "the edit bumped the generation"
        );
        edited
    }

    /// Publishes a job as the producer does (with its dedupe id).
    pub async fn publish(&self, job: &JobEvent) {
        JetStreamQueue::new(self.js.clone())
            .publish_job(job)
            .await
            .expect("publish a job");
    }

    /// Every status event in `HELMQ_STATUS` (`None` while the server cannot be asked).
    pub async fn statuses(&self) -> Option<Vec<StatusEvent>> {
        read_stream(&self.js, STATUS_STREAM).await.map(|all| {
            all.iter()
                .filter_map(|p| StatusEvent::decode(p).ok())
                .collect()
        })
    }

    /// Dead letters stored.
    pub async fn dead_letters(&self) -> Option<u64> {
        let mut stream = self.js.get_stream(DLQ_STREAM).await.ok()?;
        Some(stream.info().await.ok()?.state.messages)
    }

    /// Jobs in the stream (unacked ones included), and total deliveries of the workers'
    /// consumer.
    pub async fn jobs_and_deliveries(&self) -> Option<(u64, u64)> {
        let mut stream = self.js.get_stream(JOBS_STREAM).await.ok()?;
        let messages = stream.info().await.ok()?.state.messages;
        let consumer = stream.consumer_info(WORKERS_CONSUMER).await.ok()?;
        Some((messages, consumer.delivered.consumer_sequence))
    }

    /// Components whose status is not `Ready` at `generation` from an event of that
    /// generation, with what they show.
    pub async fn not_converged(&self, want: &HashMap<String, i64>) -> Vec<String> {
        let mut out = Vec::new();
        for (name, generation) in want {
            // Read past any injected API fault: this is the test looking, not a client.
            let component = self.store.snapshot(NAMESPACE, name);
            let status = component.and_then(|c| c.status);
            let ok = status.as_ref().is_some_and(|s| {
                s.phase == Some(Phase::Ready)
                    && s.observed_generation == Some(*generation)
                    && stored_position(s).map(|p| p.generation) == Some(*generation)
            });
            if !ok {
                out.push(format!(
                    "{name}: {:?} observed {:?} at {:?}",
                    status.as_ref().and_then(|s| s.phase),
                    status.as_ref().and_then(|s| s.observed_generation),
                    status.as_ref().and_then(stored_position)
                ));
            }
        }
        out.sort();
        out
    }

    /// The writer consumer's pending, ack-pending and redelivered counts.
    pub async fn writer_state(&self) -> Option<(u64, usize, usize)> {
        let stream = self.js.get_stream(STATUS_STREAM).await.ok()?;
        let c = stream
            .consumer_info(helmq_queue::topology::WRITER_CONSUMER)
            .await
            .ok()?;
        Some((c.num_pending, c.num_ack_pending, c.num_redelivered))
    }

    /// Waits until no job is left in the stream, every Component in `want` shows its
    /// generation and the writer has read everything; panics after `limit`.
    pub async fn settled(&self, want: &HashMap<String, i64>, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let jobs_left = self.jobs_and_deliveries().await.map(|(left, _)| left);
            let converged = self.not_converged(want).await;
            if jobs_left == Some(0) && converged.is_empty() && self.writer_idle().await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not settled: jobs {jobs_left:?}, {converged:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Whether the writer has nothing left to read or ack.
    pub async fn writer_idle(&self) -> bool {
        self.writer_state()
            .await
            .is_some_and(|(pending, ack_pending, _)| pending == 0 && ack_pending == 0)
    }

    /// Every status position written per Component so far, in order.
    pub fn positions(&self) -> BTreeMap<String, Vec<Position>> {
        self.positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops the writer and the watch.
    pub async fn stop(mut self) {
        self.stop_writer().await;
        self.watch.abort();
    }
}

/// Every payload of a stream (`None` while the server cannot be asked).
pub async fn read_stream(js: &Context, name: &str) -> Option<Vec<bytes::Bytes>> {
    let mut stream = js.get_stream(name).await.ok()?;
    let state = stream.info().await.ok()?.state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return Some(out);
    }
    for seq in state.first_sequence..=state.last_sequence {
        match stream.get_raw_message(seq).await {
            Ok(m) => out.push(m.payload),
            // Deleted (a work queue's acked message): skip.
            Err(_) => continue,
        }
    }
    Some(out)
}

/// The `(uid, generation)` of each job.
pub fn job_keys(jobs: &[JobEvent]) -> Vec<(String, i64)> {
    jobs.iter()
        .map(|j| {
            (
                j.component.uid.clone().unwrap_or_default(),
                j.component.generation,
            )
        })
        .collect()
}

/// Median and maximum of some seconds, as text.
pub fn spread(mut seconds: Vec<f64>) -> String {
    if seconds.is_empty() {
        return "none".into();
    }
    seconds.sort_by(f64::total_cmp);
    format!(
        "median {:.1} s, max {:.1} s",
        seconds[seconds.len() / 2],
        seconds[seconds.len() - 1]
    )
}

/// The fake helm of tests/fixtures.
pub fn fake_helm() -> PathBuf {
    helmq_tests::workspace_root().join("tests/fixtures/fake-helm")
}

/// Why worker processes cannot run here, if they cannot: no `helmq-worker` built, or no
/// python3 for the fake helm.
pub fn processes_unavailable() -> Option<String> {
    let worker = helmq_tests::binaries_dir().join("helmq-worker");
    if !worker.is_file() {
        return Some(format!(
            "{} is not built (run `cargo build --bins`; `just faults` does)",
            worker.display()
        ));
    }
    let python = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !python.is_ok_and(|s| s.success()) {
        return Some("no python3 for the fake helm".into());
    }
    None
}

/// A `helmq-worker` process in its own process group, running the fake helm.
#[derive(Debug)]
pub struct WorkerProcess {
    /// Its id (`HELMQ_WORKER_ID`): one per incarnation, as pods are named.
    pub id: String,
    child: Child,
}

impl WorkerProcess {
    /// Starts worker `id` against `url`; the fake helm keeps its state in `dir/helm-state`
    /// and takes `sleep` seconds (`LOW-HIGH`: random) per mutating run.
    pub fn spawn(url: &str, dir: &Path, id: &str, sleep: &str) -> WorkerProcess {
        use std::os::unix::process::CommandExt as _;
        let state = dir.join("helm-state");
        std::fs::create_dir_all(state.join("control")).expect("helm state dir");
        // helm runs with a cleared environment: the fake's settings go through a wrapper.
        let helm = dir.join(format!("helm-{id}"));
        helmq_tests::write_fake_helm_wrapper(&helm, &fake_helm(), id, &state, sleep)
            .expect("helm wrapper");
        let kubectl = dir.join(format!("kubectl-{id}"));
        let fake_kubectl = helmq_tests::workspace_root().join("tests/fixtures/fake-kubectl");
        helmq_tests::write_fake_kubectl_wrapper(&kubectl, &fake_kubectl, &state)
            .expect("kubectl wrapper");
        let log = std::fs::File::create(dir.join(format!("{id}.log"))).expect("worker log");
        let child = Command::new(helmq_tests::binaries_dir().join("helmq-worker"))
            .args(["--nats-url", url, "--listen", "127.0.0.1:0"])
            .arg("--helm-bin")
            .arg(&helm)
            .arg("--cache-dir")
            .arg(dir.join(format!("cache-{id}")))
            .args(["--retry-min-delay", "100ms", "--retry-max-delay", "1s"])
            .args(["--allowed-sources", REPOSITORY])
            .args(["--allowed-namespaces", RELEASE_NAMESPACE])
            .args(["--concurrency", "8"])
            // The scenarios' Components share releases, to contend for their leases.
            .arg("--allow-shared-releases")
            // The scenarios' leases live a few seconds: a cancelled helm gets one.
            .args(["--helm-grace", "1s"])
            // The fake kubectl reads the fake helm's records: owner labels and lease stamps.
            .arg("--kubectl-bin")
            .arg(&kubectl)
            .env("HELMQ_WORKER_ID", id)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own group: killing the group kills helm with it, as a pod dies whole.
            .process_group(0)
            .spawn()
            .expect("start helmq-worker");
        WorkerProcess {
            id: id.into(),
            child,
        }
    }

    /// Its process id.
    pub fn pid(&mut self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILLs the worker with everything it started, as a pod dies: its helm runs in process
    /// groups of their own (so the worker can stop them), so their groups are killed first,
    /// then the worker's group; reaps the worker and returns when that happened.
    pub fn kill_group(&mut self) -> f64 {
        use nix::sys::signal::{Signal, killpg};
        use nix::unistd::Pid;
        let worker = self.child.id();
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            // Already reaped (killed before, or dropped after a kill): its pid may belong to
            // another process by now.
            return now();
        }
        // Frozen first, so that it cannot start a helm between the scan below and its own
        // death: a helm forked in that gap would outlive it and run on, orphaned (found by CI:
        // an upgrade "of" a worker that had died 2 s before it started), which a pod's death
        // never allows.
        let _ = nix::sys::signal::kill(Pid::from_raw(worker as i32), Signal::SIGSTOP);
        let deadline = std::time::Instant::now() + Duration::from_millis(500);
        while !helmq_tests::procfs::is_stopped_or_gone(worker)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        for pid in descendants(worker) {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let _ = killpg(Pid::from_raw(worker as i32), Signal::SIGKILL);
        let _ = self.child.wait();
        now()
    }
}

/// Every process below `root` (children, their children, ...).
fn descendants(root: u32) -> Vec<u32> {
    let all = helmq_tests::procfs::processes();
    helmq_tests::procfs::tree(root, &all)
        .into_iter()
        .skip(1)
        .map(|p| p.pid)
        .collect()
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// The runs the fake helm recorded in `state` (`starts.log`, `timeline.log`). A run that
/// started and never wrote its end was killed: it ends at `killed[worker]` when its worker was
/// killed after it started, else it is taken as running for ever (so any later run on its
/// release shows as an overlap).
pub fn fake_helm_runs(state: &Path, killed: &HashMap<String, f64>) -> Vec<Run> {
    let read = |name: &str| -> Vec<Value> {
        std::fs::read_to_string(state.join(name))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    // A run is its pid and start (pids are reused over a long run).
    // A run that stopped because its worker died or stopped it did not run to its end.
    let ends: HashMap<(i64, u64), (f64, bool)> = read("timeline.log")
        .iter()
        .filter_map(|r| {
            Some((
                (r["pid"].as_i64()?, r["start"].as_f64()?.to_bits()),
                (
                    r["end"].as_f64()?,
                    r["parent_died"] != Value::Bool(true) && r["terminated"] != Value::Bool(true),
                ),
            ))
        })
        .collect();
    read("starts.log")
        .iter()
        .map(|r| {
            let start = r["start"].as_f64().unwrap_or_default();
            let worker = r["worker"].as_str().unwrap_or_default().to_owned();
            let pid = r["pid"].as_i64().unwrap_or_default();
            let (end, completed) = match ends.get(&(pid, start.to_bits())) {
                Some(end) => *end,
                None => (
                    killed
                        .get(&worker)
                        .copied()
                        .filter(|k| *k >= start)
                        .unwrap_or(f64::INFINITY),
                    false,
                ),
            };
            let op = r["op"].as_str().unwrap_or_default();
            Run {
                release: r["release"].as_str().unwrap_or_default().to_owned(),
                uid: r["fault"]["uid"].as_str().unwrap_or_default().to_owned(),
                generation: r["fault"]["generation"].as_i64().unwrap_or(0),
                action: if op == "upgrade" {
                    "apply".into()
                } else {
                    op.into()
                },
                worker,
                start,
                end,
                completed,
            }
        })
        .collect()
}

/// The load of the process scenarios: Components in the API server, one apply job each on
/// a shared set of releases, `helmq-worker` processes running the fake helm with 50–500 ms
/// per run, and the writer.
pub struct ProcessLoad {
    pub stack: Stack,
    pub dir: tempfile::TempDir,
    pub workers: Vec<WorkerProcess>,
    /// When each killed worker incarnation was killed.
    pub killed: HashMap<String, f64>,
    pub jobs: Vec<JobEvent>,
    /// Generation each Component must end `Ready` at.
    pub want: HashMap<String, i64>,
    restarts: usize,
}

impl ProcessLoad {
    /// Creates `jobs` Components over `releases` releases, publishes their jobs, starts the
    /// writer and `workers` worker processes.
    pub async fn start(mut stack: Stack, jobs: usize, releases: usize, workers: usize) -> Self {
        let components = stack.create_components(jobs, |i| format!("r{:03}", i % releases));
        let jobs: Vec<JobEvent> = components
            .iter()
            .enumerate()
            .map(|(i, c)| apply_job(c, &format!("r{:03}", i % releases)))
            .collect();
        for job in &jobs {
            stack.publish(job).await;
        }
        let want = jobs
            .iter()
            .map(|j| (j.component.name.clone(), j.component.generation))
            .collect();
        stack.start_writer().await;
        let dir = tempfile::Builder::new()
            .prefix("helmq-faults-")
            // HELMQ_FAULTS_KEEP keeps the workers' logs and the fake helm's records for a look
            // after the run.
            .disable_cleanup(std::env::var_os("HELMQ_FAULTS_KEEP").is_some())
            .tempdir()
            .expect("temp dir");
        eprintln!(
            "faults: worker logs and helm records in {}",
            dir.path().display()
        );
        let workers = (1..=workers)
            .map(|n| {
                WorkerProcess::spawn(
                    stack.server.url(),
                    dir.path(),
                    &format!("w{n}-0"),
                    "0.05-0.5",
                )
            })
            .collect();
        ProcessLoad {
            stack,
            dir,
            workers,
            killed: HashMap::new(),
            jobs,
            want,
            restarts: 0,
        }
    }

    /// SIGKILLs worker `index` with its helm and starts a new incarnation in its place.
    pub fn kill_and_restart(&mut self, index: usize) {
        let at = self.workers[index].kill_group();
        self.killed.insert(self.workers[index].id.clone(), at);
        self.restarts += 1;
        let base = self.workers[index]
            .id
            .split('-')
            .next()
            .unwrap_or("w")
            .to_owned();
        self.workers[index] = WorkerProcess::spawn(
            self.stack.server.url(),
            self.dir.path(),
            &format!("{base}-{}", self.restarts),
            "0.05-0.5",
        );
    }

    /// What the status stream says about the jobs (`None` while the server cannot be asked).
    pub async fn terminal(&self) -> Option<helmq_tests::faults::TerminalReport> {
        let events = self.stack.statuses().await?;
        Some(helmq_tests::faults::terminal_statuses(
            &job_keys(&self.jobs),
            &events,
        ))
    }

    /// Every Helm run the fake helm recorded.
    pub fn runs(&self) -> Vec<Run> {
        fake_helm_runs(&self.dir.path().join("helm-state"), &self.killed)
    }

    /// Times each job was published.
    pub fn published(&self) -> HashMap<(String, i64), usize> {
        job_keys(&self.jobs).into_iter().map(|k| (k, 1)).collect()
    }

    /// Waits (up to `limit`) until every job has a terminal status event, every Component is
    /// `Ready` at its generation and no job is left in the stream; panics saying what is
    /// missing otherwise. Returns the seconds it took.
    pub async fn settle(&self, limit: Duration) -> f64 {
        let start = now();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let terminal = self.terminal().await;
            let converged = self.stack.not_converged(&self.want).await;
            let jobs = self.stack.jobs_and_deliveries().await;
            let done = terminal.as_ref().is_some_and(|t| t.missing.is_empty())
                && converged.is_empty()
                && jobs.is_some_and(|(left, _)| left == 0);
            if done {
                return now() - start;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not settled after {limit:?}: jobs without a terminal status: {:?}; \
                 Components not converged ({}): {:?}; jobs left and deliveries: {jobs:?}",
                terminal.map(|t| t.missing.len()),
                converged.len(),
                converged.iter().take(5).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

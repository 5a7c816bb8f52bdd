//! The NATS account of `deploy/nats/helmq-accounts.conf` on a real nats-server: each role,
//! connected as its own user with the password from the server's environment, does all of its
//! real work with the real code — the admin sets up and inspects the topology and handles dead
//! letters (`helmqctl`), the orchestrator publishes jobs and follows status events, the worker
//! pool runs jobs (leases, intents and their watch, dead letters, the MAX_DELIVERIES advisory),
//! the producer's watcher and status writer carry a Component to Ready — and is refused what
//! belongs to another role. The server logs every refusal ("Publish Violation", "Subscription
//! Violation"; the client is told "Permissions Violation"), so a log holding no violations but
//! the ones the test provoked shows that no role lacks a subject it uses.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::{self, Context};
use clap::Parser as _;
use futures::StreamExt as _;
use helmq_producer::metrics::Metrics as ProducerMetrics;
use helmq_producer::store::fake::{FakeComponentStore, FakeEventStore};
use helmq_producer::watcher::{Watcher, WatcherConfig};
use helmq_producer::writer::{WriterConfig, spawn_test_writer};
use helmq_queue::topology::{JOBS_STREAM, STATUS_STREAM, WRITER_CONSUMER};
use helmq_queue::{JetStreamQueue, JetStreamStatus, JobQueue, NatsArgs, StatusSink, Topology};
use helmq_schemas::HelmConfig;
use helmq_schemas::component::{Component, ComponentSpec, Phase};
use helmq_schemas::event::{ComponentRef, JobAction, JobEvent, StatusEvent, StatusPhase};
use helmq_schemas::subject::{job_subject, status_subject};
use helmq_tests::workspace_root;
use helmq_worker::driver::memory::Step;
use helmq_worker::{MemoryDriver, Settings};
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "helmq-admin";
const PRODUCER: &str = "helmq-producer";
const WORKER: &str = "helmq-worker";
const ORCHESTRATOR: &str = "helmq-orchestrator";
const TEAM_A: &str = "helmq-orchestrator-team-a";

/// User, the environment variable the accounts file reads its password from, the password.
const USERS: [(&str, &str, &str); 5] = [
    (ADMIN, "HELMQ_ADMIN_PASSWORD", "admin-pw-1"),
    (PRODUCER, "HELMQ_PRODUCER_PASSWORD", "producer-pw-2"),
    (WORKER, "HELMQ_WORKER_PASSWORD", "worker-pw-3"),
    (
        ORCHESTRATOR,
        "HELMQ_ORCHESTRATOR_PASSWORD",
        "orchestrator-pw-4",
    ),
    (TEAM_A, "HELMQ_ORCHESTRATOR_TEAM_A_PASSWORD", "team-a-pw-5"),
];

/// Generous: CI may be busy.
const DEADLINE: Duration = Duration::from_secs(60);

/// A failure a retry can help with (the API server away), which the worker does not handle
/// itself as it does Helm's "another operation in progress".
const TRANSIENT: &str = "Error: Kubernetes cluster unreachable: Get \"https://10.0.0.1:6443/version\": dial tcp 10.0.0.1:6443: connect: connection refused";
const PERMANENT: &str = r#"Error: chart "nginx" version "1.2.3" not found in https://charts.example.com/stable repository"#;

fn password(user: &str) -> &'static str {
    USERS
        .iter()
        .find(|(u, _, _)| *u == user)
        .map(|(_, _, p)| *p)
        .unwrap_or_else(|| panic!("no user {user}"))
}

/// A nats-server run from a config that includes the accounts file, with the passwords in its
/// environment and its log in a file; killed on drop.
struct Server {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let binary = helmq_tests::default_binary()
            .unwrap_or_else(|| panic!("no nats-server: run `just setup` or set HELMQ_NATS_SERVER"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            workspace_root().join("deploy/nats/helmq-accounts.conf"),
            dir.path().join("helmq-accounts.conf"),
        )
        .unwrap();
        let conf = dir.path().join("server.conf");
        let log = dir.path().join("server.log");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:-1\njetstream {{ store_dir: {:?} }}\ninclude helmq-accounts.conf\n",
                dir.path().join("js")
            ),
        )
        .unwrap();
        let mut child = Command::new(&binary)
            .arg("-c")
            .arg(&conf)
            .arg("-l")
            .arg(&log)
            .envs(USERS.iter().map(|(_, var, pw)| (*var, *pw)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        // The port is the server's choice (`-1`): read it from the log once it is ready.
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let port = text
                .lines()
                .find_map(|l| l.split("Listening for client connections on ").nth(1))
                .map(|addr| addr.trim().to_owned());
            if let Some(addr) = port
                && text.contains("Server is ready")
            {
                return Server {
                    child,
                    url: format!("nats://{addr}"),
                    log,
                    _dir: dir,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("nats-server exited with {status}; log:\n{text}");
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("nats-server not ready after 30s; log:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The permission violations the server logged.
    fn violations(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("Violation"))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "nats-server permission violations:\n{}",
                self.violations().join("\n")
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn args_for(url: &str, user: &str) -> NatsArgs {
    let mut args = NatsArgs::with_url(url);
    args.user = Some(user.to_owned());
    args.password = Some(password(user).to_owned());
    args
}

/// Connects as `user` the way the binaries do (`helmq_queue::connect`).
async fn connect_as(url: &str, user: &str) -> (async_nats::Client, Context) {
    let client = helmq_queue::connect(&args_for(url, user), user)
        .await
        .unwrap_or_else(|e| panic!("{user} cannot connect: {e}"));
    let js = jetstream::new(client.clone());
    (client, js)
}

/// A JetStream context that gives up on a request or publish ack after 2s: a refused publish
/// never gets an answer.
fn impatient(client: &async_nats::Client) -> Context {
    jetstream::context::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(client.clone())
}

/// Runs `helmqctl` in-process as `user`.
async fn helmqctl(url: &str, user: &str, args: &[&str]) -> Result<String, String> {
    let mut argv = vec![
        "helmqctl",
        "--nats-url",
        url,
        "--nats-user",
        user,
        "--nats-password",
        password(user),
    ];
    argv.extend_from_slice(args);
    let args = helmq_ctl::Args::try_parse_from(argv).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    helmq_ctl::run(args, &mut out)
        .await
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8(out).unwrap())
}

/// Polls `check` until it returns `Some`, or panics with `what` after [`DEADLINE`].
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn orchestrator_job(name: &str, generation: i64, release: &str) -> JobEvent {
    let config = HelmConfig::parse(
        Some(&serde_json::json!({
            "releaseName": release,
            "releaseNamespace": "apps",
            "source": {"type": "http",
                "repository": {"url": "https://charts.example.com/stable", "name": "example"},
                "chart": {"name": "nginx", "version": "1.2.3"}},
            "values": {"replicaCount": 1}
        })),
        "team",
        name,
    )
    .expect("valid config");
    JobEvent::new(
        JobAction::Apply,
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

fn component(name: &str) -> Component {
    let mut c = Component::new(
        name,
        ComponentSpec {
            name: name.into(),
            handler: "helm".into(),
            config: Some(serde_json::json!({
                "releaseName": name,
                "releaseNamespace": "apps",
                "source": {"type": "http",
                    "repository": {"url": "https://charts.example.com/stable", "name": "example"},
                    "chart": {"name": "nginx", "version": "1.2.3"}},
                "values": {},
            })),
            deployment_timeout: None,
            termination_timeout: None,
        },
    );
    c.metadata.namespace = Some("default".into());
    c
}

/// Status events an orchestrator follows, collected by a background task.
type Seen = Arc<Mutex<Vec<StatusEvent>>>;

fn seen_with(seen: &Seen, name: &str, phase: StatusPhase) -> Vec<StatusEvent> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|e| e.component.name == name && e.phase == phase)
        .cloned()
        .collect()
}

async fn dead_letters(url: &str) -> Vec<serde_json::Value> {
    let out = helmqctl(url, ADMIN, &["-o", "json", "dlq", "list"])
        .await
        .expect("the admin lists dead letters");
    serde_json::from_str::<Vec<serde_json::Value>>(&out).unwrap()
}

fn letters_on<'a>(letters: &'a [serde_json::Value], subject: &str) -> Vec<&'a serde_json::Value> {
    letters.iter().filter(|l| l["subject"] == subject).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_role_does_its_work_and_nothing_else_with_the_account_permissions() {
    let server = Server::start();
    let url = server.url.clone();

    // --- admin: `helmqctl setup` creates the whole topology, and again is a no-op. ---
    let (_admin_client, admin) = connect_as(&url, ADMIN).await;
    let report = Topology::default()
        .ensure(&admin)
        .await
        .expect("the admin sets up the topology");
    assert_eq!(report.created.len(), 8, "{report:?}");
    let again = Topology::default().ensure(&admin).await.unwrap();
    assert!(again.created.is_empty(), "{again:?}");
    let out = helmqctl(&url, ADMIN, &["-o", "json", "setup"])
        .await
        .expect("helmqctl setup as the admin");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["existing"].as_array().map(Vec::len), Some(8), "{out}");

    // --- worker: readiness check, then the real pool. ---
    let (worker_client, worker_js) = connect_as(&url, WORKER).await;
    Topology::default()
        .check(&worker_js)
        .await
        .expect("the worker's readiness check");
    let driver = MemoryDriver::new();
    // Every Helm call takes a moment, so the intent watch of each run is set up.
    driver.set_delay(Duration::from_millis(50));
    // Generation 1 of orch-web hangs until generation 2 supersedes it through the intent watch.
    driver.script("orch-web", [Step::Delay(Duration::from_secs(600))]);
    driver.script("perm", [Step::Fail(PERMANENT.into())]);
    // Fails until JetStream gives up after max_deliver (20) deliveries.
    driver.script("flaky", (0..40).map(|_| Step::Fail(TRANSIENT.into())));
    let mut settings = Settings::new("worker-a");
    settings.concurrency = 4;
    settings.max_attempts = 1000;
    settings.retry.min = Duration::from_millis(10);
    settings.retry.max = Duration::from_millis(20);
    settings.retry.jitter = false;
    settings.fetch_expires = Duration::from_millis(500);
    settings.drain_deadline = Duration::from_secs(5);
    let pool = helmq_worker::SpawnedPool::spawn(
        worker_client.clone(),
        driver.clone(),
        settings,
        JetStreamStatus::new,
    );
    let worker_metrics = pool.metrics.clone();

    // --- producer: readiness check, the watcher and the status writer. ---
    let (producer_client, producer_js) = connect_as(&url, PRODUCER).await;
    Topology::default()
        .check(&producer_js)
        .await
        .expect("the producer's readiness check");
    let store = FakeComponentStore::new();
    let producer_metrics = ProducerMetrics::default();
    let producer_stop = CancellationToken::new();
    let watcher = Watcher::new(
        store.clone(),
        JetStreamQueue::new(producer_js.clone()),
        JetStreamStatus::new(producer_js.clone()),
        WatcherConfig {
            resync_interval: Duration::from_millis(500),
            retry_interval: Duration::from_millis(200),
            ..WatcherConfig::default()
        },
        producer_metrics.clone(),
    );
    let watcher = tokio::spawn(watcher.run(producer_stop.clone()));
    let writer = spawn_test_writer(
        store.clone(),
        FakeEventStore::new(),
        producer_js.clone(),
        WriterConfig::fast(),
        producer_metrics.clone(),
        producer_stop.clone(),
    );

    // --- orchestrator: follows its status events with an ordered consumer, publishes jobs. ---
    let (orchestrator_client, orchestrator) = connect_as(&url, ORCHESTRATOR).await;
    let status_stream = orchestrator
        .get_stream(STATUS_STREAM)
        .await
        .expect("the orchestrator reads the status stream's info");
    let follower = status_stream
        .create_consumer(pull::OrderedConfig {
            name: Some(helmq_ctl::follower_name("orchestrator")),
            filter_subject: "helmq.status.team.*".into(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("the orchestrator creates an ordered consumer");
    let follower_name = follower.cached_info().name.clone();
    let mut follow = follower
        .messages()
        .await
        .expect("the orchestrator pulls status events");
    let seen: Seen = Arc::default();
    let follow_task = tokio::spawn({
        let seen = seen.clone();
        async move {
            while let Some(message) = follow.next().await {
                let message = message.expect("status events keep coming");
                seen.lock()
                    .unwrap()
                    .push(StatusEvent::decode(&message.payload).unwrap());
            }
        }
    });
    let jobs = JetStreamQueue::new(orchestrator.clone());
    let stored = jobs
        .publish_job(&orchestrator_job("orch-web", 1, "orch-web"))
        .await
        .expect("the orchestrator publishes a job");
    assert!(
        matches!(stored, helmq_queue::PublishOutcome::Stored { .. }),
        "{stored:?}"
    );
    eventually("generation 1 of orch-web running", async || {
        driver
            .calls()
            .iter()
            .any(|c| c.op == "apply" && c.release == "orch-web")
            .then_some(())
    })
    .await;
    jobs.publish_job(&orchestrator_job("orch-web", 2, "orch-web"))
        .await
        .unwrap();
    jobs.publish_job(&orchestrator_job("perm", 1, "perm"))
        .await
        .unwrap();
    jobs.publish_job(&orchestrator_job("flaky", 1, "flaky"))
        .await
        .unwrap();
    orchestrator
        .publish(job_subject("team", "garbage"), "{not json".into())
        .await
        .unwrap()
        .await
        .expect("the orchestrator's raw publish is stored");

    // The producer claims a Component and publishes its job; the worker deploys it; the writer
    // applies Claimed, Deploying and Ready.
    store.create(component("web")).unwrap();
    // And a status message that is not an event, which the writer dead-letters.
    producer_js
        .publish(status_subject("default", "junk"), "not an event".into())
        .await
        .unwrap()
        .await
        .expect("the producer's raw status publish is stored");

    let ready = eventually("orch-web Ready at generation 2", async || {
        seen_with(&seen, "orch-web", StatusPhase::Ready).pop()
    })
    .await;
    assert_eq!(ready.component.generation, 2);
    assert_eq!(ready.worker, "worker-a");
    let applies: Vec<_> = driver
        .calls()
        .into_iter()
        .filter(|c| c.op == "apply" && c.release == "orch-web")
        .collect();
    assert_eq!(applies.len(), 2, "{applies:#?}");
    assert!(
        applies[0].cancelled,
        "generation 1 was cancelled by the intent watch"
    );
    // The orchestrator's ordered consumer survives its consumer going away: it deletes what
    // is left of it and creates a successor (`<name>_1`) where it stopped.
    admin
        .delete_consumer_from_stream(&follower_name, STATUS_STREAM)
        .await
        .expect("the admin deletes the orchestrator's consumer");
    eventually(
        "the orchestrator's ordered consumer recreated",
        async || {
            let stream = admin.get_stream(STATUS_STREAM).await.unwrap();
            stream
                .consumer_info(format!("{follower_name}_1"))
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
    let failed = eventually("perm Failed", async || {
        seen_with(&seen, "perm", StatusPhase::Failed).pop()
    })
    .await;
    assert_eq!(failed.attempt, 1);
    let flaky = eventually("flaky Failed after max_deliver", async || {
        seen_with(&seen, "flaky", StatusPhase::Failed).pop()
    })
    .await;
    assert!(
        flaky
            .message
            .contains("exceeded max_deliver (20 deliveries)"),
        "{}",
        flaky.message
    );
    let web = eventually("default/web Ready in the store", async || {
        store.snapshot("default", "web").filter(|c| {
            c.status
                .as_ref()
                .is_some_and(|s| s.phase == Some(Phase::Ready) && s.observed_generation == Some(1))
        })
    })
    .await;
    assert_eq!(
        web.status.unwrap().claimed_by.as_deref(),
        Some("helm"),
        "claimed by the watcher"
    );
    // Deleting it: the watcher publishes the delete job, the worker uninstalls and moves the
    // intent to the tombstones bucket, the writer removes the finalizer.
    store.delete("default", "web").unwrap();
    eventually("default/web gone from the store", async || {
        store.snapshot("default", "web").is_none().then_some(())
    })
    .await;

    // Dead letters: the permanent failure, the bad payload, the job past max_deliver (all by
    // the worker) and the bad status message (by the writer).
    let letters = eventually("four dead letters", async || {
        let letters = dead_letters(&url).await;
        (letters.len() >= 4).then_some(letters)
    })
    .await;
    assert_eq!(letters.len(), 4, "{letters:#?}");
    let perm = letters_on(&letters, &job_subject("team", "perm"));
    assert_eq!(perm.len(), 1, "{letters:#?}");
    assert!(
        perm[0]["reason"].as_str().unwrap().contains("not found in"),
        "{perm:?}"
    );
    assert_eq!(
        letters_on(&letters, &job_subject("team", "garbage")).len(),
        1,
        "{letters:#?}"
    );
    let flaky_letter = letters_on(&letters, &job_subject("team", "flaky"));
    assert_eq!(flaky_letter.len(), 1, "{letters:#?}");
    assert!(
        flaky_letter[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("exceeded max_deliver"),
        "{flaky_letter:?}"
    );
    let junk = letters_on(&letters, &status_subject("default", "junk"));
    assert_eq!(junk.len(), 1, "{letters:#?}");
    assert_eq!(junk[0]["stream"], STATUS_STREAM);
    eventually(
        "the job past max_deliver deleted from the queue",
        async || {
            let mut jobs = admin.get_stream(JOBS_STREAM).await.unwrap();
            (jobs.info().await.unwrap().state.messages == 0).then_some(())
        },
    )
    .await;

    // --- admin: `helmqctl status` (stream and consumer info, workers seen) and dead letters. ---
    let out = helmqctl(&url, ADMIN, &["-o", "json", "status"])
        .await
        .expect("helmqctl status as the admin");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["streams"].as_array().map(Vec::len), Some(3), "{out}");
    assert_eq!(
        status["consumers"].as_array().map(Vec::len),
        Some(2),
        "{out}"
    );
    assert_eq!(status["missing"], serde_json::json!([]), "{out}");
    assert_eq!(status["dead_letters"], 4, "{out}");
    assert!(
        status["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["worker"] == "worker-a"),
        "{out}"
    );
    let perm_seq = perm[0]["dlqSequence"].as_u64().unwrap().to_string();
    helmqctl(&url, ADMIN, &["-o", "json", "dlq", "show", &perm_seq])
        .await
        .expect("helmqctl dlq show as the admin");
    // Replaying the permanent failure (its chart "fixed": the script is spent) deploys it.
    helmqctl(&url, ADMIN, &["-o", "json", "dlq", "replay", &perm_seq])
        .await
        .expect("helmqctl dlq replay of a job as the admin");
    eventually("the replayed perm job Ready", async || {
        seen_with(&seen, "perm", StatusPhase::Ready).pop()
    })
    .await;
    // Replaying the writer's dead letter publishes a status event again: the writer
    // dead-letters it once more.
    let junk_seq = junk[0]["dlqSequence"].as_u64().unwrap().to_string();
    helmqctl(&url, ADMIN, &["-o", "json", "dlq", "replay", &junk_seq])
        .await
        .expect("helmqctl dlq replay of a status message as the admin");
    eventually(
        "the replayed status message dead-lettered again",
        async || {
            let letters = dead_letters(&url).await;
            let junk = letters_on(&letters, &status_subject("default", "junk"));
            (junk.len() == 1 && junk[0]["dlqSequence"].as_u64().unwrap().to_string() != junk_seq)
                .then_some(())
        },
    )
    .await;
    let out = helmqctl(&url, ADMIN, &["-o", "json", "dlq", "purge", "--all"])
        .await
        .expect("helmqctl dlq purge as the admin");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["purged"],
        3,
        "{out}"
    );

    // --- what each role must not do: each is refused and stores nothing. ---
    let forged = StatusEvent::new(
        "forged",
        ComponentRef {
            namespace: "team".into(),
            name: "forged".into(),
            uid: None,
            generation: 1,
        },
        StatusPhase::Ready,
        "not from a worker",
        1,
        "orchestrator",
        jiff::Timestamp::now(),
    );
    let evil = orchestrator_job("evil", 1, "evil");
    let orchestrator_sink = JetStreamStatus::new(impatient(&orchestrator_client));
    let worker_queue = JetStreamQueue::new(impatient(&worker_client));
    let (producer_api, orchestrator_api) =
        (impatient(&producer_client), impatient(&orchestrator_client));
    let orchestrator_status = orchestrator_api
        .get_stream(STATUS_STREAM)
        .await
        .expect("the orchestrator reads the status stream's info");
    let (status_forged, job_injected, stream_deleted, consumer_deleted, unnamed_created) = tokio::join!(
        orchestrator_sink.publish_status(&forged),
        worker_queue.publish_job(&evil),
        producer_api.delete_stream(JOBS_STREAM),
        orchestrator_api.delete_consumer_from_stream(WRITER_CONSUMER, STATUS_STREAM),
        // An unnamed create could name (and so update) the writer's durable in its body.
        orchestrator_status.create_consumer(pull::OrderedConfig::default()),
    );
    assert!(
        unnamed_created.is_err(),
        "the orchestrator created an unnamed consumer"
    );
    assert!(
        status_forged.is_err(),
        "the orchestrator published a status event"
    );
    assert!(job_injected.is_err(), "the worker published a job");
    assert!(stream_deleted.is_err(), "the producer deleted a stream");
    assert!(
        consumer_deleted.is_err(),
        "the orchestrator deleted the writer's consumer"
    );
    Topology::default()
        .check(&admin)
        .await
        .expect("the topology is intact");
    let mut jobs_stream = admin.get_stream(JOBS_STREAM).await.unwrap();
    assert_eq!(jobs_stream.info().await.unwrap().state.messages, 0);
    assert!(seen_with(&seen, "forged", StatusPhase::Ready).is_empty());

    // --- shut down: every loop stops cleanly. ---
    producer_stop.cancel();
    pool.shutdown.cancel();
    watcher.await.unwrap().expect("the watcher ran to the end");
    writer.await.unwrap().expect("the writer ran to the end");
    pool.stop().await;
    follow_task.abort();
    assert!(
        worker_metrics.dead_letters.get() >= 3,
        "the worker dead-lettered"
    );

    // --- the server log: the five refusals above and nothing else. ---
    let denied = [
        "helmq.status.team.forged",
        "helmq.jobs.team.evil",
        "$JS.API.STREAM.DELETE.HELMQ_JOBS",
        "$JS.API.CONSUMER.DELETE.HELMQ_STATUS.helmq-writer",
        "\"$JS.API.CONSUMER.CREATE.HELMQ_STATUS\"",
    ];
    let violations = eventually("the refusals in the server log", async || {
        let violations = server.violations();
        denied
            .iter()
            .all(|d| violations.iter().any(|v| v.contains(d)))
            .then_some(violations)
    })
    .await;
    let unexpected: Vec<&String> = violations
        .iter()
        .filter(|v| !denied.iter().any(|d| v.contains(d)))
        .collect();
    assert!(
        unexpected.is_empty(),
        "permission violations during the roles' own work:\n{}",
        unexpected
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// An orchestrator's job (no uid) for Component `namespace/name`, released into `namespace`.
fn namespaced_job(namespace: &str, name: &str) -> JobEvent {
    let config = HelmConfig::parse(
        Some(&serde_json::json!({
            "releaseName": name,
            "releaseNamespace": namespace,
            "source": {"type": "http",
                "repository": {"url": "https://charts.example.com/stable", "name": "example"},
                "chart": {"name": "nginx", "version": "1.2.3"}},
        })),
        namespace,
        name,
    )
    .expect("valid config");
    JobEvent::new(
        JobAction::Apply,
        ComponentRef {
            namespace: namespace.into(),
            name: name.into(),
            uid: None,
            generation: 1,
        },
        config,
        30,
        jiff::Timestamp::now(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_orchestrator_limited_to_one_namespace_cannot_reach_another() {
    let server = Server::start();
    let url = server.url.clone();
    let (_admin_client, admin) = connect_as(&url, ADMIN).await;
    Topology::default().ensure(&admin).await.unwrap();

    let (worker_client, _) = connect_as(&url, WORKER).await;
    let driver = MemoryDriver::new();
    let mut settings = Settings::new("worker-a");
    settings.fetch_expires = Duration::from_millis(500);
    settings.drain_deadline = Duration::from_secs(5);
    let pool = helmq_worker::SpawnedPool::spawn(
        worker_client,
        driver.clone(),
        settings,
        JetStreamStatus::new,
    );

    let (team_a_client, _) = connect_as(&url, TEAM_A).await;
    let team_a = impatient(&team_a_client);
    let jobs = JetStreamQueue::new(team_a.clone());
    // Its own namespace: stored and run.
    jobs.publish_job(&namespaced_job("team-a", "web"))
        .await
        .expect("team-a publishes a job for its own namespace");
    // Another namespace's subject: the server refuses it.
    assert!(
        jobs.publish_job(&namespaced_job("team-b", "web"))
            .await
            .is_err(),
        "team-a published on team-b's subject"
    );
    // A payload naming team-b on team-a's own subject: stored, then dead-lettered by the worker
    // with the rule, and team-b's Component is not told anything.
    let smuggled = namespaced_job("team-b", "db");
    team_a
        .publish(job_subject("team-a", "db"), smuggled.encode().into())
        .await
        .expect("team-a may publish on its own subject")
        .await
        .expect("stored");

    eventually("team-a/web deployed", async || {
        driver
            .calls()
            .iter()
            .any(|c| c.op == "apply" && c.release == "web" && c.namespace == "team-a")
            .then_some(())
    })
    .await;
    let letter = eventually("the smuggled job dead-lettered", async || {
        dead_letters(&url)
            .await
            .into_iter()
            .find(|l| l["subject"] == "helmq.jobs.team-a.db")
    })
    .await;
    assert_eq!(
        letter["reason"],
        "job for component team-b/db was published on subject helmq.jobs.team-a.db, not on helmq.jobs.team-b.db: a job must come on its component's subject",
        "{letter}"
    );
    assert!(
        !driver.calls().iter().any(|c| c.namespace == "team-b"),
        "helm never ran for team-b"
    );
    let team_b_statuses = admin
        .get_stream(STATUS_STREAM)
        .await
        .unwrap()
        .get_last_raw_message_by_subject(&status_subject("team-b", "db"))
        .await;
    assert!(team_b_statuses.is_err(), "a status reached team-b/db");

    pool.stop().await;
    let violations = eventually("the refusal in the server log", async || {
        let v = server.violations();
        (!v.is_empty()).then_some(v)
    })
    .await;
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(
        violations[0].contains("helmq.jobs.team-b.web"),
        "{violations:?}"
    );
}

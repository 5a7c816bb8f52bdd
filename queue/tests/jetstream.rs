//! The queue seam against a real nats-server: topology setup, dedupe, incompatible existing
//! parts, auth and the server version check.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use helmq_queue::topology::{JOBS_STREAM, WORKERS_CONSUMER};
use helmq_queue::{
    ConnectError, JetStreamQueue, JobQueue, NatsArgs, PublishError, PublishOutcome, Topology,
    TopologyError, connect,
};
use helmq_schemas::HelmConfig;
use helmq_schemas::event::{ComponentRef, JobAction, JobEvent};
use helmq_tests::NatsServer;

fn job(name: &str, generation: i64) -> JobEvent {
    let config = HelmConfig::parse(
        Some(&serde_json::json!({
            "releaseName": name,
            "releaseNamespace": "web",
            "source": {"type": "http",
                "repository": {"url": "https://repo.broadcom.com/bitnami-files", "name": "bitnami"},
                "chart": {"name": "nginx", "version": "18.2.4"}},
            "values": {"replicaCount": 1}
        })),
        "default",
        name,
    )
    .expect("valid config");
    let component = ComponentRef {
        namespace: "default".into(),
        name: name.into(),
        uid: Some(helmq_tests::build::uid(name)),
        generation,
    };
    JobEvent::new(
        JobAction::Apply,
        component,
        config,
        300,
        jiff::Timestamp::now(),
    )
}

async fn jetstream_of(server: &NatsServer) -> jetstream::Context {
    let client = connect(&NatsArgs::with_url(server.url()), "helmq-test")
        .await
        .expect("connect");
    jetstream::new(client)
}

#[tokio::test]
async fn setup_twice_is_idempotent_and_check_sees_it() {
    let server = NatsServer::start();
    let js = jetstream_of(&server).await;
    let topology = Topology::default();

    let missing = topology.check(&js).await.unwrap_err();
    assert_eq!(
        missing.to_string(),
        "stream HELMQ_JOBS is missing: run `helmqctl setup` (or start a producer or worker with --setup)"
    );

    let first = topology.ensure(&js).await.expect("first setup");
    assert_eq!(
        first.created,
        [
            "stream HELMQ_JOBS",
            "stream HELMQ_STATUS",
            "stream HELMQ_DLQ",
            "consumer helmq-workers on HELMQ_JOBS",
            "consumer helmq-writer on HELMQ_STATUS",
            "KV bucket helmq_leases",
            "KV bucket helmq_intents",
            "KV bucket helmq_tombstones",
        ]
    );
    assert!(first.existing.is_empty());

    let second = topology.ensure(&js).await.expect("second setup");
    assert!(second.created.is_empty(), "{second:?}");
    assert_eq!(second.existing, first.created);
    assert!(second.differences.is_empty(), "{second:?}");
    topology.check(&js).await.expect("topology present");

    // The server really holds what setup described.
    let mut jobs = js.get_stream(JOBS_STREAM).await.unwrap();
    let info = jobs.info().await.unwrap();
    assert_eq!(info.config.retention, stream::RetentionPolicy::WorkQueue);
    assert_eq!(info.config.duplicate_window, Duration::from_secs(120));
    assert_eq!(info.config.subjects, ["helmq.jobs.>"]);
    let consumer = jobs.consumer_info(WORKERS_CONSUMER).await.unwrap();
    assert_eq!(consumer.config.ack_policy, consumer::AckPolicy::Explicit);
    assert_eq!(consumer.config.max_deliver, Topology::default().max_deliver);
}

#[tokio::test]
async fn tuned_limits_are_kept_and_listed_not_changed() {
    let server = NatsServer::start();
    let js = jetstream_of(&server).await;
    let tuned = Topology {
        status_max_age: Duration::from_secs(3600),
        ..Topology::default()
    };
    tuned.ensure(&js).await.unwrap();
    let report = Topology::default().ensure(&js).await.unwrap();
    assert_eq!(
        report.differences,
        ["stream HELMQ_STATUS: max_age is 3600s (helmq default 86400s)"]
    );
    let mut status = js.get_stream("HELMQ_STATUS").await.unwrap();
    assert_eq!(
        status.info().await.unwrap().config.max_age,
        Duration::from_secs(3600)
    );
}

#[tokio::test]
async fn duplicate_publish_inside_the_window_is_reported_as_duplicate() {
    let server = NatsServer::start();
    let js = jetstream_of(&server).await;
    Topology::default().ensure(&js).await.unwrap();
    let queue = JetStreamQueue::new(js.clone());

    let first = queue.publish_job(&job("web", 1)).await.unwrap();
    let PublishOutcome::Stored { sequence } = first else {
        panic!("first publish not stored: {first:?}");
    };
    // Same (uid, generation, action), even with a different requestedAt: same intent.
    let again = queue.publish_job(&job("web", 1)).await.unwrap();
    assert_eq!(again, PublishOutcome::Duplicate { sequence });
    // A new generation is a new job.
    let next = queue.publish_job(&job("web", 2)).await.unwrap();
    assert_eq!(
        next,
        PublishOutcome::Stored {
            sequence: sequence + 1
        }
    );

    let mut jobs = js.get_stream(JOBS_STREAM).await.unwrap();
    assert_eq!(jobs.info().await.unwrap().state.messages, 2);
    let stored = jobs.get_raw_message(sequence).await.unwrap();
    assert_eq!(stored.subject.as_str(), "helmq.jobs.default.web");
    let decoded = JobEvent::decode(&stored.payload).unwrap();
    assert_eq!(decoded.component.generation, 1);
    assert_eq!(
        stored.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
        Some(format!("{}:1:apply", helmq_tests::build::uid("web")).as_str())
    );
}

#[tokio::test]
async fn publishing_without_topology_says_to_run_setup() {
    let server = NatsServer::start();
    let js = jetstream_of(&server).await;
    let err = JetStreamQueue::new(js)
        .publish_job(&job("web", 1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PublishError::NoStream(_) | PublishError::Failed { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("HELMQ_JOBS") || err.to_string().contains("no responders"),
        "{err}"
    );
}

#[tokio::test]
async fn an_incompatible_existing_stream_is_reported_and_left_alone() {
    let server = NatsServer::start();
    let js = jetstream_of(&server).await;
    js.create_stream(stream::Config {
        name: JOBS_STREAM.into(),
        subjects: vec!["helmq.jobs.>".into()],
        retention: stream::RetentionPolicy::Limits,
        ..Default::default()
    })
    .await
    .unwrap();

    let err = Topology::default().ensure(&js).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "stream HELMQ_JOBS exists with retention Limits, helmq needs WorkQueue; \
         helmq does not change existing streams: delete or migrate it"
    );
    let mut jobs = js.get_stream(JOBS_STREAM).await.unwrap();
    assert_eq!(
        jobs.info().await.unwrap().config.retention,
        stream::RetentionPolicy::Limits
    );
}

#[tokio::test]
async fn a_push_consumer_in_place_of_the_workers_durable_is_reported() {
    let server = NatsServer::start();
    let js = jetstream_of(&server).await;
    let stream = js
        .create_stream(Topology::default().jobs_stream())
        .await
        .unwrap();
    stream
        .create_consumer(consumer::push::Config {
            durable_name: Some(WORKERS_CONSUMER.into()),
            deliver_subject: "somewhere".into(),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let err = Topology::default().ensure(&js).await.unwrap_err();
    assert!(
        matches!(
            err,
            TopologyError::IncompatibleConsumer {
                field: "deliver_subject",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "consumer helmq-workers on HELMQ_JOBS exists with deliver_subject somewhere, \
         helmq needs a pull consumer (none); delete it and run setup again"
    );
}

#[tokio::test]
async fn token_and_user_password_auth_work_and_a_wrong_secret_is_a_clear_error() {
    let server = NatsServer::start_with_args(&["--auth", "s3cret"]);
    let mut args = NatsArgs::with_url(server.url());
    args.token = Some("s3cret".into());
    connect(&args, "helmq-test").await.expect("token auth");
    args.token = Some("wrong".into());
    let err = connect(&args, "helmq-test").await.unwrap_err();
    assert!(matches!(err, ConnectError::Connect { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("cannot connect to NATS at {}: ", server.url())),
        "{err}"
    );

    let server = NatsServer::start_with_args(&["--user", "helmq", "--pass", "pw"]);
    let mut args = NatsArgs::with_url(server.url());
    args.user = Some("helmq".into());
    args.password = Some("pw".into());
    connect(&args, "helmq-test")
        .await
        .expect("user/password auth");
}

#[tokio::test]
async fn a_dead_server_is_a_clear_connect_error() {
    let mut server = NatsServer::start();
    let url = server.url().to_owned();
    server.kill();
    let mut args = NatsArgs::with_url(&url);
    args.connect_timeout_secs = 2;
    let err = connect(&args, "helmq-test").await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("cannot connect to NATS at {url}: ")),
        "{err}"
    );
}

#[tokio::test]
async fn a_2_9_server_is_refused_with_a_clear_message() {
    let Some(binary) = helmq_tests::nats_29_binary() else {
        eprintln!(
            "SKIPPED: no nats-server 2.9 binary (run `scripts/setup-nats.sh 2.9` or set HELMQ_NATS_SERVER_29)"
        );
        return;
    };
    let server = NatsServer::start_binary(&binary);
    let version = server.version().expect("version");
    assert!(version.starts_with("2.9."), "{version}");
    let err = connect(&NatsArgs::with_url(server.url()), "helmq-test")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "nats-server {version} at {} is too old: helmq needs 2.10.0 or newer \
             (KV buckets and 2.10 stream features); upgrade the server",
            server.url()
        )
    );
}

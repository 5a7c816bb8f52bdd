//! Scenario 3, a 3-node JetStream cluster: the topology at R3 (`helmqctl setup --replicas 3`),
//! three in-process worker pools with the recording driver and the status writer, all
//! connected with the list of the three nodes. Jobs are published in three waves: before the
//! faults, while the node leading `HELMQ_JOBS` is dead (it is brought back after), and while
//! a node that leads nothing of `HELMQ_JOBS` is dead. Every job must end in one terminal
//! status, no release may have two runs at once, and every Component must end `Ready`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Parser;
use helmq_producer::metrics::Metrics as ProducerMetrics;
use helmq_producer::store::fake::FakeComponentStore;
use helmq_queue::topology::{JOBS_STREAM, STATUS_STREAM, WORKERS_CONSUMER, WRITER_CONSUMER};
use helmq_queue::{Connection, JetStreamQueue, JobQueue, NatsArgs};
use helmq_schemas::component::Phase;
use helmq_schemas::event::{JobEvent, StatusEvent};
use helmq_tests::NatsCluster;
use helmq_tests::faults::{Row, extra_runs, overlapping_runs, terminal_statuses, write_row};
use helmq_tests::wait::eventually;
use helmq_worker::MemoryDriver;

use crate::support::{
    NAMESPACE, Pool, Recorder, RecordingDriver, apply_job, config_json, fault_values,
    jetstream_sink, read_stream, settings, spawn_writer,
};

const JOBS: usize = 300;
const RELEASES: usize = 150;
/// How long a killed node stays dead.
const DOWN: Duration = Duration::from_secs(8);
const DEADLINE: Duration = Duration::from_secs(240);

/// Publishes `jobs`, retrying each until the cluster stores it (its dedupe id makes a retried
/// publish that was stored one message); returns the longest a publish took.
async fn publish_all(queue: &JetStreamQueue, jobs: &[JobEvent]) -> Duration {
    let mut longest = Duration::ZERO;
    for job in jobs {
        let started = Instant::now();
        eventually(DEADLINE, "a job published", async || {
            queue.publish_job(job).await.map_err(|e| e.to_string())
        })
        .await;
        longest = longest.max(started.elapsed());
    }
    longest
}

/// The node leading `stream`, once one leads it.
async fn leader_of(
    cluster: &NatsCluster,
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> usize {
    let name = eventually(DEADLINE, &format!("a leader of {stream}"), async || {
        NatsCluster::stream_leader(js, stream).await
    })
    .await;
    cluster.index_of(&name).expect("a node of the cluster")
}

/// Kills node `dead` and publishes `jobs` right away, watching for `HELMQ_JOBS` to be led by
/// a live node (a stream info that times out takes 5 s: the figure is that coarse), then
/// brings the node back after [`DOWN`]; returns (time to a live leader, longest publish, time
/// until the node was back and the cluster had a meta leader again).
async fn outage(
    cluster: &mut NatsCluster,
    js: &async_nats::jetstream::Context,
    queue: &JetStreamQueue,
    dead: usize,
    jobs: &[JobEvent],
) -> (Duration, Duration, Duration) {
    let killed = Instant::now();
    cluster.kill(dead);
    let name = cluster.name(dead).to_owned();
    // Publish at once, into the outage, while watching for the new leader.
    let (new_leader, longest) = tokio::join!(
        eventually(DEADLINE, "HELMQ_JOBS led by a live node", async || {
            NatsCluster::stream_leader(js, JOBS_STREAM)
                .await
                .filter(|leader| *leader != name)
                .map(|_| killed.elapsed())
        }),
        publish_all(queue, jobs)
    );
    let left = DOWN.saturating_sub(killed.elapsed());
    tokio::time::sleep(left).await;
    let restarting = Instant::now();
    cluster.restart(dead);
    (new_leader, longest, restarting.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: just faults"]
async fn cluster_node_failures() {
    let mut cluster = NatsCluster::start();
    let urls = cluster.urls();
    let version = cluster.version().unwrap_or_default();
    let setup = helmq_ctl::Args::try_parse_from([
        "helmqctl",
        "--nats-url",
        &urls,
        "setup",
        "--replicas",
        "3",
    ])
    .expect("setup flags");
    helmq_ctl::run(setup, &mut Vec::new())
        .await
        .expect("helmqctl setup --replicas 3");
    let connection = Connection::open(&NatsArgs::with_url(&urls), "faults")
        .await
        .expect("connect");
    let js = connection.jetstream();
    let queue = JetStreamQueue::new(js.clone());

    // Components whose values name their job, at generation 2.
    let store = FakeComponentStore::new();
    let mut jobs = Vec::new();
    for i in 0..JOBS {
        let name = format!("c{i:04}");
        let release = format!("r{:03}", i % RELEASES);
        let created = store
            .create(
                helmq_tests::build::component(&name)
                    .namespace(NAMESPACE)
                    .config(config_json(&release, serde_json::json!({})))
                    .build(),
            )
            .expect("create a Component");
        let uid = created.metadata.uid.clone().unwrap_or_default();
        let edited = store
            .edit_spec(NAMESPACE, &name, |spec| {
                spec.config = Some(config_json(&release, fault_values(&uid, 2)));
            })
            .expect("edit a Component");
        jobs.push(apply_job(&edited, &release));
    }
    let expected: Vec<(String, i64)> = jobs
        .iter()
        .map(|j| {
            (
                j.component.uid.clone().unwrap_or_default(),
                j.component.generation,
            )
        })
        .collect();

    let helm = MemoryDriver::new();
    let recorder = Recorder::default();
    let mut pools = Vec::new();
    for id in ["w1", "w2", "w3"] {
        pools.push(
            Pool::start(
                &urls,
                RecordingDriver::new(&helm, id, &recorder),
                settings(id),
                jetstream_sink,
            )
            .await,
        );
    }
    let writer_connection = Connection::open(&NatsArgs::with_url(&urls), "faults writer")
        .await
        .expect("connect the writer");
    let metrics = ProducerMetrics::default();
    let (stop_writer, writer) = spawn_writer(store.clone(), writer_connection.jetstream(), metrics);

    let started = Instant::now();
    let third = JOBS / 3;
    publish_all(&queue, &jobs[..third]).await;

    // The node leading the jobs stream dies while the second wave is published.
    let leader = leader_of(&cluster, &js, JOBS_STREAM).await;
    let leader_name = cluster.name(leader).to_owned();
    eprintln!("killing {leader_name}, the leader of HELMQ_JOBS");
    let (leader_failover, leader_publish, leader_back) =
        outage(&mut cluster, &js, &queue, leader, &jobs[third..2 * third]).await;

    // Then a node that does not lead HELMQ_JOBS, during the third wave.
    let leader_now = leader_of(&cluster, &js, JOBS_STREAM).await;
    let follower = (0..3).find(|i| *i != leader_now).expect("a follower");
    let follower_name = cluster.name(follower).to_owned();
    eprintln!("killing {follower_name}, a follower of HELMQ_JOBS");
    let (follower_failover, follower_publish, follower_back) =
        outage(&mut cluster, &js, &queue, follower, &jobs[2 * third..]).await;

    // Every Component Ready at generation 2, the jobs stream and the writer's consumer empty.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let not_ready: Vec<String> = (0..JOBS)
            .map(|i| format!("c{i:04}"))
            .filter(|name| {
                !store.snapshot(NAMESPACE, name).is_some_and(|c| {
                    c.status.as_ref().is_some_and(|s| {
                        s.phase == Some(Phase::Ready) && s.observed_generation == Some(2)
                    })
                })
            })
            .collect();
        let jobs_left = match js.get_stream(JOBS_STREAM).await {
            Ok(mut stream) => stream.info().await.map(|i| i.state.messages).ok(),
            Err(_) => None,
        };
        let writer_left = match js.get_stream(STATUS_STREAM).await {
            Ok(stream) => stream
                .consumer_info(WRITER_CONSUMER)
                .await
                .map(|c| c.num_pending + c.num_ack_pending as u64)
                .ok(),
            Err(_) => None,
        };
        if not_ready.is_empty() && jobs_left == Some(0) && writer_left == Some(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not converged after {DEADLINE:?}: {} Components not Ready (e.g. {:?}), jobs left \
             {jobs_left:?}, status events left {writer_left:?}",
            not_ready.len(),
            &not_ready[..not_ready.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let converged = started.elapsed();
    let deliveries = match js.get_stream(JOBS_STREAM).await {
        Ok(stream) => stream
            .consumer_info(WORKERS_CONSUMER)
            .await
            .map(|c| c.delivered.consumer_sequence)
            .unwrap_or_default(),
        Err(_) => 0,
    };
    for pool in pools {
        pool.stop().await;
    }
    stop_writer.cancel();
    writer.await.expect("writer task");

    let runs = recorder.runs();
    let overlaps = overlapping_runs(&runs);
    let published: HashMap<(String, i64), usize> =
        expected.iter().map(|job| (job.clone(), 1)).collect();
    let extra = extra_runs(&runs, &published);
    let events: Vec<StatusEvent> = read_stream(&js, STATUS_STREAM)
        .await
        .expect("status events")
        .iter()
        .filter_map(|p| StatusEvent::decode(p).ok())
        .collect();
    let terminal = terminal_statuses(&expected, &events);
    println!(
        "scenario 3: nats-server {version} x3, {JOBS} jobs over {RELEASES} releases, 3 pools; \
         leader {leader_name} killed: HELMQ_JOBS led again after {:.1} s, longest publish \
         {:.1} s, back and caught up in {:.1} s; follower {follower_name} killed: led after \
         {:.1} s, longest publish {:.1} s, back in {:.1} s; all Ready {:.1} s after the first \
         job; {} runs, {deliveries} deliveries, {} jobs ran again",
        leader_failover.as_secs_f64(),
        leader_publish.as_secs_f64(),
        leader_back.as_secs_f64(),
        follower_failover.as_secs_f64(),
        follower_publish.as_secs_f64(),
        follower_back.as_secs_f64(),
        converged.as_secs_f64(),
        runs.len(),
        extra.len(),
    );

    let mut row = Row {
        scenario: 3,
        name: "3-node JetStream cluster".into(),
        injected: format!(
            "nats-server {version} x3 at R3 (helmqctl setup --replicas 3), clients on the URL \
             list; the node leading HELMQ_JOBS killed for {} s, then a follower",
            DOWN.as_secs()
        ),
        jobs: JOBS as u64,
        releases: RELEASES as u64,
        lost: terminal.missing.len() as u64,
        overlapping_runs: overlaps.len() as u64,
        duplicated_runs: extra.iter().map(|e| e.extra() as u64).sum(),
        duplicated_why: if extra.is_empty() {
            format!(
                "none: {} deliveries beyond one per job (acks lost with the dead leader) ran no \
                 second Helm run",
                (deliveries as usize).saturating_sub(JOBS)
            )
        } else {
            "a job whose ack was lost with the dead leader is delivered again; the release \
             lease keeps the runs apart and the repeated outcome is the same"
                .into()
        },
        recovery: format!(
            "new HELMQ_JOBS leader {:.1} s after the leader died; all Ready {:.1} s after the \
             first job",
            leader_failover.as_secs_f64(),
            converged.as_secs_f64()
        ),
        test: "tests/tests/faults/cluster.rs::cluster_node_failures".into(),
        ..Row::default()
    };
    for (name, seconds) in [
        ("leader killed: new leader", leader_failover),
        ("leader killed: longest publish", leader_publish),
        ("follower killed: longest publish", follower_publish),
    ] {
        row.figures
            .insert(name.into(), format!("{:.1} s", seconds.as_secs_f64()));
    }
    row.figures
        .insert("deliveries".into(), deliveries.to_string());
    write_row(&row);

    assert!(overlaps.is_empty(), "overlapping runs: {overlaps:?}");
    assert!(
        terminal.missing.is_empty() && terminal.conflicting.is_empty(),
        "{terminal:?}"
    );
}

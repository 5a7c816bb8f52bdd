//! helmq on a 3-node JetStream cluster ([`NatsCluster`]): `helmqctl setup --replicas 3` puts
//! every stream, consumer and KV bucket at R3, and a `--nats-url` list of the nodes connects
//! past a dead node and fails over when the connected node dies.

use std::time::Duration;

use helmq_queue::topology::{
    DLQ_STREAM, INTENTS_BUCKET, JOBS_STREAM, LEASES_BUCKET, STATUS_STREAM, TOMBSTONES_BUCKET,
    WORKERS_CONSUMER, WRITER_CONSUMER,
};
use helmq_queue::{Connection, NatsArgs};
use helmq_tests::NatsCluster;
use helmq_tests::wait::eventually;

/// Generous: raft groups form slowly on a loaded 2-core machine, and a wait ends as soon as it holds.
const DEADLINE: Duration = Duration::from_secs(120);

/// Replicas of a stream or consumer as the cluster reports them: the leader and its peers.
fn replicas(cluster: Option<&async_nats::jetstream::stream::ClusterInfo>) -> usize {
    cluster.map_or(0, |c| usize::from(c.leader.is_some()) + c.replicas.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_with_three_replicas_puts_streams_consumers_and_buckets_at_r3() {
    let cluster = NatsCluster::start();
    eprintln!("nats-server {:?} x3", cluster.version());
    let args = <helmq_ctl::Args as clap::Parser>::try_parse_from([
        "helmqctl",
        "--nats-url",
        &cluster.urls(),
        "setup",
        "--replicas",
        "3",
    ])
    .unwrap();
    let mut out = Vec::new();
    helmq_ctl::run(args, &mut out).await.unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out));

    let connection = Connection::open(&NatsArgs::with_url(cluster.urls()), "test")
        .await
        .unwrap();
    let js = connection.jetstream();
    let buckets = [LEASES_BUCKET, INTENTS_BUCKET, TOMBSTONES_BUCKET].map(|b| format!("KV_{b}"));
    let streams = [JOBS_STREAM, STATUS_STREAM, DLQ_STREAM]
        .into_iter()
        .chain(buckets.iter().map(String::as_str));
    for name in streams {
        let mut stream = js.get_stream(name).await.unwrap();
        // Peers join the group as they catch up: wait until all three are reported.
        let info = eventually(DEADLINE, &format!("{name} at R3"), async || {
            let info = stream.info().await.unwrap().clone();
            if replicas(info.cluster.as_ref()) == 3 {
                Ok(info)
            } else {
                Err(info.cluster)
            }
        })
        .await;
        assert_eq!(info.config.num_replicas, 3, "{name}");
    }
    for (stream, consumer) in [
        (JOBS_STREAM, WORKERS_CONSUMER),
        (STATUS_STREAM, WRITER_CONSUMER),
    ] {
        let stream = js.get_stream(stream).await.unwrap();
        eventually(DEADLINE, &format!("{consumer} at R3"), async || {
            let info = stream.consumer_info(consumer).await.unwrap();
            if replicas(info.cluster.as_ref()) == 3 {
                Ok(())
            } else {
                Err(info.cluster)
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_list_connects_past_a_dead_node_and_follows_the_cluster_when_its_node_dies() {
    let mut cluster = NatsCluster::start();
    let args = NatsArgs::with_url(cluster.urls());
    let connection = Connection::open(&args, "test").await.unwrap();
    let js = connection.jetstream();
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "FAILOVER".into(),
        subjects: vec!["failover.>".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    js.publish("failover.a", "1".into())
        .await
        .unwrap()
        .await
        .unwrap();

    // Kill the node the client is on: it reconnects to another one of the list and JetStream
    // goes on (two of three nodes keep the quorum).
    let first = connection.client().server_info().server_name;
    let dead = cluster.index_of(&first).unwrap();
    cluster.kill(dead);
    let moved = eventually(DEADLINE, "the client to reconnect elsewhere", async || {
        let now = connection.client().server_info().server_name;
        let connected =
            connection.client().connection_state() == async_nats::connection::State::Connected;
        (connected && now != first).then_some(now)
    })
    .await;
    eprintln!("connected to {first}, killed it, now on {moved}");
    // A retried publish may have been stored before its ack was lost: the message id makes the
    // retries one message.
    eventually(
        DEADLINE,
        "a publish acknowledged after failover",
        async || {
            let publish = async_nats::jetstream::message::PublishMessage::build()
                .message_id("b")
                .payload("2".into());
            match js.send_publish("failover.b", publish).await {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;

    // With that node still dead, new connections from the same list get through (the list
    // is tried in random order, so try several).
    for _ in 0..6 {
        let other = Connection::open(&args, "test").await.unwrap();
        assert_ne!(other.client().server_info().server_name, first);
    }
    cluster.restart(dead);
    let mut stream = js.get_stream("FAILOVER").await.unwrap();
    // A node that is still catching up may answer without a leader, from its own state: only
    // the leader's answer counts.
    let messages = eventually(DEADLINE, "the stream's leader to answer", async || {
        let info = stream.info().await.unwrap();
        let led = info
            .cluster
            .as_ref()
            .and_then(|c| c.leader.as_ref())
            .is_some();
        if led {
            Ok(info.state.messages)
        } else {
            Err(info.cluster.clone())
        }
    })
    .await;
    assert_eq!(messages, 2, "both messages, once each");
}

//! Scenario 4, a partition: one in-process worker pool reaches NATS through a TCP proxy the
//! test controls. While that worker runs Helm for a job, the proxy cuts every connection (and
//! refuses new ones) for longer than `ack_wait` and the release lease's TTL. The job must be
//! redelivered to the other worker, the first run must be cancelled before the second starts
//! (its recorded end no later than the second's start), and the partitioned worker's late
//! result, once it reconnects, must never overwrite the newer outcome.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use helmq_queue::Topology;
use helmq_schemas::component::Phase;
use helmq_tests::faults::{Row, overlapping_runs, regressions, terminal_statuses, write_row};
use helmq_worker::MemoryDriver;
use helmq_worker::driver::memory::Step;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::support::{
    NAMESPACE, Pool, Recorder, RecordingDriver, Stack, apply_job, jetstream_sink, job_keys, now,
    settings,
};

const TEST: &str =
    "faults::partition::a_partitioned_workers_run_is_cancelled_before_the_job_runs_elsewhere";
const ACK_WAIT: Duration = Duration::from_secs(3);
/// Longer than ack_wait and the lease TTL together.
const CUT: Duration = Duration::from_secs(10);

/// A TCP proxy to `upstream`: while `cut` is true it drops every connection and refuses new
/// ones (accepts and closes them).
async fn proxy(upstream: String, cut: watch::Receiver<bool>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let address = listener.local_addr().expect("proxy address");
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            if *cut.borrow() {
                drop(client);
                continue;
            }
            let upstream = upstream.clone();
            let mut cut = cut.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = cut.wait_for(|cut| *cut) => {}
                }
            });
        }
    });
    format!("nats://{address}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: just faults"]
async fn a_partitioned_workers_run_is_cancelled_before_the_job_runs_elsewhere() {
    let topology = Topology {
        ack_wait: ACK_WAIT,
        lease_ttl: ACK_WAIT,
        ..Topology::default()
    };
    let mut stack = Stack::start(&topology).await;
    stack.start_writer().await;
    let (cut, cut_rx) = watch::channel(false);
    let upstream = stack.server.url().trim_start_matches("nats://").to_owned();
    let proxied = proxy(upstream, cut_rx).await;

    let helm = MemoryDriver::new();
    let recorder = Recorder::default();
    let component = stack.create_components(1, |_| "web".into()).remove(0);
    let job = apply_job(&component, "web");
    // The first run takes long: the partition comes in the middle of it.
    helm.script("web", [Step::Delay(Duration::from_secs(60))]);
    let cut_off = Pool::start(
        &proxied,
        RecordingDriver::new(&helm, "partitioned", &recorder),
        settings("partitioned"),
        jetstream_sink,
    )
    .await;
    stack.publish(&job).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !helm.calls().iter().any(|c| c.op == "apply") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cut_at = now();
    cut.send_replace(true);
    let other = Pool::start(
        stack.server.url(),
        RecordingDriver::new(&helm, "connected", &recorder),
        settings("connected"),
        jetstream_sink,
    )
    .await;
    tokio::time::sleep(CUT).await;
    cut.send_replace(false);
    let healed_at = now();

    // Settled: the job is acked, the writer has read everything, and the partitioned worker
    // has reconnected and had its say.
    let want = HashMap::from([(job.component.name.clone(), 1)]);
    stack.settled(&want, Duration::from_secs(120)).await;
    // Give the partitioned worker's late publications time to reach the writer.
    tokio::time::sleep(Duration::from_secs(5)).await;
    while !stack.writer_idle().await {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    other.stop().await;
    cut_off.stop().await;

    let runs = recorder.runs();
    let events = stack.statuses().await.expect("status stream");
    let terminal = terminal_statuses(&job_keys(std::slice::from_ref(&job)), &events);
    let overlaps = overlapping_runs(&runs);
    let regressed = regressions(&stack.positions());
    let mut applies: Vec<_> = runs.iter().filter(|r| r.action == "apply").collect();
    applies.sort_by(|a, b| a.start.total_cmp(&b.start));
    let stored = stack
        .store
        .snapshot(NAMESPACE, &job.component.name)
        .and_then(|c| c.status)
        .expect("a status");
    let newest = events
        .iter()
        .max_by_key(|e| e.position())
        .expect("events")
        .clone();
    let late: Vec<_> = events
        .iter()
        .filter(|e| e.worker == "partitioned")
        .map(|e| (e.phase, e.attempt, e.order))
        .collect();
    eprintln!(
        "faults[4]: cut {:.0} s; runs {:?}; partitioned worker's events {late:?}; final {:?} by {} (attempt {})",
        healed_at - cut_at,
        applies
            .iter()
            .map(|r| (&r.worker, r.start - cut_at, r.end - cut_at, r.completed))
            .collect::<Vec<_>>(),
        stored.phase,
        newest.worker,
        newest.attempt,
    );
    assert_eq!(
        applies.len(),
        2,
        "the run, then the run after redelivery: {applies:#?}"
    );
    let (first, second) = (applies[0], applies[1]);
    assert_eq!(first.worker, "partitioned");
    assert!(
        !first.completed,
        "the partitioned worker's run was cancelled"
    );
    assert_eq!(second.worker, "connected");
    assert!(
        first.end <= second.start,
        "the first run ended after the second started: {first:?} {second:?}"
    );
    assert!(overlaps.is_empty(), "{overlaps:#?}");
    assert!(helm.overlaps().is_empty(), "{:?}", helm.overlaps());
    assert_eq!(stored.phase, Some(Phase::Ready));
    assert_eq!(
        newest.worker, "connected",
        "a late result outranks the newer outcome"
    );
    assert!(
        terminal.missing.is_empty() && terminal.conflicting.is_empty(),
        "{terminal:?}"
    );
    assert!(regressed.is_empty(), "{regressed:?}");

    write_row(&Row {
        scenario: 4,
        name: "Partition".into(),
        injected: format!(
            "a TCP proxy between one worker and NATS dropped every connection for {:.0} s (ack_wait and lease TTL {} s) during its Helm run",
            healed_at - cut_at,
            ACK_WAIT.as_secs()
        ),
        jobs: 1,
        releases: 1,
        lost: terminal.missing.len() as u64,
        overlapping_runs: overlaps.len() as u64,
        duplicated_runs: 1,
        duplicated_why: format!(
            "the partitioned run was cancelled (lease not renewed) {:.1} s after the cut, before the redelivered job started on the other worker {:.1} s after the cut; the partitioned worker's late events ({}) rank below the newer outcome",
            first.end - cut_at,
            second.start - cut_at,
            late.len()
        ),
        recovery: format!(
            "the other worker finished the job {:.1} s after the cut",
            second.end - cut_at
        ),
        test: TEST.into(),
        figures: BTreeMap::new(),
    });
    stack.stop().await;
}

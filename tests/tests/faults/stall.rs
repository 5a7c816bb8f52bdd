//! Scenario 10, a stall between taking the release lease and starting Helm (issue 19): one
//! in-process worker pool reaches NATS through a proxy that reads the NATS protocol going by.
//! Once the server has confirmed that worker's lease (the `KV_helmq_leases` publish ack passed
//! the proxy), the proxy holds every frame in both directions, so the worker is cut between the
//! lease and Helm. It holds them until the job, redelivered after `ack_wait`, runs on the other
//! worker under the lease that took over the expired one, longer than the TTL and `ack_wait`;
//! then it lets them through. The stalled worker must never start Helm: its lease is renewed with
//! compare-and-set before Helm is spawned, and that fails.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use helmq_queue::Topology;
use helmq_tests::faults::{Row, overlapping_runs, regressions, terminal_statuses, write_row};
use helmq_worker::MemoryDriver;
use helmq_worker::driver::memory::Step;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::support::{
    Pool, Recorder, RecordingDriver, Stack, apply_job, jetstream_sink, job_keys, now, settings,
};

const TEST: &str = "faults::stall::a_worker_stalled_between_its_lease_and_helm_never_starts_helm";
const ACK_WAIT: Duration = Duration::from_secs(3);
/// What the lease's publish ack says, in the server's reply.
const LEASE_ACK: &[u8] = br#""stream":"KV_helmq_leases""#;
/// A publish to a lease key, in the client's frames.
const LEASE_PUBLISH: &[u8] = b"$KV.helmq_leases.";

/// Where the proxy's connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Passing frames, looking for the lease's publish.
    Watching,
    /// The lease was published; waiting for the server's ack of it.
    LeasePublished,
    /// The ack went to the client: holding every frame until released.
    Holding,
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A proxy to `upstream` that holds all frames once a lease was confirmed to its client, until
/// `release` turns true; `held` turns true when it starts holding.
async fn stalling_proxy(
    upstream: String,
    held: watch::Sender<bool>,
    release: watch::Receiver<bool>,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let held = Arc::new(held);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(&upstream).await else {
                continue;
            };
            let stage = Arc::new(tokio::sync::Mutex::new(Stage::Watching));
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            for (mut from, mut to, upward) in [
                (client_read, server_write, true),
                (server_read, client_write, false),
            ]
            .map(|(r, w, up)| {
                (
                    Box::new(r) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                    Box::new(w) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                    up,
                )
            }) {
                let stage = stage.clone();
                let held = held.clone();
                let mut release = release.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let Ok(n) = from.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        let chunk = &buf[..n];
                        let mut now = *stage.lock().await;
                        if now == Stage::Holding {
                            let _ = release.wait_for(|r| *r).await;
                        } else if upward && now == Stage::Watching && contains(chunk, LEASE_PUBLISH)
                        {
                            *stage.lock().await = Stage::LeasePublished;
                        } else if !upward
                            && now == Stage::LeasePublished
                            && contains(chunk, LEASE_ACK)
                        {
                            // This chunk (the ack) goes through; everything after it waits.
                            now = Stage::Holding;
                            *stage.lock().await = now;
                        }
                        if to.write_all(chunk).await.is_err() {
                            return;
                        }
                        if now == Stage::Holding {
                            held.send_replace(true);
                        }
                    }
                });
            }
        }
    });
    format!("nats://{address}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: just faults"]
async fn a_worker_stalled_between_its_lease_and_helm_never_starts_helm() {
    let topology = Topology {
        ack_wait: ACK_WAIT,
        lease_ttl: ACK_WAIT,
        ..Topology::default()
    };
    let mut stack = Stack::start(&topology).await;
    stack.start_writer().await;
    let (held_tx, mut held) = watch::channel(false);
    let (release, release_rx) = watch::channel(false);
    let upstream = stack.server.url().trim_start_matches("nats://").to_owned();
    let proxied = stalling_proxy(upstream, held_tx, release_rx).await;

    let helm = MemoryDriver::new();
    let recorder = Recorder::default();
    let component = stack.create_components(1, |_| "web".into()).remove(0);
    let job = apply_job(&component, "web");
    // The run that takes over takes a while: the stalled worker comes back during it.
    helm.script("web", [Step::Delay(Duration::from_secs(6))]);
    let mut stalled_settings = settings("stalled");
    stalled_settings.concurrency = 1;
    let stalled = Pool::start(
        &proxied,
        RecordingDriver::new(&helm, "stalled", &recorder),
        stalled_settings,
        jetstream_sink,
    )
    .await;
    stack.publish(&job).await;
    tokio::time::timeout(Duration::from_secs(30), held.wait_for(|h| *h))
        .await
        .expect("the stalled worker took the lease within 30 s")
        .expect("proxy");
    let stall_at = now();
    let other = Pool::start(
        stack.server.url(),
        RecordingDriver::new(&helm, "other", &recorder),
        settings("other"),
        jetstream_sink,
    )
    .await;
    // Hold until the other worker runs Helm (after ack_wait and the lease's TTL), a little
    // more, then let the stalled worker's frames through while that run goes on.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !helm.calls().iter().any(|c| c.op == "apply") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job never ran on the other worker"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    release.send_replace(true);
    let released_at = now();

    let want = HashMap::from([(job.component.name.clone(), 1)]);
    stack.settled(&want, Duration::from_secs(120)).await;
    other.stop().await;
    stalled.stop().await;

    let runs = recorder.runs();
    let events = stack.statuses().await.expect("status stream");
    let terminal = terminal_statuses(&job_keys(std::slice::from_ref(&job)), &events);
    let overlaps = overlapping_runs(&runs);
    let regressed = regressions(&stack.positions());
    let stalled_runs: Vec<_> = runs.iter().filter(|r| r.worker == "stalled").collect();
    let driver_overlaps = helm.overlaps();
    eprintln!(
        "faults[10]: frames held {:.1} s (TTL and ack_wait {} s); runs {:?}; overlaps {}",
        released_at - stall_at,
        ACK_WAIT.as_secs(),
        runs.iter()
            .map(|r| (&r.worker, r.start - stall_at, r.end - stall_at, r.completed))
            .collect::<Vec<_>>(),
        overlaps.len(),
    );
    assert!(
        released_at - stall_at > ACK_WAIT.as_secs_f64(),
        "held longer than TTL and ack_wait"
    );
    assert!(overlaps.is_empty(), "overlapping runs: {overlaps:#?}");
    assert!(driver_overlaps.is_empty(), "{driver_overlaps:?}");
    assert!(
        stalled_runs.is_empty(),
        "the stalled worker started Helm after losing its lease: {stalled_runs:#?}"
    );
    assert!(
        terminal.missing.is_empty() && terminal.conflicting.is_empty(),
        "{terminal:?}"
    );
    assert!(regressed.is_empty(), "statuses went back: {regressed:?}");

    write_row(&Row {
        scenario: 10,
        name: "Stall between lease and Helm".into(),
        injected: format!(
            "a proxy between one worker and NATS held every frame from the server's ack of that worker's release lease until the job, redelivered after ack_wait, ran on the other worker ({:.1} s; TTL and ack_wait {} s)",
            released_at - stall_at,
            ACK_WAIT.as_secs()
        ),
        jobs: 1,
        releases: 1,
        lost: (terminal.missing.len()) as u64,
        overlapping_runs: overlaps.len() as u64,
        duplicated_runs: 0,
        duplicated_why: format!(
            "the stalled worker started Helm {} times: its pre-start renewal of the lease failed",
            stalled_runs.len()
        ),
        recovery: "the job ran once, on the other worker".into(),
        test: TEST.into(),
        figures: BTreeMap::from([(
            "frames held".into(),
            format!("{:.1} s", released_at - stall_at),
        )]),
    });
    stack.stop().await;
}

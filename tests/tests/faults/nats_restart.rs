//! Scenario 2, NATS restarts: the load of scenario 1 (500 jobs over 200 releases on 3
//! `helmq-worker` processes, the writer in process over the in-memory API server) while the
//! nats-server (file storage) is killed and started again on the same store twice. Nothing is
//! lost, and no helmq process is restarted: they reconnect.

use std::collections::BTreeMap;
use std::time::Duration;

use helmq_queue::Topology;
use helmq_tests::faults::{Row, extra_runs, overlapping_runs, regressions, write_row};

use crate::support::{ProcessLoad, Stack, now, processes_unavailable, spread};

const TEST: &str = "faults::nats_restart::nothing_is_lost_when_nats_restarts_twice_under_load";
/// How long each outage lasts.
const OUTAGE: Duration = Duration::from_secs(3);
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: just faults"]
async fn nothing_is_lost_when_nats_restarts_twice_under_load() {
    // Not a pass that did nothing: a scenario that cannot run here fails with the reason.
    if let Some(reason) = processes_unavailable() {
        panic!("scenario 2 cannot run here: {reason}");
    }
    let topology = Topology {
        ack_wait: Duration::from_secs(10),
        lease_ttl: Duration::from_secs(10),
        ..Topology::default()
    };
    let stack = Stack::start(&topology).await;
    let started = now();
    let mut load = ProcessLoad::start(stack, 500, 200, 3).await;
    let pids: Vec<u32> = load.workers.iter_mut().map(|w| w.pid()).collect();

    let mut outages = Vec::new();
    for share in [3, 2] {
        // Restart when a third, then a half, of the jobs are done.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
        loop {
            let done = load
                .terminal()
                .await
                .map(|t| load.jobs.len() - t.missing.len());
            if done.is_some_and(|d| d * share >= load.jobs.len()) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the load stalled before the restart: {done:?} jobs done"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let down = now();
        load.stack.server.kill();
        tokio::time::sleep(OUTAGE).await;
        load.stack.server.restart();
        let up = now();
        // The test's own client answers again once it has reconnected.
        while load.stack.dead_letters().await.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        outages.push((down, up, now()));
    }
    let settled = load.settle(Duration::from_secs(240)).await;
    let elapsed = now() - started;

    let alive: Vec<bool> = load.workers.iter_mut().map(|w| w.alive()).collect();
    let same: Vec<u32> = load.workers.iter_mut().map(|w| w.pid()).collect();
    let writer_running = load.stack.writer_running();
    let runs = load.runs();
    let overlaps = overlapping_runs(&runs);
    let extra = extra_runs(&runs, &load.published());
    let repeated: usize = extra.iter().map(|e| e.extra()).sum();
    let terminal = load.terminal().await.expect("status stream");
    let regressed = regressions(&load.stack.positions());
    let not_converged = load.stack.not_converged(&load.want).await;
    let dead_letters = load.stack.dead_letters().await.expect("DLQ");
    let (_, deliveries) = load.stack.jobs_and_deliveries().await.expect("jobs");
    let applies = runs.iter().filter(|r| r.action == "apply").count();
    let interrupted = runs.iter().filter(|r| !r.completed).count();
    eprintln!(
        "faults[2]: 2 restarts ({} s down each); {} jobs, {deliveries} deliveries, {applies} \
         upgrades ({interrupted} interrupted), {repeated} repeats of a finished job; {} \
         terminal events repeated; {dead_letters} dead letters; settled {settled:.1} s after \
         the second restart; overlaps {}; regressions \
         {}; wall time {elapsed:.0} s",
        OUTAGE.as_secs(),
        load.jobs.len(),
        terminal.repeated,
        overlaps.len(),
        regressed.len(),
    );
    assert!(
        alive.iter().all(|a| *a),
        "a worker process exited: {alive:?}"
    );
    assert_eq!(pids, same, "a worker process was replaced");
    assert!(writer_running, "the writer stopped");
    assert!(overlaps.is_empty(), "overlapping runs: {overlaps:#?}");
    assert!(
        terminal.missing.is_empty() && terminal.conflicting.is_empty(),
        "{terminal:?}"
    );
    assert!(not_converged.is_empty(), "{not_converged:?}");
    assert!(regressed.is_empty(), "statuses went back: {regressed:?}");
    let too_many: Vec<_> = extra
        .iter()
        .filter(|e| e.completed > e.published + 1)
        .collect();
    assert!(
        too_many.is_empty(),
        "jobs applied more than once more than published: {too_many:?}"
    );

    write_row(&Row {
        scenario: 2,
        name: "NATS restarts".into(),
        injected: format!(
            "nats-server (file storage) SIGKILLed and started again on the same store twice, {} s down each, under the load of scenario 1; no helmq process restarted",
            OUTAGE.as_secs()
        ),
        jobs: load.jobs.len() as u64,
        releases: 200,
        lost: (terminal.missing.len() + not_converged.len()) as u64,
        overlapping_runs: overlaps.len() as u64,
        duplicated_runs: repeated as u64,
        duplicated_why: format!(
            "{interrupted} runs interrupted; {repeated} finished jobs ran again; {} terminal statuses published again by redeliveries (idempotent)",
            terminal.repeated
        ),
        recovery: format!(
            "all settled {:.0} s after the second restart; server down {}; a client answering again {} after the restart",
            settled,
            spread(outages.iter().map(|(d, u, _)| u - d).collect()),
            spread(outages.iter().map(|(_, u, a)| a - u).collect())
        ),
        test: TEST.into(),
        figures: BTreeMap::from([
            ("deliveries".into(), deliveries.to_string()),
            ("dead letters".into(), dead_letters.to_string()),
            ("wall time".into(), format!("{elapsed:.0} s")),
        ]),
    });
    load.stack.stop().await;
}

//! Scenario 5, writer down: 150 Components deployed (generation 1) with the writer running,
//! then the writer is stopped for 60 s while every Component is edited and its generation-2
//! job finishes on two in-process pools (Helm in memory, 50–500 ms per run); then a new writer
//! starts. Every Component must converge to its newest event (`Ready` at generation 2), none
//! may regress, and the backlog drains at the writer's full speed (events/s printed).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use helmq_queue::Topology;
use helmq_tests::faults::{
    Row, extra_runs, overlapping_runs, regressions, terminal_statuses, write_row,
};
use helmq_worker::MemoryDriver;

use crate::support::{
    Pool, Recorder, RecordingDriver, Stack, apply_job, jetstream_sink, job_keys, now, settings,
};

const TEST: &str = "faults::writer_down::components_converge_after_the_writer_was_down_for_60_s";
const COMPONENTS: usize = 150;
/// How long the writer is down.
const OUTAGE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: just faults"]
async fn components_converge_after_the_writer_was_down_for_60_s() {
    let mut stack = Stack::start(&Topology::default()).await;
    let helm = MemoryDriver::new();
    let recorder = Recorder::default();
    let mut pools = Vec::new();
    for id in ["w1", "w2"] {
        pools.push(
            Pool::start(
                stack.server.url(),
                RecordingDriver::new(&helm, id, &recorder),
                settings(id),
                jetstream_sink,
            )
            .await,
        );
    }
    stack.start_writer().await;
    let release = |i: usize| format!("r{i:03}");
    let components = stack.create_components(COMPONENTS, release);
    let mut jobs: Vec<_> = components
        .iter()
        .enumerate()
        .map(|(i, c)| apply_job(c, &release(i)))
        .collect();
    for job in &jobs {
        stack.publish(job).await;
    }
    let first: HashMap<String, i64> = jobs.iter().map(|j| (j.component.name.clone(), 1)).collect();
    converge(&stack, &first, Duration::from_secs(120)).await;

    // The writer goes; users edit every Component and the workers finish the new jobs.
    stack.stop_writer().await;
    let down = now();
    let second: Vec<_> = components
        .iter()
        .enumerate()
        .map(|(i, c)| apply_job(&stack.bump(c), &release(i)))
        .collect();
    for job in &second {
        stack.publish(job).await;
    }
    jobs.extend(second.iter().cloned());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let finished_at = loop {
        let report = stack
            .statuses()
            .await
            .map(|events| terminal_statuses(&job_keys(&second), &events));
        if report.as_ref().is_some_and(|r| r.missing.is_empty()) {
            break now();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "generation-2 jobs without a terminal status: {:?}",
            report.map(|r| r.missing.len())
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // The outage lasts OUTAGE, or until the jobs finished if that took longer.
    tokio::time::sleep(OUTAGE.saturating_sub(Duration::from_secs_f64(finished_at - down))).await;
    let backlog = stack.writer_state().await.map_or(0, |s| s.0);
    let counted =
        |m: &helmq_producer::metrics::Metrics| (m.statuses_applied.get(), m.coalesced_events.get());
    let (applied_before, coalesced_before) = counted(&stack.metrics);
    let restarted = now();
    stack.start_writer().await;
    let newest: HashMap<String, i64> = second
        .iter()
        .map(|j| (j.component.name.clone(), 2))
        .collect();
    converge(&stack, &newest, Duration::from_secs(120)).await;
    let drained = now() - restarted;
    let (applied, coalesced) = counted(&stack.metrics);
    let (applied, coalesced) = (applied - applied_before, coalesced - coalesced_before);
    // Several events of one Component in a batch take one status write.
    let writes = applied - coalesced;
    for pool in pools {
        pool.stop().await;
    }

    let runs = recorder.runs();
    let overlaps = overlapping_runs(&runs);
    let published: HashMap<(String, i64), usize> =
        job_keys(&jobs).into_iter().map(|k| (k, 1)).collect();
    let extra = extra_runs(&runs, &published);
    let repeated: usize = extra.iter().map(|e| e.extra()).sum();
    let events = stack.statuses().await.expect("status stream");
    let terminal = terminal_statuses(&job_keys(&jobs), &events);
    let regressed = regressions(&stack.positions());
    let rate = backlog as f64 / drained.max(0.001);
    eprintln!(
        "faults[5]: writer down {:.0} s; {} \
         generation-2 jobs finished {:.1} s into the outage; backlog {backlog} events drained in \
         {drained:.2} s = {rate:.0} events/s, {applied} applied in {writes} status writes; \
         overlaps {}; regressions {}; repeats {repeated}",
        restarted - down,
        second.len(),
        finished_at - down,
        overlaps.len(),
        regressed.len(),
    );
    assert!(overlaps.is_empty(), "overlapping runs: {overlaps:#?}");
    assert!(
        terminal.missing.is_empty() && terminal.conflicting.is_empty(),
        "{terminal:?}"
    );
    assert!(regressed.is_empty(), "statuses went back: {regressed:?}");
    assert!(backlog > 0, "the writer had nothing to catch up on");

    write_row(&Row {
        scenario: 5,
        name: "Writer down".into(),
        injected: format!(
            "status writer stopped for {:.0} s while {} jobs (generation 2 of every Component) finished; then a new writer",
            restarted - down,
            second.len()
        ),
        jobs: jobs.len() as u64,
        releases: COMPONENTS as u64,
        lost: (terminal.missing.len()) as u64,
        overlapping_runs: overlaps.len() as u64,
        duplicated_runs: repeated as u64,
        duplicated_why: "none".into(),
        recovery: format!(
            "backlog of {backlog} events drained in {drained:.1} s ({rate:.0} events/s; {applied} applied in {writes} status writes); every Component Ready at generation 2"
        ),
        test: TEST.into(),
        figures: BTreeMap::from([
            ("backlog".into(), backlog.to_string()),
            ("drain rate".into(), format!("{rate:.0} events/s")),
            (
                "status writes".into(),
                format!("{writes} for {applied} events applied"),
            ),
        ]),
    });
    stack.stop().await;
}

/// Waits until every Component in `want` is `Ready` at its generation and the writer has
/// nothing left.
async fn converge(stack: &Stack, want: &HashMap<String, i64>, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = stack.not_converged(want).await;
        if left.is_empty() && stack.writer_idle().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not converged after {limit:?}: {} Components, e.g. {:?}",
            left.len(),
            left.first()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

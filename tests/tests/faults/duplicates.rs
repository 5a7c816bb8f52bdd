//! Scenario 7, duplicates and reordering: 60 Components at generation 3, every job of every
//! generation published 3 times in shuffled order without a `Nats-Msg-Id` (so JetStream's
//! dedupe window cannot drop the copies: the worker must absorb them), to two in-process
//! pools. Their status events are captured, then published 3 times each in shuffled order,
//! again without ids, before the real writer starts over the in-memory API server: every
//! Component must end with its newest generation's status.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use helmq_queue::Topology;
use helmq_schemas::subject::{job_subject, status_subject};
use helmq_tests::faults::{
    Row, extra_runs, overlapping_runs, regressions, terminal_statuses, write_row,
};
use helmq_worker::MemoryDriver;

use crate::support::{
    CapturingSink, Pool, Recorder, RecordingDriver, Stack, apply_job, now, settings,
};

const TEST: &str =
    "faults::duplicates::jobs_and_status_events_thrice_and_shuffled_end_at_the_newest_generation";
const COMPONENTS: usize = 60;
const GENERATIONS: i64 = 3;
const COPIES: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: just faults"]
async fn jobs_and_status_events_thrice_and_shuffled_end_at_the_newest_generation() {
    let topology = Topology {
        lease_ttl: Duration::from_secs(3),
        ..Topology::default()
    };
    let mut stack = Stack::start(&topology).await;
    let started = now();

    // Every generation's job of every Component, then the Components at their newest.
    let mut jobs = Vec::new();
    for mut component in stack.create_components(COMPONENTS, |i| format!("r{i:03}")) {
        let release = format!(
            "r{:03}",
            component.metadata.name.as_deref().unwrap_or("c0")[1..]
                .parse::<usize>()
                .unwrap_or(0)
        );
        jobs.push(apply_job(&component, &release));
        for _ in 1..GENERATIONS {
            component = stack.bump(&component);
            jobs.push(apply_job(&component, &release));
        }
    }
    let mut copies: Vec<_> = jobs.iter().flat_map(|j| vec![j; COPIES]).collect();
    fastrand::shuffle(&mut copies);
    for job in &copies {
        // No Nats-Msg-Id: every copy is stored.
        stack
            .js
            .publish(
                job_subject(&job.component.namespace, &job.component.name),
                job.encode().into(),
            )
            .await
            .expect("publish")
            .await
            .expect("stored");
    }

    let helm = MemoryDriver::new();
    let recorder = Recorder::default();
    let sink = CapturingSink::default();
    let mut pools = Vec::new();
    for id in ["w1", "w2"] {
        let sink = sink.clone();
        pools.push(
            Pool::start(
                stack.server.url(),
                RecordingDriver::new(&helm, id, &recorder),
                settings(id),
                move |_| sink,
            )
            .await,
        );
    }
    // Until every copy is settled: the stream (a work queue) is empty.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let left = stack.jobs_and_deliveries().await.map(|(left, _)| left);
        if left == Some(0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job copies left after 180 s: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (_, deliveries) = stack.jobs_and_deliveries().await.expect("jobs");
    for pool in pools {
        pool.stop().await;
    }
    let worked = now() - started;

    // Every status event three times, shuffled, then the writer.
    let events = sink.events();
    let mut statuses: Vec<_> = events.iter().flat_map(|e| vec![e; COPIES]).collect();
    fastrand::shuffle(&mut statuses);
    for event in &statuses {
        stack
            .js
            .publish(
                status_subject(&event.component.namespace, &event.component.name),
                event.encode().into(),
            )
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    let newest: HashMap<String, i64> = jobs
        .iter()
        .map(|j| (j.component.name.clone(), GENERATIONS))
        .collect();
    let writing = now();
    stack.start_writer().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut left;
    loop {
        left = stack.not_converged(&newest).await;
        if left.is_empty() && stack.writer_idle().await {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            // What the workers said and did for those Components.
            for line in &left {
                let name = line.split(':').next().unwrap_or_default();
                for e in events.iter().filter(|e| e.component.name == name) {
                    eprintln!(
                        "  {name} g{} {:?} order {} seq {} attempt {} {}: {}",
                        e.component.generation,
                        e.phase,
                        e.order,
                        e.job_sequence,
                        e.attempt,
                        e.worker,
                        e.message
                    );
                }
                let uid = jobs
                    .iter()
                    .find(|j| j.component.name == name)
                    .and_then(|j| j.component.uid.clone())
                    .unwrap_or_default();
                for r in recorder.runs().iter().filter(|r| r.uid == uid) {
                    eprintln!(
                        "  {name} run g{} {} {:.3}-{:.3} completed {}",
                        r.generation, r.worker, r.start, r.end, r.completed
                    );
                }
            }
            panic!(
                "Components not at their newest generation after 60 s: {left:#?}; writer: {:?}",
                stack.writer_state().await
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let written = now() - writing;

    let runs = recorder.runs();
    let overlaps = overlapping_runs(&runs);
    // Each job counts as published once here: its copies are what must be absorbed.
    let once: HashMap<(String, i64), usize> = crate::support::job_keys(&jobs)
        .into_iter()
        .map(|k| (k, 1))
        .collect();
    let extra = extra_runs(&runs, &once);
    let repeated: usize = extra.iter().map(|e| e.extra()).sum();
    let newest_jobs: Vec<(String, i64)> = crate::support::job_keys(&jobs)
        .into_iter()
        .filter(|(_, g)| *g == GENERATIONS)
        .collect();
    let terminal = terminal_statuses(&newest_jobs, &events);
    let regressed = regressions(&stack.positions());
    let applies = runs.iter().filter(|r| r.action == "apply").count();
    let ran_older = runs
        .iter()
        .filter(|r| r.action == "apply" && r.generation < GENERATIONS)
        .count();
    eprintln!(
        "faults[7]: {} jobs x{COPIES} = {} copies shuffled, {deliveries} deliveries, {applies} \
         applies ({ran_older} of older generations, {repeated} repeats of a finished job); \
         {} status events x{COPIES} = {} shuffled; overlaps {}; regressions {}; workers done \
         in {worked:.1} s, writer converged in {written:.1} s",
        jobs.len(),
        copies.len(),
        events.len(),
        statuses.len(),
        overlaps.len(),
        regressed.len(),
    );
    assert!(left.is_empty());
    assert!(overlaps.is_empty(), "overlapping runs: {overlaps:#?}");
    assert!(
        terminal.missing.is_empty() && terminal.conflicting.is_empty(),
        "{terminal:?}"
    );
    assert!(regressed.is_empty(), "statuses went back: {regressed:?}");
    assert_eq!(repeated, 0, "a job ran again after it finished: {extra:?}");
    assert_eq!(
        helm.overlaps(),
        Vec::<String>::new(),
        "the in-memory helm saw overlapping calls"
    );

    write_row(&Row {
        scenario: 7,
        name: "Duplicates and reordering".into(),
        injected: format!(
            "every job ({} over {COMPONENTS} Components x {GENERATIONS} generations) published {COPIES} times shuffled, and every status event ({}) {COPIES} times shuffled, all without Nats-Msg-Id",
            jobs.len(),
            events.len()
        ),
        jobs: jobs.len() as u64,
        releases: COMPONENTS as u64,
        lost: (terminal.missing.len() + left.len()) as u64,
        overlapping_runs: overlaps.len() as u64,
        duplicated_runs: repeated as u64,
        duplicated_why: format!(
            "none: {} of {deliveries} deliveries ran no Helm (copies of a finished or superseded job); {ran_older} runs were of an older generation that came first",
            deliveries.saturating_sub(applies as u64)
        ),
        recovery: format!("writer converged {written:.1} s after start (no outage)"),
        test: TEST.into(),
        figures: BTreeMap::from([
            ("job copies".into(), copies.len().to_string()),
            ("status copies".into(), statuses.len().to_string()),
        ]),
    });
    stack.stop().await;
}

//! Scenario 6, API faults: the in-memory API server fails 30% of the producer's and the writer's
//! calls (reads and writes) with 409, 429, 500 or a timeout (a call that hangs, then fails as a
//! transport error; half of the timed-out writes were carried out), from a fixed seed.
//!
//! The real watcher claims 300 new Components (over 100 releases) and publishes their jobs, two
//! worker pools run them through the recording driver, and the real writer writes their
//! statuses back, all through the faulty API server: every Component must end `Ready` at its
//! generation, with one terminal status per job, no overlapping runs and no regression. The
//! retries the faults cost are printed from helmq's own counters.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use helmq_producer::store::fake::RandomFaults;
use helmq_producer::watcher::{Watcher, WatcherConfig};
use helmq_queue::{JetStreamQueue, JetStreamStatus, Topology};
use helmq_tests::faults::{
    Row, extra_runs, overlapping_runs, regressions, terminal_statuses, write_row,
};
use helmq_worker::MemoryDriver;
use tokio_util::sync::CancellationToken;

use crate::support::{
    NAMESPACE, Pool, Recorder, RecordingDriver, Stack, config_json, fault_values, jetstream_sink,
    settings,
};

const COMPONENTS: usize = 300;
const RELEASES: usize = 100;
const FAULT_RATE: f64 = 0.3;
const SEED: u64 = 13;
/// How long a timed-out call hangs before it fails (the watcher and the writer handle one
/// Component at a time, so hangs add up).
const HANG: Duration = Duration::from_millis(250);
const DEADLINE: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: just faults"]
async fn api_faults() {
    let mut stack = Stack::start(&Topology::default()).await;
    // Each Component's values name its job (uid, generation) for the recording driver: set
    // once its uid is known, which makes generation 2, before anything watches.
    let mut want = HashMap::new();
    let mut expected = Vec::new();
    for (i, component) in stack
        .create_components(COMPONENTS, |i| format!("r{:03}", i % RELEASES))
        .into_iter()
        .enumerate()
    {
        let name = component.metadata.name.clone().unwrap_or_default();
        let uid = component.metadata.uid.clone().unwrap_or_default();
        let edited = stack
            .store
            .edit_spec(NAMESPACE, &name, |spec| {
                spec.config = Some(config_json(
                    &format!("r{:03}", i % RELEASES),
                    fault_values(&uid, 2),
                ));
            })
            .expect("edit a Component");
        let generation = edited.metadata.generation.unwrap_or_default();
        want.insert(name, generation);
        expected.push((uid, generation));
    }

    stack.store.set_random_faults(Some(RandomFaults {
        seed: SEED,
        rate: FAULT_RATE,
        hang: HANG,
    }));
    let started = Instant::now();
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
    let watcher = Watcher::new(
        stack.store.clone(),
        JetStreamQueue::new(stack.js.clone()),
        JetStreamStatus::new(stack.js.clone()),
        WatcherConfig {
            // A failed claim or publish is retried after this (5 s by default), doubled per
            // failure in a row: at 30% faults some Components fail 8 times in a row.
            retry_interval: Duration::from_millis(250),
            // Every status write is a chance of failure, and a claim now takes two (the
            // finalizer, then the issued job): ten failures in a row happen to one of 300
            // Components in a run or two, and doubled up to the 5-minute default they would
            // outlast the deadline. Capped, the unlucky one is retried every few seconds.
            max_retry_delay: Duration::from_secs(4),
            ..WatcherConfig::default()
        },
        stack.metrics.clone(),
    );
    let stop_watcher = CancellationToken::new();
    let watcher = tokio::spawn(watcher.run(stop_watcher.clone()));

    let deadline = Instant::now() + DEADLINE;
    let mut left = stack.not_converged(&want).await;
    while !left.is_empty() {
        if Instant::now() >= deadline {
            let stuck: Vec<String> = left
                .iter()
                .take(5)
                .map(|line| {
                    let name = line.split(':').next().unwrap_or_default();
                    let finalizers = stack
                        .store
                        .snapshot(NAMESPACE, name)
                        .and_then(|c| c.metadata.finalizers);
                    format!("{line} (finalizers {finalizers:?})")
                })
                .collect();
            let m = &stack.metrics;
            panic!(
                "{} Components not Ready after {DEADLINE:?} under API faults, e.g. {stuck:?}; \
                 injected {:?}; writer consumer (pending, ack pending, redelivered) {:?}; jobs \
                 (left, deliveries) {:?}; dead letters {:?}; conflicts {}, status retries {}, \
                 handling failures {}, statuses applied {}, events published {:?}",
                left.len(),
                stack.store.injected_faults(),
                stack.writer_state().await,
                stack.jobs_and_deliveries().await,
                stack.dead_letters().await,
                m.conflicts.get(),
                m.status_retries.get(),
                m.handling_failures.get(),
                m.statuses_applied.get(),
                m.events_published,
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        left = stack.not_converged(&want).await;
    }
    let converged = started.elapsed();
    let injected = stack.store.injected_faults();
    stack.store.set_random_faults(None);
    // Everything settled: no job or status event left unhandled.
    let settle = Instant::now() + Duration::from_secs(60);
    while !(stack.writer_idle().await
        && stack
            .jobs_and_deliveries()
            .await
            .is_some_and(|(jobs, _)| jobs == 0))
    {
        assert!(Instant::now() < settle, "the queues did not drain");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_watcher.cancel();
    watcher
        .await
        .expect("watcher task")
        .expect("the watcher stopped with an error");
    for pool in pools {
        pool.stop().await;
    }

    let runs = recorder.runs();
    let overlaps = overlapping_runs(&runs);
    let published: HashMap<(String, i64), usize> =
        expected.iter().map(|job| (job.clone(), 1)).collect();
    let extra = extra_runs(&runs, &published);
    let events = stack.statuses().await.expect("status events");
    let terminal = terminal_statuses(&expected, &events);
    let regressed = regressions(&stack.positions());
    let dead_letters = stack.dead_letters().await.expect("dead letters");
    let metrics = &stack.metrics;
    let (conflicts, status_retries, handling_failures, watch_errors) = (
        metrics.conflicts.get(),
        metrics.status_retries.get(),
        metrics.handling_failures.get(),
        metrics.watch_errors.get(),
    );
    let retries = conflicts + status_retries + handling_failures;
    println!(
        "scenario 6: {COMPONENTS} Components over {RELEASES} releases, {:.0}% of API calls \
         failed (seed {SEED}): injected {} ({} 409, {} 429, {} 500, {} timeouts of {:.2} s); \
         retries: {conflicts} conflicts re-read, {status_retries} status events put back, \
         {handling_failures} handling failures retried, {watch_errors} watch errors; all Ready \
         {:.1} s after the faults began; {} runs, {} extra, {} dead letters",
        FAULT_RATE * 100.0,
        injected.total(),
        injected.conflicts,
        injected.throttled,
        injected.server_errors,
        injected.timeouts,
        HANG.as_secs_f64(),
        converged.as_secs_f64(),
        runs.len(),
        extra.len(),
        dead_letters,
    );

    let mut row = Row {
        scenario: 6,
        name: "API faults".into(),
        injected: format!(
            "{:.0}% of the producer's and the writer's API calls fail: 409, 429, 500 or a {:.2} s \
             timeout (half of timed-out writes carried out)",
            FAULT_RATE * 100.0,
            HANG.as_secs_f64()
        ),
        jobs: COMPONENTS as u64,
        releases: RELEASES as u64,
        lost: terminal.missing.len() as u64,
        overlapping_runs: overlaps.len() as u64,
        duplicated_runs: extra.iter().map(|e| e.extra() as u64).sum(),
        duplicated_why: if extra.is_empty() {
            "none: a failed claim or status write is retried, never the Helm run".into()
        } else {
            format!(
                "{} jobs ran again: {:?}",
                extra.len(),
                &extra[..extra.len().min(3)]
            )
        },
        recovery: format!(
            "all Ready {:.1} s after the faults began, with {retries} retries",
            converged.as_secs_f64()
        ),
        test: "tests/tests/faults/api_faults.rs::api_faults".into(),
        ..Row::default()
    };
    for (name, value) in [
        ("faults injected", injected.total()),
        ("409 injected", injected.conflicts),
        ("429 injected", injected.throttled),
        ("500 injected", injected.server_errors),
        ("timeouts injected", injected.timeouts),
        ("conflicts re-read", conflicts),
        ("status events retried", status_retries),
        ("handling failures retried", handling_failures),
        ("dead letters", dead_letters),
    ] {
        row.figures.insert(name.into(), value.to_string());
    }
    write_row(&row);
    stack.stop().await;

    assert!(injected.total() > 0, "no fault was injected");
    assert!(retries > 0, "faults were injected but no retry was counted");
    assert!(overlaps.is_empty(), "overlapping runs: {overlaps:?}");
    assert!(
        terminal.missing.is_empty() && terminal.conflicting.is_empty(),
        "{terminal:?}"
    );
    assert!(regressed.is_empty(), "status regressed: {regressed:?}");
    assert_eq!(
        dead_letters, 0,
        "a transient API fault dead-lettered a status"
    );
}

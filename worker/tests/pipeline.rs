//! The job pipeline against a real nats-server, with Helm replaced by the in-memory driver:
//! exclusivity, latest intent, retries, dead letters, bad input, stuck releases, progress.

mod common;

use std::time::Duration;

use common::*;
use helmq_queue::Topology;
use helmq_schemas::event::{JobAction, StatusPhase};
use helmq_schemas::subject::job_subject;
use helmq_worker::driver::Revision;
use helmq_worker::driver::memory::Step;
use helmq_worker::metrics::JobOutcome;
use helmq_worker::{MemoryDriver, Settings};

/// A failure a retry can help with (the API server away), which the worker does not handle
/// itself as it does Helm's "another operation in progress".
const TRANSIENT: &str = "Error: Kubernetes cluster unreachable: Get \"https://10.0.0.1:6443/version\": dial tcp 10.0.0.1:6443: connect: connection refused";

#[tokio::test]
async fn two_pools_never_run_two_jobs_for_one_release_at_once_and_finish_every_job() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    driver.set_delay(Duration::from_millis(40));
    let mut a = settings("pool-a");
    a.concurrency = 4;
    // Components sharing releases: contention for each release's lease.
    a.allow_shared_releases = true;
    let b = Settings {
        worker_id: "pool-b".into(),
        ..a.clone()
    };
    let pool_a = env.pool(driver.clone(), a).await;
    let pool_b = env.pool(driver.clone(), b).await;
    // 24 Components sharing 3 releases: every job must run, one at a time per release.
    for i in 0..24 {
        env.publish(&apply(&format!("c{i}"), 1, &format!("r{}", i % 3)))
            .await;
    }
    eventually(Duration::from_secs(60), "24 Ready statuses", || async {
        let ready = env
            .statuses()
            .await
            .into_iter()
            .filter(|s| s.phase == StatusPhase::Ready)
            .count();
        (ready == 24).then_some(())
    })
    .await;
    assert_eq!(driver.overlaps(), Vec::<String>::new());
    let applies = driver
        .calls()
        .into_iter()
        .filter(|c| c.op == "apply")
        .count();
    assert_eq!(applies, 24);
    env.no_jobs_left().await;
    assert!(pool_a.metrics.lease_waits.get() + pool_b.metrics.lease_waits.get() > 0);
    pool_a.stop().await;
    pool_b.stop().await;
}

#[tokio::test]
async fn a_copy_that_started_while_the_job_ran_ends_with_the_outcome_above_its_start() {
    // Found by the fault suite (issue 13, duplicates): a copy of a job published under another
    // id published `Deploying`, waited for the lease, found the job done and published the
    // stored `Ready` again, ordered below its own `Deploying`: the Component stayed Deploying.
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    driver.close_gate();
    let pool = env.pool(driver.clone(), settings("w")).await;
    let job = apply("web", 1, "web");
    env.publish_raw(&job_subject("team", "web"), job.encode())
        .await;
    eventually(
        Duration::from_secs(20),
        "the first copy runs helm",
        || async { (!driver.calls().is_empty()).then_some(()) },
    )
    .await;
    env.publish_raw(&job_subject("team", "web"), job.encode())
        .await;
    eventually(Duration::from_secs(20), "the copy starts", || async {
        (env.phases("web", StatusPhase::Deploying).await.len() == 2).then_some(())
    })
    .await;
    driver.open_gate();
    eventually(Duration::from_secs(20), "both copies settled", || async {
        (pool.metrics.jobs_with(JobOutcome::Duplicate) == 1).then_some(())
    })
    .await;
    let newest = env
        .statuses()
        .await
        .into_iter()
        .max_by_key(|s| s.position())
        .unwrap();
    assert_eq!(newest.phase, StatusPhase::Ready, "{newest:?}");
    assert_eq!(driver.calls().iter().filter(|c| c.op == "apply").count(), 1);
    pool.stop().await;
}

#[tokio::test]
async fn older_generations_are_skipped_and_finished_ones_are_not_rerun() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    let pool = env.pool(driver.clone(), settings("w")).await;
    env.publish(&apply("web", 2, "web")).await;
    eventually(
        Duration::from_secs(20),
        "Ready for generation 2",
        || async { (!env.phases("web", StatusPhase::Ready).await.is_empty()).then_some(()) },
    )
    .await;
    // An older generation arrives late, and generation 2 again (a republish after the window).
    env.publish(&apply("web", 1, "web")).await;
    env.publish_raw(&job_subject("team", "web"), apply("web", 2, "web").encode())
        .await;
    eventually(Duration::from_secs(20), "both jobs settled", || async {
        (pool.metrics.jobs_with(JobOutcome::Superseded) == 1
            && pool.metrics.jobs_with(JobOutcome::Duplicate) == 1)
            .then_some(())
    })
    .await;
    env.no_jobs_left().await;
    let applies = driver
        .calls()
        .into_iter()
        .filter(|c| c.op == "apply")
        .count();
    assert_eq!(
        applies, 1,
        "neither the old nor the repeated generation ran helm"
    );
    assert!(
        env.statuses()
            .await
            .iter()
            .all(|s| s.component.generation == 2),
        "no status for the superseded generation"
    );
    pool.stop().await;
}

#[tokio::test]
async fn a_refresh_of_a_finished_generation_runs_helm_again_and_an_older_refresh_does_not() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    let pool = env.pool(driver.clone(), settings("w")).await;
    let refresh = |n: u32| {
        let mut job = apply("web", 2, "web");
        job.refresh = n;
        job.id = format!("{}:refresh-{n}", job.id);
        job
    };
    env.publish(&apply("web", 2, "web")).await;
    eventually(Duration::from_secs(20), "Ready", || async {
        (!env.phases("web", StatusPhase::Ready).await.is_empty()).then_some(())
    })
    .await;
    env.publish(&refresh(1)).await;
    eventually(Duration::from_secs(20), "the refresh Ready", || async {
        env.phases("web", StatusPhase::Ready)
            .await
            .iter()
            .any(|s| s.job_id.ends_with("refresh-1"))
            .then_some(())
    })
    .await;
    // The generation's first apply, late again: superseded by the refresh.
    env.publish_raw(&job_subject("team", "web"), apply("web", 2, "web").encode())
        .await;
    eventually(
        Duration::from_secs(20),
        "the late copy superseded",
        || async { (pool.metrics.jobs_with(JobOutcome::Superseded) == 1).then_some(()) },
    )
    .await;
    env.no_jobs_left().await;
    let applies = driver.calls().iter().filter(|c| c.op == "apply").count();
    assert_eq!(applies, 2, "the generation once and its refresh once");
    pool.stop().await;
}

#[tokio::test]
async fn a_newer_generation_cancels_an_older_run_waiting_for_readiness() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    driver.script("web", [Step::Delay(Duration::from_secs(300))]);
    let pool = env.pool(driver.clone(), settings("w")).await;
    let mut first = apply("web", 1, "web");
    first.config.values.insert("generation".into(), 1.into());
    env.publish(&first).await;
    eventually(Duration::from_secs(20), "generation 1 running", || async {
        driver.calls().iter().any(|c| c.op == "apply").then_some(())
    })
    .await;
    let mut second = apply("web", 2, "web");
    second.config.values.insert("generation".into(), 2.into());
    env.publish(&second).await;
    let ready = eventually(
        Duration::from_secs(30),
        "Ready for generation 2",
        || async { env.phases("web", StatusPhase::Ready).await.pop() },
    )
    .await;
    assert_eq!(ready.component.generation, 2);
    let applies: Vec<_> = driver
        .calls()
        .into_iter()
        .filter(|c| c.op == "apply")
        .collect();
    assert_eq!(applies.len(), 2);
    assert!(applies[0].cancelled, "generation 1's wait was cancelled");
    assert_eq!(applies[0].values.get("generation"), Some(&1.into()));
    assert!(!applies[1].cancelled);
    // Counted once the message is settled, just after what the test saw.
    eventually(Duration::from_secs(10), "Superseded counted", || async {
        (pool.metrics.jobs_with(JobOutcome::Superseded) == 1).then_some(())
    })
    .await;
    assert!(env.phases("web", StatusPhase::Failed).await.is_empty());
    eventually(Duration::from_secs(10), "queue empty", || async {
        (env.jobs_left().await == 0).then_some(())
    })
    .await;
    pool.stop().await;
}

#[tokio::test]
async fn transient_failures_retry_with_growing_delays_then_succeed() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    driver.script(
        "web",
        [Step::Fail(TRANSIENT.into()), Step::Fail(TRANSIENT.into())],
    );
    let mut s = settings("w");
    s.retry.min = Duration::from_millis(400);
    s.retry.jitter = false;
    let pool = env.pool(driver.clone(), s).await;
    env.publish(&apply("web", 1, "web")).await;
    let ready = eventually(Duration::from_secs(30), "Ready", || async {
        env.phases("web", StatusPhase::Ready).await.pop()
    })
    .await;
    assert_eq!(ready.attempt, 3);
    let times: Vec<_> = driver
        .calls()
        .into_iter()
        .filter(|c| c.op == "apply")
        .map(|c| c.at)
        .collect();
    assert_eq!(times.len(), 3);
    // Backoff 400ms then 800ms: each retry waits at least its delay.
    assert!(times[1] - times[0] >= Duration::from_millis(400));
    assert!(times[2] - times[1] >= Duration::from_millis(800));
    assert_eq!(pool.metrics.retries.get(), 2);
    assert!(env.dead_letters().await.is_empty());
    pool.stop().await;
}

#[tokio::test]
async fn deliveries_given_back_while_waiting_for_the_lease_do_not_spend_the_budget() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    // "first" holds the shared release for a while; "second" fails once, then succeeds.
    driver.script(
        "shared",
        [
            Step::Delay(Duration::from_secs(3)),
            Step::Fail(TRANSIENT.into()),
        ],
    );
    let mut s = settings("w");
    s.concurrency = 2;
    s.max_attempts = 2;
    s.lease_wait = Duration::from_millis(200);
    // Two Components sharing one release, so that one waits for the other's lease.
    s.allow_shared_releases = true;
    s.retry.min = Duration::from_millis(100);
    s.retry.jitter = false;
    let pool = env.pool(driver.clone(), s).await;
    env.publish(&apply("first", 1, "shared")).await;
    eventually(Duration::from_secs(20), "first running", || async {
        driver.calls().iter().any(|c| c.op == "apply").then_some(())
    })
    .await;
    env.publish(&apply("second", 1, "shared")).await;
    let ready = eventually(Duration::from_secs(30), "second Ready", || async {
        env.phases("second", StatusPhase::Ready).await.pop()
    })
    .await;
    // Given back several times while "first" held the lease, then two runs: within budget.
    assert!(
        ready.attempt > 2,
        "the lease wait took {} deliveries",
        ready.attempt
    );
    assert!(env.phases("second", StatusPhase::Failed).await.is_empty());
    assert!(env.dead_letters().await.is_empty());
    let runs = driver.calls().iter().filter(|c| c.op == "apply").count();
    assert_eq!(runs, 3, "first once, second twice");
    pool.stop().await;
}

#[tokio::test]
async fn a_job_that_panics_is_dead_lettered_and_its_slot_keeps_serving() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    driver.script("boom", [Step::Panic("bug met by this job".into())]);
    let health = helmq_telemetry::Readiness::default();
    health.ready();
    let mut s = settings("w");
    s.concurrency = 1;
    s.health = health.clone();
    let pool = env.pool(driver.clone(), s).await;
    env.publish(&apply("boom", 1, "boom")).await;
    env.publish(&apply("after", 1, "after")).await;
    eventually(Duration::from_secs(20), "the next job Ready", || async {
        env.phases("after", StatusPhase::Ready).await.pop()
    })
    .await;
    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert_eq!(letters[0].reason, "panic: bug met by this job");
    assert_eq!(pool.metrics.panics.get(), 1);
    assert_eq!(pool.metrics.in_flight.get(), 0);
    assert_eq!(health.get(), Ok(()), "no slot was lost");
    env.no_jobs_left().await;
    pool.stop().await;
}

#[tokio::test]
async fn a_spent_budget_ends_in_failed_and_exactly_one_dead_letter() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    driver.script("web", (0..10).map(|_| Step::Fail(TRANSIENT.into())));
    let mut s = settings("w");
    s.max_attempts = 3;
    let pool = env.pool(driver.clone(), s).await;
    env.publish(&apply("web", 1, "web")).await;
    let failed = eventually(Duration::from_secs(30), "Failed", || async {
        env.phases("web", StatusPhase::Failed).await.pop()
    })
    .await;
    assert_eq!(failed.attempt, 3);
    assert!(
        failed.message.contains("cluster unreachable"),
        "{}",
        failed.message
    );
    assert!(
        !failed.message.contains("hunter2"),
        "values never reach statuses"
    );
    let letters = eventually(Duration::from_secs(10), "a dead letter", || async {
        let letters = env.dead_letters().await;
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 3);
    assert!(
        letters[0].reason.contains("cluster unreachable"),
        "{}",
        letters[0].reason
    );
    env.no_jobs_left().await;
    assert_eq!(driver.calls().iter().filter(|c| c.op == "apply").count(), 3);
    pool.stop().await;
}

#[tokio::test]
async fn a_permanent_failure_dead_letters_on_the_first_attempt() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    driver.script(
        "web",
        [Step::Fail(
            r#"Error: chart "nginx" version "1.2.3" not found in https://charts.example.com/stable repository"#
                .into(),
        )],
    );
    let pool = env.pool(driver.clone(), settings("w")).await;
    env.publish(&apply("web", 1, "web")).await;
    let failed = eventually(Duration::from_secs(20), "Failed", || async {
        env.phases("web", StatusPhase::Failed).await.pop()
    })
    .await;
    assert_eq!(failed.attempt, 1);
    let letters = eventually(Duration::from_secs(10), "a dead letter", || async {
        let letters = env.dead_letters().await;
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 1);
    assert!(
        letters[0].reason.contains("not found in"),
        "{}",
        letters[0].reason
    );
    assert_eq!(pool.metrics.retries.get(), 0);
    pool.stop().await;
}

#[tokio::test]
async fn bad_input_is_dead_lettered_once_with_its_reason() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    let mut s = settings("w");
    s.allowlist = helmq_worker::allowlist::Allowlist::new(
        Some(&["https://charts.example.com/"]),
        Some(&["apps"]),
    )
    .unwrap();
    let pool = env.pool(driver.clone(), s).await;

    let valid = apply("schema", 1, "schema");
    let mut unknown_schema = serde_json::to_value(&valid).unwrap();
    unknown_schema["schema"] = "helmq.job/v9".into();
    let mut invalid_config = serde_json::to_value(apply("config", 1, "config")).unwrap();
    invalid_config["config"]["releaseName"] = "Not_A_Valid_Name".into();
    let mut outside_source = apply("source", 1, "source");
    if let helmq_schemas::ChartSource::Http { repository, .. } = &mut outside_source.config.source {
        repository.url = "https://charts.evil.io".into();
    }
    let outside_namespace = job("ns", 1, JobAction::Apply, config("ns", "kube-system"));
    // A chart name that helm would read as a flag (issue 20): refused before helm runs.
    let mut flag_chart = serde_json::to_value(apply("flag", 1, "flag")).unwrap();
    flag_chart["config"]["source"]["chart"]["name"] = "--version".into();
    let mut oversized = serde_json::to_value(apply("big", 1, "big")).unwrap();
    oversized["padding"] = "x".repeat(helmq_schemas::event::MAX_EVENT_BYTES).into();

    // (name, payload, reason, told): only a valid job on its own subject that this worker
    // refuses tells its Component; what cannot be decoded tells none, whatever it names.
    let cases: Vec<(&str, Vec<u8>, &str, bool)> = vec![
        ("garbage", b"{not json".to_vec(), "not JSON", false),
        (
            "schema",
            serde_json::to_vec(&unknown_schema).unwrap(),
            "unknown schema \"helmq.job/v9\"",
            false,
        ),
        (
            "config",
            serde_json::to_vec(&invalid_config).unwrap(),
            "invalid helm config: releaseName",
            false,
        ),
        (
            "source",
            outside_source.encode(),
            "chart source https://charts.evil.io is not allowed",
            true,
        ),
        (
            "ns",
            outside_namespace.encode(),
            "release namespace kube-system is not allowed",
            true,
        ),
        (
            "flag",
            serde_json::to_vec(&flag_chart).unwrap(),
            "invalid helm config: source.chart.name must be a chart name",
            false,
        ),
        (
            "big",
            serde_json::to_vec(&oversized).unwrap(),
            "over the 524288 byte limit",
            false,
        ),
    ];
    for (name, payload, _, _) in &cases {
        env.publish_raw(&job_subject("team", name), payload.clone())
            .await;
    }
    let letters = eventually(
        Duration::from_secs(20),
        "a dead letter per case",
        || async {
            let letters = env.dead_letters().await;
            (letters.len() >= cases.len()).then_some(letters)
        },
    )
    .await;
    assert_eq!(
        letters.len(),
        cases.len(),
        "each dead-lettered exactly once"
    );
    for (name, _, reason, told) in &cases {
        let subject = job_subject("team", name);
        let mine: Vec<_> = letters.iter().filter(|l| l.subject == subject).collect();
        assert_eq!(mine.len(), 1, "{name}");
        assert!(
            mine[0].reason.contains(reason),
            "{name}: {}",
            mine[0].reason
        );
        assert_eq!(mine[0].attempts, 1);
        // A told Component's status is published before the job is dead-lettered.
        let failed = env.phases(name, StatusPhase::Failed).await;
        if *told {
            assert_eq!(failed.len(), 1, "{name}: a Failed status");
            assert!(failed[0].message.contains(reason), "{}", failed[0].message);
        } else {
            assert!(
                failed.is_empty(),
                "{name}: no status for bad input: {failed:?}"
            );
        }
    }
    assert!(driver.calls().is_empty(), "helm never ran");
    env.no_jobs_left().await;
    // Counted once the message is settled, just after what the test saw.
    eventually(Duration::from_secs(10), "Rejected counted", || async {
        (pool.metrics.jobs_with(JobOutcome::Rejected) == 7).then_some(())
    })
    .await;
    pool.stop().await;
}

/// Release apps/web: revision 1 deployed, revision 2 `pending-upgrade` written just now.
fn pending_since_now(driver: &MemoryDriver) {
    let rev = |revision, status: &str| Revision {
        revision,
        status: status.into(),
        chart: "nginx-1.2.2".into(),
        description: String::new(),
        updated: Some(jiff::Timestamp::now()),
        lease_revision: None,
    };
    driver.set_history(
        "apps",
        "web",
        vec![rev(1, "deployed"), rev(2, "pending-upgrade")],
    );
    driver.set_labels("apps", "web", owner_labels(&apply("web", 1, "web")));
}

#[tokio::test]
async fn a_pending_release_written_within_the_lease_ttl_is_reported_and_not_rolled_back() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    // Someone's `helm upgrade` is under way: its record was written a moment ago.
    pending_since_now(&driver);
    let mut s = settings("w");
    s.max_attempts = 1;
    let pool = env.pool(driver.clone(), s).await;
    env.publish(&apply("web", 1, "web")).await;
    let failed = eventually(Duration::from_secs(20), "Failed", || async {
        env.phases("web", StatusPhase::Failed).await.pop()
    })
    .await;
    assert!(
        failed.message.starts_with(
            "release web is pending-upgrade, last written 0s ago: another operation may still be running; not recovering it yet"
        ),
        "{}",
        failed.message
    );
    let touched: Vec<_> = driver
        .calls()
        .into_iter()
        .filter(|c| matches!(c.op, "rollback" | "uninstall" | "apply"))
        .collect();
    assert!(
        touched.is_empty(),
        "nothing ran on the release: {touched:#?}"
    );
    pool.stop().await;
}

#[tokio::test]
async fn a_fresh_pending_release_is_retried_when_it_can_be_recovered_not_before() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    // Left pending a moment ago by a run that died: recoverable once older than the lease TTL
    // (3 s) plus the grace (0 for this driver).
    pending_since_now(&driver);
    // Two attempts: the first finds the record too young; the retry must wait until it is old
    // enough instead of spending the last attempt at once.
    let mut s = settings("w");
    s.max_attempts = 2;
    let pool = env.pool(driver.clone(), s).await;
    env.publish(&apply("web", 1, "web")).await;
    let ready = eventually(Duration::from_secs(30), "Ready", || async {
        env.phases("web", StatusPhase::Ready).await.pop()
    })
    .await;
    assert_eq!(ready.attempt, 2, "{}", ready.message);
    assert!(
        ready.message.starts_with(
            "recovered release web from pending-upgrade by rolling back to revision 1; "
        ),
        "{}",
        ready.message
    );
    assert!(env.phases("web", StatusPhase::Failed).await.is_empty());
    pool.stop().await;
}

#[tokio::test]
async fn a_stuck_release_is_recovered_before_the_job_runs() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    // Written an hour ago: older than the lease TTL, so left behind by a dead run.
    let an_hour_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1);
    let rev = |revision, status: &str| Revision {
        revision,
        status: status.into(),
        chart: "nginx-1.2.2".into(),
        description: String::new(),
        updated: Some(an_hour_ago),
        lease_revision: None,
    };
    driver.set_history(
        "apps",
        "web",
        vec![
            rev(1, "superseded"),
            rev(2, "deployed"),
            rev(3, "pending-upgrade"),
        ],
    );
    driver.set_labels("apps", "web", owner_labels(&apply("web", 5, "web")));
    let pool = env.pool(driver.clone(), settings("w")).await;
    env.publish(&apply("web", 5, "web")).await;
    let ready = eventually(Duration::from_secs(20), "Ready", || async {
        env.phases("web", StatusPhase::Ready).await.pop()
    })
    .await;
    assert!(
        ready.message.starts_with(
            "recovered release web from pending-upgrade by rolling back to revision 2; "
        ),
        "{}",
        ready.message
    );
    let history = driver.history_of("apps", "web");
    let statuses: Vec<_> = history.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(
        statuses,
        [
            "superseded",
            "superseded",
            "failed",
            "superseded",
            "deployed"
        ]
    );
    assert_eq!(ready.release.unwrap().revision, Some(5));
    pool.stop().await;
}

#[tokio::test]
async fn an_orchestrator_jobs_registry_namespace_is_its_subjects_not_the_release_namespace() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    let pool = env.pool(driver.clone(), settings("w")).await;
    // No uid (an orchestrator's job) on team's subject, releasing into apps: a registry Secret
    // without a namespace is team's, never the namespace the publisher chose for the release.
    let mut orchestrated = apply("orch", 1, "orch");
    orchestrated.component.uid = None;
    env.publish(&orchestrated).await;
    eventually(Duration::from_secs(20), "Ready", || async {
        env.phases("orch", StatusPhase::Ready).await.pop()
    })
    .await;
    assert_eq!(
        orchestrated.config.release_namespace, "apps",
        "the release is elsewhere"
    );
    assert_eq!(driver.tenants(), [("orch".to_owned(), "team".to_owned())]);
    pool.stop().await;
}

#[tokio::test]
async fn deletes_uninstall_and_never_delete_the_components_own_namespace() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    let pool = env.pool(driver.clone(), settings("w")).await;
    // Release in the Component's own namespace ("team"), and one in a namespace of its own.
    env.publish(&job("own", 1, JobAction::Delete, config("own", "team")))
        .await;
    env.publish(&job("other", 1, JobAction::Delete, config("other", "apps")))
        .await;
    let own = eventually(Duration::from_secs(20), "Terminated", || async {
        env.phases("own", StatusPhase::Terminated).await.pop()
    })
    .await;
    assert_eq!(
        own.message,
        "release own was already gone; namespace team was not deleted: it is the Component's own namespace"
    );
    let other = eventually(Duration::from_secs(20), "Terminated", || async {
        env.phases("other", StatusPhase::Terminated).await.pop()
    })
    .await;
    assert!(
        other.message.ends_with("namespace apps deleted"),
        "{}",
        other.message
    );
    let deleted: Vec<_> = driver
        .calls()
        .into_iter()
        .filter(|c| c.op == "delete-namespace")
        .map(|c| c.namespace)
        .collect();
    assert_eq!(deleted, ["apps"]);
    assert_eq!(env.phases("own", StatusPhase::Terminating).await.len(), 1);
    pool.stop().await;
}

#[tokio::test]
async fn long_runs_send_progress_and_are_not_redelivered() {
    let env = Env::start(Topology {
        ack_wait: Duration::from_secs(1),
        ..fast_topology()
    })
    .await;
    let driver = MemoryDriver::new();
    driver.script("web", [Step::Delay(Duration::from_secs(4))]);
    let pool = env.pool(driver.clone(), settings("w")).await;
    env.publish(&apply("web", 1, "web")).await;
    let ready = eventually(Duration::from_secs(30), "Ready", || async {
        env.phases("web", StatusPhase::Ready).await.pop()
    })
    .await;
    assert_eq!(ready.attempt, 1, "never redelivered while running");
    assert_eq!(driver.calls().iter().filter(|c| c.op == "apply").count(), 1);
    pool.stop().await;
}

#[tokio::test]
async fn jobs_past_max_deliver_are_moved_to_the_dead_letter_stream() {
    let env = Env::start(Topology {
        max_deliver: 2,
        ..fast_topology()
    })
    .await;
    let driver = MemoryDriver::new();
    driver.script("web", (0..10).map(|_| Step::Fail(TRANSIENT.into())));
    let mut s = settings("w");
    s.max_attempts = 10;
    let pool = env.pool(driver.clone(), s).await;
    env.publish(&apply("web", 1, "web")).await;
    let letters = eventually(Duration::from_secs(30), "a dead letter", || async {
        let letters = env.dead_letters().await;
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].reason.starts_with("exceeded max_deliver"),
        "{}",
        letters[0].reason
    );
    eventually(
        Duration::from_secs(10),
        "job deleted from the stream",
        || async { (env.jobs_left().await == 0).then_some(()) },
    )
    .await;
    pool.stop().await;
}

#[tokio::test]
async fn a_status_the_stream_refuses_dead_letters_the_job_instead_of_retrying_for_ever() {
    let env = Env::start(fast_topology()).await;
    // An operator's smaller limit on the status stream: the short Deploying and Ready events
    // fit, a Failed event with a long error does not.
    let mut status = env
        .js
        .get_stream(helmq_queue::topology::STATUS_STREAM)
        .await
        .unwrap();
    let mut config = status.info().await.unwrap().config.clone();
    config.max_message_size = 2048;
    env.js.update_stream(config).await.unwrap();
    let driver = MemoryDriver::new();
    let long = format!(
        r#"Error: chart "nginx" version "1.2.3" not found in https://charts.example.com/stable repository {}"#,
        "x".repeat(4000)
    );
    driver.script("web", [Step::Fail(long)]);
    let pool = env.pool(driver.clone(), settings("w")).await;
    env.publish(&apply("web", 1, "web")).await;
    env.publish(&apply("ok", 1, "ok")).await;
    let letters = eventually(Duration::from_secs(20), "a dead letter", || async {
        let letters = env.dead_letters().await;
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 1);
    let reason = &letters[0].reason;
    assert!(
        reason.starts_with("its status cannot be published (publishing ")
            && reason.contains(" was refused: "),
        "{reason}"
    );
    assert!(
        reason.contains("): helm apply failed: Error: chart"),
        "{reason}"
    );
    // The good job next to it flows.
    eventually(Duration::from_secs(20), "ok Ready", || async {
        env.phases("ok", StatusPhase::Ready).await.pop()
    })
    .await;
    assert!(env.phases("web", StatusPhase::Failed).await.is_empty());
    eventually(Duration::from_secs(10), "no job left", || async {
        (env.jobs_left().await == 0).then_some(())
    })
    .await;
    assert_eq!(pool.metrics.retries.get(), 0);
    let applies = driver.calls().iter().filter(|c| c.op == "apply").count();
    assert_eq!(applies, 2, "helm ran once per job");
    pool.stop().await;
}

#[tokio::test]
async fn a_release_runs_one_helm_call_per_job_and_is_read_only_when_helm_refuses() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    let pool = env.pool(driver.clone(), settings("w")).await;
    let ops = || driver.calls().into_iter().map(|c| c.op).collect::<Vec<_>>();
    let ready = |generation: i64| {
        let env = &env;
        async move {
            eventually(Duration::from_secs(20), "Ready", || async {
                env.phases("web", StatusPhase::Ready)
                    .await
                    .into_iter()
                    .find(|s| s.component.generation == generation)
            })
            .await
        }
    };
    // Install, then upgrade: one call each, no reads.
    env.publish(&apply("web", 1, "web")).await;
    ready(1).await;
    env.publish(&apply("web", 2, "web")).await;
    ready(2).await;
    assert_eq!(ops(), ["apply", "apply"]);

    // A run cut short left the release pending: Helm refuses the upgrade, the job reads the
    // release, recovers it and upgrades.
    driver.set_history(
        "apps",
        "web",
        vec![helmq_worker::driver::Revision {
            revision: 3,
            status: "pending-upgrade".into(),
            chart: "nginx-1.0.0".into(),
            description: "Preparing upgrade".into(),
            updated: Some(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(3600)),
            lease_revision: Some(1),
        }],
    );
    env.publish(&apply("web", 3, "web")).await;
    let recovered = ready(3).await;
    assert!(
        recovered
            .message
            .starts_with("recovered release web from pending-upgrade"),
        "{}",
        recovered.message
    );
    assert_eq!(
        ops()[2..],
        [
            "refused",
            "status",
            "labels",
            "history",
            "uninstall",
            "apply"
        ]
    );

    // The delete of a recorded release: one call, then its managed namespace.
    env.publish(&job("web", 4, JobAction::Delete, config("web", "apps")))
        .await;
    eventually(Duration::from_secs(20), "Terminated", || async {
        env.phases("web", StatusPhase::Terminated).await.pop()
    })
    .await;
    assert_eq!(ops()[8..], ["uninstall", "delete-namespace"]);
    pool.stop().await;
}

#[tokio::test]
async fn values_from_sources_reach_helm_and_an_unchanged_apply_skips_it() {
    use helmq_schemas::config::{ValuesKind, ValuesReference};
    use helmq_schemas::event::Deployed;

    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    let pool = env.pool(driver.clone(), settings("w")).await;
    driver.set_values_source(
        ValuesKind::ConfigMap,
        "team",
        "web-values",
        &[("values.yaml", "replicas: 2\ndb:\n  host: pg\n")],
    );
    driver.set_values_source(
        ValuesKind::Secret,
        "team",
        "web-db",
        &[("password", "s3cret")],
    );
    let mut job = apply("web", 1, "web");
    job.config.values_from = vec![
        ValuesReference {
            kind: ValuesKind::ConfigMap,
            name: "web-values".into(),
            values_key: "values.yaml".into(),
            target_path: None,
            optional: false,
        },
        ValuesReference {
            kind: ValuesKind::Secret,
            name: "web-db".into(),
            values_key: "password".into(),
            target_path: Some("db.password".into()),
            optional: false,
        },
    ];
    env.publish(&job).await;
    let ready = eventually(Duration::from_secs(20), "Ready", || async {
        env.phases("web", StatusPhase::Ready).await.pop()
    })
    .await;
    let applied = driver
        .calls()
        .into_iter()
        .find(|c| c.op == "apply")
        .unwrap();
    assert_eq!(applied.values["replicas"], 2);
    assert_eq!(applied.values["db"]["password"], "s3cret");
    assert_eq!(applied.values["db"]["host"], "pg");
    assert_eq!(
        applied.values["password"], "hunter2-secret",
        "inline values on top"
    );
    let deployed: Deployed = ready.release.unwrap().deployed.expect("digests reported");
    assert!(!ready.message.contains("s3cret"));

    // The same values and config again (a refresh with the status's digests): no Helm run.
    let mut again = job.clone();
    again.refresh = 1;
    again.id = format!("{}:refresh-1", job.id);
    again.deployed = Some(deployed.clone());
    env.publish(&again).await;
    let skipped = eventually(Duration::from_secs(20), "the refresh Ready", || async {
        env.phases("web", StatusPhase::Ready)
            .await
            .into_iter()
            .find(|s| s.job_id == again.id)
    })
    .await;
    assert!(
        skipped.message.contains("helm not run"),
        "{}",
        skipped.message
    );
    assert_eq!(driver.calls().iter().filter(|c| c.op == "apply").count(), 1);

    // A changed Secret changes the digest: Helm runs.
    driver.set_values_source(ValuesKind::Secret, "team", "web-db", &[("password", "n3w")]);
    let mut changed = again.clone();
    changed.refresh = 2;
    changed.id = format!("{}:refresh-2", job.id);
    env.publish(&changed).await;
    eventually(
        Duration::from_secs(20),
        "the second refresh Ready",
        || async {
            env.phases("web", StatusPhase::Ready)
                .await
                .into_iter()
                .find(|s| s.job_id == changed.id)
        },
    )
    .await;
    let applies: Vec<_> = driver
        .calls()
        .into_iter()
        .filter(|c| c.op == "apply")
        .collect();
    assert_eq!(applies.len(), 2);
    assert_eq!(applies[1].values["db"]["password"], "n3w");

    // A missing required source fails the deploy naming it, without running Helm.
    let mut missing = apply("other", 1, "other");
    missing.config.values_from = vec![ValuesReference {
        kind: ValuesKind::ConfigMap,
        name: "nope".into(),
        values_key: "values.yaml".into(),
        target_path: None,
        optional: false,
    }];
    env.publish(&missing).await;
    let failed = eventually(Duration::from_secs(20), "Failed", || async {
        env.phases("other", StatusPhase::Failed).await.pop()
    })
    .await;
    assert!(
        failed
            .message
            .contains("valuesFrom[0]: ConfigMap team/nope not found"),
        "{}",
        failed.message
    );
    assert_eq!(driver.calls().iter().filter(|c| c.op == "apply").count(), 2);
    pool.stop().await;
}

#[tokio::test]
async fn a_drift_check_reports_drift_and_in_correct_mode_applies_only_the_drifted_objects() {
    use helmq_schemas::config::DriftMode;
    use serde_json::json;

    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    let pool = env.pool(driver.clone(), settings("w")).await;
    let job = apply("web", 1, "web");
    env.publish(&job).await;
    let ready = eventually(Duration::from_secs(20), "Ready", || async {
        env.phases("web", StatusPhase::Ready).await.pop()
    })
    .await;
    let deployed = ready.release.unwrap().deployed.expect("digests reported");
    let object = |kind: &str, name: &str, replicas: u32| {
        json!({"apiVersion": "apps/v1", "kind": kind,
               "metadata": {"name": name, "namespace": "apps"}, "spec": {"replicas": replicas}})
    };
    driver.set_objects(
        "apps",
        "web",
        vec![
            (
                object("Deployment", "scaled", 2),
                Some(object("Deployment", "scaled", 5)),
            ),
            (
                object("Deployment", "same", 1),
                Some(object("Deployment", "same", 1)),
            ),
        ],
    );
    let check = |refresh: u32, mode: DriftMode| {
        let mut check = job.clone();
        check.refresh = refresh;
        check.id = format!("{}:refresh-{refresh}", job.id);
        check.deployed = Some(deployed.clone());
        check.drift_check = true;
        check.config.drift.mode = mode;
        check
    };
    let answer = |id: String| {
        let env = &env;
        async move {
            eventually(Duration::from_secs(20), "the check's answer", || async {
                env.phases("web", StatusPhase::Ready)
                    .await
                    .into_iter()
                    .find(|s| s.job_id == id)
            })
            .await
        }
    };

    let warn = check(1, DriftMode::Warn);
    env.publish(&warn).await;
    let reported = answer(warn.id.clone()).await;
    let report = reported.release.and_then(|r| r.drift).expect("a report");
    assert_eq!(
        (report.checked, report.drifted, report.corrected),
        (2, 1, false)
    );
    assert_eq!(report.objects[0].fields, ["/spec/replicas"]);
    assert!(
        reported.message.contains("drift detected in release web"),
        "{}",
        reported.message
    );
    let ops = || driver.calls().into_iter().map(|c| c.op).collect::<Vec<_>>();
    assert!(!ops().contains(&"reapply"), "warn puts nothing back");
    assert_eq!(
        ops().iter().filter(|op| **op == "apply").count(),
        1,
        "no Helm run"
    );

    let correct = check(2, DriftMode::Correct);
    env.publish(&correct).await;
    let corrected = answer(correct.id.clone()).await;
    let report = corrected.release.and_then(|r| r.drift).expect("a report");
    assert!(report.corrected && report.drifted == 1);
    assert_eq!(ops().iter().filter(|op| **op == "reapply").count(), 1);
    // Neither check told the Component it was deploying.
    let starts = env.phases("web", StatusPhase::Deploying).await;
    assert!(starts.iter().all(|s| s.job_id == job.id), "{starts:?}");

    // Put back: the next check finds nothing.
    let again = check(3, DriftMode::Correct);
    env.publish(&again).await;
    let clean = answer(again.id.clone()).await;
    assert_eq!(
        clean.release.and_then(|r| r.drift).map(|r| r.drifted),
        Some(0)
    );
    pool.stop().await;
}

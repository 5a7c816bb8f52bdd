//! Losing the NATS connection mid-job (issue 3, "Bad input"): the server is killed while Helm
//! runs or while a job waits for its release lease, and restarted with the same store. The job's
//! outcome must still be published once the connection returns, the job must leave the queue,
//! and a redelivery must not run Helm again for a generation that already finished.

mod common;

use std::time::Duration;

use common::*;
use helmq_queue::Topology;
use helmq_schemas::event::{StatusEvent, StatusPhase};
use helmq_worker::MemoryDriver;
use helmq_worker::driver::memory::Step;
use helmq_worker::metrics::JobOutcome;

/// Leases outlive the outage (30s, the default): the job holding one keeps it until its outcome
/// is recorded, so a second delivery of the job waits for it and then finds the job done.
fn topology() -> Topology {
    Topology {
        lease_ttl: Duration::from_secs(30),
        ..fast_topology()
    }
}

/// Applies the driver ran, per release.
fn applies(driver: &MemoryDriver, release: &str) -> usize {
    driver
        .calls()
        .iter()
        .filter(|c| c.op == "apply" && c.release == release)
        .count()
}

/// Waits until a NATS operation of the job (recording its outcome) has failed: the outcome is
/// not merely buffered by the client across a short outage, the worker has to retry it.
async fn outage_noticed(pool: &Pool) {
    eventually(
        Duration::from_secs(30),
        "an operation failing while NATS is down",
        || async { (pool.metrics.nats_retries.get() > 0).then_some(()) },
    )
    .await;
}

/// Waits until the queue is settled: no job left in the stream and none delivered but unacked.
async fn settled(env: &Env) {
    eventually(
        Duration::from_secs(60),
        "the job stream empty and nothing pending",
        || async { (env.try_jobs_and_pending().await == Some((0, 0))).then_some(()) },
    )
    .await;
}

/// The status events of one Component, oldest first, once one of them is `Ready`.
async fn until_ready(env: &Env, name: &str) -> Vec<StatusEvent> {
    eventually(
        Duration::from_secs(60),
        &format!("a Ready status for {name}"),
        || async {
            let mine: Vec<_> = env
                .try_statuses()
                .await?
                .into_iter()
                .filter(|s| s.component.name == name)
                .collect();
            mine.iter()
                .any(|s| s.phase == StatusPhase::Ready)
                .then_some(mine)
        },
    )
    .await
}

#[tokio::test]
async fn an_outage_while_helm_runs_still_publishes_the_outcome_and_acks_the_job() {
    let mut env = Env::start(topology()).await;
    let driver = MemoryDriver::new();
    driver.close_gate();
    let pool = env.pool(driver.clone(), settings("w")).await;
    let job = apply("web", 1, "web");
    env.publish(&job).await;
    eventually(Duration::from_secs(20), "helm apply started", || async {
        (applies(&driver, "web") == 1).then_some(())
    })
    .await;

    env.server.kill();
    driver.open_gate();
    eventually(
        Duration::from_secs(10),
        "helm apply finished while NATS is down",
        || async { (!driver.history_of("apps", "web").is_empty()).then_some(()) },
    )
    .await;
    outage_noticed(&pool).await;
    assert!(!pool.task.is_finished(), "the pool survives the outage");
    env.server.restart();

    let statuses = until_ready(&env, "web").await;
    settled(&env).await;
    let ready: Vec<_> = statuses
        .iter()
        .filter(|s| s.phase == StatusPhase::Ready)
        .collect();
    assert_eq!(ready[0].job_id, job.id);
    assert_eq!(ready[0].component.generation, 1);
    assert_eq!(ready[0].release.as_ref().and_then(|r| r.revision), Some(1));
    // Read again after settling: a redelivery may have published the outcome once more.
    let last = env
        .try_statuses()
        .await
        .unwrap()
        .into_iter()
        .rfind(|s| s.component.name == "web")
        .unwrap();
    assert_eq!(last.phase, StatusPhase::Ready, "{last:?}");
    assert!(env.dead_letters().await.is_empty());
    assert!(!pool.task.is_finished(), "the pool survives the outage");
    // Stopping drains every delivery still in flight, e.g. a duplicate redelivered after the
    // restart: none of them may run helm again for generation 1.
    pool.stop().await;
    assert_eq!(applies(&driver, "web"), 1, "helm ran once for generation 1");
    assert_eq!(driver.history_of("apps", "web").len(), 1);
}

#[tokio::test]
async fn an_outage_while_a_job_waits_for_its_lease_runs_both_jobs_once_each() {
    let mut env = Env::start(topology()).await;
    let driver = MemoryDriver::new();
    driver.close_gate();
    let mut s = settings("w");
    s.allow_shared_releases = true;
    let pool = env.pool(driver.clone(), s).await;
    // Two Components sharing one release: the second waits for the first's lease.
    env.publish(&apply("first", 1, "shared")).await;
    eventually(
        Duration::from_secs(20),
        "the first apply started",
        || async { (applies(&driver, "shared") == 1).then_some(()) },
    )
    .await;
    env.publish(&apply("second", 1, "shared")).await;
    eventually(
        Duration::from_secs(20),
        "the second job waiting for the lease",
        || async { (pool.metrics.lease_waits.get() > 0).then_some(()) },
    )
    .await;

    env.server.kill();
    driver.open_gate();
    eventually(
        Duration::from_secs(10),
        "the first apply finished while NATS is down",
        || async { (!driver.history_of("apps", "shared").is_empty()).then_some(()) },
    )
    .await;
    outage_noticed(&pool).await;
    assert!(!pool.task.is_finished(), "the pool survives the outage");
    env.server.restart();

    until_ready(&env, "first").await;
    until_ready(&env, "second").await;
    settled(&env).await;
    let statuses = env.try_statuses().await.unwrap();
    for name in ["first", "second"] {
        let last = statuses.iter().rfind(|s| s.component.name == name).unwrap();
        assert_eq!(last.phase, StatusPhase::Ready, "{last:?}");
    }
    assert!(env.dead_letters().await.is_empty());
    assert!(!pool.task.is_finished(), "the pool survives the outage");
    let metrics = pool.metrics.clone();
    pool.stop().await;
    let pool_succeeded = metrics.jobs_with(JobOutcome::Succeeded);
    assert_eq!(driver.overlaps(), Vec::<String>::new());
    assert_eq!(applies(&driver, "shared"), 2, "helm ran once per job");
    assert_eq!(pool_succeeded, 2);
}

#[tokio::test]
async fn a_run_whose_lease_cannot_be_renewed_is_cancelled_before_the_lease_expires() {
    // A 6 s lease, renewed every 2 s; a run that cannot renew it for 4 s must stop.
    let lease_ttl = Duration::from_secs(6);
    let mut env = Env::start(Topology {
        lease_ttl,
        ack_wait: Duration::from_secs(10),
        ..fast_topology()
    })
    .await;
    let driver = MemoryDriver::new();
    driver.script("web", [Step::Delay(Duration::from_secs(120))]);
    let pool = env.pool(driver.clone(), settings("w")).await;
    env.publish(&apply("web", 1, "web")).await;
    eventually(Duration::from_secs(20), "the apply started", || async {
        (applies(&driver, "web") == 1).then_some(())
    })
    .await;

    // NATS goes away for longer than the lease lives.
    let killed = std::time::Instant::now();
    env.server.kill();
    eventually(
        Duration::from_secs(15),
        "the run cancelled while NATS is down",
        || async {
            driver
                .calls()
                .iter()
                .any(|c| c.op == "apply" && c.cancelled)
                .then_some(())
        },
    )
    .await;
    let cancelled_after = killed.elapsed();
    assert!(
        cancelled_after < lease_ttl,
        "cancelled {cancelled_after:?} after the outage began, the lease lives {lease_ttl:?}"
    );
    tokio::time::sleep(lease_ttl).await;
    env.server.restart();

    // The job comes back and runs to the end; the two runs never overlapped.
    until_ready(&env, "web").await;
    settled(&env).await;
    assert_eq!(driver.overlaps(), Vec::<String>::new());
    let runs: Vec<bool> = driver
        .calls()
        .iter()
        .filter(|c| c.op == "apply")
        .map(|c| c.cancelled)
        .collect();
    assert_eq!(runs, [true, false]);
    pool.stop().await;
}

//! Fairness across tenants against a real nats-server, with Helm in memory: a tenant's burst
//! does not hold back another tenant's job when `--tenant-concurrency` is below the slots,
//! parked jobs are kept alive and given back at once at shutdown. Every assertion is on order
//! and counts, never on wall-clock time.

mod common;

use std::time::Duration;

use common::*;
use helmq_schemas::event::{ComponentRef, JobAction, JobEvent, StatusPhase};
use helmq_worker::MemoryDriver;
use helmq_worker::metrics::JobOutcome;

/// Tenant A's burst.
const BURST: usize = 500;

/// An apply job of Component `name` in namespace (tenant) `tenant`, release `name`.
fn tenant_job(tenant: &str, name: &str) -> JobEvent {
    JobEvent::new(
        JobAction::Apply,
        ComponentRef {
            namespace: tenant.into(),
            name: name.into(),
            uid: Some(helmq_tests::build::uid(&format!("{tenant}/{name}"))),
            generation: 1,
        },
        config(name, "apps"),
        30,
        jiff::Timestamp::now(),
    )
}

/// Applies the driver has started, of releases starting with `prefix`.
fn started(driver: &MemoryDriver, prefix: &str) -> usize {
    driver
        .calls()
        .iter()
        .filter(|c| c.op == "apply" && c.release.starts_with(prefix))
        .count()
}

/// 4 slots, at most 2 running jobs per tenant.
fn fair_settings(id: &str) -> helmq_worker::Settings {
    let mut settings = settings(id);
    settings.concurrency = 4;
    settings.tenant_concurrency = 2;
    settings
}

/// A server with `ack_wait`, and a pool of `settings` whose driver holds every apply at its
/// closed gate.
async fn gated(ack_wait: Duration, settings: helmq_worker::Settings) -> (Env, MemoryDriver, Pool) {
    let env = Env::with_ack_wait(ack_wait).await;
    let driver = MemoryDriver::new();
    driver.close_gate();
    let pool = env.pool(driver.clone(), settings).await;
    (env, driver, pool)
}

#[tokio::test]
async fn another_tenants_job_starts_while_one_tenants_burst_is_still_queued() {
    // Every started apply waits at the gate: A can never get past its 2 running jobs on its own.
    let (env, driver, pool) = gated(Duration::from_secs(30), fair_settings("w")).await;
    for i in 0..BURST {
        env.publish(&tenant_job("tenant-a", &format!("a-{i}")))
            .await;
    }
    env.publish(&tenant_job("tenant-b", "b-0")).await;
    eventually(Duration::from_secs(60), "tenant B's job starts", || async {
        (started(&driver, "b-") == 1).then_some(())
    })
    .await;
    // B started while all but A's 2 running jobs were still waiting, and none of A's went past
    // its limit.
    assert_eq!(started(&driver, "a-"), 2);
    assert!(
        pool.metrics.parked.get() >= i64::try_from(BURST - 2).unwrap(),
        "{} parked",
        pool.metrics.parked.get()
    );
    assert!(pool.metrics.parked_with("tenant-limit") >= u64::try_from(BURST - 2).unwrap());
    assert_eq!(pool.metrics.parked_with("check-limit"), 0);
    // Let them all run: every job is done once, never more than 2 of A's at a time.
    driver.open_gate();
    eventually(Duration::from_secs(120), "every job succeeded", || async {
        (pool.metrics.jobs_with(JobOutcome::Succeeded) == BURST as u64 + 1).then_some(())
    })
    .await;
    assert_eq!(started(&driver, "a-"), BURST);
    assert_eq!(most_at_once(&env, "tenant-a").await, 2);
    env.no_jobs_left().await;
    assert_eq!(pool.metrics.parked.get(), 0);
    pool.stop().await;
}

/// The most jobs of `tenant` that ran at once, from their status events: each runs from its
/// `Deploying` to its `Ready` (a slot starts the next job of a tenant only after the last one's
/// `Ready` is stored, so an end and a start never tie).
async fn most_at_once(env: &Env, tenant: &str) -> usize {
    let mut edges: Vec<(jiff::Timestamp, i32)> = env
        .statuses()
        .await
        .into_iter()
        .filter(|s| s.component.namespace == tenant)
        .filter_map(|s| match s.phase {
            StatusPhase::Deploying => Some((s.at, 1)),
            StatusPhase::Ready => Some((s.at, -1)),
            _ => None,
        })
        .collect();
    // Ends before starts at the same instant.
    edges.sort();
    let (mut running, mut most) = (0, 0);
    for (_, step) in edges {
        running += step;
        most = most.max(running);
    }
    usize::try_from(most).unwrap()
}

#[tokio::test]
async fn without_a_limit_one_tenant_may_use_every_slot_and_nothing_parks() {
    let mut settings = fair_settings("w");
    settings.tenant_concurrency = 0;
    let (env, driver, pool) = gated(Duration::from_secs(30), settings).await;
    for i in 0..8 {
        env.publish(&tenant_job("tenant-a", &format!("a-{i}")))
            .await;
    }
    eventually(Duration::from_secs(30), "4 of A's jobs start", || async {
        (started(&driver, "a-") == 4).then_some(())
    })
    .await;
    // The other 4 were never pulled: every slot is busy, none pulls ahead.
    assert_eq!(pool.metrics.parked.get(), 0);
    assert_eq!(env.ack_pending().await, 4);
    driver.open_gate();
    eventually(Duration::from_secs(30), "every job succeeded", || async {
        (pool.metrics.jobs_with(JobOutcome::Succeeded) == 8).then_some(())
    })
    .await;
    pool.stop().await;
}

/// A server with `ack_wait` and a pool of [`fair_settings`] with 20 of tenant A's jobs: 2 run
/// (held at the driver's closed gate), 18 are parked.
async fn eighteen_parked(ack_wait: Duration) -> (Env, MemoryDriver, Pool) {
    let mut settings = fair_settings("w");
    settings.drain_deadline = Duration::from_millis(200);
    let (env, driver, pool) = gated(ack_wait, settings).await;
    for i in 0..20 {
        env.publish(&tenant_job("tenant-a", &format!("a-{i}")))
            .await;
    }
    eventually(Duration::from_secs(30), "18 of A's jobs parked", || async {
        (pool.metrics.parked.get() == 18).then_some(())
    })
    .await;
    (env, driver, pool)
}

#[tokio::test]
async fn parked_jobs_are_kept_alive_past_ack_wait() {
    // ack_wait 2 s, far shorter than the wait below: a parked job without its Progress acks
    // (every 2/3 s) would be redelivered.
    let (env, driver, pool) = eighteen_parked(Duration::from_secs(2)).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(pool.metrics.parked.get(), 18);
    assert_eq!(env.ack_pending().await, 20);
    assert_eq!(redeliveries(&env).await, 0, "parked jobs were redelivered");
    driver.open_gate();
    eventually(Duration::from_secs(60), "every job succeeded", || async {
        (pool.metrics.jobs_with(JobOutcome::Succeeded) == 20).then_some(())
    })
    .await;
    assert_eq!(redeliveries(&env).await, 0);
    pool.stop().await;
}

#[tokio::test]
async fn parked_jobs_are_given_back_at_once_at_shutdown() {
    // ack_wait far beyond the test's deadlines: the parked jobs only come back in time if the
    // worker Nak'ed them, not because their ack_wait ran out.
    let (env, driver, pool) = eighteen_parked(Duration::from_secs(600)).await;
    // The 2 running jobs are cancelled after the drain deadline and Nak'ed; the 18 parked ones
    // go back as the shutdown starts.
    pool.stop().await;
    assert_eq!(env.jobs_left().await, 20);
    driver.open_gate();
    let pool = env.pool(driver.clone(), fair_settings("w2")).await;
    eventually(Duration::from_secs(60), "every job succeeded", || async {
        (pool.metrics.jobs_with(JobOutcome::Succeeded) == 20).then_some(())
    })
    .await;
    // The parked ones came back on their second delivery, long before their ack_wait (the
    // interrupted ones may come once more, given back while their lease was still held).
    let ready = env.phases_all(StatusPhase::Ready).await;
    assert_eq!(ready.len(), 20);
    let second = ready.iter().filter(|s| s.attempt == 2).count();
    assert!(second >= 18, "{second} of 20 on their second delivery");
    pool.stop().await;
}

/// Deliveries of the jobs stream beyond the first of each message, as the consumer counts
/// them.
async fn redeliveries(env: &Env) -> u64 {
    let stream = env
        .js
        .get_stream(helmq_queue::topology::JOBS_STREAM)
        .await
        .unwrap();
    let info = stream
        .consumer_info(helmq_queue::topology::WORKERS_CONSUMER)
        .await
        .unwrap();
    u64::try_from(info.num_redelivered).unwrap()
}

#[tokio::test]
async fn drift_checks_wait_behind_applies_within_their_own_limit() {
    // 2 slots, at most 1 running check; every apply (a check whose release changed deploys too)
    // waits at the gate.
    let mut settings = settings("w");
    settings.concurrency = 2;
    settings.check_concurrency = Some(1);
    let (env, driver, pool) = gated(Duration::from_secs(30), settings).await;
    for i in 0..3 {
        let mut check = tenant_job(&format!("checked-{i}"), &format!("c-{i}"));
        check.drift_check = true;
        env.publish(&check).await;
    }
    env.publish(&tenant_job("busy", "x-0")).await;
    eventually(Duration::from_secs(60), "the apply starts", || async {
        (started(&driver, "x-") == 1).then_some(())
    })
    .await;
    // The apply behind three checks took the second slot; one check runs, two wait.
    assert_eq!(started(&driver, "c-"), 1);
    assert!(pool.metrics.parked_with("check-limit") >= 2);
    driver.open_gate();
    eventually(Duration::from_secs(60), "every job succeeded", || async {
        (pool.metrics.jobs_with(JobOutcome::Succeeded) == 4).then_some(())
    })
    .await;
    assert_eq!(started(&driver, "c-"), 3);
    env.no_jobs_left().await;
    pool.stop().await;
}

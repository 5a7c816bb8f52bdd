//! Day-2 behaviour of the job pipeline (real nats-server, Helm replaced by the in-memory
//! driver): `config.remediation` (retries within the run, then keep, uninstall or roll back)
//! and `config.test` (`helm test` after a deploy; a failed test is a failed deploy).

mod common;

use std::time::Duration;

use common::*;
use helmq_schemas::config::{HelmTest, InstallStrategy, Remediation, Remedy, UpgradeStrategy};
use helmq_schemas::event::{JobEvent, StatusEvent, StatusPhase};
use helmq_worker::MemoryDriver;
use helmq_worker::driver::memory::Step;

/// What helm says when its wait runs out: it wrote the revision as `failed` first. Transient
/// for the worker's retry policy.
const WAIT_TIMEOUT: &str = "Error: UPGRADE FAILED: resource Deployment/apps/web not ready. status: InProgress, message: Available: 0/2";
/// What helm 4 says when a test pod fails.
const TEST_FAILED: &str =
    "Error: resource Pod/apps/web-test not ready. status: Failed, message: pod web-test failed";
/// The account every Kubernetes call of these jobs runs as.
const TENANT: &str = "system:serviceaccount:team:deployer";

/// Generation `generation` of Component `web` (release `apps/web`), with day-2 settings.
fn web(generation: i64, remediation: Remediation, test: bool) -> JobEvent {
    let mut job = apply("web", generation, "web");
    job.config.remediation = remediation;
    job.config.test = HelmTest {
        enable: test,
        timeout: test.then(|| "1m".into()),
    };
    job.config
        .values
        .insert("generation".into(), generation.into());
    job
}

fn rollback(retries: u32) -> Remediation {
    Remediation {
        upgrade: Remedy {
            retries,
            strategy: UpgradeStrategy::Rollback,
        },
        ..Remediation::default()
    }
}

/// The single status of `phase` for generation `generation`, once there is one.
async fn outcome(env: &Env, generation: i64, phase: StatusPhase) -> StatusEvent {
    eventually(
        Duration::from_secs(30),
        "the generation's outcome",
        || async {
            env.phases("web", phase)
                .await
                .into_iter()
                .find(|s| s.component.generation == generation)
        },
    )
    .await
}

fn ops(driver: &MemoryDriver) -> Vec<&'static str> {
    driver.calls().iter().map(|c| c.op).collect()
}

fn tenant_settings() -> helmq_worker::Settings {
    let mut s = settings("w");
    s.default_service_account = Some("deployer".into());
    s
}

#[tokio::test]
async fn a_failed_upgrade_with_rollback_ends_failed_with_the_previous_revision_deployed() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    let pool = env.pool(driver.clone(), tenant_settings()).await;
    env.publish(&web(1, rollback(0), false)).await;
    outcome(&env, 1, StatusPhase::Ready).await;
    driver.script("web", [Step::FailRecorded(WAIT_TIMEOUT.into())]);
    env.publish(&web(2, rollback(0), false)).await;
    let failed = outcome(&env, 2, StatusPhase::Failed).await;
    assert!(
        failed.message.starts_with(&format!(
            "upgrade failed: {WAIT_TIMEOUT}; rolled back to revision 1 (attempt 1 of"
        )),
        "{}",
        failed.message
    );
    // Helm's wait timed out: the advice still follows.
    assert!(failed.message.contains("; next: "), "{}", failed.message);
    let history = driver.history_of("apps", "web");
    let statuses: Vec<_> = history.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["superseded", "failed", "deployed"]);
    assert_eq!(history[2].description, "Rollback to 1");
    // Once, with the job's identity; no retry by the transient policy.
    let calls = driver.calls();
    let rollback = calls.iter().find(|c| c.op == "rollback").expect("rollback");
    assert_eq!(rollback.user.as_deref(), Some(TENANT));
    assert_eq!(
        ops(&driver)[1..],
        ["apply", "history", "rollback"],
        "{calls:?}"
    );
    let letters = eventually(Duration::from_secs(10), "a dead letter", || async {
        let letters = env.dead_letters().await;
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert_eq!(letters.len(), 1);
    assert!(letters[0].reason.contains("rolled back to revision 1"));
    assert_eq!(pool.metrics.retries.get(), 0);
    pool.stop().await;
}

#[tokio::test]
async fn a_failing_test_ends_failed_with_the_tests_message_and_is_not_retried() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    driver.fail_tests("web", TEST_FAILED, usize::MAX);
    let pool = env.pool(driver.clone(), tenant_settings()).await;
    env.publish(&web(1, Remediation::default(), true)).await;
    let failed = outcome(&env, 1, StatusPhase::Failed).await;
    assert!(
        failed
            .message
            .starts_with(&format!("helm test failed: {TEST_FAILED} (attempt 1 of")),
        "{}",
        failed.message
    );
    assert!(
        failed.message.contains("look at the release's test pods"),
        "{}",
        failed.message
    );
    // Permanent: one deploy, one test, no history read (no remediation asked for); the
    // release stays as it is.
    assert_eq!(ops(&driver), ["apply", "test"]);
    assert_eq!(driver.calls()[1].user.as_deref(), Some(TENANT));
    assert_eq!(driver.history_of("apps", "web").len(), 1);
    assert_eq!(pool.metrics.retries.get(), 0);
    pool.stop().await;
}

#[tokio::test]
async fn passed_tests_say_so_and_an_upgrade_failing_its_tests_twice_rolls_back_to_before_the_run() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    let pool = env.pool(driver.clone(), settings("w")).await;
    env.publish(&web(1, rollback(0), true)).await;
    let ready = outcome(&env, 1, StatusPhase::Ready).await;
    assert!(
        ready.message.ends_with("; tests passed"),
        "{}",
        ready.message
    );
    // Fails twice: back to revision 1, not to the retry's own revision 2.
    driver.fail_tests("web", TEST_FAILED, 2);
    env.publish(&web(2, rollback(1), true)).await;
    let failed = outcome(&env, 2, StatusPhase::Failed).await;
    assert!(
        failed.message.starts_with(&format!(
            "upgrade failed 2 times: helm test: {TEST_FAILED}; rolled back to revision 1"
        )),
        "{}",
        failed.message
    );
    let history = driver.history_of("apps", "web");
    let statuses: Vec<_> = history.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(
        statuses,
        ["superseded", "superseded", "superseded", "deployed"]
    );
    assert_eq!(history[3].description, "Rollback to 1");
    pool.stop().await;
}

#[tokio::test]
async fn a_retry_within_the_run_turns_one_failure_into_ready() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    let pool = env.pool(driver.clone(), settings("w")).await;
    env.publish(&web(1, rollback(1), false)).await;
    outcome(&env, 1, StatusPhase::Ready).await;
    driver.script("web", [Step::FailRecorded(WAIT_TIMEOUT.into())]);
    env.publish(&web(2, rollback(1), false)).await;
    let ready = outcome(&env, 2, StatusPhase::Ready).await;
    assert_eq!(ready.attempt, 1, "the same delivery, the same run");
    assert!(
        ready
            .message
            .starts_with("upgrade failed and was tried again; release web revision 3 is deployed"),
        "{}",
        ready.message
    );
    assert_eq!(ops(&driver)[1..], ["apply", "history", "apply"]);
    assert!(env.phases("web", StatusPhase::Failed).await.is_empty());
    assert_eq!(pool.metrics.retries.get(), 0);
    pool.stop().await;
}

#[tokio::test]
async fn a_failed_install_is_tried_again_then_uninstalled() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    let remediation = Remediation {
        install: Remedy {
            retries: 1,
            strategy: InstallStrategy::Uninstall,
        },
        ..Remediation::default()
    };
    driver.script(
        "web",
        [
            Step::FailRecorded(WAIT_TIMEOUT.into()),
            Step::FailRecorded(WAIT_TIMEOUT.into()),
        ],
    );
    let pool = env.pool(driver.clone(), settings("w")).await;
    env.publish(&web(1, remediation, false)).await;
    let failed = outcome(&env, 1, StatusPhase::Failed).await;
    assert!(
        failed.message.starts_with(&format!(
            "install failed 2 times: {WAIT_TIMEOUT}; uninstalled"
        )),
        "{}",
        failed.message
    );
    assert_eq!(
        ops(&driver),
        ["apply", "history", "apply", "history", "uninstall"]
    );
    assert!(driver.history_of("apps", "web").is_empty());
    pool.stop().await;
}

#[tokio::test]
async fn without_remediation_a_failed_upgrade_is_retried_by_the_policy_as_before() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    let pool = env.pool(driver.clone(), settings("w")).await;
    env.publish(&web(1, Remediation::default(), false)).await;
    outcome(&env, 1, StatusPhase::Ready).await;
    driver.script("web", [Step::FailRecorded(WAIT_TIMEOUT.into())]);
    env.publish(&web(2, Remediation::default(), false)).await;
    let ready = outcome(&env, 2, StatusPhase::Ready).await;
    // A new delivery after the transient policy's delay (which reads the release first, as
    // any later run does), no history read or rollback for remediation.
    assert_eq!(ready.attempt, 2);
    assert_eq!(ops(&driver)[1..], ["apply", "status", "labels", "apply"]);
    assert_eq!(pool.metrics.retries.get(), 1);
    let statuses: Vec<_> = driver
        .history_of("apps", "web")
        .iter()
        .map(|r| r.status.as_str().to_owned())
        .collect();
    assert_eq!(statuses, ["superseded", "failed", "deployed"]);
    pool.stop().await;
}

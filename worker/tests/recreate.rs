//! Intents are per object (issue 8): a Component deleted and created again under the same name
//! deploys, an intent of another uid never supersedes or cancels a job, a terminated object's
//! live intent is gone (its tombstone expires), late copies of its jobs are skipped, and a
//! generation beyond 2^53 is dead-lettered with the rule it broke; a run is counted only against
//! the intents key as it was read. A real nats-server, Helm replaced by the in-memory driver.

mod common;

use std::time::Duration;

use common::*;
use helmq_queue::Topology;
use helmq_queue::topology::{INTENTS_BUCKET, TOMBSTONES_BUCKET};
use helmq_schemas::event::{JobAction, JobEvent, StatusEvent, StatusPhase};
use helmq_schemas::subject::job_subject;
use helmq_worker::MemoryDriver;
use helmq_worker::exclusivity::{Intents, Live, intent_key};
use helmq_worker::metrics::JobOutcome;
use helmq_worker::policy::{Decision, Outcome, Precedence, decide, latest};

/// A job for the Component `web` in `team` as the object whose uid is labelled `uid`; every object installs the
/// same release `team-web` (the MVP shape's `<namespace>-<name>`).
fn job_of(uid: &str, generation: i64, action: JobAction) -> JobEvent {
    let mut job = job("web", generation, action, config("team-web", "apps"));
    job.component.uid = Some(helmq_tests::build::uid(uid));
    job.id = job.dedupe_id();
    job
}

/// The status events of the object with `uid` in `phase`.
async fn phases_of(env: &Env, uid: &str, phase: StatusPhase) -> Vec<StatusEvent> {
    env.statuses()
        .await
        .into_iter()
        .filter(|s| s.component.uid == Some(helmq_tests::build::uid(uid)) && s.phase == phase)
        .collect()
}

async fn wait_phase(env: &Env, uid: &str, phase: StatusPhase) -> StatusEvent {
    eventually(
        Duration::from_secs(30),
        &format!("{phase:?} of {uid}"),
        || async { phases_of(env, uid, phase).await.pop() },
    )
    .await
}

fn ops(driver: &MemoryDriver, op: &str) -> usize {
    driver.calls().iter().filter(|c| c.op == op).count()
}

#[tokio::test]
async fn a_component_deleted_and_created_again_under_the_same_name_deploys() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    let pool = env.pool(driver.clone(), settings("w")).await;

    // The first object: generation 1, an upgrade to 2, then deleted (at generation 2).
    env.publish(&job_of("uid-old", 1, JobAction::Apply)).await;
    wait_phase(&env, "uid-old", StatusPhase::Ready).await;
    env.publish(&job_of("uid-old", 2, JobAction::Apply)).await;
    eventually(Duration::from_secs(30), "Ready at generation 2", || async {
        phases_of(&env, "uid-old", StatusPhase::Ready)
            .await
            .into_iter()
            .find(|s| s.component.generation == 2)
    })
    .await;
    env.publish(&job_of("uid-old", 2, JobAction::Delete)).await;
    wait_phase(&env, "uid-old", StatusPhase::Terminated).await;

    // The same name again, a new object: its generation 1 is lower than the old object's
    // delete at generation 2, which must not matter.
    env.publish(&job_of("uid-new", 1, JobAction::Apply)).await;
    let ready = wait_phase(&env, "uid-new", StatusPhase::Ready).await;
    assert_eq!(ready.component.generation, 1);
    assert_eq!(pool.metrics.jobs_with(JobOutcome::Superseded), 0);
    assert_eq!(ops(&driver, "apply"), 3);
    assert_eq!(ops(&driver, "uninstall"), 1);
    assert_eq!(
        driver.history_of("apps", "team-web").len(),
        1,
        "the new object installed the release afresh"
    );
    env.no_jobs_left().await;
    pool.stop().await;
}

#[tokio::test]
async fn a_new_object_waits_for_the_old_objects_running_delete_and_neither_supersedes_the_other() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    let mut settings = settings("w");
    settings.concurrency = 2;
    let pool = env.pool(driver.clone(), settings).await;
    env.publish(&job_of("uid-old", 3, JobAction::Apply)).await;
    wait_phase(&env, "uid-old", StatusPhase::Ready).await;

    // The old object's uninstall is under way (held at the gate) when the new object's apply
    // arrives.
    driver.close_gate();
    env.publish(&job_of("uid-old", 3, JobAction::Delete)).await;
    eventually(Duration::from_secs(20), "the uninstall started", || async {
        (ops(&driver, "uninstall") == 1).then_some(())
    })
    .await;
    env.publish(&job_of("uid-new", 1, JobAction::Apply)).await;
    // The new job is not superseded: it starts and then waits for the release's lease.
    wait_phase(&env, "uid-new", StatusPhase::Deploying).await;
    eventually(Duration::from_secs(20), "a lease wait", || async {
        (pool.metrics.lease_waits.get() >= 1).then_some(())
    })
    .await;
    assert_eq!(ops(&driver, "apply"), 1, "only the old object's apply ran");
    driver.open_gate();

    let terminated = wait_phase(&env, "uid-old", StatusPhase::Terminated).await;
    assert_eq!(terminated.component.generation, 3);
    let ready = wait_phase(&env, "uid-new", StatusPhase::Ready).await;
    assert_eq!(ready.component.generation, 1);
    let calls = driver.calls();
    let mutating: Vec<(&str, bool)> = calls
        .iter()
        .filter(|c| c.op == "apply" || c.op == "uninstall")
        .map(|c| (c.op, c.cancelled))
        .collect();
    assert_eq!(
        mutating,
        [("apply", false), ("uninstall", false), ("apply", false)],
        "the uninstall ran to its end before the new install"
    );
    assert_eq!(driver.overlaps(), Vec::<String>::new());
    assert_eq!(pool.metrics.jobs_with(JobOutcome::Superseded), 0);
    assert!(
        phases_of(&env, "uid-new", StatusPhase::Failed)
            .await
            .is_empty()
    );
    pool.stop().await;
}

#[tokio::test]
async fn a_terminated_objects_intent_is_gone_and_late_copies_of_its_jobs_are_skipped() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    let pool = env.pool(driver.clone(), settings("w")).await;
    let apply = job_of("uid-old", 1, JobAction::Apply);
    let delete = job_of("uid-old", 1, JobAction::Delete);
    let key = intent_key(&apply.component);
    let intents = env.js.get_key_value(INTENTS_BUCKET).await.unwrap();
    let tombstones = env.js.get_key_value(TOMBSTONES_BUCKET).await.unwrap();

    env.publish(&apply).await;
    wait_phase(&env, "uid-old", StatusPhase::Ready).await;
    assert!(intents.get(&key).await.unwrap().is_some(), "a live intent");
    env.publish(&delete).await;
    wait_phase(&env, "uid-old", StatusPhase::Terminated).await;
    assert_eq!(intents.get(&key).await.unwrap(), None, "live intent gone");
    assert!(tombstones.get(&key).await.unwrap().is_some(), "a tombstone");

    // Late copies (a redelivery after the duplicate window, a replayed dead letter): the delete
    // publishes its Terminated again without a second uninstall; the apply does nothing.
    let subject = job_subject("team", "web");
    env.publish_raw(&subject, delete.encode()).await;
    env.publish_raw(&subject, apply.encode()).await;
    eventually(Duration::from_secs(20), "both copies settled", || async {
        (pool.metrics.jobs_with(JobOutcome::Duplicate) == 1
            && pool.metrics.jobs_with(JobOutcome::Superseded) == 1)
            .then_some(())
    })
    .await;
    assert_eq!(ops(&driver, "apply"), 1);
    assert_eq!(ops(&driver, "uninstall"), 1);
    // Published again with its dedupe id, so the status stream keeps the one event.
    assert_eq!(
        phases_of(&env, "uid-old", StatusPhase::Terminated)
            .await
            .len(),
        1
    );
    assert!(
        driver.history_of("apps", "team-web").is_empty(),
        "no orphan release"
    );
    assert_eq!(intents.get(&key).await.unwrap(), None);
    pool.stop().await;
}

#[tokio::test]
async fn a_tombstone_expires_with_the_buckets_max_age() {
    let env = Env::start(Topology {
        tombstone_ttl: Duration::from_secs(1),
        ..fast_topology()
    })
    .await;
    let driver = MemoryDriver::new();
    let pool = env.pool(driver.clone(), settings("w")).await;
    let delete = job_of("uid-old", 1, JobAction::Delete);
    let key = intent_key(&delete.component);
    let tombstones = env.js.get_key_value(TOMBSTONES_BUCKET).await.unwrap();
    env.publish(&delete).await;
    wait_phase(&env, "uid-old", StatusPhase::Terminated).await;
    assert!(tombstones.get(&key).await.unwrap().is_some());
    eventually(Duration::from_secs(10), "the tombstone expired", || async {
        tombstones.get(&key).await.unwrap().is_none().then_some(())
    })
    .await;
    let intents = env.js.get_key_value(INTENTS_BUCKET).await.unwrap();
    let left: Vec<String> = futures::StreamExt::collect::<Vec<_>>(intents.keys().await.unwrap())
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(left.is_empty(), "nothing kept for the object: {left:?}");
    pool.stop().await;
}

#[tokio::test]
async fn a_generation_beyond_2_pow_53_is_dead_lettered_with_the_rule_and_blocks_nothing() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    let pool = env.pool(driver.clone(), settings("w")).await;
    let mut hostile = serde_json::to_value(job_of("uid-a", 1, JobAction::Delete)).unwrap();
    hostile["component"]["generation"] = i64::MAX.into();
    env.publish_raw(
        &job_subject("team", "web"),
        serde_json::to_vec(&hostile).unwrap(),
    )
    .await;
    let letter = eventually(Duration::from_secs(20), "a dead letter", || async {
        env.dead_letters().await.pop()
    })
    .await;
    assert_eq!(
        letter.reason,
        "malformed helmq.job/v1 payload: component.generation must be between 1 and 9007199254740992 (2^53), got 9223372036854775807"
    );
    // Counted once the message is settled, just after what the test saw.
    eventually(Duration::from_secs(10), "Rejected counted", || async {
        (pool.metrics.jobs_with(JobOutcome::Rejected) == 1).then_some(())
    })
    .await;
    assert!(driver.calls().is_empty(), "helm never ran for it");

    // The same object's real generation 1 still deploys.
    env.publish(&job_of("uid-a", 1, JobAction::Apply)).await;
    wait_phase(&env, "uid-a", StatusPhase::Ready).await;
    assert_eq!(pool.metrics.jobs_with(JobOutcome::Superseded), 0);
    pool.stop().await;
}

/// The start reads the live intent and the tombstone at once, so the tombstone may be read
/// before the end of a delete that removes the live intent right after: a run counted against a
/// key that never had an intent must then fail, and one counted against a removed intent too
/// once the key changed again.
#[tokio::test]
async fn a_run_is_counted_only_against_the_key_as_read_even_when_it_was_empty() {
    let env = Env::start(fast_topology()).await;
    let intents = Intents::open(&env.js).await.unwrap();
    let apply = job_of("uid-old", 1, JobAction::Apply);
    let delete = job_of("uid-old", 1, JobAction::Delete);
    let key = intent_key(&apply.component);
    let never = intents.live(&key).await.unwrap();
    assert_eq!(never, Live::Never);
    assert_eq!(intents.tombstone(&key).await.unwrap(), None);

    // Meanwhile the object's delete runs to its end: its intent is written, its tombstone, and
    // its live intent removed.
    let run = intents
        .count_run(&key, &delete, &Live::Never)
        .await
        .unwrap()
        .expect("the delete's run is counted against the empty key");
    let terminated = StatusEvent::new(
        delete.id.clone(),
        delete.component.clone(),
        StatusPhase::Terminated,
        "uninstalled",
        1,
        "w",
        jiff::Timestamp::now(),
    );
    intents
        .finish(&key, &delete, Outcome::Terminated, &terminated, Some(run))
        .await
        .unwrap();

    // The apply that read the empty key (and no tombstone) cannot count its run.
    assert_eq!(intents.count_run(&key, &apply, &never).await.unwrap(), None);
    let ended = intents.live(&key).await.unwrap();
    assert!(matches!(ended, Live::Ended(_)), "{ended:?}");
    let tombstone = intents.tombstone(&key).await.unwrap().expect("a tombstone");
    assert_eq!(tombstone.outcome, Outcome::Terminated);
    assert!(matches!(
        decide(Precedence::of(&apply), latest(None, Some(&tombstone))),
        Decision::Superseded { .. }
    ));

    // Against the removed intent as read, a write is made while nothing changed, and not after.
    let rerun = intents.count_run(&key, &delete, &ended).await.unwrap();
    assert!(rerun.is_some());
    assert_eq!(
        intents.count_run(&key, &delete, &ended).await.unwrap(),
        None
    );
}

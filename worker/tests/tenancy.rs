//! Tenancy on the job path, against a real nats-server with the in-memory driver: a job acts
//! only on a release its own Component owns (or one it adopts), deletes only a namespace helmq
//! created for it, and every Kubernetes call of a job runs as the tenant's ServiceAccount.

mod common;

use std::time::Duration;

use common::*;
use helmq_schemas::event::{JobAction, StatusPhase};
use helmq_worker::MemoryDriver;

/// The driver calls that change something.
fn mutations(driver: &MemoryDriver) -> Vec<(&'static str, String)> {
    driver
        .calls()
        .into_iter()
        .filter(|c| !matches!(c.op, "status" | "labels" | "history" | "refused"))
        .map(|c| (c.op, c.release))
        .collect()
}

/// A deployed revision without helmq's labels, as `helm install` by hand leaves it.
fn deployed(revision: i64) -> helmq_worker::driver::Revision {
    helmq_worker::driver::Revision {
        revision,
        status: "deployed".into(),
        chart: "nginx-1.0.0".into(),
        description: "Install complete".into(),
        updated: Some(jiff::Timestamp::now()),
        lease_revision: None,
    }
}

#[tokio::test]
async fn a_release_another_component_owns_is_neither_upgraded_nor_uninstalled() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    let pool = env.pool(driver.clone(), settings("w")).await;
    let owner = apply("db", 1, "db");
    env.publish(&owner).await;
    eventually(Duration::from_secs(20), "db Ready", || async {
        env.phases("db", StatusPhase::Ready).await.pop()
    })
    .await;
    let before = mutations(&driver);

    // Another Component names the same release, to upgrade it and then to uninstall it.
    env.publish(&apply("intruder", 1, "db")).await;
    env.publish(&job("thief", 1, JobAction::Delete, config("db", "apps")))
        .await;
    for (name, phase) in [
        ("intruder", StatusPhase::Failed),
        ("thief", StatusPhase::TerminationFailed),
    ] {
        let failed = eventually(Duration::from_secs(20), "failed", || async {
            env.phases(name, phase).await.pop()
        })
        .await;
        let uid = helmq_tests::build::uid("db");
        let want = format!(
            "release apps/db belongs to Component team/db (uid {uid}); helmq leaves it alone"
        );
        assert!(
            failed.message.starts_with(&want),
            "{name}: {}",
            failed.message
        );
    }
    assert_eq!(mutations(&driver), before, "no Helm action ran");
    assert_eq!(driver.history_of("apps", "db").len(), 1);

    // Its owner still upgrades it.
    env.publish(&apply("db", 2, "db")).await;
    eventually(Duration::from_secs(20), "db Ready at 2", || async {
        env.phases("db", StatusPhase::Ready)
            .await
            .into_iter()
            .find(|s| s.component.generation == 2)
    })
    .await;
    assert_eq!(driver.history_of("apps", "db").len(), 2);
    pool.stop().await;
}

#[tokio::test]
async fn a_release_without_owner_labels_is_taken_over_only_when_adopted() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    // Installed by hand: a release record without helmq's labels.
    driver.set_history("apps", "legacy", vec![deployed(1)]);
    let pool = env.pool(driver.clone(), settings("w")).await;
    env.publish(&apply("web", 1, "legacy")).await;
    let failed = eventually(Duration::from_secs(20), "Failed", || async {
        env.phases("web", StatusPhase::Failed).await.pop()
    })
    .await;
    assert!(
        failed.message.starts_with(
            "release apps/legacy exists and was not installed by helmq for this Component; set config.adopt: true to take it over"
        ),
        "{}",
        failed.message
    );
    assert!(mutations(&driver).is_empty());

    let mut adopting = config("legacy", "apps");
    adopting.adopt = true;
    env.publish(&job("web", 2, JobAction::Apply, adopting))
        .await;
    let ready = eventually(Duration::from_secs(20), "Ready", || async {
        env.phases("web", StatusPhase::Ready).await.pop()
    })
    .await;
    assert!(
        ready.message.starts_with("release legacy adopted; "),
        "{}",
        ready.message
    );
    // Now labelled: a later job of the same Component needs no adoption.
    env.publish(&apply("web", 3, "legacy")).await;
    eventually(Duration::from_secs(20), "Ready at 3", || async {
        env.phases("web", StatusPhase::Ready)
            .await
            .into_iter()
            .find(|s| s.component.generation == 3)
    })
    .await;
    assert_eq!(driver.history_of("apps", "legacy").len(), 3);
    pool.stop().await;
}

#[tokio::test]
async fn only_a_namespace_helmq_created_for_the_component_is_deleted() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    driver.add_namespace("existing");
    let pool = env.pool(driver.clone(), settings("w")).await;
    for (name, namespace) in [("a", "existing"), ("b", "fresh")] {
        env.publish(&job(name, 1, JobAction::Apply, config(name, namespace)))
            .await;
        eventually(Duration::from_secs(20), "Ready", || async {
            env.phases(name, StatusPhase::Ready).await.pop()
        })
        .await;
        env.publish(&job(name, 2, JobAction::Delete, config(name, namespace)))
            .await;
    }
    let kept = eventually(Duration::from_secs(20), "a Terminated", || async {
        env.phases("a", StatusPhase::Terminated).await.pop()
    })
    .await;
    assert_eq!(
        kept.message,
        "release a uninstalled; namespace existing was not deleted: helmq did not create it for this Component"
    );
    assert!(driver.has_namespace("existing"));
    let deleted = eventually(Duration::from_secs(20), "b Terminated", || async {
        env.phases("b", StatusPhase::Terminated).await.pop()
    })
    .await;
    assert_eq!(
        deleted.message,
        "release b uninstalled; namespace fresh deleted"
    );
    assert!(!driver.has_namespace("fresh"));
    pool.stop().await;
}

#[tokio::test]
async fn every_call_of_a_job_runs_as_the_tenants_service_account() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    let mut s = settings("w");
    s.default_service_account = Some("helmq-deployer".into());
    // A release helmq has no record of: the job reads it (status, owner labels) before it
    // adopts it, so reads are among the calls too.
    driver.set_history("apps", "web", vec![deployed(1)]);
    let pool = env.pool(driver.clone(), s).await;
    let mut adopting = config("web", "apps");
    adopting.adopt = true;
    env.publish(&job("web", 1, JobAction::Apply, adopting))
        .await;
    let mut own = config("api", "apps");
    own.service_account_name = Some("api-deployer".into());
    env.publish(&job("api", 1, JobAction::Apply, own.clone()))
        .await;
    for name in ["web", "api"] {
        eventually(Duration::from_secs(20), "Ready", || async {
            env.phases(name, StatusPhase::Ready).await.pop()
        })
        .await;
    }
    env.publish(&job("api", 2, JobAction::Delete, own)).await;
    eventually(Duration::from_secs(20), "api Terminated", || async {
        env.phases("api", StatusPhase::Terminated).await.pop()
    })
    .await;
    let calls = driver.calls();
    let ops: std::collections::BTreeSet<_> = calls.iter().map(|c| c.op).collect();
    assert_eq!(
        ops,
        [
            "apply",
            "delete-namespace",
            "labels",
            "refused",
            "status",
            "uninstall"
        ]
        .into(),
        "{calls:?}"
    );
    for call in &calls {
        // The tenant is the Component's namespace ("team"), never the release namespace.
        let want = match call.release.as_str() {
            "web" => "system:serviceaccount:team:helmq-deployer",
            _ => "system:serviceaccount:team:api-deployer",
        };
        assert_eq!(
            call.user.as_deref(),
            Some(want),
            "{} {}",
            call.op,
            call.release
        );
    }
    pool.stop().await;
}

#[tokio::test]
async fn without_a_service_account_jobs_run_as_the_worker() {
    let env = Env::start(fast_topology()).await;
    let driver = MemoryDriver::new();
    let pool = env.pool(driver.clone(), settings("w")).await;
    env.publish(&apply("web", 1, "web")).await;
    eventually(Duration::from_secs(20), "Ready", || async {
        env.phases("web", StatusPhase::Ready).await.pop()
    })
    .await;
    let calls = driver.calls();
    assert!(!calls.is_empty());
    assert!(calls.iter().all(|c| c.user.is_none()), "{calls:?}");
    pool.stop().await;
}
